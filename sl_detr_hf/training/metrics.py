"""``compute_metrics`` for ``transformers.Trainer``: DOTA mAP (rotated models) or COCO mAP (horizontal).

Recommended use (works with any ``eval_do_concat_batches``, ``batch_eval_metrics`` and several processes)::

    Trainer(..., compute_metrics=DetectionMetrics(id2label=config.id2label),
            preprocess_logits_for_metrics=select_detection_outputs,
            args=TrainingArguments(..., label_names=["labels"], remove_unused_columns=False))

Why: the Trainer handles only batch-first tensors correctly. It concatenates lists of per-image label dicts
position by position across batches, and accelerate's ``gather_for_metrics`` slices every tensor inside them
on the last, shorter batch. ``select_detection_outputs`` runs before both and packs each batch's ground truth
into batch-first tensors next to ``logits`` / ``pred_boxes`` (also dropping the large auxiliary outputs).

What ``DetectionMetrics`` accepts as ``EvalPrediction``:

- ``predictions``: a dict / ``ModelOutput`` with ``logits`` and ``pred_boxes`` (plus the packed ground truth
  ``gt`` / ``gt_sizes`` of :func:`select_detection_outputs`), or a tuple in output order in which
  ``logits (B, Q, C)`` is directly followed by ``pred_boxes (B, Q, 5|4)`` (entries such as ``loss_dict`` or
  auxiliary outputs are skipped), or a list of those, one per batch (``eval_do_concat_batches=False``).
  Tensors or arrays (tensors may be -100 padded along dim 1 by the Trainer's concatenation).
- ``label_ids`` (used only without packed ground truth): per-image dicts with ``boxes`` normalized as in
  docs/boxes.md#normalized-boxes, ``class_labels``, ``orig_size`` ``(H, W)`` (``size`` if absent) and optional
  ``difficult``; a list of dicts, or a list of such lists per batch. Merged or truncated dicts are detected
  and reported.

Evaluation happens at original resolution: predictions and ground truth are both scaled by ``orig_size``
(exact, since the resize keeps the aspect ratio).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..evaluation import evaluate_coco, evaluate_dota
from ..geometry_conversions import denormalize_rboxes, rbox_to_hbox
from ..image_processing_sl_detr import SlDetrImageProcessor

__all__ = ["DetectionMetrics", "select_detection_outputs"]


def _is_array(x: Any) -> bool:
    return isinstance(x, (Tensor, np.ndarray))


def _find_outputs(item: Any) -> tuple[Any, Any] | None:
    """``(logits, pred_boxes)`` in one batch's outputs (mapping or sequence in output order), else ``None``."""
    if isinstance(item, Mapping) or hasattr(item, "pred_boxes"):
        logits = item.get("logits") if isinstance(item, Mapping) else getattr(item, "logits", None)
        boxes = item.get("pred_boxes") if isinstance(item, Mapping) else getattr(item, "pred_boxes", None)
        return (logits, boxes) if _is_array(logits) and _is_array(boxes) else None
    if isinstance(item, (list, tuple)):
        for a, b in zip(item[:-1], item[1:]):
            if (_is_array(a) and _is_array(b) and a.ndim == 3 and b.ndim == 3 and a.shape[:2] == b.shape[:2]
                    and b.shape[-1] in (4, 5)):
                return a, b
    return None


def select_detection_outputs(logits: Any, labels: Any = None) -> dict[str, Tensor]:
    """``preprocess_logits_for_metrics`` for ``Trainer``: keep ``logits`` and ``pred_boxes`` of a batch and pack
    its ground truth into batch-first tensors.

    The Trainer then slices, gathers and concatenates only batch-first tensors, which it does correctly (it
    does not for lists of label dicts), so with this function any ``eval_do_concat_batches`` works.

    Returns:
        ``{"logits" (B, Q, C), "pred_boxes" (B, Q, D), "gt" (B, G, 7), "gt_sizes" (B, 2)}``: ``gt`` rows are
        ``(5 box values, class, difficult)`` (horizontal boxes padded with a 0), padding rows have class -1;
        ``G`` is the largest object count of the batch (of all processes when distributed).
    """
    found = _find_outputs(logits)
    if found is None:
        raise ValueError("could not find logits (B, Q, C) followed by pred_boxes (B, Q, 4|5) in the model outputs")
    out = {"logits": found[0], "pred_boxes": found[1]}
    if labels is not None:
        out["gt"], out["gt_sizes"] = _pack_labels(labels, found[0].shape[0], found[1].device, found[1].shape[-1])
    return out


def _pack_labels(labels: Any, batch: int, device: torch.device, box_dim: int = 5) -> tuple[Tensor, Tensor]:
    """Per-image label dicts -> ``gt (B, G, 7)`` and ``gt_sizes (B, 2)`` (images without objects included)."""
    labels = [labels] if isinstance(labels, Mapping) else list(labels)
    _check_labels(labels, batch)
    count = max([len(_np(t["class_labels"]).reshape(-1)) for t in labels] + [1])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        n = torch.tensor([count], device=device)
        torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MAX)
        count = int(n.item())
    gt = torch.full((batch, count, 7), -1.0, dtype=torch.float32)
    for b, t in enumerate(labels):
        cls = torch.as_tensor(_np(t["class_labels"])).reshape(-1)
        boxes = torch.as_tensor(_np(t["boxes"]), dtype=torch.float32).reshape(len(cls), box_dim)
        gt[b, : len(cls), : boxes.shape[1]] = boxes
        gt[b, : len(cls), boxes.shape[1]:5] = 0.0
        gt[b, : len(cls), 5] = cls.float()
        diff = t.get("difficult")
        gt[b, : len(cls), 6] = 0.0 if diff is None else torch.as_tensor(_np(diff)).reshape(-1).float()
    sizes = torch.as_tensor(np.stack([_np(t.get("orig_size", t.get("size"))).reshape(2) for t in labels]))
    return gt.to(device), sizes.to(device=device, dtype=torch.float32)


def _unpack_labels(gt: Any, sizes: Any, box_dim: int) -> list[dict[str, Any]]:
    gt, sizes = _np(gt), _np(sizes)
    out = []
    for rows, size in zip(gt, sizes):
        rows = rows[rows[:, 5] >= 0]  # class -1: packing padding; -100: the Trainer's concatenation padding
        out.append({"boxes": rows[:, :box_dim], "class_labels": rows[:, 5].astype(np.int64),
                    "difficult": rows[:, 6] > 0, "orig_size": size})
    return out


def _check_labels(labels: list, batch: int) -> None:
    if not all(isinstance(t, Mapping) for t in labels):
        raise ValueError("labels must be per-image dicts (a list per batch)")
    if any(t.get("orig_size", t.get("size")) is None or "boxes" not in t or "class_labels" not in t
           for t in labels):
        raise ValueError("every label dict needs 'boxes', 'class_labels' and 'orig_size' (or 'size')")
    if len(labels) != batch or any(np.size(_np(t.get("orig_size", t.get("size")))) != 2 for t in labels):
        raise ValueError(f"{batch} predicted images but {len(labels)} label dicts (or merged sizes): the Trainer "
                         "concatenated or truncated per-image label dicts; use "
                         "preprocess_logits_for_metrics=select_detection_outputs (or eval_do_concat_batches=False "
                         "with a batch size dividing the dataset)")


def _packed(item: Any) -> tuple[Any, Any] | None:
    """The ground truth packed by :func:`select_detection_outputs`, if present."""
    if isinstance(item, Mapping) and item.get("gt") is not None and item.get("gt_sizes") is not None:
        return item["gt"], item["gt_sizes"]
    return None


def _batches(predictions: Any, label_ids: Any) -> list[tuple[Tensor, Tensor, list[Mapping]]]:
    """Split an ``EvalPrediction`` into ``(logits, pred_boxes, labels)`` per batch."""
    found = _find_outputs(predictions)
    if found is not None:
        pred_batches, label_batches, packs = [found], [label_ids], [_packed(predictions)]
    elif isinstance(predictions, (list, tuple)) and all(_find_outputs(p) is not None for p in predictions):
        pred_batches = [_find_outputs(p) for p in predictions]
        packs = [_packed(p) for p in predictions]
        label_batches = label_ids if all(p is None for p in packs) else [None] * len(packs)
        if not isinstance(label_batches, (list, tuple)) or len(label_batches) != len(pred_batches):
            raise ValueError(f"got {len(pred_batches)} prediction batches but labels of another structure; pass "
                             "eval_do_concat_batches=False so both are lists of batches")
    else:
        raise ValueError("predictions must hold logits (B, Q, C) followed by pred_boxes (B, Q, 4|5), or be a list "
                         "of such per-batch outputs")
    out = []
    for (logits, boxes), labels, packed in zip(pred_batches, label_batches, packs):
        if packed is not None:
            labels = _unpack_labels(*packed, boxes.shape[-1])
        else:
            labels = [labels] if isinstance(labels, Mapping) else labels
            if not isinstance(labels, (list, tuple)):
                raise ValueError("labels must be per-image dicts (a list per batch)")
            _check_labels(list(labels), logits.shape[0])
        out.append((torch.as_tensor(_np(logits)), torch.as_tensor(_np(boxes)), list(labels)))
    return out


def _np(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().float().numpy() if value.is_floating_point() else value.detach().cpu().numpy()
    return np.asarray(value)


class DetectionMetrics:
    """A ``compute_metrics`` callable: post-processes predictions and returns DOTA or COCO mAP.

    Rotated models (``pred_boxes`` with 5 coordinates) get :func:`evaluate_dota`: ``mAP`` (DOTA VOC07 at
    ``iou_threshold``: mAP50 by default), ``mRecall`` and ``AP_<class>`` for classes with ground truth, and the
    COCO-rule ``map_75``, ``map_50_95``, ``map_small``, ``map_medium``, ``map_large`` (AP50:95 by object area
    ``w * h``: up to ``32^2``, ``32^2``-``96^2``, from ``96^2`` pixels at the original resolution; -1 where
    undefined, e.g. no object of that size, as in COCO); horizontal models get :func:`evaluate_coco`: the 12 COCO
    stats, ``AP_<class>`` and the same five ``map_*`` keys (copies of ``AP75``, ``AP``, ``AP_small``, ...).

    Args:
        image_processor: its ``post_process_object_detection`` is used (default: a fresh SlDetrImageProcessor).
        id2label: class names for the per-class keys (class ids otherwise).
        threshold: minimum score of a kept detection (0: keep the whole top-k, as mAP expects).
        top_k: detections per image (default: the processor's ``max_detections``; COCO uses at most 100).
        nms_iou_threshold: optional class-wise rotated NMS in post-processing.
        iou_threshold, use_07_metric, ignore_difficult: passed to :func:`evaluate_dota`.
    """

    def __init__(self, image_processor: SlDetrImageProcessor | None = None,
                 id2label: Mapping[int, str] | None = None, threshold: float = 0.0, top_k: int | None = None,
                 nms_iou_threshold: float | None = None, iou_threshold: float = 0.5, use_07_metric: bool = True,
                 ignore_difficult: bool = True) -> None:
        self.image_processor = image_processor if image_processor is not None else SlDetrImageProcessor()
        self.id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None
        self.threshold, self.top_k, self.nms_iou_threshold = threshold, top_k, nms_iou_threshold
        self.iou_threshold, self.use_07_metric, self.ignore_difficult = iou_threshold, use_07_metric, ignore_difficult
        self.reset()

    def reset(self) -> None:
        """Forget accumulated images."""
        self._detections: list[dict[str, Any]] = []
        self._ground_truths: list[dict[str, Any]] = []
        self._rotated: bool | None = None

    def update(self, predictions: Any, label_ids: Any) -> None:
        """Post-process and store the detections and ground truth of one or more batches."""
        for logits, boxes, labels in _batches(predictions, label_ids):
            rotated = boxes.shape[-1] == 5
            if self._rotated is not None and self._rotated != rotated:
                raise ValueError("box type changed between batches")
            self._rotated = rotated
            sizes = torch.as_tensor(np.stack([_np(t.get("orig_size", t.get("size"))).reshape(2) for t in labels]))
            top_k = self.top_k
            if top_k is None and not rotated:  # COCO protocol: 100 detections per image
                top_k = min(100, self.image_processor.max_detections)
            results = self.image_processor.post_process_object_detection(
                {"logits": logits, "pred_boxes": boxes}, threshold=self.threshold, target_sizes=sizes,
                top_k=top_k, nms_iou_threshold=self.nms_iou_threshold)
            for result, target, size in zip(results, labels, sizes):
                image_id = len(self._ground_truths)
                self._ground_truths.append(self._ground_truth(target, size, rotated, image_id))
                det = {"image_id": image_id, "scores": result["scores"], "labels": result["labels"]}
                det["rboxes" if rotated else "boxes"] = result["rboxes" if rotated else "boxes"]
                self._detections.append(det)

    @staticmethod
    def _ground_truth(target: Mapping, size: Tensor, rotated: bool, image_id: int) -> dict[str, Any]:
        boxes = torch.as_tensor(_np(target["boxes"]), dtype=torch.float64).reshape(-1, 5 if rotated else 4)
        labels = torch.as_tensor(_np(target["class_labels"])).reshape(-1).long()
        height, width = (float(v) for v in size)
        if rotated:
            pixel = denormalize_rboxes(boxes, (height, width))
            difficult = target.get("difficult")
            difficult = (torch.zeros(len(labels), dtype=torch.bool) if difficult is None
                         else torch.as_tensor(_np(difficult)).reshape(-1).bool())
            return {"image_id": image_id, "boxes": pixel, "labels": labels, "difficult": difficult}
        # an axis-aligned (cx, cy, w, h) box is the rotated box with theta = 0: one conversion path
        pixel = denormalize_rboxes(torch.cat((boxes, boxes.new_zeros(len(boxes), 1)), dim=-1), (height, width))
        return {"image_id": image_id, "boxes": rbox_to_hbox(pixel), "labels": labels}

    def compute(self) -> dict[str, float]:
        """Metrics of everything accumulated since the last reset (then resets)."""
        if self._rotated is None:
            raise ValueError("no predictions were given")
        names = self.id2label or {}
        counts = {"num_images": len(self._ground_truths),
                  "num_objects": sum(len(gt["labels"]) for gt in self._ground_truths)}
        if self._rotated:
            res = evaluate_dota(self._detections, self._ground_truths, iou_threshold=self.iou_threshold,
                                use_07_metric=self.use_07_metric, ignore_difficult=self.ignore_difficult)
            metrics = {"mAP": res["mAP"], "mRecall": res["mRecall"]}
            coco = {"map_75": res["mAP75"], "map_50_95": res["mAP50_95"],
                    **{f"map_{size}": v for size, v in res["mAP_by_size"].items()}}
            metrics.update({k: -1.0 if math.isnan(v) else float(v) for k, v in coco.items()})
            per_class = {c: ap for c, ap in res["AP"].items() if res["num_gts"][c] > 0}
        else:
            res = evaluate_coco(self._detections, self._ground_truths)
            per_class = res.pop("AP_per_class")
            metrics = dict(res)
            metrics.update({"map_75": res["AP75"], "map_50_95": res["AP"], "map_small": res["AP_small"],
                            "map_medium": res["AP_medium"], "map_large": res["AP_large"]})
        metrics.update({f"AP_{names.get(c, c)}": float(ap) for c, ap in per_class.items()})
        metrics.update(counts)
        self.reset()
        return metrics

    def __call__(self, eval_pred: Any, compute_result: bool | None = None) -> dict[str, float]:
        """``compute_metrics(EvalPrediction)``; with ``batch_eval_metrics`` accumulate until ``compute_result``."""
        predictions = eval_pred.predictions if hasattr(eval_pred, "predictions") else eval_pred[0]
        label_ids = eval_pred.label_ids if hasattr(eval_pred, "label_ids") else eval_pred[1]
        if compute_result is None:
            self.reset()
        self.update(predictions, label_ids)
        if compute_result is None or compute_result:
            return self.compute()
        return {}
