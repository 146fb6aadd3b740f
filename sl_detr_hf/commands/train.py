"""``sl-detr train``: train / fine-tune SL-DETR with `Trainer` (synthetic, DOTA, COCO or a datasets folder)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import (
    TimeLimitCallback,
    check_model_folder,
    default_num_workers,
    keep_freed_memory_on,
    parse_config_overrides,
    parse_dataclasses,
)

if TYPE_CHECKING:
    import numpy as np

    from ..data import RotatedDetectionAugment

logger = logging.getLogger(__name__)

__all__ = ["DataArguments", "ModelArguments", "build_model", "check_not_finished", "checkpoint_to_resume",
           "last_complete_checkpoint", "main", "model_to_resume", "run_train"]


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "an SL-DETR folder or Hub id to fine-tune; None builds a new model from the fields below"})
    from_deformable_detr: str | None = field(default=None, metadata={
        "help": "initialize from a Deformable DETR checkpoint (folder or Hub id)"})
    box_type: str = field(default="rotated", metadata={"help": "rotated | horizontal"})
    size: str = field(default="tiny", metadata={"help": "tiny (CPU-friendly) | paper (ResNet-50, 900 queries)"})
    backbone: str = field(default="resnet50", metadata={"help": "timm backbone for size=paper"})
    use_pretrained_backbone: bool = field(default=False, metadata={
        "help": "download ImageNet weights for the timm backbone (needs the Hub)"})
    no_sync: bool = field(default=False, metadata={"help": "switch the synchronized losses off (ablation)"})
    ema_decay: float | None = field(default=None, metadata={
        "help": "keep an exponential moving average of the weights (e.g. 0.9999, as RT-DETR / D-FINE): evaluation "
                "scores it, checkpoints hold it (ema.pt), the saved model is the average; None: off"})
    ema_warmup_steps: int = field(default=2000, metadata={"help": "the average's decay ramps up over these steps"})
    num_queries: int | None = field(default=None, metadata={
        "help": "size=tiny: decoder queries and detections per image; None: max(100, 1.2 x the most objects in one "
                "training image)"})
    backbone_stages: str = field(default="stage3,stage4", metadata={
        "help": "size=tiny: ResNet stages fed to the encoder (stage2/3/4: strides 8/16/32); stride 16 and 32 find "
                "objects from about 12 px up at a quarter of the cost of adding stride 8"})
    config: str = field(default="", metadata={
        "help": "size=tiny: comma-separated SlDetrConfig overrides, e.g. 'num_denoising=50,d_model=192'; they "
                "replace the from-scratch model parts (dense_loss_coefficient=1, backbone_stem=light; "
                "'dense_loss_coefficient=0,backbone_stem=resnet' is the demo's model)"})
    angle_range: str | None = field(default=None, metadata={
        "help": "new rotated models: 'auto' takes the range whose boundary the training boxes crowd least, le90 "
                "unless clearly better (logged; --config angle_start=N sets it by hand); 'model' keeps the "
                "preset's range (le90 for the tiny model, RHINO's [0, 180) for the paper's); default: auto for the "
                "tiny model, model for the paper's"})
    new_class_heads: bool = field(default=False, metadata={
        "help": "with --model_name_or_path / --from_deformable_detr: start every classification row afresh, in the "
                "data's class order; default: the data's classes are matched to the model's by name (rows keep "
                "their names, the data's new classes get new rows, the model's other classes keep theirs)"})
    low_lr_multiplier: float | None = field(default=None, metadata={
        "help": "learning-rate factor of the backbone and the sampling offsets; None: 1.0 when the backbone is "
                "trained from scratch, 0.1 (the paper) when it starts from pretrained weights"})


@dataclass
class DataArguments:
    data_format: str = field(default="synthetic", metadata={"help": "synthetic | dota | yolo_obb | coco | hf"})
    train_dir: str | None = field(default=None, metadata={
        "help": "dota: a DOTA folder (images/, labelTxt/); yolo_obb: the images folder (D/images/train, labels in "
                "D/labels/train, names in D/data.yaml); coco: an images folder; hf: a save_to_disk folder"})
    val_dir: str | None = field(default=None, metadata={
        "help": "same, for evaluation (read with the training class list; objects of other classes are counted)"})
    train_annotations: str | None = field(default=None, metadata={"help": "coco: instances JSON (train)"})
    val_annotations: str | None = field(default=None, metadata={"help": "coco: instances JSON (val)"})
    class_names: str | None = field(default=None, metadata={
        "help": "dota / yolo_obb: the class list, comma-separated (a,b,c; yolo_obb: in class-index order). Default: "
                "dota: --dota_version's list if given, else classes.txt in --train_dir, else the names in the "
                "training labels (DOTA's list when every name is a DOTA class, else sorted); yolo_obb: data.yaml"})
    dota_version: str | None = field(default=None, metadata={
        "help": "dota: use DOTA's class list 1.0 | 1.5 | 2.0 (mmrotate order); default: see --class_names"})
    split_patches: bool = field(default=False, metadata={
        "help": "dota: split images into 1024 px patches (200 px gap) before training"})
    image_size: int = field(default=1024, metadata={"help": "resize so that the image fits in this square"})
    num_synthetic_train: int = field(default=600)
    num_synthetic_val: int = field(default=100)
    augment: bool = field(default=True, metadata={"help": "flips and 90-degree rotations (rotated only)"})
    scale_jitter: float = field(default=0.0, metadata={
        "help": "with --augment: zoom each training image by a random factor in [1 - j, 1 + j] about its centre, "
                "canvas kept (YOLO's `scale`, e.g. 0.5): objects at the sizes other flying heights / ground "
                "resolutions give; 0 (default) turns it off"})
    repeat_factor_threshold: float = field(default=0.0, metadata={
        "help": "repeat-factor sampling for rare classes (LVIS): a class in fewer than this share of the training "
                "images gets its images repeated sqrt(threshold / share) times per epoch (e.g. 0.3; 0: off)"})
    mosaic: float = field(default=0.0, metadata={
        "help": "with --augment: the probability that a training image is YOLO's mosaic of it and three others "
                "(each scaled to a quarter about a random centre: objects at 0.3-0.7 of their size, four images' "
                "objects in one step); 0 turns it off"})
    copy_paste: float | None = field(default=None, metadata={
        "help": "with --augment: the probability that a training image gets the objects of a random other one "
                "pasted into free places (each with a 2 px rim of its background, its level matched to the new "
                "ground): more objects per step for DETR's one-to-one losses; default 1.0 with the augmentation "
                "(rotated boxes, --augment), else 0; 0 turns it off"})
    normalize_per_image: bool | None = field(default=None, metadata={
        "help": "standardize each image by its own mean and standard deviation instead of ImageNet's (in training "
                "and, through the saved image processor, at inference): for cameras whose gain and contrast change "
                "from frame to frame, as thermal ones. Default: what the resumed checkpoint or the fine-tuned "
                "--model_name_or_path was trained with, else off"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "stop training after this many minutes of training, counted across resumed runs (checkpoints keep "
                "the time spent); without --max_steps the time also drives the learning rate (warmup, then a cosine "
                "over the minutes) and no epoch limit applies unless --num_train_epochs. Such a run is not "
                "step-reproducible (its step count depends on the machine): the log and trainer_state.json give the "
                "step reached, and --max_steps N trains that many steps again"})
    eval_iou_threshold: float = field(default=0.5, metadata={
        "help": "IoU threshold of the evaluation mAP (0.5: the DOTA mAP50; 0.75: mAP75)"})


def _load_split(data: DataArguments, which: str, work_dir: Path, class_names: Sequence[str] | None = None):
    """One split as a dataset; ``class_names``: the training split's list, used for the validation split."""
    from ..data import load_coco, load_dota, make_synthetic_dota, split_dota_cached
    from ..data.dota import find_class_names
    from ..data.yolo_obb import load_yolo_obb

    folder = getattr(data, f"{which}_dir")
    if data.data_format == "synthetic":
        root = work_dir / "synthetic" / which
        n = data.num_synthetic_train if which == "train" else data.num_synthetic_val
        make_synthetic_dota(root, num_images=n, seed=0 if which == "train" else 10_000)
        return load_dota(root)
    if folder is None:
        return None
    if not Path(folder).exists():
        raise SystemExit(f"error: --{which}_dir {folder} does not exist")
    if class_names is None and data.class_names is not None:
        class_names = [n.strip() for n in data.class_names.split(",") if n.strip()]
    try:
        if data.data_format == "dota":
            if data.split_patches:
                class_names = find_class_names(folder, data.dota_version, class_names)  # of the whole images
                patches = work_dir / "patches" / which
                split_dota_cached(folder, patches)  # re-split unless made from these very files and settings
                folder = patches
            dataset, summary = load_dota(folder, version=data.dota_version, class_names=class_names,
                                         return_summary=True)
        elif data.data_format == "yolo_obb":
            if data.split_patches:
                raise SystemExit("error: --split_patches splits DOTA folders only: for big YOLO-OBB images, write "
                                 "the split as a DOTA folder (sl_detr_hf.data.dota.write_dota_folder) and train on "
                                 "that with --data_format dota")
            dataset, summary = load_yolo_obb(folder, class_names=class_names, return_summary=True)
        else:
            dataset = summary = None
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: --{which}_dir: {err}") from None
    if summary is not None:
        logger.info("%s split: %d images, %d objects of %d classes", which, summary.num_images, summary.num_objects,
                    len(summary.class_names))
        if which == "train" and summary.num_objects == 0:
            raise SystemExit(f"error: --train_dir {folder}: no objects to train on ({summary})")
        return dataset
    if data.data_format == "coco":
        annotations = getattr(data, f"{which}_annotations")
        if annotations is None:
            raise SystemExit(f"error: --data_format coco needs --{which}_annotations")
        return load_coco(folder, annotations)
    if data.data_format == "hf":
        import datasets

        return datasets.load_from_disk(folder)
    raise SystemExit(f"error: unknown --data_format {data.data_format!r} (synthetic | dota | yolo_obb | coco | hf)")


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The newest ``checkpoint-N`` folder that was written completely (``trainer_state.json`` readable and the
    weights present); newer incomplete ones (a run killed while saving) are skipped with a warning."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
             if p.is_dir() and p.name.split("-")[1].isdigit()]
    for _, path in sorted(found, reverse=True):
        problem = None
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            problem = f"trainer_state.json unreadable ({type(err).__name__})"
        if problem is None and not any((path / name).is_file() for name in ("model.safetensors",
                                                                            "model.safetensors.index.json")):
            problem = "no model.safetensors"
        if problem is None:
            return str(path)
        logger.warning("skipping the incomplete checkpoint %s: %s", path, problem)
    return None


def model_to_resume(checkpoint: str, names: list[str], seed: int):
    """The model a resumed run continues: built from the checkpoint's own ``config.json`` (its weights are loaded by
    the trainer), not from this command's options, whose defaults may have changed since the run began (the model
    parts, the angle range) and would load its weights into another model. ``None`` when the checkpoint has no
    config (the command's model then). Its classes must be ``names``."""
    from transformers import set_seed

    from .. import SlDetrConfig, SlDetrForObjectDetection

    path = Path(checkpoint) / "config.json"
    if not path.is_file():
        return None
    config = SlDetrConfig.from_pretrained(checkpoint)
    theirs = [config.id2label[i] for i in sorted(config.id2label)]
    if theirs != list(names):
        raise SystemExit(f"error: the checkpoint {checkpoint} was trained on the classes {theirs}, the data has "
                         f"{list(names)}: resume with the data it was trained on, or train into a new --output_dir")
    set_seed(seed)
    logger.info("the model is the checkpoint's (its config.json: %s stem, %s downsampling shortcuts, dense encoder "
                "loss x%g, angle range [%d, %d)); this command's model options do not change a resumed run",
                config.backbone_stem, config.backbone_downsample, config.dense_loss_coefficient, config.angle_start,
                config.angle_start + 180)
    return SlDetrForObjectDetection(config)


def trained_with_per_image_normalization(source: str | Path) -> bool:
    """Whether the model of ``source`` (a saved folder, a checkpoint or a Hub id) was trained on images standardized
    one by one: its ``preprocessor_config.json``'s ``normalize_per_image`` (absent, as in folders saved before the
    option, or no such file: ``False``)."""
    from ..image_processing_sl_detr import SlDetrImageProcessor

    try:
        settings, _ = SlDetrImageProcessor.get_image_processor_dict(str(source))
    except OSError:  # saved without an image processor
        return False
    return bool(settings.get("normalize_per_image", False))


def per_image_normalization(given: bool | None, resume: str | None, model_name_or_path: str | None) -> bool:
    """``--normalize_per_image``: a resumed run keeps its checkpoint's (a different value given is refused); a
    fine-tuned model keeps its own unless given (a different value given is logged as a change); otherwise
    ``given``, else off (BENCHMARKS.md, "Per-image normalization")."""
    if resume is not None:
        theirs = trained_with_per_image_normalization(resume)
        if given is not None and given != theirs:
            raise SystemExit(f"error: the checkpoint {resume} was trained with --normalize_per_image {theirs}: a "
                             "resumed run keeps its inputs; resume without the option or train into a new "
                             "--output_dir")
        return theirs
    if model_name_or_path:
        theirs = trained_with_per_image_normalization(model_name_or_path)
        if given is None:
            if theirs:
                logger.info("images standardized one by one, as %s was trained (--normalize_per_image)",
                            model_name_or_path)
            return theirs
        if given != theirs:
            logger.warning("%s was trained with --normalize_per_image %s; fine-tuning with %s changes its inputs",
                           model_name_or_path, theirs, given)
    return bool(given)


def check_not_finished(checkpoint: str, training_args, max_minutes: float | None = None) -> None:
    """Refuse to "resume" a run that already reached its end: it would train 0 steps and report success.

    ``max_minutes``: the run's time budget when time ends it (the checkpoint records the training time spent).
    """
    from ..training.time_budget import spent_seconds_in_checkpoint

    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    step, epoch = int(state.get("global_step", 0)), float(state.get("epoch") or 0.0)
    spent = spent_seconds_in_checkpoint(checkpoint) if max_minutes else None
    if spent is not None:
        done, target = spent >= max_minutes * 60, f"--max_minutes {max_minutes:g} ({spent / 60:.2f} minutes spent)"
    elif training_args.max_steps is not None and training_args.max_steps > 0:
        done, target = step >= training_args.max_steps, f"--max_steps {training_args.max_steps}"
    else:
        done, target = epoch >= training_args.num_train_epochs, f"--num_train_epochs {training_args.num_train_epochs:g}"
    if done:
        raise SystemExit(f"error: {checkpoint} already reached step {step} (epoch {epoch:g}), the end set by {target}: "
                         "nothing left to train. To train longer, raise --max_minutes, --max_steps or "
                         "--num_train_epochs; to start "
                         "fresh, use another --output_dir (or remove its checkpoint-* folders).")


def _backbone_policy(pretrained: bool) -> dict:
    """Deformable DETR's frozen stem, stage 1 and batch norms suit an ImageNet backbone; one trained from scratch
    trains whole, with learning batch norms (`backbone_sl_detr.py`)."""
    if pretrained:
        return {}
    logger.info("backbone trained from scratch: all its stages train, with trainable batch norms "
                "(backbone_frozen_stages=-1, backbone_norm='batch_norm')")
    return {"backbone_frozen_stages": -1, "backbone_norm": "batch_norm"}


def build_model(model_args: ModelArguments, names: list[str], seed: int, most_objects: int = 0,
                rboxes: np.ndarray | None = None, dihedral: bool = False):
    """The model to train: fine-tuned from a folder, converted from Deformable DETR, or new (seeded first).

    ``most_objects`` (the most objects in one training image) sizes the tiny model's queries when
    ``model_args.num_queries`` is None: DETR's one-to-one matching needs more queries than objects. A new tiny
    model gets :data:`FROM_SCRATCH_MODEL` unless ``--config`` sets those fields. With ``--angle_range auto`` (the
    tiny model's default) a new rotated model takes the angle range its training boxes ``rboxes`` ``(N, 5)`` crowd
    least (`data/angle_range.py`; ``dihedral``: as the flips and quarter turns of the augmentation present them)
    unless ``--config angle_start=...`` is given.
    """
    from transformers import set_seed

    from .. import SlDetrConfig, SlDetrForObjectDetection

    set_seed(seed)  # before any weight is initialized: the same --seed gives the same model and run
    id2label = dict(enumerate(names))
    box_type = model_args.box_type
    if model_args.model_name_or_path:
        try:
            check_model_folder(model_args.model_name_or_path)
        except ValueError as err:
            raise SystemExit(f"error: --model_name_or_path {err}") from None
        model = SlDetrForObjectDetection.from_pretrained(model_args.model_name_or_path)
        return _with_classes(model, names, model_args.new_class_heads)
    if model_args.from_deformable_detr:
        model = SlDetrForObjectDetection.from_deformable_detr(model_args.from_deformable_detr, box_type=box_type)
        return _with_classes(model, names, model_args.new_class_heads)
    if model_args.angle_range not in (None, "model", "auto"):
        raise SystemExit(f"error: --angle_range must be model or auto, got {model_args.angle_range!r}")
    if model_args.size == "tiny":
        queries = model_args.num_queries or max(100, math.ceil(1.2 * most_objects))
        stages = [stage.strip() for stage in model_args.backbone_stages.split(",") if stage.strip()]
        overrides = {"use_sync_loc": not model_args.no_sync, "use_quality_cls": not model_args.no_sync,
                     "box_type": box_type, **FROM_SCRATCH_MODEL, **parse_config_overrides(model_args.config)}
        logger.info("tiny SL-DETR: %d queries, backbone stages %s, dense encoder loss x%g, %s stem, %s downsampling "
                    "shortcuts", queries, ",".join(stages), overrides["dense_loss_coefficient"],
                    overrides["backbone_stem"], overrides["backbone_downsample"])
        config = SlDetrConfig.tiny(id2label, num_queries=queries, backbone_stages=stages, **overrides)
        auto = model_args.angle_range in (None, "auto")
        if box_type == "rotated" and auto and "angle_start" not in overrides:
            config.angle_start = _angle_start(rboxes, config.angle_start, dihedral)
        return SlDetrForObjectDetection(config)
    if model_args.size == "paper":  # the paper's model (RHINO's R50 sizes and numerics) on a timm backbone
        config = SlDetrConfig.paper(
            backbone=model_args.backbone, use_timm_backbone=True,
            use_pretrained_backbone=model_args.use_pretrained_backbone, id2label=id2label,
            label2id={v: k for k, v in id2label.items()}, box_type=box_type,
            **_backbone_policy(model_args.use_pretrained_backbone),
            use_sync_loc=not model_args.no_sync, use_quality_cls=not model_args.no_sync)
        if box_type == "rotated" and model_args.angle_range == "auto":
            config.angle_start = _angle_start(rboxes, config.angle_start, dihedral)
        return SlDetrForObjectDetection(config)
    raise SystemExit(f"error: --size must be tiny or paper, got {model_args.size!r}")


def _with_classes(model, names: list[str], fresh: bool):
    """``model`` with one classification row per name of ``names`` (:func:`~sl_detr_hf.class_mapping.map_class_heads`;
    ``names`` starts with the model's own list unless ``fresh``)."""
    from ..class_mapping import map_class_heads

    added = map_class_heads(model, names, fresh=fresh)
    if fresh:
        logger.info("classification heads started afresh (--new_class_heads) for %d classes: %s", len(names),
                    ", ".join(names))
    elif added:
        logger.info("new classification rows for the classes the model lacks: %s", ", ".join(added))
    return model


def starting_class_names(model_args: ModelArguments) -> list[str] | None:
    """The class list of the model training starts from (its ``id2label``), or None for a new model."""
    from transformers import AutoConfig

    from ..class_mapping import model_class_names

    source = model_args.model_name_or_path or model_args.from_deformable_detr
    if not source:
        return None
    if model_args.model_name_or_path:
        try:
            check_model_folder(source)
        except ValueError as err:
            raise SystemExit(f"error: --model_name_or_path {err}") from None
    return model_class_names(AutoConfig.from_pretrained(source).id2label)


def trains_from_scratch(model_args: ModelArguments) -> bool:
    """A new model whose backbone starts from random weights (no folder, no conversion, no ImageNet weights)."""
    return not (model_args.model_name_or_path or model_args.from_deformable_detr or model_args.use_pretrained_backbone)


def _low_lr_multiplier(model_args: ModelArguments) -> float:
    if model_args.low_lr_multiplier is not None:
        return model_args.low_lr_multiplier
    return 1.0 if trains_from_scratch(model_args) else 0.1


def _angle_start(rboxes: np.ndarray | None, default: int, dihedral: bool) -> int:
    """The angle range for a new model trained on ``rboxes`` (`choose_angle_start`; ``dihedral``: augmented with
    flips and quarter turns), logged; ``default`` without boxes."""
    from ..data.angle_range import choose_angle_start

    if rboxes is None or not len(rboxes):
        return default
    choice = choose_angle_start(rboxes, default=default, dihedral=dihedral)
    logger.info("%s%s", choice.describe(),
                "" if choice.angle_start == default else " (--config angle_start=N sets it)")
    return choice.angle_start


def rare_class_repeat_factors(dataset, names: list[str], threshold: float):
    """Each training example's repeat factor for ``--repeat_factor_threshold`` (`data/repeat_factors.py`), logged;
    None when the threshold is 0."""
    if not threshold:
        return None
    from ..data.repeat_factors import (
        class_repeat_factors,
        dataset_image_classes,
        describe_repeat_factors,
        image_repeat_factors,
    )

    try:
        classes = dataset_image_classes(dataset)
        class_factors = class_repeat_factors(classes, len(names), threshold)
    except ValueError as err:
        raise SystemExit(f"error: --repeat_factor_threshold: {err}") from None
    factors = image_repeat_factors(classes, class_factors)
    logger.info(describe_repeat_factors(names, class_factors, factors))
    return factors


def most_objects_per_image(dataset) -> int:
    """The most objects in one example of a detection `datasets.Dataset` (``objects.category`` lengths)."""
    import pyarrow.compute as pc

    if len(dataset) == 0:
        return 0
    objects = dataset.data.column("objects").combine_chunks()
    categories = objects.field("category") if hasattr(objects, "field") else pc.list_flatten(objects)
    return int(pc.max(pc.list_value_length(categories)).as_py() or 0)


FROM_SCRATCH_MODEL = {"dense_loss_coefficient": 1.0, "backbone_stem": "light", "backbone_downsample": "space_to_depth"}
"""`SlDetrConfig` fields of the tiny model `sl-detr train` builds, unless `--config` sets them: the dense one-to-many
encoder loss, the light stem and the space-to-depth shortcuts (docs/architecture.md, "Parts for training from scratch
in minutes"; measured on HIT-UAV and the airport photos, BENCHMARKS.md "One recipe" and "Space-to-depth shortcuts").
With `--angle_range auto` (the tiny model's default) they are the from-scratch recipe's model side."""

FROM_SCRATCH_RECIPE = {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "warmup_steps": 100}
"""`TrainingArguments` for a tiny model trained from scratch, unless given (BENCHMARKS.md, "Real images"): DETR's
1e-4 suits a pretrained backbone and 12-36 epochs, not a random one and minutes."""

COPY_PASTE = 1.0
"""``--copy_paste``'s default with the augmentation: every training image gets a random other one's objects
(`data/copy_paste.py`; BENCHMARKS.md "Copy-paste": HIT-UAV's 15-minute mAP50 0.177 / 0.156 for seeds 0 / 1 against
0.127 on average without, the airport photos' 0.637 / 0.634 against 0.600-0.617)."""

PAPER_OPTIMIZER = {"learning_rate": 1e-4, "max_grad_norm": 0.1, "weight_decay": 1e-4, "logging_steps": 25}
"""The paper's learning rate (every model not trained from scratch), gradient clip and weight decay, and a log
line every 25 steps."""


def apply_recipe(given: Collection[str], model_args: ModelArguments, data: DataArguments, training_args) -> dict:
    """Fill the training arguments the user left out; returns what was set.

    ``given``: the option names the user set (in an options file or on the command line, in any spelling), as
    :func:`~sl_detr_hf.commands._common.parse_dataclasses` returns them: their values are never replaced.

    - every run: :data:`PAPER_OPTIMIZER`;
    - a tiny model trained from scratch: :data:`FROM_SCRATCH_RECIPE`, and on a CPU with bf16 in hardware bf16
      autocast (`cpu_bf16_arguments`; ``--bf16 False`` keeps float32);
    - ``--max_minutes`` without ``--max_steps`` / ``--num_train_epochs``: the time limit ends training (no epoch
      limit) and the learning rate follows a cosine over that time (`TimeBudgetSchedule`), so a time-limited run
      ends at a low rate; otherwise a cosine over the steps.
    """
    from ..training.mixed_precision import cpu_bf16_arguments

    given = set(given)
    chosen = dict(PAPER_OPTIMIZER)
    if model_args.size == "tiny" and trains_from_scratch(model_args):
        chosen.update(FROM_SCRATCH_RECIPE)
        if "bf16" not in given and "fp16" not in given:
            chosen.update(cpu_bf16_arguments(training_args.use_cpu))
    if data.max_minutes and not given & {"max_steps", "num_train_epochs"}:
        chosen["num_train_epochs"] = 1_000_000
    else:
        chosen["lr_scheduler_type"] = "cosine"
    chosen = {key: value for key, value in chosen.items() if key not in given}
    for key, value in chosen.items():
        setattr(training_args, key, value)
    if chosen.get("bf16"):  # TrainingArguments derives the Accelerator's setting in __post_init__, before the recipe
        training_args.mixed_precision = "bf16"
    if chosen:
        logger.info("training recipe (options you did not give): %s",
                    ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return chosen


def augmentation(data: DataArguments, box_type: str) -> RotatedDetectionAugment | None:
    """The training augmentation of `sl-detr train` (`RotatedDetectionAugment`; rotated boxes with ``--augment``,
    else None): flips, quarter turns, colour jitter and, with ``--scale_jitter j > 0``, a zoom in ``[1 - j, 1 + j]``."""
    from ..data import RotatedDetectionAugment
    from ..training.run_options import AUGMENTATION_OPTIONS

    jitter = data.scale_jitter
    if not 0 <= jitter < 1:
        raise SystemExit(f"error: --scale_jitter must be in [0, 1), got {jitter}")
    for name in ("mosaic", "copy_paste"):
        if not 0 <= (getattr(data, name) or 0) <= 1:
            raise SystemExit(f"error: --{name} must be a probability in [0, 1], got {getattr(data, name)}")
    if not (data.augment and box_type == "rotated"):
        for name in AUGMENTATION_OPTIONS:
            if getattr(data, name):
                raise SystemExit(f"error: --{name} needs the augmentation: --augment True and rotated boxes")
        return None
    return RotatedDetectionAugment(scale_range=(1 - jitter, 1 + jitter) if jitter else None)


def copy_paste_probability(data: DataArguments, augment: RotatedDetectionAugment | None) -> float:
    """``--copy_paste`` as used (`augmentation` checked it): the value given, else :data:`COPY_PASTE` when the
    augmentation runs; 0 without it."""
    if augment is None:
        return 0.0
    return COPY_PASTE if data.copy_paste is None else data.copy_paste


def trains(training_args) -> bool:
    """Whether the command trains (``--do_train``, or neither ``--do_train`` nor ``--do_eval``)."""
    return training_args.do_train or not training_args.do_eval


def checkpoint_to_resume(training_args) -> str | None:
    """The checkpoint a run continues: ``--resume_from_checkpoint`` (``last``: the newest complete one in
    ``--output_dir``), else, for a run that trains, the newest complete one in ``--output_dir`` if any (logged)."""
    resume = training_args.resume_from_checkpoint
    if resume == "last" or (resume is None and trains(training_args)):  # a folder with checkpoints continues
        resume = last_complete_checkpoint(training_args.output_dir)
        if resume is not None:
            logger.info("resuming from %s (the last complete checkpoint in --output_dir)", resume)
    return resume


def run_train(model_args: ModelArguments, data: DataArguments, training_args) -> dict:
    """Fine-tune or train SL-DETR with `SlDetrTrainer`; returns the final metrics. ``--resume_from_checkpoint`` is
    the checkpoint ``main`` resolved (`checkpoint_to_resume`, whose data options it has taken), or None."""
    from ..class_mapping import merge_class_names, remap_dataset_classes
    from ..data.angle_range import dataset_rboxes
    from ..image_processing_sl_detr import SlDetrImageProcessor
    from ..training import DetectionMetrics, SlDetrTrainer, make_collator, prepare_dataset
    from ..training.run_options import RunOptionsCallback

    if model_args.box_type not in ("rotated", "horizontal"):
        raise SystemExit(f"error: --box_type must be rotated or horizontal, got {model_args.box_type!r}")
    resume = training_args.resume_from_checkpoint if trains(training_args) else None
    work_dir = Path(training_args.output_dir)
    train_raw = _load_split(data, "train", work_dir)
    if train_raw is None:
        raise SystemExit("error: --train_dir is required unless --data_format synthetic")
    names = list(train_raw.features["objects"]["category"].feature.names)
    model_names = None if model_args.new_class_heads else starting_class_names(model_args)
    if model_names is not None:  # fine-tuning: each class keeps its row, the data follows the model's ids
        names, added = merge_class_names(model_names, names)
        logger.info("classes: the model's %d (ids kept)%s", len(model_names),
                    f" + {len(added)} new from the data: {', '.join(added)}" if added else "")
        train_raw = remap_dataset_classes(train_raw, names)
    val_raw = _load_split(data, "val", work_dir, names)
    if val_raw is not None and model_names is not None:  # coco / hf splits keep their own lists
        val_raw = remap_dataset_classes(val_raw, names)
    id2label = dict(enumerate(names))
    repeat_factors = rare_class_repeat_factors(train_raw, names, data.repeat_factor_threshold)
    if keep_freed_memory_for_training(training_args):
        logger.info("CPU training: freed memory stays in the process (sl_detr_hf.training.allocator)")
    model = model_to_resume(resume, names, training_args.seed) if resume is not None else None
    if model is None:
        model = build_model(model_args, names, training_args.seed, most_objects=most_objects_per_image(train_raw),
                            rboxes=dataset_rboxes(train_raw), dihedral=data.augment)
    box_type = model.config.box_type
    per_image = per_image_normalization(data.normalize_per_image, resume, model_args.model_name_or_path)
    processor = SlDetrImageProcessor(size={"shortest_edge": data.image_size, "longest_edge": data.image_size},
                                     box_type=box_type, max_detections=model.config.max_detections,
                                     normalize_per_image=per_image)
    augment = augmentation(data, box_type)
    mosaic, copy_paste = (data.mosaic if augment else 0.0), copy_paste_probability(data, augment)
    if copy_paste:
        logger.info("copy-paste: a random other image's objects pasted into each training image with probability "
                    "%g (--copy_paste 0 turns it off)", copy_paste)
    train_ds = prepare_dataset(train_raw, processor, box_type, augment, mosaic=mosaic, copy_paste=copy_paste)
    val_ds = prepare_dataset(val_raw, processor, box_type) if val_raw is not None else None
    by_time = bool(data.max_minutes) and training_args.max_steps <= 0  # the step count is not known
    # at the time limit: save; the evaluation below runs once, after training
    callbacks = ([TimeLimitCallback(data.max_minutes, evaluate_on_stop=False, save_on_stop=True,
                                    progress=by_time and not training_args.disable_tqdm)]
                 if data.max_minutes else [])
    run_options = RunOptionsCallback({  # as used: what a resumed run takes unless given (`run_options.py`)
        "max_minutes": data.max_minutes, "image_size": data.image_size, "augment": data.augment,
        "scale_jitter": data.scale_jitter, "mosaic": mosaic, "copy_paste": copy_paste,
        "repeat_factor_threshold": data.repeat_factor_threshold})
    trainer = SlDetrTrainer(
        model=model, args=training_args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=make_collator(box_type), processing_class=processor,
        compute_metrics=DetectionMetrics(processor, id2label=id2label, iou_threshold=data.eval_iou_threshold),
        callbacks=[*callbacks, run_options], ema_decay=model_args.ema_decay,
        ema_warmup_steps=model_args.ema_warmup_steps,
        low_lr_multiplier=_low_lr_multiplier(model_args),
        time_budget_minutes=data.max_minutes if by_time else None, repeat_factors=repeat_factors,
    )
    if by_time and not training_args.disable_tqdm:
        from transformers.trainer_callback import ProgressCallback

        trainer.remove_callback(ProgressCallback)  # its bar would count to the placeholder epoch limit
    if resume is not None:
        check_not_finished(resume, training_args, data.max_minutes if by_time else None)
    metrics: dict = {}
    if trains(training_args):
        result = trainer.train(resume_from_checkpoint=resume)
        metrics.update(result.metrics)
        trainer.save_model()
        trainer.save_state()  # trainer_state.json: steps, batch size, the log history
        processor.save_pretrained(training_args.output_dir)
        if trainer.is_world_process_zero():
            run_options.write(training_args.output_dir)
    if val_ds is not None:
        metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        (Path(training_args.output_dir) / "final_metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        print(json.dumps(metrics, indent=2, default=float))
    return metrics


def main(argv: Sequence[str]) -> int:
    """``sl-detr train [options]`` (or a single JSON / YAML file of them)."""
    from transformers import TrainingArguments

    from ..training.processes import distribute_cpu_processes

    processes = distribute_cpu_processes()  # before TrainingArguments set up the device
    (model_args, data_args, training_args), given = parse_dataclasses(
        "sl-detr train", (ModelArguments, DataArguments, TrainingArguments), argv, return_given=True)
    if processes:
        logger.info("%d processes on a machine without a GPU: one training in %d CPU processes (DDP over gloo, as "
                    "with --use_cpu)", processes, processes)
    training_args.remove_unused_columns = False
    training_args.label_names = ["labels"]
    resume = checkpoint_to_resume(training_args)
    if resume is not None and trains(training_args):
        from ..training.run_options import resume_run_options

        try:  # before the recipe: the time budget decides the schedule
            resume_run_options(data_args, given, resume)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    training_args.resume_from_checkpoint = resume
    apply_recipe(given, model_args, data_args, training_args)
    if "dataloader_num_workers" not in given:  # decode / augment beside the training
        training_args.dataloader_num_workers = default_num_workers()
    if "dataloader_pin_memory" not in given:
        import torch

        training_args.dataloader_pin_memory = torch.cuda.is_available()
    run_train(model_args, data_args, training_args)
    return 0


def keep_freed_memory_for_training(training_args) -> bool:
    """`keep_freed_memory` where it was measured to help: training on the CPU (BENCHMARKS.md, "Cost per image at
    real sizes"), called after the data is read (``--split_patches`` decodes whole scenes, whose one-off buffers
    would stay in the heap). GPU runs keep glibc's defaults. Returns whether it is in effect."""
    return keep_freed_memory_on(training_args.device)
