"""mmdetection DINO / RHINO state-dict keys -> SL-DETR keys: a rename table, read top to bottom as the source
model's parts (as transformers' conversion scripts keep theirs), and the few tensor edits a rename cannot say.

[`KEY_RENAMES`] maps each source key by the first pattern that matches it whole; in a target, `{name}` is the
pattern's group, `{name-1}` one less (mmdet counts ResNet stages and convolutions from 1) and `{name+convs}` plus
a value of the checkpoint (the neck's extra levels follow its `convs`). [`IGNORED_KEYS`] are dropped with a reason;
any other key is left over and named by `StateDictReader.finish`.

The edits after renaming ([`convert_state_dict`]): the decoder's packed self-attention `in_proj` split into q / k /
v, `ref_point_head`'s input blocks reordered from mmdet's sine order `(y, x, w, h)` to `(x, y, w, h)`, the
denoising label embedding padded with SL-DETR's zero row, the last box layer's angle row moved to the angle heads
(rotated), the neck's missing convolution biases set to zero (a GroupNorm follows them), a BGR-fed stem flipped to
take RGB, and the heads copied to the decoder's tied names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import partial

import torch

from .checkpoint import CheckpointError, StateDictReader

__all__ = ["IGNORED_KEYS", "KEY_RENAMES", "convert_state_dict", "rename_key"]

_NORM = r"(?P<p>weight|bias|running_mean|running_var)"
_LINEAR = r"(?P<p>weight|bias)"
_RESNET = "model.backbone.model."
_BLOCK = r"backbone\.layer(?P<s>[1-4])\.(?P<b>\d+)\."
_STAGE = _RESNET + "encoder.stages.{s-1}.layers.{b}."
_MSDA = r"(?P<m>sampling_offsets|attention_weights|value_proj|output_proj)\."
_ENCODER, _ENCODER_TO = r"encoder\.layers\.(?P<n>\d+)\.", "model.encoder.layers.{n}."
_DECODER, _DECODER_TO = r"decoder\.layers\.(?P<n>\d+)\.", "model.decoder.layers.{n}."

KEY_RENAMES: list[tuple[str, str]] = [
    # mmdet ResNet -> transformers' ResNetBackbone (conv / bn -> convolution / normalization)
    (r"backbone\.conv1\.weight", _RESNET + "embedder.embedder.convolution.weight"),
    (r"backbone\.bn1\." + _NORM, _RESNET + "embedder.embedder.normalization.{p}"),
    (_BLOCK + r"conv(?P<i>[1-3])\.weight", _STAGE + "layer.{i-1}.convolution.weight"),
    (_BLOCK + r"bn(?P<i>[1-3])\." + _NORM, _STAGE + "layer.{i-1}.normalization.{p}"),
    (_BLOCK + r"downsample\.0\.weight", _STAGE + "shortcut.convolution.weight"),
    (_BLOCK + r"downsample\.1\." + _NORM, _STAGE + "shortcut.normalization.{p}"),
    # ChannelMapper (a convolution and a GroupNorm per level, then the extra stride-2 levels) -> input_proj
    (r"neck\.convs\.(?P<l>\d+)\.conv\." + _LINEAR, "model.input_proj.{l}.0.{p}"),
    (r"neck\.convs\.(?P<l>\d+)\.gn\." + _LINEAR, "model.input_proj.{l}.1.{p}"),
    (r"neck\.extra_convs\.(?P<l>\d+)\.conv\." + _LINEAR, "model.input_proj.{l+convs}.0.{p}"),
    (r"neck\.extra_convs\.(?P<l>\d+)\.gn\." + _LINEAR, "model.input_proj.{l+convs}.1.{p}"),
    (r"level_embed", "model.level_embed"),
    # deformable encoder layers (norms.0 after the attention, norms.1 after the FFN)
    (_ENCODER + r"self_attn\." + _MSDA + _LINEAR, _ENCODER_TO + "self_attn.{m}.{p}"),
    (_ENCODER + r"norms\.0\." + _LINEAR, _ENCODER_TO + "self_attn_layer_norm.{p}"),
    (_ENCODER + r"ffn\.layers\.0\.0\." + _LINEAR, _ENCODER_TO + "mlp.fc1.{p}"),
    (_ENCODER + r"ffn\.layers\.1\." + _LINEAR, _ENCODER_TO + "mlp.fc2.{p}"),
    (_ENCODER + r"norms\.1\." + _LINEAR, _ENCODER_TO + "final_layer_norm.{p}"),
    # decoder layers: nn.MultiheadAttention (in_proj packs q; k; v: split below), deformable cross-attention, FFN
    (_DECODER + r"self_attn\.attn\.in_proj_" + _LINEAR, _DECODER_TO + "self_attn.in_proj.{p}"),
    (_DECODER + r"self_attn\.attn\.out_proj\." + _LINEAR, _DECODER_TO + "self_attn.o_proj.{p}"),
    (_DECODER + r"norms\.0\." + _LINEAR, _DECODER_TO + "self_attn_layer_norm.{p}"),
    (_DECODER + r"cross_attn\." + _MSDA + _LINEAR, _DECODER_TO + "encoder_attn.{m}.{p}"),
    (_DECODER + r"norms\.1\." + _LINEAR, _DECODER_TO + "encoder_attn_layer_norm.{p}"),
    (_DECODER + r"ffn\.layers\.0\.0\." + _LINEAR, _DECODER_TO + "mlp.fc1.{p}"),
    (_DECODER + r"ffn\.layers\.1\." + _LINEAR, _DECODER_TO + "mlp.fc2.{p}"),
    (_DECODER + r"norms\.2\." + _LINEAR, _DECODER_TO + "final_layer_norm.{p}"),
    # DINO's query parts
    (r"query_embedding\.weight", "model.query_selection.content_embed.weight"),
    (r"memory_trans_fc\." + _LINEAR, "model.enc_output.{p}"),
    (r"memory_trans_norm\." + _LINEAR, "model.enc_output_norm.{p}"),
    (r"decoder\.ref_point_head\.layers\.(?P<i>[01])\." + _LINEAR, "model.decoder.ref_point_head.mlp.layers.{i}.{p}"),
    (r"decoder\.norm\." + _LINEAR, "model.decoder.norm.{p}"),
    (r"dn_query_generator\.label_embedding\.weight", "model.denoising_class_embed.weight"),
    # heads, one per decoder layer and the two-stage encoder's last: regression branch Linear, ReLU, Linear, ReLU,
    # Linear (to 4, or 5 with the angle row, moved to the angle heads below)
    (r"bbox_head\.cls_branches\.(?P<n>\d+)\." + _LINEAR, "class_embed.{n}.{p}"),
    (r"bbox_head\.reg_branches\.(?P<n>\d+)\.0\." + _LINEAR, "bbox_embed.{n}.layers.0.{p}"),
    (r"bbox_head\.reg_branches\.(?P<n>\d+)\.2\." + _LINEAR, "bbox_embed.{n}.layers.1.{p}"),
    (r"bbox_head\.reg_branches\.(?P<n>\d+)\.4\." + _LINEAR, "bbox_embed.{n}.layers.2.{p}"),
]
"""`(source key pattern, SL-DETR key)`, first full match wins (see the module docstring for the target fields)."""

IGNORED_KEYS: list[tuple[str, str]] = [
    (r"backbone\.(.+\.)?num_batches_tracked", "BatchNorm step counter (frozen norms)"),
]
"""`(source key pattern, reason)`: keys with no counterpart that are dropped."""

_COMPILED = [(re.compile(pattern), target) for pattern, target in KEY_RENAMES]
_IGNORED = [(re.compile(pattern), reason) for pattern, reason in IGNORED_KEYS]
_FIELD = re.compile(r"\{(\w+)(?:([+-])(\w+))?\}")


def rename_key(key: str, context: Mapping[str, int] | None = None) -> str | None:
    """The SL-DETR key of a source key by [`KEY_RENAMES`], or `None` when no pattern matches it.

    `context` holds the values a target may add (`{l+convs}`)."""
    for pattern, target in _COMPILED:
        match = pattern.fullmatch(key)
        if match is not None:
            return _FIELD.sub(partial(_field, groups=match.groupdict(), context=context or {}), target)
    return None


def _field(spec: re.Match, groups: Mapping[str, str], context: Mapping[str, int]) -> str:
    """The value of a target field `{name}`, `{name-1}` or `{name+convs}`."""
    value = groups[spec[1]]
    if spec[2] is None:
        return value
    offset = int(spec[3]) if spec[3].isdigit() else int(context[spec[3]])
    return str(int(value) + offset if spec[2] == "+" else int(value) - offset)


def convert_state_dict(reader: StateDictReader, num_feature_levels: int, num_decoder_layers: int, d_model: int,
                       rotated: bool, bgr_input: bool = False) -> dict[str, torch.Tensor]:
    """The SL-DETR state dict of a DINO / RHINO checkpoint: every key renamed by [`KEY_RENAMES`] (taken from
    `reader`) or ignored by [`IGNORED_KEYS`], then the edits of the module docstring. Keys matching neither stay
    in `reader` (its `finish` names them); layouts SL-DETR cannot hold raise [`CheckpointError`]."""
    convs = reader.count("neck.convs.")
    out: dict[str, torch.Tensor] = {}
    for key in list(reader.state):
        reason = next((reason for pattern, reason in _IGNORED if pattern.fullmatch(key)), None)
        if reason is not None:
            reader.ignore([key], reason)
            continue
        target = rename_key(key, {"convs": convs})
        if target is not None:
            out[target] = reader.take(key)
    _check_neck(reader, out, convs, num_feature_levels)
    if bgr_input:  # the model saw BGR: the converted one takes RGB
        stem = _RESNET + "embedder.embedder.convolution.weight"
        out[stem] = out[stem].flip(1)
    for key in [k for k in out if ".self_attn.in_proj." in k]:  # rows q; k; v
        prefix, kind = key.split("in_proj.")
        for name, part in zip(("q_proj", "k_proj", "v_proj"), out.pop(key).chunk(3)):
            out[f"{prefix}{name}.{kind}"] = part
    _reorder_ref_point_head(out, d_model)
    label = _need(out, "model.denoising_class_embed.weight", "dn_query_generator.label_embedding.weight")
    out["model.denoising_class_embed.weight"] = torch.cat([label, label.new_zeros(1, label.shape[1])])
    _split_box_heads(reader, out, num_decoder_layers, rotated)
    _tie_heads(out, ("class_embed", "bbox_embed", "angle_embed"))
    return out


def _need(out: Mapping[str, torch.Tensor], key: str, source: str) -> torch.Tensor:
    """`out[key]`, or a [`CheckpointError`] naming the `source` key the checkpoint lacks."""
    if key not in out:
        raise CheckpointError(f"the checkpoint has no `{source}`")
    return out[key]


def _check_neck(reader: StateDictReader, out: dict[str, torch.Tensor], convs: int, num_levels: int) -> None:
    """One input projection per level with a GroupNorm; mmdet's convolutions have no bias (zero here)."""
    extra = reader.count("neck.extra_convs.")
    if convs + extra != num_levels:
        raise CheckpointError(f"neck has {convs} + {extra} levels, level_embed {num_levels}")
    for level in range(num_levels):
        src = f"neck.convs.{level}" if level < convs else f"neck.extra_convs.{level - convs}"
        weight = _need(out, f"model.input_proj.{level}.0.weight", f"{src}.conv.weight")
        if f"model.input_proj.{level}.1.weight" not in out:
            raise CheckpointError(f"{src} has no GroupNorm (`gn`): SL-DETR's input projections need one")
        out.setdefault(f"model.input_proj.{level}.0.bias", torch.zeros(weight.shape[0]))


def _reorder_ref_point_head(out: dict[str, torch.Tensor], d_model: int) -> None:
    """`ref_point_head`'s first layer takes the sine features of the reference box: mmdet's blocks `(y, x, w, h)`
    become SL-DETR's `(x, y, w, h)` (input columns `(d_model / 2)` each)."""
    key = "model.decoder.ref_point_head.mlp.layers.0.weight"
    first, half = _need(out, key, "decoder.ref_point_head.layers.0.weight"), d_model // 2
    if first.shape[1] != 4 * half:
        raise CheckpointError(f"decoder.ref_point_head takes {first.shape[1]} features, expected 4 x {half}")
    out[key] = torch.cat([first[:, half:2 * half], first[:, :half], first[:, 2 * half:]], dim=1)


def _split_box_heads(reader: StateDictReader, out: dict[str, torch.Tensor], num_decoder_layers: int,
                     rotated: bool) -> None:
    """The last regression layer predicts `cx, cy, w, h` (and the angle, rotated): its first four rows stay in
    `bbox_embed.{l}`, the angle row becomes `angle_embed.{l}` (a read-out of the same hidden features). Index
    `num_decoder_layers` is the two-stage encoder head: its angle row goes to `model.enc_angle_embed`, an MLP of its
    own in SL-DETR, which gets copies of the branch's two hidden layers (the same computation)."""
    box_dim = 5 if rotated else 4
    branches = reader.count("bbox_head.cls_branches.")
    if branches != num_decoder_layers + 1:
        raise CheckpointError(f"bbox_head has {branches} class branches, expected {num_decoder_layers + 1} "
                              "(one per decoder layer and the two-stage encoder)")
    for layer in range(num_decoder_layers + 1):
        last = f"bbox_embed.{layer}.layers.2"
        weight = _need(out, f"{last}.weight", f"bbox_head.reg_branches.{layer}.4.weight")
        bias = _need(out, f"{last}.bias", f"bbox_head.reg_branches.{layer}.4.bias")
        if weight.shape[0] != box_dim:
            raise CheckpointError(f"bbox_head.reg_branches.{layer}.4 predicts {weight.shape[0]} box coordinates, "
                                  f"expected {box_dim}")
        out[f"{last}.weight"], out[f"{last}.bias"] = weight[:4], bias[:4]
        if not rotated:
            continue
        if layer < num_decoder_layers:
            out[f"angle_embed.{layer}.weight"], out[f"angle_embed.{layer}.bias"] = weight[4:], bias[4:]
            continue
        for i in range(2):
            for kind in ("weight", "bias"):
                out[f"model.enc_angle_embed.layers.{i}.{kind}"] = out[f"bbox_embed.{layer}.layers.{i}.{kind}"].clone()
        out["model.enc_angle_embed.layers.2.weight"] = weight[4:]
        out["model.enc_angle_embed.layers.2.bias"] = bias[4:]


def _tie_heads(out: dict[str, torch.Tensor], names: Iterable[str]) -> None:
    """Copy the detection heads to the decoder's tied names (`model.decoder.{name}.*`)."""
    for name in names:
        for key in [k for k in out if k.startswith(f"{name}.")]:
            out[f"model.decoder.{key}"] = out[key]
