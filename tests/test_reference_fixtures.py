"""The RHINO / mmdetection-DINO reference fixtures are self-consistent and follow the documented conventions.

The fixtures come from the original code (`scripts/make_rhino_reference.py`); SL-DETR's parity with them is tested
in `test_rhino_parity.py` / `test_mmdet_dino_parity.py` (reader: `_parity_fixtures.py`). Here: the files load
without any mm package, the input tensor is rebuilt exactly from the PNGs, and the recorded intermediates chain
into the recorded detections by the formulas the parity code relies on (notes: the harness script's docstring).
And what SL-DETR's own code must get right on them without the model's numerics in the way: the converters' image
processor, given the original model's last-layer outputs, gives the original code's detections (top-k over
query x class, scores, labels, boxes in original pixels, RHINO's angles as le90, DINO's boxes clipped).
"""

from __future__ import annotations

import math

import pytest
import torch
from _parity_fixtures import load_case, load_model_json, load_weights, source_config

from sl_detr_hf.convert import convert_mmdet_dino_checkpoint, convert_rhino_checkpoint

KINDS = ("rhino", "mmdet_dino")
CASES = ("square", "wide", "batch2_padded")
PARAMS = [(kind, case) for kind in KINDS for case in CASES]


def _case(kind: str, case: str) -> tuple[dict[str, torch.Tensor], dict]:
    info, reference, _, _ = load_case(kind, case)
    return reference, info


def _inverse_sigmoid(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_loads_exactly(kind, tmp_path):
    model = load_model_json(kind)
    state_dict = load_weights(kind)
    assert set(state_dict) == set(model["state_dict"])
    for key, t in state_dict.items():
        assert list(t.shape) == model["state_dict"][key]["shape"], key
        assert str(t.dtype).replace("torch.", "") == model["state_dict"][key]["dtype"], key
        if t.dtype.is_floating_point:
            assert torch.isfinite(t).all() and t.abs().sum() > 0, f"{key} is trivially zero"
    assert model["num_tensors"] == len(state_dict)
    # the head's 5-d (rotated) or 4-d box branches, one per decoder layer plus the encoder's
    box_dim = 5 if kind == "rhino" else 4
    layers = model["reduced"]["decoder_layers"]
    assert state_dict[f"bbox_head.reg_branches.{layers}.4.weight"].shape == (box_dim, 256)
    # a checkpoint as mmengine writes it loads with weights_only
    path = tmp_path / "model.pth"
    torch.save({"meta": model["checkpoint_meta"], "state_dict": state_dict}, path)
    checkpoint = torch.load(path, weights_only=True)
    assert "cfg" in checkpoint["meta"] and torch.equal(checkpoint["state_dict"]["level_embed"],
                                                       state_dict["level_embed"])


@pytest.mark.parametrize(("kind", "case"), PARAMS)
def test_inputs_rebuild_exactly(kind, case):
    _, tensors, inputs, _ = load_case(kind, case)
    assert torch.equal(inputs[:, :, 0, :], tensors["inputs_row0"])
    assert torch.equal(inputs.double().sum(dim=(1, 2, 3)), tensors["inputs_sum"])


@pytest.mark.parametrize(("kind", "case"), PARAMS)
def test_decoder_chain(kind, case):
    t, side = _case(kind, case)
    box_dim = 5 if kind == "rhino" else 4
    num_layers, batch, num_queries = t["dec_logits"].shape[:3]
    assert t["dec_coords"].shape == (num_layers, batch, num_queries, box_dim)
    assert num_queries == side["num_queries"] and num_layers == side["num_decoder_layers"]
    # top-k of the class-aware encoder head (max over classes), references start at its boxes
    top_values = t["enc_class_max"].sort(dim=1, descending=True)[0][:, :num_queries]
    assert torch.equal(torch.gather(t["enc_class_max"], 1, t["enc_topk_index"]), top_values)
    assert torch.equal(t["enc_topk_logits"].max(-1)[0], top_values)
    assert torch.equal(t["dec_references"][0], t["enc_topk_coords"])
    if kind == "rhino":  # the angle starts at sigmoid-space 0.5 (+ the encoder's delta): not all zero
        assert t["enc_topk_coords"][..., 4].std() > 0
    # the head: sigmoid of its pre-sigmoid boxes
    torch.testing.assert_close(t["dec_coords_unact"].sigmoid(), t["dec_coords"], rtol=0, atol=1e-7)
    # the in-loop refinement: eps 1e-3 and the UN-normed layer output (dec_refine_delta)
    for layer in range(num_layers):
        refined = (t["dec_refine_delta"][layer] + _inverse_sigmoid(t["dec_references"][layer], 1e-3)).sigmoid()
        torch.testing.assert_close(refined, t["dec_references"][layer + 1], rtol=0, atol=1e-6)
    # the heads' boxes are not the refined references (decoder.norm + eps 1e-5 vs 1e-3)
    assert not torch.allclose(t["dec_coords"], t["dec_references"][1:], atol=1e-4)


@pytest.mark.parametrize(("kind", "case"), PARAMS)
def test_detections_follow_from_last_layer(kind, case):
    t, side = _case(kind, case)
    logits, coords = t["dec_logits"][-1], t["dec_coords"][-1]
    num_classes = logits.shape[-1]
    k = side["max_per_img"]
    for b, image in enumerate(side["images"]):
        meta = image["meta"]
        height, width = meta["img_shape"]
        sx, sy = meta["scale_factor"]
        scores, index = logits[b].sigmoid().flatten().topk(k)
        torch.testing.assert_close(t["det_scores"][b], scores, rtol=0, atol=0)
        assert torch.equal(t["det_labels"][b], index % num_classes)
        query = index // num_classes
        assert torch.equal(t["det_query_index"][b], query)
        box = coords[b][query].clone()
        if kind == "rhino":
            box = box * torch.tensor([width, height, width, height, math.pi])
            box[:, [0, 2]] = box[:, [0, 2]].clamp(0, width)  # cx and w (RHINO clamps w, h too)
            box[:, [1, 3]] = box[:, [1, 3]].clamp(0, height)
            box = box / torch.tensor([sx, sy, sx, sy, 1.0])
            assert (t["det_bboxes"][b][:, 4] >= 0).all() and (t["det_bboxes"][b][:, 4] < math.pi).all()
        else:
            cx, cy, w, h = box.unbind(-1)
            box = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
            box = box * torch.tensor([width, height, width, height])
            box[:, 0::2] = box[:, 0::2].clamp(0, width)
            box[:, 1::2] = box[:, 1::2].clamp(0, height)
            box = box / torch.tensor([sx, sy, sx, sy])
        torch.testing.assert_close(t["det_bboxes"][b], box, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_batch(kind):
    """Image 0 of the padded batch is the batch's largest (no padding): it repeats the single-image case; image 1 is
    padded (384 -> 512 rows), its valid ratio < 1 and its results differ from the unpadded run."""
    single, _ = _case(kind, "square")
    wide, _ = _case(kind, "wide")
    batch, side = _case(kind, "batch2_padded")
    torch.testing.assert_close(batch["dec_logits"][:, 0], single["dec_logits"][:, 0], rtol=0, atol=1e-4)
    assert side["images"][1]["meta"]["img_shape"] == [384, 512] and side["batch_input_shape"] == [512, 512]
    assert not batch["enc_output_proposals_finite"][1].all()
    assert (batch["dec_logits"][:, 1] - wide["dec_logits"][:, 0]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def processors() -> dict:
    """The image processor each converter sets up for its fixture's checkpoint."""
    return {"rhino": convert_rhino_checkpoint(load_weights("rhino"), config=source_config("rhino")).processor,
            "mmdet_dino": convert_mmdet_dino_checkpoint(load_weights("mmdet_dino"),
                                                        config=source_config("mmdet_dino")).processor}


def _le90(boxes: torch.Tensor) -> torch.Tensor:
    """``(N, 5)`` rotated boxes as le90 (``w >= h``, theta in ``[-pi/2, pi/2)``), written here independently of
    sl_detr_hf."""
    cx, cy, w, h, theta = boxes.double().unbind(-1)
    swap = w < h
    theta = torch.where(swap, theta + math.pi / 2, theta)
    theta = torch.remainder(theta + math.pi / 2, math.pi) - math.pi / 2
    return torch.stack([cx, cy, torch.maximum(w, h), torch.minimum(w, h), theta], -1)


@pytest.mark.parametrize(("kind", "case"), PARAMS)
def test_post_processing_gives_the_reference_detections(processors, kind, case):
    """`post_process_object_detection` of the converted processor on the reference's last decoder layer (its
    sigmoid-space boxes as the model's `pred_boxes`: RHINO's angle `a * pi`) gives the reference detections: as
    many (the processor's `max_detections` is the checkpoint's `max_per_img`), the same scores, labels and boxes."""
    t, side = _case(kind, case)
    coords = t["dec_coords"][-1]
    pred_boxes = torch.cat([coords[..., :4], coords[..., 4:] * math.pi], -1) if kind == "rhino" else coords
    results = processors[kind].post_process_object_detection(
        {"logits": t["dec_logits"][-1], "pred_boxes": pred_boxes}, threshold=0.0,
        target_sizes=[image["meta"]["ori_shape"] for image in side["images"]])
    for b, result in enumerate(results):
        assert len(result["scores"]) == side["max_per_img"]
        torch.testing.assert_close(result["scores"], t["det_scores"][b], rtol=0, atol=1e-7)  # 1 ulp: batched sigmoid
        assert torch.equal(result["labels"], t["det_labels"][b])
        if kind == "mmdet_dino":  # (x1, y1, x2, y2), clipped to the original image
            torch.testing.assert_close(result["boxes"], t["det_bboxes"][b], rtol=0, atol=1e-3)
            continue
        ours, theirs = _le90(result["rboxes"]), _le90(t["det_bboxes"][b])
        torch.testing.assert_close(ours[:, :4], theirs[:, :4], rtol=0, atol=1e-3)
        square = (theirs[:, 2] - theirs[:, 3]).abs() < 1e-3  # its angle is defined up to pi / 2 only
        period = torch.where(square, math.pi / 2, math.pi).double()
        turn = torch.remainder(ours[:, 4] - theirs[:, 4] + period / 2, period) - period / 2
        assert float(turn.abs().max()) < 1e-5
        assert bool((result["rboxes"][:, 2] >= result["rboxes"][:, 3]).all())  # le90 as documented

