"""Box geometry, NMS: greedy non-maximum suppression of rotated boxes with the exact rotated IoU.

Boxes are pixel rotated boxes ``(N, 5)`` ``(cx, cy, w, h, theta)`` (see `geometry_conversions`; any angle range),
scores ``(N,)``, categories ``(N,)`` integers. The contract is torchvision's ``nms`` / ``batched_nms``: the kept
indices, int64, by decreasing score.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .geometry_conversions import check_boxes
from .geometry_overlaps import aligned_iou_rotated, overlapping_hbox_pairs

__all__ = ["batched_nms_rotated", "nms_rotated"]


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression of rotated boxes (same contract as ``torchvision.ops.nms``).

    A box is dropped when its IoU with a kept, higher-scoring box is ``> iou_threshold``. Computed without
    a loop over boxes: the suppression graph of overlapping pairs is built once, then the greedy rule
    ``keep[j] = not any(keep[i] and iou[i, j] > thr for i ranked before j)`` is iterated to its fixed point
    (a triangular system; the number of iterations is the longest suppression chain, usually a handful).

    Args:
        boxes: ``(N, 5)`` pixel rotated boxes; scores: ``(N,)``.
    Returns:
        ``int64`` indices of the kept boxes, sorted by decreasing score.
    """
    return batched_nms_rotated(boxes, scores, None, iou_threshold)


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    """Class-wise rotated NMS: boxes of different ``idxs`` never suppress each other.

    Same contract as ``torchvision.ops.batched_nms``.

    Args:
        boxes: ``(N, 5)``; scores: ``(N,)``; idxs: ``(N,)`` integer categories (``None``: one category).
        iou_threshold: discard boxes with IoU ``> iou_threshold``.
    Returns:
        ``int64`` indices of the kept boxes, sorted by decreasing score.
    """
    check_boxes(boxes, "boxes")
    if boxes.dim() != 2:
        raise ValueError(f"`boxes` must be (N, 5), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(f"`scores` must be ({boxes.shape[0]},), got {tuple(scores.shape)}")
    if idxs is not None and idxs.shape != boxes.shape[:1]:
        raise ValueError(f"`idxs` must be ({boxes.shape[0]},), got {tuple(idxs.shape)}")
    if not 0 <= float(iou_threshold) <= 1:
        raise ValueError(f"`iou_threshold` must be in [0, 1], got {iou_threshold}")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    sorted_boxes = boxes.detach()[order]
    i, j = overlapping_hbox_pairs(sorted_boxes, sorted_boxes)
    pair = i < j
    if idxs is not None:
        sorted_idxs = idxs[order]
        pair &= sorted_idxs[i] == sorted_idxs[j]
    i, j = i[pair], j[pair]
    if i.numel():
        over = aligned_iou_rotated(sorted_boxes[i], sorted_boxes[j]) > iou_threshold
        i, j = i[over], j[over]
    keep = torch.ones(n, dtype=torch.bool, device=boxes.device)
    while i.numel():
        suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
        suppressed[j[keep[i]]] = True
        new_keep = ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return order[keep]
