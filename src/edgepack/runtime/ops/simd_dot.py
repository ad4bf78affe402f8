"""Dot products of several weight rows with one vector, their sums reduced in registers (an LLVM vector intrinsic for
Numba kernels: the recurrence's matrix-vector product R h at every step of runtime/ops/recurrent.py), and the one
float32 dot product of two vectors (dot: the rows' column tails there, conv_pointwise.py's matrix-vector product).

rows_dot8(w, w0, k, kv, x, out, o0) (w, x, out: 1-D C-contiguous float32): for q < 8, out[o0 + q] = sum over
i < kv of w[w0 + q * k + i] * x[i]: eight rows of length k (a row-major matrix flattened, w0 the first row's offset),
their first kv (a multiple of LANES) columns. Each row's sum is one <8 x float> accumulator over the columns in chunks
of 8 (one load of x per chunk shared by the eight rows, one fused multiply-add per row and chunk), then the eight
accumulators are reduced together: three levels of shuffles and adds fold them into one vector holding the eight
sums, stored at once. Per row, a dot-product loop ends in a horizontal sum of its own (about 8 instructions), which
at small hidden sizes weighs as much as the products: hey_mycroft's 256 x 64 R took 0.95 us a step as dot products,
0.79 so (1 thread, CPU time, load 3.4). The IR is generic (LLVM lowers it to AVX-512, AVX2, SSE or NEON), eight
accumulators and a chunk fit the 16 registers of AVX2, and the order of every sum is fixed at compile time (chunks in
order, then the same reduction tree), so runs are bit-identical.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 8  # columns per chunk, and rows per call of rows_dot8


@njit(cache=True, fastmath={"reassoc", "contract"})
def dot(a, b):
    """Dot product of two contiguous float32 vectors; reassociation lets it run in SIMD (4-8x faster than the
    strict left-to-right sum; the order is still fixed at compile time, so runs are bit-identical)."""
    acc = np.float32(0.0)
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


def _reduce_indices(m: int, lanes: int) -> tuple[list[int], list[int]]:
    """Shuffle indices over concat(A, B) (2 * lanes) that fold two vectors, each holding m rows' partial sums in
    segments of lanes / m lanes, into one holding the 2m rows (A's, then B's) in segments of half the size: result
    segment t takes the first half of its source segment (lo) and the second half (hi); lo + hi is the fold."""
    s = lanes // m
    lo, hi = [], []
    for t in range(2 * m):
        src = (0 if t < m else lanes) + (t % m) * s
        lo += list(range(src, src + s // 2))
        hi += list(range(src + s // 2, src + s))
    return lo, hi


def _rows_dot(lanes: int, nrows: int):
    """rows_dot for nrows rows (a power of two) in chunks of `lanes` columns (a power of two, >= nrows)."""

    @intrinsic
    def rows_dot(typingctx, w_t, w0_t, k_t, kv_t, x_t, out_t, o0_t):
        for t in (w_t, x_t, out_t):
            if not isinstance(t, types.Array) or t.dtype != types.float32 or t.layout != "C" or t.ndim != 1:
                return None
        sig = types.void(w_t, types.int64, types.int64, types.int64, x_t, out_t, types.int64)

        def codegen(context, builder, signature, args):
            w, w0, k, kv, x, out, o0 = args
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vt = ir.VectorType(f32, lanes)
            wa, xa, oa = (context.make_array(signature.args[i])(context, builder, v)
                          for i, v in ((0, w), (4, x), (5, out)))

            def vec_at(base, offset, t=vt):
                return builder.bitcast(builder.gep(base, [offset]), t.as_pointer())

            sums = [cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * lanes)) for _ in range(nrows)]
            rows = [builder.gep(wa.data, [builder.add(w0, builder.mul(k, ir.Constant(i64, q)))])
                    for q in range(nrows)]
            with cgutils.for_range(builder, builder.udiv(kv, ir.Constant(i64, lanes))) as loop:
                i = builder.mul(loop.index, ir.Constant(i64, lanes))
                xv = builder.load(vec_at(xa.data, i), align=4)
                for q in range(nrows):
                    wv = builder.load(vec_at(rows[q], i), align=4)
                    builder.store(builder.fadd(builder.load(sums[q]), builder.fmul(wv, xv, flags=("contract",)),
                                               flags=("contract",)), sums[q])
            vs = [builder.load(s) for s in sums]
            width = lanes
            while width > nrows:  # each accumulator folded onto its first half until it is nrows lanes wide
                half = width // 2
                lo_c = ir.Constant(ir.VectorType(i32, half), list(range(half)))
                hi_c = ir.Constant(ir.VectorType(i32, half), list(range(half, width)))
                vs = [builder.fadd(builder.shuffle_vector(v, v, lo_c), builder.shuffle_vector(v, v, hi_c))
                      for v in vs]
                width = half
            m = 1
            while len(vs) > 1:
                lo, hi = _reduce_indices(m, width)
                lo_c, hi_c = (ir.Constant(ir.VectorType(i32, width), idx) for idx in (lo, hi))
                vs = [builder.fadd(builder.shuffle_vector(a, b, lo_c), builder.shuffle_vector(a, b, hi_c))
                      for a, b in zip(vs[0::2], vs[1::2])]
                m *= 2
            builder.store(vs[0], vec_at(oa.data, o0, ir.VectorType(f32, nrows)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return rows_dot


# 8 rows in chunks of 8 columns: on the dev VM (AVX-512) as fast as or faster than 8 rows in chunks of 16 and 16 rows in
# chunks of 16 on the recurrent corpus's R (2048 x 512, 256 x 64, 128 x 32, 512 x 128), and it fits AVX2's registers.
# A software prefetch of the next call's rows (llvm.prefetch) made it slower: 2048 x 512 57 -> 87 us, 256 x 64 0.85 ->
# 1.11 (1 thread, CPU time, load 3.5)
rows_dot8 = _rows_dot(LANES, LANES)
