"""The register-tiled 1x1 convolution and the matrix-vector product of a 1x1 plane (runtime/ops/conv_pointwise.py)
against float64 numpy and onnxruntime: edge shapes (fewer than a tile of channels or positions, tiles overlapping at
the ends, the last one or two positions as dot products), bands, the epilogue, and the path bind_conv picks."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops import conv_pointwise
from edgepack.runtime.ops.elementwise import ACT_CLIP
from edgepack.runtime.ops.slp import ready
from edgepack.runtime.weights import DenseWeight

ready(conv_pointwise.pointwise_kernel)  # the SLP build conv.py runs


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _xt(cin):
    return np.full((conv_pointwise.DOT_TAIL_MAX, cin), np.nan, np.float32)  # the kernel's scratch


@pytest.mark.parametrize("cin", [1, 3, 32, 129])
@pytest.mark.parametrize("cout", [1, 7, 8, 9, 17, 64])
@pytest.mark.parametrize("npos", [1, 2, 15, 16, 17, 18, 19, 34, 49, 100, 257])
def test_kernel_matches_float64(cin, cout, npos):
    rng = np.random.default_rng(cin * 1000 + cout * 10 + npos)
    x, w = _rand(rng, cin, npos), _rand(rng, cout, cin)
    out = np.full((cout, npos), np.nan, np.float32)
    conv_pointwise.pointwise_kernel(x, w, out, 0, npos, _xt(cin))
    want = w.astype(np.float64) @ x.astype(np.float64)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(cin))


@pytest.mark.parametrize("npos", [300, 290, 289])  # tiles overlapping at the end; the last 2 or 1 as dot products
def test_kernel_writes_only_its_range_and_bands_give_the_same_bits(npos):
    rng = np.random.default_rng(1)
    cin, cout = 40, 20
    x, w = _rand(rng, cin, npos), _rand(rng, cout, cin)
    whole = np.empty((cout, npos), np.float32)
    conv_pointwise.pointwise_kernel(x, w, whole, 0, npos, _xt(cin))
    part = np.full((cout, npos), np.nan, np.float32)
    conv_pointwise.pointwise_kernel(x, w, part, 37, 150, _xt(cin))
    assert np.isnan(part[:, :37]).all() and np.isnan(part[:, 150:]).all()
    np.testing.assert_array_equal(part[:, 37:150], whole[:, 37:150])  # tiles placed differently: the same sums
    for p0, p1 in ((0, 7), (7, 23), (23, npos - 1), (npos - 1, npos)):
        conv_pointwise.pointwise_kernel(x, w, part, p0, p1, _xt(cin))
    np.testing.assert_array_equal(part, whole)  # the dot-product positions are the plane's, whatever the bands


def test_read_only_inputs_and_weights():
    rng = np.random.default_rng(6)
    x, w = _rand(rng, 1, 12, 10, 12), _rand(rng, 16, 12, 1, 1)
    want = None
    for ro_x in (False, True):
        for ro_w in (False, True):
            xs, ws = x.copy(), w.copy()
            xs.flags.writeable, ws.flags.writeable = not ro_x, not ro_w
            prepared = conv_mod.prepare_conv(DenseWeight(ws), 1)
            out = np.empty((1, 16, 10, 12), np.float32)
            fn, args = conv_mod.bind_conv(xs, prepared, None, {}, out)
            assert fn is conv_pointwise.run
            fn(*args)
            want = out.copy() if want is None else want
            np.testing.assert_array_equal(out, want)


def test_kernel_special_values():
    rng = np.random.default_rng(2)
    x, w = _rand(rng, 5, 49), _rand(rng, 9, 5)
    x[0, 3], x[1, 20], w[4, 2], x[2, 48], x[3, 48] = np.inf, np.nan, 0.0, np.inf, -np.inf  # 48: a dot product
    out = np.empty((9, 49), np.float32)
    conv_pointwise.pointwise_kernel(x, w, out, 0, 49, _xt(5))
    with np.errstate(invalid="ignore"):
        want = (w.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_allclose(out[~np.isnan(out)], want[~np.isnan(want)], rtol=1e-5, atol=1e-5)


def _ort(x, w, b, act):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1])]
    if act == "silu":
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    elif act == "relu":
        nodes += [helper.make_node("Relu", ["c"], ["y"])]
    else:
        nodes[0].output[0] = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _epilogue(act):
    """bind_conv's act for the activation _ort puts after the conv (None, "relu" or "silu")."""
    if act == "relu":
        return (ACT_CLIP, 0.0, np.inf)
    if act == "silu":
        return conv_mod.EpilogueChain(np.float32([[conv_mod.CH_SILU, 0, 0, 0]]), ("s", "m"))
    return None


@pytest.mark.parametrize("shape", [(1, 32, 80, 80), (2, 48, 13, 17), (1, 3, 10, 10), (1, 256, 10, 10)])
@pytest.mark.parametrize("cout", [8, 18, 64])
@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_bind_conv_takes_the_tiled_kernel_and_matches_onnxruntime(shape, cout, act):
    rng = np.random.default_rng(3)
    x = _rand(rng, *shape)
    w, b = _rand(rng, cout, shape[1], 1, 1), _rand(rng, cout)
    prepared = conv_mod.prepare_conv(DenseWeight(w), 1)
    out = np.full((shape[0], cout) + shape[2:], np.nan, np.float32)
    fn, args = conv_mod.bind_conv(x, prepared, b, {}, out, act=_epilogue(act))
    assert fn is conv_pointwise.run  # 100+ positions, 8+ channels
    fn(*args)
    np.testing.assert_allclose(out, _ort(x, w, b, act), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,cout", [((1, 64, 5, 5), 64), ((1, 96, 52, 52), 4), ((1, 16, 3, 3), 16)])
def test_small_planes_and_few_channels_keep_blas(shape, cout):
    rng = np.random.default_rng(4)
    x = _rand(rng, *shape)
    w, b = _rand(rng, cout, shape[1], 1, 1), _rand(rng, cout)
    out = np.empty((1, cout) + shape[2:], np.float32)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b, {}, out)
    assert fn in (conv_mod._gemm_1x1_run, conv_mod._gemm_1x1_bands_run)
    fn(*args)
    np.testing.assert_allclose(out, _ort(x, w, b, None), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 64, 7, 7), (2, 129, 4, 4), (1, 33, 9, 9), (1, 8, 6, 3)])
@pytest.mark.parametrize("cout", [8, 13, 64])
@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_planes_of_16k_plus_1_or_2_take_the_tiled_kernel(shape, cout, act):
    # 49 = 3 x 16 + 1, 16, 81 = 5 x 16 + 1, 18 = 16 + 2: tiles, then the last positions as dot products
    rng = np.random.default_rng(7)
    x = _rand(rng, *shape)
    w, b = _rand(rng, cout, shape[1], 1, 1), _rand(rng, cout)
    fused = _epilogue(act)
    out = np.full((shape[0], cout) + shape[2:], np.nan, np.float32)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b, {}, out, act=fused)
    assert fn is conv_pointwise.run
    fn(*args)
    np.testing.assert_allclose(out, _ort(x, w, b, act), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nb,cin,cout", [(1, 512, 1280), (2, 129, 7), (1, 1, 1), (3, 3, 17), (1, 256, 64)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_1x1_plane_is_a_matrix_vector_product(nb, cin, cout, bias, act):
    rng = np.random.default_rng(nb * 7 + cin + cout)
    x = _rand(rng, nb, cin, 1, 1)
    w, b = _rand(rng, cout, cin, 1, 1), _rand(rng, cout)
    fused = _epilogue(act)
    out = np.full((nb, cout, 1, 1), np.nan, np.float32)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b if bias else None, {}, out,
                                  act=fused)
    assert fn is conv_pointwise.run_gemv
    fn(*args)
    want = np.einsum("oc,nc->no", w[:, :, 0, 0].astype(np.float64), x[:, :, 0, 0].astype(np.float64))
    want += b.astype(np.float64) if bias else 0.0
    if act == "relu":
        want = np.maximum(want, 0.0)
    elif act == "silu":
        want = want / (1.0 + np.exp(-want))
    np.testing.assert_allclose(out[:, :, 0, 0], want, rtol=1e-5, atol=1e-5 * np.sqrt(cin))
    x.flags.writeable = w.flags.writeable = False  # a caller's read-only input, weights mapped from the file
    out2 = np.empty_like(out)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b if bias else None, {}, out2,
                                  act=fused)
    fn(*args)
    np.testing.assert_array_equal(out2, out)


def test_parallel_plans_keep_blas():
    rng = np.random.default_rng(5)
    x, w = _rand(rng, 1, 32, 20, 20), _rand(rng, 16, 32, 1, 1)
    out = np.empty((1, 16, 20, 20), np.float32)
    fn, _ = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), None, {}, out, parallel=True)
    assert fn is not conv_pointwise.run
