"""The register-blocked tap kernel of the direct convolution (runtime/ops/conv.py _conv_blocked): four output
channels at once, so that every window of the input read from L1 feeds four multiply-adds instead of one.

A tap is one (input channel, ky, kx) of the weight: its window is a contiguous run of the (padded, or for strided
convolutions phased) input in the "wide plane" layout of conv.py (row pitch _PITCH, the columns past OW computed and
dropped). Four output channels x three taps run in one pass over the positions of a tile: three window loads, four
accumulator loads and stores, twelve multiply-adds per position, the weights held in registers (measured ~80 GFLOP/s
on one core of the dev VM's EPYC for a 96 -> 96 3x3 convolution at 52x52, as fast as BLAS on the same product, with
no im2col copy). Multiply and add are contracted to one FMA (fastmath "contract": one rounding instead of two, as
BLAS does); taps are summed in column order.
"""
from __future__ import annotations

from numba import njit

BLOCK = 4  # output channels per block


@njit(cache=True, fastmath={"contract"})
def block_taps_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, n):
    """a_j[:n] += sum over t < ntaps of wblk[t, j] * src[base + oblk[t]: base + oblk[t] + n], j = 0..3.

    wblk (>= ntaps, 4) float32: the block's weights tap by tap; oblk (>= ntaps,) int64: each tap's offset."""
    t = 0
    while t + 3 <= ntaps:
        o0, o1, o2 = base + oblk[t], base + oblk[t + 1], base + oblk[t + 2]
        s0, s1, s2 = src[o0: o0 + n], src[o1: o1 + n], src[o2: o2 + n]
        w00, w01, w02, w03 = wblk[t, 0], wblk[t, 1], wblk[t, 2], wblk[t, 3]
        w10, w11, w12, w13 = wblk[t + 1, 0], wblk[t + 1, 1], wblk[t + 1, 2], wblk[t + 1, 3]
        w20, w21, w22, w23 = wblk[t + 2, 0], wblk[t + 2, 1], wblk[t + 2, 2], wblk[t + 2, 3]
        for i in range(n):
            x0, x1, x2 = s0[i], s1[i], s2[i]
            a0[i] = a0[i] + w00 * x0 + w10 * x1 + w20 * x2
            a1[i] = a1[i] + w01 * x0 + w11 * x1 + w21 * x2
            a2[i] = a2[i] + w02 * x0 + w12 * x1 + w22 * x2
            a3[i] = a3[i] + w03 * x0 + w13 * x1 + w23 * x2
        t += 3
    while t < ntaps:
        o0 = base + oblk[t]
        s0 = src[o0: o0 + n]
        w00, w01, w02, w03 = wblk[t, 0], wblk[t, 1], wblk[t, 2], wblk[t, 3]
        for i in range(n):
            x0 = s0[i]
            a0[i] = a0[i] + w00 * x0
            a1[i] = a1[i] + w01 * x0
            a2[i] = a2[i] + w02 * x0
            a3[i] = a3[i] + w03 * x0
        t += 1
