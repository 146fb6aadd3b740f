"""SL-DETR configuration: Deformable DETR plus an oriented box head, the DINO / RHINO decoder parts and the
synchronized loss; its presets (`SlDetrConfig.paper`, `.tiny`, `.deformable_detr`) and the rule that reads a
`config.json` written by an earlier version (`config_version`, [`upgrade_config_v1`]).

Ships with `trust_remote_code` checkpoints: imports only huggingface_hub and transformers.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from huggingface_hub.dataclasses import strict
from transformers import DeformableDetrConfig, ResNetConfig
from transformers.utils import logging

__all__ = ["CONFIG_VERSION", "DEFORMABLE_DETR_PARTS", "DOTA_CLASSES", "NUMERICS", "SlDetrConfig", "upgrade_config_v1"]

logger = logging.get_logger(__name__)

TINY_QUERY_SELECTION_NMS = 0.6
"""ProbIoU above which the tiny preset's query selection drops a proposal (BENCHMARKS.md, "Proposal NMS")."""

# DOTA class lists in mmrotate's order (docs/dota.md#class-lists).
_DOTA_V10 = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter",
)
DOTA_CLASSES: dict[str, tuple[str, ...]] = {
    "1.0": _DOTA_V10,
    "1.5": (*_DOTA_V10, "container-crane"),
    "2.0": (*_DOTA_V10, "container-crane", "airport", "helipad"),
}

_BOX_TYPES = ("rotated", "horizontal")
_ROTATED_SAMPLING = ("rhino", "none")
_MATCHER_BOX_COSTS = ("l1", "hausdorff")
BACKBONE_NORMS = ("frozen", "batch_norm", "eval_batch_norm")
BACKBONE_STEMS = ("resnet", "light")  # stem_sl_detr.py
BACKBONE_DOWNSAMPLES = ("strided", "space_to_depth")  # space_to_depth_sl_detr.py

CONFIG_VERSION = 2
"""What a `config.json` holds: 1 (no `config_version` key, written before 2026-12) or 2 (`numerics`, the rejected
switches deleted). A version-1 config is read by [`upgrade_config_v1`]: it loads and predicts as it did."""

NUMERICS: dict[str, dict] = {
    "rhino": dict(position_embedding_temperature=20, position_embedding_offset=0.0, angle_start=0),
    "deformable_detr": dict(position_embedding_temperature=10000, position_embedding_offset=-0.5, angle_start=-90),
}
"""The two numerics of `SlDetrConfig.numerics` and the defaults each gives the three fields that converters also set
one by one (read from the source checkpoint's config)."""

DEFORMABLE_DETR_PARTS: dict = dict(num_denoising=0, mixed_query_selection=False, look_forward_twice=False,
                                   rotated_sampling="none")
"""The DINO / RHINO decoder parts off (`SlDetrConfig.deformable_detr`): with `numerics="deformable_detr"` a model
converted from Deformable DETR computes what it computed."""

# Inherited Deformable DETR fields that SL-DETR does not read (its losses and matcher have their own fields); a
# value other than Deformable DETR's default is refused.
_IGNORED_INHERITED = dict(giou_cost=2, mask_loss_coefficient=1, dice_loss_coefficient=1, giou_loss_coefficient=2,
                          eos_coefficient=0.1)

# Version-1 fields folded into `numerics`: their value under each choice (and version 1's defaults: "deformable_detr").
_FOLDED_NUMERICS: dict[str, dict] = {
    "rhino": dict(query_position_valid_ratios=True, decoder_output_norm=True, class_aware_topk=True,
                  decoder_refine_eps=1e-3, mask_invalid_proposal_angle=True, rotated_sampling_in_pixels=False,
                  query_position_temperature=10000),
    "deformable_detr": dict(query_position_valid_ratios=False, decoder_output_norm=False, class_aware_topk=False,
                            decoder_refine_eps=1e-5, mask_invalid_proposal_angle=False,
                            rotated_sampling_in_pixels=True, query_position_temperature=10000),
}
# Version-1 training-only switches deleted in version 2 (BENCHMARKS.md, "Removed switches"), with their version-1
# defaults: inference never read them, so a version-1 folder that set them predicts as before.
_REMOVED_TRAINING: dict = dict(one_to_many_k=1, rank_weights=None, num_hybrid_queries=0, hybrid_k=6,
                               hybrid_loss_coefficient=1.0, match_once_per_step=False)
_REMOVED_WHY = ("deleted in config_version 2: H-DETR's hybrid queries did not pay, matching once per step was "
                "1.3 points lower, one-to-many matching was never measured (BENCHMARKS.md, 'Removed switches')")
# Version-1 field folded into `mixed_query_selection` (DINO's encoder loss on the selected proposals).
_ENCODER_LOSS_ON_TOPK = "encoder_loss_on_topk"


def _numerics_of(values: dict, where: str) -> str:
    """The `numerics` choice whose folded values `values` (version-1 field -> value) hold, or a ValueError."""
    for name, expected in _FOLDED_NUMERICS.items():
        if all(values[key] == value for key, value in expected.items()):
            return name
    rhino = sorted(key for key, value in _FOLDED_NUMERICS["rhino"].items() if values[key] == value)
    raise ValueError(
        f"{where} mixes RHINO's numerics ({', '.join(rhino) or 'none'}) with Deformable DETR's (the rest of "
        f"{sorted(_FOLDED_NUMERICS['rhino'])}); config_version 2 computes one or the other "
        "(`numerics='rhino'` or `'deformable_detr'`): load this folder with sl_detr_hf 91dbc22 or earlier")


def upgrade_config_v1(values: dict) -> dict:
    """A version-1 `config.json` dict (no `config_version`) -> the version-2 fields that compute the same.

    Version 1's numerics switches default to Deformable DETR's values (absent keys included), and fold into
    `numerics` when they are all RHINO's or all Deformable DETR's (a mix is refused); `encoder_loss_on_topk` folds
    into `mixed_query_selection`; the deleted training-only switches are dropped (with a warning when set: the
    folder predicts as before, fine-tuning it trains without them); `rotated_sampling="geometric"` is refused.
    """
    values = dict(values)
    where = "a config_version-1 config"
    if values.get("rotated_sampling") == "geometric":
        raise ValueError(f"{where} sets rotated_sampling='geometric', deleted in config_version 2 (it trained "
                         "worse, BENCHMARKS.md): load this folder with sl_detr_hf 91dbc22 or earlier")
    folded = {key: values.pop(key, default) for key, default in _FOLDED_NUMERICS["deformable_detr"].items()}
    values["numerics"] = _numerics_of(folded, where)
    for key, default in NUMERICS["deformable_detr"].items():  # version 1's defaults
        values.setdefault(key, default)
    two_stage_mqs = values.get("two_stage", True) and values.get("mixed_query_selection", True)
    on_topk = values.pop(_ENCODER_LOSS_ON_TOPK, True)
    if values.get("two_stage", True) and bool(on_topk) != bool(two_stage_mqs):
        logger.warning("%s: encoder_loss_on_topk=%s ignored (config_version 2: the encoder loss is on the selected "
                       "proposals exactly with mixed query selection); training only, predictions unchanged",
                       where, on_topk)
    dropped = {key: values.pop(key) for key in list(values) if key in _REMOVED_TRAINING}
    changed = {key: value for key, value in dropped.items() if value != _REMOVED_TRAINING[key]}
    if changed:
        logger.warning("%s: %s ignored, %s; training only, predictions unchanged", where, changed, _REMOVED_WHY)
    values["config_version"] = CONFIG_VERSION
    return values


@strict
class SlDetrConfig(DeformableDetrConfig):
    r"""Configuration of [`SlDetrForObjectDetection`].

    `SlDetrConfig()` is the paper's model (`sldetr-4scale_r50`, `SlDetrConfig.paper()`): RHINO's R50 architecture
    and numerics (ResNet-50, 4 feature levels, 6 + 6 layers, d_model 256, FFN 2048, dropout 0, 900 queries,
    two-stage proposals with iterative box refinement, denoising, mixed query selection, look forward twice,
    rotated sampling) with the synchronized losses on and 15 DOTA classes. Presets: [`SlDetrConfig.paper`],
    [`SlDetrConfig.tiny`] (trains on a CPU in minutes), [`SlDetrConfig.deformable_detr`] (what a converted
    Deformable DETR computes). All Deformable DETR fields keep their meaning, except five that SL-DETR does not
    read (`giou_cost`, `mask_loss_coefficient`, `dice_loss_coefficient`, `giou_loss_coefficient`,
    `eos_coefficient`: its losses have their own fields), refused at another value than their default.

    config_version (`int`, defaults to 2):
        The layout of the fields (`CONFIG_VERSION`); a `config.json` without it is version 1 and is upgraded on
        load by [`upgrade_config_v1`] (it predicts as it did).
    box_type (`str`, defaults to `"rotated"`):
        `"rotated"`: boxes `(cx, cy, w, h, theta)`, L1 + (synchronized) KLD. `"horizontal"`: boxes
        `(cx, cy, w, h)`, L1 + (synchronized) GIoU, a drop-in for Deformable DETR.

    Matcher and losses (docs/losses.md):

    class_cost, bbox_cost, geometric_cost (`float`, defaults 2, 5, 2):
        Hungarian matcher weights of the focal classification cost, the box cost and the geometric cost (KLD loss
        for rotated boxes, `-GIoU` for horizontal ones).
    matcher_box_cost (`str`, defaults to `"l1"`):
        The box term weighted by `bbox_cost`: `"l1"` or `"hausdorff"` (the Hausdorff distance of the two boxes'
        corners, RHINO's 36-epoch config with `bbox_cost=5, geometric_cost=5`).
    cls_loss_coefficient, bbox_loss_coefficient, sync_loss_coefficient (`float`, defaults 1, 5, 2):
        Loss weights of classification, L1 and the (synchronized) KLD / GIoU term, per decoder layer.
    focal_alpha, focal_gamma (`float`, defaults 0.25, 2):
        Focal loss parameters (the matcher cost always; the classification loss when `use_quality_cls=False`).
    use_sync_loc (`bool`, defaults to `True`):
        Synchronize the localization loss with the L1 distance; `False` gives plain GIoU / KLD losses (the paper's
        ablation).
    use_quality_cls (`bool`, defaults to `True`):
        Quality-aware classification (dynamic weights); `False` gives the focal loss (the paper's ablation).
    quality_alpha (`float`, defaults to 0.25), quality_gamma (`float`, defaults to 2), quality_min (`float`,
    defaults to 0.01):
        `t = clamp(p^alpha * q^(1 - alpha), min=quality_min)`; negatives weighted by `p^gamma`.
    sync_gain (`float`, defaults to 1.5):
        The gain `k` in the synchronization factor `exp(k * (t - 1))`.
    sync_giou_floor (`float`, defaults to 0.001), sync_giou_t_min / sync_giou_t_max (defaults 0, 1.2):
        GIoU clamp and `t` clamp range of the synchronized GIoU.
    sync_kld_t_min / sync_kld_t_max (`float`, defaults 0.8, 1.1):
        `t` clamp range of the synchronized KLD.
    kld_tau (`float`, defaults to 1.0):
        `tau` in the KLD loss `1 - 1 / (tau + ln(1 + d))`.
    max_detections (`int`, defaults to 500):
        Detections kept per image by post-processing.

    DINO / RHINO parts (docs/architecture.md#dino-and-rhino-parts). Denoising and mixed query selection need
    two-stage proposals: single-stage models (`two_stage=False`) ignore them. With denoising or mixed query
    selection the decoder builds every query's position embedding from its current reference box (DINO's
    `ref_point_head`). `SlDetrConfig.deformable_detr` turns them off (`DEFORMABLE_DETR_PARTS`).

    num_denoising (`int`, defaults to 100):
        Contrastive denoising: about this many noised ground-truth queries per image at training time, in
        `min(num_denoising // max_objects, max_denoising_groups)` groups (positive and negative halves).
        0 turns denoising off. Named after RT-DETR's field.
    max_denoising_groups (`int`, defaults to 30):
        Upper bound on the number of denoising groups (RHINO's cap).
    label_noise_ratio (`float`, defaults to 0.5), box_noise_scale (`float`, defaults to 1.0):
        Probability that a denoising query's label is flipped; scale of the `cx, cy, w, h` noise.
    angle_noise_scale (`float`, defaults to 0.0):
        Angle noise of the denoising queries, in units of `pi / 2` (RHINO: 0, the angle is the ground truth's).
    dynamic_denoising (`bool`, *optional*):
        RHINO's dynamic denoising: per group, positive denoising queries and matching queries are matched
        together; a positive query that loses its object is trained as background (its box target kept).
        `None` (default) means on for `"rotated"`, off for `"horizontal"`.
    mixed_query_selection (`bool`, defaults to `True`):
        Two-stage: the decoder's initial reference boxes come from the top-k encoder proposals, its content
        queries are learned embeddings, and the encoder loss is on those k proposals (DINO). `False`: Deformable
        DETR's two-stage queries (content and position from the proposals) and its encoder loss on every token.
    query_selection_nms (`float`, *optional*):
        Two-stage: before taking the top-k proposals, drop those that overlap a better-scoring one with ProbIoU
        above this (a fixed-shape Fast NMS over the best `4k` proposals; DETA's proposal NMS), so that the
        queries start on different objects. `None` (default, RHINO's config): plain top-k.
    dense_loss_coefficient (`float`, defaults to 0.0):
        Weight of the dense one-to-many loss on every two-stage encoder token (`dense_loss_sl_detr.py`: TOOD's
        task-aligned assignment, Co-DETR's idea), which trains the encoder faster than the one-to-one losses alone
        (BENCHMARKS.md "Angle range, dense encoder loss, stride 8 and a light stem on HIT-UAV"). 0: off (RHINO).
    value_only_levels (`int`, defaults to 0):
        The number of finest feature levels the encoder reads but does not update (`encoder_sl_detr.py`): its
        attention samples them, the decoder and the two-stage proposals use them as the input projection made
        them, but only the coarser levels' tokens are its queries. 1 with a stride-8 first level gives the decoder
        stride-8 features at a fraction of a stride-8 encoder's cost (BENCHMARKS.md "Angle range, dense encoder
        loss, stride 8 and a light stem on HIT-UAV"). 0: Deformable DETR's encoder.
    look_forward_twice (`bool`, defaults to `True`):
        Layer `l`'s box loss uses the undetached refined reference of layer `l - 1` (DINO / RHINO).
    rotated_sampling (`str`, defaults to `"rhino"`):
        Decoder deformable sampling around 5-d references: `"rhino"` (offsets times the rotated half-size
        vector) or `"none"` (Deformable DETR's axis-aligned sampling). Ignored for `"horizontal"`.

    Numerics (docs/rhino_numerics.md):

    numerics (`str`, defaults to `"rhino"`):
        `"rhino"`: RHINO's / mmdetection DINO's computation, with which a converted RHINO / DINO checkpoint computes
        what it computed there: DINO's final decoder LayerNorm before the heads (not in the refinement), proposals
        ranked by their best class logit (the encoder loss class-aware), the query position built from the
        valid-ratio-scaled box, inverse-sigmoid eps 1e-3 in the decoder's refinement, a `+inf` proposal angle for
        padded / border tokens and the rotated sampling's offset vector turned in normalized units (RHINO's code:
        a rigid rotation on square feature maps only). `"deformable_detr"`: transformers' Deformable DETR (none of
        these; eps 1e-5; the offset vector turned in pixel units), the computation of the tiny preset and of
        models saved by config_version 1 with the switches off. Also sets the defaults of the three fields below.
    position_embedding_temperature (`float`, *optional*), position_embedding_offset (`float`, *optional*):
        The encoder's normalized sine position encoding, `(cumsum + offset) / (total + 1e-6) * 2 pi` over
        `temperature ** (2 floor(i / 2) / (d_model / 2))`. `None` (default): `numerics`' values (`"rhino"`: 20 and
        0; `"deformable_detr"`: transformers' 10000 and -0.5). The converters set them from the source's config.
    angle_start (`float`, *optional*):
        The angle range in degrees (mmrotate's `start_angle`): the model decodes `theta = (a + angle_start / 180)
        * pi` from its sigmoid-space angle `a`, so its native range is `[angle_start, angle_start + 180)`. -90 is le90
        (`(a - 0.5) * pi`); RHINO's `width_longer=True, start_angle=0` is 0 (`a * pi`). `None` (default):
        `numerics`' value (0 or -90). The proposals start at `a = 0.5`. Targets are brought to the native range
        for the losses; returned boxes (`pred_boxes`, post-processing) are le90 whatever the range.

    Backbone training policy (transformers' ResNet backbones; `backbone_sl_detr.py`):

    backbone_frozen_stages (`int`, defaults to 1):
        `-1` trains the whole backbone, `0` freezes the stem, `n >= 1` the stem and stages `1..n` (Deformable
        DETR's rule for a pretrained ResNet is 1; mmdet's `frozen_stages`).
    backbone_stem (`str`, defaults to `"resnet"`):
        `"resnet"`: the ResNet's 7x7 convolution and max pool. `"light"` (transformers' ResNet trained from
        scratch, `backbone_norm="batch_norm"`): two 3x3 stride-2 convolutions (`stem_sl_detr.py`), the same
        output at about a third of the cost (BENCHMARKS.md "Angle range, dense encoder loss, stride 8 and a light
        stem on HIT-UAV").
    backbone_downsample (`str`, defaults to `"strided"`):
        `"strided"`: the ResNet's downsampling shortcuts are 1x1 stride-2 convolutions (one pixel of each 2 x 2
        block). `"space_to_depth"` (transformers' ResNet trained from scratch, `backbone_norm="batch_norm"`):
        space-to-depth by 2, then a 1x1 convolution from four times the channels, computed as one 2 x 2
        convolution with stride 2 (`space_to_depth_sl_detr.py`, SPD-Conv's idea): the shortcut carries every pixel
        of a small object to the next stage.
    backbone_norm (`str`, defaults to `"frozen"`):
        `"frozen"`: Deformable DETR's frozen batch norms (right for a pretrained backbone). `"batch_norm"`: the
        batch norms of the unfrozen stages learn (batch statistics while training), which a backbone trained
        from scratch needs: its frozen norms would be identities. `"eval_batch_norm"`: frozen, computed by torch's
        batch-norm kernel as mmdetection's `norm_eval` ResNets (bit for bit; the converters set it).
    """

    model_type = "sl_detr"

    config_version: int = CONFIG_VERSION
    box_type: str = "rotated"
    # RHINO's R50 sizes (the other architecture fields keep Deformable DETR's defaults, which are RHINO's)
    num_queries: int = 900
    two_stage_num_proposals: int = 900
    two_stage: bool = True
    with_box_refine: bool = True
    auxiliary_loss: bool = True
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    dropout: float | int = 0.0
    # matcher
    class_cost: float | int = 2.0
    bbox_cost: float | int = 5.0
    geometric_cost: float | int = 2.0
    matcher_box_cost: str = "l1"
    # losses
    cls_loss_coefficient: float | int = 1.0
    bbox_loss_coefficient: float | int = 5.0
    sync_loss_coefficient: float | int = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float | int = 2.0
    use_sync_loc: bool = True
    use_quality_cls: bool = True
    quality_alpha: float = 0.25
    quality_gamma: float | int = 2.0
    quality_min: float = 0.01
    sync_gain: float | int = 1.5
    sync_giou_floor: float = 0.001
    sync_giou_t_min: float | int = 0.0
    sync_giou_t_max: float | int = 1.2
    sync_kld_t_min: float | int = 0.8
    sync_kld_t_max: float | int = 1.1
    kld_tau: float | int = 1.0
    max_detections: int = 500
    # DINO / RHINO parts
    num_denoising: int = 100
    max_denoising_groups: int = 30
    label_noise_ratio: float | int = 0.5
    box_noise_scale: float | int = 1.0
    angle_noise_scale: float | int = 0.0
    dynamic_denoising: bool | None = None
    mixed_query_selection: bool = True
    query_selection_nms: float | None = None
    value_only_levels: int = 0
    dense_loss_coefficient: float | int = 0.0
    look_forward_twice: bool = True
    rotated_sampling: str = "rhino"
    # numerics (None: the value of `numerics`)
    numerics: str = "rhino"
    position_embedding_temperature: float | int | None = None
    position_embedding_offset: float | int | None = None
    angle_start: float | int | None = None
    # backbone training policy
    backbone_frozen_stages: int = 1
    backbone_norm: str = "frozen"
    backbone_stem: str = "resnet"
    backbone_downsample: str = "strided"

    def __post_init__(self, **kwargs):
        _refuse_removed_fields(self, kwargs)
        if self.numerics in NUMERICS:
            for key, value in NUMERICS[self.numerics].items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
        if self.id2label is None and "num_labels" not in kwargs:
            self.id2label = dict(enumerate(DOTA_CLASSES["1.0"]))
        if self.id2label is not None and self.label2id is None:
            self.label2id = {name: int(i) for i, name in self.id2label.items()}
        super().__post_init__(**kwargs)
        if self.id2label is not None and self.label2id is not None and len(self.label2id) != len(self.id2label):
            self.label2id = {name: int(i) for i, name in self.id2label.items()}
        _forget_pipelines_served_here(self)

    # ------------------------------------------------------------------------------------------------ presets

    @classmethod
    def paper(cls, **overrides) -> SlDetrConfig:
        """The paper's model (the defaults): RHINO's R50 architecture and numerics, the synchronized losses on."""
        return cls(**overrides)

    @classmethod
    def deformable_detr(cls, **overrides) -> SlDetrConfig:
        """Deformable DETR with SL-DETR's angle heads and losses: the DINO / RHINO parts off
        (`DEFORMABLE_DETR_PARTS`) and transformers' numerics, so that a converted Deformable DETR computes what it
        computed (`SlDetrForObjectDetection.from_deformable_detr`)."""
        return cls(**{**DEFORMABLE_DETR_PARTS, "numerics": "deformable_detr", **overrides})

    @classmethod
    def tiny(cls, id2label: dict[int, str] | None = None, d_model: int = 128, layers: int = 2,
             num_queries: int = 100, backbone_stages: Sequence[str] = ("stage2", "stage3", "stage4"),
             num_feature_levels: int | None = None, **overrides) -> SlDetrConfig:
        """A small SL-DETR that trains on a CPU in minutes (the demo's and `sl-detr train --size tiny`'s model).

        A slim random-init ResNet (`backbone_stages` fed to the encoder: strides 8, 16, 32 for stage2..4;
        `num_feature_levels`, default one per stage, may add stride-2 levels after the last), trained whole with
        learning batch norms (`backbone_frozen_stages=-1, backbone_norm="batch_norm"`: Deformable DETR's frozen
        stem and norms are for a pretrained backbone); `d_model`, FFN `4 * d_model`, `layers` encoder and decoder
        layers, `num_queries` queries and detections. The query selection drops proposals that repeat a better
        one (`query_selection_nms=0.6`, BENCHMARKS.md "Proposal NMS"): with few queries and layers, several
        queries on one object end as duplicates. Numerics: `"deformable_detr"` (its BENCHMARKS.md figures were
        measured so). `overrides` are further fields.
        """
        return cls(**{**cls.tiny_kwargs(id2label, d_model, layers, num_queries, backbone_stages, num_feature_levels),
                      **overrides})

    @staticmethod
    def tiny_kwargs(id2label: dict[int, str] | None = None, d_model: int = 128, layers: int = 2,
                    num_queries: int = 100, backbone_stages: Sequence[str] = ("stage2", "stage3", "stage4"),
                    num_feature_levels: int | None = None) -> dict:
        """The fields [`SlDetrConfig.tiny`] sets, as keyword arguments (for callers that merge overrides first)."""
        stages = list(backbone_stages)
        levels = len(stages) if num_feature_levels is None else num_feature_levels
        if not stages or levels < len(stages):
            raise ValueError(f"need >= 1 backbone stage and num_feature_levels >= {len(stages)}, got {stages}, "
                             f"{levels}")
        backbone = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                                layer_type="basic", out_features=stages)
        values = dict(
            backbone_config=backbone, use_pretrained_backbone=False, num_feature_levels=levels, d_model=d_model,
            encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=4, decoder_attention_heads=4,
            encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model, encoder_n_points=4, decoder_n_points=4,
            num_queries=num_queries, two_stage_num_proposals=num_queries, max_detections=num_queries,
            backbone_frozen_stages=-1, backbone_norm="batch_norm", query_selection_nms=TINY_QUERY_SELECTION_NMS,
            numerics="deformable_detr",
        )
        if id2label is not None:
            values.update(id2label=dict(id2label), label2id={name: int(i) for i, name in id2label.items()})
        return values

    # ------------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> SlDetrConfig:
        """`PretrainedConfig.from_dict`; a version-1 dict (no `config_version`) is upgraded first
        ([`upgrade_config_v1`]), a dict of a newer version than this code knows is refused."""
        version = config_dict.get("config_version", 1)
        if version == 1:
            config_dict = upgrade_config_v1(config_dict)
        elif not isinstance(version, int) or version > CONFIG_VERSION:
            raise ValueError(f"config_version {version!r}: written by a newer sl_detr_hf than this one (which reads "
                             f"versions 1 to {CONFIG_VERSION}); upgrade sl_detr_hf")
        return super().from_dict(config_dict, **kwargs)

    # ------------------------------------------------------------------------------------------------ derived

    @property
    def use_dynamic_denoising(self) -> bool:
        """Whether dynamic denoising is on: `dynamic_denoising`, or by default on for `"rotated"` only."""
        if self.dynamic_denoising is None:
            return self.box_type == "rotated"
        return self.dynamic_denoising

    @property
    def rhino_numerics(self) -> bool:
        """`numerics == "rhino"`: the switch each numerics detail reads (see `numerics`)."""
        return self.numerics == "rhino"

    @property
    def angle_offset(self) -> float:
        """`angle_start` in units of pi: `theta = (a + angle_offset) * pi` (-0.5 for le90, 0 for RHINO)."""
        return self.angle_start / 180

    @property
    def box_dim(self) -> int:
        """Width of a box: 5 for `"rotated"`, 4 for `"horizontal"`."""
        return 5 if self.box_type == "rotated" else 4

    def validate_architecture(self):
        """Reject inconsistent values with a message that names the field."""
        super().validate_architecture()
        if self.config_version != CONFIG_VERSION:
            raise ValueError(f"`config_version` must be {CONFIG_VERSION} (a version-1 dict is upgraded by "
                             f"`SlDetrConfig.from_dict`), got {self.config_version!r}")
        if self.box_type not in _BOX_TYPES:
            raise ValueError(f"`box_type` must be one of {_BOX_TYPES}, got {self.box_type!r}")
        if self.numerics not in NUMERICS:
            raise ValueError(f"`numerics` must be one of {tuple(NUMERICS)}, got {self.numerics!r}")
        for name, default in _IGNORED_INHERITED.items():
            if getattr(self, name) != default:
                raise ValueError(f"`{name}` is not read by SL-DETR (its matcher and losses have their own fields: "
                                 f"docs/losses.md); leave it at {default}, got {getattr(self, name)!r}")
        for name in ("num_queries", "two_stage_num_proposals", "d_model", "encoder_layers", "decoder_layers",
                     "num_feature_levels", "max_detections"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        for name in ("class_cost", "bbox_cost", "geometric_cost", "cls_loss_coefficient", "bbox_loss_coefficient",
                     "sync_loss_coefficient", "focal_gamma", "quality_gamma", "sync_gain", "kld_tau",
                     "dense_loss_coefficient"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}")
        for name in ("focal_alpha", "quality_alpha"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)!r}")
        if not 0 < self.quality_min <= 1:
            raise ValueError(f"`quality_min` must be in (0, 1], got {self.quality_min!r}")
        if not 0 <= self.sync_giou_floor <= 1:
            raise ValueError(f"`sync_giou_floor` must be in [0, 1], got {self.sync_giou_floor!r}")
        for lo, hi in (("sync_giou_t_min", "sync_giou_t_max"), ("sync_kld_t_min", "sync_kld_t_max")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"`{lo}` ({getattr(self, lo)}) must be <= `{hi}` ({getattr(self, hi)})")
        for name in ("num_denoising", "max_denoising_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}")
        if not 0 <= self.label_noise_ratio <= 1:
            raise ValueError(f"`label_noise_ratio` must be in [0, 1], got {self.label_noise_ratio!r}")
        for name in ("box_noise_scale", "angle_noise_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)!r}")
        if self.rotated_sampling not in _ROTATED_SAMPLING:
            raise ValueError(f"`rotated_sampling` must be one of {_ROTATED_SAMPLING}, got {self.rotated_sampling!r}")
        if self.matcher_box_cost not in _MATCHER_BOX_COSTS:
            raise ValueError(f"`matcher_box_cost` must be one of {_MATCHER_BOX_COSTS}, got {self.matcher_box_cost!r}")
        if not isinstance(self.backbone_frozen_stages, int) or not -1 <= self.backbone_frozen_stages <= 4:
            raise ValueError(
                f"`backbone_frozen_stages` must be an integer in [-1, 4], got {self.backbone_frozen_stages!r}")
        if not isinstance(self.value_only_levels, int) or not 0 <= self.value_only_levels < self.num_feature_levels:
            raise ValueError(f"`value_only_levels` must be an integer in [0, num_feature_levels - 1] = [0, "
                             f"{self.num_feature_levels - 1}] (the encoder needs a level to update), got "
                             f"{self.value_only_levels!r}")
        if self.backbone_stem not in BACKBONE_STEMS:
            raise ValueError(f"`backbone_stem` must be one of {BACKBONE_STEMS}, got {self.backbone_stem!r}")
        if self.backbone_stem == "light" and self.backbone_norm != "batch_norm":
            raise ValueError(f"`backbone_stem='light'` is for a backbone trained from scratch: it needs "
                             f"backbone_norm='batch_norm' (its batch norms learn), got {self.backbone_norm!r}")
        if self.backbone_downsample not in BACKBONE_DOWNSAMPLES:
            raise ValueError(f"`backbone_downsample` must be one of {BACKBONE_DOWNSAMPLES}, got "
                             f"{self.backbone_downsample!r}")
        if self.backbone_downsample == "space_to_depth" and self.backbone_norm != "batch_norm":
            raise ValueError(f"`backbone_downsample='space_to_depth'` is for a backbone trained from scratch (its "
                             f"shortcuts start from random weights): it needs backbone_norm='batch_norm', got "
                             f"{self.backbone_norm!r}")
        if self.query_selection_nms is not None and not 0 < self.query_selection_nms <= 1:
            raise ValueError(f"`query_selection_nms` must be None or in (0, 1], got {self.query_selection_nms!r}")
        if not self.position_embedding_temperature > 0:
            raise ValueError(f"`position_embedding_temperature` must be > 0, got "
                             f"{self.position_embedding_temperature!r}")
        if not -90 <= self.angle_start <= 0:
            raise ValueError(f"`angle_start` must be in [-90, 0] degrees, got {self.angle_start!r}")
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"`backbone_norm` must be one of {BACKBONE_NORMS}, got {self.backbone_norm!r}")
        if self.two_stage and self.two_stage_num_proposals != self.num_queries:
            raise ValueError(f"with `two_stage`, `two_stage_num_proposals` ({self.two_stage_num_proposals}) must "
                             f"equal `num_queries` ({self.num_queries})")


def _refuse_removed_fields(config: SlDetrConfig, kwargs: dict) -> None:
    """Pop version-1 field names from `kwargs` (the keyword arguments that are not fields) when their value is what
    `config` computes anyway (e.g. `num_hybrid_queries=0`, or a folded numerics switch at `config.numerics`' value);
    raise a ValueError naming the field and its replacement otherwise. A version-1 `config.json` is read by
    [`upgrade_config_v1`] instead, which keeps what it computed."""
    numerics = _FOLDED_NUMERICS.get(config.numerics, {})
    for key in [key for key in kwargs if key in _FOLDED_NUMERICS["rhino"]]:
        if kwargs[key] != numerics.get(key):
            raise ValueError(f"`{key}` is folded into `numerics` (config_version 2): `numerics='rhino'` or "
                             f"'deformable_detr' (docs/rhino_numerics.md); got {key}={kwargs[key]!r} with "
                             f"numerics={config.numerics!r}")
        kwargs.pop(key)
    if _ENCODER_LOSS_ON_TOPK in kwargs:
        value = kwargs.pop(_ENCODER_LOSS_ON_TOPK)
        if config.two_stage and bool(value) != bool(config.mixed_query_selection):
            raise ValueError(f"`encoder_loss_on_topk` is folded into `mixed_query_selection` (config_version 2: the "
                             f"encoder loss is on the selected proposals exactly with mixed query selection); got "
                             f"encoder_loss_on_topk={value!r} with mixed_query_selection="
                             f"{config.mixed_query_selection!r}")
    for key in [key for key in kwargs if key in _REMOVED_TRAINING]:
        if kwargs[key] != _REMOVED_TRAINING[key]:
            raise ValueError(f"`{key}` was {_REMOVED_WHY}; got {key}={kwargs[key]!r}")
        kwargs.pop(key)


def _forget_pipelines_served_here(config: SlDetrConfig) -> None:
    """Drop the `custom_pipelines` entries of a saved folder that name the pipeline this very package registered
    for their task. `sl_detr_hf.hub.save_for_hub` declares the shipped `pipeline_oriented_detection.py` there so that
    `pipeline(model=folder, trust_remote_code=True)` works where `sl_detr_hf` is not installed; where it is imported,
    it registers that task itself, and transformers would still ask for `trust_remote_code` (or prompt) for any
    declared pipeline: without the entry, `pipeline("oriented-object-detection", model=folder)` runs the installed
    code and asks nothing. A copy of this file loaded as remote code keeps the entry (nothing of its package is
    registered), and so does an entry naming other code."""
    pipelines = getattr(config, "custom_pipelines", None)
    registry = getattr(sys.modules.get("transformers.pipelines"), "PIPELINE_REGISTRY", None)
    if not isinstance(pipelines, dict) or registry is None:
        return
    package = __name__.rpartition(".")[0]

    def served_here(task: str, spec) -> bool:
        impl = registry.supported_tasks.get(task, {}).get("impl")
        if impl is None or not isinstance(spec, dict) or impl.__module__.rpartition(".")[0] != package:
            return False
        return spec.get("impl") == f"{impl.__module__.rpartition('.')[2]}.{impl.__name__}"

    kept = {task: spec for task, spec in pipelines.items() if not served_here(task, spec)}
    if len(kept) == len(pipelines):
        return
    if kept:
        config.custom_pipelines = kept
    else:
        del config.custom_pipelines
