"""Split, Slice, Concat and Transpose bound once per plan as copies between views (runtime/ops/views.py): against numpy's
slicing, concatenation and transposition on contiguous slabs (flat copies) and strided ones (batch > 1, inner axes, steps of 2 and
-3), ranks 1 to 5 (rank 5 falls back to the plain runner), empty parts, and buffers that stay bound across runs."""
import numpy as np
import pytest

from edgepack.runtime.ops import registry, shape, tensor, views


def _op(name):
    return next(o for o in tensor.OPS + shape.OPS if o.name == name)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape_,axis,sizes", [
    ((1, 32, 8, 8), 1, [16, 16]),  # YOLOv8's C2f split: contiguous slabs
    ((2, 6, 5, 3), 1, [1, 0, 5]),  # batch 2: strided slabs; an empty part
    ((1, 4, 6, 7), 3, [2, 5]),  # the last axis
    ((5, 3), 0, [1, 2, 2]),
    ((9,), 0, [4, 5]),
    ((2, 3, 4, 5, 6), 2, [1, 3]),  # rank 5, strided slabs: no kernel here, the runner
])
def test_split_bound_equals_numpy(shape_, axis, sizes):
    x = _rand(shape_)
    split = _op("Split")
    attrs = {"axis": axis, "split": sizes}
    outs = [np.full(s, np.nan, np.float32) for s in split.infer([x.shape], attrs, [None])]
    step = split.bind([x], attrs, outs)
    if len(shape_) > 4:
        assert step is None
        split.run([x], attrs, outs)
    else:
        fn, args = step
        x[...] = _rand(shape_, 1)  # the views are bound: a run reads the buffer's current values
        fn(*args)
    for got, want in zip(outs, np.split(x, np.cumsum(sizes)[:-1], axis=axis)):
        np.testing.assert_array_equal(got, want)


S = slice
BIG = 2**62  # "to the end"


@pytest.mark.parametrize("shape_,starts,ends,axes,steps,want", [
    ((1, 3, 16, 16), [0], [BIG], [2], [2], (S(None), S(None), S(0, None, 2))),  # YOLOX's Focus: rows step 2
    ((1, 3, 8, 16), [1], [BIG], [3], [2], (S(None), S(None), S(None), S(1, None, 2))),  # then columns step 2
    ((2, 4, 5, 6), [3, -1], [0, -7], [1, 3], [-1, -3], (S(None), S(3, 0, -1), S(None), S(-1, None, -3))),
    ((7, 9), [1, 2], [6, 9], [0, 1], [1, 1], (S(1, 6), S(2, 9))),  # contiguous rows of a 2-D array
    ((10,), [2], [9], [0], [3], (S(2, 9, 3),)),
    ((2, 2, 3, 4, 5), [1], [3], [3], [1], (S(None),) * 3 + (S(1, 3),)),  # rank 5, strided: the runner
])
def test_slice_bound_equals_numpy(shape_, starts, ends, axes, steps, want):
    x = _rand(shape_)
    sl = _op("Slice")
    consts = [np.array(v, np.int64) for v in (starts, ends, axes, steps)]
    (out_shape,) = sl.infer([x.shape] + [c.shape for c in consts], {}, [None] + consts)
    out = np.full(out_shape, np.nan, np.float32)
    step = sl.bind([x] + consts, {}, [out])
    if len(shape_) > 4:
        assert step is None
        sl.run([x] + consts, {}, [out])
    else:
        fn, args = step
        fn(*args)
    np.testing.assert_array_equal(out, x[want])


@pytest.mark.parametrize("shapes,axis", [
    ([(1, 16, 4, 4), (1, 8, 4, 4), (1, 16, 4, 4)], 1),  # contiguous slabs of the output
    ([(2, 3, 4, 4), (2, 1, 4, 4)], 1),  # batch 2: strided slabs
    ([(1, 2, 3, 1), (1, 2, 3, 4)], -1),  # the last axis, negative
    ([(1, 6, 2704), (1, 6, 676)], 2),
    ([(4,), (0,), (3,)], 0),  # an empty input
    ([(2, 1, 2, 2, 2), (2, 3, 2, 2, 2)], 1),  # rank 5, strided slabs: the runner
])
def test_concat_bound_equals_numpy(shapes, axis):
    xs = [_rand(s, i) for i, s in enumerate(shapes)]
    cat = _op("Concat")
    attrs = {"axis": axis}
    (out_shape,) = cat.infer(shapes, attrs, [None] * len(shapes))
    out = np.full(out_shape, np.nan, np.float32)
    step = cat.bind(xs, attrs, [out])
    if len(shapes[0]) > 4:
        assert step is None
        cat.run(xs, attrs, [out])
    else:
        fn, args = step
        fn(*args)
    np.testing.assert_array_equal(out, np.concatenate(xs, axis=axis))


def test_pairs_refuse_other_dtypes():
    """An int64 input (a shape tensor) has no kernel here: bind declines and the runner runs."""
    assert views.bind_copies([np.zeros(3, np.int64)], [np.zeros(3, np.float32)]) is None
    assert registry.NO_STEP != views.bind_copies([np.zeros(3, np.float32)], [np.zeros(3, np.float32)])


def test_views_outside_their_base_are_refused():
    """The strided kernel does no bounds test: a view that is not inside the base it is said to come from gets no
    kernel (bind declines)."""
    base = np.zeros((2, 8, 4, 4), np.float32)
    other = np.zeros((2, 8, 4, 4), np.float32)
    dst = np.empty((2, 4, 4, 4), np.float32)
    assert views.bind_copies([other[:, ::2]], [dst], src_base=base) is None
    assert views.bind_copies([base[:, ::2]], [dst], src_base=None) is None
    fn, args = views.bind_copies([base[:, ::2]], [dst], src_base=base)
    base[...] = _rand(base.shape)
    fn(*args)
    np.testing.assert_array_equal(dst, base[:, ::2])


@pytest.mark.parametrize("shape_,perm", [
    ((22, 2, 1, 512), [0, 2, 1, 3]),  # ddddocr's LSTM output: an axis of size 1 moved, the memory order kept
    ((1, 64, 8, 22), [3, 0, 1, 2]),  # ddddocr's features into the LSTM: a real transpose
    ((2, 3, 4), None),  # default: the axes reversed
    ((5, 7), [1, 0]),
    ((3,), [0]),
    ((1, 3, 1, 5), [2, 0, 3, 1]),
    ((2, 3, 4, 5, 6), [0, 2, 1, 3, 4]),  # rank 5: the runner
])
def test_transpose_bound_equals_numpy(shape_, perm):
    x = _rand(shape_)
    op = _op("Transpose")
    attrs = {} if perm is None else {"perm": perm}
    (oshape,) = op.infer([x.shape], attrs, [None])
    out = np.full(oshape, np.nan, np.float32)
    step = op.bind([x], attrs, [out])
    if len(shape_) > 4:
        assert step is None
        op.run([x], attrs, [out])
    else:
        fn, args = step
        x[...] = _rand(shape_, 1)  # bound views: a run reads the buffer's current values
        fn(*args)
    np.testing.assert_array_equal(out, np.transpose(x, perm))
