"""Processes launched together (``torchrun``, ``accelerate launch``) on a machine without a GPU train one model.

transformers' `TrainingArguments` set the device up in ``__post_init__``: on a machine without a GPU (or another
torch accelerator) and without ``use_cpu``, each of several launched processes gets a state of its own, not a
distributed one, and trains alone on all the data into the same output folder (transformers only warns that "the
process group is initialized, but parallel_mode != DISTRIBUTED"). :func:`distribute_cpu_processes` sets what
``--use_cpu`` sets before the arguments are built, so the processes share the data with DDP over gloo.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

__all__ = ["distribute_cpu_processes"]


def distribute_cpu_processes(environ: MutableMapping[str, str] | None = None,
                             accelerator_available: bool | None = None) -> int:
    """Set ``ACCELERATE_USE_CPU=true`` (what ``--use_cpu`` sets) in ``environ`` (default ``os.environ``) when
    ``WORLD_SIZE`` > 1 and no torch accelerator is present; call it before `TrainingArguments` are built. Returns the
    number of processes it did so for, else 0 (one process, a GPU, or ``ACCELERATE_USE_CPU`` already set)."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 0
    if world <= 1 or environ.get("ACCELERATE_USE_CPU"):
        return 0
    if accelerator_available is None:
        import torch

        accelerator_available = torch.accelerator.is_available()  # CUDA, XPU, MPS, ... (torch >= 2.6)
    if accelerator_available:
        return 0
    environ["ACCELERATE_USE_CPU"] = "true"
    return world
