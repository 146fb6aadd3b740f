"""Box geometry, conversions: le90 normalization, corners, enclosing boxes, pixel <-> normalized, torchvision.

Box convention of every ``geometry_*`` module (docs/boxes.md#pixel-rotated-boxes-le90). A *rotated box* is
``(cx, cy, w, h, theta)``, theta in radians; *le90* means ``theta`` in ``[-pi/2, pi/2)`` and ``w >= h``
(`regularize_rboxes` brings any box there; a rectangle is unchanged by a half turn, so angles have period pi).
Positive theta turns +x towards +y: clockwise on screen, where image y points down. ``w`` and ``h`` are measured in
the frame of ``cx, cy``: pixels, or normalized by the image (``cx / W, cy / H, w / W, h / H``, see
`normalize_rboxes`; ``theta`` stays the pixel box's angle, so rotated geometry wants pixel boxes). Corners are
``center + R(theta) @ (+-w/2, +-h/2)`` with ``R = [[cos, -sin], [sin, cos]]``, in the order DOTA annotators use
(clockwise on screen, starting at the corner that is top-left when ``theta = 0``). An *axis-aligned box* is
``(cx, cy, w, h)`` (the model's horizontal boxes) or ``(x1, y1, x2, y2)`` (``hbox``).

Shapes: boxes ``(..., 5)`` (or ``(..., 4)``), polygons ``(..., 8)`` ``x1 y1 ... x4 y4``, corners ``(..., 4, 2)``;
leading dimensions broadcast unless a function says ``(N, 5)``. Batched torch (no Python loop over boxes), float32
and float64, CPU and CUDA, differentiable where it makes sense.

The geometry is five flat modules (conversions, overlaps, gaussian, distances, nms) rather than a subpackage: a saved
model folder ships the package's files that the model imports, one folder level deep, as ``trust_remote_code`` code,
and transformers resolves ``from .x import y`` to the file ``x.py`` next to the importing one. They import only torch
(torchvision lazily, in the converters to its boxes) and each other. `sl_detr_hf.rotated_boxes` re-exports them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "EPS",
    "check_boxes",
    "cxcywh_to_xyxy",
    "denormalize_rboxes",
    "hbox_to_rbox",
    "normalize_rboxes",
    "poly_to_rbox",
    "rbox_area",
    "rbox_corners",
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


def check_boxes(boxes: Tensor, name: str, width: int = 5, allow_negative: bool = False) -> Tensor:
    """Validate a ``(..., width)`` floating tensor: finite and, for rotated boxes (``width`` 5), sides ``>= 0``.

    Raises:
        TypeError, ValueError: naming ``name`` and what is wrong.
    """
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


def wrap_angle_range(theta: Tensor, start: float = -_PI / 2) -> Tensor:
    """Wrap angles into ``[start, start + pi)`` (radians; the default ``start = -pi/2`` is le90). Any shape."""
    wrapped = torch.remainder(theta - start, _PI) + start
    # remainder can return exactly pi for tiny negative inputs in floating point; fold it back.
    return torch.where(wrapped >= start + _PI, wrapped - _PI, wrapped)


def regularize_rboxes(boxes: Tensor, validate: bool = True) -> Tensor:
    """Bring any ``(cx, cy, w, h, theta)`` boxes to le90: ``w >= h`` and ``theta`` in ``[-pi/2, pi/2)``.

    Args:
        boxes: ``(..., 5)``.
        validate: check the input (`check_boxes`); ``False`` leaves no data-dependent control flow, for traced
            graphs (ONNX export).
    Returns:
        ``(..., 5)`` describing the same rectangles.
    """
    if validate:
        check_boxes(boxes, "boxes")
    cx, cy, w, h, theta = boxes.unbind(-1)
    swap = w < h
    w2 = torch.where(swap, h, w)
    h2 = torch.where(swap, w, h)
    theta = wrap_angle_range(torch.where(swap, theta + _PI / 2, theta))
    return torch.stack((cx, cy, w2, h2, theta), dim=-1)


def rbox_corners(boxes: Tensor) -> Tensor:
    """The 4 corners of boxes, in DOTA order, without input checks (hot paths, traced graphs).

    Args:
        boxes: ``(..., 5)`` rotated or ``(..., 4)`` ``(cx, cy, w, h)`` axis-aligned boxes.
    Returns:
        ``(..., 4, 2)``.
    """
    signs = boxes.new_tensor(_CORNER_SIGNS)  # (4, 2)
    if boxes.shape[-1] == 4:
        return boxes[..., None, :2] + signs * boxes[..., None, 2:4]
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    dx = signs[:, 0] * w.unsqueeze(-1)  # (..., 4)
    dy = signs[:, 1] * h.unsqueeze(-1)
    x = cx.unsqueeze(-1) + cos.unsqueeze(-1) * dx - sin.unsqueeze(-1) * dy
    y = cy.unsqueeze(-1) + sin.unsqueeze(-1) * dx + cos.unsqueeze(-1) * dy
    return torch.stack((x, y), dim=-1)


def rbox_to_poly(boxes: Tensor) -> Tensor:
    """Corners of rotated boxes as polygons: ``(..., 5)`` -> ``(..., 8)`` ``x1 y1 ... x4 y4`` (DOTA order)."""
    check_boxes(boxes, "boxes")
    return rbox_corners(boxes).flatten(-2)


def poly_to_rbox(polys: Tensor) -> Tensor:
    """Minimum-area rectangle of 4-point polygons, as le90 rotated boxes.

    The minimum-area rectangle has a side along an edge of the convex hull of the points; every hull edge
    is one of the 6 segments between the 4 points, so all 6 directions are tried in one vectorized pass.
    Exact for rectangles whatever their corner order or orientation; for any other quadrilateral (also
    self-intersecting or clockwise ones) it is the tightest enclosing rectangle.

    Args:
        polys: ``(..., 8)`` ``x1 y1 ... x4 y4``.
    Returns:
        ``(..., 5)`` rotated boxes.
    """
    check_boxes(polys, "polys", width=8)
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


def rbox_to_hbox(boxes: Tensor, validate: bool = True) -> Tensor:
    """Enclosing axis-aligned boxes ``(x1, y1, x2, y2)`` of rotated boxes: ``(..., 5)`` -> ``(..., 4)``.

    ``validate=False`` skips the input checks (traced graphs).
    """
    if validate:
        check_boxes(boxes, "boxes")
    cx, cy, w, h, theta = boxes.unbind(-1)
    cos, sin = torch.cos(theta).abs(), torch.sin(theta).abs()
    hw = (cos * w + sin * h) / 2
    hh = (sin * w + cos * h) / 2
    return torch.stack((cx - hw, cy - hh, cx + hw, cy + hh), dim=-1)


def hbox_to_rbox(boxes: Tensor) -> Tensor:
    """Axis-aligned boxes ``(x1, y1, x2, y2)`` ``(..., 4)`` -> le90 rotated boxes ``(..., 5)`` (angle 0, or
    ``-pi/2`` for tall boxes)."""
    check_boxes(boxes, "boxes", width=4)
    x1, y1, x2, y2 = boxes.unbind(-1)
    if bool((x2 < x1).any() or (y2 < y1).any()):
        raise ValueError("`boxes` must have x2 >= x1 and y2 >= y1")
    return regularize_rboxes(torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, torch.zeros_like(x1)), -1))


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Axis-aligned ``(cx, cy, w, h)`` -> ``(x1, y1, x2, y2)``: ``(..., 4)`` -> ``(..., 4)``."""
    center, half = boxes[..., :2], boxes[..., 2:4] / 2
    return torch.cat((center - half, center + half), dim=-1)


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
    check_boxes(boxes, "boxes")
    return boxes / _size_scale(boxes, size, "size")


def denormalize_rboxes(boxes: Tensor, size: Tensor | Sequence[float]) -> Tensor:
    """Normalized ``(cx/W, cy/H, w/W, h/H, theta)`` -> pixel boxes; ``size`` as in :func:`normalize_rboxes`."""
    check_boxes(boxes, "boxes")
    return boxes * _size_scale(boxes, size, "size")


# torchvision's rotated tv_tensors: CXCYWHR with r in degrees, turning the other way (counter-clockwise on screen):
# theta = -deg2rad(r).


def rboxes_to_torchvision(boxes: Tensor, canvas_size: tuple[int, int]):
    """Pixel rotated boxes ``(N, 5)`` -> ``torchvision.tv_tensors.BoundingBoxes`` in ``CXCYWHR``.

    Args:
        canvas_size: ``(H, W)`` of the image the boxes live on.
    """
    from torchvision import tv_tensors

    check_boxes(boxes, "boxes")
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
