"""The README's layout section names every module of the package, scripts and benchmarks, and nothing that is gone."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## Layout")
    return text[start:text.index("\n## ", start + 1)]


def _expand(text: str) -> str:
    """``geometry_{a,b}.py`` -> ``geometry_a.py geometry_b.py``."""
    def expand(match: re.Match) -> str:
        head, options, tail = match.group(1), match.group(2).split(","), match.group(3)
        return " ".join(f"{head}{option.strip()}{tail}" for option in options)

    return re.sub(r"([\w/]*)\{([\w, ]+)\}([\w.]*)", expand, text)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[\w.]+", text))


def test_every_module_is_in_the_layout():
    words = _words(_expand(_layout()))
    package = ROOT / "sl_detr_hf"
    missing = []
    for path in sorted(itertools.chain(package.rglob("*.py"), (ROOT / "scripts").glob("*.py"),
                                       (ROOT / "benchmarks").glob("*.py"))):
        if path.name == "__init__.py" or path.name.startswith("_"):
            continue
        top_level = path.parent in (package, ROOT / "scripts", ROOT / "benchmarks")
        name = path.name if top_level else path.stem  # sub-packages list their modules without ".py"
        if name not in words:
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"README.md's layout does not name {missing}"


def test_every_file_the_layout_names_exists():
    names = {p.name for p in ROOT.rglob("*.py") if ".git" not in p.parts}
    listed = {w for w in _words(_expand(_layout())) if w.endswith(".py")}
    assert listed <= names, f"README.md's layout names files that do not exist: {sorted(listed - names)}"
