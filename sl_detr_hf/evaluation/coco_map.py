"""COCO mAP for axis-aligned boxes through pycocotools, built in memory (no files)."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._utils import image_key, normalize_keys, warn_unmatched

logger = logging.getLogger(__name__)

__all__ = ["COCO_STAT_NAMES", "evaluate_coco"]

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
                   "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")
"""Names of ``COCOeval.stats`` in order (AR100 is recall at ``max_detections``)."""


def _np(value: Any, dtype: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _records(items: Sequence[Mapping], name: str, detections: bool) -> dict[Any, dict[str, np.ndarray]]:
    out: dict[Any, dict[str, np.ndarray]] = {}
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping) or "image_id" not in item or "boxes" not in item:
            raise ValueError(f"{where} must be a dict with 'image_id' and 'boxes' (N, 4) pixel (x1, y1, x2, y2)")
        key = image_key(item["image_id"])
        if key in out:
            raise ValueError(f"{where}: duplicate image_id {key!r}")
        boxes = _np(item["boxes"], np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}['boxes'] must be (N, 4) (x1, y1, x2, y2), got shape {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError(f"{where}['boxes'] contains NaN or inf")
        n = boxes.shape[0]
        rec = {"boxes": boxes, "labels": _np(item.get("labels", []), np.int64).reshape(-1)}
        if detections:
            rec["scores"] = _np(item.get("scores", []), np.float64).reshape(-1)
            if not np.isfinite(rec["scores"]).all():
                raise ValueError(f"{where} (image_id {key!r}) has NaN or inf scores")
        else:
            rec["iscrowd"] = _np(item.get("iscrowd", np.zeros(n)), np.int64).reshape(-1)
            if item.get("area") is not None:
                rec["area"] = _np(item["area"], np.float64).reshape(-1)
        for field, value in rec.items():
            if value.shape[0] != n:
                raise ValueError(f"{where}['{field}'] has {value.shape[0]} entries for {n} boxes")
        out[key] = rec
    return out


def _annotations(records: dict[Any, dict[str, np.ndarray]], image_index: dict[Any, int],
                 detections: bool) -> list[dict[str, Any]]:
    anns = []
    for key, rec in records.items():
        xywh = np.concatenate((rec["boxes"][:, :2], rec["boxes"][:, 2:] - rec["boxes"][:, :2]), axis=1)
        for j in range(xywh.shape[0]):
            ann = {"id": len(anns) + 1, "image_id": image_index[key], "category_id": int(rec["labels"][j]),
                   "bbox": xywh[j].tolist(), "area": float(xywh[j, 2] * xywh[j, 3])}
            if detections:
                ann["score"] = float(rec["scores"][j])
                ann["iscrowd"] = 0
            else:
                ann["iscrowd"] = int(rec["iscrowd"][j])
                if "area" in rec:
                    ann["area"] = float(rec["area"][j])
            anns.append(ann)
    return anns


def evaluate_coco(detections: Sequence[Mapping], ground_truths: Sequence[Mapping], max_detections: int = 100,
                  class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """COCO box mAP (``COCOeval``, iouType ``"bbox"``) of axis-aligned detections.

    Args:
        detections: per-image dicts ``{"image_id", "boxes" (N, 4) pixel (x1, y1, x2, y2), "scores", "labels"}``
            (the image processor's post-processing output plus the id); tensors or arrays.
        ground_truths: per-image dicts ``{"image_id", "boxes" (M, 4), "labels", "iscrowd" (optional),
            "area" (optional, defaults to the box area)}``. The evaluated images are those listed here;
            detections of other images are ignored.
        max_detections: the largest ``maxDets`` (COCO's 100).
        class_names: names of the category ids, for ``"AP_per_class"`` keys.
    Returns:
        The 12 stats of :data:`COCO_STAT_NAMES` (``-1`` where undefined, e.g. no object of that size) and
        ``"AP_per_class"``: ``{class id or name: AP@[.5:.95]}`` for the categories with ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts = _records(ground_truths, "ground_truths", detections=False)
    dets = _records(detections, "detections", detections=True)
    normalize_keys(gts, dets)
    warn_unmatched([k for k, d in dets.items() if d["boxes"].shape[0]], gts, logger)
    image_index = {key: i + 1 for i, key in enumerate(gts)}
    dets = {k: v for k, v in dets.items() if k in image_index}
    categories = sorted({int(c) for r in (*gts.values(), *dets.values()) for c in r["labels"]})
    base = {"images": [{"id": i} for i in image_index.values()], "categories": [{"id": c} for c in categories]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset = {**base, "annotations": _annotations(gts, image_index, detections=False)}
        coco_dt.dataset = {**base, "annotations": _annotations(dets, image_index, detections=True)}
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.maxDets = [1, 10, int(max_detections)]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    result: dict[str, Any] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K) area "all", largest maxDets
    per_class = {}
    gt_classes = {int(c) for r in gts.values() for c in r["labels"]}
    for k, cat in enumerate(int(c) for c in evaluator.params.catIds):
        if cat not in gt_classes:
            continue
        p = precision[:, :, k]
        name = class_names[cat] if class_names is not None and cat < len(class_names) else cat
        per_class[name] = float(p[p > -1].mean()) if np.any(p > -1) else float("nan")
    result["AP_per_class"] = per_class
    return result
