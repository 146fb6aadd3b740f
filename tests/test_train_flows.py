"""`sl-detr train` keeps what the user asked: options in any spelling or file, class ids when fine-tuning,
resuming a time-limited run after a kill, the same weights from the same seed, one evaluation at the end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from sl_detr_hf.cli import main
from sl_detr_hf.commands.train import last_complete_checkpoint
from sl_detr_hf.data import make_synthetic_dota
from sl_detr_hf.data.synthetic import SYNTHETIC_CLASSES

SMALL = ["--image_size", "64", "--config", "d_model=32,num_denoising=10", "--num_queries", "10", "--use_cpu",
         "--report_to", "none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dota(tmp_path_factory.mktemp("data") / "train", num_images=4, image_size=64, seed=1,
                               max_objects=3)


def _captured_arguments(monkeypatch, argv):
    from sl_detr_hf.commands import train

    seen = {}
    monkeypatch.setattr(train, "run_train", lambda m, d, t: seen.update(model=m, data=d, training=t))
    assert main(["train", *argv]) == 0
    return seen["training"]


@pytest.mark.parametrize("spelling", ["yaml", "json", "dashed", "equals"])
def test_the_users_options_win_over_the_recipe_in_every_spelling(monkeypatch, tmp_path, spelling):
    """`apply_recipe` looked for `--name` tokens in argv: a file or `--learning-rate` lost to the recipe."""
    options = {"output_dir": str(tmp_path / "run"), "max_minutes": 15, "learning_rate": 0.0005,
               "per_device_train_batch_size": 2, "dataloader_num_workers": 1}
    if spelling in ("yaml", "json"):
        path = tmp_path / f"args.{spelling}"
        path.write_text(json.dumps(options) if spelling == "json" else
                        "".join(f"{k}: {v}\n" for k, v in options.items()))
        argv = [str(path)]
    elif spelling == "dashed":
        argv = [a for k, v in options.items() for a in (f"--{k.replace('_', '-')}", str(v))]
    else:
        argv = [f"--{k}={v}" for k, v in options.items()]
    args = _captured_arguments(monkeypatch, argv)
    assert (args.learning_rate, args.per_device_train_batch_size, args.dataloader_num_workers) == (0.0005, 2, 1)
    assert (args.warmup_steps, args.max_grad_norm) == (100, 0.1)  # what was not given: the recipe's
    assert args.num_train_epochs >= 1e6  # --max_minutes without a step limit: time ends the run


def test_a_fine_tune_gets_the_papers_rate_unless_given(monkeypatch, tmp_path):
    base = ["--output_dir", str(tmp_path), "--model_name_or_path", str(tmp_path / "m")]
    assert _captured_arguments(monkeypatch, base).learning_rate == 1e-4
    assert _captured_arguments(monkeypatch, [*base, "--learning-rate", "3e-5"]).learning_rate == 3e-5


def _tiny_folder(tmp_path: Path, names: list[str]) -> Path:
    from sl_detr_hf.commands.train import ModelArguments, build_model

    model = build_model(ModelArguments(config="d_model=32,num_denoising=10", num_queries=10), names, seed=0)
    folder = tmp_path / "base"
    model.save_pretrained(folder)
    return folder


def _rows(folder: Path) -> tuple[dict[str, torch.Tensor], dict[int, str]]:
    """Class name -> its rows of every classification head (weights and biases), and the id2label."""
    weights = load_file(folder / "model.safetensors")
    id2label = {int(k): v for k, v in json.loads((folder / "config.json").read_text())["id2label"].items()}
    heads = sorted(k for k in weights if "class_embed" in k)
    return ({name: torch.cat([weights[k][i].flatten() for k in heads]) for i, name in id2label.items()},
            id2label)


def test_fine_tuning_keeps_each_class_under_its_name(tmp_path, data):
    """The data's classes.txt lists the model's classes in another order, plus one class the model lacks."""
    base = _tiny_folder(tmp_path, list(SYNTHETIC_CLASSES))
    reordered = tmp_path / "reordered"
    reordered.mkdir()
    for sub in ("images", "labelTxt"):
        (reordered / sub).symlink_to(data / sub)
    (reordered / "classes.txt").write_text("\n".join([*reversed(SYNTHETIC_CLASSES), "zebra"]) + "\n")
    out = tmp_path / "tuned"
    assert main(["train", "--model_name_or_path", str(base), "--data_format", "dota", "--train_dir", str(reordered),
                 "--max_steps", "1", "--learning_rate", "1e-7", "--output_dir", str(out), "--save_strategy", "no",
                 *SMALL[:2], "--use_cpu", "--report_to", "none"]) == 0
    before, base_labels = _rows(base)
    after, labels = _rows(out)
    assert labels == {**base_labels, len(SYNTHETIC_CLASSES): "zebra"}  # ids kept, the new class appended
    for name in SYNTHETIC_CLASSES:
        assert torch.allclose(after[name], before[name], atol=1e-5), name
    denoising = load_file(out / "model.safetensors")["model.denoising_class_embed.weight"]
    assert denoising.shape[0] == len(SYNTHETIC_CLASSES) + 2  # a row per class and the padding row

    fresh = tmp_path / "fresh"
    assert main(["train", "--model_name_or_path", str(base), "--data_format", "dota", "--train_dir", str(reordered),
                 "--max_steps", "1", "--learning_rate", "1e-7", "--output_dir", str(fresh), "--save_strategy", "no",
                 "--new_class_heads", "--image_size", "64", "--use_cpu", "--report_to", "none"]) == 0
    rows, labels = _rows(fresh)
    assert list(labels.values()) == [*reversed(SYNTHETIC_CLASSES), "zebra"]  # asked for: the data's order, afresh
    assert not torch.allclose(rows[SYNTHETIC_CLASSES[0]], before[SYNTHETIC_CLASSES[0]], atol=1e-3)


def test_map_class_heads_moves_rows_by_name():
    from _tiny_sl_detr import tiny_model

    from sl_detr_hf.class_mapping import map_class_heads, merge_class_names

    model = tiny_model()
    names = list(model.config.id2label.values())
    head = model.model.decoder.class_embed[0]
    old_weight, old_bias = head.weight.detach().clone(), head.bias.detach().clone()
    merged, added = merge_class_names(names, [names[1], "new", names[0]])
    assert merged == [*names, "new"] and added == ["new"]
    assert map_class_heads(model, [names[1], "new", names[0]]) == ["new"]
    assert torch.equal(head.weight[0], old_weight[1]) and torch.equal(head.weight[2], old_weight[0])
    assert torch.equal(head.bias[[0, 2]], old_bias[[1, 0]])
    assert head.bias[1].item() == pytest.approx(-4.59512, abs=1e-5)  # the focal prior
    assert model.config.id2label == {0: names[1], 1: "new", 2: names[0]} and model.config.num_labels == 3
    assert all(m.out_features == 3 for m in model.model.decoder.class_embed)


def test_a_run_begun_with_other_model_defaults_resumes_with_its_own_model(tmp_path, data):
    """The tiny model's defaults changed (dense encoder loss, light stem, angle range chosen from the data,
    space-to-depth shortcuts): a run begun before (here: the old parts, given by --config, its config.json as the
    release before `backbone_downsample` wrote it) continues with the model it began with, from its checkpoint's
    config.json, and not with this command's model, whose stem and shortcuts have other weights."""
    out = tmp_path / "run"
    args = ["train", "--data_format", "dota", "--train_dir", str(data), "--output_dir", str(out), "--save_steps", "1",
            "--image_size", "64", "--num_queries", "10", "--use_cpu", "--report_to", "none"]
    old = ("d_model=32,num_denoising=10,dense_loss_coefficient=0,backbone_stem=resnet,angle_start=-90,"
           "backbone_downsample=strided")
    assert main([*args, "--max_steps", "1", "--config", old]) == 0
    first = load_file(out / "checkpoint-1" / "model.safetensors")
    # as a release before `backbone_downsample` wrote it (its shortcuts were the strided ones)
    saved = out / "checkpoint-1" / "config.json"
    written = json.loads(saved.read_text())
    assert written.pop("backbone_downsample") == "strided"
    saved.write_text(json.dumps(written))
    assert main([*args, "--max_steps", "2", "--config", "d_model=32,num_denoising=10"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["backbone_stem"], config["dense_loss_coefficient"], config["angle_start"],
            config["backbone_downsample"]) == ("resnet", 0.0, -90, "strided")
    final = load_file(out / "model.safetensors")
    assert final.keys() == first.keys() and any(not torch.equal(final[k], first[k]) for k in first)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2


def test_resuming_with_other_classes_is_refused(tmp_path, data):
    from sl_detr_hf.commands.train import model_to_resume

    out = tmp_path / "run"
    assert main(["train", "--data_format", "dota", "--train_dir", str(data), "--max_steps", "1", "--save_steps", "1",
                 "--output_dir", str(out), *SMALL]) == 0
    assert model_to_resume(str(out / "checkpoint-1"), list(SYNTHETIC_CLASSES), seed=0) is not None
    with pytest.raises(SystemExit, match="trained on the classes"):
        model_to_resume(str(out / "checkpoint-1"), ["car", "person"], seed=0)
    assert model_to_resume(str(tmp_path), ["car"], seed=0) is None  # no config.json: the command's model


def test_the_same_seed_gives_the_same_weights(tmp_path, data):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert main(["train", "--data_format", "dota", "--train_dir", str(data), "--max_steps", "2", "--seed", "3",
                     "--output_dir", str(out), "--save_strategy", "no", *SMALL]) == 0
        runs.append(load_file(out / "model.safetensors"))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize(("option", "plain"), [(["--mosaic", "1.0"], []),
                                               (["--copy_paste", "1.0"], ["--copy_paste", "0"])])
def test_a_mosaic_or_copy_paste_run_repeats_with_its_seed_and_differs_from_a_plain_one(tmp_path, data, option,
                                                                                      plain):
    """--mosaic / --copy_paste reach the training data (the weights differ from a plain run's) and draw their rows
    from torch's seeded generator in the data-loader workers (the same seed, the same weights)."""
    runs = {}
    for name, extra in (("a", option), ("b", option), ("plain", plain)):
        out = tmp_path / name
        assert main(["train", "--data_format", "dota", "--train_dir", str(data), "--max_steps", "2", "--seed", "3",
                     "--output_dir", str(out), "--save_strategy", "no", "--dataloader_num_workers", "1", *SMALL,
                     *extra]) == 0
        runs[name] = load_file(out / "model.safetensors")
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert any(not torch.equal(runs["a"][k], runs["plain"][k]) for k in runs["a"])


def test_a_time_limited_run_evaluates_once(monkeypatch, tmp_path, data):
    from sl_detr_hf.training import SlDetrTrainer

    calls = []
    original = SlDetrTrainer.evaluate
    monkeypatch.setattr(SlDetrTrainer, "evaluate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert main(["train", "--data_format", "dota", "--train_dir", str(data), "--val_dir", str(data),
                 "--max_minutes", "0.02", "--output_dir", str(tmp_path / "run"), "--save_strategy", "no",
                 *SMALL]) == 0
    assert len(calls) == 1
    assert "eval_mAP" in json.loads((tmp_path / "run" / "final_metrics.json").read_text())


def test_the_allocator_setting_is_for_cpu_training_only(monkeypatch):
    from sl_detr_hf.commands import train
    from sl_detr_hf.training import allocator

    applied = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: applied.append(1) or True)
    assert not train.keep_freed_memory_for_training(SimpleNamespace(device=torch.device("cuda", 0)))
    assert train.keep_freed_memory_for_training(SimpleNamespace(device=torch.device("cpu")))
    assert applied == [1]


def _spent(checkpoint: Path) -> float | None:
    from sl_detr_hf.training.time_budget import spent_seconds_in_checkpoint

    return spent_seconds_in_checkpoint(checkpoint)


@pytest.mark.slow
def test_a_time_limited_run_resumes_after_a_kill_with_what_is_left(tmp_path, data):
    """The resume failed on the pickled clock in scheduler.pt; had it loaded, the budget started afresh."""
    budget_s = 30.0
    out = tmp_path / "run"
    argv = ["train", "--data_format", "dota", "--train_dir", str(data), "--max_minutes", str(budget_s / 60),
            "--save_steps", "2", "--warmup_steps", "0", "--logging_steps", "1", "--output_dir", str(out), *SMALL]
    process = subprocess.Popen([sys.executable, "-c", f"from sl_detr_hf.cli import main; main({argv!r})"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_at = None
    try:
        deadline = time.monotonic() + 240
        while killed_at is None and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            for checkpoint in out.glob("checkpoint-*"):
                spent = _spent(checkpoint)
                if spent is not None and spent >= 10.0 and (checkpoint / "model.safetensors").is_file():
                    process.kill()  # kill -9
                    killed_at = spent
                    break
    finally:
        process.kill()
        process.wait()
    assert killed_at is not None, "the first run wrote no checkpoint after 10 s of training"
    # the kill may land while a newer checkpoint is half written: the resume takes the last complete one
    last = Path(last_complete_checkpoint(out))
    spent_before, step_before = _spent(last), json.loads((last / "trainer_state.json").read_text())["global_step"]

    assert main([*argv[:-len(SMALL)], "--resume_from_checkpoint", "last", *SMALL]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    history = state["log_history"]
    runtime = next(h["train_runtime"] for h in reversed(history) if "train_runtime" in h)
    final = Path(last_complete_checkpoint(out))
    assert _spent(final) >= budget_s and state["global_step"] > step_before
    # what was left (plus the last step and the save), not a fresh budget (>= budget_s)
    assert runtime < budget_s - 0.5 * spent_before
    # the learning rate continues on its cosine (a fresh budget would jump back to the peak, 1e-3)
    rates = [h["learning_rate"] for h in history if "learning_rate" in h]
    steps = [h["step"] for h in history if "learning_rate" in h]
    assert steps[0] < step_before < steps[-1]  # the log of both runs
    assert all(later <= earlier + 1e-12 for earlier, later in zip(rates, rates[1:]))


@pytest.mark.parametrize("bf16", ["True", "False"])
def test_bf16_on_the_cpu_trains_float32_weights_and_resumes(tmp_path, data, bf16):
    """bf16 autocast (the recipe's on a CPU with bf16 in hardware, emulated elsewhere) and float32 alike: the saved
    weights are float32 and finite, the logged losses finite, and a run resumed from its checkpoint continues in the
    precision asked."""
    from sl_detr_hf import SlDetrForObjectDetection

    out = tmp_path / "run"
    argv = ["train", "--data_format", "dota", "--train_dir", str(data), "--save_steps", "2", "--logging_steps", "1",
            "--output_dir", str(out), "--bf16", bf16, *SMALL]
    assert main([*argv, "--max_steps", "2"]) == 0
    assert main([*argv, "--max_steps", "3", "--resume_from_checkpoint", "last"]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert state["global_step"] == 3 and len(losses) == 3 and all(map(math.isfinite, losses))
    weights = load_file(out / "model.safetensors")
    assert {w.dtype for w in weights.values() if w.is_floating_point()} == {torch.float32}
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    args = torch.load(out / "training_args.bin", weights_only=False)
    assert args.bf16 is (bf16 == "True")
    assert SlDetrForObjectDetection.from_pretrained(out).dtype == torch.float32


@pytest.mark.parametrize("how", ["recipe", "given", "off"])
def test_the_training_forward_runs_under_the_precision_chosen(monkeypatch, tmp_path, data, how):
    """bf16 chosen by the recipe (a CPU with bf16 in hardware) or given reaches the Trainer: the training forward
    runs under bf16 autocast (setting `bf16` after `TrainingArguments.__post_init__` alone did not: the recipe's
    bf16 was logged and silently not used); `--bf16 False` keeps float32."""
    from sl_detr_hf import SlDetrForObjectDetection
    from sl_detr_hf.training import mixed_precision

    monkeypatch.setattr(mixed_precision, "cpu_has_native_bf16", lambda: True)
    seen = []
    losses = SlDetrForObjectDetection._losses

    def spy(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return losses(self, *args, **kwargs)

    monkeypatch.setattr(SlDetrForObjectDetection, "_losses", spy)
    given = {"recipe": [], "given": ["--bf16", "True"], "off": ["--bf16", "False"]}[how]
    assert main(["train", "--data_format", "dota", "--train_dir", str(data), "--max_steps", "2",
                 "--output_dir", str(tmp_path), "--save_strategy", "no", *given, *SMALL]) == 0
    assert len(seen) == 2 and set(seen) == {how != "off"}


def _per_image(folder: Path) -> bool:
    return json.loads((folder / "preprocessor_config.json").read_text())["normalize_per_image"]


def test_per_image_normalization_stays_with_its_model_through_resume_and_fine_tuning(tmp_path, data, caplog):
    """A run trained on images standardized one by one resumes with them (a different value given is refused) and
    a folder fine-tuned from it keeps them unless told otherwise: a model never silently meets other inputs."""
    out = tmp_path / "run"
    args = ["train", "--data_format", "dota", "--train_dir", str(data), "--output_dir", str(out), "--save_steps", "1",
            *SMALL]
    assert main([*args, "--max_steps", "1", "--normalize_per_image", "True"]) == 0
    assert _per_image(out) and _per_image(out / "checkpoint-1")
    plain = tmp_path / "plain"
    assert main(["train", "--data_format", "dota", "--train_dir", str(data), "--output_dir", str(plain),
                 "--max_steps", "1", "--save_strategy", "no", *SMALL]) == 0
    assert not _per_image(plain)  # off unless asked for
    with pytest.raises(SystemExit, match="trained with --normalize_per_image True"):
        main([*args, "--max_steps", "2", "--normalize_per_image", "False"])
    assert main([*args, "--max_steps", "2"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2 and _per_image(out)

    tune = ["train", "--model_name_or_path", str(out), "--data_format", "dota", "--train_dir", str(data),
            "--max_steps", "1", "--save_strategy", "no", "--image_size", "64", "--use_cpu", "--report_to", "none"]
    assert main([*tune, "--output_dir", str(tmp_path / "kept")]) == 0
    assert _per_image(tmp_path / "kept")
    with caplog.at_level("WARNING", logger="sl_detr_hf.commands.train"):
        assert main([*tune, "--output_dir", str(tmp_path / "changed"), "--normalize_per_image", "False"]) == 0
    assert not _per_image(tmp_path / "changed")
    assert "fine-tuning with False changes its inputs" in caplog.text
    # a folder saved before the option existed has no such key: ImageNet's normalization, as it was trained
    config = json.loads((out / "preprocessor_config.json").read_text())
    del config["normalize_per_image"]
    (out / "preprocessor_config.json").write_text(json.dumps(config))
    assert main([*tune, "--output_dir", str(tmp_path / "old")]) == 0
    assert not _per_image(tmp_path / "old")


def _data_options_used(monkeypatch) -> list[dict]:
    """Spy: the input size, zoom range, mosaic and copy-paste probabilities each `prepare_dataset` of training got."""
    from torchvision.transforms import v2

    from sl_detr_hf import training

    seen, prepare = [], training.prepare_dataset

    def spy(raw, processor, box_type, augment=None, **kwargs):
        if augment is not None or kwargs.get("mosaic") or kwargs.get("copy_paste"):
            zooms = [step.scale for step in getattr(augment.transform, "transforms", [])
                     if isinstance(step, v2.RandomAffine)]
            seen.append({"image_size": processor.size["longest_edge"], "scale_range": (zooms or [None])[0],
                         "mosaic": kwargs.get("mosaic"),
                         "copy_paste": kwargs.get("copy_paste")})
        return prepare(raw, processor, box_type, augment, **kwargs)

    monkeypatch.setattr(training, "prepare_dataset", spy)
    return seen


def test_a_run_resumed_with_a_shorter_command_keeps_its_data_options(monkeypatch, tmp_path, data, caplog):
    """The data options lived on the command line only: resumed without `--mosaic 0.5 --image_size 80 ...`, a run
    went on with the defaults (no mosaic, 1024 px). Now the checkpoint's `run_options.json` fills in what the command
    leaves out; what it gives wins, with a warning; a checkpoint of the previous release resumes as before."""
    from sl_detr_hf.training.run_options import RUN_OPTIONS_FILE

    seen = _data_options_used(monkeypatch)
    out = tmp_path / "run"
    common = ["train", "--data_format", "dota", "--train_dir", str(data), "--output_dir", str(out), "--save_steps", "1",
              "--config", "d_model=32,num_denoising=10", "--num_queries", "10", "--use_cpu", "--report_to", "none"]
    asked = ["--image_size", "80", "--mosaic", "0.5", "--copy_paste", "0.25", "--scale_jitter", "0.1"]
    assert main([*common, *asked, "--max_steps", "1"]) == 0
    recorded = json.loads((out / "checkpoint-1" / RUN_OPTIONS_FILE).read_text())
    assert recorded == {"max_minutes": None, "image_size": 80, "augment": True, "scale_jitter": 0.1, "mosaic": 0.5,
                        "copy_paste": 0.25, "repeat_factor_threshold": 0.0}
    assert json.loads((out / RUN_OPTIONS_FILE).read_text()) == recorded

    assert main([*common, "--max_steps", "2"]) == 0  # the shorter command
    assert seen[1] == seen[0] == {"image_size": 80, "scale_range": (0.9, 1.1), "mosaic": 0.5, "copy_paste": 0.25}
    assert json.loads((out / "checkpoint-2" / RUN_OPTIONS_FILE).read_text()) == recorded
    assert json.loads((out / "preprocessor_config.json").read_text())["size"]["longest_edge"] == 80

    with caplog.at_level("WARNING", logger="sl_detr_hf.training.run_options"):
        assert main([*common, "--max_steps", "3", "--mosaic", "0"]) == 0  # given: it wins, and says so
    assert seen[2] == {**seen[0], "mosaic": 0.0}
    assert "--mosaic 0.0 given: the run trained with 0.5" in caplog.text
    assert json.loads((out / "checkpoint-3" / RUN_OPTIONS_FILE).read_text())["mosaic"] == 0.0

    assert main([*common, "--max_steps", "4", "--augment", "False"]) == 0  # the options that need it go with it
    assert json.loads((out / "checkpoint-4" / RUN_OPTIONS_FILE).read_text()) == {
        **recorded, "augment": False, "scale_jitter": 0.0, "mosaic": 0.0, "copy_paste": 0.0}

    for checkpoint in out.glob("checkpoint-*"):  # a run of the previous release: the command's options, as before
        (checkpoint / RUN_OPTIONS_FILE).unlink()
    seen.clear()
    assert main([*common, "--max_steps", "5", "--image_size", "64"]) == 0
    assert seen == [{"image_size": 64, "scale_range": None, "mosaic": 0.0, "copy_paste": 1.0}]


def test_an_unreadable_run_options_file_is_refused_with_its_path(tmp_path, data):
    from sl_detr_hf.training.run_options import RUN_OPTIONS_FILE

    out = tmp_path / "run"
    argv = ["train", "--data_format", "dota", "--train_dir", str(data), "--output_dir", str(out), "--save_steps", "1",
            *SMALL]
    assert main([*argv, "--max_steps", "1"]) == 0
    (out / "checkpoint-1" / RUN_OPTIONS_FILE).write_text("{not json")
    with pytest.raises(SystemExit, match=r"checkpoint-1/run_options.json: cannot read"):
        main([*argv, "--max_steps", "2"])


def test_a_timed_run_resumed_without_its_budget_keeps_it(tmp_path, data):
    """Resumed without `--max_minutes`, a finished timed run trained three more epochs on a cosine over steps; now it
    keeps its budget (here spent: refused, nothing left). `--max_steps N` given instead trains to step N."""
    out = tmp_path / "run"
    argv = ["train", "--data_format", "dota", "--train_dir", str(data), "--output_dir", str(out), *SMALL]
    assert main([*argv, "--max_minutes", "0.01"]) == 0
    step = json.loads((out / "trainer_state.json").read_text())["global_step"]
    with pytest.raises(SystemExit, match="nothing left to train"):
        main(argv)
    assert main([*argv, "--max_steps", str(step + 1)]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == step + 1
