"""SL-DETR model: Deformable DETR (two-stage, iterative box refinement) with an oriented box head.

The encoder, decoder, backbone and box refinement are transformers' Deformable DETR, used unchanged; this file
only adds what SL-DETR changes (DESIGN.md section 3):

- every decoder layer and the two-stage encoder head predict an angle next to the 4-d box. The angle lives in
  sigmoid space, ``a in (0, 1)``, ``theta = (a - 0.5) * pi`` (radians, le90 range), and is refined across layers
  like the other coordinates: ``a_l = sigmoid(delta_a_l + inverse_sigmoid(a_{l-1}))``. The encoder proposals start
  at ``a = 0.5`` (``theta = 0``) and the angle heads' last layer is zero-initialized, so an untrained model (or
  one converted from Deformable DETR) predicts ``theta = 0`` everywhere;
- the 4-d reference boxes that drive deformable sampling stay exactly as in Deformable DETR, so in
  ``box_type="horizontal"`` the model *is* Deformable DETR (same weights, same outputs) and in ``"rotated"`` mode
  logits and the first four box coordinates equal those of the Deformable DETR it was converted from;
- the loss is [`SlDetrLoss`] (synchronized GIoU / KLD and quality-aware classification), never transformers'
  fallback loss.

This file ships with ``trust_remote_code`` checkpoints: it imports only its sibling files (relative imports),
torch and transformers.
"""

import copy
import math
import os
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrForObjectDetection,
    DeformableDetrMLPPredictionHead,
    DeformableDetrModel,
    DeformableDetrModelOutput,
    DeformableDetrObjectDetectionOutput,
    DeformableDetrPreTrainedModel,
    inverse_sigmoid,
)
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .configuration_sl_detr import SlDetrConfig
from .loss_sl_detr import SlDetrLoss

logger = logging.get_logger(__name__)

__all__ = [
    "SlDetrConversionReport",
    "SlDetrForObjectDetection",
    "SlDetrModel",
    "SlDetrModelOutput",
    "SlDetrObjectDetectionOutput",
    "SlDetrPreTrainedModel",
    "angle_from_sigmoid",
]

# Deformable DETR config fields that are training hyper-parameters of *its* loss; SL-DETR keeps its own defaults
# for them when a model is converted (the architecture fields are all copied).
_DDETR_LOSS_FIELDS = (
    "class_cost", "bbox_cost", "giou_cost", "mask_loss_coefficient", "dice_loss_coefficient",
    "bbox_loss_coefficient", "giou_loss_coefficient", "eos_coefficient", "focal_alpha", "auxiliary_loss",
)
# Bookkeeping fields of a serialized config that must not be passed to a new config.
_CONFIG_META_FIELDS = ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path")


def angle_from_sigmoid(angle: torch.Tensor) -> torch.Tensor:
    """Map the angle in sigmoid space, ``a in (0, 1)``, to radians: ``theta = (a - 0.5) * pi`` in ``(-pi/2, pi/2)``."""
    return (angle - 0.5) * math.pi


@dataclass
class SlDetrModelOutput(DeformableDetrModelOutput):
    r"""
    Outputs of [`SlDetrModel`]: those of Deformable DETR's model plus the queries' initial angle.

    With `B` the batch size, `Q = config.num_queries`, `L = config.decoder_layers`, `S` the number of flattened
    multi-scale feature tokens, `d = config.d_model`, `C = config.num_labels`, `D = config.box_dim` (5 for
    `"rotated"`, 4 for `"horizontal"`):

    init_reference_points (`(B, Q, 4)`, or `(B, Q, 2)` without two-stage / box refinement):
        Initial reference boxes (sigmoid space) sent through the decoder.
    last_hidden_state (`(B, Q, d)`): decoder output of the last layer.
    intermediate_hidden_states (`(B, L, Q, d)`): output of every decoder layer.
    intermediate_reference_points (`(B, L, Q, 4)`): reference boxes refined by every decoder layer.
    enc_outputs_class (`(B, S, C)`, two-stage only): class logits of every encoder token (proposal).
    enc_outputs_coord_logits (`(B, S, D)`, two-stage only):
        Proposals in inverse-sigmoid space: `(cx, cy, w, h)` logits and, for `"rotated"`, the angle logit `z`
        (`theta = (sigmoid(z) - 0.5) * pi`). Padding / invalid tokens have `+inf` box logits, as in Deformable DETR.
    init_reference_angles (`(B, Q, 1)`, `"rotated"` only):
        Initial angle of the queries in sigmoid space (`0.5` is `theta = 0`): the selected encoder proposals'
        angles (detached) with two-stage, else `0.5`.
    """

    init_reference_angles: torch.Tensor | None = None


@dataclass
class SlDetrObjectDetectionOutput(DeformableDetrObjectDetectionOutput):
    r"""
    Output of [`SlDetrForObjectDetection`]; the fields of `DeformableDetrObjectDetectionOutput`, so that
    Deformable DETR post-processing works unchanged in `"horizontal"` mode.

    Shapes as in [`SlDetrModelOutput`] (`D = config.box_dim`):

    loss (`()` scalar tensor, when `labels` are given): weighted sum of all [`SlDetrLoss`] terms.
    loss_dict (`dict[str, Tensor]`, when `labels` are given): the individual (weighted) loss terms, for logging.
    logits (`(B, Q, C)`): classification logits of the last decoder layer (sigmoid / focal style, no no-object).
    pred_boxes (`(B, Q, D)`):
        Normalized boxes of the last decoder layer: `(cx, cy, w, h)` in `[0, 1]` relative to the image's own
        (unpadded) size and, for `"rotated"`, `theta` in radians in `(-pi/2, pi/2)` (DESIGN.md section 2).
    auxiliary_outputs (`list[dict]`, when `labels` are given and `config.auxiliary_loss`):
        `{"logits": (B, Q, C), "pred_boxes": (B, Q, D)}` for decoder layers `0 .. L - 2`.
    enc_outputs_class (`(B, S, C)`), enc_outputs_coord_logits (`(B, S, D)`): two-stage proposals, see
        [`SlDetrModelOutput`].
    init_reference_angles (`(B, Q, 1)`, `"rotated"` only): see [`SlDetrModelOutput`].
    last_hidden_state, init_reference_points, intermediate_hidden_states, intermediate_reference_points,
    decoder/encoder hidden states and attentions: as in Deformable DETR.
    """

    init_reference_angles: torch.Tensor | None = None


@dataclass
class SlDetrConversionReport:
    """What [`SlDetrForObjectDetection.from_deformable_detr`] did with every parameter / buffer name."""

    copied: list[str] = field(default_factory=list)
    """Keys copied from the Deformable DETR checkpoint."""
    new: list[str] = field(default_factory=list)
    """Keys the SL-DETR model has and the checkpoint lacks (the angle heads): freshly initialized."""
    skipped: list[str] = field(default_factory=list)
    """Checkpoint keys not used, with the reason (absent here, or a shape mismatch such as another label count)."""

    def __str__(self) -> str:
        lines = [f"copied {len(self.copied)}, new {len(self.new)}, skipped {len(self.skipped)}"]
        lines += [f"  new: {key}" for key in self.new]
        lines += [f"  skipped: {key}" for key in self.skipped]
        return "\n".join(lines)


def _zero_init_linear(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer that `SlDetrPreTrainedModel._init_weights` initializes to zero (weight and bias)."""
    layer = nn.Linear(in_features, out_features)
    layer._sl_detr_zero_init = True
    return layer


class SlDetrAngleHead(DeformableDetrMLPPredictionHead):
    """MLP predicting the angle delta (inverse-sigmoid space) of an encoder proposal: `(..., d_model) -> (..., 1)`.

    Its last layer is zero-initialized (see `SlDetrPreTrainedModel._init_weights`), so the initial delta is 0.
    """

    def __init__(self, d_model: int, num_layers: int = 3):
        super().__init__(input_dim=d_model, hidden_dim=d_model, output_dim=1, num_layers=num_layers)
        self.layers[-1] = _zero_init_linear(d_model, 1)


class SlDetrProposalBoxHead(DeformableDetrMLPPredictionHead):
    """The two-stage encoder box head of the rotated model: `(..., d_model) -> (..., 5)`.

    Deformable DETR's box delta (the parent MLP, same parameter names) with a zero fifth column: the proposal angle
    is predicted by `SlDetrModel.enc_angle_embed` into the proposals themselves (see
    `SlDetrModel.gen_encoder_output_proposals`), so that every angle parameter lives outside the (transformers-owned)
    decoder, and the parent's `delta + proposals` stays one addition.
    """

    def __init__(self, d_model: int, num_layers: int = 3):
        super().__init__(input_dim=d_model, hidden_dim=d_model, output_dim=4, num_layers=num_layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(super().forward(hidden_states), (0, 1))


def _build_heads(config: SlDetrConfig, num_pred: int) -> tuple[nn.ModuleList, nn.ModuleList]:
    """Class and box heads of `num_pred` prediction stages (decoder layers, plus the encoder when two-stage).

    The last head is the two-stage encoder head when `config.two_stage`; in `"rotated"` mode it outputs 5 columns
    (see `SlDetrProposalBoxHead`). The angle heads are not here: they never enter the transformers decoder.
    """
    class_embed = nn.ModuleList([nn.Linear(config.d_model, config.num_labels) for _ in range(num_pred)])
    boxes = [
        DeformableDetrMLPPredictionHead(input_dim=config.d_model, hidden_dim=config.d_model, output_dim=4, num_layers=3)
        for _ in range(num_pred)
    ]
    if config.two_stage and config.box_type == "rotated":
        boxes[-1] = SlDetrProposalBoxHead(config.d_model)
    return class_embed, nn.ModuleList(boxes)


class SlDetrPreTrainedModel(DeformableDetrPreTrainedModel):
    """Base class of the SL-DETR models: Deformable DETR's initialization plus zero-initialized angle heads."""

    config: SlDetrConfig
    config_class = SlDetrConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        # The flag sits on the Linear itself: for custom-code models transformers skips `_init_weights` on modules
        # without parameters of their own (such as the MLP heads), so a head-level rule would never run.
        if isinstance(module, nn.Linear) and getattr(module, "_sl_detr_zero_init", False):
            init.zeros_(module.weight)
            init.zeros_(module.bias)


class SlDetrModel(SlDetrPreTrainedModel, DeformableDetrModel):
    """The bare SL-DETR encoder-decoder (backbone + deformable transformer), outputting hidden states.

    It is Deformable DETR's model; in `"rotated"` mode the two-stage encoder head also proposes an angle. Unlike the
    bare Deformable DETR model, its decoder owns the box / class heads that box refinement and two-stage proposals
    need, so that it runs on its own (in [`SlDetrForObjectDetection`] they are tied to the detection heads).
    """

    def __init__(self, config: SlDetrConfig):
        super().__init__(config)
        if config.backbone_config is not None and config.backbone_config.model_type == "resnet":
            # Deformable DETR means to train ResNet stages 2-4 (as it does for timm backbones), but for transformers'
            # ResNet its name filter looks for "stage.N" while the parameters are "encoder.stages.N": it freezes all.
            for name, parameter in self.backbone.model.named_parameters():
                if re.match(r"encoder\.stages\.[123]\.", name):
                    parameter.requires_grad_(True)
        # The two-stage encoder's angle head (the proposal angle delta); the other heads are per decoder layer.
        self.enc_angle_embed = (
            SlDetrAngleHead(config.d_model) if config.two_stage and config.box_type == "rotated" else None
        )
        if self.enc_angle_embed is not None:
            self.enc_angle_embed.apply(self._init_weights)
        if config.with_box_refine or config.two_stage:
            num_pred = config.decoder_layers + 1 if config.two_stage else config.decoder_layers
            class_embed, bbox_embed = _build_heads(config, num_pred)
            if config.with_box_refine:
                self.decoder.bbox_embed = bbox_embed
                bbox_embed.apply(self._init_weights)
            if config.two_stage:
                self.decoder.class_embed = class_embed
                class_embed.apply(self._init_weights)

    def gen_encoder_output_proposals(
        self, enc_output: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deformable DETR's encoder proposals; in `"rotated"` mode with an angle.

        The proposal angle logit is `0 + enc_angle_embed(object_query)`: the initial angle `a = 0.5` (`theta = 0`)
        plus the encoder head's angle delta (the box head adds a zero delta to it, see `SlDetrProposalBoxHead`).

        Returns:
            object_query (`(B, S, d_model)`) and output_proposals (`(B, S, D)`, inverse-sigmoid space).
        """
        object_query, output_proposals = super().gen_encoder_output_proposals(enc_output, padding_mask, spatial_shapes)
        if self.enc_angle_embed is not None:
            output_proposals = torch.cat([output_proposals, self.enc_angle_embed(object_query)], dim=-1)
        return object_query, output_proposals

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> SlDetrModelOutput:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)`): normalized, padded images.
            pixel_mask (`(B, H, W)`, *optional*): 1 for real pixels, 0 for padding.
            Other arguments as in `DeformableDetrModel.forward`.

        Returns:
            [`SlDetrModelOutput`].
        """
        _check_pixel_inputs(self.config, pixel_values, pixel_mask)
        outputs = super().forward(
            pixel_values,
            pixel_mask=pixel_mask,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        init_reference_angles = None
        if self.config.box_type == "rotated":
            if self.config.two_stage:
                # The same top-k selection Deformable DETR made for the reference boxes (same input, same op).
                topk = torch.topk(outputs.enc_outputs_class[..., 0], self.config.two_stage_num_proposals, dim=1)[1]
                angle_logits = torch.gather(outputs.enc_outputs_coord_logits[..., 4], 1, topk)
                init_reference_angles = angle_logits.detach().sigmoid().unsqueeze(-1)
            else:
                hidden = outputs.last_hidden_state
                init_reference_angles = hidden.new_full((*hidden.shape[:2], 1), 0.5)
        return SlDetrModelOutput(**outputs, init_reference_angles=init_reference_angles)


class SlDetrForObjectDetection(SlDetrPreTrainedModel, DeformableDetrForObjectDetection):
    """SL-DETR for (oriented) object detection: [`SlDetrModel`] with class, box and angle heads per decoder layer.

    `config.box_type="rotated"`: `pred_boxes` are `(cx, cy, w, h, theta)`; `"horizontal"`: `(cx, cy, w, h)`, a
    drop-in for `DeformableDetrForObjectDetection`. With `labels`, the loss is [`SlDetrLoss`].

    Parameter names follow Deformable DETR (`model.*`, `class_embed.*`, `bbox_embed.*`); the new angle heads are
    `angle_embed.{layer}` (one per decoder layer: a linear read-out of the hidden features of `bbox_embed.{layer}`)
    and, with two-stage, `model.enc_angle_embed` (an MLP on the encoder proposals).
    """

    def __init__(self, config: SlDetrConfig):
        # Deliberately skip DeformableDetrForObjectDetection.__init__: it would build a DeformableDetrModel and 4-d
        # heads; the structure and the tying below are the same, with SlDetrModel and the angle heads.
        DeformableDetrPreTrainedModel.__init__(self, config)
        self.model = SlDetrModel(config)
        # if two-stage, the last class / box head generates the region proposals
        num_pred = config.decoder_layers + 1 if config.two_stage else config.decoder_layers
        self.class_embed, self.bbox_embed = _build_heads(config, num_pred)
        # Per decoder layer, the angle delta is a linear read-out of the layer's box-head features (the hidden
        # activations of `bbox_embed[layer]`, shared as in RHINO's 5-d box head): an angle costs almost nothing.
        self.angle_embed = (
            nn.ModuleList([_zero_init_linear(config.d_model, 1) for _ in range(config.decoder_layers)])
            if config.box_type == "rotated"
            else None
        )
        self._tied_weights_keys = dict(self._tied_weights_keys)
        if config.with_box_refine:
            self.model.decoder.bbox_embed = copy.deepcopy(self.bbox_embed)
            self._tied_weights_keys["bbox_embed"] = "model.decoder.bbox_embed"
        elif self.angle_embed is not None:
            # without box refinement the per-layer heads are shared, as Deformable DETR's class / box heads are
            self._tied_weights_keys[r"angle_embed.(?![0])\d+"] = "angle_embed.0"
        if config.two_stage:
            self.model.decoder.class_embed = copy.deepcopy(self.class_embed)
            self._tied_weights_keys["class_embed"] = "model.decoder.class_embed"
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        **kwargs,
    ) -> SlDetrObjectDetectionOutput:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)`): normalized, padded images.
            pixel_mask (`(B, H, W)`, *optional*): 1 for real pixels, 0 for padding.
            labels (`list[dict]` of length `B`, *optional*): per image
                `"class_labels"` (`(n,)` int64 in `[0, num_labels)`), `"boxes"` (`(n, config.box_dim)`, normalized as
                `pred_boxes`) and `"size"` (`(2,)`, the `(H, W)` the boxes are normalized by; defaults to the image's
                unpadded extent in `pixel_mask`, else `(H, W)` of `pixel_values`). `n` may be 0.
            Other arguments as in `DeformableDetrForObjectDetection.forward`.

        Returns:
            [`SlDetrObjectDetectionOutput`].

        Example:

        ```python
        >>> import torch
        >>> from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
        >>> config = SlDetrConfig(backbone="resnet18", use_pretrained_backbone=False, d_model=64,
        ...                       encoder_layers=1, decoder_layers=2, num_queries=20, two_stage_num_proposals=20)
        >>> model = SlDetrForObjectDetection(config).eval()
        >>> outputs = model(torch.randn(1, 3, 128, 128))
        >>> outputs.logits.shape, outputs.pred_boxes.shape
        (torch.Size([1, 20, 15]), torch.Size([1, 20, 5]))
        ```
        """
        _check_pixel_inputs(self.config, pixel_values, pixel_mask)
        targets = None if labels is None else self._prepare_targets(labels, pixel_values, pixel_mask)

        outputs = self.model(
            pixel_values,
            pixel_mask=pixel_mask,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            return_dict=True,
            **kwargs,
        )
        hidden_states = outputs.intermediate_hidden_states
        init_reference = outputs.init_reference_points
        inter_references = outputs.intermediate_reference_points
        reference_angle = outputs.init_reference_angles

        outputs_classes, outputs_coords = [], []
        for level in range(hidden_states.shape[1]):
            # Box: exactly Deformable DETR's head (delta on the layer's input reference, inverse-sigmoid space).
            reference = init_reference if level == 0 else inter_references[:, level - 1]
            reference = inverse_sigmoid(reference)
            outputs_class = self.class_embed[level](hidden_states[:, level])
            delta_bbox, features = _mlp_with_features(self.bbox_embed[level], hidden_states[:, level])
            if reference.shape[-1] == 4:
                outputs_coord_logits = delta_bbox + reference
            elif reference.shape[-1] == 2:
                delta_bbox[..., :2] += reference
                outputs_coord_logits = delta_bbox
            else:
                raise ValueError(f"reference.shape[-1] should be 4 or 2, but got {reference.shape[-1]}")
            outputs_coord = outputs_coord_logits.sigmoid()
            if self.angle_embed is not None:
                # Angle: refined like the box, a_l = sigmoid(delta_l + inverse_sigmoid(a_{l-1})), a_{l-1} detached.
                angle = (self.angle_embed[level](features) + inverse_sigmoid(reference_angle)).sigmoid()
                reference_angle = angle.detach()
                outputs_coord = torch.cat([outputs_coord, angle_from_sigmoid(angle)], dim=-1)
            outputs_classes.append(outputs_class)
            outputs_coords.append(outputs_coord)
        logits, pred_boxes = outputs_classes[-1], outputs_coords[-1]

        loss, loss_dict, auxiliary_outputs = None, None, None
        if targets is not None:
            if self.config.auxiliary_loss:
                auxiliary_outputs = [
                    {"logits": c, "pred_boxes": b} for c, b in zip(outputs_classes[:-1], outputs_coords[:-1])
                ]
            enc_outputs = None
            if self.config.two_stage:
                enc_outputs = {
                    "logits": outputs.enc_outputs_class,
                    "pred_boxes": self._proposal_boxes(outputs.enc_outputs_coord_logits),
                }
            criterion = SlDetrLoss(self.config).to(logits.device)
            loss, loss_dict = criterion(
                {"logits": logits, "pred_boxes": pred_boxes, "auxiliary_outputs": auxiliary_outputs,
                 "enc_outputs": enc_outputs},
                targets,
            )

        return SlDetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            intermediate_hidden_states=outputs.intermediate_hidden_states,
            intermediate_reference_points=outputs.intermediate_reference_points,
            init_reference_points=outputs.init_reference_points,
            enc_outputs_class=outputs.enc_outputs_class,
            enc_outputs_coord_logits=outputs.enc_outputs_coord_logits,
            init_reference_angles=outputs.init_reference_angles,
        )

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; when registered for an auto class, `auto_map` also names `AutoModel`.

        So that `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads the bare [`SlDetrModel`] from a
        detection checkpoint, as it does for models inside transformers.
        """
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            base = type(self.model)
            auto_map.setdefault("AutoModel", f"{base.__module__.split('.')[-1]}.{base.__name__}")
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _proposal_boxes(self, coord_logits: torch.Tensor) -> torch.Tensor:
        """Two-stage proposal logits `(B, S, D)` -> normalized boxes `(B, S, D)` in the `pred_boxes` convention."""
        boxes = coord_logits[..., :4].sigmoid()
        if self.config.box_type == "rotated":
            boxes = torch.cat([boxes, angle_from_sigmoid(coord_logits[..., 4:5].sigmoid())], dim=-1)
        return boxes

    def _prepare_targets(
        self, labels: list[dict], pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None
    ) -> list[dict]:
        """Validate `labels` and move them to the model's device; fill a missing `"size"` (see `forward`)."""
        batch_size, _, height, width = pixel_values.shape
        if not isinstance(labels, (list, tuple)) or len(labels) != batch_size:
            raise ValueError(
                f"`labels` must be a list of {batch_size} dicts (one per image), got "
                f"{type(labels).__name__}{f' of length {len(labels)}' if isinstance(labels, (list, tuple)) else ''}"
            )
        box_dim, num_labels = self.config.box_dim, self.config.num_labels
        device = pixel_values.device
        targets = []
        for index, target in enumerate(labels):
            if not isinstance(target, dict):
                raise ValueError(f"`labels[{index}]` must be a dict, got {type(target).__name__}")
            missing = [key for key in ("class_labels", "boxes") if key not in target]
            if missing:
                raise ValueError(f"`labels[{index}]` is missing the key(s) {missing}")
            classes = torch.as_tensor(target["class_labels"], device=device)
            boxes = torch.as_tensor(target["boxes"], device=device)
            if classes.ndim != 1 or classes.is_floating_point() or classes.is_complex():
                raise ValueError(
                    f"`labels[{index}]['class_labels']` must be a 1-d integer tensor, got shape "
                    f"{tuple(classes.shape)} and dtype {classes.dtype}"
                )
            if boxes.ndim != 2 or boxes.shape[-1] != box_dim or boxes.shape[0] != classes.shape[0]:
                raise ValueError(
                    f"`labels[{index}]['boxes']` must have shape ({classes.shape[0]}, {box_dim}) for "
                    f"box_type={self.config.box_type!r}, got {tuple(boxes.shape)}"
                )
            if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_labels):
                raise ValueError(
                    f"`labels[{index}]['class_labels']` must be in [0, {num_labels}) (config.num_labels), got "
                    f"values in [{int(classes.min())}, {int(classes.max())}]"
                )
            if boxes.numel() and not bool(torch.isfinite(boxes).all()):
                raise ValueError(f"`labels[{index}]['boxes']` contains NaN or inf")
            prepared = {
                key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in target.items()
            }
            prepared["class_labels"] = classes.long()
            prepared["boxes"] = boxes.to(pixel_values.dtype if pixel_values.is_floating_point() else torch.float32)
            if "size" in target:
                prepared["size"] = torch.as_tensor(target["size"], device=device)
            elif pixel_mask is not None:
                valid = pixel_mask[index].bool()
                prepared["size"] = torch.stack([valid.any(1).sum(), valid.any(0).sum()])
            else:
                prepared["size"] = torch.tensor([height, width], device=device)
            targets.append(prepared)
        return targets

    @classmethod
    def from_deformable_detr(
        cls,
        model_or_path: "DeformableDetrForObjectDetection | str | os.PathLike",
        box_type: str = "rotated",
        return_report: bool = False,
        **config_kwargs,
    ) -> "SlDetrForObjectDetection | tuple[SlDetrForObjectDetection, SlDetrConversionReport]":
        """Initialize SL-DETR from a Deformable DETR detection model.

        Every shared weight is copied (backbone, encoder, decoder, class / box heads, two-stage layers); the new
        angle heads start with a zero last layer, so the model predicts `theta = 0` and, in `"horizontal"` mode,
        exactly what the Deformable DETR model predicts.

        Args:
            model_or_path: a `DeformableDetrForObjectDetection`, or a path / Hub id to load one from (e.g.
                `"SenseTime/deformable-detr-with-box-refine-two-stage"`).
            box_type: `"rotated"` or `"horizontal"`.
            return_report: also return a [`SlDetrConversionReport`] (copied / new / skipped keys).
            config_kwargs: overrides of the SL-DETR config, e.g. `id2label` for another label set (the class heads
                are then skipped and newly initialized), or loss settings. The architecture fields come from the
                Deformable DETR config; its loss / matcher fields are replaced by SL-DETR's defaults.

        Returns:
            The model (in the source's train / eval mode and dtype), and the report when `return_report`.
        """
        if isinstance(model_or_path, (str, os.PathLike)):
            source = DeformableDetrForObjectDetection.from_pretrained(model_or_path)
        elif isinstance(model_or_path, DeformableDetrForObjectDetection) and not isinstance(model_or_path, cls):
            source = model_or_path
        else:
            raise TypeError(
                "`model_or_path` must be a DeformableDetrForObjectDetection or a path / Hub id, got "
                f"{type(model_or_path).__name__}"
            )
        values = source.config.to_dict()
        for key in (*_CONFIG_META_FIELDS, *_DDETR_LOSS_FIELDS):
            values.pop(key, None)
        if "num_labels" in config_kwargs or "id2label" in config_kwargs:
            # another label set: the source's label maps must not survive next to it
            for key in ("id2label", "label2id"):
                if key not in config_kwargs:
                    values.pop(key, None)
        values.update(config_kwargs)
        values["box_type"] = box_type
        config = SlDetrConfig(**values)

        model = cls(config)
        source_state, target_state = source.state_dict(), model.state_dict()
        report = SlDetrConversionReport()
        to_load = {}
        for key, value in source_state.items():
            if key not in target_state:
                report.skipped.append(f"{key} (not in SL-DETR)")
            elif target_state[key].shape != value.shape:
                report.skipped.append(
                    f"{key} (shape {tuple(value.shape)} != {tuple(target_state[key].shape)})"
                )
            else:
                to_load[key] = value
                report.copied.append(key)
        report.new = [key for key in target_state if key not in to_load]
        # Shape-mismatched keys keep their fresh initialization (e.g. class heads for another label count).
        model.load_state_dict(to_load, strict=False)
        model.to(dtype=next(source.parameters()).dtype)
        model.train(source.training)
        logger.info("Converted Deformable DETR to SL-DETR (%s): %s", box_type, report)
        return (model, report) if return_report else model


def _mlp_with_features(head: DeformableDetrMLPPredictionHead, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`head(x)` (the same operations, so the same numbers) and the input of its last layer."""
    for layer in head.layers[:-1]:
        x = nn.functional.relu(layer(x))
    return head.layers[-1](x), x


def _check_pixel_inputs(config: SlDetrConfig, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> None:
    """Raise a ValueError unless `pixel_values` is `(B, num_channels, H, W)` and `pixel_mask` is `(B, H, W)`."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, {config.num_channels}, height, width), got "
            f"{tuple(pixel_values.shape)}"
        )
    if pixel_mask is not None:
        expected = (pixel_values.shape[0], *pixel_values.shape[2:])
        if not isinstance(pixel_mask, torch.Tensor) or tuple(pixel_mask.shape) != expected:
            shape = tuple(pixel_mask.shape) if isinstance(pixel_mask, torch.Tensor) else type(pixel_mask).__name__
            raise ValueError(f"`pixel_mask` must have shape {expected} (batch_size, height, width), got {shape}")
