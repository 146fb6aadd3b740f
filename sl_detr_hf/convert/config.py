"""Reading an mmengine config without running it: the mm-config interpreter (Python's `ast`: literals, `dict(...)`
calls of builtins, names assigned earlier, arithmetic, subscripts) and the `_base_` chain (mmengine's merge,
`_delete_=True`), bounded so that a hostile text is refused at once naming its file and line.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointError

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_BASE_DEPTH",
    "MAX_BASE_FILES",
    "MAX_CONFIG_CHARS",
    "MAX_CONFIG_WORK",
    "MAX_INT_BITS",
    "MAX_NESTING",
    "MAX_VALUE_SIZE",
    "ConfigError",
    "config_from_meta",
    "lookup",
    "load_config",
    "parse_config_text",
    "short_type",
]

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


def lookup(cfg: Mapping | None, *path: str, default: Any = None) -> Any:
    """`cfg[path[0]][path[1]]...`, or `default` where a level is missing."""
    for key in path:
        if not isinstance(cfg, Mapping) or key not in cfg:
            return default
        cfg = cfg[key]
    return cfg
