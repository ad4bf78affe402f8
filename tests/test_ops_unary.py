"""Elementwise ops real models use (runtime/ops/elementwise.py: PRelu, variadic Max / Min, Exp, Log, Neg, Abs,
Reciprocal, Floor, Ceil; runtime/ops/mathops.py: ReduceMax; runtime/ops/pool.py: GlobalMaxPool) against
onnxruntime on single-node models: broadcasting, special values (0, -0, inf, NaN) without numpy warnings, in-place
runs, the plan-bound step against the plain runner, shape-inference errors; and the MTCNN models (keras2onnx:
PRelu per channel, slopes [1, C, 1, 1] and [C]) packed at 8 bits against onnxruntime on their unpacked form.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgepack import runtime
from edgepack.packer.onnx_io import graph_to_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.unpack import packed_to_graph
from edgepack.runtime.errors import FormatError
from edgepack.runtime.ops import registry as R

sys.path.insert(0, str(Path(__file__).parent))
from realmodels.corpus import fetch  # noqa: E402

R.register_all()

UNARY = ("Exp", "Log", "Neg", "Abs", "Reciprocal", "Floor", "Ceil")
SPECIAL = np.float32([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 0.5, -0.5, 1e-30, -1e-30, 1e-45, 88.0, 89.0, -104.0, 1e38,
                      -1e38, np.inf, -np.inf, np.nan, 3.4e38, 7.0, -7.49])


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    data = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def reference(op, inputs, attrs=None, const_idx=(), opset=17):
    """onnxruntime's output of a single-node model; inputs in const_idx become initializers."""
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, a in enumerate(inputs):
        name = f"in{i}"
        names.append(name)
        if i in const_idx:
            inits.append(numpy_helper.from_array(a, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, a.shape))
            feeds[name] = a
    node = helper.make_node(op, names, ["out"], **(attrs or {}))
    graph = helper.make_graph([node], "g", graph_inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                                                                        None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return _session(model).run(None, feeds)[0]


def ours(op, inputs, attrs=None, const_idx=(), inplace=None):
    """Infer, then run the op both ways the executor does (plain runner; bound step) with warnings as errors;
    `inplace`: the index of the input whose buffer is also the output (ops declare inplace_ok)."""
    attrs = attrs or {}
    consts = [a if i in const_idx else None for i, a in enumerate(inputs)]
    shape = R.infer_node(op, "n", [a.shape for a in inputs], attrs, consts)[0]
    opdef = R.get(op, "n")
    results = []
    for bound in (False, True):
        ins = [a.copy() for a in inputs]
        out = np.full(shape, np.nan, np.float32)
        if inplace is not None:
            assert opdef.inplace_ok and ins[inplace].shape == tuple(shape)
            out = ins[inplace]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            step = opdef.bind(ins, attrs, [out]) if bound and opdef.bind is not None else None
            if step is not None:
                with np.errstate(all="ignore"):  # the executor's errstate around a whole run
                    step[0](*step[1])
            else:
                opdef.run(ins, attrs, [out])
        results.append(out.copy())
    np.testing.assert_array_equal(results[0], results[1])
    return results[0]


def close(got, want, rtol=1e-6):
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0, equal_nan=True)


# ------------------------------------------------------------------ unary

@pytest.mark.parametrize("op", UNARY)
def test_unary_special_values_match_onnxruntime(op):
    x = np.concatenate([SPECIAL, np.random.default_rng(1).standard_normal(42).astype(np.float32) * 5]).reshape(4, 16)
    want = reference(op, [x])
    close(ours(op, [x]), want)
    close(ours(op, [x], inplace=0), want)
    # signs of zeros and infinities exactly (Neg(0) = -0, Reciprocal(-0) = -inf, Abs(-0) = 0)
    got = ours(op, [x])
    finite = np.isfinite(want) & (want == 0)
    np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(want[finite]))


@pytest.mark.parametrize("op", UNARY)
def test_unary_shapes(op):
    for shape in [(), (1,), (3, 1, 2), (2, 3, 4, 5)]:
        x = np.asarray(np.random.default_rng(2).uniform(0.1, 4, shape), np.float32)
        assert R.infer_node(op, "n", [shape], {}, [None]) == [shape]
        close(ours(op, [x]), reference(op, [x]))
    with pytest.raises(FormatError, match=rf"op '{op}' \(node 'n'\): expects 1 inputs, found 2"):
        R.infer_node(op, "n", [(2,), (2,)], {}, [None, None])


# ------------------------------------------------------------------ PRelu

PRELU_CASES = [  # (x shape, slope shape)
    ((2, 3, 4, 5), (3, 1, 1)),  # per channel, as torch exports it
    ((2, 3, 4, 5), (1, 3, 1, 1)),  # keras2onnx MTCNN pnet / rnet / onet convolutions
    ((2, 6, 5, 3), (1, 1, 3)),  # NHWC, per channel last (keras before the transpose)
    ((2, 128), (128,)),  # MTCNN rnet / onet dense layers
    ((2, 3, 4, 5), (5,)),
    ((2, 3, 4, 5), (1,)),
    ((2, 3, 4, 5), ()),
    ((2, 3, 4, 5), (4, 5)),
    ((2, 3, 4, 5), (3, 4, 5)),
    ((2, 3, 4, 5), (2, 3, 4, 5)),
    ((2, 3, 4, 5), (3, 1, 5)),  # slope dimensions that are not consecutive: the numpy path
    ((2, 3, 4, 5), (2, 1, 4, 1)),
    ((1, 1), (1, 1)),
]


@pytest.mark.parametrize("x_shape,slope_shape", PRELU_CASES)
def test_prelu_broadcasts_like_onnxruntime(x_shape, slope_shape):
    rng = np.random.default_rng(len(x_shape) * 10 + len(slope_shape))
    x = rng.standard_normal(x_shape).astype(np.float32)
    x.reshape(-1)[:3] = [np.nan, -0.0, -np.inf][: x.size]
    slope = np.asarray(rng.uniform(-0.5, 1.5, slope_shape), np.float32)
    for const in ((), (1,)):
        want = reference("PRelu", [x, slope], const_idx=const)
        close(ours("PRelu", [x, slope], const_idx=const), want)
        close(ours("PRelu", [x, slope], const_idx=const, inplace=0), want)


def test_prelu_errors():
    with pytest.raises(FormatError, match=r"op 'PRelu' \(node 'n'\): slope \(input 1\) of shape \(4,\) does not "
                                          r"broadcast to the input's shape \(2, 3, 4, 5\)"):
        R.infer_node("PRelu", "n", [(2, 3, 4, 5), (4,)], {}, [None, None])
    with pytest.raises(FormatError, match="unidirectional"):
        R.infer_node("PRelu", "n", [(3, 4), (2, 3, 4)], {}, [None, None])
    with pytest.raises(FormatError, match="unidirectional"):  # x does not broadcast to the slope
        R.infer_node("PRelu", "n", [(1, 4), (3, 4)], {}, [None, None])
    with pytest.raises(FormatError, match="expects 2 inputs, found 1"):
        R.infer_node("PRelu", "n", [(3, 4)], {}, [None])


# ------------------------------------------------------------------ Max, Min

@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("shapes", [
    [(2, 3)],
    [(2, 3, 4), (2, 3, 4)],
    [(1, 4, 6, 24), (1, 1, 1, 1)],  # openWakeWord's embedding model: Max(x, 0-d-like constant)
    [(2, 3, 4), (4,), (3, 1)],
    [(3, 1), (1, 5), (), (3, 5)],
    [(5,), (2, 1, 5)],
])
def test_max_min_variadic_broadcasting(op, shapes):
    rng = np.random.default_rng(len(shapes))
    inputs = [np.asarray(rng.standard_normal(s), np.float32) for s in shapes]
    inputs[0].reshape(-1)[:1] = np.nan  # NaN propagates in onnxruntime and here
    want = reference(op, inputs, opset=13)
    close(ours(op, inputs), want)
    for i, a in enumerate(inputs):
        if a.shape == want.shape:  # any input holding the output's buffer is read before it is overwritten
            close(ours(op, inputs, inplace=i), want)


@given(st.integers(1, 4), st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_max_min_match_numpy_reduce(n, seed):
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(n)]
    np.testing.assert_array_equal(ours("Max", inputs), np.max(inputs, axis=0))
    np.testing.assert_array_equal(ours("Min", inputs), np.min(inputs, axis=0))


def test_max_min_errors():
    with pytest.raises(FormatError, match=r"op 'Max' \(node 'n'\): expects 1 or more inputs, found 0"):
        R.infer_node("Max", "n", [], {}, [])
    with pytest.raises(FormatError, match=r"op 'Min' \(node 'n'\): input shapes \(2, 3\), \(4,\) do not broadcast"):
        R.infer_node("Min", "n", [(2, 3), (4,)], {}, [None, None])
    with pytest.raises(FormatError, match="every input of this op is required"):
        R.infer_node("Max", "n", [(2, 3), None], {}, [None, None])


# ------------------------------------------------------------------ ReduceMax

@pytest.mark.parametrize("shape,attrs,axes,opset", [
    ((1, 1, 5, 32), {"keepdims": 0}, None, 13),  # openWakeWord melspectrogram: every axis, to a 0-d scalar
    ((2, 3, 4), {"axes": [1]}, None, 13),
    ((2, 3, 4), {"axes": [-1, 0], "keepdims": 0}, None, 13),
    ((2, 3, 4), {}, [1, 2], 18),
    ((2, 3, 4), {"keepdims": 0}, [-2], 18),
    ((2, 3, 4), {"noop_with_empty_axes": 1}, [], 18),
])
def test_reduce_max_matches_onnxruntime(shape, attrs, axes, opset):
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    inputs = [x] if axes is None else [x, np.asarray(axes, np.int64)]
    if axes is None:
        want = reference("ReduceMax", inputs, attrs, opset=opset)
    else:  # axes as an initializer (int64)
        node = helper.make_node("ReduceMax", ["x", "axes"], ["out"], **attrs)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(inputs[1], "axes")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        want = _session(model).run(None, {"x": x})[0]
    got = ours("ReduceMax", inputs, attrs, const_idx=(1,))
    np.testing.assert_array_equal(got, want)


def test_reduce_max_errors():
    with pytest.raises(FormatError, match=r"op 'ReduceMax' \(node 'n'\): cannot reduce over an empty axis"):
        R.infer_node("ReduceMax", "n", [(2, 0, 3)], {"axes": [1]}, [None])
    with pytest.raises(FormatError, match="out of range"):
        R.infer_node("ReduceMax", "n", [(2, 3)], {"axes": [2]}, [None])


# ------------------------------------------------------------------ MTCNN (keras2onnx, PRelu)

def _face(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A face-like RGB image in [0, 255] (skin ellipse, eyes, mouth, a lit background, sensor noise), NHWC,
    normalised as the mtcnn package does: (x - 127.5) / 128."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.float32([60, 80, 110]) + 40 * (yy / h)[..., None]
    img[((yy - h / 2) / (0.45 * h)) ** 2 + ((xx - w / 2) / (0.35 * w)) ** 2 < 1] = [205, 160, 130]
    for ex in (0.35 * w, 0.65 * w):
        img[(yy - 0.4 * h) ** 2 + (xx - ex) ** 2 < (0.05 * w) ** 2] = 40
    img[(np.abs(yy - 0.72 * h) < 0.03 * h) & (np.abs(xx - w / 2) < 0.15 * w)] = [150, 60, 60]
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255)
    return ((img - 127.5) / 128.0)[None].astype(np.float32)


@pytest.mark.parametrize("name,input_name,h,w", [
    ("mtcnn_pnet", "input_1", 120, 160),
    ("mtcnn_rnet", "input_2", 24, 24),
    ("mtcnn_onet", "input_3", 48, 48),
])
def test_mtcnn_packed_matches_onnxruntime(tmp_path, name, input_name, h, w):
    out = tmp_path / f"{name}.epk"
    pack(fetch(name), out, sparsity=0.0, bits=8, input_shapes=[f"{input_name}=1,{h},{w},3"])
    feeds = {input_name: _face(h, w)}
    sess = _session(graph_to_onnx(packed_to_graph(out)))
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    for mode in (None, "streamed"):
        got = runtime.load(out, layer_modes=mode).run(feeds)
        for k, r in ref.items():
            assert got[k].shape == r.shape
            err = float(np.abs(got[k] - r).max()) / max(float(np.abs(r).max()), 1e-12)
            assert err <= 1e-4, f"{name} mode {mode} output {k}: relative error {err:.2e}"
