"""Magnitude pruning (Deep Compression step 1): keep-masks by target sparsity or by Han's quality x std rule.

A mask is a bool array shaped like the weights: True = kept, False = removed.
"""
from __future__ import annotations

import numpy as np


def _as_finite_float(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"weights must be a floating array, found dtype {w.dtype}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"weights must be finite, found {int(np.sum(~np.isfinite(w)))} NaN/inf values")
    return w


def mask_by_sparsity(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep-mask that removes exactly round(sparsity * w.size) entries of smallest |w|.

    Ties are broken by flat (C-order) index, lower index removed first, so the result is deterministic.
    Entries already exactly 0 have the smallest magnitude, so they are removed before any nonzero one.
    `round` is Python's (half to even): round(0.5 * 5) == 2.
    """
    w = _as_finite_float(w)
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:  # also rejects NaN
        raise ValueError(f"sparsity must be in [0, 1], found {sparsity!r}")
    n_remove = min(int(round(s * w.size)), w.size)
    keep = np.ones(w.size, dtype=bool)
    if n_remove:
        # A stable sort keeps equal magnitudes in flat-index order, which is the documented tie rule.
        order = np.argsort(np.abs(w).ravel(), kind="stable")
        keep[order[:n_remove]] = False
    return keep.reshape(w.shape)


def mask_by_std(w: np.ndarray, quality: float) -> np.ndarray:
    """Han et al. (NIPS 2015) rule: keep |w| > quality * std(w), std over the whole tensor (population std)."""
    w = _as_finite_float(w)
    q = float(quality)
    if not (np.isfinite(q) and q >= 0.0):
        raise ValueError(f"quality must be a finite number >= 0, found {quality!r}")
    if w.size == 0:
        return np.zeros(w.shape, dtype=bool)
    threshold = q * float(np.std(w, dtype=np.float64))
    return np.abs(w.astype(np.float64)) > threshold


def sparsity_of(mask: np.ndarray) -> float:
    """Fraction of removed entries (mask False); 0.0 for an empty mask."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool array, found dtype {mask.dtype}")
    if mask.size == 0:
        return 0.0
    return 1.0 - int(np.count_nonzero(mask)) / mask.size
