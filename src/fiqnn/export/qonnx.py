"""IntGraph -> QONNX (ONNX with qonnx's MultiThreshold), computed by qonnx's executor exactly as :func:`fiqnn.run`.

The spelling is the one FINN and hls4ml flows consume: NCHW tensors holding integers in a float32
container (float64 or int64 only where float32 cannot hold a value exactly, below), integer
weights and biases, and in place of every requantization a ``MultiThreshold`` node of the domain
``qonnx.custom_op.general`` whose output is the code itself (``out_scale`` 1, ``out_bias`` the
lowest code, ``out_dtype`` UINT<A> or INT<A>). Tensor datatypes are annotated for downstream
tools (``ModelWrapper.set_tensor_datatype``: UINT8 input, INT<W> weights, INT32 biases and
accumulators, UINT<A> / INT<A> codes). No Quant node is used: Quant divides by its scale in float32,
which is not (E4). The ops, with the equations of docs/arithmetic.md:

    conv      Conv(x, w) (float32, integer weights, zero padding = code 0), Add(bias)          (E2)
    fc        Flatten (NCHW order, as the model file's rows), MatMul(x, w^T), Add(bias)        (E2)
    requant   MultiThreshold(acc, T) with T[c, k] = T_k of channel c, below                     (E4)
    pool      MaxPool on the codes (a fused pool, or a maxpool node; ceil mode as padding)      (E7)
    logits    the last layer's accumulators, flattened: output ``logits`` (N, classes)
    add       Cast, Mul(v_j, mult_j), Add ... (the exact sum S), MultiThreshold(S, T(mult 1))   (E9)
    avgpool   window sums: depthwise Conv of ones (padding and ceil mode's far cells hold 0),
              MultiThreshold per divisor (per position: Reshape to (N, C*Ho*Wo) and back)       (E10)
    lut       MultiThreshold on x (or on -x) when the table is monotone; else refused          (E11)
    mul       Mul(x, g) (|x g| <= 2^16), MultiThreshold                                        (E12)
    concat    a MultiThreshold per input, Concat(axis=1)                                        (E13)
    channels  Gather(x, index, axis=1)                                                          (E14)
    affine    Mul(x, sign(mult[c])), MultiThreshold with thresholds per channel                 (E15)

Thresholds. Every requantization of docs/arithmetic.md is ``clamp(floor((a * m + off + h) / 2^s),
lo, hi)`` of an integer ``a`` (a layer's ``acc``, an add's sum with m = 1, a window sum, ...),
``m > 0``, ``h = 2^(s-1)`` (0 for s = 0), ``off`` an integer (0 but for (E15)). For any integer q,
``clamp(q, lo, hi) = lo + #{k in (lo, hi] : q >= k}`` (q <= lo: none; lo < q < hi: q - lo; q >= hi:
all hi - lo), and since ``floor(p / 2^s) >= k`` exactly when ``p >= k 2^s``, and a is an integer,
``floor((a m + off + h) / 2^s) >= k  <=>  a m >= k 2^s - h - off  <=>  a >= T_k = ceil((k 2^s - h -
off) / m)``. So ``code(a) = lo + #{k : a >= T_k}``, which is MultiThreshold's output with
thresholds T_k (k = lo+1 .. hi, non-decreasing in k, as FINN requires) and ``out_bias = lo``. The
T_k are computed at export with Python integers, exactly, signed codes (lo < 0) included. Each is
then clipped to ``[L, U + 1]``, where ``[L, U]`` is every value ``a`` can take (a layer's (E6)
bounds per channel, the sum of the inputs' ranges for an add, ...): a threshold above U is never
reached and stays unreached at U + 1, one at or below L is always reached and stays reached at L, so
the count is the same for every reachable ``a``, and every threshold is an integer of magnitude at
most ``max(|L|, |U| + 1)``. For an add, ``S = sum_j v_j mult_j`` and ``(m, s) = (1, shift)``:
``T_k = k 2^shift - 2^(shift-1) = ceil((2k - 1) 2^(shift-1))`` (``T_k = k`` for shift 0).

Exactness in qonnx's executor (qonnx 1.0.0, ``qonnx.core.onnx_exec.execute_onnx``): it runs each
standard node alone in ONNX Runtime (CPU) and each custom node in numpy. What holds, per op:

    MultiThreshold  ``qonnx.custom_op.general.multithreshold``: ``cmp = v[..., None] >= thresholds``
              elementwise in numpy, ``count_nonzero(cmp, axis=-1).astype(v.dtype)``, then
              ``out_scale * ret + out_bias``. The thresholds have the input's dtype (float32,
              float64 or int64), so each comparison is between two exactly represented integers:
              exact. The count (at most 255) and ``1.0 * count + lo`` are exact in float32 (a
              Python float is a weak scalar in numpy 2, so a float32 count stays float32); for an
              int64 or float64 input the result is float64 (``1.0 * int64`` promotes), then Cast
              to float32.
    Conv, MatMul, Add (float32 or float64, ONNX Runtime's MLAS / Eigen kernels): every operand is an
              integer and every product and partial sum, in whatever order or blocking the kernel
              uses, is a sum of a subset of the terms, bounded by the (E6) bound of the layer (or
              the window sum bound, or the add's bound). (E8): float32 holds every integer up to
              2^24, float64 up to 2^53, so with the bound below that every rounding step is exact.
              The export picks float32 where the bound is below 2^24. A fc layer above it is a
              float64 MatMul (ONNX Runtime has no float64 Conv); a conv layer above it (groups 1) is
              split by input channels into float32 Convs each below 2^24, Cast to float64 and added
              there (|acc| <= 2^31 < 2^53), group by group (a grouped conv's groups then Concat).
    add       ``v_j mult_j`` needs up to 62 bits ((E9) proves ``|S| < 2^62``): float32 when the bound
              of S is below 2^24, float64 below 2^53, else int64 Mul and Add (exact: no overflow);
              thresholds in the same dtype (int64 vs int64 compares exactly in numpy).
    MaxPool, Reshape, Flatten, Slice, Gather, Concat, Cast of integers within range: data movement,
              a maximum of codes (padding never wins in MaxPool), exact conversions.

``prove_qonnx`` lists these claims per node, each a tensor, the dtype it uses and the bound that
makes it exact; the exporter picks dtypes so that every claim holds, and refuses a node where none
would (an average pool whose window sums reach 2^24, a non-monotone lut).
qonnx's executor also "sanitizes" integer-annotated tensors by rounding values that are not
integers; every value here is an exact integer, so that never fires (the tests run with
``SANITIZE_QUANT_TENSORS=0`` too).

The file has batch size 1 (FINN's convention; Reshapes use -1 for the batch); :func:`run_qonnx` sets
the batch size of a copy of every value_info before running it. Tensors are named after the node's
index (``n3.acc``), never after the model file's name strings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import _io
from .._optional import optional_import
from .._progress import bar as progress_bar
from ..errors import FiqnnError
from ..integer.arith import INT32_MAX, code_peak, code_range, thresholds
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
from ..integer.nodes import code_of, peak_of, pool_out

onnx = optional_import("onnx", "fiqnn.export.qonnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (onnx is known to import by now)

OPSET = 13
DOMAIN = "qonnx.custom_op.general"
F32, F64, I64 = "float32", "float64", "int64"
# The largest magnitude below which every integer (and so every sum of them that stays there) is exact.
EXACT = {F32: 2**24, F64: 2**53, I64: 2**63 - 1}
PROTO = {F32: TensorProto.FLOAT, F64: TensorProto.DOUBLE, I64: TensorProto.INT64}
MT_ELEMENTS = 2**27  # run_qonnx's batch: at most this many threshold comparisons per MultiThreshold


class QONNXExportError(FiqnnError):
    """An IntGraph node has no exact QONNX spelling (the message names the node and why)."""


@dataclass(frozen=True)
class Claim:
    """One exactness claim: every value of ``tensor`` (node ``node``) is an integer of magnitude at
    most ``bound``, held in ``dtype``, which represents every such integer exactly."""

    node: str
    tensor: str
    dtype: str
    bound: int

    @property
    def holds(self) -> bool:
        return self.bound < EXACT[self.dtype]

    def __str__(self) -> str:
        return (f"node {self.node}: {self.tensor} in {self.dtype}, |value| <= {self.bound} "
                f"{'<' if self.holds else '>='} {EXACT[self.dtype]}")


@dataclass(frozen=True)
class _T:
    """A tensor of the graph being built: its name, dtype (F32, F64, I64) and shape (batch 1)."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def _pick(bound: int, allowed=(F32, F64, I64)) -> str:
    """The first dtype of ``allowed`` that holds every integer of magnitude <= ``bound`` exactly."""
    return next((d for d in allowed if bound < EXACT[d]), allowed[-1])


class _Builder:
    """The nodes, initializers, value_info, datatype annotations and exactness claims being built."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.infos: dict[str, _T] = {}
        self.datatypes: dict[str, str] = {}
        self.claims: list[Claim] = []
        self.node = ""  # the IntGraph node being emitted, for claims and errors
        self.made: dict[tuple[str, str], _T] = {}  # (tensor, conversion) -> the converted tensor, made once

    def bad(self, msg: str) -> QONNXExportError:
        return QONNXExportError(f"node {self.node}: {msg}")

    def claim(self, t: _T, bound: int, what: str = "") -> None:
        c = Claim(self.node, what or t.name, t.dtype, int(bound))
        if not c.holds:
            raise self.bad(f"{c.tensor} could reach {c.bound}, beyond what {c.dtype} holds exactly")
        self.claims.append(c)

    def const(self, name: str, value: np.ndarray, datatype: str | None = None) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        if datatype:
            self.datatypes[name] = datatype
        return name

    def op(self, op_type: str, inputs: list[str], name: str, dtype: str, shape, datatype: str | None = None,
           domain: str = "", **attrs) -> _T:
        self.nodes.append(helper.make_node(op_type, inputs, [name], domain=domain or None, **attrs))
        t = _T(name, dtype, tuple(int(v) for v in shape))
        self.infos[name] = t
        if datatype:
            self.datatypes[name] = datatype
        return t

    def cast(self, x: _T, dtype: str) -> _T:
        """``x`` as ``dtype`` (an exact conversion of integers that both hold)."""
        if x.dtype == dtype:
            return x
        if (x.name, dtype) not in self.made:
            self.made[x.name, dtype] = self.op("Cast", [x.name], f"{x.name}.{dtype}", dtype, x.shape,
                                               self.datatypes.get(x.name), to=PROTO[dtype])
        return self.made[x.name, dtype]

    def as4d(self, x: _T) -> _T:
        """An fc's (N, O) output as the (N, O, 1, 1) map the IntGraph gives it."""
        if len(x.shape) == 4:
            return x
        if (x.name, "map") not in self.made:
            shape = self.const(f"{x.name}.shape4", np.array([-1, x.shape[1], 1, 1], np.int64))
            self.made[x.name, "map"] = self.op("Reshape", [x.name, shape], f"{x.name}.map", x.dtype,
                                               (1, x.shape[1], 1, 1), self.datatypes.get(x.name))
        return self.made[x.name, "map"]


def _code_type(bits: int, signed: bool) -> str:
    return f"{'INT' if signed else 'UINT'}{bits}"


def _multithreshold(b: _Builder, n: str, v: _T, table, bits: int, signed: bool, low: int, high: int) -> _T:
    """MultiThreshold(v, table) -> float32 codes; ``table`` (C or 1, 2^bits - 1) integers, every value
    of ``v`` in [low, high] (so every threshold in [low, high + 1])."""
    lo = code_range(bits, signed)[0]
    t = np.asarray(table, dtype=np.int64 if v.dtype == I64 else np.float64)
    bound = max(abs(int(low)), abs(int(high)) + 1)
    t_name = b.const(f"{n}.thresholds", t.astype(v.dtype))
    b.claim(_T(t_name, v.dtype, t.shape), bound)
    layout = "NCHW" if len(v.shape) == 4 else "NC"
    out_dtype = F32 if v.dtype == F32 else F64  # out_scale * count: float64 for an int64 or float64 count
    y = b.op("MultiThreshold", [v.name, t_name], f"{n}.mt", out_dtype, v.shape, _code_type(bits, signed),
             domain=DOMAIN, out_dtype=_code_type(bits, signed), out_scale=1.0, out_bias=float(lo),
             data_layout=layout)
    if out_dtype != F32:
        y = b.op("Cast", [y.name], f"{n}.y_q", F32, y.shape, _code_type(bits, signed), to=TensorProto.FLOAT)
    return y


def _window_pads(node: IntAvgPool | IntMaxPool, h: int, w: int) -> list[int]:
    """ONNX ``pads`` of a pooling window over an h x w map: the node's padding, and at the far edges as
    many more cells as a ceil-mode window reaches past them (the floor-mode size is then (E7)'s)."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ho, wo = pool_out(h, kh, sh, ph, node.ceil_mode), pool_out(w, kw, sw, pw, node.ceil_mode)
    extra_h, extra_w = max(0, (ho - 1) * sh + kh - h - 2 * ph), max(0, (wo - 1) * sw + kw - w - 2 * pw)
    return [ph, pw, ph + extra_h, pw + extra_w]


def _maxpool(b: _Builder, n: str, x: _T, kernel, stride, pads, out_shape) -> _T:
    return b.op("MaxPool", [x.name], f"{n}.pooled", F32, (1, *out_shape), b.datatypes.get(x.name),
                kernel_shape=list(kernel), strides=list(stride), pads=list(pads))


# ---- the emitters: one per node class ----------------------------------------------------------------

def _conv_chunks(layer: IntLayer, w: np.ndarray) -> list[tuple[int, int, int]]:
    """Input-channel ranges (start, stop, bound) of the weights ``w`` (O, C, kh, kw) of one group of
    ``layer`` whose every partial sum, without the bias, stays below 2^24 in magnitude ((E6) on the
    chunk's weights)."""
    x_min, x_max = code_range(layer.in_bits, layer.in_signed)
    w = w.astype(np.int64)
    up = (x_max * np.maximum(w, 0) + x_min * np.minimum(w, 0)).sum(axis=(2, 3))  # (O, C)
    down = (x_max * np.minimum(w, 0) + x_min * np.maximum(w, 0)).sum(axis=(2, 3))
    out, start = [], 0
    hi, lo = np.zeros(len(w), np.int64), np.zeros(len(w), np.int64)
    for c in range(w.shape[1]):
        nhi, nlo = hi + up[:, c], lo + down[:, c]
        if c > start and max(nhi.max(), -nlo.min()) >= EXACT[F32]:
            out.append((start, c, int(max(hi.max(), -lo.min()))))
            start, nhi, nlo = c, up[:, c].copy(), down[:, c].copy()
        hi, lo = nhi, nlo
    out.append((start, w.shape[1], int(max(hi.max(), -lo.min()))))
    for start, _stop, bound in out:
        if bound >= EXACT[F32]:
            raise QONNXExportError(f"layer {layer.name}: input channel {start} alone can reach {bound} >= 2^24, "
                                   "which a float32 Conv does not hold exactly")
    return out


def _wide_conv(b: _Builder, n: str, node: IntLayer, x: _T, shape, geom: dict) -> _T:
    """A conv whose accumulators can reach 2^24: per group, float32 Convs over input-channel chunks
    each below 2^24, Cast to float64 and added there (|acc| <= 2^31 < 2^53); groups concatenated."""
    g, o = node.groups, node.out_channels
    cg, og = x.shape[1] // g, o // g
    outs = []
    for j in range(g):
        w = node.w_q[j * og:(j + 1) * og]
        parts = []
        for start, stop, part_bound in _conv_chunks(node, w):
            tag = f"{n}.g{j}c{start}"
            lo_c, hi_c = j * cg + start, j * cg + stop
            sl = b.op("Slice", [x.name, b.const(f"{tag}.starts", np.array([lo_c], np.int64)),
                                b.const(f"{tag}.ends", np.array([hi_c], np.int64)),
                                b.const(f"{tag}.axes", np.array([1], np.int64))],
                      f"{tag}.x", F32, (1, stop - start, *x.shape[2:]), b.datatypes.get(x.name))
            wc = b.const(f"{tag}.w", w[:, start:stop].astype(np.float32), f"INT{node.w_bits}")
            part = b.op("Conv", [sl.name, wc], f"{tag}.raw", F32, (1, og, *shape[2:]), "INT32", **geom, group=1)
            b.claim(part, part_bound)
            parts.append(b.cast(part, F64))
        total = parts[0]
        for k, part in enumerate(parts[1:], 1):
            total = b.op("Add", [total.name, part.name], f"{n}.g{j}.sum{k}", F64, total.shape, "INT32")
            b.claim(total, node.acc_bound())
        outs.append(total)
    if g == 1:
        return outs[0]
    return b.op("Concat", [t.name for t in outs], f"{n}.raw", F64, shape, "INT32", axis=1)


def _layer(b: _Builder, n: str, node: IntLayer, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E2) Conv or MatMul, Add(bias); (E4) MultiThreshold; (E7) MaxPool if pooled."""
    x = ins[0]
    o = node.out_channels
    bound = node.acc_bound()
    acc_lo, acc_hi = node.acc_bounds()
    if node.kind == "fc":
        if len(x.shape) != 2:
            x = b.op("Flatten", [x.name], f"{n}.flat", x.dtype, (1, int(np.prod(x.shape[1:]))),
                     b.datatypes.get(x.name), axis=1)
        dt = _pick(bound, (F32, F64))  # ONNX Runtime's MatMul takes float64
        x = b.cast(x, dt)
        w = b.const(f"{n}.w", node.w_q.T.astype(dt), f"INT{node.w_bits}")
        raw = b.op("MatMul", [x.name, w], f"{n}.raw", dt, (1, o), "INT32")
        bias = b.const(f"{n}.bias", node.bias_q.astype(dt), "INT32")
        b.claim(raw, bound)
    else:
        x = b.as4d(x)
        kh, kw = node.w_q.shape[2:]
        (sh, sw), (ph, pw), (dh, dw) = node.stride, node.padding, node.dilation
        geom = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, ph, pw], dilations=[dh, dw])
        shape = (1, o, *_conv_map(node, shapes[0]))  # before the fused pool
        if bound < EXACT[F32]:
            w = b.const(f"{n}.w", node.w_q.astype(np.float32), f"INT{node.w_bits}")
            raw = b.op("Conv", [x.name, w], f"{n}.raw", F32, shape, "INT32", **geom, group=node.groups)
            b.claim(raw, bound)
            dt = F32
        else:
            raw, dt = _wide_conv(b, n, node, x, shape, geom), F64
        bias = b.const(f"{n}.bias", node.bias_q.astype(dt).reshape(1, o, 1, 1), "INT32")
    acc = b.op("Add", [raw.name, bias], f"{n}.acc", dt, raw.shape, "INT32")
    b.claim(acc, bound)
    if node.a_bits is None:
        return acc
    lo, hi = code_range(node.a_bits, node.signed)
    mult = np.broadcast_to(node.mult, (o,))
    shift = np.broadcast_to(node.shift, (o,))
    table = [thresholds(mult[c], shift[c], lo, hi, acc_lo[c], acc_hi[c], rounding=node.rounding) for c in range(o)]
    y = _multithreshold(b, n, acc, table, node.a_bits, node.signed, int(acc_lo.min()), int(acc_hi.max()))
    if not node.pool:
        return y
    k, s, p = node.pool
    return _maxpool(b, f"{n}.pool", y, (k, k), (s, s), (p, p, p, p), out_shape)


def _conv_map(layer: IntLayer, shape) -> tuple[int, int]:
    """The (Ho, Wo) of a conv before its fused pool."""
    kh, kw = layer.w_q.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    _, h, w = shape
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _range(src) -> tuple[int, int]:
    """The values a node's output can take: its codes' range, or its accumulators' (E6) bounds."""
    code = code_of(src)
    if code is not None:
        return code_range(*code)
    lo, hi = src.acc_bounds()
    return int(lo.min()), int(hi.max())


def _add(b: _Builder, n: str, node: IntAdd, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E9) S = sum_j v_j mult_j exactly (float32, float64 or int64 by its bound), MultiThreshold(S)."""
    ranges = [_range(src) for src in srcs]
    mults = [int(m) for m in node.mult]
    total = sum(m * peak_of(src) for m, src in zip(mults, srcs))
    dt = _pick(total)
    low = sum(m * lo for m, (lo, _) in zip(mults, ranges))
    high = sum(m * hi for m, (_, hi) in zip(mults, ranges))
    if any(len(x.shape) == 4 for x in ins):  # fc outputs (N, O) added to (O, 1, 1) maps
        ins = [b.as4d(x) for x in ins]
    vs = [b.cast(x, dt) for x in ins]
    total_t = None
    for j, (v, m) in enumerate(zip(vs, mults)):
        prod = b.op("Mul", [v.name, b.const(f"{n}.mult{j}", np.array(m, dtype=dt))], f"{n}.prod{j}", dt, v.shape)
        b.claim(prod, m * peak_of(srcs[j]))
        if total_t is None:
            total_t = prod
        else:
            total_t = b.op("Add", [total_t.name, prod.name], f"{n}.sum{j}", dt, v.shape)
            b.claim(total_t, total)
    lo, hi = code_range(node.a_bits, node.signed)
    table = [thresholds(1, int(node.shift[0]), lo, hi, low, high)]
    return _multithreshold(b, n, total_t, table, node.a_bits, node.signed, low, high)


def _avg_pool(b: _Builder, n: str, node: IntAvgPool, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E10) window sums by a depthwise Conv of ones, MultiThreshold by the window's divisor."""
    x = b.as4d(ins[0])
    c, h, w = shapes[0]
    (kh, kw), (sh, sw) = node.kernel, node.stride
    lo_in, hi_in = code_range(node.in_bits, node.in_signed)
    bound = code_peak(node.in_bits, node.in_signed) * kh * kw
    if bound >= EXACT[F32]:
        raise b.bad(f"its window sums can reach {bound} >= 2^24, which a float32 Conv does not hold exactly")
    ones = b.const(f"{n}.ones", np.ones((c, 1, kh, kw), np.float32), "UINT1")
    sums = b.op("Conv", [x.name, ones], f"{n}.sums", F32, (1, *out_shape), f"INT{max(bound, 1).bit_length() + 1}",
                kernel_shape=[kh, kw], strides=[sh, sw], pads=_window_pads(node, h, w), group=c)
    b.claim(sums, bound)
    low, high = lo_in * kh * kw, hi_in * kh * kw
    lo, hi = code_range(node.a_bits, node.signed)
    div = node.divisors(h, w)
    pick = div - 1 if len(node.mult) > 1 else np.zeros_like(div)
    rows = {int(p): thresholds(node.mult[p], node.shift[p], lo, hi, low, high) for p in np.unique(pick)}
    if len(rows) == 1:
        return _multithreshold(b, n, sums, [rows[int(pick.flat[0])]], node.a_bits, node.signed, low, high)
    # the divisor depends on the position: one threshold row per (channel, position)
    _, ho, wo = out_shape
    flat = b.op("Reshape", [sums.name, b.const(f"{n}.flat_shape", np.array([-1, c * ho * wo], np.int64))],
                f"{n}.sums_flat", F32, (1, c * ho * wo), b.datatypes[sums.name])
    table = np.array([rows[int(p)] for p in np.broadcast_to(pick, (c, ho, wo)).reshape(-1)])
    y = _multithreshold(b, n, flat, table, node.a_bits, node.signed, low, high)
    return b.op("Reshape", [y.name, b.const(f"{n}.map_shape", np.array([-1, c, ho, wo], np.int64))],
                f"{n}.y_map", F32, (1, *out_shape), b.datatypes[y.name])


def _max_pool(b: _Builder, n: str, node: IntMaxPool, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E7) MaxPool on the codes; ceil mode as padding at the far edges."""
    _, h, w = shapes[0]
    return _maxpool(b, n, b.as4d(ins[0]), node.kernel, node.stride, _window_pads(node, h, w), out_shape)


def _lut(b: _Builder, n: str, node: IntLut, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E11) a monotone table is a step function of x (non-increasing: of -x): MultiThreshold."""
    x = ins[0]
    lo_in, hi_in = code_range(node.in_bits, node.in_signed)
    table = node.table.astype(np.int64)
    d = np.diff(table)
    if (d < 0).any() and (d > 0).any():
        raise b.bad("a lut whose table is not monotone has no MultiThreshold spelling (it counts thresholds, a "
                    "monotone function)")
    if (d < 0).any():  # non-increasing in x: non-decreasing in u = -x
        x = b.op("Mul", [x.name, b.const(f"{n}.neg", np.array(-1, np.float32))], f"{n}.neg_x", F32, x.shape)
        values, table = np.arange(-hi_in, -lo_in + 1), table[::-1]
    else:
        values = np.arange(lo_in, hi_in + 1)
    lo, hi = code_range(node.a_bits, node.signed)
    # T_k = the smallest u with table[u] >= k, or past the last value when no u reaches k
    row = [int(values[np.argmax(table >= k)]) if (table >= k).any() else int(values[-1]) + 1
           for k in range(lo + 1, hi + 1)]
    return _multithreshold(b, n, x, [row], node.a_bits, node.signed, int(values[0]), int(values[-1]))


def _mul(b: _Builder, n: str, node: IntMul, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E12) Mul(x, g) exactly in float32 (|x g| <= 2^16), MultiThreshold."""
    x, g = (b.as4d(t) for t in ins)
    (xl, xh), (gl, gh) = (_range(s) for s in srcs)
    corners = [xl * gl, xl * gh, xh * gl, xh * gh]
    prod = b.op("Mul", [x.name, g.name], f"{n}.prod", F32, x.shape)
    b.claim(prod, max(abs(v) for v in corners))
    lo, hi = code_range(node.a_bits, node.signed)
    row = thresholds(node.mult[0], node.shift[0], lo, hi, min(corners), max(corners))
    return _multithreshold(b, n, prod, [row], node.a_bits, node.signed, min(corners), max(corners))


def _concat(b: _Builder, n: str, node: IntConcat, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E13) a MultiThreshold per input (its own pair), Concat along channels."""
    lo, hi = code_range(node.a_bits, node.signed)
    parts = []
    for j, (x, src) in enumerate(zip(ins, srcs)):
        xl, xh = _range(src)
        row = thresholds(node.mult[j], node.shift[j], lo, hi, xl, xh)
        parts.append(_multithreshold(b, f"{n}.in{j}", b.as4d(x), [row], node.a_bits, node.signed, xl, xh))
    return b.op("Concat", [p.name for p in parts], f"{n}.y_q", F32, (1, *out_shape),
                _code_type(node.a_bits, node.signed), axis=1)


def _channels(b: _Builder, n: str, node: IntChannels, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E14) Gather along the channel axis."""
    x = b.as4d(ins[0])
    return b.op("Gather", [x.name, b.const(f"{n}.index", node.index.astype(np.int64))], f"{n}.y_q", F32,
                (1, *out_shape), b.datatypes.get(x.name), axis=1)


def _affine(b: _Builder, n: str, node: IntAffine, ins: list[_T], shapes: list, srcs: list, out_shape) -> _T:
    """(E15) u = x sign(mult[c]) (exact), MultiThreshold with per-channel thresholds on u."""
    x = b.as4d(ins[0])
    c = len(node.offset)
    mult, shift = np.broadcast_to(node.mult, (c,)).astype(np.int64), np.broadcast_to(node.shift, (c,))
    peak = code_peak(node.in_bits, node.in_signed)
    lo_in, hi_in = code_range(node.in_bits, node.in_signed)
    if (mult < 0).any():
        sign = np.where(mult < 0, -1, 1).astype(np.float32).reshape(1, c, 1, 1)
        x = b.op("Mul", [x.name, b.const(f"{n}.sign", sign)], f"{n}.u", F32, x.shape)
    lo, hi = code_range(node.a_bits, node.signed)
    table = []
    for ch in range(c):
        ul, uh = (lo_in, hi_in) if mult[ch] > 0 else (-hi_in, -lo_in)
        table.append(thresholds(abs(int(mult[ch])), shift[ch], lo, hi, ul, uh, int(node.offset[ch])))
    return _multithreshold(b, n, x, table, node.a_bits, node.signed, -peak, peak)


EMITTERS = {IntLayer: _layer, IntAdd: _add, IntAvgPool: _avg_pool, IntMaxPool: _max_pool, IntLut: _lut,
            IntMul: _mul, IntConcat: _concat, IntChannels: _channels, IntAffine: _affine}


# ---- the model ---------------------------------------------------------------------------------------

def _build(graph: IntGraph) -> tuple[onnx.ModelProto, list[Claim]]:
    b = _Builder()
    c, h, w = graph.in_shape
    shapes = node_shapes(graph)
    shapes["input"] = tuple(graph.in_shape)
    by_name = {node.name: node for node in graph.layers}
    x = _T("x_q", F32, (1, c, h, w))
    b.datatypes["x_q"] = "UINT8"
    names = {"input": x}
    for i, node in enumerate(graph.layers):
        b.node = node.name
        emit = EMITTERS.get(type(node))
        if emit is None:
            raise QONNXExportError(f"node {node.name}: a {type(node).__name__} has no QONNX spelling")
        srcs = graph.sources(node)
        names[node.name] = emit(b, f"n{i}", node, [names[s] for s in srcs], [shapes[s] for s in srcs],
                                [by_name.get(s) for s in srcs], shapes[node.name])
    last = names[graph.layers[-1].name]
    b.op("Flatten", [last.name], "logits", last.dtype, (1, graph.num_classes), "INT32", axis=1)
    out = b.infos.pop("logits")
    value_info = [helper.make_tensor_value_info(t.name, PROTO[t.dtype], list(t.shape)) for t in b.infos.values()]
    g = helper.make_graph(b.nodes, "fiqnn_qonnx",
                          [helper.make_tensor_value_info("x_q", TensorProto.FLOAT, [1, c, h, w])],
                          [helper.make_tensor_value_info("logits", PROTO[out.dtype], list(out.shape))],
                          b.inits, value_info=value_info)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                              producer_name="fiqnn")
    model.ir_version = 8
    helper.set_model_props(model, {"arith_version": str(graph.arith_version)})
    onnx.checker.check_model(model)
    wrapper = _wrapper(model)
    from qonnx.core.datatype import DataType

    for name, dt in b.datatypes.items():
        wrapper.set_tensor_datatype(name, DataType[dt])
    return wrapper.model, b.claims


def _wrapper(model):
    mw = optional_import("qonnx.core.modelwrapper", "the QONNX export")
    return mw.ModelWrapper(model)


def to_qonnx(graph: IntGraph | str | os.PathLike) -> onnx.ModelProto:
    """The QONNX model of ``graph`` (or its model file): input ``x_q`` (1, C, H, W) float32 pixel codes,
    output ``logits`` (1, classes), float32 (float64 where the logits may reach 2^24) integers."""
    return _build(as_graph(graph))[0]


def prove_qonnx(graph: IntGraph | str | os.PathLike) -> list[Claim]:
    """The exactness claims of ``graph``'s QONNX spelling, one per tensor that computes (module
    docstring); each holds (the export refuses a node where one would not)."""
    return _build(as_graph(graph))[1]


def export_qonnx(graph: IntGraph | str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the QONNX model of ``graph`` to ``path`` (atomically); return the path."""
    data = to_qonnx(graph).SerializeToString()
    _io.write_bytes(path, data)
    return Path(path)


# ---- running it in qonnx's executor --------------------------------------------------------------------

def _with_batch(model: onnx.ModelProto, n: int) -> onnx.ModelProto:
    """A copy of ``model`` whose input, output and activations have batch size ``n``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for vi in (*m.graph.input, *m.graph.output, *m.graph.value_info):
        if vi.name not in inits:
            vi.type.tensor_type.shape.dim[0].dim_value = n
    return m


def _batch_size(model: onnx.ModelProto) -> int:
    """Images per run: MultiThreshold compares every element with every threshold at once."""
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.value_info}
    shapes |= {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}
    inits = {t.name: t for t in model.graph.initializer}
    per_image = 1
    for node in model.graph.node:
        if node.op_type == "MultiThreshold":
            size = int(np.prod(shapes[node.input[0]][1:]))
            per_image = max(per_image, size * int(np.prod(inits[node.input[1]].dims[1:])))
    return int(np.clip(MT_ELEMENTS // per_image, 1, 1000))


def run_qonnx(model: IntGraph | str | os.PathLike | onnx.ModelProto, x_q: np.ndarray,
              batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """Run ``model`` in qonnx's executor (``execute_onnx`` on a ``ModelWrapper``) on uint8 images
    ``x_q`` (N, C, H, W); return int32 logits (N, classes).

    ``model``: an IntGraph or its model file (exported here), an ``onnx.ModelProto`` or a ``.onnx``
    file written by :func:`export_qonnx`. ``batch_size`` (default: from the MultiThreshold sizes)
    sets memory only, not the results.
    """
    onnx_exec = optional_import("qonnx.core.onnx_exec", "run_qonnx")
    if isinstance(model, onnx.ModelProto):
        proto = model
    elif isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".onnx":
        proto = onnx.load(str(model))
    else:
        graph = as_graph(model)
        x_q = check_input(graph, x_q)
        proto = to_qonnx(graph)
    x_q = np.asarray(x_q)
    want = tuple(d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:])
    if x_q.dtype != np.uint8 or x_q.ndim != 4 or x_q.shape[1:] != want:
        raise ValueError(f"input must be uint8 of shape (N, {', '.join(map(str, want))}), got {x_q.dtype} {x_q.shape}")
    size = batch_size or _batch_size(proto)
    wrappers: dict[int, object] = {}
    out = []
    for start in progress_bar(range(0, len(x_q), size), progress=progress, desc="qonnx executor", unit="batch"):
        chunk = x_q[start:start + size]
        if len(chunk) not in wrappers:
            wrappers[len(chunk)] = _wrapper(_with_batch(proto, len(chunk)))
        y = onnx_exec.execute_onnx(wrappers[len(chunk)], {"x_q": chunk.astype(np.float32)})["logits"]
        if not (np.all(np.round(y) == y) and np.abs(y).max(initial=0) <= INT32_MAX + 1):
            raise QONNXExportError("qonnx's executor returned logits that are not int32 integers")
        out.append(y.astype(np.int64).astype(np.int32).reshape(len(chunk), -1))
    return np.concatenate(out) if out else np.zeros((0, proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value),
                                                    np.int32)
