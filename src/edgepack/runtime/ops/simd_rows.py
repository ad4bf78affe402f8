"""One LLVM vector intrinsic for Numba kernels: a sparse row times a 32-lane tile, its accumulators in registers.

row_fma32(xt, cols, codes, codebook, e0, e1, acc, a0) adds, for every entry e in [e0, e1),
codebook[codes[e]] * xt[32 * cols[e]: 32 * cols[e] + 32] to acc[a0: a0 + 32] (float32). xt holds 32 samples of each
input feature side by side (a transposed tile of x), so one entry is one broadcast weight and two 16-lane fused
multiply-adds on contiguous lanes: no gather, no store per entry. Written as LLVM IR because Numba keeps a small local
array in memory, where every entry would then load and store the 32 sums (a store-to-load chain per entry, 3-4x
slower); here four <16 x float> sums (two entries a pass) stay in registers. The IR is generic: LLVM lowers it to
AVX-512, AVX2 or SSE, whichever the machine has. Entries are summed in a fixed order (even entries into one pair of
sums, odd into the other, added at the end), so runs are bit-identical.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 32


@intrinsic
def row_fma32(typingctx, xt_t, cols_t, codes_t, codebook_t, e0_t, e1_t, acc_t, a0_t):
    for t in (xt_t, codebook_t, acc_t):
        if not isinstance(t, types.Array) or t.dtype != types.float32 or t.layout != "C":
            return None
    for t in (cols_t, codes_t):
        if not isinstance(t, types.Array) or not isinstance(t.dtype, types.Integer) or t.layout != "C":
            return None
    sig = types.void(xt_t, cols_t, codes_t, codebook_t, types.int64, types.int64, acc_t, types.int64)

    def codegen(context, builder, signature, args):
        xt, cols, codes, codebook, e0, e1, acc, a0 = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        v16 = ir.VectorType(f32, 16)
        xa, ca, da, ba, aa = (context.make_array(signature.args[i])(context, builder, v)
                              for i, v in ((0, xt), (1, cols), (2, codes), (3, codebook), (6, acc)))

        def widen(value, dtype):
            return builder.sext(value, i64) if dtype.signed else builder.zext(value, i64)

        def vec_at(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), v16.as_pointer())

        out = builder.gep(aa.data, [a0])
        zero = ir.Constant(v16, [0.0] * 16)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        splat = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
        c16 = ir.Constant(i64, 16)

        def entry(e, lo, hi):
            col = widen(builder.load(builder.gep(ca.data, [e])), signature.args[1].dtype) \
                if signature.args[1].dtype.bitwidth < 64 else builder.load(builder.gep(ca.data, [e]))
            code = widen(builder.load(builder.gep(da.data, [e])), signature.args[2].dtype) \
                if signature.args[2].dtype.bitwidth < 64 else builder.load(builder.gep(da.data, [e]))
            w = builder.load(builder.gep(ba.data, [code]))
            wv = builder.shuffle_vector(builder.insert_element(ir.Constant(v16, None), w, ir.Constant(i32, 0)),
                                        ir.Constant(v16, None), splat)
            base = builder.gep(xa.data, [builder.mul(col, ir.Constant(i64, LANES))])
            for s, off in ((lo, ir.Constant(i64, 0)), (hi, c16)):
                x = builder.load(vec_at(base, off), align=4)
                builder.store(builder.fadd(builder.load(s), builder.fmul(wv, x, flags=("contract",)),
                                           flags=("contract",)), s)

        n = builder.sub(e1, e0)
        with cgutils.for_range(builder, builder.lshr(n, ir.Constant(i64, 1))) as loop:
            e = builder.add(e0, builder.shl(loop.index, ir.Constant(i64, 1)))
            entry(e, sums[0], sums[1])
            entry(builder.add(e, ir.Constant(i64, 1)), sums[2], sums[3])
        with builder.if_then(builder.trunc(n, ir.IntType(1))):
            entry(builder.sub(e1, ir.Constant(i64, 1)), sums[0], sums[1])
        for s_even, s_odd, off in ((sums[0], sums[2], ir.Constant(i64, 0)), (sums[1], sums[3], c16)):
            p = vec_at(out, off)
            total = builder.fadd(builder.load(s_even), builder.load(s_odd))
            builder.store(builder.fadd(builder.load(p, align=4), total), p, align=4)
        return context.get_dummy_value()

    return sig, codegen
