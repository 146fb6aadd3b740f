"""COCO-format reader (images folder + instances JSON) -> ``datasets.Dataset``.

For the horizontal box type (the paper's COCO experiments); with ``rotated=...`` it also fills pixel rotated
boxes from COCO polygons (their minimum-area rectangle) or from an extra annotation field.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import shapely
import torch

from ..geometry_conversions import poly_to_rbox, regularize_rboxes

logger = logging.getLogger(__name__)

__all__ = ["CocoLoadSummary", "coco_features", "load_coco"]


@dataclass
class CocoLoadSummary:
    """What :func:`load_coco` read; ``problems`` are ``"file: annotation id N: field: reason"`` strings."""

    num_images: int = 0
    num_objects: int = 0
    problems: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> Counter:
        return Counter(p.rsplit(": ", 1)[-1] for p in self.problems)


def coco_features(class_names: list[str], rotated: bool) -> datasets.Features:
    """Schema of :func:`load_coco` datasets: one row per image, ``objects`` a dict of per-object lists."""
    objects = {
        "id": datasets.List(datasets.Value("int64")),
        "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "category": datasets.List(datasets.ClassLabel(names=class_names)),
        "category_id": datasets.List(datasets.Value("int64")),
        "area": datasets.List(datasets.Value("float32")),
        "iscrowd": datasets.List(datasets.Value("int8")),
    }
    if rotated:
        objects["rbox"] = datasets.List(datasets.List(datasets.Value("float32"), length=5))
    return datasets.Features({
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "file_name": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "objects": objects,
    })


def load_coco(
    images_dir: str | Path,
    annotation_json: str | Path,
    rotated: str | None = None,
    skip_crowd: bool = False,
    return_summary: bool = False,
) -> datasets.Dataset | tuple[datasets.Dataset, CocoLoadSummary]:
    """Read a COCO detection split.

    Schema (:func:`coco_features`): ``image`` (path, decoded lazily), ``image_id`` (COCO id), ``file_name``,
    ``width``, ``height``, ``objects``: ``id``, ``bbox`` ``(n, 4)`` pixel ``x, y, w, h`` as in COCO,
    ``category`` (``ClassLabel``, contiguous index of the categories sorted by id), ``category_id`` (the COCO
    id, for pycocotools), ``area``, ``iscrowd``, and ``rbox`` ``(n, 5)`` pixel le90 when ``rotated`` is set.

    Args:
        rotated: ``None`` (horizontal only); ``"segmentation"``: the minimum-area rectangle of each object's
            polygons; any other name: that annotation field, holding ``(cx, cy, w, h, theta)`` (radians) or an
            8-number polygon. Annotations without a usable rotated box are skipped and reported.
        skip_crowd: drop ``iscrowd`` annotations.
        return_summary: also return the :class:`CocoLoadSummary`.

    Annotations with a bad ``bbox`` (not 4 finite numbers, ``w`` or ``h <= 0``), an unknown ``category_id`` or
    ``image_id`` are skipped with a warning naming the file, annotation id and field.
    """
    images_dir, annotation_json = Path(images_dir), Path(annotation_json)
    data = json.loads(annotation_json.read_text(encoding="utf-8"))
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{annotation_json}: not a COCO detection file (no {key!r} field)")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(categories)}
    summary = CocoLoadSummary()

    def report(ann: dict, key: str, reason: str) -> None:
        problem = f"{annotation_json}: annotation id {ann.get('id')}: {key}: {reason}"
        logger.warning("%s (skipped)", problem)
        summary.problems.append(problem)

    per_image: dict[int, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        bbox = ann.get("bbox")
        if ann.get("image_id") not in per_image:
            report(ann, "image_id", "unknown image")
        elif ann.get("category_id") not in cat_index:
            report(ann, "category_id", "unknown category")
        elif not _valid_bbox(bbox):
            report(ann, "bbox", "bad box")
        elif skip_crowd and ann.get("iscrowd", 0):
            continue
        else:
            rbox = None
            if rotated is not None:
                rbox = _rotated_box(ann, rotated)
                if rbox is None:
                    report(ann, rotated, "no usable rotated box")
                    continue
            per_image[ann["image_id"]].append({**ann, "_rbox": rbox})

    columns: dict[str, list] = {k: [] for k in ("image", "image_id", "file_name", "width", "height", "objects")}
    for img in data["images"]:
        path = images_dir / img["file_name"]
        if not path.is_file():
            logger.warning("%s: image id %s: file_name: missing file %s (skipped)", annotation_json, img["id"], path)
            summary.missing_images.append(str(path))
            continue
        anns = per_image[img["id"]]
        objects = {
            "id": [int(a.get("id", -1)) for a in anns],
            "bbox": [[float(v) for v in a["bbox"]] for a in anns],
            "category": [cat_index[a["category_id"]] for a in anns],
            "category_id": [int(a["category_id"]) for a in anns],
            "area": [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns],
            "iscrowd": [int(a.get("iscrowd", 0)) for a in anns],
        }
        if rotated is not None:
            objects["rbox"] = [a["_rbox"] for a in anns]
        columns["image"].append(str(path))
        columns["image_id"].append(int(img["id"]))
        columns["file_name"].append(img["file_name"])
        columns["width"].append(int(img["width"]))
        columns["height"].append(int(img["height"]))
        columns["objects"].append(objects)
        summary.num_images += 1
        summary.num_objects += len(anns)
    names = [str(c.get("name", c["id"])) for c in categories]
    dataset = datasets.Dataset.from_dict(columns, features=coco_features(names, rotated is not None))
    return (dataset, summary) if return_summary else dataset


def _valid_bbox(bbox) -> bool:
    if not isinstance(bbox, list | tuple) or len(bbox) != 4:
        return False
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in bbox):
        return False
    return bbox[2] > 0 and bbox[3] > 0


def _rotated_box(ann: dict, source: str) -> list[float] | None:
    """Pixel le90 rotated box of one annotation, or ``None``."""
    value = ann.get(source)
    if source == "segmentation":
        if not isinstance(value, list) or not value or not all(isinstance(p, list) for p in value):
            return None  # RLE (crowd) masks have no polygon
        points = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in value if len(p) >= 6 and len(p) % 2 == 0]
        if not points:
            return None
        hull = shapely.minimum_rotated_rectangle(shapely.multipoints(np.concatenate(points)))
        if hull.geom_type != "Polygon":
            return None
        quad = torch.tensor(np.asarray(hull.exterior.coords[:4]).reshape(8))
        box = poly_to_rbox(quad)
    else:
        try:
            numbers = torch.tensor([float(v) for v in value], dtype=torch.float64)
        except (TypeError, ValueError):
            return None
        if not bool(torch.isfinite(numbers).all()) or numbers.numel() not in (5, 8):
            return None
        if numbers.numel() == 5:
            if bool((numbers[2:4] <= 0).any()):
                return None
            box = regularize_rboxes(numbers)
        else:
            box = poly_to_rbox(numbers)
    if float(box[3]) <= 0:
        return None
    return box.float().tolist()
