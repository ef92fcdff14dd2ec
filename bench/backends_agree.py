"""Do the integer backends agree bit for bit on whole test sets? numpy vs ONNX Runtime vs compiled C.

    .venv/bin/python bench/backends_agree.py runs/bench/ptl-w8a8 runs/bench/ptl-w4a4 runs/bench/ptl-w2a2 \\
        [--arm-images 1000]

For each distill run: int32 logits of the numpy reference executor, of the integer ONNX
model in ONNX Runtime and of the C99 export compiled with the system cc (x86-64), on all
10,000 Fashion-MNIST test images; with --arm-images N > 0, also the C export built with
arm-linux-gnueabihf-gcc and run under qemu-arm on the first N images. Writes
bench/results/backends.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "backends"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--arm-images", type=int, default=0)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fiqnn.data import load_data
    from fiqnn.export.c99 import CFLAGS, run_c
    from fiqnn.export.onnx import run_onnx, to_onnx
    from fiqnn.integer.execute import run
    from fiqnn.integer.modelfile import load

    test = load_data("fashion-mnist").test
    rows = []
    for run_dir in args.runs:
        graph = load(Path(run_dir) / "model.npz")
        row = {"run": run_dir, "w_bits": graph.info.get("w_bits"), "a_bits": graph.info.get("a_bits"),
               "images": len(test.y)}
        t0 = time.perf_counter()
        ref = run(graph, test.x_q)
        row["numpy_s"] = round(time.perf_counter() - t0, 1)
        row["test_acc"] = round(float((ref.argmax(1) == test.y).mean() * 100), 2)
        for name, fn in (("onnx", lambda g: run_onnx(to_onnx(g), test.x_q)), ("c", lambda g: run_c(g, test.x_q))):
            t0 = time.perf_counter()
            row[f"{name}_equal"] = bool(np.array_equal(fn(graph), ref))
            row[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        if args.arm_images and shutil.which("arm-linux-gnueabihf-gcc") and shutil.which("qemu-arm"):
            n = args.arm_images
            t0 = time.perf_counter()
            arm = run_c(graph, test.x_q[:n], cc="arm-linux-gnueabihf-gcc", flags=[*CFLAGS, "-static"],
                        runner=["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"])
            row.update(arm_images=n, arm_equal=bool(np.array_equal(arm, ref[:n])),
                       arm_s=round(time.perf_counter() - t0, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        write(rows, args)  # after every student, so a long run leaves its finished rows
    return 0


def write(rows: list[dict], args: argparse.Namespace) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| student | test images | integer test acc | ONNX Runtime == numpy | C (x86-64 gcc) == numpy | "
             "ARM32 qemu == numpy | numpy / ORT / C time |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        arm = f"{'yes' if r['arm_equal'] else 'NO'} ({r['arm_images']:,} images)" if "arm_equal" in r else "not run"
        lines.append(f"| W{r['w_bits']}A{r['a_bits']} ({r['run']}) | {r['images']:,} | {r['test_acc']:.2f}% | "
                     f"{'yes' if r['onnx_equal'] else 'NO'} | {'yes' if r['c_equal'] else 'NO'} | {arm} | "
                     f"{r['numpy_s']:.0f} / {r['onnx_s']:.0f} / {r['c_s']:.0f} s |")
    lines += ["", "`==`: identical int32 logits on every image. Times are for the whole test set on this "
              "machine (C: export + gcc -O3 build + run, one image at a time). Command: "
              f"`.venv/bin/python bench/backends_agree.py {' '.join(args.runs)} --arm-images {args.arm_images}`"]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
