"""One orientation per training batch: quarter-turn the augmented examples that would make the batch pad.

A batch pads its images to the tallest height and the widest width among them. Non-square frames (HIT-UAV's
640 x 512 drone frames) and their quarter turns (512 x 640, which `RandomRotate90` makes of a third of them) pad
to 640 x 640 together: a fifth of every pixel the backbone and the encoder compute is then padding, in 4 of 5
batches of 4 (BENCHMARKS.md, "One orientation per batch").

The augmentation already turns these examples by a random multiple of 90 degrees, so one more quarter turn
changes no image's statistics: the collator picks the orientation of one augmented example of the batch at
random and turns each augmented example of the other orientation by +-90 degrees (direction at random). Picking a
random example's orientation keeps every example's chance of ending landscape or portrait what the augmentation
gave it. Examples that were not augmented (evaluation) are never turned; square images have no orientation.

The turn is exact: `torch.rot90` of the pixels; the boxes (normalized, docs/boxes.md#normalized-boxes) turn through
torchvision's rotated `tv_tensors`, as `RandomRotate90`'s do, and come back le90.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

from ..geometry_conversions import (
    denormalize_rboxes,
    normalize_rboxes,
    rboxes_from_torchvision,
    rboxes_to_torchvision,
)

__all__ = ["TURNABLE_KEY", "one_orientation", "quarter_turn"]

TURNABLE_KEY = "turnable"
"""Key of an example (beside ``pixel_values`` / ``labels``) that marks it as augmented, free to be turned."""


def quarter_turn(pixel_values: Tensor, labels: Mapping[str, Any] | None, clockwise: bool = False
                 ) -> tuple[Tensor, dict[str, Any] | None]:
    """Turn one example by 90 degrees, its boxes with it.

    Args:
        pixel_values: `(C, H, W)`.
        labels: the example's labels (``"boxes"`` `(N, 5)` normalized le90 by the unpadded ``(H, W)``, ``"size"``,
            ``"orig_size"`` `(2,)`, other fields unchanged) or ``None``.
        clockwise: the direction on screen (``False``: counter-clockwise, `torch.rot90` with ``k=1``).
    Returns:
        `(C, W, H)` pixels and the new labels (a new dict; the input is not modified).
    """
    height, width = pixel_values.shape[-2:]
    turned = torch.rot90(pixel_values, -1 if clockwise else 1, dims=(-2, -1))
    if labels is None:
        return turned, None
    out = dict(labels)
    boxes = torch.as_tensor(labels["boxes"], dtype=torch.float32)
    if boxes.shape[-1] != 5:
        raise ValueError(f"quarter_turn needs rotated boxes (N, 5), got {tuple(boxes.shape)}")
    if len(boxes):
        tv_boxes = rboxes_to_torchvision(denormalize_rboxes(boxes, (height, width)), (height, width))
        tv_boxes = F.rotate(tv_boxes, -90.0 if clockwise else 90.0, expand=True)  # degrees counter-clockwise
        boxes = normalize_rboxes(rboxes_from_torchvision(tv_boxes).float(), (width, height))
    out["boxes"] = boxes
    for key in ("size", "orig_size"):
        if key in labels:
            out[key] = torch.as_tensor(labels[key]).flip(-1).clone()
    return turned, out


def _orientation(pixel_values: Tensor) -> int:
    """1 landscape (W > H), -1 portrait, 0 square."""
    height, width = pixel_values.shape[-2:]
    return (width > height) - (width < height)


def one_orientation(examples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The batch with its turnable examples (``examples[i][TURNABLE_KEY]`` true) in one orientation (module
    docstring): that of a turnable, non-square example chosen at random (torch's generator). Other examples, and a
    batch whose turnable examples already agree, come back as they are (the same objects)."""
    orientations = [_orientation(torch.as_tensor(e["pixel_values"])) if e.get(TURNABLE_KEY) else 0
                    for e in examples]
    candidates = [o for o in orientations if o]
    if len(set(candidates)) < 2:
        return list(examples)
    target = candidates[int(torch.randint(len(candidates), ()))]
    out: list[Mapping[str, Any]] = []
    for example, orientation in zip(examples, orientations):
        if orientation and orientation != target:
            pixels, labels = quarter_turn(torch.as_tensor(example["pixel_values"]), example.get("labels"),
                                          clockwise=bool(torch.randint(2, ())))
            example = {**example, "pixel_values": pixels, **({"labels": labels} if labels is not None else {})}
        out.append(example)
    return out
