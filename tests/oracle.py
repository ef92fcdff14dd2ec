"""An independent pure-Python-int oracle of docs/arithmetic.md.

Written from the document, not from arith.py or execute.py: exact rationals via
Python's unbounded ints and floor division (//, which floors for negative numbers
too). The scalar functions are (E3)-(E5); :func:`run` executes a whole IntGraph.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def rshift_round(x: int, shift: int) -> int:
    """(E3): nearest integer to x / 2^shift, ties toward +infinity."""
    q = Fraction(x, 2**shift)
    return (q + Fraction(1, 2)).__floor__()


def code_range(a_bits: int, signed: bool = False) -> tuple[int, int]:
    """(E1): [0, 2^A - 1], or [-2^(A-1), 2^(A-1) - 1] for signed codes."""
    return (-(2 ** (a_bits - 1)), 2 ** (a_bits - 1) - 1) if signed else (0, 2**a_bits - 1)


def requantize(acc: int, mult: int, shift: int, a_bits: int, signed: bool = False, rounding: str = "single") -> int:
    """(E4), or with ``rounding="double"`` (E4d) as gemmlowp computes it (:func:`double_rounding`)."""
    lo, hi = code_range(a_bits, signed)
    r = double_rounding(acc, mult, shift) if rounding == "double" else rshift_round(acc * mult, shift)
    return min(max(r, lo), hi)


def _trunc_div(a: int, b: int) -> int:
    """C's integer division of a by b > 0: toward zero."""
    q = abs(a) // b
    return q if a >= 0 else -q


def double_rounding(acc: int, mult: int, shift: int) -> int:
    """(E4d) as TFLite's MultiplyByQuantizedMultiplier spells it, with the exponent e = 31 - shift:
    SaturatingRoundingDoublingHighMul(acc * 2^max(e, 0), mult), then RoundingDivideByPOT by
    max(-e, 0) (gemmlowp/fixedpoint/fixedpoint.h), step by step on Python ints. The left shift
    must not overflow int32 (the contract's bound; TFLite's would be undefined)."""
    e = 31 - shift
    x = acc * 2 ** max(e, 0)
    assert -(2**31) <= x < 2**31, "(E4d) acc * 2^(31 - shift) leaves int32"
    ab = x * mult
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    high = _trunc_div(ab + nudge, 2**31)  # SaturatingRoundingDoublingHighMul (mult > 0: no saturation)
    exponent = max(-e, 0)
    mask = 2**exponent - 1
    remainder = high & mask  # two's complement AND on Python ints: high mod 2^exponent
    threshold = (mask >> 1) + (1 if high < 0 else 0)
    return (high >> exponent) + (1 if remainder > threshold else 0)  # RoundingDivideByPOT


def quantize_multiplier(real: float) -> tuple[int, int]:
    """(E5): the (mult, shift) with mult in [2^30, 2^31) nearest to real * 2^shift."""
    r = Fraction(real)
    shift = 0
    while r * 2**shift < 2**30 - Fraction(1, 2):
        shift += 1
    while r * 2**shift >= 2**31 - Fraction(1, 2):
        shift -= 1
    mult = (r * 2**shift + Fraction(1, 2)).__floor__()
    return mult, shift


# A whole-graph executor on numpy object arrays of Python ints (N, C, H, W): numpy only lays
# the ints out and loops over them; every sum, product, shift and clamp is Python-int exact.

INT32 = (-(2**31), 2**31 - 1)


def _ints(a) -> np.ndarray:
    """An object array of Python ints (never numpy scalars, which are fixed-width)."""
    return np.array(np.asarray(a).tolist(), dtype=object)


def _padded(x: np.ndarray, ph: int, pw: int, fill: int) -> np.ndarray:
    n, c, h, w = x.shape
    out = np.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=object)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _windows(x: np.ndarray, kernel, stride, padding, dilation, fill: int):
    """Yield (ky, kx, view): view[n, c, oy, ox] is the input cell at (oy * sh - ph + ky * dh,
    ox * sw - pw + kx * dw), or ``fill`` where that cell is outside the map."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    h, w = x.shape[2:]
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = _padded(x, ph, pw, fill)
    for ky in range(kh):
        for kx in range(kw):
            yield ky, kx, xp[:, :, ky * dh:ky * dh + sh * (ho - 1) + 1:sh, kx * dw:kx * dw + sw * (wo - 1) + 1:sw]


def rshift_round_array(x: np.ndarray, shift) -> np.ndarray:
    """(E3) elementwise, exactly as written: floor((x + 2^(S-1)) / 2^S), and x when S = 0
    (2^S // 2 is 2^(S-1), or 0 when S = 0)."""
    scale = 2 ** _ints(shift)
    return (x + scale // 2) // scale


def _clamp(v: np.ndarray, a_bits: int, signed: bool = False) -> np.ndarray:
    lo, hi = code_range(a_bits, signed)
    return np.minimum(np.maximum(v, lo), hi)


def conv_acc(x: np.ndarray, layer) -> np.ndarray:
    """(E2) for a conv: acc[n, o, y, x] = bias[o] + sum over the group's channels and the kernel
    of w * x, cells outside the image being code 0."""
    w, g = _ints(layer.w_q), layer.groups
    o, cg = w.shape[:2]
    parts = []
    for j in range(g):  # output channels j*o/g.. read input channels j*cg..
        wj = w[j * (o // g):(j + 1) * (o // g)]
        acc = 0
        for ky, kx, view in _windows(x[:, j * cg:(j + 1) * cg], w.shape[2:], layer.stride, layer.padding,
                                     layer.dilation, 0):
            acc = acc + np.tensordot(view, wj[:, :, ky, kx], axes=([1], [1]))  # (N, Ho, Wo, O/g)
        parts.append(acc)
    return np.concatenate(parts, axis=3).transpose(0, 3, 1, 2) + _ints(layer.bias_q).reshape(1, -1, 1, 1)


def fc_acc(x: np.ndarray, layer) -> np.ndarray:
    """(E2) for fc over the C-H-W flattened input: (N, O, 1, 1)."""
    acc = x.reshape(len(x), -1).dot(_ints(layer.w_q).T) + _ints(layer.bias_q)
    return acc.reshape(*acc.shape, 1, 1)


def pool_length(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    """(E7) output length: floor((size + 2p - k) / s) + 1, or with ceil, less one if the last
    window would start at or past size + p."""
    n = (size + 2 * p - k) // s + 1
    if ceil_mode:
        n = -((-(size + 2 * p - k)) // s) + 1
        if (n - 1) * s >= size + p:
            n -= 1
    return n


def _pool(x: np.ndarray, kernel, stride, padding, ceil_mode: bool, reduce) -> np.ndarray:
    """For each output cell, ``reduce(cells, oy, ox)`` over the list of input cells (a (N, C) object
    array each) of its window that lie inside the map, read cell by cell."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    ho, wo = pool_length(h, kh, sh, ph, ceil_mode), pool_length(w, kw, sw, pw, ceil_mode)
    out = np.empty((n, c, ho, wo), dtype=object)
    for oy in range(ho):
        for ox in range(wo):
            cells = [x[:, :, iy, ix] for iy in range(oy * sh - ph, oy * sh - ph + kh) if 0 <= iy < h
                     for ix in range(ox * sw - pw, ox * sw - pw + kw) if 0 <= ix < w]
            assert cells, "a pool window lies wholly outside the map"
            out[:, :, oy, ox] = reduce(cells, oy, ox)
    return out


def max_pool(x: np.ndarray, kernel, stride, padding, ceil_mode: bool = False) -> np.ndarray:
    """(E7) max over the cells of each window that lie inside the map."""
    def biggest(cells, oy, ox):
        out = cells[0]
        for v in cells[1:]:
            out = np.maximum(out, v)
        return out

    return _pool(x, kernel, stride, padding, ceil_mode, biggest)


def run_layer(x: np.ndarray, layer) -> np.ndarray:
    """A conv/fc layer: (E2), then (E4) and (E7), or the int32 accumulators when a_bits is None."""
    acc = conv_acc(x, layer) if layer.kind == "conv" else fc_acc(x, layer)
    assert INT32[0] <= acc.min() and acc.max() <= INT32[1], "(E6) was meant to keep acc in int32"
    if layer.a_bits is None:
        return acc
    per = (1, -1, 1, 1)
    if getattr(layer, "rounding", "single") == "double":
        mult = np.broadcast_to(_ints(layer.mult), (acc.shape[1],))
        shift = np.broadcast_to(_ints(layer.shift), (acc.shape[1],))
        y = np.empty_like(acc)
        for idx in np.ndindex(acc.shape):
            y[idx] = requantize(int(acc[idx]), int(mult[idx[1]]), int(shift[idx[1]]), layer.a_bits, layer.signed,
                                "double")
    else:
        y = _clamp(rshift_round_array(acc * _ints(layer.mult).reshape(per), _ints(layer.shift).reshape(per)),
                   layer.a_bits, layer.signed)
    if layer.pool:
        k, s, p = layer.pool
        return max_pool(y, (k, k), (s, s), (p, p))
    return y


def add(xs: list[np.ndarray], node) -> np.ndarray:
    """(E9) clamp(rshift_round(sum_j v_j * mult_j, shift), lo, hi)."""
    total = sum(v * m for v, m in zip(xs, node.mult.tolist()))
    assert abs(total).max() < 2**62, "(E9) was meant to keep the sum below 2^62"
    return _clamp(rshift_round_array(total, int(node.shift[0])), node.a_bits, node.signed)


def avg_pool(x: np.ndarray, node) -> np.ndarray:
    """(E10) the sum of the window's cells inside the map, times the pair of the window's divisor
    d (cells inside the padded map, or inside the map without count_include_pad), (E3), clamp."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    h, w = x.shape[2:]
    mult, shift = node.mult.tolist(), node.shift.tolist()

    def mean(cells, oy, ox):
        lo_y, hi_y, lo_x, hi_x = (-ph, h + ph, -pw, w + pw) if node.count_include_pad else (0, h, 0, w)
        rows = len([iy for iy in range(oy * sh - ph, oy * sh - ph + kh) if lo_y <= iy < hi_y])
        cols = len([ix for ix in range(ox * sw - pw, ox * sw - pw + kw) if lo_x <= ix < hi_x])
        j = rows * cols - 1 if len(mult) > 1 else 0
        return _clamp(rshift_round_array(sum(cells) * mult[j], shift[j]), node.a_bits, node.in_signed)

    return _pool(x, node.kernel, node.stride, node.padding, node.ceil_mode, mean)


def lut(x: np.ndarray, node) -> np.ndarray:
    """(E11) T[x - lo_in]."""
    table, lo = node.table.tolist(), code_range(node.in_bits, node.in_signed)[0]
    return np.vectorize(lambda v: table[v - lo], otypes=[object])(x)


def mul(xs: list[np.ndarray], node) -> np.ndarray:
    """(E12) clamp(rshift_round(x * g * mult, shift)), g (C, 1, 1) broadcast over the map."""
    x, g = xs
    return _clamp(rshift_round_array(x * g * int(node.mult[0]), int(node.shift[0])), node.a_bits, node.signed)


def concat(xs: list[np.ndarray], node) -> np.ndarray:
    """(E13) each input requantized by its own pair, joined along channels."""
    return np.concatenate([_clamp(rshift_round_array(x * m, s), node.a_bits, node.signed)
                           for x, m, s in zip(xs, node.mult.tolist(), node.shift.tolist())], axis=1)


def channels(x: np.ndarray, node) -> np.ndarray:
    """(E14) y[c] = x[index[c]]."""
    return np.stack([x[:, i] for i in node.index.tolist()], axis=1)


def affine(x: np.ndarray, node) -> np.ndarray:
    """(E15) clamp(rshift_round(x[c] * mult[c] + offset[c], shift[c])), one pair for all channels or one each."""
    c = x.shape[1]
    mult, shift = node.mult.tolist() * (c if len(node.mult) == 1 else 1), node.shift.tolist() * (
        c if len(node.shift) == 1 else 1)
    out = [rshift_round_array(x[:, j] * mult[j] + int(node.offset[j]), shift[j]) for j in range(c)]
    return _clamp(np.stack(out, axis=1), node.a_bits, node.signed)


def run(graph, x_q: np.ndarray) -> list[list[int]]:
    """The logits of ``graph`` on uint8 images ``x_q`` (N, C, H, W), as Python ints."""
    env = {"input": _ints(x_q)}
    for node in graph.layers:
        xs = [env[src] for src in graph.sources(node)]
        kind = node.kind
        if kind == "add":
            env[node.name] = add(xs, node)
        elif kind == "avgpool":
            env[node.name] = avg_pool(xs[0], node)
        elif kind == "maxpool":
            env[node.name] = max_pool(xs[0], node.kernel, node.stride, node.padding, node.ceil_mode)
        elif kind == "lut":
            env[node.name] = lut(xs[0], node)
        elif kind == "mul":
            env[node.name] = mul(xs, node)
        elif kind == "concat":
            env[node.name] = concat(xs, node)
        elif kind == "channels":
            env[node.name] = channels(xs[0], node)
        elif kind == "affine":
            env[node.name] = affine(xs[0], node)
        else:
            env[node.name] = run_layer(xs[0], node)
    logits = env[graph.layers[-1].name].reshape(len(x_q), -1).tolist()
    assert all(type(v) is int for row in logits for v in row)
    return logits
