"""Tests for packer/train/distill.py: the distillation loss and its gradient against plain-numpy references and
finite differences, teacher logits through onnxruntime (logits and softmax outputs), and that a tiny student learns
from a teacher."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.graph import Node, ValueInfo
from edgepack.packer.onnx_io import save_onnx
from edgepack.packer.train.distill import distill, distillation_loss, teacher_logits
from edgepack.packer.train.engine import Trainer, copy_graph, init_parameters
from edgepack.packer.train.mlp import mlp_graph


def _reference_loss(s, t, y, T, alpha):
    """Plain numpy, written from the formula: alpha T^2 KL(p_t || p_s) + (1 - alpha) CE, batch mean."""
    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    p, q, h = softmax(t / T), softmax(s / T), softmax(s)
    kl = (p * np.log(p / q)).sum(axis=1)
    ce = -np.log(h[np.arange(len(y)), y])
    return float(np.mean(alpha * T * T * kl + (1 - alpha) * ce))


def _graph(sizes, seed):
    layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in sizes]
    return init_parameters(mlp_graph(layers), seed=seed)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(2, 7), st.floats(0.5, 30.0), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_loss_matches_reference_and_gradient_matches_finite_differences(n, c, T, alpha, seed):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, c)) * 3
    t = rng.standard_normal((n, c)) * 3
    y = rng.integers(0, c, n)
    loss, grad = distillation_loss(s, t, y, T, alpha)
    assert loss == pytest.approx(_reference_loss(s, t, y, T, alpha), rel=1e-9, abs=1e-12)
    eps = 1e-6
    num = np.zeros_like(s)
    for idx in np.ndindex(*s.shape):
        sp, sm = s.copy(), s.copy()
        sp[idx] += eps
        sm[idx] -= eps
        num[idx] = (_reference_loss(sp, t, y, T, alpha) - _reference_loss(sm, t, y, T, alpha)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


def test_limits():
    rng = np.random.default_rng(0)
    s, t, y = rng.standard_normal((5, 4)), rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    # alpha 0: plain cross-entropy; student == teacher: the soft term and its gradient vanish
    loss0, g0 = distillation_loss(s, t, y, 3.0, 0.0)
    assert loss0 == pytest.approx(_reference_loss(s, s, y, 1.0, 0.0))
    loss1, g1 = distillation_loss(s, s, y, 3.0, 1.0)
    assert loss1 == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(g1, 0.0, atol=1e-15)
    # the engine's backward sees the same gradient as its own cross-entropy for alpha = 0
    from edgepack.packer.train.ops import softmax_cross_entropy
    ref_loss, ref_g = softmax_cross_entropy(s, y)
    assert loss0 == pytest.approx(ref_loss)
    np.testing.assert_allclose(g0, ref_g, rtol=1e-12)


@pytest.mark.parametrize("bad", [dict(temperature=0.0), dict(alpha=1.5), dict(alpha=-0.1)])
def test_rejects_bad_parameters(bad):
    kw = dict(temperature=2.0, alpha=0.5) | bad
    with pytest.raises(ValueError):
        distillation_loss(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2, int), **kw)
    with pytest.raises(ValueError, match="distillation_loss"):
        distillation_loss(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros(2, int), 1.0, 0.5)


def test_student_parameter_gradient_matches_finite_differences():
    """The whole chain through the engine's backward (float64): d loss / d weights against central differences."""
    from edgepack.packer.train.distill import _DistillTrainer

    rng = np.random.default_rng(3)
    g = _graph(((5, 6), (6, 3)), 1)
    x = rng.standard_normal((4, 5))
    y = rng.integers(0, 3, 4)
    tr = _DistillTrainer(g, dtype=np.float64)
    tr.soft, tr.temperature, tr.alpha = rng.standard_normal((4, 3)) * 2, 4.0, 0.8
    _, _, grads = tr.loss_and_grads(x, y, training=False)
    for name in ("fc1.weight", "fc2.bias"):
        p = tr.params[name]
        for idx in [(0,) * p.ndim, tuple(d - 1 for d in p.shape)]:
            old = p[idx]
            p[idx] = old + 1e-6
            lp = tr.loss_and_grads(x, y, training=False)[0]
            p[idx] = old - 1e-6
            lm = tr.loss_and_grads(x, y, training=False)[0]
            p[idx] = old
            assert grads[name][idx] == pytest.approx((lp - lm) / 2e-6, rel=1e-5, abs=1e-8)


def _with_softmax(graph):
    g = copy_graph(graph)
    g.nodes.append(Node("Softmax", "prob", ["logits"], ["prob"], {"axis": ("int", 1)}))
    g.outputs = [ValueInfo("prob", "float32", ["N", 4])]
    return g


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = synthetic_classification(1200, 400, 20, 4, seed=1)
    tr = Trainer(_graph(((20, 64), (64, 4)), 0), lr=0.05, batch_size=32)
    tr.fit(data, 3, evaluate=False)
    teacher = tr.export()
    path = tmp_path_factory.mktemp("distill") / "teacher.onnx"
    save_onnx(teacher, path)
    return data, teacher, path, tr


def test_teacher_logits_through_onnxruntime(setup, tmp_path):
    data, teacher, path, tr = setup
    logits = teacher_logits(path, data["x_test"][:50])
    np.testing.assert_allclose(logits, tr.predict(data["x_test"][:50]), rtol=1e-4, atol=1e-4)
    # a teacher ending in Softmax gives the same softened targets
    save_onnx(_with_softmax(teacher), tmp_path / "soft.onnx")
    logp = teacher_logits(tmp_path / "soft.onnx", data["x_test"][:50])
    T = 3.0
    a = np.exp(logits / T) / np.exp(logits / T).sum(1, keepdims=True)
    b = np.exp(logp / T) / np.exp(logp / T).sum(1, keepdims=True)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_tiny_student_learns_from_teacher(setup):
    data, teacher, path, _ = setup
    student = _graph(((20, 8), (8, 4)), 5)
    out, rep = distill(student, path, data, temperature=4.0, alpha=0.7, epochs=3, lr=0.05, batch_size=32)
    assert rep["error_before"] > 0.5  # chance is 0.75
    assert rep["error_after"] < 0.2
    assert rep["error_after"] <= rep["teacher_error"] + 0.05
    assert len(rep["history"]["loss"]) == 3 and rep["history"]["loss"][-1] < rep["history"]["loss"][0]
    assert set(out.initializers) == set(student.initializers)
    # the input graph is not modified
    np.testing.assert_array_equal(student.initializers["fc1.weight"], _graph(((20, 8), (8, 4)), 5)
                                  .initializers["fc1.weight"])


def test_pure_soft_targets_follow_the_teacher(setup):
    """alpha = 1 never sees a label: the student can only learn from the teacher."""
    data, _, path, _ = setup
    _, rep = distill(_graph(((20, 8), (8, 4)), 6), path, data, temperature=2.0, alpha=1.0, epochs=3,
                     batch_size=32)
    assert rep["error_after"] < 0.25


def test_precomputed_teacher_and_errors(setup):
    data, _, path, tr = setup
    soft = tr.predict(data["x_train"]).astype(np.float32)
    _, rep = distill(_graph(((20, 8), (8, 4)), 5), path, data, temperature=4.0, alpha=0.7, epochs=1,
                     teacher=soft, batch_size=32)
    assert "error_after" in rep
    with pytest.raises(ValueError, match="teacher logits for 3 samples"):
        distill(_graph(((20, 8), (8, 4)), 5), path, data, teacher=soft[:3], epochs=1)
    with pytest.raises(ValueError, match="temperature"):
        distill(_graph(((20, 8), (8, 4)), 5), path, data, temperature=-1, epochs=1)
