"""Winograd F(2x2, 3x3) convolution (Lavin & Gray 2016) for dense 3x3 stride-1 group-1 Conv layers: each 2x2 block
of outputs ("tile") is computed from the 4x4 input patch under it with 16 multiplies per (input channel, output
channel) instead of 36, the multiplies done as 16 BLAS products.

    U[k] = (G g G^T)[k]       (16, cout, cin)  once, when the layer is prepared (16/9 of the dense weight's bytes)
    V[k] = (B^T d B)[k]       (16, cin, tiles) per band of tile rows (_input_transform)
    M[k] = U[k] @ V[k]        (16, cout, tiles) np.matmul: BLAS, its threads limited by runtime/threads.py
    Y    = A^T m A            2x2 outputs per tile (_output_transform), then bias, activation and the epilogue chain
                              by runtime/ops/conv.py's _store_rows_kernel (the same epilogue every conv path runs)

Tiles go in bands of whole tile rows sized so that a band's V and M (16 * (cin + cout) floats a tile) stay in L2
between the transforms and the products (WINO_BAND_FLOATS). The transforms use only additions and subtractions
(B and A are 0 / +-1; G's halves are applied once, to the weight, in float64): the rounding is a few float32 ulps of
the partial sums, far inside the runtime's 1e-4 agreement with onnxruntime (tests/test_conv_winograd.py measures it
against float64 references). F(4x4, 3x3) would take 36 products per 4x4 tile instead of 64, but its transforms
carry factors up to 8 and fractions such as 1/6 and 1/24 in G, so its rounding grows with the values: tried, it
measured 1.2e-6 - 4.6e-6 per layer on ddddocr's weights and up to 1e-5 on random 256-channel data, and with these
kernels its cheaper products (1.2-1.6 vs 1.9 ms on 96 -> 96 at 52x52) were outweighed by transforms 2-4x dearer;
not kept.

Padding, partial tiles (odd OH / OW) and auto_pad come from conv.py's geometry: the input rows of a band are copied,
zero-padded, into four per-slot planes (even / odd rows x even / odd columns) so that every transform step is one
contiguous, vectorised loop over all the tiles of the band (see the comment above the kernels: one dropped tile per
tile row); outputs past OH / OW are computed and dropped. Measured (1 thread, CPU time) on 96 -> 96 at 52x52: input
transform 0.34 ms, products 1.87 ms (111 GFLOP/s), output transform 0.25 ms; 2.7 ms in all against 5.8 ms for the
blocked direct kernel. The parallel build splits the
channels of each transform over threads (slot t takes channels t, t + slots, ...; the same arithmetic per value, so
the same bits as the serial one); the products use BLAS's threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops import conv as conv_ops
from edgepack.runtime.ops.conv import _store_rows_kernel
from edgepack.runtime.ops.elementwise import EP_ACT, EP_P0, EP_P1
from edgepack.runtime.weights import DenseWeight

# A band's V and M together: about this many floats (1 MiB of float32, the L2 of one core of the dev VM). Measured
# (1 thread, benchmarks/conv_kernels.py shapes): 96 -> 96 at 52x52 ran its products at 110 GFLOP/s in bands of 78
# tiles, 94 in bands of 156 (2 MiB) and 91 in bands of one tile row (26: BLAS's N too short); 96 -> 96 at 104x104
# 105 in bands of one row (52 tiles), 87 in 156
WINO_BAND_FLOATS = 1 << 18

_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def eligible(g: dict) -> bool:
    """Whether a convolution of geometry g (conv.geometry) can run Winograd F(2x2, 3x3): a 2-D 3x3 kernel, stride 1,
    dilation 1, group 1."""
    return (g["kh"] == 3 and g["kw"] == 3 and g["sh"] == 1 and g["sw"] == 1 and g["dh"] == 1 and g["dw"] == 1
            and g["group"] == 1 and len(g["out_shape"]) == 4)


# The planner holds a layer in Winograd form only on planes of MIN_TILES output tiles or more, with at most
# MAX_WEIGHT_BYTES_PER_TILE of transformed weight per tile (pays): with fewer tiles, or more weight for them, the 16
# products (BLAS's N: the tiles) are too short for the transformed weight (16/9 of the dense bytes, packed by BLAS at
# every product) to pay once the layers before have pushed it out of cache, and the "cout" form (conv_cout.py)
# runs faster. Inside the model (Model.profile clock cpu, 1 thread, both holdings in one process, interleaved, load
# 4.8-5.4), Winograd -> cout: nudenet's eight 3x3 layers at 10x10 (25 tiles) 0.364 -> 0.309 ms (128 -> 128),
# 0.363 -> 0.300 (256 -> 64), 0.110 -> 0.084 (64 -> 64), though alone and hot Winograd is as fast (0.235 vs 0.24);
# ppocr_det's 96 -> 24 at 10x10 0.149 -> 0.098; mtcnn_onet's 64 -> 64 at 8x8 (16 tiles, plain dense before) 0.071
# -> 0.048; ddddocr_det's 192 -> 192 at 13x13 (49 tiles, 48 kB a tile) 1.65 -> 1.13. Winograd kept: ddddocr_common's
# 64 -> 256 at 8x22 (44 tiles, 24 kB a tile) 0.37 against 0.52 in the "cout" form, ddddocr_det's 96 -> 96 at 13x13
# (49 tiles, 12 kB a tile) 0.32 against 0.31
MIN_TILES = 32
MAX_WEIGHT_BYTES_PER_TILE = 32 << 10


def pays(g: dict) -> bool:
    """Whether the planner should offer the Winograd form to an eligible convolution of geometry g (MIN_TILES,
    MAX_WEIGHT_BYTES_PER_TILE)."""
    nty, ntx = tiles(g)
    n = nty * ntx
    return n >= MIN_TILES and 4 * 16 * g["c"] * g["cout"] <= MAX_WEIGHT_BYTES_PER_TILE * n


def tiles(g: dict) -> tuple[int, int]:
    """(tile rows, tiles per row) of one output plane."""
    return -(-g["oh"] // 2), -(-g["ow"] // 2)


def weight_bytes(w_shape: tuple) -> int:
    """Bytes of the transformed weight (16, cout, cin) float32."""
    return 4 * 16 * int(w_shape[0]) * int(w_shape[1])


def prepare_winograd(weight) -> conv_ops.PreparedConv:
    """The Winograd form of a dense 3x3 Conv weight (cout, cin, 3, 3): U (16, cout, cin) float32, U[4i + j] =
    (G g G^T)[i, j] computed in float64."""
    if not isinstance(weight, DenseWeight):
        raise UnsupportedError(f"conv winograd: expected a dense weight, found {type(weight).__name__}")
    w = np.asarray(weight.array)
    if w.ndim != 4 or w.shape[2:] != (3, 3) or w.dtype.kind != "f":
        raise UnsupportedError(f"conv winograd: expected a float (cout, cin, 3, 3) weight, found {w.dtype.name} "
                               f"{w.shape}")
    g = conv_ops._flush_subnormals(np.ascontiguousarray(w, dtype=np.float32)).astype(np.float64)
    u = np.einsum("ia,oxab,jb->ijox", _G, g, _G).reshape(16, w.shape[0], w.shape[1])
    u = conv_ops._flush_subnormals(np.ascontiguousarray(u, dtype=np.float32))
    return conv_ops.PreparedConv("winograd", tuple(int(d) for d in w.shape), 1, {"u": u})


def layout(g: dict, parallel: bool) -> tuple[int, int]:
    """(tile rows per band, scratch bytes): one band's V and M, and per slot the band's padded input rows and their
    column transform (_input_transform), the partial sums and one channel's output rows of the band
    (_output_transform)."""
    nty, ntx = tiles(g)
    per_tile = 16 * (g["c"] + g["cout"])
    brows = max(1, min(nty, WINO_BAND_FLOATS // max(1, per_tile * (ntx + 1))))
    slots = conv_ops._slots(max(g["c"], g["cout"]), parallel)
    rlen, alen = _slot_sizes(ntx, brows)
    return brows, 4 * (per_tile * brows * (ntx + 1) + slots * (rlen + alen))


def _slot_sizes(ntx: int, brows: int) -> tuple[int, int]:
    """Per-slot floats of the input transform's planes and of the output transform's sums and rows."""
    half = ntx + 1
    nq = brows * half
    return 4 * (brows + 1) * half + 8 * (nq + 1), 12 * nq + 2 * brows * 2 * ntx


# ---------------------------------------------------------------------------------------------------------- kernels

@njit(cache=True, inline="always")
def _diff_kernel(a, b, out, n):
    for i in range(n):
        out[i] = a[i] - b[i]


@njit(cache=True, inline="always")
def _sum_kernel(a, b, out, n):
    for i in range(n):
        out[i] = a[i] + b[i]


@njit(cache=True, inline="always")
def _sum3_kernel(a, b, c, out, n):
    for i in range(n):
        out[i] = a[i] + b[i] + c[i]


@njit(cache=True, inline="always")
def _diff3_kernel(a, b, c, out, n):
    for i in range(n):
        out[i] = a[i] - b[i] - c[i]


@njit(cache=True, inline="always")
def _interleave_kernel(e, o, out, n):
    for i in range(n):
        out[2 * i] = e[i]
        out[2 * i + 1] = o[i]


@njit(cache=True, inline="always")
def _tail_kernel(a, b, out, n):
    for i in range(n):
        out[i] = a[i] - b[i + 1]


@njit(cache=True, inline="always")
def _rdiff_kernel(a, b, out, n):
    for i in range(n):
        out[i] = a[i + 1] - b[i]


@njit(cache=True, inline="always")
def _rsum_kernel(a, b, out, n):
    for i in range(n):
        out[i] = a[i] + b[i + 1]


@njit(cache=True)
def _fill_row_kernel(src, w, pl, half, ev, od):
    """ev[k] = src[2k - pl], od[k] = src[2k + 1 - pl] (0 outside src): one padded input row, its even and odd
    columns apart."""
    # k where both columns are inside: 2k - pl >= 0 and 2k + 1 - pl <= w - 1
    lo = min(half, (pl + 1) // 2)
    hi = max(lo, min(half, (w + pl) // 2))
    for k in range(lo):
        ix = 2 * k - pl
        ev[k] = src[ix] if 0 <= ix < w else np.float32(0.0)
        od[k] = src[ix + 1] if 0 <= ix + 1 < w else np.float32(0.0)
    n = hi - lo
    s = src[2 * lo - pl: 2 * lo - pl + 2 * n]
    e, o = ev[lo: hi], od[lo: hi]
    for k in range(n):
        e[k] = s[2 * k]
        o[k] = s[2 * k + 1]
    for k in range(hi, half):
        ix = 2 * k - pl
        ev[k] = src[ix] if 0 <= ix < w else np.float32(0.0)
        od[k] = src[ix + 1] if 0 <= ix + 1 < w else np.float32(0.0)


# The transforms run over a band at once: tile (ty, tx) of the band is column q = ty * half + tx of V and M, half =
# ntx + 1 (one dropped column per tile row, 1/half of the products), so that every transform step is ONE contiguous
# loop over the band's tiles (two or three loads, one store: vectorised), not one short loop per tile row. The padded
# input rows are held as four planes, [even | odd] rows x [even | odd] columns, each (tile rows + 1, half): the patch
# of tile q then starts at q in each plane, its next row pair at q + half and its next column pair at q + 1.

def _input_transform(x, b, c_in, h, w, pt, pl, ntx, ty0, ty1, v, rows, slots, rlen):
    """v[(k * c_in + c) * nq + q] = (B^T d B)[k] for the 4x4 padded-input patch d of the tile at column q (see above;
    nq = (ty1 - ty0) * half), every channel c. rows: per slot rlen floats, the four planes of the band's padded rows
    then the eight planes of B^T applied down the columns."""
    half = ntx + 1
    nbr = ty1 - ty0
    nq = nbr * half
    plane = (nbr + 1) * half
    tq = nq + 1
    step = c_in * nq
    for s in prange(slots):
        rb = rows[s * rlen: s * rlen + rlen]
        pee, peo = rb[0: plane], rb[plane: 2 * plane]  # even rows: even, odd columns
        poe, poo = rb[2 * plane: 3 * plane], rb[3 * plane: 4 * plane]  # odd rows
        t = rb[4 * plane: 4 * plane + 8 * tq]
        for c in range(s, c_in, slots):
            for m in range(nbr + 1):
                for par in range(2):
                    iy = 2 * (ty0 + m) - pt + par
                    ev = (poe if par else pee)[m * half: m * half + half]
                    od = (poo if par else peo)[m * half: m * half + half]
                    if iy < 0 or iy >= h:
                        ev[:] = 0.0
                        od[:] = 0.0
                    else:
                        _fill_row_kernel(x[b, (c * h + iy) * w: (c * h + iy) * w + w], w, pl, half, ev, od)
            # B^T down the columns: d0 - d2, d1 + d2, d2 - d1, d1 - d3 with d0, d1 = rows 2ty, 2ty + 1 (plane rows
            # ty of the even and odd planes) and d2, d3 = the next pair (q + half); for both column planes
            for col in range(2):
                pe = pee if col == 0 else peo
                po = poe if col == 0 else poo
                t0, t1 = t[(0 + col) * tq: (0 + col) * tq + nq], t[(2 + col) * tq: (2 + col) * tq + nq]
                t2, t3 = t[(4 + col) * tq: (4 + col) * tq + nq], t[(6 + col) * tq: (6 + col) * tq + nq]
                pe2, po2 = pe[half: half + nq], po[half: half + nq]
                _diff_kernel(pe, pe2, t0, nq)
                _sum_kernel(po, pe2, t1, nq)
                _diff_kernel(pe2, po, t2, nq)
                _diff_kernel(po, po2, t3, nq)
            for i in range(8):  # the read one past the last column (a dropped tile's)
                t[i * tq + nq] = 0.0
            # B along the rows: columns 2tx .. 2tx + 3 are E[q], O[q], E[q + 1], O[q + 1]
            for i in range(4):
                te, to = t[2 * i * tq: 2 * i * tq + tq], t[(2 * i + 1) * tq: (2 * i + 1) * tq + tq]
                k0 = (4 * i * c_in + c) * nq
                _tail_kernel(te, te, v[k0: k0 + nq], nq)
                _rsum_kernel(to, te, v[k0 + step: k0 + step + nq], nq)
                _rdiff_kernel(te, to, v[k0 + 2 * step: k0 + 2 * step + nq], nq)
                _tail_kernel(to, to, v[k0 + 3 * step: k0 + 3 * step + nq], nq)


def _output_transform(m, b, cout, oh, ow, ntx, ty0, ty1, acc, slots, alen, bias, ep, chain, out):
    """out[b, co, output rows of tile rows ty0 .. ty1) = chain(act(A^T m A + bias[co])) for every output channel
    co, m[(k * cout + co) * nq + q] (q: the tile's column, see above); acc: per slot alen floats, 12 planes of nq
    for the partial sums, then the band's output rows of one channel (pitch 2 * ntx)."""
    has_bias = bias.shape[0] != 0
    kind, p0, p1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    half = ntx + 1
    nbr = ty1 - ty0
    nq = nbr * half
    pitch = 2 * ntx
    r0 = 2 * ty0
    nrows = min(2 * ty1, oh) - r0
    step = cout * nq
    for s in prange(slots):
        ac = acc[s * alen: s * alen + alen]
        sp = ac[0: 12 * nq]
        y = ac[12 * nq: 12 * nq + 2 * nbr * pitch]
        for co in range(s, cout, slots):
            # A^T down the columns: s0j = m0j + m1j + m2j, s1j = m1j - m2j - m3j (j = 0..3)
            for j in range(4):
                a = co * nq + j * step
                m0, m1 = m[a: a + nq], m[a + 4 * step: a + 4 * step + nq]
                m2, m3 = m[a + 8 * step: a + 8 * step + nq], m[a + 12 * step: a + 12 * step + nq]
                _sum3_kernel(m0, m1, m2, sp[j * nq: (j + 1) * nq], nq)
                _diff3_kernel(m1, m2, m3, sp[(4 + j) * nq: (5 + j) * nq], nq)
            # then along the rows: y_r0 = s_r0 + s_r1 + s_r2, y_r1 = s_r1 - s_r2 - s_r3, interleaved per tile row
            for r in range(2):
                q0, q1 = sp[(4 * r) * nq: (4 * r + 1) * nq], sp[(4 * r + 1) * nq: (4 * r + 2) * nq]
                q2, q3 = sp[(4 * r + 2) * nq: (4 * r + 3) * nq], sp[(4 * r + 3) * nq: (4 * r + 4) * nq]
                e, o = sp[(8 + 2 * r) * nq: (9 + 2 * r) * nq], sp[(9 + 2 * r) * nq: (10 + 2 * r) * nq]
                _sum3_kernel(q0, q1, q2, e, nq)
                _diff3_kernel(q1, q2, q3, o, nq)
                for ty in range(nbr):
                    d = (2 * ty + r) * pitch
                    _interleave_kernel(e[ty * half: ty * half + ntx], o[ty * half: ty * half + ntx],
                                       y[d: d + pitch], ntx)
            o0 = (co * oh + r0) * ow
            _store_rows_kernel(y, pitch, nrows, ow, np.float32(1.0), bias[co] if has_bias else np.float32(0.0),
                               out[b, o0: o0 + nrows * ow], kind, p0, p1, chain)


_input_transform_kernel, _input_transform_parallel_kernel = conv_ops._serial_and_parallel(_input_transform)
_output_transform_kernel, _output_transform_parallel_kernel = conv_ops._serial_and_parallel(_output_transform)


# --------------------------------------------------------------------------------------------------------- wrappers

def bind(x: np.ndarray, prepared: conv_ops.PreparedConv, g: dict, bias_v: np.ndarray, ep: np.ndarray,
         chain: np.ndarray, out: np.ndarray, scratch: np.ndarray, parallel: bool):
    """(fn, args) running the Winograd convolution of x (N, C, H, W) into out (N, cout, OH, OW); the caller
    (conv.bind_conv) has checked x, out, bias and the scratch's size (layout(g, parallel)[1] bytes)."""
    if not eligible(g):
        raise UnsupportedError(f"conv winograd: needs a 3x3 kernel, stride 1, dilation 1, group 1; found kernel "
                               f"{g['kh']}x{g['kw']}, strides {[g['sh'], g['sw']]}, dilations "
                               f"{[g['dh'], g['dw']]}, group {g['group']}")
    u = prepared.arrays["u"]
    c_in, cout = g["c"], g["cout"]
    if u.shape != (16, cout, c_in):
        raise InputError(f"conv winograd: prepared weight {u.shape} does not match {cout} x {c_in} channels")
    nty, ntx = tiles(g)
    brows, nbytes = layout(g, parallel)
    if scratch.nbytes < nbytes:
        raise InputError(f"conv winograd: scratch too small: {scratch.nbytes} bytes < {nbytes} needed")
    flat = scratch[:nbytes].view(np.float32)
    nt = brows * (ntx + 1)
    vbuf, mbuf = flat[: 16 * c_in * nt], flat[16 * c_in * nt: 16 * (c_in + cout) * nt]
    slots = conv_ops._slots(max(c_in, cout), parallel)
    rlen, alen = _slot_sizes(ntx, brows)
    pos = 16 * (c_in + cout) * nt
    rows = flat[pos: pos + slots * rlen]
    acc = flat[pos + slots * rlen: pos + slots * (rlen + alen)]
    bands = []
    for ty0 in range(0, nty, brows):
        ty1 = min(nty, ty0 + brows)
        n = (ty1 - ty0) * (ntx + 1)
        bands.append((ty0, ty1, n, vbuf[: 16 * c_in * n], mbuf[: 16 * cout * n],
                      vbuf[: 16 * c_in * n].reshape(16, c_in, n), mbuf[: 16 * cout * n].reshape(16, cout, n)))
    xin = _input_transform_parallel_kernel if parallel else _input_transform_kernel
    xout = _output_transform_parallel_kernel if parallel else _output_transform_kernel
    nb = x.shape[0]
    geo = (c_in, g["h"], g["w"], g["pt"], g["pl"], ntx, cout, g["oh"], g["ow"], slots, rlen, alen)
    return _run_winograd, (x.reshape(nb, -1), u, tuple(bands), rows, acc, xin, xout, out.reshape(nb, -1), bias_v,
                           ep, chain, geo)


def _run_winograd(x2, u, bands, rows, acc, xin, xout, out2, bias, ep, chain, geo) -> None:
    c_in, h, w, pt, pl, ntx, cout, oh, ow, slots, rlen, alen = geo
    for b in range(x2.shape[0]):
        for ty0, ty1, nt, v, m, v3, m3 in bands:
            xin(x2, b, c_in, h, w, pt, pl, ntx, ty0, ty1, v, rows, slots, rlen)
            np.matmul(u, v3, out=m3)
            xout(m, b, cout, oh, ow, ntx, ty0, ty1, acc, slots, alen, bias, ep, chain, out2)
