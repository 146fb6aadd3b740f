r"""Inference images/s at batch 1 on the CPU: a saved SL-DETR folder against Ultralytics' YOLO11n-OBB / YOLO26n-OBB,
side by side in one run, on the same images at the same size.

    pip install -e ".[dev,benchmark]"
    python benchmarks/inference_speed.py --model OUT --images VAL/images --image_size 640
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/inference_speed.py --model OUT --images VAL/images --threads 1
    python benchmarks/inference_speed.py --model OUT --images VAL/images --bf16    # also SL-DETR under bf16 autocast
    python benchmarks/inference_speed.py --model OUT --images VAL/images --grid_sample --peers ""  # sampling forms
    python benchmarks/inference_speed.py --model OUT --images VAL/images --unfolded --peers ""  # batch norms apart
    python benchmarks/inference_speed.py --model OUT --images VAL/images --keep_freed_memory  # as sl-detr predict

Each model predicts every image once per round, in a process of its own (importing Ultralytics changes the threading
of the process that imports it: SL-DETR measured 7.5 images/s beside it in one process, 11.8 alone); the first image
of a round warms up and is not timed. The models take turns round by round (so that a slower or busier moment of
the machine falls on all of them), and the table gives the median images/s over the rounds and SL-DETR / peer.
Pre- and post-processing are included, as a user pays them: SL-DETR through `SlDetrImageProcessor` (threshold
0.3) from a PIL image, each peer through `YOLO.predict(path, conf=0.25)` (its default). The peers are built from
their bundled yaml (untrained, its 15 DOTA classes; nothing is downloaded) unless `--peer_weights` gives trained
ones: untrained, their confidences stay under 0.25, so their NMS has nothing to do, which can only flatter them.
`--keep_freed_memory` adds SL-DETR with the allocator setting `sl-detr predict` / `evaluate` / `train` make on a
CPU (`sl_detr_hf/training/allocator.py`; the library alone, `pipeline()`, never makes it): rows `SL-DETR-kept`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SL_DETR_BF16 = "SL-DETR-bf16"  # the same model under bf16 autocast (`--bf16`; sl-detr predict --bf16)
GRID_SAMPLE = "-grid_sample"  # suffix: transformers' grid_sample form of the sampling (`--grid_sample`)
UNFOLDED = "-unfolded"  # suffix: every batch norm computed apart from its convolution (`--unfolded`)
KEPT = "-kept"  # suffix: glibc keeps freed memory, as the sl-detr commands set it on a CPU (`--keep_freed_memory`)


def sl_detr_runner(model_dir: Path, bf16: bool = False, grid_sample: bool = False, unfolded: bool = False,
                   keep_memory: bool = False):
    from PIL import Image

    from sl_detr_hf import SlDetrForObjectDetection, SlDetrImageProcessor
    from sl_detr_hf.precision_sl_detr import as_float32, bf16_autocast

    model = SlDetrForObjectDetection.from_pretrained(model_dir).eval()
    if grid_sample:  # undo the gather form the model installs (sl_detr_hf/deformable_sampling_sl_detr.py)
        from sl_detr_hf.deformable_sampling_sl_detr import use_grid_sample_sampling

        use_grid_sample_sampling(model)
    if unfolded:  # undo the folding the model installs (sl_detr_hf/conv_norm_folding_sl_detr.py)
        from sl_detr_hf.conv_norm_folding_sl_detr import use_unfolded_conv_norms

        use_unfolded_conv_norms(model)
    processor = SlDetrImageProcessor.from_pretrained(model_dir)
    if keep_memory:
        from sl_detr_hf.training.allocator import keep_freed_memory

        keep_freed_memory()

    def run(path: Path) -> int:
        image = Image.open(path).convert("RGB")
        with torch.inference_mode():
            inputs = processor(images=[image], return_tensors="pt")
            with bf16_autocast("cpu", enabled=bf16):
                outputs = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
            outputs.logits, outputs.pred_boxes = as_float32((outputs.logits, outputs.pred_boxes))
            result = processor.post_process_object_detection(outputs, threshold=0.3,
                                                             target_sizes=[(image.height, image.width)])[0]
        return len(result["scores"])

    return run


def yolo_runner(name: str, image_size: int, weights: Path | None):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    model = YOLO(str(weights) if weights else f"{name}.yaml")  # the yaml: untrained, its 15 DOTA classes

    def run(path: Path) -> int:
        return len(model.predict(str(path), imgsz=image_size, conf=0.25, device="cpu", verbose=False)[0].obb)

    return run


def time_round(run, images: list[Path]) -> float:
    run(images[0])  # warm-up
    start = time.perf_counter()
    for path in images[1:]:
        run(path)
    return (len(images) - 1) / (time.perf_counter() - start)


def _one_round(args: argparse.Namespace, images: list[Path]) -> float:
    """In this process: load ``args.only`` and time one round."""
    if args.only.startswith("SL-DETR"):
        run = sl_detr_runner(args.model, bf16=args.only.startswith(SL_DETR_BF16),
                             grid_sample=args.only.endswith(GRID_SAMPLE), unfolded=args.only.endswith(UNFOLDED),
                             keep_memory=args.only.endswith(KEPT))
    else:
        peers = [p for p in args.peers.split(",") if p]
        weights = dict(zip(peers, args.peer_weights or [None] * len(peers)))
        run = yolo_runner(args.only, args.image_size, weights[args.only])
    return time_round(run, images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a saved SL-DETR folder")
    parser.add_argument("--images", type=Path, required=True, help="a folder of images")
    parser.add_argument("--image_size", type=int, default=640)
    parser.add_argument("--peers", default="yolo11n-obb,yolo26n-obb")
    parser.add_argument("--peer_weights", type=Path, nargs="*", default=None, help="trained .pt, one per peer")
    parser.add_argument("--limit", type=int, default=100, help="images per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--bf16", action="store_true", help="also SL-DETR under bf16 autocast (SL-DETR-bf16)")
    parser.add_argument("--grid_sample", action="store_true",
                        help="also SL-DETR with transformers' grid_sample form of the deformable sampling")
    parser.add_argument("--unfolded", action="store_true",
                        help="also SL-DETR with every batch norm computed apart from its convolution")
    parser.add_argument("--keep_freed_memory", action="store_true",
                        help="also SL-DETR with the allocator setting of the sl-detr commands on a CPU (-kept)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one model, one round (a child process)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:args.limit]
    if len(images) < 2:
        raise SystemExit(f"error: need at least 2 images in {args.images}")
    if args.only:
        print(f"IMAGES_PER_S {_one_round(args, images)}")
        return
    names = ["SL-DETR", SL_DETR_BF16] if args.bf16 else ["SL-DETR"]
    names += [name + GRID_SAMPLE for name in names] if args.grid_sample else []
    plain = [name for name in names if not name.endswith(GRID_SAMPLE)]
    names += [name + UNFOLDED for name in plain] if args.unfolded else []
    names += [name + KEPT for name in plain] if args.keep_freed_memory else []
    peers = [p for p in args.peers.split(",") if p]
    if peers and importlib.util.find_spec("ultralytics") is None:
        print("Ultralytics is not installed (pip install -e '.[benchmark]'): SL-DETR alone")
        peers = []
    names += peers
    print(f"{len(images)} images of {args.images}, {args.image_size} px, torch threads {args.threads or 'default'}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    base = [sys.executable, str(Path(__file__).resolve()), "--model", str(args.model), "--images", str(args.images),
            "--image_size", str(args.image_size), "--peers", args.peers, "--limit", str(args.limit)]
    base += ["--peer_weights", *map(str, args.peer_weights)] if args.peer_weights else []
    base += ["--threads", str(args.threads)] if args.threads else []
    speeds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            done = subprocess.run([*base, "--only", name], capture_output=True, text=True)
            found = re.search(r"IMAGES_PER_S ([0-9.eE+-]+)", done.stdout)
            if done.returncode or not found:
                raise RuntimeError(f"{name} failed (exit {done.returncode}): {done.stderr[-2000:]}")
            speeds[name].append(float(found.group(1)))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {s[-1]:.2f}" for n, s in speeds.items()), flush=True)
    median = {name: statistics.median(values) for name, values in speeds.items()}
    ours = [name for name in names if name.startswith("SL-DETR")]
    width = max(len(name) for name in names)
    print(f"\n{'model':<{width}} {'images/s (median)':>17}" + "".join(f"   {name + ' / model':>{width + 8}}"
                                                                      for name in ours))
    for name, value in median.items():
        print(f"{name:<{width}} {value:>17.2f}" + "".join(f"   {median[o] / value:>{width + 8}.2f}" for o in ours))


if __name__ == "__main__":
    main()
