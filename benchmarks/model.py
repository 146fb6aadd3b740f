"""SL-DETR against transformers' Deformable DETR with the same architecture, measured side by side.

    python benchmarks/model.py [--backbone resnet50] [--num-queries 900] [--size 512] [--batch 2]
                               [--repeat 5] [--box-type rotated] [--device cpu|cuda]

Both models have the same architecture and weights (two-stage, box refinement, 4 levels, 6 + 6 layers,
d_model 256, FFN 2048, dropout 0; SL-DETR is converted from the Deformable DETR with `from_deformable_detr`, so it
only adds its angle heads). For the same random `batch x 3 x size x size` batch it prints, per model:

- inference: median time of a forward pass under `torch.no_grad()` in eval mode;
- training: median time of a training step (forward with labels, the model's own loss, backward) in train
  mode: Deformable DETR with its transformers loss (Hungarian matcher, focal + L1 + GIoU, auxiliary and
  encoder losses), SL-DETR with `SlDetrLoss`; 20 objects per image;
- the peak memory of each phase: on CPU the growth of the process' peak resident set over the phase (the
  kernel's high-water mark is reset before each phase), on CUDA `torch.cuda.max_memory_allocated`;

and the SL-DETR / Deformable DETR ratios. Repeats alternate between the two models, and the order flips every
repeat, so that background load hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

from sl_detr_hf import SlDetrForObjectDetection


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory growth (MiB) over a block: CUDA allocator peak, or the process' peak RSS on Linux CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current RSS
            self.start = _read_status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _read_status_kib("VmHWM") * 1024
        self.mib = (peak - self.start) / 2**20


def make_labels(batch: int, objects: int, rotated: bool, generator: torch.Generator, device) -> list[dict]:
    labels = []
    for _ in range(batch):
        centers = 0.15 + 0.7 * torch.rand(objects, 2, generator=generator)
        sizes = 0.03 + 0.2 * torch.rand(objects, 2, generator=generator)
        boxes = torch.cat([centers, sizes], dim=1)
        if rotated:
            boxes = torch.cat([boxes, (torch.rand(objects, 1, generator=generator) - 0.5) * torch.pi], dim=1)
        classes = torch.randint(0, 15, (objects,), generator=generator)
        labels.append({"class_labels": classes.to(device), "boxes": boxes.to(device),
                       "size": torch.tensor([512, 512], device=device)})
    return labels


def measure(fn: Callable[[], None], device: torch.device) -> tuple[float, float]:
    """(seconds, peak MiB) of one call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        fn()
        sync()
        seconds = time.perf_counter() - start
    return seconds, memory.mib


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", help="timm backbone (random weights)")
    parser.add_argument("--num-queries", type=int, default=900)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--objects", type=int, default=20, help="objects per image in the training labels")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--box-type", default="rotated", choices=["rotated", "horizontal"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    ddetr_config = DeformableDetrConfig(
        backbone=args.backbone, use_timm_backbone=True, use_pretrained_backbone=False, num_labels=15,
        two_stage=True, with_box_refine=True, num_queries=args.num_queries,
        two_stage_num_proposals=args.num_queries, encoder_ffn_dim=2048, decoder_ffn_dim=2048, dropout=0.0,
        auxiliary_loss=True,
    )
    ddetr = DeformableDetrForObjectDetection(ddetr_config).to(device)
    sl_detr = SlDetrForObjectDetection.from_deformable_detr(ddetr, box_type=args.box_type).to(device)
    rotated = args.box_type == "rotated"
    print(f"device {device}, {torch.get_num_threads()} threads; {args.backbone}, {args.num_queries} queries, "
          f"batch {args.batch} x 3 x {args.size} x {args.size}, box_type {args.box_type}")
    print(f"parameters: Deformable DETR {sum(p.numel() for p in ddetr.parameters()) / 1e6:.2f} M, "
          f"SL-DETR {sum(p.numel() for p in sl_detr.parameters()) / 1e6:.2f} M")

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    ddetr_labels = make_labels(args.batch, args.objects, False, torch.Generator().manual_seed(1), device)
    sl_labels = make_labels(args.batch, args.objects, rotated, torch.Generator().manual_seed(1), device)
    for labels in (ddetr_labels, sl_labels):
        for target in labels:
            del target["size"]  # Deformable DETR's loss does not take it; SL-DETR derives it from the image
    models = {"Deformable DETR": (ddetr, ddetr_labels), "SL-DETR": (sl_detr, sl_labels)}

    def inference(model) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(pixel_values)
        return run

    def training(model, labels) -> Callable[[], None]:
        def run() -> None:
            outputs = model(pixel_values, labels=labels)
            outputs.loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    phases = [("inference", "eval", inference)]
    if not args.skip_training:
        phases.append(("training step", "train", training))
    results: dict[tuple[str, str], tuple[float, float, float]] = {}
    for phase, mode, make in phases:
        runs = {}
        for name, (model, labels) in models.items():
            getattr(model, mode)()
            runs[name] = make(model) if phase == "inference" else make(model, labels)
            runs[name]()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        peaks: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(args.repeat):
            order = list(runs) if repeat % 2 == 0 else list(reversed(runs))  # no first-runner advantage
            for name in order:
                seconds, mib = measure(runs[name], device)
                times[name].append(seconds)
                peaks[name].append(mib)
        for name in runs:
            results[(phase, name)] = (statistics.median(times[name]), min(times[name]), max(peaks[name]))

    print()
    print(f"times: median (min) of {args.repeat}; memory: peak growth over the phase")
    print("| phase | Deformable DETR | SL-DETR | time ratio, median (min) | peak memory ratio |")
    print("| --- | --- | --- | --- | --- |")
    for phase, _, _ in phases:
        d_median, d_min, d_mem = results[(phase, "Deformable DETR")]
        s_median, s_min, s_mem = results[(phase, "SL-DETR")]
        print(f"| {phase} | {d_median * 1000:.0f} ({d_min * 1000:.0f}) ms, {d_mem:.0f} MiB | "
              f"{s_median * 1000:.0f} ({s_min * 1000:.0f}) ms, {s_mem:.0f} MiB | "
              f"{s_median / d_median:.3f} ({s_min / d_min:.3f}) | {s_mem / d_mem:.3f} |")


if __name__ == "__main__":
    main()
