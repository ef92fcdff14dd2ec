"""Every IntGraph op the exporters handle, on random hand-built graphs: multi-channel input,
stride, padding, dilation, groups, padded max-pool, 2- to 8-bit weights, and an fc layer
reading a conv's spatial output. numpy, ONNX Runtime and compiled C agree bit for bit."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from fiqnn.integer.arith import act_range
from fiqnn.integer.execute import run
from fiqnn.integer.graph import IntAdd, IntAvgPool, IntGraph, IntLayer


def _layer(rng, name, kind, shape, in_bits, w_bits, a_bits, **geometry) -> IntLayer:
    q = 2 ** (w_bits - 1) - 1
    w = rng.integers(-q, q + 1, shape).astype(np.int8)
    o = shape[0]
    x_max = act_range(in_bits)[1]
    # Scale so that a typical accumulator (about sqrt(fan-in) * |w| * x) spans the output codes.
    typical = max(1.0, np.sqrt(w[0].size) * max(q, 1) * x_max / 2)
    target = act_range(a_bits)[1] if a_bits else 2**20  # accumulators kept as they are
    shift = np.full(o, 31 + int(np.ceil(np.log2(typical / target))), np.int32)
    bias = rng.integers(-int(typical), int(typical) + 1, o).astype(np.int32)
    return IntLayer(name=name, kind=kind, w_q=w, bias_q=bias,
                    mult=rng.integers(2**30, 2**31 - 1, o).astype(np.int32), shift=shift, in_bits=in_bits,
                    w_bits=w_bits, a_bits=a_bits, **geometry)


def ops_graph(seed: int, w_bits: int) -> IntGraph:
    """3x13x11 input -> conv s2 + padded pool -> dilated conv -> grouped conv -> fc over 2-D map."""
    rng = np.random.default_rng(seed)
    layers = (
        _layer(rng, "c1", "conv", (6, 3, 3, 3), 8, 8, 4, stride=(1, 2), padding=(1, 1), pool=(3, 2, 1)),
        _layer(rng, "c2", "conv", (8, 6, 3, 3), 4, w_bits, 3, padding=(2, 2), dilation=(2, 2)),
        _layer(rng, "c3", "conv", (8, 4, 3, 1), 3, w_bits, 4, padding=(1, 0), groups=2, stride=(2, 1)),
        _layer(rng, "fc", "fc", (5, 8 * 4 * 3), 4, 8, None),
    )
    return IntGraph((3, 13, 11), 5, layers)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (64, 3, 13, 11)).astype(np.uint8)


def test_ops_graph_is_not_degenerate(images):
    codes = {}
    run(ops_graph(0, 4), images, trace=lambda name, a: codes.setdefault(name, a))
    for name, a in codes.items():
        if a.dtype == np.uint8 and a.ndim == 4 and name != "input":
            assert len(np.unique(a)) > 2, name  # the codes are spread, not all clamped


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) installed")
@pytest.mark.parametrize("w_bits", [2, 3, 4, 8])
def test_c_equals_numpy_on_every_op(images, w_bits):
    from fiqnn.export.c99 import run_c

    graph = ops_graph(w_bits, w_bits)
    assert np.array_equal(run_c(graph, images), run(graph, images))


@pytest.mark.parametrize("w_bits", [2, 3, 4, 8])
def test_onnx_equals_numpy_on_every_op(images, w_bits):
    from fiqnn.export.onnx import run_onnx, to_onnx

    graph = ops_graph(w_bits, w_bits)
    assert np.array_equal(run_onnx(to_onnx(graph), images), run(graph, images))


def _add(rng, name, inputs, typical, a_bits, shift=30):
    """An (E9) add: an accumulator input of typical magnitude T gets mult ~ 2^shift * (qmax / 2) / T,
    a code input mult 2^(shift-1) (half a code per code)."""
    qmax = act_range(a_bits)[1]
    mult = [max(1, int(2**shift * qmax / 2 / t)) if t else 2 ** (shift - 1) for t in typical]
    mult = [int(m * rng.uniform(0.8, 1.2)) for m in mult]
    return IntAdd(name=name, inputs=tuple(inputs), mult=np.array(mult, np.int32), shift=np.array([shift], np.int32),
                  a_bits=a_bits)


def residual_graph(seed: int, w_bits: int) -> IntGraph:
    """A small ResNet/MobileNet mix: residual adds of codes + accumulators and of two accumulators,
    a 1x1 stride-2 shortcut, a depthwise conv, an average pool and a global average pool."""
    rng = np.random.default_rng(seed)

    def typical(layer):
        q = 2 ** (layer.w_bits - 1) - 1
        return np.sqrt(layer.w_q[0].size) * q * act_range(layer.in_bits)[1] / 2

    c1 = _layer(rng, "c1", "conv", (8, 3, 3, 3), 8, 8, 4, padding=(1, 1))
    c2 = _layer(rng, "c2", "conv", (8, 8, 3, 3), 4, w_bits, 4, padding=(1, 1))
    c3 = _layer(rng, "c3", "conv", (8, 8, 3, 3), 4, w_bits, None, padding=(1, 1))
    add1 = _add(rng, "add1", ["c3", "c1"], [typical(c3), 0], 4)
    ds = _layer(rng, "ds", "conv", (12, 8, 1, 1), 4, w_bits, None, stride=(2, 2), inputs=("add1",))
    c4 = _layer(rng, "c4", "conv", (12, 8, 3, 3), 4, w_bits, 4, stride=(2, 2), padding=(1, 1), inputs=("add1",))
    dw = _layer(rng, "dw", "conv", (12, 1, 3, 3), 4, w_bits, 3, padding=(1, 1), groups=12)
    c5 = _layer(rng, "c5", "conv", (12, 12, 1, 1), 3, w_bits, None)
    add2 = _add(rng, "add2", ["c5", "ds"], [typical(c5), typical(ds)], 4)
    avg = IntAvgPool(name="avg", kernel=(2, 2), stride=(1, 1), padding=(1, 1), mult=np.array([2**30], np.int32),
                     shift=np.array([32], np.int32), in_bits=4, a_bits=4)
    gap = IntAvgPool(name="gap", kernel=(6, 6), stride=(1, 1), padding=(0, 0),
                     mult=np.array([int(2**36 / 36)], np.int32), shift=np.array([36], np.int32), in_bits=4, a_bits=5)
    fc = _layer(rng, "fc", "fc", (5, 12), 5, 8, None)
    return IntGraph((3, 9, 10), 5, (c1, c2, c3, add1, ds, c4, dw, c5, add2, avg, gap, fc))


@pytest.fixture(scope="module")
def res_images():
    return np.random.default_rng(2).integers(0, 256, (48, 3, 9, 10)).astype(np.uint8)


def test_residual_graph_is_not_degenerate(res_images):
    codes = {}
    run(residual_graph(0, 4), res_images, trace=lambda name, a: codes.setdefault(name, a))
    assert codes["c3"].dtype == np.int32 and codes["add1"].dtype == np.uint8
    for name in ("add1", "add2", "avg", "gap"):
        assert len(np.unique(codes[name])) > 4, name


@pytest.mark.parametrize("w_bits", [2, 4, 8])
def test_residual_graph_onnx_and_c_equal_numpy(res_images, w_bits, tmp_path):
    from fiqnn.export.onnx import run_onnx, to_onnx
    from fiqnn.integer.modelfile import load, save

    graph = residual_graph(10 + w_bits, w_bits)
    ref = run(graph, res_images)
    assert np.array_equal(run_onnx(to_onnx(graph), res_images), ref)
    save(graph, tmp_path / "res.npz")
    assert np.array_equal(run(load(tmp_path / "res.npz"), res_images), ref)
    if shutil.which("cc"):
        from fiqnn.export.c99 import run_c

        assert np.array_equal(run_c(graph, res_images), ref)


def test_residual_onnx_has_no_float_tensor():
    import onnx

    model = onnx.shape_inference.infer_shapes(__import__("fiqnn.export.onnx", fromlist=["to_onnx"]).to_onnx(
        residual_graph(0, 4)), strict_mode=True)
    g = model.graph
    types = {v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types |= {t.data_type for t in g.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    assert types and not types & floats


def _replace(graph: IntGraph, name: str, **change) -> tuple:
    return tuple(type(n)(**{**n.__dict__, **change}) if n.name == name else n for n in graph.layers)


@pytest.mark.parametrize("name, change, message", [
    ("c2", {"inputs": ("c3",)}, "node c2: reads 'c3', which is not an earlier node"),
    ("c4", {"inputs": ("c3",)}, "node c3: its int32 accumulators may only feed an add"),
    ("add2", {"inputs": ("c5", "c3")}, "node add2: adds tensors of different shapes"),
    ("fc", {"inputs": ("avg",), "in_bits": 4}, "node fc: has 12 inputs but avg gives 12x6x6"),
    ("fc", {"inputs": ("avg",)}, "node fc: takes 5-bit unsigned codes but avg makes 4-bit unsigned codes"),
    ("dw", {"groups": 5}, "do not fit 12 input channels"),
])
def test_bad_residual_graphs_are_refused_naming_the_node(name, change, message):
    from fiqnn.integer.graph import ModelFileError

    graph = residual_graph(0, 4)
    with pytest.raises(ModelFileError, match=re.escape(message)):
        IntGraph(graph.in_shape, graph.num_classes, _replace(graph, name, **change))


def test_unused_node_is_refused():
    from fiqnn.integer.graph import ModelFileError

    graph = residual_graph(0, 4)
    layers = list(graph.layers)
    layers.insert(-1, IntAvgPool(name="orphan", kernel=(1, 1), stride=(1, 1), padding=(0, 0),
                                 mult=np.array([2**30], np.int32), shift=np.array([30], np.int32), in_bits=4,
                                 a_bits=4, inputs=("add2",)))
    layers[-1] = IntLayer(**{**layers[-1].__dict__, "inputs": ("gap",)})
    IntGraph(graph.in_shape, graph.num_classes, tuple(layers[:-2] + layers[-1:]))  # without the orphan: fine
    with pytest.raises(ModelFileError, match="node orphan is never used"):
        IntGraph(graph.in_shape, graph.num_classes, tuple(layers))


def test_add_whose_int64_sum_could_overflow_is_refused():
    from fiqnn.integer.graph import OverflowProofError

    big = [IntLayer(name=n, kind="fc", w_q=np.full((2, 60_000), 127, np.int8), bias_q=np.zeros(2, np.int32),
                    mult=np.array([2**30], np.int32), shift=np.array([31], np.int32), in_bits=8, w_bits=8,
                    a_bits=None, inputs=("input",)) for n in ("a", "b")]  # |acc| <= 1.94e9 each
    top = IntLayer(name="top", kind="fc", w_q=np.ones((3, 2), np.int8), bias_q=np.zeros(3, np.int32),
                   mult=np.array([2**30], np.int32), shift=np.array([31], np.int32), in_bits=4, w_bits=8,
                   a_bits=None)

    def graph(mult: int) -> IntGraph:
        add = IntAdd(name="sum", inputs=("a", "b"), mult=np.array([mult, mult], np.int32),
                     shift=np.array([40], np.int32), a_bits=4)
        return IntGraph((1, 240, 250), 3, (*big, add, top))

    graph(2**30)  # 2 * 1.94e9 * 2^30 < 2^62: accepted
    with pytest.raises(OverflowProofError, match=r"node sum: its int64 sum could reach \d+ >= 2\^62 \(E9\)"):
        graph(2**31 - 1)
