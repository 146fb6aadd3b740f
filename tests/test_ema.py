"""The weight average (`ModelEma`) by hand, and through `SlDetrTrainer(ema_decay=...)`: checkpoints, resume,
evaluation of the average while training, the model taking the average at the end."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_training import IMAGE_SIZE, tiny_model
from torch import nn
from transformers import TrainerCallback

from sl_detr_hf import SlDetrImageProcessor
from sl_detr_hf.data import load_dota, make_synthetic_dota
from sl_detr_hf.training import (
    EmaCallback,
    ModelEma,
    SlDetrTrainer,
    make_collator,
    paper_training_arguments,
    prepare_dataset,
)
from sl_detr_hf.training.ema import EMA_FILE


def test_update_is_the_hand_computed_average():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
        model.bias.fill_(0.0)
    ema = ModelEma(model, decay=0.9, warmup_steps=0)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, -2.0]]))
        model.bias.fill_(1.0)
    ema.update(model)
    assert ema.shadow["weight"][0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2])
    assert ema.shadow["bias"].tolist() == pytest.approx([0.1])
    ema.update(model)  # same weights again: 0.9 * 0.1 + 0.1 * 1
    assert ema.shadow["bias"].tolist() == pytest.approx([0.19])


def test_warmup_ramps_the_decay_from_zero():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEma(model, decay=0.9, warmup_steps=10)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d1 = 0.9 * (1 - math.exp(-1 / 10))  # 0.0856...: the first update nearly takes the weights
    assert ema.current_decay() == pytest.approx(d1)
    assert ema.shadow["weight"].item() == pytest.approx(1 - d1)
    for _ in range(199):
        ema.update(model)
    assert ema.current_decay() == pytest.approx(0.9 * (1 - math.exp(-20)))


def test_float_buffers_are_averaged_and_counters_left_alone():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEma(model, decay=0.5, warmup_steps=0)
    assert "1.running_mean" in ema.shadow and "1.num_batches_tracked" not in ema.shadow
    model.train()
    model(torch.randn(8, 3) + 4.0)  # moves the running mean towards 4
    ema.update(model)
    assert torch.allclose(ema.shadow["1.running_mean"], model[1].running_mean / 2)
    ema.copy_to(model)
    assert model[1].num_batches_tracked.item() == 1


def test_tied_weights_are_averaged_once():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[1].weight = model[0].weight  # a shared head, as SL-DETR ties its decoder's heads to the top-level ones
    ema = ModelEma(model, decay=0.5, warmup_steps=0)
    assert sorted(ema.shadow) == ["0.bias", "0.weight", "1.bias"]
    with torch.no_grad():
        ema.shadow["0.weight"].fill_(3.0)
    ema.copy_to(model)
    assert torch.all(model[1].weight == 3.0)


def test_applied_to_swaps_in_the_average_and_restores_even_on_error():
    model = nn.Linear(2, 2)
    ema = ModelEma(model, decay=0.5, warmup_steps=0)
    with torch.no_grad():
        ema.shadow["weight"].fill_(7.0)
    own = model.weight.detach().clone()
    with ema.applied_to(model):
        assert torch.all(model.weight == 7.0)
    assert torch.equal(model.weight, own)
    with pytest.raises(RuntimeError, match="boom"), ema.applied_to(model):
        raise RuntimeError("boom")
    assert torch.equal(model.weight, own)


def test_bad_arguments_and_mismatched_states_are_refused():
    with pytest.raises(ValueError, match="decay"):
        ModelEma(nn.Linear(1, 1), decay=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        ModelEma(nn.Linear(1, 1), warmup_steps=-1)
    with pytest.raises(ValueError, match="decay"):
        EmaCallback(decay=1.5, warmup_steps=0)  # at construction, not when training starts
    ema = ModelEma(nn.Linear(2, 2))
    with pytest.raises(KeyError, match="names differ"):
        ema.load_state_dict(ModelEma(nn.Linear(2, 2, bias=False)).state_dict())
    with pytest.raises(ValueError, match="shape"):
        ema.load_state_dict(ModelEma(nn.Linear(3, 2)).state_dict())
    with pytest.raises(KeyError, match="another architecture"):
        ema.update(nn.Linear(2, 2, bias=False))
    restored = ModelEma(nn.Linear(2, 2), decay=0.1, warmup_steps=3)
    ema.updates = 5
    restored.load_state_dict(ema.state_dict())
    assert (restored.decay, restored.warmup_steps, restored.updates) == (0.9999, 2000, 5)
    assert torch.equal(restored.shadow["weight"], ema.shadow["weight"])


# ------------------------------------------------------------------------------------------ trainer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema_data")
    make_synthetic_dota(root, num_images=8, image_size=IMAGE_SIZE, seed=5)
    processor = SlDetrImageProcessor(size={"shortest_edge": IMAGE_SIZE, "longest_edge": IMAGE_SIZE}, max_detections=30)
    return prepare_dataset(load_dota(root), processor), processor


class RecordBias(TrainerCallback):
    """The class head's bias after every optimizer step (runs before the EMA callback, added later)."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen.append(model.class_embed[-1].bias.detach().clone())

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen.append(model.class_embed[-1].bias.detach().clone())


def make_trainer(tmp_path: Path, dataset, max_steps: int, callbacks=(), **ema) -> SlDetrTrainer:
    data, processor = dataset
    args = paper_training_arguments(str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=max_steps,
                                    learning_rate=1e-2, save_strategy="steps", save_steps=2, logging_steps=1,
                                    use_cpu=True, disable_tqdm=True, seed=0)
    return SlDetrTrainer(model=tiny_model(), args=args, train_dataset=data, eval_dataset=data,
                         data_collator=make_collator(), processing_class=processor, callbacks=list(callbacks), **ema)


def test_trainer_keeps_the_average_saves_it_and_the_model_takes_it(tmp_path, dataset):
    record = RecordBias()
    trainer = make_trainer(tmp_path, dataset, 4, [record], ema_decay=0.5, ema_warmup_steps=0)
    trainer.train()
    expected = record.seen[0]
    for weights in record.seen[1:]:
        expected = 0.5 * expected + 0.5 * weights
    assert len(record.seen) == 5 and not torch.allclose(record.seen[-1], expected)
    assert torch.allclose(trainer.model.class_embed[-1].bias, expected, atol=1e-6)  # the model took the average
    saved = torch.load(tmp_path / "run" / "checkpoint-2" / EMA_FILE, weights_only=True)
    assert saved["updates"] == 2
    at_two = 0.25 * record.seen[0] + 0.25 * record.seen[1] + 0.5 * record.seen[2]
    name = next(n for n in saved["shadow"] if n.endswith("class_embed.1.bias"))
    assert torch.allclose(saved["shadow"][name], at_two, atol=1e-6)

    resumed = make_trainer(tmp_path, dataset, 4, ema_decay=0.5, ema_warmup_steps=0)
    resumed.train(resume_from_checkpoint=True)  # the last checkpoint (4): its average, then no new step
    assert resumed.ema_callback.ema.updates == 4
    resumed = make_trainer(tmp_path, dataset, 6, ema_decay=0.5, ema_warmup_steps=0)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.ema_callback.ema.updates == 2 + 4  # restored from checkpoint-2, then steps 3-6


def test_a_checkpoint_without_an_average_restarts_it_with_a_warning(tmp_path, dataset, caplog):
    make_trainer(tmp_path, dataset, 2).train()  # no EMA: checkpoint-2 has no ema.pt
    resumed = make_trainer(tmp_path, dataset, 3, ema_decay=0.5, ema_warmup_steps=0)
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert resumed.ema_callback.ema.updates == 1
    assert any(EMA_FILE in record.getMessage() for record in caplog.records)


def test_evaluation_while_training_scores_the_average(tmp_path, dataset):
    trainer = make_trainer(tmp_path, dataset, 1, ema_decay=0.5, ema_warmup_steps=0)
    model = trainer.model
    own_loss = trainer.evaluate()["eval_loss"]  # no average yet: the model's own weights
    callback = trainer.ema_callback
    callback.ema = ModelEma(model, 0.5, 0)
    with torch.no_grad():
        next(t for n, t in callback.ema.shadow.items() if n.endswith("class_embed.1.bias")).fill_(5.0)
    own = {n: t.clone() for n, t in model.state_dict().items()}
    averaged_loss = trainer.evaluate()["eval_loss"]
    assert averaged_loss != pytest.approx(own_loss)  # scored with the confident (bias 5) average
    assert all(torch.equal(own[n], t) for n, t in model.state_dict().items())  # own weights back afterwards
    callback.in_model = True  # after training the model holds the average: evaluate as it is
    assert trainer.evaluate()["eval_loss"] == pytest.approx(own_loss)
