"""Two-stage query selection of SL-DETR (docs/architecture.md#two-stage-query-selection): which encoder proposals
start the decoder, and with what.

- [`proposal_scores`]: what ranks the encoder proposals: the first class logit (Deformable DETR's binary score) or
  the best class logit (DINO / RHINO, `config.numerics="rhino"`);
- [`select_proposals`]: the indices of the top-k encoder proposals, `k = min(num_queries, S)` so that an image
  with fewer encoder tokens than queries still works (the decoder then runs `S` queries); optionally after a
  fixed-shape NMS of the candidates (`config.query_selection_nms`, [`proposal_nms_order`]), so that the decoder's
  queries start on different objects instead of several on the best one (DETA's proposal NMS);
- [`SlDetrMixedQuerySelection`] (DINO's mixed query selection): the selected proposals give the initial reference
  boxes (detached), the content queries are learned embeddings;
- [`SlDetrBoxPositionEmbedding`] (DINO's `ref_point_head`): the query position embedding built from a reference
  box `(cx, cy, w, h)`, recomputed by the decoder at every layer from the refined reference.

Ships with `trust_remote_code` checkpoints: imports only its sibling files, torch and transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMLPPredictionHead

from .geometry_overlaps import prob_iou

__all__ = [
    "SlDetrBoxPositionEmbedding",
    "SlDetrMixedQuerySelection",
    "box_sine_embedding",
    "pairwise_prob_iou",
    "proposal_nms_order",
    "proposal_scores",
    "select_proposals",
]

# candidates per selected query that the proposal NMS looks at (the top `factor * k` proposals)
NMS_CANDIDATE_FACTOR = 4


def pairwise_prob_iou(boxes: torch.Tensor, eps: float = 1e-7, angle_offset: float = -0.5) -> torch.Tensor:
    """ProbIoU of every pair of proposals in sigmoid space: `(B, M, 4 | 5)` -> `(B, M, M)`, float32.

    Boxes are `(cx, cy, w, h[, a])` with `theta = (a + angle_offset) * pi` (`config.angle_offset`); the overlap is
    `geometry_overlaps.prob_iou` (1 - Hellinger distance of the boxes' uniform-density Gaussians).
    """
    boxes = boxes.float()
    if boxes.shape[-1] > 4:
        boxes = torch.cat((boxes[..., :4], (boxes[..., 4:5] + angle_offset) * math.pi), dim=-1)
    return prob_iou(boxes, eps=eps)


def proposal_nms_order(scores: torch.Tensor, coord_logits: torch.Tensor, num_queries: int,
                       iou_threshold: float, angle_offset: float = -0.5) -> torch.Tensor:
    """Fixed-shape NMS of the encoder proposals: `scores (B, S)`, `coord_logits (B, S, 4 | 5)` (inverse-sigmoid
    space) -> `(B, k)` indices.

    Among the top `M = min(S, NMS_CANDIDATE_FACTOR * k)` proposals, one is suppressed when a better-scoring
    candidate overlaps it with ProbIoU above `iou_threshold` (YOLACT's Fast NMS: the overlap test against every
    better candidate at once, so no loop and no host synchronization). The kept candidates come first, best
    first, then the suppressed ones (best first), so the result always holds `k = min(num_queries, S)` indices.
    """
    k = min(num_queries, scores.shape[1])
    candidates = min(scores.shape[1], NMS_CANDIDATE_FACTOR * k)
    candidate_scores, candidate_index = torch.topk(scores, candidates, dim=1)
    with torch.no_grad():
        overlap = pairwise_prob_iou(gather_queries(coord_logits.detach(), candidate_index).sigmoid(),
                                    angle_offset=angle_offset)
        # overlap[b, j, i] with j < i: candidate j scores higher than candidate i
        suppressed = (overlap.triu(diagonal=1) > iou_threshold).any(dim=1)
        rank = torch.arange(candidates, device=scores.device).expand_as(suppressed)
        order = torch.topk(-(rank + suppressed.to(rank.dtype) * candidates), k, dim=1)[1]
    return torch.gather(candidate_index, 1, order)


def proposal_scores(class_logits: torch.Tensor, class_aware: bool = False) -> torch.Tensor:
    """The score that ranks the encoder proposals: `(B, S, C)` class logits -> `(B, S)`.

    `class_aware=False`: the first class's logit (Deformable DETR, whose encoder head is trained class-agnostic);
    `True`: the best class's logit (DINO / RHINO, whose encoder head is trained on the classes).
    """
    return class_logits.max(-1)[0] if class_aware else class_logits[..., 0]


def select_proposals(scores: torch.Tensor, num_queries: int, coord_logits: torch.Tensor | None = None,
                     nms_threshold: float | None = None, angle_offset: float = -0.5) -> torch.Tensor:
    """Indices of the best-scoring proposals: `scores (B, S)` -> `(B, min(num_queries, S))`, best first.

    Taking at most `S` proposals keeps images with fewer encoder tokens than queries working (a 64 px image with
    100 queries); `S` is a shape, so the eager and the exported graphs take the same path. With `nms_threshold`
    and the proposal boxes `coord_logits (B, S, 4 | 5)` (inverse-sigmoid space), overlapping proposals give way
    to others ([`proposal_nms_order`]; `angle_offset` decodes their angle).
    """
    if nms_threshold is not None:
        if coord_logits is None:
            raise ValueError("select_proposals: nms_threshold needs the proposal boxes (coord_logits)")
        return proposal_nms_order(scores, coord_logits, num_queries, nms_threshold, angle_offset)
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

    An MLP (`2 * d_model -> d_model -> d_model`) on the sine embedding of `(cx, cy, w, h)` (`temperature`:
    10000 in DINO and RHINO as in Deformable DETR); an angle (fifth coordinate) is not used
    (docs/architecture.md#query-positions). DINO's
    `ref_point_head` is the same MLP on `(cy, cx, w, h)` blocks: a converter permutes its first layer's columns.
    """

    def __init__(self, d_model: int, temperature: float = 10000.0):
        super().__init__()
        self.d_model, self.temperature = d_model, temperature
        self.mlp = DeformableDetrMLPPredictionHead(2 * d_model, d_model, d_model, num_layers=2)

    def forward(self, reference_boxes: torch.Tensor) -> torch.Tensor:
        return self.mlp(box_sine_embedding(reference_boxes[..., :4], self.d_model, self.temperature))


class SlDetrMixedQuerySelection(nn.Module):
    """DINO's mixed query selection: reference boxes from the top-k proposals, learned content queries.

    `content_embed` is `nn.Embedding(num_queries, d_model)`; decoder query `i` starts from selected proposal `i`
    (the `i`-th best) with content `content_embed.weight[i]`.
    """

    def __init__(self, num_queries: int, d_model: int, nms_threshold: float | None = None,
                 angle_offset: float = -0.5):
        super().__init__()
        self.num_queries, self.nms_threshold, self.angle_offset = num_queries, nms_threshold, angle_offset
        self.content_embed = nn.Embedding(num_queries, d_model)
        self.content_embed._sl_detr_normal_std = 1.0  # DINO's init (see `decoder_sl_detr.init_marked_module`)

    def forward(
        self, scores: torch.Tensor, coord_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            scores (`(B, S)`): proposal scores ([`proposal_scores`]).
            coord_logits (`(B, S, D)`): proposal boxes in inverse-sigmoid space.

        Returns:
            content (`(B, K, d_model)`), reference boxes (`(B, K, D)`, sigmoid space, detached) and the selected
            indices (`(B, K)`), `K = min(num_queries, S)`.
        """
        indices = select_proposals(scores, self.num_queries, coord_logits, self.nms_threshold, self.angle_offset)
        reference = gather_queries(coord_logits, indices).detach().sigmoid()
        content = self.content_embed.weight[: indices.shape[1]].unsqueeze(0).expand(scores.shape[0], -1, -1)
        return content, reference, indices
