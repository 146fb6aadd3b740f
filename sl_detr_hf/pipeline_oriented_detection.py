"""The ``"oriented-object-detection"`` pipeline: oriented boxes and polygons from an SL-DETR model.

    >>> from transformers import pipeline
    >>> detector = pipeline(model="folder_or_hub_id", trust_remote_code=True)  # without sl_detr_hf installed
    >>> import sl_detr_hf  # with the package: registers the task; its code serves, nothing is asked
    >>> detector = pipeline("oriented-object-detection", model="folder_or_hub_id")  # any saved folder
    >>> detector = pipeline("oriented-object-detection", model=model, image_processor=image_processor)
    >>> detector("image.png", threshold=0.3)
    [{'score': 0.91, 'label': 'plane', 'box': {'xmin': 10, 'ymin': 20, 'xmax': 74, 'ymax': 70},
      'rbox': {'cx': 42.0, 'cy': 45.1, 'w': 60.3, 'h': 30.2, 'theta': 0.42},
      'polygon': [[x1, y1], [x2, y2], [x3, y3], [x4, y4]]}, ...]

Per detection: ``score``, ``label`` (class name), ``box`` (the axis-aligned box enclosing the oriented box, integer
pixels like transformers' ``"object-detection"`` pipeline), ``rbox`` (pixel ``cx, cy, w, h, theta``, theta in
radians, le90: ``w >= h``, ``theta`` in ``[-pi/2, pi/2)``, positive = clockwise on screen) and ``polygon`` (its 4
corners in DOTA order). Models with axis-aligned boxes (``box_type="horizontal"``) give ``theta`` 0 (or ``-pi/2``
when the box is taller than wide, the le90 convention).

This file ships with saved models as custom pipeline code (``config.custom_pipelines``, see
``sl_detr_hf.hub.save_for_hub``), so that ``pipeline(model=folder_or_hub_id, trust_remote_code=True)`` works where
``sl_detr_hf`` is not installed: it imports only torch, transformers, the standard library and its sibling
``geometry_conversions.py``. Where ``sl_detr_hf`` is imported, the package's config forgets that declaration when it
reads the folder (the task is registered here, :func:`register_pipeline`), so ``pipeline("oriented-object-detection",
model=folder)`` runs the installed code without ``trust_remote_code`` and asks nothing; name the task there (without
one, transformers would look it up on the Hub). ``sl_detr_hf.inference.load_detector(folder)`` does the same.
"""

from __future__ import annotations

import collections.abc
import importlib
from typing import Any

import torch
from transformers.pipelines.base import no_collate_fn
from transformers.pipelines.object_detection import ObjectDetectionPipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .geometry_conversions import hbox_to_rbox, rbox_to_hbox, rbox_to_poly
from .image_processing_sl_detr import pad_images

__all__ = ["TASK", "OrientedObjectDetectionPipeline", "pad_collate", "register_pipeline"]

TASK = "oriented-object-detection"


def pad_collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch preprocessed images of different sizes: zero-pad ``pixel_values`` / ``pixel_mask`` at the bottom / right.

    Each item holds ``pixel_values (1, 3, h, w)``, ``pixel_mask (1, h, w)`` and ``target_size (1, 2)`` (one image).
    The padding is what the image processor itself does for a batch, so the predictions do not change.
    """
    if len(items) == 1:
        return no_collate_fn(items)
    pixel_values, _ = pad_images([item["pixel_values"][0] for item in items])
    masks = [item.get("pixel_mask") for item in items]
    masks = [m[0] if m is not None else torch.ones(item["pixel_values"].shape[-2:], dtype=torch.long)
             for m, item in zip(masks, items)]
    pixel_mask, _ = pad_images([m.unsqueeze(0) for m in masks])
    return {
        "pixel_values": pixel_values,
        "pixel_mask": pixel_mask[:, 0],
        "target_size": torch.cat([item["target_size"] for item in items]),
    }


class OrientedObjectDetectionPipeline(ObjectDetectionPipeline):
    """Object detection with oriented boxes (SL-DETR or any model whose image processor returns ``rboxes``).

    Call with one image (path, URL or PIL image) or a list of them; keyword arguments:

    - ``threshold`` (float, default 0.5): minimum score;
    - ``top_k`` (int, default the image processor's ``max_detections``): candidate (query, class) pairs per image
      before the threshold, so ``threshold=0, top_k=k`` gives exactly ``k`` detections;
    - ``nms_iou_threshold`` (float, optional): class-wise rotated NMS at this IoU;
    - ``batch_size`` (int): images per forward pass (images of different sizes are padded together);
    - ``bf16`` (bool, default False): the network under bf16 autocast (also as ``pipeline(..., bf16=True)``): about
      1.3x the images/s on a CPU with AVX-512 BF16 or AMX (BENCHMARKS.md, "bf16 on the CPU"), and on GPUs; the
      outputs are cast to float32 before post-processing;
    - ``timeout`` (float): for image URLs;
    - ``tile`` (int, optional) and ``overlap`` (int, default 200): predict each image as a whole scene, in
      overlapping ``tile x tile`` patches merged with rotated NMS (``nms_iou_threshold``, default 0.1), with a
      progress bar per scene (``progress=False`` hides it); see ``sl_detr_hf.tiling`` (needs the package installed).
      A GeoTIFF path is read window by window with rasterio (``pip install -e ".[geo]"``), never decoded whole;
      ``bands`` (e.g. ``(3, 2, 1)``, 1-based; default the first three) picks its bands, and detections stay in
      pixels (``sl_detr_hf.geo.detections_to_geojson`` puts them on a map).

    Returns one list of detection dicts per image (a single list for a single image), sorted by score; an empty list
    of images gives an empty list.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Skip ObjectDetectionPipeline.__init__'s model-type check: it only knows transformers' own models.
        super(ObjectDetectionPipeline, self).__init__(*args, **kwargs)
        if self.image_processor is None or not hasattr(self.image_processor, "post_process_object_detection"):
            raise ValueError(f"{type(self).__name__} needs an image processor with `post_process_object_detection`")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inputs = args[0] if args else kwargs.get("inputs", kwargs.get("images"))
        if isinstance(inputs, (list, tuple)) and len(inputs) == 0:
            return []
        tile = kwargs.pop("tile", None)
        overlap, progress = kwargs.pop("overlap", 200), kwargs.pop("progress", True)
        bands = kwargs.pop("bands", None)
        if tile is None:
            if bands is not None:
                raise ValueError("`bands` applies to the tiled path: pass `tile` too (e.g. tile=1024)")
            return super().__call__(*args, **kwargs)
        self._sanitize_parameters(**kwargs)  # argument errors before any patch is read
        kwargs.pop("inputs", None)
        kwargs.pop("images", None)
        try:  # not a relative import: this file ships alone as remote code, where tiling is not available
            tiling = importlib.import_module("sl_detr_hf.tiling")
        except ImportError as err:
            raise ImportError("`tile` needs the sl_detr_hf package installed (pip install sl_detr_hf)") from err
        single = not isinstance(inputs, (list, tuple))
        results = tiling.predict_scenes(self, [inputs] if single else list(inputs), tile=tile, overlap=overlap,
                                        progress=progress, **({"bands": bands} if bands is not None else {}),
                                        **kwargs)
        return results[0] if single else results

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        preprocess_params, forward_params, postprocess_params = super()._sanitize_parameters(**kwargs)
        for name in ("top_k", "nms_iou_threshold"):
            if kwargs.get(name) is not None:
                postprocess_params[name] = kwargs[name]
        if "top_k" in postprocess_params:
            top_k = postprocess_params["top_k"]
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}")
        bf16 = kwargs.get("bf16")
        if bf16 is not None:
            if not isinstance(bf16, bool):
                raise ValueError(f"`bf16` must be True or False, got {bf16!r}")
            if bf16 and not torch.amp.is_autocast_available(self.device.type):
                raise ValueError(f"`bf16`: autocast is not available on device {self.device.type!r}")
            forward_params["bf16"] = bf16
        threshold = postprocess_params.get("threshold", 0.5)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"`threshold` must be a number in [0, 1], got {threshold!r}")
        return preprocess_params, forward_params, postprocess_params

    def _forward(self, model_inputs: dict[str, Any], bf16: bool = False) -> dict[str, Any]:
        target_size = model_inputs.pop("target_size")
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = self.model(**model_inputs)
        # Only what post-processing needs (float32: bf16 scores would tie), which keeps the per-image slicing of
        # batched outputs simple.
        return {"target_size": target_size, "logits": outputs["logits"].float(),
                "pred_boxes": outputs["pred_boxes"].float()}

    def get_iterator(self, inputs: Any, num_workers: int, batch_size: int, preprocess_params: dict,
                     forward_params: dict, postprocess_params: dict) -> PipelineIterator:
        """Like `Pipeline.get_iterator`, with a collate function that pads images of different sizes."""
        if isinstance(inputs, collections.abc.Sized):
            dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        else:
            dataset = PipelineIterator(inputs, self.preprocess, preprocess_params)
            num_workers = min(num_workers, 1)
        loader = torch.utils.data.DataLoader(dataset, num_workers=num_workers, batch_size=batch_size,
                                             collate_fn=pad_collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def postprocess(self, model_outputs: dict[str, Any], threshold: float = 0.5, top_k: int | None = None,
                    nms_iou_threshold: float | None = None) -> list[dict[str, Any]]:
        """Model outputs of one image -> detection dicts (see the class docstring)."""
        result = self.image_processor.post_process_object_detection(
            model_outputs, threshold=threshold, target_sizes=model_outputs["target_size"], top_k=top_k,
            **({"nms_iou_threshold": nms_iou_threshold} if nms_iou_threshold is not None else {}),
        )[0]
        rboxes = result.get("rboxes")
        if rboxes is None:  # axis-aligned model: (x1, y1, x2, y2) -> rotated box with angle 0, le90
            rboxes = hbox_to_rbox(result["boxes"].float())
        rboxes = rboxes.float()
        polygons = rbox_to_poly(rboxes)
        boxes = rbox_to_hbox(rboxes)
        id2label = self.model.config.id2label
        detections = []
        for score, label, box, rbox, polygon in zip(result["scores"].tolist(), result["labels"].tolist(), boxes,
                                                    rboxes.tolist(), polygons.tolist()):
            detections.append({
                "score": score,
                "label": id2label.get(label, id2label.get(str(label), str(label))),
                "box": self._get_bounding_box(box),
                "rbox": dict(zip(("cx", "cy", "w", "h", "theta"), rbox)),
                "polygon": [polygon[i:i + 2] for i in range(0, 8, 2)],
            })
        return detections


def register_pipeline() -> None:
    """Register ``"oriented-object-detection"`` with transformers' ``pipeline(...)`` (idempotent; ``import
    sl_detr_hf`` calls it). A saved folder's ``custom_pipelines`` entry naming this class is then not read by the
    package's config (``configuration_sl_detr._forget_pipelines_served_here``): this registration serves it."""
    from transformers import AutoModelForObjectDetection
    from transformers.pipelines import PIPELINE_REGISTRY

    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is not None and current.get("impl") is OrientedObjectDetectionPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=OrientedObjectDetectionPipeline,
                                        pt_model=AutoModelForObjectDetection, type="image")

