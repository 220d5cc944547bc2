"""glibc 2.36's tanhf and expm1f in numpy float32 arithmetic, bit for bit.

XNNPACK builds its int8 TANH table with the C library's tanhf, and ai-edge-litert on
x86-64 Linux calls glibc's. glibc 2.36 (Debian 12) computes tanhf with the fdlibm
algorithm below, so its result is not always the float32 nearest to tanh(x). It differs
from a correctly rounded tanh by one unit in the last place for about 11% of uniform
random inputs in [-5, 5].

Every step is one float32 operation, as the C code compiles on x86-64 without fused
multiply-add, so numpy reproduces the rounding of each step. Compared with glibc 2.36's
libm through ctypes: tanhf on every float32 of magnitude in [0.125, 8) and on 4 million
random inputs, expm1f on 1 million, with no difference.

NOTE: other C libraries and other glibc releases may round tanhf differently in the last
place. ai-edge-litert's TANH then follows them, and this emulation does not.
"""

import numpy as np

_F32 = np.float32

_LN2_HI = _F32(6.9313812256e-01)  # 0x3f317180: ln 2 with its last bits zero
_LN2_LO = _F32(9.0580006145e-06)  # 0x3717f7d1: ln 2 - _LN2_HI
_INV_LN2 = _F32(1.4426950216e+00)  # 0x3fb8aa3b
# Scaled coefficients of the rational approximation of expm1 on [-ln2/2, ln2/2].
_Q = (_F32(-3.3333335072e-02), _F32(1.5873016091e-03), _F32(-7.9365076090e-05),
      _F32(4.0082177293e-06), _F32(-2.0109921195e-07))


def _magnitude_bits(x):
    return x.view(np.uint32).astype(np.int64) & 0x7fffffff


def expm1f(x):
    """Return glibc's expm1f(x) for a float32 array with |x| < 88 (no overflow)."""
    x = np.asarray(x, _F32)
    bits = _magnitude_bits(x)
    negative = x < 0

    # Argument reduction for |x| > ln2 / 2: x = k ln2 + r with |r| <= ln2 / 2, and
    # r = hi - lo carried with the correction c. k is +-1 below 1.5 ln2, else the float32
    # value x / ln2 + 0.5 (- 0.5 for negative x) truncated toward zero.
    k = np.zeros(x.shape, np.int64)
    hi = x.copy()
    lo = np.zeros_like(x)
    near = (bits > 0x3eb17218) & (bits < 0x3f851592)
    far = bits >= 0x3f851592
    k[near] = np.where(negative[near], -1, 1)
    hi[near] = np.where(negative[near], x[near] + _LN2_HI, x[near] - _LN2_HI)
    lo[near] = np.where(negative[near], -_LN2_LO, _LN2_LO)
    k[far] = np.trunc(_INV_LN2 * x[far] + np.where(negative[far], _F32(-0.5), _F32(0.5)))
    multiple = k[far].astype(_F32)
    hi[far] = x[far] - multiple * _LN2_HI
    lo[far] = multiple * _LN2_LO
    reduced = near | far
    r = np.where(reduced, hi - lo, x)
    c = np.where(reduced, (hi - r) - lo, _F32(0))

    # expm1(r) from the rational approximation, with e as its correction term.
    half_r = _F32(0.5) * r
    half_r2 = r * half_r
    q1, q2, q3, q4, q5 = _Q
    r1 = _F32(1) + half_r2 * (q1 + half_r2 * (q2 + half_r2 * (q3 + half_r2 * (q4 + half_r2 * q5))))
    t = _F32(3) - r1 * half_r
    e = half_r2 * ((r1 - t) / (_F32(6) - r * t))
    result = r - (r * e - half_r2)

    # Scale by 2**k, with the forms that keep the result exact for each range of k.
    e = (r * (e - c) - c) - half_r2
    exponent = k.astype(np.int32)
    k_minus_one = _F32(0.5) * (r - e) - _F32(0.5)
    k_one = np.where(r < _F32(-0.25), _F32(-2) * (e - (r + _F32(0.5))), _F32(1) + _F32(2) * (r - e))
    k_large = np.ldexp(_F32(1) - (e - r), exponent) - _F32(1)
    one_minus = (0x3f800000 - (0x1000000 >> np.clip(k, 1, 22))).astype(np.uint32).view(_F32)
    k_small = np.ldexp(one_minus - (e - r), exponent)
    power = ((0x7f - np.clip(k, 23, 126)) << 23).astype(np.uint32).view(_F32)
    k_medium = np.ldexp((r - (e + power)) + _F32(1), exponent)
    result = np.where(k == -1, k_minus_one, result)
    result = np.where(k == 1, k_one, result)
    result = np.where((k <= -2) | (k > 56), k_large, result)
    result = np.where((k >= 2) & (k < 23), k_small, result)
    result = np.where((k >= 23) & (k <= 56), k_medium, result)

    result = np.where(bits < 0x33000000, x, result)  # |x| < 2**-25: expm1(x) rounds to x
    result = np.where(negative & (bits >= 0x4195b844), _F32(-1), result)  # x <= -27 ln2
    return result.astype(_F32)


def tanhf(x):
    """Return glibc's tanhf(x) for a finite float32 array."""
    x = np.asarray(x, _F32)
    bits = _magnitude_bits(x)
    magnitude = np.abs(x)
    # |x| >= 1: 1 - 2 / (expm1(2|x|) + 2). |x| < 1: -expm1(-2|x|) / (expm1(-2|x|) + 2).
    with np.errstate(over="ignore"):
        grown = expm1f(_F32(2) * np.minimum(magnitude, _F32(22)))
    large = _F32(1) - _F32(2) / (grown + _F32(2))
    shrunk = expm1f(_F32(-2) * np.minimum(magnitude, _F32(1)))
    small = -shrunk / (shrunk + _F32(2))
    result = np.where(bits >= 0x3f800000, large, small)
    result = np.where(bits >= 0x41b00000, _F32(1), result)  # |x| >= 22
    result = np.where(x < 0, -result, result)
    result = np.where(bits < 0x24000000, x * (_F32(1) + x), result)  # |x| < 2**-55
    return result.astype(_F32)
