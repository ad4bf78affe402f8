"""Sparse (CSR + codebook) Conv weights run straight from their compressed form: Deep Compression's pruned, shared
weights, each output channel a row of (column, code) entries (runtime/sparse.py, the file's relative-index CSR
decoded once at load by runtime/weights.py; conv.py prepare_conv drops the filler entries).

An output channel is a sparse row times the dense input: for every kept entry (input channel, ky, kx) its value
codebook[code] times the input window under that tap (a contiguous run of the padded, or for strides > 1 phased,
sample in conv.py's "wide plane" layout: row pitch _PITCH, the columns past OW computed and dropped) is added to the
channel's accumulator tile: SpMM with the activation as the wide operand, one vectorised multiply-add per position
and entry, with no work for the pruned taps. Entries go eight a pass (_row_kernel): eight windows, one accumulator
load and store per position; each entry's value is gathered from the codebook and its window's offset from the tap
table (conv.py _tap_offsets_kernel) once per pass and tile.

Loop order: tiles of _TROWS output rows outside, output channels inside, so that every channel reads the tile's
input rows while they are in L2 (channels outside read the whole sample from L3 once per channel); a depthwise
weight (one input channel per group, its plane copied channel by channel, conv.py _channel_base_kernel) keeps the
channels outside. Each output still sums its entries in column order, one FMA each (fastmath "contract", as
conv_blocked.py), so the serial and the parallel builds (output channels split over threads) give the same bits.
Scratch, geometry, source copies and the store with its fused activation or epilogue chain are conv.py's (the
one-channel drivers' layout).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgepack.runtime.ops.conv import (_ACC_LEN, _GSTRIDE, _OH, _OW, _PERCH, _PITCH, _PLEN, _SLOTS, _TROWS, EP_ACT,
                                       EP_P0, EP_P1, _channel_base_kernel, _scratch_views_kernel,
                                       _serial_and_parallel, _source_kernel, _store_rows_kernel)


def kernel(parallel: bool):
    """The driver: fn(x2, geo, group_of, indptr, columns, codes, codebook, scales, bias, ep, chain, out2, scratch)
    with conv.py's geometry vector and scratch (bind_conv)."""
    return _conv_sparse_parallel_kernel if parallel else _conv_sparse_kernel


@njit(cache=True, fastmath={"contract"})
def _row_kernel(src, base, tab, columns, codes, codebook, j0, j1, a, n):
    """a[:n] = sum over the entries j0 <= j < j1 (column order) of codebook[codes[j]] * src[base + tab[columns[j]]:
    ... + n]; no entries: zeros."""
    for i in range(n):
        a[i] = 0.0
    j = j0
    while j + 8 <= j1:
        w0, w1, w2, w3 = codebook[codes[j]], codebook[codes[j + 1]], codebook[codes[j + 2]], codebook[codes[j + 3]]
        w4, w5, w6, w7 = codebook[codes[j + 4]], codebook[codes[j + 5]], codebook[codes[j + 6]], codebook[codes[j + 7]]
        o0, o1 = base + tab[columns[j]], base + tab[columns[j + 1]]
        o2, o3 = base + tab[columns[j + 2]], base + tab[columns[j + 3]]
        o4, o5 = base + tab[columns[j + 4]], base + tab[columns[j + 5]]
        o6, o7 = base + tab[columns[j + 6]], base + tab[columns[j + 7]]
        s0, s1, s2, s3 = src[o0: o0 + n], src[o1: o1 + n], src[o2: o2 + n], src[o3: o3 + n]
        s4, s5, s6, s7 = src[o4: o4 + n], src[o5: o5 + n], src[o6: o6 + n], src[o7: o7 + n]
        for i in range(n):
            a[i] = (a[i] + w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i] + w5 * s5[i]
                    + w6 * s6[i] + w7 * s7[i])
        j += 8
    while j + 4 <= j1:
        w0, w1, w2, w3 = codebook[codes[j]], codebook[codes[j + 1]], codebook[codes[j + 2]], codebook[codes[j + 3]]
        o0, o1 = base + tab[columns[j]], base + tab[columns[j + 1]]
        o2, o3 = base + tab[columns[j + 2]], base + tab[columns[j + 3]]
        s0, s1, s2, s3 = src[o0: o0 + n], src[o1: o1 + n], src[o2: o2 + n], src[o3: o3 + n]
        for i in range(n):
            a[i] = a[i] + w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i]
        j += 4
    while j < j1:
        w = codebook[codes[j]]
        o = base + tab[columns[j]]
        s = src[o: o + n]
        for i in range(n):
            a[i] = a[i] + w * s[i]
        j += 1


@njit(cache=True)
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
    tab, obuf, xpad, acc, wbuf = _scratch_views_kernel(scratch, geo)
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
