"""Space-to-depth shortcuts for the ResNet's downsampling blocks (`config.backbone_downsample = "space_to_depth"`).

In a ResNet the first block of each stage after the first halves the resolution, and its shortcut is a 1x1
convolution with stride 2: it reads one pixel of every 2 x 2 and drops the other three. For an object of a few
pixels (HIT-UAV's people: 12-28 px at 640 px, one or two stride-16 cells) the shortcut then carries a quarter of
what the previous stage saw of it. SPD-Conv (Sunkara and Luo, "No More Strided Convolutions or Pooling", ECML
PKDD 2022) replaces strided downsampling by space-to-depth (each 2 x 2 block becomes 4 channels) followed by a
convolution without stride. Here only the shortcut changes, to space-to-depth then a 1x1 convolution from `4 * C_in`
to `C_out` channels, then the batch norm: computed as one 2 x 2 convolution with stride 2 (the same function, its
weight `(C_out, C_in, 2, 2)` holding the 1x1 convolution's `4 * C_in` inputs), so the shortcut passes every pixel of
the block (ResNet-D's 2 x 2 average pool before the 1x1 convolution is the special case of equal weights). The
residual branch (3x3 stride-2 convolutions) is unchanged, and so are the output shapes: the input gets one row and
one column of zeros at the bottom / right, so that an odd side gives `ceil(H / 2)` rows, what the strided shortcut
gives (on an even side the padding is never read), with no branch on the input's shape (ONNX export).

At inference the batch norm is folded into the convolution (`conv_norm_folding_sl_detr.py`).

This file ships with `trust_remote_code` checkpoints: it imports only torch, transformers and its sibling files.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.resnet.modeling_resnet import ResNetShortCut

from .backbone_sl_detr import resnet_kind
from .configuration_sl_detr import BACKBONE_DOWNSAMPLES
from .conv_norm_folding_sl_detr import conv_norm

__all__ = ["BACKBONE_DOWNSAMPLES", "SlDetrSpaceToDepthShortCut", "apply_backbone_downsample"]


class SlDetrSpaceToDepthShortCut(nn.Module):
    """2 x 2 convolution with stride 2 (space-to-depth, then 1x1) and batch norm: `(B, C_in, H, W) -> (B, C_out,
    ceil(H/2), ceil(W/2))`.

    Its parameters keep the names of transformers' `ResNetShortCut` (`convolution`, `normalization`); weight
    `(C_out, C_in, 2, 2)`: `weight[o, c, i, j]` reads channel `c` at row offset `i` and column offset `j` of each
    block.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size=2, stride=2, bias=False)
        self.normalization = nn.BatchNorm2d(out_channels)
        # ResNet's init of the 1x1 convolution it stands for (kaiming normal, fan_out = C_out; a 2 x 2 kernel would
        # get half that spread); kept by the model's `post_init`
        nn.init.normal_(self.convolution.weight, std=math.sqrt(2.0 / out_channels))
        self.convolution.weight._is_hf_initialized = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        padded = nn.functional.pad(hidden_states, (0, 1, 0, 1))
        return conv_norm(padded, self.convolution, self.normalization)


def apply_backbone_downsample(conv_encoder: nn.Module, config) -> None:
    """With `config.backbone_downsample == "space_to_depth"`, replace every stride-2 shortcut of the ResNet of
    `conv_encoder` (transformers' `DeformableDetrConvEncoder` over its `ResNetBackbone`) by a
    [`SlDetrSpaceToDepthShortCut`]; `"strided"` keeps them."""
    if config.backbone_downsample == "strided":
        return
    backbone = conv_encoder.model
    if resnet_kind(config) != "transformers":
        raise ValueError(f"backbone_downsample={config.backbone_downsample!r} needs transformers' ResNet backbone "
                         f"(backbone_config a ResNetConfig), got {type(backbone).__name__}")
    for module in list(backbone.modules()):  # listed first: the loop replaces children
        shortcut = getattr(module, "shortcut", None)
        if isinstance(shortcut, ResNetShortCut) and shortcut.convolution.stride == (2, 2):
            module.shortcut = SlDetrSpaceToDepthShortCut(shortcut.convolution.in_channels,
                                                         shortcut.convolution.out_channels)
