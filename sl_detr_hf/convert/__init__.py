"""Checkpoint converters: RHINO (rotated) and mmdetection DINO (horizontal) -> SL-DETR `from_pretrained` folders.

Not shipped with `trust_remote_code` checkpoints (the converted folders hold only the model's own files).
"""

from .common import CheckpointError, ConfigError, ConvertedCheckpoint, load_checkpoint, load_config, parse_config_text
from .mmdet_dino import convert_mmdet_dino_checkpoint
from .rhino import convert_rhino_checkpoint

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConvertedCheckpoint",
    "convert_mmdet_dino_checkpoint",
    "convert_rhino_checkpoint",
    "load_checkpoint",
    "load_config",
    "parse_config_text",
]
