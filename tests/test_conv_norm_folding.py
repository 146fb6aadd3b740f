"""Batch norms folded into their convolutions at inference (conv_norm_folding_sl_detr.py)."""

from __future__ import annotations

import copy

import pytest
import torch
from _tiny_sl_detr import tiny_model
from torch import nn
from transformers.models.resnet.modeling_resnet import ResNetConvLayer, ResNetShortCut

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.conv_norm_folding_sl_detr import (
    _CACHE,
    SlDetrResNetConvLayer,
    SlDetrResNetShortCut,
    conv_norm,
    use_unfolded_conv_norms,
)


def _model(stem: str = "light", seed: int = 0) -> SlDetrForObjectDetection:
    """The tiny model of `sl-detr train` (learning batch norms), small, with non-trivial norm statistics."""
    torch.manual_seed(seed)
    config = SlDetrConfig.tiny({0: "a", 1: "b"}, d_model=32, layers=1, num_queries=10,
                               backbone_stages=("stage3", "stage4"), backbone_stem=stem, num_denoising=0)
    model = SlDetrForObjectDetection(config).eval()
    with torch.no_grad():
        for norm in model.modules():
            if isinstance(norm, nn.BatchNorm2d):
                for tensor, low, high in ((norm.running_mean, -1, 1), (norm.running_var, 0.2, 3),
                                          (norm.weight, 0.5, 1.5), (norm.bias, -0.5, 0.5)):
                    tensor.uniform_(low, high)
    return model


def _count_norms(model: nn.Module) -> int:
    return sum(type(module) is nn.BatchNorm2d for module in model.modules())


def _folded_convs(model: nn.Module) -> int:
    return sum(_CACHE in module.__dict__ for module in model.modules())


def _predict(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(pixel_values=pixels)
    return out.logits, out.pred_boxes


def test_hand_computed_fold():
    """A 1x1 convolution x 2 then a norm with mean 1, variance 3, eps 1, gamma 4, beta 5: y = (2x - 1) / 2 * 4 + 5
    = 4x + 3, as one convolution with weight 4 and bias 3."""
    conv = nn.Conv2d(1, 1, 1, bias=False)
    norm = nn.BatchNorm2d(1, eps=1.0).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0)
        norm.running_mean.fill_(1.0)
        norm.running_var.fill_(3.0)
        norm.weight.fill_(4.0)
        norm.bias.fill_(5.0)
    x = torch.tensor([[[[0.0, 1.0], [-2.5, 10.0]]]])
    with torch.no_grad():
        y = conv_norm(x, conv, norm)
    key, weight, bias = conv.__dict__[_CACHE]
    assert weight.flatten().tolist() == [4.0] and bias.tolist() == [3.0]
    assert y.tolist() == [[[[3.0, 7.0], [-7.0, 43.0]]]]
    with torch.enable_grad():  # the parameters need a gradient: computed apart, the same values
        assert conv_norm(x, conv, norm).tolist() == y.tolist()


@pytest.mark.parametrize("stem", ["light", "resnet"])
def test_inference_equals_the_unfolded_model(stem):
    """Every conv + batch norm pair of the backbone folds under no_grad, and the detections equal the model's
    computed with every norm apart."""
    model = _model(stem)
    reference = use_unfolded_conv_norms(copy.deepcopy(model))
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        folded = _predict(model, pixels)
        apart = _predict(reference, pixels)
    assert _folded_convs(model) == _count_norms(model) > 0 and _folded_convs(reference) == 0
    for a, b in zip(folded, apart):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_cache_follows_the_weights():
    """Changed statistics in place and a loaded state dict are folded anew; inference tensors cached under
    inference_mode serve later no_grad calls."""
    model, other = _model(seed=0), _model(seed=1)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        _predict(model, pixels)
    norm = next(m for m in model.modules() if type(m) is nn.BatchNorm2d)
    with torch.no_grad():
        norm.running_var.mul_(4.0)
        after = _predict(model, pixels)
        expected = _predict(use_unfolded_conv_norms(copy.deepcopy(model)), pixels)
    torch.testing.assert_close(after, expected, rtol=1e-4, atol=1e-5)
    model.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(_predict(model, pixels), _predict(other, pixels), rtol=1e-4, atol=1e-5)


def test_training_and_gradients_are_unchanged():
    """Training mode (batch statistics) and a forward that needs gradients compute the norms apart: no cache,
    gradients reach the norms' parameters."""
    model = _model()
    pixels = torch.randn(2, 3, 64, 64)
    model.train()
    logits, _ = _predict(model, pixels)
    assert _folded_convs(model) == 0
    model.eval()
    logits, boxes = _predict(model, pixels)
    (logits.sum() + boxes.sum()).backward()
    norm = next(m for m in model.modules() if type(m) is nn.BatchNorm2d)
    assert _folded_convs(model) == 0 and norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_keys_classes_and_a_saved_folder(tmp_path):
    """The state dict is the unfolded model's; the ResNet layers keep their transformers base class; a saved and
    reloaded folder folds as well."""
    model = _model("resnet")
    plain = use_unfolded_conv_norms(copy.deepcopy(model))
    assert list(model.state_dict()) == list(plain.state_dict())
    layers = [m for m in model.modules() if isinstance(m, (ResNetConvLayer, ResNetShortCut))]
    assert layers and all(type(m) in (SlDetrResNetConvLayer, SlDetrResNetShortCut) for m in layers)
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(_predict(loaded, pixels), _predict(plain, pixels), rtol=1e-4, atol=1e-5)
    assert _folded_convs(loaded) == _count_norms(loaded) > 0


def test_frozen_norms_are_left_alone():
    """Frozen batch norms (pretrained backbones, converted checkpoints) keep their own computation."""
    model = tiny_model()
    with torch.no_grad():
        model(pixel_values=torch.randn(1, 3, 64, 64))
    assert _count_norms(model) == 0 and _folded_convs(model) == 0


@pytest.mark.parametrize("switch", [(torch.compiler, "is_exporting"), (torch.compiler, "is_compiling"),
                                    (torch.onnx, "is_in_onnx_export")])
def test_exported_and_compiled_graphs_keep_the_norm(monkeypatch, switch):
    """While exporting or compiling the convolution and the norm stay two nodes (the runtime folds them)."""
    conv, norm = nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3).eval()
    x = torch.randn(1, 2, 5, 5)
    monkeypatch.setattr(*switch, lambda: True)
    with torch.no_grad():
        y = conv_norm(x, conv, norm)
    assert _CACHE not in conv.__dict__
    torch.testing.assert_close(y, norm(conv(x)))
    monkeypatch.undo()
    with torch.no_grad():
        torch.testing.assert_close(conv_norm(x, conv, norm), y, rtol=1e-5, atol=1e-6)
    assert _CACHE in conv.__dict__
