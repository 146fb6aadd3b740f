"""The `ModelOutput` dataclasses of SL-DETR's models (`modeling_sl_detr.py`): Deformable DETR's, plus the angles, the
denoising layout and the proposals the dense loss reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrModelOutput,
    DeformableDetrObjectDetectionOutput,
)

__all__ = ["SlDetrModelOutput", "SlDetrObjectDetectionOutput"]


@dataclass
class SlDetrModelOutput(DeformableDetrModelOutput):
    r"""
    Outputs of [`SlDetrModel`]: those of Deformable DETR's model plus the queries' angles and the denoising layout.

    With `B` the batch size, `Q` the number of queries (`config.num_queries`, or the number of encoder tokens `S`
    when an image has fewer), `L = config.decoder_layers`, `d = config.d_model`, `C = config.num_labels`,
    `D = config.box_dim` (5 for `"rotated"`, 4 for `"horizontal"`). At training time with denoising queries the
    query axis holds `N + Q` queries, the `N = 2 * G * M` denoising queries first (`dn_meta`).

    init_reference_points (`(B, Q, 4)`, or `(B, Q, 2)` for single-stage models):
        Initial reference boxes (sigmoid space) sent through the decoder.
    last_hidden_state (`(B, Q, d)`): decoder output of the last layer.
    intermediate_hidden_states (`(B, L, Q, d)`): output of every decoder layer.
    intermediate_reference_points (`(B, L, Q, 4)`): reference boxes refined by every decoder layer (with their
        gradient when `config.look_forward_twice`).
    enc_outputs_class (`(B, S, C)`, two-stage only): class logits of every encoder token (proposal).
    enc_outputs_coord_logits (`(B, S, D)`, two-stage only):
        Proposals in inverse-sigmoid space: `(cx, cy, w, h)` logits and, for `"rotated"`, the angle logit `z`
        (`theta = (sigmoid(z) + config.angle_offset) * pi`, le90: `(sigmoid(z) - 0.5) * pi`). Padding / invalid
        tokens have `+inf` box logits, as in Deformable DETR (and angle logits with RHINO's numerics).
    init_reference_angles (`(B, Q, 1)`, `"rotated"` only):
        Initial angle of the queries in sigmoid space (`0.5` is `theta = 0` in le90): the selected encoder proposals'
        angles (detached) with two-stage, else `0.5`.
    intermediate_reference_angles (`(B, L, Q, 1)`, `"rotated"` with box refinement): the refined angles.
    enc_topk_indices (`(B, Q)`, two-stage only): the encoder tokens the matching queries start from (query `i`
        from token `enc_topk_indices[:, i]`, the `i`-th best proposal).
    dn_meta (`dict`, training with denoising only): `{"num_groups": G, "max_objects": M}`.
    enc_output_proposals (`(B, S, 4)`, two-stage only): every encoder token's proposal box before the encoder
        head's delta (Deformable DETR's `0.05 * 2^level` box at the token), inverse-sigmoid space, `+inf` for
        padding / border tokens; the dense encoder loss places its candidates with them.
    """

    init_reference_angles: torch.Tensor | None = None
    intermediate_reference_angles: torch.Tensor | None = None
    enc_topk_indices: torch.Tensor | None = None
    dn_meta: dict | None = None
    enc_output_proposals: torch.Tensor | None = None


@dataclass
class SlDetrObjectDetectionOutput(DeformableDetrObjectDetectionOutput):
    r"""
    Output of [`SlDetrForObjectDetection`]; the fields of `DeformableDetrObjectDetectionOutput`, so that
    Deformable DETR post-processing works unchanged in `"horizontal"` mode.

    Shapes as in [`SlDetrModelOutput`] (`D = config.box_dim`); `logits`, `pred_boxes` and `auxiliary_outputs` hold
    the matching queries only (denoising queries are in `dn_outputs`):

    loss (`()` scalar tensor, when `labels` are given): weighted sum of all [`SlDetrLoss`] terms.
    loss_dict (`dict[str, Tensor]`, when `labels` are given): the individual loss terms, for logging.
    logits (`(B, Q, C)`): classification logits of the last decoder layer (sigmoid / focal style, no no-object).
    pred_boxes (`(B, Q, D)`):
        Normalized boxes of the last decoder layer: `(cx, cy, w, h)` in `[0, 1]` relative to the image's own
        (unpadded) size and, for `"rotated"`, `theta` in radians in `[-pi/2, pi/2)`
        (docs/boxes.md#normalized-boxes) whatever
        `config.angle_start` (`auxiliary_outputs` too; `dn_outputs` and `layer_predictions` keep the native range
        the losses use).
    auxiliary_outputs (`list[dict]`, when `labels` are given and `config.auxiliary_loss`):
        `{"logits": (B, Q, C), "pred_boxes": (B, Q, D)}` for decoder layers `0 .. L - 2`.
    dn_outputs (`list[dict]`, training with denoising only): `{"logits": (B, N, C), "pred_boxes": (B, N, D)}` of
        the denoising queries for decoder layers `0 .. L - 1`; dn_meta: their layout.
    enc_outputs_class (`(B, S, C)`), enc_outputs_coord_logits (`(B, S, D)`): two-stage proposals, see
        [`SlDetrModelOutput`].
    init_reference_angles (`(B, Q, 1)`, `"rotated"` only): see [`SlDetrModelOutput`].
    last_hidden_state, init_reference_points, intermediate_hidden_states, intermediate_reference_points,
    decoder/encoder hidden states and attentions: as in Deformable DETR (denoising queries included).
    """

    init_reference_angles: torch.Tensor | None = None
    dn_outputs: list[dict] | None = None
    dn_meta: dict | None = None
