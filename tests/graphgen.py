"""Seeded random IntGraphs for the differential fuzzer (tests/test_fuzz.py, bench/fuzz_backends.py).

``random_graph(seed)`` draws a small graph over everything an IntGraph holds: conv layers
of random shape, stride, padding (beyond the kernel too), dilation and groups (depthwise
included), fused max-pools, fc layers,
average pools (global ones too), residual adds of codes and of int32 accumulators with
two or three inputs, 2..8-bit weights and codes, per-layer and per-channel (mult, shift),
then a conv or fc logits layer with a 1x1 output. Multipliers are mostly derived from a
layer's typical accumulator range with (E5), so that codes spread instead of all
clamping, and sometimes extreme: shift 0, shift 62, mult 2^31 - 1, mult 1, arbitrary
pairs, powers of two (exact ties), biases at the (E6) limit and adds at the (E9) limit.
Every graph passes IntGraph's checks; names are ``n0``, ``n1``, ...
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from fiqnn.integer.arith import INT32_MAX, INT32_MIN, MULT_MAX, SHIFT_MAX, quantize_multiplier
from fiqnn.integer.graph import IntAdd, IntAvgPool, IntGraph, IntLayer, Node, node_shapes

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


def _bias(rng: np.random.Generator, w: np.ndarray, x_max: int) -> np.ndarray:
    """Biases of the size of a typical accumulator; sometimes, per channel, at the (E6) limit."""
    flat = w.reshape(len(w), -1).astype(np.int64)
    pos, neg = x_max * np.maximum(flat, 0).sum(1), x_max * np.minimum(flat, 0).sum(1)
    typical = int(x_max * np.sqrt(flat.shape[1]) * max(1, np.abs(flat).max())) // 2 + 1
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
    """Appends nodes ``n0, n1, ...``; tracks every tensor's shape, code bits (None: int32
    accumulators) and typical magnitude, from which the next multipliers are chosen."""

    def __init__(self, rng: np.random.Generator, in_shape: tuple[int, int, int]):
        self.rng = rng
        self.nodes: list[Node] = []
        self.shape = {"input": in_shape}
        self.bits: dict[str, int | None] = {"input": 8}
        self.typical = {"input": 128.0}
        self.bound = {"input": 255}

    def _inputs(self, srcs: tuple[str, ...]) -> tuple[str, ...]:
        """``()`` when the node reads the previous node (the implicit edge), else the names."""
        prev = self.nodes[-1].name if self.nodes else "input"
        return () if srcs == (prev,) else srcs

    def _add_node(self, node: Node, shape, typical: float, bound: int) -> str:
        self.nodes.append(node)
        self.shape[node.name], self.bits[node.name] = shape, node.a_bits
        self.typical[node.name], self.bound[node.name] = typical, bound
        return node.name

    def _a_bits(self) -> int:
        return int(self.rng.integers(2, 9))

    def layer(self, src: str, kind: str, shape: tuple, a_bits: int | None, **geometry) -> str:
        """A conv (``shape`` (O, I/groups, kh, kw)) or fc (``shape`` (O, I)) layer reading ``src``."""
        rng, in_bits = self.rng, self.bits[src]
        w_bits = int(rng.integers(2, 9))
        w, x_max = _weights(rng, shape, w_bits), 2**in_bits - 1
        bias = _bias(rng, w, x_max)
        flat = w.reshape(len(w), -1).astype(np.float64)
        centre = bias + flat.sum(1) * x_max / 2
        typical = np.maximum(centre, 0) + x_max * np.sqrt((flat**2).sum(1) / 12) * 2 + 1
        qmax = 2**a_bits - 1 if a_bits else 255
        alphas = qmax / typical if rng.random() < 0.4 else [qmax / float(np.median(typical))]
        mult, shift = _requant(rng, np.asarray(alphas))
        node = IntLayer(name=f"n{len(self.nodes)}", kind=kind, w_q=w, bias_q=bias, mult=mult, shift=shift,
                        in_bits=in_bits, w_bits=w_bits, a_bits=a_bits, inputs=self._inputs((src,)), **geometry)
        c, h, wd = self.shape[src]
        if kind == "fc":
            out = (shape[0], 1, 1)
        else:
            (sh, sw), (ph, pw), (dh, dw) = node.stride, node.padding, node.dilation
            out = (shape[0], _out(h, shape[2], sh, ph, dh), _out(wd, shape[3], sw, pw, dw))
            if node.pool:
                k, s, p = node.pool
                out = (out[0], _out(out[1], k, s, p), _out(out[2], k, s, p))
        mag = float(np.median(typical)) if a_bits is None else qmax / 2
        return self._add_node(node, out, mag, node.acc_bound() if a_bits is None else qmax)

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
        return self.layer(src, "conv", (o, c // groups, *kern), a_bits, stride=stride, padding=pad, dilation=dil,
                          groups=groups, pool=pool)

    def fc(self, src: str, o: int, a_bits: int | None) -> str:
        """An fc layer over the flattened map."""
        c, h, w = self.shape[src]
        return self.layer(src, "fc", (o, c * h * w), a_bits)

    def avgpool(self, src: str) -> str:
        """A window (zero padding up to half the kernel) or a global average pool."""
        rng = self.rng
        c, h, w = self.shape[src]
        if rng.random() < 0.3:
            kernel, stride, pad = (h, w), (1, 1), (0, 0)
        else:
            kernel = tuple(int(rng.integers(1, min(size, 3) + 1)) for size in (h, w))
            stride = tuple(int(rng.integers(1, 3)) for _ in range(2))
            pad = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        in_bits, a_bits = self.bits[src], self._a_bits()
        mult, shift = _requant(rng, np.array([(2**a_bits - 1) / (2**in_bits - 1) / (kernel[0] * kernel[1])]))
        node = IntAvgPool(name=f"n{len(self.nodes)}", kernel=kernel, stride=stride, padding=pad, mult=mult,
                          shift=shift[:1], in_bits=in_bits, a_bits=a_bits, inputs=self._inputs((src,)))
        out = (c, *(_out(size, k, s, p) for size, k, s, p in zip((h, w), kernel, stride, pad)))
        return self._add_node(node, out, (2**a_bits - 1) / 2, 2**a_bits - 1)

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
        node = IntAdd(name=f"n{len(self.nodes)}", inputs=tuple(srcs), mult=np.array(mult, np.int32),
                      shift=np.array([shift], np.int32), a_bits=a_bits)
        return self._add_node(node, self.shape[srcs[0]], (2**a_bits - 1) / 2, 2**a_bits - 1)

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
                           stride=(s, s) if i == 0 else (1, 1), padding=(d * (k - 1) // 2,) * 2, dilation=(d, d),
                           groups=groups)
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
        return self.add([self.fc(src, o, self._maybe_acc()), self.fc(src, o, None)])

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
    for _ in range(int(rng.integers(0, 5))):
        pick = rng.random()
        if pick < 0.45:
            x = b.conv(x)
        elif pick < 0.7:
            x = b.residual(x)
        elif pick < 0.82 and b.shape[x][1:] != (1, 1):
            x = b.avgpool(x)
        elif pick < 0.92:
            x = b.fc_residual(x)
        else:
            x = b.fc(x, int(rng.integers(1, 9)), b._a_bits())
    b.logits(x, int(rng.integers(1, 7)))
    return IntGraph(in_shape, b.nodes[-1].out_channels, tuple(b.nodes))


def random_inputs(rng: np.random.Generator, in_shape: tuple[int, int, int], n: int) -> np.ndarray:
    """``n`` >= 4 uint8 images: all 0, all 255, one with pixels at 0 or 255, one of small codes, the rest uniform."""
    x = rng.integers(0, 256, (n, *in_shape))
    x[0], x[1] = 0, 255
    x[2] = rng.choice([0, 255], in_shape)
    x[3] = rng.integers(0, 4, in_shape)
    return x.astype(np.uint8)


FEATURES = (
    "graph", "3-channel input", "conv", "depthwise", "grouped", "dilated", "strided", "padded", "maxpool", "fc",
    "avgpool", "global avgpool", "add", "add of codes", "add of accumulators",
    "add of 3 inputs", "add reading a tensor twice", "int32 accumulators out", "per-channel scale",
    "(E6) bound >= 2^30", "shift 0", "shift 62", "mult 1", "mult 2^31-1",
    *(f"w_bits={b}" for b in range(2, 9)), *(f"a_bits={b}" for b in range(2, 9)))


def features(graph: IntGraph) -> Counter:
    """How many nodes of the graph show each of :data:`FEATURES` (for coverage reports)."""
    seen: Counter = Counter({"graph": 1, "3-channel input": int(graph.in_shape[0] == 3)})
    bits = {node.name: node.a_bits for node in graph.layers} | {"input": 8}
    shapes = {"input": graph.in_shape, **node_shapes(graph)}
    for node in graph.layers:
        seen[node.kind] += 1
        if node.a_bits is not None:
            seen[f"a_bits={node.a_bits}"] += 1
        shifts, mults = node.shift.tolist(), node.mult.tolist()
        seen["shift 0"] += 0 in shifts
        seen["shift 62"] += SHIFT_MAX in shifts
        seen["mult 2^31-1"] += MULT_MAX in mults
        seen["mult 1"] += 1 in mults
        if isinstance(node, IntLayer):
            seen[f"w_bits={node.w_bits}"] += 1
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
            kinds = [bits[s] is None for s in graph.sources(node)]
            seen["add of codes"] += not all(kinds)
            seen["add of accumulators"] += any(kinds)
            seen["add of 3 inputs"] += len(kinds) > 2
            seen["add reading a tensor twice"] += len(set(node.inputs)) < len(node.inputs)
        else:
            seen["global avgpool"] += node.kernel == shapes[graph.sources(node)[0]][1:] != (1, 1)
    return seen


def renamed(graph: IntGraph, prefix: str) -> IntGraph:
    """``graph`` with node i named ``prefix + str(i)`` (edges follow)."""
    new = {node.name: f"{prefix}{i}" for i, node in enumerate(graph.layers)} | {"input": "input"}
    return IntGraph(graph.in_shape, graph.num_classes, tuple(
        replace(node, name=new[node.name], inputs=tuple(new[s] for s in node.inputs)) for node in graph.layers))
