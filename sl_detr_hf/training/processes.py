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
    """Make a multi-process CPU launch distributed: returns the number of processes it did so for, else 0.

    ``torchrun`` / ``accelerate launch`` start several processes (``WORLD_SIZE`` > 1); on a machine without a GPU,
    `TrainingArguments` then sets up one *independent* run per process, each training on all the data and writing
    the same output folder, unless told that the CPU is the device (``--use_cpu``). This sets
    ``ACCELERATE_USE_CPU=true`` (what ``--use_cpu`` does) in ``environ`` (default ``os.environ``) before the
    arguments are parsed, so the processes train one model with DDP over gloo. Nothing changes with one process, with
    a GPU (or another torch accelerator), or when ``ACCELERATE_USE_CPU`` is already set.
    """
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 0
    if world <= 1 or environ.get("ACCELERATE_USE_CPU"):
        return 0
    if accelerator_available is None:
        import torch

        accelerator = getattr(torch, "accelerator", None)
        accelerator_available = (accelerator.is_available() if accelerator is not None
                                 else torch.cuda.is_available())
    if accelerator_available:
        return 0
    environ["ACCELERATE_USE_CPU"] = "true"
    return world
