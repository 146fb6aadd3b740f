"""Grayscale training images as one channel against three, side by side in one run.

    python benchmarks/grayscale_data.py --data DOTA_FOLDER [--image_size 640] [--images 80] [--rounds 3]

Times `sl-detr train`'s data path per training example (decode, copy-paste, flips / quarter turns / colour jitter
through `RotatedDetectionAugment`, `SlDetrImageProcessor`; one process, torch's threads) on the first ``--images``
rows of a DOTA folder of grayscale images (HIT-UAV's thermal frames are RGB JPEGs with three equal channels), in two
forms taking turns over ``--rounds``: as the package does it (a grey image decoded to one channel, three only for
the processor) and as before (every image decoded to RGB). Prints the best milliseconds per example of each, and
their ratio. Each round draws the same augmentation (the same torch seed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import sl_detr_hf.training.data as training_data
from sl_detr_hf.data import RotatedDetectionAugment, load_dota
from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
from sl_detr_hf.training import prepare_dataset


def per_example_ms(dataset, rows: list[int], batch: int = 4) -> float:
    """Milliseconds per example to fetch ``rows`` of a `prepare_dataset` dataset in batches."""
    torch.manual_seed(0)
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        dataset[rows[i:i + batch]]
    return (time.perf_counter() - start) * 1000 / len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a DOTA folder of grayscale images")
    parser.add_argument("--image_size", type=int, default=640)
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copy_paste", type=float, default=1.0)
    args = parser.parse_args(argv)

    raw = load_dota(args.data)
    processor = SlDetrImageProcessor(size={"shortest_edge": args.image_size, "longest_edge": args.image_size})
    dataset = prepare_dataset(raw, processor, augment=RotatedDetectionAugment(), copy_paste=args.copy_paste)
    rows = list(range(min(args.images, len(raw))))
    one_channel = training_data.open_image

    def three_channels(source, gray=False):  # the data path before: every image decoded to RGB
        return one_channel(source)

    times: dict[str, list[float]] = {"one channel (the package)": [], "three channels (before)": []}
    per_example_ms(dataset, rows[:8])  # warm-up
    for _ in range(args.rounds):
        for name, opener in zip(times, (one_channel, three_channels)):
            training_data.open_image = opener
            try:
                times[name].append(per_example_ms(dataset, rows))
            finally:
                training_data.open_image = one_channel
    print(f"{len(rows)} examples of {args.data} at {args.image_size} px, copy-paste {args.copy_paste}, "
          f"torch threads {torch.get_num_threads()}, {args.rounds} rounds (best):")
    for name, values in times.items():
        print(f"  {name:28s} {min(values):6.1f} ms per example  (rounds: {', '.join(f'{v:.1f}' for v in values)})")
    one, three = (min(values) for values in times.values())
    print(f"  three / one channel: {three / one:.2f}x")


if __name__ == "__main__":
    main()
