"""LLVM vector intrinsics for Numba kernels: the taps of output positions of 16 channels at once, and the 16 x 16
transpose that moves channels into and out of such a block (transpose16).

taps16x1(src, tab, ntaps, w, b0, out, o0) sets out[o0: o0 + 16] to the sum over taps t < ntaps of
w[16 t: 16 t + 16] * src[b0 + tab[t]: b0 + tab[t] + 16] (float32), src holding 16 channels side by side (a
channel-interleaved block of planes: conv_depthwise.py's blocked layout), so every tap is one 16-lane fused
multiply-add on contiguous lanes. taps16x4(src, tab, ntaps, w, b0, b1, b2, b3, out, o0) does it for four positions
(bases b0..b3, sums into out[o0: o0 + 64]): four independent sums, so a tap's four fused multiply-adds do not wait on
one another (one sum a call is bound by the FMA latency). Written as LLVM IR because Numba keeps a small local array
in memory (a load and a store of the 16 sums per tap); here the sums stay in registers. The taps are summed in order,
one rounding each (a fused multiply-add onto zero for the first): the same bits on every machine, whichever of
AVX-512, AVX2 or SSE LLVM lowers the IR to.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16


def _signature(npos, src_t, tab_t, w_t, out_t):
    for t in (src_t, w_t, out_t):
        if not isinstance(t, types.Array) or t.dtype != types.float32 or t.layout != "C":
            return None
    if not isinstance(tab_t, types.Array) or tab_t.dtype != types.int64 or tab_t.layout != "C":
        return None
    return types.void(src_t, tab_t, types.int64, w_t, *([types.int64] * npos), out_t, types.int64)


def _codegen(npos):
    def codegen(context, builder, signature, args):
        src, tab, ntaps, w = args[:4]
        bases, out, o0 = args[4: 4 + npos], args[4 + npos], args[5 + npos]
        f32, i64 = ir.FloatType(), ir.IntType(64)
        v16 = ir.VectorType(f32, LANES)
        sa, ta, wa, oa = (context.make_array(signature.args[i])(context, builder, v)
                          for i, v in ((0, src), (1, tab), (3, w), (4 + npos, out)))

        def vec_at(ptr, offset):
            return builder.bitcast(builder.gep(ptr, [offset]), v16.as_pointer())

        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16, [0.0] * LANES)) for _ in bases]
        with cgutils.for_range(builder, ntaps) as loop:
            t = loop.index
            off = builder.load(builder.gep(ta.data, [t]))
            wv = builder.load(vec_at(wa.data, builder.mul(t, ir.Constant(i64, LANES))), align=4)
            for b, acc in zip(bases, accs):
                x = builder.load(vec_at(sa.data, builder.add(b, off)), align=4)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(wv, x, flags=("contract",)),
                                           flags=("contract",)), acc)
        for i, acc in enumerate(accs):
            builder.store(builder.load(acc), vec_at(oa.data, builder.add(o0, ir.Constant(i64, LANES * i))),
                          align=4)
        return context.get_dummy_value()

    return codegen


@intrinsic
def taps16x1(typingctx, src_t, tab_t, ntaps_t, w_t, b0_t, out_t, o0_t):
    sig = _signature(1, src_t, tab_t, w_t, out_t)
    return None if sig is None else (sig, _codegen(1))


@intrinsic
def taps16x4(typingctx, src_t, tab_t, ntaps_t, w_t, b0_t, b1_t, b2_t, b3_t, out_t, o0_t):
    sig = _signature(4, src_t, tab_t, w_t, out_t)
    return None if sig is None else (sig, _codegen(4))


@intrinsic
def transpose16(typingctx, src_t, s0_t, sstride_t, dst_t, dmap_t, m0_t, dbase_t):
    """transpose16(src, s0, sstride, dst, dmap, m0, dbase): the 16 x 16 block whose row r is
    src[s0 + r * sstride: ... + 16], transposed: its column i stored at dst[dbase + dmap[m0 + i]: ... + 16] (16
    vector loads, 64 two-vector shuffles, 16 vector stores; conv_depthwise.py's copies into and out of a channel
    block). Values are moved, not computed: the bits are the input's."""
    for t in (src_t, dst_t):
        if not isinstance(t, types.Array) or t.dtype != types.float32 or t.layout != "C":
            return None
    if not isinstance(dmap_t, types.Array) or dmap_t.dtype != types.int64 or dmap_t.layout != "C":
        return None
    sig = types.void(src_t, types.int64, types.int64, dst_t, dmap_t, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        src, s0, sstride, dst, dmap, m0, dbase = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        v16 = ir.VectorType(f32, LANES)
        sa, da, ma = (context.make_array(signature.args[i])(context, builder, v)
                      for i, v in ((0, src), (3, dst), (4, dmap)))

        def vec_at(ptr, offset):
            return builder.bitcast(builder.gep(ptr, [offset]), v16.as_pointer())

        half = LANES // 2
        lo = ir.Constant(ir.VectorType(i32, LANES), [v for k in range(half) for v in (k, k + LANES)])
        hi = ir.Constant(ir.VectorType(i32, LANES), [v for k in range(half, LANES) for v in (k, k + LANES)])
        rows = [builder.load(vec_at(sa.data, builder.add(s0, builder.mul(sstride, ir.Constant(i64, r)))), align=4)
                for r in range(LANES)]
        for _ in range(4):  # log2(16) rounds of interleaving rows k and k + 8: the transpose
            new = []
            for k in range(half):
                new.append(builder.shuffle_vector(rows[k], rows[k + half], lo))
                new.append(builder.shuffle_vector(rows[k], rows[k + half], hi))
            rows = new
        for i, v in enumerate(rows):
            off = builder.load(builder.gep(ma.data, [builder.add(m0, ir.Constant(i64, i))]))
            builder.store(v, vec_at(da.data, builder.add(dbase, off)), align=4)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def taps16_row(typingctx, src_t, kh_t, rstride_t, w_t, b0_t, out_t, o0_t, kw_t, sw_t, npos_t):
    """taps16_row(src, kh, rstride, w, b0, out, o0, KW, SW, P) (KW, SW, P constants): taps16x1 for P consecutive
    output positions of one output row, the kernel's columns at consecutive input columns (dilation 1) and the
    positions SW input columns apart: position p's window corner at b0 + 16 SW p, kernel row ky a further
    ky * rstride floats, the taps' weights w[16 t: 16 t + 16] (t = ky * KW + kx). Each input vector of a kernel row
    is loaded once and feeds every position that reads it ((P - 1) SW + KW loads for P KW multiply-adds; taps16x4
    loads one per multiply-add); the sums stay in registers. Each position sums its taps in the same order, one
    rounding each, as taps16x1: the same bits."""
    for t in (src_t, w_t, out_t):
        if not isinstance(t, types.Array) or t.dtype != types.float32 or t.layout != "C":
            return None
    lits = (kw_t, sw_t, npos_t)
    if not all(isinstance(t, types.IntegerLiteral) for t in lits):
        return None
    kw, sw, npos = (int(t.literal_value) for t in lits)
    if not (1 <= kw <= 8 and 1 <= sw <= 2 and 1 <= npos <= 8):
        return None
    sig = types.void(src_t, types.int64, types.int64, w_t, types.int64, out_t, types.int64, kw_t, sw_t, npos_t)

    def codegen(context, builder, signature, args):
        src, kh, rstride, w, b0, out, o0 = args[:7]
        f32, i64 = ir.FloatType(), ir.IntType(64)
        v16 = ir.VectorType(f32, LANES)
        sa, wa, oa = (context.make_array(signature.args[i])(context, builder, v)
                      for i, v in ((0, src), (3, w), (5, out)))

        def vec_at(ptr, offset):
            return builder.bitcast(builder.gep(ptr, [offset]), v16.as_pointer())

        accs = [cgutils.alloca_once_value(builder, ir.Constant(v16, [0.0] * LANES)) for _ in range(npos)]
        with cgutils.for_range(builder, kh) as loop:
            ky = loop.index
            row = builder.add(b0, builder.mul(ky, rstride))
            wrow = builder.mul(ky, ir.Constant(i64, kw * LANES))
            xs = {}
            sums = [builder.load(acc) for acc in accs]
            for kx in range(kw):
                wv = builder.load(vec_at(wa.data, builder.add(wrow, ir.Constant(i64, kx * LANES))), align=4)
                for p in range(npos):
                    col = p * sw + kx
                    if col not in xs:
                        xs[col] = builder.load(vec_at(sa.data, builder.add(row, ir.Constant(i64, col * LANES))),
                                               align=4)
                    sums[p] = builder.fadd(sums[p], builder.fmul(wv, xs[col], flags=("contract",)),
                                           flags=("contract",))
            for acc, s in zip(accs, sums):
                builder.store(s, acc)
        for p, acc in enumerate(accs):
            builder.store(builder.load(acc), vec_at(oa.data, builder.add(o0, ir.Constant(i64, LANES * p))), align=4)
        return context.get_dummy_value()

    return sig, codegen
