"""IntGraph -> LiteRT (TFLite) flatbuffer, int8 NHWC, computed by LiteRT exactly as :func:`fiqnn.run`.

LiteRT has no integer shift: every int8 op requantizes in floating or fixed point from float
scales stored in the file. So an (E4) layer is exact in LiteRT only for a scale whose runtime
rule gives (E4)'s code at every accumulator the layer can reach; :func:`prove` checks that for
every layer and channel, finitely and exactly, for the runtime's rule emulated in numpy, and the
exporter refuses a layer it cannot prove (``allow_unproven`` writes it anyway and lists it).

The spelling (docs/arithmetic.md for the equations):

    tensors   int8 NHWC. Unsigned A-bit code c is stored as t = c - 128 (zero point -128),
              a signed 8-bit code as itself (zero point 0); the real value is scale * c.
              The input is x_q - 128 (int8, NHWC, scale 1.0): :func:`run_litert` converts.
    conv      CONV_2D (groups 1) or DEPTHWISE_CONV_2D (groups = input channels), int8 weights
              (O, kh, kw, I) / (1, kh, kw, O), zero point 0; int32 bias = bias_q, its scale
              s_in * s_w; TFLite subtracts the input zero point, so its accumulator is (E2)'s
              ``acc`` exactly. Padding: SAME where it is the same windows, else PAD (the zero
              point, code 0) and VALID.                                              (E2)
    requant   per-channel (or per-tensor, one pair) filter scale s_w ~ (mult / 2^shift) *
              s_out / s_in, picked among nearby float32 values by the proof below; output
              scale 1.0 with RELU for 8-bit unsigned codes, 6 / (2^A - 1) with RELU6 (the
              clamp at code 2^A - 1) for A < 8 (targets builtin and tflm: scale 1.0, RELU and a
              MINIMUM at code 2^A - 1, so that their requantization scale is the filter scale
              itself); 8-bit signed codes: scale 1.0, no activation.                     (E4), (E4d)
    fc        FULLY_CONNECTED, weights in NHWC order (it flattens its input).         (E2), (E4)
    maxpool   MAX_POOL_2D VALID, after a PAD with -128 (the lowest int8: never the max) where
              the window has padding or ceil mode's far edge.                          (E7)
    avgpool   DEPTHWISE_CONV_2D of ones (after a PAD of code 0), requantized like a layer
              with that node's pair, where one divisor serves every window (one pair, or all
              windows alike); with several divisors (ceil mode, count_include_pad=False) the
              int32 window sums (CAST, ADD -zp: the codes; PAD of 0; one STRIDED_SLICE per tap,
              ADDs) index a table, one row per divisor, the row ADDed per output position.
              TFLite's AVERAGE_POOL_2D rounds its own way and is not used.          (E10)
    tables    lut, mul, concat and affine are GATHERs from int8 tables, each entry the node's
              own equation evaluated at export (nothing to prove), at an int32 index of the
              stored values t (CAST, ADDs): lut t + 128 into its table over the 256 values
              (entries for values that hold no code repeat the end codes); affine
              t + 128 + 256 c, one row per channel c; mul (x - lo_x) n_g + (g - lo_g) over
              every pair of codes (an int32 MUL by n_g and a broadcast ADD of the (C, 1, 1)
              gate); concat one table per input, then CONCATENATION (an input already on the
              output's codes and quantization copied as it is).       (E11), (E12), (E13), (E15)
    channels  GATHER along the channel axis, the input's quantization.                   (E14)
    logits    BATCH_MATMUL int8 x int8 -> int32 (it ignores zero points: raw = sum t * w),
              then ADD of the int32 bias' = bias_q - zp_in * sum_i w[o, i], so that
              raw + bias' = acc: no float anywhere. Target tflm (TFLite Micro's BATCH_MATMUL
              and FULLY_CONNECTED output only int8 from int8, its SUM no int32): raw by CAST to
              int32, a broadcast MUL by the weights and halving STRIDED_SLICE + ADDs.  (E2)
    acc       a conv/fc layer whose int32 accumulators feed (E9) adds (a ResNet branch before
              its block's ReLU): the logits' BATCH_MATMUL and ADD on im2col patches, made by
              PAD (code 0), one STRIDED_SLICE per kernel tap and a CONCATENATION (int8 copies
              with one quantization), weights (kh kw C, O) tap-major, dense over groups (so any
              groups). int32 out, exact: |raw| <= 128 sum|w| is checked to fit int32.   (E2)
    add       (E9) in int64 on the stored inputs (codes t_j = c_j + zp_j, accumulators v_j):
              CAST to int64, MUL by mult_j, ADD, ADD const = 2^(s-1) + zp_out 2^s - sum_j
              mult_j zp_j, so that P = (E9's sum before its floor) + zp_out 2^s (for s > 32
              without zp_out 2^s: zp_out is added after the shift); where s <= 32 MAXIMUM and
              MINIMUM at lo 2^s, hi 2^s (lo, hi: the code range plus zp_out) and,
              for s < 32, a MUL by 2^(32 - s); the high int32 word (BITCAST int64 -> 2 x int32,
              element 1 on a little-endian runtime, then STRIDED_SLICE), which is floor(P / 2^s)
              for s <= 32; for s > 32 a RIGHT_SHIFT by s - 32 (arithmetic: a floor, and
              floor(floor(P / 2^32) / 2^(s-32)) = floor(P / 2^s)), an ADD of zp_out, then
              MAXIMUM and MINIMUM at lo, hi in int32 (up to shift 62: P's high word always
              fits); CAST to int8 (scale
              1.0, zp_out -128 unsigned, 0 signed). Only integer ops, so exact wherever no int64
              value overflows (checked); signed codes of any width come out too (the clamp is
              explicit).                                                              (E9)

Not spelled (refused naming the node): grouped convs with an activation other than depthwise,
signed codes below 8 bits out of a conv (no fused activation clamps at -2^(A-1) and 2^(A-1) - 1)
(these two the "integer" fallback below spells), a max-pool fused into an accumulator layer, and
a table of more than TABLE_ENTRIES (2^20) entries. Not used for adds: TFLite's int8 ADD
(XNNPACK qs8 add, or builtin) takes int8 inputs only, and in a ResNet every add has an int32
accumulator input whose relevant range (the accumulators at which the add's output is unsaturated
for some value of the other inputs) is wider than the 256 values an int8 conv output carries
exactly (measured: 362 to 11,935 values per channel in a Fashion-MNIST resnet20 W4A4 fold student,
71,327 to 3,731,250 at W8A8, 37 to 206 in tests' residual_graph at W2), so the branch conv would
round before the add, which (E9) does not.

Fallbacks for a layer the float32 proof below fails (``fallback`` of :func:`to_tflite`):
"integer" respells it as its accumulators (the acc spelling) and (E4) through the add's int64
chain with one input (per-channel mult and shift allowed): exact, proven like an add, but off
XNNPACK's fast kernels; "nearest" (``allow_unproven``) writes the nearest float32 scales anyway,
and LiteRT then differs from (E4) at the failing thresholds. Both name the layers in their output.

The proof. (E4) is a non-decreasing step function of acc: code(a) = lo + #{k in (lo, hi] :
a >= T_k} with T_k = ceil((k 2^s - 2^(s-1)) / mult). Each runtime's rule R(a) is non-decreasing
in a too (below). For non-decreasing R and code, R = code on the layer's whole (E6) range [L, U]
iff they agree at L, U, and clip(T_k, L, U), clip(T_k - 1, L, U) for every k: between two
consecutive such points code is constant and R is squeezed between equal values. That is
2 (2^A - 1) + 2 points per channel, evaluated in numpy with the runtime's exact arithmetic:

    xnnpack   (XNNPACK, LiteRT's default delegate) R(a) = clamp(rne(f32(f32(a) * c)) + zp, mn, mx)
              with c = f32(f32(s_in * s_w) / s_out) computed in float32 in that order
              (XNNPACK src/operators/convolution-nhwc.c, init_requantization_scale_qx8_qc8w,
              and src/operators/fully-connected-nc.c: ``input_scale * kernel_scale[oc] /
              output_scale``, refused if >= 256; per-tensor scales take the same path,
              init_requantization_scale_qs8), the product and round-to-nearest-even in the
              fp32 microkernels (qs8-qc8w-gemm ...-fp32-avx512vnni.c: _mm512_cvtepi32_ps,
              _mm512_mul_ps, _mm512_min_ps, _mm512_cvtps_epi32), and mn / mx =
              lrintf(min(max(act / s_out + zp, -128), 127)) for the activation's bounds act
              (src/xnnpack/requantization.h, xnn_qs8_quantize). Monotone while |c a| < 2^31,
              which the proof requires (cvtps_epi32 of a larger value is INT32_MIN).
    builtin   (LiteRT's own kernels, no delegate) c = double(s_in) * double(s_w) / double(s_out)
              as (M, e) by QuantizeMultiplier (31-bit M, round half away), then gemmlowp's
              double rounding RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(a 2^e+, M),
              e-), clamped to CalculateActivationRangeQuantized's [mn, mx] (round(act / s_out) + zp).

The add (and any change a test makes to its constants) is proven the same way: (E9) is a
non-decreasing step function of the stored sum S = sum_j mult_j t_j, and so is the file's chain
(clamps, a multiply by a power of two, floor shifts), so they agree on S's whole range (from the
inputs' code ranges and (E6) ranges) iff they agree at its ends and at (E9)'s thresholds and one
below; its int64 partial sums are checked to stay below 2^63 (sum_j mult_j max|t_j| + |const|).

For each layer (each channel, under per-channel pairs) the exporter picks the float32 filter
scale nearest (in ulps) the nominal one that proves the target: each point's rule is monotone in
the scale, so a point says whether the scale must grow or shrink, and an exponential step then a
bisection find the nearest proven scale, or show that points pull both ways. Where none does
(a float32 product has 24 significant bits; a W8A8 layer with accumulators of 2^16 and more and
255 thresholds can leave no float32 scale that rounds every threshold right) it says so. The other
ops are integer: a max-pool, a PAD, a STRIDED_SLICE, a CONCATENATION, a RESHAPE and the logits' and
accumulator layers' int32 BATCH_MATMUL and ADD are exact (their partial sums stay within 128 sum|w|
and bias' is checked to fit int32).

Measured (ai-edge-litert 2.3.0, x86-64 with AVX-512 VNNI): both emulations equal LiteRT on every
accumulator of 32,640-wide ranges, at proven and at perturbed scales, and prove() holds for a
channel exactly when LiteRT equals (E4) on it (tests/test_export_tflite.py). The XNNPACK proof holds
for the digits students W2A2..W8A8 per layer and W2A2..W7A7 per channel, not for 12 of 56 channels
at W8A8 per channel; the builtin proof fails for most channels (double rounding misplaces a
threshold whenever acc * alpha lies less than 2^-(r+1) below a half, r the final right shift).
Residual nets (Fashion-MNIST resnet20 fold students, 9 adds each): W4A4 proven and equal to
fiqnn.run on all 10,000 test images; W8A8 proven but for three conv layers (160 channels, the
float32 limit), equal on 10,000 with fallback="integer", on 9,886 with "nearest" (same accuracy).

Double rounding (E4d). A layer converted with ``rounding="double"`` has a 24-bit multiplier, so
its filter scale mult / 2^shift is a float32 and the builtin kernels' QuantizeMultiplier of
1.0 * s_w / 1.0 returns (mult, 31 - shift) exactly: the builtin and tflm proofs hold by
construction (measured: every channel of alexnet-s W4A4 and W8A8 and of the digits students W2..W8,
and TFLite Micro == fiqnn.run on all 10,000 Fashion-MNIST test images, bench/results/tflm.md); for
XNNPACK such a layer mostly fails, and a single-rounded one mostly fails for builtin and tflm.
Target tflm refuses the accumulator spelling and the integer fallback (int32 BATCH_MATMUL, int64
ops): residual networks are not exported for it. The tables, GATHERs and window sums are int32 and
int8 ops that TFLite Micro runs.

The file is written with the ``tflite`` package's flatbuffer builders (no TensorFlow), atomically.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import _io
from .._optional import optional_import
from .._progress import bar as progress_bar
from ..errors import FiqnnError
from ..integer.arith import (
    DOUBLE_HALF,
    INT32_MAX,
    INT32_MIN,
    clamp_codes,
    code_range,
    requantize,
    rshift_round,
    thresholds,
)
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

log = logging.getLogger("fiqnn")

TARGETS = ("xnnpack", "builtin", "tflm")
F32 = np.float32
SEARCH_ULPS = 2**22  # how far (in float32 ulps, about 2^-1 relative) the scale search goes


class TFLiteExportError(FiqnnError):
    """An IntGraph node has no exact LiteRT spelling (the message names the node and why);
    ``integer_node`` names it where the "integer" fallback spells it."""

    integer_node: str | None = None


def _refuse(msg: str, name: str) -> TFLiteExportError:
    e = TFLiteExportError(msg + "; fallback='integer' spells it in exact integer ops")
    e.integer_node = name
    return e


class UnprovenLayerError(TFLiteExportError):
    """A layer's requantization could not be proven exact for the target runtime."""


def _import(name: str):
    """Module ``name`` of the tflite extra, or one line naming it (:func:`fiqnn._optional.optional_import`)."""
    return optional_import(name, "the LiteRT export")


# ---- the runtimes' requantization, emulated exactly -----------------------------------------------

def _rne_f32_to_int(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.int64)


def xnnpack_scale(s_in, s_w, s_out) -> np.ndarray:
    """XNNPACK's requantization scale, float32 throughout: ``input_scale * kernel_scale / output_scale``."""
    return (F32(s_in) * np.asarray(s_w, F32)) / F32(s_out)


def _xnn_quantize(val: float, scale, zp: int) -> int:
    """xnn_qs8_quantize: lrintf(fminf(fmaxf(val / scale + (float) zp, -128), 127))."""
    with np.errstate(over="ignore"):
        v = F32(val) / F32(scale) + F32(zp)
    return int(np.rint(min(max(v, F32(-128.0)), F32(127.0))))


def _act_bounds(act: str) -> tuple[float, float]:
    return {"NONE": (-math.inf, math.inf), "RELU": (0.0, math.inf), "RELU6": (0.0, 6.0)}[act]


def xnnpack_codes(acc: np.ndarray, s_in, s_w, s_out, zp: int, act: str) -> np.ndarray:
    """The int8 output of XNNPACK's fp32 requantization of int32 accumulators ``acc`` (any shape,
    the last axis broadcasting against per-channel ``s_w``), as int64."""
    c = xnnpack_scale(s_in, s_w, s_out)
    lo, hi = (_xnn_quantize(v, s_out, zp) for v in _act_bounds(act))
    prod = np.asarray(acc, np.int64).astype(np.int32).astype(F32) * c  # f32(acc) rounds to nearest even
    return np.clip(_rne_f32_to_int(prod) + zp, lo, hi)


def quantize_multiplier(d: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier (tensorflow/lite/kernels/internal/quantization_util.cc): d = M 2^(e-31)."""
    if d == 0.0:
        return 0, 0
    q, e = math.frexp(d)
    m = int(math.floor(q * 2.0**31 + 0.5))  # std::round of a positive, exact in float64
    if m == 2**31:
        m, e = m // 2, e + 1
    if e < -31:
        return 0, 0
    if e > 30:
        return 2**31 - 1, 30
    return m, e


def _builtin_act_range(act: str, scale, zp: int) -> tuple[int, int]:
    """CalculateActivationRangeQuantized for int8: zp + round(act / scale) (float, half away), clipped."""
    lo, hi = _act_bounds(act)

    def q(v: float) -> int:
        r = float(F32(v) / F32(scale))
        return zp + int(math.copysign(math.floor(abs(r) + 0.5), r))

    return (-128 if lo == -math.inf else max(-128, q(lo))), (127 if hi == math.inf else min(127, q(hi)))


def _trunc_div_pow2(v: np.ndarray, n: int) -> np.ndarray:
    return np.where(v >= 0, v >> n, -((-v) >> n))


def builtin_multipliers(s_in, s_w, s_out) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` of ``double(s_in) * double(s_w) / double(s_out)``, elementwise."""
    d = np.float64(F32(s_in)) * np.asarray(s_w, F32).astype(np.float64) / np.float64(F32(s_out))
    q, e = np.frexp(d)
    m = np.floor(q * 2.0**31 + 0.5).astype(np.int64)
    e = e.astype(np.int64)
    carry = m == 2**31
    m, e = np.where(carry, m // 2, m), np.where(carry, e + 1, e)
    m, e = np.where(e < -31, 0, m), np.where(e < -31, 0, e)
    return np.where(e > 30, 2**31 - 1, m), np.where(e > 30, 30, e)


def builtin_codes(acc: np.ndarray, s_in, s_w, s_out, zp: int, act: str) -> np.ndarray:
    """The int8 output of LiteRT's builtin int8 requantization (gemmlowp double rounding) of
    ``acc`` (broadcasting against ``s_w``), as int64; where ``acc * 2^e`` would overflow int32
    the result is INT32_MIN (never a code)."""
    m, e = builtin_multipliers(s_in, s_w, s_out)
    a = np.asarray(acc, np.int64)
    left, right = np.maximum(e, 0), np.maximum(-e, 0)
    x = a << left
    bad = (x > INT32_MAX) | (x < INT32_MIN)
    ab = np.where(bad, 0, x) * m  # |x| < 2^31, m < 2^31: fits int64
    high = _trunc_div_pow2(ab + np.where(ab >= 0, 2**30, 1 - 2**30), 31)  # SaturatingRoundingDoublingHighMul
    mask = (np.int64(1) << right) - 1
    rem, thr = high & mask, (mask >> 1) + (high < 0)
    out = (high >> right) + (rem > thr)  # RoundingDivideByPOT
    lo, hi = _builtin_act_range(act, s_out, zp)
    return np.where(bad, INT32_MIN, np.clip(out + zp, lo, hi))


# ---- the plan: every node's TFLite tensors, scales and activation ---------------------------------

@dataclass
class Quant:
    """A tensor's int8 quantization: real = scale * (t - zp); the code is t - zp."""

    scale: float
    zp: int


@dataclass
class Step:
    """One IntGraph node as LiteRT ops. ``layer`` is the weighted layer it computes (for an average
    pool, a depthwise conv of ones); ``filter_scale`` (float32, (1,) or (O,)) the scales the file
    stores, which a test may change to see the proof fail."""

    node: object
    op: str  # "conv" | "fc" | "logits" | "maxpool" | "avgpool" | "acc" | "add"
    in_q: Quant | None
    out_q: Quant | None = None
    act: str = "NONE"
    layer: IntLayer | None = None
    filter_scale: np.ndarray | None = None
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right (explicit PAD)
    same: bool = False  # SAME padding instead of a PAD
    in_shape: tuple[int, int, int] = (0, 0, 0)  # the (C, H, W) it reads
    add: AddSpelling | None = None  # an (E9) add's integer constants
    in_qs: tuple = ()  # an add's inputs' quantizations (None: int32 accumulators)
    in_codes: tuple = ()  # the codes (bits, signed) of a table step's inputs
    tables: tuple = ()  # a table step's int8 tables (a concat's: one per input, None where copied as it is)
    clamp: int | None = None  # a MINIMUM at this stored int8 value after the op (builtin, tflm)


@dataclass
class AddSpelling:
    """The integer constants of an (E9) add (or of an (E4) layer spelled in integers) as the file
    computes it (module docstring: add), on the stored int8 values t_j (codes plus their zero point)
    or int32 accumulators v_j of its inputs, per channel c: ``P = sum_j mult[j] v_j + const``,
    ``Q = clamp(P, lo 2^shift, hi 2^shift) * 2^(32 - shift)`` and ``y = Q >> 32`` where shift <= 32,
    ``y = clamp((P >> shift) + zp_out, lo, hi)`` where it is larger (``const`` holds zp_out 2^shift
    only in the first case); ``lo``, ``hi`` are the stored int8 bounds of the output (its code range
    plus its zero point, zp_out). ``const`` (Python ints) and ``shift`` are (1,) or per channel, each
    ``mult[j]`` an int or per channel. A test may change them to see the proof fail."""

    mult: tuple
    const: np.ndarray  # object (Python ints), (1,) or (O,)
    shift: np.ndarray  # int64, (1,) or (O,)
    lo: int
    hi: int
    in_zp: tuple[int, ...]  # each input's zero point (0 for accumulators)
    in_ranges: tuple[tuple[np.ndarray, np.ndarray], ...]  # each input's stored range, per channel
    code: tuple[int, bool] = (8, False)  # the output codes (bits, signed)
    ref_mult: tuple = ()  # the node's own multipliers, shift and offset, which the proof holds the file to
    ref_shift: np.ndarray | None = None
    ref_offset: np.ndarray | None = None  # object (Python ints), (1,) or per channel: (E4d)'s 2^30


@dataclass
class TFLitePlan:
    """What :func:`to_tflite` writes for ``graph``: one :class:`Step` per node, by name."""

    graph: IntGraph
    target: str
    steps: dict[str, Step] = field(default_factory=dict)
    fallbacks: dict[str, str] = field(default_factory=dict)  # node -> "integer" | "nearest"


@dataclass(frozen=True)
class LayerProof:
    """Per output channel of one node: whether the target reproduces it on its whole (E6) range,
    and if not, why (one line)."""

    name: str
    ok: np.ndarray
    why: tuple[str, ...]

    @property
    def holds(self) -> bool:
        return bool(self.ok.all())


def _code_quant(code, name: str, target: str = "xnnpack") -> tuple[Quant, str, int | None]:
    """The output quantization, fused activation and MINIMUM (a stored int8 value, or None) that
    clamp exactly to the code range. XNNPACK fuses RELU6 at scale 6 / (2^A - 1) into its kernels; the
    builtin kernels and TFLite Micro get scale 1.0 with RELU and a MINIMUM at code 2^A - 1, so that
    the requantization scale they compute from float32 scales is the filter scale itself (a 24-bit
    multiplier rebuilds its own (mult, shift) exactly)."""
    bits, signed = code
    if signed:
        if bits != 8:
            raise _refuse(f"node {name}: {bits}-bit signed codes need a clamp at {-(2 ** (bits - 1))} and "
                          f"{2 ** (bits - 1) - 1}, which no TFLite fused activation gives; only 8-bit signed codes "
                          "are exported", name)
        return Quant(1.0, 0), "NONE", None
    qmax = 2**bits - 1
    if qmax == 255:
        return Quant(1.0, -128), "RELU", None
    if target != "xnnpack":
        return Quant(1.0, -128), "RELU", qmax - 128
    return Quant(float(F32(6.0 / qmax)), -128), "RELU6", None


def _bounds(layer: IntLayer) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = layer.acc_bounds()
    return np.asarray(lo, np.int64), np.asarray(hi, np.int64)


def _points(layer: IntLayer) -> np.ndarray:
    """(O, P) int64: per channel, the accumulators at which agreeing with (E4) (or (E4d)) proves
    agreeing on all of [L, U] (module docstring: The proof)."""
    lo_c, hi_c = code_range(layer.a_bits, layer.signed)
    L, U = _bounds(layer)
    rows = []
    for o in range(layer.out_channels):
        j = o if len(layer.mult) > 1 else 0
        t = thresholds(layer.mult[j], layer.shift[j], lo_c, hi_c, L[o], U[o], rounding=layer.rounding)
        pts = np.clip(np.array(t + [v - 1 for v in t], dtype=object), int(L[o]), int(U[o])).astype(np.int64)
        rows.append(np.concatenate([pts, [L[o], U[o]]]))
    return np.array(rows, np.int64)


def _contract(layer: IntLayer, pts: np.ndarray) -> np.ndarray:
    mult = layer.mult.astype(np.int64).reshape(-1, 1)
    shift = layer.shift.astype(np.int64).reshape(-1, 1)
    return requantize(pts, mult, shift, layer.a_bits, layer.signed, layer.rounding).astype(np.int64)


def _evaluate(step: Step, target: str, s_w: np.ndarray, pts: np.ndarray, want: np.ndarray):
    """For candidate filter scales ``s_w`` (cands, O): ok (cands, O), the runtime's codes, c, peak."""
    q = step.out_q
    peak = np.abs(pts).max(axis=1).astype(np.float64)
    c = xnnpack_scale(step.in_q.scale, s_w, q.scale).astype(np.float64)
    if target == "xnnpack":
        got = xnnpack_codes(pts[None], step.in_q.scale, s_w[..., None], q.scale, q.zp, step.act) - q.zp
        ok = (got == want[None]).all(axis=2) & (c < 256.0) & (c * peak[None] < 2.0**31 - 2**8)
    else:
        got = builtin_codes(pts[None], step.in_q.scale, s_w[..., None], q.scale, q.zp, step.act) - q.zp
        if step.clamp is not None:  # the MINIMUM after the op (_code_quant)
            got = np.where(got == INT32_MIN - q.zp, got, np.minimum(got, step.clamp - q.zp))
        ok = (got == want[None]).all(axis=2)
    return ok, got, c, peak


def _nominal(step: Step) -> np.ndarray:
    layer = step.layer
    alpha = layer.mult.astype(np.float64) / np.exp2(layer.shift.astype(np.float64))
    return (alpha * (step.out_q.scale / step.in_q.scale)).astype(F32)


def _state(step: Step, target: str, s_w: np.ndarray, pts: np.ndarray, want: np.ndarray) -> str:
    """Whether filter scales ``s_w`` (one per row of ``pts``) prove ``target`` on those channels:
    "ok", "up" (some point needs a larger scale), "down" (a smaller one), or "stuck" (both)."""
    ok, got, c, peak = _evaluate(step, target, s_w[None], pts, want)
    if ok.all():
        return "ok"
    diff, a = got[0] - want, pts
    up = (((diff < 0) & (a > 0)) | ((diff > 0) & (a < 0))).any()
    down = (((diff > 0) & (a > 0)) | ((diff < 0) & (a < 0))).any() or (c >= 256.0).any() or \
        (c * peak[None] >= 2.0**31 - 2**8).any()
    return "stuck" if up and down else "up" if up else "down"


def _search(step: Step, target: str) -> np.ndarray:
    """The float32 filter scales nearest (in ulps) the nominal ones that prove ``target``; the
    nominal ones where none does. Each point's rule is monotone in the scale, so along the float32
    scales the states run "up" ... "ok" ... "down": an exponential step outward, then bisection."""
    layer = step.layer
    pts, nom = _points(layer), _nominal(step)
    want = _contract(layer, pts)
    found = nom.copy()
    units = [[j] for j in range(len(nom))] if len(nom) > 1 else [list(range(layer.out_channels))]
    for j, unit in enumerate(units):
        base = int(nom[j:j + 1].view(np.int32)[0])

        def state(k: int, unit=unit, base=base) -> str:
            s_w = np.full(len(unit), np.array([base + k], np.int32).view(F32)[0], F32)
            return _state(step, target, s_w, pts[unit], want[unit])

        first = state(0)
        if first != "ok" and first != "stuck":
            way = 1 if first == "up" else -1
            lo, hi, step_k, best = 0, None, 1, None
            while step_k <= SEARCH_ULPS:
                now = state(way * step_k)
                if now == first:
                    lo, step_k = step_k, step_k * 2
                    continue
                hi, best = step_k, (step_k if now == "ok" else None)
                break
            while hi is not None and hi - lo > 1:
                mid = (lo + hi) // 2
                now = state(way * mid)
                if now == first:
                    lo = mid
                else:
                    hi, best = mid, (mid if now == "ok" else best)
            if best is not None:
                found[j] = np.array([base + way * best], np.int32).view(F32)[0]
    return found


def plan(graph: IntGraph | str | os.PathLike, target: str = "xnnpack", integer=()) -> TFLitePlan:
    """The LiteRT spelling of ``graph`` for ``target`` ("xnnpack" or "builtin"): tensors'
    quantization, activations and the filter scales the proof picked; TFLiteExportError for a node
    without an exact spelling. The conv/fc/avgpool nodes named in ``integer`` are spelled in
    integer ops instead (the "integer" fallback: exact, off XNNPACK)."""
    if target not in TARGETS:
        raise TFLiteExportError(f"unknown LiteRT target {target!r}: use one of {', '.join(TARGETS)}")
    graph = as_graph(graph)
    shapes = node_shapes(graph)
    shapes["input"] = tuple(graph.in_shape)
    quant = {"input": Quant(1.0, -128)}
    p = TFLitePlan(graph, target)
    last = graph.layers[-1]
    nodes = {n.name: n for n in graph.layers}
    for node in graph.layers:
        _check_spelled(node)
        src = graph.sources(node)[0]
        in_q = quant[src]
        c, h, w = shapes[src]
        if isinstance(node, IntAdd):
            srcs = graph.sources(node)
            step = _add_step(node, [quant[s] for s in srcs], [nodes.get(s) for s in srcs])
        elif isinstance(node, IntLayer) and node.name in integer and node.a_bits is not None:
            ph, pw = node.padding
            step = Step(node, node.kind, in_q, layer=node, pads=(ph, ph, pw, pw))  # respelled below
        elif isinstance(node, IntLayer):
            step = _layer_step(node, in_q, (c, h, w), node is last, target)
            if target == "tflm" and step.op == "acc":
                raise TFLiteExportError(f"layer {node.name}: its int32 accumulators feed an add, spelled with an "
                                        "int8 x int8 -> int32 BATCH_MATMUL and int64 ops, which TFLite Micro does not "
                                        "run; the tflm target takes plain conv/fc/pool networks")
        elif isinstance(node, IntMaxPool):
            step = Step(node, "maxpool", in_q, in_q, pads=_window_pads(node, h, w))
        elif isinstance(node, IntAvgPool):
            step = _avgpool_step(node, in_q, (c, h, w), target, node.name in integer)
        elif isinstance(node, IntLut):
            step = Step(node, "lut", in_q, _chain_quant(node.code))
        elif isinstance(node, IntChannels):
            step = Step(node, "channels", in_q, in_q)
        elif isinstance(node, (IntMul, IntConcat, IntAffine)):
            step = _table_step(node, [quant[s] for s in graph.sources(node)],
                               [_code_of(nodes.get(s)) for s in graph.sources(node)])
        else:  # _check_spelled let nothing else through
            raise AssertionError(type(node))
        step.in_shape = (c, h, w)
        if node.name in integer and step.op in ("conv", "fc", "avgpool"):
            if target == "tflm":
                raise TFLiteExportError(f"node {node.name}: the integer fallback uses int32 BATCH_MATMUL and int64 "
                                        "ops, which TFLite Micro does not run")
            step = _integer_step(step)
            p.fallbacks[node.name] = "integer"
        elif step.layer is not None and step.op not in ("logits", "acc", "convlogits"):
            step.filter_scale = _search(step, target)
        quant[node.name] = step.out_q
        p.steps[node.name] = step
    return p


def _check_spelled(node) -> None:
    """Refuse, naming the node, what this exporter has no exact spelling for."""
    if not isinstance(node, (IntLayer, IntMaxPool, IntAvgPool, IntAdd, IntLut, IntChannels, IntMul, IntConcat,
                             IntAffine)):
        raise TFLiteExportError(f"node {node.name}: a {node.kind} node has no LiteRT spelling in this exporter")


def _code_of(node) -> tuple[int, bool]:
    return (8, False) if node is None else node.code  # None: the network input


def _chain_quant(code) -> Quant:
    """The quantization of codes an integer op writes (scale 1.0; any width, the clamp is explicit)."""
    return Quant(1.0, 0 if code[1] else -128)


def _codes_of_stored(q: Quant, code) -> np.ndarray:
    """The code each stored int8 value -128..127 holds (clipped to the code range where it holds none)."""
    return np.clip(np.arange(-128, 128, dtype=np.int64) - q.zp, *code_range(*code))


def _stored(codes: np.ndarray, q: Quant) -> np.ndarray:
    """The int8 values that hold ``codes`` under ``q``."""
    return (codes.astype(np.int64) + q.zp).astype(np.int8)


def _table_step(node, in_qs: list[Quant], codes: list[tuple[int, bool]]) -> Step:
    """(E12), (E13), (E15) as int8 tables over their inputs' stored values, each entry the node's
    own equation evaluated here (module docstring: tables)."""
    out_q = _chain_quant(node.code)
    lo_o, hi_o = code_range(*node.code)
    if isinstance(node, IntAffine):
        x = _codes_of_stored(in_qs[0], codes[0])[:, None]  # (256, 1) beside the channels
        total = x * node.mult.astype(np.int64) + node.offset.astype(np.int64)
        table = clamp_codes(rshift_round(total, node.shift.astype(np.int64)), node.a_bits, node.signed)
        return Step(node, "affine", in_qs[0], out_q, in_qs=tuple(in_qs), in_codes=tuple(codes),
                    tables=(_stored(table, out_q).T.reshape(-1),))  # entry c * 256 + t + 128
    if isinstance(node, IntMul):  # entry (x - lo_x) * n_g + (g - lo_g)
        (lo_x, hi_x), (lo_g, hi_g) = (code_range(*code) for code in codes)
        x, g = np.meshgrid(np.arange(lo_x, hi_x + 1, dtype=np.int64), np.arange(lo_g, hi_g + 1, dtype=np.int64),
                           indexing="ij")
        table = clamp_codes(rshift_round(x * g * np.int64(node.mult[0]), np.int64(node.shift[0])), node.a_bits,
                            node.signed)
        return Step(node, "mul", None, out_q, in_qs=tuple(in_qs), in_codes=tuple(codes),
                    tables=(_stored(table, out_q).reshape(-1),))
    inside = [(int(m), int(sh)) == (2**30, 30) and lo_o <= code_range(*code)[0] and code_range(*code)[1] <= hi_o
              for code, m, sh in zip(codes, node.mult, node.shift)]
    if all(inside) and all(q == in_qs[0] for q in in_qs):
        out_q = in_qs[0]  # every input already holds the output's codes, stored alike: a plain CONCATENATION
    tables = []
    for q, code, m, sh, same in zip(in_qs, codes, node.mult, node.shift, inside):
        y = clamp_codes(rshift_round(_codes_of_stored(q, code) * np.int64(m), np.int64(sh)), node.a_bits, node.signed)
        tables.append(None if same and q == out_q else _stored(y, out_q))
    return Step(node, "concat", None, out_q, in_qs=tuple(in_qs), in_codes=tuple(codes), tables=tuple(tables))


def _layer_step(node: IntLayer, in_q: Quant, in_shape, is_last: bool, target: str = "xnnpack") -> Step:
    c, h, w = in_shape
    if node.a_bits is None:
        if not is_last:  # accumulators read only by adds (the graph checks): im2col + BATCH_MATMUL, int32
            if node.pool:
                raise TFLiteExportError(f"layer {node.name}: a max-pool fused into an accumulator layer is not "
                                        "exported")
            ph, pw = node.padding
            return Step(node, "acc", in_q, layer=node, pads=(ph, ph, pw, pw))
        if node.kind == "conv" and (node.padding != (0, 0) or node.w_q.shape[2:] != (h, w) or node.dilation != (1, 1)):
            ph, pw = node.padding  # a window smaller than the padded map: its accumulators (the acc spelling)
            return Step(node, "convlogits", in_q, layer=node, pads=(ph, ph, pw, pw))
        return Step(node, "logits", in_q, layer=node)
    out_q, act, clamp = _code_quant(node.code, node.name, target)
    if node.kind == "fc":
        return Step(node, "fc", in_q, out_q, act, node, clamp=clamp)
    g, cg = node.groups, node.w_q.shape[1]
    if g != 1 and not (g == c and cg == 1):
        raise _refuse(f"layer {node.name}: a grouped conv ({g} groups of {cg} channels) has no TFLite op; only "
                      "groups 1 and depthwise (groups = input channels) are exported", node.name)
    kh, kw = node.w_q.shape[2:]
    same = _same_padding(h, kh, node.stride[0], node.padding[0], node.dilation[0]) and \
        _same_padding(w, kw, node.stride[1], node.padding[1], node.dilation[1])
    ph, pw = node.padding
    return Step(node, "conv", in_q, out_q, act, node, same=same and (ph or pw),
                pads=(0, 0, 0, 0) if same else (ph, ph, pw, pw), clamp=clamp)


TABLE_ENTRIES = 2**20  # the largest requantization table of one node (int8 entries)


def _avg_table_step(node: IntAvgPool, in_q: Quant, in_shape) -> Step:
    """(E10) with several divisors: int32 window sums of the codes, then one table row per divisor
    pair over every possible sum, the row picked per output position (module docstring: avgpool)."""
    c, h, w = in_shape
    kh, kw = node.kernel
    pick = node.divisors(h, w) - 1
    used, row = np.unique(pick, return_inverse=True)
    lo_in, hi_in = code_range(node.in_bits, node.in_signed)
    s_lo, s_hi = lo_in * kh * kw, hi_in * kh * kw
    span = s_hi - s_lo + 1
    if len(used) * span > TABLE_ENTRIES:
        raise TFLiteExportError(f"node {node.name}: its requantization table would have {len(used) * span} entries "
                                f"(at most {TABLE_ENTRIES})")
    total = np.arange(s_lo, s_hi + 1, dtype=np.int64)[None, :]
    table = clamp_codes(rshift_round(total * node.mult.astype(np.int64)[used][:, None],
                                     node.shift.astype(np.int64)[used][:, None]), node.a_bits, node.signed)
    out_q = _chain_quant(node.code)
    offsets = (row.reshape(pick.shape) * span - s_lo).astype(np.int32)
    return Step(node, "avgtable", in_q, out_q, pads=_window_pads(node, h, w),
                tables=(_stored(table, out_q).reshape(-1), offsets))


def _same_padding(size: int, k: int, s: int, p: int, d: int) -> bool:
    """Whether TFLite's SAME padding gives the windows of padding ``p`` on both sides."""
    eff = (k - 1) * d + 1
    out = (size + 2 * p - eff) // s + 1
    same_out = -(-size // s)
    total = max((same_out - 1) * s + eff - size, 0)
    return out == same_out and total // 2 == p


def _window_pads(node, h: int, w: int) -> tuple[int, int, int, int]:
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ho, wo = pool_out(h, kh, sh, ph, node.ceil_mode), pool_out(w, kw, sw, pw, node.ceil_mode)
    extra_h, extra_w = max(0, (ho - 1) * sh + kh - h - 2 * ph), max(0, (wo - 1) * sw + kw - w - 2 * pw)
    return ph, ph + extra_h, pw, pw + extra_w


def _avgpool_step(node: IntAvgPool, in_q: Quant, in_shape, target: str = "xnnpack", integer: bool = False) -> Step:
    c, h, w = in_shape
    kh, kw = node.kernel
    if len(node.mult) > 1:
        used = np.unique(node.divisors(h, w))
        if len(used) != 1:
            return _avg_table_step(node, in_q, in_shape)
        pick = int(used[0]) - 1
        mult, shift = node.mult[pick:pick + 1], node.shift[pick:pick + 1]
    else:
        mult, shift = node.mult, node.shift
    ones = IntLayer(name=node.name, kind="conv", w_q=np.ones((c, 1, kh, kw), np.int8), bias_q=np.zeros(c, np.int32),
                    mult=mult.copy(), shift=shift.copy(), in_bits=node.in_bits, w_bits=2, a_bits=node.a_bits,
                    stride=node.stride, groups=c, signed=node.in_signed, in_signed=node.in_signed)
    if integer:  # respelled by plan(): the quantization is the integer chain's
        return Step(node, "avgpool", in_q, layer=ones, pads=_window_pads(node, h, w))
    out_q, act, clamp = _code_quant((node.a_bits, node.in_signed), node.name, target)
    return Step(node, "avgpool", in_q, out_q, act, ones, pads=_window_pads(node, h, w), clamp=clamp)


def _spelling(mult: list, shift: np.ndarray, code, in_qs: list[Quant | None], ranges: list,
              offset=0) -> AddSpelling:
    """``clamp(floor((sum_j mult_j x_j + offset + 2^(shift-1)) / 2^shift))`` on the stored inputs
    (x_j their codes or accumulators): zero points, the rounding half and ``offset`` (a Python int or
    one per channel) folded into one constant per channel. (E9); (E4) with one accumulator input."""
    lo_c, hi_c = code_range(*code)
    zp_out = 0 if code[1] else -128
    shift = np.asarray(shift, np.int64)
    offset = np.array([int(v) for v in np.atleast_1d(np.asarray(offset, object))], object)
    in_zp = tuple(0 if q is None else int(q.zp) for q in in_qs)
    const = np.array([((1 << (int(v) - 1)) if v > 0 else 0) + (zp_out * (1 << int(v)) if v <= 32 else 0)
                      for v in shift], object)  # a larger shift adds zp_out after it (in int32)
    for m, z in zip(mult, in_zp):
        const = const - np.asarray(m, np.int64).astype(object) * z
    return AddSpelling(tuple(mult), const + offset, shift.copy(), lo_c + zp_out, hi_c + zp_out, in_zp, tuple(ranges),
                       tuple(code), tuple(np.copy(m) if isinstance(m, np.ndarray) else m for m in mult), shift.copy(),
                       offset.copy())


def _add_step(node: IntAdd, in_qs: list[Quant | None], srcs: list) -> Step:
    ranges = []
    for q, src in zip(in_qs, srcs):
        if q is None:  # int32 accumulators: their layer's (E6) range, per channel
            ranges.append(_bounds(src))
        else:
            a, b = code_range(*((8, False) if src is None else src.code))
            ranges.append((np.array([a + q.zp], np.int64), np.array([b + q.zp], np.int64)))
    spell = _spelling([int(m) for m in node.mult], node.shift, (node.a_bits, node.signed), in_qs, ranges)
    return Step(node, "add", None, Quant(1.0, 0 if node.signed else -128), add=spell, in_qs=tuple(in_qs))


def _integer_step(step: Step) -> Step:
    """An (E4) layer (or average pool) spelled in integers: its accumulators as an "acc" step, then
    the add's int64 requantization with one input (exact, off XNNPACK): the ``integer`` fallback."""
    layer = step.layer
    mult = layer.mult.astype(np.int64)
    deep = layer.shift.astype(np.int64) > 31
    offset = 0
    if layer.rounding == "double" and deep.any():  # (E4d): + 2^30, which the clamp at code 0 makes exact
        if layer.signed:
            raise TFLiteExportError(f"layer {layer.name}: the integer fallback cannot spell double rounding (E4d) "
                                    "of signed codes (its offset depends on the product's sign)")
        offset = np.where(deep, DOUBLE_HALF, 0).astype(object)
    spell = _spelling([mult if len(mult) > 1 else int(mult[0])], layer.shift, (layer.a_bits, layer.signed),
                      [None], [_bounds(layer)], offset)
    out_q = Quant(1.0, 0 if layer.signed else -128)
    pads = step.pads if step.op != "conv" else (layer.padding[0],) * 2 + (layer.padding[1],) * 2
    return Step(step.node, "intreq", step.in_q, out_q, layer=layer, pads=pads, in_shape=step.in_shape,
                add=spell, in_qs=(None,))


def add_chain(values: list[np.ndarray], spell: AddSpelling) -> np.ndarray:
    """The file's (E9) add, as its integer ops compute it, on the stored input values (the last axis
    the channels; Python ints: what LiteRT's int64 ops give where nothing overflows, which the proof
    checks)."""
    total = sum(np.asarray(v, np.int64).astype(object) * np.asarray(m, np.int64).astype(object)
                for v, m in zip(values, spell.mult)) + spell.const
    return _chain_of_sum(np.asarray(total, object), spell).astype(np.int64)


def _chain_of_sum(total: np.ndarray, spell: AddSpelling, shift: np.ndarray | None = None) -> np.ndarray:
    s = (spell.shift if shift is None else shift).astype(object)
    low = s <= 32
    clamped = np.where(low, np.minimum(np.maximum(total, spell.lo * 2**s), spell.hi * 2**s), total)
    up = np.where(s < 32, 2 ** np.maximum(32 - s, 0), 1)
    y = ((clamped * up) >> 32) >> np.maximum(s - 32, 0)
    return np.where(low, y, np.minimum(np.maximum(y + _zp_out(spell), spell.lo), spell.hi))


def _zp_out(spell: AddSpelling) -> int:
    return 0 if spell.code[1] else -128


# ---- the proof --------------------------------------------------------------------------------------

def prove(model: IntGraph | TFLitePlan | str | os.PathLike, target: str = "xnnpack") -> dict[str, LayerProof]:
    """Per node and output channel, whether ``target`` ("xnnpack" or "builtin") computes the node
    of the exported file exactly on every input (module docstring: The proof). ``model`` is a graph
    (planned for ``target``) or a :class:`TFLitePlan` (its scales as they are)."""
    if target not in TARGETS:
        raise TFLiteExportError(f"unknown LiteRT target {target!r}: use one of {', '.join(TARGETS)}")
    p = model if isinstance(model, TFLitePlan) else plan(model, target)
    out = {}
    for name, step in p.steps.items():
        if step.op in ("maxpool", "lut", "channels", "mul", "concat", "affine", "avgtable"):
            # integer copies and table lookups: every entry is the node's own equation, evaluated at export
            out[name] = LayerProof(name, np.ones(shape_channels(p, name), bool), ("",) * shape_channels(p, name))
        elif step.op in ("logits", "acc", "convlogits"):
            out[name] = _prove_logits(step)
        elif step.op == "add":
            out[name] = _prove_add(step)
        elif step.op == "intreq":
            mm, rq = _prove_logits(step), _prove_add(step)
            out[name] = LayerProof(name, mm.ok & rq.ok, tuple(a or b for a, b in zip(mm.why, rq.why)))
        else:
            out[name] = _prove_requant(step, target)
    return out


def shape_channels(p: TFLitePlan, name: str) -> int:
    return p.graph.in_shape[0] if name == "input" else node_shapes(p.graph)[name][0]


def _nhwc_rows(layer: IntLayer, in_shape) -> np.ndarray:
    """(O, K) weights of an fc layer (or a conv covering its whole map) in the NHWC order of its input."""
    c, h, w = in_shape
    o = layer.out_channels
    return np.ascontiguousarray(layer.w_q.reshape(o, c, h, w).transpose(0, 2, 3, 1).reshape(o, -1))


def _im2col_rows(layer: IntLayer, channels: int) -> np.ndarray:
    """(O, kh kw C) weights of a conv (any groups) on its im2col patches, tap-major: column
    (i kw + j) C + c holds w_q[o, c - first channel of o's group, i, j] (0 outside o's group)."""
    o, cg, kh, kw = layer.w_q.shape
    og = o // layer.groups
    dense = np.zeros((o, kh, kw, channels), np.int8)
    for out in range(o):
        first = (out // og) * cg
        dense[out, :, :, first:first + cg] = layer.w_q[out].transpose(1, 2, 0)
    return dense.reshape(o, -1)


def _acc_rows(step: Step) -> np.ndarray:
    """(O, K) int8 weight matrix of a logits or accumulator layer, in the order of its (flattened,
    or im2col) input."""
    layer = step.layer
    if layer.kind == "fc":
        return _nhwc_rows(layer, step.in_shape)
    return _im2col_rows(layer, step.in_shape[0])  # a whole-map conv's: the NHWC order of its input


def _logits_bias(step: Step) -> tuple[np.ndarray, list[np.ndarray]]:
    """The (O, K) weight matrix of a logits or accumulator layer and the int32 biases (as int64)
    ADDed to ``raw = sum t w`` in turn: bias' = bias_q - zp_in sum_i w[o, i], or, where that does
    not fit int32, -zp_in sum_i w[o, i] (then raw + it = sum c w, the codes') and bias_q."""
    w = _acc_rows(step)
    fold = step.in_q.zp * w.astype(np.int64).sum(axis=1)
    bias = step.layer.bias_q.astype(np.int64) - fold
    if ((bias >= INT32_MIN) & (bias <= INT32_MAX)).all():
        return w, [bias]
    return w, [-fold, step.layer.bias_q.astype(np.int64)]


def _prove_logits(step: Step) -> LayerProof:
    """Every int32 partial sum fits: raw (|t| <= 128), each bias, and raw plus the first of two
    biases, sum c w (|c| <= 255); the last sum is the accumulator, which fits by (E6)."""
    w, biases = _logits_bias(step)
    size = np.abs(w.astype(np.int64)).sum(axis=1)
    ok = (128 * size <= INT32_MAX) & (len(biases) == 1 or 255 * size <= INT32_MAX)
    for b in biases:
        ok &= (b >= INT32_MIN) & (b <= INT32_MAX)
    why = tuple("" if k else f"layer {step.node.name}, channel {o}: its partial sums (weights of magnitude "
                f"{int(size[o])} in all, bias {int(biases[0][o])}) could leave int32" for o, k in enumerate(ok))
    return LayerProof(step.node.name, ok, why)


def _add_biases(f: _Flat, n: str, raw: int, biases: list[np.ndarray], shape: tuple, name: str | None = None) -> int:
    """raw + each of ``biases`` in turn, int32 ADDs; the last output named ``name`` if given."""
    for j, b in enumerate(biases):
        last = j == len(biases) - 1
        y = f.tensor(shape, "int32", name if last and name else f"{n}.acc{j or ''}")
        f.op("ADD", [raw, _const(f, f"{n}.bias{j or ''}", b, "int32")], [y], "AddOptions", FusedActivationFunction=0)
        raw = y
    return raw


def _prove_add(step: Step) -> LayerProof:
    """(E9) is clamp(floor((S - Z + 2^(s-1)) / 2^s)) of the stored sum S = sum_j mult_j t_j (Z = sum_j
    mult_j zp_j); the file's chain is a non-decreasing function of S too (a clamp, a multiply by a
    power of two, floor shifts), so they agree on S's whole range iff they agree at its ends and at
    (E9)'s thresholds and one below (module docstring: The proof); every int64 value is checked to
    stay inside int64. An (E4) layer spelled in integers is the case of one accumulator input."""
    node, a = step.node, step.add
    lo_c, hi_c = code_range(*a.code)
    zp_out = step.out_q.zp
    n = max([len(lo) for lo, _ in a.in_ranges] + [len(np.atleast_1d(m)) for m in a.mult] + [len(a.shift)] +
            [len(a.ref_offset)])

    def per(v) -> np.ndarray:
        return np.broadcast_to(np.asarray(v, object) if not isinstance(v, np.ndarray) else v.astype(object), (n,))

    mults = [per(m) for m in a.mult]
    refs = [per(m) for m in a.ref_mult]
    s_lo = sum(m * per(lo) for m, (lo, _) in zip(mults, a.in_ranges))
    s_hi = sum(m * per(hi) for m, (_, hi) in zip(mults, a.in_ranges))
    peak = sum(m * np.maximum(abs(per(lo)), abs(per(hi))) for m, (lo, hi) in zip(mults, a.in_ranges))
    peak = peak + abs(per(a.const))
    z = sum(m * zp for m, zp in zip(refs, a.in_zp))
    shift, ref_shift, ref_offset = per(a.shift), per(a.ref_shift), per(a.ref_offset)
    ok, why = np.zeros(n, bool), []
    for ch in range(n):
        head = f"{'layer' if step.op == 'intreq' else 'node'} {node.name}, channel {ch}: "
        s, rs = int(shift[ch]), int(ref_shift[ch])
        if any(m[ch] != r[ch] for m, r in zip(mults, refs)):
            why.append(head + "the file's multipliers are not the node's")
            continue
        if peak[ch] >= 2**63:
            why.append(head + f"its int64 sum could reach {peak[ch]} >= 2^63")
            continue
        half = (1 << (rs - 1)) if rs > 0 else 0
        extra = int(ref_offset[ch])  # (E4d)'s 2^30 of an unsigned layer in the fallback, where shift > 31
        thr = [k * 2**rs - half - extra + z[ch] for k in range(lo_c + 1, hi_c + 1)]
        pts = np.array([min(max(v, s_lo[ch]), s_hi[ch]) for v in thr + [t - 1 for t in thr]] + [s_lo[ch], s_hi[ch]],
                       object)
        want = np.minimum(np.maximum((pts - z[ch] + half + extra) >> rs, lo_c), hi_c) + zp_out
        got = _chain_of_sum(pts + per(a.const)[ch], a, np.full(len(pts), s, np.int64))
        bad = np.flatnonzero(got != want)
        if len(bad):
            eq = "(E9)" if step.op == "add" else "(E4)"
            why.append(head + f"at stored sum {pts[bad[0]]} {eq} gives {int(want[bad[0]])} "
                       f"but the file's int64 ops give {int(got[bad[0]])}")
            continue
        ok[ch] = True
        why.append("")
    return LayerProof(node.name, ok, tuple(why))


def _prove_requant(step: Step, target: str) -> LayerProof:
    layer = step.layer
    pts = _points(layer)
    want = _contract(layer, pts)
    o = layer.out_channels
    s_w = np.broadcast_to(np.asarray(step.filter_scale, F32), (o,))[None].copy()
    ok, got, c, peak = _evaluate(step, target, s_w, pts, want)
    ok, got, c = ok[0], got[0], c[0]
    why = []
    for ch in range(o):
        if ok[ch]:
            why.append("")
            continue
        head = f"layer {step.node.name}, channel {ch}: "
        if target == "xnnpack" and c[ch] >= 256.0:
            why.append(head + f"XNNPACK's requantization scale {c[ch]:.7g} is >= 256, which it refuses")
            continue
        if target == "xnnpack" and c[ch] * peak[ch] >= 2.0**31 - 2**8:
            why.append(head + f"scale {c[ch]:.7g} times accumulators up to {int(peak[ch])} may leave int32")
            continue
        bad = int(np.flatnonzero(got[ch] != want[ch])[0])
        a = int(pts[ch, bad])
        rule = ("XNNPACK's float32 round(float32(acc) * scale)" if target == "xnnpack"
                else "the builtin kernels' double rounding (gemmlowp)")
        eq = "(E4d)" if layer.rounding == "double" else "(E4)"
        why.append(head + f"at acc = {a} {eq} gives code {int(want[ch, bad])} but {rule} gives {int(got[ch, bad])}; "
                   f"no float32 filter scale near {float(_nominal(step)[min(ch, len(step.filter_scale) - 1)]):.9g} "
                   f"rounds all {int(np.ptp(code_range(layer.a_bits, layer.signed)))} thresholds of accumulators up "
                   f"to {int(peak[ch])} right (float32 has a 24-bit significand)")
    return LayerProof(step.node.name, ok, tuple(why))


def unproven(proofs: dict[str, LayerProof]) -> list[str]:
    """One line per failing (node, channel)."""
    return [w for p in proofs.values() for w in p.why if w]


# ---- the flatbuffer -----------------------------------------------------------------------------------

@dataclass
class _Tensor:
    shape: tuple[int, ...]
    ttype: str  # "int8" | "int32"
    name: str
    data: bytes | None = None
    quant: tuple[np.ndarray, np.ndarray, int] | None = None  # scales (float32), zero points (int64), axis
    signature: tuple[int, ...] | None = None


class _Flat:
    """The tensors, buffers and operators of the one subgraph being written."""

    def __init__(self) -> None:
        self.tensors: list[_Tensor] = []
        self.ops: list[tuple[int, list[int], list[int], str | None, dict]] = []
        self.codes: list[int] = []

    def tensor(self, shape, ttype: str, name: str, data: np.ndarray | None = None, scale=None, zp=None,
               axis: int = 0, signature=None) -> int:
        q = None
        if scale is not None:
            q = (np.atleast_1d(np.asarray(scale, F32)), np.atleast_1d(np.asarray(zp, np.int64)), axis)
        raw = None if data is None else np.ascontiguousarray(data).tobytes()
        self.tensors.append(_Tensor(tuple(int(v) for v in shape), ttype, name, raw, q, signature))
        return len(self.tensors) - 1

    def act(self, shape, q: Quant, name: str) -> int:
        return self.tensor(shape, "int8", name, scale=q.scale, zp=q.zp)

    def op(self, code: str, inputs: list[int], outputs: list[int], options: str | None = None, **fields) -> None:
        tfl = _import("tflite")
        number = getattr(tfl.BuiltinOperator, code)
        if number not in self.codes:
            self.codes.append(number)
        self.ops.append((self.codes.index(number), inputs, outputs, options, fields))

    def serialize(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        tfl = _import("tflite")
        flatbuffers = _import("flatbuffers")
        b = flatbuffers.Builder(1 << 16)

        def vec(values, dtype) -> int:
            return b.CreateNumpyVector(np.asarray(values, dtype))

        def offsets(start, items: list[int]) -> int:
            start(b, len(items))
            for off in reversed(items):
                b.PrependUOffsetTRelative(off)
            return b.EndVector()

        def table(name: str, **fields) -> int:
            getattr(tfl, f"{name}Start")(b)
            for key, value in fields.items():
                getattr(tfl, f"{name}Add{key}")(b, value)
            return getattr(tfl, f"{name}End")(b)

        buffers = [table("Buffer")]
        tensors = []
        for t in self.tensors:
            buf = 0
            if t.data is not None:
                b.StartVector(1, len(t.data), 16)
                b.head -= len(t.data)
                b.Bytes[b.head:b.head + len(t.data)] = t.data
                b.vectorNumElems = len(t.data)
                data = b.EndVector()
                buffers.append(table("Buffer", Data=data))
                buf = len(buffers) - 1
            fields = {"Shape": vec(t.shape, np.int32), "Type": getattr(tfl.TensorType, t.ttype.upper()),
                      "Buffer": buf, "Name": b.CreateString(t.name)}
            if t.signature is not None:
                fields["ShapeSignature"] = vec(t.signature, np.int32)
            if t.quant is not None:
                scale, zp, axis = t.quant
                fields["Quantization"] = table("QuantizationParameters", Scale=vec(scale, F32),
                                               ZeroPoint=vec(zp, np.int64), QuantizedDimension=axis)
            tensors.append(table("Tensor", **fields))
        ops = []
        for index, ins, outs, options, fields in self.ops:
            op_fields = {"OpcodeIndex": index, "Inputs": vec(ins, np.int32), "Outputs": vec(outs, np.int32)}
            if options is not None:
                opt = table(options, **{k: (vec(v, np.int32) if isinstance(v, list) else v) for k, v in fields.items()})
                op_fields |= {"BuiltinOptionsType": getattr(tfl.BuiltinOptions, options), "BuiltinOptions": opt}
            ops.append(table("Operator", **op_fields))
        subgraph = table("SubGraph", Tensors=offsets(tfl.SubGraphStartTensorsVector, tensors),
                         Inputs=vec(inputs, np.int32), Outputs=vec(outputs, np.int32),
                         Operators=offsets(tfl.SubGraphStartOperatorsVector, ops), Name=b.CreateString("main"))
        codes = [table("OperatorCode", DeprecatedBuiltinCode=min(c, 127), BuiltinCode=c, Version=1) for c in self.codes]
        model = table("Model", Version=3, OperatorCodes=offsets(tfl.ModelStartOperatorCodesVector, codes),
                      Subgraphs=offsets(tfl.ModelStartSubgraphsVector, [subgraph]),
                      Description=b.CreateString(description),
                      Buffers=offsets(tfl.ModelStartBuffersVector, buffers))
        b.Finish(model, file_identifier=b"TFL3")
        return bytes(b.Output())


ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU6": 3}


def _pad(f: _Flat, n: str, x: int, shape, pads, q: Quant, value: int | None = None) -> tuple[int, tuple]:
    """PAD (the zero point) or PADV2 (``value``) of an NHWC tensor by (top, bottom, left, right)."""
    top, bottom, left, right = pads
    if not any(pads):
        return x, shape
    nb, h, w, c = shape
    out_shape = (nb, h + top + bottom, w + left + right, c)
    paddings = f.tensor((4, 2), "int32", f"{n}.paddings",
                        np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32))
    y = f.act(out_shape, q, f"{n}.padded")
    if value is None or value == q.zp:
        f.op("PAD", [x, paddings], [y], "PadOptions")
    else:
        const = f.tensor((), "int8", f"{n}.pad_value", np.array(value, np.int8), scale=q.scale, zp=q.zp)
        f.op("PADV2", [x, paddings, const], [y], "PadV2Options")
    return y, out_shape


def _filter_quant(step: Step, o: int):
    s_w = np.asarray(step.filter_scale, F32)
    bias_scale = (F32(step.in_q.scale) * s_w).astype(F32)
    return s_w, bias_scale, np.zeros(len(s_w), np.int64)


def _emit(f: _Flat, i: int, step: Step, x: int, shape: tuple, tflm: bool = False) -> tuple[int, tuple]:
    n = f"n{i}"
    node, layer = step.node, step.layer
    if step.op == "maxpool":
        return _max_pool(f, n, x, shape, node.kernel, node.stride, step.pads, step.in_q)
    if step.op == "acc":
        return _emit_acc(f, n, step, x, shape)
    if step.op == "convlogits":  # its 1x1 map of accumulators (the graph checks), as (N, O)
        acc, (nb, _, _, o) = _emit_acc(f, n, step, x, shape, tflm)
        return _reshape(f, "logits", acc, (nb, o), "int32"), (nb, o)
    if step.op == "lut":
        return _emit_lut(f, n, step, x, shape)
    if step.op == "channels":
        return _emit_channels(f, n, step, x, shape)
    if step.op == "affine":
        return _emit_affine(f, n, step, x, shape)
    if step.op == "avgtable":
        return _emit_avg_table(f, n, step, x, shape)
    if step.op == "intreq":
        acc, acc_shape = _emit_acc(f, n, step, x, shape)
        y, out_shape = _emit_chain(f, n, step, [(acc, acc_shape)])
        if not layer.pool:
            return y, out_shape
        k, st, pad = layer.pool
        return _max_pool(f, f"{n}.pool", y, out_shape, (k, k), (st, st), (pad, pad, pad, pad), step.out_q)
    if step.op == "logits":
        w, biases = _logits_bias(step)
        nb = shape[0]
        k = w.shape[1]
        if len(shape) != 2:
            shape_t = f.tensor((2,), "int32", f"{n}.shape", np.array([-1, k], np.int32))
            flat = f.act((nb, k), step.in_q, f"{n}.flat")
            f.op("RESHAPE", [x, shape_t], [flat], "ReshapeOptions", NewShape=[-1, k])
            x = flat
        if tflm:
            raw = _logits_by_adds(f, n, x, w, nb)
        else:
            rhs = f.tensor((k, layer.out_channels), "int8", f"{n}.w", np.ascontiguousarray(w.T.astype(np.int8)),
                           scale=1.0, zp=0)
            raw = f.tensor((nb, layer.out_channels), "int32", f"{n}.raw")
            f.op("BATCH_MATMUL", [x, rhs], [raw], "BatchMatMulOptions", AdjX=False, AdjY=False)
        return _add_biases(f, n, raw, biases, (nb, layer.out_channels), "logits"), (nb, layer.out_channels)
    o = layer.out_channels
    s_w, bias_scale, zeros = _filter_quant(step, o)
    act = ACTIVATIONS[step.act]
    bias = f.tensor((o,), "int32", f"{n}.bias", layer.bias_q.astype(np.int32),
                    scale=np.broadcast_to(bias_scale, (o,)) if len(s_w) > 1 else bias_scale,
                    zp=np.zeros(o if len(s_w) > 1 else 1, np.int64))
    if step.op == "fc":
        nb, wt = shape[0], _nhwc_rows(layer, step.in_shape)
        filt = f.tensor(wt.shape, "int8", f"{n}.w", wt, scale=s_w, zp=np.zeros(len(s_w), np.int64))
        y = f.act((nb, o), step.out_q, f"{n}.y")
        f.op("FULLY_CONNECTED", [x, filt, bias], [y], "FullyConnectedOptions", FusedActivationFunction=act,
             KeepNumDims=False)
        return _minimum(f, n, y, (nb, o), step), (nb, o)
    if len(shape) == 2:  # an fc's (N, O) output read by a conv or pool: its 1x1 map
        shape_t = f.tensor((4,), "int32", f"{n}.shape4", np.array([-1, 1, 1, shape[1]], np.int32))
        x4 = f.act((shape[0], 1, 1, shape[1]), step.in_q, f"{n}.map")
        f.op("RESHAPE", [x, shape_t], [x4], "ReshapeOptions", NewShape=[-1, 1, 1, shape[1]])
        x, shape = x4, (shape[0], 1, 1, shape[1])
    x, shape = _pad(f, n, x, shape, step.pads, step.in_q)
    nb, h, w, c = shape
    kh, kw = layer.w_q.shape[2:]
    (sh, sw), (dh, dw) = layer.stride, layer.dilation
    if step.same:
        ho, wo = -(-h // sh), -(-w // sw)
    else:
        ho, wo = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    y = f.act((nb, ho, wo, o), step.out_q, f"{n}.y")
    geometry = dict(Padding=0 if step.same else 1, StrideW=sw, StrideH=sh, DilationWFactor=dw, DilationHFactor=dh,
                    FusedActivationFunction=act)
    if layer.groups == 1:
        filt = f.tensor((o, kh, kw, c), "int8", f"{n}.w", np.ascontiguousarray(layer.w_q.transpose(0, 2, 3, 1)),
                        scale=s_w, zp=np.zeros(len(s_w), np.int64), axis=0)
        f.op("CONV_2D", [x, filt, bias], [y], "Conv2DOptions", **geometry)
    else:
        filt = f.tensor((1, kh, kw, o), "int8", f"{n}.w", layer.w_q[:, 0].transpose(1, 2, 0)[None],
                        scale=s_w, zp=np.zeros(len(s_w), np.int64), axis=3)
        f.op("DEPTHWISE_CONV_2D", [x, filt, bias], [y], "DepthwiseConv2DOptions", DepthMultiplier=o // c, **geometry)
    y = _minimum(f, n, y, (nb, ho, wo, o), step)
    if not layer.pool:
        return y, (nb, ho, wo, o)
    k, s, pad = layer.pool  # the fused (E7) max-pool: square, floor mode
    return _max_pool(f, f"{n}.pool", y, (nb, ho, wo, o), (k, k), (s, s), (pad, pad, pad, pad), step.out_q)


def _minimum(f: _Flat, n: str, y: int, shape: tuple, step: Step) -> int:
    """MINIMUM of int8 ``y`` and the step's clamp, where it has one (_code_quant); else ``y``."""
    if step.clamp is None:
        return y
    z = f.act(shape, step.out_q, f"{n}.clamped")
    f.op("MINIMUM", [y, f.tensor((1,), "int8", f"{n}.top", np.array([step.clamp], np.int8), scale=step.out_q.scale,
                                 zp=step.out_q.zp)], [z], None)
    return z


def _logits_by_adds(f: _Flat, n: str, x: int, w: np.ndarray, nb: int) -> int:
    """The raw int32 logits ``sum_i t[i] w[o, i]`` (nb, O) of int8 ``x`` (nb, K) in the int32 ops
    TFLite Micro runs (its BATCH_MATMUL and FULLY_CONNECTED output only their input's type and its
    SUM no int32): CAST to int32, a broadcast MUL by the (O, K) weights, then K halved by
    STRIDED_SLICE + ADD until one column is left, the last columns of odd widths summed on their
    own and added once at the end.
    Exact: every partial sum is a sum of products, bounded by 128 sum|w| (checked to fit int32)."""
    o, k = w.shape
    x32 = f.tensor((nb, k), "int32", f"{n}.x32")
    f.op("CAST", [x], [x32], None)
    x3 = _reshape(f, f"{n}.x3", x32, (nb, 1, k), "int32")
    prod = f.tensor((nb, o, k), "int32", f"{n}.prod")
    f.op("MUL", [x3, _const(f, f"{n}.w32", w.astype(np.int32), "int32")], [prod], "MulOptions",
         FusedActivationFunction=0)
    cur, width, level = prod, k, 0

    def cols(lo: int, hi: int, tag: str) -> int:
        return _strided_slice(f, f"{n}.{tag}{level}", cur, (nb, o, hi - lo), [0, 0, lo], [0, 0, hi], [1, 1, 1],
                              "int32", mask=0b011)  # batch and channels whole

    extra = None  # the sum of the odd widths' last columns, added once at the end
    while width > 1:
        half = width // 2
        total = f.tensor((nb, o, half), "int32", f"{n}.sum{level}")
        f.op("ADD", [cols(0, half, "a"), cols(half, 2 * half, "b")], [total], "AddOptions", FusedActivationFunction=0)
        if width % 2:
            last = cols(width - 1, width, "c")
            if extra is not None:
                last = _binary(f, f"{n}.odd{level}", "ADD", extra, last, (nb, o, 1))
            extra = last
        cur, width, level = total, half, level + 1
    if extra is not None:
        cur = _binary(f, f"{n}.all", "ADD", cur, extra, (nb, o, 1))
    return _reshape(f, f"{n}.raw", cur, (nb, o), "int32")


def _const(f: _Flat, n: str, value, ttype: str) -> int:
    v = np.asarray(value, {"int32": np.int32, "int64": np.int64}[ttype])
    return f.tensor(v.shape, ttype, n, v)


def _reshape(f: _Flat, n: str, x: int, shape: tuple, ttype: str, q: Quant | None = None) -> int:
    new = [-1, *shape[1:]]
    y = f.tensor(shape, ttype, n) if q is None else f.act(shape, q, n)
    f.op("RESHAPE", [x, _const(f, f"{n}.shape", new, "int32")], [y], "ReshapeOptions", NewShape=new)
    return y


def _strided_slice(f: _Flat, n: str, x: int, out_shape: tuple, begin, end, strides, ttype: str, q=None,
                   mask: int = 0b1001, shrink: int = 0) -> int:
    """STRIDED_SLICE; ``mask`` (begin and end) marks the axes taken whole (default: batch, channels)."""
    y = f.tensor(out_shape, ttype, n) if q is None else f.act(out_shape, q, n)
    f.op("STRIDED_SLICE", [x, _const(f, f"{n}.begin", begin, "int32"), _const(f, f"{n}.end", end, "int32"),
                           _const(f, f"{n}.strides", strides, "int32")], [y], "StridedSliceOptions",
         BeginMask=mask, EndMask=mask, EllipsisMask=0, NewAxisMask=0, ShrinkAxisMask=shrink, Offset=False)
    return y


def _emit_acc(f: _Flat, n: str, step: Step, x: int, shape: tuple, tflm: bool = False) -> tuple[int, tuple]:
    """A layer's exact int32 accumulators: im2col (PAD of code 0, one STRIDED_SLICE per tap,
    CONCATENATION: int8 copies), BATCH_MATMUL int8 x int8 -> int32 (``tflm``: the MUL and halving
    ADDs of :func:`_logits_by_adds`) and an int32 ADD of bias'."""
    layer = step.layer
    w, biases = _logits_bias(step)
    o, k = w.shape
    nb = shape[0]
    if layer.kind == "fc":
        if len(shape) != 2:
            x = _reshape(f, f"{n}.flat", x, (nb, k), "int8", step.in_q)
        rows, out_shape = (nb, k), (nb, o)
    else:
        if len(shape) == 2:
            x = _reshape(f, f"{n}.map", x, (nb, 1, 1, shape[1]), "int8", step.in_q)
            shape = (nb, 1, 1, shape[1])
        x, shape = _pad(f, n, x, shape, step.pads, step.in_q)
        _, h, wd, c = shape
        kh, kw = layer.w_q.shape[2:]
        (sh, sw), (dh, dw) = layer.stride, layer.dilation
        ho, wo = (h - (kh - 1) * dh - 1) // sh + 1, (wd - (kw - 1) * dw - 1) // sw + 1
        taps = []
        for i in range(kh):
            for j in range(kw):
                if (kh, kw, sh, sw, ho, wo) == (1, 1, 1, 1, h, wd):
                    taps.append(x)
                    continue
                taps.append(_strided_slice(f, f"{n}.tap{i}_{j}", x, (nb, ho, wo, c), [0, i * dh, j * dw, 0],
                                           [0, i * dh + (ho - 1) * sh + 1, j * dw + (wo - 1) * sw + 1, 0],
                                           [1, sh, sw, 1], "int8", step.in_q))
        if len(taps) > 1:
            cat = f.act((nb, ho, wo, k), step.in_q, f"{n}.patches")
            f.op("CONCATENATION", taps, [cat], "ConcatenationOptions", Axis=3, FusedActivationFunction=0)
            taps = [cat]
        x = _reshape(f, f"{n}.rows", taps[0], (nb * ho * wo, k), "int8", step.in_q)
        rows, out_shape = (nb * ho * wo, k), (nb, ho, wo, o)
    if tflm:
        raw = _logits_by_adds(f, n, x, w, rows[0])
    else:
        rhs = f.tensor((k, o), "int8", f"{n}.w", np.ascontiguousarray(w.T.astype(np.int8)), scale=1.0, zp=0)
        raw = f.tensor((rows[0], o), "int32", f"{n}.raw")
        f.op("BATCH_MATMUL", [x, rhs], [raw], "BatchMatMulOptions", AdjX=False, AdjY=False)
    acc = _add_biases(f, n, raw, biases, (rows[0], o))
    if len(out_shape) == 4:
        acc = _reshape(f, f"{n}.acc4", acc, out_shape, "int32")
    return acc, out_shape


def _same_rank(f: _Flat, n: str, ins: list[tuple[int, tuple]], qs) -> list[tuple[int, tuple]]:
    """The inputs of a node that reads several, an fc's (N, O) beside a map (N, H, W, O) reshaped to
    (N, 1, 1, O); ``qs``: their quantizations (None: int32 accumulators)."""
    if {len(shape) for _, shape in ins} != {2, 4}:
        return ins
    return [(_reshape(f, f"{n}.in{j}.map", x, (shape[0], 1, 1, shape[1]), "int32" if q is None else "int8", q),
             (shape[0], 1, 1, shape[1])) if len(shape) == 2 else (x, shape)
            for j, ((x, shape), q) in enumerate(zip(ins, qs))]


def _emit_multi(f: _Flat, i: int, step: Step, ins: list[tuple[int, tuple]]) -> tuple[int, tuple]:
    """A node that reads several tensors: (E9) add in int64, (E12) mul and (E13) concat by tables."""
    n = f"n{i}"
    ins = _same_rank(f, n, ins, step.in_qs)
    if step.op == "add":
        return _emit_chain(f, n, step, ins)
    if step.op == "mul":  # entry (x - lo_x) * n_g + (g - lo_g) of the stored t = code + zp
        (x, shape), (g, _) = ins
        (qx, qg), (cx, cg) = step.in_qs, step.in_codes
        (lo_x, _), (lo_g, hi_g) = code_range(*cx), code_range(*cg)
        n_g = hi_g - lo_g + 1
        rows = _binary(f, f"{n}.rows", "MUL", _int32(f, f"{n}.x", x, shape), _const(f, f"{n}.ng", n_g, "int32"), shape)
        index = _binary(f, f"{n}.pair", "ADD", rows, _int32(f, f"{n}.g", g, ins[1][1]), shape)
        index = _binary(f, f"{n}.index", "ADD", index,
                        _const(f, f"{n}.base", -(qx.zp + lo_x) * n_g - (qg.zp + lo_g), "int32"), shape)
        return _lookup(f, n, index, shape, step.tables[0], step.out_q), shape
    outs = [(x, shape) if table is None else (_lookup(f, f"{n}.in{j}", _stored_index(f, f"{n}.in{j}", x, shape),
                                                      shape, table, step.out_q), shape)
            for j, ((x, shape), table) in enumerate(zip(ins, step.tables))]
    shape = outs[0][1][:-1] + (sum(s[-1] for _, s in outs),)
    y = f.act(shape, step.out_q, f"{n}.y")
    f.op("CONCATENATION", [x for x, _ in outs], [y], "ConcatenationOptions", Axis=len(shape) - 1,
         FusedActivationFunction=0)
    return y, shape


def _int32(f: _Flat, n: str, x: int, shape: tuple) -> int:
    tfl = _import("tflite")
    y = f.tensor(shape, "int32", f"{n}.i32")
    f.op("CAST", [x], [y], "CastOptions", InDataType=tfl.TensorType.INT8, OutDataType=tfl.TensorType.INT32)
    return y


def _binary(f: _Flat, n: str, code: str, a: int, b: int, shape: tuple) -> int:
    """An int32 ADD, MUL, MAXIMUM or MINIMUM (``b`` broadcast)."""
    y = f.tensor(shape, "int32", n)
    if code in ("MAXIMUM", "MINIMUM"):
        f.op(code, [a, b], [y], "MaximumMinimumOptions")
    else:
        f.op(code, [a, b], [y], "AddOptions" if code == "ADD" else "MulOptions", FusedActivationFunction=0)
    return y


def _stored_index(f: _Flat, n: str, x: int, shape: tuple, base=128) -> int:
    """int32(t) + ``base`` (a scalar, or one per channel) of the stored int8 values t."""
    return _binary(f, f"{n}.index", "ADD", _int32(f, n, x, shape), _const(f, f"{n}.base", base, "int32"), shape)


def _lookup(f: _Flat, n: str, index: int, shape: tuple, table: np.ndarray, q: Quant) -> int:
    """GATHER of the int8 ``table`` at the int32 ``index``: the output, quantized ``q``."""
    y = f.act(shape, q, f"{n}.y")
    f.op("GATHER", [f.tensor((len(table),), "int8", f"{n}.table", table, scale=q.scale, zp=q.zp), index], [y],
         "GatherOptions", Axis=0, BatchDims=0)
    return y


def _emit_lut(f: _Flat, n: str, step: Step, x: int, shape: tuple) -> tuple[int, tuple]:
    """(E11): the node's table over the 256 stored values (entry t + 128 holds the output of code
    t - zp; the end entries where t holds no code)."""
    node = step.node
    lo_in = code_range(node.in_bits, node.in_signed)[0]
    table = (node.table.astype(np.int64)[_codes_of_stored(step.in_q, (node.in_bits, node.in_signed)) - lo_in] +
             step.out_q.zp).astype(np.int8)
    return _lookup(f, n, _stored_index(f, n, x, shape), shape, table, step.out_q), shape


def _emit_affine(f: _Flat, n: str, step: Step, x: int, shape: tuple) -> tuple[int, tuple]:
    """(E15): one 256-entry table per channel, entry c * 256 + t + 128."""
    c = shape[-1]
    index = _stored_index(f, n, x, shape, (128 + 256 * np.arange(c)).astype(np.int32))
    return _lookup(f, n, index, shape, step.tables[0], step.out_q), shape


def _emit_avg_table(f: _Flat, n: str, step: Step, x: int, shape: tuple) -> tuple[int, tuple]:
    """(E10) by table: the codes in int32 (CAST, ADD -zp), PAD of code 0, one STRIDED_SLICE per
    window tap and ADDs (|sum| <= 255 kh kw), ADD of the position's table row, GATHER."""
    node = step.node
    if len(shape) == 2:
        x = _reshape(f, f"{n}.map", x, (shape[0], 1, 1, shape[1]), "int8", step.in_q)
        shape = (shape[0], 1, 1, shape[1])
    codes = _int32(f, n, x, shape)
    if step.in_q.zp:
        codes = _binary(f, f"{n}.codes", "ADD", codes, _const(f, f"{n}.zp", -step.in_q.zp, "int32"), shape)
    top, bottom, left, right = step.pads
    nb, h, w, c = shape
    if any(step.pads):
        padded = f.tensor((nb, h + top + bottom, w + left + right, c), "int32", f"{n}.padded")
        f.op("PAD", [codes, _const(f, f"{n}.paddings", [[0, 0], [top, bottom], [left, right], [0, 0]], "int32")],
             [padded], "PadOptions")
        codes, h, w = padded, h + top + bottom, w + left + right
    (kh, kw), (sh, sw) = node.kernel, node.stride
    ho, wo = step.tables[1].shape
    out = (nb, ho, wo, c)
    total = None
    for i in range(kh):
        for j in range(kw):
            tap = _strided_slice(f, f"{n}.tap{i}_{j}", codes, out, [0, i, j, 0],
                                 [0, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, 0], [1, sh, sw, 1], "int32")
            total = tap if total is None else _binary(f, f"{n}.sum{i}_{j}", "ADD", total, tap, out)
    index = _binary(f, f"{n}.index", "ADD", total, _const(f, f"{n}.rows", step.tables[1][:, :, None], "int32"), out)
    return _lookup(f, n, index, out, step.tables[0], step.out_q), out


def _emit_channels(f: _Flat, n: str, step: Step, x: int, shape: tuple) -> tuple[int, tuple]:
    """(E14): GATHER of whole channels along the last axis."""
    index = step.node.index.astype(np.int32)
    out = shape[:-1] + (len(index),)
    y = f.act(out, step.out_q, f"{n}.y")
    f.op("GATHER", [x, _const(f, f"{n}.index", index, "int32")], [y], "GatherOptions", Axis=len(shape) - 1,
         BatchDims=0)
    return y, out


def _emit_chain(f: _Flat, n: str, step: Step, ins: list[tuple[int, tuple]]) -> tuple[int, tuple]:
    """CAST to int64, MUL, ADD, ADD const, the clamp (MAXIMUM, MINIMUM), MUL by 2^(32 - shift) where
    shift < 32, the high int32 word (BITCAST int64 -> 2 x int32, element 1 on a little-endian
    runtime, STRIDED_SLICE), RIGHT_SHIFT by shift - 32 where shift > 32 (arithmetic: floor), CAST
    to int8: the chain of :class:`AddSpelling`."""
    a = step.add
    shape = ins[0][1]
    tfl = _import("tflite")

    def vec(v, ttype: str, tag: str) -> int:  # a scalar, or one per channel (the last axis)
        v = np.asarray(v, object)
        return _const(f, f"{n}.{tag}", int(v.ravel()[0]) if v.size == 1 or (v == v.ravel()[0]).all() else
                      np.array([int(e) for e in v.ravel()], np.int64), ttype)

    def op(code: str, x: int, c: int, tag: str, options: str, **fields) -> int:
        y = f.tensor(shape, "int64", f"{n}.{tag}")
        f.op(code, [x, c], [y], options, **fields)
        return y

    total = None
    for j, ((x, _), q) in enumerate(zip(ins, step.in_qs)):
        wide = f.tensor(shape, "int64", f"{n}.in{j}.i64")
        src = tfl.TensorType.INT8 if q is not None else tfl.TensorType.INT32
        f.op("CAST", [x], [wide], "CastOptions", InDataType=src, OutDataType=tfl.TensorType.INT64)
        prod = op("MUL", wide, vec(a.mult[j], "int64", f"in{j}.mult"), f"in{j}.prod", "MulOptions",
                  FusedActivationFunction=0)
        total = prod if total is None else op("ADD", total, prod, f"sum{j}", "AddOptions", FusedActivationFunction=0)
    p = op("ADD", total, vec(a.const, "int64", "const"), "p", "AddOptions", FusedActivationFunction=0)
    s = a.shift.astype(object)
    low = s <= 32
    if low.any():  # (a channel with a larger shift gets bounds that never bind: it clamps in int32 below)
        p = op("MAXIMUM", p, vec(np.where(low, a.lo * 2**s, -(2**63)), "int64", "lo"), "max", "MaximumMinimumOptions")
        p = op("MINIMUM", p, vec(np.where(low, a.hi * 2**s, 2**63 - 1), "int64", "hi"), "min", "MaximumMinimumOptions")
    if (s < 32).any():
        p = op("MUL", p, vec(np.where(s < 32, 2 ** np.maximum(32 - s, 0), 1), "int64", "pow"), "up", "MulOptions",
               FusedActivationFunction=0)
    words = f.tensor(shape + (2,), "int32", f"{n}.words")
    f.op("BITCAST", [p], [words], "BitcastOptions")
    r = len(shape)
    y = _strided_slice(f, f"{n}.high", words, shape, [0] * r + [1], [0] * r + [2], [1] * (r + 1), "int32",
                       mask=(1 << r) - 1, shrink=1 << r)
    if (s > 32).any():
        shifted = f.tensor(shape, "int32", f"{n}.shifted")
        f.op("RIGHT_SHIFT", [y, vec(np.maximum(s - 32, 0), "int32", "rshift")], [shifted], "RightShiftOptions")
        late = np.where(low, 0, _zp_out(a))  # zp_out, where the shift is > 32
        if late.any():
            shifted = _binary(f, f"{n}.stored", "ADD", shifted, vec(late, "int32", "zp"), shape)
        y = _binary(f, f"{n}.top", "MINIMUM", _binary(f, f"{n}.bottom", "MAXIMUM", shifted,
                                                        _const(f, f"{n}.lo32", a.lo, "int32"), shape),
                    _const(f, f"{n}.hi32", a.hi, "int32"), shape)
    out = f.act(shape, step.out_q, f"{n}.y")
    f.op("CAST", [y], [out], "CastOptions", InDataType=tfl.TensorType.INT32, OutDataType=tfl.TensorType.INT8)
    return out, shape


def _max_pool(f: _Flat, n: str, x: int, shape, kernel, stride, pads, q: Quant) -> tuple[int, tuple]:
    """MAX_POOL_2D VALID after a PADV2 of -128, the lowest int8, which never wins (E7)."""
    x, shape = _pad(f, n, x, shape, pads, q, -128)
    (kh, kw), (sh, sw) = kernel, stride
    nb, h, w, c = shape
    out = (nb, (h - kh) // sh + 1, (w - kw) // sw + 1, c)
    y = f.act(out, q, f"{n}.y")
    f.op("MAX_POOL_2D", [x], [y], "Pool2DOptions", Padding=1, StrideW=sw, StrideH=sh, FilterWidth=kw,
         FilterHeight=kh, FusedActivationFunction=0)
    return y, out


FALLBACKS = ("integer", "nearest")


def integer_fallback(model: IntGraph | TFLitePlan | str | os.PathLike, target: str = "xnnpack") -> TFLitePlan:
    """The plan of ``model`` with every conv/fc/avgpool node that :func:`prove` fails (or that
    :func:`plan` refuses: a grouped conv, signed codes below 8 bits) spelled in integers (exact;
    LiteRT's builtin int32/int64 kernels instead of XNNPACK's float32 requantization), repeated until
    no such node fails (a respelled node's output scale changes its readers')."""
    if isinstance(model, TFLitePlan):
        p = model
    else:
        graph, todo = as_graph(model), set()
        while True:  # the nodes plan() refuses where integers spell them
            try:
                p = plan(graph, target, integer=todo)
                break
            except TFLiteExportError as e:
                if e.integer_node is None or e.integer_node in todo:
                    raise
                todo.add(e.integer_node)
    while True:
        bad = {name for name, proof in prove(p, target).items()
               if not proof.holds and p.steps[name].op in ("conv", "fc", "avgpool")}
        if not bad:
            return p
        p = plan(p.graph, target, integer=set(p.fallbacks) | bad)


def to_tflite(model: IntGraph | TFLitePlan | str | os.PathLike, target: str = "xnnpack",
              allow_unproven: bool = False, fallback: str | None = None) -> tuple[bytes, list[str]]:
    """The .tflite bytes of ``model`` (a graph, its model file, or a :class:`TFLitePlan`) and the
    list of (node, channel) lines it could not prove for ``target``, then one line per layer the
    integer fallback respelled. An unproven node raises
    :class:`UnprovenLayerError` naming the first one, unless ``fallback`` is "integer" (those
    layers spelled in exact integer ops, :func:`integer_fallback`; the plan's ``fallbacks`` name
    them) or "nearest" (= ``allow_unproven``: written anyway with the nearest float32 scales, so
    LiteRT's rounding differs from (E4) at some thresholds; the lines name them)."""
    if fallback not in (None, *FALLBACKS):
        raise TFLiteExportError(f"unknown fallback {fallback!r}: use one of {', '.join(FALLBACKS)}")
    allow_unproven = allow_unproven or fallback == "nearest"
    if fallback == "integer":
        p = integer_fallback(model, target)
    else:
        p = model if isinstance(model, TFLitePlan) else plan(model, target)
    failures = unproven(prove(p, target))
    if failures and not allow_unproven:  # (a failure under the integer fallback: an int32/int64 bound)
        more = f" (and {len(failures) - 1} more channels)" if len(failures) > 1 else ""
        raise UnprovenLayerError(f"cannot prove the {target} export exact: {failures[0]}{more}; fallbacks: "
                                 "fallback='integer' (those layers in exact integer ops, off XNNPACK) or "
                                 "allow_unproven / fallback='nearest' (written anyway, LiteRT's rounding)")
    for name in {line.split(",")[0].split()[-1] for line in failures}:
        p.fallbacks.setdefault(name, "nearest")
    graph = p.graph
    c, h, w = graph.in_shape
    f = _Flat()
    x = f.tensor((1, h, w, c), "int8", "x_q", scale=1.0, zp=-128, signature=(-1, h, w, c))
    env = {"input": (x, (1, h, w, c))}
    for i, node in enumerate(graph.layers):
        if isinstance(node, (IntAdd, IntMul, IntConcat)):
            env[node.name] = _emit_multi(f, i, p.steps[node.name], [env[src] for src in graph.sources(node)])
        else:
            env[node.name] = _emit(f, i, p.steps[node.name], *env[graph.sources(node)[0]], tflm=p.target == "tflm")
    out = env[graph.layers[-1].name][0]
    data = f.serialize([x], [out], f"fiqnn ARITH_VERSION {graph.arith_version}, target {p.target}")
    notes = [f"layer {name}: written with the integer fallback (exact: int32 and int64 ops, not {target}'s float32 "
             "requantization)" for name, how in p.fallbacks.items() if how == "integer"]
    return data, failures + notes


def export_tflite(model: IntGraph | TFLitePlan | str | os.PathLike, path: str | os.PathLike,
                  target: str = "xnnpack", allow_unproven: bool = False, fallback: str | None = None) -> list[str]:
    """Write the .tflite of ``model`` to ``path`` (atomically); return :func:`to_tflite`'s lines
    (empty unless a fallback was taken), which it also logs."""
    data, failures = to_tflite(model, target, allow_unproven, fallback)
    for line in failures:
        log.warning("%s export: %s", target, line if "integer fallback" in line else f"unproven: {line}")
    _io.write_bytes(path, data)
    return failures


# ---- running it ---------------------------------------------------------------------------------------

def run_tflm(model, x_q: np.ndarray, progress: bool = False) -> np.ndarray:
    """Run ``model`` in TFLite Micro's Python interpreter (package tflite-micro: its reference
    kernels, built for the host) on uint8 images ``x_q``, one at a time; int32 logits (N, classes).

    ``model``: an IntGraph or its model file (exported for target "tflm", refused if unproven), or
    .tflite bytes or file. TFLite Micro requantizes as the builtin target does (gemmlowp double
    rounding), so a model converted with ``rounding="double"`` proves exactly (docs/arithmetic.md).
    """
    tflm = optional_import("tflite_micro", "the TFLite Micro backend")
    if isinstance(model, bytes):
        data = model
    elif isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".tflite":
        data = Path(model).read_bytes()
    else:
        graph = as_graph(model)
        x_q = check_input(graph, x_q)
        data = to_tflite(graph, "tflm")[0]
    interp = tflm.runtime.Interpreter.from_bytes(data)
    x = to_litert_input(np.asarray(x_q))
    out = []
    for i in progress_bar(range(len(x)), progress=progress, desc="tflm", unit="img"):
        interp.set_input(x[i:i + 1], 0)
        interp.invoke()
        out.append(np.array(interp.get_output(0)).reshape(-1))
    return np.stack(out).astype(np.int32) if out else np.zeros((0, 0), np.int32)


def to_litert_input(x_q: np.ndarray) -> np.ndarray:
    """uint8 images (N, C, H, W) -> the .tflite input: int8 (N, H, W, C), x_q - 128."""
    return (np.asarray(x_q, np.int16) - 128).astype(np.int8).transpose(0, 2, 3, 1).copy()


def run_litert(model, x_q: np.ndarray, threads: int = 1, target: str = "xnnpack", batch_size: int = 256,
               allow_unproven: bool = False, fallback: str | None = None) -> np.ndarray:
    """Run ``model`` in LiteRT on uint8 images ``x_q`` (N, C, H, W); int32 logits (N, classes).

    ``model``: an IntGraph or its model file (exported here, refused if unproven unless
    ``allow_unproven`` or a ``fallback``, as :func:`to_tflite`), a :class:`TFLitePlan`, .tflite
    bytes, or a .tflite file. ``target``
    "xnnpack" runs with LiteRT's default XNNPACK delegate, "builtin" with its own kernels and no
    delegate (op resolver BUILTIN_WITHOUT_DEFAULT_DELEGATES).
    """
    litert = _import("ai_edge_litert.interpreter")
    if target not in TARGETS:
        raise TFLiteExportError(f"unknown LiteRT target {target!r}: use one of {', '.join(TARGETS)}")
    if isinstance(model, bytes):
        data = model
    elif isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".tflite":
        data = Path(model).read_bytes()
    else:
        if not isinstance(model, TFLitePlan):
            model = integer_fallback(model, target) if fallback == "integer" else plan(model, target)
        x_q = check_input(model.graph, x_q)
        data = to_tflite(model, target, allow_unproven, fallback)[0]
    x = to_litert_input(np.asarray(x_q))
    resolver = (litert.OpResolverType.AUTO if target == "xnnpack"
                else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp = litert.Interpreter(model_content=data, num_threads=threads, experimental_op_resolver_type=resolver)
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    if tuple(interp.get_input_details()[0]["shape"][1:]) != x.shape[1:]:
        raise ValueError(f"the model takes images of NHWC shape {tuple(interp.get_input_details()[0]['shape'][1:])}, "
                         f"got {x.shape[1:]}")
    results, size = [], None
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        if len(chunk) != size:
            interp.resize_tensor_input(inp, list(chunk.shape))
            interp.allocate_tensors()
            size = len(chunk)
        interp.set_tensor(inp, chunk)
        interp.invoke()
        results.append(np.array(interp.get_tensor(out)).reshape(len(chunk), -1))
    return np.concatenate(results).astype(np.int32) if results else np.zeros((0, 0), np.int32)
