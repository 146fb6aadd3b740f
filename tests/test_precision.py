"""Mixed precision (precision_sl_detr.py): the network may run under bf16 autocast, the losses never do."""

from __future__ import annotations

import torch
from _tiny_sl_detr import tiny_model

from sl_detr_hf.dense_loss_sl_detr import add_dense_encoder_loss
from sl_detr_hf.precision_sl_detr import as_float32, losses_in_float32


def _labels() -> list[dict]:
    return [{"class_labels": torch.tensor([0, 2]),
             "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.1, 0.3], [0.7, 0.6, 0.1, 0.3, -1.0]])},
            {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 5)}]


def test_as_float32_casts_nested_half_tensors_and_leaves_the_rest():
    half = torch.tensor([1.5, 2.25], dtype=torch.bfloat16)
    full, ints = torch.tensor([0.1]), torch.tensor([3])
    out = as_float32({"a": [half, (full, ints)], "b": None, "c": 2.0})
    assert out["a"][0].dtype == torch.float32 and out["a"][0].tolist() == [1.5, 2.25]
    assert out["a"][1][0] is full and out["a"][1][1] is ints  # no copies of what is float32 or not floating
    assert isinstance(out["a"][1], tuple) and out["b"] is None and out["c"] == 2.0


def test_losses_in_float32_turns_an_outer_autocast_off():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
        with losses_in_float32("cpu"):
            assert (a @ b).dtype == torch.float32
            assert torch.equal(a @ b, torch.mm(a, b))


def test_the_losses_see_float32_inputs_with_autocast_off_under_a_bf16_forward(monkeypatch):
    """The criterion and the dense loss are called, under a bf16 autocast forward, with autocast off and float32
    predictions; the total equals the float32 forward's within bf16's network error, and is finite."""
    model = tiny_model(dense_loss_coefficient=1.0, num_denoising=10).train()
    seen = []
    criterion_call = type(model.criterion).__call__

    def spy_criterion(self, outputs, targets):
        flat = [outputs["logits"], outputs["pred_boxes"], outputs["enc_outputs"]["logits"],
                *[aux["pred_boxes"] for aux in outputs["auxiliary_outputs"]],
                *[dn["logits"] for dn in outputs["dn_outputs"]]]
        seen.append(("criterion", torch.is_autocast_enabled("cpu"), {t.dtype for t in flat}))
        return criterion_call(self, outputs, targets)

    def spy_dense(loss, loss_dict, logits, boxes, proposals, targets, config):
        seen.append(("dense", torch.is_autocast_enabled("cpu"), {logits.dtype, boxes.dtype, proposals.dtype}))
        return add_dense_encoder_loss(loss, loss_dict, logits, boxes, proposals, targets, config)

    monkeypatch.setattr(type(model.criterion), "__call__", spy_criterion)
    monkeypatch.setattr("sl_detr_hf.modeling_sl_detr.add_dense_encoder_loss", spy_dense)
    pixels = torch.randn(2, 3, 64, 96)
    torch.manual_seed(0)
    full = model(pixel_values=pixels, labels=_labels()).loss
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = model(pixel_values=pixels, labels=_labels())
    assert seen[2:] == [("criterion", False, {torch.float32}), ("dense", False, {torch.float32})]
    assert half.loss.dtype == torch.float32 and all(v.dtype == torch.float32 for v in half.loss_dict.values())
    assert torch.isfinite(half.loss) and abs(half.loss.item() - full.item()) < 0.05 * full.item()
