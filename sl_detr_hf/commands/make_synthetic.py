"""``sl-detr make-synthetic``: write the synthetic oriented-object dataset in DOTA format."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]

DESCRIPTION = "write the synthetic oriented-object dataset in DOTA format"


def main(argv: Sequence[str]) -> int:
    """``sl-detr make-synthetic``: write the synthetic DOTA-format dataset."""
    from ..data import make_synthetic_dota

    parser = argparse.ArgumentParser(prog="sl-detr make-synthetic", description=DESCRIPTION)
    parser.add_argument("root", help="output folder")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error("--num_images must be >= 1")
    root = make_synthetic_dota(args.root, num_images=args.num_images, image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.num_images} images to {root}")
    return 0
