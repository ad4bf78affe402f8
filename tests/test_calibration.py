"""Layer-input statistics recorded against quantised weights (packer/calibration.py, asymmetric calibration): H of
the inputs the quantised model computes and the cross term with the original inputs, checked against numpy on a
small Conv -> Relu -> Gemm model."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgepack.packer.calibration import Statistics, layer_statistics
from edgepack.packer.onnx_io import from_onnx


def _model(w1, w2):
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))


def _flat_relu_conv(x, w):
    """numpy Conv 3x3 pad 1 (cross-correlation) + Relu, flattened as ONNX Flatten does."""
    n, c, hh, ww = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], hh, ww))
    for i in range(hh):
        for j in range(ww):
            out[:, :, i, j] = np.einsum("nckl,ockl->no", xp[:, :, i:i + 3, j:j + 3], w)
    return np.maximum(out, 0).reshape(n, -1)


def test_statistics_against_quantised_weights():
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, 48)).astype(np.float32)
    q1 = (w1 + 0.2 * rng.standard_normal(w1.shape)).astype(np.float32)
    ir = _model(w1, w2)
    xs = [rng.standard_normal((1, 2, 4, 4)).astype(np.float32) for _ in range(6)]
    batches = [{"x": x} for x in xs]
    weights = {"w1": ("Conv", "c"), "w2": ("Gemm", "g")}
    plain = layer_statistics(ir, weights, batches)
    st = layer_statistics(ir, weights, batches, quantized={"w1": q1})
    assert isinstance(st, Statistics) and st.batches is batches
    assert plain["w2"].cross is None
    x = np.concatenate([_flat_relu_conv(a.astype(np.float64), w1.astype(np.float64)) for a in xs])
    xq = np.concatenate([_flat_relu_conv(a.astype(np.float64), q1.astype(np.float64)) for a in xs])
    assert np.allclose(plain["w2"].h, x.T @ x / 6, rtol=1e-4, atol=1e-4)
    assert np.allclose(st["w2"].h, xq.T @ xq / 6, rtol=1e-4, atol=1e-4)
    assert np.allclose(st["w2"].cross, x.T @ xq / 6, rtol=1e-4, atol=1e-4)
    # the first layer's inputs are the model's inputs: the same either way, and the cross term is H
    assert np.allclose(st["w1"].h, plain["w1"].h) and np.allclose(st["w1"].cross, plain["w1"].h)
    # cross=False: H of the quantised model's inputs alone, no cross term
    own = layer_statistics(ir, weights, batches, quantized={"w1": q1}, cross=False)
    assert own["w2"].cross is None and own["w1"].cross is None
    assert np.allclose(own["w2"].h, st["w2"].h) and own["w2"].samples == st["w2"].samples
