"""C99 export: builds under strict flags, runs clean, and equals the numpy executor bit for bit."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from fiqnn.export.c99 import CFLAGS, CompilerError, build_c, export_c, footprint, packed_weights, plan, run_c
from fiqnn.integer.execute import run
from fiqnn.integer.graph import IntGraph
from fiqnn.train.convert import convert
from tests.graphgen import random_graph, renamed

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) installed")


@pytest.fixture
def graph_of(fold_student):
    return lambda bits=4, scale="per-layer": convert(fold_student(bits, scale))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_c_bit_exact_on_whole_test_set(graph_of, digits, bits, scale):
    graph = graph_of(bits, scale)
    x_q = digits[1].test.x_q
    assert np.array_equal(run_c(graph, x_q), run(graph, x_q))


def _native_has(macro: str) -> bool:
    """Whether ``cc -march=native`` defines the predefined macro (an ISA extension of this CPU)."""
    out = subprocess.run(["cc", "-march=native", "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True, text=True)
    return out.returncode == 0 and f"#define {macro} " in out.stdout


# Every kernel family of the C export an x86 host can build: the in-place kernels (FIQNN_COLS 0,
# what a scalar microcontroller runs), the int16 GEMM (16, the x86-64 default), the int8 GEMM
# (8) in plain C, with -march=native whatever this CPU selects (VNNI intrinsics where it has them),
# and the compact kernels of a build for size (-Os).
VARIANTS = {"in-place": ["-DFIQNN_COLS=0"], "int16 gemm": ["-DFIQNN_COLS=16"], "int8 gemm": ["-DFIQNN_COLS=8"],
            "native": ["-march=native"], "native, no intrinsics": ["-march=native", "-DFIQNN_NO_INTRINSICS"],
            "compact": ["-Os"]}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("bits,scale", [(2, "per-layer"), (4, "per-channel"), (8, "per-layer")])
def test_every_kernel_variant_is_exact(graph_of, digits, bits, scale, variant):
    graph = graph_of(bits, scale)
    x_q = digits[1].test.x_q
    assert np.array_equal(run_c(graph, x_q, flags=[*CFLAGS, *VARIANTS[variant]]), run(graph, x_q))


def overlap_graph(seed: int = 0) -> IntGraph:
    """A chain of convs on maps of 576 and 144 pixels (more than a GEMM block of 32), packed and int8
    weights, stride 1 and 2: outputs that can overwrite their inputs' rows already read."""
    from tests.test_export_ops import _layer

    rng = np.random.default_rng(seed)
    layers = (_layer(rng, "c1", "conv", (8, 1, 3, 3), 8, 8, 4, padding=(1, 1)),
              _layer(rng, "c2", "conv", (16, 8, 3, 3), 4, 4, 4, padding=(1, 1)),
              _layer(rng, "c3", "conv", (12, 16, 3, 3), 4, 8, 8, padding=(1, 1), stride=(2, 2)),
              _layer(rng, "c4", "conv", (12, 12, 3, 3), 8, 2, 3, padding=(1, 1)),
              _layer(rng, "fc", "fc", (5, 12 * 12 * 12), 3, 8, None))
    return IntGraph((1, 24, 24), 5, layers)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_over_their_inputs_are_exact(variant):
    """Every kernel family on a plan that puts each conv's output over its input's rows already
    read (export_c's overlap=True): numpy's logits; and such a plan is smaller."""
    from fiqnn.export.c99 import overlapping, plan

    graph = overlap_graph()
    assert overlapping(graph, plan(graph, True)) == {"c2", "c3", "c4"}
    assert plan(graph, True)["total"] < plan(graph, False)["total"]
    x_q = np.random.default_rng(1).integers(0, 256, (64, 1, 24, 24), dtype=np.uint8)
    assert np.array_equal(run_c(graph, x_q, flags=[*CFLAGS, *VARIANTS[variant]], overlap=True), run(graph, x_q))


@pytest.mark.skipif(not _native_has("__AVX512VNNI__"), reason="this CPU has no AVX-512 VNNI")
def test_vnni_kernel_is_selected_and_exact(graph_of, digits, tmp_path):
    """On a VNNI CPU, -march=native compiles the VPDPBUSD kernel (FIQNN_VNNI 1) and it is exact,
    also for a layer reading signed codes (the XOR 128 correction) and a per-channel layer."""
    graph = graph_of(4, "per-channel")
    src = export_c(graph, tmp_path)
    probe = subprocess.run(["cc", *CFLAGS, "-march=native", "-E", "-dM", str(src / "model.c")], capture_output=True,
                           text=True, check=True).stdout
    assert "#define FIQNN_VNNI 1" in probe
    x_q = digits[1].test.x_q
    assert np.array_equal(run_c(graph, x_q, flags=[*CFLAGS, "-march=native"]), run(graph, x_q))


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_clang_builds_and_agrees(graph_of, digits):
    graph = graph_of(3)
    x_q = digits[1].test.x_q[:50]
    assert np.array_equal(run_c(graph, x_q, cc="clang"), run(graph, x_q))


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
def test_harness_clean_under_valgrind(graph_of, digits, tmp_path):
    graph = graph_of(4)
    exe = build_c(export_c(graph, tmp_path), flags=[*CFLAGS[:1], "-O0", "-g", *CFLAGS[2:]])
    digits[1].test.x_q[:5].tofile(tmp_path / "in.u8")
    res = subprocess.run(["valgrind", "--error-exitcode=9", "--leak-check=full", "--errors-for-leak-kinds=all",
                          str(exe), str(tmp_path / "in.u8"), str(tmp_path / "out.i32")], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-1500:]
    assert "ERROR SUMMARY: 0 errors" in res.stderr
    assert np.array_equal(np.fromfile(tmp_path / "out.i32", "<i4").reshape(5, 10), run(graph, digits[1].test.x_q[:5]))


def test_source_has_no_float_no_malloc(graph_of, digits, tmp_path):
    export_c(graph_of(4), tmp_path)
    for name in ("model.c", "model.h", "fiqnn_arith.h"):
        text = re.sub(r"/\*.*?\*/", "", (tmp_path / name).read_text(), flags=re.S)  # code, not comments
        for word in ("float", "double", "malloc", "math.h", "calloc"):
            assert word not in text, (name, word)


def test_packing_halves_and_quarters_weight_bytes(graph_of, digits):
    g2, g4, g8 = graph_of(2), graph_of(4), graph_of(8)
    inner = {b: [packed_weights(layer).nbytes for layer in g.layers[1:-1]] for b, g in ((2, g2), (4, g4), (8, g8))}
    assert all(2 * a4 == a8 and 4 * a2 == a8 for a2, a4, a8 in zip(inner[2], inner[4], inner[8]))  # first/last: int8
    assert footprint(g2)["weight_bytes"] < footprint(g4)["weight_bytes"] < footprint(g8)["weight_bytes"]


@pytest.mark.parametrize(("w_bits", "w"), [
    (4, [[-7, -1, 0, 1, 7], [3, -3, 5, -5, 6]]),
    (3, [[-3, 3, 0], [1, -2, 2]]),
    (2, [[-1, 0, 1, 1, -1, 0, 1], [1, 1, -1, 0, 0, -1, 1]]),
])
def test_packed_codes_round_trip_row_by_row(w_bits, w):
    from tests.test_graph import _layer

    w = np.array(w, np.int8)
    b = packed_weights(_layer(w=w, w_bits=w_bits))
    bits = 2 if w_bits == 2 else 4
    per = 8 // bits
    row_bytes = -(-w.shape[1] // per)
    assert b.nbytes == len(w) * row_bytes  # every output channel's row starts on a byte
    for o, row in enumerate(w):
        fields = [(int(byte) >> (bits * k)) & ((1 << bits) - 1) for byte in b[o * row_bytes:(o + 1) * row_bytes]
                  for k in range(per)]
        codes = [(f ^ (1 << (bits - 1))) - (1 << (bits - 1)) for f in fields]
        assert codes[:len(row)] == row.tolist() and not any(codes[len(row):])


def test_missing_compiler_is_a_clear_error(graph_of, digits, tmp_path):
    with pytest.raises(CompilerError, match="no C compiler found"):
        build_c(export_c(graph_of(4), tmp_path), cc="no-such-cc")


def test_arena_holds_a_weight_row_of_any_length():
    """Regression: the arena was declared as total // 4 int32 words, dropping the last bytes of a
    weight row whose length is not a multiple of 4 (here a W4 fc layer with 5 inputs: a 5-byte
    row): a store past the arena, which UBSan (object size) and ASan (global-buffer-overflow) report."""
    from tests.test_fuzz import SAN_FLAGS
    from tests.test_graph import _layer

    w = np.array([[-7, -1, 0, 1, 7], [3, -3, 5, -5, 6], [1, 2, 3, 4, 5]], np.int8)
    graph = IntGraph((1, 1, 5), 3, (_layer(w=w, w_bits=4),))
    assert plan(graph)["offset"][graph.layers[0].name, "scratch"] == 0 and plan(graph)["total"] == 16  # 3 rows of 5
    x_q = np.random.default_rng(0).integers(0, 256, (8, 1, 1, 5)).astype(np.uint8)
    assert np.array_equal(run_c(graph, x_q, flags=SAN_FLAGS), run(graph, x_q))


def test_no_node_name_reaches_the_c_source(tmp_path):
    """Node names come from model files: the C export pastes none of them into C text (its
    comments name nodes by index), so no name can inject code."""
    from tests.test_export_ops import ops_graph, residual_graph

    for i, graph in enumerate((ops_graph(0, 4), residual_graph(0, 4), random_graph(3))):
        out = export_c(renamed(graph, "zz_marker_name"), tmp_path / str(i))
        for f in out.iterdir():
            assert "zz_marker" not in f.read_text(), f.name
    assert "/* node 8 (add) <- node 7, node 4 */" in (out.parent / "1" / "model.c").read_text()


BATCH_MAIN = r"""#include <stdio.h>
#include "model.h"

/* All images of argv[1] in one fiqnn_run_batch call; n < 0 must be refused. */
int main(int argc, char **argv)
{
    static uint8_t images[64 * FIQNN_INPUT_SIZE];
    static int32_t logits[64 * FIQNN_NUM_CLASSES];
    FILE *in, *out;
    long n;
    if (argc != 3 || (in = fopen(argv[1], "rb")) == NULL || (out = fopen(argv[2], "wb")) == NULL)
        return 2;
    n = (long)(fread(images, FIQNN_INPUT_SIZE, 64, in));
    if (fiqnn_run_batch(images, -1, logits) != -1 || fiqnn_run_batch(images, n, logits) != 0)
        return 1;
    fwrite(logits, sizeof logits[0], (size_t)(n * FIQNN_NUM_CLASSES), out);
    return fclose(out) == 0 ? 0 : 1;
}
"""


def test_run_batch_equals_one_image_at_a_time(graph_of, digits, tmp_path):
    graph = graph_of(4)
    x_q = digits[1].test.x_q[:37]
    (export_c(graph, tmp_path) / "main.c").write_text(BATCH_MAIN)
    exe = build_c(tmp_path)
    x_q.tofile(tmp_path / "in.u8")
    subprocess.run([str(exe), str(tmp_path / "in.u8"), str(tmp_path / "out.i32")], check=True)
    assert np.array_equal(np.fromfile(tmp_path / "out.i32", "<i4").reshape(37, -1), run(graph, x_q))


def test_wide_fc_on_signed_codes_under_sanitizers():
    """The GEMM kernels' other corners, under ASan and UBSan: an fc of 70 outputs (past 64 and not
    a multiple of 16: the VNNI kernel's four-block and tail paths for one pixel) reading signed
    codes (its XOR 128 correction), behind a per-channel conv writing signed codes, at -O2 with
    -march=native (whatever this CPU selects) and at the x86-64 default."""
    from fiqnn.integer.graph import IntLayer
    from tests.test_fuzz import SAN_FLAGS

    rng = np.random.default_rng(7)
    conv = IntLayer(name="c", kind="conv", w_q=rng.integers(-127, 128, (8, 1, 3, 3)).astype(np.int8),
                    bias_q=rng.integers(-500, 500, 8).astype(np.int32), mult=np.full(8, 2**30, np.int32),
                    shift=rng.integers(36, 40, 8).astype(np.int32), in_bits=8, w_bits=8, a_bits=6, signed=True,
                    padding=(1, 1))
    fc1 = IntLayer(name="f", kind="fc", w_q=rng.integers(-7, 8, (70, 8 * 6 * 6)).astype(np.int8),
                   bias_q=rng.integers(-300, 300, 70).astype(np.int32), mult=np.array([2**30], np.int32),
                   shift=np.array([38], np.int32), in_bits=6, in_signed=True, w_bits=4, a_bits=5, signed=True)
    fc2 = IntLayer(name="g", kind="fc", w_q=rng.integers(-127, 128, (10, 70)).astype(np.int8),
                   bias_q=np.zeros(10, np.int32), mult=np.array([2**30], np.int32), shift=np.array([31], np.int32),
                   in_bits=5, in_signed=True, w_bits=8, a_bits=None)
    graph = IntGraph((1, 6, 6), 10, (conv, fc1, fc2))
    x_q = rng.integers(0, 256, (16, 1, 6, 6)).astype(np.uint8)
    ref = run(graph, x_q)
    assert len(np.unique(ref)) > 50  # the codes are not all clamped
    native = [f for f in SAN_FLAGS if f != "-O1"] + ["-O2", "-march=native"]
    for flags in (SAN_FLAGS, native, [*native, "-DFIQNN_NO_INTRINSICS"]):
        assert np.array_equal(run_c(graph, x_q, flags=flags), ref)
