"""The executor's block views (executor.block_views -> planner.BlockView): small graphs packed and run against
onnxruntime on the same packed weights, with the plan checked for which Concat / Split / Slice steps it dropped
(their tensors placed inside one another) and which it must keep: a Concat of conv outputs, one tensor in two Concats
or twice in one, a Concat input that is a graph output, Split -> Concat (YOLOv8's C2f), an axis whose parts are not
contiguous blocks (batch 2, a later axis), Slices, and in-place writes that would change a view's bytes."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import zoo
from edgepack import runtime
from edgepack.packer.pipeline import pack
from edgepack.runtime import executor
from edgepack.runtime.planner import plan_arena
from test_model import _finish, assert_close_to, reference

C = 4  # input channels
HW = 6


def _conv(rng, tensors, name, x, cin, cout, k=3):
    tensors[f"{name}.w"] = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
    tensors[f"{name}.b"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    return helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [name], name=name, pads=[k // 2] * 4)


def _run(tmp_path, nodes, tensors, outputs, batch=1):
    """Pack the graph (x: (N, C, HW, HW) -> `outputs`: {name: channels}), run it at `batch` against onnxruntime
    on the packed weights; returns the plan the run used."""
    proto = _finish(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, HW, HW])],
                    [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", f"{o}_c", f"{o}_h", f"{o}_w"])
                     for o in outputs], tensors, "views")
    src = zoo.save(proto, tmp_path / "views.onnx")
    out = tmp_path / "views.epk"
    pack(src, out, sparsity=0.0, bits=8)
    model = runtime.load(str(out), threads=1)
    x = np.random.default_rng(1).standard_normal((batch, C, HW, HW)).astype(np.float32)
    ref = reference(str(out), {"x": x})
    for _ in range(2):  # the second run reuses the bound plan (and the fast path)
        assert_close_to(ref, model.run({"x": x}), rel=1e-5)
    return model._exec_plan({"x": x.shape})


def _ops(plan) -> list[str]:
    return [op.split("+")[0] for _, op in plan.step_nodes]


def _copies_nothing_more(plan) -> None:
    """The plan's arena with views is no larger than the same lifetimes planned without them."""
    assert plan.arena.arena_bytes <= plan_arena(plan.lifetimes).arena_bytes
    assert plan.arena.arena_bytes >= plan.arena.peak_live_bytes


def test_concat_of_conv_outputs_is_written_in_place(tmp_path):
    rng = np.random.default_rng(0)
    t = {}
    nodes = [_conv(rng, t, "c1", "x", C, 3), _conv(rng, t, "c2", "x", C, 5),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Concat", ["c1", "r2"], ["y"], name="cat", axis=1), _conv(rng, t, "head", "y", 8, 2)]
    plan = _run(tmp_path, nodes, t, ["head"])
    assert "Concat" not in _ops(plan)
    assert plan.arena.views["c1"] == ("y", 0) and plan.arena.views["r2"] == ("y", 3 * HW * HW * 4)
    assert plan.arena.offsets["r2"] == plan.arena.offsets["y"] + 3 * HW * HW * 4  # not a multiple of 64: fine
    _copies_nothing_more(plan)
    # batch 2: each input is two blocks of the output, so the Concat copies
    plan = _run(tmp_path, nodes, t, ["head"], batch=2)
    assert "Concat" in _ops(plan) and not plan.arena.views


def test_concat_on_a_later_axis_copies(tmp_path):
    rng = np.random.default_rng(2)
    t = {}
    nodes = [_conv(rng, t, "c1", "x", C, 3), _conv(rng, t, "c2", "x", C, 3),
             helper.make_node("Concat", ["c1", "c2"], ["y"], name="cat", axis=2), _conv(rng, t, "head", "y", 3, 2)]
    plan = _run(tmp_path, nodes, t, ["head"])
    assert "Concat" in _ops(plan) and not plan.arena.views


def test_tensor_in_two_concats_and_twice_in_one(tmp_path):
    rng = np.random.default_rng(3)
    t = {}
    nodes = [_conv(rng, t, "c1", "x", C, 3), _conv(rng, t, "c2", "x", C, 2),
             helper.make_node("Concat", ["c1", "c2"], ["y1"], name="cat1", axis=1),
             helper.make_node("Concat", ["c2", "c1", "c1"], ["y2"], name="cat2", axis=1),
             _conv(rng, t, "h1", "y1", 5, 2), _conv(rng, t, "h2", "y2", 8, 2)]
    plan = _run(tmp_path, nodes, t, ["h1", "h2"])
    # one place each: c1 and c2 inside y1 (the first request); y2 copies all three parts
    assert plan.arena.views == {"c1": ("y1", 0), "c2": ("y1", 3 * HW * HW * 4)}
    assert _ops(plan).count("Concat") == 1
    _copies_nothing_more(plan)


def test_concat_input_that_is_a_graph_output_is_copied(tmp_path):
    rng = np.random.default_rng(4)
    t = {}
    nodes = [_conv(rng, t, "c1", "x", C, 3), _conv(rng, t, "c2", "x", C, 2),
             helper.make_node("Concat", ["c1", "c2"], ["y"], name="cat", axis=1), _conv(rng, t, "head", "y", 5, 2)]
    plan = _run(tmp_path, nodes, t, ["head", "c1"])
    assert "c1" not in plan.arena.views and plan.arena.views["c2"] == ("y", 3 * HW * HW * 4)
    assert "Concat" in _ops(plan)  # c1 copied, c2 already in place


def test_split_then_concat_c2f_drops_both(tmp_path):
    """YOLOv8's C2f: s = conv(x); a, b = Split(s); d = b + conv(conv(b)); Concat(a, b, d): s is written inside the
    Concat's output, so neither the Split nor the Concat copies."""
    rng = np.random.default_rng(5)
    t = {"sizes": np.array([2, 2], np.int64)}
    nodes = [_conv(rng, t, "s", "x", C, 4, k=1),
             helper.make_node("Split", ["s", "sizes"], ["a", "b"], name="split", axis=1),
             _conv(rng, t, "m1", "b", 2, 2), helper.make_node("Relu", ["m1"], ["m1r"], name="m1relu"),
             _conv(rng, t, "m2", "m1r", 2, 2), helper.make_node("Add", ["b", "m2"], ["d"], name="res"),
             helper.make_node("Concat", ["a", "b", "d"], ["y"], name="cat", axis=1), _conv(rng, t, "head", "y", 6, 3)]
    plan = _run(tmp_path, nodes, t, ["head"])
    assert "Split" not in _ops(plan) and "Concat" not in _ops(plan)
    block = 2 * HW * HW * 4
    assert plan.arena.views["s"] == ("y", 0) and plan.arena.views["d"] == ("y", 2 * block)
    assert plan.arena.views["a"] == ("s", 0) and plan.arena.views["b"] == ("s", block)
    assert plan.arena.holders("a") >= {"s", "y"}
    _copies_nothing_more(plan)
    plan = _run(tmp_path, nodes, t, ["head"], batch=3)
    assert "Split" in _ops(plan) and "Concat" in _ops(plan)


def test_split_outputs_reordered_into_a_concat(tmp_path):
    rng = np.random.default_rng(6)
    t = {"sizes": np.array([1, 3], np.int64)}
    nodes = [_conv(rng, t, "s", "x", C, 4, k=1),
             helper.make_node("Split", ["s", "sizes"], ["a", "b"], name="split", axis=1),
             helper.make_node("Concat", ["b", "a"], ["y"], name="cat", axis=1), _conv(rng, t, "head", "y", 4, 2)]
    plan = _run(tmp_path, nodes, t, ["head"])
    assert "Split" not in _ops(plan) and "Concat" in _ops(plan)  # a, b inside s; y copies them over


def test_slices_that_are_blocks_are_views(tmp_path):
    rng = np.random.default_rng(7)
    t = {"st": np.array([1], np.int64), "en": np.array([3], np.int64), "ax": np.array([1], np.int64),
         "st2": np.array([0], np.int64), "en2": np.array([4], np.int64), "step2": np.array([2], np.int64),
         "st3": np.array([1], np.int64), "en3": np.array([5], np.int64), "ax3": np.array([2], np.int64)}
    n = helper.make_node
    nodes = [_conv(rng, t, "s", "x", C, 4, k=1),
             n("Slice", ["s", "st", "en", "ax"], ["block"], name="sl_block"),  # channels 1..2: one block
             n("Slice", ["s", "st2", "en2", "ax", "step2"], ["strided"], name="sl_strided"),  # channels 0, 2
             n("Slice", ["s", "st3", "en3", "ax3"], ["rows"], name="sl_rows"),  # rows 1..4 of every channel
             _conv(rng, t, "h1", "block", 2, 2), _conv(rng, t, "h2", "strided", 2, 2), _conv(rng, t, "h3", "rows", 4, 2)]
    plan = _run(tmp_path, nodes, t, ["h1", "h2", "h3"])
    assert plan.arena.views == {"block": ("s", HW * HW * 4)}
    assert _ops(plan).count("Slice") == 2


def test_in_place_write_over_a_view_keeps_it_a_copy(tmp_path):
    """c1 is read by the Concat, then overwritten in place by Sigmoid while the Concat's output is still read:
    c1 inside y would change y, so y copies c1. And y overwritten in place (Relu) while c2 is read after: c2 is not
    placed inside y either."""
    rng = np.random.default_rng(8)
    t = {}
    n = helper.make_node
    nodes = [_conv(rng, t, "c1", "x", C, 3), _conv(rng, t, "c2", "x", C, 2),
             n("Concat", ["c1", "c2"], ["y"], name="cat", axis=1),
             n("Sigmoid", ["c1"], ["g"], name="sig"),  # in place of c1 (its last reader)
             _conv(rng, t, "h1", "y", 5, 2),
             n("Relu", ["y"], ["yr"], name="yrelu"),  # in place of y (its last reader)
             _conv(rng, t, "h2", "c2", 2, 2),  # c2 read after y was overwritten
             _conv(rng, t, "h3", "g", 3, 2), _conv(rng, t, "h4", "yr", 5, 2)]
    plan = _run(tmp_path, nodes, t, ["h1", "h2", "h3", "h4"])
    assert plan.arena.aliases.get("g") == "c1" and plan.arena.aliases.get("yr") == "y"
    assert "c1" not in plan.arena.views and "c2" not in plan.arena.views
    assert "Concat" in _ops(plan)


def test_in_place_write_after_every_reader_is_done_keeps_the_view(tmp_path):
    """y = Concat(c1, c2) overwritten in place by Relu once c1 and c2 are no longer read: both stay views."""
    rng = np.random.default_rng(9)
    t = {}
    n = helper.make_node
    nodes = [_conv(rng, t, "c1", "x", C, 3), _conv(rng, t, "c2", "x", C, 2),
             n("Concat", ["c1", "c2"], ["y"], name="cat", axis=1), n("Sigmoid", ["y"], ["ys"], name="ysig"),
             _conv(rng, t, "head", "ys", 5, 2)]
    plan = _run(tmp_path, nodes, t, ["head"])
    assert plan.arena.aliases.get("ys") == "y" and set(plan.arena.views) == {"c1", "c2"}
    assert "Concat" not in _ops(plan)


def test_block_views_requests(tmp_path):
    """What the executor asks the planner for, before the planner's rule: graph inputs and outputs never inside
    another tensor; the Split's input requested inside the Concat before the Concat's own inputs."""
    prog = executor.Program(inputs=["x"], outputs=["y", "a"], nodes=[
        {"op": "Split", "name": "sp", "inputs": ["x", "sz"], "outputs": ["a", "b"], "attrs": {"axis": 1}},
        {"op": "Relu", "name": "r", "inputs": ["x"], "outputs": ["s"], "attrs": {}},
        {"op": "Split", "name": "sp2", "inputs": ["s", "sz"], "outputs": ["c", "d"], "attrs": {"axis": 1}},
        {"op": "Concat", "name": "cat", "inputs": ["c", "d", "b"], "outputs": ["y"], "attrs": {"axis": 1}},
    ], consts={"sz": np.array([1, 1], np.int64)}, const_shapes={"sz": (2,)})
    shapes = {"x": (1, 2, 3), "a": (1, 1, 3), "b": (1, 1, 3), "s": (1, 2, 3), "c": (1, 1, 3), "d": (1, 1, 3),
              "y": (1, 3, 3)}
    got = [(v.tensor, v.within, v.offset) for v in executor.block_views(prog, shapes)]
    assert got == [("b", "x", 12), ("c", "s", 0), ("d", "s", 12), ("s", "y", 0), ("c", "y", 0), ("d", "y", 12),
                   ("b", "y", 24)]


@pytest.mark.parametrize("bias,shape,folds", [(False, (1, 5, 1, 1), True), (True, (5, 1, 1), True),
                                              (False, (1, 5, HW, HW), False), (False, (1, 1, 1, 1), False)])
def test_conv_then_add_of_a_channel_constant_takes_it_as_bias(tmp_path, bias, shape, folds):
    """executor.fold_bias_adds: Conv -> Add of one constant per output channel (paddle2onnx's bias node) -> Relu runs
    as one step, the constant in the conv's bias (with or without a bias of its own), against onnxruntime on the
    packed weights; a constant per value, or one scalar for every channel (a chain step), is not a bias."""
    rng = np.random.default_rng(3)
    t = {}
    conv = _conv(rng, t, "c1", "x", C, 5)
    if not bias:
        conv = helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="c1", pads=[1] * 4)
        del t["c1.b"]
    t["k"] = rng.standard_normal(shape).astype(np.float32)
    nodes = [conv, helper.make_node("Add", ["k", "c1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["r"], name="relu")]
    plan = _run(tmp_path, nodes, t, {"r": 5})
    assert _ops(plan) == (["Conv"] if folds or shape[1] == 1 else ["Conv", "Add", "Relu"])
    program = runtime.load(str(tmp_path / "views.epk"), threads=1)._program
    assert ("add" not in {n["name"] for n in program.nodes}) == folds  # the scalar: a step of the conv's chain
    assert ("k" in program.consts) != folds
