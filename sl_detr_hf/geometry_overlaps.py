"""Box geometry, overlaps: GIoU of axis-aligned boxes, exact IoU of rotated boxes, ProbIoU.

Boxes follow `geometry_conversions`: rotated ``(cx, cy, w, h, theta)`` (theta in radians, any range: IoU has period
pi), axis-aligned ``(cx, cy, w, h)``; pixel or normalized coordinates alike (IoU is scale-free, but rotated boxes
keep their shape only in pixels, so pass pixel boxes to the rotated functions). Shapes:

- `generalized_iou`: ``(..., 4)`` x ``(..., 4)`` broadcasting (``(N, 1, 4)`` and ``(1, M, 4)`` give the matrix);
- `aligned_iou_rotated`: ``(N, 5)`` x ``(N, 5)`` -> ``(N,)``; `box_iou_rotated`: ``(N, 5)`` x ``(M, 5)`` -> ``(N, M)``;
- `prob_iou`: ``(..., N, 4 | 5)`` x ``(..., M, 4 | 5)`` -> ``(..., N, M)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .geometry_conversions import EPS, check_boxes, cxcywh_to_xyxy, rbox_area, rbox_to_hbox
from .geometry_gaussian import gaussian_covariance

__all__ = ["aligned_iou_rotated", "box_iou_rotated", "generalized_iou", "overlapping_hbox_pairs", "prob_iou"]


def generalized_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of axis-aligned ``(cx, cy, w, h)`` boxes, broadcasting.

    Args:
        boxes1, boxes2: ``(..., 4)`` broadcastable (``(N, 1, 4)`` and ``(1, M, 4)`` give the pairwise matrix).
    Returns:
        ``(...)`` GIoU in ``[-1, 1]``; union and enclosing area are clamped to ``>= EPS``.
    """
    a, b = cxcywh_to_xyxy(boxes1), cxcywh_to_xyxy(boxes2)
    area_a = (a[..., 2:] - a[..., :2]).clamp_min(0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(-1)
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp_min(0).prod(-1)
    union = area_a + area_b - inter
    enclose = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp_min(0).prod(-1)
    return inter / union.clamp_min(EPS) - (enclose - union) / enclose.clamp_min(EPS)


def prob_iou(boxes1: Tensor, boxes2: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """ProbIoU (1 - Hellinger distance of the boxes' Gaussians) of every pair of two sets.

    A box is the Gaussian of its uniform density (mean the centre, covariance ``R diag(w^2, h^2) R^T / 12``).
    Rotation-aware, differentiable, a handful of elementwise operations (the exact rotated IoU is not): what a
    fixed-shape NMS needs. Identical boxes give 1 (up to ``eps``), far apart ones 0.

    Args:
        boxes1: ``(..., N, 4 | 5)`` ``(cx, cy, w, h[, theta])``, theta in radians (absent: 0).
        boxes2: ``(..., M, 4 | 5)``; ``None``: every pair of ``boxes1``.
        eps: added to the variances and the clamp of the determinants.
    Returns:
        ``(..., N, M)`` in ``[0, 1]``.
    """
    def moments(boxes: Tensor) -> tuple[Tensor, ...]:
        cx, cy, w, h = boxes[..., :4].unbind(-1)
        theta = boxes[..., 4] if boxes.shape[-1] > 4 else torch.zeros_like(w)
        # the uniform density's covariance is a third of the half-side one (w^2 / 12 against w^2 / 4)
        a, b, c = (v / 3 for v in gaussian_covariance(w, h, theta))
        a, b = a + eps, b + eps
        return cx, cy, a, b, c, (a * b - c.square()).clamp_min(eps * eps)

    cx1, cy1, a1, b1, c1, det1 = moments(boxes1)
    cx2, cy2, a2, b2, c2, det2 = (cx1, cy1, a1, b1, c1, det1) if boxes2 is None else moments(boxes2)
    pa, pb, pc = (a1[..., :, None] + a2[..., None, :]) / 2, (b1[..., :, None] + b2[..., None, :]) / 2, \
        (c1[..., :, None] + c2[..., None, :]) / 2
    det = (pa * pb - pc.square()).clamp_min(eps * eps)
    dx, dy = cx1[..., :, None] - cx2[..., None, :], cy1[..., :, None] - cy2[..., None, :]
    mahalanobis = (pb * dx.square() + pa * dy.square() - 2 * pc * dx * dy) / det
    bhattacharyya = mahalanobis / 8 + 0.5 * torch.log(det / (det1[..., :, None] * det2[..., None, :]).sqrt())
    # exp(-60) is 1e-26, so 1 - exp(-d) is 1 in float32 and float64 beyond it: the clamp changes no value, and
    # keeps the exponential off the slow path far arguments take on a CPU (10x; BENCHMARKS.md, "Inference on one
    # core: whole rows")
    hellinger = (1 - torch.exp(-bhattacharyya.clamp(0, 60)) + eps).sqrt()
    return 1 - hellinger


# --------------------------------------------------------------------------------------------------
# Exact IoU of rotated rectangles.
#
# Pairs whose axes are parallel (angle difference a multiple of pi/2, which includes identical and
# axis-aligned boxes) are two axis-aligned rectangles in the first box's frame: their intersection is
# the product of the overlaps along both axes. So are nearly parallel pairs, |sin(2 dtheta)| <= sqrt(eps)
# (7.5e-9 rad in float64), with box 2's enclosing rectangle in box 1's frame: an error of about dtheta times
# the boxes' sizes, where Green's theorem below is ill-conditioned for edges lying on the other box's edge
# lines (touching boxes, shared sides): its error there grows as eps / dtheta (4e-3 IoU at dtheta = 1e-14).
#
# Other pairs have no parallel edges. Green's theorem: the area of a region is 1/2 of the integral of
# (x dy - y dx) along its boundary, and the boundary of the intersection of convex polygons A and B is
# (boundary of A inside B) plus (boundary of B inside A). In the frame of a rectangle (its centre, its
# axes) it is the box [-w/2, w/2] x [-h/2, h/2], so the part of each edge of the other rectangle inside it
# is one parameter interval [t_lo, t_hi] found by Liang-Barsky clipping. The area is a fixed-size
# computation (8 edges x 2 axes per pair): no sorting, no variable vertex lists, no Python loop.
# --------------------------------------------------------------------------------------------------


def _clip_span(p: Tensor, d: Tensor, half: Tensor) -> Tensor:
    """Length, as a fraction of the edge, of the part of each edge inside the closed box ``[-half, half]``.

    Liang-Barsky clipping.

    Args:
        p: ``(P, 4, 2)`` edge start points, in the box's frame.
        d: ``(P, 4, 2)`` edge vectors.
        half: ``(P, 2)`` half sizes of the box.
    Returns:
        ``(P, 4)`` ``max(t_hi - t_lo, 0)`` where ``[t_lo, t_hi]`` is the clipped parameter range.
    """
    # Edges parallel to an axis reach here only as parallel pairs (answered by the axis-aligned branch)
    # or zero-length edges of degenerate boxes (contributing 0): a safe reciprocal keeps them finite.
    small = torch.finfo(p.dtype).tiny ** 0.25
    r = 1 / torch.where(d.abs() > small, d, torch.full_like(d, small))
    hx = half.unsqueeze(1)  # (P, 1, 2)
    ta, tb = (-hx - p) * r, (hx - p) * r  # where the edge meets the lines -half and +half
    lo, hi = torch.minimum(ta, tb), torch.maximum(ta, tb)
    t_lo = torch.maximum(lo[..., 0], lo[..., 1]).clamp(0, 1)
    t_hi = torch.minimum(hi[..., 0], hi[..., 1]).clamp(0, 1)
    return (t_hi - t_lo).clamp_min(0)


def _rect_in_frame(boxes: Tensor, frame: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Rectangles ``boxes`` ``(P, 5)`` seen in the frame (centre, axes) of ``frame`` ``(P, 5)``.

    Returns:
        ``corners (P, 4, 2)``, ``edges (P, 4, 2)`` (corner k to corner k+1) and ``centre (P, 2)``.
    """
    dt = boxes[:, 4] - frame[:, 4]
    cos, sin = torch.cos(dt), torch.sin(dt)
    cf, sf = torch.cos(frame[:, 4]), torch.sin(frame[:, 4])
    ox, oy = boxes[:, 0] - frame[:, 0], boxes[:, 1] - frame[:, 1]
    centre = torch.stack((cf * ox + sf * oy, -sf * ox + cf * oy), dim=-1)  # R(-theta_f) (c - c_f)
    u = torch.stack((cos, sin), dim=-1) * boxes[:, 2:3]  # the box's width axis, length w
    v = torch.stack((-sin, cos), dim=-1) * boxes[:, 3:4]  # its height axis, length h
    first = centre - (u + v) / 2
    edges = torch.stack((u, v, -u, -v), dim=1)
    corners = torch.stack((first, first + u, first + u + v, first + v), dim=1)
    return corners, edges, centre


def _aligned_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection areas of aligned pairs ``(P, 5)``, ``(P, 5)`` -> ``(P,)`` (no validation).

    Nearly parallel pairs are ill-conditioned in single precision (their crossing points slide along
    the edges), so below float64 those pairs (angle difference within 0.01 rad of a multiple of pi/2)
    are computed again in float64.
    """
    area = _intersection_kernel(boxes1, boxes2)
    if boxes1.dtype == torch.float64:
        return area
    near = torch.sin(2 * (boxes2[:, 4] - boxes1[:, 4])).abs() < 2e-2
    idx = near.nonzero().squeeze(1)
    if idx.numel() == 0:
        return area
    exact = _intersection_kernel(boxes1[idx].double(), boxes2[idx].double()).to(area.dtype)
    return area.index_put((idx,), exact)


def _intersection_kernel(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """The intersection areas of :func:`_aligned_intersection`, in the inputs' precision."""
    half1, half2 = boxes1[:, 2:4] / 2, boxes2[:, 2:4] / 2
    a_in_2, a_edges, _ = _rect_in_frame(boxes1, boxes2)
    b_in_1, b_edges, b_centre = _rect_in_frame(boxes2, boxes1)
    # General position: with the origin at box 1's centre, an edge p -> q clipped to [t_lo, t_hi]
    # contributes cross(p(t_lo), p(t_hi)) = (t_hi - t_lo) cross(p, q), and for a rectangle centred at c
    # with sides w, h: cross(p, q) = cross(c, q - p) + w h / 2 (the clip parameters are frame-free).
    area1, area2 = rbox_area(boxes1), rbox_area(boxes2)
    chain1 = _clip_span(a_in_2, a_edges, half2).sum(-1) * (area1 / 2)
    b_cross = b_centre[:, None, 0] * b_edges[..., 1] - b_centre[:, None, 1] * b_edges[..., 0]
    chain2 = (_clip_span(b_in_1, b_edges, half1) * (b_cross + (area2 / 2).unsqueeze(-1))).sum(-1)
    general = (chain1 + chain2) / 2
    # Parallel (or nearly parallel) axes: overlap of two axis-aligned rectangles in box 1's frame.
    dtheta = boxes2[:, 4] - boxes1[:, 4]
    parallel = torch.sin(2 * dtheta).abs() <= torch.finfo(boxes1.dtype).eps ** 0.5
    lo = b_in_1.amin(dim=1)  # (P, 2) extent of box 2 (an axis-aligned rectangle when parallel)
    hi = b_in_1.amax(dim=1)
    overlap = (torch.minimum(hi, half1) - torch.maximum(lo, -half1)).clamp_min(0)
    area = torch.where(parallel, overlap[:, 0] * overlap[:, 1], general).clamp_min(0)
    # The intersection is never larger than either box (guards rounding in degenerate cases).
    return torch.minimum(area, torch.minimum(area1, area2))


def aligned_iou_rotated(boxes1: Tensor, boxes2: Tensor, chunk_size: int = 1 << 17) -> Tensor:
    """Exact IoU of aligned pairs of rotated boxes, differentiable.

    Args:
        boxes1, boxes2: ``(N, 5)`` pixel rotated boxes (any angle convention).
        chunk_size: pairs processed at once (bounds the memory of intermediates).
    Returns:
        ``(N,)`` IoU in ``[0, 1]``; 0 where the union is empty (both boxes degenerate).
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    if boxes1.dim() != 2 or boxes1.shape != boxes2.shape:
        raise ValueError(f"`boxes1` and `boxes2` must both be (N, 5), got {tuple(boxes1.shape)} and "
                         f"{tuple(boxes2.shape)}")
    if boxes1.dtype != boxes2.dtype:
        raise ValueError(f"`boxes1` and `boxes2` must have the same dtype, got {boxes1.dtype} and "
                         f"{boxes2.dtype}")
    if boxes1.shape[0] == 0:
        return boxes1.new_zeros(0)
    inter = torch.cat([_aligned_intersection(a, b) for a, b in
                       zip(boxes1.split(chunk_size), boxes2.split(chunk_size))])
    union = rbox_area(boxes1) + rbox_area(boxes2) - inter
    return (inter / union.clamp_min(EPS)).clamp(0, 1)


def overlapping_hbox_pairs(boxes1: Tensor, boxes2: Tensor, max_cells: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """Index pairs ``(i, j)`` whose enclosing axis-aligned boxes overlap (or touch): the only pairs of rotated boxes
    ``(N, 5)`` x ``(M, 5)`` that can have a positive IoU. Returns two ``(P,)`` int64 tensors, ``i`` ascending.

    ``max_cells`` bounds the ``rows x M`` comparison block held at once.
    """
    h1, h2 = rbox_to_hbox(boxes1.detach()), rbox_to_hbox(boxes2.detach())
    rows = max(1, max_cells // max(1, boxes2.shape[0]))
    idx_i, idx_j = [], []
    for start in range(0, boxes1.shape[0], rows):
        a = h1[start:start + rows]
        overlap = (
            (a[:, None, 0] <= h2[None, :, 2]) & (h2[None, :, 0] <= a[:, None, 2])
            & (a[:, None, 1] <= h2[None, :, 3]) & (h2[None, :, 1] <= a[:, None, 3])
        )
        i, j = overlap.nonzero(as_tuple=True)
        idx_i.append(i + start)
        idx_j.append(j)
    if not idx_i:
        empty = torch.zeros(0, dtype=torch.long, device=boxes1.device)
        return empty, empty
    return torch.cat(idx_i), torch.cat(idx_j)


def box_iou_rotated(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Exact pairwise IoU of rotated rectangles (convex polygon clipping, not a Gaussian approximation).

    Only pairs whose enclosing axis-aligned boxes overlap are clipped; the others are 0. Differentiable.

    Args:
        boxes1: ``(N, 5)``, boxes2: ``(M, 5)`` pixel rotated boxes.
    Returns:
        ``(N, M)`` IoU in ``[0, 1]``.
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    if boxes1.dim() != 2 or boxes2.dim() != 2:
        raise ValueError(f"`boxes1` and `boxes2` must be (N, 5) and (M, 5), got {tuple(boxes1.shape)} and "
                         f"{tuple(boxes2.shape)}")
    if boxes1.dtype != boxes2.dtype:
        raise ValueError(f"`boxes1` and `boxes2` must have the same dtype, got {boxes1.dtype} and "
                         f"{boxes2.dtype}")
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = boxes1.new_zeros(n, m)
    if n == 0 or m == 0:
        return out + (boxes1.sum() + boxes2.sum()) * 0  # keep the graph for autograd users
    i, j = overlapping_hbox_pairs(boxes1, boxes2)
    if i.numel():
        iou = aligned_iou_rotated(boxes1[i], boxes2[j])
        out = out.index_put((i, j), iou)
    return out
