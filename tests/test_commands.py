"""The `sl-detr` commands' own checks: registry, split, train resume / seed, architecture checks, demo arguments."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest
import torch

from sl_detr_hf.cli import COMMANDS, main
from sl_detr_hf.data import make_synthetic_dota


def test_every_command_is_a_module_with_main():
    for name, (module, text) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name
        assert text


def test_default_num_workers_is_sized_to_the_machine():
    from sl_detr_hf.commands._common import default_num_workers

    assert [default_num_workers(n) for n in (1, 2, 3, 4, 5, 16)] == [0, 0, 0, 3, 4, 4]


def test_split_command_without_workers_and_with_bad_destinations(tmp_path, capsys):
    """`sl-detr split SRC DST` crashed without --workers (None > 0); `split D D` wrote into the source."""
    src = make_synthetic_dota(tmp_path / "src", num_images=1, image_size=(300, 260), seed=1, max_objects=3)
    assert main(["split", str(src), str(tmp_path / "dst"), "--sizes", "200", "--gaps", "50"]) == 0
    assert len(list((tmp_path / "dst" / "images").iterdir())) == 4
    before = sorted(p.name for p in (src / "images").iterdir())
    for extra, message in (([str(src)], "is the source dataset"), ([str(tmp_path / "x"), "--rates", "0"],
                                                                    "--rates must be > 0")):
        with pytest.raises(SystemExit) as exit_info:
            main(["split", str(src), *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in (src / "images").iterdir()) == before


def _checkpoint(folder: Path, step: int, complete: bool = True, epoch: float = 1.0) -> None:
    folder.mkdir(parents=True)
    state = {"global_step": step, "epoch": epoch, "log_history": []}
    (folder / "trainer_state.json").write_text(json.dumps(state) if complete else '{"global_st')
    if complete:
        (folder / "model.safetensors").write_bytes(b"weights")


def test_resume_skips_incomplete_checkpoints_and_refuses_finished_runs(tmp_path, caplog):
    from transformers import TrainingArguments

    from sl_detr_hf.commands.train import check_not_finished, last_complete_checkpoint

    _checkpoint(tmp_path / "checkpoint-2", 2)
    _checkpoint(tmp_path / "checkpoint-10", 10)
    _checkpoint(tmp_path / "checkpoint-12", 12, complete=False)  # killed while saving
    with caplog.at_level(logging.WARNING):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "skipping the incomplete checkpoint" in caplog.text and "checkpoint-12" in caplog.text
    assert last_complete_checkpoint(tmp_path / "none") is None
    check_not_finished(str(tmp_path / "checkpoint-10"), TrainingArguments(str(tmp_path), max_steps=20))
    with pytest.raises(SystemExit, match="already reached step 10.*raise --max_minutes, --max_steps"):
        check_not_finished(str(tmp_path / "checkpoint-10"), TrainingArguments(str(tmp_path), max_steps=10))
    with pytest.raises(SystemExit, match="--num_train_epochs 1"):
        check_not_finished(str(tmp_path / "checkpoint-10"), TrainingArguments(str(tmp_path), num_train_epochs=1))


def test_train_builds_the_model_after_seeding():
    """`train --seed` was not reproducible: the model was initialized before the seed was set."""
    from sl_detr_hf.commands.train import ModelArguments, build_model

    torch.manual_seed(123)
    a = build_model(ModelArguments(), ["a", "b"], seed=7)
    torch.manual_seed(456)  # whatever happened before must not matter
    b = build_model(ModelArguments(), ["a", "b"], seed=7)
    c = build_model(ModelArguments(), ["a", "b"], seed=8)
    pa, pb, pc = (torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("size", ["tiny", "paper"])
def test_train_trains_a_from_scratch_backbone_whole_with_batch_norms(size):
    """Without ImageNet weights, the frozen stem / stage 1 / norms of Deformable DETR's rule would stay random."""
    from torch import nn

    from sl_detr_hf.commands.train import ModelArguments, build_model

    model = build_model(ModelArguments(size=size), ["a", "b"], seed=0)
    assert (model.config.backbone_frozen_stages, model.config.backbone_norm) == (-1, "batch_norm")
    backbone = model.model.backbone.model
    assert all(p.requires_grad for p in backbone.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())


def test_tiny_models_select_their_queries_with_the_proposal_nms_and_paper_size_does_not():
    from sl_detr_hf.commands.demo import DemoArguments, demo_parts
    from sl_detr_hf.commands.train import ModelArguments, build_model

    model, _, _, _ = demo_parts(DemoArguments(), {0: "a", 1: "b"})
    assert model.config.query_selection_nms == 0.6
    assert build_model(ModelArguments(), ["a", "b"], seed=0).config.query_selection_nms == 0.6
    assert build_model(ModelArguments(size="paper"), ["a", "b"], seed=0).config.query_selection_nms is None
    off, _, _, _ = demo_parts(DemoArguments(config="query_selection_nms=None"), {0: "a", 1: "b"})
    assert off.config.query_selection_nms is None


def test_train_keeps_deformable_detrs_rule_for_a_pretrained_backbone():
    from sl_detr_hf.commands.train import _backbone_policy

    assert _backbone_policy(pretrained=True) == {}  # SlDetrConfig's defaults: frozen stem, stage 1 and norms


@pytest.fixture()
def deformable_folder(tmp_path):
    from transformers import DeformableDetrConfig

    folder = tmp_path / "deformable"
    DeformableDetrConfig().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["push", "evaluate", "train"])
def test_commands_refuse_another_architecture(deformable_folder, tmp_path, capsys, command):
    """A Deformable DETR folder was pushed as a random SL-DETR / evaluated to mAP NaN with exit 0."""
    data = make_synthetic_dota(tmp_path / "data", num_images=1, image_size=64, seed=0, max_objects=2)
    argv = {"push": ["push", str(deformable_folder), "me/model", "--local-dir", str(tmp_path / "out")],
            "evaluate": ["evaluate", "--model", str(deformable_folder), "--data_dir", str(data),
                         "--output_dir", str(tmp_path / "eval")],
            "train": ["train", "--model_name_or_path", str(deformable_folder), "--data_format", "dota",
                      "--train_dir", str(data), "--output_dir", str(tmp_path / "run"), "--use_cpu"]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    message = str(exit_info.value.code) + capsys.readouterr().err
    assert "holds a 'deformable_detr' model, not SL-DETR" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_demo_refuses_empty_splits(tmp_path):
    with pytest.raises(SystemExit, match="--num_val must be >= 1|--num_train and --num_val must be >= 1"):
        main(["demo", "--output_dir", str(tmp_path / "demo"), "--num_val", "0"])
