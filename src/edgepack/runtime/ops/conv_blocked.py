"""The register-blocked tap kernel of the direct convolution (runtime/ops/conv.py _conv_blocked): four output
channels at once, so that every window of the input read from L1 feeds four multiply-adds instead of one.

A tap is one (input channel, ky, kx) of the weight: its window is a contiguous run of the (padded, or for strided
convolutions phased) input in the "wide plane" layout of conv.py (row pitch _PITCH, the columns past OW computed and
dropped). Four output channels x six taps run in one pass over the positions of a tile: six window loads, four
accumulator loads and stores, 24 multiply-adds per position, the weights held in registers (three taps a pass, half
the multiply-adds per accumulator load and store, measured ~80 GFLOP/s on one core of the dev VM's EPYC for a
96 -> 96 3x3 convolution at 52x52; six taps 3-8% faster on 3x3 stride-2 layers of ddddocr_det, with the same bits:
each output still sums its taps in order, one FMA each). Multiply and add are contracted to one FMA (fastmath
"contract": one rounding instead of two, as BLAS does); taps are summed in column order.
"""
from __future__ import annotations

from numba import njit

BLOCK = 4  # output channels per block


@njit(cache=True)
def tile_stride(n):
    """Floats from one accumulator tile of n floats to the next: n rounded up so that the four tiles start 1088
    bytes apart modulo 4 KiB. Tiles a multiple of ~4 KiB apart make a_j[i] and a_k[i] alias in the store buffer's
    4 KiB address check (a load waits for an unrelated store): 48 -> 96 channels, 3x3 stride 2 at 104x104 (tiles of
    19 x 53 = 1007 floats, 4028 bytes apart) ran 6.0 ms instead of 3.5 on the dev VM, depending on where the
    scratch happened to start."""
    return n + (272 - n % 1024) % 1024


@njit(cache=True, fastmath={"contract"})
def block_taps_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, n):
    """a_j[:n] += sum over t < ntaps of wblk[t, j] * src[base + oblk[t]: base + oblk[t] + n], j = 0..3.

    wblk (>= ntaps, 4) float32: the block's weights tap by tap; oblk (>= ntaps,) int64: each tap's offset."""
    t = 0
    while t + 6 <= ntaps:
        o0, o1, o2 = base + oblk[t], base + oblk[t + 1], base + oblk[t + 2]
        o3, o4, o5 = base + oblk[t + 3], base + oblk[t + 4], base + oblk[t + 5]
        s0, s1, s2 = src[o0: o0 + n], src[o1: o1 + n], src[o2: o2 + n]
        s3, s4, s5 = src[o3: o3 + n], src[o4: o4 + n], src[o5: o5 + n]
        w00, w01, w02, w03 = wblk[t, 0], wblk[t, 1], wblk[t, 2], wblk[t, 3]
        w10, w11, w12, w13 = wblk[t + 1, 0], wblk[t + 1, 1], wblk[t + 1, 2], wblk[t + 1, 3]
        w20, w21, w22, w23 = wblk[t + 2, 0], wblk[t + 2, 1], wblk[t + 2, 2], wblk[t + 2, 3]
        w30, w31, w32, w33 = wblk[t + 3, 0], wblk[t + 3, 1], wblk[t + 3, 2], wblk[t + 3, 3]
        w40, w41, w42, w43 = wblk[t + 4, 0], wblk[t + 4, 1], wblk[t + 4, 2], wblk[t + 4, 3]
        w50, w51, w52, w53 = wblk[t + 5, 0], wblk[t + 5, 1], wblk[t + 5, 2], wblk[t + 5, 3]
        for i in range(n):
            x0, x1, x2, x3, x4, x5 = s0[i], s1[i], s2[i], s3[i], s4[i], s5[i]
            a0[i] = a0[i] + w00 * x0 + w10 * x1 + w20 * x2 + w30 * x3 + w40 * x4 + w50 * x5
            a1[i] = a1[i] + w01 * x0 + w11 * x1 + w21 * x2 + w31 * x3 + w41 * x4 + w51 * x5
            a2[i] = a2[i] + w02 * x0 + w12 * x1 + w22 * x2 + w32 * x3 + w42 * x4 + w52 * x5
            a3[i] = a3[i] + w03 * x0 + w13 * x1 + w23 * x2 + w33 * x3 + w43 * x4 + w53 * x5
        t += 6
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
