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

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .configuration_sl_detr import SlDetrConfig
from .geometry_conversions import denormalize_rboxes
from .geometry_distances import l1_coords, pairwise_hausdorff
from .geometry_gaussian import kld_to_loss, pairwise_kld
from .geometry_overlaps import generalized_iou

__all__ = ["INVALID_COST", "SlDetrHungarianMatcher", "assign", "float_", "image_sizes", "pad_targets"]

INVALID_COST = 1e8
"""Replaces NaN / inf in a matching cost (far above any real cost, still exact in float32 sums)."""


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


def assign(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian assignment of one ``(Q, n)`` block: each column (target) takes one row (query).

    Returns:
        ``(rows, cols)`` int64, sorted by row.
    """
    if cost.shape[1] == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    rows, cols = linear_sum_assignment(cost)
    return rows.astype(np.int64), cols.astype(np.int64)


class SlDetrHungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets (docs/losses.md#matcher).

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
            rows, cols = assign(cost[i, :, :n])
            out.append((torch.from_numpy(rows), torch.from_numpy(cols)))
        return out
