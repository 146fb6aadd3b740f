"""An exponential moving average (EMA) of a model's weights, the form DETR-family trainers use (RT-DETR, D-FINE,
Ultralytics): ``ema = d * ema + (1 - d) * weights`` after every optimizer step, with the decay ramped up from 0 as
``d = decay * (1 - exp(-updates / warmup_steps))`` so that the average does not hold on to the random init.

The average covers every floating-point entry of the model's ``state_dict`` (parameters and buffers such as batch
norm statistics; tied weights once); integer buffers (``num_batches_tracked``) are left to the model. One fused
``_foreach_lerp_`` per update (the pairs are looked up in ``state_dict()`` each time, so that a model moved to
another device after the average was built is still followed), and no host synchronization.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["EMA_FILE", "EmaCallback", "ModelEma"]

EMA_FILE = "ema.pt"
"""The averaged weights' file inside a `Trainer` checkpoint folder (``checkpoint-<step>/ema.pt``)."""


def _check_arguments(decay: float, warmup_steps: int) -> None:
    if not 0 <= decay < 1:
        raise ValueError(f"`decay` must be in [0, 1), got {decay!r}")
    if warmup_steps < 0:
        raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps!r}")


class ModelEma:
    """EMA of ``model``'s floating-point weights.

    Args:
        model: the model being trained; the average starts as a copy of its current weights.
        decay: the decay the ramp tends to (``0 <= decay < 1``).
        warmup_steps: the ramp's time constant in updates (0: no ramp, ``decay`` from the first update).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup_steps: int = 2000) -> None:
        _check_arguments(decay, warmup_steps)
        self.decay = float(decay)
        self.warmup_steps = int(warmup_steps)
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}
        seen: set[tuple] = set()
        for name, tensor in model.state_dict().items():
            key = (tensor.data_ptr(), tensor.shape, tensor.stride())  # tied weights (shared heads): one average
            if tensor.is_floating_point() and key not in seen:
                seen.add(key)
                self.shadow[name] = tensor.detach().clone()

    def current_decay(self) -> float:
        """The decay of the latest update: ``decay * (1 - exp(-updates / warmup_steps))``."""
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup_steps))

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        state = model.state_dict()
        missing = [name for name in self.shadow if name not in state]
        if missing:
            raise KeyError(f"the model has no {missing[:3]} (the EMA was built for another architecture)")
        names = list(self.shadow)
        return [self.shadow[n] for n in names], [state[n].detach() for n in names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average towards ``model``'s current weights (call after each optimizer step)."""
        self.updates += 1
        averaged, current = self._pairs(model)
        torch._foreach_lerp_(averaged, current, 1.0 - self.current_decay())

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s weights with the average."""
        averaged, current = self._pairs(model)
        torch._foreach_copy_(current, averaged)

    @contextmanager
    def applied_to(self, model: nn.Module) -> Iterator[nn.Module]:
        """Within the block ``model`` holds the averaged weights; its own are restored afterwards (also on error)."""
        _, current = self._pairs(model)
        backup = [tensor.clone() for tensor in current]
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                torch._foreach_copy_(current, backup)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup_steps": self.warmup_steps, "updates": self.updates,
                "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise KeyError("the saved EMA does not match this model's weights "
                           f"({len(set(shadow) ^ set(self.shadow))} names differ)")
        for name, tensor in shadow.items():
            if tensor.shape != self.shadow[name].shape:
                raise ValueError(f"saved EMA entry {name!r} has shape {tuple(tensor.shape)}, the model's "
                                 f"{tuple(self.shadow[name].shape)}")
            self.shadow[name].copy_(tensor)
        self.decay, self.warmup_steps = float(state["decay"]), int(state["warmup_steps"])
        self.updates = int(state["updates"])


class EmaCallback(TrainerCallback):
    """Keeps a :class:`ModelEma` of the model `Trainer` trains (added by ``SlDetrTrainer(ema_decay=...)``).

    It starts from the weights training begins with (those of a resumed checkpoint, then that checkpoint's
    ``ema.pt`` when there is one), updates after every optimizer step, writes ``ema.pt`` into every checkpoint
    folder, and at the end of training copies the average into the model, so that what is evaluated and saved
    afterwards is the average. ``resume_from`` is set by the trainer before training starts.
    """

    def __init__(self, decay: float, warmup_steps: int) -> None:
        _check_arguments(decay, warmup_steps)  # now, not when training starts
        self.decay, self.warmup_steps = decay, warmup_steps
        self.ema: ModelEma | None = None
        self.resume_from: str | None = None
        self.in_model = False  # the model holds the average (after training)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.ema, self.in_model = ModelEma(model, self.decay, self.warmup_steps), False
        if self.resume_from is not None:
            path = Path(self.resume_from) / EMA_FILE
            if path.is_file():
                self.ema.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            else:
                logger.warning(f"{path} not found: the weight average restarts from the checkpoint's weights")

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update(model)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.ema is not None:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if folder.is_dir():
                torch.save(self.ema.state_dict(), folder / EMA_FILE)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.ema.copy_to(model)
        self.in_model = True
