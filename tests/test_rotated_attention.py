"""Tests of the rotated deformable attention (sl_detr_hf/attention_sl_detr.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import DeformableDetrConfig
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrMultiscaleDeformableAttention

from sl_detr_hf.attention_sl_detr import (
    SAMPLING_MODES,
    SlDetrDeformableAttention,
    SlDetrRotatedDeformableAttention,
    short_softmax,
    use_sl_detr_attention,
)

SHAPES = [(6, 10), (3, 5)]  # (H_l, W_l): non-square levels


def _config(d_model: int = 16, levels: int = 2) -> DeformableDetrConfig:
    return DeformableDetrConfig(d_model=d_model, num_feature_levels=levels, use_pretrained_backbone=False)


def _parent(seed: int = 0, n_points: int = 3) -> DeformableDetrMultiscaleDeformableAttention:
    """A parent attention with random (non-zero) weights everywhere."""
    torch.manual_seed(seed)
    module = DeformableDetrMultiscaleDeformableAttention(_config(), num_heads=2, n_points=n_points)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0.0, 0.5)
    return module


def _inputs(batch: int = 2, queries: int = 5, shapes=SHAPES, d_model: int = 16, seed: int = 1) -> dict:
    """Forward keyword arguments (without reference points) for random encoder states over `shapes`."""
    generator = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = [h * w for h, w in shapes]
    mask = torch.ones(batch, sum(sizes), dtype=torch.bool)
    mask[-1, :3] = False  # some padding in the last image
    return {
        "hidden_states": torch.randn(batch, queries, d_model, generator=generator),
        "attention_mask": mask,
        "encoder_hidden_states": torch.randn(batch, sum(sizes), d_model, generator=generator),
        "position_embeddings": torch.randn(batch, queries, d_model, generator=generator),
        "spatial_shapes": spatial_shapes,
        "spatial_shapes_list": list(shapes),
        "level_start_index": torch.tensor([0, *torch.tensor(sizes).cumsum(0)[:-1].tolist()]),
    }


def _boxes(batch: int = 2, queries: int = 5, levels: int = 2, seed: int = 2) -> torch.Tensor:
    """Random normalized `(cx, cy, w, h)` references `(B, Q, L, 4)`."""
    generator = torch.Generator().manual_seed(seed)
    centre = torch.rand(batch, queries, levels, 2, generator=generator) * 0.6 + 0.2
    size = torch.rand(batch, queries, levels, 2, generator=generator) * 0.3 + 0.05
    return torch.cat([centre, size], -1)


class _Recorder(nn.Module):
    """Stands in for the core sampling kernel: records the sampling locations, returns zeros."""

    def forward(self, value, spatial_shapes, spatial_shapes_list, level_start_index, locations, weights, step):
        self.locations = locations
        return value.new_zeros(value.shape[0], locations.shape[1], value.shape[2] * value.shape[3])


def _locations(sampling: str, reference: torch.Tensor, offsets: tuple[float, float], shapes, n_points: int = 2,
               rotate_in_pixels: bool = True) -> torch.Tensor:
    """Sampling locations `(B, Q, heads, L, P, 2)` of a 1-head module whose offsets are all `offsets`."""
    config = _config(d_model=4, levels=len(shapes))
    module = SlDetrRotatedDeformableAttention(config, num_heads=1, n_points=n_points, sampling=sampling,
                                              rotate_in_pixels=rotate_in_pixels)
    with torch.no_grad():
        module.sampling_offsets.weight.zero_()
        module.sampling_offsets.bias.copy_(torch.tensor(offsets).repeat(len(shapes) * n_points))
    module.attn = _Recorder()
    inputs = _inputs(batch=reference.shape[0], queries=reference.shape[1], shapes=shapes, d_model=4)
    module(**inputs, reference_points=reference)
    return module.attn.locations


@pytest.mark.parametrize("sampling", SAMPLING_MODES)
def test_theta_zero_equals_parent_exactly(sampling):
    parent = use_sl_detr_attention(_parent())  # the model's axis-aligned attention (SlDetrDeformableAttention)
    assert type(parent) is SlDetrDeformableAttention
    rotated = SlDetrRotatedDeformableAttention(_config(), num_heads=2, n_points=3, sampling=sampling)
    rotated.load_state_dict(parent.state_dict())  # same parameter names: Deformable DETR weights load strictly
    inputs, boxes = _inputs(), _boxes()
    expected, expected_weights = parent(**inputs, reference_points=boxes)
    reference = torch.cat([boxes, torch.zeros_like(boxes[..., :1])], -1)
    output, weights = rotated(**inputs, reference_points=reference)
    assert torch.equal(output, expected)
    assert torch.equal(weights, expected_weights)
    shared, _ = SlDetrRotatedDeformableAttention.from_deformable(parent, sampling)(**inputs, reference_points=reference)
    assert torch.equal(shared, expected)


@pytest.mark.parametrize("dims", [2, 4])
def test_2d_and_4d_references_unchanged(dims):
    parent = use_sl_detr_attention(_parent())
    inputs, boxes = _inputs(), _boxes()[..., :dims]
    expected, _ = parent(**inputs, reference_points=boxes)
    for sampling in SAMPLING_MODES:
        output, _ = SlDetrRotatedDeformableAttention.from_deformable(parent, sampling)(**inputs, reference_points=boxes)
        assert torch.equal(output, expected)


def test_from_deformable_shares_parameters_and_settings():
    parent = _parent()
    rotated = SlDetrRotatedDeformableAttention.from_deformable(parent, "rhino")
    assert rotated.sampling_offsets.weight is parent.sampling_offsets.weight
    assert list(rotated.state_dict()) == list(parent.state_dict())
    assert (rotated.n_heads, rotated.n_levels, rotated.n_points, rotated.d_model) == (2, 2, 3, 16)
    for deleted in ("rotated", "geometric"):  # "geometric" trained worse and was deleted (BENCHMARKS.md)
        with pytest.raises(ValueError, match="sampling"):
            SlDetrRotatedDeformableAttention.from_deformable(parent, deleted)


def test_rotated_locations_hand_computed_quarter_turn():
    # One level of H=8, W=16 cells. Box centre (0.5, 0.5), w = 0.25 (4 cells), h = 0.25 (2 cells), theta = pi/2.
    # Offsets (2, 2) with 2 points: o = (1, 1). Half size in cells s = (2, 1).
    reference = torch.tensor([0.5, 0.5, 0.25, 0.25, math.pi / 2]).view(1, 1, 1, 5)
    shapes = [(8, 16)]
    # rhino: v = R(90) (2, 1) = (-1, 2) cells = (-1/16, 2/8); location = c + o * v.
    rhino = _locations("rhino", reference, (2.0, 2.0), shapes)
    torch.testing.assert_close(rhino[0, 0, 0, 0, 0], torch.tensor([0.5 - 1 / 16, 0.5 + 0.25]), rtol=0, atol=1e-7)
    # o = (1, 0): (1, 0) * (-1, 2) = (-1, 0) cells.
    rhino = _locations("rhino", reference, (2.0, 0.0), shapes)
    torch.testing.assert_close(rhino[0, 0, 0, 0, 0], torch.tensor([0.5 - 1 / 16, 0.5]), rtol=0, atol=1e-7)
    # RHINO's literal code rotates the normalized vector: v = R(90) (0.125, 0.125) = (-0.125, 0.125).
    literal = _locations("rhino", reference, (2.0, 2.0), shapes, rotate_in_pixels=False)
    torch.testing.assert_close(literal[0, 0, 0, 0, 0], torch.tensor([0.375, 0.625]), rtol=0, atol=1e-7)
    # "none" ignores theta: c + o * (w/2, h/2) = (0.5 + 0.125, 0.5 + 0.125).
    none = _locations("none", reference, (2.0, 2.0), shapes)
    torch.testing.assert_close(none[0, 0, 0, 0, 0], torch.tensor([0.625, 0.625]), rtol=0, atol=1e-7)


def test_rotated_locations_hand_computed_pi_over_6():
    # Level H=10, W=20 cells; box 6 x 2 cells (w = 0.3, h = 0.2) at (0.4, 0.6), theta = pi/6; o = (0.5, -1).
    c, s = math.sqrt(3) / 2, 0.5
    reference = torch.tensor([0.4, 0.6, 0.3, 0.2, math.pi / 6]).view(1, 1, 1, 5)
    shapes = [(10, 20)]
    offsets = (1.0, -2.0)  # 2 points: o = offsets / 2
    # rhino: v = R (3, 1) cells = (3c - 1s, 3s + 1c); o * v in cells.
    v = (3 * c - s, 3 * s + c)
    rhino_cells = (0.5 * v[0], -1.0 * v[1])
    expected = torch.tensor([0.4 + rhino_cells[0] / 20, 0.6 + rhino_cells[1] / 10])
    torch.testing.assert_close(_locations("rhino", reference, offsets, shapes)[0, 0, 0, 0, 1], expected,
                               rtol=0, atol=1e-6)


def test_rotation_is_per_level_and_square_levels_match_rhino_literal():
    # Two levels with different aspect ratios: each rotates in its own cells.
    reference = torch.tensor([0.5, 0.5, 0.2, 0.1, 0.7]).view(1, 1, 1, 5).expand(1, 1, 2, 5)
    shapes = [(4, 4), (4, 8)]
    pixel = _locations("rhino", reference, (1.0, 1.5), shapes)
    literal = _locations("rhino", reference, (1.0, 1.5), shapes, rotate_in_pixels=False)
    torch.testing.assert_close(pixel[..., 0, :, :], literal[..., 0, :, :], rtol=0, atol=1e-7)  # square level
    assert (pixel[..., 1, :, :] - literal[..., 1, :, :]).abs().max() > 1e-2  # non-square level


def test_sampled_values_reveal_rotated_location():
    # End to end through the real kernel: value channels are x / y ramps over the cell centres, so bilinear
    # sampling returns the location itself; identity projections and equal point weights pass it through.
    height, width, n_points = 8, 16, 2
    config = _config(d_model=4, levels=1)
    for sampling, expected in [("none", (0.5 + 1 / 8, 0.5)), ("rhino", (0.5 - 1 / 16, 0.5))]:
        module = SlDetrRotatedDeformableAttention(config, num_heads=1, n_points=n_points, sampling=sampling)
        with torch.no_grad():
            for linear in (module.value_proj, module.output_proj):
                linear.weight.copy_(torch.eye(4))
                linear.bias.zero_()
            module.attention_weights.weight.zero_()
            module.attention_weights.bias.zero_()
            module.sampling_offsets.weight.zero_()
            module.sampling_offsets.bias.copy_(torch.tensor([2.0, 0.0, 2.0, 0.0]))  # o = (1, 0) for both points
        ys, xs = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                                indexing="ij")
        memory = torch.stack([xs, ys, torch.zeros_like(xs), torch.zeros_like(xs)], -1).view(1, height * width, 4)
        reference = torch.tensor([0.5, 0.5, 0.25, 0.25, math.pi / 2]).view(1, 1, 1, 5)
        output, _ = module(hidden_states=torch.zeros(1, 1, 4), encoder_hidden_states=memory,
                           reference_points=reference, spatial_shapes=torch.tensor([[height, width]]),
                           spatial_shapes_list=[(height, width)], level_start_index=torch.tensor([0]))
        torch.testing.assert_close(output[0, 0, :2], torch.tensor(expected), rtol=0, atol=1e-6)


def test_rhino_and_none_differ_for_rotated_non_square_box():
    parent = use_sl_detr_attention(_parent())
    inputs, boxes = _inputs(), _boxes()
    reference = torch.cat([boxes, torch.full_like(boxes[..., :1], 0.6)], -1)
    rhino, _ = SlDetrRotatedDeformableAttention.from_deformable(parent, "rhino")(**inputs, reference_points=reference)
    none, _ = SlDetrRotatedDeformableAttention.from_deformable(parent, "none")(**inputs, reference_points=reference)
    expected_none, _ = parent(**inputs, reference_points=boxes)
    assert torch.equal(none, expected_none)
    assert (rhino - none).abs().max() > 1e-3


def test_gradient_flows_to_theta():
    module = SlDetrRotatedDeformableAttention.from_deformable(_parent(), "rhino")
    inputs, boxes = _inputs(), _boxes()
    theta = torch.full_like(boxes[..., :1], 0.4, requires_grad=True)
    output, _ = module(**inputs, reference_points=torch.cat([boxes, theta], -1))
    output.square().sum().backward()
    assert torch.isfinite(theta.grad).all()
    assert theta.grad.abs().min() > 0


class _Exportable(nn.Module):
    """A rotated attention with every tensor input positional (the spatial shapes list is static)."""

    def __init__(self):
        super().__init__()
        self.attention = SlDetrRotatedDeformableAttention.from_deformable(_parent(), "rhino")

    def forward(self, hidden_states, attention_mask, encoder_hidden_states, position_embeddings, reference_points,
                spatial_shapes, level_start_index):
        return self.attention(hidden_states, attention_mask, encoder_hidden_states, None, position_embeddings,
                              reference_points, spatial_shapes, SHAPES, level_start_index)[0]


def _export_args(theta: float) -> tuple:
    inputs, boxes = _inputs(), _boxes()
    reference = torch.cat([boxes, torch.full_like(boxes[..., :1], theta)], -1)
    return (inputs["hidden_states"], inputs["attention_mask"], inputs["encoder_hidden_states"],
            inputs["position_embeddings"], reference, inputs["spatial_shapes"], inputs["level_start_index"])


def test_export_keeps_theta_dynamic():
    # No Python control flow on tensor values: a graph exported at one angle gives the eager result at another.
    eager = _Exportable().eval()
    exported = torch.export.export(eager, _export_args(0.3)).module()
    torch.testing.assert_close(exported(*_export_args(1.1)), eager(*_export_args(1.1)))
    assert not torch.allclose(exported(*_export_args(1.1)), exported(*_export_args(0.3)))


def test_onnx_export_matches_eager(tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    eager = _Exportable().eval()
    path = tmp_path / "rotated_attention.onnx"
    torch.onnx.export(eager, _export_args(0.3), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path))
    names = [node.name for node in session.get_inputs()]
    assert names == ["hidden_states", "attention_mask", "encoder_hidden_states", "position_embeddings",
                     "reference_points", "spatial_shapes", "level_start_index"]
    args = _export_args(1.1)
    (output,) = session.run(None, {name: value.numpy() for name, value in zip(names, args)})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), eager(*args), rtol=1e-4, atol=1e-4)


def test_bad_reference_width_raises():
    module = SlDetrRotatedDeformableAttention.from_deformable(_parent(), "rhino")
    with pytest.raises(ValueError, match="2, 4 or 5"):
        module(**_inputs(), reference_points=torch.rand(2, 5, 2, 3))


def test_short_softmax_equals_softmax():
    logits = torch.randn(3, 7, 4, 8, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(short_softmax(logits), torch.softmax(logits, -1), rtol=1e-12, atol=1e-15)
    grad = torch.randn(3, 7, 4, 8, dtype=torch.float64)
    ours = torch.autograd.grad(short_softmax(logits), logits, grad)[0]
    theirs = torch.autograd.grad(torch.softmax(logits, -1), logits, grad)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-15)
    assert short_softmax(torch.zeros(0, 8)).shape == (0, 8)


@pytest.mark.parametrize("dims", [2, 4])
@pytest.mark.parametrize("train", [False, True])
def test_sl_detr_attention_equals_transformers(dims, train):
    # SlDetrDeformableAttention (every axis-aligned deformable attention of the model) against transformers' class:
    # the same outputs, attention weights and gradients to float rounding, padding included
    theirs = _parent(n_points=4).train(train)
    ours = use_sl_detr_attention(_parent(n_points=4)).train(train)
    assert type(ours) is SlDetrDeformableAttention and list(ours.state_dict()) == list(theirs.state_dict())
    inputs, boxes = _inputs(), _boxes()[..., :dims]
    results = []
    for module in (ours, theirs):
        output, weights = module(**inputs, reference_points=boxes)
        output.square().sum().backward()
        results.append((output, weights, module.sampling_offsets.weight.grad, module.attention_weights.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if dims == 2:  # the locations themselves: bit for bit
        recorded = []
        for module in (ours, theirs):
            module.attn = _Recorder()
            module(**inputs, reference_points=boxes)
            recorded.append(module.attn.locations)
        assert torch.equal(*recorded)


def test_every_deformable_attention_of_the_model_is_sl_detr_attention():
    from _tiny_sl_detr import tiny_model

    model = tiny_model()
    attentions = [m for m in model.modules() if isinstance(m, DeformableDetrMultiscaleDeformableAttention)]
    assert len(attentions) == 2 and all(isinstance(m, SlDetrDeformableAttention) for m in attentions)
    assert type(model.model.encoder.layers[0].self_attn) is SlDetrDeformableAttention
