"""Readers for the RHINO / mmdetection-DINO reference fixtures (`tests/fixtures/rhino`, `tests/fixtures/mmdet_dino`).

The fixtures are written by `scripts/make_rhino_reference.py`, which runs the original code in a separate
environment; these readers need only torch, safetensors, numpy and Pillow (no mm package).

- `load_state_dict(folder)`: the model's state_dict exactly as the original code ran it (float32 weights, int64
  `num_batches_tracked`), with the original key names.
- `load_case(folder, case)`: the case's tensors and its JSON sidecar (image metas, conventions, ranking margins).
- `case_inputs(folder, case)`: the preprocessed batch tensor (B, 3, H, W), rebuilt bit for bit from the resized PNGs.
- `write_mmengine_checkpoint(folder, path)`: a `.pth` holding `{'meta': ..., 'state_dict': ...}` as mmengine writes
  it (minus the optimizer / message hub, so it loads with `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

FIXTURES = Path(__file__).parent / "fixtures"
RHINO_FIXTURES = FIXTURES / "rhino"
DINO_FIXTURES = FIXTURES / "mmdet_dino"
CASES = ("square", "wide", "batch2_padded")


def _unpack_int4(packed: torch.Tensor, shape: list[int]) -> torch.Tensor:
    low = (packed & 0xF).to(torch.int16)
    high = (packed >> 4).to(torch.int16)
    k = torch.stack([low, high], dim=1).flatten()
    k = torch.where(k > 7, k - 16, k)  # two's complement nibbles
    numel = int(np.prod(shape)) if shape else 1
    return k[:numel].reshape(shape)


def load_state_dict(folder: Path | str) -> OrderedDict[str, torch.Tensor]:
    folder = Path(folder)
    path = folder / "weights.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    model = json.loads((folder / "model.json").read_text())
    scales = json.loads(meta.get("scales_log2", "{}"))
    shapes = json.loads(meta.get("shapes", "{}"))
    state_dict = OrderedDict()
    for key in model["state_dict"]:  # the original order
        t = tensors[key]
        if key in scales:
            if meta.get("format") == "int4-pow2-packed":
                t = _unpack_int4(t, shapes[key])
            t = t.to(torch.float32) * 2.0 ** scales[key]
        state_dict[key] = t
    return state_dict


def load_case(folder: Path | str, case: str) -> tuple[dict[str, torch.Tensor], dict]:
    folder = Path(folder)
    return load_file(str(folder / f"{case}.safetensors")), json.loads((folder / f"{case}.json").read_text())


def case_inputs(folder: Path | str, case: str) -> torch.Tensor:
    """(B, 3, H, W) float32: (RGB - mean) / std of each resized image, zero padding bottom / right."""
    folder = Path(folder)
    side = json.loads((folder / f"{case}.json").read_text())
    height, width = side["batch_input_shape"]
    mean = torch.tensor(side["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(side["std"], dtype=torch.float32).view(3, 1, 1)
    batch = torch.zeros(len(side["images"]), 3, height, width)
    for b, image in enumerate(side["images"]):
        rgb = np.asarray(Image.open(folder / image["resized_png"]).convert("RGB"))
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()
        h, w = x.shape[1:]
        assert [h, w] == image["meta"]["img_shape"]
        batch[b, :, :h, :w] = (x - mean) / std
    return batch


def write_mmengine_checkpoint(folder: Path | str, path: Path | str) -> Path:
    folder = Path(folder)
    model = json.loads((folder / "model.json").read_text())
    torch.save({"meta": model["checkpoint_meta"], "state_dict": load_state_dict(folder)}, str(path))
    return Path(path)
