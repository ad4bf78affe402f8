"""Sizes a valid file may declare and what the runtime does with them: planning time near-linear up to the format's
node cap, every intermediate size bounded by shape inference, every decoded size checked before it is allocated."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from edgepack import runtime
from edgepack.packer.writer import build_file
from edgepack.runtime import constants as C
from edgepack.runtime import planner
from edgepack.runtime.planner import TensorLife, plan_arena

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


# ------------------------------------------------------------------------------------------ items 4, 5: sizes

def _sparse_nothing(shape) -> dict:
    """A sparse_codebook tensor of `shape` (2 rows) with nnz = 0: a few bytes that declare shape's elements."""
    import craft

    enc = {"type": "sparse_codebook", "codebook_dtype": "float32", "k": 1, "codebook": np.zeros(1, np.float32),
           "rows_per_chunk": 1, "nnz": 0, "row_counts": craft.packed([0, 0], 1), "gaps": craft.packed([], 1),
           "codes": craft.packed([], 1)}
    return craft.tensor("big", shape, enc)


def _int64(name, values) -> dict:
    return {"name": name, "dtype": "int64", "shape": [len(values)],
            "encoding": {"type": "dense", "dtype": "int64", "data": np.array(values, np.int64)}}


BIG = [2, 1 << 30]  # 2^31 elements: 8 GiB as float32


def _big_file(use: str) -> bytes:
    if use == "slice":  # read by an op: a constant the runtime would expand
        nodes = [{"op": "Slice", "name": "sl", "inputs": ["big", "st", "en"], "outputs": ["s"], "attrs": {}},
                 {"op": "Add", "name": "add", "inputs": ["x", "s"], "outputs": ["y"], "attrs": {}}]
        g = _graph(nodes, ["y"], inputs=(("x", [1, 1]),), tensors=[_sparse_nothing(BIG), _int64("st", [0]),
                                                                   _int64("en", [1])])
    else:  # unused: only unpack expands it
        g = _graph([{"op": "Relu", "name": "r", "inputs": ["x"], "outputs": ["y"], "attrs": {}}], ["y"],
                   tensors=[_sparse_nothing(BIG)])
    return build_file(META, g, deflate=False)


def test_a_declared_size_is_checked_before_it_is_expanded(tmp_path, monkeypatch):
    from edgepack.runtime import memory
    from edgepack.runtime.errors import BudgetError

    data = _big_file("slice")
    assert len(data) < 5000
    monkeypatch.setattr(memory, "memory_limit", lambda: 1 << 30)  # a machine of 1 GiB
    with pytest.raises(BudgetError, match=r"tensor 'big' \(sparse_codebook, shape \[2, 1073741824\]\) decoded"):
        runtime.load(data)
    monkeypatch.undo()
    with pytest.raises(BudgetError, match="tensor 'big'.*memory budget"):
        runtime.load(data, memory_budget="64MiB")


@pytest.mark.parametrize("command", ["info", "verify", "unpack"])
@pytest.mark.parametrize("use", ["slice", "unused"])
def test_commands_under_a_memory_limit_name_the_tensor(tmp_path, command, use):
    """Under ulimit -v 3 GiB (where numpy's 8 GiB would be a MemoryError traceback) every command exits 0, or 2
    with a message naming the tensor."""
    path = tmp_path / "big.epk"
    path.write_bytes(_big_file(use))
    args = [command, str(path)] + (["-o", str(tmp_path / "out.onnx")] if command == "unpack" else [])
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY)); "
            f"from edgepack.cli import main; sys.exit(main({args!r}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
    if use == "unused" and command != "unpack":
        assert r.returncode == 0, r.stderr
    elif command == "info":  # info reports a model the runtime cannot load, and exits 0
        assert r.returncode == 0 and "cannot run this model" in r.stdout and "'big'" in r.stdout, r.stdout
    else:
        assert r.returncode == 2 and "'big'" in r.stderr, r.stderr


def _pad_file(pads) -> bytes:
    nodes = [{"op": "Pad", "name": "pad", "inputs": ["x", "pads"], "outputs": ["y"], "attrs": {}}]
    return build_file(META, _graph(nodes, ["y"], tensors=[_int64("pads", pads)]), deflate=False)


@pytest.mark.parametrize("pads", [[0, 0, 0, 1 << 40], [1 << 20, 1 << 20, 1 << 20, 1 << 20]])
def test_shape_inference_bounds_every_tensor(pads):
    from edgepack.runtime.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match=r"node 'pad'\): output 'y'.*elements, more than"):
        runtime.load(_pad_file(pads))


def test_an_input_too_large_is_refused_by_name(tmp_path):
    from edgepack.runtime.errors import EdgepackError, InputError

    nodes = [{"op": "Relu", "name": "r", "inputs": ["x"], "outputs": ["y"], "attrs": {}}]
    with pytest.raises(EdgepackError, match="input 'x'.*100000"):
        runtime.load(build_file(META, _graph(nodes, ["y"], inputs=(("x", [100000, 100000]),))))
    model = runtime.load(build_file(META, _graph(nodes, ["y"], inputs=(("x", ["N", 4]),))))
    with pytest.raises(InputError, match="elements, more than"):
        model.plan_for((1 << 30, 4))


def test_a_file_larger_than_memory_is_refused_before_reading(tmp_path):
    """A 5 GiB (sparse) file under ulimit -v 3 GiB: BudgetError naming the file, not numpy's MemoryError."""
    path = tmp_path / "huge.epk"
    with open(path, "wb") as f:
        f.truncate(5 << 30)
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))\n"
            "from edgepack import runtime\nfrom edgepack.runtime.errors import BudgetError\n"
            f"try:\n    runtime.load({str(path)!r})\nexcept BudgetError as e:\n    print('BudgetError', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert r.stdout.startswith("BudgetError") and "huge.epk: reading the file" in r.stdout, r.stdout + r.stderr


def test_an_empty_tensor_with_huge_dimensions_is_refused():
    """Found by fuzz/fuzz_graph.py: an input of shape [2^31, 2^31, 0] has no elements, but numpy refuses the shape
    (ValueError 'array is too big' in bind); shape inference now refuses it by name."""
    from edgepack.runtime.errors import UnsupportedError

    nodes = [{"op": "Relu", "name": "r", "inputs": ["x"], "outputs": ["y"], "attrs": {}}]
    with pytest.raises(UnsupportedError, match="input 'x'.*nonzero dimensions multiply"):
        runtime.load(build_file(META, _graph(nodes, ["y"], inputs=(("x", [1 << 31, 1 << 31, 0]),))))
