"""The C export of every version-2 op and code kind, on small hand-built graphs: signed codes in
and out of conv/fc layers (with a fused max-pool), signed adds, average pools in ceil mode,
without the padding and with one pair per divisor, max-pool nodes, lookup tables, channel
multiplies, concatenations, channel gathers and channel affines. Each graph runs on a few
hundred random images (all 0 and all 255 among them) as compiled C, built with the strict
flags (one graph also under ASan and UBSan), and must give the numpy executor's logits bit
for bit. The graphs are checked not to be degenerate: the signed tensors reach both ends of
their code range, and the edge cases each test names (shift 0 and 62, mult 2^31 - 1, ties)
do occur."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from fiqnn.export import c99
from fiqnn.integer.arith import ARITH_VERSION, code_range, quantize_multiplier
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
)
from fiqnn.integer.nodes import code_of

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) installed")

SAN = [*c99.CFLAGS, "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
N_IMAGES = 300


def images(in_shape: tuple[int, int, int], seed: int = 0, n: int = N_IMAGES) -> np.ndarray:
    """All 0, all 255, pixels at 0 or 255, small codes, then uniform."""
    rng = np.random.default_rng([seed, 7])
    x = rng.integers(0, 256, (n, *in_shape))
    x[0], x[1] = 0, 255
    x[2] = rng.choice([0, 255], in_shape)
    x[3] = rng.integers(0, 4, in_shape)
    return x.astype(np.uint8)


def i32(*v) -> np.ndarray:
    return np.array(v, np.int32)


class Builder:
    """Appends nodes that read named inputs, keeping every tensor's shape and code kind."""

    def __init__(self, in_shape: tuple[int, int, int], seed: int):
        self.rng = np.random.default_rng(seed)
        self.in_shape = in_shape
        self.nodes: list = []
        self.shape = {"input": in_shape}
        self.by_name = {"input": None}
        self.typical: dict[str, float] = {}  # a layer's typical |accumulator|

    def code(self, name: str):
        return code_of(self.by_name[name])

    def add(self, node) -> str:
        srcs = node.inputs
        shape = node.out_shape([self.shape[s] for s in srcs], [self.by_name[s] for s in srcs], ValueError)
        self.shape[node.name], self.by_name[node.name] = shape, node
        self.nodes.append(node)
        return node.name

    def layer(self, name: str, src: str, kind: str, o: int, a_bits: int | None, signed: bool = False,
              w_bits: int = 4, k: tuple[int, int] = (3, 3), per_channel: bool = False, gain: float = 0.8,
              centre=0.0, **geometry) -> str:
        """A conv (or fc) whose pre-clamp outputs spread over the output codes: centred on 0 for
        signed codes, on half the range for unsigned ones (plus ``centre`` codes, per channel if an
        array), a standard deviation of ``gain`` times the codes' peak (so some clamp at both ends)."""
        in_bits, in_signed = self.code(src)
        c, h, w = self.shape[src]
        shape = (o, c // geometry.get("groups", 1), *k) if kind == "conv" else (o, c * h * w)
        q = 2 ** (w_bits - 1) - 1
        wq = self.rng.integers(-q, q + 1, shape).astype(np.int8)
        lo, hi = code_range(in_bits, in_signed)
        flat = wq.reshape(o, -1).astype(np.float64)
        mean, sd = flat.sum(1) * (lo + hi) / 2, np.sqrt((flat**2).sum(1)) * (hi - lo) / np.sqrt(12) + 1
        self.typical[name] = float(sd.mean())
        if a_bits is None:
            alphas, target = np.full(o, 2.0**-20), np.zeros(o)
        else:
            olo, ohi = code_range(a_bits, signed)
            peak = max(-olo, ohi)
            alphas = gain * peak / sd
            target = (0.0 if signed else ohi / 2) + np.broadcast_to(centre, (o,))
        if not per_channel:
            alphas = np.full(o, alphas.mean())
        bias = np.round(-mean + target / alphas + self.rng.normal(0, 0.3, o) * sd).astype(np.int32)
        pairs = [quantize_multiplier(a) for a in (alphas if per_channel else alphas[:1])]
        node = IntLayer(name=name, kind=kind, w_q=wq, bias_q=bias, mult=i32(*[m for m, _ in pairs]),
                        shift=i32(*[s for _, s in pairs]),
                        in_bits=in_bits, w_bits=w_bits, a_bits=a_bits, signed=signed, in_signed=in_signed,
                        inputs=(src,), **geometry)
        return self.add(node)

    def graph(self, src: str, classes: int = 5) -> IntGraph:
        """An fc head (int32 logits) over ``src``."""
        self.layer("head", src, "fc", classes, None, w_bits=8)
        return IntGraph(self.in_shape, classes, tuple(self.nodes))


def trace(graph: IntGraph, x: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    run(graph, x, trace=lambda name, a: out.setdefault(name, []).append(a))
    return {k: np.concatenate(v) for k, v in out.items()}


def reaches_both_ends(a: np.ndarray, a_bits: int, signed: bool) -> bool:
    lo, hi = code_range(a_bits, signed)
    return bool(a.min() == lo and a.max() == hi and len(np.unique(a)) > min(4, hi - lo))


def check(graph: IntGraph, x: np.ndarray, flags=None) -> None:
    assert np.array_equal(c99.run_c(graph, x, flags=flags), run(graph, x))


# ---- signed conv / fc layers ----------------------------------------------------------------

def signed_layers_graph(w_bits: int) -> IntGraph:
    """u8 -> signed (pooled) -> signed -> unsigned (grouped) -> accumulators + signed into an add, and
    a signed fc -> logits reading signed codes; packed weights at w_bits <= 4."""
    b = Builder((3, 11, 12), seed=w_bits)
    s1 = b.layer("s1", "input", "conv", 8, 5, True, w_bits=8, padding=(1, 1), pool=(3, 2, 1), per_channel=True)
    s2 = b.layer("s2", s1, "conv", 8, 8, True, w_bits=w_bits, padding=(1, 2), dilation=(1, 2))
    u3 = b.layer("u3", s2, "conv", 8, 4, False, w_bits=w_bits, padding=(1, 1), groups=2)
    s4 = b.layer("s4", u3, "conv", 8, 3, True, w_bits=w_bits, k=(1, 1), pool=(2, 2, 0))
    acc = b.layer("acc", s2, "conv", 8, None, w_bits=w_bits, k=(3, 3), stride=(2, 2), padding=(1, 1))
    add = b.add(IntAdd(name="sum", inputs=(acc, s4), mult=i32(int(2**29 * 24 / b.typical[acc]), 2**30),
                       shift=i32(29), a_bits=6, signed=True))
    dw = b.layer("dw", add, "conv", 8, 2, True, w_bits=w_bits, k=(2, 2), padding=(1, 1), groups=8)
    return b.graph(b.layer("fc", dw, "fc", 6, 4, True, w_bits=w_bits))


@pytest.mark.parametrize("w_bits", [2, 4, 8])
def test_signed_conv_and_fc_layers(w_bits):
    graph = signed_layers_graph(w_bits)
    x = images(graph.in_shape, w_bits)
    codes = trace(graph, x)
    for node in graph.layers[:-1]:
        if node.code is not None and node.code[1]:
            assert reaches_both_ends(codes[node.name], *node.code), node.name
    src = c99.model_c(graph)
    assert all(f"{k}(&layers" in src for k in ("conv_hwc_us", "conv_hwc_ss", "conv_hwc_su"))
    assert "max_pool_codes(" in src and "max_pool_hwc(" not in src  # the signed fused pools
    check(graph, x)


def test_signed_requantize_edges():
    """(E4) at the edges of the signed clamp and of int64: mult 2^31 - 1 with shift 62 on
    accumulators near +-2^31 (products near +-2^62, outputs -1, 0 and 1), shift 0 with mult 1 (the
    accumulator itself, clamped), into 2-bit and 8-bit signed codes."""
    b = Builder((1, 4, 5), seed=3)
    s = b.layer("s", "input", "conv", 4, 8, True, w_bits=8, padding=(1, 1))
    w = b.rng.integers(-1, 2, (4, 4 * 4 * 5))
    big = 2**31 - 1 - 128 * int(np.abs(w).sum(1).max())  # the (E6) bound stays inside int32
    edge = b.add(IntLayer(name="edge", kind="fc", w_q=w.astype(np.int8), bias_q=i32(big, -big, 2**30, -(2**30)),
                          mult=i32(2**31 - 1, 2**31 - 1, 2**31 - 1, 2**31 - 1), shift=i32(62, 62, 62, 62), in_bits=8,
                          w_bits=2, a_bits=2, signed=True, in_signed=True, inputs=(s,)))
    raw = b.add(IntLayer(name="raw", kind="fc", w_q=w.astype(np.int8), bias_q=i32(0, 3, -3, 100), mult=i32(1),
                         shift=i32(0), in_bits=8, w_bits=2, a_bits=8, signed=True, in_signed=True, inputs=(s,)))
    cat = b.add(IntConcat(name="cat", inputs=(edge, raw), mult=i32(2**30, 2**30), shift=i32(30, 30), a_bits=8,
                          signed=True))
    graph = b.graph(cat)
    x = images(graph.in_shape, 3)
    codes = trace(graph, x)
    assert set(np.unique(codes["edge"])) >= {-1, 0, 1}
    assert reaches_both_ends(codes["raw"], 8, True)
    check(graph, x)


# ---- pooling ------------------------------------------------------------------------------

def _avgpool(b: Builder, name: str, src: str, kernel, stride, padding, ceil_mode=False, include=True, pairs=True,
             a_bits=None, gain=1.0):
    """An (E10) pool of ``src`` whose output spans its codes; ``pairs``: one (mult, shift) per divisor."""
    in_bits, signed = b.code(src)
    kh, kw = kernel
    a_bits = a_bits or in_bits
    ratio = gain * max(-code_range(a_bits, signed)[0], code_range(a_bits, signed)[1]) / \
        max(-code_range(in_bits, signed)[0], code_range(in_bits, signed)[1])
    qm = [quantize_multiplier(ratio / d) for d in (range(1, kh * kw + 1) if pairs else [kh * kw])]
    return b.add(IntAvgPool(name=name, kernel=kernel, stride=stride, padding=padding,
                            mult=i32(*[m for m, _ in qm]), shift=i32(*[s for _, s in qm]), in_bits=in_bits,
                            a_bits=a_bits, ceil_mode=ceil_mode, count_include_pad=include, in_signed=signed,
                            inputs=(src,)))


AVG_CASES = {  # kernel, stride, padding, ceil_mode, count_include_pad, pairs
    "ceil": ((3, 3), (2, 2), (1, 1), True, True, True),
    "ceil excluding padding": ((3, 3), (2, 2), (1, 1), True, False, True),
    "floor excluding padding": ((3, 2), (2, 1), (1, 1), False, False, True),
    "ceil 2x3 no padding": ((2, 3), (3, 2), (0, 0), True, True, True),
    "ceil past the edge only": ((2, 2), (2, 2), (0, 0), True, False, True),
    "floor, pairs all kh*kw": ((2, 2), (1, 1), (1, 1), False, True, True),
    "one pair, floor": ((3, 3), (1, 2), (1, 1), False, True, False),
}


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("case", list(AVG_CASES))
def test_avgpool_variants(case, signed):
    """Every window geometry on a 7x8 map: windows hanging off the far edge in ceil mode, corners
    whose divisor counts only the map, one pair per divisor; and the version-1 kernel next to it."""
    kernel, stride, padding, ceil_mode, include, pairs = AVG_CASES[case]
    b = Builder((2, 9, 10), seed=len(case) + signed)
    src = b.layer("c", "input", "conv", 5, 6, signed, w_bits=8, padding=(0, 0))
    pool = _avgpool(b, "pool", src, kernel, stride, padding, ceil_mode, include, pairs, gain=1.5)
    legacy = b.layer("u", "input", "conv", 5, 4, w_bits=8)
    v1 = _avgpool(b, "v1", legacy, (2, 2), (2, 2), (1, 1), pairs=False)
    b.layer("h1", pool, "fc", 4, None, w_bits=8)
    b.layer("h2", v1, "fc", 4, None, w_bits=8)
    b.add(IntAdd(name="s", inputs=("h1", "h2"), mult=i32(2**10, 2**10), shift=i32(30), a_bits=8))
    graph = b.graph("s")
    x = images(graph.in_shape, len(case))
    codes = trace(graph, x)
    node = b.by_name["pool"]
    assert reaches_both_ends(codes["pool"], node.a_bits, signed)
    divisors = node.divisors(*b.shape[src][1:])
    if len(node.mult) > 1 and (ceil_mode or not include):
        assert len(np.unique(divisors)) > 1  # the case has windows of different divisors
    src_c = c99.model_c(graph)
    assert ("avg_pool_codes(&P, (A" in src_c) == (pairs or ceil_mode or not include or signed)
    assert src_c.count("avg_pool_hwc(&P, (A") == 1 + (not (pairs or ceil_mode or not include or signed))
    check(graph, x)


def test_maxpool_nodes():
    """(E7) nodes over signed and unsigned codes: non-square windows, ceil mode with windows past the
    edge, padding that must not count (channels of all-negative codes), a 1x1 strided window."""
    b = Builder((3, 10, 11), seed=5)
    neg = b.layer("neg", "input", "conv", 6, 4, True, w_bits=8, padding=(1, 1), gain=0.6,
                  centre=np.array([-6, -5, -4, 0, 0, 0]), per_channel=True)
    m1 = b.add(IntMaxPool(name="m1", kernel=(3, 2), stride=(2, 3), padding=(1, 1), a_bits=4, signed=True,
                          ceil_mode=True, inputs=(neg,)))
    m2 = b.add(IntMaxPool(name="m2", kernel=(2, 2), stride=(2, 2), padding=(1, 0), a_bits=4, signed=True,
                          inputs=(neg,)))
    u = b.layer("u", "input", "conv", 4, 3, w_bits=8, k=(2, 2))
    m3 = b.add(IntMaxPool(name="m3", kernel=(3, 3), stride=(3, 3), padding=(1, 1), a_bits=3, ceil_mode=True,
                          inputs=(u,)))
    m4 = b.add(IntMaxPool(name="m4", kernel=(1, 1), stride=(2, 3), padding=(0, 0), a_bits=8, ceil_mode=True,
                          inputs=("input",)))
    b.layer("h1", m1, "fc", 4, None, w_bits=8)
    b.layer("h2", m2, "fc", 4, None, w_bits=8)
    b.layer("h3", m3, "fc", 4, None, w_bits=8)
    b.layer("h4", m4, "fc", 4, None, w_bits=8)
    b.add(IntAdd(name="s", inputs=("h1", "h2", "h3", "h4"), mult=i32(2**12, 2**12, 2**12, 2**6), shift=i32(31),
                 a_bits=8, signed=True))
    graph = b.graph("s")
    x = images(graph.in_shape, 5)
    codes = trace(graph, x)
    assert codes["neg"].min() == -8 and (codes["m1"] < 0).mean() > 0.05  # windows whose maximum is negative
    assert b.shape["m1"][1:] == (6, 4) and b.shape["m3"][1:] == (4, 4)  # ceil mode adds windows past the edge
    check(graph, x)


def test_fused_signed_pool_keeps_negative_maxima():
    """A signed layer's fused max-pool over windows of negative codes only (a negative bias): the
    maximum starts at the lowest code, not at 0."""
    b = Builder((1, 8, 8), seed=9)
    s = b.layer("s", "input", "conv", 3, 3, True, w_bits=8, padding=(1, 1), pool=(3, 2, 1), gain=0.4,
                centre=np.array([-3.0, -2.5, -1.0]), per_channel=True)
    mp = b.add(IntMaxPool(name="mp", kernel=(2, 2), stride=(2, 2), padding=(0, 0), a_bits=8, inputs=("input",)))
    cat = b.add(IntConcat(name="cat", inputs=(s, mp), mult=i32(2**30, 2**30), shift=i32(30, 31), a_bits=8,
                          signed=True))  # a one-channel input, read where it is
    graph = b.graph(cat)
    x = images(graph.in_shape, 9)
    codes = trace(graph, x)
    assert (codes["s"] < 0).all(axis=(1, 2, 3)).any() and (codes["s"].max(axis=(2, 3)) < 0).any()
    assert "max_pool_codes(&P, input, " in c99.model_c(graph)
    check(graph, x)


# ---- lookup tables, multiplies ------------------------------------------------------------------

def test_lookup_tables():
    """(E11) on the 8-bit network input, on 8-bit signed codes (every entry of a 256-entry table used),
    on 3-bit signed and 4-bit unsigned codes; tables into signed and unsigned codes."""
    b = Builder((2, 6, 7), seed=11)
    rng = b.rng
    t_in = b.add(IntLut(name="t_in", table=rng.integers(-16, 16, 256).astype(np.int16), in_bits=8, a_bits=5,
                        signed=True, inputs=("input",)))
    s8 = b.layer("s8", "input", "conv", 6, 8, True, w_bits=8, padding=(1, 1), gain=1.5)
    t8 = b.add(IntLut(name="t8", table=rng.permutation(256).astype(np.int16) - 128, in_bits=8, in_signed=True,
                      a_bits=8, signed=True, inputs=(s8,)))
    s3 = b.layer("s3", "input", "conv", 6, 3, True, w_bits=8, padding=(1, 1))
    t3 = b.add(IntLut(name="t3", table=np.array([7, 0, 3, 1, 6, 2, 5, 4], np.int16), in_bits=3, in_signed=True,
                      a_bits=3, inputs=(s3,)))
    u4 = b.layer("u4", "input", "conv", 6, 4, w_bits=8, padding=(1, 1))
    t4 = b.add(IntLut(name="t4", table=(np.arange(16)[::-1] - 8).astype(np.int16), in_bits=4, a_bits=4, signed=True,
                      inputs=(u4,)))
    cat = b.add(IntConcat(name="cat", inputs=(t8, t3, t4), mult=i32(2**30, 2**30, 2**30), shift=i32(30, 30, 30),
                          a_bits=8, signed=True))
    b.layer("h1", t_in, "fc", 4, None, w_bits=8)
    b.layer("h2", cat, "fc", 4, None, w_bits=8)
    b.add(IntAdd(name="s", inputs=("h1", "h2"), mult=i32(2**12, 2**12), shift=i32(31), a_bits=8, signed=True))
    graph = b.graph("s")
    x = images(graph.in_shape, 11)
    codes = trace(graph, x)
    assert len(np.unique(codes["s8"])) == 256 and len(np.unique(codes["t8"])) == 256
    assert len(np.unique(codes["s3"])) == 8 and len(np.unique(codes["u4"])) == 16
    check(graph, x)


def test_channel_multiplies():
    """(E12) x (signed) times a per-channel gate (GAP -> 1x1 conv -> table), and x times a map of the
    same shape (unsigned x signed, x times itself); clamps at both ends of the signed output."""
    b = Builder((3, 7, 6), seed=13)
    x = b.layer("x", "input", "conv", 6, 6, True, w_bits=8, padding=(1, 1))
    gap = _avgpool(b, "gap", x, (7, 6), (1, 1), (0, 0), pairs=False)
    hidden = b.layer("hid", gap, "conv", 6, 8, True, w_bits=8, k=(1, 1))
    gate = b.add(IntLut(name="gate", table=np.clip(np.arange(256) // 2, 0, 127).astype(np.int16), in_bits=8,
                        in_signed=True, a_bits=7, inputs=(hidden,)))
    m1 = b.add(IntMul(name="m1", inputs=(x, gate), mult=i32(quantize_multiplier(1 / 40)[0]),
                      shift=i32(quantize_multiplier(1 / 40)[1]), a_bits=5, signed=True))
    u = b.layer("u", "input", "conv", 6, 4, w_bits=8, padding=(1, 1))
    m2 = b.add(IntMul(name="m2", inputs=(u, x), mult=i32(2**30), shift=i32(33), a_bits=4, signed=True))
    m3 = b.add(IntMul(name="m3", inputs=(x, x), mult=i32(2**31 - 1), shift=i32(36), a_bits=3))
    cat = b.add(IntConcat(name="cat", inputs=(m1, m2, m3), mult=i32(2**30, 2**30, 2**30), shift=i32(30, 30, 30),
                          a_bits=6, signed=True))
    graph = b.graph(cat)
    xs = images(graph.in_shape, 13)
    codes = trace(graph, xs)
    assert reaches_both_ends(codes["m1"], 5, True) and reaches_both_ends(codes["m2"], 4, True)
    assert len(np.unique(codes["gate"])) > 8
    check(graph, xs)


# ---- concatenation, gathers, affines --------------------------------------------------------------

def test_concat_of_different_codes():
    """(E13) of the 8-bit input, 4-bit signed and 2-bit unsigned codes, each with its own pair: the
    identity (2^30, 30), shift 0 with mult 1, shift 62 with mult 2^31 - 1 (all zero), and (1, 1) whose
    halves of odd codes are ties (-3 / 2 -> -1, 3 / 2 -> 2)."""
    b = Builder((3, 5, 6), seed=17)
    s4 = b.layer("s4", "input", "conv", 4, 4, True, w_bits=8, padding=(1, 1))
    u2 = b.layer("u2", "input", "conv", 3, 2, w_bits=8, padding=(1, 1))
    cat = b.add(IntConcat(name="cat", inputs=("input", s4, u2, s4, s4),
                          mult=i32(2**30, 2**30, 1, 2**31 - 1, 1), shift=i32(31, 30, 0, 62, 1), a_bits=6,
                          signed=True))
    graph = b.graph(cat)
    x = images(graph.in_shape, 17)
    codes = trace(graph, x)
    c = codes["cat"]
    assert reaches_both_ends(c[:, 3:7], 4, True) and (c[:, 10:14] == 0).all()
    assert np.array_equal(c[:, 14:18], (codes["s4"].astype(np.int64) + 1) >> 1)  # ties round up
    assert c[:, :3].max() == 31  # the input halved, clamped at 2^5 - 1
    check(graph, x)


def test_channel_gathers():
    """(E14) a channel shuffle (a permutation), a split (a range) and a gather with repeats, on signed
    and unsigned codes; the split of the network input reads it where it is."""
    b = Builder((4, 5, 5), seed=19)
    s = b.layer("s", "input", "conv", 6, 5, True, w_bits=8, padding=(1, 1))
    shuffle = b.add(IntChannels(name="shuf", index=i32(0, 3, 1, 4, 2, 5), a_bits=5, signed=True, inputs=(s,)))
    split = b.add(IntChannels(name="split", index=i32(2, 3), a_bits=8, inputs=("input",)))
    rep = b.add(IntChannels(name="rep", index=i32(5, 5, 0), a_bits=5, signed=True, inputs=(shuffle,)))
    cat = b.add(IntConcat(name="cat", inputs=(shuffle, split, rep), mult=i32(2**30, 2**30, 2**30),
                          shift=i32(30, 34, 30), a_bits=5, signed=True))
    graph = b.graph(cat)
    x = images(graph.in_shape, 19)
    check(graph, x)
    src = c99.model_c(graph)
    assert re.search(r"gather_channels\(\(A \+ \d+\), 4, 25L, n2_index, 2,", src)  # the input, transposed


def test_channel_affines():
    """(E15) per channel and per layer, on signed and unsigned codes: offsets of +-2^61 at shift 62
    (ties at +-1/2: 1 and 0), shift 0 with mult 1 (x + offset, clamped), negative multipliers (a
    BatchNorm's negative gamma) down to -(2^31 - 1), and ordinary pairs."""
    b = Builder((2, 6, 5), seed=23)
    s = b.layer("s", "input", "conv", 4, 8, True, w_bits=8, padding=(1, 1))
    u = b.layer("u", "input", "conv", 4, 4, w_bits=8, padding=(1, 1))
    a1 = b.add(IntAffine(name="a1", mult=i32(1, 2**31 - 1, 3 * 2**29, 1), shift=i32(0, 62, 31, 1),
                         offset=np.array([5, 2**61, -(2**29), -1], np.int64), in_bits=8, in_signed=True, a_bits=6,
                         signed=True, inputs=(s,)))
    a2 = b.add(IntAffine(name="a2", mult=i32(1), shift=i32(62), offset=np.array([2**61, -(2**61), 0, 2**61 + 1],
                                                                                 np.int64),
                         in_bits=8, in_signed=True, a_bits=2, signed=True, inputs=(s,)))
    a3 = b.add(IntAffine(name="a3", mult=i32(3 * 2**29), shift=i32(31), offset=np.array([-(2**33), 0, 2**32, 2**34],
                                                                                        np.int64),
                         in_bits=4, a_bits=3, inputs=(u,)))
    a4 = b.add(IntAffine(name="a4", mult=i32(-(2**31 - 1), -(2**30), 2**30, -1), shift=i32(31, 31, 30, 1),
                         offset=np.array([0, 2**29, -(2**30), 1], np.int64), in_bits=8, in_signed=True, a_bits=5,
                         signed=True, inputs=(s,)))
    cat = b.add(IntConcat(name="cat", inputs=(a1, a2, a3, a4), mult=i32(2**30, 2**30, 2**30, 2**30),
                          shift=i32(30, 30, 30, 30), a_bits=7, signed=True))
    graph = b.graph(cat)
    x = images(graph.in_shape, 23)
    codes = trace(graph, x)
    s, a2 = codes["s"].astype(np.int64), codes["a2"]
    # (x + 2^61 + 2^61) / 2^62 at x = 0 is a tie (rounds up to 1), and so on
    assert np.array_equal(a2[:, 0], s[:, 0] >= 0) and np.array_equal(a2[:, 1], -(s[:, 1] < 0).astype(int))
    assert np.array_equal(a2[:, 3], s[:, 3] >= -1) and (a2[:, 2] == 0).all()
    assert reaches_both_ends(codes["a1"][:, :1], 6, True) and reaches_both_ends(codes["a4"][:, :1], 5, True)
    assert np.array_equal(codes["a4"][:, 3], np.clip((1 - s[:, 3] + 1) >> 1, -16, 15))  # (1 - x) / 2, ties up
    check(graph, x)


# ---- adds with signed codes ------------------------------------------------------------------------

def test_signed_adds():
    """(E9) of signed codes, unsigned codes, the network input and accumulators into signed codes; of
    signed codes into unsigned ones (the block's ReLU); a tensor read twice."""
    b = Builder((3, 6, 6), seed=29)
    s = b.layer("s", "input", "conv", 3, 5, True, w_bits=8, padding=(1, 1))
    u = b.layer("u", "input", "conv", 3, 3, w_bits=8, padding=(1, 1))
    acc = b.layer("acc", s, "conv", 3, None, w_bits=4, padding=(1, 1))
    acc_peak = b.by_name[acc].acc_bound()
    a1 = b.add(IntAdd(name="a1", inputs=(s, u, acc, s), mult=i32(2**29, 2**30, max(2**40 // acc_peak, 1), 2**28),
                      shift=i32(31), a_bits=4, signed=True))
    a2 = b.add(IntAdd(name="a2", inputs=(a1, "input"), mult=i32(2**30, 2**24), shift=i32(30), a_bits=4))
    a3 = b.add(IntAdd(name="a3", inputs=(a1, a2), mult=i32(1, 1), shift=i32(0), a_bits=3, signed=True))
    graph = b.graph(a3)
    x = images(graph.in_shape, 29)
    codes = trace(graph, x)
    assert reaches_both_ends(codes["a1"], 4, True) and reaches_both_ends(codes["a3"], 3, True)
    assert "add_terms_s(" in c99.model_c(graph) and "add_terms(" not in c99.model_c(graph)
    check(graph, x)


# ---- every op at once, under the sanitizers ----------------------------------------------------------

def kitchen_sink() -> IntGraph:
    """Every version-2 op and code kind in one graph, with 3-channel input and packed weights."""
    b = Builder((3, 9, 9), seed=31)
    s = b.layer("s", "input", "conv", 6, 6, True, w_bits=4, padding=(1, 1), pool=(2, 2, 1))
    m = b.add(IntMaxPool(name="mp", kernel=(2, 3), stride=(2, 2), padding=(1, 1), a_bits=6, signed=True,
                         ceil_mode=True, inputs=(s,)))
    av = _avgpool(b, "av", s, (3, 3), (2, 2), (1, 1), ceil_mode=True, include=False)
    lut = b.add(IntLut(name="lut", table=(np.arange(64)[::-1] - 32).astype(np.int16) // 2, in_bits=6, in_signed=True,
                       a_bits=5, signed=True, inputs=(av,)))
    gate = b.add(IntLut(name="gate", table=np.arange(64).astype(np.int16) % 16, in_bits=6, in_signed=True,
                        a_bits=4, inputs=(av,)))
    mul = b.add(IntMul(name="mul", inputs=(m, gate), mult=i32(2**30), shift=i32(33), a_bits=6, signed=True))
    cat = b.add(IntConcat(name="cat", inputs=(mul, lut), mult=i32(2**30, 2**30), shift=i32(30, 29), a_bits=6,
                          signed=True))
    sh = b.add(IntChannels(name="shuf", index=i32(*[(i % 2) * 6 + i // 2 for i in range(12)]), a_bits=6, signed=True,
                           inputs=(cat,)))
    aff = b.add(IntAffine(name="aff", mult=i32(*range(2**30, 2**30 + 12)), shift=i32(*[30 + i % 3 for i in range(12)]),
                          offset=np.arange(-6, 6, dtype=np.int64) * 2**28, in_bits=6, in_signed=True, a_bits=4,
                          inputs=(sh,)))
    conv = b.layer("c", aff, "conv", 12, 4, True, w_bits=2, k=(1, 1), groups=3)
    add = b.add(IntAdd(name="add", inputs=(conv, sh), mult=i32(2**30, 2**28), shift=i32(30), a_bits=5, signed=True))
    return b.graph(add)


def test_every_op_under_asan_and_ubsan():
    graph = kitchen_sink()
    x = images(graph.in_shape, 31)
    assert {type(n) for n in graph.layers} == set(c99.C_NODES)
    check(graph, x, flags=SAN)


def test_v2_source_has_no_float_no_malloc_and_no_node_name(tmp_path):
    from tests.graphgen import renamed

    out = c99.export_c(renamed(kitchen_sink(), "zz_marker_name"), tmp_path)
    for f in out.iterdir():
        text = f.read_text()
        assert "zz_marker" not in text, f.name
        code = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        if f.name in ("model.c", "model.h", "fiqnn_arith.h"):
            for word in ("float", "double", "malloc", "calloc", "math.h"):
                assert word not in code, (f.name, word)
    assert f"#if FIQNN_ARITH_VERSION != {ARITH_VERSION}" in (out / "model.c").read_text()
    assert f"#define FIQNN_ARITH_VERSION {ARITH_VERSION}" in (out / "fiqnn_arith.h").read_text()


def test_footprint_counts_every_constant_array():
    graph = kitchen_sink()
    fp = c99.footprint(graph)
    arrays = sum(c99.packed_weights(layer).nbytes for layer in graph.int_layers())
    arrays += sum(4 * n.bias_q.size for n in graph.int_layers())
    arrays += sum(4 * n.mult.size + n.shift.size for n in graph.layers if hasattr(n, "mult"))
    arrays += 64 + 64 + 4 * 12 + 8 * 12  # two tables of 6-bit input (one byte an entry), index, offset
    assert fp["param_bytes"] == arrays


def test_version_1_graph_uses_only_the_version_1_kernels():
    from tests.test_export_ops import residual_graph

    src = c99.model_c(residual_graph(0, 4))
    assert "conv_hwc(" in src and "add_terms(" in src and "avg_pool_hwc(" in src
    for name in ("fiqnn_code", "conv_hwc_us", "conv_hwc_su", "conv_hwc_ss", "_codes(", "add_terms_s", "fiqnn_window"):
        assert name not in src
