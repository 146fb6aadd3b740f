"""`backbone_downsample="space_to_depth"`: the ResNet's stride-2 shortcuts read every pixel of each 2 x 2 block
(space_to_depth_sl_detr.py), one 2 x 2 stride-2 convolution."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch import nn

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.conv_norm_folding_sl_detr import SlDetrResNetShortCut
from sl_detr_hf.space_to_depth_sl_detr import SlDetrSpaceToDepthShortCut


def _identity_norm(shortcut: nn.Module) -> None:
    """Make the shortcut's batch norm the identity in evaluation mode (mean 0, variance 1 - eps, gamma 1, beta 0)."""
    norm = shortcut.normalization
    with torch.no_grad():
        norm.running_mean.zero_()
        norm.running_var.fill_(1 - norm.eps)
        norm.weight.fill_(1)
        norm.bias.zero_()
    shortcut.eval()


def test_hand_computed_block():
    """One channel, one 2 x 2 block [[1, 2], [3, 4]]: weights (10, 20, 30, 40) on offsets (0,0), (0,1), (1,0), (1,1)
    give 1*10 + 2*20 + 3*30 + 4*40 = 300, the strided 1x1 convolution would see only the 1."""
    shortcut = SlDetrSpaceToDepthShortCut(1, 1)
    _identity_norm(shortcut)
    with torch.no_grad():
        shortcut.convolution.weight.copy_(torch.tensor([[10.0, 20.0], [30.0, 40.0]]).view(1, 1, 2, 2))
        out = shortcut(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert out.shape == (1, 1, 1, 1) and out.item() == pytest.approx(300.0)


@pytest.mark.parametrize("size", [(8, 10), (7, 9), (1, 1)])
def test_top_left_weights_are_the_strided_shortcut_and_equal_weights_resnet_d(size):
    """Weights on the (0, 0) offset only give the strided 1x1 convolution (same shape, odd sides included);
    a quarter on every offset gives ResNet-D's 2 x 2 average pool (zero-padded) then the 1x1 convolution."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    weight = torch.randn(5, 3, 1, 1)
    strided = SlDetrResNetShortCut(3, 5, stride=2)
    spd = SlDetrSpaceToDepthShortCut(3, 5)
    for module in (strided, spd):
        _identity_norm(module)
    with torch.no_grad():
        strided.convolution.weight.copy_(weight)
        spd.convolution.weight.zero_()
        spd.convolution.weight[:, :, :1, :1] = weight  # offset (0, 0) of each block only
        expected = strided(x)
        torch.testing.assert_close(spd(x), expected)
        spd.convolution.weight.copy_(weight.expand(-1, -1, 2, 2) / 4)
        padded = nn.functional.pad(x, (0, size[1] % 2, 0, size[0] % 2))
        average = nn.functional.avg_pool2d(padded, 2)
        torch.testing.assert_close(spd(x), nn.functional.conv2d(average, weight))
    assert expected.shape == (2, 5, -(-size[0] // 2), -(-size[1] // 2))


def test_folded_at_inference_equals_unfolded():
    torch.manual_seed(0)
    spd = SlDetrSpaceToDepthShortCut(4, 6)
    x = torch.randn(2, 4, 10, 12)
    spd.train()
    spd(x)  # running statistics away from their start
    spd.eval()
    with torch.no_grad():
        folded = spd(x)
    expected = spd.normalization(spd.convolution(nn.functional.pad(x, (0, 1, 0, 1))))
    torch.testing.assert_close(folded, expected, rtol=1e-5, atol=1e-5)


def test_model_uses_it_on_every_stride_two_shortcut_trains_and_round_trips(tmp_path):
    config = SlDetrConfig.tiny({0: "a"}, d_model=32, layers=1, num_queries=10, backbone_stem="light",
                               backbone_downsample="space_to_depth", backbone_stages=("stage3", "stage4"))
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(config)
    stages = model.model.backbone.model.encoder.stages
    shortcuts = [stage.layers[0].shortcut for stage in stages]
    assert not isinstance(shortcuts[0], SlDetrSpaceToDepthShortCut)  # stage 1 keeps its stride and channels
    assert all(isinstance(shortcut, SlDetrSpaceToDepthShortCut) for shortcut in shortcuts[1:])
    assert [tuple(s.convolution.weight.shape) for s in shortcuts[1:]] == [(64, 32, 2, 2), (128, 64, 2, 2),
                                                                         (256, 128, 2, 2)]
    for shortcut in shortcuts[1:]:  # ResNet's init of the 1x1 convolution it stands for, not reset by post_init
        out_channels = shortcut.convolution.out_channels
        assert shortcut.convolution.weight.std().item() == pytest.approx((2 / out_channels) ** 0.5, rel=0.1)
    pixel_values = torch.randn(2, 3, 66, 94)  # odd stage sizes: 17 x 24 at stride 4, 9 x 12 at stride 8
    labels = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.2, 0.3]])}] * 2
    model.train()
    model(pixel_values=pixel_values, labels=labels).loss.backward()
    assert all(s.convolution.weight.grad.abs().sum() > 0 for s in shortcuts[1:])
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone_downsample == "space_to_depth"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).logits, model(pixel_values=pixel_values).logits)


def test_default_is_strided_and_names_are_checked():
    assert SlDetrConfig().backbone_downsample == SlDetrConfig.tiny({0: "a"}).backbone_downsample == "strided"
    with pytest.raises(StrictDataclassClassValidationError, match="backbone_downsample"):
        SlDetrConfig.tiny({0: "a"}, backbone_downsample="pool")
    # random shortcuts in a pretrained (frozen-norm) backbone would undo its training
    with pytest.raises(StrictDataclassClassValidationError, match="batch_norm"):
        SlDetrConfig.tiny({0: "a"}, backbone_downsample="space_to_depth", backbone_norm="frozen")


def test_needs_transformers_resnet():
    config = SlDetrConfig.paper(backbone="resnet18", use_timm_backbone=True, use_pretrained_backbone=False,
                                backbone_norm="batch_norm", backbone_frozen_stages=-1,
                                backbone_downsample="space_to_depth")
    with pytest.raises(ValueError, match="ResNet backbone"):
        SlDetrForObjectDetection(config)
