"""Sizes a valid file may declare and what the runtime does with them: planning time near-linear up to the format's
node cap, every intermediate size bounded by shape inference, every decoded size checked before it is allocated."""
from __future__ import annotations

import random
import time

import numpy as np
import pytest

import runtime
from packer.writer import build_file
from runtime import constants as C
from runtime import planner
from runtime.planner import TensorLife, plan_arena

META = {"producer": "craft", "format_version": "1.0"}


def _graph(nodes, outputs, inputs=(("x", [1, 4]),), tensors=(), opset=17) -> dict:
    return {"name": "crafted", "opset": opset,
            "inputs": [{"name": n, "dtype": "float32", "shape": list(s)} for n, s in inputs],
            "outputs": [{"name": o, "dtype": "float32", "shape": []} for o in outputs],
            "nodes": nodes, "tensors": list(tensors)}


def _relus(n: int, fan: bool) -> bytes:
    """n Relu nodes: a chain x -> t0 -> t1 ..., or a fan-out x -> t_i for every i with every t_i a graph output."""
    nodes = [{"op": "Relu", "name": f"n{i}", "inputs": ["x" if fan or i == 0 else f"t{i - 1}"],
              "outputs": [f"t{i}"], "attrs": {}} for i in range(n)]
    return build_file(META, _graph(nodes, [f"t{i}" for i in range(n)] if fan else [f"t{n - 1}"]))


def _no_overlap(tensors, plan) -> None:
    by = sorted(((t.first, t.last, plan.offsets[t.name], t.nbytes, t.name) for t in tensors if t.nbytes))
    for i, (f, la, o, n, name) in enumerate(by):
        for f2, la2, o2, n2, name2 in by[i + 1:]:
            if f2 > la:
                break
            if plan.aliases.get(name2) == name or plan.aliases.get(name) == name2:
                continue
            assert o + n <= o2 or o2 + n2 <= o, f"{name} and {name2} overlap"


# ------------------------------------------------------------------------------------------ item 6: planning time

def test_planner_at_the_node_cap_is_near_linear():
    n = C.MAX_NODES
    chain = [TensorLife(f"t{i}", 64 * (1 + i % 5), i, i + 1) for i in range(n)]
    inplace = [TensorLife("t0", 64, 0, 1)] + [TensorLife(f"t{i}", 64, i, i + 1, f"t{i - 1}") for i in range(1, n)]
    fan = [TensorLife("x", 64, 0, 1)] + [TensorLife(f"t{i}", 64, i + 1, n + 1) for i in range(n)]
    for tensors in (chain, inplace, fan):
        t0 = time.perf_counter()
        plan = plan_arena(tensors)
        assert time.perf_counter() - t0 < 10  # quadratic: minutes (a 20,000 fan-out took 231 s before)
        assert plan.arena_bytes >= plan.peak_live_bytes
    assert plan_arena(fan).arena_bytes == 64 * n  # x dies before t1 is made: t1 takes its place


@pytest.mark.parametrize("seed", range(6))
def test_step_order_placement_is_valid(monkeypatch, seed):
    """Past MAX_GREEDY_PAIRS the planner places in step order: still no two live tensors share bytes."""
    rng = random.Random(seed)
    tensors = []
    for i in range(300):
        first = rng.randrange(60)
        tensors.append(TensorLife(f"t{i}", rng.choice([0, 1, 64, 100, 4096]), first, first + rng.randrange(12)))
    greedy = plan_arena(tensors)
    monkeypatch.setattr(planner, "MAX_GREEDY_PAIRS", 0)
    swept = plan_arena(tensors)
    for plan in (greedy, swept):
        _no_overlap(tensors, plan)
        assert plan.arena_bytes >= plan.peak_live_bytes
        assert all(o % planner.ALIGNMENT == 0 for o in plan.offsets.values())


def test_load_at_the_node_cap():
    """A chain of MAX_NODES nodes loads and runs within seconds (a 20,000-node chain took 63 s to verify before)."""
    data = _relus(C.MAX_NODES, fan=False)
    t0 = time.perf_counter()
    model = runtime.load(data)
    took = time.perf_counter() - t0
    x = np.array([[-1, 2, -3, 4]], np.float32)
    np.testing.assert_array_equal(model.run(x)[f"t{C.MAX_NODES - 1}"], np.maximum(x, 0))
    assert took < 60, f"load of {C.MAX_NODES} nodes took {took:.1f} s"


def test_load_fan_out():
    n = 20_000
    t0 = time.perf_counter()
    model = runtime.load(_relus(n, fan=True))
    took = time.perf_counter() - t0
    x = np.array([[-1, 2, -3, 4]], np.float32)
    out = model.run(x)
    assert len(out) == n and np.array_equal(out["t123"], np.maximum(x, 0))
    assert took < 30, f"load of a {n}-output fan-out took {took:.1f} s"
