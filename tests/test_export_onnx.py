"""ONNX export (issue 12): onnxruntime against torch, post-processing in the graph, predict via .onnx, no torch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from _tiny_sl_detr import NUM_QUERIES, random_image, tiny_model

from sl_detr_hf import SlDetrImageProcessor
from sl_detr_hf.export_onnx import export_onnx, read_onnx_settings, require_onnx
from sl_detr_hf.onnx_predictor import OnnxDetector

SIZE = 96  # export size; the tracing example is a batch of 2 full 96 x 96 images


def fixed_processor(box_type: str) -> SlDetrImageProcessor:
    """The tiny processor, padding to the export size (so the torch path sees the same padded input)."""
    return SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": SIZE}, box_type=box_type,
                                max_detections=NUM_QUERIES, pad_size={"height": SIZE, "width": SIZE})


@pytest.fixture(scope="module", params=["rotated", "horizontal"])
def exported(request, tmp_path_factory):
    box_type = request.param
    # the rotated model selects its queries through the proposal NMS (as the demo's does): the graph holds it too;
    # at ProbIoU 0.1 it changes which proposals this random model selects
    model = tiny_model(box_type, query_selection_nms=0.1 if box_type == "rotated" else None)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / f"{box_type}.onnx", fixed_processor(box_type),
                       with_postprocess=True)
    return box_type, model, path


def session(path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def inputs(batch: int, content: tuple[int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A padded batch whose images cover ``content`` (h, w) of the 96 x 96 canvas (the first image: all of it)."""
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, SIZE, SIZE, generator=generator)
    pixel_mask = torch.zeros(batch, SIZE, SIZE, dtype=torch.long)
    pixel_mask[0] = 1
    pixel_mask[1:, :content[0], :content[1]] = 1
    pixel_values *= pixel_mask[:, None]
    target_sizes = torch.tensor([[SIZE, SIZE]] + [list(content)] * (batch - 1), dtype=torch.float32) * 1.5
    return pixel_values, pixel_mask, target_sizes


@pytest.mark.parametrize("batch,content", [(1, (64, 96)), (3, (80, 56))])
def test_onnxruntime_matches_torch(exported, batch, content):
    box_type, model, path = exported
    pixel_values, pixel_mask, target_sizes = inputs(batch, content, seed=batch)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    logits, pred_boxes = session(path).run(["logits", "pred_boxes"], {
        "pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy(), "target_sizes": target_sizes.numpy()})
    assert logits.shape == (batch, NUM_QUERIES, 3)
    assert pred_boxes.shape == (batch, NUM_QUERIES, 5 if box_type == "rotated" else 4)
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(pred_boxes, expected.pred_boxes.numpy(), atol=1e-4, rtol=0)
    # the outputs are not constant: a different image gives different logits
    assert np.abs(logits[0] - session(path).run(["logits"], {
        "pixel_values": inputs(1, content, seed=99)[0].numpy(), "pixel_mask": pixel_mask[:1].numpy(),
        "target_sizes": target_sizes[:1].numpy()})[0][0]).max() > 1e-3


@pytest.mark.parametrize("batch,content", [(1, (64, 96)), (3, (80, 56))])
def test_postprocess_in_graph_matches_processor(exported, batch, content):
    box_type, model, path = exported
    pixel_values, pixel_mask, target_sizes = inputs(batch, content, seed=10 + batch)
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    expected = fixed_processor(box_type).post_process_object_detection(outputs, threshold=0.0,
                                                                        target_sizes=target_sizes)
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy(),
                                          "target_sizes": target_sizes.numpy()})))
    assert got["scores"].shape == (batch, NUM_QUERIES)  # top-k = max_detections = 20
    for b in range(batch):
        ref = expected[b]
        np.testing.assert_array_equal(got["labels"][b], ref["labels"].numpy())
        np.testing.assert_allclose(got["scores"][b], ref["scores"].numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["boxes"][b], ref["boxes"].numpy(), atol=1e-4, rtol=0)
        if box_type == "rotated":
            np.testing.assert_allclose(got["rboxes"][b], ref["rboxes"].numpy(), atol=1e-4, rtol=0)
            np.testing.assert_allclose(got["polygons"][b], ref["polygons"].numpy(), atol=1e-4, rtol=0)
        else:
            assert "rboxes" not in got


def test_settings_stored_in_the_file(exported):
    box_type, model, path = exported
    settings = read_onnx_settings(path)
    assert settings["image_size"] == [SIZE, SIZE]
    assert settings["box_type"] == box_type
    assert settings["top_k"] == NUM_QUERIES
    assert settings["id2label"] == {"0": "plane", "1": "ship", "2": "storage-tank"}
    assert settings["size"] == {"shortest_edge": 64, "longest_edge": SIZE}
    assert settings["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert settings["with_postprocess"] is True


def test_onnx_detector_matches_pipeline(exported):
    """Same detections as the pipeline, for an image shrunk, one enlarged and one at the processor's size."""
    from sl_detr_hf.pipeline_oriented_detection import OrientedObjectDetectionPipeline

    box_type, model, path = exported
    pipe = OrientedObjectDetectionPipeline(model=model, image_processor=fixed_processor(box_type),
                                           task="oriented-object-detection")
    images = [random_image(150, 110, seed=1), random_image(40, 60, seed=2), random_image(64, 96, seed=3)]
    expected = pipe(images, threshold=0.0)
    got = OnnxDetector(path)(images, threshold=0.0, batch_size=2)
    for exp, det in zip(expected, got):
        assert_same_detections(exp, det)


def same_rbox(a: dict, b: dict, atol: float) -> bool:
    """Equal rotated boxes, also when ``w == h`` up to rounding and le90 picked the other side as the width."""
    if all(abs(a[k] - b[k]) <= atol for k in ("cx", "cy", "w", "h", "theta")):
        return True
    turned = (a["theta"] - b["theta"]) % (math.pi / 2)
    return (abs(a["cx"] - b["cx"]) <= atol and abs(a["cy"] - b["cy"]) <= atol and abs(a["w"] - b["h"]) <= atol
            and abs(a["h"] - b["w"]) <= atol and min(turned, math.pi / 2 - turned) <= atol)


def assert_same_detections(expected: list[dict], got: list[dict], atol: float = 1e-4) -> None:
    assert len(got) == len(expected) > 0
    for e, g in zip(expected, got):
        assert e["label"] == g["label"]
        assert abs(e["score"] - g["score"]) <= atol
        assert same_rbox(e["rbox"], g["rbox"], atol), (e["rbox"], g["rbox"])
        assert all(abs(e["box"][k] - g["box"][k]) <= 1 for k in e["box"])  # integer pixels, truncated


def test_training_only_parts_stay_out_of_the_graph(tmp_path):
    """Denoising queries and mixed query selection on: the graph has the matching queries only."""
    model = tiny_model("rotated")
    model.config.num_denoising, model.config.mixed_query_selection = 100, True
    model.train()
    path = export_onnx(model, tmp_path / "dn.onnx", fixed_processor("rotated"))
    assert model.training  # restored
    model.eval()
    pixel_values, pixel_mask, _ = inputs(2, (70, 90), seed=5)
    logits, pred_boxes = session(path).run(None, {"pixel_values": pixel_values.numpy(),
                                                  "pixel_mask": pixel_mask.numpy()})
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    assert logits.shape == (2, NUM_QUERIES, 3)
    np.testing.assert_allclose(pred_boxes, expected.pred_boxes.numpy(), atol=1e-4, rtol=0)
    assert [i.name for i in session(path).get_inputs()] == ["pixel_values", "pixel_mask"]


def test_cli_export_then_predict_same_json(tmp_path):
    from sl_detr_hf.cli import main as cli_main
    from sl_detr_hf.commands.predict import main as predict_main

    folder = tmp_path / "model"
    tiny_model("rotated").save_pretrained(folder)
    fixed_processor("rotated").save_pretrained(folder)
    images = tmp_path / "images"
    images.mkdir()
    random_image(120, 180, seed=4).save(images / "a.png")
    random_image(64, 96, seed=5).save(images / "b.png")
    onnx_path = tmp_path / "model.onnx"
    assert cli_main(["export", "--model", str(folder), "--output", str(onnx_path)]) == 0
    assert read_onnx_settings(onnx_path)["image_size"] == [SIZE, SIZE]
    common = [str(images), "--threshold", "0", "--no-draw", "--device", "cpu"]
    assert predict_main([*common, "--model", str(folder), "--output-dir", str(tmp_path / "torch")]) == 0
    assert predict_main([*common, "--model", str(onnx_path), "--output-dir", str(tmp_path / "onnx")]) == 0
    expected = json.loads((tmp_path / "torch" / "predictions.json").read_text())
    got = json.loads((tmp_path / "onnx" / "predictions.json").read_text())
    assert [r["image"] for r in got] == [r["image"] for r in expected]
    for e, g in zip(expected, got):
        assert (e["width"], e["height"]) == (g["width"], g["height"])
        assert_same_detections(e["detections"], g["detections"])


def test_export_cli_errors(tmp_path, capsys):
    from sl_detr_hf.commands.export import main

    with pytest.raises(SystemExit) as info:
        main(["--model", str(tmp_path), "--output", str(tmp_path / "m.txt")])
    assert info.value.code == 2 and "must end with .onnx" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path), "--output", str(tmp_path / "m.onnx")])
    assert "no config.json" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 32"):
        export_onnx(tiny_model(), tmp_path / "small.onnx", fixed_processor("rotated"), image_size=(16, 64))
    with pytest.raises(ValueError, match="image-size"):
        export_onnx(tiny_model(), tmp_path / "x.onnx", SlDetrImageProcessor(size={"shortest_edge": 64}))


def test_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"sl_detr_hf\[onnx\]"):
        require_onnx("onnx", "onnxscript")


def test_onnx_file_without_settings_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not written by `sl-detr export`"):
        OnnxDetector(tmp_path / "other.onnx")


def test_predictor_runs_without_torch(exported, tmp_path):
    """onnx_predictor.py alone, with torch / torchvision / transformers / sl_detr_hf made unimportable."""
    box_type, model, path = exported
    image = tmp_path / "a.png"
    random_image(64, 96, seed=7).save(image)  # no resize: Pillow and torchvision agree exactly
    module = Path(__file__).parents[1] / "sl_detr_hf" / "onnx_predictor.py"
    code = (
        "import sys, json, importlib.util\n"
        "for name in ('torch', 'torchvision', 'transformers', 'sl_detr_hf'): sys.modules[name] = None\n"
        f"spec = importlib.util.spec_from_file_location('onnx_predictor', {str(module)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        f"dets = mod.OnnxDetector({str(path)!r})({str(image)!r}, threshold=0.0)\n"
        "assert not any(m.startswith(('torch', 'transformers')) for m in sys.modules if sys.modules[m] is not None)\n"
        "print(json.dumps(dets))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    expected = OnnxDetector(path)(str(image), threshold=0.0)
    assert_same_detections(expected, got, atol=1e-6)


def test_per_image_normalization_travels_with_the_file():
    """A model trained on images standardized one by one: the settings say so and the predictor's numpy
    preprocessing gives the processor's pixel values (a low-contrast image, one at full contrast, one flat)."""
    from sl_detr_hf.export_onnx import export_settings
    from sl_detr_hf.image_processing_sl_detr import MIN_IMAGE_STD
    from sl_detr_hf.onnx_predictor import preprocess

    processor = fixed_processor("rotated")
    processor.normalize_per_image = True
    settings = export_settings(tiny_model("rotated"), processor, (SIZE, SIZE), NUM_QUERIES, False, 18)
    assert settings["normalize_per_image"] is True and settings["min_image_std"] == pytest.approx(MIN_IMAGE_STD)
    generator = np.random.default_rng(3)
    from PIL import Image

    images = [Image.fromarray(generator.integers(100, 120, (64, 96, 3), dtype=np.uint8)),
              Image.fromarray(generator.integers(0, 256, (96, 64, 3), dtype=np.uint8)),
              Image.fromarray(np.full((64, 96, 3), 77, dtype=np.uint8))]
    pixel_values, pixel_mask, _ = preprocess(images, settings)
    expected = processor(images, return_tensors="pt")
    np.testing.assert_allclose(pixel_values, expected["pixel_values"].numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(pixel_mask, expected["pixel_mask"].numpy())
    assert abs(pixel_values[0, :, :64, :96].std() - 1) < 1e-4 and pixel_values[2].max() == 0
    plain = export_settings(tiny_model("rotated"), fixed_processor("rotated"), (SIZE, SIZE), NUM_QUERIES, False, 18)
    assert plain["normalize_per_image"] is False


def test_the_from_scratch_backbone_exports(tmp_path):
    """The backbone `sl-detr train` builds (light stem, space-to-depth shortcuts, learning batch norms, folded at
    inference) exports, and onnxruntime gives torch's outputs (odd stage sizes: 66 px is 17 at stride 4)."""
    model = tiny_model("rotated", backbone_norm="batch_norm", backbone_frozen_stages=-1, backbone_stem="light",
                       backbone_downsample="space_to_depth")
    model.train()
    with torch.no_grad():
        model(pixel_values=torch.randn(2, 3, 66, 66))  # running statistics away from their start
    model.eval()
    processor = SlDetrImageProcessor(size={"height": 66, "width": 66}, max_detections=NUM_QUERIES)
    path = export_onnx(model, tmp_path / "scratch.onnx", processor, image_size=(66, 66))
    pixel_values = torch.randn(1, 3, 66, 66, generator=torch.Generator().manual_seed(3))
    pixel_mask = torch.ones(1, 66, 66, dtype=torch.long)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
    logits, pred_boxes = session(path).run(["logits", "pred_boxes"], {
        "pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()})
    np.testing.assert_allclose(logits, expected.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(pred_boxes, expected.pred_boxes.numpy(), atol=1e-4, rtol=0)
