"""COCO-rule AP of rotated detections for ten IoU thresholds and four object sizes in one pass.

The rules are those of ``pycocotools`` ``COCOeval`` (``evaluateImg`` / ``accumulate``), with rotated IoU:

- **matching**, per image and class, detections in decreasing score (ties keep input order): a detection takes,
  among the ground truths not yet matched *at that threshold*, the one of largest IoU ``>= t`` that is not
  ignored, else the ignored one of largest IoU ``>= t`` (among equal IoUs the later ground truth, as COCO);
  matched to an ignored ground truth it is neither TP nor FP. Unlike the DOTA devkit, a detection whose best
  ground truth is taken falls back to the next one.
- **ignored ground truth**: ``difficult`` objects (with ``ignore_difficult``) and, for a size, the objects of
  other sizes. Each is matched at most once.
- **sizes** by the box area ``w * h`` in pixels of the evaluated image: ``small`` ``[0, 32^2]``, ``medium``
  ``[32^2, 96^2]``, ``large`` ``[96^2, inf)``, bounds inclusive as in COCO (an object of exactly ``32 x 32``
  counts as small and as medium). For a size, a detection matched to an object of another size is ignored
  (the object is ignored), and an unmatched detection is ignored when its own area is outside the range.
- **AP**: 101-point interpolation (COCO's ``recThrs``): the mean over recall points ``r = 0, 0.01, ..., 1`` of
  the precision envelope (the largest precision at recall ``>= r``), 0 past the last recall. Ultralytics
  integrates the same envelope by the trapezoid rule over those 101 points (slightly different numbers);
  the DOTA devkit's VOC07 rule is 11 points.
- detections are not capped per image (COCO keeps 100 per image and class); the ranking of a class is over
  all images (a detection of an image without ground truth is a false positive, as in the DOTA rule).

All 4 sizes x 10 thresholds (*lanes*) are matched together: a Python loop over the rank of a detection within
its image, each step vectorized over the lanes and over every image (a detection with no ground truth at
IoU ``>= 0.5`` matches nothing and is skipped). The curves are then read at the true positives only (the
precision envelope peaks there): the false positives before one are the detections of the lane's size range
ranked before it less the matched ones, from one prefix sum per size, so memory grows with the detections
times the 4 sizes, not times the 40 lanes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["COCO_IOU_THRESHOLDS", "COCO_RECALL_POINTS", "SIZE_RANGES", "coco_ap", "coco_rule_ap", "match_lanes"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""IoU thresholds of mAP50:95 (COCO's ``iouThrs``: 0.50, 0.55, ..., 0.95)."""
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
"""Recall points of the 101-point AP (COCO's ``recThrs``)."""
SIZE_RANGES: dict[str, tuple[float, float]] = {"all": (0.0, math.inf), "small": (0.0, 32.0**2),
                                               "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}
"""Object sizes by box area ``w * h`` in pixels, bounds inclusive (COCO's ``areaRng``)."""


def coco_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point AP of one ranking, as ``COCOeval.accumulate``.

    Args:
        recall, precision: ``(D,)`` curves over the ranking (recall non-decreasing), or only their values at
            the true positives (the same AP: the envelope peaks there).
    Returns:
        The mean over :data:`COCO_RECALL_POINTS` of the precision envelope (the largest precision at a recall
        ``>= r``), 0 past the last recall.
    """
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    return float(np.where(idx < recall.size, envelope[np.minimum(idx, recall.size - 1)], 0.0).mean())


def match_lanes(pair_det: np.ndarray, pair_gt: np.ndarray, pair_iou: np.ndarray, det_image: np.ndarray,
                det_score: np.ndarray, gt_ignored: np.ndarray,
                thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy COCO matching of every lane at once.

    Args:
        pair_det, pair_gt, pair_iou: ``(P,)`` same-image, same-class pairs (indices into the ``D`` detections
            and ``G`` ground truths) with IoU ``>= min(thresholds)``; other pairs never match.
        det_image, det_score: ``(D,)`` image index and score of each detection.
        gt_ignored: ``(L, G)`` ground truths ignored in each lane.
        thresholds: ``(L,)`` IoU threshold of each lane.
    Returns:
        The matches ``(lane (M,), det (M,), tp (M,))``: ``tp`` if the ground truth is counted in that lane,
        else the detection is ignored there. Detections absent in a lane are unmatched in it.
    """
    lanes, num_gts = gt_ignored.shape
    num_dets = det_image.shape[0]
    out_lane, out_det, out_tp = [], [], []
    if pair_det.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    # Candidate detections, ranked within their image by decreasing score (ties: input order).
    cand = np.unique(pair_det)
    order = np.lexsort((cand, -det_score[cand], det_image[cand]))
    cand = cand[order]
    image = det_image[cand]
    starts = np.r_[0, np.nonzero(image[1:] != image[:-1])[0] + 1]
    rank = np.arange(cand.size) - np.repeat(starts, np.diff(np.r_[starts, cand.size]))
    by_rank = np.argsort(rank, kind="stable")
    cand, rank = cand[by_rank], rank[by_rank]
    # Each candidate's ground truths, in ground-truth order, padded with the dummy column num_gts.
    row_of = np.full(num_dets, -1)
    row_of[cand] = np.arange(cand.size)
    pair_row = row_of[pair_det]
    sort = np.lexsort((pair_gt, pair_row))
    pair_row, gts, ious = pair_row[sort], pair_gt[sort], pair_iou[sort]
    first = np.searchsorted(pair_row, np.arange(cand.size))
    col = np.arange(pair_row.size) - first[pair_row]
    width = int(col.max()) + 1
    cand_gt = np.full((cand.size, width), num_gts)
    cand_iou = np.full((cand.size, width), -np.inf)
    cand_gt[pair_row, col], cand_iou[pair_row, col] = gts, ious
    matched = np.zeros((lanes, num_gts + 1), dtype=bool)
    matched[:, num_gts] = True  # the padding column is never available
    ign = np.concatenate((gt_ignored, np.ones((lanes, 1), dtype=bool)), axis=1)
    thr = np.minimum(thresholds, 1 - 1e-10)[:, None, None]
    bounds = np.r_[0, np.nonzero(rank[1:] != rank[:-1])[0] + 1, cand.size]
    for lo, hi in zip(bounds[:-1], bounds[1:]):  # one step per rank: one detection of every image at once
        g, iou = cand_gt[lo:hi], cand_iou[lo:hi]  # (n, C): n images, disjoint ground truths
        ok = ~matched[:, g] & (iou[None] >= thr)  # (L, n, C)
        is_ign = ign[:, g]
        reg, alt = ok & ~is_ign, ok & is_ign
        # The largest IoU, the last one among equals (COCO's ``>=`` replaces the running best).
        flip = iou[None, :, ::-1]
        best_reg = width - 1 - np.argmax(np.where(reg[..., ::-1], flip, -np.inf), axis=-1)
        best_alt = width - 1 - np.argmax(np.where(alt[..., ::-1], flip, -np.inf), axis=-1)
        has_reg, has_alt = reg.any(-1), alt.any(-1)
        pick = np.where(has_reg, best_reg, best_alt)  # (L, n)
        hit = has_reg | has_alt
        chosen = np.take_along_axis(np.broadcast_to(g, (lanes, *g.shape)), pick[..., None], axis=-1)[..., 0]
        lane_idx, row_idx = np.nonzero(hit)
        matched[lane_idx, chosen[lane_idx, row_idx]] = True
        out_lane.append(lane_idx)
        out_det.append(cand[lo:hi][row_idx])
        out_tp.append(has_reg[lane_idx, row_idx])
    return np.concatenate(out_lane), np.concatenate(out_det), np.concatenate(out_tp)


def coco_rule_ap(pair_det: np.ndarray, pair_gt: np.ndarray, pair_iou: np.ndarray, det_image: np.ndarray,
                 det_label: np.ndarray, det_score: np.ndarray, det_area: np.ndarray, gt_label: np.ndarray,
                 gt_area: np.ndarray, gt_difficult: np.ndarray, class_ids: list[int]) -> dict[str, Any]:
    """AP of every class, size and IoU threshold of :data:`COCO_IOU_THRESHOLDS` (module docstring for the rules).

    Args:
        pair_det, pair_gt, pair_iou: ``(P,)`` same-image, same-class pairs with IoU ``>= 0.5``.
        det_image, det_label, det_score, det_area: ``(D,)`` per detection (``det_area``: ``w * h``).
        gt_label, gt_area, gt_difficult: ``(G,)`` per ground truth (``gt_difficult``: ignored objects).
        class_ids: the classes to report.
    Returns:
        ``{"AP": {class: (S, T) array}, "num_gts": {class: (S,) int array}}`` over the sizes ``S`` of
        :data:`SIZE_RANGES` (in order) and the thresholds ``T``; AP is ``nan`` where a class has no counted
        ground truth of that size.
    """
    sizes, thresholds = list(SIZE_RANGES.values()), COCO_IOU_THRESHOLDS
    num_sizes, num_thr = len(sizes), len(thresholds)
    lo = np.array([s[0] for s in sizes])[:, None]
    hi = np.array([s[1] for s in sizes])[:, None]
    gt_out = (gt_area[None] < lo) | (gt_area[None] > hi)  # (S, G)
    det_out = (det_area[None] < lo) | (det_area[None] > hi)  # (S, D)
    gt_ign = np.repeat(gt_out | gt_difficult[None], num_thr, axis=0)  # lane = size * T + threshold
    lane, det, is_tp = match_lanes(pair_det, pair_gt, pair_iou, det_image, det_score, gt_ign,
                                   np.tile(thresholds, num_sizes))
    lanes = num_sizes * num_thr
    # Each class's ranking: decreasing score, ties in input order; ``rank``: a detection's place in it.
    order = np.lexsort((-det_score, det_label))
    sorted_labels = det_label[order]
    class_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(det_label.shape[0], dtype=np.int64)
    rank[order] = np.arange(order.size) - class_start
    # The matches sorted by class, lane and place.
    m_class, m_pos = det_label[det], rank[det]
    m_in = ~det_out[lane // num_thr, det]  # the detection's own area is in its lane's size range
    group = np.searchsorted(np.unique(det_label), m_class) * lanes + lane  # class, then lane
    by_place = np.argsort(group * (det_label.shape[0] + 1) + m_pos)  # then place; one int64 key sorts fastest
    m_class, m_lane, m_pos, m_tp, m_in = m_class[by_place], lane[by_place], m_pos[by_place], is_tp[by_place], \
        m_in[by_place]
    out: dict[str, Any] = {"AP": {}, "num_gts": {}}
    for c in class_ids:
        sel = order[np.searchsorted(sorted_labels, c, side="left"):np.searchsorted(sorted_labels, c, side="right")]
        # FP up to place p = detections of the lane's size range up to p - the matched ones among them; only
        # the true positives' places are needed (the precision envelope peaks there).
        in_range_cum = np.cumsum(~det_out[:, sel], axis=1)  # (S, Dc)
        npig = (~gt_ign[:, gt_label == c]).sum(axis=1)  # (L,) counted objects
        c0, c1 = np.searchsorted(m_class, c, side="left"), np.searchsorted(m_class, c, side="right")
        edges = c0 + np.searchsorted(m_lane[c0:c1], np.arange(lanes + 1))
        ap = np.full(lanes, np.nan)
        for j in np.nonzero(npig)[0]:
            a, b = edges[j], edges[j + 1]
            hit = m_tp[a:b]
            tp_sum = np.cumsum(hit)[hit].astype(np.float64)
            fp_sum = (in_range_cum[j // num_thr, m_pos[a:b]] - np.cumsum(m_in[a:b]))[hit].astype(np.float64)
            ap[j] = coco_ap(tp_sum / npig[j], tp_sum / np.maximum(tp_sum + fp_sum, 1.0))
        out["AP"][c] = ap.reshape(num_sizes, num_thr)
        out["num_gts"][c] = npig.reshape(num_sizes, num_thr)[:, 0]
    return out
