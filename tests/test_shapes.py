"""Static shapes and constant folding (packer/shapes.py): PyTorch-style shape arithmetic folds away, dynamic
dimensions a node needs give an error naming the input, and packed -> unpacked models run in onnxruntime as the
originals do.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgepack.cli import main
from edgepack.packer.onnx_io import from_onnx, graph_to_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.shapes import check_storable, fold_constants, parse_input_shapes, specialise
from edgepack.packer.unpack import unpack
from edgepack.packer.verify import session
from edgepack.runtime.errors import UnsupportedError
from edgepack.runtime.loader import read_packed

RNG = np.random.default_rng(7)


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "m", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _x(shape, name="x"):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def flatten_net(opset=17, batch="N", seed=0):
    """Conv -> Relu -> x.view(x.size(0), -1) as torch.onnx exports it -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = {"w": (rng.standard_normal((4, 3, 3, 3)) / 5).astype(np.float32), "b": np.zeros(4, np.float32),
             "fc": (rng.standard_normal((10, 4 * 4 * 4)) / 8).astype(np.float32),
             "fcb": (rng.standard_normal(10) / 10).astype(np.float32),
             "zero": np.array(0, np.int64), "ax0": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["nu"], name="unsqueeze"),
             helper.make_node("Concat", ["nu", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["r", "target"], ["f"], name="reshape"),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1)]
    return _model(nodes, [_x([batch, 3, 4, 4])], [_x([batch, 10], "y")], inits, opset)


def grid_net():
    """A YOLO-style head: a grid built from the input's shape (Shape, Gather, Range, Unsqueeze, ConstantOfShape,
    Expand, Cast, Mul, Slice, Concat) added to the activations, and a Reshape whose target is computed."""
    one, zero = np.array(1, np.int64), np.array(0, np.int64)
    inits = {"i2": np.array(2, np.int64), "i3": np.array(3, np.int64), "zero": zero, "one": one,
             "ax0": np.array([0], np.int64), "ax01": np.array([0, 1], np.int64), "half": np.array(0.5, np.float32),
             "s0": np.array([2], np.int64), "e0": np.array([4], np.int64), "minus1": np.array([-1], np.int64)}
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i3"], ["w"], name="get_w", axis=0),
             helper.make_node("Range", ["zero", "w", "one"], ["cols"], name="range"),
             helper.make_node("Cast", ["cols"], ["colsf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["colsf", "half"], ["grid"], name="scale"),
             helper.make_node("Slice", ["s", "s0", "e0", "ax0"], ["hw"], name="slice_hw"),
             # (no 'value' attribute: the importer refuses TENSOR attributes; the default value is 0.0)
             helper.make_node("ConstantOfShape", ["hw"], ["zeros"], name="zeros"),
             helper.make_node("Add", ["zeros", "grid"], ["grid2"], name="grid2"),
             helper.make_node("Unsqueeze", ["grid2", "ax01"], ["grid4"], name="unsq"),
             helper.make_node("Expand", ["grid4", "s"], ["gridx"], name="expand"),
             helper.make_node("Add", ["x", "gridx"], ["a"], name="add"),
             helper.make_node("Sigmoid", ["a"], ["sg"], name="sigmoid"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="get_n", axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["nu"], name="unsq_n"),
             helper.make_node("Concat", ["nu", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["sg", "target"], ["flat"], name="reshape"),
             # a Shape of a tensor whose shape came from a computed target: folds in a later round
             helper.make_node("Shape", ["flat"], ["fs"], name="shape2"),
             helper.make_node("Gather", ["fs", "one"], ["k"], name="get_k", axis=0),
             helper.make_node("Unsqueeze", ["k", "ax0"], ["ku"], name="unsq_k"),
             helper.make_node("Concat", ["minus1", "ku"], ["target2"], name="concat2", axis=0),
             helper.make_node("Reshape", ["flat", "target2"], ["y"], name="reshape2")]
    return _model(nodes, [_x(["N", 2, "H", "W"])], [_x(["N", "K"], "y")], inits)


def _ops(graph):
    return [n.op for n in graph.nodes]


def _run(model, feeds):
    return session(model).run(None, feeds)[0]


# ---------------------------------------------------------------- folding

def test_pytorch_flatten_folds_to_one_reshape_with_a_constant_shape():
    g = specialise(from_onnx(flatten_net()), {"x": [2, 3, 4, 4]})
    assert _ops(g) == ["Conv", "Relu", "Reshape", "Gemm"]
    reshape = g.nodes[2]
    target = g.initializers[reshape.inputs[1]]
    assert target.dtype == np.int64 and target.tolist() == [2, -1]
    assert g.inputs[0].shape == [2, 3, 4, 4]
    assert g.outputs[0].shape == [2, 10]  # the output's dynamic batch is now known
    # the intermediate shape values are gone from the initializers
    assert set(g.initializers) == {"w", "b", "fc", "fcb", reshape.inputs[1]}


def test_specialised_graph_runs_like_the_original():
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    m = flatten_net()
    g = specialise(from_onnx(m), {"x": [2, 3, 4, 4]})
    np.testing.assert_allclose(_run(graph_to_onnx(g), {"x": x}), _run(m, {"x": x}), rtol=1e-6, atol=1e-6)


def test_grid_head_folds_every_shape_op_in_several_rounds():
    m = grid_net()
    g = specialise(from_onnx(m), ["x=1,2,3,5"])
    assert _ops(g) == ["Add", "Sigmoid", "Reshape", "Reshape"]
    assert g.outputs[0].shape == [1, 30]
    x = RNG.standard_normal((1, 2, 3, 5)).astype(np.float32)
    want = _run(m, {"x": x})
    np.testing.assert_allclose(_run(graph_to_onnx(g), {"x": x}), want, rtol=1e-6, atol=1e-7)
    # the grid is an initializer now: 0, 0.5, 1, ... along the last axis
    grid = next(v for k, v in g.initializers.items() if v.dtype == np.float32 and v.ndim == 4)
    np.testing.assert_array_equal(grid[0, 0, 0], np.arange(5) * 0.5)


def test_fold_without_shapes_keeps_dynamic_shape_arithmetic():
    g = fold_constants(from_onnx(flatten_net()))
    assert _ops(g) == ["Conv", "Relu", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Gemm"]


def test_fold_without_shapes_uses_static_declared_dims():
    # the batch is declared static: the model accepts nothing else, so folding its shape is safe
    g = fold_constants(from_onnx(flatten_net(batch=3)))
    assert _ops(g) == ["Conv", "Relu", "Reshape", "Gemm"]


def test_shape_with_start_reads_static_dims_of_a_dynamic_tensor():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape", start=1),
             helper.make_node("Concat", ["minus1", "s"], ["t"], name="concat", axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"], name="reshape")]
    m = _model(nodes, [_x(["N", 3, 2])], [_x(["N", 3, 2], "y")], {"minus1": np.array([-1], np.int64)}, opset=15)
    g = fold_constants(from_onnx(m))
    assert _ops(g) == ["Reshape"]
    assert g.initializers[g.nodes[0].inputs[1]].tolist() == [-1, 3, 2]


def test_constant_weight_chain_folds_and_is_normalised():
    # W computed from a constant (Transpose, Mul): after folding it is a weight like any other, stored (out, in)
    w = RNG.standard_normal((6, 4)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["wt"], ["w0"], name="t"),
             helper.make_node("Mul", ["w0", "two"], ["w"], name="m"),
             helper.make_node("Gemm", ["x", "w"], ["y"], name="fc")]
    m = _model(nodes, [_x(["N", 6])], [_x(["N", 4], "y")], {"wt": w.T.copy(), "two": np.array(2.0, np.float32)})
    g = fold_constants(from_onnx(m))
    assert _ops(g) == ["Gemm"] and g.nodes[0].attr("transB") == 1
    np.testing.assert_array_equal(g.initializers[g.nodes[0].inputs[1]], (2 * w).T)
    x = RNG.standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(graph_to_onnx(g), {"x": x}), _run(m, {"x": x}), rtol=1e-6)


def test_graph_outputs_and_random_ops_are_not_folded():
    nodes = [helper.make_node("RandomUniform", [], ["r"], name="rand", shape=[2], dtype=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "r"], ["y"], name="add"),
             helper.make_node("Mul", ["c", "c"], ["z"], name="const_out")]
    m = _model(nodes, [_x([2])], [_x([2], "y"), _x([2], "z")], {"c": np.array([1.0, 2.0], np.float32)})
    g = fold_constants(from_onnx(m))
    assert _ops(g) == ["RandomUniform", "Add", "Mul"]


def test_implicit_split_gets_explicit_sizes():
    nodes = [helper.make_node("Split", ["x"], ["a", "b", "c"], name="split", axis=1),
             helper.make_node("Concat", ["c", "a", "b"], ["y"], name="cat", axis=1)]
    m = _model(nodes, [_x(["N", 6])], [_x(["N", 6], "y")], {}, opset=13)
    g = specialise(from_onnx(m), {"x": [2, 6]})
    split = g.nodes[0]
    assert g.initializers[split.inputs[1]].tolist() == [2, 2, 2]
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(graph_to_onnx(g), {"x": x}), _run(m, {"x": x}))
    m11 = _model(nodes, [_x([2, 6])], [_x([2, 6], "y")], {}, opset=11)
    assert fold_constants(from_onnx(m11)).nodes[0].attr("split") == [2, 2, 2]


# ---------------------------------------------------------------- errors

def test_missing_dynamic_dim_names_the_input():
    with pytest.raises(UnsupportedError) as e:
        specialise(from_onnx(flatten_net()), {})
    msg = str(e.value)
    assert msg.startswith("node 'shape' (Shape) needs the static shape of 'r'; input 'x' ['N', 3, 4, 4] has "
                          "dynamic dimension(s) 0 ('N')")
    assert "--input-shape x=1,3,4,4" in msg and "input_shapes={'x': [1, 3, 4, 4]}" in msg


def test_missing_dims_of_a_second_input_are_named():
    nodes = [helper.make_node("Concat", ["x", "z"], ["s"], name="cat", axis=0),
             helper.make_node("Shape", ["s"], ["sh"], name="shape"),
             helper.make_node("Reshape", ["s", "sh"], ["y"], name="reshape")]
    m = _model(nodes, [_x(["A", 3]), _x(["B", 3], "z")], [_x(["C", 3], "y")], {})
    with pytest.raises(UnsupportedError, match=r"input 'z' \['B', 3\] has dynamic dimension\(s\) 0 \('B'\): "
                                               r"give it with --input-shape z=1,3") as e:
        specialise(from_onnx(m), {"x": [2, 3]})
    assert "input 'x'" not in str(e.value)
    g = specialise(from_onnx(m), {"z": [4, 3], "x": [2, 3]})
    assert _ops(g) == ["Concat", "Reshape"] and g.outputs[0].shape == [6, 3]


@pytest.mark.parametrize("shapes,msg", [
    ({"q": [1, 3, 4, 4]}, r"'q', which is not an input of the model; its inputs: x"),
    ({"x": [1, 3, 4]}, r"input 'x': shape \[1, 3, 4\] has 3 dimensions; the model declares 4"),
    ({"x": [1, 2, 4, 4]}, r"input 'x': dimension 1 = 2, but the model fixes it to 3"),
    ({"x": [0, 3, 4, 4]}, r"dimensions must be integers >= 1, found \[0, 3, 4, 4\]"),
    (["x=1,3,a,4"], r"input shape 'x=1,3,a,4': dimensions must be integers separated by commas"),
    (["x:1,3,4,4"], r"expected NAME=D0,D1,\.\.\."),
    (["x=1,3,4,4", "x=2,3,4,4"], "input 'x' is given twice"),
])
def test_bad_input_shapes(shapes, msg):
    with pytest.raises(ValueError, match=msg):
        specialise(from_onnx(flatten_net()), shapes)


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:/=]{0,12}", fullmatch=True),
                       st.lists(st.integers(1, 10**6), max_size=6), max_size=4))
def test_parse_input_shapes_round_trip(shapes):
    texts = [f"{k}={','.join(map(str, v))}" for k, v in shapes.items()]
    assert parse_input_shapes(texts) == shapes
    assert parse_input_shapes(shapes) == shapes


# ---------------------------------------------------------------- pack, unpack, CLI

def test_pack_with_input_shapes_unpacks_to_an_equivalent_model(tmp_path):
    src = tmp_path / "flat.onnx"
    original = flatten_net()
    onnx.save(original, str(src))
    out = tmp_path / "flat.epk"
    report = pack(src, out, config={"default": {"encoding": "dense"}}, input_shapes={"x": [2, 3, 4, 4]})
    assert report.settings["input_shapes"] == {"x": [2, 3, 4, 4]}
    assert [n["op"] for n in read_packed(out).graph["nodes"]] == ["Conv", "Relu", "Reshape", "Gemm"]
    graph = unpack(out, tmp_path / "flat_unpacked.onnx")
    assert graph.inputs[0].shape == [2, 3, 4, 4]
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    got = _run(str(tmp_path / "flat_unpacked.onnx"), {"x": x})
    np.testing.assert_allclose(got, _run(original, {"x": x}), rtol=1e-6, atol=1e-6)
    # compressed (8-bit codebooks), the same graph runs within the quantisation error
    pack(src, tmp_path / "q.epk", bits=8, input_shapes=["x=2,3,4,4"])
    unpack(tmp_path / "q.epk", tmp_path / "q.onnx")
    np.testing.assert_allclose(_run(str(tmp_path / "q.onnx"), {"x": x}), got, rtol=0.05, atol=0.05)


def test_pack_without_input_shapes_still_packs_a_dynamic_model(tmp_path):
    src = tmp_path / "flat.onnx"
    onnx.save(flatten_net(), str(src))
    pack(src, tmp_path / "d.epk", config={"default": {"encoding": "dense"}})
    ops = [n["op"] for n in read_packed(tmp_path / "d.epk").graph["nodes"]]
    assert "Shape" in ops  # left for onnxruntime; the runtime names it unsupported


def test_cli_input_shape(tmp_path, capsys):
    src = tmp_path / "grid.onnx"
    onnx.save(grid_net(), str(src))
    out = tmp_path / "grid.epk"
    assert main(["pack", str(src), "-o", str(out), "-q", "--input-shape", "x=1,2,3,5"]) == 0
    g = read_packed(out).graph
    assert [n["op"] for n in g["nodes"]] == ["Add", "Sigmoid", "Reshape", "Reshape"]
    assert g["inputs"][0]["shape"] == [1, 2, 3, 5]
    capsys.readouterr()
    assert main(["pack", str(src), "-o", str(tmp_path / "e.epk"), "-q", "--input-shape", "x=1,2,3,5",
                 "--input-shape", "y=4"]) == 2
    assert "'y', which is not an input of the model" in capsys.readouterr().err


# ---------------------------------------------------------------- tensor attributes (ConstantOfShape's value)

def _filled_net(value):
    """y = x + ConstantOfShape(Shape(x), value): folds to a constant once x's shape is known."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("ConstantOfShape", ["s"], ["c"], name="fill",
                              value=numpy_helper.from_array(np.array([value], np.float32))),
             helper.make_node("Add", ["x", "c"], ["y"], name="add")]
    return _model(nodes, [_x(["N", 3])], [_x(["N", 3], "y")], {})


def test_constant_of_shape_with_a_value_folds():
    m = _filled_net(1.5)
    g = specialise(from_onnx(m), {"x": [2, 3]})
    assert _ops(g) == ["Add"]
    check_storable(g)
    np.testing.assert_array_equal(g.initializers[g.nodes[0].inputs[1]], np.full((2, 3), 1.5, np.float32))
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(graph_to_onnx(g), {"x": x}), _run(m, {"x": x}))


def test_unfolded_tensor_attribute_says_why():
    g = fold_constants(from_onnx(_filled_net(2.0)))  # no shapes: the fill stays, and so does its tensor attribute
    with pytest.raises(UnsupportedError, match=r"node 'fill' \(ConstantOfShape\): attribute 'value' holds a tensor, "
                                               r"which format v1 cannot store, and the node could not be folded into "
                                               r"a constant: it depends on input dimensions left dynamic; give them "
                                               r"with --input-shape x=1,3"):
        check_storable(g)
    # inputs constant but not evaluable: the evaluator's reason is given, not advice about shapes
    g.initializers["s"] = np.array([-2, 3], np.int64)
    g.nodes = [n for n in g.nodes if n.op != "Shape"]
    with pytest.raises(UnsupportedError, match=r"its inputs are constant but evaluating it failed \(node 'fill' "
                                               r"\(ConstantOfShape\): cannot be evaluated"):
        check_storable(g)


@pytest.mark.parametrize("name,shape", [("ddddocr_common", {"input1": [1, 1, 64, 170]}),
                                        ("nudenet", {"images": [1, 3, 320, 320]})])
def test_real_models_with_constant_of_shape_values_fold(name, shape):
    """Both failed with "attribute 'value' holds a tensor ... give static input shapes" although shapes were given:
    the folding evaluator was handed the tensor attribute as an array."""
    from realmodels.corpus import fetch

    from edgepack.packer.onnx_io import load_onnx

    g0 = load_onnx(str(fetch(name)))
    assert any(n.op == "ConstantOfShape" and "value" in n.attrs for n in g0.nodes)
    g = specialise(g0, shape)
    check_storable(g)
    assert not any(kind == "tensor" for n in g.nodes for kind, _ in n.attrs.values())
    assert "ConstantOfShape" not in _ops(g) and "Shape" not in _ops(g)


def test_unfolded_tensor_attribute_of_an_unstorable_dtype_says_so():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("ConstantOfShape", ["s"], ["c"], name="fill",
                              value=numpy_helper.from_array(np.array([7], np.uint64))),
             helper.make_node("Cast", ["c"], ["cf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Add", ["x", "cf"], ["y"], name="add")]
    g = specialise(from_onnx(_model(nodes, [_x(["N", 3])], [_x(["N", 3], "y")], {})), {"x": [2, 3]})
    with pytest.raises(UnsupportedError, match=r"node 'fill' \(ConstantOfShape\): .*could not be folded into a "
                                               r"constant: its value is uint64, which format v1 cannot store either"):
        check_storable(g)
