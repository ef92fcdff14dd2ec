"""The methods grid's chain rows after one pipeline (issue 14), beside the numbers from before.

Before: bench/results/methods/results.json (chains through their own code path, commit 0d1dbff
and earlier). After: the same rows re-run with ``fiqnn bench --methods ptl --bits 4,2 --scales
per-layer --seeds 0,1`` on the code where every teacher goes through import + GraphNet, into
bench/results/methods-rerun/. Writes bench/results/methods-one-pipeline.md (README copies it).

    python bench/one_pipeline.py [--check OLD_RUN NEW_RUN]

As run for the committed file (runs/ as the bench and a plain ``fiqnn distill`` left them)::

    PYTHONPATH=<0d1dbff's src> python -m fiqnn distill --teacher runs/teacher \
        --out runs/old-ptl-w2a2-per-layer-s0 --wbits 2 --abits 2 --patience 1 --max-epochs-per-stage 1 \
        --finetune-epochs 1 --lr 0.001 --steps-per-epoch 100
    python bench/one_pipeline.py --check runs/old-ptl-w2a2-per-layer-s0 runs/methods/runs/ptl-w2a2-per-layer-s0

``--check`` also compares two runs' model.npz byte for byte (the same row trained by the old
and the new code on the same teacher).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = ROOT / "bench" / "results" / "methods" / "results.json"
AFTER = ROOT / "bench" / "results" / "methods-rerun" / "results.json"
OUT = ROOT / "bench" / "results" / "methods-one-pipeline.md"


def _rows(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in json.loads(path.read_text())["rows"]}


def _cell(rows: list[dict]) -> str:
    accs = [r["test_acc"] for r in rows]
    if not accs:
        return "-"
    spread = f" ± {(max(accs) - min(accs)) / 2:.2f}" if len(accs) > 1 else ""
    return f"{statistics.mean(accs):.2f}{spread} ({', '.join(f'{a:.2f}' for a in accs)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", nargs=2, metavar=("OLD_RUN", "NEW_RUN"))
    args = ap.parse_args()
    before, after = _rows(BEFORE), _rows(AFTER)
    teacher_before = json.loads(BEFORE.read_text())["teacher"]["test_acc"]
    teacher_after = json.loads(AFTER.read_text())["teacher"]["test_acc"]
    lines = [
             "alexnet-s on Fashion-MNIST, ptl per-layer, the methods grid's budget (100 batches per scheduler "
             "epoch, teacher QAT 1 epoch, at most 1 per stage, patience 1, fine-tune 1; lr 1e-3 at W2A2). "
             "Integer test accuracy (%) on all 10,000 test images (numpy executor; every student bit-exact "
             "with its eval-mode torch student); mean ± half the spread (the seeds' values).", "",
             f"Before: chains through their own code path (bench/results/methods, teacher {teacher_before:.2f}%). "
             "After: every teacher through import + GraphNet (commit dabbbc3; bench/results/methods-rerun, "
             "a retrained teacher: "
             f"{teacher_after:.2f}%; the float teacher's training is not bit-reproducible across runs, "
             "so the two grids start from different teachers).", "",
             "| bits | before | after | bit-exact (after) |", "|---|---|---|---|"]
    for bits in (4, 2):
        keys = [f"ptl-w{bits}a{bits}-per-layer-s{s}" for s in (0, 1)]
        b = [before[k] for k in keys if k in before]
        a = [after[k] for k in keys if k in after]
        exact = all(r["bit_exact"] and r["test_images"] == 10000 for r in a) if a else "-"
        lines.append(f"| W{bits}A{bits} | {_cell(b)} | {_cell(a)} | {exact} |")
    lines += ["", "| row | test acc | epochs | wall | command |", "|---|---|---|---|---|"]
    for k, r in after.items():
        lines.append(f"| {k} | {r['test_acc']:.2f} | {r['epochs']} | {r['wall_s'] / 60:.1f} min | `{r['command']}` |")
    if args.check:
        digests = [hashlib.sha256((Path(d) / "model.npz").read_bytes()).hexdigest() for d in args.check]
        lines += ["", "Same arithmetic, checked on the real network: ptl W2A2 per-layer seed 0 trained on the new "
                  "teacher by the code before the change (commit 0d1dbff) and after it (dabbbc3) gives model files "
                  "that are "
                  f"{'byte-identical' if digests[0] == digests[1] else 'DIFFERENT'} "
                  f"(sha256 {digests[0][:16]} and {digests[1][:16]})."]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
