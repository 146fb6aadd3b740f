"""Evaluation: DOTA mAP (official devkit rules, exact rotated IoU) with COCO-rule mAP50:95 / mAP75 / AP by size,
Task1 submission files, COCO mAP."""

from .coco_map import COCO_STAT_NAMES, evaluate_coco
from .coco_rules import COCO_IOU_THRESHOLDS, SIZE_RANGES
from .dota_map import evaluate_dota, voc_ap, write_task1_submission
from .report import dota_summary, format_dota_table

__all__ = ["COCO_IOU_THRESHOLDS", "COCO_STAT_NAMES", "SIZE_RANGES", "dota_summary", "evaluate_coco", "evaluate_dota",
           "format_dota_table", "voc_ap", "write_task1_submission"]
