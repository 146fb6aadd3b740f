"""Sharing SL-DETR models: a self-contained model folder, a generated model card, and `push_to_hub`.

    >>> from sl_detr_hf.hub import push_to_hub, save_for_hub
    >>> save_for_hub(model, image_processor, "sl-detr-dota", metrics={"mAP50": 0.71}, dataset_name="DOTA-v1.0")
    >>> push_to_hub("sl-detr-dota", "me/sl-detr-dota", metrics={"mAP50": 0.71})

The folder holds the weights (safetensors), `config.json` (with `auto_map` for `AutoConfig`, `AutoModel`,
`AutoModelForObjectDetection` and `custom_pipelines` for the `"oriented-object-detection"` pipeline),
`preprocessor_config.json` (with `auto_map` for `AutoImageProcessor`), the model's code files, the pipeline's code
file and `README.md`, so that `pipeline(model=folder_or_repo_id, trust_remote_code=True)` works where `sl_detr_hf` is
not installed. Where it is imported, `pipeline("oriented-object-detection", model=folder_or_repo_id)` runs the
package's registered code instead, with no `trust_remote_code` and no prompt (the package's config does not read
the folder's `custom_pipelines` entry for its own pipeline).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers.dynamic_module_utils import custom_object_save

from .configuration_sl_detr import SlDetrConfig
from .image_processing_sl_detr import SlDetrImageProcessor
from .modeling_sl_detr import SlDetrForObjectDetection
from .pipeline_oriented_detection import TASK, OrientedObjectDetectionPipeline

__all__ = ["CITATION", "check_model_folder", "custom_pipelines_entry", "generate_model_card", "load_metrics",
           "push_to_hub", "save_for_hub"]

PAPER_TITLE = "SL-DETR: Universal synchronization loss optimization in DETR-based oriented and rotated object detection"
PAPER_CODE = "https://github.com/yuqingchen1/SL-DETR"
CITATION = f"""@misc{{yu_sldetr,
  title        = {{{PAPER_TITLE}}},
  author       = {{Yu, Qingchen}},
  howpublished = {{\\url{{{PAPER_CODE}}}}},
}}"""


def custom_pipelines_entry() -> dict[str, dict[str, Any]]:
    """The `config.custom_pipelines` entry that makes `pipeline(model=..., trust_remote_code=True)` load the
    oriented pipeline from the shipped `pipeline_oriented_detection.py` (what `Pipeline.save_pretrained` writes)."""
    cls = OrientedObjectDetectionPipeline
    return {TASK: {"impl": f"{cls.__module__.split('.')[-1]}.{cls.__name__}",
                   "pt": ["AutoModelForObjectDetection"], "type": "image"}}


def save_for_hub(model: SlDetrForObjectDetection, image_processor: SlDetrImageProcessor | None,
                 folder: str | os.PathLike, metrics: Mapping[str, float] | None = None,
                 dataset_name: str | None = None, repo_id: str | None = None,
                 model_card: str | None = None) -> list[str]:
    """Write a self-contained model folder: weights, config, image processor, code, pipeline code, model card.

    Args:
        model: the model to save (its config gets `custom_pipelines` in the saved `config.json` only).
        image_processor: saved as `preprocessor_config.json`; `None` saves a default `SlDetrImageProcessor` with the
            model's `box_type` and `max_detections`.
        folder: output folder (created).
        metrics, dataset_name, repo_id: for the generated model card (see `generate_model_card`).
        model_card: the README.md text to write instead of the generated one.
    Returns:
        The sorted names of the files in `folder`.
    """
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{folder} is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    if image_processor is None:
        image_processor = SlDetrImageProcessor(box_type=model.config.box_type,
                                               max_detections=model.config.max_detections)
    previous = getattr(model.config, "custom_pipelines", None)
    model.config.custom_pipelines = {**(previous or {}), **custom_pipelines_entry()}
    try:
        model.save_pretrained(folder)
    finally:
        if previous is None:
            del model.config.custom_pipelines
        else:
            model.config.custom_pipelines = previous
    image_processor.save_pretrained(folder)
    custom_object_save(OrientedObjectDetectionPipeline, folder)
    card = model_card if model_card is not None else generate_model_card(
        model, metrics=metrics, dataset_name=dataset_name, repo_id=repo_id)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return sorted(p.name for p in folder.iterdir())


def _format_metric(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return "nan" if math.isnan(value) else f"{value:.4f}"


def _architecture_rows(config: SlDetrConfig) -> list[tuple[str, str]]:
    backbone_config = getattr(config, "backbone_config", None)
    backbone = getattr(backbone_config, "backbone", None) or getattr(backbone_config, "model_type", None) or "custom"
    coordinates = "cx, cy, w, h, theta" if config.box_type == "rotated" else "cx, cy, w, h"
    return [
        ("box type", f"`{config.box_type}` ({coordinates})"),
        ("backbone", str(backbone)),
        ("feature levels", str(config.num_feature_levels)),
        ("encoder / decoder layers", f"{config.encoder_layers} / {config.decoder_layers}"),
        ("d_model / FFN", f"{config.d_model} / {config.encoder_ffn_dim}"),
        ("queries", str(config.num_queries)),
        ("two-stage / box refinement", f"{config.two_stage} / {config.with_box_refine}"),
        ("synchronized localization loss", str(config.use_sync_loc)),
        ("quality-aware classification", str(config.use_quality_cls)),
    ]


def generate_model_card(model: SlDetrForObjectDetection, metrics: Mapping[str, Any] | None = None,
                        dataset_name: str | None = None, repo_id: str | None = None,
                        license: str = "apache-2.0", description: str | None = None) -> str:
    """A README.md (Hub model card) for an SL-DETR model.

    Args:
        model: the model (its config gives the architecture and the class names).
        metrics: evaluation results, e.g. `{"mAP50": 0.71}`; shown as a table.
        dataset_name: the training / evaluation data (a Hub dataset id is also put in the card's metadata).
        repo_id: where the model lives, for the usage snippet (default: a placeholder `path/to/model`).
        license: the card's license.
        description: a paragraph to put under the title.
    Returns:
        The Markdown text, with YAML metadata (`library_name`, `pipeline_tag`, `tags`, `datasets`).
    """
    config = model.config
    where = repo_id or "path/to/model"
    tags = ["object-detection", "oriented-object-detection", "sl-detr", "deformable-detr", "custom_code"]
    if config.box_type == "rotated":
        tags.append("rotated-object-detection")
    meta = ["---", "library_name: transformers", f"license: {license}", "pipeline_tag: object-detection", "tags:"]
    meta += [f"- {tag}" for tag in tags]
    if dataset_name and "/" in dataset_name and " " not in dataset_name:
        meta += ["datasets:", f"- {dataset_name}"]
    meta.append("---")

    lines = [*meta, "", f"# {repo_id.split('/')[-1] if repo_id else 'SL-DETR'}", ""]
    lines += [description or (
        f"An SL-DETR object detector ({'oriented' if config.box_type == 'rotated' else 'axis-aligned'} boxes, "
        f"{config.num_labels} classes{f', trained on {dataset_name}' if dataset_name else ''}): Deformable DETR "
        "(two-stage, iterative box refinement) with an oriented box head, trained with the synchronized "
        "localization loss and quality-aware classification weights of the SL-DETR paper."), ""]

    lines += ["## Evaluation", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_format_metric(value)} |" for name, value in metrics.items()]
    else:
        lines.append("No evaluation results were provided.")
    lines += ["", "## Data", "", f"Dataset: {dataset_name or 'not specified'}.", ""]

    lines += ["## Classes", "", "| id | name |", "| --- | --- |"]
    lines += [f"| {i} | {name} |" for i, name in sorted(config.id2label.items(), key=lambda kv: int(kv[0]))]
    lines += ["", "## Model", "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in _architecture_rows(config)]
    lines += ["", f"Parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M.", ""]

    lines += ["## Usage", "", "Oriented boxes and polygons, without installing anything but `transformers`:", "",
              "```python", "from transformers import pipeline", "",
              f'detector = pipeline(model="{where}", trust_remote_code=True)  # task "{TASK}"',
              'detections = detector("image.png", threshold=0.3)',
              "# [{'score': ..., 'label': ..., 'box': {'xmin', 'ymin', 'xmax', 'ymax'},",
              "#   'rbox': {'cx', 'cy', 'w', 'h', 'theta'}, 'polygon': [[x1, y1], ..., [x4, y4]]}, ...]",
              "```", "",
              "Axis-aligned boxes with transformers' own pipeline:", "",
              "```python",
              f'detector = pipeline("object-detection", model="{where}", trust_remote_code=True)',
              "```", "",
              "With the `sl_detr_hf` package installed (its own code, no `trust_remote_code`, nothing asked):", "",
              "```python", "import sl_detr_hf  # registers the task", "from transformers import pipeline", "",
              f'detector = pipeline("{TASK}", model="{where}")',
              "# or: from sl_detr_hf.inference import load_detector; "
              f'detector = load_detector("{where}")', "```", "",
              "or from the command line: `python scripts/predict.py --model "
              f"{where} images/ --output-dir predictions` (JSON + PNGs with the boxes drawn).", "",
              "Boxes: `rbox` is in pixels of the input image, `theta` in radians, le90 (`w >= h`, `theta` in "
              "`[-pi/2, pi/2)`, positive turns clockwise on screen); `polygon` is its 4 corners (DOTA order); `box` "
              "is the enclosing axis-aligned box.", ""]

    lines += ["## Citation", "", f"SL-DETR paper ({PAPER_CODE}):", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def load_metrics(folder: str | os.PathLike) -> dict[str, Any] | None:
    """Evaluation metrics saved next to a model by `Trainer` (`eval_results.json`, else the `eval_*` entries of
    `all_results.json`), or `None`."""
    folder = Path(folder)
    for name in ("eval_results.json", "all_results.json"):
        path = folder / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            metrics = {k: v for k, v in data.items() if name == "eval_results.json" or k.startswith("eval_")}
            if metrics:
                return metrics
    return None


def check_model_folder(model: str | os.PathLike) -> None:
    """Refuse a local model folder of another architecture (its `config.json` `model_type`): it would load as a
    randomly initialized SL-DETR.

    Raises:
        ValueError: naming the found `model_type`.
    """
    config = Path(model) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
        if model_type != "sl_detr":
            raise ValueError(f"{model} holds a {model_type!r} model, not SL-DETR (model_type 'sl_detr')")


def push_to_hub(model_or_folder: SlDetrForObjectDetection | str | os.PathLike, repo_id: str,
                image_processor: SlDetrImageProcessor | None = None, metrics: Mapping[str, Any] | None = None,
                dataset_name: str | None = None, private: bool = False, token: str | None = None,
                commit_message: str = "Upload SL-DETR model", revision: str | None = None,
                model_card: str | None = None) -> Any:
    """Upload an SL-DETR model (weights, config, image processor, code, pipeline code, model card) to the Hub.

    Args:
        model_or_folder: a model, or a saved model folder (its `preprocessor_config.json` is used when
            `image_processor` is not given, and its `eval_results.json` / `all_results.json` when `metrics` is not).
        repo_id: `"user_or_org/name"`; created if it does not exist.
        image_processor: the image processor (default: the folder's, else a default `SlDetrImageProcessor`).
        metrics, dataset_name: for the model card.
        private: create the repository as private.
        token: Hub token (default: the logged-in one).
        commit_message, revision: of the upload commit.
        model_card: README.md text to upload instead of the generated card.
    Returns:
        What `HfApi.upload_folder` returns (the commit info).
    """
    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"`repo_id` must look like 'user_or_org/name', got {repo_id!r}")
    model = model_or_folder
    if isinstance(model_or_folder, (str, os.PathLike)):
        folder = Path(model_or_folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
        check_model_folder(folder)  # another architecture would load as a randomly initialized SL-DETR
        model = SlDetrForObjectDetection.from_pretrained(folder)
        if image_processor is None and (folder / "preprocessor_config.json").is_file():
            image_processor = SlDetrImageProcessor.from_pretrained(folder)
        if metrics is None:
            metrics = load_metrics(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    with tempfile.TemporaryDirectory(prefix="sl_detr_hub_") as tmp:
        save_for_hub(model, image_processor, tmp, metrics=metrics, dataset_name=dataset_name, repo_id=repo_id,
                     model_card=model_card)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, repo_type="model",
                                 commit_message=commit_message, revision=revision)
