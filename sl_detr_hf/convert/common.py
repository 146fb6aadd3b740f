"""What the RHINO and mmdetection-DINO converters share: reading mmengine checkpoints and configs without running
them, a state dict reader that accounts for every key, and the mapping of the parts both models have (mmdet
ResNet, ChannelMapper, deformable encoder and decoder layers, DINO's query parts).

Nothing here imports an mm package: checkpoints are read with `torch.load(weights_only=True)` (or, with
`trust_checkpoint`, with an unpickler that stands in inert placeholders for classes it cannot import), configs
with Python's `ast` (literals, `dict(...)` calls, names assigned earlier in the file and `_base_` inheritance).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import operator
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "COCO_CLASSES",
    "CheckpointError",
    "ConfigError",
    "ConvertedCheckpoint",
    "StateDictReader",
    "load_checkpoint",
    "load_config",
    "parse_config_text",
]

# mmdetection's CocoDataset class order (80 classes), what its COCO checkpoints' class heads follow.
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


class CheckpointError(ValueError):
    """A checkpoint or config that the converter cannot (or will not) convert; the message says why."""


# ------------------------------------------------------------------------------------------------ checkpoints


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

        return _strip_prefix(load_file(str(path))), {}
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
    return _strip_prefix(state), dict(meta)


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a `module.` prefix (a checkpoint saved from a DistributedDataParallel wrapper)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


# ---------------------------------------------------------------------------------------------------- configs
#
# A config (or a checkpoint's `meta['cfg']`) may come from anyone: it is read, never run, and every value it
# builds is bounded, so that a hostile text (`9 ** 9 ** 9 ** 9`, `'a' * 10**9`, deep nesting, a `_base_` cycle)
# is refused at once with its file and line instead of hanging or exhausting memory. The bounds are far above
# real configs (RHINO's and DINO's resolved configs: 10-17 KB of text, a few thousand values).

MAX_CONFIG_CHARS = 1_000_000
"""Characters in one config file or `meta['cfg']` text."""
MAX_VALUE_SIZE = 100_000
"""Items in one value: container entries (a dict's keys and values) and string characters, counted through the
nesting (a list repeated with `*` counts each repeat)."""
MAX_CONFIG_WORK = 250_000
"""Items built or copied (each use of an earlier name copies its value) while reading one config with its bases."""
MAX_INT_BITS = 128
"""Bits of an integer."""
MAX_NESTING = 100
"""Depth of an expression and of a value."""
MAX_BASE_DEPTH = 16
"""Length of a `_base_` chain."""
MAX_BASE_FILES = 64
"""Config files read for one config, its bases included."""


class ConfigError(CheckpointError):
    """A config the reader refuses (beyond its bounds, a `_base_` cycle, not Python); the message names the file
    and line."""


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_CALLS = {"dict": dict, "list": list, "tuple": tuple, "float": float, "int": int, "str": str, "bool": bool}
_SEQUENCES = (str, bytes, list, tuple)
_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _copy_value(value: Any) -> Any:
    """A copy of a config value's containers (its atoms are immutable); `copy.deepcopy` is several times slower."""
    if isinstance(value, dict):
        return {key: _copy_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_value(item) for item in value)
    if isinstance(value, set):
        return set(value)
    return value


class _Unsupported(Exception):
    """An expression the literal evaluator does not handle (the assignment is skipped)."""


@dataclass
class _Budget:
    """What one config read (a file with its `_base_` chain) has spent of `MAX_CONFIG_WORK` / `MAX_BASE_FILES`."""

    work: int = 0
    files: int = 0


class _Evaluator:
    """Values of config expressions within the bounds above: literals, containers, `dict(...)`-style calls of
    builtins, names bound earlier, arithmetic and subscripts. Anything else raises `_Unsupported` (nothing is
    executed); a value beyond a bound raises [`ConfigError`] naming `filename` and the line."""

    def __init__(self, filename: str, budget: _Budget | None = None) -> None:
        self.filename = filename
        self.budget = budget if budget is not None else _Budget()
        self._sizes: dict[int, tuple[Any, int, int]] = {}  # id -> (value kept alive, size, depth)

    def error(self, node: ast.AST | None, message: str) -> ConfigError:
        line = getattr(node, "lineno", None)
        return ConfigError(f"{self.filename}{f':{line}' if line else ''}: {message}")

    def charge(self, node: ast.AST, items: int) -> None:
        self.budget.work += items
        if self.budget.work > MAX_CONFIG_WORK:
            raise self.error(node, f"the config builds or copies more than {MAX_CONFIG_WORK:,} values "
                             "(MAX_CONFIG_WORK); refused")

    def measure(self, node: ast.AST, value: Any, level: int = 0) -> tuple[int, int]:
        """`(size, depth)` of a value (see `MAX_VALUE_SIZE`); raises past `MAX_NESTING` or `MAX_INT_BITS`."""
        if level > MAX_NESTING:
            raise self.error(node, f"a value nested deeper than {MAX_NESTING} levels (MAX_NESTING); refused")
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
            raise self.error(node, f"an integer of {value.bit_length():,} bits; the config reader refuses integers "
                             f"over {MAX_INT_BITS} bits (MAX_INT_BITS)")
        if isinstance(value, (str, bytes)):
            return 1 + len(value), 0
        if not isinstance(value, (list, tuple, set, frozenset, dict)):
            return 1, 0
        known = self._sizes.get(id(value))
        if known is not None and known[0] is value:
            return known[1], known[2]
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        size, depth = 1, 0
        for item in items:
            item_size, item_depth = self.measure(node, item, level + 1)
            size, depth = size + item_size, max(depth, item_depth + 1)
            if size > MAX_VALUE_SIZE:
                raise self.error(node, f"a value of more than {MAX_VALUE_SIZE:,} items (MAX_VALUE_SIZE); refused")
        self._sizes[id(value)] = (value, size, depth)
        return size, depth

    def checked(self, node: ast.AST, value: Any) -> Any:
        size, depth = self.measure(node, value)
        if size > MAX_VALUE_SIZE:
            raise self.error(node, f"a value of {size:,} items; the config reader refuses values over "
                             f"{MAX_VALUE_SIZE:,} (MAX_VALUE_SIZE)")
        if depth > MAX_NESTING:
            raise self.error(node, f"a value nested {depth} levels deep (MAX_NESTING {MAX_NESTING}); refused")
        return value

    def evaluate(self, node: ast.AST, names: Mapping[str, Any], depth: int = 0) -> Any:
        if depth > MAX_NESTING:
            raise self.error(node, f"an expression nested deeper than {MAX_NESTING} levels (MAX_NESTING); refused")
        depth += 1
        if isinstance(node, ast.Constant):
            return self.checked(node, node.value)
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self.evaluate(e, names, depth) for e in node.elts]
            self.charge(node, len(items))
            return self.checked(node, {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items))
        if isinstance(node, ast.Dict):
            out: dict = {}
            for key, value in zip(node.keys, node.values):
                if key is None:  # {**other}
                    out.update(self.evaluate(value, names, depth))
                else:
                    out[self.evaluate(key, names, depth)] = self.evaluate(value, names, depth)
            self.charge(node, len(out))
            return self.checked(node, out)
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise _Unsupported(f"name {node.id!r}")
            size, nesting = self.measure(node, names[node.id])
            self.charge(node, size)
            value = _copy_value(names[node.id])  # each use its own copy, as mmengine's
            self._sizes[id(value)] = (value, size, nesting)
            return value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self.checked(node, _UNARY[type(node.op)](self.evaluate(node.operand, names, depth)))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.evaluate(node.left, names, depth), self.evaluate(node.right, names, depth)
            return self.binary(node, left, right)
        if isinstance(node, ast.Subscript):
            container, key = self.evaluate(node.value, names, depth), self.evaluate(node.slice, names, depth)
            return self.checked(node, container[key])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
            args = [self.evaluate(a, names, depth) for a in node.args]
            kwargs = {}
            for keyword in node.keywords:
                if keyword.arg is None:
                    kwargs.update(self.evaluate(keyword.value, names, depth))
                else:
                    kwargs[keyword.arg] = self.evaluate(keyword.value, names, depth)
            value = self.checked(node, _CALLS[node.func.id](*args, **kwargs))
            self.charge(node, self.measure(node, value)[0])
            return value
        raise _Unsupported(ast.dump(node)[:80])

    def binary(self, node: ast.BinOp, left: Any, right: Any) -> Any:
        """`left <op> right`, refused before it is computed when the result would pass a bound."""
        op = type(node.op)
        if op is ast.Pow and isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            bits = math.log2(abs(left)) * right
            if bits > MAX_INT_BITS + 1:
                raise self.error(node, f"a power of about {bits:.3g} bits; the config reader refuses integers over "
                                 f"{MAX_INT_BITS} bits (MAX_INT_BITS)")
        if op is ast.Mult:
            sequence, count = (left, right) if isinstance(left, _SEQUENCES) else (right, left)
            if isinstance(sequence, _SEQUENCES) and isinstance(count, int) and count > 1:
                items = (self.measure(node, sequence)[0] - 1) * count
                if items > MAX_VALUE_SIZE:
                    raise self.error(node, f"repeating a {type(sequence).__name__} {count:,} times makes "
                                     f"{items:,} items; the config reader refuses values over {MAX_VALUE_SIZE:,} "
                                     "(MAX_VALUE_SIZE)")
                self.charge(node, items)
        if op is ast.Add and isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            self.charge(node, self.measure(node, left)[0] + self.measure(node, right)[0])
        if op is ast.Mod and isinstance(left, (str, bytes)):
            text = left.decode("latin-1") if isinstance(left, bytes) else left
            for width, precision in _PERCENT_FIELD.findall(text):
                for number in (width, precision):
                    if number == "*" or (number and int(number) > MAX_VALUE_SIZE):
                        raise self.error(node, f"a %-format field width / precision {number!r}; the config reader "
                                         f"refuses `*` and widths over {MAX_VALUE_SIZE:,}")
        try:
            value = _BINARY[op](left, right)
        except OverflowError as err:
            raise self.error(node, f"arithmetic overflow ({err})") from None
        return self.checked(node, value)


def _parse_config(text: str, filename: str, budget: _Budget | None = None) -> tuple[dict[str, Any], dict[str, int]]:
    """`parse_config_text`'s names, and the line of each assignment kept."""
    if not isinstance(text, str):
        raise ConfigError(f"{filename}: the config is a {type(text).__name__}, not text")
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{filename}: {len(text):,} characters; the config reader refuses configs over "
                          f"{MAX_CONFIG_CHARS:,} (MAX_CONFIG_CHARS)")
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as err:
        raise ConfigError(f"{filename}:{err.lineno}: not a Python config file ({err.msg})") from None
    except (MemoryError, RecursionError) as err:  # the parser's own limits on nesting
        raise ConfigError(f"{filename}: nested too deeply for Python's parser ({type(err).__name__}); "
                          "refused") from None
    except ValueError as err:  # e.g. a NUL character
        raise ConfigError(f"{filename}: not a Python config file ({err})") from None
    evaluator = _Evaluator(filename, budget)
    names: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for statement in tree.body:
        if isinstance(statement, (ast.Import, ast.ImportFrom, ast.Expr)):
            continue
        targets = [statement.target] if isinstance(statement, ast.AnnAssign) else getattr(statement, "targets", [])
        value = getattr(statement, "value", None)
        if value is None or len(targets) != 1 or not isinstance(targets[0], ast.Name):
            logger.debug("%s:%s: statement skipped", filename, getattr(statement, "lineno", "?"))
            continue
        try:
            names[targets[0].id] = evaluator.evaluate(value, names)
            lines[targets[0].id] = statement.lineno
        except ConfigError:
            raise
        except (_Unsupported, TypeError, KeyError, IndexError, ValueError, ZeroDivisionError) as err:
            logger.debug("%s:%s: %s not evaluated (%s)", filename, statement.lineno, targets[0].id, err)
        except OverflowError as err:  # int(float('inf')), ...
            raise evaluator.error(statement, f"arithmetic overflow in {targets[0].id!r} ({err})") from None
        except (MemoryError, RecursionError) as err:  # a bound this reader missed: still a clear refusal
            raise evaluator.error(statement, f"{type(err).__name__} while reading {targets[0].id!r}; "
                                  "refused") from None
    return names, lines


def parse_config_text(text: str, filename: str = "<config>") -> dict[str, Any]:
    """The top-level assignments of an mmengine config (Python source) as a dict, without executing it.

    Each `name = expression` whose expression is literal-like (see `_Evaluator`) is kept, in order, so later
    assignments may use earlier names; imports are skipped; other statements and unsupported expressions are
    skipped with a debug message (a config's `meta['cfg']` text is fully resolved, so it has none).

    Raises:
        ConfigError: the text is not Python, or a value passes a bound (`MAX_VALUE_SIZE`, `MAX_INT_BITS`,
            `MAX_NESTING`, `MAX_CONFIG_WORK`, `MAX_CONFIG_CHARS`); the message names `filename` and the line.
    """
    return _parse_config(text, filename)[0]


def _merge(base: dict, child: Mapping) -> dict:
    """mmengine's config inheritance: child dicts merge into base dicts key by key unless `_delete_=True`."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and not value.get("_delete_", False):
            out[key] = _merge(out[key], value)
        else:
            out[key] = _drop_delete(value)
    return out


def _drop_delete(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_delete(v) for k, v in value.items() if k != "_delete_"}
    return value


def _read_json_config(path: Path, text: str, budget: _Budget) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not a JSON config ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # nesting, or an integer past Python's digit limit
        raise ConfigError(f"{path}: not a readable JSON config ({type(err).__name__}: {err})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: a JSON config is an object, got {type(value).__name__}")
    evaluator = _Evaluator(str(path), budget)
    evaluator.charge(None, evaluator.measure(None, evaluator.checked(None, value))[0])
    return value


def _load_config(path: Path, budget: _Budget, chain: tuple[Path, ...], where: str) -> dict[str, Any]:
    """`load_config` of `path`, reached through the `_base_` files `chain` (`where`: the file:line naming it)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(p.name for p in (*chain[chain.index(resolved):], resolved))
        raise ConfigError(f"{where}: `_base_` cycle {cycle}; refused")
    if len(chain) >= MAX_BASE_DEPTH:
        raise ConfigError(f"{where}: `_base_` chain deeper than {MAX_BASE_DEPTH} files (MAX_BASE_DEPTH); refused")
    budget.files += 1
    if budget.files > MAX_BASE_FILES:
        raise ConfigError(f"{where}: more than {MAX_BASE_FILES} config files in the `_base_` chain "
                          "(MAX_BASE_FILES); refused")
    if not path.is_file():
        raise ConfigError(f"{where + ': ' if chain else ''}config {str(path)!r} is not a file")
    if path.stat().st_size > 4 * MAX_CONFIG_CHARS:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes; the config reader refuses configs over "
                          f"{MAX_CONFIG_CHARS:,} characters (MAX_CONFIG_CHARS)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason})") from None
    if path.suffix == ".json":
        if len(text) > MAX_CONFIG_CHARS:
            raise ConfigError(f"{path}: {len(text):,} characters; the config reader refuses configs over "
                              f"{MAX_CONFIG_CHARS:,} (MAX_CONFIG_CHARS)")
        return _read_json_config(path, text, budget)
    names, lines = _parse_config(text, str(path), budget)
    bases = names.pop("_base_", [])
    here = f"{path}:{lines.get('_base_', 1)}"
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{here}: `_base_` must be a file name or a list of them, got {bases!r:.80}")
    merged: dict = {}
    for base in bases:
        merged = _merge(merged, _load_config(path.parent / base, budget, (*chain, resolved), here))
    return _merge(merged, names)


def load_config(path: str | Path) -> dict[str, Any]:
    """An mmengine config file (`.py`, with its `_base_` files merged in) or a JSON dump of one, as a dict.

    Raises:
        ConfigError: a file is missing or refused (see `parse_config_text`), a `_base_` cycle, a chain deeper than
            `MAX_BASE_DEPTH` or more than `MAX_BASE_FILES` files; the message names the file and line.
    """
    path = Path(path)
    return _load_config(path, _Budget(), (), str(path))


def config_from_meta(meta: Mapping) -> dict[str, Any] | None:
    """The config dict of a checkpoint's `meta['cfg']` (text or dict), or `None`."""
    cfg = meta.get("cfg")
    if isinstance(cfg, str):
        return parse_config_text(cfg, "meta['cfg']")
    if isinstance(cfg, Mapping):
        return dict(_Evaluator("meta['cfg']").checked(None, dict(cfg)))
    return None


def short_type(cfg: Mapping | None) -> str | None:
    """A registry type without its scope: `'mmdet.ResNet'` -> `'ResNet'`."""
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("type"), str):
        return None
    return cfg["type"].split(".")[-1]


# ------------------------------------------------------------------------------------------- state dict reader


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


# --------------------------------------------------------------------------------------- shared weight layouts


def map_resnet(reader: StateDictReader, out: dict[str, torch.Tensor], bgr_input: bool = False) -> None:
    """mmdet `ResNet` (`backbone.*`: conv1, bn1, layer1..4 of bottlenecks, torchvision names) -> transformers'
    `ResNetBackbone` (`model.backbone.model.*`: `embedder.embedder`, `encoder.stages.{s}.layers.{b}` with
    `layer.{0,1,2}` and `shortcut`; a convolution and its norm as `convolution` / `normalization`).

    BatchNorm counters (`num_batches_tracked`) are ignored (the converted backbone's norms are frozen, as the
    source's `norm_eval`). With `bgr_input` (a model fed BGR images) the stem's input channels are reversed, so
    that the converted model takes RGB.
    """
    prefix = "model.backbone.model."
    for key in reader.state:
        if not key.startswith("backbone."):
            continue
        if key.endswith("num_batches_tracked"):
            reader.ignore([key], "BatchNorm step counter (frozen norms)")
            continue
        parts = key.split(".")  # backbone.conv1.weight / backbone.layer2.0.bn3.running_mean / ...downsample.1.bias
        if parts[1] in ("conv1", "bn1") and len(parts) == 3:
            target = f"embedder.embedder.{'convolution' if parts[1] == 'conv1' else 'normalization'}.{parts[2]}"
        elif parts[1].startswith("layer") and len(parts) == 5 and parts[3][:-1] in ("conv", "bn"):
            stage, block, kind, index = int(parts[1][5:]) - 1, parts[2], parts[3][:-1], int(parts[3][-1]) - 1
            part = "convolution" if kind == "conv" else "normalization"
            target = f"encoder.stages.{stage}.layers.{block}.layer.{index}.{part}.{parts[4]}"
        elif parts[1].startswith("layer") and len(parts) == 6 and parts[3] == "downsample":
            stage, block = int(parts[1][5:]) - 1, parts[2]
            part = "convolution" if parts[4] == "0" else "normalization"
            target = f"encoder.stages.{stage}.layers.{block}.shortcut.{part}.{parts[5]}"
        else:
            continue  # left over: `finish` names it
        tensor = reader.take(key)
        if key == "backbone.conv1.weight" and bgr_input:
            tensor = tensor.flip(1)
        out[prefix + target] = tensor


def map_channel_mapper(reader: StateDictReader, out: dict[str, torch.Tensor], num_levels: int) -> int:
    """mmdet `ChannelMapper` (conv without bias + GroupNorm per level, extra stride-2 convs) -> `input_proj`.

    Returns the number of backbone levels. The convolutions get a zero bias (mmdet's have none: a norm follows).
    """
    backbone_levels = reader.count("neck.convs.")
    extra = reader.count("neck.extra_convs.")
    if backbone_levels + extra != num_levels:
        raise CheckpointError(f"neck has {backbone_levels} + {extra} levels, level_embed {num_levels}")
    for level in range(num_levels):
        src = f"neck.convs.{level}" if level < backbone_levels else f"neck.extra_convs.{level - backbone_levels}"
        if reader.has(f"{src}.conv.bias"):
            bias = reader.take(f"{src}.conv.bias")
        else:
            bias = torch.zeros(reader.peek(f"{src}.conv.weight").shape[0])
        out[f"model.input_proj.{level}.0.weight"] = reader.take(f"{src}.conv.weight")
        out[f"model.input_proj.{level}.0.bias"] = bias
        if not reader.has(f"{src}.gn.weight"):
            raise CheckpointError(f"{src} has no GroupNorm (`gn`): SL-DETR's input projections need one")
        out[f"model.input_proj.{level}.1.weight"] = reader.take(f"{src}.gn.weight")
        out[f"model.input_proj.{level}.1.bias"] = reader.take(f"{src}.gn.bias")
    return backbone_levels


def _copy(reader: StateDictReader, out: dict, src: str, dst: str) -> None:
    out[f"{dst}.weight"] = reader.take(f"{src}.weight")
    out[f"{dst}.bias"] = reader.take(f"{src}.bias")


def map_deformable_attention(reader: StateDictReader, out: dict, src: str, dst: str) -> None:
    """mmcv `MultiScaleDeformableAttention` -> transformers' (the same four projections, same names)."""
    for name in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
        _copy(reader, out, f"{src}.{name}", f"{dst}.{name}")


def map_ffn(reader: StateDictReader, out: dict, src: str, dst: str) -> None:
    """mmcv `FFN` (`layers.0.0` Linear in, `layers.1` Linear out) -> `mlp.fc1`, `mlp.fc2`."""
    _copy(reader, out, f"{src}.layers.0.0", f"{dst}.fc1")
    _copy(reader, out, f"{src}.layers.1", f"{dst}.fc2")


def map_encoder(reader: StateDictReader, out: dict, num_layers: int) -> None:
    """mmdet `DeformableDetrTransformerEncoder` -> `model.encoder` (norms.0 after attention, norms.1 after FFN)."""
    for i in range(num_layers):
        src, dst = f"encoder.layers.{i}", f"model.encoder.layers.{i}"
        map_deformable_attention(reader, out, f"{src}.self_attn", f"{dst}.self_attn")
        _copy(reader, out, f"{src}.norms.0", f"{dst}.self_attn_layer_norm")
        map_ffn(reader, out, f"{src}.ffn", f"{dst}.mlp")
        _copy(reader, out, f"{src}.norms.1", f"{dst}.final_layer_norm")


def map_decoder_layers(reader: StateDictReader, out: dict, num_layers: int) -> None:
    """mmdet DINO / RHINO decoder layers -> `model.decoder.layers`: nn.MultiheadAttention's packed `in_proj`
    (rows q; k; v) split into `q_proj`, `k_proj`, `v_proj`; norms.0/1/2 after self-attention, cross-attention,
    FFN."""
    for i in range(num_layers):
        src, dst = f"decoder.layers.{i}", f"model.decoder.layers.{i}"
        weight = reader.take(f"{src}.self_attn.attn.in_proj_weight")
        bias = reader.take(f"{src}.self_attn.attn.in_proj_bias")
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), weight.chunk(3), bias.chunk(3)):
            out[f"{dst}.self_attn.{name}.weight"], out[f"{dst}.self_attn.{name}.bias"] = w, b
        _copy(reader, out, f"{src}.self_attn.attn.out_proj", f"{dst}.self_attn.o_proj")
        _copy(reader, out, f"{src}.norms.0", f"{dst}.self_attn_layer_norm")
        map_deformable_attention(reader, out, f"{src}.cross_attn", f"{dst}.encoder_attn")
        _copy(reader, out, f"{src}.norms.1", f"{dst}.encoder_attn_layer_norm")
        map_ffn(reader, out, f"{src}.ffn", f"{dst}.mlp")
        _copy(reader, out, f"{src}.norms.2", f"{dst}.final_layer_norm")


def map_query_parts(reader: StateDictReader, out: dict, d_model: int) -> None:
    """DINO's query parts: content queries, encoder memory projection, `ref_point_head` (its first layer's input
    blocks reordered from mmdet's sine order `(y, x, w, h)` to SL-DETR's `(x, y, w, h)`), the decoder's output
    norm and the denoising label embedding (SL-DETR's has one more, zero, padding row)."""
    out["model.query_selection.content_embed.weight"] = reader.take("query_embedding.weight")
    _copy(reader, out, "memory_trans_fc", "model.enc_output")
    _copy(reader, out, "memory_trans_norm", "model.enc_output_norm")
    first = reader.take("decoder.ref_point_head.layers.0.weight")
    half = d_model // 2
    if first.shape[1] != 4 * half:
        raise CheckpointError(f"decoder.ref_point_head takes {first.shape[1]} features, expected 4 x {half}")
    out["model.decoder.ref_point_head.mlp.layers.0.weight"] = torch.cat(
        [first[:, half:2 * half], first[:, :half], first[:, 2 * half:]], dim=1)
    out["model.decoder.ref_point_head.mlp.layers.0.bias"] = reader.take("decoder.ref_point_head.layers.0.bias")
    _copy(reader, out, "decoder.ref_point_head.layers.1", "model.decoder.ref_point_head.mlp.layers.1")
    _copy(reader, out, "decoder.norm", "model.decoder.norm")
    label = reader.take("dn_query_generator.label_embedding.weight")
    out["model.denoising_class_embed.weight"] = torch.cat([label, label.new_zeros(1, label.shape[1])])


def tie_heads(out: dict[str, torch.Tensor], names: Iterable[str]) -> None:
    """Copy the detection heads to the decoder's tied copies (`model.decoder.{name}.*`)."""
    for name in names:
        for key in [k for k in out if k.startswith(f"{name}.")]:
            out[f"model.decoder.{key}"] = out[key]


@dataclass
class ConvertedCheckpoint:
    """A conversion's result: the SL-DETR model and image processor, and what became of every source key."""

    model: Any
    processor: Any
    used: list[str]
    ignored: dict[str, str]
    settings: dict[str, Any]

    def save(self, output_dir: str | Path) -> Path:
        """Write a `from_pretrained` folder (safetensors, config, image processor, code files)."""
        output_dir = Path(output_dir)
        self.model.save_pretrained(output_dir)
        self.processor.save_pretrained(output_dir)
        return output_dir


# ------------------------------------------------------------------------------------ settings from the config


def _get(cfg: Mapping | None, *path: str, default: Any = None) -> Any:
    """`cfg[path[0]][path[1]]...`, or `default` where a level is missing."""
    for key in path:
        if not isinstance(cfg, Mapping) or key not in cfg:
            return default
        cfg = cfg[key]
    return cfg


def _num_heads_points(reader: StateDictReader, prefix: str, levels: int, heads: int) -> int:
    """Sampling points per head and level of an MSDA module, from its `attention_weights` rows."""
    rows = reader.peek(f"{prefix}.attention_weights.weight").shape[0]
    if rows % (heads * levels):
        raise CheckpointError(f"{prefix}: {rows} attention weights do not split into {heads} heads x {levels} levels")
    return rows // (heads * levels)


def backbone_settings(reader: StateDictReader, model_cfg: Mapping | None) -> dict[str, Any]:
    """Check the backbone / neck against what SL-DETR supports (an mmdet ResNet of bottlenecks, `style='pytorch'`,
    C3-C5 into a ChannelMapper with GroupNorm) and return its transformers `ResNetConfig` arguments (widths and
    depths read from the tensors, so reduced ResNets convert too) and its training policy."""
    backbone = _get(model_cfg, "backbone") or {}
    kind = short_type(backbone)
    if kind is not None and kind != "ResNet":
        hint = " (Swin backbones are not supported)" if "swin" in kind.lower() else ""
        raise CheckpointError(f"backbone {backbone.get('type')!r} is not supported{hint}: SL-DETR converts "
                              "mmdet ResNet backbones (ResNet-50 / 101 layouts)")
    if not reader.has("backbone.conv1.weight") or not reader.has("backbone.layer1.0.conv3.weight"):
        sample = next((k for k in reader.state if k.startswith("backbone.")), "none")
        raise CheckpointError(f"the backbone is not an mmdet bottleneck ResNet (first backbone key: {sample}); Swin "
                              "and other backbones are not supported")
    for name, expected in (("style", "pytorch"), ("deep_stem", False), ("avg_down", False), ("dcn", None),
                           ("plugins", None), ("num_stages", 4), ("out_indices", (1, 2, 3)),
                           ("strides", (1, 2, 2, 2)), ("dilations", (1, 1, 1, 1))):
        value = backbone.get(name, expected)
        if (tuple(value) if isinstance(value, list) else value) != expected:
            raise CheckpointError(f"backbone {name}={value!r} is not supported (SL-DETR's ResNet: {expected!r})")
    depths = [reader.count(f"backbone.layer{stage}.") for stage in range(1, 5)]
    widths = [reader.peek(f"backbone.layer{stage}.0.conv3.weight").shape[0] for stage in range(1, 5)]
    for stage, width in enumerate(widths, 1):
        inner = reader.peek(f"backbone.layer{stage}.0.conv1.weight").shape[0]
        if width != 4 * inner:
            raise CheckpointError(f"backbone.layer{stage}: bottleneck {inner} -> {width} channels; SL-DETR's ResNet "
                                  "expands by 4")
    neck = _get(model_cfg, "neck") or {}
    if short_type(neck) not in (None, "ChannelMapper"):
        raise CheckpointError(f"neck {neck.get('type')!r} is not supported (mmdet ChannelMapper)")
    if neck and (neck.get("kernel_size", 3) != 1 or neck.get("act_cfg", "relu") is not None):
        raise CheckpointError("the neck must be ChannelMapper(kernel_size=1, act_cfg=None) as in DINO's configs")
    if neck and (_get(neck, "norm_cfg", "type") != "GN" or _get(neck, "norm_cfg", "num_groups") != 32):
        raise CheckpointError(f"the neck's norm must be GroupNorm(32) (SL-DETR's input projections), got "
                              f"{neck.get('norm_cfg')!r}")
    channels = [reader.peek(f"neck.convs.{i}.conv.weight").shape[1] for i in range(reader.count("neck.convs."))]
    if channels != widths[1:]:
        raise CheckpointError(f"the neck takes backbone channels {channels}; SL-DETR feeds ResNet C3-C5 "
                              f"({widths[1:]}, out_indices (1, 2, 3))")
    norm_eval = backbone.get("norm_eval", True) and not _get(backbone, "norm_cfg", "requires_grad", default=False)
    return {"embedding_size": reader.peek("backbone.conv1.weight").shape[0], "hidden_sizes": widths,
            "depths": depths, "frozen_stages": int(backbone.get("frozen_stages", 1)), "frozen_norms": bool(norm_eval)}


def transformer_settings(reader: StateDictReader, model_cfg: Mapping | None) -> dict[str, Any]:
    """`SlDetrConfig` fields of the encoder / decoder / query parts: sizes from the tensors, head counts,
    dropout and the sine encoding from the config (mmcv's defaults where it is silent)."""
    d_model = reader.peek("level_embed").shape[1]
    levels = reader.peek("level_embed").shape[0]
    encoder_layers, decoder_layers = reader.count("encoder.layers."), reader.count("decoder.layers.")
    for part, found in (("encoder", encoder_layers), ("decoder", decoder_layers)):
        declared = _get(model_cfg, part, "num_layers")
        if declared is not None and declared != found:
            raise CheckpointError(f"config {part}.num_layers={declared} but the checkpoint has {found} layers")
    if not encoder_layers or not decoder_layers:
        raise CheckpointError("the checkpoint has no encoder / decoder layers (`encoder.layers.0.*`)")
    if _get(model_cfg, "decoder", "post_norm_cfg") is not None:
        raise CheckpointError("decoder.post_norm_cfg must be None (DINO's decoder)")
    for flag in ("as_two_stage", "with_box_refine"):
        if _get(model_cfg, flag, default=True) is not True:
            raise CheckpointError(f"{flag}=False is not a DINO / RHINO model")
    enc_attn = _get(model_cfg, "encoder", "layer_cfg", "self_attn_cfg") or {}
    dec_self = _get(model_cfg, "decoder", "layer_cfg", "self_attn_cfg") or {}
    dec_cross = _get(model_cfg, "decoder", "layer_cfg", "cross_attn_cfg") or {}
    encoder_heads = int(enc_attn.get("num_heads", 8))
    decoder_heads = int(dec_cross.get("num_heads", 8))
    if int(dec_self.get("num_heads", 8)) != decoder_heads:
        raise CheckpointError("the decoder's self- and cross-attention head counts differ; SL-DETR uses one "
                              "(decoder_attention_heads)")
    encoder_points = _num_heads_points(reader, "encoder.layers.0.self_attn", levels, encoder_heads)
    decoder_points = _num_heads_points(reader, "decoder.layers.0.cross_attn", levels, decoder_heads)
    for name, cfg, found in (("encoder", enc_attn, encoder_points), ("decoder", dec_cross, decoder_points)):
        if cfg.get("num_points", found) != found:
            raise CheckpointError(f"{name} num_points={cfg['num_points']} disagrees with the checkpoint ({found})")
    position = _get(model_cfg, "positional_encoding") or {}
    if position.get("normalize", True) is not True:
        raise CheckpointError("positional_encoding.normalize=False is not supported")
    if position.get("num_feats", d_model // 2) * 2 != d_model:
        raise CheckpointError(f"positional_encoding.num_feats={position['num_feats']} must be d_model / 2")
    dropout = float(enc_attn.get("dropout", 0.0))
    ffn_drop = float(_get(model_cfg, "encoder", "layer_cfg", "ffn_cfg", "ffn_drop", default=0.0))
    return dict(
        d_model=d_model, num_feature_levels=levels, encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=encoder_heads, decoder_attention_heads=decoder_heads,
        encoder_n_points=encoder_points, decoder_n_points=decoder_points,
        encoder_ffn_dim=reader.peek("encoder.layers.0.ffn.layers.0.0.weight").shape[0],
        decoder_ffn_dim=reader.peek("decoder.layers.0.ffn.layers.0.0.weight").shape[0],
        dropout=dropout, attention_dropout=0.0, activation_dropout=ffn_drop,
        num_queries=reader.peek("query_embedding.weight").shape[0],
        two_stage_num_proposals=reader.peek("query_embedding.weight").shape[0],
        two_stage=True, with_box_refine=True, auxiliary_loss=True,
        position_embedding_temperature=position.get("temperature", 10000),
        position_embedding_offset=position.get("offset", 0.0),
    )


def training_settings(model_cfg: Mapping | None) -> dict[str, Any]:
    """Denoising, matcher and loss weights of the source config, for fine-tuning (inference ignores them)."""
    out: dict[str, Any] = {}
    dn = _get(model_cfg, "dn_cfg") or {}
    if "label_noise_scale" in dn:
        out["label_noise_ratio"] = float(dn["label_noise_scale"])
    if "box_noise_scale" in dn:
        out["box_noise_scale"] = float(dn["box_noise_scale"])
    group = dn.get("group_cfg") or {}
    if group.get("dynamic", True) and group.get("num_dn_queries"):
        out["num_denoising"] = int(group["num_dn_queries"])
        out["max_denoising_groups"] = int(group.get("max_num_groups") or group["num_dn_queries"])
    head = _get(model_cfg, "bbox_head") or {}
    loss_cls = head.get("loss_cls") or {}
    for src, dst in (("loss_weight", "cls_loss_coefficient"), ("alpha", "focal_alpha"), ("gamma", "focal_gamma")):
        if src in loss_cls:
            out[dst] = float(loss_cls[src])
    if "loss_weight" in (head.get("loss_bbox") or {}):
        out["bbox_loss_coefficient"] = float(head["loss_bbox"]["loss_weight"])
    if "loss_weight" in (head.get("loss_iou") or {}):
        out["sync_loss_coefficient"] = float(head["loss_iou"]["loss_weight"])
    if "tau" in (head.get("loss_iou") or {}):
        out["kld_tau"] = float(head["loss_iou"]["tau"])
    for cost in _get(model_cfg, "train_cfg", "assigner", "match_costs") or []:
        kind, weight = short_type(cost), float(cost.get("weight", 1.0))
        if kind == "FocalLossCost":
            out["class_cost"] = weight
        elif kind in ("BBoxL1Cost", "RBoxL1Cost"):
            out["bbox_cost"], out["matcher_box_cost"] = weight, "l1"
        elif kind == "HausdorffCost":
            out["bbox_cost"], out["matcher_box_cost"] = weight, "hausdorff"
        elif kind in ("GDCost", "IoUCost", "RotatedIoUCost"):
            out["geometric_cost"] = weight
    max_per_img = _get(model_cfg, "test_cfg", "max_per_img")
    if max_per_img:
        out["max_detections"] = int(max_per_img)
    return out


def processor_settings(cfg: Mapping | None) -> dict[str, Any]:
    """`SlDetrImageProcessor` arguments of the test pipeline: mean / std on 0-255 (no 1/255 rescale), the
    resize, and whether the model was fed BGR (then its stem is flipped to take RGB, see `map_resnet`)."""
    pre = _get(cfg, "model", "data_preprocessor") or {}
    mean = [float(v) for v in pre.get("mean", (123.675, 116.28, 103.53))]
    std = [float(v) for v in pre.get("std", (58.395, 57.12, 57.375))]
    bgr_input = not pre.get("bgr_to_rgb", True) and not pre.get("rgb_to_bgr", False)
    if bgr_input:  # the model saw BGR: the converted one takes RGB through a flipped stem
        mean, std = mean[::-1], std[::-1]
    if pre.get("pad_size_divisor", 1) not in (1, None):
        logger.warning("the source pads images to a multiple of %s; SL-DETR's processor pads to the batch's "
                       "largest image only", pre["pad_size_divisor"])
    scale = (1024, 1024)
    pipelines = [_get(cfg, "test_dataloader", "dataset", "pipeline"), _get(cfg, "test_pipeline"),
                 _get(cfg, "val_dataloader", "dataset", "pipeline")]
    for pipeline in pipelines:
        resize = next((t for t in pipeline or [] if short_type(t) == "Resize"), None)
        if resize is not None:
            if not resize.get("keep_ratio", False):
                raise CheckpointError("the test pipeline resizes without keeping the aspect ratio; SL-DETR's "
                                      "processor keeps it")
            scale = tuple(resize["scale"])
            break
    return {"image_mean": mean, "image_std": std, "do_rescale": False, "bgr_input": bgr_input,
            "size": {"shortest_edge": int(min(scale)), "longest_edge": int(max(scale))}}


def class_names(meta: Mapping, cfg: Mapping | None, num_classes: int,
                by_count: Mapping[int, tuple[str, ...]]) -> tuple[str, ...]:
    """The class names: the checkpoint's `dataset_meta`, the config's dataset `metainfo`, a known list of this
    length (`by_count`), else `class_{i}`."""
    candidates = [_get(meta, "dataset_meta", "classes"),
                  _get(cfg, "test_dataloader", "dataset", "metainfo", "classes"),
                  _get(cfg, "train_dataloader", "dataset", "metainfo", "classes"),
                  by_count.get(num_classes)]
    for names in candidates:
        if names is not None and len(names) == num_classes:
            return tuple(str(n) for n in names)
    return tuple(f"class_{i}" for i in range(num_classes))


def build_converted(state: dict[str, torch.Tensor], reader: StateDictReader, config_kwargs: dict[str, Any],
                    processor_kwargs: dict[str, Any], settings: dict[str, Any]) -> ConvertedCheckpoint:
    """Instantiate the SL-DETR model from `config_kwargs`, load the mapped `state` (strictly: every model tensor
    must come from the checkpoint), and build the image processor."""
    from ..configuration_sl_detr import SlDetrConfig
    from ..image_processing_sl_detr import SlDetrImageProcessor
    from ..modeling_sl_detr import SlDetrForObjectDetection

    reader.finish()
    config = SlDetrConfig(**config_kwargs)
    model = SlDetrForObjectDetection(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"converter bug: SL-DETR keys without a source {missing[:10]}, mapped keys SL-DETR "
                              f"lacks {unexpected[:10]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{key}: checkpoint shape {tuple(tensor.shape)}, SL-DETR "
                                  f"{tuple(expected[key].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    model.eval()
    processor = SlDetrImageProcessor(box_type=config.box_type, max_detections=config.max_detections,
                                     **{k: v for k, v in processor_kwargs.items() if k != "bgr_input"})
    return ConvertedCheckpoint(model, processor, sorted(reader.used), dict(reader.ignored), settings)


# ------------------------------------------------------------------------------------------------ the pipeline


@dataclass(frozen=True)
class SourceSpec:
    """What differs between the converted families: the model types accepted, the box type, the class lists by
    count, and a hook checking / adding family settings (`(model_cfg) -> SlDetrConfig kwargs`)."""

    name: str
    model_types: tuple[str, ...]
    rotated: bool
    classes_by_count: Mapping[int, tuple[str, ...]]
    family_settings: Any  # Callable[[Mapping | None, StateDictReader], dict]


def map_heads(reader: StateDictReader, out: dict[str, torch.Tensor], num_decoder_layers: int, rotated: bool) -> None:
    """DINO / RHINO heads -> SL-DETR's: `cls_branches.{l}` -> `class_embed.{l}`; the regression branch
    `reg_branches.{l}` (Linear, ReLU, Linear, ReLU, Linear to 4 or 5) -> `bbox_embed.{l}` (rows `cx, cy, w, h` of
    the last layer) and, rotated, the angle row -> `angle_embed.{l}` (a read-out of the same hidden features).
    Index `num_decoder_layers` is the two-stage encoder head: its angle row goes to `model.enc_angle_embed`,
    an MLP of its own in SL-DETR, which gets copies of the branch's two hidden layers (the same computation)."""
    box_dim = 5 if rotated else 4
    for layer in range(num_decoder_layers + 1):
        src = f"bbox_head.reg_branches.{layer}"
        _copy(reader, out, f"bbox_head.cls_branches.{layer}", f"class_embed.{layer}")
        last_weight, last_bias = reader.take(f"{src}.4.weight"), reader.take(f"{src}.4.bias")
        if last_weight.shape[0] != box_dim:
            raise CheckpointError(f"{src}.4 predicts {last_weight.shape[0]} box coordinates, expected {box_dim}")
        hidden = [(reader.take(f"{src}.{i}.weight"), reader.take(f"{src}.{i}.bias")) for i in (0, 2)]
        for i, (weight, bias) in enumerate(hidden):
            out[f"bbox_embed.{layer}.layers.{i}.weight"], out[f"bbox_embed.{layer}.layers.{i}.bias"] = weight, bias
        out[f"bbox_embed.{layer}.layers.2.weight"] = last_weight[:4]
        out[f"bbox_embed.{layer}.layers.2.bias"] = last_bias[:4]
        if not rotated:
            continue
        if layer < num_decoder_layers:
            out[f"angle_embed.{layer}.weight"], out[f"angle_embed.{layer}.bias"] = last_weight[4:], last_bias[4:]
        else:
            for i, (weight, bias) in enumerate(hidden):
                out[f"model.enc_angle_embed.layers.{i}.weight"] = weight.clone()
                out[f"model.enc_angle_embed.layers.{i}.bias"] = bias.clone()
            out["model.enc_angle_embed.layers.2.weight"] = last_weight[4:]
            out["model.enc_angle_embed.layers.2.bias"] = last_bias[4:]
    extra = reader.count("bbox_head.cls_branches.")
    if extra != num_decoder_layers + 1:
        raise CheckpointError(f"bbox_head has {extra} class branches, expected {num_decoder_layers + 1} "
                              "(one per decoder layer and the two-stage encoder)")


def convert_checkpoint(
    spec: SourceSpec,
    checkpoint: str | Path | Mapping[str, torch.Tensor],
    output_dir: str | Path | None = None,
    config: str | Path | Mapping | None = None,
    trust_checkpoint: bool = False,
    id2label: Mapping[int, str] | None = None,
) -> ConvertedCheckpoint:
    """Convert a DINO-family checkpoint (see `spec`) to SL-DETR, and write it to `output_dir` when given.

    Args:
        checkpoint: an mmengine `.pth` (config text in `meta['cfg']`), a torch state dict or a safetensors file,
            or a state dict itself (`{key: tensor}`).
        config: the model's config file (`.py` with `_base_`, or `.json`) or dict; overrides `meta['cfg']`.
        trust_checkpoint: see [`load_checkpoint`].
        id2label: class names (default: the checkpoint's `dataset_meta`, the config, or by class count).
    """
    if isinstance(checkpoint, Mapping):
        state, meta, source = _strip_prefix(checkpoint), {}, "state dict"
    else:
        state, meta = load_checkpoint(checkpoint, trust_checkpoint)
        source = Path(checkpoint).name
    if isinstance(config, Mapping):
        cfg = dict(config)
    elif config is not None:
        cfg = load_config(config)
    else:
        cfg = config_from_meta(meta)
    if cfg is None:
        logger.warning("%s: no config (meta['cfg'] or --config); using %s's defaults with the tensors' sizes",
                       source, spec.name)
    model_cfg = _get(cfg, "model")
    kind = short_type(model_cfg)
    if kind is not None and kind not in spec.model_types:
        raise CheckpointError(f"model type {model_cfg['type']!r} is not a {spec.name} model "
                              f"(expected {' / '.join(spec.model_types)})")
    reader = StateDictReader(state)
    if not reader.has("level_embed") or not reader.has("query_embedding.weight"):
        raise CheckpointError(f"{source} is not a DINO-family state dict (no `level_embed` / "
                              "`query_embedding.weight`)")
    backbone = backbone_settings(reader, model_cfg)
    transformer = transformer_settings(reader, model_cfg)
    processor = processor_settings(cfg)
    processor["clip_boxes"] = not spec.rotated  # mmdetection's DETR heads clip axis-aligned boxes to the image
    out: dict[str, torch.Tensor] = {}
    map_resnet(reader, out, processor["bgr_input"])
    map_channel_mapper(reader, out, transformer["num_feature_levels"])
    out["model.level_embed"] = reader.take("level_embed")
    map_encoder(reader, out, transformer["encoder_layers"])
    map_decoder_layers(reader, out, transformer["decoder_layers"])
    map_query_parts(reader, out, transformer["d_model"])
    map_heads(reader, out, transformer["decoder_layers"], spec.rotated)
    tie_heads(out, ("class_embed", "bbox_embed", "angle_embed"))

    num_classes = reader.peek("bbox_head.cls_branches.0.weight").shape[0]
    declared = _get(model_cfg, "bbox_head", "num_classes")
    if declared is not None and declared != num_classes:
        raise CheckpointError(f"config bbox_head.num_classes={declared}, the checkpoint's heads {num_classes}")
    if id2label is None:
        id2label = dict(enumerate(class_names(meta, cfg, num_classes, spec.classes_by_count)))
    id2label = {int(k): str(v) for k, v in id2label.items()}
    if len(id2label) != num_classes:
        raise CheckpointError(f"id2label has {len(id2label)} names, the checkpoint {num_classes} classes")

    from transformers import ResNetConfig

    from ..configuration_sl_detr import RHINO_SWITCHES

    backbone_config = ResNetConfig(
        embedding_size=backbone["embedding_size"], hidden_sizes=backbone["hidden_sizes"], depths=backbone["depths"],
        layer_type="bottleneck", downsample_in_first_stage=False, downsample_in_bottleneck=False,
        out_features=["stage2", "stage3", "stage4"],
    )
    config_kwargs = dict(
        backbone_config=backbone_config, backbone=None, use_timm_backbone=False, use_pretrained_backbone=False,
        backbone_frozen_stages=backbone["frozen_stages"],
        backbone_norm="eval_batch_norm" if backbone["frozen_norms"] else "batch_norm",
        box_type="rotated" if spec.rotated else "horizontal",
        id2label=id2label, label2id={v: k for k, v in id2label.items()},
        **RHINO_SWITCHES, mixed_query_selection=True, look_forward_twice=True, encoder_loss_on_topk=True,
        rotated_sampling="rhino", query_selection_nms=None, num_hybrid_queries=0,
    )
    config_kwargs.update(transformer)
    config_kwargs.update(training_settings(model_cfg))
    config_kwargs.update(spec.family_settings(model_cfg, reader))
    settings = {"source": spec.name, "model_type": kind, "backbone": backbone, "processor": processor}
    converted = build_converted(out, reader, config_kwargs, processor, settings)
    if output_dir is not None:
        converted.save(output_dir)
    logger.info("converted %s (%d tensors used, %d ignored)", source, len(converted.used),
                len(converted.ignored))
    return converted


def command_line(spec: SourceSpec, argv: list[str] | None = None) -> int:
    """`CHECKPOINT OUTPUT_DIR [--config CONFIG] [--trust-checkpoint]`: convert and write the folder."""
    import argparse

    parser = argparse.ArgumentParser(description=f"Convert a {spec.name} checkpoint (mmengine .pth or a "
                                     "safetensors state dict) to an SL-DETR `from_pretrained` folder.")
    parser.add_argument("checkpoint", help="mmengine .pth checkpoint, torch state dict or .safetensors file")
    parser.add_argument("output_dir", help="folder to write (safetensors, config.json, preprocessor_config.json)")
    parser.add_argument("--config", help="the model's mmengine config (.py, with _base_) or a JSON dump; default: "
                        "the checkpoint's meta['cfg']")
    parser.add_argument("--trust-checkpoint", action="store_true", help="allow pickled Python objects besides "
                        "tensors (mmengine's training state); unpickling may run code named in the file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        converted = convert_checkpoint(spec, args.checkpoint, args.output_dir, args.config, args.trust_checkpoint)
    except CheckpointError as err:
        parser.exit(2, f"error: {err}\n")
    config = converted.model.config
    print(f"wrote {args.output_dir}: {spec.name} -> SL-DETR ({config.box_type}, {config.num_labels} classes, "
          f"{config.num_queries} queries, {len(converted.used)} tensors, {len(converted.ignored)} ignored)")
    return 0
