"""The register-tiled 1x1 convolution and the matrix-vector product of a 1x1 plane (runtime/ops/conv_pointwise.py)
against float64 numpy, onnxruntime and a float32 fused-multiply-add chain (the kernel's order, bit for bit): edge
shapes (fewer than a tile of channels or positions, the last block overlapping the one before, planes of 16 n + r
positions whose r run as single positions), the weight packed ("tiles" form) or read as rows, bands, the epilogue
fused block by block, the path bind_conv picks, and the planner's tiles form."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import runtime
from edgepack.packer.pipeline import pack as pack_model
from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops import conv_pointwise
from edgepack.runtime.ops.elementwise import ACT_CLIP
from edgepack.runtime.weights import CodebookWeight, DenseWeight


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


_HARD_SWISH_ROWS = np.float32([[conv_mod.CH_HARD_SWISH, 1.0 / 6.0, 0.5, 0]])


def _forms(w2d):
    """(name, w) of every way the kernel reads a (cout, cin) weight: packed, and as rows where cout >= 8."""
    forms = [("packed", conv_pointwise.pack(w2d))]
    if w2d.shape[0] >= conv_pointwise.TILE_CO:
        forms.append(("rows", conv_pointwise.weight_arg({"w2d": w2d})))
    return forms


def _kernel(x, w, out, p0, p1):
    conv_pointwise.pointwise_kernel(x, w, out, p0, p1)


def _fma_chain(w2d, x):
    """float32 sums of w2d @ x, one fused multiply-add per input channel in c order (float64 holds a float32
    product exactly; its rounding to float32 is the fused one's but for double rounding, ~2^-29 a step)."""
    acc = np.zeros((w2d.shape[0], x.shape[1]), np.float32)
    for c in range(w2d.shape[1]):
        acc = (w2d[:, c:c + 1].astype(np.float64) * x[c].astype(np.float64) + acc).astype(np.float32)
    return acc


@pytest.mark.parametrize("cin", [1, 3, 32, 129])
@pytest.mark.parametrize("cout", [1, 7, 8, 9, 17, 64])
@pytest.mark.parametrize("npos", [1, 2, 3, 4, 5, 15, 16, 17, 18, 19, 20, 34, 47, 48, 49, 63, 100, 169, 196, 257])
def test_kernel_matches_float64(cin, cout, npos):
    rng = np.random.default_rng(cin * 1000 + cout * 10 + npos)
    x, w = _rand(rng, cin, npos), _rand(rng, cout, cin)
    want = w.astype(np.float64) @ x.astype(np.float64)
    for _, wk in _forms(w):
        out = np.full((cout, npos), np.nan, np.float32)
        _kernel(x, wk, out, 0, npos)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(cin))


@pytest.mark.parametrize("cin,cout,npos", [(37, 8, 64), (64, 13, 49), (21, 5, 50), (130, 20, 18), (7, 3, 17),
                                           (40, 24, 100), (512, 16, 49), (3, 9, 35), (9, 17, 196), (33, 11, 169),
                                           (5, 8, 13), (16, 31, 63), (2, 8, 4)])
def test_kernel_is_one_fma_per_input_channel_in_order(cin, cout, npos):
    """Every position is the FMA chain over c in order, bit for bit, packed or rows, in a tile's vectors or as one of
    its single positions (P % 16 of them), whatever cout % 8 (the last block overlapping) or cout < 8."""
    rng = np.random.default_rng(cin + cout + npos)
    x, w = _rand(rng, cin, npos), _rand(rng, cout, cin)
    chain = _fma_chain(w, x)
    for name, wk in _forms(w):
        out = np.full((cout, npos), np.nan, np.float32)
        _kernel(x, wk, out, 0, npos)
        np.testing.assert_array_equal(out, chain, err_msg=name)


@pytest.mark.parametrize("cout", [1, 7, 8, 13, 16, 21])
def test_pack_layout(cout):
    """pack: (ceil(cout / 8), cin, 8), block k = channels min(8 k, cout - 8) + j (the last block overlapping the
    one before), zeros past cout when cout < 8, read-only; packed_bytes is its size."""
    cin = 5
    w = np.arange(cout * cin, dtype=np.float32).reshape(cout, cin)
    wp = conv_pointwise.pack(w)
    nblk = -(-cout // 8)
    assert wp.shape == (nblk, cin, 8) and wp.nbytes == conv_pointwise.packed_bytes(cout, cin)
    assert not wp.flags.writeable
    for k in range(nblk):
        co0 = max(0, min(8 * k, cout - 8))
        for j in range(8):
            want = w[co0 + j] if co0 + j < cout else np.zeros(cin, np.float32)
            np.testing.assert_array_equal(wp[k, :, j], want)
    if cout >= 8:
        v = conv_pointwise.rows_view(w)
        assert not v.flags.writeable and np.shares_memory(v, w)
        np.testing.assert_array_equal(v[cout - 8, :, 7], w[cout - 1])
    else:
        with pytest.raises(InputError, match="rows_view"):
            conv_pointwise.rows_view(w)


@pytest.mark.parametrize("npos", [300, 290, 289])  # 12, 2, 1 single positions at the end
def test_kernel_writes_only_its_range_and_bands_give_the_same_bits(npos):
    rng = np.random.default_rng(1)
    cin, cout = 40, 20
    x, w = _rand(rng, cin, npos), _rand(rng, cout, cin)
    whole = np.empty((cout, npos), np.float32)
    for _, wk in _forms(w):
        _kernel(x, wk, whole, 0, npos)
        part = np.full((cout, npos), np.nan, np.float32)
        _kernel(x, wk, part, 37, 150)
        assert np.isnan(part[:, :37]).all() and np.isnan(part[:, 150:]).all()
        np.testing.assert_array_equal(part[:, 37:150], whole[:, 37:150])  # tiles placed differently: the same sums
        for p0, p1 in ((0, 7), (7, 23), (23, npos - 1), (npos - 1, npos)):
            _kernel(x, wk, part, p0, p1)
        np.testing.assert_array_equal(part, whole)  # positions in vectors or single: the same bits


@pytest.mark.parametrize("hw", [(10, 12), (7, 7)])  # 120 positions; 49: one single position
def test_read_only_inputs_and_weights(hw):
    rng = np.random.default_rng(6)
    x, w = _rand(rng, 1, 12, *hw), _rand(rng, 16, 12, 1, 1)
    want = None
    for ro_x in (False, True):
        for ro_w in (False, True):
            for prep in (lambda d: conv_mod.prepare_conv(d, 1), conv_pointwise.prepare_tiles):
                xs, ws = x.copy(), w.copy()
                xs.flags.writeable, ws.flags.writeable = not ro_x, not ro_w
                out = np.empty((1, 16) + hw, np.float32)
                fn, args = conv_mod.bind_conv(xs, prep(DenseWeight(ws)), None, {}, out)
                assert fn is conv_pointwise.run
                fn(*args)
                want = out.copy() if want is None else want
                np.testing.assert_array_equal(out, want)


def test_kernel_special_values():
    rng = np.random.default_rng(2)
    x, w = _rand(rng, 5, 49), _rand(rng, 9, 5)
    x[0, 3], x[1, 20], w[4, 2], x[2, 48], x[3, 48] = np.inf, np.nan, 0.0, np.inf, -np.inf  # 48: a single one
    with np.errstate(invalid="ignore"):
        want = (w.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)
    for _, wk in _forms(w):
        out = np.empty((9, 49), np.float32)
        _kernel(x, wk, out, 0, 49)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        np.testing.assert_allclose(out[~np.isnan(out)], want[~np.isnan(want)], rtol=1e-5, atol=1e-5)


# chains run block by block: HardSwish (the store's head), an affine head then ReLU as a chain step, SiLU (saves)
_CHAINS = {"none": np.zeros((0, 4), np.float32), "hardswish": _HARD_SWISH_ROWS,
           "affine+act": np.float32([[conv_mod.CH_MUL, 0.5, 0, 0], [conv_mod.CH_ADD, -0.25, 0, 0],
                                     [conv_mod.CH_ACT, ACT_CLIP, 0.0, 6.0]]),
           "silu": np.float32([[conv_mod.CH_SILU, 0, 0, 0]])}


@pytest.mark.parametrize("nb,cin,cout,npos", [(1, 512, 512, 49), (2, 33, 13, 196), (1, 7, 21, 100), (2, 16, 8, 35)])
@pytest.mark.parametrize("chain", list(_CHAINS))
@pytest.mark.parametrize("relu", [False, True])
def test_run_fuses_the_epilogue_block_by_block(nb, cin, cout, npos, chain, relu):
    """run: the product of every band, each block's channels then finished in place (bias, activation, chain):
    bit for bit the unfused kernel followed by conv._bias_act_band_kernel over the whole plane, whatever the band
    (the last block, overlapping the one before, finished once), for both weight forms."""
    rng = np.random.default_rng(nb + cin + cout + npos)
    x3, w, bias = _rand(rng, nb, cin, npos), _rand(rng, cout, cin), _rand(rng, cout)
    ep = conv_mod.epilogue((ACT_CLIP, 0.0, np.inf) if relu else None)
    steps = _CHAINS[chain]
    want = np.empty((nb, cout, npos), np.float32)
    for b in range(nb):
        _kernel(x3[b], conv_pointwise.pack(w), want[b], 0, npos)
        conv_mod._bias_act_band_kernel(want, b, 0, npos, bias, ep, steps, np.empty(npos, np.float32))
    for _, wk in _forms(w):
        for step in (npos, 16, 7, 50):
            out = np.full((nb, cout, npos), np.nan, np.float32)
            conv_pointwise.run(x3, wk, out, bias, ep, steps, np.empty(step, np.float32), True, step)
            np.testing.assert_array_equal(out, want)


def _ort(x, w, b, act):
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[1, 1])]
    if act == "silu":
        nodes += [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    elif act == "relu":
        nodes += [helper.make_node("Relu", ["c"], ["y"])]
    elif act == "hardswish":
        nodes += [helper.make_node("HardSigmoid", ["c"], ["s"], alpha=1.0 / 6.0, beta=0.5),
                  helper.make_node("Mul", ["c", "s"], ["y"])]
    else:
        nodes[0].output[0] = "y"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _epilogue(act):
    """bind_conv's act for the activation _ort puts after the conv (None, "relu" or "silu")."""
    if act == "relu":
        return (ACT_CLIP, 0.0, np.inf)
    if act == "silu":
        return conv_mod.EpilogueChain(np.float32([[conv_mod.CH_SILU, 0, 0, 0]]), ("s", "m"))
    if act == "hardswish":
        return conv_mod.EpilogueChain(_HARD_SWISH, ("s", "m"))
    return None


_HARD_SWISH = _HARD_SWISH_ROWS


@pytest.mark.parametrize("shape", [(1, 32, 80, 80), (2, 48, 13, 17), (1, 3, 10, 10), (1, 256, 10, 10)])
@pytest.mark.parametrize("cout", [8, 18, 64])
@pytest.mark.parametrize("act", [None, "relu", "silu", "hardswish"])
def test_bind_conv_takes_the_tiled_kernel_and_matches_onnxruntime(shape, cout, act):
    rng = np.random.default_rng(3)
    x = _rand(rng, *shape)
    w, b = _rand(rng, cout, shape[1], 1, 1), _rand(rng, cout)
    prepared = conv_mod.prepare_conv(DenseWeight(w), 1)
    out = np.full((shape[0], cout) + shape[2:], np.nan, np.float32)
    fn, args = conv_mod.bind_conv(x, prepared, b, {}, out, act=_epilogue(act))
    assert fn is conv_pointwise.run  # 100+ positions, 8+ channels
    fn(*args)
    np.testing.assert_allclose(out, _ort(x, w, b, act), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,cout", [((1, 64, 5, 5), 64), ((1, 96, 52, 52), 4), ((1, 16, 3, 3), 16)])
def test_small_planes_and_few_channels_keep_blas(shape, cout):
    rng = np.random.default_rng(4)
    x = _rand(rng, *shape)
    w, b = _rand(rng, cout, shape[1], 1, 1), _rand(rng, cout)
    out = np.empty((1, cout) + shape[2:], np.float32)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b, {}, out)
    assert fn in (conv_mod._gemm_1x1_run, conv_mod._gemm_1x1_bands_run)
    fn(*args)
    np.testing.assert_allclose(out, _ort(x, w, b, None), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(1, 64, 7, 7), (2, 129, 4, 4), (1, 33, 9, 9), (1, 8, 6, 3)])
@pytest.mark.parametrize("cout", [8, 13, 64])
@pytest.mark.parametrize("act", [None, "relu", "silu", "hardswish"])
def test_planes_of_16k_plus_1_or_2_take_the_tiled_kernel(shape, cout, act):
    # 49 = 3 x 16 + 1, 16, 81 = 5 x 16 + 1, 18 = 16 + 2: tiles of vectors and single positions
    rng = np.random.default_rng(7)
    x = _rand(rng, *shape)
    w, b = _rand(rng, cout, shape[1], 1, 1), _rand(rng, cout)
    fused = _epilogue(act)
    out = np.full((shape[0], cout) + shape[2:], np.nan, np.float32)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b, {}, out, act=fused)
    assert fn is conv_pointwise.run
    fn(*args)
    np.testing.assert_allclose(out, _ort(x, w, b, act), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nb,cin,cout", [(1, 512, 1280), (2, 129, 7), (1, 1, 1), (3, 3, 17), (1, 256, 64)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("act", [None, "relu", "silu"])
def test_1x1_plane_is_a_matrix_vector_product(nb, cin, cout, bias, act):
    rng = np.random.default_rng(nb * 7 + cin + cout)
    x = _rand(rng, nb, cin, 1, 1)
    w, b = _rand(rng, cout, cin, 1, 1), _rand(rng, cout)
    fused = _epilogue(act)
    out = np.full((nb, cout, 1, 1), np.nan, np.float32)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b if bias else None, {}, out,
                                  act=fused)
    assert fn is conv_pointwise.run_gemv
    fn(*args)
    want = np.einsum("oc,nc->no", w[:, :, 0, 0].astype(np.float64), x[:, :, 0, 0].astype(np.float64))
    want += b.astype(np.float64) if bias else 0.0
    if act == "relu":
        want = np.maximum(want, 0.0)
    elif act == "silu":
        want = want / (1.0 + np.exp(-want))
    np.testing.assert_allclose(out[:, :, 0, 0], want, rtol=1e-5, atol=1e-5 * np.sqrt(cin))
    x.flags.writeable = w.flags.writeable = False  # a caller's read-only input, weights mapped from the file
    out2 = np.empty_like(out)
    fn, args = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b if bias else None, {}, out2,
                                  act=fused)
    fn(*args)
    np.testing.assert_array_equal(out2, out)


def test_parallel_plans_keep_blas():
    rng = np.random.default_rng(5)
    x, w = _rand(rng, 1, 32, 20, 20), _rand(rng, 16, 32, 1, 1)
    out = np.empty((1, 16, 20, 20), np.float32)
    fn, _ = conv_mod.bind_conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), None, {}, out, parallel=True)
    assert fn is not conv_pointwise.run


@pytest.mark.parametrize("shape,cout", [((1, 64, 7, 7), 13), ((2, 40, 10, 12), 8), ((1, 33, 9, 9), 64)])
def test_tiles_form_binds_the_tiled_kernel(shape, cout):
    """prepare_tiles: the weight packed once; bind_conv runs it on the tiled kernel with the plain form's bits at
    every tile position and onnxruntime's values; where that kernel does not run (a 1x1 plane, a parallel plan,
    another kernel shape) the form is refused with the project's error."""
    rng = np.random.default_rng(8)
    x = _rand(rng, *shape)
    w, b = _rand(rng, cout, shape[1], 1, 1), _rand(rng, cout)
    prepared = conv_pointwise.prepare_tiles(DenseWeight(w))
    assert prepared.kind == "tiles" and prepared.nbytes == conv_pointwise.packed_bytes(cout, shape[1])
    out, plain = (np.full((shape[0], cout) + shape[2:], np.nan, np.float32) for _ in range(2))
    fn, args = conv_mod.bind_conv(x, prepared, b, {}, out, act=_epilogue("relu"))
    assert fn is conv_pointwise.run
    fn(*args)
    conv_mod.conv(x, conv_mod.prepare_conv(DenseWeight(w), 1), b, {}, plain, act=_epilogue("relu"))
    np.testing.assert_array_equal(out, plain)
    np.testing.assert_allclose(out, _ort(x, w, b, "relu"), rtol=1e-4, atol=1e-4)
    with pytest.raises(UnsupportedError, match="tiles form"):
        conv_mod.bind_conv(x[:, :, :1, :1].copy(), prepared, b, {}, np.empty((shape[0], cout, 1, 1), np.float32))
    with pytest.raises(UnsupportedError, match="tiles form"):
        conv_mod.bind_conv(x, prepared, b, {}, out, parallel=True)
    with pytest.raises(UnsupportedError, match="tiles form"):
        conv_mod.bind_conv(x, prepared, b, {"strides": [2, 2]}, np.empty((shape[0], cout) + tuple(
            (d + 1) // 2 for d in shape[2:]), np.float32))
    with pytest.raises(UnsupportedError, match="dense 1x1"):
        conv_pointwise.prepare_tiles(DenseWeight(_rand(rng, cout, shape[1], 3, 3)))
    with pytest.raises(UnsupportedError, match="dense 1x1"):
        conv_pointwise.prepare_tiles(CodebookWeight(w.shape, np.zeros(4, np.float32),
                                                    np.zeros((cout, shape[1]), np.uint8), None))


def _conv1x1_model(cin, cout, hw):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((cout, cin, 1, 1)) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")
    relu = helper.make_node("Relu", ["y"], ["z"], name="relu")
    graph = helper.make_graph(
        [node, relu], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("cin,cout,hw,form", [(48, 20, 7, "tiles"), (32, 4, 12, ""), (32, 16, 1, "")])
def test_planner_tiles_form(tmp_path, cin, cout, hw, form):
    """A codebook (8-bit) 1x1 layer held dense: decoded, then packed once in "tiles" form where the tiled kernel
    runs (cout % 8 != 0 and a 7x7 plane's single position included), its bytes what the memory plan counts; not with
    fewer than 8 output channels (BLAS), on a 1x1 plane (the matrix-vector product) or in a parallel plan; the run
    equals the codebook-held one."""
    src, out = tmp_path / "one.onnx", tmp_path / "one.epk"
    onnx.save(_conv1x1_model(cin, cout, hw), str(src))
    pack_model(str(src), str(out), sparsity=0.0, bits=8)
    dense = runtime.load(str(out), layer_modes="dense", threads=1)
    layer = dense.layers["conv"]
    assert layer.form == form
    if form == "tiles":
        nbytes = layer.prepared.arrays["wp"].nbytes
        assert nbytes == conv_pointwise.packed_bytes(cout, cin)
        row = next(r for r in dense.plan.layers if r.name == "conv")
        assert nbytes <= row.ram_bytes <= nbytes + 8 * cout  # + the bias
        assert runtime.load(str(out), parallel=True, layer_modes="dense", threads=2).layers["conv"].form == ""
    compact = runtime.load(str(out), layer_modes="compact", threads=1)
    x = np.random.default_rng(1).standard_normal((1, cin, hw, hw)).astype(np.float32)
    a, b = dense.run({"x": x})["z"], compact.run({"x": x})["z"]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
