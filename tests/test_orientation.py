"""One orientation per training batch: the quarter turn against torchvision's, the batch rule, the collator."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from sl_detr_hf.data.collate import SlDetrCollator
from sl_detr_hf.data.orientation import TURNABLE_KEY, one_orientation, quarter_turn
from sl_detr_hf.data.transforms import RotatedDetectionAugment
from sl_detr_hf.image_processing_sl_detr import SlDetrImageProcessor
from sl_detr_hf.rotated_boxes import box_iou_rotated, rboxes_from_torchvision, rboxes_to_torchvision
from sl_detr_hf.training.data import DetectionTransform


def test_a_counter_clockwise_turn_by_hand():
    # 4 x 8 image (H x W); pixel box centre (2, 1), 2 x 1, angle 0 -> pixel (x, y) -> (y, W - x) = (1, 6) on 8 x 4
    labels = {"boxes": torch.tensor([[0.25, 0.25, 0.25, 0.25, 0.0]]), "size": torch.tensor([4, 8]),
              "orig_size": torch.tensor([40, 80]), "class_labels": torch.tensor([3])}
    pixels = torch.arange(32.0).reshape(1, 4, 8)
    turned, out = quarter_turn(pixels, labels)
    assert turned.shape == (1, 8, 4) and turned[0, 0, 0] == 7  # the top-right pixel goes to the top left
    torch.testing.assert_close(out["boxes"], torch.tensor([[0.25, 0.75, 0.5, 0.125, -math.pi / 2]]))
    assert out["size"].tolist() == [8, 4] and out["orig_size"].tolist() == [80, 40]
    assert out["class_labels"] is labels["class_labels"] and labels["size"].tolist() == [4, 8]  # input untouched


@pytest.mark.parametrize("clockwise", [False, True])
def test_the_quarter_turn_equals_torchvisions_rotation(clockwise):
    torch.manual_seed(0)
    height, width = 30, 50
    pixel_boxes = torch.tensor([[12.0, 9.0, 14.0, 5.0, 0.4], [35.0, 20.0, 9.0, 3.0, -1.2], [25.0, 15.0, 6.0, 6.0, 1.5]])
    image = torch.rand(3, height, width)
    scale = torch.tensor([width, height, width, height, 1.0])
    turned, labels = quarter_turn(image, {"boxes": pixel_boxes / scale, "size": torch.tensor([height, width])},
                                  clockwise=clockwise)
    angle = -90 if clockwise else 90  # torchvision: degrees counter-clockwise on screen
    reference_image = F.rotate(tv_tensors.Image(image), angle, expand=True)
    reference_boxes = rboxes_from_torchvision(
        F.rotate(rboxes_to_torchvision(pixel_boxes, (height, width)), angle, expand=True))
    assert torch.equal(turned, reference_image.as_subclass(torch.Tensor))
    ours = labels["boxes"] * torch.tensor([height, width, height, width, 1.0])  # the canvas is now W x H
    assert bool((ours[:, 4] >= -math.pi / 2).all() and (ours[:, 4] < math.pi / 2).all()) and bool(
        (ours[:, 2] >= ours[:, 3]).all())  # le90
    torch.testing.assert_close(box_iou_rotated(ours, reference_boxes).diagonal(), torch.ones(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[:, :4], reference_boxes[:, :4], atol=1e-3, rtol=0)


def _example(height: int, width: int, turnable: bool = True) -> dict:
    example = {"pixel_values": torch.rand(3, height, width),
               "labels": {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.1, 0.3]]), "class_labels": torch.tensor([1]),
                          "size": torch.tensor([height, width])}}
    if turnable:
        example[TURNABLE_KEY] = True
    return example


def test_a_batch_takes_the_orientation_of_a_random_turnable_example():
    batch = [_example(4, 6), _example(4, 6), _example(6, 4), _example(6, 4, turnable=False), _example(5, 5)]
    portrait = 0
    torch.manual_seed(0)
    for _ in range(600):
        out = one_orientation(batch)
        shapes = [tuple(e["pixel_values"].shape[-2:]) for e in out]
        assert shapes[3] == (6, 4) and out[3] is batch[3]  # not turnable: never turned
        assert shapes[4] == (5, 5) and out[4] is batch[4]  # square: no orientation
        assert len(set(shapes[:3])) == 1
        portrait += shapes[0] == (6, 4)
        for example in out[:3]:
            assert example["labels"]["size"].tolist() == list(example["pixel_values"].shape[-2:])
    assert 150 < portrait < 250  # one turnable example of three is portrait: about a third of the batches


def test_a_batch_that_agrees_is_left_alone():
    batch = [_example(4, 6), _example(4, 6, turnable=False), _example(6, 4, turnable=False)]
    out = one_orientation(batch)
    assert all(a is b for a, b in zip(out, batch))


def _transform(augment) -> DetectionTransform:
    return DetectionTransform(SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 64}), "rotated", augment)


def _rows(count: int) -> dict:
    return {"image": [Image.new("RGB", (64, 48), (i * 20, 0, 0)) for i in range(count)],
            "objects": [{"rbox": [[20.0, 20.0, 10.0, 4.0, 0.2]], "category": [0]} for _ in range(count)]}


def test_augmented_batches_of_non_square_frames_are_not_padded():
    torch.manual_seed(3)
    augment = RotatedDetectionAugment(hflip_prob=0, vflip_prob=0, rot90_prob=0.5, brightness=0, contrast=0,
                                      saturation=0)
    columns = _transform(augment)(_rows(16))
    examples = [dict(zip(columns, values)) for values in zip(*columns.values())]
    assert all(e[TURNABLE_KEY] for e in examples)
    assert len({tuple(e["pixel_values"].shape[-2:]) for e in examples}) == 2  # the augmentation turned some
    for start in range(0, 16, 4):
        batch = SlDetrCollator()(examples[start:start + 4])
        assert bool(batch["pixel_mask"].all()) and batch["pixel_values"].shape[-2:] in ((48, 64), (64, 48))
        for labels in batch["labels"]:
            assert labels["size"].tolist() == list(batch["pixel_values"].shape[-2:])
    plain = [{k: v for k, v in e.items() if k != TURNABLE_KEY} for e in examples]  # as evaluation's: not turned
    padded = [SlDetrCollator()(plain[s:s + 4]) for s in range(0, 16, 4)]
    assert any(not bool(b["pixel_mask"].all()) for b in padded)


def test_examples_without_quarter_turns_are_never_turned():
    flips_only = RotatedDetectionAugment(rot90_prob=0)
    for transform in (_transform(None), _transform(flips_only)):
        assert TURNABLE_KEY not in transform(_rows(2))
