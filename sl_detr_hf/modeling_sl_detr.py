"""SL-DETR model: Deformable DETR (two-stage, iterative box refinement) with an oriented box head and the DINO /
RHINO decoder parts (docs/architecture.md#overview).

transformers' Deformable DETR supplies the backbone, the encoder, the decoder layers and the heads' structure; this
file wires in what SL-DETR changes, each part in its own module next to this one:

- oriented boxes: every decoder layer and the two-stage encoder head predict an angle next to the 4-d box. The
  angle lives in sigmoid space, ``a in (0, 1)``, ``theta = (a + config.angle_offset) * pi`` (radians: RHINO's
  ``a * pi`` by default, le90 ``(a - 0.5) * pi`` with Deformable DETR's numerics), and is refined across layers
  like the other coordinates: ``a_l = sigmoid(delta_a_l + inverse_sigmoid(a_{l-1}))`` (``decoder_sl_detr.py``).
  The encoder proposals start at ``a = 0.5``;
- in ``"rotated"`` mode the decoder's references are 5-d boxes whose angle turns the deformable sampling
  (``attention_sl_detr.py``, ``config.rotated_sampling``);
- mixed query selection (``query_selection_sl_detr.py``, ``config.mixed_query_selection``), contrastive
  denoising queries at training time (``denoising_sl_detr.py``, ``config.num_denoising``) and look forward twice
  (``config.look_forward_twice``); optionally a proposal NMS in the query selection (``config.query_selection_nms``);
- RHINO's / mmdetection DINO's numerics (``config.numerics``), each detail in the module of its part: the encoder's
  sine encoding (``position_embedding_sl_detr.py``), the decoder's output norm, in-loop eps and query-position
  input (``decoder_sl_detr.py``), class-aware proposal ranking (``query_selection_sl_detr.py``), the angle range
  (``config.angle_start``), the proposal angle of padded tokens (here) and the rotated sampling's units
  (``attention_sl_detr.py``);
- the heads, built once, with Deformable DETR's original initialization (class bias at the focal prior, last box
  layer zero; ``heads_sl_detr.py``);
- the backbone's frozen stages and batch norms as a config choice (``backbone_sl_detr.py``), so that a backbone
  trained from scratch can train whole with learning batch norms;
- the loss is [`SlDetrLoss`] (synchronized GIoU / KLD and quality-aware classification), built once per model.

With the DINO / RHINO parts off and Deformable DETR's numerics (`SlDetrConfig.deformable_detr`, what
`from_deformable_detr` sets), ``box_type="horizontal"`` *is* Deformable DETR (same
weights, same outputs), and in ``"rotated"`` mode logits and the first four box coordinates equal those of the
Deformable DETR it was converted from.

This file ships with ``trust_remote_code`` checkpoints: it imports only its sibling files (relative imports),
torch and transformers.
"""

import importlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers.models.deformable_detr.modeling_deformable_detr import (
    DeformableDetrForObjectDetection,
    DeformableDetrModel,
    DeformableDetrPreTrainedModel,
)
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple

from .attention_sl_detr import use_sl_detr_attention
from .backbone_sl_detr import apply_backbone_policy, check_feature_sizes, check_pixel_inputs
from .configuration_sl_detr import SlDetrConfig
from .conv_norm_folding_sl_detr import use_folded_conv_norms
from .decoder_sl_detr import SlDetrDecoder, init_marked_module, refine_boxes
from .deformable_sampling_sl_detr import use_gather_sampling
from .denoising_sl_detr import build_denoising_queries
from .dense_loss_sl_detr import add_dense_encoder_loss
from .encoder_sl_detr import SlDetrEncoder
from .geometry_conversions import wrap_angle_range
from .heads_sl_detr import SlDetrAngleHead, angle_heads, box_heads, class_heads
from .loss_sl_detr import SlDetrLoss, prepare_targets
from .outputs_sl_detr import SlDetrModelOutput, SlDetrObjectDetectionOutput
from .position_embedding_sl_detr import SlDetrSinePositionEmbedding
from .precision_sl_detr import as_float32, losses_in_float32
from .query_selection_sl_detr import (
    SlDetrBoxPositionEmbedding,
    SlDetrMixedQuerySelection,
    gather_queries,
    proposal_scores,
    select_proposals,
)
from .space_to_depth_sl_detr import apply_backbone_downsample
from .stem_sl_detr import apply_backbone_stem

logger = logging.get_logger(__name__)

__all__ = [
    "SlDetrForObjectDetection",
    "SlDetrModel",
    "SlDetrModelOutput",
    "SlDetrObjectDetectionOutput",
    "SlDetrPreTrainedModel",
    "angle_from_sigmoid",
]


def angle_from_sigmoid(angle: torch.Tensor, offset: float = -0.5) -> torch.Tensor:
    """Map the angle in sigmoid space, ``a in (0, 1)``, to radians: ``theta = (a + offset) * pi``
    (``config.angle_offset``: -0.5 gives le90 ``(-pi/2, pi/2)``, RHINO's 0 gives ``(0, pi)``)."""
    return (angle + offset) * math.pi


def _uses_query_selection(config: SlDetrConfig) -> bool:
    return bool(config.two_stage and config.mixed_query_selection)


def _uses_denoising(config: SlDetrConfig) -> bool:
    return bool(config.two_stage and config.num_denoising > 0)


class SlDetrPreTrainedModel(DeformableDetrPreTrainedModel):
    """Base class of the SL-DETR models: Deformable DETR's initialization plus its original head init."""

    config: SlDetrConfig
    config_class = SlDetrConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        init_marked_module(module)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, then the backbone's trainable stages as in a fresh model."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        for module in model.modules():
            if isinstance(module, SlDetrModel):
                apply_backbone_policy(module.backbone, module.config)
        return loaded


@dataclass
class _EncoderInputs:
    """The flattened multi-scale features that enter the encoder (`S` tokens over `n_levels` levels)."""

    source: torch.Tensor  # (B, S, d)
    mask: torch.Tensor  # (B, S) bool, True = real pixel
    position: torch.Tensor  # (B, S, d), with the level embedding
    spatial_shapes: torch.Tensor  # (n_levels, 2)
    spatial_shapes_list: list[tuple[int, int]]
    level_start_index: torch.Tensor  # (n_levels,)
    valid_ratios: torch.Tensor  # (B, n_levels, 2)


@dataclass
class _DecoderQueries:
    """What the decoder starts from: content, position (or `None`: built from the reference), reference boxes."""

    content: torch.Tensor  # (B, Q, d)
    position: torch.Tensor | None  # (B, Q, d)
    reference: torch.Tensor  # (B, Q, 2 | 4 | 5) sigmoid space
    enc_outputs_class: torch.Tensor | None = None  # (B, S, C)
    enc_outputs_coord_logits: torch.Tensor | None = None  # (B, S, D)
    topk_indices: torch.Tensor | None = None  # (B, Q)
    proposals: torch.Tensor | None = None  # (B, S, 4) the tokens' proposal boxes, inverse-sigmoid space


class SlDetrModel(SlDetrPreTrainedModel, DeformableDetrModel):
    """The bare SL-DETR encoder-decoder (backbone + deformable transformer), outputting hidden states.

    Deformable DETR's model with [`SlDetrDecoder`] and, by config switch, mixed query selection (`query_selection`,
    `decoder.ref_point_head`) and denoising queries (`denoising_class_embed`). In `"rotated"` mode the two-stage
    encoder head also proposes an angle (`enc_angle_embed`). Unlike the bare Deformable DETR model, its decoder owns
    the box / class / angle heads that box refinement and two-stage proposals need, so that it runs on its own
    ([`SlDetrForObjectDetection`] predicts with the same modules).

    The DINO parts need two-stage proposals: with `two_stage=False`, `mixed_query_selection` and `num_denoising`
    are ignored (Deformable DETR's single-stage queries).
    """

    def __init__(self, config: SlDetrConfig):
        super().__init__(config)
        apply_backbone_stem(self.backbone, config)
        apply_backbone_downsample(self.backbone, config)
        apply_backbone_policy(self.backbone, config)
        use_folded_conv_norms(self.backbone)  # batch norms folded into their convolutions at inference
        if config.position_embedding_type == "sine":  # no parameters: the same module with RHINO's numbers as options
            self.position_embedding = SlDetrSinePositionEmbedding(
                config.d_model // 2, config.position_embedding_temperature, config.position_embedding_offset
            )
        self.decoder = SlDetrDecoder(config)
        if not config.two_stage and (config.mixed_query_selection or config.num_denoising > 0):
            logger.info("SL-DETR: mixed query selection and denoising need two_stage=True; single-stage model "
                        "built without them")
        new_modules = [self.decoder]
        if config.value_only_levels:  # else Deformable DETR's encoder as built (the same random init as before)
            self.encoder = SlDetrEncoder(config)
            new_modules.append(self.encoder)
        # The two-stage encoder's angle head (the proposal angle delta).
        self.enc_angle_embed = (
            SlDetrAngleHead(config.d_model) if config.two_stage and config.box_type == "rotated" else None
        )
        self.query_selection = None
        if _uses_query_selection(config):
            self.query_selection = SlDetrMixedQuerySelection(config.num_queries, config.d_model,
                                                             config.query_selection_nms, config.angle_offset)
            # Deformable DETR's content / position from the proposals is replaced (no parameters left unused)
            self.pos_trans = self.pos_trans_norm = None
        if _uses_query_selection(config) or _uses_denoising(config):
            # Denoising queries need a position built from their box, as DINO's queries
            self.decoder.ref_point_head = SlDetrBoxPositionEmbedding(config.d_model)
        self.denoising_class_embed = None
        if _uses_denoising(config):
            self.denoising_class_embed = nn.Embedding(
                config.num_labels + 1, config.d_model, padding_idx=config.num_labels
            )
            self.denoising_class_embed._sl_detr_normal_std = 1.0
        # the heads box refinement and two-stage proposals need (`heads_sl_detr.py`); the detection model
        # predicts with these same modules
        if config.with_box_refine:
            self.decoder.bbox_embed = box_heads(config)
            self.decoder.angle_embed = angle_heads(config)
        if config.two_stage:
            self.decoder.class_embed = class_heads(config)
        new_modules += [self.enc_angle_embed, self.query_selection, self.denoising_class_embed]
        for module in new_modules:
            if module is not None:
                module.apply(self._init_weights)
        use_sl_detr_attention(self)  # transformers' deformable attention with whole-row softmax and locations
        use_gather_sampling(self)  # the deformable attention's sampling as one gather (no parameters)

    def gen_encoder_output_proposals(
        self, enc_output: torch.Tensor, padding_mask: torch.Tensor, spatial_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deformable DETR's encoder proposals; in `"rotated"` mode with an angle.

        The proposal angle logit is `0 + enc_angle_embed(object_query)`: the initial angle `a = 0.5` (`theta = 0` in
        le90, `pi / 2` in RHINO's range) plus the encoder head's angle delta (the box head adds a zero delta to it,
        see `SlDetrProposalBoxHead`). With RHINO's numerics, padded / border tokens get `+inf` like their other
        coordinates (RHINO).

        Returns:
            object_query (`(B, S, d_model)`) and output_proposals (`(B, S, D)`, inverse-sigmoid space).
        """
        object_query, output_proposals = super().gen_encoder_output_proposals(enc_output, padding_mask, spatial_shapes)
        if self.enc_angle_embed is not None:
            angle = self.enc_angle_embed(object_query)
            if self.config.rhino_numerics:
                angle = angle.masked_fill(torch.isinf(output_proposals[..., :1]), float("inf"))
            output_proposals = torch.cat([output_proposals, angle], dim=-1)
        return object_query, output_proposals

    def _encoder_inputs(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> _EncoderInputs:
        """Backbone, input projections, extra levels and flattening: the first steps of
        `DeformableDetrModel.forward`, the same operations in the same order (so the same numbers)."""
        features = self.backbone(pixel_values, pixel_mask)
        check_feature_sizes(pixel_values, [feature.shape[-2:] for feature, _ in features], self.input_proj)
        sources, masks, positions = [], [], []
        for level, (source, mask) in enumerate(features):
            sources.append(self.input_proj[level](source))
            masks.append(mask)
            positions.append(self.position_embedding(
                shape=source.shape, device=pixel_values.device, dtype=pixel_values.dtype, mask=mask
            ).to(source.dtype))
        # lowest resolution levels: 3x3 stride 2 convolutions on the last backbone stage
        for level in range(len(sources), self.config.num_feature_levels):
            source = self.input_proj[level](features[-1][0] if level == len(features) else sources[-1])
            mask = nn.functional.interpolate(
                pixel_mask[None].to(pixel_values.dtype), size=source.shape[-2:]
            ).to(torch.bool)[0]
            positions.append(self.position_embedding(
                shape=source.shape, device=pixel_values.device, dtype=pixel_values.dtype, mask=mask
            ).to(source.dtype))
            sources.append(source)
            masks.append(mask)

        spatial_shapes_list = [tuple(source.shape[-2:]) for source in sources]
        source_flatten = torch.cat([source.flatten(2).transpose(1, 2) for source in sources], 1)
        mask_flatten = torch.cat([mask.flatten(1) for mask in masks], 1)
        position_flatten = torch.cat([
            position.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
            for level, position in enumerate(positions)
        ], 1)
        spatial_shapes = torch.as_tensor(spatial_shapes_list, dtype=torch.long, device=source_flatten.device)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1,)), spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([self.get_valid_ratio(m, dtype=source_flatten.dtype) for m in masks], 1)
        return _EncoderInputs(source_flatten, mask_flatten, position_flatten, spatial_shapes, spatial_shapes_list,
                              level_start_index, valid_ratios)

    def _decoder_queries(self, memory: torch.Tensor, inputs: _EncoderInputs) -> _DecoderQueries:
        """The decoder's initial queries: two-stage proposals (mixed query selection or Deformable DETR's
        proposal-derived queries), or Deformable DETR's learned single-stage queries."""
        batch_size, _, d_model = memory.shape
        if not self.config.two_stage:
            query_embed, target = torch.split(self.query_position_embeddings.weight, d_model, dim=1)
            query_embed = query_embed.unsqueeze(0).expand(batch_size, -1, -1)
            target = target.unsqueeze(0).expand(batch_size, -1, -1)
            return _DecoderQueries(target, query_embed, self.reference_points(query_embed).sigmoid())

        object_query, output_proposals = self.gen_encoder_output_proposals(
            memory, ~inputs.mask, inputs.spatial_shapes_list
        )
        # a detection head on every encoder token (Deformable DETR's two-stage, A.4 of its paper)
        enc_outputs_class = self.decoder.class_embed[-1](object_query)
        enc_outputs_coord_logits = self.decoder.bbox_embed[-1](object_query) + output_proposals
        scores = proposal_scores(enc_outputs_class, class_aware=self.config.rhino_numerics)
        if self.query_selection is not None:
            target, reference, topk = self.query_selection(scores, enc_outputs_coord_logits)
            position = None
        else:
            topk = select_proposals(scores, self.config.two_stage_num_proposals, enc_outputs_coord_logits,
                                    self.config.query_selection_nms, self.config.angle_offset)
            topk_coords_logits = gather_queries(enc_outputs_coord_logits, topk).detach()
            reference = topk_coords_logits.sigmoid()
            proposal_position = self.get_proposal_pos_embed(topk_coords_logits[..., :4])
            pos_trans_out = self.pos_trans_norm(self.pos_trans(proposal_position))
            position, target = torch.split(pos_trans_out, d_model, dim=2)
        return _DecoderQueries(target, position, reference, enc_outputs_class, enc_outputs_coord_logits, topk,
                               output_proposals[..., :4])

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: list[dict] | None = None,
        **kwargs,
    ) -> SlDetrModelOutput:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)`): normalized, padded images.
            pixel_mask (`(B, H, W)`, *optional*): 1 for real pixels, 0 for padding.
            labels (`list[dict]`, *optional*): prepared targets (see `SlDetrForObjectDetection.forward`); at
                training time with `config.num_denoising > 0` they give the denoising queries, else unused.
            decoder_attention_mask, inputs_embeds, decoder_inputs_embeds: accepted and unused, as in
                `DeformableDetrModel.forward`.

        Returns:
            [`SlDetrModelOutput`].
        """
        check_pixel_inputs(self.config, pixel_values, pixel_mask)
        if pixel_mask is None:
            batch_size, _, height, width = pixel_values.shape
            pixel_mask = torch.ones((batch_size, height, width), dtype=torch.long, device=pixel_values.device)
        inputs = self._encoder_inputs(pixel_values, pixel_mask)
        if encoder_outputs is None:
            encoder_outputs = self.encoder(
                inputs_embeds=inputs.source,
                attention_mask=inputs.mask,
                spatial_position_embeddings=inputs.position,
                spatial_shapes=inputs.spatial_shapes,
                spatial_shapes_list=inputs.spatial_shapes_list,
                level_start_index=inputs.level_start_index,
                valid_ratios=inputs.valid_ratios,
                **kwargs,
            )
        queries = self._decoder_queries(encoder_outputs[0], inputs)

        content, reference, self_attention_mask, dn_meta = queries.content, queries.reference, None, None
        if self.training and labels is not None and self.denoising_class_embed is not None:
            denoising = build_denoising_queries(
                labels, self.denoising_class_embed, num_labels=self.config.num_labels,
                num_queries=content.shape[1], num_denoising=self.config.num_denoising,
                max_groups=self.config.max_denoising_groups, label_noise_ratio=self.config.label_noise_ratio,
                box_noise_scale=self.config.box_noise_scale, angle_noise_scale=self.config.angle_noise_scale,
                box_dim=self.config.box_dim, angle_offset=self.config.angle_offset,
            )
            if denoising is not None:
                dn_content, dn_reference, self_attention_mask, dn_meta = denoising
                content = torch.cat([dn_content.to(content.dtype), content], dim=1)
                reference = torch.cat([dn_reference.to(reference.dtype), reference], dim=1)

        decoder_outputs = self.decoder(
            inputs_embeds=content,
            object_queries_position_embeddings=queries.position,
            encoder_hidden_states=encoder_outputs[0],
            encoder_attention_mask=inputs.mask,
            reference_points=reference,
            spatial_shapes=inputs.spatial_shapes,
            spatial_shapes_list=inputs.spatial_shapes_list,
            level_start_index=inputs.level_start_index,
            valid_ratios=inputs.valid_ratios,
            self_attention_mask=self_attention_mask,
            **kwargs,
        )
        references = decoder_outputs.intermediate_reference_points
        init_angles = inter_angles = None
        if self.config.box_type == "rotated":
            init_angles = reference[..., 4:5] if reference.shape[-1] == 5 else torch.full_like(reference[..., :1], 0.5)
            if references.shape[-1] == 5:
                inter_angles = references[..., 4:5]
        return SlDetrModelOutput(
            init_reference_points=reference[..., :4],
            last_hidden_state=decoder_outputs.last_hidden_state,
            intermediate_hidden_states=decoder_outputs.intermediate_hidden_states,
            intermediate_reference_points=references[..., :4],
            decoder_hidden_states=decoder_outputs.hidden_states,
            decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions,
            encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attentions=encoder_outputs.attentions,
            enc_outputs_class=queries.enc_outputs_class,
            enc_outputs_coord_logits=queries.enc_outputs_coord_logits,
            init_reference_angles=init_angles,
            intermediate_reference_angles=inter_angles,
            enc_topk_indices=queries.topk_indices,
            dn_meta=dn_meta,
            enc_output_proposals=queries.proposals,
        )


def _full_reference(points: torch.Tensor, angles: torch.Tensor | None) -> torch.Tensor:
    """`(..., 4)` boxes and `(..., 1)` angles (sigmoid space) -> `(..., 5)`; points / horizontal boxes unchanged."""
    if angles is None or points.shape[-1] != 4:
        return points
    return torch.cat([points, angles], dim=-1)


class SlDetrForObjectDetection(SlDetrPreTrainedModel, DeformableDetrForObjectDetection):
    """SL-DETR for (oriented) object detection: [`SlDetrModel`] with class, box and angle heads per decoder layer.

    `config.box_type="rotated"`: `pred_boxes` are `(cx, cy, w, h, theta)`; `"horizontal"`: `(cx, cy, w, h)`, a
    drop-in for `DeformableDetrForObjectDetection`. With `labels`, the loss is [`SlDetrLoss`], built once per model
    (`criterion`, not part of the state dict).

    Parameter names follow Deformable DETR (`model.*`, `class_embed.*`, `bbox_embed.*`); the new angle heads are
    `angle_embed.{layer}` (one per decoder layer: a linear read-out of the hidden features of `bbox_embed.{layer}`)
    and, with two-stage, `model.enc_angle_embed` (an MLP on the encoder proposals).
    """

    def __init__(self, config: SlDetrConfig):
        # Deliberately skip DeformableDetrForObjectDetection.__init__: it would build a DeformableDetrModel and 4-d
        # heads; the structure and the tying below are the same, with SlDetrModel and the angle heads.
        DeformableDetrPreTrainedModel.__init__(self, config)
        self.model = SlDetrModel(config)
        # One set of heads (`heads_sl_detr.py`): the decoder's where box refinement / two-stage put them there
        # (one module under both names, the keys Deformable DETR ties), else built here. With two-stage, the last
        # class / box head generates the region proposals. The angle delta is a linear read-out of the box head's
        # features (shared as in RHINO's 5-d box head): an angle costs almost nothing.
        decoder = self.model.decoder
        self.class_embed = decoder.class_embed if decoder.class_embed is not None else class_heads(config)
        self.bbox_embed = decoder.bbox_embed if decoder.bbox_embed is not None else box_heads(config)
        self.angle_embed = decoder.angle_embed if decoder.angle_embed is not None else angle_heads(config)
        self._tied_weights_keys = dict(self._tied_weights_keys)
        if config.with_box_refine:
            self._tied_weights_keys["bbox_embed"] = "model.decoder.bbox_embed"
            if self.angle_embed is not None:
                self._tied_weights_keys["angle_embed"] = "model.decoder.angle_embed"
        elif self.angle_embed is not None:
            # without box refinement the per-layer heads are shared, as Deformable DETR's class / box heads are
            self._tied_weights_keys[r"angle_embed.(?![0])\d+"] = "angle_embed.0"
        if config.two_stage:
            self._tied_weights_keys["class_embed"] = "model.decoder.class_embed"
        self.post_init()

    @property
    def criterion(self) -> SlDetrLoss:
        """The model's [`SlDetrLoss`], built on first use from `config` and kept (outside the module tree, so
        outside the state dict)."""
        criterion = self.__dict__.get("_criterion")
        if criterion is None:
            criterion = SlDetrLoss(self.config)
            self.__dict__["_criterion"] = criterion
        return criterion

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        encoder_outputs: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        decoder_inputs_embeds: torch.Tensor | None = None,
        labels: list[Mapping] | None = None,
        **kwargs,
    ) -> SlDetrObjectDetectionOutput:
        r"""
        Args:
            pixel_values (`(B, 3, H, W)`): normalized, padded images.
            pixel_mask (`(B, H, W)`, *optional*): 1 for real pixels, 0 for padding.
            labels (`list` of `B` mappings, *optional*): per image (a dict, or the `BatchFeature` the image
                processor returns) `"class_labels"` (`(n,)` int64 in `[0, num_labels)`), `"boxes"`
                (`(n, config.box_dim)`, normalized as `pred_boxes`; a rotated box's `(w, h, theta)` is brought to le90
                here) and `"size"` (`(2,)`, the `(H, W)` the boxes are normalized by; defaults to the image's
                unpadded extent in `pixel_mask`, else `(H, W)` of `pixel_values`). `n` may be 0.
            Other arguments as in `DeformableDetrForObjectDetection.forward`.

        Returns:
            [`SlDetrObjectDetectionOutput`].

        Example:

        ```python
        >>> import torch
        >>> from sl_detr_hf import SlDetrConfig, SlDetrForObjectDetection
        >>> config = SlDetrConfig(backbone="resnet18", use_pretrained_backbone=False, d_model=64,
        ...                       encoder_layers=1, decoder_layers=2, num_queries=20, two_stage_num_proposals=20)
        >>> model = SlDetrForObjectDetection(config).eval()
        >>> outputs = model(torch.randn(1, 3, 128, 128))
        >>> outputs.logits.shape, outputs.pred_boxes.shape
        (torch.Size([1, 20, 15]), torch.Size([1, 20, 5]))
        ```
        """
        check_pixel_inputs(self.config, pixel_values, pixel_mask)
        targets = None if labels is None else prepare_targets(labels, self.config, pixel_values, pixel_mask)

        outputs = self.model(
            pixel_values,
            pixel_mask=pixel_mask,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            labels=targets,
            return_dict=True,
            **kwargs,
        )
        outputs_classes, outputs_coords = self.layer_predictions(outputs)

        # denoising queries come first (training only): split them off
        num_dn = 0 if outputs.dn_meta is None else 2 * outputs.dn_meta["num_groups"] * outputs.dn_meta["max_objects"]
        dn_outputs = None
        if num_dn:
            dn_outputs = [{"logits": c[:, :num_dn], "pred_boxes": b[:, :num_dn]}
                          for c, b in zip(outputs_classes, outputs_coords)]
            outputs_classes = [c[:, num_dn:] for c in outputs_classes]
            outputs_coords = [b[:, num_dn:] for b in outputs_coords]
        logits, pred_boxes = outputs_classes[-1], outputs_coords[-1]

        loss, loss_dict, auxiliary_outputs = None, None, None
        if targets is not None:
            if self.config.auxiliary_loss:
                auxiliary_outputs = [
                    {"logits": c, "pred_boxes": b} for c, b in zip(outputs_classes[:-1], outputs_coords[:-1])
                ]
            loss, loss_dict = self._losses(outputs, logits, pred_boxes, auxiliary_outputs, dn_outputs, targets)
        # the losses saw the model's native angle range; what it returns is le90
        # (docs/boxes.md#angle-ranges-inside-the-model)
        pred_boxes = self._le90_boxes(pred_boxes)
        if auxiliary_outputs is not None and self.config.angle_offset != -0.5:
            auxiliary_outputs = [{"logits": aux["logits"], "pred_boxes": self._le90_boxes(aux["pred_boxes"])}
                                 for aux in auxiliary_outputs]

        return SlDetrObjectDetectionOutput(
            loss=loss,
            loss_dict=loss_dict,
            logits=logits,
            pred_boxes=pred_boxes,
            auxiliary_outputs=auxiliary_outputs,
            last_hidden_state=outputs.last_hidden_state,
            decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions,
            cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            encoder_attentions=outputs.encoder_attentions,
            intermediate_hidden_states=outputs.intermediate_hidden_states,
            intermediate_reference_points=outputs.intermediate_reference_points,
            init_reference_points=outputs.init_reference_points,
            enc_outputs_class=outputs.enc_outputs_class,
            enc_outputs_coord_logits=outputs.enc_outputs_coord_logits,
            init_reference_angles=outputs.init_reference_angles,
            dn_outputs=dn_outputs,
            dn_meta=outputs.dn_meta,
        )

    def layer_predictions(self, outputs: SlDetrModelOutput) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every decoder layer's class logits `(B, N, C)` and boxes `(B, N, D)` (all `N` queries, denoising ones
        included), the boxes normalized with theta in the model's native range
        (`[angle_start, angle_start + 180)` degrees; `forward` returns `pred_boxes` in le90).

        Layer `l` predicts on the reference it started from: the initial one, or layer `l - 1`'s refinement (which
        keeps its gradient with look forward twice); the heads' inverse sigmoid keeps eps 1e-5 (DINO / RHINO).
        """
        hidden_states = outputs.intermediate_hidden_states
        references = _full_reference(outputs.intermediate_reference_points, outputs.intermediate_reference_angles)
        reference = _full_reference(outputs.init_reference_points, outputs.init_reference_angles)
        outputs_classes, outputs_coords = [], []
        for level in range(hidden_states.shape[1]):
            if level > 0:
                reference = references[:, level - 1]
            angle_head = self.angle_embed[level] if self.angle_embed is not None else None
            outputs_coord = refine_boxes(hidden_states[:, level], reference, self.bbox_embed[level], angle_head)
            if angle_head is not None:
                theta = angle_from_sigmoid(outputs_coord[..., 4:], self.config.angle_offset)
                outputs_coord = torch.cat([outputs_coord[..., :4], theta], -1)
            outputs_classes.append(self.class_embed[level](hidden_states[:, level]))
            outputs_coords.append(outputs_coord)
        return outputs_classes, outputs_coords

    def _le90_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """`(..., D)` boxes with theta in the native range -> theta in le90 `[-pi/2, pi/2)` (the same rectangles)."""
        if boxes.shape[-1] != 5 or self.config.angle_offset == -0.5:
            return boxes
        return torch.cat([boxes[..., :4], wrap_angle_range(boxes[..., 4:])], dim=-1)

    def _losses(self, outputs: SlDetrModelOutput, logits: torch.Tensor, pred_boxes: torch.Tensor,
                auxiliary_outputs: list[dict] | None, dn_outputs: list[dict] | None,
                targets: list[dict]) -> tuple[torch.Tensor, dict]:
        """The criterion and the dense encoder loss, in float32 whatever the autocast around the forward
        (`precision_sl_detr.py`): mixed precision speeds the network up, the matching and the losses keep their
        numerics."""
        with losses_in_float32(logits.device.type):
            logits, pred_boxes, auxiliary_outputs, dn_outputs = as_float32(
                (logits, pred_boxes, auxiliary_outputs, dn_outputs))
            loss, loss_dict = self.criterion(
                {"logits": logits, "pred_boxes": pred_boxes, "auxiliary_outputs": auxiliary_outputs,
                 "enc_outputs": as_float32(self._encoder_loss_outputs(outputs)), "dn_outputs": dn_outputs,
                 "dn_meta": outputs.dn_meta},
                targets,
            )
            if self.config.dense_loss_coefficient and outputs.enc_output_proposals is not None:
                loss, loss_dict = add_dense_encoder_loss(
                    loss, loss_dict, as_float32(outputs.enc_outputs_class),
                    self._proposal_boxes(as_float32(outputs.enc_outputs_coord_logits)),
                    as_float32(outputs.enc_output_proposals), targets, self.config)
        return loss, loss_dict

    def _encoder_loss_outputs(self, outputs: SlDetrModelOutput) -> dict | None:
        """The two-stage proposals the encoder loss sees: the selected top-k with mixed query selection (DINO, in the
        order of the decoder queries), else every encoder token (Deformable DETR); `None` for single-stage models."""
        if not self.config.two_stage:
            return None
        enc_class, enc_coord_logits = outputs.enc_outputs_class, outputs.enc_outputs_coord_logits
        if self.model.query_selection is not None:
            enc_class = gather_queries(enc_class, outputs.enc_topk_indices)
            enc_coord_logits = gather_queries(enc_coord_logits, outputs.enc_topk_indices)
        return {"logits": enc_class, "pred_boxes": self._proposal_boxes(enc_coord_logits)}

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`; when registered for an auto class, `auto_map` also names `AutoModel`.

        So that `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads the bare [`SlDetrModel`] from a
        detection checkpoint, as it does for models inside transformers.
        """
        if self._auto_class is not None:
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            base = type(self.model)
            auto_map.setdefault("AutoModel", f"{base.__module__.split('.')[-1]}.{base.__name__}")
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _proposal_boxes(self, coord_logits: torch.Tensor) -> torch.Tensor:
        """Two-stage proposal logits `(B, S, D)` -> normalized boxes `(B, S, D)` in the `pred_boxes` convention."""
        boxes = coord_logits[..., :4].sigmoid()
        if self.config.box_type == "rotated":
            boxes = torch.cat([boxes, angle_from_sigmoid(coord_logits[..., 4:5].sigmoid(), self.config.angle_offset)],
                              dim=-1)
        return boxes

    @classmethod
    def from_deformable_detr(
        cls,
        model_or_path: "DeformableDetrForObjectDetection | str | os.PathLike",
        box_type: str = "rotated",
        return_report: bool = False,
        **config_kwargs,
    ) -> "SlDetrForObjectDetection | tuple[SlDetrForObjectDetection, object]":
        """Initialize SL-DETR from a Deformable DETR detection model: every shared weight copied, the new angle
        heads predicting `theta = 0`, the config `SlDetrConfig.deformable_detr`'s unless `config_kwargs` override it
        (`sl_detr_hf.convert.deformable_detr.convert_deformable_detr`, where the arguments are described). Needs
        the installed `sl_detr_hf` package (the converters do not ship with `trust_remote_code` folders).

        Returns:
            The model, and a `SlDetrConversionReport` (copied / new / skipped keys) when `return_report`.
        """
        try:  # imported by name: this file ships alone in saved folders, the converters do not
            convert = importlib.import_module("sl_detr_hf.convert.deformable_detr")
        except ImportError as err:
            raise ImportError("from_deformable_detr needs the sl_detr_hf package installed") from err
        return convert.convert_deformable_detr(model_or_path, box_type, return_report, model_class=cls,
                                               **config_kwargs)
