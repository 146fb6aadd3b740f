"""Contrastive denoising (DN) queries for 5-d rotated and 4-d horizontal boxes (DINO / RT-DETR / RHINO).

At training time, ``G`` groups of noised ground-truth queries are prepended to the ``Q`` matching queries.
This module wraps transformers' RT-DETR ``get_contrastive_denoising_training_group`` (which builds the groups,
the label and ``cx, cy, w, h`` noise and the attention mask for 4-d boxes) and adds the angle channel, the
group cap and the conversions the SL-DETR decoder needs.

Layout (the criterion depends on it; the same as RT-DETR's): ``M`` = the batch's largest object count,
``N = G * 2 * M`` DN queries. Group ``g`` occupies DN queries ``[2*M*g, 2*M*(g+1))``; query ``2*M*g + j`` is the
positive (small noise) copy of target ``j`` of its image, query ``2*M*g + M + j`` the negative (large noise)
copy, for ``j < n_b``. Entries with ``j >= n_b`` are padding: label ``num_labels`` (the embedding's "unknown"
row), reference ``(0, 0, 0, 0[, 0.5])``; they are trained as background in classification only.

What was checked against the references (transformers 5.24 RT-DETR, DINO, mmdet's ``CdnQueryGenerator`` that
RHINO subclasses; RHINO's R50 DOTA configs):

- Groups: ``G = min(max(num_denoising // M, 1), max_groups)``. RT-DETR has no cap; RHINO's 36-epoch config sets
  ``max_num_groups=30``. The cap is applied by asking RT-DETR for ``G * M`` queries.
- Labels: flipped with probability ``label_noise_ratio / 2`` to a uniformly drawn class (which may be the same
  class), padding excluded. RT-DETR, DINO and mmdet (so RHINO) all use half the configured ratio.
- Boxes: RT-DETR / DINO noise the corners (``xyxy``): every corner coordinate moves by ``r * box_noise_scale *
  (w or h) / 2`` with ``|r| < 1`` for positives and ``1 <= |r| < 2`` for negatives, then the corners are clipped
  to ``[0, 1]``. So a positive's centre moves by less than ``box_noise_scale * (w, h) / 2`` and its size by less
  than ``box_noise_scale * (w, h)``; a negative's corners end farther from the ground truth's than any
  positive's (before clipping). A negative's corners may cross (its width then becomes ~0, as in RT-DETR).
  Difference from RHINO: RHINO's rotated generator adds the same ``r * (w, h, w, h) / 2`` noise to ``cx, cy, w,
  h`` directly (its ``xyxy`` conversion is commented out); we keep RT-DETR's corner noise (the issue asks us to
  reuse RT-DETR's generator, and DINO's DN was tuned with it).
- Angle: not noised by default (RHINO's choice: the DN query's angle is the ground truth's). With
  ``angle_noise_scale = s > 0`` the angle moves by ``r * s * pi / 2`` with the same positive / negative ``r``
  ranges as the box, then is wrapped into the native range (le90 ``[-pi/2, pi/2)`` by default; the width / height
  are not swapped).
- Attention mask (``True`` = blocked): matching queries cannot see any DN query, and each DN group cannot see
  the other groups; DN queries CAN see the matching queries. This is DINO's / mmdet's / RT-DETR's mask (the
  matching queries carry no ground-truth information, so nothing leaks).

The reference is returned in the model's sigmoid space: ``cx, cy, w, h`` in ``[0, 1]`` (RT-DETR's clipped
boxes, round-tripped through its ``inverse_sigmoid``, so values are within ``1e-5`` of the clip bounds) and, for
``box_dim = 5``, the angle as ``a = theta / pi - angle_offset`` in ``[0, 1)`` (theta in the model's native range
``[angle_offset * pi, (angle_offset + 1) * pi)``, ``config.angle_offset``: le90 for -0.5, RHINO's ``[0, pi)`` for 0).

Usage (for the model integration)::

    # in __init__ (the model owns the embedding; row num_labels = padding / "unknown", as RT-DETR):
    self.denoising_class_embed = nn.Embedding(config.num_labels + 1, config.d_model, padding_idx=config.num_labels)

    # in forward, training only (targets = the `labels` list passed to the model):
    dn = None
    if self.training and labels is not None:
        dn = build_denoising_queries(
            labels, self.denoising_class_embed, num_labels=config.num_labels, num_queries=config.num_queries,
            num_denoising=config.num_denoising, max_groups=config.max_denoising_groups,
            label_noise_ratio=config.label_noise_ratio, box_noise_scale=config.box_noise_scale,
            angle_noise_scale=config.angle_noise_scale, box_dim=5 if config.box_type == "rotated" else 4)
    if dn is not None:
        dn_content, dn_reference, self_attn_mask, dn_meta = dn
        # decoder input: torch.cat([dn_content, content], 1) and torch.cat([inverse_sigmoid(dn_reference),
        # reference_logits], 1); pass self_attn_mask (N + Q, N + Q) to every decoder self-attention
        # (bool, True = blocked: e.g. `torch.zeros_like(mask, dtype=x.dtype).masked_fill(mask, -inf)` for an
        # additive mask). Split each decoder layer's outputs at N = dn_meta["num_groups"] * 2 *
        # dn_meta["max_objects"]: the first N go to outputs["dn_outputs"], the rest are the matching outputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from transformers.models.rt_detr.modeling_rt_detr import get_contrastive_denoising_training_group

from .geometry_conversions import wrap_angle_range

__all__ = ["DenoisingGroup", "build_denoising_queries", "make_denoising_group", "num_denoising_groups"]


class DenoisingGroup(NamedTuple):
    """The noised queries before embedding.

    labels: ``(B, N)`` int64, noised labels (``num_labels`` at padding entries).
    reference: ``(B, N, D)`` in sigmoid space (``cx, cy, w, h`` in ``[0, 1]``, ``a = theta / pi - angle_offset``).
    valid: ``(B, N)`` bool, ``False`` at padding entries.
    attn_mask: ``(N + Q, N + Q)`` bool, ``True`` = blocked.
    dn_meta: ``{"num_groups": G, "max_objects": M}``.
    """

    labels: Tensor
    reference: Tensor
    valid: Tensor
    attn_mask: Tensor
    dn_meta: dict[str, int]


def num_denoising_groups(max_objects: int, num_denoising: int, max_groups: int) -> int:
    """``G = min(max(num_denoising // M, 1), max_groups)`` (RT-DETR's dynamic count, with RHINO's cap)."""
    return min(max(num_denoising // max_objects, 1), max_groups)


def _check_targets(targets: list[dict[str, Tensor]], num_labels: int, box_dim: int) -> None:
    """Shapes per image; label range checked once for the whole batch (one host sync)."""
    for i, target in enumerate(targets):
        for key in ("class_labels", "boxes"):
            if key not in target:
                raise ValueError(f"denoising_sl_detr: targets[{i}] has no {key!r} (keys: {sorted(target)})")
        labels, boxes = target["class_labels"], target["boxes"]
        if labels.dim() != 1 or boxes.shape != (labels.shape[0], box_dim):
            raise ValueError(
                f"denoising_sl_detr: targets[{i}]: 'class_labels' must be (n,) and 'boxes' (n, {box_dim}), got "
                f"{tuple(labels.shape)} and {tuple(boxes.shape)}")
    all_labels = torch.cat([t["class_labels"].reshape(-1) for t in targets])
    if all_labels.numel() and bool(((all_labels < 0) | (all_labels >= num_labels)).any()):
        for i, target in enumerate(targets):
            labels = target["class_labels"]
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_labels):
                raise ValueError(f"denoising_sl_detr: targets[{i}]['class_labels'] must be in [0, {num_labels}), "
                                 f"got {labels.min().item()}..{labels.max().item()}")


def make_denoising_group(
    targets: list[dict[str, Tensor]],
    num_labels: int,
    num_queries: int,
    num_denoising: int = 100,
    max_groups: int = 30,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    angle_noise_scale: float = 0.0,
    box_dim: int = 5,
    angle_offset: float = -0.5,
) -> DenoisingGroup | None:
    """Noised DN labels and reference boxes, the attention mask and the layout (see the module docstring).

    Args:
        targets: per image ``{"class_labels": (n_b,) int64, "boxes": (n_b, box_dim) normalized}``
            (``cx, cy, w, h[, theta]``, theta in radians in the native range of ``angle_offset``).
        num_labels: number of classes ``C``. num_queries: number of matching queries ``Q``.
        num_denoising: about this many DN queries per image; 0 turns denoising off.
        max_groups: cap on the number of groups.
        label_noise_ratio, box_noise_scale, angle_noise_scale: see the module docstring
            (``angle_noise_scale`` in units of ``pi / 2``; ignored for ``box_dim = 4``).
        box_dim: 5 (rotated) or 4 (horizontal).
        angle_offset: ``theta = (a + angle_offset) * pi`` (``config.angle_offset``; -0.5 = le90).
    Returns:
        A [`DenoisingGroup`], or ``None`` when ``num_denoising == 0`` or no image has a target.
    """
    if box_dim not in (4, 5):
        raise ValueError(f"denoising_sl_detr: box_dim must be 4 or 5, got {box_dim!r}")
    if num_denoising <= 0 or not targets:
        return None
    _check_targets(targets, num_labels, box_dim)
    counts = [len(t["class_labels"]) for t in targets]
    max_objects = max(counts)
    if max_objects == 0:
        return None
    num_groups = num_denoising_groups(max_objects, num_denoising, max_groups)
    boxes_dtype = targets[0]["boxes"].dtype

    horizontal = [{"class_labels": t["class_labels"], "boxes": t["boxes"][:, :4]} for t in targets]
    labels, boxes, additive_mask, _ = get_contrastive_denoising_training_group(
        horizontal, num_classes=num_labels, num_queries=num_queries, class_embed=lambda x: x,
        num_denoising_queries=num_groups * max_objects, label_noise_ratio=label_noise_ratio,
        box_noise_scale=box_noise_scale)
    if box_noise_scale > 0:  # RT-DETR returns inverse-sigmoid boxes only when it noised them
        boxes = boxes.sigmoid()
    device = boxes.device
    # padding entries: label num_labels (RT-DETR's default), entry j >= n_b of each half-group
    slot = torch.arange(2 * max_objects * num_groups, device=device) % max_objects
    valid = slot[None, :] < torch.tensor(counts, device=device)[:, None]  # (B, N)
    reference = boxes.to(boxes_dtype).masked_fill(~valid[..., None], 0.0)

    if box_dim == 5:
        theta = pad_sequence([t["boxes"][:, 4].to(device) for t in targets], batch_first=True)  # (B, M)
        theta = theta.tile(1, 2 * num_groups)  # (B, N), the same layout as RT-DETR's tiling
        if angle_noise_scale > 0:
            negative = (torch.arange(theta.shape[1], device=device) // max_objects) % 2 == 1
            magnitude = torch.rand_like(theta) + negative.to(theta.dtype)  # pos [0, 1), neg [1, 2)
            sign = torch.randint_like(theta, 0, 2) * 2.0 - 1.0
            theta = theta + sign * magnitude * angle_noise_scale * math.pi / 2
            theta = wrap_angle_range(theta, angle_offset * math.pi)
        angle = torch.where(valid, theta / math.pi - angle_offset, torch.full_like(theta, 0.5))
        reference = torch.cat([reference, angle[..., None].to(reference.dtype)], dim=-1)

    labels = labels.long()  # RT-DETR keeps padding at num_labels and never flips it
    attn_mask = torch.isinf(additive_mask)  # RT-DETR's additive mask: -inf = blocked
    return DenoisingGroup(labels, reference, valid, attn_mask, {"num_groups": num_groups, "max_objects": max_objects})


def build_denoising_queries(
    targets: list[dict[str, Tensor]],
    label_embedding: nn.Embedding,
    num_labels: int,
    num_queries: int,
    num_denoising: int = 100,
    max_groups: int = 30,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    angle_noise_scale: float = 0.0,
    box_dim: int = 5,
    angle_offset: float = -0.5,
) -> tuple[Tensor, Tensor, Tensor, dict[str, int]] | None:
    """DN content queries, reference boxes, self-attention mask and layout for the decoder.

    Args: as [`make_denoising_group`]; ``label_embedding`` is ``nn.Embedding(num_labels + 1, d_model)`` (row
        ``num_labels`` = padding / unknown).
    Returns:
        ``(content (B, N, d_model), reference (B, N, box_dim) sigmoid space, attn_mask (N + Q, N + Q) bool
        True = blocked, dn_meta {"num_groups": G, "max_objects": M})``, or ``None`` when ``num_denoising == 0`` or
        no image has a target.
    """
    if label_embedding.num_embeddings != num_labels + 1:
        raise ValueError(f"denoising_sl_detr: label_embedding must have num_labels + 1 = {num_labels + 1} rows, "
                         f"got {label_embedding.num_embeddings}")
    group = make_denoising_group(targets, num_labels, num_queries, num_denoising, max_groups, label_noise_ratio,
                                 box_noise_scale, angle_noise_scale, box_dim, angle_offset)
    if group is None:
        return None
    return label_embedding(group.labels), group.reference, group.attn_mask, group.dn_meta
