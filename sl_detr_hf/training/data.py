"""From dataset rows (``load_dota`` / ``load_coco`` schemas) to model inputs, for `Trainer`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import torch
from torchvision.transforms.v2.functional import pil_to_tensor

from ..data.collate import SlDetrCollator
from ..data.copy_paste import CopyPaste
from ..data.images import open_image
from ..data.mosaic import Mosaic
from ..data.orientation import TURNABLE_KEY
from ..data.transforms import RotatedDetectionAugment
from ..image_processing_sl_detr import SlDetrImageProcessor

__all__ = ["DetectionTransform", "prepare_dataset"]


class DetectionTransform:
    """Batched ``Dataset.with_transform`` function: rows -> ``{"pixel_values", "labels"}`` per example.

    Each row needs ``image`` and ``objects`` with ``rbox`` (pixel, rotated datasets) or ``bbox`` (COCO
    ``xywh``, horizontal datasets), ``category`` and optionally ``difficult``. With ``mosaic > 0`` (rotated
    datasets, ``rows`` the dataset itself with undecoded images), an example is with that probability YOLO's mosaic
    of it and three random rows (:class:`~sl_detr_hf.data.mosaic.Mosaic`); with ``copy_paste > 0`` (the same
    conditions) it then gets, with that probability, the objects of a random other row pasted into free places
    (:class:`~sl_detr_hf.data.copy_paste.CopyPaste`). With ``augment``, the image
    and its rotated boxes then go through :class:`RotatedDetectionAugment` (rotated datasets only). The
    images are resized / normalized by ``image_processor`` but not padded: :class:`SlDetrCollator` pads. Examples
    of an augmentation with quarter turns carry ``"turnable": True``: the collator may turn them once more so that
    a batch has one orientation (`sl_detr_hf.data.orientation`).
    """

    def __init__(self, image_processor: SlDetrImageProcessor, box_type: str = "rotated",
                 augment: RotatedDetectionAugment | None = None, mosaic: float = 0.0,
                 rows: datasets.Dataset | None = None, copy_paste: float = 0.0) -> None:
        if box_type not in ("rotated", "horizontal"):
            raise ValueError(f"`box_type` must be 'rotated' or 'horizontal', got {box_type!r}")
        if augment is not None and box_type != "rotated":
            raise ValueError("augmentation needs rotated boxes (`box_type='rotated'`)")
        for name, prob in (("a mosaic", mosaic), ("copy-paste", copy_paste)):
            if prob and (box_type != "rotated" or rows is None):
                raise ValueError(f"{name} needs rotated boxes (`box_type='rotated'`) and the dataset's `rows`")
        self.image_processor = image_processor
        self.box_type = box_type
        self.augment = augment
        self.rows = rows if mosaic or copy_paste else None
        self.mosaic = Mosaic(self._row, len(rows), mosaic) if mosaic else None
        self.copy_paste = CopyPaste(self._row, len(rows), copy_paste) if copy_paste else None

    def _target(self, objects: Mapping[str, Any], index: int) -> tuple[str, dict[str, Any]]:
        """A row's geometry column (``"rbox"`` / ``"bbox"``) and its objects as tensors: ``boxes`` ``(N, 5)``
        (rbox) or ``(N, 4)`` (COCO bbox), ``class_labels``, ``difficult``."""
        geometry = "rbox" if self.box_type == "rotated" and "rbox" in objects else "bbox"
        if geometry not in objects:
            raise ValueError(f"row {index}: `objects` has no {geometry!r} column (columns: {sorted(objects)})")
        categories = list(objects["category"])
        difficult = list(objects.get("difficult") or [0] * len(categories))
        return geometry, {
            "boxes": torch.tensor(list(objects[geometry]), dtype=torch.float32).reshape(-1, len(geometry) + 1),
            "class_labels": torch.tensor(categories, dtype=torch.long),
            "difficult": torch.tensor(difficult, dtype=torch.long)}

    def _row(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Row ``index`` of ``rows`` as a ``(C, H, W)`` uint8 image (``C`` 1 for a grayscale image, else 3) and its
        target (a mosaic's other images, a copy-paste's source)."""
        row = self.rows[index]
        return pil_to_tensor(open_image(row["image"], gray=True)), self._target(row["objects"], index)[1]

    def _example(self, image: Any, objects: Mapping[str, Any], index: int) -> dict[str, Any]:
        # a path / {"path", "bytes"} decoded here: a broken file's error names it. A grayscale image stays one
        # channel through the augmentation (a third of the work) and becomes three for the processor
        image = open_image(image, gray=self.augment is not None or self.rows is not None)
        geometry, target = self._target(objects, index)
        if self.rows is not None:  # the mosaic and copy-paste work on uint8 tensors
            image = pil_to_tensor(image)
        if self.mosaic is not None:
            image, target = self.mosaic(image, target)
        if self.copy_paste is not None:
            image, target = self.copy_paste(image, target)
        if self.augment is not None:
            image, target = self.augment(image, target)
        if isinstance(image, torch.Tensor) and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        annotation = {"image_id": index, "annotations": [
            {geometry: box, "category_id": int(c), "difficult": int(d)}
            for box, c, d in zip(target["boxes"].tolist(), target["class_labels"].tolist(),
                                 target["difficult"].tolist())
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
                    augment: RotatedDetectionAugment | None = None, mosaic: float = 0.0,
                    copy_paste: float = 0.0) -> datasets.Dataset:
    """``dataset`` with :class:`DetectionTransform` applied on access (lazy: images decode per batch).

    The ``image`` column is handed over undecoded, so that an image that cannot be decoded raises an error naming
    its file (:class:`~sl_detr_hf.data.images.UnreadableImageError`) instead of PIL's bare ``image file is
    truncated``. ``mosaic``: the probability that an example is YOLO's mosaic of it and three other rows
    (:class:`~sl_detr_hf.data.mosaic.Mosaic`, rotated boxes; before ``augment``). ``copy_paste``: the
    probability that an example gets the objects of a random other row pasted into it
    (:class:`~sl_detr_hf.data.copy_paste.CopyPaste`, rotated boxes; after the mosaic, before ``augment``).
    """
    if isinstance(dataset.features.get("image"), datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset.with_transform(DetectionTransform(image_processor, box_type, augment, mosaic,
                                                     rows=dataset if mosaic or copy_paste else None,
                                                     copy_paste=copy_paste))


def make_collator(box_type: str = "rotated") -> SlDetrCollator:
    """The collator for :func:`prepare_dataset` outputs."""
    return SlDetrCollator(box_dim=5 if box_type == "rotated" else 4)
