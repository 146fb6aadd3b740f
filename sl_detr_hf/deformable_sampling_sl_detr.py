"""Multi-scale deformable sampling as one gather: bilinear corners and attention weights in one `embedding_bag`.

The core of Deformable DETR's attention samples every head's value map bilinearly at `L x P` points per query and
sums the samples with the attention weights. transformers' pure-PyTorch form (`MultiScaleDeformableAttention`,
used on the CPU and wherever its CUDA kernel is not loaded) runs one `grid_sample` per level into a
`(B * heads, C, Q, P)` tensor, stacks the levels and multiplies and sums: on a CPU most of its time is the
intermediate tensors, not the arithmetic.

Here the bilinear weights of the four corners of every sampling point are folded into the attention weight of
that point, so a query's output is a weighted sum of `L * P * 4` rows of the value table, which is what
`torch.nn.functional.embedding_bag(mode="sum", per_sample_weights=...)` computes in one fused kernel (forward and
backward, on CPU and CUDA). Same arithmetic as `grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)`: a point at normalized `(x, y)` on an `H x W` map sits at pixel `(x W - 1/2, y H - 1/2)`;
corners outside the map weigh 0. Outputs and gradients equal the grid_sample form to float rounding
(`tests/test_deformable_sampling.py`); measured in BENCHMARKS.md ("Deformable sampling as one gather").

Installed by `SlDetrModel` on every deformable attention module (encoder and decoder): the module has no
parameters, so checkpoints are unchanged. It is an inference path: where a gradient is needed (training) and while
a model is exported (`torch.onnx.export`, `torch.export`; ONNX has `GridSample`, while `embedding_bag` exports as a
loop) the grid_sample form runs instead. The function itself is differentiable (its gradients are tested), but
`embedding_bag`'s backward is slower than `grid_sample`'s on the CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)


def multi_scale_deformable_sampling(
    value: torch.Tensor,
    spatial_shapes_list: list[tuple[int, int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Attention-weighted bilinear samples of multi-level value maps.

    Args:
        value: `(B, S, heads, C)`, the levels' tokens concatenated (`S = sum(H_l * W_l)`, row-major per level).
        spatial_shapes_list: `L` pairs `(H_l, W_l)`.
        sampling_locations: `(B, Q, heads, L, P, 2)` normalized `(x, y)` in `[0, 1]` (outside samples zeros).
        attention_weights: `(B, Q, heads, L, P)`.

    Returns:
        `(B, Q, heads * C)`, in the promoted dtype of `value` and the locations (float32 under CPU autocast, as
        transformers' form, whose `grid_sample` autocast runs in float32).
    """
    batch, tokens, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    device = value.device
    dtype = torch.promote_types(value.dtype, sampling_locations.dtype)
    # positions in float32 at least (bf16 / fp16 cannot hold token indices: bf16 has 8 significant bits), float64
    # where the rows of the value table outgrow float32's exact integers (2^24)
    position_dtype = torch.promote_types(dtype, torch.float32)
    if batch * tokens * heads >= 1 << 24:
        position_dtype = torch.promote_types(position_dtype, torch.float64)
    # Every per-level constant is laid out whole over (heads, L, P): an operand broadcast over the innermost
    # dimensions would make each elementwise operation below loop over runs of P values (3-30x slower on a CPU).
    shapes = torch.tensor(spatial_shapes_list, device=device, dtype=position_dtype)  # (L, 2): H_l, W_l
    size = shapes.flip(1).t().reshape(2, 1, 1, 1, levels, 1).expand(2, 1, 1, heads, levels, points).contiguous()
    last = size - 1  # (2, 1, 1, heads, L, P): the last column / row of each level
    level_start = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    image_start = torch.arange(batch, device=device, dtype=position_dtype).view(batch, 1, 1, 1, 1) * tokens
    head = torch.arange(heads, device=device, dtype=position_dtype).view(1, 1, heads, 1, 1)
    # row of the (B * S * heads, C) value table read by corner (x, y): ((b S + start_l + y W_l + x) heads + head)
    row_base = ((image_start + level_start.view(1, 1, 1, levels, 1)) * heads + head).expand(
        batch, 1, heads, levels, points).contiguous()
    row_stride = size[0] * heads  # (1, 1, heads, L, P): one row of the level's map
    # x and y as the outer dimension, (2, B, Q, heads, L, P), contiguous; a NaN, infinite or huge location lies
    # outside (beyond [-1, 2] every corner is outside the map, so the clamp changes no result)
    xy = sampling_locations.to(position_dtype).movedim(-1, 0).contiguous().nan_to_num(-1.0).clamp(-1.0, 2.0)
    pixel = xy * size - 0.5  # grid_sample's align_corners=False: normalized x sits at pixel x W - 1/2
    lower = pixel.floor()
    frac = pixel - lower
    upper = lower + 1
    # each corner clamped into its map; a corner the clamp moved lies outside (padding_mode="zeros"): weight 0
    lower_in = torch.minimum(lower.clamp_min(0), last)
    upper_in = torch.minimum(upper.clamp_min(0), last)
    lower_weight = (1 - frac) * (1 - (lower - lower_in).abs()).clamp_min(0)
    upper_weight = frac * (1 - (upper - upper_in).abs()).clamp_min(0)
    x0, x1 = lower_in[0] * heads, upper_in[0] * heads
    y0, y1 = lower_in[1] * row_stride + row_base, upper_in[1] * row_stride + row_base
    weights = attention_weights.to(position_dtype)
    wx0, wx1 = lower_weight[0], upper_weight[0]
    wy0, wy1 = lower_weight[1] * weights, upper_weight[1] * weights
    # one bag of 4 L P rows per (b, q, head); int32 indices (embedding_bag takes them, and they convert faster)
    index_dtype = torch.int32 if batch * tokens * heads < 1 << 31 else torch.int64
    rows = torch.stack([y0 + x0, y0 + x1, y1 + x0, y1 + x1], 3).to(index_dtype)  # (B, Q, heads, 4, L, P)
    corner_weight = torch.stack([wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1], 3).to(dtype)
    output = F.embedding_bag(
        rows.view(-1, 4 * levels * points),
        value.to(dtype).reshape(batch * tokens * heads, channels),
        per_sample_weights=corner_weight.view(-1, 4 * levels * points),
        mode="sum",
    )
    return output.view(batch, queries, heads * channels)


class SlDetrMultiScaleDeformableSampling(MultiScaleDeformableAttention):
    """Drop-in for transformers' `MultiScaleDeformableAttention` (the same forward signature and result) that
    runs [`multi_scale_deformable_sampling`] where no gradient is needed; the parent's grid_sample form in
    training (`embedding_bag`'s backward sorts the indices: forward and backward of a training batch took 1.3-1.4x
    the grid_sample form's) and while a model is exported."""

    def forward(
        self,
        value: torch.Tensor,
        value_spatial_shapes: torch.Tensor,
        value_spatial_shapes_list: list[tuple[int, int]],
        level_start_index: torch.Tensor,
        sampling_locations: torch.Tensor,
        attention_weights: torch.Tensor,
        im2col_step: int,
    ) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and (
            value.requires_grad or sampling_locations.requires_grad or attention_weights.requires_grad
        )
        if needs_grad or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting():
            return super().forward(value, value_spatial_shapes, value_spatial_shapes_list, level_start_index,
                                   sampling_locations, attention_weights, im2col_step)
        return multi_scale_deformable_sampling(value, value_spatial_shapes_list, sampling_locations, attention_weights)


def _set_sampling(model: nn.Module, form: type[MultiScaleDeformableAttention]) -> nn.Module:
    for module in model.modules():
        if isinstance(module, DeformableDetrMultiscaleDeformableAttention):
            module.attn = form()
    return model


def use_gather_sampling(model: nn.Module) -> nn.Module:
    """Give every deformable attention module of `model` the gather form of the sampling (in place; no
    parameters change). Returns `model`."""
    return _set_sampling(model, SlDetrMultiScaleDeformableSampling)


def use_grid_sample_sampling(model: nn.Module) -> nn.Module:
    """Put transformers' grid_sample form back on every deformable attention module of `model` (in place; to
    compare the two forms, as `benchmarks/inference_speed.py --grid_sample` does). Returns `model`."""
    return _set_sampling(model, MultiScaleDeformableAttention)
