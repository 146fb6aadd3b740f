"""The backbone's training policy: which ResNet stages are frozen, and whether its batch norms learn.

Deformable DETR (and transformers' port of it) is built for an ImageNet-pretrained ResNet: every
`BatchNorm2d` becomes a frozen batch norm (fixed statistics and affine terms), and the stem and the first stage
are frozen. For a backbone trained *from scratch* (the demo, or any `use_pretrained_backbone=False` run without
pretrained weights) both rules hurt: the frozen stem and stage 1 stay random filters forever, and the frozen
"batch norms" of a random ResNet are identities, so the network trains with no normalization at all. mmdet /
mmrotate expose the same two choices as `frozen_stages` and `norm_cfg=dict(type="BN", requires_grad=...)`.

- ``config.backbone_frozen_stages``: ``-1`` freezes nothing, ``0`` the stem, ``n >= 1`` the stem and stages
  ``1..n`` (default 1: Deformable DETR's rule).
- ``config.backbone_norm``: ``"frozen"`` (default) keeps the frozen batch norms; ``"batch_norm"`` makes the
  batch norms of the trained (unfrozen) part ordinary `nn.BatchNorm2d` layers (batch statistics in training,
  running statistics in evaluation, learned affine terms), starting from the frozen values. Those of frozen
  stages stay frozen. ``"eval_batch_norm"`` keeps every norm frozen but computes it with torch's batch-norm
  kernel in evaluation mode ([`SlDetrEvalBatchNorm2d`]), as mmdetection's ``norm_eval`` ResNets do: the same
  function as ``"frozen"`` (which folds the statistics into a scale and a shift first), equal to theirs bit for
  bit instead of in the last bits, so that converted RHINO / DINO checkpoints rank their proposals exactly as
  the original does (`sl_detr_hf.convert`).

Both apply to transformers' and timm's ResNets (other backbones keep what transformers does with them).
[`check_pixel_inputs`] and [`check_feature_sizes`] refuse, with a message, inputs the backbone and its feature
levels cannot take.
This file ships with ``trust_remote_code`` checkpoints: it imports only torch and transformers.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrFrozenBatchNorm2d

__all__ = ["SlDetrEvalBatchNorm2d", "apply_backbone_policy", "check_feature_sizes", "check_pixel_inputs",
           "frozen_backbone_prefixes", "resnet_kind"]

_RESNET_STAGES = 4


def frozen_backbone_prefixes(frozen_stages: int, timm: bool = False) -> tuple[str, ...]:
    """Parameter-name prefixes of the frozen part of a ResNet.

    transformers' `ResNetBackbone`: ``-1`` -> ``()``; ``0`` -> the stem (``"embedder."``); ``n`` -> the stem and
    ``encoder.stages.0 .. n-1``. timm's ResNet (``timm=True``): the stem is ``conv1`` / ``bn1``, stage ``i`` is
    ``layer{i}``.
    """
    if frozen_stages < 0:
        return ()
    stages = min(frozen_stages, _RESNET_STAGES)
    if timm:
        return ("conv1.", "bn1.", *(f"layer{i + 1}." for i in range(stages)))
    return ("embedder.", *(f"encoder.stages.{i}." for i in range(stages)))


def resnet_kind(config) -> str | None:
    """``"transformers"`` / ``"timm"`` for the two ResNet backbones the policy knows, else ``None``."""
    backbone = config.backbone_config
    if backbone is None:
        return None
    if backbone.model_type == "resnet":
        return "transformers"
    if backbone.model_type == "timm_backbone" and "resnet" in str(getattr(backbone, "backbone", "")):
        return "timm"
    return None


def _trainable_batch_norm(frozen: DeformableDetrFrozenBatchNorm2d) -> nn.BatchNorm2d:
    """An `nn.BatchNorm2d` that starts where ``frozen`` is (same affine terms, running statistics and epsilon)."""
    norm = nn.BatchNorm2d(frozen.weight.shape[0], eps=1e-5, device=frozen.weight.device, dtype=frozen.weight.dtype)
    if frozen.weight.device != torch.device("meta"):
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(norm, key).copy_(getattr(frozen, key))
        # a model's `post_init` would otherwise reset a (pretrained) backbone's copied values to 1 / 0
        for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.num_batches_tracked):
            tensor._is_hf_initialized = True
    return norm


class SlDetrEvalBatchNorm2d(DeformableDetrFrozenBatchNorm2d):
    """A frozen batch norm computed as `nn.BatchNorm2d` in evaluation mode: `(B, C, H, W) -> (B, C, H, W)`.

    The same buffers (`weight`, `bias`, `running_mean`, `running_var`, eps 1e-5) as the parent, so the same
    state dict; torch's batch-norm kernel instead of the parent's folded `x * scale + shift`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        training=False, momentum=0.0, eps=1e-5)


def _eval_batch_norm(frozen: DeformableDetrFrozenBatchNorm2d) -> SlDetrEvalBatchNorm2d:
    """``frozen``'s buffers in an [`SlDetrEvalBatchNorm2d`] (shared, not copied)."""
    norm = SlDetrEvalBatchNorm2d.__new__(SlDetrEvalBatchNorm2d)
    nn.Module.__init__(norm)
    for key in ("weight", "bias", "running_mean", "running_var"):
        norm.register_buffer(key, getattr(frozen, key))
    return norm


def _use_eval_batch_norms(module: nn.Module) -> None:
    """Swap every frozen batch norm below ``module`` for an [`SlDetrEvalBatchNorm2d`] (idempotent)."""
    for name, child in module.named_children():
        if isinstance(child, SlDetrEvalBatchNorm2d):
            continue
        if isinstance(child, DeformableDetrFrozenBatchNorm2d):
            module._modules[name] = _eval_batch_norm(child)
        else:
            _use_eval_batch_norms(child)


def _replace_frozen_norms(module: nn.Module, prefix: str, frozen: tuple[str, ...]) -> None:
    """Swap the frozen batch norms below ``module`` whose names do not start with a ``frozen`` prefix."""
    for name, child in module.named_children():
        path = f"{prefix}{name}."
        if isinstance(child, DeformableDetrFrozenBatchNorm2d):
            if not path.startswith(frozen):
                module._modules[name] = _trainable_batch_norm(child)
        else:
            _replace_frozen_norms(child, path, frozen)


def apply_backbone_policy(conv_encoder: nn.Module, config) -> None:
    """Freeze the configured stages and, with ``backbone_norm="batch_norm"``, make the other norms trainable.

    Args:
        conv_encoder: transformers' `DeformableDetrConvEncoder` (its ResNet is ``conv_encoder.model``).
        config: an `SlDetrConfig` (``backbone_config``, ``backbone_frozen_stages``, ``backbone_norm``).

    Idempotent: applied when the model is built and again after `from_pretrained` (which makes every loaded
    parameter trainable), so that a loaded model trains the parameters a fresh one does.
    """
    kind = resnet_kind(config)
    if kind is None:
        return
    frozen = frozen_backbone_prefixes(config.backbone_frozen_stages, timm=kind == "timm")
    backbone = conv_encoder.model
    if config.backbone_norm == "batch_norm":
        _replace_frozen_norms(backbone, "", frozen)
    elif config.backbone_norm == "eval_batch_norm":
        _use_eval_batch_norms(backbone)
    for name, parameter in backbone.named_parameters():
        parameter.requires_grad_(not name.startswith(frozen))


def check_feature_sizes(pixel_values: torch.Tensor, sizes: list, input_proj: nn.ModuleList) -> None:
    """Raise a ValueError naming the minimum image size when a feature level is too small for its GroupNorm
    (torch needs more than one value per group over the batch: `B * C / G * h * w > 1`).

    `sizes` are the backbone levels' `(h, w)`; the extra levels (3x3 stride-2 convolutions, `ceil(size / 2)`) are
    derived. Only shapes are read (no data-dependent control flow).
    """
    batch_size, _, height, width = pixel_values.shape
    sizes = [(int(h), int(w)) for h, w in sizes]
    while len(sizes) < len(input_proj):
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    for level, (size, projection) in enumerate(zip(sizes, input_proj)):
        norm = projection[-1]
        if batch_size * (norm.num_channels // norm.num_groups) * size[0] * size[1] > 1:
            continue
        # The first 1 x 1 level has a stride in [max(H, W), 2 max(H, W)): the nominal power of two; every later
        # level halves again, so the last level's stride is that times 2 per remaining level.
        last_stride = 2 ** math.ceil(math.log2(max(height, width, 1))) * 2 ** (len(sizes) - 1 - level)
        raise ValueError(
            f"`pixel_values` of {height} x {width} px are too small for this model: feature level {level} is "
            f"{size[0]} x {size[1]} and its GroupNorm({norm.num_groups}, {norm.num_channels}) needs more than one "
            f"value per group; use images of at least {last_stride + 1} px a side (the last level's stride is "
            f"{last_stride}), or a batch of 2 or more"
        )


def check_pixel_inputs(config, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None) -> None:
    """Raise a ValueError unless `pixel_values` is `(B, num_channels, H, W)` and `pixel_mask` is `(B, H, W)`."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"`pixel_values` must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != config.num_channels:
        raise ValueError(
            f"`pixel_values` must have shape (batch_size, {config.num_channels}, height, width), got "
            f"{tuple(pixel_values.shape)}"
        )
    if pixel_mask is not None:
        expected = (pixel_values.shape[0], *pixel_values.shape[2:])
        if not isinstance(pixel_mask, torch.Tensor) or tuple(pixel_mask.shape) != expected:
            shape = tuple(pixel_mask.shape) if isinstance(pixel_mask, torch.Tensor) else type(pixel_mask).__name__
            raise ValueError(f"`pixel_mask` must have shape {expected} (batch_size, height, width), got {shape}")
