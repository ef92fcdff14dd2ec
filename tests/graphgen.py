"""Seeded random IntGraphs for the differential fuzzer (tests/test_fuzz.py, bench/fuzz_backends.py).

``random_graph(seed)`` draws a small graph over everything an IntGraph holds: conv layers
of random shape, stride, padding (beyond the kernel too), dilation and groups (depthwise
included), fused max-pools, fc layers,
average pools (global ones too, ceil mode, count_include_pad off), max-pool nodes, residual
adds of codes and of int32 accumulators with two or three inputs, lookup tables,
squeeze-excite gates and elementwise multiplies, concatenations, channel splits and
shuffles, channel affines, unsigned and signed 2..8-bit codes, 2..8-bit weights, per-layer
and per-channel (mult, shift), then a conv or fc logits layer with a 1x1 output. Multipliers are mostly derived from a
layer's typical accumulator range with (E5), so that codes spread instead of all
clamping, and sometimes extreme: shift 0, shift 62, mult 2^31 - 1, mult 1, arbitrary
pairs, powers of two (exact ties), biases at the (E6) limit and adds at the (E9) limit.
Every graph passes IntGraph's checks; names are ``n0``, ``n1``, ...
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from fiqnn.integer.arith import (
    INT32_MAX,
    INT32_MIN,
    MULT_MAX,
    SHIFT_MAX,
    code_peak,
    code_range,
    quantize_multiplier,
)
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
    Node,
    node_shapes,
)
from fiqnn.integer.nodes import ModelFileError, pool_out

E9_LIMIT = 2**62


def _out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _weights(rng: np.random.Generator, shape: tuple, w_bits: int) -> np.ndarray:
    """Uniform codes mostly; sometimes sparse, all at the range's ends, or of one sign."""
    q = 2 ** (w_bits - 1) - 1
    w = rng.integers(-q, q + 1, shape)
    style = rng.random()
    if style < 0.1:
        w *= rng.random(shape) < 0.2
    elif style < 0.15:
        w = rng.choice([-q, q], shape)
    elif style < 0.2:
        w = np.abs(w) * rng.choice([-1, 1])
    return w.astype(np.int8)


def _bias(rng: np.random.Generator, w: np.ndarray, x_min: int, x_max: int) -> np.ndarray:
    """Biases of the size of a typical accumulator; sometimes, per channel, at the (E6) limit."""
    flat = w.reshape(len(w), -1).astype(np.int64)
    wp, wn = np.maximum(flat, 0).sum(1), np.minimum(flat, 0).sum(1)
    pos, neg = x_max * wp + x_min * wn, x_max * wn + x_min * wp  # (E6) without the bias
    typical = int((x_max - x_min) * np.sqrt(flat.shape[1]) * max(1, np.abs(flat).max())) // 2 + 1
    bias = rng.integers(-typical, typical + 1, len(w))
    if rng.random() < 0.15:
        slack = rng.integers(0, 4, len(w))
        edge = np.where(rng.random(len(w)) < 0.5, INT32_MAX - pos - slack, INT32_MIN - neg + slack)
        bias = np.where(rng.random(len(w)) < 0.6, edge, bias)
    return bias.astype(np.int32)


def _pair(rng: np.random.Generator, alpha: float) -> tuple[int, int]:
    """(mult, shift) for the real scale ``alpha``; one time in eight an extreme pair instead, and
    one in five a power of two."""
    mode = rng.integers(0, 40)
    log2 = float(np.log2(alpha))
    if mode == 0:
        return int(rng.integers(1, 4)), 0
    if mode == 1:
        return int(rng.integers(2**30, MULT_MAX + 1)), SHIFT_MAX
    if mode == 2:
        return MULT_MAX, int(np.clip(round(31 - log2), 0, SHIFT_MAX))
    if mode == 3:
        return 1, int(np.clip(round(-log2), 0, SHIFT_MAX))
    if mode == 4:
        return int(rng.integers(1, MULT_MAX + 1)), int(rng.integers(0, SHIFT_MAX + 1))
    if mode < 13:  # a power-of-two scale: exact ties, which (E3) rounds up, are common
        return 2**30, int(np.clip(round(30 - log2), 0, SHIFT_MAX))
    return quantize_multiplier(float(np.clip(alpha, 2.0**-32, 2.0**31 - 1)))


def _requant(rng: np.random.Generator, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 (mult, shift) arrays, one pair per entry of ``alphas`` (each jittered by up to 2x)."""
    pairs = [_pair(rng, a * 2.0 ** rng.uniform(-1, 1)) for a in alphas]
    return np.array([m for m, _ in pairs], np.int32), np.array([s for _, s in pairs], np.int32)


class _Builder:
    """Appends nodes ``n0, n1, ...``; tracks every tensor's shape, codes ((bits, signed); None:
    int32 accumulators) and typical magnitude, from which the next multipliers are chosen."""

    def __init__(self, rng: np.random.Generator, in_shape: tuple[int, int, int]):
        self.rng = rng
        self.nodes: list[Node] = []
        self.shape = {"input": in_shape}
        self.code: dict[str, tuple[int, bool] | None] = {"input": (8, False)}
        self.typical = {"input": 128.0}
        self.bound = {"input": 255}

    def _inputs(self, srcs: tuple[str, ...]) -> tuple[str, ...]:
        """``()`` when the node reads the previous node (the implicit edge), else the names."""
        prev = self.nodes[-1].name if self.nodes else "input"
        return () if srcs == (prev,) else srcs

    def _add_node(self, node: Node, shape, typical: float | None = None, bound: int | None = None) -> str:
        """Append ``node``; codes get the typical magnitude and bound of their range unless given."""
        self.nodes.append(node)
        self.shape[node.name], self.code[node.name] = shape, node.code
        if node.code is not None:
            peak = code_peak(*node.code)
            typical, bound = typical if typical is not None else peak / 2, bound if bound is not None else peak
        self.typical[node.name], self.bound[node.name] = typical, bound
        return node.name

    def _a_bits(self) -> int:
        return int(self.rng.integers(2, 9))

    def _signed(self) -> bool:
        return bool(self.rng.random() < 0.3)

    def _name(self) -> str:
        return f"n{len(self.nodes)}"

    def layer(self, src: str, kind: str, shape: tuple, a_bits: int | None, signed: bool = False,
              **geometry) -> str:
        """A conv (``shape`` (O, I/groups, kh, kw)) or fc (``shape`` (O, I)) layer reading ``src``."""
        rng, (in_bits, in_signed) = self.rng, self.code[src]
        signed = signed and a_bits is not None
        w_bits = int(rng.integers(2, 9))
        w = _weights(rng, shape, w_bits)
        x_min, x_max = code_range(in_bits, in_signed)
        bias = _bias(rng, w, x_min, x_max)
        flat = w.reshape(len(w), -1).astype(np.float64)
        centre = bias + flat.sum(1) * (x_min + x_max) / 2
        typical = np.abs(centre) * (not signed) + (x_max - x_min) * np.sqrt((flat**2).sum(1) / 12) * 2 + 1
        qmax = code_range(a_bits, signed)[1] if a_bits else 255
        alphas = qmax / typical if rng.random() < 0.4 else [qmax / float(np.median(typical))]
        mult, shift = _requant(rng, np.asarray(alphas))
        node = IntLayer(name=self._name(), kind=kind, w_q=w, bias_q=bias, mult=mult, shift=shift,
                        in_bits=in_bits, w_bits=w_bits, a_bits=a_bits, inputs=self._inputs((src,)), signed=signed,
                        in_signed=in_signed, **geometry)
        c, h, wd = self.shape[src]
        if kind == "fc":
            out = (shape[0], 1, 1)
        else:
            (sh, sw), (ph, pw), (dh, dw) = node.stride, node.padding, node.dilation
            out = (shape[0], _out(h, shape[2], sh, ph, dh), _out(wd, shape[3], sw, pw, dw))
            if node.pool:
                k, s, p = node.pool
                out = (out[0], _out(out[1], k, s, p), _out(out[2], k, s, p))
        return self._add_node(node, out, float(np.median(typical)) if a_bits is None else None,
                              node.acc_bound() if a_bits is None else None)

    def _groups(self, c: int, o: int) -> tuple[int, int]:
        """(groups, out channels): plain, grouped or depthwise (with a channel multiplier)."""
        rng = self.rng
        style = rng.random()
        if style < 0.15 and c > 1:
            return c, c * int(rng.integers(1, 3))
        divisors = [g for g in range(2, c) if c % g == 0]
        if style < 0.6 and divisors:
            g = int(rng.choice(divisors))
            return g, g * max(1, o // g)
        return 1, o

    def conv(self, src: str) -> str:
        """A conv with random geometry (padding up to 2 but inside the kernel, dilation up to 3) and, sometimes,
        a max-pool."""
        rng = self.rng
        c, h, w = self.shape[src]
        groups, o = self._groups(c, int(rng.integers(1, 9)))
        pad = tuple(int(v) for v in rng.integers(0, 3, 2) * (rng.random() < 0.6))
        dil = tuple(int(v) for v in rng.integers(1, 4, 2)) if rng.random() < 0.25 else (1, 1)
        kern = [min(int(rng.integers(1, 4)), (size + 2 * p - 1) // d + 1) for size, p, d in zip((h, w), pad, dil)]
        pad = tuple(min(p, d * (k - 1)) for p, d, k in zip(pad, dil, kern))  # no window of padding alone
        stride = tuple(int(v) for v in rng.integers(1, 4, 2)) if rng.random() < 0.35 else (1, 1)
        a_bits = self._a_bits()
        ho, wo = (_out(size, k, s, p, d) for size, k, s, p, d in zip((h, w), kern, stride, pad, dil))
        pool = None
        if rng.random() < 0.3:
            k = int(rng.integers(1, min(ho, wo, 3) + 1))
            pool = (k, int(rng.integers(1, 3)), int(rng.integers(0, k // 2 + 1)))
        return self.layer(src, "conv", (o, c // groups, *kern), a_bits, self._signed(), stride=stride, padding=pad,
                          dilation=dil, groups=groups, pool=pool)

    def fc(self, src: str, o: int, a_bits: int | None, signed: bool = False) -> str:
        """An fc layer over the flattened map."""
        c, h, w = self.shape[src]
        return self.layer(src, "fc", (o, c * h * w), a_bits, signed)

    def _window(self, src: str) -> tuple[tuple, tuple, tuple, bool]:
        """(kernel, stride, padding, ceil_mode): a window (zero padding up to half the kernel), or the
        whole map."""
        rng = self.rng
        c, h, w = self.shape[src]
        if rng.random() < 0.3:
            return (h, w), (1, 1), (0, 0), False
        kernel = tuple(int(rng.integers(1, min(size, 3) + 1)) for size in (h, w))
        stride = tuple(int(rng.integers(1, 4)) for _ in range(2))
        pad = tuple(k // 2 if rng.random() < 0.5 else int(rng.integers(0, k // 2 + 1)) for k in kernel)
        return kernel, stride, pad, bool(rng.random() < 0.5)

    def _pooled(self, src: str, kernel, stride, pad, ceil_mode) -> tuple[int, int, int]:
        c, h, w = self.shape[src]
        return (c, *(pool_out(size, k, s, p, ceil_mode) for size, k, s, p in zip((h, w), kernel, stride, pad)))

    def avgpool(self, src: str) -> str:
        """An average pool over a window or the whole map; sometimes in ceil mode or without
        count_include_pad, then with one (mult, shift) per divisor."""
        rng = self.rng
        kernel, stride, pad, ceil_mode = self._window(src)
        include = bool(rng.random() < 0.5)
        in_bits, in_signed = self.code[src]
        a_bits = self._a_bits()
        area = kernel[0] * kernel[1]
        ratio = code_peak(a_bits, in_signed) / code_peak(in_bits, in_signed)
        if (ceil_mode or not include or rng.random() < 0.2) and area > 1:
            mult, shift = _requant(rng, np.array([ratio / d for d in range(1, area + 1)]))
        else:
            mult, shift = _requant(rng, np.array([ratio / area]))
        node = IntAvgPool(name=self._name(), kernel=kernel, stride=stride, padding=pad, mult=mult, shift=shift,
                          in_bits=in_bits, a_bits=a_bits, inputs=self._inputs((src,)), ceil_mode=ceil_mode,
                          count_include_pad=include, in_signed=in_signed)
        return self._add_node(node, self._pooled(src, kernel, stride, pad, ceil_mode))

    def maxpool(self, src: str) -> str:
        """A max-pool node on codes: any window, ceil mode sometimes."""
        kernel, stride, pad, ceil_mode = self._window(src)
        bits, signed = self.code[src]
        node = IntMaxPool(name=self._name(), kernel=kernel, stride=stride, padding=pad, a_bits=bits, signed=signed,
                          ceil_mode=ceil_mode, inputs=self._inputs((src,)))
        return self._add_node(node, self._pooled(src, kernel, stride, pad, ceil_mode))

    def lut(self, src: str) -> str:
        """A lookup table: a random monotone curve, a sigmoid-like gate or uniform noise over the output range."""
        rng = self.rng
        in_bits, in_signed = self.code[src]
        a_bits, signed = self._a_bits(), self._signed()
        lo, hi = code_range(a_bits, signed)
        n, style = 2**in_bits, rng.random()
        if style < 0.4:
            table = np.sort(rng.integers(lo, hi + 1, n))
        elif style < 0.7:
            t = np.linspace(-6, 6, n) * rng.uniform(0.3, 2)
            table = np.clip(np.floor(lo + (hi - lo) / (1 + np.exp(-t)) + 0.5), lo, hi)
        else:
            table = rng.integers(lo, hi + 1, n)
        node = IntLut(name=self._name(), table=table.astype(np.int16), in_bits=in_bits, in_signed=in_signed,
                      a_bits=a_bits, signed=signed, inputs=self._inputs((src,)))
        return self._add_node(node, self.shape[src])

    def mul(self, x: str, g: str) -> str:
        """(E12) x * g: the product of typical magnitudes mapped to about half the output range."""
        a_bits, signed = self._a_bits(), self._signed()
        alpha = code_peak(a_bits, signed) / 2 / max(self.typical[x] * self.typical[g], 1.0)
        mult, shift = _requant(self.rng, np.array([alpha]))
        node = IntMul(name=self._name(), inputs=(x, g), mult=mult, shift=shift, a_bits=a_bits, signed=signed)
        return self._add_node(node, self.shape[x])

    def squeeze_excite(self, src: str) -> str:
        """x * gate(x): global average pool -> 1x1 conv -> lut (a sigmoid-like gate) -> multiply; or
        an elementwise product of x and a 'same' conv of x."""
        c, h, w = self.shape[src]
        if self.rng.random() < 0.3 and self.code[src] is not None:
            other = self.layer(src, "conv", (c, c, 1, 1), self._a_bits(), self._signed())
            return self.mul(src, other)
        pooled = src if (h, w) == (1, 1) else self.avgpool_global(src)
        hidden = self.layer(pooled, "conv", (int(self.rng.integers(1, 5)), c, 1, 1), self._a_bits(), self._signed())
        gate = self.lut(self.layer(hidden, "conv", (c, self.shape[hidden][0], 1, 1), self._a_bits(), True))
        return self.mul(src, gate)

    def avgpool_global(self, src: str) -> str:
        c, h, w = self.shape[src]
        in_bits, in_signed = self.code[src]
        a_bits = self._a_bits()
        mult, shift = _requant(self.rng, np.array([code_peak(a_bits, in_signed) / code_peak(in_bits, in_signed)
                                                   / (h * w)]))
        node = IntAvgPool(name=self._name(), kernel=(h, w), stride=(1, 1), padding=(0, 0), mult=mult, shift=shift,
                          in_bits=in_bits, a_bits=a_bits, inputs=self._inputs((src,)), in_signed=in_signed)
        return self._add_node(node, (c, 1, 1))

    def concat(self, src: str) -> str:
        """(E13) of ``src`` and one or two convs of it (the same map size), each input on its own scale;
        sometimes an input rides through unchanged (2^30, 30)."""
        rng = self.rng
        c, h, w = self.shape[src]
        parts = [src] + [self.layer(src, "conv", (int(rng.integers(1, 5)), c, 3, 3), self._a_bits(), self._signed(),
                                    padding=(1, 1)) for _ in range(int(rng.integers(1, 3)))]
        parts = [parts[i] for i in rng.permutation(len(parts))]
        a_bits, signed = self._a_bits(), self._signed()
        pairs = [(2**30, 30) if rng.random() < 0.2 else _pair(rng, code_peak(a_bits, signed) / 2 / self.typical[p])
                 for p in parts]
        node = IntConcat(name=self._name(), inputs=tuple(parts), mult=np.array([m for m, _ in pairs], np.int32),
                         shift=np.array([s for _, s in pairs], np.int32), a_bits=a_bits, signed=signed)
        return self._add_node(node, (sum(self.shape[p][0] for p in parts), h, w))

    def channels(self, src: str) -> str:
        """(E14) a split (a range of channels), a shuffle (a permutation), or a gather with repeats."""
        rng = self.rng
        c = self.shape[src][0]
        style = rng.random()
        if style < 0.3:
            start = int(rng.integers(0, c))
            index = np.arange(start, int(rng.integers(start + 1, c + 1)))
        elif style < 0.8:  # a shuffle of g groups (a permutation other than the identity, where there is one)
            groups = [d for d in range(2, c) if c % d == 0]
            if groups and rng.random() < 0.7:
                index = np.arange(c).reshape(int(rng.choice(groups)), -1).T.reshape(-1)
            else:
                index = rng.permutation(c)
        else:
            index = rng.integers(0, c, int(rng.integers(1, 2 * c + 1)))
        bits, signed = self.code[src]
        node = IntChannels(name=self._name(), index=index.astype(np.int32), a_bits=bits, signed=signed,
                           inputs=self._inputs((src,)))
        return self._add_node(node, (len(index), *self.shape[src][1:]), self.typical[src], self.bound[src])

    def affine(self, src: str) -> str:
        """(E15) one multiplier per channel (or one for all), offsets around the code range's middle."""
        rng = self.rng
        c = self.shape[src][0]
        in_bits, in_signed = self.code[src]
        a_bits, signed = self._a_bits(), self._signed()
        ratio = code_peak(a_bits, signed) / code_peak(in_bits, in_signed)
        n = c if rng.random() < 0.6 else 1
        mult, shift = _requant(rng, np.full(n, ratio))
        mult = mult * np.where(rng.random(n) < 0.3, -1, 1).astype(np.int32)  # a negative BN gamma
        scale = (np.abs(mult.astype(np.float64)) * code_peak(in_bits, in_signed)) * np.ones(c)
        offset = (rng.uniform(-1, 1, c) * scale).astype(np.int64)
        if rng.random() < 0.1:  # the (E15) limit
            offset = np.where(rng.random(c) < 0.5, 1, -1) * (2**62 - 1 - code_peak(in_bits, in_signed)
                                                             * int(np.abs(mult.astype(np.int64)).max()))
        node = IntAffine(name=self._name(), mult=mult, shift=shift, offset=offset.astype(np.int64), in_bits=in_bits,
                         a_bits=a_bits, in_signed=in_signed, signed=signed, inputs=self._inputs((src,)))
        return self._add_node(node, self.shape[src])

    def add(self, srcs: list[str]) -> str:
        """(E9) over ``srcs``: each input scaled to about its share of the output codes; sometimes
        shift 0, or the largest multipliers the (E9) proof admits at shift 62."""
        rng = self.rng
        a_bits, k = self._a_bits(), len(srcs)
        bounds = [self.bound[s] for s in srcs]
        mode = rng.integers(0, 10)
        if mode == 0:
            mult, shift = [int(rng.integers(1, 4)) for _ in srcs], 0
        elif mode == 1:
            mult, shift = [min(MULT_MAX, (E9_LIMIT - 1) // (k * b)) for b in bounds], SHIFT_MAX
        else:
            alphas = [(2**a_bits - 1) / (k * self.typical[s]) * 2.0 ** rng.uniform(-1, 1) for s in srcs]
            if mode == 2:  # powers of two: exact ties
                alphas = [2.0 ** np.round(np.log2(a)) for a in alphas]
            shift = int(np.clip(30 - np.ceil(np.log2(max(alphas))), 0, SHIFT_MAX))
            mult = [int(np.clip(round(a * 2.0**shift), 1, MULT_MAX)) for a in alphas]
            while sum(m * b for m, b in zip(mult, bounds)) >= E9_LIMIT:
                mult = [max(1, m // 2) for m in mult]
        node = IntAdd(name=self._name(), inputs=tuple(srcs), mult=np.array(mult, np.int32),
                      shift=np.array([shift], np.int32), a_bits=a_bits, signed=self._signed())
        return self._add_node(node, self.shape[srcs[0]])

    def residual(self, src: str) -> str:
        """y = add(branch, shortcut[, projection]): the branch is one or two 'same' convs of
        stride s ending in codes or accumulators; the shortcut is ``src`` itself (codes) when
        the shape allows, else a 1x1 stride-s conv; a third 1x1 accumulator term sometimes."""
        rng = self.rng
        c, h, w = self.shape[src]
        s = int(rng.integers(1, 3))
        identity = s == 1 and rng.random() < 0.5
        o = c if identity else int(rng.integers(1, 9))
        a_last = None if rng.random() < 0.5 else self._a_bits()
        x, n_convs = src, int(rng.integers(1, 3))
        for i in range(n_convs):
            k, d = (1, 1) if rng.random() < 0.3 else (3, int(rng.integers(1, 3)))
            ci = self.shape[x][0]
            shared = [g for g in range(2, ci + 1) if ci % g == 0 and o % g == 0]  # ci == o: depthwise too
            groups = int(rng.choice(shared)) if shared and rng.random() < 0.5 else 1
            x = self.layer(x, "conv", (o, ci // groups, k, k), a_last if i == n_convs - 1 else self._a_bits(),
                           self._signed(), stride=(s, s) if i == 0 else (1, 1), padding=(d * (k - 1) // 2,) * 2,
                           dilation=(d, d), groups=groups)
        terms = [x, src if identity else self.layer(src, "conv", (o, c, 1, 1), self._maybe_acc(), stride=(s, s))]
        if rng.random() < 0.25:
            terms.append(self.layer(src, "conv", (o, c, 1, 1), None, stride=(s, s)))
        if rng.random() < 0.1:
            terms.append(terms[0])  # one tensor read twice
        return self.add([terms[i] for i in rng.permutation(len(terms))])

    def _maybe_acc(self) -> int | None:
        return None if self.rng.random() < 0.5 else self._a_bits()

    def fc_residual(self, src: str) -> str:
        """add(fc(src), fc(src)) on (O, 1, 1): accumulators, or codes and accumulators, of fc layers."""
        o = int(self.rng.integers(1, 9))
        return self.add([self.fc(src, o, self._maybe_acc(), self._signed()), self.fc(src, o, None)])

    def logits(self, src: str, classes: int) -> None:
        """The last layer: an fc, or a conv whose (strided, padded, dilated) window leaves a 1x1 map."""
        rng = self.rng
        c, h, w = self.shape[src]
        if rng.random() < 0.4:
            self.fc(src, classes, None)
            return
        geometry = []
        for size in (h, w):
            s, p, d = int(rng.integers(1, 4)), int(rng.integers(0, 2)), int(rng.integers(1, 3))
            ks = [k for k in range(1, size + 2 * p + 1) if 0 <= size + 2 * p - d * (k - 1) - 1 < s and p <= d * (k - 1)]
            geometry.append((int(rng.choice(ks)), s, p, d) if ks else (size, 1, 0, 1))
        groups = max(g for g in range(1, c + 1) if c % g == 0 and classes % g == 0 and (g == 1 or rng.random() < .5))
        (kh, sh, ph, dh), (kw, sw, pw, dw) = geometry
        self.layer(src, "conv", (classes, c // groups, kh, kw), None, stride=(sh, sw), padding=(ph, pw),
                   dilation=(dh, dw), groups=groups)


def random_graph(seed: int) -> IntGraph:
    """A small random IntGraph (1 or 3 input channels, at most 9x9 pixels, up to 4 blocks)."""
    rng = np.random.default_rng(seed)
    in_shape = (int(rng.choice([1, 3])), int(rng.integers(2, 10)), int(rng.integers(2, 10)))
    b = _Builder(rng, in_shape)
    x = "input"
    spatial = lambda name: b.shape[name][1:] != (1, 1)  # noqa: E731
    blocks = [(0.25, b.conv, None), (0.4, b.residual, None), (0.48, b.avgpool, spatial), (0.55, b.maxpool, spatial),
              (0.6, b.lut, None), (0.68, b.squeeze_excite, None), (0.75, b.concat, None), (0.82, b.channels, None),
              (0.87, b.affine, None), (0.94, b.fc_residual, None),
              (1.0, lambda name: b.fc(name, int(rng.integers(1, 9)), b._a_bits(), b._signed()), None)]
    for _ in range(int(rng.integers(0, 7))):
        pick = rng.random()  # the first block past ``pick`` whose condition holds
        x = next(make(x) for below, make, fits in blocks if pick < below and (fits is None or fits(x)))
    b.logits(x, int(rng.integers(1, 7)))
    nodes = tuple(b.nodes)
    if np.random.default_rng([seed, 1]).random() < DOUBLE_ROUNDED:  # its own stream: the graph is unchanged
        try:
            nodes = tuple(replace(n, rounding="double") if isinstance(n, IntLayer) and n.a_bits is not None else n
                          for n in nodes)
        except ModelFileError:  # a layer whose (E4d) left shift could leave int32: the graph stays single
            pass
    return IntGraph(in_shape, b.nodes[-1].out_channels, nodes)


DOUBLE_ROUNDED = 0.3  # the share of random graphs whose (E4) layers round twice (E4d)


def random_inputs(rng: np.random.Generator, in_shape: tuple[int, int, int], n: int) -> np.ndarray:
    """``n`` >= 4 uint8 images: all 0, all 255, one with pixels at 0 or 255, one of small codes, the rest uniform."""
    x = rng.integers(0, 256, (n, *in_shape))
    x[0], x[1] = 0, 255
    x[2] = rng.choice([0, 255], in_shape)
    x[3] = rng.integers(0, 4, in_shape)
    return x.astype(np.uint8)


FEATURES = (
    "graph", "3-channel input", "conv", "depthwise", "grouped", "dilated", "strided", "padded", "maxpool", "fc",
    "avgpool", "global avgpool", "avgpool ceil_mode", "avgpool excluding padding", "avgpool per-divisor pairs",
    "maxpool node", "maxpool node ceil_mode", "add", "add of codes", "add of accumulators",
    "add of 3 inputs", "add reading a tensor twice", "int32 accumulators out", "per-channel scale",
    "signed codes out", "signed codes in", "signed add", "lut", "lut on 8-bit input", "mul", "mul by a gate",
    "concat", "concat of 3 inputs", "channels", "channel shuffle", "affine", "affine per channel",
    "affine negative mult",
    "(E6) bound >= 2^30", "shift 0", "shift 62", "mult 1", "mult 2^31-1", "double rounding",
    "double rounding, signed codes out", "double rounding, shift <= 31",
    *(f"w_bits={b}" for b in range(2, 9)), *(f"a_bits={b}" for b in range(2, 9)))


def features(graph: IntGraph) -> Counter:
    """How many nodes of the graph show each of :data:`FEATURES` (for coverage reports)."""
    seen: Counter = Counter({"graph": 1, "3-channel input": int(graph.in_shape[0] == 3)})
    nodes = {node.name: node for node in graph.layers}
    shapes = {"input": graph.in_shape, **node_shapes(graph)}
    for node in graph.layers:
        seen[node.kind if node.kind != "maxpool" else "maxpool node"] += 1
        code = node.code
        if code is not None:
            seen[f"a_bits={code[0]}"] += 1
            seen["signed codes out"] += code[1]
        seen["signed codes in"] += bool(getattr(node, "in_signed", False))
        if "mult" in node.ARRAYS:
            shifts, mults = node.shift.tolist(), node.mult.tolist()
            seen["shift 0"] += 0 in shifts
            seen["shift 62"] += SHIFT_MAX in shifts
            seen["mult 2^31-1"] += MULT_MAX in mults
            seen["mult 1"] += 1 in mults
        srcs = graph.sources(node)
        if isinstance(node, IntLayer):
            seen[f"w_bits={node.w_bits}"] += 1
            double = node.rounding == "double"
            seen["double rounding"] += double
            seen["double rounding, signed codes out"] += double and node.signed
            seen["double rounding, shift <= 31"] += double and int(node.shift.min()) <= 31
            seen["per-channel scale"] += len(node.mult) > 1 and node is not graph.layers[-1]
            seen["int32 accumulators out"] += node.a_bits is None and node is not graph.layers[-1]
            seen["(E6) bound >= 2^30"] += node.acc_bound() >= 2**30
            if node.kind == "conv":
                c_in = node.w_q.shape[1] * node.groups
                seen["depthwise"] += node.groups == c_in > 1
                seen["grouped"] += 1 < node.groups < c_in
                seen["dilated"] += max(node.dilation) > 1
                seen["strided"] += max(node.stride) > 1
                seen["padded"] += max(node.padding) > 0
                seen["maxpool"] += node.pool is not None
        elif isinstance(node, IntAdd):
            kinds = [s != "input" and nodes[s].code is None for s in srcs]
            seen["add of codes"] += not all(kinds)
            seen["add of accumulators"] += any(kinds)
            seen["add of 3 inputs"] += len(kinds) > 2
            seen["add reading a tensor twice"] += len(set(node.inputs)) < len(node.inputs)
            seen["signed add"] += node.signed
        elif isinstance(node, IntAvgPool):
            seen["global avgpool"] += node.kernel == shapes[srcs[0]][1:] != (1, 1)
            seen["avgpool ceil_mode"] += node.ceil_mode
            seen["avgpool excluding padding"] += not node.count_include_pad and max(node.padding) > 0
            seen["avgpool per-divisor pairs"] += len(node.mult) > 1
        elif isinstance(node, IntMaxPool):
            seen["maxpool node ceil_mode"] += node.ceil_mode
        elif isinstance(node, IntLut):
            seen["lut on 8-bit input"] += node.in_bits == 8
        elif isinstance(node, IntMul):
            seen["mul by a gate"] += shapes[srcs[1]][1:] == (1, 1) != shapes[srcs[0]][1:]
        elif isinstance(node, IntConcat):
            seen["concat of 3 inputs"] += len(srcs) > 2
        elif isinstance(node, IntChannels):
            seen["channel shuffle"] += sorted(node.index.tolist()) == list(range(shapes[srcs[0]][0])) and \
                node.index.tolist() != sorted(node.index.tolist())
        elif isinstance(node, IntAffine):
            seen["affine per channel"] += len(node.mult) > 1
            seen["affine negative mult"] += bool((node.mult < 0).any())
    return seen


def renamed(graph: IntGraph, prefix: str) -> IntGraph:
    """``graph`` with node i named ``prefix + str(i)`` (edges follow)."""
    new = {node.name: f"{prefix}{i}" for i, node in enumerate(graph.layers)} | {"input": "input"}
    return IntGraph(graph.in_shape, graph.num_classes, tuple(
        replace(node, name=new[node.name], inputs=tuple(new[s] for s in node.inputs)) for node in graph.layers))
