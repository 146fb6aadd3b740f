"""Reading images safely: a deliberate pixel limit, a cheap integrity check, 8-bit RGB from any PIL mode.

One rule for every reader of the package (``load_dota``, ``split_dota``, training, ``predict``, ``evaluate``):

- the decompression-bomb limit is :data:`MAX_IMAGE_PIXELS` (DOTA scenes reach ~20,000 px a side, above PIL's
  default 89 MP warning / 178 MP error); a larger image is refused with its path before any long work;
- :func:`check_image` finds truncated or corrupt files cheaply (PNG: chunk CRCs without inflating; JPEG: a
  1/8-scale DCT decode; other formats: a full decode);
- :func:`to_rgb` turns any mode into 8-bit RGB; 16-bit and 32-bit images are scaled by their own range
  (``convert("RGB")`` would clip them to white); with ``gray=True`` an image of one grey channel (a single-channel
  mode, or RGB with three equal channels) stays one 8-bit channel (thermal, SAR, panchromatic frames: the training
  augmentation then works on a third of the pixels).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from ..image_processing_sl_detr import SINGLE_CHANNEL_MODES, to_rgb_image

__all__ = ["MAX_IMAGE_PIXELS", "SINGLE_CHANNEL_MODES", "UnreadableImageError", "check_image", "open_image",
           "pixel_limit", "to_rgb"]

MAX_IMAGE_PIXELS = 1_500_000_000
"""Largest accepted image (pixels): above DOTA-v2's largest scenes (~29,000 x 27,000), far below a memory bomb."""


class UnreadableImageError(OSError):
    """An image file that cannot be decoded; the message names the file."""


@contextlib.contextmanager
def pixel_limit(limit: int | None = MAX_IMAGE_PIXELS) -> Iterator[None]:
    """Set PIL's decompression-bomb limit for the block (PIL errors at twice the limit, so it is halved)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if limit is None else limit // 2
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _describe(err: Exception) -> str:
    if isinstance(err, Image.DecompressionBombError):
        return f"larger than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (sl_detr_hf.data.images.MAX_IMAGE_PIXELS)"
    return f"{type(err).__name__}: {err}"


def check_image(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file after a cheap integrity check.

    Raises:
        UnreadableImageError: the file is truncated, corrupt, not an image, or above :data:`MAX_IMAGE_PIXELS`.
    """
    try:
        with pixel_limit(), Image.open(path) as im:
            size, fmt = im.size, im.format
            if fmt == "PNG":
                im.verify()  # reads every chunk and checks its CRC, without inflating the pixels
            elif fmt == "JPEG":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
            else:
                im.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for bad files
        raise UnreadableImageError(f"cannot read image {path}: {_describe(err)}") from err
    return size


def open_image(source: str | os.PathLike | Mapping[str, Any] | Image.Image, gray: bool = False) -> Image.Image:
    """Decode an image (a path, a ``datasets`` ``{"path", "bytes"}`` dict, or a PIL image) to 8-bit RGB, or with
    ``gray=True`` an image of one grey channel (:data:`SINGLE_CHANNEL_MODES`, or RGB with three equal channels) to
    8-bit ``L``.

    Raises:
        UnreadableImageError: naming the file when it cannot be decoded.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source, gray)
    name: Any = source
    try:
        with pixel_limit():
            if isinstance(source, Mapping):
                name = source.get("path") or "<image bytes>"
                data = source.get("bytes")
                image = Image.open(io.BytesIO(data) if data is not None else source["path"])
            else:
                image = Image.open(Path(source))
            image.load()
        return to_rgb(image, gray)
    except Exception as err:
        raise UnreadableImageError(f"cannot read image {name}: {_describe(err)}") from err


def to_rgb(image: Image.Image, gray: bool = False) -> Image.Image:
    """8-bit RGB (``gray``: 8-bit ``L`` for an image of one grey channel, as `to_rgb_image`); 16/32-bit integer and
    float images scaled by their range, EXIF orientation applied."""
    from PIL import ImageOps

    with contextlib.suppress(Exception):  # a bad EXIF block must not lose the image
        image = ImageOps.exif_transpose(image)
    out = to_rgb_image(image, gray)
    if isinstance(out, Image.Image):
        return out
    return Image.fromarray(out.permute(1, 2, 0).numpy())  # the (3, H, W) uint8 tensor of a high-depth image
