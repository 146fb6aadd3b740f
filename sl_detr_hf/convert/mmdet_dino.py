"""mmdetection 3.x DINO checkpoints (e.g. the public `dino-4scale_r50_8xb2-12e_coco`) -> horizontal SL-DETR.

Supported: `type='DINO'` with mmdet ResNet-50 / 101 backbones and 4 feature levels (C3-C5 + one extra), the
config of `configs/dino/dino-4scale_r50_*`. Refused with a message: Swin backbones, 5-scale models (C2-C5).
The converted model computes what mmdetection computes (`numerics="rhino"`, the same DINO numerics;
`tests/test_mmdet_dino_parity.py`) and fine-tunes with SL-DETR's synchronized GIoU loss. Usage::

    sl-detr convert dino dino-4scale_r50_8xb2-12e_coco.pth converted/
    # or
    from sl_detr_hf.convert import convert_mmdet_dino_checkpoint
    convert_mmdet_dino_checkpoint("dino-4scale_r50_8xb2-12e_coco.pth", "converted/")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from .checkpoint import StateDictReader
from .common import ConvertedCheckpoint, SourceSpec, convert_checkpoint
from .settings import COCO_CLASSES

__all__ = ["MMDET_DINO_SPEC", "convert_mmdet_dino_checkpoint"]


def _dino_settings(model_cfg: Mapping | None, reader: StateDictReader) -> dict[str, Any]:
    """DINO's DN is plain contrastive denoising (no dynamic re-matching)."""
    return {"dynamic_denoising": False}


MMDET_DINO_SPEC = SourceSpec(
    name="mmdetection DINO", model_types=("DINO",), rotated=False, classes_by_count={80: COCO_CLASSES},
    family_settings=_dino_settings,
)


def convert_mmdet_dino_checkpoint(
    checkpoint: str | Path | Mapping[str, Tensor],
    output_dir: str | Path | None = None,
    config: str | Path | Mapping | None = None,
    trust_checkpoint: bool = False,
    id2label: Mapping[int, str] | None = None,
) -> ConvertedCheckpoint:
    """Convert an mmdetection 3.x DINO checkpoint to a horizontal SL-DETR model (written when `output_dir`).

    Arguments as [`convert_rhino_checkpoint`]; class names default to the checkpoint's `dataset_meta`, the
    config's, or COCO's 80.
    """
    return convert_checkpoint(MMDET_DINO_SPEC, checkpoint, output_dir, config, trust_checkpoint, id2label)
