"""Differential fuzzing: on seeded random IntGraphs (tests/graphgen.py), the numpy executor,
ONNX Runtime, the C export built with ASan and UBSan and, for the graphs the LiteRT exporter
spells, LiteRT give the int32 logits of the independent pure-Python oracle (tests/oracle.py),
on every input.

All the graphs of a campaign are compiled into one sanitized executable (graph k's
``fiqnn_run`` renamed ``fiqnn_run_k``, and its ``fiqnn_run_batch``), so a campaign costs one link, not one build per
graph. bench/fuzz_backends.py runs the same check on thousands of graphs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from fiqnn._optional import optional_import
from fiqnn.errors import MissingExtraError
from fiqnn.export.c99 import export_c, find_compiler
from fiqnn.export.onnx import run_onnx, to_onnx
from fiqnn.integer.execute import run
from fiqnn.integer.graph import IntGraph, IntLayer
from tests import oracle
from tests.graphgen import FEATURES, features, random_graph, random_inputs

SAN_FLAGS = ["-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=all"]
# The C builds a campaign checks: the portable code (on x86-64 its int16 GEMM kernels), the
# in-place kernels a scalar microcontroller runs (FIQNN_COLS=0), and the code for this machine at
# -O2 (the compiler vectorizes, and -march=native defines the ISA macros that select optional
# kernels: x86 VNNI intrinsics where the CPU has them), with and without its intrinsics, and the
# compact kernels a build for size (-Os) takes.
_NATIVE = [f for f in SAN_FLAGS if f != "-O1"] + ["-O2", "-march=native"]
C_BUILDS = {"c": SAN_FLAGS, "c-inplace": [*SAN_FLAGS, "-DFIQNN_COLS=0"], "c-native": _NATIVE,
            "c-native-plain": [*_NATIVE, "-DFIQNN_NO_INTRINSICS"],
            "c-compact": [f for f in SAN_FLAGS if f != "-O1"] + ["-Os"]}
# LiteRT (XNNPACK, the integer fallback for layers it cannot prove) checks the graphs fiqnn.export.tflite
# exports; the others are "not exportable" (Verdict.skipped), not failures.
LITERT = "litert"
BACKENDS = ("numpy", "onnx", *C_BUILDS, LITERT)
# An optional backend: the C export on an emulated Cortex-M4, which takes the Arm SIMD32 kernels.
CORTEX_M = "c-m4"
SEEDS = range(50)
N_INPUTS = 64

_HARNESS = r"""/* Fuzz harness: for graphs argv[4].. in turn, reads argv[3] images (uint8, C-H-W) from
 * argv[1] (after skipping the earlier graphs' images) and appends their int32 logits to argv[2].
 * Each image and each logits row has a heap block of its exact size, so ASan sees any overrun;
 * "graph k" on stderr names the graph a sanitizer report belongs to. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

%(decls)s
static int (*const runs[%(k)d])(const uint8_t *, int32_t *) = {%(runs)s};
static const long in_size[%(k)d] = {%(in_size)s};
static const long classes[%(k)d] = {%(classes)s};

int main(int argc, char **argv)
{
    FILE *in, *out;
    long n, i;
    int k, start;
    if (argc != 5 || (in = fopen(argv[1], "rb")) == NULL || (out = fopen(argv[2], "wb")) == NULL)
        return 2;
    n = atol(argv[3]);
    start = atoi(argv[4]);
    for (k = 0; k < start; k++)
        if (fseek(in, in_size[k] * n, SEEK_CUR) != 0)
            return 2;
    for (k = start; k < %(k)d; k++) {
        uint8_t *image = malloc((size_t)in_size[k]);
        int32_t *logits = malloc((size_t)classes[k] * sizeof *logits);
        if (image == NULL || logits == NULL)
            return 2;
        fprintf(stderr, "graph %%d\n", k);
        for (i = 0; i < n; i++)
            if (fread(image, 1, (size_t)in_size[k], in) != (size_t)in_size[k] || runs[k](image, logits) != 0
                || fwrite(logits, sizeof *logits, (size_t)classes[k], out) != (size_t)classes[k])
                return 1;
        free(image);
        free(logits);
        if (fflush(out) != 0)  /* the logits of finished graphs survive a later abort */
            return 1;
    }
    fclose(in);
    return fclose(out) == 0 ? 0 : 1;
}
"""


def build_c_many(graphs: list[IntGraph], workdir: Path, jobs: int = 2, flags: list[str] = SAN_FLAGS) -> Path:
    """Export every graph, compile them with ``flags`` in ``jobs`` parallel compiler runs and
    link them with the harness into one executable."""
    cc, k = find_compiler(), len(graphs)
    workdir.mkdir(parents=True, exist_ok=True)
    units = []
    for i, graph in enumerate(graphs):
        export_c(graph, workdir / f"g{i}", overlap=arena_overlap(i))
        units.append(workdir / f"m{i}.c")
        units[-1].write_text(f'#define fiqnn_run fiqnn_run_{i}\n#define fiqnn_run_batch fiqnn_run_batch_{i}\n'
                             f'#include "g{i}/model.c"\n')
    (workdir / "harness.c").write_text(_HARNESS % {
        "k": k, "decls": "\n".join(f"int fiqnn_run_{i}(const uint8_t *, int32_t *);" for i in range(k)),
        "runs": ", ".join(f"fiqnn_run_{i}" for i in range(k)),
        "in_size": ", ".join(str(int(np.prod(g.in_shape))) for g in graphs),
        "classes": ", ".join(str(g.num_classes) for g in graphs)})
    procs = [subprocess.Popen([cc, *flags, "-c", *map(str, units[j::jobs])], cwd=workdir, text=True,
                              stderr=subprocess.PIPE) for j in range(min(jobs, k))]
    errors = [err for p, err in ((p, p.communicate()[1]) for p in procs) if p.returncode]
    assert not errors, errors[0][-3000:]
    exe = workdir / "fuzz"
    subprocess.run([cc, *flags, "-o", str(exe), str(workdir / "harness.c"),
                    *(str(workdir / f"m{i}.o") for i in range(k))], check=True, capture_output=True)
    return exe


def run_c_many(exe: Path, graphs: list[IntGraph], inputs: list[np.ndarray]) -> tuple[list, dict[int, str]]:
    """The logits of every graph from the executable of :func:`build_c_many`, and the sanitizer
    report (or other failure) of each graph whose run failed; the run resumes after such a graph."""
    images, out = exe.with_name("images.u8"), exe.with_name("logits.i32")
    images.write_bytes(b"".join(np.ascontiguousarray(x).tobytes() for x in inputs))
    n = len(inputs[0])
    logits: list = [None] * len(graphs)
    failures: dict[int, str] = {}
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"}
    start = 0
    while start < len(graphs):
        res = subprocess.run([str(exe), str(images), str(out), str(n), str(start)], capture_output=True, text=True,
                             env=env)
        started = [int(k) for k in re.findall(r"^graph (\d+)$", res.stderr, re.M)]
        ok = res.returncode == 0 and not _reported(res.stderr)
        data, at = np.fromfile(out, dtype="<i4"), 0
        for k in started if ok else started[:-1]:
            logits[k] = data[at:at + n * graphs[k].num_classes].reshape(n, -1).astype(np.int32)
            at += n * graphs[k].num_classes
        if ok:
            break
        culprit = started[-1] if started else start
        report = res.stderr.split(f"graph {culprit}\n")[-1]  # what followed the culprit's marker
        failures[culprit] = f"exit {res.returncode}: {report[-3000:]}"
        start = culprit + 1
    return logits, failures


def _reported(stderr: str) -> bool:
    return "runtime error" in stderr or "Sanitizer" in stderr


@dataclass
class Verdict:
    """One graph's outcome: the backends whose logits differ from the oracle's, any backend
    that failed (an exception, or for C a sanitizer report or a crash), and the backends that
    did not check it, with why (not a failure)."""

    differs: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.differs or self.errors)

    @property
    def sanitizer(self) -> bool:
        return any(_reported(self.errors.get(name, "")) for name in C_BUILDS)


def arena_overlap(k: int) -> bool | None:
    """The C export's arena plan for the k-th graph of a batch: every other one takes each conv
    output over its input that is free of other tensors (export_c's overlap=True), which the
    smallest plan alone would rarely pick on small random graphs."""
    return True if k % 2 else None


class NotExportable(Exception):
    """A backend's exporter refuses the graph (an op it does not spell, a layer it cannot prove)."""


def refusal(error: Exception) -> str:
    """The first words of an exporter's refusal, up to its first number, parenthesis or semicolon, without
    node names: the same cause reads the same on every graph."""
    why = re.sub(r"\b(node|layer) \w+(, channel \d+)?: ", "", str(error))
    return " ".join(re.split(r"[(;]|(?<=[\s\[])-?\d", why)[0].split()[:16]).rstrip(",:[ ")


def litert_missing() -> str | None:
    """Why the LiteRT backend cannot run here (the tflite extra is not installed), or None."""
    try:
        for module in ("tflite", "flatbuffers", "ai_edge_litert.interpreter"):
            optional_import(module, "the litert fuzz backend")
    except MissingExtraError as e:
        return str(e)
    return None


def _litert(graph: IntGraph, x_q: np.ndarray) -> np.ndarray:
    """LiteRT's logits of ``graph`` exported for XNNPACK (layers it cannot prove in integer ops);
    NotExportable, with the reason, where the exporter refuses the graph."""
    from fiqnn.export.tflite import TFLiteExportError, run_litert, to_tflite

    try:
        data = to_tflite(graph, target="xnnpack", fallback="integer")[0]
    except TFLiteExportError as e:
        raise NotExportable(f"not exportable: {refusal(e)}") from e
    return run_litert(data, x_q)


def _python_backend(name: str, graph: IntGraph, x_q: np.ndarray, k: int = 0) -> np.ndarray:
    if name == LITERT:
        return _litert(graph, x_q)
    if name == CORTEX_M:  # one bare-metal build per graph, run under qemu-system-arm (no sanitizers there)
        from fiqnn.export.cortex_m import run_cortex_m

        return run_cortex_m(graph, x_q, overlap=arena_overlap(k))["logits"]
    return run(graph, x_q) if name == "numpy" else run_onnx(to_onnx(graph), x_q)


def check_graphs(graphs: list[IntGraph], inputs: list[np.ndarray], workdir: Path,
                 backends: tuple[str, ...] = BACKENDS, jobs: int = 2) -> list[Verdict]:
    """Run every graph on its inputs in the oracle and in ``backends`` (C: ``jobs`` compiler runs
    at a time; LiteRT skipped, on every graph, where it is not installed); one :class:`Verdict` per graph."""
    missing = litert_missing() if LITERT in backends else None
    if missing:
        backends = tuple(name for name in backends if name != LITERT)
    verdicts = [Verdict(skipped={LITERT: missing} if missing else {}) for _ in graphs]
    c_runs = {name: run_c_many(build_c_many(graphs, workdir / name, jobs, flags), graphs, inputs)
              for name, flags in C_BUILDS.items() if name in backends}  # name -> (logits, failures)
    for k, (graph, x_q, v) in enumerate(zip(graphs, inputs, verdicts)):
        expected = oracle.run(graph, x_q)
        got = {}
        for name in backends:
            try:
                got[name] = c_runs[name][0][k] if name in c_runs else _python_backend(name, graph, x_q, k)
            except NotExportable as e:
                v.skipped[name] = str(e)
            except Exception as e:  # a backend refusing a valid graph is a finding too
                v.errors[name] = f"{type(e).__name__}: {e}"
        for name, (_, failures) in c_runs.items():
            if k in failures:
                v.errors[name] = failures[k]
        v.differs = [name for name, y in got.items() if y is not None and y.tolist() != expected]
    return verdicts


def campaign_inputs(seed: int, graph: IntGraph, n: int) -> np.ndarray:
    return random_inputs(np.random.default_rng([seed, 1]), graph.in_shape, n)


needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) installed")


@pytest.fixture(scope="module")
def graphs() -> list[IntGraph]:
    return [random_graph(seed) for seed in SEEDS]


@needs_cc
def test_backends_agree_with_the_oracle_on_random_graphs(graphs, tmp_path):
    inputs = [campaign_inputs(seed, g, N_INPUTS) for seed, g in zip(SEEDS, graphs)]
    verdicts = check_graphs(graphs, inputs, tmp_path)
    bad = {seed: v for seed, v in zip(SEEDS, verdicts) if v}
    assert not bad, f"{len(bad)} of {len(graphs)} graphs disagree: {bad}"


def test_campaign_covers_every_op_and_feature(graphs):
    seen = sum((features(g) for g in graphs), Counter())
    assert [f for f in FEATURES if not seen[f]] == []


def c_kernel_paths(graph: IntGraph, overlap: bool | None = None) -> Counter:
    """Which code paths of the C export's conv kernels a graph's layers take (see c_kernels.py),
    exported with ``overlap`` (see :func:`arena_overlap`)."""
    from fiqnn.export import c_kernels as K
    from fiqnn.export.c99 import (
        code_bits,
        depthwise,
        kernel_codes,
        layer_shapes,
        overlapping,
        plan,
        simd32,
        simd32_kernels,
    )

    seen: Counter = Counter()
    for layer, ((c, _, _), _, _) in zip(graph.int_layers(), layer_shapes(graph).values()):
        if depthwise(layer):
            seen["depthwise"] += 1
            continue
        if layer.kind == "conv" and layer.groups != 1:
            seen["grouped, in place"] += 1
            continue
        n = layer.w_q[0].size
        seen["gemm, window < SMALL_K" if n < K.SMALL_K else "gemm, window >= SMALL_K"] += 1
        seen[f"gemm, W{code_bits(layer.w_bits)} stored"] += 1
        seen["gemm, signed input (VNNI: XOR 128)" if layer.in_signed else "gemm, unsigned input"] += 1
        if not layer.in_signed and layer.kind == "conv" and c % 4 == 0 and layer.dilation[1] == 1:
            seen["VNNI windows read in place"] += 1
        if len(layer.w_q) % 16:
            seen["output channels not a multiple of 16"] += 1
        if len(layer.w_q) >= 64:
            seen["64 channels or more (VNNI 4-block)"] += 1
        if layer.kind == "fc":
            seen["fc (one pixel)"] += 1
    arena = plan(graph, overlap)
    seen["conv output over its input (in place: row by row)"] += len(overlapping(graph, arena))
    kinds = {layer.name: simd32(layer, c) for layer, c in zip(graph.int_layers(), kernel_codes(graph))}
    bits = simd32_kernels(graph, kinds, arena["pixels"])
    for key, bit in K.SIMD32_KERNELS.items():
        if bits & bit:
            label = "in place" if key == "in place" else f"W{8 if key[0] == 1 else 4}, blocks of {key[1]}"
            seen[f"SIMD32: {label}"] += 1
    seen["SIMD32: windows across cells"] += sum(bool(k) and layer.w_q.shape[1] % (4 if k == 1 else 8) != 0
                                                for layer, k in zip(graph.int_layers(), kinds.values()))
    return seen


C_PATHS = ("depthwise", "grouped, in place", "gemm, window < SMALL_K", "gemm, window >= SMALL_K", "gemm, W2 stored",
           "gemm, W4 stored", "gemm, W8 stored", "gemm, signed input (VNNI: XOR 128)", "gemm, unsigned input",
           "VNNI windows read in place", "output channels not a multiple of 16", "fc (one pixel)",
           "conv output over its input (in place: row by row)")
# The Arm SIMD32 kernels (the emulated Cortex-M4 runs them: tests/test_export_arm.py, bench/fuzz_backends.py).
M4_PATHS = ("SIMD32: in place", "SIMD32: W8, blocks of 6", "SIMD32: W8, blocks of 4", "SIMD32: W8, blocks of 2",
            "SIMD32: W4, blocks of 6", "SIMD32: W4, blocks of 4", "SIMD32: W4, blocks of 2",
            "SIMD32: windows across cells")


def test_campaign_covers_every_c_kernel_path(graphs):
    seen = sum((c_kernel_paths(g, arena_overlap(k)) for k, g in enumerate(graphs)), Counter())
    assert [f for f in C_PATHS + M4_PATHS if not seen[f]] == []


def test_graphs_are_seeded(graphs):
    again = random_graph(SEEDS[3])
    assert [n.meta() for n in again.layers] == [n.meta() for n in graphs[3].layers]
    assert all(np.array_equal(a.w_q, b.w_q) for a, b in zip(again.int_layers(), graphs[3].int_layers()))


def test_a_broken_backend_is_caught(graphs, monkeypatch, tmp_path):
    """The campaign is not vacuous: numpy truncating instead of rounding (E3) is reported."""
    import fiqnn.integer.execute

    monkeypatch.setattr(fiqnn.integer.execute, "rshift_round", lambda x, s: np.asarray(x, np.int64) >> s)
    verdicts = check_graphs(graphs[:8], [campaign_inputs(s, g, 16) for s, g in zip(SEEDS, graphs[:8])], tmp_path,
                            backends=("numpy",))
    assert sum(v.differs == ["numpy"] for v in verdicts) >= 4


@pytest.fixture
def litert() -> None:
    """Skips the test where the LiteRT backend cannot run."""
    if missing := litert_missing():
        pytest.skip(missing)


def test_litert_checks_the_graphs_it_exports(graphs, litert, tmp_path):
    """LiteRT checks at least one graph, and every graph it skips has the exporter's reason."""
    verdicts = check_graphs(graphs, [campaign_inputs(s, g, 16) for s, g in zip(SEEDS, graphs)], tmp_path,
                            backends=(LITERT,))
    assert not any(verdicts)
    skipped = Counter(v.skipped[LITERT] for v in verdicts if LITERT in v.skipped)
    checked = len(graphs) - sum(skipped.values())
    assert checked >= 1 and all(why.startswith("not exportable: ") for why in skipped), \
        f"LiteRT checked {checked} of {len(graphs)} graphs; skipped: {dict(skipped)}"


@pytest.mark.parametrize("broken", ["a logit flipped", "an exception"])
def test_a_broken_litert_is_caught(graphs, litert, monkeypatch, tmp_path, broken):
    """A LiteRT result off in one logit is a mismatch of its graph, and an exception from run_litert an error."""
    import fiqnn.export.tflite as T

    real_run = T.run_litert

    def run_litert(data, x_q):
        if broken == "an exception":
            raise RuntimeError("invoke failed")
        y = real_run(data, x_q)
        y[-1, -1] ^= 1
        return y

    monkeypatch.setattr(T, "run_litert", run_litert)
    verdicts = check_graphs(graphs, [campaign_inputs(s, g, 16) for s, g in zip(SEEDS, graphs)], tmp_path,
                            backends=(LITERT,))
    checked = [v for v in verdicts if LITERT not in v.skipped]
    assert checked and all(v.differs == [LITERT] if broken == "a logit flipped" else
                           (not v.differs and list(v.errors) == [LITERT]) for v in checked)
    assert not any(v for v in verdicts if LITERT in v.skipped)


@needs_cc
def test_sanitizer_report_is_a_failure_of_its_graph(graphs, monkeypatch, tmp_path):
    """An arena one word short overflows under the sanitizers: the run fails on that graph and resumes after it."""
    import fiqnn.export.c99 as c99

    real_plan = c99.plan

    def portable(g):  # the arena without the Arm SIMD32 kernel's columns, which this build never touches
        with monkeypatch.context() as m:
            m.setattr(c99, "simd32_columns", lambda layer, pixels=2: 0)
            return real_plan(g, arena_overlap(1))["total"]

    def top_is_output(g):  # the arena's last word holds a node's output, which every build writes
        p, shapes = real_plan(g, arena_overlap(1)), c99.node_shapes(g)
        return any(isinstance(t, str) and t in shapes and c99._align(o + int(np.prod(shapes[t])) *
                   (4 if next(n for n in g.layers if n.name == t).a_bits is None else 1)) == p["total"]
                   for t, o in p["offset"].items())

    i = next(i for i in range(1, len(graphs)) if real_plan(graphs[i], arena_overlap(1))["total"] >= 16
             and portable(graphs[i]) == real_plan(graphs[i], arena_overlap(1))["total"]
             and top_is_output(graphs[i]))
    trio = graphs[i - 1:i + 2]
    def short(g, overlap=None):
        p = real_plan(g, overlap)
        return {**p, "total": p["total"] - 4 * (g is trio[1])}

    monkeypatch.setattr(c99, "plan", short)
    verdicts = check_graphs(trio, [campaign_inputs(s, g, 4) for s, g in enumerate(trio)], tmp_path, backends=("c",))
    assert [v.sanitizer for v in verdicts] == [False, True, False]
    # (ASan's report, or UBSan's object-size check where it sees the store first)
    assert re.search(r"AddressSanitizer: global-buffer-overflow|insufficient space for an object",
                     verdicts[1].errors["c"])


def _fc(name: str, o: int, i: int, in_bits: int, a_bits: int | None, rng) -> IntLayer:
    return IntLayer(name=name, kind="fc", w_q=rng.integers(-7, 8, (o, i)).astype(np.int8),
                    bias_q=rng.integers(-200, 200, o).astype(np.int32), mult=np.array([2**30], np.int32),
                    shift=np.array([38], np.int32), in_bits=in_bits, w_bits=4, a_bits=a_bits)


@needs_cc
def test_fc_output_feeds_a_conv_and_an_add(tmp_path):
    """Regression: the numpy executor returned an fc layer's output as (N, O), not the (O, 1, 1) map
    IntGraph gives it, so a conv reading it failed and an add of it and a conv's (O, 1, 1) output
    broadcast to (N, O, N, O); ONNX had the same shape."""
    from fiqnn.integer.graph import IntAdd

    rng = np.random.default_rng(0)
    conv = IntLayer(name="c", kind="conv", w_q=rng.integers(-7, 8, (4, 1, 2, 3)).astype(np.int8),
                    bias_q=np.zeros(4, np.int32), mult=np.array([2**30], np.int32), shift=np.array([38], np.int32),
                    in_bits=8, w_bits=4, a_bits=None, inputs=("input",))
    add = IntAdd(name="s", inputs=("f", "c"), mult=np.array([2**20, 2**20], np.int32), shift=np.array([30], np.int32),
                 a_bits=4)
    head = IntLayer(name="h", kind="conv", w_q=rng.integers(-7, 8, (3, 4, 1, 1)).astype(np.int8),
                    bias_q=np.zeros(3, np.int32), mult=np.array([2**30], np.int32), shift=np.array([30], np.int32),
                    in_bits=4, w_bits=4, a_bits=None)
    graph = IntGraph((1, 2, 3), 3, (_fc("f", 4, 6, 8, None, rng), conv, add, head))
    x_q = campaign_inputs(0, graph, 16)
    assert check_graphs([graph], [x_q], tmp_path) == [Verdict()]


def test_oracle_rshift_round_array_matches_the_scalar_definition():
    x = [3, -3, 5, -5, 6, 7, -6, -7, 1, 2**61, -(2**61), 9, 2**62 - 1, -(2**62) + 1]
    shifts = [1, 1, 1, 1, 2, 2, 2, 2, 62, 62, 62, 0, 61, 61]
    got = oracle.rshift_round_array(np.array(x, dtype=object), np.array(shifts, dtype=object))
    assert got.tolist() == [oracle.rshift_round(v, s) for v, s in zip(x, shifts)]
    assert got.tolist()[:12] == [2, -1, 3, -2, 2, 2, -1, -2, 0, 1, 0, 9]  # the worked table of (E3)
