"""SL-DETR configuration: Deformable DETR plus an oriented box head and the synchronized loss."""

from __future__ import annotations

import sys

from huggingface_hub.dataclasses import strict
from transformers import DeformableDetrConfig

__all__ = ["DOTA_CLASSES", "RHINO_SWITCHES", "SlDetrConfig"]

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
_ROTATED_SAMPLING = ("rhino", "geometric", "none")
_MATCHER_BOX_COSTS = ("l1", "hausdorff")
BACKBONE_NORMS = ("frozen", "batch_norm", "eval_batch_norm")
# RHINO's (and mmdetection DINO's) numerics, each read in their code (see the fields' docs). The defaults of the
# fields are the computation of models saved before these switches existed; the paper preset and the checkpoint
# converters (`sl_detr_hf.convert`) set these values.
RHINO_SWITCHES: dict = dict(
    position_embedding_temperature=20, position_embedding_offset=0.0, query_position_temperature=10000,
    query_position_valid_ratios=True, decoder_output_norm=True, class_aware_topk=True, angle_start=0,
    decoder_refine_eps=1e-3, mask_invalid_proposal_angle=True, rotated_sampling_in_pixels=False,
)


@strict
class SlDetrConfig(DeformableDetrConfig):
    r"""Configuration of [`SlDetrForObjectDetection`].

    `SlDetrConfig()` is the paper's DOTA-v1.0 architecture (`sldetr-4scale_r50`): ResNet-50, 4 feature levels,
    6 + 6 layers, d_model 256, FFN 2048, dropout 0, 900 queries, two-stage proposals with iterative box
    refinement, 15 DOTA classes. All Deformable DETR fields keep their meaning; the fields below are new.

    box_type (`str`, defaults to `"rotated"`):
        `"rotated"`: boxes `(cx, cy, w, h, theta)`, L1 + (synchronized) KLD. `"horizontal"`: boxes
        `(cx, cy, w, h)`, L1 + (synchronized) GIoU, a drop-in for Deformable DETR.
    class_cost, bbox_cost, geometric_cost (`float`, defaults 2, 5, 2):
        Hungarian matcher weights of the focal classification cost, the L1 cost and the geometric cost
        (KLD loss for rotated boxes, `-GIoU` for horizontal ones).
    cls_loss_coefficient, bbox_loss_coefficient, sync_loss_coefficient (`float`, defaults 1, 5, 2):
        Loss weights of classification, L1 and the (synchronized) KLD / GIoU term, per decoder layer.
    focal_alpha, focal_gamma (`float`, defaults 0.25, 2):
        Focal loss parameters (the matcher cost always; the classification loss when `use_quality_cls=False`).
    use_sync_loc (`bool`, defaults to `True`):
        Synchronize the localization loss with the L1 distance (docs/losses.md#synchronized-giou,
        docs/losses.md#synchronized-kld); `False` gives plain
        GIoU / KLD losses.
    use_quality_cls (`bool`, defaults to `True`):
        Quality-aware classification (dynamic weights, docs/losses.md#quality-aware-classification); `False`
        gives the focal loss.
    quality_alpha (`float`, defaults to 0.25), quality_gamma (`float`, defaults to 2), quality_min (`float`,
    defaults to 0.01):
        `t = clamp(p^alpha * q^(1 - alpha), min=quality_min)`; negatives weighted by `p^gamma`.
    sync_gain (`float`, defaults to 1.5):
        The gain `k` in the synchronization factor `exp(k * (t - 1))`.
    sync_giou_floor (`float`, defaults to 0.001), sync_giou_t_min / sync_giou_t_max (defaults 0, 1.2):
        GIoU clamp and `t` clamp range of the synchronized GIoU (docs/losses.md#synchronized-giou).
    sync_kld_t_min / sync_kld_t_max (`float`, defaults 0.8, 1.1):
        `t` clamp range of the synchronized KLD (docs/losses.md#synchronized-kld).
    kld_tau (`float`, defaults to 1.0):
        `tau` in the KLD loss `1 - 1 / (tau + ln(1 + d))`.
    one_to_many_k (`int`, defaults to 1), rank_weights (`list[float]`, optional):
        One-to-many matching: each target takes its `k` best queries, the i-th weighted by `rank_weights[i]`
        (defaults to all ones). `k = 1` is one-to-one Hungarian matching.
    max_detections (`int`, defaults to 500):
        Detections kept per image by post-processing.

    DINO / RHINO parts (docs/architecture.md#dino-and-rhino-parts; each a switch so that its effect can be
    measured alone). Denoising and
    mixed query selection need two-stage proposals: single-stage models (`two_stage=False`) ignore them. With
    denoising or mixed query selection the decoder builds every query's position embedding from its current
    reference box (DINO's `ref_point_head`). `SlDetrForObjectDetection.from_deformable_detr` turns all of them off
    (`num_denoising=0, mixed_query_selection=False, look_forward_twice=False, rotated_sampling="none",
    encoder_loss_on_topk=False`): the converted model then computes what the Deformable DETR computed.

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
        Two-stage: the decoder's initial reference boxes (5-d, proposal angle 0) come from the top-k encoder
        proposals, its content queries are learned embeddings (DINO). `False`: Deformable DETR's two-stage
        queries (content and position from the proposals).
    query_selection_nms (`float`, *optional*):
        Two-stage: before taking the top-k proposals, drop those that overlap a better-scoring one with ProbIoU
        above this (a fixed-shape Fast NMS over the best `4k` proposals; DETA's proposal NMS), so that the
        queries start on different objects. `None` (default, RHINO's config): plain top-k.
    num_hybrid_queries (`int`, defaults to 0), hybrid_k (`int`, defaults to 6), hybrid_loss_coefficient (`float`,
    defaults to 1.0):
        H-DETR's hybrid matching (`hybrid_sl_detr.py`; needs mixed query selection): at training time this many
        extra queries start from the top encoder proposals, see no other queries, and are matched one-to-many
        (each target takes its `hybrid_k` best); their losses, normalized by `hybrid_k * num_boxes`, are weighted
        by `hybrid_loss_coefficient`. Inference does not run them. 0 (default, RHINO's config): off.
    look_forward_twice (`bool`, defaults to `True`):
        Layer `l`'s box loss uses the undetached refined reference of layer `l - 1` (DINO / RHINO).
    rotated_sampling (`str`, defaults to `"rhino"`):
        Decoder deformable sampling around 5-d references: `"rhino"` (offsets times the rotated half-size
        vector), `"geometric"` (offsets rotated by the angle), `"none"` (Deformable DETR's axis-aligned
        sampling). Ignored for `"horizontal"`.
    matcher_box_cost (`str`, defaults to `"l1"`):
        The box term weighted by `bbox_cost` in the matcher: `"l1"` (today's) or `"hausdorff"` (the Hausdorff
        distance of the two boxes' corners, RHINO's best config with `bbox_cost=5, geometric_cost=5`).
    encoder_loss_on_topk (`bool`, defaults to `True`):
        The two-stage encoder loss on the top-k selected proposals (DINO / RHINO); `False` matches all encoder
        tokens (the original Deformable DETR).
    match_once_per_step (`bool`, defaults to `False`):
        Match the selected encoder proposals once and reuse the assignment for every decoder layer (the seed's
        reported head) instead of matching every layer.

    Numerical fidelity to RHINO / mmdetection's DINO (`RHINO_SWITCHES`, docs/rhino_numerics.md#the-switches).
    The defaults are the
    computation of SL-DETR models saved before these fields existed (a `config.json` without them loads as it
    was); `RHINO_SWITCHES` are RHINO's values, set by the paper-size preset and the checkpoint converters
    (`sl_detr_hf.convert`), with which a converted RHINO / DINO checkpoint computes what it computed there:

    position_embedding_temperature (`float`, defaults to 10000), position_embedding_offset (`float`, defaults to
    -0.5):
        The encoder's normalized sine position encoding, `(cumsum + offset) / (total + 1e-6) * 2 pi` over
        `temperature ** (2 floor(i / 2) / (d_model / 2))` (transformers: 10000 and -0.5; RHINO / DINO: 20 and 0).
    query_position_temperature (`float`, defaults to 10000):
        Temperature of the sine embedding of the reference boxes that gives the decoder's query positions
        (`ref_point_head`; RHINO and DINO keep 10000 there).
    query_position_valid_ratios (`bool`, defaults to `False`):
        Build the query position from the reference box scaled by the first level's valid ratios, as DINO /
        RHINO do (differs from the unscaled box only for padded images).
    decoder_output_norm (`bool`, defaults to `False`):
        mmdetection DINO's final decoder LayerNorm (`decoder.norm`): each layer's output is normalized before the
        class / box heads; the state passed to the next layer and the in-loop box refinement are not.
    class_aware_topk (`bool`, defaults to `False`):
        Two-stage: rank the encoder proposals by their best class logit (DINO / RHINO; the encoder loss is then
        class-aware too) instead of by the first class (Deformable DETR's binary proposal score).
    angle_start (`float`, defaults to -90):
        The angle range in degrees (mmrotate's `start_angle`): the model decodes `theta = (a + angle_start / 180)
        * pi` from its sigmoid-space angle `a`, so its native range is `[angle_start, angle_start + 180)`. -90 is le90
        (`(a - 0.5) * pi`); RHINO's `width_longer=True, start_angle=0` is 0 (`a * pi`). The proposals start at
        `a = 0.5`. Targets are brought to the native range for the losses; returned boxes (`pred_boxes`,
        post-processing) are le90 whatever the range.
    decoder_refine_eps (`float`, defaults to 1e-5):
        The inverse-sigmoid clamp of the decoder's in-loop reference refinement (DINO / RHINO: 1e-3); the heads'
        predictions keep 1e-5.
    mask_invalid_proposal_angle (`bool`, defaults to `False`):
        Give padded / border encoder tokens a `+inf` proposal angle logit like their other coordinates (RHINO)
        instead of the angle head's finite prediction.
    rotated_sampling_in_pixels (`bool`, defaults to `True`):
        Rotated decoder sampling turns the offset vector in pixel units (`True`, a rigid rotation on any feature
        map) or in normalized units (`False`, RHINO's code: equal only on square maps; see `attention_sl_detr.py`).

    Backbone training policy (transformers' ResNet backbones; `backbone_sl_detr.py`):

    backbone_frozen_stages (`int`, defaults to 1):
        `-1` trains the whole backbone, `0` freezes the stem, `n >= 1` the stem and stages `1..n` (Deformable
        DETR's rule for a pretrained ResNet is 1; mmdet's `frozen_stages`).
    backbone_norm (`str`, defaults to `"frozen"`):
        `"frozen"`: Deformable DETR's frozen batch norms (right for a pretrained backbone). `"batch_norm"`: the
        batch norms of the unfrozen stages learn (batch statistics while training), which a backbone trained
        from scratch needs: its frozen norms would be identities. `"eval_batch_norm"`: frozen, computed by torch's
        batch-norm kernel as mmdetection's `norm_eval` ResNets (bit for bit; the converters set it).
    """

    model_type = "sl_detr"

    box_type: str = "rotated"
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
    one_to_many_k: int = 1
    rank_weights: list[float] | None = None
    max_detections: int = 500
    # DINO / RHINO parts (docs/architecture.md#dino-and-rhino-parts)
    num_denoising: int = 100
    max_denoising_groups: int = 30
    label_noise_ratio: float | int = 0.5
    box_noise_scale: float | int = 1.0
    angle_noise_scale: float | int = 0.0
    dynamic_denoising: bool | None = None
    mixed_query_selection: bool = True
    query_selection_nms: float | None = None
    num_hybrid_queries: int = 0
    hybrid_k: int = 6
    hybrid_loss_coefficient: float | int = 1.0
    look_forward_twice: bool = True
    rotated_sampling: str = "rhino"
    matcher_box_cost: str = "l1"
    encoder_loss_on_topk: bool = True
    match_once_per_step: bool = False
    # numerical fidelity to RHINO / DINO (RHINO_SWITCHES); defaults: the computation before these fields
    position_embedding_temperature: float | int = 10000
    position_embedding_offset: float | int = -0.5
    query_position_temperature: float | int = 10000
    query_position_valid_ratios: bool = False
    decoder_output_norm: bool = False
    class_aware_topk: bool = False
    angle_start: float | int = -90
    decoder_refine_eps: float = 1e-5
    mask_invalid_proposal_angle: bool = False
    rotated_sampling_in_pixels: bool = True
    # backbone training policy
    backbone_frozen_stages: int = 1
    backbone_norm: str = "frozen"

    def __post_init__(self, **kwargs):
        if self.id2label is None and "num_labels" not in kwargs:
            self.id2label = dict(enumerate(DOTA_CLASSES["1.0"]))
        if self.id2label is not None and self.label2id is None:
            self.label2id = {name: int(i) for i, name in self.id2label.items()}
        super().__post_init__(**kwargs)
        if self.id2label is not None and self.label2id is not None and len(self.label2id) != len(self.id2label):
            self.label2id = {name: int(i) for i, name in self.id2label.items()}
        _forget_pipelines_served_here(self)

    @property
    def use_dynamic_denoising(self) -> bool:
        """Whether dynamic denoising is on: `dynamic_denoising`, or by default on for `"rotated"` only."""
        if self.dynamic_denoising is None:
            return self.box_type == "rotated"
        return self.dynamic_denoising

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
        if self.box_type not in _BOX_TYPES:
            raise ValueError(f"`box_type` must be one of {_BOX_TYPES}, got {self.box_type!r}")
        for name in ("num_queries", "two_stage_num_proposals", "d_model", "encoder_layers", "decoder_layers",
                     "num_feature_levels", "max_detections", "one_to_many_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        for name in ("class_cost", "bbox_cost", "geometric_cost", "cls_loss_coefficient", "bbox_loss_coefficient",
                     "sync_loss_coefficient", "focal_gamma", "quality_gamma", "sync_gain", "kld_tau"):
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
        if self.rank_weights is not None and len(self.rank_weights) != self.one_to_many_k:
            raise ValueError(f"`rank_weights` must have `one_to_many_k` = {self.one_to_many_k} entries, "
                             f"got {len(self.rank_weights)}")
        for name in ("num_denoising", "max_denoising_groups", "num_hybrid_queries"):
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
        if not isinstance(self.hybrid_k, int) or self.hybrid_k < 1:
            raise ValueError(f"`hybrid_k` must be a positive integer, got {self.hybrid_k!r}")
        if self.hybrid_loss_coefficient < 0:
            raise ValueError(f"`hybrid_loss_coefficient` must be >= 0, got {self.hybrid_loss_coefficient!r}")
        if self.num_hybrid_queries > 0 and self.one_to_many_k > 1:
            raise ValueError("`num_hybrid_queries` > 0 (hybrid matching) needs one-to-one matching of the other "
                             f"queries (`one_to_many_k` = 1), got `one_to_many_k` = {self.one_to_many_k}")
        if self.query_selection_nms is not None and not 0 < self.query_selection_nms <= 1:
            raise ValueError(f"`query_selection_nms` must be None or in (0, 1], got {self.query_selection_nms!r}")
        for name in ("position_embedding_temperature", "query_position_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.decoder_refine_eps < 0.5:
            raise ValueError(f"`decoder_refine_eps` must be in (0, 0.5), got {self.decoder_refine_eps!r}")
        if not -90 <= self.angle_start <= 0:
            raise ValueError(f"`angle_start` must be in [-90, 0] degrees, got {self.angle_start!r}")
        if self.backbone_norm not in BACKBONE_NORMS:
            raise ValueError(f"`backbone_norm` must be one of {BACKBONE_NORMS}, got {self.backbone_norm!r}")
        if self.two_stage and self.two_stage_num_proposals != self.num_queries:
            raise ValueError(f"with `two_stage`, `two_stage_num_proposals` ({self.two_stage_num_proposals}) must "
                             f"equal `num_queries` ({self.num_queries})")


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
