/* fiqnn_arith.h: the integer contract of docs/arithmetic.md in C99.
 *
 * The C mirror of src/fiqnn/integer/arith.py: same function names, same equations.
 * No float, no libm, no division, and no right shift of a negative signed value
 * (implementation-defined in C): floor(y / 2^s) of a negative y is computed as
 * ~(~y >> s), where ~y = -y - 1 is non-negative.
 */
#ifndef FIQNN_ARITH_H
#define FIQNN_ARITH_H

#include <stdint.h>

#define FIQNN_ARITH_VERSION 3

/* (E4)'s rounding, one for the whole model (model.c defines it): 0 single (E3), 1 gemmlowp's
 * two roundings (E4d), what TFLite's and CMSIS-NN's MultiplyByQuantizedMultiplier compute. */
#ifndef FIQNN_GEMMLOWP_ROUNDING
#define FIQNN_GEMMLOWP_ROUNDING 0
#endif

/* (E3) floor((x + 2^(shift-1)) / 2^shift), ties toward +infinity; shift 0 returns x.
 * Ranges: |x| < 2^62, 0 <= shift <= 62. */
static inline int64_t fiqnn_rshift_round(int64_t x, int shift)
{
    int64_t y = x + (shift > 0 ? (INT64_C(1) << (shift - 1)) : 0);
    return y >= 0 ? (y >> shift) : ~((~y) >> shift);
}

/* (E4d) what the two roundings add to p = acc * mult before (E3): 2^30 where shift > 31 and
 * p >= -2^30, -2^30 where shift > 31 and p < -2^30, else 0; always 0 under single rounding. */
static inline int64_t fiqnn_gemmlowp_offset(int64_t p, int shift)
{
    if (!FIQNN_GEMMLOWP_ROUNDING || shift <= 31)
        return 0;
    return p >= -(INT64_C(1) << 30) ? (INT64_C(1) << 30) : -(INT64_C(1) << 30);
}

/* (E4) clamp(rshift_round(acc * mult, shift), 0, qmax) (or (E4d)), the product in int64.
 * Ranges: acc int32, 1 <= mult <= 2^31 - 1, 0 <= shift <= 62, qmax = 2^A - 1. */
static inline uint8_t fiqnn_requantize(int32_t acc, int32_t mult, int shift, int32_t qmax)
{
    int64_t p = (int64_t)acc * (int64_t)mult;
    int64_t r = fiqnn_rshift_round(p + fiqnn_gemmlowp_offset(p, shift), shift);
    return (uint8_t)(r < 0 ? 0 : (r > qmax ? qmax : r));
}

/* (E1) The value of a code from its byte b: flip 0 for an unsigned code (b itself), 128 for a
 * signed one, whose byte is its two's-complement int8: (b ^ 128) - 128. */
static inline int32_t fiqnn_code(uint8_t b, int flip)
{
    return (int32_t)(b ^ flip) - flip;
}

/* The clamp of (E4): v limited to the code range [lo, hi]. */
static inline int32_t fiqnn_clamp(int64_t v, int32_t lo, int32_t hi)
{
    return (int32_t)(v < lo ? lo : (v > hi ? hi : v));
}

/* (E4) for signed codes: clamp(rshift_round(acc * mult, shift), -qmax - 1, qmax) (or (E4d)), the
 * product in int64. Ranges as fiqnn_requantize's, qmax = 2^(A-1) - 1. */
static inline int8_t fiqnn_requantize_s8(int32_t acc, int32_t mult, int shift, int32_t qmax)
{
    int64_t p = (int64_t)acc * (int64_t)mult;
    return (int8_t)fiqnn_clamp(fiqnn_rshift_round(p + fiqnn_gemmlowp_offset(p, shift), shift), -qmax - 1, qmax);
}

#endif /* FIQNN_ARITH_H */
