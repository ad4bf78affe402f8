"""The runtime ops real-world exports need (runtime/ops: conv_transpose, resize, tensor, mathops, normalization, and
the activation x activation MatMul) against onnxruntime on single-node models, at several opsets; shape-inference
errors; in-place runs; hypothesis round trips against numpy.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops import registry as R

MY_MODULES = ("conv_transpose", "resize", "tensor", "mathops", "normalization")
R.register_all(MY_MODULES + ("elementwise", "softmax"))

RNG = np.random.default_rng(2024)


def rand(*shape, scale=2.0):
    return np.asarray(RNG.standard_normal(shape) * scale, dtype=np.float32)


def ours(op, inputs, attrs, const_idx=(), n_out=1, inplace=None):
    """Infer and run one node the way the executor does; `inplace` = index of the input whose buffer is output 0."""
    consts = [a if i in const_idx else None for i, a in enumerate(inputs)]
    shapes = [None if a is None else a.shape for a in inputs]
    out_shapes = R.infer_node(op, "node0", shapes, attrs, consts, n_out)
    opdef = R.get(op, "node0")
    outs = [np.full(s, np.nan, np.float32) for s in out_shapes]  # garbage the op must overwrite everywhere
    if inplace is not None:
        assert opdef.inplace_ok
        inputs = list(inputs)
        inputs[inplace] = inputs[inplace].copy()
        outs[0] = inputs[inplace].reshape(out_shapes[0])
        assert np.shares_memory(outs[0], inputs[inplace])
    opdef.run(inputs, attrs, outs)
    return outs


def reference(op, inputs, attrs, const_idx=(), opset=19, n_out=1, out_type=TensorProto.FLOAT):
    """onnxruntime's outputs for a single-node model; inputs in const_idx become initializers."""
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
            graph_inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                              a.shape))
            feeds[name] = a
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, out_type, None) for o in outs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(op, inputs, attrs, const_idx=(), rtol=1e-5, atol=1e-5, opset=19, n_out=1, out_type=TensorProto.FLOAT):
    want = reference(op, inputs, attrs, const_idx, opset, n_out, out_type)
    got = ours(op, inputs, attrs, const_idx, n_out)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w.astype(np.float32), rtol=rtol, atol=atol)
    return got


def i64(*values):
    return np.array(values, np.int64)


def f32(*values):
    return np.array(values, np.float32)


# ---------------------------------------------------------------- ConvTranspose

CONVT_CASES = [
    ((1, 2, 5, 5), (2, 3, 3, 3), {}),
    ((2, 3, 4, 4), (3, 2, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # the usual 2x upsampling layer
    ((1, 2, 5, 4), (2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    ((1, 2, 4, 5), (2, 2, 3, 2), {"strides": [1, 3], "dilations": [2, 1], "pads": [0, 1, 2, 0]}),
    ((1, 4, 4, 4), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]}),  # thin groups: the direct kernel
    ((1, 8, 4, 3), (8, 4, 2, 2), {"group": 2, "strides": [2, 2]}),  # 4 x 4 channels per group: BLAS + col2im
    ((2, 6, 5, 5), (6, 1, 3, 3), {"group": 6, "strides": [2, 2], "pads": [1, 1, 1, 1]}),  # depthwise
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [9, 9]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [10, 8]}),
    ((1, 2, 3, 4), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 3, 4), (2, 3, 4, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 2, 3, 3), (2, 3, 2, 2), {"auto_pad": "VALID", "strides": [3, 3]}),
    ((2, 3, 7), (3, 4, 3), {"strides": [2], "pads": [1, 0]}),
    ((1, 2, 6), (2, 2, 4), {"strides": [2], "pads": [1, 1], "dilations": [2], "output_padding": [1]}),
    ((1, 1, 1, 1), (1, 1, 1, 1), {}),
    ((1, 3, 2, 2), (3, 2, 5, 5), {"pads": [2, 2, 2, 2]}),  # pads crop the full output to its middle
]


@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose_matches_onnxruntime(xs, ws, attrs, bias):
    x, w = rand(*xs), rand(*ws, scale=0.5)
    cout = ws[1] * attrs.get("group", 1)
    inputs = [x, w] + ([rand(cout)] if bias else [])
    check("ConvTranspose", inputs, attrs, const_idx=(1, 2), rtol=1e-4, atol=1e-4)


def test_conv_transpose_weight_as_runtime_input():
    check("ConvTranspose", [rand(1, 2, 3, 3), rand(2, 2, 3, 3)], {"strides": [2, 2]}, rtol=1e-4, atol=1e-4)


def test_conv_transpose_weight_object_and_repeated_runs():
    from edgepack.runtime.weights import CodebookWeight

    x = rand(1, 2, 3, 3)
    codebook = f32(-0.5, 0.0, 0.25, 1.0)
    codes = RNG.integers(0, 4, (2, 3 * 2 * 2)).astype(np.uint8)
    w = CodebookWeight((2, 3, 2, 2), codebook, codes)
    dense = codebook[codes].reshape(2, 3, 2, 2)
    attrs = {"strides": [2, 2]}
    (want,) = ours("ConvTranspose", [x, dense], attrs, const_idx=(1,))
    for _ in range(2):  # the weight object is decoded on each direct call
        out = np.full(want.shape, np.nan, np.float32)
        R.get("ConvTranspose", "ct").run([x, w], attrs, [out])
        np.testing.assert_allclose(out, want, rtol=1e-6)
    # a weight array whose values change between runs (an arena view) is read afresh each time
    w2 = dense.copy()
    (a,) = ours("ConvTranspose", [x, w2], attrs)
    w2 *= 2
    (b,) = ours("ConvTranspose", [x, w2], attrs)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-6)


@pytest.mark.parametrize("xs,ws,attrs", [((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2]}),
                                          ((2, 8, 4, 4), (8, 2, 2, 2), {"group": 4, "strides": [2, 2]}),
                                          ((1, 3, 7), (3, 5, 4), {"strides": [3], "pads": [1, 0]})])
def test_conv_transpose_scratch_is_the_plans(xs, ws, attrs):
    """The column buffer of the BLAS path is a view of the plan's scratch, sized by scratch_bytes (the executor counts
    it in the memory plan); the bound step computes what the plain run does."""
    x, w = rand(*xs), rand(*ws)
    opdef = R.get("ConvTranspose", "ct")
    (want,) = ours("ConvTranspose", [x, w], attrs, const_idx=(1,))
    need = opdef.scratch_bytes([x.shape, w.shape], attrs)
    scratch = np.zeros(need + 64, np.uint8)
    out = np.full(want.shape, np.nan, np.float32)
    fn, args = opdef.bind([x, w], attrs, [out], scratch)
    fn(*args)
    np.testing.assert_array_equal(out, want)
    cols = [a for a in args if isinstance(a, np.ndarray) and a.ndim == 2]
    if need:
        assert cols and np.shares_memory(cols[0], scratch) and cols[0].nbytes == need
    else:  # the direct path (few channels per group) needs none
        assert not cols


def test_conv_transpose_hand_computed():
    # 1x1 input, 2x2 kernel, stride 1: the output is the kernel scaled by the input, plus the bias
    x = np.full((1, 1, 1, 1), 2.0, np.float32)
    w = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    (got,) = ours("ConvTranspose", [x, w, f32(0.5)], {}, const_idx=(1, 2))
    np.testing.assert_array_equal(got[0, 0], [[0.5, 2.5], [4.5, 6.5]])


@pytest.mark.parametrize("xs,ws,attrs,err,msg", [
    ((1, 3, 4, 4), (2, 3, 3, 3), {}, FormatError, "do not fit input channels 3"),
    ((1, 4, 4, 4), (4, 3, 3, 3), {"group": 3}, FormatError, "group 3 do not fit"),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"kernel_shape": [2, 2]}, FormatError, "differs from the weight's"),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_padding": [2, 0]}, FormatError,
     "output_padding .* must be smaller"),
    ((1, 2, 2, 2, 2), (2, 3, 1, 1, 1), {}, UnsupportedError, "only 1-D and 2-D"),
    ((1, 2, 2, 2), (2, 3, 2, 2), {"pads": [2, 2, 2, 2]}, FormatError, "leave no output"),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"auto_pad": "SAME"}, FormatError, "'auto_pad' must be"),
])
def test_conv_transpose_infer_errors(xs, ws, attrs, err, msg):
    with pytest.raises(err, match=rf"op 'ConvTranspose' \(node 'ct'\): .*{msg}"):
        R.infer_node("ConvTranspose", "ct", [xs, ws], attrs, [None, None])


# ---------------------------------------------------------------- Resize

def _resize(x, attrs, scales=None, sizes=None, opset=19, rtol=1e-5, atol=1e-5):
    roi = None if opset >= 13 else np.zeros(0, np.float32)  # an input before opset 13, empty when unused
    inputs = [x, roi, None if scales is None else f32(*scales), None if sizes is None else i64(*sizes)]
    while inputs[-1] is None:
        inputs.pop()
    return check("Resize", inputs, attrs, const_idx=(1, 2, 3), opset=opset, rtol=rtol, atol=atol)


COORDS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


@pytest.mark.parametrize("coord", COORDS + ["tf_half_pixel_for_nn", "half_pixel_symmetric"])
@pytest.mark.parametrize("nearest", NEAREST)
@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 1.5, 0.75), (1, 1, 0.5, 3), (1, 1, 0.6, 1.7)])
def test_resize_nearest_matches_onnxruntime(coord, nearest, scales):
    x = rand(2, 3, 5, 7)
    # the spec's tf_half_pixel_for_nearest (opset 11 only) is spelled tf_half_pixel_for_nn by onnxruntime
    opset = 11 if coord == "tf_half_pixel_for_nn" else 19
    _resize(x, {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}, scales,
            opset=opset)


@pytest.mark.parametrize("coord", COORDS + ["half_pixel_symmetric"])
@pytest.mark.parametrize("scales", [(1, 1, 2, 2), (1, 1, 1.5, 0.75), (1, 1, 0.5, 3), (1, 1, 1, 2.5)])
def test_resize_linear_matches_onnxruntime(coord, scales):
    _resize(rand(2, 3, 5, 6), {"mode": "linear", "coordinate_transformation_mode": coord}, scales)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("coord", COORDS)
@pytest.mark.parametrize("sizes", [(2, 3, 10, 3), (2, 3, 1, 1), (2, 3, 4, 13), (2, 3, 4, 5)])
def test_resize_sizes_matches_onnxruntime(mode, coord, sizes):
    _resize(rand(2, 3, 4, 5), {"mode": mode, "coordinate_transformation_mode": coord}, sizes=sizes)


def test_resize_defaults_and_pytorch_nearest_export():
    x = rand(1, 2, 3, 4)
    _resize(x, {}, (1, 1, 2, 2))  # nearest, half_pixel, round_prefer_floor
    # torch.nn.Upsample(scale_factor=2, mode="nearest") exports asymmetric + floor
    got = _resize(x, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
                  (1, 1, 2, 2))[0]
    np.testing.assert_array_equal(got, x.repeat(2, axis=2).repeat(2, axis=3))


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_keep_aspect_ratio_with_axes(policy, mode):
    x = rand(1, 2, 4, 6)
    attrs = {"mode": mode, "axes": [2, 3], "keep_aspect_ratio_policy": policy}
    check("Resize", [x, None, None, i64(7, 9)], attrs, const_idx=(3,))


def test_resize_axes_with_scales():
    check("Resize", [rand(1, 2, 4, 6), None, f32(1.5, 2.0)], {"mode": "linear", "axes": [-1, 2]}, const_idx=(2,))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [(2.0, 2.0), (0.5, 0.5), (1.7, 0.6)])
def test_resize_opset10(mode, scales):
    check("Resize", [rand(1, 2, 4, 6), f32(1, 1, *scales)], {"mode": mode}, const_idx=(1,), opset=10)


@pytest.mark.parametrize("shape,scales", [((2, 3, 7), (1, 1, 2.5)), ((6, 5), (1.5, 0.4)), ((9,), (2.0,))])
def test_resize_other_ranks(shape, scales):
    x = rand(*shape)
    _resize(x, {"mode": "nearest"}, scales)
    if len(shape) > 1:  # onnxruntime's linear mode takes 2-D to 5-D inputs
        _resize(x, {"mode": "linear"}, scales)
    else:
        (got,) = ours("Resize", [x, None, f32(2.0)], {"mode": "linear", "coordinate_transformation_mode":
                                                       "asymmetric"}, const_idx=(1, 2))
        np.testing.assert_allclose(got[::2], x)
        np.testing.assert_allclose(got[1:-1:2], (x[:-1] + x[1:]) / 2, rtol=1e-6)


def test_resize_outer_axes_nearest():
    # a channel axis resized: the numpy path
    _resize(rand(1, 3, 4, 2), {"mode": "nearest", "nearest_mode": "floor",
                               "coordinate_transformation_mode": "asymmetric"}, (2, 2, 1, 1))


def test_resize_outer_axes_linear_against_numpy():
    x = rand(2, 3, 2, 2)
    (got,) = ours("Resize", [x, None, f32(1, 2, 1, 1)], {"mode": "linear", "coordinate_transformation_mode":
                                                         "align_corners"}, const_idx=(1, 2))
    # align_corners doubling 3 -> 6 channels samples at c * 2/5
    c = np.arange(6) * 2 / 5
    lo = np.floor(c).astype(int)
    hi = np.minimum(lo + 1, 2)
    w = (c - lo).reshape(1, 6, 1, 1)
    want = x[:, lo] * (1 - w) + x[:, hi] * w
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_resize_tf_half_pixel_names_agree():
    x = rand(1, 2, 3, 5)
    attrs = {"coordinate_transformation_mode": "tf_half_pixel_for_nearest", "nearest_mode": "floor"}
    a = ours("Resize", [x, None, f32(1, 1, 1.7, 0.6)], attrs, const_idx=(1, 2))[0]
    attrs["coordinate_transformation_mode"] = "tf_half_pixel_for_nn"
    np.testing.assert_array_equal(ours("Resize", [x, None, f32(1, 1, 1.7, 0.6)], attrs, const_idx=(1, 2))[0], a)


@pytest.mark.parametrize("shape,scales", [((2, 3, 5, 7), (1, 1, 2, 2)), ((1, 4, 1, 1), (1, 1, 2, 2)),
                                          ((1, 2, 3, 33), (1, 1, 3, 3)), ((1, 5, 4, 6), (1, 1, 2, 1)),
                                          ((1, 5, 4, 6), (1, 1, 1, 2)), ((2, 3, 4), (1, 1, 2)), ((3, 5), (4, 2)),
                                          ((1, 64, 20, 20), (1, 1, 2, 2))])
@pytest.mark.parametrize("coord,nearest", [("asymmetric", "floor"), ("half_pixel", "round_prefer_floor")])
def test_resize_whole_factor_upsampling(shape, scales, coord, nearest):
    """Nearest upsampling by whole factors runs the row-widening kernels (resize._repeat_bind) in the bound step and
    in run(): each value repeated, as numpy's repeat and onnxruntime have it, every output value written."""
    x = rand(*shape)
    x.reshape(-1)[:3] = [np.nan, np.inf, -0.0]  # bits copied as they are
    attrs = {"mode": "nearest", "coordinate_transformation_mode": coord, "nearest_mode": nearest}
    want = x
    for a, s in enumerate(scales):
        want = want.repeat(int(s), axis=a)
    sc = f32(*scales)
    got = ours("Resize", [x, None, sc], attrs, const_idx=(1, 2))[0]
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    np.testing.assert_array_equal(reference("Resize", [x, None, sc], attrs, const_idx=(1, 2))[0], want)
    opdef = R.get("Resize", "r")
    out = np.full(want.shape, np.nan, np.float32)
    fn, args = opdef.bind([x, None, sc], attrs, [out])
    assert fn.__name__ == ("_pairs_kernel" if scales[-1] == 2 else "_repeat2d_kernel")
    fn(*args)
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))


def test_resize_upsampling_other_tables_keep_the_gather():
    # 2x under asymmetric / round_prefer_ceil reads 0, 1, 1, 2, 2, ..., not i // 2; 1.5x is not whole: both keep
    # the index-table kernel
    x = rand(1, 2, 4, 6)
    for attrs, sc in (({"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                        "nearest_mode": "round_prefer_ceil"}, (1, 1, 2, 2)),
                      ({"mode": "nearest"}, (1, 1, 1.5, 2))):
        _resize(x, attrs, sc)
        want = reference("Resize", [x, None, f32(*sc)], attrs, const_idx=(1, 2))[0]
        out = np.empty(want.shape, np.float32)
        fn, args = R.get("Resize", "r").bind([x, None, f32(*sc)], attrs, [out])
        fn(*args)
        assert fn.__name__ == "_resize"
        np.testing.assert_array_equal(out, want)


def test_resize_identity():
    x = rand(1, 2, 3, 3)
    (got,) = ours("Resize", [x, None, f32(1, 1, 1, 1)], {"mode": "linear"}, const_idx=(1, 2))
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("inputs,attrs,err,msg", [
    ([(1, 1, 2, 2), None, (4,)], {"mode": "cubic"}, UnsupportedError, "mode 'cubic' is not supported"),
    ([(1, 1, 2, 2), None, (4,)], {"mode": "area"}, FormatError, "'mode' must be"),
    ([(1, 1, 2, 2), None, (4,)], {"coordinate_transformation_mode": "tf_crop_and_resize"}, UnsupportedError,
     "tf_crop_and_resize"),
    ([(1, 1, 2, 2), None, (4,)], {"nearest_mode": "nearest"}, FormatError, "'nearest_mode' must be"),
    ([(1, 1, 2, 2), None, (4,), (4,)], {}, FormatError, "exactly one of 'scales'"),
    ([(1, 1, 2, 2), None, (3,)], {}, FormatError, "'scales' must hold 4 floats"),
])
def test_resize_infer_errors(inputs, attrs, err, msg):
    consts = [None, None, f32(1, 1, 2, 2) if inputs[2] == (4,) else f32(1, 2, 2), i64(1, 1, 4, 4)][:len(inputs)]
    with pytest.raises(err, match=rf"op 'Resize' \(node 'rs'\): .*{msg}"):
        R.infer_node("Resize", "rs", inputs, attrs, consts)


def test_resize_needs_constant_scales():
    with pytest.raises(UnsupportedError, match=r"input 2 \('scales'\) must be a constant"):
        R.infer_node("Resize", "rs", [(1, 1, 2, 2), None, (4,)], {}, [None, None, None])


def test_resize_antialias_downsampling_is_unsupported():
    with pytest.raises(UnsupportedError, match="antialias"):
        R.infer_node("Resize", "rs", [(1, 1, 4, 4), None, (4,)], {"mode": "linear", "antialias": 1},
                     [None, None, f32(1, 1, 0.5, 0.5)])


# ---------------------------------------------------------------- Split

@pytest.mark.parametrize("shape,axis,sizes", [((4, 5), 1, (2, 3)), ((6, 2, 3), 0, (1, 2, 3)), ((2, 6), -1, (6,)),
                                              ((3, 4), 1, (0, 4)), ((2, 3, 4), 2, (1, 1, 2))])
def test_split_sizes_input_and_attribute(shape, axis, sizes):
    x = rand(*shape)
    check("Split", [x, i64(*sizes)], {"axis": axis}, const_idx=(1,), n_out=len(sizes), opset=13)
    check("Split", [x], {"axis": axis, "split": list(sizes)}, n_out=len(sizes), opset=11)


@pytest.mark.parametrize("dim,parts", [(6, 3), (7, 3), (5, 2), (4, 4)])
def test_split_num_outputs(dim, parts):
    check("Split", [rand(2, dim)], {"axis": 1, "num_outputs": parts}, n_out=parts, opset=18)


def test_split_without_sizes_asks_for_the_packer():
    with pytest.raises(UnsupportedError, match="writes the sizes out"):
        R.infer_node("Split", "sp", [(2, 6)], {"axis": 1}, [None], n_outputs=2)


@pytest.mark.parametrize("sizes,msg", [((2, 2), r"must be >= 0 and sum to dimension 1"), ((-1, 6), ">= 0")])
def test_split_errors(sizes, msg):
    with pytest.raises(FormatError, match=msg):
        R.infer_node("Split", "sp", [(2, 5), (2,)], {"axis": 1}, [None, i64(*sizes)], n_outputs=2)


def test_split_skips_an_output_without_buffer():
    x = rand(2, 6)
    a, c = np.empty((2, 1), np.float32), np.empty((2, 3), np.float32)
    R.get("Split", "sp").run([x, i64(1, 2, 3)], {"axis": 1}, [a, None, c])
    np.testing.assert_array_equal(a, x[:, :1])
    np.testing.assert_array_equal(c, x[:, 3:])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=5), st.integers(0, 2))
def test_split_round_trip(sizes, axis):
    shape = [2, 3, 2]
    shape[axis] = sum(sizes)
    x = rand(*shape)
    parts = ours("Split", [x, i64(*sizes)], {"axis": axis}, const_idx=(1,), n_out=len(sizes))
    np.testing.assert_array_equal(np.concatenate(parts, axis=axis), x)


# ---------------------------------------------------------------- Slice

BIG = np.iinfo(np.int64).max
SLICE_CASES = [
    ((5, 6), (1, 0), (4, 6), None, None),
    ((5, 6), (-3,), (BIG,), (1,), None),
    ((5, 6), (4, 5), (-BIG, 0), (0, 1), (-1, -2)),
    ((5, 6), (0,), (6,), (-1,), (2,)),
    ((5, 6), (10,), (20,), (0,), None),  # empty
    ((2, 3, 8), (1, -1), (7, -BIG), (2, 1), (3, -1)),
    ((7,), (-1,), (-8,), None, (-3,)),
    ((4, 4), (-100,), (100,), (1,), (1,)),
]


@pytest.mark.parametrize("shape,starts,ends,axes,steps", SLICE_CASES)
def test_slice_matches_onnxruntime(shape, starts, ends, axes, steps):
    inputs = [rand(*shape), i64(*starts), i64(*ends)]
    if axes is not None or steps is not None:
        inputs.append(None if axes is None else i64(*axes))
    if steps is not None:
        inputs.append(i64(*steps))
    check("Slice", inputs, {}, const_idx=(1, 2, 3, 4), opset=13)


def test_slice_opset9_attributes():
    check("Slice", [rand(4, 5, 6)], {"starts": [1, -4], "ends": [3, 100], "axes": [0, 2]}, opset=9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-9, 9), st.integers(-9, 9), st.sampled_from([-3, -2, -1, 1, 2, 3])),
                min_size=3, max_size=3))
def test_slice_follows_numpy(params):
    x = rand(4, 5, 6)
    starts, ends, steps = (i64(*[p[k] for p in params]) for k in range(3))
    (got,) = ours("Slice", [x, starts, ends, i64(0, 1, 2), steps], {}, const_idx=(1, 2, 3, 4))
    # numpy's slice semantics match ONNX's for starts and ends inside [-dim, dim]
    want = x[tuple(slice(int(s), int(e), int(t)) for s, e, t in params)]
    if any((t < 0 and e < -d) for (s, e, t), d in zip(params, x.shape)):
        return  # numpy clamps a negative stop below -dim differently from "before index 0": skip
    np.testing.assert_array_equal(got, want)


def test_slice_errors():
    with pytest.raises(FormatError, match="step on axis 0 must not be 0"):
        R.infer_node("Slice", "s", [(3,), (1,), (1,), (1,), (1,)], {}, [None, i64(0), i64(2), i64(0), i64(0)])
    with pytest.raises(FormatError, match="repeats an axis"):
        R.infer_node("Slice", "s", [(3, 3), (2,), (2,), (2,)], {}, [None, i64(0, 0), i64(1, 1), i64(1, -1)])
    with pytest.raises(UnsupportedError, match=r"input 1 \('starts'\) must be a constant"):
        R.infer_node("Slice", "s", [(3,), (1,), (1,)], {}, [None, None, i64(2)])


# ---------------------------------------------------------------- Pad

PAD_CASES = [
    ((2, 3, 4, 4), (0, 0, 1, 2, 0, 0, 2, 1)),
    ((3, 5), (1, 2, 2, 1)),
    ((2, 3, 4), (0, 1, 3, 1, 0, 0)),
    ((1, 1, 3, 3), (0, 0, 0, 0, 0, 0, 0, 0)),
    ((5, 6), (-1, 0, 2, 0)),  # negative pads crop first, then the mode reads the cropped input
    ((5, 6), (1, -1, -2, 2)),
]


@pytest.mark.parametrize("shape,pads", PAD_CASES)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_matches_onnxruntime(shape, pads, mode):
    check("Pad", [rand(*shape), i64(*pads)], {"mode": mode}, const_idx=(1,))


def test_pad_constant_value_axes_and_crop():
    x = rand(3, 4, 5)
    check("Pad", [x, i64(1, 2, 0, 1), f32(-7.5), i64(0, 2)], {}, const_idx=(1, 2, 3))
    check("Pad", [x, i64(-1, 2, 0, 0, -2, 1)], {}, const_idx=(1,))  # negative pads crop
    check("Pad", [x, i64(0, 1, 1, 0, 2, 0), f32(3.0)], {}, const_idx=(1,))  # value given at run time


def test_pad_opset2_attributes():
    check("Pad", [rand(2, 3)], {"pads": [1, 0, 2, 1], "value": 1.5}, opset=10)
    check("Pad", [rand(2, 3)], {"pads": [1, 1, 1, 1], "mode": "edge"}, opset=10)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=3, max_size=3),
       st.sampled_from(["constant", "reflect", "edge"]))
def test_pad_follows_numpy(pads, mode):
    x = rand(4, 5, 6)
    flat = i64(*[p[0] for p in pads], *[p[1] for p in pads])
    (got,) = ours("Pad", [x, flat], {"mode": mode}, const_idx=(1,))
    np.testing.assert_array_equal(got, np.pad(x, pads, mode=mode))


@pytest.mark.parametrize("shape,pads,attrs,err,msg", [
    ((3, 4), (3, 0, 0, 0), {"mode": "reflect"}, FormatError, "needs pads < dimension 0"),
    ((3, 4), (1, 0, 0), {}, FormatError, "must hold 2 x 2 values"),
    ((3, 4), (-4, 0, 0, 0), {}, FormatError, "crop more than"),
    ((3, 4), (1, 0, 0, 0), {"mode": "mirror"}, FormatError, "'mode' must be one of"),
    ((3, 4), (-1, 0, 2, 0), {"mode": "reflect"}, FormatError, r"after cropping: 2\), found -1 and 2"),
    ((3, 4), (0, 5, 0, 0), {"mode": "wrap"}, FormatError, "needs pads <= dimension 1"),
    ((0, 4), (1, 0, 0, 0), {"mode": "edge"}, FormatError, "cannot pad axis 0 of an empty input"),
])
def test_pad_errors(shape, pads, attrs, err, msg):
    with pytest.raises(err, match=rf"op 'Pad' \(node 'p'\): .*{msg}"):
        R.infer_node("Pad", "p", [shape, (len(pads),)], attrs, [None, i64(*pads)])


# ---------------------------------------------------------------- Squeeze / Unsqueeze

@pytest.mark.parametrize("shape,axes", [((1, 3, 1, 2), (0, 2)), ((1, 3, 1, 2), None), ((4, 1), (-1,)),
                                        ((1,), (0,)), ((2, 3), None)])
def test_squeeze_matches_onnxruntime(shape, axes):
    x = rand(*shape)
    check("Squeeze", [x] + ([] if axes is None else [i64(*axes)]), {}, const_idx=(1,), opset=13)
    check("Squeeze", [x], {} if axes is None else {"axes": list(axes)}, opset=11)


@pytest.mark.parametrize("shape,axes", [((3, 2), (0,)), ((3, 2), (1, -1)), ((), (0,)), ((2, 3), (0, 3, 1)),
                                        ((4,), (-2,))])
def test_unsqueeze_matches_onnxruntime(shape, axes):
    x = rand(*shape)
    check("Unsqueeze", [x, i64(*axes)], {}, const_idx=(1,), opset=13)
    check("Unsqueeze", [x], {"axes": list(axes)}, opset=11)


def test_squeeze_unsqueeze_errors():
    with pytest.raises(FormatError, match=r"cannot squeeze axis 1 of \(1, 3\): its size is 3"):
        R.infer_node("Squeeze", "sq", [(1, 3), (1,)], {}, [None, i64(1)])
    with pytest.raises(FormatError, match="repeats an axis"):
        R.infer_node("Unsqueeze", "us", [(3,), (2,)], {}, [None, i64(0, -3)])
    with pytest.raises(FormatError, match="'axes' is required"):
        R.infer_node("Unsqueeze", "us", [(3,)], {}, [None])


# ---------------------------------------------------------------- Gather

@pytest.mark.parametrize("shape,indices,axis", [
    ((5, 4), np.array([0, 4, -1, 2], np.int64), 0),
    ((5, 4), np.array(3, np.int64), 1),
    ((2, 5, 3), np.array([[1, -2], [0, 4]], np.int64), 1),
    ((2, 3, 4), np.array([-1], np.int32), -1),
    ((3,), np.array([], np.int64), 0),
])
def test_gather_matches_onnxruntime(shape, indices, axis):
    check("Gather", [rand(*shape), indices], {"axis": axis}, const_idx=(1,), opset=13)


def test_gather_errors():
    with pytest.raises(FormatError, match=r"indices \[0, 5\] out of range \[-5, 4\] for axis 0"):
        R.infer_node("Gather", "g", [(5, 2), (2,)], {}, [None, i64(0, 5)])
    with pytest.raises(UnsupportedError, match=r"input 1 \('indices'\) must be a constant"):
        R.infer_node("Gather", "g", [(5, 2), (2,)], {}, [None, None])


def test_gather_runs_twice_with_the_same_constant():
    x, idx = rand(4, 3), i64(3, -4)
    a = ours("Gather", [x, idx], {}, const_idx=(1,))[0]
    b = ours("Gather", [x * 2, idx], {}, const_idx=(1,))[0]
    np.testing.assert_array_equal(b, 2 * a)


# ---------------------------------------------------------------- Cast

CAST_CASES = [
    (1, TensorProto.FLOAT), (7, TensorProto.INT64), (6, TensorProto.INT32), (10, TensorProto.FLOAT16),
    (9, TensorProto.BOOL), (3, TensorProto.INT8), (11, TensorProto.DOUBLE),
]


@pytest.mark.parametrize("to,out_type", CAST_CASES)
def test_cast_from_float32_matches_onnxruntime(to, out_type):
    x = np.array([-3.7, -1.5, -0.5, -0.0, 0.0, 0.4, 1.5, 2.5, 99.9, 1e-3, 65519.0], np.float32)
    if to == 3:
        x = np.clip(x, -100, 100)
    check("Cast", [x], {"to": to}, out_type=out_type, rtol=0, atol=0)


def test_cast_to_float32_from_constants():
    check("Cast", [np.array([[1, -2], [3, 40000]], np.int64)], {"to": 1}, const_idx=(0,))
    check("Cast", [np.array([0.1, 2.5], np.float16)], {"to": 1})


def test_cast_errors():
    with pytest.raises(UnsupportedError, match="cast to ONNX element type 8 is not supported"):
        R.infer_node("Cast", "c", [(3,)], {"to": 8}, [None])
    with pytest.raises(FormatError, match="'to' is required"):
        R.infer_node("Cast", "c", [(3,)], {}, [None])


# ---------------------------------------------------------------- ReduceMean, Pow, Sqrt, Erf

@pytest.mark.parametrize("shape,axes,keepdims", [
    ((2, 3, 4), (-1,), 1), ((2, 3, 4), (-1,), 0), ((2, 3, 4), (0, 2), 1), ((2, 3, 4), (1,), 0),
    ((2, 3, 4), None, 1), ((2, 3, 4), None, 0), ((5,), (0,), 0), ((2, 3, 4, 5), (2, 3), 1),
])
def test_reduce_mean_matches_onnxruntime(shape, axes, keepdims):
    x = rand(*shape)
    attrs = {"keepdims": keepdims}
    check("ReduceMean", [x], attrs if axes is None else {**attrs, "axes": list(axes)}, opset=13)
    check("ReduceMean", [x] + ([] if axes is None else [i64(*axes)]), attrs, const_idx=(1,), opset=18)


def test_reduce_mean_noop_with_empty_axes():
    x = rand(2, 3)
    got = check("ReduceMean", [x], {"noop_with_empty_axes": 1}, opset=18)[0]
    np.testing.assert_array_equal(got, x)


def test_reduce_mean_errors():
    with pytest.raises(FormatError, match="repeat an axis"):
        R.infer_node("ReduceMean", "r", [(2, 3)], {"axes": [1, -1]}, [None])
    with pytest.raises(UnsupportedError, match=r"input 1 \('axes'\) must be a constant"):
        R.infer_node("ReduceMean", "r", [(2, 3), (1,)], {}, [None, None])


@pytest.mark.parametrize("exponent", [f32(2.0), f32(3.0), f32(0.5), f32(-1.0), i64(2), np.array(3, np.int32)])
def test_pow_scalar_exponents_match_onnxruntime(exponent):
    x = np.abs(rand(3, 4)) + np.float32(0.1)
    check("Pow", [x, exponent], {}, const_idx=(1,))
    check("Pow", [-x, exponent], {}, const_idx=(1,)) if exponent.dtype.kind in "iu" or exponent.item() in (2, 3) \
        else None


@pytest.mark.parametrize("sa,sb", [((2, 3, 4), (4,)), ((3, 1), (1, 5)), ((4,), (2, 4))])
def test_pow_broadcasts_like_onnxruntime(sa, sb):
    x = np.abs(rand(*sa)) + np.float32(0.5)
    check("Pow", [x, rand(*sb, scale=1.0)], {})


def test_sqrt_and_erf_match_onnxruntime():
    x = np.concatenate([rand(50, scale=3.0), f32(-0.0, 0.0, 1e-30, 1e30, 6.0, -6.0, 30.0)])
    check("Erf", [x], {}, atol=1e-6)
    check("Sqrt", [np.abs(x)], {})
    got = ours("Sqrt", [f32(-1.0, 4.0)], {})[0]
    assert np.isnan(got[0]) and got[1] == 2.0


# ---------------------------------------------------------------- LayerNormalization, BatchNormalization

@pytest.mark.parametrize("shape,axis,scale_shape,with_bias", [
    ((2, 5, 8), -1, (8,), True), ((2, 5, 8), -1, (8,), False), ((2, 3, 4), 1, (3, 4), True),
    ((3, 6), 0, (3, 6), True), ((2, 3, 4), -2, (1, 4), True), ((4, 1), -1, (1,), True),
])
def test_layer_norm_matches_onnxruntime(shape, axis, scale_shape, with_bias):
    x = rand(*shape, scale=3.0) + np.float32(5.0)  # a mean far from 0
    inner = shape[axis:] if axis >= 0 else shape[len(shape) + axis:]
    inputs = [x, rand(*scale_shape)] + ([rand(*inner)] if with_bias else [])
    check("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}, const_idx=(1, 2), n_out=3, opset=17,
          rtol=1e-4, atol=1e-4)


def test_layer_norm_of_a_constant_row_is_the_bias():
    x = np.full((2, 6), 7.0, np.float32)
    (got, mean, inv) = ours("LayerNormalization", [x, rand(6), f32(*range(6))], {}, const_idx=(1, 2), n_out=3)
    np.testing.assert_allclose(got, np.tile(np.arange(6, dtype=np.float32), (2, 1)))
    np.testing.assert_array_equal(mean.reshape(-1), [7.0, 7.0])
    np.testing.assert_allclose(inv.reshape(-1), 1 / np.sqrt(1e-5), rtol=1e-6)


def test_layer_norm_errors():
    with pytest.raises(FormatError, match=r"input 1 \('Scale'\) of shape \(5,\) does not broadcast"):
        R.infer_node("LayerNormalization", "ln", [(2, 4), (5,)], {}, [None, None])
    with pytest.raises(FormatError, match="'axis' = 2 is out of range"):
        R.infer_node("LayerNormalization", "ln", [(2, 4), (4,)], {"axis": 2}, [None, None])


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (4, 3), (2, 3, 7)])
def test_batch_norm_matches_onnxruntime(shape):
    c = shape[1]
    inputs = [rand(*shape), rand(c), rand(c), rand(c), np.abs(rand(c)) + np.float32(0.1)]
    check("BatchNormalization", inputs, {"epsilon": 1e-3}, const_idx=(1, 2, 3, 4), opset=15)


def test_batch_norm_errors():
    with pytest.raises(UnsupportedError, match="training_mode = 1"):
        R.infer_node("BatchNormalization", "bn", [(2, 3)] + [(3,)] * 4, {"training_mode": 1}, [None] * 5)
    with pytest.raises(FormatError, match=r"input 3 \('input_mean'\) must have shape \(3,\)"):
        R.infer_node("BatchNormalization", "bn", [(2, 3), (3,), (3,), (4,), (3,)], {}, [None] * 5)


# ---------------------------------------------------------------- Softmax on any axis, MatMul of activations

@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_softmax_any_axis(axis):
    check("Softmax", [rand(2, 3, 4, 5, scale=4.0)], {"axis": axis})


def _matmul_registered():
    layers = pytest.importorskip("edgepack.runtime.layers")
    for op in layers.OPS:
        R.register(op)


@pytest.mark.parametrize("sa,sb", [((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (3, 4, 5)), ((4,), (2, 4, 3)),
                                   ((2, 3, 4), (4,)), ((3, 4), (4, 5)), ((1, 2, 5, 8), (1, 2, 8, 5))])
def test_batched_matmul_of_activations(sa, sb):
    _matmul_registered()
    check("MatMul", [rand(*sa), rand(*sb)], {}, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- in place

INPLACE_CASES = [
    ("Squeeze", [rand(1, 3, 1), i64(0)], {}, (1,)), ("Unsqueeze", [rand(3, 2), i64(1)], {}, (1,)),
    ("Cast", [rand(5) * 10], {"to": 7}, ()), ("Pow", [rand(4, 3), f32(3.0)], {}, (1,)),
    ("Pow", [rand(4, 3), rand(4, 3)], {}, ()), ("Sqrt", [np.abs(rand(7))], {}, ()), ("Erf", [rand(6)], {}, ()),
    ("LayerNormalization", [rand(3, 8), rand(8), rand(8)], {}, (1, 2)),
    ("BatchNormalization", [rand(2, 3, 2), rand(3), rand(3), rand(3), np.abs(rand(3))], {}, (1, 2, 3, 4)),
]


@pytest.mark.parametrize("op,inputs,attrs,const_idx", INPLACE_CASES, ids=[c[0] for c in INPLACE_CASES])
def test_inplace_equals_out_of_place(op, inputs, attrs, const_idx):
    want = ours(op, inputs, attrs, const_idx)[0]
    got = ours(op, inputs, attrs, const_idx, inplace=0)[0]
    np.testing.assert_array_equal(got, want)


def test_registered_with_the_runtime():
    R.register_all()
    for op in ("ConvTranspose", "Resize", "Split", "Slice", "Pad", "Squeeze", "Unsqueeze", "Gather", "Cast",
               "ReduceMean", "Pow", "Sqrt", "Erf", "LayerNormalization", "BatchNormalization"):
        assert op in R.REGISTRY
    flagged = {name for name, d in R.REGISTRY.items() if d.inplace_ok}
    assert not flagged & {"ConvTranspose", "Resize", "Split", "Slice", "Pad", "Gather", "ReduceMean"}
