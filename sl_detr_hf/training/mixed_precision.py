"""bf16 mixed precision for training on a CPU that computes bf16 in hardware.

On x86 CPUs with AVX-512 BF16 or AMX (AMD Zen 4 and later, Intel Cooper Lake / Sapphire Rapids and later), oneDNN
runs bf16 convolutions and matrix products faster than float32: under bf16 autocast the tiny model's
training step on 640 x 512 frames takes 0.46 s instead of 0.73 s (BENCHMARKS.md, "bf16 on the CPU"). The matching
and the losses stay float32 (`sl_detr_hf/precision_sl_detr.py`). CPUs without those instructions emulate bf16, which
is slower than float32: there the recipe leaves precision alone.
"""

from __future__ import annotations

import torch

_NATIVE_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (x86 AVX-512 BF16 or AMX tiles, as torch detects them)."""
    checks = [getattr(torch.cpu, name, None) for name in _NATIVE_BF16_CHECKS]
    return any(check() for check in checks if callable(check))


def trains_on_cpu(use_cpu: bool) -> bool:
    """Whether `Trainer` will train on the CPU: ``--use_cpu``, or no accelerator (CUDA, MPS, XPU, ...) present."""
    if use_cpu:
        return True
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return not accelerator.is_available()
    return not torch.cuda.is_available()


def cpu_bf16_arguments(use_cpu: bool) -> dict:
    """`TrainingArguments` for bf16 autocast on the CPU (``bf16=True``, and ``use_cpu=True``, which `Trainer` asks
    for with bf16 and no GPU) when training runs on a CPU with native bf16; else ``{}``."""
    if trains_on_cpu(use_cpu) and cpu_has_native_bf16():
        return {"bf16": True, "use_cpu": True}
    return {}
