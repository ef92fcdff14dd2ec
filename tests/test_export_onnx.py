"""Integer ONNX: no float tensor anywhere, and ONNX Runtime equals the numpy executor bit for bit."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from fiqnn.config import DistillConfig
from fiqnn.convert import convert
from fiqnn.distill import distill
from fiqnn.execute import run
from fiqnn.export.onnx import export_onnx, run_onnx, to_onnx
from fiqnn.jobs import teacher_data
from fiqnn.teacher import load_teacher

INTEGER_TYPES = {TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, TensorProto.INT64, TensorProto.UINT64}


@pytest.fixture(scope="module")
def digits(digits_teacher):
    return load_teacher(digits_teacher), teacher_data(digits_teacher)[1]


def _all_tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        types[v.name] = v.type.tensor_type.elem_type
    return types


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("scale", ["per-layer", "per-channel"])
def test_onnx_runtime_bit_exact_on_whole_test_set(digits, bits, scale):
    teacher, data = digits
    student = distill(teacher, data, DistillConfig(w_bits=bits, a_bits=bits, scale=scale, method="fold",
                                                   teacher_epochs=0), progress=False, log=lambda m: None)
    graph = convert(student)
    model = to_onnx(graph)
    ref = run(graph, data.test.x_q)
    got = run_onnx(model, data.test.x_q)
    assert got.dtype == np.int32 and got.shape == (360, 10)
    assert np.array_equal(ref, got)


def test_no_float_tensor_anywhere(digits):
    teacher, data = digits
    graph = convert(distill(teacher, data, DistillConfig(method="fold", teacher_epochs=0), progress=False,
                            log=lambda m: None))
    types = _all_tensor_types(to_onnx(graph))
    node_outputs = {o for n in to_onnx(graph).graph.node for o in n.output}
    assert node_outputs <= set(types)  # shape inference typed every intermediate
    bad = {name: TensorProto.DataType.Name(t) for name, t in types.items() if t not in INTEGER_TYPES}
    assert not bad


def test_export_file_round_trip(digits, tmp_path):
    teacher, data = digits
    graph = convert(distill(teacher, data, DistillConfig(method="fold", teacher_epochs=0), progress=False,
                            log=lambda m: None))
    export_onnx(graph, tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"))
    assert np.array_equal(run_onnx(tmp_path / "m.onnx", data.test.x_q[:20]), run(graph, data.test.x_q[:20]))
