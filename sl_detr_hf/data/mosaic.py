"""YOLO's mosaic for rotated boxes: four training images in one canvas.

Four images meet at a random centre of a canvas the size of the first one. Each is scaled, aspect kept, to fit its
quarter and placed against the centre, so that no image is cut and no box crosses a border: torchvision scales the
boxes with the pixels (:func:`~sl_detr_hf.geometry_conversions.rboxes_to_torchvision`), a shift moves them. With the
centre drawn in ``center_range`` (fractions of the canvas), objects come out at about ``0.3-0.7`` of their size: the
sizes that a higher flight or a coarser ground resolution gives, four images' objects and backgrounds in one
training image, and the step's cost unchanged (the canvas keeps its size).

:class:`Mosaic` draws, for one training row, whether to build a mosaic (``prob``) and the three other rows (uniform
over the dataset, torch's generator: each data-loader worker draws its own), and :func:`mosaic` composes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from ..geometry_conversions import rboxes_from_torchvision, rboxes_to_torchvision
from .transforms import PER_OBJECT_KEYS, OtherRowsAugment, select_objects

__all__ = ["Mosaic", "mosaic"]


def mosaic(images: Sequence[Tensor], targets: Sequence[dict[str, Any]], center: tuple[float, float],
           fill: int = 0, min_side: float = 1.0) -> tuple[Tensor, dict[str, Any]]:
    """Compose four images and their rotated boxes into one canvas of the first image's size.

    Image ``k`` fills quarter ``k`` (top-left, top-right, bottom-left, bottom-right of the centre), scaled by
    ``min(quarter_h / h_k, quarter_w / w_k)`` and pushed against the centre; the rest of the canvas is ``fill``.

    Args:
        images: four ``(C, H_k, W_k)`` uint8 tensors with the same ``C``.
        targets: four dicts with ``"boxes"`` ``(N_k, 5)`` pixel rotated boxes and the per-object fields of
            ``PER_OBJECT_KEYS`` (``(N_k, ...)``); other fields are taken from the first.
        center: ``(x, y)`` of the meeting point as fractions of the canvas width and height, in ``(0, 1)``.
        min_side: objects whose scaled short side is below this (pixels) are dropped with their fields.
    Returns:
        ``(C, H_0, W_0)`` uint8 tensor and the target: ``"boxes"`` ``(sum N_k, 5)`` float32 le90, per-object
        fields concatenated, ``area`` / ``polygon`` / ``size`` as :func:`~sl_detr_hf.data.transforms.select_objects`
        sets them.
    """
    if len(images) != 4 or len(targets) != 4:
        raise ValueError(f"a mosaic takes 4 images and 4 targets, got {len(images)} and {len(targets)}")
    channels, height, width = images[0].shape
    if any(image.shape[0] != channels for image in images):
        raise ValueError(f"the images' channels differ: {[tuple(image.shape) for image in images]}")
    cx, cy = round(center[0] * width), round(center[1] * height)
    if not (0 < cx < width and 0 < cy < height):
        raise ValueError(f"center {center} leaves an empty quarter in a {height} x {width} canvas")
    canvas = images[0].new_full((channels, height, width), fill)
    quarters = ((0, 0, cx, cy), (cx, 0, width, cy), (0, cy, cx, height), (cx, cy, width, height))
    boxes = []
    for k, ((x0, y0, x1, y1), image, target) in enumerate(zip(quarters, images, targets)):
        h, w = image.shape[-2:]
        scale = min((y1 - y0) / h, (x1 - x0) / w)
        new_h, new_w = max(1, min(y1 - y0, round(h * scale))), max(1, min(x1 - x0, round(w * scale)))
        left = x1 - new_w if k in (0, 2) else x0  # against the centre
        top = y1 - new_h if k in (0, 1) else y0
        canvas[:, top:top + new_h, left:left + new_w] = F.resize(image, [new_h, new_w], antialias=True)
        tile = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 5)
        if len(tile):
            tile = rboxes_from_torchvision(F.resize(rboxes_to_torchvision(tile, (h, w)), [new_h, new_w])).float()
            tile[:, 0] += left
            tile[:, 1] += top
        boxes.append(tile)
    boxes = torch.cat(boxes)
    joined = {**targets[0], **{key: torch.cat([torch.as_tensor(target[key]) for target in targets])
                               for key in PER_OBJECT_KEYS if key in targets[0]}}
    return canvas, select_objects(joined, boxes, boxes[:, 2:4].amin(dim=1) >= min_side, (height, width))


class Mosaic(OtherRowsAugment):
    """With probability ``prob``, replace a training example by the mosaic of it and three random others.

    Args:
        load: ``index -> (image, target)``: ``(C, H, W)`` uint8 tensor and a :func:`mosaic` target of the
            dataset's row ``index``.
        num_rows: the dataset's length (the others are drawn from ``range(num_rows)``).
        prob: the probability of a mosaic, in ``[0, 1]``.
        center_range: the meeting point's ``x`` and ``y``, each uniform in this range of fractions of the canvas.
    """

    def __init__(self, load: Callable[[int], tuple[Tensor, dict[str, Any]]], num_rows: int, prob: float = 0.5,
                 center_range: tuple[float, float] = (0.3, 0.7), fill: int = 0) -> None:
        super().__init__(load, num_rows, prob, "mosaic")
        low, high = center_range
        if not 0 < low <= high < 1:
            raise ValueError(f"center_range must be (low, high) with 0 < low <= high < 1, got {center_range!r}")
        self.center_range, self.fill = (low, high), fill

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """``image`` ``(C, H, W)`` uint8 and its target -> the same or a mosaic of the same size."""
        if not self.fires():
            return image, target
        others = [self.load(int(j)) for j in torch.randint(self.num_rows, (3,))]
        low, high = self.center_range
        center = tuple((low + (high - low) * torch.rand(2)).tolist())
        return mosaic(self.common_channels([image] + [other for other, _ in others]),
                      [target] + [t for _, t in others], center, fill=self.fill)
