"""Contrastive denoising queries: group layout, label and box noise, the angle channel and the attention mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sl_detr_hf.denoising_sl_detr import build_denoising_queries, make_denoising_group, num_denoising_groups

NUM_LABELS = 5


def _targets(*boxes_per_image: list[list[float]], box_dim: int = 5) -> list[dict[str, torch.Tensor]]:
    """Targets whose labels are 0, 1, 2, ... per image."""
    out = []
    for boxes in boxes_per_image:
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, box_dim)
        out.append({"class_labels": torch.arange(len(b)) % NUM_LABELS, "boxes": b, "size": torch.tensor([64, 64])})
    return out


BOX_A = [0.5, 0.5, 0.2, 0.1, 0.3]
BOX_B = [0.3, 0.6, 0.12, 0.08, -1.0]
BOX_C = [0.7, 0.3, 0.1, 0.1, 0.0]


def _halves(max_objects: int, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query index -> target slot j, and whether the query is in a negative half."""
    k = torch.arange(2 * max_objects * num_groups)
    return k % max_objects, (k // max_objects) % 2 == 1


@pytest.mark.parametrize(("max_objects", "num_denoising", "max_groups", "expected"),
                         [(3, 100, 30, 30), (3, 60, 30, 20), (7, 100, 30, 14), (200, 100, 30, 1), (2, 5, 30, 2)])
def test_num_groups(max_objects, num_denoising, max_groups, expected):
    assert num_denoising_groups(max_objects, num_denoising, max_groups) == expected


def test_shapes_layout_and_exact_labels_without_label_noise():
    torch.manual_seed(0)
    targets = _targets([BOX_A, BOX_B, BOX_C], [BOX_B], [])  # n_b = 3, 1, 0 -> M = 3
    embedding = nn.Embedding(NUM_LABELS + 1, 8)
    content, reference, mask, meta = build_denoising_queries(
        targets, embedding, NUM_LABELS, num_queries=4, num_denoising=10, max_groups=30, label_noise_ratio=0.0)
    assert meta == {"num_groups": 3, "max_objects": 3}
    n = 3 * 2 * 3
    assert content.shape == (3, n, 8) and reference.shape == (3, n, 5) and mask.shape == (n + 4, n + 4)
    assert mask.dtype == torch.bool

    group = make_denoising_group(targets, NUM_LABELS, 4, num_denoising=10, label_noise_ratio=0.0)
    slot, _ = _halves(3, 3)
    expected = torch.full((3, n), NUM_LABELS)
    expected[0] = slot  # image 0: labels 0, 1, 2 in every half
    expected[1, slot == 0] = 0  # image 1: one target, then padding
    assert torch.equal(group.labels, expected)
    assert torch.equal(group.valid, expected != NUM_LABELS)
    # content is the embedding of the labels, padding uses the "unknown" row num_labels
    torch.testing.assert_close(content, embedding.weight[expected], rtol=0, atol=0)
    # padding: reference (0, 0, 0, 0, a = 0.5)
    pad = ~group.valid
    assert torch.equal(group.reference[pad], torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5]).expand(int(pad.sum()), 5))


def test_label_noise_flips_half_the_ratio_never_padding():
    torch.manual_seed(0)
    targets = _targets(*[[BOX_A]] * 200, [])  # M = 1: 200 images x 100 groups x 2 halves = 40000 copies
    group = make_denoising_group(targets, NUM_LABELS, 4, num_denoising=100, max_groups=100,
                                 label_noise_ratio=0.5)
    assert group.dn_meta == {"num_groups": 100, "max_objects": 1}
    labels = group.labels[:200]
    changed = (labels != 0).double().mean().item()
    # RT-DETR / DINO / mmdet: a re-draw with probability ratio / 2, uniform over C classes (may keep the class)
    assert abs(changed - 0.25 * (NUM_LABELS - 1) / NUM_LABELS) < 0.01
    assert labels.min() >= 0 and labels.max() < NUM_LABELS
    assert bool((group.labels[200] == NUM_LABELS).all())


def _corners(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes[..., :4].unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def test_box_noise_bounds_positive_and_negative():
    torch.manual_seed(0)
    scale = 0.8
    gt = torch.tensor([[0.5, 0.5, 0.2, 0.1, 0.3], [0.4, 0.6, 0.16, 0.12, -1.2]])  # far from the borders
    targets = [{"class_labels": torch.tensor([0, 1]), "boxes": gt}] * 100
    group = make_denoising_group(targets, NUM_LABELS, 4, num_denoising=40, max_groups=20,
                                 label_noise_ratio=0.0, box_noise_scale=scale)
    slot, negative = _halves(2, group.dn_meta["num_groups"])
    ref = group.reference.flatten(0, 1)  # 100 images x 20 groups x 2 halves x 2 targets
    slot, negative = slot.repeat(100), negative.repeat(100)
    tgt = gt[slot]
    whwh = tgt[:, 2:4].repeat(1, 2)
    shift = (_corners(ref) - _corners(tgt)).abs() / (scale * whwh / 2)  # corner moves in units of s * size / 2
    pos = ~negative
    tol = 1e-3
    # positives: every corner within s * (w, h) / 2, so the centre within s * (w, h) / 2, size within s * (w, h)
    assert shift[pos].max() < 1 + tol and shift[pos].max() > 0.95
    center = (ref[pos, :2] - tgt[pos, :2]).abs() / (scale * tgt[pos, 2:4] / 2)
    assert center.max() < 1 + tol
    assert ((ref[pos, 2:4] - tgt[pos, 2:4]).abs() / (scale * tgt[pos, 2:4])).max() < 1 + tol
    # negatives whose corners did not cross: every corner moved by [1, 2) * s * (w, h) / 2
    kept = negative & (ref[:, 2:4] > 1e-4).all(-1)
    assert kept.sum() > 0.4 * negative.sum()  # no crossing on either axis: probability 9/16
    assert shift[kept].min() > 1 - tol and shift[kept].max() < 2 + tol
    # crossed corners collapse a side to ~0 (RT-DETR's clamp), never to a negative size
    assert ref[:, 2:4].min() >= 0
    # cx, cy, w, h stay in [0, 1] and the angle is the ground truth's
    assert torch.equal(ref[:, 4], tgt[:, 4] / math.pi + 0.5)


def test_clipping_at_the_border():
    torch.manual_seed(0)
    targets = _targets([[0.02, 0.98, 0.3, 0.2, 0.0], [0.99, 0.01, 0.05, 0.5, 0.0]])
    group = make_denoising_group(targets, NUM_LABELS, 4, num_denoising=100, max_groups=50)
    corners = _corners(group.reference[0])
    assert group.reference[..., :4].min() >= 0 and group.reference[..., :4].max() <= 1
    assert corners.min() >= -1e-5 and corners.max() <= 1 + 1e-5


def test_angle_mapping_and_no_angle_noise_by_default():
    thetas = [-math.pi / 2, -math.pi / 4, 0.0, math.pi / 4, 1.5]
    targets = _targets(*[[[0.5, 0.5, 0.2, 0.1, t]] for t in thetas])
    group = make_denoising_group(targets, NUM_LABELS, 4, num_denoising=6, box_noise_scale=1.0)
    expected = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.5 / math.pi + 0.5])
    assert group.dn_meta == {"num_groups": 6, "max_objects": 1}
    torch.testing.assert_close(group.reference[..., 4], expected[:, None].expand(5, 12), rtol=0, atol=1e-7)


def test_angle_noise_wrapped_into_le90():
    torch.manual_seed(0)
    scale = 0.3
    thetas = torch.tensor([1.5, -1.5, 0.2])  # near both ends of [-pi/2, pi/2), so wrapping happens
    targets = [{"class_labels": torch.tensor([0, 1, 2]),
                "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.1, float(t)] for t in thetas])}] * 50
    group = make_denoising_group(targets, NUM_LABELS, 4, num_denoising=60, max_groups=20,
                                 angle_noise_scale=scale)
    slot, negative = _halves(3, group.dn_meta["num_groups"])
    slot, negative = slot.repeat(50), negative.repeat(50)
    a = group.reference[..., 4].flatten()
    assert a.min() >= 0 and a.max() < 1
    theta = (a - 0.5) * math.pi
    diff = torch.remainder(theta - thetas[slot] + math.pi / 2, math.pi) - math.pi / 2  # difference modulo pi
    step = diff.abs() / (scale * math.pi / 2)
    assert step[~negative].max() < 1 + 1e-4 and step[~negative].max() > 0.95
    assert step[negative].min() > 1 - 1e-4 and step[negative].max() < 2 + 1e-4
    wrapped = (theta - thetas[slot]).abs() > math.pi / 2  # some copies went past +-pi/2 and came back
    assert wrapped.sum() > 100


def test_attention_mask_hand_checked():
    targets = _targets([BOX_A, BOX_B], [BOX_C])  # M = 2
    group = make_denoising_group(targets, NUM_LABELS, num_queries=3, num_denoising=4)  # G = 2, N = 8
    rows = [
        "0000111100 0",
        "0000111100 0",
        "0000111100 0",
        "0000111100 0",
        "1111000000 0",
        "1111000000 0",
        "1111000000 0",
        "1111000000 0",
        "1111111100 0",
        "1111111100 0",
        "1111111100 0",
    ]
    expected = torch.tensor([[c == "1" for c in r.replace(" ", "")] for r in rows])
    assert torch.equal(group.attn_mask, expected)


def test_horizontal_boxes():
    torch.manual_seed(0)
    targets = _targets([BOX_A[:4], BOX_B[:4]], [BOX_C[:4]], box_dim=4)
    content, reference, mask, meta = build_denoising_queries(
        targets, nn.Embedding(NUM_LABELS + 1, 16), NUM_LABELS, num_queries=5, num_denoising=100, max_groups=30,
        box_dim=4)
    assert meta == {"num_groups": 30, "max_objects": 2}
    assert content.shape == (2, 120, 16) and reference.shape == (2, 120, 4) and mask.shape == (125, 125)


def test_no_targets_or_no_denoising_gives_none():
    embedding = nn.Embedding(NUM_LABELS + 1, 8)
    empty = _targets([], [])
    assert build_denoising_queries(empty, embedding, NUM_LABELS, 4) is None
    assert build_denoising_queries(_targets([BOX_A]), embedding, NUM_LABELS, 4, num_denoising=0) is None


def test_bad_input_names_the_field():
    embedding = nn.Embedding(NUM_LABELS + 1, 8)
    with pytest.raises(ValueError, match=r"targets\[1\].*'boxes' \(n, 5\)"):
        build_denoising_queries(_targets([BOX_A]) + _targets([BOX_A[:4]], box_dim=4), embedding, NUM_LABELS, 4)
    bad = _targets([BOX_A])
    bad[0]["class_labels"] = torch.tensor([NUM_LABELS])
    with pytest.raises(ValueError, match=r"targets\[0\]\['class_labels'\] must be in \[0, 5\)"):
        build_denoising_queries(bad, embedding, NUM_LABELS, 4)
    with pytest.raises(ValueError, match="num_labels \\+ 1 = 6 rows"):
        build_denoising_queries(_targets([BOX_A]), nn.Embedding(NUM_LABELS, 8), NUM_LABELS, 4)
