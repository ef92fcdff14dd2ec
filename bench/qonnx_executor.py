"""The QONNX export on the whole test set: qonnx's own executor against fiqnn.run.

    .venv/bin/python bench/qonnx_executor.py --model 'alexnet-s W4A4=runs/cm/fold-w4a4' ... [--data fashion-mnist]

For each model: the QONNX file (integer Conv/MatMul, MultiThreshold requantization) run by
``qonnx.core.onnx_exec.execute_onnx`` on every test image, its int32 logits compared with the
numpy executor's image by image, and its test accuracy. Writes bench/results/qonnx.json and .md.
"""

from __future__ import annotations

import json
import time

from _exports import agreement, models, write


def main() -> int:
    from importlib.metadata import version

    from fiqnn.export.qonnx import run_qonnx, to_qonnx

    rows = []
    for label, path, graph, ref in models(__doc__):
        t0 = time.perf_counter()
        got = run_qonnx(to_qonnx(graph), models.test.x_q)
        rows.append({"label": label, "model": path, **agreement(got, ref, models.test.y),
                     "acc_numpy": float((ref.argmax(1) == models.test.y).mean() * 100),
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    test, args = models.test, models.args
    lines = [f"The QONNX export in qonnx's executor (qonnx {version('qonnx')}, `execute_onnx`) on all "
             f"{len(test.y):,} {args.data} test images: int32 logits compared with the numpy executor's, image by "
             "image. Wall: export and run.", "",
             "| model | logits == numpy | accuracy (numpy) | wall |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['images_equal']:,} / {len(test.y):,} | {r['acc']:.2f}% ({r['acc_numpy']:.2f}%) | "
              f"{r['wall_s']} s |" for r in rows]
    write("qonnx", "qonnx_executor.py", rows, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
