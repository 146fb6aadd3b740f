"""Parity with RHINO's own code: a RHINO checkpoint converted by `sl_detr_hf.convert` computes what RHINO computed.

The fixture (`tests/fixtures/rhino`, written by `scripts/make_rhino_reference.py` running RHINO and mmdetection
3.0 in a separate environment) is a reduced RHINO DOTA model (the R50 DOTA config with a narrow ResNet-50, 2 + 2
layers, 200 queries) with deterministic weights, its checkpoint `meta['cfg']`, and RHINO's intermediate and final
outputs on a 512 x 512 image, a 384 x 512 one and a padded batch of both. No mm package is needed here.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from _parity_fixtures import assert_every_key_accounted, available, load_weights, run_case, source_config

from sl_detr_hf.convert import convert_rhino_checkpoint
from sl_detr_hf.rotated_boxes import box_iou_rotated

KIND = "rhino"
CASES = ("square", "wide", "batch2_padded")
TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(not available(KIND), reason="RHINO reference fixture not present")


@pytest.fixture(scope="module")
def converted():
    return convert_rhino_checkpoint(load_weights(KIND), config=source_config(KIND))


@pytest.fixture(scope="module", params=[c for c in CASES if available(KIND, c)])
def case(request, converted):
    return run_case(KIND, request.param, converted.model, TOLERANCE)


def test_conversion_accounts_for_every_key(converted):
    assert_every_key_accounted(converted, KIND)
    config = converted.model.config
    assert (config.box_type, config.num_labels, config.num_queries, config.decoder_layers) == ("rotated", 15, 200, 2)
    assert config.id2label[0] == "plane" and config.angle_start == 0 and config.numerics == "rhino"
    assert config.backbone_norm == "eval_batch_norm"  # mmdet's norm_eval ResNet, bit for bit


def test_decoder_version_v3_converts_and_matches(converted):
    """RHINO builds the same decoder for `version='v3'` as for 'v2' (`RHINO._init_layers`: `version in ['v2', 'v3']`
    -> `RhinoTransformerDecoderV2`) and reads `version` nowhere else: a 'v3' checkpoint converts to the same model,
    whose every decoder layer matches RHINO's outputs."""
    cfg = copy.deepcopy(source_config(KIND))
    cfg["model"]["version"] = "v3"
    v3 = convert_rhino_checkpoint(load_weights(KIND), config=cfg)
    assert v3.model.config.to_dict() == converted.model.config.to_dict()
    _, reference, _, _, logits, boxes, _ = run_case(KIND, "square", v3.model, TOLERANCE)
    assert len(logits) == len(reference["dec_logits"]) == 2
    for layer, (layer_logits, layer_boxes) in enumerate(zip(logits, boxes)):
        torch.testing.assert_close(layer_logits, reference["dec_logits"][layer], rtol=0, atol=TOLERANCE)
        sigmoid_space = torch.cat([layer_boxes[..., :4], layer_boxes[..., 4:] / math.pi], -1)
        torch.testing.assert_close(sigmoid_space, reference["dec_coords"][layer], rtol=0, atol=TOLERANCE)


def test_inputs_follow_the_fixture_recipe(case):
    _, reference, pixels, *_ = case
    torch.testing.assert_close(pixels.double().sum(dim=(1, 2, 3)), reference["inputs_sum"], rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(pixels[:, :, 0], reference["inputs_row0"], rtol=0, atol=0)


def test_query_selection_matches(case):
    _, reference, _, outputs, *_ = case
    torch.testing.assert_close(outputs.enc_outputs_class.max(-1)[0], reference["enc_class_max"], rtol=0,
                               atol=TOLERANCE)
    assert torch.equal(outputs.enc_topk_indices, reference["enc_topk_index"])  # (up to near-ties: `run_model`)
    reference_boxes = reference["dec_references"]
    init = torch.cat([outputs.init_reference_points, outputs.init_reference_angles], -1)
    torch.testing.assert_close(init, reference_boxes[0], rtol=0, atol=TOLERANCE)
    refined = torch.cat([outputs.intermediate_reference_points, outputs.intermediate_reference_angles], -1)
    torch.testing.assert_close(refined.transpose(0, 1), reference_boxes[1:], rtol=0, atol=TOLERANCE)


def test_every_decoder_layer_matches(case):
    _, reference, _, _, logits, boxes, _ = case
    for layer, (layer_logits, layer_boxes) in enumerate(zip(logits, boxes)):
        torch.testing.assert_close(layer_logits, reference["dec_logits"][layer], rtol=0, atol=TOLERANCE)
        sigmoid_space = torch.cat([layer_boxes[..., :4], layer_boxes[..., 4:] / math.pi], -1)  # theta = a * pi
        torch.testing.assert_close(sigmoid_space, reference["dec_coords"][layer], rtol=0, atol=TOLERANCE)


def test_final_detections_match(case, converted):
    info, reference, _, _, _, _, detection = case
    sizes = [image["meta"]["ori_shape"] for image in info["images"]]
    results = converted.processor.post_process_object_detection(
        detection, threshold=0.0, target_sizes=sizes, top_k=info["max_per_img"])
    for b, result in enumerate(results):
        ref_scores, ref_labels = reference["det_scores"][b], reference["det_labels"][b]
        ref_boxes = reference["det_bboxes"][b]
        torch.testing.assert_close(result["scores"], ref_scores, rtol=0, atol=TOLERANCE)
        assert float(result["rboxes"][:, 4].min()) >= -math.pi / 2 and float(result["rboxes"][:, 4].max()) < math.pi / 2
        iou = box_iou_rotated(ref_boxes.double(), result["rboxes"].double())
        partner = ((ref_labels[:, None] == result["labels"][None]) & (iou >= 0.999)
                   & ((ref_scores[:, None] - result["scores"][None]).abs() <= TOLERANCE))
        # only detections tied with the last kept score (within the tolerance) may trade places across the cut
        boundary = float(ref_scores[-1]) + TOLERANCE
        assert bool((partner.any(1) | (ref_scores <= boundary)).all())
        assert bool((partner.any(0) | (result["scores"] <= boundary)).all())
        assert int(partner.any(1).sum()) >= len(ref_scores) - int((ref_scores <= boundary).sum())
