"""Convert an mmdetection DINO checkpoint to an SL-DETR folder: `python scripts/convert_mmdet_dino_checkpoint.py
CHECKPOINT OUTPUT_DIR [--config CONFIG] [--trust-checkpoint]`, the same as `sl-detr convert dino ...`
(`sl_detr_hf.commands.convert`)."""

import sys

from sl_detr_hf.commands.convert import main

if __name__ == "__main__":
    sys.exit(main(["dino", *sys.argv[1:]]))
