"""Arm Ethos-U NPU figures of the LiteRT export: Vela's cycles, SRAM and flash per model.

    .venv/bin/python bench/vela.py --model 'alexnet-s W4A4=runs/cm/fold-w4a4' ... \
        [--accelerator ethos-u55-128]

Each model is exported with ``fiqnn.export.tflite.export_tflite`` (target xnnpack; layers the
export cannot prove are listed, and written anyway for this figure) and compiled with Vela
(package ethos-u-vela, its default system configuration for the accelerator); the table is
Vela's own summary: operators on the NPU and on the CPU, its estimate of NPU cycles per
inference, SRAM and off-chip flash. These are Vela's performance estimates, not a run: nothing
here checks the NPU's arithmetic (Ethos-U requantizes as its own hardware does, which the
export does not prove). Writes bench/results/vela.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "vela"


def compile_one(path: str, accelerator: str) -> dict:
    from fiqnn.export.tflite import export_tflite, prove, unproven
    from fiqnn.integer.modelfile import load

    model = Path(path)
    graph = load(model / "model.npz" if model.is_dir() else model)
    missing = unproven(prove(graph, "xnnpack"))
    with tempfile.TemporaryDirectory(prefix="fiqnn-vela-") as tmp:
        tfl = Path(tmp) / "model.tflite"
        export_tflite(graph, tfl, allow_unproven=True)
        res = subprocess.run([shutil.which("vela") or str(Path(sys.executable).parent / "vela"), str(tfl),
                              "--accelerator-config", accelerator, "--output-dir", tmp],
                             capture_output=True, text=True)
        if res.returncode:
            raise SystemExit(f"vela failed on {path}: {(res.stderr or res.stdout).strip().splitlines()[-1]}")
        summary = next(Path(tmp).glob("*_summary_*.csv"))
        row = next(csv.DictReader(summary.open()))
    ops = {k: int(v) for k, v in re.findall(r"(CPU|NPU) operators = (\d+)", res.stdout)}
    return {"model": path, "unproven_channels": len(missing), "npu_ops": ops.get("NPU"), "cpu_ops": ops.get("CPU"),
            "system": summary.stem.split("_summary_")[1], "cycles": int(float(row["cycles_total"])),
            "cycles_npu": int(float(row["cycles_npu"])), "inference_s": float(row["inference_time"]),
            "sram_kib": float(row["sram_memory_used"]), "flash_kib": float(row["off_chip_flash_memory_used"]),
            "macs": int(float(row["nn_macs"]))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                   help="a model file (model.npz or its run directory), repeatable")
    p.add_argument("--accelerator", default="ethos-u55-128")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from importlib.metadata import version

    rows = []
    for spec in args.model:
        label, _, path = spec.partition("=")
        rows.append({"label": label, **compile_one(path, args.accelerator)})
        print(rows[-1], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"The LiteRT export compiled by Vela {version('ethos-u-vela')} for {args.accelerator} "
             f"(system configuration {rows[0]['system']}, Vela's default; its clock gives the time). Vela's "
             "estimates, not a run: the NPU's own requantization is not what the export proves.", "",
             "| model | unproven channels (XNNPACK) | NPU ops | CPU ops | MACs | cycles | time | SRAM "
             "| off-chip flash |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['unproven_channels']} | {r['npu_ops']} | {r['cpu_ops']} | {r['macs']:,} | "
                     f"{r['cycles']:,} | {r['inference_s'] * 1e3:.2f} ms | {r['sram_kib']:.1f} KiB | "
                     f"{r['flash_kib']:.1f} KiB |")
    lines += ["", "Command: `.venv/bin/python bench/vela.py " + " ".join(
        f"--model {shlex.quote(s)}" for s in args.model) + f" --accelerator {args.accelerator}`"]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
