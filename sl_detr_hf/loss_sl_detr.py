"""SL-DETR criterion: the synchronized localization losses, the quality-aware classification loss and the
batched matching of every prediction layer (docs/losses.md#overview).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configuration_sl_detr import SlDetrConfig
from .geometry_conversions import EPS, denormalize_rboxes, regularize_rboxes, wrap_angle_range
from .geometry_distances import l1_coords
from .geometry_gaussian import kld, kld_to_loss, pairwise_kld
from .geometry_overlaps import generalized_iou
from .matcher_sl_detr import SlDetrHungarianMatcher, assign, float_, image_sizes, pad_targets

__all__ = [
    "SlDetrHungarianMatcher",
    "SlDetrLoss",
    "generalized_iou",
    "kld_loss",
    "pairwise_kld",
    "prepare_targets",
    "quality_aware_bce",
    "sigmoid_focal_loss",
    "sync_giou_loss",
    "sync_kld_loss",
]


# --------------------------------------------------------------------------------------------------
# Localization losses (per pair, no reduction)
# --------------------------------------------------------------------------------------------------


def _giou_sync_factor(pred: Tensor, target: Tensor, giou: Tensor, gain: float, giou_floor: float,
                      t_min: float, t_max: float) -> Tensor:
    """``exp(gain * (clamp(2 s / (u + s), t_min, t_max) - 1))`` of docs/losses.md#synchronized-giou, ``(N,)``."""
    u = giou.clamp(giou_floor, 1)
    s = 1 - (pred[..., :4] - target[..., :4]).square().mean(-1)
    t = 2 * s / (u + s).clamp_min(EPS)
    return torch.exp(gain * (t.clamp(t_min, t_max) - 1))


def sync_giou_loss(pred: Tensor, target: Tensor, gain: float = 1.5, giou_floor: float = 0.001,
                   t_min: float = 0.0, t_max: float = 1.2) -> Tensor:
    """Synchronized GIoU loss (docs/losses.md#synchronized-giou):
    ``(1 - GIoU) * exp(gain * (clamp(t, t_min, t_max) - 1))``.

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


def kld_loss(pred: Tensor, target: Tensor, image_size: Tensor, tau: float = 1.0) -> Tensor:
    """Plain KLD loss ``1 - 1 / (tau + ln(1 + d))``, ``d = KL(N_target || N_pred)`` on pixel boxes.

    Args:
        pred, target: ``(N, 5)`` normalized ``(cx, cy, w, h, theta)``.
        image_size: ``(N, 2)`` ``(H, W)`` of each pair's image (or ``(2,)`` for all).
    Returns:
        ``(N,)`` per-pair losses in ``[0, 1)`` (for ``tau = 1``).
    """
    return kld_to_loss(_pixel_kld(pred, target, image_size), tau)


def sync_kld_loss(pred: Tensor, target: Tensor, image_size: Tensor, tau: float = 1.0, gain: float = 1.5,
                  t_min: float = 0.8, t_max: float = 1.1, segment: Tensor | None = None,
                  num_segments: int = 1) -> Tensor:
    """Synchronized KLD loss (docs/losses.md#synchronized-kld), of one group of pairs or of many at once.

    ``d = KL(N_target || N_pred)`` on pixel boxes, ``dn`` is ``d`` min-max normalized over the pairs of a group,
    ``l1 = sum_k |pred_k - target_k| / 4`` on the normalized ``cx, cy, w, h``,
    ``t = clamp(2 l1 / (dn + l1), t_min, t_max)``, ``d' = d * exp(gain * (t - 1))`` and the loss is
    ``1 - 1 / (tau + ln(1 + d'))``.

    Args:
        pred, target: ``(N, 5)`` normalized ``(cx, cy, w, h, theta)``.
        image_size: ``(N, 2)`` ``(H, W)`` of each pair's image (or ``(2,)`` for all).
        segment: ``(N,)`` int64 group of each pair, in ``[0, num_segments)`` (the criterion's segments: the min / max
            are taken within each); ``None``: the ``N`` pairs are one group.
        num_segments: the number of groups.
    Returns:
        ``(N,)`` per-pair losses.
    """
    d = _pixel_kld(pred, target, image_size)
    if segment is None:
        segment = torch.zeros(d.shape[0], dtype=torch.long, device=d.device)
    d_min = d.new_zeros(num_segments).scatter_reduce(0, segment, d, "amin", include_self=False)
    d_max = d.new_zeros(num_segments).scatter_reduce(0, segment, d, "amax", include_self=False)
    dn = (d - d_min[segment]) / (d_max - d_min)[segment].clamp_min(EPS)
    l1 = (pred[..., :4] - target[..., :4]).abs().sum(-1) / 4
    t = (2 * l1 / (dn + l1).clamp_min(EPS)).clamp(t_min, t_max)
    return kld_to_loss(d * torch.exp(gain * (t - 1)), tau)


# --------------------------------------------------------------------------------------------------
# Classification losses (summed, divided by num_boxes)
# --------------------------------------------------------------------------------------------------


def _focal_elements(logits: Tensor, index: tuple[Tensor, ...], alpha: float, gamma: float) -> Tensor:
    """Per-entry sigmoid focal loss, positives at ``logits[index]``; same shape as ``logits``."""
    onehot = torch.zeros_like(logits).index_put(index, torch.ones((), dtype=logits.dtype, device=logits.device))
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    p_t = prob * onehot + (1 - prob) * (1 - onehot)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * onehot + (1 - alpha) * (1 - onehot)) * loss
    return loss


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
    return _focal_elements(logits, (batch_idx, query_idx, labels), alpha, gamma).sum() / num_boxes


def _quality_bce_elements(logits: Tensor, index: tuple[Tensor, ...], quality: Tensor, alpha: float, gamma: float,
                          quality_min: float) -> Tensor:
    """Per-entry quality-aware BCE (docs/losses.md#quality-aware-classification), positives at ``logits[index]``;
    same shape as ``logits``."""
    prob = logits.sigmoid()
    neg_w = prob.pow(gamma)
    with torch.no_grad():
        p = prob[index]
        q = quality.detach().to(p.dtype)
        t = torch.where(q > 0, p.pow(alpha) * q.clamp_min(0).pow(1 - alpha), p).clamp_min(quality_min)
    pos_w = torch.zeros_like(logits).index_put(index, t)
    neg_w = neg_w.index_put(index, 1 - t)
    return -pos_w * F.logsigmoid(logits) - neg_w * F.logsigmoid(-logits)


def quality_aware_bce(logits: Tensor, batch_idx: Tensor, query_idx: Tensor, labels: Tensor, quality: Tensor,
                      num_boxes: Tensor | float, alpha: float = 0.25, gamma: float = 2.0,
                      quality_min: float = 0.01) -> Tensor:
    """Quality-aware BCE with dynamic weights (docs/losses.md#quality-aware-classification).

    ``p = sigmoid(logits)``; every entry is a negative weighted ``p^gamma``; a matched entry ``(b, q, c)`` with
    localization quality ``q_i`` gets the detached target ``t = clamp(p^alpha * q_i^(1 - alpha), quality_min)``
    (``t = clamp(p, quality_min)`` where ``q_i <= 0``, e.g. a negative GIoU), positive weight
    ``t`` and negative weight ``1 - t``.

    Args:
        logits: ``(B, Q, C)``.
        batch_idx, query_idx, labels: ``(N,)`` int64, the matched positives.
        quality: ``(N,)`` localization quality (GIoU, or ``1 - KLD loss``); detached here.
        num_boxes: normalizer.
    Returns:
        scalar ``sum(-pos_w log p - neg_w log(1 - p)) / num_boxes``.
    """
    return _quality_bce_elements(logits, (batch_idx, query_idx, labels), quality, alpha, gamma,
                                 quality_min).sum() / num_boxes


# --------------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------------


def _checked_target(target: object, index: int, config: SlDetrConfig, device: torch.device) -> tuple[Tensor, Tensor]:
    """`labels[index]`'s `(class_labels (n,), boxes (n, D))` on `device`, or a ValueError naming what is wrong."""
    where = f"`labels[{index}]"
    if not isinstance(target, Mapping):
        raise ValueError(f"{where}` must be a dict (a mapping), got {type(target).__name__}")
    missing = [key for key in ("class_labels", "boxes") if key not in target]
    if missing:
        raise ValueError(f"{where}` is missing the key(s) {missing}")
    classes = torch.as_tensor(target["class_labels"], device=device)
    boxes = torch.as_tensor(target["boxes"], device=device)
    if classes.ndim != 1 or classes.is_floating_point() or classes.is_complex():
        raise ValueError(f"{where}['class_labels']` must be a 1-d integer tensor, got shape {tuple(classes.shape)} "
                         f"and dtype {classes.dtype}")
    if boxes.ndim != 2 or boxes.shape[-1] != config.box_dim or boxes.shape[0] != classes.shape[0]:
        raise ValueError(f"{where}['boxes']` must have shape ({classes.shape[0]}, {config.box_dim}) for "
                         f"box_type={config.box_type!r}, got {tuple(boxes.shape)}")
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= config.num_labels):
        raise ValueError(f"{where}['class_labels']` must be in [0, {config.num_labels}) (config.num_labels), got "
                         f"values in [{int(classes.min())}, {int(classes.max())}]")
    if boxes.numel() and not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{where}['boxes']` contains NaN or inf")
    if boxes.numel() and bool((boxes[:, 2:4] < 0).any()):
        raise ValueError(f"{where}['boxes']` has a negative width or height (columns 2 and 3)")
    return classes.long(), boxes


def _le90_normalized(boxes: Tensor, size: Tensor) -> Tensor:
    """Normalized rotated boxes `(n, 5)` of an image of `size = (H, W)`, brought to le90 (`w >= h` in pixels, theta
    in `[-pi/2, pi/2)`); boxes already in le90 are returned bit for bit."""
    if not boxes.numel():
        return boxes
    scale = torch.cat([size.flip(0), size.flip(0), size.new_ones(1)]).to(boxes)  # (W, H, W, H, 1)
    pixel = boxes * scale
    inside = (pixel[:, 2] >= pixel[:, 3]) & (boxes[:, 4] >= -math.pi / 2) & (boxes[:, 4] < math.pi / 2)
    return torch.where(inside[:, None], boxes, regularize_rboxes(pixel) / scale)


def prepare_targets(labels: Sequence[Mapping], config: SlDetrConfig, pixel_values: Tensor,
                    pixel_mask: Tensor | None) -> list[dict]:
    """The model's `labels` -> the targets the loss and the denoising queries read.

    Checks every entry (a ValueError naming `labels[i]` and the key), moves it to the device of `pixel_values
    (B, C, H, W)`, fills a missing `"size"` (the image's unpadded extent in `pixel_mask (B, H, W)`, else `(H, W)`),
    brings rotated boxes to le90 (`w >= h` in pixels, `theta` in `[-pi/2, pi/2)`,
    docs/boxes.md#pixel-rotated-boxes-le90), then theta into the model's native range (`config.angle_start`;
    RHINO's `[0, pi)`), where the losses compare angles.
    """
    batch_size, _, height, width = pixel_values.shape
    if not isinstance(labels, (list, tuple)) or len(labels) != batch_size:
        length = f" of length {len(labels)}" if isinstance(labels, (list, tuple)) else ""
        raise ValueError(f"`labels` must be a list of {batch_size} dicts (one per image), got "
                         f"{type(labels).__name__}{length}")
    device = pixel_values.device
    targets = []
    for index, target in enumerate(labels):
        classes, boxes = _checked_target(target, index, config, device)
        prepared = {key: value.to(device) if isinstance(value, Tensor) else value for key, value in target.items()}
        prepared["class_labels"] = classes
        boxes = boxes.to(pixel_values.dtype if pixel_values.is_floating_point() else torch.float32)
        if "size" in target:
            prepared["size"] = torch.as_tensor(target["size"], device=device)
        elif pixel_mask is not None:
            valid = pixel_mask[index].bool()
            prepared["size"] = torch.stack([valid.any(1).sum(), valid.any(0).sum()])
        else:
            prepared["size"] = torch.tensor([height, width], device=device)
        if config.box_dim == 5:
            boxes = _le90_normalized(boxes, prepared["size"])
            if config.angle_offset != -0.5:  # the losses compare angles in the model's native range
                boxes = torch.cat([boxes[:, :4], wrap_angle_range(boxes[:, 4:], config.angle_offset * math.pi)], -1)
        prepared["boxes"] = boxes
        targets.append(prepared)
    return targets


# --------------------------------------------------------------------------------------------------
# Criterion
# --------------------------------------------------------------------------------------------------


@dataclass
class _Segment:
    """One block of predictions that carries its own loss terms (a decoder layer, the encoder, a DN layer)."""

    prefix: str  # loss_dict prefix
    offset: int  # first row in the flat predictions
    queries: int  # rows per image
    class_specific: bool  # False: every target relabeled to class 0 (class-agnostic encoder proposals)


def _stack_layers(layers: list[dict], tag: str, rows: int, segments: list[_Segment], flat_logits: list[Tensor],
                  flat_boxes: list[Tensor]) -> tuple[Tensor, Tensor, int]:
    """Stack one query group's per-decoder-layer predictions (the denoising queries) as segments.

    Appends a class-specific segment per layer (prefix ``d{i}.<tag>``, the last layer ``<tag>``) and the flattened
    predictions. Returns ``logits (L, B, N, C)``, ``boxes (L, B, N, D)`` and the flat row count after them.
    """
    logits = torch.stack([float_(layer["logits"]) for layer in layers])
    boxes = torch.stack([float_(layer["pred_boxes"]) for layer in layers])
    num_layers, batch, queries = logits.shape[:3]
    for i in range(num_layers):
        prefix = f"d{i}.{tag}" if i < num_layers - 1 else tag
        segments.append(_Segment(prefix, rows + i * batch * queries, queries, True))
    flat_logits.append(logits.flatten(0, 2))
    flat_boxes.append(boxes.flatten(0, 2))
    return logits, boxes, rows + num_layers * batch * queries


class SlDetrLoss(nn.Module):
    """SL-DETR criterion: per layer ``cls * loss_cls + bbox * loss_bbox + sync * loss_sync``
    (docs/losses.md#overview).

    ``loss_cls`` is the quality-aware BCE (``use_quality_cls``) or the focal loss; ``loss_bbox`` the L1 loss
    (``theta / pi`` as fifth coordinate); ``loss_sync`` the synchronized KLD / GIoU loss (``use_sync_loc``) or
    the plain KLD / GIoU loss. Each is summed over matched pairs and divided by ``num_boxes`` (the batch's
    target count, averaged over processes, ``>= 1``). Layers: the last decoder layer (no prefix), every
    auxiliary layer ``i`` (prefix ``d{i}.``), the two-stage encoder output (prefix ``enc.``, class-agnostic as in
    Deformable DETR, ``enc_class_agnostic``, unless ``config.numerics="rhino"`` as in DINO) and the denoising
    queries of every decoder layer (prefixes ``dn.`` and ``d{i}.dn.``).

    One step: the matching costs of all layers (decoder layers, encoder proposals, the positive DN queries of
    dynamic denoising) are computed in one batched pass and copied to the host once; scipy solves each
    ``(layer, image)`` (and ``(layer, image, DN group)``); the matched pairs of every layer are concatenated and
    all loss terms computed in one pass, per-layer reductions (sums, the synchronized KLD's min / max) by segment
    ops.

    Denoising (``outputs["dn_outputs"]``, ``dn_meta = {"num_groups": G, "max_objects": M}``): query ``2 M g + j``
    is the positive copy of target ``j`` (all terms), ``2 M g + M + j`` the negative one and ``j >= n_b`` padding
    (background in classification only). DN terms are normalized by ``num_boxes * G`` (DINO). With
    ``config.use_dynamic_denoising`` (RHINO), per layer, image and group the positive DN queries and the matching
    queries are matched together to the targets; a positive DN query that does not win its own target is trained
    as background in classification (its box terms kept), and the DN classification term is normalized by the
    number of winners (averaged over processes, ``>= 1``), as RHINO's ``RHINOPositiveHungarianClassificationHead``.

    ``loss_dict`` holds the **unweighted** terms; the returned total is their weighted sum.
    """

    enc_class_agnostic: bool = True

    def __init__(self, config: SlDetrConfig):
        super().__init__()
        self.config = config
        # proposals ranked by their best class (DINO / RHINO) are trained on the classes, as DINO's encoder loss
        self.enc_class_agnostic = not config.rhino_numerics
        self.matcher = SlDetrHungarianMatcher(config)
        self.weight_dict = {
            "loss_cls": config.cls_loss_coefficient,
            "loss_bbox": config.bbox_loss_coefficient,
            "loss_sync": config.sync_loss_coefficient,
        }

    @staticmethod
    def _mean_over_processes(values: Tensor) -> Tensor:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
            values = values / torch.distributed.get_world_size()
        return values

    def _num_boxes(self, targets: list[dict], device: torch.device) -> Tensor:
        num = torch.tensor(float(sum(len(t["class_labels"]) for t in targets)), device=device)
        return self._mean_over_processes(num).clamp_min(1)

    # ---------------------------------------------------------------------------------------------- matching

    def match(self, outputs: dict, targets: list[dict]) -> dict[str, list[tuple[Tensor, Tensor]]]:
        """Per layer prefix (``""``, ``d{i}.``, ``enc.``), per image ``(query_idx, target_idx)`` CPU tensors."""
        plan = self._plan(outputs, targets)
        matches = self._solve(plan)
        return {seg.prefix: [(torch.from_numpy(q), torch.from_numpy(t)) for _, q, t in matches[s]]
                for s, seg in enumerate(plan["segments"]) if s < len(matches)}

    def _plan(self, outputs: dict, targets: list[dict]) -> dict:
        """Stack the layers, build the segments and compute (and copy to the host, once) all matching costs."""
        cfg = self.config
        logits = outputs["logits"]
        batch, queries = logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch}")
        device = logits.device
        pred = float_(outputs["pred_boxes"])
        labels, boxes, counts = pad_targets(targets, pred.shape[-1], device, pred.dtype)
        sizes = image_sizes(targets, device, pred.dtype) if cfg.box_type == "rotated" else None
        num_t = labels.shape[1]

        decoder = [*(outputs.get("auxiliary_outputs") or []), outputs]
        num_layers = len(decoder)
        dec_logits = torch.stack([float_(layer["logits"]) for layer in decoder])  # (L, B, Q, C)
        dec_boxes = torch.stack([float_(layer["pred_boxes"]) for layer in decoder])  # (L, B, Q, D)
        segments = [_Segment(f"d{i}." if i < num_layers - 1 else "", i * batch * queries, queries, True)
                    for i in range(num_layers)]
        flat_logits, flat_boxes = [dec_logits.flatten(0, 2)], [dec_boxes.flatten(0, 2)]
        rows = num_layers * batch * queries

        enc = outputs.get("enc_outputs")
        enc_queries = 0
        if enc is not None:
            enc_logits, enc_boxes = float_(enc["logits"]), float_(enc["pred_boxes"])
            enc_queries = enc_logits.shape[1]
            segments.append(_Segment("enc.", rows, enc_queries, not self.enc_class_agnostic))
            flat_logits.append(enc_logits.flatten(0, 1))
            flat_boxes.append(enc_boxes.flatten(0, 1))
            rows += batch * enc_queries

        groups = max_objects = 0
        first_dn = len(segments)
        dn = outputs.get("dn_outputs")
        meta = outputs.get("dn_meta")
        if dn and meta and meta["num_groups"] * meta["max_objects"] > 0:
            groups, max_objects = int(meta["num_groups"]), int(meta["max_objects"])
            if len(dn) != num_layers:
                raise ValueError(f"`dn_outputs` has {len(dn)} layers, the decoder {num_layers}")
            if dn[0]["logits"].shape[1] != 2 * groups * max_objects:
                raise ValueError(f"`dn_outputs` holds {dn[0]['logits'].shape[1]} queries per image, `dn_meta` says "
                                 f"2 * {groups} groups * {max_objects} objects")
            if max(counts, default=0) > max_objects:
                raise ValueError(f"`dn_meta['max_objects']` = {max_objects} < an image's {max(counts)} targets")
            dn_logits, dn_boxes, rows = _stack_layers(dn, "dn.", rows, segments, flat_logits, flat_boxes)
        dynamic = groups > 0 and cfg.use_dynamic_denoising and num_t > 0

        # Matching costs: decoder layers (+ the positive DN queries appended as extra rows for dynamic
        # denoising, + the encoder as an extra layer when it has as many queries) in one pass.
        costs: list[Tensor] = []
        layout: dict[str, int] = {}
        if num_t > 0:
            extra = groups * max_objects if dynamic else 0
            lg, bx = dec_logits, dec_boxes
            if dynamic:
                positive = (np.arange(groups)[:, None] * 2 * max_objects + np.arange(max_objects)).ravel()
                positive = torch.from_numpy(positive).to(device)
                lg = torch.cat((lg, dn_logits.index_select(2, positive)), dim=2)
                bx = torch.cat((bx, dn_boxes.index_select(2, positive)), dim=2)
            stack_logits, stack_boxes, stack_labels = [lg], [bx], [labels.expand(num_layers, -1, -1)]
            enc_labels = labels if not self.enc_class_agnostic else torch.zeros_like(labels)
            enc_alone = enc is not None and enc_queries != queries
            if enc is not None and not enc_alone:  # one more layer of the same stack
                lg, bx = enc_logits[None], enc_boxes[None]
                if extra:
                    lg = torch.cat((lg, lg.new_zeros(1, batch, extra, lg.shape[-1])), dim=2)
                    bx = torch.cat((bx, bx.new_full((1, batch, extra, bx.shape[-1]), 0.5)), dim=2)
                stack_logits.append(lg)
                stack_boxes.append(bx)
                stack_labels.append(enc_labels[None])
            costs.append(self.matcher.cost(torch.cat(stack_logits), torch.cat(stack_boxes),
                                           torch.cat(stack_labels), boxes, sizes))
            layout["stack"] = len(costs) - 1
            if enc_alone:
                costs.append(self.matcher.cost(enc_logits[None], enc_boxes[None], enc_labels, boxes, sizes))
                layout["enc"] = len(costs) - 1
        # The one device -> host copy of the step.
        host: list[np.ndarray] = []
        if costs:
            flat = torch.cat([c.reshape(-1) for c in costs]).cpu().numpy()
            split = np.cumsum([c.numel() for c in costs])[:-1]
            host = [part.reshape(c.shape) for part, c in zip(np.split(flat, split), costs)]
        return {"segments": segments, "counts": counts, "num_layers": num_layers, "batch": batch,
                "queries": queries, "groups": groups, "max_objects": max_objects, "dynamic": dynamic,
                "first_dn": first_dn,
                "has_enc": enc is not None, "host": host, "layout": layout, "labels": labels, "boxes": boxes,
                "sizes": sizes, "flat_logits": flat_logits, "flat_boxes": flat_boxes, "rows": rows}

    def _solve(self, plan: dict) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
        """Host: per matching segment (decoder layers, then the encoder), per image ``(b, query_idx, target_idx)``."""
        counts, num_layers, queries = plan["counts"], plan["num_layers"], plan["queries"]
        host, layout = plan["host"], plan["layout"]
        empty = np.zeros(0, dtype=np.int64)
        enc_cost = None
        if "enc" in layout:
            enc_cost = host[layout["enc"]][0]
        elif plan["has_enc"] and "stack" in layout:
            enc_cost = host[layout["stack"]][-1]

        def solve(cost):
            return [(b, *assign(cost[b, :, :n])) if n else (b, empty, empty) for b, n in enumerate(counts)]

        nothing = [(b, empty, empty) for b in range(len(counts))]
        enc = solve(enc_cost[:, :plan["segments"][num_layers].queries]) if enc_cost is not None else nothing
        if sum(counts) == 0:
            decoder = [nothing] * num_layers
        else:
            stack = host[layout["stack"]]
            decoder = [solve(stack[i, :, :queries]) for i in range(num_layers)]
        return decoder + ([enc] if plan["has_enc"] else [])

    def _dn_winners(self, plan: dict) -> np.ndarray:
        """Dynamic denoising, host: ``(L, B, G, M)`` bool, whether positive DN query ``j`` of group ``g`` wins
        target ``j`` when matched together with the matching queries (one scipy call per layer, image, group)."""
        counts, groups, m, queries = plan["counts"], plan["groups"], plan["max_objects"], plan["queries"]
        stack = plan["host"][plan["layout"]["stack"]]
        won = np.zeros((plan["num_layers"], len(counts), groups, m), dtype=bool)
        for layer in range(plan["num_layers"]):
            for b, n in enumerate(counts):
                if n == 0:
                    continue
                main = stack[layer, b, :queries, :n]
                dn = stack[layer, b, queries:queries + groups * m, :n].reshape(groups, m, n)
                for g in range(groups):
                    rows, cols = assign(np.concatenate((dn[g, :n], main)))
                    mine = rows < n
                    won[layer, b, g, rows[mine]] = cols[mine] == rows[mine]
        return won

    # ---------------------------------------------------------------------------------------------- losses

    def forward(self, outputs: dict, targets: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            outputs: ``{"logits": (B, Q, C), "pred_boxes": (B, Q, D)}`` normalized boxes, optionally
                ``"auxiliary_outputs"`` (list of such dicts, decoder layers ``0 .. L-2``), ``"enc_outputs"``
                (such a dict, two-stage proposals), ``"dn_outputs"`` (list of such dicts, the DN queries of decoder
                layers ``0 .. L-1``) with ``"dn_meta"`` (``{"num_groups", "max_objects"}``).
            targets: per image ``{"class_labels": (n,) int64, "boxes": (n, D), "size": (2,) (H, W)}``.
        Returns:
            ``(total, loss_dict)``: the weighted sum (scalar) and the unweighted terms ``loss_cls``, ``loss_bbox``,
            ``loss_sync`` with prefixes ``""``, ``d{i}.``, ``enc.``, ``dn.``, ``d{i}.dn.``.
        """
        cfg = self.config
        plan = self._plan(outputs, targets)
        device = outputs["logits"].device
        segments, counts, batch = plan["segments"], plan["counts"], plan["batch"]
        num_t, groups, m = plan["labels"].shape[1], plan["groups"], plan["max_objects"]
        num_seg, num_layers, first_dn = len(segments), plan["num_layers"], plan["first_dn"]
        num_boxes = self._num_boxes(targets, device)

        # Matched pairs of every segment, on the host: (segment, flat row, flat target, image, positive in cls).
        parts = []
        for s, per_image in enumerate(self._solve(plan)):
            seg = segments[s]
            for b, q, t in per_image:
                if len(q):
                    parts.append((np.full(len(q), s), seg.offset + b * seg.queries + q, b * num_t + t,
                                  np.full(len(q), b), np.ones(len(q), dtype=np.int64)))
        cls_norm_scale = np.ones(num_seg)
        if groups:
            won = self._dn_winners(plan) if plan["dynamic"] else None
            for layer in range(num_layers):
                seg = segments[first_dn + layer]
                for b, n in enumerate(counts):
                    if n == 0:
                        continue
                    g, j = np.divmod(np.arange(groups * n), n)
                    positive = won[layer, b, g, j] if won is not None else np.ones(len(j), dtype=bool)
                    parts.append((np.full(len(j), first_dn + layer), seg.offset + b * seg.queries + g * 2 * m + j,
                                  b * num_t + j, np.full(len(j), b), positive.astype(np.int64)))
            cls_norm_scale[first_dn:first_dn + num_layers] = groups
        if parts:
            pairs = np.concatenate([np.stack(p) for p in parts], axis=1).astype(np.int64)  # (5, P)
        else:
            pairs = np.zeros((5, 0), dtype=np.int64)
        positive = np.flatnonzero(pairs[4])
        specific = np.array([seg.class_specific for seg in segments], dtype=np.int64)
        sizes_rows = np.array([segments[s].queries * batch for s in range(num_seg)], dtype=np.int64)
        pack = np.concatenate((pairs.ravel(), positive, specific, sizes_rows))
        pack = torch.from_numpy(pack).to(device, non_blocking=True)  # the one host -> device copy
        num_pairs = pairs.shape[1]
        seg_idx, row, tgt, img, _ = pack[:5 * num_pairs].view(5, num_pairs)
        pos = pack[5 * num_pairs:5 * num_pairs + len(positive)]
        specific_t = pack[5 * num_pairs + len(positive):5 * num_pairs + len(positive) + num_seg]
        seg_of_row = torch.repeat_interleave(torch.arange(num_seg, device=device), pack[-num_seg:],
                                             output_size=plan["rows"])

        flat_logits = torch.cat(plan["flat_logits"])  # (R, C)
        flat_boxes = torch.cat(plan["flat_boxes"])  # (R, D)
        src = flat_boxes[row]
        target = plan["boxes"].flatten(0, 1)[tgt].to(src.dtype)
        labels = plan["labels"].flatten()[tgt] * specific_t[seg_idx]

        def per_segment(values: Tensor, index: Tensor) -> Tensor:
            return values.new_zeros(num_seg).index_add(0, index, values)

        l1 = (l1_coords(src) - l1_coords(target)).abs().sum(-1)
        if cfg.box_type == "rotated":
            if cfg.use_sync_loc:  # d min-max normalized over each segment's pairs
                loc = sync_kld_loss(src, target, plan["sizes"][img], cfg.kld_tau, cfg.sync_gain, cfg.sync_kld_t_min,
                                    cfg.sync_kld_t_max, seg_idx, num_seg)
            else:
                loc = kld_loss(src, target, plan["sizes"][img], cfg.kld_tau)
            quality = 1 - loc.detach()
        else:
            giou = generalized_iou(src, target)
            loc = 1 - giou
            if cfg.use_sync_loc:
                loc = loc * _giou_sync_factor(src, target, giou, cfg.sync_gain, cfg.sync_giou_floor,
                                              cfg.sync_giou_t_min, cfg.sync_giou_t_max)
            quality = giou.detach()

        index = (row[pos], labels[pos])
        if cfg.use_quality_cls:
            elements = _quality_bce_elements(flat_logits, index, quality[pos], cfg.quality_alpha, cfg.quality_gamma,
                                             cfg.quality_min)
        else:
            elements = _focal_elements(flat_logits, index, cfg.focal_alpha, cfg.focal_gamma)

        box_norm = num_boxes * torch.from_numpy(cls_norm_scale).to(device, num_boxes.dtype)
        cls_norm = box_norm
        if plan["dynamic"]:  # RHINO: DN classification over the positive DN queries that won their target
            winners = per_segment(pack.new_ones(()).expand(len(positive)).to(num_boxes.dtype), seg_idx[pos])
            winners = self._mean_over_processes(winners[first_dn:first_dn + num_layers]).clamp_min(1)
            cls_norm = torch.cat((box_norm[:first_dn], winners, box_norm[first_dn + num_layers:]))
        loss_cls = per_segment(elements.sum(-1), seg_of_row) / cls_norm
        loss_bbox = per_segment(l1, seg_idx) / box_norm
        loss_sync = per_segment(loc, seg_idx) / box_norm
        terms = {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_sync": loss_sync}
        total = sum(self.weight_dict[name] * value.sum() for name, value in terms.items())
        loss_dict = {seg.prefix + name: value[s] for s, seg in enumerate(segments) for name, value in terms.items()}
        return total, loss_dict
