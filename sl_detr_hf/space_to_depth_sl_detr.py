"""Space-to-depth shortcuts for the ResNet's downsampling blocks (`config.backbone_downsample = "space_to_depth"`).

In a ResNet the first block of each stage after the first halves the resolution, and its shortcut is a 1x1
convolution with stride 2: it reads one pixel of every 2 x 2 and drops the other three. For an object of a few
pixels (HIT-UAV's people: 12-28 px at 640 px, one or two stride-16 cells) the shortcut then carries a quarter of
what the previous stage saw of it. SPD-Conv (Sunkara and Luo, "No More Strided Convolutions or Pooling", ECML
PKDD 2022) replaces strided downsampling by space-to-depth (`pixel_unshuffle`: each 2 x 2 block becomes 4
channels) followed by a convolution without stride. Here only the shortcut changes: `pixel_unshuffle(x, 2)` then
a 1x1 convolution from `4 * C_in` to `C_out` channels and the batch norm, so that the shortcut passes every pixel
of the block (ResNet-D's 2 x 2 average pool before the 1x1 convolution is the special case of equal weights).
The residual branch (3x3 stride-2 convolutions) is unchanged, and so are the output shapes: an odd side is padded
with zeros at the bottom / right to `ceil(H / 2)` rows, what the strided shortcut gives.

At inference the batch norm is folded into the convolution (`conv_norm_folding_sl_detr.py`).

This file ships with `trust_remote_code` checkpoints: it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.resnet.modeling_resnet import ResNetShortCut

from .configuration_sl_detr import BACKBONE_DOWNSAMPLES
from .conv_norm_folding_sl_detr import conv_norm

__all__ = ["BACKBONE_DOWNSAMPLES", "SlDetrSpaceToDepthShortCut", "apply_backbone_downsample"]


class SlDetrSpaceToDepthShortCut(nn.Module):
    """`pixel_unshuffle` by 2, 1x1 convolution, batch norm: `(B, C_in, H, W) -> (B, C_out, ceil(H/2), ceil(W/2))`.

    Its parameters keep the names of transformers' `ResNetShortCut` (`convolution`, `normalization`); the
    convolution's weight is `(C_out, 4 C_in, 1, 1)`, input channel `4 c + 2 i + j` being channel `c` at row
    offset `i` and column offset `j` of each 2 x 2 block (torch's `pixel_unshuffle` order).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(4 * in_channels, out_channels, kernel_size=1, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.convolution.weight, mode="fan_out", nonlinearity="relu")  # ResNet's init

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        height, width = hidden_states.shape[-2:]
        if height % 2 or width % 2:
            hidden_states = nn.functional.pad(hidden_states, (0, width % 2, 0, height % 2))
        return conv_norm(nn.functional.pixel_unshuffle(hidden_states, 2), self.convolution, self.normalization)


def apply_backbone_downsample(conv_encoder: nn.Module, config) -> None:
    """With `config.backbone_downsample == "space_to_depth"`, replace every stride-2 shortcut of the ResNet of
    `conv_encoder` (transformers' `DeformableDetrConvEncoder` over its `ResNetBackbone`) by a
    [`SlDetrSpaceToDepthShortCut`]; `"strided"` keeps them."""
    if config.backbone_downsample == "strided":
        return
    backbone = conv_encoder.model
    stages = getattr(getattr(backbone, "encoder", None), "stages", None)
    if stages is None or config.backbone_config is None or config.backbone_config.model_type != "resnet":
        raise ValueError(f"backbone_downsample={config.backbone_downsample!r} needs transformers' ResNet backbone "
                         f"(backbone_config a ResNetConfig), got {type(backbone).__name__}")
    for module in backbone.modules():
        shortcut = getattr(module, "shortcut", None)
        if isinstance(shortcut, ResNetShortCut) and shortcut.convolution.stride == (2, 2):
            module.shortcut = SlDetrSpaceToDepthShortCut(shortcut.convolution.in_channels,
                                                         shortcut.convolution.out_channels)
