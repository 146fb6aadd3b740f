"""CPU inference time of a converted RHINO / DINO checkpoint next to the original's (issue 21).

The original's time is the one `scripts/make_rhino_reference.py` recorded when it ran RHINO / mmdetection on the
same input (`cpu_forward_seconds` of the case JSON: `model(inputs, samples, mode="predict")`, in its own
environment on this machine); this script times the converted SL-DETR model on that input (`model(pixel_values,
pixel_mask)` + post-processing), the median of `--repeat` runs.

    python benchmarks/converted_inference.py                      # the test fixtures (reduced models), all cases
    python benchmarks/converted_inference.py --reference-dir /work/rhino-out/full_rhino \\
        --model-dir converted_full_rhino --cases image0 --repeat 1   # a full-size conversion
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _inputs(folder: Path, info: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The case's preprocessed batch (the fixture recipe: resized PNG, (RGB - mean) / std, zero padding)."""
    height, width = info["batch_input_shape"]
    mean = torch.tensor(info["mean"])[:, None, None]
    std = torch.tensor(info["std"])[:, None, None]
    pixels = torch.zeros(len(info["images"]), 3, height, width)
    mask = torch.zeros(len(info["images"]), height, width, dtype=torch.long)
    for b, image in enumerate(info["images"]):
        rgb = np.array(Image.open(folder / image["resized_png"]).convert("RGB"))
        h, w = rgb.shape[:2]
        pixels[b, :, :h, :w] = (torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std
        mask[b, :h, :w] = 1
    return pixels, mask


def _fixture_model(kind: str):
    from _parity_fixtures import load_weights, source_config

    from sl_detr_hf.convert import convert_mmdet_dino_checkpoint, convert_rhino_checkpoint

    convert = convert_rhino_checkpoint if kind == "rhino" else convert_mmdet_dino_checkpoint
    converted = convert(load_weights(kind), config=source_config(kind))
    return converted.model, converted.processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", type=Path, help="a harness output folder (default: the test fixtures)")
    parser.add_argument("--model-dir", type=Path, help="the converted folder for --reference-dir")
    parser.add_argument("--cases", nargs="+", default=["square", "wide", "batch2_padded"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.reference_dir is not None:
        from sl_detr_hf import SlDetrForObjectDetection, SlDetrImageProcessor

        runs = [(args.reference_dir, SlDetrForObjectDetection.from_pretrained(args.model_dir).eval(),
                 SlDetrImageProcessor.from_pretrained(args.model_dir))]
    else:
        runs = [(ROOT / "tests" / "fixtures" / kind, *_fixture_model(kind)) for kind in ("rhino", "mmdet_dino")
                if (ROOT / "tests" / "fixtures" / kind / "weights.safetensors").is_file()]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| source | case | input | original (recorded) | converted SL-DETR, median of "
          f"{args.repeat} | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for folder, model, processor in runs:
        source = json.loads((folder / "model.json").read_text()).get("model", folder.name) if (
            folder / "model.json").is_file() else folder.name
        for case in args.cases:
            if not (folder / f"{case}.json").is_file():
                continue
            info = json.loads((folder / f"{case}.json").read_text())
            pixels, mask = _inputs(folder, info)
            sizes = [image["meta"]["ori_shape"] for image in info["images"]]
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                outputs = model(pixels, pixel_mask=mask)
                processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes,
                                                        top_k=info["max_per_img"])
                times.append(time.perf_counter() - start)
            ours = statistics.median(times)
            original = info.get("cpu_forward_seconds")
            ratio = f"{ours / original:.2f}" if original else "-"
            shape = "x".join(str(v) for v in pixels.shape)
            original_text = f"{original:.2f} s" if original else "-"
            print(f"| {source} | {case} | {shape} | {original_text} | {ours:.2f} s | {ratio} |")


if __name__ == "__main__":
    main()
