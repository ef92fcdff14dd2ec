"""OpenVINO (its ONNX frontend, CPU plugin, float32 inference precision) computes the integer ONNX
export exactly: the logits equal the numpy executor's on every element, for students on the
digits test set and for random fuzzer graphs whose export has no int64 node.

OpenVINO's CPU plugin evaluates int64 arithmetic in int32 and some int32 ops (MatMul, Div, a MatMul
fused with the Add after it) in float32; src/fiqnn/export/onnx.py ("OpenVINO") says how the export
stays exact there, and ``openvino_unsafe_nodes`` names the nodes for which it cannot.
"""

from __future__ import annotations

import numpy as np
import pytest

from fiqnn.export.onnx import openvino_unsafe_nodes, run_openvino, to_onnx
from fiqnn.integer.execute import run
from fiqnn.train.convert import convert

pytest.importorskip("openvino", reason="the openvino extra is not installed")


@pytest.mark.parametrize("bits, scale", [(2, "per-layer"), (4, "per-layer"), (4, "per-channel"), (8, "per-layer"),
                                         (8, "per-channel")])
def test_openvino_bit_exact_on_the_digits_test_set(digits, fold_student, bits, scale):
    data = digits[1]
    graph = convert(fold_student(bits, scale))
    assert openvino_unsafe_nodes(graph) == []
    got = run_openvino(to_onnx(graph), data.test.x_q)
    assert got.dtype == np.int32 and got.shape == (360, 10)
    assert np.array_equal(got, run(graph, data.test.x_q))


def test_openvino_runs_model_files_and_onnx_files(digits, fold_student, tmp_path):
    from fiqnn.export.onnx import export_onnx
    from fiqnn.integer.modelfile import save

    data = digits[1]
    graph = convert(fold_student(4, "per-layer"))
    save(graph, tmp_path / "m.npz")
    export_onnx(graph, tmp_path / "m.onnx")
    ref = run(graph, data.test.x_q[:30])
    assert np.array_equal(run_openvino(tmp_path / "m.npz", data.test.x_q[:30], batch_size=7), ref)
    assert np.array_equal(run_openvino(tmp_path / "m.onnx", data.test.x_q[:30]), ref)


def test_openvino_bit_exact_on_random_graphs():
    """Fuzzer graphs (every node kind, signed codes, extreme pairs, biases at the (E6) limit) whose
    export is int32 throughout; the first 12 such seeds."""
    from tests.graphgen import random_graph
    from tests.test_fuzz import campaign_inputs

    checked = 0
    for seed in range(100):
        graph = random_graph(seed)
        if openvino_unsafe_nodes(graph):
            continue
        x = campaign_inputs(seed, graph, 64)
        got = run_openvino(graph, x)
        assert np.array_equal(got, run(graph, x)), f"seed {seed}"
        checked += 1
        if checked == 12:
            break
    assert checked == 12


def test_openvino_first_convs_of_any_geometry():
    """The first conv reads x_q through ConvInteger; OpenVINO 2026.4 gets some single-output strided
    geometries wrong (a 3-wide map, window 2, stride 2), which the export spells as a cropped map with
    stride 1. Random geometries, that one first."""
    from tests.test_export_onnx_ops import IN, _conv, _graph, _images

    rng = np.random.default_rng(5)
    cases = [((1, 7, 3), (1, 1, 5, 2), (1, 2), (0, 0), (1, 1))]
    while len(cases) < 40:
        c, h, w = int(rng.integers(1, 4)), int(rng.integers(2, 9)), int(rng.integers(2, 9))
        kh, kw = int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1))
        dil = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pad = (int(rng.integers(0, dil[0] * (kh - 1) + 1)), int(rng.integers(0, dil[1] * (kw - 1) + 1)))
        if dil[0] * (kh - 1) + 1 > h + 2 * pad[0] or dil[1] * (kw - 1) + 1 > w + 2 * pad[1]:
            continue
        cases.append(((c, h, w), (int(rng.integers(1, 4)), c, kh, kw), (int(rng.integers(1, 4)),
                                                                         int(rng.integers(1, 4))), pad, dil))
    for k, (in_shape, shape, stride, pad, dil) in enumerate(cases):
        layer = _conv(rng, "c1", shape, IN, (8, False), stride=stride, padding=pad, dilation=dil,
                      per_channel=k % 2 == 1)
        graph = _graph(in_shape, [layer])
        x = _images(in_shape, seed=k, n=40)
        assert np.array_equal(run_openvino(graph, x), run(graph, x)), (in_shape, shape, stride, pad, dil)
