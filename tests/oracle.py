"""An independent pure-Python-int oracle of docs/arithmetic.md.

Written from the document, not from arith.py: exact rationals via Python's
unbounded ints and floor division (//, which floors for negative numbers too).
"""

from __future__ import annotations

from fractions import Fraction


def rshift_round(x: int, shift: int) -> int:
    """(E3): nearest integer to x / 2^shift, ties toward +infinity."""
    q = Fraction(x, 2**shift)
    return (q + Fraction(1, 2)).__floor__()


def requantize(acc: int, mult: int, shift: int, a_bits: int) -> int:
    """(E4)."""
    return min(max(rshift_round(acc * mult, shift), 0), 2**a_bits - 1)


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
