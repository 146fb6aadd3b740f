"""`predict`: images or folders -> a JSON file of oriented detections and PNGs with the boxes drawn and labelled.

The library side of the command (its command line is `sl_detr_hf.commands.predict`):

    python scripts/predict.py --model path/to/sl-detr images/ more.png --output-dir predictions --threshold 0.3

Writes `OUTPUT_DIR/predictions.json`, a list with one record per image::

    {"image": "images/a.png", "width": 1024, "height": 768,
     "detections": [{"score": 0.91, "label": "plane", "box": {"xmin": .., "ymin": .., "xmax": .., "ymax": ..},
                     "rbox": {"cx": .., "cy": .., "w": .., "h": .., "theta": ..},
                     "polygon": [[x1, y1], [x2, y2], [x3, y3], [x4, y4]]}, ...]}

and `OUTPUT_DIR/<image name>.png` per image (see `OrientedObjectDetectionPipeline` for the box conventions); a
georeferenced raster (GeoTIFF, read with rasterio: ``pip install -e ".[geo]"``) also gets `OUTPUT_DIR/<image
name>.geojson`, its detections on the map (`sl_detr_hf.geo`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .geo import (
    GEO_EXTRA_HINT,
    WGS84,
    RasterScene,
    detections_to_geojson,
    is_raster_path,
    open_raster,
    rasterio_available,
    tiff_has_georeference,
    write_geojson,
)
from .pipeline_oriented_detection import OrientedObjectDetectionPipeline
from .tiling import open_scene, predict_scene
from .visualize import draw_detections

__all__ = ["IMAGE_EXTENSIONS", "PREVIEW_MAX_SIDE", "collect_images", "load_detector", "output_names",
           "predict_images", "resolve_device", "write_predictions_json"]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})

PREVIEW_MAX_SIDE = 4096
"""Longest side (px) of the PNG drawn for a raster scene predicted in tiles (a decimated read of the scene)."""


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


def load_detector(model: str | os.PathLike, device: str = "cpu", trust_remote_code: bool = False,
                  bf16: bool = False) -> OrientedObjectDetectionPipeline:
    """An oriented-detection pipeline for a saved SL-DETR folder or Hub id (``bf16``: every call under bf16
    autocast, the pipeline's ``bf16``).

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
                                           task="oriented-object-detection", **({"bf16": True} if bf16 else {}))


def predict_images(detector: OrientedObjectDetectionPipeline, images: Sequence[Path], threshold: float = 0.5,
                   top_k: int | None = None, nms_iou_threshold: float | None = None, batch_size: int = 1,
                   output_dir: str | os.PathLike | None = None, draw: bool = True, tile: int | None = None,
                   overlap: int = 200, unreadable: list[tuple[Path, str]] | None = None,
                   bands: Sequence[int] | None = None, geojson_crs: str | None = WGS84,
                   notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the detector over image files; optionally write a PNG per image with the detections drawn.

    An input image is never overwritten (see `output_names`). With `unreadable` (a list), images that cannot be
    decoded are appended to it as `(path, message)` and skipped; without it the first one raises `ValueError`.

    With `tile`, each image is a whole scene, opened lazily and predicted in overlapping patches (`sl_detr_hf.tiling`).

    TIFFs are read with rasterio when it is installed (`sl_detr_hf.geo.raster`: ``bands``, the per-scene scaling,
    nodata; with `tile`, window by window, and the PNG drawn on a preview of at most `PREVIEW_MAX_SIDE` px a side,
    assembled from the tiles as they are read). With `output_dir` and `geojson_crs` (``"EPSG:4326"``, ``"native"``
    or another CRS; ``None``: none), a georeferenced one also gets ``OUTPUT_DIR/<name>.geojson``
    (`sl_detr_hf.geo.detections_to_geojson`). `notes` (a list) receives one line per TIFF saying where its GeoJSON
    went or why there is none, and the nodata tiles skipped.

    Returns:
        One record per image: `image` (the path), `width`, `height`, `detections` (the pipeline's dicts); for a
        tiled raster also `tiles` and `nodata_tiles_skipped`, and `geojson` (its path) when one was written.
    """
    names = dict(zip(images, output_names(images, output_dir)))
    notes = [] if notes is None else notes
    use_rasterio = rasterio_available()
    records = []
    step = 1 if tile else batch_size
    for start in range(0, len(images), step):
        opened: list[tuple[Path, Any, RasterScene | None]] = []
        for path in images[start:start + step]:
            try:
                opened.append((path, *_open_input(path, tile, bands, use_rasterio, notes)))
            except ImportError:
                raise
            except Exception as err:  # PIL and rasterio raise several types for broken files
                if unreadable is None:
                    raise ValueError(str(err) if str(err).startswith("cannot read image") else
                                     f"cannot read image {path}: {err}") from err
                unreadable.append((path, str(err)))
        try:
            stats: list[dict[str, int]] = [{} for _ in opened]
            if tile:
                previews = [_Preview(*scene.size) if draw and output_dir is not None and raster is not None else None
                            for _, scene, raster in opened]
                results = [predict_scene(detector, scene, tile=tile, overlap=overlap, threshold=threshold,
                                         top_k=top_k, nms_iou_threshold=nms_iou_threshold, batch_size=batch_size,
                                         stats=counts, on_patch=None if preview is None else preview.add)
                           for (_, scene, _), counts, preview in zip(opened, stats, previews)]
            else:
                previews = [None for _ in opened]
                results = detector([image for _, image, _ in opened], threshold=threshold, top_k=top_k,
                                   nms_iou_threshold=nms_iou_threshold, batch_size=batch_size) if opened else []
            for (path, image, raster), detections, counts, preview in zip(opened, results, stats, previews):
                record = {"image": str(path), "width": image.size[0], "height": image.size[1],
                          "detections": detections}
                if raster is not None and tile:
                    record.update(tiles=counts["tiles"], nodata_tiles_skipped=counts["skipped_nodata"])
                    if counts["skipped_nodata"]:
                        notes.append(f"{path.name}: {counts['skipped_nodata']} of {counts['tiles']} tiles all "
                                     "nodata (skipped)")
                if raster is not None and output_dir is not None and geojson_crs is not None:
                    geojson = _write_geojson(raster, detections, geojson_crs,
                                             Path(output_dir) / (Path(names[path]).stem + ".geojson"), notes)
                    if geojson is not None:
                        record["geojson"] = str(geojson)
                records.append(record)
                if draw and output_dir is not None:
                    _draw(preview or image, detections, detector.model.config.id2label, Path(output_dir) / names[path])
        finally:
            for _, _, raster in opened:
                if raster is not None:
                    raster.close()
    return records


def _open_input(path: Path, tile: int | None, bands: Sequence[int] | None, use_rasterio: bool, notes: list[str]
                ) -> tuple[Any, RasterScene | None]:
    """``(what the detector reads, the open raster or None)`` for one input file."""
    from .data.images import open_image

    if is_raster_path(path) and use_rasterio:
        raster = open_raster(path, bands=bands)
        try:
            return (raster if tile else raster.read_rgb(skip_empty=False)), raster
        except Exception:
            raster.close()
            raise
    if bands is not None:
        if is_raster_path(path):
            raise ImportError(f"{path}: choosing bands needs rasterio: {GEO_EXTRA_HINT}")
        notes.append(f"{path.name}: --bands applies to TIFF rasters; read as RGB")
    if not is_raster_path(path):
        return (open_scene(path) if tile else open_image(path)), None  # 16-bit images scaled, not white
    try:
        image = open_scene(path) if tile else open_image(path)
    except Exception as err:  # e.g. 4 bands of 16 bits: PIL cannot identify the file
        raise ValueError(f"{err} ({GEO_EXTRA_HINT} installs rasterio, which reads multi-band and 16-bit TIFFs)"
                         ) from err
    if tiff_has_georeference(path):
        notes.append(f"{path.name}: georeferenced, predicted in pixels only; {GEO_EXTRA_HINT} (rasterio) writes "
                     "its GeoJSON")
    return image, None


def _write_geojson(raster: RasterScene, detections: list[dict[str, Any]], crs: str, path: Path, notes: list[str]
                   ) -> Path | None:
    """Write a raster's detections as GeoJSON when it is georeferenced; a note either way."""
    if not raster.georeferenced:
        why = "no CRS" if raster.crs is None else "an identity transform"
        notes.append(f"{raster.path.name}: no georeference ({why}): no GeoJSON, pixels only")
        return None
    collection = detections_to_geojson(detections, raster.transform, raster.crs, dst_crs=crs, source=raster.path)
    written = write_geojson(collection, path)
    shown = raster.crs.to_string() if crs.lower() == "native" else crs
    notes.append(f"{raster.path.name}: {len(detections)} detection(s) on the map ({shown}): {written}")
    return written


class _Preview:
    """A raster scene's PNG canvas (at most `PREVIEW_MAX_SIDE` px a side), assembled from its tiles as they are read,
    so the scene is not read a second time; tiles skipped as nodata stay black."""

    def __init__(self, width: int, height: int) -> None:
        self.scale = min(1.0, PREVIEW_MAX_SIDE / max(width, height))
        self.image = Image.new("RGB", (max(1, round(width * self.scale)), max(1, round(height * self.scale))))

    def add(self, window: tuple[int, int, int, int], patch: Image.Image) -> None:
        x0, y0, x1, y1 = (round(v * self.scale) for v in window)
        if x1 > x0 and y1 > y0:
            self.image.paste(patch if self.scale == 1.0 else patch.resize((x1 - x0, y1 - y0), Image.Resampling.BOX),
                             (x0, y0))


def _draw(image: Image.Image | _Preview, detections: list[dict[str, Any]], id2label: dict, path: Path) -> None:
    """The PNG with the detections drawn (on a raster scene's `_Preview`, scaled to it)."""
    if isinstance(image, _Preview):
        scale, image = image.scale, image.image
        if scale != 1.0:
            detections = [dict(d, polygon=[[x * scale, y * scale] for x, y in d["polygon"]]) for d in detections]
    draw_detections(image, detections, id2label).save(path)


def write_predictions_json(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write prediction records (see `predict_images`) as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return path
