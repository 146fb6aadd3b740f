"""The angle range a new model takes from its training boxes (data/angle_range.py, `sl-detr train`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sl_detr_hf.commands.train import ModelArguments, build_model
from sl_detr_hf.data.angle_range import choose_angle_start


def _boxes(orientations_deg, w: float = 30.0, h: float = 10.0) -> np.ndarray:
    theta = np.radians(np.asarray(orientations_deg, dtype=np.float64))
    n = len(theta)
    return np.stack([np.full(n, 50.0), np.full(n, 50.0), np.full(n, w), np.full(n, h), theta], 1)


def test_upright_objects_move_the_boundary_to_the_horizontal():
    """Boxes whose long side is vertical (le90 theta -90, or a w < h box at 0: the same rectangle): le90's boundary
    holds all of them, the horizontal boundary (angle_start 0) none."""
    rng = np.random.default_rng(0)
    boxes = np.concatenate([_boxes(-90 + rng.uniform(-3, 3, 80)), _boxes(rng.uniform(-3, 3, 40), w=10, h=30)])
    choice = choose_angle_start(boxes)
    assert choice.angle_start == 0
    assert choice.near_default == 1.0 and choice.near_boundary == 0.0 and choice.oriented_boxes == 120


def test_axis_aligned_objects_keep_le90():
    """Half of the boxes lie exactly on le90's boundary (at its start, theta = -90) and none near it off it: nothing
    is at risk and le90 stays (the airport photos: le90 mAP50 0.550, the diagonal 0.413). With neighbours a few
    degrees off the vertical (2 % of the boxes), the boxes on it are at risk too and the diagonal wins."""
    choice = choose_angle_start(_boxes([0] * 60 + [90] * 40 + [-90] * 20))
    assert choice.angle_start == -90 and choice.near_default == 0.0 and choice.oriented_boxes == 120
    assert choose_angle_start(_boxes([0] * 60 + [90 - 1e-4] * 40 + [-90 + 1e-5] * 20)).angle_start == -90  # float slack
    tilted = choose_angle_start(_boxes([0] * 100 + [90] * 96 + [87] * 4))
    assert tilted.angle_start == -45
    assert tilted.near_default == pytest.approx(0.5) and tilted.near_boundary == 0.0
    assert "[-45, 135)" in tilted.describe() and "50.0%" in tilted.describe() and "at risk" in tilted.describe()
    alone = choose_angle_start(_boxes([0] * 99 + [90] * 100 + [87] * 1))  # 0.5 % off it: under min_neighbours
    assert alone.angle_start == -90 and alone.near_default == pytest.approx(0.005)


def test_le90_is_kept_when_nothing_is_clearly_better():
    rng = np.random.default_rng(1)
    assert choose_angle_start(_boxes(rng.uniform(-90, 90, 5000))).angle_start == -90  # uniform orientations
    assert choose_angle_start(_boxes([-90] * 49)).angle_start == -90  # too few boxes to decide
    assert choose_angle_start(_boxes([-90] * 500, w=10.5, h=10)).angle_start == -90  # near-squares: no orientation
    assert choose_angle_start(np.zeros((0, 5))).angle_start == -90
    assert choose_angle_start(_boxes([0] * 100), default=-45).angle_start == -45  # the default is already good


def test_the_boundary_goes_where_the_boxes_are_not():
    """Objects at 30 and 60 degrees: none near le90's vertical boundary, le90 kept. Objects at 80 and 100 (-80)
    degrees: le90's boundary lies between them; the chosen one is at least 70 degrees from both (the horizontal, or
    the start 10 degrees before it, at 80 / 90 and 70 / 90 degrees: equal on average)."""
    assert choose_angle_start(_boxes([30] * 50 + [60] * 50)).angle_start == -90
    choice = choose_angle_start(_boxes([80] * 50 + [-80] * 50))
    assert choice.angle_start in (-10, -5, 0) and choice.near_default == 1.0 and choice.near_boundary == 0.0


def _tiny(config: str = "", angle_range: str = "auto") -> ModelArguments:
    return ModelArguments(size="tiny", config=",".join(filter(None, ["d_model=32,num_denoising=10", config])),
                          num_queries=10, angle_range=angle_range)


def test_a_new_tiny_model_takes_the_chosen_range_when_asked():
    upright = _boxes(-90 + np.random.default_rng(2).uniform(-4, 4, 100))
    assert build_model(_tiny(), ["a"], seed=0, rboxes=upright).config.angle_start == 0
    assert build_model(_tiny(angle_range="model"), ["a"], seed=0, rboxes=upright).config.angle_start == -90
    assert build_model(_tiny("angle_start=-90"), ["a"], seed=0, rboxes=upright).config.angle_start == -90
    assert build_model(_tiny(), ["a"], seed=0, rboxes=None).config.angle_start == -90
    model = build_model(_tiny(), ["a"], seed=0, rboxes=_boxes([2] * 60 + [88] * 60))
    assert model.config.angle_start == -45 and model.config.angle_offset == pytest.approx(-0.25)
    assert math.isclose(model.config.angle_offset * 180, -45)
    with pytest.raises(SystemExit, match="--angle_range"):
        build_model(_tiny(angle_range="le90"), ["a"], seed=0, rboxes=upright)


def test_flips_and_quarter_turns_count_as_the_model_sees_them():
    """Objects all at 30 degrees: alone, le90's boundary (90) is 60 degrees away and kept; augmented by flips and
    quarter turns the model also sees them at 150, 120 and 60 degrees, and 120 / 60 lie 30 degrees from the vertical,
    150 15 degrees from the -45 boundary: still none within 10 degrees of le90's, so le90 stays. Objects at 3
    degrees: alone, le90's boundary is 87 degrees away; turned, half of them lie 3 degrees from it, on both sides
    (87 and 93), and the diagonal wins. Objects at 0 degrees: turned, half lie on it, where nothing is at risk."""
    assert choose_angle_start(_boxes([30] * 100), dihedral=True).angle_start == -90
    assert choose_angle_start(_boxes([3] * 100)).angle_start == -90
    turned = choose_angle_start(_boxes([3] * 100), dihedral=True)
    assert turned.angle_start == -45 and turned.near_default == pytest.approx(0.5) and turned.oriented_boxes == 100
    assert choose_angle_start(_boxes([0] * 100), dihedral=True).angle_start == -90
