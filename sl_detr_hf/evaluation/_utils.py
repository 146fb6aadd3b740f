"""Small helpers shared by the evaluation modules."""

from __future__ import annotations

from typing import Any

import numpy as np


def image_key(image_id: Any) -> Any:
    """A hashable image id: ``tensor([7])`` / ``array([7])`` / ``np.int64(7)`` -> ``7``; strings unchanged."""
    if hasattr(image_id, "detach"):
        image_id = image_id.detach().cpu().numpy()
    if isinstance(image_id, np.ndarray):
        if image_id.size != 1:
            raise ValueError(f"an image id must be a single value, got shape {image_id.shape}")
        image_id = image_id.reshape(-1)[0]
    return image_id.item() if isinstance(image_id, np.generic) else image_id
