"""``sl-detr push``: upload a saved SL-DETR folder to the Hugging Face Hub with its code, pipeline code and a
generated model card (``sl_detr_hf.hub``), or write those files to a folder (``--local-dir``).

    sl-detr push MODEL_DIR USER_OR_ORG/NAME [--metrics NAME=VALUE|FILE.json ...] [--dataset-name NAME] [--private]
                 [--token TOKEN] [--commit-message TEXT] [--revision BRANCH] [--local-dir FOLDER]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DESCRIPTION", "build_parser", "main"]

DESCRIPTION = ("Upload a saved SL-DETR folder to the Hugging Face Hub with its code, pipeline code and a generated "
               "model card (metrics, dataset, class names, usage).")


def _parse_metrics(values: list[str], parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    """`name=value` pairs and/or JSON files of `{name: value}` -> a metrics dict."""
    metrics: dict[str, Any] = {}
    for item in values:
        if "=" in item:
            name, value = item.split("=", 1)
            try:
                metrics[name] = float(value)
            except ValueError:
                metrics[name] = value
        elif Path(item).is_file():
            try:
                data = json.loads(Path(item).read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                parser.error(f"--metrics {item} is not valid JSON: {err}")
            if not isinstance(data, dict):
                parser.error(f"--metrics {item} must hold a JSON object of name: value")
            metrics.update(data)
        else:
            parser.error(f"--metrics {item!r} is neither name=value nor an existing JSON file")
    return metrics or None


def build_parser() -> argparse.ArgumentParser:
    """The ``sl-detr push`` command line (also ``scripts/push_to_hub.py``)."""
    parser = argparse.ArgumentParser(prog="sl-detr push", description=DESCRIPTION)
    parser.add_argument("model_dir", help="a saved model folder (config.json, model.safetensors, ...)")
    parser.add_argument("repo_id", help="the Hub repository, user_or_org/name (created if missing)")
    parser.add_argument("--metrics", nargs="*", default=[], metavar="NAME=VALUE|FILE.json",
                        help="metrics for the card (default: the folder's eval_results.json / all_results.json)")
    parser.add_argument("--dataset-name", default=None, help="the training / evaluation data, for the card")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one, or HF_TOKEN)")
    parser.add_argument("--commit-message", default="Upload SL-DETR model")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--local-dir", default=None,
                        help="only write the files that would be uploaded to this folder; no upload")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``sl-detr push`` (and ``scripts/push_to_hub.py``); returns the exit status (0).

    Bad paths and arguments exit through `argparse` (status 2, with a message); upload errors exit with status 1
    and a one-line message.
    """
    from ..hub import check_model_folder, load_metrics, push_to_hub, save_for_hub
    from ..image_processing_sl_detr import SlDetrImageProcessor
    from ..modeling_sl_detr import SlDetrForObjectDetection

    parser = build_parser()
    args = parser.parse_args(argv)
    folder = Path(args.model_dir)
    if not folder.is_dir():
        parser.error(f"model_dir {folder} is not a folder")
    if not (folder / "config.json").is_file():
        parser.error(f"model_dir {folder} is not a saved model folder (no config.json)")
    try:
        check_model_folder(folder)
    except ValueError as err:
        parser.error(f"model_dir {err}")
    if args.repo_id.count("/") > 1 or not args.repo_id.strip("/") or " " in args.repo_id:
        parser.error(f"repo_id must look like user_or_org/name, got {args.repo_id!r}")
    metrics = _parse_metrics(args.metrics, parser)
    if args.local_dir is not None:
        if Path(args.local_dir).is_file():
            parser.error(f"--local-dir {args.local_dir} is a file")
        model = SlDetrForObjectDetection.from_pretrained(folder)
        processor = (SlDetrImageProcessor.from_pretrained(folder)
                     if (folder / "preprocessor_config.json").is_file() else None)
        files = save_for_hub(model, processor, args.local_dir, metrics=metrics if metrics else load_metrics(folder),
                             dataset_name=args.dataset_name, repo_id=args.repo_id)
        print(f"wrote {len(files)} files to {args.local_dir}: {', '.join(files)}")
        return 0
    try:
        info = push_to_hub(folder, args.repo_id, metrics=metrics, dataset_name=args.dataset_name,
                           private=args.private, token=args.token, commit_message=args.commit_message,
                           revision=args.revision)
    except Exception as err:  # network, authentication, permissions: one clear line, no traceback
        print(f"{parser.prog}: error: upload to {args.repo_id} failed: {type(err).__name__}: {err}",
              file=sys.stderr)
        return 1
    print(f"uploaded to {getattr(info, 'commit_url', None) or args.repo_id}")
    return 0
