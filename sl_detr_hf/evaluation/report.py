"""The per-class / per-size summary of :func:`evaluate_dota` as JSON-ready dict and as a printed table."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["RULES", "dota_summary", "format_dota_table"]

SIZES = ("small", "medium", "large")
RULES = ("AP50: DOTA devkit, VOC07 11-point, IoU > 0.5. AP75, AP50:95 and the sizes: COCO rules, 101-point, "
         "IoU >= 0.50, 0.55, ..., 0.95; sizes are AP50:95 by object area w*h in pixels: small <= 32^2 <= "
         "medium <= 96^2 <= large (bounds inclusive, as in COCO).")
"""What the figures of :func:`dota_summary` mean."""


def dota_summary(result: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """The figures users read, by class name, from an :func:`evaluate_dota` result (``coco_metrics=True``).

    Returns:
        ``{"mAP" (DOTA mAP50), "mAP75", "mAP50_95", "mAP_by_size": {size: float}, "AP" (AP50), "AP75",
        "AP50_95": {name: float}, "AP50_95_by_size": {size: {name: float}}, "num_objects": {name: int},
        "num_objects_by_size": {size: {name: int}}, "mAP_by_iou": {"0.5": float, ...}, "rules": str}``;
        ``nan`` where undefined (no counted object).
    """
    def named(per_class: Mapping[int, Any]) -> dict[str, Any]:
        return {(class_names[c] if c < len(class_names) else str(c)): v for c, v in per_class.items()}

    return {
        "mAP": result["mAP"], "mAP75": result["mAP75"], "mAP50_95": result["mAP50_95"],
        "mAP_by_size": dict(result["mAP_by_size"]),
        "AP": named(result["AP"]), "AP75": named(result["AP75"]), "AP50_95": named(result["AP50_95"]),
        "AP50_95_by_size": {size: named(result["AP50_95_by_size"][size]) for size in SIZES},
        "num_objects": named(result["num_gts"]),
        "num_objects_by_size": {size: named(result["num_gts_by_size"][size]) for size in SIZES},
        "mAP_by_iou": {f"{t:.2f}": v for t, v in result["mAP_by_iou"].items()},
        "rules": RULES,
    }


def _cell(value: float, width: int) -> str:
    return f"{'-':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.3f}"


def format_dota_table(summary: Mapping[str, Any]) -> str:
    """A fixed-width table of a :func:`dota_summary`: one row per class, then the means; ``-`` where undefined.

    Example::

        class    objects   AP50   AP75  AP50:95   small  medium   large
        car            2  0.545  0.505    0.505       -   1.000   0.000
        person         1  1.000  1.000    0.700   0.700       -       -
        bicycle        0      -      -        -       -       -       -
        all            3  0.773  0.752    0.602   0.700   1.000   0.000
        objects by size: small 1, medium 1, large 1
    """
    names = list(summary["AP"])
    width = max([5, *(len(n) for n in names)])
    head = f"{'class':<{width}}  objects   AP50   AP75  AP50:95   small  medium   large"
    rows = [head]
    for name in names:
        sizes = "".join(_cell(summary["AP50_95_by_size"][s][name], 8) for s in SIZES)
        rows.append(f"{name:<{width}}  {summary['num_objects'][name]:>7d}{_cell(summary['AP'][name], 7)}"
                    f"{_cell(summary['AP75'][name], 7)}{_cell(summary['AP50_95'][name], 9)}{sizes}")
    total = sum(summary["num_objects"].values())
    sizes = "".join(_cell(summary["mAP_by_size"][s], 8) for s in SIZES)
    rows.append(f"{'all':<{width}}  {total:>7d}{_cell(summary['mAP'], 7)}{_cell(summary['mAP75'], 7)}"
                f"{_cell(summary['mAP50_95'], 9)}{sizes}")
    counts = ", ".join(f"{s} {sum(summary['num_objects_by_size'][s].values())}" for s in SIZES)
    rows.append(f"objects by size: {counts}")
    rows.extend(textwrap.wrap(summary.get("rules", RULES), 110))
    return "\n".join(rows)
