"""SL-DETR: synchronized-loss DETR for oriented and axis-aligned object detection, on Hugging Face."""

__version__ = "0.1.0"
