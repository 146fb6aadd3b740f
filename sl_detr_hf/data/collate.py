"""The batch collator ``Trainer`` uses: pad processed images, build ``pixel_mask``, pass ``labels`` through."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..image_processing_sl_detr import pad_images
from . import orientation

__all__ = ["SlDetrCollator", "collate_fn"]


class SlDetrCollator:
    """Collate already-processed examples (e.g. from ``SlDetrImageProcessor``) into a model batch.

    Each example is a mapping with ``"pixel_values"`` ``(3, H, W)`` (tensor or array; images may differ in
    size) and optionally ``"labels"``: a mapping with ``"class_labels"`` ``(n,)`` and ``"boxes"`` ``(n, 5)`` or
    ``(n, 4)``, normalized by the image's own size before padding (docs/boxes.md#normalized-boxes), and any of
    ``"size"``
    ``(2,)`` ``(H, W)``, ``"orig_size"``, ``"image_id"``, ``"difficult"``, ... The collator does not resize or
    normalize; it only pads.

    Returns:
        ``{"pixel_values": (B, 3, H_max, W_max), "pixel_mask": (B, H_max, W_max) int64 (1 = real pixel),
        "labels": list of B dicts}`` (``labels`` only when the examples have them). Images are padded at the
        bottom and right with ``pad_value``; ``pad_to_multiple_of`` rounds ``H_max``, ``W_max`` up. In the labels,
        ``class_labels`` become int64, ``boxes`` float32, and ``size`` defaults to the unpadded ``(H, W)``.

    Examples marked ``"turnable": True`` (augmented with quarter turns, `DetectionTransform`) are first brought to
    one orientation by quarter turns (`sl_detr_hf.data.orientation.one_orientation`), so that landscape and
    portrait images do not pad each other to a square.
    """

    def __init__(self, pad_value: float = 0.0, pad_to_multiple_of: int = 1, box_dim: int = 5) -> None:
        if pad_to_multiple_of < 1:
            raise ValueError(f"`pad_to_multiple_of` must be >= 1, got {pad_to_multiple_of}")
        if box_dim not in (4, 5):
            raise ValueError(f"`box_dim` must be 4 (horizontal) or 5 (rotated), got {box_dim}")
        self.pad_value = pad_value
        self.pad_to_multiple_of = pad_to_multiple_of
        self.box_dim = box_dim

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        examples = orientation.one_orientation(examples)
        images = [torch.as_tensor(e["pixel_values"]) for e in examples]
        for i, image in enumerate(images):
            if image.dim() != 3:
                raise ValueError(f"example {i}: `pixel_values` must be (C, H, W), got {tuple(image.shape)}")
        channels = {image.shape[0] for image in images}
        if len(channels) != 1:
            raise ValueError(f"all images must have the same number of channels, got {sorted(channels)}")
        m = self.pad_to_multiple_of
        height = -(-max(image.shape[1] for image in images) // m) * m
        width = -(-max(image.shape[2] for image in images) // m) * m
        if not images[0].is_floating_point():
            images = [image.float() for image in images]
        pixel_values, pixel_mask = pad_images(images, (height, width), self.pad_value)
        batch: dict[str, Any] = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if any("labels" in e for e in examples):
            if not all("labels" in e for e in examples):
                raise ValueError("either every example or none must have `labels`")
            batch["labels"] = [_labels(e["labels"], image.shape[1:], self.box_dim)
                               for e, image in zip(examples, images)]
        return batch


def _labels(labels: Mapping[str, Any], size: torch.Size, box_dim: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in labels.items():
        if key == "class_labels":
            out[key] = torch.as_tensor(value, dtype=torch.long).reshape(-1)
        elif key == "boxes":
            out[key] = torch.as_tensor(value, dtype=torch.float32).reshape(-1, box_dim)
        elif isinstance(value, Tensor | str):
            out[key] = value
        else:
            try:
                out[key] = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError):
                out[key] = value  # e.g. a list of strings
    if "size" not in out:
        out["size"] = torch.tensor(list(size), dtype=torch.long)
    if "class_labels" in out and "boxes" in out and out["class_labels"].shape[0] != out["boxes"].shape[0]:
        raise ValueError(f"{out['class_labels'].shape[0]} class labels for {out['boxes'].shape[0]} boxes")
    return out


collate_fn = SlDetrCollator()
"""The default collator (no extra padding), usable as ``Trainer(data_collator=collate_fn)``."""
