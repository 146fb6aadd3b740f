"""Convolution + batch norm as one convolution at inference, without changing the model.

In evaluation a batch norm is an affine map per channel, `y = x * s + (beta - mean * s)` with `s = gamma /
sqrt(var + eps)`; after a convolution it folds into the convolution's weights and bias (torch's
`fuse_conv_bn_weights`, what Ultralytics' `model.fuse()` does before predicting): one pass over the feature map
instead of two. For the tiny model's backbone on a CPU at batch 1 that is 4-5 % of the forward
(BENCHMARKS.md, "Batch norms folded at inference").

Installed by `SlDetrModel` on the backbone's convolution + `nn.BatchNorm2d` pairs: transformers' `ResNetConvLayer`
and `ResNetShortCut` (their class becomes a subclass whose forward calls [`conv_norm`], as
`torch.nn.utils.parametrize` swaps a module's class) and the light stem (`stem_sl_detr.py`). Nothing else
changes: the modules keep their parameters, buffers and state-dict keys; the folded weights are a cache on the
convolution, rebuilt when any of the six tensors changes (an optimizer step, `load_state_dict`, `.to()`). The
folded path runs only where it computes the same function and nothing needs the unfolded one: the norm in
evaluation mode with running statistics, no gradient needed, not while exporting or compiling (the exported graph
keeps both nodes; ONNX runtimes fold them themselves). Frozen batch norms (pretrained backbones, converted
checkpoints) are left alone: their outputs match the original code's to the bit.

This file ships with `trust_remote_code` checkpoints: it imports only torch and transformers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from transformers.models.resnet.modeling_resnet import ResNetConvLayer, ResNetShortCut

__all__ = ["SlDetrResNetConvLayer", "SlDetrResNetShortCut", "conv_norm", "folds", "use_folded_conv_norms",
           "use_unfolded_conv_norms"]

_CACHE = "_sl_detr_folded"  # attribute of the convolution: (key, weight, bias)
_UNFOLDED = "_sl_detr_unfolded"  # attribute of the convolution: True where `use_unfolded_conv_norms` turned it off


def folds(conv: nn.Module, norm: nn.Module, hidden_states: torch.Tensor) -> bool:
    """Whether [`conv_norm`] folds `norm` into `conv` for this call (see the module docstring)."""
    return (
        isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d and not norm.training
        and not getattr(conv, _UNFOLDED, False)
        and norm.running_mean is not None and norm.running_var is not None
        and not (torch.is_grad_enabled() and (hidden_states.requires_grad
                                              or any(p.requires_grad for p in (*conv.parameters(),
                                                                               *norm.parameters()))))
        and not torch.onnx.is_in_onnx_export() and not torch.compiler.is_compiling()
        and not torch.compiler.is_exporting()
    )


def _folded(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded `(weight, bias)` of `conv` then `norm`, cached on `conv` until one of their tensors changes."""
    tensors = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
    key = (norm.eps, *((None if t is None else (t.data_ptr(), t._version, t.dtype, t.device)) for t in tensors))
    cached = getattr(conv, _CACHE, None)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]
    with torch.no_grad():
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
                                            norm.weight, norm.bias)
    weight, bias = weight.detach(), bias.detach()
    setattr(conv, _CACHE, (key, weight, bias))
    return weight, bias


def conv_norm(hidden_states: torch.Tensor, conv: nn.Module, norm: nn.Module) -> torch.Tensor:
    """`norm(conv(hidden_states))`, computed as one convolution with `norm` folded in where [`folds`] says so:
    `(B, C_in, H, W) -> (B, C_out, H', W')`."""
    if not folds(conv, norm, hidden_states):
        return norm(conv(hidden_states))
    weight, bias = _folded(conv, norm)
    return conv._conv_forward(hidden_states, weight, bias)


class SlDetrResNetConvLayer(ResNetConvLayer):
    """transformers' `ResNetConvLayer` (convolution, batch norm, activation) with [`conv_norm`]."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(conv_norm(hidden_states, self.convolution, self.normalization))


class SlDetrResNetShortCut(ResNetShortCut):
    """transformers' `ResNetShortCut` (1x1 convolution, batch norm) with [`conv_norm`]."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return conv_norm(input, self.convolution, self.normalization)


_FOLDING = {ResNetConvLayer: SlDetrResNetConvLayer, ResNetShortCut: SlDetrResNetShortCut}


def use_folded_conv_norms(model: nn.Module) -> nn.Module:
    """Give every transformers `ResNetConvLayer` / `ResNetShortCut` of `model` the folding forward and let every
    pair fold (in place; no parameter, buffer or key changes). Returns `model`."""
    for module in model.modules():
        if type(module) in _FOLDING:
            module.__class__ = _FOLDING[type(module)]
        module.__dict__.pop(_UNFOLDED, None)
    return model


def use_unfolded_conv_norms(model: nn.Module) -> nn.Module:
    """Compute every convolution and batch norm of `model` apart again (in place; to compare the two, as
    `benchmarks/inference_speed.py --unfolded` does). Returns `model`."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            setattr(module, _UNFOLDED, True)
            module.__dict__.pop(_CACHE, None)
    return model
