"""Whole-scene prediction: overlapping tiles through any detector, mapped back and merged with rotated NMS.

Aerial and satellite scenes (4,000 - 20,000 px a side) shrink to nothing when resized to the model's input; here the
scene is cut into ``tile x tile`` windows that overlap by ``overlap`` px (the windows of `sl_detr_hf.data.split`,
the last one shifted back to end at the border, clipped to the scene), the patches are read lazily from the opened
image (a PIL crop per patch, converted to RGB per patch), sent through the detector ``batch_size`` at a time, and
their detections are shifted to scene coordinates and merged with `merge_patch_detections` (class-wise rotated NMS,
IoU ``nms_iou_threshold``, default 0.1 as in DOTA's merge). A scene that fits in one tile is predicted as it is,
so ``tile >= max(width, height)`` gives exactly the untiled result.

The detector is anything called like the ``"oriented-object-detection"`` pipeline: ``detector(list_of_images,
threshold=, top_k=, batch_size=)`` returning a list of detection dicts per image (the pipeline itself, or
`sl_detr_hf.onnx_predictor.OnnxDetector`). The output has the same dicts, in scene pixels.

PIL refuses images above 178 MP (a decompression-bomb guard); `open_scene` deliberately accepts scenes up to
`MAX_SCENE_PIXELS` (2 gigapixels, about 44,700 px a side; DOTA's largest scenes are about 20,000 px) and refuses
larger ones with the file and its size named. The scene is decoded once, at the first patch (PIL cannot decode a
PNG or JPEG region alone); each patch is then a crop of that one copy.

GeoTIFFs and other TIFFs are read with rasterio when it is installed (``pip install -e ".[geo]"``): each patch is
read from the file alone (a `sl_detr_hf.geo.RasterScene` window, windows in row order so that strip-organized files
decompress each strip about once), so memory stays that of a few tiles whatever the scene's size (no pixel limit);
``bands`` picks the bands, 16-bit and float bands are stretched per scene, nodata reads as 0, and patches that are
all nodata are skipped and counted (see `sl_detr_hf.geo.raster` for the rule). Without rasterio they go through PIL.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data.split import get_windows, merge_patch_detections
from .geo.raster import GEO_EXTRA_HINT, RasterScene, is_raster_path, open_raster, rasterio_available
from .geometry_conversions import rbox_to_hbox, rbox_to_poly

__all__ = ["DEFAULT_MERGE_IOU", "MAX_SCENE_PIXELS", "open_scene", "predict_scene", "predict_scenes",
           "scene_pixel_limit", "tile_windows"]

MAX_SCENE_PIXELS = 2_000_000_000
"""Largest scene (pixels) `open_scene` accepts; PIL's own decompression-bomb limit is 178 MP."""

DEFAULT_MERGE_IOU = 0.1
"""Rotated NMS IoU of the merge when ``nms_iou_threshold`` is not given (DOTA's merge)."""

Detector = Callable[..., Any]


@contextlib.contextmanager
def scene_pixel_limit(limit: int | None = MAX_SCENE_PIXELS) -> Iterator[None]:
    """Set PIL's decompression-bomb limit to ``limit`` pixels (``None``: off) inside the block (restored after)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limit
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def open_scene(scene: str | os.PathLike | Image.Image | RasterScene, bands: Sequence[int] | None = None
               ) -> Image.Image | RasterScene:
    """A scene, opened lazily: a TIFF as a `RasterScene` when rasterio is installed (read window by window, ``bands``
    chosen), any other image with PIL (only the header is read until the first patch is cut).

    Raises:
        ValueError: the file cannot be read, has more than `MAX_SCENE_PIXELS` pixels (PIL; named with its size), or
            ``bands`` is given for an image PIL reads.
        ImportError: ``bands`` for a TIFF without rasterio.
    """
    if isinstance(scene, RasterScene):
        return scene
    if isinstance(scene, Image.Image):
        if bands is not None:
            raise ValueError("`bands` applies to rasters read with rasterio, not to a PIL image")
        return scene
    path = Path(scene)
    if is_raster_path(path) and rasterio_available():
        return open_raster(path, bands=bands)
    if bands is not None:
        if is_raster_path(path):
            raise ImportError(f"{path}: choosing bands needs rasterio: {GEO_EXTRA_HINT}")
        raise ValueError(f"{path}: `bands` applies to TIFF rasters (read with rasterio), not to {path.suffix} images")
    try:
        with scene_pixel_limit(None):  # checked here, against MAX_SCENE_PIXELS, with the file named
            image = Image.open(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    if image.width * image.height > MAX_SCENE_PIXELS:
        image.close()
        raise ValueError(f"{path}: {image.width} x {image.height} = {image.width * image.height:,} pixels, more than "
                         f"the {MAX_SCENE_PIXELS:,} accepted (sl_detr_hf.tiling.MAX_SCENE_PIXELS)")
    return image


def tile_windows(width: int, height: int, tile: int, overlap: int) -> np.ndarray:
    """Overlapping windows covering a ``width x height`` scene.

    Returns:
        ``(K, 4)`` int64 ``x0, y0, x1, y1`` clipped to the scene (x outer, y inner); neighbours share ``overlap`` px.
    Raises:
        ValueError: ``tile < 32``, ``overlap < 0`` or ``overlap >= tile``.
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 32:
        raise ValueError(f"`tile` must be an integer >= 32 (pixels), got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < tile:
        raise ValueError(f"`overlap` must be an integer in [0, tile) = [0, {tile}), got {overlap!r}")
    windows = get_windows(width, height, sizes=(tile,), gaps=(overlap,), img_rate_thr=0.0)
    windows[:, 2] = np.minimum(windows[:, 2], width)
    windows[:, 3] = np.minimum(windows[:, 3], height)
    return windows


def _batches(windows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(windows), size):
        yield windows[start:start + size]


def predict_scene(detector: Detector, scene: str | os.PathLike | Image.Image | RasterScene, tile: int = 1024,
                  overlap: int = 200, threshold: float = 0.5, top_k: int | None = None,
                  nms_iou_threshold: float | None = None, batch_size: int = 1, progress: bool = True,
                  bands: Sequence[int] | None = None, stats: dict[str, int] | None = None,
                  on_patch: Callable[[tuple[int, int, int, int], Image.Image], None] | None = None
                  ) -> list[dict[str, Any]]:
    """Detections of one whole scene (see the module docstring), sorted by score.

    Args:
        detector: called as ``detector(patches, threshold=, top_k=, batch_size=)`` (see the module docstring).
        scene: a path (opened lazily; a TIFF read window by window when rasterio is installed), a PIL image or an
            open `sl_detr_hf.geo.RasterScene`.
        tile, overlap: window side and overlap of neighbouring windows, pixels.
        threshold, top_k: per patch, as for the detector.
        nms_iou_threshold: IoU of the merge's class-wise rotated NMS (default `DEFAULT_MERGE_IOU`).
        batch_size: patches per forward pass.
        progress: show a tqdm bar over the scene's patches.
        bands: 1-based bands of a raster (see `sl_detr_hf.geo.raster`; default its first three).
        stats: a dict that receives ``tiles`` (windows of the scene) and ``skipped_nodata`` (windows all nodata).
        on_patch: called as ``on_patch((x0, y0, x1, y1), rgb_patch)`` for each patch of a raster read (not for the
            skipped ones), e.g. to assemble a preview without reading the scene again.
    """
    image = open_scene(scene, bands=bands)
    try:
        return _predict_open_scene(detector, image, scene, tile, overlap, threshold, top_k, nms_iou_threshold,
                                   batch_size, progress, {} if stats is None else stats, on_patch)
    finally:
        if isinstance(image, RasterScene) and image is not scene:
            image.close()


def _predict_open_scene(detector: Detector, image: Image.Image | RasterScene, scene: Any, tile: int, overlap: int,
                        threshold: float, top_k: int | None, nms_iou_threshold: float | None, batch_size: int,
                        progress: bool, stats: dict[str, int], on_patch: Callable[..., None] | None
                        ) -> list[dict[str, Any]]:
    width, height = image.size
    windows = tile_windows(width, height, tile, overlap)
    raster = isinstance(image, RasterScene)
    if raster:  # row order: a strip-organized file decompresses each strip about once
        windows = windows[np.lexsort((windows[:, 0], windows[:, 1]))]
        name = image.path.name
    else:
        name = Path(scene).name if isinstance(scene, (str, os.PathLike)) else f"{width}x{height} scene"
    stats.update(tiles=len(windows), skipped_nodata=0)
    options = {"threshold": threshold, "top_k": top_k}
    if len(windows) == 1:  # the scene fits in one tile: exactly the untiled prediction
        if raster:
            whole = image.read_rgb()
            if whole is None:
                stats["skipped_nodata"] = 1
                return []
            if on_patch is not None:
                on_patch((0, 0, width, height), whole)
            return detector(whole, nms_iou_threshold=nms_iou_threshold, **options)
        with scene_pixel_limit():
            return detector(image.convert("RGB"), nms_iou_threshold=nms_iou_threshold, **options)
    label_ids: dict[str, int] = {}
    patches = []
    with scene_pixel_limit(), tqdm(total=len(windows), desc=name, unit="tile", disable=not progress) as bar:
        for batch in _batches(windows, max(1, int(batch_size))):
            if raster:
                read = [(window, image.read_rgb(window)) for window in batch]
                stats["skipped_nodata"] += sum(crop is None for _, crop in read)
                batch = [window for window, crop in read if crop is not None]
                crops = [crop for _, crop in read if crop is not None]
                for window, crop in zip(batch, crops) if on_patch is not None else ():
                    on_patch(tuple(int(v) for v in window), crop)
            else:
                crops = [image.crop(tuple(int(v) for v in window)).convert("RGB") for window in batch]
            if crops:
                for window, detections in zip(batch, detector(crops, batch_size=len(crops), **options)):
                    patches.append(_patch_entry(detections, int(window[0]), int(window[1]), label_ids))
            bar.update(len(read) if raster else len(batch))
    iou = DEFAULT_MERGE_IOU if nms_iou_threshold is None else float(nms_iou_threshold)
    merged = merge_patch_detections(patches, iou_threshold=iou)
    names = {index: label for label, index in label_ids.items()}
    return _to_dicts(merged[0], names) if merged else []


def predict_scenes(detector: Detector, scenes: Sequence[str | os.PathLike | Image.Image | RasterScene],
                   **kwargs: Any) -> list[list[dict[str, Any]]]:
    """`predict_scene` for each scene (one progress bar per scene)."""
    return [predict_scene(detector, scene, **kwargs) for scene in scenes]


def _patch_entry(detections: list[dict[str, Any]], x: int, y: int, label_ids: dict[str, int]) -> dict[str, Any]:
    """One patch's detection dicts -> a `merge_patch_detections` entry (labels as ids of ``label_ids``)."""
    boxes = torch.tensor([[d["rbox"][k] for k in ("cx", "cy", "w", "h", "theta")] for d in detections],
                         dtype=torch.float64).reshape(-1, 5)
    labels = torch.tensor([label_ids.setdefault(d["label"], len(label_ids)) for d in detections], dtype=torch.long)
    scores = torch.tensor([d["score"] for d in detections], dtype=torch.float64)
    return {"image_id": "scene", "x": x, "y": y, "boxes": boxes, "scores": scores, "labels": labels}


def _to_dicts(merged: dict[str, Any], names: dict[int, str]) -> list[dict[str, Any]]:
    """Merged scene detections -> the pipeline's detection dicts (``box`` integer pixels, as the pipeline)."""
    rboxes = merged["boxes"].float()
    polygons, boxes = rbox_to_poly(rboxes).tolist(), rbox_to_hbox(rboxes).int().tolist()
    out = []
    for score, label, box, rbox, polygon in zip(merged["scores"].tolist(), merged["labels"].tolist(), boxes,
                                                rboxes.tolist(), polygons):
        out.append({
            "score": score,
            "label": names[label],
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box)),
            "rbox": dict(zip(("cx", "cy", "w", "h", "theta"), rbox)),
            "polygon": [polygon[i:i + 2] for i in range(0, 8, 2)],
        })
    return out
