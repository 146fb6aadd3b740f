"""The SL-DETR decoder: Deformable DETR's decoder with 5-d reference boxes (docs/architecture.md#decoder).

[`SlDetrDecoder`] subclasses transformers' `DeformableDetrDecoder` and keeps its layers and parameter names
(`layers.{i}.self_attn`, `layers.{i}.encoder_attn`, ...), so Deformable DETR checkpoints still load. It adds:

- rotated references: in `"rotated"` mode a reference is `(cx, cy, w, h, a)` in sigmoid space (`theta =
  (a + config.angle_offset) * pi`: `(a - 0.5) * pi` for le90, `a * pi` for RHINO); each layer's cross-attention
  is [`SlDetrRotatedDeformableAttention`], which turns its sampling pattern by theta (`config.rotated_sampling`;
  in normalized units with RHINO's numerics, else in pixels; `"none"` samples as Deformable DETR does);
- box AND angle refinement: `ref_l = sigmoid(delta_l + inverse_sigmoid(ref_{l-1}, eps))` on all coordinates, with
  the angle delta read out of the box head's features (`angle_embed`; `eps` 1e-3 with RHINO's numerics, else
  1e-5);
- look forward twice (`config.look_forward_twice`): the refined references it returns keep their gradient, so
  that layer `l`'s prediction (made on `ref_{l-1}`) trains layer `l - 1` too; the reference passed on to the next
  layer is always detached;
- a self-attention mask (denoising queries, see `denoising_sl_detr.py`);
- the query position embedding from the current reference box (`ref_point_head`, DINO), when set, optionally
  from the box scaled by the first level's valid ratios (DINO / RHINO, `config.numerics="rhino"`);
- mmdetection DINO's final LayerNorm (`norm`, `config.numerics="rhino"`) on every layer's returned output (what
  the heads see); the state passed on and the in-loop refinement use the layer's output before it.

Ships with `trust_remote_code` checkpoints: imports only its sibling files, torch and transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrDecoder,
    DeformableDetrDecoderOutput,
    DeformableDetrMLPPredictionHead,
    inverse_sigmoid,
)
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .attention_sl_detr import SlDetrRotatedDeformableAttention
from .configuration_sl_detr import SlDetrConfig

__all__ = ["SlDetrDecoder", "init_marked_module", "mlp_with_features", "refine_boxes"]

REFINE_EPS = {"rhino": 1e-3, "deformable_detr": 1e-5}
"""The inverse-sigmoid clamp of the decoder's in-loop refinement, by `config.numerics` (the heads keep 1e-5)."""


@torch.no_grad()
def init_marked_module(module: nn.Module) -> None:
    """The init of layers marked by the model, applied after transformers' default init (see
    `heads_sl_detr.init_linear`): Linear `_sl_detr_zero_init` (zero weight and bias) and `_sl_detr_bias_init`
    (this bias); Embedding `_sl_detr_normal_std` (normal weights of this std, DINO's query and label embeddings;
    the padding row zero).
    """
    if isinstance(module, nn.Embedding) and getattr(module, "_sl_detr_normal_std", None) is not None:
        init.normal_(module.weight, std=module._sl_detr_normal_std)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    if not isinstance(module, nn.Linear):
        return
    if getattr(module, "_sl_detr_zero_init", False):
        init.zeros_(module.weight)
        init.zeros_(module.bias)
    bias = getattr(module, "_sl_detr_bias_init", None)
    if bias is not None:
        init.copy_(module.bias, torch.as_tensor(bias, dtype=module.bias.dtype).expand_as(module.bias))


def mlp_with_features(head: DeformableDetrMLPPredictionHead, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`head(x)` (the same operations, so the same numbers) and the input of its last layer."""
    for layer in head.layers[:-1]:
        x = nn.functional.relu(layer(x))
    return head.layers[-1](x), x


def refine_boxes(
    hidden_states: torch.Tensor,
    reference: torch.Tensor,
    bbox_head: DeformableDetrMLPPredictionHead,
    angle_head: nn.Module | None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """One refinement step: `sigmoid(delta + inverse_sigmoid(reference, eps))` in sigmoid space.

    Args:
        hidden_states (`(B, Q, d_model)`): the layer's output.
        reference (`(B, Q, 2 | 4 | 5)`): the reference the layer started from. Missing coordinates have logit 0:
            a 2-d point's size is the delta's (Deformable DETR), a 4-d box's angle starts at `a = 0.5`.
        bbox_head: the 4-d box delta head; angle_head: the angle delta read-out of its features (rotated models).
        eps: the inverse sigmoid's clamp (DINO / RHINO: 1e-3 in the decoder's loop, 1e-5 in the heads).

    Returns:
        `(B, Q, 4)`, or `(B, Q, 5)` with an angle head.
    """
    delta, features = mlp_with_features(bbox_head, hidden_states)
    if angle_head is not None:
        delta = torch.cat([delta, angle_head(features)], dim=-1)
    width = reference.shape[-1]
    if width not in (2, 4, 5) or width > delta.shape[-1]:
        raise ValueError(f"the reference's last dim must be 2, 4 or 5 (with an angle head), got {width}")
    reference_logits = inverse_sigmoid(reference, eps)
    if width < delta.shape[-1]:
        reference_logits = nn.functional.pad(reference_logits, (0, delta.shape[-1] - width))
    return (delta + reference_logits).sigmoid()


class SlDetrDecoder(DeformableDetrDecoder):
    """Deformable DETR's decoder with rotated references, angle refinement, DN masks and look forward twice.

    Like Deformable DETR's, its heads are set by the owning model: `bbox_embed` (per layer, box refinement),
    `class_embed` (two-stage) and, new, `angle_embed` (per layer, `"rotated"` with box refinement) and
    `ref_point_head` (the query position from the reference box; `None` keeps the position embeddings passed in).
    `norm` is DINO's output LayerNorm (`config.numerics="rhino"`), else `None`.
    """

    def __init__(self, config: SlDetrConfig):
        super().__init__(config)
        self.look_forward_twice = bool(config.look_forward_twice)
        self.angle_offset = float(config.angle_offset)
        self.refine_eps = REFINE_EPS[config.numerics]
        self.query_position_valid_ratios = config.rhino_numerics
        self.angle_embed = None
        self.ref_point_head = None
        self.norm = nn.LayerNorm(config.d_model) if config.rhino_numerics else None
        if config.box_type == "rotated":
            # the same parameters (already initialized), a module that also samples around 5-d references;
            # RHINO's code turns the normalized offset vector, Deformable DETR-numerics models the pixel one
            for layer in self.layers:
                layer.encoder_attn = SlDetrRotatedDeformableAttention.from_deformable(
                    layer.encoder_attn, config.rotated_sampling, rotate_in_pixels=not config.rhino_numerics
                )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # transformers initializes a sub-model with its own `_init_weights`: the decoder's heads need the marks too
        super()._init_weights(module)
        init_marked_module(module)

    @staticmethod
    def attention_input(
        reference: torch.Tensor, valid_ratios: torch.Tensor, angle_offset: float = -0.5
    ) -> torch.Tensor:
        """Per-level references for the cross-attention: `(B, Q, D)` -> `(B, Q, n_levels, D)`.

        `cx, cy, w, h` are scaled by the levels' valid ratios (as Deformable DETR does); a 5-d reference's angle
        goes from sigmoid space to radians, `theta = (a + angle_offset) * pi`, the unit the rotated attention takes.
        """
        if reference.shape[-1] == 2:
            return reference[:, :, None] * valid_ratios[:, None]
        boxes = reference[:, :, None, :4] * torch.cat([valid_ratios, valid_ratios], -1)[:, None]
        if reference.shape[-1] == 4:
            return boxes
        theta = (reference[..., 4:] + angle_offset) * math.pi
        return torch.cat([boxes, theta[:, :, None].expand(-1, -1, boxes.shape[2], -1)], dim=-1)

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        inputs_embeds=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        object_queries_position_embeddings=None,
        reference_points=None,
        spatial_shapes=None,
        spatial_shapes_list=None,
        level_start_index=None,
        valid_ratios=None,
        self_attention_mask=None,
        **kwargs,
    ) -> DeformableDetrDecoderOutput:
        r"""
        Args:
            inputs_embeds (`(B, Q, d_model)`): content queries (denoising queries first, when any).
            encoder_hidden_states (`(B, S, d_model)`), encoder_attention_mask (`(B, S)`, 1 = real): the encoder.
            object_queries_position_embeddings (`(B, Q, d_model)`, *optional*): fixed query position embeddings,
                used when `ref_point_head` is `None`.
            reference_points (`(B, Q, 2 | 4 | 5)`): initial references in sigmoid space (5-d: `(cx, cy, w, h, a)`).
            spatial_shapes, spatial_shapes_list, level_start_index, valid_ratios: as in Deformable DETR.
            self_attention_mask (`(Q, Q)` bool, *optional*): `True` = query `i` may not attend to key `j`.

        Returns:
            `DeformableDetrDecoderOutput` with `intermediate_hidden_states (B, L, Q, d_model)` and
            `intermediate_reference_points (B, L, Q, D)`: layer `l`'s refined reference (sigmoid space), with its
            gradient when `look_forward_twice`, else detached (Deformable DETR). With `norm`, the hidden states
            (intermediate and last) are the normalized outputs.
        """
        hidden_states = inputs_embeds
        if self_attention_mask is not None:
            # additive (1, 1, Q, Q) form, read by the eager and the SDPA attention alike
            blocked = torch.finfo(hidden_states.dtype).min
            self_attention_mask = torch.zeros(
                self_attention_mask.shape, dtype=hidden_states.dtype, device=hidden_states.device
            ).masked_fill(self_attention_mask.to(hidden_states.device), blocked)[None, None]
            kwargs["attention_mask"] = self_attention_mask

        intermediate = ()
        intermediate_reference_points = ()
        for idx, decoder_layer in enumerate(self.layers):
            reference_points_input = self.attention_input(reference_points, valid_ratios, self.angle_offset)
            query_position = object_queries_position_embeddings
            if self.ref_point_head is not None:
                # DINO / RHINO embed the box scaled by the first level's valid ratios (the angle is not used)
                query_position = self.ref_point_head(
                    reference_points_input[:, :, 0] if self.query_position_valid_ratios else reference_points
                )
            hidden_states = decoder_layer(
                hidden_states,
                query_position,
                reference_points_input,
                spatial_shapes,
                spatial_shapes_list,
                level_start_index,
                encoder_hidden_states,  # as a positional argument for gradient checkpointing
                encoder_attention_mask,
                **kwargs,
            )
            refined = reference_points
            if self.bbox_embed is not None:
                angle_head = self.angle_embed[idx] if self.angle_embed is not None else None
                refined = refine_boxes(hidden_states, reference_points, self.bbox_embed[idx], angle_head,
                                       self.refine_eps)
                reference_points = refined.detach()
            intermediate += (hidden_states if self.norm is None else self.norm(hidden_states),)
            intermediate_reference_points += (refined if self.look_forward_twice else reference_points,)

        return DeformableDetrDecoderOutput(
            last_hidden_state=intermediate[-1],
            intermediate_hidden_states=torch.stack(intermediate, dim=1),
            intermediate_reference_points=torch.stack(intermediate_reference_points, dim=1),
        )
