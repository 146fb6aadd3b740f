"""The backbone's training policy (`backbone_sl_detr.py`): frozen stages and trainable batch norms."""

from __future__ import annotations

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from test_modeling import tiny_config
from torch import nn
from transformers import ResNetConfig
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrFrozenBatchNorm2d

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.backbone_sl_detr import frozen_backbone_prefixes

BACKBONE = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                        out_features=["stage3", "stage4"])


def _model(**overrides) -> SlDetrForObjectDetection:
    torch.manual_seed(0)
    return SlDetrForObjectDetection(tiny_config(backbone_config=BACKBONE, num_feature_levels=2, **overrides))


def _trainable_groups(model: SlDetrForObjectDetection) -> set[str]:
    """Which parts of the ResNet have a trainable parameter: 'stem', 'stage1' .. 'stage4'."""
    groups = set()
    for name, parameter in model.model.backbone.model.named_parameters():
        if parameter.requires_grad:
            groups.add("stem" if name.startswith("embedder.") else f"stage{int(name.split('.')[2]) + 1}")
    return groups


def _norm_types(model: SlDetrForObjectDetection) -> dict[str, type]:
    return {name: type(module) for name, module in model.model.backbone.model.named_modules()
            if isinstance(module, (nn.BatchNorm2d, DeformableDetrFrozenBatchNorm2d))}


def test_frozen_prefixes():
    assert frozen_backbone_prefixes(-1) == ()
    assert frozen_backbone_prefixes(0) == ("embedder.",)
    assert frozen_backbone_prefixes(2) == ("embedder.", "encoder.stages.0.", "encoder.stages.1.")
    assert len(frozen_backbone_prefixes(4)) == 5


@pytest.mark.parametrize(("frozen_stages", "trained"), [
    (-1, {"stem", "stage1", "stage2", "stage3", "stage4"}),
    (0, {"stage1", "stage2", "stage3", "stage4"}),
    (1, {"stage2", "stage3", "stage4"}),  # the default: Deformable DETR's rule
    (3, {"stage4"}),
    (4, set()),
])
def test_frozen_stages(frozen_stages, trained):
    assert _trainable_groups(_model(backbone_frozen_stages=frozen_stages)) == trained


def test_default_keeps_deformable_detrs_frozen_norms():
    model = _model()
    assert set(_norm_types(model).values()) == {DeformableDetrFrozenBatchNorm2d}
    assert _trainable_groups(model) == {"stage2", "stage3", "stage4"}


def test_batch_norm_learns_only_in_the_trained_stages():
    types = _norm_types(_model(backbone_norm="batch_norm", backbone_frozen_stages=1))
    assert types, "the ResNet has batch norms"
    for name, kind in types.items():
        frozen = name.startswith(("embedder.", "encoder.stages.0."))
        assert kind is (DeformableDetrFrozenBatchNorm2d if frozen else nn.BatchNorm2d), name


def test_batch_norm_starts_at_the_frozen_values_and_then_uses_batch_statistics():
    frozen, trainable = _model(), _model(backbone_norm="batch_norm", backbone_frozen_stages=-1)
    trainable.load_state_dict(frozen.state_dict(), strict=False)
    pixel_values = torch.rand(2, 3, 64, 64)
    frozen.eval(), trainable.eval()
    with torch.no_grad():  # running statistics 0 / 1 and affine 1 / 0: both are identities in evaluation (the
        # trainable norms folded into their convolutions: the same up to float rounding)
        torch.testing.assert_close(frozen(pixel_values).logits, trainable(pixel_values).logits, rtol=1e-5, atol=1e-6)
    trainable.train()
    stem_norm = trainable.model.backbone.model.embedder.embedder.normalization
    before = stem_norm.running_mean.clone()
    with torch.no_grad():
        trainable.model.backbone(pixel_values, torch.ones(2, 64, 64, dtype=torch.long))
    assert not torch.equal(stem_norm.running_mean, before)  # training mode: batch statistics, running update
    # the stem's own norm, in training mode, normalizes by the batch's statistics: mean 0, variance 1 per channel
    stem = trainable.model.backbone.model.embedder.embedder
    with torch.no_grad():
        normalized = stem_norm(stem.convolution(pixel_values))
    torch.testing.assert_close(normalized.mean((0, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.var((0, 2, 3), unbiased=False), torch.ones(8), atol=1e-3, rtol=0)


def test_trainable_norms_get_gradients_and_survive_save_and_load(tmp_path):
    model = _model(backbone_norm="batch_norm", backbone_frozen_stages=-1)
    pixel_values = torch.rand(2, 3, 64, 64)
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2, 0.3]])}] * 2
    model.train()
    model(pixel_values, labels=labels).loss.backward()
    stem_norm = model.model.backbone.model.embedder.embedder.normalization
    assert stem_norm.weight.grad is not None and stem_norm.weight.grad.abs().sum() > 0
    assert model.model.backbone.model.embedder.embedder.convolution.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values)
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert _norm_types(loaded) == _norm_types(model)
    assert {n: p.requires_grad for n, p in loaded.named_parameters()} == {
        n: p.requires_grad for n, p in model.named_parameters()}
    with torch.no_grad():
        actual = loaded(pixel_values)
    assert torch.equal(actual.logits, expected.logits) and torch.equal(actual.pred_boxes, expected.pred_boxes)


@pytest.mark.parametrize(("field", "value"), [("backbone_norm", "group_norm"), ("backbone_frozen_stages", 5),
                                              ("backbone_frozen_stages", -2)])
def test_bad_policy_names_the_field(field, value):
    # huggingface_hub's strict dataclass wraps the config's ValueError in its own validation error
    with pytest.raises((ValueError, StrictDataclassError), match=f"`{field}` must be"):
        SlDetrConfig(**{field: value})


@pytest.mark.parametrize(("frozen_stages", "frozen"), [(-1, set()), (1, {"conv1", "bn1", "layer1"}),
                                                       (2, {"conv1", "bn1", "layer1", "layer2"})])
def test_timm_resnet_follows_the_same_policy(frozen_stages, frozen):
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(backbone_frozen_stages=frozen_stages, backbone_norm="batch_norm"))
    backbone = model.model.backbone.model  # timm's resnet18 (features only)
    # a frozen batch norm holds buffers, not parameters: 'bn1' has no parameter when frozen
    assert {name.split(".")[0] for name, p in backbone.named_parameters() if not p.requires_grad} == frozen - {"bn1"}
    for name, module in backbone.named_modules():
        if isinstance(module, (nn.BatchNorm2d, DeformableDetrFrozenBatchNorm2d)):
            expected = DeformableDetrFrozenBatchNorm2d if name.split(".")[0] in frozen else nn.BatchNorm2d
            assert type(module) is expected, name


def test_timm_default_is_transformers_rule_and_survives_loading(tmp_path):
    model = SlDetrForObjectDetection(tiny_config())
    trainable = {name for name, p in model.model.backbone.model.named_parameters() if p.requires_grad}
    # transformers' own rule for timm ResNets: train layer2-4 only
    assert trainable == {name for name, _ in model.model.backbone.model.named_parameters()
                         if any(f"layer{i}" in name for i in (2, 3, 4))}
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path)
    assert {name for name, p in loaded.model.backbone.model.named_parameters() if p.requires_grad} == trainable
