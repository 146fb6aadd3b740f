"""DOTA mAP speed: ``evaluate_dota`` on N images x D detections, timed with and without the COCO-rule metrics.

    python benchmarks/evaluation.py [--images 500] [--detections 200] [--objects 50] [--classes 15] [--repeat 3]

Each image is 1024 x 1024 with ``--objects`` ground-truth rotated boxes (sides 8-150 px, any angle, 10%
difficult) of random classes; detections are jittered copies of the ground truth plus random boxes up to
``--detections`` per image, with random scores. Prints the median wall time, throughput and the figures of
``evaluate_dota(..., coco_metrics=False)`` (DOTA mAP50 alone) and of the default, which adds mAP75, mAP50:95
and AP by size in the same pass (the runs alternate, so both see the same machine load).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from sl_detr_hf.evaluation import evaluate_dota


def make_data(images: int, detections: int, objects: int, classes: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image_id in range(images):
        boxes = np.column_stack((rng.uniform(0, 1024, (objects, 2)), rng.uniform(8, 150, (objects, 2)),
                                 rng.uniform(-np.pi / 2, np.pi / 2, objects)))
        labels = rng.integers(0, classes, objects)
        gts.append({"image_id": f"P{image_id:04d}", "boxes": torch.from_numpy(boxes),
                    "labels": torch.from_numpy(labels),
                    "difficult": torch.from_numpy(rng.random(objects) < 0.1)})
        n_copy = min(objects, detections)
        copies = boxes[:n_copy] + rng.normal(0, [3, 3, 3, 3, 0.05], (n_copy, 5))
        copies[:, 2:4] = np.abs(copies[:, 2:4])
        n_rand = detections - n_copy
        rand = np.column_stack((rng.uniform(0, 1024, (n_rand, 2)), rng.uniform(8, 150, (n_rand, 2)),
                                rng.uniform(-np.pi / 2, np.pi / 2, n_rand)))
        d_labels = np.concatenate((labels[:n_copy], rng.integers(0, classes, n_rand)))
        dets.append({"image_id": f"P{image_id:04d}", "rboxes": torch.from_numpy(np.concatenate((copies, rand))).float(),
                     "scores": torch.from_numpy(rng.random(detections)).float(), "labels": torch.from_numpy(d_labels)})
    return dets, gts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--detections", type=int, default=200)
    parser.add_argument("--objects", type=int, default=50)
    parser.add_argument("--classes", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dets, gts = make_data(args.images, args.detections, args.objects, args.classes)
    times: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, dict] = {}
    for _ in range(args.repeat):
        for coco in (False, True):
            start, start_cpu = time.perf_counter(), time.process_time()
            results[coco] = evaluate_dota(dets, gts, num_classes=args.classes, coco_metrics=coco)
            times[coco].append(time.perf_counter() - start)
            cpu[coco].append(time.process_time() - start_cpu)
    total = args.images * args.detections
    print(f"evaluate_dota: {args.images} images x {args.detections} detections ({args.objects} GT each, "
          f"{args.classes} classes), torch {torch.__version__}, {torch.get_num_threads()} threads")
    for coco, label in ((False, "mAP50 alone (coco_metrics=False)"), (True, "+ mAP75, mAP50:95, by size")):
        median, res = statistics.median(times[coco]), results[coco]
        extra = (f", mAP50:95 {res['mAP50_95']:.4f}, mAP75 {res['mAP75']:.4f}, small / medium / large "
                 + " / ".join(f"{res['mAP_by_size'][s]:.4f}" for s in ("small", "medium", "large"))) if coco else ""
        print(f"  {label}: median {median:.2f} s (CPU {statistics.median(cpu[coco]):.2f} s) over {args.repeat} runs "
              f"({total / median:,.0f} detections/s), mAP50 {res['mAP']:.4f}{extra}")
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    cpu_ratio = statistics.median(cpu[True]) / statistics.median(cpu[False])
    print(f"  one pass for all metrics costs {ratio:.2f}x mAP50 alone (CPU time {cpu_ratio:.2f}x; on a busy machine "
          "the CPU time is the steadier figure)")


if __name__ == "__main__":
    main()
