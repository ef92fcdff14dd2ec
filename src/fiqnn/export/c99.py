"""IntGraph -> C99 source for microcontrollers: model.h, model.c, fiqnn_arith.h, main.c, Makefile.

The generated code has no malloc, no float, no libm and no implementation-defined
shift of a negative value. Weights are ``const`` arrays (flash): int8, or, when a
layer has w_bits <= 4, two's-complement codes packed low bits first, two per byte
(4-bit) or four per byte (w_bits <= 2). Activations live in one static arena sized at
export time (``plan``): each node's output (stored channels-last, H-W-C) for as long as
it is read, a pooled layer's pre-pool codes, and one row of unpacked weights. The
kernels are plain loops written so that the inner loop is a contiguous u8 x s8 dot
product, which compilers vectorize at -O3. No string of the model file reaches the
source: comments name nodes by their index.
API::

    int fiqnn_run(const uint8_t *input, int32_t *logits);  /* 0 on success */

``input`` is one image, uint8 codes in C-H-W order; ``logits`` receives
``FIQNN_NUM_CLASSES`` int32 values. Every int32 accumulation is overflow-free by
the (E6) proof the IntGraph carries.
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
from ..integer.arith import act_range
from ..integer.execute import as_graph, check_input
from ..integer.graph import IntAdd, IntAvgPool, IntGraph, IntLayer, node_shapes

HERE = Path(__file__).resolve().parent
CFLAGS = ["-std=c99", "-O3", "-Wall", "-Wextra", "-Werror", "-pedantic"]


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


def macs(graph: IntGraph) -> int:
    """Multiply-accumulates of one image through the conv and fc layers."""
    return sum(layer.w_q.size * pre[1] * pre[2] for layer, (_, pre, _) in
               zip(graph.int_layers(), layer_shapes(graph).values()))


def code_bits(w_bits: int) -> int:
    """Bits each weight code is stored in: 2 (four per byte), 4 (two per byte) or 8 (int8)."""
    return 2 if w_bits <= 2 else 4 if w_bits <= 4 else 8


def packed_weights(layer: IntLayer, codes: np.ndarray | None = None) -> np.ndarray:
    """The weight bytes as stored: int8, or, when w_bits <= 4, two's-complement codes
    packed low bits first, two (4-bit) or four (2-bit) per byte, each output channel's
    row starting on a byte (padded with zero codes). ``codes`` overrides the order of
    ``layer.w_q`` (the C kernels read a permuted order, see ``kernel_codes``)."""
    rows = (layer.w_q if codes is None else codes).reshape(len(layer.w_q), -1).astype(np.int16)
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
    """
    out = []
    for layer, ((c, h, w), _, _) in zip(graph.int_layers(), layer_shapes(graph).values()):
        if layer.kind == "conv":
            out.append(np.ascontiguousarray(layer.w_q.transpose(0, 2, 3, 1)))
        else:
            out.append(np.ascontiguousarray(layer.w_q.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
                                            .reshape(len(layer.w_q), -1)))
    return out


def _align(n: int) -> int:
    return -(-n // 4) * 4


def plan(graph: IntGraph) -> dict:
    """Where every tensor lives in the static arena.

    Each node's output (uint8 codes, or int32 accumulators feeding an add) is live from
    the node that makes it to its last reader; a pooled layer's pre-pool codes live only
    inside that layer; a multi-channel input image gets an H-W-C copy. Offsets are
    first-fit over those lifetimes, 4-byte aligned; one row of unpacked weights sits at
    the end, and the total is rounded up to whole int32 words (the arena's type). Returns
    ``{"offset": {tensor: bytes}, "weight_row": (offset, size), "total": bytes}``, a tensor
    being a node name, ``"input"`` or ``(name, "prepool")`` (a tuple: no name can clash with it).
    """
    shapes = {"input": tuple(graph.in_shape), **node_shapes(graph)}
    pre = {name: p for name, (_, p, _) in layer_shapes(graph).items()}
    index = {node.name: i for i, node in enumerate(graph.layers)}
    last_use: dict[str, int] = {}
    for i, node in enumerate(graph.layers):
        for src in graph.sources(node):
            last_use[src] = i
    tensors: list[tuple[str | tuple[str, str], int, int, int]] = []  # (tensor, first, last, bytes)
    if graph.in_shape[0] > 1:
        tensors.append(("input", -1, last_use["input"], int(np.prod(graph.in_shape))))
    for node in graph.layers[:-1]:
        i = index[node.name]
        size = int(np.prod(shapes[node.name])) * (4 if node.a_bits is None else 1)
        tensors.append((node.name, i, last_use[node.name], size))
        if isinstance(node, IntLayer) and node.pool:
            tensors.append(((node.name, "prepool"), i, i, int(np.prod(pre[node.name]))))
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
    wrow = max([layer.w_q[0].size for layer in graph.int_layers() if layer.w_bits <= 4], default=0)
    return {"offset": offset, "weight_row": (_align(end), wrow), "total": _align(_align(end) + wrow)}


def footprint(graph: IntGraph) -> dict[str, int]:
    """Weight bytes as stored (packed), as int8, and the arena size."""
    layers = graph.int_layers()
    return {"weight_bytes": int(sum(packed_weights(layer).nbytes for layer in layers)),
            "weight_bytes_int8": int(sum(layer.w_q.size for layer in layers)),
            "param_bytes": int(sum(packed_weights(layer).nbytes + 4 * layer.bias_q.size for layer in layers)
                               + sum(4 * node.mult.size + node.shift.size for node in graph.layers)),
            "arena_bytes": plan(graph)["total"]}


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    vals = [str(int(v)) for v in values.reshape(-1)]
    lines = [", ".join(vals[i:i + 24]) for i in range(0, len(vals), 24)]
    return f"static const {ctype} {name}[{len(vals)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"


def model_c(graph: IntGraph) -> str:
    shapes = {"input": tuple(graph.in_shape), **node_shapes(graph)}
    lshapes, arena = layer_shapes(graph), plan(graph)
    off = arena["offset"]
    by_name = {node.name: node for node in graph.layers}
    where = {node.name: f"node {j}" for j, node in enumerate(graph.layers)} | {"input": "input"}
    parts = ['/* Generated by fiqnn from an IntGraph: integer-only inference, bit-exact with the numpy\n'
             ' * reference executor. See docs/arithmetic.md for the equations (E2)-(E10). */\n'
             '#include "model.h"\n#include "fiqnn_arith.h"\n\n'
             f'#if FIQNN_ARITH_VERSION != {graph.arith_version}\n#error "arithmetic version mismatch"\n#endif\n\n']
    descs, index = [], {}
    for i, (layer, codes) in enumerate(zip(graph.int_layers(), kernel_codes(graph))):
        (c, h, w), (o, ho, wo), (_, ph_, pw_) = lshapes[layer.name]
        n, index[layer.name] = f"l{i}", i
        bits = code_bits(layer.w_bits)
        parts.append(f"/* {where[layer.name]}: {layer.kind}, W{layer.w_bits} stored in {bits} bits, "
                     f"in {layer.in_bits}-bit, "
                     f"{'int32 accumulators' if layer.a_bits is None else f'out {layer.a_bits}-bit'} */\n")
        parts.append(_array("int8_t" if bits == 8 else "uint8_t", f"{n}_w", packed_weights(layer, codes)))
        parts.append(_array("int32_t", f"{n}_bias", layer.bias_q))
        parts.append(_array("int32_t", f"{n}_mult", layer.mult))
        parts.append(_array("uint8_t", f"{n}_shift", layer.shift))
        k, s_, p = layer.pool or (0, 1, 0)
        if layer.kind == "conv":
            geometry = (*layer.w_q.shape[2:], *layer.stride, *layer.padding, *layer.dilation, layer.groups)
        else:  # a 1x1 conv over the flattened input; an fc has no stride, padding, dilation or groups
            c, h, w, geometry = c * h * w, 1, 1, (1, 1, 1, 1, 0, 0, 1, 1, 1)
        descs.append("    {" + ", ".join(str(v) for v in (c, h, w, o, ho, wo, *geometry, bits))
                     + f", {n}_w, {n}_bias, {n}_mult, {n}_shift, {int(len(layer.mult) > 1)}, "
                     f"{0 if layer.a_bits is None else act_range(layer.a_bits)[1]}, {k}, {s_}, {p}, {ph_}, {pw_}}}")
    parts.append(_KERNELS)
    if any(layer.pool for layer in graph.int_layers()):
        parts.append(_MAXPOOL)
    kinds = {type(node) for node in graph.layers}
    parts += [C_NODES[kind][1] for kind in C_NODES if kind in kinds and C_NODES[kind][1]]
    c, h, w = graph.in_shape
    if c > 1:
        parts.append(_TRANSPOSE.format(c=c, hw=h * w))
    parts.append(f"static const fiqnn_layer layers[{len(descs)}] = {{\n" + ",\n".join(descs) + "\n};\n\n")
    parts.append(f"static int32_t arena[{max(arena['total'] // 4, 1)}];  /* {arena['total']} bytes */\n\n")

    x = _Emit(graph, off, shapes, index, by_name, c == 1)
    wrow_off, wrow_size = arena["weight_row"]
    body = ["int fiqnn_run(const uint8_t *input, int32_t *logits)", "{",
            "    uint8_t *const A = (uint8_t *)arena;  /* int32 tensors sit at 4-byte aligned offsets */",
            f"    int8_t *const wrow = {f'(int8_t *)(A + {wrow_off})' if wrow_size else '0'};",
            "    if (input == 0 || logits == 0) return -1;", "    (void)A;", "    (void)wrow;"]
    if c > 1:
        body.append(f"    transpose_chw(input, A + {off['input']});")
    for node in graph.layers:
        src = graph.sources(node)
        body.append(f"    /* {where[node.name]} ({node.kind}) <- {', '.join(where[s] for s in src)} */")
        body += C_NODES[type(node)][0](x, node, src)
    body += ["    return 0;", "}", ""]
    parts.append("\n".join(body))
    return "".join(parts)


class _Emit:
    """What a node's emitter needs: where each tensor lives in the arena, the shapes, and the
    layer table's index of each conv/fc layer."""

    def __init__(self, graph: IntGraph, off: dict, shapes: dict, index: dict, by_name: dict, input_in_place: bool):
        self.graph, self.off, self.shapes, self.index, self.by_name = graph, off, shapes, index, by_name
        self.input_in_place = input_in_place  # a one-channel image is read where it is

    def u8(self, name: str) -> str:
        return "input" if name == "input" and self.input_in_place else f"(A + {self.off[name]})"

    def i32(self, name: str) -> str:
        return f"(const int32_t *)(const void *)(A + {self.off[name]})"


def _emit_layer(x: _Emit, node: IntLayer, src: tuple[str, ...]) -> list[str]:
    """(E2), (E4), (E7): one conv_hwc call on the layer table's entry (and a max-pool)."""
    L, off = f"&layers[{x.index[node.name]}]", x.off
    if node is x.graph.layers[-1]:
        return [f"    conv_hwc({L}, {x.u8(src[0])}, 0, logits, wrow);"]
    if node.a_bits is None:
        return [f"    conv_hwc({L}, {x.u8(src[0])}, 0, (int32_t *)(void *)(A + {off[node.name]}), wrow);"]
    if node.pool:
        return [f"    conv_hwc({L}, {x.u8(src[0])}, A + {off[node.name, 'prepool']}, 0, wrow);",
                f"    max_pool_hwc({L}, A + {off[node.name, 'prepool']}, A + {off[node.name]});"]
    return [f"    conv_hwc({L}, {x.u8(src[0])}, A + {off[node.name]}, 0, wrow);"]


def _emit_add(x: _Emit, node: IntAdd, src: tuple[str, ...]) -> list[str]:
    """(E9): one term per input (codes or accumulators, and its multiplier), then add_terms."""
    body = ["    {", f"        fiqnn_term t[{len(src)}];"]
    for j, (name, m) in enumerate(zip(src, node.mult)):
        acc = name != "input" and x.by_name[name].a_bits is None
        body.append(f"        t[{j}].u8 = {'0' if acc else x.u8(name)};")
        body.append(f"        t[{j}].i32 = {x.i32(name) if acc else '0'};")
        body.append(f"        t[{j}].mult = {int(m)};")
    body.append(f"        add_terms(t, {len(src)}, {int(np.prod(x.shapes[node.name]))}L, {int(node.shift[0])}, "
                f"{act_range(node.a_bits)[1]}, A + {x.off[node.name]});")
    return body + ["    }"]


def _emit_avgpool(x: _Emit, node: IntAvgPool, src: tuple[str, ...]) -> list[str]:
    """(E10): the window geometry and (mult, shift) as a static descriptor, then avg_pool_hwc."""
    (kh, kw), (sh, sw), (ph, pw) = node.kernel, node.stride, node.padding
    ci, hi, wi = x.shapes[src[0]]
    _, ho, wo = x.shapes[node.name]
    fields = (ci, hi, wi, kh, kw, sh, sw, ph, pw, ho, wo, int(node.mult[0]), int(node.shift[0]),
              act_range(node.a_bits)[1])
    return [f"    {{ static const fiqnn_avgpool P = {{{', '.join(map(str, fields))}}};",
            f"      avg_pool_hwc(&P, {x.u8(src[0])}, A + {x.off[node.name]}); }}"]


_KERNELS = r"""typedef struct {
    int c, h, w;          /* input, stored H-W-C (fc: c = flattened size, h = w = 1) */
    int o, ho, wo;        /* output before pooling */
    int kh, kw, sh, sw, ph, pw, dh, dw, groups;
    int code_bits;        /* 8: int8 weights; 4 or 2: packed two's-complement codes, low bits first */
    const void *weights;  /* (O, kh, kw, C/groups) */
    const int32_t *bias, *mult;
    const uint8_t *shift;
    int per_channel;      /* one (mult, shift) per output channel */
    int32_t qmax;         /* 2^A - 1, or 0 for the logits layer */
    int pool_k, pool_s, pool_p, pool_ho, pool_wo;
} fiqnn_layer;

/* The n weight codes of output channel oc: the int8 array itself, or unpacked into row
 * (each packed row starts on a byte; a field f of b bits is the code (f ^ 2^(b-1)) - 2^(b-1)). */
static const int8_t *weight_row(const fiqnn_layer *L, int oc, int n, int8_t *row)
{
    const uint8_t *p;
    int i, nbytes;
    if (L->code_bits == 8)
        return (const int8_t *)L->weights + (long)oc * n;
    nbytes = (n * L->code_bits + 7) / 8;
    p = (const uint8_t *)L->weights + (long)oc * nbytes;
    if (L->code_bits == 4) {
        for (i = 0; i < n; i++)
            row[i] = (int8_t)((int)(((unsigned)(p[i >> 1] >> ((i & 1) * 4)) & 15u) ^ 8u) - 8);
    } else {
        for (i = 0; i < n; i++)
            row[i] = (int8_t)((int)(((unsigned)(p[i >> 2] >> ((i & 3) * 2)) & 3u) ^ 2u) - 2);
    }
    return row;
}

/* Sum of x[i] * w[i]: a subset of the terms (E6) bounds, so it stays inside int32. */
static int32_t dot_u8s8(const uint8_t *x, const int8_t *w, int n)
{
    int32_t acc = 0;
    int i;
    for (i = 0; i < n; i++)
        acc += (int32_t)x[i] * (int32_t)w[i];
    return acc;
}

/* (E2) then (E4): conv or fc over H-W-C uint8 codes; writes H-W-C codes, or, if qmax == 0,
 * the H-W-C int32 accumulators (the logits, or a residual branch for an add).
 * Rows of weights are contiguous runs over (kx, channel). */
static void conv_hwc(const fiqnn_layer *L, const uint8_t *x, uint8_t *y, int32_t *logits, int8_t *wrow)
{
    int cg = L->c / L->groups, og = L->o / L->groups, n = L->kh * L->kw * cg;
    int merge = L->dw == 1 && L->groups == 1;  /* a whole kx window is one contiguous run */
    int oc, oy, ox, ky, kx;
    for (oc = 0; oc < L->o; oc++) {
        const int8_t *w = weight_row(L, oc, n, wrow);
        const uint8_t *xg = x + (oc / og) * cg;
        int32_t mult = L->mult[L->per_channel ? oc : 0];
        int shift = L->shift[L->per_channel ? oc : 0];
        for (oy = 0; oy < L->ho; oy++) {
            for (ox = 0; ox < L->wo; ox++) {
                int iy0 = oy * L->sh - L->ph, ix0 = ox * L->sw - L->pw, lo = 0, hi = L->kw;
                int32_t acc = L->bias[oc];  /* (E6): no partial sum leaves int32 */
                while (lo < hi && ix0 + lo * L->dw < 0) lo++;        /* zero padding: skip */
                while (hi > lo && ix0 + (hi - 1) * L->dw >= L->w) hi--;
                for (ky = 0; ky < L->kh; ky++) {
                    int iy = iy0 + ky * L->dh;
                    const uint8_t *xr;
                    const int8_t *wr = w + (long)ky * L->kw * cg;
                    if (iy < 0 || iy >= L->h || lo == hi) continue;  /* all padding: form no pointer outside x */
                    xr = xg + (long)iy * L->w * L->c;
                    if (merge) {
                        acc += dot_u8s8(xr + (long)(ix0 + lo) * L->c, wr + lo * cg, (hi - lo) * cg);
                    } else {
                        for (kx = lo; kx < hi; kx++)
                            acc += dot_u8s8(xr + (long)(ix0 + kx * L->dw) * L->c, wr + kx * cg, cg);
                    }
                }
                if (L->qmax == 0)
                    logits[((long)oy * L->wo + ox) * L->o + oc] = acc;
                else
                    y[((long)oy * L->wo + ox) * L->o + oc] = fiqnn_requantize(acc, mult, shift, L->qmax);
            }
        }
    }
}

"""

_MAXPOOL = r"""/* (E7) max-pool over H-W-C codes; window cells outside the map are skipped. */
static void max_pool_hwc(const fiqnn_layer *L, const uint8_t *x, uint8_t *y)
{
    int c, oy, ox, ky, kx;
    for (oy = 0; oy < L->pool_ho; oy++)
        for (ox = 0; ox < L->pool_wo; ox++) {
            uint8_t *m = y + ((long)oy * L->pool_wo + ox) * L->o;
            for (c = 0; c < L->o; c++)
                m[c] = 0;
            for (ky = 0; ky < L->pool_k; ky++) {
                int iy = oy * L->pool_s - L->pool_p + ky;
                if (iy < 0 || iy >= L->ho) continue;
                for (kx = 0; kx < L->pool_k; kx++) {
                    int ix = ox * L->pool_s - L->pool_p + kx;
                    const uint8_t *v;
                    if (ix < 0 || ix >= L->wo) continue;
                    v = x + ((long)iy * L->wo + ix) * L->o;
                    for (c = 0; c < L->o; c++)
                        m[c] = v[c] > m[c] ? v[c] : m[c];
                }
            }
        }
}

"""

_TRANSPOSE = r"""/* The C-H-W input image -> H-W-C. */
static void transpose_chw(const uint8_t *in, uint8_t *out)
{{
    int c, i;
    for (c = 0; c < {c}; c++)
        for (i = 0; i < {hw}; i++)
            out[(long)i * {c} + c] = in[(long)c * {hw} + i];
}}

"""

_ADD = r"""/* One input of an add: uint8 codes or int32 accumulators, and its multiplier. */
typedef struct {
    const uint8_t *u8;
    const int32_t *i32;
    int32_t mult;
} fiqnn_term;

/* (E9) y = clamp(rshift_round(sum_j v_j * mult_j, shift), 0, qmax) over n elements, in int64
 * (|sum| < 2^62 is proven when the graph is built). */
static void add_terms(const fiqnn_term *t, int k, long n, int shift, int32_t qmax, uint8_t *y)
{
    long i;
    int j;
    for (i = 0; i < n; i++) {
        int64_t sum = 0, r;
        for (j = 0; j < k; j++)
            sum += (int64_t)(t[j].u8 ? (int32_t)t[j].u8[i] : t[j].i32[i]) * t[j].mult;
        r = fiqnn_rshift_round(sum, shift);
        y[i] = (uint8_t)(r < 0 ? 0 : (r > qmax ? qmax : r));
    }
}

"""

_AVGPOOL = r"""typedef struct {
    int c, h, w, kh, kw, sh, sw, ph, pw, ho, wo;
    int32_t mult;
    int shift;
    int32_t qmax;
} fiqnn_avgpool;

/* (E10) window sums of H-W-C codes (cells outside the map count as code 0), then
 * clamp(rshift_round(sum * mult, shift), 0, qmax). */
static void avg_pool_hwc(const fiqnn_avgpool *P, const uint8_t *x, uint8_t *y)
{
    int c, oy, ox, ky, kx;
    for (oy = 0; oy < P->ho; oy++)
        for (ox = 0; ox < P->wo; ox++)
            for (c = 0; c < P->c; c++) {
                int64_t sum = 0, r;
                for (ky = 0; ky < P->kh; ky++) {
                    int iy = oy * P->sh - P->ph + ky;
                    if (iy < 0 || iy >= P->h) continue;
                    for (kx = 0; kx < P->kw; kx++) {
                        int ix = ox * P->sw - P->pw + kx;
                        if (ix < 0 || ix >= P->w) continue;
                        sum += x[((long)iy * P->w + ix) * P->c + c];
                    }
                }
                r = fiqnn_rshift_round(sum * P->mult, P->shift);
                y[((long)oy * P->wo + ox) * P->c + c] = (uint8_t)(r < 0 ? 0 : (r > P->qmax ? P->qmax : r));
            }
}

"""

_MAIN = r"""/* Harness: read N images (raw uint8, C-H-W each) from argv[1], write N x FIQNN_NUM_CLASSES
 * int32 logits (native byte order) to argv[2]. */
#include <stdio.h>
#include "model.h"

int main(int argc, char **argv)
{
    static uint8_t image[FIQNN_INPUT_SIZE];
    int32_t logits[FIQNN_NUM_CLASSES];
    FILE *in, *out;
    long n = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: %s IMAGES.u8 LOGITS.i32\n", argv[0]);
        return 2;
    }
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (in == NULL || out == NULL) {
        fprintf(stderr, "cannot open %s or %s\n", argv[1], argv[2]);
        return 2;
    }
    while (fread(image, 1, sizeof image, in) == sizeof image) {
        if (fiqnn_run(image, logits) != 0 || fwrite(logits, sizeof logits[0], FIQNN_NUM_CLASSES, out)
                                                 != FIQNN_NUM_CLASSES) {
            fprintf(stderr, "inference failed at image %ld\n", n);
            return 1;
        }
        n++;
    }
    fclose(in);
    return fclose(out) == 0 ? 0 : 1;
}
"""


# One emitter per node class, and the C kernels it calls beyond conv_hwc (None: nothing more).
C_NODES = {IntLayer: (_emit_layer, None), IntAdd: (_emit_add, _ADD), IntAvgPool: (_emit_avgpool, _AVGPOOL)}


def export_c(graph: IntGraph, out_dir: str | os.PathLike) -> Path:
    """Write model.h, model.c, fiqnn_arith.h, main.c and a Makefile into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c, h, w = graph.in_shape
    fp = footprint(graph)
    header = (f"/* Generated by fiqnn. Integer-only inference; ARITH_VERSION {graph.arith_version}.\n"
              f" * Weights {fp['weight_bytes']} bytes (const), "
              f"activation arena {fp['arena_bytes']} bytes (static). */\n"
              "#ifndef FIQNN_MODEL_H\n#define FIQNN_MODEL_H\n\n#include <stdint.h>\n\n"
              f"#define FIQNN_INPUT_C {c}\n#define FIQNN_INPUT_H {h}\n#define FIQNN_INPUT_W {w}\n"
              f"#define FIQNN_INPUT_SIZE {c * h * w}\n#define FIQNN_NUM_CLASSES {graph.num_classes}\n"
              f"#define FIQNN_ARENA_BYTES {max(fp['arena_bytes'], 1)}\n\n"
              "/* Run one image (uint8 codes, C-H-W) -> int32 logits. Returns 0, or -1 on a NULL pointer. */\n"
              "int fiqnn_run(const uint8_t *input, int32_t *logits);\n\n#endif\n")
    _io.write_text(out / "model.h", header)
    _io.write_text(out / "model.c", model_c(graph))
    _io.write_text(out / "fiqnn_arith.h", (HERE / "fiqnn_arith.h").read_text())
    _io.write_text(out / "main.c", _MAIN)
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
          chunk: int = 1000) -> np.ndarray:
    """Export, compile and run ``graph`` on uint8 images; int32 logits (N, classes).

    ``graph`` is what :func:`fiqnn.run` and :func:`fiqnn.export.onnx.run_onnx` take: an IntGraph
    or its model file (see :func:`fiqnn.integer.execute.as_graph`). ``runner`` prefixes the command
    (e.g. ``["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]``). The compiled model runs on
    ``chunk`` images at a time, so that ``progress`` can show a bar.
    """
    graph = as_graph(graph)
    x_q = check_input(graph, x_q)
    with tempfile.TemporaryDirectory(prefix="fiqnn-c-") as tmp:
        exe = build_c(export_c(graph, tmp), cc, flags)
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
