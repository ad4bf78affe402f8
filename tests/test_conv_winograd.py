"""Winograd F(2x2, 3x3) convolution (runtime/ops/conv_winograd.py) against independent references: the float64 numpy
convolution of tests/test_conv.py and onnxruntime. Partial tiles (odd output sizes), 1-pixel images, pads 0 / 1 /
asymmetric / larger than a tile, auto_pad, batch > 1, 1 and 3 channels, fused activations and epilogue chains, the
parallel build, scratch bounds, errors, a real corpus layer, and the planner's choice (which shapes take it, the
bytes it counts)."""
import glob
import os

import numpy as np
import pytest
from onnx import helper

import zoo

from edgepack import runtime
from edgepack.packer.pipeline import pack
from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops import conv_winograd as W
from edgepack.runtime.ops.elementwise import ACT_CLIP, ACT_LEAKY
from edgepack.runtime.weights import DenseWeight
from test_conv import check_close, onnx_pads, ort_conv, ref_conv

CASES = [  # (x shape, cout, attributes)
    ((1, 3, 5, 7), 4, {"pads": [1, 1, 1, 1]}),  # odd output sizes: partial tiles in both directions
    ((1, 2, 1, 1), 3, {"pads": [1, 1, 1, 1]}),  # a 1-pixel image
    ((1, 5, 3, 3), 6, {}),  # no padding, one output pixel
    ((1, 4, 6, 9), 5, {"pads": [0, 1, 2, 0]}),  # asymmetric
    ((2, 1, 8, 8), 1, {"pads": [1, 1, 1, 1]}),  # batch 2, one channel in and out
    ((1, 3, 11, 10), 8, {"pads": [3, 2, 0, 4]}),  # pads wider than a tile
    ((1, 6, 9, 12), 7, {"auto_pad": "SAME_UPPER"}),
    ((1, 6, 10, 7), 7, {"auto_pad": "SAME_LOWER"}),
    ((3, 6, 9, 8), 5, {"auto_pad": "VALID"}),
    ((1, 16, 37, 41), 24, {"pads": [1, 1, 1, 1], "strides": [1, 1], "dilations": [1, 1], "group": 1}),
]


def _run(w, x, bias, attrs, parallel=False, act=None):
    prepared = W.prepare_winograd(DenseWeight(w))
    out = np.full(C.conv_output_shape(x.shape, w.shape, attrs), np.nan, np.float32)
    need = C.conv_scratch_bytes(x.shape, w.shape, attrs, prepared, parallel)
    arena = np.full(8 + need + 64, 0xA5, np.uint8)  # canaries around the scratch
    C.conv(x, prepared, bias, attrs, out, arena[8: 8 + need], parallel, act)
    assert np.all(arena[8 + need:] == 0xA5) and np.all(arena[:8] == 0xA5), "wrote outside the scratch"
    return out


def _ref(x, w, bias, attrs):
    return ref_conv(x, w, bias, (1, 1), onnx_pads(x.shape, w.shape, attrs))


def _data(x_shape, cout, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, x_shape[1], 3, 3)).astype(np.float32)
    return w, rng.standard_normal(x_shape).astype(np.float32), rng.standard_normal(cout).astype(np.float32)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_float64_numpy(case, parallel):
    x_shape, cout, attrs = CASES[case]
    w, x, bias = _data(x_shape, cout, case)
    check_close(_run(w, x, bias, attrs, parallel), _ref(x, w, bias, attrs))
    check_close(_run(w, x, None, attrs, parallel), _ref(x, w, None, attrs))


def test_serial_and_parallel_builds_give_the_same_bits():
    w, x, bias = _data((2, 12, 19, 23), 10, 1)
    np.testing.assert_array_equal(_run(w, x, bias, {"pads": [1, 1, 1, 1]}),
                                  _run(w, x, bias, {"pads": [1, 1, 1, 1]}, parallel=True))


@pytest.mark.parametrize("band_floats", [1, 16 * 30 * 40])
def test_bands_of_tile_rows(monkeypatch, band_floats):
    """Bands of one tile row each and of several (the last one shorter) give the one-band result."""
    w, x, bias = _data((2, 14, 21, 30), 16, 2)
    attrs = {"pads": [1, 1, 1, 1]}
    monkeypatch.setattr(W, "WINO_BAND_FLOATS", band_floats)
    g = C.geometry(x.shape, w.shape, attrs)
    brows = W.layout(g, False)[0]
    assert brows == 1 if band_floats == 1 else 1 < brows < W.tiles(g)[0]
    check_close(_run(w, x, bias, attrs), _ref(x, w, bias, attrs))


def test_fused_activation_and_epilogue_chain():
    """Clip and LeakyRelu fused, and an epilogue chain (SiLU: x * Sigmoid(x), then * 0.5 + 1), against numpy on
    the float64 convolution."""
    w, x, bias = _data((2, 8, 13, 15), 6, 3)
    attrs = {"pads": [1, 1, 1, 1]}
    ref = _ref(x, w, bias, attrs)
    check_close(_run(w, x, bias, attrs, act=(ACT_CLIP, -1.0, 2.0)), np.clip(ref, -1, 2))
    check_close(_run(w, x, bias, attrs, act=(ACT_LEAKY, 0.1, 0.0)), np.where(ref < 0, ref * 0.1, ref))
    steps = np.float32([[C.CH_SAVE, 0, 0, 0], [C.CH_SIGMOID, 0, 0, 0], [C.CH_MUL_SAVED, 0, 0, 0],
                        [C.CH_MUL, 0.5, 0, 0], [C.CH_ADD, 1, 0, 0]])
    chain = C.EpilogueChain(steps, ("sig", "mul", "scale", "shift"))
    for parallel in (False, True):
        got = _run(w, x, bias, attrs, parallel, act=chain)
        check_close(got, ref / (1 + np.exp(-ref)) * 0.5 + 1)


def test_matches_onnxruntime_on_corpus_shapes():
    """ddddocr's detector (96 -> 96 at 52x52) and YOLOv8n's (16 -> 16 at 80x80) layer shapes, against onnxruntime's
    own Conv: within the 1e-4 the runtime keeps to on the real models (measured ~1e-6)."""
    for cin, hw, cout in ((96, 52, 96), (16, 80, 16)):
        w, x, bias = _data((1, cin, hw, hw), cout, cin)
        expect = ort_conv(x, w, bias, {"pads": [1, 1, 1, 1]}).astype(np.float64)
        got = _run(w, x, bias, {"pads": [1, 1, 1, 1]})
        err = np.abs(got - expect).max() / np.abs(expect).max()
        assert err < 1e-5, err
        check_close(got, _ref(x, w, bias, {"pads": [1, 1, 1, 1]}))


def test_real_corpus_layer():
    """The 3x3 stride-1 weights of ddddocr's detector (from the corpus cache; skipped when it is not there), each on
    a random input of its channel count, against float64 numpy."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper
    files = glob.glob(os.path.expanduser("~/.cache/edgepack/realmodels/models/ddddocr_det/*.onnx"))
    if not files:
        pytest.skip("ddddocr_det is not in the corpus cache")
    m = onnx.load(files[0])
    inits = {t.name: t for t in m.graph.initializer}
    done = 0
    for n in m.graph.node:
        if n.op_type != "Conv" or n.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        if w.shape[2:] != (3, 3) or list(attrs.get("strides", [1, 1])) != [1, 1] or attrs.get("group", 1) != 1:
            continue
        rng = np.random.default_rng(done)
        x = np.abs(rng.standard_normal((1, w.shape[1], 26, 26))).astype(np.float32)  # post-ReLU-like inputs
        a = {"pads": list(attrs.get("pads", [0, 0, 0, 0]))}
        check_close(_run(w, x, None, a), _ref(x, w, None, a))
        done += 1
    assert done >= 10


def test_errors():
    w, x, bias = _data((1, 4, 8, 8), 4, 5)
    prepared = W.prepare_winograd(DenseWeight(w))
    out = np.empty((1, 4, 8, 8), np.float32)
    with pytest.raises(UnsupportedError, match="winograd"):
        W.prepare_winograd(DenseWeight(np.zeros((4, 4, 5, 5), np.float32)))
    with pytest.raises(UnsupportedError, match="winograd"):
        W.prepare_winograd(C.prepare_conv(DenseWeight(w), 1))  # not a weight
    with pytest.raises(UnsupportedError, match="Winograd"):
        C.conv(x, prepared, bias, {"strides": [2, 2], "pads": [1, 1, 1, 1]}, np.empty((1, 4, 4, 4), np.float32))
    with pytest.raises(UnsupportedError, match="Winograd"):
        C.conv(x, prepared, bias, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}, out)
    with pytest.raises(InputError, match="scratch too small"):
        C.conv(x, prepared, bias, {"pads": [1, 1, 1, 1]}, out, np.empty(16, np.uint8))
    with pytest.raises(InputError, match="channels"):
        C.conv(np.zeros((1, 5, 8, 8), np.float32), prepared, bias, {"pads": [1, 1, 1, 1]}, out)


def test_weight_transform():
    """U = G g G^T: the 16 values of each kernel, and a kernel that is one tap (the identity's centre) turns the
    convolution into the input itself (up to the transforms' rounding: halves and quarters summed in float32)."""
    g = np.zeros((1, 1, 3, 3), np.float32)
    g[0, 0, 1, 1] = 1.0
    u = W.prepare_winograd(DenseWeight(g)).arrays["u"]
    assert u.shape == (16, 1, 1) and u.dtype == np.float32
    G = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]])
    np.testing.assert_array_equal(u[:, 0, 0], (G @ g[0, 0].astype(np.float64) @ G.T).ravel().astype(np.float32))
    x = np.random.default_rng(0).standard_normal((1, 1, 7, 5)).astype(np.float32)
    np.testing.assert_allclose(_run(g, x, None, {"pads": [1, 1, 1, 1]}), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cin,cout,hw,pads,wino", [(48, 48, 24, [1, 1, 1, 1], True),
                                                    (3, 32, 48, [0, 0, 0, 0], False)])
def test_planner_holds_dense_3x3_in_winograd_form(tmp_path, cin, cout, hw, pads, wino):
    """The planner holds a dense 3x3 stride-1 layer in Winograd form when its cost model says it is faster (48 -> 48
    at 24x24: 0.31 ms against im2col's 0.51; 32 -> 32 at 40x40 is a tie with the blocked kernel) and not when it is
    not (3 input channels: the products are too thin); the form's bytes (16/9 of the dense weight) are what the
    memory plan counts, and the run equals the codebook-held (blocked kernel) one."""
    src, out = tmp_path / "one.onnx", tmp_path / "one.epk"
    zoo.save(zoo.conv_relu(cin, cout, hw, cin, pads=pads), src)
    pack(str(src), str(out), sparsity=0.0, bits=8)
    dense = runtime.load(str(out), layer_modes="dense", threads=1)
    layer = dense.layers["conv"]
    assert (layer.prepared.kind == "winograd") == wino
    if wino:
        assert layer.prepared.arrays["u"].nbytes == 16 * cout * cin * 4
        row = next(r for r in dense.plan.layers if r.name == "conv")
        assert 16 * cout * cin * 4 <= row.ram_bytes <= 16 * cout * cin * 4 + 8 * cout  # + the bias
        assert row.scratch_bytes >= C.conv_scratch_bytes((1, cin, hw, hw), (cout, cin, 3, 3), {"pads": pads},
                                                         layer.prepared)
    compact = runtime.load(str(out), layer_modes="compact", threads=1)
    x = np.random.default_rng(1).standard_normal((1, cin, hw, hw)).astype(np.float32)
    a, b = dense.run({"x": x})["z"], compact.run({"x": x})["z"]
    check_close(a, b.astype(np.float64))


@pytest.mark.parametrize("cin,cout,hw,pays", [(64, 64, 10, False), (64, 64, 11, True),
                                              (192, 192, 13, False), (96, 96, 13, True), (64, 256, (8, 22), True)])
def test_pays_on_enough_tiles_of_little_weight(cin, cout, hw, pays):
    """conv_winograd.pays: the planner offers the Winograd form from MIN_TILES output tiles (11x11: 36, the last
    row and column of tiles half used; 10x10: 25) with at most
    MAX_WEIGHT_BYTES_PER_TILE of transformed weight a tile (192 -> 192 at 13x13: 48 kB over 49 tiles, no; 96 -> 96
    there 12 kB, and ddddocr_common's 64 -> 256 at 8x22 24 kB, yes)."""
    h, w = (hw, hw) if isinstance(hw, int) else hw
    g = C.geometry((1, cin, h, w), (cout, cin, 3, 3), {"pads": [1, 1, 1, 1]})
    assert W.eligible(g)
    assert W.pays(g) == pays
