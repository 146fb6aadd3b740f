"""The summary and table of `sl-detr evaluate`: hand-computed figures of a three-object scene."""

from __future__ import annotations

import json
import math

import pytest

from sl_detr_hf.evaluation import dota_summary, evaluate_dota, format_dota_table

CAR = [100.0, 100.0, 60.0, 30.0, 0.2]  # 1,800 px: medium
PERSON = [300.0, 50.0, 12.0, 20.0, 0.0]  # 240 px: small
TRUCK = [500.0, 400.0, 150.0, 80.0, 0.5]  # 12,000 px: large, labelled car


@pytest.fixture()
def summary():
    gts = [{"image_id": 0, "boxes": [CAR, PERSON, TRUCK], "labels": [0, 1, 0]}]
    # car found; person 2 px off (IoU 18/22 = 0.82: a match up to 0.80); a 40 x 40 false car; the truck missed
    dets = [{"image_id": 0, "rboxes": [CAR, [300.0, 52.0, 12.0, 20.0, 0.0], [800.0, 50.0, 40.0, 40.0, 0.0]],
             "scores": [0.9, 0.8, 0.7], "labels": [0, 1, 0]}]
    return dota_summary(evaluate_dota(dets, gts, num_classes=3), ["car", "person", "bicycle"])


def test_summary_figures(summary):
    # car: TP, FP over 2 objects -> DOTA VOC07 6/11; COCO 101-point 51/101 at every threshold
    assert summary["AP"]["car"] == pytest.approx(6 / 11) and summary["AP75"]["car"] == pytest.approx(51 / 101)
    assert summary["AP50_95"] == pytest.approx({"car": 51 / 101, "person": 0.7, "bicycle": math.nan}, nan_ok=True)
    # medium: the car then the 40 x 40 false car -> 1; large: the truck missed, the rest of other sizes -> 0
    assert summary["AP50_95_by_size"]["medium"]["car"] == 1.0 and summary["AP50_95_by_size"]["large"]["car"] == 0.0
    assert summary["mAP_by_size"] == pytest.approx({"small": 0.7, "medium": 1.0, "large": 0.0})
    assert summary["mAP"] == pytest.approx((6 / 11 + 1) / 2)
    assert summary["mAP50_95"] == pytest.approx((51 / 101 + 0.7) / 2)
    assert summary["num_objects"] == {"car": 2, "person": 1, "bicycle": 0}
    assert summary["num_objects_by_size"]["large"] == {"car": 1, "person": 0, "bicycle": 0}
    assert list(summary["mAP_by_iou"]) == [f"{0.5 + 0.05 * i:.2f}" for i in range(10)]
    assert summary["mAP_by_iou"]["0.80"] == pytest.approx((51 / 101 + 1) / 2)
    assert summary["mAP_by_iou"]["0.85"] == pytest.approx((51 / 101 + 0) / 2)
    assert json.loads(json.dumps(summary))["AP"]["person"] == 1.0  # JSON-ready (NaN for undefined)


def test_table(summary):
    assert format_dota_table(summary).splitlines()[:6] == [
        "class    objects   AP50   AP75  AP50:95   small  medium   large",
        "car            2  0.545  0.505    0.505       -   1.000   0.000",
        "person         1  1.000  1.000    0.700   0.700       -       -",
        "bicycle        0      -      -        -       -       -       -",
        "all            3  0.773  0.752    0.602   0.700   1.000   0.000",
        "objects by size: small 1, medium 1, large 1",
    ]
    assert "VOC07" in format_dota_table(summary) and "101-point" in format_dota_table(summary)
