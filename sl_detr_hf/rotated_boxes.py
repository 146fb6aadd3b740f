"""The whole box geometry in one import (a re-export): conversions, overlaps, Gaussians, distances and NMS.

    >>> from sl_detr_hf.rotated_boxes import box_iou_rotated, kld, nms_rotated, rbox_to_poly

The code lives in the job modules, whose docstrings state the box convention (le90 ``(cx, cy, w, h, theta)``,
theta in radians in ``[-pi/2, pi/2)``, ``w >= h``, positive theta clockwise on screen) and the tensor shapes:

- `sl_detr_hf.geometry_conversions`: le90 normalization, corners / polygons, enclosing boxes, pixel <-> normalized,
  torchvision's rotated boxes;
- `sl_detr_hf.geometry_overlaps`: GIoU, exact rotated IoU, ProbIoU;
- `sl_detr_hf.geometry_gaussian`: box -> Gaussian, KLD (per pair and pairwise), its loss form, GWD;
- `sl_detr_hf.geometry_distances`: L1 coordinates, corner Hausdorff distance;
- `sl_detr_hf.geometry_nms`: rotated NMS, class-wise.

The package's own modules import from those; this module stays for code written against it.
"""

from __future__ import annotations

from .geometry_conversions import (
    EPS,
    check_boxes,
    cxcywh_to_xyxy,
    denormalize_rboxes,
    hbox_to_rbox,
    normalize_rboxes,
    poly_to_rbox,
    rbox_area,
    rbox_corners,
    rbox_to_hbox,
    rbox_to_poly,
    rboxes_from_torchvision,
    rboxes_to_torchvision,
    regularize_rboxes,
    wrap_angle_range,
)
from .geometry_distances import l1_coords, pairwise_hausdorff
from .geometry_gaussian import (
    gaussian_covariance,
    gwd,
    kld,
    kld_to_loss,
    pairwise_kld,
    rbox_to_gaussian,
    rotate_diagonal,
)
from .geometry_nms import batched_nms_rotated, nms_rotated
from .geometry_overlaps import aligned_iou_rotated, box_iou_rotated, generalized_iou, overlapping_hbox_pairs, prob_iou

__all__ = [
    "EPS",
    "aligned_iou_rotated",
    "batched_nms_rotated",
    "box_iou_rotated",
    "check_boxes",
    "cxcywh_to_xyxy",
    "denormalize_rboxes",
    "gaussian_covariance",
    "generalized_iou",
    "gwd",
    "hbox_to_rbox",
    "kld",
    "kld_to_loss",
    "l1_coords",
    "nms_rotated",
    "normalize_rboxes",
    "overlapping_hbox_pairs",
    "pairwise_hausdorff",
    "pairwise_kld",
    "poly_to_rbox",
    "prob_iou",
    "rbox_area",
    "rbox_corners",
    "rbox_to_gaussian",
    "rbox_to_hbox",
    "rbox_to_poly",
    "rboxes_from_torchvision",
    "rboxes_to_torchvision",
    "regularize_rboxes",
    "rotate_diagonal",
    "wrap_angle_range",
]
