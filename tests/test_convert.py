"""The RHINO / DINO checkpoint converters (`sl_detr_hf.convert`): configs read without running them, checkpoints
read with `weights_only` (or refused with the reason), every key accounted for, unsupported variants refused by
name, the command line writing a `from_pretrained` folder, and the converted model fine-tuning through `Trainer`
with the synchronized loss. The model-level parity is in `test_rhino_parity.py` / `test_mmdet_dino_parity.py`."""

from __future__ import annotations

import copy
import sys
import textwrap

import pytest
import torch
from _parity_fixtures import available, load_model_json, load_weights, source_config

from sl_detr_hf import SlDetrForObjectDetection, SlDetrImageProcessor
from sl_detr_hf.commands.convert import main as convert_main
from sl_detr_hf.convert import (
    CheckpointError,
    convert_mmdet_dino_checkpoint,
    convert_rhino_checkpoint,
    load_checkpoint,
    load_config,
    parse_config_text,
)

needs_rhino = pytest.mark.skipif(not available("rhino"), reason="RHINO reference fixture not present")


# -------------------------------------------------------------------------------------------------- configs


def test_config_text_is_read_without_running_it():
    text = textwrap.dedent("""
        import os
        base = 3
        angle_cfg = dict(width_longer=True, start_angle=0)
        model = dict(type='RHINO', sizes=[base * 2, -1.5], pair=(1, 2), raw={'a b': None}, angle=angle_cfg,
                     merged=dict(dict(p=1), q=True), neg=-base)
        side_effect = os.remove('/nonexistent')
        """)
    cfg = parse_config_text(text)
    assert cfg["model"] == {"type": "RHINO", "sizes": [6, -1.5], "pair": (1, 2), "raw": {"a b": None},
                            "angle": {"width_longer": True, "start_angle": 0}, "merged": {"p": 1, "q": True},
                            "neg": -3}
    assert "side_effect" not in cfg  # a call of anything but a builtin constructor is never evaluated


def test_config_files_inherit_their_bases(tmp_path):
    (tmp_path / "_base_").mkdir()
    (tmp_path / "_base_" / "data.py").write_text("test_pipeline = [dict(type='Resize', scale=(800, 800))]\n"
                                                 "model = dict(neck=dict(num_outs=4, norm=dict(type='GN')), x=1)\n")
    (tmp_path / "child.py").write_text("_base_ = ['_base_/data.py']\n"
                                       "model = dict(neck=dict(num_outs=5), x=dict(_delete_=True, y=2))\n")
    cfg = load_config(tmp_path / "child.py")
    assert cfg["model"] == {"neck": {"num_outs": 5, "norm": {"type": "GN"}}, "x": {"y": 2}}
    assert cfg["test_pipeline"][0]["scale"] == (800, 800)


# ---------------------------------------------------------------------------------------------- checkpoints


def test_plain_checkpoints_load_with_weights_only(tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({"meta": {"cfg": "a = 1"}, "state_dict": {"module.w": torch.ones(2)}}, path)
    state, meta = load_checkpoint(path)
    assert list(state) == ["w"] and meta["cfg"] == "a = 1"


def test_pickled_objects_need_trust_and_missing_classes_become_placeholders(tmp_path, monkeypatch):
    module = tmp_path / "fake_mmengine_hub.py"
    module.write_text(textwrap.dedent("""
        class HistoryBuffer:
            def __init__(self):
                self.values = [1.0]
                self.methods = {"min": HistoryBuffer.min}  # pickled as getattr(HistoryBuffer, "min")

            def min(self):
                return min(self.values)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_mmengine_hub

    path = tmp_path / "runner.pth"
    torch.save({"meta": {"cfg": "a = 1"}, "state_dict": {"w": torch.ones(2)},
                "message_hub": {"log_scalars": {"loss": fake_mmengine_hub.HistoryBuffer()}}}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint") as err:
        load_checkpoint(path)
    assert "HistoryBuffer" in str(err.value)
    monkeypatch.delitem(sys.modules, "fake_mmengine_hub")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])  # "mmengine is not installed"
    state, meta = load_checkpoint(path, trust_checkpoint=True)
    assert torch.equal(state["w"], torch.ones(2)) and meta["cfg"] == "a = 1"


# ------------------------------------------------------------------------------------ keys and variants


@needs_rhino
def test_a_key_without_a_place_is_named():
    state = load_weights("rhino")
    state["bbox_head.extra_branch.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="bbox_head.extra_branch.weight"):
        convert_rhino_checkpoint(state, config=source_config("rhino"))


@needs_rhino
@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(version="v4"), "version 'v4'"),
    (lambda m: m.update(version="v1"), "version 'v1'"),
    (lambda m: m.pop("version"), r"version '' \(the config sets none: RHINO's default\)"),
    (lambda m: m.update(backbone={"type": "mmdet.SwinTransformer"}), "Swin"),
    (lambda m: m["bbox_head"].update(angle_cfg={"width_longer": False, "start_angle": 0}), "width_longer"),
    (lambda m: m["backbone"].update(style="caffe"), "style='caffe'"),
    (lambda m: m.update(type="DINO"), "not a RHINO model"),
])
def test_unsupported_variants_are_refused_by_name(change, message):
    cfg = copy.deepcopy(source_config("rhino"))
    change(cfg["model"])
    with pytest.raises(CheckpointError, match=message):
        convert_rhino_checkpoint(load_weights("rhino"), config=cfg)


@needs_rhino
def test_a_rhino_checkpoint_is_not_a_dino_one():
    with pytest.raises(CheckpointError, match="not a mmdetection DINO model"):
        convert_mmdet_dino_checkpoint(load_weights("rhino"), config=source_config("rhino"))


@needs_rhino
def test_a_bgr_model_takes_rgb_after_conversion():
    cfg = copy.deepcopy(source_config("rhino"))
    cfg["model"]["data_preprocessor"]["bgr_to_rgb"] = False
    state = load_weights("rhino")
    converted = convert_rhino_checkpoint(state, config=cfg)
    stem = converted.model.model.backbone.model.embedder.embedder.convolution.weight
    assert torch.equal(stem, state["backbone.conv1.weight"].flip(1))
    assert list(converted.processor.image_mean) == [103.53, 116.28, 123.675]


# ------------------------------------------------------------------------------------------ the rename table


def test_the_rename_table_maps_each_part_by_hand_computed_names():
    from sl_detr_hf.convert.mapping import rename_key

    expected = {
        "backbone.conv1.weight": "model.backbone.model.embedder.embedder.convolution.weight",
        "backbone.layer2.3.bn1.running_mean":
            "model.backbone.model.encoder.stages.1.layers.3.layer.0.normalization.running_mean",
        "backbone.layer4.0.conv3.weight": "model.backbone.model.encoder.stages.3.layers.0.layer.2.convolution.weight",
        "backbone.layer1.0.downsample.1.bias":
            "model.backbone.model.encoder.stages.0.layers.0.shortcut.normalization.bias",
        "neck.convs.2.gn.weight": "model.input_proj.2.1.weight",
        "neck.extra_convs.0.conv.weight": "model.input_proj.3.0.weight",  # after the 3 convs
        "encoder.layers.5.ffn.layers.0.0.bias": "model.encoder.layers.5.mlp.fc1.bias",
        "decoder.layers.1.cross_attn.sampling_offsets.weight":
            "model.decoder.layers.1.encoder_attn.sampling_offsets.weight",
        "decoder.layers.0.norms.2.weight": "model.decoder.layers.0.final_layer_norm.weight",
        "bbox_head.reg_branches.6.2.weight": "bbox_embed.6.layers.1.weight",
        "dn_query_generator.label_embedding.weight": "model.denoising_class_embed.weight",
    }
    for source, target in expected.items():
        assert rename_key(source, {"convs": 3}) == target, source
    for unknown in ("backbone.layer5.0.conv1.weight", "backbone.layer1.0.conv4.weight", "bbox_head.extra.weight",
                    "encoder.layers.0.norms.2.weight"):
        assert rename_key(unknown, {"convs": 3}) is None, unknown


# ------------------------------------------------------------------------------------- command line, folder


@needs_rhino
def test_command_line_writes_a_folder_that_loads(tmp_path, capsys):
    meta = load_model_json("rhino")["checkpoint_meta"]
    path = tmp_path / "rhino.pth"
    torch.save({"meta": meta, "state_dict": load_weights("rhino"),
                "message_hub": {"runtime_info": {"epoch": 12}}}, path)
    out = tmp_path / "converted"
    assert convert_main(["rhino", str(path), str(out)]) == 0
    assert "RHINO -> SL-DETR (rotated, 15 classes, 200 queries" in capsys.readouterr().out
    model = SlDetrForObjectDetection.from_pretrained(out).eval()
    processor = SlDetrImageProcessor.from_pretrained(out)
    assert processor.do_rescale is False and list(processor.image_mean) == [123.675, 116.28, 103.53]
    assert processor.size["longest_edge"] == 1024 and processor.max_detections == 500
    assert model.config.id2label[14] == "helicopter" and model.config.angle_start == 0
    direct = convert_rhino_checkpoint(load_weights("rhino"), config=source_config("rhino")).model
    pixels = torch.randn(1, 3, 96, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, direct(pixels).logits)


@pytest.mark.skipif(not available("mmdet_dino"), reason="mmdetection DINO reference fixture not present")
def test_sl_detr_convert_dino_through_the_cli_and_the_script(tmp_path, capsys, monkeypatch):
    import runpy
    from pathlib import Path

    from safetensors.torch import save_file

    from sl_detr_hf.cli import main as cli_main

    assert cli_main(["--help"]) == 0 and "convert" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["convert", "--help"])
    assert exit_info.value.code == 0 and "{rhino,dino,deformable-detr}" in capsys.readouterr().out
    weights = tmp_path / "dino.safetensors"
    save_file({k: v.contiguous() for k, v in load_weights("mmdet_dino").items()}, str(weights))
    config = tmp_path / "dino_config.py"
    config.write_text(load_model_json("mmdet_dino")["checkpoint_meta"]["cfg"])
    assert cli_main(["convert", "dino", str(weights), str(tmp_path / "cli"), "--config", str(config)]) == 0
    assert "mmdetection DINO -> SL-DETR (horizontal" in capsys.readouterr().out
    script = Path(__file__).parents[1] / "scripts" / "convert_mmdet_dino_checkpoint.py"
    monkeypatch.setattr(sys, "argv", [str(script), str(weights), str(tmp_path / "script"), "--config", str(config)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    for folder in ("cli", "script"):
        model = SlDetrForObjectDetection.from_pretrained(tmp_path / folder)
        assert model.config.box_type == "horizontal" and model.config.num_queries == 200
    first = SlDetrForObjectDetection.from_pretrained(tmp_path / "cli").state_dict()
    second = SlDetrForObjectDetection.from_pretrained(tmp_path / "script").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_deformable_detr_command_line_choices_and_the_classmethod_agree(tmp_path):
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    from sl_detr_hf import DOTA_CLASSES, SlDetrConfig
    from sl_detr_hf.configuration_sl_detr import DEFORMABLE_DETR_PARTS
    from sl_detr_hf.convert import convert_deformable_detr
    from sl_detr_hf.convert.deformable_detr import deformable_detr_overrides

    assert deformable_detr_overrides() == {}
    dota = deformable_detr_overrides("dota-1.0", dino=True)
    assert dota["id2label"][14] == DOTA_CLASSES["1.0"][14] == "helicopter" and len(dota["id2label"]) == 15
    assert {k: dota[k] for k in DEFORMABLE_DETR_PARTS} == {k: getattr(SlDetrConfig(), k) for k in DEFORMABLE_DETR_PARTS}
    with pytest.raises(ValueError, match="classes must be one of source, dota-1.0"):
        deformable_detr_overrides("coco")
    torch.manual_seed(0)
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                            layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    source = DeformableDetrForObjectDetection(DeformableDetrConfig(
        backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False, backbone=None, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=10, two_stage_num_proposals=10, two_stage=True, with_box_refine=True,
        num_feature_levels=3, num_labels=3)).eval()
    model, report = convert_deformable_detr(source, box_type="horizontal", return_report=True)
    same = SlDetrForObjectDetection.from_deformable_detr(source, box_type="horizontal")
    assert report.copied and not report.skipped
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs, direct = model(pixels), same(pixels), source(pixels)
    assert torch.equal(ours.logits, theirs.logits)
    torch.testing.assert_close(ours.logits, direct.logits, rtol=0, atol=1e-5)  # horizontal: Deformable DETR itself


@needs_rhino
def test_missing_config_and_refused_pickles_exit_with_a_message(tmp_path, capsys, monkeypatch):
    module = tmp_path / "fake_mmengine_logging.py"
    module.write_text("class HistoryBuffer:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_mmengine_logging

    path = tmp_path / "runner.pth"
    torch.save({"meta": load_model_json("rhino")["checkpoint_meta"], "state_dict": load_weights("rhino"),
                "message_hub": {"log_scalars": {"loss": fake_mmengine_logging.HistoryBuffer()}}}, path)
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["rhino", str(path), str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "--trust-checkpoint" in capsys.readouterr().err
    assert convert_main(["rhino", str(path), str(tmp_path / "out"), "--trust-checkpoint"]) == 0


# ------------------------------------------------------------------------------------------ fine-tuning


@needs_rhino
def test_converted_model_fine_tunes_through_trainer_with_the_synchronized_loss(tmp_path):
    from sl_detr_hf.data import load_dota, make_synthetic_dota
    from sl_detr_hf.training import SlDetrTrainer, make_collator, paper_training_arguments, prepare_dataset

    converted = convert_rhino_checkpoint(load_weights("rhino"), config=source_config("rhino"))
    model = converted.model.train()
    assert model.config.use_sync_loc and model.config.use_quality_cls
    root = tmp_path / "data"
    make_synthetic_dota(root, num_images=4, image_size=128, seed=3)
    processor = SlDetrImageProcessor(**{**converted.processor.to_dict(), "size": {"shortest_edge": 128,
                                                                                  "longest_edge": 128}})
    data = prepare_dataset(load_dota(root), processor)
    args = paper_training_arguments(str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=3,
                                    learning_rate=1e-3, logging_steps=1, save_strategy="no", use_cpu=True,
                                    disable_tqdm=True, seed=0, report_to=[])
    trainer = SlDetrTrainer(model=model, args=args, train_dataset=data, data_collator=make_collator(),
                            processing_class=processor)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert len(set(losses)) > 1


def test_processor_clips_axis_aligned_boxes_when_asked():
    outputs = {"logits": torch.tensor([[[3.0]]]), "pred_boxes": torch.tensor([[[0.9, 0.5, 0.5, 0.2]]])}
    for clip, right in ((False, 115.0), (True, 100.0)):
        processor = SlDetrImageProcessor(box_type="horizontal", clip_boxes=clip)
        boxes = processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=[[50, 100]])[0]["boxes"]
        torch.testing.assert_close(boxes[0], torch.tensor([65.0, 20.0, right, 30.0]))


@needs_rhino
def test_a_safetensors_state_dict_converts_with_a_config_file(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "rhino_state.safetensors"
    save_file({k: v.contiguous() for k, v in load_weights("rhino").items()}, str(weights))
    config = tmp_path / "rhino_config.py"
    config.write_text(load_model_json("rhino")["checkpoint_meta"]["cfg"])
    out = tmp_path / "converted"
    assert convert_main(["rhino", str(weights), str(out), "--config", str(config)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    assert SlDetrForObjectDetection.from_pretrained(out).config.num_queries == 200


# ------------------------------------------------------------------------------ hostile configs are bounded

# Each case runs in one child process (a regression that hangs is killed by the timeout and fails its case instead
# of hanging the suite; its address space is capped, so one that allocates fails with MemoryError).
_HOSTILE_CHILD = textwrap.dedent("""
    import contextlib, io, json, resource, runpy, sys, time
    from sl_detr_hf.convert import CheckpointError, convert_rhino_checkpoint, load_config, parse_config_text

    with open("/proc/self/statm") as handle:
        used = int(handle.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
    for case in json.loads(sys.stdin.read()):
        stderr, start = io.StringIO(), time.process_time()
        try:
            with contextlib.redirect_stderr(stderr):
                if case["call"] == "load_config":
                    load_config(case["path"])
                elif case["call"] == "parse":
                    parse_config_text(case["text"], "meta.py")
                elif case["call"] == "convert":
                    convert_rhino_checkpoint(case["path"])
                else:
                    sys.argv = case["argv"]
                    runpy.run_path(case["argv"][0], run_name="__main__")
            outcome = "no error"
        except CheckpointError as err:
            outcome = f"{type(err).__name__}: {err}"
        except SystemExit as err:
            outcome = f"exit {err.code}: {stderr.getvalue()}"
        except BaseException as err:
            outcome = f"{type(err).__name__}: {err}"
        seconds = time.process_time() - start  # CPU seconds: the suite may share the cores
        print(json.dumps({"name": case["name"], "seconds": seconds, "outcome": outcome}), flush=True)
    """)

# name -> (config text, or files {name: text} with the first one read; what the error must say)
_HOSTILE_CONFIGS = {
    "power": ("x = 9 ** 9 ** 9 ** 9", "bad.py:1: a power of about 1.23e+09 bits"),
    "string_repeat": ("a = 1\nx = 'a' * 10**9", "bad.py:2: repeating a str 1,000,000,000 times"),
    "list_repeat": ("x = [0] * 10**9", "bad.py:1: repeating a list 1,000,000,000 times"),
    "list_repeat_reversed": ("x = 10**9 * [0]", "bad.py:1: repeating a list 1,000,000,000 times"),
    "nested_repeat": ("x = [[0] * 1000] * 1000", "bad.py:1: repeating a list 1,000 times makes 1,001,000 items"),
    "int_literal": ("x = " + "9" * 4000, "bad.py:1: an integer of 13,288 bits"),
    "int_of_float": ("x = int(1e308)", "bad.py:1: an integer of 1,024 bits"),
    "float_power": ("x = 2.0 ** 10000", "bad.py:1: arithmetic overflow"),
    "percent_width": ("x = '%0999999999d' % 1", "bad.py:1: a %-format field width"),
    "deep_expression": ("x = " + " + ".join(["1"] * 300), "bad.py:1: an expression nested deeper than 100"),
    "parser_nesting": ("x = " + "-" * 100_000 + "1", "bad.py: nested too deeply for Python's parser"),
    "deep_value": ("a = [0]\n" + "a = [a]\n" * 150, "bad.py:101: a value nested 101 levels deep"),
    "doubling": ("a = [0]\n" + "a = a + a\n" * 40, "bad.py:17: the config builds or copies more than"),
    "many_copies": ("big = [0] * 90000\n" + "y = big\n" * 40, "bad.py:3: the config builds or copies more than"),
    "base_cycle": ({"bad.py": "_base_ = ['b.py']\nx = 1", "b.py": "y = 2\n_base_ = 'bad.py'"},
                   "b.py:2: `_base_` cycle bad.py -> b.py -> bad.py"),
    "base_self": ({"bad.py": "_base_ = './bad.py'"}, "bad.py:1: `_base_` cycle bad.py -> bad.py"),
    "base_depth": ({"bad.py": "_base_ = 'c1.py'", **{f"c{i}.py": f"_base_ = 'c{i + 1}.py'" for i in range(1, 40)}},
                   "c15.py:1: `_base_` chain deeper than 16 files"),
    "base_fan_out": ({"bad.py": "_base_ = ['leaf.py'] * 100", "leaf.py": "x = 1"},
                     "bad.py:1: more than 64 config files"),
    "base_missing": ({"bad.py": "x = 1\n_base_ = ['gone.py']"}, "bad.py:2: config"),
    "json_nesting": ({"bad.json": "[" * 100_000}, "bad.json: not a readable JSON config (RecursionError"),
    "json_deep_value": ({"bad.json": '{"a": ' + "[" * 150 + "]" * 150 + "}"}, "a value nested deeper than 100"),
}


@pytest.fixture(scope="module")
def hostile_outcomes(tmp_path_factory):
    """`{case: {"seconds", "outcome"}}` of every hostile config read in one child process."""
    import json
    import os
    import subprocess
    from pathlib import Path

    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("hostile")
    cases = []
    for name, (content, _) in _HOSTILE_CONFIGS.items():
        folder = root / name
        folder.mkdir()
        files = content if isinstance(content, dict) else {"bad.py": content}
        for file, text in files.items():
            (folder / file).write_text(text)
        cases.append({"name": name, "call": "load_config", "path": str(folder / next(iter(files)))})
    cases.append({"name": "meta_text", "call": "parse", "text": "x = 9 ** 9 ** 9 ** 9"})
    pth = root / "untrusted.pth"
    torch.save({"meta": {"cfg": "model = dict(type='RHINO')\nx = [0] * 10**9"},
                "state_dict": {"level_embed": torch.zeros(4, 8)}}, pth)
    cases.append({"name": "meta_pth", "call": "convert", "path": str(pth)})
    save_file({"level_embed": torch.zeros(4, 8)}, str(root / "sd.safetensors"))
    script = Path(__file__).parents[1] / "scripts" / "convert_rhino_checkpoint.py"
    cases.append({"name": "command_line", "call": "script", "argv": [
        str(script), str(root / "sd.safetensors"), str(root / "out"), "--config", str(root / "power" / "bad.py")]})
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run([sys.executable, "-c", _HOSTILE_CHILD], input=json.dumps(cases), capture_output=True,
                              text=True, timeout=90, env=env)
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:  # a case hung: the ones before it still report
        stdout, stderr = err.stdout or "", "timed out"
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    outcomes = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            outcomes[entry["name"]] = entry
    outcomes["_stderr"] = stderr
    return outcomes


@pytest.mark.parametrize("name", list(_HOSTILE_CONFIGS))
def test_hostile_config_files_are_refused_at_once_naming_file_and_line(hostile_outcomes, name):
    entry = hostile_outcomes.get(name)
    assert entry is not None, f"did not finish: {hostile_outcomes['_stderr'][-500:]}"
    assert entry["outcome"].startswith("ConfigError: "), entry["outcome"][:300]
    assert _HOSTILE_CONFIGS[name][1] in entry["outcome"], entry["outcome"][:300]
    assert entry["seconds"] < 0.5, entry


def test_hostile_checkpoint_meta_and_the_command_line_are_refused_at_once(hostile_outcomes):
    for name in ("meta_text", "meta_pth", "command_line"):
        assert name in hostile_outcomes, f"{name} did not finish: {hostile_outcomes['_stderr'][-500:]}"
        assert hostile_outcomes[name]["seconds"] < 1.0, hostile_outcomes[name]
    assert hostile_outcomes["meta_text"]["outcome"].startswith("ConfigError: meta.py:1: a power of about")
    assert hostile_outcomes["meta_pth"]["outcome"].startswith("ConfigError: meta['cfg']:2: repeating a list")
    out = hostile_outcomes["command_line"]["outcome"]
    assert out.startswith("exit 2: error: ") and "bad.py:1: a power of about 1.23e+09 bits" in out
    assert "Traceback" not in out


@needs_rhino
def test_real_configs_stay_far_below_the_bounds():
    from sl_detr_hf.convert import config as common

    for kind in ("rhino", "mmdet_dino"):
        budget = common._Budget()
        names, _ = common._parse_config(load_model_json(kind)["checkpoint_meta"]["cfg"], kind, budget)
        assert names["model"]["type"] in ("RHINO", "DINO")
        assert 1_000 < budget.work < common.MAX_CONFIG_WORK / 20  # about 11,000
    text = "a = dict(x=[1, 2] * 3, y='ab' * 4, z=2 ** 64, w=-2 ** 127, s='%5.2f' % 3.14159)\nb = [a] * 2"
    assert parse_config_text(text)["b"][1] == {"x": [1, 2, 1, 2, 1, 2], "y": "abababab", "z": 2 ** 64,
                                              "w": -2 ** 127, "s": " 3.14"}
