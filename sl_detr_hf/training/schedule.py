"""A learning-rate schedule that spans a training-time budget instead of a step count.

A run limited by time (``sl-detr demo``: 8 minutes; ``sl-detr train --max_minutes``) does not know its step
count in advance; a cosine schedule over ``max_steps`` then stops near its peak learning rate, and the last
steps, where a DETR's mAP climbs most, never run at a low rate. :class:`TimeBudgetSchedule` warms up linearly
over ``warmup_steps`` and then follows a cosine over the spent fraction of the budget, so the rate reaches
``min_ratio`` just as the time runs out.

The schedule keeps no clock: its ``fraction`` is set by
:class:`~sl_detr_hf.training.time_budget.TimeBudgetCallback`, which counts the training time across resumed runs,
so the factor is a function of the step and of the time spent, and the scheduler's state (plain numbers) loads
under ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math

__all__ = ["TimeBudgetSchedule"]


class TimeBudgetSchedule:
    """Learning-rate factor for `torch.optim.lr_scheduler.LambdaLR`: linear warmup, then cosine over time.

    Args:
        warmup_steps: steps of linear warmup from ``1 / (warmup_steps + 1)`` to 1.
        min_ratio: the factor the cosine ends at (and stays at once the budget is spent).

    Attributes:
        fraction: the spent fraction of the time budget in ``[0, 1]`` (set by the time budget's callback).
    """

    def __init__(self, warmup_steps: int = 0, min_ratio: float = 0.01) -> None:
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps!r}")
        if not 0 <= min_ratio <= 1:
            raise ValueError(f"`min_ratio` must be in [0, 1], got {min_ratio!r}")
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio
        self.fraction = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        frac = min(1.0, max(0.0, self.fraction))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
