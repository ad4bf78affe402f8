"""CSR with relative column indices (gaps) and filler entries, Deep Compression style (Han et al. 2016, sec. 2).

Per row, entries are the kept columns in increasing order; entry i stores gap = p_i - p_{i-1} - 1 with p_{-1} = -1.
A gap above G = 2**gap_bits - 1 is split by filler entries (gap G, code 0, at p_{i-1} + G + 1); codebook[0] == 0.0.
"""
from __future__ import annotations

import numpy as np


def _check_keep(keep: np.ndarray) -> np.ndarray:
    keep = np.asarray(keep)
    if keep.dtype != np.bool_ or keep.ndim != 2:
        raise ValueError(f"keep must be a 2-D bool array, found dtype {keep.dtype} shape {keep.shape}")
    return keep


def _check_gap_bits(gap_bits: int) -> int:
    if isinstance(gap_bits, bool) or int(gap_bits) != gap_bits or not 1 <= gap_bits <= 16:
        raise ValueError(f"gap_bits must be an integer in 1..16, found {gap_bits!r}")
    return int(gap_bits)


def _real_gaps(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, column, unbounded gap) of each kept entry, int64, entries in row-major order."""
    r, c = np.nonzero(keep)
    prev = np.empty_like(c)
    if c.size:
        prev[0] = -1
        prev[1:] = c[:-1]
        prev[1:][r[1:] != r[:-1]] = -1  # the running position restarts at every row
    return r, c, c - prev - 1


def encode(keep: np.ndarray, codes: np.ndarray, gap_bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode the kept entries of a (rows, cols) matrix; returns (indptr uint32 (rows+1,), gaps, entry_codes).

    gaps are uint8 for gap_bits <= 8, else uint16; entry_codes have codes' dtype. Fillers count as entries.
    Codes of kept entries must be >= 1 (code 0 marks a filler).
    """
    keep = _check_keep(keep)
    codes = np.asarray(codes)
    if codes.shape != keep.shape or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(
            f"codes must be an integer array of shape {keep.shape}, found dtype {codes.dtype} shape {codes.shape}"
        )
    gb = _check_gap_bits(gap_bits)
    r, c, gaps = _real_gaps(keep)
    kept_codes = codes[keep]
    bad = np.flatnonzero(kept_codes < 1)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"kept entry at row {int(r[i])}, column {int(c[i])} has code {int(kept_codes[i])}, "
            "expected >= 1 (0 is the filler)"
        )
    g_max = (1 << gb) - 1
    n_fill = gaps >> gb  # each filler advances the position by G + 1 = 2**gb
    ends = np.cumsum(n_fill + 1)
    total = int(ends[-1]) if ends.size else 0
    if total >= 1 << 32:
        raise ValueError(f"{total} entries do not fit a uint32 indptr")
    gaps_out = np.full(total, g_max, dtype=np.uint8 if gb <= 8 else np.uint16)
    codes_out = np.zeros(total, dtype=codes.dtype)
    gaps_out[ends - 1] = gaps & g_max
    codes_out[ends - 1] = kept_codes
    # indptr[j + 1] = entries emitted up to the last kept entry of rows <= j.
    ends0 = np.concatenate([np.zeros(1, dtype=np.int64), ends])
    indptr = np.empty(keep.shape[0] + 1, dtype=np.uint32)
    indptr[0] = 0
    indptr[1:] = ends0[np.searchsorted(r, np.arange(keep.shape[0]), side="right")]
    return indptr, gaps_out, codes_out


def _n_entries(gaps: np.ndarray, gap_bits: int) -> int:
    return int(gaps.size) + int(np.sum(gaps >> gap_bits))


def cost_bits(keep: np.ndarray, gap_bits: int, code_bits: int) -> int:
    """Packed size of the gaps + codes streams: entries (fillers included) x (gap_bits + code_bits)."""
    keep = _check_keep(keep)
    gb = _check_gap_bits(gap_bits)
    _, _, gaps = _real_gaps(keep)
    return _n_entries(gaps, gb) * (gb + int(code_bits))


def choose_gap_bits(keep: np.ndarray, code_bits: int, candidates=range(1, 9)) -> int:
    """The gap width in candidates with the least cost_bits; ties go to the smaller width."""
    keep = _check_keep(keep)
    widths = sorted({_check_gap_bits(g) for g in candidates})
    if not widths:
        raise ValueError("candidates is empty")
    _, _, gaps = _real_gaps(keep)
    costs = [(_n_entries(gaps, g) * (g + int(code_bits)), g) for g in widths]
    return min(costs)[1]
