"""RHINO / mmdetection-DINO numerics (`numerics="rhino"`, issue 21; one choice since issue 26): each detail against a
hand-computed value, a folder saved before the switches existed computes as it did (Deformable DETR's numerics), and
training (denoising, losses, matching) runs with RHINO's numerics. Tiny random configs, no network."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from safetensors.torch import load_file
from test_modeling import TIMM, TINY, images, randomize_angle_heads, rotated_labels, tiny_config
from transformers.models.deformable_detr.modeling_deformable_detr import DeformableDetrSinePositionEmbedding

from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
from sl_detr_hf.decoder_sl_detr import SlDetrDecoder, refine_boxes
from sl_detr_hf.loss_sl_detr import prepare_targets
from sl_detr_hf.modeling_sl_detr import angle_from_sigmoid
from sl_detr_hf.position_embedding_sl_detr import SlDetrSinePositionEmbedding
from sl_detr_hf.query_selection_sl_detr import box_sine_embedding, proposal_scores

LEGACY = Path(__file__).parent / "fixtures" / "legacy_sl_detr"


def _rhino_model(box_type: str = "rotated", seed: int = 0, **overrides) -> SlDetrForObjectDetection:
    torch.manual_seed(seed)
    model = SlDetrForObjectDetection(tiny_config(box_type, **{"numerics": "rhino", **overrides}))
    if box_type == "rotated":
        randomize_angle_heads(model)
    if model.model.decoder.norm is not None:
        with torch.no_grad():  # a non-trivial output norm
            model.model.decoder.norm.weight.normal_(1.0, 0.2)
            model.model.decoder.norm.bias.normal_(0.0, 0.2)
    return model


def _padded_mask(batch: int = 2, size: int = 64) -> torch.Tensor:
    mask = torch.ones(batch, size, size, dtype=torch.long)
    mask[-1, 40:] = 0
    mask[-1, :, 48:] = 0
    return mask


# -------------------------------------------------------------------------------------- hand-computed values


def test_sine_encoding_with_rhinos_temperature_and_offset():
    embed = SlDetrSinePositionEmbedding(num_position_features=4, temperature=20, offset=0.0)
    mask = torch.ones(1, 2, 3, dtype=torch.long)
    pos = embed((1, 8, 2, 3), "cpu", torch.float32, mask)  # (1, 8, 2, 3): 4 y features, then 4 x features
    y, x = 2, 1  # row 1 of 2 (cumsum 2), column 0 of 3 (cumsum 1)
    y_norm, x_norm = y / (2 + 1e-6) * 2 * math.pi, x / (3 + 1e-6) * 2 * math.pi
    dim = [1.0, 1.0, 20 ** 0.5, 20 ** 0.5]
    expected_y = [math.sin(y_norm / dim[0]), math.cos(y_norm / dim[1]), math.sin(y_norm / dim[2]),
                  math.cos(y_norm / dim[3])]
    expected_x = [math.sin(x_norm / dim[0]), math.cos(x_norm / dim[1]), math.sin(x_norm / dim[2]),
                  math.cos(x_norm / dim[3])]
    torch.testing.assert_close(pos[0, :, 1, 0], torch.tensor(expected_y + expected_x), rtol=0, atol=1e-6)


def test_sine_encoding_defaults_are_transformers_own():
    mask = torch.ones(2, 5, 7, dtype=torch.long)
    mask[1, 3:] = 0
    ours = SlDetrSinePositionEmbedding(16)((2, 32, 5, 7), "cpu", torch.float32, mask)
    theirs = DeformableDetrSinePositionEmbedding(16, normalize=True)((2, 32, 5, 7), "cpu", torch.float32, mask)
    assert torch.equal(ours, theirs)
    other = SlDetrSinePositionEmbedding(16, temperature=10000, offset=-0.25)((2, 32, 5, 7), "cpu", torch.float32, mask)
    assert not torch.equal(other, theirs)


def test_query_position_sine_temperature():
    box = torch.tensor([[0.25, 0.5, 0.1, 0.2]])
    embedding = box_sine_embedding(box, d_model=8, temperature=20)  # 4 features per coordinate, (x, y, w, h)
    dim = [1.0, 1.0, 20 ** 0.5, 20 ** 0.5]
    for block, value in enumerate(box[0].tolist()):
        angle = [value * 2 * math.pi / d for d in dim]
        expected = [math.sin(angle[0]), math.cos(angle[1]), math.sin(angle[2]), math.cos(angle[3])]
        torch.testing.assert_close(embedding[0, 4 * block:4 * block + 4], torch.tensor(expected), rtol=0, atol=1e-6)


def test_class_aware_topk_ranks_by_the_best_class():
    logits = torch.tensor([[[0.9, -5.0, -5.0], [0.1, -5.0, 3.0], [0.5, 0.2, -5.0]]])  # (1, 3 tokens, 3 classes)
    assert proposal_scores(logits).argmax().item() == 0  # Deformable DETR: the first class
    assert torch.equal(proposal_scores(logits, class_aware=True), torch.tensor([[0.9, 3.0, 0.5]]))
    model = _rhino_model(num_queries=1, two_stage_num_proposals=1).eval()
    with torch.no_grad():
        out = model.model(images(), return_dict=True)
    best = out.enc_outputs_class.max(-1)[0].argmax(1)
    assert torch.equal(out.enc_topk_indices[:, 0], best)


def test_refinement_eps_inside_the_decoder():
    reference = torch.tensor([[[1.0, 0.0, 0.5, 0.9999]]])
    bbox = SlDetrForObjectDetection(tiny_config()).bbox_embed[0]
    with torch.no_grad():
        for layer in bbox.layers:
            layer.weight.zero_()
            layer.bias.zero_()
        out = refine_boxes(torch.zeros(1, 1, 32), reference, bbox, None, eps=1e-3)
    logit = math.log(1 / 1e-3)
    expected = torch.tensor([1 / (1 + math.exp(-logit)), 1 / (1 + math.exp(logit)), 0.5, 1 / (1 + math.exp(-logit))])
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-7)


def test_angle_parametrization():
    a = torch.tensor([0.0, 0.25, 0.5, 0.99])
    torch.testing.assert_close(angle_from_sigmoid(a, 0.0), a * math.pi)  # RHINO: sigmoid(a) * pi
    assert torch.equal(angle_from_sigmoid(a), (a - 0.5) * math.pi)  # le90, bit for bit as before
    reference = torch.tensor([[[0.5, 0.5, 0.2, 0.1, 0.25]]])
    ratios = torch.ones(1, 2, 2)
    assert SlDetrDecoder.attention_input(reference, ratios, 0.0)[0, 0, 0, 4].item() == pytest.approx(math.pi / 4)
    assert SlDetrDecoder.attention_input(reference, ratios)[0, 0, 0, 4].item() == pytest.approx(-math.pi / 4)


def test_rhino_angles_native_for_the_layers_le90_returned():
    model = _rhino_model().eval()
    with torch.no_grad():
        out = model(images())
        _, boxes = model.layer_predictions(model.model(images(), return_dict=True))
    native = boxes[-1][..., 4]
    assert float(native.min()) > 0 and float(native.max()) < math.pi  # (0, pi)
    assert float(out.pred_boxes[..., 4].min()) >= -math.pi / 2 and float(out.pred_boxes[..., 4].max()) < math.pi / 2
    wrapped = torch.where(native >= math.pi / 2, native - math.pi, native)
    torch.testing.assert_close(out.pred_boxes[..., 4], wrapped, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.pred_boxes[..., :4], boxes[-1][..., :4], rtol=0, atol=0)


def test_rhino_targets_are_brought_to_its_angle_range():
    model = _rhino_model()
    targets = prepare_targets(rotated_labels(), model.config, images(), None)
    theta = torch.cat([t["boxes"][:, 4] for t in targets])
    assert float(theta.min()) >= 0 and float(theta.max()) < math.pi
    # -0.9 rad (le90) is the same rectangle as -0.9 + pi
    assert targets[0]["boxes"][1, 4].item() == pytest.approx(-0.9 + math.pi)


def test_query_position_uses_the_valid_ratio_scaled_box(monkeypatch):
    model = _rhino_model().eval()
    seen = []
    head = model.model.decoder.ref_point_head
    original = head.forward
    monkeypatch.setattr(head, "forward", lambda boxes: seen.append(boxes) or original(boxes))
    mask = _padded_mask()
    with torch.no_grad():
        out = model.model(images(), pixel_mask=mask, return_dict=True)
    ratios = torch.stack([model.model.get_valid_ratio(m) for m in [mask[:, ::8, ::8]]], 1)[:, 0]  # stride 8 level
    expected = out.init_reference_points * torch.cat([ratios, ratios], -1)[:, None]
    torch.testing.assert_close(seen[0][..., :4], expected, rtol=0, atol=1e-6)
    assert float((seen[0][1, :, :4] - out.init_reference_points[1]).abs().max()) > 1e-3  # the padded image


def test_decoder_output_norm_feeds_the_heads_not_the_refinement(monkeypatch):
    model = _rhino_model().eval()
    raw = []
    for layer in model.model.decoder.layers:
        layer.register_forward_hook(lambda module, args, output: raw.append(output[0] if isinstance(output, tuple)
                                                                             else output))
    with torch.no_grad():
        out = model.model(images(), return_dict=True)
        decoder = model.model.decoder
        for index, hidden in enumerate(raw):
            torch.testing.assert_close(out.intermediate_hidden_states[:, index], decoder.norm(hidden))
            start = (torch.cat([out.init_reference_points, out.init_reference_angles], -1) if index == 0 else
                     torch.cat([out.intermediate_reference_points[:, index - 1],
                                out.intermediate_reference_angles[:, index - 1]], -1))
            refined = refine_boxes(hidden, start, decoder.bbox_embed[index], decoder.angle_embed[index], eps=1e-3)
            torch.testing.assert_close(
                torch.cat([out.intermediate_reference_points[:, index], out.intermediate_reference_angles[:, index]],
                          -1), refined)
    assert "model.decoder.norm.weight" in model.state_dict()
    assert "model.decoder.norm.weight" not in SlDetrForObjectDetection(tiny_config()).state_dict()


def test_invalid_proposals_get_an_infinite_angle():
    mask = _padded_mask()
    for numerics, masked in (("deformable_detr", False), ("rhino", True)):
        model = _rhino_model(numerics=numerics).eval()
        with torch.no_grad():
            out = model.model(images(), pixel_mask=mask, return_dict=True)
        invalid = torch.isinf(out.enc_outputs_coord_logits[..., 0])
        assert bool(invalid.any())
        angles = out.enc_outputs_coord_logits[..., 4]
        assert bool(torch.isinf(angles[invalid]).all()) is masked
        assert bool(torch.isfinite(angles[~invalid]).all())


def test_rotated_sampling_units_follow_the_config():
    model = _rhino_model()
    assert all(not layer.encoder_attn.rotate_in_pixels for layer in model.model.decoder.layers)
    model = SlDetrForObjectDetection(tiny_config())
    assert all(layer.encoder_attn.rotate_in_pixels for layer in model.model.decoder.layers)


def test_switch_values_are_checked():
    for field, value in (("position_embedding_temperature", 0), ("numerics", "le90"), ("angle_start", 10)):
        with pytest.raises(StrictDataclassClassValidationError, match=field):
            SlDetrConfig(**{field: value})


# ------------------------------------------------------------------------------------- backward compatibility


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_a_folder_saved_before_the_switches_computes_as_it_did(box_type):
    folder = LEGACY / box_type
    saved = json.loads((folder / "config.json").read_text())
    assert "angle_start" not in saved and "decoder_output_norm" not in saved  # written by the code before them
    model = SlDetrForObjectDetection.from_pretrained(folder).eval()
    config = model.config
    assert (config.position_embedding_temperature, config.position_embedding_offset, config.angle_start) == (
        10000, -0.5, -90)
    assert config.numerics == "deformable_detr" and model.model.decoder.norm is None
    reference = load_file(str(LEGACY / "reference.safetensors"))
    with torch.no_grad():
        out = model(reference["pixel_values"], pixel_mask=reference["pixel_mask"])
    for name in ("logits", "pred_boxes", "enc_outputs_class", "enc_outputs_coord_logits"):
        # the last bits differ between CPUs (the fixture's machine and this one: 5e-7); another numerics: > 1e-3
        torch.testing.assert_close(getattr(out, name), reference[f"{box_type}.{name}"], rtol=0, atol=1e-5,
                                   msg=name)


def test_the_default_computes_rhinos_numerics():
    decoder = SlDetrForObjectDetection(SlDetrConfig(**TIMM, **TINY)).model.decoder  # numerics left to the default
    assert decoder.norm is not None and decoder.refine_eps == 1e-3 and decoder.query_position_valid_ratios
    assert not any(layer.encoder_attn.rotate_in_pixels for layer in decoder.layers)
    plain = SlDetrForObjectDetection(tiny_config()).model.decoder  # numerics="deformable_detr"
    assert plain.norm is None and plain.refine_eps == 1e-5 and not plain.query_position_valid_ratios


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("box_type", ["rotated", "horizontal"])
def test_training_with_every_rhino_switch_on(box_type):
    model = _rhino_model(box_type, matcher_box_cost="hausdorff").train()
    labels = rotated_labels()
    if box_type == "horizontal":
        labels = [{"class_labels": t["class_labels"], "boxes": t["boxes"][:, :4]} for t in labels]
    out = model(images(), pixel_mask=_padded_mask(), labels=labels)
    assert out.dn_meta is not None
    assert any(key.startswith("enc.") for key in out.loss_dict)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not [name for name in missing if "backbone" not in name], missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if box_type == "rotated":  # returned boxes are le90
        assert float(out.pred_boxes[..., 4].detach().max()) < math.pi / 2


def test_rhino_denoising_reference_angles_are_in_its_range(monkeypatch):
    import sl_detr_hf.modeling_sl_detr as modeling

    seen = {}
    original = modeling.build_denoising_queries

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen["reference"] = result[1]
        seen["targets"] = args[0]
        return result

    monkeypatch.setattr(modeling, "build_denoising_queries", spy)
    model = _rhino_model().train()
    model(images(), labels=rotated_labels())
    theta = seen["targets"][0]["boxes"][0, 4]
    assert seen["reference"][0, 0, 4].item() == pytest.approx((theta / math.pi).item(), abs=1e-6)  # a = theta / pi


def test_eval_batch_norm_is_torchs_kernel_and_keeps_the_state_dict(tmp_path):
    from sl_detr_hf.backbone_sl_detr import SlDetrEvalBatchNorm2d

    reference = torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        for tensor in (reference.weight, reference.bias, reference.running_mean):
            tensor.normal_()
        reference.running_var.uniform_(0.5, 2.0)
    ours = SlDetrEvalBatchNorm2d(6)
    ours.load_state_dict(reference.state_dict())  # num_batches_tracked dropped, as the frozen norm does
    x = torch.randn(2, 6, 5, 7)
    assert torch.equal(ours(x), reference(x))

    frozen = SlDetrForObjectDetection(tiny_config()).eval()
    exact = SlDetrForObjectDetection(tiny_config(backbone_norm="eval_batch_norm")).eval()
    loaded_keys = exact.load_state_dict(frozen.state_dict(), strict=False)  # same keys: nothing missing or left
    assert (loaded_keys.missing_keys, loaded_keys.unexpected_keys) == ([], [])
    norms = [m for m in exact.model.backbone.modules() if isinstance(m, SlDetrEvalBatchNorm2d)]
    assert norms and not any(p.requires_grad for m in norms for p in m.parameters())
    with torch.no_grad():
        torch.testing.assert_close(exact(images()).logits, frozen(images()).logits, rtol=0, atol=1e-4)
    exact.save_pretrained(tmp_path)
    loaded = SlDetrForObjectDetection.from_pretrained(tmp_path)
    assert sum(isinstance(m, SlDetrEvalBatchNorm2d) for m in loaded.model.backbone.modules()) == len(norms)
