"""1-D convolution and pooling (x (N, C, W)): Conv run as 2-D with H = 1 on every held form of its weight (compact
sparse / codebook / int8 / dense, csr, streamed), ConvTranspose, MaxPool, AveragePool, GlobalAveragePool and
GlobalMaxPool on rank 3, against onnxruntime; shape-inference errors for other ranks; and the openWakeWord models
that showed the gap (melspectrogram: a 1-D strided STFT Conv, Log, ReduceMax; embedding: Max), packed at 8 bits, each
against onnxruntime on its unpacked form.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgepack import runtime
from edgepack.packer.onnx_io import graph_to_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.unpack import packed_to_graph
from edgepack.runtime.errors import FormatError, InputError, UnsupportedError
from edgepack.runtime.layers import conv_geometry, infer_conv
from edgepack.runtime.ops import registry as R
from edgepack.runtime.ops.conv import conv, conv_output_shape, conv_scratch_bytes, geometry, prepare_conv
from edgepack.runtime.weights import DenseWeight, SparseCodebookWeight

sys.path.insert(0, str(Path(__file__).parent))
from realmodels.corpus import fetch  # noqa: E402
from test_conv import KINDS, check_close, make_weight, ref_conv  # noqa: E402

R.register_all()
for _op in runtime.layers.OPS:  # Conv's shape inference (the model loader registers these)
    R.register(_op)


def _session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    data = model if isinstance(model, bytes) else str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _model(nodes, inputs, outputs, tensors, opset=17):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()]
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def ort_conv(x, w, bias, attrs):
    node = helper.make_node("Conv", ["x", "w"] + (["b"] if bias is not None else []), ["y"], **attrs)
    tensors = {"w": w} if bias is None else {"w": w, "b": bias}
    m = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], tensors)
    return _session(m).run(None, {"x": x})[0]


# (x shape, weight shape, attrs): audio-style strided STFT, padded, dilated, grouped, depthwise, kernel 1, SAME_*
CASES_1D = [
    ((1, 1, 1280), (9, 1, 512), {"strides": [160]}),  # openWakeWord's STFT, fewer bins
    ((2, 3, 20), (4, 3, 5), {}),
    ((2, 3, 20), (4, 3, 5), {"pads": [2, 1]}),
    ((2, 4, 17), (6, 2, 3), {"strides": [2], "pads": [1, 2], "dilations": [2], "group": 2}),
    ((2, 4, 13), (8, 1, 3), {"group": 4, "pads": [1, 1]}),  # depthwise, channel multiplier 2
    ((1, 3, 9), (5, 3, 1), {}),  # kernel 1 (pointwise, audio models): the im2col-free path
    ((2, 3, 9), (5, 3, 1), {"strides": [2]}),
    ((1, 2, 11), (3, 2, 4), {"auto_pad": "SAME_UPPER", "strides": [2]}),
    ((1, 2, 11), (3, 2, 4), {"auto_pad": "SAME_LOWER"}),
    ((2, 2, 8), (3, 2, 3), {"auto_pad": "VALID", "strides": [3], "kernel_shape": [3]}),
    ((1, 2, 4), (3, 2, 4), {}),  # the kernel covers the input: one output position
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(len(CASES_1D)))
def test_conv1d_every_weight_kind_matches_onnxruntime(kind, case):
    x_shape, w_shape, attrs = CASES_1D[case]
    rng = np.random.default_rng([case, KINDS.index(kind)])
    w = make_weight(kind, w_shape, rng, density=0.5, fillers=0.2, wide_scales=False)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    expect = ort_conv(x, w.to_dense().astype(np.float32), bias, attrs)
    assert conv_output_shape(x_shape, w_shape, attrs) == expect.shape
    prepared = prepare_conv(w, attrs.get("group", 1))
    for parallel in (False, True):
        out = np.full(expect.shape, np.nan, np.float32)
        scratch = np.empty(conv_scratch_bytes(x_shape, w_shape, attrs, prepared, parallel), np.uint8)
        conv(x, prepared, bias, attrs, out, scratch, parallel)
        check_close(out, expect.astype(np.float64))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), batch=st.integers(1, 3), cin_g=st.integers(1, 3), group=st.integers(1, 3),
       per_group=st.integers(1, 3), w=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 5),
       d=st.integers(1, 3), pads=st.lists(st.integers(0, 3), min_size=2, max_size=2), density=st.floats(0, 1),
       seed=st.integers(0, 2**31))
def test_random_conv1d_match_numpy(kind, batch, cin_g, group, per_group, w, k, s, d, pads, density, seed):
    if w + sum(pads) < (k - 1) * d + 1:
        return  # no output position: an error (test_conv_rank_errors_name_node_and_shapes)
    rng = np.random.default_rng(seed)
    weight = make_weight(kind, (group * per_group, cin_g, k), rng, density=density, fillers=0.1)
    attrs = {"strides": [s], "pads": pads, "dilations": [d], "group": group}
    x = rng.standard_normal((batch, cin_g * group, w)).astype(np.float32)
    bias = rng.standard_normal(group * per_group).astype(np.float32)
    prepared = prepare_conv(weight, group)
    out = np.full(conv_output_shape(x.shape, weight.shape, attrs), np.nan, np.float32)
    conv(x, prepared, bias, attrs, out)
    want = ref_conv(x[:, :, None, :], weight.to_dense()[:, :, None, :], bias, (1, s), (0, pads[0], 0, pads[1]),
                    (1, d), group)[:, :, 0, :]
    check_close(out, want)


@pytest.mark.parametrize("case", range(len(CASES_1D)))
def test_conv1d_is_the_2d_conv_with_one_row(case):
    """One geometry: a 1-D case gives bit for bit the 2-D convolution of the same data with H = kh = 1, and the
    streamed kernels' vector is that geometry's."""
    x_shape, w_shape, attrs = CASES_1D[case]
    rng = np.random.default_rng(case)
    w = rng.standard_normal(w_shape).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    two = {"strides": [1] + attrs.get("strides", [1]), "dilations": [1] + attrs.get("dilations", [1]),
           "group": attrs.get("group", 1)}
    if "pads" in attrs:
        two["pads"] = [0, attrs["pads"][0], 0, attrs["pads"][1]]
    if "auto_pad" in attrs:
        two["auto_pad"] = attrs["auto_pad"]
    x4, w4 = x[:, :, None, :], w[:, :, None, :]
    g1, g2 = geometry(x_shape, w_shape, attrs), geometry(x4.shape, w4.shape, two)
    assert {k: v for k, v in g1.items() if k != "out_shape"} == {k: v for k, v in g2.items() if k != "out_shape"}
    assert g2["out_shape"] == g1["out_shape"][:2] + (1,) + g1["out_shape"][2:]
    np.testing.assert_array_equal(conv_geometry(x_shape, w_shape, attrs), conv_geometry(x4.shape, w4.shape, two))
    sparse = make_weight("sparse", w_shape, rng, density=0.5)
    sparse4 = SparseCodebookWeight(w4.shape, sparse.codebook, sparse.indptr, sparse.columns, sparse.codes,
                                   sparse.row_scales)
    for w1, w2 in ((DenseWeight(w), DenseWeight(np.ascontiguousarray(w4))), (sparse, sparse4)):
        p1, p2 = prepare_conv(w1, two["group"]), prepare_conv(w2, two["group"])
        o1 = np.empty(g1["out_shape"], np.float32)
        o2 = np.empty(g2["out_shape"], np.float32)
        conv(x, p1, None, attrs, o1)
        conv(np.ascontiguousarray(x4), p2, None, two, o2)
        np.testing.assert_array_equal(o1, o2[:, :, 0, :])


def test_conv1d_with_a_weight_computed_at_run_time():
    """The registry's runner (runtime/layers.py run_dynamic: a weight that is not a constant)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 4, 15)).astype(np.float32)
    w = rng.standard_normal((6, 2, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    attrs = {"strides": [2], "pads": [1, 0], "group": 2}
    shape = R.infer_node("Conv", "c", [x.shape, w.shape, b.shape], attrs, [None, None, None])[0]
    out = np.full(shape, np.nan, np.float32)
    R.get("Conv", "c").run([x, w, b], attrs, [out])
    check_close(out, ort_conv(x, w, b, attrs).astype(np.float64))


def test_conv_rank_errors_name_node_and_shapes():
    with pytest.raises(UnsupportedError, match=r"op 'Conv' \(node 'c3d'\).*only 1-D and 2-D convolution"):
        R.infer_node("Conv", "c3d", [(1, 2, 4, 4, 4), (3, 2, 1, 1, 1)], {}, [None, None])
    with pytest.raises(FormatError, match=r"op 'Conv' \(node 'c'\).*x expected 3-D \(N, C, W\)"):
        R.infer_node("Conv", "c", [(1, 2, 4, 4), (3, 2, 1)], {}, [None, None])
    with pytest.raises(FormatError, match=r"x expected 4-D \(N, C, H, W\)"):
        infer_conv([(2, 8), (3, 2, 1, 1)], {}, [None, None])
    with pytest.raises(UnsupportedError, match="only 1-D and 2-D"):
        infer_conv([(2, 8), (3, 2)], {}, [None, None])
    with pytest.raises(UnsupportedError, match=r"'strides' expected 1 values \(1-D conv\)"):
        conv_output_shape((1, 2, 9), (3, 2, 3), {"strides": [1, 1]})
    with pytest.raises(UnsupportedError, match=r"'pads' expected 2 values \(1-D conv\)"):
        conv_output_shape((1, 2, 9), (3, 2, 3), {"pads": [0, 0, 0, 0]})
    with pytest.raises(InputError, match=r"kernel_shape \[3, 3\] does not match"):
        conv_output_shape((1, 2, 9), (3, 2, 3), {"kernel_shape": [3, 3]})
    with pytest.raises(InputError, match=r"input 2 with pads \[0, 0\] is smaller than the dilated kernel 3"):
        conv_output_shape((1, 2, 2), (3, 2, 3), {})
    with pytest.raises(InputError, match="x expected float32"):
        conv(np.zeros((1, 2, 9, 1, 1), np.float32), prepare_conv(DenseWeight(np.zeros((3, 2, 3), np.float32)), 1),
             None, {}, np.zeros((1, 3, 7), np.float32))


# ------------------------------------------------------------------ packed 1-D graph in every held mode

def _conv1d_graph(seed=4):
    """A small audio front end: a strided STFT-like Conv, kernel-1 and depthwise padded Convs, dilated grouped Conv,
    the 1-D pools, ConvTranspose 1-D, and the rank-3 global pools, two outputs."""
    rng = np.random.default_rng(seed)
    t = {"stft": (rng.standard_normal((24, 1, 64)) / 8).astype(np.float32),
         "pw": (rng.standard_normal((32, 24, 1)) / 5).astype(np.float32), "pw.b": rng.standard_normal(32) * 0.1,
         "dw": (rng.standard_normal((32, 1, 5)) / 2).astype(np.float32),
         "gc": (rng.standard_normal((16, 8, 3)) / 5).astype(np.float32), "gc.b": rng.standard_normal(16) * 0.1,
         "ct": (rng.standard_normal((16, 4, 4)) / 4).astype(np.float32)}
    t = {k: np.asarray(v, np.float32) for k, v in t.items()}
    n = helper.make_node
    nodes = [n("Conv", ["x", "stft"], ["s"], name="stft", strides=[16], kernel_shape=[64]),
             n("Abs", ["s"], ["sa"], name="abs"),
             n("Conv", ["sa", "pw", "pw.b"], ["p"], name="pointwise"),
             n("Relu", ["p"], ["pr"], name="relu"),
             n("Conv", ["pr", "dw"], ["d"], name="depthwise", group=32, pads=[2, 2]),
             n("MaxPool", ["d"], ["mp"], name="maxpool", kernel_shape=[3], strides=[2], pads=[1, 1]),
             n("Conv", ["mp", "gc", "gc.b"], ["g"], name="grouped", group=4, dilations=[2], pads=[2, 1]),
             n("AveragePool", ["g"], ["ap"], name="avgpool", kernel_shape=[2], strides=[2]),
             n("ConvTranspose", ["ap", "ct"], ["up"], name="upsample", strides=[2], group=4),
             n("GlobalAveragePool", ["up"], ["gap"], name="gap"),
             n("GlobalMaxPool", ["g"], ["gmp"], name="gmp"),
             n("Flatten", ["gap"], ["y1"], name="flat1"),
             n("Flatten", ["gmp"], ["y2"], name="flat2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1, 800])],
                  [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None),
                   helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)], t)


@pytest.mark.parametrize("sparsity,bits", [(0.0, 8), (0.6, 5)])
def test_packed_1d_graph_in_every_mode_matches_onnxruntime(tmp_path, sparsity, bits):
    src = tmp_path / "audio.onnx"
    onnx.save(_conv1d_graph(), src)
    out = tmp_path / "audio.epk"
    pack(src, out, sparsity=sparsity, bits=bits)
    x = (np.random.default_rng(1).standard_normal((2, 1, 800)) * 3).astype(np.float32)
    sess = _session(graph_to_onnx(packed_to_graph(out)))
    ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    for mode in runtime.layers.MODES:
        got = runtime.load(out, layer_modes=mode).run({"x": x})
        for name, r in ref.items():
            assert got[name].shape == r.shape
            err = float(np.abs(got[name] - r).max()) / max(float(np.abs(r).max()), 1e-12)
            assert err <= 1e-4, f"mode {mode}, output {name}: relative error {err:.2e}"


# ------------------------------------------------------------------ pools on rank 3 against onnxruntime

@pytest.mark.parametrize("op,attrs", [
    ("MaxPool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
    ("MaxPool", {"kernel_shape": [2], "dilations": [2], "ceil_mode": 1}),
    ("AveragePool", {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "count_include_pad": 1}),
    ("AveragePool", {"kernel_shape": [4], "auto_pad": "SAME_LOWER"}),
    ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}),
])
def test_1d_pools_match_onnxruntime(op, attrs):
    x = np.random.default_rng(3).standard_normal((2, 3, 11)).astype(np.float32)
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    m = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], {}, opset=19)
    expect = _session(m).run(None, {"x": x})[0]
    shape = R.infer_node(op, "p", [x.shape], attrs, [None])[0]
    assert shape == expect.shape
    out = np.full(shape, np.nan, np.float32)
    R.get(op, "p").run([x], attrs, [out])
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 1, 1), (1, 1, 2, 3, 2)])
def test_global_max_pool_any_rank(shape):
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    out_shape = R.infer_node("GlobalMaxPool", "g", [shape], {}, [None])[0]
    assert out_shape == shape[:2] + (1,) * (len(shape) - 2)
    out = np.full(out_shape, np.nan, np.float32)
    R.get("GlobalMaxPool", "g").run([x], {}, [out])
    np.testing.assert_array_equal(out.reshape(shape[:2]), x.reshape(shape[0], shape[1], -1).max(axis=2))
    with pytest.raises(FormatError, match=r"op 'GlobalMaxPool' \(node 'g'\).*\(N, C, spatial...\)"):
        R.infer_node("GlobalMaxPool", "g", [(2, 3)], {}, [None])


# ------------------------------------------------------------------ the openWakeWord models

def _speech_like(n: int, seed: int = 0) -> np.ndarray:
    """16 kHz int16-range samples: a voiced 180 Hz tone with harmonics and a syllable envelope, plus noise, as raw
    int16-scaled floats (what openWakeWord feeds its melspectrogram)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000.0
    voiced = sum(np.sin(2 * np.pi * 180 * k * t + k) / k for k in range(1, 8))
    s = 6000 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) + rng.normal(0, 200, n)
    return np.clip(np.round(s), -32768, 32767).astype(np.float32)[None]


def _pack_and_compare(tmp_path, name, shape, feeds):
    """Pack at --sparsity 0 --bits 8; the runtime in its chosen modes and in streamed mode against onnxruntime on
    the unpacked (dense) model, relative to each output's scale."""
    out = tmp_path / f"{name}.epk"
    pack(fetch(name), out, sparsity=0.0, bits=8, input_shapes=[shape])
    sess = _session(graph_to_onnx(packed_to_graph(out)))
    names = [o.name for o in sess.get_outputs()]
    ref = dict(zip(names, sess.run(None, feeds)))
    errs = {}
    for mode in (None, "streamed"):
        got = runtime.load(out, layer_modes=mode).run(feeds)
        for k, r in ref.items():
            assert got[k].shape == r.shape
            errs[(mode, k)] = float(np.abs(got[k] - r).max()) / max(float(np.abs(r).max()), 1e-12)
    assert max(errs.values()) <= 1e-4, errs
    return ref


def test_oww_melspectrogram_packed_matches_onnxruntime(tmp_path):
    """The STFT is a 1-D Conv (257 x 1 x 512, stride 160), then Pow, MatMul, Clip, Log, ReduceMax over all axes to a
    0-d scalar, Sub of two 0-d tensors (scalar constants must stay 0-d), Clip with a computed minimum."""
    ref = _pack_and_compare(tmp_path, "oww_melspectrogram", "input=1,1280", {"input": _speech_like(1280)})
    assert ref["output"].shape == (1, 1, 5, 32)


def test_oww_embedding_packed_matches_onnxruntime(tmp_path):
    """Conv 1x3 / 3x1, LeakyRelu and Max(x, 0-ish constant) 19 times; input: openWakeWord's melspectrogram of
    speech-like audio, scaled as openWakeWord does (x / 10 + 2)."""
    mel = _session(fetch("oww_melspectrogram")).run(None, {"input": _speech_like(76 * 160 + 352)})[0]
    x = (mel[0, 0, :76, :] / 10 + 2).astype(np.float32)[None, :, :, None]
    ref = _pack_and_compare(tmp_path, "oww_embedding", "input_1=1,76,32,1", {"input_1": x})
    assert ref["conv2d_19"].shape == (1, 1, 1, 96)
