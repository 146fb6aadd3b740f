"""SL-DETR against transformers' Deformable DETR with the same architecture, measured side by side.

    python benchmarks/model.py [--backbone resnet50] [--num-queries 900] [--size 512] [--batch 2]
                               [--objects 20 100 400] [--bf16] [--repeat 5] [--box-type rotated]
                               [--device cpu|cuda] [--count-ops] [--config KEY=VALUE ...]

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
repeat, so that background load hits both alike. For every training step it also prints the criterion's share of
SL-DETR's step (time inside `SlDetrLoss.forward`) and, named, the time spent in scipy's `linear_sum_assignment`
(the part of the criterion that stays on the CPU). `--bf16` runs the steps under bf16 autocast; `--config` sets
SL-DETR config switches (e.g. `mixed_query_selection=false`, `numerics=deformable_detr`, `num_denoising=0`).

`--count-ops` instead counts, with `torch.profiler`, the operator calls (each one a kernel launch on a GPU) of
SL-DETR's forward + backward with its loss and with the loss replaced by a plain sum of the same outputs, and
prints what the loss adds as a share of the network's own count (issue 11 target: <= 40%).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

from sl_detr_hf import SlDetrForObjectDetection, matcher_sl_detr
from sl_detr_hf.loss_sl_detr import SlDetrLoss


class CriterionTimer:
    """Accumulates the time inside ``SlDetrLoss.forward`` and inside scipy's assignment while active."""

    def __init__(self, device: torch.device):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.criterion = self.scipy = 0.0
        self.active = False
        self._forward, self._lsa = SlDetrLoss.forward, matcher_sl_detr.linear_sum_assignment
        timer = self

        def forward(criterion, *args, **kwargs):
            if not timer.active:
                return timer._forward(criterion, *args, **kwargs)
            timer.sync()
            start = time.perf_counter()
            out = timer._forward(criterion, *args, **kwargs)
            timer.sync()
            timer.criterion += time.perf_counter() - start
            return out

        def lsa(cost):
            start = time.perf_counter()
            out = timer._lsa(cost)
            timer.scipy += time.perf_counter() - start if timer.active else 0.0
            return out

        SlDetrLoss.forward, matcher_sl_detr.linear_sum_assignment = forward, lsa

    @contextlib.contextmanager
    def measuring(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False


def count_ops(model, pixel_values, labels, with_loss: bool) -> int:
    """Operator calls (``aten::`` events) of one forward + backward, the loss kept or replaced by a plain sum."""
    original = SlDetrLoss.forward

    def plain_sum(criterion, outputs, targets):
        tensors = [outputs["logits"], outputs["pred_boxes"]]
        for key in ("auxiliary_outputs", "dn_outputs"):
            for layer in outputs.get(key) or []:
                tensors += [layer["logits"], layer["pred_boxes"]]
        if outputs.get("enc_outputs") is not None:
            tensors += [outputs["enc_outputs"]["logits"], outputs["enc_outputs"]["pred_boxes"]]
        return sum(t.float().sum() for t in tensors), {}

    if not with_loss:
        SlDetrLoss.forward = plain_sum
    try:
        model(pixel_values, labels=labels).loss.backward()  # warm-up
        model.zero_grad(set_to_none=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            model(pixel_values, labels=labels).loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        SlDetrLoss.forward = original
    return sum(1 for event in prof.events() if event.name.startswith("aten::"))


def parse_value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(text)
    return text


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
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--objects", type=int, nargs="+", default=[20], help="objects per image (one run each)")
    parser.add_argument("--bf16", action="store_true", help="training steps under bf16 autocast")
    parser.add_argument("--count-ops", action="store_true", help="count operator calls instead of timing")
    parser.add_argument("--config", nargs="*", default=[], help="SL-DETR config switches, KEY=VALUE")
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
        two_stage_num_proposals=args.num_queries, d_model=args.d_model, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, dropout=0.0,
        auxiliary_loss=True,
    )
    ddetr = DeformableDetrForObjectDetection(ddetr_config).to(device)
    overrides = {k: parse_value(v) for k, v in (item.split("=", 1) for item in args.config)}
    sl_detr = SlDetrForObjectDetection.from_deformable_detr(ddetr, box_type=args.box_type, **overrides).to(device)
    rotated = args.box_type == "rotated"
    print(f"device {device}, {torch.get_num_threads()} threads; {args.backbone}, {args.num_queries} queries, "
          f"batch {args.batch} x 3 x {args.size} x {args.size}, box_type {args.box_type}")
    print(f"parameters: Deformable DETR {sum(p.numel() for p in ddetr.parameters()) / 1e6:.2f} M, "
          f"SL-DETR {sum(p.numel() for p in sl_detr.parameters()) / 1e6:.2f} M")

    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)

    def labels_for(objects: int, rotated_boxes: bool) -> list[dict]:
        labels = make_labels(args.batch, objects, rotated_boxes, torch.Generator().manual_seed(1), device)
        for target in labels:
            del target["size"]  # Deformable DETR's loss does not take it; SL-DETR derives it from the image
        return labels

    if args.count_ops:
        sl_detr.train()
        for objects in args.objects:
            labels = labels_for(objects, rotated)
            network = count_ops(sl_detr, pixel_values, labels, with_loss=False)
            full = count_ops(sl_detr, pixel_values, labels, with_loss=True)
            print(f"{objects} objects/image: operator calls, forward + backward: network (loss replaced by a sum) "
                  f"{network}, with SlDetrLoss {full}; the loss adds {full - network} = "
                  f"{(full - network) / network:.0%} of the network's own")
        return

    timer = CriterionTimer(device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext())

    def inference(model) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(pixel_values)
        return run

    def training(model, labels) -> Callable[[], None]:
        def run() -> None:
            with autocast:
                outputs = model(pixel_values, labels=labels)
            outputs.loss.backward()
            model.zero_grad(set_to_none=True)
        return run

    def interleaved(runs: dict[str, Callable[[], None]]) -> dict[str, tuple[float, float, float]]:
        for run in runs.values():
            run()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        peaks: dict[str, list[float]] = {name: [] for name in runs}
        for repeat in range(args.repeat):
            order = list(runs) if repeat % 2 == 0 else list(reversed(runs))  # no first-runner advantage
            for name in order:
                seconds, mib = measure(runs[name], device)
                times[name].append(seconds)
                peaks[name].append(mib)
        return {name: (statistics.median(times[name]), min(times[name]), max(peaks[name])) for name in runs}

    rows = []
    ddetr.eval()
    sl_detr.eval()
    result = interleaved({"Deformable DETR": inference(ddetr), "SL-DETR": inference(sl_detr)})
    rows.append(("inference", result, ""))
    if not args.skip_training:
        ddetr.train()
        sl_detr.train()
        for objects in args.objects:
            runs = {"Deformable DETR": training(ddetr, labels_for(objects, False)),
                    "SL-DETR": training(sl_detr, labels_for(objects, rotated))}
            timer.criterion = timer.scipy = 0.0
            with timer.measuring():
                result = interleaved(runs)
            steps = args.repeat + 1  # the warm-up is measured too
            sl_total = result["SL-DETR"][0] * steps
            share = (f"criterion {timer.criterion / steps * 1000:.0f} ms/step = {timer.criterion / sl_total:.0%} of "
                     f"the step, of which scipy linear_sum_assignment {timer.scipy / steps * 1000:.0f} ms")
            rows.append((f"training step, {objects} objects/image{', bf16' if args.bf16 else ''}", result, share))

    print()
    print(f"times: median (min) of {args.repeat}; memory: peak growth over the phase; SL-DETR config overrides: "
          f"{overrides or 'none'}")
    print("| phase | Deformable DETR | SL-DETR | time ratio, median (min) | peak memory ratio | SL-DETR criterion |")
    print("| --- | --- | --- | --- | --- | --- |")
    for phase, result, share in rows:
        d_median, d_min, d_mem = result["Deformable DETR"]
        s_median, s_min, s_mem = result["SL-DETR"]
        print(f"| {phase} | {d_median * 1000:.0f} ({d_min * 1000:.0f}) ms, {d_mem:.0f} MiB | "
              f"{s_median * 1000:.0f} ({s_min * 1000:.0f}) ms, {s_mem:.0f} MiB | "
              f"{s_median / d_median:.3f} ({s_min / d_min:.3f}) | {s_mem / max(d_mem, 1e-9):.3f} | {share} |")


if __name__ == "__main__":
    main()
