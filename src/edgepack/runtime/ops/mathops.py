"""Math ops that LayerNorm and GELU are spelled with in exported graphs: ReduceMean and ReduceMax (axes as attribute
or input, keepdims, noop_with_empty_axes), Pow (numpy broadcasting), Sqrt, and Erf as a Numba kernel (numpy has no
erf).
(Named mathops, not math, so that it does not shadow the standard library's module.)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import OpDef, check_arity, check_legacy_broadcast, int_attr, int_list, normalize_axis


@njit(cache=True)
def _erf_kernel(x, out):
    for i in range(x.size):
        out[i] = math.erf(x[i])


def _infer_unary(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    return [tuple(input_shapes[0])]


def _run_erf(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    flat_x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if out.flags.c_contiguous:
        _erf_kernel(flat_x, out.reshape(-1))
    else:
        tmp = np.empty(out.size, np.float32)
        _erf_kernel(flat_x, tmp)
        out[...] = tmp.reshape(out.shape)


def _run_sqrt(inputs, attrs, outputs):
    with np.errstate(invalid="ignore"):  # sqrt of a negative is NaN, as in onnxruntime, without a warning
        np.sqrt(inputs[0], out=outputs[0], casting="unsafe")


# ---- Pow ----

def _infer_pow(input_shapes, attrs, consts):
    check_arity(input_shapes, 2)
    a, b = tuple(input_shapes[0]), tuple(input_shapes[1])
    check_legacy_broadcast(a, b, attrs)
    try:
        return [tuple(np.broadcast_shapes(a, b))]
    except ValueError:
        raise FormatError(f"input shapes {a} and {b} do not broadcast (numpy rules)") from None


def _run_pow(inputs, attrs, outputs):
    x, y, out = inputs[0], inputs[1], outputs[0]
    if x.dtype != np.float32:
        x = x.astype(np.float32)
    with np.errstate(all="ignore"):
        if y.size == 1 and out.shape == x.shape:
            e = float(y.reshape(-1)[0])
            # onnxruntime computes these exponents by multiplication; so does this, for the same roundings
            if e == 2.0:
                np.multiply(x, x, out=out)
                return
            if e == 3.0:
                np.multiply(x * x, x, out=out)  # the square in a temporary: out may be x itself
                return
        np.power(x, y.astype(np.float32, copy=False), out=out)


# ---- ReduceMean ----

def _reduce_axes(input_shapes, attrs, consts) -> tuple[tuple[int, ...], bool] | None:
    """(reduced axes, keepdims), or None when the op is the identity (noop_with_empty_axes and no axes)."""
    shape = tuple(input_shapes[0])
    keepdims = bool(int_attr(attrs, "keepdims", 1, (0, 1)))
    noop = int_attr(attrs, "noop_with_empty_axes", 0, (0, 1))
    if len(input_shapes) > 1 and input_shapes[1] is not None:  # opset >= 18
        value = consts[1] if len(consts) > 1 else None
        if value is None:
            raise UnsupportedError("input 1 ('axes') must be a constant; computed axes are not supported")
        value = np.asarray(value)
        if value.dtype.kind not in "iu" or value.ndim > 1:
            raise FormatError(f"input 1 ('axes') must be a 1-D integer tensor, found dtype {value.dtype} "
                              f"shape {value.shape}")
        axes = [int(v) for v in value.reshape(-1)]
    else:
        axes = int_list(attrs, "axes", None) or []
    if not axes:
        if noop:
            return None
        axes = list(range(len(shape)))
    norm = [normalize_axis(a, len(shape), "axes") for a in axes]
    if len(set(norm)) != len(norm):
        raise FormatError(f"axes {axes} repeat an axis (rank {len(shape)})")
    return tuple(sorted(norm)), keepdims


def _infer_reduce(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 2)
    shape = tuple(input_shapes[0])
    r = _reduce_axes(input_shapes, attrs, consts)
    if r is None:
        return [shape]
    axes, keepdims = r
    if any(shape[a] == 0 for a in axes):
        raise FormatError(f"cannot reduce over an empty axis: axes {list(axes)} of {shape}")
    if keepdims:
        return [tuple(1 if i in axes else d for i, d in enumerate(shape))]
    return [tuple(d for i, d in enumerate(shape) if i not in axes)]


def _reduce_op(fn) -> dict:
    """run and bind of ReduceMean (np.mean), ReduceMax (np.max): fn over the axes into out, kept dimensions as 1."""
    def run(inputs, attrs, outputs):
        x, out = inputs[0], outputs[0]
        shapes = [None if a is None else a.shape for a in inputs]
        r = _reduce_axes(shapes, attrs, inputs)
        if r is None:
            np.copyto(out, x)
            return
        axes, _ = r
        kept = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
        fn(x, axis=axes, keepdims=True, out=out.reshape(kept))

    def step(x, axes, out):
        fn(x, axis=axes, keepdims=True, out=out)

    def bind(inputs, attrs, outputs):
        # the axes are attributes or constants: resolved once per plan instead of at every run
        x, out = inputs[0], outputs[0]
        r = _reduce_axes([None if a is None else a.shape for a in inputs], attrs, inputs)
        if r is None:
            return np.copyto, (out, x)
        kept = tuple(1 if i in r[0] else d for i, d in enumerate(x.shape))
        view = out.reshape(kept)
        if not np.shares_memory(view, out):  # reshape copied (never for the arena's contiguous views): run plainly
            return None
        return step, (x, r[0], view)

    run.__name__ = f"_run_reduce_{fn.__name__}"
    return {"run": run, "bind": bind}


OPS = (
    OpDef("ReduceMean", _infer_reduce, **_reduce_op(np.mean)),
    OpDef("ReduceMax", _infer_reduce, **_reduce_op(np.max)),
    OpDef("Pow", _infer_pow, _run_pow, inplace_ok=True),
    OpDef("Sqrt", _infer_unary, _run_sqrt, inplace_ok=True),
    OpDef("Erf", _infer_unary, _run_erf, inplace_ok=True),
)
