"""RHINO (SIAnalytics/RHINO, mmrotate 1.x on mmdetection 3.0) checkpoints -> rotated SL-DETR.

Supported: `type='RHINO'` with `version='v2'` (the DOTA / DIOR configs' decoder: 5-d references whose angle turns
the sampling) or `'v3'` (RHINO builds the same decoder for it, `RHINO._init_layers`, and reads `version` nowhere
else), mmdet ResNet-50 / 101 backbones, any head class (`RHINOHead`, the `rhino_phc_haus` heads: they differ in
training only). Refused with a message: other decoder versions (`''`, RHINO's default when the config names none,
and `'v1'` drop the angle; `'v4'` embeds it), Swin backbones, angle settings other than `width_longer=True` with
`angle_factor=pi`.

The converted model computes what RHINO computes (`numerics="rhino"`: temperature-20 encoder positions, decoder
output norm, class-aware top-k, theta = sigmoid(a) * pi, ...; `tests/test_rhino_parity.py`), and fine-tunes with
SL-DETR's synchronized loss. Usage::

    sl-detr convert rhino rhino_r50_dota.pth converted/ [--config CONFIG.py]
    # or
    from sl_detr_hf.convert import convert_rhino_checkpoint
    convert_rhino_checkpoint("rhino_r50_dota.pth", "converted/")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from ..configuration_sl_detr import DOTA_CLASSES
from .checkpoint import CheckpointError, StateDictReader
from .common import ConvertedCheckpoint, SourceSpec, convert_checkpoint
from .config import lookup, short_type

__all__ = ["RHINO_SPEC", "convert_rhino_checkpoint"]

# heads whose training SL-DETR's dynamic denoising reproduces (a positive DN query that loses its object to a
# matching query is trained as background); the others train plain contrastive denoising
_DYNAMIC_DENOISING_HEADS = ("RHINOPositiveHungarianClassificationHead",)
# decoder versions whose layers SL-DETR's decoder computes: RHINO builds `RhinoTransformerDecoderV2` for both
_SUPPORTED_VERSIONS = ("v2", "v3")


def _rhino_settings(model_cfg: Mapping | None, reader: StateDictReader) -> dict[str, Any]:
    """RHINO's decoder version and angle convention -> `SlDetrConfig` fields.

    Without a config the version cannot be read from the tensors: 'v2' is assumed (the published configs').
    """
    version = "v2" if model_cfg is None else model_cfg.get("version", "")  # RHINO's default: ''
    if version not in _SUPPORTED_VERSIONS:
        named = "" if model_cfg is None or "version" in model_cfg else " (the config sets none: RHINO's default)"
        raise CheckpointError(f"RHINO decoder version {version!r}{named} is not supported: SL-DETR's decoder is "
                              "RHINO's 'v2' (5-d references, angle-rotated sampling; 'v3' builds the same decoder), "
                              "the one of the DOTA / DIOR configs; '' / 'v1' drop the angle, 'v4' embeds it")
    head = lookup(model_cfg, "bbox_head") or {}
    angle_cfg = head.get("angle_cfg") or {"width_longer": True, "start_angle": 0}
    if not angle_cfg.get("width_longer", True):
        raise CheckpointError(f"angle_cfg {angle_cfg!r}: only width_longer=True is supported")
    if not math.isclose(float(head.get("angle_factor", math.pi)), math.pi):
        raise CheckpointError(f"angle_factor={head['angle_factor']!r}: only pi is supported")
    decoder_factor = lookup(model_cfg, "decoder", "angle_factor", default=math.pi)
    if not math.isclose(float(decoder_factor), math.pi):
        raise CheckpointError(f"decoder.angle_factor={decoder_factor!r}: only pi is supported")
    start = angle_cfg.get("start_angle", 0)
    if not -90 <= start <= 0:
        raise CheckpointError(f"angle_cfg start_angle={start} is not supported (in [-90, 0])")
    settings: dict[str, Any] = {"angle_start": start}
    if head:
        settings["dynamic_denoising"] = short_type(head) in _DYNAMIC_DENOISING_HEADS
    return settings


RHINO_SPEC = SourceSpec(
    name="RHINO", model_types=("RHINO",), rotated=True,
    classes_by_count={len(names): names for names in DOTA_CLASSES.values()},
    family_settings=_rhino_settings,
)


def convert_rhino_checkpoint(
    checkpoint: str | Path | Mapping[str, Tensor],
    output_dir: str | Path | None = None,
    config: str | Path | Mapping | None = None,
    trust_checkpoint: bool = False,
    id2label: Mapping[int, str] | None = None,
) -> ConvertedCheckpoint:
    """Convert a RHINO checkpoint to a rotated SL-DETR model (and write the folder when `output_dir` is given).

    Args:
        checkpoint: mmengine `.pth` (settings from `meta['cfg']`), torch state dict or `.safetensors` state dict
            (a file), or a state dict.
        output_dir: where to write the `from_pretrained` folder (model, config, image processor).
        config: RHINO's config file (`configs/rhino/*.py`, its `_base_` files next to it, or a JSON dump) or dict;
            needed when the checkpoint has no `meta['cfg']`.
        trust_checkpoint: read pickled objects besides tensors (see `load_checkpoint`).
        id2label: class names (default: `dataset_meta`, the config, or DOTA v1.0 / v1.5 / v2.0 by class count).

    Returns:
        A [`ConvertedCheckpoint`] (`.model`, `.processor`, the used / ignored source keys).
    """
    return convert_checkpoint(RHINO_SPEC, checkpoint, output_dir, config, trust_checkpoint, id2label)
