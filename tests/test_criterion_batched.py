"""The batched criterion (issue 11) and the denoising losses (issue 9) against straightforward references:
the per-layer pre-batching criterion, the known DN assignment, a hand-built dynamic-denoising case and a
brute-force Hausdorff distance."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from _criterion_reference import layer_losses, reference_criterion
from test_loss import make_problem, rand_norm_boxes

from sl_detr_hf.configuration_sl_detr import SlDetrConfig
from sl_detr_hf.geometry_conversions import rbox_corners
from sl_detr_hf.geometry_distances import pairwise_hausdorff
from sl_detr_hf.loss_sl_detr import SlDetrLoss, sigmoid_focal_loss
from sl_detr_hf.matcher_sl_detr import SlDetrHungarianMatcher


def assert_same(loss_dict, expected, rtol=1e-6):
    assert set(loss_dict) == set(expected)
    for key, value in expected.items():
        value = float(value)
        assert abs(loss_dict[key].item() - value) <= rtol * max(1.0, abs(value)), (key, loss_dict[key].item(), value)


def with_enc_tokens(rng, outputs, tokens, classes, rotated, dtype):
    """Replace the encoder output with ``tokens`` proposals (the all-token form, ``mixed_query_selection=False``)."""
    batch = outputs["logits"].shape[0]
    dim = 5 if rotated else 4
    outputs["enc_outputs"] = {
        "logits": torch.tensor(rng.normal(0, 2, (batch, tokens, classes)), dtype=dtype),
        "pred_boxes": torch.tensor(rand_norm_boxes(rng, batch * tokens, rotated).reshape(batch, tokens, dim),
                                   dtype=dtype)}
    return outputs


# --------------------------------------------------------------------------------------------------
# Batched == per-layer reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box_type,sync,quality,numerics,tokens", [
    ("rotated", True, True, "rhino", 30), ("rotated", True, True, "rhino", 12), ("rotated", False, False, "rhino", 30),
    ("horizontal", True, True, "rhino", 30), ("horizontal", False, False, "rhino", 12),
    ("rotated", True, True, "deformable_detr", 30), ("horizontal", True, True, "deformable_detr", 12),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_equals_per_layer_reference(box_type, sync, quality, numerics, tokens, dtype):
    """All-token encoder (30 tokens for 12 queries) or top-k (12), no DN: same losses and matchings (the encoder
    terms class-aware with RHINO's numerics, class-agnostic with Deformable DETR's)."""
    rng = np.random.default_rng(21 + tokens + (numerics == "deformable_detr"))
    rotated = box_type == "rotated"
    config = SlDetrConfig(num_labels=5, box_type=box_type, use_sync_loc=sync, use_quality_cls=quality,
                          sync_gain=1.2, cls_loss_coefficient=1.5, numerics=numerics)
    for counts in ([4, 0, 7], [1, 3, 2], [0, 0, 1]):
        outputs, targets = make_problem(rng, counts, queries=12, rotated=rotated, dtype=dtype)
        outputs = with_enc_tokens(rng, outputs, tokens, 5, rotated, dtype)
        criterion = SlDetrLoss(config)
        total, loss_dict = criterion(outputs, targets)
        ref_total, ref_dict, ref_matchings = reference_criterion(config, outputs, targets)
        assert_same(loss_dict, ref_dict, rtol=1e-6 if dtype == torch.float32 else 1e-9)
        assert total.item() == pytest.approx(float(ref_total), rel=1e-6)
        matchings = criterion.match(outputs, targets)
        assert set(matchings) == set(ref_matchings)
        for prefix, per_image in ref_matchings.items():
            for (q1, t1), (q2, t2) in zip(matchings[prefix], per_image):
                assert torch.equal(q1, q2) and torch.equal(t1, t2), prefix


def test_batched_gradients_equal_reference():
    rng = np.random.default_rng(30)
    config = SlDetrConfig(num_labels=5)
    outputs, targets = make_problem(rng, [3, 5], queries=10)
    leaves = [outputs["logits"], outputs["pred_boxes"], outputs["auxiliary_outputs"][0]["pred_boxes"],
              outputs["enc_outputs"]["logits"]]
    grads = []
    for fn in (lambda: SlDetrLoss(config)(outputs, targets)[0], lambda: reference_criterion(config, outputs,
                                                                                               targets)[0]):
        for x in leaves:
            x.grad = None
            x.requires_grad_()
        fn().backward()
        grads.append([x.grad.clone() for x in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Denoising
# --------------------------------------------------------------------------------------------------


def add_dn(rng, outputs, targets, groups, classes=5, rotated=True, dtype=torch.float64):
    """Random DN outputs for every decoder layer, laid out as the model does (RT-DETR's groups)."""
    batch = len(targets)
    m = max(len(t["class_labels"]) for t in targets)
    n = 2 * groups * m
    layers = 1 + len(outputs.get("auxiliary_outputs") or [])
    dim = 5 if rotated else 4
    outputs["dn_outputs"] = [
        {"logits": torch.tensor(rng.normal(0, 2, (batch, n, classes)), dtype=dtype),
         "pred_boxes": torch.tensor(rand_norm_boxes(rng, batch * n, rotated).reshape(batch, n, dim), dtype=dtype)}
        for _ in range(layers)]
    outputs["dn_meta"] = {"num_groups": groups, "max_objects": m}
    return outputs


def known_indices(targets, groups, m):
    """Per image ``(query_idx, target_idx)`` of the positive DN queries: ``2 m g + j -> j``."""
    out = []
    for t in targets:
        n = len(t["class_labels"])
        g, j = np.divmod(np.arange(groups * n), n)
        out.append((torch.as_tensor(2 * m * g + j), torch.as_tensor(j)))
    return out


@pytest.mark.parametrize("box_type,quality", [("rotated", True), ("rotated", False), ("horizontal", True)])
def test_dn_loss_with_known_assignment(box_type, quality):
    rng = np.random.default_rng(40)
    rotated = box_type == "rotated"
    config = SlDetrConfig(num_labels=5, box_type=box_type, use_quality_cls=quality, dynamic_denoising=False)
    counts, groups = [3, 0, 2], 3
    outputs, targets = make_problem(rng, counts, queries=12, rotated=rotated)
    outputs = add_dn(rng, outputs, targets, groups, rotated=rotated)
    _, loss_dict = SlDetrLoss(config)(outputs, targets)
    _, ref_dict, _ = reference_criterion(config, outputs, targets)
    indices = known_indices(targets, groups, 3)
    num_boxes = torch.tensor(5.0 * groups)  # DINO: num_boxes * num_groups
    for i, layer in enumerate(outputs["dn_outputs"]):
        prefix = "dn." if i == len(outputs["dn_outputs"]) - 1 else f"d{i}.dn."
        for name, value in layer_losses(config, layer, targets, indices, num_boxes).items():
            ref_dict[prefix + name] = value
    assert_same(loss_dict, ref_dict, rtol=1e-9)


def test_dynamic_denoising_hand_built():
    """Group 0's positive DN query for target 0 sits far away while matching query 0 sits on target 0: that DN
    query is trained as background (its box target kept); every other positive keeps its known assignment."""
    config = SlDetrConfig(num_labels=3, use_quality_cls=False, dynamic_denoising=True)
    size = torch.tensor([400, 400])
    tgt = torch.tensor([[0.3, 0.3, 0.2, 0.1, 0.3], [0.7, 0.7, 0.1, 0.05, -0.4]], dtype=torch.float64)
    targets = [{"class_labels": torch.tensor([1, 2]), "boxes": tgt, "size": size}]
    far = torch.tensor([0.9, 0.1, 0.05, 0.05, 1.0], dtype=torch.float64)
    matching_boxes = torch.stack([tgt[0] + 0.01, far, far])[None]  # query 0 fits target 0 closely
    matching_logits = torch.full((1, 3, 3), -4.0, dtype=torch.float64)
    matching_logits[0, 0, 1] = 4.0
    groups, m = 2, 2
    dn_boxes = torch.stack([far, tgt[1], far, far,  # group 0: positive for target 0 is far (loses it)
                            tgt[0], tgt[1], far, far])[None]  # group 1: both positives exact
    dn_logits = torch.full((1, 8, 3), -4.0, dtype=torch.float64)
    dn_logits[0, [1, 4, 5], [2, 1, 2]] = 4.0
    layer = {"logits": matching_logits, "pred_boxes": matching_boxes}
    dn_layer = {"logits": dn_logits, "pred_boxes": dn_boxes}
    outputs = {**layer, "dn_outputs": [dn_layer], "dn_meta": {"num_groups": groups, "max_objects": m}}
    criterion = SlDetrLoss(config)
    won = criterion._dn_winners(criterion._plan(outputs, targets))
    assert won.tolist() == [[[[False, True], [True, True]]]]
    _, loss_dict = criterion(outputs, targets)
    # classification: positives only at the 3 winners, normalized by their count (RHINO)
    b, q, lab = torch.zeros(3, dtype=torch.long), torch.tensor([1, 4, 5]), torch.tensor([2, 1, 2])
    expected_cls = sigmoid_focal_loss(dn_logits, b, q, lab, 3.0)
    # boxes: all 4 positive pairs (the loser's target kept), normalized by num_boxes * groups
    indices = [(torch.tensor([0, 1, 4, 5]), torch.tensor([0, 1, 0, 1]))]
    boxes_ref = layer_losses(config, dn_layer, targets, indices, torch.tensor(2.0 * groups))
    assert loss_dict["dn.loss_cls"].item() == pytest.approx(expected_cls.item(), rel=1e-12)
    assert loss_dict["dn.loss_bbox"].item() == pytest.approx(boxes_ref["loss_bbox"].item(), rel=1e-12)
    assert loss_dict["dn.loss_sync"].item() == pytest.approx(boxes_ref["loss_sync"].item(), rel=1e-12)
    # with the DN query back on its target, the known assignment again
    dn_boxes[0, 0] = tgt[0]
    dn_logits[0, 0, 1] = 4.0
    won = criterion._dn_winners(criterion._plan(outputs, targets))
    assert won.all()


@pytest.mark.parametrize("dynamic", [True, False])
@pytest.mark.parametrize("counts", [[0, 0], [1, 0], [0, 1, 4], [1]])
def test_dn_empty_and_single_targets_finite(dynamic, counts):
    rng = np.random.default_rng(50)
    config = SlDetrConfig(num_labels=5, dynamic_denoising=dynamic)
    outputs, targets = make_problem(rng, counts, queries=8)
    if max(counts):
        outputs = add_dn(rng, outputs, targets, groups=2)
    leaves = [outputs["logits"], outputs["pred_boxes"]] + [d["pred_boxes"] for d in outputs.get("dn_outputs", [])]
    for x in leaves:
        x.requires_grad_()
    total, loss_dict = SlDetrLoss(config)(outputs, targets)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in loss_dict.values())
    total.backward()
    assert all(torch.isfinite(x.grad).all() for x in leaves)
    if max(counts):
        assert {"dn.loss_cls", "d0.dn.loss_bbox", "d1.dn.loss_sync"} <= set(loss_dict)


def test_dn_meta_mismatch_is_an_error():
    rng = np.random.default_rng(51)
    outputs, targets = make_problem(rng, [2, 3], queries=8)
    outputs = add_dn(rng, outputs, targets, groups=2)
    outputs["dn_meta"] = {"num_groups": 3, "max_objects": 3}
    with pytest.raises(ValueError, match="dn_outputs"):
        SlDetrLoss(SlDetrConfig(num_labels=5))(outputs, targets)


def test_dn_of_the_last_layer_only_without_auxiliary_outputs():
    """`auxiliary_loss=False`: no auxiliary outputs, the DN outputs of every layer; the last layer's DN queries are
    scored (DINO), with the terms the full criterion gives that layer (it raised 'dn_outputs has 3 layers')."""
    rng = np.random.default_rng(52)
    config = SlDetrConfig(num_labels=5)  # dynamic denoising (rotated)
    outputs, targets = make_problem(rng, [2, 3], queries=8)
    outputs = add_dn(rng, outputs, targets, groups=2)
    _, full = SlDetrLoss(config)(outputs, targets)
    _, last_only = SlDetrLoss(config)({**outputs, "auxiliary_outputs": None}, targets)
    expected = {key: value for key, value in full.items() if not re.match(r"d\d+\.", key)}
    assert {"dn.loss_cls", "dn.loss_sync"} <= set(expected)
    assert_same(last_only, expected, rtol=1e-9)
    with pytest.raises(ValueError, match="`dn_outputs` has 3 layers, the decoder 2"):  # which DN layer is whose?
        SlDetrLoss(config)({**outputs, "auxiliary_outputs": outputs["auxiliary_outputs"][:1]}, targets)


def test_every_process_makes_the_same_collectives(monkeypatch):
    """A process whose batch holds no target (so no denoising queries) makes the same all-reduce calls as one with
    dynamic denoising: otherwise the processes wait on each other for ever."""
    calls = []
    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda values: calls.append(tuple(values.shape)))
    rng = np.random.default_rng(53)
    config = SlDetrConfig(num_labels=5)  # dynamic denoising (rotated)
    outputs, targets = make_problem(rng, [2, 3], queries=8)
    SlDetrLoss(config)(add_dn(rng, outputs, targets, groups=2), targets)
    busy, calls[:] = list(calls), []
    outputs, targets = make_problem(rng, [0, 0], queries=8)
    _, loss_dict = SlDetrLoss(config)(outputs, targets)
    assert "dn.loss_cls" not in loss_dict
    assert calls == busy and len(busy) == 1


# --------------------------------------------------------------------------------------------------
# Hausdorff cost
# --------------------------------------------------------------------------------------------------


def np_corners(box):
    cx, cy, w, h = box[:4]
    a = box[4] if len(box) == 5 else 0.0
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return [np.array([cx, cy]) + rot @ np.array([sx * w / 2, sy * h / 2])
            for sx, sy in itertools.product((-1, 1), repeat=2)]


def np_hausdorff(p, t):
    a, b = np_corners(p), np_corners(t)
    forward = max(min(np.linalg.norm(x - y) for y in b) for x in a)
    backward = max(min(np.linalg.norm(x - y) for x in a) for y in b)
    return max(forward, backward)


@pytest.mark.parametrize("rotated", [True, False])
def test_hausdorff_cost_matches_brute_force(rotated):
    rng = np.random.default_rng(70)
    pred = rand_norm_boxes(rng, 2 * 7, rotated).reshape(2, 7, -1)
    tgt = rand_norm_boxes(rng, 2 * 4, rotated).reshape(2, 4, -1)
    pred[0, 0] = tgt[0, 0]  # identical boxes: distance 0
    got = pairwise_hausdorff(torch.tensor(pred), torch.tensor(tgt)).numpy()
    ref = np.array([[[np_hausdorff(p, t) for t in tgt[b]] for p in pred[b]] for b in range(2)])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert got[0, 0, 0] == pytest.approx(0, abs=1e-12)
    # corners of a box turned by pi/2 are the corners of the box with w and h swapped
    box = torch.tensor([[0.5, 0.4, 0.3, 0.1, np.pi / 2]], dtype=torch.float64)
    swapped = torch.tensor([[0.5, 0.4, 0.1, 0.3, 0.0]], dtype=torch.float64)
    assert pairwise_hausdorff(box[None], swapped[None]).item() == pytest.approx(0, abs=1e-12)
    assert rbox_corners(swapped).shape == (1, 4, 2)


def test_matcher_hausdorff_cost_replaces_the_l1_term():
    rng = np.random.default_rng(71)
    outputs, targets = make_problem(rng, [3, 2], queries=9, layers=1, enc=False)
    l1 = SlDetrHungarianMatcher(SlDetrConfig(num_labels=5)).cost_matrix(outputs, targets)[0]
    haus_matcher = SlDetrHungarianMatcher(SlDetrConfig(num_labels=5, matcher_box_cost="hausdorff"))
    haus = haus_matcher.cost_matrix(outputs, targets)[0]
    padded = torch.zeros(2, 3, 5, dtype=torch.float64)
    padded[:] = 0.5
    for i, t in enumerate(targets):
        padded[i, :len(t["boxes"])] = t["boxes"]
    l1_term = torch.cdist(torch.cat([outputs["pred_boxes"][..., :4], outputs["pred_boxes"][..., 4:] / np.pi], -1),
                          torch.cat([padded[..., :4], padded[..., 4:] / np.pi], -1), p=1)
    expected = l1 - 5 * l1_term + 5 * pairwise_hausdorff(outputs["pred_boxes"], padded)
    torch.testing.assert_close(haus, expected, rtol=1e-10, atol=1e-10)
    indices = haus_matcher(outputs, targets)
    assert [len(q) for q, _ in indices] == [3, 2]
