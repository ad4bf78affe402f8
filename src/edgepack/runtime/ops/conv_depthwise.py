"""Depthwise convolution (group == channels, one output channel per input channel) with 3x3 and 5x5 kernels: the
taps of a channel held in registers.

The one-channel tap kernel (conv.py _taps_kernel) adds four taps per pass into an accumulator, each weight read
from memory per pass: a 3x3 kernel makes three passes, a 5x5 seven. Here a channel's weights are read into scalars
once: a 3x3 output is one sum of 9 products written once (_dw9_kernel), a 5x5 one five passes of one kernel row each
(_dw25_kernel; one 25-term pass measured no faster: 25 windows plus the sum outgrow the registers). Multiply and add
are contracted to FMAs as in conv_blocked.py (one rounding per tap instead of two); taps are summed in row-major
order. The rest is conv.py's: the source of a channel (padded, or for strides > 1 phased, one channel at a time:
_channel_base_kernel), the "wide plane" layout (row pitch _PITCH, the columns past OW computed and dropped, so
short rows still vectorise), tiles of _TROWS output rows, the weight decode (_weight_kernel: dense, codebook and
int8 rows alike), the store with its fused activation and epilogue chain (_store_rows_kernel), and the scratch (the
one-channel drivers' layout, conv.py _layout). Sparse (CSR) depthwise weights stay on conv.py's sparse driver.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgepack.runtime.ops.conv import (_ACC_LEN, _C, _CIN_G, _COLS, _COUT_G, _KH, _KW, _OH, _OW, _PITCH, _PLEN,
                                       _SLOTS, _TROWS, EP_ACT, EP_P0, EP_P1, _channel_base_kernel,
                                       _scratch_views_kernel, _serial_and_parallel, _source_kernel, _store_rows_kernel,
                                       _weight_kernel)

KERNELS = ((3, 3), (5, 5))  # the kernel shapes this file runs


def runs(geo: np.ndarray) -> bool:
    """Whether the one-channel convolution of this geometry vector (conv.py _layout; dense, codebook or int8 weight)
    runs here: one input and one output channel per group, a 3x3 or 5x5 kernel (any strides, pads, dilations)."""
    return int(geo[_CIN_G]) == 1 and int(geo[_COUT_G]) == 1 and (int(geo[_KH]), int(geo[_KW])) in KERNELS


def kernel(parallel: bool):
    """The driver: called as conv.py's blocked driver is, fn(x2, geo, wkind, w2d, codes, codebook, q, zp, scales,
    bias, ep, chain, out2, scratch)."""
    return _conv_depthwise_parallel_kernel if parallel else _conv_depthwise_kernel


@njit(cache=True, fastmath={"contract"})
def _dw9_kernel(src, base, tab, w, a, n):
    """a[:n] = sum over the 9 taps k of w[k] * src[base + tab[k]: ... + n] (tap order)."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    s0, s1, s2 = src[base + tab[0]: base + tab[0] + n], src[base + tab[1]: base + tab[1] + n], \
        src[base + tab[2]: base + tab[2] + n]
    s3, s4, s5 = src[base + tab[3]: base + tab[3] + n], src[base + tab[4]: base + tab[4] + n], \
        src[base + tab[5]: base + tab[5] + n]
    s6, s7, s8 = src[base + tab[6]: base + tab[6] + n], src[base + tab[7]: base + tab[7] + n], \
        src[base + tab[8]: base + tab[8] + n]
    for i in range(n):
        a[i] = (w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i] + w5 * s5[i] + w6 * s6[i]
                + w7 * s7[i] + w8 * s8[i])


@njit(cache=True, fastmath={"contract"})
def _dw25_kernel(src, base, tab, w, a, n):
    """a[:n] = sum over the 25 taps k of w[k] * src[base + tab[k]: ... + n] (tap order), one kernel row at a time:
    five taps per pass (registers), the running sum kept in a (L1)."""
    for r in range(5):
        k = 5 * r
        w0, w1, w2, w3, w4 = w[k], w[k + 1], w[k + 2], w[k + 3], w[k + 4]
        o0, o1, o2, o3, o4 = (base + tab[k], base + tab[k + 1], base + tab[k + 2], base + tab[k + 3],
                              base + tab[k + 4])
        s0, s1, s2, s3, s4 = src[o0: o0 + n], src[o1: o1 + n], src[o2: o2 + n], src[o3: o3 + n], src[o4: o4 + n]
        if r == 0:
            for i in range(n):
                a[i] = w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i]
        else:
            for i in range(n):
                a[i] = a[i] + w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i] + w4 * s4[i]


# The driver: per slot (the parallel build splits the channels over threads, slot t taking channels t, t + slots, ...
# in ONE parallel region), per sample and channel: the channel's source, its decoded weights, then per tile of
# output rows the sum and the store. Each output is summed in the same order however the rows are tiled and the
# channels split, so serial, parallel and any tile size give the same bits.
def _conv_depthwise(x, geo, wkind, w2d, codes, codebook, q, zp, scales, bias, ep, chain, out, scratch):
    tab, _, xpad, acc, wbuf = _scratch_views_kernel(scratch, geo)
    cout, cols, slots, alen, plen = geo[_C], geo[_COLS], geo[_SLOTS], geo[_ACC_LEN], geo[_PLEN]
    oh, ow, pitch, trows, kh = geo[_OH], geo[_OW], geo[_PITCH], geo[_TROWS], geo[_KH]
    has_scales = scales.shape[0] != 0
    has_bias = bias.shape[0] != 0
    kind, p0, p1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    for t in prange(slots):
        wb = wbuf[t * cols: t * cols + cols]
        ac, xp = acc[t * alen: t * alen + alen], xpad[t * plen: t * plen + plen]
        for b in range(x.shape[0]):
            src = _source_kernel(x, b, geo, xp)
            last = -1
            for co in range(t, cout, slots):
                base, last = _channel_base_kernel(x, b, co, geo, xp, last)
                for c in range(cols):
                    wb[c] = _weight_kernel(wkind, co, c, w2d, codes, codebook, q, zp)
                scale = scales[co] if has_scales else np.float32(1.0)
                bv = bias[co] if has_bias else np.float32(0.0)
                for r0 in range(0, oh, trows):
                    r1 = min(oh, r0 + trows)
                    n = (r1 - 1 - r0) * pitch + ow  # the last read is the plane's last element: no overrun
                    if kh == 3:
                        _dw9_kernel(src, base + r0 * pitch, tab, wb, ac, n)
                    else:
                        _dw25_kernel(src, base + r0 * pitch, tab, wb, ac, n)
                    o0 = (co * oh + r0) * ow
                    _store_rows_kernel(ac, pitch, r1 - r0, ow, scale, bv, out[b, o0: o0 + (r1 - r0) * ow], kind,
                                       p0, p1, chain)


_conv_depthwise_kernel, _conv_depthwise_parallel_kernel = _serial_and_parallel(_conv_depthwise)
