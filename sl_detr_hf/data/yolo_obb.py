"""YOLO-OBB reader (Ultralytics / Roboflow exports): ``images/<split>`` + ``labels/<split>`` -> ``datasets.Dataset``.

A label file sits at the image's path with the last ``images`` folder replaced by ``labels``
(``D/images/train/a.jpg`` -> ``D/labels/train/a.txt``; Roboflow's ``D/train/images`` -> ``D/train/labels``) and
holds one object per line, ``class_index x1 y1 x2 y2 x3 y3 x4 y4``, the corners as fractions of the image's width
and height. The class names come from ``class_names``, else from the nearest ``data.yaml`` (the images folder or
up to three folders above it; Ultralytics' ``names:`` as a list or a ``{index: name}`` mapping), else they are the
class indices found. The result has :func:`~sl_detr_hf.data.dota.load_dota`'s schema (pixel polygons, rboxes,
categories) and its reports: skipped lines per cause with counts and ``file:line`` examples, images without a
label file (read as images without objects), label files without an image, unreadable images.

The class names are kept as ``data.yaml`` spells them, spaces included (``small car``); no DOTA list is inferred
(the indices are the class ids). :func:`~sl_detr_hf.data.dota.write_dota_folder` writes such a split as a DOTA
folder whose label files carry ``small_car`` and whose ``classes.txt`` keeps ``small car``: ``load_dota`` of it
gives back the same names and class ids.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import datasets

from .dota import (
    MAX_UNKNOWN_FRACTION,
    DotaLoadSummary,
    DotaObject,
    LabelProblem,
    _check_names,
    _image_size,
    _list_images,
    _objects_columns,
    _read_text,
    _split_outside,
    check_unknown_classes,
    finish_dataset,
    is_degenerate,
)

logger = logging.getLogger(__name__)

__all__ = ["find_data_yaml", "labels_dir_for", "load_yolo_obb", "parse_yolo_obb_label_file", "read_yaml_names"]

DATA_YAML_NAMES = ("data.yaml", "data.yml")
YAML_SEARCH_LEVELS = 3
"""Folders above the images folder searched for ``data.yaml`` (``D/images/train`` and ``D/train/images``: 2)."""

NORMALIZED_RANGE = (-0.5, 1.5)
"""A coordinate outside this range is not a fraction of the image size ("not normalized": pixels, most likely);
corners a little outside ``[0, 1]`` belong to objects cut by the border and are kept."""


def labels_dir_for(images_dir: str | Path) -> Path:
    """The labels folder of an images folder: its last ``images`` path component replaced by ``labels``.

    Raises:
        ValueError: no component of the path is ``images``.
    """
    parts = Path(images_dir).parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            return Path(*parts[:i], "labels", *parts[i + 1:])
    raise ValueError(f"{images_dir} has no 'images' folder in its path, so its YOLO labels folder is unknown "
                     "(pass labels_dir)")


def find_data_yaml(images_dir: str | Path, levels: int = YAML_SEARCH_LEVELS) -> Path | None:
    """The nearest ``data.yaml`` (or ``data.yml``): in ``images_dir``, else up to ``levels`` folders above it."""
    folder = Path(images_dir).resolve()
    for candidate in [folder, *folder.parents][:levels + 1]:
        for name in DATA_YAML_NAMES:
            if (candidate / name).is_file():
                return candidate / name
    return None


def read_yaml_names(path: str | Path) -> tuple[str, ...]:
    """Class names of an Ultralytics dataset file: ``names:`` as a list, or as ``{index: name}`` with the indices
    ``0 .. n-1``.

    Raises:
        ValueError: no ``names``, or indices that are not ``0 .. n-1``.
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8-sig"))
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise ValueError(f"{path}: the names mapping needs integer keys, got {list(names)}") from None
        if sorted(by_index) != list(range(len(by_index))):
            raise ValueError(f"{path}: the names mapping needs the keys 0 .. {len(by_index) - 1}, "
                             f"got {sorted(by_index)}")
        result = tuple(by_index[i] for i in range(len(by_index)))
    elif isinstance(names, list):
        result = tuple(str(n) for n in names)
    else:
        raise ValueError(f"{path} has no 'names:' list or mapping of the class names")
    if isinstance(data.get("nc"), int) and data["nc"] != len(result):
        logger.warning("%s: nc is %d but names holds %d names; using the names", path, data["nc"], len(result))
    return _check_names(result, str(path))


def parse_yolo_obb_label_file(path: str | Path, num_classes: int | None = None, log: bool = True
                              ) -> tuple[list[DotaObject], list[LabelProblem]]:
    """Read one YOLO-OBB label file.

    Args:
        path: the ``.txt`` file.
        num_classes: class indices from this on are "unknown class"; ``None`` accepts any index.
        log: log each skipped line as a warning (:func:`load_yolo_obb` passes ``False`` and reports per cause).
    Returns:
        ``(objects, problems)``: the valid objects in file order, their ``polygon`` still normalized (0-1) and their
        ``class_name`` the class index as text, and one :class:`~sl_detr_hf.data.dota.LabelProblem` per skipped line.
    """
    path = Path(path)
    objects: list[DotaObject] = []
    problems: list[LabelProblem] = []
    for number, raw in enumerate(_read_text(path, problems, log).splitlines(), start=1):
        text = raw.strip()
        if not text:
            continue
        reason, obj = _parse_line(text.split(), num_classes)
        if reason is None:
            objects.append(DotaObject(obj.polygon, obj.class_name, 0, number))
        else:
            problem = LabelProblem(str(path), number, reason, text, obj.class_name if obj is not None else None)
            if log:
                logger.warning("%s", problem)
            problems.append(problem)
    return objects, problems


def _parse_line(tokens: list[str], num_classes: int | None) -> tuple[str | None, DotaObject | None]:
    """``(None, object)`` for a valid line, else ``(reason, None)`` (``(reason, object)`` for an unknown class)."""
    if len(tokens) < 9:
        return "too few fields", None
    if len(tokens) > 9:
        return "too many fields", None
    try:
        index_value = float(tokens[0])
        coords = tuple(float(t) for t in tokens[1:])
    except ValueError:
        return "not a number", None
    if not all(math.isfinite(c) for c in (index_value, *coords)):
        return "not finite", None
    low, high = NORMALIZED_RANGE
    if not all(low <= c <= high for c in coords):
        return "not normalized", None
    obj = DotaObject(coords, tokens[0], 0)
    if not index_value.is_integer() or index_value < 0 or (num_classes is not None and index_value >= num_classes):
        return "unknown class", obj
    return None, DotaObject(coords, str(int(index_value)), 0)


def _class_names(images_dir: Path, class_names: Sequence[str] | None) -> tuple[tuple[str, ...] | None, str]:
    if class_names is not None:
        return _check_names(class_names, "class_names"), "given"
    data_yaml = find_data_yaml(images_dir)
    if data_yaml is not None:
        return read_yaml_names(data_yaml), str(data_yaml)
    return None, ""


def load_yolo_obb(
    images_dir: str | Path,
    class_names: Sequence[str] | None = None,
    labels_dir: str | Path | None = None,
    return_summary: bool = False,
    check_images: bool = True,
    max_unknown_fraction: float | None = MAX_UNKNOWN_FRACTION,
) -> datasets.Dataset | tuple[datasets.Dataset, DotaLoadSummary]:
    """Read a YOLO-OBB split into the ``datasets.Dataset`` of :func:`~sl_detr_hf.data.dota.load_dota`.

    Args:
        images_dir: the split's images folder (``D/images/train``).
        class_names: the class list in class-index order (default: the nearest ``data.yaml``'s ``names``, else
            the indices found, ``"0" .. "n-1"``, with a warning).
        labels_dir: the labels folder (default: :func:`labels_dir_for`).
        return_summary: also return the :class:`~sl_detr_hf.data.dota.DotaLoadSummary`.
        check_images: check each image cheaply and skip unreadable ones (as ``load_dota``).
        max_unknown_fraction: refuse (``ValueError``) a split where this fraction of the objects or more has a
            class index beyond the class list; ``None`` accepts any.

    ``gsd`` and ``imagesource`` are null and ``difficult`` is 0 (YOLO-OBB has neither).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"no images folder {images_dir}")
    label_root = Path(labels_dir) if labels_dir is not None else labels_dir_for(images_dir)
    if not label_root.is_dir():
        raise FileNotFoundError(f"no labels folder {label_root} (YOLO-OBB labels sit at the images' path with its "
                                "'images' folder replaced by 'labels')")
    names, source = _class_names(images_dir, class_names)
    images = _list_images(images_dir)
    labels = {p.stem: p for p in sorted(label_root.glob("*.txt"))}
    summary = DotaLoadSummary()
    summary.labels_without_images = [str(labels[k]) for k in sorted(set(labels) - set(images))]
    parsed: dict[str, list[DotaObject]] = {}
    for image_id, image_path in images.items():
        if image_id in labels:
            objects, problems = parse_yolo_obb_label_file(labels[image_id], log=False)
            summary.problems.extend(problems)
            parsed[image_id] = objects
        else:
            summary.images_without_labels.append(str(image_path))
    found = Counter(o.class_name for objects in parsed.values() for o in objects)
    found.update(p.class_name for p in summary.problems if p.reason == "unknown class")  # e.g. "-1", "1.5"
    if names is None:
        names = tuple(str(i) for i in range(max((int(k) for k in found if k.isdigit()), default=-1) + 1))
        source = "no data.yaml found: the class indices"
        logger.warning("%s: no data.yaml with the class names in it or up to %d folders above it: the classes are "
                       "named by their indices; pass class_names to name them", images_dir, YAML_SEARCH_LEVELS)
    summary.class_names, summary.class_source = names, source
    logger.info("%s: %d classes (%s): %s", images_dir, len(names), source, ", ".join(names))
    for image_id, objects in parsed.items():
        unknown = [o for o in objects if int(o.class_name) >= len(names)]
        summary.problems.extend(LabelProblem(str(labels[image_id]), o.line, "unknown class",
                                             " ".join([o.class_name, *(f"{c:g}" for c in o.polygon)]), o.class_name)
                                for o in unknown)
        if unknown:
            parsed[image_id] = [o for o in objects if int(o.class_name) < len(names)]
    how = ("name them in data.yaml next to the images folder (names: [...], one per class index), or pass the "
           "names in class-index order: class_names=[...] (sl-detr: --class_names a,b,c)")
    check_unknown_classes(summary, found, f"YOLO-OBB {images_dir}", max_unknown_fraction, how)

    index = {n: i for i, n in enumerate(names)}
    columns: dict[str, list] = {k: [] for k in ("image", "image_id", "width", "height", "gsd", "imagesource",
                                                  "objects")}
    for image_id, image_path in images.items():
        size = _image_size(image_path, check_images, summary)
        if size is None:
            continue
        width, height = size
        objects = []
        for obj in parsed.get(image_id, []):
            polygon = tuple(c * (width if i % 2 == 0 else height) for i, c in enumerate(obj.polygon))
            pixel = DotaObject(polygon, names[int(obj.class_name)], 0, obj.line)
            if is_degenerate(polygon):
                summary.problems.append(LabelProblem(str(labels[image_id]), obj.line, "degenerate polygon",
                                                     f"{obj.class_name} " + " ".join(f"{c:g}" for c in obj.polygon)))
            else:
                objects.append(pixel)
        objects, problems = _split_outside(objects, width, height, labels.get(image_id))
        summary.problems.extend(problems)
        columns["image"].append(str(image_path))
        columns["image_id"].append(image_id)
        columns["width"].append(width)
        columns["height"].append(height)
        columns["gsd"].append(None)
        columns["imagesource"].append(None)
        columns["objects"].append(_objects_columns(objects, index))
        summary.num_images += 1
        summary.num_objects += len(objects)
    return finish_dataset(columns, names, summary, f"YOLO-OBB {images_dir}", return_summary)
