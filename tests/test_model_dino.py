"""The DINO / RHINO parts of the model (issue 9): denoising queries behind their attention mask, mixed query
selection, look forward twice, rotated sampling in the decoder, the original head init (first loss of order 10),
small images, and the model-side input fixes of issue 10. Tiny random configs, no network."""

from __future__ import annotations

import math

import pytest
import torch
from test_modeling import images, randomize_angle_heads, rotated_labels, tiny_config
from transformers import BatchFeature, ResNetConfig

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.commands._common import tiny_config_kwargs
from sl_detr_hf.loss_sl_detr import prepare_targets

PRIOR = -math.log((1 - 0.01) / 0.01)


def _copy(model: SlDetrForObjectDetection, **overrides) -> SlDetrForObjectDetection:
    """A model with other switches and the same weights."""
    other = SlDetrForObjectDetection(tiny_config(**overrides)).train(model.training)
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected
    return other


def _loss_layers(loss_dict: dict) -> int:
    """How many prediction layers carry a loss (each has its own `loss_cls`)."""
    return sum(1 for key in loss_dict if key.endswith("loss_cls"))


# --------------------------------------------------------------------------------------------------
# Denoising queries
# --------------------------------------------------------------------------------------------------


def test_denoising_queries_never_reach_the_matching_queries():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config()).train()
    pixel_values, labels = images(), rotated_labels()
    runs = []
    for seed in (1, 2):  # other label / box noise: other denoising queries
        torch.manual_seed(seed)
        with torch.no_grad():
            runs.append(model(pixel_values, labels=labels))
    first, second = runs
    # G = min(100 // M, 30) groups of 2 * M queries, M = 2 objects
    assert first.dn_meta == {"num_groups": 30, "max_objects": 2}
    assert first.intermediate_hidden_states.shape[2] == 2 * 30 * 2 + 12
    assert len(first.dn_outputs) == 2 and first.dn_outputs[0]["pred_boxes"].shape == (2, 120, 5)
    assert not torch.allclose(first.dn_outputs[-1]["pred_boxes"], second.dn_outputs[-1]["pred_boxes"])
    # the matching queries' outputs do not move at all
    assert torch.equal(first.logits, second.logits) and torch.equal(first.pred_boxes, second.pred_boxes)
    assert torch.equal(first.auxiliary_outputs[0]["pred_boxes"], second.auxiliary_outputs[0]["pred_boxes"])
    # and equal those of the model run without any denoising query (inference)
    model.eval()
    with torch.no_grad():
        plain = model(pixel_values)
    assert plain.dn_outputs is None and plain.dn_meta is None and plain.logits.shape == (2, 12, 5)
    torch.testing.assert_close(plain.logits, first.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain.pred_boxes, first.pred_boxes, atol=1e-5, rtol=0)


def test_denoising_queries_start_from_their_noised_boxes(monkeypatch):
    """The DN queries' references are the builder's boxes (sigmoid space, angle a = theta / pi + 0.5)."""
    from sl_detr_hf import modeling_sl_detr

    captured = {}
    build = modeling_sl_detr.build_denoising_queries

    def spy(*args, **kwargs):
        captured["result"] = result = build(*args, **kwargs)
        captured["num_queries"] = kwargs["num_queries"]
        return result

    monkeypatch.setattr(modeling_sl_detr, "build_denoising_queries", spy)
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(box_noise_scale=0.0, label_noise_ratio=0.0)).train()
    with torch.no_grad():
        outputs = model(images(), labels=rotated_labels())
    _, reference, mask, meta = captured["result"]
    assert captured["num_queries"] == 12 and mask.shape == (2 * 2 * 30 + 12,) * 2
    num_dn = 2 * meta["num_groups"] * meta["max_objects"]
    torch.testing.assert_close(outputs.init_reference_points[:, :num_dn], reference[..., :4])
    torch.testing.assert_close(outputs.init_reference_angles[:, :num_dn], reference[..., 4:])
    # without noise a positive DN query of image 0 starts exactly on its object
    target = rotated_labels()[0]["boxes"][1]
    torch.testing.assert_close(reference[0, 1, :4], target[:4], atol=1e-4, rtol=0)
    torch.testing.assert_close(reference[0, 1, 4], target[4] / math.pi + 0.5)


def test_inference_runs_no_training_part():
    """At eval time (even with labels) no denoising query is built; outputs keep their shapes."""
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config()).eval()
    with torch.no_grad():
        outputs = model(images(), labels=rotated_labels())
    assert outputs.dn_meta is None and outputs.dn_outputs is None
    assert outputs.logits.shape == (2, 12, 5) and outputs.init_reference_points.shape == (2, 12, 4)
    assert torch.isfinite(outputs.loss)


# --------------------------------------------------------------------------------------------------
# Query selection, look forward twice, rotated sampling
# --------------------------------------------------------------------------------------------------


def test_queries_start_from_the_selected_proposals_and_the_encoder_loss_sees_them():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(num_denoising=0)).train()
    randomize_angle_heads(model)
    seen = {}

    class Spy:
        def __call__(self, outputs, targets):
            seen.update(outputs)
            return outputs["logits"].sum() * 0, {}

    model.__dict__["_criterion"] = Spy()
    outputs = model(images(), labels=rotated_labels())
    topk = torch.topk(outputs.enc_outputs_class[..., 0], 12, dim=1).indices
    selected = torch.gather(outputs.enc_outputs_coord_logits, 1, topk[..., None].expand(-1, -1, 5))
    # query i starts from the i-th best proposal (box and angle), detached, learned content
    torch.testing.assert_close(outputs.init_reference_points, selected[..., :4].sigmoid())
    torch.testing.assert_close(outputs.init_reference_angles, selected[..., 4:].sigmoid())
    assert not outputs.init_reference_points.requires_grad
    assert outputs.init_reference_angles.abs().sub(0.5).abs().max() > 1e-3  # the angle heads are not silent
    enc = seen["enc_outputs"]  # mixed query selection: the encoder loss is on the selected proposals (DINO)
    assert enc["logits"].shape == (2, 12, 5)
    torch.testing.assert_close(enc["pred_boxes"][..., :4], outputs.init_reference_points)
    torch.testing.assert_close(enc["pred_boxes"][..., 4:] / math.pi + 0.5, outputs.init_reference_angles)
    assert enc["pred_boxes"].requires_grad
    assert seen["dn_outputs"] is None and seen["dn_meta"] is None
    # Deformable DETR's two-stage queries: the encoder loss sees every token
    model = SlDetrForObjectDetection(tiny_config(num_denoising=0, mixed_query_selection=False)).train()
    model.__dict__["_criterion"] = Spy()
    outputs = model(images(), labels=rotated_labels())
    assert seen["enc_outputs"]["logits"].shape == outputs.enc_outputs_class.shape


def test_look_forward_twice_trains_the_previous_layer_and_changes_no_number():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(num_denoising=0, look_forward_twice=True)).train()
    plain = _copy(model, num_denoising=0, look_forward_twice=False)
    grads = []
    for net in (model, plain):
        outputs = net(images())
        net.zero_grad()
        outputs.pred_boxes.sum().backward()  # the last layer's prediction only
        grads.append(net.bbox_embed[0].layers[-1].weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(model(images()).pred_boxes, plain(images()).pred_boxes, atol=0, rtol=0)
    # layer 1 predicts on layer 0's refined box: with look forward twice its gradient reaches layer 0's head
    assert grads[0] is not None and grads[0].abs().sum() > 0
    assert grads[1] is None or grads[1].abs().sum() == 0


def test_rotated_sampling_follows_the_angle():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(rotated_sampling="rhino")).eval()
    unrotated = _copy(model, rotated_sampling="none")
    with torch.no_grad():  # a fresh model predicts theta = 0 everywhere: both modes sample the same points
        expected = unrotated(images())
        torch.testing.assert_close(model(images()).pred_boxes, expected.pred_boxes, atol=0, rtol=0)
        for net in (model, unrotated):
            randomize_angle_heads(net)
            net.model.enc_angle_embed.layers[-1].load_state_dict(model.model.enc_angle_embed.layers[-1].state_dict())
            for head, source in zip(net.angle_embed, model.angle_embed):
                head.load_state_dict(source.state_dict())
        rhino, none = model(images()), unrotated(images())
    torch.testing.assert_close(rhino.init_reference_angles, none.init_reference_angles, atol=0, rtol=0)
    assert (rhino.init_reference_angles - 0.5).abs().max() > 0.01
    # layer 0 samples around rotated boxes: its output moves
    assert not torch.allclose(rhino.intermediate_hidden_states[:, 0], none.intermediate_hidden_states[:, 0])


def test_decoder_cross_attention_keeps_deformable_detr_names():
    model = SlDetrForObjectDetection(tiny_config())
    attention = model.model.decoder.layers[0].encoder_attn
    assert type(attention).__name__ == "SlDetrRotatedDeformableAttention" and attention.sampling == "rhino"
    names = {name for name, _ in attention.named_parameters()}
    assert names == {f"{layer}.{kind}" for layer in ("sampling_offsets", "attention_weights", "value_proj",
                                                     "output_proj") for kind in ("weight", "bias")}
    horizontal = SlDetrForObjectDetection(tiny_config("horizontal")).model.decoder.layers[0].encoder_attn
    # transformers' attention, with the model's whole-row softmax and locations (attention_sl_detr.py)
    assert type(horizontal).__name__ == "SlDetrDeformableAttention"
    assert {name for name, _ in horizontal.named_parameters()} == names


def test_horizontal_model_with_the_dino_parts_trains():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config("horizontal")).train()
    labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"][:, :4]} for t in rotated_labels()]
    outputs = model(images(), labels=labels)
    assert outputs.dn_outputs[0]["pred_boxes"].shape == (2, 120, 4) and outputs.pred_boxes.shape == (2, 12, 4)
    assert torch.isfinite(outputs.loss) and any(".dn." in key or key.startswith("dn.") for key in outputs.loss_dict)
    outputs.loss.backward()
    assert model.model.denoising_class_embed.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------------
# Initialization: first loss of order 10 per prediction layer
# --------------------------------------------------------------------------------------------------


def _synthetic_batch(size: int, box_dim: int = 5, objects: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(2, 3, size, size, generator=generator)
    labels = []
    for _ in range(2):
        centre = 0.2 + 0.6 * torch.rand(objects, 2, generator=generator)
        size_ = 0.05 + 0.15 * torch.rand(objects, 2, generator=generator)
        w, h = size_.max(1).values, size_.min(1).values
        theta = (torch.rand(objects, generator=generator) - 0.5) * math.pi
        boxes = torch.cat([centre, w[:, None], h[:, None], theta[:, None]], 1)[:, :box_dim]
        labels.append({"class_labels": torch.randint(0, 5, (objects,), generator=generator), "boxes": boxes})
    return pixel_values, labels


def test_fresh_heads_start_at_deformable_detrs_init():
    model = SlDetrForObjectDetection(tiny_config())
    for head in [*model.class_embed, *model.model.decoder.class_embed]:
        torch.testing.assert_close(head.bias, torch.full_like(head.bias, PRIOR))
    for head in [*model.bbox_embed, *model.model.decoder.bbox_embed]:
        assert torch.count_nonzero(head.layers[-1].weight) == 0 and torch.count_nonzero(head.layers[-1].bias) == 0
        assert torch.count_nonzero(head.layers[0].weight) > 0
    single = SlDetrForObjectDetection(tiny_config(two_stage=False, with_box_refine=True))
    assert single.bbox_embed[0].layers[-1].bias.tolist() == [0.0, 0.0, -2.0, -2.0]  # points get a size
    assert single.bbox_embed[1].layers[-1].bias.tolist() == [0.0, 0.0, 0.0, 0.0]
    content = model.model.query_selection.content_embed.weight
    assert 0.5 < content.std().item() < 2  # DINO: normal(0, 1)


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_first_loss_of_the_demo_model_is_of_order_ten(box_type):
    torch.manual_seed(0)
    config = SlDetrConfig(**tiny_config_kwargs(5, {i: f"c{i}" for i in range(5)}, box_type=box_type))
    model = SlDetrForObjectDetection(config).train()
    pixel_values, labels = _synthetic_batch(256, config.box_dim)
    outputs = model(pixel_values, labels=labels)
    layers = _loss_layers(outputs.loss_dict)
    assert layers == 2 * config.decoder_layers + 1  # decoder, denoising, encoder
    assert torch.isfinite(outputs.loss) and 0 < outputs.loss.item() / layers < 10, (outputs.loss, layers)


@pytest.mark.slow
def test_first_loss_of_the_paper_model_is_of_order_ten():
    torch.manual_seed(0)
    config = SlDetrConfig(num_labels=5)  # ResNet-50 (random), 6 + 6 layers, 900 queries
    model = SlDetrForObjectDetection(config).train()
    pixel_values, labels = _synthetic_batch(256)
    with torch.no_grad():
        outputs = model(pixel_values, labels=labels)
    layers = _loss_layers(outputs.loss_dict)
    assert outputs.logits.shape == (2, 900, 5) and layers == 13
    assert torch.isfinite(outputs.loss) and 0 < outputs.loss.item() / layers < 10, (outputs.loss, layers)


# --------------------------------------------------------------------------------------------------
# Small images (issue 10 item 5)
# --------------------------------------------------------------------------------------------------


def test_image_with_fewer_encoder_tokens_than_queries():
    torch.manual_seed(0)
    config = SlDetrConfig(**tiny_config_kwargs(5, {i: f"c{i}" for i in range(5)}))  # 100 queries, 3 levels
    model = SlDetrForObjectDetection(config).eval()
    pixel_values, labels = _synthetic_batch(64)
    with torch.no_grad():
        outputs = model(pixel_values)
    tokens = 8 * 8 + 4 * 4 + 2 * 2  # strides 8, 16, 32
    assert outputs.enc_outputs_class.shape[1] == tokens
    assert outputs.logits.shape == (2, tokens, 5) and outputs.pred_boxes.shape == (2, tokens, 5)
    model.train()
    outputs = model(pixel_values, labels=labels)
    assert torch.isfinite(outputs.loss) and outputs.logits.shape == (2, tokens, 5)
    outputs.loss.backward()


def test_too_small_image_names_the_minimum_size():
    model = SlDetrForObjectDetection(tiny_config()).eval()  # d_model 32: one channel per GroupNorm group
    with pytest.raises(ValueError, match=r"32 x 32 px are too small .* at least 65 px a side"):
        model(images(1, size=32))
    with torch.no_grad():
        assert model(images(1, size=65)).logits.shape == (1, 12, 5)


# --------------------------------------------------------------------------------------------------
# Inputs and loading (issue 10)
# --------------------------------------------------------------------------------------------------


def test_labels_may_be_batch_features():
    torch.manual_seed(0)
    model = SlDetrForObjectDetection(tiny_config(num_denoising=0)).train()
    as_dicts = model(images(), labels=rotated_labels()).loss
    as_features = model(images(), labels=[BatchFeature(dict(t)) for t in rotated_labels()]).loss
    assert torch.equal(as_dicts, as_features)


def test_rotated_targets_are_brought_to_le90_once():
    model = SlDetrForObjectDetection(tiny_config())
    size = torch.tensor([100, 200])  # H, W
    boxes = torch.tensor([
        [0.5, 0.5, 0.2, 0.1, 0.3],              # le90 already: kept bit for bit
        [0.5, 0.5, 0.2, 0.1, 0.3 + math.pi],    # theta outside [-pi/2, pi/2)
        [0.5, 0.5, 0.05, 0.4, 0.0],             # 10 x 40 px: w < h
    ])
    labels = [{"class_labels": torch.tensor([0, 1, 2]), "boxes": boxes, "size": size}] * 2
    prepared = prepare_targets(labels, model.config, images(), None)[0]["boxes"]
    assert torch.equal(prepared[0], boxes[0])
    torch.testing.assert_close(prepared[1], boxes[0])
    torch.testing.assert_close(prepared[2], torch.tensor([0.5, 0.5, 40 / 200, 10 / 100, -math.pi / 2]))
    with pytest.raises(ValueError, match=r"labels\[0\]\['boxes'\]` has a negative width"):
        prepare_targets([{"class_labels": torch.tensor([0]), "boxes": -boxes[:1]}] * 2, model.config, images(), None)


def test_loaded_model_trains_the_backbone_stages_a_fresh_one_does(tmp_path):
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                            out_features=["stage2", "stage3", "stage4"])
    config = tiny_config(backbone_config=backbone)
    model = SlDetrForObjectDetection(config)
    fresh = {name: p.requires_grad for name, p in model.named_parameters()}
    assert not fresh["model.backbone.model.embedder.embedder.convolution.weight"]
    assert fresh["model.backbone.model.encoder.stages.1.layers.0.layer.0.convolution.weight"]
    model.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path)
    assert {name: p.requires_grad for name, p in loaded.named_parameters()} == fresh


def test_criterion_is_built_once_and_kept_out_of_the_state_dict(monkeypatch):
    from sl_detr_hf import modeling_sl_detr

    built = []
    original = modeling_sl_detr.SlDetrLoss

    class Counting(original):
        def __init__(self, config):
            built.append(config)
            super().__init__(config)

    monkeypatch.setattr(modeling_sl_detr, "SlDetrLoss", Counting)
    model = SlDetrForObjectDetection(tiny_config(num_denoising=0)).train()
    for _ in range(2):
        model(images(), labels=rotated_labels())
    assert len(built) == 1 and model.criterion is model.criterion
    assert not any("criterion" in key or "matcher" in key for key in model.state_dict())
    assert "criterion" not in dict(model.named_modules())
