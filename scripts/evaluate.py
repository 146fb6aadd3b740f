#!/usr/bin/env python
"""`sl-detr evaluate`: full-size DOTA evaluation: split, predict, merge, mAP, Task1 files."""

import sys

from sl_detr_hf.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
