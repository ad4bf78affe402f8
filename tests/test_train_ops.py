"""Tests for the training engine (packer/train/ops.py, kernels.py, optim.py, engine.py): every op's backward against
central finite differences in float64, forwards against onnxruntime and plain numpy loops, the im2col adjoint, the
optimizers against their formulas, and the Trainer (whole-graph gradients, learning, determinism, export, errors)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.graph import Graph, Node, ValueInfo
from edgepack.packer.onnx_io import graph_to_onnx
from edgepack.packer.train import kernels
from edgepack.packer.train.engine import Trainer, copy_graph, init_parameters, trainable_parameters
from edgepack.packer.train.mlp import mlp_graph
from edgepack.packer.train.ops import OPS, Context, softmax_cross_entropy
from edgepack.packer.train.optim import SGD, Adam, cosine, make_schedule, step_decay
from edgepack.packer.verify import session
from edgepack.runtime.errors import UnsupportedError

EPS = 1e-6


def _op(op: str, n_inputs: int, attrs: dict | None = None, inits: dict | None = None, n_outputs: int = 1):
    node = Node(op, "n0", [f"x{i}" for i in range(n_inputs)], ["y"] + [f"y{i}" for i in range(1, n_outputs)],
                attrs or {})
    graph = Graph("g", [ValueInfo("x0", "float64", ["N"])], [ValueInfo("y", "float64", [])], [node], inits or {})
    return OPS[op](node, graph)


def _run(op, xs, training, seed=7):
    ctx = Context(training, np.random.default_rng(seed))
    outs, cache = op.forward([None if x is None else x.copy() for x in xs], ctx)
    return outs[0], cache


def _check_grads(op, xs, wrt, training=False, rtol=1e-5, atol=1e-8):
    """Backward of L = sum(y * r) against central differences, entry by entry, for the inputs in wrt."""
    y, cache = _run(op, xs, training)
    r = np.random.default_rng(1).standard_normal(y.shape)
    needs = [i in wrt for i in range(len(xs))]
    grads = op.backward(cache, [r, None, None], needs)
    for i in wrt:
        num = np.zeros_like(xs[i])
        for idx in np.ndindex(xs[i].shape):
            plus = [None if x is None else x.copy() for x in xs]
            minus = [None if x is None else x.copy() for x in xs]
            plus[i][idx] += EPS
            minus[i][idx] -= EPS
            num[idx] = (np.sum(_run(op, plus, training)[0] * r) - np.sum(_run(op, minus, training)[0] * r)) / (2 * EPS)
        assert grads[i] is not None and grads[i].shape == xs[i].shape, f"input {i}"
        np.testing.assert_allclose(grads[i], num, rtol=rtol, atol=atol, err_msg=f"input {i}")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape)


# ---------------------------------------------------------------------------------------------- per-op gradients

@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (4,), (1, 4), (3, 4), ()])
def test_gemm_gradients(trans_a, trans_b, c_shape):
    a = _rand(*((5, 3) if trans_a else (3, 5)))
    b = _rand(*((4, 5) if trans_b else (5, 4)), seed=1)
    attrs = {"transA": ("int", trans_a), "transB": ("int", trans_b), "alpha": ("float", 0.7),
             "beta": ("float", 1.3)}
    xs = [a, b] + ([] if c_shape is None else [np.asarray(_rand(*c_shape, seed=2))])
    op = _op("Gemm", len(xs), attrs)
    y, _ = _run(op, xs, False)
    am, bm = (a.T if trans_a else a), (b.T if trans_b else b)
    want = 0.7 * am @ bm + (0 if c_shape is None else 1.3 * xs[2])
    np.testing.assert_allclose(y, want, rtol=1e-12)
    _check_grads(op, xs, list(range(len(xs))))


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 5)),
                                   ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (2, 4, 2))])
def test_matmul_gradients(sa, sb):
    xs = [_rand(*sa), _rand(*sb, seed=3)]
    op = _op("MatMul", 2)
    np.testing.assert_allclose(_run(op, xs, False)[0], np.matmul(*xs), rtol=1e-12)
    _check_grads(op, xs, [0, 1])


CONV_CASES = [
    ({}, (2, 3, 6, 5), (4, 3, 3, 3)),
    ({"strides": ("ints", [2, 1]), "pads": ("ints", [1, 0, 2, 1])}, (2, 2, 7, 6), (3, 2, 3, 2)),
    ({"dilations": ("ints", [2, 2]), "pads": ("ints", [1, 1, 1, 1])}, (1, 2, 7, 7), (2, 2, 3, 3)),
    ({"group": ("int", 2), "strides": ("ints", [2, 2])}, (2, 4, 6, 6), (6, 2, 3, 3)),
    ({"group": ("int", 3), "pads": ("ints", [1, 1, 1, 1])}, (1, 3, 5, 5), (3, 1, 3, 3)),  # depthwise
    ({"auto_pad": ("string", "SAME_UPPER"), "strides": ("ints", [2, 2])}, (1, 2, 5, 6), (2, 2, 2, 3)),
    ({"strides": ("ints", [2]), "pads": ("ints", [1, 2])}, (2, 3, 9), (4, 3, 3)),  # 1-D
]


@pytest.mark.parametrize("attrs,xs_shape,w_shape", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_gradients(attrs, xs_shape, w_shape, bias):
    xs = [_rand(*xs_shape), _rand(*w_shape, seed=5)] + ([_rand(w_shape[0], seed=6)] if bias else [])
    op = _op("Conv", len(xs), attrs)
    _check_grads(op, xs, list(range(len(xs))))


def _ort_single(op, attrs, xs, n_outputs=1):
    """Run one node in onnxruntime (float32)."""
    names = [f"x{i}" for i in range(len(xs))]
    node = Node(op, "n0", names, ["y"], attrs)
    g = Graph("g", [ValueInfo(n, "float32", list(x.shape)) for n, x in zip(names, xs)],
              [ValueInfo("y", "float32", [])], [node], {}, 17)
    return session(graph_to_onnx(g)).run(["y"], {n: x.astype(np.float32) for n, x in zip(names, xs)})[0]


@pytest.mark.parametrize("attrs,xs_shape,w_shape", CONV_CASES)
def test_conv_forward_matches_onnxruntime(attrs, xs_shape, w_shape):
    xs = [_rand(*xs_shape), _rand(*w_shape, seed=5), _rand(w_shape[0], seed=6)]
    got = _run(_op("Conv", 3, attrs), [x.astype(np.float32) for x in xs], False)[0]
    np.testing.assert_allclose(got, _ort_single("Conv", attrs, xs), rtol=1e-4, atol=1e-5)


def test_conv_forward_matches_direct_loops():
    x, w, b = _rand(2, 4, 5, 6), _rand(6, 2, 3, 2, seed=1), _rand(6, seed=2)
    attrs = {"group": ("int", 2), "strides": ("ints", [2, 1]), "pads": ("ints", [1, 0, 1, 1]),
             "dilations": ("ints", [1, 2])}
    got = _run(_op("Conv", 3, attrs), [x, w, b], False)[0]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)))
    oh, ow = (5 + 2 - 3) // 2 + 1, (6 + 1 - 3) // 1 + 1
    want = np.zeros((2, 6, oh, ow))
    for n in range(2):
        for m in range(6):
            grp = m // 3
            for y in range(oh):
                for z in range(ow):
                    acc = b[m]
                    for c in range(2):
                        for i in range(3):
                            for j in range(2):
                                acc += w[m, c, i, j] * xp[n, grp * 2 + c, y * 2 + i, z + 2 * j]
                    want[n, m, y, z] = acc
    np.testing.assert_allclose(got, want, rtol=1e-12)


POOL_CASES = [
    {"kernel_shape": ("ints", [2, 2]), "strides": ("ints", [2, 2])},
    {"kernel_shape": ("ints", [3, 3]), "strides": ("ints", [2, 2]), "pads": ("ints", [1, 1, 1, 1])},
    {"kernel_shape": ("ints", [3, 2]), "strides": ("ints", [2, 2]), "ceil_mode": ("int", 1)},
    {"kernel_shape": ("ints", [2, 2]), "dilations": ("ints", [2, 1]), "pads": ("ints", [0, 1, 1, 0])},
    {"kernel_shape": ("ints", [3, 3]), "strides": ("ints", [2, 2]), "pads": ("ints", [1, 1, 1, 1]),
     "ceil_mode": ("int", 1)},
    {"kernel_shape": ("ints", [3]), "strides": ("ints", [2]), "pads": ("ints", [1, 1])},
]


def _pool_input(attrs):
    return _rand(2, 3, 7) if len(attrs["kernel_shape"][1]) == 1 else _rand(2, 3, 7, 6)


@pytest.mark.parametrize("attrs", POOL_CASES)
def test_maxpool_gradients_and_forward(attrs):
    x = _pool_input(attrs)
    op = _op("MaxPool", 1, attrs)
    _check_grads(op, [x], [0])
    np.testing.assert_allclose(_run(op, [x.astype(np.float32)], False)[0], _ort_single("MaxPool", attrs, [x]),
                               rtol=1e-6)


@pytest.mark.parametrize("attrs", POOL_CASES)
@pytest.mark.parametrize("include_pad", [0, 1])
def test_avgpool_gradients_and_forward(attrs, include_pad):
    attrs = {**attrs, "count_include_pad": ("int", include_pad)}
    if "dilations" in attrs:
        attrs.pop("dilations")  # onnxruntime's AveragePool takes no dilations before opset 19
    x = _pool_input(attrs)
    op = _op("AveragePool", 1, attrs)
    _check_grads(op, [x], [0])
    np.testing.assert_allclose(_run(op, [x.astype(np.float32)], False)[0],
                               _ort_single("AveragePool", attrs, [x]), rtol=1e-5, atol=1e-6)


def test_global_average_pool():
    x = _rand(2, 3, 4, 5)
    op = _op("GlobalAveragePool", 1)
    np.testing.assert_allclose(_run(op, [x], False)[0], x.mean(axis=(2, 3), keepdims=True))
    _check_grads(op, [x], [0])


@pytest.mark.parametrize("op,attrs", [("Relu", {}), ("LeakyRelu", {"alpha": ("float", 0.2)}), ("LeakyRelu", {}),
                                      ("Identity", {})])
def test_elementwise_gradients(op, attrs):
    x = _rand(3, 4, 2)
    o = _op(op, 1, attrs)
    alpha = attrs.get("alpha", ("float", 0.01))[1] if op == "LeakyRelu" else 0.0
    want = x if op == "Identity" else np.where(x > 0, x, alpha * x)
    np.testing.assert_allclose(_run(o, [x], False)[0], want)
    _check_grads(o, [x], [0])


@pytest.mark.parametrize("sa,sb", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3))])
def test_add_gradients(sa, sb):
    xs = [np.asarray(_rand(*sa)), np.asarray(_rand(*sb, seed=9))]
    _check_grads(_op("Add", 2), xs, [0, 1])


@pytest.mark.parametrize("axis,want", [(0, (1, 60)), (1, (3, 20)), (2, (12, 5)), (-1, (12, 5)), (3, (60, 1))])
def test_flatten(axis, want):
    x = _rand(3, 4, 5)
    op = _op("Flatten", 1, {"axis": ("int", axis)})
    assert _run(op, [x], False)[0].shape == want
    _check_grads(op, [x], [0])


def test_reshape_with_zero_and_minus_one():
    x = _rand(2, 3, 4)
    op = _op("Reshape", 2)
    y, _ = _run(op, [x, np.array([0, -1, 2], dtype=np.int64)], False)
    assert y.shape == (2, 6, 2)
    _check_grads(op, [x, np.array([0, -1, 2], dtype=np.int64)], [0])
    with pytest.raises(ValueError, match="cannot reshape"):
        _run(op, [x, np.array([5, -1], dtype=np.int64)], False)


def test_dropout_train_mode_gradient_and_inference_identity():
    x = _rand(40, 30)
    op = _op("Dropout", 1, {"ratio": ("float", 0.3)}, n_outputs=2)
    y, _ = _run(op, [x], True)
    kept = y != 0
    assert 0.6 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], x[kept] / 0.7)
    _check_grads(op, [x[:4, :5]], [0], training=True)
    np.testing.assert_array_equal(_run(op, [x], False)[0], x)
    ratio_input = _op("Dropout", 2, inits={"x1": np.array(0.25, np.float32)})
    assert ratio_input.ratio == 0.25


@pytest.mark.parametrize("shape", [(5, 3), (4, 3, 2, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_gradients(shape, training):
    c = shape[1]
    xs = [_rand(*shape) * 2 + 1, _rand(c, seed=1), _rand(c, seed=2), _rand(c, seed=3), np.abs(_rand(c, seed=4)) + 0.5]
    op = _op("BatchNormalization", 5, {"epsilon": ("float", 1e-3), "momentum": ("float", 0.8)})
    _check_grads(op, xs, [0, 1, 2], training=training, rtol=1e-5, atol=1e-7)


def test_batchnorm_statistics_and_running_averages():
    x = _rand(6, 3, 2, 2) * 3 + 2
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    mean, var = np.zeros(3), np.ones(3)
    op = _op("BatchNormalization", 5, {"momentum": ("float", 0.9)})
    ctx = Context(True, np.random.default_rng(0))
    y = op.forward([x, gamma, beta, mean, var], ctx)[0][0]
    mu, v = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    want = (x - mu[None, :, None, None]) / np.sqrt(v[None, :, None, None] + 1e-5) * gamma[None, :, None, None] \
        + beta[None, :, None, None]
    np.testing.assert_allclose(y, want, rtol=1e-12)
    np.testing.assert_allclose(ctx.buffer_updates["x3"], 0.1 * mu)
    np.testing.assert_allclose(ctx.buffer_updates["x4"], 0.9 + 0.1 * v)
    y_eval = op.forward([x, gamma, beta, mean, var], Context(False, np.random.default_rng(0)))[0][0]
    np.testing.assert_allclose(y_eval, x / np.sqrt(1 + 1e-5) * gamma[None, :, None, None]
                               + beta[None, :, None, None], rtol=1e-12)


def test_softmax_cross_entropy_gradient():
    logits = _rand(4, 5)
    y = np.array([0, 3, 4, 1])
    loss, g = softmax_cross_entropy(logits, y)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(4), y])), rel=1e-12)
    num = np.zeros_like(logits)
    for idx in np.ndindex(logits.shape):
        d = np.zeros_like(logits)
        d[idx] = EPS
        num[idx] = (softmax_cross_entropy(logits + d, y)[0] - softmax_cross_entropy(logits - d, y)[0]) / (2 * EPS)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-10)


# ------------------------------------------------------------------------------------------------------ kernels

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 7), w=st.integers(1, 7), kh=st.integers(1, 3),
       kw=st.integers(1, 3), s=st.integers(1, 3), d=st.integers(1, 2), p=st.integers(0, 2))
def test_col2im_is_the_adjoint_of_im2col(n, c, h, w, kh, kw, s, d, p):
    oh = (h + 2 * p - (kh - 1) * d - 1) // s + 1
    ow = (w + 2 * p - (kw - 1) * d - 1) // s + 1
    if oh < 1 or ow < 1:
        return
    g = (kh, kw, s, s, d, d, p, p, p, p, oh, ow)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w))
    cols = rng.standard_normal((c * kh * kw, n * oh * ow))
    assert np.sum(kernels.im2col(x, g) * cols) == pytest.approx(np.sum(x * kernels.col2im(cols, x.shape, g)),
                                                                rel=1e-10, abs=1e-10)


def test_kernel_wrappers_reject_bad_arrays():
    g = (2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2)
    with pytest.raises(ValueError, match="float32/float64"):
        kernels.im2col(np.zeros((1, 1, 3, 3), np.int32), g)
    with pytest.raises(ValueError, match="columns expected shape"):
        kernels.col2im(np.zeros((3, 3)), (1, 1, 3, 3), g)


# --------------------------------------------------------------------------------------------------- optimizers

def test_sgd_matches_its_formula():
    p = {"w": np.array([[1.0, -2.0]]), "b": np.array([0.5])}
    opt = SGD(momentum=0.9, weight_decay=0.1)
    g1 = {"w": np.array([[0.2, 0.4]]), "b": np.array([1.0])}
    opt.step(p, g1, 0.5, decay={"w"})
    v_w = np.array([[0.2 + 0.1 * 1.0, 0.4 + 0.1 * -2.0]])
    np.testing.assert_allclose(p["w"], [[1.0, -2.0]] - 0.5 * v_w)
    np.testing.assert_allclose(p["b"], [0.0])  # no decay on b
    w1 = p["w"].copy()
    opt.step(p, {"w": np.zeros((1, 2)), "b": np.zeros(1)}, 0.5, decay={"w"})
    np.testing.assert_allclose(p["w"], w1 - 0.5 * (0.9 * v_w + 0.1 * w1))


def test_adam_matches_its_formula():
    p = {"w": np.array([1.0, -1.0, 0.0])}
    opt = Adam(beta1=0.9, beta2=0.99, eps=1e-8)
    g = np.array([0.5, -2.0, 0.0])
    opt.step(p, {"w": g}, 0.1)
    m, v = 0.1 * g, 0.01 * g * g
    want = np.array([1.0, -1.0, 0.0]) - 0.1 * (m / 0.1) / (np.sqrt(v / 0.01) + 1e-8)
    np.testing.assert_allclose(p["w"], want)
    assert p["w"][2] == 0.0  # a zero gradient never moves a weight


def test_schedules():
    f = cosine(1.0, 100)
    assert f(0) == 1.0 and f(100) == pytest.approx(0.0) and f(50) == pytest.approx(0.5)
    assert cosine(1.0, 100, warmup_steps=10)(4) == pytest.approx(0.5)
    assert step_decay(1.0, 10, 0.5)(25) == 0.25
    assert make_schedule("step", 1.0, 100)(80) == pytest.approx(0.01)
    assert make_schedule("constant", 0.3, 100)(99) == 0.3
    with pytest.raises(ValueError, match="schedule must be"):
        make_schedule("warm", 1.0, 10)


# ------------------------------------------------------------------------------------------------------ trainer

def _small_cnn(dtype="float64") -> Graph:
    """Conv-BN-Relu-MaxPool-Conv(group 2)-LeakyRelu-AveragePool-Flatten-Gemm-Dropout-Reshape-MatMul-Add."""
    f = np.dtype(dtype)
    inits = {
        "w1": np.zeros((4, 2, 3, 3), f), "b1": np.zeros(4, f),
        "gamma": np.ones(4, f), "beta": np.zeros(4, f), "mean": np.zeros(4, f), "var": np.ones(4, f),
        "w2": np.zeros((4, 2, 2, 2), f), "b2": np.zeros(4, f),
        "w3": np.zeros((5, 4), f), "b3": np.zeros(5, f),
        "shape": np.array([0, -1], np.int64), "ratio": np.array(0.3, np.float32),
        "w4": np.zeros((5, 3), f), "b4": np.zeros(3, f),
    }
    nodes = [
        Node("Conv", "conv1", ["x", "w1", "b1"], ["c1"], {"pads": ("ints", [1, 1, 1, 1])}),
        Node("BatchNormalization", "bn1", ["c1", "gamma", "beta", "mean", "var"], ["n1"], {}),
        Node("Relu", "relu1", ["n1"], ["r1"]),
        Node("MaxPool", "pool1", ["r1"], ["p1"], {"kernel_shape": ("ints", [2, 2]), "strides": ("ints", [2, 2])}),
        Node("Conv", "conv2", ["p1", "w2", "b2"], ["c2"], {"group": ("int", 2)}),
        Node("LeakyRelu", "lrelu", ["c2"], ["l2"], {"alpha": ("float", 0.1)}),
        Node("AveragePool", "pool2", ["l2"], ["p2"], {"kernel_shape": ("ints", [2, 2])}),
        Node("Flatten", "flat", ["p2"], ["f"]),
        Node("Gemm", "fc1", ["f", "w3", "b3"], ["g1"], {"transB": ("int", 1)}),
        Node("Dropout", "drop", ["g1", "ratio"], ["d1"]),
        Node("Reshape", "reshape", ["d1", "shape"], ["rs"]),
        Node("MatMul", "fc2", ["rs", "w4"], ["mm"]),
        Node("Add", "bias", ["mm", "b4"], ["logits"]),
    ]
    g = Graph("cnn", [ValueInfo("x", dtype, ["N", 2, 6, 6])], [ValueInfo("logits", dtype, ["N", 3])], nodes, inits)
    return init_parameters(g, seed=3)


def test_whole_graph_gradients_match_finite_differences():
    g = _small_cnn()
    g.initializers["gamma"] = np.array([1.0, 0.5, 2.0, 1.5])
    tr = Trainer(g, dtype=np.float64)
    assert set(tr.params) == {"w1", "b1", "gamma", "beta", "w2", "b2", "w3", "b3", "w4", "b4"}
    assert set(tr.buffers) == {"mean", "var"}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 72))  # reshaped to the declared (N, 2, 6, 6)
    y = np.array([0, 1, 2, 1, 0])
    loss, _, grads = tr.loss_and_grads(x, y, rng=np.random.default_rng(11))
    for name, p in tr.params.items():
        flat = p.reshape(-1)
        for i in np.random.default_rng(1).choice(flat.size, min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + EPS
            lp = tr.loss_and_grads(x, y, [], rng=np.random.default_rng(11))[0]
            flat[i] = old - EPS
            lm = tr.loss_and_grads(x, y, [], rng=np.random.default_rng(11))[0]
            flat[i] = old
            assert grads[name].reshape(-1)[i] == pytest.approx((lp - lm) / (2 * EPS), rel=1e-5, abs=1e-9), name


def test_trainer_predict_matches_onnxruntime():
    g = _small_cnn("float32")
    x = np.random.default_rng(2).standard_normal((4, 2, 6, 6)).astype(np.float32)
    got = Trainer(g).predict(x)
    want = session(graph_to_onnx(g)).run(["logits"], {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def data():
    return synthetic_classification(1500, 500, 20, 4, seed=0)


def _mlp(sizes=(20, 16, 4), seed=0, scheme="he_normal"):
    layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in zip(sizes, sizes[1:])]
    return init_parameters(mlp_graph(layers), seed=seed, scheme=scheme)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adam", 0.01)])
def test_trainer_learns_and_exports(data, optimizer, lr):
    g = _mlp()
    tr = Trainer(g, lr=lr, optimizer=optimizer, batch_size=32)
    before = tr.error_rate(data["x_test"], data["y_test"])
    hist = tr.fit(data, 3)
    assert len(hist["loss"]) == 3 and hist["loss"][-1] < hist["loss"][0]
    after = tr.error_rate(data["x_test"], data["y_test"])
    assert after < 0.12 < before
    out = tr.export()
    assert out.initializers["fc1.weight"].dtype == np.float32
    assert not np.array_equal(out.initializers["fc1.weight"], g.initializers["fc1.weight"])
    np.testing.assert_array_equal(Trainer(out).predict(data["x_test"]), tr.predict(data["x_test"]))


def test_trainer_is_deterministic_for_a_seed(data):
    runs = []
    for seed in (4, 4, 5):
        tr = Trainer(_mlp(), seed=seed)
        tr.fit(data, 1, evaluate=False)
        runs.append(tr.params["fc1.weight"].copy())
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_final_softmax_is_skipped_and_frozen_parameters_stay(data):
    g = _mlp()
    g.nodes[-1].outputs = ["z"]
    g.nodes.append(Node("Softmax", "softmax", ["z"], ["logits"], {"axis": ("int", -1)}))
    tr = Trainer(g, trainable=["fc2.weight", "fc2.bias"])
    assert tr.logits_name == "z"
    tr.fit(data, 1, evaluate=False)
    np.testing.assert_array_equal(tr.params["fc1.weight"], g.initializers["fc1.weight"])
    assert not np.array_equal(tr.params["fc2.weight"], g.initializers["fc2.weight"])


def test_matmul_add_bias_is_a_parameter():
    g = _small_cnn("float32")
    params, buffers = trainable_parameters(g)
    assert "b4" in params and "shape" not in params and "ratio" not in params and buffers == ["mean", "var"]


def test_unsupported_op_names_op_and_node():
    g = _mlp()
    g.nodes[1] = Node("Sigmoid", "act1", g.nodes[1].inputs, g.nodes[1].outputs)
    with pytest.raises(UnsupportedError, match=r"node 'act1': op 'Sigmoid' is not supported by the training"):
        Trainer(g)
    g2 = _small_cnn("float32")
    g2.nodes[3].attrs["storage_order"] = ("int", 1)
    with pytest.raises(UnsupportedError, match="pool1"):
        Trainer(g2)


def test_bad_arguments_are_reported():
    g = _mlp()
    with pytest.raises(ValueError, match="lr out of range"):
        Trainer(g, lr=0)
    with pytest.raises(ValueError, match="not parameters of the graph"):
        Trainer(g, trainable=["nope"])
    with pytest.raises(ValueError, match="expected a bool array of shape"):
        Trainer(g, masks={"fc1.weight": np.ones((2, 2), bool)})
    with pytest.raises(ValueError, match="expects"):
        Trainer(g).predict(np.zeros((2, 7), np.float32))


def test_batchnorm_running_statistics_update_in_training():
    g = _small_cnn("float32")
    tr = Trainer(g, batch_size=8)
    d = {"x_train": np.random.default_rng(0).standard_normal((16, 72)).astype(np.float32) + 3,
         "y_train": np.zeros(16, np.int64)}
    tr.fit(d, 1, evaluate=False)
    assert np.all(tr.buffers["mean"] != 0) and np.all(tr.export().initializers["mean"] != 0)
    assert copy_graph(g).initializers["mean"].sum() == 0  # the input graph is left alone
