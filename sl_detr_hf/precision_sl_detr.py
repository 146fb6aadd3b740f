"""Mixed precision around SL-DETR: the network may run under `torch.autocast` (bf16 on a CPU with AVX-512 BF16 or
AMX, bf16 / fp16 on a GPU: ``--bf16 True`` in `sl-detr train`), the matching and the losses never do.

A bf16 number holds 8 significant bits: a normalized box coordinate in [0.5, 1) is rounded to a multiple of 1/256,
up to 1.25 px off in a 640 px image, and the rotated IoU, Gaussian and cost terms of the loss would be computed on
such values. The losses run on float32 copies of the predictions with autocast off.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def as_float32(value: Any) -> Any:
    """``value`` with every floating-point tensor in it (nested in dicts, lists, tuples) as float32; other values
    and float32 / float64 tensors are returned as they are (no copy)."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64) \
            else value
    if isinstance(value, dict):
        return {key: as_float32(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(as_float32(item) for item in value)
    return value


@contextmanager
def losses_in_float32(device_type: str) -> Iterator[None]:
    """Autocast off on ``device_type`` ("cpu", "cuda", ...) inside the block."""
    with torch.autocast(device_type=device_type, enabled=False):
        yield


def bf16_autocast(device_type: str, enabled: bool = True) -> torch.autocast:
    """`torch.autocast` to bf16 on ``device_type`` for inference (``enabled=False``: a no-op context).

    The network's convolutions and matrix products run in bf16, the rest in float32; cast the outputs with
    `as_float32` before ranking scores (bf16 logits keep 3 significant digits). On a CPU with AVX-512 BF16 or AMX this
    is about 1.3x the images/s at batch 1 (BENCHMARKS.md, "bf16 on the CPU"); elsewhere on a CPU it is emulated and
    slower.

    Raises:
        ValueError: autocast is not available on ``device_type``.
    """
    if enabled and not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"bf16 autocast is not available on device {device_type!r}")
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=enabled)
