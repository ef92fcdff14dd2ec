"""The project's documentation links only to files inside the repository.

Every relative markdown link in README.md and docs/*.md must resolve to a file or a
directory of the repository, and nothing (link or text, in the docs or in src/) may
point into ``../shared/``, which lies outside the repository and is not in a clone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")
EXTERNAL = ("http://", "https://", "mailto:")
FORBIDDEN = "../shared/"
SKIP_DIRS = {"__pycache__"}  # build output, not source


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link in ``path``, fenced code blocks excluded."""
    out, fenced = [], False
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out += [(n, m.group(1)) for m in LINK.finditer(line)]
    return out


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``path`` that do not resolve to a path inside ``root`` (the repository)."""
    bad, root = [], root.resolve()
    for n, target in links(path):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        target = target.split("#", 1)[0]
        resolved = (path.parent / target).resolve()
        inside = resolved == root or root in resolved.parents
        if not inside or not resolved.exists():
            why = "outside the repository" if not inside else "does not exist"
            bad.append(f"{path.relative_to(root)}:{n}: {target} ({why})")
    return bad


def text_files() -> list[Path]:
    """README.md, docs/*.md and the text files under src/ (build output such as *.egg-info skipped)."""
    files = list(DOCS)
    for p in sorted((ROOT / "src").rglob("*")):
        rel = p.relative_to(ROOT / "src").parts
        if p.is_file() and not any(part in SKIP_DIRS or part.endswith(".egg-info") for part in rel):
            files.append(p)
    return files


def test_docs_exist():
    assert (ROOT / "README.md").is_file()
    assert (ROOT / "docs" / "method.md").is_file()


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_repository(path):
    assert broken_links(path) == []


def test_link_checker(tmp_path):
    md = tmp_path / "x.md"
    md.write_text('[a](docs/arithmetic.md#e4-requantize) ![b](bench/results "t") [c](https://x.org) [d](#top)\n'
                  "```\n[not a link](nowhere.md)\n```\n[e](mailto:a@b.c) [f](../shared/METHOD.md) [g](missing.md)\n",
                  encoding="utf-8")
    assert [t for _, t in links(md)] == ["docs/arithmetic.md#e4-requantize", "bench/results", "https://x.org",
                                         "#top", "mailto:a@b.c", "../shared/METHOD.md", "missing.md"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "arithmetic.md").write_text("", encoding="utf-8")
    (tmp_path / "bench" / "results").mkdir(parents=True)
    bad = broken_links(md, root=tmp_path)
    assert bad == ["x.md:5: ../shared/METHOD.md (outside the repository)", "x.md:5: missing.md (does not exist)"]


def test_nothing_points_into_shared():
    hits = []
    for p in text_files():
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # a binary file
            continue
        hits += [f"{p.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1) if FORBIDDEN in line]
    assert hits == [], f"{FORBIDDEN} is outside the repository; link the project's own docs instead"


def test_readme_results_match_the_results_files():
    """README's generated sections (and headline.md) are what bench/update_readme.py makes of bench/results."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(ROOT / "bench" / "update_readme.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_update_readme_replaces_only_marked_sections():
    import importlib.util

    spec = importlib.util.spec_from_file_location("update_readme", ROOT / "bench" / "update_readme.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = "a\n<!-- results:t -->\nold\n<!-- /results:t -->\nb\n<!-- results:u -->\nkeep\n<!-- /results:u -->\n"
    assert mod.render(text, {"t": "new\n"}) == text.replace("old\n", "new\n")
