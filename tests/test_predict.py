"""`scripts/predict.py` / `sl_detr_hf.inference`: JSON + PNGs for images and folders, clear errors for bad input,
and the PIL drawing of oriented boxes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_sl_detr import CLASS_NAMES, random_image, tiny_model, tiny_processor
from PIL import Image

from sl_detr_hf.inference import collect_images, load_detector, main, output_names, resolve_device
from sl_detr_hf.rotated_boxes import rbox_to_poly
from sl_detr_hf.visualize import PALETTE, class_color, draw_detections

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


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
