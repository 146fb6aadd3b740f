"""Copy-paste for rotated boxes: another training image's objects pasted into free places of this one.

DETR's losses are one-to-one, so a training image teaches as many positives as it has objects; on a set with ten
objects a frame and a budget of a few epochs (15 CPU minutes) that number is what the model is short of. Pasting the
objects of another image (Ghiasi et al., "Simple Copy-Paste", CVPR 2021; YOLO's ``copy_paste``) gives each step
more of them, rare classes included, at no cost to the step (the canvas keeps its size). Without masks, each object
travels with the axis-aligned rectangle around its rotated box plus a ``margin`` of its own background; the patch's
level is shifted so that its outer ring has the mean of the ring it covers (per channel), so a warm object on a cold
road stays as much warmer than the new ground as it was than the old one (thermal frames), and it is blended in
with a weight of 1 on the box falling linearly to 0 at ``margin`` pixels outside it, so that no rectangle edge shows
(a shortcut the detector would otherwise learn). A patch goes where it lies inside the image and overlaps no
rectangle of an object already there or pasted before it (``tries`` random places each, tested in one batch);
objects that find no place, or whose rectangle the source image cuts, are not pasted.

:class:`CopyPaste` draws, for one training row, whether to paste (``prob``) and the source row (uniform over the
dataset, torch's generator: each data-loader worker draws its own); :func:`copy_paste` pastes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from ..geometry_conversions import rbox_to_hbox
from .transforms import PER_OBJECT_KEYS, OtherRowsAugment, select_objects

__all__ = ["CopyPaste", "copy_paste", "object_rectangles"]


def object_rectangles(boxes: Tensor, margin: float) -> Tensor:
    """Integer pixel rectangles ``(N, 4)`` ``x0, y0, x1, y1`` (``x1`` / ``y1`` exclusive) around rotated boxes
    ``(N, 5)`` ``(cx, cy, w, h, theta)``, each side widened by ``margin`` pixels."""
    enclosing = rbox_to_hbox(boxes.float(), validate=False)  # (N, 4) x1, y1, x2, y2
    return torch.cat([torch.floor(enclosing[:, :2] - margin), torch.ceil(enclosing[:, 2:] + margin)], dim=1).long()


def _box_weight(box: Tensor, x0: int, y0: int, width: int, height: int, margin: float) -> Tensor:
    """``(height, width)`` blending weight of the pixels of a rectangle at ``(x0, y0)``: 1 inside the rotated box
    ``(5,)`` ``(cx, cy, w, h, theta)``, falling linearly with the distance outside it to 0 at ``margin`` pixels."""
    cx, cy, w, h, theta = box.tolist()
    xs = torch.arange(width, dtype=torch.float32) + (x0 + 0.5 - cx)  # pixel centres about the box centre
    ys = torch.arange(height, dtype=torch.float32) + (y0 + 0.5 - cy)
    cos, sin = math.cos(theta), math.sin(theta)
    along = (xs[None] * cos + ys[:, None] * sin).abs() - w / 2
    across = (ys[:, None] * cos - xs[None] * sin).abs() - h / 2
    distance = torch.hypot(along.clamp_min(0), across.clamp_min(0))
    if margin <= 0:
        return (distance == 0).float()
    return (1 - distance / margin).clamp(0, 1)


def _ring_mean(patch: Tensor) -> Tensor:
    """Per-channel mean of the outer one-pixel ring of ``(C, h, w)``, ``(C, 1, 1)`` float."""
    patch = patch.float()
    ring = torch.cat([patch[:, 0], patch[:, -1], patch[:, 1:-1, 0], patch[:, 1:-1, -1]], dim=1)
    return ring.mean(dim=1).view(-1, 1, 1)


def copy_paste(image: Tensor, target: dict[str, Any], source: Tensor, source_target: dict[str, Any],
               margin: float = 2.0, tries: int = 16, generator: torch.Generator | None = None,
               ) -> tuple[Tensor, dict[str, Any]]:
    """Paste the objects of ``source`` into free places of ``image`` (module docstring).

    Args:
        image, source: ``(C, H, W)`` and ``(C, H_s, W_s)`` uint8 tensors with the same ``C``.
        target, source_target: dicts with ``"boxes"`` ``(N, 5)`` pixel rotated boxes and the per-object fields of
            ``PER_OBJECT_KEYS``; ``source_target`` needs every such field ``target`` has.
        margin: pixels of the source's background around each object's rectangle.
        tries: random places tried per object.
    Returns:
        the new ``(C, H, W)`` uint8 image and the target with the pasted objects appended (``area`` / ``polygon``
        / ``size`` as :func:`~sl_detr_hf.data.transforms.select_objects` sets them; ``image`` is not modified).
    """
    if image.shape[0] != source.shape[0]:
        raise ValueError(f"the images' channels differ: {tuple(image.shape)} and {tuple(source.shape)}")
    missing = [key for key in PER_OBJECT_KEYS if key in target and key not in source_target]
    if missing:
        raise ValueError(f"the source target lacks the per-object fields {missing}")
    height, width = image.shape[-2:]
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 5)
    source_boxes = torch.as_tensor(source_target["boxes"], dtype=torch.float32).reshape(-1, 5)
    rects = object_rectangles(source_boxes, margin)
    sizes = rects[:, 2:] - rects[:, :2]  # (N_s, 2) w, h
    whole = ((rects[:, :2] >= 0).all(dim=1) & (rects[:, 2] <= source.shape[-1]) & (rects[:, 3] <= source.shape[-2])
             & (sizes[:, 0] <= width) & (sizes[:, 1] <= height) & (sizes >= 3).all(dim=1))
    occupied = object_rectangles(boxes, margin) if len(boxes) else rects.new_zeros((0, 4))
    out = image.clone()
    pasted, shifts = [], []
    for k in whole.nonzero().flatten().tolist():  # a few objects per image; each place test is one batch
        w, h = sizes[k].tolist()
        corner = torch.stack([torch.randint(0, width - w + 1, (tries,), generator=generator),
                              torch.randint(0, height - h + 1, (tries,), generator=generator)], dim=1)
        candidates = torch.cat([corner, corner + sizes[k]], dim=1)
        free = (box_iou(candidates.float(), occupied.float()) == 0).all(dim=1).nonzero().flatten()
        if not len(free):
            continue
        x0, y0, x1, y1 = candidates[free[0]].tolist()
        sx0, sy0, sx1, sy1 = rects[k].tolist()
        patch, ground = source[:, sy0:sy1, sx0:sx1].float(), out[:, y0:y1, x0:x1].float()
        patch = patch + (_ring_mean(ground) - _ring_mean(patch))
        weight = _box_weight(source_boxes[k], sx0, sy0, x1 - x0, y1 - y0, margin)
        out[:, y0:y1, x0:x1] = (weight * patch + (1 - weight) * ground).round().clamp(0, 255).to(out.dtype)
        occupied = torch.cat([occupied, candidates[free[0]][None]])
        pasted.append(k)
        shifts.append((x0 - sx0, y0 - sy0))
    if not pasted:
        return image, target
    index = torch.tensor(pasted)
    new_boxes = source_boxes[index].clone()
    new_boxes[:, :2] += torch.tensor(shifts, dtype=torch.float32)
    joined = {**target, **{key: torch.cat([torch.as_tensor(target[key]),
                                           torch.as_tensor(source_target[key])[index]])
                           for key in PER_OBJECT_KEYS if key in target}}
    all_boxes = torch.cat([boxes, new_boxes])
    return out, select_objects(joined, all_boxes, torch.ones(len(all_boxes), dtype=torch.bool), (height, width))


class CopyPaste(OtherRowsAugment):
    """With probability ``prob``, paste the objects of a random other training row into a training example.

    ``load`` (rows with :func:`copy_paste` targets), ``num_rows`` and ``prob`` (of a paste): as in
    :class:`~sl_detr_hf.data.transforms.OtherRowsAugment`; ``margin``, ``tries``: as in :func:`copy_paste`.
    """

    def __init__(self, load: Callable[[int], tuple[Tensor, dict[str, Any]]], num_rows: int, prob: float = 0.5,
                 margin: float = 2.0, tries: int = 16) -> None:
        super().__init__(load, num_rows, prob, "copy-paste")
        if margin < 0 or tries < 1:
            raise ValueError(f"margin must be >= 0 and tries >= 1, got {margin!r} and {tries!r}")
        self.margin, self.tries = margin, tries

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """``image`` ``(C, H, W)`` uint8 and its target -> the same, or with another row's objects pasted."""
        if not self.fires():
            return image, target
        source, source_target = self.load(int(torch.randint(self.num_rows, ())))
        image, source = self.common_channels([image, source])
        return copy_paste(image, target, source, source_target, self.margin, self.tries)

