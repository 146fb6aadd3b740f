"""YOLO's mosaic for rotated boxes (`sl_detr_hf/data/mosaic.py`): hand-computed layouts, invariants, the dataset."""

from __future__ import annotations

import math

import pytest
import torch
from _tiny_sl_detr import training_loss, write_grey_dota
from hypothesis import given, settings
from hypothesis import strategies as st

from sl_detr_hf.data import load_dota
from sl_detr_hf.data.mosaic import Mosaic, mosaic
from sl_detr_hf.geometry_conversions import rbox_to_poly
from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
from sl_detr_hf.training import prepare_dataset


def _constant(value: int, height: int, width: int) -> torch.Tensor:
    return torch.full((3, height, width), value, dtype=torch.uint8)


def _target(boxes, labels) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5),
            "class_labels": torch.tensor(labels, dtype=torch.long),
            "difficult": torch.zeros(len(labels), dtype=torch.long)}


def test_four_equal_images_about_the_middle_fill_the_quarters_at_half_size():
    images = [_constant(v, 80, 100) for v in (10, 20, 30, 40)]
    targets = [_target([[50, 40, 20, 10, 0.3]], [k]) for k in range(4)]
    canvas, out = mosaic(images, targets, center=(0.5, 0.5))
    assert canvas.shape == (3, 80, 100)
    # quarter k (40 x 50 px) holds image k, scaled by 0.5, nothing else
    assert canvas[:, :40, :50].unique().tolist() == [10]
    assert canvas[:, :40, 50:].unique().tolist() == [20]
    assert canvas[:, 40:, :50].unique().tolist() == [30]
    assert canvas[:, 40:, 50:].unique().tolist() == [40]
    expected = torch.tensor([[25, 20, 10, 5, 0.3], [75, 20, 10, 5, 0.3], [25, 60, 10, 5, 0.3], [75, 60, 10, 5, 0.3]])
    torch.testing.assert_close(out["boxes"], expected, atol=1e-4, rtol=0)
    assert out["class_labels"].tolist() == [0, 1, 2, 3]
    assert out["difficult"].tolist() == [0, 0, 0, 0]


def test_images_are_pushed_against_an_off_centre_meeting_point():
    # a 100 x 100 canvas meeting at x = 30, y = 60; image 1 (50 x 200) goes to the top-right quarter (70 x 60):
    # scale min(60 / 50, 70 / 200) = 0.35 -> 18 x 70 px, at x 30..100 and y 42..60 (against the centre)
    images = [_constant(1, 100, 100), _constant(2, 50, 200), _constant(3, 100, 100), _constant(4, 100, 100)]
    targets = [_target([], []), _target([[100, 25, 40, 20, 0.0]], [1]), _target([], []), _target([], [])]
    canvas, out = mosaic(images, targets, center=(0.3, 0.6), fill=0)
    assert canvas[:, 42:60, 30:100].unique().tolist() == [2]
    assert canvas[:, :42, 30:].unique().tolist() == [0]  # above it: the fill
    assert canvas[:, 30:60, :30].unique().tolist() == [1]  # the first (100 x 100) scaled by 0.3: 30 x 30 px
    assert canvas[:, :30, :30].unique().tolist() == [0]
    cx, cy = 30 + 100 * 70 / 200, 42 + 25 * 18 / 50
    torch.testing.assert_close(out["boxes"][0, :2], torch.tensor([cx, cy]), atol=1e-3, rtol=0)
    # sides scale with the pixels: 0.35 across, 0.36 down (18 / 50 after rounding)
    torch.testing.assert_close(out["boxes"][0, 2:4], torch.tensor([40 * 0.35, 20 * 0.36]), atol=1e-3, rtol=0)


@settings(max_examples=40, deadline=None)
@given(cx=st.floats(0.2, 0.8), cy=st.floats(0.2, 0.8),
       sizes=st.lists(st.tuples(st.integers(40, 160), st.integers(40, 160)), min_size=4, max_size=4),
       angle=st.floats(-1.5, 1.5), seed=st.integers(0, 1000))
def test_every_box_moves_with_its_pixels_and_stays_inside(cx, cy, sizes, angle, seed):
    generator = torch.Generator().manual_seed(seed)
    images, targets = [], []
    height, width = sizes[0]
    for k, (h, w) in enumerate(sizes):
        images.append(_constant(k + 1, h, w))
        centre = torch.tensor([w, h]) * (0.3 + 0.4 * torch.rand(2, generator=generator))
        targets.append(_target([[*centre.tolist(), 12.0, 6.0, angle]], [k]))
    canvas, out = mosaic(images, targets, center=(cx, cy), min_side=0)
    assert out["boxes"].shape == (4, 5) and out["class_labels"].tolist() == [0, 1, 2, 3]
    corners = rbox_to_poly(out["boxes"]).reshape(4, 4, 2)
    assert (corners[..., 0] >= -1e-3).all() and (corners[..., 0] <= width + 1e-3).all()
    assert (corners[..., 1] >= -1e-3).all() and (corners[..., 1] <= height + 1e-3).all()
    boxes = out["boxes"]
    for k, (h, w) in enumerate(sizes):
        # where image k landed, read off the canvas (its colour k + 1, the fill 0): the box follows those pixels
        rows, cols = (canvas[0] == k + 1).nonzero(as_tuple=True)
        top, left = rows.min().item(), cols.min().item()
        sy, sx = (rows.max().item() + 1 - top) / h, (cols.max().item() + 1 - left) / w
        centre = torch.tensor([left + targets[k]["boxes"][0, 0] * sx, top + targets[k]["boxes"][0, 1] * sy])
        torch.testing.assert_close(boxes[k, :2], centre.float(), atol=1e-3, rtol=0)
        # the scale is isotropic up to the tile's pixel rounding (|ln(sx / sy)|): the same aspect ratio, area and
        # long side's direction
        skew = abs(math.log(sx / sy)) + 1e-3
        long_side, short_side = boxes[k, 2:4].max().item(), boxes[k, 2:4].min().item()
        assert abs(math.log(long_side / short_side / 2.0)) <= 2 * skew
        assert abs(math.log(long_side * short_side / (72.0 * sx * sy))) <= 2 * skew
        direction = boxes[k, 4].item() + (0 if boxes[k, 2] >= boxes[k, 3] else math.pi / 2)
        assert abs((direction - angle + math.pi / 2) % math.pi - math.pi / 2) <= skew


def test_objects_that_shrink_below_min_side_are_dropped_with_their_fields():
    images = [_constant(1, 80, 100) for _ in range(4)]
    targets = [_target([[50, 40, 20, 10, 0.0], [20, 20, 20, 2, 0.0]], [0, 1]) for _ in range(4)]
    targets[2]["difficult"] = torch.tensor([1, 0])
    _, out = mosaic(images, targets, center=(0.5, 0.5), min_side=1.5)  # the 2 px sides become 1 px
    assert out["class_labels"].tolist() == [0, 0, 0, 0]
    assert out["difficult"].tolist() == [0, 0, 1, 0]


def test_bad_arguments_are_refused_with_the_reason():
    images = [_constant(1, 8, 8)] * 4
    targets = [_target([], [])] * 4
    with pytest.raises(ValueError, match="4 images"):
        mosaic(images[:3], targets[:3], (0.5, 0.5))
    with pytest.raises(ValueError, match="empty quarter"):
        mosaic(images, targets, (0.01, 0.5))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        Mosaic(lambda i: (images[0], targets[0]), 4, prob=1.5)
    with pytest.raises(ValueError, match="center_range"):
        Mosaic(lambda i: (images[0], targets[0]), 4, center_range=(0.0, 0.5))


def test_mosaic_draws_three_rows_with_torch_generator_and_passes_examples_through_at_zero():
    loaded: list[int] = []

    def load(index):
        loaded.append(index)
        return _constant(index, 60, 60), _target([[30, 30, 16, 8, 0.0]], [index])

    image, target = _constant(9, 60, 60), _target([[30, 30, 16, 8, 0.0]], [9])
    same = Mosaic(load, 7, prob=0.0)(image, target)
    assert same[0] is image and same[1] is target and loaded == []
    torch.manual_seed(3)
    canvas, out = Mosaic(load, 7, prob=1.0)(image, target)
    torch.manual_seed(3)
    expected_rows = torch.randint(7, (3,)).tolist()
    assert loaded == expected_rows
    assert out["class_labels"].tolist() == [9, *expected_rows]
    assert canvas.shape == (3, 60, 60)


def test_a_mosaic_dataset_feeds_four_rows_objects_to_a_training_step(tmp_path):
    write_grey_dota(tmp_path / "d", 4, (96, 80), ["10 10 40 10 40 30 10 30 plane 0", "50 40 80 40 80 70 50 70 ship 0"])
    raw = load_dota(tmp_path / "d", class_names=["plane", "ship"])
    processor = SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}, max_detections=30)
    dataset = prepare_dataset(raw, processor, mosaic=1.0)
    examples = [dataset[i] for i in range(len(raw))]
    for example in examples:  # each image's 2 objects, 4 images: 8, both classes 4 times, inside the image
        labels = example["labels"]
        assert sorted(labels["class_labels"].tolist()) == [0] * 4 + [1] * 4
        assert ((labels["boxes"][:, :2] > 0) & (labels["boxes"][:, :2] < 1)).all()
        assert example["pixel_values"].shape[-2:] == (53, 64)  # 80 x 96 resized to fit 64
    plain = prepare_dataset(raw, processor)[0]["labels"]
    assert len(plain["class_labels"]) == 2
    assert math.isfinite(training_loss(examples[:2], ["plane", "ship"]))


def test_a_mosaic_needs_rotated_boxes_and_the_rows():
    from sl_detr_hf.training.data import DetectionTransform

    processor = SlDetrImageProcessor()
    with pytest.raises(ValueError, match="rotated boxes"):
        DetectionTransform(processor, "horizontal", mosaic=0.5)
    with pytest.raises(ValueError, match="rows"):
        DetectionTransform(processor, "rotated", mosaic=0.5)
