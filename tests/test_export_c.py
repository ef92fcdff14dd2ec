"""C99 export: builds under strict flags, runs clean, and equals the numpy executor bit for bit."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from fiqnn.convert import convert
from fiqnn.execute import run
from fiqnn.export.c99 import CFLAGS, CompilerError, build_c, export_c, footprint, packed_weights, run_c

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


def test_four_bit_packing_halves_weight_bytes(graph_of, digits):
    g4, g8 = graph_of(4), graph_of(8)
    inner4 = [packed_weights(layer).nbytes for layer in g4.layers[1:-1]]
    inner8 = [packed_weights(layer).nbytes for layer in g8.layers[1:-1]]
    assert all(a * 2 == b for a, b in zip(inner4, inner8))  # inner layers; first/last stay 8-bit
    assert footprint(g4)["weight_bytes"] < footprint(g8)["weight_bytes"]


def test_packed_nibbles_round_trip():
    from tests.test_graph import _layer

    w = np.array([[-7, -1, 0, 1, 7], [3, -3, 5, -5, 6]], np.int8)
    b = packed_weights(_layer(w=w, w_bits=4))
    nib = np.stack([b & 15, b >> 4], 1).reshape(-1)[:10].astype(np.int16)
    assert ((nib ^ 8) - 8).tolist() == w.reshape(-1).tolist()


def test_missing_compiler_is_a_clear_error(graph_of, digits, tmp_path):
    with pytest.raises(CompilerError, match="no C compiler found"):
        build_c(export_c(graph_of(4), tmp_path), cc="no-such-cc")
