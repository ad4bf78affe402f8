"""The sparse (CSR + codebook) Conv driver, runtime/ops/conv_sparse.py: against a float64 numpy convolution and
onnxruntime, on the cases its loops split differently (entries per row around its 8 / 4 / 1 passes, empty rows, no
entries at all, tiles of rows outside and channels inside, depthwise channels outside, groups, strides, padding,
dilation, 1-D, batches, scales, bias, fused activation, epilogue chain) and serial = parallel bit for bit."""
import numpy as np
import pytest

from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops import conv_sparse as S
from edgepack.runtime.ops.elementwise import ACT_CLIP
from edgepack.runtime.weights import SparseCodebookWeight
from test_conv import check_close, make_weight, reference_for, run_conv


def reference(x, w, bias, attrs):
    """test_conv.reference_for, a 1-D convolution as the 2-D one with H = 1."""
    if x.ndim == 4:
        return reference_for(x, w, bias, attrs)
    d = w.to_dense()[:, :, None, :]
    w2 = SparseCodebookWeight(d.shape, w.codebook, w.indptr, w.columns, w.codes, w.row_scales)
    pads = attrs.get("pads", [0, 0])
    a2 = dict(attrs, pads=[0, pads[0], 0, pads[1]], strides=[1] + list(attrs.get("strides", [1])))
    return reference_for(x[:, :, None, :], w2, bias, a2)[:, :, 0, :]


def weight_with_counts(shape, counts, rng, scales=True):
    """A sparse weight whose row r holds exactly counts[r] entries (random columns, nonzero codes)."""
    cout, cols = shape[0], int(np.prod(shape[1:]))
    codebook = np.concatenate([[0.0], rng.standard_normal(15)]).astype(np.float32)
    indptr = np.zeros(cout + 1, np.int32)
    np.cumsum(counts, out=indptr[1:])
    columns = np.concatenate([np.sort(rng.choice(cols, k, replace=False)) for k in counts]).astype(np.int32)
    codes = rng.integers(1, 16, int(indptr[-1])).astype(np.uint8)
    s = (10.0 ** rng.uniform(-2, 2, cout)).astype(np.float32) if scales else None
    return SparseCodebookWeight(shape, codebook, indptr, columns, codes, s)


# (x shape, weight shape, attrs)
CASES = [
    ((1, 16, 9, 11), (6, 16, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 12, 10, 10), (5, 12, 1, 1), {}),
    ((1, 8, 13, 12), (4, 8, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 1]}),
    ((1, 6, 12, 12), (6, 2, 3, 3), {"group": 3, "pads": [1, 1, 1, 1], "dilations": [2, 1]}),
    ((1, 7, 11, 9), (7, 1, 5, 5), {"group": 7, "pads": [2, 2, 2, 2]}),  # depthwise: channels outside
    ((1, 5, 10, 10), (5, 1, 3, 3), {"group": 5, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 9, 17), (4, 9, 5), {"pads": [2, 1], "strides": [2]}),  # 1-D
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("counts", ["passes", "empty", "one"])
def test_entries_per_row_around_the_passes(case, counts):
    """Rows of 0, 1, 3, 4, 5, 7, 8, 9, 12, 17 entries (every mix of the 8-, 4- and 1-entry passes), rows with no
    entry (bias only), a single entry in the whole weight."""
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng([case, len(counts)])
    cout, cols = w_shape[0], int(np.prod(w_shape[1:]))
    if counts == "passes":
        n = [min(cols, k) for k in (0, 1, 3, 4, 5, 7, 8, 9, 12, 17)]
        per_row = [n[i % len(n)] for i in range(cout)]
    elif counts == "empty":
        per_row = [0 if i % 2 else min(cols, 9) for i in range(cout)]
    else:
        per_row = [0] * cout
        per_row[cout // 2] = 1
    w = weight_with_counts(w_shape, per_row, rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    check_close(run_conv(w, x, bias, attrs), reference(x, w, bias, attrs))
    # serial and parallel: the same bits (each output sums its entries in the same order)
    np.testing.assert_array_equal(run_conv(w, x, bias, attrs).view(np.uint32),
                                  run_conv(w, x, bias, attrs, parallel=True).view(np.uint32))


def test_no_entries_at_all_gives_the_bias():
    rng = np.random.default_rng(1)
    w = weight_with_counts((5, 4, 3, 3), [0] * 5, rng)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    out = run_conv(w, x, bias, {"pads": [1, 1, 1, 1]})
    np.testing.assert_array_equal(out, np.broadcast_to(bias[None, :, None, None], out.shape))
    assert np.all(run_conv(w, x, None, {"pads": [1, 1, 1, 1]}) == 0)


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("tile", [1, 2 * 64])
def test_tiles_outside_give_the_untiled_bits(monkeypatch, case, tile):
    """Tiles of output rows (conv.py TAPS_TILE_FLOATS: one row, or a few rows with a shorter last tile) with the
    channels inside give the bits of one tile per plane."""
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng([case, 3])
    w = make_weight("sparse", w_shape, rng, density=0.3, fillers=0.2)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    whole = run_conv(w, x, bias, attrs)
    monkeypatch.setattr(C, "TAPS_TILE_FLOATS", tile)
    for parallel in (False, True):
        tiled = run_conv(w, x, bias, attrs, parallel)
        np.testing.assert_array_equal(tiled.view(np.uint32), whole.view(np.uint32))
    check_close(whole, reference(x, w, bias, attrs))


def test_fused_clip_and_chain_match_unfused():
    rng = np.random.default_rng(5)
    w = make_weight("sparse", (8, 6, 3, 3), rng, density=0.3)
    x = rng.standard_normal((1, 6, 20, 20)).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1]}
    plain = run_conv(w, x, bias, attrs)
    prepared = C.prepare_conv(w, 1)
    out = np.empty_like(plain)
    C.conv(x, prepared, bias, attrs, out, act=(ACT_CLIP, np.float32(-0.5), np.float32(0.5)))
    np.testing.assert_array_equal(out, np.clip(plain, np.float32(-0.5), np.float32(0.5)))
    chain = C.EpilogueChain(np.array([[C.CH_MUL, 2.0, 0, 0], [C.CH_ADD, 1.0, 0, 0]], np.float32), ("m", "a"))
    C.conv(x, prepared, bias, attrs, out, act=chain)
    np.testing.assert_array_equal(out, plain * np.float32(2.0) + np.float32(1.0))


def test_bind_runs_the_sparse_driver():
    rng = np.random.default_rng(2)
    w = make_weight("sparse", (4, 3, 3, 3), rng, density=0.3)
    x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    out = np.empty((1, 4, 6, 6), np.float32)
    fn, _ = C.bind_conv(x, C.prepare_conv(w, 1), None, {}, out)
    assert fn is S.kernel(False)
    fn, _ = C.bind_conv(x, C.prepare_conv(w, 1), None, {}, out, parallel=True)
    assert fn is S.kernel(True)


def test_pruned_magnitude_weight_matches_onnxruntime():
    """A 3x3 weight pruned to 30% by magnitude (as the packer prunes), 8-bit codebook, against onnxruntime on the
    decoded weight."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(9)
    dense = rng.standard_normal((24, 16, 3, 3)).astype(np.float32)
    flat = dense.reshape(24, -1)
    keep = np.abs(flat) >= np.quantile(np.abs(flat), 0.7)
    codebook = np.concatenate([[0.0], np.linspace(-3, 3, 255)]).astype(np.float32)
    r, c = np.nonzero(keep)
    codes = (np.abs(codebook[1:, None] - flat[r, c][None, :]).argmin(axis=0) + 1).astype(np.uint8)
    indptr = np.zeros(25, np.int32)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    w = SparseCodebookWeight(dense.shape, codebook, indptr, c.astype(np.int32), codes)
    x = rng.standard_normal((1, 16, 30, 26)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1], "strides": [1, 2]}
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 2])
    g = helper.make_graph([node], "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w.to_dense(), "W"), numpy_helper.from_array(bias, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    got = run_conv(w, x, bias, attrs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _planner_pick(w, x_shape):
    """The holding the planner picks for a Conv with this weight and input, without a budget (runtime/layers.py)."""
    from edgepack.runtime import layers
    node = {"name": "conv", "op": "Conv", "attrs": {}, "inputs": ["x", "W"], "outputs": ["y"]}
    out_shape = C.conv_output_shape(x_shape, w.shape, {})
    spec = layers.LayerSpec(node, "W", w, {}, None, [x_shape, w.shape], out_shape, np.zeros(0, np.uint8))
    # the two holdings in question (make_options would also build csr and streamed, which need the file's encoding)
    dense = min(spec._seconds("dense", None, form) for form in ("", "winograd") if form == "" or
                spec._winograd_eligible())
    return "compact" if spec._seconds("compact", spec.build("compact")) < dense else "dense"


def test_planner_holds_pruned_1x1_compact_on_large_planes_dense_on_small():
    """At density 0.3 the sparse kernel beat BLAS on 1x1 convolutions with a few thousand output positions and lost
    on 7x7 planes (benchmarks/sparse_conv.py on the corpus nets); the cost model ranks them so."""
    rng = np.random.default_rng(4)
    assert _planner_pick(make_weight("sparse", (64, 64, 1, 1), rng, density=0.3), (1, 64, 56, 56)) == "compact"
    assert _planner_pick(make_weight("sparse", (512, 256, 1, 1), rng, density=0.3), (1, 256, 7, 7)) == "dense"


@pytest.mark.parametrize("width", [1, 5, 15, 16, 17, 31, 33, 47, 49, 63, 64, 65, 127, 128, 143, 196, 200, 257])
def test_plane_widths_around_the_vector_passes(width):
    """1x1 convolutions over planes of 1 x width positions: the dot products (one position), the scalar loop (< 16),
    one pass of 1-4 vectors with the last overlapping (16-63), passes of 64 then 1-4 more (64+), of 128 (a block of
    two channels) then one of 64 and 1-4 more (128+); rows of 0-40 entries, paired with rows of other counts; against
    the float64 reference, serial = parallel bit for bit."""
    rng = np.random.default_rng(width)
    w = weight_with_counts((12, 40, 1, 1), [0, 1, 3, 7, 8, 9, 13, 17, 25, 33, 39, 40], rng)
    x = rng.standard_normal((1, 40, 1, width)).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    got = run_conv(w, x, bias, {})
    check_close(got, reference(x, w, bias, {}))
    np.testing.assert_array_equal(got.view(np.uint32), run_conv(w, x, bias, {}, parallel=True).view(np.uint32))


def test_sparse_scratch_has_no_decoded_row_buffers():
    """The sparse driver reads its blocks directly: conv.py reserves it no decoded-row buffers (8 + 4 bytes a column
    per slot, the dense one-channel driver's), and an accumulator of one tile of rows per channel of a block (two),
    not the plane."""
    x_shape, w_shape = (1, 64, 56, 56), (64, 64, 3, 3)
    g = C.geometry(x_shape, w_shape, {"pads": [1, 1, 1, 1]})
    geo, nbytes, _ = C._layout(g, "sparse", parallel=True)
    cols, slots, pitch = 64 * 9, int(geo[C._SLOTS]), int(geo[C._PITCH])
    plane = int(geo[C._PLEN])
    assert int(geo[C._ACC_LEN]) == S.ROWS * int(geo[C._TROWS]) * pitch and int(geo[C._TROWS]) < 56
    assert nbytes == 8 * cols + 4 * slots * (plane + int(geo[C._ACC_LEN]))


def _blocks_to_dense(a, cout, cols, codebook):
    """The weight conv_sparse.prepare's blocks hold, decoded (each block's union columns, ROWS codes each)."""
    out = np.zeros((cout, cols), np.float32)
    blocks, indptr, columns, codes = a["blocks"], a["indptr"], a["columns"], a["codes"]
    assert codes.shape[0] == S.ROWS * columns.shape[0]
    for p in range(blocks.shape[0] - 1):
        u = columns[indptr[p]: indptr[p + 1]]
        assert np.all(np.diff(u) > 0)  # increasing, no column twice
        for r in range(blocks[p + 1] - blocks[p]):
            out[blocks[p] + r, u] = codebook[codes[S.ROWS * np.arange(indptr[p], indptr[p + 1]) + r]]
    return out


@pytest.mark.parametrize("cout, group", [(1, 1), (7, 1), (8, 2), (9, 3), (6, 6)])
def test_blocks_pair_channels_of_one_group(cout, group):
    """prepare(): blocks of two consecutive channels of one group (a single channel where the group has an odd count
    or the next channel is in another group), the union of their columns with code 0 where a row has no entry
    (rows that share columns, disjoint rows, empty rows, a row of every column); decoded, the weight itself, and a
    single channel's second codes all 0."""
    rng = np.random.default_rng([cout, group])
    cols = 10
    counts = [(0, 3, 10, 1, 5, 0, 7, 2, 9)[i % 9] for i in range(cout)]
    w = weight_with_counts((cout, cols, 1, 1), counts, rng, scales=False)
    prepared = C.prepare_conv(w, group)
    a = prepared.arrays
    blocks = a["blocks"]
    assert blocks[0] == 0 and blocks[-1] == cout and np.all(np.diff(blocks) >= 1) and np.all(np.diff(blocks) <= 2)
    group_of = np.arange(cout) // (cout // group)
    for p in range(blocks.shape[0] - 1):
        co0, k = blocks[p], blocks[p + 1] - blocks[p]
        assert group_of[co0] == group_of[co0 + k - 1]
        if k == 1:  # a single only where the next channel is another group's (or there is none)
            assert co0 + 1 == cout or group_of[co0 + 1] != group_of[co0]
            assert np.all(a["codes"][S.ROWS * a["indptr"][p] + 1: S.ROWS * a["indptr"][p + 1]: S.ROWS] == 0)
    np.testing.assert_array_equal(_blocks_to_dense(a, cout, cols, a["codebook"]), w.to_dense().reshape(cout, cols))


# odd channel counts and groups: blocks of two and singles, in both drivers (tiles outside; depthwise with a channel
# multiplier: blocks outside, a pair sharing its group's copied plane)
BLOCK_CASES = [
    ((1, 6, 9, 40), (7, 6, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 6, 5, 70), (9, 2, 1, 3), {"group": 3, "pads": [0, 1, 0, 1]}),
    ((1, 4, 9, 33), (8, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    ((1, 3, 10, 21), (9, 1, 3, 3), {"group": 3, "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ((1, 5, 1, 1), (7, 5, 1, 1), {}),  # one position: the dot products, odd entry counts
]


@pytest.mark.parametrize("case", range(len(BLOCK_CASES)))
def test_blocks_and_singles_against_the_reference(case):
    x_shape, w_shape, attrs = BLOCK_CASES[case]
    rng = np.random.default_rng([case, 11])
    cols = int(np.prod(w_shape[1:]))
    w = weight_with_counts(w_shape, [min(cols, (0, 1, 2, 3, cols, 5)[i % 6]) for i in range(w_shape[0])], rng)
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    got = run_conv(w, x, bias, attrs)
    check_close(got, reference(x, w, bias, attrs))
    np.testing.assert_array_equal(got.view(np.uint32), run_conv(w, x, bias, attrs, parallel=True).view(np.uint32))
