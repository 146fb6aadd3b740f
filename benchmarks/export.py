"""ONNX export and tiled whole-scene prediction, measured side by side in one run (issue 12).

    python benchmarks/export.py [--repeat 5] [--threads 1] [--skip-paper] [--scene 10000] [--tile 1024] [--overlap 200]

Prints, for the demo model (`sl-detr demo`'s architecture: slim ResNet, d_model 128, 2 + 2 layers, 100 queries,
256 px) at batch 1 and 8, and for the paper-size model (ResNet-50, 4 levels, 6 + 6 layers, 900 queries, 1024 px)
at batch 1: export time, file size, and the median latency of torch eager (`torch.no_grad`, eval) and of
onnxruntime (CPU provider) on the same random batch, their ratio and the largest output difference; repeats
alternate the two runtimes and flip their order every repeat. Then the time and peak memory (growth of the process'
peak resident set, Linux) of tiled prediction of a synthetic ``scene x scene`` PNG with the demo model through the
torch pipeline and through onnxruntime. Weights are random (nothing is downloaded); only the timings matter.

Both runtimes use ``--threads`` intra-op threads (default 1): on a CPU shared with other jobs, torch's OpenMP threads
spin at barriers when a core is taken (a 2-thread forward of the demo model took 3 s under load against 0.13 s with
one thread), which would measure the machine's load, not the runtimes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection, SlDetrImageProcessor
from sl_detr_hf.cli import tiny_config_kwargs
from sl_detr_hf.export_onnx import export_onnx
from sl_detr_hf.onnx_predictor import OnnxDetector
from sl_detr_hf.pipeline_oriented_detection import OrientedObjectDetectionPipeline

LABELS = {i: f"class{i}" for i in range(15)}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def peak_memory(run: Callable[[], object]) -> tuple[float, float]:
    """Seconds and growth of the peak resident set (MiB) of ``run()``."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    start_rss = _status_kib("VmRSS")
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return seconds, (_status_kib("VmHWM") - start_rss) / 1024


def demo_model() -> tuple[SlDetrForObjectDetection, SlDetrImageProcessor]:
    config = SlDetrConfig(**tiny_config_kwargs(15, LABELS))
    processor = SlDetrImageProcessor(size={"shortest_edge": 256, "longest_edge": 256}, max_detections=100,
                                     pad_size={"height": 256, "width": 256})
    return SlDetrForObjectDetection(config).eval(), processor


def paper_model() -> tuple[SlDetrForObjectDetection, SlDetrImageProcessor]:
    from transformers import ResNetConfig

    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                            out_features=["stage2", "stage3", "stage4"])
    config = SlDetrConfig(backbone_config=backbone, use_pretrained_backbone=False, num_labels=15, id2label=LABELS,
                          label2id={v: k for k, v in LABELS.items()})
    return SlDetrForObjectDetection(config).eval(), SlDetrImageProcessor(max_detections=500)


def compare(name: str, model, processor, size: int, batches: list[int], repeat: int, folder: Path,
            threads: int) -> None:
    start = time.perf_counter()
    path = export_onnx(model, folder / f"{name}.onnx", processor, image_size=(size, size))
    export_s = time.perf_counter() - start
    print(f"\n{name}: {size} px, {model.config.num_queries} queries; export {export_s:.1f} s, "
          f"file {path.stat().st_size / 2**20:.1f} MiB")
    detector = OnnxDetector(path, threads=threads)
    for batch in batches:
        pixel_values = torch.randn(batch, 3, size, size)
        pixel_mask = torch.ones(batch, size, size, dtype=torch.long)
        feeds = {"pixel_values": pixel_values.numpy(), "pixel_mask": pixel_mask.numpy()}

        def run_torch(pixel_values=pixel_values, pixel_mask=pixel_mask):
            with torch.no_grad():
                return model(pixel_values=pixel_values, pixel_mask=pixel_mask)

        def run_ort(feeds=feeds):
            return detector.session.run(["logits", "pred_boxes"], feeds)

        reference, got = run_torch(), run_ort()  # warm-up, and the output difference
        diff = max(float(np.abs(got[0] - reference.logits.numpy()).max()),
                   float(np.abs(got[1] - reference.pred_boxes.numpy()).max()))
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for r in range(repeat):
            order = [("torch", run_torch), ("onnxruntime", run_ort)]
            for label, fn in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
        t_torch, t_ort = statistics.median(times["torch"]), statistics.median(times["onnxruntime"])
        print(f"  batch {batch}: torch {t_torch * 1000:.0f} ms, onnxruntime {t_ort * 1000:.0f} ms, "
              f"ratio ort/torch {t_ort / t_torch:.2f}, max |diff| {diff:.1e}")


def synthetic_scene(path: Path, size: int) -> None:
    """A grey ``size x size`` scene with a few thousand oriented rectangles (compresses well as PNG)."""
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (size, size), (90, 100, 95))
    draw = ImageDraw.Draw(image)
    for _ in range(size * size // 40000):
        cx, cy = rng.uniform(0, size, 2)
        w, h, theta = rng.uniform(10, 60), rng.uniform(5, 25), rng.uniform(-np.pi / 2, np.pi / 2)
        c, s = np.cos(theta), np.sin(theta)
        corners = [(cx + c * dx - s * dy, cy + s * dx + c * dy) for dx, dy in
                   ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
        draw.polygon(corners, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    image.save(path)


def tiled(scene_size: int, tile: int, overlap: int, folder: Path, threads: int) -> None:
    model, processor = demo_model()
    path = folder / "scene.png"
    synthetic_scene(path, scene_size)
    onnx_path = export_onnx(model, folder / "demo_scene.onnx", processor, image_size=(256, 256))
    pipe = OrientedObjectDetectionPipeline(model=model, image_processor=processor, task="oriented-object-detection")
    detector = OnnxDetector(onnx_path, threads=threads)
    from sl_detr_hf.tiling import tile_windows

    count = len(tile_windows(scene_size, scene_size, tile, overlap))
    print(f"\ntiled prediction: {scene_size} x {scene_size} px PNG ({path.stat().st_size / 2**20:.0f} MiB file, "
          f"{scene_size * scene_size * 3 / 2**20:.0f} MiB decoded), tile {tile}, overlap {overlap}: {count} tiles, "
          "each resized to 256 px by the demo processor, batch 8, threshold 0 (all 100 top-k boxes of a tile merged)")
    for name, runner in (("torch pipeline", pipe), ("onnxruntime", detector)):
        seconds, mib = peak_memory(lambda runner=runner: runner(str(path), threshold=0.0, tile=tile, overlap=overlap,
                                                                batch_size=8, progress=False))
        print(f"  {name}: {seconds:.1f} s ({seconds / count * 1000:.0f} ms / tile), peak memory +{mib:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime")
    parser.add_argument("--skip-paper", action="store_true", help="skip the ResNet-50 / 900-query / 1024 px model")
    parser.add_argument("--skip-scene", action="store_true", help="skip the tiled whole-scene run")
    parser.add_argument("--scene", type=int, default=10000, help="side of the synthetic scene (px)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; onnxruntime CPU provider")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compare("demo", *demo_model(), size=256, batches=[1, 8], repeat=args.repeat, folder=folder,
                threads=args.threads)
        if not args.skip_paper:
            compare("paper (R50)", *paper_model(), size=1024, batches=[1], repeat=max(1, args.repeat // 2),
                    folder=folder, threads=args.threads)
        if not args.skip_scene:
            tiled(args.scene, args.tile, args.overlap, folder, args.threads)


if __name__ == "__main__":
    main()
