"""Training augmentation for oriented boxes through torchvision's rotated ``tv_tensors``.

Boxes enter torchvision once (:func:`~sl_detr_hf.geometry_conversions.rboxes_to_torchvision`) and come back once
(:func:`~sl_detr_hf.geometry_conversions.rboxes_from_torchvision`); torchvision does all the geometry.

Rule for objects near the border (docs/boxes.md#augmentation-border-rule): boxes are never
clipped (torchvision's clamping is off); an object is kept when its box centre stays inside the image and at
least ``min_visibility`` of its box area lies inside the image (exact rotated intersection); otherwise it is
dropped together with its per-object fields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ..geometry_conversions import rbox_area, rbox_to_poly, rboxes_from_torchvision, rboxes_to_torchvision
from ..geometry_overlaps import box_iou_rotated
from ..image_processing_sl_detr import to_rgb_image

__all__ = ["PER_OBJECT_KEYS", "OtherRowsAugment", "RandomRotate90", "RotatedDetectionAugment", "select_objects",
           "visible_fraction"]

PER_OBJECT_KEYS = ("class_labels", "labels", "category", "difficult", "iscrowd")
"""Target fields filtered together with ``boxes`` (``area`` and ``polygon`` are recomputed when present)."""


class RandomRotate90(v2.Transform):
    """Rotate by a random multiple of 90 degrees (the canvas turns with it, nothing is cut), with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if torch.rand(()) >= self.p:
            return {"angle": 0}
        return {"angle": 90 * int(torch.randint(1, 4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["angle"] == 0:
            return inpt
        out = self._call_kernel(F.rotate, inpt, angle=params["angle"], expand=True)
        if isinstance(out, tv_tensors.BoundingBoxes) and params["angle"] % 180:
            # torchvision leaves the canvas of an empty box set unturned; a later step that reads sizes would fail
            height, width = inpt.canvas_size
            out = tv_tensors.wrap(out, like=out, canvas_size=(width, height))
        return out


def visible_fraction(boxes: Tensor, height: int, width: int) -> Tensor:
    """Fraction of each rotated box ``(N, 5)`` inside the image ``[0, W] x [0, H]``, ``(N,)``.

    Boxes whose four corners lie in the image are 1 without further work (the common case after flips and
    90-degree turns); only the others go through the exact rotated intersection with the image frame.
    """
    fraction = boxes.new_ones(boxes.shape[0])
    corners = rbox_to_poly(boxes).reshape(-1, 4, 2)
    within = ((corners >= 0) & (corners <= corners.new_tensor([width, height]))).all(dim=(1, 2))
    cut = (~within).nonzero().squeeze(1)  # only boxes that cross the border need the polygon intersection
    if cut.numel():
        frame = boxes.new_tensor([[width / 2, height / 2, width, height, 0.0]])
        iou = box_iou_rotated(boxes[cut], frame)[:, 0]
        area, frame_area = rbox_area(boxes[cut]), float(width * height)
        inter = iou * (area + frame_area) / (1 + iou)  # from IoU = I / (A + B - I)
        fraction[cut] = inter / area.clamp_min(1e-6)
    return fraction


class RotatedDetectionAugment:
    """``(image, target) -> (image, target)`` augmentation for pixel rotated boxes (detr-style transform).

    Steps, each optional: horizontal flip, vertical flip, rotation by a multiple of 90 degrees, rotation by a
    random angle in ``[-rotate_degrees, rotate_degrees]`` (canvas kept, corners filled with ``fill``), a zoom by a
    random factor in ``scale_range`` about the image centre (canvas kept: zooming out leaves a ``fill`` border,
    zooming in crops; YOLO's ``scale`` augmentation, for objects of the sizes other flying heights give), random
    shortest-side resize to one of ``scales`` (longest side ``<= max_size``), colour jitter. Then the border
    rule of this module drops objects.

    Args:
        image: PIL image or ``(C, H, W)`` uint8 tensor, ``C`` 3 or 1 (a grayscale image stays one channel: the
            colour jitter's saturation and hue leave it as it is). target: ``"boxes"`` ``(N, 5)`` pixel rotated boxes,
            the per-object fields of :data:`PER_OBJECT_KEYS` (``(N, ...)``), optional ``"area"``, ``"polygon"``
            (recomputed), ``"size"`` (set to the new ``(H, W)``); other fields pass through.
    Returns:
        ``(C, H', W')`` uint8 tensor and the new target (``boxes`` float32 le90).
    """

    def __init__(
        self,
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.5,
        rot90_prob: float = 0.5,
        rotate_prob: float = 0.0,
        rotate_degrees: float = 180.0,
        scale_range: tuple[float, float] | None = None,
        scales: Sequence[int] | None = None,
        max_size: int | None = None,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        hue: float = 0.0,
        min_visibility: float = 0.5,
        fill: int = 0,
    ) -> None:
        steps: list[v2.Transform] = []
        if hflip_prob > 0:
            steps.append(v2.RandomHorizontalFlip(hflip_prob))
        if vflip_prob > 0:
            steps.append(v2.RandomVerticalFlip(vflip_prob))
        if rot90_prob > 0:
            steps.append(RandomRotate90(rot90_prob))
        if rotate_prob > 0:
            steps.append(v2.RandomApply([v2.RandomRotation(rotate_degrees, fill=fill)], p=rotate_prob))
        if scale_range is not None:
            low, high = scale_range
            if not 0 < low <= high:
                raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range!r}")
            # bilinear, as YOLO's warpAffine: torchvision's default (nearest) turns a zoomed small object into stairs
            steps.append(v2.RandomAffine(degrees=0, scale=(low, high), fill=fill,
                                         interpolation=v2.InterpolationMode.BILINEAR))
        if scales:
            steps.append(v2.RandomShortestSize(list(scales), max_size=max_size))
        if brightness or contrast or saturation or hue:
            steps.append(v2.ColorJitter(brightness, contrast, saturation, hue))
        self.transform = v2.Compose(steps) if steps else v2.Identity()
        self.min_visibility = min_visibility
        self.turns_quarter = rot90_prob > 0  # its outputs may be turned once more (`sl_detr_hf.data.orientation`)

    def __call__(self, image: Image.Image | Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(image if image.mode == "L" else to_rgb_image(image))
        height, width = image.shape[-2:]
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 5)
        tv_boxes = rboxes_to_torchvision(boxes, (height, width))
        tv_boxes.clamping_mode = None  # never clip: the border rule below decides
        out_image, out_boxes = self.transform(tv_tensors.Image(image), tv_boxes)
        new_h, new_w = out_image.shape[-2:]
        boxes = rboxes_from_torchvision(out_boxes).float()
        inside = ((boxes[:, 0] >= 0) & (boxes[:, 0] <= new_w) & (boxes[:, 1] >= 0) & (boxes[:, 1] <= new_h)
                  & (visible_fraction(boxes, new_h, new_w) >= self.min_visibility))
        return out_image.as_subclass(Tensor), select_objects(target, boxes, inside, (new_h, new_w))


def select_objects(target: dict[str, Any], boxes: Tensor, keep: Tensor, size: tuple[int, int]) -> dict[str, Any]:
    """``target`` on a new image: ``boxes[keep]`` (``(N, 5)`` pixel rotated boxes, one per object of ``target``)
    and the kept objects of its :data:`PER_OBJECT_KEYS` fields; ``area`` and ``polygon`` recomputed and ``size`` set
    to ``size`` ``(H, W)`` where ``target`` has them; other fields pass through."""
    result = dict(target)
    result["boxes"] = boxes[keep]
    for key in PER_OBJECT_KEYS:
        if key in target:
            result[key] = torch.as_tensor(target[key])[keep]
    if "area" in target:
        result["area"] = rbox_area(result["boxes"])
    if "polygon" in target:
        result["polygon"] = rbox_to_poly(result["boxes"])
    if "size" in target:
        result["size"] = torch.tensor(size)
    return result


class OtherRowsAugment:
    """Base of the augmentations that bring in other training rows (`Mosaic`, `CopyPaste`): applied to an example
    with probability ``prob`` (:meth:`fires`, torch's generator: each data-loader worker draws its own), the rows
    read by ``load(index) -> ((C, H, W) uint8 tensor, target)`` from ``range(num_rows)``.

    ``name`` names the augmentation in the errors.
    """

    def __init__(self, load: Callable[[int], tuple[Tensor, dict[str, Any]]], num_rows: int, prob: float,
                 name: str) -> None:
        if not 0 <= prob <= 1:
            raise ValueError(f"the {name} probability must be in [0, 1], got {prob!r}")
        if num_rows < 1:
            raise ValueError(f"{name} needs a dataset with at least one row")
        self.load, self.num_rows, self.prob = load, num_rows, prob

    @staticmethod
    def common_channels(images: Sequence[Tensor]) -> list[Tensor]:
        """``(C, H, W)`` images with one channel count: single-channel images become three equal channels where
        another image has three (a dataset of grayscale and colour images); otherwise unchanged."""
        if len({image.shape[0] for image in images}) < 2:
            return list(images)
        return [image.expand(3, -1, -1) if image.shape[0] == 1 else image for image in images]

    def fires(self) -> bool:
        """Whether to apply it to the next example (no draw when ``prob`` is 0 or 1)."""
        return self.prob > 0 and (self.prob >= 1 or torch.rand(()).item() < self.prob)
