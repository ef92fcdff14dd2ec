"""The bit-exact reference executor: an IntGraph run in NumPy, integer dtypes only.

Per layer (docs/arithmetic.md): zero-pad the codes (uint8, or int8 when signed), gather
patches (im2col), accumulate (E2), requantize (E4) to codes, max-pool (E7); every other
node ((E9)-(E15)) in int64 on whole tensors. The last layer returns the int32
accumulators: the logits.

Speed, and why it is still exact: NumPy has no BLAS for integer matrices, so
:func:`matmul_exact` multiplies the integer patch and weight matrices through
float BLAS and converts the result straight back to int64. Every operand and
every partial sum is an integer no larger in magnitude than the layer's (E6)
bound (proved when the graph is built, at most 2^31); float32 represents every
integer up to 2^24 exactly and float64 every integer up to 2^53, so with float32
for bounds up to 2^24 and float64 above (E8), each product and each sum, in
whatever order BLAS performs them, is exact. The float arrays live only inside
that one function; every array the executor hands from step to step is an
integer array (``trace`` lets a test check that).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .._progress import bar as progress_bar
from .arith import clamp_codes, code_range, double_offset, exact_float_dtype, rshift_round
from .graph import (
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
)
from .modelfile import load
from .nodes import pool_out

Trace = Callable[[str, np.ndarray], None]


def matmul_exact(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """``a @ b`` for integer matrices whose every partial sum has magnitude <= ``bound``
    (proved for IntGraph layers by (E6)), through float BLAS: float32 when bound <= 2^24,
    else float64 (E8). Returns int64."""
    dt = exact_float_dtype(bound)
    return (a.astype(dt) @ b.astype(dt)).astype(np.int64)


def _im2col(x_q: np.ndarray, layer: IntLayer) -> tuple[np.ndarray, int, int]:
    """Patches of ``x_q`` (N, C, H, W) as rows: (N * Ho * Wo, C * kh * kw), plus Ho, Wo."""
    _, _, kh, kw = layer.w_q.shape
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    x = np.pad(x_q, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # zero codes outside the image (E2)
    win = sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, Ho, Wo, kh, kw)
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, c * kh * kw), ho, wo


def linear_acc(x_q: np.ndarray, layer: IntLayer) -> np.ndarray:
    """(E2) int64 accumulators: (N, O, Ho, Wo) for conv, (N, O, 1, 1) for fc (the map shape
    ``node_shapes`` gives it, which a conv, pool or add reading an fc layer expects)."""
    if layer.kind == "fc":
        acc = matmul_exact(x_q.reshape(len(x_q), -1), layer.w_q.T, layer.acc_bound()) + layer.bias_q
        return acc.reshape(*acc.shape, 1, 1)
    n, o, g, bound = len(x_q), layer.out_channels, layer.groups, layer.acc_bound()
    c_in = x_q.shape[1] // g
    parts = []
    for j in range(g):  # grouped / depthwise convolution: one GEMM per group
        cols, ho, wo = _im2col(x_q[:, j * c_in:(j + 1) * c_in], layer)
        w = layer.w_q[j * (o // g):(j + 1) * (o // g)].reshape(o // g, -1)
        parts.append(matmul_exact(cols, w.T, bound).reshape(n, ho, wo, o // g))
    acc = np.concatenate(parts, axis=3) + layer.bias_q  # (N, Ho, Wo, O)
    return acc.transpose(0, 3, 1, 2)


def _per_channel(a: np.ndarray, ndim: int = 4) -> np.ndarray:
    """A (1,) or (C,) parameter as int64, broadcastable over (N, C, ...)."""
    return a.astype(np.int64).reshape((1, -1) + (1,) * (ndim - 2))


def requantize_layer(acc: np.ndarray, layer: IntLayer) -> np.ndarray:
    """(E4), or (E4d) under double rounding, with the layer's (mult, shift), per layer or per output
    channel: codes."""
    prod = acc * _per_channel(layer.mult, acc.ndim)  # |acc * mult| < 2^62
    shift = _per_channel(layer.shift, acc.ndim)
    if layer.rounding == "double":
        prod = prod + double_offset(prod, shift)
    return clamp_codes(rshift_round(prod, shift), layer.a_bits, layer.signed)


def windows(x: np.ndarray, kernel, stride, padding, ceil_mode: bool, fill) -> np.ndarray:
    """(E7)/(E10) pooling windows of ``x`` (N, C, H, W) as (N, C, Ho, Wo, kh, kw), cells outside
    the map set to ``fill`` (ceil mode pads the far edge as far as the last window reaches)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h, w = x.shape[2:]
    ho, wo = pool_out(h, kh, sh, ph, ceil_mode), pool_out(w, kw, sw, pw, ceil_mode)
    extra_h, extra_w = max(0, (ho - 1) * sh + kh - h - 2 * ph), max(0, (wo - 1) * sw + kw - w - 2 * pw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)), constant_values=fill)
    return sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, :(ho - 1) * sh + 1:sh, :(wo - 1) * sw + 1:sw]


def max_pool(x_q: np.ndarray, pool: tuple[int, int, int]) -> np.ndarray:
    """(E7) max over k x k windows with stride s; padding p adds the dtype's lowest code, which
    never wins (every window holds a cell of the map)."""
    k, s, p = pool
    return windows(x_q, (k, k), (s, s), (p, p), False, np.iinfo(x_q.dtype).min).max(axis=(4, 5))


def run_layer(x_q: np.ndarray, layer: IntLayer) -> np.ndarray:
    """One layer: uint8 codes in; uint8 codes out (int32 accumulators when it has no a_bits)."""
    acc = linear_acc(x_q, layer)
    if layer.a_bits is None:
        return acc.astype(np.int32)  # the (E6) proof makes this cast lossless
    y_q = requantize_layer(acc, layer)
    return max_pool(y_q, layer.pool) if layer.pool else y_q


def add(inputs: list[np.ndarray], node: IntAdd) -> np.ndarray:
    """(E9) sum of each input (codes or int32 accumulators) times its multiplier, in
    int64 (|sum| < 2^62 proven when the graph is built), then (E3) and the clamp."""
    total = sum(v.astype(np.int64) * np.int64(m) for v, m in zip(inputs, node.mult))
    return clamp_codes(rshift_round(total, np.int64(node.shift[0])), node.a_bits, node.signed)


def avg_pool(x_q: np.ndarray, node: IntAvgPool) -> np.ndarray:
    """(E10) window sums of the codes inside the map, times the pair of each window's divisor, (E3), clamp."""
    sums = windows(x_q.astype(np.int64), node.kernel, node.stride, node.padding, node.ceil_mode, 0).sum(axis=(4, 5))
    pick = node.divisors(*x_q.shape[2:]) - 1 if len(node.mult) > 1 else 0
    mult, shift = node.mult.astype(np.int64)[pick], node.shift.astype(np.int64)[pick]
    return clamp_codes(rshift_round(sums * mult, shift), node.a_bits, node.signed)


def max_pool_node(x_q: np.ndarray, node: IntMaxPool) -> np.ndarray:
    """(E7) a max-pool node: any window, ceil mode; cells outside the map never count."""
    fill = np.iinfo(x_q.dtype).min
    return windows(x_q, node.kernel, node.stride, node.padding, node.ceil_mode, fill).max(axis=(4, 5))


def lut(x_q: np.ndarray, node: IntLut) -> np.ndarray:
    """(E11) ``table[x - lo_in]``."""
    lo = code_range(node.in_bits, node.in_signed)[0]
    return clamp_codes(node.table[x_q.astype(np.int64) - lo], node.a_bits, node.signed)  # (entries are in range)


def mul(inputs: list[np.ndarray], node: IntMul) -> np.ndarray:
    """(E12) x * g * mult in int64 (g broadcast over the map when it is (C, 1, 1)), (E3), clamp."""
    x, g = (v.astype(np.int64) for v in inputs)
    return clamp_codes(rshift_round(x * g * np.int64(node.mult[0]), np.int64(node.shift[0])), node.a_bits, node.signed)


def concat(inputs: list[np.ndarray], node: IntConcat) -> np.ndarray:
    """(E13) each input requantized with its own pair, joined along channels."""
    return np.concatenate([clamp_codes(rshift_round(v.astype(np.int64) * np.int64(m), np.int64(s)), node.a_bits,
                                       node.signed) for v, m, s in zip(inputs, node.mult, node.shift)], axis=1)


def affine(x_q: np.ndarray, node: IntAffine) -> np.ndarray:
    """(E15) x * mult[c] + offset[c] in int64, (E3) with shift[c], clamp."""
    total = x_q.astype(np.int64) * _per_channel(node.mult) + _per_channel(node.offset)
    return clamp_codes(rshift_round(total, _per_channel(node.shift)), node.a_bits, node.signed)


# One kernel per node class, on the list of the node's input arrays.
KERNELS = {IntLayer: lambda xs, node: run_layer(xs[0], node), IntAdd: add,
           IntAvgPool: lambda xs, node: avg_pool(xs[0], node),
           IntMaxPool: lambda xs, node: max_pool_node(xs[0], node),
           IntLut: lambda xs, node: lut(xs[0], node), IntMul: mul, IntConcat: concat,
           IntChannels: lambda xs, node: xs[0][:, node.index],
           IntAffine: lambda xs, node: affine(xs[0], node)}


def run_node(inputs: list[np.ndarray], node: Node) -> np.ndarray:
    return KERNELS[type(node)](inputs, node)


def as_graph(model: IntGraph | str | os.PathLike) -> IntGraph:
    """The first argument of every backend's run function (:func:`run`,
    :func:`fiqnn.export.onnx.run_onnx`, :func:`fiqnn.export.c99.run_c`): an IntGraph as it is,
    or a model file (a distill run directory: its ``model.npz``), read with :func:`fiqnn.integer.modelfile.load`."""
    if isinstance(model, IntGraph):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return load(path / "model.npz" if path.is_dir() else path)
    raise TypeError(f"expected an IntGraph or the path of a model file, got {type(model).__name__}")


def check_input(graph: IntGraph, x_q: np.ndarray) -> np.ndarray:
    """``x_q`` as an array, if it is uint8 images of ``graph``'s input shape; else ValueError."""
    x_q = np.asarray(x_q)
    if x_q.dtype != np.uint8 or x_q.shape[1:] != tuple(graph.in_shape):
        raise ValueError(f"input must be uint8 of shape (N, {', '.join(map(str, graph.in_shape))}), "
                         f"got {x_q.dtype} {x_q.shape}")
    return x_q


def run(graph: IntGraph | str | os.PathLike, x_q: np.ndarray, *, batch_size: int = 250,
        trace: Trace | None = None, progress: bool = False) -> np.ndarray:
    """Run ``graph`` on uint8 images ``x_q`` (N, C, H, W); return int32 logits (N, classes).

    Args:
        graph: the integer network, or its model file (see :func:`as_graph`).
        x_q: uint8 pixel codes, the shape ``graph.in_shape`` per image.
        batch_size: images per step (memory only; results do not depend on it).
        trace: called as ``trace(layer_name, array)`` with every array handed between steps.
        progress: a progress bar on a terminal.
    """
    graph = as_graph(graph)
    x_q = check_input(graph, x_q)
    out = np.empty((len(x_q), graph.num_classes), dtype=np.int32)
    for start in progress_bar(range(0, len(x_q), batch_size), progress=progress, desc="numpy executor",
                              unit="batch"):
        env = {"input": x_q[start:start + batch_size]}
        for node in graph.layers:
            y = run_node([env[src] for src in graph.sources(node)], node)
            env[node.name] = y
            if trace is not None:
                trace(node.name, y)
        out[start:start + batch_size] = y.reshape(len(y), -1)
    return out
