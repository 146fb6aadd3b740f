"""The ``sl-detr`` command: ``demo``, ``train``, ``evaluate``, ``split``, ``make-synthetic`` (and the
``predict`` / ``push`` commands of :mod:`sl_detr_hf.inference` and :mod:`sl_detr_hf.hub`).

``sl-detr demo`` is the main job on the embedded default: it generates the synthetic oriented-object
dataset, trains a small SL-DETR on the CPU for a bounded time, evaluates it (DOTA mAP), saves the model
folder, and writes a PNG of predictions and a training-curve plot.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("sl_detr_hf")


# ---------------------------------------------------------------------------------------------- helpers


def tiny_config_kwargs(num_labels: int, id2label: dict[int, str], d_model: int = 128, layers: int = 2,
                       num_queries: int = 100, box_type: str = "rotated") -> dict:
    """A small SL-DETR that trains on a CPU in minutes: a slim random-init ResNet, 3 feature levels."""
    from transformers import ResNetConfig

    backbone = ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 2, 1],
                            layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    return dict(
        backbone_config=backbone, use_pretrained_backbone=False, num_feature_levels=3,
        d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        encoder_n_points=4, decoder_n_points=4, num_queries=num_queries, two_stage_num_proposals=num_queries,
        num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()},
        box_type=box_type, max_detections=num_queries,
    )


class TimeLimitCallback:
    """Stops training after ``max_minutes`` of wall-clock time (checked every step)."""

    def __new__(cls, max_minutes: float):
        from transformers import TrainerCallback

        class _TimeLimit(TrainerCallback):
            def __init__(self) -> None:
                self.deadline = None

            def on_train_begin(self, args, state, control, **kwargs):
                self.deadline = time.monotonic() + max_minutes * 60

            def on_step_end(self, args, state, control, **kwargs):
                if self.deadline is not None and time.monotonic() > self.deadline:
                    logger.info("time limit of %.1f minutes reached at step %d", max_minutes, state.global_step)
                    control.should_training_stop = True
                    control.should_evaluate = True
                    control.should_save = True
                return control

        return _TimeLimit()


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


# ---------------------------------------------------------------------------------------------- demo


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "where everything is written"})
    max_minutes: float = field(default=8.0, metadata={"help": "training time limit (wall clock)"})
    max_steps: int = field(default=3000, metadata={"help": "training step limit"})
    num_train: int = field(default=600, metadata={"help": "synthetic training images"})
    num_val: int = field(default=100, metadata={"help": "synthetic validation images"})
    image_size: int = field(default=256, metadata={"help": "synthetic image side (px)"})
    batch_size: int = field(default=8)
    learning_rate: float = field(default=2e-4)
    d_model: int = field(default=128)
    layers: int = field(default=2, metadata={"help": "encoder and decoder layers"})
    num_queries: int = field(default=100)
    sync: bool = field(default=True, metadata={"help": "synchronized losses on (False: the ablation)"})
    seed: int = field(default=0)
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})


def run_demo(args: DemoArguments) -> dict:
    """Generate data, train, evaluate, save, draw. Returns a summary dict (also written as summary.json)."""
    import torch
    from transformers import set_seed

    from . import SlDetrConfig, SlDetrForObjectDetection
    from .data import RotatedDetectionAugment, load_dota, make_synthetic_dota
    from .hub import save_for_hub
    from .image_processing_sl_detr import SlDetrImageProcessor
    from .training import DetectionMetrics, SlDetrTrainer, make_collator, paper_training_arguments, prepare_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    set_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    data_root = out / "data"
    print(f"[1/5] synthetic dataset -> {data_root}", flush=True)
    make_synthetic_dota(data_root / "train", num_images=args.num_train, image_size=args.image_size, seed=args.seed)
    make_synthetic_dota(data_root / "val", num_images=args.num_val, image_size=args.image_size,
                        seed=args.seed + 10_000)
    train_raw, val_raw = load_dota(data_root / "train"), load_dota(data_root / "val")
    names = train_raw.features["objects"]["category"].feature.names
    id2label = dict(enumerate(names))

    config = SlDetrConfig(**tiny_config_kwargs(len(names), id2label, args.d_model, args.layers, args.num_queries),
                          use_sync_loc=args.sync, use_quality_cls=args.sync)
    model = SlDetrForObjectDetection(config)
    processor = SlDetrImageProcessor(size={"shortest_edge": args.image_size, "longest_edge": args.image_size},
                                     max_detections=args.num_queries)
    # flips and 90-degree turns only: photometric jitter costs as much CPU as a training step here
    augment = RotatedDetectionAugment(brightness=0.0, contrast=0.0, saturation=0.0)
    train_ds = prepare_dataset(train_raw, processor, "rotated", augment)
    val_ds = prepare_dataset(val_raw, processor, "rotated")
    print(f"[2/5] training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter SL-DETR "
          f"(sync={'on' if args.sync else 'off'}) for at most {args.max_minutes:g} min / {args.max_steps} steps",
          flush=True)
    training_args = paper_training_arguments(
        str(out / "checkpoints"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.learning_rate, max_steps=args.max_steps,
        max_grad_norm=0.1, lr_scheduler_type="cosine", warmup_steps=min(100, args.max_steps // 10),
        logging_steps=min(10, max(1, args.max_steps // 4)), eval_strategy="no", save_strategy="no",
        dataloader_num_workers=0, seed=args.seed,
        disable_tqdm=False, use_cpu=not torch.cuda.is_available(),
    )
    trainer = SlDetrTrainer(
        model=model, args=training_args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=make_collator("rotated"), processing_class=processor,
        compute_metrics=DetectionMetrics(processor, id2label=id2label),
        callbacks=[TimeLimitCallback(args.max_minutes)],
    )
    train_result = trainer.train()
    print("[3/5] evaluating (DOTA VOC07 mAP50 on the validation images)", flush=True)
    metrics = trainer.evaluate()
    model_dir = out / "model"
    print(f"[4/5] saving the model folder (weights, code, pipeline, model card) -> {model_dir}", flush=True)
    card_metrics = {"mAP50 (DOTA VOC07, synthetic val)": metrics.get("eval_mAP", float("nan"))}
    save_for_hub(model, processor, model_dir, metrics=card_metrics,
                 dataset_name=f"sl_detr_hf synthetic oriented objects ({args.num_train} train / {args.num_val} val)")
    print("[5/5] drawing predictions and the training curve", flush=True)
    curve = plot_training_curves(trainer.state.log_history, out / "training_curve.png")
    (out / "eval_metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    predictions = draw_demo_predictions(model, processor, val_raw, out / "predictions.png")
    summary = {
        "mAP50": metrics.get("eval_mAP"),
        "eval": metrics,
        "train_steps": trainer.state.global_step,
        "train_loss": train_result.training_loss,
        "minutes": (time.monotonic() - start) / 60,
        "sync": args.sync,
        "model_dir": str(model_dir),
        "predictions_png": str(predictions),
        "training_curve_png": str(curve),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"\nmAP50 (synthetic val, {args.num_val} images): {summary['mAP50']:.4f} after "
          f"{summary['train_steps']} steps, {summary['minutes']:.1f} min")
    for key in ("model_dir", "predictions_png", "training_curve_png"):
        print(f"  {key}: {summary[key]}")
    print(f"  summary: {out / 'summary.json'}")
    return summary


def draw_demo_predictions(model, processor, dataset, path: Path, num_images: int = 4, threshold: float = 0.3) -> Path:
    """A grid of the first validation images with predicted oriented boxes drawn."""
    import torch
    from PIL import Image

    from .visualize import draw_detections

    model.eval()
    images = [dataset[i]["image"].convert("RGB") for i in range(min(num_images, len(dataset)))]
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        outputs = model(pixel_values=inputs["pixel_values"].to(model.device),
                        pixel_mask=inputs["pixel_mask"].to(model.device))
    sizes = torch.tensor([[im.height, im.width] for im in images])
    results = processor.post_process_object_detection(outputs, threshold=threshold, target_sizes=sizes)
    drawn = [draw_detections(im, r, model.config.id2label) for im, r in zip(images, results)]
    width, height = sum(im.width for im in drawn), max(im.height for im in drawn)
    grid = Image.new("RGB", (width, height))
    x = 0
    for im in drawn:
        grid.paste(im, (x, 0))
        x += im.width
    grid.save(path)
    return path


# ---------------------------------------------------------------------------------------------- train


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


@dataclass
class DataArguments:
    data_format: str = field(default="synthetic", metadata={"help": "synthetic | dota | coco | hf"})
    train_dir: str | None = field(default=None, metadata={
        "help": "dota: a DOTA folder (images/, labelTxt/); coco: an images folder; hf: a save_to_disk folder"})
    val_dir: str | None = field(default=None, metadata={"help": "same, for evaluation"})
    train_annotations: str | None = field(default=None, metadata={"help": "coco: instances JSON (train)"})
    val_annotations: str | None = field(default=None, metadata={"help": "coco: instances JSON (val)"})
    dota_version: str = field(default="1.0", metadata={"help": "1.0 | 1.5 | 2.0"})
    split_patches: bool = field(default=False, metadata={
        "help": "dota: split images into 1024 px patches (200 px gap) before training"})
    image_size: int = field(default=1024, metadata={"help": "resize so that the image fits in this square"})
    num_synthetic_train: int = field(default=600)
    num_synthetic_val: int = field(default=100)
    augment: bool = field(default=True, metadata={"help": "flips and 90-degree rotations (rotated only)"})
    max_minutes: float | None = field(default=None, metadata={"help": "stop training after this many minutes"})
    eval_iou_threshold: float = field(default=0.5, metadata={
        "help": "IoU threshold of the evaluation mAP (0.5: the DOTA mAP50; 0.75: mAP75)"})


def _load_split(data: DataArguments, which: str, work_dir: Path):
    from .data import load_coco, load_dota, make_synthetic_dota, split_dota

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
    if data.data_format == "dota":
        if data.split_patches:
            patches = work_dir / "patches" / which
            split_dota(folder, patches)
            folder = patches
        return load_dota(folder, version=data.dota_version)
    if data.data_format == "coco":
        annotations = getattr(data, f"{which}_annotations")
        if annotations is None:
            raise SystemExit(f"error: --data_format coco needs --{which}_annotations")
        return load_coco(folder, annotations)
    if data.data_format == "hf":
        import datasets

        return datasets.load_from_disk(folder)
    raise SystemExit(f"error: unknown --data_format {data.data_format!r} (synthetic | dota | coco | hf)")


def run_train(model_args: ModelArguments, data: DataArguments, training_args) -> dict:
    """Fine-tune or train SL-DETR with `SlDetrTrainer`; returns the final metrics."""
    from transformers.trainer_utils import get_last_checkpoint

    from . import SlDetrConfig, SlDetrForObjectDetection
    from .data import RotatedDetectionAugment
    from .image_processing_sl_detr import SlDetrImageProcessor
    from .training import DetectionMetrics, SlDetrTrainer, make_collator, prepare_dataset

    if model_args.box_type not in ("rotated", "horizontal"):
        raise SystemExit(f"error: --box_type must be rotated or horizontal, got {model_args.box_type!r}")
    work_dir = Path(training_args.output_dir)
    train_raw = _load_split(data, "train", work_dir)
    if train_raw is None:
        raise SystemExit("error: --train_dir is required unless --data_format synthetic")
    val_raw = _load_split(data, "val", work_dir)
    names = train_raw.features["objects"]["category"].feature.names
    id2label = dict(enumerate(names))
    box_type = model_args.box_type
    if model_args.model_name_or_path:
        model = SlDetrForObjectDetection.from_pretrained(model_args.model_name_or_path, num_labels=len(names),
                                                         id2label=id2label, ignore_mismatched_sizes=True)
        box_type = model.config.box_type
    elif model_args.from_deformable_detr:
        model = SlDetrForObjectDetection.from_deformable_detr(model_args.from_deformable_detr, box_type=box_type)
    elif model_args.size == "tiny":
        model = SlDetrForObjectDetection(SlDetrConfig(**tiny_config_kwargs(len(names), id2label, box_type=box_type),
                                                      use_sync_loc=not model_args.no_sync,
                                                      use_quality_cls=not model_args.no_sync))
    elif model_args.size == "paper":
        model = SlDetrForObjectDetection(SlDetrConfig(
            backbone=model_args.backbone, use_timm_backbone=True,
            use_pretrained_backbone=model_args.use_pretrained_backbone, num_labels=len(names), id2label=id2label,
            label2id={v: k for k, v in id2label.items()}, box_type=box_type,
            use_sync_loc=not model_args.no_sync, use_quality_cls=not model_args.no_sync))
    else:
        raise SystemExit(f"error: --size must be tiny or paper, got {model_args.size!r}")
    processor = SlDetrImageProcessor(size={"shortest_edge": data.image_size, "longest_edge": data.image_size},
                                     box_type=box_type, max_detections=model.config.max_detections)
    augment = RotatedDetectionAugment() if data.augment and box_type == "rotated" else None
    train_ds = prepare_dataset(train_raw, processor, box_type, augment)
    val_ds = prepare_dataset(val_raw, processor, box_type) if val_raw is not None else None
    callbacks = [TimeLimitCallback(data.max_minutes)] if data.max_minutes else []
    trainer = SlDetrTrainer(
        model=model, args=training_args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=make_collator(box_type), processing_class=processor,
        compute_metrics=DetectionMetrics(processor, id2label=id2label, iou_threshold=data.eval_iou_threshold),
        callbacks=callbacks,
    )
    resume = training_args.resume_from_checkpoint
    if resume == "last" or (resume is None and Path(training_args.output_dir).is_dir()
                            and get_last_checkpoint(training_args.output_dir) and training_args.do_train):
        resume = get_last_checkpoint(training_args.output_dir)
    metrics: dict = {}
    if training_args.do_train or not training_args.do_eval:
        result = trainer.train(resume_from_checkpoint=resume)
        metrics.update(result.metrics)
        trainer.save_model()
        processor.save_pretrained(training_args.output_dir)
    if val_ds is not None:
        metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        (Path(training_args.output_dir) / "final_metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        print(json.dumps(metrics, indent=2, default=float))
    return metrics


# ---------------------------------------------------------------------------------------------- evaluate


def run_evaluate(argv: Sequence[str]) -> dict:
    """Full-size DOTA evaluation: split, predict patches, merge with rotated NMS, DOTA mAP, Task1 files."""
    import torch
    from tqdm.auto import tqdm

    from . import SlDetrForObjectDetection
    from .data import load_dota, merge_patch_detections, split_dota
    from .evaluation import evaluate_dota, write_task1_submission
    from .image_processing_sl_detr import SlDetrImageProcessor

    parser = argparse.ArgumentParser(prog="sl-detr evaluate", description=run_evaluate.__doc__)
    parser.add_argument("--model", required=True, help="SL-DETR folder or Hub id")
    parser.add_argument("--data_dir", required=True, help="DOTA folder with full-size images/ and labelTxt/")
    parser.add_argument("--output_dir", default="outputs/evaluate")
    parser.add_argument("--patch_size", type=int, default=1024)
    parser.add_argument("--gap", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=0.001)
    parser.add_argument("--nms_iou", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dota_version", default="1.0")
    args = parser.parse_args(argv)
    if not Path(args.data_dir).is_dir():
        parser.error(f"--data_dir {args.data_dir} is not a folder")
    out = Path(args.output_dir)
    model = SlDetrForObjectDetection.from_pretrained(args.model).to(args.device).eval()
    processor = SlDetrImageProcessor.from_pretrained(args.model)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    patches_root = out / "patches"
    split_dota(args.data_dir, patches_root, sizes=(args.patch_size,), gaps=(args.gap,))
    patches = load_dota(patches_root, class_names=names)
    patch_dets = []
    for start in tqdm(range(0, len(patches), args.batch_size), desc="predict patches"):
        rows = patches[start:start + args.batch_size]
        images = [im.convert("RGB") for im in rows["image"]]
        inputs = processor(images=images, return_tensors="pt").to(args.device)
        with torch.no_grad():
            outputs = model(**inputs)
        sizes = torch.tensor([[im.height, im.width] for im in images], device=args.device)
        results = processor.post_process_object_detection(outputs, threshold=args.threshold, target_sizes=sizes)
        for name, r in zip(rows["image_id"], results):
            patch_dets.append({"patch_id": name, "boxes": r["rboxes"].cpu(), "scores": r["scores"].cpu(),
                               "labels": r["labels"].cpu()})
    merged = merge_patch_detections(patch_dets, iou_threshold=args.nms_iou)
    full = load_dota(args.data_dir, class_names=names)
    gts = [{"image_id": row["image_id"], "boxes": torch.tensor(row["objects"]["rbox"]).reshape(-1, 5),
            "labels": torch.tensor(row["objects"]["category"]),
            "difficult": torch.tensor(row["objects"]["difficult"]) > 0} for row in full.remove_columns("image")]
    result = evaluate_dota(merged, gts)
    write_task1_submission(merged, out / "task1", names)
    summary = {"mAP": result["mAP"], "AP": {names[c]: ap for c, ap in result["AP"].items()}}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    print(json.dumps(summary, indent=2, default=float))
    return summary


# ---------------------------------------------------------------------------------------------- main


def _parse_dataclasses(prog: str, classes: tuple, argv: Sequence[str]):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(classes, prog=prog)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        return loader(str(Path(argv[0]).resolve()))
    return parser.parse_args_into_dataclasses(args=list(argv))


COMMANDS = {
    "demo": "generate synthetic data, train a small SL-DETR on CPU, evaluate, save, draw (the main job)",
    "train": "train / fine-tune with Trainer (synthetic, DOTA, COCO or a datasets folder)",
    "evaluate": "full-size DOTA evaluation: split, predict, merge, mAP, Task1 files",
    "predict": "images or a folder -> JSON and PNGs with oriented boxes drawn",
    "split": "split a DOTA folder into overlapping patches",
    "make-synthetic": "write the synthetic oriented-object dataset in DOTA format",
    "push": "push a model folder to the Hugging Face Hub with a generated model card",
    "export": "export a model to ONNX (onnxruntime, no PyTorch needed to run it)",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: sl-detr <command> [options]\n\ncommands:")
        for name, text in COMMANDS.items():
            print(f"  {name:15s} {text}")
        print("\nRun `sl-detr <command> --help` for a command's options.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if command == "demo":
        (demo_args,) = _parse_dataclasses("sl-detr demo", (DemoArguments,), rest)
        run_demo(demo_args)
    elif command == "train":
        from transformers import TrainingArguments

        model_args, data_args, training_args = _parse_dataclasses(
            "sl-detr train", (ModelArguments, DataArguments, TrainingArguments), rest)
        training_args.remove_unused_columns = False
        training_args.label_names = ["labels"]
        run_train(model_args, data_args, training_args)
    elif command == "evaluate":
        run_evaluate(rest)
    elif command == "predict":
        from .inference import main as predict_main

        return predict_main(rest) or 0
    elif command == "push":
        from .hub import main as push_main

        return push_main(rest) or 0
    elif command == "export":
        from .export_onnx import main as export_main

        return export_main(rest) or 0
    elif command == "split":
        return split_main(rest)
    elif command == "make-synthetic":
        return make_synthetic_main(rest)
    else:
        print(f"sl-detr: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return 0


def split_main(argv: Sequence[str]) -> int:
    """``sl-detr split``: DOTA folder -> patches folder (single- or multi-scale)."""
    from .data import split_dota

    parser = argparse.ArgumentParser(prog="sl-detr split", description=COMMANDS["split"])
    parser.add_argument("src", help="DOTA folder with images/ and labelTxt/")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024])
    parser.add_argument("--gaps", type=int, nargs="+", default=[200])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0],
                        help="multi-scale: 0.5 1.0 1.5 (with --gaps 500)")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    if not (Path(args.src) / "images").is_dir():
        parser.error(f"{args.src} has no images/ folder")
    summary = split_dota(args.src, args.dst, sizes=tuple(args.sizes), gaps=tuple(args.gaps), rates=tuple(args.rates),
                         num_workers=args.workers)
    print(summary)
    return 0


def make_synthetic_main(argv: Sequence[str]) -> int:
    """``sl-detr make-synthetic``: write the synthetic DOTA-format dataset."""
    from .data import make_synthetic_dota

    parser = argparse.ArgumentParser(prog="sl-detr make-synthetic", description=COMMANDS["make-synthetic"])
    parser.add_argument("root", help="output folder")
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error("--num_images must be >= 1")
    root = make_synthetic_dota(args.root, num_images=args.num_images, image_size=args.image_size, seed=args.seed)
    print(f"wrote {args.num_images} images to {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

