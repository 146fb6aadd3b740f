#!/usr/bin/env python
"""Images or a folder -> predictions.json and PNGs with the oriented boxes drawn (see `sl_detr_hf.inference`)."""

from sl_detr_hf.inference import main

if __name__ == "__main__":
    raise SystemExit(main())
