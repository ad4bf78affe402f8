"""float32 scalar math that the kernels inline: fma32 (one rounding), expf (Cephes' polynomial, 2^n from its exponent
bits), the sigmoid and the tanh built on it. Each is `inline="always"` so that a loop calling it vectorises, and each
gives the same bits wherever it is inlined (an elementwise op's own kernel, a conv's fused epilogue chain, an LSTM
cell): exporters' Sigmoid-then-Mul after a conv and the same nodes run one by one must agree exactly.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir as llvm_ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def _pow2_of_rounded(typingctx, m):
    """2^n as float32 for m = 1.5 * 2^23 + n (the round-to-nearest sum of expf; -126 <= n <= 127): the float whose
    bits are (bits(m) + 127) << 23 in int32 (n + 127 lands in the exponent, the magic's own bits shift out): two
    integer operations, no float -> int conversion."""
    if m != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32 = llvm_ir.IntType(32)
        bits = builder.add(builder.bitcast(args[0], i32), i32(127))
        return builder.bitcast(builder.shl(bits, i32(23)), context.get_value_type(types.float32))
    return types.float32(types.float32), codegen


@intrinsic
def fma32(typingctx, a, b, c):
    """a * b + c rounded once (llvm.fma: one instruction where the CPU has FMA, as x86-64 since Haswell / Zen and
    ARM64 have; else the exact libm fmaf). Explicit rather than fastmath "contract": contraction is LLVM's choice per
    loop, so the same expression could round differently inlined in two kernels (a fused chain and the node's own
    kernel must give the same bits)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, sig, args):
        f32 = context.get_value_type(types.float32)
        fnty = llvm_ir.FunctionType(f32, [f32, f32, f32])
        return builder.call(builder.module.declare_intrinsic("llvm.fma", [f32], fnty), args)
    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True, inline="always", error_model="numpy")
def expf_core(z):
    """exp(z) in float32 for z in [-87, 88]: 2^n * p(r) (Cephes expf: n = round(z / ln 2), r = z - n ln 2 in two
    parts, a degree-5 polynomial, its multiply-adds as FMAs), 2^n made from its exponent bits; z is clamped to that
    range first (NaN -> -87: the callers restore it)."""
    f = np.float32
    v = z if z > f(-87.0) else f(-87.0)
    v = v if v < f(88.0) else f(88.0)
    m = fma32(v, f(1.44269504088896341), f(12582912.0))  # 1.5 * 2^23 + n: n = round(v / ln 2) in its low bits
    n = m - f(12582912.0)
    scale = _pow2_of_rounded(m)
    r = fma32(-n, f(0.693359375), v)
    r = fma32(-n, f(-2.12194440e-4), r)
    p = fma32(f(1.9875691500e-4), r, f(1.3981999507e-3))
    p = fma32(p, r, f(8.3334519073e-3))
    p = fma32(p, r, f(4.1665795894e-2))
    p = fma32(p, r, f(1.6666665459e-1))
    p = fma32(p, r, f(5.0000001201e-1))
    return (fma32(p * r, r, r) + f(1.0)) * scale


@njit(cache=True, inline="always", error_model="numpy")
def expf(z):
    """exp(z) in float32, for loops that vectorise (expf_core): within 2 ulp of exp; z < -87 gives 0, z > 88
    gives exp(88); NaN stays NaN."""
    e = expf_core(z)
    e = np.float32(0.0) if z < np.float32(-87.0) else e
    return e if z == z else z


@njit(cache=True, inline="always", error_model="numpy")
def sigmoid_value(v):
    """1 / (1 + exp(-v)): within 2 ulp of the exact sigmoid (relative 1.4e-7); v < -88 gives 0 and v > 87 gives
    1; NaN stays NaN. expf_core without expf's two selects: for v > 87 its exp(-87) (1.6e-38) vanishes in 1 + e as
    expf's 0 does, and NaN is restored here (two of the loop's ~36 instructions)."""
    f = np.float32
    s = f(1.0) / (f(1.0) + expf_core(-v))
    s = f(0.0) if v < f(-88.0) else s
    return s if v == v else v


@njit(cache=True, inline="always", error_model="numpy")
def tanh_value(v):
    """2 / (1 + exp(-2v)) - 1 (expf_core: exp(-2v) clamped to [exp(-87), exp(88)], where 1 + e
    rounds to what expf's 0 and exp(88) give); NaN stays NaN."""
    f = np.float32
    t = f(2.0) / (f(1.0) + expf_core(f(-2.0) * v)) - f(1.0)
    return t if v == v else v
