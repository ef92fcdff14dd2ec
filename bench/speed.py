"""Inference speed on this machine: images/s at batch 1 and batch 256.

Rows: the float BN teacher in PyTorch; the same teacher exported to float ONNX in ONNX
Runtime (all cores, and one thread); and the integer student in the numpy executor, in
ONNX Runtime (integer ONNX) and as compiled C (gcc -O3 for the portable x86-64 baseline,
and with -march=native). The C harness runs one image at a time, so its batch-1 and
batch-256 rows are one measurement: images/s over 2,000 images, process start and file
I/O included. GMAC/s = images/s x multiply-accumulates per image (the student's conv and
fc layers; the teacher has the same layers).

    .venv/bin/python bench/speed.py --teacher runs/teacher --student runs/bench/ptl-w4a4

Writes bench/results/speed.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "speed"


def timed(fn, x: np.ndarray, batch: int, min_s: float = 3.0) -> float:
    """images/s of ``fn`` over batches of ``batch`` images, repeated for at least ``min_s``."""
    fn(x[:batch])  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_s:
        start = (n * batch) % (len(x) - batch + 1)
        fn(x[start:start + batch])
        n += 1
    return n * batch / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/teacher")
    p.add_argument("--student", default="runs/bench/ptl-w4a4")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import onnxruntime as ort

    from fiqnn.data import load_data
    from fiqnn.export.c99 import CFLAGS, build_c, export_c
    from fiqnn.export.c99 import macs as count_macs
    from fiqnn.export.onnx import to_onnx
    from fiqnn.integer.execute import run
    from fiqnn.integer.modelfile import load
    from fiqnn.train.teacher import load_teacher

    torch.set_num_threads(os.cpu_count() or 1)
    x_q = load_data("fashion-mnist").test.x_q
    teacher = load_teacher(args.teacher)
    graph = load(Path(args.student) / "model.npz")
    so, so1 = ort.SessionOptions(), ort.SessionOptions()
    so.intra_op_num_threads, so1.intra_op_num_threads = os.cpu_count() or 1, 1
    macs = count_macs(graph)
    with tempfile.TemporaryDirectory() as tmp:
        torch.onnx.export(teacher, (torch.zeros(1, *x_q.shape[1:]),), f"{tmp}/float.onnx", dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}}, opset_version=13)
        float_sess = ort.InferenceSession(f"{tmp}/float.onnx", so, providers=["CPUExecutionProvider"])
        float_sess1 = ort.InferenceSession(f"{tmp}/float.onnx", so1, providers=["CPUExecutionProvider"])
        int_sess = ort.InferenceSession(to_onnx(graph).SerializeToString(), so, providers=["CPUExecutionProvider"])
        x_q[:2000].tofile(f"{tmp}/in.u8")
        c_rates = {}
        for label, flags in (("gcc -O3", CFLAGS), ("gcc -O3 -march=native", [*CFLAGS, "-march=native"])):
            exe = build_c(export_c(graph, f"{tmp}/c"), flags=flags)
            t0 = time.perf_counter()
            subprocess.run([str(exe), f"{tmp}/in.u8", f"{tmp}/out.i32"], check=True)
            c_rates[f"student integer, compiled C ({label}, 1 thread)"] = 2000 / (time.perf_counter() - t0)

        @torch.no_grad()
        def torch_float(b):
            return teacher(torch.from_numpy(b).float() / 255)

        runners = {
            "teacher float, PyTorch": torch_float,
            "teacher float, ONNX Runtime": lambda b: float_sess.run(None, {"x": (b / np.float32(255))
                                                                           .astype(np.float32)}),
            "teacher float, ONNX Runtime (1 thread)": lambda b: float_sess1.run(None, {"x": (b / np.float32(255))
                                                                                       .astype(np.float32)}),
            "student integer, numpy executor": lambda b: run(graph, b),
            "student integer, ONNX Runtime": lambda b: int_sess.run(None, {"x_q": b}),
        }
        rows = [{"backend": name, "batch": batch, "images_per_s": round(timed(fn, x_q, batch), 1)}
                for name, fn in runners.items() for batch in (1, 256)]
    rows += [{"backend": name, "batch": b, "images_per_s": round(rate, 1)} for name, rate in c_rates.items()
             for b in (1, 256)]
    for r in rows:
        r["gmac_per_s"] = round(r["images_per_s"] * macs / 1e9, 2)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
            "macs_per_image": int(macs), "torch_threads": torch.get_num_threads(), "teacher": args.teacher,
            "student": args.student, "info": graph.info, "command": " ".join(["python", *sys.argv])}
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| backend | batch | images/s | GMAC/s |", "|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['batch']} | {r['images_per_s']:,.1f} | {r['gmac_per_s']:.2f} |" for r in rows]
    lines += ["", f"Measured on {meta['machine']} with `{meta['command']}`; {macs:,} multiply-accumulates per "
              f"image; student {graph.info}."]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
