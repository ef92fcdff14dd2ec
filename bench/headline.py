"""Results at a glance: one line per network and width, read from the committed result tables.

Writes bench/results/headline.md (README copies it between its `results:headline` markers):
for each network and bit width, the float BN teacher, the BN-free integer ptl student at one
scale per layer (mean and half the spread over seeds), its distance to the teacher, the
per-layer baselines measured beside it in the same table, whether every student was bit-exact
on the whole test split, and the table it comes from. Nothing here is measured; every number
is read from a results file whose own page carries the commands.

    .venv/bin/python bench/headline.py

Which table stands for a width is fixed below (SOURCES), not chosen by accuracy: for each
(network, bits) the first source that has rows is used, so a longer-budget table, once it has
the width, replaces the short-budget grid.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OUT = RESULTS / "headline.md"
BASELINES = ("fold", "qat-fold", "oneshot")

# (network, bits): sources in order of preference. ("frontier", LABEL): bench/frontier.py's row
# LABEL; ("bench", FOLDER): a `fiqnn bench` results.json (its ptl per-layer rows and baselines);
# ("resnet20", FILE): bench/resnet20_fashion_mnist.py's single student.
SOURCES = {
    ("alexnet-s", 2): [("frontier", "tq8"), ("bench", "methods-rerun")],
    ("alexnet-s", 3): [("frontier", "tq8"), ("bench", "methods")],
    ("alexnet-s", 4): [("frontier", "base"), ("bench", "methods-rerun")],
    ("alexnet-s", 8): [("frontier", "base"), ("bench", "methods")],
    ("resnet20", 4): [("resnet20", "resnet20-fashion-mnist")],
    ("mobilenetv2-w0.5", 4): [("bench", "mobilenetv2-methods")],
    ("mobilenetv2-w0.5", 8): [("bench", "mobilenetv2-methods")],
}
LINKS = {"frontier": "frontier.md", "resnet20": "{}.md", "bench": "{}/results.md"}
WHAT = {"frontier": "long budget", "bench": "methods grid, short budget", "resnet20": "short budget"}


def _load(name: str):
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _lookup(kind: str, name: str, bits: int) -> dict | None:
    """{teacher, accs, exact, baselines} for this width from one source, or None without rows."""
    if kind == "frontier":
        rows = [r for r in _load("frontier.json") or [] if r["label"] == name and r["bits"] == bits]
        return rows and {"teacher": rows[0]["teacher_acc"], "accs": [r["test_acc"] for r in rows],
                         "exact": all(r["bit_exact"] for r in rows), "baselines": {}}
    if kind == "resnet20":
        r = _load(f"{name}.json")
        return r and bits == 4 and {"teacher": r["teacher_test_acc"], "accs": [r["student_test_acc"]],
                                    "exact": r["bit_exact"], "baselines": {}}
    res = _load(f"{name}/results.json")
    if not res:
        return None
    mine = [r for r in res["rows"] if r["bits"] == bits and r["scale"] == "per-layer"]
    ptl = [r for r in mine if r["method"] == "ptl"]
    if not ptl:
        return None
    base = {m: [r["test_acc"] for r in mine if r["method"] == m] for m in BASELINES}
    return {"teacher": res["teacher"]["test_acc"], "accs": [r["test_acc"] for r in ptl],
            "exact": all(r["bit_exact"] for r in mine), "baselines": {m: a for m, a in base.items() if a}}


def _mean(accs: list[float]) -> str:
    m = sum(accs) / len(accs)
    if len(accs) == 1:
        return f"{m:.2f} (1 seed)"
    return f"{m:.2f} ± {(max(accs) - min(accs)) / 2:.2f} ({len(accs)} seeds)"


def render() -> str:
    """headline.md's text, from the results files as they are now."""
    lines = ["Fashion-MNIST, the 10,000 test images; integer accuracy from the numpy executor; one "
             "(mult, shift) per layer. `a ± b`: mean and half the spread over seeds. Baselines: the per-layer rows "
             "measured in the same table (fold: BN folded into the calibrated teacher QNN, nothing trained; "
             "qat-fold: QAT with BN for ptl's whole budget, then folded; oneshot: every layer converted at once, "
             "then trained). Each table carries its commands.", "",
             "| network | W/A | float BN teacher | ptl student | to teacher | baselines (same table) | bit-exact | "
             "table |", "|---|---|---|---|---|---|---|---|"]
    for (net, bits), sources in SOURCES.items():
        for kind, name in sources:
            got = _lookup(kind, name, bits)
            if got:
                break
        else:
            continue
        gap = sum(got["accs"]) / len(got["accs"]) - got["teacher"]
        base = ", ".join(f"{m} {sum(a) / len(a):.2f}" for m, a in got["baselines"].items()) or "-"
        link = LINKS[kind].format(name)
        label = f"{name} row" if kind == "frontier" else WHAT[kind]
        lines.append(f"| {net} | W{bits}A{bits} | {got['teacher']:.2f} | {_mean(got['accs'])} | {gap:+.2f} | "
                     f"{base} | {'yes' if got['exact'] else 'NO'} | [{link}](bench/results/{link}) ({label}) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    text = render()
    OUT.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
