"""Reading the reference fixtures of RHINO / mmdetection DINO (written by `scripts/make_rhino_reference.py` with the
original code; read here without any mm package) and running a converted SL-DETR model on their inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from sl_detr_hf.convert import parse_config_text

FIXTURES = Path(__file__).parent / "fixtures"


def available(kind: str, case: str | None = None) -> bool:
    """Whether the fixture `kind` ('rhino' / 'mmdet_dino') has its weights, config and `case`."""
    folder = FIXTURES / kind
    files = ["weights.safetensors", "model.json"] + ([f"{case}.json", f"{case}.safetensors"] if case else [])
    return all((folder / name).is_file() for name in files)


def load_weights(kind: str) -> dict[str, torch.Tensor]:
    """The source state dict in float32, dequantized as the fixture's metadata says (int4 / int8 codes times a
    power of two: exactly the weights the original model ran with)."""
    path = FIXTURES / kind / "weights.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path))
    fmt = metadata.get("format", "float32")
    scales = json.loads(metadata.get("scales_log2", "{}"))
    shapes = json.loads(metadata.get("shapes", "{}"))
    out = {}
    for key, stored in tensors.items():
        if key not in scales or fmt == "float32":
            out[key] = stored
            continue
        if fmt == "int8-pow2":
            codes = stored.to(torch.float32)
        elif fmt == "int4-pow2-packed":
            nibbles = torch.stack([stored & 0xF, stored >> 4], dim=-1).flatten().to(torch.int16)
            codes = torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.float32)
            numel = int(np.prod(shapes[key]))
            codes = codes[:numel].reshape(shapes[key])
        else:
            raise ValueError(f"unknown fixture weight format {fmt!r}")
        out[key] = codes * 2.0 ** scales[key]
    return out


def load_model_json(kind: str) -> dict:
    return json.loads((FIXTURES / kind / "model.json").read_text())


def source_config(kind: str) -> dict:
    """The source model's config, parsed from its checkpoint `meta['cfg']` text (no mm package)."""
    return parse_config_text(load_model_json(kind)["checkpoint_meta"]["cfg"])


def load_case(kind: str, case: str) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """`(case_json, reference_tensors, pixel_values (B, 3, H, W), pixel_mask (B, H, W))`.

    The input is the fixture's recipe: the resized PNG as RGB float32, `(x - mean) / std` on the 0-255 scale,
    zero-padded at the bottom / right to the batch's input shape (mask 1 on the image, 0 on the padding).
    """
    folder = FIXTURES / kind
    info = json.loads((folder / f"{case}.json").read_text())
    reference = load_file(str(folder / f"{case}.safetensors"))
    height, width = info["batch_input_shape"]
    mean = torch.tensor(info["mean"], dtype=torch.float32)[:, None, None]
    std = torch.tensor(info["std"], dtype=torch.float32)[:, None, None]
    pixels = torch.zeros(len(info["images"]), 3, height, width)
    mask = torch.zeros(len(info["images"]), height, width, dtype=torch.long)
    for b, image in enumerate(info["images"]):
        rgb = np.array(Image.open(folder / image["resized_png"]).convert("RGB"))
        h, w = image["meta"]["img_shape"]
        assert rgb.shape[:2] == (h, w), (rgb.shape, h, w)
        pixels[b, :, :h, :w] = (torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std
        mask[b, :h, :w] = 1
    return info, reference, pixels, mask


def run_model(model, pixels: torch.Tensor, mask: torch.Tensor, reference: dict[str, torch.Tensor],
              tolerance: float) -> tuple:
    """Our model on the fixture's input: `(outputs, per-layer logits, per-layer boxes, detection output, forced)`.

    The two-stage top-k is a ranking: proposals whose scores differ by less than float noise (the fixture's
    `enc_topk_min_adjacent_gap` can be ~1e-6) may come out in another order here, and a query that starts from
    another proposal computes something else. So when our top-k differs from the reference, it must differ only
    by such near-ties (the reference's own scores of the tokens we picked equal its scores at those ranks within
    `tolerance`); the comparison then runs with the reference's ranking (`forced=True`), which tests everything
    downstream of the ranking exactly.
    """
    from contextlib import nullcontext
    from unittest import mock

    with torch.no_grad():
        outputs = model.model(pixels, pixel_mask=mask, return_dict=True)
    forced = not torch.equal(outputs.enc_topk_indices, reference["enc_topk_index"])
    if forced:
        ref_scores = reference["enc_class_max"]
        ours = torch.gather(ref_scores, 1, outputs.enc_topk_indices)
        theirs = torch.gather(ref_scores, 1, reference["enc_topk_index"])
        assert float((ours - theirs).abs().max()) <= tolerance, "the top-k differs beyond near-ties"
    patch = mock.patch("sl_detr_hf.query_selection_sl_detr.select_proposals",
                       side_effect=lambda *args, **kwargs: reference["enc_topk_index"]) if forced else nullcontext()
    with torch.no_grad(), patch:
        if forced:
            outputs = model.model(pixels, pixel_mask=mask, return_dict=True)
        logits, boxes = model.layer_predictions(outputs)
        detection = model(pixels, pixel_mask=mask)
    return outputs, logits, boxes, detection, forced


def run_case(kind: str, case: str, model, tolerance: float) -> tuple:
    """Load ``case`` of ``kind`` and run the converted ``model`` on it.

    Returns:
        ``(info, reference, pixels, outputs, logits, boxes, detection)`` for the parity tests.
    """
    info, reference, pixels, mask = load_case(kind, case)
    outputs, logits, boxes, detection, _ = run_model(model, pixels, mask, reference, tolerance)
    return info, reference, pixels, outputs, logits, boxes, detection


def assert_every_key_accounted(converted, kind: str) -> None:
    """Every source key was mapped, and the only ones ignored are BatchNorm step counters."""
    state = load_weights(kind)
    assert set(converted.used) | set(converted.ignored) == set(state)
    assert all(key.endswith("num_batches_tracked") for key in converted.ignored)
