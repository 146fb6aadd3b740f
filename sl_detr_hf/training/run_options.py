"""The data options of a training run, kept in its checkpoints so that a resumed run trains on what it began with.

A run's model comes back from its checkpoint (``config.json``) and the time it spent from ``trainer_state.json``;
the options that shape its training data (the input size, the augmentation, the mosaic, copy-paste, the rare-class
repeats) and its time budget lived only on the command line. Resumed with a shorter command, say without ``--mosaic
0.5 --max_minutes 15``, a run silently went on with the defaults (no mosaic; a 1024 px input instead of 640; three
epochs on a cosine over steps instead of the rest of its 15 minutes). :class:`RunOptionsCallback` writes
the options as used into every checkpoint (:data:`RUN_OPTIONS_FILE`), and :func:`resume_run_options` fills in, for
a resumed run, every such option the command does not give; an option given with another value is used and the
change logged as a warning (turning the mosaic off for the last epochs is a deliberate choice, as in YOLO's
``close_mosaic``). A checkpoint written before the file existed resumes with the command's options, as it did.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

__all__ = ["RESUMED_OPTIONS", "RUN_OPTIONS_FILE", "RunOptionsCallback", "read_run_options", "resume_run_options"]

logger = logging.getLogger(__name__)

RUN_OPTIONS_FILE = "run_options.json"
"""The file of a checkpoint (and of the final output folder) that records the run's data options."""

RESUMED_OPTIONS = ("max_minutes", "image_size", "augment", "scale_jitter", "mosaic", "copy_paste",
                   "repeat_factor_threshold")
"""`sl-detr train`'s `DataArguments` fields a resumed run takes from its checkpoint unless given (``copy_paste`` as
resolved: its default depends on the augmentation)."""

REPLACED_BY = {"max_minutes": ("max_steps", "num_train_epochs")}
"""Recorded options not taken when the command gives one of these instead (a timed run resumed with ``--max_steps N``
trains N steps, not the rest of its minutes)."""

AUGMENTATION_OPTIONS = ("scale_jitter", "mosaic", "copy_paste")
"""Recorded options that need ``augment``: not taken when the resumed command turns the augmentation off."""


def read_run_options(checkpoint: str | Path) -> dict[str, Any] | None:
    """The options recorded in ``checkpoint`` (:data:`RESUMED_OPTIONS` only), or None where it records none (a
    checkpoint of an earlier release); a file that cannot be read is an error that names it."""
    path = Path(checkpoint) / RUN_OPTIONS_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the run's data options ({err}); restore the file or delete it to "
                         "resume with this command's options") from None
    if not isinstance(stored, dict):
        raise ValueError(f"{path}: expected a JSON object of options, got {type(stored).__name__}")
    return {name: stored[name] for name in RESUMED_OPTIONS if name in stored}


def resume_run_options(data: Any, given: Collection[str], checkpoint: str | Path) -> dict[str, Any]:
    """Set on ``data`` (`DataArguments`) every recorded option of ``checkpoint`` that the command does not give
    (``given``: the option names the user set); returns the options so taken. A given option whose value differs
    from the recorded one stays, with a warning naming both values."""
    stored = read_run_options(checkpoint)
    if stored is None:
        logger.info("%s records no data options (a checkpoint of an earlier release): this command's are used",
                    checkpoint)
        return {}
    taken = {}
    for name, value in stored.items():
        current = getattr(data, name)
        if name not in given:
            if set(REPLACED_BY.get(name, ())) & set(given):
                continue
            if current != value:
                taken[name] = value
            setattr(data, name, value)
        elif current != value and value is not None:
            logger.warning("--%s %s given: the run trained with %s until %s and continues with %s", name, current,
                           value, checkpoint, current)
    if not data.augment:  # the augmentation given off: the options that need it go with it
        for name in AUGMENTATION_OPTIONS:
            if name in taken:
                setattr(data, name, 0.0)
                del taken[name]
    if taken:
        logger.info("resumed with the run's own data options (%s): %s", RUN_OPTIONS_FILE,
                    ", ".join(f"--{name} {value}" for name, value in taken.items()))
    return taken


class RunOptionsCallback(TrainerCallback):
    """Writes ``options`` (name -> JSON value) as :data:`RUN_OPTIONS_FILE` into every checkpoint the trainer saves."""

    def __init__(self, options: dict[str, Any]) -> None:
        unknown = set(options) - set(RESUMED_OPTIONS)
        if unknown:
            raise ValueError(f"not a resumed data option: {sorted(unknown)}")
        self.options = dict(options)

    def write(self, folder: str | Path) -> None:
        """Write the options into ``folder`` (made if missing)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RUN_OPTIONS_FILE).write_text(json.dumps(self.options, indent=2) + "\n", encoding="utf-8")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
