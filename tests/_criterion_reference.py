"""A straightforward per-layer SL-DETR criterion: the pre-batching code (one matcher call, one host copy and one
set of loss terms per layer), kept as the reference the batched criterion must reproduce to 1e-6.

Written from ``loss_sl_detr.py`` as it was before the batched criterion (issue 11); only the public loss
functions are imported, the matching is done here image by image.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment

from sl_detr_hf.configuration_sl_detr import SlDetrConfig
from sl_detr_hf.loss_sl_detr import (
    generalized_iou,
    kld_loss,
    pairwise_kld,
    quality_aware_bce,
    sigmoid_focal_loss,
    sync_giou_loss,
    sync_kld_loss,
)
from sl_detr_hf.rotated_boxes import EPS, denormalize_rboxes

INVALID = 1e8


def l1_coords(boxes: torch.Tensor) -> torch.Tensor:
    if boxes.shape[-1] == 5:
        return torch.cat((boxes[..., :4], boxes[..., 4:] / math.pi), dim=-1)
    return boxes


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def image_cost(config: SlDetrConfig, logits, pred, labels, tgt, size) -> torch.Tensor:
    """``(Q, n)`` matching cost of one image (the pre-batching formula)."""
    logits, pred = to_float(logits.detach()), to_float(pred.detach())
    bad = ~torch.isfinite(pred).all(-1) | (pred[..., 2:4] < 0).any(-1)
    pred = torch.where(bad[:, None], torch.full_like(pred, 0.5), pred)
    prob = logits.sigmoid()
    a, g = config.focal_alpha, config.focal_gamma
    neg = (1 - a) * prob.pow(g) * -(1 - prob + 1e-8).log()
    pos = a * (1 - prob).pow(g) * -(prob + 1e-8).log()
    class_cost = (pos - neg)[:, labels]
    bbox_cost = torch.cdist(l1_coords(pred), l1_coords(tgt.to(pred.dtype)), p=1)
    if config.box_type == "rotated":
        s = size.to(pred.dtype)
        d = pairwise_kld(denormalize_rboxes(pred, s)[None], denormalize_rboxes(tgt.to(pred.dtype), s)[None])[0]
        geometric = (1 - 1 / (config.kld_tau + torch.log1p(d)).clamp_min(EPS)).to(pred.dtype)
    else:
        geometric = -generalized_iou(pred[:, None], tgt.to(pred.dtype)[None])
    cost = config.bbox_cost * bbox_cost + config.class_cost * class_cost + config.geometric_cost * geometric
    cost = cost.masked_fill(bad[:, None], INVALID)
    return torch.nan_to_num(cost, nan=INVALID, posinf=INVALID, neginf=INVALID).clamp(-INVALID, INVALID)


def match_layer(config: SlDetrConfig, layer: dict, targets: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image ``(query_idx, target_idx)``, one scipy call per image."""
    out = []
    for i, t in enumerate(targets):
        n = len(t["class_labels"])
        if n == 0:
            out.append((torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))
            continue
        cost = image_cost(config, layer["logits"][i], layer["pred_boxes"][i], t["class_labels"], t["boxes"],
                          t.get("size", torch.tensor([1, 1]))).cpu().numpy()
        rows, cols = linear_sum_assignment(cost)
        out.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return out


def layer_losses(config: SlDetrConfig, layer: dict, targets: list[dict], indices, num_boxes) -> dict:
    """Unweighted loss terms of one layer for a given matching (the pre-batching code)."""
    logits, boxes = layer["logits"], layer["pred_boxes"]
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    query_idx = torch.cat([src for src, _ in indices])
    labels = torch.cat([t["class_labels"][j] for t, (_, j) in zip(targets, indices)])
    target_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(boxes.dtype)
    src = boxes[batch_idx, query_idx]
    loss_bbox = (l1_coords(src) - l1_coords(target_boxes)).abs().sum() / num_boxes
    if config.box_type == "rotated":
        sizes = torch.stack([t["size"].to(src.dtype) for t in targets])[batch_idx]
        if config.use_sync_loc:
            loc = sync_kld_loss(src, target_boxes, sizes, config.kld_tau, config.sync_gain, config.sync_kld_t_min,
                                config.sync_kld_t_max)
        else:
            loc = kld_loss(src, target_boxes, sizes, config.kld_tau)
        quality = 1 - loc.detach()
    else:
        giou = generalized_iou(src, target_boxes)
        loc = (sync_giou_loss(src, target_boxes, config.sync_gain, config.sync_giou_floor, config.sync_giou_t_min,
                              config.sync_giou_t_max) if config.use_sync_loc else 1 - giou)
        quality = giou.detach()
    if config.use_quality_cls:
        loss_cls = quality_aware_bce(logits, batch_idx, query_idx, labels, quality, num_boxes, config.quality_alpha,
                                     config.quality_gamma, config.quality_min)
    else:
        loss_cls = sigmoid_focal_loss(logits, batch_idx, query_idx, labels, num_boxes, config.focal_alpha,
                                      config.focal_gamma)
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_sync": loc.sum() / num_boxes}


def reference_criterion(config: SlDetrConfig, outputs: dict, targets: list[dict]):
    """``(total, loss_dict, matchings)``: every layer matched and scored on its own, as before batching."""
    num_boxes = torch.tensor(float(max(sum(len(t["class_labels"]) for t in targets), 1)))
    layers = [("", outputs, targets)]
    layers += [(f"d{i}.", aux, targets) for i, aux in enumerate(outputs.get("auxiliary_outputs") or [])]
    if outputs.get("enc_outputs") is not None:
        # Deformable DETR's proposals are class-agnostic; RHINO's numerics rank (and train) them by class
        agnostic = [{**t, "class_labels": torch.zeros_like(t["class_labels"])} for t in targets]
        layers.append(("enc.", outputs["enc_outputs"], targets if config.rhino_numerics else agnostic))
    weights = {"loss_cls": config.cls_loss_coefficient, "loss_bbox": config.bbox_loss_coefficient,
               "loss_sync": config.sync_loss_coefficient}
    total, loss_dict, matchings = 0.0, {}, {}
    for prefix, layer, layer_targets in layers:
        matchings[prefix] = match_layer(config, layer, layer_targets)
        for name, value in layer_losses(config, layer, layer_targets, matchings[prefix], num_boxes).items():
            loss_dict[prefix + name] = value
            total = total + weights[name] * value
    return total, loss_dict, matchings
