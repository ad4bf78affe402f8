"""runtime/ops/quantize.py (DynamicQuantizeLinear, DequantizeLinear) against onnxruntime on one- and two-node
models: bit for bit on random tensors of every sign mix and scale (the rounding half to even, the zero point's
clipping, the all-zero tensor), per-axis DequantizeLinear, and through runtime.load on a packed file."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import runtime
from edgepack.packer.pipeline import pack
from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops import registry as R

R.register_all()


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _fake_quant_model(opset: int = 13):
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    outs = [helper.make_tensor_value_info(n, t, None) for n, t in
            (("q", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8), ("y", TensorProto.FLOAT))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], outs)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ours(x):
    q, s, z, y = np.empty_like(x), np.empty((), np.float32), np.empty((), np.float32), np.empty_like(x)
    R.get("DynamicQuantizeLinear", "dql").run([x], {}, [q, s, z])
    R.get("DequantizeLinear", "dq").run([q, s, z], {}, [y])
    return q, s, z, y


def _cases(rng):
    for t in range(600):
        x = rng.standard_normal(int(rng.integers(1, 400))) * 10 ** rng.uniform(-6, 6)
        x = x + (rng.uniform(-3, 3) if t % 3 == 0 else 0)
        if t % 5 == 0:
            x = np.abs(x)          # all >= 0: zero point 0
        if t % 7 == 0:
            x = -np.abs(x)         # all <= 0: zero point 255
        if t % 11 == 0:
            x = np.round(x * 2) / 2  # many values on exact halves of a step
        yield x.astype(np.float32)
    yield np.zeros(5, np.float32)    # hi == lo: scale 1
    yield np.float32([0.0, -0.0])
    yield np.float32([1.0, 2.0, 3.0])
    yield np.linspace(-1, 1, 511, dtype=np.float32)


def test_bit_exact_against_onnxruntime():
    sess, rng = _session(_fake_quant_model()), np.random.default_rng(0)
    for x in _cases(rng):
        q, s, z, y = sess.run(None, {"x": x})
        oq, os_, oz, oy = _ours(x)
        assert np.array_equal(oq, q.astype(np.float32)) and os_ == s and oz == z, (x[:5], s, os_, z, oz)
        np.testing.assert_array_equal(oy, y)
        assert oq.min() >= 0 and oq.max() <= 255 and float(oq.max() - oq.min()) <= 255


def test_in_place_dequantize():
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    q, s, z, y = _ours(x)
    buf = q.copy()
    R.get("DequantizeLinear", "dq").run([buf, s, z], {}, [buf])
    np.testing.assert_array_equal(buf, y)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_dequantize_per_axis(axis):
    rng = np.random.default_rng(2)
    q = rng.integers(0, 256, (3, 4, 5)).astype(np.uint8)
    n = q.shape[axis]
    scale, zp = rng.uniform(0.01, 1, n).astype(np.float32), rng.integers(0, 256, n).astype(np.uint8)
    node = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("q", TensorProto.UINT8, q.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")])
    want, = _session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])).run(None, {"q": q})
    op = R.get("DequantizeLinear", "dq")
    shapes = [q.shape, scale.shape, zp.shape]
    assert R.infer_node("DequantizeLinear", "dq", shapes, {"axis": axis}, [None, scale, zp]) == [q.shape]
    out = np.empty(q.shape, np.float32)
    op.run([q.astype(np.float32), scale, zp.astype(np.float32)], {"axis": axis}, [out])
    np.testing.assert_array_equal(out, want)


def test_shape_errors_name_the_node():
    with pytest.raises(FormatError, match=r"'DequantizeLinear' \(node 'dq'\).*x_scale has 3 values.*along axis 1"):
        R.infer_node("DequantizeLinear", "dq", [(2, 4), (3,)], {}, [None, None])
    with pytest.raises(FormatError, match=r"node 'dq'.*x_zero_point has shape \(2,\), x_scale \(\)"):
        R.infer_node("DequantizeLinear", "dq", [(2, 4), (), (2,)], {}, [None, None, None])
    with pytest.raises(UnsupportedError, match=r"node 'dq'.*'block_size' = 2"):
        R.infer_node("DequantizeLinear", "dq", [(2, 4), (2, 2)], {"block_size": 2}, [None, None])
    assert R.infer_node("DynamicQuantizeLinear", "q", [(2, 3)], {}, [None], 3) == [(2, 3), (), ()]


def test_packed_file_runs_like_onnxruntime(tmp_path):
    """x -> fake quantisation -> MatMul by a constant: packed (its weight compressed like any other) and run by the
    device runtime, the same as onnxruntime on the file's dense form (the weight as the packed file decodes it)."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["xd"], name="dequant"),
             helper.make_node("MatMul", ["xd", "W"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                          [numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    src, out = tmp_path / "m.onnx", tmp_path / "m.epk"
    src.write_bytes(model.SerializeToString())
    pack(src, out, sparsity=0.0, bits=8)
    m = runtime.load(str(out))
    from edgepack.runtime.loader import dense_weights, read_packed
    wd = dense_weights(read_packed(str(out)))["W"]
    g.initializer[0].CopyFrom(numpy_helper.from_array(np.asarray(wd, np.float32), "W"))
    sess = _session(model)
    for _ in range(5):
        x = (rng.standard_normal((4, 16)) * 3).astype(np.float32)
        got = m.run({"x": x})["y"]
        want, = sess.run(None, {"x": x})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
