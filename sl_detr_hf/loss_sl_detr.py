"""SL-DETR criterion: the synchronized localization losses, the quality-aware classification loss and the
rotated Hungarian matcher (DESIGN.md section 4).

Boxes are normalized: ``(cx, cy, w, h, theta)`` (``box_type="rotated"``, theta in radians) or
``(cx, cy, w, h)`` (``box_type="horizontal"``). Geometry (KLD) is computed on pixel boxes (each image's
``(H, W)`` from ``targets[i]["size"]``); L1 uses ``theta / pi`` as the fifth coordinate. Every denominator is
clamped to at least ``EPS`` so that empty, single, identical and zero-size pairs give finite values and
gradients.

This module ships with ``trust_remote_code`` checkpoints: it imports only torch, scipy and the package's own
files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .configuration_sl_detr import SlDetrConfig
from .rotated_boxes import EPS, denormalize_rboxes, kld

__all__ = [
    "SlDetrHungarianMatcher",
    "SlDetrLoss",
    "generalized_iou",
    "kld_loss",
    "pairwise_kld",
    "quality_aware_bce",
    "sigmoid_focal_loss",
    "sync_giou_loss",
    "sync_kld_loss",
]

_INVALID_COST = 1e8
"""Replaces NaN / inf in a matching cost (far above any real cost, still exact in float32 sums)."""


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def _to_corners(boxes: Tensor) -> Tensor:
    """``(..., 4)`` ``(cx, cy, w, h)`` -> ``(..., 4)`` ``(x1, y1, x2, y2)``."""
    center, half = boxes[..., :2], boxes[..., 2:4] / 2
    return torch.cat((center - half, center + half), dim=-1)


def generalized_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of axis-aligned ``(cx, cy, w, h)`` boxes, broadcasting.

    Args:
        boxes1, boxes2: ``(..., 4)`` broadcastable (``(N, 1, 4)`` and ``(1, M, 4)`` give the pairwise matrix).
    Returns:
        ``(...)`` GIoU in ``[-1, 1]``; union and enclosing area are clamped to ``>= EPS``.
    """
    a, b = _to_corners(boxes1), _to_corners(boxes2)
    area_a = (a[..., 2:] - a[..., :2]).clamp_min(0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(-1)
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp_min(0).prod(-1)
    union = area_a + area_b - inter
    enclose = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp_min(0).prod(-1)
    return inter / union.clamp_min(EPS) - (enclose - union) / enclose.clamp_min(EPS)


def _l1_coords(boxes: Tensor) -> Tensor:
    """Coordinates the L1 loss compares: ``(cx, cy, w, h[, theta / pi])``."""
    if boxes.shape[-1] == 5:
        return torch.cat((boxes[..., :4], boxes[..., 4:] / math.pi), dim=-1)
    return boxes


def _kld_to_loss(d: Tensor, tau: float) -> Tensor:
    """``1 - 1 / (tau + ln(1 + d))``."""
    return 1 - 1 / (tau + torch.log1p(d)).clamp_min(EPS)


# --------------------------------------------------------------------------------------------------
# Localization losses (per pair, no reduction)
# --------------------------------------------------------------------------------------------------


def _giou_sync_factor(pred: Tensor, target: Tensor, giou: Tensor, gain: float, giou_floor: float,
                      t_min: float, t_max: float) -> Tensor:
    """``exp(gain * (clamp(2 s / (u + s), t_min, t_max) - 1))`` of DESIGN.md 4.1, ``(N,)``."""
    u = giou.clamp(giou_floor, 1)
    s = 1 - (pred[..., :4] - target[..., :4]).square().mean(-1)
    t = 2 * s / (u + s).clamp_min(EPS)
    return torch.exp(gain * (t.clamp(t_min, t_max) - 1))


def sync_giou_loss(pred: Tensor, target: Tensor, gain: float = 1.5, giou_floor: float = 0.001,
                   t_min: float = 0.0, t_max: float = 1.2) -> Tensor:
    """Synchronized GIoU loss (DESIGN.md 4.1): ``(1 - GIoU) * exp(gain * (clamp(t, t_min, t_max) - 1))``.

    ``t = 2 s / (u + s)`` with ``u = clamp(GIoU, giou_floor, 1)`` and ``s = 1 - mean_k (pred_k - target_k)^2``.

    Args:
        pred, target: ``(N, 4)`` normalized ``(cx, cy, w, h)``.
    Returns:
        ``(N,)`` per-pair losses.
    """
    giou = generalized_iou(pred, target)
    return (1 - giou) * _giou_sync_factor(pred, target, giou, gain, giou_floor, t_min, t_max)


def _pixel_kld(pred: Tensor, target: Tensor, image_size: Tensor) -> Tensor:
    """KL(N_target || N_pred) of normalized boxes ``(N, 5)`` mapped to pixels with ``image_size`` ``(N, 2)``."""
    return kld(denormalize_rboxes(pred, image_size), denormalize_rboxes(target, image_size))


def pairwise_kld(pred: Tensor, target: Tensor) -> Tensor:
    """``KL(N_target_j || N_pred_i)`` for every pair of pixel boxes, as one batched matrix product.

    The same divergence as :func:`rotated_boxes.kld` (sides clamped to ``>= EPS``), expanded as
    ``2 d + 2 = x^T A x - 2 x^T A mu_p + mu_p^T A mu_p + tr(A Sigma_t) + ln det(Sigma_p) - ln det(Sigma_t)`` with
    ``A = Sigma_p^-1`` and ``x = mu_t``: 7 features per box, so the ``(Q, T)`` block costs one small matmul.
    Computed in float64 (the expansion cancels large terms).

    Args:
        pred: ``(B, Q, 5)``, target: ``(B, T, 5)`` pixel rotated boxes.
    Returns:
        ``(B, Q, T)`` float64 divergences, ``>= 0``.
    """
    pred, target = pred.double(), target.double()
    px, py, pw, ph, pt = pred.unbind(-1)
    tx, ty, tw, th, tt = target.unbind(-1)
    pw, ph, tw, th = (v.clamp_min(EPS) for v in (pw, ph, tw, th))
    c, s = torch.cos(pt), torch.sin(pt)
    iw, ih = 4 / pw.square(), 4 / ph.square()  # eigenvalues of A = Sigma_p^-1
    a11, a22, a12 = iw * c * c + ih * s * s, iw * s * s + ih * c * c, (iw - ih) * c * s
    ax, ay = a11 * px + a12 * py, a12 * px + a22 * py  # A mu_p
    quad_p = ax * px + ay * py + 2 * (torch.log(pw) + torch.log(ph))
    ones = torch.ones_like(px)
    feat_p = torch.stack((a11, 2 * a12, a22, -2 * ax, -2 * ay, quad_p, ones), dim=-1)  # (B, Q, 7)
    ct, st = torch.cos(tt), torch.sin(tt)
    ta, tb = tw.square() / 4, th.square() / 4
    s11, s22, s12 = ta * ct * ct + tb * st * st, ta * st * st + tb * ct * ct, (ta - tb) * ct * st
    feat_t = torch.stack((tx.square() + s11, tx * ty + s12, ty.square() + s22, tx, ty, torch.ones_like(tx),
                          -2 * (torch.log(tw) + torch.log(th))), dim=-2)  # (B, 7, T)
    return (0.5 * torch.bmm(feat_p, feat_t) - 1).clamp_min(0)


def kld_loss(pred: Tensor, target: Tensor, image_size: Tensor, tau: float = 1.0) -> Tensor:
    """Plain KLD loss ``1 - 1 / (tau + ln(1 + d))``, ``d = KL(N_target || N_pred)`` on pixel boxes.

    Args:
        pred, target: ``(N, 5)`` normalized ``(cx, cy, w, h, theta)``.
        image_size: ``(N, 2)`` ``(H, W)`` of each pair's image (or ``(2,)`` for all).
    Returns:
        ``(N,)`` per-pair losses in ``[0, 1)`` (for ``tau = 1``).
    """
    return _kld_to_loss(_pixel_kld(pred, target, image_size), tau)


def sync_kld_loss(pred: Tensor, target: Tensor, image_size: Tensor, tau: float = 1.0, gain: float = 1.5,
                  t_min: float = 0.8, t_max: float = 1.1) -> Tensor:
    """Synchronized KLD loss (DESIGN.md 4.2).

    ``dn`` is ``d`` min-max normalized over the ``N`` pairs given, ``l1 = sum_k |pred_k - target_k| / 4`` on
    the normalized ``cx, cy, w, h``, ``t = clamp(2 l1 / (dn + l1), t_min, t_max)``,
    ``d' = d * exp(gain * (t - 1))`` and the loss is ``1 - 1 / (tau + ln(1 + d'))``.

    Args:
        pred, target: ``(N, 5)`` normalized ``(cx, cy, w, h, theta)``.
        image_size: ``(N, 2)`` ``(H, W)`` of each pair's image (or ``(2,)`` for all).
    Returns:
        ``(N,)`` per-pair losses.
    """
    d = _pixel_kld(pred, target, image_size)
    if d.numel() == 0:
        return d
    d_min, d_max = d.min(), d.max()
    dn = (d - d_min) / (d_max - d_min).clamp_min(EPS)
    l1 = (pred[..., :4] - target[..., :4]).abs().sum(-1) / 4
    t = (2 * l1 / (dn + l1).clamp_min(EPS)).clamp(t_min, t_max)
    return _kld_to_loss(d * torch.exp(gain * (t - 1)), tau)


# --------------------------------------------------------------------------------------------------
# Classification losses (summed, divided by num_boxes)
# --------------------------------------------------------------------------------------------------


def sigmoid_focal_loss(logits: Tensor, batch_idx: Tensor, query_idx: Tensor, labels: Tensor,
                       num_boxes: Tensor | float, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss over every ``(image, query, class)``, positives at the matched entries.

    Args:
        logits: ``(B, Q, C)``.
        batch_idx, query_idx, labels: ``(N,)`` int64, the matched positives.
        num_boxes: normalizer.
    Returns:
        scalar ``sum(focal) / num_boxes`` (the same value as transformers' Deformable DETR ``loss_ce``).
    """
    onehot = torch.zeros_like(logits)
    onehot[batch_idx, query_idx, labels] = 1
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * onehot + (1 - alpha) * (1 - onehot)) * loss
    return loss.sum() / num_boxes


def _rank_in_group(score: Tensor, groups: Tensor) -> Tensor:
    """Rank (0 = highest ``score``) of each entry among the entries of its group, ``(N,)`` -> ``(N,)``."""
    by_score = torch.argsort(score, descending=True, stable=True)
    perm = by_score[torch.argsort(groups[by_score], stable=True)]  # grouped, best first within a group
    counts = torch.unique_consecutive(groups[perm], return_counts=True)[1]
    starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(perm.numel(), device=perm.device) - starts
    return rank


def quality_aware_bce(logits: Tensor, batch_idx: Tensor, query_idx: Tensor, labels: Tensor, quality: Tensor,
                      num_boxes: Tensor | float, alpha: float = 0.25, gamma: float = 2.0, quality_min: float = 0.01,
                      rank_weights: Sequence[float] | Tensor | None = None, groups: Tensor | None = None) -> Tensor:
    """Quality-aware BCE with dynamic weights (DESIGN.md 4.3).

    ``p = sigmoid(logits)``; every entry is a negative weighted ``p^gamma``; a matched entry ``(b, q, c)`` with
    localization quality ``q_i`` gets the detached target ``t = clamp(p^alpha * q_i^(1 - alpha), quality_min)``
    (``t = clamp(p, quality_min)`` where ``q_i <= 0``, e.g. a negative GIoU), positive weight
    ``t * rank_weight`` and negative weight ``1 - t``.

    Args:
        logits: ``(B, Q, C)``.
        batch_idx, query_idx, labels: ``(N,)`` int64, the matched positives.
        quality: ``(N,)`` localization quality (GIoU, or ``1 - KLD loss``); detached here.
        num_boxes: normalizer.
        rank_weights: ``(k,)`` weights by rank within a target's candidates (one-to-many matching), ranked
            by ``t``, highest first; ``None``: all 1.
        groups: ``(N,)`` target id of each positive (required with ``rank_weights``).
    Returns:
        scalar ``sum(-pos_w log p - neg_w log(1 - p)) / num_boxes``.
    """
    prob = logits.sigmoid()
    neg_w = prob.pow(gamma)
    pos_w = torch.zeros_like(logits)
    with torch.no_grad():
        p = prob[batch_idx, query_idx, labels]
        q = quality.detach().to(p.dtype)
        t = torch.where(q > 0, p.pow(alpha) * q.clamp_min(0).pow(1 - alpha), p).clamp_min(quality_min)
        weight = t
        if rank_weights is not None and t.numel():
            if groups is None:
                raise ValueError("`groups` is required with `rank_weights`")
            table = torch.as_tensor(rank_weights, dtype=t.dtype, device=t.device)
            rank = _rank_in_group(t, groups).clamp_max(table.numel() - 1)
            weight = t * table[rank]
    pos_w = pos_w.index_put((batch_idx, query_idx, labels), weight)
    neg_w = neg_w.index_put((batch_idx, query_idx, labels), 1 - t)
    loss = -pos_w * F.logsigmoid(logits) - neg_w * F.logsigmoid(-logits)
    return loss.sum() / num_boxes


# --------------------------------------------------------------------------------------------------
# Matcher
# --------------------------------------------------------------------------------------------------


def _pad_targets(targets: list[dict], box_dim: int, device: torch.device, dtype: torch.dtype
                 ) -> tuple[Tensor, Tensor, list[int]]:
    """Stack per-image targets, padded to the largest count: labels ``(B, T)``, boxes ``(B, T, D)``, counts."""
    counts = [len(t["class_labels"]) for t in targets]
    size = max(counts, default=0)
    labels = torch.zeros(len(targets), size, dtype=torch.long, device=device)
    boxes = torch.full((len(targets), size, box_dim), 0.5, dtype=dtype, device=device)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if n:
            labels[i, :n] = t["class_labels"].to(device)
            boxes[i, :n] = t["boxes"].to(device=device, dtype=dtype)
    return labels, boxes, counts


def _image_sizes(targets: list[dict], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(B, 2)`` ``(H, W)`` of every image."""
    if any("size" not in t for t in targets):
        raise KeyError('rotated boxes need `targets[i]["size"]` = (H, W) of the resized image')
    return torch.stack([torch.as_tensor(t["size"], device=device).to(dtype).reshape(2) for t in targets])


def _float(x: Tensor) -> Tensor:
    """Compute losses in at least float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SlDetrHungarianMatcher(nn.Module):
    """One-to-one (or one-to-``k``) assignment of queries to targets (DESIGN.md 4.4).

    Cost ``class_cost * focal + bbox_cost * L1 + geometric_cost * geometric``, where ``geometric`` is the KLD
    loss ``1 - 1 / (tau + ln(1 + d))`` for rotated boxes and ``-GIoU`` for horizontal ones. The cost is
    computed for the whole batch in one pass, on targets padded to the largest count per image (only the
    ``(Q, n_i)`` block of each image is computed); NaN / inf become a large finite cost; scipy solves each
    image. With ``one_to_many_k = k > 1`` each target is repeated ``k`` times, so it takes up to ``k`` queries.
    """

    def __init__(self, config: SlDetrConfig):
        super().__init__()
        self.box_type = config.box_type
        self.class_cost = config.class_cost
        self.bbox_cost = config.bbox_cost
        self.geometric_cost = config.geometric_cost
        self.focal_alpha = config.focal_alpha
        self.focal_gamma = config.focal_gamma
        self.kld_tau = config.kld_tau
        self.k = config.one_to_many_k

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> tuple[Tensor, list[int]]:
        """Matching costs ``(B, Q, T)`` (``T`` = largest target count; columns past ``n_i`` are padding)."""
        logits, pred = _float(outputs["logits"].detach()), _float(outputs["pred_boxes"].detach())
        batch, queries, box_dim = pred.shape
        labels, tgt, counts = _pad_targets(targets, box_dim, pred.device, pred.dtype)
        # Invalid predictions (NaN / inf / negative sizes) must not reach the geometry: use a dummy box and
        # give those queries an invalid cost afterwards.
        bad = ~torch.isfinite(pred).all(-1) | (pred[..., 2:4] < 0).any(-1)
        pred = torch.where(bad.unsqueeze(-1), torch.full_like(pred, 0.5), pred)
        prob = logits.sigmoid()
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
        index = labels.unsqueeze(1).expand(batch, queries, labels.shape[1])
        class_cost = (pos - neg).gather(2, index.clamp(0, logits.shape[-1] - 1))
        bbox_cost = torch.cdist(_l1_coords(pred), _l1_coords(tgt), p=1)
        if self.box_type == "rotated":
            sizes = _image_sizes(targets, pred.device, pred.dtype).unsqueeze(1)  # (B, 1, 2)
            d = pairwise_kld(denormalize_rboxes(pred, sizes), denormalize_rboxes(tgt, sizes))
            geometric = _kld_to_loss(d, self.kld_tau).to(pred.dtype)
        else:
            geometric = -generalized_iou(pred.unsqueeze(2), tgt.unsqueeze(1))
        cost = self.bbox_cost * bbox_cost + self.class_cost * class_cost + self.geometric_cost * geometric
        cost = cost.masked_fill(bad.unsqueeze(-1), _INVALID_COST)
        cost = torch.nan_to_num(cost, nan=_INVALID_COST, posinf=_INVALID_COST, neginf=_INVALID_COST)
        return cost.clamp(-_INVALID_COST, _INVALID_COST), counts

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Match.

        Args:
            outputs: ``{"logits": (B, Q, C), "pred_boxes": (B, Q, D)}``.
            targets: per image ``{"class_labels": (n,), "boxes": (n, D)}`` (+ ``"size"`` for rotated boxes).
        Returns:
            per image ``(query_idx, target_idx)`` int64 CPU tensors, sorted by query.
        """
        empty = torch.zeros(0, dtype=torch.int64)
        if sum(len(t["class_labels"]) for t in targets) == 0:
            return [(empty, empty) for _ in targets]
        cost, counts = self.cost_matrix(outputs, targets)
        cost = cost.cpu().numpy()
        indices = []
        for i, n in enumerate(counts):
            if n == 0:
                indices.append((empty, empty))
                continue
            block = cost[i, :, :n]
            if self.k > 1:
                block = block.repeat(self.k, axis=1)  # column j * k + r is target j
            rows, cols = linear_sum_assignment(block)
            if self.k > 1:
                cols = cols // self.k
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


# --------------------------------------------------------------------------------------------------
# Criterion
# --------------------------------------------------------------------------------------------------


class SlDetrLoss(nn.Module):
    """SL-DETR criterion: per layer ``cls * loss_cls + bbox * loss_bbox + sync * loss_sync`` (DESIGN.md 4.4).

    ``loss_cls`` is the quality-aware BCE (``use_quality_cls``) or the focal loss; ``loss_bbox`` the L1 loss
    (``theta / pi`` as fifth coordinate); ``loss_sync`` the synchronized KLD / GIoU loss (``use_sync_loc``) or
    the plain KLD / GIoU loss. Each is summed over matched pairs and divided by ``num_boxes`` (the batch's
    target count, averaged over processes, ``>= 1``). Layers: the last decoder layer (no prefix), every
    auxiliary layer ``i`` (prefix ``d{i}.``) and the two-stage encoder output (prefix ``enc.``), which is
    class-agnostic as in Deformable DETR (every target relabeled to class 0, ``enc_class_agnostic``).

    ``loss_dict`` holds the **unweighted** terms; the returned total is their weighted sum.
    """

    enc_class_agnostic: bool = True

    def __init__(self, config: SlDetrConfig):
        super().__init__()
        self.config = config
        self.matcher = SlDetrHungarianMatcher(config)
        self.weight_dict = {
            "loss_cls": config.cls_loss_coefficient,
            "loss_bbox": config.bbox_loss_coefficient,
            "loss_sync": config.sync_loss_coefficient,
        }

    def _num_boxes(self, targets: list[dict], device: torch.device) -> Tensor:
        num = torch.tensor(float(sum(len(t["class_labels"]) for t in targets)), device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(num)
            num = num / torch.distributed.get_world_size()
        return num.clamp_min(1)

    def layer_losses(self, outputs: dict, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                     num_boxes: Tensor) -> dict[str, Tensor]:
        """Unweighted ``loss_cls``, ``loss_bbox``, ``loss_sync`` of one layer for a given matching."""
        cfg = self.config
        logits, boxes = _float(outputs["logits"]), _float(outputs["pred_boxes"])
        device = logits.device
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([src for src, _ in indices]).to(device)
        tgt_idx = torch.cat([tgt for _, tgt in indices]).to(device)
        labels = torch.cat([t["class_labels"].to(device)[j.to(device)] for t, (_, j) in zip(targets, indices)])
        target_boxes = torch.cat([t["boxes"].to(device)[j.to(device)] for t, (_, j) in zip(targets, indices)])
        src = boxes[batch_idx, query_idx]
        target_boxes = target_boxes.to(src.dtype)

        loss_bbox = (_l1_coords(src) - _l1_coords(target_boxes)).abs().sum() / num_boxes
        if cfg.box_type == "rotated":
            sizes = _image_sizes(targets, device, src.dtype)[batch_idx]
            if cfg.use_sync_loc:
                loc = sync_kld_loss(src, target_boxes, sizes, cfg.kld_tau, cfg.sync_gain, cfg.sync_kld_t_min,
                                    cfg.sync_kld_t_max)
            else:
                loc = kld_loss(src, target_boxes, sizes, cfg.kld_tau)
            quality = 1 - loc.detach()
        else:
            giou = generalized_iou(src, target_boxes)
            loc = 1 - giou
            if cfg.use_sync_loc:
                loc = loc * _giou_sync_factor(src, target_boxes, giou, cfg.sync_gain, cfg.sync_giou_floor,
                                              cfg.sync_giou_t_min, cfg.sync_giou_t_max)
            quality = giou.detach()
        loss_sync = loc.sum() / num_boxes

        if cfg.use_quality_cls:
            rank_weights = groups = None
            if cfg.one_to_many_k > 1:
                rank_weights = cfg.rank_weights or [1.0] * cfg.one_to_many_k
                groups = batch_idx * (1 + max((len(t["class_labels"]) for t in targets), default=0)) + tgt_idx
            loss_cls = quality_aware_bce(logits, batch_idx, query_idx, labels, quality, num_boxes,
                                         cfg.quality_alpha, cfg.quality_gamma, cfg.quality_min, rank_weights, groups)
        else:
            loss_cls = sigmoid_focal_loss(logits, batch_idx, query_idx, labels, num_boxes, cfg.focal_alpha,
                                          cfg.focal_gamma)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_sync": loss_sync}

    def forward(self, outputs: dict, targets: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            outputs: ``{"logits": (B, Q, C), "pred_boxes": (B, Q, D)}`` normalized boxes, optionally
                ``"auxiliary_outputs"`` (list of such dicts, decoder layers ``0 .. L-2``) and ``"enc_outputs"``
                (such a dict, two-stage proposals).
            targets: per image ``{"class_labels": (n,) int64, "boxes": (n, D), "size": (2,) (H, W)}``.
        Returns:
            ``(total, loss_dict)``: the weighted sum (scalar) and the unweighted terms ``loss_cls``, ``loss_bbox``,
            ``loss_sync``, ``d{i}.loss_*`` per auxiliary layer and ``enc.loss_*``.
        """
        if len(targets) != outputs["logits"].shape[0]:
            raise ValueError(f"got {len(targets)} targets for a batch of {outputs['logits'].shape[0]}")
        num_boxes = self._num_boxes(targets, outputs["logits"].device)
        layers: list[tuple[str, dict, list[dict]]] = [("", outputs, targets)]
        for i, aux in enumerate(outputs.get("auxiliary_outputs") or []):
            layers.append((f"d{i}.", aux, targets))
        enc = outputs.get("enc_outputs")
        if enc is not None:
            enc_targets = targets
            if self.enc_class_agnostic:
                enc_targets = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in targets]
            layers.append(("enc.", enc, enc_targets))

        loss_dict: dict[str, Tensor] = {}
        total = _float(outputs["logits"]).new_zeros(())
        for prefix, layer_out, layer_targets in layers:
            indices = self.matcher(layer_out, layer_targets)
            for name, value in self.layer_losses(layer_out, layer_targets, indices, num_boxes).items():
                loss_dict[prefix + name] = value
                total = total + self.weight_dict[name] * value
        return total, loss_dict
