"""Where a trained demo model loses mAP: duplicates, localization or ranking, on its own validation set.

    python benchmarks/demo_errors.py outputs/demo [outputs/demo_other ...]

For each `sl-detr demo` output folder (its `model/` and `data/val/`), runs the model on the validation images
and prints, side by side for the folders given:

- DOTA VOC07 mAP at IoU 0.1 / 0.3 / 0.5 / 0.7 (how much is lost to localization: 0.5 against 0.1);
- mAP50 with class-wise rotated NMS added to the post-processing at IoU 0.6 (how much duplicates cost);
- the detections scored above 0.3 split into true positives (IoU > 0.5 with an unclaimed object of the class,
  best score first), duplicates (IoU > 0.5 with an object already claimed), localization errors (0.1 < IoU <=
  0.5), class confusions (IoU > 0.5 with an object of another class only) and background (IoU <= 0.1);
- the share of objects that no detection of their class covers at IoU > 0.5 (recall lost to localization).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sl_detr_hf import SlDetrForObjectDetection
from sl_detr_hf.data import load_dota
from sl_detr_hf.evaluation import evaluate_dota
from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
from sl_detr_hf.rotated_boxes import box_iou_rotated, poly_to_rbox


def _predict(folder: Path):
    model = SlDetrForObjectDetection.from_pretrained(folder / "model").eval()
    processor = SlDetrImageProcessor.from_pretrained(folder / "model")
    val = load_dota(folder / "data" / "val")
    images = [val[i]["image"].convert("RGB") for i in range(len(val))]
    logits, boxes = [], []
    with torch.no_grad():
        for start in range(0, len(images), 10):
            inputs = processor(images=images[start:start + 10], return_tensors="pt")
            outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
            logits.append(outputs.logits)
            boxes.append(outputs.pred_boxes)
    sizes = torch.tensor([[im.height, im.width] for im in images])
    truths = []
    for i in range(len(val)):
        objects = val[i]["objects"]
        truths.append({"image_id": i, "boxes": poly_to_rbox(torch.tensor(objects["polygon"], dtype=torch.float64)
                                                             .reshape(-1, 8)),
                       "labels": torch.tensor(objects["category"], dtype=torch.long).reshape(-1),
                       "difficult": torch.tensor(objects["difficult"], dtype=torch.bool).reshape(-1)})
    return processor, torch.cat(logits), torch.cat(boxes), sizes, truths


def _detections(processor, logits, boxes, sizes, nms=None):
    results = processor.post_process_object_detection({"logits": logits, "pred_boxes": boxes}, threshold=0.0,
                                                      target_sizes=sizes, nms_iou_threshold=nms)
    return [{"image_id": i, "rboxes": r["rboxes"], "scores": r["scores"], "labels": r["labels"]}
            for i, r in enumerate(results)]


def _breakdown(detections, truths, score: float = 0.3) -> tuple[dict[str, int], float]:
    counts = dict.fromkeys(("true positive", "duplicate", "localization", "class", "background"), 0)
    uncovered = total = 0
    for det, gt in zip(detections, truths):
        keep = det["scores"] > score
        pred, labels = det["rboxes"][keep].double(), det["labels"][keep]
        total += len(gt["labels"])
        if len(gt["labels"]) == 0:
            counts["background"] += len(pred)
            continue
        iou = box_iou_rotated(pred, gt["boxes"]) if len(pred) else torch.zeros(0, len(gt["labels"]))
        same = iou * (labels[:, None] == gt["labels"][None])
        all_det = box_iou_rotated(det["rboxes"].double(), gt["boxes"]) * (det["labels"][:, None] == gt["labels"][None])
        uncovered += int((all_det.max(0).values <= 0.5).sum()) if len(all_det) else len(gt["labels"])
        claimed: set[int] = set()
        for j in range(len(pred)):  # sorted by score
            best = int(same[j].argmax())
            if same[j, best] > 0.5:
                counts["duplicate" if best in claimed else "true positive"] += 1
                claimed.add(best)
            elif iou[j].max() > 0.5:
                counts["class"] += 1
            elif same[j].max() > 0.1:
                counts["localization"] += 1
            else:
                counts["background"] += 1
    return counts, uncovered / max(total, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="`sl-detr demo --output_dir` folders")
    args = parser.parse_args(argv)
    header = ["folder", "mAP@0.1", "mAP@0.3", "mAP@0.5", "mAP@0.7", "mAP@0.5 + NMS 0.6", "TP", "dup", "loc",
              "cls", "bg", "objects uncovered at 0.5"]
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for folder in args.folders:
        processor, logits, boxes, sizes, truths = _predict(folder)
        plain = _detections(processor, logits, boxes, sizes)
        maps = [evaluate_dota(plain, truths, iou_threshold=t)["mAP"] for t in (0.1, 0.3, 0.5, 0.7)]
        with_nms = evaluate_dota(_detections(processor, logits, boxes, sizes, nms=0.6), truths)["mAP"]
        counts, uncovered = _breakdown(plain, truths)
        cells = [str(folder), *(f"{m:.3f}" for m in maps), f"{with_nms:.3f}", *map(str, counts.values()),
                 f"{uncovered:.1%}"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
