"""SL-DETR's prediction heads and their initialization (docs/architecture.md#heads-and-initialization).

Per prediction stage (every decoder layer, plus the two-stage encoder): a class head (a Linear) and a box head
(Deformable DETR's 3-layer MLP, 4-d delta); in `"rotated"` mode, per decoder layer, an angle head (a Linear read-out
of the box head's hidden features, see `decoder_sl_detr.refine_boxes`) and, two-stage, the encoder's proposal angle
head ([`SlDetrAngleHead`]). Deformable DETR's original init: class biases at the focal prior, every box head's last
layer zero, the angle heads zero. The heads are built once, by `SlDetrModel` when its decoder needs them (box
refinement, two-stage proposals), and `SlDetrForObjectDetection` predicts with the same modules.

Ships with `trust_remote_code` checkpoints: imports only its sibling files, torch and transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMLPPredictionHead

from .configuration_sl_detr import SlDetrConfig

__all__ = ["SlDetrAngleHead", "SlDetrProposalBoxHead", "angle_heads", "box_heads", "class_heads", "init_linear"]

CLASS_BIAS_PRIOR = -math.log((1 - 0.01) / 0.01)
"""Focal prior of the class biases (Deformable DETR's original init): sigmoid(bias) = 0.01."""


def init_linear(layer: nn.Linear, bias: float | list[float] | None = None, zero: bool = False) -> nn.Linear:
    """Mark a Linear layer for `SlDetrPreTrainedModel._init_weights`: zero weight and bias (`zero`), or this bias.

    The flag sits on the Linear itself: for custom-code models transformers skips `_init_weights` on modules
    without parameters of their own (such as the MLP heads), so a head-level rule would never run
    (`decoder_sl_detr.init_marked_module` applies it).
    """
    if zero:
        layer._sl_detr_zero_init = True
    if bias is not None:
        layer._sl_detr_bias_init = bias
    return layer


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    return init_linear(nn.Linear(in_features, out_features), zero=True)


class SlDetrAngleHead(DeformableDetrMLPPredictionHead):
    """MLP predicting the angle delta (inverse-sigmoid space) of an encoder proposal: `(..., d_model) -> (..., 1)`.

    Its last layer is zero-initialized, so the initial delta is 0.
    """

    def __init__(self, d_model: int, num_layers: int = 3):
        super().__init__(input_dim=d_model, hidden_dim=d_model, output_dim=1, num_layers=num_layers)
        self.layers[-1] = _zero_linear(d_model, 1)


class SlDetrProposalBoxHead(DeformableDetrMLPPredictionHead):
    """The two-stage encoder box head of the rotated model: `(..., d_model) -> (..., 5)`.

    Deformable DETR's box delta (the parent MLP, same parameter names) with a zero fifth column: the proposal angle
    is predicted by `SlDetrModel.enc_angle_embed` into the proposals themselves (see
    `SlDetrModel.gen_encoder_output_proposals`), so that the parent's `delta + proposals` stays one addition.
    """

    def __init__(self, d_model: int, num_layers: int = 3):
        super().__init__(input_dim=d_model, hidden_dim=d_model, output_dim=4, num_layers=num_layers)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(super().forward(hidden_states), (0, 1))


def _num_stages(config: SlDetrConfig) -> int:
    """Prediction stages: the decoder layers, plus the encoder (the last head) when two-stage."""
    return config.decoder_layers + 1 if config.two_stage else config.decoder_layers


def class_heads(config: SlDetrConfig) -> nn.ModuleList:
    """Per stage, `(..., d_model) -> (..., num_labels)` logits, biases at the focal prior."""
    return nn.ModuleList([init_linear(nn.Linear(config.d_model, config.num_labels), bias=CLASS_BIAS_PRIOR)
                          for _ in range(_num_stages(config))])


def box_heads(config: SlDetrConfig) -> nn.ModuleList:
    """Per stage, the 4-d box delta `(..., d_model) -> (..., 4)` (the two-stage encoder head of a rotated model:
    5 columns, [`SlDetrProposalBoxHead`]); last layer zero, its `w, h` bias at -2 where the reference is a point
    (single-stage models: the first layer, or every layer without box refinement)."""
    heads = [DeformableDetrMLPPredictionHead(config.d_model, config.d_model, 4, num_layers=3)
             for _ in range(_num_stages(config))]
    if config.two_stage and config.box_type == "rotated":
        heads[-1] = SlDetrProposalBoxHead(config.d_model)
    for index, head in enumerate(heads):
        point_reference = not config.two_stage and (index == 0 or not config.with_box_refine)
        init_linear(head.layers[-1], zero=True, bias=[0.0, 0.0, -2.0, -2.0] if point_reference else None)
    return nn.ModuleList(heads)


def angle_heads(config: SlDetrConfig) -> nn.ModuleList | None:
    """Per decoder layer, the angle delta: a zero-initialized linear read-out `(..., d_model) -> (..., 1)` of the box
    head's hidden features; `None` for `"horizontal"`."""
    if config.box_type != "rotated":
        return None
    return nn.ModuleList([_zero_linear(config.d_model, 1) for _ in range(config.decoder_layers)])
