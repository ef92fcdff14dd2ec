"""Deployment footprint of the alexnet-s students: weight bytes, arena, Cortex-M4 flash and RAM.

    .venv/bin/python bench/footprint.py runs/bench/ptl-w8a8 runs/bench/ptl-w4a4 runs/bench/ptl-w2a2

For each distill run: the weight bytes as exported (3- and 4-bit weights packed two per
byte, 2-bit four per byte),
the same weights stored as int8, all parameters (weights + int32 bias + mult + shift),
the static activation arena, and `arm-none-eabi-size` of model.c compiled for a
Cortex-M4 (`arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os`, which takes the compact kernels):
flash = text + data, RAM = data + bss; and the flash of the same file at -O3 (the SIMD32
kernels that bench/cortex_m.py times). Writes bench/results/footprint.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "footprint"
M4 = ["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-Os", "-std=c99", "-Wall", "-Wextra", "-Werror",
      "-pedantic"]


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "n/a (no arm-none-eabi-gcc)"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help="a distill run directory (holding model.npz)")
    runs = p.parse_args(argv).runs
    sys.path.insert(0, str(ROOT / "src"))
    from fiqnn.export.c99 import export_c, footprint
    from fiqnn.integer.modelfile import load

    rows = []
    for run in runs:
        graph = load(Path(run) / "model.npz")
        row = {"run": run, **graph.info, **footprint(graph)}
        if shutil.which(M4[0]):
            with tempfile.TemporaryDirectory() as tmp:
                src = export_c(graph, tmp)
                for key, flags in (("m4", M4), ("m4_o3", [*M4, "-O3"])):
                    subprocess.run([*flags, "-c", str(src / "model.c"), "-o", f"{tmp}/model.o"], check=True)
                    size = subprocess.run(["arm-none-eabi-size", f"{tmp}/model.o"], check=True, capture_output=True,
                                          text=True).stdout.splitlines()[1].split()
                    text, data, bss = (int(v) for v in size[:3])
                    row.update({f"{key}_flash": text + data, f"{key}_ram": data + bss,
                                f"{key}_command": " ".join(flags) + " -c model.c"})
        rows.append(row)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | weight bytes (packed) | as int8 | all parameters | arena | Cortex-M4 flash | "
             "Cortex-M4 RAM | flash at -O3 (SIMD32 kernels) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| alexnet-s W{r['w_bits']}A{r['a_bits']} ({r['method']}) | {r['weight_bytes']:,} | "
                     f"{r['weight_bytes_int8']:,} | {r['param_bytes']:,} | {r['arena_bytes']:,} | "
                     f"{_n(r.get('m4_flash'))} | {_n(r.get('m4_ram'))} | {_n(r.get('m4_o3_flash'))} |")
    lines += ["", "First and last layers keep 8-bit weights (`--first-last-bits 8`). Cortex-M4: "
              f"`{' '.join(M4)} -c model.c`, then `arm-none-eabi-size`; flash = text + data, RAM = data + bss. "
              "-Os selects the compact kernels (one plain sum per output; `-DFIQNN_COMPACT=0` keeps the fast "
              "ones); the last column is the same file at -O3, the build bench/cortex_m.py counts instructions of "
              "(its RAM is the same).",
              f"Command: `.venv/bin/python bench/footprint.py {' '.join(runs)}`"]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
