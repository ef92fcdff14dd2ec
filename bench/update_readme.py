"""Copy the committed benchmark tables (bench/results/*.md) into README.md.

Each table goes between `<!-- results:NAME -->` and `<!-- /results:NAME -->` markers,
so README's numbers are generated from the results files, never typed by hand. NAME is
a file's stem (bench/results/NAME.md) or a folder's name (bench/results/NAME/results.md,
written by `fiqnn bench`: its title line is dropped and its relative image links are
made relative to the repository root). bench/results/headline.md, the at-a-glance table,
is first regenerated from the other tables (bench/headline.py).

    .venv/bin/python bench/update_readme.py [--check]

--check writes nothing and exits 1 if README.md or headline.md is not what the results
files give (the test suite runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import headline  # noqa: E402


def render(readme: str, tables: dict[str, str]) -> str:
    """``readme`` with every marked section replaced by its table from ``tables`` (name -> text)."""
    for name, table in tables.items():
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
        readme = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), readme)
    return readme


def tables(head: str) -> dict[str, str]:
    """Every results table by marker name; ``head`` stands for headline.md."""
    results = ROOT / "bench" / "results"
    out = {md.stem: md.read_text() for md in sorted(results.glob("*.md"))}
    out["headline"] = head
    for md in sorted(results.glob("*/results.md")):
        folder = md.parent.relative_to(ROOT).as_posix()
        table = re.sub(r"\A# .*\n\n", "", md.read_text())
        out[md.parent.name] = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m, f=folder: f"]({f}/{m.group(1)})", table)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything is out of date")
    args = p.parse_args()
    head = headline.render()
    path = ROOT / "README.md"
    readme = path.read_text()
    new = render(readme, tables(head))
    if args.check:
        stale = [str(f.relative_to(ROOT)) for f, ok in ((headline.OUT, headline.OUT.exists()
                                                         and headline.OUT.read_text() == head), (path, new == readme))
                 if not ok]
        if stale:
            print(f"out of date: {', '.join(stale)}; run .venv/bin/python bench/update_readme.py", file=sys.stderr)
            return 1
        return 0
    headline.OUT.write_text(head)
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
