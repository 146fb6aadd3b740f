"""Tiny random SL-DETR models and synthetic images for the inference / sharing tests (no downloads)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from transformers import ResNetConfig

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection, SlDetrImageProcessor

CLASS_NAMES = ("plane", "ship", "storage-tank")
NUM_QUERIES = 20


def tiny_model(box_type: str = "rotated", seed: int = 0, **overrides) -> SlDetrForObjectDetection:
    """A 1-layer, d_model 32 SL-DETR with a random slim ResNet backbone, in eval mode (`overrides`: more
    `SlDetrConfig` fields)."""
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage3", "stage4"])
    config = SlDetrConfig(
        backbone_config=backbone, use_pretrained_backbone=False, num_feature_levels=2, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_n_points=2, decoder_n_points=2,
        num_queries=NUM_QUERIES, two_stage_num_proposals=NUM_QUERIES, box_type=box_type,
        id2label=dict(enumerate(CLASS_NAMES)), label2id={name: i for i, name in enumerate(CLASS_NAMES)},
        max_detections=NUM_QUERIES, **overrides,
    )
    torch.manual_seed(seed)
    model = SlDetrForObjectDetection(config).eval()
    if model.angle_embed is not None:  # zero-initialized: give the random model non-trivial angles
        with torch.no_grad():
            for head in model.angle_embed:
                last = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
                torch.nn.init.normal_(last.weight, std=2.0)
                torch.nn.init.normal_(last.bias, std=2.0)
    return model


def tiny_processor(box_type: str = "rotated") -> SlDetrImageProcessor:
    """An image processor that resizes to at most 96 px a side (fast on CPU)."""
    return SlDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, box_type=box_type,
                                max_detections=NUM_QUERIES)


def save_tiny_folder(folder):
    """`tiny_model()` and `tiny_processor()` saved into ``folder`` (a model folder for the commands); returns it."""
    tiny_model().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def random_image(height: int = 60, width: int = 90, seed: int = 0) -> Image.Image:
    """A random RGB image."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def write_grey_dota(root, count: int, size: tuple[int, int], lines: list[str]) -> None:
    """``count`` flat grey images of ``size`` ``(W, H)`` (levels 0, 40, 80, ...) in a DOTA folder, each with the
    label ``lines``."""
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    for k in range(count):
        Image.new("RGB", size, (40 * k, 40 * k, 40 * k)).save(root / "images" / f"im{k}.png")
        (root / "labelTxt" / f"im{k}.txt").write_text("\n".join(lines) + "\n")


def training_loss(examples: list[dict], names: list[str]) -> float:
    """The loss of a tiny random SL-DETR (`sl-detr train`'s tiny config, d_model 32, one layer) on the collated
    ``examples`` of `prepare_dataset`."""
    from sl_detr_hf.commands._common import tiny_config_kwargs
    from sl_detr_hf.training import make_collator

    torch.manual_seed(0)
    config = SlDetrConfig(**tiny_config_kwargs(len(names), dict(enumerate(names)), d_model=32, layers=1,
                                               num_queries=30))
    batch = make_collator()(examples)
    return SlDetrForObjectDetection(config)(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"],
                                            labels=batch["labels"]).loss.item()
