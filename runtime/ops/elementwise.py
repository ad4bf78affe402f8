"""Elementwise ops: activations (Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh) as Numba kernels
over flat buffers, and Add, Sub, Mul, Div with numpy broadcasting. All may run in place (output buffer == input).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from runtime.errors import FormatError
from runtime.ops.registry import OpDef, check_arity, float_attr

_F32 = np.float32


# ---- kernels: flat contiguous x and out of equal size; out may be x itself (each element is read before written) --

@njit(cache=True)
def _relu_kernel(x, out):
    for i in range(x.size):
        v = x[i]
        # `v < 0` rather than max(v, 0): keeps NaN visible downstream
        out[i] = 0.0 if v < 0 else v


@njit(cache=True)
def _leaky_relu_kernel(x, out, alpha):
    for i in range(x.size):
        v = x[i]
        out[i] = v * alpha if v < 0 else v


@njit(cache=True)
def _clip_kernel(x, out, lo, hi):
    for i in range(x.size):
        v = x[i]
        if v < lo:
            v = lo
        if v > hi:
            v = hi
        out[i] = v


@njit(cache=True)
def _sigmoid_kernel(x, out):
    for i in range(x.size):
        # for x < -88 exp(-x) overflows to inf and 1 / inf = 0, the right limit: no sign split needed (1.7x faster)
        out[i] = 1.0 / (1.0 + math.exp(-x[i]))


@njit(cache=True)
def _hard_sigmoid_kernel(x, out, alpha, beta):
    for i in range(x.size):
        v = x[i] * alpha + beta
        if v < 0:
            v = 0.0
        if v > 1:
            v = 1.0
        out[i] = v


@njit(cache=True)
def _hard_swish_kernel(x, out, alpha, beta):
    for i in range(x.size):
        xv = x[i]
        v = xv * alpha + beta
        if v < 0:
            v = 0.0
        if v > 1:
            v = 1.0
        out[i] = xv * v


@njit(cache=True)
def _tanh_kernel(x, out):
    for i in range(x.size):
        out[i] = math.tanh(x[i])


def _apply(kernel, x: np.ndarray, out: np.ndarray, *scalars) -> None:
    flat_x = x.reshape(-1)
    if out.flags.c_contiguous:
        kernel(flat_x, out.reshape(-1), *scalars)
    else:  # outside the arena contract; stay correct rather than write into a silent copy
        tmp = np.empty(out.size, out.dtype)
        kernel(flat_x, tmp, *scalars)
        out[...] = tmp.reshape(out.shape)


# ---- shape inference ----

def _infer_unary(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    return [tuple(input_shapes[0])]


def _infer_leaky_relu(input_shapes, attrs, consts):
    float_attr(attrs, "alpha", 0.01)
    return _infer_unary(input_shapes, attrs, consts)


def _infer_hard_sigmoid(input_shapes, attrs, consts):
    float_attr(attrs, "alpha", 0.2)
    float_attr(attrs, "beta", 0.5)
    return _infer_unary(input_shapes, attrs, consts)


def _infer_clip(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 3)
    for i, role in ((1, "min"), (2, "max")):
        if i < len(input_shapes) and input_shapes[i] is not None and math.prod(input_shapes[i]) != 1:
            raise FormatError(f"input {i} ('{role}') must be a scalar, found shape {tuple(input_shapes[i])}")
    # opset < 11 carries min/max as attributes
    float_attr(attrs, "min", -math.inf)
    float_attr(attrs, "max", math.inf)
    return [tuple(input_shapes[0])]


def _infer_binary(input_shapes, attrs, consts):
    check_arity(input_shapes, 2)
    a, b = tuple(input_shapes[0]), tuple(input_shapes[1])
    try:
        return [tuple(np.broadcast_shapes(a, b))]
    except ValueError:
        raise FormatError(f"input shapes {a} and {b} do not broadcast (numpy rules)") from None


# ---- runners ----

def _run_relu(inputs, attrs, outputs):
    _apply(_relu_kernel, inputs[0], outputs[0])


def _run_leaky_relu(inputs, attrs, outputs):
    _apply(_leaky_relu_kernel, inputs[0], outputs[0], _F32(attrs.get("alpha", 0.01)))


def _clip_bound(inputs, i, attrs, key, default):
    if i < len(inputs) and inputs[i] is not None:
        return _F32(inputs[i].reshape(-1)[0])
    return _F32(attrs.get(key, default))


def _run_clip(inputs, attrs, outputs):
    lo = _clip_bound(inputs, 1, attrs, "min", -math.inf)
    hi = _clip_bound(inputs, 2, attrs, "max", math.inf)
    _apply(_clip_kernel, inputs[0], outputs[0], lo, hi)


def _run_sigmoid(inputs, attrs, outputs):
    _apply(_sigmoid_kernel, inputs[0], outputs[0])


def _run_hard_sigmoid(inputs, attrs, outputs):
    _apply(_hard_sigmoid_kernel, inputs[0], outputs[0], _F32(attrs.get("alpha", 0.2)), _F32(attrs.get("beta", 0.5)))


def _run_hard_swish(inputs, attrs, outputs):
    # ONNX defines HardSwish as x * HardSigmoid(x) with alpha = 1/6, beta = 0.5
    _apply(_hard_swish_kernel, inputs[0], outputs[0], _F32(1.0 / 6.0), _F32(0.5))


def _run_tanh(inputs, attrs, outputs):
    _apply(_tanh_kernel, inputs[0], outputs[0])


def _binary_runner(ufunc):
    def run(inputs, attrs, outputs):
        # IEEE results (inf, nan) without numpy warnings, as onnxruntime does
        with np.errstate(all="ignore"):
            ufunc(inputs[0], inputs[1], out=outputs[0])
    run.__name__ = f"_run_{ufunc.__name__}"
    return run


OPS = (
    OpDef("Relu", _infer_unary, _run_relu, inplace_ok=True),
    OpDef("LeakyRelu", _infer_leaky_relu, _run_leaky_relu, inplace_ok=True),
    OpDef("Clip", _infer_clip, _run_clip, inplace_ok=True),
    OpDef("Sigmoid", _infer_unary, _run_sigmoid, inplace_ok=True),
    OpDef("HardSigmoid", _infer_hard_sigmoid, _run_hard_sigmoid, inplace_ok=True),
    OpDef("HardSwish", _infer_unary, _run_hard_swish, inplace_ok=True),
    OpDef("Tanh", _infer_unary, _run_tanh, inplace_ok=True),
    OpDef("Add", _infer_binary, _binary_runner(np.add), inplace_ok=True),
    OpDef("Sub", _infer_binary, _binary_runner(np.subtract), inplace_ok=True),
    OpDef("Mul", _infer_binary, _binary_runner(np.multiply), inplace_ok=True),
    OpDef("Div", _infer_binary, _binary_runner(np.divide), inplace_ok=True),
)
