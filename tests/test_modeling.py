"""SlDetrModel / SlDetrForObjectDetection: conversion from Deformable DETR, angle heads, save / load (also as
remote code), training, backbones and input validation. Tiny random configs, no network."""

from __future__ import annotations

import json
import math
import os
import runpy
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForObjectDetection,
    DeformableDetrConfig,
    DeformableDetrForObjectDetection,
    ResNetConfig,
)

from sl_detr_hf import (
    SlDetrConfig,
    SlDetrForObjectDetection,
    SlDetrImageProcessor,
    SlDetrModel,
    SlDetrObjectDetectionOutput,
)
from sl_detr_hf.loss_sl_detr import prepare_targets

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(
    d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
    encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2,
    num_queries=12, two_stage_num_proposals=12, num_labels=5,
)
TIMM = dict(backbone="resnet18", use_timm_backbone=True, use_pretrained_backbone=False)


def tiny_config(box_type: str = "rotated", **overrides) -> SlDetrConfig:
    """A tiny config with Deformable DETR's numerics (le90 native angles, what the hand values here assume; RHINO's
    numerics, the default: `test_rhino_switches.py`, `test_config_version.py`)."""
    return SlDetrConfig(**{**TIMM, **TINY, "box_type": box_type, "numerics": "deformable_detr", **overrides})


def tiny_ddetr(seed: int = 0, **overrides) -> DeformableDetrForObjectDetection:
    torch.manual_seed(seed)
    config = DeformableDetrConfig(**{**TIMM, **TINY, "two_stage": True, "with_box_refine": True, **overrides})
    model = DeformableDetrForObjectDetection(config).eval()
    # Transformers' init leaves the class bias and proposal deltas near zero; shake every weight so that the
    # comparison below exercises every copied tensor.
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "backbone" not in name:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def randomize_angle_heads(model: SlDetrForObjectDetection) -> None:
    """Give the (zero-initialized) angle heads non-zero outputs, so that saving / loading them is tested."""
    layers = list(model.angle_embed)
    if model.model.enc_angle_embed is not None:
        layers.append(model.model.enc_angle_embed.layers[-1])
    with torch.no_grad():
        for layer in layers:
            layer.weight.normal_(std=0.3)
            layer.bias.normal_(std=0.3)


def images(batch: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def rotated_labels() -> list[dict]:
    return [
        {"class_labels": torch.tensor([1, 3]),
         "boxes": torch.tensor([[0.30, 0.35, 0.30, 0.12, 0.4], [0.65, 0.70, 0.25, 0.15, -0.9]])},
        {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.2, 1.2]])},
    ]


@pytest.fixture(scope="module")
def ddetr() -> DeformableDetrForObjectDetection:
    return tiny_ddetr()


# --------------------------------------------------------------------------------------------------
# Conversion from Deformable DETR
# --------------------------------------------------------------------------------------------------


def test_horizontal_conversion_is_deformable_detr(ddetr):
    model, report = SlDetrForObjectDetection.from_deformable_detr(ddetr, box_type="horizontal", return_report=True)
    assert report.new == [] and report.skipped == [] and len(report.copied) == len(ddetr.state_dict())
    assert model.config.model_type == "sl_detr" and model.config.box_type == "horizontal"
    assert model.config.id2label == ddetr.config.id2label and not model.training
    pixel_values = images()
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[1, :, 40:] = 0
    with torch.no_grad():
        expected = ddetr(pixel_values, pixel_mask=pixel_mask)
        actual = model(pixel_values, pixel_mask=pixel_mask)
    assert isinstance(actual, SlDetrObjectDetectionOutput)
    assert actual.pred_boxes.shape == (2, 12, 4) and actual.logits.shape == (2, 12, 5)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(actual.pred_boxes, expected.pred_boxes, atol=1e-6, rtol=0)
    torch.testing.assert_close(actual.enc_outputs_class, expected.enc_outputs_class, atol=1e-6, rtol=0)
    torch.testing.assert_close(actual.enc_outputs_coord_logits, expected.enc_outputs_coord_logits, atol=1e-6, rtol=0)
    # drop-in: every Deformable DETR output field is there, with the same meaning
    assert set(expected.keys()) <= set(actual.keys())
    assert actual.init_reference_angles is None


def test_rotated_conversion_keeps_logits_and_boxes(ddetr):
    model, report = SlDetrForObjectDetection.from_deformable_detr(ddetr, box_type="rotated", return_report=True)
    assert report.skipped == [] and len(report.copied) == len(ddetr.state_dict())
    assert report.new and all("angle_embed" in key for key in report.new)
    assert "copied" in str(report)
    pixel_values = images()
    with torch.no_grad():
        expected = ddetr(pixel_values)
        actual = model(pixel_values)
    assert actual.pred_boxes.shape == (2, 12, 5)
    assert actual.enc_outputs_coord_logits.shape[-1] == 5
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(actual.pred_boxes[..., :4], expected.pred_boxes, atol=1e-6, rtol=0)
    # new angle heads start at theta = 0 (a = 0.5) everywhere
    assert torch.equal(actual.pred_boxes[..., 4], torch.zeros(2, 12))
    assert torch.count_nonzero(actual.enc_outputs_coord_logits[..., 4]) == 0
    assert torch.equal(actual.init_reference_angles, torch.full((2, 12, 1), 0.5))


def test_conversion_with_another_label_set_and_from_a_folder(ddetr, tmp_path):
    ddetr.save_pretrained(tmp_path / "ddetr")
    id2label = {0: "plane", 1: "ship", 2: "harbor"}
    model, report = SlDetrForObjectDetection.from_deformable_detr(
        tmp_path / "ddetr", box_type="rotated", return_report=True, id2label=id2label
    )
    assert model.config.num_labels == 3 and model.config.label2id == {"plane": 0, "ship": 1, "harbor": 2}
    assert report.skipped and all("class_embed" in key and "shape" in key for key in report.skipped)
    assert any("class_embed" in key for key in report.new)
    # SL-DETR's loss settings, not Deformable DETR's, come with the conversion
    assert model.config.class_cost == 2.0 and model.config.auxiliary_loss
    assert torch.equal(model.model.encoder.layers[0].mlp.fc1.weight, ddetr.model.encoder.layers[0].mlp.fc1.weight)
    assert torch.equal(model.bbox_embed[1].layers[0].weight, ddetr.bbox_embed[1].layers[0].weight)
    with torch.no_grad():
        outputs = model(images(1, size=96))  # GroupNorm needs > 1 value per group: no 1 x 1 map at batch 1
    assert outputs.logits.shape == (1, 12, 3)
    with pytest.raises(TypeError, match="DeformableDetrForObjectDetection"):
        SlDetrForObjectDetection.from_deformable_detr(model)


def test_conversion_script(ddetr, tmp_path, monkeypatch, capsys):
    ddetr.save_pretrained(tmp_path / "ddetr")
    monkeypatch.setattr(sys, "argv", ["convert_deformable_detr.py", str(tmp_path / "ddetr"), str(tmp_path / "out"),
                                      "--box-type", "rotated", "--classes", "dota-1.0"])
    runpy.run_path(os.path.join(REPO_ROOT, "scripts", "convert_deformable_detr.py"), run_name="__main__")
    printed = capsys.readouterr().out
    assert "copied" in printed and "new:" in printed and "skipped:" in printed
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path / "out")
    assert isinstance(loaded, SlDetrForObjectDetection) and loaded.config.num_labels == 15
    assert loaded.config.id2label[0] == "plane" and loaded.config.box_type == "rotated"
    # Deformable DETR's behaviour unless asked for the DINO parts
    switches = ("num_denoising", "mixed_query_selection", "look_forward_twice", "rotated_sampling", "numerics")
    assert [getattr(loaded.config, key) for key in switches] == [0, False, False, "none", "deformable_detr"]
    monkeypatch.setattr(sys, "argv", ["convert_deformable_detr.py", str(tmp_path / "ddetr"), str(tmp_path / "dino"),
                                      "--dino"])
    runpy.run_path(os.path.join(REPO_ROOT, "scripts", "convert_deformable_detr.py"), run_name="__main__")
    assert "new: model.query_selection.content_embed.weight" in capsys.readouterr().out
    dino = AutoModelForObjectDetection.from_pretrained(tmp_path / "dino").config
    assert [getattr(dino, key) for key in switches] == [100, True, True, "rhino", "deformable_detr"]


# --------------------------------------------------------------------------------------------------
# Angle heads
# --------------------------------------------------------------------------------------------------


def test_fresh_model_predicts_zero_angle_and_shapes():
    model = SlDetrForObjectDetection(tiny_config()).eval()
    for layer in [*model.angle_embed, model.model.enc_angle_embed.layers[-1]]:
        assert torch.count_nonzero(layer.weight) == 0 and torch.count_nonzero(layer.bias) == 0
    assert torch.count_nonzero(model.model.enc_angle_embed.layers[0].weight) > 0
    with torch.no_grad():
        outputs = model(images())
    assert outputs.logits.shape == (2, 12, 5) and outputs.pred_boxes.shape == (2, 12, 5)
    assert torch.equal(outputs.pred_boxes[..., 4], torch.zeros(2, 12))
    assert ((outputs.pred_boxes[..., :4] > 0) & (outputs.pred_boxes[..., :4] < 1)).all()
    tokens = outputs.enc_outputs_class.shape[1]
    assert outputs.enc_outputs_coord_logits.shape == (2, tokens, 5)
    assert outputs.intermediate_hidden_states.shape == (2, 2, 12, 32)
    with torch.no_grad():  # as `outputs`: with a gradient the attention samples by grid_sample (float rounding)
        as_tuple = model(images(), return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], outputs.logits)


def test_angle_is_refined_across_layers():
    """a_l = sigmoid(delta_l + inverse_sigmoid(a_{l-1})), theta = (a - 0.5) pi, a_{-1} = the proposal's angle."""
    model = SlDetrForObjectDetection(tiny_config()).eval()
    enc_delta, deltas = 0.7, (-0.4, 1.1)
    with torch.no_grad():
        model.model.enc_angle_embed.layers[-1].bias.fill_(enc_delta)
        for layer, delta in zip(model.angle_embed, deltas):
            layer.bias.fill_(delta)
        outputs = model(images(), labels=None)
    # every proposal gets angle logit 0 + enc_delta
    torch.testing.assert_close(outputs.enc_outputs_coord_logits[..., 4],
                               torch.full_like(outputs.enc_outputs_coord_logits[..., 4], enc_delta))
    initial = torch.tensor(enc_delta).sigmoid().item()
    torch.testing.assert_close(outputs.init_reference_angles, torch.full((2, 12, 1), initial))
    expected = (torch.tensor(enc_delta + sum(deltas)).sigmoid() - 0.5) * math.pi
    torch.testing.assert_close(outputs.pred_boxes[..., 4], torch.full((2, 12), expected.item()), atol=1e-5, rtol=0)
    assert outputs.pred_boxes[..., 4].abs().max() < math.pi / 2


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
@pytest.mark.parametrize("refine", [False, True])
def test_single_stage_models(box_type, refine):
    config = tiny_config(box_type, two_stage=False, with_box_refine=refine)
    model = SlDetrForObjectDetection(config).eval()
    assert model.model.enc_angle_embed is None
    with torch.no_grad():
        outputs = model(images())
    assert outputs.pred_boxes.shape == (2, 12, config.box_dim) and outputs.enc_outputs_class is None
    if box_type == "rotated":
        assert torch.equal(outputs.init_reference_angles, torch.full((2, 12, 1), 0.5))
        if not refine:  # without refinement the per-layer heads are shared, like Deformable DETR's
            assert model.angle_embed[1].weight is model.angle_embed[0].weight
        else:
            assert model.angle_embed[1].weight is not model.angle_embed[0].weight
    model.train()
    labels = rotated_labels() if box_type == "rotated" else [
        {"class_labels": t["class_labels"], "boxes": t["boxes"][:, :4]} for t in rotated_labels()]
    loss = model(images(), labels=labels).loss
    assert torch.isfinite(loss)
    loss.backward()


def test_bare_model_runs_standalone():
    model = SlDetrModel(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(images())
    assert outputs.last_hidden_state.shape == (2, 12, 32)
    assert outputs.init_reference_points.shape == (2, 12, 4)
    assert torch.equal(outputs.init_reference_angles, torch.full((2, 12, 1), 0.5))
    assert outputs.enc_outputs_coord_logits.shape[-1] == 5


# --------------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------------


def test_save_load_round_trip_and_auto_classes(tmp_path):
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config()).eval()
    randomize_angle_heads(model)
    pixel_values = images()
    with torch.no_grad():
        expected = model(pixel_values)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "configuration_sl_detr.py", "modeling_sl_detr.py",
            "loss_sl_detr.py", "geometry_conversions.py", "geometry_overlaps.py", "geometry_gaussian.py",
            "geometry_distances.py", "decoder_sl_detr.py", "attention_sl_detr.py",
            "query_selection_sl_detr.py", "denoising_sl_detr.py", "backbone_sl_detr.py", "heads_sl_detr.py"} <= files
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_sl_detr.SlDetrConfig",
                        "AutoModel": "modeling_sl_detr.SlDetrModel",
                        "AutoModelForObjectDetection": "modeling_sl_detr.SlDetrForObjectDetection"}

    assert isinstance(AutoConfig.from_pretrained(tmp_path), SlDetrConfig)
    SlDetrImageProcessor().save_pretrained(tmp_path)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is SlDetrImageProcessor
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(loaded) is SlDetrForObjectDetection
    with torch.no_grad():
        actual = loaded(pixel_values)
    assert torch.equal(actual.logits, expected.logits) and torch.equal(actual.pred_boxes, expected.pred_boxes)
    assert actual.pred_boxes[..., 4].abs().max() > 0
    # ties survive loading: the decoder refines boxes with the detection heads
    assert loaded.bbox_embed[0].layers[0].weight is loaded.model.decoder.bbox_embed[0].layers[0].weight
    assert loaded.class_embed[-1].weight is loaded.model.decoder.class_embed[-1].weight

    bare = AutoModel.from_pretrained(tmp_path).eval()
    assert type(bare) is SlDetrModel
    with torch.no_grad():
        torch.testing.assert_close(bare(pixel_values).last_hidden_state, expected.last_hidden_state, atol=0, rtol=0)


@pytest.mark.slow
def test_trust_remote_code_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config()).eval()
    randomize_angle_heads(model)
    pixel_values = images()
    with torch.no_grad():
        expected = model(pixel_values)
        # training forward with the DINO parts on (denoising queries, their mask, the loss), fixed noise
        model.train()
        torch.manual_seed(3)
        expected_loss = model(pixel_values, labels=rotated_labels()).loss
        model.eval()
    assert model.config.num_denoising > 0 and model.config.mixed_query_selection and model.config.look_forward_twice
    model.save_pretrained(tmp_path / "checkpoint")
    SlDetrImageProcessor(max_detections=77).save_pretrained(tmp_path / "checkpoint")
    torch.save({"pixel_values": pixel_values, "logits": expected.logits, "pred_boxes": expected.pred_boxes,
                "labels": rotated_labels(), "loss": expected_loss}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class BlockSlDetrHf(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "sl_detr_hf" or name.startswith("sl_detr_hf."):
                    raise ImportError(f"{name} is hidden in this test")
                return None

        sys.meta_path.insert(0, BlockSlDetrHf())
        try:
            import sl_detr_hf  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("sl_detr_hf is importable")

        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection

        folder, expected = sys.argv[1], torch.load(sys.argv[2])
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert config.model_type == "sl_detr" and config.box_type == "rotated"
        model = AutoModelForObjectDetection.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
        with torch.no_grad():
            outputs = model(expected["pixel_values"])
        assert torch.equal(outputs.logits, expected["logits"])
        assert torch.equal(outputs.pred_boxes, expected["pred_boxes"])
        model.train()
        torch.manual_seed(3)
        with torch.no_grad():
            training = model(expected["pixel_values"], labels=expected["labels"])
        assert training.dn_meta is not None and torch.equal(training.loss, expected["loss"]), training.loss
        bare = AutoModel.from_pretrained(folder, trust_remote_code=True)
        assert type(bare).__name__ == "SlDetrModel"
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        assert type(processor).__name__ == "SlDetrImageProcessor" and processor.max_detections == 77
        assert type(processor).__module__.startswith("transformers_modules."), type(processor).__module__
        assert not any(name.startswith("sl_detr_hf") for name in sys.modules)
        print("REMOTE-OK")
        """
    )
    (tmp_path / "check.py").write_text(script)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "check.py"), str(tmp_path / "checkpoint"), str(tmp_path / "expected.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0 and "REMOTE-OK" in result.stdout, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def test_optimizer_steps_lower_the_loss_and_gradients_reach_everything():
    """Default switches (denoising, mixed query selection, look forward twice, rotated sampling)."""
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config()).train()
    pixel_values, labels = images(), rotated_labels()

    def probe() -> float:  # the same denoising noise before and after training
        torch.manual_seed(1)
        with torch.no_grad():
            return model(pixel_values, labels=labels).loss.item()

    before = probe()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for step in range(10):
        outputs = model(pixel_values, labels=labels)
        optimizer.zero_grad()
        outputs.loss.backward()
        if step == 0:
            assert set(outputs.loss_dict) >= {"loss_cls", "loss_bbox", "loss_sync", "d0.loss_sync", "enc.loss_sync"}
            assert len(outputs.auxiliary_outputs) == 1 and len(outputs.dn_outputs) == 2
            assert outputs.auxiliary_outputs[0]["pred_boxes"].shape == (2, 12, 5)
            grads = {name: model.get_parameter(name).grad for name, _ in model.named_parameters(remove_duplicate=False)}
            # (the box heads' first layers get gradient from the second step on: their last layer starts at zero)
            for name in ["angle_embed.0.weight", "angle_embed.1.weight",
                         "model.enc_angle_embed.layers.2.weight", "model.encoder.layers.0.mlp.fc1.weight",
                         "model.backbone.model.layer4.0.downsample.0.weight", "model.input_proj.0.0.weight",
                         "model.decoder.layers.1.mlp.fc2.weight", "class_embed.0.weight",
                         "bbox_embed.2.layers.2.weight", "model.query_selection.content_embed.weight",
                         "model.decoder.ref_point_head.mlp.layers.0.weight", "model.denoising_class_embed.weight"]:
                assert grads[name] is not None and grads[name].abs().sum() > 0, name
            assert all(g is None or torch.isfinite(g).all() for g in grads.values())
        optimizer.step()
    assert model.bbox_embed[2].layers[0].weight.grad.abs().sum() > 0
    after = probe()
    assert after < before * 0.95, (before, after)


def test_images_without_objects_train():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config()).train()
    empty = {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 5)}
    for labels in ([rotated_labels()[0], empty], [empty, dict(empty)]):
        model.zero_grad()
        outputs = model(images(), labels=labels)
        assert torch.isfinite(outputs.loss)
        outputs.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert model.class_embed[-2].weight.grad.abs().sum() > 0  # negatives still train the classifier


def test_horizontal_model_trains_with_its_own_loss():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config("horizontal")).train()
    labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"][:, :4], "size": torch.tensor([64, 64])}
              for t in rotated_labels()]
    outputs = model(images(), labels=labels)
    assert torch.isfinite(outputs.loss) and outputs.auxiliary_outputs[0]["pred_boxes"].shape == (2, 12, 4)
    outputs.loss.backward()
    assert model.model.encoder.layers[0].mlp.fc1.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config()).train()
    pixel_values, labels = images(), rotated_labels()
    torch.manual_seed(1)  # the same denoising queries in both runs
    model(pixel_values, labels=labels).loss.backward()
    reference = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation_checkpointing_enable
        model.gradient_checkpointing_enable()
    layer = model.model.encoder.layers[0]
    assert getattr(layer, "gradient_checkpointing", False) or model.is_activation_checkpointing
    torch.manual_seed(1)
    model(pixel_values, labels=labels).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads.keys() == reference.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference[name], atol=1e-6, rtol=1e-4, msg=name)


def test_transformers_resnet_backbone():
    backbone_config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                   out_features=["stage2", "stage3", "stage4"])
    config = SlDetrConfig(**TINY, backbone_config=backbone_config)
    model = SlDetrForObjectDetection(config).train()
    assert config.backbone_config.model_type == "resnet"
    outputs = model(images(), labels=rotated_labels())
    assert outputs.pred_boxes.shape == (2, 12, 5) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    # stem and stage 1 frozen, stages 2-4 trained, as for timm backbones
    for name, parameter in model.model.backbone.model.named_parameters():
        trained = name.startswith(("encoder.stages.1.", "encoder.stages.2.", "encoder.stages.3."))
        assert parameter.requires_grad == trained, name
    grad = model.model.backbone.model.encoder.stages[3].layers[0].shortcut.convolution.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_missing_size_defaults_to_the_unpadded_extent(monkeypatch):
    model = SlDetrForObjectDetection(tiny_config()).train()
    pixel_mask = torch.ones(2, 64, 64, dtype=torch.long)
    pixel_mask[0, 48:, :] = 0
    pixel_mask[1, :, 32:] = 0
    targets = prepare_targets(rotated_labels(), model.config, images(), pixel_mask)
    assert targets[0]["size"].tolist() == [48, 64] and targets[1]["size"].tolist() == [64, 32]
    targets = prepare_targets(rotated_labels(), model.config, images(), None)
    assert targets[0]["size"].tolist() == [64, 64]
    given = [dict(t, size=torch.tensor([100, 80])) for t in rotated_labels()]
    assert prepare_targets(given, model.config, images(), pixel_mask)[1]["size"].tolist() == [100, 80]


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rotated_model() -> SlDetrForObjectDetection:
    return SlDetrForObjectDetection(tiny_config()).train()


@pytest.mark.parametrize(
    ("pixel_values", "match"),
    [
        (torch.randn(3, 64, 64), r"shape \(batch_size, 3, height, width\)"),
        (torch.randn(2, 1, 64, 64), r"shape \(batch_size, 3, height, width\)"),
        (torch.randn(2, 4, 64, 64), r"got \(2, 4, 64, 64\)"),
    ],
)
def test_bad_pixel_values(rotated_model, pixel_values, match):
    with pytest.raises(ValueError, match=match):
        rotated_model(pixel_values)
    with pytest.raises(ValueError, match=match):
        rotated_model.model(pixel_values)


def test_bad_pixel_mask(rotated_model):
    with pytest.raises(ValueError, match="pixel_mask"):
        rotated_model(images(), pixel_mask=torch.ones(2, 32, 64, dtype=torch.long))


def _with(index: int, **changes) -> list[dict]:
    labels = rotated_labels()
    labels[index] = {**labels[index], **changes}
    return labels


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (_with(0, boxes=torch.rand(2, 4)), r"shape \(2, 5\) for box_type='rotated', got \(2, 4\)"),
        (_with(1, boxes=torch.rand(2, 5)), r"labels\[1\]\['boxes'\]"),
        (_with(0, class_labels=torch.tensor([1, 5])), r"must be in \[0, 5\)"),
        (_with(1, class_labels=torch.tensor([-1])), r"must be in \[0, 5\)"),
        (_with(0, class_labels=torch.tensor([1.0, 2.0])), "integer"),
        (_with(0, boxes=torch.tensor([[0.3, 0.3, 0.2, float("nan"), 0.0], [0.5, 0.5, 0.1, 0.1, 0.0]])), "NaN"),
        ([{"boxes": torch.rand(1, 5)}, rotated_labels()[1]], r"missing the key\(s\) \['class_labels'\]"),
        ([{"class_labels": torch.tensor([0])}, rotated_labels()[1]], r"\['boxes'\]"),
        (rotated_labels()[:1], "list of 2 dicts"),
        ({"class_labels": torch.tensor([0]), "boxes": torch.rand(1, 5)}, "list of 2 dicts"),
        ([rotated_labels()[0], "not a dict"], r"labels\[1\]` must be a dict"),
    ],
)
def test_bad_labels(rotated_model, labels, match):
    with pytest.raises(ValueError, match=match):
        rotated_model(images(), labels=labels)


def test_horizontal_rejects_rotated_boxes():
    model = SlDetrForObjectDetection(tiny_config("horizontal"))
    with pytest.raises(ValueError, match=r"\(2, 4\) for box_type='horizontal', got \(2, 5\)"):
        model(images(), labels=rotated_labels())
