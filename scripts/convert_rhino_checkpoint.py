"""Convert a RHINO checkpoint to an SL-DETR folder: `python scripts/convert_rhino_checkpoint.py CHECKPOINT OUTPUT_DIR
[--config CONFIG] [--trust-checkpoint]`, the same as `sl-detr convert rhino ...` (`sl_detr_hf.commands.convert`)."""

import sys

from sl_detr_hf.commands.convert import main

if __name__ == "__main__":
    sys.exit(main(["rhino", *sys.argv[1:]]))
