"""A long differential fuzzing campaign: numpy, ONNX Runtime, sanitized C and LiteRT against the oracle.

    .venv/bin/python bench/fuzz_backends.py --graphs 2000 --inputs 64 --seed 0

The check of tests/test_fuzz.py (every backend's int32 logits equal the pure-Python
oracle's, the C built with ASan and UBSan), on the random graphs ``seed .. seed + graphs - 1``
of tests/graphgen.py, --chunk graphs to a sanitized executable. LiteRT always runs (it costs
well under a second per chunk): on the graphs fiqnn.export.tflite exports, the others counted
with the exporter's reason; all skipped, saying so, where the tflite extra is not installed.
Writes --out (bench/results/fuzz.md) after every chunk: the command, coverage of every op and
feature, the graphs LiteRT checked and why it skipped the rest, mismatches, backend errors,
sanitizer reports, wall time and date.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "fuzz.md"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--graphs", type=int, default=2000)
    p.add_argument("--inputs", type=int, default=64, help="images per graph (at least 4)")
    p.add_argument("--seed", type=int, default=0, help="the first graph's seed")
    p.add_argument("--chunk", type=int, default=50, help="graphs per sanitized C executable")
    p.add_argument("--jobs", type=int, default=2, help="parallel compiler runs")
    p.add_argument("--cortex-m", action="store_true",
                   help="also run every graph on an emulated Cortex-M4 (arm-none-eabi-gcc, qemu-system-arm)")
    p.add_argument("--out", type=Path, default=OUT, help="the report to write (default: %(default)s)")
    args = p.parse_args()
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    from tests.graphgen import features, random_graph
    from tests.test_fuzz import BACKENDS, CORTEX_M, LITERT, arena_overlap, c_kernel_paths, campaign_inputs, check_graphs
    from tqdm import tqdm

    from fiqnn.export.c99 import kernel_codes, simd32

    backends = (*BACKENDS, CORTEX_M) if args.cortex_m else BACKENDS

    t0 = time.perf_counter()
    seen: Counter = Counter()
    graphs_with: Counter = Counter()
    litert_skipped: Counter = Counter()  # why LiteRT did not check a graph -> graphs
    bad: dict[int, object] = {}
    done = 0
    with tqdm(total=args.graphs, unit="graph") as bar:
        for start in range(args.seed, args.seed + args.graphs, args.chunk):
            seeds = range(start, min(start + args.chunk, args.seed + args.graphs))
            graphs = [random_graph(s) for s in seeds]
            inputs = [campaign_inputs(s, g, args.inputs) for s, g in zip(seeds, graphs)]
            with tempfile.TemporaryDirectory(prefix="fiqnn-fuzz-") as tmp:
                verdicts = check_graphs(graphs, inputs, Path(tmp), backends=backends, jobs=args.jobs)
            for k, (s, g, v) in enumerate(zip(seeds, graphs, verdicts)):
                f = features(g)
                f["Arm SIMD32 conv/fc layer"] = sum(bool(simd32(layer, c)) for layer, c in
                                                    zip(g.int_layers(), kernel_codes(g)))
                f.update({f"C kernel: {p}": n for p, n in c_kernel_paths(g, arena_overlap(k)).items()})
                seen += f
                graphs_with.update(k for k, v in f.items() if v)
                if LITERT in v.skipped:
                    litert_skipped[v.skipped[LITERT]] += 1
                if v:
                    bad[s] = v
            done += len(seeds)
            bar.update(len(seeds))
            bar.set_postfix(failing=len(bad))
            write(args, done, seen, graphs_with, litert_skipped, bad, time.perf_counter() - t0)
    return 1 if bad else 0


def _version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def _headline(error: str) -> str:
    """The line of an error or sanitizer report that says what went wrong."""
    lines = [line for line in error.splitlines() if "error" in line.lower()] or error.splitlines() or [""]
    return lines[0][:160].replace("|", "/")


def _litert_version() -> str:
    try:
        return f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    except importlib.metadata.PackageNotFoundError:
        return "no ai-edge-litert"


def write(args, done: int, seen: Counter, graphs_with: Counter, litert_skipped: Counter, bad: dict,
          wall: float) -> None:
    import onnxruntime
    from tests.graphgen import FEATURES
    from tests.test_fuzz import C_PATHS, LITERT, M4_PATHS, _reported

    differs = {s: v for s, v in bad.items() if v.differs}
    sanitizer = {s: v for s, v in bad.items() if v.sanitizer}
    errors = {s: v for s, v in bad.items()
              if any(not _reported(e) for e in v.errors.values())}
    unexported = sum(n for why, n in litert_skipped.items() if why.startswith("not exportable"))
    litert_bad = sum(LITERT in v.differs or LITERT in v.errors for v in bad.values())
    status = "finished" if done == args.graphs else f"running: {done:,} of {args.graphs:,} graphs so far"
    lines = [
        "# Differential fuzzing of the backends",
        "",
        f"Command: `.venv/bin/python bench/fuzz_backends.py --graphs {args.graphs} --inputs {args.inputs} "
        f"--seed {args.seed}{' --cortex-m' * args.cortex_m}` ({status}).",
        "",
        "Every random graph of tests/graphgen.py (seeds "
        f"{args.seed}..{args.seed + done - 1}) runs on {args.inputs} images (all 0, all 255, 0/255 pixels, small "
        "codes, uniform) in the numpy executor, ONNX Runtime and the C export compiled five times with "
        "`-fsanitize=address,undefined -fno-sanitize-recover=all`: portable (`-O1 -g`: on x86-64 the int16 GEMM "
        "kernels, `c`), the in-place kernels of scalar cores (`-DFIQNN_COLS=0`, `c-inplace`), and for this "
        "machine (`-O2 -march=native -g`, `c-native`: the VNNI kernels where the CPU has AVX-512 VNNI; and "
        "with `-DFIQNN_NO_INTRINSICS`, `c-native-plain`: the int8 GEMM kernels in plain C), and for size "
        "(`-Os -g`, `c-compact`: the compact kernels)"
        + ("; and the C export built with arm-none-eabi-gcc -O3 for a Cortex-M4, which takes the Arm SIMD32 "
           "kernels, run under qemu-system-arm (`c-m4`, no sanitizers on bare metal)" if args.cortex_m else "")
        + "; and LiteRT (`litert`: XNNPACK, the .tflite of fiqnn.export.tflite.to_tflite(graph, target=\"xnnpack\", "
        "fallback=\"integer\")) on every graph the exporter spells and proves exact (the others are counted "
        "below with the exporter's reason, not failures)"
        + "; each backend's int32 logits must equal those of the pure-Python oracle (tests/oracle.py), "
        "image by image. Every other graph's C export plans its arena with every conv output over its input "
        "that is allowed (`export_c(..., overlap=True)`; tests/test_fuzz.py arena_overlap).",
        "",
        "| | |", "|---|---|",
        f"| graphs | {done:,} |",
        f"| inputs per graph | {args.inputs} |",
        f"| graphs with a logit mismatch | {len(differs)} |",
        f"| graphs with a sanitizer report | {len(sanitizer)} |",
        f"| graphs where a backend failed otherwise | {len(errors)} |",
        f"| graphs LiteRT checked | {done - sum(litert_skipped.values()):,} |",
        f"| graphs LiteRT could not export | {unexported:,} |",
        f"| graphs where LiteRT differs or failed | {litert_bad} |",
        f"| wall time | {wall / 60:.1f} min |",
        f"| date | {datetime.date.today().isoformat()} |",
        f"| machine | {platform.machine()}, {_version(['cc', '--version'])}, onnxruntime {onnxruntime.__version__}, "
        f"{_litert_version()} |",
        "",
        "## Graphs LiteRT skipped", "",
        "| why (the exporter's first words) | graphs |", "|---|---|",
        *(f"| {why.replace('|', '/')} | {n:,} |" for why, n in litert_skipped.most_common()),
        "",
        "## Coverage", "",
        "| op or feature | nodes | graphs |", "|---|---|---|",
        *(f"| {f} | {seen[f]:,} | {graphs_with[f]:,} |" for f in (*FEATURES, "Arm SIMD32 conv/fc layer",
                                                                   *(f"C kernel: {k}" for k in C_PATHS + M4_PATHS))),
        "",
        "Rows count nodes with the feature (`graph` and `3-channel input`: graphs); `w_bits` counts conv/fc "
        "layers, `a_bits` every node making codes of that width.",
    ]
    if bad:
        lines += ["", "## Failing graphs", "", "| seed | differs | errors |", "|---|---|---|"]
        lines += [f"| {s} | {', '.join(v.differs) or '-'} | "
                  f"{'; '.join(f'{k}: {_headline(e)}' for k, e in v.errors.items()) or '-'} |"
                  for s, v in sorted(bad.items())[:50]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
