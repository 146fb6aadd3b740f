"""DOTA reader and writer: ``images/`` + ``labelTxt/`` folders -> ``datasets.Dataset``.

A DOTA label file holds optional header lines ``imagesource:...`` and ``gsd:...`` and one object per line,
``x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]`` (difficult defaults to 0). Malformed lines are skipped with a
``logging`` warning naming the file and line, and counted; images without a label file and label files
without an image are reported (DESIGN.md section 6).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import numpy as np
import shapely
import torch
from PIL import Image

from ..configuration_sl_detr import DOTA_CLASSES
from ..rotated_boxes import poly_to_rbox
from .images import UnreadableImageError, check_image, pixel_limit

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DotaLoadSummary",
    "DotaObject",
    "LabelProblem",
    "dota_features",
    "find_class_names",
    "load_dota",
    "parse_dota_label_file",
    "write_dota_labels",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CLASSES_FILE = "classes.txt"
"""Optional file at a dataset root listing its class names, one per line (written by the synthetic generator)."""

MIN_AREA = 1e-2
"""A polygon whose 4 points span a convex hull smaller than this (pixels^2: collinear or coincident points) is
degenerate."""


@dataclass(frozen=True)
class DotaObject:
    """One annotated object: ``polygon`` is ``(x1, y1, ..., x4, y4)`` in pixels."""

    polygon: tuple[float, ...]
    class_name: str
    difficult: int = 0
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class LabelProblem:
    """A skipped label line: ``path:line`` and the reason (one of :data:`PROBLEM_REASONS`)."""

    path: str
    line: int
    reason: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason} (line skipped): {self.text!r}"


PROBLEM_REASONS = ("too few fields", "too many fields", "not a number", "not finite", "unknown class",
                   "bad difficult flag", "degenerate polygon", "outside the image", "not UTF-8 text")

MAX_COORDINATE = 1e7
"""Coordinates beyond this (pixels) are refused as "not finite": they overflow float32 storage (1e39 -> inf)."""

MAX_DIFFICULT = 2
"""Difficult flags are 0, 1 (DOTA) or 2 (objects cut by a patch border, :func:`~sl_detr_hf.data.split.split_dota`)."""


@dataclass
class DotaLoadSummary:
    """What :func:`load_dota` read: counts, skipped lines by reason, and unmatched files."""

    num_images: int = 0
    num_objects: int = 0
    problems: list[LabelProblem] = field(default_factory=list)
    unreadable_images: list[str] = field(default_factory=list)
    images_without_labels: list[str] = field(default_factory=list)
    labels_without_images: list[str] = field(default_factory=list)

    @property
    def skipped_lines(self) -> Counter:
        return Counter(p.reason for p in self.problems)

    def __str__(self) -> str:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped_lines.items())) or "none"
        return (f"{self.num_images} images, {self.num_objects} objects; skipped lines: {skipped}; "
                f"unreadable images skipped: {len(self.unreadable_images)}; "
                f"images without labels: {len(self.images_without_labels)}; "
                f"labels without images: {len(self.labels_without_images)}")


def parse_dota_label_file(
    path: str | Path, class_names: Sequence[str] | None = None
) -> tuple[list[DotaObject], list[LabelProblem], dict[str, str | float | None]]:
    """Read one DOTA label file.

    Args:
        path: the ``.txt`` file.
        class_names: accepted class names; ``None`` accepts any name.
    Returns:
        ``(objects, problems, header)``: the valid objects in file order, one :class:`LabelProblem` per skipped
        line (each also logged as a warning), and the header ``{"imagesource": str | None, "gsd": float |
        None}``.
    """
    path = Path(path)
    known = None if class_names is None else set(class_names)
    objects: list[DotaObject] = []
    problems: list[LabelProblem] = []
    header: dict[str, str | float | None] = {"imagesource": None, "gsd": None}
    lines = _read_text(path, problems).splitlines()
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text:
            continue
        key, sep, value = text.partition(":")
        if sep and key.strip().lower() in header and len(text.split()) <= 2:
            key = key.strip().lower()
            value = value.strip()
            if key == "gsd":
                try:
                    gsd = float(value)
                    header["gsd"] = gsd if math.isfinite(gsd) else None
                except ValueError:
                    header["gsd"] = None  # DOTA writes "gsd:null" when unknown
            else:
                header[key] = value
            continue
        reason, obj = _parse_object_line(text.split(), known)
        if reason is None:
            objects.append(replace(obj, line=number))
        else:
            problem = LabelProblem(str(path), number, reason, text)
            logger.warning("%s", problem)
            problems.append(problem)
    return objects, problems, header


def _read_text(path: Path, problems: list[LabelProblem]) -> str:
    """A label file's text: UTF-8 (with or without BOM), UTF-16 with a BOM, else Latin-1 with a counted warning."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        problem = LabelProblem(str(path), line, "not UTF-8 text", f"byte 0x{data[err.start]:02x}; read as Latin-1")
        logger.warning("%s", problem)
        problems.append(problem)
        return data.decode("latin-1")


def _parse_object_line(tokens: list[str], known: set[str] | None) -> tuple[str | None, DotaObject | None]:
    """Validate one object line; returns ``(reason, None)`` when it is malformed, else ``(None, object)``."""
    if len(tokens) < 9:
        return "too few fields", None
    if len(tokens) > 10:
        return "too many fields", None
    try:
        coords = tuple(float(t) for t in tokens[:8])
    except ValueError:
        return "not a number", None
    if not all(math.isfinite(c) and abs(c) <= MAX_COORDINATE for c in coords):
        return "not finite", None
    class_name = tokens[8]
    if known is not None and class_name not in known:
        return "unknown class", None
    difficult = 0
    if len(tokens) == 10:
        try:
            difficult = int(tokens[9])
        except ValueError:
            return "bad difficult flag", None
        if not 0 <= difficult <= MAX_DIFFICULT:
            return "bad difficult flag", None
    if shapely.convex_hull(shapely.multipoints(np.reshape(coords, (4, 2)))).area < MIN_AREA:
        return "degenerate polygon", None
    return None, DotaObject(coords, class_name, difficult)


def write_dota_labels(
    path: str | Path,
    polygons: np.ndarray | torch.Tensor | Sequence[Sequence[float]],
    class_names: Sequence[str],
    difficult: Sequence[int] | None = None,
    imagesource: str | None = None,
    gsd: float | None = None,
    precision: int = 2,
) -> None:
    """Write one DOTA label file.

    Args:
        path: the ``.txt`` file to write (its folder must exist).
        polygons: ``(N, 8)`` pixel polygons; class_names: ``N`` names; difficult: ``N`` flags (default 0).
        imagesource, gsd: optional header lines (``gsd=None`` with an ``imagesource`` writes ``gsd:null``).
        precision: decimals of the coordinates.
    """
    polys = np.asarray(polygons.detach().cpu() if isinstance(polygons, torch.Tensor) else polygons,
                       dtype=np.float64).reshape(-1, 8)
    if len(class_names) != len(polys):
        raise ValueError(f"got {len(polys)} polygons and {len(class_names)} class names")
    flags = [0] * len(polys) if difficult is None else [int(d) for d in difficult]
    if len(flags) != len(polys):
        raise ValueError(f"got {len(polys)} polygons and {len(flags)} difficult flags")
    lines = []
    if imagesource is not None or gsd is not None:
        lines.append(f"imagesource:{imagesource if imagesource is not None else 'unknown'}")
        lines.append(f"gsd:{gsd if gsd is not None else 'null'}")
    for poly, name, diff in zip(polys, class_names, flags):
        if any(c.isspace() for c in name) or not name:
            raise ValueError(f"class names must be non-empty without spaces, got {name!r}")
        coords = " ".join(f"{c:.{precision}f}" for c in poly)
        lines.append(f"{coords} {name} {diff}")
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def find_class_names(root: str | Path, version: str = "1.0", class_names: Sequence[str] | None = None
                     ) -> tuple[str, ...]:
    """Class list of a dataset: ``class_names`` if given, else ``root/classes.txt`` if present, else DOTA's."""
    if class_names is not None:
        return tuple(class_names)
    classes_file = Path(root) / CLASSES_FILE
    if classes_file.is_file():
        names = tuple(n.strip() for n in classes_file.read_text(encoding="utf-8-sig").splitlines() if n.strip())
        logger.info("using the %d class names of %s", len(names), classes_file)
        return names
    if version not in DOTA_CLASSES:
        raise ValueError(f"unknown DOTA version {version!r}, expected one of {sorted(DOTA_CLASSES)}")
    return DOTA_CLASSES[version]


def dota_features(class_names: Sequence[str]) -> datasets.Features:
    """The schema of :func:`load_dota` datasets (one row per image; ``objects`` is a dict of per-object lists)."""
    return datasets.Features({
        "image": datasets.Image(),
        "image_id": datasets.Value("string"),
        "width": datasets.Value("int32"),
        "height": datasets.Value("int32"),
        "gsd": datasets.Value("float32"),
        "imagesource": datasets.Value("string"),
        "objects": {
            "polygon": datasets.List(datasets.List(datasets.Value("float32"), length=8)),
            "rbox": datasets.List(datasets.List(datasets.Value("float32"), length=5)),
            "category": datasets.List(datasets.ClassLabel(names=list(class_names))),
            "difficult": datasets.List(datasets.Value("int8")),
            "area": datasets.List(datasets.Value("float32")),
        },
    })


def _list_images(images_dir: Path) -> dict[str, Path]:
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    by_id: dict[str, Path] = {}
    for p in files:
        if p.stem in by_id:
            logger.warning("%s: two images share the id %r; using %s", images_dir, p.stem, by_id[p.stem].name)
            continue
        by_id[p.stem] = p
    return by_id


def load_dota(
    root: str | Path,
    version: str = "1.0",
    class_names: Sequence[str] | None = None,
    images_dir: str = "images",
    labels_dir: str | None = "labelTxt",
    skip_difficult: bool = False,
    skip_unlabeled: bool = False,
    return_summary: bool = False,
    check_images: bool = True,
) -> datasets.Dataset | tuple[datasets.Dataset, DotaLoadSummary]:
    """Read a DOTA folder into a ``datasets.Dataset`` (one row per image; images are stored as paths).

    Schema (:func:`dota_features`): ``image`` (``Image``, decoded lazily on access), ``image_id`` (file stem),
    ``width``, ``height``, ``gsd`` / ``imagesource`` (header lines, or null), ``objects``: ``polygon``
    ``(n, 8)``, ``rbox`` ``(n, 5)`` (pixel, le90, minimum-area rectangle of the polygon), ``category``
    (``ClassLabel``), ``difficult`` (0, 1, or 2 for patches' truncated objects), ``area`` (``w * h`` of the rbox).

    Args:
        root: folder holding ``images_dir`` and ``labels_dir``.
        version: ``"1.0"``, ``"1.5"`` or ``"2.0"``: the class list (mmrotate order).
        class_names: overrides the class list (default: ``root/classes.txt`` if present, else ``version``).
        labels_dir: ``None`` for an unlabeled (test) split.
        skip_difficult: drop objects with ``difficult > 0``.
        skip_unlabeled: drop images without a label file (they are reported either way).
        return_summary: also return the :class:`DotaLoadSummary`.
        check_images: check each image cheaply (:func:`~sl_detr_hf.data.images.check_image`: PNG chunk CRCs,
            JPEG at 1/8 scale) and skip unreadable ones with a warning naming the file (counted in the summary);
            ``False`` reads only the headers.

    Objects lying entirely outside their image are skipped as "outside the image" problems.
    """
    root = Path(root)
    names = find_class_names(root, version, class_names)
    index = {n: i for i, n in enumerate(names)}
    image_root = root / images_dir
    if not image_root.is_dir():
        raise FileNotFoundError(f"no images folder {image_root}")
    images = _list_images(image_root)
    label_root = None if labels_dir is None else root / labels_dir
    if label_root is not None and not label_root.is_dir():
        raise FileNotFoundError(f"no labels folder {label_root} (pass labels_dir=None for unlabeled images)")
    labels = {} if label_root is None else {p.stem: p for p in sorted(label_root.glob("*.txt"))}
    summary = DotaLoadSummary()
    summary.labels_without_images = [str(labels[k]) for k in sorted(set(labels) - set(images))]
    for path in summary.labels_without_images:
        logger.warning("label file without an image: %s", path)

    columns: dict[str, list] = {k: [] for k in ("image", "image_id", "width", "height", "gsd", "imagesource",
                                                  "objects")}
    for image_id, image_path in images.items():
        header: dict = {"imagesource": None, "gsd": None}
        objects: list[DotaObject] = []
        if image_id in labels:
            objects, problems, header = parse_dota_label_file(labels[image_id], names)
            summary.problems.extend(problems)
        elif label_root is not None:
            logger.warning("image without a label file: %s", image_path)
            summary.images_without_labels.append(str(image_path))
            if skip_unlabeled:
                continue
        if skip_difficult:
            objects = [o for o in objects if o.difficult == 0]
        try:
            if check_images:
                width, height = check_image(image_path)
            else:
                with pixel_limit(), Image.open(image_path) as im:  # reads the header only
                    width, height = im.size
        except (UnreadableImageError, OSError) as err:
            logger.warning("skipping an unreadable image: %s", err)
            summary.unreadable_images.append(str(image_path))
            continue
        objects = _inside(objects, width, height, labels.get(image_id), summary)
        columns["image"].append(str(image_path))
        columns["image_id"].append(image_id)
        columns["width"].append(width)
        columns["height"].append(height)
        columns["gsd"].append(header["gsd"])
        columns["imagesource"].append(header["imagesource"])
        columns["objects"].append(_objects_columns(objects, index))
        summary.num_images += 1
        summary.num_objects += len(objects)
    if summary.problems or summary.images_without_labels or summary.labels_without_images or \
            summary.unreadable_images:
        logger.warning("DOTA %s: %s", root, summary)
    dataset = datasets.Dataset.from_dict(columns, features=dota_features(names))
    return (dataset, summary) if return_summary else dataset


def _inside(objects: list[DotaObject], width: int, height: int, path: Path | None,
            summary: DotaLoadSummary) -> list[DotaObject]:
    """Drop (as counted problems) objects whose polygon does not overlap the image ``[0, W] x [0, H]``."""
    kept = []
    for obj in objects:
        xs, ys = obj.polygon[0::2], obj.polygon[1::2]
        if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= width or min(ys) >= height:
            coords = " ".join(f"{c:g}" for c in obj.polygon)
            problem = LabelProblem(str(path), obj.line, "outside the image",
                                   f"{coords} {obj.class_name} ({width}x{height} image)")
            logger.warning("%s", problem)
            summary.problems.append(problem)
        else:
            kept.append(obj)
    return kept


def _objects_columns(objects: list[DotaObject], index: dict[str, int]) -> dict[str, list]:
    polys = torch.tensor([o.polygon for o in objects], dtype=torch.float64).reshape(-1, 8)
    rboxes = poly_to_rbox(polys)
    return {
        "polygon": polys.float().tolist(),
        "rbox": rboxes.float().tolist(),
        "category": [index[o.class_name] for o in objects],
        "difficult": [o.difficult for o in objects],
        "area": (rboxes[:, 2] * rboxes[:, 3]).float().tolist(),
    }
