"""DOTA mAP: hand-built cases with known AP, and random cases against a devkit-style reference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch

from sl_detr_hf.evaluation import evaluate_dota, voc_ap, write_task1_submission
from sl_detr_hf.rotated_boxes import rbox_to_poly


# ---------------------------------------------------------------------------------------------------
# Reference: a line-by-line transcription of the devkit's voc_eval loop (one detection at a time),
# with IoU from shapely polygons.
# ---------------------------------------------------------------------------------------------------
def _reference(dets, gts, thr=0.5, use_07=True, ignore_difficult=True):
    def poly(box):
        return shapely.Polygon(rbox_to_poly(torch.as_tensor(box, dtype=torch.float64)).view(4, 2).numpy())

    classes = sorted({int(c) for g in gts for c in g["labels"]})
    aps = {}
    for c in classes:
        recs, npos = {}, 0
        for g in gts:
            idx = [j for j, lab in enumerate(g["labels"]) if lab == c]
            diff = [bool(g["difficult"][j]) and ignore_difficult for j in idx]
            recs[g["image_id"]] = {"boxes": [g["boxes"][j] for j in idx], "difficult": diff, "det": [False] * len(idx)}
            npos += sum(not d for d in diff)
        flat = [(d["image_id"], float(s), b) for d in dets for b, s, lab in zip(d["boxes"], d["scores"], d["labels"])
                if lab == c]
        flat.sort(key=lambda t: -t[1])  # Python's sort is stable, like the implementation under test
        tp, fp = np.zeros(len(flat)), np.zeros(len(flat))
        for k, (image_id, _, box) in enumerate(flat):
            rec = recs.get(image_id, {"boxes": [], "difficult": [], "det": []})
            ovmax, jmax = -np.inf, -1
            for j, g in enumerate(rec["boxes"]):
                a, b = poly(box), poly(g)
                inter = a.intersection(b).area
                iou = inter / (a.area + b.area - inter)
                if iou > ovmax:
                    ovmax, jmax = iou, j
            if ovmax > thr:
                if not rec["difficult"][jmax]:
                    if not rec["det"][jmax]:
                        tp[k], rec["det"][jmax] = 1, True
                    else:
                        fp[k] = 1
            else:
                fp[k] = 1
        if npos == 0:
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec_curve, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07:
            ap = 0.0
            for t in np.arange(0.0, 1.1, 0.1):
                ap += (np.max(prec[rec_curve >= t]) if np.sum(rec_curve >= t) else 0) / 11
        else:
            mrec = np.concatenate(([0.0], rec_curve, [1.0]))
            mpre = np.concatenate(([0.0], prec, [0.0]))
            for i in range(mpre.size - 1, 0, -1):
                mpre[i - 1] = max(mpre[i - 1], mpre[i])
            i = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])
        aps[c] = float(ap)
    return aps


BOX_A = [100.0, 100.0, 60.0, 20.0, 0.3]
BOX_B = [300.0, 200.0, 40.0, 40.0, -0.7]
BOX_C = [500.0, 80.0, 90.0, 30.0, 1.2]


def _gt(boxes, labels, difficult=None, image_id=0):
    return {"image_id": image_id, "boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
            "difficult": torch.tensor(difficult if difficult is not None else [0] * len(labels))}


def _det(boxes, scores, labels, image_id=0):
    return {"image_id": image_id, "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 5),
            "scores": np.asarray(scores), "labels": np.asarray(labels)}


def test_perfect_detections():
    gts = [_gt([BOX_A, BOX_B], [0, 1]), _gt([BOX_C], [0], image_id=1)]
    dets = [_det([BOX_A, BOX_B], [0.9, 0.8], [0, 1]), _det([BOX_C], [0.7], [0], image_id=1)]
    res = evaluate_dota(dets, gts)
    assert res["AP"] == {0: pytest.approx(1.0), 1: pytest.approx(1.0)}
    assert res["mAP"] == pytest.approx(1.0) and res["recall"][0] == 1.0 and res["precision"][1] == 1.0


def test_duplicate_is_false_positive():
    # Ranking: TP, FP (duplicate), recall 1 reached at precision 1 -> AP 1 (VOC07 takes the max precision).
    res = evaluate_dota([_det([BOX_A, BOX_A], [0.9, 0.8], [0, 0])], [_gt([BOX_A], [0])])
    assert res["AP"][0] == pytest.approx(1.0) and res["precision"][0] == 0.5
    # Duplicate ranked first at a wrong place: FP then TP -> precision 0.5 at recall 1.
    shifted = [BOX_A[0] + 200, *BOX_A[1:]]
    res = evaluate_dota([_det([shifted, BOX_A], [0.9, 0.8], [0, 0])], [_gt([BOX_A], [0])])
    assert res["AP"][0] == pytest.approx(0.5)


def test_miss_and_wrong_class():
    gts = [_gt([BOX_A, BOX_B], [0, 0])]
    res = evaluate_dota([_det([BOX_A, BOX_B], [0.9, 0.8], [0, 1])], gts, num_classes=3)
    # Class 0: one of two found at precision 1 -> recall points 0..0.5 (6 of 11) -> 6/11.
    assert res["AP"][0] == pytest.approx(6 / 11)
    assert math.isnan(res["AP"][1]) and math.isnan(res["AP"][2])  # no ground truth: excluded
    assert res["mAP"] == pytest.approx(6 / 11) and res["num_dets"][1] == 1


def test_difficult_match_is_neither_tp_nor_fp():
    gts = [_gt([BOX_A, BOX_B], [0, 0], difficult=[0, 1])]
    dets = [_det([BOX_B, BOX_A], [0.9, 0.8], [0, 0])]
    res = evaluate_dota(dets, gts)
    assert res["AP"][0] == pytest.approx(1.0) and res["num_gts"][0] == 1 and res["precision"][0] == 1.0
    counted = evaluate_dota(dets, gts, ignore_difficult=False)
    assert counted["AP"][0] == pytest.approx(1.0) and counted["num_gts"][0] == 2
    # A difficult-only class has no AP and does not enter the mean.
    only = evaluate_dota(dets, [_gt([BOX_B], [0], difficult=[1])])
    assert math.isnan(only["mAP"])


def test_iou_threshold_is_strict():
    # Same centre and angle, half the width: IoU exactly 0.5 -> not a match at 0.5.
    half = [BOX_A[0], BOX_A[1], BOX_A[2] / 2, BOX_A[3], BOX_A[4]]
    res = evaluate_dota([_det([half], [0.9], [0])], [_gt([BOX_A], [0])])
    assert res["AP"][0] == 0.0
    looser = evaluate_dota([_det([half], [0.9], [0])], [_gt([BOX_A], [0])], iou_threshold=0.49)
    assert looser["AP"][0] == pytest.approx(1.0)


def test_voc07_vs_area():
    # Ranking TP, FP, TP over 2 GT: precision 1, 0.5, 2/3 at recall 0.5, 0.5, 1.
    gts = [_gt([BOX_A, BOX_B], [0, 0])]
    dets = [_det([BOX_A, BOX_C, BOX_B], [0.9, 0.8, 0.7], [0, 0, 0])]
    assert evaluate_dota(dets, gts)["AP"][0] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert evaluate_dota(dets, gts, use_07_metric=False)["AP"][0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]), False) == pytest.approx(5 / 6)


def test_matched_gt_blocks_second_best():
    # Devkit rule: a detection takes its highest-IoU GT; if that GT is taken it is FP even when another
    # GT overlaps it above the threshold.
    g1 = [100.0, 100.0, 60.0, 20.0, 0.0]
    g2 = [106.0, 100.0, 60.0, 20.0, 0.0]
    d2 = [102.0, 100.0, 60.0, 20.0, 0.0]  # closer to g1 (IoU 0.94) than to g2 (0.88)
    res = evaluate_dota([_det([g1, d2], [0.9, 0.8], [0, 0])], [_gt([g1, g2], [0, 0])])
    assert res["recall"][0] == 0.5
    assert res["precision"][0] == 0.5 and res["AP"][0] == pytest.approx(6 / 11)


@pytest.mark.parametrize("use_07", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_reference(seed, use_07):
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for image_id in range(6):
        n = int(rng.integers(0, 8))
        boxes = np.column_stack((rng.uniform(0, 400, (n, 2)), rng.uniform(10, 80, (n, 2)),
                                 rng.uniform(-math.pi / 2, math.pi / 2, n)))
        labels, difficult = rng.integers(0, 3, n), rng.random(n) < 0.2
        gts.append({"image_id": image_id, "boxes": boxes, "labels": labels, "difficult": difficult})
        # Detections: jittered copies (some duplicated), random boxes, random labels.
        keep = rng.random(n) < 0.8
        jit = boxes[keep] + rng.normal(0, [3, 3, 4, 4, 0.08], (int(keep.sum()), 5))
        jit[:, 2:4] = np.abs(jit[:, 2:4])
        extra = np.column_stack((rng.uniform(0, 400, (4, 2)), rng.uniform(10, 80, (4, 2)),
                                 rng.uniform(-1.5, 1.5, 4)))
        dup = jit[: int(rng.integers(0, len(jit) + 1))] + 1.0
        d_boxes = np.concatenate((jit, extra, dup))
        d_labels = np.concatenate((labels[keep], rng.integers(0, 3, 4), labels[keep][: len(dup)]))
        dets.append({"image_id": image_id, "boxes": d_boxes, "scores": rng.random(len(d_boxes)),
                     "labels": d_labels})
    rng.shuffle(dets)
    for ignore in (True, False):
        ref = _reference(dets, gts, use_07=use_07, ignore_difficult=ignore)
        res = evaluate_dota(dets, gts, use_07_metric=use_07, ignore_difficult=ignore)
        assert {c: res["AP"][c] for c in ref} == pytest.approx(ref, abs=1e-9)
        assert res["mAP"] == pytest.approx(np.mean(list(ref.values())), abs=1e-9)


def test_inputs_and_errors():
    gts = [_gt([BOX_A], [0])]
    poly = rbox_to_poly(torch.tensor([BOX_A]))
    from_polygons = evaluate_dota([{"image_id": 0, "polygons": poly, "scores": [1.0], "labels": [0]}], gts)
    assert from_polygons["mAP"] == pytest.approx(1.0)
    rb = {"image_id": torch.tensor([0]), "rboxes": torch.tensor([BOX_A]), "boxes": torch.zeros(1, 4),
          "scores": torch.tensor([1.0]), "labels": torch.tensor([0])}
    assert evaluate_dota([rb], gts, class_names=["ship"])["AP_by_name"] == {"ship": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="rotated boxes"):
        evaluate_dota([{"image_id": 0, "boxes": torch.zeros(1, 4), "scores": [1.0], "labels": [0]}], gts)
    with pytest.raises(ValueError, match="duplicate image_id"):
        evaluate_dota([], gts + gts)
    with pytest.raises(ValueError, match=r"\['scores'\] has 2 entries for 1 boxes"):
        evaluate_dota([_det([BOX_A], [0.1, 0.2], [0])], gts)
    with pytest.raises(ValueError, match="num_classes"):
        evaluate_dota([], gts, num_classes=0)


def test_write_task1_submission(tmp_path):
    dets = [_det([BOX_A, BOX_B], [0.9, 0.5], [0, 1], image_id="P0001"), _det([BOX_C], [0.25], [0], image_id="P0002")]
    paths = write_task1_submission(dets, tmp_path / "sub", ["plane", "ship", "harbor"])
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["Task1_plane.txt", "Task1_ship.txt", "Task1_harbor.txt"]
    lines = open(paths[0]).read().splitlines()
    assert len(lines) == 2 and open(paths[2]).read() == ""
    first = lines[0].split()
    assert first[0] == "P0001" and float(first[1]) == pytest.approx(0.9)
    expected = rbox_to_poly(torch.tensor(BOX_A, dtype=torch.float64)).tolist()
    assert [float(v) for v in first[2:]] == pytest.approx(expected, abs=0.006)
    with pytest.raises(ValueError, match="no class name"):
        write_task1_submission([_det([BOX_A], [0.9], [5])], tmp_path / "bad", ["plane"])


def test_task1_file_names_are_safe_and_never_shared(tmp_path):
    """Slashes, spaces, unicode, '%', '~', case twins, repeats and very long names: one plain file per class id."""
    import re
    from urllib.parse import unquote

    from sl_detr_hf.evaluation.dota_map import task1_file_names

    names = ["plane", "small car", "a/b", "../up", "飞机", "Car", "car", "CAR", "%41", "A", "x~1", "plane",
             "large-vehicle", "v" * 300, "é" * 150]
    files = task1_file_names(names)
    assert files[:11] == ["Task1_plane.txt", "Task1_small%20car.txt", "Task1_a%2Fb.txt", "Task1_..%2Fup.txt",
                          "Task1_%E9%A3%9E%E6%9C%BA.txt", "Task1_Car.txt", "Task1_car~6.txt", "Task1_CAR~7.txt",
                          "Task1_%2541.txt", "Task1_A.txt", "Task1_x%7E1.txt"]
    assert files[11:13] == ["Task1_plane~11.txt", "Task1_large-vehicle.txt"]
    assert files[13] == f"Task1_{'v' * 200}~13.txt"
    assert re.fullmatch(r"Task1_(%C3%A9)+~14\.txt", files[14]) and len(files[14]) <= 255
    assert all(re.fullmatch(r"Task1_[A-Za-z0-9._%~-]+\.txt", f) and len(f) <= 255 for f in files)
    assert len({f.lower() for f in files}) == len(names)  # distinct on case-insensitive file systems too
    assert [unquote(f[6:-4]) for f in files[:6]] == names[:6]  # reversible where no suffix was needed

    dets = [_det([BOX_A] * len(names), [0.5] * len(names), list(range(len(names))), image_id="P1")]
    paths = write_task1_submission(dets, tmp_path / "sub", names)
    assert [Path(p).name for p in paths] == files
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(files)  # all in the folder, none above
    assert all(open(p).read().startswith("P1 0.500000 ") and len(open(p).read().splitlines()) == 1 for p in paths)


def test_perfect_single_image_is_exactly_one():
    """AP never exceeds 1 (eleven additions of 1/11 gave 1.0000000000000002)."""
    gt = [{"image_id": 0, "boxes": [[50.0, 50.0, 20.0, 10.0, 0.3]], "labels": [0]}]
    det = [{"image_id": 0, "rboxes": [[50.0, 50.0, 20.0, 10.0, 0.3]], "scores": [0.9], "labels": [0]}]
    assert evaluate_dota(det, gt)["mAP"] == 1.0
    assert voc_ap(np.array([1.0]), np.array([1.0])) == 1.0


def test_non_finite_scores_bad_thresholds_and_mixed_ids(caplog):
    gt = [{"image_id": 7, "boxes": [[50.0, 50.0, 20.0, 10.0, 0.3]], "labels": [0]}]
    det = {"rboxes": [[50.0, 50.0, 20.0, 10.0, 0.3]], "labels": [0]}
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"detections\[0\] \(image_id 7\) has NaN or inf scores"):
            evaluate_dota([{"image_id": 7, **det, "scores": [bad]}], gt)
    for threshold in (1.5, -0.1):
        with pytest.raises(ValueError, match="iou_threshold"):
            evaluate_dota([{"image_id": 7, **det, "scores": [0.9]}], gt, iou_threshold=threshold)
    # "7" and 7 name the same image (they silently matched nothing: mAP 0)
    assert evaluate_dota([{"image_id": "7", **det, "scores": [0.9]}], gt)["mAP"] == 1.0
    with pytest.raises(ValueError, match="same image twice"):
        evaluate_dota([{"image_id": "7", **det, "scores": [0.9]}, {"image_id": 7, **det, "scores": [0.9]}], gt)
    # detections of unknown images: one warning with the count and an example
    import logging

    with caplog.at_level(logging.WARNING, logger="sl_detr_hf.evaluation.dota_map"):
        res = evaluate_dota([{"image_id": "P7.png", **det, "scores": [0.9]}, {"image_id": "P8.png", **det,
                                                                               "scores": [0.8]}],
                            [{**gt[0], "image_id": "P7"}])
    assert res["mAP"] == 0.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "2 of 2 detection entries" in warnings[0] and "'P7.png'" in warnings[0]
