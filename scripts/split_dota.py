#!/usr/bin/env python
"""`sl-detr split`: split a DOTA folder into overlapping patches."""

import sys

from sl_detr_hf.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["split", *sys.argv[1:]]))
