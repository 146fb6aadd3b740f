"""A learning-rate schedule that spans a wall-clock budget instead of a step count.

A run limited by time (``sl-detr demo``: 8 minutes) does not know its step count in advance; a cosine schedule
over ``max_steps`` then stops near its peak learning rate, and the last steps, where a DETR's mAP climbs most,
never run at a low rate. :class:`TimeBudgetSchedule` warms up linearly over ``warmup_steps`` and then follows a
cosine over the elapsed fraction of the budget, so the rate reaches ``min_ratio`` just as the time runs out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["TimeBudgetSchedule"]


class TimeBudgetSchedule:
    """Learning-rate factor for `torch.optim.lr_scheduler.LambdaLR`: linear warmup, then cosine over time.

    Args:
        budget_minutes: the training time budget; the clock starts at the first call (the scheduler's creation,
            when training starts) or at :meth:`start`.
        warmup_steps: steps of linear warmup from ``1 / (warmup_steps + 1)`` to 1.
        min_ratio: the factor the cosine ends at (and stays at once the budget is spent).
        clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, budget_minutes: float, warmup_steps: int = 0, min_ratio: float = 0.01,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if budget_minutes <= 0:
            raise ValueError(f"`budget_minutes` must be > 0, got {budget_minutes!r}")
        if warmup_steps < 0:
            raise ValueError(f"`warmup_steps` must be >= 0, got {warmup_steps!r}")
        if not 0 <= min_ratio <= 1:
            raise ValueError(f"`min_ratio` must be in [0, 1], got {min_ratio!r}")
        self.budget_seconds = budget_minutes * 60.0
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio
        self.clock = clock
        self.started_at: float | None = None

    def start(self) -> None:
        """Start (or restart) the clock."""
        self.started_at = self.clock()

    def fraction(self) -> float:
        """Elapsed fraction of the budget in ``[0, 1]``."""
        if self.started_at is None:
            self.start()
        return min(1.0, max(0.0, (self.clock() - self.started_at) / self.budget_seconds))

    def __call__(self, step: int) -> float:
        frac = self.fraction()
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))
