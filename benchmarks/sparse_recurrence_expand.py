"""The mask + expand candidate of benchmarks/sparse_recurrence.py: R held as one 16-bit mask per 16 columns of a row
plus the kept float32 values in order (no column indices); per chunk of 16 columns the kept values are expanded into
their lanes (LLVM's masked.expandload: AVX-512's vexpandps; other targets get scalar code) and multiplied with h in
SIMD, two vector accumulators a row. No gather: the one sparse form tried whose per-weight work is SIMD."""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def _expand_row(typingctx, vals_t, off_t, masks_t, moff_t, nchunk_t, h_t):
    """sum over chunks j < nchunk of expand(vals[off...], masks[moff + j]) * h[16 j: 16 j + 16] (float32)."""
    sig = types.float32(vals_t, off_t, masks_t, moff_t, nchunk_t, h_t)

    def codegen(context, builder, signature, args):
        vals, off, masks, moff, nchunk, h = args
        f32, i16, i64 = ir.FloatType(), ir.IntType(16), ir.IntType(64)
        v16, m16t = ir.VectorType(f32, 16), ir.VectorType(ir.IntType(1), 16)
        va = context.make_array(signature.args[0])(context, builder, vals)
        ma = context.make_array(signature.args[2])(context, builder, masks)
        ha = context.make_array(signature.args[5])(context, builder, h)
        mod = builder.module
        fexp = cgutils.get_or_insert_function(mod, ir.FunctionType(v16, [f32.as_pointer(), m16t, v16]),
                                              "llvm.masked.expandload.v16f32")
        fpop = cgutils.get_or_insert_function(mod, ir.FunctionType(i16, [i16]), "llvm.ctpop.i16")
        fsum = cgutils.get_or_insert_function(mod, ir.FunctionType(f32, [f32, v16]), "llvm.vector.reduce.fadd.v16f32")
        zero = ir.Constant(v16, [0.0] * 16)
        accs = (cgutils.alloca_once_value(builder, zero), cgutils.alloca_once_value(builder, zero))
        offp = cgutils.alloca_once_value(builder, off)
        mbase = builder.gep(ma.data, [moff])

        def chunk(j, accp):
            m = builder.load(builder.gep(mbase, [j]))
            o = builder.load(offp)
            x = builder.call(fexp, [builder.gep(va.data, [o]), builder.bitcast(m, m16t), zero])
            hp = builder.bitcast(builder.gep(ha.data, [builder.mul(j, ir.Constant(i64, 16))]), v16.as_pointer())
            builder.store(builder.fadd(builder.load(accp), builder.fmul(x, builder.load(hp, align=4))), accp)
            builder.store(builder.add(o, builder.zext(builder.call(fpop, [m]), i64)), offp)

        with cgutils.for_range(builder, builder.lshr(nchunk, ir.Constant(i64, 1))) as loop:
            j = builder.shl(loop.index, ir.Constant(i64, 1))
            chunk(j, accs[0])
            chunk(builder.add(j, ir.Constant(i64, 1)), accs[1])
        both = builder.fadd(builder.load(accs[0]), builder.load(accs[1]))
        return builder.call(fsum, [ir.Constant(f32, 0.0), both], fastmath=("reassoc",))

    return sig, codegen


@njit(cache=True)
def steps(masks, indptr, vals, h, g, n_steps):
    """n_steps matvecs g = R h; masks (rows, cols / 16) uint16 with cols / 16 even, vals padded by 16."""
    nchunk = masks.shape[1]
    flat = masks.ravel()
    for _ in range(n_steps):
        for k in range(masks.shape[0]):
            g[k] = _expand_row(vals, np.int64(indptr[k]), flat, np.int64(k * nchunk), np.int64(nchunk), h)


def masks_of(r: np.ndarray, indptr: np.ndarray, vals: np.ndarray):
    """(masks, vals padded) of a (rows, cols) float32 matrix whose CSR is (indptr, -, vals); cols a multiple of 32."""
    rows, cols = r.shape
    if cols % 32:
        raise ValueError(f"mask + expand: cols must be a multiple of 32, found {cols}")
    lanes = (r != 0).reshape(rows, cols // 16, 16).astype(np.uint32) << np.arange(16, dtype=np.uint32)
    return lanes.sum(2).astype(np.uint16), np.concatenate([vals, np.zeros(16, np.float32)])
