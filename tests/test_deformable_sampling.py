"""The deformable attention's sampling as one gather (`deformable_sampling_sl_detr.py`) against transformers'
grid_sample form: a hand-computed case, random cases with points outside the maps (forward and gradients), bf16
token indices, non-finite locations, the model wiring and the export fallback."""

from __future__ import annotations

import pytest
import torch
from _tiny_sl_detr import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrMultiscaleDeformableAttention,
    MultiScaleDeformableAttention,
)

from sl_detr_hf.deformable_sampling_sl_detr import (
    SlDetrMultiScaleDeformableSampling,
    multi_scale_deformable_sampling,
    use_grid_sample_sampling,
)

REFERENCE = MultiScaleDeformableAttention()  # transformers' pure-PyTorch form (grid_sample per level)


def reference(value, shapes, locations, weights):
    spatial = torch.tensor(shapes)
    start = torch.cat([spatial.new_zeros(1), (spatial[:, 0] * spatial[:, 1]).cumsum(0)[:-1]])
    return REFERENCE(value, spatial, shapes, start, locations, weights, 64)


def random_case(batch, queries, heads, channels, shapes, points, seed, spread=1.4):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(batch, tokens, heads, channels, generator=generator)
    # locations from -0.2 to 1.2: about a quarter of the points have corners outside the map
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=generator) * spread - (
        spread - 1) / 2
    weights = torch.rand(batch, queries, heads, len(shapes), points, generator=generator)
    return value, locations, weights


def test_a_point_between_four_cells_is_their_weighted_mean():
    # one level of 2 x 3 cells, one head of 2 channels; cell (row r, col c) holds (10 r + c, -1)
    shapes = [(2, 3)]
    value = torch.tensor([[10.0 * r + c, -1.0] for r in range(2) for c in range(3)]).view(1, 6, 1, 2)
    # pixel (x, y) = (loc_x * 3 - 0.5, loc_y * 2 - 0.5): (1.25, 0.5) sits between columns 1 and 2, rows 0 and 1
    locations = torch.tensor([(1.25 + 0.5) / 3, (0.5 + 0.5) / 2]).view(1, 1, 1, 1, 1, 2)
    weights = torch.tensor([2.0]).view(1, 1, 1, 1, 1)
    out = multi_scale_deformable_sampling(value, shapes, locations, weights)
    # x: 0.75 of column 1 + 0.25 of column 2 = 1.25; y: half row 0, half row 1 = 5; times the weight 2
    expected = torch.tensor([[[2 * (5.0 + 1.25), 2 * -1.0]]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(reference(value, shapes, locations, weights), expected)


def test_a_point_half_outside_the_map_reads_zeros_there():
    shapes = [(2, 2)]
    value = torch.ones(1, 4, 1, 1)
    locations = torch.tensor([0.0, 0.25]).view(1, 1, 1, 1, 1, 2)  # pixel x = -0.5: half on column -1 (zeros)
    out = multi_scale_deformable_sampling(value, shapes, locations, torch.ones(1, 1, 1, 1, 1))
    torch.testing.assert_close(out, torch.tensor([[[0.5]]]))


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), queries=st.integers(1, 7), heads=st.integers(1, 3), channels=st.integers(1, 5),
       shapes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=3),
       points=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_equals_grid_sample_form(batch, queries, heads, channels, shapes, points, seed):
    value, locations, weights = random_case(batch, queries, heads, channels, shapes, points, seed)
    torch.testing.assert_close(multi_scale_deformable_sampling(value, shapes, locations, weights),
                               reference(value, shapes, locations, weights), rtol=1e-5, atol=1e-5)


def test_gradients_equal_grid_sample_form():
    shapes = [(12, 15), (6, 8), (3, 4)]
    grads = []
    for function in (multi_scale_deformable_sampling, reference):
        value, locations, weights = (t.double().requires_grad_() for t in random_case(2, 11, 3, 4, shapes, 4, 7))
        out = function(value, shapes, locations, weights)
        (out * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads.append([value.grad, locations.grad, weights.grad])
    for ours, theirs in zip(*grads):
        assert ours.abs().sum() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_bf16_inputs_index_every_token():
    # 64 x 70 tokens: token indices above 256 are not representable in bf16; positions are computed in float32
    shapes = [(64, 70)]
    value, locations, weights = random_case(1, 50, 2, 3, shapes, 4, 3, spread=1.0)
    expected = multi_scale_deformable_sampling(value.bfloat16().float(), shapes, locations.bfloat16().float(),
                                               weights.bfloat16().float())
    out = multi_scale_deformable_sampling(value.bfloat16(), shapes, locations.bfloat16(), weights.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=0.02, atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bf16 value with float32 locations: a float32 result
        mixed = multi_scale_deformable_sampling(value.bfloat16(), shapes, locations, weights)
    assert mixed.dtype == torch.float32


def test_a_value_table_past_float32_integers_reads_the_right_rows():
    # 8192 x 512 tokens x 5 heads = 21 M table rows, past 2^24, where float32 holds only every other integer
    shapes, heads = [(8192, 512)], 5
    tokens = 8192 * 512
    value = (torch.arange(tokens * heads, dtype=torch.int64) % 1000).float().view(1, tokens, heads, 1)
    cells = torch.tensor([(511, 8191), (510, 8191), (511, 8190), (3, 8000), (0, 5)])  # (column, row) per head
    # cell centres, exact in float32 (powers of two): each head reads one cell with weight 1
    locations = ((cells.float() + 0.5) / torch.tensor([512.0, 8192.0])).view(1, 1, heads, 1, 1, 2)
    out = multi_scale_deformable_sampling(value, shapes, locations, torch.ones(1, 1, heads, 1, 1))
    rows = (cells[:, 1] * 512 + cells[:, 0]) * heads + torch.arange(heads)
    assert (rows >= 1 << 24).sum() == 4 and (rows % 2 == 1).any()
    torch.testing.assert_close(out.view(heads), (rows % 1000).float(), rtol=0, atol=0)


def test_non_finite_and_huge_locations_contribute_nothing():
    shapes = [(4, 5), (2, 3)]
    value, locations, weights = random_case(1, 6, 2, 3, shapes, 2, 11)
    broken = locations.clone()
    broken[0, 0, 0, 0, 0] = torch.tensor([float("nan"), 0.5])
    broken[0, 1, 1, 1, 1] = torch.tensor([float("inf"), float("-inf")])
    broken[0, 2, 0, 1, 0] = torch.tensor([3e38, 0.5])  # finite, but its pixel overflows float32
    broken[0, 3, 1, 0, 1] = torch.tensor([0.5, -3e38])
    out = multi_scale_deformable_sampling(value, shapes, broken, weights)
    kept = weights.clone()
    kept[0, 0, 0, 0, 0] = 0
    kept[0, 1, 1, 1, 1] = 0
    kept[0, 2, 0, 1, 0] = 0
    kept[0, 3, 1, 0, 1] = 0
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, multi_scale_deformable_sampling(value, shapes, locations, kept))


def test_every_deformable_attention_of_the_model_gathers_and_predicts_as_before():
    model = tiny_model()
    attentions = [m for m in model.modules() if isinstance(m, DeformableDetrMultiscaleDeformableAttention)]
    assert len(attentions) == 2  # one encoder and one decoder layer
    assert all(type(m.attn) is SlDetrMultiScaleDeformableSampling for m in attentions)
    pixels = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    mask[1, :, 70:] = 0  # a padded image: the masked value tokens stay zeros
    with torch.no_grad():
        ours = model(pixel_values=pixels, pixel_mask=mask)
        use_grid_sample_sampling(model)
        assert all(type(m.attn) is MultiScaleDeformableAttention for m in attentions)
        theirs = model(pixel_values=pixels, pixel_mask=mask)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.pred_boxes, theirs.pred_boxes, rtol=1e-4, atol=1e-5)


def test_training_and_exporting_run_the_grid_sample_form(monkeypatch):
    import sl_detr_hf.deformable_sampling_sl_detr as module

    def refuse(*args):
        raise AssertionError("the gather form ran while exporting")

    value, locations, weights = random_case(1, 3, 2, 2, [(3, 4)], 2, 5)
    args = (value, torch.tensor([(3, 4)]), [(3, 4)], torch.tensor([0]), locations, weights, 64)
    monkeypatch.setattr(module, "multi_scale_deformable_sampling", refuse)
    with pytest.raises(AssertionError, match="gather form"):
        SlDetrMultiScaleDeformableSampling()(*args)
    with torch.no_grad():  # a gradient-free call gathers
        with pytest.raises(AssertionError, match="gather form"):
            SlDetrMultiScaleDeformableSampling()(*args)
    locations.requires_grad_()  # training: the grid_sample form
    torch.testing.assert_close(SlDetrMultiScaleDeformableSampling()(*args), REFERENCE(*args))
    locations.requires_grad_(False)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    torch.testing.assert_close(SlDetrMultiScaleDeformableSampling()(*args), REFERENCE(*args))
