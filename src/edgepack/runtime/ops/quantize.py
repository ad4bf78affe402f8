"""Run-time activation quantisation as models quantised by onnxruntime's quantize_dynamic do it:
DynamicQuantizeLinear (x -> uint8 y, its scale and zero point, from the range of x) and DequantizeLinear (y back to
float32: (y - zero point) * scale). The packer's import (packer/dequantize.py) keeps the pair in front of the float
ops it makes of MatMulInteger / ConvInteger / DynamicQuantizeLSTM, so that they multiply the activation rounded to
the same 256 levels as the quantised model.

Every value lives in a float32 buffer (runtime/ops/tensor.py): y and the zero point hold integers 0..255 exactly.

DynamicQuantizeLinear follows onnxruntime's kernel (which the ONNX text describes, save for a constant input):
lo = min(0, min(x)), hi = max(0, max(x)), scale = (hi - lo) / 255 in float32 (1 when hi == lo, where the ONNX text
would divide by zero), zero point = round(clip(-lo / scale, 0, 255)), y = clip(round(x / scale) + zero point, 0, 255),
rounding half to even.
"""
from __future__ import annotations

import numpy as np

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.registry import check_arity, int_attr, normalize_axis, OpDef

_QMAX = np.float32(255.0)


def _infer_dynamic_quantize(input_shapes, attrs, consts):
    check_arity(input_shapes, 1)
    return [tuple(input_shapes[0]), (), ()]


def quantize_params(x: np.ndarray) -> tuple[np.float32, np.float32]:
    """(scale, zero point) of DynamicQuantizeLinear for x (float32, any shape, at least one element)."""
    lo = min(np.float32(x.min()), np.float32(0.0))
    hi = max(np.float32(x.max()), np.float32(0.0))
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / _QMAX)
    with np.errstate(invalid="ignore"):
        zp = np.float32(np.rint(np.clip(np.float32(0.0) - lo / scale, np.float32(0.0), _QMAX)))
    return scale, zp


def _run_dynamic_quantize(inputs, attrs, outputs):
    x = inputs[0]
    y, y_scale, y_zp = outputs
    if x.size == 0:  # onnxruntime: nothing to quantise, scale 1 and zero point 0 (min = max = 0)
        scale, zp = np.float32(1.0), np.float32(0.0)
    else:
        scale, zp = quantize_params(x)
    if y is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            np.divide(x, scale, out=y)
            np.rint(y, out=y)
            y += zp
            np.clip(y, np.float32(0.0), _QMAX, out=y)
    if y_scale is not None:
        y_scale[...] = scale
    if y_zp is not None:
        y_zp[...] = zp


def _dequantize_axis(input_shapes, attrs) -> int | None:
    """None for a per-tensor scale, else the axis its one value per index runs along."""
    if int_attr(attrs, "block_size", 0) != 0:
        raise UnsupportedError(f"attribute 'block_size' = {attrs['block_size']} (blocked quantisation) is not "
                               f"supported; only per-tensor and per-axis scales")
    x, s = tuple(input_shapes[0]), tuple(input_shapes[1])
    zp = tuple(input_shapes[2]) if len(input_shapes) > 2 and input_shapes[2] is not None else None
    if zp is not None and zp != s:
        raise FormatError(f"x_zero_point has shape {zp}, x_scale {s}: they must be the same")
    if len(s) == 0 or s == (1,):
        return None
    if len(s) != 1:
        raise FormatError(f"x_scale must be a scalar or 1-D, found shape {s}")
    axis = normalize_axis(int_attr(attrs, "axis", 1), len(x))
    if x[axis] != s[0]:
        raise FormatError(f"x_scale has {s[0]} values, but x {x} has {x[axis]} along axis {axis}")
    return axis


def _infer_dequantize(input_shapes, attrs, consts):
    check_arity(input_shapes, 2, 3)
    _dequantize_axis(input_shapes, attrs)
    return [tuple(input_shapes[0])]


def _run_dequantize(inputs, attrs, outputs):
    x, scale = inputs[0], inputs[1]
    zp = inputs[2] if len(inputs) > 2 else None
    out = outputs[0]
    # infer() validated the shapes and attributes (OpDef: run does not re-validate); per-axis iff a 1-D scale of > 1
    if scale.ndim == 1 and scale.shape[0] != 1:
        axis = normalize_axis(int_attr(attrs, "axis", 1), x.ndim)
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = None if zp is None else zp.reshape(shape)
    scale = scale.astype(np.float32, copy=False)
    with np.errstate(invalid="ignore", over="ignore"):
        if zp is None:
            np.multiply(x, scale, out=out)
        else:
            np.subtract(x, zp.astype(np.float32, copy=False), out=out)
            np.multiply(out, scale, out=out)


OPS = (
    OpDef("DynamicQuantizeLinear", _infer_dynamic_quantize, _run_dynamic_quantize),
    OpDef("DequantizeLinear", _infer_dequantize, _run_dequantize, inplace_ok=True),
)
