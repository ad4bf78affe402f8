"""Normalisations: LayerNormalization (opset 17: normalise over the axes from `axis` on, optional Mean and
InvStdDev outputs) as a Numba kernel over (rows, normalised size), and inference-mode BatchNormalization that the
importer could not fold into a preceding Conv/Gemm (after an Add, at the input), per channel with numpy.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import OpDef, check_arity, float_attr, int_attr, normalize_axis, opset_of, refuse_opset


@njit(cache=True, error_model="numpy")  # a division never raises inside the kernel
def _layer_norm_kernel(x, scale, bias, eps, out, mean, inv_std):
    # x, out: (rows, n); out may be x (each element is read before it is written); sums in float64, two passes
    rows, n = x.shape
    for r in range(rows):
        s = 0.0
        for j in range(n):
            s += x[r, j]
        m = s / n
        v = 0.0
        for j in range(n):
            d = x[r, j] - m
            v += d * d
        inv = 1.0 / math.sqrt(v / n + eps)
        for j in range(n):
            out[r, j] = (x[r, j] - m) * inv * scale[j] + bias[j]
        mean[r] = m
        inv_std[r] = inv


def _ln_geometry(input_shapes, attrs):
    shape = tuple(input_shapes[0])
    if not shape:
        raise FormatError("input 0 must have rank >= 1, found a scalar")
    axis = normalize_axis(attrs.get("axis", -1), len(shape))
    inner = shape[axis:]
    for i, role in ((1, "Scale"), (2, "B")):
        if i < len(input_shapes) and input_shapes[i] is not None:
            s = tuple(input_shapes[i])
            try:
                ok = np.broadcast_shapes(s, inner) == inner
            except ValueError:
                ok = False
            if not ok:
                raise FormatError(f"input {i} ('{role}') of shape {s} does not broadcast to the normalised "
                                  f"shape {inner} (input {shape}, axis {axis})")
    return shape, axis


def _infer_layer_norm(input_shapes, attrs, consts):
    check_arity(input_shapes, 2, 3)
    float_attr(attrs, "epsilon", 1e-5)
    int_attr(attrs, "stash_type", 1, (1,))
    shape, axis = _ln_geometry(input_shapes, attrs)
    stats = shape[:axis] + (1,) * (len(shape) - axis)
    return [shape, stats, stats]


def _inner_vector(a, inner: tuple, n: int) -> np.ndarray:
    if a is None:
        return np.zeros(n, np.float32)
    return np.ascontiguousarray(np.broadcast_to(np.asarray(a, np.float32), inner)).reshape(n)


def _run_layer_norm(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    axis = attrs.get("axis", -1) % x.ndim
    inner = x.shape[axis:]
    rows, n = math.prod(x.shape[:axis]), math.prod(inner)
    scale = _inner_vector(inputs[1], inner, n)
    bias = _inner_vector(inputs[2] if len(inputs) > 2 else None, inner, n)
    mean = outputs[1].reshape(rows) if len(outputs) > 1 and outputs[1] is not None else np.empty(rows, np.float32)
    inv = outputs[2].reshape(rows) if len(outputs) > 2 and outputs[2] is not None else np.empty(rows, np.float32)
    xv = np.ascontiguousarray(x, dtype=np.float32).reshape(rows, n)
    _layer_norm_kernel(xv, scale, bias, np.float64(attrs.get("epsilon", 1e-5)), out.reshape(rows, n), mean, inv)


# ---- BatchNormalization (inference) ----

def check_batch_norm_mode(attrs) -> None:
    """Refuse the attributes that make BatchNormalization compute something else than inference with the stored
    statistics: training_mode = 1 (opset 14), is_test = 0 before opset 7 (the default: training mode), spatial = 0
    (before opset 9: statistics per element). The importer (packer/onnx_io.py) applies it before folding one into
    a Conv / Gemm, so a folded node follows the same rules as one the runtime computes."""
    if int_attr(attrs, "training_mode", 0, (0, 1)):
        raise UnsupportedError("training_mode = 1 (batch statistics) is not supported; export in eval mode")
    if opset_of(attrs) < 7 and not int_attr(attrs, "is_test", 0, (0, 1)):
        raise refuse_opset("'is_test' = 0 (the default) normalises with the batch's statistics (training mode); "
                           "set is_test = 1 or export in eval mode at opset >= 7", opset_of(attrs))
    if int_attr(attrs, "spatial", 1, (0, 1)) != 1:
        raise UnsupportedError("spatial = 0 (opset < 9 per-element statistics) is not supported")


def _infer_batch_norm(input_shapes, attrs, consts):
    check_arity(input_shapes, 5)
    float_attr(attrs, "epsilon", 1e-5)
    check_batch_norm_mode(attrs)
    shape = tuple(input_shapes[0])
    if len(shape) < 2:
        raise FormatError(f"input 0 must be (N, C, ...), found shape {shape}")
    for i, role in enumerate(("scale", "B", "input_mean", "input_var"), start=1):
        if tuple(input_shapes[i]) != (shape[1],):
            raise FormatError(f"input {i} ('{role}') must have shape ({shape[1]},) (the channels of {shape}), "
                              f"found {tuple(input_shapes[i])}")
    return [shape]


def _run_batch_norm(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in inputs[1:5])
    a = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
    b = beta - mean * a
    per_channel = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    np.multiply(x, a.astype(np.float32).reshape(per_channel), out=out)
    np.add(out, b.astype(np.float32).reshape(per_channel), out=out)


OPS = (
    OpDef("LayerNormalization", _infer_layer_norm, _run_layer_norm, inplace_ok=True),
    OpDef("BatchNormalization", _infer_batch_norm, _run_batch_norm, inplace_ok=True),
)
