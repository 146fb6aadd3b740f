"""A training-time budget that survives resuming: the time already spent is part of the checkpoint.

:class:`TimeBudgetCallback` counts the seconds spent in training steps (``spent_seconds``), across runs: it
is a `transformers.ExportableState`, so every checkpoint's ``trainer_state.json`` holds the count under
``stateful_callbacks``, and :class:`~sl_detr_hf.training.SlDetrTrainer` reads it back when it resumes. A run
resumed with ``--max_minutes N`` therefore trains for what is left of the N minutes, and a learning rate that
follows the budget (:class:`~sl_detr_hf.training.schedule.TimeBudgetSchedule`) continues on its curve.

Under several processes the count of process 0 is broadcast at every step, so every process stops at the
same step and uses the same learning rate (a 1-element broadcast per step, only when there are several
processes). A time-limited run cannot be replayed step for step (its step count depends on the machine's
speed); the step it reached is logged and kept in ``trainer_state.json`` (``global_step``), and
``--max_steps N`` trains that many steps again (docs/training.md#time-budget-across-resumes).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

__all__ = ["TimeBudgetCallback", "spent_seconds_in_checkpoint"]

logger = logging.getLogger(__name__)


def spent_seconds_in_checkpoint(checkpoint: str | Path) -> float | None:
    """The training seconds a checkpoint's ``trainer_state.json`` records, or None where it records none (a run
    without a time budget, or a checkpoint written before the count existed)."""
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    stored = (state.get("stateful_callbacks") or {}).get(TimeBudgetCallback.__name__)
    if isinstance(stored, list):
        stored = stored[0] if stored else None
    if not isinstance(stored, dict):
        return None
    value = stored.get("attributes", {}).get("spent_seconds")
    return float(value) if isinstance(value, (int, float)) else None


class TimeBudgetCallback(TrainerCallback, ExportableState):
    """Stops training once ``max_minutes`` of training time are spent, counted across resumed runs.

    Args:
        max_minutes: the budget, in minutes of training (the time between the first step and the stop, over all
            runs that resumed one another; evaluation and saving inside it count).
        evaluate_on_stop: evaluate when the budget ends training.
        save_on_stop: save a checkpoint when the budget ends training (default: as ``evaluate_on_stop``).
        progress: draw a progress bar over the budget (seconds, step) and print the log lines; replace
            `Trainer`'s step bar with it when the step count is not known in advance.
        clock: a monotonic clock in seconds (tests pass a fake one).

    Attributes:
        spent_seconds: training seconds spent so far, the runs this one resumed included.
    """

    def __init__(self, max_minutes: float, evaluate_on_stop: bool = True, save_on_stop: bool | None = None,
                 progress: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        if not max_minutes or max_minutes <= 0:
            raise ValueError(f"`max_minutes` must be > 0, got {max_minutes!r}")
        self.max_minutes = float(max_minutes)
        self.evaluate_on_stop = evaluate_on_stop
        self.save_on_stop = evaluate_on_stop if save_on_stop is None else save_on_stop
        self.progress = progress
        self.clock = clock
        self.spent_seconds = 0.0
        self.schedule = None  # a TimeBudgetSchedule whose `fraction` follows this budget (set by the trainer)
        self.bar = None
        self._spent_before = 0.0  # at the start of this run's segment
        self._segment_start: float | None = None

    @property
    def budget_seconds(self) -> float:
        return self.max_minutes * 60.0

    def fraction(self) -> float:
        """Spent fraction of the budget, in ``[0, 1]``."""
        return min(1.0, max(0.0, self.spent_seconds / self.budget_seconds))

    def resume_from(self, spent_seconds: float) -> None:
        """Continue a run that had spent ``spent_seconds`` of training time."""
        self.spent_seconds = self._spent_before = max(0.0, float(spent_seconds))
        self._publish()

    def drive(self, schedule) -> None:
        """Make ``schedule.fraction`` (a `TimeBudgetSchedule`) follow this budget."""
        self.schedule = schedule
        self._publish()

    def _publish(self) -> None:
        if self.schedule is not None:
            self.schedule.fraction = self.fraction()

    def state(self) -> dict:
        return {"args": {"max_minutes": self.max_minutes, "evaluate_on_stop": self.evaluate_on_stop,
                         "save_on_stop": self.save_on_stop, "progress": self.progress},
                "attributes": {"spent_seconds": self.spent_seconds}}

    def _tick(self) -> float:
        """This process's count, replaced by process 0's where there are several (one decision for all)."""
        local = self._spent_before + (self.clock() - self._segment_start)
        return _broadcast_from_first_process(local)

    def on_train_begin(self, args, state, control, **kwargs):
        self._segment_start = self.clock()
        self._spent_before = self.spent_seconds
        if self.progress and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=round(self.budget_seconds), initial=min(round(self.spent_seconds),
                                                                          round(self.budget_seconds)),
                            unit="s", desc="training (time budget)",
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}")
        if self.spent_seconds > 0:
            logger.info("time budget: %.1f of %.1f minutes already spent, %.1f left", self.spent_seconds / 60,
                        self.max_minutes, max(0.0, self.budget_seconds - self.spent_seconds) / 60)

    def on_optimizer_step(self, args, state, control, **kwargs):
        # after the optimizer, before the scheduler's step: the rate it sets follows the time spent now
        self.spent_seconds = self._tick()
        self._publish()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(min(round(self.spent_seconds), self.bar.total) - self.bar.n)
            self.bar.set_postfix_str(f"step {state.global_step}", refresh=True)
        if self.spent_seconds >= self.budget_seconds:
            logger.info("time limit of %g minutes reached at step %d (a time-limited run is not step-reproducible: "
                        "--max_steps %d trains as many steps again)", self.max_minutes, state.global_step,
                        state.global_step)
            control.should_training_stop = True
            control.should_evaluate = control.should_evaluate or self.evaluate_on_stop
            control.should_save = control.should_save or self.save_on_stop
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            self.bar.write(str({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items()}))

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _broadcast_from_first_process(value: float) -> float:
    """``value`` of process 0 on every process of the default group (unchanged with one process)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return float(tensor.item())
