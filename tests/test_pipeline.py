"""Pipelines: transformers' stock "object-detection" and the registered "oriented-object-detection" pipeline,
in process and, from a folder written by `save_for_hub`, with `trust_remote_code` where the package is hidden."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from _tiny_sl_detr import CLASS_NAMES, random_image, tiny_model, tiny_processor
from transformers import pipeline

from sl_detr_hf.hub import save_for_hub
from sl_detr_hf.pipeline_oriented_detection import TASK, OrientedObjectDetectionPipeline, pad_collate
from sl_detr_hf.rotated_boxes import rbox_to_hbox, rbox_to_poly

BOX_TYPES = ("rotated", "horizontal")


def _reference(model, processor, images, top_k=None, threshold=0.0):
    """Processor -> model -> post-processing by hand, for a batch of PIL images."""
    inputs = processor(images, return_tensors="pt").to(model.device)  # pipeline() may have moved it to a GPU
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [(im.height, im.width) for im in images]
    results = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes, top_k=top_k)
    return [{k: v.cpu() for k, v in r.items()} for r in results]


def _rbox_tensor(detections):
    return torch.tensor([[d["rbox"][k] for k in ("cx", "cy", "w", "h", "theta")] for d in detections])


@pytest.mark.parametrize("box_type", BOX_TYPES)
def test_stock_object_detection_pipeline(box_type):
    model, processor = tiny_model(box_type), tiny_processor(box_type)
    detector = pipeline("object-detection", model=model, image_processor=processor)
    image = random_image(60, 90)
    out = detector(image, threshold=0.0)
    ref = _reference(model, processor, [image])[0]
    assert len(out) == len(ref["scores"]) == processor.max_detections
    assert [set(d) for d in out] == [{"score", "label", "box"}] * len(out)
    assert [d["score"] for d in out] == pytest.approx(ref["scores"].tolist(), abs=1e-5)
    assert [d["label"] for d in out] == [CLASS_NAMES[i] for i in ref["labels"].tolist()]
    assert [list(d["box"].values()) for d in out] == ref["boxes"].int().tolist()
    # the threshold is applied
    cut = sorted(d["score"] for d in out)[len(out) // 2]
    assert len(detector(image, threshold=cut)) == sum(d["score"] > cut for d in out)


@pytest.mark.parametrize("box_type", BOX_TYPES)
def test_oriented_pipeline_by_task_name(box_type):
    model, processor = tiny_model(box_type), tiny_processor(box_type)
    detector = pipeline(TASK, model=model, image_processor=processor)
    assert isinstance(detector, OrientedObjectDetectionPipeline)
    image = random_image(60, 90)
    out = detector(image, threshold=0.0, top_k=7)
    assert len(out) == 7
    assert [set(d) for d in out] == [{"score", "label", "box", "rbox", "polygon"}] * 7
    scores = [d["score"] for d in out]
    assert scores == sorted(scores, reverse=True)
    assert {d["label"] for d in out} <= set(CLASS_NAMES)

    rboxes = _rbox_tensor(out)
    polygons = torch.tensor([[c for point in d["polygon"] for c in point] for d in out])
    assert all(len(d["polygon"]) == 4 for d in out)
    torch.testing.assert_close(polygons, rbox_to_poly(rboxes), atol=1e-4, rtol=0)
    # box = the hull of the polygon (integer pixels, as in transformers' pipeline)
    hull = torch.stack([polygons[:, 0::2].min(1).values, polygons[:, 1::2].min(1).values,
                        polygons[:, 0::2].max(1).values, polygons[:, 1::2].max(1).values], dim=1)
    boxes = torch.tensor([[d["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] for d in out])
    assert (boxes - hull).abs().max() <= 1.0 + 1e-4
    assert boxes.tolist() == rbox_to_hbox(rboxes).int().tolist()
    # le90
    assert (rboxes[:, 2] >= rboxes[:, 3]).all()
    assert ((rboxes[:, 4] >= -math.pi / 2) & (rboxes[:, 4] < math.pi / 2)).all()

    ref = _reference(model, processor, [image], top_k=7)[0]
    assert scores == pytest.approx(ref["scores"].tolist(), abs=1e-5)
    if box_type == "rotated":
        torch.testing.assert_close(rboxes, ref["rboxes"], atol=1e-4, rtol=1e-5)
        assert rboxes[:, 4].abs().max() > 0.1  # the test model really predicts rotated boxes
    else:  # axis-aligned: angle 0 (or -pi/2 for a tall box), the same boxes as the stock pipeline
        assert all(t == 0.0 or t == pytest.approx(-math.pi / 2) for t in rboxes[:, 4].tolist())
        torch.testing.assert_close(rbox_to_hbox(rboxes), ref["boxes"], atol=1e-4, rtol=1e-5)


def test_oriented_pipeline_threshold_nms_and_bad_parameters():
    detector = pipeline(TASK, model=tiny_model(), image_processor=tiny_processor())
    image = random_image(60, 90)
    everything = detector(image, threshold=0.0)
    assert len(everything) == 20  # the processor's max_detections
    cut = everything[5]["score"]
    above = detector(image, threshold=cut)
    assert len(above) == sum(d["score"] > cut for d in everything) and all(d["score"] > cut for d in above)
    # class-wise NMS keeps a subset of the candidates, never more
    suppressed = detector(image, threshold=0.0, nms_iou_threshold=0.1)
    assert 0 < len(suppressed) <= len(everything)
    with pytest.raises(ValueError, match="top_k"):
        detector(image, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        detector(image, threshold="high")


def test_oriented_pipeline_batches_images_of_different_sizes():
    model, processor = tiny_model(), tiny_processor()
    detector = pipeline(TASK, model=model, image_processor=processor)
    images = [random_image(60, 90, seed=1), random_image(80, 40, seed=2), random_image(50, 50, seed=3)]
    batched = detector(images, threshold=0.0, top_k=4, batch_size=3)
    one_by_one = detector(images, threshold=0.0, top_k=4)
    assert [len(r) for r in batched] == [len(r) for r in one_by_one] == [4, 4, 4]
    for image, single in zip(images, one_by_one):
        ref = detector(image, threshold=0.0, top_k=4)
        assert [d["score"] for d in single] == pytest.approx([d["score"] for d in ref], abs=1e-6)
    # a padded batch is exactly the image processor's own padded batch
    for out, ref in zip(batched, _reference(model, processor, images, top_k=4)):
        assert [d["score"] for d in out] == pytest.approx(ref["scores"].tolist(), abs=1e-5)
        torch.testing.assert_close(_rbox_tensor(out), ref["rboxes"], atol=1e-3, rtol=1e-5)


def test_pad_collate_pads_bottom_right():
    items = [{"pixel_values": torch.ones(1, 3, 4, 6), "pixel_mask": torch.ones(1, 4, 6, dtype=torch.long),
              "target_size": torch.tensor([[8, 12]])},
             {"pixel_values": torch.ones(1, 3, 5, 3), "pixel_mask": torch.ones(1, 5, 3, dtype=torch.long),
              "target_size": torch.tensor([[10, 6]])}]
    batch = pad_collate(items)
    assert batch["pixel_values"].shape == (2, 3, 5, 6)
    assert batch["pixel_mask"].sum(dim=(1, 2)).tolist() == [24, 15]
    assert batch["pixel_values"][0, :, 4].abs().sum() == 0 and batch["pixel_values"][1, :, :, 3:].abs().sum() == 0
    assert batch["target_size"].tolist() == [[8, 12], [10, 6]]


def test_pipeline_save_pretrained_ships_the_pipeline_code(tmp_path):
    detector = pipeline(TASK, model=tiny_model(), image_processor=tiny_processor())
    detector.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_oriented_detection.OrientedObjectDetectionPipeline"
    assert {"pipeline_oriented_detection.py", "geometry_conversions.py", "geometry_nms.py", "modeling_sl_detr.py",
            "preprocessor_config.json"} <= {p.name for p in tmp_path.iterdir()}


_REMOTE_SCRIPT = textwrap.dedent("""
    import json, sys

    class HideSlDetr:
        def find_spec(self, name, path=None, target=None):
            if name == "sl_detr_hf" or name.startswith("sl_detr_hf."):
                raise ImportError("sl_detr_hf is hidden for this test")

    sys.meta_path.insert(0, HideSlDetr())
    try:
        import sl_detr_hf  # noqa: F401
        hidden = False
    except ImportError:
        hidden = True
    import builtins
    from transformers import pipeline

    asked = []

    def prompt(message=""):
        asked.append(message)
        raise EOFError("answered nothing")

    builtins.input = prompt
    folder, image = sys.argv[1], sys.argv[2]
    try:  # without the package, the folder's code runs only when trusted
        pipeline("oriented-object-detection", model=folder)
        refused = ""
    except ValueError as err:
        refused = str(err)
    asked_untrusted, asked[:] = len(asked), []
    oriented = pipeline(model=folder, trust_remote_code=True)
    stock = pipeline("object-detection", model=folder, trust_remote_code=True)
    print(json.dumps({
        "refused": refused,
        "asked_untrusted": asked_untrusted,
        "asked_trusted": len(asked),
        "hidden": hidden,
        "pipeline_module": type(oriented).__module__,
        "model_module": type(oriented.model).__module__,
        "oriented": oriented(image, threshold=0.0, top_k=5),
        "stock": stock(image, threshold=0.0),
        "loaded": sorted(m for m in sys.modules if m.startswith("sl_detr_hf")),
    }))
""")


@pytest.mark.slow
def test_trust_remote_code_pipeline_without_the_package(tmp_path):
    model, processor = tiny_model(), tiny_processor()
    save_for_hub(model, processor, tmp_path / "model", metrics={"mAP50": 0.1})
    image = random_image(70, 100, seed=5)
    image.save(tmp_path / "image.png")
    (tmp_path / "remote.py").write_text(_REMOTE_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "remote.py", str(tmp_path / "model"), str(tmp_path / "image.png")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["hidden"] and result["loaded"] == []
    assert "trust_remote_code=True" in result["refused"] and result["asked_untrusted"] >= 1
    assert result["asked_trusted"] == 0
    assert result["pipeline_module"].startswith("transformers_modules.")
    assert result["model_module"].startswith("transformers_modules.")

    local = pipeline(TASK, model=model, image_processor=processor)(image, threshold=0.0, top_k=5)
    remote = result["oriented"]
    assert len(remote) == 5
    assert [d["label"] for d in remote] == [d["label"] for d in local]
    assert [d["score"] for d in remote] == pytest.approx([d["score"] for d in local], abs=1e-5)
    torch.testing.assert_close(_rbox_tensor(remote), _rbox_tensor(local), atol=1e-3, rtol=1e-5)
    polygons = [torch.tensor([d["polygon"] for d in dets]) for dets in (remote, local)]
    torch.testing.assert_close(*polygons, atol=1e-3, rtol=1e-5)
    assert len(result["stock"]) == processor.max_detections
    assert [set(d) for d in result["stock"]] == [{"score", "label", "box"}] * len(result["stock"])


def test_bf16_runs_the_network_under_autocast_and_returns_float32(monkeypatch):
    """``bf16=True`` (per call or at construction): the model's forward under bf16 autocast, the outputs cast to
    float32 before post-processing; the boxes stay near the float32 ones. Anything but a bool is refused."""
    model, processor = tiny_model(), tiny_processor()
    detector = OrientedObjectDetectionPipeline(model=model, image_processor=processor, task=TASK, device="cpu")
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    image = random_image(60, 90)
    full = detector(image, threshold=0.0, top_k=5)
    half = detector(image, threshold=0.0, top_k=5, bf16=True)
    forward = OrientedObjectDetectionPipeline._forward
    raw = forward(detector, detector.preprocess(image), bf16=True)
    assert seen == [False, True, True]
    assert raw["logits"].dtype == raw["pred_boxes"].dtype == torch.float32
    assert len(half) == len(full) == 5 and all(math.isfinite(d["score"]) for d in half)
    built = OrientedObjectDetectionPipeline(model=model, image_processor=processor, task=TASK, device="cpu",
                                            bf16=True)
    built(image, threshold=0.0, top_k=5)
    assert seen[-1] is True
    with pytest.raises(ValueError, match="bf16"):
        detector(image, bf16="yes")
