#!/usr/bin/env python
"""`sl-detr demo`: the main job on the embedded synthetic dataset (train on CPU, evaluate, save, draw)."""

import sys

from sl_detr_hf.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
