"""The training-time budget: counted across resumed runs, stored in checkpoints, one decision for all processes."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch.multiprocessing as mp
from transformers import TrainerControl, TrainerState

from sl_detr_hf.training import TimeBudgetCallback, TimeBudgetSchedule
from sl_detr_hf.training.time_budget import spent_seconds_in_checkpoint


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _step(callback, state, clock, seconds):
    clock.now += seconds
    state.global_step += 1
    control = TrainerControl()
    callback.on_optimizer_step(None, state, control)
    return callback.on_step_end(None, state, control)


def test_stops_when_the_budget_is_spent_and_counts_across_a_resume():
    clock = FakeClock()
    callback = TimeBudgetCallback(1.0, evaluate_on_stop=False, save_on_stop=True, clock=clock)
    schedule = TimeBudgetSchedule()
    callback.drive(schedule)
    state = TrainerState()
    callback.on_train_begin(None, state, TrainerControl())
    control = _step(callback, state, clock, 25.0)
    assert not control.should_training_stop and callback.spent_seconds == 25.0 and schedule.fraction == 25 / 60
    saved = json.loads(json.dumps(callback.state()))  # what trainer_state.json keeps
    assert saved["attributes"] == {"spent_seconds": 25.0}

    # a new process resumes: 35 s are left, whatever the clock says
    clock2 = FakeClock(now=5_000.0)
    resumed = TimeBudgetCallback(1.0, evaluate_on_stop=False, save_on_stop=True, clock=clock2)
    resumed.drive(schedule2 := TimeBudgetSchedule())
    resumed.resume_from(saved["attributes"]["spent_seconds"])
    assert schedule2.fraction == pytest.approx(25 / 60)
    resumed.on_train_begin(None, state, TrainerControl())
    assert not _step(resumed, state, clock2, 30.0).should_training_stop  # 55 s spent
    control = _step(resumed, state, clock2, 6.0)                          # 61 s: the budget is spent
    assert control.should_training_stop and control.should_save and not control.should_evaluate
    assert resumed.spent_seconds == 61.0 and schedule2.fraction == 1.0


def test_spent_seconds_read_from_a_checkpoint(tmp_path):
    callback = TimeBudgetCallback(2.0)
    callback.resume_from(42.5)
    state = TrainerState(stateful_callbacks=[callback])
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    assert spent_seconds_in_checkpoint(tmp_path) == 42.5
    TrainerState().save_to_json(str(tmp_path / "trainer_state.json"))  # a run without a budget
    assert spent_seconds_in_checkpoint(tmp_path) is None
    assert spent_seconds_in_checkpoint(tmp_path / "missing") is None


def test_rejects_a_budget_that_is_not_positive():
    with pytest.raises(ValueError, match="max_minutes"):
        TimeBudgetCallback(0)


def test_progress_bar_starts_at_the_time_already_spent(capsys):
    clock = FakeClock()
    callback = TimeBudgetCallback(1.0, progress=True, clock=clock)
    callback.resume_from(30.0)
    state = TrainerState()
    callback.on_train_begin(None, state, TrainerControl())
    assert callback.bar is not None and callback.bar.n == 30 and callback.bar.total == 60
    _step(callback, state, clock, 10.0)
    assert callback.bar.n == 40
    callback.on_train_end(None, state, TrainerControl())
    assert callback.bar is None and "training (time budget)" in capsys.readouterr().err


def _two_process_worker(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        # rank 1's clock runs 1.7x as fast: alone it would stop two steps earlier than rank 0
        clock = FakeClock()
        callback = TimeBudgetCallback(10 / 60, clock=clock)
        state = TrainerState()
        callback.on_train_begin(None, state, TrainerControl())
        while not _step(callback, state, clock, 1.0 if rank == 0 else 1.7).should_training_stop:
            pass
        results[rank] = (state.global_step, callback.spent_seconds)
    finally:
        dist.destroy_process_group()


def test_every_process_stops_at_the_step_process_zero_decides():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_two_process_worker, args=(port, results), nprocs=2, join=True)
    assert results[0] == results[1] == (10, 10.0)


def test_trainer_restores_the_spent_time_when_resuming(tmp_path):
    from _tiny_sl_detr import tiny_model

    from sl_detr_hf.training import SlDetrTrainer, paper_training_arguments

    checkpoint = tmp_path / "checkpoint-7"
    checkpoint.mkdir()
    done = TimeBudgetCallback(5.0)
    done.resume_from(120.0)
    TrainerState(global_step=7, stateful_callbacks=[done]).save_to_json(str(checkpoint / "trainer_state.json"))
    args = paper_training_arguments(str(tmp_path), max_steps=10, use_cpu=True)
    trainer = SlDetrTrainer(model=tiny_model(), args=args, time_budget_minutes=5.0)
    with pytest.raises(Exception):  # noqa: B017 - the fake checkpoint has no weights; the count is read first
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.time_budget.spent_seconds == 120.0
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    assert trainer.lr_scheduler.lr_lambdas[0].fraction == pytest.approx(120 / 300)


def test_a_scheduler_file_pickled_by_the_previous_release_is_rebuilt_from_the_step(tmp_path, caplog):
    """91dbc22's TimeBudgetSchedule pickled `time.monotonic` into scheduler.pt, which weights_only refuses."""
    import time

    import torch
    from _tiny_sl_detr import tiny_model

    from sl_detr_hf.training import SlDetrTrainer, paper_training_arguments

    args = paper_training_arguments(str(tmp_path), max_steps=10, use_cpu=True)
    trainer = SlDetrTrainer(model=tiny_model(), args=args, time_budget_minutes=5.0)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    checkpoint = tmp_path / "checkpoint-7"
    checkpoint.mkdir()
    torch.save(trainer.optimizer.state_dict(), checkpoint / "optimizer.pt")
    torch.save({"last_epoch": 7, "lr_lambdas": [{"clock": time.monotonic, "budget_seconds": 300.0}]},
               checkpoint / "scheduler.pt")
    trainer.state.global_step = 7
    trainer._load_optimizer_and_scheduler(str(checkpoint))
    assert trainer.lr_scheduler.last_epoch == 7 and "does not load" in caplog.text
