"""The collator: padding, pixel mask, labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sl_detr_hf.data.collate import SlDetrCollator, collate_fn


def test_pads_bottom_right_with_mask_and_labels():
    a = torch.ones(3, 4, 6)
    b = torch.full((3, 5, 3), 2.0)
    examples = [
        {"pixel_values": a, "labels": {"class_labels": [1, 0], "boxes": [[0.5, 0.5, 0.2, 0.1, 0.3]] * 2,
                                       "image_id": "P1", "orig_size": [40, 60]}},
        {"pixel_values": b.numpy(), "labels": {"class_labels": [], "boxes": [], "size": torch.tensor([5, 3])}},
    ]
    batch = collate_fn(examples)
    assert batch["pixel_values"].shape == (2, 3, 5, 6) and batch["pixel_mask"].shape == (2, 5, 6)
    assert batch["pixel_mask"][0].sum() == 24 and batch["pixel_mask"][1].sum() == 15
    assert bool((batch["pixel_values"][0, :, :4, :6] == 1).all()) and batch["pixel_values"][0, :, 4].abs().sum() == 0
    assert bool((batch["pixel_values"][1, :, :5, :3] == 2).all()) and batch["pixel_values"][1, :, :, 3:].sum() == 0
    first, second = batch["labels"]
    assert first["class_labels"].dtype == torch.int64 and first["boxes"].shape == (2, 5)
    assert first["size"].tolist() == [4, 6] and first["orig_size"].tolist() == [40, 60] and first["image_id"] == "P1"
    assert second["boxes"].shape == (0, 5) and second["class_labels"].shape == (0,)
    assert second["size"].tolist() == [5, 3]


def test_multiple_of_horizontal_boxes_and_errors():
    collator = SlDetrCollator(pad_value=-1.0, pad_to_multiple_of=8, box_dim=4)
    batch = collator([{"pixel_values": np.zeros((3, 9, 10), np.float32),
                       "labels": {"class_labels": [3], "boxes": [0.5, 0.5, 0.1, 0.1]}}])
    assert batch["pixel_values"].shape == (1, 3, 16, 16) and batch["pixel_values"][0, 0, 15, 15] == -1
    assert batch["labels"][0]["boxes"].shape == (1, 4)
    assert "labels" not in collator([{"pixel_values": torch.zeros(3, 2, 2)}])
    with pytest.raises(ValueError, match="every example or none"):
        collator([{"pixel_values": torch.zeros(3, 2, 2)},
                  {"pixel_values": torch.zeros(3, 2, 2), "labels": {"class_labels": [], "boxes": []}}])
    with pytest.raises(ValueError, match="class labels for"):
        collator([{"pixel_values": torch.zeros(3, 2, 2), "labels": {"class_labels": [1, 2], "boxes": [[0.1] * 4]}}])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        collator([{"pixel_values": torch.zeros(2, 2)}])
