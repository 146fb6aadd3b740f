"""``sl-detr convert``: a checkpoint of another detector -> an SL-DETR ``from_pretrained`` folder.

    sl-detr convert rhino CHECKPOINT OUTPUT_DIR [--config CONFIG] [--trust-checkpoint]
    sl-detr convert dino CHECKPOINT OUTPUT_DIR [--config CONFIG] [--trust-checkpoint]
    sl-detr convert deformable-detr SOURCE OUTPUT_DIR [--box-type rotated|horizontal] [--classes ...] [--dino]

``rhino``: a RHINO (mmrotate) checkpoint -> rotated SL-DETR (``sl_detr_hf.convert.rhino``); ``dino``: an
mmdetection 3.x DINO checkpoint -> horizontal SL-DETR (``sl_detr_hf.convert.mmdet_dino``). Their checkpoint is an
mmengine ``.pth``, a torch state dict or a ``.safetensors`` state dict; a refused checkpoint or config exits with
status 2 and one line saying why. ``deformable-detr``: a transformers Deformable DETR folder or Hub id -> SL-DETR
(``sl_detr_hf.convert.deformable_detr``), printing the report of copied / new / skipped keys; the folder saved
loads with ``AutoModelForObjectDetection.from_pretrained(OUTPUT_DIR, trust_remote_code=True)`` also where
``sl_detr_hf`` is not installed.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["DESCRIPTION", "build_parser", "main"]

DESCRIPTION = "convert a RHINO / mmdetection DINO / Deformable DETR checkpoint to an SL-DETR folder"

_SOURCES = {
    "rhino": "a RHINO (mmrotate) checkpoint -> rotated SL-DETR",
    "dino": "an mmdetection 3.x DINO checkpoint -> horizontal SL-DETR",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``sl-detr convert`` parser: one sub-command per source."""
    parser = argparse.ArgumentParser(prog="sl-detr convert", description=DESCRIPTION)
    sources = parser.add_subparsers(dest="kind", required=True, metavar="{rhino,dino,deformable-detr}")
    for name, text in _SOURCES.items():
        sub = sources.add_parser(name, help=text, description=f"Convert {text} (mmengine .pth or a safetensors "
                                 "state dict) to an SL-DETR `from_pretrained` folder.")
        sub.add_argument("checkpoint", help="mmengine .pth checkpoint, torch state dict or .safetensors file")
        sub.add_argument("output_dir", help="folder to write (safetensors, config.json, preprocessor_config.json)")
        sub.add_argument("--config", help="the model's mmengine config (.py, with _base_) or a JSON dump; default: "
                         "the checkpoint's meta['cfg']")
        sub.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects besides "
                         "tensors (mmengine's training state); unpickling may run code named in the file")
    _add_deformable_detr(sources)
    return parser


def _add_deformable_detr(sources: argparse._SubParsersAction) -> None:
    from ..convert.deformable_detr import CLASS_CHOICES

    sub = sources.add_parser(
        "deformable-detr", help="a transformers Deformable DETR -> SL-DETR (shared weights copied, angle heads new)",
        description="Initialize SL-DETR from a transformers Deformable DETR (every shared weight copied; the new angle "
        "heads start at theta = 0; another class list than the source's starts the class heads afresh) and save it "
        "with its code files. The DINO / RHINO parts are off, so that it computes what the source computed.")
    sub.add_argument("source", help="Deformable DETR folder or Hub id (e.g. "
                     "SenseTime/deformable-detr-with-box-refine-two-stage; a Hub id needs the network)")
    sub.add_argument("output_dir", help="folder to write (safetensors, config.json and the model's code files)")
    sub.add_argument("--box-type", default="rotated", choices=["rotated", "horizontal"])
    sub.add_argument("--classes", default="source", choices=CLASS_CHOICES,
                     help="class list of the converted model (default: keep the source's)")
    sub.add_argument("--dino", action="store_true", help="keep SlDetrConfig's DINO / RHINO parts (denoising, mixed "
                     "query selection, look forward twice, rotated sampling) instead of Deformable DETR's behaviour")


def _convert_deformable_detr(args: argparse.Namespace) -> int:
    from ..convert.deformable_detr import convert_deformable_detr, deformable_detr_overrides

    model, report = convert_deformable_detr(args.source, box_type=args.box_type, return_report=True,
                                            **deformable_detr_overrides(args.classes, args.dino))
    print(report)
    model.save_pretrained(args.output_dir)
    print(f"saved {args.box_type} SL-DETR ({model.config.num_labels} classes) to {args.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``sl-detr convert SOURCE ...``: convert and write the folder; returns the exit status (a refused checkpoint
    or config exits through argparse with status 2)."""
    from ..convert import CheckpointError
    from ..convert.common import convert_checkpoint
    from ..convert.mmdet_dino import MMDET_DINO_SPEC
    from ..convert.rhino import RHINO_SPEC

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.kind == "deformable-detr":
        return _convert_deformable_detr(args)
    spec = {"rhino": RHINO_SPEC, "dino": MMDET_DINO_SPEC}[args.kind]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        converted = convert_checkpoint(spec, args.checkpoint, args.output_dir, args.config, args.trust_checkpoint)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    config = converted.model.config
    print(f"wrote {args.output_dir}: {spec.name} -> SL-DETR ({config.box_type}, {config.num_labels} classes, "
          f"{config.num_queries} queries, {len(converted.used)} tensors, {len(converted.ignored)} ignored)")
    return 0
