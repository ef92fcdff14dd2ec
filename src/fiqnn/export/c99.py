"""IntGraph -> C99 source for microcontrollers: model.h, model.c, fiqnn_arith.h, main.c, Makefile.

The generated code has no malloc, no float, no libm and no implementation-defined
shift of a negative value. Weights are ``const`` arrays (flash): int8, or, when a
layer has w_bits <= 4, two's-complement codes packed low bits first, two per byte
(4-bit) or four per byte (w_bits <= 2). Activations live in one static arena sized at
export time: two ping-pong regions for layer outputs (stored channels-last, H-W-C),
one for a pooled layer's pre-pool codes, and one row of unpacked weights. The
kernels are plain loops written so that the inner loop is a contiguous u8 x s8 dot
product, which compilers vectorize at -O3.
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
from ..arith import act_range
from ..errors import FiqnnError
from ..graph import IntGraph, IntLayer

HERE = Path(__file__).resolve().parent
CFLAGS = ["-std=c99", "-O3", "-Wall", "-Wextra", "-Werror", "-pedantic"]


class CompilerError(FiqnnError):
    """No C compiler, or the generated source failed to build."""


def layer_shapes(graph: IntGraph) -> list[tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]]:
    """Per layer: input (C, H, W), pre-pool output (O, Ho, Wo), output after pooling."""
    out, (c, h, w) = [], graph.in_shape
    for layer in graph.layers:
        if layer.kind == "fc":
            pre = (layer.out_channels, 1, 1)
            post = pre
        else:
            kh, kw = layer.w_q.shape[2:]
            ho = (h + 2 * layer.padding[0] - layer.dilation[0] * (kh - 1) - 1) // layer.stride[0] + 1
            wo = (w + 2 * layer.padding[1] - layer.dilation[1] * (kw - 1) - 1) // layer.stride[1] + 1
            pre = (layer.out_channels, ho, wo)
            post = pre
            if layer.pool:
                k, s, p = layer.pool
                post = (layer.out_channels, (ho + 2 * p - k) // s + 1, (wo + 2 * p - k) // s + 1)
        out.append(((c, h, w), pre, post))
        c, h, w = post
    return out


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
    """Each layer's weight codes in the order the C kernels read them.

    Activations between layers are stored channels-last (H-W-C), so that the inputs a
    conv output reads form contiguous runs: conv weights become (O, kh, kw, C/groups)
    and an fc layer behind a conv has its columns permuted from the executor's C-H-W
    flattening to H-W-C. The first layer reads the C-H-W input image; when it has more
    than one channel the image is transposed into the arena first.
    """
    out = []
    for layer, ((c, h, w), _, _) in zip(graph.layers, layer_shapes(graph)):
        if layer.kind == "conv":
            out.append(np.ascontiguousarray(layer.w_q.transpose(0, 2, 3, 1)))
        else:
            out.append(np.ascontiguousarray(layer.w_q.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
                                            .reshape(len(layer.w_q), -1)))
    return out


def arena_layout(graph: IntGraph) -> dict[str, int]:
    """Bytes of the static arena: two ping-pong output regions (region1 also holds the
    transposed input image when it has several channels), a pre-pool region, and a row
    of unpacked weights for layers stored packed."""
    shapes = layer_shapes(graph)
    sizes = [int(np.prod(post)) for _, _, post in shapes[:-1]]
    even = max([s for i, s in enumerate(sizes) if i % 2 == 0], default=0)
    odd = max([s for i, s in enumerate(sizes) if i % 2 == 1], default=0)
    if graph.in_shape[0] > 1:
        odd = max(odd, int(np.prod(graph.in_shape)))
    prepool = max([int(np.prod(pre)) for (_, pre, _), layer in zip(shapes, graph.layers) if layer.pool], default=0)
    wrow = max([-(-int(np.prod(layer.w_q.shape[1:])) // 4) * 4 for layer in graph.layers if layer.w_bits <= 4],
               default=0)
    return {"region0": even, "region1": odd, "prepool": prepool, "weight_row": wrow,
            "total": even + odd + prepool + wrow}


def footprint(graph: IntGraph) -> dict[str, int]:
    """Weight bytes as stored (packed), as int8, and the arena size."""
    return {"weight_bytes": int(sum(packed_weights(layer).nbytes for layer in graph.layers)),
            "weight_bytes_int8": int(sum(layer.w_q.size for layer in graph.layers)),
            "param_bytes": int(sum(packed_weights(layer).nbytes + 4 * layer.bias_q.size + 4 * layer.mult.size
                                   + layer.shift.size for layer in graph.layers)),
            "arena_bytes": arena_layout(graph)["total"]}


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    vals = [str(int(v)) for v in values.reshape(-1)]
    lines = [", ".join(vals[i:i + 24]) for i in range(0, len(vals), 24)]
    return f"static const {ctype} {name}[{len(vals)}] = {{\n    " + ",\n    ".join(lines) + "\n};\n"


def model_c(graph: IntGraph) -> str:
    shapes, arena = layer_shapes(graph), arena_layout(graph)
    parts = ['/* Generated by fiqnn from an IntGraph: integer-only inference, bit-exact with the numpy\n'
             ' * reference executor. See docs/arithmetic.md for the equations (E2)-(E7). */\n'
             '#include "model.h"\n#include "fiqnn_arith.h"\n\n'
             f'#if FIQNN_ARITH_VERSION != {graph.arith_version}\n#error "arithmetic version mismatch"\n#endif\n\n']
    descs = []
    for i, (layer, codes, ((c, h, w), (o, ho, wo), (_, ph_, pw_))) in enumerate(
            zip(graph.layers, kernel_codes(graph), shapes)):
        n = f"l{i}"
        bits = code_bits(layer.w_bits)
        parts.append(f"/* layer {layer.name}: {layer.kind}, W{layer.w_bits} stored in {bits} bits, "
                     f"in {layer.in_bits}-bit, {'logits' if layer.a_bits is None else f'out {layer.a_bits}-bit'}"
                     " */\n")
        parts.append(_array("int8_t" if bits == 8 else "uint8_t", f"{n}_w", packed_weights(layer, codes)))
        parts.append(_array("int32_t", f"{n}_bias", layer.bias_q))
        parts.append(_array("int32_t", f"{n}_mult", layer.mult))
        parts.append(_array("uint8_t", f"{n}_shift", layer.shift))
        kh, kw = layer.w_q.shape[2:] if layer.kind == "conv" else (1, 1)
        k, s, p = layer.pool or (0, 1, 0)
        if layer.kind == "fc":
            c, h, w = c * h * w, 1, 1
        descs.append("    {" + ", ".join(str(v) for v in (
            c, h, w, o, ho, wo, kh, kw, *layer.stride, *layer.padding, *layer.dilation, layer.groups,
            bits)) + f", {n}_w, {n}_bias, {n}_mult, {n}_shift, {int(len(layer.mult) > 1)}, "
            f"{0 if layer.a_bits is None else act_range(layer.a_bits)[1]}, {k}, {s}, {p}, {ph_}, {pw_}}}")
    kernels, pool_kernel = _KERNELS.split("@@POOL@@")
    parts.append(kernels + (pool_kernel if any(layer.pool for layer in graph.layers) else ""))
    parts.append(f"static const fiqnn_layer layers[{len(descs)}] = {{\n" + ",\n".join(descs) + "\n};\n\n")
    parts.append(f"static uint8_t arena[{max(arena['total'], 1)}];\n\n")
    prepool = arena["region0"] + arena["region1"]
    pool_branch = (" else if (L->pool_k) {\n"
                   f"            conv_hwc(L, x, arena + {prepool}, 0, wrow);\n"
                   f"            max_pool_hwc(L, arena + {prepool}, out);\n"
                   "        }") if arena["prepool"] else ""
    c, h, w = graph.in_shape
    transpose = ("    transpose_chw(input, region[1]);\n    x = region[1];\n" if c > 1 else "")
    parts.append(_RUN.format(n=len(graph.layers), r1=arena["region0"], pool_branch=pool_branch,
                             transpose=transpose,
                             wrow=f"(int8_t *)(arena + {prepool + arena['prepool']})" if arena["weight_row"] else "0"))
    if c > 1:
        parts.insert(-2, _TRANSPOSE.format(c=c, hw=h * w))
    return "".join(parts)


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

/* (E2) then (E4): conv or fc over H-W-C uint8 codes; writes H-W-C codes, or int32 logits
 * in C-H-W order if qmax == 0. Rows of weights are contiguous runs over (kx, channel). */
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
                    if (iy < 0 || iy >= L->h) continue;
                    xr = xg + (long)iy * L->w * L->c;
                    if (merge) {
                        acc += dot_u8s8(xr + (long)(ix0 + lo) * L->c, wr + lo * cg, (hi - lo) * cg);
                    } else {
                        for (kx = lo; kx < hi; kx++)
                            acc += dot_u8s8(xr + (long)(ix0 + kx * L->dw) * L->c, wr + kx * cg, cg);
                    }
                }
                if (L->qmax == 0)
                    logits[((long)oc * L->ho + oy) * L->wo + ox] = acc;
                else
                    y[((long)oy * L->wo + ox) * L->o + oc] = fiqnn_requantize(acc, mult, shift, L->qmax);
            }
        }
    }
}

@@POOL@@/* (E7) max-pool over H-W-C codes; window cells outside the map are skipped. */
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

_RUN = r"""int fiqnn_run(const uint8_t *input, int32_t *logits)
{{
    uint8_t *region[2];
    const uint8_t *x = input;
    int8_t *wrow = {wrow};
    int i;
    region[0] = arena;
    region[1] = arena + {r1};
    if (input == 0 || logits == 0) return -1;
{transpose}    for (i = 0; i < {n}; i++) {{
        const fiqnn_layer *L = &layers[i];
        uint8_t *out = region[i % 2];
        if (L->qmax == 0) {{
            conv_hwc(L, x, 0, logits, wrow);
        }}{pool_branch} else {{
            conv_hwc(L, x, out, 0, wrow);
        }}
        x = out;
    }}
    return 0;
}}
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


def run_c(graph: IntGraph, x_q: np.ndarray, cc: str | None = None, runner: list[str] | None = None,
          flags: list[str] | None = None) -> np.ndarray:
    """Export, compile and run ``graph`` on uint8 images; int32 logits (N, classes).

    ``runner`` prefixes the command (e.g. ``["qemu-arm", "-L", "/usr/arm-linux-gnueabihf"]``).
    """
    with tempfile.TemporaryDirectory(prefix="fiqnn-c-") as tmp:
        exe = build_c(export_c(graph, tmp), cc, flags)
        images, logits = Path(tmp) / "images.u8", Path(tmp) / "logits.i32"
        np.ascontiguousarray(x_q, dtype=np.uint8).tofile(images)
        res = subprocess.run([*(runner or []), str(exe), str(images), str(logits)], capture_output=True, text=True)
        if res.returncode:
            raise CompilerError(f"compiled model failed: {res.stderr.strip()[:200]}")
        return np.fromfile(logits, dtype="<i4").reshape(len(x_q), graph.num_classes).astype(np.int32)
