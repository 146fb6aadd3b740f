"""The documentation cites only what the repository holds.

- every `docs/<page>.md#<section>` cited anywhere in the repository names an existing page and section (GitHub's
  heading anchors);
- no file cites the design document that lived outside the repository;
- the docs pages' own links, and the repository paths they name, exist;
- the index lists every page and the README links the index.

The checker itself is tested on a small fake repository, so that a broken citation is known to fail.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED_DIRS = ("sl_detr_hf", "tests", "benchmarks", "scripts", "notebooks", "docs")
SCANNED_FILES = ("README.md", "BENCHMARKS.md", "pyproject.toml", "setup.cfg")
TEXT_SUFFIXES = frozenset({".py", ".md", ".ipynb", ".cfg", ".toml", ".txt", ".yaml", ".yml", ".rst"})
SKIPPED_DIRS = frozenset({"__pycache__", ".ipynb_checkpoints", ".pytest_cache"})

# the outside design document, spelled in two parts so that this file does not cite it
_OUTSIDE_DOC = "DESIGN" + ".md"
OUTSIDE_DOC_RE = re.compile(re.escape(_OUTSIDE_DOC))
CITATION_RE = re.compile(r"(?<![\w./-])docs/([\w.-]+\.md)(?:#([\w-]+))?")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH_RE = re.compile(r"`((?:{})/[\w./-]*)`".format("|".join(SCANNED_DIRS)))  # a repository path in backticks


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def page_anchors(text: str) -> set[str]:
    """Anchors of a Markdown page's headings (outside fenced code blocks); repeated headings get `-1`, `-2`, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING_RE.match(line)
        if match:
            anchor = github_anchor(match.group(2))
            count = seen.get(anchor, 0)
            seen[anchor] = count + 1
            anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def scanned_files(root: Path) -> list[Path]:
    """The repository's text files that may cite documentation."""
    files = [root / name for name in SCANNED_FILES if (root / name).is_file()]
    for folder in SCANNED_DIRS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIPPED_DIRS & set(path.parts):
                files.append(path)
    return files


def _lines(path: Path):
    """`(line number, line)` of a text file."""
    yield from enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)


def _check_target(root: Path, path: Path, shown: str, anchor: str | None, where: str,
                  anchors: dict[Path, set[str]]) -> str | None:
    """The problem with a cited file `path` (named `shown` in the message) and `anchor`, or `None`."""
    if not path.resolve().is_relative_to(root.resolve()) or not path.exists():
        return f"{where}: {shown} does not exist in the repository"
    if anchor and path.suffix == ".md":
        if path not in anchors:
            anchors[path] = page_anchors(path.read_text(encoding="utf-8"))
        if anchor not in anchors[path]:
            return f"{where}: {path.relative_to(root)} has no section #{anchor}"
    return None


def citation_problems(root: Path) -> list[str]:
    """Every broken `docs/...` citation and every mention of the outside design document, as `file:line: why`."""
    problems, anchors = [], {}
    for path in scanned_files(root):
        relative = path.relative_to(root)
        for number, line in _lines(path):
            where = f"{relative}:{number}"
            if OUTSIDE_DOC_RE.search(line):
                problems.append(f"{where}: cites {_OUTSIDE_DOC}, which the repository does not ship; cite docs/")
            for match in CITATION_RE.finditer(line):
                page = f"docs/{match.group(1)}"
                problem = _check_target(root, root / page, page, match.group(2), where, anchors)
                if problem:
                    problems.append(problem)
    return problems


def docs_link_problems(root: Path) -> list[str]:
    """Broken Markdown links (relative paths and `#anchors`) and missing backticked repository paths in `docs/`,
    and broken relative links in the top-level Markdown files."""
    problems, anchors = [], {}
    pages = sorted((root / "docs").glob("*.md"))
    for path in [*pages, *(root / name for name in ("README.md", "BENCHMARKS.md"))]:
        if not path.is_file():
            continue
        relative = path.relative_to(root)
        for number, line in _lines(path):
            where = f"{relative}:{number}"
            for match in LINK_RE.finditer(line):
                url = match.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", url):  # http:, https:, mailto:
                    continue
                target, _, anchor = url.partition("#")
                problem = _check_target(root, path.parent / target if target else path, target or path.name,
                                        anchor or None, where, anchors)
                if problem:
                    problems.append(problem)
            if path.parent.name != "docs":
                continue
            for match in CODE_PATH_RE.finditer(line):
                if not (root / match.group(1).rstrip("/")).exists():
                    problems.append(f"{where}: names {match.group(1)}, which does not exist in the repository")
    return problems


# ------------------------------------------------------------------------------------------------------ the checker


def test_github_anchors_of_hand_picked_headings():
    assert github_anchor("Pixel rotated boxes (le90)") == "pixel-rotated-boxes-le90"
    assert github_anchor("Convergence: the demo with the RHINO / DINO parts (issue 9)") == (
        "convergence-the-demo-with-the-rhino--dino-parts-issue-9")
    assert github_anchor("`box_type` and `rbox_to_poly`") == "box_type-and-rbox_to_poly"
    assert github_anchor("Task1 submission files") == "task1-submission-files"
    text = "# Title\n\n```\n# not a heading\n```\n\n## Same\n\n## Same\n"
    assert page_anchors(text) == {"title", "same", "same-1"}


def _fake_repository(root: Path) -> None:
    (root / "docs").mkdir()
    (root / "sl_detr_hf").mkdir()
    (root / "docs" / "boxes.md").write_text("# Boxes\n\n## Normalized boxes\n\nSee [losses](losses.md#kld).\n"
                                            "Code: `sl_detr_hf/model.py`, `sl_detr_hf/gone.py`.\n")
    docs = "docs" + "/"  # not a citation of this repository's docs
    (root / "sl_detr_hf" / "model.py").write_text(
        f'"""Boxes ({docs}boxes.md#normalized-boxes), angles ({docs}boxes.md#angles)."""\n'
        f"# see {_OUTSIDE_DOC} section 2\n"
        f"# the losses: {docs}losses.md\n")


def test_the_checker_reports_each_broken_reference(tmp_path):
    _fake_repository(tmp_path)
    assert citation_problems(tmp_path) == [
        "sl_detr_hf/model.py:1: docs/boxes.md has no section #angles",
        f"sl_detr_hf/model.py:2: cites {_OUTSIDE_DOC}, which the repository does not ship; cite docs/",
        "sl_detr_hf/model.py:3: docs/losses.md does not exist in the repository",
    ]
    assert docs_link_problems(tmp_path) == [
        "docs/boxes.md:5: losses.md does not exist in the repository",
        "docs/boxes.md:6: names sl_detr_hf/gone.py, which does not exist in the repository",
    ]
    (tmp_path / "docs" / "losses.md").write_text("# Losses\n\n## KLD\n")
    (tmp_path / "sl_detr_hf" / "gone.py").write_text("")
    assert docs_link_problems(tmp_path) == []
    assert citation_problems(tmp_path) == [
        "sl_detr_hf/model.py:1: docs/boxes.md has no section #angles",
        f"sl_detr_hf/model.py:2: cites {_OUTSIDE_DOC}, which the repository does not ship; cite docs/",
    ]


# ------------------------------------------------------------------------------------------------ the repository


def test_every_cited_docs_section_exists_and_nothing_cites_an_outside_document():
    problems = citation_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_docs_links_and_paths_exist():
    problems = docs_link_problems(ROOT)
    assert not problems, "\n".join(problems)


def test_the_code_cites_every_page():
    this_file = Path(__file__).resolve()
    cited = {match.group(1) for path in scanned_files(ROOT) if path.suffix == ".py" and path != this_file
             for _, line in _lines(path) for match in CITATION_RE.finditer(line)}
    pages = {"architecture.md", "boxes.md", "losses.md", "rhino_numerics.md", "dota.md", "training.md"}
    assert pages <= cited, f"pages no code file cites: {sorted(pages - cited)}"


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "README.md"))
def test_the_index_lists_every_page(page):
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    assert f"]({page})" in index, f"docs/README.md does not link {page}"


def test_the_readme_links_the_docs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "](docs/README.md)" in readme
