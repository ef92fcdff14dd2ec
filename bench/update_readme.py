"""Copy the committed benchmark tables (bench/results/*.md) into README.md.

Each table goes between `<!-- results:NAME -->` and `<!-- /results:NAME -->` markers,
so README's numbers are generated from the results files, never typed by hand. NAME is
a file's stem (bench/results/NAME.md) or a folder's name (bench/results/NAME/results.md,
written by `fiqnn bench`: its title line is dropped and its relative image links are
made relative to the repository root).

    .venv/bin/python bench/update_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    readme = (ROOT / "README.md").read_text()
    results = ROOT / "bench" / "results"
    sources = [(md.stem, md) for md in sorted(results.glob("*.md"))]
    sources += [(md.parent.name, md) for md in sorted(results.glob("*/results.md"))]
    for name, md in sources:
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
        table = md.read_text()
        if md.name == "results.md":
            folder = md.parent.relative_to(ROOT).as_posix()
            table = re.sub(r"\A# .*\n\n", "", table)
            table = re.sub(r"\]\((?!https?:|/)([^)]+)\)", lambda m, f=folder: f"]({f}/{m.group(1)})", table)
        readme = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), readme)
    (ROOT / "README.md").write_text(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
