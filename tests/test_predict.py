"""`scripts/predict.py` / `sl_detr_hf.inference`: JSON + PNGs for images and folders, clear errors for bad input,
and the PIL drawing of oriented boxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_sl_detr import CLASS_NAMES, random_image, save_tiny_folder
from PIL import Image

from sl_detr_hf.commands.predict import main
from sl_detr_hf.inference import collect_images, load_detector, output_names, resolve_device
from sl_detr_hf.rotated_boxes import rbox_to_poly
from sl_detr_hf.visualize import PALETTE, class_color, draw_detections

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_folder(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    random_image(100, 150, seed=1).save(folder / "a.png")
    random_image(90, 60, seed=2).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    random_image(50, 50, seed=3).save(folder / "sub" / "a.png")
    return folder


def test_predict_folder_writes_json_and_pngs(model_dir, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(image_dir), "--model", str(model_dir), "--output-dir", str(out), "--threshold", "0",
                 "--top-k", "4", "--device", "cpu"]) == 0
    assert "2 image(s), 8 detection(s)" in capsys.readouterr().out
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in records] == ["a.png", "b.jpg"]  # not notes.txt, not sub/ (no --recursive)
    assert [(r["width"], r["height"]) for r in records] == [(150, 100), (60, 90)]
    detector = load_detector(model_dir, device="cpu")
    for record in records:
        detections = record["detections"]
        assert len(detections) == 4
        assert {d["label"] for d in detections} <= set(CLASS_NAMES)
        rboxes = torch.tensor([[d["rbox"][k] for k in ("cx", "cy", "w", "h", "theta")] for d in detections])
        polygons = torch.tensor([[c for p in d["polygon"] for c in p] for d in detections])
        torch.testing.assert_close(polygons, rbox_to_poly(rboxes), atol=1e-4, rtol=0)
        expected = detector(Image.open(record["image"]).convert("RGB"), threshold=0.0, top_k=4)
        assert [d["score"] for d in detections] == pytest.approx([d["score"] for d in expected], abs=1e-5)
    for name, record in (("a.png", records[0]), ("b.png", records[1])):
        drawn = Image.open(out / name)
        original = Image.open(record["image"]).convert("RGB")
        assert drawn.size == original.size
        assert drawn.tobytes() != original.tobytes()


def test_predict_single_files_recursive_and_no_draw(model_dir, image_dir, tmp_path):
    out = tmp_path / "out"
    assert main([str(image_dir), "--recursive", "--model", str(model_dir), "--output-dir", str(out),
                 "--threshold", "0.0", "--top-k", "2", "--no-draw", "--device", "cpu",
                 "--batch-size", "2"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    names = sorted(Path(r["image"]).relative_to(image_dir).as_posix() for r in records)
    assert names == ["a.png", "b.jpg", "sub/a.png"]
    assert [p.name for p in out.iterdir()] == ["predictions.json"]
    # a high threshold keeps only what passes it (the random model's scores are about 0.5)
    assert main([str(image_dir / "a.png"), "--model", str(model_dir), "--output-dir", str(out), "--threshold",
                 "0.99", "--device", "cpu"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 1 and records[0]["detections"] == []
    assert (out / "a.png").is_file()


def test_collect_images_and_output_names(image_dir):
    images = collect_images([image_dir, image_dir / "a.png"], recursive=True)
    assert [p.relative_to(image_dir).as_posix() for p in images] == ["a.png", "b.jpg", "sub/a.png"]
    assert output_names(images) == ["a.png", "b.png", "a_1.png"]


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.parametrize("args, message", [
    (["{images}/missing.png", "--model", "{model}"], "missing.png does not exist"),
    (["https://example.invalid/scene.png", "--model", "{model}"], "URLs are not read by `predict`"),
    (["{images}/notes.txt", "--model", "{model}"], "notes.txt is not an image file"),
    (["{empty}", "--model", "{model}"], "no images found"),
    (["{images}", "--model", "{empty}"], "is not a saved model folder (no config.json)"),
    (["{images}", "--model", "{images}/no_such_model"], "does not exist"),
    (["{images}", "--model", "{model}", "--threshold", "1.5"], "--threshold must be in [0, 1]"),
    (["{images}", "--model", "{model}", "--top-k", "0"], "--top-k must be >= 1"),
    (["{images}", "--model", "{model}", "--device", "gpu0"], "unknown device"),
    (["{images}", "--model", "{model}", "--output-dir", "{images}/a.png"], "is not a folder"),
    (["{broken}", "--model", "{model}", "--output-dir", "{tmp}/out"], "cannot read image"),
    (["{images}", "--model", "{bad_model}"], "cannot load model"),
])
def test_predict_bad_arguments_exit_with_a_message(model_dir, image_dir, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    (tmp_path / "bad_model").mkdir()
    (tmp_path / "bad_model" / "config.json").write_text("{broken json")
    paths = {"images": image_dir, "model": model_dir, "empty": tmp_path / "empty", "tmp": tmp_path,
             "broken": tmp_path / "broken.png", "bad_model": tmp_path / "bad_model"}
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**paths) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_predict_script_help_and_error_without_traceback(model_dir, tmp_path):
    script = str(ROOT / "scripts" / "predict.py")
    run = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "--model" in run.stdout and "--threshold" in run.stdout and "--device" in run.stdout
    run = subprocess.run([sys.executable, script, str(tmp_path / "nothing.png"), "--model", str(model_dir)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "nothing.png does not exist" in run.stderr and "Traceback" not in run.stderr


def test_draw_detections_colours_by_class():
    image = Image.new("RGB", (120, 80))
    square = [[20, 30], [60, 30], [60, 70], [20, 70]]
    detections = [{"score": 0.9, "label": "ship", "polygon": square},
                  {"score": 0.8, "label": "plane", "polygon": [[80, 40], [110, 40], [110, 60], [80, 60]]}]
    id2label = dict(enumerate(CLASS_NAMES))
    drawn = draw_detections(image, detections, id2label, line_width=1)
    assert image.getpixel((40, 70)) == (0, 0, 0)  # the input is not modified
    assert drawn.getpixel((40, 70)) == class_color(1) == PALETTE[1]  # bottom edge of the "ship" box
    assert drawn.getpixel((95, 60)) == class_color(0) == PALETTE[0]  # bottom edge of the "plane" box
    assert drawn.getpixel((40, 50)) == (0, 0, 0)  # inside stays untouched
    # the label and score are written above the box, on a band of the class colour
    assert PALETTE[1] in {drawn.getpixel((x, y)) for x in range(20, 60) for y in range(15, 29)}
    # post-processing output (tensors) draws the same as pipeline output
    processed = {"scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 0]),
                 "polygons": torch.tensor([[c for p in d["polygon"] for c in p] for d in detections])}
    assert draw_detections(image, processed, id2label, line_width=1).tobytes() == drawn.tobytes()
    # axis-aligned detections (transformers' pipeline) are drawn from `box`
    boxes = [{"score": 0.5, "label": "ship", "box": {"xmin": 20, "ymin": 30, "xmax": 60, "ymax": 70}}]
    assert draw_detections(image, boxes, id2label, line_width=1).getpixel((40, 70)) == PALETTE[1]
    assert class_color("unknown-class") in PALETTE


@pytest.mark.parametrize("layout", ["output_is_input", "input_named_predictions"])
def test_predict_never_overwrites_its_inputs(model_dir, tmp_path, monkeypatch, layout):
    """`predict IMAGES --output-dir IMAGES` (or a folder named like the default output) drew over the inputs."""
    folder = tmp_path / ("images" if layout == "output_is_input" else "predictions")
    folder.mkdir()
    random_image(60, 90, seed=1).save(folder / "a.png")
    random_image(60, 90, seed=2).save(folder / "a_pred.png")
    random_image(50, 70, seed=3).save(folder / "b.jpg")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.chdir(tmp_path)
    extra = ["--output-dir", str(folder)] if layout == "output_is_input" else []  # else the default "predictions"
    assert main([str(folder), "--model", str(model_dir), "--threshold", "0", "--top-k", "3", "--device", "cpu",
                 *extra]) == 0
    assert all((folder / name).read_bytes() == data for name, data in before.items())  # inputs untouched
    written = sorted(p.name for p in folder.iterdir() if p.name not in before)
    assert written == ["a_pred_1.png", "a_pred_pred.png", "b.png", "predictions.json"]
    records = json.loads((folder / "predictions.json").read_text())
    assert len(records) == 3 and all(len(r["detections"]) == 3 for r in records)


def test_output_names_avoid_input_files(tmp_path):
    images = [tmp_path / "a.png", tmp_path / "a.jpg", tmp_path / "sub" / "a.png"]
    assert output_names(images) == ["a.png", "a_1.png", "a_2.png"]
    assert output_names(images, tmp_path / "elsewhere") == ["a.png", "a_1.png", "a_2.png"]
    assert output_names(images, tmp_path) == ["a_pred.png", "a_pred_1.png", "a_pred_2.png"]


def test_predict_folder_with_unreadable_images(model_dir, tmp_path, capsys):
    """The readable images are predicted, the unreadable ones listed, the exit status is 1 (issue 10 item 7)."""
    folder = tmp_path / "images"
    folder.mkdir()
    random_image(60, 90, seed=1).save(folder / "a.png")
    random_image(60, 90, seed=2).save(folder / "c.png")
    data = (folder / "c.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "d.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    assert main([str(folder), "--model", str(model_dir), "--output-dir", str(out), "--threshold", "0",
                 "--top-k", "2", "--device", "cpu", "--batch-size", "2"]) == 1
    captured = capsys.readouterr()
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in records] == ["a.png", "c.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "c.png"]
    assert "2 image(s) could not be read" in captured.err
    assert str(folder / "b.png") in captured.err and str(folder / "d.jpg") in captured.err


def test_predict_refuses_another_architecture(tmp_path, capsys):
    from transformers import DeformableDetrConfig

    folder = tmp_path / "deformable"
    folder.mkdir()
    DeformableDetrConfig().save_pretrained(folder)
    random_image(60, 90).save(tmp_path / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "a.png"), "--model", str(folder), "--output-dir", str(tmp_path / "o"), "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "holds a 'deformable_detr' model, not SL-DETR" in capsys.readouterr().err


def test_predict_reads_16_bit_images_by_their_range(model_dir, tmp_path):
    import numpy as np

    from sl_detr_hf.inference import predict_images

    values = np.linspace(500, 3500, 60 * 90).reshape(60, 90).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    detector = load_detector(model_dir, device="cpu")
    predict_images(detector, [tmp_path / "deep.png"], threshold=0.0, top_k=2, output_dir=tmp_path)
    drawn = np.asarray(Image.open(tmp_path / "deep_1.png" if (tmp_path / "deep_1.png").exists() else
                                  tmp_path / "deep_pred.png"))
    assert drawn.min() < 30 and np.median(drawn) < 250  # not the all-white image of convert("RGB")


def test_predict_command_lives_in_commands(capsys):
    from sl_detr_hf import inference
    from sl_detr_hf.cli import COMMANDS
    from sl_detr_hf.cli import main as cli_main

    assert COMMANDS["predict"][0] == "sl_detr_hf.commands.predict" and not hasattr(inference, "main")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--bands" in out and "--geojson-crs" in out
    with pytest.raises(AttributeError):
        inference.no_such_name  # noqa: B018


def test_predict_bf16(model_dir, image_dir, tmp_path, capsys):
    """``--bf16``: the same detections' count and fields as float32, the network under autocast; refused for an
    ONNX file."""
    out = tmp_path / "out"
    assert main([str(image_dir / "a.png"), "--model", str(model_dir), "--output-dir", str(out), "--threshold", "0",
                 "--top-k", "3", "--device", "cpu", "--bf16", "--no-draw"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 1 and len(records[0]["detections"]) == 3
    assert load_detector(model_dir, bf16=True)._forward_params == {"bf16": True}
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    with pytest.raises(SystemExit):
        main([str(image_dir / "a.png"), "--model", str(onnx), "--bf16"])
    assert "--bf16 applies to SL-DETR model folders" in capsys.readouterr().err


def test_predict_on_the_cpu_keeps_freed_memory(model_dir, image_dir, tmp_path, monkeypatch):
    # as `sl-detr train` does on a CPU (training/allocator.py; recorded here, the test process keeps its malloc)
    from sl_detr_hf.training import allocator

    applied = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: applied.append(1) or True)
    assert main([str(image_dir / "a.png"), "--model", str(model_dir), "--output-dir", str(tmp_path / "out"),
                 "--device", "cpu", "--no-draw"]) == 0
    assert applied == [1]
