"""The data loader's share of the demo's training step, measured side by side in one run.

    python benchmarks/data_loader.py [--images 200] [--steps 40] [--batch 4] [--workers 0 1] [--threads 0]
    python benchmarks/data_loader.py --workers 0 --configs "" "backbone_norm=frozen,backbone_frozen_stages=1"

Builds the demo's data path (synthetic 256 px DOTA images decoded from PNG, flips and 90-degree turns through
`RotatedDetectionAugment`, `SlDetrImageProcessor`, the collator) and the demo's model (`sl-detr demo`'s
defaults), then runs ``--steps`` training steps per worker setting (forward with labels, backward, AdamW step),
timing separately the wait for the next batch and the step itself. It prints, per setting, the median milliseconds
per step of each part, the loader's share of the whole and the steps per second; and, without a model, what one
batch costs in the loader's parts (decode, augment, image processor) in this process.

``--configs`` compares demo models (``sl-detr demo --config`` strings; ``""`` is the defaults): each worker
setting runs every model in turn, twice over (A B A B), and the table gives the mean of the two medians and each
model's step time relative to the first's.

With ``--workers 0`` (the default below 4 CPUs, `sl_detr_hf.commands._common.default_num_workers`) the batch is
made in the training process, so its time adds to the step; with workers it is made beside the step, which then
competes with it for the cores.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import torch

from sl_detr_hf.commands.demo import DemoArguments, demo_parts
from sl_detr_hf.data import load_dota, make_synthetic_dota
from sl_detr_hf.data.images import open_image
from sl_detr_hf.training import DetectionTransform, make_collator, prepare_dataset


def loader_parts(raw, processor, augment, batch: int, repeat: int = 3) -> dict[str, float]:
    """Milliseconds per batch of each part of the in-process data path (best of ``repeat`` passes over the rows).

    Timed through the training path itself (`DetectionTransform`): decoding alone, the whole path without
    augmentation and with it; the augmentation and the image processor are the differences.
    """
    rows = raw.cast_column("image", datasets.Image(decode=False))
    items = [rows[i : i + 1] for i in range(len(rows))]  # one-row batches, as `with_transform` hands them over
    paths = {"decode": lambda row: open_image(row["image"][0]),
             "decode + processor": DetectionTransform(processor),
             "decode + augment + processor": DetectionTransform(processor, augment=augment)}
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(repeat):
        for key, path in paths.items():
            start = time.perf_counter()
            for row in items:
                path(row)
            best[key] = min(best[key], (time.perf_counter() - start) * 1000 / len(items) * batch)
    return {"decode": best["decode"],
            "augment": best["decode + augment + processor"] - best["decode + processor"],
            "image processor": best["decode + processor"] - best["decode"]}


def run_steps(model, dataset, collator, batch: int, workers: int, steps: int) -> dict[str, float]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collator,
                                         num_workers=workers, persistent_workers=workers > 0, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    waits, computes = [], []
    iterator = iter(loader)
    for step in range(steps + 3):  # the first 3 steps warm up (allocator, worker start) and are not counted
        start = time.perf_counter()
        try:
            inputs = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            inputs = next(iterator)
        waited = time.perf_counter()
        loss = model(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"], labels=inputs["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        if step >= 3:
            waits.append(waited - start)
            computes.append(done - waited)
    wait, compute = statistics.median(waits) * 1000, statistics.median(computes) * 1000
    total = statistics.mean(w + c for w, c in zip(waits, computes)) * 1000
    return {"wait": wait, "compute": compute, "share": wait / (wait + compute), "steps_per_s": 1000 / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--configs", nargs="+", default=[""],
                        help="demo models to compare, as `sl-detr demo --config` strings ('' = the defaults)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_dota(Path(tmp) / "train", num_images=args.images, image_size=256, seed=0)
        raw = load_dota(root)
        names = raw.features["objects"]["category"].feature.names
        models = {}
        for config in args.configs:
            torch.manual_seed(0)
            models[config], processor, augment, _ = demo_parts(DemoArguments(config=config), dict(enumerate(names)))
        dataset = prepare_dataset(raw, processor, "rotated", augment)
        first = models[args.configs[0]]
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} of 256 px, "
              f"demo model {sum(p.numel() for p in first.parameters()) / 1e6:.2f} M parameters")
        parts = loader_parts(raw, processor, augment, args.batch)
        print("in-process loader, ms per batch: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
              + f" (sum {sum(parts.values()):.1f})")
        print("| model (--config) | workers | loader wait (ms, median) | step compute (ms, median) | loader share "
              "| steps / s | step time vs the first model |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        rounds = 2 if len(args.configs) > 1 else 1
        for workers in args.workers:
            results: dict[str, list[dict]] = {config: [] for config in args.configs}
            for _ in range(rounds):
                for config, model in models.items():
                    results[config].append(run_steps(model, dataset, make_collator("rotated"), args.batch, workers,
                                                     args.steps))
            means = {config: {key: statistics.mean(r[key] for r in runs) for key in runs[0]}
                     for config, runs in results.items()}
            base = means[args.configs[0]]["wait"] + means[args.configs[0]]["compute"]
            for config, r in means.items():
                ratio = (r["wait"] + r["compute"]) / base
                print(f"| {config or 'defaults'} | {workers} | {r['wait']:.1f} | {r['compute']:.1f} | {r['share']:.1%} "
                      f"| {r['steps_per_s']:.2f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
