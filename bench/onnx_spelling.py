"""The integer ONNX export, old spelling vs new: ONNX Runtime speed, and exactness in ONNX Runtime
and OpenVINO on the whole Fashion-MNIST test set.

    OMP_NUM_THREADS=1 .venv/bin/python bench/onnx_spelling.py runs/cm/fold-w4a4 runs/cm/fold-w8a8 \\
        [--old-commit b3e629d] [--repeats 7]

The old spelling is src/fiqnn/export/onnx.py as of ``--old-commit`` (NCHW, ConvInteger, int64
requantization), read with ``git show`` into a module of its own; the new one is the working
tree's. For each student, both models run in one process, in ONNX Runtime with one thread
(intra_op_num_threads = 1), at batch 1 and batch 256, interleaved (old, new, old, new, ...) and
the best of ``--repeats`` rounds kept: the machine may be shared, so the ratio is the result, not
the milliseconds. Then the new model's logits on all 10,000 test images, in ONNX Runtime and in
OpenVINO (CPU, f32 inference precision), are compared with the numpy executor's, element by
element (and the old model's in OpenVINO, which computes int64 in int32). Writes
bench/results/onnx-spelling.json and .md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "onnx-spelling"
BATCHES = (1, 256)


def old_module(commit: str) -> types.ModuleType:
    """src/fiqnn/export/onnx.py as of ``commit``, as a module inside the fiqnn.export package."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:src/fiqnn/export/onnx.py"], check=True,
                          capture_output=True, text=True).stdout
    module = types.ModuleType("fiqnn.export._onnx_old")
    module.__package__ = "fiqnn.export"
    exec(compile(text, f"{commit}:src/fiqnn/export/onnx.py", "exec"), module.__dict__)
    return module


def session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def timed(sessions: dict, x: np.ndarray, repeats: int) -> dict[str, float]:
    """Best seconds per run of each session on ``x``, the sessions interleaved round by round."""
    calls = max(1, int(0.25 / max(1e-4, _once(next(iter(sessions.values())), x))))  # ~0.25 s a round
    best = {name: float("inf") for name in sessions}
    for _ in range(repeats):
        for name, s in sessions.items():
            s.run(None, {"x_q": x})
            t0 = time.perf_counter()
            for _ in range(calls):
                s.run(None, {"x_q": x})
            best[name] = min(best[name], (time.perf_counter() - t0) / calls)
    return best


def _once(s, x: np.ndarray) -> float:
    s.run(None, {"x_q": x})
    t0 = time.perf_counter()
    s.run(None, {"x_q": x})
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="distill run directories (or their model.npz)")
    p.add_argument("--old-commit", default="b3e629d")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import onnxruntime
    import openvino

    from fiqnn.data import load_data
    from fiqnn.export import onnx as new
    from fiqnn.integer.execute import as_graph, run

    old = old_module(args.old_commit)
    test = load_data("fashion-mnist").test
    rows = []
    for target in args.runs:
        graph = as_graph(target)
        models = {"old": old.to_onnx(graph).SerializeToString(), "new": new.to_onnx(graph).SerializeToString()}
        sessions = {name: session(m) for name, m in models.items()}
        row = {"run": str(target), "w_bits": graph.info.get("w_bits"), "a_bits": graph.info.get("a_bits"),
               "scale": graph.info.get("scale"), "old_onnx_bytes": len(models["old"]),
               "new_onnx_bytes": len(models["new"]), "openvino_unsafe_nodes": new.openvino_unsafe_nodes(graph)}
        for batch in BATCHES:
            best = timed(sessions, test.x_q[:batch], args.repeats)
            row[f"b{batch}_old_ms"], row[f"b{batch}_new_ms"] = best["old"] * 1e3, best["new"] * 1e3
            row[f"b{batch}_speedup"] = best["old"] / best["new"]
        ref = run(graph, test.x_q)
        ort_new = np.concatenate([sessions["new"].run(None, {"x_q": test.x_q[i:i + 256]})[0]
                                  for i in range(0, len(test.x_q), 256)])
        ov_new = new.run_openvino(new.to_onnx(graph), test.x_q)
        ov_old = new.run_openvino(old.to_onnx(graph), test.x_q)
        row |= {"images": len(test.x_q), "ort_new_equal": bool(np.array_equal(ort_new, ref)),
                "openvino_new_equal": bool(np.array_equal(ov_new, ref)),
                "openvino_new_differing": int((ov_new != ref).sum()),
                "openvino_old_equal": bool(np.array_equal(ov_old, ref)),
                "openvino_old_differing": int((ov_old != ref).sum())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {"command": "OMP_NUM_THREADS=1 .venv/bin/python bench/onnx_spelling.py " + " ".join(args.runs)
            + f" --old-commit {args.old_commit} --repeats {args.repeats}",
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
            "machine": _machine()}
    write(rows, meta)
    return 0


def _machine() -> str:
    """The CPU model and the integer dot-product extensions that ONNX Runtime's kernels may use."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()}, {platform.platform()}"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{platform.machine()} {model} ({', '.join(isa) or 'no AVX2'})"


def _verdict(row: dict, key: str) -> str:
    differing = row.get(key.replace("equal", "differing"))
    return "yes" if row[key] else f"NO ({differing:,} logits differ)" if differing is not None else "NO"


def write(rows: list[dict], meta: dict) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["| student | batch 1: old / new (speedup) | batch 256: old / new (speedup) | ONNX file old / new | "
             "ORT new == numpy | OpenVINO new == numpy | OpenVINO old == numpy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        times = " | ".join(f"{r[f'b{b}_old_ms']:.3f} / {r[f'b{b}_new_ms']:.3f} ms ({r[f'b{b}_speedup']:.2f}x)"
                           for b in BATCHES)
        sizes = f"{r['old_onnx_bytes'] / 1e6:.2f} / {r['new_onnx_bytes'] / 1e6:.2f} MB"
        checks = " | ".join(_verdict(r, key) for key in ("ort_new_equal", "openvino_new_equal", "openvino_old_equal"))
        lines.append(f"| W{r['w_bits']}A{r['a_bits']} {r['scale']} ({r['run']}) | {times} | {sizes} | {checks} |")
    lines += ["", f"ONNX Runtime {meta['onnxruntime']}, one thread, best of the interleaved rounds; `==`: identical "
              f"int32 logits on all {rows[0]['images']:,} Fashion-MNIST test images. OpenVINO {meta['openvino']}, "
              "CPU plugin, INFERENCE_PRECISION_HINT f32. Machine: " + meta["machine"] + ".",
              f"Command: `{meta['command']}`"]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
