"""Box geometry, Gaussians: a rotated box as a 2-D Gaussian, KL divergence (one pair or every pair), GWD.

Boxes are ``(cx, cy, w, h, theta)``, theta in radians (any range: the formulas have period pi), sides in pixels
(see `geometry_conversions` for the convention). A box is the Gaussian ``mu = (cx, cy)``,
``Sigma = R(theta) diag(w^2 / 4, h^2 / 4) R(theta)^T``: half sides as standard deviations (docs/losses.md#kld).
Shapes: ``(..., 5)`` pairs -> ``(...)``; the pairwise form ``(B, Q, 5)`` x ``(B, T, 5)`` -> ``(B, Q, T)``. Sides are
clamped to at least ``EPS`` pixels, so degenerate boxes give large but finite divergences and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .geometry_conversions import EPS, check_boxes

__all__ = ["gaussian_covariance", "gwd", "kld", "kld_to_loss", "pairwise_kld", "rbox_to_gaussian", "rotate_diagonal"]


def rotate_diagonal(a: Tensor, b: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``R(theta) diag(a, b) R(theta)^T`` as its entries ``(xx, yy, xy)``; ``a``, ``b``, ``theta`` broadcast."""
    cos, sin = torch.cos(theta), torch.sin(theta)
    return a * cos.square() + b * sin.square(), a * sin.square() + b * cos.square(), (a - b) * cos * sin


def gaussian_covariance(w: Tensor, h: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(sxx, syy, sxy)`` of ``Sigma = R diag(w^2/4, h^2/4) R^T`` (no input checks: also for traced graphs)."""
    return rotate_diagonal(w.square() / 4, h.square() / 4, theta)


def rbox_to_gaussian(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """2-D Gaussian of rotated boxes: ``(..., 5)`` -> ``mu (..., 2)`` and ``sigma (..., 2, 2)``."""
    check_boxes(boxes, "boxes")
    cx, cy, w, h, theta = boxes.unbind(-1)
    sxx, syy, sxy = gaussian_covariance(w, h, theta)
    sigma = torch.stack((torch.stack((sxx, sxy), -1), torch.stack((sxy, syy), -1)), -2)
    return torch.stack((cx, cy), -1), sigma


def _check_pair(pred: Tensor, target: Tensor) -> None:
    check_boxes(pred, "pred")
    check_boxes(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"`pred` and `target` must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")


def kld(pred: Tensor, target: Tensor) -> Tensor:
    """Kullback-Leibler divergence ``KL(N_target || N_pred)`` of the boxes' Gaussians, pair by pair.

    ``d = (maha + tr(Sigma_p^-1 Sigma_t) + ln det Sigma_p - ln det Sigma_t) / 2 - 1``, computed in the predicted box's
    frame (closed form, no matrix inverse), so it is stable and exactly 0 for identical boxes.

    Args:
        pred, target: ``(..., 5)`` pixel rotated boxes, same shape.
    Returns:
        ``(...)`` divergences, ``>= 0``.
    """
    _check_pair(pred, target)
    pcx, pcy, pw, ph, pt = pred.unbind(-1)
    tcx, tcy, tw, th, tt = target.unbind(-1)
    pw, ph, tw, th = (s.clamp_min(EPS) for s in (pw, ph, tw, th))
    cos, sin = torch.cos(pt), torch.sin(pt)
    dx, dy = tcx - pcx, tcy - pcy
    du = cos * dx + sin * dy  # centre offset in the predicted box's frame
    dv = -sin * dx + cos * dy
    maha = 4 * (du.square() / pw.square() + dv.square() / ph.square())
    dcos, dsin = torch.cos(tt - pt).square(), torch.sin(tt - pt).square()
    ta, tb = tw.square(), th.square()
    trace = (ta * dcos + tb * dsin) / pw.square() + (ta * dsin + tb * dcos) / ph.square()
    logdet = 2 * (torch.log(pw) + torch.log(ph) - torch.log(tw) - torch.log(th))
    return (0.5 * (maha + trace + logdet) - 1).clamp_min(0)


def pairwise_kld(pred: Tensor, target: Tensor) -> Tensor:
    """``KL(N_target_j || N_pred_i)`` for every pair of pixel boxes, as one batched matrix product.

    The divergence of :func:`kld`, expanded as
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
    a11, a22, a12 = rotate_diagonal(4 / pw.square(), 4 / ph.square(), pt)  # A = Sigma_p^-1
    ax, ay = a11 * px + a12 * py, a12 * px + a22 * py  # A mu_p
    quad_p = ax * px + ay * py + 2 * (torch.log(pw) + torch.log(ph))
    ones = torch.ones_like(px)
    feat_p = torch.stack((a11, 2 * a12, a22, -2 * ax, -2 * ay, quad_p, ones), dim=-1)  # (B, Q, 7)
    s11, s22, s12 = gaussian_covariance(tw, th, tt)
    feat_t = torch.stack((tx.square() + s11, tx * ty + s12, ty.square() + s22, tx, ty, torch.ones_like(tx),
                          -2 * (torch.log(tw) + torch.log(th))), dim=-2)  # (B, 7, T)
    return (0.5 * torch.bmm(feat_p, feat_t) - 1).clamp_min(0)


def kld_to_loss(d: Tensor, tau: float) -> Tensor:
    """The KLD loss (and matching cost) ``1 - 1 / (tau + ln(1 + d))`` of divergences ``d``, any shape."""
    return 1 - 1 / (tau + torch.log1p(d)).clamp_min(EPS)


def gwd(pred: Tensor, target: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance of the boxes' Gaussians (for ablations), ``(..., 5)`` -> ``(...)``.

    ``||mu_p - mu_t||^2 + tr(S_p) + tr(S_t) - 2 sqrt(tr(S_p S_t) + 2 sqrt(det(S_p S_t)))``.
    """
    _check_pair(pred, target)
    mu_p, s_p = rbox_to_gaussian(pred)
    mu_t, s_t = rbox_to_gaussian(target)
    center = (mu_p - mu_t).square().sum(-1)
    tr_p = s_p.diagonal(dim1=-2, dim2=-1).sum(-1)
    tr_t = s_t.diagonal(dim1=-2, dim2=-1).sum(-1)
    tr_pt = (s_p * s_t.transpose(-1, -2)).sum((-1, -2))
    det_sqrt = (pred[..., 2] * pred[..., 3] * target[..., 2] * target[..., 3]) / 16  # sqrt(det S_p det S_t)
    cross = (tr_pt + 2 * det_sqrt).clamp_min(EPS).sqrt()
    return (center + tr_p + tr_t - 2 * cross).clamp_min(0)
