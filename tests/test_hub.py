"""Sharing: `save_for_hub`, the generated model card, and `push_to_hub` / `scripts/push_to_hub.py` offline (the Hub
client's `create_repo` / `upload_folder` are replaced, and the files they would upload are checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_sl_detr import CLASS_NAMES, random_image, tiny_model, tiny_processor
from huggingface_hub import HfApi
from transformers import AutoImageProcessor, AutoModelForObjectDetection

from sl_detr_hf.commands.push import main as push_main
from sl_detr_hf.hub import CITATION, PAPER_TITLE, generate_model_card, push_to_hub, save_for_hub
from sl_detr_hf.pipeline_oriented_detection import TASK

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY_FILES = {f"geometry_{name}.py" for name in ("conversions", "overlaps", "gaussian", "distances", "nms")}
CODE_FILES = GEOMETRY_FILES | {
    "configuration_sl_detr.py", "modeling_sl_detr.py", "loss_sl_detr.py", "image_processing_sl_detr.py",
    "pipeline_oriented_detection.py", "matcher_sl_detr.py", "decoder_sl_detr.py", "attention_sl_detr.py",
    "query_selection_sl_detr.py", "denoising_sl_detr.py", "backbone_sl_detr.py", "heads_sl_detr.py",
    "position_embedding_sl_detr.py", "encoder_sl_detr.py", "stem_sl_detr.py", "space_to_depth_sl_detr.py",
    "dense_loss_sl_detr.py",
    "outputs_sl_detr.py", "precision_sl_detr.py", "deformable_sampling_sl_detr.py", "conv_norm_folding_sl_detr.py"}
EXPECTED_FILES = CODE_FILES | {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    """A plain `save_pretrained` folder, as `Trainer` writes it, with Trainer's eval results next to it."""
    folder = tmp_path_factory.mktemp("trained")
    model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    (folder / "eval_results.json").write_text(json.dumps({"eval_mAP50": 0.4321, "eval_loss": 1.5, "epoch": 3.0}))
    return folder


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the Hub client's calls; record the arguments and a snapshot of the uploaded folder."""
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, "token": self.token, **kwargs}
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload_folder"] = {"repo_id": repo_id, **kwargs}
        calls["files"] = {p.name: p.read_bytes() for p in folder.iterdir()}
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def _check_model_files(files: dict[str, bytes]) -> dict:
    assert set(files) == EXPECTED_FILES
    config = json.loads(files["config.json"])
    assert config["model_type"] == "sl_detr"
    assert config["auto_map"] == {"AutoConfig": "configuration_sl_detr.SlDetrConfig",
                                  "AutoModel": "modeling_sl_detr.SlDetrModel",
                                  "AutoModelForObjectDetection": "modeling_sl_detr.SlDetrForObjectDetection"}
    assert config["custom_pipelines"] == {TASK: {"impl": "pipeline_oriented_detection.OrientedObjectDetectionPipeline",
                                                 "pt": ["AutoModelForObjectDetection"], "type": "image"}}
    processor = json.loads(files["preprocessor_config.json"])
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_sl_detr.SlDetrImageProcessor"}
    for name in CODE_FILES:  # the shipped code is the package's code
        assert files[name] == (ROOT / "sl_detr_hf" / name).read_bytes()
    assert files["model.safetensors"][:8] != b"version "  # real weights, not a pointer
    return config


def test_model_card_content(model):
    card = generate_model_card(model, metrics={"mAP50": 0.71234, "mAP": 0.4, "images": 12}, dataset_name="DOTA-v1.0",
                               repo_id="me/sl-detr-dota")
    assert card.startswith("---\nlibrary_name: transformers\n") and "pipeline_tag: object-detection" in card
    assert "| mAP50 | 0.7123 |" in card and "| mAP | 0.4000 |" in card and "| images | 12 |" in card
    assert "Dataset: DOTA-v1.0." in card
    for i, name in enumerate(CLASS_NAMES):
        assert f"| {i} | {name} |" in card
    assert 'pipeline(model="me/sl-detr-dota", trust_remote_code=True)' in card
    assert 'pipeline("object-detection", model="me/sl-detr-dota", trust_remote_code=True)' in card
    assert 'import sl_detr_hf  # registers the task' in card and f'pipeline("{TASK}", model="me/sl-detr-dota")' in card
    assert CITATION in card and PAPER_TITLE in card
    assert "| queries | 20 |" in card and "# sl-detr-dota" in card
    empty = generate_model_card(model)
    assert "No evaluation results were provided." in empty and "Dataset: not specified." in empty
    assert "datasets:" not in empty
    assert "datasets:\n- user/aerial" in generate_model_card(model, dataset_name="user/aerial")


def test_save_for_hub_folder_loads_back(model, tmp_path):
    processor = tiny_processor()
    files = save_for_hub(model, processor, tmp_path, metrics={"mAP50": 0.5}, dataset_name="synthetic")
    assert set(files) == EXPECTED_FILES
    _check_model_files({p.name: p.read_bytes() for p in tmp_path.iterdir()})
    assert not hasattr(model.config, "custom_pipelines")  # the in-memory config is left as it was
    reloaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    reprocessor = AutoImageProcessor.from_pretrained(tmp_path)
    assert reprocessor.to_dict()["size"] == processor.to_dict()["size"]
    inputs = processor(random_image(), return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).pred_boxes, model(**inputs).pred_boxes)
    # without an image processor, a default one of the model's box type and max_detections is saved
    save_for_hub(model, None, tmp_path / "default")
    default = json.loads((tmp_path / "default" / "preprocessor_config.json").read_text())
    assert default["box_type"] == "rotated" and default["max_detections"] == 20
    with pytest.raises(ValueError, match="is a file"):
        save_for_hub(model, None, tmp_path / "README.md")


def test_push_model_object(model, fake_hub):
    result = push_to_hub(model, "me/tiny-sl-detr", image_processor=tiny_processor(), metrics={"mAP50": 0.25},
                         dataset_name="synthetic-dota", private=True, token="hf_test", commit_message="first")
    assert result == "commit-info"
    assert fake_hub["create_repo"] == {"repo_id": "me/tiny-sl-detr", "token": "hf_test", "private": True,
                                       "exist_ok": True, "repo_type": "model"}
    assert fake_hub["upload_folder"]["repo_id"] == "me/tiny-sl-detr"
    assert fake_hub["upload_folder"]["commit_message"] == "first"
    _check_model_files(fake_hub["files"])
    readme = fake_hub["files"]["README.md"].decode()
    assert "| mAP50 | 0.2500 |" in readme and "Dataset: synthetic-dota." in readme
    assert all(f"| {name} |" in readme for name in CLASS_NAMES)
    processor = json.loads(fake_hub["files"]["preprocessor_config.json"])
    assert processor["size"] == {"shortest_edge": 64, "longest_edge": 96}


def test_push_folder_uses_its_processor_and_trainer_metrics(saved, fake_hub):
    push_to_hub(saved, "org/model")
    _check_model_files(fake_hub["files"])
    readme = fake_hub["files"]["README.md"].decode()
    assert "| eval_mAP50 | 0.4321 |" in readme and "| eval_loss | 1.5000 |" in readme
    assert json.loads(fake_hub["files"]["preprocessor_config.json"])["max_detections"] == 20
    assert fake_hub["create_repo"]["private"] is False


def test_push_rejects_bad_input(tmp_path, fake_hub):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        push_to_hub(tmp_path, "me/x")
    with pytest.raises(ValueError, match="repo_id"):
        push_to_hub(tmp_path, "a/b/c")
    assert "create_repo" not in fake_hub


def test_push_cli(saved, fake_hub, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"mAP50": 0.9}))
    assert push_main([str(saved), "me/cli-model", "--metrics", "mAP=0.3", str(metrics), "--private",
                      "--dataset-name", "DOTA-v1.5", "--commit-message", "cli upload"]) == 0
    readme = fake_hub["files"]["README.md"].decode()
    assert "| mAP | 0.3000 |" in readme and "| mAP50 | 0.9000 |" in readme and "eval_mAP50" not in readme
    assert "Dataset: DOTA-v1.5." in readme
    assert fake_hub["create_repo"]["private"] is True and fake_hub["upload_folder"]["commit_message"] == "cli upload"
    assert "uploaded to" in capsys.readouterr().out


def test_push_cli_local_dir_writes_without_uploading(saved, fake_hub, tmp_path):
    assert push_main([str(saved), "me/local", "--local-dir", str(tmp_path / "out")]) == 0
    assert "upload_folder" not in fake_hub and "create_repo" not in fake_hub
    files = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    _check_model_files(files)
    assert "| eval_mAP50 | 0.4321 |" in files["README.md"].decode()


@pytest.mark.parametrize("argv, message", [
    (["{missing}", "me/x"], "is not a folder"),
    (["{empty}", "me/x"], "no config.json"),
    (["{saved}", "a/b/c"], "repo_id must look like"),
    (["{saved}", "me/x", "--metrics", "{missing}"], "neither name=value nor an existing JSON file"),
    (["{saved}", "me/x", "--metrics", "{bad_json}"], "not valid JSON"),
])
def test_push_cli_bad_arguments(saved, tmp_path, fake_hub, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "saved": saved,
             "bad_json": tmp_path / "bad.json"}
    with pytest.raises(SystemExit) as exit_info:
        push_main([a.format(**paths) for a in argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert "create_repo" not in fake_hub


def test_push_cli_upload_error_is_one_clear_line(saved, monkeypatch, capsys):
    def refuse(self, repo_id, **kwargs):
        raise PermissionError("401 Unauthorized")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    assert push_main([str(saved), "me/x"]) == 1
    err = capsys.readouterr().err
    assert "upload to me/x failed: PermissionError: 401 Unauthorized" in err and "Traceback" not in err


def test_push_script_help():
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "push_to_hub.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "repo_id" in run.stdout and "--local-dir" in run.stdout and "--metrics" in run.stdout
