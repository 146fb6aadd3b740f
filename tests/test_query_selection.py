"""The proposal NMS of the two-stage query selection (`config.query_selection_nms`): ProbIoU of box pairs and the
fixed-shape Fast NMS that decides which encoder proposals start the decoder. Hand-computed values, a loop
reference, and the model wiring. Tiny random configs, no network."""

from __future__ import annotations

import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from hypothesis import given, settings
from hypothesis import strategies as st
from test_modeling import images, rotated_labels, tiny_config

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.query_selection_sl_detr import (
    NMS_CANDIDATE_FACTOR,
    pairwise_prob_iou,
    proposal_nms_order,
    select_proposals,
)


def _box(cx, cy, w, h, theta=0.0):
    """A sigmoid-space rotated box (`a = theta / pi + 0.5`)."""
    return [cx, cy, w, h, theta / math.pi + 0.5]


# --------------------------------------------------------------------------------------------------
# ProbIoU
# --------------------------------------------------------------------------------------------------


def test_prob_iou_hand_computed():
    boxes = torch.tensor([[_box(0.5, 0.5, 0.2, 0.2), _box(0.6, 0.5, 0.2, 0.2), _box(0.5, 0.5, 0.2, 0.2)]])
    iou = pairwise_prob_iou(boxes)[0]
    # a square shifted by half its side: both covariances w^2/12 I, Mahalanobis (w/2)^2 / (w^2/12) = 3,
    # Bhattacharyya distance 3/8, Hellinger sqrt(1 - exp(-3/8))
    expected = 1 - math.sqrt(1 - math.exp(-3 / 8))
    assert iou[0, 1].item() == pytest.approx(expected, abs=1e-4)
    assert iou[0, 2].item() == pytest.approx(1.0, abs=1e-3)
    # two boxes of one centre, sizes (w, h) and (2w, 2h): Bhattacharyya 0.5 ln(2.5^2 / 4) per the formula
    scaled = torch.tensor([[_box(0.5, 0.5, 0.1, 0.2), _box(0.5, 0.5, 0.2, 0.4)]])
    expected = 1 - math.sqrt(1 - math.exp(-0.5 * math.log(2.5 ** 2 / 4)))
    assert pairwise_prob_iou(scaled)[0, 0, 1].item() == pytest.approx(expected, abs=1e-4)


def test_prob_iou_sees_the_angle():
    thin, turned = _box(0.5, 0.5, 0.4, 0.05), _box(0.5, 0.5, 0.4, 0.05, math.pi / 2)
    iou = pairwise_prob_iou(torch.tensor([[thin, turned]]))[0, 0, 1].item()
    assert iou < 0.3  # a cross: little overlap
    # a box and the same box with sides swapped and turned by 90 degrees are one box
    same = pairwise_prob_iou(torch.tensor([[_box(0.5, 0.5, 0.4, 0.1), _box(0.5, 0.5, 0.1, 0.4, math.pi / 2)]]))
    assert same[0, 0, 1].item() == pytest.approx(1.0, abs=1e-3)


def test_prob_iou_of_horizontal_boxes_is_the_rotated_one_at_angle_zero():
    torch.manual_seed(0)
    boxes = torch.rand(2, 7, 5) * 0.5 + 0.2
    boxes[..., 4] = 0.5
    torch.testing.assert_close(pairwise_prob_iou(boxes[..., :4]), pairwise_prob_iou(boxes))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(0.05, 0.95), st.floats(0.05, 0.95), st.floats(0.01, 0.6),
                          st.floats(0.01, 0.6), st.floats(0.0, 1.0)), min_size=1, max_size=6),
       st.floats(-math.pi, math.pi))
def test_prob_iou_is_symmetric_bounded_and_rotation_invariant(rows, turn):
    boxes = torch.tensor([rows], dtype=torch.float64)
    iou = pairwise_prob_iou(boxes)
    assert torch.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1).all()
    torch.testing.assert_close(iou, iou.transpose(1, 2))
    # turn the whole scene about (0.5, 0.5): every pair keeps its ProbIoU
    c, s = math.cos(turn), math.sin(turn)
    turned = boxes.clone()
    dx, dy = boxes[..., 0] - 0.5, boxes[..., 1] - 0.5
    turned[..., 0], turned[..., 1] = 0.5 + c * dx - s * dy, 0.5 + s * dx + c * dy
    turned[..., 4] = boxes[..., 4] + turn / math.pi
    torch.testing.assert_close(pairwise_prob_iou(turned), iou, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------
# Fast NMS of the proposals
# --------------------------------------------------------------------------------------------------


def _reference_order(scores: torch.Tensor, boxes: torch.Tensor, k: int, threshold: float) -> list[int]:
    """Fast NMS written as loops over one image: `scores (S,)`, `boxes (S, 5)` sigmoid space."""
    candidates = sorted(range(len(scores)), key=lambda i: -float(scores[i]))[: NMS_CANDIDATE_FACTOR * k]
    iou = pairwise_prob_iou(boxes[None])[0]
    kept, dropped = [], []
    for rank, i in enumerate(candidates):
        beaten = any(iou[j, i] > threshold for j in candidates[:rank])
        (dropped if beaten else kept).append(i)
    return (kept + dropped)[:k]


def test_nms_keeps_one_query_per_object_and_fills_up_with_the_rest():
    boxes = torch.tensor([[_box(0.3, 0.3, 0.2, 0.1), _box(0.31, 0.3, 0.2, 0.1), _box(0.7, 0.7, 0.1, 0.3, 0.4),
                           _box(0.3, 0.29, 0.2, 0.1), _box(0.1, 0.8, 0.05, 0.05)]])
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    order = proposal_nms_order(scores, torch.logit(boxes), num_queries=4, iou_threshold=0.7)
    # proposals 1 and 3 repeat proposal 0: the third and fourth objects come first, then the best repeat
    assert order.tolist() == [[0, 2, 4, 1]]
    plain = select_proposals(scores, 4)
    assert plain.tolist() == [[0, 1, 2, 3]]
    # nothing reaches ProbIoU above 1: plain top-k
    assert proposal_nms_order(scores, torch.logit(boxes), 4, 1.0).tolist() == plain.tolist()


def test_nms_equals_the_loop_reference_on_random_proposals():
    torch.manual_seed(0)
    batch, tokens, k = 3, 60, 9
    boxes = torch.rand(batch, tokens, 5) * 0.6 + 0.2
    boxes[..., 2:4] = boxes[..., 2:4] * 0.3
    scores = torch.randn(batch, tokens)
    order = proposal_nms_order(scores, torch.logit(boxes), k, 0.5)
    assert order.shape == (batch, k)
    for b in range(batch):
        assert order[b].tolist() == _reference_order(scores[b], boxes[b], k, 0.5)
        assert len(set(order[b].tolist())) == k


def test_nms_with_fewer_tokens_than_queries_returns_every_token():
    scores, boxes = torch.randn(2, 5), torch.randn(2, 5, 5)
    order = select_proposals(scores, 12, boxes, nms_threshold=0.5)
    assert order.shape == (2, 5)
    assert sorted(order[0].tolist()) == list(range(5))
    with pytest.raises(ValueError, match="coord_logits"):
        select_proposals(scores, 3, nms_threshold=0.5)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixed", [True, False])
def test_model_starts_its_queries_from_the_nms_selected_proposals(mixed):
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(query_selection_nms=0.1, num_denoising=0,
                                                 mixed_query_selection=mixed)).eval()
    with torch.no_grad():
        model.model.decoder.bbox_embed[-1].layers[-1].bias[2:4] = 1.0  # larger proposals: some neighbours overlap
        outputs = model(images())
    scores, coords = outputs.enc_outputs_class[..., 0], outputs.enc_outputs_coord_logits
    expected = proposal_nms_order(scores, coords, 12, 0.1)
    assert not torch.equal(expected, torch.topk(scores, 12, dim=1).indices)  # the NMS changed the choice
    selected = torch.gather(coords, 1, expected[..., None].expand(-1, -1, 5))
    torch.testing.assert_close(outputs.init_reference_points, selected[..., :4].sigmoid())


def test_model_with_proposal_nms_trains_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(query_selection_nms=0.1)).train()  # changes the choice
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # the same denoising noise every step: the losses compare
        loss = model(images(), labels=rotated_labels()).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    model.eval().save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert loaded.config.query_selection_nms == 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(images()).pred_boxes, model(images()).pred_boxes)


@pytest.mark.parametrize("value", [0.0, 1.5, -0.2])
def test_invalid_threshold_names_the_field(value):
    with pytest.raises((ValueError, StrictDataclassError), match="`query_selection_nms` must be"):
        SlDetrConfig(query_selection_nms=value)
