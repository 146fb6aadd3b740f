"""Initialize SL-DETR from a Deformable DETR checkpoint and save it (safetensors, with its code files): the same as
`sl-detr convert deformable-detr ...` (`sl_detr_hf.commands.convert`, `sl_detr_hf.convert.deformable_detr`).

    python scripts/convert_deformable_detr.py SOURCE OUTPUT_DIR [--box-type rotated|horizontal]
                                              [--classes source|dota-1.0|dota-1.5|dota-2.0] [--dino]
"""

import sys

from sl_detr_hf.commands.convert import main

if __name__ == "__main__":
    status = main(["deformable-detr", *sys.argv[1:]])
    if status:
        sys.exit(status)
