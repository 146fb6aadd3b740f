#!/usr/bin/env python
"""`sl-detr make-synthetic`: write the synthetic oriented-object dataset in DOTA format."""

import sys

from sl_detr_hf.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["make-synthetic", *sys.argv[1:]]))
