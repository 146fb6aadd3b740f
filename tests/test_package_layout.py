"""The package's layout rules (issue 26): library modules never import the command-line layer (`commands/`,
`cli.py`: imports run one way, commands -> library), and no package file is over 700 lines."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sl_detr_hf"
COMMAND_LAYER = ("sl_detr_hf.commands", "sl_detr_hf.cli")
MAX_LINES = 700

# (module, imported name) pairs allowed to run up a floor, with the reason
UPWARD_ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved; `from . import x` gives `pkg.x`)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def _library_modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if "commands" not in p.relative_to(PACKAGE).parts and p.name != "cli.py"]


def test_the_import_resolver_sees_relative_and_lazy_imports():
    commands = PACKAGE / "commands" / "convert.py"
    assert "sl_detr_hf.convert.common" in _imported(commands)  # `from ..convert.common import ...` inside main
    assert "sl_detr_hf.hub" in _imported(PACKAGE / "commands" / "push.py")


def test_no_library_module_imports_the_command_line_layer():
    found = []
    for path in _library_modules():
        module = _module_name(path)
        for name in _imported(path):
            upward = next((layer for layer in COMMAND_LAYER if name == layer or name.startswith(f"{layer}.")), None)
            if upward and (module, upward) not in UPWARD_ALLOWED:
                found.append(f"{module} imports {name}")
    assert not found, found


def test_no_package_file_is_over_700_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long
