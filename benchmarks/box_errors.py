r"""Where the mAP goes: finding, classifying or placing the boxes. A trained SL-DETR folder on a DOTA validation folder.

For each class: AP at IoU 0.1, 0.3 and 0.5 (`evaluate_dota`, VOC07) and the class-agnostic AP at 0.3 / 0.5 (a
detection of a car on a bicycle counts); then, for every ground-truth box that a detection of its class overlaps
at IoU >= 0.1 (score >= ``--min_score``, the best-overlapping one), the median IoU, the predicted / true long and
short sides, the angle error (degrees, modulo 180, measured on the long sides) and the centre error (pixels).
An AP that rises from IoU 0.5 to 0.3 with a short-side ratio far from 1 says the boxes are found but misplaced
(BENCHMARKS.md, "Where HIT-UAV's mAP goes"). Last, the class confusion: for every ground-truth box, the class of
the best-scoring detection of any class that overlaps it at IoU >= 0.3 (score >= ``--min_score``), or none: a
class-agnostic AP far above the mean AP with large off-diagonal counts says the boxes are found and placed but
given the wrong class; each cell also gives the median long side of its boxes, so that a class taken for another
only at the other's sizes (cars from a greater height called bicycles) shows the classifier reading size. With
``--stage_recall`` (a second pass of the model), the recall at IoU 0.5 of each stage of a two-stage model, any
class, any score: of every valid encoder proposal, of the proposals the decoder starts from (its initial
references) and of its final boxes: an object no proposal reaches was lost by the encoder, one the proposals reach
and the references do not by the query selection, one the references reach and the final boxes do not by the
decoder.

    python benchmarks/box_errors.py --model OUT --val_dir $HIT_VALID
    python benchmarks/box_errors.py --model OUT --val_dir $HIT_VALID --cache OUT/val_detections.pt   # predict once
    python benchmarks/box_errors.py --model OUT --val_dir $HIT_VALID --stage_recall
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_data import ground_truth, predict_sl_detr

from sl_detr_hf import SlDetrConfig
from sl_detr_hf.evaluation import evaluate_dota
from sl_detr_hf.geometry_conversions import denormalize_rboxes, poly_to_rbox, regularize_rboxes, wrap_angle_range
from sl_detr_hf.geometry_overlaps import box_iou_rotated
from sl_detr_hf.modeling_sl_detr import angle_from_sigmoid

AP_THRESHOLDS = (0.1, 0.3, 0.5)
STAGES = ("proposals", "references", "final")
ERROR_COLUMNS = ("matched", "IoU", "long ratio", "short ratio", "angle err", "centre err")


def box_errors(detections: list[dict], truths: list[dict], class_id: int, min_score: float,
               min_iou: float = 0.1) -> np.ndarray:
    """Per matched ground-truth box of ``class_id``: ``(M, 5)`` = IoU, long ratio, short ratio, angle error
    (degrees), centre error (pixels); a truth is matched to its best-overlapping detection of the class (IoU >=
    ``min_iou``, score >= ``min_score``). Sides and angles are compared in le90 (``w`` the long side)."""
    rows = []
    for det, truth in zip(detections, truths):
        gt = poly_to_rbox(torch.as_tensor(truth["polygons"]).float())[torch.as_tensor(truth["labels"]) == class_id]
        keep = (torch.as_tensor(det["labels"]) == class_id) & (torch.as_tensor(det["scores"]) >= min_score)
        pred = torch.as_tensor(det["rboxes"]).float()[keep]
        if not len(gt) or not len(pred):
            continue
        best, index = box_iou_rotated(gt, pred).max(1)
        hit = best >= min_iou
        gt, pred, best = regularize_rboxes(gt[hit]), regularize_rboxes(pred[index[hit]]), best[hit]
        ratios = pred[:, 2:4] / gt[:, 2:4]  # long, short
        angle = wrap_angle_range(pred[:, 4] - gt[:, 4]).abs().rad2deg()
        centre = (pred[:, :2] - gt[:, :2]).norm(dim=1)
        rows.append(torch.cat((best[:, None], ratios, angle[:, None], centre[:, None]), 1))
    return torch.cat(rows).numpy() if rows else np.zeros((0, 5))


def truth_outcomes(detections: list[dict], truths: list[dict], num_classes: int, min_score: float,
                   min_iou: float = 0.3) -> np.ndarray:
    """``(M, 4)`` rows, one per ground-truth box: its class, the class of the best-scoring detection (score >=
    ``min_score``, any class) that overlaps it at IoU >= ``min_iou`` (``num_classes`` when none does), its long and
    its short side in pixels."""
    rows = []
    for det, truth in zip(detections, truths):
        labels = torch.as_tensor(truth["labels"], dtype=torch.long)
        if not len(labels):
            continue
        gt = poly_to_rbox(torch.as_tensor(truth["polygons"]).float())
        scores = torch.as_tensor(det["scores"]).float()
        keep = scores >= min_score
        pred, scores = torch.as_tensor(det["rboxes"]).float()[keep], scores[keep]
        pred_labels = torch.as_tensor(det["labels"], dtype=torch.long)[keep]
        found = torch.full_like(labels, num_classes)
        if len(pred):
            overlap = box_iou_rotated(gt, pred) >= min_iou
            best = torch.where(overlap, scores, -1.0).argmax(1)
            found = torch.where(overlap.any(1), pred_labels[best], found)
        sides = regularize_rboxes(gt)[:, 2:4]  # le90: w the long side
        rows.append(torch.cat((labels[:, None].float(), found[:, None].float(), sides), 1))
    return torch.cat(rows).numpy() if rows else np.zeros((0, 4))


def class_confusion(outcomes: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """From :func:`truth_outcomes`: ``(C, C + 1)`` counts (row = a ground-truth box's class, column = the class of
    its best-scoring overlapping detection, the last column: none) and the median long side of each cell's boxes
    (NaN for an empty cell)."""
    counts = np.zeros((num_classes, num_classes + 1), np.int64)
    long_sides = np.full((num_classes, num_classes + 1), np.nan)
    truth, found = outcomes[:, 0].astype(np.int64), outcomes[:, 1].astype(np.int64)
    np.add.at(counts, (truth, found), 1)
    for row, column in zip(*counts.nonzero()):
        long_sides[row, column] = np.median(outcomes[(truth == row) & (found == column), 2])
    return counts, long_sides


def stage_boxes(outputs, angle_offset: float) -> dict[str, torch.Tensor]:
    """The normalized rotated boxes ``(N, 5)`` of each stage of a two-stage rotated model's output for one image,
    theta in le90 as ``pred_boxes``: every valid encoder proposal (finite logits), the decoder's initial references,
    its final boxes."""

    def le90(box_sigmoids: torch.Tensor, angle_sigmoids: torch.Tensor) -> torch.Tensor:
        return torch.cat((box_sigmoids, wrap_angle_range(angle_from_sigmoid(angle_sigmoids, angle_offset))), 1)

    logits = outputs.enc_outputs_coord_logits[0].float()
    proposals = logits[torch.isfinite(logits).all(-1)].sigmoid()
    return {"proposals": le90(proposals[:, :4], proposals[:, 4:]),
            "references": le90(outputs.init_reference_points[0].float(), outputs.init_reference_angles[0].float()),
            "final": outputs.pred_boxes[0].float()}


def stage_recall(model_dir: Path, images: list[Path], truths: list[dict], num_classes: int,
                 iou_threshold: float = 0.5) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ground-truth boxes per class ``(C,)`` and, per stage of :data:`STAGES`, how many of them some box of the
    stage overlaps at IoU >= ``iou_threshold`` (any class, any score)."""
    from PIL import Image

    from sl_detr_hf import SlDetrForObjectDetection, SlDetrImageProcessor

    model = SlDetrForObjectDetection.from_pretrained(model_dir).eval()
    if not (model.config.two_stage and model.config.box_type == "rotated"):
        raise SystemExit("--stage_recall needs a two-stage rotated model")
    processor = SlDetrImageProcessor.from_pretrained(model_dir)
    counts = np.zeros(num_classes, np.int64)
    found = {stage: np.zeros(num_classes, np.int64) for stage in STAGES}
    with torch.inference_mode():
        for path, truth in zip(images, truths):
            labels = np.asarray(truth["labels"], np.int64)
            if not len(labels):
                continue
            image = Image.open(path).convert("RGB")
            inputs = processor(images=[image], return_tensors="pt")
            outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
            gt = poly_to_rbox(torch.as_tensor(truth["polygons"]).float())
            np.add.at(counts, labels, 1)
            for stage, boxes in stage_boxes(outputs, model.config.angle_offset).items():
                pixels = denormalize_rboxes(boxes, (image.height, image.width))
                hit = (box_iou_rotated(gt, pixels).amax(1) >= iou_threshold).numpy() if len(pixels) else 0
                np.add.at(found[stage], labels, hit)
    return counts, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a trained SL-DETR folder")
    parser.add_argument("--val_dir", type=Path, required=True, help="a DOTA folder (images/, labelTxt/)")
    parser.add_argument("--min_score", type=float, default=0.05)
    parser.add_argument("--cache", type=Path, default=None, help="detections file: written once, then read")
    parser.add_argument("--stage_recall", action="store_true",
                        help="also the recall at IoU 0.5 of the proposals, the initial references and the final boxes")
    args = parser.parse_args()

    names = list(SlDetrConfig.from_pretrained(args.model).id2label.values())
    truths, images = ground_truth(args.val_dir, names)
    if args.cache is not None and args.cache.exists():
        detections = torch.load(args.cache, weights_only=False)
    else:
        detections, images_per_s = predict_sl_detr(args.model, images)
        print(f"predicted {len(images)} images at {images_per_s:.2f} images/s")
        if args.cache is not None:
            torch.save(detections, args.cache)

    by_threshold = {t: evaluate_dota(detections, truths, num_classes=len(names), class_names=names, iou_threshold=t)
                    for t in AP_THRESHOLDS}
    agnostic_dets = [{**d, "labels": torch.zeros_like(torch.as_tensor(d["labels"]))} for d in detections]
    agnostic_truths = [{**t, "labels": np.zeros_like(t["labels"])} for t in truths]
    agnostic = {t: evaluate_dota(agnostic_dets, agnostic_truths, num_classes=1, class_names=["object"],
                                 iou_threshold=t)["mAP"] for t in (0.3, 0.5)}
    print("\n" + " ".join(f"{h:>12}" for h in ("class", *(f"AP{round(t * 100)}" for t in AP_THRESHOLDS),
                                                *ERROR_COLUMNS)))
    for class_id, name in enumerate(names):
        errors = box_errors(detections, truths, class_id, args.min_score)
        aps = [by_threshold[t]["AP_by_name"][name] for t in AP_THRESHOLDS]
        medians = np.median(errors, 0) if len(errors) else [float("nan")] * 5
        print(f"{name:>12} " + " ".join(f"{ap:12.3f}" for ap in aps) + f" {len(errors):12d} "
              + " ".join(f"{m:12.2f}" for m in medians))
    print(f"{'mean':>12} " + " ".join(f"{by_threshold[t]['mAP']:12.3f}" for t in AP_THRESHOLDS))
    print(f"class-agnostic AP30 {agnostic[0.3]:.3f}, AP50 {agnostic[0.5]:.3f}")
    print("(AP: VOC07 at that IoU; the error columns are medians over the matched ground-truth boxes: predicted / "
          "true side, |angle| in degrees, centre distance in pixels)")
    confusion, long_sides = class_confusion(truth_outcomes(detections, truths, len(names), args.min_score),
                                            len(names))
    print(f"\nclass confusion (rows: ground truth; columns: its best-scoring detection at IoU >= 0.3, score >= "
          f"{args.min_score:g}); in brackets the median long side of those boxes, pixels")
    print(" ".join(f"{h:>16}" for h in ("truth", *names, "none")))
    for name, row, sides in zip(names, confusion, long_sides):
        print(f"{name:>16} " + " ".join(f"{f'{n} ({s:.0f})' if n else '0':>16}" for n, s in zip(row, sides)))
    if args.stage_recall:
        counts, found = stage_recall(args.model, images, truths, len(names))
        print("\nrecall at IoU 0.5 by stage (any class, any score; rows: ground truth)")
        print(" ".join(f"{h:>12}" for h in ("truth", "boxes", *STAGES)))
        for class_id, name in enumerate(names):
            shares = [found[stage][class_id] / max(counts[class_id], 1) for stage in STAGES]
            print(f"{name:>12} {counts[class_id]:12d} " + " ".join(f"{share:12.3f}" for share in shares))


if __name__ == "__main__":
    main()
