"""Whole-scene tiled prediction (issue 12): windows, merging across tile borders, exactness, CLI, pipeline checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _tiny_sl_detr import NUM_QUERIES, random_image, tiny_model, tiny_processor
from PIL import Image, ImageDraw

from sl_detr_hf import SlDetrImageProcessor
from sl_detr_hf import tiling as tiling_module
from sl_detr_hf.pipeline_oriented_detection import OrientedObjectDetectionPipeline
from sl_detr_hf.rotated_boxes import box_iou_rotated, rbox_to_poly, regularize_rboxes
from sl_detr_hf.tiling import open_scene, predict_scene, tile_windows

RBOX_KEYS = ("cx", "cy", "w", "h", "theta")


def rbox_tensor(detections: list[dict]) -> torch.Tensor:
    return torch.tensor([[d["rbox"][k] for k in RBOX_KEYS] for d in detections], dtype=torch.float64).reshape(-1, 5)


def test_tile_windows_hand_computed():
    windows = tile_windows(300, 250, tile=96, overlap=24)  # step 72; last windows shifted back to the border
    xs, ys = sorted(set(windows[:, 0].tolist())), sorted(set(windows[:, 1].tolist()))
    assert xs == [0, 72, 144, 204] and ys == [0, 72, 144, 154]
    assert len(windows) == 16
    assert (windows[:, 2] - windows[:, 0] == 96).all() and (windows[:, 3] - windows[:, 1] == 96).all()
    small = tile_windows(50, 40, tile=96, overlap=24)  # smaller than a tile: one window, clipped to the scene
    assert small.tolist() == [[0, 0, 50, 40]]
    for tile, overlap in ((16, 0), (96, 96), (96, -1), (96.0, 10)):
        with pytest.raises(ValueError):
            tile_windows(300, 250, tile=tile, overlap=overlap)


# ------------------------------------------------------------------------------ an exact detector on drawn objects

# Objects of at most 28 px across (< the 32 px overlap, so each lies whole in some tile), on tile borders.
OBJECTS = [  # cx, cy, w, h, theta
    (96.0, 40.0, 24.0, 10.0, 0.3), (64.5, 100.0, 20.0, 12.0, -0.7), (160.0, 128.0, 22.0, 8.0, 1.2),
    (190.0, 60.0, 18.0, 14.0, 0.0), (250.0, 224.0, 24.0, 9.0, -1.4), (128.0, 225.0, 16.0, 16.0, 0.5),
    (40.0, 160.0, 26.0, 6.0, 0.9),
]
LABELS = ("plane", "ship", "storage-tank")


def draw_scene(width: int = 300, height: int = 250) -> Image.Image:
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for k, box in enumerate(OBJECTS):
        poly = rbox_to_poly(torch.tensor([box], dtype=torch.float64))[0].tolist()
        draw.polygon([(poly[i], poly[i + 1]) for i in range(0, 8, 2)], fill=(10 * (k + 1), 0, 0))
    return image


def oracle(images, threshold=0.5, top_k=None, batch_size=1, nms_iou_threshold=None):
    """A detector that finds the drawn objects exactly: the box of each colour's pixels (their second moments).

    An object is detected when more than half of its pixels are in the image; the score is that fraction.
    """
    single = not isinstance(images, list)
    results = []
    for image in [images] if single else images:
        red = np.asarray(image)[..., 0].astype(int)
        detections = []
        for k, full in enumerate(OBJECTS):
            ys, xs = np.nonzero(red == 10 * (k + 1))
            if len(xs) < 0.5 * full[2] * full[3]:
                continue
            points = np.stack([xs + 0.5, ys + 0.5], axis=1)
            values, vectors = np.linalg.eigh(np.cov(points.T, bias=True))
            w, h = math.sqrt(12 * values[1]), math.sqrt(12 * values[0])
            theta = math.atan2(vectors[1, 1], vectors[0, 1])
            box = regularize_rboxes(torch.tensor([[*points.mean(0), w, h, theta]]))[0].tolist()
            detections.append({"score": min(1.0, len(xs) / (full[2] * full[3])) * 0.9, "label": LABELS[k % 3],
                               "rbox": dict(zip(RBOX_KEYS, box))})
        results.append(sorted(detections, key=lambda d: -d["score"]))
    return results[0] if single else results


def test_objects_across_tile_borders_found_once():
    scene = draw_scene()
    windows = tile_windows(300, 250, tile=96, overlap=32)
    for box in OBJECTS:  # every object is cut by a tile border, and whole in another tile
        assert any(_inside(box, w, whole=False) and not _inside(box, w) for w in windows.tolist())
        assert any(_inside(box, w) for w in windows.tolist())
    detections = predict_scene(oracle, scene, tile=96, overlap=32, threshold=0.0, progress=False)
    assert len(detections) == len(OBJECTS)
    truth = torch.tensor(OBJECTS, dtype=torch.float64)
    iou = box_iou_rotated(rbox_tensor(detections), truth)
    assert (iou.max(0).values > 0.7).all()  # every object found (pixel moments of small drawn boxes) ...
    assert ((iou > 0.1).sum(0) == 1).all()  # ... once
    assert [d["label"] for d in detections] == [LABELS[int(k) % 3] for k in iou.argmax(1)]
    # each merged box is the box of a patch that holds the whole object, predicted alone
    for det, k in zip(detections, iou.argmax(1).tolist()):
        x0, y0, x1, y1 = next(w for w in windows.tolist() if _inside(OBJECTS[k], w))
        alone = oracle(scene.crop((x0, y0, x1, y1)))
        match = next(d for d in alone if d["label"] == det["label"] and d["score"] == pytest.approx(det["score"]))
        shifted = dict(match["rbox"], cx=match["rbox"]["cx"] + x0, cy=match["rbox"]["cy"] + y0)
        assert all(abs(shifted[key] - det["rbox"][key]) < 1e-3 for key in RBOX_KEYS)


def _inside(box, window, whole: bool = True) -> bool:
    """All (``whole``) or some corners of the box at least 1 px inside the window."""
    poly = rbox_to_poly(torch.tensor([box], dtype=torch.float64))[0].reshape(4, 2)
    inside = ((poly[:, 0] >= window[0] + 1) & (poly[:, 0] <= window[2] - 1) & (poly[:, 1] >= window[1] + 1)
              & (poly[:, 1] <= window[3] - 1))
    return bool(inside.all() if whole else inside.any())


# ------------------------------------------------------------------------------------------- the tiny real model


@pytest.fixture(scope="module")
def pipe():
    return OrientedObjectDetectionPipeline(model=tiny_model("rotated"), image_processor=tiny_processor(),
                                           task="oriented-object-detection")


def test_tile_covering_the_image_is_exactly_untiled(pipe):
    image = random_image(90, 96, seed=1)
    expected = pipe(image, threshold=0.0)
    assert len(expected) > 0
    assert pipe(image, threshold=0.0, tile=96, overlap=20) == expected
    assert pipe([image], threshold=0.0, tile=256) == [expected]  # default overlap 200


def test_tiled_detections_come_from_patches_and_are_merged(pipe):
    scene = random_image(250, 300, seed=2)
    merged = pipe(scene, threshold=0.0, tile=96, overlap=24, batch_size=4, progress=False)
    windows = tile_windows(300, 250, tile=96, overlap=24)
    alone = [(w, rbox_tensor(d), d) for w, d in zip(windows.tolist(), [pipe(scene.crop(tuple(w)), threshold=0.0)
                                                                          for w in windows.tolist()])]
    assert sum(len(d) for _, _, d in alone) > len(merged) > 0  # the merge removed overlapping detections
    for det in merged:  # every merged detection is a patch's own detection, shifted to the scene
        found = False
        for (x0, y0, _, _), boxes, dets in alone:
            shifted = boxes + torch.tensor([x0, y0, 0, 0, 0], dtype=torch.float64)
            close = (shifted - torch.tensor([det["rbox"][k] for k in RBOX_KEYS])).abs().max(1).values < 1e-3
            found |= any(c and dets[i]["label"] == det["label"] and abs(dets[i]["score"] - det["score"]) < 1e-6
                         for i, c in enumerate(close.tolist()))
        assert found, det
    boxes = rbox_tensor(merged)
    iou = box_iou_rotated(boxes, boxes)
    same = torch.tensor([[a["label"] == b["label"] for b in merged] for a in merged])
    assert not ((iou > 0.1) & same & ~torch.eye(len(merged), dtype=torch.bool)).any()  # no duplicates left
    assert [d["score"] for d in merged] == sorted((d["score"] for d in merged), reverse=True)


def test_onnx_tiles_match_torch_tiles(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from test_export_onnx import same_rbox

    from sl_detr_hf.export_onnx import export_onnx
    from sl_detr_hf.onnx_predictor import OnnxDetector

    processor = SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, max_detections=NUM_QUERIES,
                                     pad_size={"height": 96, "width": 96})
    model = tiny_model("rotated")
    detector = OnnxDetector(export_onnx(model, tmp_path / "m.onnx", processor))
    pipe = OrientedObjectDetectionPipeline(model=model, image_processor=processor, task="oriented-object-detection")
    scene = random_image(200, 260, seed=3)
    expected = pipe(scene, threshold=0.0, tile=96, overlap=24, batch_size=3, progress=False)
    got = detector(scene, threshold=0.0, tile=96, overlap=24, batch_size=3, progress=False)
    assert len(got) == len(expected) > 0
    for e, g in zip(expected, got):
        assert e["label"] == g["label"] and abs(e["score"] - g["score"]) < 1e-4
        assert same_rbox(e["rbox"], g["rbox"], 1e-3), (e["rbox"], g["rbox"])
    small = random_image(64, 96, seed=4)
    assert detector(small, threshold=0.0, tile=96, overlap=24) == detector(small, threshold=0.0)


def test_predict_cli_tile(tmp_path, pipe, capsys):
    from sl_detr_hf.commands.predict import main

    folder = tmp_path / "model"
    pipe.model.save_pretrained(folder)
    pipe.image_processor.save_pretrained(folder)
    scene = random_image(200, 230, seed=5)
    scene.save(tmp_path / "scene.png")
    out = tmp_path / "out"
    assert main([str(tmp_path / "scene.png"), "--model", str(folder), "--output-dir", str(out), "--device", "cpu",
                 "--tile", "96", "--overlap", "24", "--threshold", "0"]) == 0
    record = json.loads((out / "predictions.json").read_text())[0]
    assert (record["width"], record["height"]) == (230, 200)
    expected = pipe(scene, threshold=0.0, tile=96, overlap=24, progress=False)
    assert len(record["detections"]) == len(expected) > 0
    assert all(abs(a["rbox"][k] - b["rbox"][k]) < 1e-4 for a, b in zip(record["detections"], expected)
               for k in RBOX_KEYS)
    assert (out / "scene.png").is_file()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "scene.png"), "--model", str(folder), "--tile", "96", "--overlap", "96"])
    assert "--overlap" in capsys.readouterr().err


def test_open_scene_pixel_limits(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL alone would refuse this 1200-pixel image
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    scene = open_scene(path)
    assert scene.size == (40, 30) and Image.MAX_IMAGE_PIXELS == 100  # accepted; PIL's limit restored
    monkeypatch.setattr(tiling_module, "MAX_SCENE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"big\.png: 40 x 30 = 1,200 pixels"):
        open_scene(path)
    with pytest.raises(ValueError, match="cannot read image"):
        open_scene(tmp_path / "missing.png")


def test_pipeline_input_checks(pipe):
    assert pipe([]) == []
    for bad in (2, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="threshold"):
            pipe(random_image(), threshold=bad)
    with pytest.raises(ValueError, match="tile"):
        pipe(random_image(), tile=8)
