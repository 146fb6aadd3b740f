"""Hybrid matching (H-DETR): an extra group of one-to-many queries at training time.

The one-to-one matching of DETR gives each object one positive query per layer, so its box regression learns
from few examples per step; dense detectors (YOLO's task-aligned assigner, DETA) give each object many. H-DETR
("DETRs with Hybrid Matching", Jia et al., CVPR 2023) keeps the one-to-one queries for inference and adds, at
training time only, ``T`` further queries that run through the same decoder and heads, see neither the matching
queries nor the denoising queries (and are seen by neither), and are matched one-to-many: each target takes its
``k`` best of them (``config.hybrid_k``). Their losses are the same `SlDetrLoss` terms, normalized by
``k * num_boxes`` and weighted by ``config.hybrid_loss_coefficient``.

They start as the matching queries do, from a `SlDetrMixedQuerySelection` of their own (`SlDetrModel.
hybrid_queries`): reference boxes from the top-``T`` encoder proposals (plain top-k, detached), learned content
embeddings. [`hybrid_attention_mask`] extends the denoising mask (or builds one) to the layout
``[denoising | matching | hybrid]``.

Inference is unchanged (no hybrid queries): a trained model computes what the same model without the branch
computes.

Ships with `trust_remote_code` checkpoints: imports only torch.
"""

from __future__ import annotations

import torch

__all__ = ["hybrid_attention_mask"]


def hybrid_attention_mask(mask: torch.Tensor | None, num_before: int, num_hybrid: int,
                          device: torch.device) -> torch.Tensor:
    """The decoder self-attention mask with ``num_hybrid`` hybrid queries appended.

    Args:
        mask: ``(P, P)`` bool (``True`` = blocked), the mask of the first ``P = num_before`` queries (denoising
            and matching queries), or ``None`` when they attend to each other freely.
        num_before: ``P``, the queries before the hybrid ones.
        num_hybrid: ``T``.

    Returns:
        ``(P + T, P + T)`` bool: the first ``P`` keep their mask and cannot see the hybrid queries; the hybrid
        queries see each other only.
    """
    total = num_before + num_hybrid
    out = torch.ones(total, total, dtype=torch.bool, device=device)
    out[:num_before, :num_before] = False if mask is None else mask.to(device)
    out[num_before:, num_before:] = False
    return out
