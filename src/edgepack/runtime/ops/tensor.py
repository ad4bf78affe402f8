"""Tensor ops that move or pick elements: Split, Slice, Pad (constant, reflect, edge, wrap), Squeeze, Unsqueeze,
Gather (constant indices) and Cast. Index-like inputs (sizes, starts, pads, axes, indices) must be constants;
every value lives in a float32 buffer, so Cast to an integer type rounds toward zero as ONNX does but stays float32.
BLOCKS: where Split's and Slice's outputs (and Concat's inputs, in its output) are contiguous blocks, for the
planner's block views (runtime/planner.py BlockView).
"""
from __future__ import annotations

import math

import numpy as np

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import OpDef, check_arity, int_attr, int_list, normalize_axis, opset_of, refuse_opset
from edgepack.runtime.ops.shape import _concat_axis, bind_copy_reshaped, run_copy_reshaped
from edgepack.runtime.ops.views import bind_copies, slabs

# ONNX TensorProto element types the runtime can represent in a float32 buffer exactly enough (value-wise).
CAST_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
              9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def _present(input_shapes, i) -> bool:
    return i < len(input_shapes) and input_shapes[i] is not None


def _const_ints(input_shapes, consts, i, role) -> list[int] | None:
    """The values of optional input i (a 1-D integer constant), None when omitted."""
    if not _present(input_shapes, i):
        return None
    value = consts[i] if i < len(consts) else None
    if value is None:
        raise UnsupportedError(f"input {i} ('{role}') must be a constant; a computed one is not supported "
                               f"(pack with --input-shape so that shape arithmetic is folded)")
    value = np.asarray(value)
    if value.dtype.kind not in "iu" or value.ndim > 1:
        raise FormatError(f"input {i} ('{role}') must be a 1-D integer tensor, found dtype {value.dtype} "
                          f"shape {value.shape}")
    return [int(v) for v in value.reshape(-1)]


def _axes(values, rank: int, what: str) -> list[int]:
    axes = [normalize_axis(a, rank, what) for a in values]
    if len(set(axes)) != len(axes):
        raise FormatError(f"'{what}' {list(values)} repeats an axis (rank {rank})")
    return axes


# ---- Split ----

def _split_sizes(input_shapes, attrs, consts) -> tuple[int, list[int]]:
    shape = tuple(input_shapes[0])
    axis = normalize_axis(attrs.get("axis", 0), len(shape))
    dim = shape[axis]
    sizes = _const_ints(input_shapes, consts, 1, "split")
    if sizes is None:
        sizes = int_list(attrs, "split", None)
    if sizes is None:
        if "num_outputs" not in attrs:
            raise UnsupportedError("a Split without 'split' sizes or 'num_outputs' takes its part sizes from its "
                                   "output count, which the runtime does not see; edgepack's packer writes the "
                                   "sizes out (pack the model again)")
        parts = int_attr(attrs, "num_outputs", 0)
        if parts < 1:
            raise FormatError(f"attribute 'num_outputs' must be >= 1, found {parts}")
        chunk = -(-dim // parts)
        sizes = [chunk] * (parts - 1) + [dim - chunk * (parts - 1)]
        if sizes[-1] < 0:
            raise FormatError(f"cannot split dimension {dim} of {shape} into {parts} parts of {chunk}")
    if any(s < 0 for s in sizes) or sum(sizes) != dim:
        raise FormatError(f"split sizes {sizes} must be >= 0 and sum to dimension {axis} of {shape} ({dim})")
    return axis, sizes


def _infer_split(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 2)
    shape = tuple(input_shapes[0])
    axis, sizes = _split_sizes(input_shapes, attrs, consts)
    return [shape[:axis] + (s,) + shape[axis + 1:] for s in sizes]


def _run_split(inputs, attrs, outputs):
    x = inputs[0]
    axis, sizes = _split_sizes([None if a is None else a.shape for a in inputs], attrs, inputs)
    start = 0
    for out, n in zip(outputs, sizes):
        if out is not None:  # an output nobody reads may have no buffer
            np.copyto(out, x[(slice(None),) * axis + (slice(start, start + n),)])
        start += n


def _bind_split(inputs, attrs, outputs):
    """Bound once per plan: each output copied from its slab of the input (views.py)."""
    x = inputs[0]
    axis, sizes = _split_sizes([None if a is None else a.shape for a in inputs], attrs, inputs)
    return bind_copies(slabs(x, axis, sizes), list(outputs), src_base=x)


# ---- Slice ----

def _slice_params(input_shapes, attrs, consts):
    """Per-axis python slices with ONNX's clamping; (slices, output shape)."""
    shape = tuple(input_shapes[0])
    rank = len(shape)
    if len(input_shapes) >= 3:  # opset >= 10: everything from inputs
        starts = _const_ints(input_shapes, consts, 1, "starts")
        ends = _const_ints(input_shapes, consts, 2, "ends")
        axes = _const_ints(input_shapes, consts, 3, "axes")
        steps = _const_ints(input_shapes, consts, 4, "steps")
    else:  # opset 1..9: attributes
        starts, ends = int_list(attrs, "starts", None), int_list(attrs, "ends", None)
        axes, steps = int_list(attrs, "axes", None), None
        if starts is None or ends is None:
            raise FormatError("'starts' and 'ends' are required (as inputs 1 and 2, or attributes before opset 10)")
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise FormatError(f"starts {starts}, ends {ends}, axes {axes} and steps {steps} must have equal lengths")
    axes = _axes(axes, rank, "axes")
    slices = [slice(None)] * rank
    out = list(shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        dim = shape[a]
        if st == 0:
            raise FormatError(f"step on axis {a} must not be 0")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        out[a] = max(0, -(-(e - s) // st))
        # python reads a stop of -1 as "the last element": no stop then means "past index 0"
        slices[a] = slice(s, e if e >= 0 else None, st)
    return tuple(slices), tuple(out)


def _infer_slice(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 5)
    return [_slice_params(input_shapes, attrs, consts)[1]]


def _run_slice(inputs, attrs, outputs):
    shapes = [None if a is None else a.shape for a in inputs]
    slices, _ = _slice_params(shapes, attrs, inputs)
    np.copyto(outputs[0], inputs[0][slices])


def _bind_slice(inputs, attrs, outputs):
    """Bound once per plan: the output copied from the input's strided view (views.py)."""
    shapes = [None if a is None else a.shape for a in inputs]
    slices, _ = _slice_params(shapes, attrs, inputs)
    return bind_copies([inputs[0][slices]], [outputs[0]], src_base=inputs[0])


# ---- Pad ----

_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_params(input_shapes, attrs, consts):
    """(begin pads, end pads) per axis, full rank; negative values crop."""
    shape = tuple(input_shapes[0])
    rank = len(shape)
    mode = attrs.get("mode", "constant")
    opset = opset_of(attrs)
    if mode not in _PAD_MODES or (mode == "wrap" and opset < 19):
        modes = [m for m in _PAD_MODES if opset >= 19 or m != "wrap"]
        raise FormatError(f"attribute 'mode' must be one of {modes} at opset {opset}, found {mode!r}")
    if opset < 2 and "pads" not in attrs:
        raise refuse_opset("Pad-1 takes its pads as the attribute 'paddings'", opset)
    if _present(input_shapes, 1):  # opset >= 11
        pads = _const_ints(input_shapes, consts, 1, "pads")
        axes = _const_ints(input_shapes, consts, 3, "axes")
    else:
        pads, axes = int_list(attrs, "pads", None), None
        if pads is None:
            raise FormatError("'pads' is required (input 1, or an attribute before opset 11)")
    axes = list(range(rank)) if axes is None else _axes(axes, rank, "axes")
    if len(pads) != 2 * len(axes):
        raise FormatError(f"pads {pads} must hold 2 x {len(axes)} values (begins, then ends)")
    begin, end = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        begin[a], end[a] = pads[k], pads[k + len(axes)]
    for a in range(rank):
        # negative pads crop first; the other modes then read the cropped input (as onnxruntime does)
        dim = shape[a] + min(begin[a], 0) + min(end[a], 0)
        if dim < 0:
            raise FormatError(f"pads {pads} crop more than dimension {a} of {shape} holds")
        if mode != "constant" and (begin[a] > 0 or end[a] > 0):
            if dim == 0:
                raise FormatError(f"mode '{mode}' cannot pad axis {a} of an empty input {shape}")
            if mode == "reflect" and max(begin[a], end[a]) >= dim:
                raise FormatError(f"mode 'reflect' needs pads < dimension {a} of {shape} (after cropping: {dim}), "
                                  f"found {begin[a]} and {end[a]}")
            if mode == "wrap" and max(begin[a], end[a]) > dim:
                raise FormatError(f"mode 'wrap' needs pads <= dimension {a} of {shape} (after cropping: {dim}), "
                                  f"found {begin[a]} and {end[a]}")
    return mode, begin, end


def _infer_pad(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 4)
    if _present(input_shapes, 2) and math.prod(input_shapes[2]) != 1:
        raise FormatError(f"input 2 ('constant_value') must be a scalar, found shape {tuple(input_shapes[2])}")
    shape = tuple(input_shapes[0])
    _, begin, end = _pad_params(input_shapes, attrs, consts)
    return [tuple(d + b + e for d, b, e in zip(shape, begin, end))]


def _run_pad(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    shapes = [None if a is None else a.shape for a in inputs]
    mode, begin, end = _pad_params(shapes, attrs, inputs)
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for d, b, e in zip(x.shape, begin, end))
    core = x[crop]
    grow = [(max(b, 0), max(e, 0)) for b, e in zip(begin, end)]
    if mode == "constant":
        if len(inputs) > 2 and inputs[2] is not None and inputs[2].size:
            value = inputs[2].reshape(-1)[0]
        else:
            value = attrs.get("value", 0.0)
        out.fill(value)
        inner = tuple(slice(lo, lo + n) for (lo, _), n in zip(grow, core.shape))
        out[inner] = core
    else:
        np.copyto(out, np.pad(core, grow, mode=mode))


# ---- Squeeze / Unsqueeze ----

def _axes_input_or_attr(input_shapes, attrs, consts) -> list[int] | None:
    if _present(input_shapes, 1):  # opset >= 13
        return _const_ints(input_shapes, consts, 1, "axes")
    return int_list(attrs, "axes", None)


def _infer_squeeze(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 2)
    shape = tuple(input_shapes[0])
    axes = _axes_input_or_attr(input_shapes, attrs, consts)
    if axes is None:
        return [tuple(d for d in shape if d != 1)]
    axes = _axes(axes, len(shape), "axes")
    for a in axes:
        if shape[a] != 1:
            raise FormatError(f"cannot squeeze axis {a} of {shape}: its size is {shape[a]}, not 1")
    return [tuple(d for i, d in enumerate(shape) if i not in axes)]


def _infer_unsqueeze(input_shapes, attrs, consts):
    check_arity(input_shapes, 1, 2)
    shape = tuple(input_shapes[0])
    axes = _axes_input_or_attr(input_shapes, attrs, consts)
    if axes is None:
        raise FormatError("'axes' is required (input 1, or an attribute before opset 13)")
    rank = len(shape) + len(axes)
    axes = _axes(axes, rank, "axes")
    dims = iter(shape)
    return [tuple(1 if i in axes else next(dims) for i in range(rank))]


# ---- Gather ----

def _gather_indices(input_shapes, attrs, consts) -> tuple[int, np.ndarray]:
    shape = tuple(input_shapes[0])
    if not shape:
        raise FormatError("input 0 ('data') must have rank >= 1, found a scalar")
    axis = normalize_axis(attrs.get("axis", 0), len(shape))
    idx = consts[1] if len(consts) > 1 else None
    if idx is None:
        raise UnsupportedError("input 1 ('indices') must be a constant; gathering at computed indices is not "
                               "supported")
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise FormatError(f"input 1 ('indices') must be an integer tensor, found dtype {idx.dtype}")
    dim = shape[axis]
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise FormatError(f"indices {idx.reshape(-1)[:8].tolist()} out of range [{-dim}, {dim - 1}] "
                          f"for axis {axis} of {shape}")
    return axis, np.where(idx < 0, idx + dim, idx).astype(np.intp)


def _infer_gather(input_shapes, attrs, consts):
    check_arity(input_shapes, 2)
    shape = tuple(input_shapes[0])
    axis, idx = _gather_indices(input_shapes, attrs, consts)
    return [shape[:axis] + idx.shape + shape[axis + 1:]]


def _run_gather(inputs, attrs, outputs):
    x, raw = inputs[0], inputs[1]
    axis, idx = _gather_indices([x.shape, raw.shape], attrs, [x, raw])
    np.take(x, idx, axis, outputs[0])


def _bind_gather(inputs, attrs, outputs):
    """Bound once per plan: the indices are a constant (infer() refuses others), normalised here once."""
    x, raw = inputs[0], inputs[1]
    axis, idx = _gather_indices([x.shape, raw.shape], attrs, [x, raw])
    return np.take, (x, idx, axis, outputs[0])


# ---- Cast ----

def _infer_cast(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    if "to" not in attrs:
        raise FormatError("attribute 'to' is required")
    if opset_of(attrs) < 6 and isinstance(attrs["to"], str):
        raise refuse_opset(f"Cast-1 names its target type as a string ('to' = {attrs['to']!r})", opset_of(attrs))
    to = int_attr(attrs, "to", 1)
    if to not in CAST_TYPES:
        raise UnsupportedError(f"cast to ONNX element type {to} is not supported; supported: "
                               f"{sorted(CAST_TYPES)} (float, integer, bool types)")
    return [tuple(input_shapes[0])]


def _run_cast(inputs, attrs, outputs):
    x, out = inputs[0], outputs[0]
    target = CAST_TYPES[attrs["to"]]
    if target is np.float32 or (target is np.float64 and x.dtype == np.float32):
        np.copyto(out, x, casting="unsafe")
        return
    # the value the target type holds, back in float32; C's float -> int conversion (as onnxruntime's), NaN
    # and out-of-range values included, without numpy's warnings
    with np.errstate(invalid="ignore", over="ignore"):
        if target is np.bool_:
            np.not_equal(x, 0, out=out, casting="unsafe")
        else:
            np.copyto(out, x.astype(target), casting="unsafe")


# ---- contiguous blocks ----

def _split_blocks(input_shapes, attrs, consts, output_shapes) -> list[int | None] | None:
    """Element offset of each output in the input: each is one block when every dimension before the axis is 1."""
    shape = tuple(input_shapes[0])
    axis, sizes = _split_sizes(input_shapes, attrs, consts)
    if math.prod(shape[:axis]) != 1:
        return None
    inner = math.prod(shape[axis + 1:])
    starts = np.cumsum([0] + sizes[:-1]) * inner
    return [int(s) for s in starts]


def _slice_block(input_shapes, attrs, consts, output_shapes) -> list[int | None] | None:
    """[element offset of the output in the input] when the output is one block of it: one index on every axis
    before some axis a, a unit-step range on a, every index in order after a."""
    shape = tuple(input_shapes[0])
    slices, out = _slice_params(input_shapes, attrs, consts)
    if 0 in out:
        return None
    a = next((i for i, n in enumerate(out) if n != 1), len(out))
    offset, stride = 0, 1
    for i in range(len(shape) - 1, -1, -1):
        s = slices[i]
        step = 1 if s.step is None else s.step
        start = s.start if s.start is not None else (0 if step > 0 else shape[i] - 1)
        if i > a and (out[i] != shape[i] or (shape[i] > 1 and (step != 1 or start != 0))):
            return None
        if i == a and step != 1:
            return None
        offset += start * stride
        stride *= shape[i]
    return [offset]


def _concat_blocks(input_shapes, attrs, consts, output_shapes) -> list[int | None] | None:
    """Element offset of each input in the output: each is one block when every dimension before the axis is 1."""
    out = tuple(output_shapes[0])
    axis = normalize_axis(_concat_axis(attrs), len(out))
    if math.prod(out[:axis]) != 1:
        return None
    inner = math.prod(out[axis + 1:])
    starts = np.cumsum([0] + [s[axis] for s in input_shapes[:-1]]) * inner
    return [int(s) for s in starts]


# op -> (blocks(input shapes, attrs, consts, output shapes) -> element offsets or None, which side the offsets are
# of: "outputs" (each output is a block of input 0) or "inputs" (each input is a block of output 0))
BLOCKS = {"Split": (_split_blocks, "outputs"), "Slice": (_slice_block, "outputs"),
          "Concat": (_concat_blocks, "inputs")}


OPS = (
    OpDef("Split", _infer_split, _run_split, bind=_bind_split),
    OpDef("Slice", _infer_slice, _run_slice, bind=_bind_slice),
    OpDef("Pad", _infer_pad, _run_pad),
    OpDef("Squeeze", _infer_squeeze, run_copy_reshaped, inplace_ok=True, bind=bind_copy_reshaped),
    OpDef("Unsqueeze", _infer_unsqueeze, run_copy_reshaped, inplace_ok=True, bind=bind_copy_reshaped),
    OpDef("Gather", _infer_gather, _run_gather, bind=_bind_gather),
    OpDef("Cast", _infer_cast, _run_cast, inplace_ok=True),
)
