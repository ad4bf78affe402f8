"""Softmax as a Numba kernel over an (outer, axis, inner) view; may run in place. From opset 13 it normalises
along `axis` (default -1); before 13 (opsets 1 and 11) the input is coerced to 2-D at `axis` (default 1) and each
row of prod(shape[axis:]) elements is normalised as one: the same kernel over an (outer, rest, 1) view.
"""
from __future__ import annotations

import math

from numba import njit

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


def _run_softmax(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    view = _view(x.shape, attrs)
    _softmax_kernel(x.reshape(view), out.reshape(view))


OPS = (OpDef("Softmax", _infer_softmax, _run_softmax, inplace_ok=True),)
