"""Splitting a 4000 x 4000 DOTA image into patches: time and peak memory; merging the patch detections.

    python benchmarks/split.py [--size 4000] [--objects 300] [--repeat 3]

A synthetic 4000 x 4000 PNG with DOTA labels is written to a temporary folder. Each split runs in a fresh
Python process (``split_image``, in-process, one image); a thread samples the resident memory every 2 ms, and
the peak minus the memory just before the split is what the split itself needed; it is compared with the
decoded image (W x H x 3 bytes) and one 1024 x 1024 patch. Cases: single scale (1024 / 200) and multi-scale
(rates 0.5 / 1.0 / 1.5, gap 500). Then ``merge_patch_detections`` is timed on every patch's objects given back
as detections (the split-then-merge round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CASES = {
    "single scale 1024 / gap 200": {"sizes": [1024], "gaps": [200], "rates": [1.0]},
    "multi-scale 0.5 / 1.0 / 1.5, gap 500": {"sizes": [1024], "gaps": [500], "rates": [0.5, 1.0, 1.5]},
}


def _rss_mb() -> float:
    """Current resident memory of this process (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(src: str, dst: str, case: str) -> None:
    """Split one image in this (fresh) process and print JSON: seconds, patches, peak memory increase in MB.

    The peak is the largest resident memory sampled every 2 ms during the split, minus the resident memory
    just before it (``ru_maxrss`` cannot be used: importing the package already peaks above the split).
    """
    from sl_detr_hf.data.split import split_image

    params = CASES[case]
    Path(dst, "images").mkdir(parents=True)
    Path(dst, "labelTxt").mkdir()
    before = _rss_mb()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    summary = split_image(Path(src, "images", "syn00000.png"), Path(src, "labelTxt", "syn00000.txt"), dst,
                          **params)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mb())
    print(json.dumps({"seconds": seconds, "patches": summary.patches, "objects": summary.patch_objects,
                      "peak_mb": peak[0] - before}))


def merge_time(dst: Path, repeat: int) -> tuple[float, int, int]:
    import torch

    from sl_detr_hf.data.dota import load_dota
    from sl_detr_hf.data.split import merge_patch_detections
    from sl_detr_hf.data.synthetic import SYNTHETIC_CLASSES

    detections = []
    for row in load_dota(dst, class_names=SYNTHETIC_CLASSES):
        objects = row["objects"]
        detections.append({"patch_id": row["image_id"], "boxes": torch.tensor(objects["rbox"]).reshape(-1, 5),
                           "scores": torch.where(torch.tensor(objects["difficult"]) == 2, 0.5, 1.0),
                           "labels": torch.tensor(objects["category"], dtype=torch.long)})
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        merged = merge_patch_detections(detections)
        times.append(time.perf_counter() - start)
    return statistics.median(times), sum(len(d["boxes"]) for d in detections), len(merged[0]["boxes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4000)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("SRC", "DST", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from sl_detr_hf.data.synthetic import make_synthetic_dota

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "src")
        make_synthetic_dota(src, num_images=1, image_size=args.size, seed=0, min_objects=args.objects,
                            max_objects=args.objects, min_object_size=20, max_object_size=150,
                            max_overlap_iou=0.0)
        image_mb = args.size * args.size * 3 / 2**20
        print(f"{args.size} x {args.size} image: decoded {image_mb:.1f} MB; a 1024 x 1024 patch: 3.0 MB")
        print("| case | patches | split time (median) | peak memory of the split |")
        print("| --- | --- | --- | --- |")
        last_dst = None
        for case in CASES:
            runs = []
            for r in range(args.repeat):
                dst = Path(tmp, f"dst-{len(runs)}-{case[:5]}-{r}")
                out = subprocess.run([sys.executable, __file__, "--child", str(src), str(dst), case],
                                     check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
                if case.startswith("single"):
                    last_dst = dst
            seconds = statistics.median(r["seconds"] for r in runs)
            peak = max(r["peak_mb"] for r in runs)
            print(f"| {case} | {runs[0]['patches']} | {seconds:.2f} s | {peak:.0f} MB "
                  f"({peak / image_mb:.2f} x image) |")
        seconds, boxes, kept = merge_time(last_dst, args.repeat)
        print(f"merge_patch_detections: {boxes} patch detections -> {kept} (of {args.objects} objects) in "
              f"{seconds * 1000:.0f} ms")


if __name__ == "__main__":
    main()
