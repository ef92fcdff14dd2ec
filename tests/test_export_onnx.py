"""Integer ONNX: no float tensor anywhere, and ONNX Runtime equals the numpy executor bit for bit."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from fiqnn.export.onnx import export_onnx, run_onnx, to_onnx
from fiqnn.integer.execute import run
from fiqnn.train.convert import convert

INTEGER_TYPES = {TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, TensorProto.INT64}


def _all_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        types[v.name] = v.type.tensor_type.elem_type
    return types


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_onnx_runtime_bit_exact_on_whole_test_set(digits, fold_student, bits, scale):
    data = digits[1]
    graph = convert(fold_student(bits, scale))
    model = to_onnx(graph)
    ref = run(graph, data.test.x_q)
    got = run_onnx(model, data.test.x_q)
    assert got.dtype == np.int32 and got.shape == (360, 10)
    assert np.array_equal(ref, got)


def test_no_float_tensor_anywhere(fold_student):
    graph = convert(fold_student())
    types = _all_tensor_types(to_onnx(graph))
    node_outputs = {o for n in to_onnx(graph).graph.node for o in n.output}
    assert node_outputs <= set(types)  # shape inference typed every intermediate
    bad = {name: TensorProto.DataType.Name(t) for name, t in types.items() if t not in INTEGER_TYPES}
    assert not bad


def test_export_file_round_trip(digits, fold_student, tmp_path):
    data = digits[1]
    graph = convert(fold_student())
    export_onnx(graph, tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    assert np.array_equal(run_onnx(tmp_path / "m.onnx", data.test.x_q[:20]), run(graph, data.test.x_q[:20]))


def test_onnx_names_come_from_node_indices():
    """Node names come from model files: no ONNX name (nor any byte of the file) carries one."""
    from tests.graphgen import renamed
    from tests.test_export_ops import ops_graph, residual_graph

    for graph in (ops_graph(0, 4), residual_graph(0, 4)):
        model = to_onnx(renamed(graph, "zz_marker_name"))
        assert b"zz_marker" not in model.SerializeToString()
        g = model.graph
        assert [v.name for v in g.input] == ["x_q"] and [v.name for v in g.output] == ["logits"]
        names = {t for n in g.node for t in [*n.input, *n.output]} | {t.name for t in g.initializer}
        assert [t for t in names if not re.fullmatch(r"n\d+\.\w+|x_q|x_nhwc|logits", t)] == []
