"""``sl-detr demo``: the main job on the embedded default. It generates the synthetic oriented-object dataset,
trains a small SL-DETR on the CPU for a bounded time, evaluates it (DOTA mAP), saves the model folder, and
writes a PNG of predictions and a training-curve plot."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._common import (
    TimeLimitCallback,
    default_num_workers,
    parse_config_overrides,
    parse_dataclasses,
    plot_training_curves,
)

__all__ = ["DemoArguments", "demo_parts", "draw_demo_predictions", "main", "parse_config_overrides", "run_demo"]


@dataclass
class DemoArguments:
    output_dir: str = field(default="outputs/demo", metadata={"help": "where everything is written"})
    max_minutes: float = field(default=8.0, metadata={"help": "training time limit (wall clock)"})
    max_steps: int = field(default=3000, metadata={"help": "training step limit"})
    num_train: int = field(default=600, metadata={"help": "synthetic training images"})
    num_val: int = field(default=100, metadata={"help": "synthetic validation images"})
    image_size: int = field(default=256, metadata={"help": "synthetic image side (px)"})
    batch_size: int = field(default=4)
    learning_rate: float = field(default=1e-3)
    d_model: int = field(default=128)
    layers: int = field(default=2, metadata={"help": "encoder and decoder layers"})
    num_queries: int = field(default=50, metadata={"help": "decoder queries (the images hold 1-8 objects)"})
    num_denoising: int = field(default=50, metadata={
        "help": "denoising queries per image at training time (SlDetrConfig.num_denoising; 0: off)"})
    backbone_stages: str = field(default="stage3,stage4", metadata={
        "help": "ResNet stages fed to the encoder (stage2/3/4: strides 8/16/32)"})
    feature_levels: int = field(default=0, metadata={
        "help": "encoder feature levels (0: one per backbone stage; more adds stride-2 levels after the last)"})
    sync: bool = field(default=True, metadata={"help": "synchronized losses on (False: the ablation)"})
    seed: int = field(default=0)
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    num_workers: int = field(default=-1, metadata={
        "help": "data loader worker processes (-1: min(4, CPUs - 1), 0: decode in the training process)"})
    low_lr_multiplier: float = field(default=1.0, metadata={
        "help": "learning-rate factor of the backbone and the deformable sampling offsets (the paper, with a "
                "pretrained backbone: 0.1; the demo's backbone is trained from scratch)"})
    lr_schedule: str = field(default="time", metadata={
        "help": "'time': warmup, then a cosine over the wall-clock budget (ends low when --max_minutes runs out); "
                "'steps': a cosine over --max_steps"})
    ema_decay: float | None = field(default=None, metadata={
        "help": "keep an exponential moving average of the weights with this decay (ramped up over "
                "--ema_warmup_steps) and evaluate / save the average; None: off"})
    ema_warmup_steps: int = field(default=200)
    config: str = field(default="", metadata={
        "help": "comma-separated SlDetrConfig overrides, e.g. 'num_denoising=0,rotated_sampling=none' (ablations)"})


def demo_parts(args: DemoArguments, id2label: dict[int, str]):
    """The demo's model (random init), image processor and training augmentation for ``args``.

    Returns:
        ``(model, processor, augment, overrides)``: ``overrides`` are the `SlDetrConfig` fields set on top of the
        tiny preset (`SlDetrConfig.tiny`: the synchronized-loss switches, the denoising queries and ``--config``).
    """
    from .. import SlDetrConfig, SlDetrForObjectDetection
    from ..data import RotatedDetectionAugment
    from ..image_processing_sl_detr import SlDetrImageProcessor

    overrides = {"use_sync_loc": args.sync, "use_quality_cls": args.sync, "num_denoising": args.num_denoising,
                 **parse_config_overrides(args.config)}
    stages = [stage.strip() for stage in args.backbone_stages.split(",") if stage.strip()]
    config = SlDetrConfig.tiny(id2label, d_model=args.d_model, layers=args.layers, num_queries=args.num_queries,
                               backbone_stages=stages, num_feature_levels=args.feature_levels or None, **overrides)
    model = SlDetrForObjectDetection(config)
    processor = SlDetrImageProcessor(size={"shortest_edge": args.image_size, "longest_edge": args.image_size},
                                     max_detections=args.num_queries)
    # flips and 90-degree turns only: photometric jitter costs as much CPU as a training step here
    augment = RotatedDetectionAugment(brightness=0.0, contrast=0.0, saturation=0.0)
    return model, processor, augment, overrides


def run_demo(args: DemoArguments) -> dict:
    """Generate data, train, evaluate, save, draw. Returns a summary dict (also written as summary.json)."""
    import torch
    from transformers import set_seed

    from ..data import load_dota, make_synthetic_dota
    from ..hub import save_for_hub
    from ..training import DetectionMetrics, SlDetrTrainer, make_collator, paper_training_arguments, prepare_dataset

    if args.lr_schedule not in ("time", "steps"):
        raise SystemExit(f"error: --lr_schedule must be 'time' or 'steps', got {args.lr_schedule!r}")
    if args.num_train < 1 or args.num_val < 1:
        raise SystemExit(f"error: --num_train and --num_val must be >= 1, got {args.num_train} and {args.num_val}")
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

    model, processor, augment, overrides = demo_parts(args, id2label)
    train_ds = prepare_dataset(train_raw, processor, "rotated", augment)
    val_ds = prepare_dataset(val_raw, processor, "rotated")
    print(f"[2/5] training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter SL-DETR "
          f"(sync={'on' if args.sync else 'off'}) for at most {args.max_minutes:g} min / {args.max_steps} steps",
          flush=True)
    workers = default_num_workers() if args.num_workers < 0 else args.num_workers
    training_args = paper_training_arguments(
        str(out / "checkpoints"), per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, learning_rate=args.learning_rate, max_steps=args.max_steps,
        max_grad_norm=0.1, lr_scheduler_type="cosine", warmup_steps=min(100, args.max_steps // 10),
        logging_steps=min(10, max(1, args.max_steps // 4)), eval_strategy="no", save_strategy="no",
        dataloader_num_workers=workers, dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_persistent_workers=workers > 0,
        seed=args.seed,
        disable_tqdm=False, use_cpu=not torch.cuda.is_available(),
    )
    trainer = SlDetrTrainer(
        model=model, args=training_args, train_dataset=train_ds, eval_dataset=val_ds,
        data_collator=make_collator("rotated"), processing_class=processor,
        compute_metrics=DetectionMetrics(processor, id2label=id2label),
        callbacks=[TimeLimitCallback(args.max_minutes, evaluate_on_stop=False)],
        time_budget_minutes=args.max_minutes if args.lr_schedule == "time" else None,
        low_lr_multiplier=args.low_lr_multiplier,
        ema_decay=args.ema_decay, ema_warmup_steps=args.ema_warmup_steps,
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
        "config_overrides": overrides,
        "lr_schedule": args.lr_schedule,
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

    from ..visualize import draw_detections

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


def main(argv: Sequence[str]) -> int:
    """``sl-detr demo [options]``."""
    (args,) = parse_dataclasses("sl-detr demo", (DemoArguments,), argv)
    run_demo(args)
    return 0
