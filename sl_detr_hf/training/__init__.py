"""Training with `transformers.Trainer`: data glue, optimizer groups, multi-process evaluation, metrics."""

from .data import DetectionTransform, make_collator, prepare_dataset
from .ema import EmaCallback, ModelEma
from .metrics import DetectionMetrics, select_detection_outputs
from .schedule import TimeBudgetSchedule
from .time_budget import TimeBudgetCallback
from .trainer import SlDetrTrainer, build_param_groups, paper_training_arguments

__all__ = [
    "DetectionMetrics",
    "DetectionTransform",
    "EmaCallback",
    "ModelEma",
    "SlDetrTrainer",
    "TimeBudgetCallback",
    "TimeBudgetSchedule",
    "build_param_groups",
    "make_collator",
    "paper_training_arguments",
    "prepare_dataset",
    "select_detection_outputs",
]
