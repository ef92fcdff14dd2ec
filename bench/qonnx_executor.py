"""The QONNX export on the whole test set: qonnx's own executor against fiqnn.run.

    .venv/bin/python bench/qonnx_executor.py --model 'alexnet-s W4A4=runs/cm/fold-w4a4' ... [--data fashion-mnist]

For each model: the QONNX file (integer Conv/MatMul, MultiThreshold requantization) run by
``qonnx.core.onnx_exec.execute_onnx`` on every test image, its int32 logits compared with the
numpy executor's image by image, and its test accuracy. Writes bench/results/qonnx.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "qonnx"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                   help="a model file (model.npz or its run directory), repeatable")
    p.add_argument("--data", default="fashion-mnist")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from importlib.metadata import version

    from fiqnn.data import load_data
    from fiqnn.export.qonnx import run_qonnx, to_qonnx
    from fiqnn.integer.execute import run
    from fiqnn.integer.modelfile import load

    test = load_data(args.data).test
    rows = []
    for spec in args.model:
        label, _, path = spec.partition("=")
        graph = load(Path(path) / "model.npz" if Path(path).is_dir() else path)
        ref = run(graph, test.x_q)
        t0 = time.perf_counter()
        got = run_qonnx(to_qonnx(graph), test.x_q)
        rows.append({"label": label, "model": path, "images_equal": int((got == ref).all(axis=1).sum()),
                     "acc": float((got.argmax(1) == test.y).mean() * 100),
                     "acc_numpy": float((ref.argmax(1) == test.y).mean() * 100),
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"The QONNX export in qonnx's executor (qonnx {version('qonnx')}, `execute_onnx`) on all "
             f"{len(test.y):,} {args.data} test images: int32 logits compared with the numpy executor's, image by "
             "image. Wall: export and run.", "",
             "| model | logits == numpy | accuracy (numpy) | wall |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['images_equal']:,} / {len(test.y):,} | {r['acc']:.2f}% ({r['acc_numpy']:.2f}%) | "
              f"{r['wall_s']} s |" for r in rows]
    lines += ["", "Command:", "", "    .venv/bin/python bench/qonnx_executor.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:]), ""]
    OUT.with_suffix(".md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
