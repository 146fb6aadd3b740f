"""`benchmarks/box_errors.py`'s class confusion on hand-made boxes: each ground-truth box's outcome (the class of its
best-scoring overlapping detection, or none), the counts and the median long side of each cell."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sl_detr_hf.geometry_conversions import rbox_to_poly

ROOT = Path(__file__).resolve().parents[1]
PERSON, CAR, BICYCLE = 0, 1, 2


@pytest.fixture(scope="module")
def box_errors():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # box_errors imports its sibling real_data
    try:
        spec = importlib.util.spec_from_file_location("box_errors", ROOT / "benchmarks" / "box_errors.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def _truth(boxes: list[list[float]], labels: list[int]) -> dict:
    polygons = rbox_to_poly(torch.tensor(boxes).reshape(-1, 5)).numpy()
    return {"polygons": polygons, "labels": np.asarray(labels, np.int64)}


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {"rboxes": torch.tensor(boxes).reshape(-1, 5), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


def test_confusion_counts_and_long_sides(box_errors):
    small_car, bicycle, person = [100, 100, 40, 20, 0.0], [300, 300, 12, 30, 0.3], [500, 400, 10, 16, 0.0]
    big_car = [200, 200, 80, 40, 0.5]
    truths = [_truth([small_car, bicycle, person], [CAR, BICYCLE, PERSON]),
              _truth([big_car], [CAR]),
              _truth([], []),  # no objects: no rows
              _truth([[50, 50, 30, 14, 0.0]], [BICYCLE])]  # no detections at all: none
    detections = [
        _detections([small_car, small_car, bicycle, person, [100, 300, 40, 20, 0.0]],
                    [0.9, 0.5, 0.8, 0.01, 0.95],  # the car's best is the bicycle (0.9 > 0.5); the person is
                    [BICYCLE, CAR, BICYCLE, PERSON, CAR]),  # below min_score; the 0.95 car overlaps nothing
        _detections([[200, 200, 80, 40, 0.5]], [0.7], [CAR]),
        _detections([[10, 10, 5, 5, 0.0]], [0.9], [CAR]),
        _detections([], [], []),
    ]
    outcomes = box_errors.truth_outcomes(detections, truths, num_classes=3, min_score=0.05)
    np.testing.assert_allclose(outcomes, [[CAR, BICYCLE, 40, 20], [BICYCLE, BICYCLE, 30, 12], [PERSON, 3, 16, 10],
                                          [CAR, CAR, 80, 40], [BICYCLE, 3, 30, 14]], atol=1e-4)
    counts, long_sides = box_errors.class_confusion(outcomes, num_classes=3)
    np.testing.assert_array_equal(counts, [[0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 1]])
    np.testing.assert_allclose(long_sides, [[np.nan, np.nan, np.nan, 16], [np.nan, 80, 40, np.nan],
                                            [np.nan, np.nan, 30, 30]], atol=1e-4)


def test_median_long_side_of_a_cell(box_errors):
    outcomes = np.array([[CAR, BICYCLE, 30, 20], [CAR, BICYCLE, 40, 20], [CAR, BICYCLE, 90, 30], [CAR, CAR, 70, 30]])
    counts, long_sides = box_errors.class_confusion(outcomes, num_classes=3)
    assert counts[CAR].tolist() == [0, 1, 3, 0]
    assert long_sides[CAR, BICYCLE] == 40 and long_sides[CAR, CAR] == 70


def test_no_ground_truth(box_errors):
    outcomes = box_errors.truth_outcomes([_detections([], [], [])], [_truth([], [])], num_classes=2, min_score=0.05)
    assert outcomes.shape == (0, 4)
    counts, long_sides = box_errors.class_confusion(outcomes, num_classes=2)
    assert counts.sum() == 0 and np.isnan(long_sides).all()
