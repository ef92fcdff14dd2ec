"""The integer primitives of docs/arithmetic.md, one function per equation.

Every backend (the numpy executor, ONNX, C) computes exactly these functions;
this module is their single Python implementation. Arrays are NumPy integer
arrays (or Python ints); products are formed in int64.

>>> int(rshift_round(3, 1)), int(rshift_round(-3, 1)), int(rshift_round(5, 0))  # ties go up (E3)
(2, -1, 5)
>>> quantize_multiplier(0.5)
(1073741824, 31)
>>> int(requantize(1000, *quantize_multiplier(0.01), a_bits=4))  # 10 -> clamp (E4)
10
"""

from __future__ import annotations

import math

import numpy as np

#: Version of the integer contract. Stored in every model file. Bump it whenever any equation
#: below changes. Version 2 added signed codes, pooling variants and (E11)-(E15) and changed no
#: version-1 equation, so version-1 files are read as they were (:data:`READS`).
ARITH_VERSION = 3
READS = (1, 2, 3)  # the versions this implementation computes exactly
#: (E4)'s rounding: "single" (E3), or gemmlowp's "double" rounding (E4d), TFLite's and CMSIS-NN's.
#: Version 3 added "double"; a file that uses it declares version 3.
ROUNDINGS = ("single", "double")
DOUBLE_HALF = 2**30  # (E4d) the first rounding's half: the product is rounded at bit 31 first

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MULT_MIN, MULT_MAX = 2**30, 2**31 - 1  # (E5) normalised multiplier range
SHIFT_MIN, SHIFT_MAX = 0, 62  # (E3) keeps x + 2^(S-1) inside int64 for |x| < 2^62
MULT_REL_ERROR = 2.0**-31  # (E5) bound on |mult / 2^shift - real| / real


def weight_range(w_bits: int) -> tuple[int, int]:
    """(E1) Signed narrow range of ``w_bits``-bit weight codes.

    >>> [weight_range(b) for b in (2, 4, 8)]
    [(-1, 1), (-7, 7), (-127, 127)]
    """
    _check_bits(w_bits)
    q = 2 ** (w_bits - 1) - 1
    return -q, q


def act_range(a_bits: int) -> tuple[int, int]:
    """(E1) Unsigned range of ``a_bits``-bit activation codes.

    >>> [act_range(b) for b in (2, 4, 8)]
    [(0, 3), (0, 15), (0, 255)]
    """
    _check_bits(a_bits)
    return 0, 2**a_bits - 1


def code_range(a_bits: int, signed: bool = False) -> tuple[int, int]:
    """(E1) Range of ``a_bits``-bit activation codes: unsigned, or signed two's complement.

    >>> [code_range(b, True) for b in (2, 4, 8)], code_range(4)
    ([(-2, 1), (-8, 7), (-128, 127)], (0, 15))
    """
    _check_bits(a_bits)
    return (-(2 ** (a_bits - 1)), 2 ** (a_bits - 1) - 1) if signed else (0, 2**a_bits - 1)


def code_peak(a_bits: int, signed: bool = False) -> int:
    """The largest magnitude of an ``a_bits``-bit code: ``max(|lo|, hi)``.

    >>> code_peak(8), code_peak(8, True), code_peak(2, True)
    (255, 128, 2)
    """
    lo, hi = code_range(a_bits, signed)
    return max(-lo, hi)


def rshift_round(x, shift):
    """(E3) ``floor((x + 2^(shift-1)) / 2^shift)``: divide by 2^shift, rounding to
    nearest with ties toward +infinity ("round half up"); ``shift == 0`` returns x.

    Args:
        x: int64-representable integers with ``|x| < 2^62`` (array or int).
        shift: integers in [0, 62], broadcastable against ``x``.

    Returns:
        int64 array (or numpy int64 scalar).
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = (np.int64(1) << shift) >> 1  # 2^(shift-1), or 0 when shift == 0
    return (x + half) >> shift  # numpy's >> on int64 is arithmetic: floor division by 2^shift


def double_offset(prod, shift):
    """(E4d) What gemmlowp's double rounding adds to ``acc * mult`` before (E3)'s single one:
    ``2^30`` where ``shift > 31`` and ``prod >= -2^30``, ``-2^30`` where ``shift > 31`` and
    ``prod < -2^30``, and 0 where ``shift <= 31`` (there the first rounding is the only one).

    >>> [int(double_offset(p, s)) for p, s in ((5, 40), (-2**30, 40), (-2**30 - 1, 40), (5, 31))]
    [1073741824, 1073741824, -1073741824, 0]
    """
    prod = np.asarray(prod, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    return np.where(shift > 31, np.where(prod >= -DOUBLE_HALF, DOUBLE_HALF, -DOUBLE_HALF), 0).astype(np.int64)


def requantize(acc, mult, shift, a_bits: int, signed: bool = False, rounding: str = "single"):
    """(E4) ``clamp(rshift_round(acc * mult, shift), lo, hi)`` with ``[lo, hi]`` the range of
    ``a_bits``-bit codes, unsigned or signed (:func:`code_range`); with ``rounding="double"``,
    (E4d): ``clamp(rshift_round(acc * mult + double_offset(acc * mult, shift), shift), lo, hi)``.

    Args:
        acc: int32 accumulators (any integer array with values in int32 range).
        mult: int32 multipliers in [1, 2^31 - 1], broadcastable (per channel) against acc.
        shift: shifts in [0, 62], broadcastable against acc.
        a_bits: output bits, 2..8.
        signed: signed output codes (int8) instead of unsigned ones (uint8).

    Returns:
        uint8 (or int8) array of codes in [lo, hi].
    """
    prod = np.asarray(acc, dtype=np.int64) * np.asarray(mult, dtype=np.int64)  # |prod| < 2^62
    if rounding == "double":
        prod = prod + double_offset(prod, shift)
    return clamp_codes(rshift_round(prod, shift), a_bits, signed)


def thresholds(mult: int, shift: int, lo: int, hi: int, low: int, high: int, offset: int = 0,
               rounding: str = "single") -> list[int]:
    """The steps of (E4): T_k for k = lo+1 .. hi, the smallest integer ``a`` at which
    ``clamp(rshift_round(a * mult + offset, shift), lo, hi)`` (with ``rounding="double"``, (E4d)'s
    added offset too) reaches k, each clipped to [low, high + 1], so that the code is
    ``lo + #{k : a >= T_k}`` for every integer a in [low, high] (``mult > 0``: non-decreasing in a).
    Python integers, exact.

    >>> thresholds(1, 2, 0, 3, -100, 100), thresholds(2**30, 32, 0, 3, 0, 100, rounding="double")
    ([2, 6, 10], [1, 5, 9])
    """
    mult, shift, offset, low, high = int(mult), int(shift), int(offset), int(low), int(high)
    if mult <= 0:
        raise ValueError(f"mult must be positive, got {mult}")
    half = (1 << shift) >> 1

    def first(k: int, extra: int) -> int:  # the smallest a with a * mult + offset + extra + half >= k 2^shift
        return -((half + offset + extra - (k << shift)) // mult)

    twice = rounding == "double" and shift > 31  # (E4d): +2^30 from a0 on, -2^30 below it
    a0 = -((DOUBLE_HALF + offset) // mult)  # the smallest a with a * mult + offset >= -2^30
    out = []
    for k in range(lo + 1, hi + 1):
        t = first(k, 0)
        if twice:
            below = first(k, -DOUBLE_HALF)
            t = below if below < a0 else max(first(k, DOUBLE_HALF), a0)
        out.append(min(max(t, low), high + 1))
    return out


def clamp_codes(x, a_bits: int, signed: bool = False) -> np.ndarray:
    """The clamp of (E4): integers -> ``a_bits``-bit codes, uint8 (or int8 when signed)."""
    lo, hi = code_range(a_bits, signed)
    return np.clip(x, lo, hi).astype(np.int8 if signed else np.uint8)


def quantize_multiplier(real: float, bits: int = 31) -> tuple[int, int]:
    """(E5) Represent ``real > 0`` as ``mult / 2^shift`` with ``mult`` in
    [2^30, 2^31 - 1] and ``shift`` in [0, 62].

    ``mult`` is ``real * 2^shift`` rounded half up, so the relative error is at
    most :data:`MULT_REL_ERROR` = 2^-31. Valid for ``2^-32 <= real < 2^31 - 1/2``.
    ``bits < 31`` rounds ``mult`` to its ``bits`` leading bits (the rest zero, relative error
    2^-bits): 24 makes ``mult / 2^shift`` a float32, which runtimes that read float32 scales
    (TFLite, TFLite Micro, Vela) turn back into the same pair.

    >>> quantize_multiplier(1.0), quantize_multiplier(0.75), quantize_multiplier(2.0**-32)
    ((1073741824, 30), (1610612736, 31), (1073741824, 62))

    Raises:
        ValueError: ``real`` is not finite and positive, or outside the valid range.
    """
    if not (math.isfinite(real) and real > 0):
        raise ValueError(f"multiplier must be finite and positive, got {real}")
    if not (isinstance(bits, int) and 1 <= bits <= 31):
        raise ValueError(f"bits must be an integer in 1..31, got {bits!r}")
    frac, exp = math.frexp(real)  # real = frac * 2^exp, frac in [0.5, 1)
    mult = math.floor(math.ldexp(frac, bits) + 0.5) << (31 - bits)  # in [2^30, 2^31]; exact in float64
    shift = 31 - exp
    if mult == 2**31:  # rounding carried into the next power of two
        mult, shift = 2**30, shift - 1
    if not SHIFT_MIN <= shift <= SHIFT_MAX:
        raise ValueError(f"multiplier {real!r} is outside [2^-32, 2^31): it needs shift {shift}, "
                         f"but shifts must lie in [{SHIFT_MIN}, {SHIFT_MAX}]")
    return mult, shift


def acc_bound(w_q: np.ndarray, x_max: int, bias_q=0, x_min: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(E6) Per-output-channel bounds ``(lo, hi)`` on every partial sum of
    ``acc = bias_q + sum(w_q * x_q)``, in any summation order, with or without the
    bias, over all inputs ``x_q`` in [x_min, x_max] (x_min <= 0 <= x_max)::

        lo = min(bias_q, 0) + x_max * sum(min(w_q, 0)) + x_min * sum(max(w_q, 0))
        hi = max(bias_q, 0) + x_max * sum(max(w_q, 0)) + x_min * sum(min(w_q, 0))

    Args:
        w_q: integer weights, output channel first: (O, ...) for conv or linear.
        x_max: largest input code (2^A - 1 of an unsigned input, 2^(A-1) - 1 of a signed one).
        bias_q: int32 bias per output channel (or 0).
        x_min: smallest input code (0, or -2^(A-1) of a signed input).

    Returns:
        Two int64 arrays of shape (O,).

    >>> lo, hi = acc_bound(np.array([[3, -2, 1], [-1, -1, 0]]), 15, np.array([5, -7]))
    >>> lo.tolist(), hi.tolist()
    ([-30, -37], [65, 0])
    >>> [b.tolist() for b in acc_bound(np.array([[3, -2]]), 7, 0, -8)]
    [[-38], [37]]
    """
    w = np.asarray(w_q, dtype=np.int64).reshape(len(w_q), -1)
    bias = np.broadcast_to(np.asarray(bias_q, dtype=np.int64), (len(w),))
    neg, pos = np.minimum(w, 0).sum(axis=1), np.maximum(w, 0).sum(axis=1)
    lo = np.minimum(bias, 0) + int(x_max) * neg + int(x_min) * pos
    hi = np.maximum(bias, 0) + int(x_max) * pos + int(x_min) * neg
    return lo, hi


def exact_float_dtype(bound: int) -> np.dtype:
    """(E8) The narrowest float type in which integer sums of products whose every
    partial sum has magnitude <= ``bound`` are computed exactly, in any order:
    float32 up to 2^24, float64 up to 2^53 (each is exact while results are integers
    within its significand). Used for fast, exact accumulation through BLAS.

    >>> exact_float_dtype(2**24), exact_float_dtype(2**24 + 1), exact_float_dtype(2**31)
    (dtype('float32'), dtype('float64'), dtype('float64'))
    """
    if bound <= 2**24:
        return np.dtype(np.float32)
    if bound <= 2**53:
        return np.dtype(np.float64)
    raise ValueError(f"no float type holds integers up to {bound} exactly")


def fits_int32(lo: np.ndarray, hi: np.ndarray) -> bool:
    """(E6) True when every bound lies in [-2^31, 2^31 - 1]."""
    return bool(np.all(np.asarray(lo) >= INT32_MIN) and np.all(np.asarray(hi) <= INT32_MAX))


def _check_bits(bits: int) -> None:
    if not (isinstance(bits, (int, np.integer)) and 2 <= bits <= 8):
        raise ValueError(f"bit width must be an integer in 2..8, got {bits!r}")
