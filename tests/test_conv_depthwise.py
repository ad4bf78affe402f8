"""The depthwise kernels (runtime/ops/conv_depthwise.py: 3x3 and 5x5, one channel per group, every tap in registers)
against a float64 numpy convolution and onnxruntime: strides 1, 2, (2, 1), (1, 2) and 3, symmetric and uneven pads,
auto_pad SAME_UPPER / SAME_LOWER / VALID, dilation, odd sizes, 1-pixel images, batch > 1, dense, codebook and int8
weights, a fused activation and an epilogue chain; row tiles and the parallel build give the same bits; the row-pair
kernels of stride 1 and the row-slice kernels give the bits of the one-row, one-slice-a-tap ones; small planes run
channel-blocked (16 channels a block, a partial last block, any strides, pads, dilation); only the shapes it is for
are dispatched to it, and it stays inside its scratch."""
import numpy as np
import pytest

from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops import conv_depthwise as D
from edgepack.runtime.ops.elementwise import ACT_CLIP
from edgepack.runtime.weights import DenseWeight
from test_conv import check_close, make_weight, onnx_pads, ref_conv, reference_for, run_conv

DW_KINDS = ("dense", "codebook", "int8")

# (x shape, attrs without group); the weight is (C, 1, k, k)
GEOMETRIES = [
    ((1, 6, 9, 11), {"pads": "k//2"}),
    ((2, 5, 10, 7), {"strides": [2, 2], "pads": [1, 0, 2, 1]}),
    ((1, 4, 7, 13), {"strides": [2, 1], "pads": "k//2"}),  # PP-LCNet's stride (2, 1)
    ((1, 3, 8, 9), {"strides": [1, 2], "pads": [0, 2, 1, 1]}),
    ((1, 3, 11, 10), {"strides": [3, 3], "pads": "k//2"}),  # phased with three row and column phases
    ((1, 3, 12, 12), {"dilations": [2, 2], "pads": "k-1"}),
    ((1, 4, 9, 8), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 4, 9, 8), {"auto_pad": "SAME_LOWER"}),
    ((1, 4, 9, 8), {"auto_pad": "VALID"}),
    ((1, 3, 9, 8), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    ((1, 3, 1, 1), {"pads": "k//2"}),  # one pixel: every tap but the centre reads padding
    ((2, 3, 1, 1), {"strides": [2, 2], "pads": "k//2"}),
    ((3, 8, 5, 6), {"pads": "k//2"}),  # batch 3
    ((1, 2, 40, 70), {"pads": "k//2"}),  # several row tiles (TAPS_TILE_FLOATS)
]


def attrs_for(x_shape, k, attrs):
    attrs = dict(attrs, group=x_shape[1])
    if attrs.get("pads") == "k//2":
        attrs["pads"] = [k // 2] * 4
    elif attrs.get("pads") == "k-1":
        attrs["pads"] = [k - 1] * 4
    return attrs


def bound_kernel(w, x, attrs, parallel=False):
    prepared = C.prepare_conv(w, attrs["group"])
    out = np.empty(C.conv_output_shape(x.shape, w.shape, attrs), np.float32)
    return C.bind_conv(x, prepared, None, attrs, out, None, parallel)[0]


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("kind", DW_KINDS)
@pytest.mark.parametrize("case", range(len(GEOMETRIES)))
@pytest.mark.parametrize("wide", [False, True])
def test_depthwise_matches_float64_numpy(k, kind, case, wide):
    """Each geometry as listed (small planes: mostly the channel-blocked layout) and 65 columns wider (too wide to
    block: the one-channel layouts)."""
    x_shape, attrs = GEOMETRIES[case]
    if wide:
        x_shape = x_shape[:3] + (x_shape[3] + 65,)
    attrs = attrs_for(x_shape, k, attrs)
    rng = np.random.default_rng([case, k, DW_KINDS.index(kind)])
    w = make_weight(kind, (x_shape[1], 1, k, k), rng, density=0.7)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(x_shape[1]).astype(np.float32)
    assert bound_kernel(w, x, attrs) is D._conv_depthwise_kernel
    assert bound_kernel(w, x, attrs, parallel=True) is D._conv_depthwise_parallel_kernel
    if wide:
        geo = C._plan(C.prepare_conv(w, x_shape[1]), x_shape, attrs, False).geo
        assert geo[C._PLEN] != D.LANES * geo[C._HP] * geo[C._WP]
    check_close(run_conv(w, x, bias, attrs), reference_for(x, w, bias, attrs))
    check_close(run_conv(w, x, None, attrs), reference_for(x, w, None, attrs))


@pytest.mark.parametrize("strides", [[2, 1], [1, 1]])
@pytest.mark.parametrize("k", [3, 5])
def test_fused_activation_and_epilogue_chain(k, strides):
    """A fused Clip, and HardSwish as exporters write it (x * Clip(x + 3, 0, 6) / 6) as an epilogue chain, on the
    stored planes (stride 1: the row-pair kernels, an odd number of rows): the float64 reference with the same
    steps."""
    rng = np.random.default_rng(k)
    x = (rng.standard_normal((2, 5, 9, 7)) * 3).astype(np.float32)
    w = make_weight("codebook", (5, 1, k, k), rng, density=1.0, wide_scales=False)
    bias = rng.standard_normal(5).astype(np.float32)
    attrs = {"group": 5, "pads": [k // 2] * 4, "strides": strides}
    ref = reference_for(x, w, bias, attrs)
    prepared = C.prepare_conv(w, 5)
    out = np.full(ref.shape, np.nan, np.float32)
    C.conv(x, prepared, bias, attrs, out, None, False, (ACT_CLIP, -0.5, 0.75))
    check_close(out, np.clip(ref, -0.5, 0.75))
    steps = np.float32([[C.CH_SAVE, 0, 0, 0], [C.CH_ADD, 3, 0, 0], [C.CH_ACT, ACT_CLIP, 0, 6],
                        [C.CH_MUL_SAVED, 0, 0, 0], [C.CH_DIV, 6, 0, 0]])
    out[...] = np.nan
    C.conv(x, prepared, bias, attrs, out, None, False, C.EpilogueChain(steps, ("hardswish",)))
    check_close(out, ref * np.clip(ref + 3, 0, 6) / 6)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("strides", [[1, 1], [2, 2], [2, 1]])
def test_row_tiles_and_parallel_give_the_same_bits(monkeypatch, k, strides):
    """Tiles of one row and of three rows (a shorter last tile) and the parallel build (channels over threads) sum
    every output in the same order: the bits of the one-tile serial run."""
    rng = np.random.default_rng(k + strides[0])
    x = rng.standard_normal((2, 6, 17, 23)).astype(np.float32)
    w = make_weight("int8", (6, 1, k, k), rng, density=0.8)
    bias = rng.standard_normal(6).astype(np.float32)
    attrs = {"group": 6, "pads": [k // 2] * 4, "strides": strides}
    whole = run_conv(w, x, bias, attrs)
    assert not np.isnan(whole).any()
    np.testing.assert_array_equal(run_conv(w, x, bias, attrs, parallel=True).view(np.uint32), whole.view(np.uint32))
    for tile in (1, 3 * 25):
        monkeypatch.setattr(C, "TAPS_TILE_FLOATS", tile)
        np.testing.assert_array_equal(run_conv(w, x, bias, attrs).view(np.uint32), whole.view(np.uint32))
    check_close(whole, reference_for(x, w, bias, attrs))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 7), (9, 20), (14, 14), (12, 37)])
def test_row_pairs_sum_as_the_one_row_kernels(k, hw):
    """_pair9_kernel / _pair25_kernel (two output rows a pass from the even / odd rows of the padded plane) give the
    bits of _dw9_kernel / _dw25_kernel (one row at a time, the taps in the same order) on every row they store."""
    rng = np.random.default_rng([k, hw[0], hw[1]])
    h, w = hw
    p = k // 2
    hp, wp = h + 2 * p, w + 2 * p
    plane = np.zeros((hp, wp), np.float32)
    plane[p: p + h, p: p + w] = rng.standard_normal((h, w)).astype(np.float32) * 10
    wt = rng.standard_normal(k * k).astype(np.float32)
    n1 = (h - 1) * wp + w
    one = np.full(n1, np.nan, np.float32)
    tab = np.array([ky * wp + kx for ky in range(k) for kx in range(k)], np.int64)
    (D._dw9_kernel if k == 3 else D._dw25_kernel)(plane.reshape(-1), 0, tab, wt, one, n1)
    qh = hp // 2 + 1  # as pair_layout lays it out: a zero row past the last one the odd rows of an odd h read
    phased = np.zeros((2, qh, wp), np.float32)
    phased[0, : (hp + 1) // 2] = plane[0::2]
    phased[1, : hp // 2] = plane[1::2]
    pairs = (h + 1) // 2
    n2 = (pairs - 1) * wp + w
    ae, ao = np.full(n2, np.nan, np.float32), np.full(n2, np.nan, np.float32)
    (D._pair9_kernel if k == 3 else D._pair25_kernel)(phased.reshape(-1), 0, qh * wp, wp, wt, ae, ao, n2)
    for r in range(h):
        acc = ae if r % 2 == 0 else ao
        got = acc[(r // 2) * wp: (r // 2) * wp + w]
        np.testing.assert_array_equal(got.view(np.uint32), one[r * wp: r * wp + w].view(np.uint32))


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("n", [1, 7, 16, 33, 250])
def test_row_slice_kernels_sum_as_the_tap_kernels(k, n):
    """_dw9_rows_kernel / _dw25_rows_kernel (one slice per kernel row, for column stride and dilation 1) give the
    bits of _dw9_kernel / _dw25_kernel (one slice per tap) reading the same windows, up to the last element."""
    rng = np.random.default_rng([k, n])
    pitch = 11
    tab = np.array([ky * pitch + kx for ky in range(k) for kx in range(k)], np.int64)
    src = (rng.standard_normal(3 + int(tab[-1]) + n) * 10).astype(np.float32)  # ends at the last window's end
    wt = rng.standard_normal(k * k).astype(np.float32)
    want, got = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
    (D._dw9_kernel if k == 3 else D._dw25_kernel)(src, 3, tab, wt, want, n)
    (D._dw9_rows_kernel if k == 3 else D._dw25_rows_kernel)(src, 3, tab, wt, got, n)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_row_pairs_are_the_stride_one_layout():
    """Stride-1 3x3 / 5x5 depthwise convolutions (dense, codebook, int8) get the row-pair layout (a per-channel copy
    even without padding), the others and sparse weights the one-row one."""
    def plan(kind, k, attrs):
        w = make_weight(kind, (4, 1, k, k), np.random.default_rng(0), density=0.8)
        return C._plan(C.prepare_conv(w, 4), (1, 4, 9, 70), dict(attrs, group=4), False)  # too wide to block

    for kind in DW_KINDS:
        for k in (3, 5):
            geo = plan(kind, k, {}).geo  # VALID: no padding
            assert geo[C._PERCH] == 1 and geo[C._PLEN] == 2 * (9 // 2 + 1) * 70
    assert plan("sparse", 3, {}).geo[C._PLEN] == 0
    assert plan("dense", 3, {"strides": [2, 1], "pads": [1, 1, 1, 1]}).geo[C._PLEN] == 2 * 6 * 72
    assert plan("dense", 3, {"dilations": [2, 2], "pads": [2, 2, 2, 2]}).geo[C._PLEN] == 13 * 74


@pytest.mark.parametrize("w_shape,kind,attrs", [
    ((8, 1, 3, 3), "dense", {"group": 4}),  # channel multiplier 2
    ((4, 1, 7, 7), "dense", {"group": 4, "pads": [3, 3, 3, 3]}),  # 7x7
    ((4, 1, 3, 1), "codebook", {"group": 4, "pads": [1, 0, 1, 0]}),  # 3x1
    ((4, 1, 3, 3), "sparse", {"group": 4, "pads": [1, 1, 1, 1]}),  # CSR rows: the sparse driver
    ((4, 2, 3, 3), "dense", {"group": 2}),  # two input channels per group
])
def test_other_grouped_convolutions_keep_their_drivers(w_shape, kind, attrs):
    rng = np.random.default_rng(w_shape[0] * w_shape[2])
    cin = w_shape[1] * attrs["group"]
    x = rng.standard_normal((2, cin, 9, 10)).astype(np.float32)
    w = make_weight(kind, w_shape, rng, density=0.6)
    assert bound_kernel(w, x, attrs) not in (D._conv_depthwise_kernel, D._conv_depthwise_parallel_kernel)
    check_close(run_conv(w, x, None, attrs), reference_for(x, w, None, attrs))


@pytest.mark.parametrize("k", [3, 5])
def test_stays_inside_its_scratch(k):
    """The plan's scratch, handed over with a guard tail of 0xFF bytes: the tail is never written, and garbage in
    the scratch (a second call on it, borders of another geometry) does not reach the output."""
    rng = np.random.default_rng(11 + k)
    w = make_weight("dense", (5, 1, k, k), rng, density=1.0)
    bias = rng.standard_normal(5).astype(np.float32)
    prepared = C.prepare_conv(w, 5)
    for x_shape, attrs in (((2, 5, 13, 9), {"group": 5, "pads": [k // 2] * 4, "strides": [2, 2]}),
                           ((1, 5, 6, 15), {"group": 5, "pads": [k // 2, 0, 1, k // 2]})):
        x = rng.standard_normal(x_shape).astype(np.float32)
        need = C.conv_scratch_bytes(x_shape, w.shape, attrs, prepared)
        scratch = np.full(need + 64, 0xFF, np.uint8)  # NaN floats everywhere before the first call
        out = np.full(C.conv_output_shape(x_shape, w.shape, attrs), np.nan, np.float32)
        for _ in range(2):
            C.conv(x, prepared, bias, attrs, out, scratch)
            check_close(out, reference_for(x, w, bias, attrs))
        assert (scratch[need:] == 0xFF).all()


@pytest.mark.parametrize("k,attrs", [
    (3, {"pads": [1, 1, 1, 1]}),
    (5, {"pads": [2, 2, 2, 2]}),
    (5, {"pads": [0, 2, 1, 1]}),
    (3, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (5, {"strides": [2, 1], "pads": [2, 2, 2, 2]}),
    (5, {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    (3, {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    (5, {"dilations": [2, 1], "pads": [4, 2, 4, 2]}),
])
def test_matches_onnxruntime(k, attrs):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(k * 7 + len(attrs))
    c = 7
    x = rng.standard_normal((2, c, 15, 12)).astype(np.float32)
    w = rng.standard_normal((c, 1, k, k)).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    node_attrs = dict(attrs, group=c, kernel_shape=[k, k])
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **node_attrs)
    graph = helper.make_graph([node], "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    from edgepack.runtime.weights import DenseWeight
    dw = DenseWeight(w)
    assert bound_kernel(dw, x, dict(node_attrs)) is D._conv_depthwise_kernel
    got = run_conv(dw, x, bias, dict(node_attrs))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    ref = ref_conv(x, w, bias, node_attrs.get("strides", [1, 1]), onnx_pads(x.shape, w.shape, node_attrs),
                   node_attrs.get("dilations", [1, 1]), c)
    check_close(got, ref)


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("x_shape,attrs", [
    ((2, 37, 7, 7), {"pads": "k//2"}),  # 3 blocks, the last of 5 channels; batch 2
    ((1, 16, 7, 7), {"pads": [0, 2, 1, 1]}),  # uneven pads, one full block
    ((1, 20, 14, 14), {"strides": [2, 2], "pads": "k//2"}),  # strides (2, 2) up to 16 x 16
    ((1, 18, 8, 8), {"dilations": [2, 2], "pads": "k-1"}),
    ((1, 17, 5, 9), {"strides": [2, 1], "pads": [1, 2, 0, 1]}),
    ((1, 3, 1, 1), {"pads": "k//2"}),  # one pixel, fewer channels than a block
])
def test_small_planes_run_channel_blocked(k, x_shape, attrs):
    """Small planes take the channel-blocked layout (simd_taps.py): against float64 numpy with dense, codebook and
    int8 weights, a fused activation and an epilogue chain; the parallel build (blocks over threads) gives the serial
    bits."""
    attrs = attrs_for(x_shape, k, attrs)
    c = x_shape[1]
    geo = C._plan(C.prepare_conv(make_weight("dense", (c, 1, k, k), np.random.default_rng(0), density=1.0), c),
                  x_shape, attrs, False).geo
    hp, wp = int(geo[C._HP]), int(geo[C._WP])
    assert geo[C._PLEN] == D.LANES * hp * wp  # the blocked layout, not the pair or phased one
    for kind in DW_KINDS:
        rng = np.random.default_rng([k, c, DW_KINDS.index(kind)])
        w = make_weight(kind, (c, 1, k, k), rng, density=0.7)
        x = rng.standard_normal(x_shape).astype(np.float32)
        bias = rng.standard_normal(c).astype(np.float32)
        got = run_conv(w, x, bias, attrs)
        check_close(got, reference_for(x, w, bias, attrs))
        np.testing.assert_array_equal(run_conv(w, x, bias, attrs, parallel=True).view(np.uint32), got.view(np.uint32))
    ref = reference_for(x, w, bias, attrs)
    prepared = C.prepare_conv(w, c)
    out = np.full(ref.shape, np.nan, np.float32)
    C.conv(x, prepared, bias, attrs, out, None, False, (ACT_CLIP, -0.5, 0.75))
    check_close(out, np.clip(ref, -0.5, 0.75))
    steps = np.float32([[C.CH_SAVE, 0, 0, 0], [C.CH_ADD, 3, 0, 0], [C.CH_ACT, ACT_CLIP, 0, 6],
                        [C.CH_MUL_SAVED, 0, 0, 0], [C.CH_DIV, 6, 0, 0]])
    C.conv(x, prepared, bias, attrs, out, None, False, C.EpilogueChain(steps, ("hardswish",)))
    check_close(out, ref * np.clip(ref + 3, 0, 6) / 6)
    out[...] = np.nan  # HardSwish as one step: the chain's head, run in the store (blocked: on the block)
    C.conv(x, prepared, bias, attrs, out, None, False,
           C.EpilogueChain(np.float32([[C.CH_HARD_SWISH, 1 / 6, 0.5, 0]]), ("hardswish",)))
    check_close(out, ref * np.clip(ref / 6 + 0.5, 0, 1))


@pytest.mark.parametrize("k,strides,dil", [(3, (1, 1), 1), (3, (2, 2), 1), (5, (1, 1), 1), (5, (2, 2), 1),
                                          (3, (1, 2), 2), (5, (2, 1), 1)])
def test_blocked_row_runs_sum_as_the_position_kernel(k, strides, dil):
    """_blocked_rows_kernel (runs of up to 8 positions of one output row, simd_taps.taps16_row: every run length 1
    to 8 and rows longer than 8; row dilation, which it runs too) gives the bits of _blocked_taps_kernel (four
    positions a call, one load a tap) on every output position, over a block of random values (no zero borders to
    hide a wrong offset)."""
    for width in range(1, 36, 3 if strides[1] == 1 else 1):
        c = 16
        attrs = {"group": c, "pads": [dil * (k // 2), k // 2] * 2, "strides": list(strides), "dilations": [dil, 1]}
        x_shape = (1, c, 5, width)
        w = make_weight("dense", (c, 1, k, k), np.random.default_rng(0), density=1.0)
        geo = C._plan(C.prepare_conv(w, c), x_shape, attrs, False).geo
        assert geo[C._PLEN] == D.LANES * geo[C._HP] * geo[C._WP]  # blocked
        rng = np.random.default_rng([k, width, strides[0], strides[1]])
        xp = (rng.standard_normal(D.LANES * int(geo[C._HP] * geo[C._WP])) * 10).astype(np.float32)
        wb = rng.standard_normal(D.LANES * k * k).astype(np.float32)
        npos = int(geo[C._OH] * geo[C._OW])
        want, got = np.full(D.LANES * npos, np.nan, np.float32), np.full(D.LANES * npos, np.nan, np.float32)
        tab = np.zeros(k * k, np.int64)
        D._blocked_tab_kernel(geo, tab)
        D._blocked_taps_kernel(xp, tab, k * k, wb, geo, want)
        D._blocked_rows_kernel(xp, wb, geo, got)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def _signed_weights(rng, k):
    """k x k weights, random, with kernel rows made all negative (each product with a zero -0.0) or given one +0.0
    at random: the zeros' sign depends on which padding taps are summed."""
    w = rng.standard_normal((k, k)).astype(np.float32)
    for r in range(k):
        u = rng.random()
        if u < 0.4:
            w[r] = -np.abs(w[r])
        elif u < 0.55:
            w[r, rng.integers(k)] = 0.0
    return w.reshape(-1)


@pytest.mark.parametrize("zero_input", [False, True])
def test_skipped_padding_rows_keep_the_bits(zero_input):
    """_pair25_kernel / _dw25_kernel / _dw25_rows_kernel run on a row range (the passes / kernel rows that read
    padding only skipped, their zeros' sum _pad_zero added at the start and end) give the bits of the full range on
    planes whose skipped rows are zero, -0.0 results (inputs of zeros, all-negative kernel rows) included."""
    rng = np.random.default_rng(5 + zero_input)
    wp, n = 13, 9
    for trial in range(12):
        wt = _signed_weights(rng, 5)
        rz = np.empty(5, np.float32)
        D._row_zeros(wt, rz)
        # pairs: six phase rows of one pair, those outside [jlo, jhi) zero
        for jlo in range(0, 5):
            for jhi in range(max(jlo + 1, 2), 7):
                if jlo >= min(jhi, 5) or max(jlo, 1) >= jhi:
                    continue
                rows = np.zeros((6, wp), np.float32)
                if not zero_input:
                    rows[jlo: jhi] = rng.standard_normal((jhi - jlo, wp)).astype(np.float32)
                phased = np.zeros((2, 4, wp), np.float32)
                phased[0, :3], phased[1, :3] = rows[0::2], rows[1::2]
                src = phased.reshape(-1)
                full = [np.full(n, np.nan, np.float32) for _ in range(2)]
                part = [np.full(n, np.nan, np.float32) for _ in range(2)]
                D._pair25_kernel(src, 0, 4 * wp, wp, wt, full[0], full[1], n)
                D._pair25_kernel(src, 0, 4 * wp, wp, wt, part[0], part[1], n, jlo, jhi, D._pad_zero(rz, 0, jlo),
                                 D._pad_zero(rz, 0, max(jlo, 1) - 1), D._pad_zero(rz, min(jhi, 5), 5),
                                 D._pad_zero(rz, jhi - 1, 5))
                for f, p in zip(full, part):
                    np.testing.assert_array_equal(p.view(np.uint32), f.view(np.uint32))
        # one row: five kernel rows, those outside [klo, khi) zero
        tab = np.array([ky * wp + kx for ky in range(5) for kx in range(5)], np.int64)
        for klo in range(5):
            for khi in range(klo + 1, 6):
                plane = np.zeros((5, wp), np.float32)
                if not zero_input:
                    plane[klo: khi] = rng.standard_normal((khi - klo, wp)).astype(np.float32)
                for fn in (D._dw25_kernel, D._dw25_rows_kernel):
                    full, part = np.full(n, np.nan, np.float32), np.full(n, np.nan, np.float32)
                    fn(plane.reshape(-1), 0, tab, wt, full, n)
                    fn(plane.reshape(-1), 0, tab, wt, part, n, klo, khi, D._pad_zero(rz, 0, klo),
                       D._pad_zero(rz, khi, 5))
                    np.testing.assert_array_equal(part.view(np.uint32), full.view(np.uint32))


@pytest.mark.parametrize("h,pads,strides", [
    (1, [2, 2, 2, 2], [1, 1]), (2, [2, 2, 2, 2], [1, 1]), (3, [2, 2, 2, 2], [1, 1]), (3, [1, 2, 2, 1], [1, 1]),
    (2, [1, 2, 2, 2], [1, 1]), (3, [2, 0, 1, 1], [2, 1]), (2, [2, 2, 2, 2], [2, 1]), (3, [2, 2, 2, 2], [1, 2]),
    (3, [1, 1, 2, 2], [2, 2]), (1, [2, 1, 2, 1], [2, 2]), (3, [1, 0, 1, 0], [1, 1]), (3, [2, 0, 0, 0], [1, 1]),
])
def test_planes_of_few_rows(h, pads, strides):
    """5x5 kernels on planes of 1-3 rows (too wide to block: the one-channel paths, whose padding-only kernel rows
    are skipped), pads 0 to 2, uneven, strides (1, 1), (2, 1), (1, 2), (2, 2), an odd width and 3 channels: against
    float64 numpy with dense, codebook and int8 weights and a fused activation; and on an input of zeros with a bias
    of -0.0 (which keeps a sum's sign through the store) the sign of each zero is that of the full sum (every tap
    summed): -0.0 for a channel whose weights are all negative, +0.0 for one with a positive weight in a padding-only
    row, NaN for one with an infinite weight there."""
    attrs = {"group": 3, "pads": pads, "strides": strides}
    x_shape = (1, 3, h, 67)
    for kind in DW_KINDS:
        rng = np.random.default_rng([h, sum(pads), strides[0], DW_KINDS.index(kind)])
        w = make_weight(kind, (3, 1, 5, 5), rng, density=0.8)
        x = rng.standard_normal(x_shape).astype(np.float32)
        bias = rng.standard_normal(3).astype(np.float32)
        ref = reference_for(x, w, bias, attrs)
        check_close(run_conv(w, x, bias, attrs), ref)
        out = np.full(ref.shape, np.nan, np.float32)
        C.conv(x, C.prepare_conv(w, 3), bias, attrs, out, None, False, (ACT_CLIP, -0.5, 0.75))
        check_close(out, np.clip(ref, -0.5, 0.75))
    wz = -np.abs(np.random.default_rng(h).standard_normal((3, 1, 5, 5))).astype(np.float32) - 0.5
    wz[1, 0, 0, 2] = 1.0  # kernel row 0: padding only for the first output rows when pt = 2
    wz[2, 0, 4, 1] = np.inf  # kernel row 4: padding only for the last rows when pb = 2
    got = run_conv(DenseWeight(wz), np.zeros(x_shape, np.float32), np.full(3, -0.0, np.float32), attrs)
    assert np.all(got[0, 0] == 0) and np.all(np.signbit(got[0, 0]))  # every product -0.0
    assert np.all(got[0, 1] == 0) and not np.any(np.signbit(got[0, 1]))  # one +0.0 product in each sum
    assert np.all(np.isnan(got[0, 2]))  # inf * 0 in each sum
