"""Tests for packer/train/mlp.py: the trainer learns and is deterministic, masks keep pruned weights exactly zero,
gradients match finite differences, the forward matches a hand-written numpy loop, and the exported graph."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.graph import Graph
from edgepack.packer.train import error_rate, mlp_graph, predict_mlp, train_mlp
from edgepack.packer.train.mlp import _forward_backward


@pytest.fixture(scope="module")
def data():
    return synthetic_classification(1500, 500, 20, 4, seed=0)


def _random_layers(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((o, i)).astype(np.float32), rng.standard_normal(o).astype(np.float32))
            for i, o in zip(sizes, sizes[1:])]


def _reference_forward(layers, x):
    """Plain loops in float64: one neuron at a time."""
    h = np.asarray(x, np.float64)
    for k, (w, b) in enumerate(layers):
        out = np.empty((h.shape[0], w.shape[0]))
        for n in range(h.shape[0]):
            for j in range(w.shape[0]):
                out[n, j] = sum(float(w[j, i]) * h[n, i] for i in range(w.shape[1])) + float(b[j])
        h = np.where(out > 0, out, 0.0) if k < len(layers) - 1 else out
    return h


def test_learns_the_synthetic_problem(data):
    layers = train_mlp(data, hidden=(32, 16), epochs=4, progress=False)
    assert [w.shape for w, _ in layers] == [(32, 20), (16, 32), (4, 16)]
    assert all(w.dtype == np.float32 and b.dtype == np.float32 for w, b in layers)
    untrained = train_mlp(data, hidden=(32, 16), epochs=0, progress=False)
    assert error_rate(untrained, data["x_test"], data["y_test"]) > 0.4
    assert error_rate(layers, data["x_test"], data["y_test"]) < 0.12  # chance is 0.75


def test_no_hidden_layer_is_logistic_regression(data):
    layers = train_mlp(data, hidden=(), epochs=3, progress=False)
    assert len(layers) == 1 and layers[0][0].shape == (4, 20)
    assert error_rate(layers, data["x_test"], data["y_test"]) < 0.15


def test_deterministic_for_a_seed(data):
    kw = dict(hidden=(16,), epochs=2, batch_size=32, progress=False)
    a = train_mlp(data, seed=3, **kw)
    b = train_mlp(data, seed=3, **kw)
    c = train_mlp(data, seed=4, **kw)
    for (wa, ba), (wb, bb) in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
    assert not np.array_equal(a[0][0], c[0][0])


def test_progress_bar_does_not_change_the_result(data, capsys):
    kw = dict(hidden=(8,), epochs=1, seed=1)
    quiet = train_mlp(data, progress=False, **kw)
    loud = train_mlp(data, progress=True, **kw)
    assert "train" in capsys.readouterr().err
    np.testing.assert_array_equal(quiet[0][0], loud[0][0])


def test_masks_keep_pruned_weights_exactly_zero(data):
    init = train_mlp(data, hidden=(24, 12), epochs=1, progress=False)
    rng = np.random.default_rng(7)
    masks = [rng.random(init[0][0].shape) < 0.3, None, rng.random(init[2][0].shape) < 0.6]
    before = [w.copy() for w, _ in init]
    layers = train_mlp(data, epochs=2, weight_decay=1e-3, masks=masks, init=init, progress=False)
    for (w, _), m, w0 in zip(layers, masks, before):
        if m is None:
            assert np.count_nonzero(w) == w.size
            continue
        pruned = w[~m]
        assert np.all(pruned == 0) and not np.signbit(pruned).any()  # +0.0, not -0.0
        assert np.all(w[m] != w0[m])  # the kept weights were trained
    for (w, _), w0 in zip(init, before):
        np.testing.assert_array_equal(w, w0)  # init is not modified in place
    assert error_rate(layers, data["x_test"], data["y_test"]) < 0.15


def test_init_is_copied_and_epochs_zero_returns_it(data):
    init = _random_layers([20, 5, 4])
    out = train_mlp(data, epochs=0, init=init, progress=False)
    for (w, b), (w0, b0) in zip(out, init):
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)
        assert w is not w0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(masks=[None, None, None]), "expected 2 entries"),
        (dict(masks=[np.ones((5, 20), bool), np.ones((4, 4), bool)]), r"layer 2 expected a bool array of shape"),
        (dict(masks=[np.ones((5, 20)), None]), "layer 1 expected a bool array"),
        (dict(init=_random_layers([21, 5, 4])), "expects 21 features"),
        (dict(init=_random_layers([20, 5, 3])), "label 3 out of range for 3 outputs"),
        (dict(init=[(np.zeros((5, 20)), np.zeros(5)), (np.zeros((4, 6)), np.zeros(4))]), "layer 2 expects 6"),
        (dict(lr=0), "lr out of range"),
        (dict(momentum=1.0), "momentum out of range"),
        (dict(batch_size=0), "batch_size out of range"),
    ],
)
def test_train_rejects_bad_arguments(data, kwargs, match):
    kwargs.setdefault("init", _random_layers([20, 5, 4]))
    with pytest.raises(ValueError, match=match):
        train_mlp(data, epochs=1, progress=False, **kwargs)


def test_train_rejects_bad_data():
    with pytest.raises(ValueError, match="x_train / y_train expected shapes"):
        train_mlp({"x_train": np.zeros((4, 3)), "y_train": np.zeros(5, np.int64)}, progress=False)
    with pytest.raises(ValueError, match="found none for y_train"):
        train_mlp({"x_train": np.zeros((4, 3))}, progress=False)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(0)
    layers = [(w.astype(np.float64) * 0.5, b.astype(np.float64) * 0.1) for w, b in _random_layers([6, 5, 4, 3])]
    weights, biases = [w for w, _ in layers], [b for _, b in layers]
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 3, 7)
    _, _, grads = _forward_backward(weights, biases, x, y)

    def loss():
        return _forward_backward(weights, biases, x, y)[0]

    eps = 1e-6
    for k in range(3):
        for param, grad in ((weights[k], grads[k][0]), (biases[k], grads[k][1])):
            numeric = np.zeros_like(param)
            for idx in np.ndindex(param.shape):
                keep = param[idx]
                param[idx] = keep + eps
                up = loss()
                param[idx] = keep - eps
                down = loss()
                param[idx] = keep
                numeric[idx] = (up - down) / (2 * eps)
            np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4), n=st.integers(1, 4), seed=st.integers(0, 999))
def test_predict_matches_reference_forward(sizes, n, seed):
    layers = _random_layers(sizes, seed)
    x = np.random.default_rng(seed + 1).standard_normal((n, sizes[0])).astype(np.float32)
    logits = predict_mlp(layers, x)
    assert logits.shape == (n, sizes[-1]) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _reference_forward(layers, x), rtol=1e-4, atol=1e-4)


def test_predict_rejects_wrong_shapes():
    layers = _random_layers([4, 3, 2])
    with pytest.raises(ValueError, match=r"x expected shape \(N, 4\), found \(2, 5\)"):
        predict_mlp(layers, np.zeros((2, 5)))
    with pytest.raises(ValueError, match="expected at least one"):
        predict_mlp([], np.zeros((2, 4)))


def test_error_rate_counts_wrong_arg_max():
    layers = _random_layers([5, 4, 3], seed=2)
    x = np.random.default_rng(3).standard_normal((20000, 5)).astype(np.float32)  # more than one 8192 chunk
    pred = _reference_forward(layers, x[:50]).argmax(axis=1)
    y = np.random.default_rng(4).integers(0, 3, 20000)
    y[:50] = pred
    expected = np.mean(predict_mlp(layers, x).argmax(axis=1) != y)
    assert error_rate(layers, x, y) == pytest.approx(expected)
    assert error_rate(layers, x[:50], y[:50]) == 0.0


def _run_graph(g: Graph, x: np.ndarray) -> np.ndarray:
    """A numpy interpreter for the two ops the graph uses."""
    env = {g.inputs[0].name: x, **g.initializers}
    for n in g.nodes:
        if n.op == "Gemm":
            a, w, b = (env[i] for i in n.inputs)
            env[n.outputs[0]] = a @ (w.T if n.attr("transB", 0) else w) + b
        elif n.op == "Relu":
            env[n.outputs[0]] = np.maximum(env[n.inputs[0]], 0)
        else:
            raise AssertionError(n.op)
    return env[g.outputs[0].name]


def test_mlp_graph_structure():
    layers = _random_layers([784, 300, 100, 10])
    g = mlp_graph(layers)
    assert g.name == "lenet_300_100" and g.opset == 17
    assert [(v.name, v.dtype, v.shape) for v in g.inputs] == [("input", "float32", ["N", 784])]
    assert [(v.name, v.dtype, v.shape) for v in g.outputs] == [("logits", "float32", ["N", 10])]
    assert [n.op for n in g.nodes] == ["Gemm", "Relu", "Gemm", "Relu", "Gemm"]
    fc1, relu1, fc2, relu2, fc3 = g.nodes
    assert fc1.inputs == ["input", "fc1.weight", "fc1.bias"] and fc1.attrs == {"transB": ("int", 1)}
    assert relu1.inputs == fc1.outputs and fc2.inputs[0] == relu1.outputs[0]
    assert fc3.outputs == ["logits"] and fc3.inputs == [relu2.outputs[0], "fc3.weight", "fc3.bias"]
    assert len({n.name for n in g.nodes}) == 5
    assert set(g.initializers) == {f"fc{k}.{p}" for k in (1, 2, 3) for p in ("weight", "bias")}
    for k, (w, b) in enumerate(layers, start=1):
        np.testing.assert_array_equal(g.initializers[f"fc{k}.weight"], w)
        np.testing.assert_array_equal(g.initializers[f"fc{k}.bias"], b)
        assert g.initializers[f"fc{k}.weight"].dtype == np.float32
    assert g.source_params == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    np.testing.assert_allclose(_run_graph(g, x), predict_mlp(layers, x), rtol=1e-5, atol=1e-4)
    assert mlp_graph(layers[:1], name="lr").nodes[0].outputs == ["logits"]


def test_mlp_graph_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    onnx_io = pytest.importorskip("edgepack.packer.onnx_io")
    layers = _random_layers([12, 8, 5, 3], seed=5)
    model = onnx_io.graph_to_onnx(mlp_graph(layers, name="small"))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    (out,) = sess.run(["logits"], {"input": x})
    np.testing.assert_allclose(out, predict_mlp(layers, x), rtol=1e-5, atol=1e-5)
