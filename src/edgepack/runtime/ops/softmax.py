"""Softmax over an (outer, axis, inner) view, as Numba kernels; may run in place. From opset 13 it normalises along
`axis` (default -1); before 13 (opsets 1 and 11) the input is coerced to 2-D at `axis` (default 1) and each row of
prod(shape[axis:]) elements is normalised as one: an (outer, rest, 1) view. Both layouts vectorise with
fastmath.expf: contiguous lines (inner = 1: a CTC head's 6625 classes per time step) along the line; strided lines
(inner > 1: YOLOv8's DFL softmax over 16 bins of 8400 anchors) across the inner axis, every pass a contiguous row of
`inner` values with the running max and sum of each line in scratch. Sums in float64 (in any order along a line).
In place is its own kernel (one array: LLVM's overlap test sends two equal pointers to its scalar loop).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.ops.fastmath import expf
from edgepack.runtime.ops.registry import OpDef, check_arity, normalize_axis, opset_of


@njit(cache=True, fastmath={"reassoc"})
def _sum_kernel(a, k):
    # a[:k] summed in float64 lanes in any order (reassociation lets the sum vectorise)
    s = 0.0
    for j in range(k):
        s += a[j]
    return s


@njit(cache=True, fastmath={"nnan", "reassoc"})
def _max_kernel(a):
    # the largest of a, in any order; with a NaN in a the result may or may not be NaN, and the line is NaN either
    # way (its NaN gives a NaN term in the sum)
    m = -np.inf
    for j in range(a.shape[0]):
        v = a[j]
        m = v if v > m else m
    return m


@njit(cache=True, inline="always", error_model="numpy")
def _lines_body(x, out):
    # x, out: (lines, n) C-contiguous, out may be x: a line's max is taken before any of it is written, and each
    # element is read before it is written at the same index
    lines, n = x.shape
    for o in range(lines):
        xl = x[o]
        ol = out[o]
        mf = np.float32(_max_kernel(xl))
        for j in range(n):
            ol[j] = expf(xl[j] - mf)
        inv = np.float32(1.0 / _sum_kernel(ol, n))
        for j in range(n):
            ol[j] = ol[j] * inv


@njit(cache=True, error_model="numpy")  # a division never raises inside the kernel
def _softmax_lines_kernel(x, out):
    _lines_body(x, out)


@njit(cache=True, error_model="numpy")
def _softmax_lines_inplace_kernel(a):
    _lines_body(a, a)


@njit(cache=True, inline="always", error_model="numpy")
def _strided_body(x, out, m, s):
    # x, out: (outer, n, inner) C-contiguous, out may be x; m: float32 x inner (the lines' max, then 1 / sum), s:
    # float64 x inner (the lines' sums). A NaN is never the max (v > m is false), and gives its line a NaN sum.
    outer, n, inner = x.shape
    for o in range(outer):
        xo = x[o]
        oo = out[o]
        for i in range(inner):
            m[i] = -np.inf
            s[i] = 0.0
        for j in range(n):
            xr = xo[j]
            for i in range(inner):
                v = xr[i]
                m[i] = v if v > m[i] else m[i]
        for j in range(n):
            xr = xo[j]
            orow = oo[j]
            for i in range(inner):
                e = expf(xr[i] - m[i])
                orow[i] = e
                s[i] += e
        for i in range(inner):
            m[i] = np.float32(1.0 / s[i])
        for j in range(n):
            orow = oo[j]
            for i in range(inner):
                orow[i] = orow[i] * m[i]


@njit(cache=True, error_model="numpy")
def _softmax_strided_kernel(x, out, m, s):
    _strided_body(x, out, m, s)


@njit(cache=True, error_model="numpy")
def _softmax_strided_inplace_kernel(a, m, s):
    _strided_body(a, a, m, s)


def _view(shape: tuple, attrs) -> tuple[int, int, int]:
    """(outer, n, inner): the lines of n elements that are normalised, per the node's opset."""
    if opset_of(attrs) >= 13:
        axis = normalize_axis(attrs.get("axis", -1), len(shape))
        return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    axis = normalize_axis(attrs.get("axis", 1), len(shape))
    return math.prod(shape[:axis]), math.prod(shape[axis:]), 1


def _infer_softmax(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    shape = tuple(input_shapes[0])
    _view(shape, attrs)
    return [shape]


def _scratch_bytes(in_shapes, attrs) -> int:
    """Strided lines: the running sum (float64) and max (float32) of each of the `inner` lines of a pass."""
    _, _, inner = _view(tuple(in_shapes[0]), attrs)
    return 0 if inner == 1 else 12 * inner


def _step(x, out, attrs, scratch):
    """(kernel, args) for C-contiguous x and out that are the same buffer or do not overlap."""
    outer, n, inner = _view(x.shape, attrs)
    same = x.__array_interface__["data"][0] == out.__array_interface__["data"][0]
    if inner == 1:
        a, b = x.reshape(outer, n), out.reshape(outer, n)
        return (_softmax_lines_inplace_kernel, (b,)) if same else (_softmax_lines_kernel, (a, b))
    s = scratch[: 8 * inner].view(np.float64)
    m = scratch[8 * inner: 12 * inner].view(np.float32)
    a, b = x.reshape(outer, n, inner), out.reshape(outer, n, inner)
    return (_softmax_strided_inplace_kernel, (b, m, s)) if same else (_softmax_strided_kernel, (a, b, m, s))


def _run_softmax(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    target = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
    same = x.__array_interface__["data"][0] == target.__array_interface__["data"][0]
    if not x.flags.c_contiguous or (not same and np.shares_memory(x, target)):
        x = np.ascontiguousarray(x).copy()
    fn, args = _step(x, target, attrs, np.empty(_scratch_bytes([x.shape], attrs), np.uint8))
    fn(*args)
    if target is not out:
        out[...] = target


def _bind_softmax(inputs, attrs, outputs, scratch):
    """Bound once per plan, on the plan's scratch (_scratch_bytes), when input and output are C-contiguous and the
    same buffer or apart."""
    x, out = inputs[0], outputs[0]
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        return None
    if x.__array_interface__["data"][0] != out.__array_interface__["data"][0] and np.shares_memory(x, out):
        return None
    return _step(x, out, attrs, scratch)


OPS = (OpDef("Softmax", _infer_softmax, _run_softmax, inplace_ok=True, bind=_bind_softmax,
              scratch_bytes=_scratch_bytes),)
