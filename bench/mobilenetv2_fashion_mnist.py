"""MobileNetV2 (width 0.5, real linear bottlenecks) on Fashion-MNIST: the float BN teacher and
four BN-free integer PTL students (W8A8 and W4A4, per-layer and per-channel scales), each
checked bit for bit on all 10,000 test images.

    .venv/bin/python bench/mobilenetv2_fashion_mnist.py [--runs runs] [--no-train]

Runs (or resumes, or reuses when finished) the commands below (the first one's
``--channels-last`` only changes the memory layout of training: about 1.8x faster for this
net's depthwise convolutions on a CPU), then, for each student, computes the int32 logits of
the numpy reference executor, of the integer ONNX model in ONNX Runtime and of the C99
export (gcc -O3), and compares them with each other and with the eval-mode torch student
(the distill run's own whole-test-set check). Writes bench/results/mobilenetv2-fashion-mnist.json
and .md after every student; a student already checked there with the same model file (SHA-256)
is not checked again. ``--no-train`` reports the finished runs only and lists the others
as not finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "mobilenetv2-fashion-mnist"
ARCH = "mobilenetv2-w0.5"
# 34 PTL stages on 2 CPU cores: a short budget, the same for every student (calibration and
# the stage decisions on fewer images than the defaults, to fit the CPU).
BUDGET = ["--steps-per-epoch", "8", "--teacher-epochs", "1", "--max-epochs-per-stage", "1", "--patience", "1",
          "--finetune-epochs", "1", "--calib-images", "256", "--val-images", "1000"]
# Half the default 8 epochs: the teacher, then four students, fit one 3-hour session on 2 cores.
TEACHER_EPOCHS = 4
STUDENTS = [(w, a, scale) for w, a in ((8, 8), (4, 4)) for scale in ("per-layer", "per-channel")]


def commands(runs: str) -> tuple[list[str], list[list[str]]]:
    teacher = ["fiqnn", "train-teacher", "--arch", ARCH, "--data", "fashion-mnist", "--epochs", str(TEACHER_EPOCHS),
               "--channels-last", "--out", f"{runs}/mnv2w05-teacher"]
    students = [["fiqnn", "distill", "--teacher", f"{runs}/mnv2w05-teacher", "--method", "ptl", "--wbits", str(w),
                 "--abits", str(a), "--scale", scale, *BUDGET, "--channels-last",
                 "--out", f"{runs}/mnv2w05-ptl-w{w}a{a}-{scale}"] for w, a, scale in STUDENTS]
    return teacher, students


def finished(cmd: list[str]) -> bool:
    metrics = Path(cmd[cmd.index("--out") + 1]) / "metrics.json"
    return metrics.exists() and json.loads(metrics.read_text()).get("status") == "done"


def ensure(cmd: list[str]) -> dict:
    run = Path(cmd[cmd.index("--out") + 1])
    metrics = run / "metrics.json"
    if not finished(cmd):
        extra = ["--resume"] if (run / "config.json").exists() else []
        subprocess.run([str(ROOT / ".venv/bin/fiqnn"), *cmd[1:], *extra, "--no-progress"], cwd=ROOT, check=True)
    return json.loads(metrics.read_text())


BACKEND_KEYS = ("numpy_s", "numpy_acc", "onnx_equal", "onnx_s", "c_equal", "c_s")


def backends(run_dir: Path, test) -> dict:
    from fiqnn.export.c99 import run_c
    from fiqnn.export.onnx import run_onnx, to_onnx
    from fiqnn.integer.execute import run
    from fiqnn.integer.modelfile import load

    graph = load(run_dir / "model.npz")
    row = {}
    t0 = time.perf_counter()
    ref = run(graph, test.x_q)
    row["numpy_s"] = round(time.perf_counter() - t0, 1)
    row["numpy_acc"] = round(float((ref.argmax(1) == test.y).mean() * 100), 2)
    for name, fn in (("onnx", lambda: run_onnx(to_onnx(graph), test.x_q)), ("c", lambda: run_c(graph, test.x_q))):
        t0 = time.perf_counter()
        row[f"{name}_equal"] = bool(np.array_equal(fn(), ref))
        row[f"{name}_s"] = round(time.perf_counter() - t0, 1)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs", help="folder of the run directories (default: runs)")
    p.add_argument("--no-train", action="store_true", help="report finished runs only; start none")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fiqnn.data import load_data

    teacher_cmd, student_cmds = commands(args.runs)
    t = ensure(teacher_cmd)
    test = load_data("fashion-mnist").test
    rows, pending = [], []
    # Rows already checked for the same model file (its SHA-256) are reused, not recomputed.
    done = {r["command"]: r for r in json.loads(OUT.with_suffix(".json").read_text())["students"]} \
        if OUT.with_suffix(".json").exists() else {}
    for (w, a, scale), cmd in zip(STUDENTS, student_cmds):
        if args.no_train and not finished(cmd):
            pending.append(" ".join(cmd))
            write(t, rows, teacher_cmd, pending)
            continue
        s = ensure(cmd)
        run_dir = Path(cmd[cmd.index("--out") + 1])
        sha = hashlib.sha256((run_dir / "model.npz").read_bytes()).hexdigest()
        old = done.get(" ".join(cmd), {})
        row = {"w_bits": w, "a_bits": a, "scale": scale, "test_acc": s["test_acc"],
               "teacher_qnn_acc": s.get("teacher_qnn_acc"), "torch_equal": s["bit_exact"],
               "test_images": s["test_images"], "stages": len(s["history"]) - 2, "epochs": s["epochs"],
               "wall_s": s["wall_s"], "model_sha256": sha,
               **({k: old[k] for k in BACKEND_KEYS} if old.get("model_sha256") == sha else backends(run_dir, test)),
               "command": " ".join(cmd)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(t, rows, teacher_cmd, pending)
    return 0


def write(t: dict, rows: list[dict], teacher_cmd: list[str], pending: list[str]) -> None:
    OUT.with_suffix(".json").write_text(json.dumps({"teacher": {k: t[k] for k in ("test_acc", "epochs",
                                                    "train_wall_s")} | {"command": " ".join(teacher_cmd)},
                                                    "students": rows, "not_finished": pending}, indent=2) + "\n")
    yes = {True: "yes", False: "NO"}
    lines = ["| model | test acc | epochs | wall | torch == numpy | ONNX Runtime == numpy | C == numpy |",
             "|---|---|---|---|---|---|---|",
             f"| {ARCH} float BN teacher | {t['test_acc']:.2f}% | {t['epochs']} | {t['train_wall_s'] / 60:.1f} min "
             "| - | - | - |"]
    for r in rows:
        lines.append(f"| W{r['w_bits']}A{r['a_bits']} {r['scale']} ptl student | {r['numpy_acc']:.2f}% | "
                     f"{r['epochs']} | {r['wall_s'] / 60:.1f} min | {yes[r['torch_equal']]} | "
                     f"{yes[r['onnx_equal']]} | {yes[r['c_equal']]} |")
    n = rows[0]["test_images"] if rows else 0
    lines += [] if not rows else [
              "", f"Students: BN-free, integer-only, accuracy from the numpy integer executor on all {n:,} "
              "Fashion-MNIST test images; `==`: identical int32 logits on every one of them (torch: the eval-mode "
              f"student's exact integer path, checked by distill itself). PTL stages: "
              f"{rows[0]['stages'] if rows else '-'}; budget per stage: {' '.join(BUDGET)}. First and last layers "
              "keep 8-bit weights. Teacher QNN (BN kept, fake quantization) after its QAT epoch: "
              + ", ".join(f"W{r['w_bits']}A{r['a_bits']} {r['scale']} {r['teacher_qnn_acc']:.2f}%" for r in rows)
              + "."]
    lines += ["", "Wall times are on this 2-core machine: the teacher trained alone with two threads, the "
              "students with one thread each (`OMP_NUM_THREADS=1`), two at a time.", "", "Commands:", "",
              f"    {' '.join(teacher_cmd)}"]
    lines += [f"    {r['command']}" for r in rows]
    lines += ["    .venv/bin/python bench/mobilenetv2_fashion_mnist.py  # the checks and this table"]
    if pending:
        lines += ["", "Not finished yet (no row above until they are):", ""] + [f"    {c}" for c in pending]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
