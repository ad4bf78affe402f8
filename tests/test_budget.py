"""Memory budgets (runtime/memory.py and the fit in runtime/model.py): the smallest budget is stated and loads, a
tight plan computes what an unlimited one does, the byte accounting matches the arrays layers hold, coarse chunks
are named, and the fit itself against brute force; `edgepack info --budget` in-process."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack import runtime
import zoo
from edgepack.cli import main
from edgepack.packer.pipeline import pack
from edgepack.runtime import layers, memory
from edgepack.runtime.errors import BudgetError, InputError
from edgepack.runtime.loader import read_packed
from edgepack.runtime.summary import layer_table
from test_model import inputs_for, lenet300

DC_CONFIG = {"default": {"bits": 6}, "layers": {"ip1": {"sparsity": 0.92}, "ip2": {"sparsity": 0.91},
                                                "ip3": {"sparsity": 0.74}}}


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """LeNet-300-100-shaped at Deep Compression's settings (8/9/26% kept, 6-bit codebooks), packed two ways:
    the default chunking and one chunk per 16K symbols."""
    root = tmp_path_factory.mktemp("budget")
    src = zoo.save(lenet300(), root / "lenet300.onnx")
    pack(src, root / "fine.epk", config=DC_CONFIG)
    coarse = {"default": {**DC_CONFIG["default"], "chunk_symbols": 16384}, "layers": DC_CONFIG["layers"]}
    pack(src, root / "coarse.epk", config=coarse)
    return str(root / "fine.epk"), str(root / "coarse.epk")


def test_minimum_budget_is_stated_and_loads(lenet):
    path = lenet[0]
    unlimited = runtime.load(path)
    for batch in (1, 5):
        minimum = runtime.load(path, batch=batch).minimum_budget
        with pytest.raises(BudgetError) as e:
            runtime.load(path, memory_budget=minimum - 1, batch=batch)
        assert f"load with memory_budget >= {minimum}" in str(e.value)
        assert f"needs {minimum:,} B" in str(e.value)
        tight = runtime.load(path, memory_budget=minimum, batch=batch)
        assert tight.plan.total_bytes == minimum <= tight.budget
        assert tight.plan.modes()["ip1"] == "streamed"  # small layers may be smaller compact (no tables)
        feeds = inputs_for(unlimited, batch, seed=batch)
        np.testing.assert_allclose(tight.run(feeds)["y"], unlimited.run(feeds)["y"], rtol=1e-6, atol=1e-7)


def test_lenet300_fits_64kib(lenet):
    """The issue's target: LeNet-300-100 at ~8% density runs within 64 KiB (weights as held + arena + scratch)."""
    model = runtime.load(lenet[0], memory_budget="64KiB")
    plan = model.plan
    assert plan.total_bytes <= 65536
    assert plan.modes()["ip1"] == "csr"  # decoded gaps and codes: 2 bytes per entry, no decoding per run
    x = inputs_for(model, 1)["x"]
    np.testing.assert_allclose(model.run(x)["y"], runtime.load(lenet[0]).run(x)["y"], rtol=1e-6, atol=1e-7)


def test_budget_prefers_speed_when_it_can(lenet):
    path = lenet[0]
    unlimited = runtime.load(path)
    roomy = runtime.load(path, memory_budget=unlimited.plan.total_bytes)
    assert roomy.plan.modes() == unlimited.plan.modes()
    assert roomy.plan.seconds <= runtime.load(path, memory_budget="64KiB").plan.seconds


def test_accounting_matches_the_arrays_held(lenet):
    """Every option's bytes equal what its built layer really holds; mapped bytes are views into the file."""
    for mode in layers.MODES:
        m = runtime.load(lenet[0], layer_modes=mode)
        data = m._container.data
        for row in m.plan.layers:
            layer = m.layers[row.name]
            ram = mapped = 0
            seen = set()
            for a in layer.arrays():
                if a is None or a.nbytes == 0:
                    continue
                key = (a.__array_interface__["data"][0], a.nbytes)
                if key in seen:
                    continue
                seen.add(key)
                lo = data.__array_interface__["data"][0]
                addr = a.__array_interface__["data"][0]
                if lo <= addr < lo + data.nbytes:
                    mapped += a.nbytes
                else:
                    ram += a.nbytes
            assert (row.ram_bytes, row.mapped_bytes) == (ram, mapped), (mode, row.name)
        plan = m.plan
        assert plan.total_bytes == (plan.weights_ram + plan.weights_mapped + plan.constants_ram
                                    + plan.constants_mapped + plan.arena_bytes + plan.scratch_bytes)
    streamed = runtime.load(lenet[0], layer_modes="streamed").plan
    # a streamed layer reads its compressed chunks from the mapped file: about the file's weight bytes
    stored = sum(r["bytes"] for r in layer_table(read_packed(lenet[0]))["layers"])
    assert 0.9 * stored <= streamed.weights_mapped <= stored
    assert streamed.weights_ram < runtime.load(lenet[0], layer_modes="compact").plan.weights_ram / 5


def test_dense_option_counts_what_it_builds(lenet):
    model = runtime.load(lenet[0])
    for row in model.plan.layers:
        dense = next(o for o in row.options if o.mode == "dense")
        m = runtime.load(lenet[0], layer_modes={row.name: "dense"})
        arrays = {a.__array_interface__["data"][0]: a for a in m.layers[row.name].arrays() if a is not None}
        held = sum(a.nbytes for a in arrays.values() if not np.may_share_memory(a, m._container.data))
        assert dense.ram_bytes == held


def test_coarse_chunks_are_named(lenet):
    fine, coarse = lenet
    fine_min = runtime.load(fine).minimum_budget
    coarse_min = runtime.load(coarse).minimum_budget
    assert coarse_min > fine_min
    with pytest.raises(BudgetError) as e:
        runtime.load(coarse, memory_budget=fine_min)
    msg = str(e.value)
    assert "chunking is too coarse" in msg and "layer 'ip1'" in msg and "chunk_symbols" in msg
    assert f">= {coarse_min}" in msg


def test_larger_batch_must_fit_too(lenet):
    model = runtime.load(lenet[0], memory_budget=runtime.load(lenet[0]).minimum_budget)
    with pytest.raises(BudgetError, match="memory budget"):
        model.run(np.zeros((64, 784), np.float32))
    big = runtime.load(lenet[0], memory_budget="1MiB", batch=64)
    assert big.plan.input_shapes == {"x": (64, 784)} and big.plan.total_bytes <= 1 << 20
    assert big.run(np.zeros((64, 784), np.float32))["y"].shape == (64, 10)
    with pytest.raises(InputError, match="batch"):
        runtime.load(lenet[0], batch=0)


def test_parse_size():
    assert memory.parse_size("64KiB") == 65536 and memory.parse_size("1MiB") == 1 << 20
    assert memory.parse_size("64k") == 65536 and memory.parse_size("64kB") == 64000
    assert memory.parse_size(1234) == 1234 and memory.parse_size("1234") == 1234
    for bad in ("lots", "-1k", True, float("nan")):
        with pytest.raises(ValueError):
            memory.parse_size(bad)


# ------------------------------------------------------------------------------------------------ the fit


def _opt(mode, ram, scratch, seconds):
    return layers.Option(mode, ram, 0, scratch, seconds)


option = st.builds(_opt, st.sampled_from(layers.MODES), st.integers(0, 5000), st.integers(0, 3000),
                   st.floats(1e-6, 1e-3))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(option, min_size=1, max_size=3), min_size=0, max_size=4), st.integers(0, 2000),
       st.integers(0, 2000), st.integers(0, 20000))
def test_fit_against_brute_force(opts, fixed, fixed_scratch, budget):
    named = [(f"l{i}", o) for i, o in enumerate(opts)]
    combos = list(itertools.product(*opts))

    def total(c):
        return fixed + max([fixed_scratch] + [o.scratch_bytes for o in c]) + sum(o.ram_bytes for o in c)

    minimum = min(total(c) for c in combos)
    best = min(sum(o.seconds for o in c) for c in combos if total(c) <= budget) if minimum <= budget else None
    if minimum > budget:
        with pytest.raises(BudgetError, match=f">= {minimum}$|>= {minimum}\\."):
            memory.fit(named, fixed, fixed_scratch, budget)
        return
    result = memory.fit(named, fixed, fixed_scratch, budget)
    assert result.minimum == minimum
    assert total(result.choice) <= budget
    assert sum(o.seconds for o in result.choice) >= best - 1e-12
    free = memory.fit(named, fixed, fixed_scratch, None)
    assert sum(o.seconds for o in free.choice) == pytest.approx(min(sum(o.seconds for o in c) for c in combos))


def test_fit_upgrades_the_best_rate_first():
    slow_small = [_opt("streamed", 100, 0, 10.0), _opt("compact", 600, 0, 1.0)]
    other = [_opt("streamed", 100, 0, 5.0), _opt("compact", 600, 0, 4.0)]
    result = memory.fit([("a", slow_small), ("b", other)], 0, 0, 700)
    assert [o.mode for o in result.choice] == ["compact", "streamed"]


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_info_budget(lenet, capsys):
    path = lenet[0]
    assert main(["info", path, "--budget", "64KiB"]) == 0
    text = capsys.readouterr().out
    assert "memory plan for x (1, 784); budget 65,536 B" in text and "fits the budget" in text
    assert "runtime: the model loads" in text
    assert main(["info", path, "--budget", "8KiB"]) == 2
    assert "too small" in capsys.readouterr().err
    assert main(["info", path, "--budget", "64KiB", "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert info["runtime"]["fits"] and info["runtime"]["plan"]["total_bytes"] <= 65536


# ------------------------------------------------------------------------------------ Conv: both dense forms


def test_fit_takes_plain_dense_when_the_winograd_form_does_not_fit():
    """A Conv's two dense options (plain, and Winograd at 16/9 of its bytes) are separate choices: a budget that
    fits the plain one but not the Winograd one gets the plain one, not the slower compact holding."""
    opts = [_opt("compact", 100, 0, 3.0), layers.Option("dense", 900, 0, 0, 2.0),
            layers.Option("dense", 1600, 0, 0, 1.0, "Winograd F(2x2, 3x3) form", "winograd")]
    for budget, want in ((1600, "winograd"), (1599, ""), (900, ""), (899, None)):
        choice = memory.fit([("conv", opts)], 0, 0, budget).choice[0]
        assert (choice.mode, choice.form) == (("compact", "") if want is None else ("dense", want))
    assert memory.fit([("conv", opts)], 0, 0, None).choice[0].form == "winograd"


def test_conv_offers_both_dense_forms_and_a_budget_chooses(tmp_path):
    """A codebook 3x3 stride-1 Conv (64 -> 64 at 40x40) is offered compact, plain dense (the blocked kernel) and the
    Winograd form, each with the bytes and scratch of what it builds; unlimited it runs Winograd; with a budget
    that fits plain dense but not the Winograd form it runs plain dense (not compact); the memory plan reports the
    form held; every holding computes the same outputs."""
    cin = cout = 64
    hw, pads = 40, [1, 1, 1, 1]
    src, out = tmp_path / "one.onnx", tmp_path / "one.epk"
    zoo.save(zoo.conv_relu(cin, cout, hw, cin, pads=pads), src)  # test_conv_winograd's model
    pack(str(src), str(out), sparsity=0.0, bits=8)
    free = runtime.load(str(out), threads=1)
    row = next(r for r in free.plan.layers if r.name == "conv")
    by = {(o.mode, o.form): o for o in row.options}
    plain, wino, compact = by[("dense", "")], by[("dense", "winograd")], by[("compact", "")]
    assert wino.seconds < plain.seconds < compact.seconds  # the cost model's order at these shapes
    assert wino.ram_bytes - plain.ram_bytes == 16 * cout * cin * 4 - (9 * cout * cin * 4 + 4 * cout)
    assert free.layers["conv"].prepared.kind == "winograd"
    assert (row.mode, row.ram_bytes, row.note) == ("dense", wino.ram_bytes, wino.note)

    assert free.plan.scratch_owner == "conv"  # the plan's scratch is the layer's
    budget = free.plan.total_bytes - (wino.ram_bytes + wino.scratch_bytes) + plain.ram_bytes + plain.scratch_bytes
    assert budget < free.plan.total_bytes
    tight = runtime.load(str(out), threads=1, memory_budget=budget)
    layer = tight.layers["conv"]
    assert (layer.mode, layer.form, layer.prepared.kind) == ("dense", "", "dense")
    row = next(r for r in tight.plan.layers if r.name == "conv")
    assert (row.ram_bytes, row.scratch_bytes) == (plain.ram_bytes, layer.scratch_bytes([(1, cin, hw, hw)]))
    assert tight.plan.total_bytes <= budget
    x = np.random.default_rng(3).standard_normal((1, cin, hw, hw)).astype(np.float32)
    ref = runtime.load(str(out), threads=1, layer_modes="compact").run({"x": x})["z"].astype(np.float64)
    for model in (free, tight):
        np.testing.assert_allclose(model.run({"x": x})["z"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
