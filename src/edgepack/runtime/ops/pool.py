"""Pooling ops: MaxPool and AveragePool (1-D and 2-D; pads, strides, dilations, ceil_mode, auto_pad,
count_include_pad), GlobalAveragePool and GlobalMaxPool (any rank >= 3), as Numba kernels over NCHW buffers (1-D
runs as H = 1).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import OpDef, check_arity, int_attr, int_list
from edgepack.runtime.ops.simd_phases import split_row

_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


# Kernels see x as (planes, H, W) with planes = N * C. They walk the window tap by tap and sweep each tap over a
# whole output row: the inner loop then has no bounds test (the valid ow range is computed per tap); measured up
# to 4x faster than testing every tap of every window on 56x56 planes, on par on tiny ones.

@njit(cache=True)
def _maxpool2d_kernel(x, out, row, kh, kw, sh, sw, dh, dw, ph, pw):
    """MaxPool as two 1-D passes (a max over a rectangle is the max over its rows of the max over its columns): per
    output row, tp <- the max of its kh input rows, then u <- the max of the kw taps at every column, then the output
    row <- every sw-th value of u. kh * W + kw * OW * sw comparisons instead of kh * kw * OW (SPP's 13x13 window on a
    13x13 plane: 7x fewer). row: scratch of _maxpool_row_floats: tp (the padded row: -inf in the padding, written
    once, so no tap needs a bounds test) and u. Every loop runs unit-stride over slices taken from 0 with an explicit
    `v > acc` select (numba's max() and a run-time stride each kept LLVM from vectorising: 3x3 stride 2 on 32 planes
    of 46x46 went 59 -> 39 us). Bit for bit the window-by-window max: each comparison keeps its accumulator unless
    the new value is greater and the accumulators start at -inf, so a NaN never wins, as before."""
    planes, h_, w_ = x.shape
    oh_, ow_ = out.shape[1], out.shape[2]
    if ow_ == 0:
        return
    nu = (ow_ - 1) * sw + 1  # the columns u is needed at
    ext = nu + (kw - 1) * dw  # the padded columns the windows read: tp[i] holds input column i - pw
    tp, u = row[:ext], row[ext: ext + nu]
    c0, c1 = min(pw, ext), min(ext, pw + w_)  # tp[c0:c1] holds input columns; the rest is padding
    ninf = np.float32(-np.inf)
    for i in range(c0):
        tp[i] = ninf
    for i in range(max(c0, c1), ext):
        tp[i] = ninf
    tv = tp[c0: max(c0, c1)]
    nv = tv.shape[0]
    for p in range(planes):
        for oh in range(oh_):
            orow = out[p, oh]
            h0 = oh * sh - ph
            any_row = False
            for i in range(kh):
                h = h0 + i * dh
                if h < 0 or h >= h_:
                    continue
                xrow = x[p, h]
                if not any_row:
                    for k in range(nv):
                        v = xrow[k]
                        tv[k] = v if v > ninf else ninf
                    any_row = True
                else:
                    for k in range(nv):
                        v = xrow[k]
                        tv[k] = v if v > tv[k] else tv[k]
            if not any_row:  # padding never wins; a window holding no input element (dilation) stays -inf
                for k in range(ow_):
                    orow[k] = ninf
                continue
            for k in range(nu):
                u[k] = tp[k]
            for j in range(1, kw):
                s = tp[j * dw: j * dw + nu]
                for k in range(nu):
                    v = s[k]
                    u[k] = v if v > u[k] else u[k]
            if sw == 1:
                for k in range(ow_):
                    orow[k] = u[k]
            else:
                for k in range(ow_):
                    orow[k] = u[k * sw]


@njit(cache=True)
def _maxpool_s1_kernel(x, out, buf, kh, kw, ph, pw):
    """MaxPool with strides and dilations 1 (SPP / SPPF's 5x5, 9x9, 13x13 windows on 10x10 to 20x20 planes), each
    pass ONE loop over a whole plane instead of one per output row: the plane is copied into t (OH + kh - 1 rows of
    pitch OW + kw - 1, -inf around it, written once per call), hm <- the max of the kw taps along the rows at every
    position of t, vm <- the max of the kh taps down the columns of hm, and the output rows are vm's rows (the
    columns past OW computed and dropped). buf: _maxpool_s1_floats. Bit for bit _maxpool2d_kernel: every value is
    compared as `v > acc` against an accumulator that starts at -inf, so a NaN never wins."""
    planes, h_, w_ = x.shape
    oh_, ow_ = out.shape[1], out.shape[2]
    if oh_ == 0 or ow_ == 0:
        return
    hp, wp = oh_ + kh - 1, ow_ + kw - 1
    nt, nv = hp * wp, oh_ * wp
    nh = nt - (kw - 1)  # positions of t whose kw taps are all inside t
    t, hm, vm = buf[:nt], buf[nt: nt + nh], buf[nt + nh: nt + nh + nv]
    ninf = np.float32(-np.inf)
    r1, c1 = min(hp, ph + h_), min(wp, pw + w_)  # t's rows / columns [ph, r1) x [pw, c1) hold the input
    for i in range(nt):
        t[i] = ninf
    for p in range(planes):
        for r in range(ph, r1):
            src = x[p, r - ph]
            d = t[r * wp + pw: r * wp + c1]
            for k in range(c1 - pw):
                v = src[k]
                d[k] = v if v > ninf else ninf  # NaN -> -inf: it never wins
        for i in range(nh):
            hm[i] = t[i]
        for j in range(1, kw):
            s = t[j: j + nh]
            for i in range(nh):
                v = s[i]
                hm[i] = v if v > hm[i] else hm[i]
        for i in range(nv):
            vm[i] = hm[i]
        for r in range(1, kh):
            s = hm[r * wp: r * wp + nv]
            for i in range(nv):
                v = s[i]
                vm[i] = v if v > vm[i] else vm[i]
        for oy in range(oh_):
            a = vm[oy * wp: oy * wp + ow_]
            o = out[p, oy]
            for k in range(ow_):
                o[k] = a[k]


@njit(cache=True)
def _maxpool_s2_kernel(x, out, buf, kh, kw, ph, pw, qh, qw):
    """MaxPool with strides 2 and dilations 1 (mtcnn's 3x3 / 2 after its convolutions), each tap ONE loop over a
    whole plane, as the strided convolutions do it (conv.py _PHASED): the padded plane is held as its four phases
    (rows py, py + 2, ... and columns px, px + 2, ... of it: qh x qw each, _maxpool_s2_phases; -inf around the
    input, written once per call; each input row split into its two column phases by vector shuffles,
    simd_phases.py), where every tap's windows are one contiguous run of the "wide" output (row pitch qw, the
    columns past OW computed and dropped); acc <- -inf, then every tap folded in column by column, top to bottom,
    and the output rows are acc's rows. buf: _maxpool_s2_floats. Bit for bit _maxpool2d_kernel: each tap replaces
    the accumulator only when greater (a NaN never wins), in that kernel's order (the first greatest value of the
    first column that holds one: -0 and +0 as it picks them)."""
    planes, h_, w_ = x.shape
    oh_, ow_ = out.shape[1], out.shape[2]
    if oh_ == 0 or ow_ == 0:
        return
    qp = qh * qw
    n = (oh_ - 1) * qw + ow_
    ph_buf, acc = buf[: 4 * qp], buf[4 * qp: 4 * qp + n]
    ninf = np.float32(-np.inf)
    for i in range(4 * qp):
        ph_buf[i] = ninf
    for p in range(planes):
        for y in range(h_):
            r = y + ph
            r0 = ((r & 1) * 2 * qh + (r >> 1)) * qw  # the row in column phase 0; phase 1 is qp further
            split_row(x[p, y], w_, pw, ph_buf, r0, r0 + qp)
        for i in range(n):
            acc[i] = ninf
        for kx in range(kw):
            for ky in range(kh):
                o = ((ky & 1) * 2 + (kx & 1)) * qp + (ky >> 1) * qw + (kx >> 1)
                t = ph_buf[o: o + n]
                for i in range(n):
                    v = t[i]
                    acc[i] = v if v > acc[i] else acc[i]
        for oy in range(oh_):
            a = acc[oy * qw: oy * qw + ow_]
            orow = out[p, oy]
            for k in range(ow_):
                orow[k] = a[k]


@njit(cache=True, error_model="numpy")  # a division never raises inside the kernel
def _avgpool2d_kernel(x, out, row, kh, kw, sh, sw, dh, dw, ph, pw, h_lim, w_lim, include_pad):
    """AveragePool in MaxPool's two passes (_maxpool2d_kernel): per output row, tp <- the sum of its kh input rows
    (the padded row: zeros in the padding, written once), u <- the sum of the kw taps at every column, then every
    sw-th value of u over its window's count; all loops unit-stride over slices from 0 (the tap-by-tap sweep with a
    run-time stride was scalar: PP-OCRv4 rec's 3x2 stride-(3, 2) pool of 480 x 3 x 80 took ~190 us). row: scratch of
    _avgpool_row_floats. The count: the window's input elements, or with include_pad its elements inside the padded
    input (h_lim = H + end pad: with ceil_mode a window may hang past it; those taps never count)."""
    planes, h_, w_ = x.shape
    oh_, ow_ = out.shape[1], out.shape[2]
    if ow_ == 0:
        return
    nu = (ow_ - 1) * sw + 1
    ext = nu + (kw - 1) * dw  # tp[i] holds input column i - pw
    tp, u = row[:ext], row[ext: ext + nu]
    cols_in, cols_padded = row[ext + nu: ext + nu + ow_], row[ext + nu + ow_: ext + nu + 2 * ow_]
    for k in range(ow_):  # the columns of each window inside the input / the padded input
        w0 = k * sw - pw
        ci = 0
        cp = 0
        for j in range(kw):
            w = w0 + j * dw
            if w < w_lim:
                cp += 1
                if w >= 0 and w < w_:
                    ci += 1
        cols_in[k] = ci
        cols_padded[k] = cp
    c0, c1 = min(pw, ext), min(ext, pw + w_)
    for i in range(c0):
        tp[i] = 0.0
    for i in range(max(c0, c1), ext):
        tp[i] = 0.0
    tv = tp[c0: max(c0, c1)]
    nv = tv.shape[0]
    for p in range(planes):
        for oh in range(oh_):
            orow = out[p, oh]
            h0 = oh * sh - ph
            rows_in = 0
            rows_padded = 0
            for i in range(kh):
                h = h0 + i * dh
                if h < h_lim:
                    rows_padded += 1
                if h < 0 or h >= h_:
                    continue
                xrow = x[p, h]
                if rows_in == 0:
                    for k in range(nv):
                        tv[k] = xrow[k]
                else:
                    for k in range(nv):
                        tv[k] = tv[k] + xrow[k]
                rows_in += 1
            if rows_in == 0:  # no input element: 0 (as 0 / count before)
                for k in range(ow_):
                    orow[k] = 0.0
                continue
            for k in range(nu):
                u[k] = tp[k]
            for j in range(1, kw):
                s = tp[j * dw: j * dw + nu]
                for k in range(nu):
                    u[k] = u[k] + s[k]
            cnt = cols_padded if include_pad else cols_in
            rows = np.float64(rows_padded if include_pad else rows_in)
            for k in range(ow_):
                d = rows * cnt[k]
                orow[k] = u[k * sw] / d if d > 0 else 0.0


@njit(cache=True)
def _pool2x2_kernel(x, out, is_max):
    # kernel 2x2, stride 2, no padding (LeNet, VGG): fixed taps let LLVM vectorise, ~10x the general kernel
    planes = x.shape[0]
    oh_, ow_ = out.shape[1], out.shape[2]
    for p in range(planes):
        for oh in range(oh_):
            top = x[p, 2 * oh]
            bottom = x[p, 2 * oh + 1]
            orow = out[p, oh]
            if is_max:
                for ow in range(ow_):
                    orow[ow] = max(max(top[2 * ow], top[2 * ow + 1]), max(bottom[2 * ow], bottom[2 * ow + 1]))
            else:
                for ow in range(ow_):
                    orow[ow] = ((top[2 * ow] + top[2 * ow + 1]) + (bottom[2 * ow] + bottom[2 * ow + 1])) * 0.25


# a division never raises inside the kernel; the float64 sum may be reassociated: LLVM then vectorises it (partial
# sums in SIMD lanes, still float64: 8-11x faster on 7x7 to 56x56 planes, PP-LCNet's 2x96: 26 -> 3 us for 200 rows)
@njit(cache=True, error_model="numpy", fastmath={"reassoc"})
def _mean_rows_kernel(x, out):
    rows, cols = x.shape
    for r in range(rows):
        acc = 0.0
        for c in range(cols):
            acc += x[r, c]
        out[r] = acc / cols


@njit(cache=True)
def _max_rows_kernel(x, out):
    rows, cols = x.shape
    for r in range(rows):
        acc = -np.inf
        for c in range(cols):
            acc = max(acc, x[r, c])  # as the MaxPool kernels: a NaN never wins (onnxruntime skips it too)
        out[r] = acc


def _geometry(shape, attrs):
    """Validated pooling geometry as 2-D parameters:
    (kh, kw, sh, sw, dh, dw, ph_begin, pw_begin, ph_end, pw_end, out_h, out_w)."""
    shape = tuple(shape)
    if len(shape) < 3:
        raise FormatError(f"input must be (N, C, spatial...), found shape {shape}")
    nsp = len(shape) - 2
    if nsp > 2:
        raise UnsupportedError(f"only 1-D and 2-D pooling is supported, found {nsp}-D input {shape}")
    kernel = int_list(attrs, "kernel_shape", None, nsp, 1)
    if kernel is None:
        raise FormatError("attribute 'kernel_shape' is required")
    strides = int_list(attrs, "strides", [1] * nsp, nsp, 1)
    dilations = int_list(attrs, "dilations", [1] * nsp, nsp, 1)
    pads = int_list(attrs, "pads", [0] * 2 * nsp, 2 * nsp, 0)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        raise FormatError(f"attribute 'auto_pad' must be one of {list(_AUTO_PADS)}, found {auto_pad!r}")
    ceil_mode = int_attr(attrs, "ceil_mode", 0, (0, 1))

    begins, ends, outs = [], [], []
    for i in range(nsp):
        n, k, s = shape[2 + i], kernel[i], strides[i]
        k_eff = (k - 1) * dilations[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-n // s)
            total = max(0, (out - 1) * s + k_eff - n)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            end = total - begin
        else:
            begin, end = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nsp])
            if begin >= k_eff or end >= k_eff:
                raise FormatError(f"pads {pads} must be smaller than the (dilated) kernel {k_eff} on spatial axis {i}")
            span = n + begin + end - k_eff
            if span < 0:
                raise FormatError(f"kernel extent {k_eff} exceeds the padded input {n + begin + end} "
                                  f"on spatial axis {i} (input shape {shape})")
            if ceil_mode:
                out = -(-span // s) + 1
                # a last window starting inside the end padding would cover padding only: ONNX drops it
                if (out - 1) * s >= n + begin:
                    out -= 1
            else:
                out = span // s + 1
        begins.append(begin)
        ends.append(end)
        outs.append(out)
    if nsp == 1:
        return (1, kernel[0], 1, strides[0], 1, dilations[0], 0, begins[0], 0, ends[0], 1, outs[0])
    return (kernel[0], kernel[1], strides[0], strides[1], dilations[0], dilations[1],
            begins[0], begins[1], ends[0], ends[1], outs[0], outs[1])


def _planes(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) or (N, C, W) as a (N * C, H, W) view (a copy only if the input is not contiguous)."""
    a = np.ascontiguousarray(a)
    h = a.shape[2] if a.ndim == 4 else 1
    return a.reshape(a.shape[0] * a.shape[1], h, a.shape[-1])


def _is_plain_2x2(g, x: np.ndarray) -> bool:
    kh, kw, sh, sw, dh, dw, ph, pw, ph_end, pw_end, oh, ow = g
    # the size test excludes ceil_mode's partial last window
    return (kh == kw == sh == sw == 2 and dh == dw == 1 and ph == pw == ph_end == pw_end == 0
            and 2 * oh <= x.shape[1] and 2 * ow <= x.shape[2])


def _infer_pool(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    shape = tuple(input_shapes[0])
    g = _geometry(shape, attrs)
    out_spatial = (g[11],) if len(shape) == 3 else (g[10], g[11])
    return [shape[:2] + out_spatial]


def _infer_maxpool(input_shapes, attrs, consts):
    int_attr(attrs, "storage_order", 0, (0, 1))  # only affects the Indices output, which is not computed
    return _infer_pool(input_shapes, attrs, consts)


def _infer_avgpool(input_shapes, attrs, consts):
    int_attr(attrs, "count_include_pad", 0, (0, 1))
    return _infer_pool(input_shapes, attrs, consts)


def _maxpool_row_floats(g) -> int:
    """Scratch floats of _maxpool2d_kernel for geometry g (_geometry): the padded row the windows read and u."""
    kw, sw, dw, ow = g[1], g[3], g[5], g[11]
    nu = (max(ow, 1) - 1) * sw + 1
    return 2 * nu + (kw - 1) * dw


def _is_stride1(g) -> bool:
    """Strides and dilations 1, 2-D: _maxpool_s1_kernel's case."""
    return g[2] == g[3] == g[4] == g[5] == 1


def _maxpool_s1_floats(g) -> int:
    """Scratch floats of _maxpool_s1_kernel: the padded plane t, hm and vm (see there)."""
    kh, kw, oh, ow = g[0], g[1], max(g[10], 1), max(g[11], 1)
    hp, wp = oh + kh - 1, ow + kw - 1
    return 2 * hp * wp - (kw - 1) + oh * wp


def _is_stride2(g) -> bool:
    """Strides 2, dilations 1, 2-D: _maxpool_s2_kernel's case."""
    return g[2] == g[3] == 2 and g[4] == g[5] == 1 and g[0] > 1


def _maxpool_s2_phases(g, h: int, w: int) -> tuple[int, int]:
    """(qh, qw) of _maxpool_s2_kernel's phases: room for every window (the output plus half the kernel) and for
    every input value with its start pads."""
    kh, kw, ph, pw, oh, ow = g[0], g[1], g[6], g[7], max(g[10], 1), max(g[11], 1)
    return max(oh + (kh - 1) // 2, (h + ph + 1) // 2), max(ow + (kw - 1) // 2, (w + pw + 1) // 2)


def _maxpool_s2_floats(g, h: int, w: int) -> int:
    """Scratch floats of _maxpool_s2_kernel: the four phases and the wide accumulator (see there)."""
    qh, qw = _maxpool_s2_phases(g, h, w)
    oh, ow = max(g[10], 1), max(g[11], 1)
    return 4 * qh * qw + (oh - 1) * qw + ow


def _maxpool_scratch_bytes(in_shapes, attrs) -> int:
    g = _geometry(tuple(in_shapes[0]), attrs)
    if _is_stride1(g):
        return 4 * _maxpool_s1_floats(g)
    shape = tuple(in_shapes[0])
    return 4 * (_maxpool_s2_floats(g, shape[-2], shape[-1]) if _is_stride2(g) else _maxpool_row_floats(g))


def _bind_maxpool(inputs, attrs, outputs, scratch=None):
    """The kernel and its arguments over these (C-contiguous) arrays; scratch: the plan's shared scratch (at least
    _maxpool_scratch_bytes), or None to allocate one row (the plain runner)."""
    x, out = inputs[0], outputs[0]
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        return None
    g = _geometry(x.shape, attrs)
    x, out = _planes(x), _planes(out)
    if _is_plain_2x2(g, x):
        return _pool2x2_kernel, (x, out, True)
    if _is_stride1(g):
        need = 4 * _maxpool_s1_floats(g)
        buf = np.empty(need // 4, np.float32) if scratch is None else scratch[:need].view(np.float32)
        return _maxpool_s1_kernel, (x, out, buf, g[0], g[1], g[6], g[7])
    if _is_stride2(g):
        need = 4 * _maxpool_s2_floats(g, x.shape[1], x.shape[2])
        buf = np.empty(need // 4, np.float32) if scratch is None else scratch[:need].view(np.float32)
        return _maxpool_s2_kernel, (x, out, buf, g[0], g[1], g[6], g[7]) + _maxpool_s2_phases(g, x.shape[1],
                                                                                                 x.shape[2])
    need = 4 * _maxpool_row_floats(g)
    row = np.empty(need // 4, np.float32) if scratch is None else scratch[:need].view(np.float32)
    kh, kw, sh, sw, dh, dw, ph, pw = g[:8]
    return _maxpool2d_kernel, (x, out, row, kh, kw, sh, sw, dh, dw, ph, pw)


def _run_maxpool(inputs, attrs, outputs):
    out = outputs[0]
    dst = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    fn, args = _bind_maxpool([np.ascontiguousarray(inputs[0])], attrs, [dst])
    fn(*args)
    if dst is not out:
        out[...] = dst



def _avgpool_row_floats(g) -> int:
    """Scratch floats of _avgpool2d_kernel for geometry g: MaxPool's padded row and window sums, and two column
    counts per output column."""
    return _maxpool_row_floats(g) + 2 * max(g[11], 1)


def _avgpool_scratch_bytes(in_shapes, attrs) -> int:
    return 4 * _avgpool_row_floats(_geometry(tuple(in_shapes[0]), attrs))


def _bind_avgpool(inputs, attrs, outputs, scratch=None):
    """As _bind_maxpool: the kernel and its arguments, scratch from the plan (or allocated when None)."""
    x, out = inputs[0], outputs[0]
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        return None
    g = _geometry(x.shape, attrs)
    x, out = _planes(x), _planes(out)
    if _is_plain_2x2(g, x):  # no padding, so count_include_pad cannot matter
        return _pool2x2_kernel, (x, out, False)
    need = 4 * _avgpool_row_floats(g)
    row = np.empty(need // 4, np.float32) if scratch is None else scratch[:need].view(np.float32)
    kh, kw, sh, sw, dh, dw, ph, pw, ph_end, pw_end = g[:10]
    return _avgpool2d_kernel, (x, out, row, kh, kw, sh, sw, dh, dw, ph, pw, x.shape[1] + ph_end, x.shape[2] + pw_end,
                               bool(attrs.get("count_include_pad", 0)))


def _run_avgpool(inputs, attrs, outputs):
    out = outputs[0]
    dst = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    fn, args = _bind_avgpool([np.ascontiguousarray(inputs[0])], attrs, [dst])
    fn(*args)
    if dst is not out:
        out[...] = dst



def _infer_global_pool(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    shape = tuple(input_shapes[0])
    if len(shape) < 3:
        raise FormatError(f"input must be (N, C, spatial...), found shape {shape}")
    if math.prod(shape[2:]) == 0:
        raise FormatError(f"input has an empty spatial extent, shape {shape}")
    return [shape[:2] + (1,) * (len(shape) - 2)]


def _global_op(kernel) -> dict:
    """run and bind of a global pool over (N * C, spatial) rows with `kernel`."""
    def run(inputs, attrs, outputs):
        x = np.ascontiguousarray(inputs[0])
        rows = x.shape[0] * x.shape[1]
        kernel(x.reshape(rows, math.prod(x.shape[2:])), outputs[0].reshape(rows))

    def bind(inputs, attrs, outputs):
        x, out = inputs[0], outputs[0]
        if not (x.flags.c_contiguous and out.flags.c_contiguous):
            return None
        rows = x.shape[0] * x.shape[1]
        return kernel, (x.reshape(rows, math.prod(x.shape[2:])), out.reshape(rows))

    return {"run": run, "bind": bind}


# the executor counts scratch_bytes in the plan's shared scratch and hands bind() a view of it
OPS = (
    OpDef("MaxPool", _infer_maxpool, _run_maxpool, bind=_bind_maxpool, scratch_bytes=_maxpool_scratch_bytes),
    OpDef("AveragePool", _infer_avgpool, _run_avgpool, bind=_bind_avgpool, scratch_bytes=_avgpool_scratch_bytes),
    OpDef("GlobalAveragePool", _infer_global_pool, **_global_op(_mean_rows_kernel)),
    OpDef("GlobalMaxPool", _infer_global_pool, **_global_op(_max_rows_kernel)),
)
