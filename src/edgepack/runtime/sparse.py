"""Runtime side of the CSR weight format: validate indptr and codes, turn gaps into columns, reference dense decode.

Gaps are relative column indices (column = previous column + gap + 1, starting from -1 in every row); filler
entries carry code 0, and codebook[0] must be 0.0 so that they decode to zero.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .errors import FormatError

_INT32_MAX = (1 << 31) - 1
_INT64_MAX = (1 << 63) - 1


def _as_int_vector(a: np.ndarray, name: str, where: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise FormatError(f"{where}: {name} must be a 1-D integer array, found dtype {a.dtype} shape {a.shape}")
    return a


def check_indptr(indptr: np.ndarray, rows: int, n_entries: int, where: str) -> None:
    """indptr has rows + 1 values, starts at 0, never decreases and ends at n_entries; else FormatError."""
    indptr = _as_int_vector(indptr, "indptr", where)
    if indptr.size != rows + 1:
        raise FormatError(f"{where}: indptr has {indptr.size} values, expected rows + 1 = {rows + 1}")
    if indptr.dtype == np.uint64 and int(indptr.max()) > _INT64_MAX:
        bad = int(np.flatnonzero(indptr > np.uint64(_INT64_MAX))[0])
        raise FormatError(f"{where}: indptr[{bad}] = {int(indptr[bad])} is larger than any entry count")
    p = indptr.astype(np.int64)
    if p[0] != 0:
        raise FormatError(f"{where}: indptr[0] = {int(p[0])}, expected 0")
    down = np.flatnonzero(p[1:] < p[:-1])
    if down.size:
        r = int(down[0])
        raise FormatError(
            f"{where}: indptr decreases at row {r}: indptr[{r}] = {int(p[r])} > indptr[{r + 1}] = {int(p[r + 1])}"
        )
    if p[-1] != n_entries:
        raise FormatError(f"{where}: indptr[{rows}] = {int(p[-1])}, expected the number of entries {n_entries}")


@njit(cache=True)
def _gaps_to_columns_kernel(indptr, gaps, cols, out, info):
    # Returns 0 on success; 1 when a column reaches cols, with info = (row, entry, column).
    for r in range(indptr.shape[0] - 1):
        pos = np.int64(-1)
        for e in range(indptr[r], indptr[r + 1]):
            # Gaps are unsigned, so pos grows by >= 1: columns strictly increase within a row.
            pos += np.int64(gaps[e]) + 1
            if pos >= cols:
                info[0] = r
                info[1] = e
                info[2] = pos
                return 1
            out[e] = pos
    return 0


def gaps_to_columns(indptr: np.ndarray, gaps: np.ndarray, cols: int, where: str) -> np.ndarray:
    """Absolute column (int32) of every entry; FormatError naming the row when a column is >= cols."""
    indptr = _as_int_vector(indptr, "indptr", where)
    gaps = np.asarray(gaps)
    if gaps.ndim != 1 or not np.issubdtype(gaps.dtype, np.unsignedinteger):
        raise FormatError(
            f"{where}: gaps must be a 1-D unsigned integer array, found dtype {gaps.dtype} shape {gaps.shape}"
        )
    if indptr.size < 1:
        raise FormatError(f"{where}: indptr is empty, expected rows + 1 >= 1 values")
    cols = int(cols)
    if not 0 <= cols <= _INT32_MAX:
        raise FormatError(f"{where}: cols = {cols}, expected 0..{_INT32_MAX}")
    check_indptr(indptr, indptr.size - 1, gaps.size, where)
    out = np.empty(gaps.size, dtype=np.int32)
    info = np.zeros(3, dtype=np.int64)
    status = _gaps_to_columns_kernel(
        np.ascontiguousarray(indptr, dtype=np.int64), np.ascontiguousarray(gaps), np.int64(cols), out, info
    )
    if status != 0:
        raise FormatError(
            f"{where}: row {int(info[0])}, entry {int(info[1])}: column {int(info[2])} is out of range, "
            f"expected < cols = {cols}"
        )
    return out


def check_codes(codes: np.ndarray, codebook_len: int, where: str) -> None:
    """Every code is in [0, codebook_len); else FormatError naming the first bad (flat) index and its value."""
    codes = np.asarray(codes)
    if not np.issubdtype(codes.dtype, np.integer):
        raise FormatError(f"{where}: codes must be integers, found dtype {codes.dtype}")
    flat = codes.ravel()
    bad = np.flatnonzero((flat >= codebook_len) | (flat < 0))
    if bad.size:
        i = int(bad[0])
        raise FormatError(
            f"{where}: code {int(flat[i])} at index {i} is out of range, expected < codebook size {codebook_len}"
        )


def csr_to_dense(
    indptr: np.ndarray,
    columns: np.ndarray,
    entry_codes: np.ndarray,
    codebook: np.ndarray,
    rows: int,
    cols: int,
    row_scales: np.ndarray | None = None,
    *,
    where: str = "csr",
) -> np.ndarray:
    """Reference decode to a float32 (rows, cols) matrix: float32(codebook[code]) * float32(row_scales[row])."""
    rows, cols = int(rows), int(cols)
    columns = _as_int_vector(columns, "columns", where)
    entry_codes = _as_int_vector(entry_codes, "entry codes", where)
    codebook = np.asarray(codebook)
    if codebook.ndim != 1 or codebook.size < 1:
        raise FormatError(f"{where}: codebook must be 1-D with at least 1 entry, found shape {codebook.shape}")
    cb = codebook.astype(np.float32)
    if cb[0] != 0.0:
        raise FormatError(f"{where}: codebook[0] = {float(cb[0])!r}, expected 0.0 (filler entries decode to it)")
    if columns.size != entry_codes.size:
        raise FormatError(f"{where}: {columns.size} columns but {entry_codes.size} entry codes, expected equal")
    check_indptr(indptr, rows, columns.size, where)
    check_codes(entry_codes, cb.size, where)
    p = np.asarray(indptr).astype(np.int64)
    row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(p))
    outside = np.flatnonzero((columns < 0) | (columns >= cols))
    if outside.size:
        e = int(outside[0])
        raise FormatError(
            f"{where}: row {int(row_of[e])}, entry {e}: column {int(columns[e])} is out of range, "
            f"expected 0..{cols - 1}"
        )
    # Two entries at one column would silently overwrite each other: require strictly increasing columns per row.
    same_row = row_of[1:] == row_of[:-1]
    not_up = np.flatnonzero(same_row & (columns[1:] <= columns[:-1]))
    if not_up.size:
        e = int(not_up[0]) + 1
        raise FormatError(
            f"{where}: row {int(row_of[e])}, entry {e}: column {int(columns[e])} does not increase "
            f"(previous {int(columns[e - 1])})"
        )
    values = cb[entry_codes]
    if row_scales is not None:
        s = np.asarray(row_scales)
        if s.shape != (rows,):
            raise FormatError(f"{where}: row_scales has shape {s.shape}, expected ({rows},)")
        values = values * s.astype(np.float32)[row_of]
    out = np.zeros((rows, cols), dtype=np.float32)
    out[row_of, columns] = values
    return out
