"""Split large DOTA images into overlapping patches, and merge patch detections back
(docs/dota.md#splitting-large-images, docs/dota.md#merging-patch-detections).

Semantics of mmrotate's ``img_split.py``: for each ``rate`` and ``(size, gap)`` the window side is
``int(size / rate)`` with step ``int(size / rate) - int(gap / rate)`` (the image is not resized); windows
start at ``0, step, 2 step, ...`` and the last one is shifted back to end at the image border; a window is
kept when the image covers more than ``img_rate_thr`` of it (if none does, the best-covered ones are kept);
short windows are padded. An object goes to a patch when the part inside covers ``>= iof_thr`` of it (IoF);
objects cut by the window get ``difficult = 2`` and their polygon clipped to the window (its minimum-area
rectangle when the clipped shape is not a quadrilateral). Patches are named
``{image_id}__{window size}__{x}___{y}``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from math import ceil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import shapely
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..geometry_nms import batched_nms_rotated
from .dota import (
    CLASSES_FILE,
    LabelProblem,
    _files_line,
    _list_images,
    _split_outside,
    parse_dota_label_file,
    problem_report_lines,
    write_dota_labels,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PADDING_VALUE",
    "PatchName",
    "SplitSummary",
    "get_windows",
    "merge_patch_detections",
    "parse_patch_name",
    "patch_name",
    "split_dota",
    "split_dota_cached",
    "split_image",
]

DEFAULT_PADDING_VALUE = (124, 116, 104)
"""RGB padding of short windows: the ImageNet mean (mmrotate's ``[104, 116, 124]`` is the same in BGR)."""

_PATCH_RE = re.compile(r"^(?P<image_id>.+)__(?P<size>\d+(?:\.\d+)?)__(?P<x>-?\d+)___(?P<y>-?\d+)$")


class PatchName(NamedTuple):
    """Parsed patch name: the original image id, the window size (DOTA devkit names: the rate) and offsets."""

    image_id: str
    size: float
    x: int
    y: int


def patch_name(image_id: str, size: int, x: int, y: int) -> str:
    """``{image_id}__{size}__{x}___{y}``."""
    return f"{image_id}__{size}__{x}___{y}"


def parse_patch_name(name: str) -> PatchName:
    """Inverse of :func:`patch_name` (a file name's extension, if any, is ignored)."""
    match = _PATCH_RE.match(Path(name).stem if Path(name).suffix.lower() in (".png", ".jpg", ".txt", ".tif",
                                                                              ".bmp", ".jpeg") else name)
    if match is None:
        raise ValueError(f"{name!r} is not a patch name of the form '{{image}}__{{size}}__{{x}}___{{y}}'")
    size = float(match["size"])
    return PatchName(match["image_id"], int(size) if size.is_integer() else size, int(match["x"]),
                     int(match["y"]))


def get_windows(width: int, height: int, sizes: Sequence[int] = (1024,), gaps: Sequence[int] = (200,),
                rates: Sequence[float] = (1.0,), img_rate_thr: float = 0.6) -> np.ndarray:
    """Sliding windows of one image.

    Returns:
        ``(K, 4)`` int64 ``x_start, y_start, x_stop, y_stop`` (x outer, y inner; stops may pass the border,
        those windows are padded).
    """
    if len(sizes) != len(gaps):
        raise ValueError(f"`sizes` and `gaps` must have the same length, got {sizes} and {gaps}")
    if not all(r > 0 for r in rates):
        raise ValueError(f"`rates` must be > 0, got {tuple(rates)}")
    windows = []
    for rate in rates:
        for size, gap in zip(sizes, gaps):
            win, step = int(size / rate), int(size / rate) - int(gap / rate)
            if step <= 0:
                raise ValueError(f"window size {win} must be larger than its gap {int(gap / rate)}")
            xs, ys = (_starts(extent, win, step) for extent in (width, height))
            start = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
            windows.append(np.concatenate([start, start + win], axis=1))
    windows = np.concatenate(windows).astype(np.int64)
    inside = (np.minimum(windows[:, 2], width) - windows[:, 0]) * (np.minimum(windows[:, 3], height)
                                                                   - windows[:, 1])
    rates_in = inside / ((windows[:, 2] - windows[:, 0]) * (windows[:, 3] - windows[:, 1]))
    keep = rates_in > img_rate_thr
    if not keep.any():
        keep = np.abs(rates_in - rates_in.max()) < 0.01
    return windows[keep]


def _starts(extent: int, win: int, step: int) -> np.ndarray:
    count = 1 if extent <= win else ceil((extent - win) / step + 1)
    starts = np.arange(count, dtype=np.int64) * step
    if count > 1 and starts[-1] + win > extent:
        starts[-1] = extent - win
    return starts


def _window_objects(polygons: np.ndarray, window: np.ndarray, iof_thr: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objects of one window.

    Args:
        polygons: ``(N, 8)`` pixel polygons of the image; window: ``(4,)``.
    Returns:
        ``indices (M,)``, ``polygons (M, 8)`` in window coordinates (clipped when truncated) and
        ``truncated (M,)`` bool.
    """
    pts = polygons.reshape(-1, 4, 2)
    x0, y0, x1, y1 = window.tolist()
    lo, hi = pts.min(1), pts.max(1)
    inside = (lo[:, 0] >= x0) & (lo[:, 1] >= y0) & (hi[:, 0] <= x1) & (hi[:, 1] <= y1)
    touching = (hi[:, 0] > x0) & (hi[:, 1] > y0) & (lo[:, 0] < x1) & (lo[:, 1] < y1) & ~inside
    cut_idx = np.nonzero(touching)[0]
    out_polys = polygons.astype(np.float64).copy()
    keep = inside.copy()
    if cut_idx.size:
        shapes = shapely.make_valid(shapely.polygons(pts[cut_idx]))
        clipped = shapely.intersection(shapes, shapely.box(x0, y0, x1, y1))
        iof = shapely.area(clipped) / np.maximum(shapely.area(shapes), 1e-6)
        ok = iof >= iof_thr
        keep[cut_idx[ok]] = True
        for i, shape in zip(cut_idx[ok], clipped[ok]):
            out_polys[i] = _quad(shape)
    idx = np.nonzero(keep)[0]
    offset = np.tile(np.array([x0, y0], dtype=np.float64), 4)
    return idx, out_polys[idx] - offset, ~inside[idx]


def _quad(shape) -> np.ndarray:
    """A clipped object as 4 points: its own corners if it is a quadrilateral, else its min-area rectangle."""
    if shape.geom_type != "Polygon" or len(shape.exterior.coords) != 5:
        shape = shapely.minimum_rotated_rectangle(shape)
    return np.asarray(shape.exterior.coords[:4], dtype=np.float64).reshape(8)


@dataclass
class SplitSummary:
    """Counts of one :func:`split_dota` run (``truncated``: objects written with ``difficult = 2``; ``problems``:
    the skipped label lines, objects outside their image included)."""

    images: int = 0
    patches: int = 0
    objects: int = 0
    patch_objects: int = 0
    truncated: int = 0
    problems: list[LabelProblem] = field(default_factory=list, repr=False)


def split_image(
    image_path: str | Path,
    label_path: str | Path | None,
    dst_root: str | Path,
    sizes: Sequence[int] = (1024,),
    gaps: Sequence[int] = (200,),
    rates: Sequence[float] = (1.0,),
    img_rate_thr: float = 0.6,
    iof_thr: float = 0.7,
    padding: bool = True,
    padding_value: int | Sequence[int] = DEFAULT_PADDING_VALUE,
    ext: str = ".png",
    class_names: Sequence[str] | None = None,
    write_labels: bool | None = None,
) -> SplitSummary:
    """Split one image into ``dst_root/images`` and ``dst_root/labelTxt`` (both must exist).

    ``write_labels`` (default: when ``label_path`` is given) writes one label file per patch, empty if need be.

    The image is decoded once; each window is cropped, padded, saved and released before the next, so the
    memory beyond the decoded image is one patch.
    """
    image_path, dst_root = Path(image_path), Path(dst_root)
    objects, problems, header = [], [], {"imagesource": None, "gsd": None}
    if label_path is not None:
        objects, problems, header = parse_dota_label_file(label_path, class_names, log=False)
    summary = SplitSummary(images=1, problems=problems)
    write_labels = label_path is not None if write_labels is None else write_labels
    fill = (padding_value,) * 3 if isinstance(padding_value, int) else tuple(int(v) for v in padding_value)
    previous_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # DOTA images reach 20,000 px a side
    try:
        with Image.open(image_path) as src:
            image = src if src.mode == "RGB" else src.convert("RGB")
            width, height = image.size
            objects, outside = _split_outside(objects, width, height, label_path)  # they would land in the padding
            summary.problems.extend(outside)
            summary.objects = len(objects)
            polygons = np.array([o.polygon for o in objects], dtype=np.float64).reshape(-1, 8)
            for window in get_windows(width, height, sizes, gaps, rates, img_rate_thr):
                x0, y0, x1, y1 = window.tolist()
                patch = image.crop((x0, y0, min(x1, width), min(y1, height)))
                if padding and patch.size != (x1 - x0, y1 - y0):
                    padded = Image.new("RGB", (x1 - x0, y1 - y0), fill)
                    padded.paste(patch, (0, 0))
                    patch = padded
                name = patch_name(image_path.stem, x1 - x0, x0, y0)
                patch.save(dst_root / "images" / f"{name}{ext}", **({"compress_level": 1} if ext == ".png" else {}))
                del patch
                idx, polys, truncated = _window_objects(polygons, window, iof_thr)
                difficult = np.where(truncated, 2, [objects[i].difficult for i in idx]) if idx.size else []
                if write_labels:
                    write_dota_labels(dst_root / "labelTxt" / f"{name}.txt", polys,
                                      [objects[i].class_name for i in idx], difficult,
                                      imagesource=header["imagesource"], gsd=header["gsd"])
                summary.patches += 1
                summary.patch_objects += len(idx)
                summary.truncated += int(truncated.sum())
    finally:
        Image.MAX_IMAGE_PIXELS = previous_limit
    return summary


def _split_one(item: tuple[Path, Path | None], **kwargs) -> SplitSummary:
    return split_image(item[0], item[1], write_labels=kwargs.pop("labels_dir") is not None, **kwargs)


def split_dota(
    src_root: str | Path,
    dst_root: str | Path,
    sizes: Sequence[int] = (1024,),
    gaps: Sequence[int] = (200,),
    rates: Sequence[float] = (1.0,),
    img_rate_thr: float = 0.6,
    iof_thr: float = 0.7,
    padding: bool = True,
    padding_value: int | Sequence[int] = DEFAULT_PADDING_VALUE,
    images_dir: str = "images",
    labels_dir: str | None = "labelTxt",
    class_names: Sequence[str] | None = None,
    ext: str = ".png",
    num_workers: int | None = 0,
    progress: bool = True,
) -> SplitSummary:
    """Split a DOTA folder into a DOTA folder of patches (``dst_root/images``, ``dst_root/labelTxt``).

    Single scale (mmrotate ``ss_*.json``): ``sizes=(1024,), gaps=(200,), rates=(1.0,)``; multi-scale
    (``ms_*.json``): ``gaps=(500,), rates=(0.5, 1.0, 1.5)``. One worker process handles one image at a time
    (``num_workers=0``: in this process); a ``tqdm`` bar counts images. Malformed label lines and objects lying
    wholly outside their image are skipped (``summary.problems``) and reported as one warning per cause, as
    :func:`~sl_detr_hf.data.dota.load_dota` does; ``root/classes.txt`` is copied.

    Args:
        labels_dir: ``None`` splits images only (test sets).
        class_names: accepted classes (default: any name is copied through).
    """
    src_root, dst_root = Path(src_root), Path(dst_root)
    _check_destination(src_root, dst_root, images_dir, labels_dir)
    get_windows(1, 1, sizes, gaps, rates)  # bad sizes / gaps / rates fail before any file is written
    num_workers = num_workers or 0
    (dst_root / "images").mkdir(parents=True, exist_ok=True)
    if labels_dir is not None:
        (dst_root / "labelTxt").mkdir(parents=True, exist_ok=True)
    if (src_root / CLASSES_FILE).is_file():
        shutil.copyfile(src_root / CLASSES_FILE, dst_root / CLASSES_FILE)
    images = _list_images(src_root / images_dir)
    items, unlabeled = [], []
    for image_id, path in images.items():
        label = None if labels_dir is None else src_root / labels_dir / f"{image_id}.txt"
        if label is not None and not label.is_file():
            unlabeled.append(str(path))
            label = None
        items.append((path, label))
    if unlabeled:
        logger.warning("split %s: %s", src_root,
                       _files_line("images without a label file (their patches get empty label files)", unlabeled))
    work = partial(_split_one, dst_root=dst_root, sizes=tuple(sizes), gaps=tuple(gaps), rates=tuple(rates),
                   img_rate_thr=img_rate_thr, iof_thr=iof_thr, padding=padding, padding_value=padding_value,
                   ext=ext, class_names=class_names, labels_dir=labels_dir)
    total = SplitSummary()
    bar = tqdm(total=len(items), desc="split", unit="img", disable=not progress)
    if num_workers > 0:
        # Workers run numpy / shapely / PIL only (never torch, whose thread pool does not survive a fork);
        # "fork" spares every worker the package import, "spawn" is the fallback where fork does not exist.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(num_workers) as pool:
            results = pool.imap_unordered(work, items)
            for result in results:
                _add(total, result)
                bar.update()
    else:
        for item in items:
            _add(total, work(item))
            bar.update()
    bar.close()
    total.problems.sort(key=lambda p: (p.path, p.line))
    for line in problem_report_lines(total.problems):
        logger.warning("split %s: %s", src_root, line)
    logger.info("split %d images into %d patches (%d objects -> %d, %d truncated)", total.images,
                total.patches, total.objects, total.patch_objects, total.truncated)
    return total


SPLIT_MANIFEST = "split_manifest.json"
"""Written by :func:`split_dota_cached` into a patches folder: the source files and settings it was made from."""


def _split_key(src_root: Path, settings: Mapping) -> dict:
    """What a patches folder depends on: the source path, every input file's size and mtime, the settings."""
    files = {}
    for sub in (settings.get("images_dir", "images"), settings.get("labels_dir", "labelTxt")):
        if sub is not None and (src_root / sub).is_dir():
            for path in sorted((src_root / sub).iterdir()):
                if path.is_file():
                    stat = path.stat()
                    files[f"{sub}/{path.name}"] = [stat.st_size, stat.st_mtime_ns]
    if (src_root / CLASSES_FILE).is_file():
        stat = (src_root / CLASSES_FILE).stat()
        files[CLASSES_FILE] = [stat.st_size, stat.st_mtime_ns]
    kept = {k: v for k, v in settings.items() if k not in ("num_workers", "progress")}
    return json.loads(json.dumps({"source": str(src_root.resolve()), "settings": kept, "files": files}))


def split_dota_cached(src_root: str | Path, dst_root: str | Path, **settings) -> SplitSummary | None:
    """:func:`split_dota` into a cache folder, reused only when it was made from the same files and settings.

    The folder's :data:`SPLIT_MANIFEST` records the source path, each source file's size and modification time,
    and the split settings; on any difference (another dataset, changed labels, other sizes or gaps) the old
    ``images/``, ``labelTxt/`` and ``classes.txt`` of ``dst_root`` are deleted and the split is redone.

    Returns:
        The :class:`SplitSummary` of a new split, or ``None`` when the cache was reused.
    """
    src_root, dst_root = Path(src_root), Path(dst_root)
    key = _split_key(src_root, settings)
    manifest = dst_root / SPLIT_MANIFEST
    if manifest.is_file():
        try:
            if json.loads(manifest.read_text(encoding="utf-8")) == key:
                logger.info("reusing the patches of %s in %s (same files and settings)", src_root, dst_root)
                return None
        except json.JSONDecodeError:
            pass
    if (dst_root / "images").exists() or (dst_root / "labelTxt").exists():
        logger.warning("%s holds patches of other data or settings: splitting %s again", dst_root, src_root)
    manifest.unlink(missing_ok=True)
    _check_destination(src_root, dst_root, settings.get("images_dir", "images"), settings.get("labels_dir", "labelTxt"))
    for sub in ("images", "labelTxt"):
        shutil.rmtree(dst_root / sub, ignore_errors=True)
    (dst_root / CLASSES_FILE).unlink(missing_ok=True)
    summary = split_dota(src_root, dst_root, **settings)
    manifest.write_text(json.dumps(key), encoding="utf-8")
    return summary


def _check_destination(src_root: Path, dst_root: Path, images_dir: str, labels_dir: str | None) -> None:
    """Refuse to write patches into the source dataset (its images/ or labelTxt/ would get mixed with patches)."""
    src, dst = src_root.resolve(), dst_root.resolve()
    inputs = [src / images_dir] + ([src / labels_dir] if labels_dir is not None else [])
    if dst == src or any(dst / sub == folder for folder in inputs for sub in ("images", "labelTxt")) \
            or any(folder == dst or folder.is_relative_to(dst / "images") for folder in inputs):
        raise ValueError(f"the destination {dst_root} is the source dataset {src_root}: the patches would be written "
                         "into it; choose another folder")


def _add(total: SplitSummary, part: SplitSummary) -> None:
    for name in ("images", "patches", "objects", "patch_objects", "truncated"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.problems.extend(part.problems)


def merge_patch_detections(
    detections: Sequence[Mapping], iou_threshold: float = 0.1, class_agnostic: bool = False
) -> list[dict]:
    """Map patch detections back to their images and merge them with class-wise rotated NMS.

    Args:
        detections: one dict per patch: ``"boxes"`` ``(N, 5)`` pixel rotated boxes in the patch, ``"scores"``
            ``(N,)``, ``"labels"`` ``(N,)``, and either ``"patch_id"`` (a :func:`patch_name`) or ``"image_id"``
            with ``"x"``, ``"y"``; optional ``"rate"`` (default 1: DOTA devkit patches cut from an image resized
            by ``rate`` map back as ``(box + offset) / rate``).
        iou_threshold: NMS IoU (DOTA: 0.1).
        class_agnostic: suppress across classes too.
    Returns:
        One dict per original image, sorted by ``image_id``: ``{"image_id", "boxes" (M, 5), "scores" (M,),
        "labels" (M,)}`` with detections in decreasing score order.
    """
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise ValueError(f"`iou_threshold` must be in [0, 1], got {iou_threshold}")
    image_ids, offsets, boxes, scores, labels = [], [], [], [], []
    for index, det in enumerate(detections):
        if "patch_id" in det:
            parsed = parse_patch_name(det["patch_id"])
            image_id, x, y = parsed.image_id, parsed.x, parsed.y
        else:
            image_id, x, y = det["image_id"], det["x"], det["y"]
        b = torch.as_tensor(det["boxes"], dtype=torch.float64).reshape(-1, 5)
        s = torch.as_tensor(det["scores"], dtype=torch.float64).reshape(-1)
        where = f"detections[{index}] ({det.get('patch_id', image_id)})"
        if not bool(torch.isfinite(b).all()) or not bool(torch.isfinite(s).all()):
            raise ValueError(f"{where} has NaN or inf boxes or scores: a NaN score would suppress valid boxes in NMS")
        image_ids.append(image_id)
        offsets.append((float(x), float(y), float(det.get("rate", 1.0)), b.shape[0]))
        boxes.append(b)
        scores.append(s)
        labels.append(torch.as_tensor(det["labels"], dtype=torch.long).reshape(-1))
    names = sorted(set(image_ids))
    if not boxes:
        return []
    index = {n: i for i, n in enumerate(names)}
    table = torch.tensor([o[:3] for o in offsets], dtype=torch.float64)  # (P, 3)
    counts = torch.tensor([o[3] for o in offsets])
    per_box = torch.repeat_interleave(torch.arange(len(offsets)), counts)
    boxes_t, scores_t, labels_t = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    image_t = torch.tensor([index[i] for i in image_ids], dtype=torch.long)[per_box]
    shift, rate = table[per_box, :2], table[per_box, 2:3]
    boxes_t = torch.cat([(boxes_t[:, :2] + shift) / rate, boxes_t[:, 2:4] / rate, boxes_t[:, 4:]], dim=1)
    num_classes = int(labels_t.max()) + 1 if labels_t.numel() else 1
    group = image_t if class_agnostic else image_t * num_classes + labels_t
    # Move every group to its own region of the plane so that one NMS call never pairs boxes of two groups.
    span = float((boxes_t[:, :2].abs().max() + boxes_t[:, 2:4].max()) * 2 + 1) if boxes_t.numel() else 1.0
    shifted = boxes_t.clone()
    shifted[:, 0] += group.to(torch.float64) * span
    keep = batched_nms_rotated(shifted, scores_t, group, iou_threshold)
    order = keep[torch.sort(image_t[keep], stable=True).indices]  # by image, decreasing score inside
    counts_out = torch.bincount(image_t[order], minlength=len(names)).tolist()
    out = []
    for name, part in zip(names, order.split(counts_out)):
        out.append({"image_id": name, "boxes": boxes_t[part].float(), "scores": scores_t[part].float(),
                    "labels": labels_t[part]})
    return out
