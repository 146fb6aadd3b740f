"""The criterion's numbers, recorded before its restructuring (issue 26, item 7), must not move.

`tests/fixtures/criterion/recorded.json` holds, for a few fixed random problems, every term of `loss_dict`, the
total and a probe of the gradient of the total with respect to every prediction tensor (`sum(grad * w)` with fixed
random weights `w`). The cases cover what the per-layer reference (`tests/test_criterion_batched.py`) does not:
denoising with and without dynamic matching on random problems (rotated and horizontal), empty targets with an
empty denoising block, a single target, float32, and the gradients. Regenerate only when the equations change on
purpose: `python tests/test_criterion_recorded.py --record`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sl_detr_hf.configuration_sl_detr import SlDetrConfig
from sl_detr_hf.loss_sl_detr import SlDetrLoss

RECORD = Path(__file__).parent / "fixtures" / "criterion" / "recorded.json"
TOLERANCE = 1e-6  # relative to max(1, |value|)

# name: (config overrides, image target counts, DN groups, encoder tokens (None: as many as queries), dtype)
CASES = {
    "rotated_rhino_dynamic_dn": ({}, [3, 0, 2], 2, None, "float64"),
    "rotated_plain_losses_static_dn": (
        {"use_sync_loc": False, "use_quality_cls": False, "dynamic_denoising": False}, [2, 4], 3, None, "float64"),
    "rotated_deformable_detr_all_tokens": ({"numerics": "deformable_detr"}, [4, 1], 2, 30, "float32"),
    "horizontal_dn_all_tokens": ({"box_type": "horizontal", "numerics": "deformable_detr"}, [1, 3, 0], 3, 30,
                                 "float64"),
    "horizontal_dynamic_dn": ({"box_type": "horizontal", "dynamic_denoising": True}, [2, 2], 2, None, "float64"),
    "empty_targets_empty_dn": ({}, [0, 0], 2, None, "float64"),
    "single_target_dynamic_dn": ({}, [1], 4, None, "float32"),
}
QUERIES, CLASSES, LAYERS = 10, 5, 3


def _boxes(rng: np.random.Generator, shape: tuple[int, ...], rotated: bool) -> np.ndarray:
    """Normalized boxes `shape + (5 or 4,)`: centres in [0.1, 0.9], sides in [0.02, 0.4], theta in [-pi/2, pi/2)."""
    boxes = [rng.uniform(0.1, 0.9, shape), rng.uniform(0.1, 0.9, shape), rng.uniform(0.02, 0.4, shape),
             rng.uniform(0.02, 0.4, shape)]
    if rotated:
        boxes.append(rng.uniform(-np.pi / 2, np.pi / 2, shape))
    return np.stack(boxes, -1)


def make_case(name: str) -> tuple[SlDetrConfig, dict, list[dict], dict[str, torch.Tensor]]:
    """`(config, outputs, targets, leaves)` of a recorded case; `leaves` names every prediction tensor (they require
    grad)."""
    overrides, counts, groups, tokens, dtype_name = CASES[name]
    dtype = getattr(torch, dtype_name)
    config = SlDetrConfig(num_labels=CLASSES, sync_gain=1.3, cls_loss_coefficient=1.5, **overrides)
    rotated = config.box_type == "rotated"
    rng = np.random.default_rng(sum(map(ord, name)))
    batch = len(counts)

    def layer(queries: int) -> dict:
        return {"logits": torch.tensor(rng.normal(0, 2, (batch, queries, CLASSES)), dtype=dtype),
                "pred_boxes": torch.tensor(_boxes(rng, (batch, queries), rotated), dtype=dtype)}

    decoder = [layer(QUERIES) for _ in range(LAYERS)]
    outputs = {**decoder[-1], "auxiliary_outputs": decoder[:-1], "enc_outputs": layer(tokens or QUERIES)}
    max_objects = max(counts)
    outputs["dn_outputs"] = [layer(2 * groups * max_objects) for _ in range(LAYERS)]
    outputs["dn_meta"] = {"num_groups": groups, "max_objects": max_objects}
    targets = [{"class_labels": torch.tensor(rng.integers(0, CLASSES, n)),
                "boxes": torch.tensor(_boxes(rng, (n,), rotated), dtype=dtype),
                "size": torch.tensor([rng.integers(300, 900), rng.integers(300, 900)])} for n in counts]
    leaves = {"": outputs, "enc.": outputs["enc_outputs"]}
    leaves.update({f"d{i}.": aux for i, aux in enumerate(outputs["auxiliary_outputs"])})
    leaves.update({f"dn{i}.": dn for i, dn in enumerate(outputs["dn_outputs"])})
    named = {}
    for prefix, block in leaves.items():
        for key in ("logits", "pred_boxes"):
            named[prefix + key] = block[key].requires_grad_()
    return config, outputs, targets, named


def compute(name: str) -> dict[str, float]:
    """The case's loss terms, `"total"` and `"grad:<tensor>"` probes, as Python floats."""
    config, outputs, targets, leaves = make_case(name)
    total, loss_dict = SlDetrLoss(config)(outputs, targets)
    total.backward()
    probe_rng = np.random.default_rng(1234)
    values = {key: float(value.detach()) for key, value in loss_dict.items()}
    values["total"] = float(total.detach())
    for key, leaf in leaves.items():
        weights = torch.tensor(probe_rng.normal(0, 1, tuple(leaf.shape)), dtype=torch.float64)
        grad = torch.zeros_like(weights) if leaf.grad is None else leaf.grad.double()  # None: not in the graph
        values["grad:" + key] = float((grad * weights).sum())
    return values


@pytest.mark.parametrize("name", sorted(CASES))
def test_criterion_matches_the_recorded_numbers(name):
    expected = json.loads(RECORD.read_text())[name]
    got = compute(name)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert abs(got[key] - value) <= TOLERANCE * max(1.0, abs(value)), (key, got[key], value)


def test_recorded_cases_exercise_what_they_name():
    """The record is not vacuous: denoising terms where there are targets, none for the empty batch, non-zero
    gradients reaching the DN predictions."""
    record = json.loads(RECORD.read_text())
    assert set(record) == set(CASES)
    for name, values in record.items():
        has_dn = max(CASES[name][1]) > 0
        assert ("dn.loss_cls" in values) == has_dn, name
        assert ("d1.dn.loss_sync" in values) == has_dn, name
        if has_dn:
            assert values["dn.loss_bbox"] > 0 and values["grad:dn2.pred_boxes"] != 0, name
        else:
            assert values["loss_bbox"] == 0 and values["loss_sync"] == 0 and values["loss_cls"] > 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_criterion_recorded.py --record   (rewrites the recorded numbers)")
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps({name: compute(name) for name in sorted(CASES)}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}")
