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


@dataclass
class _Plan:
    """One step's segments, flat predictions, padded targets and host matching costs (:meth:`SlDetrLoss._plan`).

    Shapes: ``B`` images, ``T`` the largest target count, ``C`` classes, ``D`` box values, ``L`` decoder layers
    scored, ``Q`` matching queries, ``G`` denoising groups of ``M`` objects, ``R`` flat prediction rows (every
    segment's ``B * queries``, one segment after the other). Segments: the ``L`` decoder layers (``d{i}.``, the
    last one ``""``), the encoder proposals (``enc.``, when given), the ``L`` denoising layers (``d{i}.dn.``,
    ``dn.``, when given).
    """

    segments: list[_Segment]
    counts: list[int]  # (B,) targets per image
    labels: Tensor  # (B, T) int64 classes, padded with 0
    boxes: Tensor  # (B, T, D) normalized boxes, padded with 0.5
    sizes: Tensor | None  # (B, 2) (H, W) of every image for rotated boxes, else None
    logits: Tensor  # (R, C) every segment's class logits
    pred_boxes: Tensor  # (R, D) every segment's normalized boxes
    num_layers: int  # L
    queries: int  # Q
    has_enc: bool
    dn_groups: int = 0  # G, 0: no denoising terms
    dn_objects: int = 0  # M
    dynamic: bool = False  # dynamic denoising (docs/losses.md#denoising-terms)
    decoder_cost: np.ndarray | None = None  # (L, B, Q [+ G M positive DN queries when dynamic], T); None: T = 0
    encoder_cost: np.ndarray | None = None  # (B, Q_enc, T); None: no encoder or T = 0

    @property
    def first_dn(self) -> int:
        """The index of the first denoising segment."""
        return self.num_layers + self.has_enc


@dataclass
class _Pairs:
    """Every segment's matched (query, target) pairs, on the device: ``P`` pairs, ``P+`` of them positives in
    classification, ``R`` flat prediction rows."""

    segment: Tensor  # (P,) int64 segment of each pair
    row: Tensor  # (P,) its row in the plan's flat predictions
    image: Tensor  # (P,) its image
    labels: Tensor  # (P,) its target's class (0 in a class-agnostic segment)
    pred_boxes: Tensor  # (P, D)
    target_boxes: Tensor  # (P, D)
    positive: Tensor  # (P+,) the pairs that are positives in classification (all but dynamic denoising's losers)
    segment_of_row: Tensor  # (R,) the segment of every flat prediction row


def _stack(layers: Sequence[dict]) -> tuple[Tensor, Tensor]:
    """Per-layer ``{"logits": (B, N, C), "pred_boxes": (B, N, D)}`` -> ``(L, B, N, C)``, ``(L, B, N, D)``, at least
    float32."""
    return (torch.stack([float_(layer["logits"]) for layer in layers]),
            torch.stack([float_(layer["pred_boxes"]) for layer in layers]))


def _layer_prefixes(tag: str, num_layers: int) -> list[str]:
    """``d{i}.<tag>`` for the first ``num_layers - 1`` decoder layers, ``<tag>`` for the last."""
    return [f"d{i}.{tag}" for i in range(num_layers - 1)] + [tag]


def _add_segments(segments: list[_Segment], flat_logits: list[Tensor], flat_boxes: list[Tensor], prefixes: list[str],
                  logits: Tensor, boxes: Tensor, class_specific: bool = True) -> None:
    """Append a segment per prefix for ``logits (S, B, N, C)`` / ``boxes (S, B, N, D)`` and their flat rows."""
    offset = sum(len(rows) for rows in flat_logits)
    batch, queries = logits.shape[1:3]
    segments += [_Segment(prefix, offset + i * batch * queries, queries, class_specific)
                 for i, prefix in enumerate(prefixes)]
    flat_logits.append(logits.flatten(0, 2))
    flat_boxes.append(boxes.flatten(0, 2))


def _denoising_layers(outputs: dict, num_layers: int, counts: list[int]) -> tuple[list[dict], int, int]:
    """The denoising outputs scored, one per scored decoder layer, with ``(G, M)`` of ``dn_meta``; ``([], 0, 0)``
    without denoising.

    The model gives every decoder layer's; without auxiliary outputs (``auxiliary_loss=False``) the last layer's
    are scored, as DINO does.
    """
    dn, meta = outputs.get("dn_outputs"), outputs.get("dn_meta")
    if not dn or not meta or meta["num_groups"] * meta["max_objects"] <= 0:
        return [], 0, 0
    groups, max_objects = int(meta["num_groups"]), int(meta["max_objects"])
    if num_layers == 1:
        dn = dn[-1:]
    if len(dn) != num_layers:
        raise ValueError(f"`dn_outputs` has {len(dn)} layers, the decoder {num_layers} (`auxiliary_outputs` + 1)")
    if dn[0]["logits"].shape[1] != 2 * groups * max_objects:
        raise ValueError(f"`dn_outputs` holds {dn[0]['logits'].shape[1]} queries per image, `dn_meta` says "
                         f"2 * {groups} groups * {max_objects} objects")
    if max(counts, default=0) > max_objects:
        raise ValueError(f"`dn_meta['max_objects']` = {max_objects} < an image's {max(counts)} targets")
    return dn, groups, max_objects


def _to_host(costs: list[Tensor]) -> list[np.ndarray]:
    """The tensors as numpy arrays, in one device -> host copy."""
    flat = torch.cat([cost.reshape(-1) for cost in costs]).cpu().numpy()
    split = np.cumsum([cost.numel() for cost in costs])[:-1]
    return [part.reshape(cost.shape) for part, cost in zip(np.split(flat, split), costs)]


def _segment_sum(values: Tensor, segment: Tensor, num_segments: int) -> Tensor:
    """``(S,)`` sums of ``values (N,)`` by ``segment (N,)``."""
    return values.new_zeros(num_segments).index_add(0, segment, values)


class SlDetrLoss(nn.Module):
    """SL-DETR criterion: per segment ``cls * loss_cls + bbox * loss_bbox + sync * loss_sync``
    (docs/losses.md#overview).

    ``loss_cls`` is the quality-aware BCE (``use_quality_cls``) or the focal loss; ``loss_bbox`` the L1 loss
    (``theta / pi`` as fifth coordinate); ``loss_sync`` the synchronized KLD / GIoU loss (``use_sync_loc``) or the
    plain KLD / GIoU loss. Segments: the last decoder layer (no prefix), every auxiliary layer ``i`` (``d{i}.``), the
    two-stage encoder output (``enc.``, class-agnostic as in Deformable DETR unless ``config.numerics="rhino"``, as in
    DINO) and the denoising queries of every decoder layer (``dn.``, ``d{i}.dn.``, with RHINO's dynamic denoising:
    docs/losses.md#denoising-terms).

    A step, in the order of ``forward``:

    1. :meth:`_plan` lays the segments' predictions out flat, pads the targets and computes the matching costs of
       all layers (decoder layers, encoder proposals, the positive DN queries of dynamic denoising) in one batched
       pass, copied to the host once (a :class:`_Plan`);
    2. :meth:`_matched_pairs`: scipy solves each ``(layer, image)`` (and ``(layer, image, DN group)``), the DN
       queries' known pairs join, and all pairs go to the device at once (a :class:`_Pairs`);
    3. :meth:`_box_terms`: the L1 and synchronized KLD / GIoU terms of every pair;
    4. :meth:`_class_terms`: the classification terms over every entry of every segment;
    5. :meth:`_normalizers`: ``num_boxes`` (the batch's target count averaged over processes, ``>= 1``) and the
       denoising segments' divisors (docs/losses.md#normalizers).

    Per-segment reductions (sums, the synchronized KLD's min / max) are segment ops over the concatenated pairs.
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

    def forward(self, outputs: dict, targets: list[dict]) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            outputs: ``{"logits": (B, Q, C), "pred_boxes": (B, Q, D)}`` normalized boxes, optionally
                ``"auxiliary_outputs"`` (list of such dicts, decoder layers ``0 .. L-2``), ``"enc_outputs"``
                (such a dict, two-stage proposals), ``"dn_outputs"`` (list of such dicts, the DN queries of decoder
                layers ``0 .. L-1``; the last one's alone are scored without ``"auxiliary_outputs"``) with
                ``"dn_meta"`` (``{"num_groups", "max_objects"}``).
            targets: per image ``{"class_labels": (n,) int64, "boxes": (n, D), "size": (2,) (H, W)}``.
        Returns:
            ``(total, loss_dict)``: the weighted sum (scalar) and the unweighted terms ``loss_cls``, ``loss_bbox``,
            ``loss_sync`` with prefixes ``""``, ``d{i}.``, ``enc.``, ``dn.``, ``d{i}.dn.``.
        """
        plan = self._plan(outputs, targets)
        pairs = self._matched_pairs(plan)
        l1, loc, quality = self._box_terms(plan, pairs)
        cls = self._class_terms(plan, pairs, quality)
        box_norm, cls_norm = self._normalizers(plan, pairs)
        num_segments = len(plan.segments)
        terms = {"loss_cls": cls / cls_norm,
                 "loss_bbox": _segment_sum(l1, pairs.segment, num_segments) / box_norm,
                 "loss_sync": _segment_sum(loc, pairs.segment, num_segments) / box_norm}
        total = sum(self.weight_dict[name] * value.sum() for name, value in terms.items())
        loss_dict = {seg.prefix + name: value[s] for s, seg in enumerate(plan.segments)
                     for name, value in terms.items()}
        return total, loss_dict

    def match(self, outputs: dict, targets: list[dict]) -> dict[str, list[tuple[Tensor, Tensor]]]:
        """Per layer prefix (``""``, ``d{i}.``, ``enc.``), per image ``(query_idx, target_idx)`` CPU tensors."""
        plan = self._plan(outputs, targets)
        matches = self._solve(plan)
        return {seg.prefix: [(torch.from_numpy(q), torch.from_numpy(t)) for _, q, t in matches[s]]
                for s, seg in enumerate(plan.segments) if s < len(matches)}

    # ---------------------------------------------------------------------------------------------- plan

    def _plan(self, outputs: dict, targets: list[dict]) -> _Plan:
        """Pad the targets, lay every segment's predictions out flat and compute all matching costs (copied to the
        host at once)."""
        logits = outputs["logits"]
        batch, queries = logits.shape[:2]
        if len(targets) != batch:
            raise ValueError(f"got {len(targets)} targets for a batch of {batch}")
        device = logits.device
        pred = float_(outputs["pred_boxes"])
        labels, boxes, counts = pad_targets(targets, pred.shape[-1], device, pred.dtype)
        sizes = image_sizes(targets, device, pred.dtype) if self.config.box_type == "rotated" else None

        segments: list[_Segment] = []
        flat_logits: list[Tensor] = []
        flat_boxes: list[Tensor] = []
        decoder = _stack([*(outputs.get("auxiliary_outputs") or []), outputs])  # (L, B, Q, C), (L, B, Q, D)
        num_layers = decoder[0].shape[0]
        _add_segments(segments, flat_logits, flat_boxes, _layer_prefixes("", num_layers), *decoder)
        enc = outputs.get("enc_outputs")
        if enc is not None:
            enc = float_(enc["logits"]), float_(enc["pred_boxes"])  # (B, Q_enc, C), (B, Q_enc, D)
            _add_segments(segments, flat_logits, flat_boxes, ["enc."], enc[0][None], enc[1][None],
                          not self.enc_class_agnostic)
        dn_layers, groups, max_objects = _denoising_layers(outputs, num_layers, counts)
        dn = _stack(dn_layers) if dn_layers else None  # (L, B, 2 G M, C), (L, B, 2 G M, D)
        if dn is not None:
            _add_segments(segments, flat_logits, flat_boxes, _layer_prefixes("dn.", num_layers), *dn)

        plan = _Plan(segments, counts, labels, boxes, sizes, torch.cat(flat_logits), torch.cat(flat_boxes),
                     num_layers, queries, enc is not None, groups, max_objects,
                     dynamic=groups > 0 and self.config.use_dynamic_denoising and labels.shape[1] > 0)
        plan.decoder_cost, plan.encoder_cost = self._host_costs(plan, decoder, enc, dn)
        return plan

    def _host_costs(self, plan: _Plan, decoder: tuple[Tensor, Tensor], enc: tuple[Tensor, Tensor] | None,
                    dn: tuple[Tensor, Tensor] | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The matching costs of the decoder layers and of the encoder proposals (shapes in :class:`_Plan`), in one
        batched pass where the shapes allow and one device -> host copy.

        Dynamic denoising appends each layer's positive DN queries to its rows; the encoder joins the decoder's
        stack as one more layer when it has ``Q`` proposals (with filler rows for the DN queries).
        """
        if plan.labels.shape[1] == 0:
            return None, None
        logits, boxes = decoder
        if plan.dynamic:
            groups, m = plan.dn_groups, plan.dn_objects
            positive = torch.from_numpy((np.arange(groups)[:, None] * 2 * m + np.arange(m)).ravel()).to(logits.device)
            logits = torch.cat((logits, dn[0].index_select(2, positive)), dim=2)
            boxes = torch.cat((boxes, dn[1].index_select(2, positive)), dim=2)
        stack = [(logits, boxes, plan.labels.expand(plan.num_layers, -1, -1))]
        enc_labels = torch.zeros_like(plan.labels) if self.enc_class_agnostic else plan.labels
        enc_joins = enc is not None and enc[0].shape[1] == plan.queries
        if enc_joins:
            enc_logits, enc_boxes = enc[0][None], enc[1][None]
            filler = (1, len(plan.counts), logits.shape[2] - plan.queries)  # rows of the DN queries, if any
            enc_logits = torch.cat((enc_logits, enc_logits.new_zeros(*filler, enc_logits.shape[-1])), dim=2)
            enc_boxes = torch.cat((enc_boxes, enc_boxes.new_full((*filler, enc_boxes.shape[-1]), 0.5)), dim=2)
            stack.append((enc_logits, enc_boxes, enc_labels[None]))
        costs = [self.matcher.cost(*(torch.cat(parts) for parts in zip(*stack)), plan.boxes, plan.sizes)]
        if enc is not None and not enc_joins:
            costs.append(self.matcher.cost(enc[0][None], enc[1][None], enc_labels, plan.boxes, plan.sizes))
        host = _to_host(costs)  # the step's one device -> host copy
        encoder = None if enc is None else host[0][-1, :, :plan.queries] if enc_joins else host[1][0]
        return host[0][:plan.num_layers], encoder

    # ---------------------------------------------------------------------------------------------- matched pairs

    def _solve(self, plan: _Plan) -> list[list[tuple[int, np.ndarray, np.ndarray]]]:
        """Host: per matching segment (decoder layers, then the encoder), per image ``(b, query_idx, target_idx)``."""
        empty = np.zeros(0, dtype=np.int64)
        nothing = [(b, empty, empty) for b in range(len(plan.counts))]

        def solve(cost: np.ndarray | None) -> list[tuple[int, np.ndarray, np.ndarray]]:
            if cost is None:
                return nothing
            return [(b, *assign(cost[b, :, :n])) if n else (b, empty, empty) for b, n in enumerate(plan.counts)]

        decoder = [solve(None if plan.decoder_cost is None else plan.decoder_cost[i, :, :plan.queries])
                   for i in range(plan.num_layers)]
        return decoder + ([solve(plan.encoder_cost)] if plan.has_enc else [])

    def _dn_winners(self, plan: _Plan) -> np.ndarray:
        """Dynamic denoising, host: ``(L, B, G, M)`` bool, whether positive DN query ``j`` of group ``g`` wins
        target ``j`` when matched together with the matching queries (one scipy call per layer, image, group)."""
        groups, m, queries = plan.dn_groups, plan.dn_objects, plan.queries
        won = np.zeros((plan.num_layers, len(plan.counts), groups, m), dtype=bool)
        for layer, cost in enumerate(plan.decoder_cost):
            for b, n in enumerate(plan.counts):
                if n == 0:
                    continue
                main = cost[b, :queries, :n]
                dn = cost[b, queries:queries + groups * m, :n].reshape(groups, m, n)
                for g in range(groups):
                    rows, cols = assign(np.concatenate((dn[g, :n], main)))
                    mine = rows < n
                    won[layer, b, g, rows[mine]] = cols[mine] == rows[mine]
        return won

    def _host_pairs(self, plan: _Plan) -> np.ndarray:
        """Host ``(5, P)`` int64: per pair its segment, flat prediction row, flat target ``b * T + j``, image, and
        whether it is a positive in classification.

        The Hungarian matches of the decoder layers and the encoder (docs/losses.md#matcher), then the known pairs of
        the denoising queries (docs/losses.md#denoising-terms): positive query ``2 M g + j`` of group ``g`` to target
        ``j``, a positive in classification unless it loses its target under dynamic denoising.
        """
        num_t = plan.labels.shape[1]
        parts = []
        for s, per_image in enumerate(self._solve(plan)):
            seg = plan.segments[s]
            for b, q, t in per_image:
                if len(q):
                    parts.append((np.full(len(q), s), seg.offset + b * seg.queries + q, b * num_t + t,
                                  np.full(len(q), b), np.ones(len(q), dtype=np.int64)))
        groups, m = plan.dn_groups, plan.dn_objects
        won = self._dn_winners(plan) if plan.dynamic else None
        for layer in range(plan.num_layers if groups else 0):
            s = plan.first_dn + layer
            seg = plan.segments[s]
            for b, n in enumerate(plan.counts):
                if n == 0:
                    continue
                g, j = np.divmod(np.arange(groups * n), n)
                positive = won[layer, b, g, j] if won is not None else np.ones(len(j), dtype=bool)
                parts.append((np.full(len(j), s), seg.offset + b * seg.queries + g * 2 * m + j, b * num_t + j,
                              np.full(len(j), b), positive.astype(np.int64)))
        if not parts:
            return np.zeros((5, 0), dtype=np.int64)
        return np.concatenate([np.stack(part) for part in parts], axis=1).astype(np.int64)

    def _matched_pairs(self, plan: _Plan) -> _Pairs:
        """Every segment's matched pairs (:meth:`_host_pairs`) on the device, in one host -> device copy, with their
        predicted and target boxes and classes gathered."""
        pairs = self._host_pairs(plan)
        num_pairs, num_segments = pairs.shape[1], len(plan.segments)
        positive_host = np.flatnonzero(pairs[4])
        class_specific = np.array([seg.class_specific for seg in plan.segments], dtype=np.int64)
        rows = np.array([seg.queries * len(plan.counts) for seg in plan.segments], dtype=np.int64)
        pack = np.concatenate((pairs[:4].ravel(), positive_host, class_specific, rows))
        pack = torch.from_numpy(pack).to(plan.logits.device, non_blocking=True)  # the step's one host -> device copy
        segment, row, target, image = pack[:4 * num_pairs].view(4, num_pairs)
        positive, class_specific, rows = pack[4 * num_pairs:].split([len(positive_host), num_segments, num_segments])
        pred_boxes = plan.pred_boxes[row]
        return _Pairs(
            segment=segment, row=row, image=image,
            labels=plan.labels.flatten()[target] * class_specific[segment],
            pred_boxes=pred_boxes,
            target_boxes=plan.boxes.flatten(0, 1)[target].to(pred_boxes.dtype),
            positive=positive,
            segment_of_row=torch.repeat_interleave(torch.arange(num_segments, device=rows.device), rows,
                                                   output_size=len(plan.logits)),
        )

    # ---------------------------------------------------------------------------------------------- loss terms

    def _box_terms(self, plan: _Plan, pairs: _Pairs) -> tuple[Tensor, Tensor, Tensor]:
        """Per pair ``(P,)``: the L1 distance (docs/losses.md#l1-term), the localization loss
        (docs/losses.md#synchronized-kld, docs/losses.md#synchronized-giou, or the plain KLD / GIoU loss) and the
        detached quality the classification reads (``1 - KLD loss``, or GIoU)."""
        cfg = self.config
        pred, target = pairs.pred_boxes, pairs.target_boxes
        l1 = (l1_coords(pred) - l1_coords(target)).abs().sum(-1)
        if cfg.box_type == "rotated":
            size = plan.sizes[pairs.image]
            if cfg.use_sync_loc:  # d min-max normalized over each segment's pairs
                loc = sync_kld_loss(pred, target, size, cfg.kld_tau, cfg.sync_gain, cfg.sync_kld_t_min,
                                    cfg.sync_kld_t_max, pairs.segment, len(plan.segments))
            else:
                loc = kld_loss(pred, target, size, cfg.kld_tau)
            return l1, loc, 1 - loc.detach()
        giou = generalized_iou(pred, target)
        loc = 1 - giou
        if cfg.use_sync_loc:
            loc = loc * _giou_sync_factor(pred, target, giou, cfg.sync_gain, cfg.sync_giou_floor, cfg.sync_giou_t_min,
                                          cfg.sync_giou_t_max)
        return l1, loc, giou.detach()

    def _class_terms(self, plan: _Plan, pairs: _Pairs, quality: Tensor) -> Tensor:
        """``(S,)`` each segment's classification loss summed over its ``B * queries * C`` entries, positives at the
        pairs that are positives: quality-aware BCE (docs/losses.md#quality-aware-classification, ``quality (P,)``)
        or focal loss (docs/losses.md#focal-loss)."""
        cfg = self.config
        index = (pairs.row[pairs.positive], pairs.labels[pairs.positive])
        if cfg.use_quality_cls:
            elements = _quality_bce_elements(plan.logits, index, quality[pairs.positive], cfg.quality_alpha,
                                             cfg.quality_gamma, cfg.quality_min)
        else:
            elements = _focal_elements(plan.logits, index, cfg.focal_alpha, cfg.focal_gamma)
        return _segment_sum(elements.sum(-1), pairs.segment_of_row, len(plan.segments))

    # ---------------------------------------------------------------------------------------------- normalizers

    @staticmethod
    def _mean_over_processes(values: Tensor) -> Tensor:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(values)
            values = values / torch.distributed.get_world_size()
        return values

    def _normalizers(self, plan: _Plan, pairs: _Pairs) -> tuple[Tensor, Tensor]:
        """``(S,)`` divisors of the box terms and of the classification terms (docs/losses.md#normalizers).

        ``num_boxes`` is the batch's target count averaged over processes, at least 1; a denoising segment takes
        ``num_boxes * G``, and with dynamic denoising its classification the layer's winners (averaged over
        processes, at least 1). Every process makes the same one all-reduce, whatever its batch holds.
        """
        num_layers, first_dn, num_segments = plan.num_layers, plan.first_dn, len(plan.segments)
        winners = plan.logits.new_zeros(num_layers, dtype=torch.float32)
        if plan.dynamic:
            won = _segment_sum(winners.new_ones(()).expand(len(pairs.positive)), pairs.segment[pairs.positive],
                               num_segments)
            winners = won[first_dn:first_dn + num_layers]
        local = torch.cat((torch.tensor([float(sum(plan.counts))], device=winners.device), winners))
        mean = self._mean_over_processes(local)
        num_boxes = mean[0].clamp_min(1)
        scale = np.ones(num_segments)
        scale[first_dn:first_dn + num_layers] = max(plan.dn_groups, 1)
        box_norm = num_boxes * torch.from_numpy(scale).to(num_boxes.device, num_boxes.dtype)
        if not plan.dynamic:
            return box_norm, box_norm
        dn_winners = mean[1:].clamp_min(1)
        return box_norm, torch.cat((box_norm[:first_dn], dn_winners, box_norm[first_dn + num_layers:]))
