"""The angle range a model trained from scratch should use, chosen from its training boxes.

The model predicts a rotated box's angle through a sigmoid: `theta = (a + angle_start / 180) * pi`, `a` in (0, 1)
(`SlDetrConfig.angle_start`, docs/boxes.md). An orientation at the range's boundary sits where the sigmoid
saturates (`a -> 0` or `1`, where its gradient vanishes), and two boxes a degree apart across it have angles a
half-turn apart, which the L1 term and the matcher's cost read as far apart. le90 (`angle_start = -90`) puts the
boundary at the vertical: right for DOTA's arbitrary orientations, wrong for a drone's frames where most people and
bicycles stand upright in the image (HIT-UAV: 77 % of its people within 10 degrees of the vertical).

A box whose orientation lies *on* the boundary is at risk only when other boxes lie near it, off it: alone, it sits
at the range's start (`a -> 0`) and nothing pulls the angle head the other way; with neighbours a few degrees to
either side (which flips put on both sides) similar objects get angles a half-turn apart. Axis-aligned boxes are
the safe case: le90 puts every box with a vertical long side exactly at its start, and on the airport photos
(axis-aligned planes, none off the axes) le90 measured mAP50 0.550 on both cores where the diagonal range that
avoids the vertical measured 0.413 (BENCHMARKS.md, "One recipe"). HIT-UAV's upright people are the other case: most
stand exactly vertical, 6.8 % of its boxes lie within 10 degrees of the vertical off it, and le90 cost the people
their angles.

[`choose_angle_start`] weighs the training boxes near each candidate boundary (`angle_start` in `[-90, 0]` by
steps of `step`; a box's weight falls from 1 at the boundary to 0 at 45 degrees from it; boxes on the boundary,
within `exact` degrees, weigh 1 when at least `min_neighbours` of the boxes lie near it off it, else almost
nothing (a boundary with no box on it is preferred among equals); boxes
closer to square than `min_aspect` are left out: their orientation is not defined) and takes
the boundary with the least weight (among equals, the one farther from the boxes on average),
keeping le90 unless the share of boxes at risk (within `margin` degrees of the boundary, those on it by the same
rule) drops by `min_gain`.
Used by `sl-detr train` for a new model (BENCHMARKS.md "Angle range, dense encoder loss, stride 8 and a light stem
on HIT-UAV").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["AngleRangeChoice", "choose_angle_start", "dataset_rboxes"]

LE90 = -90


@dataclass(frozen=True)
class AngleRangeChoice:
    """`angle_start` (degrees) and the share of the oriented boxes near its boundary, and near the default's."""

    angle_start: int
    near_boundary: float
    near_default: float
    default: int
    oriented_boxes: int

    def describe(self) -> str:
        return (f"angle range [{self.angle_start}, {self.angle_start + 180}) degrees: {self.near_boundary:.1%} of the "
                f"{self.oriented_boxes} oriented training boxes are at risk near its boundary "
                f"(the default range's, [{self.default}, {self.default + 180}): {self.near_default:.1%})")


def choose_angle_start(rboxes: np.ndarray, default: int = LE90, dihedral: bool = False, margin: float = 10.0,
                       step: int = 5, min_aspect: float = 1.2, min_gain: float = 0.05,
                       min_boxes: int = 50, exact: float = 0.01, min_neighbours: float = 0.01) -> AngleRangeChoice:
    """The `angle_start` whose boundary the training boxes crowd least (module docstring).

    Args:
        rboxes: `(N, 5)` pixel rotated boxes `(cx, cy, w, h, theta)`, theta in radians (any convention).
        default: the model's own `angle_start` (le90 for the tiny model, RHINO's 0 for the paper's), kept unless
            another start is clearly better.
        dihedral: the training augmentation flips and turns by quarter turns (`RotatedDetectionAugment`'s
            default): the orientations the model sees are those of the boxes and their mirror images and quarter
            turns, `phi, -phi, phi + 90, 90 - phi`.
        margin: degrees either side of a boundary that count as near it.
        step: candidate starts `-90, -90 + step, ..., 0`.
        min_aspect: boxes with `max(w, h) / min(w, h)` below this are left out.
        min_gain: another start replaces `default` only when at least this share of the boxes fewer lie near it.
        min_boxes: with fewer oriented boxes, `default` is kept.
        exact: degrees from a boundary within which a box counts as on it (floating-point slack).
        min_neighbours: boxes on a boundary are at risk when at least this share of the boxes lies near it, off it.
    """
    boxes = np.asarray(rboxes, dtype=np.float64).reshape(-1, 5)
    w, h, theta = boxes[:, 2], boxes[:, 3], boxes[:, 4]
    long_side, short_side = np.maximum(w, h), np.minimum(w, h)
    oriented = long_side >= min_aspect * np.maximum(short_side, 1e-9)
    # orientation of the long side, in degrees [0, 180)
    orientation = np.degrees(np.where(w >= h, theta, theta + math.pi / 2)[oriented]) % 180
    if dihedral:
        orientation = np.concatenate([orientation, -orientation, orientation + 90, 90 - orientation]) % 180
    count = int(orientation.size)
    boxes_counted = int(oriented.sum())

    def distance(start: int) -> np.ndarray:
        gap = np.abs((orientation - start) % 180)
        return np.minimum(gap, 180 - gap)

    def on_at_risk(gap: np.ndarray) -> bool:  # boxes on the boundary are at risk when neighbours lie off it
        return bool(np.mean((gap <= margin) & (gap > exact)) >= min_neighbours)

    def near(start: int) -> float:  # the share at risk: within `margin` degrees (on it only with neighbours)
        if not count:
            return 0.0
        gap = distance(start)
        return float(np.mean((gap <= margin) & ((gap > exact) | on_at_risk(gap))))

    def crowding(start: int) -> float:  # a weight falling from 1 at the boundary to 0 at 45 degrees from it (on it:
        if not count:  # 1 with neighbours, else 0); among equals, the boundary farther from the boxes on average
            return 0.0
        gap = distance(start)
        weight = np.clip(1 - gap / 45, 0, None)
        if not on_at_risk(gap):  # safe on it; among otherwise equal boundaries, one with no box on it
            weight = np.where(gap > exact, weight, 1e-3)
        return float(np.mean(weight) - 1e-6 * np.mean(gap) / 90)

    starts = list(range(LE90, 1, step))
    scores = [crowding(start) for start in starts]
    best = int(np.argmin(scores))
    chosen = starts[best]
    if boxes_counted < min_boxes or near(default) - near(chosen) < min_gain:
        chosen = default
    return AngleRangeChoice(chosen, near(chosen), near(default), default, boxes_counted)


def dataset_rboxes(dataset) -> np.ndarray:
    """Every object's pixel rotated box `(N, 5)` of a detection `datasets.Dataset` with `objects.rbox` (the DOTA /
    YOLO-OBB loaders'), read from its Arrow table without decoding an image."""
    import pyarrow.compute as pc

    if len(dataset) == 0 or "rbox" not in dataset.features["objects"]:
        return np.zeros((0, 5))
    objects = dataset.data.column("objects").combine_chunks()
    boxes = pc.list_flatten(objects.field("rbox"))
    values = pc.list_flatten(boxes).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64).reshape(-1, 5)
