"""arith.py against the independent oracle (tests/oracle.py), exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fiqnn.integer import arith
from tests import oracle

INT32 = st.integers(arith.INT32_MIN, arith.INT32_MAX)
MULT = st.integers(1, arith.MULT_MAX)
SHIFT = st.integers(arith.SHIFT_MIN, arith.SHIFT_MAX)
BITS = st.integers(2, 8)

# (x, shift, expected) straight from the worked table of docs/arithmetic.md (E3).
GOLDEN_RSHIFT = [
    (3, 1, 2), (-3, 1, -1), (5, 1, 3), (-5, 1, -2), (6, 2, 2), (7, 2, 2), (-6, 2, -1), (-7, 2, -2),
    (1, 62, 0), (2**61, 62, 1), (-(2**61), 62, 0), (9, 0, 9), (-9, 0, -9), (0, 0, 0), (0, 62, 0),
    (2**62 - 1, 62, 1), (-(2**62) + 1, 62, -1), (2**62 - 1, 1, 2**61), (-(2**62) + 1, 1, -(2**61) + 1),
]


@pytest.mark.parametrize("x, shift, expected", GOLDEN_RSHIFT)
def test_rshift_round_golden(x, shift, expected):
    assert oracle.rshift_round(x, shift) == expected
    assert int(arith.rshift_round(x, shift)) == expected


def test_rshift_round_vectorised_per_channel():
    x = np.array([[3, -3], [7, -7]], dtype=np.int64)
    shift = np.array([1, 2])  # one shift per column
    expected = [[oracle.rshift_round(int(v), int(s)) for v, s in zip(row, shift)] for row in x]
    assert arith.rshift_round(x, shift).tolist() == expected


# (acc, mult, shift, a_bits): int32 extremes, ties at the clamp edges, shift 0 and 62.
GOLDEN_REQUANT = [
    (arith.INT32_MAX, arith.MULT_MAX, 62, 8), (arith.INT32_MIN, arith.MULT_MAX, 62, 8),
    (arith.INT32_MAX, arith.MULT_MAX, 0, 8), (arith.INT32_MIN, 1, 0, 8), (0, arith.MULT_MAX, 62, 2),
    (1, 2**30, 31, 4), (3, 2**30, 31, 4), (-1, 2**30, 31, 4), (29, 2**30, 31, 4), (31, 2**30, 31, 4),
    (2**31 - 1, 2**30, 31, 8), (255, 1, 0, 8), (256, 1, 0, 8), (4, 1, 0, 2), (-1, 1, 0, 2),
]


@pytest.mark.parametrize("acc, mult, shift, a_bits", GOLDEN_REQUANT)
def test_requantize_golden(acc, mult, shift, a_bits):
    got = arith.requantize(np.array([acc], dtype=np.int32), mult, shift, a_bits)
    assert got.dtype == np.uint8
    assert int(got[0]) == oracle.requantize(acc, mult, shift, a_bits)


def test_requantize_ties_round_half_up():
    # 1 * 2^30 / 2^31 = 0.5 -> 1; 3 * 0.5 = 1.5 -> 2; 29 * 0.5 = 14.5 -> 15; 31 * 0.5 -> clamp 15.
    got = arith.requantize(np.array([1, 3, 29, 31, -1]), 2**30, 31, 4)
    assert got.tolist() == [1, 2, 15, 15, 0]


@given(st.integers(-(2**62) + 1, 2**62 - 1), SHIFT)
def test_rshift_round_matches_oracle(x, shift):
    assert int(arith.rshift_round(x, shift)) == oracle.rshift_round(x, shift)


@given(INT32, MULT, SHIFT, BITS)
def test_requantize_matches_oracle(acc, mult, shift, a_bits):
    assert int(arith.requantize(acc, mult, shift, a_bits)) == oracle.requantize(acc, mult, shift, a_bits)


@given(st.lists(INT32, min_size=1, max_size=16), MULT, SHIFT, BITS)
def test_requantize_array_matches_oracle(accs, mult, shift, a_bits):
    got = arith.requantize(np.array(accs, dtype=np.int32), mult, shift, a_bits)
    assert got.tolist() == [oracle.requantize(a, mult, shift, a_bits) for a in accs]


@given(st.floats(2.0**-32, 2.0**31 - 1, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_matches_oracle_and_error_bound(real):
    mult, shift = arith.quantize_multiplier(real)
    assert (mult, shift) == oracle.quantize_multiplier(real)
    assert arith.MULT_MIN <= mult <= arith.MULT_MAX
    assert arith.SHIFT_MIN <= shift <= arith.SHIFT_MAX
    from fractions import Fraction

    rel = abs(Fraction(mult, 2**shift) - Fraction(real)) / Fraction(real)
    assert rel <= Fraction(1, 2**31)


def test_quantize_multiplier_edges():
    assert arith.quantize_multiplier(2.0**-32) == (2**30, 62)
    assert arith.quantize_multiplier(1.0) == (2**30, 30)
    # just below a power of two: rounding carries into 2^31, renormalised
    assert arith.quantize_multiplier(1.0 - 2.0**-40) == (2**30, 30)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 2.0**-33, 2.0**31):
        with pytest.raises(ValueError, match="multiplier"):
            arith.quantize_multiplier(bad)


def test_rshift_in_requantize_can_clamp_first():
    """docs/arithmetic.md (E4): clamping acc*mult + half at 0 before the shift is equivalent."""
    rng = np.random.default_rng(0)
    acc = rng.integers(arith.INT32_MIN, arith.INT32_MAX, 10_000, endpoint=True)
    mult, shift = 1_500_000_000, 40
    direct = arith.requantize(acc, mult, shift, 8)
    p = np.maximum(acc.astype(np.int64) * mult + (1 << (shift - 1)), 0)
    assert np.array_equal(direct, np.minimum(p >> shift, 255).astype(np.uint8))


@given(st.lists(st.integers(-127, 127), min_size=1, max_size=20), st.integers(0, 255),
       st.integers(-(2**20), 2**20), st.data())
def test_acc_bound_contains_every_partial_sum(w, x_max, bias, data):
    lo, hi = arith.acc_bound(np.array([w]), x_max, np.array([bias]))
    xs = data.draw(st.lists(st.integers(0, x_max), min_size=len(w), max_size=len(w)))
    partial = 0
    for wi, xi in zip(w, xs):
        partial += wi * xi
        assert lo[0] <= partial <= hi[0]
        assert lo[0] <= partial + bias <= hi[0]


def test_acc_bound_is_tight_and_fits_int32():
    w = np.full((1, 8), 127)
    lo, hi = arith.acc_bound(w, 255)
    assert (int(lo[0]), int(hi[0])) == (0, 8 * 127 * 255)  # reached by x = 255 everywhere
    big = np.full((1, 70_000), 127)  # 70,000 * 127 * 255 > 2^31
    assert arith.fits_int32(lo, hi) and not arith.fits_int32(*arith.acc_bound(big, 255))


@pytest.mark.parametrize("bits", [1, 9, 0, 2.5, "4"])
def test_bits_outside_2_to_8_refused(bits):
    with pytest.raises(ValueError, match="2..8"):
        arith.weight_range(bits)


def _double_ok(acc: int, shift: int) -> bool:
    """(E4d)'s range: TFLite shifts acc left by 31 - shift in int32 first."""
    return shift >= 31 or -(2**31) <= acc * 2 ** (31 - shift) < 2**31


@given(INT32, MULT, SHIFT, BITS, st.booleans())
def test_double_rounding_matches_gemmlowp(acc, mult, shift, a_bits, signed):
    """(E4d): the offset form of arith equals gemmlowp's two roundings, step by step (oracle)."""
    if not _double_ok(acc, shift):
        return
    got = int(arith.requantize(acc, mult, shift, a_bits, signed, rounding="double"))
    assert got == oracle.requantize(acc, mult, shift, a_bits, signed, rounding="double")


def test_double_differs_from_single_and_ties_away_from_zero():
    # alpha = 1/4 (mult 2^30, shift 32): acc 1 -> 0.25. Single: 0. Double: 0.5 at bit 31 rounds up to 1,
    # then 1/2 rounds half up to 1. acc -1 (signed): single -0.25 -> 0; double: -0.5 -> 0 (up), 0 / 2 -> 0.
    # acc -3: -0.75 -> single -1; double: -1.5 -> -1, then -1/2 rounds half away from zero -> -1.
    acc = np.array([1, -1, -3, 2, -2, 6, -6])
    single = arith.requantize(acc, 2**30, 32, 8, True).tolist()
    double = arith.requantize(acc, 2**30, 32, 8, True, rounding="double").tolist()
    assert single == [0, 0, -1, 1, 0, 2, -1]
    assert double == [1, 0, -1, 1, -1, 2, -2]
    assert double == [oracle.requantize(int(a), 2**30, 32, 8, True, "double") for a in acc]


@given(MULT, st.integers(0, 62), BITS, st.booleans(), st.sampled_from(arith.ROUNDINGS), st.data())
def test_thresholds_are_the_steps_of_requantize(mult, shift, a_bits, signed, rounding, data):
    """code(a) = lo + #{k : a >= T_k} on a window of accumulators around every threshold."""
    lo, hi = arith.code_range(a_bits, signed)
    low, high = -(2**31), 2**31 - 1
    if rounding == "double" and shift < 31:
        low, high = -(2**shift), 2**shift - 1  # (E4d)'s left shift stays inside int32
    t = arith.thresholds(mult, shift, lo, hi, low, high, rounding=rounding)
    assert t == sorted(t)
    k = data.draw(st.integers(0, len(t) - 1))
    a = np.clip(np.arange(t[k] - 3, t[k] + 3), low, high)
    want = arith.requantize(a, mult, shift, a_bits, signed, rounding).astype(np.int64)
    got = lo + (a[:, None] >= np.array(t)[None]).sum(axis=1)
    assert got.tolist() == want.tolist()


def test_quantize_multiplier_24_bits_is_float32():
    for real in (0.0123456789, 1.0 - 2.0**-40, 3.3e-7):
        mult, shift = arith.quantize_multiplier(real, bits=24)
        assert mult % 128 == 0 and arith.MULT_MIN <= mult <= arith.MULT_MAX
        assert float(np.float32(mult / 2.0**shift)) == mult / 2.0**shift
        assert abs(mult / 2.0**shift - real) / real <= 2.0**-24


def test_config_knows_the_roundings_of_the_contract():
    from fiqnn import config

    assert config.ROUNDINGS == arith.ROUNDINGS
