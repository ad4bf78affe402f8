"""Op semantics that changed between ONNX opsets: each model is built with onnx.helper at the old opset, packed
(packer.pipeline.pack), loaded and run by the runtime, and compared with onnxruntime running the same model at that
opset. Older semantics the runtime does not implement are refused by name (op, node, opset, what changed). The
runtime's ops read the graph's opset from their attrs (runtime/ops/registry.py: OPSET_KEY, opset_of).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import runtime
from edgepack.packer.pipeline import pack
from edgepack.runtime.errors import UnsupportedError

RNG = np.random.default_rng(13)


def _model(nodes, inputs, tensors, opset, outputs=("y",)):
    """inputs: {name: shape} (float32 graph inputs); tensors: {name: array} (initializers)."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(s))
                                       for k, s in inputs.items()],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 7  # onnxruntime 1.x reads IR 7 at every opset used here
    return m


def _ort(m, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _ours(m, feeds, tmp_path):
    src, out = tmp_path / "m.onnx", tmp_path / "m.epk"
    src.write_bytes(m.SerializeToString())
    pack(src, out, check_fidelity=False)
    model = runtime.load(out)
    res = model.run(feeds)
    return [res[o] for o in model.outputs]


def _check(m, feeds, tmp_path, rtol=1e-5, atol=1e-6):
    want = _ort(m, feeds)
    got = _ours(m, feeds, tmp_path)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


def _x(*shape):
    return np.asarray(RNG.standard_normal(shape) * 2, np.float32)


# ---- Softmax: before 13 the input is coerced to 2-D at axis (default 1) ----

@pytest.mark.parametrize("opset", [11, 12, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, -2, -1, 2])
def test_softmax_coerces_to_2d_before_opset_13(opset, axis, tmp_path):
    attrs = {} if axis is None else {"axis": axis}
    m = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm", **attrs)], {"x": (2, 3, 4)}, {}, opset)
    x = _x(2, 3, 4)
    (y,) = _check(m, {"x": x}, tmp_path)
    if opset < 13 and axis in (None, 1):  # rows of 12 elements sum to 1, not lines of 4
        np.testing.assert_allclose(y.reshape(2, 12).sum(axis=1), 1.0, rtol=1e-5)


def test_softmax_opset_1_rank_4(tmp_path):
    m = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm")], {"x": (1, 2, 3, 5)}, {}, 9)
    _check(m, {"x": _x(1, 2, 3, 5)}, tmp_path)


# ---- Clip: min / max attributes before 11, defaulting to the float32 range ----

@pytest.mark.parametrize("attrs", [{"min": -0.5, "max": 1.5}, {"min": 0.0}, {}])
def test_clip_attributes_before_opset_11(attrs, tmp_path):
    m = _model([helper.make_node("Clip", ["x"], ["y"], name="clip", **attrs)], {"x": (2, 5)}, {}, 10)
    x = _x(2, 5)
    x[0, 0], x[1, 1] = np.inf, -np.inf  # Clip-6 bounds infinities to the float32 range
    src, out = tmp_path / "m.onnx", tmp_path / "m.epk"
    src.write_bytes(m.SerializeToString())
    pack(src, out, check_fidelity=False)
    got = runtime.load(out).run({"x": x}, check_finite=False)["y"]
    np.testing.assert_array_equal(got, _ort(m, {"x": x})[0])


def test_clip_fused_into_gemm_before_opset_11(tmp_path):
    # the Clip runs in the Gemm's epilogue (runtime/ops/elementwise.activation): the same bounds
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),  # C required before 11
             helper.make_node("Clip", ["h"], ["y"], name="clip", max=0.5)]
    m = _model(nodes, {"x": (2, 4)}, {"w": _x(3, 4), "b": _x(3)}, 10)
    _check(m, {"x": _x(2, 4)}, tmp_path, rtol=1e-4, atol=1e-5)


# ---- attributes that became inputs: Split (13), Squeeze / Unsqueeze (13), Pad (11), Slice (10), ReduceMean (18)

def test_split_sizes_attribute_before_opset_13(tmp_path):
    node = helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=1, split=[1, 3])
    m = _model([node], {"x": (2, 4)}, {}, 11, outputs=("a", "b"))
    _check(m, {"x": _x(2, 4)}, tmp_path)


def test_split_equal_parts_by_output_count_before_opset_13(tmp_path):
    node = helper.make_node("Split", ["x"], ["a", "b"], name="split", axis=-1)
    m = _model([node], {"x": (2, 6)}, {}, 11, outputs=("a", "b"))
    _check(m, {"x": _x(2, 6)}, tmp_path)


def test_squeeze_unsqueeze_axes_attribute_before_opset_13(tmp_path):
    nodes = [helper.make_node("Squeeze", ["x"], ["s"], name="sq", axes=[1]),
             helper.make_node("Unsqueeze", ["s"], ["y"], name="unsq", axes=[0, 3])]
    m = _model(nodes, {"x": (2, 1, 3)}, {}, 11)
    _check(m, {"x": _x(2, 1, 3)}, tmp_path)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_attributes_before_opset_11(mode, tmp_path):
    attrs = {"pads": [0, 1, 0, 2], "mode": mode} | ({"value": 1.5} if mode == "constant" else {})
    m = _model([helper.make_node("Pad", ["x"], ["y"], name="pad", **attrs)], {"x": (2, 4)}, {}, 10)
    _check(m, {"x": _x(2, 4)}, tmp_path)


def test_slice_attributes_before_opset_10(tmp_path):
    node = helper.make_node("Slice", ["x"], ["y"], name="sl", starts=[1, -3], ends=[100, -1], axes=[0, 2])
    m = _model([node], {"x": (3, 2, 5)}, {}, 9)
    _check(m, {"x": _x(3, 2, 5)}, tmp_path)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_axes_attribute_and_input(opset, tmp_path):
    if opset < 18:
        node, tensors = helper.make_node("ReduceMean", ["x"], ["y"], name="rm", axes=[-1], keepdims=0), {}
    else:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm", keepdims=0)
        tensors = {"axes": np.array([-1], np.int64)}
    m = _model([node], {"x": (2, 3, 4)}, tensors, opset)
    _check(m, {"x": _x(2, 3, 4)}, tmp_path)


# ---- Concat's axis: optional (default 1) before opset 4 ----

def test_concat_default_axis_before_opset_4(tmp_path):
    # onnxruntime runs opset 7 and later only: the reference is numpy at axis 1
    m = _model([helper.make_node("Concat", ["a", "b"], ["y"], name="cat")], {"a": (2, 3), "b": (2, 1)}, {}, 3)
    a, b = _x(2, 3), _x(2, 1)
    (got,) = _ours(m, {"a": a, "b": b}, tmp_path)
    np.testing.assert_array_equal(got, np.concatenate([a, b], axis=1))


# ---- refusals, each naming op, node, opset and what changed ----

def _refused(m, tmp_path, *words):
    src, out = tmp_path / "m.onnx", tmp_path / "m.epk"
    src.write_bytes(m.SerializeToString())
    pack(src, out, check_fidelity=False)
    with pytest.raises(UnsupportedError) as e:
        runtime.load(out)
    for w in words:
        assert w in str(e.value)


def test_legacy_broadcast_axis_is_refused(tmp_path):
    # Add-6: B (3,) matched against axis 1 of A (2, 3, 4); numpy would align it with the last axis
    node = helper.make_node("Add", ["a", "b"], ["y"], name="add", broadcast=1, axis=1)
    m = _model([node], {"a": (2, 3, 4)}, {"b": np.ones(3, np.float32)}, 6)
    _refused(m, tmp_path, "'Add'", "'add'", "opset 6", "broadcast")


def test_prelu_per_channel_slope_before_opset_7_is_refused(tmp_path):
    node = helper.make_node("PRelu", ["x", "s"], ["y"], name="prelu")
    m = _model([node], {"x": (1, 3, 2, 2)}, {"s": np.ones(3, np.float32)}, 6)
    _refused(m, tmp_path, "'PRelu'", "'prelu'", "opset 6", "per channel")


def test_batchnorm_training_default_before_opset_7_is_refused(tmp_path):
    c = 3
    tensors = {k: np.ones(c, np.float32) for k in ("g", "b", "m", "v")}
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn")
    m = _model([node], {"x": (1, c, 2, 2)}, tensors, 6)
    # the importer applies the runtime's rule (check_batch_norm_mode) to every BatchNormalization: refused at pack
    _pack_refused(m, tmp_path, "'BatchNormalization'", "'bn'", "opset 6", "is_test")
    # and by the runtime itself, for a file another writer made
    from edgepack.runtime.ops import registry as R
    with pytest.raises(UnsupportedError, match=r"node 'bn'.*opset 6 'is_test' = 0"):
        R.infer_node("BatchNormalization", "bn", [(1, c, 2, 2)] + [(c,)] * 4, {R.OPSET_KEY: 6}, [None] * 5)


# ---- ops whose later versions only added attributes, inputs or types: the old opset gives the same result ----

@pytest.mark.parametrize("opset,node,shape,tensors", [
    (7, helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1), (1, 2, 5, 5), {}),
    (10, helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[2, 2], strides=[2, 2],
                          ceil_mode=1), (1, 2, 5, 5), {}),
    (8, helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
     (1, 2, 6, 6), {}),
    (10, helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", strides=[2, 2], auto_pad="SAME_UPPER"),
     (1, 2, 3, 4), {"w": _x(2, 3, 3, 3)}),
    (10, helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="ct", strides=[2, 2], output_shape=[7, 8]),
     (1, 2, 3, 4), {"w": _x(2, 3, 3, 3)}),
    (7, helper.make_node("Pow", ["x", "e"], ["y"], name="pow"), (2, 3), {"e": np.float32([2.0, 3.0, 0.5])}),
    (8, helper.make_node("Max", ["x", "c"], ["y"], name="max"), (2, 3), {"c": _x(3)}),
    (7, helper.make_node("PRelu", ["x", "s"], ["y"], name="prelu"), (2, 3, 4), {"s": _x(3, 1)}),
    (9, helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=2), (2, 3, 4), {}),
    (10, helper.make_node("Resize", ["x", "sc"], ["y"], name="rs", mode="linear"), (1, 1, 3, 4),
     {"sc": np.float32([1, 1, 2, 1.5])}),
    (11, helper.make_node("Resize", ["x", "roi", "sc"], ["y"], name="rs", mode="nearest",
                          coordinate_transformation_mode="tf_half_pixel_for_nn"), (1, 1, 3, 4),
     {"roi": np.zeros(0, np.float32), "sc": np.float32([1, 1, 2, 1.5])}),
    (13, helper.make_node("Reshape", ["x", "s"], ["y"], name="rs"), (2, 3, 4), {"s": np.int64([0, -1])}),
], ids=lambda v: v.op_type if hasattr(v, "op_type") else None)
def test_unchanged_semantics_at_old_opsets(opset, node, shape, tensors, tmp_path):
    m = _model([node], {"x": shape}, tensors, opset)
    x = _x(*shape)
    if node.op_type == "Pow":
        x = np.abs(x)
    _check(m, {"x": x}, tmp_path, rtol=1e-5, atol=1e-5)


# ---- what the importer removes or folds (packer/onnx_io.py): Dropout and BatchNormalization in training mode ------
# Removing a Dropout or folding a BatchNormalization is right only at inference; in training mode the packer refuses
# by node and attribute instead of writing the inference result in silence.

def _pack_refused(m, tmp_path, *words):
    src, out = tmp_path / "m.onnx", tmp_path / "m.epk"
    src.write_bytes(m.SerializeToString())
    with pytest.raises(UnsupportedError) as e:
        pack(src, out, check_fidelity=False)
    for w in words:
        assert w in str(e.value)
    assert not out.exists()


def _bool(value):
    return numpy_helper.from_array(np.array(value, np.bool_), "train")


def test_dropout_training_mode_true_is_refused(tmp_path):
    node = helper.make_node("Dropout", ["x", "r", "train"], ["y"], name="drop")
    m = _model([node], {"x": (2, 3)}, {"r": np.float32(0.5)}, 13)
    m.graph.initializer.append(_bool(True))
    _pack_refused(m, tmp_path, "'drop'", "Dropout", "training_mode", "true")


def test_dropout_training_mode_from_a_graph_input_is_refused(tmp_path):
    node = helper.make_node("Dropout", ["x", "", "train"], ["y"], name="drop")
    m = _model([node], {"x": (2, 3)}, {}, 12)
    m.graph.input.append(helper.make_tensor_value_info("train", TensorProto.BOOL, []))
    _pack_refused(m, tmp_path, "'drop'", "training_mode", "'train'")


@pytest.mark.parametrize("opset", [1, 6])
def test_dropout_default_training_before_opset_7_is_refused(opset, tmp_path):
    node = helper.make_node("Dropout", ["x"], ["y"], name="drop", ratio=0.3)
    m = _model([node], {"x": (2, 3)}, {}, opset)
    _pack_refused(m, tmp_path, "'drop'", "is_test", f"opset {opset}")


@pytest.mark.parametrize("opset,train", [(10, None), (12, None), (13, False)])
def test_dropout_at_inference_is_removed(opset, train, tmp_path):
    # ratio 0.5 without training mode does nothing: onnxruntime returns the input, and so does the packed model
    inputs = ["h", "r", "train"] if train is not None else (["h", "r"] if opset >= 12 else ["h"])
    attrs = {"ratio": 0.5} if opset < 12 else {}
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("Dropout", inputs, ["y"], name="drop", **attrs)]
    m = _model(nodes, {"x": (2, 3)}, {"r": np.float32(0.5)} if opset >= 12 else {}, opset)
    if train is not None:
        m.graph.initializer.append(_bool(train))
    x = _x(2, 3)
    (y,) = _check(m, {"x": x}, tmp_path)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_dropout_is_test_before_opset_7_is_removed(tmp_path):
    # onnxruntime runs Dropout from opset 7 only: the reference is the identity Dropout-6 is with is_test = 1
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu"),
             helper.make_node("Dropout", ["h"], ["y"], name="drop", is_test=1, ratio=0.5)]
    m = _model(nodes, {"x": (2, 3)}, {}, 6)
    x = _x(2, 3)
    (y,) = _ours(m, {"x": x}, tmp_path)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def _conv_bn(opset, **bn_attrs):
    c = 3
    tensors = {"w": _x(c, 2, 3, 3), "g": _x(c), "b": _x(c), "m": _x(c), "v": np.abs(_x(c)) + 0.5}
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["y"], name="bn", **bn_attrs)]
    return _model(nodes, {"x": (2, 2, 4, 4)}, tensors, opset), tensors


@pytest.mark.parametrize("opset,attrs,words", [
    (14, {"training_mode": 1}, ["training_mode"]),
    (15, {"training_mode": 1}, ["training_mode"]),
    (8, {"spatial": 0}, ["spatial"]),
    (7, {"spatial": 0}, ["spatial"]),
    (6, {}, ["is_test", "opset 6"]),
    (6, {"is_test": 0}, ["is_test", "opset 6"]),
])
def test_batchnorm_training_semantics_after_conv_are_refused_not_folded(opset, attrs, words, tmp_path):
    m, _ = _conv_bn(opset, **attrs)
    _pack_refused(m, tmp_path, "'bn'", "BatchNormalization", *words)


@pytest.mark.parametrize("opset,attrs", [(14, {"training_mode": 0}), (15, {}), (9, {}), (8, {"spatial": 1}),
                                         (7, {})])
def test_batchnorm_at_inference_is_folded_into_conv(opset, attrs, tmp_path):
    m, _ = _conv_bn(opset, **attrs)
    _check(m, {"x": _x(2, 2, 4, 4)}, tmp_path, rtol=1e-4, atol=1e-4)


def test_batchnorm_is_test_before_opset_7_is_folded(tmp_path):
    # onnxruntime runs BatchNormalization from opset 7: the reference is the same model stamped opset 7
    m6, _ = _conv_bn(6, is_test=1)
    m7, _ = _conv_bn(7)
    for a, b in zip(m6.graph.initializer, m7.graph.initializer):
        b.CopyFrom(a)
    x = _x(2, 2, 4, 4)
    (got,) = _ours(m6, {"x": x}, tmp_path)
    np.testing.assert_allclose(got, _ort(m7, {"x": x})[0], rtol=1e-4, atol=1e-4)


# ---- the bias Add the importer fuses into a Gemm: Add-6 broadcasts B only with broadcast = 1, aligned at 'axis' ----

def _matmul_add(opset, **add_attrs):
    tensors = {"w": _x(4, 3), "b": _x(3)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="add", **add_attrs)]
    return _model(nodes, {"x": (3, 4)}, tensors, opset), tensors


def test_legacy_add_aligned_at_axis_0_is_not_fused_as_a_column_bias(tmp_path):
    # B (3,) against axis 0 of A (3, 3) adds per row; fused as Gemm's C it would add per column, in silence
    m, _ = _matmul_add(6, broadcast=1, axis=0)
    _refused(m, tmp_path, "'Add'", "'add'", "opset 6", "broadcast")


def test_legacy_add_with_suffix_broadcast_is_fused(tmp_path):
    m, t = _matmul_add(6, broadcast=1)
    x = _x(3, 4)
    (got,) = _ours(m, {"x": x}, tmp_path)
    np.testing.assert_allclose(got, x @ t["w"] + t["b"], rtol=1e-5, atol=1e-5)


# ---- MatMul -> Gemm only for a 2-D left side: the rank through a MatMul that broadcasts batch dimensions ----

def test_matmul_after_batched_matmul_is_not_made_a_gemm(tmp_path):
    # x (2, 16) @ z (3, 16, 8) is (3, 2, 8): the MatMul by the constant w that follows is not a 2-D Gemm
    nodes = [helper.make_node("MatMul", ["x", "z"], ["h"], name="mm0"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm1")]
    m = _model(nodes, {"x": (2, 16), "z": (3, 16, 8)}, {"w": _x(8, 4)}, 13)
    _check(m, {"x": _x(2, 16), "z": _x(3, 16, 8)}, tmp_path, rtol=1e-4, atol=1e-4)


# ---- the ONNX the packer writes back (unpack; the fidelity check's session) is valid at the model's opset ---------
# The IR is looser than ONNX: a MatMul made a Gemm has no C, which Gemm requires before opset 11 (and before 7 C
# broadcasts only with broadcast = 1); an output the file declares without a shape is not a scalar.

def _linear_model(opset, bias, low_rank=False):
    # low_rank: a rank-4 weight, which packer/lowrank.py splits into two Gemms (the first without C)
    w = (_x(32, 4) @ _x(4, 24)).astype(np.float32) if low_rank else _x(16, 8)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h" if bias else "y"], name="mm")]
    tensors = {"w": w}
    if bias:
        nodes.append(helper.make_node("Add", ["h", "b"], ["y"], name="add", **({"broadcast": 1} if opset < 7 else {})))
        tensors["b"] = _x(w.shape[1])
    return _model(nodes, {"x": (2, w.shape[0])}, tensors, opset), w.shape


@pytest.mark.parametrize("opset", [6, 7, 9, 10, 11, 13])
@pytest.mark.parametrize("bias,low_rank", [(False, False), (True, False), (False, True)])
def test_unpacked_linear_layers_are_valid_at_their_opset(opset, bias, low_rank, tmp_path):
    import onnx

    from edgepack.packer.unpack import unpack
    from edgepack.runtime.loader import read_packed

    m, (k, n) = _linear_model(opset, bias, low_rank)
    src, out, back = tmp_path / "m.onnx", tmp_path / "m.epk", tmp_path / "back.onnx"
    src.write_bytes(m.SerializeToString())
    report = pack(src, out, low_rank=0.99 if low_rank else None)
    if opset >= 7:  # onnxruntime runs opset 7 and later: the fidelity check ran on the packer's own ONNX
        assert not any("could not measure" in w for w in report.warnings), report.warnings
    assert read_packed(str(out)).graph["outputs"][0]["shape"] == [2, n]  # declared without a shape: inferred
    unpack(out, back)
    model = onnx.load(str(back))
    onnx.checker.check_model(model, full_check=True)  # every node's inputs per its schema at this opset; shapes
    gemms = [g for g in model.graph.node if g.op_type == "Gemm"]
    assert len(gemms) == (2 if low_rank else 1)
    assert all(len(g.input) == 3 for g in gemms) or opset >= 11
    if opset >= 7:
        x = _x(2, k)
        want = runtime.load(out).run({"x": x})["y"]
        (got,) = _ort(model, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset", [7, 13])
def test_dropout_from_input_to_output_is_a_copy(opset, tmp_path):
    # the copy an inference Dropout makes is kept as an Identity when the graph output must keep its name
    m = _model([helper.make_node("Dropout", ["x"], ["y"], name="drop")], {"x": (2, 3)}, {}, opset)
    x = _x(2, 3)
    (y,) = _check(m, {"x": x}, tmp_path)
    np.testing.assert_array_equal(y, x)
