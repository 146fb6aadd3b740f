"""A synthetic oriented-object dataset in DOTA format, deterministic from a seed.

Every class has its own shape, colour and texture (so a tiny detector learns it on CPU in minutes); objects
are drawn as rotated shapes at random positions, sizes, aspect ratios and angles over noisy or gradient
backgrounds, some touching or overlapping, some faded and marked difficult. The polygon of an object is the
rotated rectangle it is drawn in (``rbox_to_poly`` of its box).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..geometry_conversions import rbox_to_hbox, rbox_to_poly
from ..geometry_overlaps import box_iou_rotated
from .dota import CLASSES_FILE, write_dota_labels

__all__ = ["SYNTHETIC_CLASSES", "SyntheticDotaConfig", "make_synthetic_dota", "make_synthetic_image"]

SYNTHETIC_CLASSES: tuple[str, ...] = ("red-block", "green-ellipse", "blue-striped", "yellow-arrow",
                                      "cyan-checker")
"""Class names (ids in this order): a solid red rectangle, a green ellipse, a blue rectangle with white
stripes along its length, a yellow arrow head (triangle pointing along the long side), a cyan / dark checker."""

_COLOURS = {"red-block": (220, 40, 40), "green-ellipse": (40, 200, 60), "blue-striped": (40, 70, 230),
            "yellow-arrow": (240, 220, 40), "cyan-checker": (40, 220, 230)}
_ASPECTS = {"red-block": (1.4, 2.5), "green-ellipse": (1.5, 2.5), "blue-striped": (2.0, 4.0),
            "yellow-arrow": (1.3, 2.0), "cyan-checker": (1.4, 2.2)}


@dataclass
class SyntheticDotaConfig:
    """Generator settings (all sizes in pixels).

    The defaults make 256 x 256 images with 1 to 8 objects whose long side is 24 to 80 px, aspect ratios of
    1.3 to 4 (never square, so the angle is well defined), pairwise IoU at most 0.2 (some touch or overlap),
    10% of them faded to 45% contrast and marked difficult.
    """

    image_size: int | tuple[int, int] = 256
    """Square side, or ``(width, height)``."""
    min_objects: int = 1
    max_objects: int = 8
    min_object_size: float = 24.0
    """Smallest long side."""
    max_object_size: float = 80.0
    max_overlap_iou: float = 0.2
    """Largest rotated IoU between two objects of an image (0: they may touch but not overlap)."""
    difficult_prob: float = 0.1
    difficult_alpha: float = 0.45
    """Opacity of difficult objects over the background."""
    noise_std: float = 6.0
    """Gaussian pixel noise added to the final image."""
    gsd: float = 1.0
    max_tries: int = 50
    """Placement attempts per object before giving up on it."""


def make_synthetic_image(
    rng: np.random.Generator, config: SyntheticDotaConfig
) -> tuple[Image.Image, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one image.

    Returns:
        ``(image, rboxes (N, 5) float64 pixel le90, labels (N,) int64, difficult (N,) int64)``.
    """
    width, height = _size(config.image_size)
    canvas = Image.fromarray(_background(rng, width, height))
    boxes: list[list[float]] = []
    labels: list[int] = []
    difficult: list[int] = []
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    for _ in range(count):
        placed = _place(rng, config, width, height, boxes)
        if placed is None:
            continue
        label, box = placed
        hard = bool(rng.random() < config.difficult_prob)
        _draw(canvas, rng, SYNTHETIC_CLASSES[label], box, config.difficult_alpha if hard else 1.0)
        boxes.append(box)
        labels.append(label)
        difficult.append(int(hard))
    pixels = np.asarray(canvas, dtype=np.float32)
    pixels += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(config.noise_std)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    rboxes = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 5)
    return image, rboxes, torch.tensor(labels, dtype=torch.long), torch.tensor(difficult, dtype=torch.long)


def make_synthetic_dota(
    root: str | Path,
    num_images: int = 64,
    image_size: int | tuple[int, int] | None = None,
    seed: int = 0,
    config: SyntheticDotaConfig | None = None,
    prefix: str = "syn",
    **overrides,
) -> Path:
    """Write ``root/images/{prefix}{i:05d}.png``, ``root/labelTxt/*.txt`` (DOTA format with ``imagesource:synthetic``
    and ``gsd:`` headers) and ``root/classes.txt`` (:data:`SYNTHETIC_CLASSES`, read back by ``load_dota``).

    Image ``i`` depends only on ``(seed, i)``: the same seed gives byte-identical files, and a larger
    ``num_images`` extends a smaller set.

    Args:
        num_images: images to write; image_size: overrides ``config.image_size``;
        config: :class:`SyntheticDotaConfig` (defaults); overrides: fields of the config, e.g. ``max_objects=3``.
    Returns:
        ``root``.
    """
    config = dataclasses.replace(config or SyntheticDotaConfig(), **overrides)
    if image_size is not None:
        config.image_size = image_size
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    (root / CLASSES_FILE).write_text("\n".join(SYNTHETIC_CLASSES) + "\n", encoding="utf-8")
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        image, rboxes, labels, difficult = make_synthetic_image(rng, config)
        name = f"{prefix}{i:05d}"
        image.save(root / "images" / f"{name}.png", compress_level=1)
        write_dota_labels(root / "labelTxt" / f"{name}.txt", rbox_to_poly(rboxes),
                          [SYNTHETIC_CLASSES[k] for k in labels.tolist()], difficult.tolist(),
                          imagesource="synthetic", gsd=config.gsd)
    return root


def _size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    width, height = image_size
    return int(width), int(height)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Muted background ``(H, W, 3)`` uint8: a two-colour gradient, smooth blobs, or grainy noise."""
    kind = rng.integers(3)
    base = rng.uniform(50, 150, 3).astype(np.float32)
    if kind == 0:  # linear gradient between two muted colours along a random direction
        other = rng.uniform(50, 150, 3).astype(np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
        ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
        t = (math.cos(angle) * xs + math.sin(angle) * ys)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = base + (other - base) * t[..., None]
    elif kind == 1:  # smooth blobs: coarse noise upsampled
        coarse = rng.uniform(-30, 30, (max(2, height // 48), max(2, width // 48), 3)).astype(np.float32)
        blob = np.asarray(Image.fromarray(np.uint8(coarse + 128)).resize((width, height), Image.BICUBIC))
        img = base + (blob.astype(np.float32) - 128)
    else:  # grain
        img = base + rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(18)
    grey = img.mean(-1, keepdims=True)  # desaturate so that object colours stand out
    return np.clip(0.7 * grey + 0.3 * img, 0, 255).astype(np.uint8)


def _place(rng: np.random.Generator, config: SyntheticDotaConfig, width: int, height: int,
           boxes: list[list[float]]) -> tuple[int, list[float]] | None:
    """Random class and box fully inside the image, overlapping earlier boxes by at most the allowed IoU."""
    label = int(rng.integers(len(SYNTHETIC_CLASSES)))
    lo, hi = _ASPECTS[SYNTHETIC_CLASSES[label]]
    existing = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 5)
    for _ in range(config.max_tries):
        long_side = rng.uniform(config.min_object_size, config.max_object_size)
        short_side = long_side / rng.uniform(lo, hi)
        theta = rng.uniform(-math.pi / 2, math.pi / 2)
        box = torch.tensor([[0.0, 0.0, long_side, short_side, theta]], dtype=torch.float64)
        half = rbox_to_hbox(box)[0, 2:]  # half extents of the enclosing axis-aligned box
        if 2 * half[0] >= width or 2 * half[1] >= height:
            continue
        box[0, 0] = rng.uniform(float(half[0]), width - float(half[0]))
        box[0, 1] = rng.uniform(float(half[1]), height - float(half[1]))
        if existing.shape[0] and float(box_iou_rotated(box, existing).max()) > config.max_overlap_iou:
            continue
        return label, box[0].tolist()
    return None


def _to_image(box: list[float], local: np.ndarray) -> list[tuple[float, float]]:
    """Points ``(K, 2)`` in the box frame (units of the box: x in ``[-w/2, w/2]``) -> image points."""
    cx, cy, _, _, theta = box
    cos, sin = math.cos(theta), math.sin(theta)
    x = cx + cos * local[:, 0] - sin * local[:, 1]
    y = cy + sin * local[:, 0] + cos * local[:, 1]
    return list(zip(x.tolist(), y.tolist()))


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _draw(canvas: Image.Image, rng: np.random.Generator, name: str, box: list[float], alpha: float) -> None:
    """Draw one object of class ``name`` in the rotated rectangle ``box`` with opacity ``alpha``."""
    w, h = box[2] / 2, box[3] / 2
    colour = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in _COLOURS[name])
    layer = canvas.copy() if alpha < 1 else canvas
    draw = ImageDraw.Draw(layer)
    if name == "green-ellipse":
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        draw.polygon(_to_image(box, np.stack((w * np.cos(t), h * np.sin(t)), 1)), fill=colour)
    elif name == "yellow-arrow":
        draw.polygon(_to_image(box, np.array([[w, 0.0], [-w, -h], [-w, h]])), fill=colour)
    else:
        draw.polygon(_to_image(box, _rect(-w, -h, w, h)), fill=colour)
    if name == "blue-striped":  # two white stripes along the long side
        for v in (-h / 2, h / 2):
            draw.polygon(_to_image(box, _rect(-w, v - h / 8, w, v + h / 8)), fill=(245, 245, 245))
    elif name == "cyan-checker":  # dark cells on a 4 x 2 grid
        for i in range(4):
            for j in range(2):
                if (i + j) % 2:
                    x0, y0 = -w + i * w / 2, -h + j * h
                    draw.polygon(_to_image(box, _rect(x0, y0, x0 + w / 2, y0 + h)), fill=(20, 40, 60))
    if alpha < 1:
        canvas.paste(Image.blend(canvas, layer, alpha))
