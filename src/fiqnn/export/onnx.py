"""IntGraph -> ONNX with integer tensors only, runnable in ONNX Runtime.

Each node class has one emitter (``EMITTERS``). In ONNX ops, with the equations of
docs/arithmetic.md (``u8(x)`` is a layer's input as uint8, see "Signed codes" below):

    conv      acc = Add(ConvInteger(u8(x), w_q + 128, zp_x, 128), bias_q)                      (E2)
    fc        acc = Reshape(Add(MatMulInteger(Flatten(u8(x)), (w_q + 128)^T, zp_x, 128), bias_q))  (E2)
              codes: Requant(Mul(Cast<int64>(acc), mult), shift), then MaxPool if pooled   (E4), (E7)
    add       Requant(Add(Mul(Cast<int64>(x_1), mult_1), Mul(Cast<int64>(x_2), mult_2), ...), shift)  (E9)
    avgpool   Requant(Mul(Cast<int64>(ConvInteger(u8(x), ones, zp_x, 0, group=C)), mult), shift)  (E10)
              mult, shift: one pair, or (Ho, Wo) constants: pair d - 1 for each window's divisor d
    maxpool   MaxPool(x), uint8 or int8                                                          (E7)
    lut       Gather(T, Add(Cast<int64>(x), -lo_in)), T held as the output codes, uint8 or int8  (E11)
    mul       Requant(Mul(Mul(Cast<int64>(x), Cast<int64>(g)), mult), shift), g broadcast        (E12)
    concat    Concat(Requant(Mul(Cast<int64>(x_j), mult_j), shift_j) for each j, axis=1)        (E13)
    channels  Gather(x, index, axis=1)                                                           (E14)
    affine    Requant(Add(Mul(Cast<int64>(x), mult[c]), offset[c]), shift[c])                    (E15)

``Requant(prod, shift)`` is (E3) and the clamp of (E4) on an int64 tensor ``prod`` with
``|prod| < 2^62`` (each equation proves that bound for its own ``prod``), ``half = 2^(shift-1)``
(0 for shift 0), and ``[lo, hi]`` the output code range:

    unsigned codes (uint8), as in version 1:
        p = Max(Add(prod, half), 0)                            BitShift is unsigned-only: clamp at 0
        y = Cast<uint8>(Min(BitShift<RIGHT>(Cast<uint64>(p), shift), hi))    first (E4, note); (E3)
    signed codes (int8):
        p = Add(prod, half)                                                  int64
        q = Div(Sub(p, Mod(p, 2^shift)), 2^shift)                            floor(p / 2^shift), (E3)
        y = Cast<int8>(Min(Max(q, lo), hi))                                  (E4)

Why the signed chain is exact. ``|prod| < 2^62`` and ``0 <= half <= 2^61`` give
``-2^62 < p < 2^62 + 2^61``: no int64 overflow. ``Mod`` (fmod=0, integers) takes the sign of
the divisor, so ``r = Mod(p, 2^shift) = p - 2^shift * floor(p / 2^shift)`` lies in ``[0, 2^shift)``
(2^shift <= 2^62 is an int64). ``p - r = 2^shift * floor(p / 2^shift)`` lies in
``(-2^62 - 2^62, 2^62 + 2^61) ⊂ (-2^63, 2^63)``, and it is an exact multiple of the divisor, so
``Div`` returns the exact quotient ``floor(p / 2^shift)`` whichever way it rounds (ONNX Runtime
truncates toward zero, which on a multiple is no rounding at all). That is ``rshift_round(prod,
shift)`` of (E3); shift 0 divides by 1. Clamping it to ``[lo, hi]`` in int64 gives the int8 codes,
which the final Cast holds exactly. (The other spelling, a 2^62 bias before an unsigned BitShift,
needs ``p + 2^62``, up to 2^63 + 2^61, in uint64, and ONNX Runtime 1.17 has no uint64 Add; Mod
and Div of int64 it has.)

Weights travel as uint8 ``w_q + 128`` with a weight zero point of 128, which
ConvInteger and MatMulInteger subtract exactly (ONNX Runtime's CPU kernels take uint8
weights, and in version 1.17, the oldest this package supports, uint8 inputs only). An fc
layer's accumulators are reshaped to (N, O, 1, 1), the map an IntGraph gives it, so that a conv,
pool or add can read them. The last layer stops after the bias: its int32 accumulators, flattened, are the logits.

Signed codes (E1) travel as int8 tensors, unsigned codes as uint8. A conv, fc or average pool
reading signed codes first moves them to uint8, ``u8(x) = Cast<uint8>(Add(Cast<int32>(x), 128))``
(exact: ``x + 128`` lies in [0, 255]), with an input zero point ``zp_x = 128`` that ConvInteger
and MatMulInteger subtract again; unsigned codes go in as they are with zero point 0.
ConvInteger pads with the input zero point, so padding cells are the code 0 of (E2) and (E10)
in both cases (tests/test_export_onnx_ops.py checks ONNX Runtime does, for signed inputs too).

Pooling windows. Ceil mode is spelled as explicit padding, not as MaxPool's ``ceil_mode``
attribute: ONNX Runtime 1.17 sizes a ceil-mode output without PyTorch's rule of (E7) (a 4x4 map,
window 2, stride 3, padding 1: 3x3, where (E7) says 2x2), and ConvInteger has no ceil mode at
all. Instead the far-edge padding grows by as many cells as the last (E7) window
reaches past the map, so the floor-mode output size is (E7)'s ceil-mode size (that window starts
inside the map or its left padding, so the far-edge padding stays below the window's length, as
MaxPool requires). Those cells never
count, as (E7) and (E10) require: MaxPool skips padding, and ConvInteger's padding adds 0 to a
window sum. An average pool's divisor (E10) depends on the output position only, so it enters
as constants of shape (Ho, Wo) built at export time from ``node.divisors(H, W)``.

ConvInteger/MatMulInteger accumulate in int32; with uint8 operands every internal
sum is at most 255 * 255 * K, below 2^31 for K < 33,025 inputs per output
(alexnet-bn's largest K is 9,216), and the result equals (E2), whose own range (E6)
proved. A graph of unsigned codes only gets exactly the ONNX file of earlier versions.

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
from ..integer.arith import code_range
from ..integer.execute import as_graph, check_input
from ..integer.graph import (
    IntAdd,
    IntAffine,
    IntAvgPool,
    IntChannels,
    IntConcat,
    IntGraph,
    IntLayer,
    IntLut,
    IntMaxPool,
    IntMul,
    node_shapes,
)
from ..integer.nodes import pool_out

onnx = optional_import("onnx", "fiqnn.export.onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (onnx is known to import by now)

OPSET = 13
CHAN = (1, -1, 1, 1)  # a per-channel parameter, over (N, C, H, W)


class _Builder:
    """The ONNX nodes and initializers of the model being built, in the order they are made."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._shared: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def shared(self, name: str, value: np.ndarray) -> str:
        """A constant that any node may read, made on first use (a graph that never needs it lacks it)."""
        if name not in self._shared:
            self._shared.add(name)
            self.const(name, value)
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


def to_onnx(graph: IntGraph) -> onnx.ModelProto:
    """Build the integer ONNX model of ``graph`` (input ``x_q`` uint8, output ``logits`` int32)."""
    b = _Builder()
    b.shared("zero_u8", np.array(0, np.uint8))
    b.shared("zp_w", np.array(128, np.uint8))
    b.shared("zero_i64", np.array(0, np.int64))
    names, shapes = {"input": "x_q"}, node_shapes(graph)  # names: IntGraph node -> its ONNX output tensor
    shapes["input"] = tuple(graph.in_shape)
    for i, node in enumerate(graph.layers):
        srcs = graph.sources(node)
        names[node.name] = EMITTERS[type(node)](b, f"n{i}", node, [names[s] for s in srcs],
                                                [shapes[s] for s in srcs])
    b.op("Flatten", [names[graph.layers[-1].name]], "logits", axis=1)
    c, h, w = graph.in_shape
    g = helper.make_graph(
        b.nodes, "fiqnn_intgraph",
        [helper.make_tensor_value_info("x_q", TensorProto.UINT8, ["N", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.INT32, ["N", graph.num_classes])], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fiqnn")
    model.ir_version = 8
    helper.set_model_props(model, {"arith_version": str(graph.arith_version)})
    onnx.checker.check_model(model, full_check=True)
    return model


# ---- shared pieces -------------------------------------------------------------------------------

def _as_uint8(b: _Builder, n: str, x: str, signed: bool) -> tuple[str, str]:
    """Codes as ConvInteger / MatMulInteger input: (uint8 tensor, its zero point). Unsigned codes
    as they are with zero point 0; signed codes plus 128 (in [0, 255], exact) with zero point 128."""
    if not signed:
        return x, "zero_u8"
    wide = b.op("Cast", [x], f"{n}.x_i32", to=TensorProto.INT32)
    moved = b.op("Add", [wide, b.shared("i32_128", np.array(128, np.int32))], f"{n}.x_moved")
    return b.op("Cast", [moved], f"{n}.x_u8", to=TensorProto.UINT8), b.shared("zp_x", np.array(128, np.uint8))


def _half(shift: np.ndarray) -> np.ndarray:
    """2^(shift-1), 0 where shift is 0: the rounding term of (E3)."""
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0).astype(np.int64)


def _requantize(b: _Builder, n: str, prod: str, shift: np.ndarray, a_bits: int, signed: bool,
                tag: str = "") -> str:
    """(E3) and the clamp of (E4) on the int64 tensor ``prod`` (``|prod| < 2^62``), ``shift``
    broadcasting against it: uint8 codes, or int8 when ``signed`` (module docstring: Requant).
    ``tag`` tells apart the tensors of several requantizations in one node."""
    shift = shift.astype(np.int64)
    lo, hi = code_range(a_bits, signed)
    rounded = b.op("Add", [prod, b.const(f"{n}.half{tag}", _half(shift))], f"{n}.rounded{tag}")
    if not signed:  # BitShift is unsigned-only: clamp at 0 first (E4, note)
        pos = b.op("Max", [rounded, "zero_i64"], f"{n}.pos{tag}")
        pos_u64 = b.op("Cast", [pos], f"{n}.pos_u64{tag}", to=TensorProto.UINT64)
        shifted = b.op("BitShift", [pos_u64, b.const(f"{n}.shift{tag}", shift.astype(np.uint64))],
                       f"{n}.shifted{tag}", direction="RIGHT")
        clamped = b.op("Min", [shifted, b.const(f"{n}.qmax{tag}", np.array(hi, np.uint64))], f"{n}.clamped{tag}")
        return b.op("Cast", [clamped], f"{n}.y_q{tag}", to=TensorProto.UINT8)
    pow2 = b.const(f"{n}.pow2{tag}", np.left_shift(np.int64(1), shift))  # 2^shift <= 2^62
    rem = b.op("Mod", [rounded, pow2], f"{n}.rem{tag}", fmod=0)  # in [0, 2^shift): the divisor's sign
    multiple = b.op("Sub", [rounded, rem], f"{n}.multiple{tag}")  # 2^shift * floor(rounded / 2^shift)
    floor = b.op("Div", [multiple, pow2], f"{n}.floor{tag}")  # exact: no remainder to round
    low = b.op("Max", [floor, b.const(f"{n}.qmin{tag}", np.array(lo, np.int64))], f"{n}.low{tag}")
    clamped = b.op("Min", [low, b.const(f"{n}.qmax{tag}", np.array(hi, np.int64))], f"{n}.clamped{tag}")
    return b.op("Cast", [clamped], f"{n}.y_q{tag}", to=TensorProto.INT8)


def _window_pads(node: IntAvgPool | IntMaxPool, h: int, w: int) -> list[int]:
    """ONNX ``pads`` of a pooling window over an h x w map: the node's padding, and at the far edges
    as many more cells as a ceil-mode window reaches past them (module docstring: Pooling windows)."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ho, wo = pool_out(h, kh, sh, ph, node.ceil_mode), pool_out(w, kw, sw, pw, node.ceil_mode)
    extra_h, extra_w = max(0, (ho - 1) * sh + kh - h - 2 * ph), max(0, (wo - 1) * sw + kw - w - 2 * pw)
    return [ph, pw, ph + extra_h, pw + extra_w]


# ---- one emitter per node class: (builder, tensor-name prefix, node, its input tensors, their
# ---- (C, H, W) shapes) -> the name of its output tensor -------------------------------------------

def _layer(b: _Builder, n: str, layer: IntLayer, ins: list[str], in_shapes: list) -> str:
    """(E2), (E4), (E7)."""
    x, x_zp = _as_uint8(b, n, ins[0], layer.in_signed)
    w_u8 = (layer.w_q.astype(np.int16) + 128).astype(np.uint8)  # exact: w_q in [-127, 127]
    if layer.kind == "conv":
        acc0 = b.op("ConvInteger", [x, b.const(f"{n}.w_u8", w_u8), x_zp, "zp_w"], f"{n}.acc0",
                    strides=list(layer.stride), dilations=list(layer.dilation), group=layer.groups,
                    pads=[layer.padding[0], layer.padding[1], layer.padding[0], layer.padding[1]],
                    kernel_shape=list(layer.w_q.shape[2:]))
        acc = b.op("Add", [acc0, b.const(f"{n}.bias_q", layer.bias_q.reshape(CHAN))], f"{n}.acc")
    else:
        flat = b.op("Flatten", [x], f"{n}.flat", axis=1)
        acc0 = b.op("MatMulInteger", [flat, b.const(f"{n}.w_u8_t", np.ascontiguousarray(w_u8.T)), x_zp, "zp_w"],
                    f"{n}.acc0")
        acc_flat = b.op("Add", [acc0, b.const(f"{n}.bias_q", layer.bias_q)], f"{n}.acc_flat")
        acc = b.op("Reshape", [acc_flat, b.const(f"{n}.map", np.array([0, -1, 1, 1]))], f"{n}.acc")
    if layer.a_bits is None:
        return acc
    acc64 = b.op("Cast", [acc], f"{n}.acc64", to=TensorProto.INT64)
    prod = b.op("Mul", [acc64, b.const(f"{n}.mult", layer.mult.astype(np.int64).reshape(CHAN))], f"{n}.prod")
    out = _requantize(b, n, prod, layer.shift.reshape(CHAN), layer.a_bits, layer.signed)
    if layer.pool:
        k, s, p = layer.pool
        out = b.op("MaxPool", [out], f"{n}.pooled", kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
    return out


def _add(b: _Builder, n: str, node: IntAdd, ins: list[str], in_shapes: list) -> str:
    """(E9): Cast<int64> and Mul per input, a chain of Add (ONNX Sum has no integer kernel)."""
    terms = []
    for i, (x, m) in enumerate(zip(ins, node.mult)):
        wide = b.op("Cast", [x], f"{n}.in{i}", to=TensorProto.INT64)
        terms.append(b.op("Mul", [wide, b.const(f"{n}.mult{i}", np.array(int(m), np.int64))], f"{n}.term{i}"))
    total = terms[0]
    for i, t in enumerate(terms[1:], 1):
        total = b.op("Add", [total, t], f"{n}.sum{i}")
    return _requantize(b, n, total, node.shift, node.a_bits, node.signed)


def _avg_pool(b: _Builder, n: str, node: IntAvgPool, ins: list[str], in_shapes: list) -> str:
    """(E10): window sums as a depthwise ConvInteger whose kernel is all ones (padding adds 0),
    then the pair of each window's divisor and (E3)/(E4)."""
    (channels, h, w), = in_shapes
    x, x_zp = _as_uint8(b, n, ins[0], node.in_signed)
    ones = np.ones((channels, 1, *node.kernel), np.uint8)
    sums = b.op("ConvInteger", [x, b.const(f"{n}.ones", ones), x_zp, "zero_u8"], f"{n}.sum", group=channels,
                strides=list(node.stride), kernel_shape=list(node.kernel), pads=_window_pads(node, h, w))
    sums64 = b.op("Cast", [sums], f"{n}.sum64", to=TensorProto.INT64)
    if len(node.mult) == 1:  # every divisor kh * kw
        mult, shift = np.array(int(node.mult[0]), np.int64), node.shift
    else:  # (Ho, Wo): the pair of each output position's divisor d, pair d - 1
        pick = node.divisors(h, w) - 1
        mult, shift = node.mult.astype(np.int64)[pick], node.shift[pick]
    prod = b.op("Mul", [sums64, b.const(f"{n}.mult", mult)], f"{n}.prod")
    return _requantize(b, n, prod, shift, node.a_bits, node.signed)


def _max_pool(b: _Builder, n: str, node: IntMaxPool, ins: list[str], in_shapes: list) -> str:
    """(E7) on uint8 or int8 codes; ceil mode as far-edge padding, which MaxPool never counts."""
    (_, h, w), = in_shapes
    return b.op("MaxPool", ins, f"{n}.pooled", kernel_shape=list(node.kernel), strides=list(node.stride),
                pads=_window_pads(node, h, w))


def _lut(b: _Builder, n: str, node: IntLut, ins: list[str], in_shapes: list) -> str:
    """(E11): Gather on the table, indexed by x - lo_in; the table held as the output codes."""
    lo = code_range(node.in_bits, node.in_signed)[0]
    index = b.op("Cast", ins, f"{n}.x64", to=TensorProto.INT64)
    if lo:
        index = b.op("Add", [index, b.const(f"{n}.minus_lo", np.array(-lo, np.int64))], f"{n}.index")
    table = node.table.astype(np.int8 if node.signed else np.uint8)  # exact: entries are output codes
    return b.op("Gather", [b.const(f"{n}.table", table), index], f"{n}.y_q", axis=0)


def _mul(b: _Builder, n: str, node: IntMul, ins: list[str], in_shapes: list) -> str:
    """(E12): x * g in int64 (g (C, 1, 1) broadcasts over the map), times mult, then (E3)/(E4)."""
    x64, g64 = (b.op("Cast", [v], f"{n}.in{i}", to=TensorProto.INT64) for i, v in enumerate(ins))
    xg = b.op("Mul", [x64, g64], f"{n}.xg")
    prod = b.op("Mul", [xg, b.const(f"{n}.mult", np.array(int(node.mult[0]), np.int64))], f"{n}.prod")
    return _requantize(b, n, prod, node.shift, node.a_bits, node.signed)


def _concat(b: _Builder, n: str, node: IntConcat, ins: list[str], in_shapes: list) -> str:
    """(E13): each input requantized with its own pair, then Concat along channels."""
    parts = []
    for j, (x, m) in enumerate(zip(ins, node.mult)):
        wide = b.op("Cast", [x], f"{n}.in{j}", to=TensorProto.INT64)
        prod = b.op("Mul", [wide, b.const(f"{n}.mult{j}", np.array(int(m), np.int64))], f"{n}.prod{j}")
        parts.append(_requantize(b, n, prod, node.shift[j:j + 1], node.a_bits, node.signed, tag=f"_{j}"))
    return b.op("Concat", parts, f"{n}.y_q", axis=1)


def _channels(b: _Builder, n: str, node: IntChannels, ins: list[str], in_shapes: list) -> str:
    """(E14): Gather along the channel axis."""
    return b.op("Gather", [ins[0], b.const(f"{n}.index", node.index.astype(np.int64))], f"{n}.y_q", axis=1)


def _affine(b: _Builder, n: str, node: IntAffine, ins: list[str], in_shapes: list) -> str:
    """(E15): x * mult[c] + offset[c] in int64, then (E3) with shift[c] and the clamp."""
    x64 = b.op("Cast", ins, f"{n}.x64", to=TensorProto.INT64)
    prod = b.op("Mul", [x64, b.const(f"{n}.mult", node.mult.astype(np.int64).reshape(CHAN))], f"{n}.prod")
    total = b.op("Add", [prod, b.const(f"{n}.offset", node.offset.astype(np.int64).reshape(CHAN))], f"{n}.total")
    return _requantize(b, n, total, node.shift.reshape(CHAN), node.a_bits, node.signed)


EMITTERS = {IntLayer: _layer, IntAdd: _add, IntAvgPool: _avg_pool, IntMaxPool: _max_pool, IntLut: _lut,
            IntMul: _mul, IntConcat: _concat, IntChannels: _channels, IntAffine: _affine}


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
