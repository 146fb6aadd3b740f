"""`sl-detr predict` / `scripts/predict.py`: images, folders or whole scenes -> predictions.json, PNGs and, for
georeferenced rasters, GeoJSON (the library functions are in `sl_detr_hf.inference`).

    sl-detr predict images/ more.png --model path/to/sl-detr --output-dir predictions --threshold 0.3
    sl-detr predict scene.tif --model path/to/sl-detr --tile 1024 --bands 3,2,1   # -> predictions/scene.geojson
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ..geo import GEO_EXTRA_HINT, WGS84, parse_bands, rasterio_available
from ..inference import (
    collect_images,
    load_detector,
    predict_images,
    resolve_device,
    write_predictions_json,
)
from ..onnx_predictor import OnnxDetector
from ._common import keep_freed_memory_on

__all__ = ["build_parser", "main"]

logger = logging.getLogger("sl_detr_hf")


def build_parser() -> argparse.ArgumentParser:
    """The `predict` command line."""
    parser = argparse.ArgumentParser(
        prog="predict", description="Detect oriented objects in images and whole scenes: JSON + PNGs with the boxes "
        "drawn, and GeoJSON for georeferenced rasters (GeoTIFF; needs rasterio: pip install -e \".[geo]\").")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    parser.add_argument("--model", required=True,
                        help="saved SL-DETR folder, Hugging Face Hub id, or .onnx file from `sl-detr export`")
    parser.add_argument("--output-dir", default="predictions", help="where predictions.json, PNGs and GeoJSON go")
    parser.add_argument("--threshold", type=float, default=0.3, help="minimum score (default 0.3)")
    parser.add_argument("--top-k", type=int, default=None, help="candidates per image before the threshold "
                        "(default: the image processor's max_detections)")
    parser.add_argument("--nms-iou", type=float, default=None, help="class-wise rotated NMS at this IoU (off)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    parser.add_argument("--bf16", action="store_true",
                        help="the network under bf16 autocast: faster on CPUs with AVX-512 BF16 / AMX and on GPUs")
    parser.add_argument("--recursive", action="store_true", help="also look for images in sub-folders")
    parser.add_argument("--no-draw", action="store_true", help="write only the JSON file")
    parser.add_argument("--tile", type=int, default=None, help="whole scenes: predict in TILE x TILE patches")
    parser.add_argument("--overlap", type=int, default=200, help="overlap of neighbouring tiles, px (default 200)")
    parser.add_argument("--bands", default=None,
                        help="TIFF rasters: 1-based bands read as R,G,B (e.g. 3,2,1) or one band as gray "
                             "(default: the first three; needs rasterio)")
    parser.add_argument("--geojson-crs", default=WGS84,
                        help="CRS of the GeoJSON written for georeferenced rasters: EPSG:4326 (default, lon / lat), "
                             "native (the raster's own CRS), another CRS such as EPSG:3857, or none")
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
    try:
        bands = parse_bands(args.bands)
    except ValueError as err:
        parser.error(f"--bands: {err}")
    geo = rasterio_available()
    if bands is not None and not geo:
        parser.error(f"--bands needs rasterio: {GEO_EXTRA_HINT}")
    geojson_crs = None if args.geojson_crs.lower() == "none" else args.geojson_crs
    if geo and geojson_crs is not None and geojson_crs.lower() != "native":
        from rasterio.crs import CRS

        try:
            CRS.from_user_input(geojson_crs)
        except Exception as err:  # CRSError
            parser.error(f"--geojson-crs {geojson_crs}: not a CRS ({err})")
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output-dir {output_dir} exists and is not a folder")
    try:
        images = collect_images(args.inputs, recursive=args.recursive)
        device = resolve_device(args.device)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if args.bf16 and onnx_model:
        parser.error("--bf16 applies to SL-DETR model folders, not to an ONNX file (export in the precision wanted)")
    try:
        detector = (OnnxDetector(model_path) if onnx_model else
                    load_detector(args.model, device=device, trust_remote_code=args.trust_remote_code,
                                  bf16=args.bf16))
    except (OSError, ValueError, ImportError) as err:
        parser.error(f"cannot load model {args.model}: {err}")
    if not onnx_model and keep_freed_memory_on(device):
        logger.info("CPU inference: freed memory stays in the process (sl_detr_hf.training.allocator)")
    output_dir.mkdir(parents=True, exist_ok=True)
    unreadable: list[tuple[Path, str]] = []
    notes: list[str] = []
    try:
        records = predict_images(detector, images, threshold=args.threshold, top_k=args.top_k,
                                 nms_iou_threshold=args.nms_iou, batch_size=args.batch_size,
                                 output_dir=output_dir, draw=not args.no_draw, tile=args.tile,
                                 overlap=args.overlap, unreadable=unreadable, bands=bands,
                                 geojson_crs=geojson_crs, notes=notes)
    except (ValueError, ImportError) as err:
        parser.error(str(err))
    if unreadable and not records:  # nothing could be read: an argument error, as for a missing file
        parser.error("; ".join(message for _, message in unreadable))
    json_path = write_predictions_json(records, output_dir / "predictions.json")
    total = sum(len(r["detections"]) for r in records)
    print(f"{len(records)} image(s), {total} detection(s) with score > {args.threshold}")
    print(f"JSON: {json_path}")
    for note in notes:
        print(note)
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
