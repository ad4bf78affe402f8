"""The blocked direct convolution (runtime/ops/conv.py _conv_blocked + conv_blocked.py: four output channels per
pass) against the float64 numpy reference of tests/test_conv.py: dense, codebook and int8 weights, output channels
not a multiple of the block (per group too), strides 1-3, asymmetric pads, dilation, 1-D, batch > 1, the parallel
build, tiles of one row, blocks whose taps are all zero, and the routing (which shapes take the blocked kernel)."""
import numpy as np
import pytest

from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops.conv import conv, conv_output_shape, prepare_conv
from edgepack.runtime.ops.elementwise import ACT_CLIP
from edgepack.runtime.weights import DenseWeight
from test_conv import check_close, make_weight, reference_for, run_conv

KINDS = ("dense", "codebook", "int8")

CASES = [
    ((1, 3, 40, 36), (16, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # a first 3-channel layer
    ((2, 8, 34, 33), (8, 8, 3, 3), {"pads": [1, 1, 1, 1]}),  # 3x3, stride 1, batch 2
    ((1, 6, 35, 37), (7, 6, 3, 3), {"strides": [2, 2], "pads": [0, 1, 2, 1]}),  # cout 7: a partial block
    ((1, 5, 40, 41), (5, 5, 5, 5), {"pads": [2, 2, 2, 2]}),  # cout 5, 5x5
    ((1, 6, 40, 50), (10, 3, 3, 3), {"strides": [3, 2], "pads": [1, 1, 1, 1], "group": 2}),  # 5 per group
    ((1, 4, 36, 36), (8, 4, 3, 3), {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    ((1, 9, 33, 40), (12, 9, 1, 1), {}),  # 1x1 (codebook / int8; dense 1x1 runs BLAS)
    ((1, 4, 40, 38), (4, 4, 1, 1), {"strides": [2, 2], "pads": [1, 0, 0, 1]}),  # 1x1 strided, padded
    ((2, 5, 1200), (6, 5, 7), {"strides": [2], "pads": [3, 2]}),  # 1-D
]


def _reference(x, w, bias, attrs):
    if x.ndim == 4:
        return reference_for(x, w, bias, attrs)
    a = {"strides": [1] + list(attrs.get("strides", [1])), "dilations": [1] + list(attrs.get("dilations", [1]))}
    p = attrs.get("pads", [0, 0])
    a["pads"] = [0, p[0], 0, p[1]]
    w4 = DenseWeight(w.to_dense()[:, :, None, :])
    return reference_for(x[:, :, None, :], w4, bias, a)[:, :, 0, :]


def _is_blocked(w, x_shape, attrs):
    plan = conv_mod._plan(prepare_conv(w, attrs.get("group", 1)), x_shape, attrs, False)
    return bool(plan.geo[conv_mod._BLOCKED])


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_blocked_matches_numpy(monkeypatch, case, kind, parallel):
    monkeypatch.setattr(conv_mod, "BLOCK_MIN_POSITIONS", 0)  # dense weights too on these small planes
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng([case, KINDS.index(kind), parallel])
    w = make_weight(kind, w_shape, rng, density=0.9, wide_scales=kind == "codebook")
    x = rng.standard_normal(x_shape).astype(np.float32)
    bias = rng.standard_normal(w_shape[0]).astype(np.float32)
    if kind == "dense" and len(w_shape) == 4 and w_shape[2:] == (1, 1) and not attrs:
        assert not _is_blocked(w, x_shape, attrs)  # the BLAS product
    else:
        assert _is_blocked(w, x_shape, attrs)
    check_close(run_conv(w, x, bias, attrs, parallel), _reference(x, w, bias, attrs))


@pytest.mark.parametrize("kind", KINDS)
def test_blocked_tiles_of_one_row_and_fused_clip(monkeypatch, kind):
    """Tiles of one output row (the tile loop's boundaries at every row) with a fused Clip give the same answer."""
    monkeypatch.setattr(conv_mod, "BLOCK_TILE_FLOATS", 1)
    monkeypatch.setattr(conv_mod, "BLOCK_MIN_POSITIONS", 0)
    x_shape, w_shape, attrs = CASES[2]
    rng = np.random.default_rng(7)
    w = make_weight(kind, w_shape, rng, density=0.8, wide_scales=False)
    x = rng.standard_normal(x_shape).astype(np.float32)
    prepared = prepare_conv(w, 1)
    assert conv_mod._plan(prepared, x.shape, attrs, False).geo[conv_mod._TROWS] == 1
    out = np.full(conv_output_shape(x.shape, w.shape, attrs), np.nan, np.float32)
    conv(x, prepared, None, attrs, out, None, False, (ACT_CLIP, -0.5, 0.5))
    check_close(out, np.clip(reference_for(x, w, None, attrs), -0.5, 0.5))


def test_blocked_drops_taps_zero_in_every_channel_of_a_block():
    """An input channel whose weights are zero for the four channels of a block is not summed (a pruned layer does
    less work); the other block still reads it. Same answer as the reference."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w[:4, 1] = 0.0  # block 0 never reads input channel 1
    w[:4, 3, 1, :] = 0.0
    x = rng.standard_normal((1, 4, 40, 40)).astype(np.float32)
    attrs = {"pads": [1, 1, 1, 1]}
    dw = DenseWeight(w)
    prepared = prepare_conv(dw, 1)
    plan = conv_mod._plan(prepared, x.shape, attrs, False)
    assert plan.geo[conv_mod._BLOCKED]
    scratch = np.zeros(plan.scratch_bytes, np.uint8)
    tab, obuf, xpad, acc, wbuf = conv_mod._scratch_views_kernel(scratch, plan.geo)
    wb, ob = wbuf[: 4 * 36].reshape(36, 4), obuf[:36]
    e = conv_mod._EMPTY_CODES
    n0 = conv_mod._gather_block_kernel(conv_mod.W_DENSE, 0, 4, prepared.arrays["w2d"], e, conv_mod._EMPTY_F32,
                                       conv_mod._EMPTY_Q, conv_mod._EMPTY_F32, tab, wb, ob)
    n1 = conv_mod._gather_block_kernel(conv_mod.W_DENSE, 4, 4, prepared.arrays["w2d"], e, conv_mod._EMPTY_F32,
                                       conv_mod._EMPTY_Q, conv_mod._EMPTY_F32, tab, wb, ob)
    assert (n0, n1) == (36 - 9 - 3, 36)
    check_close(run_conv(dw, x, None, attrs), reference_for(x, dw, None, attrs))


def test_dense_small_planes_and_depthwise_are_not_blocked():
    rng = np.random.default_rng(4)
    small = DenseWeight(rng.standard_normal((8, 8, 3, 3)).astype(np.float32))
    assert not _is_blocked(small, (1, 8, 20, 20), {"pads": [1, 1, 1, 1]})  # 400 positions: im2col + BLAS
    assert _is_blocked(small, (1, 8, 40, 40), {"pads": [1, 1, 1, 1]})
    dw = DenseWeight(rng.standard_normal((8, 1, 3, 3)).astype(np.float32))
    assert not _is_blocked(dw, (1, 8, 40, 40), {"pads": [1, 1, 1, 1], "group": 8})


def test_accumulator_tiles_do_not_alias_modulo_4k():
    """The four accumulator tiles start 1088 bytes apart modulo 4 KiB (tile_stride), whatever the tile's length,
    and no closer than the tile's length."""
    from edgepack.runtime.ops.conv_blocked import tile_stride

    for n in (1, 271, 272, 273, 1007, 1024, 1296, 2048, 2120, 5000):
        s = tile_stride(n)
        assert n <= s < n + 1024 and (4 * s) % 4096 == 1088


@pytest.mark.parametrize("n", [1, 31, 32, 33, 63, 64, 65, 95, 96, 97, 127, 128, 129, 200, 230])
@pytest.mark.parametrize("ntaps", [0, 1, 5, 9, 27])
def test_tiled_taps_equal_the_taps_kernel_bit_for_bit(n, ntaps):
    """conv_blocked.block_taps_tiled (register tiles of 64 positions where AVX-512 has the registers, else 32, the
    last one overlapping or of 32) gives the bits of block_taps_kernel from zero accumulators: the same FMAs in the
    same order; read-only sources too."""
    from edgepack.runtime.ops.conv_blocked import block_taps_kernel, block_taps_tiled
    from edgepack.runtime.ops.slp import ready
    ready(block_taps_tiled)  # the SLP build conv.py runs
    rng = np.random.default_rng(n * 100 + ntaps)
    src = rng.standard_normal(600).astype(np.float32)
    wblk = rng.standard_normal((max(ntaps, 1), 4)).astype(np.float32)
    oblk = rng.integers(0, 600 - n - 7, max(ntaps, 1)).astype(np.int64)
    want = np.zeros((4, n), np.float32)
    block_taps_kernel(src, 7, wblk, oblk, ntaps, want[0], want[1], want[2], want[3], n)
    for s in (src, src.copy()):
        s.flags.writeable = s is not src
        got = np.full((4, n + 3), np.nan, np.float32)
        block_taps_tiled(s, 7, wblk, oblk, ntaps, got[0], got[1], got[2], got[3], n)
        np.testing.assert_array_equal(got[:, :n].view(np.uint32), want.view(np.uint32))
        assert np.isnan(got[:, n:]).all()


@pytest.mark.parametrize("w", [15, 16, 17, 31, 32, 33, 47, 48, 49, 50, 64, 81])
@pytest.mark.parametrize("pads", [[1, 1, 1, 1], [0, 0, 1, 1], [1, 2, 0, 1]])
def test_stride2_phased_copy_of_wide_rows_matches_numpy(w, pads):
    """The stride-2 phased copy's vector de-interleave (simd_phases.py, 16 and 8 lanes, then the scalar rest) on
    rows long enough to use it, even and odd widths and left pads (which phase takes the even columns), against
    numpy slicing of the padded input; the tail after the plane stays untouched."""
    from test_conv_source import _phases
    rng = np.random.default_rng(w)
    x = rng.standard_normal((1, 2, 5, w)).astype(np.float32)
    attrs = {"strides": [2, 2], "pads": pads}
    prepared = prepare_conv(DenseWeight(rng.standard_normal((4, 2, 3, 3)).astype(np.float32)), 1)
    geo = conv_mod._plan(prepared, x.shape, attrs, False).geo
    assert geo[conv_mod._PHASED] == 1
    plane = int(geo[conv_mod._PLANE])
    for ch in range(2):
        xp = np.full(plane + 5, np.nan, np.float32)
        conv_mod._source_channel_kernel(x.reshape(1, -1), 0, ch, geo, xp)
        xpad = np.pad(x[0, ch], ((pads[0], pads[2]), (pads[1], pads[3])))
        want = _phases(xpad, 2, 2, int(geo[conv_mod._QH]), int(geo[conv_mod._QW]))
        np.testing.assert_array_equal(xp[:plane], want)
        assert np.isnan(xp[plane:]).all()
