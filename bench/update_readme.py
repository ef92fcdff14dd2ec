"""Copy the committed benchmark tables (bench/results/*.md) into README.md.

Each table goes between `<!-- results:NAME -->` and `<!-- /results:NAME -->` markers,
so README's numbers are generated from the results files, never typed by hand.

    .venv/bin/python bench/update_readme.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    readme = (ROOT / "README.md").read_text()
    for md in sorted((ROOT / "bench" / "results").glob("*.md")):
        name = md.stem
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
        table = md.read_text()
        readme = pattern.sub(lambda m, table=table: m.group(1) + table + m.group(2), readme)
    (ROOT / "README.md").write_text(readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
