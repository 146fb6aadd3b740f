"""From dataset rows (``load_dota`` / ``load_coco`` schemas) to model inputs, for `Trainer`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import torch

from ..data.collate import SlDetrCollator
from ..data.images import open_image
from ..data.orientation import TURNABLE_KEY
from ..data.transforms import RotatedDetectionAugment
from ..image_processing_sl_detr import SlDetrImageProcessor

__all__ = ["DetectionTransform", "prepare_dataset"]


class DetectionTransform:
    """Batched ``Dataset.with_transform`` function: rows -> ``{"pixel_values", "labels"}`` per example.

    Each row needs ``image`` and ``objects`` with ``rbox`` (pixel, rotated datasets) or ``bbox`` (COCO
    ``xywh``, horizontal datasets), ``category`` and optionally ``difficult``. With ``augment``, the image
    and its rotated boxes go through :class:`RotatedDetectionAugment` first (rotated datasets only). The
    images are resized / normalized by ``image_processor`` but not padded: :class:`SlDetrCollator` pads. Examples
    of an augmentation with quarter turns carry ``"turnable": True``: the collator may turn them once more so that
    a batch has one orientation (`sl_detr_hf.data.orientation`).
    """

    def __init__(self, image_processor: SlDetrImageProcessor, box_type: str = "rotated",
                 augment: RotatedDetectionAugment | None = None) -> None:
        if box_type not in ("rotated", "horizontal"):
            raise ValueError(f"`box_type` must be 'rotated' or 'horizontal', got {box_type!r}")
        if augment is not None and box_type != "rotated":
            raise ValueError("augmentation needs rotated boxes (`box_type='rotated'`)")
        self.image_processor = image_processor
        self.box_type = box_type
        self.augment = augment

    def _example(self, image: Any, objects: Mapping[str, Any], index: int) -> dict[str, Any]:
        image = open_image(image)  # a path / {"path", "bytes"} decoded here: a broken file's error names it
        categories = list(objects["category"])
        difficult = list(objects.get("difficult") or [0] * len(categories))
        geometry = "rbox" if self.box_type == "rotated" and "rbox" in objects else "bbox"
        if geometry not in objects:
            raise ValueError(f"row {index}: `objects` has no {geometry!r} column (columns: {sorted(objects)})")
        boxes = list(objects[geometry])
        if self.augment is not None:
            target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5),
                      "class_labels": torch.tensor(categories, dtype=torch.long),
                      "difficult": torch.tensor(difficult, dtype=torch.long)}
            image, target = self.augment(image, target)
            boxes, categories = target["boxes"].tolist(), target["class_labels"].tolist()
            difficult = target["difficult"].tolist()
        annotation = {"image_id": index, "annotations": [
            {geometry: box, "category_id": int(c), "difficult": int(d)}
            for box, c, d in zip(boxes, categories, difficult)
        ]}
        out = self.image_processor(images=image, annotations=annotation, return_tensors="pt", do_pad=False)
        return {"pixel_values": out["pixel_values"][0], "labels": out["labels"][0]}

    @property
    def turnable(self) -> bool:
        """Whether the collator may turn this transform's examples once more (its augmentation turns them by
        quarter turns already): `sl_detr_hf.data.orientation`."""
        return self.augment is not None and getattr(self.augment, "turns_quarter", False)

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        images, objects = batch["image"], batch["objects"]
        ids = batch.get("image_id", list(range(len(images))))
        examples = [self._example(im, obj, i) for im, obj, i in zip(images, objects, range(len(images)))]
        for example, image_id in zip(examples, ids):
            example["labels"]["image_id"] = image_id
        columns = {"pixel_values": [e["pixel_values"] for e in examples], "labels": [e["labels"] for e in examples]}
        if self.turnable:
            columns[TURNABLE_KEY] = [True] * len(examples)
        return columns


def prepare_dataset(dataset: datasets.Dataset, image_processor: SlDetrImageProcessor, box_type: str = "rotated",
                    augment: RotatedDetectionAugment | None = None) -> datasets.Dataset:
    """``dataset`` with :class:`DetectionTransform` applied on access (lazy: images decode per batch).

    The ``image`` column is handed over undecoded, so that an image that cannot be decoded raises an error naming
    its file (:class:`~sl_detr_hf.data.images.UnreadableImageError`) instead of PIL's bare ``image file is
    truncated``.
    """
    if isinstance(dataset.features.get("image"), datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset.with_transform(DetectionTransform(image_processor, box_type, augment))


def make_collator(box_type: str = "rotated") -> SlDetrCollator:
    """The collator for :func:`prepare_dataset` outputs."""
    return SlDetrCollator(box_dim=5 if box_type == "rotated" else 4)
