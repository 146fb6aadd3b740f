"""mAP75, mAP50:95 and AP by size of ``evaluate_dota``: pycocotools on axis-aligned boxes, a line-by-line
transcription of ``COCOeval`` with shapely IoU on rotated boxes, and hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch

from sl_detr_hf.evaluation import evaluate_coco, evaluate_dota
from sl_detr_hf.evaluation.coco_rules import COCO_IOU_THRESHOLDS, SIZE_RANGES, coco_ap
from sl_detr_hf.rotated_boxes import rbox_to_poly

SIZES = ("small", "medium", "large")


# ---------------------------------------------------------------------------------------------------
# Reference: COCOeval.evaluateImg / accumulate transcribed loop by loop, IoU from shapely polygons,
# ``difficult`` objects as ignored ground truth, no cap on detections per image.
# ---------------------------------------------------------------------------------------------------
def _iou(a, b):
    pa, pb = (shapely.Polygon(rbox_to_poly(torch.as_tensor(x, dtype=torch.float64)).view(4, 2).numpy())
              for x in (a, b))
    inter = pa.intersection(pb).area
    return inter / (pa.area + pb.area - inter)


def _coco_reference(dets, gts, ignore_difficult=True):
    thrs, rec_thrs = np.linspace(0.5, 0.95, 10), np.linspace(0.0, 1.0, 101)
    classes = sorted({int(c) for g in gts for c in g["labels"]})
    gt_by_image = {g["image_id"]: g for g in gts}
    out = {}
    for c in classes:
        ap = np.full((len(SIZE_RANGES), len(thrs)), np.nan)
        for a, (lo, hi) in enumerate(SIZE_RANGES.values()):
            scores, dtm_all, dtig_all, npig = [], [], [], 0
            for image_id in [d["image_id"] for d in dets] + [g["image_id"] for g in gts]:
                if image_id in [x for x, _ in scores]:
                    continue
                g = gt_by_image.get(image_id, {"boxes": [], "labels": [], "difficult": []})
                d = next((x for x in dets if x["image_id"] == image_id), {"boxes": [], "scores": [], "labels": []})
                gt = [(box, bool(diff) and ignore_difficult) for box, lab, diff in
                      zip(g["boxes"], g["labels"], g["difficult"]) if lab == c]
                gt_ig = [int(diff or box[2] * box[3] < lo or box[2] * box[3] > hi) for box, diff in gt]
                order = np.argsort(gt_ig, kind="mergesort")
                gt, gt_ig = [gt[i][0] for i in order], [gt_ig[i] for i in order]
                dt = [(box, s) for box, s, lab in zip(d["boxes"], d["scores"], d["labels"]) if lab == c]
                dt = [dt[i] for i in np.argsort([-s for _, s in dt], kind="mergesort")]
                ious = [[_iou(db, gb) for gb in gt] for db, _ in dt]
                gtm, dtm, dtig = np.zeros((10, len(gt))), np.zeros((10, len(dt))), np.zeros((10, len(dt)))
                for tind, t in enumerate(thrs):
                    for dind in range(len(dt)):
                        iou, m = min(t, 1 - 1e-10), -1
                        for gind in range(len(gt)):
                            if gtm[tind, gind] > 0:
                                continue
                            if m > -1 and gt_ig[m] == 0 and gt_ig[gind] == 1:
                                break
                            if ious[dind][gind] < iou:
                                continue
                            iou, m = ious[dind][gind], gind
                        if m == -1:
                            continue
                        dtig[tind, dind], dtm[tind, dind], gtm[tind, m] = gt_ig[m], 1, 1
                out_of_range = np.array([box[2] * box[3] < lo or box[2] * box[3] > hi for box, _ in dt])
                dtig = np.logical_or(dtig, np.logical_and(dtm == 0, out_of_range[None]))
                scores.append((image_id, [s for _, s in dt]))
                dtm_all.append(dtm)
                dtig_all.append(dtig)
                npig += sum(1 for x in gt_ig if x == 0)
            if npig == 0:
                continue
            flat = np.concatenate([s for _, s in scores])
            inds = np.argsort(-flat, kind="mergesort")
            dtm, dtig = np.concatenate(dtm_all, axis=1)[:, inds], np.concatenate(dtig_all, axis=1)[:, inds]
            tps, fps = np.logical_and(dtm, ~dtig), np.logical_and(dtm == 0, ~dtig)
            tp_sums, fp_sums = np.cumsum(tps, axis=1).astype(float), np.cumsum(fps, axis=1).astype(float)
            for t, (tp, fp) in enumerate(zip(tp_sums, fp_sums)):
                rc, pr = tp / npig, (tp / (fp + tp + np.spacing(1))).tolist()
                for i in range(len(tp) - 1, 0, -1):
                    if pr[i] > pr[i - 1]:
                        pr[i - 1] = pr[i]
                q = np.zeros(len(rec_thrs))
                for ri, pi in enumerate(np.searchsorted(rc, rec_thrs, side="left")):
                    if pi < len(pr):
                        q[ri] = pr[pi]
                ap[a, t] = q.mean()
        out[c] = ap
    return out


def _scene(seed, n_images=5, n_classes=3, rotated=True, difficult=True, max_dets=40):
    """Random ground truth of every size and detections: jittered copies (some twice), random boxes."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image_id in range(n_images):
        n = int(rng.integers(1, 9))
        side = np.exp(rng.uniform(np.log(8), np.log(200), (n, 2)))  # areas from 64 to 40,000 px
        theta = rng.uniform(-math.pi / 2, math.pi / 2, n) if rotated else np.zeros(n)
        boxes = np.column_stack((rng.uniform(0, 600, (n, 2)), side, theta))
        labels = rng.integers(0, n_classes, n)
        diff = rng.random(n) < (0.2 if difficult else 0.0)
        gts.append({"image_id": image_id, "boxes": boxes, "labels": labels, "difficult": diff})
        keep = rng.random(n) < 0.85
        jit = boxes[keep] * (1 + rng.normal(0, 0.06, (int(keep.sum()), 5)) * [0, 0, 1, 1, 0])
        jit[:, :2] += rng.normal(0, 1, (len(jit), 2)) * boxes[keep][:, 2:4] * 0.06
        if rotated:
            jit[:, 4] += rng.normal(0, 0.05, len(jit))
        dup = jit[: int(rng.integers(0, len(jit) + 1))] * [1, 1, 1.1, 0.95, 1]
        extra = np.column_stack((rng.uniform(0, 600, (3, 2)), np.exp(rng.uniform(np.log(8), np.log(200), (3, 2))),
                                 rng.uniform(-1.5, 1.5, 3) if rotated else np.zeros(3)))
        d_boxes = np.concatenate((jit, dup, extra))[:max_dets]
        d_labels = np.concatenate((labels[keep], labels[keep][: len(dup)], rng.integers(0, n_classes, 3)))[:max_dets]
        dets.append({"image_id": image_id, "boxes": d_boxes, "scores": rng.random(len(d_boxes)), "labels": d_labels})
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_rotated_against_coco_transcription(seed):
    dets, gts = _scene(seed)
    for ignore in (True, False):
        ref = _coco_reference(dets, gts, ignore_difficult=ignore)
        res = evaluate_dota(dets, gts, ignore_difficult=ignore)
        for c, ap in ref.items():
            assert res["AP50_95"][c] == pytest.approx(np.mean(ap[0]), abs=1e-12, nan_ok=True)
            assert res["AP75"][c] == pytest.approx(ap[0, 5], abs=1e-12, nan_ok=True)
            for s, size in enumerate(SIZES, start=1):
                assert res["AP50_95_by_size"][size][c] == pytest.approx(np.mean(ap[s]), abs=1e-12, nan_ok=True)
        valid = [c for c in ref if not np.isnan(ref[c][0, 0])]
        assert res["mAP50_95"] == pytest.approx(np.mean([ref[c][0].mean() for c in valid]), abs=1e-12)
        assert list(res["mAP_by_iou"]) == [round(t, 2) for t in np.arange(0.5, 0.96, 0.05)]
        assert list(res["mAP_by_iou"].values()) == pytest.approx(np.mean([ref[c][0] for c in valid], axis=0),
                                                                 abs=1e-12)
        assert 0 < res["mAP50_95"] < res["mAP_by_iou"][0.5] <= 1  # the scene is neither empty nor perfect


def _as_xyxy(items):
    """theta = 0 rotated boxes -> the (x1, y1, x2, y2) boxes pycocotools gets."""
    out = []
    for item in items:
        b = np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 5)
        xyxy = np.column_stack((b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2,
                                b[:, 1] + b[:, 3] / 2))
        out.append({**{k: v for k, v in item.items() if k not in ("boxes", "difficult")}, "boxes": xyxy})
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_axis_aligned_against_pycocotools(seed):
    """theta = 0: the rotated IoU is the box IoU, so COCOeval (through ``evaluate_coco``) is the reference."""
    dets, gts = _scene(seed, n_images=8, rotated=False, difficult=False)
    ref = evaluate_coco(_as_xyxy(dets), _as_xyxy(gts))
    res = evaluate_dota(dets, gts)
    assert res["mAP50_95"] == pytest.approx(ref["AP"], abs=1e-12)
    assert res["mAP75"] == pytest.approx(ref["AP75"], abs=1e-12)
    assert res["mAP_by_iou"][0.5] == pytest.approx(ref["AP50"], abs=1e-12)
    for size in SIZES:
        expected = ref[f"AP_{size}"]
        assert res["mAP_by_size"][size] == pytest.approx(float("nan") if expected == -1 else expected, abs=1e-12,
                                                         nan_ok=True)
    assert {c: res["AP50_95"][c] for c in ref["AP_per_class"]} == pytest.approx(ref["AP_per_class"], abs=1e-12)
    assert 0 < res["mAP50_95"] < 1


# ---------------------------------------------------------------------------------------------------
# Hand-computed cases.
# ---------------------------------------------------------------------------------------------------
def _one(boxes, scores, labels, image_id=0):
    return {"image_id": image_id, "rboxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 5),
            "scores": np.asarray(scores, dtype=np.float64), "labels": np.asarray(labels)}


def _gt(boxes, labels, difficult=None, image_id=0):
    return {"image_id": image_id, "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 5),
            "labels": np.asarray(labels), "difficult": np.asarray(difficult if difficult else [0] * len(labels))}


def test_coco_ap_101_points():
    # TP, FP, TP over 2 objects: recall 0.5, 0.5, 1 at precision 1, 0.5, 2/3; the envelope is 1 up to recall
    # 0.5 (51 of the 101 points) then 2/3 (50 points).
    ap = coco_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-15)
    assert coco_ap(np.array([0.5, 1.0]), np.array([1.0, 2 / 3])) == ap  # the true positives' points suffice
    assert coco_ap(np.zeros(0), np.zeros(0)) == 0.0  # no detection: AP 0


def test_iou_sweep_of_one_object():
    # Same centre and angle, 0.87 of the width: IoU 0.87, a match at 0.50 ... 0.85 (8 of 10 thresholds).
    box = [200.0, 150.0, 100.0, 40.0, 0.4]
    res = evaluate_dota([_one([[200.0, 150.0, 87.0, 40.0, 0.4]], [0.9], [0])], [_gt([box], [0])])
    assert res["mAP"] == 1.0 and res["AP75"][0] == 1.0
    assert res["AP50_95"][0] == pytest.approx(0.8) and res["mAP50_95"] == pytest.approx(0.8)
    assert [res["mAP_by_iou"][t] for t in (0.85, 0.9)] == [1.0, 0.0]


def test_a_taken_object_falls_back_to_the_next_one():
    """COCO's greedy rule differs from the devkit's: the second detection takes the other object."""
    g1, g2 = [100.0, 100.0, 60.0, 20.0, 0.0], [106.0, 100.0, 60.0, 20.0, 0.0]
    d2 = [102.0, 100.0, 60.0, 20.0, 0.0]  # IoU 1160/1240 with g1, 1120/1280 = 0.875 with g2
    res = evaluate_dota([_one([g1, d2], [0.9, 0.8], [0, 0])], [_gt([g1, g2], [0, 0])])
    assert res["AP"][0] == pytest.approx(6 / 11)  # devkit: d2 claims the taken g1 -> false positive
    # COCO: d2 -> g2 up to threshold 0.85 (AP 1); at 0.90 and 0.95 recall stops at 0.5 (51 of 101 points).
    assert res["AP50_95"][0] == pytest.approx((8 + 2 * 51 / 101) / 10, abs=1e-15)
    assert res["mAP_by_iou"][0.9] == pytest.approx(51 / 101, abs=1e-15)


def test_sizes_ignore_detections_matched_to_other_sizes():
    small, large = [50.0, 50.0, 20.0, 20.0, 0.3], [300.0, 300.0, 120.0, 100.0, -0.2]  # areas 400, 12,000
    small_fp, large_fp = [500.0, 60.0, 25.0, 20.0, 0.0], [100.0, 400.0, 110.0, 110.0, 0.0]
    dets = [_one([small_fp, small, large, large_fp], [0.95, 0.9, 0.8, 0.5], [0, 0, 0, 0])]
    res = evaluate_dota(dets, [_gt([small, large], [0, 0])])
    # small: FP, TP, (matched to the large object: ignored), (unmatched and large: ignored) -> precision 0.5
    assert res["AP50_95_by_size"]["small"][0] == pytest.approx(0.5, abs=1e-15)
    # large: (small detections ignored), TP, FP -> recall 1 at precision 1
    assert res["AP50_95_by_size"]["large"][0] == 1.0
    assert math.isnan(res["AP50_95_by_size"]["medium"][0]) and math.isnan(res["mAP_by_size"]["medium"])
    assert res["num_gts_by_size"] == {"small": {0: 1}, "medium": {0: 0}, "large": {0: 1}}
    # all sizes: FP, TP, TP, FP -> precision 0, 1/2, 2/3, 1/2 at recall 0, 1/2, 1, 1: the envelope is 2/3
    assert res["AP50_95"][0] == pytest.approx(2 / 3, abs=1e-15)
    # the same through pycocotools on the axis-aligned twin (angles 0)
    flat = [dict(d, rboxes=np.asarray(d["rboxes"]) * [1, 1, 1, 1, 0]) for d in dets]
    gts = [_gt(np.asarray([small, large]) * [1, 1, 1, 1, 0], [0, 0])]
    ref = evaluate_coco(_as_xyxy([dict(flat[0], boxes=flat[0]["rboxes"])]), _as_xyxy(gts))
    twin = evaluate_dota(flat, gts)
    assert (twin["mAP_by_size"]["small"], twin["mAP_by_size"]["large"], twin["mAP50_95"]) == pytest.approx(
        (ref["AP_small"], ref["AP_large"], ref["AP"]), abs=1e-12)


def test_size_bounds_are_inclusive_as_in_coco():
    # An object of exactly 32 x 32 is small and medium (COCO's areaRng bounds are both inclusive).
    box = [100.0, 100.0, 32.0, 32.0, 0.0]
    res = evaluate_dota([_one([box], [0.9], [0])], [_gt([box], [0])])
    assert res["num_gts_by_size"]["small"][0] == res["num_gts_by_size"]["medium"][0] == 1
    assert res["mAP_by_size"]["small"] == res["mAP_by_size"]["medium"] == 1.0
    ref = evaluate_coco(_as_xyxy([_one([box], [0.9], [0]) | {"boxes": [box]}]), _as_xyxy([_gt([box], [0])]))
    assert ref["AP_small"] == pytest.approx(1.0) and ref["AP_medium"] == pytest.approx(1.0) and ref["AP_large"] == -1


def test_difficult_objects_are_ignored_ground_truth():
    a, b = [100.0, 100.0, 60.0, 20.0, 0.3], [300.0, 200.0, 40.0, 40.0, -0.7]
    far = [600.0, 600.0, 40.0, 40.0, 0.0]
    dets = [_one([b, far, a], [0.9, 0.8, 0.7], [0, 0, 0])]
    gts = [_gt([a, b], [0, 0], difficult=[0, 1])]
    # b is difficult: its detection is neither TP nor FP; then FP, TP over one counted object
    res = evaluate_dota(dets, gts)
    assert res["AP50_95"][0] == pytest.approx(0.5, abs=1e-15)
    # counted as ordinary: TP, FP, TP over two objects -> (51 + 50 * 2/3) / 101
    counted = evaluate_dota(dets, gts, ignore_difficult=False)
    assert counted["AP50_95"][0] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-15)


def test_dota_figures_unchanged_and_names():
    dets, gts = _scene(7)
    full = evaluate_dota(dets, gts, class_names=["a", "b", "c"])
    plain = evaluate_dota(dets, gts, class_names=["a", "b", "c"], coco_metrics=False)
    assert set(plain) == {"mAP", "AP", "recall", "precision", "num_gts", "num_dets", "mRecall", "AP_by_name"}
    assert {k: full[k] for k in plain} == plain  # the DOTA figures do not depend on the COCO-rule pass
    assert full["AP50_95_by_name"] == {"abc"[c]: v for c, v in full["AP50_95"].items()}
    assert full["AP75_by_name"] == {"abc"[c]: v for c, v in full["AP75"].items()}
    empty = evaluate_dota([], [_gt([[50.0, 50.0, 10.0, 10.0, 0.0]], [1], difficult=[1])])
    assert math.isnan(empty["mAP50_95"]) and math.isnan(empty["mAP75"]) and all(
        math.isnan(v) for v in empty["mAP_by_size"].values())


def test_thresholds_are_cocos():
    assert COCO_IOU_THRESHOLDS.tolist() == np.linspace(0.5, 0.95, 10).tolist()
    assert COCO_IOU_THRESHOLDS[5] == 0.75
