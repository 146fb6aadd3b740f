"""SL-DETR settings derived from the source: the backbone / neck checks and `ResNetConfig` arguments, the
transformer's sizes (from the tensors) and options (from the config), the training settings for fine-tuning, the
image processor of the test pipeline and the class names. Anything SL-DETR cannot compute the same way is refused
by name ([`CheckpointError`]).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .checkpoint import CheckpointError, StateDictReader
from .config import lookup, short_type

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_CLASSES",
    "backbone_settings",
    "class_names",
    "processor_settings",
    "training_settings",
    "transformer_settings",
]

# mmdetection's CocoDataset class order (80 classes), what its COCO checkpoints' class heads follow.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


def _num_heads_points(reader: StateDictReader, prefix: str, levels: int, heads: int) -> int:
    """Sampling points per head and level of an MSDA module, from its `attention_weights` rows."""
    rows = reader.peek(f"{prefix}.attention_weights.weight").shape[0]
    if rows % (heads * levels):
        raise CheckpointError(f"{prefix}: {rows} attention weights do not split into {heads} heads x {levels} levels")
    return rows // (heads * levels)


def backbone_settings(reader: StateDictReader, model_cfg: Mapping | None) -> dict[str, Any]:
    """Check the backbone / neck against what SL-DETR supports (an mmdet ResNet of bottlenecks, `style='pytorch'`,
    C3-C5 into a ChannelMapper with GroupNorm) and return its transformers `ResNetConfig` arguments (widths and
    depths read from the tensors, so reduced ResNets convert too) and its training policy."""
    backbone = lookup(model_cfg, "backbone") or {}
    kind = short_type(backbone)
    if kind is not None and kind != "ResNet":
        hint = " (Swin backbones are not supported)" if "swin" in kind.lower() else ""
        raise CheckpointError(f"backbone {backbone.get('type')!r} is not supported{hint}: SL-DETR converts "
                              "mmdet ResNet backbones (ResNet-50 / 101 layouts)")
    if not reader.has("backbone.conv1.weight") or not reader.has("backbone.layer1.0.conv3.weight"):
        sample = next((k for k in reader.state if k.startswith("backbone.")), "none")
        raise CheckpointError(f"the backbone is not an mmdet bottleneck ResNet (first backbone key: {sample}); Swin "
                              "and other backbones are not supported")
    for name, expected in (("style", "pytorch"), ("deep_stem", False), ("avg_down", False), ("dcn", None),
                           ("plugins", None), ("num_stages", 4), ("out_indices", (1, 2, 3)),
                           ("strides", (1, 2, 2, 2)), ("dilations", (1, 1, 1, 1))):
        value = backbone.get(name, expected)
        if (tuple(value) if isinstance(value, list) else value) != expected:
            raise CheckpointError(f"backbone {name}={value!r} is not supported (SL-DETR's ResNet: {expected!r})")
    depths = [reader.count(f"backbone.layer{stage}.") for stage in range(1, 5)]
    widths = [reader.peek(f"backbone.layer{stage}.0.conv3.weight").shape[0] for stage in range(1, 5)]
    for stage, width in enumerate(widths, 1):
        inner = reader.peek(f"backbone.layer{stage}.0.conv1.weight").shape[0]
        if width != 4 * inner:
            raise CheckpointError(f"backbone.layer{stage}: bottleneck {inner} -> {width} channels; SL-DETR's ResNet "
                                  "expands by 4")
    neck = lookup(model_cfg, "neck") or {}
    if short_type(neck) not in (None, "ChannelMapper"):
        raise CheckpointError(f"neck {neck.get('type')!r} is not supported (mmdet ChannelMapper)")
    if neck and (neck.get("kernel_size", 3) != 1 or neck.get("act_cfg", "relu") is not None):
        raise CheckpointError("the neck must be ChannelMapper(kernel_size=1, act_cfg=None) as in DINO's configs")
    if neck and (lookup(neck, "norm_cfg", "type") != "GN" or lookup(neck, "norm_cfg", "num_groups") != 32):
        raise CheckpointError(f"the neck's norm must be GroupNorm(32) (SL-DETR's input projections), got "
                              f"{neck.get('norm_cfg')!r}")
    channels = [reader.peek(f"neck.convs.{i}.conv.weight").shape[1] for i in range(reader.count("neck.convs."))]
    if channels != widths[1:]:
        raise CheckpointError(f"the neck takes backbone channels {channels}; SL-DETR feeds ResNet C3-C5 "
                              f"({widths[1:]}, out_indices (1, 2, 3))")
    norm_eval = backbone.get("norm_eval", True) and not lookup(backbone, "norm_cfg", "requires_grad", default=False)
    return {"embedding_size": reader.peek("backbone.conv1.weight").shape[0], "hidden_sizes": widths,
            "depths": depths, "frozen_stages": int(backbone.get("frozen_stages", 1)), "frozen_norms": bool(norm_eval)}


def transformer_settings(reader: StateDictReader, model_cfg: Mapping | None) -> dict[str, Any]:
    """`SlDetrConfig` fields of the encoder / decoder / query parts: sizes from the tensors, head counts,
    dropout and the sine encoding from the config (mmcv's defaults where it is silent)."""
    d_model = reader.peek("level_embed").shape[1]
    levels = reader.peek("level_embed").shape[0]
    encoder_layers, decoder_layers = reader.count("encoder.layers."), reader.count("decoder.layers.")
    for part, found in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        declared = lookup(model_cfg, part, "num_layers")
        if declared is not None and declared != found:
            raise CheckpointError(f"config {part}.num_layers={declared} but the checkpoint has {found} layers")
    if not encoder_layers or not decoder_layers:
        raise CheckpointError("the checkpoint has no encoder / decoder layers (`encoder.layers.0.*`)")
    if lookup(model_cfg, "decoder", "post_norm_cfg") is not None:
        raise CheckpointError("decoder.post_norm_cfg must be None (DINO's decoder)")
    for flag in ("as_two_stage", "with_box_refine"):
        if lookup(model_cfg, flag, default=True) is not True:
            raise CheckpointError(f"{flag}=False is not a DINO / RHINO model")
    enc_attn = lookup(model_cfg, "encoder", "layer_cfg", "self_attn_cfg") or {}
    dec_self = lookup(model_cfg, "decoder", "layer_cfg", "self_attn_cfg") or {}
    dec_cross = lookup(model_cfg, "decoder", "layer_cfg", "cross_attn_cfg") or {}
    encoder_heads = int(enc_attn.get("num_heads", 8))
    decoder_heads = int(dec_cross.get("num_heads", 8))
    if int(dec_self.get("num_heads", 8)) != decoder_heads:
        raise CheckpointError("the decoder's self- and cross-attention head counts differ; SL-DETR uses one "
                              "(decoder_attention_heads)")
    encoder_points = _num_heads_points(reader, "encoder.layers.0.self_attn", levels, encoder_heads)
    decoder_points = _num_heads_points(reader, "decoder.layers.0.cross_attn", levels, decoder_heads)
    for name, cfg, found in (("encoder", enc_attn, encoder_points), ("decoder", dec_cross, decoder_points)):
        if cfg.get("num_points", found) != found:
            raise CheckpointError(f"{name} num_points={cfg['num_points']} disagrees with the checkpoint ({found})")
    position = lookup(model_cfg, "positional_encoding") or {}
    if position.get("normalize", True) is not True:
        raise CheckpointError("positional_encoding.normalize=False is not supported")
    if position.get("num_feats", d_model // 2) * 2 != d_model:
        raise CheckpointError(f"positional_encoding.num_feats={position['num_feats']} must be d_model / 2")
    dropout = float(enc_attn.get("dropout", 0.0))
    ffn_drop = float(lookup(model_cfg, "encoder", "layer_cfg", "ffn_cfg", "ffn_drop", default=0.0))
    return dict(
        d_model=d_model, num_feature_levels=levels, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=encoder_heads, decoder_attention_heads=decoder_heads,
        encoder_n_points=encoder_points, decoder_n_points=decoder_points,
        encoder_ffn_dim=reader.peek("encoder.layers.0.ffn.layers.0.0.weight").shape[0],
        decoder_ffn_dim=reader.peek("decoder.layers.0.ffn.layers.0.0.weight").shape[0],
        dropout=dropout, attention_dropout=0.0, activation_dropout=ffn_drop,
        num_queries=reader.peek("query_embedding.weight").shape[0],
        two_stage_num_proposals=reader.peek("query_embedding.weight").shape[0],
        two_stage=True, with_box_refine=True, auxiliary_loss=True,
        position_embedding_temperature=position.get("temperature", 10000),
        position_embedding_offset=position.get("offset", 0.0),
    )


def training_settings(model_cfg: Mapping | None) -> dict[str, Any]:
    """Denoising, matcher and loss weights of the source config, for fine-tuning (inference ignores them)."""
    out: dict[str, Any] = {}
    dn = lookup(model_cfg, "dn_cfg") or {}
    if "label_noise_scale" in dn:
        out["label_noise_ratio"] = float(dn["label_noise_scale"])
    if "box_noise_scale" in dn:
        out["box_noise_scale"] = float(dn["box_noise_scale"])
    group = dn.get("group_cfg") or {}
    if group.get("dynamic", True) and group.get("num_dn_queries"):
        out["num_denoising"] = int(group["num_dn_queries"])
        out["max_denoising_groups"] = int(group.get("max_num_groups") or group["num_dn_queries"])
    head = lookup(model_cfg, "bbox_head") or {}
    loss_cls = head.get("loss_cls") or {}
    for src, dst in (("loss_weight", "cls_loss_coefficient"), ("alpha", "focal_alpha"), ("gamma", "focal_gamma")):
        if src in loss_cls:
            out[dst] = float(loss_cls[src])
    if "loss_weight" in (head.get("loss_bbox") or {}):
        out["bbox_loss_coefficient"] = float(head["loss_bbox"]["loss_weight"])
    if "loss_weight" in (head.get("loss_iou") or {}):
        out["sync_loss_coefficient"] = float(head["loss_iou"]["loss_weight"])
    if "tau" in (head.get("loss_iou") or {}):
        out["kld_tau"] = float(head["loss_iou"]["tau"])
    for cost in lookup(model_cfg, "train_cfg", "assigner", "match_costs") or []:
        kind, weight = short_type(cost), float(cost.get("weight", 1.0))
        if kind == "FocalLossCost":
            out["class_cost"] = weight
        elif kind in ("BBoxL1Cost", "RBoxL1Cost"):
            out["bbox_cost"], out["matcher_box_cost"] = weight, "l1"
        elif kind == "HausdorffCost":
            out["bbox_cost"], out["matcher_box_cost"] = weight, "hausdorff"
        elif kind in ("GDCost", "IoUCost", "RotatedIoUCost"):
            out["geometric_cost"] = weight
    max_per_img = lookup(model_cfg, "test_cfg", "max_per_img")
    if max_per_img:
        out["max_detections"] = int(max_per_img)
    return out


def processor_settings(cfg: Mapping | None) -> dict[str, Any]:
    """`SlDetrImageProcessor` arguments of the test pipeline: mean / std on 0-255 (no 1/255 rescale), the
    resize, and whether the model was fed BGR (then its stem is flipped to take RGB, see `map_resnet`)."""
    pre = lookup(cfg, "model", "data_preprocessor") or {}
    mean = [float(v) for v in pre.get("mean", (123.675, 116.28, 103.53))]
    std = [float(v) for v in pre.get("std", (58.395, 57.12, 57.375))]
    bgr_input = not pre.get("bgr_to_rgb", True) and not pre.get("rgb_to_bgr", False)
    if bgr_input:  # the model saw BGR: the converted one takes RGB through a flipped stem
        mean, std = mean[::-1], std[::-1]
    if pre.get("pad_size_divisor", 1) not in (1, None):
        logger.warning("the source pads images to a multiple of %s; SL-DETR's processor pads to the batch's "
                       "largest image only", pre["pad_size_divisor"])
    scale = (1024, 1024)
    pipelines = [lookup(cfg, "test_dataloader", "dataset", "pipeline"), lookup(cfg, "test_pipeline"),
                 lookup(cfg, "val_dataloader", "dataset", "pipeline")]
    for pipeline in pipelines:
        resize = next((t for t in pipeline or [] if short_type(t) == "Resize"), None)
        if resize is not None:
            if not resize.get("keep_ratio", False):
                raise CheckpointError("the test pipeline resizes without keeping the aspect ratio; SL-DETR's "
                                      "processor keeps it")
            scale = tuple(resize["scale"])
            break
    return {"image_mean": mean, "image_std": std, "do_rescale": False, "bgr_input": bgr_input,
            "size": {"shortest_edge": int(min(scale)), "longest_edge": int(max(scale))}}


def class_names(meta: Mapping, cfg: Mapping | None, num_classes: int,
                by_count: Mapping[int, tuple[str, ...]]) -> tuple[str, ...]:
    """The class names: the checkpoint's `dataset_meta`, the config's dataset `metainfo`, a known list of this
    length (`by_count`), else `class_{i}`."""
    candidates = [lookup(meta, "dataset_meta", "classes"),
                  lookup(cfg, "test_dataloader", "dataset", "metainfo", "classes"),
                  lookup(cfg, "train_dataloader", "dataset", "metainfo", "classes"),
                  by_count.get(num_classes)]
    for names in candidates:
        if names is not None and len(names) == num_classes:
            return tuple(str(n) for n in names)
    return tuple(f"class_{i}" for i in range(num_classes))
