"""Copy-paste for rotated boxes (`sl_detr_hf/data/copy_paste.py`): hand-computed pastes, invariants, the dataset."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny_sl_detr import training_loss, write_grey_dota
from hypothesis import given, settings
from hypothesis import strategies as st

from sl_detr_hf.data import load_dota
from sl_detr_hf.data.copy_paste import CopyPaste, _box_weight, copy_paste, object_rectangles
from sl_detr_hf.geometry_conversions import rbox_to_poly
from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
from sl_detr_hf.training import prepare_dataset


def _target(boxes, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5),
            "class_labels": torch.tensor(labels, dtype=torch.long),
            "difficult": torch.zeros(len(labels), dtype=torch.long)}


def test_rectangles_around_rotated_boxes_with_a_margin():
    boxes = torch.tensor([[10.0, 20.0, 8.0, 4.0, 0.0], [50.0, 50.0, 10.0, 10.0, math.pi / 4]])
    rects = object_rectangles(boxes, margin=2)
    assert rects[0].tolist() == [4, 16, 16, 24]  # x 6..14, y 18..22, widened by 2
    half = 5 * math.sqrt(2)  # a square of side 10 turned 45 degrees reaches 7.07 from its centre
    assert rects[1].tolist() == [math.floor(50 - half - 2), math.floor(50 - half - 2),
                                 math.ceil(50 + half + 2), math.ceil(50 + half + 2)]


def test_the_blending_weight_is_one_on_the_box_and_falls_to_zero_at_the_margin():
    # box x 8..12, y 9..11; the rectangle x 6..14, y 7..13: pixel centres 6.5 ... 13.5 and 7.5 ... 12.5
    weight = _box_weight(torch.tensor([10.0, 10.0, 4.0, 2.0, 0.0]), 6, 7, 8, 6, margin=2)
    row = [0.25, 0.75, 1, 1, 1, 1, 0.75, 0.25]
    assert torch.allclose(weight[2], torch.tensor(row)) and torch.allclose(weight[3], torch.tensor(row))
    assert torch.allclose(weight[:, 3], torch.tensor([0.25, 0.75, 1, 1, 0.75, 0.25]))
    corner = 1 - math.hypot(1.5, 1.5) / 2  # pixel (6.5, 7.5): 1.5 px left of and above the box
    assert weight[0, 0].item() == pytest.approx(max(corner, 0))
    turned = _box_weight(torch.tensor([10.0, 10.0, 4.0, 2.0, math.pi / 2]), 7, 6, 6, 8, margin=2)
    assert torch.allclose(turned, weight.T, atol=1e-6)  # a quarter turn: the long side along y
    hard = _box_weight(torch.tensor([10.0, 10.0, 4.0, 2.0, 0.0]), 6, 7, 8, 6, margin=0)
    assert hard[2].tolist() == [0, 0] + [1] * 4 + [0, 0]


def test_an_object_is_pasted_with_its_rim_at_the_level_of_the_new_ground():
    # source: ground 100, a warm object 160 in x 8..16, y 8..12 (box 8 x 4 at (12, 10)); target: ground 40
    source = torch.full((3, 20, 24), 100, dtype=torch.uint8)
    source[:, 8:12, 8:16] = 160
    image = torch.full((3, 30, 40), 40, dtype=torch.uint8)
    torch.manual_seed(0)
    out, target = copy_paste(image, _target([], []), source, _target([[12, 10, 8, 4, 0.0]], [3]), margin=2)
    assert image.eq(40).all()  # the input is not modified
    assert target["class_labels"].tolist() == [3] and target["difficult"].tolist() == [0]
    cx, cy, w, h, angle = target["boxes"][0].tolist()
    assert (w, h, angle) == (8, 4, 0)
    x0, y0 = int(cx - 4), int(cy - 2)  # the object's pixels moved with its box, 60 above the new ground
    assert out[:, y0:y0 + 4, x0:x0 + 8].eq(100).all()
    rim = out[:, y0 - 2:y0 + 6, x0 - 2:x0 + 10].clone()
    rim[:, 2:6, 2:10] = 40
    assert rim.eq(40).all()  # the 2 px of background around it took the new ground's level
    outside = out.clone()
    outside[:, y0 - 2:y0 + 6, x0 - 2:x0 + 10] = 40
    assert outside.eq(40).all()  # nothing else changed


def test_pastes_avoid_objects_already_there_and_each_other():
    image = torch.zeros((3, 40, 40), dtype=torch.uint8)
    there = _target([[10, 10, 12, 12, 0.0]], [0])
    source = torch.zeros((3, 40, 40), dtype=torch.uint8)
    many = _target([[8 + 12 * (k % 3), 8 + 12 * (k // 3), 6, 6, 0.0] for k in range(9)], list(range(1, 10)))
    for seed in range(5):
        torch.manual_seed(seed)
        _, target = copy_paste(image, there, source, many, margin=1, tries=32)
        rects = object_rectangles(target["boxes"], margin=1)
        assert target["class_labels"][0] == 0 and len(rects) >= 2
        for i in range(len(rects)):
            for j in range(i):
                a, b = rects[i].tolist(), rects[j].tolist()
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        assert ((rects[:, :2] >= 0) & (rects[:, 2:] <= 40)).all()


def test_objects_cut_by_the_source_border_or_too_big_are_not_pasted():
    image = torch.zeros((3, 20, 20), dtype=torch.uint8)
    source = torch.zeros((3, 50, 50), dtype=torch.uint8)
    cut = _target([[1, 25, 6, 6, 0.0], [25, 25, 30, 4, 0.0]], [1, 2])  # crosses x = 0; 34 px wide with its rim
    out, target = copy_paste(image, _target([], []), source, cut, margin=2)
    assert out is image and len(target["boxes"]) == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(-1.5, 1.5), st.floats(3, 12), st.floats(3, 12))
def test_pasted_boxes_stay_inside_and_carry_their_pixels(seed, angle, w, h):
    source = torch.zeros((1, 48, 48), dtype=torch.uint8)
    box = torch.tensor([[24.0, 24.0, w, h, angle]])
    rect = object_rectangles(box, 2)[0].tolist()
    source[:, rect[1]:rect[3], rect[0]:rect[2]] = 50  # the rectangle a level 50 above its ring (ring of 0)
    source[:, rect[1] + 1:rect[3] - 1, rect[0] + 1:rect[2] - 1] = 90
    image = torch.full((1, 64, 80), 10, dtype=torch.uint8)
    torch.manual_seed(seed)
    out, target = copy_paste(image, _target([], []), source, _target(box.tolist(), [1]))
    assert len(target["boxes"]) == 1
    corners = rbox_to_poly(target["boxes"]).reshape(4, 2)
    assert (corners >= 0).all() and (corners[:, 0] <= 80).all() and (corners[:, 1] <= 64).all()
    cx, cy = target["boxes"][0, :2].round().long().tolist()
    assert out[0, cy, cx] == 90 - 50 + 10  # the object's centre, shifted by the difference of the rings


def test_copy_paste_draws_its_source_with_torch_generator_and_passes_examples_through_at_zero():
    loaded: list[int] = []

    def load(index):
        loaded.append(index)
        return torch.zeros((3, 30, 30), dtype=torch.uint8), _target([[15, 15, 6, 4, 0.0]], [index])

    image, target = torch.zeros((3, 60, 60), dtype=torch.uint8), _target([], [])
    same = CopyPaste(load, 7, prob=0.0)(image, target)
    assert same[0] is image and same[1] is target and loaded == []
    torch.manual_seed(3)
    _, out = CopyPaste(load, 7, prob=1.0)(image, target)
    torch.manual_seed(3)
    expected = int(torch.randint(7, ()))
    assert loaded == [expected] and out["class_labels"].tolist() == [expected]


def test_bad_arguments_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="probability"):
        CopyPaste(lambda i: None, 3, prob=1.5)
    with pytest.raises(ValueError, match="at least one row"):
        CopyPaste(lambda i: None, 0)
    with pytest.raises(ValueError, match="channels"):
        copy_paste(torch.zeros((3, 9, 9), dtype=torch.uint8), _target([], []),
                   torch.zeros((1, 9, 9), dtype=torch.uint8), _target([], []))
    with pytest.raises(ValueError, match="difficult"):
        copy_paste(torch.zeros((3, 9, 9), dtype=torch.uint8), _target([], []),
                   torch.zeros((3, 9, 9), dtype=torch.uint8), {"boxes": torch.zeros(0, 5),
                                                               "class_labels": torch.zeros(0, dtype=torch.long)})
    from sl_detr_hf.training.data import DetectionTransform

    with pytest.raises(ValueError, match="copy-paste needs rotated boxes"):
        DetectionTransform(SlDetrImageProcessor(), "horizontal", copy_paste=0.5)


def test_a_copy_paste_dataset_feeds_two_rows_objects_to_a_training_step(tmp_path):
    lines = ["10 10 30 10 30 24 10 24 plane 0", "50 40 60 40 60 60 50 60 ship 0"]
    write_grey_dota(tmp_path / "d", 4, (160, 120), lines)
    raw = load_dota(tmp_path / "d", class_names=["plane", "ship"])
    processor = SlDetrImageProcessor(size={"shortest_edge": 80, "longest_edge": 80}, max_detections=30)
    dataset = prepare_dataset(raw, processor, copy_paste=1.0)
    torch.manual_seed(0)
    examples = [dataset[i] for i in range(len(raw))]
    for example in examples:  # its own 2 objects first, then another row's (room for both in 160 x 120)
        labels = example["labels"]["class_labels"].tolist()
        assert labels[:2] == [0, 1] and len(labels) == 4 and sorted(labels[2:]) == [0, 1]
        assert ((example["labels"]["boxes"][:, :2] > 0) & (example["labels"]["boxes"][:, :2] < 1)).all()
    assert len(prepare_dataset(raw, processor)[0]["labels"]["class_labels"]) == 2
    assert math.isfinite(training_loss(examples[:2], ["plane", "ship"]))
