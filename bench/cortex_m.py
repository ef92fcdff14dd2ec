"""The C export on an emulated Cortex-M4: instructions per multiply-accumulate, per layer and
for the whole network, bit-exact against the numpy executor, with flash and RAM.

    .venv/bin/python bench/cortex_m.py --model W4A4=runs/ptl-w4a4/model.npz --model W8A8=... \
        [--data fashion-mnist] [--images 16] [--cpu cortex-m4] [--opt=-O3] [--check-images 10000]

Each model is built twice with arm-none-eabi-gcc for the core: the SIMD32 kernels (SXTB16 +
SMLAD, what a Cortex-M4 build gets) and the portable C (-DFIQNN_PORTABLE), and run under
qemu-system-arm -icount shift=0 on the first N test images (fiqnn.export.cortex_m: counts are
instructions, not cycles; QEMU models no pipeline or memory wait states). Writes
bench/results/cortex-m.json and .md. --check-images N also runs the SIMD32 build on the first N
test images (the whole test set: N = 10000) and compares every logit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "cortex-m"
BUILDS = {"simd32": (), "portable": ("FIQNN_PORTABLE",)}


def check(graph, x_all: np.ndarray, cpu: str, opt: str, chunk: int = 1000) -> int:
    """Images of ``x_all`` on which the SIMD32 build's logits are not numpy's, run ``chunk`` at a time."""
    from fiqnn.export.cortex_m import run_cortex_m
    from fiqnn.integer.execute import run

    bad = 0
    for i in range(0, len(x_all), chunk):
        x = x_all[i:i + chunk]
        got = run_cortex_m(graph, x, cpu=cpu, opt=opt)["logits"]
        bad += int((got != run(graph, x)).any(1).sum())
        print(f"  checked {i + len(x)} / {len(x_all)} images, {bad} differ", flush=True)
    return bad


def measure(path: str, x_q: np.ndarray, cpu: str, opt: str, x_check: np.ndarray | None = None) -> dict:
    from fiqnn.export.c99 import depthwise, footprint, layer_macs
    from fiqnn.export.cortex_m import run_cortex_m
    from fiqnn.integer.execute import run
    from fiqnn.integer.graph import IntLayer
    from fiqnn.integer.modelfile import load

    graph = load(path)
    ref = run(graph, x_q)
    lm = layer_macs(graph)
    nodes = []
    for node in graph.layers:
        kind = node.kind if not isinstance(node, IntLayer) else (
            "dwconv" if depthwise(node) else node.kind) + f" W{node.w_bits}"
        nodes.append({"name": node.name, "kind": kind, "macs": lm.get(node.name, 0)})
    row = {"model": path, "macs": sum(lm.values()), "footprint": footprint(graph), "images": len(x_q)}
    for build, defines in BUILDS.items():
        r = run_cortex_m(graph, x_q, cpu=cpu, opt=opt, defines=defines)
        per_node = r["instructions"].mean(0)
        conv = [i for i, n in enumerate(nodes) if n["kind"].startswith(("conv", "dwconv"))]
        fc = [i for i, n in enumerate(nodes) if n["kind"].startswith("fc")]
        row[build] = {
            "bit_exact": bool(np.array_equal(r["logits"], ref)), "size": r["size"],
            "instructions_per_image": float(per_node.sum()),
            "per_mac": float(per_node.sum() / row["macs"]),
            "conv_per_mac": float(per_node[conv].sum() / max(sum(nodes[i]["macs"] for i in conv), 1)),
            "fc_per_mac": float(per_node[fc].sum() / max(sum(nodes[i]["macs"] for i in fc), 1)),
            "nodes": [float(v) for v in per_node], "instructions_per_tick": r["instructions_per_tick"]}
        print(f"{path} {build}: {row[build]['per_mac']:.2f} instructions/MAC, "
              f"bit-exact {row[build]['bit_exact']}", flush=True)
    row["nodes"] = nodes
    if x_check is not None and len(x_check):
        row["simd32"]["checked"] = {"images": len(x_check), "differ": check(graph, x_check, cpu, opt)}
        row["simd32"]["bit_exact"] &= row["simd32"]["checked"]["differ"] == 0
    return row


def write(rows: list[dict], labels: list[str], args) -> None:
    OUT.with_suffix(".json").write_text(json.dumps({"cpu": args.cpu, "opt": args.opt, "data": args.data,
                                                    "models": dict(zip(labels, rows))}, indent=2) + "\n")
    lines = [f"The C export on an emulated {args.cpu} (arm-none-eabi-gcc {args.opt}, qemu-system-arm -icount "
             f"shift=0). Instructions per multiply-accumulate, mean over the first {rows[0]['images']} {args.data} "
             "test "
             "images; logits compared with the numpy executor on each of them (bit-exact (N): on the first N, "
             "--check-images for the simd32 build). simd32: the kernels a "
             f"{args.cpu} build gets (SXTB16 + SMLAD); portable: the same source with -DFIQNN_PORTABLE. "
             "Instructions, not cycles (QEMU models no pipeline or wait states). text/bss: the linked "
             "image with the bench harness (bss = the activation arena plus the harness's buffers).", "",
             "| model | build | MAC/image | instructions/image | per MAC | conv per MAC | fc per MAC "
             "| bit-exact | text | bss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in zip(labels, rows):
        for build in BUILDS:
            b = r[build]
            lines.append(f"| {label} | {build} | {r['macs']:,} | {b['instructions_per_image']:,.0f} | "
                         f"{b['per_mac']:.2f} | {b['conv_per_mac']:.2f} | {b['fc_per_mac']:.2f} | "
                         f"{'yes' if b['bit_exact'] else 'NO'} ({b.get('checked', {}).get('images', r['images'])}) "
                         f"| {b['size']['text']:,} | "
                         f"{b['size']['bss']:,} |")
    for label, r in zip(labels, rows):
        lines += ["", f"## {label}: per node", "", "| node | kind | MACs | simd32 per MAC | portable per MAC "
                  "| simd32 instructions |", "|---|---|---|---|---|---|"]
        for j, n in enumerate(r["nodes"]):
            s, p = r["simd32"]["nodes"][j], r["portable"]["nodes"][j]
            ps, pp = (f"{s / n['macs']:.2f}", f"{p / n['macs']:.2f}") if n["macs"] else ("-", "-")
            lines.append(f"| {j} | {n['kind']} | {n['macs']:,} | {ps} | {pp} | {s:,.0f} |")
    lines += ["", *([args.note, ""] if args.note else []), "Command:", ""]
    lines += ["    .venv/bin/python bench/cortex_m.py " + " ".join(
        f"--model {shlex.quote(f'{label}={path}')}" for label, path in zip(labels, args.paths))
        + f" --data {args.data} --images {args.images} --cpu {args.cpu} --opt={args.opt}"
        + (f" --check-images {args.check_images}" if args.check_images else "")
        + "".join(f" --check-model {shlex.quote(m)}" for m in args.check_model)
        + (f" --note {shlex.quote(args.note)}" if args.note else "")]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH",
                   help="a model file (model.npz or its run directory), repeatable")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--cpu", default="cortex-m4")
    p.add_argument("--opt", default="-O3")
    p.add_argument("--check-images", type=int, default=0, metavar="N",
                   help="also compare the SIMD32 build's logits with numpy on the first N test images")
    p.add_argument("--check-model", action="append", default=[], metavar="LABEL",
                   help="the models --check-images applies to (repeatable; default: all)")
    p.add_argument("--note", default="", help="a line for the table's notes (how the models were made)")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from fiqnn.data import load_data

    test = load_data(args.data).test.x_q
    x_q = test[:args.images]
    labels, rows, args.paths = [], [], []
    for spec in args.model:
        label, _, path = spec.partition("=")
        labels.append(label)
        args.paths.append(path)
        checked = not args.check_model or label in args.check_model
        rows.append(measure(path, x_q, args.cpu, args.opt, test[:args.check_images] if checked else None))
        write(rows, labels, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
