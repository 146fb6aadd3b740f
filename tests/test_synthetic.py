"""The synthetic DOTA generator: determinism, label content, what is drawn where."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sl_detr_hf.data.dota import load_dota
from sl_detr_hf.data.synthetic import SYNTHETIC_CLASSES, SyntheticDotaConfig, make_synthetic_dota, make_synthetic_image
from sl_detr_hf.rotated_boxes import box_iou_rotated


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_from_seed(tmp_path):
    a = _files(make_synthetic_dota(tmp_path / "a", num_images=4, seed=7))
    b = _files(make_synthetic_dota(tmp_path / "b", num_images=4, seed=7))
    c = _files(make_synthetic_dota(tmp_path / "c", num_images=6, seed=7))
    d = _files(make_synthetic_dota(tmp_path / "d", num_images=4, seed=8))
    assert a == b
    assert all(c[k] == v for k, v in a.items()) and len(c) == len(a) + 4  # a prefix of a longer set
    assert a["images/syn00000.png"] != d["images/syn00000.png"]
    assert a["labelTxt/syn00000.txt"] != d["labelTxt/syn00000.txt"]


def test_dataset_content(tmp_path):
    root = make_synthetic_dota(tmp_path, num_images=40, seed=0)
    text = (root / "labelTxt" / "syn00000.txt").read_text().splitlines()
    assert text[:2] == ["imagesource:synthetic", "gsd:1.0"]
    ds, summary = load_dota(root, return_summary=True)  # reads root/classes.txt
    assert ds.features["objects"]["category"].feature.names == list(SYNTHETIC_CLASSES)
    assert summary.problems == [] and summary.num_images == 40
    counts = [len(o["category"]) for o in ds["objects"]]
    assert min(counts) >= 1 and max(counts) <= 8
    cats = [c for o in ds["objects"] for c in o["category"]]
    assert set(cats) == set(range(len(SYNTHETIC_CLASSES)))
    difficult = [d for o in ds["objects"] for d in o["difficult"]]
    assert 0 < sum(difficult) < len(difficult) / 3
    boxes = torch.tensor([b for o in ds["objects"] for b in o["rbox"]])
    assert bool((boxes[:, 2] >= 23.9).all() & (boxes[:, 2] <= 80.1).all())
    assert bool((boxes[:, 2] / boxes[:, 3] >= 1.29).all())  # never square: the angle is defined
    assert float(boxes[:, 4].min()) < -1.0 and float(boxes[:, 4].max()) > 1.0  # angles spread
    # Some objects touch or overlap, none by more than max_overlap_iou = 0.2.
    overlaps = []
    for o in ds["objects"]:
        b = torch.tensor(o["rbox"], dtype=torch.float64)
        iou = box_iou_rotated(b, b).fill_diagonal_(0)
        overlaps.append(float(iou.max()))
    assert max(overlaps) <= 0.2 + 1e-4 and sum(v > 0 for v in overlaps) >= 3


def test_objects_are_drawn_in_their_boxes():
    # Colour at the centre of an isolated, non-difficult object is its class colour (the ellipse, arrow and
    # block are solid there; stripes and checker are sampled off the centre line).
    rng = np.random.default_rng(0)
    config = SyntheticDotaConfig(max_overlap_iou=0.0, difficult_prob=0.0, noise_std=0.0, min_objects=6)
    checked = 0
    for _ in range(5):
        image, boxes, labels, difficult = make_synthetic_image(rng, config)
        pixels = np.asarray(image).astype(int)
        assert difficult.sum() == 0 and image.size == (256, 256)
        for box, label in zip(boxes.tolist(), labels.tolist()):
            cx, cy = box[0], box[1]
            name = SYNTHETIC_CLASSES[label]
            if name in ("red-block", "green-ellipse"):
                r, g, b = pixels[int(cy), int(cx)]
                assert (r > g + 80) if name == "red-block" else (g > r + 80 and g > b + 80)
                checked += 1
    assert checked >= 5


def test_custom_size_and_overrides(tmp_path):
    root = make_synthetic_dota(tmp_path, num_images=1, image_size=(320, 200), seed=1, max_objects=2,
                               prefix="img")
    assert Image.open(root / "images" / "img00000.png").size == (320, 200)
    assert 1 <= len((root / "labelTxt" / "img00000.txt").read_text().splitlines()) - 2 <= 2
