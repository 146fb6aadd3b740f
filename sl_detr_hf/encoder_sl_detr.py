"""The SL-DETR encoder: Deformable DETR's, optionally with its finest levels read but not updated.

With `config.value_only_levels = k > 0` the `k` finest feature levels (the first `k` levels of the flattened
sequence, e.g. the stride-8 map) are *values only*: every encoder layer's deformable attention samples them, but
only the tokens of the coarser levels are queries, so attention, FFN and norms run on those alone; the fine tokens
reach the decoder (and the two-stage proposals) as the input projection made them. A stride-8 map has 4 times the
tokens of stride 16 and 16 times those of stride 32: updating it in every layer is what makes a stride-8 encoder
costly (Lite DETR, Li et al. 2023, updates its fine tokens rarely for the same reason), while the decoder's
cross-attention is what needs its resolution to place small boxes to a few pixels. BENCHMARKS.md "Angle range,
dense encoder loss, stride 8 and a light stem on HIT-UAV" measures it.

With `value_only_levels = 0` (the default) the encoder is transformers' `DeformableDetrEncoder`, unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrEncoder,
    DeformableDetrEncoderLayer,
)

__all__ = ["SlDetrEncoder", "SlDetrEncoderLayer"]


class SlDetrEncoderLayer(DeformableDetrEncoderLayer):
    """Deformable DETR's encoder layer; its queries may be a suffix of the sequence its attention samples."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                spatial_position_embeddings: torch.Tensor | None = None, reference_points=None,
                spatial_shapes=None, spatial_shapes_list=None, level_start_index=None,
                fine_states: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """
        Args:
            hidden_states (`(B, S_q, d)`): the tokens this layer updates (all tokens when `fine_states` is `None`).
            attention_mask (`(B, S)` bool): True for real pixels, over the whole sequence `S`.
            spatial_position_embeddings (`(B, S_q, d)`), reference_points (`(B, S_q, n_levels, 2)`): of the queries.
            fine_states (`(B, S - S_q, d)`, *optional*): the value-only tokens that precede `hidden_states` in the
                sequence; `None`: Deformable DETR's layer.

        Returns:
            `(B, S_q, d)`.
        """
        if fine_states is None:
            return super().forward(hidden_states, attention_mask, spatial_position_embeddings, reference_points,
                                   spatial_shapes, spatial_shapes_list, level_start_index, **kwargs)
        residual = hidden_states
        hidden_states, _ = self.self_attn(
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=torch.cat([fine_states, hidden_states], dim=1),
            encoder_attention_mask=attention_mask,
            position_embeddings=spatial_position_embeddings,
            reference_points=reference_points,
            spatial_shapes=spatial_shapes,
            spatial_shapes_list=spatial_shapes_list,
            level_start_index=level_start_index,
        )
        hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
        hidden_states = self.self_attn_layer_norm(residual + hidden_states)
        return self.final_layer_norm(hidden_states + self.mlp(hidden_states))


class SlDetrEncoder(DeformableDetrEncoder):
    """`DeformableDetrEncoder` with [`SlDetrEncoderLayer`]s and `config.value_only_levels` (module docstring)."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList([SlDetrEncoderLayer(config) for _ in range(config.encoder_layers)])
        self.value_only_levels = config.value_only_levels
        self.post_init()

    def forward(self, inputs_embeds=None, attention_mask=None, spatial_position_embeddings=None, spatial_shapes=None,
                spatial_shapes_list=None, level_start_index=None, valid_ratios=None, **kwargs) -> BaseModelOutput:
        """`DeformableDetrEncoder.forward`; with `value_only_levels = k > 0` the first `k` levels' tokens are
        returned as they came in and only the others are updated.

        Shapes: `inputs_embeds`, `spatial_position_embeddings` `(B, S, d)`, `attention_mask` `(B, S)`,
        `valid_ratios` `(B, n_levels, 2)`; returns `last_hidden_state` `(B, S, d)`.
        """
        if not self.value_only_levels:
            return super().forward(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   spatial_position_embeddings=spatial_position_embeddings,
                                   spatial_shapes=spatial_shapes, spatial_shapes_list=spatial_shapes_list,
                                   level_start_index=level_start_index, valid_ratios=valid_ratios, **kwargs)
        start = sum(height * width for height, width in spatial_shapes_list[:self.value_only_levels])
        reference_points = self.get_reference_points(tuple(spatial_shapes_list), valid_ratios,
                                                      device=inputs_embeds.device)[:, start:]
        inputs_embeds = nn.functional.dropout(inputs_embeds, p=self.dropout, training=self.training)
        fine_states, hidden_states = inputs_embeds[:, :start], inputs_embeds[:, start:]
        position = spatial_position_embeddings[:, start:]
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask, spatial_position_embeddings=position,
                                  reference_points=reference_points, spatial_shapes=spatial_shapes,
                                  spatial_shapes_list=spatial_shapes_list, level_start_index=level_start_index,
                                  fine_states=fine_states)
        return BaseModelOutput(last_hidden_state=torch.cat([fine_states, hidden_states], dim=1))
