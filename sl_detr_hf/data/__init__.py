"""Data: DOTA / YOLO-OBB / COCO readers, large-image splitting and merging, synthetic data, augmentation, collation."""

from .coco import CocoLoadSummary, load_coco
from .collate import SlDetrCollator, collate_fn
from .dota import (
    DotaLoadSummary,
    DotaObject,
    LabelProblem,
    dota_features,
    load_dota,
    parse_dota_label_file,
    write_dota_labels,
)
from .split import (
    PatchName,
    SplitSummary,
    get_windows,
    merge_patch_detections,
    parse_patch_name,
    split_dota,
    split_dota_cached,
)
from .synthetic import SYNTHETIC_CLASSES, SyntheticDotaConfig, make_synthetic_dota
from .transforms import RotatedDetectionAugment, visible_fraction
from .yolo_obb import load_yolo_obb

__all__ = [
    "SYNTHETIC_CLASSES",
    "CocoLoadSummary",
    "DotaLoadSummary",
    "DotaObject",
    "LabelProblem",
    "PatchName",
    "RotatedDetectionAugment",
    "SlDetrCollator",
    "SplitSummary",
    "SyntheticDotaConfig",
    "collate_fn",
    "dota_features",
    "get_windows",
    "load_coco",
    "load_dota",
    "load_yolo_obb",
    "make_synthetic_dota",
    "merge_patch_detections",
    "parse_dota_label_file",
    "parse_patch_name",
    "split_dota",
    "split_dota_cached",
    "visible_fraction",
    "write_dota_labels",
]
