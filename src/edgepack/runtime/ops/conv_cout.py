"""Dense group-1 convolutions by a direct kernel vectorised over OUTPUT channels, for the weight held transposed
("cout" form, kind "cout" of conv.PreparedConv): wt (blocks, cols, CB) float32, block k holding output channels
k * CB ... k * CB + CB - 1 (zeros past cout) for every tap r = c * kh * kw + ky * kw + kx, CB = 64 or 16
(block_of).

A tile of P output positions x CB output channels is summed in vector registers over every tap: each tap is one
contiguous load of the block's CB weights and, per position, one input value broadcast (P = 4 with CB = 64, 8 with
16: 16 or 8 accumulators of 16 lanes), one fused multiply-add per (position, channel, tap); the sums go straight to
the output (cout, OH * OW). There is no im2col matrix and no padded or phased copy: a position's input is read
where it lies in x, at its first row and column (posy = oy * sh - pt, posx = ox * sw - pl: strides and padding)
plus the tap's (ky * dh, kx * dw). A tile whose taps all fall inside the plane (the interior) runs the taps in r
order through a table of their offsets; a tile with taps outside (the borders) runs them tap by tap, channels
inner, each position reading its input or, for a tap outside the plane, a zero at stride 0 (no branch in the loop).
The im2col path this replaces spent 15-35 us a layer on nudenet's small planes copying (the padded copy alone
0.4-0.8 ns a value at 10x10 to 20x20: per-row loop overhead).

Positions go in chunks whose output values stay in L2 (CHUNK_FLOATS); after every chunk conv.py's
_bias_act_band_kernel runs the bias, activation and epilogue chain on it (the one epilogue of the im2col paths).
The last tile of a chunk that does not fill P positions repeats its last position (stored once). Tiles are written
as LLVM IR (like simd_rows.py: Numba keeps small local arrays in memory): generic vector types that LLVM lowers to
AVX-512, AVX2 or NEON; compiled when first bound (cache=True). Serial only: the planner offers the form to serial
plans (runtime/layers.py), and a parallel call runs it on one thread. Speed: runtime/layers.py COUT_MAC_S.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops import conv as conv_ops
from edgepack.runtime.ops.conv import (_CIN_G, _DH, _DW, _H, _KH, _KW, _OH, _OW, _PL, _PT, _SH, _SW, _W,
                                       _bias_act_band_kernel)
from edgepack.runtime.weights import DenseWeight

# Output values (cout x positions) of one chunk: 256 KiB of float32, in L2 between the products and the epilogue
# (nudenet's 16 -> 32 3x3 stride-2 layer at 160x160 writes 820 KB in one plane)
CHUNK_FLOATS = 1 << 16
# Below this many taps (cin * kh * kw) a tile's sums are too short for its start and store: 3 -> 16 3x3 stride 2 at
# 320x320 (27 taps) ran 1.24 ms against the blocked kernel's 0.47
MIN_COLS = 64


def _tile(npos_tile: int, widths: tuple[int, ...], inner: bool):
    """tile(src, zero, posy, posx, tab, kdy, kdx, dims, wt, w0, pos0, lim, out, o0, ostride, nco): for the tile's
    positions q = pos0 + p (p < P = npos_tile; q past lim - 1 is read as lim - 1 and not stored) and lanes
    j < L = sum(widths), out[o0 + j * ostride + p] = sum over taps r = c * kk + k of wt[w0 + r * L + j] * (the input
    at channel c, row posy[q] + kdy[k], column posx[q] + kdx[k]; 0 outside the H x W plane), stored for j < nco.
    dims = (H, W, cin, kk); src: the sample (C, H, W) flat; zero: a float32 0.

    inner (every tap of every position of the tile inside the plane): one loop over r in order, the input at
    src[tab[r] + posy * W + posx] (tab[r] = c * H * W + kdy[k] * W + kdx[k]). Else, taps outside: k outer, c
    inner, each position reading, for tap k, either its input at stride H * W per channel or the zero at stride 0
    (the sums in that order)."""
    lanes = sum(widths)

    @intrinsic
    def tile(typingctx, src_t, zero_t, posy_t, posx_t, tab_t, kdy_t, kdx_t, dims_t, wt_t, w0_t, pos0_t, lim_t,
             out_t, o0_t, ostride_t, nco_t):
        for t in (src_t, zero_t, wt_t, out_t):
            if not isinstance(t, types.Array) or t.dtype != types.float32 or t.layout != "C" or t.ndim != 1:
                return None
        for t in (posy_t, posx_t, tab_t, kdy_t, kdx_t, dims_t):
            if not isinstance(t, types.Array) or t.dtype != types.int64 or t.layout != "C" or t.ndim != 1:
                return None
        i64t = types.int64
        sig = types.void(src_t, zero_t, posy_t, posx_t, tab_t, kdy_t, kdx_t, dims_t, wt_t, i64t, i64t, i64t, out_t,
                         i64t, i64t, i64t)

        def codegen(context, builder, signature, args):
            src, zero, posy, posx, tab, kdy, kdx, dims, wt, w0, pos0, lim, out, o0, ostride, nco = args
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vts = [ir.VectorType(f32, w) for w in widths]
            offs = [sum(widths[:i]) for i in range(len(widths))]
            sa, za, ya, xa, ta, dya, dxa, da, wa, oa = (
                context.make_array(signature.args[i])(context, builder, v)
                for i, v in ((0, src), (1, zero), (2, posy), (3, posx), (4, tab), (5, kdy), (6, kdx), (7, dims),
                             (8, wt), (12, out)))
            hh, ww, cin, kk = (builder.load(builder.gep(da.data, [ir.Constant(i64, i)])) for i in range(4))
            last = builder.sub(lim, ir.Constant(i64, 1))
            pys, pxs = [], []
            for p in range(npos_tile):
                q = builder.add(pos0, ir.Constant(i64, p))
                q = builder.select(builder.icmp_signed(">", q, last), last, q)
                pys.append(builder.load(builder.gep(ya.data, [q])))
                pxs.append(builder.load(builder.gep(xa.data, [q])))
            sums = [[cgutils.alloca_once_value(builder, ir.Constant(vt, [0.0] * vt.count)) for vt in vts]
                    for _ in range(npos_tile)]
            wbase = builder.gep(wa.data, [w0])

            def fma(wrow, xs):
                ws = [builder.load(builder.bitcast(builder.gep(wrow, [ir.Constant(i64, o)]), vt.as_pointer()),
                                   align=4) for vt, o in zip(vts, offs)]
                for x, ss in zip(xs, sums):
                    for vt, wv, s in zip(vts, ws, ss):
                        bc = builder.shuffle_vector(builder.insert_element(ir.Constant(vt, None), x,
                                                                           ir.Constant(i32, 0)),
                                                    ir.Constant(vt, None),
                                                    ir.Constant(ir.VectorType(i32, vt.count), [0] * vt.count))
                        builder.store(builder.fadd(builder.load(s), builder.fmul(bc, wv, flags=("contract",)),
                                                   flags=("contract",)), s)

            if inner:
                bases = [builder.gep(sa.data, [builder.add(builder.mul(py, ww), px)]) for py, px in zip(pys, pxs)]
                with cgutils.for_range(builder, builder.mul(cin, kk)) as loop:
                    r = loop.index
                    t = builder.load(builder.gep(ta.data, [r]))
                    fma(builder.gep(wbase, [builder.mul(r, ir.Constant(i64, lanes))]),
                        [builder.load(builder.gep(b, [t])) for b in bases])
            else:
                plane = builder.mul(hh, ww)
                zero_i = ir.Constant(i64, 0)
                wstride = builder.mul(kk, ir.Constant(i64, lanes))
                with cgutils.for_range(builder, kk) as kloop:
                    k = kloop.index
                    dy = builder.load(builder.gep(dya.data, [k]))
                    dx = builder.load(builder.gep(dxa.data, [k]))
                    bases, strides = [], []
                    for py, px in zip(pys, pxs):
                        iy, ix = builder.add(py, dy), builder.add(px, dx)
                        ok = builder.and_(builder.icmp_unsigned("<", iy, hh), builder.icmp_unsigned("<", ix, ww))
                        # the offset only where it is inside: no pointer out of the sample is ever formed
                        off = builder.select(ok, builder.add(builder.mul(iy, ww), ix), zero_i)
                        bases.append(builder.select(ok, builder.gep(sa.data, [off]), za.data))
                        strides.append(builder.select(ok, plane, zero_i))
                    wk = builder.gep(wbase, [builder.mul(k, ir.Constant(i64, lanes))])
                    with cgutils.for_range(builder, cin) as cloop:
                        c = cloop.index
                        fma(builder.gep(wk, [builder.mul(c, wstride)]),
                            [builder.load(builder.gep(b, [builder.mul(c, st)])) for b, st in zip(bases, strides)])
            nvalid = builder.sub(lim, pos0)
            obase = builder.gep(oa.data, [o0])
            for p in range(npos_tile):
                with builder.if_then(builder.icmp_signed(">", nvalid, ir.Constant(i64, p))):
                    vals = [builder.load(s) for s in sums[p]]
                    for vt, o, v in zip(vts, offs, vals):
                        for lane in range(vt.count):
                            j = o + lane
                            with builder.if_then(builder.icmp_signed(">", nco, ir.Constant(i64, j))):
                                dst = builder.gep(obase, [builder.add(builder.mul(ir.Constant(i64, j), ostride),
                                                                      ir.Constant(i64, p))])
                                builder.store(builder.extract_element(v, ir.Constant(i32, lane)), dst)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# (positions, channels) of a tile: 4 x 64 beat 4 x 32, 6 x 32, 8 x 32, 3 x 64, 6 x 64 and 2 x 128 by 0-8% on
# nudenet's 64- to 256-channel 3x3 layers (106-115 GFLOP/s), 8 x 16 is the fastest for 16 and 32 channels (4 x 64
# pays for its zero lanes: 16 -> 16 at 80x80 1.04 ms against 0.29); 1 thread, CPU time, load ~1
_wide_inner, _wide_edge = _tile(4, (16, 16, 16, 16), True), _tile(4, (16, 16, 16, 16), False)
_narrow_inner, _narrow_edge = _tile(8, (16,), True), _tile(8, (16,), False)
WIDE, NARROW = 64, 16


def block_of(cout: int) -> int:
    """Output channels of a weight block (CB): 64 unless that pads more than an eighth of cout with zero lanes."""
    return WIDE if cout >= WIDE and (-cout) % WIDE <= cout // 8 else NARROW


def eligible(g: dict) -> bool:
    """Whether a convolution of geometry g (conv.geometry) may hold its dense weight in this form: group 1, a kernel
    larger than 1x1 (a 1x1 runs conv_pointwise.py / BLAS on the sample itself) and at least MIN_COLS taps."""
    return g["group"] == 1 and g["kh"] * g["kw"] > 1 and g["cin_g"] * g["kh"] * g["kw"] >= MIN_COLS


def weight_bytes(w_shape: tuple) -> int:
    """Bytes of the held form: (blocks, cols, CB) float32."""
    cout, cols = int(w_shape[0]), int(np.prod(w_shape[1:]))
    cb = block_of(cout)
    return 4 * -(-cout // cb) * cb * cols


def prepare_cout(weight) -> conv_ops.PreparedConv:
    """The "cout" form of a dense group-1 Conv weight (cout, cin, kh, kw) or (cout, cin, k): wt (blocks, cols, CB)."""
    if not isinstance(weight, DenseWeight):
        raise UnsupportedError(f"conv cout: expected a dense weight, found {type(weight).__name__}")
    w = np.asarray(weight.array)
    if w.ndim not in (3, 4) or w.dtype.kind != "f":
        raise UnsupportedError(f"conv cout: expected a float (cout, cin, kh, kw) or (cout, cin, k) weight, found "
                               f"{w.dtype.name} {w.shape}")
    cout = w.shape[0]
    w2d = conv_ops._flush_subnormals(np.ascontiguousarray(w, dtype=np.float32).reshape(cout, -1))
    cb = block_of(cout)
    nblk = -(-cout // cb)
    padded = np.zeros((nblk * cb, w2d.shape[1]), np.float32)
    padded[:cout] = w2d
    wt = np.ascontiguousarray(padded.reshape(nblk, cb, -1).transpose(0, 2, 1))
    return conv_ops.PreparedConv("cout", tuple(int(d) for d in w.shape), 1, {"wt": wt})


def _chunk(g: dict) -> int:
    """Positions of one chunk (a multiple of both tiles' P)."""
    npos = g["oh"] * g["ow"]
    if g["cout"] * npos <= CHUNK_FLOATS:
        return npos
    return max(8, CHUNK_FLOATS // g["cout"] // 8 * 8)


def _ints(g: dict) -> int:
    """int64 tables: dims (4), the taps' row and column offsets (kh * kw each), the taps' offsets in the sample
    (cols), the positions' first input row and column (OH * OW each)."""
    kk = g["kh"] * g["kw"]
    return 4 + 2 * kk + g["cin_g"] * kk + 2 * g["oh"] * g["ow"]


def scratch_bytes(g: dict) -> int:
    """The int64 tables (_ints) and one chunk row for an epilogue chain."""
    return 8 * _ints(g) + 4 * _chunk(g)


_ZERO = np.zeros(1, np.float32)  # what a tap outside the plane reads
_ZERO.flags.writeable = False


@njit(cache=True)
def _inner(posy, posx, q0, q1, ylim, xlim):
    """Whether every tap of positions q0 <= q < q1 lies inside the plane (0 <= posy < ylim, 0 <= posx < xlim)."""
    for q in range(q0, q1):
        if posy[q] < 0 or posy[q] >= ylim or posx[q] < 0 or posx[q] >= xlim:
            return False
    return True


@njit(cache=True)
def _conv_cout_kernel(x2, geo, wt, zero, bias, ep, chain, out3, scratch, nints, chunk, finish):
    hh, ww, oh, ow, cin = geo[_H], geo[_W], geo[_OH], geo[_OW], geo[_CIN_G]
    kh, kw, dh, dw = geo[_KH], geo[_KW], geo[_DH], geo[_DW]
    kk, npos = kh * kw, oh * ow
    cols = cin * kk
    cb = wt.shape[2]
    cout = out3.shape[1]
    ints = scratch[: 8 * nints].view(np.int64)
    dims, kdy, kdx = ints[0: 4], ints[4: 4 + kk], ints[4 + kk: 4 + 2 * kk]
    tab = ints[4 + 2 * kk: 4 + 2 * kk + cols]
    posy = ints[4 + 2 * kk + cols: 4 + 2 * kk + cols + npos]
    posx = ints[4 + 2 * kk + cols + npos: 4 + 2 * kk + cols + 2 * npos]
    save = scratch[8 * nints: 8 * nints + 4 * chunk].view(np.float32)
    dims[0], dims[1], dims[2], dims[3] = hh, ww, cin, kk
    for ky in range(kh):
        for kx in range(kw):
            kdy[ky * kw + kx], kdx[ky * kw + kx] = ky * dh, kx * dw
    plane = hh * ww
    for c in range(cin):
        for k in range(kk):
            tab[c * kk + k] = c * plane + kdy[k] * ww + kdx[k]
    sh, sw, pt, pl = geo[_SH], geo[_SW], geo[_PT], geo[_PL]
    for oy in range(oh):
        for ox in range(ow):
            posy[oy * ow + ox], posx[oy * ow + ox] = oy * sh - pt, ox * sw - pl
    ylim, xlim = hh - (kh - 1) * dh, ww - (kw - 1) * dw  # a position's taps are all inside below these
    w = wt.reshape(-1)
    for b in range(x2.shape[0]):
        o = out3[b].reshape(-1)
        for p0 in range(0, npos, chunk):
            p1 = min(npos, p0 + chunk)
            _tiles_kernel(x2[b], zero, posy, posx, tab, kdy, kdx, dims, w, cb, cols, cout, o, npos, p0, p1, ylim,
                          xlim)
            if finish:
                _bias_act_band_kernel(out3, b, p0, p1, bias, ep, chain, save)


@njit(cache=True)
def _tiles_kernel(src, zero, posy, posx, tab, kdy, kdx, dims, w, cb, cols, cout, o, npos, p0, p1, ylim, xlim):
    """The sums of positions p0 <= q < p1 of one sample into o (cout, npos) flat, block by block. A function of its
    own: the driver's other arguments (bias, chain: read-only or not) do not compile the tiles again."""
    for blk in range(-(-cout // cb)):
        co0 = blk * cb
        nco, w0 = min(cb, cout - co0), blk * cols * cb
        # the interior tiles first: their taps in order read the block's weights front to back, from memory the
        # first time in a run (the border tiles' tap-by-tap order strides through them): nudenet's 128 -> 256 and
        # 128 -> 128 stride-2 layers at 20x20 0.683 -> 0.613 and 0.347 -> 0.311 ms in the model (profile, CPU)
        for inner in (True, False):
            if cb == WIDE:
                for q in range(p0, p1, 4):
                    if _inner(posy, posx, q, min(p1, q + 4), ylim, xlim) != inner:
                        continue
                    if inner:
                        _wide_inner(src, zero, posy, posx, tab, kdy, kdx, dims, w, w0, q, p1, o, co0 * npos + q,
                                    npos, nco)
                    else:
                        _wide_edge(src, zero, posy, posx, tab, kdy, kdx, dims, w, w0, q, p1, o, co0 * npos + q,
                                   npos, nco)
            else:
                for q in range(p0, p1, 8):
                    if _inner(posy, posx, q, min(p1, q + 8), ylim, xlim) != inner:
                        continue
                    if inner:
                        _narrow_inner(src, zero, posy, posx, tab, kdy, kdx, dims, w, w0, q, p1, o, co0 * npos + q,
                                      npos, nco)
                    else:
                        _narrow_edge(src, zero, posy, posx, tab, kdy, kdx, dims, w, w0, q, p1, o, co0 * npos + q,
                                     npos, nco)


def bind(x, prepared, g: dict, geo: np.ndarray, bias_v, ep, chain, finish: bool, out, scratch):
    """conv.bind_conv's step for a "cout"-prepared weight: (fn, args)."""
    if g["group"] != 1:
        raise InputError(f"conv cout: the form holds group-1 weights, found group {g['group']}")
    wt = prepared.arrays["wt"]
    cols = g["cin_g"] * g["kh"] * g["kw"]
    if wt.shape[1] != cols or wt.shape[0] * wt.shape[2] < g["cout"]:
        raise InputError(f"conv cout: held weight {wt.shape} does not fit geometry cout {g['cout']}, {cols} taps")
    nb, npos = g["nb"], g["oh"] * g["ow"]
    return _conv_cout_kernel, (x.reshape(nb, -1), geo, wt, _ZERO, bias_v, ep, chain,
                               out.reshape(nb, g["cout"], npos), scratch, _ints(g), _chunk(g), finish)
