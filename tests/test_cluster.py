"""Tests for packer/cluster.py: 1-D k-means against a brute-force Lloyd and the optimal partition; weight sharing."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgepack.packer.cluster import choose_row_scales, dequantize, kmeans_1d, quantize
from edgepack.packer.prune import mask_by_sparsity


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    # argmin takes the lowest index on ties: the lower centroid, as kmeans_1d documents.
    return np.argmin(np.abs(x[:, None] - c[None, :].astype(np.float64)), axis=1)


def _reference_kmeans(x: np.ndarray, c0: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lloyd with a full distance matrix; empty clusters dropped, final labels against float32 centroids."""
    x = x.astype(np.float64)
    c = np.unique(c0.astype(np.float64))
    for _ in range(max_iter):
        lab = _nearest(x, c)
        new_c = np.array([x[lab == j].mean() for j in np.unique(lab)])
        done = new_c.size == c.size and np.array_equal(new_c, c)
        c = new_c
        if done:
            break
    c32 = np.unique(c.astype(np.float32))
    lab = _nearest(x, c32)
    used = np.unique(lab)
    return c32[used], np.searchsorted(used, lab)


def _sse(x, c, labels):
    return float(np.sum((x.astype(np.float64) - c.astype(np.float64)[labels]) ** 2))


def _optimal_sse(x: np.ndarray, k: int) -> float:
    """Optimal 1-D k-means cost: the best clusters are contiguous runs of the sorted values."""
    s = np.sort(x.astype(np.float64))
    best = np.inf
    for n_groups in range(1, min(k, s.size) + 1):
        for cuts in itertools.combinations(range(1, s.size), n_groups - 1):
            parts = np.split(s, cuts)
            best = min(best, sum(float(np.sum((p - p.mean()) ** 2)) for p in parts))
    return best


# --- kmeans_1d -------------------------------------------------------------------------------------------------


def test_linear_init_positions():
    x = np.linspace(0.0, 1.0, 101, dtype=np.float32)
    c, labels = kmeans_1d(x, 5, init="linear", max_iter=0)
    np.testing.assert_array_equal(c, np.float32([0.0, 0.25, 0.5, 0.75, 1.0]))
    np.testing.assert_array_equal(labels, _nearest(x.astype(np.float64), c))


def test_density_init_positions():
    x = np.arange(100, dtype=np.float32)
    c, _ = kmeans_1d(x, 4, init="density", max_iter=0)
    np.testing.assert_array_equal(c, np.float32([12.375, 37.125, 61.875, 86.625]))


def test_random_init_draws_distinct_data_values():
    x = np.random.default_rng(1).normal(size=300).astype(np.float32)
    c, _ = kmeans_1d(x, 16, init="random", seed=7, max_iter=0)
    assert c.size == 16 and np.all(np.diff(c) > 0)
    assert np.isin(c, x).all()
    c_other, _ = kmeans_1d(x, 16, init="random", seed=8, max_iter=0)
    assert not np.array_equal(c, c_other)


@pytest.mark.parametrize("init", ["linear", "random", "density"])
def test_deterministic(init):
    x = np.random.default_rng(2).normal(size=5000).astype(np.float32)
    a = kmeans_1d(x, 32, init=init, seed=3)
    b = kmeans_1d(x.copy(), 32, init=init, seed=3)
    assert a[0].dtype == np.float32 and a[0].tobytes() == b[0].tobytes()
    assert a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("init", ["linear", "random", "density"])
def test_matches_brute_force_lloyd(seed, init):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=120), rng.normal(3.0, 0.3, size=40)]).astype(np.float32)
    k = int(rng.integers(2, 9))
    c, labels = kmeans_1d(x, k, init=init, seed=seed, max_iter=30)
    c0, _ = kmeans_1d(x, k, init=init, seed=seed, max_iter=0)  # the same starting points
    rc, rlabels = _reference_kmeans(x, c0, 30)
    np.testing.assert_allclose(c, rc, rtol=1e-6)
    np.testing.assert_array_equal(labels, rlabels)


@settings(max_examples=40, deadline=None)
@given(
    x=st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=7).map(lambda v: np.array(v, np.float32)),
    k=st.integers(1, 3),
)
def test_quality_vs_optimum_on_tiny_inputs(x, k):
    c, labels = kmeans_1d(x, k)
    assert c.size <= k and np.all(np.diff(c) > 0) and set(np.unique(labels)) == set(range(c.size))
    sse = _sse(x, c, labels)
    assert sse >= _optimal_sse(x, k) - 1e-9
    # Lloyd never does worse than its starting centroids (up to the float32 rounding of the result).
    c0, l0 = kmeans_1d(x, k, max_iter=0)
    assert sse <= _sse(x, c0, l0) * (1 + 1e-6) + 1e-12
    np.testing.assert_array_equal(labels, _nearest(x.astype(np.float64), c))


def test_reaches_optimum_on_separated_clusters():
    rng = np.random.default_rng(4)
    x = np.concatenate([rng.uniform(-0.1, 0.1, 3), rng.uniform(4.9, 5.1, 2), rng.uniform(9.9, 10.1, 3)])
    x = x.astype(np.float32)
    c, labels = kmeans_1d(x, 3)
    assert _sse(x, c, labels) == pytest.approx(_optimal_sse(x, 3), rel=1e-6)


def test_empty_clusters_are_dropped_or_reseeded():
    x = np.float32([0.0, 1.0, 2.0, 60.0, 100.0])
    # linear start over the occupied range (the hole 2..60 cut out): 0, 72, 86, 100; nobody is nearest
    # to 86
    c, labels = kmeans_1d(x, 4, reseed=False)
    np.testing.assert_array_equal(c, np.float32([1.0, 60.0, 100.0]))
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 2])
    # by default the dropped entry goes back into the cluster with the largest error: {0, 1, 2} splits
    c, labels = kmeans_1d(x, 4)
    assert c.size == 4
    assert _sse(x, c, labels) == pytest.approx(_optimal_sse(x, 4))


def test_reseeding_spends_every_entry_on_outliers_and_bulk():
    """Linear initialisation over a range stretched by a few outliers leaves most entries empty; re-seeding gives
    them back to the bulk (PP-OCRv4 rec's conv2d_174: 114 of 256 entries used, weight error 8.5% -> 256, 0.85%)."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(20000) * 0.4, [22.9, -11.8, 5.2, -5.1]]).astype(np.float32)
    c0, l0 = kmeans_1d(x, 64, reseed=False)
    c1, l1 = kmeans_1d(x, 64)
    assert c0.size < 40 and c1.size == 64
    assert np.all(np.isin(np.float32([22.9, -11.8]), c1))  # the rare large weights keep their own entries
    assert _sse(x, c1, l1) < 0.2 * _sse(x, c0, l0)


def test_linear_init_skips_the_pruning_hole():
    rng = np.random.default_rng(11)
    w = rng.normal(size=20000)
    kept = w[np.abs(w) > 1.5]  # a pruned layer: nothing in (-1.5, 1.5)
    c, labels = kmeans_1d(kept, 31)
    assert c.size == 31  # every centroid is used
    assert not np.any((c > -1.5) & (c < 1.5))


@pytest.mark.parametrize("k", [5, 8, 256])
def test_few_distinct_values_reconstruct_exactly(k):
    rng = np.random.default_rng(5)
    distinct = rng.normal(size=5).astype(np.float32)
    x = rng.choice(distinct, size=(20, 10))
    c, labels = kmeans_1d(x, k)
    np.testing.assert_array_equal(c, np.sort(distinct))
    assert labels.shape == x.shape
    np.testing.assert_array_equal(c[labels], x)


def test_edge_inputs():
    c, labels = kmeans_1d(np.zeros(0, np.float32), 4)
    assert c.size == 0 and labels.size == 0
    c, labels = kmeans_1d(np.full(10, 0.25, np.float32), 1)
    np.testing.assert_array_equal(c, [0.25])
    c, _ = kmeans_1d(np.float32([1, 2, 3, 4]), 1)
    np.testing.assert_array_equal(c, [2.5])
    for bad in (dict(k=0), dict(k=2, init="kmeans++"), dict(k=2, max_iter=-1)):
        with pytest.raises(ValueError):
            kmeans_1d(np.float32([1, 2, 3]), **bad)
    with pytest.raises(ValueError, match="finite"):
        kmeans_1d(np.float32([1, np.inf]), 2)


# --- quantize / dequantize -------------------------------------------------------------------------------------


def _weights(shape=(24, 50), seed=0):
    return (np.random.default_rng(seed).normal(size=shape) * 0.05).astype(np.float32)


@pytest.mark.parametrize("bits", [1, 2, 4, 6])
def test_reserve_zero(bits):
    w = _weights()
    mask = mask_by_sparsity(w, 0.7)
    codebook, codes = quantize(w, mask, bits, reserve_zero=True)
    assert codebook.dtype == np.float32 and codes.dtype == np.uint8 and codes.shape == w.shape
    assert codebook[0] == 0.0 and not np.signbit(codebook[0])
    assert 2 <= codebook.size <= 2**bits
    assert np.all(codes[~mask] == 0) and np.all(codes[mask] >= 1)
    assert set(np.unique(codes[mask])) == set(range(1, codebook.size))  # every stored centroid is used
    # Kept entries decode to their nearest non-reserved centroid.
    deq = dequantize(codebook, codes)
    nearest = np.min(np.abs(w[mask][:, None].astype(np.float64) - codebook[1:][None, :]), axis=1)
    np.testing.assert_allclose(np.abs(deq[mask] - w[mask]), nearest, atol=1e-7)


def test_one_centroid_codebooks():
    w = _weights()
    mask = mask_by_sparsity(w, 0.5)
    codebook, codes = quantize(w, mask, 1, reserve_zero=True)
    assert codebook.size == 2
    assert codebook[1] == pytest.approx(np.mean(w[mask], dtype=np.float64), rel=1e-6)
    np.testing.assert_array_equal(codes, mask.astype(np.uint8))

    const = np.full((3, 4, 2), 0.37, np.float32)
    codebook, codes = quantize(const, None, 3, reserve_zero=False)
    np.testing.assert_array_equal(codebook, np.float32([0.37]))
    assert not codes.any()
    np.testing.assert_array_equal(dequantize(codebook, codes), const)
    codebook, codes = quantize(const, None, 3, reserve_zero=True)
    np.testing.assert_array_equal(codebook, np.float32([0.0, 0.37]))
    assert np.all(codes == 1)


def test_no_kept_entries():
    w = _weights((4, 5))
    codebook, codes = quantize(w, np.zeros(w.shape, bool), 4, reserve_zero=True)
    np.testing.assert_array_equal(codebook, [0.0])
    assert codes.shape == w.shape and not codes.any()


def test_without_reserve_zero_removed_entries_take_the_centroid_nearest_zero():
    w = _weights()
    mask = mask_by_sparsity(w, 0.6)
    codebook, codes = quantize(w, mask, 3, reserve_zero=False)
    assert codebook.size <= 8
    assert np.all(codes[~mask] == np.argmin(np.abs(codebook)))


def test_wide_codes_and_exact_small_tensor():
    w = _weights((8, 40))
    codebook, codes = quantize(w, None, 9, reserve_zero=False)
    assert codes.dtype == np.uint16
    np.testing.assert_array_equal(dequantize(codebook, codes), w)  # 320 values < 512 centroids: exact


def test_quantize_deterministic():
    w = _weights((30, 70), seed=9)
    mask = mask_by_sparsity(w, 0.8)
    for init in ("linear", "random", "density"):
        a = quantize(w, mask, 5, reserve_zero=True, init=init, seed=1)
        b = quantize(w, mask, 5, reserve_zero=True, init=init, seed=1)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


def test_row_scales_keep_every_row_accurate():
    rng = np.random.default_rng(6)
    rows = 16
    w = (rng.normal(size=(rows, 3, 3, 3)) * np.logspace(-12, 3, rows)[:, None, None, None]).astype(np.float32)
    scales = choose_row_scales(w)
    codebook, codes = quantize(w, None, 6, reserve_zero=False, row_scales=scales)
    deq = dequantize(codebook, codes, scales)

    def row_errors(d):
        return np.linalg.norm((d - w).reshape(rows, -1), axis=1) / np.linalg.norm(w.reshape(rows, -1), axis=1)

    assert np.max(row_errors(deq)) < 0.05
    g_codebook, g_codes = quantize(w, None, 6, reserve_zero=False)
    global_err = row_errors(dequantize(g_codebook, g_codes))
    assert global_err[0] > 0.9  # one global codebook maps the 1e-12 row to (almost) nothing
    assert np.sum(global_err > 0.5) >= 5


def test_row_scales_with_zero_rows():
    w = _weights((5, 6))
    w[2] = 0.0
    mask = mask_by_sparsity(w, 0.3)
    scales = choose_row_scales(w)
    assert scales[2] == 0.0
    codebook, codes = quantize(w, mask, 4, reserve_zero=True, row_scales=scales)
    deq = dequantize(codebook, codes, scales)
    assert not deq[2].any() and not deq[~mask].any()
    bad_scales = scales.copy()
    bad_scales[0] = 0.0
    with pytest.raises(ValueError, match="row 0 has scale 0"):
        quantize(w, mask, 4, reserve_zero=True, row_scales=bad_scales)


def test_choose_row_scales():
    w = np.arange(24, dtype=np.float32).reshape(4, 3, 2) - 12
    w[3] = 0.0
    np.testing.assert_array_equal(choose_row_scales(w), np.float32([12, 6, 5, 0]))
    assert choose_row_scales(w).dtype == np.float32


def test_dequantize_is_float32_codebook_times_float32_scale():
    rng = np.random.default_rng(8)
    codebook = rng.normal(size=7).astype(np.float32)
    codes = rng.integers(0, 7, size=(3, 2, 4)).astype(np.uint8)
    scales = rng.uniform(0.1, 3, size=3).astype(np.float32)
    out = dequantize(codebook, codes, scales)
    assert out.dtype == np.float32
    for idx in np.ndindex(codes.shape):
        assert out[idx] == np.float32(codebook[codes[idx]]) * np.float32(scales[idx[0]])
    np.testing.assert_array_equal(dequantize(codebook, codes), codebook[codes])
    with pytest.raises(ValueError, match="codes must be in"):
        dequantize(codebook, np.uint8([7]))


def test_quantize_rejects_bad_arguments():
    w = _weights((3, 4))
    with pytest.raises(ValueError, match="bits"):
        quantize(w, None, 0, reserve_zero=True)
    with pytest.raises(ValueError, match="mask"):
        quantize(w, np.ones((4, 3), bool), 4, reserve_zero=True)
    with pytest.raises(ValueError, match="row_scales"):
        quantize(w, None, 4, reserve_zero=True, row_scales=np.ones(4, np.float32))
