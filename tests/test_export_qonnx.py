"""QONNX export: qonnx's own executor (execute_onnx on a ModelWrapper) equals the numpy executor bit
for bit, with MultiThreshold nodes in place of every requantization; what it cannot spell is refused."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("qonnx")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from fiqnn.export import qonnx as Q  # noqa: E402
from fiqnn.integer.arith import quantize_multiplier, requantize  # noqa: E402
from fiqnn.integer.execute import run  # noqa: E402
from fiqnn.integer.graph import IntAvgPool, IntGraph, IntLayer, IntLut  # noqa: E402
from fiqnn.train.convert import convert  # noqa: E402
from tests.graphgen import random_graph, random_inputs  # noqa: E402
from tests.test_export_ops import _layer, residual_graph  # noqa: E402


def _one_line(e: pytest.ExceptionInfo | Exception) -> str:
    msg = str(getattr(e, "value", e))
    assert "\n" not in msg
    return msg


@pytest.fixture
def no_sanitize(monkeypatch):
    """qonnx's executor rounds integer-annotated tensors that are not integers; turn that off, so
    that equality shows the arithmetic itself is exact."""
    monkeypatch.setenv("SANITIZE_QUANT_TENSORS", "0")


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_qonnx_executor_bit_exact_on_digits(digits, fold_student, bits, scale, tmp_path, no_sanitize):
    data = digits[1]
    graph = convert(fold_student(bits, scale))
    path = Q.export_qonnx(graph, tmp_path / "m.onnx")
    assert path == tmp_path / "m.onnx" and list(tmp_path.iterdir()) == [path]  # no temporary file left
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "Quant" not in ops
    assert ops.count("MultiThreshold") == sum(1 for n in graph.layers if n.a_bits is not None)
    assert all(n.domain == "qonnx.custom_op.general" for n in model.graph.node if n.op_type == "MultiThreshold")
    got = Q.run_qonnx(path, data.test.x_q)
    assert got.dtype == np.int32 and got.shape == (360, 10)
    assert np.array_equal(got, run(graph, data.test.x_q))
    assert all(c.holds for c in Q.prove_qonnx(graph))


def test_datatypes_are_annotated(fold_student):
    from qonnx.core.modelwrapper import ModelWrapper

    graph = convert(fold_student(3, "per-channel"))
    mw = ModelWrapper(Q.to_qonnx(graph))
    assert mw.get_tensor_datatype("x_q").name == "UINT8"
    assert mw.get_tensor_datatype("logits").name == "INT32"
    mts = [n for n in mw.graph.node if n.op_type == "MultiThreshold"]
    assert {mw.get_tensor_datatype(n.output[0]).name for n in mts} == {"UINT3"}
    weights = [n.input[1] for n in mw.graph.node if n.op_type in ("Conv", "MatMul")]
    assert [mw.get_tensor_datatype(w).name for w in weights] == [f"INT{n.w_bits}" for n in graph.int_layers()]
    t = numpy_helper.to_array(next(i for i in mw.graph.initializer if i.name == mts[0].input[1]))
    assert t.shape[1] == 7 and (np.diff(t, axis=1) >= 0).all()  # 2^3 - 1 sorted thresholds per channel


@pytest.mark.parametrize("w_bits", [2, 4, 8])
def test_residual_graph(w_bits):
    graph = residual_graph(10 + w_bits, w_bits)
    images = np.random.default_rng(2).integers(0, 256, (48, 3, 9, 10)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*rounded.*")  # sanitizing never has anything to round
        got = Q.run_qonnx(graph, images, batch_size=20)
    assert np.array_equal(got, run(graph, images))
    dtypes = {c.node: c.dtype for c in Q.prove_qonnx(graph) if c.node.startswith("add")}
    assert dtypes == {"add1": "float64", "add2": "float64"}  # v * mult beyond 2^24, below 2^53


@pytest.mark.parametrize("signed", [False, True])
def test_thresholds_equal_requantize_on_every_value(signed):
    """MultiThreshold's count with the exported T_k is (E4) on a whole range, at every kind of pair."""
    rng = np.random.default_rng(int(signed))
    a = np.arange(-40000, 40001)
    pairs = [(2**30, 30), (2**30, 0), (1, 0), (2**31 - 1, 62), (3, 1), (2**30, 35)]
    pairs += [quantize_multiplier(float(v)) for v in rng.uniform(1e-4, 1e-2, 6)]
    for bits in (2, 4, 8):
        lo = -(2 ** (bits - 1)) if signed else 0
        for mult, shift in pairs:
            t = np.array(Q.thresholds(mult, shift, lo, lo + 2**bits - 1, a[0], a[-1]))
            assert (np.diff(t) >= 0).all() and t.min() >= a[0] and t.max() <= a[-1] + 1
            count = lo + (a[:, None] >= t[None, :]).sum(axis=1)
            assert np.array_equal(count, requantize(a, mult, shift, bits, signed).astype(np.int64)), (mult, shift)


def test_wrong_threshold_changes_the_result(digits, fold_student):
    """Move one threshold of the last hidden layer just past an accumulator it is met by: that code
    drops by one and the logits change; so the equality above is not vacuous."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    x = digits[1].test.x_q[:40]
    graph = convert(fold_student(4, "per-channel"))
    model = Q.to_qonnx(graph)
    mt = [n for n in model.graph.node if n.op_type == "MultiThreshold"][-1]
    context = execute_onnx(ModelWrapper(Q._with_batch(model, len(x))), {"x_q": x.astype(np.float32)}, True)
    acc, codes = context[mt.input[0]], context[mt.output[0]]  # (40, C) for the fc before the logits
    logits_w = graph.layers[-1].w_q
    i, c = next((i, c) for i, c in zip(*np.nonzero(codes > 0)) if logits_w[:, c].any())
    init = next(t for t in model.graph.initializer if t.name == mt.input[1])
    table = numpy_helper.to_array(init).copy()
    k = int(codes[i, c]) - 1  # code = #{k : acc >= T_k}, so T_k <= acc < T_(k+1)
    assert table[c, k] <= acc[i, c] < (table[c, k + 1] if k + 1 < table.shape[1] else np.inf)
    table[c, k] = acc[i, c] + 1
    init.CopyFrom(numpy_helper.from_array(table, init.name))
    got = Q.run_qonnx(model, x)
    ref = run(graph, x)
    assert not np.array_equal(got[i], ref[i])
    assert np.array_equal(got[i], ref[i] - logits_w[:, c].astype(np.int32))  # exactly one code less


def test_wide_accumulators_use_float64_exactly():
    """A conv and an fc whose (E6) bounds pass 2^24: float32 Convs over input-channel chunks summed in
    float64, a float64 MatMul; still bit exact."""
    rng = np.random.default_rng(0)
    def extreme(layer, **changes):  # every weight +-127
        w = (127 * rng.choice([-1, 1], layer.w_q.shape)).astype(np.int8)
        return IntLayer(**{**layer.__dict__, "w_q": w, **changes})

    conv = _layer(rng, "wide", "conv", (6, 128, 3, 3), 8, 8, 8, padding=(1, 1))
    conv = extreme(conv, shift=(conv.shift + 3).astype(np.int32))
    fc = extreme(_layer(rng, "fc", "fc", (5, 6 * 4 * 4), 8, 8, 8), bias_q=np.full(5, 2**24, np.int32))
    out = _layer(rng, "out", "fc", (3, 5), 8, 8, None)
    graph = IntGraph((128, 4, 4), 3, (conv, fc, out))
    assert conv.acc_bound() > 2**24 and fc.acc_bound() > 2**24
    claims = Q.prove_qonnx(graph)
    assert {c.dtype for c in claims if c.node in ("wide", "fc")} == {"float32", "float64"}
    images = rng.integers(0, 256, (32, 128, 4, 4)).astype(np.uint8)
    codes = {}
    ref = run(graph, images, trace=lambda name, a: codes.setdefault(name, a))
    assert len(np.unique(codes["wide"])) > 8
    assert np.array_equal(Q.run_qonnx(graph, images), ref)


def test_random_graphs_are_exact_or_refused():
    """The fuzzer's graphs (every node kind, extreme pairs, adds at the (E9) limit): equal, or refused
    only for a non-monotone lookup table."""
    exact = 0
    for seed in range(40):
        graph = random_graph(seed)
        x = random_inputs(np.random.default_rng(seed), graph.in_shape, 12)
        try:
            got = Q.run_qonnx(graph, x)
        except Q.QONNXExportError as e:
            assert "lut whose table is not monotone" in _one_line(e)
            continue
        assert np.array_equal(got, run(graph, x)), seed
        exact += 1
    assert exact >= 30


def _lut_graph() -> IntGraph:
    rng = np.random.default_rng(0)
    c1 = _layer(rng, "c1", "conv", (4, 1, 3, 3), 8, 4, 4)
    table = np.array([0, 3, 1, 2] * 4, np.int16)
    lut = IntLut(name="act", table=table, in_bits=4, a_bits=2)
    return IntGraph((1, 5, 5), 3, (c1, lut, _layer(rng, "out", "fc", (3, 36), 2, 4, None)))


def _huge_gap_graph() -> IntGraph:
    rng = np.random.default_rng(0)
    c1 = _layer(rng, "c1", "conv", (2, 1, 1, 1), 8, 4, 8)
    gap = IntAvgPool(name="gap", kernel=(257, 257), stride=(1, 1), padding=(0, 0), mult=np.array([2**30], np.int32),
                     shift=np.array([46], np.int32), in_bits=8, a_bits=8)
    return IntGraph((1, 257, 257), 3, (c1, gap, _layer(rng, "out", "fc", (3, 2), 8, 4, None)))


@pytest.mark.parametrize("graph,name,words", [
    (_lut_graph, "act", "not monotone"),
    (_huge_gap_graph, "gap", "2^24"),
])
def test_unsupported_nodes_are_refused_naming_the_node(graph, name, words, tmp_path):
    with pytest.raises(Q.QONNXExportError) as e:
        Q.export_qonnx(graph(), tmp_path / "m.onnx")
    msg = _one_line(e)
    assert msg.startswith(f"node {name}: ") and words in msg
    assert list(tmp_path.iterdir()) == []


def test_monotone_lut_is_exact():
    rng = np.random.default_rng(1)
    c1 = _layer(rng, "c1", "conv", (4, 1, 3, 3), 8, 4, 4)
    up = IntLut(name="up", table=(np.arange(16) // 3).astype(np.int16), in_bits=4, a_bits=3)
    down = IntLut(name="down", table=(7 - np.arange(8)).astype(np.int16) // 2, in_bits=3, a_bits=2)
    graph = IntGraph((1, 5, 5), 3, (c1, up, down, _layer(rng, "out", "fc", (3, 36), 2, 4, None)))
    images = rng.integers(0, 256, (30, 1, 5, 5)).astype(np.uint8)
    assert np.array_equal(Q.run_qonnx(graph, images), run(graph, images))


def test_bad_input():
    graph = residual_graph(0, 4)
    with pytest.raises(ValueError, match="uint8"):
        Q.run_qonnx(graph, np.zeros((2, 3, 9, 10), np.int16))
    with pytest.raises(ValueError, match="uint8"):
        Q.run_qonnx(Q.to_qonnx(graph), np.zeros((2, 3, 9, 9), np.uint8))
