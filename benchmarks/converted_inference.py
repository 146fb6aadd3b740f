"""CPU inference time of a converted RHINO / DINO checkpoint next to the original code's, side by side (issue 21).

Both sides run the same weights on the same preprocessed input (a harness case: `scripts/make_rhino_reference.py`
output, e.g. the test fixtures or a full-size run), one warm-up call then `--repeat` timed calls each, in
alternating processes (original, converted, converted, original) so that machine load hits both alike:

- original: `model(inputs, data_samples, mode="predict")` of RHINO / mmdetection, built from the checkpoint's
  config text with the harness' own helpers, in the RHINO environment (`--original-python`);
- converted: `sl_detr_hf.convert` on the same state dict, then `model(pixel_values, pixel_mask)` and
  `post_process_object_detection` (the SL-DETR equivalent of mmdetection's predict).

    python benchmarks/converted_inference.py --reference-dir /work/rhino-out/full_rhino --case image0 \\
        --original-python /work/rhino-venv/bin/python --rhino-root /work/rhino-src --repeat 2
    python benchmarks/converted_inference.py --reference-dir tests/fixtures/rhino --case square ...

Prints a Markdown row per side and their ratio. The sides are subprocesses of this script (`--side`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _state_dict(folder: Path) -> dict:
    """The harness' `weights.safetensors` in float32 (int4 / int8 power-of-two codes dequantized)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = folder / "weights.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    fmt = metadata.get("format", "float32")
    scales = json.loads(metadata.get("scales_log2", "{}"))
    shapes = json.loads(metadata.get("shapes", "{}"))
    out = {}
    for key, stored in load_file(str(path)).items():
        if key not in scales or fmt == "float32":
            out[key] = stored
        elif fmt == "int8-pow2":
            out[key] = stored.float() * 2.0 ** scales[key]
        else:  # int4-pow2-packed: two's complement nibbles, low first
            nibbles = torch.stack([stored & 0xF, stored >> 4], dim=-1).flatten().to(torch.int16)
            codes = torch.where(nibbles >= 8, nibbles - 16, nibbles).float()[:math.prod(shapes[key])]
            out[key] = codes.reshape(shapes[key]) * 2.0 ** scales[key]
    return out


def _inputs(folder: Path, info: dict):
    """`(pixel_values (B, 3, H, W), pixel_mask (B, H, W))` of the case (resized PNG, (RGB - mean) / std, padding)."""
    import numpy as np
    import torch
    from PIL import Image

    height, width = info["batch_input_shape"]
    mean = torch.tensor(info["mean"])[:, None, None]
    std = torch.tensor(info["std"])[:, None, None]
    pixels = torch.zeros(len(info["images"]), 3, height, width)
    mask = torch.zeros(len(info["images"]), height, width, dtype=torch.long)
    for b, image in enumerate(info["images"]):
        rgb = np.array(Image.open(folder / Path(image["resized_png"]).name).convert("RGB"))
        h, w = rgb.shape[:2]
        pixels[b, :, :h, :w] = (torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std
        mask[b, :h, :w] = 1
    return pixels, mask


def _time(call, repeat: int) -> list[float]:
    call()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def run_converted(folder: Path, case: str, repeat: int) -> list[float]:
    import torch

    from sl_detr_hf.convert import convert_mmdet_dino_checkpoint, convert_rhino_checkpoint, parse_config_text

    model_json = json.loads((folder / "model.json").read_text())
    convert = convert_rhino_checkpoint if model_json["model"] == "rhino" else convert_mmdet_dino_checkpoint
    converted = convert(_state_dict(folder), config=parse_config_text(model_json["checkpoint_meta"]["cfg"]))
    info = json.loads((folder / f"{case}.json").read_text())
    pixels, mask = _inputs(folder, info)
    sizes = [image["meta"]["ori_shape"] for image in info["images"]]

    def call():
        with torch.no_grad():
            outputs = converted.model(pixels, pixel_mask=mask)
        converted.processor.post_process_object_detection(outputs, threshold=0.0, target_sizes=sizes,
                                                          top_k=info["max_per_img"])

    return _time(call, repeat)


def run_original(folder: Path, case: str, repeat: int, rhino_root: str | None) -> list[float]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_rhino_reference as harness  # the harness' environment helpers (it calls RHINO, holds none of it)

    model_json = json.loads((folder / "model.json").read_text())
    kind = model_json["model"]
    harness.install_import_shims(rhino_root if kind == "rhino" else None)
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.config import Config

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cfg = Config.fromstring(model_json["checkpoint_meta"]["cfg"], file_format=".py")
    cfg.model.backbone.init_cfg = None
    for key in ("share_pred_layer", "num_pred_layer", "as_two_stage"):  # set by the detector when it was built
        cfg.model.bbox_head.pop(key, None)
    for key in ("num_classes", "embed_dims", "num_matching_queries"):
        cfg.model.get("dn_cfg", {}).pop(key, None)
    model = harness.register_and_build(cfg, kind)
    model.load_state_dict(_state_dict(folder))
    model.eval()
    info = json.loads((folder / f"{case}.json").read_text())
    pixels, _ = _inputs(folder, info)
    samples = []
    for image in info["images"]:
        sample = DetDataSample()
        meta = dict(image["meta"])
        meta["batch_input_shape"] = tuple(info["batch_input_shape"])
        sample.set_metainfo({k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()})
        samples.append(sample)

    def call():
        with torch.no_grad():
            model(pixels, samples, mode="predict")

    return _time(call, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", type=Path, required=True)
    parser.add_argument("--case", default="square")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--original-python", default="/work/rhino-venv/bin/python")
    parser.add_argument("--rhino-root", default="/work/rhino-src")
    parser.add_argument("--side", choices=["original", "converted"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = args.reference_dir.resolve()
    if args.side == "original":
        print(json.dumps(run_original(folder, args.case, args.repeat, args.rhino_root)))
        return
    if args.side == "converted":
        print(json.dumps(run_converted(folder, args.case, args.repeat)))
        return
    times: dict[str, list[float]] = {"original": [], "converted": []}
    for side in ("original", "converted", "converted", "original"):
        python = args.original_python if side == "original" else sys.executable
        command = [python, __file__, "--side", side, "--reference-dir", str(folder), "--case", args.case,
                   "--repeat", str(args.repeat), "--rhino-root", args.rhino_root]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        times[side] += json.loads(result.stdout.strip().splitlines()[-1])
    info = json.loads((folder / f"{args.case}.json").read_text())
    source = json.loads((folder / "model.json").read_text())["model"]
    shape = f"{len(info['images'])} x {info['batch_input_shape'][0]} x {info['batch_input_shape'][1]}"
    original, converted = statistics.median(times["original"]), statistics.median(times["converted"])
    print(f"| {source} | {folder.name}/{args.case} | {shape} | {original:.2f} s ({min(times['original']):.2f}) | "
          f"{converted:.2f} s ({min(times['converted']):.2f}) | {converted / original:.2f} |")


if __name__ == "__main__":
    main()
