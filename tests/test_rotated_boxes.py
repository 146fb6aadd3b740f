"""Rotated-box toolkit against independent references (shapely, numpy float64, torchvision)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import shapely
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from sl_detr_hf.rotated_boxes import (
    aligned_iou_rotated,
    batched_nms_rotated,
    box_iou_rotated,
    denormalize_rboxes,
    gwd,
    hbox_to_rbox,
    kld,
    nms_rotated,
    normalize_rboxes,
    poly_to_rbox,
    rbox_to_gaussian,
    rbox_to_hbox,
    rbox_to_poly,
    rboxes_from_torchvision,
    rboxes_to_torchvision,
    regularize_rboxes,
)


def random_boxes(rng: np.random.Generator, n: int, lo: float = 1.0, hi: float = 300.0) -> np.ndarray:
    """Boxes with log-uniform sides in [lo, hi], any angle, centres in a 500 px square."""
    return np.stack([
        rng.uniform(0, 500, n), rng.uniform(0, 500, n),
        np.exp(rng.uniform(np.log(lo), np.log(hi), n)), np.exp(rng.uniform(np.log(lo), np.log(hi), n)),
        rng.uniform(-np.pi, np.pi, n),
    ], axis=1)


def stress_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs covering the hard cases: identical, nested, near-parallel, extreme aspect, tiny, huge,
    touching, disjoint, and generic overlapping ones (n // 9 each)."""
    rng = np.random.default_rng(seed)
    a, b = random_boxes(rng, n), random_boxes(rng, n)
    b[:, :2] = a[:, :2] + rng.normal(0, 1, (n, 2)) * (a[:, 2:3] + b[:, 2:3]) / 3
    k = n // 9
    s = [slice(i * k, (i + 1) * k) for i in range(9)]
    b[s[0]] = a[s[0]]  # identical
    b[s[1]] = a[s[1]]
    b[s[1], 2:4] *= rng.uniform(0.1, 0.9, (k, 1))  # nested, same angle and centre
    b[s[2], 4] = a[s[2], 4] + rng.normal(0, 1e-4, k) * rng.choice([1e-3, 1, 10], k)  # near-parallel
    b[s[2], 0:2] = a[s[2], 0:2] + rng.normal(0, 5, (k, 2))
    a[s[3], 2] = rng.uniform(100, 1000, k)  # extreme aspect ratio
    a[s[3], 3] = rng.uniform(0.05, 1, k)
    a[s[4], 2:4] = rng.uniform(0.01, 0.5, (k, 2))  # tiny
    a[s[5], 2:4] = rng.uniform(3000, 10000, (k, 2))  # huge
    b[s[6]] = a[s[6]]  # touching along the width direction
    b[s[6], 0] += a[s[6], 2] * np.cos(a[s[6], 4])
    b[s[6], 1] += a[s[6], 2] * np.sin(a[s[6], 4])
    b[s[7], 0:2] = a[s[7], 0:2] + 2000  # disjoint
    return torch.from_numpy(a), torch.from_numpy(b)


def shapely_iou(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    pa = shapely.polygons(rbox_to_poly(a.double()).reshape(-1, 4, 2).numpy())
    pb = shapely.polygons(rbox_to_poly(b.double()).reshape(-1, 4, 2).numpy())
    inter = shapely.area(shapely.intersection(pa, pb))
    union = shapely.area(pa) + shapely.area(pb) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-300), 0.0)


# ---------------------------------------------------------------------------------------------- IoU


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_aligned_iou_matches_shapely(dtype, tol):
    a, b = stress_pairs(4500)
    a, b = a.to(dtype), b.to(dtype)
    ours = aligned_iou_rotated(a, b).double().numpy()
    ref = shapely_iou(a, b)  # reference on the same (rounded) inputs
    err = np.abs(ours - ref)
    assert err.max() <= tol, f"max error {err.max():.3g} at pair {err.argmax()}"
    k = 4500 // 9
    np.testing.assert_allclose(ours[:k], 1.0, atol=tol)  # identical pairs
    assert ours[6 * k:8 * k].max() <= tol  # touching and disjoint pairs


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-5), (torch.float32, 1e-4)])
def test_pairwise_iou_matches_shapely(dtype, tol):
    rng = np.random.default_rng(1)
    a = torch.from_numpy(random_boxes(rng, 60, 5, 150)).to(dtype)
    b = torch.from_numpy(random_boxes(rng, 70, 5, 150)).to(dtype)
    a[:, :2] /= 3  # crowd the centres so that many pairs overlap
    b[:, :2] /= 3
    b[:10] = a[:10]
    ours = box_iou_rotated(a, b)
    assert ours.shape == (60, 70)
    ref = shapely_iou(a.repeat_interleave(70, 0), b.repeat(60, 1)).reshape(60, 70)
    assert np.abs(ours.double().numpy() - ref).max() <= tol
    assert (ref > 0).mean() > 0.2  # the case actually exercises overlaps


def test_iou_handles_empty_and_degenerate():
    empty = torch.zeros(0, 5)
    assert box_iou_rotated(empty, torch.ones(3, 5)).shape == (0, 3)
    assert aligned_iou_rotated(empty, empty).shape == (0,)
    flat = torch.tensor([[10.0, 10, 20, 0, 0.3], [10.0, 10, 0, 0, 0.0]])
    full = torch.tensor([[10.0, 10, 20, 10, 0.3], [10.0, 10, 0, 0, 0.0]])
    iou = aligned_iou_rotated(flat, full)
    assert torch.equal(iou, torch.zeros(2))


box_st = st.tuples(
    st.floats(-100, 100), st.floats(-100, 100), st.floats(1, 80), st.floats(1, 80), st.floats(-4, 4)
)


@settings(max_examples=150, deadline=None)
@given(box_st, box_st, st.floats(-50, 50), st.floats(-50, 50), st.floats(-math.pi, math.pi), st.floats(0.2, 5))
def test_iou_properties(a, b, tx, ty, rot, scale):
    a = torch.tensor([a], dtype=torch.float64)
    b = torch.tensor([b], dtype=torch.float64)
    iou = aligned_iou_rotated(a, b)
    assert 0 <= iou.item() <= 1
    assert torch.allclose(iou, aligned_iou_rotated(b, a), atol=1e-9)  # symmetry
    assert torch.allclose(aligned_iou_rotated(a, a), torch.ones(1, dtype=torch.float64), atol=1e-12)
    flipped = a + torch.tensor([0, 0, 0, 0, math.pi], dtype=torch.float64)  # theta + pi: same box
    assert torch.allclose(aligned_iou_rotated(flipped, b), iou, atol=1e-9)

    def move(box: torch.Tensor) -> torch.Tensor:  # joint rotation about the origin, scaling, translation
        c, s = math.cos(rot), math.sin(rot)
        x, y = box[:, 0], box[:, 1]
        return torch.stack([scale * (c * x - s * y) + tx, scale * (s * x + c * y) + ty,
                            scale * box[:, 2], scale * box[:, 3], box[:, 4] + rot], dim=1)

    assert torch.allclose(aligned_iou_rotated(move(a), move(b)), iou, atol=1e-7)


def test_aligned_iou_gradcheck_and_finite_gradients():
    rng = np.random.default_rng(3)
    a = torch.from_numpy(random_boxes(rng, 6, 20, 60))
    b = a.clone()
    b[:, :2] += torch.from_numpy(rng.normal(0, 8, (6, 2)))
    b[:, 4] += torch.from_numpy(rng.uniform(0.2, 1.2, 6))
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(aligned_iou_rotated, (a, b), eps=1e-6, atol=1e-5)
    # identical, degenerate (w or h = 0), nested, and disjoint pairs: finite gradients
    for dtype in (torch.float32, torch.float64):
        p = torch.tensor([[10.0, 10, 20, 10, 0.3], [10.0, 10, 20, 0, 0.3], [10.0, 10, 0, 10, 0.0],
                          [10.0, 10, 8, 4, 0.3], [500.0, 10, 8, 4, 0.3]], dtype=dtype, requires_grad=True)
        t = torch.tensor([[10.0, 10, 20, 10, 0.3], [10.0, 10, 20, 10, 0.3], [10.0, 10, 20, 10, 0.0],
                          [10.0, 10, 20, 10, 0.3], [10.0, 10, 20, 10, 0.3]], dtype=dtype)
        iou = aligned_iou_rotated(p, t)
        iou.sum().backward()
        assert torch.isfinite(p.grad).all()
        assert iou[0].item() == pytest.approx(1.0)
        assert iou[3].item() == pytest.approx(32 / 200)


# -------------------------------------------------------------------------------------- conversions


def test_rbox_to_poly_known_corners_and_orientation():
    box = torch.tensor([[10.0, 20.0, 4.0, 2.0, math.pi / 2]])
    poly = rbox_to_poly(box).view(4, 2)
    # theta = pi/2 turns +x to +y: the width runs down the screen.
    expected = torch.tensor([[11.0, 18.0], [11.0, 22.0], [9.0, 22.0], [9.0, 18.0]])
    assert torch.allclose(poly, expected, atol=1e-6)
    # clockwise on screen (y down) == positive shoelace area in (x, y) with y down
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * (x * y.roll(-1) - x.roll(-1) * y).sum()
    assert area.item() == pytest.approx(8.0)


def test_regularize_gives_le90_and_same_rectangle():
    rng = np.random.default_rng(4)
    raw = torch.from_numpy(random_boxes(rng, 500))
    raw[:, 4] = torch.from_numpy(rng.uniform(-10, 10, 500))
    reg = regularize_rboxes(raw)
    assert (reg[:, 2] >= reg[:, 3]).all()
    assert ((reg[:, 4] >= -math.pi / 2) & (reg[:, 4] < math.pi / 2)).all()
    assert np.abs(shapely_iou(raw, reg) - 1).max() < 1e-9
    swapped = regularize_rboxes(torch.tensor([[0.0, 0, 2, 5, 0.0]]))
    assert torch.allclose(swapped, torch.tensor([[0.0, 0, 5, 2, -math.pi / 2]]))


def test_poly_to_rbox_round_trip_and_corner_orders():
    rng = np.random.default_rng(5)
    boxes = regularize_rboxes(torch.from_numpy(random_boxes(rng, 1000, 2, 200)))
    boxes = boxes[(boxes[:, 2] - boxes[:, 3]) > 1e-3]  # squares have two valid le90 angles
    polys = rbox_to_poly(boxes)
    back = poly_to_rbox(polys)
    assert torch.allclose(back[:, :4], boxes[:, :4], atol=1e-9)
    dtheta = torch.remainder(back[:, 4] - boxes[:, 4] + math.pi / 2, math.pi) - math.pi / 2
    assert dtheta.abs().max() < 1e-9
    # any starting corner, either orientation (DOTA annotators are not consistent)
    pts = polys.view(-1, 4, 2)
    for variant in (pts.roll(1, 1), pts.flip(1), pts.flip(1).roll(2, 1)):
        assert np.abs(shapely_iou(poly_to_rbox(variant.reshape(-1, 8)), boxes) - 1).max() < 1e-9


def test_poly_to_rbox_is_minimum_area_rectangle_of_quadrilaterals():
    rng = np.random.default_rng(6)
    quads = torch.from_numpy(rng.uniform(0, 100, (300, 8)))
    ours = poly_to_rbox(quads)
    hulls = shapely.minimum_rotated_rectangle(shapely.multipoints(quads.view(-1, 4, 2).numpy()))
    np.testing.assert_allclose((ours[:, 2] * ours[:, 3]).numpy(), shapely.area(hulls), rtol=1e-7, atol=1e-7)
    inside = shapely.contains_properly(
        shapely.buffer(shapely.polygons(rbox_to_poly(ours).view(-1, 4, 2).numpy()), 1e-6),
        shapely.multipoints(quads.view(-1, 4, 2).numpy()),
    )
    assert inside.all()
    # all four points equal: a zero-size box at that point
    same = poly_to_rbox(torch.tensor([[3.0, 4.0] * 4]))
    assert torch.allclose(same, torch.tensor([[3.0, 4.0, 0.0, 0.0, 0.0]]))


def test_rbox_to_hbox_encloses_polygon():
    rng = np.random.default_rng(7)
    boxes = torch.from_numpy(random_boxes(rng, 200))
    hbox = rbox_to_hbox(boxes)
    pts = rbox_to_poly(boxes).view(-1, 4, 2)
    expected = torch.cat([pts.amin(1), pts.amax(1)], dim=1)
    assert torch.allclose(hbox, expected, atol=1e-9)


def test_normalize_round_trip_and_values():
    boxes = torch.tensor([[100.0, 50.0, 40.0, 20.0, 0.5]])
    norm = normalize_rboxes(boxes, (200, 400))  # (H, W)
    assert torch.allclose(norm, torch.tensor([[0.25, 0.25, 0.1, 0.1, 0.5]]))
    assert torch.allclose(denormalize_rboxes(norm, (200, 400)), boxes)
    per_box = normalize_rboxes(boxes.repeat(2, 1), torch.tensor([[200.0, 400.0], [100.0, 100.0]]))
    assert torch.allclose(per_box[1], torch.tensor([1.0, 0.5, 0.4, 0.2, 0.5]))


def test_torchvision_conversion_sign_by_rotating_with_torchvision():
    from torchvision.transforms.v2 import functional as F

    assert tuple(int(v) for v in torchvision.__version__.split(".")[:2]) >= (0, 23)
    box = torch.tensor([[60.0, 40.0, 30.0, 10.0, 0.0]])
    tv = rboxes_to_torchvision(box, canvas_size=(100, 120))
    angle = 30.0  # torchvision rotates the image counter-clockwise on screen by `angle` degrees
    rotated = F.rotate(tv, angle=angle, center=[60.0, 40.0])
    ours = rboxes_from_torchvision(rotated)
    # counter-clockwise on screen is negative theta in our convention
    expected = regularize_rboxes(torch.tensor([[60.0, 40.0, 30.0, 10.0, -math.radians(angle)]]))
    assert torch.allclose(ours, expected, atol=1e-4)
    # corners agree with torchvision's own polygon conversion
    poly_tv = F.convert_bounding_box_format(rotated, new_format=torchvision.tv_tensors.BoundingBoxFormat.XYXYXYXY)
    ours_pts = {tuple(np.round(p, 3)) for p in rbox_to_poly(ours).view(4, 2).numpy()}
    tv_pts = {tuple(np.round(p, 3)) for p in poly_tv.as_subclass(torch.Tensor).view(4, 2).numpy()}
    assert ours_pts == tv_pts
    # a non-trivial angle survives the round trip
    b = torch.tensor([[10.0, 20.0, 8.0, 3.0, 0.4]])
    assert torch.allclose(rboxes_from_torchvision(rboxes_to_torchvision(b, (50, 50))), b, atol=1e-6)


# ----------------------------------------------------------------------------------- Gaussians


def reference_kld(p: np.ndarray, t: np.ndarray) -> float:
    def gauss(b):
        c, s = math.cos(b[4]), math.sin(b[4])
        r = np.array([[c, -s], [s, c]])
        return b[:2], r @ np.diag([b[2] ** 2 / 4, b[3] ** 2 / 4]) @ r.T

    mp, sp = gauss(p)
    mt, st_ = gauss(t)
    inv = np.linalg.inv(sp)
    d = mp - mt
    return 0.5 * (d @ inv @ d + np.trace(inv @ st_) + math.log(np.linalg.det(sp) / np.linalg.det(st_))) - 1


def test_kld_matches_reference_and_is_zero_on_identical():
    rng = np.random.default_rng(8)
    p = random_boxes(rng, 200, 2, 100)
    t = random_boxes(rng, 200, 2, 100)
    t[:, :2] = p[:, :2] + rng.normal(0, 10, (200, 2))
    ours = kld(torch.from_numpy(p), torch.from_numpy(t)).numpy()
    ref = np.array([reference_kld(a, b) for a, b in zip(p, t)])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9)
    assert (ours > 0).all()
    same = torch.from_numpy(p)
    assert kld(same, same).abs().max() < 1e-12
    assert kld(same, same + torch.tensor([0, 0, 0, 0, math.pi], dtype=torch.float64)).abs().max() < 1e-9


def test_kld_gradcheck_and_degenerate_boxes():
    rng = np.random.default_rng(9)
    p = torch.from_numpy(random_boxes(rng, 5, 5, 50)).requires_grad_(True)
    t = torch.from_numpy(random_boxes(rng, 5, 5, 50)).requires_grad_(True)
    assert torch.autograd.gradcheck(kld, (p, t))
    deg = torch.tensor([[10.0, 10, 0, 5, 0.1], [10.0, 10, 6, 5, 0.1], [3.0, 3, 0, 0, 0]], requires_grad=True)
    tgt = torch.tensor([[10.0, 10, 6, 5, 0.1], [10.0, 10, 6, 5, 0.1], [3.0, 3, 0, 0, 0]])
    value = kld(deg, tgt)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(deg.grad).all()
    assert value[1].item() == pytest.approx(0.0, abs=1e-6)


def test_gaussian_and_gwd_match_reference():
    rng = np.random.default_rng(10)
    p, t = random_boxes(rng, 50, 2, 60), random_boxes(rng, 50, 2, 60)
    mu, sigma = rbox_to_gaussian(torch.from_numpy(p))
    ours = gwd(torch.from_numpy(p), torch.from_numpy(t)).numpy()
    _, sigma_t = rbox_to_gaussian(torch.from_numpy(t))
    for i in range(50):
        sp, s_t = sigma[i].numpy(), sigma_t[i].numpy()
        root = scipy.linalg.sqrtm(scipy.linalg.sqrtm(sp) @ s_t @ scipy.linalg.sqrtm(sp)).real
        ref = np.sum((p[i, :2] - t[i, :2]) ** 2) + np.trace(sp + s_t - 2 * root)
        assert ours[i] == pytest.approx(ref, rel=1e-6, abs=1e-6)
        assert np.allclose(np.linalg.eigvalsh(sp), sorted([p[i, 2] ** 2 / 4, p[i, 3] ** 2 / 4]))
    assert torch.allclose(mu, torch.from_numpy(p[:, :2]))
    same = torch.from_numpy(p)
    assert gwd(same, same).max() < 1e-5


# ----------------------------------------------------------------------------------------- NMS


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float, idxs=None) -> list[int]:
    order = scores.argsort(descending=True, stable=True).tolist()
    iou = shapely_iou(boxes.repeat_interleave(len(boxes), 0), boxes.repeat(len(boxes), 1)).reshape(len(boxes), -1)
    keep: list[int] = []
    for i in order:
        if all(iou[i, j] <= thr or (idxs is not None and idxs[i] != idxs[j]) for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_equals_brute_force_greedy(seed):
    rng = np.random.default_rng(seed)
    boxes = torch.from_numpy(random_boxes(rng, 120, 10, 80))
    boxes[:, :2] = torch.from_numpy(rng.uniform(0, 150, (120, 2)))  # dense: long suppression chains
    scores = torch.from_numpy(rng.uniform(0, 1, 120))
    idxs = torch.from_numpy(rng.integers(0, 3, 120))
    for thr in (0.1, 0.5):
        assert nms_rotated(boxes, scores, thr).tolist() == greedy_nms(boxes, scores, thr)
        assert batched_nms_rotated(boxes, scores, idxs, thr).tolist() == greedy_nms(boxes, scores, thr, idxs)


def test_nms_equals_torchvision_on_axis_aligned_boxes():
    rng = np.random.default_rng(11)
    boxes = torch.from_numpy(random_boxes(rng, 400, 10, 80)).float()
    boxes[:, :2] = torch.from_numpy(rng.uniform(0, 300, (400, 2))).float()
    boxes[:, 4] = 0
    scores = torch.rand(400, generator=torch.Generator().manual_seed(0))
    idxs = torch.randint(0, 4, (400,), generator=torch.Generator().manual_seed(1))
    xyxy = rbox_to_hbox(boxes)
    for thr in (0.3, 0.7):
        assert torch.equal(nms_rotated(boxes, scores, thr), torchvision.ops.nms(xyxy, scores, thr))
        assert torch.equal(batched_nms_rotated(boxes, scores, idxs, thr),
                           torchvision.ops.batched_nms(xyxy, scores, idxs, thr))
    assert nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5).shape == (0,)


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: box_iou_rotated(torch.zeros(3, 4), torch.zeros(2, 5)), "`boxes1` must have shape"),
        (lambda: aligned_iou_rotated(torch.zeros(3, 5), torch.zeros(2, 5)), "`boxes1` and `boxes2`"),
        (lambda: kld(torch.full((1, 5), float("nan")), torch.ones(1, 5)), "`pred` contains NaN"),
        (lambda: rbox_to_poly(torch.tensor([[0.0, 0, -1, 2, 0]])), "negative width or height"),
        (lambda: poly_to_rbox(torch.zeros(2, 6)), "`polys` must have shape"),
        (lambda: normalize_rboxes(torch.ones(1, 5), (0, 10)), "`size` must be positive"),
        (lambda: nms_rotated(torch.ones(3, 5), torch.ones(2), 0.5), "`scores` must be"),
        (lambda: nms_rotated(torch.ones(3, 5), torch.ones(3), 1.5), "`iou_threshold`"),
        (lambda: box_iou_rotated(torch.ones(3, 5, dtype=torch.int64), torch.ones(3, 5)), "floating point"),
        (lambda: kld(torch.ones(1, 5), torch.tensor([[0.0, 0, 1, float("inf"), 0]])), "`target` contains"),
    ],
)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_hbox_to_rbox_round_trips_through_rbox_to_hbox():
    hbox = torch.tensor([[10.0, 20.0, 50.0, 30.0], [0.0, 0.0, 4.0, 9.0]])
    rbox = hbox_to_rbox(hbox)
    assert torch.allclose(rbox[0], torch.tensor([30.0, 25.0, 40.0, 10.0, 0.0]))
    assert torch.allclose(rbox[1], torch.tensor([2.0, 4.5, 9.0, 4.0, -math.pi / 2]))  # tall: le90 swaps w, h
    assert torch.allclose(rbox_to_hbox(rbox), hbox, atol=1e-5)
    with pytest.raises(ValueError, match="x2 >= x1"):
        hbox_to_rbox(torch.tensor([[5.0, 0.0, 1.0, 1.0]]))
