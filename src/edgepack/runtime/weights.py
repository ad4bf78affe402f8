"""Constant tensors as the reader hands them out: dense arrays and the three compressed weight forms.

A compressed weight is a matrix of `rows` x `cols` (rows = prod(shape[:row_dims]), cols = the rest; row_dims is 1
but for LSTM / GRU weights [directions, gate rows, in], whose rows are the gate rows); `to_dense()` is the
reference decode every kernel is tested against. Construction checks dtypes and shapes only (O(1) per array); the
reader validates the content invariants (index ranges, monotone indptr, codes < codebook size) before building these.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from edgepack.runtime.errors import FormatError

_CODE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


def _matrix_dims(kind: str, shape: tuple, row_dims: int = 1) -> tuple[int, int]:
    if len(shape) < 1 or any((not isinstance(d, (int, np.integer))) or d < 0 for d in shape):
        raise FormatError(f"{kind}: shape must be a non-empty tuple of non-negative ints, found {shape!r}")
    if isinstance(row_dims, bool) or not isinstance(row_dims, (int, np.integer)) or not 1 <= row_dims <= len(shape):
        raise FormatError(f"{kind}: row_dims must be an int in 1..{len(shape)} (the rank), found {row_dims!r}")
    return int(prod(int(d) for d in shape[:row_dims])), int(prod(int(d) for d in shape[row_dims:]))


def _check_array(kind: str, field: str, a, dtypes, shape: tuple) -> None:
    if not isinstance(a, np.ndarray):
        raise FormatError(f"{kind}: '{field}' must be a numpy array, found {type(a).__name__}")
    if a.dtype not in tuple(np.dtype(d) for d in dtypes):
        names = " or ".join(np.dtype(d).name for d in dtypes)
        raise FormatError(f"{kind}: '{field}' dtype expected {names}, found {a.dtype.name}")
    if a.shape != shape:
        raise FormatError(f"{kind}: '{field}' shape expected {shape}, found {a.shape}")
    if not a.flags.c_contiguous:
        raise FormatError(f"{kind}: '{field}' must be C-contiguous")


def _check_codebook(kind: str, codebook) -> None:
    if not isinstance(codebook, np.ndarray) or codebook.ndim != 1 or codebook.shape[0] < 1:
        found = getattr(codebook, "shape", type(codebook).__name__)
        raise FormatError(f"{kind}: 'codebook' must be a 1-D array with at least one entry, found {found}")
    _check_array(kind, "codebook", codebook, (np.float32,), codebook.shape)


def _check_row_scales(kind: str, row_scales, rows: int) -> None:
    if row_scales is not None:
        _check_array(kind, "row_scales", row_scales, (np.float32,), (rows,))


@dataclass(frozen=True, eq=False)
class DenseWeight:
    """An uncompressed constant of any dtype, C-contiguous."""

    array: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise FormatError(f"DenseWeight: 'array' must be a numpy array, found {type(self.array).__name__}")
        if not self.array.flags.c_contiguous:
            raise FormatError("DenseWeight: 'array' must be C-contiguous")

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def rows(self) -> int:
        return int(self.array.shape[0]) if self.array.ndim else 1

    @property
    def cols(self) -> int:
        return int(prod(self.array.shape[1:])) if self.array.ndim else 1

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def to_dense(self) -> np.ndarray:
        return self.array


@dataclass(frozen=True, eq=False)
class CodebookWeight:
    """Weight sharing with dense codes: value[r, c] = codebook[codes[r, c]] * row_scales[r]."""

    shape: tuple
    codebook: np.ndarray
    codes: np.ndarray
    row_scales: np.ndarray | None = None
    row_dims: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        rows, cols = _matrix_dims("CodebookWeight", self.shape, self.row_dims)
        _check_codebook("CodebookWeight", self.codebook)
        _check_array("CodebookWeight", "codes", self.codes, _CODE_DTYPES, (rows, cols))
        _check_row_scales("CodebookWeight", self.row_scales, rows)

    @property
    def rows(self) -> int:
        return int(prod(self.shape[:self.row_dims]))

    @property
    def cols(self) -> int:
        return int(prod(self.shape[self.row_dims:]))

    @property
    def nbytes(self) -> int:
        extra = 0 if self.row_scales is None else self.row_scales.nbytes
        return int(self.codebook.nbytes + self.codes.nbytes + extra)

    def to_dense(self) -> np.ndarray:
        m = self.codebook[self.codes]
        if self.row_scales is not None:
            m = m * self.row_scales[:, None]
        return np.ascontiguousarray(m, dtype=np.float32).reshape(self.shape)


@dataclass(frozen=True, eq=False)
class SparseCodebookWeight:
    """Weight sharing on a CSR structure: row r holds columns[indptr[r]:indptr[r+1]] with those codes.

    codebook[0] is 0.0 so that filler entries (code 0) decode to zero.
    """

    shape: tuple
    codebook: np.ndarray
    indptr: np.ndarray
    columns: np.ndarray
    codes: np.ndarray
    row_scales: np.ndarray | None = None
    row_dims: int = 1

    def __post_init__(self) -> None:
        kind = "SparseCodebookWeight"
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        rows, _ = _matrix_dims(kind, self.shape, self.row_dims)
        _check_codebook(kind, self.codebook)
        if self.codebook[0] != 0.0:
            raise FormatError(f"{kind}: codebook[0] expected 0.0 (filler entries decode to it), "
                              f"found {float(self.codebook[0])!r}")
        _check_array(kind, "indptr", self.indptr, (np.int32,), (rows + 1,))
        nnz = int(self.indptr[-1])
        if int(self.indptr[0]) != 0 or nnz < 0:
            raise FormatError(f"{kind}: indptr must start at 0 and end at nnz >= 0, "
                              f"found {int(self.indptr[0])}..{nnz}")
        _check_array(kind, "columns", self.columns, (np.int32,), (nnz,))
        _check_array(kind, "codes", self.codes, _CODE_DTYPES, (nnz,))
        _check_row_scales(kind, self.row_scales, rows)

    @property
    def rows(self) -> int:
        return int(prod(self.shape[:self.row_dims]))

    @property
    def cols(self) -> int:
        return int(prod(self.shape[self.row_dims:]))

    @property
    def nnz(self) -> int:
        return int(self.columns.shape[0])

    @property
    def nbytes(self) -> int:
        extra = 0 if self.row_scales is None else self.row_scales.nbytes
        return int(self.codebook.nbytes + self.indptr.nbytes + self.columns.nbytes + self.codes.nbytes + extra)

    def to_dense(self) -> np.ndarray:
        m = np.zeros((self.rows, self.cols), dtype=np.float32)
        row_of = np.repeat(np.arange(self.rows), np.diff(self.indptr))
        m[row_of, self.columns] = self.codebook[self.codes]
        if self.row_scales is not None:
            m *= self.row_scales[:, None]
        return m.reshape(self.shape)


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """Affine int8: value[r, c] = (q[r, c] - zero_point[r]) * scale[r]; scale and zero_point may be per-tensor (1,)."""

    shape: tuple
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    row_dims: int = 1

    def __post_init__(self) -> None:
        kind = "Int8Weight"
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        rows, cols = _matrix_dims(kind, self.shape, self.row_dims)
        _check_array(kind, "q", self.q, (np.int8,), (rows, cols))
        sshape = getattr(self.scale, "shape", None)
        if sshape not in ((rows,), (1,)):
            raise FormatError(f"{kind}: 'scale' shape expected ({rows},) or (1,), found {sshape}")
        _check_array(kind, "scale", self.scale, (np.float32,), sshape)
        _check_array(kind, "zero_point", self.zero_point, (np.int8,), sshape)

    @property
    def rows(self) -> int:
        return int(prod(self.shape[:self.row_dims]))

    @property
    def cols(self) -> int:
        return int(prod(self.shape[self.row_dims:]))

    @property
    def nbytes(self) -> int:
        return int(self.q.nbytes + self.scale.nbytes + self.zero_point.nbytes)

    def to_dense(self) -> np.ndarray:
        m = (self.q.astype(np.float32) - self.zero_point.astype(np.float32)[:, None]) * self.scale[:, None]
        return np.ascontiguousarray(m, dtype=np.float32).reshape(self.shape)


Weight = DenseWeight | CodebookWeight | SparseCodebookWeight | Int8Weight
