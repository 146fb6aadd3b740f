"""Parity with mmdetection 3.0's DINO: a DINO checkpoint converted by `sl_detr_hf.convert` computes what mmdetection
computed (horizontal SL-DETR).

The fixture (`tests/fixtures/mmdet_dino`, written by `scripts/make_rhino_reference.py --model dino` in a separate
environment) is a reduced `dino-4scale_r50_8xb2-12e_coco` model with deterministic weights, its checkpoint
`meta['cfg']`, and mmdetection's intermediate and final outputs on a square image, a non-square one and a padded
batch. No mm package is needed here.
"""

from __future__ import annotations

import pytest
import torch
from _parity_fixtures import assert_every_key_accounted, available, load_weights, run_case, source_config
from torchvision.ops import box_iou

from sl_detr_hf.convert import convert_mmdet_dino_checkpoint

KIND = "mmdet_dino"
CASES = ("square", "wide", "batch2_padded")
TOLERANCE = 1e-4

pytestmark = pytest.mark.skipif(not available(KIND), reason="mmdetection DINO reference fixture not present")


@pytest.fixture(scope="module")
def converted():
    return convert_mmdet_dino_checkpoint(load_weights(KIND), config=source_config(KIND))


@pytest.fixture(scope="module", params=[c for c in CASES if available(KIND, c)])
def case(request, converted):
    return run_case(KIND, request.param, converted.model, TOLERANCE)


def test_conversion_accounts_for_every_key(converted):
    assert_every_key_accounted(converted, KIND)
    config = converted.model.config
    assert config.box_type == "horizontal" and config.numerics == "rhino"
    assert config.num_labels == 80 and config.id2label[0] == "person"


def test_inputs_follow_the_fixture_recipe(case):
    _, reference, pixels, *_ = case
    torch.testing.assert_close(pixels.double().sum(dim=(1, 2, 3)), reference["inputs_sum"], rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(pixels[:, :, 0], reference["inputs_row0"], rtol=0, atol=0)


def test_query_selection_matches(case):
    _, reference, _, outputs, *_ = case
    torch.testing.assert_close(outputs.enc_outputs_class.max(-1)[0], reference["enc_class_max"], rtol=0,
                               atol=TOLERANCE)
    assert torch.equal(outputs.enc_topk_indices, reference["enc_topk_index"])  # (up to near-ties: `run_model`)
    torch.testing.assert_close(outputs.init_reference_points, reference["dec_references"][0], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(outputs.intermediate_reference_points.transpose(0, 1), reference["dec_references"][1:],
                               rtol=0, atol=TOLERANCE)


def test_every_decoder_layer_matches(case):
    _, reference, _, _, logits, boxes, _ = case
    for layer, (layer_logits, layer_boxes) in enumerate(zip(logits, boxes)):
        torch.testing.assert_close(layer_logits, reference["dec_logits"][layer], rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(layer_boxes, reference["dec_coords"][layer], rtol=0, atol=TOLERANCE)


def test_final_detections_match(case, converted):
    info, reference, _, _, _, _, detection = case
    sizes = [image["meta"]["ori_shape"] for image in info["images"]]
    results = converted.processor.post_process_object_detection(
        detection, threshold=0.0, target_sizes=sizes, top_k=info["max_per_img"])
    for b, (result, (height, width)) in enumerate(zip(results, sizes)):
        ref_scores, ref_labels, ref_boxes = (reference[f"det_{name}"][b] for name in ("scores", "labels", "bboxes"))
        torch.testing.assert_close(result["scores"], ref_scores, rtol=0, atol=TOLERANCE)
        assert converted.processor.clip_boxes  # as mmdetection, the boxes are clipped to the image
        assert float(result["boxes"][:, 2].max()) <= width and float(result["boxes"][:, 3].max()) <= height
        iou = box_iou(ref_boxes.double(), result["boxes"].double())
        partner = ((ref_labels[:, None] == result["labels"][None]) & (iou >= 0.999)
                   & ((ref_scores[:, None] - result["scores"][None]).abs() <= TOLERANCE))
        boundary = float(ref_scores[-1]) + TOLERANCE  # ties with the last kept score may trade places at the cut
        assert bool((partner.any(1) | (ref_scores <= boundary)).all())
        assert bool((partner.any(0) | (result["scores"] <= boundary)).all())
