"""ONNX Runtime equals the numpy executor bit for bit on every version-2 construct: signed codes in
and out of conv/fc layers, signed adds, max-pool nodes (ceil mode, non-square windows), average
pools with ceil mode, count_include_pad=False and per-divisor pairs, lookup tables, channel-wise
multiplies, concatenations, channel gathers and channel affines.

Each graph ends in an identity read-out (a 2-bit conv or fc layer whose weights are the identity
matrix), so that its logits are the codes of the node under test, position by position: a wrong
code anywhere is a mismatch, never averaged away. Inputs are a few hundred random images plus the
all-0 and all-255 ones.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fiqnn.export.onnx import openvino_unsafe_nodes, run_onnx, to_onnx
from fiqnn.integer.arith import code_peak, code_range, quantize_multiplier
from fiqnn.integer.execute import run
from fiqnn.integer.graph import (
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
from fiqnn.integer.nodes import code_of, pool_out

IN = (8, False)  # the network input's codes
N_IMAGES = 300


def _images(in_shape: tuple, seed: int = 0, n: int = N_IMAGES) -> np.ndarray:
    """Random uint8 images, the first all 0, the second all 255, a few more of 0s and 255s only."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *in_shape)).astype(np.uint8)
    x[0], x[1] = 0, 255
    x[2:10] = rng.choice(np.array([0, 255], np.uint8), (8, *in_shape))
    return x


def _pairs(alphas, rng=None) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(a) * (rng.uniform(0.7, 1.4) if rng is not None else 1)) for a in alphas]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32)


def _conv(rng, name: str, shape: tuple, code_in: tuple, code_out: tuple | None, w_bits: int = 4,
          per_channel: bool = False, kind: str = "conv", **geometry) -> IntLayer:
    """A conv (``shape`` (O, I/groups, kh, kw)) or fc (``shape`` (O, I)) layer between the given codes
    ((bits, signed); None: int32 accumulators out), scaled so that its codes spread over the output
    range and reach both clamps."""
    q = 2 ** (w_bits - 1) - 1
    w = rng.integers(-q, q + 1, shape).astype(np.int8)
    in_bits, in_signed = code_in
    x_lo, x_hi = code_range(in_bits, in_signed)
    typical = max(1.0, np.sqrt(w[0].size) * max(q, 1) * (x_hi - x_lo) / 3)
    bias = rng.integers(-int(typical), int(typical) + 1, shape[0]).astype(np.int32)
    target = code_peak(*code_out) if code_out else 2**20
    n = shape[0] if per_channel else 1
    mult, shift = _pairs(np.full(n, target / typical), rng)
    return IntLayer(name=name, kind=kind, w_q=w, bias_q=bias, mult=mult, shift=shift, in_bits=in_bits,
                    w_bits=w_bits, a_bits=code_out[0] if code_out else None, in_signed=in_signed,
                    signed=bool(code_out and code_out[1]), **geometry)


def _shape_of(in_shape: tuple, nodes: list) -> tuple[int, int, int]:
    """The (C, H, W) output of the last of ``nodes`` (the graph's checks, without a logits layer)."""
    srcs = {n.name: n.inputs or ((nodes[i - 1].name,) if i else ("input",)) for i, n in enumerate(nodes)}
    fake = SimpleNamespace(in_shape=in_shape, layers=tuple(nodes), sources=lambda node: srcs[node.name])
    return node_shapes(fake)[nodes[-1].name]


def _graph(in_shape: tuple, nodes: list, readout: str = "fc") -> IntGraph:
    """``nodes`` and an identity read-out of the last node's codes (the logits are those codes)."""
    c, h, w = _shape_of(in_shape, nodes)
    k = c * h * w
    bits, signed = nodes[-1].code
    eye = np.eye(k, dtype=np.int8)
    head = IntLayer(name="readout", kind=readout, w_q=eye if readout == "fc" else eye.reshape(k, c, h, w),
                    bias_q=np.zeros(k, np.int32), mult=np.array([2**30], np.int32), shift=np.array([30], np.int32),
                    in_bits=bits, w_bits=2, a_bits=None, in_signed=signed)
    return IntGraph(in_shape, k, (*nodes, head))


def _same(graph: IntGraph, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime's logits equal the numpy executor's; returns them."""
    ref = run(graph, x)
    got = run_onnx(graph, x)
    assert got.dtype == np.int32 and got.shape == ref.shape
    diff = np.argwhere(got != ref)
    assert len(diff) == 0, f"{len(diff)} codes differ, first at {diff[0]}: onnx {got[tuple(diff[0])]} " \
                           f"numpy {ref[tuple(diff[0])]}"
    return ref


def _spans(codes: np.ndarray, code: tuple) -> None:
    """The codes reach both ends of their range (the clamps) and something in between."""
    lo, hi = code_range(*code)
    assert codes.min() == lo and codes.max() == hi and len(np.unique(codes)) > 2


# ---- what ONNX Runtime itself does ---------------------------------------------------------------

def _ort(nodes, feeds: dict, consts: dict, out: str = "y") -> np.ndarray:
    import onnxruntime as ort

    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for k, v in feeds.items()]
    g = helper.make_graph(nodes, "probe", ins, [helper.make_empty_tensor_value_info(out)],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


@pytest.mark.parametrize("group", [1, 2])
def test_conv_integer_pads_with_the_input_zero_point(group):
    """Signed codes enter ConvInteger as x + 128 with zero point 128: the exporter relies on ONNX
    Runtime padding with the zero point (code 0), not with the byte 0 (code -128)."""
    x = np.full((1, 2, 3, 3), 128, np.uint8)  # code 0 everywhere
    w = np.full((2, 2 // group, 3, 3), 129, np.uint8)  # weight 1 everywhere
    node = helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], kernel_shape=[3, 3], pads=[2, 1, 2, 2],
                            dilations=[2, 1], group=group)
    consts = {"w": w, "zx": np.array(128, np.uint8), "zw": np.array(128, np.uint8)}
    assert not _ort([node], {"x": x}, consts).any()
    inside = _ort([node], {"x": x + 1}, consts)  # code 1 everywhere: each output counts its cells inside the map
    mask = np.pad(np.ones((3, 3), np.int32), ((2, 2), (1, 2)))
    counts = [[mask[i:i + 5:2, j:j + 3].sum() for j in range(4)] for i in range(3)]
    assert (inside == np.array(counts) * (2 // group)).all()


def test_max_pool_never_counts_padding_of_int8_codes():
    x = np.full((1, 1, 3, 4), -100, np.int8)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], pads=[1, 1, 1, 2])
    y = _ort([node], {"x": x}, {})
    assert y.dtype == np.int8 and (y == -100).all()


# ---- conv / fc layers with signed codes ----------------------------------------------------------

@pytest.mark.parametrize("a_bits, w_bits, per_channel, readout", [(8, 8, False, "fc"), (4, 4, True, "conv"),
                                                                   (2, 2, True, "fc"), (3, 8, False, "conv")])
def test_conv_layers_with_signed_codes(a_bits, w_bits, per_channel, readout):
    """Signed out of a conv, signed into a padded, dilated, strided conv, into a depthwise conv with
    a fused max-pool, and a grouped conv whose signed output is max-pooled (int8 MaxPool)."""
    rng = np.random.default_rng(a_bits * 10 + w_bits)
    s = (a_bits, True)
    pc = {"w_bits": w_bits, "per_channel": per_channel}
    c1 = _conv(rng, "c1", (6, 3, 3, 3), IN, s, padding=(1, 1), **pc)
    c2 = _conv(rng, "c2", (6, 6, 3, 3), s, s, padding=(2, 1), dilation=(2, 1), stride=(1, 2), **pc)
    dw = _conv(rng, "dw", (6, 1, 3, 3), s, (4, False), padding=(1, 1), groups=6, pool=(3, 2, 1), **pc)
    c3 = _conv(rng, "c3", (4, 3, 2, 2), (4, False), s, padding=(1, 1), groups=2, pool=(2, 1, 1), **pc)
    x = _images((3, 9, 11), seed=a_bits)
    for k in range(1, 5):  # each layer's codes on their own, and the whole chain
        graph = _graph((3, 9, 11), [c1, c2, dw, c3][:k], readout)
        codes = _same(graph, x)
        if k in (1, 2):
            _spans(codes, s)


@pytest.mark.parametrize("a_bits", [2, 5, 8])
def test_fc_layers_with_signed_codes(a_bits):
    rng = np.random.default_rng(a_bits)
    s = (a_bits, True)
    c1 = _conv(rng, "c1", (4, 3, 2, 2), IN, s, stride=(2, 2))
    f1 = _conv(rng, "f1", (12, 4 * 3 * 3), s, s, kind="fc", per_channel=True)  # signed in, signed out
    f2 = _conv(rng, "f2", (6, 12), s, (a_bits, False), kind="fc")  # signed in, unsigned out
    x = _images((3, 6, 6), seed=a_bits)
    _spans(_same(_graph((3, 6, 6), [c1, f1]), x), s)
    _same(_graph((3, 6, 6), [c1, f1, f2]), x)


def _edge_layer(a_bits: int, signed: bool) -> IntLayer:
    """An fc layer over 12 input codes whose output channels each stress (E3)/(E4): shift 0, shift 62
    with mult 2^31 - 1 on either side of the rounding threshold and at the exact tie -2^61, ties of a
    power-of-two scale (negative ones too), and the clamps."""
    rng = np.random.default_rng(a_bits)
    k = 12
    w = rng.integers(-7, 8, (10, k)).astype(np.int8)
    w[1:3] = 0
    w[1:3, :2] = [1, -1]  # acc = bias + x0 - x1: either side of the threshold
    w[3] = np.abs(w[3])  # bias -2^31 needs weights >= 0 for (E6)
    w[4] = 0
    w[4, 0] = 1  # acc = x - 128 exactly: (acc * 2^30) >> 31 is a tie for every odd acc
    w[5] = 0
    w[5, :2] = [1, -1]  # acc = x0 - x1 in [-255, 255]: ties at shift 1, both signs
    bound = 7 * 255 * k
    rows = [  # (bias, mult, shift)
        (0, 1, 0),  # the accumulator itself, clamped
        (2**30, 2**31 - 1, 62),  # acc * mult around 2^61: rounds to 0 or 1
        (-(2**30), 2**31 - 1, 62),  # around -2^61: -1 or 0
        (-(2**31), 2**30, 62),  # all-0 image: acc * mult = -2^61 exactly, a tie: 0
        (-128, 2**30, 31),
        (0, 1, 1),
        (2**31 - 1 - bound, 2**31 - 1, 62),  # acc * mult near +-2^62, the end of the (E3) range
        (-(2**31) + bound, 2**31 - 1, 62),
        (2**31 - 1 - bound, 2**31 - 1, 50),  # the same, clamped
        (-(2**31) + bound, 2**31 - 1, 52),
    ]
    bias, mult, shift = (np.array(col, dtype) for col, dtype in zip(zip(*rows), (np.int32, np.int32, np.int32)))
    return IntLayer(name="edge", kind="fc", w_q=w, bias_q=bias, mult=mult, shift=shift, in_bits=8, w_bits=4,
                    a_bits=a_bits, signed=signed)


@pytest.mark.parametrize("a_bits, signed", [(8, True), (2, True), (5, True), (8, False), (3, False)])
def test_requantize_edges(a_bits, signed):
    graph = _graph((3, 2, 2), [_edge_layer(a_bits, signed)])
    x = _images((3, 2, 2), seed=a_bits)
    codes = _same(graph, x)
    lo, hi = code_range(a_bits, signed)
    assert codes[:, 0].min() == lo and codes[:, 0].max() == hi
    assert set(codes[:, 1]) == {0, 1} and set(codes[:, 2]) == ({-1, 0} if signed else {0})
    assert codes[0, 3] == 0  # the tie at -2^61 rounds up
    assert set(codes[:, 6]) == {1} and set(codes[:, 7]) == ({-1} if signed else {0})
    assert set(codes[:, 8]) == {hi} and set(codes[:, 9]) == {lo}


# ---- residual adds -------------------------------------------------------------------------------

ADD_CASES = [(shift, signed) for signed in (True, False) for shift in (0, 20, 31, 62)]


def add_case(shift: int, signed: bool) -> tuple[IntGraph, np.ndarray]:
    """(E9) of signed codes, unsigned codes and int32 accumulators; at shift 62 the accumulator's
    multiplier puts the sum next to the 2^61 rounding threshold."""
    rng = np.random.default_rng(shift)
    c1 = _conv(rng, "c1", (4, 3, 3, 3), IN, (4, True), padding=(1, 1))
    c2 = _conv(rng, "c2", (4, 4, 3, 3), (4, True), None, padding=(1, 1))  # int32 accumulators
    c3 = _conv(rng, "c3", (4, 3, 1, 1), IN, (6, False), inputs=("input",))
    peak = c2.acc_bound()
    if shift == 62:
        c2 = IntLayer(**{**c2.__dict__, "bias_q": np.full(4, 2**31 - 1 - int(peak), np.int32)})
        mult = [2**30, 2**30, 2**30]
    else:
        out = 2 ** (shift - 1) if shift else 1
        mult = [max(1, out * 8 // int(peak)), min(out * 2, 2**31 - 1), out // 8 or 1]
    add = IntAdd(name="add", inputs=("c2", "c1", "c3"), mult=np.array(mult, np.int32),
                 shift=np.array([shift], np.int32), a_bits=5, signed=signed)
    return _graph((3, 5, 4), [c1, c2, c3, add]), _images((3, 5, 4), seed=shift)


@pytest.mark.parametrize("shift, signed", ADD_CASES)
def test_add_of_signed_codes_and_accumulators(shift, signed):
    codes = _same(*add_case(shift, signed))
    if shift == 62:
        assert set(np.unique(codes)) <= {0, 1}
    elif shift:
        assert len(np.unique(codes)) > 4


# ---- pooling -------------------------------------------------------------------------------------

POOL_WINDOWS = [  # (map h, w), kernel, stride, padding: ceil-mode windows hang off the far edge
    ((8, 9), (3, 2), (2, 3), (1, 1)),
    ((6, 5), (2, 2), (3, 2), (1, 0)),
    ((5, 8), (3, 3), (2, 2), (1, 1)),
    ((4, 4), (1, 3), (2, 1), (0, 1)),
    ((5, 3), (5, 3), (1, 1), (0, 0)),  # the whole map
]


@pytest.mark.parametrize("window", POOL_WINDOWS)
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("code", [(8, True), (3, True), (4, False)])
def test_max_pool_node(window, ceil_mode, code):
    (h, w), kernel, stride, padding = window
    rng = np.random.default_rng(h * w)
    c1 = _conv(rng, "c1", (3, 3, 1, 1), IN, code)
    c1 = IntLayer(**{**c1.__dict__, "bias_q": np.array([-(2**20), 0, 2**20], np.int32)})  # all lo / spread / all hi
    pool = IntMaxPool(name="mp", kernel=kernel, stride=stride, padding=padding, a_bits=code[0], signed=code[1],
                      ceil_mode=ceil_mode)
    graph = _graph((3, h, w), [c1, pool])
    codes = _same(graph, _images((3, h, w), seed=1)).reshape(N_IMAGES, 3, -1)
    lo, hi = code_range(*code)
    assert (codes[:, 0] == lo).all() and (codes[:, 2] == hi).all()  # padding never wins, not even over lo


def test_ceil_mode_windows_hang_off_the_edge():
    """The pooling tests are not vacuous: in ceil mode some of POOL_WINDOWS have an extra window,
    whose divisor (count_include_pad or not) is smaller than kh * kw."""
    grown = 0
    for (h, w), kernel, stride, padding in POOL_WINDOWS:
        size = {mode: (pool_out(h, kernel[0], stride[0], padding[0], mode), pool_out(w, kernel[1], stride[1],
                                                                                  padding[1], mode))
                for mode in (False, True)}
        if size[True] != size[False]:
            grown += 1
            pool = _avg("p", (8, False), 8, kernel, stride, padding, True, True, "exact", None)
            assert pool.divisors(h, w).min() < kernel[0] * kernel[1]
    assert grown >= 3


def test_max_pool_node_on_the_input():
    pool = IntMaxPool(name="mp", kernel=(3, 2), stride=(2, 2), padding=(1, 1), a_bits=8, ceil_mode=True)
    _same(_graph((2, 5, 6), [pool]), _images((2, 5, 6)))


def _avg(name: str, code: tuple, out_bits: int, kernel, stride, padding, ceil_mode, include, pairs: str,
         rng) -> IntAvgPool:
    """An average pool with one pair (``pairs='one'``), the (E5) pairs of 1/d per divisor ('exact'),
    or arbitrary pairs per divisor ('random': shift 0 to 40, mult 1 to 2^31 - 1)."""
    area = kernel[0] * kernel[1]
    ratio = code_peak(out_bits, code[1]) / code_peak(*code)
    if pairs == "one":
        mult, shift = _pairs([ratio / area])
    elif pairs == "exact":
        mult, shift = _pairs([ratio / d for d in range(1, area + 1)])
    else:
        mult = rng.integers(1, 2**31, area).astype(np.int32)
        shift = rng.integers(0, 41, area).astype(np.int32)
        mult[0], shift[0] = 2**31 - 1, 0
    return IntAvgPool(name=name, kernel=kernel, stride=stride, padding=padding, mult=mult, shift=shift,
                      in_bits=code[0], a_bits=out_bits, ceil_mode=ceil_mode, count_include_pad=include,
                      in_signed=code[1])


@pytest.mark.parametrize("window", POOL_WINDOWS)
@pytest.mark.parametrize("ceil_mode, include, pairs", [(False, True, "one"), (False, True, "exact"),
                                                       (True, True, "exact"), (False, False, "exact"),
                                                       (True, False, "exact"), (True, False, "random")])
@pytest.mark.parametrize("code", [(8, True), (4, False)])
def test_avg_pool(window, ceil_mode, include, pairs, code):
    """Window sums with padding that adds nothing (signed codes too), and each window's divisor's
    pair: at the corners and past the far edge in ceil mode it is smaller than kh * kw."""
    graph, x = avg_case(window, ceil_mode, include, pairs, code)
    (h, w), kernel, _, padding = window
    if not include and padding != (0, 0):  # the corners' divisors are smaller than kh * kw
        assert graph.layers[1].divisors(h, w).min() < kernel[0] * kernel[1]
    codes = _same(graph, x)
    if pairs == "exact":
        assert len(np.unique(codes)) > 4


def avg_case(window, ceil_mode: bool, include: bool, pairs: str, code: tuple) -> tuple[IntGraph, np.ndarray]:
    (h, w), kernel, stride, padding = window
    rng = np.random.default_rng(h * w + ceil_mode)
    c1 = _conv(rng, "c1", (3, 3, 1, 1), IN, code, per_channel=True)
    pool = _avg("avg", code, 5, kernel, stride, padding, ceil_mode, include, pairs, rng)
    return _graph((3, h, w), [c1, pool], readout="conv"), _images((3, h, w), seed=2)


def extreme_avg_case() -> tuple[IntGraph, np.ndarray]:
    """The input's codes, ceil mode, count_include_pad=False (divisors 1 to 9 all occur), and pairs
    from shift 0 to shift 62, mult 1 to 2^31 - 1."""
    mult = np.array([1, 2**31 - 1, 2**30, 3, 2**31 - 1, 2**30, 2**31 - 1, 2**30 + 1, 2**31 - 1], np.int32)
    shift = np.array([0, 31, 31, 2, 34, 62, 36, 33, 62], np.int32)
    pool = IntAvgPool(name="avg", kernel=(3, 3), stride=(2, 2), padding=(1, 1), mult=mult, shift=shift, in_bits=8,
                      a_bits=8, ceil_mode=True, count_include_pad=False)
    return _graph((2, 6, 7), [pool]), _images((2, 6, 7))


def test_avg_pool_of_the_input_with_extreme_pairs():
    _same(*extreme_avg_case())


# ---- lookup tables, channel-wise multiply, concat, channel gather, affine ------------------------
# Each ``*_case`` builds the graph of one parametrization and its inputs; tests/test_export_tflite.py
# runs the same cases (OP_CASES) through LiteRT.

LUT_CODES = [((8, True), (8, True)), ((8, True), (4, False)), ((3, True), (8, True)), ((2, False), (2, True)),
             ((8, False), (8, False))]


def lut_case(code_in: tuple, code_out: tuple) -> tuple[IntGraph, np.ndarray]:
    """(E11) T[x - lo_in], on the input's codes or on a conv's; every table entry is reachable."""
    rng = np.random.default_rng(code_in[0] * 16 + code_out[0])
    lo, hi = code_range(*code_out)
    table = rng.integers(lo, hi + 1, 2 ** code_in[0]).astype(np.int16)
    table[0], table[-1] = lo, hi
    lut_node = IntLut(name="lut", table=table, in_bits=code_in[0], in_signed=code_in[1], a_bits=code_out[0],
                      signed=code_out[1])
    if code_in == IN:  # straight on the input
        nodes, in_shape = [lut_node], (2, 4, 5)
    else:
        c1 = _conv(rng, "c1", (4, 3, 2, 2), IN, code_in, per_channel=True)
        nodes, in_shape = [c1, lut_node], (3, 5, 6)
    return _graph(in_shape, nodes), _images(in_shape, seed=code_in[0])


@pytest.mark.parametrize("code_in, code_out", LUT_CODES)
def test_lut(code_in, code_out):
    """(E11), every entry of the table reached (8-bit signed input included)."""
    graph, x = lut_case(code_in, code_out)
    if code_in != IN:  # the conv's codes reach most of the table
        seen = {}
        run(_graph(graph.in_shape, list(graph.layers[:1])), x, trace=lambda name, a: seen.setdefault(name, a))
        assert len(np.unique(seen["c1"])) > 2 ** code_in[0] // 2
    _same(graph, x)


MUL_CASES = [(signed, gate) for gate in ("squeeze-excite", "map") for signed in (True, False)]


def mul_case(signed: bool, gate: str) -> tuple[IntGraph, np.ndarray]:
    """(E12): x times a (C, 1, 1) gate broadcast over the map (global average pool -> 1x1 conv -> lut),
    or times another (C, H, W) map."""
    rng = np.random.default_rng(signed + 2 * (gate == "map"))
    x = _conv(rng, "x", (4, 3, 3, 3), IN, (6, True), padding=(1, 1))
    if gate == "map":
        g = [_conv(rng, "g", (4, 3, 1, 1), IN, (5, False), inputs=("input",))]
    else:
        gap = _avg("gap", (6, True), 6, (5, 6), (1, 1), (0, 0), False, True, "one", rng)
        hidden = _conv(rng, "hidden", (4, 4, 1, 1), (6, True), (8, True))
        table = np.round(255 / (1 + np.exp(-np.arange(-128, 128) / 16))).astype(np.int16)  # a sigmoid
        g = [gap, hidden, IntLut(name="g", table=table, in_bits=8, in_signed=True, a_bits=8)]
    mult, shift = _pairs([code_peak(5, signed) / (32 * 255 / 4)])
    node = IntMul(name="mul", inputs=("x", "g"), mult=mult, shift=shift, a_bits=5, signed=signed)
    return _graph((3, 5, 6), [x, *g, node]), _images((3, 5, 6))


@pytest.mark.parametrize("signed, gate", MUL_CASES)
def test_mul(signed, gate):
    codes = _same(*mul_case(signed, gate))
    assert len(np.unique(codes)) > 4


CONCAT_CODES = [(8, True), (4, False), (3, True)]


def concat_case(code: tuple) -> tuple[IntGraph, np.ndarray]:
    """(E13) of the input's codes, signed codes and unsigned codes, one on the output scale already
    ((2^30, 30) returns it unchanged, clamped), one with shift 0, one with shift 62."""
    rng = np.random.default_rng(code[0])
    a = _conv(rng, "a", (2, 3, 3, 3), IN, (4, True), padding=(1, 1))
    b = _conv(rng, "b", (3, 3, 1, 1), IN, (3, False), inputs=("input",))
    c = _conv(rng, "c", (2, 3, 3, 3), IN, (8, True), padding=(1, 1), inputs=("input",))
    pairs = [(2**30, 30), (2**31 - 1, 31), (3, 0), (2**31 - 1, 62), (2**30, 36)]
    node = IntConcat(name="cat", inputs=("a", "input", "b", "c", "a"), mult=np.array([m for m, _ in pairs], np.int32),
                     shift=np.array([s for _, s in pairs], np.int32), a_bits=code[0], signed=code[1])
    return _graph((3, 4, 5), [a, b, c, node]), _images((3, 4, 5), seed=code[0])


@pytest.mark.parametrize("code", CONCAT_CODES)
def test_concat(code):
    codes = _same(*concat_case(code))
    assert codes.max() == code_range(*code)[1] and len(np.unique(codes)) > 4


CHANNELS_CASES = [(index, code) for code in ((4, True), (8, False)) for index in ([5, 0, 3, 3, 1], [2, 3, 4], [0])]


def channels_case(index: list, code: tuple, on_input: bool = False) -> tuple[IntGraph, np.ndarray]:
    """(E14): a shuffle with repeats, a split, one channel; of a conv's codes or of the input."""
    if on_input:
        node = IntChannels(name="ch", index=np.array(index, np.int32), a_bits=8)
        return _graph((3, 4, 4), [node]), _images((3, 4, 4))
    rng = np.random.default_rng(len(index))
    c1 = _conv(rng, "c1", (6, 3, 3, 3), IN, code, padding=(1, 1))
    node = IntChannels(name="ch", index=np.array(index, np.int32), a_bits=code[0], signed=code[1])
    return _graph((3, 4, 4), [c1, node]), _images((3, 4, 4))


@pytest.mark.parametrize("index, code", CHANNELS_CASES)
def test_channels(index, code):
    _same(*channels_case(index, code))
    if max(index) < 3:
        _same(*channels_case(index, code, on_input=True))


AFFINE_CASES = [((4, True), (4, False), True, False), ((6, True), (8, True), False, False),
                ((8, False), (5, True), True, False), ((3, False), (3, False), False, True),
                ((5, True), (6, True), True, True), ((8, False), (4, False), True, True)]


def affine_case(code_in: tuple, code_out: tuple, per_channel: bool, negative: bool) -> tuple[IntGraph, np.ndarray]:
    """(E15) with offsets around the code range, and channels at the limits: shift 0, and shift 62
    with an offset next to +-2^62; ``negative``: some multipliers negative (a BatchNorm's gamma),
    down to -(2^31 - 1)."""
    rng = np.random.default_rng(code_in[0] + 8 * code_out[0])
    c = 5
    nodes = [] if code_in == IN else [_conv(rng, "c1", (c, 3, 3, 3), IN, code_in, padding=(1, 1))]
    ratio = code_peak(*code_out) / code_peak(*code_in)
    mult, shift = _pairs(np.full(c if per_channel else 1, ratio), rng)
    offset = (rng.uniform(-1, 1, c) * int(mult.max()) * code_peak(*code_in)).astype(np.int64)
    if per_channel:
        mult[0], shift[0], offset[0] = 7, 0, -3
        mult[1], shift[1] = 2**31 - 1, 62
        mult[2], shift[2] = 2**31 - 1, 62
        edge = 2**62 - 1 - code_peak(*code_in) * (2**31 - 1)
        offset[1], offset[2] = edge, -edge
    if negative:
        mult[::2] *= -1
    node = IntAffine(name="aff", mult=mult, shift=shift, offset=offset, in_bits=code_in[0], in_signed=code_in[1],
                     a_bits=code_out[0], signed=code_out[1], inputs=() if nodes else ("input",))
    in_shape = (3, 5, 4) if nodes else (c, 5, 4)
    return _graph(in_shape, [*nodes, node]), _images(in_shape)


@pytest.mark.parametrize("code_in, code_out, per_channel, negative", AFFINE_CASES)
def test_affine(code_in, code_out, per_channel, negative):
    codes = _same(*affine_case(code_in, code_out, per_channel, negative)).reshape(N_IMAGES, 5, -1)
    if per_channel:
        assert set(np.unique(codes[:, 1])) <= {1} and set(np.unique(codes[:, 2])) <= {-1, 0}


# ---- the ONNX file -------------------------------------------------------------------------------

def every_op_graph() -> IntGraph:
    """One of each node class, signed codes between most of them."""
    rng = np.random.default_rng(7)
    c1 = _conv(rng, "c1", (4, 3, 3, 3), IN, (6, True), padding=(1, 1))
    mp = IntMaxPool(name="mp", kernel=(2, 3), stride=(2, 2), padding=(1, 1), a_bits=6, signed=True, ceil_mode=True)
    lut_node = IntLut(name="lut", table=rng.integers(-8, 8, 64).astype(np.int16), in_bits=6, in_signed=True, a_bits=4,
                      signed=True)
    aff = IntAffine(name="aff", mult=np.full(4, 2**30, np.int32), shift=np.full(4, 31, np.int32),
                    offset=np.arange(4, dtype=np.int64) * 2**28, in_bits=4, in_signed=True, a_bits=4)
    ch = IntChannels(name="ch", index=np.array([3, 2, 1, 0], np.int32), a_bits=4)
    mul = IntMul(name="mul", inputs=("lut", "ch"), mult=np.array([2**30], np.int32), shift=np.array([33], np.int32),
                 a_bits=5, signed=True)
    cat = IntConcat(name="cat", inputs=("mul", "lut"), mult=np.array([2**30, 2**30], np.int32),
                    shift=np.array([30, 30], np.int32), a_bits=5, signed=True)
    avg = _avg("avg", (5, True), 5, (2, 2), (2, 2), (1, 1), True, False, "exact", rng)
    c2 = _conv(rng, "c2", (8, 8, 1, 1), (5, True), None)
    add = IntAdd(name="add", inputs=("c2", "avg"), mult=np.array([2**10, 2**30], np.int32),
                 shift=np.array([30], np.int32), a_bits=8, signed=True)
    return _graph((3, 6, 7), [c1, mp, lut_node, aff, ch, mul, cat, avg, c2, add])


def test_every_op_graph():
    _same(every_op_graph(), _images((3, 6, 7)))


def _node_output_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.output, *inferred.value_info]}
    return {o: types[o] for n in model.graph.node for o in n.output}


def test_no_float_tensor_and_names_from_node_indices():
    from tests.graphgen import renamed

    model = to_onnx(renamed(every_op_graph(), "zz_marker_name"))
    assert b"zz_marker" not in model.SerializeToString()
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {t.name: t.data_type for t in inferred.initializer}
    types |= {v.name: v.type.tensor_type.elem_type for v in [*inferred.input, *inferred.output, *inferred.value_info]}
    assert {o for n in model.graph.node for o in n.output} <= set(types)
    ints = {TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, TensorProto.INT64}
    assert {k: t for k, t in types.items() if t not in ints} == {}
    names = {t for n in model.graph.node for t in [*n.input, *n.output]} | set(types)
    assert [t for t in names if not re.fullmatch(r"n\d+\.\w+|x_q|x_nhwc|logits", t)] == []
    assert {"MatMulInteger", "GatherElements", "Gather", "Concat", "MaxPool"} <= {n.op_type for n in model.graph.node}


def _two_accumulator_add() -> IntGraph:
    rng = np.random.default_rng(3)
    c1 = _conv(rng, "c1", (4, 3, 3, 3), IN, None, padding=(1, 1))
    c2 = _conv(rng, "c2", (4, 3, 1, 1), IN, None, inputs=("input",))
    add = IntAdd(name="add", inputs=("c1", "c2"), mult=np.array([2**20, 2**21], np.int32),
                 shift=np.array([36], np.int32), a_bits=6, signed=True)
    return _graph((3, 5, 4), [c1, c2, add])


def test_int64_only_where_no_table_fits():
    """int64 arithmetic (which OpenVINO's CPU plugin computes in int32) appears only in the nodes
    ``openvino_unsafe_nodes`` names: an add of two int32 accumulators. Every other node's tensors are uint8,
    int8 or int32; int64 initializers are shapes and indices only."""
    assert openvino_unsafe_nodes(every_op_graph()) == []
    graph = _two_accumulator_add()
    assert openvino_unsafe_nodes(graph) == ["add"]
    _same(graph, _images((3, 5, 4)))
    model = to_onnx(graph)
    wide = {TensorProto.INT64, TensorProto.UINT64}
    n_add = [i for i, node in enumerate(graph.layers) if node.name == "add"][0]
    assert {o for o, t in _node_output_types(model).items() if t in wide} <= {
        o for n in model.graph.node for o in n.output if o.startswith(f"n{n_add}.")}
    positions = [(1, "Reshape"), (1, "Gather"), (1, "Pad"), (1, "ReduceSum"), (1, "Slice"), (2, "Slice"), (3, "Slice"),
                 (4, "Slice")]
    for onnx_model in (to_onnx(every_op_graph()), model):
        index_inputs = {n.input[k] for n in onnx_model.graph.node for k, op in positions
                        if n.op_type == op and len(n.input) > k}
        for t in onnx_model.graph.initializer:
            if t.data_type in wide:
                assert t.name in index_inputs or t.name.startswith(f"n{n_add}."), t.name


def test_graphs_of_codes_have_no_int64_arithmetic():
    """A graph whose adds read codes only is int32 throughout: the spelling OpenVINO computes exactly."""
    from tests.test_export_ops import ops_graph, residual_graph

    for graph in (ops_graph(0, 4), residual_graph(0, 4)):
        model = to_onnx(graph)
        wide = {TensorProto.INT64, TensorProto.UINT64}
        readers_of_codes = all(code_of(graph.layers[[m.name for m in graph.layers].index(s)]) is not None
                               for node in graph.layers if isinstance(node, IntAdd)
                               for s in node.inputs if s != "input")
        if readers_of_codes:
            assert openvino_unsafe_nodes(graph) == []
            assert not {o for o, t in _node_output_types(model).items() if t in wide}


def every_op_graph_case() -> tuple[IntGraph, np.ndarray]:
    return every_op_graph(), _images((3, 6, 7))


OP_CASES = ([pytest.param(lut_case, args, id=f"lut-{args}") for args in LUT_CODES] +
            [pytest.param(mul_case, args, id=f"mul-{args}") for args in MUL_CASES] +
            [pytest.param(concat_case, (code,), id=f"concat-{code}") for code in CONCAT_CODES] +
            [pytest.param(channels_case, args, id=f"channels-{args}") for args in CHANNELS_CASES] +
            [pytest.param(channels_case, ([2, 0], (8, False), True), id="channels-input")] +
            [pytest.param(affine_case, args, id=f"affine-{args}") for args in AFFINE_CASES] +
            [pytest.param(add_case, args, id=f"add-{args}") for args in ADD_CASES] +
            [pytest.param(avg_case, (window, True, False, "exact", code), id=f"avg-{window[0]}-{code}")
             for window in POOL_WINDOWS[:3] for code in ((8, True), (4, False))] +
            [pytest.param(avg_case, (POOL_WINDOWS[0], True, False, "random", (4, False)), id="avg-random"),
             pytest.param(extreme_avg_case, (), id="avg-extreme"),
             pytest.param(every_op_graph_case, (), id="every-op")])
