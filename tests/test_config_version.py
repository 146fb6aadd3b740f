"""`SlDetrConfig` version 2: the paper's model by default, presets in the config, fewer fields, and folders saved by
version 1 (no `config_version`) loading and predicting exactly as before (`tests/fixtures/saved_v1`, written by
commit 91dbc22's code)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from PIL import Image
from safetensors.torch import load_file
from transformers import DeformableDetrConfig

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection, SlDetrImageProcessor
from sl_detr_hf.configuration_sl_detr import CONFIG_VERSION, DEFORMABLE_DETR_PARTS, NUMERICS, upgrade_config_v1

SAVED_V1 = Path(__file__).parent / "fixtures" / "saved_v1"
FOLDERS = ("tiny_rotated", "rhino_rotated")


def _synthetic_images() -> list[Image.Image]:
    """The fixture's input (`tests/fixtures/saved_v1/make_fixture.py`): two fixed images of different shapes."""
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((72, 108), (96, 64))]


def _predict(folder: Path, **config_overrides) -> tuple[dict[str, torch.Tensor], SlDetrForObjectDetection]:
    """Load `folder` (model and image processor) and predict on the fixture's input."""
    processor = SlDetrImageProcessor.from_pretrained(folder)
    model = SlDetrForObjectDetection.from_pretrained(folder, **config_overrides).eval()
    images = _synthetic_images()
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        out = model(inputs["pixel_values"], pixel_mask=inputs["pixel_mask"])
    got = {"pixel_values_sum": inputs["pixel_values"].double().sum((1, 2, 3)),
           "pixel_mask_sum": inputs["pixel_mask"].sum((1, 2))}
    for key in ("logits", "pred_boxes", "enc_outputs_class", "enc_outputs_coord_logits"):
        got[key] = getattr(out, key)
    sizes = torch.tensor([[im.height, im.width] for im in images])
    for b, result in enumerate(processor.post_process_object_detection(out, threshold=0.0, target_sizes=sizes)):
        for key in ("scores", "labels", "boxes", "rboxes"):
            got[f"{b}.{key}"] = result[key]
    return got, model


# ------------------------------------------------------------------------------------ folders of version 1


@pytest.mark.parametrize("name", FOLDERS)
def test_a_version_1_folder_loads_and_predicts_exactly_as_before(name):
    saved = json.loads((SAVED_V1 / name / "config.json").read_text())
    assert "config_version" not in saved and "decoder_output_norm" in saved  # written by the version-1 code
    reference = load_file(str(SAVED_V1 / "reference.safetensors"))
    got, model = _predict(SAVED_V1 / name)
    torch.testing.assert_close(got["pixel_values_sum"], reference["pixel_values_sum"], rtol=1e-9, atol=0)
    assert torch.equal(got["pixel_mask_sum"], reference["pixel_mask_sum"])
    for key in ("logits", "pred_boxes", "enc_outputs_class", "enc_outputs_coord_logits", "0.scores", "1.scores",
                "0.labels", "1.labels", "0.boxes", "1.boxes", "0.rboxes", "1.rboxes"):
        # equal on the machine that wrote the fixture; other CPUs, and the batch norms folded into their convolutions
        # since (conv_norm_folding_sl_detr.py), differ in the last bits: a few float32 ulps of pixel coordinates near
        # 100 (another numerics: > 1e-3)
        torch.testing.assert_close(got[key], reference[f"{name}.{key}"], rtol=1e-6, atol=1e-5, msg=key)
    expected = "rhino" if name == "rhino_rotated" else "deformable_detr"
    assert (model.config.numerics, model.config.config_version) == (expected, CONFIG_VERSION)
    assert (model.config.position_embedding_temperature, model.config.angle_start) == (
        (20, 0) if expected == "rhino" else (10000, -90))


def test_the_fixture_tells_the_numerics_apart():
    """The comparison above can fail: the tiny folder with RHINO's numerics predicts other values."""
    reference = load_file(str(SAVED_V1 / "reference.safetensors"))
    got, _ = _predict(SAVED_V1 / "tiny_rotated", numerics="rhino")
    assert float((got["logits"] - reference["tiny_rotated.logits"]).abs().max()) > 1e-3


def test_a_version_1_folder_saved_again_is_version_2_and_predicts_the_same(tmp_path):
    got, model = _predict(SAVED_V1 / "rhino_rotated")
    model.save_pretrained(tmp_path)
    shutil.copy(SAVED_V1 / "rhino_rotated" / "preprocessor_config.json", tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["config_version"] == CONFIG_VERSION and saved["numerics"] == "rhino"
    assert not {"decoder_output_norm", "num_hybrid_queries", "encoder_loss_on_topk"} & set(saved)
    again, _ = _predict(tmp_path)
    for key, value in got.items():
        assert torch.equal(again[key], value), key


def test_a_version_1_folder_with_a_deleted_training_switch_loads_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "hybrid"
    shutil.copytree(SAVED_V1 / "tiny_rotated", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(num_hybrid_queries=60, hybrid_k=4, match_once_per_step=True)
    (folder / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        got, model = _predict(folder)
    assert "num_hybrid_queries" in caplog.text and "predictions unchanged" in caplog.text
    reference = load_file(str(SAVED_V1 / "reference.safetensors"))
    torch.testing.assert_close(got["logits"], reference["tiny_rotated.logits"], rtol=0, atol=1e-5)
    assert not hasattr(model.config, "num_hybrid_queries")


@pytest.mark.parametrize(("change", "message"), [
    ({"rotated_sampling": "geometric"}, "geometric"),
    ({"decoder_output_norm": True}, "mixes RHINO's numerics"),  # one RHINO switch among Deformable DETR's
    ({"query_position_temperature": 20}, "mixes RHINO's numerics"),
])
def test_a_version_1_config_that_version_2_cannot_compute_is_refused(change, message):
    config = json.loads((SAVED_V1 / "tiny_rotated" / "config.json").read_text())
    with pytest.raises(ValueError, match=message):
        SlDetrConfig.from_dict({**config, **change})


def test_version_1_defaults_fill_absent_switches():
    """A version-1 config written before the numerics switches existed (no such keys) is Deformable DETR's."""
    upgraded = upgrade_config_v1({"box_type": "rotated", "mixed_query_selection": False,
                                  "encoder_loss_on_topk": False})
    assert upgraded["numerics"] == "deformable_detr" and upgraded["config_version"] == CONFIG_VERSION
    assert {key: upgraded[key] for key in NUMERICS["deformable_detr"]} == NUMERICS["deformable_detr"]
    assert "encoder_loss_on_topk" not in upgraded


def test_a_config_of_a_newer_version_is_refused():
    with pytest.raises(ValueError, match="newer sl_detr_hf"):
        SlDetrConfig.from_dict({"config_version": CONFIG_VERSION + 1})


# ------------------------------------------------------------------------------------------- the fields


def test_fields_beyond_deformable_detrs_are_at_most_40():
    """36 after the redesign (issue 26), then the four parts for training from scratch in minutes (issue 24:
    `dense_loss_coefficient`, `value_only_levels`, `backbone_stem`, `backbone_downsample`; docs/architecture.md)."""
    inherited = {field.name for field in dataclasses.fields(DeformableDetrConfig)}
    new = [field.name for field in dataclasses.fields(SlDetrConfig) if field.name not in inherited]
    assert len(new) <= 40, new
    deleted = {"one_to_many_k", "rank_weights", "num_hybrid_queries", "hybrid_k", "hybrid_loss_coefficient",
               "match_once_per_step", "encoder_loss_on_topk", "query_position_temperature",
               "query_position_valid_ratios", "decoder_output_norm", "class_aware_topk", "decoder_refine_eps",
               "mask_invalid_proposal_angle", "rotated_sampling_in_pixels"}
    assert not deleted & set(new)


def test_the_default_is_the_papers_model_with_rhinos_numerics():
    config = SlDetrConfig()
    assert config.to_dict() == SlDetrConfig.paper().to_dict()
    assert (config.numerics, config.position_embedding_temperature, config.position_embedding_offset,
            config.angle_start) == ("rhino", 20, 0.0, 0)
    assert (config.use_sync_loc, config.use_quality_cls, config.num_denoising, config.mixed_query_selection,
            config.look_forward_twice, config.rotated_sampling) == (True, True, 100, True, True, "rhino")
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.num_queries,
            config.num_feature_levels, config.encoder_ffn_dim, config.dropout) == (256, 6, 6, 900, 4, 2048, 0.0)


def test_numerics_set_the_defaults_of_the_fields_converters_set_one_by_one():
    assert SlDetrConfig(numerics="deformable_detr").position_embedding_temperature == 10000
    config = SlDetrConfig(numerics="deformable_detr", position_embedding_temperature=20, angle_start=0)
    assert (config.position_embedding_temperature, config.position_embedding_offset, config.angle_start) == (
        20, -0.5, 0)
    with pytest.raises(StrictDataclassClassValidationError, match="numerics"):
        SlDetrConfig(numerics="mmdet")


def test_presets():
    deformable = SlDetrConfig.deformable_detr(num_queries=300, two_stage_num_proposals=300)
    assert {key: getattr(deformable, key) for key in DEFORMABLE_DETR_PARTS} == DEFORMABLE_DETR_PARTS
    assert (deformable.numerics, deformable.num_queries, deformable.angle_start) == ("deformable_detr", 300, -90)
    names = {0: "a", 1: "b"}
    tiny = SlDetrConfig.tiny(names, d_model=64, layers=1, num_queries=30, backbone_stages=("stage3", "stage4"),
                             num_denoising=50)
    assert (tiny.num_labels, tiny.label2id, tiny.d_model, tiny.encoder_ffn_dim, tiny.decoder_layers,
            tiny.num_queries, tiny.max_detections, tiny.num_feature_levels, tiny.num_denoising) == (
        2, {"a": 0, "b": 1}, 64, 256, 1, 30, 30, 2, 50)
    assert (tiny.numerics, tiny.backbone_norm, tiny.backbone_frozen_stages, tiny.query_selection_nms) == (
        "deformable_detr", "batch_norm", -1, 0.6)
    assert tiny.backbone_config.out_features == ["stage3", "stage4"]
    with pytest.raises(ValueError, match="num_feature_levels"):
        SlDetrConfig.tiny(names, num_feature_levels=1)


@pytest.mark.parametrize(("field", "value"), [("num_hybrid_queries", 60), ("one_to_many_k", 2),
                                              ("match_once_per_step", True), ("rank_weights", [1.0, 0.5])])
def test_deleted_switches_are_refused_unless_they_ask_for_nothing(field, value):
    with pytest.raises(ValueError, match=f"`{field}` was deleted"):
        SlDetrConfig(**{field: value})
    neutral = {"num_hybrid_queries": 0, "one_to_many_k": 1, "match_once_per_step": False, "rank_weights": None}
    assert not hasattr(SlDetrConfig(**{field: neutral[field]}), field)


def test_folded_switches_are_refused_unless_they_agree():
    assert SlDetrConfig(decoder_output_norm=True, class_aware_topk=True).numerics == "rhino"
    with pytest.raises(ValueError, match="folded into `numerics`"):
        SlDetrConfig(decoder_output_norm=False)
    with pytest.raises(ValueError, match="folded into `mixed_query_selection`"):
        SlDetrConfig(encoder_loss_on_topk=False)
    assert not SlDetrConfig(mixed_query_selection=False, encoder_loss_on_topk=False).mixed_query_selection


@pytest.mark.parametrize("field", ["giou_cost", "mask_loss_coefficient", "dice_loss_coefficient",
                                   "giou_loss_coefficient", "eos_coefficient"])
def test_inherited_fields_sl_detr_does_not_read_are_refused(field):
    default = getattr(DeformableDetrConfig(), field)
    assert getattr(SlDetrConfig(**{field: default}), field) == default
    with pytest.raises(StrictDataclassClassValidationError, match=f"`{field}` is not read by SL-DETR"):
        SlDetrConfig(**{field: default + 1})
