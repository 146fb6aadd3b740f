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
This file ships with ``trust_remote_code`` checkpoints: it imports only torch and transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrFrozenBatchNorm2d

__all__ = ["SlDetrEvalBatchNorm2d", "apply_backbone_policy", "frozen_backbone_prefixes"]

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


def _resnet_kind(config) -> str | None:
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
    kind = _resnet_kind(config)
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
