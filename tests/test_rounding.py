"""(E4d) double rounding, the model file's other (E4) rounding: every backend computes it, the
model file and the torch student carry it, and LiteRT's builtin kernels and TFLite Micro compute
a double-rounded student exactly (docs/arithmetic.md)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest

from fiqnn.export.c99 import CFLAGS, run_c
from fiqnn.integer.execute import run
from fiqnn.integer.graph import IntGraph, IntLayer
from fiqnn.integer.modelfile import load, save
from fiqnn.integer.nodes import ModelFileError
from fiqnn.train.convert import convert
from tests import oracle

HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("tflite") is not None
HAS_TFLM = importlib.util.find_spec("tflite_micro") is not None and importlib.util.find_spec("tflite") is not None


def _layer(rng, name, kind, w_shape, in_bits, a_bits, signed, shift, in_signed=False, per_channel=True, **kw):
    o = w_shape[0]
    w = rng.integers(-3, 4, size=w_shape).astype(np.int8)
    n = len(shift) if per_channel else 1
    return IntLayer(name=name, kind=kind, w_q=w, bias_q=rng.integers(-40, 40, size=o).astype(np.int32),
                    mult=np.full(n, 2**30, np.int32), shift=np.array(shift[:n], np.int32), in_bits=in_bits,
                    w_bits=3, a_bits=a_bits, signed=signed, in_signed=in_signed, rounding="double", **kw)


def tie_graph(seed: int = 0) -> IntGraph:
    """Power-of-two scales (exact ties at both roundings), unsigned and signed codes, shifts on both
    sides of 31: where single and double rounding differ most."""
    rng = np.random.default_rng(seed)
    a = _layer(rng, "a", "conv", (4, 1, 3, 3), 8, 4, False, [34, 35, 36, 33], padding=(1, 1))
    b = _layer(rng, "b", "conv", (4, 4, 3, 3), 4, 8, True, [32, 33, 31, 34])
    c = _layer(rng, "c", "conv", (6, 4, 1, 1), 8, 4, False, [33, 34, 32, 35, 36, 33], in_signed=True)
    d = IntLayer(name="d", kind="fc", w_q=rng.integers(-3, 4, size=(5, 6 * 4 * 4)).astype(np.int8),
                 bias_q=np.zeros(5, np.int32), mult=np.array([2**30], np.int32), shift=np.array([30], np.int32),
                 in_bits=4, w_bits=3, a_bits=None)
    return IntGraph((1, 6, 6), 5, (a, b, c, d))


def single(graph: IntGraph) -> IntGraph:
    return IntGraph(graph.in_shape, graph.num_classes,
                    tuple(replace(n, rounding="single") if isinstance(n, IntLayer) else n for n in graph.layers))


@pytest.fixture(scope="module")
def ties():
    graph = tie_graph()
    x_q = np.random.default_rng(1).integers(0, 256, size=(64, 1, 6, 6), dtype=np.uint8)
    want = np.array(oracle.run(graph, x_q), np.int64)
    # the check can fail: single rounding gives other logits on these inputs
    assert (run(single(graph), x_q) != want).any(axis=1).sum() >= 16
    return graph, x_q, want


def test_numpy_equals_the_gemmlowp_oracle(ties):
    graph, x_q, want = ties
    assert np.array_equal(run(graph, x_q), want)


@pytest.mark.parametrize("flags", [[], ["-march=native"], ["-DFIQNN_PORTABLE"]])
def test_compiled_c_equals_the_oracle(ties, flags):
    graph, x_q, want = ties
    assert np.array_equal(run_c(graph, x_q, flags=CFLAGS + flags), want)


def test_onnx_and_qonnx_equal_the_oracle(ties):
    pytest.importorskip("onnxruntime")
    from fiqnn.export.onnx import run_onnx

    graph, x_q, want = ties
    assert np.array_equal(run_onnx(graph, x_q), want)
    if importlib.util.find_spec("qonnx") is not None:
        from fiqnn.export.qonnx import run_qonnx

        assert np.array_equal(run_qonnx(graph, x_q[:16]), want[:16])


def test_model_file_carries_the_rounding(ties, tmp_path):
    graph = ties[0]
    assert graph.arith_version == 3 and single(graph).arith_version == 2  # (signed codes: version 2)
    save(graph, tmp_path / "m.npz")
    back = load(tmp_path / "m.npz")
    assert [n.rounding for n in back.layers] == ["double", "double", "double", "single"]
    with pytest.raises(ModelFileError, match="double rounding .* ARITH_VERSION 3"):
        IntGraph(graph.in_shape, graph.num_classes, graph.layers, arith_version=2)


def test_double_rounding_is_refused_where_it_cannot_hold():
    rng = np.random.default_rng(0)
    with pytest.raises(ModelFileError, match="has no \\(E4\\)"):  # accumulators are never rounded
        replace(tie_graph().layers[-1], rounding="double")
    with pytest.raises(ModelFileError, match="shifts the accumulator left"):  # TFLite's int32 left shift
        _layer(rng, "a", "conv", (2, 1, 3, 3), 8, 4, False, [5, 5])
    with pytest.raises(ModelFileError, match="rounding must be one of"):
        replace(tie_graph().layers[0], rounding="triple")


def test_torch_student_converts_and_computes_double_rounding(fold_student, digits):
    student = fold_student(4, "per-channel", "double")
    graph = convert(student)
    layers = [n for n in graph.layers if isinstance(n, IntLayer) and n.a_bits is not None]
    assert layers and all(n.rounding == "double" for n in layers)
    assert all((n.mult % 128 == 0).all() for n in layers)  # 24-bit multipliers: float32 scales
    x_q = digits[1].test.x_q
    import torch

    with torch.no_grad():
        t = student.eval()(torch.from_numpy(x_q)).double().numpy()
    n = run(graph, x_q)
    assert np.array_equal(t.astype(np.int64), n)


@pytest.mark.skipif(not HAS_LITERT, reason="needs the tflite extra (tflite, ai-edge-litert)")
@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_double_rounded_digits_students_are_proven_and_exact_in_builtin_and_tflm(fold_student, digits, bits, scale):
    """Acceptance of the double-rounding choice: every layer proven for LiteRT's builtin kernels and
    TFLite Micro, and their logits numpy's on all 360 digits test images."""
    from fiqnn.export import tflite

    graph = convert(fold_student(bits, scale, "double"))
    x_q = digits[1].test.x_q
    ref = run(graph, x_q)
    for target in ("builtin", "tflm"):
        assert tflite.unproven(tflite.prove(graph, target)) == [], target
    assert np.array_equal(tflite.run_litert(graph, x_q, target="builtin"), ref)
    if HAS_TFLM:
        assert np.array_equal(tflite.run_tflm(graph, x_q), ref)


@pytest.mark.skipif(not HAS_TFLM, reason="needs the tflm extra (tflite-micro)")
def test_tflm_logits_by_adds_on_odd_widths(ties):
    """The tflm spelling of int32 logits (CAST, MUL, halving ADDs) on a width that is odd at some level."""
    from fiqnn.export import tflite

    graph, x_q, want = ties
    assert graph.layers[-1].w_q.shape[1] == 96  # 96 -> 48 -> 24 -> 12 -> 6 -> 3 (odd) -> 1
    assert np.array_equal(tflite.run_tflm(graph, x_q), want)


def test_onnx_int64_path_of_a_wide_double_rounded_layer():
    """A layer whose accumulators span more than 2^31 values (no int32 table): ONNX's int64 chain
    adds (E4d)'s offset by the product's side of -2^30 (signed codes: both sides occur)."""
    pytest.importorskip("onnxruntime")
    from fiqnn.export.onnx import openvino_unsafe_nodes, run_onnx

    n = 260 * 260
    w = np.where(np.arange(n) % 2, 127, -127).astype(np.int8)[None].repeat(2, 0)
    w[1] *= -1
    wide = IntLayer(name="wide", kind="fc", w_q=w, bias_q=np.zeros(2, np.int32), mult=np.full(2, 2**30, np.int32),
                    shift=np.array([55, 56], np.int32), in_bits=8, w_bits=8, a_bits=8, signed=True, rounding="double")
    out = IntLayer(name="out", kind="fc", w_q=np.eye(2, dtype=np.int8), bias_q=np.zeros(2, np.int32),
                   mult=np.array([2**30], np.int32), shift=np.array([30], np.int32), in_bits=8, w_bits=2,
                   a_bits=None, in_signed=True)
    graph = IntGraph((1, 260, 260), 2, (wide, out))
    rng = np.random.default_rng(3)
    x_q = np.zeros((6, 1, 260, 260), np.uint8)
    x_q[:, 0].reshape(6, -1)[:, 0::2] = rng.integers(0, 256, size=(6, 1), dtype=np.uint8)  # drive acc far from 0
    x_q[:, 0].reshape(6, -1)[:, 1::2] = rng.integers(0, 256, size=(6, 1), dtype=np.uint8)
    assert "wide" in openvino_unsafe_nodes(graph)  # the layers spelled in int64
    want = np.array(oracle.run(graph, x_q), np.int64)
    assert np.array_equal(run(graph, x_q), want)
    assert np.array_equal(run_onnx(graph, x_q), want)
    assert len(np.unique(want)) > 2  # codes of both signs and several values



@pytest.mark.parametrize("bits", [4, 8])
def test_cortex_m_computes_double_rounding(fold_student, digits, ties, bits):
    """Emulated Cortex-M3 (portable C) and M4 (SIMD32 kernels, whose SMULL requantization adds (E4d)'s
    2^30): a double-rounded digits student on all 360 test images, and the tie graph, signed codes too."""
    from fiqnn.export import cortex_m

    if cortex_m.available() is not None:
        pytest.skip(str(cortex_m.available()))
    graph = convert(fold_student(bits, "per-channel", "double"))
    x_q = digits[1].test.x_q
    ref = run(graph, x_q)
    tie_graph_, tie_x, want = ties
    for cpu in ("cortex-m3", "cortex-m4"):
        assert np.array_equal(cortex_m.run_cortex_m(graph, x_q, cpu=cpu)["logits"], ref), cpu
        assert np.array_equal(cortex_m.run_cortex_m(tie_graph_, tie_x, cpu=cpu)["logits"], want), cpu


@pytest.mark.skipif(not HAS_LITERT, reason="needs the tflite extra (tflite, ai-edge-litert)")
def test_litert_integer_fallback_of_double_rounded_layers():
    """The fuzzer's graphs 145 (an unsigned double-rounded layer XNNPACK cannot prove: the integer
    fallback adds (E4d)'s 2^30) and 149 (a signed one: refused, the offset depends on the sign)."""
    from fiqnn.export import tflite
    from tests.graphgen import random_graph
    from tests.test_fuzz import campaign_inputs

    graph = random_graph(145)
    plan = tflite.integer_fallback(graph)
    assert any(plan.steps[name].layer.rounding == "double" for name in plan.fallbacks)
    x_q = campaign_inputs(145, graph, 64)
    data, _ = tflite.to_tflite(graph, fallback="integer")
    assert np.array_equal(tflite.run_litert(data, x_q), np.array(oracle.run(graph, x_q)))
    with pytest.raises(tflite.TFLiteExportError, match="cannot spell double rounding"):
        tflite.to_tflite(random_graph(149), fallback="integer")
