#!/usr/bin/env python
"""Images or a folder -> predictions.json and PNGs with the oriented boxes drawn, and GeoJSON for georeferenced
rasters (see `sl_detr_hf.commands.predict`)."""

from sl_detr_hf.commands.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
