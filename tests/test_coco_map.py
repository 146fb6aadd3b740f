"""COCO mAP in memory: known cases, and agreement with pycocotools' own file-based route."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from sl_detr_hf.evaluation import COCO_STAT_NAMES, evaluate_coco


def test_perfect_and_miss():
    gts = [{"image_id": 1, "boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0], [100.0, 100.0, 300.0, 260.0]]),
            "labels": torch.tensor([0, 1])}]
    perfect = [{"image_id": 1, "boxes": gts[0]["boxes"], "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([0, 1])}]
    res = evaluate_coco(perfect, gts, class_names=["car", "ship"])
    assert tuple(k for k in res if k != "AP_per_class") == COCO_STAT_NAMES
    assert res["AP"] == pytest.approx(1.0) and res["AP50"] == pytest.approx(1.0)
    assert res["AP_small"] == -1.0  # no small object
    assert res["AP_per_class"] == {"car": pytest.approx(1.0), "ship": pytest.approx(1.0)}
    # One of the two class-0 objects found, at precision 1: COCO's 101 recall points 0..0.5 -> 51 / 101.
    gts2 = [{"image_id": "a", "boxes": np.array([[10.0, 10, 60, 80], [200, 10, 260, 80]]), "labels": [0, 0]}]
    res = evaluate_coco([{"image_id": "a", "boxes": [[10.0, 10, 60, 80]], "scores": [0.5], "labels": [0]}], gts2)
    assert res["AP"] == pytest.approx(51 / 101)
    assert evaluate_coco([], gts2)["AP"] == 0.0


def test_against_pycocotools_files(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    gts, dets, images, gt_anns, dt_anns = [], [], [], [], []
    for image_id in range(1, 9):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, (n, 2))
        wh = rng.uniform(5, 200, (n, 2))
        labels = rng.integers(1, 4, n)
        crowd = (rng.random(n) < 0.1).astype(int)
        boxes = np.concatenate((xy, xy + wh), 1)
        gts.append({"image_id": image_id, "boxes": boxes, "labels": labels, "iscrowd": crowd})
        d = np.concatenate((boxes + rng.normal(0, 6, boxes.shape), rng.uniform(0, 400, (3, 4)).cumsum(1) / 2))
        d_labels = np.concatenate((labels, rng.integers(1, 4, 3)))
        scores = rng.random(len(d))
        dets.append({"image_id": image_id, "boxes": d, "scores": scores, "labels": d_labels})
        images.append({"id": image_id})
        for b, lab, c in zip(boxes, labels, crowd):
            w, h = b[2] - b[0], b[3] - b[1]
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": int(lab),
                            "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": int(c)})
        for b, lab, s in zip(d, d_labels, scores):
            dt_anns.append({"image_id": image_id, "category_id": int(lab), "bbox": [b[0], b[1], b[2] - b[0],
                                                                                   b[3] - b[1]], "score": s})
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": gt_anns,
                                                  "categories": [{"id": c} for c in (1, 2, 3)]}))
    (tmp_path / "dt.json").write_text(json.dumps(dt_anns))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "dt.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    res = evaluate_coco(dets, gts)
    assert [res[k] for k in COCO_STAT_NAMES] == pytest.approx(list(ev.stats), abs=1e-12)
    assert set(res["AP_per_class"]) == {1, 2, 3}


def test_errors():
    gts = [{"image_id": 1, "boxes": [[0.0, 0, 10, 10]], "labels": [0]}]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        evaluate_coco([{"image_id": 1, "boxes": [[0.0, 0, 10, 10, 0]], "scores": [1], "labels": [0]}], gts)
    with pytest.raises(ValueError, match="duplicate image_id"):
        evaluate_coco([], gts + gts)
    with pytest.raises(ValueError, match=r"\['labels'\] has 2 entries"):
        evaluate_coco([], [{"image_id": 1, "boxes": [[0.0, 0, 10, 10]], "labels": [0, 1]}])
