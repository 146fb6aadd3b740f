"""Write reference fixtures from RHINO's and mmdetection 3.0's own code, for the parity tests.

This script CALLS the original implementations (RHINO, SIAnalytics/RHINO, CC BY-NC 4.0; mmdetection 3.0.0,
Apache-2.0); it contains none of their code. It runs in a separate virtual environment, never in CI: the tests
only read what it writes (safetensors, JSON, PNG).

Environment (once; about 3 GB because of torch's CUDA wheels)::

    python -m venv /work/rhino-venv
    nice -n 19 /work/rhino-venv/bin/pip install "torch==2.14.1" "torchvision==0.29.1" \\
        "mmcv-lite==2.0.1" "mmdet==3.0.0" "mmengine==0.10.7" e2cnn opencv-python-headless addict yapf \\
        termcolor rich terminaltables safetensors numpy
    # RHINO's tree (commit d9baf3bc1149ebef2ef03c89b26b93106b82075a, 2024-07-26), e.g. unpacked into
    # /work/rhino-src with `git archive HEAD | tar -x -C /work/rhino-src` from a clone of SIAnalytics/RHINO.

mmcv-lite ships no compiled ops: a stub `mmcv._ext` is registered (its attributes are functions that raise when
called; dunder look-ups raise AttributeError), so that mmcv.ops imports; on the CPU, mmcv's
MultiScaleDeformableAttention runs its pure-PyTorch function, and nothing else compiled is used at inference.

Usage::

    # the committed test fixtures (reduced models, deterministic weights, 512 x 512, 384 x 512 and a padded batch)
    nice -n 19 /work/rhino-venv/bin/python scripts/make_rhino_reference.py --model rhino --rhino-root /work/rhino-src
    nice -n 19 /work/rhino-venv/bin/python scripts/make_rhino_reference.py --model dino
    # a full-size model (RHINO's R50 DOTA config as is) with random weights, its mmengine checkpoint and its
    # outputs on a real image, at the config's own test scale (1024), for the end-to-end check of issue 21:
    nice -n 19 /work/rhino-venv/bin/python scripts/make_rhino_reference.py --model rhino --rhino-root /work/rhino-src \\
        --full --seed 1234 --image tile.png --out /tmp/rhino_full

Output (``--out``, default ``tests/fixtures/rhino`` (3.0 MB) or ``tests/fixtures/mmdet_dino`` (3.6 MB); about 30 s
each on 2 cores; the full model at 1024 px takes about 30 s per forward and writes a 570 MB ``model.pth``):

- ``weights.safetensors``: the model's state_dict. Tensors of 2+ dims hold 4-bit integers times a power of two
  (value = k * 2 ** scales_log2[key], k in [-7, 7]), stored packed, two per byte (uint8 ``low nibble = element
  2i``, two's complement nibbles, padded to an even count; shapes and scales in the safetensors metadata). The
  model ran with exactly these values (the weights were put on that grid before the forward), so unpacking gives
  the float32 weights RHINO ran with, bit for bit: ``tests/_parity_fixtures.py::load_weights``. 1-d tensors
  are float32, ``num_batches_tracked`` int64. ``--float32-weights`` stores plain float32 (7x larger).
- ``model.json``: the (reduced) config as mmengine's ``pretty_text`` (what ``meta['cfg']`` of a checkpoint holds),
  the mmengine checkpoint ``meta``, the key list with shapes and dtypes, versions, the RHINO commit.
- ``model.pth`` (only with ``--full`` or ``--write-pth``): an mmengine checkpoint as mmengine's Runner writes it
  (``meta``, ``state_dict``, ``message_hub``, ``optimizer``, ``param_schedulers``).
- per case ``<case>.safetensors`` + ``<case>.json`` + PNG images: see /work/notes/rhino_harness.md or the JSON's
  ``tensors`` entry, which describes every tensor.
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import copy
import importlib.machinery
import json
import math
import os
import sys
import time
import types
from pathlib import Path

RHINO_COMMIT = "d9baf3bc1149ebef2ef03c89b26b93106b82075a"
RHINO_CONFIG = "configs/rhino/rhino-4scale_r50_2xb2-12e_dota.py"
DINO_CONFIG = "dino/dino-4scale_r50_8xb2-12e_coco.py"  # under mmdet's packaged configs (mmdet/.mim/configs)

# The reduced model of the test fixtures: every part of the full model (ResNet-50 layout with bottlenecks 3-4-6-3,
# ChannelMapper + GroupNorm with an extra stride-2 level, 4 levels, two-stage class-aware top-k, box refinement,
# the rotated v2 decoder, the DN label embedding), with fewer / narrower layers. embed_dims stays 256: RHINO's
# decoder hard-codes 128 sine features per coordinate.
REDUCED = {
    "base_channels": 4,  # ResNet-50 widths / 16: C3, C4, C5 = 32, 64, 128 channels
    "encoder_layers": 2,
    "decoder_layers": 2,
    "ffn_dim": 128,
    "num_queries": 200,
}

MEAN_STD_NOTE = "inputs = (RGB float32 - mean) / std, mean/std from the config's data_preprocessor (0-255 scale)"


# --------------------------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------------------------


def install_import_shims(rhino_root: str | None) -> None:
    """Make RHINO / mmdet importable on a CPU-only mmcv-lite: stub `mmcv._ext`, alias collections.Sequence."""
    if rhino_root is not None:
        sys.path.insert(0, os.path.abspath(rhino_root))
    if not hasattr(collections, "Sequence"):
        collections.Sequence = collections.abc.Sequence  # RHINO imports it from `collections`
    ext = types.ModuleType("mmcv._ext")

    def _getattr(name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def _not_compiled(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} is a stub: mmcv-lite has no compiled ops")

        return _not_compiled

    ext.__getattr__ = _getattr
    # a spec without a loader: mmengine's mmcv_full_available() then answers False instead of raising
    ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    sys.modules["mmcv._ext"] = ext


def load_config(kind: str, rhino_root: str | None):
    from mmengine.config import Config

    if kind == "rhino":
        cfg = Config.fromfile(os.path.join(rhino_root, RHINO_CONFIG))
    else:
        import mmdet

        cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", DINO_CONFIG))
    cfg.model.backbone.init_cfg = None
    return cfg


def reduce_config(cfg, kind: str) -> None:
    r = REDUCED
    model = cfg.model
    model.backbone.base_channels = r["base_channels"]
    widths = [r["base_channels"] * 4 * 2**i for i in model.backbone.out_indices]
    model.neck.in_channels = widths
    model.encoder.num_layers = r["encoder_layers"]
    model.decoder.num_layers = r["decoder_layers"]
    model.encoder.layer_cfg.ffn_cfg.feedforward_channels = r["ffn_dim"]
    model.decoder.layer_cfg.ffn_cfg.feedforward_channels = r["ffn_dim"]
    model.num_queries = r["num_queries"]


def register_and_build(cfg, kind: str):
    import logging

    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights logs every tensor at INFO
    if kind == "rhino":
        from mmdet.utils import register_all_modules as register_mmdet
        from mmrotate.registry import MODELS
        from mmrotate.utils import register_all_modules

        register_mmdet(init_default_scope=False)
        register_all_modules(init_default_scope=True)
    else:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules

        register_all_modules(init_default_scope=True)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    return model


# --------------------------------------------------------------------------------------------------------------
# deterministic weights
# --------------------------------------------------------------------------------------------------------------


def randomize(model, seed: int) -> None:
    """Perturb every parameter so that nothing is trivially 0 or 1 (init zeros biases, offsets, the last box layer)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                std = p.std().item() if p.numel() > 1 and p.std().item() > 0 else 0.0
                scale = 0.02 if std == 0 else 0.25 * std  # zero-initialized: offsets, last box layer
                if "cls_branches" in name:
                    scale = 0.1  # spread the class logits: fewer near-ties in the rankings
                p.add_(noise * scale)
            elif name.endswith("weight"):  # norm scales
                if not p.any():  # mmdet's ResNet zero-initializes the last BN of each residual branch
                    p.fill_(0.5)
                p.mul_(1.0 + 0.1 * noise)
            else:  # biases
                p.add_(noise * (0.5 if "cls_branches" in name else 0.05))
        # spread the predicted angles over (0, pi) (RHINO's proposals start at a = 0.5 and small deltas keep them
        # near pi / 2): the angle row of every 5-d box branch's last layer gets a larger perturbation
        for branch in getattr(model.bbox_head, "reg_branches", []):
            last = branch[-1]
            if last.out_features == 5:
                last.weight[4].add_(0.5 * torch.randn(last.weight.shape[1], generator=gen))
                last.weight[2:4].add_(0.1 * torch.randn(2, last.weight.shape[1], generator=gen))  # some w < h


def calibrate_batch_norm(model, inputs) -> None:
    """Set the backbone's BN statistics to those of `inputs` (a data-dependent init: keeps the random ResNet's
    activations O(1) through its 16 blocks, like a trained one), then perturb weight / bias."""
    import torch
    from torch import nn

    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch -> exactly its statistics
            m.training = True
        model.backbone(inputs)
        for m in bns:
            m.training = False
            m.momentum = 0.1


def quantize_state_dict(model) -> dict:
    """Put every tensor of 2+ dims on a 4-bit grid (k * 2**e, |k| <= 7), in place; return the exponents e."""
    import torch

    scales = {}
    with torch.no_grad():
        for key, t in model.state_dict(keep_vars=True).items():
            if t.dim() < 2 or not t.dtype.is_floating_point:
                continue
            amax = t.abs().max().item()
            e = math.ceil(math.log2(amax / 7.0)) if amax > 0 else 0
            q = torch.clamp(torch.round(t / 2.0**e), -7, 7)
            t.data.copy_(q * 2.0**e)
            scales[key] = e
    return scales


# --------------------------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------------------------


def procedural_image(height: int, width: int, seed: int):
    """A smooth synthetic aerial-like BGR image (gradients + rotated rectangles): compresses well as PNG."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.005, 0.03), rng.uniform(0.005, 0.03), rng.uniform(0, 6.3)
        img[..., c] = 110 + 50 * np.sin(fx * xx + ph) * np.cos(fy * yy - ph) + 20 * c
    for _ in range(24):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(8, width / 5), rng.uniform(4, height / 10)
        angle = rng.uniform(0, 180)
        pts = cv2.boxPoints(((cx, cy), (w, h), angle)).astype(np.int32)
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        cv2.fillPoly(img, [pts], color)
    return np.clip(img, 0, 255).astype(np.uint8)


def run_pipeline(cfg, image_path: str, scale):
    """The config's own test pipeline (LoadImageFromFile, Resize keep_ratio, PackDetInputs), resize scale replaced."""
    from mmcv.transforms import Compose

    steps = []
    for step in copy.deepcopy(cfg.test_pipeline):
        kind = step["type"].split(".")[-1]
        if kind in ("LoadAnnotations", "ConvertBoxType"):
            continue
        if kind == "Resize" and scale is not None:
            step["scale"] = tuple(scale)
        steps.append(step)
    return Compose(steps)({"img_path": image_path, "img_id": os.path.basename(image_path)}), steps


# --------------------------------------------------------------------------------------------------------------
# the forward with captures
# --------------------------------------------------------------------------------------------------------------


def forward_with_captures(model, kind: str, data: dict):
    """Run `model(inputs, data_samples, mode='predict')` (the real path) and capture its intermediates with hooks."""
    import torch
    from mmdet.models.layers import inverse_sigmoid

    num_layers = model.decoder.num_layers
    head = model.bbox_head
    cap: dict = {}
    hooks = []

    def keep(name):
        def hook(module, args, output):
            cap[name] = output

        return hook

    hooks.append(model.neck.register_forward_hook(keep("neck")))
    hooks.append(model.encoder.register_forward_hook(keep("memory")))
    hooks.append(head.cls_branches[num_layers].register_forward_hook(keep("enc_logits")))
    hooks.append(head.reg_branches[num_layers].register_forward_hook(keep("enc_reg")))
    hooks.append(head.register_forward_hook(keep("head")))
    for i, layer in enumerate(model.decoder.layers):
        hooks.append(layer.register_forward_hook(keep(f"dec_layer_{i}")))

    def keep_calls(name):  # decoder layer l's box branch runs twice: refinement (decoder), then the head
        def hook(module, args, output):
            cap.setdefault(name, []).append((output, output.clone()))  # the head adds the reference in place

        return hook

    for i in range(num_layers):
        hooks.append(head.reg_branches[i].register_forward_hook(keep_calls(f"reg_{i}")))

    gen_proposals = model.gen_encoder_output_proposals
    forward_decoder = model.forward_decoder

    def gen_proposals_capture(*args, **kwargs):
        out = gen_proposals(*args, **kwargs)
        cap["proposals"] = out
        return out

    def forward_decoder_capture(*args, **kwargs):
        cap["decoder_inputs"] = kwargs
        out = forward_decoder(*args, **kwargs)
        cap["decoder_outputs"] = out
        return out

    model.gen_encoder_output_proposals = gen_proposals_capture
    model.forward_decoder = forward_decoder_capture
    try:
        with torch.no_grad():
            results = model(data["inputs"], data["data_samples"], mode="predict")
    finally:
        del model.gen_encoder_output_proposals, model.forward_decoder
        for h in hooks:
            h.remove()

    references = cap["decoder_outputs"]["references"]  # L + 1 tensors (B, Q, box_dim), sigmoid space
    logits, coords = cap["head"]
    assert all(len(cap[f"reg_{i}"]) == 2 for i in range(num_layers))
    # the head's pre-sigmoid boxes: its box branch output (second call), to which the head added the reference in
    # place; checked against the branch output + mmdet's inverse_sigmoid(reference) and against the head's sigmoid
    unact = torch.stack([cap[f"reg_{i}"][1][0] for i in range(num_layers)])
    rebuilt = torch.stack([cap[f"reg_{i}"][1][1] + inverse_sigmoid(references[i]) for i in range(num_layers)])
    # (sigmoid of the stacked tensor may differ from the head's per-layer sigmoid in the last bit: vectorization)
    assert torch.equal(unact, rebuilt) and torch.allclose(unact.sigmoid(), coords, rtol=0, atol=1e-6), (
        "head reconstruction failed", (unact - rebuilt).abs().max(), (unact.sigmoid() - coords).abs().max())
    cap["dec_coords_unact"] = unact
    cap["dec_refine_delta"] = torch.stack([cap[f"reg_{i}"][0][1] for i in range(num_layers)])
    return results, cap


def collect_case(model, kind: str, data: dict, results, cap, num_probe_tokens: int = 32) -> tuple[dict, dict]:
    """Tensors (name -> tensor) and their descriptions for one case."""
    import torch

    t: dict = {}
    doc: dict = {}

    def put(name, value, text):
        t[name] = value.detach().contiguous().cpu()
        doc[name] = {"shape": list(t[name].shape), "dtype": str(t[name].dtype).replace("torch.", ""), "doc": text}

    inputs = data["inputs"]
    put("inputs_sum", inputs.double().sum(dim=(1, 2, 3)), "per image float64 sum of the preprocessed input")
    put("inputs_row0", inputs[:, :, 0, :], "first pixel row of the preprocessed input (B, 3, W), padding included")
    feats = cap["neck"]
    for lvl, f in enumerate(feats):
        put(f"neck_{lvl}_mean", f.mean(dim=(2, 3)), f"neck level {lvl} (B, 256, h, w) mean over h, w: (B, 256)")
        put(f"neck_{lvl}_pix", f[:, :, f.shape[2] // 2, ::2].transpose(1, 2),
            f"neck level {lvl} at row h//2, columns 0, 2, 4, ...: (B, ceil(w/2), 256)")
    memory = cap["memory"]
    n_tokens = memory.shape[1]
    probe = torch.linspace(0, n_tokens - 1, num_probe_tokens).round().long()
    put("memory_probe_index", probe, "token indices of memory_probe (flattened levels, row-major per level)")
    put("memory_probe", memory[:, probe], "encoder output (memory) at memory_probe_index: (B, P, 256)")
    output_memory, output_proposals = cap["proposals"]
    put("enc_output_proposals_finite", torch.isfinite(output_proposals).all(-1),
        "(B, N) False where the proposal is +inf (padding or outside (0.01, 0.99))")
    enc_logits = cap["enc_logits"]  # (B, N, C)
    enc_max = enc_logits.max(-1)[0]
    num_queries = model.num_queries
    topk = torch.topk(enc_max, k=num_queries, dim=1)[1]
    put("enc_class_max", enc_max, "(B, N) max over classes of the encoder class logits, every token (top-k key)")
    put("enc_topk_index", topk, "(B, Q) token indices of the top-k proposals, in top-k order")
    put("enc_topk_logits", torch.gather(enc_logits, 1, topk[..., None].expand(-1, -1, enc_logits.shape[-1])),
        "(B, Q, C) encoder class logits of the selected tokens")
    enc_unact = cap["enc_reg"] + output_proposals
    sel_unact = torch.gather(enc_unact, 1, topk[..., None].expand(-1, -1, enc_unact.shape[-1]))
    put("enc_topk_coords_unact", sel_unact, "(B, Q, box_dim) encoder box, pre-sigmoid (may be +inf)")
    put("enc_topk_coords", sel_unact.sigmoid(), "(B, Q, box_dim) encoder box after sigmoid")
    references = cap["decoder_outputs"]["references"]
    assert torch.equal(sel_unact.sigmoid(), references[0]), "top-k reconstruction differs from the decoder's input"
    put("dec_references", torch.stack(references),
        "(L+1, B, Q, box_dim) decoder references, sigmoid space: [0] initial (top-k), [l+1] = layer l's refined box "
        "(sigmoid(reg(unnormed h_l) + inverse_sigmoid(ref_l, 1e-3)))")
    hidden = cap["decoder_outputs"]["hidden_states"]
    put("dec_hidden_normed_q8", hidden[:, :, :8], "(L, B, 8, 256) decoder.norm(layer output), first 8 queries")
    raw = torch.stack([cap[f"dec_layer_{i}"] for i in range(len(hidden))])
    put("dec_hidden_raw_q8", raw[:, :, :8], "(L, B, 8, 256) un-normed decoder layer outputs, first 8 queries")
    logits, coords = cap["head"]
    put("dec_logits", logits, "(L, B, Q, C) class logits of every decoder layer (before sigmoid; the scores are "
        "their sigmoid, not stored)")
    put("dec_coords_unact", cap["dec_coords_unact"], "(L, B, Q, box_dim) boxes before sigmoid")
    put("dec_refine_delta", cap["dec_refine_delta"],
        "(L, B, Q, box_dim) reg_branches[l](UN-normed layer output): the decoder's in-loop refinement delta")
    put("dec_coords", coords, "(L, B, Q, box_dim) boxes after sigmoid: normalized by img_shape (W, H, W, H"
        + (", pi)" if kind == "rhino" else ")") + "; the head's output")
    labels, scores, boxes = [], [], []
    for sample in results:
        inst = sample.pred_instances
        labels.append(inst.labels)
        scores.append(inst.scores)
        boxes.append(inst.bboxes.tensor if hasattr(inst.bboxes, "tensor") else inst.bboxes)
    put("det_labels", torch.stack(labels), "(B, K) final labels (K = test_cfg.max_per_img)")
    put("det_scores", torch.stack(scores), "(B, K) final scores, sorted descending")
    if kind == "rhino":
        text = ("(B, K, 5) final boxes (cx, cy, w, h, theta) in ORIGINAL image pixels (divided by scale_factor), "
                "theta = sigmoid(a) * pi in [0, pi) (RHINO, angle_version 'width_longer, start_angle 0', not "
                "regularized)")
    else:
        text = "(B, K, 4) final boxes (x1, y1, x2, y2) in ORIGINAL image pixels (divided by scale_factor)"
    put("det_bboxes", torch.stack(boxes), text)
    num_classes = logits.shape[-1]
    last = logits[-1].sigmoid().flatten(1)
    top = last.topk(t["det_scores"].shape[1], dim=1)[1]
    assert torch.equal(top % num_classes, t["det_labels"]), "detection order differs from the head's top-k"
    put("det_query_index", top // num_classes, "(B, K) decoder query of each detection")
    return t, doc


def ranking_margins(t: dict, num_queries: int) -> dict:
    """Gaps that tell how robust each ranking is to float noise (a parity test must tolerate ties below these)."""
    import torch

    out = {}
    enc = t["enc_class_max"].sort(dim=1, descending=True)[0]
    out["enc_topk_boundary_gap"] = (enc[:, num_queries - 1] - enc[:, num_queries]).tolist()
    out["enc_topk_min_adjacent_gap"] = (enc[:, :num_queries] - enc[:, 1:num_queries + 1]).min(1)[0].tolist()
    s = t["det_scores"]
    out["det_scores_min_adjacent_gap"] = (s[:, :-1] - s[:, 1:]).min(1)[0].tolist()
    last = t["dec_logits"][-1].sigmoid().flatten(1).sort(dim=1, descending=True)[0]
    k = s.shape[1]
    if last.shape[1] > k:
        out["det_boundary_gap"] = (last[:, k - 1] - last[:, k]).tolist()
    out["enc_topk_invalid_selected"] = (~torch.gather(t["enc_output_proposals_finite"], 1,
                                                       t["enc_topk_index"])).sum(1).tolist()
    return out


def sample_meta(sample) -> dict:
    keep = ("img_id", "ori_shape", "img_shape", "pad_shape", "batch_input_shape", "scale_factor")
    meta = {}
    for key in keep:
        if key in sample.metainfo:
            value = sample.metainfo[key]
            meta[key] = [float(v) if isinstance(v, float) else int(v) for v in value] if isinstance(
                value, (tuple, list)) else value
    return meta


# --------------------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------------------


def save_weights(model, scales: dict, path: Path, float32: bool) -> dict:
    import torch
    from safetensors.torch import save_file

    tensors, info, shapes = {}, {}, {}
    for key, t in model.state_dict().items():
        if key in scales and not float32:
            k = torch.round(t / 2.0 ** scales[key]).to(torch.int16).flatten()
            assert torch.equal(k.float().view(t.shape) * 2.0 ** scales[key], t), key
            assert int(k.abs().max()) <= 7, key
            if k.numel() % 2:
                k = torch.cat([k, k.new_zeros(1)])
            nibbles = k & 0xF  # two's complement 4-bit
            stored = (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8)
            shapes[key] = list(t.shape)
        else:
            stored = t
        tensors[key] = stored.contiguous().cpu()
        info[key] = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    meta = {"format": "float32" if float32 else "int4-pow2-packed",
            "scales_log2": json.dumps({} if float32 else scales),
            "shapes": json.dumps(shapes)}
    save_file(tensors, str(path), metadata=meta)
    return info


def checkpoint_meta(cfg, kind: str, seed: int) -> dict:
    import mmengine

    if kind == "rhino":
        from mmrotate.datasets import DOTADataset

        dataset_meta = dict(DOTADataset.METAINFO)
    else:
        from mmdet.datasets import CocoDataset

        dataset_meta = dict(CocoDataset.METAINFO)
    return {
        "mmengine_version": mmengine.__version__,
        "cfg": cfg.pretty_text,
        "seed": seed,
        "experiment_name": f"reference_{kind}",
        "time": time.strftime("%Y%m%d_%H%M%S"),
        "epoch": 12,
        "iter": 1000,
        "dataset_meta": dataset_meta,
    }


def write_mmengine_checkpoint(model, cfg, meta: dict, path: Path) -> None:
    """Write a checkpoint the way mmengine's Runner.save_checkpoint does (what CheckpointHook produces)."""
    import torch
    from mmengine.logging import MessageHub
    from mmengine.optim import MultiStepLR, build_optim_wrapper
    from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu

    optim_wrapper = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    # one step so that the optimizer state has AdamW's moments (as in a real checkpoint)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    state_before = copy.deepcopy(model.state_dict())
    optim_wrapper.step()
    model.load_state_dict(state_before)  # zero grads + weight decay moved the weights: restore them
    optim_wrapper.zero_grad()
    hub = MessageHub.get_current_instance()
    hub.update_scalar("train/loss", 1.0)
    hub.update_info("epoch", meta["epoch"])
    scheduler = MultiStepLR(optim_wrapper, milestones=[11], gamma=0.1, by_epoch=True)
    checkpoint = {
        "meta": meta,
        "state_dict": weights_to_cpu(model.state_dict()),
        "message_hub": hub.state_dict(),
        "optimizer": optim_wrapper.state_dict(),
        "param_schedulers": [scheduler.state_dict()],
    }
    save_checkpoint(checkpoint, str(path))


def png_write(path: Path, bgr) -> None:
    import cv2

    assert cv2.imwrite(str(path), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["rhino", "dino"], default="rhino")
    parser.add_argument("--rhino-root", help="RHINO source tree (needed for --model rhino)")
    parser.add_argument("--out", help="output folder (default tests/fixtures/rhino or tests/fixtures/mmdet_dino)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true", help="the config's full model (no reduction), scale 1024")
    parser.add_argument("--image", action="append", help="input image(s) instead of the procedural ones")
    parser.add_argument("--scale", type=int, default=None,
                        help="Resize scale (square; default 512 reduced, the config's own with --full)")
    parser.add_argument("--write-pth", action="store_true", help="also write model.pth (always with --full)")
    parser.add_argument("--float32-weights", action="store_true", help="store the weights as float32 (unpacked)")
    parser.add_argument("--no-quantize", action="store_true", help="keep the random weights off the 4-bit grid")
    args = parser.parse_args(argv)
    if args.model == "rhino" and not args.rhino_root:
        parser.error("--model rhino needs --rhino-root")

    install_import_shims(args.rhino_root if args.model == "rhino" else None)
    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    repo = Path(__file__).resolve().parents[1]
    out = Path(args.out) if args.out else repo / "tests" / "fixtures" / ("rhino" if args.model == "rhino"
                                                                         else "mmdet_dino")
    out.mkdir(parents=True, exist_ok=True)

    cfg = load_config(args.model, args.rhino_root)
    if not args.full:
        reduce_config(cfg, args.model)
    model = register_and_build(cfg, args.model)
    randomize(model, args.seed)

    # images: given ones, or procedural: square (400 x 400 -> 512 x 512) and non-square (300 x 400 -> 384 x 512)
    scale = args.scale or (None if args.full else 512)
    images = []
    if args.image:
        for i, path in enumerate(args.image):
            images.append((f"image{i}", path))
    else:
        for name, (h, w), seed in (("square", (400, 400), 1), ("wide", (300, 400), 2)):
            path = out / f"{name}_raw.png"
            png_write(path, procedural_image(h, w, seed + 100 * args.seed))
            images.append((name, str(path)))
    packed = []
    pipeline_steps = None
    for name, path in images:
        item, pipeline_steps = run_pipeline(cfg, path, (scale, scale) if scale else None)
        packed.append((name, path, item))

    # data-dependent BN statistics on the first image, then the 4-bit grid
    first = model.data_preprocessor({"inputs": [packed[0][2]["inputs"]],
                                     "data_samples": [packed[0][2]["data_samples"]]}, training=False)
    calibrate_batch_norm(model, first["inputs"])
    scales = {} if args.no_quantize else quantize_state_dict(model)

    cases = [(name, [(name, path, item)]) for name, path, item in packed]
    if len(packed) > 1:
        cases.append(("batch2_padded", packed[:2]))
    summary = {}
    for case, members in cases:
        data = model.data_preprocessor({"inputs": [m[2]["inputs"] for m in members],
                                        "data_samples": [copy.deepcopy(m[2]["data_samples"]) for m in members]},
                                       training=False)
        # the preprocessed input must be reproducible from the resized uint8 image without cv2 / mmcv
        mean = torch.tensor(cfg.model.data_preprocessor.mean).view(3, 1, 1)
        std = torch.tensor(cfg.model.data_preprocessor.std).view(3, 1, 1)
        for b, m in enumerate(members):
            resized = m[2]["inputs"]  # (3, h, w) uint8 BGR, after Resize
            rebuilt = (resized.flip(0).float() - mean) / std
            h, w = resized.shape[1:]
            assert torch.equal(data["inputs"][b, :, :h, :w], rebuilt), "input reconstruction is not exact"
            assert not data["inputs"][b, :, h:, :].any() and not data["inputs"][b, :, :, w:].any()
            png_write(out / f"{m[0]}_resized.png", np.ascontiguousarray(resized.permute(1, 2, 0).numpy()))
        t0 = time.time()
        results, cap = forward_with_captures(model, args.model, data)
        seconds = time.time() - t0
        tensors, doc = collect_case(model, args.model, data, results, cap)
        from safetensors.torch import save_file

        save_file(tensors, str(out / f"{case}.safetensors"))
        side = {
            "case": case,
            "model": args.model,
            "images": [{"name": m[0], "raw_png": os.path.basename(m[1]) if not args.image else m[1],
                        "resized_png": f"{m[0]}_resized.png",
                        "meta": sample_meta(d)} for m, d in zip(members, data["data_samples"])],
            "batch_input_shape": list(data["inputs"].shape[2:]),
            "input_recipe": MEAN_STD_NOTE + "; inputs[b, :, :h, :w] = (resized_png as RGB - mean) / std exactly, "
                                            "0 elsewhere (padding bottom / right)",
            "mean": list(cfg.model.data_preprocessor.mean),
            "std": list(cfg.model.data_preprocessor.std),
            "pipeline": pipeline_steps,
            "angle": ({"angle_factor": math.pi, "angle_cfg": dict(cfg.model.bbox_head.angle_cfg),
                       "theta": "sigmoid(a) * pi in [0, pi)"} if args.model == "rhino" else None),
            "max_per_img": cfg.model.test_cfg.max_per_img,
            "num_queries": model.num_queries,
            "num_decoder_layers": model.decoder.num_layers,
            "margins": ranking_margins(tensors, model.num_queries),
            "cpu_forward_seconds": round(seconds, 2),
            "tensors": doc,
        }
        (out / f"{case}.json").write_text(json.dumps(side, indent=1))
        summary[case] = {"margins": side["margins"], "seconds": side["cpu_forward_seconds"]}
        print(case, json.dumps(summary[case]))

    meta = checkpoint_meta(cfg, args.model, args.seed)
    info = save_weights(model, scales, out / "weights.safetensors", args.float32_weights or args.no_quantize)
    import mmcv
    import mmdet

    model_json = {
        "model": args.model,
        "reduced": None if args.full else REDUCED,
        "source_config": RHINO_CONFIG if args.model == "rhino" else "mmdet/.mim/configs/" + DINO_CONFIG,
        "rhino_commit": RHINO_COMMIT if args.model == "rhino" else None,
        "versions": {"torch": torch.__version__, "mmcv": mmcv.__version__, "mmdet": mmdet.__version__,
                     "mmengine": meta["mmengine_version"]},
        "seed": args.seed,
        "weights": {"file": "weights.safetensors", "format": "float32" if args.float32_weights or args.no_quantize
                    else "int4-pow2-packed: 2+-dim tensors = k * 2 ** scales_log2[key], k in [-7, 7], packed two "
                         "per uint8 (low nibble first, two's complement), shapes / scales_log2 in the safetensors "
                         "metadata; 1-d float32; num_batches_tracked int64"},
        "num_tensors": len(info),
        "num_values": int(sum(math.prod(v["shape"]) for v in info.values())),
        "checkpoint_meta": meta,
        "state_dict": info,
    }
    (out / "model.json").write_text(json.dumps(model_json, indent=1))
    if args.full or args.write_pth:
        write_mmengine_checkpoint(model, cfg, meta, out / "model.pth")
    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    print(json.dumps({"out": str(out), "bytes": sizes, "total_bytes": sum(sizes.values())}, indent=1))


if __name__ == "__main__":
    main()
