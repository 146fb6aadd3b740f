#!/usr/bin/env python
"""`sl-detr train`: train / fine-tune with Trainer (synthetic, DOTA, COCO or a datasets folder)."""

import sys

from sl_detr_hf.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
