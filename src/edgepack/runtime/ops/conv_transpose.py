"""ConvTranspose (1-D and 2-D; groups, strides, pads, auto_pad, output_padding, output_shape, dilations) on dense
weights: per group a BLAS product W_g^T @ x_g and a Numba col2im that scatters its columns into the output; groups
with few channels each (depthwise) take a direct Numba scatter instead.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import OpDef, check_arity, int_attr, int_list

_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")
# Below this many (input x output) channels per group, BLAS products are too thin to pay for the column buffer.
_DIRECT_MAX_CHANNELS = 16


@njit(cache=True)
def _col2im_kernel(cols, out, kh, kw, sh, sw, dh, dw, ph, pw, h_, w_):
    # cols: (cout_g * kh * kw, h_ * w_), rows ordered (channel, tap row, tap col); out: (cout_g, oh, ow), added to
    cout, oh_, ow_ = out.shape
    for c in range(cout):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                off = j * dw - pw
                # the input columns whose output column x * sw + off lies in [0, ow_)
                lo = 0 if off >= 0 else (sw - 1 - off) // sw
                last = ow_ - 1 - off
                hi = 0 if last < 0 else min(w_, last // sw + 1)
                for y in range(h_):
                    oy = y * sh - ph + i * dh
                    if oy < 0 or oy >= oh_:
                        continue
                    base = y * w_
                    orow = out[c, oy]
                    for x in range(lo, hi):
                        orow[x * sw + off] += cols[row, base + x]


@njit(cache=True)
def _direct_kernel(x, w, out, group, sh, sw, dh, dw, ph, pw):
    # one sample. x: (cin, h, w); w: (cin, cout_g, kh, kw); out: (cout, oh, ow), added to
    cin, h_, w_ = x.shape
    cout_g, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    oh_, ow_ = out.shape[1], out.shape[2]
    cin_g = cin // group
    for ci in range(cin):
        g = ci // cin_g
        for co in range(cout_g):
            oc = g * cout_g + co
            for i in range(kh):
                for j in range(kw):
                    wv = w[ci, co, i, j]
                    off = j * dw - pw
                    lo = 0 if off >= 0 else (sw - 1 - off) // sw
                    last = ow_ - 1 - off
                    hi = 0 if last < 0 else min(w_, last // sw + 1)
                    for y in range(h_):
                        oy = y * sh - ph + i * dh
                        if oy < 0 or oy >= oh_:
                            continue
                        orow = out[oc, oy]
                        xrow = x[ci, y]
                        for xx in range(lo, hi):
                            orow[xx * sw + off] += xrow[xx] * wv


def _geometry(x_shape, w_shape, attrs):
    """Validated 2-D geometry: dict with group, cout, kernel, strides, dilations, pads (begin), out (spatial)."""
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) not in (3, 4):
        if len(x_shape) > 4:
            raise UnsupportedError(f"only 1-D and 2-D transposed convolution is supported, input {x_shape}")
        raise FormatError(f"input must be (N, C, spatial...), found shape {x_shape}")
    nsp = len(x_shape) - 2
    if len(w_shape) != len(x_shape):
        raise FormatError(f"weight {w_shape} must have the input's rank {len(x_shape)}: (Cin, Cout/group, k...)")
    group = int_attr(attrs, "group", 1)
    cin = x_shape[1]
    if group < 1 or cin % group or w_shape[0] != cin:
        raise FormatError(f"weight {w_shape} and group {group} do not fit input channels {cin} "
                          f"(weight dim 0 must equal them, and group divide them)")
    kernel = int_list(attrs, "kernel_shape", list(w_shape[2:]), nsp, 1)
    if tuple(kernel) != w_shape[2:]:
        raise FormatError(f"attribute 'kernel_shape' {kernel} differs from the weight's {list(w_shape[2:])}")
    strides = int_list(attrs, "strides", [1] * nsp, nsp, 1)
    dilations = int_list(attrs, "dilations", [1] * nsp, nsp, 1)
    out_pad = int_list(attrs, "output_padding", [0] * nsp, nsp, 0)
    pads = int_list(attrs, "pads", [0] * 2 * nsp, 2 * nsp, 0)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in _AUTO_PADS:
        raise FormatError(f"attribute 'auto_pad' must be one of {list(_AUTO_PADS)}, found {auto_pad!r}")
    out_shape = int_list(attrs, "output_shape", None, minimum=1)
    if out_shape is not None:
        if len(out_shape) == nsp + 2:
            out_shape = out_shape[2:]
        if len(out_shape) != nsp:
            raise FormatError(f"attribute 'output_shape' {out_shape} must give the {nsp} spatial dimensions")
    begins, outs = [], []
    for i in range(nsp):
        n, s, d = x_shape[2 + i], strides[i], dilations[i]
        if out_pad[i] >= max(s, d):
            raise FormatError(f"output_padding {out_pad} must be smaller than the stride or the dilation on "
                              f"spatial axis {i}")
        full = s * (n - 1) + out_pad[i] + (kernel[i] - 1) * d + 1
        if out_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # the padding the wanted size leaves (none when it exceeds the full output: zeros at the end), the
            # odd one at the end for SAME_UPPER and at the beginning otherwise (the spec's rule; onnxruntime's too)
            out = out_shape[i] if out_shape is not None else n * s
            total = max(0, full - out)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        else:
            begin, end = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nsp])
            out = full - begin - end
            if out < 1:
                raise FormatError(f"pads {pads} leave no output on spatial axis {i} (input {x_shape}, "
                                  f"kernel {kernel})")
        begins.append(begin)
        outs.append(out)
    if nsp == 1:
        kernel, strides, dilations, begins, outs = [1] + kernel, [1] + strides, [1] + dilations, [0] + begins, \
            [1] + outs
    return {"group": group, "cout": w_shape[1] * group, "kernel": kernel, "strides": strides,
            "dilations": dilations, "pads": begins, "out": outs, "nsp": nsp}


def _infer_conv_transpose(input_shapes, attrs, consts):
    check_arity(input_shapes, 2, 3)
    x, w = tuple(input_shapes[0]), tuple(input_shapes[1])
    g = _geometry(x, w, attrs)
    if len(input_shapes) > 2 and input_shapes[2] is not None and tuple(input_shapes[2]) != (g["cout"],):
        raise FormatError(f"bias (input 2) must have shape ({g['cout']},), found {tuple(input_shapes[2])}")
    return [(x[0], g["cout"]) + tuple(g["out"][-g["nsp"]:])]


def _dense_weight(w, nsp: int) -> np.ndarray:
    """The weight as float32 (C, M/group, kh, kw) for the kernels: an array as it is (a constant or an arena view),
    a weight object of runtime/weights.py (direct calls only: the model holds ConvTranspose weights as dense
    constants, counted in its memory plan) decoded."""
    dense = np.ascontiguousarray(w if isinstance(w, np.ndarray) else w.to_dense(), dtype=np.float32)
    return dense.reshape(dense.shape[0], dense.shape[1], 1, dense.shape[2]) if nsp == 1 else dense


def _uses_cols(g: dict, cin: int) -> bool:
    group = g["group"]
    return not (group > 1 and (cin // group) * (g["cout"] // group) < _DIRECT_MAX_CHANNELS)


def _cols_floats(x_shape: tuple, g: dict) -> int:
    """Floats of the column buffer (cout/group * kh * kw, input positions) the BLAS path needs, else 0."""
    if not _uses_cols(g, x_shape[1]):
        return 0
    kh, kw = g["kernel"]
    positions = x_shape[2] if g["nsp"] == 1 else x_shape[2] * x_shape[3]
    return (g["cout"] // g["group"]) * kh * kw * positions


def _scratch_bytes(in_shapes, attrs) -> int:
    x, w = tuple(in_shapes[0]), tuple(in_shapes[1])
    return 4 * _cols_floats(x, _geometry(x, w, attrs))


def _prepare(inputs, attrs, outputs, scratch=None):
    """Everything a run needs that depends only on shapes, attributes and the weight: the step (function, args).
    scratch: the plan's shared scratch (at least _scratch_bytes), or None to allocate the column buffer."""
    x, w, out = inputs[0], inputs[1], outputs[0]
    bias = inputs[2] if len(inputs) > 2 else None
    g = _geometry(x.shape, w.shape, attrs)
    nsp, group = g["nsp"], g["group"]
    dense = _dense_weight(w, nsp)
    n, cin = x.shape[0], x.shape[1]
    h_, w_ = (1, x.shape[2]) if nsp == 1 else x.shape[2:]
    cout = g["cout"]
    oh, ow = g["out"]
    x4 = np.ascontiguousarray(x, dtype=np.float32).reshape(n, cin, h_, w_)
    o4 = out.reshape(n, cout, oh, ow)
    bias4 = None if bias is None else np.ascontiguousarray(bias, np.float32).reshape(1, cout, 1, 1)
    geo = (*g["strides"], *g["dilations"], *g["pads"])
    cin_g, cout_g = cin // group, cout // group
    if not _uses_cols(g, cin):
        return _step_direct, (x4, dense, o4, bias4, group, geo)
    kh, kw = g["kernel"]
    size = cout_g * kh * kw * h_ * w_
    if scratch is None:
        cols = np.empty((cout_g * kh * kw, h_ * w_), np.float32)
    else:
        cols = scratch[: 4 * size].view(np.float32).reshape(cout_g * kh * kw, h_ * w_)
    # W_g^T as a transposed view: BLAS reads it in place
    w_t = [dense[gi * cin_g:(gi + 1) * cin_g].reshape(cin_g, -1).T for gi in range(group)]
    return _step_cols, (x4, w_t, o4, bias4, cols, cin_g, cout_g, kh, kw, geo)


def _start(o4, bias4):
    if bias4 is not None:
        o4[...] = bias4
    else:
        o4.fill(0.0)


def _step_direct(x4, dense, o4, bias4, group, geo):
    _start(o4, bias4)
    for b in range(x4.shape[0]):
        _direct_kernel(x4[b], dense, o4[b], group, *geo)


def _step_cols(x4, w_t, o4, bias4, cols, cin_g, cout_g, kh, kw, geo):
    _start(o4, bias4)
    sh, sw, dh, dw, ph, pw = geo
    h_, w_ = x4.shape[2:]
    for b in range(x4.shape[0]):
        for gi in range(len(w_t)):
            xg = x4[b, gi * cin_g:(gi + 1) * cin_g].reshape(cin_g, h_ * w_)
            np.matmul(w_t[gi], xg, out=cols)
            _col2im_kernel(cols, o4[b, gi * cout_g:(gi + 1) * cout_g], kh, kw, sh, sw, dh, dw, ph, pw, h_, w_)


def _run_conv_transpose(inputs, attrs, outputs):
    fn, args = _prepare(inputs, attrs, outputs)
    fn(*args)


def _bind_conv_transpose(inputs, attrs, outputs, scratch):
    # bound once per plan: the views stay the same buffers, so the geometry, the dense weight and the column
    # buffer (a view of the plan's scratch) are reused; an input that is not a float32 C-contiguous view would be
    # copied by _prepare and left stale: run the plain path then
    x = inputs[0]
    if not (isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous):
        return None
    return _prepare(inputs, attrs, outputs, scratch)


OPS = (OpDef("ConvTranspose", _infer_conv_transpose, _run_conv_transpose, bind=_bind_conv_transpose,
              scratch_bytes=_scratch_bytes),)
