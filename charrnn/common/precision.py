"""`--precision` (docs/SPEC.md section 12): what each choice does to a product's operands,
and bfloat16 rounding in NumPy alone, so the reference emulates bf16-mixed exactly in both
environments (the legacy one has no ml_dtypes).

    >>> to_bf16(np.array([1.0, 1.00390625, 1.005859375, 3.14159265], np.float32)).tolist()
    [1.0, 1.0, 1.0078125, 3.140625]
"""

from __future__ import annotations

import numpy as np

from charrnn.common.config import BF16_MIXED

# bfloat16 keeps float32's 8 exponent bits and 8 of its 24 significand bits (7 stored,
# one implicit): the spacing of the values in [1, 2) is eps = 2^-7, and round-to-nearest
# errs by at most half of it, u = 2^-8 relative (ml_dtypes.finfo(bfloat16): eps
# 0.0078125, epsneg 0.00390625). Not 2^-9: that would take 8 stored bits.
BF16_UNIT_ROUNDOFF = 2.0 ** -8


def to_bf16(a: np.ndarray) -> np.ndarray:
    """`a` rounded to the nearest bfloat16, ties to even, returned as float32 (the values
    are exactly representable in bf16; the dtype stays float32 so NumPy's float32 GEMM
    multiplies them, and the product of two such values is exact in float32).

    On the bits: adding 0x7FFF plus the lowest kept bit, then clearing the low 16, is
    round-half-to-even on the top 16 bits; an overflow past the largest finite bf16
    carries into the exponent and gives inf, as IEEE rounding does. NaN and inf are
    returned as they are (the addition could turn a NaN's payload into inf)."""
    a = np.asarray(a, np.float32)
    bits = a.view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) \
        & np.uint32(0xFFFF0000)
    out = rounded.view(np.float32)
    special = ~np.isfinite(a)
    if special.any():
        out = np.where(special, a, out)
    return out


def identity(a: np.ndarray) -> np.ndarray:
    """fp32's operand rounding: none (the same array, so fp32 runs the same operations)."""
    return a


def operand_rounding(precision: str):
    """The function applied to every operand of a matrix product under `precision`."""
    return to_bf16 if precision == BF16_MIXED else identity
