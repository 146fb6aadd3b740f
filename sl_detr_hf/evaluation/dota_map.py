"""DOTA mAP (official devkit rules, exact rotated IoU), COCO-rule mAP50:95 / mAP75 / AP by size, Task1 files.

Rules of ``DOTA_devkit/dota_evaluation_task1.py`` (``voc_eval``):

- per class, the detections of all images are ranked by decreasing score (ties keep input order);
- a detection is compared with every ground truth of its class in its image; ``ovmax`` is the largest IoU
  and ``jmax`` that ground truth (difficult or already matched ones included);
- ``ovmax > iou_threshold`` (strictly): if ``jmax`` is difficult (and ``ignore_difficult``) the detection is
  neither TP nor FP; else it is TP if ``jmax`` is still unmatched (which marks it), FP otherwise;
  ``ovmax <= iou_threshold`` or no ground truth: FP;
- recall = TP / (number of non-difficult ground truths), precision = TP / (TP + FP) over the ranking;
  AP is VOC07 11-point (``use_07_metric``, the devkit's ``np.arange(0, 1.1, 0.1)`` recall points) or the
  area under the monotone precision envelope.

Ground truths are rotated boxes (a DOTA polygon becomes its minimum-area rectangle, as in mmrotate), so for
non-rectangular annotated quadrilaterals IoU differs slightly from the devkit's polygon IoU.
Classes without non-difficult ground truth have no AP (``nan`` in ``"AP"``) and are left out of ``"mAP"``.

The same pass also scores the COCO way (``coco_metrics``, :mod:`~sl_detr_hf.evaluation.coco_rules` for the
rules): 101-point AP at IoU ``>= 0.50, 0.55, ..., 0.95`` (mAP75, mAP50:95) and AP50:95 by object size
(small / medium / large by box area ``w * h``, COCO's ``32^2`` / ``96^2``). The exact IoU of each same-class
pair of an image is computed once and serves both rules; the greedy matching of the 10 thresholds x 4 sizes
is vectorized over them. ``"mAP"`` stays the DOTA figure (VOC07, IoU ``> iou_threshold``); the COCO-rule
``"mAP_by_iou"[0.5]`` is the figure Ultralytics / COCO call mAP50 (they differ: 101 points, ``>=``, a taken
ground truth lets a detection fall back to the next one).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..geometry_conversions import poly_to_rbox, rbox_to_hbox, rbox_to_poly, regularize_rboxes
from ..geometry_overlaps import aligned_iou_rotated
from ._utils import image_key, normalize_keys, warn_unmatched
from .coco_rules import COCO_IOU_THRESHOLDS, SIZE_RANGES, coco_rule_ap

logger = logging.getLogger(__name__)

__all__ = ["evaluate_dota", "task1_file_names", "voc_ap", "write_task1_submission"]

_PAIR_CHUNK = 1 << 20  # pairs whose boxes are gathered at once


def _array(value: Any, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu().to(dtype)
    return torch.as_tensor(np.asarray(value), dtype=dtype)


def _rboxes(item: Mapping, where: str) -> Tensor:
    """``(N, 5)`` float64 pixel rotated boxes of a per-image dict: ``rboxes``, else ``boxes`` (N, 5), else polygons."""
    if item.get("rboxes") is not None:
        boxes = _array(item["rboxes"], torch.float64).reshape(-1, 5)
    elif item.get("boxes") is not None and np.shape(item["boxes"])[-1:] == (5,):
        boxes = _array(item["boxes"], torch.float64).reshape(-1, 5)
    elif item.get("polygons") is not None:
        return poly_to_rbox(_array(item["polygons"], torch.float64).reshape(-1, 8))
    elif item.get("boxes") is not None and np.size(item["boxes"]) == 0:
        boxes = torch.zeros(0, 5, dtype=torch.float64)
    else:
        raise ValueError(f"{where} needs pixel rotated boxes: 'rboxes' or 'boxes' of shape (N, 5), or "
                         f"'polygons' (N, 8); got keys {sorted(item)} (axis-aligned 'boxes' cannot be evaluated here)")
    return regularize_rboxes(boxes)


def _per_image(items: Sequence[Mapping], name: str, detections: bool) -> dict[Any, dict[str, Tensor]]:
    out: dict[Any, dict[str, Tensor]] = {}
    for i, item in enumerate(items):
        where = f"{name}[{i}]"
        if not isinstance(item, Mapping) or "image_id" not in item:
            raise ValueError(f"{where} must be a dict with 'image_id'")
        key = image_key(item["image_id"])
        if key in out:
            raise ValueError(f"{where}: duplicate image_id {key!r}")
        boxes = _rboxes(item, where)
        n = boxes.shape[0]
        entry = {"boxes": boxes, "labels": _array(item.get("labels", []), torch.int64).reshape(-1)}
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"{where} (image_id {key!r}) has NaN or inf box coordinates")
        if detections:
            entry["scores"] = _array(item.get("scores", []), torch.float64).reshape(-1)
            if not bool(torch.isfinite(entry["scores"]).all()):
                raise ValueError(f"{where} (image_id {key!r}) has NaN or inf scores")
        else:
            diff = item.get("difficult")
            entry["difficult"] = (torch.zeros(n, dtype=torch.bool) if diff is None
                                  else _array(diff, torch.int64).reshape(-1) != 0)
        for field, value in entry.items():
            if value.shape[0] != n:
                raise ValueError(f"{where}['{field}'] has {value.shape[0]} entries for {n} boxes")
        if n and bool((entry["labels"] < 0).any()):
            raise ValueError(f"{where}['labels'] must be >= 0")
        out[key] = entry
    return out


def _cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = True) -> float:
    """AP from a ranking's recall / precision curves ``(D,)``, exactly as the DOTA devkit computes it."""
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = float(np.max(precision[recall >= t])) if np.any(recall >= t) else 0.0
            ap += p
        return min(ap / 11.0, 1.0)  # one division: eleven additions of 1/11 exceed 1 by an ulp
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return min(float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])), 1.0)


def _same_class_pairs(dets: dict[Any, dict[str, Tensor]], gts: dict[Any, dict[str, Tensor]],
                      gt_offsets: dict[Any, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Same-image, same-class pairs whose enclosing axis-aligned boxes touch, with their exact rotated IoU.

    The other pairs have IoU 0 (as in :func:`box_iou_rotated`, whose per-pair values these are).

    Returns:
        ``pair_det (P,)`` and ``pair_gt (P,)`` global indices (detections in ``dets`` order, ground truths in
        ``gts`` order), ``pair_iou (P,)`` float64, and ``has_gt (D,)``: the detection's image has ground truth
        of its class.
    """
    empty = torch.zeros(0, 5, dtype=torch.float64)
    det_boxes = torch.cat([d["boxes"] for d in dets.values()]) if dets else empty
    gt_boxes = torch.cat([g["boxes"] for g in gts.values()]) if gts else empty
    det_h, gt_h = rbox_to_hbox(det_boxes).numpy(), rbox_to_hbox(gt_boxes).numpy()
    det_labels = _cat([d["labels"].numpy() for d in dets.values()], np.int64)
    gt_labels = _cat([g["labels"].numpy() for g in gts.values()], np.int64)
    det_parts, gt_parts = [], []
    has_gt = np.zeros(det_boxes.shape[0], dtype=bool)
    d0 = 0
    for key, det in dets.items():
        d1 = d0 + det["boxes"].shape[0]
        gt = gts.get(key)
        if gt is not None and gt["boxes"].shape[0] and d1 > d0:
            g0 = gt_offsets[key]
            g1 = g0 + gt["boxes"].shape[0]
            a, b = det_h[d0:d1, None], gt_h[None, g0:g1]
            same = det_labels[d0:d1, None] == gt_labels[None, g0:g1]
            touch = ((a[..., 0] <= b[..., 2]) & (b[..., 0] <= a[..., 2])
                     & (a[..., 1] <= b[..., 3]) & (b[..., 1] <= a[..., 3]))
            i, j = np.nonzero(same & touch)
            det_parts.append(i + d0)
            gt_parts.append(j + g0)
            has_gt[d0:d1] = same.any(axis=1)
        d0 = d1
    pair_det, pair_gt = _cat(det_parts, np.int64), _cat(gt_parts, np.int64)
    ious = [aligned_iou_rotated(det_boxes[torch.from_numpy(pair_det[s:s + _PAIR_CHUNK])],
                                gt_boxes[torch.from_numpy(pair_gt[s:s + _PAIR_CHUNK])]).numpy()
            for s in range(0, pair_det.size, _PAIR_CHUNK)]
    return pair_det, pair_gt, _cat(ious, np.float64), has_gt


def _devkit_best(pair_det: np.ndarray, pair_gt: np.ndarray, pair_iou: np.ndarray,
                 has_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The devkit's ``ovmax (D,)`` (largest IoU with a same-class ground truth; -inf if none) and ``jmax (D,)``
    (its global index, the first among equals; -1 where ``ovmax <= 0``, which never matches)."""
    ovmax = np.where(has_gt, 0.0, -np.inf)
    jmax = np.full(has_gt.shape[0], -1, dtype=np.int64)
    if pair_det.size:
        order = np.lexsort((pair_gt, -pair_iou, pair_det))
        _, first = np.unique(pair_det[order], return_index=True)
        best = order[first]
        ovmax[pair_det[best]] = pair_iou[best]
        jmax[pair_det[best]] = np.where(pair_iou[best] > 0, pair_gt[best], -1)
    return ovmax, jmax


def evaluate_dota(detections: Sequence[Mapping], ground_truths: Sequence[Mapping], iou_threshold: float = 0.5,
                  use_07_metric: bool = True, ignore_difficult: bool = True, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None, coco_metrics: bool = True) -> dict[str, Any]:
    """DOTA Task1 mAP (module docstring for the rules), and COCO-rule mAP75, mAP50:95 and AP by object size.

    Args:
        detections: per-image dicts ``{"image_id", "rboxes" or "boxes" (N, 5) pixel rotated boxes (or
            "polygons" (N, 8)), "scores" (N,), "labels" (N,)}`` (post-processing output plus the id);
            tensors or arrays. Images without an entry have no detections.
        ground_truths: per-image dicts ``{"image_id", "boxes" (M, 5) (or "polygons" (M, 8)), "labels" (M,),
            "difficult" (M,) optional}``. Detections of an image absent here are false positives.
        iou_threshold: a match needs IoU strictly above it.
        use_07_metric: VOC07 11-point AP (DOTA) or area under the precision envelope.
        ignore_difficult: the devkit rule; ``False`` treats difficult objects as ordinary ones (mmrotate).
        num_classes: if given, labels must be below it and every class id appears in the result.
        class_names: names of the class ids; adds ``"AP_by_name"`` (and ``"AP75_by_name"``,
            ``"AP50_95_by_name"``).
        coco_metrics: also compute the COCO-rule figures below (``False``: the DOTA figures only, faster).
    Returns:
        ``{"mAP": float, "AP": {class id: float}, "recall": {id: float}, "precision": {id: float},
        "num_gts": {id: int}, "num_dets": {id: int}, "mRecall": float}`` (+ ``"AP_by_name"``); recall and
        precision are those of the whole ranking (all detections kept). With ``coco_metrics``, also
        ``"mAP75"``, ``"mAP50_95"`` (float), ``"AP75"``, ``"AP50_95"`` ({id: float}), ``"mAP_by_iou"``
        ({0.5: float, 0.55: ..., 0.95: ...}), ``"AP50_95_by_size"`` ({"small" | "medium" | "large": {id:
        float}}), ``"mAP_by_size"`` ({size: float}) and ``"num_gts_by_size"`` ({size: {id: int}}, counted
        objects). ``nan`` where a class (or every class) has no counted object (of that size); a mean is over
        the classes that have some.
    """
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"`iou_threshold` must be in [0, 1), got {iou_threshold}")
    dets = _per_image(detections, "detections", detections=True)
    gts = _per_image(ground_truths, "ground_truths", detections=False)
    normalize_keys(dets, gts)
    warn_unmatched([k for k, d in dets.items() if d["boxes"].shape[0]], gts, logger)
    if not ignore_difficult:
        for gt in gts.values():
            gt["difficult"] = torch.zeros_like(gt["difficult"])

    offsets, offset = {}, 0
    for key, gt in gts.items():
        offsets[key] = offset
        offset += gt["boxes"].shape[0]
    # The exact IoU of each same-class pair of an image, computed once for the DOTA rule and every COCO lane.
    pair_det, pair_gt, pair_iou, has_gt = _same_class_pairs(dets, gts, offsets)
    ovmax, gt_index = _devkit_best(pair_det, pair_gt, pair_iou, has_gt)
    labels = _cat([d["labels"].numpy() for d in dets.values()], np.int64)
    scores = _cat([d["scores"].numpy() for d in dets.values()], np.float64)
    gt_labels = _cat([g["labels"].numpy() for g in gts.values()], np.int64)
    gt_is_difficult = _cat([g["difficult"].numpy() for g in gts.values()], bool)
    gt_difficult = gt_is_difficult[np.maximum(gt_index, 0)] & (gt_index >= 0) if gt_is_difficult.size \
        else np.zeros(len(gt_index), dtype=bool)
    gt_counted = ~gt_is_difficult

    class_ids = set(labels.tolist()) | set(gt_labels.tolist())
    if num_classes is not None:
        if class_ids and max(class_ids) >= num_classes:
            raise ValueError(f"label {max(class_ids)} is not below num_classes={num_classes}")
        class_ids |= set(range(num_classes))
    result: dict[str, Any] = {k: {} for k in ("AP", "recall", "precision", "num_gts", "num_dets")}
    for c in sorted(class_ids):
        npos = int(np.sum(gt_counted & (gt_labels == c)))
        sel = np.nonzero(labels == c)[0]
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        hit = ovmax[sel] > iou_threshold
        ignored = hit & gt_difficult[sel]
        cand = hit & ~ignored
        tp = np.zeros(len(sel), dtype=bool)
        _, first = np.unique(gt_index[sel][cand], return_index=True)  # first (best-ranked) claim of each GT
        tp[np.nonzero(cand)[0][first]] = True
        fp = ~tp & ~ignored
        tp_cum, fp_cum = np.cumsum(tp), np.cumsum(fp)
        result["num_gts"][c], result["num_dets"][c] = npos, len(sel)
        if npos == 0:
            result["AP"][c] = result["recall"][c] = float("nan")
            counted = tp_cum[-1] + fp_cum[-1] if len(sel) else 0
            result["precision"][c] = float(tp_cum[-1] / counted) if counted else float("nan")
            continue
        rec = tp_cum / float(npos)
        prec = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        result["AP"][c] = voc_ap(rec, prec, use_07_metric)
        result["recall"][c] = float(rec[-1]) if len(rec) else 0.0
        result["precision"][c] = float(prec[-1]) if len(prec) else 0.0
    valid = [c for c in result["AP"] if result["num_gts"][c] > 0]
    result["mAP"] = float(np.mean([result["AP"][c] for c in valid])) if valid else float("nan")
    result["mRecall"] = float(np.mean([result["recall"][c] for c in valid])) if valid else float("nan")
    if coco_metrics:
        areas = [_cat([(b["boxes"][:, 2] * b["boxes"][:, 3]).numpy() for b in group.values()], np.float64)
                 for group in (dets, gts)]
        det_image = _cat([np.full(d["boxes"].shape[0], i) for i, d in enumerate(dets.values())], np.int64)
        keep = pair_iou >= COCO_IOU_THRESHOLDS[0]
        coco = coco_rule_ap(pair_det[keep], pair_gt[keep], pair_iou[keep], det_image, labels, scores, areas[0],
                            gt_labels, areas[1], gt_is_difficult, sorted(class_ids))
        result.update(_coco_summary(coco["AP"], coco["num_gts"]))
    if class_names is not None:
        def by_name(per_class: dict[int, float]) -> dict[str, float]:
            return {(class_names[c] if c < len(class_names) else str(c)): ap for c, ap in per_class.items()}

        result["AP_by_name"] = by_name(result["AP"])
        if coco_metrics:
            result["AP75_by_name"], result["AP50_95_by_name"] = by_name(result["AP75"]), by_name(result["AP50_95"])
    return result


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _coco_summary(ap: dict[int, np.ndarray], num_gts: dict[int, np.ndarray]) -> dict[str, Any]:
    """The result keys of the COCO-rule metrics from per-class ``(S, T)`` AP and ``(S,)`` counts."""
    sizes = list(SIZE_RANGES)
    t75 = int(np.argmin(np.abs(COCO_IOU_THRESHOLDS - 0.75)))
    valid = [c for c in ap if num_gts[c][0] > 0]
    out: dict[str, Any] = {
        "AP75": {c: float(a[0, t75]) for c, a in ap.items()},
        "AP50_95": {c: float(a[0].mean()) for c, a in ap.items()},
        "mAP_by_iou": {round(float(t), 2): _mean([float(ap[c][0, i]) for c in valid])
                       for i, t in enumerate(COCO_IOU_THRESHOLDS)},
        "AP50_95_by_size": {size: {c: float(a[s].mean()) for c, a in ap.items()}
                            for s, size in enumerate(sizes) if size != "all"},
        "num_gts_by_size": {size: {c: int(n[s]) for c, n in num_gts.items()}
                            for s, size in enumerate(sizes) if size != "all"},
    }
    out["mAP75"] = _mean([out["AP75"][c] for c in valid])
    out["mAP50_95"] = _mean([out["AP50_95"][c] for c in valid])
    out["mAP_by_size"] = {size: _mean([v for c, v in per_class.items() if out["num_gts_by_size"][size][c] > 0])
                          for size, per_class in out["AP50_95_by_size"].items()}
    return out


TASK1_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
"""Characters a Task1 file name keeps as they are (:func:`task1_file_names`)."""

TASK1_MAX_STEM = 200
"""Longest escaped class name in a Task1 file name (file names are limited to 255 bytes)."""


def _task1_stem(name: str) -> str:
    return "".join(c if c in TASK1_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in name)


def task1_file_names(class_names: Sequence[str]) -> list[str]:
    """The Task1 file name of each class, ``Task1_<stem>.txt``, safe for any name and distinct for distinct ids.

    The stem is the name with every character outside ``A-Z a-z 0-9 - _ .`` written as the ``%XX`` bytes of its
    UTF-8 (``small car`` -> ``small%20car``, ``a/b`` -> ``a%2Fb``, ``%`` -> ``%25``: reversible with
    ``urllib.parse.unquote``); DOTA's class names are unchanged (``Task1_small-vehicle.txt``). A stem longer than
    :data:`TASK1_MAX_STEM` is cut there and one equal to an earlier class's stem ignoring case (``Car`` after
    ``car``, the same name twice: one file on case-insensitive file systems) gets ``~<class id>``: ``~`` is
    always escaped in stems, so no two classes share a file on any file system.
    """
    names, seen = [], set()
    for class_id, name in enumerate(class_names):
        stem = _task1_stem(str(name))
        if len(stem) > TASK1_MAX_STEM:
            cut = TASK1_MAX_STEM
            while "%" in stem[cut - 2:cut]:  # never inside a %XX
                cut -= 1
            stem = f"{stem[:cut]}~{class_id}"
        elif stem.lower() in seen:
            stem = f"{stem}~{class_id}"
        seen.add(stem.lower())
        names.append(f"Task1_{stem}.txt")
    return names


def write_task1_submission(detections: Sequence[Mapping], out_dir: str | os.PathLike,
                           class_names: Sequence[str]) -> list[str]:
    """Write DOTA Task1 result files ``Task1_<class>.txt``: lines ``image_id score x1 y1 x2 y2 x3 y3 x4 y4``.

    Args:
        detections: per-image dicts as for :func:`evaluate_dota` (``"polygons"`` used when present).
        out_dir: created if needed; one file per class name, empty for classes without detections, named by
            :func:`task1_file_names` (DOTA's names as they are; other characters escaped, never two classes in
            one file).
        class_names: name of each class id.
    Returns:
        The written paths, in class order.
    """
    os.makedirs(out_dir, exist_ok=True)
    lines: list[list[str]] = [[] for _ in class_names]
    for i, item in enumerate(detections):
        where = f"detections[{i}]"
        if not isinstance(item, Mapping) or "image_id" not in item:
            raise ValueError(f"{where} must be a dict with 'image_id'")
        image_id = image_key(item["image_id"])
        if item.get("polygons") is not None:
            polys = _array(item["polygons"], torch.float64).reshape(-1, 8)
        else:
            polys = rbox_to_poly(_rboxes(item, where))
        item_scores = _array(item.get("scores", []), torch.float64).reshape(-1)
        item_labels = _array(item.get("labels", []), torch.int64).reshape(-1)
        if not polys.shape[0] == item_scores.shape[0] == item_labels.shape[0]:
            raise ValueError(f"{where}: boxes, scores and labels differ in length")
        for poly, score, label in zip(polys.tolist(), item_scores.tolist(), item_labels.tolist()):
            if not 0 <= label < len(class_names):
                raise ValueError(f"{where}: label {label} has no class name ({len(class_names)} names)")
            coords = " ".join(f"{v:.2f}" for v in poly)
            lines[label].append(f"{image_id} {score:.6f} {coords}\n")
    paths = []
    for file_name, cls_lines in zip(task1_file_names(class_names), lines):
        path = os.path.join(out_dir, file_name)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(cls_lines)
        paths.append(path)
    return paths
