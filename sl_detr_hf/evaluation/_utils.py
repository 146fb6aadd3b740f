"""Small helpers shared by the evaluation modules."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np


def image_key(image_id: Any) -> Any:
    """A hashable image id: ``tensor([7])`` / ``array([7])`` / ``np.int64(7)`` -> ``7``; strings unchanged.

    Use :func:`normalize_keys` on the ids of detections and ground truth together so that ``7`` and ``"7"`` match.
    """
    if hasattr(image_id, "detach"):
        image_id = image_id.detach().cpu().numpy()
    if isinstance(image_id, np.ndarray):
        if image_id.size != 1:
            raise ValueError(f"an image id must be a single value, got shape {image_id.shape}")
        image_id = image_id.reshape(-1)[0]
    return image_id.item() if isinstance(image_id, np.generic) else image_id


def normalize_keys(*groups: dict[Any, Any]) -> None:
    """Make integer and string image ids comparable: when both kinds occur, every key becomes its string (in place).

    ``7`` and ``"7"`` then name the same image (a detection keyed by ``"7"`` would otherwise silently match nothing);
    a list holding both ``7`` and ``"7"`` is refused as a duplicate.
    """
    kinds = {isinstance(k, str) for group in groups for k in group}
    if len(kinds) < 2:
        return
    for group in groups:
        items = list(group.items())
        group.clear()
        for key, value in items:
            text = str(key)
            if text in group:
                raise ValueError(f"image ids {text!r} and {key!r} name the same image twice")
            group[text] = value


def warn_unmatched(detection_keys: Any, ground_truth_keys: Any, logger: logging.Logger) -> int:
    """Warn once (with a count and an example) about detections of images that have no ground truth entry."""
    known = set(ground_truth_keys)
    missing = [k for k in detection_keys if k not in known]
    if missing:
        logger.warning("%d of %d detection entries have an image_id without ground truth (e.g. %r; ground truth ids "
                       "look like %r): they count as false positives", len(missing), len(list(detection_keys)),
                       missing[0], next(iter(known), None))
    return len(missing)
