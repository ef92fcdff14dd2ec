"""IntGraph -> ONNX with integer tensors only, computed exactly by ONNX Runtime and by OpenVINO.

Each node class has one emitter (``EMITTERS``). Activations travel channels-last, NHWC (the
input ``x_q`` is transposed once, unless only a first conv reads it, below), as uint8 (unsigned
codes), int8 (signed codes) or int32 (accumulators); every requantization is a table lookup in
int32, so that no tensor of the graph is int64 or uint64 except index and shape constants and
the few nodes listed under What stays int64. In ONNX ops, with the equations of docs/arithmetic.md:

    conv      a = u8(x) (N, H*W+1, C), last cell = padding;  P = Gather(a, im2col, axis=1)    (E2)
              raw = MatMulInteger(P, W) (int8 W, no zero points; Saturation);  acc = raw + bias'
    fc        raw = MatMulInteger(Reshape(u8(x), (N, H*W*C)), W), rows in NHWC order           (E2)
              codes: T[Clip(raw + (bias' - a0), 0, width - 1)] (+ a row offset per channel), then
              MaxPool if pooled (NCHW, transposed there and back)               (E4), (E7), Tables
    add       T[Clip(v - a0[r], 0, width - 1) + r * width], r = the other inputs' codes     (E9)
              codes only: T[r]; two int32 accumulators: the int64 chain
    avgpool   T[ReduceSum(Gather(x as int32, windows), window axis) + row(position)]       (E10)
    maxpool   MaxPool(x) on NCHW (transposed there and back), uint8 or int8                  (E7)
    lut       T[x - lo_in]                                                                   (E11)
    mul       T[(x - lo_x) * R_g + (g - lo_g)], g (N, 1, 1, C) broadcast                     (E12)
    concat    Concat(T_j[x_j - lo_j] for each j, axis=-1)                                     (E13)
    channels  Gather(x, index, axis=3)                                                        (E14)
    affine    T[x - lo_in + c * 2^A]: one table of 2^A entries per channel                   (E15)

``T[i]`` is ``GatherElements(T, Reshape(i, [-1]))`` reshaped back (the table 1-D; GatherElements
is several times faster in ONNX Runtime than Gather, which copies element by element), and
``u8(x)`` is a layer's input as MatMulInteger's uint8 operand: unsigned codes as they are,
signed A-bit codes plus 2^(A-1) (in [0, 2^A - 1], exact in int32, then Cast), the offset
``off``; padding cells hold ``off``, the code 0 of (E2). ``bias' = bias - off * sum_i w[o, i]``,
since ``raw = sum_i (x_i + off) w_i = acc - bias + off * sum_i w_i`` over every window cell,
padding cells included. A conv whose input is the network input itself with at most 4 channels
is instead ConvInteger on ``x_q`` as it comes (NCHW, uint8 weights ``w + 128`` with zero point
128, exact in ONNX Runtime's uint8 x uint8 kernel and, its (E6) bound being at most 2^24, in
OpenVINO), requantized on NCHW and transposed: for one channel, strided Slices or a Gather of
one-byte cells cost more than the whole ConvInteger. Along an axis with a single output and a
stride above 1, the map is cropped to that one window and the stride written as 1 (the same
sums): OpenVINO 2026.4 computes some such ConvIntegers wrongly (a 3-wide map, window 2, stride
2, no padding); so spelled, random geometries agree with ONNX Runtime (tests/test_export_openvino.py).

Tables: why each lookup is exact. (E4) is a non-decreasing step function of ``acc`` (mult > 0):
``code(a) = clamp(floor((a * mult + 2^(s-1)) / 2^s), lo, hi) = lo + #{k in (lo, hi] : a >= T_k}``
with ``T_k = ceil((k * 2^s - 2^(s-1)) / mult)``, the smallest integer ``a`` with ``a * mult +
2^(s-1) >= k * 2^s`` (``floor(p / 2^s) >= k`` exactly when ``p >= k * 2^s``); the T_k are
computed at export with Python integers, exactly. Every ``acc`` lies in ``[L, U]``, the
intersection of the layer's (E6) bounds and ``raw``'s own. Below ``a0 = clip(T_{lo+1} - 1, L, U)``
the code is ``code(a0)`` (lo, or nothing is reachable), above ``a1 = clip(T_hi, L, U)`` it is
``code(a1)``, so ``code(acc) = code(clip(acc, a0, a1))``, and the table holds ``code(a0 + d)`` for
``d`` in ``[0, width)``, ``width = a1 - a0 + 1`` (per channel under per-channel pairs, each
channel's row ``width`` long, the rows of shorter channels continued with ``code(a1)``, which is
what their clip gives). So ``T[Clip(acc - a0, 0, width - 1)] = code(acc)`` for every reachable
``acc``, by construction: no float, no rounding, nothing to prove per input. ``acc - a0 = raw +
(bias' - a0)`` is one Add when every value of it provably fits int32 (checked at export with the
bounds); otherwise ``acc = raw + bias'`` (which fits, (E6)) is clamped per channel with Max and
Min, then moved by ``-a0``. A table has at most 2^20 entries (``LUT_ENTRIES``, one byte each;
alexnet-s W8A8's largest, fc6's, has 604,989); a larger one becomes two levels: buckets of ``2^r``
values of d, ``2^r`` no larger than the smallest gap between consecutive thresholds, so that at
most one threshold ``t_b`` lies inside a bucket; then ``code = base[b] + [d >= t_b]`` with ``b =
Div(d, 2^r)`` (d >= 0: truncation is floor) and ``[d >= t_b] = Min(Max(d - (t_b - 1), 0), 1)``, two
int32 GatherElements. A domain wider than int32 (``width > 2^31``) keeps the int64 chain.

The other tables follow the same rule, each entry the node's own equation evaluated at export with
fiqnn.integer.arith in int64 at one point of its finite domain: the 2^A codes of a lut, an affine
channel or a concat input; every pair (x, g) of a mul (at most 2^16); every combination of the
code inputs of an add (at most 2^16, a mixed-radix index ``sum_j (x_j - lo_j) R_j``); every
window sum ``s`` in ``[lo_in * kh * kw, hi_in * kh * kw]`` of an average pool, one row per divisor
pair that occurs (the row of each output position a constant). Its window sums are a Gather of
the int32 codes, im2col as for a conv (padding cells, and ceil mode's cells past the far edge,
hold 0 and count nothing), and a ReduceSum over the window axis: exact in int32; in OpenVINO
(float32) while ``255 * kh * kw <= 2^24``. (A depthwise ConvInteger of ones, the earlier
spelling, comes out wrong in OpenVINO for some strided windows with a single output.) An add of
one int32 accumulator ``v`` and codes: for each combination ``r`` of the codes, ``u_r = sum_j x_j mult_j``,
and the output is the monotone function of ``v`` with thresholds ``T_k(r) = ceil((k 2^s - 2^(s-1) -
u_r) / mult_v)``; one row per r over ``v - a0(r)`` (a0(r) gathered by r; ``|v - a0(r)| <= U - L``
is checked to fit int32), as for a layer.

Saturation. ONNX Runtime's x86 uint8 x int8 kernel without VNNI (AVX2, AVX-512 BW) multiplies
with VPMADDUBSW, which adds two neighbouring products ``a_k w_k + a_{k+1} w_{k+1}`` with int16
saturation; VNNI and AMX accumulate in int32. So the export keeps ``2 * a_max * max|w| <= 2^15 - 1``
(``PAIR_LIMIT``; a_max = 2^A - 1 of the operand): then no pair saturates on any kernel. Above it
(8-bit codes with weights beyond +-64), a conv's weights are split, ``w = w1 + w2`` with ``w1 =
clip(w, -c, c)``, ``|w2| <= c``, ``c = floor((2^15 - 1) / (2 a_max))`` (64 for a_max 255; 8-bit
weights need ``|w| <= 2c``), side by side in one MatMulInteger of 2 O columns whose halves are Split
and added in int32 (twice the multiply-adds, still far faster than uint8 x uint8); an fc layer
(one GEMV a image) takes uint8 weights ``w + 128`` with zero point 128 instead (uint8 x uint8
kernels widen to int16 first: exact while ``255 * a_max * K < 2^31``). Every partial sum of
``raw`` lies within ``a_max * sum_i |w_i| < 2^31`` (checked at export), so the int32
accumulation is exact in any order.

OpenVINO. Its CPU plugin computes int64 arithmetic in int32 (the earlier spelling, int64
Mul and a uint64 BitShift, came out wrong), and some int32 ops in float32: MatMul (so
MatMulInteger), Div, Clip's bounds, a MatMul fused with the Add after it (as a bias). Measured
with openvino 2026.4.1, int32 Add, Sub, Mul, Max, Min, Clip's data, Cast, Gather, GatherElements,
Concat, Slice, Pad, Transpose and uint8/int8 MaxPool are exact, and ReduceSum exact up to 2^24.
The export therefore (E8):
cuts a layer's rows into chunks whose every partial sum stays within 2^24 (``_chunks``; float32
holds those integers exactly, in any order), added in int32; puts a no-op ``Max(x, INT32_MIN)``
between a MatMulInteger and an Add whenever the sum may pass 2^24 or the added constant exceeds it
(``_unfused``; a Clip to [0, width - 1] right after a fused Add needs none: with raw and the constant
both within 2^24, a float32 sum beyond 2^24 stays beyond it and clips the same); keeps Clip bounds
and Div operands within 2^24; and runs OpenVINO with ``INFERENCE_PRECISION_HINT f32`` (a Xeon with
AMX would pick bf16). ``openvino_unsafe_nodes`` lists the nodes where that cannot hold (the int64
ones below, a two-level table wider than 2^24, an average pool whose window sums may pass 2^24);
``run_openvino`` equals the numpy executor on every graph for which it is empty
(tests/test_export_openvino.py, and 470 of 700 fuzzer graphs).

What stays int64: an add of two or more int32 accumulators (the sum of products up to 2^62 has no
int32 form), an add of codes whose combinations exceed 2^16, an average pool whose table would
exceed 2^20 entries, and a layer whose requantization domain is wider than int32. Those nodes use
(E3) on ``prod`` (|prod| < 2^62, proven by each equation), ``half = 2^(shift-1)`` (0 for shift 0):
``p = prod + half; q = Div(p - Mod(p, 2^shift), 2^shift); y = Cast(Min(Max(q, lo), hi))``. ``Mod``
(fmod=0) takes the divisor's sign, so ``r = Mod(p, 2^shift)`` lies in [0, 2^shift) and ``p - r``
is an exact multiple of 2^shift in (-2^63, 2^63): ``Div`` returns ``floor(p / 2^shift)`` whichever
way it rounds. Exact in ONNX Runtime; not in OpenVINO.

Pooling windows. Ceil mode is spelled as explicit padding, not as MaxPool's ``ceil_mode``
attribute: ONNX Runtime 1.17 sizes a ceil-mode output without PyTorch's rule of (E7) (a 4x4 map,
window 2, stride 3, padding 1: 3x3, where (E7) says 2x2). Instead the far-edge padding grows by
as many cells as the last (E7) window reaches past the map, so the floor-mode output size is
(E7)'s ceil-mode size (that window starts inside the map or its left padding, so the far-edge
padding stays below the window's length, as MaxPool requires); an average pool's window Gather
points every cell outside the map, padding or past the far edge, at the padding cell. Those
cells never count, as (E7) and (E10) require: MaxPool skips padding, and the padding cell holds
0. An average pool's divisor (E10) depends on the output position only, so it picks the table
row by position.

The last layer stops after the bias: its int32 accumulators, flattened, are the logits. Every
ONNX tensor is named after the node's index (``n3.acc``), never after the name strings of the
model file, which the ONNX file therefore does not contain.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .. import _io
from .._optional import optional_import
from .._progress import bar as progress_bar
from ..errors import FiqnnError
from ..integer.arith import DOUBLE_HALF, INT32_MAX, INT32_MIN, clamp_codes, code_range, rshift_round, thresholds
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
from ..integer.nodes import code_of, pool_out

onnx = optional_import("onnx", "fiqnn.export.onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (onnx is known to import by now)

OPSET = 13
F32_EXACT = 2**24  # float32 holds every integer of at most this magnitude (E8): OpenVINO's integer ops
LUT_ENTRIES = 2**20  # the largest single-level requantization table of one node (uint8 or int8 entries)
PAIR_LIMIT = 2**15 - 1  # x86 VPMADDUBSW adds two uint8 x int8 products with int16 saturation
TO_NCHW, TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


class _Builder:
    """The ONNX nodes and initializers of the model being built, in the order they are made."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.unsafe: list[str] = []  # the nodes OpenVINO may compute wrongly (module docstring: OpenVINO)

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output

    def shape(self, n: str, dims) -> str:
        return self.const(n, np.array(dims, np.int64))

    def reshape(self, x: str, n: str, dims) -> str:
        return self.op("Reshape", [x, self.shape(f"{n}_shape", dims)], n)


def to_onnx(graph: IntGraph) -> onnx.ModelProto:
    """Build the integer ONNX model of ``graph`` (input ``x_q`` uint8, output ``logits`` int32)."""
    return _build(graph)[0]


def openvino_unsafe_nodes(graph: IntGraph) -> list[str]:
    """The names of the nodes of ``graph`` whose ONNX spelling OpenVINO's CPU plugin may compute
    wrongly: int64 arithmetic (module docstring: What stays int64), or int32 values beyond 2^24 in
    an op it evaluates in float32 (OpenVINO). ONNX Runtime computes every node exactly."""
    return _build(graph)[1]


def _build(graph: IntGraph) -> tuple[onnx.ModelProto, list[str]]:
    b = _Builder()
    c, h, w = graph.in_shape
    shapes = node_shapes(graph)
    shapes["input"] = tuple(graph.in_shape)
    by_name = {node.name: node for node in graph.layers}
    names = {"input": b.op("Transpose", ["x_q"], "x_nhwc", perm=TO_NHWC)}  # node -> its NHWC output tensor
    for i, node in enumerate(graph.layers):
        srcs = graph.sources(node)
        n = f"n{i}"
        before = len(b.unsafe)
        nodes = [by_name.get(s) for s in srcs]  # None: the network input
        names[node.name] = EMITTERS[type(node)](b, n, node, [names[s] for s in srcs], [shapes[s] for s in srcs], nodes)
        if len(b.unsafe) > before:
            b.unsafe[before:] = [node.name]
    b.op("Flatten", [names[graph.layers[-1].name]], "logits", axis=1)
    if not any("x_nhwc" in node.input for node in b.nodes):  # no node reads the input as NHWC
        b.nodes = b.nodes[1:]
    _merge_reshapes(b)
    g = helper.make_graph(
        b.nodes, "fiqnn_intgraph",
        [helper.make_tensor_value_info("x_q", TensorProto.UINT8, ["N", c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.INT32, ["N", graph.num_classes])], b.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fiqnn")
    model.ir_version = 8
    helper.set_model_props(model, {"arith_version": str(graph.arith_version)})
    onnx.checker.check_model(model, full_check=True)
    return model, b.unsafe


# ---- shared pieces -------------------------------------------------------------------------------

def _merge_reshapes(b: _Builder) -> None:
    """Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) where the inner Reshape has no other reader
    (a table lookup's output shape and the next layer's cell shape): one op less per layer."""
    readers: dict[str, int] = {}
    for node in b.nodes:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    made = {node.output[0]: node for node in b.nodes}
    drop = set()
    for node in b.nodes:
        inner = made.get(node.input[0]) if node.op_type == "Reshape" else None
        if inner is not None and inner.op_type == "Reshape" and readers[inner.output[0]] == 1 and \
                inner.output[0] != "logits":
            node.input[0] = inner.input[0]
            drop.add(id(inner))
    b.nodes = [node for node in b.nodes if id(node) not in drop]
    used = {t for node in b.nodes for t in node.input}
    b.inits = [t for t in b.inits if t.name in used]


def _fits_int32(*values: int) -> bool:
    return all(INT32_MIN <= int(v) <= INT32_MAX for v in values)


def _table_lookup(b: _Builder, n: str, table: np.ndarray, index: str, out_dims: list[int], tag: str = "") -> str:
    """``table[index]`` elementwise, as GatherElements on the flattened index (ONNX Runtime's
    Gather copies element by element, GatherElements is several times faster), reshaped to ``out_dims``."""
    flat = b.reshape(index, f"{n}.index_flat{tag}", [-1])
    found = b.op("GatherElements", [b.const(f"{n}.table{tag}", table), flat], f"{n}.found{tag}", axis=0)
    return b.reshape(found, f"{n}.y_q{tag}", out_dims)


def _code_dtype(signed: bool):
    return np.int8 if signed else np.uint8


def _codes_as_int32(b: _Builder, n: str, x: str, tag: str = "") -> str:
    return b.op("Cast", [x], f"{n}.x_i32{tag}", to=TensorProto.INT32)


def _maxpool_nhwc(b: _Builder, n: str, x: str, kernel, stride, pads) -> str:
    """MaxPool (uint8 or int8) of an NHWC map: MaxPool takes NCHW, so transposed there and back."""
    nchw = b.op("Transpose", [x], f"{n}.pool_in", perm=TO_NCHW)
    pooled = b.op("MaxPool", [nchw], f"{n}.pooled_nchw", kernel_shape=list(kernel), strides=list(stride), pads=pads)
    return b.op("Transpose", [pooled], f"{n}.pooled", perm=TO_NHWC)


def _window_pads(node: IntAvgPool | IntMaxPool, h: int, w: int) -> list[int]:
    """ONNX ``pads`` of a pooling window over an h x w map: the node's padding, and at the far edges
    as many more cells as a ceil-mode window reaches past them (module docstring: Pooling windows)."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ho, wo = pool_out(h, kh, sh, ph, node.ceil_mode), pool_out(w, kw, sw, pw, node.ceil_mode)
    extra_h, extra_w = max(0, (ho - 1) * sh + kh - h - 2 * ph), max(0, (wo - 1) * sw + kw - w - 2 * pw)
    return [ph, pw, ph + extra_h, pw + extra_w]


# ---- conv / fc: im2col, MatMulInteger, requantization by table -----------------------------------

def _operand(b: _Builder, n: str, layer: IntLayer, x: str) -> tuple[str, int, int]:
    """The layer's input codes as MatMulInteger's uint8 operand: (tensor, offset, largest value).
    Unsigned codes as they are; signed A-bit codes plus 2^(A-1), in [0, 2^A - 1] (exact)."""
    a_max = 2**layer.in_bits - 1
    if not layer.in_signed:
        return x, 0, a_max
    off = 2 ** (layer.in_bits - 1)
    moved = b.op("Add", [_codes_as_int32(b, n, x), b.const(f"{n}.offset", np.array(off, np.int32))], f"{n}.x_moved")
    return b.op("Cast", [moved], f"{n}.x_u8", to=TensorProto.UINT8), off, a_max


def _unfused(b: _Builder, x: str) -> str:
    """``x`` itself, through a Max with INT32_MIN: OpenVINO fuses a MatMul with the Add after it and
    adds in float32, which rounds sums beyond 2^24; the Max (a no-op) keeps the Add in int32
    (module docstring: OpenVINO)."""
    return b.op("Max", [x, b.const(f"{x}_floor", np.array(INT32_MIN, np.int32))], f"{x}_int32")


def _chunks(rows: np.ndarray, a_max: int) -> list[tuple[int, int]]:
    """Contiguous row ranges of the weight matrix ``rows`` (K, columns) whose every partial sum, for
    operand values in [0, a_max], stays within 2^24 in magnitude (OpenVINO's MatMul is float32)."""
    w = rows.astype(np.int64) * a_max
    pos, neg = np.maximum(w, 0), np.maximum(-w, 0)
    out, start = [], 0
    p, q = np.zeros(w.shape[1], np.int64), np.zeros(w.shape[1], np.int64)
    for r in range(len(w)):
        if r > start and max((p + pos[r]).max(), (q + neg[r]).max()) > F32_EXACT:
            out.append((start, r))
            p, q, start = np.zeros_like(p), np.zeros_like(q), r
        p, q = p + pos[r], q + neg[r]
    return out + [(start, len(w))]


def _rows(weights: np.ndarray) -> np.ndarray:
    """(K, O) of a (K, O) or (g, K, O / g) weight array: column j * O / g + o is group j's output o."""
    k, o = weights.shape[-2:]
    return weights.reshape(-1, k, o).transpose(1, 0, 2).reshape(k, -1)


def _matmul(b: _Builder, n: str, patches: str, weights: np.ndarray, a_max: int, gemv: bool = False) -> str:
    """sum_k a[k] * w[k, o] in int32: MatMulInteger(patches, int8 weights) without zero points.
    ``weights`` (K, O), or (g, K, O / g) for groups (patches (N, g, P, K)); patches' values lie in
    [0, a_max]. When 2 * a_max * max|w| > 2^15 - 1 the weights are split, w = w1 + w2 with |w1|, |w2|
    <= c = floor((2^15 - 1) / (2 a_max)), side by side in one MatMulInteger (columns [w1 | w2]) whose two
    halves are then added (module docstring: Saturation); rows are cut into chunks (:func:`_chunks`)
    summed in int32."""
    w = weights.astype(np.int64)
    cap = PAIR_LIMIT // (2 * a_max)
    split = 2 * a_max * int(np.abs(w).max()) > PAIR_LIMIT
    # an fc layer: uint8 weights w + 128 with zero point 128 (no pairs to saturate; its uint8 x uint8 sums < 2^31)
    unsigned = split and gemv and a_max * 255 * weights.shape[-2] <= INT32_MAX
    split = split and not unsigned
    if split:
        if np.abs(w).max() > 2 * cap:
            raise FiqnnError(f"{n}: weights too large to split for an exact uint8 x int8 product")
        w1 = np.clip(w, -cap, cap)
        w = np.concatenate([w1, w - w1], axis=-1)  # (..., K, 2 O)
    parts = _chunks(_rows(w), a_max)
    big = np.abs(_rows(weights).astype(np.int64)).sum(0).max() * a_max > F32_EXACT  # the sum may pass 2^24
    total = None
    for j, (r0, r1) in enumerate(parts):
        piece = patches
        if len(parts) > 1:
            piece = b.op("Slice", [patches, b.shape(f"{n}.k0_{j}", [r0]), b.shape(f"{n}.k1_{j}", [r1]),
                                   b.shape(f"{n}.kaxis_{j}", [-1])], f"{n}.patches_{j}")
        wj = np.ascontiguousarray(w[..., r0:r1, :]).astype(np.int8)
        if unsigned:
            acc = b.op("MatMulInteger", [piece, b.const(f"{n}.w_{j}", (wj.astype(np.int16) + 128).astype(np.uint8)),
                                         b.const(f"{n}.zp_a{j}", np.array(0, np.uint8)),
                                         b.const(f"{n}.zp_w{j}", np.array(128, np.uint8))], f"{n}.raw_{j}")
        else:
            acc = b.op("MatMulInteger", [piece, b.const(f"{n}.w_{j}", wj)], f"{n}.raw_{j}")
        acc = _unfused(b, acc) if big and (split or len(parts) > 1) else acc
        total = acc if total is None else b.op("Add", [total, acc], f"{n}.rawsum_{j}")
    if split:
        halves = [f"{n}.half_0", f"{n}.half_1"]
        b.nodes.append(helper.make_node("Split", [total], halves, axis=-1))
        total = b.op("Add", [_unfused(b, h) for h in halves] if big else halves, f"{n}.raw_sum")
    return total


def _conv_patches(b: _Builder, n: str, layer: IntLayer, a: str, off: int, in_shape: tuple) -> tuple[str, int, int]:
    """im2col of the NHWC operand ``a``: (N, Ho * Wo, kh * kw * C), the last axis ordered (kernel
    row, kernel column, channel); padding cells hold ``off`` (code 0)."""
    c, h, w = in_shape
    _, _, kh, kw = layer.w_q.shape
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    pad_value = b.const(f"{n}.pad_value", np.array(off, np.uint8))
    if kh == kw == 1 and (ph, pw) == (0, 0) and (sh, sw) == (1, 1):  # the map is its own patch matrix
        return b.reshape(a, f"{n}.patches", [-1, h * w, c]), ho, wo
    if c <= 4:  # few channels: strided Slices of the padded map, concatenated (Gather copies bytes one by one)
        padded = b.op("Pad", [a, b.shape(f"{n}.pads", [0, ph, pw, 0, 0, ph, pw, 0]), pad_value], f"{n}.padded")
        cells = []
        for i in range(kh):
            for j in range(kw):
                cells.append(b.op("Slice", [padded, b.shape(f"{n}.s0_{i}_{j}", [i * dh, j * dw]),
                                            b.shape(f"{n}.s1_{i}_{j}", [i * dh + (ho - 1) * sh + 1,
                                                                        j * dw + (wo - 1) * sw + 1]),
                                            b.shape(f"{n}.saxes_{i}_{j}", [1, 2]),
                                            b.shape(f"{n}.ssteps_{i}_{j}", [sh, sw])], f"{n}.cell_{i}_{j}"))
        stacked = b.op("Concat", cells, f"{n}.stacked", axis=-1) if len(cells) > 1 else cells[0]
        return b.reshape(stacked, f"{n}.patches", [-1, ho * wo, kh * kw * c]), ho, wo
    # Gather: the map as (N, H * W + 1, C), its last cell padding; one index per (output, kernel cell)
    flat = b.reshape(a, f"{n}.cells", [-1, h * w, c])
    flat = b.op("Pad", [flat, b.shape(f"{n}.pads", [0, 0, 0, 0, 1, 0]), pad_value], f"{n}.cells_padded")
    rows = np.arange(ho)[:, None] * sh - ph + np.arange(kh)[None, :] * dh  # (Ho, kh)
    cols = np.arange(wo)[:, None] * sw - pw + np.arange(kw)[None, :] * dw  # (Wo, kw)
    r, q = rows[:, None, :, None], cols[None, :, None, :]  # (Ho, Wo, kh, kw)
    index = np.where((r >= 0) & (r < h) & (q >= 0) & (q < w), r * w + q, h * w).astype(np.int32)
    gathered = b.op("Gather", [flat, b.const(f"{n}.im2col", index.reshape(-1))], f"{n}.gathered", axis=1)
    return b.reshape(gathered, f"{n}.patches", [-1, ho * wo, kh * kw * c]), ho, wo


def _layer(b: _Builder, n: str, layer: IntLayer, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E2), (E4), (E7): im2col, MatMulInteger, the bias, the requantization table, MaxPool."""
    c, h, w = in_shapes[0]
    if srcs[0] is None and layer.kind == "conv" and c <= 4 and layer.acc_bound() <= F32_EXACT:
        return _input_conv(b, n, layer, in_shapes[0])
    a, off, a_max = _operand(b, n, layer, ins[0])
    o = layer.out_channels
    if layer.kind == "fc":
        weights = layer.w_q.reshape(o, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, o)  # NHWC rows
        patches, ho, wo = b.reshape(a, f"{n}.flat", [-1, h * w * c]), 1, 1
    else:
        g = layer.groups
        _, cg, kh, kw = layer.w_q.shape
        patches, ho, wo = _conv_patches(b, n, layer, a, off, in_shapes[0])
        # rows (kernel row, kernel column, channel of the group), one matrix per group: (g, kh * kw * cg, o / g)
        weights = layer.w_q.reshape(g, o // g, cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(g, kh * kw * cg, o // g)
        if g == 1:
            weights = weights[0]
        else:
            five = b.reshape(patches, f"{n}.patches5", [-1, ho * wo, kh * kw, g, cg])
            moved = b.op("Transpose", [five], f"{n}.patches_g", perm=[0, 3, 1, 2, 4])
            patches = b.reshape(moved, f"{n}.patches_grouped", [-1, g, ho * wo, kh * kw * cg])
    raw = _matmul(b, n, patches, weights, a_max, layer.kind == "fc")
    if layer.kind == "conv" and layer.groups > 1:
        back = b.op("Transpose", [raw], f"{n}.raw_t", perm=[0, 2, 1, 3])
        raw = b.reshape(back, f"{n}.raw_all", [-1, ho * wo, o])
    # raw = sum of a * w over the window = acc - bias + off * colsum(w): padding cells hold off
    wsum = layer.w_q.reshape(o, -1).astype(np.int64).sum(1)
    bias = layer.bias_q.astype(np.int64) - off * wsum
    rw = _rows(weights).astype(np.int64) * a_max
    raw_hi, raw_lo = np.maximum(rw, 0).sum(0), np.minimum(rw, 0).sum(0)  # every partial sum, per output
    if not (_fits_int32(raw_hi.max(), raw_lo.min()) and _fits_int32(bias.max(), bias.min())):
        raise FiqnnError(f"layer {layer.name}: its uint8 x int8 sums could leave int32 in the ONNX spelling")
    dims = [-1, ho, wo, o]
    if layer.a_bits is None:
        if max(int(raw_hi.max()), -int(raw_lo.min())) + int(np.abs(bias).max()) > F32_EXACT:
            raw = _unfused(b, raw)
        acc = b.op("Add", [raw, b.const(f"{n}.bias", bias.astype(np.int32))], f"{n}.acc")
        return b.reshape(acc, f"{n}.acc_map", dims)
    acc_lo, acc_hi = layer.acc_bounds()
    lo_v = np.maximum(acc_lo, raw_lo + bias)
    hi_v = np.minimum(acc_hi, raw_hi + bias)
    out = _requant_acc(b, n, raw, bias, lo_v, hi_v, layer, dims)
    if layer.pool:
        k, s, p = layer.pool
        out = _maxpool_nhwc(b, n, out, [k, k], [s, s], [p, p, p, p])
    return out


def _input_conv(b: _Builder, n: str, layer: IntLayer, in_shape: tuple) -> str:
    """A conv on the few channels of the network input: ConvInteger on x_q as it comes (NCHW, uint8
    weights w + 128 with zero point 128), the requantization table on NCHW, then NHWC (module docstring)."""
    c, h, w = in_shape
    o, _, kh, kw = layer.w_q.shape
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    w_u8 = (layer.w_q.astype(np.int16) + 128).astype(np.uint8)  # exact: w_q in [-127, 127]
    x, pads, strides, ends = "x_q", [ph, pw, ph, pw], [sh, sw], [h, w]
    for axis, (size, out, k, d, p) in enumerate([(h, ho, kh, dh, ph), (w, wo, kw, dw, pw)]):
        if out == 1 and strides[axis] > 1:  # one window: the map cropped to it, stride 1 (an OpenVINO bug)
            reach = d * (k - 1) + 1
            ends[axis] = min(size, reach - p)
            pads[axis + 2], strides[axis] = reach - p - ends[axis], 1
    if ends != [h, w]:
        x = b.op("Slice", [x, b.shape(f"{n}.crop0", [0, 0]), b.shape(f"{n}.crop1", ends),
                           b.shape(f"{n}.crop_axes", [2, 3])], f"{n}.x_cropped")
    raw = b.op("ConvInteger", [x, b.const(f"{n}.w_u8", w_u8), b.const(f"{n}.zp_x", np.array(0, np.uint8)),
                               b.const(f"{n}.zp_w", np.array(128, np.uint8))], f"{n}.raw", strides=strides,
               dilations=[dh, dw], group=layer.groups, pads=pads, kernel_shape=[kh, kw])
    bias = layer.bias_q.astype(np.int64)
    dims = [-1, o, ho, wo]
    if layer.a_bits is None:
        raw = _unfused(b, raw) if layer.acc_bound() + int(np.abs(bias).max()) > F32_EXACT else raw
        acc = b.op("Add", [raw, b.const(f"{n}.bias", _chan(bias, True))], f"{n}.acc")
        return b.op("Transpose", [acc], f"{n}.acc_map", perm=TO_NHWC)
    acc_lo, acc_hi = layer.acc_bounds()
    out = _requant_acc(b, n, raw, bias, acc_lo, acc_hi, layer, dims, nchw=True)
    if layer.pool:
        k, s, p = layer.pool
        out = b.op("MaxPool", [out], f"{n}.pooled_nchw", kernel_shape=[k, k], strides=[s, s], pads=[p, p, p, p])
    return b.op("Transpose", [out], f"{n}.y_nhwc", perm=TO_NHWC)


def _chan(values: np.ndarray, nchw: bool) -> np.ndarray:
    """A per-channel int32 constant for NHWC tensors (channels last), or (C, 1, 1) for NCHW ones."""
    values = values.astype(np.int32)
    return values.reshape(-1, 1, 1) if nchw and values.ndim == 1 and values.size > 1 else values


def _requant_acc(b: _Builder, n: str, raw: str, bias: np.ndarray, lo_v, hi_v, layer: IntLayer, dims,
                 nchw: bool = False) -> str:
    """(E4) of acc = raw + bias as a table lookup (module docstring: Requantization by table)."""
    o = layer.out_channels
    lo, hi = code_range(layer.a_bits, layer.signed)
    groups = len(layer.mult)  # 1 (per layer) or o (per channel)
    lows = [int(lo_v.min())] if groups == 1 else [int(v) for v in lo_v]
    highs = [int(hi_v.max())] if groups == 1 else [int(v) for v in hi_v]
    a0, a1, thr = [], [], []
    for g in range(groups):
        t = thresholds(int(layer.mult[g]), int(layer.shift[g]), lo, hi, lows[g], highs[g], rounding=layer.rounding)
        a0.append(min(max(t[0] - 1, lows[g]), highs[g]))
        a1.append(max(min(t[-1], highs[g]), a0[-1]))
        thr.append(t)
    width = max(y - x + 1 for x, y in zip(a0, a1))
    if width - 1 > INT32_MAX:  # d = acc - a0 would leave int32: the int64 chain
        b.unsafe.append(n)
        acc = b.op("Add", [_unfused(b, raw), b.const(f"{n}.bias", _chan(bias, nchw))], f"{n}.acc")
        wide = b.op("Cast", [acc], f"{n}.acc64", to=TensorProto.INT64)
        per = (-1, 1, 1) if nchw else (-1,)
        prod = b.op("Mul", [wide, b.const(f"{n}.mult", layer.mult.astype(np.int64).reshape(per))], f"{n}.prod")
        if layer.rounding == "double":  # (E4d): +-2^30 by the product's side of -2^30, where shift > 31
            deep = (layer.shift.astype(np.int64) > 31).reshape(per)
            side = b.op("GreaterOrEqual", [prod, b.const(f"{n}.minus_half", np.array(-DOUBLE_HALF, np.int64))],
                        f"{n}.side")
            offset = b.op("Where", [side, b.const(f"{n}.up", deep * np.int64(DOUBLE_HALF)),
                                    b.const(f"{n}.down", deep * np.int64(-DOUBLE_HALF))], f"{n}.offset")
            prod = b.op("Add", [prod, offset], f"{n}.prod_d")
        codes = _requantize64(b, n, prod, layer.shift.reshape(per), layer.a_bits, layer.signed)
        return b.reshape(codes, f"{n}.y_map", dims)
    shift0 = np.array(a0 if groups > 1 else a0 * o, np.int64)  # a0 of each output channel
    const = bias - shift0  # d = raw + bias - a0 = acc - a0
    fold = _fits_int32(int((np.array([int(v) for v in hi_v]) - shift0).max()), int(const.max()), int(const.min()),
                       int((np.array([int(v) for v in lo_v]) - shift0).min()))
    if fold:  # d = Clip(raw + (bias - a0), 0, width - 1): every value of it fits int32
        if int(np.abs(const).max()) > F32_EXACT or width > F32_EXACT:
            raw = _unfused(b, raw)
        d = b.op("Add", [raw, b.const(f"{n}.bias_a0", _chan(const, nchw))], f"{n}.d0")
    else:  # acc first (it fits int32, (E6)), clamped to [a0, a1] per channel, then minus a0
        acc = b.op("Add", [_unfused(b, raw), b.const(f"{n}.bias", _chan(bias, nchw))], f"{n}.acc")
        a1c = np.array(a1 if groups > 1 else a1 * o, np.int64)
        acc = b.op("Max", [acc, b.const(f"{n}.a0", _chan(shift0, nchw))], f"{n}.acc_lo")
        acc = b.op("Min", [acc, b.const(f"{n}.a1", _chan(a1c, nchw))], f"{n}.acc_hi")
        d = b.op("Add", [acc, b.const(f"{n}.minus_a0", _chan(-shift0, nchw))], f"{n}.d0")
    d = b.op("Clip", [d, b.const(f"{n}.zero", np.array(0, np.int32)), b.const(f"{n}.top", np.array(width - 1,
                                                                                                  np.int32))], f"{n}.d")
    dtype = _code_dtype(layer.signed)
    if groups * width <= LUT_ENTRIES:
        table = np.empty((groups, width), dtype)
        for g in range(groups):
            a = np.minimum(np.arange(width, dtype=np.int64) + a0[g], a1[g])
            table[g] = np.searchsorted(np.array(thr[g], np.int64), a, side="right") + lo
        index = d
        if groups > 1:
            index = b.op("Add", [d, b.const(f"{n}.rows", _chan(np.arange(groups) * width, nchw))], f"{n}.index")
        return _table_lookup(b, n, table.reshape(-1), index, dims)
    if width > F32_EXACT:  # Div in OpenVINO is float32
        b.unsafe.append(n)
    return _two_level(b, n, d, a0, a1, thr, lo, width, groups, dtype, dims, nchw)


def _two_level(b: _Builder, n: str, d: str, a0, a1, thr, lo: int, width: int, groups: int, dtype, dims,
               nchw: bool) -> str:
    """A table too large for one level: buckets of 2^r values of d, each holding at most one
    threshold; code = base[bucket] + [d >= threshold[bucket]] (module docstring)."""
    gaps = [np.diff(np.array([x - a for x in t if a < x <= z], np.int64)) for t, a, z in zip(thr, a0, a1)]
    gap = min([int(x.min()) for x in gaps if len(x)] + [width])
    r = max(0, gap.bit_length() - 1)  # 2^r <= the smallest gap between thresholds
    buckets = -(-width // (1 << r))
    base = np.empty((groups, buckets), np.int32)
    first = np.full((groups, buckets), width, np.int64)  # no threshold: d <= width - 1 never reaches it
    starts = np.arange(buckets, dtype=np.int64) << r
    for g in range(groups):
        t = np.array(thr[g], np.int64) - a0[g]
        base[g] = np.searchsorted(t, np.minimum(starts, a1[g] - a0[g]), side="right") + lo
        inside = t[(t > 0) & (t <= a1[g] - a0[g]) & (t % (1 << r) != 0)]
        first[g, inside >> r] = inside
    if first.max() > INT32_MAX:
        raise FiqnnError(f"{n}: requantization table out of range")
    bucket = b.op("Div", [d, b.const(f"{n}.bucket_size", np.array(1 << r, np.int32))], f"{n}.bucket")
    if groups > 1:
        bucket = b.op("Add", [bucket, b.const(f"{n}.rows", _chan(np.arange(groups) * buckets, nchw))],
                      f"{n}.bucket_row")
    flat_bucket = b.reshape(bucket, f"{n}.bucket_flat", [-1])
    flat_d = b.reshape(d, f"{n}.d_flat", [-1])
    start = b.op("GatherElements", [b.const(f"{n}.base", base.reshape(-1)), flat_bucket], f"{n}.base_code", axis=0)
    edge = b.op("GatherElements", [b.const(f"{n}.edge", (first - 1).astype(np.int32).reshape(-1)), flat_bucket],
                f"{n}.edge_d", axis=0)
    step = b.op("Sub", [flat_d, edge], f"{n}.past")  # > 0 exactly when d >= the bucket's threshold
    step = b.op("Max", [step, b.const(f"{n}.zero_step", np.array(0, np.int32))], f"{n}.past_pos")
    step = b.op("Min", [step, b.const(f"{n}.one_step", np.array(1, np.int32))], f"{n}.past_bit")
    code = b.op("Add", [start, step], f"{n}.code")
    code = b.op("Cast", [code], f"{n}.code8", to=TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8)
    return b.reshape(code, f"{n}.y_q", dims)


# ---- the other nodes: tables over their input codes; int64 only where no table fits --------------

def _code_range_of(src) -> tuple[int, int]:
    return code_range(*code_of(src))


def _lut(b: _Builder, n: str, node: IntLut, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E11): the table itself, indexed by x - lo_in in int32."""
    c, h, w = in_shapes[0]
    lo = code_range(node.in_bits, node.in_signed)[0]
    index = _codes_as_int32(b, n, ins[0])
    if lo:
        index = b.op("Add", [index, b.const(f"{n}.minus_lo", np.array(-lo, np.int32))], f"{n}.index")
    return _table_lookup(b, n, node.table.astype(_code_dtype(node.signed)), index, [-1, h, w, c])


def _affine(b: _Builder, n: str, node: IntAffine, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E15): one table per channel over the 2^A input codes, (E15) evaluated at export."""
    c, h, w = in_shapes[0]
    lo_in, hi_in = code_range(node.in_bits, node.in_signed)
    span = hi_in - lo_in + 1
    x = np.arange(lo_in, hi_in + 1, dtype=np.int64)[None, :]
    mult, shift = (np.broadcast_to(a.astype(np.int64), (c,))[:, None] for a in (node.mult, node.shift))
    table = clamp_codes(rshift_round(x * mult + node.offset.astype(np.int64)[:, None], shift), node.a_bits,
                        node.signed)
    index = b.op("Add", [_codes_as_int32(b, n, ins[0]),
                         b.const(f"{n}.rows", (np.arange(c) * span - lo_in).astype(np.int32))], f"{n}.index")
    return _table_lookup(b, n, table.reshape(-1), index, [-1, h, w, c])


def _concat(b: _Builder, n: str, node: IntConcat, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E13): each input through its own table (its pair, evaluated at every input code), then Concat."""
    parts = []
    for j, (x, shape, src) in enumerate(zip(ins, in_shapes, srcs)):
        c, h, w = shape
        lo_in, hi_in = _code_range_of(src)
        codes = np.arange(lo_in, hi_in + 1, dtype=np.int64)
        table = clamp_codes(rshift_round(codes * int(node.mult[j]), int(node.shift[j])), node.a_bits, node.signed)
        index = _codes_as_int32(b, n, x, str(j))
        if lo_in:
            index = b.op("Add", [index, b.const(f"{n}.minus_lo{j}", np.array(-lo_in, np.int32))], f"{n}.index{j}")
        parts.append(_table_lookup(b, n, table, index, [-1, h, w, c], str(j)))
    return b.op("Concat", parts, f"{n}.y_q", axis=-1)


def _grid(srcs: list) -> list[np.ndarray]:
    """For each entry of a mixed-radix table over the codes of ``srcs`` (the first input most
    significant), each input's code: one int64 array per input."""
    grid = np.meshgrid(*[np.arange(lo, hi + 1, dtype=np.int64) for lo, hi in map(_code_range_of, srcs)],
                       indexing="ij")
    return [g.reshape(-1) for g in grid]


def _radix_index(b: _Builder, n: str, ins: list[str], srcs: list) -> str:
    """Mixed-radix int32 index of several code tensors, sum_j (x_j - lo_j) * R_j: the entry of
    :func:`_grid` that holds their codes."""
    ranges = [_code_range_of(s) for s in srcs]
    sizes = [hi - lo + 1 for lo, hi in ranges]
    radix = [int(np.prod(sizes[j + 1:], dtype=np.int64)) for j in range(len(sizes))]
    index, const = None, -sum(r * lo for r, (lo, _) in zip(radix, ranges))
    for j, (x, r) in enumerate(zip(ins, radix)):
        term = _codes_as_int32(b, n, x, str(j))
        if r != 1:
            term = b.op("Mul", [term, b.const(f"{n}.radix{j}", np.array(r, np.int32))], f"{n}.term{j}")
        index = term if index is None else b.op("Add", [index, term], f"{n}.index{j}")
    if const:
        index = b.op("Add", [index, b.const(f"{n}.minus_lo", np.array(const, np.int32))], f"{n}.index")
    return index


def _table_fits(srcs: list) -> bool:
    """All inputs are codes and their combinations number at most 2^16."""
    if any(code_of(s) is None for s in srcs):
        return False
    return int(np.prod([hi - lo + 1 for lo, hi in map(_code_range_of, srcs)], dtype=np.int64)) <= 2**16


def _mul(b: _Builder, n: str, node: IntMul, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E12): one table over every pair of codes (x, g); g (N, 1, 1, C) broadcasts in the index Add."""
    c, h, w = in_shapes[0]
    index, (x, g) = _radix_index(b, n, ins, srcs), _grid(srcs)
    table = clamp_codes(rshift_round(x * g * int(node.mult[0]), int(node.shift[0])), node.a_bits, node.signed)
    return _table_lookup(b, n, table, index, [-1, h, w, c])


def _add(b: _Builder, n: str, node: IntAdd, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E9): a table over every combination of the input codes when they number at most 2^16;
    otherwise (int32 accumulators among the inputs) the int64 chain."""
    c, h, w = in_shapes[0]
    if _table_fits(srcs):
        index, grid = _radix_index(b, n, ins, srcs), _grid(srcs)
        total = sum(x * int(m) for x, m in zip(grid, node.mult))
        table = clamp_codes(rshift_round(total, int(node.shift[0])), node.a_bits, node.signed)
        return _table_lookup(b, n, table, index, [-1, h, w, c])
    accs = [j for j, src in enumerate(srcs) if code_of(src) is None]
    if len(accs) == 1 and _table_fits([s for j, s in enumerate(srcs) if j != accs[0]]):
        out = _add_accumulator(b, n, node, ins, srcs, accs[0], [-1, h, w, c])
        if out is not None:
            return out
    b.unsafe.append(n)
    terms = []
    for i, (x, m) in enumerate(zip(ins, node.mult)):
        wide = b.op("Cast", [x], f"{n}.in{i}", to=TensorProto.INT64)
        terms.append(b.op("Mul", [wide, b.const(f"{n}.mult{i}", np.array(int(m), np.int64))], f"{n}.term{i}"))
    total = terms[0]
    for i, t in enumerate(terms[1:], 1):
        total = b.op("Add", [total, t], f"{n}.sum{i}")
    return _requantize64(b, n, total, node.shift, node.a_bits, node.signed)


def _add_accumulator(b: _Builder, n: str, node: IntAdd, ins: list[str], srcs: list, j: int, dims) -> str | None:
    """(E9) of one int32 accumulator v (input ``j``) and codes: for each combination r of the codes,
    u_r = sum of their terms, and y is a monotone function of v with thresholds T_k(r); a table per
    r over v - a0(r), clipped (module docstring: Residual adds). None when it does not fit int32."""
    others = [k for k in range(len(ins)) if k != j]
    lo, hi = code_range(node.a_bits, node.signed)
    acc_lo, acc_hi = srcs[j].acc_bounds()
    v_lo, v_hi = int(acc_lo.min()), int(acc_hi.max())
    if not _fits_int32(v_hi - v_lo, v_lo - v_hi):
        return None
    u = sum(x * int(node.mult[k]) for x, k in zip(_grid([srcs[k] for k in others]), others))
    m0, s = int(node.mult[j]), int(node.shift[0])
    thr = [thresholds(m0, s, lo, hi, v_lo, v_hi, int(ur)) for ur in u]
    a0 = [min(max(t[0] - 1, v_lo), v_hi) for t in thr]
    a1 = [max(min(t[-1], v_hi), x) for t, x in zip(thr, a0)]
    width = max(y - x + 1 for x, y in zip(a0, a1))
    if len(u) * width > LUT_ENTRIES:
        return None
    table = np.empty((len(u), width), _code_dtype(node.signed))
    for r in range(len(u)):
        table[r] = np.searchsorted(np.array(thr[r], np.int64), np.minimum(np.arange(width) + a0[r], a1[r]),
                                   side="right") + lo
    index = _radix_index(b, n, [ins[k] for k in others], [srcs[k] for k in others])
    v = b.reshape(ins[j], f"{n}.v_flat", [-1])
    r_flat = b.reshape(index, f"{n}.r_flat", [-1])
    start = b.op("GatherElements", [b.const(f"{n}.a0", np.array(a0, np.int32)), r_flat], f"{n}.a0_r", axis=0)
    d = b.op("Sub", [v, start], f"{n}.d0")  # |v - a0(r)| <= v_hi - v_lo fits int32
    d = b.op("Clip", [d, b.const(f"{n}.zero", np.array(0, np.int32)),
                      b.const(f"{n}.top", np.array(width - 1, np.int32))], f"{n}.d")
    rows = b.op("Mul", [r_flat, b.const(f"{n}.width", np.array(width, np.int32))], f"{n}.row")
    d = b.op("Add", [d, rows], f"{n}.entry")
    return _table_lookup(b, n, table.reshape(-1), d, dims)


def _avg_pool(b: _Builder, n: str, node: IntAvgPool, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E10): window sums as ReduceSum of a Gather im2col of the int32 codes (padding cells 0),
    then one table per divisor pair over every possible window sum, the pair picked per output position."""
    (channels, h, w), = in_shapes
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ho, wo = pool_out(h, kh, sh, ph, node.ceil_mode), pool_out(w, kw, sw, pw, node.ceil_mode)
    cells = b.reshape(_codes_as_int32(b, n, ins[0]), f"{n}.cells", [-1, h * w, channels])
    cells = b.op("Pad", [cells, b.shape(f"{n}.pads", [0, 0, 0, 0, 1, 0]), b.const(f"{n}.pad_value",
                                                                                    np.array(0, np.int32))],
                 f"{n}.cells_padded")  # the last cell: padding, and past the far edge in ceil mode
    rows = np.arange(ho)[:, None] * sh - ph + np.arange(kh)[None, :]
    cols = np.arange(wo)[:, None] * sw - pw + np.arange(kw)[None, :]
    r, q = rows[:, None, :, None], cols[None, :, None, :]  # (Ho, Wo, kh, kw)
    index = np.where((r >= 0) & (r < h) & (q >= 0) & (q < w), r * w + q, h * w).astype(np.int32)
    windows = b.op("Gather", [cells, b.const(f"{n}.windows", index.reshape(-1))], f"{n}.gathered", axis=1)
    windows = b.reshape(windows, f"{n}.windows4", [-1, ho * wo, kh * kw, channels])
    sums = b.op("ReduceSum", [windows, b.shape(f"{n}.axis", [2])], f"{n}.sum", keepdims=0)  # |sum| <= 255 kh kw
    if 255 * kh * kw > F32_EXACT:  # OpenVINO's ReduceSum is float32
        b.unsafe.append(n)
    pick = node.divisors(h, w) - 1 if len(node.mult) > 1 else np.zeros((ho, wo), np.int64)
    used, row = np.unique(pick, return_inverse=True)
    lo_in, hi_in = code_range(node.in_bits, node.in_signed)
    s_lo, s_hi = lo_in * kh * kw, hi_in * kh * kw
    span = s_hi - s_lo + 1
    dims = [-1, ho, wo, channels]
    if len(used) * span <= LUT_ENTRIES:
        s = np.arange(s_lo, s_hi + 1, dtype=np.int64)[None, :]
        table = clamp_codes(rshift_round(s * node.mult.astype(np.int64)[used][:, None],
                                         node.shift.astype(np.int64)[used][:, None]), node.a_bits, node.signed)
        offsets = (row.reshape(ho * wo, 1) * span - s_lo).astype(np.int32)
        index = b.op("Add", [sums, b.const(f"{n}.rows", offsets)], f"{n}.index")
        return _table_lookup(b, n, table.reshape(-1), index, dims)
    b.unsafe.append(n)
    sums64 = b.op("Cast", [sums], f"{n}.sum64", to=TensorProto.INT64)
    mult, shift = node.mult.astype(np.int64)[pick].reshape(-1, 1), node.shift[pick].reshape(-1, 1)
    prod = b.op("Mul", [sums64, b.const(f"{n}.mult", mult)], f"{n}.prod")
    return b.reshape(_requantize64(b, n, prod, shift, node.a_bits, node.signed), f"{n}.y_map", dims)


def _max_pool(b: _Builder, n: str, node: IntMaxPool, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E7) on uint8 or int8 codes; ceil mode as far-edge padding, which MaxPool never counts."""
    (_, h, w), = in_shapes
    return _maxpool_nhwc(b, n, ins[0], node.kernel, node.stride, _window_pads(node, h, w))


def _channels(b: _Builder, n: str, node: IntChannels, ins: list[str], in_shapes: list, srcs: list) -> str:
    """(E14): Gather along the channel axis (the last one)."""
    return b.op("Gather", [ins[0], b.const(f"{n}.index", node.index.astype(np.int64))], f"{n}.y_q", axis=3)


def _half(shift: np.ndarray) -> np.ndarray:
    """2^(shift-1), 0 where shift is 0: the rounding term of (E3)."""
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0).astype(np.int64)


def _requantize64(b: _Builder, n: str, prod: str, shift: np.ndarray, a_bits: int, signed: bool) -> str:
    """(E3) and the clamp of (E4) on the int64 tensor ``prod`` (``|prod| < 2^62``), ``shift``
    broadcasting against it (module docstring: What stays int64)."""
    shift = shift.astype(np.int64)
    lo, hi = code_range(a_bits, signed)
    rounded = b.op("Add", [prod, b.const(f"{n}.half", _half(shift))], f"{n}.rounded")
    pow2 = b.const(f"{n}.pow2", np.left_shift(np.int64(1), shift))  # 2^shift <= 2^62
    rem = b.op("Mod", [rounded, pow2], f"{n}.rem", fmod=0)  # in [0, 2^shift): the divisor's sign
    multiple = b.op("Sub", [rounded, rem], f"{n}.multiple")  # 2^shift * floor(rounded / 2^shift)
    floor = b.op("Div", [multiple, pow2], f"{n}.floor")  # exact: no remainder to round
    low = b.op("Max", [floor, b.const(f"{n}.qmin", np.array(lo, np.int64))], f"{n}.low")
    clamped = b.op("Min", [low, b.const(f"{n}.qmax", np.array(hi, np.int64))], f"{n}.clamped")
    return b.op("Cast", [clamped], f"{n}.y_q", to=TensorProto.INT8 if signed else TensorProto.UINT8)


EMITTERS = {IntLayer: _layer, IntAdd: _add, IntAvgPool: _avg_pool, IntMaxPool: _max_pool, IntLut: _lut,
            IntMul: _mul, IntConcat: _concat, IntChannels: _channels, IntAffine: _affine}


def export_onnx(graph: IntGraph, path: str | os.PathLike) -> None:
    """Write the integer ONNX model of ``graph`` to ``path`` (atomically)."""
    _io.write_bytes(path, to_onnx(graph).SerializeToString())


def _model_bytes(model, x_q: np.ndarray) -> tuple[bytes | str, np.ndarray]:
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString(), x_q
    if isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".onnx":
        return str(model), x_q
    graph = as_graph(model)
    return to_onnx(graph).SerializeToString(), check_input(graph, x_q)


def run_onnx(model: IntGraph | str | os.PathLike | onnx.ModelProto, x_q: np.ndarray,
             batch_size: int = 250, progress: bool = False) -> np.ndarray:
    """Run ``model`` in ONNX Runtime (CPU) on uint8 images ``x_q``; int32 logits (N, classes).

    ``model`` is what :func:`fiqnn.run` and :func:`fiqnn.export.c99.run_c` take, an IntGraph or
    its model file (see :func:`fiqnn.integer.execute.as_graph`), or an exported model: an
    ``onnx.ModelProto`` or a ``.onnx`` file.
    """
    ort = optional_import("onnxruntime", "run_onnx")
    data, x_q = _model_bytes(model, x_q)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    starts = progress_bar(range(0, len(x_q), batch_size), progress=progress, desc="ONNX Runtime", unit="batch")
    return np.concatenate([sess.run(["logits"], {"x_q": x_q[i:i + batch_size]})[0] for i in starts])


def run_openvino(model: IntGraph | str | os.PathLike | onnx.ModelProto, x_q: np.ndarray,
                 batch_size: int = 250, progress: bool = False) -> np.ndarray:
    """Run ``model`` in OpenVINO (CPU plugin, through its ONNX frontend) on uint8 images ``x_q``;
    int32 logits (N, classes). ``model`` as for :func:`run_onnx`. Exact for every graph whose
    :func:`openvino_unsafe_nodes` is empty (module docstring: OpenVINO)."""
    ov = optional_import("openvino", "run_openvino")
    data, x_q = _model_bytes(model, x_q)
    core = ov.Core()
    if isinstance(data, bytes):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:  # read_model takes a path (or an IR string), not ONNX bytes
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    else:
        compiled = core.compile_model(core.read_model(data), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    starts = progress_bar(range(0, len(x_q), batch_size), progress=progress, desc="OpenVINO", unit="batch")
    out = [np.array(request.infer({0: np.ascontiguousarray(x_q[i:i + batch_size])})[0], np.int32) for i in starts]
    return np.concatenate(out)
