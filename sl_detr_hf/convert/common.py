"""The conversion both DINO-family converters run (RHINO: `rhino.py`, mmdetection DINO: `mmdet_dino.py`): read
the checkpoint (`checkpoint.py`) and its config (`config.py`), derive SL-DETR's settings (`settings.py`), rename
every key (`mapping.py`), build the model strictly from the mapped tensors, and write the `from_pretrained` folder.
What differs between the families is a [`SourceSpec`]. The command line is `sl-detr convert`
(`sl_detr_hf.commands.convert`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, StateDictReader, load_checkpoint, strip_module_prefix
from .config import config_from_meta, load_config, lookup, short_type
from .mapping import convert_state_dict
from .settings import backbone_settings, class_names, processor_settings, training_settings, transformer_settings

logger = logging.getLogger(__name__)

__all__ = ["ConvertedCheckpoint", "SourceSpec", "build_converted", "convert_checkpoint"]


@dataclass
class ConvertedCheckpoint:
    """A conversion's result: the SL-DETR model and image processor, and what became of every source key."""

    model: Any
    processor: Any
    used: list[str]
    ignored: dict[str, str]
    settings: dict[str, Any]

    def save(self, output_dir: str | Path) -> Path:
        """Write a `from_pretrained` folder (safetensors, config, image processor, code files)."""
        output_dir = Path(output_dir)
        self.model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        return output_dir


def build_converted(state: dict[str, torch.Tensor], reader: StateDictReader, config_kwargs: dict[str, Any],
                    processor_kwargs: dict[str, Any], settings: dict[str, Any]) -> ConvertedCheckpoint:
    """Instantiate the SL-DETR model from `config_kwargs`, load the mapped `state` (strictly: every model tensor
    must come from the checkpoint), and build the image processor."""
    from ..configuration_sl_detr import SlDetrConfig
    from ..image_processing_sl_detr import SlDetrImageProcessor
    from ..modeling_sl_detr import SlDetrForObjectDetection

    reader.finish()
    config = SlDetrConfig(**config_kwargs)
    model = SlDetrForObjectDetection(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"SL-DETR keys the checkpoint has nothing for {missing[:10]}, mapped keys SL-DETR "
                              f"lacks {unexpected[:10]} (a part the checkpoint lacks, or a converter bug)")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{key}: checkpoint shape {tuple(tensor.shape)}, SL-DETR "
                                  f"{tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    model.eval()
    processor = SlDetrImageProcessor(box_type=config.box_type, max_detections=config.max_detections,
                                     **{k: v for k, v in processor_kwargs.items() if k != "bgr_input"})
    return ConvertedCheckpoint(model, processor, sorted(reader.used), dict(reader.ignored), settings)


@dataclass(frozen=True)
class SourceSpec:
    """What differs between the converted families: the model types accepted, the box type, the class lists by
    count, and a hook checking / adding family settings (`(model_cfg) -> SlDetrConfig kwargs`)."""

    name: str
    model_types: tuple[str, ...]
    rotated: bool
    classes_by_count: Mapping[int, tuple[str, ...]]
    family_settings: Any  # Callable[[Mapping | None, StateDictReader], dict]


def convert_checkpoint(
    spec: SourceSpec,
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    output_dir: str | Path | None = None,
    config: str | Path | Mapping | None = None,
    trust_checkpoint: bool = False,
    id2label: Mapping[int, str] | None = None,
) -> ConvertedCheckpoint:
    """Convert a DINO-family checkpoint (see `spec`) to SL-DETR, and write it to `output_dir` when given.

    Args:
        checkpoint: an mmengine `.pth` (config text in `meta['cfg']`), a torch state dict or a safetensors file,
            or a state dict itself (`{key: tensor}`).
        config: the model's config file (`.py` with `_base_`, or `.json`) or dict; overrides `meta['cfg']`.
        trust_checkpoint: see [`load_checkpoint`].
        id2label: class names (default: the checkpoint's `dataset_meta`, the config, or by class count).
    """
    if isinstance(checkpoint, Mapping):
        state, meta, source = strip_module_prefix(checkpoint), {}, "state dict"
    else:
        state, meta = load_checkpoint(checkpoint, trust_checkpoint)
        source = Path(checkpoint).name
    if isinstance(config, Mapping):
        cfg = dict(config)
    elif config is not None:
        cfg = load_config(config)
    else:
        cfg = config_from_meta(meta)
    if cfg is None:
        logger.warning("%s: no config (meta['cfg'] or --config); using %s's defaults with the tensors' sizes",
                       source, spec.name)
    model_cfg = lookup(cfg, "model")
    kind = short_type(model_cfg)
    if kind is not None and kind not in spec.model_types:
        raise CheckpointError(f"model type {model_cfg['type']!r} is not a {spec.name} model "
                              f"(expected {' / '.join(spec.model_types)})")
    reader = StateDictReader(state)
    if not reader.has("level_embed") or not reader.has("query_embedding.weight"):
        raise CheckpointError(f"{source} is not a DINO-family state dict (no `level_embed` / "
                              "`query_embedding.weight`)")
    backbone = backbone_settings(reader, model_cfg)
    transformer = transformer_settings(reader, model_cfg)
    processor = processor_settings(cfg)
    processor["clip_boxes"] = not spec.rotated  # mmdetection's DETR heads clip axis-aligned boxes to the image
    out = convert_state_dict(reader, transformer["num_feature_levels"], transformer["decoder_layers"],
                             transformer["d_model"], spec.rotated, processor["bgr_input"])

    num_classes = reader.peek("bbox_head.cls_branches.0.weight").shape[0]
    declared = lookup(model_cfg, "bbox_head", "num_classes")
    if declared is not None and declared != num_classes:
        raise CheckpointError(f"config bbox_head.num_classes={declared}, the checkpoint's heads {num_classes}")
    if id2label is None:
        id2label = dict(enumerate(class_names(meta, cfg, num_classes, spec.classes_by_count)))
    id2label = {int(k): str(v) for k, v in id2label.items()}
    if len(id2label) != num_classes:
        raise CheckpointError(f"id2label has {len(id2label)} names, the checkpoint {num_classes} classes")

    from transformers import ResNetConfig

    backbone_config = ResNetConfig(
        embedding_size=backbone["embedding_size"], hidden_sizes=backbone["hidden_sizes"], depths=backbone["depths"],
        layer_type="bottleneck", downsample_in_first_stage=False, downsample_in_bottleneck=False,
        out_features=["stage2", "stage3", "stage4"],
    )
    config_kwargs = dict(
        backbone_config=backbone_config, backbone=None, use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_frozen_stages=backbone["frozen_stages"],
        backbone_norm="eval_batch_norm" if backbone["frozen_norms"] else "batch_norm",
        box_type="rotated" if spec.rotated else "horizontal",
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
        numerics="rhino", mixed_query_selection=True, look_forward_twice=True, rotated_sampling="rhino",
        query_selection_nms=None,
    )
    config_kwargs.update(transformer)
    config_kwargs.update(training_settings(model_cfg))
    config_kwargs.update(spec.family_settings(model_cfg, reader))
    settings = {"source": spec.name, "model_type": kind, "backbone": backbone, "processor": processor}
    converted = build_converted(out, reader, config_kwargs, processor, settings)
    if output_dir is not None:
        converted.save(output_dir)
    logger.info("converted %s (%d tensors used, %d ignored)", source, len(converted.used),
                len(converted.ignored))
    return converted
