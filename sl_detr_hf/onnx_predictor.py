"""Oriented detection with an exported SL-DETR ``.onnx`` file and onnxruntime: no PyTorch, no transformers.

This file imports only the standard library, numpy, Pillow and onnxruntime, and no other file of the package, so a
deployment needs only ``pip install onnxruntime numpy pillow`` and this one file next to the ``.onnx`` file::

    python onnx_predictor.py model.onnx image1.png image2.jpg --threshold 0.3 > predictions.json

    >>> from onnx_predictor import OnnxDetector     # or: from sl_detr_hf.onnx_predictor import OnnxDetector
    >>> detector = OnnxDetector("model.onnx")
    >>> detector("image.png", threshold=0.3)         # the same dicts as the "oriented-object-detection" pipeline
    [{'score': 0.91, 'label': 'plane', 'box': {...}, 'rbox': {'cx': .., 'cy': .., 'w': .., 'h': .., 'theta': ..},
      'polygon': [[x1, y1], ...]}, ...]

Preprocessing follows the settings `sl_detr_hf.export_onnx` stored in the file: resize as the image processor does
(aspect kept; torchvision's resize when torchvision is installed, else Pillow's, within one uint8 level of it when
shrinking), rescale, normalize, zero-pad at the bottom / right to the graph's fixed ``H x W`` with a ``pixel_mask``.
Post-processing is `SlDetrImageProcessor.post_process_object_detection` in numpy (sigmoid, top-k over queries x
classes, score threshold, boxes scaled to the original image, le90). Class-wise rotated NMS (``nms_iou_threshold``)
and whole-scene tiling (``tile=``) need the full package (PyTorch); they are imported only when asked for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["METADATA_KEY", "OnnxDetector", "detections_to_dicts", "postprocess", "preprocess", "resized_size"]

METADATA_KEY = "sl_detr"
_CORNER_SIGNS = np.array(((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)), dtype=np.float32)


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("onnxruntime is not installed: pip install onnxruntime (or 'sl_detr_hf[onnx]')") from err
    return onnxruntime


# ------------------------------------------------------------------------------------------------ preprocessing


def resized_size(height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
    """The image processor's output ``(h, w)`` for an ``height x width`` image (transformers' resize rules)."""
    shortest, longest = size.get("shortest_edge"), size.get("longest_edge")
    if shortest and longest:  # transformers.image_transforms.get_size_with_aspect_ratio
        raw = None
        small, large = float(min(height, width)), float(max(height, width))
        if large / small * shortest > longest:
            raw = longest * small / large
            shortest = int(round(raw))
        if (height <= width and height == shortest) or (width <= height and width == shortest):
            return height, width
        if width < height:
            return (int(raw * height / width) if raw is not None else int(shortest * height / width)), shortest
        return shortest, (int(raw * width / height) if raw is not None else int(shortest * width / height))
    if size.get("max_height") and size.get("max_width"):
        scale = min(size["max_height"] / height, size["max_width"] / width)
        return int(height * scale), int(width * scale)
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if shortest:
        if height <= width:
            return shortest, int(shortest * width / height)
        return int(shortest * height / width), shortest
    raise ValueError(f"unsupported resize rule {size}")


def _fit(height: int, width: int, box: tuple[int, int]) -> tuple[int, int]:
    """Scale ``(height, width)`` down (aspect kept) to fit in ``box``; unchanged when it fits."""
    scale = min(box[0] / height, box[1] / width)
    if scale >= 1:
        return height, width
    return max(1, int(height * scale)), max(1, int(width * scale))


def _as_rgb(image: Any) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as opened:
                return opened.convert("RGB")
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read image {image}: {err}") from err
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, a numpy array or a path, got {type(image).__name__}")
    return image if image.mode == "RGB" else image.convert("RGB")


_TORCH_INTERPOLATION = {0: "NEAREST_EXACT", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def _resize(image: Image.Image, height: int, width: int, resample: int) -> np.ndarray:
    """``(3, height, width)`` float32 of the resized image: torchvision's resize (antialiased, what the image
    processor uses) when torchvision is installed, else Pillow's (within one uint8 level of it when shrinking)."""
    if (height, width) == (image.height, image.width):
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
    try:
        import torch
        from torchvision.transforms.v2 import functional as tvF
    except ImportError:
        resized = image.resize((width, height), resample=Image.Resampling(resample))
        return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1)
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
    mode = getattr(tvF.InterpolationMode, _TORCH_INTERPOLATION[int(resample)])
    return tvF.resize(tensor, [height, width], interpolation=mode, antialias=True).numpy().astype(np.float32)


def preprocess(images: Sequence[Any], settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images -> ``pixel_values (B, 3, H, W)`` float32, ``pixel_mask (B, H, W)`` int64 and ``target_sizes (B, 2)``.

    ``H, W`` are the graph's fixed size; ``target_sizes`` are the original ``(height, width)``.
    """
    height, width = settings["image_size"]
    mean = np.asarray(settings["image_mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(settings["image_std"], dtype=np.float32).reshape(3, 1, 1)
    pixel_values = np.zeros((len(images), 3, height, width), dtype=np.float32)
    pixel_mask = np.zeros((len(images), height, width), dtype=np.int64)
    target_sizes = np.zeros((len(images), 2), dtype=np.float32)
    for i, raw in enumerate(images):
        image = _as_rgb(raw)
        target_sizes[i] = (image.height, image.width)
        h, w = image.height, image.width
        if settings["do_resize"]:
            h, w = resized_size(h, w, settings["size"])
        h, w = _fit(h, w, (height, width))
        array = _resize(image, h, w, settings["resample"])
        if settings["do_rescale"]:
            array = array * np.float32(settings["rescale_factor"])
        if settings["do_normalize"] and settings.get("normalize_per_image"):  # the processor's `standardize_image`
            array = (array - array.mean()) / max(float(array.std()), settings["min_image_std"])
        elif settings["do_normalize"]:
            array = (array - mean) / std
        pixel_values[i, :, :h, :w] = array
        pixel_mask[i, :h, :w] = 1
    return pixel_values, pixel_mask, target_sizes


# ----------------------------------------------------------------------------------------------- postprocessing


def _wrap_angle(theta: np.ndarray) -> np.ndarray:
    wrapped = np.remainder(theta + np.float32(math.pi / 2), np.float32(math.pi)) - np.float32(math.pi / 2)
    return np.where(wrapped >= np.float32(math.pi / 2), wrapped - np.float32(math.pi), wrapped)


def _regularize(boxes: np.ndarray) -> np.ndarray:
    """``(N, 5)`` -> le90 (``w >= h``, ``theta`` in ``[-pi/2, pi/2)``), as `geometry_conversions.regularize_rboxes`."""
    cx, cy, w, h, theta = boxes.T
    swap = w < h
    return np.stack((cx, cy, np.where(swap, h, w), np.where(swap, w, h),
                     _wrap_angle(np.where(swap, theta + np.float32(math.pi / 2), theta))), axis=-1)


def _hbox(boxes: np.ndarray) -> np.ndarray:
    """Enclosing ``(x1, y1, x2, y2)`` of ``(N, 5)`` rotated boxes."""
    cx, cy, w, h, theta = boxes.T
    cos, sin = np.abs(np.cos(theta)), np.abs(np.sin(theta))
    hw, hh = (cos * w + sin * h) / 2, (sin * w + cos * h) / 2
    return np.stack((cx - hw, cy - hh, cx + hw, cy + hh), axis=-1)


def _polygons(boxes: np.ndarray) -> np.ndarray:
    """``(N, 5)`` -> ``(N, 8)`` corners in DOTA order."""
    cx, cy, w, h, theta = (c[:, None] for c in boxes.T)
    cos, sin = np.cos(theta), np.sin(theta)
    dx, dy = _CORNER_SIGNS[:, 0] * w, _CORNER_SIGNS[:, 1] * h
    return np.stack((cx + cos * dx - sin * dy, cy + sin * dx + cos * dy), axis=-1).reshape(-1, 8)


def postprocess(logits: np.ndarray, pred_boxes: np.ndarray, target_sizes: np.ndarray | None, threshold: float,
                top_k: int) -> list[dict[str, np.ndarray]]:
    """`SlDetrImageProcessor.post_process_object_detection` in numpy (no NMS).

    Returns one dict per image: ``scores (N,)``, ``labels (N,)``, ``boxes (N, 4)`` enclosing ``x1, y1, x2, y2``, and
    ``rboxes (N, 5)`` le90 pixel boxes (axis-aligned models: angle 0 before le90), sorted by score.
    """
    batch, queries, classes = logits.shape
    k = min(int(top_k), queries * classes)
    prob = 1.0 / (1.0 + np.exp(-logits.astype(np.float32).reshape(batch, -1)))
    index = np.argsort(-prob, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(prob, index, axis=1)
    query, labels = index // classes, index % classes
    boxes = np.take_along_axis(pred_boxes.astype(np.float32), query[..., None], axis=1)
    if boxes.shape[-1] == 4:
        boxes = np.concatenate((boxes, np.zeros_like(boxes[..., :1])), axis=-1)
    boxes[..., 2:4] = np.maximum(boxes[..., 2:4], 0)
    results = []
    for b in range(batch):
        keep = scores[b] > threshold
        rb = boxes[b][keep]
        if target_sizes is not None:
            height, width = (np.float32(v) for v in target_sizes[b])
            rb = rb * np.array([width, height, width, height, 1], dtype=np.float32)
        results.append({"scores": scores[b][keep], "labels": labels[b][keep], "boxes": _hbox(rb),
                        "rboxes": _regularize(rb)})
    return results


def detections_to_dicts(result: dict[str, np.ndarray], id2label: dict[str, str], rotated: bool
                        ) -> list[dict[str, Any]]:
    """One image's `postprocess` result -> the ``"oriented-object-detection"`` pipeline's detection dicts."""
    rboxes = result["rboxes"]
    if not rotated:  # as the pipeline: the axis-aligned box as a le90 rotated box
        x1, y1, x2, y2 = result["boxes"].T
        rboxes = _regularize(np.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, np.zeros_like(x1)), -1))
    rboxes = rboxes.astype(np.float32)
    boxes, polygons = _hbox(rboxes).astype(np.int32), _polygons(rboxes)
    detections = []
    for score, label, box, rbox, polygon in zip(result["scores"].tolist(), result["labels"].tolist(), boxes.tolist(),
                                                rboxes.tolist(), polygons.tolist()):
        detections.append({
            "score": score,
            "label": id2label.get(str(label), str(label)),
            "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), box)),
            "rbox": dict(zip(("cx", "cy", "w", "h", "theta"), rbox)),
            "polygon": [polygon[i:i + 2] for i in range(0, 8, 2)],
        })
    return detections


# ----------------------------------------------------------------------------------------------------- detector


class OnnxDetector:
    """An exported SL-DETR in onnxruntime, called like the ``"oriented-object-detection"`` pipeline.

    Args:
        path: the ``.onnx`` file written by ``sl-detr export``.
        providers: onnxruntime execution providers (default CPU).
        threads: onnxruntime intra-op threads (0: its default).

    Attributes: ``settings`` (the stored export settings), ``session``, ``model.config.id2label`` (as a pipeline's
    model, for drawing).
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int = 0):
        ort = _require_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=list(providers or
                                                                                    ["CPUExecutionProvider"]))
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise ValueError(f"cannot load {path} with onnxruntime: {err}") from err
        metadata = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in metadata:
            raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: it was not written by `sl-detr export`")
        self.settings = json.loads(metadata[METADATA_KEY])
        self.path = path
        self.rotated = self.settings["box_type"] == "rotated"
        id2label = dict(self.settings["id2label"])
        self.model = SimpleNamespace(config=SimpleNamespace(id2label={int(k): v for k, v in id2label.items()},
                                                            box_type=self.settings["box_type"]))
        self._id2label = id2label

    def forward(self, images: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images -> ``logits (B, Q, C)``, ``pred_boxes (B, Q, D)`` (the graph's outputs) and ``target_sizes``."""
        pixel_values, pixel_mask, target_sizes = preprocess(images, self.settings)
        feeds = {"pixel_values": pixel_values, "pixel_mask": pixel_mask}
        if "target_sizes" in self.settings["inputs"]:
            feeds["target_sizes"] = target_sizes
        logits, pred_boxes = self.session.run(["logits", "pred_boxes"], feeds)
        return logits, pred_boxes, target_sizes

    def detect(self, images: Sequence[Any], threshold: float = 0.5, top_k: int | None = None,
               nms_iou_threshold: float | None = None, batch_size: int = 1) -> list[dict[str, np.ndarray]]:
        """Images -> one `postprocess` dict per image (pixel boxes), optionally with class-wise rotated NMS."""
        _check_threshold(threshold)
        top_k = self.settings["top_k"] if top_k is None else top_k
        results, batch_size = [], max(1, int(batch_size))
        for start in range(0, len(images), batch_size):
            logits, pred_boxes, sizes = self.forward(images[start:start + batch_size])
            results += postprocess(logits, pred_boxes, sizes, threshold, top_k)
        if nms_iou_threshold is not None:
            results = [_nms(result, nms_iou_threshold) for result in results]
        return results

    def __call__(self, images: Any, threshold: float = 0.5, top_k: int | None = None,
                 nms_iou_threshold: float | None = None, batch_size: int = 1, tile: int | None = None,
                 overlap: int = 200, progress: bool = True) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Detect objects; the same arguments and output as the pipeline (a list of dicts per image).

        ``tile`` / ``overlap`` predict whole scenes patch by patch (see `sl_detr_hf.tiling`, needs PyTorch).
        """
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if tile is not None:
            try:
                from sl_detr_hf.tiling import predict_scenes
            except ImportError as err:
                raise ImportError("tiled prediction needs the sl_detr_hf package (with PyTorch) installed") from err
            results = predict_scenes(self, images, tile=tile, overlap=overlap, threshold=threshold, top_k=top_k,
                                     nms_iou_threshold=nms_iou_threshold, batch_size=batch_size, progress=progress)
        else:
            results = [detections_to_dicts(r, self._id2label, self.rotated)
                       for r in self.detect(images, threshold, top_k, nms_iou_threshold, batch_size)]
        return results[0] if single else results


def _check_threshold(threshold: Any) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"`threshold` must be a number in [0, 1], got {threshold!r}")


def _nms(result: dict[str, np.ndarray], iou_threshold: float) -> dict[str, np.ndarray]:
    try:
        import torch

        from sl_detr_hf.geometry_nms import batched_nms_rotated
    except ImportError as err:
        raise ImportError("rotated NMS (nms_iou_threshold) needs the sl_detr_hf package (with PyTorch)") from err
    keep = batched_nms_rotated(torch.from_numpy(result["rboxes"]), torch.from_numpy(result["scores"]),
                               torch.from_numpy(result["labels"]), float(iou_threshold)).numpy()
    return {key: value[keep] for key, value in result.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """``python onnx_predictor.py model.onnx IMAGES... [--threshold T]``: prints the JSON records."""
    parser = argparse.ArgumentParser(description="SL-DETR oriented detection with onnxruntime (no PyTorch).")
    parser.add_argument("model", help="the .onnx file written by `sl-detr export`")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        detector = OnnxDetector(args.model)
        records = []
        for path in args.images:
            with Image.open(path) as image:
                width, height = image.size
            detections = detector(path, threshold=args.threshold, top_k=args.top_k)
            records.append({"image": path, "width": width, "height": height, "detections": detections})
    except (OSError, ValueError) as err:
        parser.error(str(err))
    print(json.dumps(records, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
