"""The encoder's sine position encoding with a configurable temperature and offset (docs/architecture.md#encoder).

transformers' `DeformableDetrSinePositionEmbedding` normalizes the cumulative position with an offset of -0.5 and
uses a temperature of 10000; mmdetection's `SinePositionalEncoding` (DINO, RHINO) takes both as arguments and
RHINO's / DINO's configs set `offset=0.0, temperature=20`. [`SlDetrSinePositionEmbedding`] is the parent with both
as attributes (`config.position_embedding_offset`, `config.position_embedding_temperature`); with -0.5 and 10000 it
computes the parent's numbers operation for operation.

Ships with `trust_remote_code` checkpoints: imports only torch and transformers.
"""

from __future__ import annotations

import torch
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrSinePositionEmbedding

__all__ = ["SlDetrSinePositionEmbedding", "sine_position_embedding"]


def sine_position_embedding(
    mask: torch.Tensor | None,
    shape: torch.Size,
    dtype: torch.dtype,
    device: torch.device | str,
    num_position_features: int,
    temperature: float = 10000.0,
    offset: float = -0.5,
    scale: float = 2 * torch.pi,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Normalized 2-d sine encoding of a feature map: `(B, 2 * num_position_features, H, W)`, `y` block first.

    Args:
        mask (`(B, H, W)`, 1 = real pixel, *optional*): `None` means no padding.
        shape: `(B, C, H, W)` of the feature map.
        num_position_features: features per axis (`d_model // 2`).
        temperature, offset: `pos = (cumsum + offset) / (total + eps) * scale`, divided by
            `temperature ** (2 floor(i / 2) / num_position_features)`, sine on even and cosine on odd features.
    """
    batch_size, _, height, width = shape
    if mask is None:
        size = (batch_size, height, width)
        y_embed = torch.arange(1, height + 1, dtype=dtype, device=device)[None, :, None].expand(size)
        x_embed = torch.arange(1, width + 1, dtype=dtype, device=device)[None, None, :].expand(size)
    else:
        embed_mask = mask.to(dtype)
        y_embed, x_embed = embed_mask.cumsum(1), embed_mask.cumsum(2)
    y_embed = (y_embed + offset) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed + offset) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_position_features, dtype=torch.int64, device=device).to(dtype)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_position_features)
    pos_x = x_embed[:, :, :, None] / dim_t
    pos_y = y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class SlDetrSinePositionEmbedding(DeformableDetrSinePositionEmbedding):
    """`DeformableDetrSinePositionEmbedding(normalize=True)` with a temperature and an offset of choice.

    Forward as the parent: `(shape, device, dtype, mask)` -> `(B, d_model, H, W)`.
    """

    def __init__(self, num_position_features: int, temperature: float = 10000.0, offset: float = -0.5):
        super().__init__(num_position_features, temperature=temperature, normalize=True)
        self.offset = offset

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, offset={self.offset}"

    def forward(
        self, shape: torch.Size, device: torch.device | str, dtype: torch.dtype, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.offset == -0.5 and self.temperature == 10000:  # the parent's (cached) computation
            return super().forward(shape, device, dtype, mask)
        return sine_position_embedding(
            mask, shape, dtype, device, self.num_position_features, self.temperature, self.offset, self.scale
        )
