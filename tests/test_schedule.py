"""The wall-clock learning-rate schedule of time-limited runs (`sl-detr demo`) and the demo's config overrides."""

import math

import pytest
import torch

from sl_detr_hf.commands.demo import parse_config_overrides
from sl_detr_hf.training import TimeBudgetSchedule


def test_warmup_then_cosine_over_the_spent_fraction():
    schedule = TimeBudgetSchedule(warmup_steps=3, min_ratio=0.1)
    assert [schedule(s) for s in range(3)] == [0.25, 0.5, 0.75]     # warmup ignores the time
    assert schedule(3) == pytest.approx(1.0)                          # no time spent
    schedule.fraction = 0.25
    assert schedule(50) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    schedule.fraction = 0.5
    assert schedule(51) == pytest.approx(0.55)
    schedule.fraction = 7.0                                           # past the budget: stays at the floor
    assert schedule(52) == pytest.approx(0.1)


def test_drives_lambda_lr_and_its_state_loads_weights_only(tmp_path):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.2)
    schedule = TimeBudgetSchedule(warmup_steps=0, min_ratio=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)
    schedule.fraction = 1.0
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    torch.save(scheduler.state_dict(), tmp_path / "scheduler.pt")  # what Trainer writes into a checkpoint
    state = torch.load(tmp_path / "scheduler.pt", weights_only=True)  # what Trainer reads back on resume
    assert state["lr_lambdas"][0] == {"warmup_steps": 0, "min_ratio": 0.0, "fraction": 1.0}


@pytest.mark.parametrize("kwargs", [{"warmup_steps": -1}, {"min_ratio": 1.5}])
def test_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TimeBudgetSchedule(**kwargs)


def test_config_overrides():
    assert parse_config_overrides("num_denoising=0, rotated_sampling=none,look_forward_twice=False,"
                                  "box_noise_scale=0.4,dynamic_denoising=None") == {
        "num_denoising": 0, "rotated_sampling": "none", "look_forward_twice": False, "box_noise_scale": 0.4,
        "dynamic_denoising": None}
    assert parse_config_overrides("") == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        parse_config_overrides("num_denoising")


def test_trainer_uses_the_time_schedule(tmp_path):
    from _tiny_sl_detr import tiny_model

    from sl_detr_hf.training import SlDetrTrainer, paper_training_arguments

    args = paper_training_arguments(str(tmp_path), learning_rate=1e-3, warmup_steps=2, max_steps=10,
                                    use_cpu=True)
    trainer = SlDetrTrainer(model=tiny_model(), args=args, time_budget_minutes=5.0)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    schedule = trainer.lr_scheduler.lr_lambdas[0]
    assert isinstance(schedule, TimeBudgetSchedule) and schedule.warmup_steps == 2
    assert trainer.time_budget.budget_seconds == 300.0 and trainer.time_budget.schedule is schedule
    # first warmup step: every group at 1 / (warmup + 1) of its own base rate (backbone groups at 0.1x)
    for group, base in zip(trainer.optimizer.param_groups, trainer.lr_scheduler.base_lrs):
        assert group["lr"] == pytest.approx(base / 3)
    assert sorted({round(b, 12) for b in trainer.lr_scheduler.base_lrs}) == [1e-4, 1e-3]

    plain = SlDetrTrainer(model=tiny_model(), args=args)
    plain.create_optimizer_and_scheduler(num_training_steps=10)
    assert not isinstance(plain.lr_scheduler, torch.optim.lr_scheduler.LambdaLR) or not isinstance(
        plain.lr_scheduler.lr_lambdas[0], TimeBudgetSchedule)
