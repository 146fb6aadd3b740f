"""``sl-detr convert``: a checkpoint of another detector -> an SL-DETR ``from_pretrained`` folder.

    sl-detr convert rhino CHECKPOINT OUTPUT_DIR [--config CONFIG] [--trust-checkpoint]
    sl-detr convert dino CHECKPOINT OUTPUT_DIR [--config CONFIG] [--trust-checkpoint]

``rhino``: a RHINO (mmrotate) checkpoint -> rotated SL-DETR (``sl_detr_hf.convert.rhino``); ``dino``: an
mmdetection 3.x DINO checkpoint -> horizontal SL-DETR (``sl_detr_hf.convert.mmdet_dino``). The checkpoint is an
mmengine ``.pth``, a torch state dict or a ``.safetensors`` state dict; a refused checkpoint or config exits with
status 2 and one line saying why.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["DESCRIPTION", "build_parser", "main"]

DESCRIPTION = "convert a RHINO / mmdetection DINO checkpoint to an SL-DETR folder"

_SOURCES = {
    "rhino": "a RHINO (mmrotate) checkpoint -> rotated SL-DETR",
    "dino": "an mmdetection 3.x DINO checkpoint -> horizontal SL-DETR",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``sl-detr convert`` parser: one sub-command per source."""
    parser = argparse.ArgumentParser(prog="sl-detr convert", description=DESCRIPTION)
    sources = parser.add_subparsers(dest="source", required=True, metavar="{" + ",".join(_SOURCES) + "}")
    for name, text in _SOURCES.items():
        sub = sources.add_parser(name, help=text, description=f"Convert {text} (mmengine .pth or a safetensors "
                                 "state dict) to an SL-DETR `from_pretrained` folder.")
        sub.add_argument("checkpoint", help="mmengine .pth checkpoint, torch state dict or .safetensors file")
        sub.add_argument("output_dir", help="folder to write (safetensors, config.json, preprocessor_config.json)")
        sub.add_argument("--config", help="the model's mmengine config (.py, with _base_) or a JSON dump; default: "
                         "the checkpoint's meta['cfg']")
        sub.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects besides "
                         "tensors (mmengine's training state); unpickling may run code named in the file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``sl-detr convert SOURCE ...``: convert and write the folder; returns the exit status (a refused checkpoint
    or config exits through argparse with status 2)."""
    from ..convert import CheckpointError
    from ..convert.common import convert_checkpoint
    from ..convert.mmdet_dino import MMDET_DINO_SPEC
    from ..convert.rhino import RHINO_SPEC

    parser = build_parser()
    args = parser.parse_args(argv)
    spec = {"rhino": RHINO_SPEC, "dino": MMDET_DINO_SPEC}[args.source]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        converted = convert_checkpoint(spec, args.checkpoint, args.output_dir, args.config, args.trust_checkpoint)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    config = converted.model.config
    print(f"wrote {args.output_dir}: {spec.name} -> SL-DETR ({config.box_type}, {config.num_labels} classes, "
          f"{config.num_queries} queries, {len(converted.used)} tensors, {len(converted.ignored)} ignored)")
    return 0
