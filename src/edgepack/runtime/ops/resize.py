"""Resize (opset 10 to 19), nearest and linear, with the common coordinate transformations; scales or sizes from
constant inputs. Index and weight tables per axis follow onnxruntime's arithmetic; Numba kernels apply them over
the last two axes, numpy over other layouts."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import OpDef, check_arity, int_attr, int_list, normalize_axis

_F32 = np.float32
# tf_half_pixel_for_nearest is the spec's name (opset 11 only), tf_half_pixel_for_nn onnxruntime's
_COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                "tf_half_pixel_for_nearest", "tf_half_pixel_for_nn")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


@njit(cache=True)
def _nearest2d_kernel(x, out, iy, ix):
    # x: (planes, h, w); out: (planes, oh, ow); iy, ix: source row / column of each output row / column
    planes = x.shape[0]
    oh_, ow_ = out.shape[1], out.shape[2]
    for p in range(planes):
        for i in range(oh_):
            xrow = x[p, iy[i]]
            orow = out[p, i]
            for j in range(ow_):
                orow[j] = xrow[ix[j]]


@njit(cache=True)
def _repeat2d_kernel(x, out, w, ry, rx):
    """Nearest upsampling by whole factors, out[p, i, j] = x[p, i // ry, j // rx] (torch's Upsample(scale_factor=r),
    YOLO's necks): each input row is widened once into its first output row, then copied into the other ry - 1 (the
    index-table gather of _nearest2d_kernel reads and writes every output row). x: (planes * h * w,) and out:
    (planes * h * ry * w * rx,), both flat (rows of 10-40 values cost a slice pair each otherwise); w >= 1.
    rx = 2 runs as _pairs_kernel."""
    ow = w * rx
    for q in range(x.shape[0] // w):
        s = x[q * w: q * w + w]
        d = out[q * ry * ow: q * ry * ow + ry * ow]
        for k in range(w):
            v = s[k]
            for t in range(rx):
                d[k * rx + t] = v
        _copy_rows(d, ow, ry)


@njit(cache=True)
def _pairs_kernel(x, out, w, ry):
    """_repeat2d_kernel at rx = 2 on the bits: x (planes * h * w,) uint32 (the float32 input's bits), out
    (planes * h * ry * w,) uint64 (the float32 output's column pairs): out[k] = x[k] in both halves, unit-stride
    loads and stores that LLVM vectorises (the two float32 stores a value did not: 0.41 ns an output value on
    nudenet's 256x10x10 upsampling, this ~0.2; benchmarks/resize_nearest.py)."""
    for q in range(x.shape[0] // w):
        s = x[q * w: q * w + w]
        d = out[q * ry * w: q * ry * w + ry * w]
        for k in range(w):
            d[k] = np.uint64(s[k]) * np.uint64(0x100000001)
        _copy_rows(d, w, ry)


@njit(cache=True, inline="always")
def _copy_rows(d, n, r):
    """d[t * n: (t + 1) * n] = d[:n] for t = 1 .. r - 1."""
    for t in range(1, r):
        dt = d[t * n: t * n + n]
        for j in range(n):
            dt[j] = d[j]


@njit(cache=True)
def _linear2d_kernel(x, out, y0, y1, wy0, wy1, x0, x1, wx0, wx1):
    planes = x.shape[0]
    oh_, ow_ = out.shape[1], out.shape[2]
    for p in range(planes):
        for i in range(oh_):
            top = x[p, y0[i]]
            bottom = x[p, y1[i]]
            a = wy0[i]
            b = wy1[i]
            orow = out[p, i]
            for j in range(ow_):
                c0 = x0[j]
                c1 = x1[j]
                orow[j] = (a * (wx0[j] * top[c0] + wx1[j] * top[c1])
                           + b * (wx0[j] * bottom[c0] + wx1[j] * bottom[c1]))


# ---- attributes and output shape ----

def _params(input_shapes, attrs, consts):
    """Validated (mode, coordinate mode, nearest mode, per-axis float32 scales, output shape)."""
    shape = tuple(input_shapes[0])
    rank = len(shape)
    # Resize-10 has two inputs (X, scales), asymmetric coordinates and its own nearest rounding; from opset 11 on,
    # input 1 is the roi, which only tf_crop_and_resize reads, so two inputs cannot be a valid later Resize
    opset10 = len(input_shapes) == 2 and input_shapes[1] is not None
    mode = attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        if mode == "cubic":
            raise UnsupportedError("mode 'cubic' is not supported (nearest and linear are)")
        raise FormatError(f"attribute 'mode' must be nearest, linear or cubic, found {mode!r}")
    if opset10:
        coord, nearest = "asymmetric", "opset10"
    else:
        coord = attrs.get("coordinate_transformation_mode", "half_pixel")
        if coord not in _COORD_MODES:
            if coord == "tf_crop_and_resize":
                raise UnsupportedError("coordinate_transformation_mode 'tf_crop_and_resize' is not supported")
            raise FormatError(f"attribute 'coordinate_transformation_mode' must be one of {list(_COORD_MODES)}, "
                              f"found {coord!r}")
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
        if nearest not in _NEAREST_MODES:
            raise FormatError(f"attribute 'nearest_mode' must be one of {list(_NEAREST_MODES)}, found {nearest!r}")
    axes = int_list(attrs, "axes", None)
    axes = list(range(rank)) if axes is None else [normalize_axis(a, rank, "axes") for a in axes]
    if len(set(axes)) != len(axes):
        raise FormatError(f"attribute 'axes' {attrs.get('axes')} repeats an axis")
    policy = attrs.get("keep_aspect_ratio_policy", "stretch")
    if policy not in ("stretch", "not_larger", "not_smaller"):
        raise FormatError(f"attribute 'keep_aspect_ratio_policy' must be stretch, not_larger or not_smaller, "
                          f"found {policy!r}")

    scales_in = _const(input_shapes, consts, 1 if opset10 else 2, "scales")
    sizes_in = None if opset10 else _const(input_shapes, consts, 3, "sizes")
    if (scales_in is None) == (sizes_in is None):
        raise FormatError("exactly one of 'scales' (input 2) and 'sizes' (input 3) must be given, non-empty")
    scales = [_F32(1.0)] * rank
    out = list(shape)
    if scales_in is not None:
        if scales_in.dtype.kind != "f" or scales_in.size != len(axes):
            raise FormatError(f"'scales' must hold {len(axes)} floats (one per resized axis), found dtype "
                              f"{scales_in.dtype} shape {scales_in.shape}")
        for a, s in zip(axes, scales_in.astype(np.float32)):
            if not s > 0:
                raise FormatError(f"scales {scales_in.tolist()} must be > 0")
            scales[a] = _F32(s)
            out[a] = int(_F32(shape[a]) * s)  # float32 product truncated, as onnxruntime computes it
    else:
        if sizes_in.dtype.kind not in "iu" or sizes_in.size != len(axes):
            raise FormatError(f"'sizes' must hold {len(axes)} integers (one per resized axis), found dtype "
                              f"{sizes_in.dtype} shape {sizes_in.shape}")
        sizes = [int(v) for v in sizes_in]
        if any(v < 1 for v in sizes):
            raise FormatError(f"sizes {sizes} must be >= 1")
        if any(shape[a] == 0 for a in axes):
            raise FormatError(f"cannot resize an empty axis of {shape}")
        if policy == "stretch":
            for a, v in zip(axes, sizes):
                scales[a] = _F32(v) / _F32(shape[a])
                out[a] = v
        else:
            ratios = [_F32(v) / _F32(shape[a]) for a, v in zip(axes, sizes)]
            s = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                scales[a] = s
                out[a] = int(math.floor(float(s) * shape[a] + 0.5))  # round half up
    if any(d < 1 for d in out) and math.prod(shape):
        raise FormatError(f"scales give an empty output {tuple(out)} for input {shape}")
    antialias = int_attr(attrs, "antialias", 0, (0, 1))
    if antialias and mode == "linear" and any(s < 1 for s in scales):
        raise UnsupportedError("antialias = 1 when downsampling is not supported")
    return mode, coord, nearest, scales, tuple(out)


def _const(input_shapes, consts, i, role):
    if i >= len(input_shapes) or input_shapes[i] is None or math.prod(input_shapes[i]) == 0:
        return None
    value = consts[i] if i < len(consts) else None
    if value is None:
        raise UnsupportedError(f"input {i} ('{role}') must be a constant; computed {role} are not supported "
                               f"(pack with --input-shape so that shape arithmetic is folded)")
    return np.asarray(value).reshape(-1)


def _infer_resize(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 4)
    if not input_shapes[0]:
        raise FormatError("input 0 must have rank >= 1")
    return [_params(input_shapes, attrs, consts)[4]]


# ---- coordinate tables ----

def _source_coords(coord: str, n_in: int, n_out: int, scale) -> np.ndarray:
    """The input coordinate of every output index along one axis, in float32 as onnxruntime computes it."""
    x = np.arange(n_out, dtype=np.float32)
    half = _F32(0.5)
    if coord == "asymmetric":
        return x / scale
    if coord == "half_pixel":
        return (x + half) / scale - half
    if coord == "pytorch_half_pixel":
        return (x + half) / scale - half if n_out > 1 else np.zeros(n_out, np.float32)
    if coord in ("tf_half_pixel_for_nearest", "tf_half_pixel_for_nn"):
        return (x + half) / scale
    if coord == "align_corners":
        if n_out == 1:
            return np.zeros(1, np.float32)
        return x * _F32(n_in - 1) / _F32(n_out - 1)
    # half_pixel_symmetric: half_pixel, centred on the input when the output size was rounded; the offset in
    # float32, the rest in float64 (onnxruntime's C++ has double literals there), which decides floor and ceil
    adjustment = _F32(n_out) / (scale * _F32(n_in))
    center = _F32(n_in) / _F32(2)
    offset = center * (_F32(1) - adjustment)
    xd = np.arange(n_out, dtype=np.float64)
    return (np.float64(offset) + (xd + 0.5) / np.float64(scale) - 0.5).astype(np.float32)


def _nearest_index(c: np.ndarray, mode: str, n_in: int, downsampling: bool) -> np.ndarray:
    if mode == "floor":
        i = np.floor(c)
    elif mode == "ceil":
        i = np.ceil(c)
    elif mode == "opset10":
        i = np.ceil(c) if downsampling else np.trunc(c)
    else:
        away = np.sign(c) * np.floor(np.abs(c) + _F32(0.5))  # C's round(): halves away from zero
        if mode == "round_prefer_floor":
            i = np.where(c == np.trunc(c) + _F32(0.5), np.floor(c), away)
        else:
            i = away
    return np.clip(i, 0, n_in - 1).astype(np.int64)


def _linear_table(c: np.ndarray, n_in: int):
    c = np.clip(c, _F32(0), _F32(n_in - 1))
    i0 = np.minimum(c.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = np.abs(c - i0.astype(np.float32))  # weight of i1
    w0 = np.abs(c - i1.astype(np.float32))  # weight of i0
    same = i0 == i1
    w0[same] = 0.5
    w1[same] = 0.5
    return i0, i1, w0.astype(np.float32), w1.astype(np.float32)


def _tables(shape, attrs, consts_shapes, consts):
    mode, coord, nearest, scales, out = _params(consts_shapes, attrs, consts)
    tables = {}
    for a, (n_in, n_out, s) in enumerate(zip(shape, out, scales)):
        if n_in == n_out and s == 1:
            continue  # the identity under every coordinate mode
        c = _source_coords(coord, n_in, n_out, s)
        if mode == "nearest":
            tables[a] = _nearest_index(c, nearest, n_in, bool(s < 1))
        else:
            tables[a] = _linear_table(c, n_in)
    return mode, out, tables


def _identity_table(mode, n):
    idx = np.arange(n, dtype=np.int64)
    if mode == "nearest":
        return idx
    return idx, idx, np.ones(n, np.float32), np.zeros(n, np.float32)


def _whole_factor(table, n_in: int) -> int:
    """r when the nearest index table reads every input index r times in order (table[i] == i // r; None: the
    identity, r = 1), else 0."""
    if table is None:
        return 1
    n = table.shape[0]
    if n_in < 1 or n % n_in:
        return 0
    r = n // n_in
    return r if np.array_equal(table, np.arange(n, dtype=np.int64) // r) else 0


def _repeat_factors(shape, mode, tables):
    """(ry, rx) when a nearest Resize of an input of this shape is whole-factor upsampling of the last two axes
    (_repeat2d_kernel), else None."""
    rank = len(shape)
    if mode != "nearest" or rank < 2 or not tables or any(a < rank - 2 for a in tables) or 0 in shape:
        return None
    ry, rx = _whole_factor(tables.get(rank - 2), shape[-2]), _whole_factor(tables.get(rank - 1), shape[-1])
    return (ry, rx) if ry and rx else None


def _repeat_bind(x, out, mode, tables):
    """(kernel, args) of a whole-factor nearest upsampling of float32 x into out (_repeat2d_kernel / _pairs_kernel),
    or None for any other Resize."""
    rep = _repeat_factors(x.shape, mode, tables)
    if rep is None or x.dtype != np.float32 or out.dtype != np.float32 or not x.flags.c_contiguous \
            or not out.flags.c_contiguous:
        return None
    ry, rx = rep
    if rx == 2:
        return _pairs_kernel, (x.reshape(-1).view(np.uint32), out.reshape(-1).view(np.uint64), x.shape[-1], ry)
    return _repeat2d_kernel, (x.reshape(-1), out.reshape(-1), x.shape[-1], ry, rx)


def _tables_of(inputs, attrs):
    return _tables(inputs[0].shape, attrs, [None if a is None else a.shape for a in inputs], inputs)


def _run_resize(inputs, attrs, outputs):
    _resize(inputs[0], outputs[0], *_tables_of(inputs, attrs))


def _bind_resize(inputs, attrs, outputs):
    """Bound once per plan: the scales / sizes are constants (infer() refuses others), so the tables are made here
    once."""
    x, out = inputs[0], outputs[0]
    mode, out_shape, tables = _tables_of(inputs, attrs)
    rep = _repeat_bind(x, out, mode, tables)
    return rep if rep is not None else (_resize, (x, out, mode, out_shape, tables))


def _resize(x, out, mode, out_shape, tables):
    rank = x.ndim
    if not tables:
        np.copyto(out, x)
        return
    rep = _repeat_bind(x, out, mode, tables)
    if rep is not None:
        rep[0](*rep[1])
        return
    if all(a >= rank - 2 for a in tables):
        # the common case (N, C, H, W): planes of the last two axes
        h_in = x.shape[-2] if rank >= 2 else 1
        h_out = out_shape[-2] if rank >= 2 else 1
        planes = math.prod(x.shape[:-2]) if rank >= 2 else 1
        x3 = np.ascontiguousarray(x, dtype=np.float32).reshape(planes, h_in, x.shape[-1])
        o3 = out.reshape(planes, h_out, out_shape[-1])
        ty = tables.get(rank - 2) if rank >= 2 else None
        ty = ty if ty is not None else _identity_table(mode, h_in)
        tx = tables.get(rank - 1)
        tx = tx if tx is not None else _identity_table(mode, x.shape[-1])
        if mode == "nearest":
            _nearest2d_kernel(x3, o3, ty, tx)
        else:
            _linear2d_kernel(x3, o3, *ty, *tx)
        return
    cur = np.asarray(x, dtype=np.float32)
    for a, t in sorted(tables.items()):
        if mode == "nearest":
            cur = np.take(cur, t, axis=a)
        else:
            i0, i1, w0, w1 = t
            view = (1,) * a + (-1,) + (1,) * (rank - a - 1)
            cur = np.take(cur, i0, axis=a) * w0.reshape(view) + np.take(cur, i1, axis=a) * w1.reshape(view)
    np.copyto(out, cur)


OPS = (OpDef("Resize", _infer_resize, _run_resize, bind=_bind_resize),)
