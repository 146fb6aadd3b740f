"""`backbone_stem="light"`: two 3x3 stride-2 convolutions in place of ResNet's 7x7 stem (stem_sl_detr.py)."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers.models.resnet.modeling_resnet import ResNetEmbeddings

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.stem_sl_detr import SlDetrLightStem


@pytest.mark.parametrize("size", [(64, 80), (63, 81), (33, 34)])
def test_same_feature_sizes_as_the_resnet_stem(size):
    """Every later stage sees the map size it saw with ResNet's stem: ceil(H / 4) x ceil(W / 4)."""
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, *size)
    light = SlDetrLightStem(3, 32)
    resnet = SlDetrForObjectDetection(SlDetrConfig.tiny({0: "a"})).model.backbone.model.embedder
    assert isinstance(resnet, ResNetEmbeddings)
    assert light(pixels).shape == resnet(pixels).shape == (2, 32, -(-size[0] // 4), -(-size[1] // 4))


def test_light_stem_costs_a_third():
    """Multiply-adds per output pixel of the stride-4 map, 3 input channels, 32 stem channels: the 7x7 convolution
    at stride 2 (4 of its outputs per stride-4 pixel) against 16 channels of 3x3 at stride 2 then 32 of 3x3."""
    resnet = 4 * 7 * 7 * 3 * 32
    light = 4 * 3 * 3 * 3 * 16 + 3 * 3 * 16 * 32
    assert light / resnet < 0.35
    stem = SlDetrLightStem(3, 32)
    assert sum(p.numel() for p in stem.parameters() if p.dim() == 4) == 3 * 3 * 3 * 16 + 3 * 3 * 16 * 32


def test_model_with_light_stem_trains_and_round_trips(tmp_path):
    config = SlDetrConfig.tiny({0: "a"}, d_model=32, layers=1, num_queries=10, backbone_stem="light")
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(config)
    stem = model.model.backbone.model.embedder
    assert isinstance(stem, SlDetrLightStem)
    pixel_values = torch.randn(2, 3, 64, 96)
    labels = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.2, 0.3]])}] * 2
    model.train()
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    first = stem.layers[0]
    assert first.weight.requires_grad and first.weight.grad.abs().sum() > 0
    assert stem.layers[1].training and stem.layers[1].running_mean.abs().sum() > 0  # batch norms learn
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert isinstance(loaded.model.backbone.model.embedder, SlDetrLightStem)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)


def test_light_stem_needs_learning_batch_norms_and_a_known_name():
    with pytest.raises(StrictDataclassClassValidationError, match="batch_norm"):
        SlDetrConfig.tiny({0: "a"}, backbone_stem="light", backbone_norm="frozen")
    with pytest.raises(StrictDataclassClassValidationError, match="backbone_stem"):
        SlDetrConfig.tiny({0: "a"}, backbone_stem="tiny")


def test_wrong_channel_count_is_named():
    with pytest.raises(ValueError, match="3 channels"):
        SlDetrLightStem(3, 32)(torch.zeros(1, 1, 16, 16))
