"""Registration with transformers: a correct use of the stock object-detection pipeline logs nothing alarming."""

from __future__ import annotations

import logging

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
