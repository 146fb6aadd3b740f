"""Training with `auxiliary_loss=False` and denoising on: the loss scores the last decoder layer's matching and
denoising queries (as DINO), the same terms the model with auxiliary losses computes for that layer (it raised
`ValueError: dn_outputs has 2 layers, the decoder 1`)."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import ResNetConfig

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection

AUXILIARY = re.compile(r"^d\d+\.")  # d{i}. and d{i}.dn.: the auxiliary decoder layers' terms


def two_layer_model(box_type: str, auxiliary_loss: bool) -> SlDetrForObjectDetection:
    """A 2-decoder-layer, d_model 32 paper model (RHINO's numerics, denoising and, rotated, dynamic denoising)."""
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage3", "stage4"])
    config = SlDetrConfig.paper(
        backbone_config=backbone, use_pretrained_backbone=False, num_feature_levels=2, d_model=32,
        encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_n_points=2, decoder_n_points=2, num_queries=12,
        two_stage_num_proposals=12, max_detections=12, num_labels=3, num_denoising=12, box_type=box_type,
        auxiliary_loss=auxiliary_loss)
    torch.manual_seed(0)
    return SlDetrForObjectDetection(config).train()


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_auxiliary_loss_off_with_denoising_scores_the_last_layer(box_type):
    boxes = torch.tensor([[0.3, 0.4, 0.2, 0.1, 0.3], [0.6, 0.6, 0.15, 0.05, -0.2], [0.7, 0.3, 0.1, 0.1, 1.0]])
    boxes = boxes if box_type == "rotated" else boxes[:, :4]
    labels = [{"class_labels": torch.tensor([0, 2, 1]), "boxes": boxes},
              {"class_labels": torch.tensor([1]), "boxes": boxes[1:2]}]
    pixel_values = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with_aux = two_layer_model(box_type, auxiliary_loss=True)
    without = two_layer_model(box_type, auxiliary_loss=False)
    without.load_state_dict(with_aux.state_dict())

    torch.manual_seed(2)  # the same denoising noise and dropout in both runs
    reference = with_aux(pixel_values, labels=labels).loss_dict
    torch.manual_seed(2)
    output = without(pixel_values, labels=labels)

    expected = {key: value for key, value in reference.items() if not AUXILIARY.match(key)}
    assert {"dn.loss_cls", "dn.loss_bbox", "dn.loss_sync", "loss_sync", "enc.loss_cls"} <= set(expected)
    assert set(output.loss_dict) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(output.loss_dict[key], value, rtol=1e-5, atol=1e-6, msg=key)
    weights = without.criterion.weight_dict
    total = sum(weights[key.rsplit(".", 1)[-1]] * value for key, value in expected.items())
    torch.testing.assert_close(output.loss, total, rtol=1e-5, atol=1e-6)
    output.loss.backward()
    grads = [p.grad for p in without.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
