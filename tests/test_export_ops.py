"""Every IntGraph op the exporters handle, on random hand-built graphs: multi-channel input,
stride, padding, dilation, groups, padded max-pool, 2- to 8-bit weights, and an fc layer
reading a conv's spatial output. numpy, ONNX Runtime and compiled C agree bit for bit."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from fiqnn.arith import act_range
from fiqnn.execute import run
from fiqnn.graph import IntGraph, IntLayer


def _layer(rng, name, kind, shape, in_bits, w_bits, a_bits, **geometry) -> IntLayer:
    q = 2 ** (w_bits - 1) - 1
    w = rng.integers(-q, q + 1, shape).astype(np.int8)
    o = shape[0]
    x_max = act_range(in_bits)[1]
    # Scale so that a typical accumulator (about sqrt(fan-in) * |w| * x) spans the output codes.
    typical = max(1.0, np.sqrt(w[0].size) * max(q, 1) * x_max / 2)
    target = act_range(a_bits)[1] if a_bits else 1
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
