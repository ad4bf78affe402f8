"""Tests for packer/train/quantize_tune.py: centroid fine-tuning changes only the centroids (codes, masks, zeros and
the other parameters stay), one step equals the grouped-gradient formula dL/dC_k = sum of dL/dW over code k (checked
against a plain numpy MLP and against finite differences on a centroid), and the pack round trip: the packer at the
same bits decodes exactly the tuned weights."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.onnx_io import save_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.train.engine import Trainer, init_parameters
from edgepack.packer.train.mlp import mlp_graph
from edgepack.packer.train.prune_retrain import prune_and_retrain
from edgepack.packer.train.quantize_tune import SharedWeights, grouped_gradient, quantize_and_tune, resolve_bits
from edgepack.packer.unpack import packed_to_graph


@pytest.fixture(scope="module")
def data():
    return synthetic_classification(1000, 300, 20, 4, seed=2)


@pytest.fixture(scope="module")
def pruned(data):
    layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in ((20, 24), (24, 4))]
    tr = Trainer(init_parameters(mlp_graph(layers), seed=0), lr=0.05, batch_size=32)
    tr.fit(data, 3, evaluate=False)
    out, _ = prune_and_retrain(tr.export(), data, {"fc1": 0.7, "fc2": 0.5}, schedule="oneshot", epochs=1,
                               evaluate=False)
    return out


def _numpy_mlp_grads(w1, b1, w2, b2, x, y):
    """dL/dW1 and dL/dW2 of mean softmax cross-entropy of relu(x W1^T + b1) W2^T + b2, in float64."""
    x = x.astype(np.float64)
    h_pre = x @ w1.T.astype(np.float64) + b1
    h = np.maximum(h_pre, 0)
    z = h @ w2.T.astype(np.float64) + b2
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    p /= len(y)
    dw2 = p.T @ h
    dh = (p @ w2.astype(np.float64)) * (h_pre > 0)
    return dh.T @ x, dw2


def _loop_grouped(g, codes, mask, k):
    out = np.zeros(k)
    for idx in np.ndindex(g.shape):
        if mask[idx]:
            out[codes[idx]] += g[idx]
    return out


def test_grouped_gradient_matches_a_loop():
    rng = np.random.default_rng(0)
    g = rng.standard_normal((5, 7))
    codes = rng.integers(0, 6, (5, 7)).astype(np.uint8)
    mask = rng.random((5, 7)) < 0.6
    np.testing.assert_allclose(grouped_gradient(g, codes, mask, 8), _loop_grouped(g, codes, mask, 8))
    with pytest.raises(ValueError, match="same shape"):
        grouped_gradient(g, codes[:2], mask, 8)


def test_one_step_changes_only_centroids_by_the_grouped_gradient(pruned, data):
    quantized, rep = quantize_and_tune(pruned, data, 3, epochs=0, evaluate=False)
    names = ["fc1.weight", "fc2.weight"]
    shared = {k: SharedWeights(rep["codebooks"][k], rep["codes"][k], rep["masks"][k]) for k in names}
    before = {k: s.codebook.copy() for k, s in shared.items()}
    tr = Trainer(quantized, optimizer="sgd", momentum=0.0, weight_decay=1e-3, masks=rep["masks"], trainable=[],
                 parametrizations=shared)
    x, y = data["x_train"][:50], data["y_train"][:50]
    q = quantized.initializers
    d1, d2 = _numpy_mlp_grads(q["fc1.weight"], q["fc1.bias"], q["fc2.weight"], q["fc2.bias"], x, y)
    lr = 0.05
    tr.train_step(x, y, lr)
    for k, dw in (("fc1.weight", d1), ("fc2.weight", d2)):
        s = shared[k]
        want = before[k] - lr * _loop_grouped(dw, s.codes, s.mask, len(s.codebook))
        np.testing.assert_allclose(s.codebook, want, rtol=1e-4, atol=1e-6)
        assert s.codebook[0] == 0.0  # the reserved zero of pruned entries never moves
        np.testing.assert_array_equal(s.codes, rep["codes"][k])
        w = tr.params[k]
        np.testing.assert_array_equal(w, np.where(s.mask, s.codebook[s.codes], 0))
        assert np.all(w[~s.mask] == 0)
        assert np.unique(w[s.mask]).size <= 7
    for k in ("fc1.bias", "fc2.bias"):
        np.testing.assert_array_equal(tr.params[k], q[k])


def test_centroid_gradient_equals_finite_differences(pruned, data):
    quantized, rep = quantize_and_tune(pruned, data, 2, epochs=0, evaluate=False)
    k = "fc1.weight"
    s = SharedWeights(rep["codebooks"][k], rep["codes"][k], rep["masks"][k], dtype=np.float64)
    tr = Trainer(quantized, dtype=np.float64, trainable=[], parametrizations={k: s}, masks={k: rep["masks"][k]})
    x, y = data["x_train"][:40], data["y_train"][:40]
    _, _, grads = tr.loss_and_grads(x, y, [k])
    analytic = s.grads(grads[k])["codebook"]
    eps = 1e-6
    for j in range(1, len(s.codebook)):
        old = s.codebook[j]
        s.codebook[j] = old + eps
        tr._materialize()
        lp = tr.loss_and_grads(x, y, [])[0]
        s.codebook[j] = old - eps
        tr._materialize()
        lm = tr.loss_and_grads(x, y, [])[0]
        s.codebook[j] = old
        tr._materialize()
        assert analytic[j] == pytest.approx((lp - lm) / (2 * eps), rel=1e-5, abs=1e-9)


def test_tuning_keeps_codes_masks_and_other_parameters(pruned, data):
    out, rep = quantize_and_tune(pruned, data, {"fc1": 4, "fc2.weight": 3}, epochs=2, lr=1e-3)
    assert rep["bits"] == {"fc1.weight": 4, "fc2.weight": 3}
    for k, bits in rep["bits"].items():
        w = out.initializers[k]
        m = pruned.initializers[k] != 0
        np.testing.assert_array_equal(w != 0, m)
        np.testing.assert_array_equal(w, np.where(m, rep["codebooks"][k][rep["codes"][k]], 0))
        assert np.unique(w[m]).size <= 2 ** bits - 1
        assert rep["codebooks"][k][0] == 0.0
    for k in ("fc1.bias", "fc2.bias"):
        np.testing.assert_array_equal(out.initializers[k], pruned.initializers[k])
    assert rep["error_tuned"] <= rep["error_quantized"] + 0.02
    assert len(rep["history"]["loss"]) == 2


def test_tune_others_trains_biases_too(pruned, data):
    out, rep = quantize_and_tune(pruned, data, 3, epochs=1, lr=1e-3, tune_others=True, evaluate=False)
    assert not np.array_equal(out.initializers["fc1.bias"], pruned.initializers["fc1.bias"])
    np.testing.assert_array_equal(out.initializers["fc1.weight"] != 0, pruned.initializers["fc1.weight"] != 0)


def test_unpruned_layer_uses_the_whole_codebook(data):
    layers = [(np.zeros((4, 20), np.float32), np.zeros(4, np.float32))]
    g = init_parameters(mlp_graph(layers), seed=1)
    out, rep = quantize_and_tune(g, data, 3, epochs=1, evaluate=False)
    w = out.initializers["fc1.weight"]
    assert np.all(w != 0) and np.unique(w).size <= 8 and rep["pack_config"]["layers"]["fc1.weight"]["sparsity"] == 0


@settings(max_examples=6, deadline=None)
@given(bits=st.integers(1, 5), sparsity=st.sampled_from([0.0, 0.5, 0.9]), tune_seed=st.integers(0, 3))
def test_pack_round_trip_decodes_exactly_the_tuned_weights(pruned, data, tmp_path_factory, bits, sparsity,
                                                           tune_seed):
    src, _ = prune_and_retrain(pruned, data, sparsity, schedule="oneshot", epochs=0, evaluate=False) \
        if sparsity else (pruned, None)
    out, rep = quantize_and_tune(src, data, bits, epochs=1, lr=1e-3, seed=tune_seed, evaluate=False)
    folder = tmp_path_factory.mktemp("rt")
    save_onnx(out, folder / "m.onnx")
    report = pack(folder / "m.onnx", folder / "m.epk", config=rep["pack_config"])
    decoded = packed_to_graph(folder / "m.epk").initializers
    for k in rep["bits"]:
        np.testing.assert_array_equal(decoded[k], out.initializers[k])
        np.testing.assert_array_equal(report.references[k], out.initializers[k])
        row = next(r for r in report.info["layers"] if r["name"] == k)
        assert row["k"] <= 2 ** bits


def test_bad_bits_are_reported(pruned):
    with pytest.raises(ValueError, match="integer in 1..16"):
        resolve_bits(pruned, 0)
    with pytest.raises(ValueError, match="no weight tensor or node"):
        resolve_bits(pruned, {"fc7": 4})
