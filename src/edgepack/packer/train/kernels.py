"""Numba kernels of the training engine: im2col / col2im for Conv, max and average pooling forward and backward,
over NCHW float arrays (1-D ops run as H = 1). Wrappers check shapes and allocate; the kernels only compute."""
from __future__ import annotations

import numpy as np
from numba import njit

# Geometry of one sliding-window op as a tuple of Python ints:
# (kh, kw, sh, sw, dh, dw, pad_top, pad_left, pad_bottom, pad_right, oh, ow)
Geometry = tuple[int, int, int, int, int, int, int, int, int, int, int, int]


# ------------------------------------------------------------------------------------------------------- kernels

@njit(cache=True)
def _tap_range(off, stride, size, n_out):
    # outputs t in [lo, hi) whose tap t * stride + off lies inside [0, size): no bounds test in the inner loops
    lo = 0 if off >= 0 else (stride - 1 - off) // stride
    last = size - 1 - off
    hi = 0 if last < 0 else min(n_out, last // stride + 1)
    return lo, max(lo, hi)


@njit(cache=True)
def _im2col_kernel(x, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, out):
    # out[(c * kh + i) * kw + j, (n * oh + y) * ow + z] = x[n, c, y * sh - ph + i * dh, z * sw - pw + j * dw]
    n_, c_, h_, w_ = x.shape
    plane = oh * ow
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                off = j * dw - pw
                lo, hi = _tap_range(off, sw, w_, ow)
                for n in range(n_):
                    for y in range(oh):
                        iy = y * sh - ph + i * dh
                        col = n * plane + y * ow
                        if iy < 0 or iy >= h_:
                            for z in range(ow):
                                out[row, col + z] = 0.0
                            continue
                        for z in range(lo):
                            out[row, col + z] = 0.0
                        for z in range(lo, hi):
                            out[row, col + z] = x[n, c, iy, z * sw + off]
                        for z in range(hi, ow):
                            out[row, col + z] = 0.0
    return 0


@njit(cache=True)
def _col2im_kernel(cols, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, out):
    # The adjoint of _im2col_kernel: every column entry is added back to the input position it was read from.
    n_, c_, h_, w_ = out.shape
    plane = oh * ow
    for n in range(n_):
        for c in range(c_):
            for y in range(h_):
                for z in range(w_):
                    out[n, c, y, z] = 0.0
    for c in range(c_):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                off = j * dw - pw
                lo, hi = _tap_range(off, sw, w_, ow)
                for n in range(n_):
                    for y in range(oh):
                        iy = y * sh - ph + i * dh
                        if iy < 0 or iy >= h_:
                            continue
                        col = n * plane + y * ow
                        for z in range(lo, hi):
                            out[n, c, iy, z * sw + off] += cols[row, col + z]
    return 0


@njit(cache=True)
def _maxpool_kernel(x, kh, kw, sh, sw, dh, dw, ph, pw, out, argmax):
    # argmax holds the flat index iy * W + ix of the winner in its plane (-1: the window saw padding only)
    planes, h_, w_ = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for p in range(planes):
        for y in range(oh):
            y0 = y * sh - ph
            ilo, ihi = _tap_range(y0, dh, h_, kh)
            for z in range(ow):
                z0 = z * sw - pw
                jlo, jhi = _tap_range(z0, dw, w_, kw)
                best = 0.0
                where = -1
                for i in range(ilo, ihi):
                    iy = y0 + i * dh
                    for j in range(jlo, jhi):
                        v = x[p, iy, z0 + j * dw]
                        if where < 0 or v > best:
                            best = v
                            where = iy * w_ + z0 + j * dw
                out[p, y, z] = best
                argmax[p, y, z] = where
    return 0


@njit(cache=True)
def _maxpool_inside_kernel(x, kh, kw, sh, sw, out, argmax):
    # Every window lies inside the input (no padding, no dilation): no range arithmetic per window, ~2.5x faster.
    planes, h_, w_ = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for p in range(planes):
        for y in range(oh):
            y0 = y * sh
            for z in range(ow):
                z0 = z * sw
                best = x[p, y0, z0]
                where = y0 * w_ + z0
                for i in range(kh):
                    for j in range(kw):
                        v = x[p, y0 + i, z0 + j]
                        if v > best:
                            best = v
                            where = (y0 + i) * w_ + z0 + j
                out[p, y, z] = best
                argmax[p, y, z] = where
    return 0


@njit(cache=True)
def _maxpool_backward_kernel(grad_out, argmax, out):
    planes, h_, w_ = out.shape
    oh, ow = grad_out.shape[1], grad_out.shape[2]
    for p in range(planes):
        for y in range(h_):
            for z in range(w_):
                out[p, y, z] = 0.0
        for y in range(oh):
            for z in range(ow):
                k = argmax[p, y, z]
                if k >= 0:
                    out[p, k // w_, k % w_] += grad_out[p, y, z]
    return 0


@njit(cache=True)
def _window_count(start, k, d, limit_lo, limit_hi):
    # taps start + t * d (t < k) with limit_lo <= tap < limit_hi
    inside = 0
    for t in range(k):
        v = start + t * d
        if v >= limit_lo and v < limit_hi:
            inside += 1
    return inside


@njit(cache=True)
def _avgpool_divisors_kernel(h_, w_, kh, kw, sh, sw, dh, dw, ph, pw, pb, pr, include_pad, out):
    # Divisor per output position: taps inside the input, or inside the explicitly padded input with
    # count_include_pad; taps past the end padding (ceil_mode's partial windows) never count.
    oh, ow = out.shape
    for y in range(oh):
        y0 = y * sh - ph
        if include_pad:
            rows = _window_count(y0, kh, dh, -ph, h_ + pb)
        else:
            rows = _window_count(y0, kh, dh, 0, h_)
        for z in range(ow):
            z0 = z * sw - pw
            if include_pad:
                cols = _window_count(z0, kw, dw, -pw, w_ + pr)
            else:
                cols = _window_count(z0, kw, dw, 0, w_)
            out[y, z] = rows * cols
    return 0


@njit(cache=True)
def _avgpool_kernel(x, kh, kw, sh, sw, dh, dw, ph, pw, divisors, out):
    planes, h_, w_ = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for p in range(planes):
        for y in range(oh):
            for z in range(ow):
                acc = 0.0
                for i in range(kh):
                    iy = y * sh - ph + i * dh
                    if iy < 0 or iy >= h_:
                        continue
                    for j in range(kw):
                        ix = z * sw - pw + j * dw
                        if ix >= 0 and ix < w_:
                            acc += x[p, iy, ix]
                d = divisors[y, z]
                out[p, y, z] = acc / d if d > 0 else 0.0
    return 0


@njit(cache=True)
def _avgpool_backward_kernel(grad_out, kh, kw, sh, sw, dh, dw, ph, pw, divisors, out):
    planes, h_, w_ = out.shape
    oh, ow = grad_out.shape[1], grad_out.shape[2]
    for p in range(planes):
        for y in range(h_):
            for z in range(w_):
                out[p, y, z] = 0.0
        for y in range(oh):
            for z in range(ow):
                d = divisors[y, z]
                if d <= 0:
                    continue
                g = grad_out[p, y, z] / d
                for i in range(kh):
                    iy = y * sh - ph + i * dh
                    if iy < 0 or iy >= h_:
                        continue
                    for j in range(kw):
                        ix = z * sw - pw + j * dw
                        if ix >= 0 and ix < w_:
                            out[p, iy, ix] += g
    return 0


# ------------------------------------------------------------------------------------------------------ wrappers

def _float_array(a: np.ndarray, what: str, ndim: int) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.dtype not in (np.float32, np.float64) or a.ndim != ndim:
        raise ValueError(f"{what}: expected a float32/float64 array with {ndim} dimensions, "
                         f"found {a.dtype} with shape {a.shape}")
    return a


def im2col(x: np.ndarray, g: Geometry) -> np.ndarray:
    """(N, C, H, W) -> (C * kh * kw, N * oh * ow): the columns a convolution multiplies its weights with."""
    x = _float_array(x, "im2col input", 4)
    kh, kw, sh, sw, dh, dw, ph, pw, _, _, oh, ow = g
    out = np.empty((x.shape[1] * kh * kw, x.shape[0] * oh * ow), dtype=x.dtype)
    _im2col_kernel(x, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, out)
    return out


def col2im(cols: np.ndarray, x_shape: tuple, g: Geometry) -> np.ndarray:
    """The adjoint of im2col: (C * kh * kw, N * oh * ow) columns summed back into an (N, C, H, W) array."""
    cols = _float_array(cols, "col2im columns", 2)
    kh, kw, sh, sw, dh, dw, ph, pw, _, _, oh, ow = g
    n, c = x_shape[0], x_shape[1]
    if cols.shape != (c * kh * kw, n * oh * ow):
        raise ValueError(f"col2im: columns expected shape {(c * kh * kw, n * oh * ow)}, found {cols.shape}")
    out = np.empty(tuple(x_shape), dtype=cols.dtype)
    _col2im_kernel(cols, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, out)
    return out


def _planes(x: np.ndarray, what: str) -> np.ndarray:
    x = _float_array(x, what, 4)
    return x.reshape(x.shape[0] * x.shape[1], x.shape[2], x.shape[3])


def maxpool(x: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling of (N, C, H, W): the output (N, C, oh, ow) and the flat winner index per output (int64)."""
    p = _planes(x, "maxpool input")
    kh, kw, sh, sw, dh, dw, ph, pw, _, _, oh, ow = g
    out = np.empty((p.shape[0], oh, ow), dtype=p.dtype)
    argmax = np.empty((p.shape[0], oh, ow), dtype=np.int64)
    inside = (ph == pw == 0 and dh == dw == 1 and (oh - 1) * sh + kh <= p.shape[1]
              and (ow - 1) * sw + kw <= p.shape[2])
    if inside:
        _maxpool_inside_kernel(p, kh, kw, sh, sw, out, argmax)
    else:
        _maxpool_kernel(p, kh, kw, sh, sw, dh, dw, ph, pw, out, argmax)
    return out.reshape(x.shape[0], x.shape[1], oh, ow), argmax


def maxpool_backward(grad_out: np.ndarray, argmax: np.ndarray, x_shape: tuple) -> np.ndarray:
    gp = _planes(grad_out, "maxpool gradient")
    if argmax.shape != gp.shape or argmax.dtype != np.int64:
        raise ValueError(f"maxpool_backward: argmax expected int64 {gp.shape}, found {argmax.dtype} {argmax.shape}")
    out = np.empty((gp.shape[0], x_shape[2], x_shape[3]), dtype=gp.dtype)
    _maxpool_backward_kernel(gp, np.ascontiguousarray(argmax), out)
    return out.reshape(x_shape)


def avgpool_divisors(x_shape: tuple, g: Geometry, include_pad: bool) -> np.ndarray:
    kh, kw, sh, sw, dh, dw, ph, pw, pb, pr, oh, ow = g
    out = np.empty((oh, ow), dtype=np.float64)
    _avgpool_divisors_kernel(int(x_shape[2]), int(x_shape[3]), kh, kw, sh, sw, dh, dw, ph, pw, pb, pr,
                             bool(include_pad), out)
    return out


def avgpool(x: np.ndarray, g: Geometry, divisors: np.ndarray) -> np.ndarray:
    p = _planes(x, "avgpool input")
    kh, kw, sh, sw, dh, dw, ph, pw, _, _, oh, ow = g
    out = np.empty((p.shape[0], oh, ow), dtype=p.dtype)
    _avgpool_kernel(p, kh, kw, sh, sw, dh, dw, ph, pw, divisors, out)
    return out.reshape(x.shape[0], x.shape[1], oh, ow)


def avgpool_backward(grad_out: np.ndarray, x_shape: tuple, g: Geometry, divisors: np.ndarray) -> np.ndarray:
    gp = _planes(grad_out, "avgpool gradient")
    kh, kw, sh, sw, dh, dw, ph, pw, _, _, oh, ow = g
    out = np.empty((gp.shape[0], x_shape[2], x_shape[3]), dtype=gp.dtype)
    _avgpool_backward_kernel(gp, kh, kw, sh, sw, dh, dw, ph, pw, divisors, out)
    return out.reshape(x_shape)
