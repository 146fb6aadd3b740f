"""``sl-detr split``: split a DOTA folder into overlapping patches (single- or multi-scale)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

DESCRIPTION = "split a DOTA folder into overlapping patches"


def main(argv: Sequence[str]) -> int:
    """``sl-detr split``: DOTA folder -> patches folder (single- or multi-scale)."""
    from ..data import split_dota

    parser = argparse.ArgumentParser(prog="sl-detr split", description=DESCRIPTION)
    parser.add_argument("src", help="DOTA folder with images/ and labelTxt/")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--gaps", type=int, nargs="+", default=[200])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0],
                        help="multi-scale: 0.5 1.0 1.5 (with --gaps 500)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: in this process)")
    args = parser.parse_args(argv)
    if not (Path(args.src) / "images").is_dir():
        parser.error(f"{args.src} has no images/ folder")
    if any(r <= 0 for r in args.rates):
        parser.error(f"--rates must be > 0, got {args.rates}")
    try:
        summary = split_dota(args.src, args.dst, sizes=tuple(args.sizes), gaps=tuple(args.gaps),
                             rates=tuple(args.rates), num_workers=args.workers)
    except ValueError as err:  # the source as destination, sizes not above their gaps
        parser.error(str(err))
    print(summary)
    return 0
