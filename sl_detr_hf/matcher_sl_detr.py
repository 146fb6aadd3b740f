"""SL-DETR matching: pairwise costs for many layers at once, and the host-side Hungarian assignment.

Costs (docs/losses.md#matcher): ``class_cost * focal + bbox_cost * box + geometric_cost * geometric`` where ``box`` is
the L1 distance (``theta / pi`` as fifth coordinate) or the corner Hausdorff distance
(``config.matcher_box_cost``), and ``geometric`` is the KLD loss ``1 - 1 / (tau + ln(1 + d))`` of the pixel boxes
(rotated) or ``-GIoU`` (horizontal). :meth:`SlDetrHungarianMatcher.cost` computes the ``(L, B, Q, T)`` costs of
``L`` stacked layers in one pass; the criterion copies them to the host once per step and
:func:`assign` solves every ``(layer, image)`` with scipy.

This module ships with ``trust_remote_code`` checkpoints: it imports only torch, scipy and the package's own
files.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .configuration_sl_detr import SlDetrConfig
from .rotated_boxes import EPS, denormalize_rboxes

__all__ = [
    "SlDetrHungarianMatcher",
    "assign",
    "box_corners",
    "generalized_iou",
    "pairwise_hausdorff",
    "pairwise_kld",
]

INVALID_COST = 1e8
"""Replaces NaN / inf in a matching cost (far above any real cost, still exact in float32 sums)."""


# --------------------------------------------------------------------------------------------------
# Geometry shared with the losses
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


def l1_coords(boxes: Tensor) -> Tensor:
    """Coordinates the L1 loss and cost compare: ``(cx, cy, w, h[, theta / pi])``."""
    if boxes.shape[-1] == 5:
        return torch.cat((boxes[..., :4], boxes[..., 4:] / math.pi), dim=-1)
    return boxes


def kld_to_loss(d: Tensor, tau: float) -> Tensor:
    """``1 - 1 / (tau + ln(1 + d))``."""
    return 1 - 1 / (tau + torch.log1p(d)).clamp_min(EPS)


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


def box_corners(boxes: Tensor) -> Tensor:
    """The 4 corners ``center + R(theta) @ (+-w/2, +-h/2)`` of ``(..., 5)`` (or ``(..., 4)``, theta 0) boxes.

    Returns:
        ``(..., 4, 2)``.
    """
    half = boxes[..., 2:4] / 2
    signs = boxes.new_tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]])
    local = half.unsqueeze(-2) * signs  # (..., 4, 2)
    if boxes.shape[-1] < 5:
        return boxes[..., None, :2] + local
    cos, sin = torch.cos(boxes[..., 4:5]), torch.sin(boxes[..., 4:5])  # (..., 1)
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return boxes[..., None, :2] + torch.stack((x, y), dim=-1)


def pairwise_hausdorff(pred: Tensor, target: Tensor) -> Tensor:
    """Hausdorff distance between the corner sets of every pair of boxes.

    Corners are taken in normalized coordinates (``cx, cy, w, h`` in image units, theta in radians), as RHINO's
    ``HausdorffCost``: ``max(max_a min_b |a - b|, max_b min_a |a - b|)`` over the 4 + 4 corners.

    Args:
        pred: ``(B, Q, D)``, target: ``(B, T, D)`` normalized boxes, ``D`` 5 or 4.
    Returns:
        ``(B, Q, T)``.
    """
    batch, queries, targets = pred.shape[0], pred.shape[1], target.shape[1]
    a = box_corners(pred).reshape(batch, queries * 4, 2)
    b = box_corners(target).reshape(batch, targets * 4, 2)
    dist = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").view(batch, queries, 4, targets, 4)
    forward = dist.amin(-1).amax(2)  # each pred corner to its nearest target corner, worst corner
    backward = dist.amin(2).amax(-1)
    return torch.maximum(forward, backward)


# --------------------------------------------------------------------------------------------------
# Matcher
# --------------------------------------------------------------------------------------------------


def float_(x: Tensor) -> Tensor:
    """Compute losses and costs in at least float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def pad_targets(targets: list[dict], box_dim: int, device: torch.device, dtype: torch.dtype
                ) -> tuple[Tensor, Tensor, list[int]]:
    """Stack per-image targets, padded to the largest count: labels ``(B, T)``, boxes ``(B, T, D)``, counts.

    One concatenation and one scatter (no per-image copies); padding boxes are ``0.5`` (a valid box).
    """
    counts = [len(t["class_labels"]) for t in targets]
    size = max(counts, default=0)
    labels = torch.zeros(len(targets), size, dtype=torch.long, device=device)
    boxes = torch.full((len(targets), size, box_dim), 0.5, dtype=dtype, device=device)
    if sum(counts):
        image = np.repeat(np.arange(len(counts)), counts)
        slot = np.concatenate([np.arange(n) for n in counts])
        where = torch.from_numpy(np.stack((image, slot))).to(device)
        labels[where[0], where[1]] = torch.cat([t["class_labels"] for t in targets]).to(device)
        boxes[where[0], where[1]] = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=dtype)
    return labels, boxes, counts


def image_sizes(targets: list[dict], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(B, 2)`` ``(H, W)`` of every image."""
    if any("size" not in t for t in targets):
        raise KeyError('rotated boxes need `targets[i]["size"]` = (H, W) of the resized image')
    return torch.stack([torch.as_tensor(t["size"]).reshape(2) for t in targets]).to(device=device, dtype=dtype)


def assign(cost: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment of one ``(Q, n)`` block; with ``k > 1`` each column takes up to ``k`` rows.

    Returns:
        ``(rows, cols)`` int64, sorted by row.
    """
    if cost.shape[1] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    if k > 1:
        cost = cost.repeat(k, axis=1)  # column j * k + r is target j
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), (cols // k).astype(np.int64)


class SlDetrHungarianMatcher(nn.Module):
    """One-to-one (or one-to-``k``) assignment of queries to targets (docs/losses.md#matcher).

    :meth:`cost` computes the costs of ``L`` stacked layers on targets padded to the largest count (NaN / inf
    and invalid boxes become :data:`INVALID_COST`); :func:`assign` solves each ``(layer, image)`` block on the
    host. ``forward`` matches one layer (the per-layer API).
    """

    def __init__(self, config: SlDetrConfig):
        super().__init__()
        self.box_type = config.box_type
        self.class_cost = config.class_cost
        self.bbox_cost = config.bbox_cost
        self.geometric_cost = config.geometric_cost
        self.box_cost_type = getattr(config, "matcher_box_cost", "l1")
        self.focal_alpha = config.focal_alpha
        self.focal_gamma = config.focal_gamma
        self.kld_tau = config.kld_tau
        self.k = config.one_to_many_k

    @torch.no_grad()
    def cost(self, logits: Tensor, pred: Tensor, labels: Tensor, target: Tensor, sizes: Tensor | None) -> Tensor:
        """Matching costs of stacked layers.

        Args:
            logits: ``(L, B, Q, C)``; pred: ``(L, B, Q, D)`` normalized boxes.
            labels: ``(L, B, T)`` or ``(B, T)`` int64 target classes (padded); target: ``(B, T, D)``.
            sizes: ``(B, 2)`` ``(H, W)`` (rotated boxes), else ``None``.
        Returns:
            ``(L, B, Q, T)`` costs in the dtype of ``pred`` (at least float32).
        """
        logits, pred = float_(logits.detach()), float_(pred.detach())
        layers, batch, queries, box_dim = pred.shape
        targets = target.shape[1]
        target = target.to(pred.dtype)
        bad = ~torch.isfinite(pred).all(-1) | (pred[..., 2:4] < 0).any(-1)
        pred = torch.where(bad.unsqueeze(-1), torch.full_like(pred, 0.5), pred)
        flat = pred.reshape(layers * batch, queries, box_dim)
        flat_target = target.unsqueeze(0).expand(layers, -1, -1, -1).reshape(layers * batch, targets, box_dim)

        prob = logits.sigmoid()
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob.pow(gamma) * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob).pow(gamma) * -(prob + 1e-8).log()
        index = labels.expand(layers, batch, targets).unsqueeze(2).expand(layers, batch, queries, targets)
        class_cost = (pos - neg).gather(3, index.clamp(0, logits.shape[-1] - 1))

        if self.box_cost_type == "hausdorff":
            box_cost = pairwise_hausdorff(flat, flat_target)
        else:
            box_cost = torch.cdist(l1_coords(flat), l1_coords(flat_target), p=1)
        if self.box_type == "rotated":
            if sizes is None:
                raise KeyError('rotated boxes need `targets[i]["size"]` = (H, W) of the resized image')
            scale = sizes.to(pred.dtype).unsqueeze(1).repeat(layers, 1, 1)  # (L * B, 1, 2)
            d = pairwise_kld(denormalize_rboxes(flat, scale), denormalize_rboxes(flat_target, scale))
            geometric = kld_to_loss(d, self.kld_tau).to(pred.dtype)
        else:
            geometric = -generalized_iou(flat.unsqueeze(2), flat_target.unsqueeze(1))
        shape = (layers, batch, queries, targets)
        cost = (self.bbox_cost * box_cost.view(shape) + self.class_cost * class_cost
                + self.geometric_cost * geometric.view(shape))
        cost = cost.masked_fill(bad.unsqueeze(-1), INVALID_COST)
        cost = torch.nan_to_num(cost, nan=INVALID_COST, posinf=INVALID_COST, neginf=INVALID_COST)
        return cost.clamp(-INVALID_COST, INVALID_COST)

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> tuple[Tensor, list[int]]:
        """Matching costs ``(B, Q, T)`` of one layer (``T`` = largest target count; columns past ``n_i`` pad)."""
        pred = float_(outputs["pred_boxes"])
        labels, tgt, counts = pad_targets(targets, pred.shape[-1], pred.device, pred.dtype)
        sizes = image_sizes(targets, pred.device, pred.dtype) if self.box_type == "rotated" else None
        return self.cost(outputs["logits"][None], pred[None], labels, tgt, sizes)[0], counts

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Match one layer.

        Args:
            outputs: ``{"logits": (B, Q, C), "pred_boxes": (B, Q, D)}``.
            targets: per image ``{"class_labels": (n,), "boxes": (n, D)}`` (+ ``"size"`` for rotated boxes).
        Returns:
            per image ``(query_idx, target_idx)`` int64 CPU tensors, sorted by query.
        """
        if sum(len(t["class_labels"]) for t in targets) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        cost, counts = self.cost_matrix(outputs, targets)
        cost = cost.cpu().numpy()
        out = []
        for i, n in enumerate(counts):
            rows, cols = assign(cost[i, :, :n], self.k)
            out.append((torch.from_numpy(rows), torch.from_numpy(cols)))
        return out
