"""Hybrid matching (H-DETR's one-to-many queries, `hybrid_sl_detr.py`, `config.num_hybrid_queries`): the attention
mask, the queries' isolation from the matching and denoising queries, their loss against the criterion's own
one-to-many matching, and that inference never runs them. Tiny random configs, no network."""

from __future__ import annotations

import math

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from test_modeling import images, randomize_angle_heads, rotated_labels, tiny_config

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.hybrid_sl_detr import hybrid_attention_mask
from sl_detr_hf.loss_sl_detr import SlDetrLoss


def _hybrid_model(**overrides) -> SlDetrForObjectDetection:
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(num_hybrid_queries=20, hybrid_k=3, **overrides)).train()
    randomize_angle_heads(model)
    return model


def _run(model, seed: int = 1, **kwargs):
    torch.manual_seed(seed)  # the same denoising noise
    return model(images(), labels=rotated_labels(), **kwargs)


def test_attention_mask_appends_an_isolated_block():
    dn = torch.tensor([[False, True, False], [True, False, False], [True, True, False]])
    mask = hybrid_attention_mask(dn, 3, 2, torch.device("cpu"))
    expected = torch.tensor([
        [False, True, False, True, True],
        [True, False, False, True, True],
        [True, True, False, True, True],
        [True, True, True, False, False],
        [True, True, True, False, False],
    ])
    assert torch.equal(mask, expected)
    free = hybrid_attention_mask(None, 2, 1, torch.device("cpu"))
    assert torch.equal(free, torch.tensor([[False, False, True], [False, False, True], [True, True, False]]))


def test_hybrid_queries_never_reach_the_other_queries():
    model = _hybrid_model()
    with torch.no_grad():
        first = _run(model)
        model.model.hybrid_queries.content_embed.weight.add_(torch.randn_like(
            model.model.hybrid_queries.content_embed.weight))
        second = _run(model)
    assert first.hybrid_outputs[0]["pred_boxes"].shape == (2, 20, 5) and first.logits.shape == (2, 12, 5)
    assert len(first.hybrid_outputs) == 2
    assert not torch.allclose(first.hybrid_outputs[-1]["logits"], second.hybrid_outputs[-1]["logits"])
    # matching and denoising queries do not move at all
    assert torch.equal(first.logits, second.logits) and torch.equal(first.pred_boxes, second.pred_boxes)
    assert torch.equal(first.dn_outputs[-1]["pred_boxes"], second.dn_outputs[-1]["pred_boxes"])
    # and the hybrid queries do not see the matching queries either
    with torch.no_grad():
        model.model.query_selection.content_embed.weight.add_(1.0)
        third = _run(model)
    assert torch.equal(second.hybrid_outputs[-1]["pred_boxes"], third.hybrid_outputs[-1]["pred_boxes"])
    assert not torch.allclose(second.logits, third.logits)


def test_hybrid_queries_start_from_the_top_proposals():
    model = _hybrid_model(query_selection_nms=0.1)  # the matching queries' NMS does not apply to them
    seen = {}
    original = model.model.decoder.forward

    def spy(*args, **kwargs):
        seen["reference"] = kwargs["reference_points"]
        return original(*args, **kwargs)

    model.model.decoder.forward = spy
    with torch.no_grad():
        outputs = _run(model)
    top = torch.topk(outputs.enc_outputs_class[..., 0], 20, dim=1).indices
    expected = torch.gather(outputs.enc_outputs_coord_logits, 1, top[..., None].expand(-1, -1, 5)).sigmoid()
    torch.testing.assert_close(seen["reference"][:, -20:], expected)


def test_hybrid_loss_is_the_one_to_many_criterion_over_k():
    model = _hybrid_model()
    outputs = _run(model)
    targets = model._prepare_targets(rotated_labels(), images(), None)
    # the same hybrid predictions through a criterion whose own matching is one-to-3
    reference = SlDetrLoss(tiny_config(one_to_many_k=3))
    last, first = outputs.hybrid_outputs[-1], outputs.hybrid_outputs[0]
    _, expected = reference({**last, "auxiliary_outputs": [first]}, targets)
    for name in ("loss_cls", "loss_bbox", "loss_sync"):
        torch.testing.assert_close(outputs.loss_dict[f"o2m.{name}"], expected[name] / 3)
        torch.testing.assert_close(outputs.loss_dict[f"d0.o2m.{name}"], expected[f"d0.{name}"] / 3)
    # each target takes 3 of the 20 hybrid queries: 3 positives per target in classification
    matches = reference.match({**last, "auxiliary_outputs": [first]}, targets)
    assert [len(q) for q, _ in matches[""]] == [6, 3]


@pytest.mark.parametrize("coefficient", [0.0, 2.0])
def test_total_weights_the_hybrid_terms_and_leaves_the_rest(coefficient):
    model = _hybrid_model(hybrid_loss_coefficient=coefficient)
    plain = SlDetrForObjectDetection(tiny_config()).train()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and unexpected == ["model.hybrid_queries.content_embed.weight"]
    with torch.no_grad():
        hybrid, alone = _run(model), _run(plain)
    weights = model.criterion.weight_dict
    o2m = sum(weights[name.rsplit(".", 1)[-1]] * value for name, value in hybrid.loss_dict.items() if "o2m." in name)
    torch.testing.assert_close(hybrid.loss, alone.loss + coefficient * o2m)
    for name, value in alone.loss_dict.items():
        torch.testing.assert_close(hybrid.loss_dict[name], value)


def test_inference_runs_no_hybrid_query_and_a_few_steps_lower_the_loss(tmp_path):
    model = _hybrid_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = _run(model).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert model.model.hybrid_queries.content_embed.weight.grad.abs().sum() > 0
    model.eval()
    plain = SlDetrForObjectDetection(tiny_config()).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        ours, theirs = model(images()), plain(images())
    assert ours.hybrid_outputs is None
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.pred_boxes, theirs.pred_boxes)
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path).eval()
    assert (loaded.config.num_hybrid_queries, loaded.config.hybrid_k) == (20, 3)
    with torch.no_grad():
        assert torch.equal(loaded(images()).pred_boxes, ours.pred_boxes)


def test_horizontal_model_with_hybrid_queries_trains():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config("horizontal", num_hybrid_queries=16)).train()
    labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"][:, :4]} for t in rotated_labels()]
    outputs = model(images(), labels=labels)
    assert outputs.hybrid_outputs[0]["pred_boxes"].shape == (2, 16, 4)
    assert torch.isfinite(outputs.loss) and "o2m.loss_sync" in outputs.loss_dict
    outputs.loss.backward()


def test_image_without_objects_and_no_hybrid_without_query_selection():
    model = _hybrid_model()
    labels = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 5)}] * 2
    outputs = model(images(), labels=labels)
    assert torch.isfinite(outputs.loss) and outputs.loss_dict["o2m.loss_bbox"] == 0
    outputs.loss.backward()
    off = SlDetrForObjectDetection(tiny_config(num_hybrid_queries=20, mixed_query_selection=False))
    assert off.model.hybrid_queries is None


@pytest.mark.parametrize(("overrides", "field"), [
    ({"num_hybrid_queries": -1}, "num_hybrid_queries"),
    ({"hybrid_k": 0}, "hybrid_k"),
    ({"hybrid_loss_coefficient": -1.0}, "hybrid_loss_coefficient"),
    ({"num_hybrid_queries": 10, "one_to_many_k": 2}, "num_hybrid_queries"),
])
def test_invalid_hybrid_settings_name_the_field(overrides, field):
    with pytest.raises((ValueError, StrictDataclassError), match=f"`{field}`"):
        SlDetrConfig(**overrides)
