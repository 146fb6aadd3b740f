"""`transformers.Trainer` for SL-DETR: paper optimizer groups and multi-process-safe detection evaluation.

Evaluation works with any number of processes: each batch's ground truth is packed next to ``logits`` and
``pred_boxes`` into batch-first tensors (:func:`~sl_detr_hf.training.metrics.select_detection_outputs`),
which `Trainer`'s own machinery pads across batches and processes and gathers (``gather_for_metrics`` drops
the duplicated samples of the last batch); :class:`~sl_detr_hf.training.metrics.DetectionMetrics` reads
them. Variable-size lists of label dicts, which `Trainer` cannot gather with gloo, never cross processes,
and the large auxiliary outputs are dropped per batch.
"""

from __future__ import annotations

import logging
import pickle

import torch
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .ema import EmaCallback
from .metrics import select_detection_outputs
from .processes import distribute_cpu_processes
from .schedule import TimeBudgetSchedule
from .time_budget import TimeBudgetCallback, spent_seconds_in_checkpoint

__all__ = ["SlDetrTrainer", "build_param_groups", "paper_training_arguments"]

logger = logging.getLogger(__name__)

LOW_LR_KEYWORDS = ("backbone", "sampling_offsets", "reference_points")
"""Parameters trained at ``lr * low_lr_multiplier`` (Deformable DETR / the paper: backbone and the
deformable attention's sampling offsets and reference points at 0.1x)."""


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    low_lr_multiplier: float = 0.1,
    low_lr_keywords: tuple[str, ...] = LOW_LR_KEYWORDS,
    no_decay_names: set[str] | None = None,
) -> list[dict]:
    """Optimizer parameter groups: {normal, low-lr} x {decay, no decay}; empty groups are dropped.

    Args:
        no_decay_names: names of parameters without weight decay (default: biases and normalization
            weights, i.e. every 1-d parameter).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        low = any(key in name for key in low_lr_keywords)
        decay = (name not in no_decay_names) if no_decay_names is not None else param.ndim > 1
        groups.setdefault((low, decay), []).append(param)
    return [
        {"params": params, "lr": lr * (low_lr_multiplier if low else 1.0),
         "weight_decay": weight_decay if decay else 0.0}
        for (low, decay), params in sorted(groups.items())
    ]


def paper_training_arguments(output_dir: str, **overrides) -> TrainingArguments:
    """`TrainingArguments` with the paper's optimizer defaults (AdamW lr 1e-4, weight decay 1e-4, grad clip
    0.1), and what detection needs (`remove_unused_columns=False`, labels named ``labels``). Launched in several
    processes on a machine without a GPU, the processes train one model on the CPU (:mod:`.processes`)."""
    defaults = dict(
        learning_rate=1e-4,
        weight_decay=1e-4,
        max_grad_norm=0.1,
        optim="adamw_torch",
        remove_unused_columns=False,
        label_names=["labels"],
        eval_do_concat_batches=True,
        report_to="none",
    )
    defaults.update(overrides)
    distribute_cpu_processes()  # several processes on a machine without a GPU: one DDP training, not one each
    return TrainingArguments(output_dir=output_dir, **defaults)


# ------------------------------------------------------------------------------------- trainer


class SlDetrTrainer(Trainer):
    """`Trainer` with the paper's parameter groups and detection evaluation.

    Args:
        low_lr_multiplier: learning-rate factor of the backbone, sampling offsets and reference points.
        time_budget_minutes: when set, the learning rate follows :class:`TimeBudgetSchedule` (linear warmup over
            ``args.warmup_steps``, then a cosine over the spent fraction of this training-time budget) instead of
            ``args.lr_scheduler_type``, and training stops when the budget is spent: the budget is the
            :class:`TimeBudgetCallback` among ``callbacks`` (one with these minutes is added when there is none).
            With any :class:`TimeBudgetCallback`, resuming a checkpoint restores the time already spent.
        ema_decay: when set, keep an exponential moving average of the weights (:class:`~.ema.ModelEma`, decay
            ramped up over ``ema_warmup_steps``): evaluation during training scores the average, checkpoints
            hold it as ``ema.pt`` (resuming restores it), and at the end of training the model takes it.
        repeat_factors: when set, one factor >= 1 per training example: the epochs are drawn by
            :class:`~sl_detr_hf.data.repeat_factors.RepeatFactorSampler` (rare classes repeated, LVIS), seeded
            with ``args.data_seed`` or else ``args.seed``, instead of a shuffle.
        All other arguments are `Trainer`'s; pass ``compute_metrics=DetectionMetrics(...)`` for mAP.
    """

    def __init__(self, *args, low_lr_multiplier: float = 0.1, time_budget_minutes: float | None = None,
                 ema_decay: float | None = None, ema_warmup_steps: int = 2000, repeat_factors=None, **kwargs):
        super().__init__(*args, **kwargs)
        if repeat_factors is not None and self.train_dataset is not None and len(repeat_factors) != len(
                self.train_dataset):
            raise ValueError(f"{len(repeat_factors)} repeat factors for {len(self.train_dataset)} training examples")
        self.repeat_factors = repeat_factors
        self.low_lr_multiplier = low_lr_multiplier
        self.time_budget_minutes = time_budget_minutes
        if time_budget_minutes is not None and self.time_budget is None:
            self.add_callback(TimeBudgetCallback(time_budget_minutes, evaluate_on_stop=False, save_on_stop=True))
        self.ema_callback = EmaCallback(ema_decay, ema_warmup_steps) if ema_decay is not None else None
        if self.ema_callback is not None:
            self.add_callback(self.ema_callback)

    def _get_train_sampler(self, train_dataset=None):
        if self.repeat_factors is None:
            return super()._get_train_sampler(train_dataset)
        from ..data.repeat_factors import RepeatFactorSampler

        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed  # as Trainer's shuffle
        return RepeatFactorSampler(self.repeat_factors, seed=seed)

    @property
    def time_budget(self) -> TimeBudgetCallback | None:
        """The :class:`TimeBudgetCallback` among the callbacks, if any."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, TimeBudgetCallback)), None)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        path = resume_from_checkpoint
        if path is True:  # Trainer's own rule; it raises a clear error when there is none
            path = get_last_checkpoint(self.args.output_dir)
        if self.ema_callback is not None:
            self.ema_callback.resume_from = str(path) if path else None
        budget = self.time_budget
        if budget is not None and path:
            spent = spent_seconds_in_checkpoint(path)
            if spent is None:
                logger.warning("%s records no training time (written without a time budget, or by an earlier "
                               "release): the %g-minute budget counts from now", path, budget.max_minutes)
            budget.resume_from(spent or 0.0)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def evaluate(self, *args, **kwargs):
        """`Trainer.evaluate`; while training with ``ema_decay`` it scores the weight average."""
        ema = self.ema_callback
        if ema is None or ema.ema is None or ema.in_model:
            return super().evaluate(*args, **kwargs)
        with ema.ema.applied_to(self.model):
            return super().evaluate(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.time_budget_minutes is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        optimizer = self.optimizer if optimizer is None else optimizer
        warmup = self.args.get_warmup_steps(num_training_steps)
        schedule = TimeBudgetSchedule(warmup_steps=warmup)
        self.time_budget.drive(schedule)
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _load_optimizer_and_scheduler(self, checkpoint):
        """`Trainer`'s; a time-budget schedule is a function of the step and of the time spent, so a scheduler
        file that does not load (pickled by an earlier release) is rebuilt from the step."""
        try:
            return super()._load_optimizer_and_scheduler(checkpoint)
        except pickle.UnpicklingError as err:  # weights_only refuses the clock an earlier release pickled
            if self.time_budget_minutes is None or checkpoint is None or not isinstance(
                    self.lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
                raise
            logger.warning("%s/scheduler.pt does not load (%s): the time-budget schedule continues from step %d",
                           checkpoint, type(err).__name__, self.state.global_step)
            self.lr_scheduler.last_epoch = self.state.global_step

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            # Trainer's own rule decides decay (norm weights and biases get none).
            decay_names = set(self.get_decay_parameter_names(opt_model))
            groups = build_param_groups(
                opt_model, self.args.learning_rate, self.args.weight_decay, self.low_lr_multiplier,
                no_decay_names={n for n, _ in opt_model.named_parameters() if n not in decay_names},
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
        return self.optimizer

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Returns ``(loss, {"logits", "pred_boxes", "gt", "gt_sizes"}, gt_sizes)``: all batch-first tensors."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            outputs = model(**inputs)
        loss = outputs.loss.detach() if getattr(outputs, "loss", None) is not None else None
        if prediction_loss_only or labels is None:
            return loss, None, None
        packed = select_detection_outputs({"logits": outputs.logits, "pred_boxes": outputs.pred_boxes}, labels)
        return loss, packed, packed["gt_sizes"]
