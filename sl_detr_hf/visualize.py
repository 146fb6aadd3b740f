"""Draw oriented detections on images with PIL: one colour per class, a label and score on each box."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from .geometry_conversions import hbox_to_rbox, rbox_to_poly

__all__ = ["PALETTE", "class_color", "draw_detections", "normalize_detections"]

# 20 well-separated colours (Tableau 20 order, strong shades first).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)


def class_color(class_id: int | str) -> tuple[int, int, int]:
    """The colour of a class: `PALETTE[id % 20]` for an integer id, a stable hash of the name for a string."""
    if isinstance(class_id, str):
        class_id = zlib.crc32(class_id.encode("utf-8"))
    return PALETTE[int(class_id) % len(PALETTE)]


def _points(values: Sequence[Any]) -> list[tuple[float, float]]:
    flat = [float(v) for point in values for v in (point if isinstance(point, (list, tuple)) else [point])]
    if len(flat) != 8:
        raise ValueError(f"a polygon needs 4 points (8 numbers), got {len(flat)} numbers")
    return [(flat[i], flat[i + 1]) for i in range(0, 8, 2)]


def normalize_detections(detections: Any, id2label: Mapping[int, str] | None = None
                         ) -> list[tuple[float, int | str, str, list[tuple[float, float]]]]:
    """Detections as `(score, class key, label text, 4 corner points)`.

    Accepts the oriented pipeline's output (a list of dicts with `score`, `label`, `polygon`, or only `box` as in
    transformers' `"object-detection"` pipeline) and `SlDetrImageProcessor.post_process_object_detection`'s output
    for one image (a dict of tensors `scores`, `labels` and `polygons`, or `boxes` for axis-aligned models).
    The class key is the class id when known (from `labels`, or the label name through `id2label`), else the name.
    """
    label2id = {str(name): int(i) for i, name in (id2label or {}).items()}
    out = []
    if isinstance(detections, Mapping):  # post-processing output: tensors
        scores = detections["scores"].tolist()
        labels = [int(v) for v in detections["labels"].tolist()]
        if detections.get("polygons") is not None:
            polygons = [_points(p) for p in detections["polygons"].tolist()]
        else:
            polygons = [_points(p) for p in rbox_to_poly(hbox_to_rbox(detections["boxes"].float())).tolist()]
        for score, label, polygon in zip(scores, labels, polygons):
            name = (id2label or {}).get(label, str(label))
            out.append((float(score), label, str(name), polygon))
        return out
    for det in detections:
        if det.get("polygon") is not None:
            polygon = _points(det["polygon"])
        else:
            b = det["box"]
            hbox = torch.tensor([[b["xmin"], b["ymin"], b["xmax"], b["ymax"]]], dtype=torch.float64)
            polygon = _points(rbox_to_poly(hbox_to_rbox(hbox))[0].tolist())
        name = str(det["label"])
        out.append((float(det["score"]), label2id.get(name, name), name, polygon))
    return out


def draw_detections(image: Image.Image, detections: Any, id2label: Mapping[int, str] | None = None,
                    line_width: int | None = None, font_size: int | None = None) -> Image.Image:
    """A copy of `image` (RGB) with each detection's oriented box drawn and labelled `"name score"`.

    Args:
        image: the image the detections are in (pixel coordinates).
        detections: see `normalize_detections`.
        id2label: class names (gives colours by class id, and names for post-processing outputs).
        line_width, font_size: default to about 0.3 % and 2 % of the image's longer side.
    """
    canvas = image.convert("RGB")  # always a copy
    side = max(canvas.size)
    line_width = line_width or max(1, round(side * 0.003))
    font_size = font_size or max(10, round(side * 0.02))
    font = ImageFont.load_default(size=font_size)
    draw = ImageDraw.Draw(canvas)
    # Lowest scores first, so that the best boxes and labels end up on top.
    for score, key, name, points in sorted(normalize_detections(detections, id2label), key=lambda d: d[0]):
        color = class_color(key)
        draw.polygon(points, outline=color, width=line_width)
        text = f"{name} {score:.2f}"
        x, y = min(points, key=lambda p: (p[1], p[0]))  # the top-most corner
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left, bottom - top
        x = min(max(x, 0), max(canvas.width - w - 2, 0))
        y = y - h - 3 if y - h - 3 >= 0 else y + 1
        draw.rectangle((x, y, x + w + 2, y + h + 2), fill=color)
        luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        draw.text((x + 1 - left, y + 1 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)
    return canvas
