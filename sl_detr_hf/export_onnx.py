"""An SL-DETR model -> one ONNX file that runs in onnxruntime without PyTorch (the command line: `sl-detr export`,
`sl_detr_hf.commands.export`).

    sl-detr export --model FOLDER_OR_HUB_ID --output model.onnx [--image-size H W] [--opset N] [--with-postprocess]

The graph takes ``pixel_values (B, 3, H, W)`` float32 and ``pixel_mask (B, H, W)`` int64 and returns
``logits (B, Q, C)`` and normalized ``pred_boxes (B, Q, D)`` (``D`` = 5 rotated, 4 horizontal), exactly the
model's outputs. The batch is dynamic; **height and width are fixed at export** (``--image-size``, default the
image processor's largest size): Deformable DETR's shape arithmetic (feature-level sizes as Python ints, level
start indices, the two-stage top-k) does not trace to a graph that is correct at other sizes (the TorchScript
exporter gives a file that runs at other sizes with wrong outputs; with the dynamo exporter and dynamic H / W the
file fails at other sizes in a broadcast). Images are resized as by the image processor and zero-padded to
``H x W`` with a ``pixel_mask``, which the model handles as any padded batch.

``--with-postprocess`` adds an input ``target_sizes (B, 2)`` (the original ``(height, width)``) and the outputs of
`SlDetrImageProcessor.post_process_object_detection` for a fixed top-k, before any score threshold: ``scores (B, K)``,
``labels (B, K)``, ``boxes (B, K, 4)`` (enclosing ``x1, y1, x2, y2`` pixels) and, for rotated models, ``rboxes (B, K,
5)`` (le90 pixel boxes) and ``polygons (B, K, 8)``. A deployment then only keeps ``scores > threshold``.

The processor's settings (image size, resize rule, mean / std, top-k, box type, labels) are stored in the file's
metadata under the key ``"sl_detr"`` (JSON), so the ``.onnx`` file is used alone (see `sl_detr_hf.onnx_predictor`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .geometry_conversions import rbox_corners, rbox_to_hbox, regularize_rboxes
from .image_processing_sl_detr import MIN_IMAGE_STD

__all__ = ["METADATA_KEY", "OnnxDetectionHead", "OnnxPostProcess", "default_image_size", "export_onnx",
           "export_settings", "read_onnx_settings", "require_onnx"]

logger = logging.getLogger(__name__)

METADATA_KEY = "sl_detr"
"""Key of the JSON settings in the ONNX file's ``metadata_props``."""

FORMAT_VERSION = 1


def require_onnx(*modules: str) -> None:
    """Raise an ImportError naming the ``[onnx]`` extra when one of ``modules`` is missing."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(f"`{name}` is not installed; ONNX export and inference need the onnx extra: "
                              "pip install 'sl_detr_hf[onnx]' (onnx, onnxruntime, onnxscript)") from err


class OnnxPostProcess(nn.Module):
    """`post_process_object_detection` for a fixed top-k and no threshold, as traceable tensor operations.

    Inputs: ``logits (B, Q, C)``, ``pred_boxes (B, Q, D)`` normalized, ``target_sizes (B, 2)`` float ``(H, W)``.
    Outputs: ``scores (B, K)``, ``labels (B, K)`` int64, ``boxes (B, K, 4)`` and, when ``rotated``, ``rboxes (B, K, 5)``
    and ``polygons (B, K, 8)``, with ``K = min(top_k, Q * C)``, sorted by score.
    """

    def __init__(self, top_k: int, rotated: bool):
        super().__init__()
        self.top_k, self.rotated = int(top_k), rotated

    def forward(self, logits: Tensor, pred_boxes: Tensor, target_sizes: Tensor) -> tuple[Tensor, ...]:
        batch, queries, classes = logits.shape
        k = min(self.top_k, queries * classes)
        scores, index = logits.float().sigmoid().reshape(batch, queries * classes).topk(k, dim=1)
        query, labels = index // classes, index % classes
        boxes = pred_boxes.float().gather(1, query.unsqueeze(-1).expand(batch, k, pred_boxes.shape[-1]))
        if not self.rotated:
            boxes = torch.cat((boxes, torch.zeros_like(boxes[..., :1])), dim=-1)
        size = target_sizes.float()
        height, width = size[:, 0:1], size[:, 1:2]  # (B, 1)
        cx, cy, w, h, theta = boxes.unbind(-1)
        pixel = torch.stack((cx * width, cy * height, w.clamp_min(0) * width, h.clamp_min(0) * height, theta), -1)
        hbox = rbox_to_hbox(pixel, validate=False)
        if not self.rotated:
            return scores, labels, hbox
        rbox = regularize_rboxes(pixel, validate=False)
        return scores, labels, hbox, rbox, rbox_corners(rbox).flatten(-2)


class OnnxDetectionHead(nn.Module):
    """The exported graph: the eval-mode model's ``(logits, pred_boxes)``, optionally followed by `OnnxPostProcess`."""

    def __init__(self, model: nn.Module, postprocess: OnnxPostProcess | None = None):
        super().__init__()
        self.model, self.postprocess = model, postprocess

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor, target_sizes: Tensor | None = None
                ) -> tuple[Tensor, ...]:
        outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        logits, pred_boxes = outputs.logits, outputs.pred_boxes
        if self.postprocess is None:
            return logits, pred_boxes
        return (logits, pred_boxes, *self.postprocess(logits, pred_boxes, target_sizes))


def default_image_size(processor: Any) -> tuple[int, int]:
    """The largest ``(H, W)`` the processor's resize produces: the fixed input size of an exported graph.

    Raises:
        ValueError: the resize rule has no upper bound (``shortest_edge`` alone): pass ``image_size``.
    """
    size = dict(processor.size) if processor.size is not None else {}
    if size.get("height") and size.get("width"):
        return int(size["height"]), int(size["width"])
    if size.get("max_height") and size.get("max_width"):
        return int(size["max_height"]), int(size["max_width"])
    if size.get("longest_edge"):
        return int(size["longest_edge"]), int(size["longest_edge"])
    raise ValueError(f"the image processor's size {size} has no largest size; give the export size "
                     "(--image-size H W)")


def export_settings(model: nn.Module, processor: Any, image_size: tuple[int, int], top_k: int,
                    with_postprocess: bool, opset: int) -> dict[str, Any]:
    """The JSON settings stored with the file (everything `onnx_predictor` needs besides the graph)."""
    from . import __version__

    config = model.config
    box_type = getattr(config, "box_type", "rotated")
    outputs = ["logits", "pred_boxes"]
    if with_postprocess:
        outputs += ["scores", "labels", "boxes"] + (["rboxes", "polygons"] if box_type == "rotated" else [])
    resample = processor.resample
    return {
        "format_version": FORMAT_VERSION,
        "sl_detr_hf_version": __version__,
        "image_size": [int(image_size[0]), int(image_size[1])],
        "size": {k: int(v) for k, v in dict(processor.size).items() if v is not None},
        "resample": int(getattr(resample, "value", resample)),
        "do_resize": bool(processor.do_resize),
        "do_rescale": bool(processor.do_rescale),
        "rescale_factor": float(processor.rescale_factor),
        "do_normalize": bool(processor.do_normalize),
        "image_mean": [float(v) for v in processor.image_mean],
        "image_std": [float(v) for v in processor.image_std],
        "normalize_per_image": bool(getattr(processor, "normalize_per_image", False)),
        "min_image_std": float(MIN_IMAGE_STD),
        "box_type": box_type,
        "top_k": int(top_k),
        "num_queries": int(config.num_queries),
        "id2label": {str(k): v for k, v in config.id2label.items()},
        "with_postprocess": bool(with_postprocess),
        "inputs": ["pixel_values", "pixel_mask"] + (["target_sizes"] if with_postprocess else []),
        "outputs": outputs,
        "opset": int(opset),
    }


def _default_processor(model: nn.Module) -> Any:
    from .image_processing_sl_detr import SlDetrImageProcessor

    config = model.config
    return SlDetrImageProcessor(box_type=getattr(config, "box_type", "rotated"),
                                max_detections=getattr(config, "max_detections", 500))


def export_onnx(model: nn.Module, output: str | os.PathLike, processor: Any = None,
                image_size: Sequence[int] | None = None, opset: int = 18, with_postprocess: bool = False,
                top_k: int | None = None, example_batch: int = 2) -> Path:
    """Export an SL-DETR detection model (eval mode) to ``output``; returns the path.

    Args:
        model: an `SlDetrForObjectDetection` (training-only parts such as denoising queries do not enter the graph:
            the model is exported in eval mode).
        processor: its image processor (default: an `SlDetrImageProcessor` of the model's box type).
        image_size: fixed ``(H, W)`` of the graph input (default `default_image_size(processor)`).
        opset: ONNX opset (>= 18, the dynamo exporter's).
        with_postprocess: also output the post-processed detections (see the module docstring).
        top_k: candidates per image of the post-processing (default the processor's ``max_detections``).
        example_batch: batch of the tracing example (the exported batch dimension is dynamic).
    Raises:
        ImportError: onnx / onnxscript missing (names the ``[onnx]`` extra).
        ValueError: bad sizes or arguments.
    """
    require_onnx("onnx", "onnxscript")
    import onnx

    processor = processor if processor is not None else _default_processor(model)
    height, width = (int(v) for v in (image_size if image_size is not None else default_image_size(processor)))
    if height < 32 or width < 32:
        raise ValueError(f"image size must be at least 32 x 32 (the backbone's stride), got {height} x {width}")
    top_k = int(top_k if top_k is not None else getattr(processor, "max_detections", 100))
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    rotated = getattr(model.config, "box_type", "rotated") == "rotated"
    was_training = model.training
    model.eval()
    head = OnnxDetectionHead(model, OnnxPostProcess(top_k, rotated) if with_postprocess else None).eval()
    pixel_values = torch.randn(example_batch, 3, height, width)
    pixel_mask = torch.ones(example_batch, height, width, dtype=torch.long)
    args: tuple[Tensor, ...] = (pixel_values, pixel_mask)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dynamic: dict[str, Any] = {"pixel_values": {0: batch}, "pixel_mask": {0: batch}}
    settings = export_settings(model, processor, (height, width), top_k, with_postprocess, opset)
    if with_postprocess:
        args += (torch.tensor([[height, width]] * example_batch, dtype=torch.float32),)
        dynamic["target_sizes"] = {0: batch}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(head, args, str(output), dynamo=True, opset_version=opset,
                              input_names=settings["inputs"], output_names=settings["outputs"],
                              dynamic_shapes=dynamic, external_data=False, verbose=False)
    finally:
        model.train(was_training)
    proto = onnx.load(str(output))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(settings)
    onnx.save(proto, str(output))
    return output


def read_onnx_settings(path: str | os.PathLike) -> dict[str, Any]:
    """The settings `export_onnx` stored in an ONNX file (a ValueError if there are none)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ValueError(f"{path} has no '{METADATA_KEY}' metadata: not written by `sl-detr export`")
