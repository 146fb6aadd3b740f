"""Pieces shared by the ``sl-detr`` commands: the tiny CPU model, the time limit, the training-curve plot,
dataclass argument parsing, the data loader defaults and the model-folder check."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from ..hub import check_model_folder
from ..training.time_budget import TimeBudgetCallback

logger = logging.getLogger("sl_detr_hf")

__all__ = ["TimeLimitCallback", "check_model_folder", "default_num_workers", "keep_freed_memory_on",
           "parse_config_overrides", "parse_dataclasses", "plot_training_curves", "tiny_config_kwargs"]


def tiny_config_kwargs(num_labels: int, id2label: dict[int, str], d_model: int = 128, layers: int = 2,
                       num_queries: int = 100, box_type: str = "rotated",
                       backbone_stages: Sequence[str] = ("stage2", "stage3", "stage4"),
                       num_feature_levels: int | None = None) -> dict:
    """The `SlDetrConfig` keyword arguments of the tiny preset (`SlDetrConfig.tiny`, where it is described) for
    `num_labels` classes named by `id2label` and `box_type`: a small SL-DETR that trains on a CPU in minutes.

    ``backbone_stages`` are the ResNet stages fed to the encoder (strides 8, 16, 32 for stage2..4);
    ``num_feature_levels`` (default: one per stage) may add further stride-2 levels after the last stage.
    """
    from ..configuration_sl_detr import SlDetrConfig

    return {**SlDetrConfig.tiny_kwargs(id2label, d_model, layers, num_queries, backbone_stages, num_feature_levels),
            "num_labels": num_labels, "box_type": box_type}


def keep_freed_memory_on(device) -> bool:
    """The commands' allocator setting: on a CPU, glibc keeps the memory it frees (`training/allocator.py`: no
    fresh `mmap` and page faults per large tensor; a quarter of a training step, a tenth of an image's inference on
    one core, BENCHMARKS.md). GPU runs and ONNX Runtime (its own arena) keep glibc's defaults; the library itself
    (`pipeline()`, `from_pretrained`) never sets it. Returns whether it is in effect."""
    import torch

    from ..training import allocator

    if torch.device(device).type != "cpu":
        return False
    return allocator.keep_freed_memory()


TimeLimitCallback = TimeBudgetCallback
"""The time limit of the commands: :class:`~sl_detr_hf.training.time_budget.TimeBudgetCallback` (training time
counted across resumed runs, stored in the checkpoints; optional progress bar over the budget)."""


def plot_training_curves(log_history: list[dict], path: Path) -> Path:
    """Loss (and eval mAP when present) against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h.get("eval_mAP", h.get("eval_map"))) for h in log_history
             if h.get("eval_mAP", h.get("eval_map")) is not None]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="training loss", color="tab:blue")
        ax.legend(loc="upper left")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        ax2.plot(*zip(*evals), "o-", color="tab:orange", label="eval mAP50")
        ax2.set_ylabel("mAP50")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="upper right")
    ax.set_title("SL-DETR training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_config_overrides(text: str) -> dict:
    """``"a=1,b=none,c=True"`` -> ``{"a": 1, "b": "none", "c": True}`` (ints, floats, booleans, None, strings)."""
    overrides: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --config entries must be KEY=VALUE, got {item!r}")
        raw = raw.strip()
        lowered = raw.lower()
        if lowered in ("true", "false"):
            value: object = lowered == "true"
        elif lowered == "null" or raw == "None":
            value = None
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        overrides[key.strip()] = value
    return overrides


def parse_dataclasses(prog: str, classes: tuple, argv: Sequence[str], return_given: bool = False):
    """Parse ``argv`` (options, or a single JSON / YAML file of them) into the dataclasses ``classes``.

    With ``return_given=True`` also returns the set of field names the user gave (in the file, or on the command
    line in any spelling the parser accepts: ``--learning-rate``, ``--learning_rate=...``, ``--no_x``), decided
    by the parser itself, so that defaults filled in later never overwrite a given value.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(classes, prog=prog)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        path = Path(argv[0]).resolve()
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        parsed = loader(str(path))
        given = set(_read_options_file(path)) if return_given else set()
    else:
        parsed = parser.parse_args_into_dataclasses(args=list(argv))
        given = _given_on_command_line(HfArgumentParser(classes, prog=prog), argv) if return_given else set()
    return (parsed, given) if return_given else parsed


def _read_options_file(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def _given_on_command_line(parser, argv: Sequence[str]) -> set[str]:
    """The destinations ``argv`` sets: the same parser with every default suppressed keeps only those."""
    import argparse

    for action in parser._actions:  # argparse has no public way to list actions
        if not isinstance(action, argparse._HelpAction):
            action.default = argparse.SUPPRESS
            action.required = False
    namespace, _ = parser.parse_known_args(list(argv))
    return set(vars(namespace))


MIN_CPUS_FOR_WORKERS = 4
"""Below this many CPUs the data loader runs in the training process. Measured on a 2-core CPU (the demo's
model, batch 8 of 256 px, 8 steps per setting, alternating): one worker cut the loader's share of the step from
5.0-5.4 % to 1.6-2.6 % but made the whole step 1.1-1.6x slower, since it takes a core from the model."""


def default_num_workers(cpu_count: int | None = None) -> int:
    """Data loader worker processes by default: ``min(4, cpus - 1)`` from :data:`MIN_CPUS_FOR_WORKERS` CPUs on,
    else 0 (decode in the training process).

    Workers decode and augment the next batches while the model trains on the current one.
    """
    cpus = cpu_count if cpu_count is not None else (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                    else os.cpu_count() or 1)
    return min(4, cpus - 1) if cpus >= MIN_CPUS_FOR_WORKERS else 0
