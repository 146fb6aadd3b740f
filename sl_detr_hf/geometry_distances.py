"""Box geometry, distances: the coordinates the L1 loss and cost compare, and the corner Hausdorff distance.

Boxes follow `geometry_conversions`: rotated ``(cx, cy, w, h, theta)`` (theta in radians) or axis-aligned
``(cx, cy, w, h)``, here normalized by the image (``cx / W, cy / H, w / W, h / H``) as the model predicts them.
Shapes: `l1_coords` ``(..., D)`` -> ``(..., D)``; `pairwise_hausdorff` ``(B, Q, D)`` x ``(B, T, D)`` -> ``(B, Q, T)``,
``D`` 5 or 4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .geometry_conversions import rbox_corners

__all__ = ["l1_coords", "pairwise_hausdorff"]


def l1_coords(boxes: Tensor) -> Tensor:
    """Coordinates the L1 loss and cost compare: ``(cx, cy, w, h[, theta / pi])``, ``(..., D)`` -> ``(..., D)``."""
    if boxes.shape[-1] == 5:
        return torch.cat((boxes[..., :4], boxes[..., 4:] / math.pi), dim=-1)
    return boxes


def pairwise_hausdorff(pred: Tensor, target: Tensor) -> Tensor:
    """Hausdorff distance between the corner sets of every pair of boxes.

    Corners are taken in normalized coordinates (``cx, cy, w, h`` in image units, theta in radians), as RHINO's
    ``HausdorffCost`` (docs/losses.md#matcher): ``max(max_a min_b |a - b|, max_b min_a |a - b|)`` over the 4 + 4
    corners.

    Args:
        pred: ``(B, Q, D)``, target: ``(B, T, D)`` normalized boxes, ``D`` 5 or 4.
    Returns:
        ``(B, Q, T)``.
    """
    batch, queries, targets = pred.shape[0], pred.shape[1], target.shape[1]
    a = rbox_corners(pred).reshape(batch, queries * 4, 2)
    b = rbox_corners(target).reshape(batch, targets * 4, 2)
    dist = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").view(batch, queries, 4, targets, 4)
    forward = dist.amin(-1).amax(2)  # each pred corner to its nearest target corner, worst corner
    backward = dist.amin(2).amax(-1)
    return torch.maximum(forward, backward)
