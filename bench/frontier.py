"""The accuracy frontier at 2-3 bits: one measured change at a time, each an ablation row.

Usage (from the repository root, after `make test` has built .venv and the 8-epoch teacher
exists: `fiqnn train-teacher --arch alexnet-s --data fashion-mnist --out runs/teacher`):

    .venv/bin/python bench/frontier.py [--teacher runs/teacher] [--runs runs/i18] [--only LABEL ...] [--bits B ...] [--seed S ...]

Each row is one `fiqnn distill` command (alexnet-s, Fashion-MNIST, per-layer scale): the
long PTL budget of bench/ptl_fashion_mnist.py (200-batch scheduler epochs, teacher QAT 3
epochs, at most 2 per stage, patience 1, fine-tune 3, stage and teacher learning rate 1e-3)
plus the row's change. A row's run directory is `--runs`/wBaB-LABEL-sSEED; a finished one
(metrics.json) is read, an unfinished one resumed, so the bench continues where it stopped.
Results are rewritten after every run: bench/results/frontier.json and .md. Accuracy is the
integer (numpy) executor's on the 10,000 real test images; `bit-exact`: the eval-mode torch
student gave identical int32 logits on every one of them (checked by distill itself).
Optimizer steps: the trained epochs of every phase times the batches per epoch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "frontier"
BASE = ["--method", "ptl", "--steps-per-epoch", "200", "--teacher-epochs", "3", "--max-epochs-per-stage", "2",
        "--patience", "1", "--finetune-epochs", "3", "--lr", "1e-3", "--teacher-lr", "1e-3"]
# (label, what changes, bits, seeds, extra flags: later flags override BASE's)
ROWS = [
    ("base", "the long budget (bench/ptl_fashion_mnist.py's W2A2 row, teacher lr 1e-3)", 2, (0, 1), []),
    ("tq8", "teacher QNN trained 8 QAT epochs instead of 3 (a stronger BN teacher QNN)", 2, (0, 1),
     ["--teacher-epochs", "8"]),
    ("tkd", "teacher QAT with KD from the float teacher (--teacher-kd 1)", 2, (0, 1), ["--teacher-kd", "1"]),
    ("tcos", "teacher QAT learning rate cosine to 0 instead of constant (--teacher-lr-schedule cosine)", 2, (0, 1),
     ["--teacher-lr-schedule", "cosine"]),
    ("tq8", "teacher QNN trained 8 QAT epochs instead of 3 (a stronger BN teacher QNN)", 3, (0, 1),
     ["--teacher-epochs", "8"]),
    # 4 and 8 bits: the widths that must stay within 0.3 of the teacher; stage lr 1e-4, the default there
    ("base", "the long budget at stage lr 1e-4 (the default from 4 bits; teacher lr 1e-3)", 4, (0, 1),
     ["--lr", "1e-4"]),
    ("base", "the long budget at stage lr 1e-4 (the default from 4 bits; teacher lr 1e-3)", 8, (0, 1),
     ["--lr", "1e-4"]),
]


def _flags(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with each ``--flag value`` pair of ``extra`` in place of its own, new ones appended."""
    pairs = dict(zip(base[::2], base[1::2]))
    pairs.update(zip(extra[::2], extra[1::2]))
    return [t for kv in pairs.items() for t in kv]


def _out(runs: str, label: str, bits: int, seed: int) -> Path:
    return Path(runs) / f"w{bits}a{bits}-{label}-s{seed}"


def _run(teacher: str, runs: str, label: str, bits: int, seed: int, extra: list[str]) -> dict | None:
    out = _out(runs, label, bits, seed)
    cmd = ["fiqnn", "distill", "--teacher", teacher, "--out", str(out), "--wbits", str(bits), "--abits", str(bits),
           *_flags(BASE, extra), "--seed", str(seed)]
    if not (out / "metrics.json").exists():
        print("$", " ".join(cmd), flush=True)
        res = subprocess.run([str(ROOT / ".venv/bin/fiqnn"), *cmd[1:], "--no-progress",
                              *(["--resume"] if out.exists() else [])], cwd=ROOT)
        if res.returncode:
            return None
    m = json.loads((out / "metrics.json").read_text())
    steps = int(json.loads((out / "config.json").read_text())["config"]["steps_per_epoch"])
    return {"label": label, "bits": bits, "seed": seed, "test_acc": m["test_acc"], "teacher_acc": m["teacher_acc"],
            "teacher_qnn_acc": m["teacher_qnn_acc"], "bit_exact": m["bit_exact"],
            "steps": steps * sum(h["epochs"] for h in m["history"]),
            "wall_s": round(sum(h["wall_s"] for h in m["history"]), 1), "command": " ".join(cmd)}


def _table(rows: list[dict]) -> list[str]:
    lines = ["| change | W/A | seeds | integer test acc | teacher QNN (test) | bit-exact | optimizer steps | wall |",
             "|---|---|---|---|---|---|---|---|"]
    for label, what, bits, _, _ in ROWS:
        got = [r for r in rows if r["label"] == label and r["bits"] == bits]
        if not got:
            continue
        acc = [r["test_acc"] for r in got]
        mean, half = sum(acc) / len(acc), (max(acc) - min(acc)) / 2
        qnn = sum(r["teacher_qnn_acc"] for r in got) / len(got)
        lines.append(f"| {label}: {what} | W{bits}A{bits} | {', '.join(str(r['seed']) for r in got)} | "
                     f"{mean:.2f} ± {half:.2f} ({', '.join(f'{a:.2f}' for a in acc)}) | {qnn:.2f} | "
                     f"{'yes' if all(r['bit_exact'] for r in got) else 'NO'} | "
                     f"{sum(r['steps'] for r in got) // len(got):,} | "
                     f"{sum(r['wall_s'] for r in got) / len(got) / 60:.1f} min |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/teacher")
    p.add_argument("--runs", default="runs/i18")
    p.add_argument("--only", action="append", default=[], metavar="LABEL", help="run only these rows")
    p.add_argument("--bits", type=int, action="append", default=[], help="run only the rows at these widths")
    p.add_argument("--seed", type=int, action="append", default=[], help="run only these seeds")
    args = p.parse_args()
    rows = []
    for label, _, bits, seeds, extra in ROWS:
        for seed in seeds:
            done = (_out(args.runs, label, bits, seed) / "metrics.json").exists()
            wanted = ((not args.only or label in args.only) and (not args.bits or bits in args.bits)
                      and (not args.seed or seed in args.seed))
            if not (wanted or done):
                continue
            row = _run(args.teacher, args.runs, label, bits, seed, extra)
            if row is None:
                return 1
            rows.append(row)
            teacher = rows[0]["teacher_acc"]
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
            md = [f"alexnet-s on Fashion-MNIST, per-layer scale. Float BN teacher: {teacher:.2f}% "
                  "(`fiqnn train-teacher --arch alexnet-s --data fashion-mnist "
                  "--out runs/teacher`). Integer test accuracy of each student on the 10,000 test images (numpy "
                  "executor); `a ± b`: mean and half the spread over seeds. Wall: the training phases, on this "
                  "machine's 2 cores, often shared with other work.", "", *_table(rows), "", "Commands:", ""]
            md += [f"    {r['command']}" for r in rows]
            RESULTS.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(_table(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
