"""Initialize SL-DETR from a Deformable DETR checkpoint and save it (safetensors, with its code files).

    python scripts/convert_deformable_detr.py SOURCE OUTPUT_DIR [--box-type rotated|horizontal]
                                              [--classes source|dota-1.0|dota-1.5|dota-2.0] [--dino]

SOURCE is a folder saved with `save_pretrained` or a Hub id such as
`SenseTime/deformable-detr-with-box-refine-two-stage` (needs the Hub). Every shared weight is copied; the new angle
heads start so that the initial angle is 0; with another class list than the source's (`--classes dota-1.0`), the
class heads are newly initialized. The DINO / RHINO switches are off in the converted config (no denoising,
Deformable DETR's two-stage queries, no look forward twice, unrotated sampling, encoder loss on all tokens), so
that it computes what the source computed; `--dino` keeps SlDetrConfig's defaults for them instead (new query
selection and denoising layers). Prints the report of copied / new / skipped keys. The saved folder loads with
`AutoModelForObjectDetection.from_pretrained(OUTPUT_DIR, trust_remote_code=True)`, also where `sl_detr_hf` is not
installed.
"""

from __future__ import annotations

import argparse

from sl_detr_hf import DOTA_CLASSES, SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.modeling_sl_detr import DEFORMABLE_DETR_SWITCHES

_CLASS_CHOICES = ("source", *(f"dota-{version}" for version in DOTA_CLASSES))


def main(argv: list[str] | None = None) -> SlDetrForObjectDetection:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="Deformable DETR folder or Hub id")
    parser.add_argument("output_dir")
    parser.add_argument("--box-type", default="rotated", choices=["rotated", "horizontal"])
    parser.add_argument("--classes", default="source", choices=_CLASS_CHOICES,
                        help="class list of the converted model (default: keep the source's)")
    parser.add_argument("--dino", action="store_true",
                        help="keep SlDetrConfig's DINO / RHINO defaults (denoising, mixed query selection, look "
                             "forward twice, rotated sampling) instead of Deformable DETR's behaviour")
    args = parser.parse_args(argv)

    overrides = {}
    if args.dino:
        defaults = SlDetrConfig()
        overrides.update({key: getattr(defaults, key) for key in DEFORMABLE_DETR_SWITCHES})
    if args.classes != "source":
        overrides["id2label"] = dict(enumerate(DOTA_CLASSES[args.classes.removeprefix("dota-")]))
    model, report = SlDetrForObjectDetection.from_deformable_detr(
        args.source, box_type=args.box_type, return_report=True, **overrides
    )
    print(report)
    model.save_pretrained(args.output_dir)
    print(f"saved {args.box_type} SL-DETR ({model.config.num_labels} classes) to {args.output_dir}")
    return model


if __name__ == "__main__":
    main()
