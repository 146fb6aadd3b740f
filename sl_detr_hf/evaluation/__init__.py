"""Evaluation: DOTA mAP (official devkit rules, exact rotated IoU), Task1 submission files, COCO mAP."""

from .coco_map import COCO_STAT_NAMES, evaluate_coco
from .dota_map import evaluate_dota, voc_ap, write_task1_submission

__all__ = ["COCO_STAT_NAMES", "evaluate_coco", "evaluate_dota", "voc_ap", "write_task1_submission"]
