"""Accuracy of ptl vs fold at W8A8, W4A4, W2A2: Fashion-MNIST, alexnet-s, integer executor.

Usage (from the repository root, after `make test` has built .venv):

    .venv/bin/python bench/ptl_fashion_mnist.py [--teacher runs/teacher] [--runs runs/bench]

Each row is one `fiqnn distill` command, run as a subprocess with the budget below;
its run directory is kept under --runs, and a row already in the results is skipped,
so an interrupted benchmark continues where it stopped. Results are rewritten after
every row: bench/results/ptl-fashion-mnist.json and .md. Accuracy is measured by the
integer (numpy) executor on the 10,000 real test images; `bit_exact` says whether the
eval-mode torch student gave identical int32 logits on every one of them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "ptl-fashion-mnist"
# One scheduler epoch = 200 batches of 128 (about half a pass over the 54,000 training images).
BUDGET = ["--steps-per-epoch", "200", "--teacher-epochs", "3", "--max-epochs-per-stage", "2", "--patience", "1",
          "--finetune-epochs", "3"]
# Stage learning rate per bit width. W2A2 ran first at the default 1e-3; at 4 and 8 bits
# 1e-3 pulled the well-trained teacher QNN down (W4A4 stage 1: val 93.85% -> 91.78%; an A/B
# of stage 2 from the same state gave 92.07% at 1e-4 vs 91.93% at 1e-3), so they use 1e-4.
LR = {2: "1e-3", 4: "1e-4", 8: "1e-4"}
ROWS = [("ptl", 2), ("fold", 2), ("ptl", 4), ("fold", 4), ("ptl", 8), ("fold", 8)]
KEYS = ["method", "w_bits", "a_bits", "scale", "seed", "teacher_acc", "test_acc", "bit_exact", "epochs", "wall_s",
        "command"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/teacher")
    p.add_argument("--runs", default="runs/bench")
    args = p.parse_args()
    rows = json.loads(RESULTS.with_suffix(".json").read_text()) if RESULTS.with_suffix(".json").exists() else []
    done = {(r["method"], r["w_bits"]) for r in rows}
    for method, bits in ROWS:
        if (method, bits) in done:
            continue
        out = f"{args.runs}/{method}-w{bits}a{bits}"
        cmd = ["fiqnn", "distill", "--teacher", args.teacher, "--wbits", str(bits), "--abits", str(bits),
               "--method", method, "--out", out, *BUDGET, "--lr", LR[bits]]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        res = subprocess.run([str(ROOT / ".venv/bin/fiqnn"), *cmd[1:], "--json", "--no-progress", "--resume"],
                             cwd=ROOT, capture_output=True, text=True)
        if res.returncode:
            print(res.stderr[-2000:], file=sys.stderr)
            return res.returncode
        m = json.loads(res.stdout)
        row = {k: m[k] for k in KEYS if k in m}
        row.update(command=" ".join(cmd), wall_s=round(time.perf_counter() - t0, 1),
                   test_acc=round(m["test_acc"], 2), teacher_acc=round(m["teacher_acc"], 2),
                   teacher_qnn_val_acc=round(m["history"][0]["val_acc"], 2))
        rows.append(row)
        write(rows)
        print(json.dumps(row), flush=True)
    return 0


def write(rows: list[dict]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| method | W/A | scale | seed | teacher (float) | teacher QNN (val) | integer test acc | delta | "
             "bit-exact (10,000 images) | epochs | wall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["w_bits"], r["method"] != "ptl")):
        lines.append(f"| {r['method']} | W{r['w_bits']}A{r['a_bits']} | {r['scale']} | {r['seed']} | "
                     f"{r['teacher_acc']:.2f}% | {r['teacher_qnn_val_acc']:.2f}% | {r['test_acc']:.2f}% | "
                     f"{r['test_acc'] - r['teacher_acc']:+.2f} | {'yes' if r['bit_exact'] else 'NO'} | {r['epochs']} | "
                     f"{r['wall_s'] / 60:.1f} min |")
    lines += ["", "Teacher: the float BN alexnet-s of README's teacher table (93.32%). Teacher QNN: the BN teacher "
              "with LSQ W/A-bit quantizers after 3 QAT epochs (its validation accuracy; the test split is used "
              "only for the student). First and last layers keep 8-bit weights. Stage learning rate: 1e-3 at W2A2 "
              "(the default when it ran), 1e-4 at W4A4 and W8A8 (1e-3 pulled the well-trained W4A4 teacher QNN "
              "down from 93.85% to 91.78% validation in stage 1; 1e-4 kept 93.75%); the default is now 1e-4. "
              "`bit-exact`: the eval-mode torch student and the numpy integer executor gave identical int32 logits "
              "on every one of the 10,000 test images. Wall times are on 2 CPU cores, partly shared with other "
              "work.", "", "Commands (one scheduler epoch = 200 batches of 128):", ""]
    lines += [f"    {r['command']}" for r in rows]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
