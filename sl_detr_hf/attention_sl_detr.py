"""Rotated multi-scale deformable attention for the SL-DETR decoder (docs/architecture.md#rotated-deformable-sampling).

`SlDetrDeformableAttention` is transformers' `DeformableDetrMultiscaleDeformableAttention` (same constructor
arguments, parameter names, forward signature and results, so Deformable DETR checkpoints load unchanged) whose
softmax and encoder locations run over whole rows (`short_softmax`, `point_sampling_locations`: 3x and 2x faster
on a CPU); `SlDetrModel` gives it to every deformable attention (`use_sl_detr_attention`).
`SlDetrRotatedDeformableAttention`, its subclass, also accepts 5-d reference boxes
`(B, Q, n_levels, 5) = (cx, cy, w, h, theta)` and turns its box-relative sampling pattern by the box angle; 2-d and
4-d references sample as its parent does.

Sampling around a 5-d reference, with `o = sampling_offsets / n_points` (per head, level and point) and
`s = (w/2, h/2)`:

- `"rhino"` (default, RHINO's code): `centre + o * v` element-wise, `v = R(theta) @ s`.
- `"none"`: Deformable DETR's axis-aligned box sampling on `(cx, cy, w, h)`; theta is ignored.

With `theta = 0` both are bit-for-bit the parent's 4-d sampling. (A third form, turning the scaled offset itself,
`centre + R(theta) @ (o * s)`, trained clearly worse and was deleted: BENCHMARKS.md, "Removed switches".)

Units. `theta` is in radians in the image's pixel frame (docs/boxes.md#pixel-rotated-boxes-le90: positive theta
turns +x toward
+y), while `cx, w` are normalized by the width and `cy, h` by the height. A rotation is only a rotation in
pixel units, so (with `rotate_in_pixels=True`, the default) the vector to rotate is mapped to level-`l` feature
cells (x times `W_l`, y times `H_l`; `spatial_shapes[l] = (H_l, W_l)`), rotated, and mapped back. Level cells
are square in image pixels (one stride both ways), and the decoder's valid-ratio scaling of the references
makes a normalized coordinate at level `l` exactly `x_norm * valid_W_l / W_l`, so this is the pixel rotation
of the unpadded image. RHINO's code rotates the normalized vector directly (`R(theta) @ (w/2, h/2)` with
normalized `w, h`), which equals the pixel rotation only when the (padded) feature map is square, as in its
1024 x 1024 DOTA patches; on a non-square map it shears the pattern (a 100 x 20 px box at 90 degrees in a
1000 x 500 image samples a 40 x 50 px footprint instead of 20 x 100). `rotate_in_pixels=False` reproduces that
literal form (`config.numerics="rhino"`, so that RHINO checkpoints compute what they computed).

Usage (the decoder's cross-attention, `DeformableDetrDecoderLayer.encoder_attn`)::

    attn = SlDetrRotatedDeformableAttention(config, num_heads=config.decoder_attention_heads,
                                            n_points=config.decoder_n_points, sampling=config.rotated_sampling)
    # or swap an existing module in place, sharing (not copying) its parameters:
    layer.encoder_attn = SlDetrRotatedDeformableAttention.from_deformable(layer.encoder_attn, "rhino")

The caller builds the 5-d reference like the 4-d one, scaling `cx, cy, w, h` by the valid ratios and leaving
theta as is: `reference_points[:, :, None] * torch.cat([valid_ratios, valid_ratios, ones], -1)[:, None]` with
`ones = valid_ratios[..., :1] * 0 + 1`. RHINO stores angles in `[0, pi)` (`sigmoid * pi`) and feeds that to its
attention; this project's le90 angle in `[-pi/2, pi/2)` differs by pi for half the boxes, which flips `v` in
`"rhino"` mode (`R(theta + pi) = -R(theta)`): map the angle into `[0, pi)` before the attention to reuse
RHINO-trained offsets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrConfig,
    DeformableDetrMultiscaleDeformableAttention,
)

SamplingMode = Literal["rhino", "none"]
SAMPLING_MODES: tuple[str, ...] = ("rhino", "none")


def _rotate(vector: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, aspect: torch.Tensor) -> torch.Tensor:
    """Rotate normalized `(..., 2)` vectors by theta in a frame whose x unit is `aspect` times its y unit.

    `aspect = W_l / H_l` (pixel rotation of a normalized vector) or 1 (rotation of the normalized vector
    itself). At theta = 0 (`cos = 1`, `sin = 0`) the result equals `vector` exactly.
    """
    x, y = vector[..., 0], vector[..., 1]
    return torch.stack([cos * x - sin * y / aspect, sin * x * aspect + cos * y], dim=-1)


def rotated_sampling_locations(
    reference_points: torch.Tensor,
    sampling_offsets: torch.Tensor,
    n_points: int,
    spatial_shapes: torch.Tensor,
    sampling: SamplingMode = "rhino",
    rotate_in_pixels: bool = True,
) -> torch.Tensor:
    """Sampling locations around 5-d reference boxes.

    Args:
        reference_points: `(B, Q, L, 5)` normalized `(cx, cy, w, h)` (valid-ratio scaled) and theta in radians.
        sampling_offsets: `(B, Q, heads, L, P, 2)` raw offsets from the `sampling_offsets` projection.
        n_points: `P`, the number of sampling points per head and level.
        spatial_shapes: `(L, 2)` `(H_l, W_l)` of each feature level.
        sampling: `"rhino"` or `"none"` (see the module docstring).
        rotate_in_pixels: rotate in level-cell (pixel) units (default) or in normalized units (RHINO's code).

    Returns:
        `(B, Q, heads, L, P, 2)` normalized `(x, y)` sampling locations.
    """
    ref = reference_points[:, :, None, :, None, :]  # (B, Q, 1, L, 1, 5)
    centre, size = ref[..., :2], ref[..., 2:4]
    if sampling == "none":
        return centre + sampling_offsets / n_points * size * 0.5
    theta = ref[..., 4]  # (B, Q, 1, L, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    if rotate_in_pixels:
        shapes = spatial_shapes.to(reference_points.dtype)
        aspect = (shapes[:, 1] / shapes[:, 0])[None, None, None, :, None]  # (1, 1, 1, L, 1): W_l / H_l
    else:
        aspect = torch.ones_like(theta)
    if sampling != "rhino":
        raise ValueError(f"`sampling` must be one of {SAMPLING_MODES}, got {sampling!r}")
    half_size = _rotate(size * 0.5, cos, sin, aspect)  # v = R(theta) @ (w/2, h/2)
    return centre + sampling_offsets / n_points * half_size


def short_softmax(logits: torch.Tensor) -> torch.Tensor:
    """`softmax(logits, -1)` for a short last dimension (the `L * P` samples of a deformable attention head).

    The same values as `F.softmax(logits, -1)` (to float rounding); computed over the first dimension of the
    transposed `(n, rows)` table, which a CPU vectorizes along the rows: over 8 samples per row it is 3x faster
    forward and backward (BENCHMARKS.md, "Inference on one core: whole rows").
    """
    n = logits.shape[-1]
    return F.softmax(logits.reshape(-1, n).t(), 0).t().reshape(logits.shape)


def point_sampling_locations(reference_points: torch.Tensor, sampling_offsets: torch.Tensor,
                             spatial_shapes_list: list[tuple[int, int]]) -> torch.Tensor:
    """Deformable DETR's sampling locations around 2-d reference points (the encoder's): offsets in level cells.

    Args:
        reference_points: `(B, Q, L, 2)` normalized `(x, y)`.
        sampling_offsets: `(B, Q, heads, L, P, 2)`.
        spatial_shapes_list: `L` pairs `(H_l, W_l)`.

    Returns:
        `(B, Q, heads, L, P, 2)`: `reference + offset / (W_l, H_l)`, bit for bit the parent's; the divisor is laid out
        whole over `(heads, L, P, 2)` so that the division runs over contiguous rows.
    """
    _, _, heads, levels, points, _ = sampling_offsets.shape
    cells = torch.tensor([(w, h) for h, w in spatial_shapes_list], dtype=sampling_offsets.dtype,
                         device=sampling_offsets.device)
    cells = cells.view(1, levels, 1, 2).expand(heads, levels, points, 2).contiguous()
    return sampling_offsets / cells + reference_points[:, :, None, :, None, :]


class SlDetrDeformableAttention(DeformableDetrMultiscaleDeformableAttention):
    """transformers' multi-scale deformable attention (same parameters, forward signature and results, to float
    rounding) with the short softmax of its attention weights and whole-row sampling locations; the subclass below
    adds 5-d (rotated) reference boxes. `SlDetrModel` gives every deformable attention of transformers' class
    this class (no parameter changes), as the gather of `deformable_sampling_sl_detr.py` its sampling."""

    def sampling_locations(self, reference_points: torch.Tensor, sampling_offsets: torch.Tensor,
                           spatial_shapes: torch.Tensor, spatial_shapes_list: list[tuple[int, int]]) -> torch.Tensor:
        """`(B, Q, heads, L, P, 2)` normalized locations around `(B, Q, L, 2 | 4)` references (the parent's)."""
        width = reference_points.shape[-1]
        if width == 2:
            return point_sampling_locations(reference_points, sampling_offsets, spatial_shapes_list)
        if width == 4:
            ref = reference_points[:, :, None, :, None, :]
            return ref[..., :2] + sampling_offsets / self.n_points * ref[..., 2:] * 0.5
        raise ValueError(f"Last dim of reference_points must be 2 or 4, but got {width}")

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        position_embeddings: torch.Tensor | None = None,
        reference_points=None,
        spatial_shapes=None,
        spatial_shapes_list=None,
        level_start_index=None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # the parent's projections, in its order
        if position_embeddings is not None:
            hidden_states = hidden_states + position_embeddings
        batch_size, num_queries, _ = hidden_states.shape
        _, sequence_length, _ = encoder_hidden_states.shape
        if sum(height * width for height, width in spatial_shapes_list) != sequence_length:
            raise ValueError(f"{type(self).__name__}: spatial_shapes_list does not match the encoder sequence length "
                             f"{sequence_length}")
        value = self.value_proj(encoder_hidden_states)
        if attention_mask is not None:
            value = value.masked_fill(~attention_mask[..., None], float(0))
        value = value.view(batch_size, sequence_length, self.n_heads, self.d_model // self.n_heads)
        sampling_offsets = self.sampling_offsets(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels, self.n_points, 2
        )
        attention_weights = short_softmax(self.attention_weights(hidden_states).view(
            batch_size, num_queries, self.n_heads, self.n_levels * self.n_points
        )).view(batch_size, num_queries, self.n_heads, self.n_levels, self.n_points)
        sampling_locations = self.sampling_locations(reference_points, sampling_offsets, spatial_shapes,
                                                     spatial_shapes_list)
        output = self.attn(
            value, spatial_shapes, spatial_shapes_list, level_start_index, sampling_locations, attention_weights,
            self.im2col_step,
        )
        return self.output_proj(output), attention_weights


def use_sl_detr_attention(model: nn.Module) -> nn.Module:
    """Give every deformable attention of transformers' own class in `model` [`SlDetrDeformableAttention`]'s
    forward (in place: the class of the module changes, as `torch.nn.utils.parametrize` does; its parameters,
    buffers and state-dict keys do not). Returns `model`."""
    for module in model.modules():
        if type(module) is DeformableDetrMultiscaleDeformableAttention:
            module.__class__ = SlDetrDeformableAttention
    return model


class SlDetrRotatedDeformableAttention(SlDetrDeformableAttention):
    """Multi-scale deformable attention whose box-relative sampling follows the reference box's angle.

    Args:
        config: the model config (`d_model`, `num_feature_levels`, `disable_custom_kernels`).
        num_heads: attention heads.
        n_points: sampling points per head and level.
        sampling: `"rhino"` or `"none"` (config field `rotated_sampling`).
        rotate_in_pixels: rotate in pixel units (default; see the module docstring) or in normalized units.

    Forward: as the parent; `reference_points` may be `(B, Q, L, 2)`, `(B, Q, L, 4)` (parent's behaviour) or
    `(B, Q, L, 5)`. Returns `(output (B, Q, d_model), attention_weights (B, Q, heads, L, P))`.
    """

    def __init__(
        self,
        config: DeformableDetrConfig,
        num_heads: int,
        n_points: int,
        sampling: SamplingMode = "rhino",
        rotate_in_pixels: bool = True,
    ):
        super().__init__(config, num_heads, n_points)
        self._set_sampling(sampling, rotate_in_pixels)

    def _set_sampling(self, sampling: str, rotate_in_pixels: bool) -> None:
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"`sampling` must be one of {SAMPLING_MODES}, got {sampling!r}")
        self.sampling = sampling
        self.rotate_in_pixels = rotate_in_pixels

    @classmethod
    def from_deformable(
        cls,
        module: DeformableDetrMultiscaleDeformableAttention,
        sampling: SamplingMode = "rhino",
        rotate_in_pixels: bool = True,
    ) -> SlDetrRotatedDeformableAttention:
        """A rotated attention sharing `module`'s parameters and settings (no copy, no re-initialization)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for key, value in vars(module).items():
            if not key.startswith("_"):  # d_model, n_heads, n_levels, n_points, im2col_step, training, ...
                setattr(new, key, value)
        for name, child in module.named_children():
            new.add_module(name, child)
        for name, parameter in module.named_parameters(recurse=False):
            new.register_parameter(name, parameter)
        for name, buffer in module.named_buffers(recurse=False):
            new.register_buffer(name, buffer)
        new._set_sampling(sampling, rotate_in_pixels)
        return new

    def extra_repr(self) -> str:
        return f"sampling={self.sampling!r}, rotate_in_pixels={self.rotate_in_pixels}"

    def sampling_locations(self, reference_points: torch.Tensor, sampling_offsets: torch.Tensor,
                           spatial_shapes: torch.Tensor, spatial_shapes_list: list[tuple[int, int]]) -> torch.Tensor:
        """Around 5-d references, [`rotated_sampling_locations`] (`"none"` drops theta); 2-d and 4-d: the parent's."""
        width = reference_points.shape[-1]
        if width not in (2, 4, 5):
            raise ValueError(f"Last dim of reference_points must be 2, 4 or 5 (cx, cy, w, h, theta), got {width}")
        if width != 5 or self.sampling == "none":
            return super().sampling_locations(reference_points[..., :4], sampling_offsets, spatial_shapes,
                                              spatial_shapes_list)
        return rotated_sampling_locations(reference_points, sampling_offsets, self.n_points, spatial_shapes,
                                          self.sampling, self.rotate_in_pixels)
