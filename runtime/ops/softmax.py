"""Softmax with opset >= 13 semantics (normalise along `axis`, default -1) as a Numba kernel over an
(outer, axis, inner) view; may run in place.
"""
from __future__ import annotations

import math

from numba import njit

from runtime.ops.registry import OpDef, check_arity, normalize_axis


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


def _infer_softmax(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    shape = tuple(input_shapes[0])
    normalize_axis(attrs.get("axis", -1), len(shape))
    return [shape]


def _run_softmax(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    axis = attrs.get("axis", -1) % x.ndim
    view = (math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1:]))
    _softmax_kernel(x.reshape(view), out.reshape(view))


OPS = (OpDef("Softmax", _infer_softmax, _run_softmax, inplace_ok=True),)
