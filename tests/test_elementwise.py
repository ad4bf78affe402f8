"""Add, Sub, Mul, Div bound to runtime/ops/elementwise.py's row kernel (_binary_rows_kernel) on float32 row
broadcasts (binary_rows: same shapes, a scalar, one value per row such as an SE block's per-channel scale), against
numpy's ufunc bit for bit: either operand the row one, in place, IEEE edge values; other broadcasts and dtypes keep
numpy's ufunc."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.runtime.ops import elementwise as E

OPS = {op.name: op for op in E.OPS}
UFUNCS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
EDGE = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -3.5, 2.0])


def _values(rng, shape):
    v = (rng.standard_normal(shape) * 3).astype(np.float32)
    flat = v.reshape(-1)
    flat[: min(flat.size, EDGE.size)] = EDGE[: flat.size]  # zeros (x / 0), infinities, NaN, a subnormal
    return v


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("a_shape,b_shape,rows", [
    ((1, 37, 7, 7), (1, 37, 1, 1), (37, 49)),  # SE block: per-channel scale
    ((1, 37, 1, 1), (1, 37, 7, 7), (37, 49)),  # the row operand first (Sub, Div: its order kept)
    ((2, 5, 3, 4), (2, 5, 1, 1), (10, 12)),  # per (sample, channel)
    ((2, 5, 3, 4), (2, 1, 1, 1), (2, 60)),  # per sample
    ((3, 17), (3, 17), (1, 51)),  # same shapes
    ((1, 4), (4,), (1, 4)),  # a bias after a MatMul at batch 1
    ((2, 3, 5), (), (1, 30)),  # a scalar
    ((1,), (2, 3, 5), (1, 30))])
def test_row_broadcasts_run_the_kernel_with_numpys_bits(op, a_shape, b_shape, rows):
    rng = np.random.default_rng(len(a_shape) * 10 + len(b_shape))
    a, b = _values(rng, a_shape), _values(rng, b_shape)[::-1].copy() if b_shape else np.float32(rng.random())
    b = np.asarray(b, np.float32)
    out_shape = np.broadcast_shapes(a.shape, b.shape)
    assert E.binary_rows(a.shape, b.shape, out_shape) == rows
    out = np.full(out_shape, np.nan, np.float32)
    fn, args = OPS[op].bind([a, b], {}, [out])
    assert fn is E._binary_rows_kernel
    fn(*args)
    with np.errstate(all="ignore"):
        want = UFUNCS[op](a, b)
    np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))  # bits, NaN included


@pytest.mark.parametrize("op", ["Sub", "Div"])
@pytest.mark.parametrize("inplace", [0, 1])
def test_in_place(op, inplace):
    """The whole operand may be the output buffer itself (the planner runs these ops in place)."""
    rng = np.random.default_rng(4)
    x, s = _values(rng, (1, 9, 5, 3)), _values(rng, (1, 9, 1, 1))
    with np.errstate(all="ignore"):
        want = UFUNCS[op](x, s) if inplace == 0 else UFUNCS[op](s, x)
    ins = [x, s] if inplace == 0 else [s, x]
    fn, args = OPS[op].bind(ins, {}, [x])
    assert fn is E._binary_rows_kernel
    fn(*args)
    np.testing.assert_array_equal(x.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("op", ["Sub", "Div"])
@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_same_shapes_in_place(op, which):
    """Same shapes with an operand the output buffer (a residual Add after a conv): the loop over out and the other
    operand, numpy's bits; 67 values (vector body and tail)."""
    rng = np.random.default_rng(5)
    x, y = _values(rng, (1, 67)), _values(rng, (1, 67))[:, ::-1].copy()
    a, b = {"a": (x, y), "b": (y, x), "both": (x, x)}[which]
    with np.errstate(all="ignore"):
        want = UFUNCS[op](a, b)
    fn, args = OPS[op].bind([a, b], {}, [x])
    assert fn is E._binary_rows_kernel
    fn(*args)
    np.testing.assert_array_equal(x.view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("a,b", [
    (np.ones((2, 3, 4), np.float32), np.arange(4, dtype=np.float32)),  # trailing broadcast: numpy
    (np.ones((2, 3, 4), np.float32), np.ones((3, 1), np.float32)),  # middle broadcast: numpy
    (np.ones((2, 1, 4), np.float32), np.ones((1, 3, 1), np.float32)),  # both broadcast: numpy
    (np.ones((2, 3), np.int64), np.ones((2, 3), np.int64)),  # not float32: numpy
    (np.ones((4, 6), np.float32)[:, ::2], np.ones((4, 3), np.float32))])  # strided: numpy
def test_other_broadcasts_keep_numpy(a, b):
    out = np.empty(np.broadcast_shapes(a.shape, b.shape), a.dtype)
    fn, args = OPS["Mul"].bind([a, b], {}, [out])
    assert fn is np.multiply
    fn(*args)
    np.testing.assert_array_equal(out, a * b)
