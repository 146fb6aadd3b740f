"""transformers' Deformable DETR (`DeformableDetrForObjectDetection`, e.g. the Hub's
`SenseTime/deformable-detr-with-box-refine-two-stage`) -> SL-DETR.

SL-DETR keeps Deformable DETR's parameter names, so every shared weight is copied by name (backbone, encoder,
decoder, class / box heads, two-stage layers); the new angle heads start with a zero last layer, so the model
predicts `theta = 0` and, in `"horizontal"` mode, exactly what the Deformable DETR model predicts. The config is
`SlDetrConfig.deformable_detr`'s (the DINO / RHINO parts off, transformers' numerics) unless overridden. Usage::

    sl-detr convert deformable-detr SOURCE OUTPUT_DIR [--box-type rotated|horizontal] [--classes dota-1.0] [--dino]
    # or
    from sl_detr_hf import SlDetrForObjectDetection
    model = SlDetrForObjectDetection.from_deformable_detr("SenseTime/deformable-detr-with-box-refine-two-stage")
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from transformers import DeformableDetrForObjectDetection

from ..configuration_sl_detr import DEFORMABLE_DETR_PARTS, DOTA_CLASSES, SlDetrConfig
from ..modeling_sl_detr import SlDetrForObjectDetection

logger = logging.getLogger(__name__)

__all__ = ["CLASS_CHOICES", "SlDetrConversionReport", "convert_deformable_detr", "deformable_detr_overrides"]

# Deformable DETR config fields that are training hyper-parameters of *its* loss; SL-DETR keeps its own defaults
# for them when a model is converted (the architecture fields are all copied).
_DDETR_LOSS_FIELDS = (
    "class_cost", "bbox_cost", "giou_cost", "mask_loss_coefficient", "dice_loss_coefficient",
    "bbox_loss_coefficient", "giou_loss_coefficient", "eos_coefficient", "focal_alpha", "auxiliary_loss",
)
# Bookkeeping fields of a serialized config that must not be passed to a new config.
_CONFIG_META_FIELDS = ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path")

CLASS_CHOICES: tuple[str, ...] = ("source", *(f"dota-{version}" for version in DOTA_CLASSES))
"""Class lists of `deformable_detr_overrides`: the source's, or a DOTA version's."""


@dataclass
class SlDetrConversionReport:
    """What [`convert_deformable_detr`] did with every parameter / buffer name."""

    copied: list[str] = field(default_factory=list)
    """Keys copied from the Deformable DETR checkpoint."""
    new: list[str] = field(default_factory=list)
    """Keys the SL-DETR model has and the checkpoint lacks (the angle heads): freshly initialized."""
    skipped: list[str] = field(default_factory=list)
    """Checkpoint keys not used, with the reason (absent here, or a shape mismatch such as another label count)."""

    def __str__(self) -> str:
        lines = [f"copied {len(self.copied)}, new {len(self.new)}, skipped {len(self.skipped)}"]
        lines += [f"  new: {key}" for key in self.new]
        lines += [f"  skipped: {key}" for key in self.skipped]
        return "\n".join(lines)


def deformable_detr_overrides(classes: str = "source", dino: bool = False) -> dict[str, Any]:
    """`SlDetrConfig` overrides of the command line's choices: `classes` (one of [`CLASS_CHOICES`]; another list
    than the source's newly initializes the class heads) and `dino` (keep `SlDetrConfig()`'s DINO / RHINO parts,
    `DEFORMABLE_DETR_PARTS`, instead of Deformable DETR's behaviour: new query selection and denoising layers)."""
    if classes not in CLASS_CHOICES:
        raise ValueError(f"classes must be one of {', '.join(CLASS_CHOICES)}, got {classes!r}")
    overrides: dict[str, Any] = {}
    if dino:
        defaults = SlDetrConfig()
        overrides.update({key: getattr(defaults, key) for key in DEFORMABLE_DETR_PARTS})
    if classes != "source":
        overrides["id2label"] = dict(enumerate(DOTA_CLASSES[classes.removeprefix("dota-")]))
    return overrides


def convert_deformable_detr(
    model_or_path: DeformableDetrForObjectDetection | str | os.PathLike,
    box_type: str = "rotated",
    return_report: bool = False,
    model_class: type[SlDetrForObjectDetection] = SlDetrForObjectDetection,
    **config_kwargs,
) -> SlDetrForObjectDetection | tuple[SlDetrForObjectDetection, SlDetrConversionReport]:
    """Initialize SL-DETR from a Deformable DETR detection model (`SlDetrForObjectDetection.from_deformable_detr`).

    Args:
        model_or_path: a `DeformableDetrForObjectDetection`, or a path / Hub id to load one from (e.g.
            `"SenseTime/deformable-detr-with-box-refine-two-stage"`).
        box_type: `"rotated"` or `"horizontal"`.
        return_report: also return a [`SlDetrConversionReport`] (copied / new / skipped keys).
        model_class: the SL-DETR class to build (a subclass of `SlDetrForObjectDetection`).
        config_kwargs: overrides of the SL-DETR config, e.g. `id2label` for another label set (the class heads
            are then skipped and newly initialized), or loss settings. The architecture fields come from the
            Deformable DETR config; its loss / matcher fields are replaced by SL-DETR's defaults. The config is
            `SlDetrConfig.deformable_detr`'s (no denoising, Deformable DETR's two-stage queries and encoder loss
            on all tokens, no look forward twice, unrotated sampling, transformers' numerics) unless overridden
            here.

    Returns:
        The model (in the source's train / eval mode and dtype), and the report when `return_report`.
    """
    if isinstance(model_or_path, (str, os.PathLike)):
        source = DeformableDetrForObjectDetection.from_pretrained(model_or_path)
    elif isinstance(model_or_path, DeformableDetrForObjectDetection) and not isinstance(model_or_path,
                                                                                          model_class):
        source = model_or_path
    else:
        raise TypeError(
            "`model_or_path` must be a DeformableDetrForObjectDetection or a path / Hub id, got "
            f"{type(model_or_path).__name__}"
        )
    values = source.config.to_dict()
    for key in (*_CONFIG_META_FIELDS, *_DDETR_LOSS_FIELDS):
        values.pop(key, None)
    if "num_labels" in config_kwargs or "id2label" in config_kwargs:
        # another label set: the source's label maps must not survive next to it
        for key in ("id2label", "label2id"):
            if key not in config_kwargs:
                values.pop(key, None)
    values.update(config_kwargs)
    values["box_type"] = box_type
    config = SlDetrConfig.deformable_detr(**values)  # the DINO / RHINO parts off: same outputs as the source

    model = model_class(config)
    source_state, target_state = source.state_dict(), model.state_dict()
    report = SlDetrConversionReport()
    to_load = {}
    for key, value in source_state.items():
        if key not in target_state:
            report.skipped.append(f"{key} (not in SL-DETR)")
        elif target_state[key].shape != value.shape:
            report.skipped.append(
                f"{key} (shape {tuple(value.shape)} != {tuple(target_state[key].shape)})"
            )
        else:
            to_load[key] = value
            report.copied.append(key)
    report.new = [key for key in target_state if key not in to_load]
    # Shape-mismatched keys keep their fresh initialization (e.g. class heads for another label count).
    model.load_state_dict(to_load, strict=False)
    model.to(dtype=next(source.parameters()).dtype)
    model.train(source.training)
    logger.info("Converted Deformable DETR to SL-DETR (%s): %s", box_type, report)
    return (model, report) if return_report else model
