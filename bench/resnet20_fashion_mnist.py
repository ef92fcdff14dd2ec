"""resnet20 on Fashion-MNIST: the float BN teacher and its W4A4 BN-free integer student (PTL over blocks).

    OMP_NUM_THREADS=1 .venv/bin/python bench/resnet20_fashion_mnist.py

Runs (or resumes, or reuses when finished) the two commands below, then writes
bench/results/resnet20-fashion-mnist.json and .md with the test accuracies (the student's
from the integer executor on all 10,000 test images), bit-exactness, epochs and wall times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "resnet20-fashion-mnist"
TEACHER = ["fiqnn", "train-teacher", "--arch", "resnet20", "--data", "fashion-mnist", "--out", "runs/resnet20-teacher"]
STUDENT = ["fiqnn", "distill", "--teacher", "runs/resnet20-teacher", "--wbits", "4", "--abits", "4", "--method", "ptl",
           "--steps-per-epoch", "100", "--teacher-epochs", "1", "--max-epochs-per-stage", "1", "--patience", "1",
           "--finetune-epochs", "1", "--out", "runs/resnet20-ptl-w4a4"]


def ensure(cmd: list[str]) -> dict:
    run = ROOT / cmd[cmd.index("--out") + 1]
    metrics = run / "metrics.json"
    if not (metrics.exists() and json.loads(metrics.read_text()).get("status") == "done"):
        extra = ["--resume"] if (run / "config.json").exists() else []
        subprocess.run([str(ROOT / ".venv/bin/fiqnn"), *cmd[1:], *extra, "--no-progress"], cwd=ROOT, check=True)
    return json.loads(metrics.read_text())


def main() -> int:
    t, s = ensure(TEACHER), ensure(STUDENT)
    row = {"teacher_test_acc": t["test_acc"], "teacher_epochs": t["epochs"], "teacher_wall_s": t["train_wall_s"],
           "student_test_acc": s["test_acc"], "teacher_qnn_test_acc": s.get("teacher_qnn_acc"),
           "bit_exact": s["bit_exact"], "test_images": s["test_images"], "student_epochs": s["epochs"],
           "student_wall_s": s["wall_s"], "stages": [h["phase"] for h in s["history"]],
           "commands": [" ".join(TEACHER), " ".join(STUDENT)]}
    OUT.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n")
    lines = ["| model | test acc | epochs | wall | bit-exact (integer executor == torch student) |",
             "|---|---|---|---|---|",
             f"| resnet20 float BN teacher | {t['test_acc']:.2f}% | {t['epochs']} | "
             f"{t['train_wall_s'] / 60:.1f} min | - |",
             f"| resnet20 W4A4 BN-free integer student (ptl over blocks) | {s['test_acc']:.2f}% | {s['epochs']} | "
             f"{s['wall_s'] / 60:.1f} min | {'yes' if s['bit_exact'] else 'NO'} ({s['test_images']:,} images) |",
             "", f"Teacher QNN (BN kept, W4A4 fake quantization) after its QAT epoch: "
                 f"{s.get('teacher_qnn_acc', float('nan')):.2f}%. PTL stages: {len(s['history']) - 2} "
                 "(the stem, nine residual blocks, the global average pool, the classifier), one epoch of 100 "
                 "batches each at most; first and last layers keep 8-bit weights. Both ran with one thread each "
                 "(OMP_NUM_THREADS=1) on 2 cores shared with other runs.", "", "Commands:", ""]
    lines += [f"    {' '.join(c)}" for c in (TEACHER, STUDENT)]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
