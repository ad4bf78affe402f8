"""The "cout" form of a dense Conv (runtime/ops/conv_cout.py: the weight held transposed in blocks of output
channels, a direct kernel vectorised over them) against independent references: the float64 numpy convolution of
tests/test_conv.py and onnxruntime. Strides 1 / 2 / 3, pads (none, symmetric, asymmetric, auto_pad), dilations,
1-D, batch 2, channel counts that leave a partial block (both block widths), planes that leave a partial tile of
positions, chunks of positions (with an epilogue chain across chunk borders), fused activations, read-only arrays,
scratch bounds, errors, and the planner's form (which shapes take it, the bytes it counts)."""
import numpy as np
import pytest

import zoo
from edgepack import runtime
from edgepack.packer.pipeline import pack
from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops import conv_cout as K
from edgepack.runtime.ops.elementwise import ACT_CLIP
from edgepack.runtime.weights import CodebookWeight, DenseWeight
from test_conv import check_close, ort_conv, ref_conv

CASES = [  # (x shape, cout, kernel (kh, kw), attributes)
    ((1, 16, 10, 10), 64, (3, 3), {"pads": [1, 1, 1, 1]}),  # one full wide block, 100 positions (25 tiles of 4)
    ((2, 13, 9, 11), 70, (3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # narrow blocks, 6 cut to 70 - 64
    ((1, 8, 7, 7), 5, (3, 3), {}),  # fewer channels than a block, 25 positions: a partial tile of 8
    ((1, 9, 12, 10), 33, (3, 3), {"strides": [2, 2], "pads": [0, 1, 2, 1], "dilations": [2, 2]}),
    ((1, 32, 5, 5), 130, (3, 3), {"pads": [1, 1, 1, 1]}),  # 130: 9 narrow blocks, the last 2 of 16
    ((1, 10, 11, 13), 120, (3, 3), {"strides": [3, 2], "pads": [2, 0, 1, 1]}),  # 120: wide blocks, the last with 8 zero lanes
    ((1, 7, 9, 8), 20, (5, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((2, 12, 6, 6), 24, (2, 4), {"auto_pad": "SAME_LOWER"}),
    ((1, 64, 1, 1), 16, (3, 3), {"pads": [1, 1, 1, 1]}),  # a 1-pixel image: one position, taps mostly padding
]


def _data(x_shape, cout, kernel, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, x_shape[1]) + tuple(kernel)).astype(np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    return w, x, rng.standard_normal(cout).astype(np.float32)


def _ref(x, w, bias, attrs):
    """ref_conv with the pads ONNX means (auto_pad resolved by conv.geometry, checked independently elsewhere)."""
    g = C.geometry(x.shape, w.shape, attrs)
    pb = (g["oh"] - 1) * g["sh"] + (g["kh"] - 1) * g["dh"] + 1 - g["h"] - g["pt"]
    pr = (g["ow"] - 1) * g["sw"] + (g["kw"] - 1) * g["dw"] + 1 - g["w"] - g["pl"]
    return ref_conv(x, w, bias, (g["sh"], g["sw"]), (g["pt"], g["pl"], max(0, pb), max(0, pr)), (g["dh"], g["dw"]))


def _run(w, x, bias, attrs, act=None, parallel=False):
    prepared = K.prepare_cout(DenseWeight(w))
    assert prepared.kind == "cout" and C.conv_path(x.shape, w.shape, attrs, "cout") == "cout"
    out = np.full(C.conv_output_shape(x.shape, w.shape, attrs), np.nan, np.float32)
    need = C.conv_scratch_bytes(x.shape, w.shape, attrs, prepared, parallel)
    arena = np.full(8 + need + 64, 0xA5, np.uint8)  # canaries around the scratch
    C.conv(x, prepared, bias, attrs, out, arena[8: 8 + need], parallel, act)
    assert (arena[:8] == 0xA5).all() and (arena[8 + need:] == 0xA5).all()
    return out


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy(case):
    x_shape, cout, kernel, attrs = case
    w, x, bias = _data(x_shape, cout, kernel)
    check_close(_run(w, x, bias, attrs), _ref(x, w, bias, attrs))
    check_close(_run(w, x, None, attrs), _ref(x, w, None, attrs))


def test_one_dimensional_conv():
    """A 1-D convolution (x (N, C, W)) runs as the 2-D one with H = 1."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 24, 5)).astype(np.float32)
    x = rng.standard_normal((2, 24, 37)).astype(np.float32)
    attrs = {"strides": [2], "pads": [2, 1]}
    ref = ref_conv(x[:, :, None, :], w[:, :, None, :], None, (1, 2), (0, 2, 0, 1))[:, :, 0, :]
    check_close(_run(w, x, None, attrs), ref)


def test_activation_chain_and_chunks(monkeypatch):
    """A fused Clip, and an epilogue chain (SiLU, then * 0.5 + 1) run chunk by chunk: with CHUNK_FLOATS small the
    plane goes in chunks of 8 positions (a chunk's last tile partial: 45 positions), every chunk's chain on its own
    values; the same values as in one chunk. The parallel flag runs the same kernel."""
    w, x, bias = _data((1, 12, 9, 10), 72, (3, 3), seed=4)
    attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
    ref = _ref(x, w, bias, attrs)
    check_close(_run(w, x, bias, attrs, act=(ACT_CLIP, -1.0, 2.0)), np.clip(ref, -1, 2))
    steps = np.float32([[C.CH_SILU, 0, 0, 0], [C.CH_MUL, 0.5, 0, 0], [C.CH_ADD, 1, 0, 0]])
    chain = C.EpilogueChain(steps, ("sig", "mul", "scale", "shift"))
    whole = _run(w, x, bias, attrs, act=chain)
    check_close(whole, ref / (1 + np.exp(-ref)) * 0.5 + 1)
    monkeypatch.setattr(K, "CHUNK_FLOATS", 72 * 8)
    assert K._chunk(C.geometry(x.shape, w.shape, attrs)) == 8
    np.testing.assert_array_equal(_run(w, x, bias, attrs, act=chain), whole)
    np.testing.assert_array_equal(_run(w, x, bias, attrs, act=chain, parallel=True), whole)


def test_matches_onnxruntime_on_corpus_shapes():
    """YOLOv8n's (nudenet) stride-2 128 -> 256 at 20x20 and 16 -> 32 at 24x24 (a narrow-block shape, reduced
    plane) against onnxruntime's own Conv, within the runtime's 1e-4."""
    for cin, hw, cout in ((128, 20, 256), (16, 24, 32)):
        w, x, bias = _data((1, cin, hw, hw), cout, (3, 3))
        attrs = {"strides": [2, 2], "pads": [1, 1, 1, 1]}
        want = ort_conv(x, w, bias, attrs)
        got = _run(w, x, bias, attrs)
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_read_only_weight_and_input():
    w, x, bias = _data((1, 16, 6, 7), 20, (3, 3), seed=5)
    prepared = K.prepare_cout(DenseWeight(w))
    prepared.arrays["wt"].flags.writeable = False
    x.flags.writeable = False
    out = np.empty(C.conv_output_shape(x.shape, w.shape, {}), np.float32)
    C.conv(x, prepared, bias, {}, out)
    check_close(out, _ref(x, w, bias, {}))


def test_held_form_layout_and_bytes():
    """wt (blocks, cols, CB): block k's channels k * CB + j at column j, zeros past cout; weight_bytes is its size."""
    for cout, cb in ((64, 64), (128, 64), (120, 64), (136, 16), (70, 16), (32, 16), (5, 16)):
        assert K.block_of(cout) == cb
        w = np.random.default_rng(cout).standard_normal((cout, 3, 3, 3)).astype(np.float32)
        wt = K.prepare_cout(DenseWeight(w)).arrays["wt"]
        nblk = -(-cout // cb)
        assert wt.shape == (nblk, 27, cb) and wt.nbytes == K.weight_bytes(w.shape)
        flat = wt.transpose(0, 2, 1).reshape(nblk * cb, 27)
        np.testing.assert_array_equal(flat[:cout], w.reshape(cout, 27))
        assert not flat[cout:].any()


def test_errors():
    w, x, bias = _data((1, 8, 6, 6), 8, (3, 3))
    codes = np.zeros((8, 72), np.uint8)
    with pytest.raises(UnsupportedError, match="dense weight"):
        K.prepare_cout(CodebookWeight(w.shape, np.zeros(4, np.float32), codes, None))
    prepared = K.prepare_cout(DenseWeight(w))
    out = np.empty((1, 8, 4, 4), np.float32)
    with pytest.raises(InputError, match="group"):  # the form holds group-1 weights only
        C.conv(np.zeros((1, 16, 6, 6), np.float32), prepared, None, {"group": 2}, out)
    with pytest.raises(InputError, match="scratch too small"):
        C.conv(x, prepared, bias, {}, out, np.empty(8, np.uint8))


@pytest.mark.parametrize("cin,cout,hw,strides,form", [(64, 128, 20, [2, 2], "cout"),
                                                      (48, 48, 24, [1, 1], "winograd"),
                                                      (32, 32, 10, [1, 1], "cout"),
                                                      (3, 32, 48, [2, 2], "")])
def test_planner_form(tmp_path, cin, cout, hw, strides, form):
    """The planner holds a dense stride-2 3x3 layer on a small plane in "cout" form (64 -> 128 at 20x20: its
    estimate below im2col's), a Winograd-eligible one in Winograd form (the form is not offered there), a stride-1
    one on a plane of fewer than conv_winograd.MIN_TILES tiles (10x10: 25) in "cout" form, 3 input channels (27 taps
    < MIN_COLS) in neither; the form's bytes are what the memory plan counts; a parallel plan does not offer it; the
    run equals the codebook-held (blocked kernel) one."""
    src, out = tmp_path / "one.onnx", tmp_path / "one.epk"
    attrs = {"pads": [1, 1, 1, 1], "strides": strides}
    zoo.save(zoo.conv_relu(cin, cout, hw, 0, **attrs), src)
    pack(str(src), str(out), sparsity=0.0, bits=8)
    dense = runtime.load(str(out), layer_modes="dense", threads=1)
    layer = dense.layers["conv"]
    assert layer.form == form
    if form == "cout":
        nbytes = layer.prepared.arrays["wt"].nbytes
        assert nbytes == K.weight_bytes((cout, cin, 3, 3))
        row = next(r for r in dense.plan.layers if r.name == "conv")
        assert nbytes <= row.ram_bytes <= nbytes + 8 * cout  # + the bias
        assert row.scratch_bytes >= C.conv_scratch_bytes((1, cin, hw, hw), (cout, cin, 3, 3), attrs,
                                                         layer.prepared)
        assert runtime.load(str(out), parallel=True, layer_modes="dense", threads=2).layers["conv"].form == ""
    compact = runtime.load(str(out), layer_modes="compact", threads=1)
    x = np.random.default_rng(1).standard_normal((1, cin, hw, hw)).astype(np.float32)
    a, b = dense.run({"x": x})["z"], compact.run({"x": x})["z"]
    check_close(a, b.astype(np.float64))
