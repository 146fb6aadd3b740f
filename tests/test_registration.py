"""Registration with transformers: a correct use of the stock object-detection pipeline logs nothing alarming."""

from __future__ import annotations

import logging

import pytest
from _tiny_sl_detr import random_image, tiny_model, tiny_processor
from transformers import pipeline
from transformers.utils import logging as hf_logging


def test_stock_object_detection_pipeline_logs_no_error():
    """transformers checks the model class against its object-detection table (issue 10 item 9)."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.WARNING)
    root = hf_logging.get_logger()  # transformers' library root logger
    root.addHandler(handler)
    try:
        detector = pipeline("object-detection", model=tiny_model("horizontal"),
                            image_processor=tiny_processor("horizontal"))
        out = detector(random_image(60, 90), threshold=0.0)
    finally:
        root.removeHandler(handler)
    assert len(out) == 20
    alarming = [r.getMessage() for r in records if r.levelno >= logging.ERROR or "not supported" in r.getMessage()]
    assert alarming == []


def _refuse_remote_code(monkeypatch) -> list[str]:
    """Record (and refuse) every prompt and every load of a saved folder's own code."""
    import builtins

    import transformers.pipelines
    from transformers.models.auto import auto_factory, configuration_auto, image_processing_auto

    asked: list[str] = []

    def prompt(message: str = "") -> str:
        asked.append(message)
        raise EOFError("no prompt expected")

    def remote(class_ref: str, *args, **kwargs):
        asked.append(f"remote code {class_ref}")
        raise AssertionError(f"remote code loaded: {class_ref}")

    monkeypatch.setattr(builtins, "input", prompt)
    for module in (transformers.pipelines, auto_factory, configuration_auto, image_processing_auto):
        monkeypatch.setattr(module, "get_class_from_dynamic_module", remote)
    return asked


@pytest.mark.parametrize("kind", ["save_pretrained", "save_for_hub"])
def test_a_saved_folder_runs_the_package_code_unasked(tmp_path, monkeypatch, kind):
    """`import sl_detr_hf`, then `pipeline("oriented-object-detection", model=folder)`: for any saved folder
    transformers asked "Do you wish to run the custom code? [y/N]" (looking for a video processor through the image
    processor's `auto_map`), and it refused a `save_for_hub` folder (whose config names its own pipeline code)
    without `trust_remote_code`. The package's registered classes serve both; nothing is asked."""
    import json
    import sys

    import torch

    from sl_detr_hf import SlDetrForObjectDetection, SlDetrImageProcessor
    from sl_detr_hf.hub import save_for_hub
    from sl_detr_hf.pipeline_oriented_detection import TASK, OrientedObjectDetectionPipeline

    model, processor = tiny_model(), tiny_processor()
    folder = tmp_path / "model"
    if kind == "save_for_hub":
        save_for_hub(model, processor, folder)
        assert TASK in json.loads((folder / "config.json").read_text())["custom_pipelines"]
    else:  # what `sl-detr train` writes
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    assert "AutoImageProcessor" in json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
    asked = _refuse_remote_code(monkeypatch)
    dynamic_before = {name for name in sys.modules if name.startswith("transformers_modules")}
    image = random_image(70, 100, seed=5)
    expected = pipeline(TASK, model=model, image_processor=processor)(image, threshold=0.0, top_k=5)
    for trust in (None, False):  # trust_remote_code is not needed, and refusing it changes nothing
        detector = pipeline(TASK, model=str(folder), trust_remote_code=trust)
        assert type(detector) is OrientedObjectDetectionPipeline
        assert type(detector.model) is SlDetrForObjectDetection
        assert type(detector.image_processor) is SlDetrImageProcessor
        got = detector(image, threshold=0.0, top_k=5)
        assert [d["label"] for d in got] == [d["label"] for d in expected]
        torch.testing.assert_close(torch.tensor([d["score"] for d in got]),
                                   torch.tensor([d["score"] for d in expected]), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor([list(d["rbox"].values()) for d in got]),
                                   torch.tensor([list(d["rbox"].values()) for d in expected]), atol=1e-3, rtol=1e-5)
    stock = pipeline("object-detection", model=str(folder))
    assert type(stock.model) is SlDetrForObjectDetection and len(stock(image, threshold=0.0)) == 20
    assert asked == []
    assert {name for name in sys.modules if name.startswith("transformers_modules")} == dynamic_before


def test_the_package_config_forgets_only_the_pipeline_it_serves(tmp_path):
    """Only the entry naming the registered pipeline of its task goes; other code stays declared (and asked for)."""
    from sl_detr_hf import SlDetrConfig
    from sl_detr_hf.hub import custom_pipelines_entry
    from sl_detr_hf.pipeline_oriented_detection import TASK

    config = tiny_model().config
    other = {"impl": "my_pipeline.MyPipeline", "pt": ["AutoModelForObjectDetection"], "type": "image"}
    for declared, kept in (({**custom_pipelines_entry(), "my-task": other}, {"my-task": other}),
                           ({TASK: other}, {TASK: other}),  # the same task, another class: not served here
                           (custom_pipelines_entry(), None)):
        config.custom_pipelines = declared
        config.save_pretrained(tmp_path)
        assert getattr(SlDetrConfig.from_pretrained(tmp_path), "custom_pipelines", None) == kept
