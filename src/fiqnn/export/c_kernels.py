"""The C text of the C99 export (:mod:`fiqnn.export.c99`): types, kernels, the harness.

:data:`PIECES` holds every kernel of ``model.c`` by name, in the order the source lists them;
an emitter names the pieces it calls (:data:`NEEDS` adds what a piece itself uses) and
``model.c`` gets exactly those, so it has no unused static function. The conv kernel is one
template (:data:`CONV`) instantiated per code kind of its input and output: ``conv_hwc``
(uint8 in, unsigned codes out, the only one a graph without signed codes uses), ``conv_hwc_us``,
``conv_hwc_su``, ``conv_hwc_ss`` (``s``: int8 input codes / signed output codes); the depthwise
kernel (:data:`DWCONV`) likewise (``dwconv_hwc...``).

Codes are bytes: an unsigned code is its uint8, a signed one its two's-complement int8, stored
through ``uint8_t`` (the conversion of a value in [-128, 127] to uint8_t is defined: modulo 256)
and read as ``fiqnn_code(b, flip)`` with ``flip`` 128 (or through ``const int8_t *`` in a dot
product). The version-1 kernels (``conv_hwc``, ``max_pool_hwc``, ``add_terms``,
``avg_pool_hwc``) serve graphs without signed codes; the others, written for version 2, read
codes of either kind.

A conv or fc layer runs on one of five kernel families, chosen by the compiler's own macros
(every one computes the same integers; tests build each and compare them with numpy, the
fuzzer under sanitizers):

- compact (``FIQNN_COMPACT``, on by default where the compiler builds for size: ``-Os``/``-Oz``
  define ``__OPTIMIZE_SIZE__``): one plain sum per output, row by row, the least code (the
  footprint table's flash); ``-DFIQNN_COMPACT=0`` keeps the families below at -Os;
- in place (``FIQNN_COLS`` 0: scalar cores, e.g. Cortex-M0/M3): window rows read where they
  are, four output channels x four pixels of register-blocked sums, packed weights unpacked
  four rows at a time into the arena;
- Arm SIMD32 (``__ARM_FEATURE_SIMD32``: Cortex-M4/M7/M33/M55): blocks of output pixels'
  windows widened into int16 columns in the arena, each output channel's weight row against a
  block of 6 or 4 (:func:`_dot1xp`), or two channels against 2 or 1 pixels, in SXTB16 + SMLAD
  assembly loops, 4-bit weights read packed (:data:`SIMD32`; the block sizes are the exporter's,
  ``c99.simd32_pixels``, and ``FIQNN_SIMD32_KERNELS`` keeps only the kernels the layers take);
- GEMM (``FIQNN_COLS`` 16 on x86-64 and NEON, 8 where the target has a byte dot product):
  im2col columns in a static buffer of their own, one vectorisable loop over the whole window
  per (row, column) pair (:data:`COLS`);
- x86 AVX-512 VNNI (``__AVX512VNNI__`` with ``FIQNN_COLS`` 8): weights rearranged once into
  16-channel x 4-code blocks for VPDPBUSD, windows read in place where they can be, (E4) on 16
  channels at a time (:data:`VNNI`).

``-DFIQNN_COLS=0|8|16``, ``-DFIQNN_NO_INTRINSICS`` and ``-DFIQNN_PORTABLE`` (no SIMD32) choose
another family on the same machine.
"""

from __future__ import annotations

from string import Template

# fiqnn_layer, the layer table's row ($qmax_doc: what qmax is), and weight_row.
LAYER = Template(r"""/* Built for size (gcc and clang define __OPTIMIZE_SIZE__ at -Os and -Oz): the compact kernels,
 * one plain sum per output (-DFIQNN_COMPACT=0 keeps the fast ones, FIQNN_COMPACT=1 forces these). */
#ifndef FIQNN_COMPACT
#ifdef __OPTIMIZE_SIZE__
#define FIQNN_COMPACT 1
#else
#define FIQNN_COMPACT 0
#endif
#endif
/* A layer table row; fiqnn_dim is $dim_doc. */
typedef $dim fiqnn_dim;
typedef struct {
    fiqnn_dim c, h, w;    /* input, stored H-W-C (fc: c = flattened size, h = w = 1) */
    fiqnn_dim o, ho, wo;  /* output before pooling */
    fiqnn_dim kh, kw, sh, sw, ph, pw, dh, dw, groups;
    fiqnn_dim code_bits;  /* 8: int8 weights; 4 or 2: packed two's-complement codes, low bits first */
    const void *weights;  /* (O, kh, kw, C/groups) */
    const int32_t *bias, *mult;
    const uint8_t *shift;
    fiqnn_dim per_channel;  /* one (mult, shift) per output channel */
    int32_t qmax;         /* $qmax_doc */
    fiqnn_dim pool_k, pool_s, pool_p, pool_ho, pool_wo;
    fiqnn_dim simd;       /* Arm SIMD32 kernel: 0 none; else 1 int8 weights, 2 4-bit ones (sums x 16 inside
                           * int32), plus 4 x the output pixels per block (1 for an fc) */
    long pre;             /* x86 VNNI kernel: byte offset of the rearranged weights in fiqnn_pre, -1 none */
    fiqnn_dim by_row;     /* the output overlaps the input's rows already read: in-place kernel row by row */
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

""")

DOT_U8 = r"""/* Sum of x[i] * w[i]: a subset of the terms (E6) bounds, so it stays inside int32. */
static int32_t dot_u8s8(const uint8_t *x, const int8_t *w, int n)
{
    int32_t acc = 0;
    int i;
    for (i = 0; i < n; i++)
        acc += (int32_t)x[i] * (int32_t)w[i];
    return acc;
}

"""

DOT_S8 = r"""/* Sum of x[i] * w[i] over int8 codes: a subset of the terms (E6) bounds, so it stays inside int32. */
static int32_t dot_s8s8(const int8_t *x, const int8_t *w, int n)
{
    int32_t acc = 0;
    int i;
    for (i = 0; i < n; i++)
        acc += (int32_t)x[i] * (int32_t)w[i];
    return acc;
}

"""

# Arm SIMD32 (Armv6 and the Cortex-M4/M7/M33/M55 DSP extension): SXTB16/UXTB16 widen the even
# and odd bytes of a word into two 16-bit lanes, SMLAD adds both lane products to an accumulator.
# -DFIQNN_PORTABLE keeps the portable C on such a core (the bench's comparison).
SIMD32 = r"""#if defined(__ARM_FEATURE_SIMD32) && __ARM_FEATURE_SIMD32 && !defined(FIQNN_PORTABLE) && !FIQNN_COMPACT
#include <arm_acle.h>
#include <string.h>
#define FIQNN_SIMD32 1
/* Four bytes at p, any alignment (one LDR on a core that takes unaligned words). */
static inline uint32_t fiqnn_load4(const void *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint32_t fiqnn_ror8(uint32_t v)
{
    return (v >> 8) | (v << 24);
}

/* SXTB16 (UXTB16) of v rotated right by 8: bytes 1 and 3 of v, sign- (zero-) extended into two
 * 16-bit lanes, in one instruction. */
static inline int32_t fiqnn_sxtb16_ror8(uint32_t v)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

static inline uint32_t fiqnn_uxtb16_ror8(uint32_t v)
{
    uint32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

/* (E3) of acc * mult for shift >= 32 in four instructions: SMULL, the rounding constant
 * 2^(shift-1) (and (E4d)'s 2^30) added to the 64-bit product (ADDS/ADC), then the high word shifted right by
 * shift - 32 (ASR: floor division, as (E3) wants). |acc * mult| < 2^62, so the result fits. */
static inline int32_t fiqnn_mulshift_hi(int32_t acc, int32_t mult, int shift)
{
    /* + 2^30 under (E4d): the offset of p >= -2^30, which the callers' clamp at 0 makes exact for
     * every p (they send signed codes of (E4d) to fiqnn_requantize_s8) */
    uint32_t rlo = (shift == 32 ? 0x80000000u : 0u) + (FIQNN_GEMMLOWP_ROUNDING ? 0x40000000u : 0u);
    uint32_t rhi = shift > 32 ? 1u << (shift - 33) : 0u, lo;
    int32_t hi;
    __asm__("smull %[lo], %[hi], %[a], %[m]\n\t"
            "adds %[lo], %[lo], %[rlo]\n\t"
            "adc %[hi], %[hi], %[rhi]\n\t"
            "asr %[hi], %[hi], %[s]"
            : [lo] "=&r"(lo), [hi] "=&r"(hi)
            : [a] "r"(acc), [m] "r"(mult), [rlo] "r"(rlo), [rhi] "r"(rhi), [s] "r"(shift - 32)
            : "cc");
    (void)lo;
    return hi;
}

/* Zero one group of a column slot: 4 int16 codes, or 8 (w4); constant sizes, so stores, not a call. */
static inline void fiqnn_zero_group(int16_t *d, int w4)
{
    if (w4)
        memset(d, 0, 16);
    else
        memset(d, 0, 8);
}

/* Two words of an int16 column. */
static inline void fiqnn_load8(const int16_t *p, int32_t *lo, int32_t *hi)
{
    uint64_t v;
    memcpy(&v, p, 8);
    *lo = (int32_t)(uint32_t)v;
    *hi = (int32_t)(uint32_t)(v >> 32);
}

/* The inner loops' assembly: widen the weight words uo, vo of two channels into their (0, 2)
 * lanes ue, ve and (1, 3) lanes uo, vo; multiply-accumulate one column's two words xe, xo
 * against both channels into acc0 (channel 0) and acc1 (channel 1). */
#define FIQNN_WIDEN \
    "sxtb16 %[ue], %[uo]\n\t" "sxtb16 %[uo], %[uo], ror #8\n\t" \
    "sxtb16 %[ve], %[vo]\n\t" "sxtb16 %[vo], %[vo], ror #8\n\t"
/* Their operands: the four sums, the loop's counter and column pointer, the weight rows. */
#define FIQNN_SMLAD_OPERANDS \
    : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [k] "+r"(k), [col] "+r"(col), \
      [ue] "=&r"(ue), [uo] "=&r"(uo), [ve] "=&r"(ve), [vo] "=&r"(vo), [xe] "=&r"(xe), [xo] "=&r"(xo) \
    : [w0] "r"(w0), [w1] "r"(w1) : "cc", "memory"
#define FIQNN_SMLAD_COL(acc0, acc1) \
    "smlad %[" acc0 "], %[xe], %[ue], %[" acc0 "]\n\t" "smlad %[" acc0 "], %[xo], %[uo], %[" acc0 "]\n\t" \
    "smlad %[" acc1 "], %[xe], %[ve], %[" acc1 "]\n\t" "smlad %[" acc1 "], %[xo], %[vo], %[" acc1 "]\n\t"

/* The sums over nm codes (a multiple of 4: whole rows) of two int8 weight rows against np (2 or 1)
 * int16 columns laid out by the im2col of the SIMD32 conv: a[2 j + p] += row j . column p. Each
 * group of four codes is two words per column, (x0, x2) and (x1, x3): the lanes SXTB16 widens a
 * weight word into, unrotated and rotated by 8. */
__attribute__((noinline))  /* (inlined, gcc -O3 spills its C loop) */
static void fiqnn_smlad_w8(const int16_t *col, int np, const int8_t *w0, const int8_t *w1, int nm, int32_t *a)
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0, xe, xo;
    const int8_t *end = w0 + nm;
    if (np == 2 && nm > 0) {
        /* 17 instructions per 16 multiply-accumulates: the two weight words by register offset
         * (k counts up to 0 and ends the loop), each column's two words by one LDRD. */
        int32_t k = -nm, ue, uo, ve, vo;
        w0 = end;
        w1 += nm;
        __asm__("1:\n\t"
                "ldr %[uo], [%[w0], %[k]]\n\t"
                "ldr %[vo], [%[w1], %[k]]\n\t"
                "ldrd %[xe], %[xo], [%[col]], #8\n\t"
                FIQNN_WIDEN FIQNN_SMLAD_COL("a00", "a10")
                "ldrd %[xe], %[xo], [%[col]], #8\n\t"
                FIQNN_SMLAD_COL("a01", "a11")
                "adds %[k], %[k], #4\n\t"
                "bne 1b" FIQNN_SMLAD_OPERANDS);
    } else {
        for (; w0 < end; w0 += 4, w1 += 4, col += 4) {
            uint32_t u = fiqnn_load4(w0), v = fiqnn_load4(w1);
            fiqnn_load8(col, &xe, &xo);
            a00 = __smlad(xe, __sxtb16((int32_t)u), __smlad(xo, fiqnn_sxtb16_ror8(u), a00));
            a10 = __smlad(xe, __sxtb16((int32_t)v), __smlad(xo, fiqnn_sxtb16_ror8(v), a10));
        }
    }
    a[0] += a00; a[1] += a01; a[2] += a10; a[3] += a11;
}

/* fiqnn_smlad_w8 for 4-bit rows (two codes a byte, low nibble first; nm a multiple of 8): a
 * weight word's eight codes widen, each times 16, into (c0, c4), (c2, c6) from w << 4 and
 * (c1, c5), (c3, c7) from w, both masked to the high nibble of every byte; a column's group of
 * eight is the four words of those pairs. The sums are 16 times the dot products (the layer's
 * simd flag says they stay inside int32), so dividing by 16 is exact. */
__attribute__((noinline))
static void fiqnn_smlad_w4(const int16_t *col, int np, const uint8_t *w0, const uint8_t *w1, int nm, int32_t *a)
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0, xe, xo;
    const uint8_t *end = w0 + nm / 2;
    if (np == 2 && nm > 0) {
        /* 41 instructions per 32 multiply-accumulates: the low nibbles' lanes, then the high ones'. */
        int32_t k = -(nm / 2), ue, uo, ve, vo;
        w0 = end;
        w1 += nm / 2;
        __asm__("1:\n\t"
                "ldr %[uo], [%[w0], %[k]]\n\t"
                "ldr %[vo], [%[w1], %[k]]\n\t"
                "lsl %[uo], %[uo], #4\n\t"
                "lsl %[vo], %[vo], #4\n\t"
                "and %[uo], %[uo], #0xF0F0F0F0\n\t"
                "and %[vo], %[vo], #0xF0F0F0F0\n\t"
                "ldrd %[xe], %[xo], [%[col]]\n\t"
                FIQNN_WIDEN FIQNN_SMLAD_COL("a00", "a10")
                "ldrd %[xe], %[xo], [%[col], #16]\n\t"
                FIQNN_SMLAD_COL("a01", "a11")
                "ldr %[uo], [%[w0], %[k]]\n\t"
                "ldr %[vo], [%[w1], %[k]]\n\t"
                "and %[uo], %[uo], #0xF0F0F0F0\n\t"
                "and %[vo], %[vo], #0xF0F0F0F0\n\t"
                "ldrd %[xe], %[xo], [%[col], #8]\n\t"
                FIQNN_WIDEN FIQNN_SMLAD_COL("a00", "a10")
                "ldrd %[xe], %[xo], [%[col], #24]\n\t"
                FIQNN_SMLAD_COL("a01", "a11")
                "add %[col], %[col], #32\n\t"
                "adds %[k], %[k], #4\n\t"
                "bne 1b" FIQNN_SMLAD_OPERANDS);
    } else {
        for (; w0 < end; w0 += 4, w1 += 4, col += 8) {  /* one column (np is 1, or nothing to do) */
            int half;
            for (half = 0; half < 2; half++) {  /* the low nibbles' lanes, then the high ones' */
                uint32_t u = fiqnn_load4(w0) << (4 - 4 * half), v = fiqnn_load4(w1) << (4 - 4 * half);
                u &= 0xF0F0F0F0u;
                v &= 0xF0F0F0F0u;
                fiqnn_load8(col + 4 * half, &xe, &xo);
                a00 = __smlad(xe, __sxtb16((int32_t)u), __smlad(xo, fiqnn_sxtb16_ror8(u), a00));
                a10 = __smlad(xe, __sxtb16((int32_t)v), __smlad(xo, fiqnn_sxtb16_ror8(v), a10));
            }
        }
    }
    a[0] += a00 / 16; a[1] += a01 / 16; a[2] += a10 / 16; a[3] += a11 / 16;
}
#else
#define FIQNN_SIMD32 0
#endif

"""

SIMD32_PIXELS = (6, 4)  # output pixels per block of the one-channel SIMD32 kernels (fiqnn_dot1xP_w8/_w4)
SIMD32_MIN_PIXELS = 2  # the two-channel kernels' block (fiqnn_smlad_w8/_w4), a layer's least
# FIQNN_SIMD32_KERNELS, the kernels a model's layers take on Arm SIMD32 (its exporter writes it,
# c99.simd32_kernels): per (kind: 1 int8 weights, 2 4-bit ones, block of pixels: 6 or 4 the
# one-channel kernels, 2 the two-channel ones), and the in-place conv kernel (a layer that has
# no SIMD32 kernel). The rest compile to nothing (their calls are in code a constant disables).
SIMD32_KERNELS = {(1, 6): 1, (1, 4): 2, (1, 2): 4, (2, 6): 8, (2, 4): 16, (2, 2): 32, "in place": 64}


def _dot1xp(p: int, w4: bool) -> str:
    """One output channel's weight row against p int16 columns (p of SIMD32_PIXELS) in a loop of
    Arm assembly, one group of codes per step: the group's weight word(s) widened once, then
    each pixel's two words of the group by one LDRD and two SMLADs. col, advanced by the first
    LDRD of a group (pre-indexed), starts one group before the first. steps: groups (of 4 codes
    for int8 weights, 8 for 4-bit ones), at least 1."""
    acc = [f"a{j}" for j in range(p)]

    def pixels(half: int, stride: int, first: bool) -> str:
        lines = []
        for j in range(p):
            at = stride * j + 8 * half
            load = (f"ldrd %[xe], %[xo], [%[col], #{stride * p}]!" if first and j == 0
                    else f"ldrd %[xe], %[xo], [%[col], #{at}]")
            lines.append(f'"{load}\\n\\t" "smlad %[{acc[j]}], %[xe], %[we], %[{acc[j]}]\\n\\t" '
                         f'"smlad %[{acc[j]}], %[xo], %[wo], %[{acc[j]}]\\n\\t"')
        return "\n                ".join(lines)

    widen = '"sxtb16 %[wo], %[we], ror #8\\n\\t" "sxtb16 %[we], %[we]\\n\\t"'
    if w4:
        name, wt, unit = f"fiqnn_dot1x{p}_w4", "uint8_t", "eight codes (one weight word)"
        entry = '"1:\\n\\t"'
        body = (f'"ldr %[wr], [%[w]], #4\\n\\t" "lsl %[we], %[wr], #4\\n\\t" "and %[we], %[we], #0xF0F0F0F0\\n\\t"\n'
                f'                {widen}\n                {pixels(0, 16, True)}\n'
                f'                "and %[we], %[wr], #0xF0F0F0F0\\n\\t"\n'
                f'                {widen}\n                {pixels(1, 16, False)}')
        count = 10 + 6 * p
        temps, extra = "we, wo, xe, xo, wr", ', [wr] "=&r"(wr)'
        macs, out = 8 * p, " / 16"
    else:
        name, wt, unit = f"fiqnn_dot1x{p}_w8", "int8_t", "four codes (one weight word), two per loop"
        # an odd number of steps enters the loop at its second group
        entry = '"tst %[steps], #1\\n\\t" "itt ne\\n\\t" "addne %[steps], %[steps], #1\\n\\t" "bne 2f\\n\\t"'
        group = (f'"ldr %[we], [%[w]], #4\\n\\t"\n                {widen}\n                ' + "{}")
        body = ('"1:\\n\\t"\n                ' + group.format(pixels(0, 8, True))
                + '\n            "2:\\n\\t"\n                ' + group.format(pixels(0, 8, True)))
        count = 2 + 2 * (3 + 3 * p)  # (and 4 once per call)
        temps, extra = "we, wo, xe, xo", ""
        macs, out = 8 * p, ""
    operands = ", ".join(f'[{a}] "+r"({a})' for a in acc)
    return f"""/* a[j] = weight row w . column j for the {p} columns of a block (laid out by a conv's _col):
 * {count} instructions per {macs} multiply-accumulates, steps of {unit}. */
static void {name}(const int16_t *col, const {wt} *w, int steps, int32_t *a)
{{
    int32_t {", ".join(f"{a} = 0" for a in acc)}, {temps};
    __asm__("sub %[col], %[col], #{(16 if w4 else 8) * p}\\n\\t"
            {entry}
                {body}
            "subs %[steps], %[steps], #{1 if w4 else 2}\\n\\t"
            "bne 1b"
            : {operands}, [col] "+r"(col), [w] "+r"(w), [steps] "+r"(steps),
              [we] "=&r"(we), [wo] "=&r"(wo), [xe] "=&r"(xe), [xo] "=&r"(xo){extra}
            :
            : "cc", "memory");
    {" ".join(f"a[{j}] = {a}{out};" for j, a in enumerate(acc))}
}}

"""


SIMD32 = SIMD32.replace("#else\n#define FIQNN_SIMD32 0\n#endif\n", "".join(
    _dot1xp(p, w4) for p in SIMD32_PIXELS for w4 in (False, True)) + "#else\n#define FIQNN_SIMD32 0\n#endif\n")


# Vector cores: conv and fc layers of groups 1 as a blocked integer GEMM over im2col columns.
BLOCK = 32  # output pixels per block of columns of the GEMM kernels
SMALL_K = 32  # windows of fewer codes than this go across output channels instead (a first conv)
COLS = Template(r"""/* Vector cores: a conv or fc layer of groups 1 runs as a blocked GEMM: four output pixels'
 * windows copied into columns (zero for padding), then every four output channels' weight rows
 * against them, each a loop over the whole window that the compiler vectorises into one
 * multiply-add chain per (row, column) pair (a 4 x 4 block of sums). The columns live in a
 * static buffer of their own, fiqnn_cols (the arena keeps what a scalar microcontroller needs).
 * FIQNN_COLS is their element: 8, the codes themselves, where the target has a u8 x s8
 * dot-product instruction that gcc's vectoriser emits for such a loop (x86 AVX-512 VNNI or
 * AVX-VNNI, Arm's dot product); 16, codes widened to int16, where it has a 16-bit multiply-add
 * (x86 SSE2's PMADDWD, which every x86-64 has, Arm NEON); 0, no buffer: the in-place kernels
 * (scalar cores; Arm SIMD32 has its own). -DFIQNN_COLS=0, 8 or 16 chooses it. The sums are the
 * same integers in every variant: products of codes, added in int32, each a subset of the terms
 * (E6) bounds. */
#ifndef FIQNN_COLS
#if FIQNN_SIMD32 || FIQNN_COMPACT
#define FIQNN_COLS 0
#elif defined(__AVX512VNNI__) || defined(__AVXVNNI__) || defined(__ARM_FEATURE_DOTPROD)
#define FIQNN_COLS 8
#elif defined(__SSE2__) || defined(__ARM_NEON)
#define FIQNN_COLS 16
#else
#define FIQNN_COLS 0
#endif
#endif
/* acc[4 j + p] += sum_i xp[i] * wj[i], i < n, for the four pixels' codes x0..x3 and the four
 * weight rows w0..w3 of the function it is used in: the body of every register-blocked 4 x 4 dot
 * product (one multiply-add chain per pair, which compilers vectorize). */
#define FIQNN_DOT4X4(n, acc) do { \
        int32_t a00 = 0, a01 = 0, a02 = 0, a03 = 0, a10 = 0, a11 = 0, a12 = 0, a13 = 0; \
        int32_t a20 = 0, a21 = 0, a22 = 0, a23 = 0, a30 = 0, a31 = 0, a32 = 0, a33 = 0; \
        int i_; \
        for (i_ = 0; i_ < (n); i_++) { \
            int32_t v0 = x0[i_], v1 = x1[i_], v2 = x2[i_], v3 = x3[i_]; \
            int32_t u0 = w0[i_], u1 = w1[i_], u2 = w2[i_], u3 = w3[i_]; \
            a00 += v0 * u0; a01 += v1 * u0; a02 += v2 * u0; a03 += v3 * u0; \
            a10 += v0 * u1; a11 += v1 * u1; a12 += v2 * u1; a13 += v3 * u1; \
            a20 += v0 * u2; a21 += v1 * u2; a22 += v2 * u2; a23 += v3 * u2; \
            a30 += v0 * u3; a31 += v1 * u3; a32 += v2 * u3; a33 += v3 * u3; \
        } \
        (acc)[0] += a00; (acc)[1] += a01; (acc)[2] += a02; (acc)[3] += a03; \
        (acc)[4] += a10; (acc)[5] += a11; (acc)[6] += a12; (acc)[7] += a13; \
        (acc)[8] += a20; (acc)[9] += a21; (acc)[10] += a22; (acc)[11] += a23; \
        (acc)[12] += a30; (acc)[13] += a31; (acc)[14] += a32; (acc)[15] += a33; \
    } while (0)

#if FIQNN_COLS == 16
typedef int16_t fiqnn_row_t;
#elif FIQNN_COLS == 8
typedef int8_t fiqnn_row_t;
#elif FIQNN_COLS != 0
#error "FIQNN_COLS must be 0, 8 or 16"
#endif
#if FIQNN_COLS
#define FIQNN_SMALL_K $small_k  /* windows of fewer codes go across output channels (the _small kernels) */
#define FIQNN_BLOCK $block  /* output pixels per block of columns */
static int32_t fiqnn_cols[FIQNN_COLS_WORDS];

/* (E4) clamp(rshift_round(acc * mult, shift), lo, hi) without a branch the vectoriser cannot
 * turn into a select: for shift >= 1, floor(p / 2^shift) of p = acc * mult + 2^(shift-1) is
 * floor((p + 2^63) / 2^shift) - 2^(63-shift), a logical shift (2^63 is a multiple of 2^shift;
 * |acc * mult| < 2^62 puts p + 2^63 inside [0, 2^64), so uint64 holds it exactly, and the
 * shifted value below 2^63, so int64 does); shift 0 is acc * mult itself. */
static inline int32_t fiqnn_requant_lane(int32_t acc, int32_t mult, int shift, int32_t lo, int32_t hi)
{
    int64_t p = (int64_t)acc * mult;
    int s = shift > 0 ? shift : 1;
#if FIQNN_GEMMLOWP_ROUNDING
    p += fiqnn_gemmlowp_offset(p, shift);  /* (E4d) */
#endif
    uint64_t u = ((uint64_t)p + ((uint64_t)1 << (s - 1)) + ((uint64_t)1 << 63)) >> s;
    int64_t r = shift > 0 ? (int64_t)u - ((int64_t)1 << (63 - s)) : p;
    r = r > lo ? r : lo;  /* (as max, then min: what the vectoriser maps to those instructions) */
    r = r < hi ? r : hi;
    return (int32_t)r;
}

/* The n weight codes of output channel oc as fiqnn_row_t: an int8 row in place (FIQNN_COLS 8),
 * else unpacked into row, one packed byte at a time (a loop the compiler vectorises). */
static const fiqnn_row_t *fiqnn_row(const fiqnn_layer *L, int oc, int n, fiqnn_row_t *row)
{
    int i, nb = (n * L->code_bits + 7) / 8;
    const uint8_t *p = (const uint8_t *)L->weights + (long)oc * nb;
#if FIQNN_COLS == 8
    if (L->code_bits == 8)
        return (const int8_t *)L->weights + (long)oc * n;
#endif
    if (L->code_bits == 8) {
        for (i = 0; i < n; i++)
            row[i] = (fiqnn_row_t)(int8_t)p[i];
    } else if (L->code_bits == 4) {
        for (i = 0; i < n / 2; i++) {
            row[2 * i] = (fiqnn_row_t)((int)((p[i] & 15u) ^ 8u) - 8);
            row[2 * i + 1] = (fiqnn_row_t)((int)((unsigned)(p[i] >> 4) ^ 8u) - 8);
        }
        if (n & 1)
            row[n - 1] = (fiqnn_row_t)((int)((p[n / 2] & 15u) ^ 8u) - 8);
    } else {
        for (i = 0; i < n / 4; i++) {
            row[4 * i] = (fiqnn_row_t)((int)((p[i] & 3u) ^ 2u) - 2);
            row[4 * i + 1] = (fiqnn_row_t)((int)((unsigned)(p[i] >> 2 & 3u) ^ 2u) - 2);
            row[4 * i + 2] = (fiqnn_row_t)((int)((unsigned)(p[i] >> 4 & 3u) ^ 2u) - 2);
            row[4 * i + 3] = (fiqnn_row_t)((int)((unsigned)(p[i] >> 6) ^ 2u) - 2);
        }
        for (i = n / 4 * 4; i < n; i++)
            row[i] = (fiqnn_row_t)((int)((unsigned)(p[i / 4] >> (i % 4 * 2) & 3u) ^ 2u) - 2);
    }
    return row;
}
#endif
#if FIQNN_COLS == 16
/* acc[4 j + p] += sum_i x[p xs + i] * wj[i], i < n, for the four rows j and four int16 columns p. */
static void dot4x4_s16(const int16_t *x, long xs, const int16_t *w0, const int16_t *w1, const int16_t *w2,
                       const int16_t *w3, int n, int32_t *acc)
{
    const int16_t *x0 = x, *x1 = x + xs, *x2 = x + 2 * xs, *x3 = x + 3 * xs;
    FIQNN_DOT4X4(n, acc);
}

/* acc[4 j] += sum_i x[i] * wj[i], i < n, for the four rows j. */
static void dot1x4_s16(const int16_t *x, const int16_t *w0, const int16_t *w1, const int16_t *w2,
                       const int16_t *w3, int n, int32_t *acc)
{
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int i;
    for (i = 0; i < n; i++) {
        int32_t v = x[i];
        a0 += v * w0[i]; a1 += v * w1[i]; a2 += v * w2[i]; a3 += v * w3[i];
    }
    acc[0] += a0; acc[4] += a1; acc[8] += a2; acc[12] += a3;
}
#endif

""").substitute(small_k=SMALL_K, block=BLOCK)

# x86 AVX-512 VNNI: VPDPBUSD multiplies 64 unsigned bytes by 64 signed ones and adds each four
# products into one of 16 int32 lanes (no saturation), so a register of weights holds 16 output
# channels x 4 window codes and a broadcast word of 4 column codes feeds all 16 channels.
VNNI = r"""/* x86 AVX-512 VNNI (with FIQNN_COLS 8; -DFIQNN_NO_INTRINSICS keeps the plain C GEMM): conv and fc
 * layers of groups 1 multiply with VPDPBUSD. Their
 * weights are rearranged once, on the first fiqnn_run, into fiqnn_pre: per block of 16 output
 * channels, per group of 4 window codes, 64 bytes (channel-major, code-minor; channels past o and
 * codes past n are 0); then per channel the int32 correction 128 * sum(row) for int8 input codes,
 * which VPDPBUSD reads as uint8 (code + 128: the byte XOR 128), so sum((x + 128) w) - 128 sum(w) is
 * the sum; then (E4)'s mult (int32), shift and 2^(shift-1) (int64, even channels of each 16 first)
 * per channel (a per-layer pair repeated). VPDPBUSD adds modulo 2^32; the true sum fits int32
 * ((E6)), so the result is exact. */
#if FIQNN_COLS == 8 && defined(__AVX512VNNI__) && defined(__AVX512BW__) && !defined(FIQNN_NO_INTRINSICS)
#include <immintrin.h>
#include <string.h>
#define FIQNN_VNNI 1
static __m512i fiqnn_pre[FIQNN_PRE_BYTES / 64];
static int fiqnn_pre_ready;

/* Fill fiqnn_pre from the layer table (once). */
static void fiqnn_vnni_prepare(const fiqnn_layer *layers, int count)
{
    int i, oc, k;
    for (i = 0; i < count; i++) {
        const fiqnn_layer *L = &layers[i];
        int n = L->kh * L->kw * L->c, n4 = (n + 3) / 4 * 4, o16 = (L->o + 15) / 16 * 16;
        int8_t *w;
        int32_t *corr, *mult;
        int64_t *shift, *half;
        if (L->pre < 0) continue;
        w = (int8_t *)(void *)fiqnn_pre + L->pre;
        corr = (int32_t *)(void *)(w + (long)o16 * n4);
        mult = corr + o16;
        shift = (int64_t *)(void *)(mult + o16);
        half = shift + o16;
        for (oc = 0; oc < L->o; oc++) {
            const int8_t *row = fiqnn_row(L, oc, n, (int8_t *)(void *)fiqnn_cols);
            int32_t sum = 0;
            int j = L->per_channel ? oc : 0, e = oc / 16 * 16 + (oc % 2 ? 8 : 0) + oc % 16 / 2;
            for (k = 0; k < n; k++) {
                w[((long)(oc / 16) * (n4 / 4) + k / 4) * 64 + (oc % 16) * 4 + k % 4] = row[k];
                sum += row[k];
            }
            corr[oc] = 128 * sum;
            mult[oc] = L->mult[j];
            shift[e] = L->shift[j];  /* per block of 16: the even channels' 8 lanes, then the odd ones' */
            half[e] = L->shift[j] ? (int64_t)1 << (L->shift[j] - 1) : 0;
            if (FIQNN_GEMMLOWP_ROUNDING && L->shift[j] > 31)
                half[e] += (int64_t)1 << 30;  /* (E4d), for p >= -2^30; fiqnn_vnni_requant mends the rest */
        }
    }
    fiqnn_pre_ready = 1;
}

/* np (8 or 1) columns against r (1, 2 or 4) blocks of 16 channels (w, wb bytes apart):
 * acc[p os + 16 b + lane] = the sums. Column p is ns runs of gs groups of 4 codes, run j at
 * src[8 j + p] (the weights' groups follow the runs in order); inlined where np and r are
 * constants, so that the np x r accumulators live in registers. */
#if defined(__GNUC__)
__attribute__((always_inline))
#endif
static inline void fiqnn_vnni_block(const uint8_t *const *src, int ns, int gs, int np, const int8_t *w, long wb,
                                    int r, int32_t *acc, long os)
{
    __m512i a[8][4];
    int p, b, i, j;
    for (p = 0; p < np; p++)
        for (b = 0; b < r; b++)
            a[p][b] = _mm512_setzero_si512();
    for (j = 0; j < ns; j++, w += 64L * gs) {
        for (i = 0; i < gs; i++) {
            __m512i wv[4];
            for (b = 0; b < r; b++)
                wv[b] = _mm512_loadu_si512((const void *)(w + b * wb + 64L * i));
            for (p = 0; p < np; p++) {
                int32_t word;
                __m512i xv;
                memcpy(&word, src[8 * j + p] + 4L * i, 4);
                xv = _mm512_set1_epi32(word);
                for (b = 0; b < r; b++)
                    a[p][b] = _mm512_dpbusd_epi32(a[p][b], xv, wv[b]);
            }
        }
    }
    for (p = 0; p < np; p++)
        for (b = 0; b < r; b++)
            _mm512_storeu_si512((void *)(acc + p * os + 16 * b), a[p][b]);
}

/* (E4) for 16 channels' sums acc (bias included) with the layer's prepared mult, shift, half
 * (see fiqnn_vnni_prepare): the 64-bit products of the even and the odd lanes (VPMULDQ), the
 * rounding constant added, an arithmetic shift (floor division: (E3)), the clamp to [lo, hi] in
 * int64, then the 16 codes as bytes (VPMOVDB) into y, the first m of them. */
static inline void fiqnn_vnni_requant(__m512i acc, const int32_t *mult, const int64_t *shift, const int64_t *half,
                                      int64_t lo, int64_t hi, uint8_t *y, int m)
{
    __m512i mv = _mm512_loadu_si512((const void *)mult), lov = _mm512_set1_epi64(lo), hiv = _mm512_set1_epi64(hi);
    __m512i pe = _mm512_mul_epi32(acc, mv);
    __m512i po = _mm512_mul_epi32(_mm512_srli_epi64(acc, 32), _mm512_srli_epi64(mv, 32));
#if FIQNN_GEMMLOWP_ROUNDING
    if (lo < 0) {  /* (E4d) below -2^30 the offset is -2^30, not the +2^30 in half: 2^31 less */
        __m512i low = _mm512_set1_epi64(-((int64_t)1 << 30)), big = _mm512_set1_epi64(31);
        __m512i two31 = _mm512_set1_epi64((int64_t)1 << 31);
        __mmask8 me = _mm512_cmplt_epi64_mask(pe, low) &
                      _mm512_cmpgt_epi64_mask(_mm512_loadu_si512((const void *)shift), big);
        __mmask8 mo = _mm512_cmplt_epi64_mask(po, low) &
                      _mm512_cmpgt_epi64_mask(_mm512_loadu_si512((const void *)(shift + 8)), big);
        pe = _mm512_mask_sub_epi64(pe, me, pe, two31);
        po = _mm512_mask_sub_epi64(po, mo, po, two31);
    }
#endif
    pe = _mm512_srav_epi64(_mm512_add_epi64(pe, _mm512_loadu_si512((const void *)half)),
                           _mm512_loadu_si512((const void *)shift));
    po = _mm512_srav_epi64(_mm512_add_epi64(po, _mm512_loadu_si512((const void *)(half + 8))),
                           _mm512_loadu_si512((const void *)(shift + 8)));
    pe = _mm512_min_epi64(_mm512_max_epi64(pe, lov), hiv);
    po = _mm512_min_epi64(_mm512_max_epi64(po, lov), hiv);
    _mm512_mask_cvtepi32_storeu_epi8(y, (__mmask16)((1u << m) - 1),
                                     _mm512_mask_blend_epi32((__mmask16)0xAAAA, pe, _mm512_slli_epi64(po, 32)));
}
#else
#define FIQNN_VNNI 0
#endif

"""

# Register-blocked dot products for one kind of input codes ($t: u8 or s8, $xt its C type, $ext
# its SIMD32 widening): four output channels (weight rows w0..w3, from offset k) against one
# pixel, or against four pixels xs codes apart. Every sum is a subset of the terms (E6) bounds,
# so none leaves int32 (SMLAD's sums included: it wraps modulo 2^32 exactly like the scalar path
# would, and never has to).
DOTS = Template(r"""#if !FIQNN_COMPACT
#if FIQNN_SIMD32
/* acc[0] += x0 . w0, acc[1] += x1 . w0, acc[4] += x0 . w1, acc[5] += x1 . w1 over n codes:
 * per four codes two words of x and two of w, each widened into its (0, 2) and (1, 3) lanes. */
static void dot2x2_${t}s8(const $xt *x0, const $xt *x1, const int8_t *w0, const int8_t *w1, int n,
                          int32_t *acc)
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        uint32_t v = fiqnn_load4(x0 + i), u = fiqnn_load4(x1 + i);
        uint32_t p = fiqnn_load4(w0 + i), q = fiqnn_load4(w1 + i);
        int32_t ve = (int32_t)$ext(v), vo = (int32_t)$ext(fiqnn_ror8(v));
        int32_t ue = (int32_t)$ext(u), uo = (int32_t)$ext(fiqnn_ror8(u));
        int32_t pe = __sxtb16((int32_t)p), po = __sxtb16((int32_t)fiqnn_ror8(p));
        int32_t qe = __sxtb16((int32_t)q), qo = __sxtb16((int32_t)fiqnn_ror8(q));
        a00 = __smlad(ve, pe, __smlad(vo, po, a00));
        a01 = __smlad(ue, pe, __smlad(uo, po, a01));
        a10 = __smlad(ve, qe, __smlad(vo, qo, a10));
        a11 = __smlad(ue, qe, __smlad(uo, qo, a11));
    }
    for (; i < n; i++) {
        int32_t v = x0[i], u = x1[i];
        a00 += v * w0[i]; a01 += u * w0[i]; a10 += v * w1[i]; a11 += u * w1[i];
    }
    acc[0] += a00; acc[1] += a01; acc[4] += a10; acc[5] += a11;
}
#endif

/* acc[4 j] += sum_i x[i] * wj[k + i], i < n, for the four rows j. */
static void dot1x4_${t}s8(const $xt *x, const int8_t *w0, const int8_t *w1, const int8_t *w2,
                          const int8_t *w3, int k, int n, int32_t *acc)
{
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    int i = 0;
    w0 += k; w1 += k; w2 += k; w3 += k;
#if FIQNN_SIMD32
    for (; i + 4 <= n; i += 4) {
        uint32_t v = fiqnn_load4(x + i), p;
        int32_t ve = (int32_t)$ext(v), vo = (int32_t)$ext(fiqnn_ror8(v));
        p = fiqnn_load4(w0 + i);
        a0 = __smlad(ve, __sxtb16((int32_t)p), __smlad(vo, __sxtb16((int32_t)fiqnn_ror8(p)), a0));
        p = fiqnn_load4(w1 + i);
        a1 = __smlad(ve, __sxtb16((int32_t)p), __smlad(vo, __sxtb16((int32_t)fiqnn_ror8(p)), a1));
        p = fiqnn_load4(w2 + i);
        a2 = __smlad(ve, __sxtb16((int32_t)p), __smlad(vo, __sxtb16((int32_t)fiqnn_ror8(p)), a2));
        p = fiqnn_load4(w3 + i);
        a3 = __smlad(ve, __sxtb16((int32_t)p), __smlad(vo, __sxtb16((int32_t)fiqnn_ror8(p)), a3));
    }
#endif
    for (; i < n; i++) {
        int32_t v = x[i];
        a0 += v * w0[i]; a1 += v * w1[i]; a2 += v * w2[i]; a3 += v * w3[i];
    }
    acc[0] += a0; acc[4] += a1; acc[8] += a2; acc[12] += a3;
}

/* acc[4 j + p] += sum_i x[p xs + i] * wj[k + i], i < n, for the four rows j and four pixels p. */
static void dot4x4_${t}s8(const $xt *x, long xs, const int8_t *w0, const int8_t *w1, const int8_t *w2,
                          const int8_t *w3, int k, int n, int32_t *acc)
{
    const $xt *x0 = x, *x1 = x + xs, *x2 = x + 2 * xs, *x3 = x + 3 * xs;
#if FIQNN_SIMD32
    if (n >= 8) {  /* four 2 x 2 blocks: sixteen accumulators do not fit the core's registers */
        dot2x2_${t}s8(x0, x1, w0 + k, w1 + k, n, acc);
        dot2x2_${t}s8(x2, x3, w0 + k, w1 + k, n, acc + 2);
        dot2x2_${t}s8(x0, x1, w2 + k, w3 + k, n, acc + 8);
        dot2x2_${t}s8(x2, x3, w2 + k, w3 + k, n, acc + 10);
        return;
    }
#endif
    w0 += k; w1 += k; w2 += k; w3 += k;
    FIQNN_DOT4X4(n, acc);
}
#endif

""")


def dots(signed: bool) -> str:
    return DOTS.substitute(t="s8" if signed else "u8", xt="int8_t" if signed else "uint8_t",
                           ext="__sxtb16" if signed else "__uxtb16")


# (E2) and (E4) for one kind of input codes ($xt, read by the dot products of $t) and of output
# codes ($requantize).
# Output channels go four at a time (their weight rows unpacked once into wrow when packed); a row
# of output pixels goes four at a time through dot4x4 where four windows lie inside the map
# horizontally (groups 1, dilation 1 in x: each window row is one contiguous run), one at a time
# through dot1x4 where one does (an fc layer: its one pixel), and through the plain per-output
# sum at the edges and for grouped or dilated convolutions.
CONV = Template(r"""$doc
static int32_t point_${name}(const fiqnn_layer *L, const $xt *x, const int8_t *w, int oc, int oy, int ox)
{
    int cg = L->c / L->groups, og = L->o / L->groups;
    int merge = L->dw == 1 && L->groups == 1;  /* a whole kx window is one contiguous run */
    int iy0 = oy * L->sh - L->ph, ix0 = ox * L->sw - L->pw, lo = 0, hi = L->kw, ky, kx;
    const $xt *xg = x + (oc / og) * cg;
    int32_t acc = L->bias[oc];  /* (E6): no partial sum leaves int32 */
    while (lo < hi && ix0 + lo * L->dw < 0) lo++;        /* zero padding: skip */
    while (hi > lo && ix0 + (hi - 1) * L->dw >= L->w) hi--;
    for (ky = 0; ky < L->kh; ky++) {
        int iy = iy0 + ky * L->dh;
        const $xt *xr;
        const int8_t *wr = w + (long)ky * L->kw * cg;
        if (iy < 0 || iy >= L->h || lo == hi) continue;  /* all padding: form no pointer outside x */
        xr = xg + (long)iy * L->w * L->c;
        if (merge) {
            acc += dot_${t}s8(xr + (long)(ix0 + lo) * L->c, wr + lo * cg, (hi - lo) * cg);
        } else {
            for (kx = lo; kx < hi; kx++)
                acc += dot_${t}s8(xr + (long)(ix0 + kx * L->dw) * L->c, wr + kx * cg, cg);
        }
    }
    return acc;
}

static void put_${name}(const fiqnn_layer *L, uint8_t *y, int32_t *logits, int oc, long pixel, int32_t acc)
{
    int k = L->per_channel ? oc : 0;
    if (L->qmax == 0)
        logits[pixel * L->o + oc] = acc;
#if FIQNN_SIMD32
    else if (L->shift[k] >= 32 && !(FIQNN_GEMMLOWP_ROUNDING && $lo < 0))
        y[pixel * L->o + oc] = (uint8_t)fiqnn_clamp(fiqnn_mulshift_hi(acc, L->mult[k], L->shift[k]), $lo, L->qmax);
#endif
    else
        y[pixel * L->o + oc] = $requantize(acc, L->mult[k], L->shift[k], L->qmax);
}

#if FIQNN_SIMD32
/* put_$name of bias + a[p] at the np pixels from pixel pixel on, for channel oc: on
 * (E4)'s common path (int8/uint8 codes out, shift >= 32) the channel's constants loaded once. */
static void puts_${name}(const fiqnn_layer *L, uint8_t *y, int32_t *logits, int oc, long pixel, int np,
                         const int32_t *a)
{
    int k = L->per_channel ? oc : 0, shift = L->shift[k], p;
    int32_t mult = L->mult[k], bias = L->bias[oc], lo = $lo, hi = L->qmax;
    uint8_t *yp = y + pixel * L->o + oc;
    if (L->qmax == 0 || shift < 32 || (FIQNN_GEMMLOWP_ROUNDING && lo < 0)) {
        for (p = 0; p < np; p++)
            put_${name}(L, y, logits, oc, pixel + p, bias + a[p]);
        return;
    }
    for (p = 0; p < np; p++, yp += L->o) {
        int32_t v = fiqnn_mulshift_hi(bias + a[p], mult, shift);
        *yp = (uint8_t)(v < lo ? lo : v > hi ? hi : v);
    }
}
#endif

#if FIQNN_SIMD32
/* Output pixel pixel's window as int16 codes (zero for padding and for the codes from n up to
 * n rounded up to g) into slot p of an np-pixel block of columns: group after group of g
 * codes (g = 4 for int8 weights, 8 for 4-bit ones), each group's np slots side by side, each
 * slot holding its g codes in the lanes the weight words widen into (fiqnn_smlad_w8, _w4,
 * fiqnn_dot1xP_w8, _w4): (x0, x2), (x1, x3); for g = 8 (x0, x4), (x2, x6), (x1, x5), (x3, x7). */
static void ${name}_col(const fiqnn_layer *L, const $xt *x, long pixel, int p, int np, int16_t *col)
{
    static const unsigned char lane[2][8] = {{0, 2, 1, 3}, {0, 4, 2, 6, 1, 5, 3, 7}};
    int w4 = (L->simd & 3) == 2, g = w4 ? 8 : 4, n = L->kh * L->kw * L->c, f, ky, kx, c;
    int oy = (int)(pixel / L->wo), ox = (int)(pixel % L->wo);
    const unsigned char *s = lane[w4];
    long step = (long)g * np;
    int16_t *d = col + p * g;  /* the current group's slot */
    if (L->c % g) {  /* groups across cells (a first conv on one channel): zeros, then code by code */
        int lg = w4 ? 3 : 2;
        for (f = 0; f < n; f += g, d += step)  /* n rounded up to g */
            fiqnn_zero_group(d, w4);
        for (ky = 0; ky < L->kh; ky++) {
            int iy = oy * L->sh - L->ph + ky * L->dh, ix0 = ox * L->sw - L->pw, lo = 0, hi = L->kw;
            const $xt *v;
            while (lo < hi && ix0 + lo * L->dw < 0) lo++;  /* the window row's cells inside the map */
            while (hi > lo && ix0 + (hi - 1) * L->dw >= L->w) hi--;
            if (iy < 0 || iy >= L->h || lo == hi)
                continue;
            v = x + ((long)iy * L->w + ix0 + lo * L->dw) * L->c;
            f = (ky * L->kw + lo) * L->c;
            if (L->dw == 1) {  /* one run of cells */
                int e = f + (hi - lo) * L->c;
                for (; f < e; f++, v++)
                    col[(long)(f >> lg) * step + p * g + s[f & (g - 1)]] = (int16_t)*v;
                continue;
            }
            for (kx = lo; kx < hi; kx++, v += (long)L->dw * L->c)
                for (c = 0; c < L->c; c++, f++)
                    col[(long)(f >> lg) * step + p * g + s[f & (g - 1)]] = (int16_t)v[c];
        }
        return;
    }
    for (ky = 0; ky < L->kh; ky++) {
        int iy = oy * L->sh - L->ph + ky * L->dh;
        for (kx = 0; kx < L->kw; kx++) {
            int ix = ox * L->sw - L->pw + kx * L->dw;
            const $xt *v = iy >= 0 && iy < L->h && ix >= 0 && ix < L->w ? x + ((long)iy * L->w + ix) * L->c : 0;
            if (!v) {
                for (c = 0; c < L->c; c += g, d += step)
                    fiqnn_zero_group(d, w4);
            } else if (!w4) {  /* (x0, x2), (x1, x3) */
                for (c = 0; c < L->c; c += 4, d += step) {
                    uint32_t b = fiqnn_load4(v + c), q[2];
                    q[0] = (uint32_t)$ext(b);
                    q[1] = (uint32_t)$extr(b);
                    memcpy(d, q, 8);
                }
            } else {  /* (x0, x4), (x2, x6), (x1, x5), (x3, x7) from two words */
                for (c = 0; c < L->c; c += 8, d += step) {
                    uint32_t b = fiqnn_load4(v + c), e = fiqnn_load4(v + c + 4), q[4];
                    uint32_t be = (uint32_t)$ext(b), bo = (uint32_t)$extr(b);
                    uint32_t ee = (uint32_t)$ext(e), eo = (uint32_t)$extr(e);
                    q[0] = (be & 0xFFFFu) | (ee << 16);
                    q[1] = (be >> 16) | (ee & 0xFFFF0000u);
                    q[2] = (bo & 0xFFFFu) | (eo << 16);
                    q[3] = (bo >> 16) | (eo & 0xFFFF0000u);
                    memcpy(d, q, 16);
                }
            }
        }
    }
}

/* (E2), (E4) on Arm SIMD32 (groups 1, L->simd set): output pixels in blocks of L->simd >> 2 (one
 * for an fc; a last short block takes the next block size up), their windows widened once into
 * int16 columns in col; then, in blocks of 4 or 6, each output channel against them
 * (fiqnn_dot1xP), in blocks of 2 or 1, every pair of output channels (fiqnn_smlad). */
static void ${name}_simd32(const fiqnn_layer *L, const $xt *x, uint8_t *y, int32_t *logits, int16_t *col)
{
    int w4 = (L->simd & 3) == 2, g = w4 ? 8 : 4, n = L->kh * L->kw * L->c, ng = (n + g - 1) / g, most = L->simd >> 2;
    int np, oc, p, j;
    long npix = (long)L->ho * L->wo, rowb = w4 ? (n + 1) / 2 : n, pix;
    const uint8_t *wb = (const uint8_t *)L->weights;
    int has4 = FIQNN_SIMD32_KERNELS & (w4 ? 16 : 2);  /* (constants: the exporter keeps only what is used) */
    for (pix = 0; pix < npix; pix += np) {
        long left = npix - pix;
        int k;
        np = left >= most ? most : left <= 2 ? (int)left : left <= 4 && has4 ? 4 : most;
        k = left < np ? (int)left : np;  /* pixels of this block (the rest repeat its first one's column) */
        for (p = 0; p < np; p++)
            ${name}_col(L, x, pix + (p < k ? p : 0), p, np, col);
        if (np >= 4) {
            for (oc = 0; oc < L->o; oc++) {
                const uint8_t *w = wb + oc * rowb;
                int32_t a[6] = {0, 0, 0, 0, 0, 0};
                if ((FIQNN_SIMD32_KERNELS & 8) && w4 && np == 6)
                    fiqnn_dot1x6_w4(col, w, ng, a);
                else if ((FIQNN_SIMD32_KERNELS & 16) && w4)
                    fiqnn_dot1x4_w4(col, w, ng, a);
                else if ((FIQNN_SIMD32_KERNELS & 1) && np == 6)
                    fiqnn_dot1x6_w8(col, (const int8_t *)w, ng, a);
                else if (FIQNN_SIMD32_KERNELS & 2)
                    fiqnn_dot1x4_w8(col, (const int8_t *)w, ng, a);
                puts_${name}(L, y, logits, oc, pix, k, a);
            }
            continue;
        }
        for (oc = 0; oc < L->o; oc += 2) {
            int m = L->o - oc < 2 ? 1 : 2;  /* channels of this pair (a last odd one: its row twice) */
            const uint8_t *w0 = wb + oc * rowb, *w1 = wb + (oc + m - 1) * rowb;
            int32_t a[4] = {0, 0, 0, 0};
            if ((FIQNN_SIMD32_KERNELS & 32) && w4)
                fiqnn_smlad_w4(col, np, w0, w1, ng * g, a);
            else if (FIQNN_SIMD32_KERNELS & 4)
                fiqnn_smlad_w8(col, np, (const int8_t *)w0, (const int8_t *)w1, ng * g, a);
            for (j = 0; j < m; j++)
                puts_${name}(L, y, logits, oc + j, pix, k, a + 2 * j);
        }
    }
}
#endif

#if FIQNN_COLS
#if FIQNN_COLS == 16
typedef int16_t ${name}_col_t;
#else
typedef $xt ${name}_col_t;
#endif

/* Output pixel pixel's window as kh * kw * C column elements, window cell after cell (zero for
 * padding): the order of a weight row. A window row inside the map (dilation 1) is one run. */
static void ${name}_im2col(const fiqnn_layer *L, const $xt *x, long pixel, ${name}_col_t *restrict d)
{
    int oy = (int)(pixel / L->wo), ox = (int)(pixel % L->wo), m = L->kw * L->c, ky, kx, c;
    int ix0 = ox * L->sw - L->pw;
    for (ky = 0; ky < L->kh; ky++, d += m) {
        int iy = oy * L->sh - L->ph + ky * L->dh;
        const $xt *restrict v = x + ((long)iy * L->w + ix0) * L->c;
        if (iy < 0 || iy >= L->h) {
            for (c = 0; c < m; c++)
                d[c] = 0;
        } else if (L->dw == 1 && ix0 >= 0 && ix0 + L->kw <= L->w) {
            for (c = 0; c < m; c++)
                d[c] = (${name}_col_t)v[c];
        } else {
            for (kx = 0; kx < L->kw; kx++) {
                int ix = ix0 + kx * L->dw;
                ${name}_col_t *restrict e = d + kx * L->c;
                if (ix >= 0 && ix < L->w) {
                    const $xt *restrict u = x + ((long)iy * L->w + ix) * L->c;
                    for (c = 0; c < L->c; c++)
                        e[c] = (${name}_col_t)u[c];
                } else {
                    for (c = 0; c < L->c; c++)
                        e[c] = 0;
                }
            }
        }
    }
}

/* (E4) at one output pixel for all o channels from their sums without bias (a loop the compiler
 * vectorises), or the int32 accumulators when qmax is 0. */
static void ${name}_out(const fiqnn_layer *L, const int32_t *acc, long pixel, uint8_t *y, int32_t *logits)
{
    int o = L->o, j;
    const int32_t *b = L->bias;
    uint8_t *yp = y + pixel * o;
    if (L->qmax == 0) {
        for (j = 0; j < o; j++)
            logits[pixel * o + j] = b[j] + acc[j];
    } else if (L->per_channel) {
        const int32_t *mult = L->mult;
        const uint8_t *shift = L->shift;
        int32_t lo = $lo, hi = L->qmax;
        for (j = 0; j < o; j++)
            yp[j] = (uint8_t)fiqnn_requant_lane(b[j] + acc[j], mult[j], shift[j], lo, hi);
    } else {
        int32_t mult = L->mult[0], lo = $lo, hi = L->qmax;
        int shift = L->shift[0];
        for (j = 0; j < o; j++)
            yp[j] = (uint8_t)fiqnn_requant_lane(b[j] + acc[j], mult, shift, lo, hi);
    }
}

/* (E2), (E4) for windows of fewer than FIQNN_SMALL_K codes (a first conv on one channel): the
 * weights transposed once into wt (window code k of channel j at wt[k o + j]), then at every
 * output pixel all o sums at once, a loop across channels per window code. */
static void ${name}_small(const fiqnn_layer *L, const $xt *x, uint8_t *y, int32_t *logits)
{
    int n = L->kh * L->kw * L->c, o = L->o, k, j;
    long npix = (long)L->ho * L->wo, pix;
    int32_t *acc = fiqnn_cols;
    int16_t *wt = (int16_t *)(void *)(acc + o);
    ${name}_col_t *col = (${name}_col_t *)(void *)(wt + (long)n * o);
    fiqnn_row_t row[FIQNN_SMALL_K];
    for (j = 0; j < o; j++) {
        const fiqnn_row_t *r = fiqnn_row(L, j, n, row);
        for (k = 0; k < n; k++)
            wt[(long)k * o + j] = r[k];
    }
    for (pix = 0; pix < npix; pix++) {
        ${name}_im2col(L, x, pix, col);
        for (j = 0; j < o; j++)
            acc[j] = 0;
        for (k = 0; k < n; k++) {
            int32_t v = col[k];
            const int16_t *wk = wt + (long)k * o;
            if (v == 0) continue;
            for (j = 0; j < o; j++)
                acc[j] += v * wk[j];
        }
        ${name}_out(L, acc, pix, y, logits);
    }
}

#if FIQNN_VNNI
/* (E2), (E4) with VPDPBUSD (see fiqnn_pre), 8 output pixels at a time (1 for a single pixel)
 * against 32 channels at a time (64 for one pixel). Where the input codes are uint8, C is a
 * multiple of 4 and dilation in x is 1, a window inside the map is read in place, as kh runs of
 * kw * C codes (its column, if copied, is read as the same runs); other windows are copied into
 * uint8 columns of n4 codes (int8 codes XOR 128; padding is the code 0 either way, 128 for int8).
 * Returns 0, doing nothing, for a layer without prepared weights (L->pre < 0). */
static int ${name}_vnni(const fiqnn_layer *L, const $xt *x, uint8_t *y, int32_t *logits)
{
    int n = L->kh * L->kw * L->c, n4 = (n + 3) / 4 * 4, o16 = (L->o + 15) / 16 * 16, g = n4 / 4, oc, p, j;
    int direct = !$signed && L->c % 4 == 0 && L->dw == 1 && L->kh <= 8;
    int ns = direct ? L->kh : 1, gs = direct ? L->kw * L->c / 4 : g;  /* runs per column, groups per run */
    long npix = (long)L->ho * L->wo, pix, wb = 16L * n4;
    const int8_t *w;
    const int32_t *corr, *mult;
    const int64_t *shift;
    int32_t *acc = fiqnn_cols, *bias = acc + 8 * o16;
    uint8_t *col = (uint8_t *)(void *)(bias + o16);
    const uint8_t *src[64];
    if (L->pre < 0)
        return 0;
    w = (const int8_t *)(const void *)fiqnn_pre + L->pre;
    corr = (const int32_t *)(const void *)(w + (long)o16 * n4);
    mult = corr + o16;
    shift = (const int64_t *)(const void *)(mult + o16);
    for (j = 0; j < o16; j++)
        bias[j] = j < L->o ? L->bias[j] : 0;
    for (pix = 0; pix < npix; pix += 8) {  /* (a block of one pixel is the last) */
        int np = npix - pix == 1 ? 1 : 8, k = npix - pix < np ? (int)(npix - pix) : np;
        for (p = 0; p < np; p++) {
            long q = pix + (p < k ? p : 0);
            int iy = (int)(q / L->wo) * L->sh - L->ph, ix = (int)(q % L->wo) * L->sw - L->pw;
            uint8_t *d = col + (long)p * n4;
            if (direct && iy >= 0 && iy + (L->kh - 1) * L->dh < L->h && ix >= 0 && ix + L->kw <= L->w) {
                for (j = 0; j < ns; j++)  /* window row j in place */
                    src[8 * j + p] = (const uint8_t *)(const void *)x + ((long)(iy + j * L->dh) * L->w + ix) * L->c;
                continue;
            }
            ${name}_im2col(L, x, q, (${name}_col_t *)(void *)d);
            for (j = n; j < n4; j++)
                d[j] = 0;
            if ($signed)
                for (j = 0; j < n; j++)
                    d[j] ^= 128u;
            for (j = 0; j < ns; j++)  /* its column, as ns runs */
                src[8 * j + p] = d + 4L * gs * j;
        }
        for (oc = 0; oc < o16;) {
            const int8_t *wo = w + (long)oc * n4;
            if (np == 8 && o16 - oc >= 32) {
                fiqnn_vnni_block(src, ns, gs, 8, wo, wb, 2, acc + oc, o16);
                oc += 32;
            } else if (np == 8) {
                fiqnn_vnni_block(src, ns, gs, 8, wo, wb, 1, acc + oc, o16);
                oc += 16;
            } else if (o16 - oc >= 64) {
                fiqnn_vnni_block(src, ns, gs, 1, wo, wb, 4, acc + oc, o16);
                oc += 64;
            } else {
                fiqnn_vnni_block(src, ns, gs, 1, wo, wb, 1, acc + oc, o16);
                oc += 16;
            }
        }
        for (p = 0; p < k; p++) {
            int32_t *a = acc + (long)p * o16;
            if (L->qmax == 0) {
                if ($signed)
                    for (j = 0; j < L->o; j++)
                        a[j] -= corr[j];
                ${name}_out(L, a, pix + p, y, logits);
                continue;
            }
            for (j = 0; j < L->o; j += 16) {
                __m512i v = _mm512_add_epi32(_mm512_loadu_si512((const void *)(a + j)),
                                             _mm512_loadu_si512((const void *)(bias + j)));
                if ($signed)
                    v = _mm512_sub_epi32(v, _mm512_loadu_si512((const void *)(corr + j)));
                fiqnn_vnni_requant(v, mult + j, shift + j, shift + o16 + j, $lo, L->qmax,
                                   y + (pix + p) * L->o + j, L->o - j < 16 ? L->o - j : 16);
            }
        }
    }
    return 1;
}
#endif

/* (E2), (E4) on a vector core, groups 1 (see fiqnn_cols): up to FIQNN_BLOCK output pixels'
 * windows into columns (an fc's one pixel with int8 columns: its input is its column); then per
 * four output channels their weight rows (unpacked once for the block) against every four
 * columns (a last short group repeats the block's first pixel, whose sums are not kept); then
 * each pixel's o sums requantized at once. */
static void ${name}_gemm(const fiqnn_layer *L, const $xt *x, uint8_t *y, int32_t *logits)
{
    int n = L->kh * L->kw * L->c, o = L->o, oc, j, p, q;
    long npix = (long)L->ho * L->wo, pix;
    int32_t *acc = fiqnn_cols;
    ${name}_col_t *col = (${name}_col_t *)(void *)(acc + FIQNN_BLOCK * o);
    fiqnn_row_t *rows = (fiqnn_row_t *)(void *)(col + (long)FIQNN_BLOCK * n);
#if FIQNN_VNNI
    if (${name}_vnni(L, x, y, logits))
        return;
#endif
    if (n < FIQNN_SMALL_K) {
        ${name}_small(L, x, y, logits);
        return;
    }
    for (pix = 0; pix < npix; pix += FIQNN_BLOCK) {
        int k = npix - pix < FIQNN_BLOCK ? (int)(npix - pix) : FIQNN_BLOCK;
        int kc = k == 1 ? 1 : (k + 3) / 4 * 4;  /* columns filled */
        const ${name}_col_t *c = col;
#if FIQNN_COLS == 8
        if (npix == 1 && L->h * L->w == 1 && L->kh * L->kw == 1)
            c = x;
        else
#endif
            for (p = 0; p < kc; p++)
                ${name}_im2col(L, x, pix + (p < k ? p : 0), col + (long)p * n);
        for (oc = 0; oc < o; oc += 4) {
            int m = o - oc < 4 ? o - oc : 4;
            const fiqnn_row_t *w[4];
            for (j = 0; j < 4; j++)
                w[j] = j < m ? fiqnn_row(L, oc + j, n, rows + (long)j * n) : w[0];
            for (p = 0; p < k; p += 4) {
                int32_t a[16] = {0};
#if FIQNN_COLS == 16
                if (kc == 1)
                    dot1x4_s16(c, w[0], w[1], w[2], w[3], n, a);
                else
                    dot4x4_s16(c + (long)p * n, n, w[0], w[1], w[2], w[3], n, a);
#else
                if (kc == 1)
                    dot1x4_${t}s8(c, w[0], w[1], w[2], w[3], 0, n, a);
                else
                    dot4x4_${t}s8(c + (long)p * n, n, w[0], w[1], w[2], w[3], 0, n, a);
#endif
                for (j = 0; j < m; j++)
                    for (q = 0; q < 4 && p + q < k; q++)
                        acc[(p + q) * o + oc + j] = a[4 * j + q];
            }
        }
        for (p = 0; p < k; p++)
            ${name}_out(L, acc + p * o, pix + p, y, logits);
    }
}
#endif

static void $name(const fiqnn_layer *L, const $xt *x, uint8_t *y, int32_t *logits, int8_t *wrow)
{
#if FIQNN_COMPACT  /* (no SIMD32 or GEMM kernels either) */
    int n = L->kh * L->kw * (L->c / L->groups), oc, oy, ox;
    for (oy = 0; oy < L->ho; oy++)  /* row by row: right for in-place layers (L->by_row) too */
        for (oc = 0; oc < L->o; oc++) {
            const int8_t *w = weight_row(L, oc, n, wrow);
            for (ox = 0; ox < L->wo; ox++)
                put_${name}(L, y, logits, oc, (long)oy * L->wo + ox, point_${name}(L, x, w, oc, oy, ox));
        }
#else
    int n = L->kh * L->kw * (L->c / L->groups), m = L->kw * L->c;
    int runs = L->dw == 1 && L->groups == 1;
    long row = (long)L->w * L->c, step = (long)L->sw * L->c;
    int oc0, oy, ox, j, p, ky, r0, r1;
#if FIQNN_SIMD32
    if (L->simd) {
        ${name}_simd32(L, x, y, logits, (int16_t *)(void *)wrow);  /* a 4-byte aligned arena offset */
        return;
    }
    if (!(FIQNN_SIMD32_KERNELS & 64))  /* no layer of this model takes the kernels below here */
        return;
#endif
#if FIQNN_COLS
    if (L->groups == 1) {
        ${name}_gemm(L, x, y, logits);
        return;
    }
#endif
    for (r0 = 0; r0 < L->ho; r0 = r1)  /* output rows: all at once, or one by one (L->by_row) */
    for (r1 = L->by_row ? r0 + 1 : L->ho, oc0 = 0; oc0 < L->o; oc0 += 4) {
        int nb = L->o - oc0 < 4 ? L->o - oc0 : 4;
        const int8_t *w[4] = {0, 0, 0, 0};
        for (j = 0; j < nb; j++)  /* (int8 rows are read in place: wrow may be 0) */
            w[j] = weight_row(L, oc0 + j, n, L->code_bits == 8 ? wrow : wrow + (long)j * n);
        for (oy = r0; oy < r1; oy++) {
            int iy0 = oy * L->sh - L->ph;
            for (ox = 0; ox < L->wo;) {
                int ix0 = ox * L->sw - L->pw, k = 0;  /* k pixels whose windows lie inside the map in x */
                if (runs && nb == 4 && ix0 >= 0 && ix0 + L->kw <= L->w)
                    k = ox + 4 <= L->wo && ix0 + 3 * L->sw + L->kw <= L->w ? 4 : 1;
                if (k > 0) {
                    int32_t acc[16];
                    for (j = 0; j < 4; j++)
                        for (p = 0; p < 4; p++)
                            acc[4 * j + p] = L->bias[oc0 + j];
                    for (ky = 0; ky < L->kh; ky++) {
                        int iy = iy0 + ky * L->dh;
                        const $xt *r;
                        if (iy < 0 || iy >= L->h) continue;  /* a row of zero padding */
                        r = x + iy * row + (long)ix0 * L->c;
                        if (k == 4)
                            dot4x4_${t}s8(r, step, w[0], w[1], w[2], w[3], ky * m, m, acc);
                        else
                            dot1x4_${t}s8(r, w[0], w[1], w[2], w[3], ky * m, m, acc);
                    }
                    for (j = 0; j < 4; j++)
                        for (p = 0; p < k; p++)
                            put_${name}(L, y, logits, oc0 + j, (long)oy * L->wo + ox + p, acc[4 * j + p]);
                    ox += k;
                } else {
                    for (j = 0; j < nb; j++)
                        put_${name}(L, y, logits, oc0 + j, (long)oy * L->wo + ox,
                                    point_${name}(L, x, w[j], oc0 + j, oy, ox));
                    ox++;
                }
            }
        }
    }
#endif
}

""")

# (E2) and (E4) for a depthwise convolution (groups = C = O): the weights are stored (kh, kw, C),
# each (ky, kx) row of C codes starting on a byte, so that the inner loop runs over channels.
DWCONV = Template(r"""/* $name: a depthwise conv over $kind input codes. scratch: C int32 accumulators, then (packed
 * weights) the kh * kw unpacked rows of C codes. */
static void $name(const fiqnn_layer *L, const $xt *x, uint8_t *y, int32_t *logits, int8_t *scratch)
{
    int c = L->c, i, oy, ox, ky, kx;
    int32_t *acc = (int32_t *)(void *)scratch;  /* a 4-byte aligned arena offset */
    const int8_t *wd = (const int8_t *)L->weights;
    if (L->code_bits != 8) {
        int8_t *rows = scratch + 4L * c;
        for (i = 0; i < L->kh * L->kw; i++)
            weight_row(L, i, c, rows + (long)i * c);
        wd = rows;
    }
    for (oy = 0; oy < L->ho; oy++)
        for (ox = 0; ox < L->wo; ox++) {
            long pixel = (long)oy * L->wo + ox;
            for (i = 0; i < c; i++)
                acc[i] = L->bias[i];  /* (E6): no partial sum leaves int32 */
            for (ky = 0; ky < L->kh; ky++) {
                int iy = oy * L->sh - L->ph + ky * L->dh;
                if (iy < 0 || iy >= L->h) continue;
                for (kx = 0; kx < L->kw; kx++) {
                    int ix = ox * L->sw - L->pw + kx * L->dw;
                    const $xt *xp;
                    const int8_t *wp = wd + (long)(ky * L->kw + kx) * c;
                    if (ix < 0 || ix >= L->w) continue;
                    xp = x + ((long)iy * L->w + ix) * c;
                    for (i = 0; i < c; i++)
                        acc[i] += (int32_t)xp[i] * (int32_t)wp[i];
                }
            }
            if (L->qmax == 0) {
                for (i = 0; i < c; i++)
                    logits[pixel * c + i] = acc[i];
            } else {
                for (i = 0; i < c; i++)
                    y[pixel * c + i] = $requantize(acc[i], L->mult[L->per_channel ? i : 0],
                                                   L->shift[L->per_channel ? i : 0], L->qmax);
            }
        }
}

""")

LEGACY_CONV_DOC = """/* (E2) then (E4): conv or fc over H-W-C uint8 codes; writes H-W-C codes, or, if qmax == 0,
 * the H-W-C int32 accumulators (the logits, or a residual branch for an add).
 * Rows of weights are contiguous runs over (kx, channel). */"""

_REQUANTIZE = {False: "fiqnn_requantize", True: "(uint8_t)fiqnn_requantize_s8"}


def conv(in_signed: bool, out_signed: bool) -> str:
    """The conv kernel for int8 (or uint8) input codes writing signed (or unsigned) codes."""
    name = conv_name(in_signed, out_signed)
    out = ("signed codes ((E4) clamped to\n * [-qmax - 1, qmax], qmax = 2^(A-1) - 1)" if out_signed
           else "unsigned codes\n *")
    doc = LEGACY_CONV_DOC if name == "conv_hwc" else (
        f"/* {name}: conv_hwc over {'int8' if in_signed else 'uint8'} input codes, writing {out} "
        "or, if qmax == 0, the int32 accumulators. */")
    return CONV.substitute(doc=doc, name=name, signed=int(in_signed), t="s8" if in_signed else "u8",
                           xt="int8_t" if in_signed else "uint8_t",
                           ext="__sxtb16" if in_signed else "__uxtb16",
                           extr="fiqnn_sxtb16_ror8" if in_signed else "fiqnn_uxtb16_ror8",
                           requantize=_REQUANTIZE[out_signed],
                           lo="-L->qmax - 1" if out_signed else "0")


def conv_name(in_signed: bool, out_signed: bool) -> str:
    return "conv_hwc" + ("_" + "us"[in_signed] + "us"[out_signed] if in_signed or out_signed else "")


def dwconv(in_signed: bool, out_signed: bool) -> str:
    return DWCONV.substitute(name=dwconv_name(in_signed, out_signed), kind="int8" if in_signed else "uint8",
                             xt="int8_t" if in_signed else "uint8_t", requantize=_REQUANTIZE[out_signed])


def dwconv_name(in_signed: bool, out_signed: bool) -> str:
    return "dw" + conv_name(in_signed, out_signed)


MAXPOOL = r"""/* (E7) max-pool over H-W-C codes; window cells outside the map are skipped. */
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

TRANSPOSE = r"""/* The C-H-W input image -> H-W-C. */
static void transpose_chw(const uint8_t *in, uint8_t *out)
{{
    int c, i;
    for (c = 0; c < {c}; c++)
        for (i = 0; i < {hw}; i++)
            out[(long)i * {c} + c] = in[(long)c * {hw} + i];
}}

"""

ADD = r"""/* One input of an add: uint8 codes or int32 accumulators, and its multiplier. */
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

AVGPOOL = r"""typedef struct {
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

MAIN = r"""/* Harness: read N images (raw uint8, C-H-W each) from argv[1], write N x FIQNN_NUM_CLASSES
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

# ---- version 2: kernels over codes of either kind (flip 0: uint8, 128: int8) ----

WINDOW = r"""/* A pooling window over an H-W-C map of codes: the (E7) geometry, ho and wo in floor or ceil mode. */
typedef struct {
    int c, h, w;          /* input, stored H-W-C */
    int kh, kw, sh, sw, ph, pw;
    int ho, wo;           /* output */
    int flip;             /* 128: int8 codes, 0: uint8 codes (fiqnn_code) */
} fiqnn_window;

"""

MAXPOOL_CODES = r"""/* (E7) max over the window's cells inside the map (every window has one: the padding and the
 * cells of a ceil-mode window past the edge never count), for codes of either kind: b ^ flip
 * orders the bytes of int8 codes as their values, and 0 is the lowest. */
static void max_pool_codes(const fiqnn_window *P, const uint8_t *x, uint8_t *y)
{
    int c, oy, ox, ky, kx;
    for (oy = 0; oy < P->ho; oy++)
        for (ox = 0; ox < P->wo; ox++) {
            uint8_t *m = y + ((long)oy * P->wo + ox) * P->c;
            for (c = 0; c < P->c; c++)
                m[c] = 0;
            for (ky = 0; ky < P->kh; ky++) {
                int iy = oy * P->sh - P->ph + ky;
                if (iy < 0 || iy >= P->h) continue;
                for (kx = 0; kx < P->kw; kx++) {
                    int ix = ox * P->sw - P->pw + kx;
                    const uint8_t *v;
                    if (ix < 0 || ix >= P->w) continue;
                    v = x + ((long)iy * P->w + ix) * P->c;
                    for (c = 0; c < P->c; c++) {
                        uint8_t b = (uint8_t)(v[c] ^ P->flip);
                        m[c] = b > m[c] ? b : m[c];
                    }
                }
            }
            for (c = 0; c < P->c; c++)
                m[c] = (uint8_t)(m[c] ^ P->flip);
        }
}

"""

AVGPOOL_CODES = r"""typedef struct {
    fiqnn_window win;
    int count_include_pad;  /* the divisor counts the window's cells inside the padded map, else inside the map */
    int pairs;              /* 1: one (mult, shift) for every window; kh * kw: pair d - 1 for divisor d */
    const int32_t *mult;
    const uint8_t *shift;
    int32_t lo, hi;         /* the output code range */
} fiqnn_avgpool_d;

/* How many of the cells [s, s + k) lie inside [lo, hi). */
static int cells_inside(int s, int k, int lo, int hi)
{
    return (s + k < hi ? s + k : hi) - (s > lo ? s : lo);
}

/* (E10) in general: window sums of the codes inside the map, then
 * clamp(rshift_round(sum * mult[d], shift[d]), lo, hi), d the window's divisor (rows x columns
 * counted as nodes.pool_divisors does; every window has 1 <= d <= kh * kw). */
static void avg_pool_codes(const fiqnn_avgpool_d *P, const uint8_t *x, uint8_t *y)
{
    const fiqnn_window *W = &P->win;
    int pad = P->count_include_pad;
    int c, oy, ox, ky, kx;
    for (oy = 0; oy < W->ho; oy++) {
        int y0 = oy * W->sh - W->ph;
        int rows = cells_inside(y0, W->kh, pad ? -W->ph : 0, pad ? W->h + W->ph : W->h);
        for (ox = 0; ox < W->wo; ox++) {
            int x0 = ox * W->sw - W->pw;
            int d = rows * cells_inside(x0, W->kw, pad ? -W->pw : 0, pad ? W->w + W->pw : W->w);
            int j = P->pairs > 1 ? d - 1 : 0;
            for (c = 0; c < W->c; c++) {
                int64_t sum = 0;
                for (ky = 0; ky < W->kh; ky++) {
                    int iy = y0 + ky;
                    if (iy < 0 || iy >= W->h) continue;
                    for (kx = 0; kx < W->kw; kx++) {
                        int ix = x0 + kx;
                        if (ix < 0 || ix >= W->w) continue;
                        sum += fiqnn_code(x[((long)iy * W->w + ix) * W->c + c], W->flip);
                    }
                }
                y[((long)oy * W->wo + ox) * W->c + c] =
                    (uint8_t)fiqnn_clamp(fiqnn_rshift_round(sum * P->mult[j], P->shift[j]), P->lo, P->hi);
            }
        }
    }
}

"""

ADD_S = r"""/* One input of an add with signed codes: codes (flip 128: int8) or int32 accumulators, and its
 * multiplier. */
typedef struct {
    const uint8_t *codes;
    const int32_t *acc;
    int flip;
    int32_t mult;
} fiqnn_term_s;

/* (E9) y = clamp(rshift_round(sum_j v_j * mult_j, shift), lo, hi) over n elements, in int64
 * (|sum| < 2^62 is proven when the graph is built). */
static void add_terms_s(const fiqnn_term_s *t, int k, long n, int shift, int32_t lo, int32_t hi, uint8_t *y)
{
    long i;
    int j;
    for (i = 0; i < n; i++) {
        int64_t sum = 0;
        for (j = 0; j < k; j++)
            sum += (int64_t)(t[j].codes ? fiqnn_code(t[j].codes[i], t[j].flip) : t[j].acc[i]) * t[j].mult;
        y[i] = (uint8_t)fiqnn_clamp(fiqnn_rshift_round(sum, shift), lo, hi);
    }
}

"""

LUT = r"""/* (E11) y = T[x - lo_in] over n codes. The table holds output bytes (a signed code as its
 * two's-complement byte); the index is (b + off) & mask for the input byte b, with mask = 2^A - 1
 * and off = 2^(A-1) for signed codes (b = x mod 256, and 2^A divides 256), 0 for unsigned ones:
 * x - lo_in for every A-bit code, and inside the table for any byte. */
static void lut_codes(const uint8_t *x, long n, const uint8_t *table, unsigned off, unsigned mask, uint8_t *y)
{
    long i;
    for (i = 0; i < n; i++)
        y[i] = table[(x[i] + off) & mask];
}

"""

MUL = r"""typedef struct {
    long hw;              /* pixels of x, stored H-W-C */
    int c, g_map;         /* g_map: g has x's shape; else one code per channel, for every pixel */
    int x_flip, g_flip;
    int32_t mult;
    int shift;
    int32_t lo, hi;
} fiqnn_mul;

/* (E12) y = clamp(rshift_round(x * g * mult, shift), lo, hi) in int64 (|x * g| < 2^16). */
static void mul_codes(const fiqnn_mul *P, const uint8_t *x, const uint8_t *g, uint8_t *y)
{
    long p, i;
    int c;
    for (p = 0; p < P->hw; p++) {
        const uint8_t *gp = P->g_map ? g + p * P->c : g;
        for (c = 0; c < P->c; c++) {
            int64_t v;
            i = p * P->c + c;
            v = (int64_t)(fiqnn_code(x[i], P->x_flip) * fiqnn_code(gp[c], P->g_flip)) * P->mult;
            y[i] = (uint8_t)fiqnn_clamp(fiqnn_rshift_round(v, P->shift), P->lo, P->hi);
        }
    }
}

"""

REQUANT = r"""typedef struct {
    long hw;                /* pixels, stored H-W-C */
    int c, c_out, at;       /* x has c channels; y has c_out, of which it writes at .. at + c - 1 */
    int flip;               /* of x's codes */
    int per_channel;        /* one (mult, shift) per channel, else one for all */
    const int32_t *mult;
    const uint8_t *shift;
    const int64_t *offset;  /* one per channel, or 0: none */
    int32_t lo, hi;         /* the output code range */
} fiqnn_requant;

/* (E13) one input of a concatenation (one pair, no offset) and (E15) a channel affine
 * (at = 0, c_out = c): y[at + c] = clamp(rshift_round(x[c] * mult[c] + offset[c], shift[c]), lo, hi)
 * at every pixel, in int64 (below 2^62, proven when the graph is built). */
static void requant_channels(const fiqnn_requant *P, const uint8_t *x, uint8_t *y)
{
    long p;
    int c;
    for (p = 0; p < P->hw; p++)
        for (c = 0; c < P->c; c++) {
            int k = P->per_channel ? c : 0;
            int64_t v = (int64_t)fiqnn_code(x[p * P->c + c], P->flip) * P->mult[k] + (P->offset ? P->offset[c] : 0);
            y[p * P->c_out + P->at + c] = (uint8_t)fiqnn_clamp(fiqnn_rshift_round(v, P->shift[k]), P->lo, P->hi);
        }
}

"""

GATHER = r"""/* (E14) y[c] = x[index[c]] at every pixel of an H-W-C map: the codes' bytes, moved. */
static void gather_channels(const uint8_t *x, int c_in, long hw, const int32_t *index, int c_out, uint8_t *y)
{
    long p;
    int c;
    for (p = 0; p < hw; p++)
        for (c = 0; c < c_out; c++)
            y[p * c_out + c] = x[p * c_in + index[c]];
}

"""

# Every piece of model.c by name, in source order. conv_* are the CONV instances.
_KINDS = [(a, b) for a in (False, True) for b in (False, True)]
PIECES = {"layer": None, "simd32": SIMD32, "cols": COLS, "vnni": VNNI, "dot_u8": DOT_U8, "dot_s8": DOT_S8,
          "dots_u8": dots(False), "dots_s8": dots(True),
          **{conv_name(a, b): conv(a, b) for a, b in _KINDS}, **{dwconv_name(a, b): dwconv(a, b) for a, b in _KINDS},
          "maxpool": MAXPOOL, "add": ADD, "avgpool": AVGPOOL, "window": WINDOW, "maxpool_codes": MAXPOOL_CODES,
          "avgpool_codes": AVGPOOL_CODES, "add_s": ADD_S, "lut": LUT, "mul": MUL, "requant": REQUANT,
          "gather": GATHER}
# The pieces a piece uses.
NEEDS = {**{conv_name(a, b): ("layer", "simd32", "cols", "vnni", "dot_s8" if a else "dot_u8",
                                "dots_s8" if a else "dots_u8") for a, b in _KINDS},
         **{dwconv_name(a, b): ("layer",) for a, b in _KINDS},
         "maxpool": ("layer",), "maxpool_codes": ("window",), "avgpool_codes": ("window",)}
