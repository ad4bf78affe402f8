"""Layout ops: Identity, Flatten, Reshape (target shape from a constant input), Transpose and Concat. The packer removes
Identity except where a graph output is a copy of a graph input or of a constant. Identity, Flatten and Reshape
copy nothing when the planner gives them their input's buffer: their bound step is then left out of the plan.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import NO_STEP, OpDef, check_arity, int_attr, int_list, normalize_axis, opset_of


def _infer_identity(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    return [tuple(input_shapes[0])]


def _infer_flatten(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    shape = tuple(input_shapes[0])
    axis = normalize_axis(attrs.get("axis", 1), len(shape), allow_end=True)
    return [(math.prod(shape[:axis]), math.prod(shape[axis:]))]


def _infer_reshape(input_shapes, attrs, consts):
    if opset_of(attrs) < 5:  # Reshape-1: the target shape is the attribute 'shape'
        check_arity(input_shapes, 1)
        target = int_list(attrs, "shape", None)
        if target is None:
            raise FormatError("attribute 'shape' is required (Reshape before opset 5)")
    else:
        check_arity(input_shapes, 2)
        target = consts[1] if len(consts) > 1 else None
    shape = tuple(input_shapes[0])
    allowzero = int_attr(attrs, "allowzero", 0, (0, 1))  # opset 14; absent (0) before
    if target is None:
        raise UnsupportedError("the target shape (input 1) must be a constant; a computed shape is not supported")
    target = np.asarray(target)
    if target.ndim != 1 or target.dtype.kind not in "iu":
        raise FormatError(f"the target shape (input 1) must be a 1-D integer tensor, "
                          f"found dtype {target.dtype} shape {target.shape}")
    dims = [int(v) for v in target]
    if any(d < -1 for d in dims) or dims.count(-1) > 1:
        raise FormatError(f"target shape {dims} may hold at most one -1 and no other negative value")
    if allowzero:
        if 0 in dims and -1 in dims:
            raise FormatError(f"target shape {dims} holds both 0 and -1, which allowzero=1 forbids")
    else:
        for i, d in enumerate(dims):
            if d == 0:
                if i >= len(shape):
                    raise FormatError(f"target shape {dims}: 0 at position {i} copies a dimension the "
                                      f"input {shape} does not have")
                dims[i] = shape[i]
    total = math.prod(shape)
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or total % known:
            raise FormatError(f"cannot reshape input {shape} ({total} elements) to {[int(v) for v in target]}")
        dims[dims.index(-1)] = total // known
    if math.prod(dims) != total:
        raise FormatError(f"cannot reshape input {shape} ({total} elements) to {[int(v) for v in target]} "
                          f"({math.prod(dims)} elements)")
    return [tuple(dims)]


def run_copy_reshaped(inputs, attrs, outputs):
    """Identity, Flatten, Reshape, Squeeze, Unsqueeze: the input's values in the output's shape."""
    out = outputs[0]
    np.copyto(out, inputs[0].reshape(out.shape))


@njit(cache=True)
def _copy_kernel(src, dst):
    for i in range(src.size):
        dst[i] = src[i]


def bind_copy_reshaped(inputs, attrs, outputs):
    """No step when the planner gave the output its input's buffer; else a copy kernel over the flat arrays."""
    x, out = inputs[0], outputs[0]
    if not (isinstance(x, np.ndarray) and x.dtype == out.dtype == np.float32 and x.flags.c_contiguous
            and out.flags.c_contiguous and x.size == out.size):
        return None
    if x.ctypes.data == out.ctypes.data:
        return NO_STEP
    return _copy_kernel, (x.reshape(-1), out.reshape(-1))


def _perm(attrs, rank):
    perm = int_list(attrs, "perm", list(range(rank))[::-1])
    if sorted(perm) != list(range(rank)):
        raise FormatError(f"attribute 'perm' = {perm} is not a permutation of 0..{rank - 1}")
    return perm


def _infer_transpose(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    shape = tuple(input_shapes[0])
    return [tuple(shape[p] for p in _perm(attrs, len(shape)))]


def _run_transpose(inputs, attrs, outputs):
    x = inputs[0]
    np.copyto(outputs[0], x.transpose(attrs.get("perm") or tuple(reversed(range(x.ndim)))))


def _bind_transpose(inputs, attrs, outputs):
    """Bound once per plan: the input's transposed view copied into the output (views.py: one flat copy when the
    permutation keeps the memory order, as moving an axis of size 1 does, else the rank <= 4 strided copy); None
    (the plain runner) for a constant input or rank > 4."""
    from edgepack.runtime.ops.views import bind_copies  # it builds on this module
    x = inputs[0]
    if not (isinstance(x, np.ndarray) and x.flags.c_contiguous):
        return None
    return bind_copies([x.transpose(attrs.get("perm") or tuple(reversed(range(x.ndim))))], [outputs[0]], src_base=x)


def _infer_concat(input_shapes, attrs, consts):
    if not input_shapes:
        raise FormatError("expects at least 1 input, found 0")
    if any(s is None for s in input_shapes):
        raise FormatError("every input is required; found an omitted one")
    shapes = [tuple(s) for s in input_shapes]
    rank = len(shapes[0])
    axis = normalize_axis(_concat_axis(attrs), rank)
    for i, s in enumerate(shapes):
        if len(s) != rank or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
            raise FormatError(f"input {i} has shape {s}; expected rank {rank} and the dims of input 0 "
                              f"{shapes[0]} on every axis but {axis}")
    return [shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1:]]


def _concat_axis(attrs):
    """'axis': required from opset 4; before, optional with default 1 (Concat-1)."""
    if "axis" in attrs:
        return attrs["axis"]
    if opset_of(attrs) < 4:
        return 1
    raise FormatError("attribute 'axis' is required")


def _run_concat(inputs, attrs, outputs):
    np.concatenate(inputs, axis=_concat_axis(attrs), out=outputs[0])


def _bind_concat(inputs, attrs, outputs):
    """Bound once per plan: each input copied into its slab of the output (views.py)."""
    from edgepack.runtime.ops.views import bind_copies, slabs  # it builds on this module
    out = outputs[0]
    axis = normalize_axis(_concat_axis(attrs), out.ndim)
    return bind_copies(list(inputs), slabs(out, axis, [a.shape[axis] for a in inputs]), dst_base=out)


OPS = (
    OpDef("Identity", _infer_identity, run_copy_reshaped, inplace_ok=True, bind=bind_copy_reshaped),
    OpDef("Flatten", _infer_flatten, run_copy_reshaped, inplace_ok=True, bind=bind_copy_reshaped),
    OpDef("Reshape", _infer_reshape, run_copy_reshaped, inplace_ok=True, bind=bind_copy_reshaped),
    OpDef("Transpose", _infer_transpose, _run_transpose, bind=_bind_transpose),
    OpDef("Concat", _infer_concat, _run_concat, bind=_bind_concat),
)
