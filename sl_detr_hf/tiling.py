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
from .rotated_boxes import rbox_to_hbox, rbox_to_poly

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


def open_scene(scene: str | os.PathLike | Image.Image) -> Image.Image:
    """A scene image, opened lazily (only the header is read until the first patch is cut).

    Raises:
        ValueError: the file cannot be read, or has more than `MAX_SCENE_PIXELS` pixels (named with its size).
    """
    if isinstance(scene, Image.Image):
        return scene
    path = Path(scene)
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


def predict_scene(detector: Detector, scene: str | os.PathLike | Image.Image, tile: int = 1024, overlap: int = 200,
                  threshold: float = 0.5, top_k: int | None = None, nms_iou_threshold: float | None = None,
                  batch_size: int = 1, progress: bool = True) -> list[dict[str, Any]]:
    """Detections of one whole scene (see the module docstring), sorted by score.

    Args:
        detector: called as ``detector(patches, threshold=, top_k=, batch_size=)`` (see the module docstring).
        scene: a path (opened lazily) or a PIL image.
        tile, overlap: window side and overlap of neighbouring windows, pixels.
        threshold, top_k: per patch, as for the detector.
        nms_iou_threshold: IoU of the merge's class-wise rotated NMS (default `DEFAULT_MERGE_IOU`).
        batch_size: patches per forward pass.
        progress: show a tqdm bar over the scene's patches.
    """
    image = open_scene(scene)
    width, height = image.size
    windows = tile_windows(width, height, tile, overlap)
    name = Path(scene).name if isinstance(scene, (str, os.PathLike)) else f"{width}x{height} scene"
    options = {"threshold": threshold, "top_k": top_k}
    if len(windows) == 1:  # the scene fits in one tile: exactly the untiled prediction
        with scene_pixel_limit():
            return detector(image.convert("RGB"), nms_iou_threshold=nms_iou_threshold, **options)
    label_ids: dict[str, int] = {}
    patches = []
    with scene_pixel_limit(), tqdm(total=len(windows), desc=name, unit="tile", disable=not progress) as bar:
        for batch in _batches(windows, max(1, int(batch_size))):
            crops = [image.crop(tuple(int(v) for v in window)).convert("RGB") for window in batch]
            for window, detections in zip(batch, detector(crops, batch_size=len(crops), **options)):
                patches.append(_patch_entry(detections, int(window[0]), int(window[1]), label_ids))
            bar.update(len(batch))
    iou = DEFAULT_MERGE_IOU if nms_iou_threshold is None else float(nms_iou_threshold)
    merged = merge_patch_detections(patches, iou_threshold=iou)
    names = {index: label for label, index in label_ids.items()}
    return _to_dicts(merged[0], names) if merged else []


def predict_scenes(detector: Detector, scenes: Sequence[str | os.PathLike | Image.Image], **kwargs: Any
                   ) -> list[list[dict[str, Any]]]:
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
