"""Rotated-box geometry: conversions, Gaussians, KLD / GWD, exact rotated IoU and rotated NMS.

One convention everywhere (docs/boxes.md#pixel-rotated-boxes-le90). A *pixel rotated box* is ``(cx, cy, w, h, theta)``:
theta in radians, le90 (``theta`` in ``[-pi/2, pi/2)``, ``w >= h``), positive theta turns +x towards +y
(clockwise on screen, image y points down). Corners are ``center + R(theta) @ (+-w/2, +-h/2)`` with
``R = [[cos, -sin], [sin, cos]]``, listed in the order DOTA annotators use (clockwise on screen, starting at
the corner that is top-left when ``theta = 0``).

Every function is batched torch (no Python loop over boxes), works in float32 and float64, on CPU and
CUDA, and is differentiable where it makes sense. This module imports only torch and the standard library
so that it can ship with ``trust_remote_code`` checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "EPS",
    "aligned_iou_rotated",
    "batched_nms_rotated",
    "box_iou_rotated",
    "denormalize_rboxes",
    "gwd",
    "hbox_to_rbox",
    "kld",
    "nms_rotated",
    "normalize_rboxes",
    "poly_to_rbox",
    "rbox_area",
    "rbox_to_gaussian",
    "rbox_to_hbox",
    "rbox_to_poly",
    "rboxes_from_torchvision",
    "rboxes_to_torchvision",
    "regularize_rboxes",
    "wrap_angle_range",
]

EPS = 1e-6
"""Added to every denominator, and the smallest side (pixels) the Gaussian of a box uses."""

_PI = math.pi
# Corner signs in DOTA order: clockwise on screen == counter-clockwise in (x right, y up) math axes.
_CORNER_SIGNS = ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5))


def _check_boxes(boxes: Tensor, name: str, width: int = 5, allow_negative: bool = False) -> Tensor:
    """Validate a ``(..., width)`` floating tensor: finite, and (if rotated boxes) non-negative sizes."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() < 1 or boxes.shape[-1] != width:
        raise ValueError(f"`{name}` must have shape (..., {width}), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"`{name}` must be a floating point tensor, got {boxes.dtype}")
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"`{name}` contains NaN or inf")
    if width == 5 and not allow_negative and boxes.numel() and bool((boxes[..., 2:4] < 0).any()):
        raise ValueError(f"`{name}` has negative width or height (columns 2 and 3 must be >= 0)")
    return boxes


def _wrap_angle(theta: Tensor) -> Tensor:
    """Wrap angles into ``[-pi/2, pi/2)`` (period pi: a rectangle is unchanged by a half turn)."""
    wrapped = torch.remainder(theta + _PI / 2, _PI) - _PI / 2
    # remainder can return exactly pi for tiny negative inputs in floating point; fold it back.
    return torch.where(wrapped >= _PI / 2, wrapped - _PI, wrapped)


def wrap_angle_range(theta: Tensor, start: float = -_PI / 2) -> Tensor:
    """Wrap angles into ``[start, start + pi)`` (radians; ``start = -pi/2`` is le90, as ``_wrap_angle``)."""
    wrapped = torch.remainder(theta - start, _PI) + start
    return torch.where(wrapped >= start + _PI, wrapped - _PI, wrapped)


def regularize_rboxes(boxes: Tensor) -> Tensor:
    """Bring any ``(cx, cy, w, h, theta)`` boxes to le90: ``w >= h`` and ``theta`` in ``[-pi/2, pi/2)``.

    Args:
        boxes: ``(..., 5)``.
    Returns:
        ``(..., 5)`` describing the same rectangles.
    """
    _check_boxes(boxes, "boxes")
    return _regularize(boxes)


def _regularize(boxes: Tensor) -> Tensor:
    """`regularize_rboxes` without the input checks (no data-dependent control flow: traceable for export)."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    swap = w < h
    w2 = torch.where(swap, h, w)
    h2 = torch.where(swap, w, h)
    theta = _wrap_angle(torch.where(swap, theta + _PI / 2, theta))
    return torch.stack((cx, cy, w2, h2, theta), dim=-1)


def rbox_to_poly(boxes: Tensor) -> Tensor:
    """Corners of rotated boxes.

    Args:
        boxes: ``(..., 5)`` pixel rotated boxes.
    Returns:
        ``(..., 8)`` polygons ``x1 y1 x2 y2 x3 y3 x4 y4`` (DOTA order: clockwise on screen).
    """
    _check_boxes(boxes, "boxes")
    return _corners(boxes).flatten(-2)


def _corners(boxes: Tensor) -> Tensor:
    """``(..., 5)`` -> ``(..., 4, 2)`` corners, no validation (internal hot path)."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    signs = boxes.new_tensor(_CORNER_SIGNS)  # (4, 2)
    dx = signs[:, 0] * w.unsqueeze(-1)  # (..., 4)
    dy = signs[:, 1] * h.unsqueeze(-1)
    x = cx.unsqueeze(-1) + cos.unsqueeze(-1) * dx - sin.unsqueeze(-1) * dy
    y = cy.unsqueeze(-1) + sin.unsqueeze(-1) * dx + cos.unsqueeze(-1) * dy
    return torch.stack((x, y), dim=-1)


def poly_to_rbox(polys: Tensor) -> Tensor:
    """Minimum-area rectangle of 4-point polygons, as le90 rotated boxes.

    The minimum-area rectangle has a side along an edge of the convex hull of the points; every hull edge
    is one of the 6 segments between the 4 points, so all 6 directions are tried in one vectorized pass.
    Exact for rectangles whatever their corner order or orientation; for any other quadrilateral (also
    self-intersecting or clockwise ones) it is the tightest enclosing rectangle.

    Args:
        polys: ``(..., 8)`` ``x1 y1 ... x4 y4``.
    Returns:
        ``(..., 5)`` pixel rotated boxes.
    """
    _check_boxes(polys, "polys", width=8)
    pts = polys.unflatten(-1, (4, 2))  # (..., 4, 2)
    i, j = torch.triu_indices(4, 4, offset=1, device=polys.device)  # 6 pairs
    d = pts[..., j, :] - pts[..., i, :]  # (..., 6, 2)
    length = d.norm(dim=-1, keepdim=True)  # (..., 6, 1)
    u = d / length.clamp_min(torch.finfo(polys.dtype).tiny)  # unit directions
    v = torch.stack((-u[..., 1], u[..., 0]), dim=-1)  # normals
    pu = torch.einsum("...pk,...ek->...ep", pts, u)  # (..., 6, 4) projections
    pv = torch.einsum("...pk,...ek->...ep", pts, v)
    umin, umax = pu.min(-1).values, pu.max(-1).values
    vmin, vmax = pv.min(-1).values, pv.max(-1).values
    area = (umax - umin) * (vmax - vmin)
    area = torch.where(length.squeeze(-1) > 0, area, torch.full_like(area, math.inf))
    best = area.argmin(-1, keepdim=True)  # (..., 1)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, best).squeeze(-1)

    uc, vc = (pick(umin) + pick(umax)) / 2, (pick(vmin) + pick(vmax)) / 2
    ux = pick(u[..., 0])
    uy = pick(u[..., 1])
    # All points equal: every direction is degenerate; fall back to the +x axis.
    degenerate = torch.isinf(pick(area))
    ux = torch.where(degenerate, torch.ones_like(ux), ux)
    uy = torch.where(degenerate, torch.zeros_like(uy), uy)
    w = torch.where(degenerate, torch.zeros_like(uc), pick(umax) - pick(umin))
    h = torch.where(degenerate, torch.zeros_like(uc), pick(vmax) - pick(vmin))
    cx = torch.where(degenerate, pts[..., 0, 0], uc * ux - vc * uy)
    cy = torch.where(degenerate, pts[..., 0, 1], uc * uy + vc * ux)
    theta = torch.atan2(uy, ux)
    return regularize_rboxes(torch.stack((cx, cy, w, h, theta), dim=-1))


def rbox_to_hbox(boxes: Tensor) -> Tensor:
    """Enclosing axis-aligned boxes ``(x1, y1, x2, y2)`` of rotated boxes ``(..., 5)`` -> ``(..., 4)``."""
    _check_boxes(boxes, "boxes")
    return _enclosing_hbox(boxes)


def _enclosing_hbox(boxes: Tensor) -> Tensor:
    """`rbox_to_hbox` without the input checks (traceable for export)."""
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta).abs(), torch.sin(theta).abs()
    hw = (cos * w + sin * h) / 2
    hh = (sin * w + cos * h) / 2
    return torch.stack((cx - hw, cy - hh, cx + hw, cy + hh), dim=-1)


def hbox_to_rbox(boxes: Tensor) -> Tensor:
    """Axis-aligned boxes ``(x1, y1, x2, y2)`` ``(..., 4)`` -> le90 rotated boxes ``(..., 5)`` (angle 0, or
    ``-pi/2`` for tall boxes)."""
    _check_boxes(boxes, "boxes", width=4)
    x1, y1, x2, y2 = boxes.unbind(-1)
    if bool((x2 < x1).any() or (y2 < y1).any()):
        raise ValueError("`boxes` must have x2 >= x1 and y2 >= y1")
    return regularize_rboxes(torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)), -1))


def rbox_area(boxes: Tensor) -> Tensor:
    """Areas ``w * h`` of rotated boxes ``(..., 5)`` -> ``(...)``."""
    return boxes[..., 2] * boxes[..., 3]


def _size_scale(boxes: Tensor, size: Tensor | Sequence[float], name: str) -> Tensor:
    size_t = torch.as_tensor(size, dtype=boxes.dtype, device=boxes.device)
    if size_t.shape[-1:] != (2,):
        raise ValueError(f"`{name}` must be (H, W) or (N, 2) of (H, W), got shape {tuple(size_t.shape)}")
    if bool((size_t <= 0).any()):
        raise ValueError(f"`{name}` must be positive, got {size_t.tolist()}")
    height, width = size_t[..., 0], size_t[..., 1]
    return torch.stack((width, height, width, height, torch.ones_like(width)), dim=-1)


def normalize_rboxes(boxes: Tensor, size: Tensor | Sequence[float]) -> Tensor:
    """Pixel boxes -> normalized ``(cx/W, cy/H, w/W, h/H, theta)``.

    Args:
        boxes: ``(N, 5)`` pixel rotated boxes.
        size: ``(H, W)`` of the image (the resized size before padding), or ``(N, 2)`` per box.
    """
    _check_boxes(boxes, "boxes")
    return boxes / _size_scale(boxes, size, "size")


def denormalize_rboxes(boxes: Tensor, size: Tensor | Sequence[float]) -> Tensor:
    """Normalized ``(cx/W, cy/H, w/W, h/H, theta)`` -> pixel boxes; ``size`` as in :func:`normalize_rboxes`."""
    _check_boxes(boxes, "boxes")
    return boxes * _size_scale(boxes, size, "size")


def _gaussian_covariance(w: Tensor, h: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sxx, syy, sxy)`` of ``Sigma = R diag(w^2/4, h^2/4) R^T`` (no input checks: also for traced graphs)."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    a, b = w.square() / 4, h.square() / 4
    return a * cos.square() + b * sin.square(), a * sin.square() + b * cos.square(), (a - b) * cos * sin


def rbox_to_gaussian(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """2-D Gaussian of rotated boxes: ``mu = (cx, cy)``, ``Sigma = R diag(w^2/4, h^2/4) R^T``.

    Args:
        boxes: ``(..., 5)`` pixel rotated boxes.
    Returns:
        ``mu (..., 2)`` and ``sigma (..., 2, 2)``.
    """
    _check_boxes(boxes, "boxes")
    cx, cy, w, h, theta = boxes.unbind(-1)
    sxx, syy, sxy = _gaussian_covariance(w, h, theta)
    sigma = torch.stack((torch.stack((sxx, sxy), -1), torch.stack((sxy, syy), -1)), -2)
    return torch.stack((cx, cy), -1), sigma


def kld(pred: Tensor, target: Tensor) -> Tensor:
    """Kullback-Leibler divergence ``KL(N_target || N_pred)`` of the boxes' Gaussians (docs/losses.md#kld).

    Computed in the predicted box's frame (closed form, no matrix inverse), so it is stable and exactly 0
    for identical boxes. Sides are clamped to at least ``EPS`` pixels so that degenerate boxes
    (``w`` or ``h`` = 0) give a large but finite divergence and finite gradients.

    Args:
        pred, target: ``(..., 5)`` pixel rotated boxes (any angle convention; period pi).
    Returns:
        ``(...)`` divergences, ``>= 0``.
    """
    _check_boxes(pred, "pred")
    _check_boxes(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"`pred` and `target` must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    pcx, pcy, pw, ph, pt = pred.unbind(-1)
    tcx, tcy, tw, th, tt = target.unbind(-1)
    pw, ph, tw, th = (s.clamp_min(EPS) for s in (pw, ph, tw, th))
    cos, sin = torch.cos(pt), torch.sin(pt)
    dx, dy = tcx - pcx, tcy - pcy
    du = cos * dx + sin * dy  # centre offset in the predicted box's frame
    dv = -sin * dx + cos * dy
    maha = 4 * (du.square() / pw.square() + dv.square() / ph.square())
    dcos, dsin = torch.cos(tt - pt).square(), torch.sin(tt - pt).square()
    ta, tb = tw.square(), th.square()
    trace = (ta * dcos + tb * dsin) / pw.square() + (ta * dsin + tb * dcos) / ph.square()
    logdet = 2 * (torch.log(pw) + torch.log(ph) - torch.log(tw) - torch.log(th))
    return (0.5 * (maha + trace + logdet) - 1).clamp_min(0)


def gwd(pred: Tensor, target: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance of the boxes' Gaussians (for ablations), ``(..., 5)`` -> ``(...)``.

    ``||mu_p - mu_t||^2 + tr(S_p) + tr(S_t) - 2 sqrt(tr(S_p S_t) + 2 sqrt(det(S_p S_t)))``.
    """
    _check_boxes(pred, "pred")
    _check_boxes(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"`pred` and `target` must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    mu_p, s_p = rbox_to_gaussian(pred)
    mu_t, s_t = rbox_to_gaussian(target)
    center = (mu_p - mu_t).square().sum(-1)
    tr_p = s_p.diagonal(dim1=-2, dim2=-1).sum(-1)
    tr_t = s_t.diagonal(dim1=-2, dim2=-1).sum(-1)
    tr_pt = (s_p * s_t.transpose(-1, -2)).sum((-1, -2))
    det_sqrt = (pred[..., 2] * pred[..., 3] * target[..., 2] * target[..., 3]) / 16  # sqrt(det S_p det S_t)
    cross = (tr_pt + 2 * det_sqrt).clamp_min(EPS).sqrt()
    return (center + tr_p + tr_t - 2 * cross).clamp_min(0)


# --------------------------------------------------------------------------------------------------
# Exact IoU of rotated rectangles.
#
# Pairs whose axes are parallel (angle difference a multiple of pi/2, which includes identical and
# axis-aligned boxes) are two axis-aligned rectangles in the first box's frame: their intersection is
# the product of the overlaps along both axes.
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
    # Parallel axes: overlap of two axis-aligned rectangles in box 1's frame.
    dtheta = boxes2[:, 4] - boxes1[:, 4]
    parallel = torch.sin(2 * dtheta).abs() <= 64 * torch.finfo(boxes1.dtype).eps
    lo = b_in_1.amin(dim=1)  # (P, 2) extent of box 2 (an axis-aligned rectangle when parallel)
    hi = b_in_1.amax(dim=1)
    overlap = (torch.minimum(hi, half1) - torch.maximum(lo, -half1)).clamp_min(0)
    area = torch.where(parallel, overlap[:, 0] * overlap[:, 1], general).clamp_min(0)
    # The intersection is never larger than either box (guards rounding in degenerate cases).
    return torch.minimum(area, torch.minimum(area1, area2))


def _iou_from_inter(inter: Tensor, area1: Tensor, area2: Tensor) -> Tensor:
    union = area1 + area2 - inter
    return (inter / union.clamp_min(EPS)).clamp(0, 1)


def aligned_iou_rotated(boxes1: Tensor, boxes2: Tensor, chunk_size: int = 1 << 17) -> Tensor:
    """Exact IoU of aligned pairs of rotated boxes, differentiable.

    Args:
        boxes1, boxes2: ``(N, 5)`` pixel rotated boxes (any angle convention).
        chunk_size: pairs processed at once (bounds the memory of intermediates).
    Returns:
        ``(N,)`` IoU in ``[0, 1]``; 0 where the union is empty (both boxes degenerate).
    """
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
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
    return _iou_from_inter(inter, rbox_area(boxes1), rbox_area(boxes2))


def _candidate_pairs(boxes1: Tensor, boxes2: Tensor, max_cells: int = 1 << 24) -> tuple[Tensor, Tensor]:
    """Index pairs ``(i, j)`` whose enclosing axis-aligned boxes overlap (or touch)."""
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
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
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
    i, j = _candidate_pairs(boxes1, boxes2)
    if i.numel():
        iou = aligned_iou_rotated(boxes1[i], boxes2[j])
        out = out.index_put((i, j), iou)
    return out


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
    _check_boxes(boxes, "boxes")
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
    i, j = _candidate_pairs(sorted_boxes, sorted_boxes)
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


# --------------------------------------------------------------------------------------------------
# torchvision's rotated tv_tensors: CXCYWHR with r in degrees, turning the other way (counter-clockwise
# on screen). theta = -deg2rad(r).
# --------------------------------------------------------------------------------------------------


def rboxes_to_torchvision(boxes: Tensor, canvas_size: tuple[int, int]):
    """Pixel rotated boxes ``(N, 5)`` -> ``torchvision.tv_tensors.BoundingBoxes`` in ``CXCYWHR``.

    Args:
        canvas_size: ``(H, W)`` of the image the boxes live on.
    """
    from torchvision import tv_tensors

    _check_boxes(boxes, "boxes")
    tv = torch.cat((boxes[..., :4], -torch.rad2deg(boxes[..., 4:5])), dim=-1)
    return tv_tensors.BoundingBoxes(tv, format=tv_tensors.BoundingBoxFormat.CXCYWHR,
                                    canvas_size=tuple(int(s) for s in canvas_size))


def rboxes_from_torchvision(boxes) -> Tensor:
    """torchvision rotated ``BoundingBoxes`` (any rotated format) -> le90 pixel rotated boxes ``(N, 5)``."""
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    fmt = getattr(boxes, "format", None)
    if fmt is None:
        raise TypeError("`boxes` must be torchvision.tv_tensors.BoundingBoxes")
    if fmt != tv_tensors.BoundingBoxFormat.CXCYWHR:
        boxes = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWHR)
    data = boxes.as_subclass(Tensor)
    if not data.is_floating_point():
        data = data.float()
    out = torch.cat((data[..., :4], -torch.deg2rad(data[..., 4:5])), dim=-1)
    return regularize_rboxes(out)
