"""`sl-detr train`'s defaults for a model trained from scratch: the recipe, the query count, the time budget."""

from __future__ import annotations

import json
import math

import pytest
from transformers import TrainingArguments

from sl_detr_hf import SlDetrConfig
from sl_detr_hf.commands._common import TimeLimitCallback
from sl_detr_hf.commands.train import (
    FROM_SCRATCH_RECIPE,
    DataArguments,
    ModelArguments,
    apply_recipe,
    augmentation,
    build_model,
    copy_paste_probability,
    most_objects_per_image,
)
from sl_detr_hf.data import load_dota, make_synthetic_dota


def _args(tmp_path, argv):
    from sl_detr_hf.commands._common import parse_dataclasses

    return parse_dataclasses("t", (ModelArguments, DataArguments, TrainingArguments),
                             ["--output_dir", str(tmp_path), *argv], return_given=True)


def test_from_scratch_recipe_fills_only_what_the_command_line_left_out(tmp_path):
    argv = ["--max_minutes", "15", "--learning_rate", "3e-4"]
    (model_args, data_args, training_args), given = _args(tmp_path, argv)
    chosen = apply_recipe(given, model_args, data_args, training_args)
    assert training_args.learning_rate == 3e-4 and "learning_rate" not in chosen  # given: kept
    assert training_args.per_device_train_batch_size == FROM_SCRATCH_RECIPE["per_device_train_batch_size"] == 4
    assert (training_args.warmup_steps, training_args.max_grad_norm, training_args.weight_decay) == (100, 0.1, 1e-4)
    # --max_minutes without a step or epoch limit: time ends training, the cosine spans the time (not the epochs)
    assert training_args.num_train_epochs >= 1e6 and "lr_scheduler_type" not in chosen


def test_a_fine_tune_gets_the_papers_rate_and_a_step_limit_keeps_a_step_cosine(tmp_path):
    argv = ["--model_name_or_path", "some/folder", "--max_steps", "50", "--max_minutes", "5"]
    (model_args, data_args, training_args), given = _args(tmp_path, argv)
    chosen = apply_recipe(given, model_args, data_args, training_args)
    assert chosen["learning_rate"] == training_args.learning_rate == 1e-4  # the paper's (README), not 5e-5
    assert training_args.per_device_train_batch_size == 8
    assert chosen["lr_scheduler_type"] == "cosine" and training_args.max_steps == 50
    assert training_args.num_train_epochs == 3.0


def test_tiny_queries_follow_the_most_crowded_training_image(tmp_path):
    make_synthetic_dota(tmp_path / "d", num_images=6, image_size=128, seed=0)
    dataset = load_dota(tmp_path / "d")
    most = most_objects_per_image(dataset)
    assert most == max(len(row["objects"]["category"]) for row in dataset) > 0
    assert build_model(ModelArguments(), ["a"], seed=0, most_objects=most).config.num_queries == 100
    crowded = build_model(ModelArguments(), ["a"], seed=0, most_objects=95).config
    assert crowded.num_queries == crowded.two_stage_num_proposals == crowded.max_detections == math.ceil(1.2 * 95)
    assert build_model(ModelArguments(num_queries=30), ["a"], seed=0, most_objects=95).config.num_queries == 30


def test_tiny_model_stages_and_config_overrides():
    config = build_model(ModelArguments(), ["a"], seed=0).config
    assert config.num_feature_levels == 2 and config.backbone_config.out_features == ["stage3", "stage4"]
    config = build_model(ModelArguments(backbone_stages="stage2,stage3,stage4", config="num_denoising=20,d_model=64"),
                         ["a"], seed=0).config
    assert config.num_feature_levels == 3 and (config.num_denoising, config.d_model) == (20, 64)


def test_a_new_tiny_model_gets_the_from_scratch_parts_unless_config_sets_them():
    """The dense encoder loss, the light stem and the space-to-depth shortcuts (BENCHMARKS.md "One recipe",
    "Space-to-depth shortcuts"): `sl-detr train`'s tiny model has them, --config takes them off; the presets (the
    demo's model) do not."""
    model = build_model(ModelArguments(), ["a"], seed=0)
    assert (model.config.dense_loss_coefficient, model.config.backbone_stem,
            model.config.backbone_downsample) == (1.0, "light", "space_to_depth")
    config = build_model(ModelArguments(config="dense_loss_coefficient=0,backbone_stem=resnet,"
                                               "backbone_downsample=strided"), ["a"], seed=0).config
    assert (config.dense_loss_coefficient, config.backbone_stem, config.backbone_downsample) == (0, "resnet",
                                                                                                 "strided")
    assert SlDetrConfig.tiny({0: "a"}).dense_loss_coefficient == 0 and SlDetrConfig().backbone_stem == "resnet"
    assert SlDetrConfig.tiny({0: "a"}).backbone_downsample == "strided"


@pytest.mark.parametrize(("pretrained", "given", "expected"),
                         [(False, None, 1.0), (True, None, 0.1), (False, 0.5, 0.5)])
def test_backbone_rate_is_full_from_scratch(pretrained, given, expected):
    from sl_detr_hf.commands.train import _low_lr_multiplier

    assert _low_lr_multiplier(ModelArguments(use_pretrained_backbone=pretrained, low_lr_multiplier=given)) == expected


def test_time_limited_run_shows_the_time_budget_and_writes_its_state(tmp_path, capsys):
    from sl_detr_hf.cli import main

    make_synthetic_dota(tmp_path / "train", num_images=4, image_size=96, seed=1)
    out = tmp_path / "run"
    assert main(["train", "--data_format", "dota", "--train_dir", str(tmp_path / "train"), "--image_size", "96",
                 "--max_minutes", "0.02", "--output_dir", str(out), "--save_strategy", "no",
                 "--config", "d_model=32,num_denoising=10", "--num_queries", "10"]) == 0
    err = capsys.readouterr().err
    assert "training (time budget)" in err and "/1 s" in err  # the bar counts seconds of the budget, not epochs
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] >= 1 and state["train_batch_size"] == 4
    assert (out / "model.safetensors").is_file()


def test_time_limit_callback_draws_a_bar_only_when_asked():
    from transformers import TrainerControl, TrainerState

    state = TrainerState()
    quiet, drawn = TimeLimitCallback(1.0), TimeLimitCallback(1.0, progress=True)
    for callback in (quiet, drawn):
        callback.on_train_begin(None, state, TrainerControl())
    assert quiet.bar is None and drawn.bar is not None and drawn.bar.total == 60
    drawn.on_train_end(None, state, TrainerControl())


@pytest.mark.parametrize(("native", "on_cpu", "argv", "expected"), [
    (True, True, [], {"bf16": True, "use_cpu": True}),   # a CPU with bf16 in hardware: bf16 autocast
    (False, True, [], {}),                               # emulated bf16 is slower than float32: left alone
    (True, False, [], {}),                               # a GPU: the user's choice
    (True, True, ["--bf16", "False"], {}),               # given: kept
    (True, True, ["--model_name_or_path", "some/folder"], {}),  # the recipe is the from-scratch model's
])
def test_bf16_on_a_cpu_that_computes_it_in_hardware(tmp_path, monkeypatch, native, on_cpu, argv, expected):
    from sl_detr_hf.training import mixed_precision

    monkeypatch.setattr(mixed_precision, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(mixed_precision, "trains_on_cpu", lambda use_cpu: on_cpu)
    (model_args, data_args, training_args), given = _args(tmp_path, ["--max_minutes", "1", *argv])
    chosen = apply_recipe(given, model_args, data_args, training_args)
    assert {key: chosen[key] for key in ("bf16", "use_cpu") if key in chosen} == expected
    assert training_args.bf16 is bool(expected)
    assert training_args.mixed_precision == ("bf16" if expected else "no")  # what the Accelerator reads


def test_native_bf16_detection_follows_torchs_cpu_checks(monkeypatch):
    import torch

    from sl_detr_hf.training.mixed_precision import cpu_has_native_bf16, trains_on_cpu

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not cpu_has_native_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_has_native_bf16()
    assert trains_on_cpu(True)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert not trains_on_cpu(False)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert trains_on_cpu(False)


@pytest.mark.parametrize(("argv", "expected"), [([], None), (["--scale_jitter", "0.25"], (0.75, 1.25)),
                                                (["--scale_jitter", "0"], None)])
def test_scale_jitter_reaches_the_augmentation(tmp_path, argv, expected):
    from torchvision.transforms import v2

    (_, data_args, _), _ = _args(tmp_path, argv)
    steps = augmentation(data_args, "rotated").transform.transforms
    zooms = [step.scale for step in steps if isinstance(step, v2.RandomAffine)]
    assert zooms == ([] if expected is None else [expected])
    assert any(isinstance(step, v2.RandomHorizontalFlip) for step in steps)  # the flips stay


@pytest.mark.parametrize(("argv", "box_type", "expected"), [
    ([], "rotated", 1.0), (["--copy_paste", "0.25"], "rotated", 0.25), (["--copy_paste", "0"], "rotated", 0.0),
    (["--augment", "False"], "rotated", 0.0), ([], "horizontal", 0.0)])
def test_copy_paste_is_on_by_default_with_the_augmentation_only(tmp_path, argv, box_type, expected):
    (_, data_args, _), _ = _args(tmp_path, argv)
    assert copy_paste_probability(data_args, augmentation(data_args, box_type)) == expected


@pytest.mark.parametrize(("argv", "box_type", "message"), [
    (["--scale_jitter", "1.0"], "rotated", r"in \[0, 1\)"),
    (["--scale_jitter", "0.5", "--augment", "False"], "rotated", "needs the augmentation"),
    (["--scale_jitter", "0.5"], "horizontal", "needs the augmentation"),
    (["--mosaic", "1.5"], "rotated", r"probability in \[0, 1\]"),
    (["--mosaic", "0.5", "--augment", "False"], "rotated", "--mosaic needs the augmentation"),
    (["--mosaic", "0.5"], "horizontal", "--mosaic needs the augmentation"),
    (["--copy_paste", "-0.1"], "rotated", r"--copy_paste must be a probability in \[0, 1\]"),
    (["--copy_paste", "0.5", "--augment", "False"], "rotated", "--copy_paste needs the augmentation"),
    (["--copy_paste", "0.5"], "horizontal", "--copy_paste needs the augmentation"),
])
def test_scale_jitter_that_would_not_apply_is_refused(tmp_path, argv, box_type, message):
    (_, data_args, _), _ = _args(tmp_path, argv)
    with pytest.raises(SystemExit, match=message):
        augmentation(data_args, box_type)


def test_no_augmentation_without_augment_or_for_horizontal_boxes(tmp_path):
    (_, data_args, _), _ = _args(tmp_path, ["--augment", "False"])
    assert augmentation(data_args, "rotated") is None
    (_, data_args, _), _ = _args(tmp_path, [])
    assert augmentation(data_args, "horizontal") is None
