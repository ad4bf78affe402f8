"""Sparse (CSR + codebook) Conv weights run straight from their compressed form: Deep Compression's pruned, shared
weights, each output channel a row of (column, code) entries (runtime/sparse.py, the file's relative-index CSR
decoded once at load by runtime/weights.py; conv.py prepare_conv drops the filler entries, then prepare() below
re-lays the rows in blocks).

An output channel is a sparse row times the dense input: for every kept entry (input channel, ky, kx) its value
codebook[code] times the input window under that tap (a contiguous run of the padded, or for strides > 1 phased,
sample in conv.py's "wide plane" layout: row pitch _PITCH, the columns past OW computed and dropped) is added to the
channel's accumulator tile: SpMM with the activation as the wide operand, with no work for the pruned taps.

Register tiles: one entry's window is one load per vector and one fused multiply-add, so a channel on its own is
bound by the loads (about 2.5-3 cycles a 16-lane multiply-add where the dense register tiles take 1). The rows go
in blocks of ROWS = 2 channels of one group that share their columns (prepare: the union of the two rows' columns,
each with both codes, code 0 = codebook[0] = 0.0 for the row that has none there): every window is loaded once for
both rows, which hold 2 x 4 (64 positions) or 2 x 8 (128) 16-lane sums in registers across the block's entries
(the entries<rows>x<nvec> intrinsics). At density 0.3 the union of two magnitude-pruned rows holds 1.5-1.7x their
entries (multiply-adds by zero included), and the loads per multiply-add halve (benchmarks/sparse_conv.py times each
pruned corpus layer compact against its best dense holding). More rows a block lose: four rows of 30% hold 2.5x
their entries. A depthwise weight (one output channel per group)
has single-channel blocks, its second codes 0 and unused. The rest of a tile is one pass of 1-4 vectors, its last
overlapping the one before; each entry's values are gathered from the codebook and its window's offset from the tap
table (conv.py _tap_offsets_kernel) once per pass. Tried and dropped: chunks of input channels with the sums of
every channel carried in memory from chunk to chunk, to keep a chunk's windows in L1 (the sums' loads and stores
and the short chunks cost more than the cache misses saved on 64-channel layers, and saved 0-12% on 256-channel
ones).

Loop order: tiles of _TROWS output rows outside, blocks inside, so that every block reads the tile's input rows
while they are in L2 (blocks outside read the whole sample from L3 once per block); a depthwise weight (one input
channel per group, its plane copied channel by channel, conv.py _channel_base_kernel) keeps the blocks outside.
Each output still sums its block's entries in column order, one FMA each (fastmath "contract", as
conv_blocked.py), so the serial and the parallel builds (blocks split over threads) give the same bits.
Scratch (the tap table, per slot the padded / phased copy and one tile's sums per row of a block: no decoded rows),
geometry, source copies and the store with its fused activation or epilogue chain are conv.py's.
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
WIDE = 4  # vector sums of one pass per row (64 positions): independent FMA chains hide the FMA latency
ROWS = 2  # output channels of one block: they share its columns (the codes of both rows stored side by side)


def kernel(parallel: bool):
    """The driver: fn(x2, geo, group_of, blocks, indptr, columns, codes, codebook, scales, bias, ep, chain, out2,
    scratch) with conv.py's geometry vector and scratch (bind_conv) and the blocked weight of prepare()."""
    return _conv_sparse_parallel_kernel if parallel else _conv_sparse_kernel


def prepare(indptr: np.ndarray, columns: np.ndarray, codes: np.ndarray, group_of: np.ndarray) -> dict:
    """The CSR rows (filler entries dropped, columns increasing in each row) as blocks of ROWS output channels of
    one group (a single channel where the next is in another group or there is none): per block the union of its
    rows' columns, and per such column ROWS codes side by side, code 0 (the filler code, codebook[0] = 0.0) for a
    row that has no entry there. {"blocks": first channel of every block and cout (int32), "indptr" (int32, per
    block), "columns" (int32), "codes" (ROWS per column, the codes' dtype)}."""
    cout = int(group_of.shape[0])
    first = np.zeros(cout + 1, np.int32)
    nb = _block_starts_kernel(group_of, first)
    blocks = first[: nb + 1].copy()
    bptr = np.zeros(nb + 1, np.int32)
    ucols = np.empty(int(indptr[-1]), np.int32)
    ucodes = np.zeros(ROWS * int(indptr[-1]), codes.dtype)
    _union_kernel(np.asarray(indptr, np.int64), columns, codes, blocks, bptr, ucols, ucodes)
    n = int(bptr[-1])
    return {"blocks": blocks, "indptr": bptr, "columns": ucols[:n].copy(), "codes": ucodes[: ROWS * n].copy()}


@njit(cache=True)
def _block_starts_kernel(group_of, first):
    """first[:nb + 1] = the first channel of every block (ROWS consecutive channels of one group) and cout; nb."""
    cout = group_of.shape[0]
    nb, co = 0, 0
    while co < cout:
        first[nb] = co
        nb += 1
        k = 1
        while k < ROWS and co + k < cout and group_of[co + k] == group_of[co]:
            k += 1
        co += k
    first[nb] = cout
    return nb


@njit(cache=True)
def _union_kernel(indptr, columns, codes, blocks, bptr, ucols, ucodes):
    """Merge each block's rows (sorted columns) into its union columns, the rows' codes side by side."""
    n = 0
    for p in range(blocks.shape[0] - 1):
        co0, k = blocks[p], blocks[p + 1] - blocks[p]
        pos0 = indptr[co0]
        end0 = indptr[co0 + 1]
        pos1 = indptr[co0 + 1] if k > 1 else end0
        end1 = indptr[co0 + 2] if k > 1 else end0
        while pos0 < end0 or pos1 < end1:
            c0 = columns[pos0] if pos0 < end0 else 2147483647
            c1 = columns[pos1] if pos1 < end1 else 2147483647
            c = min(c0, c1)
            ucols[n] = c
            if c0 == c:
                ucodes[ROWS * n] = codes[pos0]
                pos0 += 1
            if c1 == c:
                ucodes[ROWS * n + 1] = codes[pos1]
                pos1 += 1
            n += 1
        bptr[p + 1] = n


def _entries_codegen(rows, nvec):
    def codegen(context, builder, signature, args):
        src, base, tab, columns, codes, codebook, j0, j1, a, o0, last, astride = args
        f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(f32, LANES)
        sa, ta, ca, ka, ba, aa = (context.make_array(signature.args[i])(context, builder, v)
                                  for i, v in ((0, src), (2, tab), (3, columns), (4, codes), (5, codebook), (8, a)))
        # the vectors' offsets from the window's start: 0, 16, ... and the last one at `last`
        offs = [ir.Constant(i64, LANES * k) for k in range(nvec - 1)] + [last]

        def vec_at(ptr, offset):
            return builder.bitcast(builder.gep(ptr, [offset]), vec.as_pointer())

        def splat(w):
            return builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), w,
                                                                 ir.Constant(i32, 0)),
                                          ir.Constant(vec, ir.Undefined),
                                          ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))

        accs = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * LANES)) for _ in range(nvec)]
                for _ in range(rows)]
        with cgutils.for_range(builder, builder.sub(j1, j0)) as loop:
            j = builder.add(j0, loop.index)
            col = builder.sext(builder.load(builder.gep(ca.data, [j])), i64)
            ws = []
            for r in range(rows):
                k = builder.add(builder.mul(j, ir.Constant(i64, ROWS)), ir.Constant(i64, r))
                code = builder.zext(builder.load(builder.gep(ka.data, [k])), i64)
                ws.append(splat(builder.load(builder.gep(ba.data, [code]))))
            off = builder.add(base, builder.load(builder.gep(ta.data, [col])))
            for d, row_accs in zip(offs, zip(*accs)):
                x = builder.load(vec_at(sa.data, builder.add(off, d)), align=4)
                for wv, acc in zip(ws, row_accs):
                    builder.store(builder.fadd(builder.load(acc), builder.fmul(wv, x, flags=("contract",)),
                                               flags=("contract",)), acc)
        for r in range(rows):
            o = builder.add(o0, builder.mul(astride, ir.Constant(i64, r)))
            for d, acc in zip(offs, accs[r]):
                builder.store(builder.load(acc), vec_at(aa.data, builder.add(o, d)), align=4)
        return context.get_dummy_value()

    return codegen


def _entries(rows, nvec):
    """An intrinsic entries<rows>x<nvec>(src, base, tab, columns, codes, codebook, j0, j1, a, o0, last, astride):
    for each of `rows` rows r, nvec 16-lane sums held in registers across the entries j0 <= j < j1, the vector at
    offset d (0, 16, ..., 16 (nvec - 2), and `last` for the last one) being a[o0 + r * astride + d + i] = the sum over
    the entries (in order, a fused multiply-add onto zero for the first) of codebook[codes[ROWS * j + r]] *
    src[base + tab[columns[j]] + d + i], i < 16: each window loaded once for the rows."""
    def typer(typingctx, src_t, base_t, tab_t, columns_t, codes_t, codebook_t, j0_t, j1_t, a_t, o0_t, last_t,
              astride_t):
        for t, dts in ((src_t, (types.float32,)), (tab_t, (types.int64,)), (columns_t, (types.int32,)),
                       (codes_t, (types.uint8, types.uint16)), (codebook_t, (types.float32,)),
                       (a_t, (types.float32,))):
            if not isinstance(t, types.Array) or t.dtype not in dts or t.layout != "C" or t.ndim != 1:
                return None
        i64 = types.int64
        sig = types.void(src_t, i64, tab_t, columns_t, codes_t, codebook_t, i64, i64, a_t, i64, i64, i64)
        return sig, _entries_codegen(rows, nvec)

    typer.__name__ = f"entries{rows}x{nvec}"
    return intrinsic(typer)


entries1x1, entries1x2, entries1x3, entries1x4 = (_entries(1, k) for k in range(1, WIDE + 1))
entries2x1, entries2x2, entries2x3, entries2x4 = (_entries(2, k) for k in range(1, WIDE + 1))
entries2x8 = _entries(2, 2 * WIDE)


@njit(cache=True, fastmath={"contract"})
def _row_kernel(src, base, tab, columns, codes, codebook, j0, j1, a, n, rows, astride):
    """For r < rows (1 or 2): a[r * astride:][:n] = sum over the entries j0 <= j < j1 (column order) of
    codebook[codes[ROWS * j + r]] * src[base + tab[columns[j]]: ... + n]; no entries: zeros. Passes of 64 positions,
    then one of 1-4 vectors over the rest whose last vector ends at n (overlapping the one before: the same sums,
    the same bits); under 16 positions a scalar loop (one position: dot products)."""
    if n == 1:  # a 1x1 plane (squeeze-excitation blocks, classifiers): sparse dot products, two partial sums a row
        # (a single row's second codes are 0: codebook[0] = 0.0, that sum is not stored)
        s00 = s01 = s10 = s11 = np.float32(0.0)
        j = j0
        while j + 2 <= j1:
            x0 = src[base + tab[columns[j]]]
            x1 = src[base + tab[columns[j + 1]]]
            s00 = s00 + codebook[codes[ROWS * j]] * x0
            s10 = s10 + codebook[codes[ROWS * j + 1]] * x0
            s01 = s01 + codebook[codes[ROWS * j + 2]] * x1
            s11 = s11 + codebook[codes[ROWS * j + 3]] * x1
            j += 2
        if j < j1:
            x0 = src[base + tab[columns[j]]]
            s00 = s00 + codebook[codes[ROWS * j]] * x0
            s10 = s10 + codebook[codes[ROWS * j + 1]] * x0
        a[0] = s00 + s01
        if rows == 2:
            a[astride] = s10 + s11
        return
    if n < LANES:
        for r in range(rows):
            ar = a[r * astride: r * astride + n]
            for i in range(n):
                ar[i] = 0.0
            for j in range(j0, j1):
                w = codebook[codes[ROWS * j + r]]
                o = base + tab[columns[j]]
                s = src[o: o + n]
                for i in range(n):
                    ar[i] = ar[i] + w * s[i]
        return
    q = 0
    two = rows == 2
    if two:
        while n - q >= 2 * LANES * WIDE:
            entries2x8(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, 7 * LANES, astride)
            q += 2 * LANES * WIDE
    while n - q >= LANES * WIDE:
        if two:
            entries2x4(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, 3 * LANES, astride)
        else:
            entries1x4(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, 3 * LANES, astride)
        q += LANES * WIDE
    rest = n - q
    if rest == 0:
        return
    last = rest - LANES
    if rest <= LANES:  # one vector ending at n (starting before q when fewer than 16 remain)
        if two:
            entries2x1(src, base + n - LANES, tab, columns, codes, codebook, j0, j1, a, n - LANES, 0, astride)
        else:
            entries1x1(src, base + n - LANES, tab, columns, codes, codebook, j0, j1, a, n - LANES, 0, astride)
    elif rest <= 2 * LANES:
        if two:
            entries2x2(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last, astride)
        else:
            entries1x2(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last, astride)
    elif rest <= 3 * LANES:
        if two:
            entries2x3(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last, astride)
        else:
            entries1x3(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last, astride)
    elif two:
        entries2x4(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last, astride)
    else:
        entries1x4(src, base + q, tab, columns, codes, codebook, j0, j1, a, q, last, astride)


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
def _tile_kernel(src, base, tab, columns, codes, codebook, j0, j1, acc, geo, r0, scales, bias, out_b, co0, rows,
                 kind, p0, p1, chain):
    """Output rows r0 .. r0 + _TROWS of the block's channels co0 .. co0 + rows (its entries j0 .. j1): summed into
    acc (one tile a channel), then stored."""
    oh, ow, pitch = geo[_OH], geo[_OW], geo[_PITCH]
    r1 = min(oh, r0 + geo[_TROWS])
    n = (r1 - 1 - r0) * pitch + ow  # the last read is the plane's last element: no overrun
    astride = geo[_TROWS] * pitch
    _row_kernel(src, base + r0 * pitch, tab, columns, codes, codebook, j0, j1, acc, n, rows, astride)
    for r in range(rows):
        co = co0 + r
        o0 = (co * oh + r0) * ow
        _store_rows_kernel(acc[r * astride: r * astride + n], pitch, r1 - r0, ow,
                           scales[co] if scales.shape[0] != 0 else np.float32(1.0),
                           bias[co] if bias.shape[0] != 0 else np.float32(0.0), out_b[o0: o0 + (r1 - r0) * ow],
                           kind, p0, p1, chain)


def _conv_sparse(x, geo, group_of, blocks, indptr, columns, codes, codebook, scales, bias, ep, chain, out, scratch):
    tab, xpad, acc = _scratch_views_kernel(scratch, geo)
    nblocks, slots, alen, plen = blocks.shape[0] - 1, geo[_SLOTS], geo[_ACC_LEN], geo[_PLEN]
    oh, trows, gstride = geo[_OH], geo[_TROWS], geo[_GSTRIDE]
    kind, p0, p1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    for t in prange(slots):
        ac, xp = acc[t * alen: t * alen + alen], xpad[t * plen: t * plen + plen]
        for b in range(x.shape[0]):
            src = _source_kernel(x, b, geo, xp)
            if geo[_PERCH] != 0:  # depthwise: blocks outside, each copies its group's plane once
                last = -1
                for p in range(t, nblocks, slots):
                    co0 = blocks[p]
                    base, last = _channel_base_kernel(x, b, group_of[co0], geo, xp, last)
                    for r0 in range(0, oh, trows):
                        _tile_kernel(src, base, tab, columns, codes, codebook, indptr[p], indptr[p + 1], ac, geo,
                                     r0, scales, bias, out[b], co0, blocks[p + 1] - co0, kind, p0, p1, chain)
            else:  # tiles outside: every block reads the tile's input rows while they are in L2
                for r0 in range(0, oh, trows):
                    for p in range(t, nblocks, slots):
                        co0 = blocks[p]
                        _tile_kernel(src, group_of[co0] * gstride, tab, columns, codes, codebook, indptr[p],
                                     indptr[p + 1], ac, geo, r0, scales, bias, out[b], co0, blocks[p + 1] - co0,
                                     kind, p0, p1, chain)


_conv_sparse_kernel, _conv_sparse_parallel_kernel = _serial_and_parallel(_conv_sparse)


def block_work(arrays: dict) -> tuple[int, int]:
    """(union entries, multiply-adds per output position) of a weight prepared by prepare(): what the kernels loop
    over (a block's entries once each, each for every row of the block; a row's code 0 where it has no entry still
    costs its multiply-add). runtime/layers.py's cost model counts with them."""
    blocks, indptr = arrays["blocks"], arrays["indptr"]
    per_block = np.diff(indptr.astype(np.int64))
    return int(indptr[-1]), int(np.dot(per_block, np.diff(blocks.astype(np.int64))))
