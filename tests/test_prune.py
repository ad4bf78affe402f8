"""Tests for packer/prune.py: exact removal counts, deterministic ties, Han's quality x std rule."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from edgepack.packer.prune import mask_by_sparsity, mask_by_std, sparsity_of


def _reference_mask(w: np.ndarray, sparsity: float) -> np.ndarray:
    # Plain Python: sort flat indices by (|w|, index), remove the first round(s * n).
    flat = [abs(float(v)) for v in w.ravel()]
    order = sorted(range(len(flat)), key=lambda i: (flat[i], i))
    keep = np.ones(len(flat), dtype=bool)
    keep[order[: round(sparsity * len(flat))]] = False
    return keep.reshape(w.shape)


@settings(max_examples=60, deadline=None)
@given(
    w=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7),
        # Few distinct magnitudes, so ties and exact zeros are common.
        elements=st.sampled_from([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, 1e-3]),
    ),
    sparsity=st.floats(0.0, 1.0),
)
def test_matches_reference_and_exact_count(w, sparsity):
    keep = mask_by_sparsity(w, sparsity)
    assert keep.dtype == np.bool_ and keep.shape == w.shape
    assert int((~keep).sum()) == round(sparsity * w.size)
    np.testing.assert_array_equal(keep, _reference_mask(w, sparsity))


def test_ties_broken_by_flat_index():
    w = np.array([[1.0, -1.0], [1.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(mask_by_sparsity(w, 0.5), [[False, False], [True, True]])
    np.testing.assert_array_equal(mask_by_sparsity(w, 0.75), [[False, False], [False, True]])


def test_zeros_removed_first():
    w = np.array([0.3, 0.0, 0.1, -0.0, 0.2], dtype=np.float32)
    np.testing.assert_array_equal(mask_by_sparsity(w, 0.2), [True, False, True, True, True])
    np.testing.assert_array_equal(mask_by_sparsity(w, 0.4), [True, False, True, False, True])
    np.testing.assert_array_equal(mask_by_sparsity(w, 0.6), [True, False, False, False, True])


def test_bounds():
    w = np.arange(1, 11, dtype=np.float32)
    assert mask_by_sparsity(w, 0.0).all()
    assert not mask_by_sparsity(w, 1.0).any()
    assert mask_by_sparsity(np.zeros((0, 3), np.float32), 0.5).shape == (0, 3)


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf")])
def test_rejects_sparsity_out_of_range(bad):
    with pytest.raises(ValueError, match="sparsity must be in"):
        mask_by_sparsity(np.ones(4, np.float32), bad)


def test_rejects_non_finite_weights():
    with pytest.raises(ValueError, match="finite"):
        mask_by_sparsity(np.array([1.0, np.nan], np.float32), 0.5)


@pytest.mark.parametrize("quality", [0.0, 0.5, 1.0, 2.5])
def test_han_rule(quality):
    w = np.random.default_rng(3).normal(size=(40, 30)).astype(np.float32)
    expected = np.abs(w.astype(np.float64)) > quality * np.sqrt(np.mean((w - w.mean(dtype=np.float64)) ** 2))
    np.testing.assert_array_equal(mask_by_std(w, quality), expected)


def test_han_rule_is_strict():
    # std of [-1, 1] is 1: with quality 1, entries of magnitude exactly 1 are removed.
    w = np.array([-1.0, 1.0, -1.0, 1.0], dtype=np.float32)
    assert not mask_by_std(w, 1.0).any()
    assert mask_by_std(w, 0.999).all()
    # quality 0 keeps every nonzero weight and removes exact zeros.
    np.testing.assert_array_equal(mask_by_std(np.array([0.0, 2.0, -0.0], np.float32), 0.0), [False, True, False])


def test_han_rule_rejects_negative_quality():
    with pytest.raises(ValueError, match="quality"):
        mask_by_std(np.ones(3, np.float32), -1.0)


def test_sparsity_of():
    assert sparsity_of(np.array([True, False, False, True])) == 0.5
    assert sparsity_of(np.ones((3, 3), bool)) == 0.0
    assert sparsity_of(np.zeros(0, bool)) == 0.0
    w = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    assert sparsity_of(mask_by_sparsity(w, 0.92)) == pytest.approx(0.92)
    with pytest.raises(ValueError, match="bool"):
        sparsity_of(np.array([1, 0]))
