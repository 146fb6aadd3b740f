"""`predict`: images or folders -> a JSON file of oriented detections and PNGs with the boxes drawn and labelled.

    python scripts/predict.py --model path/to/sl-detr images/ more.png --output-dir predictions --threshold 0.3

Writes `OUTPUT_DIR/predictions.json`, a list with one record per image::

    {"image": "images/a.png", "width": 1024, "height": 768,
     "detections": [{"score": 0.91, "label": "plane", "box": {"xmin": .., "ymin": .., "xmax": .., "ymax": ..},
                     "rbox": {"cx": .., "cy": .., "w": .., "h": .., "theta": ..},
                     "polygon": [[x1, y1], [x2, y2], [x3, y3], [x4, y4]]}, ...]}

and `OUTPUT_DIR/<image name>.png` per image (see `OrientedObjectDetectionPipeline` for the box conventions).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .onnx_predictor import OnnxDetector
from .pipeline_oriented_detection import OrientedObjectDetectionPipeline
from .tiling import open_scene
from .visualize import draw_detections

__all__ = ["IMAGE_EXTENSIONS", "collect_images", "load_detector", "main", "output_names", "predict_images",
           "resolve_device", "write_predictions_json"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})


def collect_images(paths: Iterable[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Image files named directly or found in folders (by extension, sorted), without duplicates.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a file is not an image (by extension), or no image was found at all.
    """
    found: list[Path] = []
    for raw in paths:
        if isinstance(raw, str) and raw.lower().startswith(("http://", "https://")):
            raise ValueError(f"{raw}: URLs are not read by `predict`; download the image and pass its path "
                             "(the oriented-object-detection pipeline itself accepts URLs)")
        path = Path(raw)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found += sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ValueError(f"{path} is not an image file (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
            found.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise ValueError(f"no images found in {', '.join(map(str, paths))}")
    return unique


def output_names(images: Sequence[Path], output_dir: str | os.PathLike | None = None) -> list[str]:
    """A distinct PNG file name per image: its stem, with `_1`, `_2`, ... added when stems repeat.

    With `output_dir`, a name that would write over one of the input images (the output folder is an input
    folder, e.g. `predict predictions/`) becomes `<stem>_pred.png` (`_pred_1`, ... if taken): inputs are never
    overwritten.
    """
    inputs = {Path(p).resolve() for p in images}
    folder = None if output_dir is None else Path(output_dir).resolve()
    names: list[str] = []

    def free(name: str) -> bool:
        return name not in names and (folder is None or folder / name not in inputs)

    for image in images:
        stem, count = image.stem, 0
        if folder is not None and folder / f"{stem}.png" in inputs:
            stem = f"{stem}_pred"
        name = f"{stem}.png"
        while not free(name):
            count += 1
            name = f"{stem}_{count}.png"
        names.append(name)
    return names


def resolve_device(device: str) -> str:
    """`"auto"` -> `"cuda"` when available else `"cpu"`; other values are checked (`cpu`, `cuda[:N]`, `mps`).

    Raises:
        ValueError: unknown device, or one this machine does not have.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} (use auto, cpu, cuda, cuda:N or mps)") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r} (use auto, cpu, cuda, cuda:N or mps)")
    return str(parsed)


def load_detector(model: str | os.PathLike, device: str = "cpu",
                  trust_remote_code: bool = False) -> OrientedObjectDetectionPipeline:
    """An oriented-detection pipeline for a saved SL-DETR folder or Hub id.

    The folder's image processor is used; a folder without `preprocessor_config.json` gets a default
    `SlDetrImageProcessor` of the model's `box_type`.

    Raises:
        OSError: the model cannot be loaded (missing folder, bad files, unknown Hub id).
    """
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    from .image_processing_sl_detr import SlDetrImageProcessor

    local = Path(model)
    if (local / "config.json").is_file():
        model_type = json.loads((local / "config.json").read_text(encoding="utf-8")).get("model_type")
        if model_type != "sl_detr":
            raise ValueError(f"{model} holds a {model_type!r} model, not SL-DETR (model_type 'sl_detr')")
    net = AutoModelForObjectDetection.from_pretrained(model, trust_remote_code=trust_remote_code)
    if getattr(net.config, "model_type", None) != "sl_detr":
        raise ValueError(f"{model} holds a {net.config.model_type!r} model, not SL-DETR (model_type 'sl_detr')")
    if local.is_dir() and not (local / "preprocessor_config.json").is_file():
        processor = SlDetrImageProcessor(box_type=getattr(net.config, "box_type", "rotated"),
                                         max_detections=getattr(net.config, "max_detections", 500))
    else:
        processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    return OrientedObjectDetectionPipeline(model=net, image_processor=processor, device=device,
                                           task="oriented-object-detection")


def predict_images(detector: OrientedObjectDetectionPipeline, images: Sequence[Path], threshold: float = 0.5,
                   top_k: int | None = None, nms_iou_threshold: float | None = None, batch_size: int = 1,
                   output_dir: str | os.PathLike | None = None, draw: bool = True, tile: int | None = None,
                   overlap: int = 200, unreadable: list[tuple[Path, str]] | None = None) -> list[dict[str, Any]]:
    """Run the detector over image files; optionally write a PNG per image with the detections drawn.

    An input image is never overwritten (see `output_names`). With `unreadable` (a list), images that cannot be
    decoded are appended to it as `(path, message)` and skipped; without it the first one raises `ValueError`.

    With `tile`, each image is a whole scene, opened lazily and predicted in overlapping patches (`sl_detr_hf.tiling`).

    Returns:
        One record per image: `image` (the path), `width`, `height`, `detections` (the pipeline's dicts).
    """
    from .data.images import open_image

    names = dict(zip(images, output_names(images, output_dir)))
    records = []
    for start in range(0, len(images), batch_size):
        paths, pil = [], []
        for path in images[start:start + batch_size]:
            try:
                pil.append(open_scene(path) if tile else open_image(path))  # 16-bit images scaled, not white
                paths.append(path)
            except Exception as err:  # PIL raises several types for broken files
                if unreadable is None:
                    raise ValueError(f"cannot read image {path}: {err}") from err
                unreadable.append((path, str(err)))
        if not pil:
            continue
        results = detector(pil, threshold=threshold, top_k=top_k, nms_iou_threshold=nms_iou_threshold,
                           batch_size=batch_size, **({"tile": tile, "overlap": overlap} if tile else {}))
        for path, image, detections in zip(paths, pil, results):
            records.append({"image": str(path), "width": image.width, "height": image.height,
                            "detections": detections})
            if draw and output_dir is not None:
                drawn = draw_detections(image, detections, detector.model.config.id2label)
                drawn.save(Path(output_dir) / names[path])
    return records


def write_predictions_json(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write prediction records (see `predict_images`) as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return path


def build_parser() -> argparse.ArgumentParser:
    """The `predict` command line."""
    parser = argparse.ArgumentParser(
        prog="predict", description="Detect oriented objects in images: JSON + PNGs with the boxes drawn.")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--model", required=True,
                        help="saved SL-DETR folder, Hugging Face Hub id, or .onnx file from `sl-detr export`")
    parser.add_argument("--output-dir", default="predictions", help="where predictions.json and PNGs go")
    parser.add_argument("--threshold", type=float, default=0.3, help="minimum score (default 0.3)")
    parser.add_argument("--top-k", type=int, default=None, help="candidates per image before the threshold "
                        "(default: the image processor's max_detections)")
    parser.add_argument("--nms-iou", type=float, default=None, help="class-wise rotated NMS at this IoU (off)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    parser.add_argument("--recursive", action="store_true", help="also look for images in sub-folders")
    parser.add_argument("--no-draw", action="store_true", help="write only the JSON file")
    parser.add_argument("--tile", type=int, default=None, help="whole scenes: predict in TILE x TILE patches")
    parser.add_argument("--overlap", type=int, default=200, help="overlap of neighbouring tiles, px (default 200)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow the model folder's own code (not needed for SL-DETR with this package)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `scripts/predict.py` and `sl-detr predict`; returns the exit status (0).

    Bad arguments and paths exit through `argparse` (status 2, with a message), never with a traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.threshold <= 1:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.nms_iou is not None and not 0 < args.nms_iou <= 1:
        parser.error(f"--nms-iou must be in (0, 1], got {args.nms_iou}")
    model_path = Path(args.model)
    if args.tile is not None and not (args.tile >= 32 and 0 <= args.overlap < args.tile):
        parser.error(f"--tile must be >= 32 and --overlap in [0, tile), got {args.tile} and {args.overlap}")
    onnx_model = model_path.suffix.lower() == ".onnx"
    if not onnx_model and model_path.exists() and not (model_path / "config.json").is_file():
        parser.error(f"--model {args.model} is not a saved model folder (no config.json)")
    if not model_path.exists() and (args.model.startswith((".", "/", "~")) or args.model.count("/") > 1):
        parser.error(f"--model {args.model} does not exist")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output-dir {output_dir} exists and is not a folder")
    try:
        images = collect_images(args.inputs, recursive=args.recursive)
        device = resolve_device(args.device)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    try:
        detector = (OnnxDetector(model_path) if onnx_model else
                    load_detector(args.model, device=device, trust_remote_code=args.trust_remote_code))
    except (OSError, ValueError, ImportError) as err:
        parser.error(f"cannot load model {args.model}: {err}")
    output_dir.mkdir(parents=True, exist_ok=True)
    unreadable: list[tuple[Path, str]] = []
    try:
        records = predict_images(detector, images, threshold=args.threshold, top_k=args.top_k,
                                 nms_iou_threshold=args.nms_iou, batch_size=args.batch_size,
                                 output_dir=output_dir, draw=not args.no_draw, tile=args.tile,
                                 overlap=args.overlap, unreadable=unreadable)
    except ValueError as err:
        parser.error(str(err))
    if unreadable and not records:  # nothing could be read: an argument error, as for a missing file
        parser.error("; ".join(message for _, message in unreadable))
    json_path = write_predictions_json(records, output_dir / "predictions.json")
    total = sum(len(r["detections"]) for r in records)
    print(f"{len(records)} image(s), {total} detection(s) with score > {args.threshold}")
    print(f"JSON: {json_path}")
    if not args.no_draw:
        print(f"PNGs: {output_dir}")
    if unreadable:
        print(f"predict: error: {len(unreadable)} image(s) could not be read (skipped):", file=sys.stderr)
        for _, message in unreadable:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
