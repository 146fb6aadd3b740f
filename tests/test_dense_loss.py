"""The dense one-to-many encoder loss (dense_loss_sl_detr.py): ProbIoU, the task-aligned assignment, the terms."""

from __future__ import annotations

import pytest
import torch

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.dense_loss_sl_detr import assign_tokens, dense_encoder_loss
from sl_detr_hf.geometry_overlaps import prob_iou


def _grid_tokens(rows: int, cols: int, side: float) -> torch.Tensor:
    """`(1, rows * cols, 4)` normalized proposal boxes at the cell centres of a `rows x cols` grid."""
    y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    return torch.stack([x.flatten(), y.flatten(), torch.full((rows * cols,), side), torch.full((rows * cols,), side)],
                       -1)[None]


def _assign(pred_boxes, anchors, targets, labels, logits=None, valid=None, topk=3, size=(100, 100)):
    tokens = anchors.shape[1]
    logits = torch.zeros(1, tokens, 2) if logits is None else logits
    valid = torch.ones(1, tokens, dtype=torch.bool) if valid is None else valid
    target_valid = torch.as_tensor(labels)[None] >= 0
    return assign_tokens(logits, pred_boxes, anchors, valid, torch.as_tensor(labels)[None], targets, target_valid,
                         torch.tensor([size], dtype=torch.float32), topk=topk)


def test_assignment_takes_the_best_aligned_candidates_inside_the_box():
    """A 10 x 10 grid of 10 px cells, one 30 x 30 px object at (45, 45): 9 token centres inside; the tokens'
    predicted boxes are the object except for their centres, so the 3 closest (largest IoU) are chosen, the one
    on the object's centre with target score max IoU = 1 * IoU(own)."""
    anchors = _grid_tokens(10, 10, 0.05)
    pred = torch.cat([anchors[..., :2], torch.full((1, 100, 2), 0.3), torch.zeros(1, 100, 1)], -1)
    target = torch.tensor([[[0.44, 0.44, 0.3, 0.3, 0.0]]])
    assigned, score = _assign(pred, anchors, target, [0], topk=3)
    chosen = set(torch.nonzero(assigned[0] == 0).flatten().tolist())
    # cell (4, 4) centre (45, 45) is 1 px from the object's centre in x and y; (3, 4), (4, 3) are 9 / 11 px
    assert chosen == {44, 43, 34}
    assert (assigned[0][[i for i in range(100) if i not in chosen]] == -1).all()
    iou = prob_iou(pred[:, [44]] * 100, target * torch.tensor([100, 100, 100, 100, 1.0]))[0, 0, 0]
    torch.testing.assert_close(score[0, 44], iou)  # the best-aligned token: t / max t = 1, times the max IoU
    assert 0 < score[0, 34] < score[0, 44]


def test_small_object_gets_candidates_and_padding_none():
    """A 4 x 4 px object inside one 20 px cell (no token centre in it) still has a candidate: its box is raised to
    the proposal size (20 px), which takes the centre token (7 px away) and no other (13 px); a padded target
    (label -1) takes nothing; an invalid token is never a candidate."""
    anchors = _grid_tokens(5, 5, 0.2)
    pred = torch.cat([anchors[..., :2], torch.full((1, 25, 2), 0.04), torch.zeros(1, 25, 1)], -1)
    targets = torch.tensor([[[0.43, 0.43, 0.04, 0.04, 0.0], [0.5, 0.5, 0.5, 0.5, 0.0]]])
    assigned, score = _assign(pred, anchors, targets, [1, -1], topk=4)
    assert torch.nonzero(assigned[0] >= 0).flatten().tolist() == [12] and assigned[0, 12] == 0
    assert score[0, 12] > 0 and (score[assigned < 0] == 0).all()
    valid = torch.ones(1, 25, dtype=torch.bool)
    valid[0, 12] = False
    assigned, score = _assign(pred, anchors, targets, [1, -1], valid=valid, topk=4)
    assert (assigned == -1).all() and (score == 0).all()


def test_shared_token_goes_to_the_object_it_overlaps_most():
    anchors = _grid_tokens(1, 3, 0.3)  # centres at x = 1/6, 1/2, 5/6
    pred = torch.tensor([[[1 / 6, 0.5, 0.3, 0.3, 0.0], [0.55, 0.5, 0.3, 0.3, 0.0], [5 / 6, 0.5, 0.3, 0.3, 0.0]]])
    targets = torch.tensor([[[0.3, 0.5, 0.6, 0.3, 0.0], [0.7, 0.5, 0.6, 0.3, 0.0]]])
    assigned, _ = _assign(pred, anchors, targets, [0, 1], topk=3)
    assert assigned[0].tolist() == [0, 1, 1]  # the middle box (0.55) is nearer the second object's centre (0.7)


def _targets(boxes, labels, size=(64, 80)):
    return [{"class_labels": torch.as_tensor(l, dtype=torch.long), "boxes": torch.as_tensor(b, dtype=torch.float32)
             .reshape(-1, 5), "size": torch.tensor(size)} for b, l in zip(boxes, labels)]


def test_perfect_boxes_give_no_box_loss_and_empty_images_are_finite():
    anchors = _grid_tokens(4, 5, 0.1).expand(2, -1, -1)
    valid = torch.ones(2, 20, dtype=torch.bool)
    target = [0.5, 0.625, 0.4, 0.25, 0.3]
    boxes = torch.tensor(target).expand(2, 20, 5).clone().requires_grad_(True)
    logits = torch.full((2, 20, 3), -2.0, requires_grad=True)
    terms = dense_encoder_loss(logits, boxes, anchors, valid, _targets([[target], []], [[2], []]))
    assert float(terms["loss_bbox"].detach()) == pytest.approx(0, abs=1e-6)
    assert float(terms["loss_sync"].detach()) == pytest.approx(0, abs=1e-5)
    assert float(terms["loss_cls"].detach()) > 0
    sum(terms.values()).backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(boxes.grad).all()
    # no object anywhere: only the background term, finite, with a gradient
    empty = dense_encoder_loss(logits, boxes, anchors, valid, _targets([[], []], [[], []]))
    assert float(empty["loss_bbox"].detach()) == 0 and float(empty["loss_cls"].detach()) > 0


def test_degenerate_background_boxes_do_not_poison_the_gradient():
    """Background tokens with zero-size or huge boxes compute nothing that reaches the loss or the gradient."""
    anchors = _grid_tokens(4, 4, 0.1)
    valid = torch.ones(1, 16, dtype=torch.bool)
    boxes = torch.rand(1, 16, 5)
    boxes[0, :8, 2:4] = 0.0
    boxes[0, 8:12, 2:4] = 1e6
    boxes.requires_grad_(True)
    logits = torch.zeros(1, 16, 2, requires_grad=True)
    terms = dense_encoder_loss(logits, boxes, anchors, valid, _targets([[[0.6, 0.6, 0.3, 0.2, 0.1]]], [[1]]))
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(boxes.grad).all()


def test_model_adds_the_weighted_dense_terms():
    config = SlDetrConfig.tiny({0: "a", 1: "b"}, d_model=32, layers=1, num_queries=10, num_denoising=0,
                               dense_loss_coefficient=0.5)
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(config).eval()  # eval: batch norms fixed, so both passes compute the same
    pixel_values = torch.randn(1, 3, 64, 96)
    labels = [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.5, 0.3, 0.2, 0.3]])}]
    with torch.no_grad():
        dense = model(pixel_values=pixel_values, labels=labels)
        model.config.dense_loss_coefficient = 0.0
        plain = model(pixel_values=pixel_values, labels=labels)
    assert not any(key.startswith("dense.") for key in plain.loss_dict)
    d = dense.loss_dict
    weighted = (config.cls_loss_coefficient * d["dense.loss_cls"] + config.bbox_loss_coefficient * d["dense.loss_bbox"]
                + config.sync_loss_coefficient * d["dense.loss_sync"])
    torch.testing.assert_close(dense.loss, plain.loss + 0.5 * weighted)
    assert float(d["dense.loss_bbox"]) > 0
