"""LLVM vector shuffles for Numba kernels: a run of float32 values split into its even and odd elements, the column
phases of a stride-2 convolution's phased copy (runtime/ops/conv.py _source_channel_kernel) and of MaxPool at stride 2
(pool.py): split_row.

deinterleave16(src, s0, even, e0, odd, o0) sets even[e0 + k] = src[s0 + 2 k] and odd[o0 + k] = src[s0 + 2 k + 1] for
k < 16: two 16-lane loads, two shuffles, two 16-lane stores (deinterleave8: k < 8, with 8 lanes). Numba's own loop
(de[k] = s[2 k]; do[k] = s[2 k + 1]) took 0.2-0.4 ns a value on the rows of 40-160 values of nudenet's stride-2
layers, four times a plain row copy; with these the phased copy moves at about the copy's speed. Values are moved, not
computed: the same bits on every machine, whichever of AVX-512, AVX2, SSE or NEON LLVM lowers the shuffles to. No
bounds checks: the caller's indices must lie inside the arrays.
"""
from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


def _codegen(lanes):
    def codegen(context, builder, signature, args):
        src, s0, even, e0, odd, o0 = args
        f32, i32 = ir.FloatType(), ir.IntType(32)
        vec, vec2 = ir.VectorType(f32, lanes), ir.VectorType(f32, lanes)
        sa, ea, oa = (context.make_array(signature.args[i])(context, builder, v)
                      for i, v in ((0, src), (2, even), (4, odd)))

        def vec_at(ptr, offset):
            return builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())

        lo = builder.load(vec_at(sa.data, s0), align=4)
        hi = builder.load(vec_at(sa.data, builder.add(s0, ir.Constant(s0.type, lanes))), align=4)
        evens = ir.Constant(ir.VectorType(i32, lanes), [2 * k for k in range(lanes)])
        odds = ir.Constant(ir.VectorType(i32, lanes), [2 * k + 1 for k in range(lanes)])
        builder.store(builder.shuffle_vector(lo, hi, evens), builder.bitcast(builder.gep(ea.data, [e0]),
                                                                             vec2.as_pointer()), align=4)
        builder.store(builder.shuffle_vector(lo, hi, odds), builder.bitcast(builder.gep(oa.data, [o0]),
                                                                            vec2.as_pointer()), align=4)
        return context.get_dummy_value()

    return codegen


def _signature(src_t, even_t, odd_t):
    for t in (src_t, even_t, odd_t):
        if not isinstance(t, types.Array) or t.dtype != types.float32 or t.layout != "C":
            return None
    return types.void(src_t, types.int64, even_t, types.int64, odd_t, types.int64)


@intrinsic
def deinterleave16(typingctx, src_t, s0_t, even_t, e0_t, odd_t, o0_t):
    sig = _signature(src_t, even_t, odd_t)
    return None if sig is None else (sig, _codegen(16))


@intrinsic
def deinterleave8(typingctx, src_t, s0_t, even_t, e0_t, odd_t, o0_t):
    sig = _signature(src_t, even_t, odd_t)
    return None if sig is None else (sig, _codegen(8))


@njit(cache=True, inline="always")
def split_row(s, w, pad, d, r0, r1):
    """Input row s[:w] of a plane read at column stride 2 into its two column phases in d: padded column c = j + pad
    (input column j) goes to d[r0 + c // 2] when c is even, d[r1 + c // 2] when odd (the strided convolutions' phased
    copy, conv.py; MaxPool at stride 2, pool.py). Pairs 16 and 8 at a time by the shuffles above, the last 8 pairs
    again when they do not fill a run (the same values written twice), the rest value by value."""
    half, ph = w // 2, pad // 2
    if pad % 2 == 0:
        e0, o0 = r0 + ph, r1 + ph
    else:
        e0, o0 = r1 + ph, r0 + ph + 1
    k = 0
    while k + 16 <= half:
        deinterleave16(s, 2 * k, d, e0 + k, d, o0 + k)
        k += 16
    if k + 8 <= half:
        deinterleave8(s, 2 * k, d, e0 + k, d, o0 + k)
        k += 8
    if k < half and half >= 8:
        deinterleave8(s, 2 * (half - 8), d, e0 + half - 8, d, o0 + half - 8)
        k = half
    for j in range(k, half):
        d[e0 + j] = s[2 * j]
        d[o0 + j] = s[2 * j + 1]
    if w % 2:
        c = w - 1 + pad
        d[(r0 if c % 2 == 0 else r1) + c // 2] = s[w - 1]
