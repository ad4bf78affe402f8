"""Small ONNX models built with onnx.helper for the tests (seeded random weights)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def _const(name, arr):
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(
        np.asarray(arr), name))


def _model(nodes, inputs, outputs, inits, opset=17, name="zoo"):
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def mlp(seed=0, constants=False, sizes=(64, 48, 32, 10)) -> onnx.ModelProto:
    """Gemm (transB=1, as PyTorch exports nn.Linear), Gemm (transB=0), MatMul + Add; ReLU between."""
    rng = np.random.default_rng(seed)
    a, b, c, d = sizes
    w1 = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(b)).astype(np.float32)
    w2 = (rng.standard_normal((b, c)) / np.sqrt(b)).astype(np.float32)  # (K, N): transB = 0
    b2 = (0.1 * rng.standard_normal(c)).astype(np.float32)
    w3 = (rng.standard_normal((c, d)) / np.sqrt(c)).astype(np.float32)  # MatMul weight (K, N)
    b3 = (0.1 * rng.standard_normal(d)).astype(np.float32)
    tensors = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
             helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("Dropout", ["a1"], ["d1"], name="drop1"),
             helper.make_node("Gemm", ["d1", "w2", "b2"], ["h2"], name="fc2"),
             helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
             helper.make_node("Identity", ["a2"], ["a2i"], name="ident"),
             helper.make_node("MatMul", ["a2i", "w3"], ["h3"], name="fc3"),
             helper.make_node("Add", ["h3", "b3"], ["y"], name="add3")]
    if constants:
        nodes = [_const(k, v) for k, v in tensors.items()] + nodes
        inits = []
    else:
        inits = [_init(k, v) for k, v in tensors.items()]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", a])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d])], inits, name="mlp")


def cnn(seed=0, constants=False, scale_spread=0.0) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> MaxPool -> Conv -> BN -> Relu -> Flatten -> Gemm (1x12x12 input).
    scale_spread > 0: BN gammas span 10^-spread .. 10^spread over the channels (folded scales differ that much)."""
    rng = np.random.default_rng(seed)
    t = {}
    t["c1.w"] = (rng.standard_normal((8, 1, 3, 3)) / 3).astype(np.float32)
    t["c1.b"] = (0.1 * rng.standard_normal(8)).astype(np.float32)
    t["c2.w"] = (rng.standard_normal((12, 8, 3, 3)) / np.sqrt(72)).astype(np.float32)
    for i, ch in ((1, 8), (2, 12)):
        gamma = 1 + 0.1 * rng.standard_normal(ch)
        if scale_spread:
            gamma = gamma * np.logspace(-scale_spread, scale_spread, ch)[rng.permutation(ch)]
        t[f"bn{i}.g"] = gamma.astype(np.float32)
        t[f"bn{i}.b"] = (0.1 * rng.standard_normal(ch) * gamma).astype(np.float32)
        t[f"bn{i}.m"] = (0.1 * rng.standard_normal(ch)).astype(np.float32)
        t[f"bn{i}.v"] = (0.5 + rng.random(ch)).astype(np.float32)
    t["fc.w"] = (rng.standard_normal((10, 12 * 4 * 4)) / np.sqrt(192)).astype(np.float32)
    t["fc.b"] = (0.1 * rng.standard_normal(10)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.g", "bn1.b", "bn1.m", "bn1.v"], ["n1"], name="bn1",
                         epsilon=1e-5),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1s"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2.w"], ["c2"], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "bn2.g", "bn2.b", "bn2.m", "bn2.v"], ["n2"], name="bn2"),
        helper.make_node("Relu", ["n2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2s"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    # A per-channel Mul after each ReLU undoes the BN scale (1 without a spread), so that every channel matters
    # downstream: a codebook that rounds the small channels away then visibly changes the output.
    t["undo1"] = (1 / t["bn1.g"]).reshape(1, 8, 1, 1).astype(np.float32)
    t["undo2"] = (1 / t["bn2.g"]).reshape(1, 12, 1, 1).astype(np.float32)
    if not scale_spread:
        t["undo1"][:] = 1
        t["undo2"][:] = 1
    nodes.insert(3, helper.make_node("Mul", ["r1", "undo1"], ["r1s"], name="undo1"))
    nodes.insert(8, helper.make_node("Mul", ["r2", "undo2"], ["r2s"], name="undo2"))
    if constants:
        nodes = [_const(k, v) for k, v in t.items()] + nodes
        inits = []
    else:
        inits = [_init(k, v) for k, v in t.items()]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 12, 12])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits, name="cnn")


def conv_relu(cin: int, cout: int, hw: int, seed: int = 0, **attrs) -> onnx.ModelProto:
    """One 3x3 Conv named "conv" (weights 0.1 x N(0, 1), a bias) and a Relu, on a (1, cin, hw, hw) input "x"."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, cin, 3, 3)) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    relu = helper.make_node("Relu", ["y"], ["z"], name="relu")
    graph = helper.make_graph(
        [node, relu], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [cout], rng.standard_normal(cout).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
