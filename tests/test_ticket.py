"""Tests for packer/train/ticket.py: rewinding restores the surviving weights' initial values exactly (and their
values after K steps for late rewinding), the control draws fresh values, masks shrink monotonically by the pruning
rate, pruned weights are exactly zero, and pruning removes the smallest survivors (against plain numpy)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.train.engine import Trainer, init_parameters
from edgepack.packer.train.mlp import mlp_graph
from edgepack.packer.train.ticket import find_ticket, parse_rewind, prune_survivors, rewound, ticket_table

LAYERS = ("fc1.weight", "fc2.weight", "fc3.weight")


@pytest.fixture(scope="module")
def data():
    return synthetic_classification(600, 300, 20, 4, seed=2)


def _graph(seed=0):
    layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in ((20, 32), (32, 16), (16, 4))]
    return init_parameters(mlp_graph(layers), seed=seed)


def _record():
    seen = {}

    def hook(r, trainer):
        seen[r] = ({k: v.copy() for k, v in trainer.params.items()}, {k: m.copy() for k, m in trainer.masks.items()})
    return seen, hook


def test_rewind_to_init_restores_initial_values_exactly(data):
    g = _graph(0)
    seen, hook = _record()
    out, rep = find_ticket(g, data, 0.3, 3, 1, rewind="init", on_round_start=hook, batch_size=32)
    for r in range(1, 4):
        params, masks = seen[r]
        for k, v in params.items():
            init = g.initializers[k]
            if k in masks:
                m = masks[k]
                np.testing.assert_array_equal(v[m], init[m])  # bit for bit
                assert np.all(v[~m] == 0)
            else:
                np.testing.assert_array_equal(v, init)  # biases rewind too
    # the trained result differs from the init, and pruned weights stay exactly zero
    for k in LAYERS:
        m = rep["masks"][-1][k]
        assert np.all(out.initializers[k][~m] == 0)
        assert not np.array_equal(out.initializers[k][m], g.initializers[k][m])


def test_masks_shrink_monotonically_by_the_rate(data):
    _, rep = find_ticket(_graph(1), data, 0.25, 4, 1, batch_size=32)
    masks = rep["masks"]
    assert len(masks) == 5 and all(m.all() for m in masks[0].values())
    for prev, cur in zip(masks, masks[1:]):
        for k in LAYERS:
            assert not np.any(cur[k] & ~prev[k])  # never grows back
            alive = int(prev[k].sum())
            assert int(cur[k].sum()) == alive - int(round(0.25 * alive))
    left = [row["weights_left_pct"] for row in rep["rounds"]]
    assert left[0] == 100.0 and all(b < a for a, b in zip(left, left[1:]))
    assert all("test_error" in row for row in rep["rounds"])
    assert "rewind to init" in ticket_table(rep)


def test_late_rewinding_returns_to_step_k(data):
    g = _graph(2)
    k_step = 7
    # the reference: the same trainer (same seed, data order) stopped before step K
    ref = Trainer(g, lr=0.05, weight_decay=0.0, batch_size=32, seed=0)
    state = {}

    def grab(tr, step, total):
        if step == k_step and not state:
            state.update({k: v.copy() for k, v in tr.params.items()})
    ref.fit(data, 1, on_step=grab, evaluate=False)
    seen, hook = _record()
    find_ticket(g, data, 0.2, 1, 1, rewind=f"iteration:{k_step}", on_round_start=hook, batch_size=32)
    params, masks = seen[1]
    for k, v in params.items():
        m = masks.get(k, np.ones(v.shape, bool))
        np.testing.assert_array_equal(v[m], state[k][m])
        assert not np.array_equal(v[m], g.initializers[k][m])


def test_control_reinitialises_survivors(data):
    g = _graph(3)
    seen, hook = _record()
    _, rep = find_ticket(g, data, 0.3, 2, 1, control=True, seed=5, on_round_start=hook, batch_size=32)
    assert rep["control"] and "control" in ticket_table(rep)
    for r in (1, 2):
        params, masks = seen[r]
        fresh = init_parameters(g, seed=5 + r, scheme="he_normal")
        for k in LAYERS:
            m = masks[k]
            np.testing.assert_array_equal(params[k][m], fresh.initializers[k][m])
            assert not np.array_equal(params[k][m], g.initializers[k][m])
            assert np.all(params[k][~m] == 0)


def test_fresh_init_from_scheme(data):
    g = _graph(4)
    seen, hook = _record()
    find_ticket(g, data, 0.5, 1, 1, init="lecun_uniform", seed=9, on_round_start=hook, batch_size=32)
    start = init_parameters(g, seed=9, scheme="lecun_uniform")
    params, masks = seen[1]
    for k in LAYERS:
        np.testing.assert_array_equal(params[k][masks[k]], start.initializers[k][masks[k]])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.floats(0.01, 0.99), st.integers(0, 2**31))
def test_prune_survivors_removes_the_smallest_survivors(n, frac, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    m = rng.random(n) < 0.7
    new = prune_survivors({"w": w}, {"w": m}, frac, ["w"])["w"]
    alive = int(m.sum())
    n_remove = int(round(frac * alive))
    assert not np.any(new & ~m)
    assert int(new.sum()) == alive - n_remove
    # plain numpy reference: the n_remove smallest |w| among the survivors go
    idx = np.flatnonzero(m)
    gone = idx[np.argsort(np.abs(w[idx]), kind="stable")[:n_remove]]
    expect = m.copy()
    expect[gone] = False
    np.testing.assert_array_equal(new, expect)


def test_rewound_and_parse():
    v = {"a": np.arange(4, dtype=np.float32) + 1, "b": np.ones(2, np.float32)}
    out = rewound(v, {"a": np.array([True, False, True, False])})
    np.testing.assert_array_equal(out["a"], [1, 0, 3, 0])
    np.testing.assert_array_equal(out["b"], v["b"])
    assert parse_rewind("init") == 0 and parse_rewind("iteration:12") == 12
    for bad in ("iteration:-1", "iteration:x", "epoch:3", ""):
        with pytest.raises(ValueError, match="rewind must be"):
            parse_rewind(bad)


def test_errors(data):
    with pytest.raises(ValueError, match="prune_fraction"):
        find_ticket(_graph(), data, 1.0, 1, 1)
    with pytest.raises(ValueError, match="beyond"):
        find_ticket(_graph(), data, 0.2, 1, 1, rewind="iteration:100000")
    with pytest.raises(ValueError, match="not prunable"):
        find_ticket(_graph(), data, 0.2, 1, 1, layers=["nope"])


def test_per_layer_rates(data):
    """Frankle & Carbin prune the output layer at half the rate: each layer keeps (1 - its rate)^round."""
    rates = {"fc1.weight": 0.2, "fc2": 0.2, "fc3.weight": 0.1}  # a node name works too
    _, rep = find_ticket(_graph(6), data, rates, 3, 1, batch_size=32)
    for r, masks in enumerate(rep["masks"]):
        for name, rate in (("fc1.weight", 0.2), ("fc2.weight", 0.2), ("fc3.weight", 0.1)):
            m = masks[name]
            alive = m.size
            for _ in range(r):
                alive -= int(round(rate * alive))
            assert int(np.count_nonzero(m)) == alive
    assert "fc3.weight 10%" in ticket_table(rep)
    with pytest.raises(ValueError, match="no rate for"):
        find_ticket(_graph(6), data, {"fc1.weight": 0.2}, 1, 1)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        find_ticket(_graph(6), data, {"fc1.weight": 1.5, "fc2.weight": 0.2, "fc3.weight": 0.2}, 1, 1)


def test_control_on_the_tickets_masks(data):
    """Frankle's control: every round trains exactly the ticket's mask of that round, from fresh random values."""
    _, ticket = find_ticket(_graph(7), data, 0.3, 2, 1, batch_size=32)
    seen, hook = _record()
    _, ctrl = find_ticket(_graph(7), data, 0.3, 2, 1, control=True, control_masks=ticket["masks"], seed=3,
                          on_round_start=hook, batch_size=32)
    assert ctrl["control_masks"]
    for r in range(3):
        for k, m in ticket["masks"][r].items():
            np.testing.assert_array_equal(ctrl["masks"][r][k], m)
            w = seen[r][0][k]
            assert np.all(w[~m] == 0)
            if r:  # fresh values, not the ticket's initial ones
                assert not np.allclose(w[m], _graph(7).initializers[k][m])
    assert "ticket's masks" in ticket_table(ctrl)
    with pytest.raises(ValueError, match="control=True"):
        find_ticket(_graph(7), data, 0.3, 2, 1, control_masks=ticket["masks"])
    with pytest.raises(ValueError, match="rounds"):
        find_ticket(_graph(7), data, 0.3, 5, 1, control=True, control_masks=ticket["masks"])
