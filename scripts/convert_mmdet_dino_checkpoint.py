"""Convert a checkpoint to an SL-DETR folder: `python scripts/convert_mmdet_dino_checkpoint.py CHECKPOINT OUTPUT_DIR
[--config CONFIG] [--trust-checkpoint]` (see `sl_detr_hf.convert.mmdet_dino`)."""

import sys

from sl_detr_hf.convert.mmdet_dino import main

if __name__ == "__main__":
    sys.exit(main())
