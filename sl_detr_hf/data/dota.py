"""DOTA reader and writer: ``images/`` + ``labelTxt/`` folders -> ``datasets.Dataset``.

A DOTA label file holds optional header lines ``imagesource:...`` and ``gsd:...`` and one object per line,
``x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]`` (difficult defaults to 0). Malformed lines are skipped and
counted; images without a label file and label files without an image are reported (docs/dota.md#label-files).
:func:`load_dota` reports one warning line per cause, with its count and the first few ``file:line`` examples.

The class list (:func:`resolve_class_names`): ``class_names`` if given, else DOTA's list of an explicit
``version``, else ``classes.txt`` at the dataset root, else inferred from the names found in the labels
(:func:`infer_class_names`): DOTA's list (mmrotate's order) of the first version, 1.0, 1.5 then 2.0, whose list
holds every name found, else the names found, sorted. There is no threshold: one name outside DOTA's lists keeps
the sorted names, and DOTA data or any subset of its classes keeps DOTA's class ids. A split whose objects are
mostly outside the class list is refused with the classes it holds (:func:`check_unknown_classes`).

Class names with whitespace (a YOLO ``data.yaml``'s ``small car``): a label line splits on whitespace, so a label
file carries each name as its token, :func:`dota_class_token` (whitespace runs joined by ``_``: ``small_car``),
and ``classes.txt`` keeps the true names. Reading through a class list maps each token back to its name
(:func:`class_token_map`), so ``small_car`` in a label file is the class ``small car`` of ``classes.txt``; a
class list with two names of one token (``small car`` and ``small_car``) is refused. :func:`write_dota_folder`
writes both parts; a name may not hold a line break.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import numpy as np
import shapely
import torch
from PIL import Image

from ..configuration_sl_detr import DOTA_CLASSES
from ..geometry_conversions import poly_to_rbox
from .images import UnreadableImageError, check_image, pixel_limit

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DotaLoadSummary",
    "DotaObject",
    "LabelProblem",
    "check_unknown_classes",
    "class_token_map",
    "dota_class_token",
    "dota_features",
    "find_class_names",
    "infer_class_names",
    "load_dota",
    "parse_dota_label_file",
    "problem_report_lines",
    "resolve_class_names",
    "write_dota_folder",
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
    """A skipped label line: ``path:line``, the reason (one of :data:`PROBLEM_REASONS`) and, for an "unknown
    class", the class it names."""

    path: str
    line: int
    reason: str
    text: str
    class_name: str | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason} (line skipped): {self.text!r}"


PROBLEM_REASONS = ("too few fields", "too many fields", "not a number", "not finite", "unknown class",
                   "bad difficult flag", "degenerate polygon", "outside the image", "not UTF-8 text",
                   "not normalized")
"""Why a label line is skipped ("not normalized": a YOLO-OBB coordinate far outside 0-1, :mod:`.yolo_obb`)."""

MAX_UNKNOWN_FRACTION = 0.5
"""A split where this fraction of the objects or more has classes outside the class list is refused."""

REPORT_EXAMPLES = 3
"""Examples named per cause in the load reports."""

MAX_COORDINATE = 1e7
"""Coordinates beyond this (pixels) are refused as "not finite": they overflow float32 storage (1e39 -> inf)."""

MAX_DIFFICULT = 2
"""Difficult flags are 0, 1 (DOTA) or 2 (objects cut by a patch border, :func:`~sl_detr_hf.data.split.split_dota`)."""


def problem_report_lines(problems: Sequence[LabelProblem], examples: int = REPORT_EXAMPLES) -> list[str]:
    """One line per cause: its count, the classes of "unknown class" lines, and the first ``examples`` lines."""
    by_reason: dict[str, list[LabelProblem]] = {}
    for problem in problems:
        by_reason.setdefault(problem.reason, []).append(problem)
    lines = []
    for reason, items in by_reason.items():
        classes = ""
        if reason == "unknown class":
            counts = Counter(p.class_name for p in items if p.class_name is not None)
            classes = " (" + ", ".join(f"{name}: {n}" for name, n in counts.most_common()) + ")"
        shown = "; ".join(f"{p.path}:{p.line}: {p.text!r}" for p in items[:examples])
        more = f"; and {len(items) - examples} more" if len(items) > examples else ""
        lines.append(f"label lines skipped, {reason}{classes}: {len(items)}: {shown}{more}")
    return lines


def _files_line(what: str, files: Sequence[str], examples: int = REPORT_EXAMPLES) -> str:
    more = f", and {len(files) - examples} more" if len(files) > examples else ""
    return f"{what}: {len(files)}: {', '.join(files[:examples])}{more}"


@dataclass
class DotaLoadSummary:
    """What :func:`load_dota` (or :func:`~sl_detr_hf.data.yolo_obb.load_yolo_obb`) read: counts, skipped lines
    by reason, unmatched files, and the class list with where it came from."""

    num_images: int = 0
    num_objects: int = 0
    problems: list[LabelProblem] = field(default_factory=list)
    unreadable_images: list[str] = field(default_factory=list)
    images_without_labels: list[str] = field(default_factory=list)
    labels_without_images: list[str] = field(default_factory=list)
    class_names: tuple[str, ...] = ()
    class_source: str = ""

    @property
    def skipped_lines(self) -> Counter:
        return Counter(p.reason for p in self.problems)

    @property
    def unknown_classes(self) -> Counter:
        """``class -> objects`` skipped because their class is not in the class list."""
        return Counter(p.class_name for p in self.problems if p.reason == "unknown class")

    def report_lines(self, examples: int = REPORT_EXAMPLES) -> list[str]:
        """One line per cause (skipped label lines by reason, unreadable and unmatched files), with examples."""
        lines = problem_report_lines(self.problems, examples)
        for what, files in (("unreadable images skipped", self.unreadable_images),
                            ("images without a label file (read as images without objects)",
                             self.images_without_labels),
                            ("label files without an image", self.labels_without_images)):
            if files:
                lines.append(_files_line(what, files, examples))
        return lines

    def log(self, what: str) -> None:
        """Log the summary and :meth:`report_lines` as warnings (nothing when all was read)."""
        lines = self.report_lines()
        if lines:
            logger.warning("%s: %s", what, self)
            for line in lines:
                logger.warning("%s: %s", what, line)

    def __str__(self) -> str:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped_lines.items())) or "none"
        return (f"{self.num_images} images, {self.num_objects} objects; skipped lines: {skipped}; "
                f"unreadable images skipped: {len(self.unreadable_images)}; "
                f"images without labels: {len(self.images_without_labels)}; "
                f"labels without images: {len(self.labels_without_images)}")


def parse_dota_label_file(
    path: str | Path, class_names: Sequence[str] | None = None, log: bool = True
) -> tuple[list[DotaObject], list[LabelProblem], dict[str, str | float | None]]:
    """Read one DOTA label file.

    Args:
        path: the ``.txt`` file.
        class_names: accepted class names, each also read as its :func:`dota_class_token` (``small_car`` is the
            class ``small car``); ``None`` accepts any name (the objects keep the label file's field).
        log: log each skipped line as a warning (the dataset readers pass ``False`` and report per cause).
    Returns:
        ``(objects, problems, header)``: the valid objects in file order, one :class:`LabelProblem` per skipped
        line, and the header ``{"imagesource": str | None, "gsd": float | None}``.
    """
    path = Path(path)
    known = None if class_names is None else class_token_map(class_names)
    objects: list[DotaObject] = []
    problems: list[LabelProblem] = []
    header: dict[str, str | float | None] = {"imagesource": None, "gsd": None}
    lines = _read_text(path, problems, log).splitlines()
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
        tokens = text.split()
        reason, obj = _parse_object_line(tokens, known)
        if reason is None:
            objects.append(replace(obj, line=number))
        else:
            problem = LabelProblem(str(path), number, reason, text,
                                   tokens[8] if reason == "unknown class" else None)
            if log:
                logger.warning("%s", problem)
            problems.append(problem)
    return objects, problems, header


def _read_text(path: Path, problems: list[LabelProblem], log: bool = True) -> str:
    """A label file's text: UTF-8 (with or without BOM), UTF-16 with a BOM, else Latin-1 with a counted warning."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        problem = LabelProblem(str(path), line, "not UTF-8 text", f"byte 0x{data[err.start]:02x}; read as Latin-1")
        if log:
            logger.warning("%s", problem)
        problems.append(problem)
        return data.decode("latin-1")


def _parse_object_line(tokens: list[str], known: Mapping[str, str] | None
                       ) -> tuple[str | None, DotaObject | None]:
    """Validate one object line (``known``: ``token -> class name``); returns ``(reason, None)`` when it is
    malformed, else ``(None, object)``."""
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
    if known is not None:
        if class_name not in known:
            return "unknown class", None
        class_name = known[class_name]
    difficult = 0
    if len(tokens) == 10:
        try:
            difficult = int(tokens[9])
        except ValueError:
            return "bad difficult flag", None
        if not 0 <= difficult <= MAX_DIFFICULT:
            return "bad difficult flag", None
    if is_degenerate(coords):
        return "degenerate polygon", None
    return None, DotaObject(coords, class_name, difficult)


def is_degenerate(polygon: Sequence[float]) -> bool:
    """Whether 4 points ``(x1, y1, ..., x4, y4)`` (pixels) span a convex hull below :data:`MIN_AREA`."""
    return bool(shapely.convex_hull(shapely.multipoints(np.reshape(polygon, (4, 2)))).area < MIN_AREA)


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
        polygons: ``(N, 8)`` pixel polygons; class_names: ``N`` names, each written as its :func:`dota_class_token`
            (a name with whitespace reads back through a class list that holds it, e.g. ``classes.txt``);
            difficult: ``N`` flags (default 0).
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
        token = dota_class_token(name)
        if not token:
            raise ValueError(f"class names must hold more than whitespace, got {name!r}")
        coords = " ".join(f"{c:.{precision}f}" for c in poly)
        lines.append(f"{coords} {token} {diff}")
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def dota_class_token(name: str) -> str:
    """A class name as one DOTA label field: whitespace runs joined by ``_`` (``"small car"`` -> ``small_car``);
    a name without whitespace is its own token."""
    return "_".join(name.split())


def class_token_map(class_names: Sequence[str]) -> dict[str, str]:
    """``token -> name`` of a class list: how the fields of DOTA label files map back to its names
    (:func:`dota_class_token`; ``{"plane": "plane", "small_car": "small car"}``).

    Raises:
        ValueError: two names of the list share a token (label files could not tell them apart).
    """
    by_token: dict[str, str] = {}
    for name in class_names:
        token = dota_class_token(name)
        if token in by_token:
            raise ValueError(f"the classes {by_token[token]!r} and {name!r} are both written {token!r} in DOTA label "
                             "files (which split on whitespace): rename one of them")
        by_token[token] = name
    return by_token


def write_dota_folder(dataset: datasets.Dataset, root: str | Path) -> Path:
    """Write a dataset of :func:`load_dota`'s schema (e.g. from a YOLO-OBB folder) as a DOTA folder under ``root``:
    ``images/`` (links to the image files, copies where links fail; encoded bytes written out), ``labelTxt/``
    (polygons, classes as :func:`dota_class_token`, difficult flags, header lines) and ``classes.txt`` (the true
    names, in class-id order), so that :func:`load_dota` reads back the same names and class ids.

    Raises:
        FileExistsError: ``root/images`` or ``root/labelTxt`` already holds files.
        ValueError: two class names share a token (:func:`class_token_map`) or a name holds a line break.
    """
    root = Path(root)
    names = _check_names(dataset.features["objects"]["category"].feature.names, "the dataset's classes")
    class_token_map(names)
    for sub in ("images", "labelTxt"):
        if (root / sub).is_dir() and any((root / sub).iterdir()):
            raise FileExistsError(f"{root / sub} is not empty")
        (root / sub).mkdir(parents=True, exist_ok=True)
    for row in dataset.cast_column("image", datasets.Image(decode=False)):
        image, image_id = row["image"], row["image_id"]
        suffix = Path(image["path"]).suffix if image.get("path") else ".png"
        target = root / "images" / f"{image_id}{suffix}"
        if image.get("bytes") is not None:
            target.write_bytes(image["bytes"])
        else:
            try:
                os.symlink(Path(image["path"]).resolve(), target)
            except OSError:
                shutil.copyfile(image["path"], target)
        objects = row["objects"]
        write_dota_labels(root / "labelTxt" / f"{image_id}.txt", objects["polygon"],
                          [names[c] for c in objects["category"]], objects["difficult"],
                          imagesource=row.get("imagesource"), gsd=row.get("gsd"))
    (root / CLASSES_FILE).write_text("\n".join(names) + "\n", encoding="utf-8")
    return root


def _read_classes_file(path: Path) -> tuple[str, ...]:
    return tuple(n.strip() for n in path.read_text(encoding="utf-8-sig").splitlines() if n.strip())


def _check_names(names: Sequence[str], source: str) -> tuple[str, ...]:
    names = tuple(str(n).strip() for n in names)
    if not names or not all(names):
        raise ValueError(f"the class list ({source}) must hold non-empty names, got {list(names)}")
    broken = [n for n in names if len(n.splitlines()) > 1]
    if broken:
        raise ValueError(f"the class list ({source}) holds names with line breaks: {broken}")
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        raise ValueError(f"the class list ({source}) repeats {repeated}")
    return names


def given_class_names(root: str | Path, version: str | None = None, class_names: Sequence[str] | None = None
                      ) -> tuple[tuple[str, ...] | None, str]:
    """``(names, source)`` from ``class_names``, else DOTA's ``version`` list, else ``root/classes.txt``;
    ``(None, "")`` when none of them is there (the names are then inferred from the labels)."""
    if class_names is not None:
        return _check_names(class_names, "class_names"), "given"
    if version is not None:
        if version not in DOTA_CLASSES:
            raise ValueError(f"unknown DOTA version {version!r}, expected one of {sorted(DOTA_CLASSES)}")
        return DOTA_CLASSES[version], f"DOTA v{version}'s list"
    classes_file = Path(root) / CLASSES_FILE
    if classes_file.is_file():
        return _check_names(_read_classes_file(classes_file), str(classes_file)), str(classes_file)
    return None, ""


def infer_class_names(found: Mapping[str, int]) -> tuple[tuple[str, ...], str]:
    """``(names, source)`` from the class names found in labels (``name -> objects``).

    The rule: when every name found is a DOTA class, DOTA's list in mmrotate's order of the first version whose
    list holds them all (1.0, else 1.5, else 2.0: the shortest), so that DOTA data and its subsets keep DOTA's
    class ids; otherwise (a single name outside DOTA's lists, or no name) the names found, sorted.
    """
    names = set(found)
    for version in sorted(DOTA_CLASSES, key=lambda v: len(DOTA_CLASSES[v])):
        dota = DOTA_CLASSES[version]
        if names and names <= set(dota):
            return dota, (f"DOTA v{version}'s list: every class in the labels ({len(names)} of its {len(dota)}) is a "
                          f"DOTA v{version} class; pass the class list or a {CLASSES_FILE} for another")
    return tuple(sorted(names)), "inferred from the labels, sorted"


def resolve_class_names(root: str | Path, found: Mapping[str, int], version: str | None = None,
                        class_names: Sequence[str] | None = None) -> tuple[tuple[str, ...], str]:
    """``(names, source)``: :func:`given_class_names`, else :func:`infer_class_names` of ``found``."""
    names, source = given_class_names(root, version, class_names)
    return (names, source) if names is not None else infer_class_names(found)


def find_class_names(root: str | Path, version: str | None = None, class_names: Sequence[str] | None = None,
                     labels_dir: str = "labelTxt") -> tuple[str, ...]:
    """Class list of a DOTA folder: ``class_names`` if given, else DOTA's ``version`` list if given, else
    ``root/classes.txt`` if present, else inferred from the names in ``root/labels_dir`` (:func:`infer_class_names`).
    """
    names, source = given_class_names(root, version, class_names)
    if names is None:
        found: Counter = Counter()
        for path in sorted((Path(root) / labels_dir).glob("*.txt")):
            found.update(o.class_name for o in parse_dota_label_file(path, log=False)[0])
        names, source = infer_class_names(found)
    logger.info("%s: %d classes (%s): %s", root, len(names), source, ", ".join(names))
    return names


def check_unknown_classes(summary: DotaLoadSummary, found: Mapping[str, int], where: str,
                          max_fraction: float | None = MAX_UNKNOWN_FRACTION, how: str | None = None) -> None:
    """Refuse a split where ``max_fraction`` or more of the objects (``found``: ``class -> objects``, unknown
    classes included) has a class outside ``summary.class_names``.

    Raises:
        ValueError: naming the classes found and how to pass a class list.
    """
    unknown = sum(summary.unknown_classes.values())
    total = sum(found.values())
    if max_fraction is None or unknown == 0 or unknown < max_fraction * total:
        return
    names = summary.class_names
    listed = ", ".join(names[:10]) + (f", ... ({len(names)} names)" if len(names) > 10 else "")
    classes = ", ".join(f"{name} ({n})" for name, n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0])))
    how = how or (f"pass the class list: class_names=[...] (sl-detr: --class_names "
                  f"{','.join(sorted(found))}), or write the names, one per line, into {CLASSES_FILE} at the "
                  "dataset root; with neither (and no --dota_version), the classes are inferred from the "
                  "training labels")
    raise ValueError(f"{where}: {unknown} of {total} objects ({100 * unknown / total:.0f}%) would be dropped: "
                     f"their classes are not in the class list ({summary.class_source}: {listed}). Classes found "
                     f"in the labels: {classes}. To train on them, {how}.")


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
    version: str | None = None,
    class_names: Sequence[str] | None = None,
    images_dir: str = "images",
    labels_dir: str | None = "labelTxt",
    skip_difficult: bool = False,
    skip_unlabeled: bool = False,
    return_summary: bool = False,
    check_images: bool = True,
    max_unknown_fraction: float | None = MAX_UNKNOWN_FRACTION,
) -> datasets.Dataset | tuple[datasets.Dataset, DotaLoadSummary]:
    """Read a DOTA folder into a ``datasets.Dataset`` (one row per image; images are stored as paths).

    Schema (:func:`dota_features`): ``image`` (``Image``, decoded lazily on access), ``image_id`` (file stem),
    ``width``, ``height``, ``gsd`` / ``imagesource`` (header lines, or null), ``objects``: ``polygon``
    ``(n, 8)``, ``rbox`` ``(n, 5)`` (pixel, le90, minimum-area rectangle of the polygon), ``category``
    (``ClassLabel``), ``difficult`` (0, 1, or 2 for patches' truncated objects), ``area`` (``w * h`` of the rbox).

    Args:
        root: folder holding ``images_dir`` and ``labels_dir``.
        version: ``"1.0"``, ``"1.5"`` or ``"2.0"``: DOTA's class list (mmrotate order); ``None``: see below.
        class_names: the class list. Default: DOTA's ``version`` list if given, else ``root/classes.txt`` if
            present, else the names in the labels (:func:`infer_class_names`: DOTA's list of the first version
            that holds every one of them, else the names sorted). The chosen list and its source are logged and
            kept in the summary. Label fields are read through the list's tokens (:func:`class_token_map`:
            ``small_car`` is the class ``small car``).
        labels_dir: ``None`` for an unlabeled (test) split.
        skip_difficult: drop objects with ``difficult > 0``.
        skip_unlabeled: drop images without a label file (they are reported either way).
        return_summary: also return the :class:`DotaLoadSummary`.
        check_images: check each image cheaply (:func:`~sl_detr_hf.data.images.check_image`: PNG chunk CRCs,
            JPEG at 1/8 scale) and skip unreadable ones (named and counted in the summary); ``False`` reads only
            the headers.
        max_unknown_fraction: refuse (``ValueError`` naming the classes found) a split where this fraction of the
            objects or more has classes outside the class list; ``None`` accepts any.

    Objects of other classes and objects lying entirely outside their image are skipped as "unknown class" and
    "outside the image" problems; all skips are logged as one warning per cause with examples.
    """
    root = Path(root)
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
    parsed: dict[str, tuple[list[DotaObject], dict]] = {}
    for image_id, image_path in images.items():
        if image_id in labels:
            objects, problems, header = parse_dota_label_file(labels[image_id], log=False)
            summary.problems.extend(problems)
            parsed[image_id] = (objects, header)
        elif label_root is not None:
            summary.images_without_labels.append(str(image_path))
    found = Counter(o.class_name for objects, _ in parsed.values() for o in objects)
    names, summary.class_source = resolve_class_names(root, found, version, class_names)
    summary.class_names = names
    logger.info("%s: %d classes (%s): %s", root, len(names), summary.class_source, ", ".join(names))
    known = class_token_map(names)
    for image_id, (objects, header) in parsed.items():
        unknown = [o for o in objects if o.class_name not in known]
        summary.problems.extend(LabelProblem(str(labels[image_id]), o.line, "unknown class", _object_text(o),
                                             o.class_name) for o in unknown)
        parsed[image_id] = ([replace(o, class_name=known[o.class_name]) for o in objects if o.class_name in known],
                            header)
    found = Counter({known.get(token, token): n for token, n in found.items()})
    check_unknown_classes(summary, found, f"DOTA {root}", max_unknown_fraction)

    columns: dict[str, list] = {k: [] for k in ("image", "image_id", "width", "height", "gsd", "imagesource",
                                                  "objects")}
    for image_id, image_path in images.items():
        if image_id not in parsed and label_root is not None and skip_unlabeled:
            continue
        objects, header = parsed.get(image_id, ([], {"imagesource": None, "gsd": None}))
        if skip_difficult:
            objects = [o for o in objects if o.difficult == 0]
        size = _image_size(image_path, check_images, summary)
        if size is None:
            continue
        objects, problems = _split_outside(objects, *size, labels.get(image_id))
        summary.problems.extend(problems)
        columns["image"].append(str(image_path))
        columns["image_id"].append(image_id)
        columns["width"].append(size[0])
        columns["height"].append(size[1])
        columns["gsd"].append(header["gsd"])
        columns["imagesource"].append(header["imagesource"])
        columns["objects"].append(_objects_columns(objects, {n: i for i, n in enumerate(names)}))
        summary.num_images += 1
        summary.num_objects += len(objects)
    return finish_dataset(columns, names, summary, f"DOTA {root}", return_summary)


def finish_dataset(columns: dict[str, list], names: Sequence[str], summary: DotaLoadSummary, where: str,
                   return_summary: bool):
    """The readers' last step: problems sorted by file and line, the report logged, the columns as a dataset."""
    summary.problems.sort(key=lambda p: (p.path, p.line))
    summary.log(where)
    dataset = datasets.Dataset.from_dict(columns, features=dota_features(names))
    return (dataset, summary) if return_summary else dataset


def _object_text(obj: DotaObject) -> str:
    return " ".join(f"{c:g}" for c in obj.polygon) + f" {obj.class_name} {obj.difficult}"


EXIF_TRANSPOSED = (5, 6, 7, 8)
"""EXIF orientations that swap width and height (the decoded image is turned upright, ``to_rgb``)."""


def _image_size(path: Path, check: bool, summary: DotaLoadSummary) -> tuple[int, int] | None:
    """``(width, height)`` of the upright image (EXIF orientation applied, as the images are decoded) after the
    cheap check (or from the header); ``None`` (counted) if unreadable."""
    try:
        if check:
            check_image(path)
        with pixel_limit(), Image.open(path) as im:  # reads the header only
            width, height = im.size
            if im.getexif().get(0x0112) in EXIF_TRANSPOSED:
                width, height = height, width
            return width, height
    except (UnreadableImageError, OSError) as err:
        logger.warning("skipping an unreadable image: %s", err)
        summary.unreadable_images.append(str(path))
        return None


def _split_outside(objects: list[DotaObject], width: int, height: int, path: str | Path | None
                  ) -> tuple[list[DotaObject], list[LabelProblem]]:
    """``(kept, problems)``: objects whose polygon overlaps the image ``[0, W] x [0, H]``, and an "outside the
    image" problem for each other one."""
    kept, problems = [], []
    for obj in objects:
        xs, ys = obj.polygon[0::2], obj.polygon[1::2]
        if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= width or min(ys) >= height:
            coords = " ".join(f"{c:g}" for c in obj.polygon)
            problems.append(LabelProblem(str(path), obj.line, "outside the image",
                                         f"{coords} {obj.class_name} ({width}x{height} image)"))
        else:
            kept.append(obj)
    return kept, problems


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
