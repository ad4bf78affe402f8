"""Tests for packer/train/prune_retrain.py: pruned weights stay exactly zero through retraining (every schedule and
optimizer, checked between steps), exact kept counts, masks never grow back, the cubic schedule, the dropout
adjustment rule, the sensitivity scan and the sparsities chosen from it, and that a tiny problem still learns."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.graph import Node
from edgepack.packer.train.engine import Trainer, init_parameters
from edgepack.packer.train.mlp import mlp_graph
from edgepack.packer.train.ops import dropout_ratio
from edgepack.packer.train.prune_retrain import (
    SensitivityScan, adjusted_dropout, auto_prune, cubic_sparsity, dropout_layers, prune_and_retrain,
    resolve_sparsity, sensitivity_scan, update_masks, weight_layers)


@pytest.fixture(scope="module")
def data():
    return synthetic_classification(1200, 400, 20, 4, seed=1)


@pytest.fixture(scope="module")
def trained(data):
    layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in ((20, 32), (32, 16), (16, 4))]
    tr = Trainer(init_parameters(mlp_graph(layers), seed=0), lr=0.05, batch_size=32)
    tr.fit(data, 3, evaluate=False)
    return tr.export()


def _with_dropout(graph):
    """fc1 -> relu1 -> Dropout(0.5) -> fc2 ..."""
    g = init_parameters(graph, seed=0)
    g.initializers = {k: v.copy() for k, v in graph.initializers.items()}
    relu = next(n for n in g.nodes if n.name == "relu1")
    fc2 = next(n for n in g.nodes if n.name == "fc2")
    g.nodes.insert(g.nodes.index(relu) + 1, Node("Dropout", "drop1", [relu.outputs[0], "drop1.ratio"], ["d1"]))
    g.initializers["drop1.ratio"] = np.array(0.5, np.float32)
    fc2.inputs[0] = "d1"
    return g


@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "gradual"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pruned_weights_stay_exactly_zero(trained, data, schedule, optimizer):
    targets = {"fc1.weight": 0.8, "fc2": 0.6}  # a node name works too; fc3 is not pruned
    out, rep = prune_and_retrain(trained, data, targets, schedule=schedule, epochs=3, lr=0.02 if optimizer == "sgd"
                                 else 0.003, optimizer=optimizer, weight_decay=1e-3, evaluate=False, frequency=5)
    for name, s in (("fc1.weight", 0.8), ("fc2.weight", 0.6)):
        w, m = out.initializers[name], rep["masks"][name]
        assert int(np.count_nonzero(~m)) == round(s * w.size)
        assert np.all(w[~m] == 0) and not np.any(np.signbit(w[~m]))  # +0.0, not -0.0
        assert np.all(w[m] != 0)
        assert rep["kept"][name] == pytest.approx(1 - s, abs=1 / w.size)
    assert "fc3.weight" not in rep["masks"] and np.all(out.initializers["fc3.weight"] != 0)
    # retraining moved the survivors
    m = rep["masks"]["fc1.weight"]
    assert not np.array_equal(out.initializers["fc1.weight"][m], trained.initializers["fc1.weight"][m])


def test_masked_weights_are_zero_between_every_step(trained, data):
    mask = np.random.default_rng(0).random(trained.initializers["fc1.weight"].shape) < 0.3
    tr = Trainer(trained, masks={"fc1.weight": mask}, weight_decay=1e-2, momentum=0.9)
    seen = []

    def check(t, step, total):
        seen.append(step)
        assert np.all(t.params["fc1.weight"][~mask] == 0)

    tr.fit(data, 1, on_step=check, evaluate=False)
    check(tr, -1, 0)
    assert len(seen) == math.ceil(1200 / 64) + 1
    assert np.all(tr.export().initializers["fc1.weight"][~mask] == 0)


def test_masks_never_grow_back(trained):
    tr = Trainer(trained)
    first = update_masks(tr, {"fc1.weight": 0.5})["fc1.weight"].copy()
    tr.params["fc1.weight"][~first] = 100.0  # even if a pruned weight were large again, it stays pruned
    second = update_masks(tr, {"fc1.weight": 0.7})["fc1.weight"]
    assert not np.any(second & ~first)
    assert int(np.count_nonzero(~second)) >= round(0.7 * second.size)


def test_a_tiny_problem_learns_after_pruning(trained, data):
    out, rep = prune_and_retrain(trained, data, 0.85, schedule="oneshot", epochs=3, lr=0.02)
    # one-shot pruning of 85% breaks the small model (~37% error); three epochs of retraining recover most of it
    assert rep["error_pruned_no_retraining"] > rep["error_after"] + 0.1
    assert rep["error_after"] < 0.25  # chance is 0.75
    assert len(rep["history"][0]["test_error"]) == 3
    assert Trainer(out).error_rate(data["x_test"], data["y_test"]) == pytest.approx(rep["error_after"])


def test_gradual_follows_the_cubic_schedule(trained, data):
    kept = []
    original = update_masks

    def spy(trainer, targets):
        out = original(trainer, targets)
        kept.append(float(np.mean(trainer.masks["fc1.weight"])))
        return out

    import edgepack.packer.train.prune_retrain as pr
    pr.update_masks = spy
    try:
        prune_and_retrain(trained, data, {"fc1.weight": 0.9}, schedule="gradual", epochs=2, prune_end=0.5,
                          frequency=2, evaluate=False)
    finally:
        pr.update_masks = original
    steps = 2 * math.ceil(1200 / 64)
    end = round(0.5 * steps)
    assert kept[0] == 1.0 and kept[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(kept, kept[1:]))
    want = [1 - cubic_sparsity(t, end, 0.9) for t in range(0, end, 2)] + [0.1]
    np.testing.assert_allclose(kept, want, atol=2 / 640)


def test_cubic_sparsity():
    assert cubic_sparsity(0, 100, 0.9) == 0.0
    assert cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(500, 100, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(50, 100, 0.8, initial=0.2) == pytest.approx(0.8 - 0.6 * 0.125)
    assert cubic_sparsity(10, 10, 0.5, begin_step=10) == 0.5


def test_dropout_adjustment_rule(trained, data):
    assert adjusted_dropout(0.5, 10000, 900) == pytest.approx(0.15)
    assert adjusted_dropout(0.5, 100, 100) == 0.5
    g = _with_dropout(trained)
    assert dropout_layers(g) == {"drop1": "fc2.weight"}
    out, rep = prune_and_retrain(g, data, {"fc2.weight": 0.75}, schedule="oneshot", epochs=1, evaluate=False)
    d_o, d_r = rep["dropout"]["drop1"]
    assert d_o == 0.5 and d_r == pytest.approx(0.5 * math.sqrt(0.25))
    drop = next(n for n in out.nodes if n.name == "drop1")
    assert dropout_ratio(drop, out) == pytest.approx(0.25)
    assert dropout_ratio(next(n for n in g.nodes if n.name == "drop1"), g) == 0.5  # input graph untouched
    _, rep2 = prune_and_retrain(g, data, {"fc2.weight": 0.75}, schedule="oneshot", epochs=0, evaluate=False,
                                adjust_dropout=False)
    assert rep2["dropout"] == {}


def test_sensitivity_scan_shape_table_and_choice(trained, data):
    scan = sensitivity_scan(trained, data, sparsities=(0.0, 0.5, 0.9, 0.99))
    assert scan.layers == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert scan.errors.shape == (3, 4)
    np.testing.assert_allclose(scan.errors[:, 0], scan.reference_error)
    assert scan.errors[0, 3] > scan.errors[0, 0]
    text = scan.table()
    assert "fc2.weight" in text and "99%" in text and "640" in text
    assert all(0.0 <= s <= 0.99 for s in scan.choose(1.0).values())
    assert scan.choose(100.0) == {k: 0.99 for k in scan.layers}
    one = sensitivity_scan(trained, data, sparsities=(0.5,), layers=["fc2"], max_samples=100)
    assert one.layers == ["fc2.weight"] and one.errors.shape == (1, 1)
    with pytest.raises(ValueError, match="not a prunable weight"):
        sensitivity_scan(trained, data, layers=["fc9"])


def test_choose_stops_at_the_first_sparsity_over_budget():
    scan = SensitivityScan(["a", "b"], [0.0, 0.5, 0.8, 0.9], np.array([[0.1, 0.105, 0.2, 0.11],
                                                                       [0.1, 0.1, 0.1, 0.1]]), 0.1)
    assert scan.choose(1.0) == {"a": 0.5, "b": 0.9}
    assert scan.choose(0.0) == {"a": 0.0, "b": 0.9}


def test_sensitivity_plot_written_when_matplotlib_is_there(trained, data, tmp_path):
    scan = sensitivity_scan(trained, data, sparsities=(0.0, 0.9), max_samples=50)
    wrote = scan.plot(tmp_path / "scan.png")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        assert wrote and (tmp_path / "scan.png").stat().st_size > 0
    else:
        assert wrote is False and not (tmp_path / "scan.png").exists()


def test_auto_prune_meets_a_loose_target(trained, data):
    out, rep = auto_prune(trained, data, max_drop=5.0, scan_drop=5.0, epochs=2, schedule="oneshot", lr=0.02)
    assert rep["met"] and rep["attempts"][0]["drop_pp"] <= 5.0
    assert any(v < 1.0 for v in rep["kept"].values())


def test_resolve_sparsity_and_errors(trained, data):
    assert resolve_sparsity(trained, 0.5) == {k: 0.5 for k in weight_layers(trained)}
    with pytest.raises(ValueError, match="no prunable weight tensor or node"):
        resolve_sparsity(trained, {"fc1.bias": 0.5})
    with pytest.raises(ValueError, match=r"must be in \[0, 1\]"):
        resolve_sparsity(trained, {"fc1": 1.5})
    with pytest.raises(ValueError, match="schedule must be"):
        prune_and_retrain(trained, data, 0.5, schedule="sometimes")
