"""Control flow at pack time (packer/control_flow.py): inputs fixed with --input-value become constants, an If whose
condition is then constant is replaced by its branch (outer-scope reads kept, names made unique, nested Ifs too), and
what cannot be specialised is refused with a message whose advice works. Every specialised graph is compared with
the original in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.cli import main
from edgepack.packer.control_flow import has_body
from edgepack.packer.onnx_io import from_onnx, graph_to_onnx, load_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.shapes import check_storable, fold_constants, parse_input_values, specialise
from edgepack.packer.unpack import unpack
from edgepack.packer.verify import session
from edgepack.runtime.errors import UnsupportedError
from edgepack.runtime.loader import read_packed

RNG = np.random.default_rng(11)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _const(name, value):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value)))


def branching_net():
    """y = relu(x @ W + 1) * 2 if mode == 16000 else x @ W - 3, where the then-branch holds a nested If on a shape
    (always true for static shapes) and reads the outer weight W and activation h."""
    w = (RNG.standard_normal((4, 3)) / 2).astype(np.float32)
    nested = helper.make_node(
        "If", ["same"], ["nested_out"], name="nested",
        then_branch=helper.make_graph([_const("k2", np.float32(2.0)), helper.make_node("Mul", ["r", "k2"], ["m"])],
                                      "nested_then", [], [_vi("m", None)]),
        else_branch=helper.make_graph([helper.make_node("Identity", ["r"], ["r_id"])], "nested_else", [],
                                      [_vi("r_id", None)]))
    then_g = helper.make_graph(
        [_const("t", np.float32(1.0)), helper.make_node("Add", ["h", "t"], ["a"]),
         helper.make_node("Relu", ["a"], ["r"]),
         helper.make_node("Size", ["r"], ["rs"]), helper.make_node("Size", ["h"], ["hs"]),
         helper.make_node("Equal", ["rs", "hs"], ["same"]), nested],
        "then", [], [_vi("nested_out", None)])
    else_g = helper.make_graph([_const("k3", np.float32(3.0)), helper.make_node("Sub", ["h", "k3"], ["s"])],
                               "else", [], [_vi("s", None)])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Equal", ["mode", "rate"], ["cond"], name="eq"),
             helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["h", "k"], ["z"], name="outer_k")]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(16000, np.int64), "rate"),
             numpy_helper.from_array(np.float32(0.5), "k")]
    g = helper.make_graph(nodes, "branching", [_vi("x", ["N", 4]), _vi("mode", [], TensorProto.INT64)],
                          [_vi("y", ["N", 3]), _vi("z", ["N", 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(model, feeds):
    return session(model).run(None, feeds)


def _ops(g):
    return [n.op for n in g.nodes]


@pytest.mark.parametrize("mode", [16000, 8000])
def test_if_on_a_fixed_input_is_replaced_by_its_branch(mode):
    m = branching_net()
    g = specialise(from_onnx(m), {"x": [2, 4]}, {"mode": mode})
    assert not any(has_body(n) for n in g.nodes) and [v.name for v in g.inputs] == ["x"]
    check_storable(g)
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    want = _run(m, {"x": x, "mode": np.array(mode, np.int64)})
    got = _run(graph_to_onnx(g), {"x": x})
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    if mode == 16000:  # the nested If (a shape comparison) was folded and inlined as well
        assert sorted(_ops(g)) == ["Add", "Add", "Gemm", "Mul", "Relu"]
    else:
        assert sorted(_ops(g)) == ["Add", "Gemm", "Sub"]


def test_branch_names_are_kept_where_unique_and_outer_reads_kept():
    g = specialise(from_onnx(branching_net()), {"x": [2, 4]}, {"mode": 8000})
    sub = next(n for n in g.nodes if n.op == "Sub")
    add = next(n for n in g.nodes if n.op == "Add")
    assert sub.inputs == [add.inputs[0], "k3"] and float(g.initializers["k3"]) == 3.0
    assert add.inputs[1] == "k" and float(g.initializers["k"]) == 0.5


def test_two_ifs_with_the_same_inner_names():
    def model():
        def if_node(name, out):
            then_g = helper.make_graph([_const("c", np.float32(2.0)), helper.make_node("Mul", ["x", "c"], ["t"])],
                                       "then", [], [_vi("t", None)])
            else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["t"])], "else", [], [_vi("t", None)])
            return helper.make_node("If", ["flag"], [out], name=name, then_branch=then_g, else_branch=else_g)
        g = helper.make_graph([if_node("a", "ya"), if_node("b", "yb"), helper.make_node("Add", ["ya", "yb"], ["y"])],
                              "two", [_vi("x", [3]), _vi("flag", [], TensorProto.BOOL)], [_vi("y", [3])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    m = model()
    for flag in (True, False):
        g = specialise(from_onnx(m), None, {"flag": flag})
        outs = [o for n in g.nodes for o in n.outputs]
        assert len(outs) == len(set(outs))
        x = RNG.standard_normal(3).astype(np.float32)
        np.testing.assert_array_equal(_run(graph_to_onnx(g), {"x": x})[0],
                                      _run(m, {"x": x, "flag": np.array(flag)})[0])


def test_renamed_outer_value_is_renamed_inside_bodies():
    """An Identity the importer removes renames what a body reads from outside."""
    then_g = helper.make_graph([helper.make_node("Relu", ["hid"], ["r"])], "then", [], [_vi("r", None)])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["hid"], ["e"])], "else", [], [_vi("e", None)])
    g = helper.make_graph([helper.make_node("Neg", ["x"], ["h"]), helper.make_node("Identity", ["h"], ["hid"]),
                           helper.make_node("If", ["flag"], ["y"], then_branch=then_g, else_branch=else_g)],
                          "g", [_vi("x", [3]), _vi("flag", [], TensorProto.BOOL)], [_vi("y", [3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    graph = from_onnx(m)
    assert "Identity" not in _ops(graph)
    x = RNG.standard_normal(3).astype(np.float32)
    for flag in (True, False):
        np.testing.assert_array_equal(_run(graph_to_onnx(graph), {"x": x, "flag": np.array(flag)})[0],
                                      _run(m, {"x": x, "flag": np.array(flag)})[0])
        s = specialise(graph, None, {"flag": flag})
        np.testing.assert_array_equal(_run(graph_to_onnx(s), {"x": x})[0],
                                      _run(m, {"x": x, "flag": np.array(flag)})[0])


# ---------------------------------------------------------------- refusals, and their advice followed

def test_if_on_an_unfixed_input_names_the_flag_and_the_advice_works(tmp_path):
    src = tmp_path / "b.onnx"
    onnx.save(branching_net(), str(src))
    with pytest.raises(UnsupportedError) as e:
        pack(src, tmp_path / "b.epk", input_shapes={"x": [2, 4]})
    msg = str(e.value)
    assert msg.startswith("node 'branch' (If): format v1 has no control flow")
    assert "input(s) 'mode' (int64[]) (compared with [16000])" in msg and "--input-value mode=VALUE" in msg
    assert "\n" not in msg
    pack(src, tmp_path / "b.epk", input_shapes={"x": [2, 4]}, input_values={"mode": 16000})
    assert "If" not in [n["op"] for n in read_packed(tmp_path / "b.epk").graph["nodes"]]


def test_if_on_a_dynamic_shape_asks_for_the_shape():
    m = branching_net()  # with mode fixed, the nested If compares sizes of a tensor with a dynamic batch
    with pytest.raises(UnsupportedError, match=r"node 'Size_3' \(Size\) needs the static shape of 'r'; .*"
                                               r"give it with --input-shape x=1,4"):
        specialise(from_onnx(m), None, {"mode": 16000})
    g = from_onnx(m)
    g.initializers["mode"], g.inputs = np.array(16000, np.int64), g.inputs[:1]
    with pytest.raises(UnsupportedError, match=r"node 'nested' \(If\): .*depends on input dimensions left dynamic: "
                                               r"give them with --input-shape x=1,4"):
        check_storable(fold_constants(g))


def _gate_model():
    """y = -x if sum(x) > 0 else x."""
    then_g = helper.make_graph([helper.make_node("Neg", ["x"], ["n"])], "then", [], [_vi("n", None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["i"])], "else", [], [_vi("i", None)])
    g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1, name="sum"),
                           helper.make_node("Greater", ["s", "zero"], ["c"], name="gt"),
                           helper.make_node("If", ["c"], ["y"], name="gate", then_branch=then_g, else_branch=else_g)],
                          "g", [_vi("x", [1, 64])], [_vi("y", None)],
                          [numpy_helper.from_array(np.float32(0), "zero")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_if_on_data_is_refused_as_a_run_time_decision():
    g = fold_constants(from_onnx(_gate_model()))
    with pytest.raises(UnsupportedError, match=r"node 'gate' \(If\): .*computed from the data of input\(s\) 'x' "
                                               r"\(float32\[1, 64\]\), so it is decided anew on every run"):
        check_storable(g)


def test_loop_is_refused_by_name():
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Add", ["v_in", "x"], ["v_out"])], "body",
                             [_vi("i", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("v_in", [3])],
                             [_vi("cond_out", [], TensorProto.BOOL), _vi("v_out", [3])])
    g = helper.make_graph([helper.make_node("Loop", ["trips", "", "x"], ["y"], name="acc", body=body)], "g",
                          [_vi("x", [3])], [_vi("y", [3])], [numpy_helper.from_array(np.array(3, np.int64), "trips")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    graph = fold_constants(from_onnx(m))
    x = RNG.standard_normal(3).astype(np.float32)
    np.testing.assert_array_equal(_run(graph_to_onnx(graph), {"x": x})[0], _run(m, {"x": x})[0])
    with pytest.raises(UnsupportedError, match=r"node 'acc' \(Loop\): loops are not supported"):
        check_storable(graph)


@pytest.mark.parametrize("values,msg", [
    ({"rate": 1}, r"'rate', which is not an input of the model; its inputs: x, mode"),
    ({"mode": 16000.5}, r"16000.5 is not a value of the input's type int64"),
    (["mode=abc"], r"'abc' is not a value of the input's type int64"),
    ({"mode": [1, 2]}, r"input 'mode' has shape \[\] \(1 element\(s\)\); 2 value\(s\) given"),
    ({"x": 1}, r"dynamic shape \['N', 4\]; give its shape too"),
    (["mode"], r"expected NAME=VALUE"),
    (["mode=1", "mode=2"], r"input 'mode' is given twice"),
])
def test_bad_input_values(values, msg):
    with pytest.raises(ValueError, match=msg):
        specialise(from_onnx(branching_net()), None, values)


def test_parse_input_values():
    assert parse_input_values(["sr=16000", "v=1,2,3"]) == {"sr": "16000", "v": ["1", "2", "3"]}
    assert parse_input_values({"sr": 16000}) == {"sr": 16000}
    g = specialise(from_onnx(branching_net()), {"x": [1, 4]}, ["mode=8000"])
    assert [v.name for v in g.inputs] == ["x"]


def test_cli_input_value_packs_and_unpacks_to_the_same_model(tmp_path, capsys):
    src = tmp_path / "b.onnx"
    m = branching_net()
    onnx.save(m, str(src))
    out = tmp_path / "b.epk"
    assert main(["pack", str(src), "-o", str(out), "-q", "--input-shape", "x=2,4", "--input-value", "mode=16000",
                 "--config", str(_dense_config(tmp_path)), "--check"]) == 0
    assert "check against the original (onnxruntime, random inputs): 2 inputs: max |diff| 0" in capsys.readouterr().out
    assert read_packed(out).meta["settings"]["input_values"] == {"mode": "16000"}
    unpack(out, tmp_path / "u.onnx")
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    for a, b in zip(_run(m, {"x": x, "mode": np.array(16000, np.int64)}), _run(str(tmp_path / "u.onnx"), {"x": x})):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    capsys.readouterr()
    assert main(["pack", str(src), "-o", str(tmp_path / "e.epk"), "-q", "--input-shape", "x=2,4"]) == 2
    assert "--input-value mode=VALUE" in capsys.readouterr().err


def _dense_config(tmp_path):
    p = tmp_path / "dense.toml"
    p.write_text('[default]\nencoding = "dense"\n')
    return p


# ---------------------------------------------------------------- real models

SILERO_SHAPES = {"input": [1, 512], "state": [2, 1, 128]}


@pytest.mark.parametrize("name", ["silero_vad", "silero_vad_ifless"])
def test_real_silero_specialised_on_sr_means_the_same(name):
    from realmodels.corpus import fetch

    path = str(fetch(name))
    with pytest.raises(UnsupportedError, match=r"\(If\): .*input\(s\) 'sr' \(int64\[\]\).*--input-value sr=VALUE"):
        check_storable(specialise(load_onnx(path), SILERO_SHAPES))
    g = specialise(load_onnx(path), SILERO_SHAPES, {"sr": 16000})
    check_storable(g)
    assert [v.name for v in g.inputs] == ["input", "state"] and not any(has_body(n) for n in g.nodes)
    assert "Shape" not in _ops(g) and "If" not in _ops(g)
    assert 300_000 < g.source_params < 320_000  # the 16 kHz model's parameters; the 8 kHz branch's left
    model = graph_to_onnx(g)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.standard_normal((1, 512)) * 0.3).astype(np.float32)
        state = (rng.standard_normal((2, 1, 128)) * 0.5).astype(np.float32)
        want = _run(path, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
        got = _run(model, {"input": x, "state": state})
        for a, b in zip(want, got):
            np.testing.assert_array_equal(a, b)


def test_real_silero_packs_with_sr_fixed_and_unpacks_to_the_same_model(tmp_path):
    from realmodels.corpus import fetch

    path = str(fetch("silero_vad"))
    out = tmp_path / "s.epk"
    pack(path, out, config={"default": {"encoding": "dense"}}, input_shapes=SILERO_SHAPES,
         input_values={"sr": 16000}, check_fidelity=False)
    unpack(out, tmp_path / "s.onnx")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((1, 512)) * 0.3).astype(np.float32)
    state = (rng.standard_normal((2, 1, 128)) * 0.5).astype(np.float32)
    want = _run(path, {"input": x, "state": state, "sr": np.array(16000, np.int64)})
    got = _run(str(tmp_path / "s.onnx"), {"input": x, "state": state})
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_real_hey_jarvis_if_on_its_own_score_is_refused_truthfully():
    """hey_jarvis runs its verifier network only when its first score is >= 0.5: a decision on data, which no
    --input-value can fix; the refusal says so instead of suggesting a flag."""
    from realmodels.corpus import fetch

    g = fold_constants(load_onnx(str(fetch("oww_hey_jarvis"))))
    with pytest.raises(UnsupportedError) as e:
        check_storable(g)
    assert str(e.value) == ("node 'If_32' (If): format v1 has no control flow, so the branch must be known at pack "
                            "time; its condition 'onnx::If_52' is computed from the data of input(s) 'x.1' "
                            "(float32[1, 16, 96]), so it is decided anew on every run and cannot be specialised away")
