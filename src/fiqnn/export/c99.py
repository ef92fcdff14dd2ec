"""IntGraph -> C99 source for microcontrollers: model.h, model.c, fiqnn_arith.h, main.c, Makefile.

The generated code has no malloc, no float, no libm and no implementation-defined
shift of a negative value. Weights are ``const`` arrays (flash): int8, or, when a
layer has w_bits <= 4, two's-complement codes packed low bits first, two per byte
(4-bit) or four per byte (w_bits <= 2); a depthwise conv's are stored (kh, kw, C).
Activations live in one static arena sized at export time (``plan``): each node's output
(stored channels-last, H-W-C) for as long as it is read, a pooled layer's pre-pool codes,
and each layer kernel's scratch while it runs (unpacked weight rows, a depthwise conv's
accumulators, the Arm SIMD32 kernel's int16 window columns); a conv's output may overlap the
rows of its input that its kernels have finished reading (``overlaps``). The kernels
(:mod:`fiqnn.export.c_kernels`, one per node class and code kind) are portable C99: a conv/fc
is register-blocked, four output channels against four output pixels (or one), each window row
a contiguous u8 x s8 (or s8 x s8) run that compilers vectorize at -O3; a depthwise conv runs
across channels; cores with SIMD get kernels of their own (see c_kernels.py). Codes are bytes:
unsigned ones uint8, signed ones their two's-complement int8 byte (stored through uint8_t, read
as int8).
No string of the model file reaches the source: comments and the names of a node's constant
arrays (``n<index>_...``) name nodes by their index.
API::

    int fiqnn_run(const uint8_t *input, int32_t *logits);  /* 0 on success */
    int fiqnn_run_batch(const uint8_t *inputs, long n, int32_t *logits);

``input`` is one image, uint8 codes in C-H-W order; ``logits`` receives
``FIQNN_NUM_CLASSES`` int32 values (``fiqnn_run_batch``: n images one after another, n rows of
logits). Every int32 accumulation is overflow-free by the (E6) proof the IntGraph carries.
Built with ``-DFIQNN_PROFILE``, ``fiqnn_run`` calls the application's
``void fiqnn_node_done(int j)`` after node j (``FIQNN_NUM_NODES`` nodes): the hook the
Cortex-M bench counts instructions with (:mod:`fiqnn.export.cortex_m`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .. import _io
from .._progress import bar as progress_bar
from ..errors import FiqnnError
from ..integer.arith import ARITH_VERSION, act_range, code_range
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
from ..integer.nodes import INPUT_CODE, Code
from . import c_kernels as K

HERE = Path(__file__).resolve().parent
CFLAGS = ["-std=c99", "-O3", "-Wall", "-Wextra", "-Werror", "-pedantic"]
SIMD32_PIXELS, SIMD32_MIN_PIXELS = K.SIMD32_PIXELS, K.SIMD32_MIN_PIXELS


class CompilerError(FiqnnError):
    """No C compiler, or the generated source failed to build."""


def layer_shapes(graph: IntGraph) -> dict[str, tuple[tuple[int, int, int], tuple[int, int, int],
                                                    tuple[int, int, int]]]:
    """Per conv/fc layer name: input (C, H, W), pre-pool output (O, Ho, Wo), output after pooling."""
    shapes = {"input": tuple(graph.in_shape), **node_shapes(graph)}
    out = {}
    for layer in graph.int_layers():
        c, h, w = shapes[graph.sources(layer)[0]]
        post = shapes[layer.name]
        pre = post
        if layer.pool:
            kh, kw = layer.w_q.shape[2:]
            pre = (layer.out_channels,
                   (h + 2 * layer.padding[0] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1,
                   (w + 2 * layer.padding[1] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1)
        out[layer.name] = ((c, h, w), pre, post)
    return out


def layer_macs(graph: IntGraph) -> dict[str, int]:
    """Multiply-accumulates of one image through each conv and fc layer, by name."""
    return {layer.name: int(layer.w_q.size * pre[1] * pre[2]) for layer, (_, pre, _) in
            zip(graph.int_layers(), layer_shapes(graph).values())}


def macs(graph: IntGraph) -> int:
    """Multiply-accumulates of one image through the conv and fc layers."""
    return sum(layer_macs(graph).values())


def code_bits(w_bits: int) -> int:
    """Bits each weight code is stored in: 2 (four per byte), 4 (two per byte) or 8 (int8)."""
    return 2 if w_bits <= 2 else 4 if w_bits <= 4 else 8


def packed_weights(layer: IntLayer, codes: np.ndarray | None = None) -> np.ndarray:
    """The weight bytes as stored: int8, or, when w_bits <= 4, two's-complement codes
    packed low bits first, two (4-bit) or four (2-bit) per byte, each output channel's
    row starting on a byte (padded with zero codes). ``codes`` overrides the order of
    ``layer.w_q`` (the C kernels read a permuted order, see ``kernel_codes``); its rows are
    its first axis."""
    src = layer.w_q if codes is None else codes
    rows = src.reshape(len(src), -1).astype(np.int16)
    bits = code_bits(layer.w_bits)
    if bits == 8:
        return rows.reshape(-1).astype(np.int8)
    per = 8 // bits
    field = (rows & ((1 << bits) - 1)).astype(np.uint8)
    field = np.pad(field, ((0, 0), (0, -field.shape[1] % per))).reshape(-1, per)
    return np.bitwise_or.reduce(field << (np.arange(per, dtype=np.uint8) * bits), axis=1).astype(np.uint8)


def kernel_codes(graph: IntGraph) -> list[np.ndarray]:
    """Each conv/fc layer's weight codes in the order the C kernels read them.

    Activations between layers are stored channels-last (H-W-C), so that the inputs a
    conv output reads form contiguous runs: conv weights become (O, kh, kw, C/groups)
    and an fc layer behind a conv has its columns permuted from the executor's C-H-W
    flattening to H-W-C. The first layer reads the C-H-W input image; when it has more
    than one channel the image is transposed into the arena first.

    A depthwise conv (:func:`depthwise`) is stored (kh * kw, C): one row of C codes per window
    cell, which its kernel reads across channels.
    """
    out = []
    for layer, ((c, h, w), _, _) in zip(graph.int_layers(), layer_shapes(graph).values()):
        if depthwise(layer):
            out.append(np.ascontiguousarray(layer.w_q[:, 0].reshape(len(layer.w_q), -1).T))
        elif layer.kind == "conv":
            out.append(np.ascontiguousarray(layer.w_q.transpose(0, 2, 3, 1)))
        else:
            out.append(np.ascontiguousarray(layer.w_q.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
                                            .reshape(len(layer.w_q), -1)))
    return out


def depthwise(layer: IntLayer) -> bool:
    """A conv with one input channel per group and one group per output channel (C = O = groups)."""
    return layer.kind == "conv" and layer.groups > 1 and layer.w_q.shape[1] == 1 and layer.groups == len(layer.w_q)


def _simd32_group(layer: IntLayer) -> int:
    """Codes per group of the Arm SIMD32 conv kernel that the layer's shape allows: 4 for int8
    weights, 8 for 4-bit ones, when groups is 1; 0 for the portable kernels (2-bit weights,
    grouped and depthwise convs)."""
    bits = code_bits(layer.w_bits)
    if depthwise(layer) or (layer.kind == "conv" and layer.groups != 1) or bits == 2:
        return 0
    return 4 if bits == 8 else 8


def simd32_codes(layer: IntLayer) -> int:
    """A window's codes as the Arm SIMD32 kernels read them: rounded up to a whole group (see
    :func:`_simd32_group`) with zero columns; the weight words read past a row's end meet them,
    and the layer's weight array has padding for them after its last row."""
    return _align(layer.w_q[0].size, _simd32_group(layer))


def simd32(layer: IntLayer, codes: np.ndarray) -> int:
    """The Arm SIMD32 conv kernel a layer takes: 1 for int8 weights, 2 for 4-bit ones whose sums
    times 16 stay inside int32 (the input's largest |code| times a row's sum of |w|), 0 for the
    portable kernels (see :func:`_simd32_group`)."""
    g = _simd32_group(layer)
    if g != 8:
        return int(g == 4)
    lo, hi = code_range(layer.in_bits, layer.in_signed)
    row = int(np.abs(codes.reshape(len(codes), -1).astype(np.int64)).sum(1).max())
    return 2 if 16 * max(-lo, hi) * row <= 2**31 - 1 else 0


def scratch_bytes(layer: IntLayer, pixels: int = SIMD32_MIN_PIXELS) -> int:
    """The arena bytes a conv/fc kernel works in while it runs: a depthwise conv's C int32
    accumulators (and, packed, its kh * kw unpacked rows of C codes); another layer's unpacked
    weight rows, four output channels at a time (none when its weights are int8), or, on Arm
    SIMD32, ``pixels`` output pixels' windows as int16 columns (one pixel's for an fc),
    whichever is more."""
    packed = code_bits(layer.w_bits) < 8
    if depthwise(layer):
        c = len(layer.w_q)
        return 4 * c + (c * layer.w_q[0].size if packed else 0)
    rows = min(4, len(layer.w_q)) * layer.w_q[0].size if packed else 0
    return max(rows, simd32_columns(layer, pixels))


def simd32_columns(layer: IntLayer, pixels: int = SIMD32_MIN_PIXELS) -> int:
    """Bytes of the int16 window columns of the Arm SIMD32 conv kernel: ``pixels`` output
    pixels' windows (an fc: its one pixel's) of :func:`simd32_codes` codes each."""
    if not _simd32_group(layer):
        return 0
    return 2 * simd32_codes(layer) * (1 if layer.kind == "fc" else pixels)


def simd32_kernels(graph: IntGraph, kinds: dict[str, int], pixels: dict[str, int]) -> int:
    """The Arm SIMD32 kernels the layers take, as the bits of ``FIQNN_SIMD32_KERNELS`` (see
    :data:`K.SIMD32_KERNELS`; the C compiles only those in): per kind (``kinds``: each layer's
    :func:`simd32`, 0 for the in-place kernel) the one-channel kernel of each block size a layer
    has (:func:`simd32_pixels`), the two-channel one for blocks of 2 or 1, a last short block's
    kernel as the C picks it."""
    bits, lshapes = 0, layer_shapes(graph)
    for layer in graph.int_layers():
        kind = kinds[layer.name]
        if not kind:
            bits |= K.SIMD32_KERNELS["in place"]
            continue
        most, (_, ho, wo) = pixels[layer.name], lshapes[layer.name][1]
        bits |= K.SIMD32_KERNELS[kind, most if most > 2 else 2]
    for layer in graph.int_layers():
        kind = kinds[layer.name]
        most, (_, ho, wo) = pixels.get(layer.name, 1), lshapes[layer.name][1]
        left = ho * wo % most if ho * wo >= most else ho * wo
        if kind and most > 2 and left:
            four = bits & K.SIMD32_KERNELS[kind, 4]
            bits |= K.SIMD32_KERNELS[kind, 2] if left <= 2 else 0 if (left <= 4 and four) else 0
    return bits


def simd32_pixels(graph: IntGraph, overlap: bool | None = None) -> dict[str, int]:
    """Output pixels per block of the Arm SIMD32 conv kernel, per conv/fc layer it takes (an fc:
    1). More pixels per block widen each weight word once for more of them, and cost int16
    columns in the arena: layer by layer, the most MACs first, the most of :data:`SIMD32_PIXELS`
    that keeps the arena within its size with every layer at :data:`SIMD32_MIN_PIXELS`, or within
    the largest input plus output bytes of one layer (what any plan of disjoint activations needs),
    whichever is more."""
    pixels = {layer.name: 1 if layer.kind == "fc" else SIMD32_MIN_PIXELS
              for layer in graph.int_layers() if _simd32_group(layer)}
    shapes = {"input": tuple(graph.in_shape), **node_shapes(graph)}
    budget = max([_plan(graph, pixels, overlap)["total"]]
                 + [int(np.prod(shapes[layer.name]) + np.prod(shapes[graph.sources(layer)[0]]))
                    for layer in graph.int_layers()])
    macs = layer_macs(graph)
    for name in sorted(pixels, key=lambda n: -macs[n]):
        for more in SIMD32_PIXELS:
            if (pixels[name] != 1 and more > pixels[name]
                    and _plan(graph, {**pixels, name: more}, overlap)["total"] <= budget):
                pixels[name] = more
                break
    return pixels


def cols_bytes(layer: IntLayer) -> int:
    """Bytes of ``fiqnn_cols`` a conv/fc layer needs on a vector core (FIQNN_COLS 8 or 16): the
    int32 sums of a block of K.BLOCK output pixels, their int16 columns of the window's n codes
    and four int16 weight rows (the VNNI kernel uses less: 8 pixels' sums and uint8 columns);
    below K.SMALL_K codes, the most of that and the small kernel's o int32 sums, transposed int16
    weights and one column. Grouped and depthwise convs never take the GEMM, yet count too: the
    code they never run still meets the buffer's declared size in the compiler's bounds analysis."""
    n, o = layer.w_q[0].size, len(layer.w_q)
    small = 4 * o + 2 * n * o + 2 * n if n < K.SMALL_K else 0
    return max(small, K.BLOCK * (4 * _align(o, 16) + 2 * n + 4) + 4 * _align(o, 16) + 8 * n)


def pre_offsets(graph: IntGraph) -> tuple[list[int], int]:
    """Each conv/fc layer's byte offset in ``fiqnn_pre``, the weights rearranged for the x86 VNNI
    kernel (-1: a grouped or depthwise conv, which it does not take), and the buffer's size: per
    layer, its output channels rounded up to 16 times its window codes rounded up to 4, then 24
    bytes per channel (the correction, mult, shift and rounding constant), in 64-byte steps."""
    offsets, at = [], 0
    for layer in graph.int_layers():
        if layer.kind == "conv" and layer.groups != 1:
            offsets.append(-1)
            continue
        offsets.append(at)
        o16 = _align(len(layer.w_q), 16)
        at += _align(o16 * _align(layer.w_q[0].size) + 24 * o16, 64)
    return offsets, at


def vector_buffers(graph: IntGraph) -> dict[str, int]:
    """The bytes of the static buffers a vector-core build adds beside the arena: ``cols``
    (fiqnn_cols, whole int32 words) and ``pre`` (fiqnn_pre, the VNNI weights, whole 64-byte
    registers); each at least one unit, so that the C arrays are never empty."""
    cols = max([cols_bytes(layer) for layer in graph.int_layers()], default=0)
    return {"cols": max(_align(cols), 4), "pre": max(pre_offsets(graph)[1], 64)}


def _align(n: int, to: int = 4) -> int:
    return -(-n // to) * to


def plan(graph: IntGraph, overlap: bool | None = None) -> dict:
    """Where every tensor lives in the static arena.

    Each node's output (codes, one byte each, or int32 accumulators feeding an add) is live from
    the node that makes it to its last reader; a pooled layer's pre-pool codes and its kernel's
    scratch (:func:`scratch_bytes`) live only inside that layer; a multi-channel input image
    gets an H-W-C copy. Offsets are first-fit over those lifetimes, 4-byte aligned, placing the
    tensors in the order they are made and, again, largest first (the smaller total wins, the
    first on a tie); the total is rounded up to whole int32 words (the arena's type). Returns
    ``{"offset": {tensor: bytes}, "total": bytes}``, a tensor being a node name, ``"input"``,
    ``(name, "prepool")`` or ``(name, "scratch")`` (tuples: no name can clash with them), and
    ``"pixels"``: the Arm SIMD32 kernel's pixels per block it was planned for
    (:func:`simd32_pixels`). ``overlap``: None compares plans with and without conv outputs
    over their inputs (:func:`overlaps`) and keeps the smallest; True takes every such overlap
    that is free of other tensors; False none.
    """
    pixels = simd32_pixels(graph, overlap)
    return {**_plan(graph, pixels, overlap), "pixels": pixels}


def _plan(graph: IntGraph, pixels: dict[str, int], overlap: bool | None = None) -> dict:
    shapes = {"input": tuple(graph.in_shape), **node_shapes(graph)}
    pre = {name: p for name, (_, p, _) in layer_shapes(graph).items()}
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.layers):
        for src in graph.sources(node):
            last_use[src] = i
    tensors: list[tuple[str | tuple[str, str], int, int, int]] = []  # (tensor, first, last, bytes)
    if graph.in_shape[0] > 1:
        tensors.append(("input", -1, last_use["input"], int(np.prod(graph.in_shape))))
    for i, node in enumerate(graph.layers):
        if i < len(graph.layers) - 1:  # the last node writes the caller's logits
            size = int(np.prod(shapes[node.name])) * (4 if node.a_bits is None else 1)
            tensors.append((node.name, i, last_use[node.name], size))
        if isinstance(node, IntLayer) and node.pool:
            tensors.append(((node.name, "prepool"), i, i, int(np.prod(pre[node.name]))))
        if isinstance(node, IntLayer) and (scratch := scratch_bytes(node, pixels.get(node.name, 1))):
            tensors.append(((node.name, "scratch"), i, i, scratch))
    if overlap:
        return _least_extent(tensors, overlaps(graph), force=True)
    plans = [_first_fit(tensors), _first_fit(sorted(tensors, key=lambda t: -t[3]))]
    if overlap is None:
        plans.append(_least_extent(tensors, overlaps(graph)))
    return min(plans, key=lambda p: p["total"])


def overlaps(graph: IntGraph) -> dict[str, tuple[str, int]]:
    """The conv layers whose output may overlap the part of their input already consumed: per
    layer name, its input tensor and how many bytes below the input's start the output may begin
    at least. A layer qualifies when its input is the codes of a node that no later node reads,
    it has groups 1, no pooling, and codes out. Every kernel that can run it finishes reading an
    output pixel's inputs, and those of all pixels up to ``lag`` before it, before it writes
    that pixel: the GEMM in blocks of K.BLOCK pixels (the VNNI kernel in 8, Arm SIMD32 in at most
    6), the in-place kernel a row of output pixels at a time (``by_row`` in its layer table, set
    for such a layer). So output pixel p (bytes p O to (p + 1) O of the output) may be written
    over input rows below the first that pixel p - lag's window reads."""
    shapes, last_use = layer_shapes(graph), {}
    nodes = {node.name: node for node in graph.layers}
    for i, node in enumerate(graph.layers):
        for src in graph.sources(node):
            last_use[src] = i
    out = {}
    for i, node in enumerate(graph.layers[:-1]):
        if not (isinstance(node, IntLayer) and node.kind == "conv" and node.groups == 1 and not node.pool
                and node.a_bits is not None):
            continue
        src = graph.sources(node)[0]
        if src == "input" or last_use[src] != i or nodes[src].a_bits is None:
            continue
        (c, _, w), (o, ho, wo), _ = shapes[node.name]
        p = np.arange(ho * wo, dtype=np.int64)
        first = np.maximum(p - max(K.BLOCK - 1, wo - 1), 0)  # the earliest pixel still to read
        rows = np.maximum((first // wo) * node.stride[0] - node.padding[0], 0)
        out[node.name] = (src, _align(int(((p + 1) * o - rows * w * c).max())))
    return out


def overlapping(graph: IntGraph, arena: dict) -> set[str]:
    """The layers whose output overlaps their input in the plan ``arena`` (see :func:`overlaps`)."""
    shapes, off = {"input": tuple(graph.in_shape), **node_shapes(graph)}, arena["offset"]
    out = set()
    for name, (src, _) in overlaps(graph).items():
        if name in off and src in off:
            a, b = off[name], off[src]
            if a < b + int(np.prod(shapes[src])) and b < a + int(np.prod(shapes[name])):
                out.add(name)
    return out


def _least_extent(tensors: list, overlap: dict[str, tuple[str, int]], force: bool = False) -> dict:
    """Each tensor in the order given where it grows the arena least (the lowest such place on a
    tie): beside a live tensor, at 0, or, for a layer's output, ``overlap``'s bytes below its
    input's start, over it (see :func:`overlaps`; ``force``: there whenever that place is free);
    offsets may go below 0 and are shifted to start at 0 at the end."""
    placed: list[tuple[int, int, int, int, object]] = []  # (offset, size, first, last, tensor)
    offset: dict = {}
    lo = hi = 0
    for name, first, last, size in tensors:
        live = [(o, sz, t) for o, sz, f, la, t in placed if not (la < first or f > last)]

        spots = [(at, None) for at in [0] + [_align(o + sz) for o, sz, _ in live]
                 + [o - size - (o - size) % 4 for o, _, _ in live]]
        if name in overlap and overlap[name][0] in offset:
            spots.append((offset[overlap[name][0]] - overlap[name][1], overlap[name][0]))
        free = [at for at, skip in spots if all(at + size <= o or at >= o + sz for o, sz, t in live if t != skip)]
        if force and name in overlap and spots[-1][1] is not None and spots[-1][0] in free:
            at = spots[-1][0]
        else:
            at = min(free, key=lambda a: (max(hi, a + size) - min(lo, a), a))
        offset[name] = at
        placed.append((at, size, first, last, name))
        lo, hi = min(lo, at), max(hi, at + size)
    return {"offset": {t: o - lo for t, o in offset.items()}, "total": _align(hi - lo)}


def _first_fit(tensors: list) -> dict:
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
    offset = {}
    for name, first, last, size in tensors:
        clash = sorted((o, sz) for o, sz, f, la in placed if not (la < first or f > last))
        at = 0
        for o, sz in clash:
            if at + size <= o:
                break
            at = max(at, _align(o + sz))
        offset[name] = at
        placed.append((at, size, first, last))
    end = max([o + sz for o, sz, _, _ in placed], default=0)
    return {"offset": offset, "total": _align(end)}


# Bytes per element of each constant array as the C source stores it (a table: output bytes).
C_BYTES = {"bias_q": 4, "mult": 4, "shift": 1, "table": 1, "index": 4, "offset": 8}


def footprint(graph: IntGraph, overlap: bool | None = None, arena: dict | None = None) -> dict[str, int]:
    """Weight bytes as stored (packed), as int8, all constant bytes, and the arena size (of the plan
    ``arena``, by default :func:`plan`'s)."""
    layers = graph.int_layers()
    stored = int(sum(packed_weights(layer, codes).nbytes for layer, codes in zip(layers, kernel_codes(graph))))
    return {"weight_bytes": stored,
            "weight_bytes_int8": int(sum(layer.w_q.size for layer in layers)),
            "param_bytes": int(stored
                               + sum(C_BYTES[key] * getattr(node, key).size for node in graph.layers
                                     for key in node.ARRAYS if key != "w_q")),
            "arena_bytes": (arena or plan(graph, overlap))["total"]}


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    vals = [str(int(v)) for v in values.reshape(-1)]
    lines = [", ".join(vals[i:i + 24]) for i in range(0, len(vals), 24)]
    return f"static const {ctype} {name}[{len(vals)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"


def double_rounding(graph: IntGraph) -> bool:
    """Whether the graph's (E4) layers round twice (E4d); the C source compiles one rounding for the
    whole model, so a graph that mixes them is refused."""
    kinds = {node.rounding for node in graph.layers if isinstance(node, IntLayer) and node.a_bits is not None}
    if len(kinds) > 1:
        raise FiqnnError("the C export compiles one (E4) rounding for the whole model, and this graph mixes "
                             "single and double rounding")
    return kinds == {"double"}


def model_c(graph: IntGraph, overlap: bool | None = None, arena: dict | None = None) -> str:
    shapes = {"input": tuple(graph.in_shape), **node_shapes(graph)}
    lshapes, arena, pre = layer_shapes(graph), arena or plan(graph, overlap), pre_offsets(graph)[0]
    pixels = arena["pixels"]
    by_row = overlapping(graph, arena)
    off = arena["offset"]
    c, h, w = graph.in_shape
    x = _Emit(graph, off, shapes, lshapes, c == 1)
    where = {node.name: f"node {j}" for j, node in enumerate(graph.layers)} | {"input": "input"}
    # The emitters first: they name the kernels they call and the constant arrays they need.
    body = ["int fiqnn_run(const uint8_t *input, int32_t *logits)", "{",
            "    uint8_t *const A = (uint8_t *)arena;  /* int32 tensors sit at 4-byte aligned offsets */",
            "    if (input == 0 || logits == 0) return -1;", "    (void)A;"]
    prepare = len(body)  # the VNNI weights' preparation goes here if a conv kernel is needed
    if c > 1:
        body.append(f"    transpose_chw(input, A + {off['input']});")
    for j, node in enumerate(graph.layers):
        src = graph.sources(node)
        body.append(f"    /* {where[node.name]} ({node.kind}) <- {', '.join(where[s] for s in src)} */")
        body += C_NODES[type(node)](x, node, src)
        body.append(f"    FIQNN_NODE_DONE({j});")
    body += ["    return 0;", "}", "",
             "int fiqnn_run_batch(const uint8_t *inputs, long n, int32_t *logits)", "{", "    long i;",
             "    if (n < 0) return -1;", "    for (i = 0; i < n; i++)",
             "        if (fiqnn_run(inputs + i * FIQNN_INPUT_SIZE, logits + i * FIQNN_NUM_CLASSES) != 0)"
             " return -1;", "    return 0;", "}", ""]

    if "vnni" in x.needs:
        body[prepare:prepare] = ["#if FIQNN_VNNI", f"    if (!fiqnn_pre_ready) fiqnn_vnni_prepare(layers, {len(pre)});",
                                 "#endif"]
    equations = "(E2)-(E10)" if graph.arith_version == 1 else "(E2)-(E15)"
    parts = ['/* Generated by fiqnn from an IntGraph: integer-only inference, bit-exact with the numpy\n'
             f' * reference executor. See docs/arithmetic.md for the equations {equations}. */\n'
             + ("#define FIQNN_GEMMLOWP_ROUNDING 1  /* (E4d) */\n" if double_rounding(graph) else "")
             + '#include "model.h"\n#include "fiqnn_arith.h"\n\n'
             f'#if FIQNN_ARITH_VERSION != {ARITH_VERSION}\n#error "arithmetic version mismatch"\n#endif\n\n'
             '#ifdef FIQNN_PROFILE\n#define FIQNN_NODE_DONE(j) fiqnn_node_done(j)\n'
             '#else\n#define FIQNN_NODE_DONE(j) ((void)0)\n#endif\n\n']
    descs, kinds, wide = [], {}, False
    for i, (layer, codes) in enumerate(zip(graph.int_layers(), kernel_codes(graph))):
        (c, h, w), (o, ho, wo), (_, ph_, pw_) = lshapes[layer.name]
        n = f"l{i}"
        bits = code_bits(layer.w_bits)
        out = "int32 accumulators" if layer.a_bits is None else f"out {layer.a_bits}-bit{' signed' * layer.signed}"
        parts.append(f"/* {where[layer.name]}: {layer.kind}, W{layer.w_bits} stored in {bits} bits, "
                     f"in {layer.in_bits}-bit{' signed' * layer.in_signed}, {out} */\n")
        weights, simd = packed_weights(layer, codes), simd32(layer, codes)
        kinds[layer.name] = simd
        if simd:  # the SIMD32 kernel's reads past the last row (see simd32_codes)
            weights = np.pad(weights, (0, (simd32_codes(layer) - layer.w_q[0].size) * bits // 8))
            simd |= pixels[layer.name] << 2
        parts.append(_array("int8_t" if bits == 8 else "uint8_t", f"{n}_w", weights))
        parts.append(_array("int32_t", f"{n}_bias", layer.bias_q))
        parts.append(_array("int32_t", f"{n}_mult", layer.mult))
        parts.append(_array("uint8_t", f"{n}_shift", layer.shift))
        k, s_, p = layer.pool or (0, 1, 0)
        if layer.kind == "conv":
            geometry = (*layer.w_q.shape[2:], *layer.stride, *layer.padding, *layer.dilation, layer.groups)
        else:  # a 1x1 conv over the flattened input; an fc has no stride, padding, dilation or groups
            c, h, w, geometry = c * h * w, 1, 1, (1, 1, 1, 1, 0, 0, 1, 1, 1)
        qmax = 0 if layer.a_bits is None else code_range(layer.a_bits, layer.signed)[1]
        dims = (c, h, w, o, ho, wo, *geometry, bits, int(len(layer.mult) > 1), k, s_, p, ph_, pw_, simd,
                int(layer.name in by_row))
        wide |= max(map(abs, dims)) > 2**15 - 1
        descs.append("    {" + ", ".join(str(v) for v in dims[:16])
                     + f", {n}_w, {n}_bias, {n}_mult, {n}_shift, {dims[16]}, {qmax}, "
                     + ", ".join(str(v) for v in dims[17:-1]) + f", {pre[i]}, {dims[-1]}}}")
    signed = any(layer.signed for layer in graph.int_layers())
    qmax_doc = ("2^A - 1 (signed codes: 2^(A-1) - 1), or 0: int32 out" if signed
                else "2^A - 1, or 0 for the logits layer")
    vec = vector_buffers(graph)
    parts.append(f"#define FIQNN_SIMD32_KERNELS {simd32_kernels(graph, kinds, pixels):#x}  /* see c_kernels.py */\n"
                 f"#define FIQNN_COLS_WORDS {vec['cols'] // 4}  /* fiqnn_cols: {vec['cols']} bytes */\n"
                 f"#define FIQNN_PRE_BYTES {vec['pre']}  /* fiqnn_pre (x86 VNNI) */\n\n")
    dim = ("int", "int: some value of this model's table is beyond int16_t") if wide else \
        ("int16_t", "int16_t: every value of this model's table fits (a smaller table in flash)")
    parts += [K.LAYER.substitute(qmax_doc=qmax_doc, dim=dim[0], dim_doc=dim[1]) if name == "layer" else text
              for name, text in K.PIECES.items() if name in x.needs]
    c, h, w = graph.in_shape
    if c > 1:
        parts.append(K.TRANSPOSE.format(c=c, hw=h * w))
    parts += x.decls
    parts.append(f"static const fiqnn_layer layers[{len(descs)}] = {{\n" + ",\n".join(descs) + "\n};\n\n")
    parts.append(f"static int32_t arena[{max(arena['total'] // 4, 1)}];  /* {arena['total']} bytes */\n\n")
    parts.append("\n".join(body))
    return "".join(parts)


class _Emit:
    """What a node's emitter needs: where each tensor lives in the arena, the shapes, the layer
    table's index of each conv/fc layer and each tensor's codes; it collects the kernels the
    emitters call (``need``) and the constant arrays they declare (``array``)."""

    def __init__(self, graph: IntGraph, off: dict, shapes: dict, lshapes: dict, input_in_place: bool):
        self.graph, self.off, self.shapes, self.lshapes = graph, off, shapes, lshapes
        self.index = {layer.name: i for i, layer in enumerate(graph.int_layers())}
        self.number = {node.name: j for j, node in enumerate(graph.layers)}
        self.by_name = {node.name: node for node in graph.layers}
        self.input_in_place = input_in_place  # a one-channel image is read where it is
        self.needs: set[str] = set()
        self.decls: list[str] = []

    def u8(self, name: str) -> str:
        return "input" if name == "input" and self.input_in_place else f"(A + {self.off[name]})"

    def i32(self, name: str) -> str:
        return f"(const int32_t *)(const void *)(A + {self.off[name]})"

    def out(self, node) -> str:
        return f"A + {self.off[node.name]}"

    def code(self, name: str) -> Code:
        """The (bits, signed) of a tensor's codes; None for int32 accumulators."""
        return INPUT_CODE if name == "input" else self.by_name[name].code

    def flip(self, name: str) -> int:
        """What fiqnn_code takes for a tensor's codes: 128 for signed ones, else 0."""
        return 128 if self.code(name)[1] else 0

    def size(self, name: str) -> int:
        return int(np.prod(self.shapes[name]))

    def need(self, piece: str) -> None:
        self.needs.add(piece)
        for dep in K.NEEDS.get(piece, ()):
            self.need(dep)

    def array(self, node, what: str, ctype: str, values: np.ndarray) -> str:
        """Declare a constant array of ``node``, named by its index; returns the name."""
        name = f"n{self.number[node.name]}_{what}"
        self.decls.append(_array(ctype, name, values))
        return name


def _block(ctype: str, fields: tuple, call: str) -> list[str]:
    """A static const descriptor P and the kernel call that reads it."""
    return [f"    {{ static const {ctype} P = {{{', '.join(map(str, fields))}}};", f"      {call}; }}"]


def _emit_layer(x: _Emit, node: IntLayer, src: tuple[str, ...]) -> list[str]:
    """(E2), (E4), (E7): one conv_hwc call on the layer table's entry (and a max-pool); the
    conv kernel of its input's and output's code kinds."""
    L, off = f"&layers[{x.index[node.name]}]", x.off
    conv = (K.dwconv_name if depthwise(node) else K.conv_name)(node.in_signed, node.signed)
    x.need(conv)
    wrow = f"(int8_t *)(A + {off[node.name, 'scratch']})" if (node.name, "scratch") in off else "0"
    inp = f"(const int8_t *)(A + {off[src[0]]})" if node.in_signed else x.u8(src[0])
    if node is x.graph.layers[-1]:
        return [f"    {conv}({L}, {inp}, 0, logits, {wrow});"]
    if node.a_bits is None:
        return [f"    {conv}({L}, {inp}, 0, (int32_t *)(void *)(A + {off[node.name]}), {wrow});"]
    if node.pool and node.signed:  # the max-pool node's kernel, on the pre-pool map
        (o, hp, wp), (k, s_, p) = x.lshapes[node.name][1], node.pool
        x.need("maxpool_codes")
        window = (o, hp, wp, k, k, s_, s_, p, p, *x.shapes[node.name][1:], 128)
        return [f"    {conv}({L}, {inp}, A + {off[node.name, 'prepool']}, 0, {wrow});",
                *_block("fiqnn_window", window, f"max_pool_codes(&P, A + {off[node.name, 'prepool']}, {x.out(node)})")]
    if node.pool:
        x.need("maxpool")
        return [f"    {conv}({L}, {inp}, A + {off[node.name, 'prepool']}, 0, {wrow});",
                f"    max_pool_hwc({L}, A + {off[node.name, 'prepool']}, A + {off[node.name]});"]
    return [f"    {conv}({L}, {inp}, A + {off[node.name]}, 0, {wrow});"]


def _emit_add(x: _Emit, node: IntAdd, src: tuple[str, ...]) -> list[str]:
    """(E9): one term per input (codes or accumulators, and its multiplier), then add_terms, or
    add_terms_s when an input or the output has signed codes."""
    if node.signed or any(x.code(name) is not None and x.code(name)[1] for name in src):
        x.need("add_s")
        body = ["    {", f"        fiqnn_term_s t[{len(src)}];"]
        for j, (name, m) in enumerate(zip(src, node.mult)):
            acc = x.code(name) is None
            body.append(f"        t[{j}].codes = {'0' if acc else x.u8(name)};")
            body.append(f"        t[{j}].acc = {x.i32(name) if acc else '0'};")
            body.append(f"        t[{j}].flip = {0 if acc else x.flip(name)};")
            body.append(f"        t[{j}].mult = {int(m)};")
        lo, hi = code_range(node.a_bits, node.signed)
        body.append(f"        add_terms_s(t, {len(src)}, {x.size(node.name)}L, {int(node.shift[0])}, {lo}, {hi}, "
                    f"{x.out(node)});")
        return body + ["    }"]
    x.need("add")
    body = ["    {", f"        fiqnn_term t[{len(src)}];"]
    for j, (name, m) in enumerate(zip(src, node.mult)):
        acc = x.code(name) is None
        body.append(f"        t[{j}].u8 = {'0' if acc else x.u8(name)};")
        body.append(f"        t[{j}].i32 = {x.i32(name) if acc else '0'};")
        body.append(f"        t[{j}].mult = {int(m)};")
    body.append(f"        add_terms(t, {len(src)}, {int(np.prod(x.shapes[node.name]))}L, {int(node.shift[0])}, "
                f"{act_range(node.a_bits)[1]}, A + {x.off[node.name]});")
    return body + ["    }"]


def _window(x: _Emit, node, src: str) -> tuple:
    """A fiqnn_window: the input map, the window and the output size of a pooling node."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    return (*x.shapes[src], kh, kw, sh, sw, ph, pw, *x.shapes[node.name][1:], x.flip(src))


def _emit_avgpool(x: _Emit, node: IntAvgPool, src: tuple[str, ...]) -> list[str]:
    """(E10): the window geometry and (mult, shift) as a static descriptor, then avg_pool_hwc (the
    version-1 case: one pair, floor mode, count_include_pad, unsigned codes) or avg_pool_codes."""
    if len(node.mult) > 1 or node.ceil_mode or not node.count_include_pad or node.in_signed:
        x.need("avgpool_codes")
        mult, shift = x.array(node, "mult", "int32_t", node.mult), x.array(node, "shift", "uint8_t", node.shift)
        window = "{" + ", ".join(map(str, _window(x, node, src[0]))) + "}"
        fields = (window, int(node.count_include_pad), len(node.mult), mult, shift,
                  *code_range(node.a_bits, node.in_signed))
        return _block("fiqnn_avgpool_d", fields, f"avg_pool_codes(&P, {x.u8(src[0])}, {x.out(node)})")
    x.need("avgpool")
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ci, hi, wi = x.shapes[src[0]]
    _, ho, wo = x.shapes[node.name]
    fields = (ci, hi, wi, kh, kw, sh, sw, ph, pw, ho, wo, int(node.mult[0]), int(node.shift[0]),
              act_range(node.a_bits)[1])
    return [f"    {{ static const fiqnn_avgpool P = {{{', '.join(map(str, fields))}}};",
            f"      avg_pool_hwc(&P, {x.u8(src[0])}, A + {x.off[node.name]}); }}"]


def _emit_maxpool(x: _Emit, node: IntMaxPool, src: tuple[str, ...]) -> list[str]:
    """(E7): max_pool_codes on the window's descriptor."""
    x.need("maxpool_codes")
    return _block("fiqnn_window", _window(x, node, src[0]), f"max_pool_codes(&P, {x.u8(src[0])}, {x.out(node)})")


def _emit_lut(x: _Emit, node: IntLut, src: tuple[str, ...]) -> list[str]:
    """(E11): the table as output bytes, indexed by (b + off) & mask."""
    x.need("lut")
    table = x.array(node, "table", "uint8_t", node.table.astype(np.int64) & 0xFF)
    off, mask = 2 ** (node.in_bits - 1) * node.in_signed, 2**node.in_bits - 1
    return [f"    lut_codes({x.u8(src[0])}, {x.size(node.name)}L, {table}, {off}u, {mask}u, {x.out(node)});"]


def _emit_mul(x: _Emit, node: IntMul, src: tuple[str, ...]) -> list[str]:
    """(E12): mul_codes; g one code per channel (broadcast) or a map like x."""
    x.need("mul")
    c, h, w = x.shapes[src[0]]
    fields = (f"{h * w}L", c, int(x.shapes[src[1]] == x.shapes[src[0]]), x.flip(src[0]), x.flip(src[1]),
              int(node.mult[0]), int(node.shift[0]), *code_range(node.a_bits, node.signed))
    return _block("fiqnn_mul", fields, f"mul_codes(&P, {x.u8(src[0])}, {x.u8(src[1])}, {x.out(node)})")


def _emit_concat(x: _Emit, node: IntConcat, src: tuple[str, ...]) -> list[str]:
    """(E13): one requant_channels per input, into its channels of each output pixel."""
    x.need("requant")
    mult, shift = x.array(node, "mult", "int32_t", node.mult), x.array(node, "shift", "uint8_t", node.shift)
    c_out, h, w = x.shapes[node.name]
    body, at = [], 0
    for j, name in enumerate(src):
        c = x.shapes[name][0]
        fields = (f"{h * w}L", c, c_out, at, x.flip(name), 0, f"{mult} + {j}", f"{shift} + {j}", 0,
                  *code_range(node.a_bits, node.signed))
        body += _block("fiqnn_requant", fields, f"requant_channels(&P, {x.u8(name)}, {x.out(node)})")
        at += c
    return body


def _emit_channels(x: _Emit, node: IntChannels, src: tuple[str, ...]) -> list[str]:
    """(E14): gather_channels by the index array."""
    x.need("gather")
    index = x.array(node, "index", "int32_t", node.index)
    c, h, w = x.shapes[src[0]]
    return [f"    gather_channels({x.u8(src[0])}, {c}, {h * w}L, {index}, {len(node.index)}, {x.out(node)});"]


def _emit_affine(x: _Emit, node: IntAffine, src: tuple[str, ...]) -> list[str]:
    """(E15): requant_channels with a multiplier and offset per channel."""
    x.need("requant")
    mult, shift = x.array(node, "mult", "int32_t", node.mult), x.array(node, "shift", "uint8_t", node.shift)
    offset = x.array(node, "offset", "int64_t", node.offset)
    c, h, w = x.shapes[src[0]]
    fields = (f"{h * w}L", c, c, 0, x.flip(src[0]), int(len(node.mult) > 1), mult, shift, offset,
              *code_range(node.a_bits, node.signed))
    return _block("fiqnn_requant", fields, f"requant_channels(&P, {x.u8(src[0])}, {x.out(node)})")


# One emitter per node class; each names the kernels of c_kernels.PIECES it calls.
C_NODES = {IntLayer: _emit_layer, IntAdd: _emit_add, IntAvgPool: _emit_avgpool, IntMaxPool: _emit_maxpool,
           IntLut: _emit_lut, IntMul: _emit_mul, IntConcat: _emit_concat, IntChannels: _emit_channels,
           IntAffine: _emit_affine}


def export_c(graph: IntGraph, out_dir: str | os.PathLike, overlap: bool | None = None) -> Path:
    """Write model.h, model.c, fiqnn_arith.h, main.c and a Makefile into ``out_dir``. ``overlap``:
    let a conv's output overwrite its input's rows already read where that makes the arena
    smaller (None, the default), wherever allowed (True), or never (False; see :func:`plan`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c, h, w = graph.in_shape
    arena = plan(graph, overlap)  # (once: model.h names its size, model.c lays it out)
    fp = footprint(graph, overlap, arena)
    vec = vector_buffers(graph)
    header = (f"/* Generated by fiqnn. Integer-only inference; ARITH_VERSION {graph.arith_version}.\n"
              f" * Weights {fp['weight_bytes']} bytes (const), "
              f"activation arena {fp['arena_bytes']} bytes (static). Builds for vector cores\n"
              f" * (FIQNN_COLS 8 or 16: x86-64, NEON) add a static GEMM buffer of {vec['cols']} bytes, and with\n"
              f" * AVX-512 VNNI {vec['pre']} bytes of rearranged weights. */\n"
              "#ifndef FIQNN_MODEL_H\n#define FIQNN_MODEL_H\n\n#include <stdint.h>\n\n"
              f"#define FIQNN_INPUT_C {c}\n#define FIQNN_INPUT_H {h}\n#define FIQNN_INPUT_W {w}\n"
              f"#define FIQNN_INPUT_SIZE {c * h * w}\n#define FIQNN_NUM_CLASSES {graph.num_classes}\n"
              f"#define FIQNN_ARENA_BYTES {max(fp['arena_bytes'], 1)}\n\n"
              f"#define FIQNN_NUM_NODES {len(graph.layers)}\n\n"
              "/* Run one image (uint8 codes, C-H-W) -> int32 logits. Returns 0, or -1 on a NULL pointer. */\n"
              "int fiqnn_run(const uint8_t *input, int32_t *logits);\n\n"
              "/* Run n images, FIQNN_INPUT_SIZE bytes apart -> n x FIQNN_NUM_CLASSES logits. 0, or -1. */\n"
              "int fiqnn_run_batch(const uint8_t *inputs, long n, int32_t *logits);\n\n"
              "#ifdef FIQNN_PROFILE\n"
              "/* Built with -DFIQNN_PROFILE, fiqnn_run calls this after node j (0 .. FIQNN_NUM_NODES - 1)\n"
              " * finishes; the application defines it (a cycle or instruction counter, say). */\n"
              "void fiqnn_node_done(int j);\n#endif\n\n#endif\n")
    _io.write_text(out / "model.h", header)
    _io.write_text(out / "model.c", model_c(graph, overlap, arena))
    _io.write_text(out / "fiqnn_arith.h", (HERE / "fiqnn_arith.h").read_text())
    _io.write_text(out / "main.c", K.MAIN)
    _io.write_text(out / "Makefile", "CC ?= cc\nCFLAGS ?= " + " ".join(CFLAGS) + "\n\n"
                   "fiqnn_main: main.c model.c model.h fiqnn_arith.h\n"
                   "\t$(CC) $(CFLAGS) -o $@ main.c model.c\n\nclean:\n\trm -f fiqnn_main\n")
    return out


def find_compiler(cc: str | None = None) -> str:
    for name in ([cc] if cc else ["cc", "gcc", "clang"]):
        path = shutil.which(name)
        if path:
            return path
    raise CompilerError(f"no C compiler found ({cc or 'cc, gcc or clang'}); install gcc or pass another compiler")


def build_c(src_dir: str | os.PathLike, cc: str | None = None, flags: list[str] | None = None,
            exe: str = "fiqnn_main") -> Path:
    """Compile the exported source with the strict flags; return the executable."""
    src = Path(src_dir)
    cmd = [find_compiler(cc), *(flags or CFLAGS), "-o", str(src / exe), str(src / "main.c"), str(src / "model.c")]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        first = (res.stderr.strip().splitlines() or ["(no output)"])[0]
        raise CompilerError(f"C build failed: {first}")
    return src / exe


def run_c(graph: IntGraph | str | os.PathLike, x_q: np.ndarray, cc: str | None = None,
          runner: list[str] | None = None, flags: list[str] | None = None, progress: bool = False,
          chunk: int = 1000, overlap: bool | None = None) -> np.ndarray:
    """Export, compile and run ``graph`` on uint8 images; int32 logits (N, classes).

    ``graph`` is what :func:`fiqnn.run` and :func:`fiqnn.export.onnx.run_onnx` take: an IntGraph
    or its model file (see :func:`fiqnn.integer.execute.as_graph`). ``runner`` prefixes the command
    (e.g. ``["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]``). The compiled model runs on
    ``chunk`` images at a time, so that ``progress`` can show a bar. ``overlap``: the arena plan's
    (:func:`export_c`).
    """
    graph = as_graph(graph)
    x_q = check_input(graph, x_q)
    with tempfile.TemporaryDirectory(prefix="fiqnn-c-") as tmp:
        exe = build_c(export_c(graph, tmp, overlap), cc, flags)
        images, logits = Path(tmp) / "images.u8", Path(tmp) / "logits.i32"
        out = []
        for start in progress_bar(range(0, len(x_q), chunk), progress=progress, desc="compiled C", unit="chunk"):
            part = np.ascontiguousarray(x_q[start:start + chunk])
            part.tofile(images)
            res = subprocess.run([*(runner or []), str(exe), str(images), str(logits)], capture_output=True,
                                 text=True)
            if res.returncode:
                raise CompilerError(f"compiled model failed: {res.stderr.strip()[:200]}")
            out.append(np.fromfile(logits, dtype="<i4").reshape(len(part), graph.num_classes).astype(np.int32))
        return np.concatenate(out) if out else np.empty((0, graph.num_classes), np.int32)
