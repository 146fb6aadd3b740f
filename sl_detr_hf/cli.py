"""The ``sl-detr`` command: a registry of sub-commands, each in its own module with a ``main(argv) -> int``.

``sl-detr demo`` is the main job on the embedded default: it generates the synthetic oriented-object dataset,
trains a small SL-DETR on the CPU for a bounded time, evaluates it (DOTA mAP), saves the model folder, and
writes a PNG of predictions and a training-curve plot (:mod:`sl_detr_hf.commands.demo`).

A new command is one entry in :data:`COMMANDS`: its module (imported only when the command runs) and its help.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("sl_detr_hf.commands.demo",
             "generate synthetic data, train a small SL-DETR on CPU, evaluate, save, draw (the main job)"),
    "train": ("sl_detr_hf.commands.train",
              "train / fine-tune with Trainer (synthetic, DOTA, COCO or a datasets folder)"),
    "evaluate": ("sl_detr_hf.commands.evaluate", "full-size DOTA evaluation: split, predict, merge, mAP, Task1 files"),
    "predict": ("sl_detr_hf.commands.predict",
                "images, a folder or whole scenes -> JSON, PNGs with oriented boxes drawn, GeoJSON for GeoTIFFs"),
    "split": ("sl_detr_hf.commands.split", "split a DOTA folder into overlapping patches"),
    "make-synthetic": ("sl_detr_hf.commands.make_synthetic",
                       "write the synthetic oriented-object dataset in DOTA format"),
    "push": ("sl_detr_hf.commands.push", "push a model folder to the Hugging Face Hub with a generated model card"),
    "export": ("sl_detr_hf.commands.export", "export a model to ONNX (onnxruntime, no PyTorch needed to run it)"),
    "convert": ("sl_detr_hf.commands.convert",
                "convert a RHINO / mmdetection DINO / Deformable DETR checkpoint to an SL-DETR folder"),
}
"""``name -> (module with a main(argv) -> int, one-line help)``."""

# Names that lived in this module before the commands got their own modules (notebooks and scripts import them).
_MOVED = {
    "tiny_config_kwargs": "sl_detr_hf.commands._common", "TimeLimitCallback": "sl_detr_hf.commands._common",
    "plot_training_curves": "sl_detr_hf.commands._common", "DemoArguments": "sl_detr_hf.commands.demo",
    "run_demo": "sl_detr_hf.commands.demo", "draw_demo_predictions": "sl_detr_hf.commands.demo",
    "ModelArguments": "sl_detr_hf.commands.train", "DataArguments": "sl_detr_hf.commands.train",
    "run_train": "sl_detr_hf.commands.train", "run_evaluate": "sl_detr_hf.commands.evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """``sl-detr <command> [options]``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sl-detr <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:15s} {text}")
        print("\nRun `sl-detr <command> --help` for a command's options.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"sl-detr: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return importlib.import_module(COMMANDS[command][0]).main(rest) or 0


if __name__ == "__main__":
    raise SystemExit(main())
