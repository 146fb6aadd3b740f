"""Dense one-to-many supervision of the encoder tokens: every token near an object learns it.

DETR's losses are one-to-one: an image with 5 objects gives 5 positive queries per decoder layer and 5 selected
proposals, so the encoder features learn slowly, and a model trained for one or two epochs (15 CPU minutes) finds
few objects. Co-DETR (Zong et al., ICCV 2023) adds one-to-many heads on the encoder output for this reason. Here the
two-stage encoder's own class and box heads, which already run on every token to rank the proposals
(`enc_outputs_class`, `enc_outputs_coord_logits`), get a second, dense loss with TOOD's task-aligned assignment
(Feng et al., ICCV 2021; YOLOv8's `TaskAlignedAssigner`), computed in one batched pass without host
synchronization:

- candidates of object `j`: the tokens whose centre lies in its box, the sides of the box raised to at least the
  token's proposal size (`0.05 * 2^level` of the image, Deformable DETR's proposals) so that objects smaller than a
  feature cell still have candidates on every level;
- alignment `t = p^alpha * IoU^beta` (`p`: the token's probability of the object's class; IoU: ProbIoU,
  `geometry_overlaps.prob_iou`, of its box with the object's; both detached; `alpha = 1`, `beta = 6` as YOLOv8);
  the `topk` candidates with the largest `t` are positives; a token that several objects take goes to the one its
  box overlaps most;
- targets: the class score `t / max_j(t) * max_j(IoU)` (per object, YOLOv8's normalization), 0 for every other
  class and token; the box of the object.

Loss (`dense.` in `loss_dict`, added to the total with `config.dense_loss_coefficient`):

    loss_cls  = sum w BCE(logit, target score) over tokens and classes / max(sum target scores, 1)
                (varifocal: w = target score for positives, 0.75 p^2 for the others)
    loss_bbox = sum_pos w * |box - target|_1 / max(sum target scores, 1)          (w: the positive's target score)
    loss_sync = sum_pos w * KLD loss(box, target) / max(sum target scores, 1)
    dense loss = cls_loss_coefficient * loss_cls + bbox_loss_coefficient * loss_bbox
                 + sync_loss_coefficient * loss_sync

The decoder and its one-to-one losses are unchanged: predictions still come from the decoder, without NMS.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry_conversions import EPS
from .geometry_gaussian import kld, kld_to_loss
from .geometry_overlaps import prob_iou
from .matcher_sl_detr import image_sizes, pad_targets

__all__ = ["DENSE_ALPHA", "DENSE_BETA", "DENSE_TOPK", "add_dense_encoder_loss", "assign_tokens", "dense_encoder_loss"]

DENSE_TOPK = 9
DENSE_ALPHA = 1.0
DENSE_BETA = 6.0
VARIFOCAL_ALPHA = 0.75


def _pixel_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """`(B, N, 5)` normalized boxes and `(B, 2)` `(H, W)` -> pixel boxes."""
    scale = torch.cat([sizes.flip(-1), sizes.flip(-1), sizes.new_ones(sizes.shape[0], 1)], -1).to(boxes)
    return boxes * scale[:, None]


@torch.no_grad()
def assign_tokens(logits: Tensor, boxes: Tensor, anchors: Tensor, valid: Tensor, target_labels: Tensor,
                  target_boxes: Tensor, target_valid: Tensor, sizes: Tensor, topk: int = DENSE_TOPK,
                  alpha: float = DENSE_ALPHA, beta: float = DENSE_BETA) -> tuple[Tensor, Tensor]:
    """Task-aligned assignment of the encoder tokens to the objects (module docstring).

    Args:
        logits: `(B, S, C)` token class logits; boxes: `(B, S, 5)` normalized predicted boxes.
        anchors: `(B, S, 4)` the tokens' proposal boxes `(cx, cy, w, h)`, normalized; valid: `(B, S)` bool (tokens
            of real pixels away from the border, Deformable DETR's valid proposals).
        target_labels: `(B, T)` int64, target_boxes: `(B, T, 5)` normalized, target_valid: `(B, T)` bool (padding).
        sizes: `(B, 2)` `(H, W)` the boxes are normalized by.
    Returns:
        `assigned` `(B, S)` int64, the object index of each token (`-1`: background), and `score` `(B, S)` its
        target class score.
    """
    batch, tokens, _ = logits.shape
    pixel_pred = _pixel_boxes(boxes.float(), sizes)
    pixel_target = _pixel_boxes(target_boxes.float(), sizes)
    iou = prob_iou(pixel_pred, pixel_target)  # (B, S, T)
    prob = logits.float().sigmoid().gather(2, target_labels.clamp_min(0)[:, None].expand(-1, tokens, -1))
    # candidates: token centre inside the object's box, its sides at least the token's proposal size
    wh = sizes.flip(-1).to(anchors)[:, None]  # (B, 1, 2) (W, H)
    centre = anchors[..., :2] * wh  # (B, S, 2) pixels
    anchor_side = (anchors[..., 2:4] * wh).amin(-1)  # (B, S)
    offset = centre[:, :, None] - pixel_target[:, None, :, :2]  # (B, S, T, 2)
    cos, sin = torch.cos(pixel_target[..., 4])[:, None], torch.sin(pixel_target[..., 4])[:, None]
    u = offset[..., 0] * cos + offset[..., 1] * sin
    v = -offset[..., 0] * sin + offset[..., 1] * cos
    half_w = torch.maximum(pixel_target[..., 2][:, None], anchor_side[..., None]) / 2
    half_h = torch.maximum(pixel_target[..., 3][:, None], anchor_side[..., None]) / 2
    candidate = (u.abs() <= half_w) & (v.abs() <= half_h) & valid[..., None] & target_valid[:, None]
    # (+ a tiny constant: candidates whose IoU^beta underflows are still chosen, with a ~0 target score)
    metric = torch.where(candidate, prob.pow(alpha) * iou.pow(beta) + 1e-12, torch.zeros_like(iou))
    k = min(topk, tokens)
    top_metric, top_index = metric.topk(k, dim=1)  # (B, k, T)
    chosen = torch.zeros_like(candidate).scatter_(1, top_index, top_metric > 0) & candidate
    # a token several objects choose goes to the one it overlaps most
    overlap = torch.where(chosen, iou, torch.full_like(iou, -1.0))
    best_overlap, assigned = overlap.max(dim=2)
    positive = best_overlap >= 0
    assigned = torch.where(positive, assigned, torch.full_like(assigned, -1))
    # target score: t / max_j(t) * max_j(IoU) over each object's chosen tokens
    chosen_metric = torch.where(chosen, metric, torch.zeros_like(metric))
    norm = chosen_metric / chosen_metric.amax(1, keepdim=True).clamp_min(EPS) \
        * torch.where(chosen, iou, torch.zeros_like(iou)).amax(1, keepdim=True)
    score = norm.gather(2, assigned.clamp_min(0)[..., None])[..., 0] * positive
    return assigned, score


def dense_encoder_loss(logits: Tensor, boxes: Tensor, anchors: Tensor, valid: Tensor, targets: list[dict],
                       kld_tau: float = 1.0, topk: int = DENSE_TOPK) -> dict[str, Tensor]:
    """The dense encoder loss terms (module docstring), unweighted.

    Args:
        logits: `(B, S, C)`, boxes: `(B, S, 5)` normalized, in the losses' angle convention (the targets').
        anchors: `(B, S, 4)` normalized proposal boxes; valid: `(B, S)` bool.
        targets: the prepared targets (`"class_labels"` `(n,)`, `"boxes"` `(n, 5)`, `"size"` `(2,)`).
    Returns:
        `{"loss_cls", "loss_bbox", "loss_sync"}` scalars (0 with grad when no image has an object).
    """
    batch, tokens, classes = logits.shape
    most = max((len(t["class_labels"]) for t in targets), default=0)
    zero = logits.sum() * 0 + boxes.sum() * 0
    if most == 0:
        prob = logits.detach().float().sigmoid()
        background = F.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(prob), reduction="none")
        return {"loss_cls": (background * VARIFOCAL_ALPHA * prob.square()).sum() + zero,
                "loss_bbox": zero, "loss_sync": zero}
    labels, target_boxes, counts = pad_targets(targets, 5, boxes.device, boxes.dtype)
    target_valid = torch.arange(most, device=boxes.device)[None] < torch.tensor(counts, device=boxes.device)[:, None]
    sizes = image_sizes(targets, boxes.device, boxes.dtype)
    assigned, score = assign_tokens(logits.detach(), boxes.detach(), anchors, valid, labels, target_boxes,
                                    target_valid, sizes, topk=topk)
    positive = assigned >= 0
    index = assigned.clamp_min(0)
    matched_labels = labels.gather(1, index)
    cls_target = torch.zeros_like(logits, dtype=torch.float32)
    cls_target.scatter_(2, matched_labels.clamp(0, classes - 1)[..., None], score[..., None].float())
    is_positive = torch.zeros_like(cls_target).scatter_(2, matched_labels.clamp(0, classes - 1)[..., None],
                                                         positive[..., None].float())
    normalizer = score.sum().clamp_min(1.0)
    # varifocal loss (VarifocalNet; YOLOv8's VarifocalLoss): positives weighted by their target score, negatives by
    # focal_alpha-like 0.75 * p^2, so that the thousands of background tokens do not drown the loss
    prob = logits.detach().float().sigmoid()
    weight = VARIFOCAL_ALPHA * prob.square() * (1 - is_positive) + cls_target * is_positive
    loss_cls = (F.binary_cross_entropy_with_logits(logits.float(), cls_target, reduction="none") * weight).sum() \
        / normalizer
    matched_boxes = target_boxes.gather(1, index[..., None].expand(-1, -1, 5)).float()
    # every token computes, the background ones on their matched box itself (zero loss, no gradient, no NaN):
    # no boolean indexing, so no host synchronization
    pred = torch.where(positive[..., None], boxes.float(), matched_boxes)
    l1 = (pred - matched_boxes).abs()
    l1 = torch.cat([l1[..., :4], l1[..., 4:] / math.pi], -1).sum(-1)  # (B, S)
    divergence = kld(_pixel_boxes(pred, sizes.float()), _pixel_boxes(matched_boxes, sizes.float()))
    sync = torch.where(positive, kld_to_loss(divergence, kld_tau), torch.zeros_like(divergence))
    weight = score.float() * positive
    loss_bbox = (l1 * weight).sum() / normalizer + zero
    loss_sync = (sync * weight).sum() / normalizer + zero
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_sync": loss_sync}


def add_dense_encoder_loss(loss: Tensor, loss_dict: dict[str, Tensor], enc_logits: Tensor, enc_boxes: Tensor,
                           proposals: Tensor, targets: list[dict], config) -> tuple[Tensor, dict[str, Tensor]]:
    """`loss` plus `config.dense_loss_coefficient` times the weighted dense terms, which join `loss_dict` as
    `dense.loss_cls`, `dense.loss_bbox`, `dense.loss_sync` (unweighted, as the other segments' terms).

    Args:
        enc_logits: `(B, S, C)`; enc_boxes: `(B, S, 5)` normalized, in the targets' angle range; proposals:
            `(B, S, 4)` inverse-sigmoid proposal boxes (`+inf` for invalid tokens).
    """
    valid = torch.isfinite(proposals).all(-1)
    anchors = torch.where(valid[..., None], proposals, torch.zeros_like(proposals)).sigmoid()
    terms = dense_encoder_loss(enc_logits, enc_boxes, anchors, valid, targets,
                               kld_tau=config.kld_tau)
    weighted = (config.cls_loss_coefficient * terms["loss_cls"] + config.bbox_loss_coefficient * terms["loss_bbox"]
                + config.sync_loss_coefficient * terms["loss_sync"])
    loss_dict = {**loss_dict, **{f"dense.{name}": value.detach() for name, value in terms.items()}}
    return loss + config.dense_loss_coefficient * weighted, loss_dict
