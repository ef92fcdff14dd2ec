"""Inference speed on this machine, as ratios against anchors measured in the same run.

Anchors: the float BN teacher exported to ONNX in ONNX Runtime (float32), and the same ONNX
quantized by ONNX Runtime's own ``quantize_static`` (int8 QDQ: uint8 activations, int8 weights,
256 calibration images). Rows: each integer student in fiqnn's numpy executor, as fiqnn's
integer ONNX in ONNX Runtime, and as the C export compiled into a shared library and called in
this process (``fiqnn_run`` per image at batch 1, ``fiqnn_run_batch`` at batch 256): gcc -O3
(portable x86-64: the int16 GEMM kernels, FIQNN_COLS 16), gcc -O3 -march=native in plain C
(``-DFIQNN_NO_INTRINSICS``: the int8 GEMM kernels where the CPU has a byte dot product) and
with its intrinsics (the AVX-512 VNNI kernels where it has them), and gcc -O3 with and without
-march=native with ``-DFIQNN_COLS=0``, the in-place kernels (what the C export ran on x86
before the GEMM kernels), and the LiteRT export in LiteRT with its XNNPACK delegate (its
integer-fallback layers, where the proof sends some there, in LiteRT's builtin kernels; logits
checked against numpy on all the images). One core's VPDPBUSD peak is measured too, where the CPU has it.
Every timed row is one thread, and two threads where the runtime has threads (the C export has
none: one thread). Each figure is the best of ``--repeats`` rounds, each round at least
``--min-s`` seconds over the test images; every C build's logits are checked against numpy on
all the images the loops cycle over (``--images 10000``: the whole test set).

    .venv/bin/python bench/speed.py --teacher runs/cm/teacher --images 10000 \\
        --student 'alexnet-s W4A4=runs/cm/fold-w4a4/model.npz' --student 'alexnet-s W8A8=runs/cm/fold-w8a8/model.npz'

Writes bench/results/speed.json and .md. Time nothing else meanwhile: the ratios assume an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import ctypes
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
BATCHES = (1, 256)
C_BUILDS = {  # label: compiler flags after -std=c99 -O3
    "C, gcc -O3 (x86-64: int16 GEMM)": [],
    "C, gcc -O3 -march=native -DFIQNN_NO_INTRINSICS (plain C: int8 GEMM)": ["-march=native", "-DFIQNN_NO_INTRINSICS"],
    "C, gcc -O3 -march=native (VNNI intrinsics where the CPU has them)": ["-march=native"],
    "C, gcc -O3 -DFIQNN_COLS=0 (in-place kernels)": ["-DFIQNN_COLS=0"],
    "C, gcc -O3 -march=native -DFIQNN_COLS=0 (in-place kernels)": ["-march=native", "-DFIQNN_COLS=0"],
}
# One core's VPDPBUSD peak: 16 independent accumulators, 16 x 64 multiply-accumulates an iteration.
PEAK_C = r"""#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#define D(a) a = _mm512_dpbusd_epi32(a, x, w)
int main(void)
{
    __m512i x = _mm512_set1_epi32(0x01010101), w = _mm512_set1_epi32(0x01020304);
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2);
    __m512i a3 = _mm512_set1_epi32(3), a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5);
    __m512i a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7), a8 = _mm512_set1_epi32(8);
    __m512i a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
    __m512i a12 = _mm512_set1_epi32(12), a13 = _mm512_set1_epi32(13), a14 = _mm512_set1_epi32(14);
    __m512i a15 = _mm512_set1_epi32(15);
    long i, iters = 50000000;
    struct timespec t0, t1;
    int out[16];
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < iters; i++) {
        D(a0); D(a1); D(a2); D(a3); D(a4); D(a5); D(a6); D(a7);
        D(a8); D(a9); D(a10); D(a11); D(a12); D(a13); D(a14); D(a15);
        __asm__ volatile("" : "+v"(x), "+v"(w));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    a0 = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                          _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    a8 = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)),
                          _mm512_add_epi32(_mm512_add_epi32(a12, a13), _mm512_add_epi32(a14, a15)));
    _mm512_storeu_si512((void *)out, _mm512_add_epi32(a0, a8));
    printf("%.3f %d\n", 1024.0 * iters / ((t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec)) / 1e9, out[0]);
    return 0;
}
"""


def vnni_peak(tmp: str, repeats: int) -> float | None:
    """GMAC/s of one core's VPDPBUSD at its peak (best of ``repeats``), or None without AVX-512 VNNI."""
    from fiqnn.export.c99 import find_compiler
    cc = find_compiler()
    probe = subprocess.run([cc, "-march=native", "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True, text=True)
    if "#define __AVX512VNNI__ " not in probe.stdout:
        return None
    Path(tmp, "peak.c").write_text(PEAK_C)
    subprocess.run([cc, "-O2", "-march=native", "-D_POSIX_C_SOURCE=200809L", "-o", f"{tmp}/peak", f"{tmp}/peak.c"],
                   check=True)
    return max(float(subprocess.run([f"{tmp}/peak"], capture_output=True, text=True, check=True).stdout.split()[0])
               for _ in range(repeats))


def images_per_s(fn, x: np.ndarray, batch: int, min_s: float, repeats: int) -> float:
    """Best images/s of ``fn`` over consecutive batches of ``x``, over ``repeats`` rounds."""
    fn(x[:batch])  # warm-up
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < min_s:
            start = (n * batch) % (len(x) - batch + 1)
            fn(x[start:start + batch])
            n += 1
        best = max(best, n * batch / elapsed)
    return best


class CModel:
    """model.c compiled into a shared library, called in this process."""

    def __init__(self, src: Path, flags: list[str], out: Path):
        from fiqnn.export.c99 import find_compiler
        subprocess.run([find_compiler(), "-std=c99", "-O3", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared",
                        "-fPIC", *flags, "-o", str(out), str(src / "model.c")], check=True)
        self.lib = ctypes.CDLL(str(out))
        self.lib.fiqnn_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self.lib.fiqnn_run_batch.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]

    def __call__(self, x: np.ndarray, classes: int) -> np.ndarray:
        x = np.ascontiguousarray(x)
        y = np.empty((len(x), classes), np.int32)
        if len(x) == 1:
            rc = self.lib.fiqnn_run(x.ctypes.data, y.ctypes.data)
        else:
            rc = self.lib.fiqnn_run_batch(x.ctypes.data, len(x), y.ctypes.data)
        if rc != 0:
            raise RuntimeError("fiqnn_run failed")
        return y


class LiteRTModel:
    """A .tflite in LiteRT's interpreter (default resolver: the XNNPACK delegate) with ``threads``
    threads; called on a batch of uint8 images, it resizes its input when the batch size changes."""

    def __init__(self, data: bytes, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_content=data, num_threads=threads)
        self.inp = self.interp.get_input_details()[0]["index"]
        self.out = self.interp.get_output_details()[0]["index"]
        self.size = None

    def __call__(self, x_q: np.ndarray) -> np.ndarray:
        from fiqnn.export.tflite import to_litert_input

        x = to_litert_input(x_q)
        if len(x) != self.size:
            self.interp.resize_tensor_input(self.inp, list(x.shape))
            self.interp.allocate_tensors()
            self.size = len(x)
        self.interp.set_tensor(self.inp, x)
        self.interp.invoke()
        return self.interp.get_tensor(self.out)


def qdq_model(float_path: str, out: str, calib: np.ndarray) -> None:
    """ONNX Runtime's own static int8 quantization of the float teacher (QDQ, U8S8)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"x": b}

    quantize_static(float_path, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/cm/teacher")
    p.add_argument("--student", action="append", metavar="LABEL=PATH",
                   help="an integer model file (model.npz); repeatable")
    p.add_argument("--images", type=int, default=2048, help="test images the timed loops cycle over")
    p.add_argument("--min-s", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--render", action="store_true", help="only rewrite speed.md from speed.json")
    args = p.parse_args()
    if args.render:
        saved = json.loads(OUT.with_suffix(".json").read_text())
        print(render(saved["meta"], saved["rows"]))
        return 0
    students = dict(s.split("=", 1) for s in (args.student or
                                             ["alexnet-s W4A4=runs/cm/fold-w4a4/model.npz",
                                              "alexnet-s W8A8=runs/cm/fold-w8a8/model.npz"]))
    sys.path.insert(0, str(ROOT / "src"))
    import onnxruntime as ort

    from fiqnn.data import load_data
    from fiqnn.export.c99 import export_c
    from fiqnn.export.c99 import macs as count_macs
    from fiqnn.export.onnx import to_onnx
    from fiqnn.export.tflite import to_tflite
    from fiqnn.integer.execute import run
    from fiqnn.integer.modelfile import load
    from fiqnn.train.teacher import load_teacher

    torch.set_num_threads(1)
    data = load_data("fashion-mnist")
    x_q = data.test.x_q[:args.images]
    x_f = (x_q / np.float32(255)).astype(np.float32)
    calib = (data.train.x_q[:256] / np.float32(255)).astype(np.float32)
    teacher = load_teacher(args.teacher)
    threads = (1, 2) if (os.cpu_count() or 1) >= 2 else (1,)
    rows: list[dict] = []

    def session(model, n_threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = n_threads, 1
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    def measure(group: str, backend: str, fn, x, n_threads: int, macs: int, batches=BATCHES):
        for batch in batches:
            rate = images_per_s(fn, x, batch, args.min_s, args.repeats)
            rows.append({"group": group, "backend": backend, "threads": n_threads, "batch": batch,
                         "images_per_s": round(rate, 1), "gmac_per_s": round(rate * macs / 1e9, 2)})
            print(f"{group:>16} | {backend:<58} | {n_threads} | {batch:>3} | {rate:9.1f} img/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        peak = vnni_peak(tmp, args.repeats)
        torch.onnx.export(teacher, (torch.zeros(1, *x_q.shape[1:]),), f"{tmp}/float.onnx", dynamo=False,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}}, opset_version=13)
        qdq_model(f"{tmp}/float.onnx", f"{tmp}/qdq.onnx", calib)
        graph0 = load(next(iter(students.values())))
        teacher_macs = count_macs(graph0)  # the teacher has the student's conv and fc layers
        for n_threads in threads:
            for label, path in (("ONNX Runtime float32", "float.onnx"), ("ONNX Runtime int8 QDQ", "qdq.onnx")):
                sess = session(f"{tmp}/{path}", n_threads)
                measure("teacher", label, lambda b, s=sess: s.run(None, {"x": b}), x_f, n_threads, teacher_macs)
        for name, path in students.items():
            graph = load(path)
            macs = count_macs(graph)
            ref = run(graph, x_q)
            measure(name, "numpy executor", lambda b, g=graph: run(g, b), x_q, 1, macs, batches=(256,))
            onnx_bytes = to_onnx(graph).SerializeToString()
            for n_threads in threads:
                sess = session(onnx_bytes, n_threads)
                measure(name, "fiqnn integer ONNX, ONNX Runtime", lambda b, s=sess: s.run(None, {"x_q": b}), x_q,
                        n_threads, macs)
            tfl, notes = to_tflite(graph, "xnnpack", fallback="integer")
            tfl_label = "LiteRT, XNNPACK" + (f" ({len(notes)} layers in the integer fallback)" if notes else "")
            for n_threads in threads:
                model = LiteRTModel(tfl, n_threads)
                got = np.concatenate([model(x_q[i:i + 256]) for i in range(0, len(x_q), 256)])
                if not np.array_equal(got, ref):
                    raise SystemExit(f"{name}, LiteRT: logits differ from numpy")
                measure(name, tfl_label, lambda b, m=model: m(b), x_q, n_threads, macs)
            src = export_c(graph, f"{tmp}/c-{len(rows)}")
            for i, (label, flags) in enumerate(C_BUILDS.items()):
                model = CModel(src, flags, Path(tmp) / f"lib{len(rows)}-{i}.so")
                if not np.array_equal(model(x_q, graph.num_classes), ref):
                    raise SystemExit(f"{name}, {label}: C logits differ from numpy")
                measure(name, label, lambda b, m=model, k=graph.num_classes: m(b, k), x_q, 1, macs)
    anchor = {(r["backend"], r["threads"], r["batch"]): r["images_per_s"] for r in rows if r["group"] == "teacher"}
    for r in rows:
        r["x_float"] = round(r["images_per_s"] / anchor["ONNX Runtime float32", r["threads"], r["batch"]], 2)
        r["x_qdq"] = round(r["images_per_s"] / anchor["ONNX Runtime int8 QDQ", r["threads"], r["batch"]], 2)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "cpu") if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu}", "teacher": args.teacher,
            "students": students, "macs_per_image": teacher_macs, "onnxruntime": ort.__version__,
            "gcc": subprocess.run(["gcc", "-dumpfullversion"], capture_output=True, text=True).stdout.strip(),
            "vpdpbusd_peak_gmac_per_s": peak, "command": " ".join(["python", *sys.argv])}
    meta["images"] = len(x_q)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(render(meta, rows))
    return 0


def render(meta: dict, rows: list[dict]) -> str:
    """bench/results/speed.md from the rows and meta of speed.json (``--render``: again, from the file)."""
    lines = ["| model | backend | threads | batch | images/s | GMAC/s | x ORT float32 | x ORT int8 QDQ |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['group']} | {r['backend']} | {r['threads']} | {r['batch']} | {r['images_per_s']:,.1f} | "
              f"{r['gmac_per_s']:.2f} | {r['x_float']:.2f} | {r['x_qdq']:.2f} |" for r in rows]
    lines += ["", f"Measured on {meta['machine']} (ONNX Runtime {meta['onnxruntime']}, gcc {meta['gcc']}) with "
              f"`{meta['command']}`; {meta['macs_per_image']:,} multiply-accumulates per image. Ratios are against "
              "the teacher's rows of the same threads and batch, measured in the same run; every C build's logits "
              f"equal the numpy executor's on the {meta['images']:,} images timed."]
    if peak := meta.get("vpdpbusd_peak_gmac_per_s"):
        best = {b: max(r["gmac_per_s"] for r in rows if "VNNI" in r["backend"] and r["batch"] == b) for b in BATCHES}
        lines += ["", f"One core's VPDPBUSD peak, measured in the same run (16 independent accumulators): "
                  f"{peak:.1f} GMAC/s. The fastest VNNI row reaches "
                  + ", ".join(f"{best[b]:.1f} GMAC/s ({100 * best[b] / peak:.0f}% of it) at batch {b}"
                              for b in BATCHES) + "."]
    text = "\n".join(lines) + "\n"
    OUT.with_suffix(".md").write_text(text)
    return text

if __name__ == "__main__":
    sys.exit(main())
