"""Two-stage query selection of SL-DETR (DESIGN.md 3.1): which encoder proposals start the decoder, and with what.

- [`select_proposals`]: the indices of the top-k encoder proposals, `k = min(num_queries, S)` so that an image
  with fewer encoder tokens than queries still works (the decoder then runs `S` queries);
- [`SlDetrMixedQuerySelection`] (DINO's mixed query selection): the selected proposals give the initial reference
  boxes (detached), the content queries are learned embeddings;
- [`SlDetrBoxPositionEmbedding`] (DINO's `ref_point_head`): the query position embedding built from a reference
  box `(cx, cy, w, h)`, recomputed by the decoder at every layer from the refined reference.

Ships with `trust_remote_code` checkpoints: imports only torch and transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMLPPredictionHead

__all__ = ["SlDetrBoxPositionEmbedding", "SlDetrMixedQuerySelection", "box_sine_embedding", "select_proposals"]


def select_proposals(scores: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Indices of the best-scoring proposals: `scores (B, S)` -> `(B, min(num_queries, S))`, best first.

    Taking at most `S` proposals keeps images with fewer encoder tokens than queries working (a 64 px image with
    100 queries); `S` is a shape, so the eager and the exported graphs take the same path.
    """
    return torch.topk(scores, min(num_queries, scores.shape[1]), dim=1)[1]


def gather_queries(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`values (B, S, ...)` at `indices (B, K)` along dim 1 -> `(B, K, ...)`."""
    index = indices.reshape(*indices.shape, *([1] * (values.ndim - 2))).expand(-1, -1, *values.shape[2:])
    return torch.gather(values, 1, index)


def box_sine_embedding(boxes: torch.Tensor, d_model: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine embedding of boxes in sigmoid space: `(..., 4)` `(cx, cy, w, h)` in `[0, 1]` -> `(..., 2 * d_model)`.

    Each coordinate gets `d_model // 2` features (sin / cos interleaved, DINO's `gen_sineembed_for_position` with
    scale `2 pi`); the order of the coordinates' blocks is `cx, cy, w, h`.
    """
    num_feats = d_model // 2
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = boxes.to(torch.float32)[..., None] * (2 * math.pi) / dim_t  # (..., 4, num_feats)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2).to(boxes.dtype)


class SlDetrBoxPositionEmbedding(nn.Module):
    """Query position embedding from a reference box: `(B, Q, >= 4)` sigmoid space -> `(B, Q, d_model)`.

    An MLP (`2 * d_model -> d_model -> d_model`) on the sine embedding of `(cx, cy, w, h)`; an angle (fifth
    coordinate) is not used (DESIGN.md 3.1).
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.mlp = DeformableDetrMLPPredictionHead(2 * d_model, d_model, d_model, num_layers=2)

    def forward(self, reference_boxes: torch.Tensor) -> torch.Tensor:
        return self.mlp(box_sine_embedding(reference_boxes[..., :4], self.d_model))


class SlDetrMixedQuerySelection(nn.Module):
    """DINO's mixed query selection: reference boxes from the top-k proposals, learned content queries.

    `content_embed` is `nn.Embedding(num_queries, d_model)`; decoder query `i` starts from selected proposal `i`
    (the `i`-th best) with content `content_embed.weight[i]`.
    """

    def __init__(self, num_queries: int, d_model: int):
        super().__init__()
        self.num_queries = num_queries
        self.content_embed = nn.Embedding(num_queries, d_model)
        self.content_embed._sl_detr_normal_std = 1.0  # DINO's init (see `decoder_sl_detr.init_marked_module`)

    def forward(
        self, scores: torch.Tensor, coord_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            scores (`(B, S)`): proposal scores (encoder class logit).
            coord_logits (`(B, S, D)`): proposal boxes in inverse-sigmoid space.

        Returns:
            content (`(B, K, d_model)`), reference boxes (`(B, K, D)`, sigmoid space, detached) and the selected
            indices (`(B, K)`), `K = min(num_queries, S)`.
        """
        indices = select_proposals(scores, self.num_queries)
        reference = gather_queries(coord_logits, indices).detach().sigmoid()
        content = self.content_embed.weight[: indices.shape[1]].unsqueeze(0).expand(scores.shape[0], -1, -1)
        return content, reference, indices
