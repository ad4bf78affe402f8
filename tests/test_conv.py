"""Conv kernels (runtime/ops/conv.py) against a plain numpy convolution, with onnxruntime for attribute semantics."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.runtime.errors import InputError, UnsupportedError
from edgepack.runtime.ops.conv import conv, conv_output_shape, conv_scratch_bytes, prepare_conv
from edgepack.runtime.weights import CodebookWeight, DenseWeight, Int8Weight, SparseCodebookWeight

KINDS = ("dense", "sparse", "codebook", "int8")


# ------------------------------------------------------------------------------------------------ builders, reference

def make_weight(kind, shape, rng, density=0.5, ncodes=16, wide_scales=True, fillers=0.0, empty_rows=()):
    cout = shape[0]
    cols = int(np.prod(shape[1:]))
    pruned = rng.random((cout, cols)) >= density
    pruned[list(empty_rows), :] = True
    scales = (10.0 ** rng.uniform(-6, 3, cout)).astype(np.float32) if wide_scales else None
    if kind == "dense":
        m = rng.standard_normal((cout, cols)).astype(np.float32)
        m[pruned] = 0.0
        return DenseWeight(m.reshape(shape))
    if kind == "int8":
        zp = rng.integers(-20, 20, cout).astype(np.int8)
        q = rng.integers(-128, 128, (cout, cols)).astype(np.int8)
        q[pruned] = np.broadcast_to(zp[:, None], q.shape)[pruned]  # q == zero point decodes to 0
        return Int8Weight(shape, q, rng.uniform(1e-3, 1e-1, cout).astype(np.float32), zp)
    codebook = np.concatenate([[0.0], rng.standard_normal(ncodes - 1)]).astype(np.float32)
    codes = rng.integers(1, max(ncodes, 2), (cout, cols)) if ncodes > 1 else np.zeros((cout, cols), np.int64)
    codes[pruned] = 0
    if kind == "codebook":
        return CodebookWeight(shape, codebook, codes.astype(np.uint8), scales)
    stored = ~pruned | ((rng.random((cout, cols)) < fillers) & pruned)  # fillers: stored code-0 entries
    stored[list(empty_rows), :] = False
    indptr = np.zeros(cout + 1, np.int32)
    np.cumsum(stored.sum(axis=1), out=indptr[1:])
    r, c = np.nonzero(stored)
    return SparseCodebookWeight(shape, codebook, indptr, c.astype(np.int32), codes[r, c].astype(np.uint8), scales)


def ort_conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray, attrs: dict) -> np.ndarray:
    """onnxruntime's own Conv (one thread) of x with the float32 weight w, bias and attrs: the independent reference."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, np.asarray(w).ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [w.shape[0]], np.asarray(bias).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def ref_conv(x, w, bias, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1):
    """Straightforward float64 convolution: pad, then sum weight * strided input window per tap."""
    cout, cin_g, kh, kw = w.shape
    sh, sw = strides
    dh, dw = dilations
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    oh = (xp.shape[2] - (kh - 1) * dh - 1) // sh + 1
    ow = (xp.shape[3] - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((x.shape[0], cout, oh, ow))
    per_group = cout // group
    for co in range(cout):
        g = co // per_group
        for c in range(cin_g):
            for ky in range(kh):
                for kx in range(kw):
                    window = xp[:, g * cin_g + c, ky * dh: ky * dh + (oh - 1) * sh + 1: sh,
                                kx * dw: kx * dw + (ow - 1) * sw + 1: sw]
                    out[:, co] += float(w[co, c, ky, kx]) * window
    if bias is not None:
        out += bias.astype(np.float64)[None, :, None, None]
    return out


def check_close(out, ref):
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    err = float(np.abs(out.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= 1e-5 * scale, f"max abs error {err} > 1e-5 * output scale {scale}"


def run_conv(w, x, bias, attrs, parallel=False):
    prepared = prepare_conv(w, attrs.get("group", 1))
    out = np.full(conv_output_shape(x.shape, w.shape, attrs), np.nan, np.float32)
    scratch = np.empty(conv_scratch_bytes(x.shape, w.shape, attrs, prepared, parallel), np.uint8)
    conv(x, prepared, bias, attrs, out, scratch, parallel)
    return out


# (x shape, weight shape, attrs)
CASES = [
    ((1, 1, 28, 28), (20, 1, 5, 5), {}),  # LeNet-5 conv1
    ((1, 20, 12, 12), (50, 20, 5, 5), {}),  # LeNet-5 conv2
    ((2, 3, 9, 8), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 4, 9, 8), (6, 2, 3, 2), {"strides": [2, 1], "pads": [1, 2, 0, 1], "dilations": [1, 2], "group": 2}),
    ((3, 6, 10, 11), (6, 2, 3, 3), {"strides": [2, 3], "pads": [2, 0, 1, 1], "dilations": [2, 1], "group": 3}),
    ((2, 5, 7, 7), (5, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 5}),  # depthwise
    ((2, 4, 8, 6), (8, 1, 3, 3), {"strides": [2, 2], "group": 4}),  # depthwise, channel multiplier 2
    ((1, 3, 5, 5), (7, 3, 1, 1), {}),  # 1x1
    ((2, 3, 6, 5), (4, 3, 1, 1), {"strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ((1, 1, 1, 1), (1, 1, 1, 1), {}),  # K = 1, N = 1
    ((2, 2, 4, 5), (3, 2, 4, 5), {}),  # kernel covers the input: 1x1 output
    ((1, 2, 9, 9), (3, 2, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 2, 8, 9), (3, 2, 4, 2), {"auto_pad": "SAME_LOWER", "dilations": [1, 2]}),
    ((2, 2, 8, 9), (3, 2, 3, 3), {"auto_pad": "VALID", "strides": [3, 2]}),
    ((1, 2, 8, 9), (3, 2, 4, 2), {"auto_pad": "SAME_LOWER", "strides": [2, 1]}),
]


def onnx_pads(x_shape, w_shape, attrs):
    """Explicit pads equivalent to the case's attributes, for the numpy reference (ONNX rules for SAME_*)."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto == "NOTSET":
        return attrs.get("pads", [0, 0, 0, 0])
    if auto == "VALID":
        return [0, 0, 0, 0]
    begin, end = [], []
    for i in range(2):
        size, s = x_shape[2 + i], attrs.get("strides", [1, 1])[i]
        d, k = attrs.get("dilations", [1, 1])[i], w_shape[2 + i]
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        b = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(b)
        end.append(total - b)
    return [begin[0], begin[1], end[0], end[1]]


def reference_for(x, w, bias, attrs):
    return ref_conv(x, w.to_dense(), bias, attrs.get("strides", [1, 1]), onnx_pads(x.shape, w.shape, attrs),
                    attrs.get("dilations", [1, 1]), attrs.get("group", 1))


# ----------------------------------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conv_matches_numpy(kind, case):
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng([case, KINDS.index(kind)])
    w = make_weight(kind, w_shape, rng, density=0.5, fillers=0.2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    check_close(run_conv(w, x, bias, attrs), reference_for(x, w, bias, attrs))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("density", [1.0, 0.5, 0.05, 0.0])
@pytest.mark.parametrize("batch", [1, 7])
def test_sparsity_levels_and_empty_channels(kind, density, batch):
    rng = np.random.default_rng([KINDS.index(kind), int(density * 100), batch])
    w = make_weight(kind, (6, 3, 3, 3), rng, density=density, fillers=0.3, empty_rows=(1, 4))
    x = rng.standard_normal((batch, 3, 7, 6)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    for attrs in ({}, {"strides": [2, 1], "pads": [1, 0, 2, 1]}):
        check_close(run_conv(w, x, bias, attrs), reference_for(x, w, bias, attrs))
        check_close(run_conv(w, x, None, attrs), reference_for(x, w, None, attrs))


def test_all_pruned_conv_gives_the_bias():
    rng = np.random.default_rng(3)
    w = make_weight("sparse", (4, 2, 3, 3), rng, density=0.0, fillers=0.5)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    out = run_conv(w, x, bias, {"pads": [1, 1, 1, 1]})
    np.testing.assert_array_equal(out, np.broadcast_to(bias[None, :, None, None], out.shape))
    assert prepare_conv(w, 1).arrays["columns"].size == 0  # fillers dropped at load


def test_one_entry_codebook():
    rng = np.random.default_rng(4)
    w = make_weight("sparse", (3, 2, 3, 3), rng, density=0.5, ncodes=1, fillers=0.5)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(run_conv(w, x, None, {}), np.zeros((1, 3, 3, 3), np.float32))
    cb = CodebookWeight((3, 2, 3, 3), np.array([0.5], np.float32), np.zeros((3, 18), np.uint8), None)
    check_close(run_conv(cb, x, None, {}), reference_for(x, cb, None, {}))


def test_int8_per_tensor_scale():
    rng = np.random.default_rng(5)
    q = rng.integers(-128, 128, (4, 18)).astype(np.int8)
    w = Int8Weight((4, 2, 3, 3), q, np.array([0.03], np.float32), np.array([-7], np.int8))
    x = rng.standard_normal((2, 2, 6, 7)).astype(np.float32)
    check_close(run_conv(w, x, None, {"strides": [1, 2]}), reference_for(x, w, None, {"strides": [1, 2]}))


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), batch=st.integers(1, 3), cin_g=st.integers(1, 3), group=st.integers(1, 3),
       per_group=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 3),
       kw=st.integers(1, 3), sh=st.integers(1, 3), sw=st.integers(1, 3), dh=st.integers(1, 2), dw=st.integers(1, 2),
       pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), density=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_random_convs_match_numpy(kind, batch, cin_g, group, per_group, h, w, kh, kw, sh, sw, dh, dw, pads, density,
                                  seed):
    if h + pads[0] + pads[2] < (kh - 1) * dh + 1 or w + pads[1] + pads[3] < (kw - 1) * dw + 1:
        return  # no output position: covered by test_errors
    rng = np.random.default_rng(seed)
    weight = make_weight(kind, (group * per_group, cin_g, kh, kw), rng, density=density, fillers=0.1)
    attrs = {"strides": [sh, sw], "pads": pads, "dilations": [dh, dw], "group": group}
    x = rng.standard_normal((batch, cin_g * group, h, w)).astype(np.float32)
    bias = rng.standard_normal(group * per_group).astype(np.float32)
    check_close(run_conv(weight, x, bias, attrs), reference_for(x, weight, bias, attrs))


# ------------------------------------------------------------------------------------ ONNX semantics (onnxruntime)

@pytest.mark.parametrize("case", [2, 3, 4, 5, 6, 8, 11, 13, 14])  # ORT rejects dilations with SAME_*
def test_attribute_semantics_match_onnxruntime(case):
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(case)
    w = make_weight("sparse", w_shape, rng, density=0.6, wide_scales=False)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    expect = ort_conv(x, w.to_dense(), bias, attrs)
    assert conv_output_shape(x_shape, w_shape, attrs) == expect.shape
    check_close(run_conv(w, x, bias, attrs), expect.astype(np.float64))
    check_close(run_conv(DenseWeight(w.to_dense()), x, bias, attrs), expect.astype(np.float64))


# ------------------------------------------------------------------------------ determinism, parallel, scratch, plan

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", [1, 3, 6])
def test_bit_identical_runs_and_parallel_build(kind, case):
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(case)
    w = make_weight(kind, w_shape, rng, density=0.3)
    x = rng.standard_normal((7,) + x_shape[1:]).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    first = run_conv(w, x, bias, attrs)
    np.testing.assert_array_equal(first, run_conv(w, x, bias, attrs))
    if kind != "dense" or attrs.get("group", 1) > 1:  # dense group-1 convolutions go to numpy's BLAS
        np.testing.assert_array_equal(first, run_conv(w, x, bias, attrs, parallel=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", [0, 2, 4, 6])
def test_scratch_size_is_exact_upper_bound(kind, case):
    """No kernel writes past conv_scratch_bytes (a canary survives); the weight-less size bounds every kind."""
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(case)
    w = make_weight(kind, w_shape, rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    for parallel in (False, True):
        prepared = prepare_conv(w, attrs.get("group", 1))
        need = conv_scratch_bytes(x_shape, w_shape, attrs, prepared, parallel)
        assert need <= conv_scratch_bytes(x_shape, w_shape, attrs, None, parallel)
        arena = np.full(8 + need + 64, 0xA5, np.uint8)
        out = np.empty(conv_output_shape(x_shape, w_shape, attrs), np.float32)
        conv(x, prepared, None, attrs, out, arena[8: 8 + need], parallel)
        assert np.all(arena[8 + need:] == 0xA5) and np.all(arena[:8] == 0xA5)
        check_close(out, reference_for(x, w, None, attrs))


def test_plan_cache_follows_attributes_and_shapes():
    rng = np.random.default_rng(6)
    w = make_weight("sparse", (3, 2, 3, 3), rng)
    prepared = prepare_conv(w, 1)
    for attrs in ({}, {"strides": [2, 2]}, {"pads": [1, 1, 1, 1]}, {}):
        for hw in (7, 9):
            x = rng.standard_normal((2, 2, hw, hw)).astype(np.float32)
            out = np.empty(conv_output_shape(x.shape, w.shape, attrs), np.float32)
            conv(x, prepared, None, attrs, out)
            check_close(out, reference_for(x, w, None, attrs))
    assert 0 < len(prepared.plans) <= 8


def test_prepare_keeps_the_compressed_arrays():
    rng = np.random.default_rng(7)
    w = make_weight("sparse", (50, 20, 5, 5), rng, density=0.12)
    p = prepare_conv(w, 1)
    # blocks of two channels sharing their columns (conv_sparse.prepare): two codes a column
    assert p.kind == "sparse" and p.arrays["codes"].shape[0] == 2 * p.arrays["columns"].shape[0]
    assert p.nbytes == sum(a.nbytes for a in p.arrays.values()) < 50 * 500 * 4 / 3


# ------------------------------------------------------------------------------------------------------- errors

def test_errors():
    rng = np.random.default_rng(8)
    w = make_weight("sparse", (4, 2, 3, 3), rng)
    p = prepare_conv(w, 1)
    x = np.zeros((1, 2, 5, 5), np.float32)
    out = np.empty((1, 4, 3, 3), np.float32)
    with pytest.raises(InputError, match="expects 2 channels"):
        conv(np.zeros((1, 3, 5, 5), np.float32), p, None, {}, out)
    with pytest.raises(InputError, match="x expected float32"):
        conv(x.astype(np.float64), p, None, {}, out)
    with pytest.raises(InputError, match="out expected"):
        conv(x, p, None, {}, np.empty((1, 4, 2, 2), np.float32))
    with pytest.raises(InputError, match="smaller than the dilated kernel"):
        conv_output_shape((1, 2, 2, 5), (4, 2, 3, 3), {})
    with pytest.raises(InputError, match="kernel_shape"):
        conv(x, p, None, {"kernel_shape": [2, 2]}, out)
    with pytest.raises(InputError, match="group 2 differs"):
        conv(np.zeros((1, 4, 5, 5), np.float32), p, None, {"group": 2}, out)
    with pytest.raises(InputError, match="bias expected 4"):
        conv(x, p, np.zeros(3, np.float32), {}, out)
    with pytest.raises(InputError, match="scratch too small"):
        conv(x, p, None, {"pads": [1, 1, 1, 1]}, np.empty((1, 4, 5, 5), np.float32), np.empty(4, np.uint8))
    with pytest.raises(UnsupportedError, match="negative pads"):
        conv_output_shape((1, 2, 5, 5), (4, 2, 3, 3), {"pads": [-1, 0, 0, 0]})
    with pytest.raises(UnsupportedError, match="auto_pad"):
        conv_output_shape((1, 2, 5, 5), (4, 2, 3, 3), {"auto_pad": "SAME"})
    with pytest.raises(UnsupportedError, match="only 1-D and 2-D"):
        prepare_conv(DenseWeight(np.zeros((4, 2, 3, 3, 3), np.float32)), 1)
    with pytest.raises(UnsupportedError, match="only 1-D and 2-D"):
        conv_output_shape((1, 2, 5, 5, 5), (4, 2, 3, 3, 3), {})
    with pytest.raises(InputError, match="divide cout"):
        prepare_conv(w, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_read_only_weights_and_inputs(kind):
    """The reader hands out read-only views of a memory-mapped file; kernels must accept them."""
    rng = np.random.default_rng(9)
    w = make_weight(kind, (4, 2, 3, 3), rng, fillers=0.2)
    for a in vars(w).values():
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    x.flags.writeable = False
    for attrs in ({}, {"pads": [1, 1, 1, 1]}):
        check_close(run_conv(w, x, None, attrs), reference_for(x, w, None, attrs))


# -------------------------------------------------------------------------------------- im2col bands, subnormals

@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("band_rows", [1, 2])
def test_im2col_in_bands_matches_numpy(monkeypatch, case, band_rows):
    """Dense group-1 convolutions run im2col + BLAS one band of output rows at a time: bands of one row and of
    two rows (a shorter last band when the rows are odd) give the unbanded answer, fused activation too."""
    from edgepack.runtime.ops import conv as conv_mod
    from edgepack.runtime.ops.elementwise import ACT_CLIP
    x_shape, w_shape, attrs = CASES[case]
    ow = conv_output_shape(x_shape, w_shape, attrs)[3]
    monkeypatch.setattr(conv_mod, "IM2COL_BAND_FLOATS", 1)
    monkeypatch.setattr(conv_mod, "IM2COL_BAND_MIN_POSITIONS", band_rows * ow)
    monkeypatch.setattr(conv_mod, "BLOCK_MIN_POSITIONS", 1 << 30)  # every plane "small": im2col
    rng = np.random.default_rng([case, band_rows])
    w = make_weight("dense", w_shape, rng, density=0.7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    ref = reference_for(x, w, bias, attrs)
    check_close(run_conv(w, x, bias, attrs), ref)
    prepared = prepare_conv(w, attrs.get("group", 1))
    out = np.full(ref.shape, np.nan, np.float32)
    conv(x, prepared, bias, attrs, out, None, False, (ACT_CLIP, 0.0, 6.0))
    check_close(out, np.clip(ref, 0.0, 6.0))


def test_im2col_band_layout_on_a_real_shape():
    """PP-OCRv4 det's neck conv (96 -> 24 channels, 3x3, pad 1) at 30x30 (a plane below BLOCK_MIN_POSITIONS, so
    im2col + BLAS): 864 columns -> bands of 20 rows (2 x IM2COL_BAND_FLOATS), scratch for one band only, same answer
    as the float64 reference."""
    from edgepack.runtime.ops import conv as conv_mod
    rng = np.random.default_rng(11)
    w = make_weight("dense", (24, 96, 3, 3), rng, density=1.0)
    x = rng.standard_normal((1, 96, 30, 30)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1]}
    prepared = prepare_conv(w, 1)
    plan = conv_mod._plan(prepared, x.shape, attrs, False)
    assert plan.im2col and plan.geo[conv_mod._CROWS] == 20
    # the tap offsets, the band, one row for an epilogue chain and the padded sample (32 x 32 per channel)
    assert plan.scratch_bytes == 8 * 864 + 4 * ((864 + 1) * 20 * 30 + 96 * 32 * 32)
    check_close(run_conv(w, x, None, attrs), reference_for(x, w, None, attrs))


@pytest.mark.parametrize("kind", ["dense", "codebook", "sparse"])
def test_subnormal_weights_are_flushed_at_prepare(kind):
    """Subnormal weight values (|w| < 1.2e-38, which packed codebooks times row scales can produce; PP-OCRv4 rec
    at 8 bits) are held as 0: each multiply reading one is a microcode assist (a 1x1 conv 20x slower). Outputs
    stay within the usual tolerance of the exact convolution, and the caller's arrays are not modified."""
    rng = np.random.default_rng(12)
    tiny = np.finfo(np.float32).tiny
    w = make_weight(kind, (6, 4, 3, 3), rng, density=0.8, wide_scales=False)
    if kind == "dense":
        arr = w.array.copy()
        arr.reshape(-1)[::5] = tiny / 8
        w = DenseWeight(arr)
        held = prepare_conv(w, 1).arrays["w2d"]
        original = w.array
    else:
        w.codebook[2] = -tiny / 4
        held = prepare_conv(w, 1).arrays["codebook"]
        original = w.codebook
    assert not ((held != 0) & (np.abs(held) < tiny)).any()
    assert ((original != 0) & (np.abs(original) < tiny)).any()  # the weight object keeps its values
    x = rng.standard_normal((1, 4, 9, 8)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1]}
    check_close(run_conv(w, x, None, attrs), reference_for(x, w, None, attrs))


@pytest.mark.parametrize("kind", ["sparse", "codebook", "int8", "dense"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_direct_kernels_in_row_tiles(monkeypatch, kind, case):
    """The direct kernels sum taps over tiles of output rows (TAPS_TILE_FLOATS): tiles of one row and of three
    rows (a shorter last tile) give the bits of the untiled plane, padded, strided (phased), dilated, grouped."""
    from edgepack.runtime.ops import conv as conv_mod
    x_shape, w_shape, attrs = CASES[case]
    attrs = dict(attrs, group=attrs.get("group", 1))
    if kind == "dense" and attrs["group"] == 1:  # dense weights take the direct kernel when grouped: depthwise
        w_shape, attrs = (w_shape[0] * x_shape[1], 1) + w_shape[2:], dict(attrs, group=x_shape[1])
    rng = np.random.default_rng([case, 7])
    w = make_weight(kind, w_shape, rng, density=0.6, fillers=0.2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    untiled = run_conv(w, x, bias, attrs)
    for tile in (1, 3 * 64):
        monkeypatch.setattr(conv_mod, "TAPS_TILE_FLOATS", tile)
        tiled = run_conv(w, x, bias, attrs)
        np.testing.assert_array_equal(tiled.view(np.uint32), untiled.view(np.uint32))
    check_close(untiled, reference_for(x, w, bias, attrs))


@pytest.mark.parametrize("rows", [1, 3])
def test_plain_1x1_runs_blas_in_bands_with_bias_and_clip(monkeypatch, rows):
    """A dense 1x1 convolution (stride 1, no padding) is BLAS on x itself, in bands of positions sized by input plus
    output channels; bias and a fused Clip run on each band (one row, three rows with a shorter last band), batch 2:
    the reference's answer; the scratch is one band row."""
    from edgepack.runtime.ops import conv as conv_mod
    from edgepack.runtime.ops.elementwise import ACT_CLIP
    rng = np.random.default_rng(rows)
    w = make_weight("dense", (6, 5, 1, 1), rng, density=1.0)
    x = rng.standard_normal((2, 5, 7, 9)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    monkeypatch.setattr(conv_mod, "IM2COL_BAND_FLOATS", 1)
    monkeypatch.setattr(conv_mod, "IM2COL_BAND_MIN_POSITIONS", rows * 9)
    prepared = prepare_conv(w, 1)
    plan = conv_mod._plan(prepared, x.shape, {}, False)
    assert plan.im2col and plan.geo[conv_mod._CROWS] == rows and plan.scratch_bytes == 4 * rows * 9
    out = np.full((2, 6, 7, 9), np.nan, np.float32)
    conv(x, prepared, bias, {}, out, None, False, (ACT_CLIP, -0.5, 0.5))
    check_close(out, np.clip(reference_for(x, w, bias, {}), -0.5, 0.5))


@pytest.mark.parametrize("x_shape, w_shape, attrs", [
    ((2, 8, 20, 20), (12, 8, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # 100 positions: tiles overlap
    ((1, 5, 9, 9), (16, 5, 3, 3), {"pads": [1, 1, 1, 1]}),  # 81 = 5 x 16 + 1: the last position a dot product
    ((1, 3, 18, 18), (8, 3, 3, 3), {}),  # 256 positions, 8 channels: whole tiles only
])
def test_im2col_on_register_tiles_matches_numpy_and_blas(monkeypatch, x_shape, w_shape, attrs):
    """A dense 3x3 convolution whose small plane is one im2col band multiplies it on conv_pointwise.py's register
    tiles (im2col_product "tiled"): the float64 reference's answer with bias and a fused Clip, batch 1 and 2,
    close to the BLAS product's; the scratch holds the dot-product rows (exact upper bound: NaN-filled output
    fully written)."""
    from edgepack.runtime.ops import conv as conv_mod
    from edgepack.runtime.ops.elementwise import ACT_CLIP
    rng = np.random.default_rng(list(x_shape))
    w = make_weight("dense", w_shape, rng, density=0.8)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    prepared = prepare_conv(w, 1)
    assert conv_mod.im2col_product(conv_mod.geometry(x_shape, w_shape, attrs), False) == "tiled"
    assert conv_mod.im2col_product(conv_mod.geometry(x_shape, w_shape, attrs), True) == "blas"
    big = (1, w_shape[1], 30, 30)  # 900 positions: BLAS
    assert conv_mod.im2col_product(conv_mod.geometry(big, w_shape, {"pads": [1, 1, 1, 1]}), False) == "blas"
    size = conv_scratch_bytes(x_shape, w_shape, attrs, prepared)
    out = np.full(conv_output_shape(x_shape, w_shape, attrs), np.nan, np.float32)
    conv(x, prepared, bias, attrs, out, np.empty(size, np.uint8), False, (ACT_CLIP, -1.0, 1.5))
    ref = np.clip(reference_for(x, w, bias, attrs), -1.0, 1.5)
    check_close(out, ref)
    monkeypatch.setattr(conv_mod, "im2col_product", lambda g, parallel: "blas")
    blas = np.full(out.shape, np.nan, np.float32)
    conv(x, prepare_conv(w, 1), bias, attrs, blas, None, False, (ACT_CLIP, -1.0, 1.5))
    np.testing.assert_allclose(out, blas, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
