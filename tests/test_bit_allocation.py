"""Tests for packer/train/bit_allocation.py: the scan's errors (exact when a codebook can hold every distinct value,
equal to a plain numpy forward otherwise) and the greedy path's rules (one layer one width per step, the predicted
error within budget, big layers first when the error is the same)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer.cluster import quantize
from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.train.bit_allocation import CONV_BITS, FC_BITS, BitsScan, bits_scan, candidate_bits
from edgepack.packer.train.engine import Trainer, init_parameters
from edgepack.packer.train.mlp import mlp_graph
from edgepack.packer.train.models import lenet5_graph


@pytest.fixture(scope="module")
def trained():
    data = synthetic_classification(600, 300, 12, 3, seed=1)
    layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in ((12, 40), (40, 3))]
    tr = Trainer(init_parameters(mlp_graph(layers), seed=2), lr=0.05, batch_size=32)
    tr.fit(data, 2, evaluate=False)
    g = tr.export()
    w = g.initializers["fc1.weight"]
    w[np.abs(w) < np.quantile(np.abs(w), 0.5)] = 0  # half pruned: code 0 is reserved for the zeros
    return g, data


def _numpy_error(g, data, name, b):
    w = g.initializers[name]
    mask = w != 0
    codebook, codes = quantize(w, mask, b, reserve_zero=not mask.all())
    ws = {k: g.initializers[k] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
    ws[name] = np.where(mask, codebook[codes], 0).astype(np.float32)
    h = np.maximum(data["x_test"] @ ws["fc1.weight"].T + ws["fc1.bias"], 0)
    logits = h @ ws["fc2.weight"].T + ws["fc2.bias"]
    return float(np.mean(logits.argmax(1) != data["y_test"]))


def test_scan_matches_a_numpy_forward(trained):
    g, data = trained
    scan = bits_scan(g, data, {"fc1.weight": (4, 2, 1), "fc2.weight": (3, 1)})
    assert scan.kept == {"fc1.weight": int(np.count_nonzero(g.initializers["fc1.weight"])), "fc2.weight": 120}
    for name, bs in scan.bits.items():
        for b in bs:
            assert scan.errors[name][b] == pytest.approx(_numpy_error(g, data, name, b), abs=1.5 / 300)
    assert "fc1.weight" in scan.table() and "4 bits" in scan.table()


def test_scan_is_exact_when_the_codebook_holds_every_value(trained):
    g, data = trained
    g2 = type(g)(g.name, g.inputs, g.outputs, g.nodes, dict(g.initializers), g.opset, g.source_params)
    w = g2.initializers["fc2.weight"].copy()
    levels = np.array([-0.5, -0.1, 0.2, 0.7], np.float32)
    g2.initializers["fc2.weight"] = levels[np.arange(w.size).reshape(w.shape) % 4]  # 4 values, none zero
    scan = bits_scan(g2, data, {"fc2.weight": (3, 2, 1)})
    assert scan.errors["fc2.weight"][3] == scan.reference_error
    assert scan.errors["fc2.weight"][2] == scan.reference_error  # 2 bits = 4 centroids, no zero reserved


def test_candidate_widths_by_layer_kind():
    c = candidate_bits(lenet5_graph())
    assert c["conv1.weight"] == CONV_BITS and c["conv2.weight"] == CONV_BITS
    assert c["fc1.weight"] == FC_BITS and c["fc2.weight"] == FC_BITS


@pytest.mark.parametrize("bits, match", [({"nope": (4,)}, "not a prunable weight"),
                                         ({"fc1.weight": (2, 4)}, "most precise first"),
                                         ({"fc1.weight": (0,)}, "1..16")])
def test_scan_rejects_bad_widths(trained, bits, match):
    g, data = trained
    with pytest.raises(ValueError, match=match):
        bits_scan(g, data, bits)


def _scan(errors, kept, ref=0.01):
    bits = {k: tuple(sorted(v, reverse=True)) for k, v in errors.items()}
    return BitsScan(list(errors), bits, errors, ref, kept)


def test_path_lowers_the_biggest_layer_first_when_errors_tie():
    s = _scan({"big": {6: 0.01, 5: 0.01, 4: 0.01}, "small": {6: 0.01, 5: 0.01, 4: 0.01}}, {"big": 1000, "small": 10})
    path = s.path(0.0)
    assert path[0] == {"big": 6, "small": 6}
    assert path[1] == {"big": 5, "small": 6} and path[2] == {"big": 4, "small": 6}
    assert path[-1] == {"big": 4, "small": 4}


def test_path_stops_at_the_budget_and_skips_costly_layers():
    s = _scan({"a": {6: 0.010, 5: 0.012, 4: 0.030}, "b": {6: 0.010, 5: 0.011, 4: 0.0105}}, {"a": 100, "b": 100})
    path = s.path(0.003)
    assert path[-1] == {"a": 5, "b": 4}  # a at 4 bits would cost 2 pp
    assert s.path(0.0) == [{"a": 6, "b": 6}]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.lists(st.floats(0, 0.05), min_size=2, max_size=5)),
                min_size=1, max_size=4), st.floats(0, 0.05))
def test_path_properties(layers, budget):
    errors, kept = {}, {}
    for i, (n, errs) in enumerate(layers):
        widths = range(8, 8 - len(errs), -1)
        errors[f"l{i}"] = dict(zip(widths, errs))
        kept[f"l{i}"] = n
    s = _scan(errors, kept, ref=0.01)
    path = s.path(budget)
    assert path[0] == {k: max(v) for k, v in errors.items()}
    for before, after in zip(path, path[1:]):
        changed = [k for k in before if before[k] != after[k]]
        assert len(changed) == 1
        k = changed[0]
        assert s.bits[k].index(after[k]) == s.bits[k].index(before[k]) + 1
        predicted = sum(max(0.0, errors[n][after[n]] - 0.01) for n in after)
        assert predicted <= budget + 1e-9
