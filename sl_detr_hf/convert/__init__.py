"""Checkpoint converters -> SL-DETR: RHINO (rotated) and mmdetection DINO (horizontal) checkpoints, and
transformers' Deformable DETR (`deformable_detr.py`, behind `SlDetrForObjectDetection.from_deformable_detr`).

One job per module: `checkpoint.py` reads checkpoints safely (no pickled code unless trusted) and accounts for every
key, `config.py` reads mmengine configs without running them (bounded, with the `_base_` chain), `settings.py`
derives SL-DETR's settings from the source, `mapping.py` is the key rename table, `common.py` runs a conversion,
and `rhino.py` / `mmdet_dino.py` say what differs per family. The command line is `sl-detr convert`
(`sl_detr_hf.commands.convert`). Not shipped with `trust_remote_code` checkpoints (the converted folders hold only
the model's own files).
"""

from .checkpoint import CheckpointError, StateDictReader, load_checkpoint
from .common import ConvertedCheckpoint
from .config import ConfigError, load_config, parse_config_text
from .deformable_detr import SlDetrConversionReport, convert_deformable_detr
from .mmdet_dino import convert_mmdet_dino_checkpoint
from .rhino import convert_rhino_checkpoint
from .settings import COCO_CLASSES

__all__ = [
    "COCO_CLASSES",
    "CheckpointError",
    "ConfigError",
    "ConvertedCheckpoint",
    "SlDetrConversionReport",
    "StateDictReader",
    "convert_deformable_detr",
    "convert_mmdet_dino_checkpoint",
    "convert_rhino_checkpoint",
    "load_checkpoint",
    "load_config",
    "parse_config_text",
]
