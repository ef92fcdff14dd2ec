"""IntGraph -> ONNX with integer tensors only, runnable in ONNX Runtime.

One conv/fc layer, in ONNX ops (docs/arithmetic.md equation in brackets):

    acc  = ConvInteger(x_q, w_q + 128, 0, 128)      or MatMulInteger for fc    (E2) int32
    acc  = Add(acc, bias_q)                                                    (E2) int32
    p    = Add(Mul(Cast<int64>(acc), mult), 2^(shift-1))                       (E4) int64
    p    = Max(p, 0)                      clamp first: BitShift is unsigned-only (E4, note)
    y    = Min(BitShift<RIGHT>(Cast<uint64>(p), shift), 2^A - 1)               (E3, E4) uint64
    x_q' = MaxPool(Cast<uint8>(y))                                              (E7) uint8

Weights travel as uint8 ``w_q + 128`` with a weight zero point of 128, which
ConvInteger and MatMulInteger subtract exactly (ONNX Runtime's CPU kernels take
uint8 weights). An fc layer's accumulators are reshaped to (N, O, 1, 1), the map
an IntGraph gives it, so that a conv, pool or add can read them. The last layer
stops after the bias: its int32 accumulators, flattened, are the logits. A residual
add (E9) is Cast<int64> + Mul per input and a chain of Add, then the same Add-half /
Max / BitShift / Min / Cast; an average pool (E10) takes its window sums with a
depthwise ConvInteger whose kernel is all ones (zero padding counts, as in (E10)).
ConvInteger/MatMulInteger accumulate in int32; with uint8 operands every internal
sum is at most 255 * 255 * K, below 2^31 for K < 33,025 inputs per output
(alexnet-bn's largest K is 9,216), and the result equals (E2), whose own range (E6)
proved.

Every ONNX tensor is named after the node's index (``n3.acc``), never after the name
strings of the model file, which the ONNX file therefore does not contain.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import _io
from .._optional import optional_import
from .._progress import bar as progress_bar
from ..integer.arith import act_range
from ..integer.execute import as_graph, check_input
from ..integer.graph import IntAdd, IntAvgPool, IntGraph, IntLayer, node_shapes

onnx = optional_import("onnx", "fiqnn.export.onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (onnx is known to import by now)

OPSET = 13


def to_onnx(graph: IntGraph) -> onnx.ModelProto:
    """Build the integer ONNX model of ``graph`` (input ``x_q`` uint8, output ``logits`` int32)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    const("zero_u8", np.array(0, np.uint8))
    const("zp_w", np.array(128, np.uint8))
    const("zero_i64", np.array(0, np.int64))
    names, shapes = {"input": "x_q"}, node_shapes(graph)  # names: IntGraph node -> its ONNX output tensor
    for i, node in enumerate(graph.layers):
        ins = [names[src] for src in graph.sources(node)]
        names[node.name] = EMITTERS[type(node)](f"n{i}", node, ins, shapes[node.name], nodes, const)
    nodes.append(helper.make_node("Flatten", [names[graph.layers[-1].name]], ["logits"], axis=1))
    c, h, w = graph.in_shape
    g = helper.make_graph(
        nodes, "fiqnn_intgraph",
        [helper.make_tensor_value_info("x_q", TensorProto.UINT8, ["N", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.INT32, ["N", graph.num_classes])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fiqnn")
    model.ir_version = 8
    helper.set_model_props(model, {"arith_version": str(graph.arith_version)})
    onnx.checker.check_model(model, full_check=True)
    return model


def _layer(n: str, layer: IntLayer, ins: list[str], shape: tuple, nodes: list, const) -> str:
    """(E2), (E4), (E7); ``n`` prefixes every tensor name."""
    x = ins[0]
    w_u8 = (layer.w_q.astype(np.int16) + 128).astype(np.uint8)  # exact: w_q in [-127, 127]
    chan = (1, -1, 1, 1)  # per output channel, over (N, O, H, W)
    if layer.kind == "conv":
        nodes.append(helper.make_node(
            "ConvInteger", [x, const(f"{n}.w_u8", w_u8), "zero_u8", "zp_w"], [f"{n}.acc0"],
            strides=list(layer.stride), dilations=list(layer.dilation), group=layer.groups,
            pads=[layer.padding[0], layer.padding[1], layer.padding[0], layer.padding[1]],
            kernel_shape=list(layer.w_q.shape[2:])))
        nodes.append(helper.make_node("Add", [f"{n}.acc0", const(f"{n}.bias_q", layer.bias_q.reshape(chan))],
                                      [f"{n}.acc"]))
    else:
        nodes.append(helper.make_node("Flatten", [x], [f"{n}.flat"], axis=1))
        nodes.append(helper.make_node("MatMulInteger", [f"{n}.flat", const(f"{n}.w_u8_t", np.ascontiguousarray(
            w_u8.T)), "zero_u8", "zp_w"], [f"{n}.acc0"]))
        nodes.append(helper.make_node("Add", [f"{n}.acc0", const(f"{n}.bias_q", layer.bias_q)], [f"{n}.acc_flat"]))
        nodes.append(helper.make_node("Reshape", [f"{n}.acc_flat", const(f"{n}.map", np.array([0, -1, 1, 1]))],
                                      [f"{n}.acc"]))
    if layer.a_bits is None:
        return f"{n}.acc"
    nodes.append(helper.make_node("Cast", [f"{n}.acc"], [f"{n}.acc64"], to=TensorProto.INT64))
    nodes.append(helper.make_node("Mul", [f"{n}.acc64", const(f"{n}.mult", layer.mult.astype(np.int64).reshape(
        chan))], [f"{n}.prod"]))
    out = _shift_clamp(n, f"{n}.prod", layer.shift, layer.a_bits, chan, nodes, const)
    if layer.pool:
        k, s, p = layer.pool
        nodes.append(helper.make_node("MaxPool", [out], [f"{n}.pooled"], kernel_shape=[k, k], strides=[s, s],
                                      pads=[p, p, p, p]))
        out = f"{n}.pooled"
    return out


def _shift_clamp(n: str, prod: str, shift: np.ndarray, a_bits: int, chan: tuple, nodes: list, const) -> str:
    """(E3) and the clamp of (E4) on an int64 tensor: uint8 codes."""
    shift = shift.astype(np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0).astype(np.int64)
    nodes += [
        helper.make_node("Add", [prod, const(f"{n}.half", half.reshape(chan))], [f"{n}.rounded"]),
        helper.make_node("Max", [f"{n}.rounded", "zero_i64"], [f"{n}.pos"]),
        helper.make_node("Cast", [f"{n}.pos"], [f"{n}.pos_u64"], to=TensorProto.UINT64),
        helper.make_node("BitShift", [f"{n}.pos_u64", const(f"{n}.shift", shift.astype(np.uint64).reshape(chan))],
                         [f"{n}.shifted"], direction="RIGHT"),
        helper.make_node("Min", [f"{n}.shifted", const(f"{n}.qmax", np.array(act_range(a_bits)[1], np.uint64))],
                         [f"{n}.clamped"]),
        helper.make_node("Cast", [f"{n}.clamped"], [f"{n}.y_q"], to=TensorProto.UINT8),
    ]
    return f"{n}.y_q"


def _add(n: str, node: IntAdd, ins: list[str], shape: tuple, nodes: list, const) -> str:
    """(E9): Cast<int64> and Mul per input, a chain of Add (ONNX Sum has no integer kernel)."""
    terms = []
    for i, (x, m) in enumerate(zip(ins, node.mult)):
        nodes.append(helper.make_node("Cast", [x], [f"{n}.in{i}"], to=TensorProto.INT64))
        nodes.append(helper.make_node("Mul", [f"{n}.in{i}", const(f"{n}.mult{i}", np.array(int(m), np.int64))],
                                      [f"{n}.term{i}"]))
        terms.append(f"{n}.term{i}")
    total = terms[0]
    for i, t in enumerate(terms[1:], 1):
        nodes.append(helper.make_node("Add", [total, t], [f"{n}.sum{i}"]))
        total = f"{n}.sum{i}"
    return _shift_clamp(n, total, node.shift, node.a_bits, (1,), nodes, const)


def _avg_pool(n: str, node: IntAvgPool, ins: list[str], shape: tuple, nodes: list, const) -> str:
    """(E10): window sums as a depthwise ConvInteger with a kernel of ones, then (E3)/(E4)."""
    x, channels = ins[0], shape[0]
    ones = np.ones((channels, 1, *node.kernel), np.uint8)
    nodes.append(helper.make_node(
        "ConvInteger", [x, const(f"{n}.ones", ones), "zero_u8", "zero_u8"], [f"{n}.sum"], group=channels,
        strides=list(node.stride), kernel_shape=list(node.kernel),
        pads=[node.padding[0], node.padding[1], node.padding[0], node.padding[1]]))
    nodes.append(helper.make_node("Cast", [f"{n}.sum"], [f"{n}.sum64"], to=TensorProto.INT64))
    nodes.append(helper.make_node("Mul", [f"{n}.sum64", const(f"{n}.mult", np.array(int(node.mult[0]), np.int64))],
                                  [f"{n}.prod"]))
    return _shift_clamp(n, f"{n}.prod", node.shift, node.a_bits, (1,), nodes, const)


# One emitter per node class: (tensor-name prefix, node, its input tensors, its output shape,
# the node list, the constant maker) -> the name of its output tensor.
EMITTERS = {IntLayer: _layer, IntAdd: _add, IntAvgPool: _avg_pool}


def export_onnx(graph: IntGraph, path: str | os.PathLike) -> None:
    """Write the integer ONNX model of ``graph`` to ``path`` (atomically)."""
    _io.write_bytes(path, to_onnx(graph).SerializeToString())


def run_onnx(model: IntGraph | str | os.PathLike | onnx.ModelProto, x_q: np.ndarray,
             batch_size: int = 250, progress: bool = False) -> np.ndarray:
    """Run ``model`` in ONNX Runtime (CPU) on uint8 images ``x_q``; int32 logits (N, classes).

    ``model`` is what :func:`fiqnn.run` and :func:`fiqnn.export.c99.run_c` take, an IntGraph or
    its model file (see :func:`fiqnn.integer.execute.as_graph`), or an exported model: an
    ``onnx.ModelProto`` or a ``.onnx`` file.
    """
    ort = optional_import("onnxruntime", "run_onnx")
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
    elif isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".onnx":
        data = str(model)
    else:
        graph = as_graph(model)
        x_q = check_input(graph, x_q)
        data = to_onnx(graph).SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    starts = progress_bar(range(0, len(x_q), batch_size), progress=progress, desc="ONNX Runtime", unit="batch")
    return np.concatenate([sess.run(["logits"], {"x_q": x_q[i:i + batch_size]})[0] for i in starts])
