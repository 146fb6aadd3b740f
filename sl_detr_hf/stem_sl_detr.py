"""A light stem for the small ResNet trained from scratch (`config.backbone_stem = "light"`).

ResNet's stem is a 7x7 stride-2 convolution to `embedding_size` channels at half the input resolution, a batch
norm, a ReLU and a 3x3 stride-2 max pool. For the tiny model's slim ResNet (32 stem channels, one or two blocks
per stage) that stem costs more than all four stages together: 147 multiply-adds per output value on the largest
map, plus the norm, activation and pool over it. The light stem is two 3x3 stride-2 convolutions (to
`embedding_size // 2`, then `embedding_size` channels), each with a batch norm and a ReLU, as the YOLO stems
(YOLOv8 / YOLO11: `Conv(3, 16, 3, 2)`, `Conv(16, 32, 3, 2)`): the same output, `(B, embedding_size, ceil(H / 4),
ceil(W / 4))`, at about a third of the cost (BENCHMARKS.md "Angle range, dense encoder loss, stride 8 and a
light stem on HIT-UAV").

At inference each batch norm is folded into its convolution (`conv_norm_folding_sl_detr.py`).

This file ships with `trust_remote_code` checkpoints: it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_sl_detr import BACKBONE_STEMS
from .conv_norm_folding_sl_detr import conv_norm

__all__ = ["BACKBONE_STEMS", "SlDetrLightStem", "apply_backbone_stem"]


class SlDetrLightStem(nn.Module):
    """Two 3x3 stride-2 convolution + batch norm + ReLU blocks: `(B, C, H, W) -> (B, E, ceil(H/4), ceil(W/4))`."""

    def __init__(self, num_channels: int, embedding_size: int) -> None:
        super().__init__()
        hidden = max(embedding_size // 2, 1)
        self.num_channels = num_channels
        self.layers = nn.Sequential(
            nn.Conv2d(num_channels, hidden, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, embedding_size, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(embedding_size),
            nn.ReLU(inplace=True),
        )
        for module in self.layers:
            if isinstance(module, nn.Conv2d):  # ResNet's init for its convolutions
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.shape[1] != self.num_channels:
            raise ValueError(f"the stem takes {self.num_channels} channels, got pixel_values of shape "
                             f"{tuple(pixel_values.shape)}")
        conv1, norm1, act1, conv2, norm2, act2 = self.layers  # each norm folded into its convolution at inference
        return act2(conv_norm(act1(conv_norm(pixel_values, conv1, norm1)), conv2, norm2))


def apply_backbone_stem(conv_encoder: nn.Module, config) -> None:
    """Replace the ResNet stem of `conv_encoder` (transformers' `DeformableDetrConvEncoder` over its
    `ResNetBackbone`) by [`SlDetrLightStem`] when `config.backbone_stem == "light"`; `"resnet"` keeps it."""
    if config.backbone_stem == "resnet":
        return
    backbone = conv_encoder.model
    embedder = getattr(backbone, "embedder", None)
    if embedder is None or not hasattr(config.backbone_config, "embedding_size"):
        raise ValueError(f"backbone_stem={config.backbone_stem!r} needs transformers' ResNet backbone "
                         f"(backbone_config a ResNetConfig), got {type(backbone).__name__}")
    backbone.embedder = SlDetrLightStem(config.num_channels, config.backbone_config.embedding_size)
