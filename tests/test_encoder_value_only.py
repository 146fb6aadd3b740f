"""`value_only_levels`: the encoder reads its finest levels but updates only the coarser ones (encoder_sl_detr.py)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrEncoder

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.encoder_sl_detr import SlDetrEncoder

STAGES = ("stage2", "stage3", "stage4")


def _config(**overrides) -> SlDetrConfig:
    return SlDetrConfig.tiny({0: "a", 1: "b"}, d_model=32, layers=1, num_queries=10, backbone_stages=STAGES,
                             num_denoising=0, **overrides)


def _encoder_inputs(config: SlDetrConfig, batch: int = 2):
    torch.manual_seed(0)
    shapes = [(8, 10), (4, 5), (2, 3)]
    total = sum(h * w for h, w in shapes)
    mask = torch.ones(batch, total, dtype=torch.bool)
    mask[1, 5:9] = False  # some padding in the value-only level
    spatial_shapes = torch.tensor(shapes)
    return dict(inputs_embeds=torch.randn(batch, total, config.d_model), attention_mask=mask,
                spatial_position_embeddings=torch.randn(batch, total, config.d_model), spatial_shapes=spatial_shapes,
                spatial_shapes_list=shapes,
                level_start_index=torch.cat([torch.zeros(1, dtype=torch.long), spatial_shapes.prod(1).cumsum(0)[:-1]]),
                valid_ratios=torch.ones(batch, len(shapes), 2))


def test_default_is_deformable_detrs_encoder():
    model = SlDetrForObjectDetection(_config())
    assert type(model.model.encoder) is DeformableDetrEncoder


def test_one_layer_matches_deformable_detr_on_the_updated_tokens():
    """With one layer, each query's update depends on its own token and on all values: the coarse tokens come out
    as Deformable DETR's encoder computes them, the value-only ones as they went in."""
    config = _config(value_only_levels=1)
    ours = SlDetrEncoder(config).eval()
    reference = DeformableDetrEncoder(config).eval()
    reference.load_state_dict(ours.state_dict())
    inputs = _encoder_inputs(config)
    with torch.no_grad():
        got = ours(**inputs).last_hidden_state
        want = reference(**inputs).last_hidden_state
    start = 8 * 10
    assert got.shape == want.shape
    torch.testing.assert_close(got[:, start:], want[:, start:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[:, :start], inputs["inputs_embeds"][:, :start])
    assert (got[:, :start] - want[:, :start]).abs().max() > 1e-2  # Deformable DETR's updates them


def test_two_levels_value_only():
    config = _config(value_only_levels=2)
    ours = SlDetrEncoder(config).eval()
    inputs = _encoder_inputs(config)
    with torch.no_grad():
        got = ours(**inputs).last_hidden_state
    start = 8 * 10 + 4 * 5
    torch.testing.assert_close(got[:, :start], inputs["inputs_embeds"][:, :start])
    assert (got[:, start:] - inputs["inputs_embeds"][:, start:]).abs().min() > 0


@pytest.mark.parametrize("levels", [3, -1, 1.5])
def test_bad_value_only_levels_refused(levels):
    with pytest.raises(StrictDataclassClassValidationError, match="value_only_levels"):
        _config(value_only_levels=levels)


def test_model_trains_and_round_trips(tmp_path):
    config = _config(value_only_levels=1)
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(config)
    assert isinstance(model.model.encoder, SlDetrEncoder)
    pixel_values = torch.randn(2, 3, 64, 80)
    labels = [{"class_labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.1, 0.2],
                                                                           [0.6, 0.7, 0.1, 0.2, -0.4]])},
              {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.2, 0.0]])}]
    model.train()
    loss = model(pixel_values=pixel_values, labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()
    layer = model.model.encoder.layers[0]
    assert layer.mlp.fc1.weight.grad.abs().sum() > 0 and layer.self_attn.value_proj.weight.grad.abs().sum() > 0
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert loaded.config.value_only_levels == 1 and isinstance(loaded.model.encoder, SlDetrEncoder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).pred_boxes, model(pixel_values=pixel_values)
                                   .pred_boxes)
