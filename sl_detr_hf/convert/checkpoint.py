"""Reading a checkpoint safely: mmengine `.pth` files, torch state dicts and safetensors files, without an mm
package and, by default, without unpickling anything but tensors; and a state-dict reader that accounts for every
key (each one mapped or ignored with a reason).

`torch.load(weights_only=True)` reads plain checkpoints. An mmengine Runner checkpoint also pickles its training
state (message hub, optimizer); only `trust_checkpoint=True` reads it, with an unpickler that stands in inert
placeholders for classes that are not installed (unpickling may still run code the file names: trusted files only).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "StateDictReader", "load_checkpoint", "strip_module_prefix"]


class CheckpointError(ValueError):
    """A checkpoint or config that the converter cannot (or will not) convert; the message says why."""


class _PlaceholderMeta(type):
    """Attribute look-ups on a placeholder class (pickles of methods, `getattr(HistoryBuffer, 'min')`) give
    further placeholders."""

    def __getattr__(cls, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return _PlaceholderMeta(name, (_Placeholder,), {"__module__": f"{cls.__module__}.{cls.__name__}"})


class _Placeholder(metaclass=_PlaceholderMeta):
    """Stands in for a pickled object of a class that cannot be imported here (e.g. mmengine's HistoryBuffer):
    keeps its arguments and state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _LenientUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose missing classes (a module not installed) become [`_Placeholder`] subclasses."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": module})


class _LenientPickleModule:
    """The `pickle_module` torch.load takes: the standard module with [`_LenientUnpickler`]."""

    Unpickler = _LenientUnpickler
    load = staticmethod(pickle.load)
    __name__ = "pickle"


def load_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an mmengine checkpoint (`.pth`), a plain torch state dict or a safetensors file.

    Args:
        path: the file.
        trust_checkpoint: allow pickled Python objects beyond tensors (mmengine checkpoints hold its message hub
            and optimizer state): `torch.load(weights_only=False)`, classes that are not installed replaced by
            inert placeholders. Only for files from a source you trust: unpickling may run code named in the file.

    Returns:
        `(state_dict, meta)`: the model's tensors (a `module.` prefix removed) and the checkpoint's `meta` (with
        `cfg`, the config text, and maybe `dataset_meta`); `meta` is `{}` for safetensors and bare state dicts.

    Raises:
        CheckpointError: the file needs `trust_checkpoint`, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return strip_module_prefix(load_file(str(path))), {}
    if trust_checkpoint:
        data = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LenientPickleModule)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            reason = str(err).strip().splitlines()
            culprit = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line),
                           reason[0] if reason else "")
            raise CheckpointError(
                f"{path.name} holds pickled Python objects besides tensors ({culprit}); mmengine checkpoints "
                "carry their training state (message hub, optimizer) that way. torch.load can only rebuild them "
                "by running code the file names, so the converter does not by default. Pass --trust-checkpoint "
                "(trust_checkpoint=True) if you trust where the file came from, or save its state_dict as "
                "safetensors and pass that with --config."
            ) from None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path.name}: expected a dict, got {type(data).__name__}")
    meta = data.get("meta") if isinstance(data.get("meta"), Mapping) else {}
    for key in ("state_dict", "model", "module"):
        if isinstance(data.get(key), Mapping):
            data = data[key]
            break
    state = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path.name} holds no tensors (no `state_dict`)")
    if len(state) != len(data):
        others = sorted(k for k in data if k not in state)
        raise CheckpointError(f"{path.name}: the state dict has entries that are not tensors: {others[:5]}")
    return strip_module_prefix(state), dict(meta)


def strip_module_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a `module.` prefix (a checkpoint saved from a DistributedDataParallel wrapper)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


@dataclass
class StateDictReader:
    """A source state dict that accounts for every key: each is taken (mapped) or ignored with a reason;
    `finish` raises naming any key left over."""

    state: Mapping[str, torch.Tensor]
    used: set[str] = field(default_factory=set)
    ignored: dict[str, str] = field(default_factory=dict)

    def has(self, key: str) -> bool:
        return key in self.state

    def peek(self, key: str) -> torch.Tensor:
        """The tensor without marking it used."""
        if key not in self.state:
            raise CheckpointError(f"the checkpoint has no `{key}`")
        return self.state[key]

    def take(self, key: str) -> torch.Tensor:
        tensor = self.peek(key)
        self.used.add(key)
        return tensor

    def ignore(self, keys: Iterable[str], reason: str) -> None:
        for key in keys:
            if key in self.state:
                self.ignored[key] = reason

    def count(self, prefix: str) -> int:
        """How many consecutive `prefix{i}.` blocks exist (`prefix` like `'encoder.layers.'`)."""
        n = 0
        while any(k.startswith(f"{prefix}{n}.") for k in self.state):
            n += 1
        return n

    def left_over(self) -> list[str]:
        return sorted(k for k in self.state if k not in self.used and k not in self.ignored)

    def finish(self) -> None:
        left = self.left_over()
        if left:
            shown = ", ".join(left[:20]) + (f" and {len(left) - 20} more" if len(left) > 20 else "")
            raise CheckpointError(f"{len(left)} checkpoint key(s) have no place in SL-DETR: {shown}")
