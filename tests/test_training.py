"""Training with Trainer end to end on tiny configs: param groups, train/eval/save/reload, CLI, 2 processes, demo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForObjectDetection

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection, SlDetrImageProcessor
from sl_detr_hf.cli import DemoArguments, main, run_demo, tiny_config_kwargs
from sl_detr_hf.commands.demo import demo_parts
from sl_detr_hf.data import load_dota, make_synthetic_dota
from sl_detr_hf.training import (
    DetectionMetrics,
    SlDetrTrainer,
    build_param_groups,
    make_collator,
    paper_training_arguments,
    prepare_dataset,
)
from sl_detr_hf.training.processes import distribute_cpu_processes

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 128


def tiny_model(num_labels: int = 5, seed: int = 0) -> SlDetrForObjectDetection:
    torch.manual_seed(seed)
    id2label = {i: f"c{i}" for i in range(num_labels)}
    return SlDetrForObjectDetection(SlDetrConfig(**tiny_config_kwargs(num_labels, id2label, d_model=32, layers=1,
                                                                      num_queries=30)))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_dota(root, num_images=10, image_size=IMAGE_SIZE, seed=3)
    return root


def test_param_groups_follow_the_paper():
    model = tiny_model()
    groups = build_param_groups(model, lr=1e-4, weight_decay=1e-4)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each exactly once
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, param in model.named_parameters():
        if not param.requires_grad:  # Deformable DETR freezes the backbone stem
            continue
        group = by_param[id(param)]
        low = "backbone" in name or "sampling_offsets" in name or "reference_points" in name
        assert group["lr"] == pytest.approx(1e-5 if low else 1e-4), name
        assert group["weight_decay"] == (1e-4 if param.ndim > 1 else 0.0), name
    assert any("sampling_offsets" in n for n, _ in model.named_parameters())


def test_trainer_trains_evaluates_saves_and_reloads(tmp_path, synthetic_root):
    raw = load_dota(synthetic_root)
    names = raw.features["objects"]["category"].feature.names
    model = tiny_model(len(names))
    processor = SlDetrImageProcessor(size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}, max_detections=30)
    dataset = prepare_dataset(raw, processor)
    args = paper_training_arguments(str(tmp_path / "run"), per_device_train_batch_size=4, per_device_eval_batch_size=3,
                                    max_steps=6, logging_steps=1, use_cpu=True, disable_tqdm=True, save_strategy="no")
    trainer = SlDetrTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
                            data_collator=make_collator(), processing_class=processor,
                            compute_metrics=DetectionMetrics(processor, id2label=dict(enumerate(names))))
    trainer.train()
    initial = sorted({g["initial_lr"] for g in trainer.optimizer.param_groups})
    assert initial == pytest.approx([1e-5, 1e-4])  # backbone / sampling offsets at 0.1x
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval_mAP"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    # 10 images in batches of 3: the last batch is short; every image is evaluated exactly once
    num_gt = sum(len(row["objects"]["category"]) for row in raw.remove_columns("image"))
    assert metrics["eval_num_images"] == 10 and metrics["eval_num_objects"] == num_gt > 0
    trainer.save_model(str(tmp_path / "model"))
    reloaded = AutoModelForObjectDetection.from_pretrained(tmp_path / "model").eval()
    model.eval()
    batch = make_collator()([dataset[0], dataset[1]])
    with torch.no_grad():
        a = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        b = reloaded(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
    assert torch.allclose(a.logits, b.logits, atol=1e-6) and torch.allclose(a.pred_boxes, b.pred_boxes, atol=1e-6)


def run_cli(*args: str, cwd: Path | None = None, launcher: list[str] | None = None, timeout: int = 600,
            env: dict[str, str] | None = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", **(env or {}))
    cmd = (launcher or [sys.executable]) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout)


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_every_script_has_help(script):
    result = run_cli(str(REPO / "scripts" / script), "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()


def test_sl_detr_command_lists_commands_and_rejects_unknown(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--data_format", "dota", "--train_dir", "/nonexistent/dota", "--output_dir", "{tmp}"],
         "/nonexistent/dota does not exist"),
        (["train", "--data_format", "parquet", "--train_dir", "{tmp}", "--output_dir", "{tmp}"],
         "unknown --data_format"),
        (["split", "/nonexistent/dota", "{tmp}/out"], "has no images/ folder"),
        (["evaluate", "--model", "{tmp}", "--data_dir", "/nonexistent"], "is not a folder"),
        (["make-synthetic", "{tmp}/syn", "--num_images", "0"], "--num_images must be >= 1"),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_clear_message(tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli("-m", "sl_detr_hf.cli", *args, timeout=300)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_two_processes_give_the_same_metrics_as_one(tmp_path, synthetic_root):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU (gloo): train, and evaluate identically."""
    model = tiny_model(5, seed=1)
    model.save_pretrained(tmp_path / "start")
    common = ["--model_name_or_path", str(tmp_path / "start"), "--data_format", "dota",
              "--train_dir", str(synthetic_root), "--val_dir", str(synthetic_root), "--image_size", str(IMAGE_SIZE),
              "--per_device_eval_batch_size", "3", "--per_device_train_batch_size", "2", "--use_cpu",
              "--report_to", "none", "--augment", "False", "--eval_iou_threshold", "0.1"]
    script = str(REPO / "scripts" / "train.py")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    one = run_cli(script, *common, "--do_eval", "--output_dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(script, *common, "--do_eval", "--output_dir", str(tmp_path / "two"), launcher=launcher)
    assert two.returncode == 0, two.stderr[-3000:]
    m1 = json.loads((tmp_path / "one" / "final_metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    ap_keys = sorted(k for k in m1 if k.startswith("eval_AP_") or k in ("eval_mAP", "eval_mRecall"))
    assert ap_keys and sorted(k for k in m2 if k in ap_keys) == ap_keys
    for key in ap_keys:
        assert m2[key] == pytest.approx(m1[key], abs=1e-6), key
    # every image evaluated exactly once (10 images, batches of 3 per process: the last batches are short)
    num_objects = sum(len(row["objects"]["category"]) for row in load_dota(synthetic_root).remove_columns("image"))
    assert m1["eval_num_images"] == m2["eval_num_images"] == 10
    assert m1["eval_num_objects"] == m2["eval_num_objects"] == num_objects
    # at IoU 0.1 the random model does match objects: equal metrics are not a vacuous 0 == 0
    assert m1["eval_mRecall"] > 0 and m1["eval_mAP"] > 0
    # training in 2 processes (DDP, gloo) then evaluating
    train = run_cli(script, *common, "--do_train", "--do_eval", "--max_steps", "2",
                    "--output_dir", str(tmp_path / "train2"), launcher=launcher)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((tmp_path / "train2" / "final_metrics.json").read_text())
    assert metrics["train_steps_per_second"] > 0
    assert 0 <= metrics["eval_mAP"] <= 1
    assert (tmp_path / "train2" / "model.safetensors").is_file()


def test_processes_without_a_gpu_are_told_the_cpu_is_the_device():
    env = {"WORLD_SIZE": "2"}
    assert distribute_cpu_processes(env, accelerator_available=False) == 2
    assert env == {"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "true"}
    for env, accelerator in (({"WORLD_SIZE": "1"}, False), ({}, False), ({"WORLD_SIZE": "2"}, True),
                             ({"WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "false"}, False), ({"WORLD_SIZE": "x"}, False)):
        before = dict(env)
        assert distribute_cpu_processes(env, accelerator_available=accelerator) == 0 and env == before


def test_paper_training_arguments_distribute_cpu_processes_first(tmp_path, monkeypatch):
    import sl_detr_hf.training.trainer as trainer_module

    calls = []
    monkeypatch.setattr(trainer_module, "distribute_cpu_processes", lambda: calls.append(True) or 0)
    args = paper_training_arguments(str(tmp_path), use_cpu=True)
    assert calls == [True] and args.learning_rate == 1e-4


@pytest.mark.slow
def test_torchrun_without_use_cpu_trains_one_model_on_a_cpu_machine(tmp_path, synthetic_root):
    """`torchrun --nproc_per_node 2 -m sl_detr_hf.cli train` without `--use_cpu`, no GPU visible: one DDP training
    whose processes share the data (10 images, 5 per process, batches of 2: 3 batches an epoch, so 2 steps are 2/3
    of an epoch). Before, each process trained alone on all 10 images (5 batches: 0.4 epoch) into the same folder."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = run_cli("-m", "sl_detr_hf.cli", "train", "--data_format", "dota", "--train_dir", str(synthetic_root),
                     "--image_size", str(IMAGE_SIZE), "--max_steps", "2", "--per_device_train_batch_size", "2",
                     "--save_strategy", "no", "--eval_strategy", "no", "--augment", "False", "--config",
                     "d_model=32,num_denoising=10", "--num_queries", "10", "--report_to", "none",
                     "--output_dir", str(tmp_path / "run"), launcher=launcher, env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "one training in 2 CPU processes" in output and "parallel_mode != ParallelMode.DISTRIBUTED" not in output
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1]["epoch"] == pytest.approx(2 / 3)


def test_demo_parts_follow_the_arguments():
    """The demo's model, processor and augmentation come from its arguments; `--config` overrides win."""
    names = {0: "plane", 1: "ship"}
    args = DemoArguments(d_model=32, layers=1, num_queries=12, num_denoising=20, sync=False)
    model, processor, augment, overrides = demo_parts(args, names)
    cfg = model.config
    assert (cfg.num_queries, cfg.two_stage_num_proposals, cfg.max_detections) == (12, 12, 12)
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.num_labels) == (32, 1, 1, 2)
    assert cfg.num_denoising == 20 and not cfg.use_sync_loc and not cfg.use_quality_cls
    assert overrides == {"use_sync_loc": False, "use_quality_cls": False, "num_denoising": 20}
    assert processor.max_detections == 12 and processor.size == {"shortest_edge": 256, "longest_edge": 256}
    assert not any(type(step).__name__ == "ColorJitter" for step in augment.transform.transforms)

    args = DemoArguments(d_model=32, layers=1, num_denoising=20, config="num_denoising=0,encoder_layers=2")
    model, _, _, overrides = demo_parts(args, names)
    assert model.config.num_denoising == 0 and model.config.encoder_layers == 2 and model.config.decoder_layers == 1
    assert overrides["num_denoising"] == 0 and overrides["use_sync_loc"] is True


@pytest.mark.slow
def test_demo_smoke(tmp_path):
    args = DemoArguments(output_dir=str(tmp_path / "demo"), max_minutes=1.0, max_steps=4, num_train=8, num_val=4,
                         image_size=IMAGE_SIZE, batch_size=4, d_model=32, layers=1, num_queries=20)
    summary = run_demo(args)
    out = tmp_path / "demo"
    assert summary["train_steps"] == 4
    assert 0.0 <= summary["mAP50"] <= 1.0
    for name in ("summary.json", "predictions.png", "training_curve.png", "model/config.json",
                 "model/model.safetensors", "model/preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["train_steps"] == 4
    shutil.rmtree(out / "data")


@pytest.mark.slow
def test_full_size_evaluation_splits_predicts_merges_and_scores(tmp_path):
    """`sl-detr evaluate`: big images are split into patches, predicted, merged back, scored; Task1 files written."""
    data = make_synthetic_dota(tmp_path / "full", num_images=2, image_size=(520, 400), seed=5, max_objects=12)
    names = load_dota(data).features["objects"]["category"].feature.names
    model = tiny_model(len(names))
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {n: i for i, n in enumerate(names)}
    model.save_pretrained(tmp_path / "model")
    SlDetrImageProcessor(size={"shortest_edge": 256, "longest_edge": 256}).save_pretrained(tmp_path / "model")
    result = run_cli("-m", "sl_detr_hf.cli", "evaluate", "--model", str(tmp_path / "model"), "--data_dir", str(data),
                     "--output_dir", str(tmp_path / "eval"), "--patch_size", "256", "--gap", "56", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    # 520 x 400 with 256 px windows and a 200 px step: x starts 0, 200, 264 and y starts 0, 144 -> 6 patches each
    patches = sorted(p.stem for p in (tmp_path / "eval" / "patches" / "images").iterdir())
    assert len(patches) == 12
    task1 = sorted(p.name for p in (tmp_path / "eval" / "task1").iterdir())
    assert task1 == sorted(f"Task1_{n}.txt" for n in names)
    lines = [line.split() for p in (tmp_path / "eval" / "task1").iterdir() for line in p.read_text().splitlines()]
    assert lines and all(len(parts) == 10 and parts[0] in ("syn00000", "syn00001") for parts in lines)
    # --bf16: the network under autocast, the same patches and files; the scores float32-ranked, in (0, 1]
    result = run_cli("-m", "sl_detr_hf.cli", "evaluate", "--model", str(tmp_path / "model"), "--data_dir", str(data),
                     "--output_dir", str(tmp_path / "eval16"), "--patch_size", "256", "--gap", "56", "--device", "cpu",
                     "--bf16")
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0.0 <= json.loads((tmp_path / "eval16" / "metrics.json").read_text())["mAP"] <= 1.0
    lines16 = [line.split() for p in (tmp_path / "eval16" / "task1").iterdir() for line in p.read_text().splitlines()]
    assert lines16 and all(0.0 < float(parts[1]) <= 1.0 for parts in lines16)


@pytest.mark.slow
def test_train_cli_resumes_from_the_last_checkpoint(tmp_path, synthetic_root):
    """`sl-detr train --resume_from_checkpoint last` continues where an interrupted run stopped."""
    common = ["train", "--data_format", "dota", "--train_dir", str(synthetic_root), "--image_size", str(IMAGE_SIZE),
              "--per_device_train_batch_size", "4", "--use_cpu", "--report_to", "none", "--do_train",
              "--save_strategy", "steps", "--save_steps", "2", "--output_dir", str(tmp_path / "run"),
              "--logging_steps", "1", "--seed", "1", "--ema_decay", "0.99", "--ema_warmup_steps", "0"]
    first = run_cli("-m", "sl_detr_hf.cli", *common, "--max_steps", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").is_file()
    second = run_cli("-m", "sl_detr_hf.cli", *common, "--max_steps", "4", "--resume_from_checkpoint", "last")
    assert second.returncode == 0, second.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == [1, 2, 3, 4]  # the resumed run continued at step 3, it did not start over
    # the weight average went on from the checkpoint's, it did not restart
    assert [torch.load(tmp_path / "run" / f"checkpoint-{n}" / "ema.pt", weights_only=True)["updates"]
            for n in (2, 4)] == [2, 4]
