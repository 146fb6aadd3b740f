"""Where a training step's time goes on real 608 px images, and what removing the waste gains.

Each configuration runs in its own process (the allocator setting is process-wide): the tiny model of ``sl-detr
train``, batches from a DOTA-format folder through the same augmentation and image processor as training, AdamW
with the gradient clip; a warm-up step, then ``--steps`` timed steps. It prints seconds per step, training images
per second, the process's user and kernel CPU seconds and its minor page faults over the timed steps, the data
loading (decode + augment + resize + collate) per batch, and with ``--profile`` torch.profiler's top operators.

    python benchmarks/real_step_cost.py                                    # ../shared/data/airport-train, 608 px
    python benchmarks/real_step_cost.py --threads 1 --configs today,no_stride8
    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/real_step_cost.py --threads 1   # one core, nothing else on it

Configurations (``--configs``, comma-separated):
- ``before``: the defaults before issue 20: stride 8, 16, 32 levels (stage2-4), glibc's default allocator;
- ``allocator``: the same model, with `keep_freed_memory` (no mmap per tensor, no heap trimming);
- ``today``: the allocator fix and stride 16, 32 levels (stage3, stage4), in float32;
- ``bf16``: the same under bf16 autocast, as ``sl-detr train`` trains on a CPU with bf16 in hardware (the losses
  in float32, `sl_detr_hf/precision_sl_detr.py`);
- ``stride8_values``, ``stride8_values_bf16``: stride 8 as value-only level (``--backbone_stages
  stage2,stage3,stage4 --config value_only_levels=1``), float32 / bf16;
- ``grid_sample``, ``grid_sample_bf16``: ``today`` / ``bf16`` with transformers' grid_sample form of the deformable
  attention's sampling instead of the gather the model installs (`sl_detr_hf/deformable_sampling_sl_detr.py`).

    python benchmarks/real_step_cost.py --data $HIT_TRAIN --image_size 640 --batch 4 --configs today,bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "airport-train"
CONFIGS = {
    "before": {"stages": "stage2,stage3,stage4", "allocator": False},
    "allocator": {"stages": "stage2,stage3,stage4", "allocator": True},
    "today": {"stages": "stage3,stage4", "allocator": True},
    "bf16": {"stages": "stage3,stage4", "allocator": True, "bf16": True},
    "stride8_values": {"stages": "stage2,stage3,stage4", "allocator": True, "config": "value_only_levels=1"},
    "stride8_values_bf16": {"stages": "stage2,stage3,stage4", "allocator": True, "config": "value_only_levels=1",
                            "bf16": True},
    "grid_sample": {"stages": "stage3,stage4", "allocator": True, "grid_sample": True},
    "grid_sample_bf16": {"stages": "stage3,stage4", "allocator": True, "bf16": True, "grid_sample": True},
}


def run_one(data: Path, name: str, image_size: int, batch: int, steps: int, threads: int, profile: bool) -> dict:
    """One configuration, in this process."""
    import torch

    from sl_detr_hf.commands.train import ModelArguments, build_model, most_objects_per_image
    from sl_detr_hf.data import RotatedDetectionAugment, load_dota
    from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
    from sl_detr_hf.training import make_collator, prepare_dataset
    from sl_detr_hf.training.allocator import keep_freed_memory

    config = CONFIGS[name]
    if threads:
        torch.set_num_threads(threads)
    if config["allocator"]:
        keep_freed_memory()
    raw = load_dota(data)
    names = list(raw.features["objects"]["category"].feature.names)
    model_args = ModelArguments(backbone_stages=config["stages"], config=config.get("config", ""))
    model = build_model(model_args, names, seed=0, most_objects=most_objects_per_image(raw))
    if config.get("grid_sample"):
        from sl_detr_hf.deformable_sampling_sl_detr import use_grid_sample_sampling

        use_grid_sample_sampling(model)
    processor = SlDetrImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size},
                                     max_detections=model.config.max_detections)
    dataset = prepare_dataset(raw, processor, "rotated", RotatedDetectionAugment())
    collate = make_collator("rotated")
    start = time.perf_counter()
    batches = [collate([dataset[i] for i in range(j * batch, (j + 1) * batch)]) for j in range(steps + 1)]
    data_seconds = (time.perf_counter() - start) / (steps + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(inputs) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.get("bf16", False)):
            out = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"],
                        labels=inputs["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad()

    step(batches[0])  # warm-up
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for inputs in batches[1:]:
        step(inputs)
    seconds = (time.perf_counter() - start) / steps
    after = resource.getrusage(resource.RUSAGE_SELF)
    shapes = [image_size // 2 ** (int(stage[-1]) + 1) for stage in config["stages"].split(",")]  # stageN: 2^(N+1)
    result = {"config": name, "stages": config["stages"], "allocator": config["allocator"],
              "bf16": config.get("bf16", False),
              "encoder_tokens": sum(side * side for side in shapes), "step_s": seconds,
              "train_images_per_s": batch / seconds, "data_s_per_batch": data_seconds,
              "user_s_per_step": (after.ru_utime - before.ru_utime) / steps,
              "kernel_s_per_step": (after.ru_stime - before.ru_stime) / steps,
              "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps}
    if profile:
        with torch.profiler.profile() as prof:
            step(batches[1])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--configs", default="before,allocator,today")
    parser.add_argument("--image_size", type=int, default=608)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one config in this process
    args = parser.parse_args(argv)
    if not (args.data / "images").is_dir():
        print(f"no DOTA-format folder at {args.data}: the real data of ../shared/data is not on this machine; "
              "pass --data", file=sys.stderr)
        return 2
    if args.one:
        result = run_one(args.data, args.one, args.image_size, args.batch, args.steps, args.threads, args.profile)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    rows = []
    for name in args.configs.split(","):
        command = [sys.executable, __file__, "--one", name, "--data", str(args.data), "--image_size",
                   str(args.image_size), "--batch", str(args.batch), "--steps", str(args.steps), "--threads",
                   str(args.threads)] + (["--profile"] if args.profile else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        print("\n".join(line for line in out.splitlines() if not line.startswith("RESULT ")), flush=True)
        rows.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    print(f"\n{'config':20s} {'tokens':>7s} {'s/step':>7s} {'img/s':>6s} {'user s':>7s} {'kernel s':>8s} "
          f"{'faults':>9s} {'data s':>7s}  (per step of {args.batch} images at {args.image_size} px)")
    for r in rows:
        print(f"{r['config']:20s} {r['encoder_tokens']:7d} {r['step_s']:7.2f} {r['train_images_per_s']:6.2f} "
              f"{r['user_s_per_step']:7.2f} {r['kernel_s_per_step']:8.2f} {r['minor_faults_per_step']:9.0f} "
              f"{r['data_s_per_batch']:7.2f}")
    if len(rows) > 1:
        print(f"\n{rows[-1]['config']} / {rows[0]['config']}: training images/s "
              f"x{rows[-1]['train_images_per_s'] / rows[0]['train_images_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
