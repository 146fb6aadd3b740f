"""``sl-detr evaluate``: full-size DOTA evaluation: split, predict patches, merge, mAP, Task1 files.

Prints a table per class: AP50 (DOTA devkit, VOC07), AP75 and AP50:95 (COCO rules, rotated IoU) and AP50:95
by object size (small / medium / large), and writes the same figures to ``<output_dir>/metrics.json``
(:func:`~sl_detr_hf.evaluation.dota_summary`).

A YOLO-OBB split (``--data_format yolo_obb``) is read with :func:`~sl_detr_hf.data.load_yolo_obb` and written as
a DOTA folder (image links) under the output folder first; the rest is the same.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from ._common import check_model_folder, keep_freed_memory_on

__all__ = ["main", "run_evaluate"]


def run_evaluate(argv: Sequence[str]) -> dict:
    """Full-size DOTA evaluation: split, predict patches, merge with rotated NMS, mAP50 (DOTA), mAP75, mAP50:95,
    AP by size, Task1 files. An image no larger than a patch is predicted whole, as in training."""
    import torch
    from tqdm.auto import tqdm

    from .. import SlDetrForObjectDetection
    from ..data import load_dota, load_yolo_obb, merge_patch_detections, parse_patch_name, split_dota_cached
    from ..data.dota import write_dota_folder
    from ..data.images import to_rgb
    from ..evaluation import dota_summary, evaluate_dota, format_dota_table, write_task1_submission
    from ..image_processing_sl_detr import SlDetrImageProcessor
    from ..precision_sl_detr import as_float32, bf16_autocast

    parser = argparse.ArgumentParser(prog="sl-detr evaluate", description=run_evaluate.__doc__)
    parser.add_argument("--model", required=True, help="SL-DETR folder or Hub id")
    parser.add_argument("--data_dir", required=True, help="dota: a folder with full-size images/ and labelTxt/; "
                        "yolo_obb: the images folder (D/images/val, labels in D/labels/val)")
    parser.add_argument("--data_format", default="dota", choices=("dota", "yolo_obb"),
                        help="the format of --data_dir (default dota); the classes are the model's, in its id order")
    parser.add_argument("--output_dir", default="outputs/evaluate")
    parser.add_argument("--patch_size", type=int, default=None, help="side of the patches a larger image is split "
                        "into; default: the model's input size (its image processor's shortest edge, the square it "
                        "does not resize; 1024 if none). An image that fits in one patch is predicted whole, sized as "
                        "in training (no padding)")
    parser.add_argument("--gap", type=int, default=None,
                        help="overlap of neighbouring patches; default: patch_size * 200 / 1024 (DOTA's 200 at 1024)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.001)
    parser.add_argument("--nms_iou", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true",
                        help="the network under bf16 autocast: faster on CPUs with AVX-512 BF16 / AMX and on GPUs")
    parser.add_argument("--dota_version", default=None, help="unused: the class list is the model's id2label")
    args = parser.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir} is not a folder")
    out = Path(args.output_dir)
    try:
        check_model_folder(args.model)
    except ValueError as err:
        parser.error(f"--model {err}")
    model = SlDetrForObjectDetection.from_pretrained(args.model).to(args.device).eval()
    keep_freed_memory_on(args.device)  # as training does on a CPU (commands/_common.py)
    processor = SlDetrImageProcessor.from_pretrained(args.model)
    if args.patch_size is None:
        size = processor.size or {}  # a square patch of the shortest edge is the one the processor does not resize
        args.patch_size = int(size.get("shortest_edge") or size.get("longest_edge") or 1024)
    if args.gap is None:
        args.gap = round(args.patch_size * 200 / 1024)
    if not 0 <= args.gap < args.patch_size:
        parser.error(f"--gap must be in [0, --patch_size), got {args.gap} with --patch_size {args.patch_size}")
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    # The ground truth first: unreadable or oversized images are found before the long split / predict work.
    try:
        if args.data_format == "yolo_obb":
            full, summary = load_yolo_obb(args.data_dir, class_names=names, return_summary=True)
        else:
            full, summary = load_dota(args.data_dir, class_names=names, return_summary=True)
    except (ValueError, FileNotFoundError) as err:
        parser.error(f"--data_dir {err}")
    if summary.unreadable_images:
        parser.error(f"{len(summary.unreadable_images)} image(s) of --data_dir cannot be read (fix or remove them, "
                     f"the mAP would silently leave them out): {', '.join(summary.unreadable_images)}")
    dota_dir = Path(args.data_dir)
    if args.data_format == "yolo_obb":  # as a DOTA folder for the splitter: links to the images, DOTA labels
        dota_dir = out / "dota"
        shutil.rmtree(dota_dir, ignore_errors=True)
        write_dota_folder(full, dota_dir)
    patches_root = out / "patches"
    split_dota_cached(dota_dir, patches_root, sizes=(args.patch_size,), gaps=(args.gap,))
    patches = load_dota(patches_root, class_names=names, labels_dir=None)  # the patch images; truth is `full`
    # an image that fits in one patch goes in whole, as training sized it (its patch would add a padding band), and
    # its detections are the model's own, without the merge's NMS (as sl_detr_hf/tiling.py does for a scene that
    # fits in one tile, and as the evaluation during training)
    whole = {image_id: i for i, (image_id, width, height) in enumerate(zip(full["image_id"], full["width"],
                                                                           full["height"]))
             if width <= args.patch_size and height <= args.patch_size}
    patch_dets, whole_dets = [], []
    for start in tqdm(range(0, len(patches), args.batch_size), desc="predict patches"):
        rows = patches[start:start + args.batch_size]
        sources = [parse_patch_name(name).image_id for name in rows["image_id"]]
        images = [to_rgb(full[whole[source]]["image"] if source in whole else image)
                  for source, image in zip(sources, rows["image"])]
        inputs = processor(images=images, return_tensors="pt").to(args.device)
        with torch.no_grad(), bf16_autocast(torch.device(args.device).type, enabled=args.bf16):
            outputs = model(**inputs)
        outputs.logits, outputs.pred_boxes = as_float32((outputs.logits, outputs.pred_boxes))
        sizes = torch.tensor([[im.height, im.width] for im in images], device=args.device)
        results = processor.post_process_object_detection(outputs, threshold=args.threshold, target_sizes=sizes)
        for name, source, r in zip(rows["image_id"], sources, results):
            det = {"boxes": r["rboxes"].cpu(), "scores": r["scores"].cpu(), "labels": r["labels"].cpu()}
            if source in whole:
                whole_dets.append({"image_id": source, **det})
            else:
                patch_dets.append({"patch_id": name, **det})
    merged = sorted(merge_patch_detections(patch_dets, iou_threshold=args.nms_iou) + whole_dets,
                    key=lambda det: det["image_id"])
    gts = [{"image_id": row["image_id"], "boxes": torch.tensor(row["objects"]["rbox"]).reshape(-1, 5),
            "labels": torch.tensor(row["objects"]["category"]),
            "difficult": torch.tensor(row["objects"]["difficult"]) > 0} for row in full.remove_columns("image")]
    result = evaluate_dota(merged, gts, num_classes=len(names))
    write_task1_submission(merged, out / "task1", names)
    summary = dota_summary(result, names)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    print(format_dota_table(summary))
    print(f"written: {out / 'metrics.json'}, Task1 files in {out / 'task1'}")
    return summary


def main(argv: Sequence[str]) -> int:
    """``sl-detr evaluate --model M --data_dir D [options]``."""
    run_evaluate(argv)
    return 0
