"""Image processor for SL-DETR: resize / rescale / normalize / pad with oriented or axis-aligned boxes.

Ships with ``trust_remote_code`` checkpoints: imports only torch, transformers, the standard library and
the ``.geometry_*`` modules.

Annotations (one dict per image, ``annotations=`` of :meth:`SlDetrImageProcessor.preprocess`)::

    {"image_id": int | str,
     "annotations": [{"polygon": [x1, y1, ..., x4, y4]}   # DOTA quadrilateral, pixels, or
                     {"rbox": [cx, cy, w, h, theta]}       # pixel rotated box (radians, any convention), or
                     {"bbox": [x, y, w, h]}                 # COCO box, pixels
                     + "category_id": int (>= 0), optional "difficult": 0/1/2 or bool,
                       optional "iscrowd": 0/1]}

When an object carries several geometries, ``box_type="rotated"`` uses ``rbox``, else ``polygon``, else
``bbox``; ``box_type="horizontal"`` uses ``bbox``, else the axis-aligned hull of ``rbox`` / ``polygon``.
Rotated mode turns polygons into their minimum-area rectangle (docs/boxes.md#corners-and-polygons).

Labels (``labels``, one dict per image): ``class_labels (N,)`` int64, ``boxes`` float32 ``(N, 5)``
normalized ``(cx/W, cy/H, w/W, h/H, theta)`` le90 or ``(N, 4)`` normalized ``(cx, cy, w, h)``, where
``(H, W) = size`` is the resized image before padding; ``size (2,)`` and ``orig_size (2,)`` as ``(H, W)``,
``image_id`` (a tensor for integer ids, the string otherwise) and, for rotated boxes, ``difficult (N,)`` bool.
Normalized coordinates do not change under an aspect-preserving resize, so they are computed from the
original pixel boxes and the original size; a box in resized pixels is ``denormalize_rboxes(boxes, size)``
(exact up to the integer rounding of the resized size, below one pixel).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack

from .geometry_conversions import (
    denormalize_rboxes,
    normalize_rboxes,
    poly_to_rbox,
    rbox_to_hbox,
    rbox_to_poly,
    regularize_rboxes,
)
from .geometry_nms import batched_nms_rotated

__all__ = ["SlDetrImageProcessor", "pad_images", "standardize_image", "to_rgb_image"]

logger = logging.getLogger(__name__)

_BOX_TYPES = ("rotated", "horizontal")
# the smallest standard deviation `normalize_per_image` divides by (pixel values in [0, 1]: 5 of 255 grey levels),
# so that a flat image (calm water, a blank frame) is not blown up into amplified sensor noise
MIN_IMAGE_STD = 5 / 255
_GEOMETRY_LENGTHS = {"polygon": 8, "rbox": 5, "bbox": 4}


class SlDetrImageProcessorKwargs(ImagesKwargs, total=False):
    """Extra keyword arguments: ``box_type`` ("rotated" | "horizontal"), ``max_detections`` (default top-k),
    ``clip_boxes`` (clip the axis-aligned ``boxes`` of the post-processing to the image, as mmdetection does),
    ``normalize_per_image`` (each image to zero mean and unit std by its own statistics, instead of
    ``image_mean`` / ``image_std``)."""

    box_type: str
    max_detections: int
    clip_boxes: bool
    normalize_per_image: bool


# ------------------------------------------------------------------------------------------------------
# Annotation parsing
# ------------------------------------------------------------------------------------------------------


def _numbers(value: Any, length: int, where: str) -> list[float]:
    """``value`` as ``length`` finite floats, or a ValueError naming ``where``."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().flatten().tolist()
    elif hasattr(value, "tolist"):  # numpy arrays
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{where} must be a sequence of {length} numbers, got {type(value).__name__}")
    if len(value) != length:
        raise ValueError(f"{where} must have {length} numbers, got {len(value)}")
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where} must contain numbers, got {value!r}") from err
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{where} contains NaN or inf: {out}")
    return out


def _category_id(cat: Any, where: str) -> int:
    """A class id: an integer, or an integral float such as ``1.0`` (albumentations 2.x returns float ids)."""
    if isinstance(cat, Tensor):
        cat = cat.item() if cat.numel() == 1 else cat
    if not isinstance(cat, bool) and hasattr(cat, "is_integer") and not hasattr(cat, "__index__"):  # float types
        if not (math.isfinite(float(cat)) and float(cat).is_integer()):
            raise ValueError(f"{where}['category_id'] must be an integer, got {cat!r} (not a whole number)")
        cat = int(cat)
    if isinstance(cat, bool) or not hasattr(cat, "__index__"):  # int, numpy integer
        raise ValueError(f"{where}['category_id'] must be an integer, got {cat!r}")
    return cat


def _object_geometry(obj: Mapping, box_type: str, where: str) -> tuple[str, list[float]]:
    order = ("rbox", "polygon", "bbox") if box_type == "rotated" else ("bbox", "rbox", "polygon")
    for key in order:
        if obj.get(key) is not None:
            values = _numbers(obj[key], _GEOMETRY_LENGTHS[key], f"{where}[{key!r}]")
            if key in ("rbox", "bbox") and (values[2] < 0 or values[3] < 0):
                raise ValueError(f"{where}[{key!r}] has a negative width or height: {values}")
            return key, values
    raise ValueError(f"{where} has no geometry: expected one of 'polygon' (8 numbers), 'rbox' (5) or 'bbox' (4), "
                     f"got keys {sorted(obj)}")


def _to_pixel_boxes(kind: list[str], values: list[list[float]], box_type: str) -> Tensor:
    """Geometries -> ``(N, 5)`` le90 pixel rotated boxes or ``(N, 4)`` pixel ``(x1, y1, x2, y2)`` (float64)."""
    n = len(kind)
    out = torch.zeros(n, 5, dtype=torch.float64)
    kinds = {k: [i for i in range(n) if kind[i] == k] for k in _GEOMETRY_LENGTHS}
    for key, idx in kinds.items():
        if not idx:
            continue
        vals = torch.tensor([values[i] for i in idx], dtype=torch.float64)
        if key == "polygon":
            out[idx] = poly_to_rbox(vals)
        elif key == "rbox":
            out[idx] = regularize_rboxes(vals)
        else:
            x, y, w, h = vals.unbind(-1)
            out[idx] = torch.stack((x + w / 2, y + h / 2, w, h, torch.zeros_like(w)), dim=-1)
    if box_type == "rotated":
        return regularize_rboxes(out)
    hbox = rbox_to_hbox(out)
    bbox_idx = kinds["bbox"]
    if bbox_idx:  # exact corners for COCO boxes (no trigonometry round-off)
        vals = torch.tensor([values[i] for i in bbox_idx], dtype=torch.float64)
        hbox[bbox_idx] = torch.cat((vals[:, :2], vals[:, :2] + vals[:, 2:]), dim=-1)
    return hbox


def parse_annotation(target: Any, index: int, box_type: str) -> dict[str, Any]:
    """Validate one image's annotation dict and return pixel boxes (float64) and per-object fields.

    Returns:
        ``{"image_id", "boxes" (N, 5|4) pixel, "class_labels" (N,), "difficult" (N,) bool, "iscrowd" (N,) bool}``.
    """
    where = f"annotations[{index}]"
    if not isinstance(target, Mapping):
        raise ValueError(f"{where} must be a dict with 'image_id' and 'annotations', got {type(target).__name__}")
    if "image_id" not in target:
        raise ValueError(f"{where} has no 'image_id'")
    objects = target.get("annotations")
    if objects is None or isinstance(objects, (str, bytes, Mapping)) or not isinstance(objects, Sequence):
        raise ValueError(f"{where}['annotations'] must be a list of object dicts, got {type(objects).__name__}")
    kind, values, labels, difficult, crowd = [], [], [], [], []
    for j, obj in enumerate(objects):
        obj_where = f"{where}['annotations'][{j}]"
        if not isinstance(obj, Mapping):
            raise ValueError(f"{obj_where} must be a dict, got {type(obj).__name__}")
        key, vals = _object_geometry(obj, box_type, obj_where)
        cat = _category_id(obj.get("category_id"), obj_where)
        if cat.__index__() < 0:
            raise ValueError(f"{obj_where}['category_id'] must be >= 0, got {cat}")
        kind.append(key)
        values.append(vals)
        labels.append(cat.__index__())
        difficult.append(bool(obj.get("difficult", 0)))
        crowd.append(bool(obj.get("iscrowd", 0)))
    return {
        "image_id": target["image_id"],
        "boxes": _to_pixel_boxes(kind, values, box_type) if kind else torch.zeros(0, 5 if box_type == "rotated" else 4,
                                                                                 dtype=torch.float64),
        "class_labels": torch.tensor(labels, dtype=torch.int64),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
        "iscrowd": torch.tensor(crowd, dtype=torch.bool),
    }


def _image_id_value(image_id: Any) -> Any:
    if isinstance(image_id, Tensor):
        return image_id.reshape(-1)[:1].to(torch.int64)
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        return torch.tensor([image_id], dtype=torch.int64)
    return image_id


def build_labels(parsed: dict[str, Any], orig_size: tuple[int, int], size: tuple[int, int],
                 box_type: str) -> dict[str, Any]:
    """Normalized model labels of one image from :func:`parse_annotation` output (see the module docstring).

    Horizontal boxes are clipped to the image and crowd objects dropped (as in DETR); objects of zero area
    are dropped with a warning.
    """
    boxes, keep = parsed["boxes"], ~parsed["iscrowd"]
    height, width = orig_size
    if box_type == "rotated":
        keep &= (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        norm = normalize_rboxes(boxes, (height, width))
    else:
        boxes = torch.stack((boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                             boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)), dim=-1)
        keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        scale = boxes.new_tensor([width, height, width, height])
        norm = torch.cat(((boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]), dim=-1) / scale
    dropped = int((~keep & ~parsed["iscrowd"]).sum())
    if dropped:
        logger.warning("image %r: dropped %d object(s) of zero area", parsed["image_id"], dropped)
    labels = {
        "image_id": _image_id_value(parsed["image_id"]),
        "class_labels": parsed["class_labels"][keep],
        "boxes": norm[keep].to(torch.float32),
        "size": torch.tensor(size, dtype=torch.int64),
        "orig_size": torch.tensor(orig_size, dtype=torch.int64),
    }
    if box_type == "rotated":
        labels["difficult"] = parsed["difficult"][keep]
    return labels


def _check_aspect(orig: tuple[int, int], new: tuple[int, int], index: int) -> None:
    """Rotated boxes stay rectangles only under an aspect-preserving resize (up to integer rounding)."""
    (ho, wo), (hn, wn) = orig, new
    if abs(wn / wo - hn / ho) > 1.0 / wo + 1.0 / ho + 1e-9:
        raise ValueError(f"image {index}: resizing {ho}x{wo} to {hn}x{wn} changes the aspect ratio, which turns "
                         "rotated boxes into parallelograms; use `size` with 'shortest_edge'/'longest_edge' or "
                         "'max_height'/'max_width', or `box_type='horizontal'`")


_HIGH_DEPTH_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N")
SINGLE_CHANNEL_MODES = ("1", "L", "LA", *_HIGH_DEPTH_MODES)
"""PIL modes of one colour channel (``LA``: its alpha is dropped), kept as ``L`` by ``to_rgb_image(..., gray=True)``."""


def to_rgb_image(image: Any, gray: bool = False) -> Any:
    """A PIL image of any mode as 8-bit RGB (other inputs are returned unchanged); with ``gray``, an image of one
    grey channel (``1``, ``L``, ``LA``, 16 / 32-bit, or RGB whose three channels are equal, as thermal frames are
    often stored) as 8-bit ``L`` instead, the same pixels in a third of the memory.

    Grayscale, palette, RGBA, CMYK, ... are converted; 16-bit, 32-bit integer and float images are first scaled
    linearly from their own ``[min, max]`` to ``[0, 255]`` (a plain ``convert("RGB")`` clips them to white).
    """
    mode = getattr(image, "mode", None)
    if not isinstance(mode, str) or not hasattr(image, "convert") or (gray and mode == "L"):
        return image
    if mode == "RGB":
        return _gray_channel(image) if gray else image
    if mode in _HIGH_DEPTH_MODES:
        wide = image if mode in ("I", "F") else image.convert("I")
        low, high = wide.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = wide.point(lambda v: (v - low) * scale).convert("L")
    return image.convert("L" if gray and mode in SINGLE_CHANNEL_MODES else "RGB")


def _gray_channel(image: Any) -> Any:
    """An RGB PIL image whose three channels are equal as its one channel (``L``); else the image itself."""
    from PIL import ImageChops

    red, green, blue = image.split()
    if ImageChops.difference(red, green).getbbox() is None and ImageChops.difference(red, blue).getbbox() is None:
        return red
    return image


# ------------------------------------------------------------------------------------------------------
# The processor
# ------------------------------------------------------------------------------------------------------


def pad_images(images: Sequence[Tensor], size: tuple[int, int] | None = None, value: float = 0.0,
               size_name: str = "the padded size") -> tuple[Tensor, Tensor]:
    """Pad ``(C, h, w)`` images at the bottom / right to ``size`` (default: the largest ``h`` and ``w``).

    The one padding rule of the package (image processor, training collator, pipeline batches).

    Returns:
        ``pixel_values (B, C, H, W)`` (the first image's dtype) and ``pixel_mask (B, H, W)`` int64, 1 = image.
    """
    if not images:
        raise ValueError("cannot pad an empty list of images")
    height, width = size or (max(im.shape[-2] for im in images), max(im.shape[-1] for im in images))
    out = images[0].new_full((len(images), images[0].shape[0], height, width), value)
    mask = torch.zeros(len(images), height, width, dtype=torch.int64)
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        if h > height or w > width:
            raise ValueError(f"image {i} ({h}x{w}) is larger than {size_name} {height}x{width}")
        out[i, :, :h, :w] = im
        mask[i, :h, :w] = 1
    return out, mask


def standardize_image(image: Tensor) -> Tensor:
    """``(C, H, W)`` float image -> zero mean and unit standard deviation over all its pixels and channels (the
    deviation floored at :data:`MIN_IMAGE_STD`): ``normalize_per_image`` of :class:`SlDetrImageProcessor`."""
    mean = image.mean()
    std = image.std(correction=0).clamp_min(MIN_IMAGE_STD)
    return (image - mean) / std


class SlDetrImageProcessor(TorchvisionBackend):
    r"""Image processor of SL-DETR (oriented or axis-aligned boxes).

    Images are resized with the aspect ratio kept (default: shortest edge 1024, longest edge 1024, i.e. the
    image fits in 1024 x 1024 as in the DOTA protocol), rescaled by 1/255, normalized with the ImageNet
    mean / std, and padded at the bottom / right to the largest image of the batch (or to ``pad_size``)
    with a ``pixel_mask`` (1 = image, 0 = padding). Every step has its ``do_*`` flag.

    Args (besides the usual ``do_resize``, ``size``, ``resample``, ``do_rescale``, ``rescale_factor``,
    ``do_normalize``, ``image_mean``, ``image_std``, ``do_pad``, ``pad_size``):
        box_type: ``"rotated"`` (labels ``(N, 5)``) or ``"horizontal"`` (labels ``(N, 4)``).
        max_detections: default ``top_k`` of :meth:`post_process_object_detection`.
        clip_boxes: clip the post-processing's axis-aligned ``boxes`` to the image (``target_sizes``), as
            mmdetection's DETR heads do (default ``False``; set by the DINO checkpoint converter). Rotated
            ``rboxes`` are never clipped.
        normalize_per_image: with ``do_normalize``, standardize each image by its own mean and standard
            deviation (over all its pixels and channels, after the resize and the rescale; the deviation floored at
            :data:`MIN_IMAGE_STD`) instead of ``image_mean`` / ``image_std`` (default ``False``). For sensors
            whose gain and contrast change from frame to frame, as thermal cameras (docs/training.md,
            "Per-image normalization").
    """

    valid_kwargs = SlDetrImageProcessorKwargs
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_DEFAULT_MEAN
    image_std = IMAGENET_DEFAULT_STD
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_pad = True
    size = {"shortest_edge": 1024, "longest_edge": 1024}
    default_to_square = False
    box_type = "rotated"
    max_detections = 500
    clip_boxes = False
    normalize_per_image = False
    model_input_names = ["pixel_values", "pixel_mask"]

    def __init__(self, **kwargs: Unpack[SlDetrImageProcessorKwargs]) -> None:
        super().__init__(**kwargs)
        if self.box_type not in _BOX_TYPES:
            raise ValueError(f"`box_type` must be one of {_BOX_TYPES}, got {self.box_type!r}")
        if not isinstance(self.max_detections, int) or self.max_detections < 1:
            raise ValueError(f"`max_detections` must be a positive integer, got {self.max_detections!r}")

    def preprocess(self, images: Any, annotations: Any = None,
                   **kwargs: Unpack[SlDetrImageProcessorKwargs]) -> BatchFeature:
        """Preprocess a batch of images (PIL, numpy or torch; HWC or CHW) and optional annotations.

        Args:
            images: one image or a list of images.
            annotations: one annotation dict or a list of them, one per image (see the module docstring).
            **kwargs: overrides of the processor's settings for this call (``return_tensors="pt"``, ...).
        Returns:
            ``BatchFeature`` with ``pixel_values (B, 3, H, W)``, ``pixel_mask (B, H, W)`` (with ``do_pad``) and,
            with annotations, ``labels`` (a list of per-image dicts).
        """
        if isinstance(images, (list, tuple)):
            images = [to_rgb_image(image) for image in images]
        else:
            images = to_rgb_image(images)
        return super().preprocess(images, annotations, **kwargs)

    def _preprocess(self, images: list[Tensor], annotations: Any, do_resize: bool, size: SizeDict,
                    resample: Any, do_rescale: bool, rescale_factor: float, do_normalize: bool,
                    image_mean: Any, image_std: Any, do_pad: bool, pad_size: SizeDict | None,
                    return_tensors: Any = None, box_type: str | None = None,
                    normalize_per_image: bool | None = None, **kwargs: Any) -> BatchFeature:
        box_type = box_type or self.box_type
        per_image = self.normalize_per_image if normalize_per_image is None else normalize_per_image
        if box_type not in _BOX_TYPES:
            raise ValueError(f"`box_type` must be one of {_BOX_TYPES}, got {box_type!r}")
        if annotations is not None:
            if isinstance(annotations, Mapping):
                annotations = [annotations]
            if not isinstance(annotations, Sequence) or len(annotations) != len(images):
                n = len(annotations) if isinstance(annotations, Sequence) else type(annotations).__name__
                raise ValueError(f"got {len(images)} image(s) but {n} annotation(s); pass one dict per image")
            parsed = [parse_annotation(t, i, box_type) for i, t in enumerate(annotations)]

        processed, sizes, orig_sizes = [], [], []
        for i, image in enumerate(images):
            orig = (int(image.shape[-2]), int(image.shape[-1]))
            if do_resize:
                image = self.resize(image, size=size, resample=resample)
            new = (int(image.shape[-2]), int(image.shape[-1]))
            if annotations is not None and box_type == "rotated":
                _check_aspect(orig, new, i)
            standardize = do_normalize and per_image
            image = self.rescale_and_normalize(image.unsqueeze(0), do_rescale, rescale_factor,
                                               do_normalize and not standardize, image_mean, image_std)[0]
            if standardize:
                image = standardize_image(image.float())
            processed.append(image.to(torch.float32))
            sizes.append(new)
            orig_sizes.append(orig)

        data: dict[str, Any] = {}
        if do_pad:
            processed, data["pixel_mask"] = self._pad_batch(processed, pad_size)
        if len({tuple(p.shape) for p in processed}) == 1:
            data["pixel_values"] = torch.stack(processed)
        else:
            data["pixel_values"] = processed
        encoded = BatchFeature(data, tensor_type=return_tensors)
        if annotations is not None:
            encoded["labels"] = [
                BatchFeature(build_labels(p, o, s, box_type), tensor_type=return_tensors)
                for p, o, s in zip(parsed, orig_sizes, sizes)
            ]
        return encoded

    @staticmethod
    def _pad_batch(images: list[Tensor], pad_size: SizeDict | None) -> tuple[list[Tensor], Tensor]:
        """Zero-pad ``(C, h, w)`` images at the bottom / right; returns them and ``pixel_mask (B, H, W)`` int64."""
        size = None
        if pad_size is not None:
            if not (pad_size.height and pad_size.width):
                raise ValueError(f"`pad_size` must have 'height' and 'width', got {dict(pad_size)}")
            size = (int(pad_size.height), int(pad_size.width))
        padded, mask = pad_images(images, size, size_name="`pad_size`")
        return list(padded), mask

    def post_process_object_detection(self, outputs: Any, threshold: float = 0.5,
                                      target_sizes: Tensor | Sequence[Sequence[int]] | None = None,
                                      top_k: int | None = None,
                                      nms_iou_threshold: float | None = None) -> list[dict[str, Tensor]]:
        """Model outputs -> detections per image, like Deformable DETR's post-processing.

        Scores are ``sigmoid(logits)``; the ``top_k`` best (query, class) pairs of each image are kept
        (a query may appear with several classes), then those with ``score > threshold``.

        Args:
            outputs: object (or dict) with ``logits (B, Q, C)`` and ``pred_boxes (B, Q, 5)`` normalized
                ``(cx, cy, w, h, theta)`` or ``(B, Q, 4)`` normalized ``(cx, cy, w, h)``.
            threshold: minimum score.
            target_sizes: ``(B, 2)`` original ``(H, W)`` of each image. The normalized boxes are relative to
                the resized image, whose aspect ratio is the original one, so multiplying by the original size
                gives original-pixel boxes directly. ``None`` keeps normalized units (rotated boxes and
                polygons are then in a unit square, geometrically exact only for square images).
            top_k: candidates per image (default ``self.max_detections``).
            nms_iou_threshold: if set, class-wise rotated NMS (exact IoU; axis-aligned boxes are rotated
                boxes with angle 0) at this IoU after thresholding.
        Returns:
            One dict per image: ``scores (N,)``, ``labels (N,)``, ``boxes (N, 4)`` axis-aligned
            ``(x1, y1, x2, y2)`` (for rotated models the enclosing box of the rotated box), and for rotated
            models ``rboxes (N, 5)`` ``(cx, cy, w, h, theta)`` le90 and ``polygons (N, 8)``, sorted by score.
        """
        logits, pred_boxes = _get(outputs, "logits"), _get(outputs, "pred_boxes")
        if logits.dim() != 3 or pred_boxes.dim() != 3 or pred_boxes.shape[:2] != logits.shape[:2]:
            raise ValueError(f"expected logits (B, Q, C) and pred_boxes (B, Q, 4|5), got {tuple(logits.shape)} "
                             f"and {tuple(pred_boxes.shape)}")
        if pred_boxes.shape[-1] not in (4, 5):
            raise ValueError(f"pred_boxes must have 4 or 5 coordinates, got {pred_boxes.shape[-1]}")
        batch, queries, classes = logits.shape
        rotated = pred_boxes.shape[-1] == 5
        sizes = _target_sizes(target_sizes, batch, logits.device)
        k = min(int(top_k if top_k is not None else self.max_detections), queries * classes)
        prob = logits.detach().float().sigmoid().reshape(batch, -1)
        scores, index = prob.topk(k, dim=1)
        query, labels = index // classes, index % classes
        boxes = pred_boxes.detach().float().gather(1, query.unsqueeze(-1).expand(-1, -1, pred_boxes.shape[-1]))
        if not rotated:  # an axis-aligned box is a rotated box with angle 0
            boxes = torch.cat((boxes, boxes.new_zeros(batch, k, 1)), dim=-1)
        boxes = boxes.clone()
        boxes[..., 2:4] = boxes[..., 2:4].clamp_min(0)
        results = []
        for b in range(batch):
            keep = scores[b] > threshold
            s, lab, rb = scores[b][keep], labels[b][keep], boxes[b][keep]
            if sizes is not None:
                rb = denormalize_rboxes(rb, sizes[b])
            if nms_iou_threshold is not None:
                kept = batched_nms_rotated(rb, s, lab, float(nms_iou_threshold))
                s, lab, rb = s[kept], lab[kept], rb[kept]
            hbox = rbox_to_hbox(rb)
            if self.clip_boxes and sizes is not None:
                limit = sizes[b].flip(0).repeat(2)  # (W, H, W, H)
                hbox = torch.minimum(hbox.clamp_min(0), limit)
            result = {"scores": s, "labels": lab, "boxes": hbox}
            if rotated:
                rb = regularize_rboxes(rb)
                result["rboxes"] = rb
                result["polygons"] = rbox_to_poly(rb)
            results.append(result)
        return results


def _get(outputs: Any, name: str) -> Tensor:
    value = outputs[name] if isinstance(outputs, Mapping) else getattr(outputs, name, None)
    if value is None:
        raise ValueError(f"`outputs` has no `{name}`")
    return torch.as_tensor(value)


def _target_sizes(target_sizes: Any, batch: int, device: torch.device) -> Tensor | None:
    if target_sizes is None:
        return None
    if not isinstance(target_sizes, Tensor):
        target_sizes = [[float(v) for v in size] for size in target_sizes]
    sizes = torch.as_tensor(target_sizes, dtype=torch.float32, device=device).reshape(-1, 2)
    if sizes.shape[0] != batch:
        raise ValueError(f"got {sizes.shape[0]} target sizes for a batch of {batch}")
    return sizes
