"""Fine-tuning on another class list without moving any class: heads and data are matched by class name.

A model's classification rows belong to the names in its ``config.id2label``. When a model is fine-tuned on data
whose class list is ordered differently, lacks some of its classes or adds others, :func:`merge_class_names`
keeps the model's list (each name at its id) and appends the data's new names; :func:`remap_dataset_classes`
renumbers the data to that list; :func:`map_class_heads` gives the model a row per name: a name the model knows
keeps its row (weights and bias), a new name gets a freshly initialized row (Deformable DETR's init: the focal
prior bias). Starting every row afresh is :func:`map_class_heads` with ``fresh=True``.

Rows live in every classification ``nn.Linear`` whose name contains ``class_embed`` (one per decoder layer and
the two-stage encoder head) and in the denoising label embedding (``denoising_class_embed``: one row per class
and a last padding row). How `sl-detr train` uses it: docs/training.md#fine-tuning-keeps-class-names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["map_class_heads", "merge_class_names", "model_class_names", "remap_dataset_classes"]

logger = logging.getLogger(__name__)

_FOCAL_PRIOR_BIAS = math.log(0.01 / 0.99)
"""Deformable DETR's initial class bias: every class at probability 0.01."""


def model_class_names(id2label: dict) -> list[str]:
    """``id2label`` (int or str keys, as a config.json stores them) as the list of names by id."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    if sorted(labels) != list(range(len(labels))):
        raise ValueError(f"id2label ids must be 0..{len(labels) - 1}, got {sorted(labels)}")
    return [labels[i] for i in range(len(labels))]


def merge_class_names(model_names: Sequence[str], data_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """The model's names (each keeps its id), then the data's names the model lacks.

    Returns:
        ``(names, added)``: the merged list and the names appended to the model's.
    """
    known = set(model_names)
    added = [name for name in data_names if name not in known]
    return [*model_names, *added], added


def remap_dataset_classes(dataset, names: Sequence[str]):
    """A detection `datasets.Dataset` (``objects.category`` a `ClassLabel` sequence) renumbered to ``names``.

    Raises:
        ValueError: a class of the dataset is not in ``names``.
    """
    import datasets

    feature = dataset.features["objects"]["category"].feature
    old = list(feature.names)
    missing = [name for name in old if name not in names]
    if missing:
        raise ValueError(f"classes {missing} of the data are not in the class list {list(names)}")
    if old == list(names):
        return dataset
    index = {name: i for i, name in enumerate(names)}
    table = [index[name] for name in old]
    features = dataset.features.copy()
    features["objects"]["category"] = datasets.Sequence(datasets.ClassLabel(names=list(names)))

    def renumber(objects):
        return {"objects": [{**item, "category": [table[c] for c in item["category"]]} for item in objects]}

    return dataset.map(renumber, input_columns="objects", batched=True, features=features,
                       desc="renumbering classes")


def map_class_heads(model: nn.Module, names: Sequence[str], fresh: bool = False) -> list[str]:
    """Give ``model`` one classification row per name of ``names``, in that order, in place.

    A name found in ``model.config.id2label`` keeps its row; the others get new rows (all of them with
    ``fresh=True``). ``config.num_labels``, ``id2label`` and ``label2id`` follow.

    Returns:
        The names that got new rows.
    """
    old_names = model_class_names(model.config.id2label)
    position = {name: i for i, name in enumerate(old_names)}
    source = [None if fresh else position.get(name) for name in names]
    new_rows = [name for name, row in zip(names, source) if row is None]
    old_count = len(old_names)
    mapped: dict[int, nn.Parameter] = {}  # old parameter -> new: tied heads (two modules, one weight) stay tied
    visited: set[int] = set()  # a module reachable under two names is mapped once
    for module_name, module in model.named_modules(remove_duplicate=False):
        if "class_embed" not in module_name or id(module) in visited:
            continue
        visited.add(id(module))
        if isinstance(module, nn.Linear) and module.out_features == old_count:
            module.weight = _mapped(mapped, module.weight, lambda w: _linear_rows(w, source, fill=None))
            if module.bias is not None:
                module.bias = _mapped(mapped, module.bias, lambda b: _linear_rows(b, source, fill=_FOCAL_PRIOR_BIAS))
            module.out_features = len(source)
        elif isinstance(module, nn.Embedding) and module.num_embeddings == old_count + 1:
            module.weight = _mapped(mapped, module.weight, lambda w: _embedding_rows(w, source))
            module.num_embeddings = len(source) + 1
            if module.padding_idx is not None:
                module.padding_idx = len(source)
    id2label = dict(enumerate(names))
    model.config.num_labels = len(names)
    model.config.id2label = id2label
    model.config.label2id = {name: i for i, name in id2label.items()}
    return new_rows


def _mapped(mapped: dict[int, nn.Parameter], old: nn.Parameter, make) -> nn.Parameter:
    if id(old) not in mapped:
        with torch.no_grad():
            mapped[id(old)] = nn.Parameter(make(old.detach()), requires_grad=old.requires_grad)
    return mapped[id(old)]


def _gather_rows(old: torch.Tensor, source: Sequence[int | None], fresh: torch.Tensor) -> torch.Tensor:
    """Rows ``old[source[i]]``, or ``fresh[i]`` where ``source[i]`` is None: ``(len(source), *old.shape[1:])``."""
    keep = torch.tensor([s is not None for s in source], device=old.device)
    index = torch.tensor([0 if s is None else s for s in source], device=old.device, dtype=torch.long)
    mask = keep.view(-1, *([1] * (old.dim() - 1)))
    return torch.where(mask, old[index], fresh.to(old.dtype))


def _linear_rows(old: torch.Tensor, source: Sequence[int | None], fill: float | None) -> torch.Tensor:
    """A linear layer's weight ``(C, d)`` or bias ``(C,)`` mapped to ``len(source)`` rows; new weight rows get
    `nn.Linear`'s default init, new bias entries ``fill``."""
    if fill is not None:
        fresh = torch.full((len(source),), fill, device=old.device)
    else:
        fresh = nn.Linear(old.shape[1], len(source), device=old.device).weight.detach()
    return _gather_rows(old, source, fresh)


def _embedding_rows(old: torch.Tensor, source: Sequence[int | None]) -> torch.Tensor:
    """Class rows of ``(C + 1, d)`` mapped (new rows ~ N(0, 1), `nn.Embedding`'s init), the padding row kept last."""
    fresh = torch.randn(len(source), old.shape[1], device=old.device)
    return torch.cat([_gather_rows(old[:-1], source, fresh), old[-1:]])
