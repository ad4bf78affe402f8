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

block_taps_tiled, what conv.py runs, computes the same sums (the same bits) with the accumulators in registers: four
channels x 32 positions a tile (_tile4_kernel), every tap summed before one store, compiled with LLVM's SLP vectoriser
on (as conv_pointwise.py). benchmarks/conv_kernels.py (1 thread, CPU time, load 2.6-3.6, before / after): the first
3 -> 16 stride-2 layers 384 -> 358 us (320x320) and 180 -> 165 (224x224), 32 -> 64 stride 2 at 80x80 757 -> 696,
48 -> 96 stride 2 at 104x104 3013 -> 2720, 96 -> 96 at 52x52 5249 -> 4503; 16 -> 32 stride 2 at 160x160 767 -> 794.
block_taps_kernel stays for tiles shorter than 32 positions.

Where AVX-512 gives 32 vector registers, tiles are 64 positions (_tile4x64_kernel: 16 accumulator registers, each
window and weight load feeding twice the multiply-adds; the same bits): the tile alone 102 -> 110 GFLOP/s in L1 on
nudenet's 32 -> 64 stride-2 taps, and with benchmarks/conv_kernels.py (1 thread, CPU time, load 8-9, ratio to
onnxruntime interleaved, before -> after) 16 -> 32 stride 2 at 160x160 0.91 -> 1.00, 32 -> 64 at 80x80 0.84 -> 0.90,
24 -> 48 at 208x208 1.08 -> 1.12, 96 -> 96 at 104x104 0.92 -> 0.95, the 3-channel first layer unchanged.
"""
from __future__ import annotations

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from numba import njit

from edgepack.runtime.ops.slp import slp_kernel

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


@njit(cache=True, fastmath={"contract"}, inline="always")
def _tile4_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, i0):
    """a_j[i0 + i] = the sum over t < ntaps of wblk[t, j] * src[base + oblk[t] + i0 + i], j < 4, i < 32: 128 sums
    in registers (SLP packs each run of 16 into one AVX-512 register), one FMA each in tap order."""
    z = np.float32(0.0)
    s0_00 = s0_01 = s0_02 = s0_03 = s0_04 = s0_05 = s0_06 = s0_07 = z
    s0_08 = s0_09 = s0_10 = s0_11 = s0_12 = s0_13 = s0_14 = s0_15 = z
    s0_16 = s0_17 = s0_18 = s0_19 = s0_20 = s0_21 = s0_22 = s0_23 = z
    s0_24 = s0_25 = s0_26 = s0_27 = s0_28 = s0_29 = s0_30 = s0_31 = z
    s1_00 = s1_01 = s1_02 = s1_03 = s1_04 = s1_05 = s1_06 = s1_07 = z
    s1_08 = s1_09 = s1_10 = s1_11 = s1_12 = s1_13 = s1_14 = s1_15 = z
    s1_16 = s1_17 = s1_18 = s1_19 = s1_20 = s1_21 = s1_22 = s1_23 = z
    s1_24 = s1_25 = s1_26 = s1_27 = s1_28 = s1_29 = s1_30 = s1_31 = z
    s2_00 = s2_01 = s2_02 = s2_03 = s2_04 = s2_05 = s2_06 = s2_07 = z
    s2_08 = s2_09 = s2_10 = s2_11 = s2_12 = s2_13 = s2_14 = s2_15 = z
    s2_16 = s2_17 = s2_18 = s2_19 = s2_20 = s2_21 = s2_22 = s2_23 = z
    s2_24 = s2_25 = s2_26 = s2_27 = s2_28 = s2_29 = s2_30 = s2_31 = z
    s3_00 = s3_01 = s3_02 = s3_03 = s3_04 = s3_05 = s3_06 = s3_07 = z
    s3_08 = s3_09 = s3_10 = s3_11 = s3_12 = s3_13 = s3_14 = s3_15 = z
    s3_16 = s3_17 = s3_18 = s3_19 = s3_20 = s3_21 = s3_22 = s3_23 = z
    s3_24 = s3_25 = s3_26 = s3_27 = s3_28 = s3_29 = s3_30 = s3_31 = z
    for t in range(ntaps):
        o = base + oblk[t] + i0
        xr = src[o: o + 32]
        x00, x01, x02, x03, x04, x05, x06, x07 = xr[0], xr[1], xr[2], xr[3], xr[4], xr[5], xr[6], xr[7]
        x08, x09, x10, x11, x12, x13, x14, x15 = xr[8], xr[9], xr[10], xr[11], xr[12], xr[13], xr[14], xr[15]
        x16, x17, x18, x19, x20, x21, x22, x23 = xr[16], xr[17], xr[18], xr[19], xr[20], xr[21], xr[22], xr[23]
        x24, x25, x26, x27, x28, x29, x30, x31 = xr[24], xr[25], xr[26], xr[27], xr[28], xr[29], xr[30], xr[31]
        w0, w1, w2, w3 = wblk[t, 0], wblk[t, 1], wblk[t, 2], wblk[t, 3]
        s0_00 += w0 * x00; s0_01 += w0 * x01; s0_02 += w0 * x02; s0_03 += w0 * x03
        s0_04 += w0 * x04; s0_05 += w0 * x05; s0_06 += w0 * x06; s0_07 += w0 * x07
        s0_08 += w0 * x08; s0_09 += w0 * x09; s0_10 += w0 * x10; s0_11 += w0 * x11
        s0_12 += w0 * x12; s0_13 += w0 * x13; s0_14 += w0 * x14; s0_15 += w0 * x15
        s0_16 += w0 * x16; s0_17 += w0 * x17; s0_18 += w0 * x18; s0_19 += w0 * x19
        s0_20 += w0 * x20; s0_21 += w0 * x21; s0_22 += w0 * x22; s0_23 += w0 * x23
        s0_24 += w0 * x24; s0_25 += w0 * x25; s0_26 += w0 * x26; s0_27 += w0 * x27
        s0_28 += w0 * x28; s0_29 += w0 * x29; s0_30 += w0 * x30; s0_31 += w0 * x31
        s1_00 += w1 * x00; s1_01 += w1 * x01; s1_02 += w1 * x02; s1_03 += w1 * x03
        s1_04 += w1 * x04; s1_05 += w1 * x05; s1_06 += w1 * x06; s1_07 += w1 * x07
        s1_08 += w1 * x08; s1_09 += w1 * x09; s1_10 += w1 * x10; s1_11 += w1 * x11
        s1_12 += w1 * x12; s1_13 += w1 * x13; s1_14 += w1 * x14; s1_15 += w1 * x15
        s1_16 += w1 * x16; s1_17 += w1 * x17; s1_18 += w1 * x18; s1_19 += w1 * x19
        s1_20 += w1 * x20; s1_21 += w1 * x21; s1_22 += w1 * x22; s1_23 += w1 * x23
        s1_24 += w1 * x24; s1_25 += w1 * x25; s1_26 += w1 * x26; s1_27 += w1 * x27
        s1_28 += w1 * x28; s1_29 += w1 * x29; s1_30 += w1 * x30; s1_31 += w1 * x31
        s2_00 += w2 * x00; s2_01 += w2 * x01; s2_02 += w2 * x02; s2_03 += w2 * x03
        s2_04 += w2 * x04; s2_05 += w2 * x05; s2_06 += w2 * x06; s2_07 += w2 * x07
        s2_08 += w2 * x08; s2_09 += w2 * x09; s2_10 += w2 * x10; s2_11 += w2 * x11
        s2_12 += w2 * x12; s2_13 += w2 * x13; s2_14 += w2 * x14; s2_15 += w2 * x15
        s2_16 += w2 * x16; s2_17 += w2 * x17; s2_18 += w2 * x18; s2_19 += w2 * x19
        s2_20 += w2 * x20; s2_21 += w2 * x21; s2_22 += w2 * x22; s2_23 += w2 * x23
        s2_24 += w2 * x24; s2_25 += w2 * x25; s2_26 += w2 * x26; s2_27 += w2 * x27
        s2_28 += w2 * x28; s2_29 += w2 * x29; s2_30 += w2 * x30; s2_31 += w2 * x31
        s3_00 += w3 * x00; s3_01 += w3 * x01; s3_02 += w3 * x02; s3_03 += w3 * x03
        s3_04 += w3 * x04; s3_05 += w3 * x05; s3_06 += w3 * x06; s3_07 += w3 * x07
        s3_08 += w3 * x08; s3_09 += w3 * x09; s3_10 += w3 * x10; s3_11 += w3 * x11
        s3_12 += w3 * x12; s3_13 += w3 * x13; s3_14 += w3 * x14; s3_15 += w3 * x15
        s3_16 += w3 * x16; s3_17 += w3 * x17; s3_18 += w3 * x18; s3_19 += w3 * x19
        s3_20 += w3 * x20; s3_21 += w3 * x21; s3_22 += w3 * x22; s3_23 += w3 * x23
        s3_24 += w3 * x24; s3_25 += w3 * x25; s3_26 += w3 * x26; s3_27 += w3 * x27
        s3_28 += w3 * x28; s3_29 += w3 * x29; s3_30 += w3 * x30; s3_31 += w3 * x31
    d = a0[i0: i0 + 32]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s0_00, s0_01, s0_02, s0_03, s0_04, s0_05, s0_06, s0_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s0_08, s0_09, s0_10, s0_11, s0_12, s0_13, s0_14, s0_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s0_16, s0_17, s0_18, s0_19, s0_20, s0_21, s0_22, s0_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s0_24, s0_25, s0_26, s0_27, s0_28, s0_29, s0_30, s0_31
    d = a1[i0: i0 + 32]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s1_00, s1_01, s1_02, s1_03, s1_04, s1_05, s1_06, s1_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s1_08, s1_09, s1_10, s1_11, s1_12, s1_13, s1_14, s1_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s1_16, s1_17, s1_18, s1_19, s1_20, s1_21, s1_22, s1_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s1_24, s1_25, s1_26, s1_27, s1_28, s1_29, s1_30, s1_31
    d = a2[i0: i0 + 32]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s2_00, s2_01, s2_02, s2_03, s2_04, s2_05, s2_06, s2_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s2_08, s2_09, s2_10, s2_11, s2_12, s2_13, s2_14, s2_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s2_16, s2_17, s2_18, s2_19, s2_20, s2_21, s2_22, s2_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s2_24, s2_25, s2_26, s2_27, s2_28, s2_29, s2_30, s2_31
    d = a3[i0: i0 + 32]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s3_00, s3_01, s3_02, s3_03, s3_04, s3_05, s3_06, s3_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s3_08, s3_09, s3_10, s3_11, s3_12, s3_13, s3_14, s3_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s3_16, s3_17, s3_18, s3_19, s3_20, s3_21, s3_22, s3_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s3_24, s3_25, s3_26, s3_27, s3_28, s3_29, s3_30, s3_31


@njit(cache=True, fastmath={"contract"}, inline="always")
def _tile4x64_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, i0):
    """_tile4_kernel over 64 positions: 256 sums, sixteen AVX-512 registers, every window and weight load feeding
    twice the multiply-adds (the same sums in the same order: the same bits)."""
    z = np.float32(0.0)
    s0_00 = s0_01 = s0_02 = s0_03 = s0_04 = s0_05 = s0_06 = s0_07 = z
    s0_08 = s0_09 = s0_10 = s0_11 = s0_12 = s0_13 = s0_14 = s0_15 = z
    s0_16 = s0_17 = s0_18 = s0_19 = s0_20 = s0_21 = s0_22 = s0_23 = z
    s0_24 = s0_25 = s0_26 = s0_27 = s0_28 = s0_29 = s0_30 = s0_31 = z
    s0_32 = s0_33 = s0_34 = s0_35 = s0_36 = s0_37 = s0_38 = s0_39 = z
    s0_40 = s0_41 = s0_42 = s0_43 = s0_44 = s0_45 = s0_46 = s0_47 = z
    s0_48 = s0_49 = s0_50 = s0_51 = s0_52 = s0_53 = s0_54 = s0_55 = z
    s0_56 = s0_57 = s0_58 = s0_59 = s0_60 = s0_61 = s0_62 = s0_63 = z
    s1_00 = s1_01 = s1_02 = s1_03 = s1_04 = s1_05 = s1_06 = s1_07 = z
    s1_08 = s1_09 = s1_10 = s1_11 = s1_12 = s1_13 = s1_14 = s1_15 = z
    s1_16 = s1_17 = s1_18 = s1_19 = s1_20 = s1_21 = s1_22 = s1_23 = z
    s1_24 = s1_25 = s1_26 = s1_27 = s1_28 = s1_29 = s1_30 = s1_31 = z
    s1_32 = s1_33 = s1_34 = s1_35 = s1_36 = s1_37 = s1_38 = s1_39 = z
    s1_40 = s1_41 = s1_42 = s1_43 = s1_44 = s1_45 = s1_46 = s1_47 = z
    s1_48 = s1_49 = s1_50 = s1_51 = s1_52 = s1_53 = s1_54 = s1_55 = z
    s1_56 = s1_57 = s1_58 = s1_59 = s1_60 = s1_61 = s1_62 = s1_63 = z
    s2_00 = s2_01 = s2_02 = s2_03 = s2_04 = s2_05 = s2_06 = s2_07 = z
    s2_08 = s2_09 = s2_10 = s2_11 = s2_12 = s2_13 = s2_14 = s2_15 = z
    s2_16 = s2_17 = s2_18 = s2_19 = s2_20 = s2_21 = s2_22 = s2_23 = z
    s2_24 = s2_25 = s2_26 = s2_27 = s2_28 = s2_29 = s2_30 = s2_31 = z
    s2_32 = s2_33 = s2_34 = s2_35 = s2_36 = s2_37 = s2_38 = s2_39 = z
    s2_40 = s2_41 = s2_42 = s2_43 = s2_44 = s2_45 = s2_46 = s2_47 = z
    s2_48 = s2_49 = s2_50 = s2_51 = s2_52 = s2_53 = s2_54 = s2_55 = z
    s2_56 = s2_57 = s2_58 = s2_59 = s2_60 = s2_61 = s2_62 = s2_63 = z
    s3_00 = s3_01 = s3_02 = s3_03 = s3_04 = s3_05 = s3_06 = s3_07 = z
    s3_08 = s3_09 = s3_10 = s3_11 = s3_12 = s3_13 = s3_14 = s3_15 = z
    s3_16 = s3_17 = s3_18 = s3_19 = s3_20 = s3_21 = s3_22 = s3_23 = z
    s3_24 = s3_25 = s3_26 = s3_27 = s3_28 = s3_29 = s3_30 = s3_31 = z
    s3_32 = s3_33 = s3_34 = s3_35 = s3_36 = s3_37 = s3_38 = s3_39 = z
    s3_40 = s3_41 = s3_42 = s3_43 = s3_44 = s3_45 = s3_46 = s3_47 = z
    s3_48 = s3_49 = s3_50 = s3_51 = s3_52 = s3_53 = s3_54 = s3_55 = z
    s3_56 = s3_57 = s3_58 = s3_59 = s3_60 = s3_61 = s3_62 = s3_63 = z
    for t in range(ntaps):
        o = base + oblk[t] + i0
        xr = src[o: o + 64]
        x00, x01, x02, x03, x04, x05, x06, x07 = xr[0], xr[1], xr[2], xr[3], xr[4], xr[5], xr[6], xr[7]
        x08, x09, x10, x11, x12, x13, x14, x15 = xr[8], xr[9], xr[10], xr[11], xr[12], xr[13], xr[14], xr[15]
        x16, x17, x18, x19, x20, x21, x22, x23 = xr[16], xr[17], xr[18], xr[19], xr[20], xr[21], xr[22], xr[23]
        x24, x25, x26, x27, x28, x29, x30, x31 = xr[24], xr[25], xr[26], xr[27], xr[28], xr[29], xr[30], xr[31]
        x32, x33, x34, x35, x36, x37, x38, x39 = xr[32], xr[33], xr[34], xr[35], xr[36], xr[37], xr[38], xr[39]
        x40, x41, x42, x43, x44, x45, x46, x47 = xr[40], xr[41], xr[42], xr[43], xr[44], xr[45], xr[46], xr[47]
        x48, x49, x50, x51, x52, x53, x54, x55 = xr[48], xr[49], xr[50], xr[51], xr[52], xr[53], xr[54], xr[55]
        x56, x57, x58, x59, x60, x61, x62, x63 = xr[56], xr[57], xr[58], xr[59], xr[60], xr[61], xr[62], xr[63]
        w0, w1, w2, w3 = wblk[t, 0], wblk[t, 1], wblk[t, 2], wblk[t, 3]
        s0_00 += w0 * x00; s0_01 += w0 * x01; s0_02 += w0 * x02; s0_03 += w0 * x03
        s0_04 += w0 * x04; s0_05 += w0 * x05; s0_06 += w0 * x06; s0_07 += w0 * x07
        s0_08 += w0 * x08; s0_09 += w0 * x09; s0_10 += w0 * x10; s0_11 += w0 * x11
        s0_12 += w0 * x12; s0_13 += w0 * x13; s0_14 += w0 * x14; s0_15 += w0 * x15
        s0_16 += w0 * x16; s0_17 += w0 * x17; s0_18 += w0 * x18; s0_19 += w0 * x19
        s0_20 += w0 * x20; s0_21 += w0 * x21; s0_22 += w0 * x22; s0_23 += w0 * x23
        s0_24 += w0 * x24; s0_25 += w0 * x25; s0_26 += w0 * x26; s0_27 += w0 * x27
        s0_28 += w0 * x28; s0_29 += w0 * x29; s0_30 += w0 * x30; s0_31 += w0 * x31
        s0_32 += w0 * x32; s0_33 += w0 * x33; s0_34 += w0 * x34; s0_35 += w0 * x35
        s0_36 += w0 * x36; s0_37 += w0 * x37; s0_38 += w0 * x38; s0_39 += w0 * x39
        s0_40 += w0 * x40; s0_41 += w0 * x41; s0_42 += w0 * x42; s0_43 += w0 * x43
        s0_44 += w0 * x44; s0_45 += w0 * x45; s0_46 += w0 * x46; s0_47 += w0 * x47
        s0_48 += w0 * x48; s0_49 += w0 * x49; s0_50 += w0 * x50; s0_51 += w0 * x51
        s0_52 += w0 * x52; s0_53 += w0 * x53; s0_54 += w0 * x54; s0_55 += w0 * x55
        s0_56 += w0 * x56; s0_57 += w0 * x57; s0_58 += w0 * x58; s0_59 += w0 * x59
        s0_60 += w0 * x60; s0_61 += w0 * x61; s0_62 += w0 * x62; s0_63 += w0 * x63
        s1_00 += w1 * x00; s1_01 += w1 * x01; s1_02 += w1 * x02; s1_03 += w1 * x03
        s1_04 += w1 * x04; s1_05 += w1 * x05; s1_06 += w1 * x06; s1_07 += w1 * x07
        s1_08 += w1 * x08; s1_09 += w1 * x09; s1_10 += w1 * x10; s1_11 += w1 * x11
        s1_12 += w1 * x12; s1_13 += w1 * x13; s1_14 += w1 * x14; s1_15 += w1 * x15
        s1_16 += w1 * x16; s1_17 += w1 * x17; s1_18 += w1 * x18; s1_19 += w1 * x19
        s1_20 += w1 * x20; s1_21 += w1 * x21; s1_22 += w1 * x22; s1_23 += w1 * x23
        s1_24 += w1 * x24; s1_25 += w1 * x25; s1_26 += w1 * x26; s1_27 += w1 * x27
        s1_28 += w1 * x28; s1_29 += w1 * x29; s1_30 += w1 * x30; s1_31 += w1 * x31
        s1_32 += w1 * x32; s1_33 += w1 * x33; s1_34 += w1 * x34; s1_35 += w1 * x35
        s1_36 += w1 * x36; s1_37 += w1 * x37; s1_38 += w1 * x38; s1_39 += w1 * x39
        s1_40 += w1 * x40; s1_41 += w1 * x41; s1_42 += w1 * x42; s1_43 += w1 * x43
        s1_44 += w1 * x44; s1_45 += w1 * x45; s1_46 += w1 * x46; s1_47 += w1 * x47
        s1_48 += w1 * x48; s1_49 += w1 * x49; s1_50 += w1 * x50; s1_51 += w1 * x51
        s1_52 += w1 * x52; s1_53 += w1 * x53; s1_54 += w1 * x54; s1_55 += w1 * x55
        s1_56 += w1 * x56; s1_57 += w1 * x57; s1_58 += w1 * x58; s1_59 += w1 * x59
        s1_60 += w1 * x60; s1_61 += w1 * x61; s1_62 += w1 * x62; s1_63 += w1 * x63
        s2_00 += w2 * x00; s2_01 += w2 * x01; s2_02 += w2 * x02; s2_03 += w2 * x03
        s2_04 += w2 * x04; s2_05 += w2 * x05; s2_06 += w2 * x06; s2_07 += w2 * x07
        s2_08 += w2 * x08; s2_09 += w2 * x09; s2_10 += w2 * x10; s2_11 += w2 * x11
        s2_12 += w2 * x12; s2_13 += w2 * x13; s2_14 += w2 * x14; s2_15 += w2 * x15
        s2_16 += w2 * x16; s2_17 += w2 * x17; s2_18 += w2 * x18; s2_19 += w2 * x19
        s2_20 += w2 * x20; s2_21 += w2 * x21; s2_22 += w2 * x22; s2_23 += w2 * x23
        s2_24 += w2 * x24; s2_25 += w2 * x25; s2_26 += w2 * x26; s2_27 += w2 * x27
        s2_28 += w2 * x28; s2_29 += w2 * x29; s2_30 += w2 * x30; s2_31 += w2 * x31
        s2_32 += w2 * x32; s2_33 += w2 * x33; s2_34 += w2 * x34; s2_35 += w2 * x35
        s2_36 += w2 * x36; s2_37 += w2 * x37; s2_38 += w2 * x38; s2_39 += w2 * x39
        s2_40 += w2 * x40; s2_41 += w2 * x41; s2_42 += w2 * x42; s2_43 += w2 * x43
        s2_44 += w2 * x44; s2_45 += w2 * x45; s2_46 += w2 * x46; s2_47 += w2 * x47
        s2_48 += w2 * x48; s2_49 += w2 * x49; s2_50 += w2 * x50; s2_51 += w2 * x51
        s2_52 += w2 * x52; s2_53 += w2 * x53; s2_54 += w2 * x54; s2_55 += w2 * x55
        s2_56 += w2 * x56; s2_57 += w2 * x57; s2_58 += w2 * x58; s2_59 += w2 * x59
        s2_60 += w2 * x60; s2_61 += w2 * x61; s2_62 += w2 * x62; s2_63 += w2 * x63
        s3_00 += w3 * x00; s3_01 += w3 * x01; s3_02 += w3 * x02; s3_03 += w3 * x03
        s3_04 += w3 * x04; s3_05 += w3 * x05; s3_06 += w3 * x06; s3_07 += w3 * x07
        s3_08 += w3 * x08; s3_09 += w3 * x09; s3_10 += w3 * x10; s3_11 += w3 * x11
        s3_12 += w3 * x12; s3_13 += w3 * x13; s3_14 += w3 * x14; s3_15 += w3 * x15
        s3_16 += w3 * x16; s3_17 += w3 * x17; s3_18 += w3 * x18; s3_19 += w3 * x19
        s3_20 += w3 * x20; s3_21 += w3 * x21; s3_22 += w3 * x22; s3_23 += w3 * x23
        s3_24 += w3 * x24; s3_25 += w3 * x25; s3_26 += w3 * x26; s3_27 += w3 * x27
        s3_28 += w3 * x28; s3_29 += w3 * x29; s3_30 += w3 * x30; s3_31 += w3 * x31
        s3_32 += w3 * x32; s3_33 += w3 * x33; s3_34 += w3 * x34; s3_35 += w3 * x35
        s3_36 += w3 * x36; s3_37 += w3 * x37; s3_38 += w3 * x38; s3_39 += w3 * x39
        s3_40 += w3 * x40; s3_41 += w3 * x41; s3_42 += w3 * x42; s3_43 += w3 * x43
        s3_44 += w3 * x44; s3_45 += w3 * x45; s3_46 += w3 * x46; s3_47 += w3 * x47
        s3_48 += w3 * x48; s3_49 += w3 * x49; s3_50 += w3 * x50; s3_51 += w3 * x51
        s3_52 += w3 * x52; s3_53 += w3 * x53; s3_54 += w3 * x54; s3_55 += w3 * x55
        s3_56 += w3 * x56; s3_57 += w3 * x57; s3_58 += w3 * x58; s3_59 += w3 * x59
        s3_60 += w3 * x60; s3_61 += w3 * x61; s3_62 += w3 * x62; s3_63 += w3 * x63
    d = a0[i0: i0 + 64]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s0_00, s0_01, s0_02, s0_03, s0_04, s0_05, s0_06, s0_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s0_08, s0_09, s0_10, s0_11, s0_12, s0_13, s0_14, s0_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s0_16, s0_17, s0_18, s0_19, s0_20, s0_21, s0_22, s0_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s0_24, s0_25, s0_26, s0_27, s0_28, s0_29, s0_30, s0_31
    d[32], d[33], d[34], d[35], d[36], d[37], d[38], d[39] = s0_32, s0_33, s0_34, s0_35, s0_36, s0_37, s0_38, s0_39
    d[40], d[41], d[42], d[43], d[44], d[45], d[46], d[47] = s0_40, s0_41, s0_42, s0_43, s0_44, s0_45, s0_46, s0_47
    d[48], d[49], d[50], d[51], d[52], d[53], d[54], d[55] = s0_48, s0_49, s0_50, s0_51, s0_52, s0_53, s0_54, s0_55
    d[56], d[57], d[58], d[59], d[60], d[61], d[62], d[63] = s0_56, s0_57, s0_58, s0_59, s0_60, s0_61, s0_62, s0_63
    d = a1[i0: i0 + 64]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s1_00, s1_01, s1_02, s1_03, s1_04, s1_05, s1_06, s1_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s1_08, s1_09, s1_10, s1_11, s1_12, s1_13, s1_14, s1_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s1_16, s1_17, s1_18, s1_19, s1_20, s1_21, s1_22, s1_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s1_24, s1_25, s1_26, s1_27, s1_28, s1_29, s1_30, s1_31
    d[32], d[33], d[34], d[35], d[36], d[37], d[38], d[39] = s1_32, s1_33, s1_34, s1_35, s1_36, s1_37, s1_38, s1_39
    d[40], d[41], d[42], d[43], d[44], d[45], d[46], d[47] = s1_40, s1_41, s1_42, s1_43, s1_44, s1_45, s1_46, s1_47
    d[48], d[49], d[50], d[51], d[52], d[53], d[54], d[55] = s1_48, s1_49, s1_50, s1_51, s1_52, s1_53, s1_54, s1_55
    d[56], d[57], d[58], d[59], d[60], d[61], d[62], d[63] = s1_56, s1_57, s1_58, s1_59, s1_60, s1_61, s1_62, s1_63
    d = a2[i0: i0 + 64]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s2_00, s2_01, s2_02, s2_03, s2_04, s2_05, s2_06, s2_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s2_08, s2_09, s2_10, s2_11, s2_12, s2_13, s2_14, s2_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s2_16, s2_17, s2_18, s2_19, s2_20, s2_21, s2_22, s2_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s2_24, s2_25, s2_26, s2_27, s2_28, s2_29, s2_30, s2_31
    d[32], d[33], d[34], d[35], d[36], d[37], d[38], d[39] = s2_32, s2_33, s2_34, s2_35, s2_36, s2_37, s2_38, s2_39
    d[40], d[41], d[42], d[43], d[44], d[45], d[46], d[47] = s2_40, s2_41, s2_42, s2_43, s2_44, s2_45, s2_46, s2_47
    d[48], d[49], d[50], d[51], d[52], d[53], d[54], d[55] = s2_48, s2_49, s2_50, s2_51, s2_52, s2_53, s2_54, s2_55
    d[56], d[57], d[58], d[59], d[60], d[61], d[62], d[63] = s2_56, s2_57, s2_58, s2_59, s2_60, s2_61, s2_62, s2_63
    d = a3[i0: i0 + 64]
    d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7] = s3_00, s3_01, s3_02, s3_03, s3_04, s3_05, s3_06, s3_07
    d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15] = s3_08, s3_09, s3_10, s3_11, s3_12, s3_13, s3_14, s3_15
    d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23] = s3_16, s3_17, s3_18, s3_19, s3_20, s3_21, s3_22, s3_23
    d[24], d[25], d[26], d[27], d[28], d[29], d[30], d[31] = s3_24, s3_25, s3_26, s3_27, s3_28, s3_29, s3_30, s3_31
    d[32], d[33], d[34], d[35], d[36], d[37], d[38], d[39] = s3_32, s3_33, s3_34, s3_35, s3_36, s3_37, s3_38, s3_39
    d[40], d[41], d[42], d[43], d[44], d[45], d[46], d[47] = s3_40, s3_41, s3_42, s3_43, s3_44, s3_45, s3_46, s3_47
    d[48], d[49], d[50], d[51], d[52], d[53], d[54], d[55] = s3_48, s3_49, s3_50, s3_51, s3_52, s3_53, s3_54, s3_55
    d[56], d[57], d[58], d[59], d[60], d[61], d[62], d[63] = s3_56, s3_57, s3_58, s3_59, s3_60, s3_61, s3_62, s3_63


TILE_N = 32  # positions of a _tile4_kernel tile
TILE_WIDE = 64  # positions of a _tile4x64_kernel tile
# Whether the wide tiles run: its 256 sums fill 16 of AVX-512's 32 vector registers; with 16 (AVX2) or NEON's 32 of
# 128 bits they would spill, so there the 32-position tiles stay.
WIDE_TILES = bool(llvm_binding.get_host_cpu_features().get("avx512f", False))


def _block_taps_tiled(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, n):
    """a_j[:n] = the sum over t < ntaps of wblk[t, j] * src[base + oblk[t]: base + oblk[t] + n], j = 0..3: the sums
    of block_taps_kernel from zero accumulators (the same FMAs in the same order: the same bits), in registers a tile
    of 32 positions at a time; the last tile ends at n, overlapping the one before; n < 32 runs block_taps_kernel."""
    if WIDE_TILES and n >= TILE_WIDE:
        # 64-position tiles, the last ending at n: one of 32 when the rest fits in it, else one of 64 overlapping
        full = n // TILE_WIDE
        for k in range(full):
            _tile4x64_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, k * TILE_WIDE)
        rest = n - full * TILE_WIDE
        if rest > TILE_N:
            _tile4x64_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, n - TILE_WIDE)
        elif rest > 0:
            _tile4_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, n - TILE_N)
        return
    if n < TILE_N:
        a0[:n] = 0.0
        a1[:n] = 0.0
        a2[:n] = 0.0
        a3[:n] = 0.0
        block_taps_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, n)
        return
    for i in range(0, n, TILE_N):
        _tile4_kernel(src, base, wblk, oblk, ntaps, a0, a1, a2, a3, min(i, n - TILE_N))


def _signature(readonly_src):
    f1, i64 = numba.types.Array(numba.float32, 1, "C"), numba.int64
    src = numba.types.Array(numba.float32, 1, "C", readonly=readonly_src)
    return numba.void(src, i64, numba.types.Array(numba.float32, 2, "C"), numba.types.Array(i64, 1, "C"), i64,
                      f1, f1, f1, f1, i64)


# src (x's sample, writable or read-only, or a padded / phased copy), base, wblk (>= ntaps, 4), oblk, ntaps, a0..a3, n
# (compiled with SLP on when a conv binds it: slp.ready)
block_taps_tiled = slp_kernel(_block_taps_tiled, [_signature(False), _signature(True)])
