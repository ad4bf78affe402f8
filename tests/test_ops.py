"""The runtime's non-linear ops (runtime/ops: elementwise, pool, shape, softmax) against onnxruntime on single-node
models, plus shape-inference errors and the registry contract.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops import registry as R

MY_MODULES = ("elementwise", "pool", "shape", "softmax")
R.register_all(MY_MODULES)

RNG = np.random.default_rng(1234)


def rand(*shape, scale=3.0):
    return np.asarray(RNG.standard_normal(shape) * scale, dtype=np.float32)


def ours(op, inputs, attrs, const_idx=(), inplace=None):
    """Infer and run one node the way the executor does; `inplace` = index of the input whose buffer is the output."""
    consts = [a if i in const_idx else None for i, a in enumerate(inputs)]
    shapes = [None if a is None else a.shape for a in inputs]
    (shape,) = R.infer_node(op, "node0", shapes, attrs, consts)
    opdef = R.get(op, "node0")
    if inplace is not None:
        assert opdef.inplace_ok
        inputs = list(inputs)
        inputs[inplace] = inputs[inplace].copy()
        out = inputs[inplace].reshape(shape)
        assert np.shares_memory(out, inputs[inplace])
    else:
        out = np.full(shape, np.nan, np.float32)  # garbage the op must overwrite everywhere
    opdef.run(inputs, attrs, [out])
    return out


def _dtype(a):
    return helper.np_dtype_to_tensor_dtype(a.dtype)


def reference(op, inputs, attrs, const_idx=(), opset=19):
    """onnxruntime's result for a single-node model; inputs in const_idx become initializers."""
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if i in const_idx:
            inits.append(numpy_helper.from_array(a, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, _dtype(a), a.shape))
            feeds[name] = a
    node = helper.make_node(op, names, ["out"], **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def check(op, inputs, attrs, const_idx=(), rtol=1e-5, atol=1e-6, opset=19):
    want = reference(op, inputs, attrs, const_idx, opset)
    got = ours(op, inputs, attrs, const_idx)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return got


# ---------------------------------------------------------------- activations

ACTIVATIONS = [
    ("Relu", {}), ("LeakyRelu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("HardSigmoid", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}), ("Tanh", {}), ("Clip", {}),
]


@pytest.mark.parametrize("op,attrs", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (2, 3, 5), (2, 3, 4, 4)])
def test_activation_matches_onnxruntime(op, attrs, shape):
    x = rand(*shape, scale=4.0)
    check(op, [x], attrs, atol=1e-6)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "HardSwish", "Relu"])
def test_activation_extreme_values(op):
    x = np.array([-1e30, -100.0, -88.0, -1e-30, -0.0, 0.0, 1e-30, 88.0, 100.0, 1e30], np.float32)
    got = check(op, [x], {})
    assert np.isfinite(got).all()


@pytest.mark.parametrize("bounds,const_idx", [
    ((-1.0, 1.5), (1, 2)),
    ((0.0, None), (1,)),
    ((None, 6.0), (2,)),
    ((-1.0, 1.5), ()),  # bounds fed at run time rather than as constants
    ((2.0, 1.0), (1, 2)),  # min > max: every output is max
])
def test_clip_bounds_as_inputs(bounds, const_idx):
    x = rand(3, 4, scale=4.0)
    inputs = [x] + [None if b is None else np.array(b, np.float32) for b in bounds]
    check("Clip", inputs, {}, const_idx=const_idx)


def test_clip_scalar_bounds_required():
    with pytest.raises(FormatError, match=r"op 'Clip' \(node 'node0'\).*input 1 \('min'\) must be a scalar"):
        ours("Clip", [rand(3), rand(2), None], {}, const_idx=(1,))


# ---------------------------------------------------------------- binary ops

BROADCAST_PAIRS = [
    ((3, 4), (3, 4)), ((3, 4), (4,)), ((4,), (3, 4)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((2, 3), ()),
    ((1, 3, 1, 1), (2, 3, 4, 5)), ((2, 3, 4, 5), (3, 1, 1)), ((1,), (5,)),
]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", BROADCAST_PAIRS)
def test_binary_broadcast_matches_onnxruntime(op, sa, sb):
    a, b = rand(*sa), rand(*sb)
    check(op, [a, b], {})
    check(op, [a, b], {}, const_idx=(1,))  # weight-like constant operand, e.g. a bias


def test_div_by_zero_gives_ieee_values_without_warnings(recwarn):
    a = np.array([1.0, -1.0, 0.0, 2.0], np.float32)
    b = np.array([0.0, 0.0, 0.0, 4.0], np.float32)
    got = check("Div", [a, b], {})
    assert np.isposinf(got[0]) and np.isneginf(got[1]) and np.isnan(got[2]) and got[3] == 0.5
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("op,ufunc", [("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply),
                                      ("Div", np.divide)])
@settings(max_examples=30, deadline=None)
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=4))
def test_binary_infer_and_run_follow_numpy(op, ufunc, shapes):
    sa, sb = shapes.input_shapes
    a, b = rand(*sa), rand(*sb) + np.float32(10.0)  # keep Div away from 0
    got = ours(op, [a, b], {})
    assert got.shape == shapes.result_shape
    np.testing.assert_allclose(got, ufunc(a, b), rtol=1e-6)


@pytest.mark.parametrize("sa,sb", [((3, 4), (5,)), ((2, 3), (3, 2)), ((4, 1, 3), (2, 4))])
def test_binary_mismatched_shapes_raise(sa, sb):
    with pytest.raises(FormatError, match=rf"op 'Add' \(node 'n7'\): input shapes {re_tuple(sa)} and "
                                          rf"{re_tuple(sb)} do not broadcast"):
        R.infer_node("Add", "n7", [sa, sb], {}, [None, None])


def re_tuple(t):
    return str(tuple(t)).replace("(", r"\(").replace(")", r"\)")


def test_binary_arity():
    with pytest.raises(FormatError, match="expects 2 inputs, found 1"):
        R.infer_node("Mul", "m", [(3,)], {}, [None])


# ---------------------------------------------------------------- in place

INPLACE_CASES = [
    ("Relu", [rand(2, 3, 4)], {}, 0), ("LeakyRelu", [rand(5, 6)], {"alpha": 0.3}, 0),
    ("Clip", [rand(40), np.array(-1, np.float32), np.array(1, np.float32)], {}, 0),
    ("Sigmoid", [rand(3, 3)], {}, 0), ("HardSigmoid", [rand(9)], {}, 0), ("HardSwish", [rand(2, 8)], {}, 0),
    ("Tanh", [rand(17)], {}, 0), ("Add", [rand(2, 3, 4), rand(3, 1)], {}, 0), ("Sub", [rand(4), rand(3, 4)], {}, 1),
    ("Mul", [rand(2, 5), rand(2, 5)], {}, 1), ("Div", [rand(6, 2), rand(2) + 10], {}, 0),
    ("Softmax", [rand(2, 3, 4)], {"axis": 1}, 0), ("Softmax", [rand(3, 7)], {}, 0),
    ("Reshape", [rand(2, 3, 4), np.array([4, -1], np.int64)], {}, 0), ("Flatten", [rand(2, 3, 4)], {"axis": 2}, 0),
]


@pytest.mark.parametrize("op,inputs,attrs,alias", INPLACE_CASES, ids=[c[0] for c in INPLACE_CASES])
def test_inplace_equals_out_of_place(op, inputs, attrs, alias):
    const_idx = (1,) if op == "Reshape" else ()
    want = ours(op, inputs, attrs, const_idx)
    got = ours(op, inputs, attrs, const_idx, inplace=alias)
    np.testing.assert_array_equal(got, want)


def test_inplace_flags():
    flagged = {name for name, d in R.REGISTRY.items() if d.inplace_ok}
    assert {"Relu", "Add", "Softmax", "Reshape", "Flatten"} <= flagged
    assert not flagged & {"MaxPool", "AveragePool", "GlobalAveragePool", "Transpose", "Concat"}


# ---------------------------------------------------------------- pools

MAXPOOL_CASES = [
    ((1, 2, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 9), {"kernel_shape": [2, 2], "strides": [2, 2]}),  # 2x2 fast path, odd sizes drop the last row/col
    ((2, 3, 7, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 6, 7), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 2, 1], "ceil_mode": 1}),
    ((1, 1, 5, 5), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ((1, 2, 9, 9), {"kernel_shape": [3, 3], "dilations": [2, 2]}),
    ((1, 2, 10, 11), {"kernel_shape": [2, 3], "dilations": [3, 2], "strides": [2, 1], "pads": [1, 2, 0, 1]}),
    ((1, 2, 8, 8), {"kernel_shape": [2, 2], "dilations": [2, 2], "strides": [3, 3], "ceil_mode": 1}),
    # ceil_mode windows that would start inside the end padding are dropped: 2x2 out, not 3x3
    ((1, 1, 5, 5), {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [0, 0, 1, 1], "ceil_mode": 1}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 7, 8), {"kernel_shape": [4, 4], "auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "auto_pad": "VALID", "strides": [2, 2]}),
    ((2, 3, 12), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ((1, 2, 11), {"kernel_shape": [2], "strides": [2], "ceil_mode": 1}),
    ((1, 1, 4, 4), {"kernel_shape": [4, 4]}),
    ((1, 1, 1, 1), {"kernel_shape": [1, 1]}),
]

AVGPOOL_CASES = [
    ((1, 2, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 9), {"kernel_shape": [2, 2], "strides": [2, 2], "count_include_pad": 1}),
    ((2, 3, 7, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 3, 7, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ((1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1, "count_include_pad": 1}),
    ((1, 2, 6, 7), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 2, 1], "ceil_mode": 1}),
    ((1, 2, 6, 7), {"kernel_shape": [3, 2], "strides": [2, 3], "pads": [1, 0, 2, 1], "ceil_mode": 1,
                    "count_include_pad": 1}),
    ((1, 1, 5, 5), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
                    "count_include_pad": 1}),
    ((1, 1, 5, 5), {"kernel_shape": [2, 2], "strides": [3, 3], "pads": [0, 0, 1, 1], "ceil_mode": 1,
                    "count_include_pad": 1}),
    ((1, 1, 5, 5), {"kernel_shape": [3, 3], "strides": [4, 4], "pads": [1, 1, 2, 2], "ceil_mode": 1}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 7, 8), {"kernel_shape": [4, 4], "auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "count_include_pad": 1}),
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "auto_pad": "VALID", "strides": [2, 2]}),
    ((2, 3, 12), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ((2, 3, 12), {"kernel_shape": [3], "strides": [2], "pads": [2, 1], "count_include_pad": 1}),
    ((1, 2, 11), {"kernel_shape": [2], "strides": [2], "ceil_mode": 1}),
    ((1, 2, 9, 9), {"kernel_shape": [3, 3], "dilations": [2, 2]}),
    ((1, 2, 10, 11), {"kernel_shape": [2, 3], "dilations": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 1, 4, 4), {"kernel_shape": [4, 4]}),
]


@pytest.mark.parametrize("shape,attrs", MAXPOOL_CASES)
def test_maxpool_matches_onnxruntime(shape, attrs):
    check("MaxPool", [rand(*shape)], attrs)


def test_maxpool_all_negative_input_ignores_padding():
    got = check("MaxPool", [-np.abs(rand(1, 1, 5, 5)) - 1], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]})
    assert (got < 0).all()


@pytest.mark.parametrize("shape,attrs", AVGPOOL_CASES)
def test_averagepool_matches_onnxruntime(shape, attrs):
    check("AveragePool", [rand(*shape)], attrs)


def test_averagepool_count_include_pad_hand_computed():
    # one 3x3 window at a corner: 4 input cells of value 1, 5 padding cells
    x = np.ones((1, 1, 2, 2), np.float32)
    attrs = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}
    assert ours("AveragePool", [x], attrs)[0, 0, 0, 0] == 1.0
    assert ours("AveragePool", [x], {**attrs, "count_include_pad": 1})[0, 0, 0, 0] == np.float32(4 / 9)


@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (2, 4, 1, 1), (2, 3, 7), (1, 2, 3, 4, 2)])
def test_global_averagepool_matches_onnxruntime(shape):
    check("GlobalAveragePool", [rand(*shape)], {})


@pytest.mark.parametrize("op,shape,attrs,err,msg", [
    ("MaxPool", (1, 1, 4, 4, 4), {"kernel_shape": [2, 2, 2]}, UnsupportedError, "only 1-D and 2-D pooling"),
    ("MaxPool", (1, 1, 4, 4), {}, FormatError, "'kernel_shape' is required"),
    ("MaxPool", (1, 1, 4, 4), {"kernel_shape": [2]}, FormatError, "'kernel_shape' must have 2 values, found 1"),
    ("MaxPool", (4, 4), {"kernel_shape": [2]}, FormatError, r"input must be \(N, C, spatial...\)"),
    ("MaxPool", (1, 1, 4, 4), {"kernel_shape": [2, 2], "pads": [2, 0, 0, 0]}, FormatError,
     "must be smaller than the"),
    ("AveragePool", (1, 1, 2, 2), {"kernel_shape": [3, 3]}, FormatError, "kernel extent 3 exceeds"),
    ("AveragePool", (1, 1, 4, 4), {"kernel_shape": [2, 2], "strides": [0, 1]}, FormatError,
     "'strides' values must be >= 1"),
    ("AveragePool", (1, 1, 4, 4), {"kernel_shape": [2, 2], "auto_pad": "SAME"}, FormatError, "'auto_pad' must be"),
    ("AveragePool", (1, 1, 4, 4), {"kernel_shape": [2, 2], "count_include_pad": 2}, FormatError,
     "'count_include_pad' must be one of"),
    ("GlobalAveragePool", (3, 4), {}, FormatError, r"input must be \(N, C, spatial...\)"),
])
def test_pool_infer_errors(op, shape, attrs, err, msg):
    with pytest.raises(err, match=rf"op '{op}' \(node 'p1'\): .*{msg}"):
        R.infer_node(op, "p1", [shape], attrs, [None])


def test_maxpool_indices_output_is_unsupported():
    with pytest.raises(UnsupportedError, match=r"op 'MaxPool' \(node 'mp'\): the node asks for 2 outputs"):
        R.infer_node("MaxPool", "mp", [(1, 1, 4, 4)], {"kernel_shape": [2, 2]}, [None], n_outputs=2)


# ---------------------------------------------------------------- softmax

@pytest.mark.parametrize("shape,axis", [((5,), None), ((2, 3, 4), None), ((2, 3, 4), -1), ((2, 3, 4), 0),
                                        ((2, 3, 4), 1), ((2, 3, 4), -2), ((2, 3, 4, 5), 1), ((1, 10), 1),
                                        ((3, 1), 1)])
def test_softmax_matches_onnxruntime(shape, axis):
    attrs = {} if axis is None else {"axis": axis}
    got = check("Softmax", [rand(*shape, scale=5.0)], attrs)
    np.testing.assert_allclose(got.sum(axis=-1 if axis is None else axis), 1.0, rtol=1e-5)


def test_softmax_is_stable_for_large_logits():
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]], np.float32)
    got = check("Softmax", [x], {})
    np.testing.assert_allclose(got[1], [1 / 3] * 3, rtol=1e-6)


@pytest.mark.parametrize("shape,axis", [((40, 6625), -1), ((1, 3, 97), -1), ((2, 5), -1), ((1, 16, 4, 2100), 1),
                                        ((2, 3, 4), 0), ((2, 3, 5), 1), ((3, 1, 7), 1), ((1, 2, 1), 1)])
def test_softmax_bound_plain_and_in_place(shape, axis):
    """Both layouts (contiguous lines: a CTC head's 6625 classes per step; strided: YOLOv8's DFL softmax over 16 bins)
    against float64 numpy; the bound step on the plan's scratch (scratch_bytes) equal to the plain run, in place
    equal to out of place."""
    x = rand(*shape, scale=8.0)
    attrs = {"axis": axis}
    opdef = R.get("Softmax", "s")
    want = np.exp(x.astype(np.float64) - x.max(axis, keepdims=True))
    want /= want.sum(axis, keepdims=True)
    plain = np.full(x.shape, np.nan, np.float32)
    opdef.run([x], attrs, [plain])
    np.testing.assert_allclose(plain, want, rtol=2e-6, atol=1e-9)
    inner = int(np.prod(shape[axis % len(shape) + 1:]))
    need = opdef.scratch_bytes([x.shape], attrs)
    assert need == (0 if inner == 1 else 12 * inner)
    scratch = np.zeros(need, np.uint8)
    bound = np.full(x.shape, np.nan, np.float32)
    fn, args = opdef.bind([x], attrs, [bound], scratch)
    assert inner == 1 or any(isinstance(a, np.ndarray) and np.shares_memory(a, scratch) for a in args)
    fn(*args)
    np.testing.assert_array_equal(bound, plain)
    y = x.copy()
    opdef.run([y], attrs, [y])
    np.testing.assert_array_equal(y, plain)
    y = x.copy()
    fn, args = opdef.bind([y], attrs, [y], scratch)
    fn(*args)
    np.testing.assert_array_equal(y, plain)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_special_values_both_layouts(axis):
    """NaN anywhere in a line makes the line NaN; -inf entries give 0; a line of -inf is NaN (0/0), as onnxruntime;
    the same along a strided axis as along a contiguous one."""
    x = np.array([[1.0, np.nan, 2.0], [-np.inf, 0.0, 1.0], [-np.inf] * 3, [-200.0, 0.0, 1.0]], np.float32)
    x = x if axis == -1 else np.ascontiguousarray(x.T)
    got = ours("Softmax", [x], {"axis": axis})
    want = reference("Softmax", [x], {"axis": axis})
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-6, atol=1e-12)


def test_softmax_lines_special_values():
    """NaN anywhere in a line makes the line NaN; -inf entries give 0; a line of -inf is NaN (0/0), as onnxruntime."""
    x = np.array([[1.0, np.nan, 2.0], [-np.inf, 0.0, 1.0], [-np.inf] * 3, [-200.0, 0.0, 1.0]], np.float32)
    got = ours("Softmax", [x], {})
    assert np.isnan(got[0]).all() and np.isnan(got[2]).all()
    np.testing.assert_allclose(got[1], [0.0, 0.26894143, 0.7310586], rtol=1e-6)
    np.testing.assert_allclose(got[3], [0.0, 0.26894143, 0.7310586], rtol=1e-6)
    want = reference("Softmax", [x], {})
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-6, atol=1e-12)


def test_softmax_axis_out_of_range():
    with pytest.raises(FormatError, match=r"op 'Softmax' \(node 's'\): attribute 'axis' = 3 is out of range"):
        R.infer_node("Softmax", "s", [(2, 3, 4)], {"axis": 3}, [None])


# ---------------------------------------------------------------- layout ops

@pytest.mark.parametrize("shape,target,allowzero", [
    ((2, 3, 4), [0, -1], 0), ((2, 3, 4), [-1], 0), ((2, 3, 4), [2, -1, 2], 0), ((2, 3, 4), [0, 0, -1], 0),
    ((2, 3, 4), [4, 0, 2], 0), ((2, 3, 4), [24], 0), ((2, 3, 4), [1, 24, 1], 0), ((6,), [-1, 1, 2], 0),
    ((2, 3, 4), [2, 12], 1), ((2, 0, 3), [0, 3], 1), ((2, 0, 3), [-1, 3], 0),
])
def test_reshape_matches_onnxruntime(shape, target, allowzero):
    attrs = {"allowzero": allowzero} if allowzero else {}
    check("Reshape", [rand(*shape), np.array(target, np.int64)], attrs, const_idx=(1,))


@pytest.mark.parametrize("shape,target,attrs,err,msg", [
    ((2, 3, 4), [-1, -1], {}, FormatError, "at most one -1"),
    ((2, 3, 4), [5, -1], {}, FormatError, r"cannot reshape input \(2, 3, 4\) \(24 elements\) to \[5, -1\]"),
    ((2, 3, 4), [7, 3], {}, FormatError, r"to \[7, 3\] \(21 elements\)"),
    ((2, 3), [0, 0, 0], {}, FormatError, "0 at position 2"),
    ((2, 3), [0, -1], {"allowzero": 1}, FormatError, "both 0 and -1"),
    ((2, 3), [-2, -3], {}, FormatError, "no other negative value"),
])
def test_reshape_errors(shape, target, attrs, err, msg):
    with pytest.raises(err, match=rf"op 'Reshape' \(node 'r'\): .*{msg}"):
        R.infer_node("Reshape", "r", [shape, (len(target),)], attrs, [None, np.array(target, np.int64)])


def test_reshape_needs_constant_shape():
    with pytest.raises(UnsupportedError, match=r"op 'Reshape' \(node 'r'\): the target shape \(input 1\) must "
                                               r"be a constant"):
        R.infer_node("Reshape", "r", [(2, 3), (1,)], {}, [None, None])


@pytest.mark.parametrize("shape,axis", [((2, 3, 4), None), ((2, 3, 4), 0), ((2, 3, 4), 2), ((2, 3, 4), 3),
                                        ((2, 3, 4), -1), ((5,), 1), ((2, 3, 4, 5), -3)])
def test_flatten_matches_onnxruntime(shape, axis):
    check("Flatten", [rand(*shape)], {} if axis is None else {"axis": axis})


@pytest.mark.parametrize("shape,perm", [((2, 3), None), ((2, 3, 4), None), ((2, 3, 4), [0, 2, 1]),
                                        ((2, 3, 4, 5), [0, 2, 3, 1]), ((2, 3, 4, 5), [3, 1, 0, 2]), ((7,), [0])])
def test_transpose_matches_onnxruntime(shape, perm):
    check("Transpose", [rand(*shape)], {} if perm is None else {"perm": perm})


def test_transpose_bad_perm():
    with pytest.raises(FormatError, match=r"'perm' = \[0, 0, 1\] is not a permutation of 0..2"):
        R.infer_node("Transpose", "t", [(2, 3, 4)], {"perm": [0, 0, 1]}, [None])


@pytest.mark.parametrize("shapes,axis", [
    ([(2, 3), (4, 3)], 0), ([(2, 3), (2, 1), (2, 5)], 1), ([(2, 3), (2, 1), (2, 5)], -1),
    ([(1, 2, 3, 4), (1, 5, 3, 4)], 1), ([(2, 2, 3), (2, 2, 1)], 2), ([(3, 4)], 0), ([(2, 0), (2, 3)], 1),
])
def test_concat_matches_onnxruntime(shapes, axis):
    inputs = [rand(*s) for s in shapes]
    check("Concat", inputs, {"axis": axis})
    check("Concat", inputs, {"axis": axis}, const_idx=(0,))


@pytest.mark.parametrize("shapes,attrs,msg", [
    ([(2, 3), (3, 3)], {"axis": 1}, r"input 1 has shape \(3, 3\)"),
    ([(2, 3), (2, 3, 1)], {"axis": 0}, r"input 1 has shape \(2, 3, 1\); expected rank 2"),
    ([(2, 3), (2, 3)], {}, "'axis' is required"),
    ([(2, 3), (2, 3)], {"axis": 2}, "'axis' = 2 is out of range"),
])
def test_concat_errors(shapes, attrs, msg):
    with pytest.raises(FormatError, match=rf"op 'Concat' \(node 'c'\): .*{msg}"):
        R.infer_node("Concat", "c", shapes, attrs, [None] * len(shapes))


# ---------------------------------------------------------------- registry

def test_unsupported_op_names_op_node_and_supported_list():
    with pytest.raises(UnsupportedError) as e:
        R.get("StringNormalizer", "text_layer_3")
    msg = str(e.value)
    assert msg.startswith("op 'StringNormalizer' (node 'text_layer_3') is not supported by this runtime; supported: ")
    for op in ("Add", "MaxPool", "Reshape", "Softmax"):
        assert op in msg
    with pytest.raises(UnsupportedError, match=r"op 'StringNormalizer' \(node 'n'\)"):
        R.infer_node("StringNormalizer", "n", [(1, 2, 3)], {}, [None])


def test_register_all_is_idempotent_and_checks_modules():
    before = dict(R.REGISTRY)
    R.register_all(MY_MODULES)
    R.register_all(("no_such_module",))  # absent modules are skipped
    assert R.REGISTRY == before
    with pytest.raises(TypeError, match="defines no OPS"):
        R.register_all(("registry",))


def test_register_rejects_a_second_definition():
    relu = R.REGISTRY["Relu"]
    assert R.register(relu) is relu
    with pytest.raises(ValueError, match="'Relu' is already registered"):
        R.register(R.OpDef("Relu", relu.infer, lambda i, a, o: None))


def test_registry_takes_bind_and_scratch_as_opdef_fields():
    """One way to declare a bound step: OpDef.bind / OpDef.scratch_bytes. A runner carrying them as attributes, or
    scratch without a bind, is refused at registration; every registered op follows it."""
    def run(inputs, attrs, outputs):
        pass

    run.bind = lambda inputs, attrs, outputs: None
    with pytest.raises(TypeError, match="as OpDef fields"):
        R.register(R.OpDef("__TestOld", lambda s, a, c: s, run))
    with pytest.raises(TypeError, match="needs a bind"):
        R.register(R.OpDef("__TestScratch", lambda s, a, c: s, lambda i, a, o: None, scratch_bytes=lambda s, a: 0))
    assert "__TestOld" not in R.REGISTRY and "__TestScratch" not in R.REGISTRY
    R.register_all()
    for op in R.REGISTRY.values():
        assert not hasattr(op.run, "bind") and (op.scratch_bytes is None or op.bind is not None), op.name
    assert R.REGISTRY["MaxPool"].scratch_bytes is not None and R.REGISTRY["Add"].bind is not None


@pytest.mark.parametrize("op", ["Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze"])
def test_copy_ops_bind_no_step_on_their_input_buffer(op):
    """A copy op bound onto its input's own buffer is no step; onto another buffer, a copy of the values."""
    R.register_all()
    x = rand(2, 1, 3)
    opdef = R.get(op, "c")
    out = np.full(x.size, np.nan, np.float32)
    fn, args = opdef.bind([x], {}, [out])
    fn(*args)
    np.testing.assert_array_equal(out.reshape(-1), x.reshape(-1))
    assert opdef.bind([x], {}, [x.reshape(-1)]) is R.NO_STEP
    assert opdef.bind([x.astype(np.float64)], {}, [out]) is None  # not the arena's float32: the plain run


@pytest.mark.parametrize("name,args", [("_relu_kernel", ()), ("_leaky_relu_kernel", (0.25,)),
                                       ("_clip_kernel", (-1.0, 2.0)), ("_hard_sigmoid_kernel", (0.2, 0.5)),
                                       ("_hard_swish_kernel", (1 / 6, 0.5)), ("_prelu_kernel", ())])
def test_activation_kernels_in_place_give_the_same_bits(name, args):
    """The unary kernels' in-place loop (out is x: its own loop, the vectorised one) gives the out-of-place bits on
    special values (NaN, +-inf, -0, +-1e-30) and a length no vector width divides (67)."""
    from edgepack.runtime.ops import elementwise as E
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(67) * 4).astype(np.float32)
    x[:6] = [np.nan, np.inf, -np.inf, -0.0, 1e-30, -1e-30]
    kernel = getattr(E, name)
    scalars = tuple(np.float32(a) for a in args)
    if name == "_prelu_kernel":  # (outer, mid, inner) against a slope per mid
        x = x[:66].reshape(2, 3, 11)
        scalars = (np.array([0.5, -2.0, 0.0], np.float32),)
        apart, inplace = np.empty_like(x), x.copy()
        kernel(x, scalars[0], apart)
        kernel(inplace, scalars[0], inplace)
    else:
        apart, inplace = np.empty_like(x), x.copy()
        kernel(x, apart, *scalars)
        kernel(inplace, inplace, *scalars)
    np.testing.assert_array_equal(inplace.view(np.uint32), apart.view(np.uint32))
