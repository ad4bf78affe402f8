"""Softmax as a Numba kernel over an (outer, axis, inner) view; may run in place. From opset 13 it normalises
along `axis` (default -1); before 13 (opsets 1 and 11) the input is coerced to 2-D at `axis` (default 1) and each
row of prod(shape[axis:]) elements is normalised as one: the same kernel over an (outer, rest, 1) view. Contiguous
lines (inner = 1, the common last-axis case: a CTC head's 6625 classes per time step) take elementwise.exp_block's
vectorised exp; strided lines the scalar one.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.ops.elementwise import exp_block
from edgepack.runtime.ops.registry import OpDef, check_arity, normalize_axis, opset_of


@njit(cache=True, error_model="numpy")  # a division never raises inside the kernel
def _softmax_kernel(x, out):
    # x, out: (outer, n, inner); every element of a line is read (max pass) before any is written, so out may be x
    outer, n, inner = x.shape
    if n == 0:
        return
    for o in range(outer):
        for i in range(inner):
            m = -math.inf
            for j in range(n):
                if x[o, j, i] > m:
                    m = x[o, j, i]
            s = 0.0
            for j in range(n):
                e = math.exp(x[o, j, i] - m)
                out[o, j, i] = e
                s += e
            inv = 1.0 / s
            for j in range(n):
                out[o, j, i] = out[o, j, i] * inv


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


@njit(cache=True, error_model="numpy")
def _softmax_lines_kernel(x, out, bits, zb):
    # x, out: (lines, n) C-contiguous; out may be x (a line's max is taken and the line copied before it is
    # written); bits (int32), zb (float32): scratch of >= n each. The sum in float64 (in any order), as the scalar
    # kernel's.
    lines, n = x.shape
    for o in range(lines):
        xl = x[o]
        ol = out[o]
        mf = np.float32(_max_kernel(xl))
        for j in range(n):
            zb[j] = xl[j] - mf
        exp_block(zb, n, bits, ol)
        inv = np.float32(1.0 / _sum_kernel(ol, n))
        for j in range(n):
            ol[j] = ol[j] * inv


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


def _lines(x, out, attrs):
    """(x, out) as (lines, n) views when the normalised lines are contiguous, else None."""
    outer, n, inner = _view(x.shape, attrs)
    if inner != 1 or not (x.flags.c_contiguous and out.flags.c_contiguous):
        return None
    return x.reshape(outer, n), out.reshape(outer, n)


def _scratch_bytes(in_shapes, attrs) -> int:
    _, n, inner = _view(tuple(in_shapes[0]), attrs)
    return 8 * n if inner == 1 else 0


def _run_softmax(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    lines = _lines(x, out, attrs)
    if lines is not None:
        n = lines[0].shape[1]
        _softmax_lines_kernel(*lines, np.empty(n, np.int32), np.empty(n, np.float32))
    else:
        view = _view(x.shape, attrs)
        _softmax_kernel(x.reshape(view), out.reshape(view))


def _bind_softmax(inputs, attrs, outputs, scratch):
    """Bound once per plan: contiguous lines on the plan's scratch (8 bytes per element of a line)."""
    lines = _lines(inputs[0], outputs[0], attrs)
    if lines is None:
        return None
    n = lines[0].shape[1]
    bits = scratch[: 4 * n].view(np.int32)
    zb = scratch[4 * n: 8 * n].view(np.float32)
    return _softmax_lines_kernel, (*lines, bits, zb)


OPS = (OpDef("Softmax", _infer_softmax, _run_softmax, inplace_ok=True, bind=_bind_softmax,
              scratch_bytes=_scratch_bytes),)
