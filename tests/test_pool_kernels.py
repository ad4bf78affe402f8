"""MaxPool's two-pass kernel (runtime/ops/pool.py _maxpool2d_kernel) against a window-by-window numpy reference:
SPP's large stride-1 windows, strides, dilations, uneven pads, ceil_mode, NaN (never wins, as onnxruntime), and
the bound step using the plan's scratch."""
import numpy as np
import pytest

from edgepack.runtime.ops import pool


def _reference(x, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow):
    n, c, h, w = x.shape
    out = np.full((n, c, oh, ow), -np.inf, np.float32)
    for y in range(oh):
        for z in range(ow):
            for i in range(kh):
                for j in range(kw):
                    iy, ix = y * sh - ph + i * dh, z * sw - pw + j * dw
                    if 0 <= iy < h and 0 <= ix < w:
                        v = x[:, :, iy, ix]
                        out[:, :, y, z] = np.where(v > out[:, :, y, z], v, out[:, :, y, z])  # NaN never wins
    return out


CASES = [
    ((1, 3, 13, 13), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}),
    ((1, 3, 13, 13), {"kernel_shape": [9, 9], "pads": [4, 4, 4, 4]}),
    ((1, 3, 13, 13), {"kernel_shape": [13, 13], "pads": [6, 6, 6, 6]}),
    ((2, 2, 11, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 12, 10), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [2, 1, 0, 1], "ceil_mode": 1}),
    ((1, 2, 10, 11), {"kernel_shape": [2, 3], "dilations": [2, 3], "pads": [1, 1, 1, 1]}),
    ((1, 1, 3, 4), {"kernel_shape": [3, 3], "dilations": [2, 2], "pads": [2, 2, 2, 2]}),  # windows of padding only
    ((1, 2, 1, 17), {"kernel_shape": [1, 5], "strides": [1, 2], "pads": [0, 2, 0, 2]}),
    ((1, 4, 46, 46), {"kernel_shape": [3, 3], "strides": [2, 2]}),  # MTCNN O-Net: rows long enough to vectorise
    ((1, 2, 21, 21), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),  # the last window hangs over
    ((1, 2, 9, 70), {"kernel_shape": [3, 3], "strides": [3, 3], "pads": [1, 1, 1, 1]}),  # stride 3
    ((2, 3, 5, 81), {"kernel_shape": [2, 4], "strides": [1, 1], "pads": [1, 3, 0, 2]}),  # stride 1, uneven pads
]


@pytest.mark.parametrize("shape,attrs", CASES)
def test_maxpool_matches_window_reference(shape, attrs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::7] = np.nan
    (out_shape,) = pool._infer_maxpool([shape], attrs, [None])
    got = np.empty(out_shape, np.float32)
    pool._run_maxpool([x], attrs, [got])
    g = pool._geometry(shape, attrs)
    kh, kw, sh, sw, dh, dw, ph, pw = g[:8]
    ref = _reference(x, kh, kw, sh, sw, dh, dw, ph, pw, g[10], g[11])
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("strides,kernel,need", [
    ([1, 1], "_maxpool_s1_kernel", 2 * 10 * 11 - 4 + 6 * 11),  # the padded plane (6 + 4) x (7 + 4), hm, vm
    ([2, 2], "_maxpool_s2_kernel", 4 * 5 * 6 + 2 * 6 + 4),  # four phases of 5 x 6 (3 x 4 outputs + 2), the wide acc
    ([3, 3], "_maxpool2d_kernel", 7 + 4 + 7)])  # the padded row the 5-wide windows read (every 3rd of 7), u
def test_maxpool_bound_step_reads_its_scratch(strides, kernel, need):
    attrs = {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2], "strides": strides}
    x = np.random.default_rng(1).standard_normal((1, 4, 6, 7)).astype(np.float32)
    maxpool = next(o for o in pool.OPS if o.name == "MaxPool")
    assert maxpool.scratch_bytes([x.shape], attrs) == 4 * need
    scratch = np.full(4 * need + 8, 255, np.uint8)  # garbage, and more than needed
    (out_shape,) = pool._infer_maxpool([x.shape], attrs, [None])
    got = np.empty(out_shape, np.float32)
    fn, args = maxpool.bind([x], attrs, [got], scratch)
    assert fn is getattr(pool, kernel)
    fn(*args)
    fn(*args)  # again on the same scratch: the padding written by the first call is still -inf
    np.testing.assert_array_equal(got, _reference(x, 5, 5, *strides, 1, 1, 2, 2, *out_shape[2:]))
    assert (scratch[4 * need:] == 255).all()


@pytest.mark.parametrize("shape,attrs", [
    ((1, 128, 10, 10), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}),  # YOLOv8's SPPF
    ((1, 3, 1, 1), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),  # a 1-pixel plane
    ((2, 3, 1, 9), {"kernel_shape": [1, 4], "pads": [0, 3, 0, 0]}),  # one row, pads at the start only
    ((1, 2, 7, 5), {"kernel_shape": [1, 1]}),  # 1x1: a copy (NaN -> -inf, as the other kernels)
    ((1, 2, 8, 9), {"kernel_shape": [4, 2], "pads": [0, 0, 3, 1], "ceil_mode": 1}),  # pads at the end only
    ((1, 3, 17), {"kernel_shape": [4], "pads": [1, 2]}),  # 1-D
])
def test_maxpool_stride1_kernel_equals_the_row_kernel(shape, attrs):
    """The whole-plane stride-1 kernel gives the bits of the row-by-row two-pass kernel (and of the window
    reference), NaN and all-NaN windows included."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::5] = np.nan
    x.reshape(-1)[: x.shape[-1]] = np.nan  # a whole row
    g = pool._geometry(shape, attrs)
    assert pool._is_stride1(g)
    (out_shape,) = pool._infer_maxpool([shape], attrs, [None])
    got = np.full(out_shape, 7.0, np.float32)
    pool._run_maxpool([x], attrs, [got])
    want = np.full(out_shape, 7.0, np.float32)
    xp, wp = pool._planes(x), pool._planes(want)
    kh, kw, sh, sw, dh, dw, ph, pw = g[:8]
    pool._maxpool2d_kernel(xp, wp, np.empty(pool._maxpool_row_floats(g), np.float32), kh, kw, sh, sw, dh, dw, ph, pw)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if len(shape) == 4:
        np.testing.assert_array_equal(got, _reference(x, kh, kw, sh, sw, dh, dw, ph, pw, g[10], g[11]))


@pytest.mark.parametrize("shape", [(1, 200, 2, 96), (2, 3, 7, 7), (1, 5, 1), (1, 4, 3, 1000), (3, 2, 1, 1)])
def test_global_average_pool_matches_float64_mean(shape):
    """GlobalAveragePool's row means (float64 sums in SIMD lanes) against numpy's float64 mean, with values of mixed
    magnitudes; the output is the float32 rounding of the exact mean to within one float32 rounding."""
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = (rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)).astype(np.float32)
    out = np.full(shape[:2] + (1,) * (len(shape) - 2), np.nan, np.float32)
    next(o for o in pool.OPS if o.name == "GlobalAveragePool").run([x], {}, [out])
    want = x.astype(np.float64).reshape(shape[0] * shape[1], -1).mean(axis=1)
    got = out.reshape(-1).astype(np.float64)
    scale = np.abs(x.astype(np.float64)).reshape(shape[0] * shape[1], -1).max(axis=1)
    assert (np.abs(got - want) <= 1e-7 * scale + np.abs(want) * 2 ** -23).all()


def _avg_reference(x, kh, kw, sh, sw, dh, dw, ph, pw, oh, ow, h_lim, w_lim, include_pad):
    """Window by window in float64: the mean over the window's input elements, or with include_pad the sum over its
    elements inside the padded input (h_lim, w_lim: input plus end pads)."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, oh, ow))
    for y in range(oh):
        for z in range(ow):
            total, inside, padded = np.zeros((n, c)), 0, 0
            for i in range(kh):
                for j in range(kw):
                    iy, ix = y * sh - ph + i * dh, z * sw - pw + j * dw
                    if iy < h_lim and ix < w_lim:
                        padded += 1
                    if 0 <= iy < h and 0 <= ix < w:
                        total += x[:, :, iy, ix]
                        inside += 1
            d = padded if include_pad else inside
            out[:, :, y, z] = total / d if d else 0.0
    return out


AVG_CASES = [
    ((1, 480, 3, 80), {"kernel_shape": [3, 2], "strides": [3, 2]}),  # PP-OCRv4 rec
    ((2, 3, 11, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 3, 11, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ((1, 2, 12, 10), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [2, 1, 0, 1], "ceil_mode": 1}),
    ((1, 2, 12, 10), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [2, 1, 0, 1], "ceil_mode": 1,
                      "count_include_pad": 1}),
    ((1, 2, 10, 40), {"kernel_shape": [2, 3], "dilations": [2, 3], "pads": [1, 1, 1, 1]}),
    ((1, 2, 1, 17), {"kernel_shape": [1, 5], "strides": [1, 2], "pads": [0, 2, 0, 2], "count_include_pad": 1}),
]


@pytest.mark.parametrize("shape,attrs", AVG_CASES)
def test_avgpool_matches_window_reference(shape, attrs):
    """AveragePool's two-pass kernel against the float64 window mean, with and without count_include_pad, ceil_mode
    windows hanging past the end, dilations; through the plain runner and the bound step on the plan's scratch."""
    rng = np.random.default_rng(len(attrs) + shape[-1])
    x = rng.standard_normal(shape).astype(np.float32)
    (out_shape,) = pool._infer_avgpool([shape], attrs, [None])
    g = pool._geometry(shape, attrs)
    kh, kw, sh, sw, dh, dw, ph, pw, ph_end, pw_end = g[:10]
    ref = _avg_reference(x, kh, kw, sh, sw, dh, dw, ph, pw, g[10], g[11], shape[2] + ph_end, shape[3] + pw_end,
                         bool(attrs.get("count_include_pad", 0)))
    got = np.full(out_shape, np.nan, np.float32)
    pool._run_avgpool([x], attrs, [got])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    avgpool = next(o for o in pool.OPS if o.name == "AveragePool")
    need = avgpool.scratch_bytes([x.shape], attrs)
    scratch = np.full(need + 8, 255, np.uint8)
    bound = np.full(out_shape, np.nan, np.float32)
    fn, args = avgpool.bind([x], attrs, [bound], scratch)
    fn(*args)
    np.testing.assert_array_equal(bound, got)
    assert (scratch[need:] == 255).all()


@pytest.mark.parametrize("shape,attrs", [
    ((1, 4, 46, 46), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),  # mtcnn O-Net
    ((2, 3, 11, 10), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),  # odd rows, even columns
    ((1, 2, 9, 12), {"kernel_shape": [2, 3], "strides": [2, 2], "pads": [1, 0, 0, 2], "ceil_mode": 1}),
    ((1, 2, 13, 8), {"kernel_shape": [5, 4], "strides": [2, 2], "pads": [2, 3, 2, 0]}),  # pads of 3 > stride
    ((1, 3, 1, 1), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),  # a 1-pixel plane
    ((1, 2, 2, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
])
def test_maxpool_stride2_kernel_equals_the_row_kernel(shape, attrs):
    """The phased whole-plane stride-2 kernel gives the bits of the row-by-row kernel and the window reference:
    NaN (single and a whole row), -0 against +0 in one window (which one wins follows the row kernel's order),
    uneven and large pads, ceil_mode's hanging last window; run twice on its scratch."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::5] = np.nan
    x.reshape(-1)[: x.shape[-1]] = np.nan  # a whole row
    x.flat[1::6] = 0.0
    x.flat[2::6] = -0.0
    g = pool._geometry(shape, attrs)
    assert pool._is_stride2(g)
    (out_shape,) = pool._infer_maxpool([shape], attrs, [None])
    got = np.full(out_shape, 7.0, np.float32)
    maxpool = next(o for o in pool.OPS if o.name == "MaxPool")
    scratch = np.full(maxpool.scratch_bytes([shape], attrs), 255, np.uint8)
    fn, args = maxpool.bind([x], attrs, [got], scratch)
    assert fn is pool._maxpool_s2_kernel
    fn(*args)
    fn(*args)
    want = np.full(out_shape, 7.0, np.float32)
    kh, kw, sh, sw, dh, dw, ph, pw = g[:8]
    pool._maxpool2d_kernel(pool._planes(x), pool._planes(want), np.empty(pool._maxpool_row_floats(g), np.float32),
                           kh, kw, sh, sw, dh, dw, ph, pw)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(got, _reference(x, kh, kw, sh, sw, dh, dw, ph, pw, g[10], g[11]))
