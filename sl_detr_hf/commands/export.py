"""``sl-detr export``: an SL-DETR model -> one ONNX file that runs in onnxruntime without PyTorch
(``sl_detr_hf.export_onnx``: the graph, the fixed input size, the post-processing outputs, the stored settings).

    sl-detr export --model FOLDER_OR_HUB_ID --output model.onnx [--image-size H W] [--opset N] [--with-postprocess]
                   [--top-k K] [--trust-remote-code]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DESCRIPTION", "build_parser", "main"]

DESCRIPTION = "Export an SL-DETR model to ONNX."


def _load(model_id: str, trust_remote_code: bool) -> tuple[Any, Any]:
    from ..inference import load_detector

    detector = load_detector(model_id, device="cpu", trust_remote_code=trust_remote_code)
    return detector.model, detector.image_processor


def build_parser() -> argparse.ArgumentParser:
    """The ``sl-detr export`` command line."""
    parser = argparse.ArgumentParser(prog="sl-detr export", description=DESCRIPTION)
    parser.add_argument("--model", required=True, help="saved SL-DETR folder or Hugging Face Hub id")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="fixed input height and width (default: the image processor's largest size)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--with-postprocess", action="store_true",
                        help="also output top-k scores, labels and pixel boxes / polygons (no Python needed)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="candidates per image of --with-postprocess (default: the processor's max_detections)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``sl-detr export``: returns the exit status; bad arguments exit through argparse (status 2)."""
    from ..export_onnx import export_onnx, read_onnx_settings, require_onnx

    parser = build_parser()
    args = parser.parse_args(argv)
    if Path(args.output).suffix.lower() != ".onnx":
        parser.error(f"--output must end with .onnx, got {args.output}")
    if args.opset < 18:
        parser.error(f"--opset must be >= 18 (the dynamo exporter's minimum), got {args.opset}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    try:
        require_onnx("onnx", "onnxscript")
    except ImportError as err:
        parser.error(str(err))
    model_path = Path(args.model)
    if model_path.exists() and not (model_path / "config.json").is_file():
        parser.error(f"--model {args.model} is not a saved model folder (no config.json)")
    try:
        model, processor = _load(args.model, args.trust_remote_code)
    except (OSError, ValueError) as err:
        parser.error(f"cannot load model {args.model}: {err}")
    if getattr(model.config, "model_type", None) != "sl_detr":
        parser.error(f"--model {args.model} is a {model.config.model_type!r} model, not an SL-DETR (sl_detr) one")
    start = time.perf_counter()
    try:
        path = export_onnx(model, args.output, processor, image_size=args.image_size, opset=args.opset,
                           with_postprocess=args.with_postprocess, top_k=args.top_k)
    except ValueError as err:
        parser.error(str(err))
    seconds = time.perf_counter() - start
    settings = read_onnx_settings(path)
    h, w = settings["image_size"]
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {seconds:.1f} s): input {h} x {w}, dynamic batch, "
          f"outputs {', '.join(settings['outputs'])}")
    return 0

