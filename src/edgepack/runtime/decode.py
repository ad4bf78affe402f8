"""Tensor encodings of format v1 (spec/format.md section 6): buffers in the data section, packed and Huffman
streams, and the four encodings, checked completely and turned into the weight objects of runtime/weights.py."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import bitpack, huffman, sparse
from . import constants as C
from .errors import FormatError, UnsupportedError
from .reader import field, int_field
from .weights import CodebookWeight, DenseWeight, Int8Weight, SparseCodebookWeight


@dataclass
class Buffers:
    """The data section and the buffers claimed from it so far (to check overlaps and holes at the end)."""

    data: np.ndarray
    claimed: list[tuple[int, int, str]]

    def view(self, ref, dtype: str, count: int, where: str) -> np.ndarray:
        """A zero-copy view of `count` items of `dtype` at buffer `ref` = [offset, length]."""
        if (not isinstance(ref, list) or len(ref) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in ref)):
            raise FormatError(f"{where}: buffer must be [offset, length], found {ref!r:.60}")
        offset, length = ref
        dt = np.dtype(C.DTYPES[dtype])
        expected = count * dt.itemsize
        if length != expected:
            raise FormatError(f"{where}: buffer length {length} (expected {expected} = {count} x {dtype})")
        if offset < 0 or length < 0 or offset > self.data.size or length > self.data.size - offset:
            raise FormatError(f"{where}: buffer [{offset}, {offset + length}) outside the data section "
                              f"({self.data.size} bytes)")
        if offset % dt.itemsize:
            raise FormatError(f"{where}: buffer offset {offset} is not aligned to {dt.itemsize} bytes")
        self.claimed.append((offset, length, where))
        return self.data[offset: offset + length].view(dt)

    def bytes_view(self, ref, length: int, where: str) -> np.ndarray:
        return self.view(ref, "uint8", length, where)

    def check_layout(self, where: str) -> None:
        """Buffers must not overlap; between them only zero padding shorter than 8 bytes; data ends at the last."""
        end = 0
        for offset, length, w in sorted(b for b in self.claimed if b[1] > 0):
            if offset < end:
                raise FormatError(f"{w}: buffer at {offset} overlaps the previous buffer (ends at {end})")
            if offset - end >= 8:
                raise FormatError(f"{where}: {offset - end} unclaimed bytes at {end} (at most 7 bytes of padding)")
            if self.data[end:offset].any():
                raise FormatError(f"{where}: nonzero padding at {end}")
            end = offset + length
        if end != self.data.size:
            raise FormatError(f"{where}: {self.data.size - end} unclaimed bytes at the end of the data section")


def decode_tensor(t: dict, bufs: Buffers, where: str):
    """Check one entry of the graph's `tensors` list and return its weight object."""
    shape = tuple(t["shape"])
    dtype = t["dtype"]
    count = math.prod(shape)
    if count > C.MAX_ELEMENTS:
        raise FormatError(f"{where}: {count} elements exceeds the cap of {C.MAX_ELEMENTS}")
    enc = t["encoding"]
    kind = enc["type"]
    w = f"{where} encoding '{kind}'"
    if kind == C.ENC_DENSE:
        storage = field(enc, "dtype", str, w)
        if storage not in C.DTYPES:
            raise UnsupportedError(f"{w}: storage dtype '{storage}' is not supported")
        if storage != dtype and not (dtype == "float32" and storage == "float16"):
            raise FormatError(f"{w}: storage dtype {storage} cannot hold a {dtype} tensor")
        arr = bufs.view(field(enc, "data", list, w), storage, count, f"{w} data").reshape(shape)
        if storage == "bool" and arr.size and arr.view(np.uint8).max() > 1:
            bad = int(np.flatnonzero(arr.reshape(-1).view(np.uint8) > 1)[0])
            raise FormatError(f"{w} data: bool element {bad} is byte {int(arr.reshape(-1).view(np.uint8)[bad])} "
                              f"(bool bytes must be 0 or 1)")
        if storage != dtype:
            arr = arr.astype(np.float32)
        return DenseWeight(arr)
    if dtype != "float32":
        raise FormatError(f"{w}: encoding '{kind}' holds float32 tensors only, tensor is {dtype}")
    if len(shape) < 1 or count == 0:
        raise FormatError(f"{w}: encoding '{kind}' needs a tensor of rank >= 1 with elements, shape {shape}")
    # the matrix view: rows = the first row_dims dimensions (1 unless given: 2 for LSTM / GRU gate rows)
    row_dims = int_field(enc, "row_dims", w, 1, len(shape), optional=True) or 1
    rows = math.prod(shape[:row_dims])
    cols = count // rows
    if kind == C.ENC_INT8:
        axis = field(enc, "axis", int, w, optional=True)
        if axis not in (None, 0):
            raise FormatError(f"{w}: axis must be 0 or null, found {axis}")
        n = rows if axis == 0 else 1
        scale = bufs.view(field(enc, "scale", list, w), "float32", n, f"{w} scale")
        zp = bufs.view(field(enc, "zero_point", list, w), "int8", n, f"{w} zero_point")
        q = bufs.view(field(enc, "data", list, w), "int8", count, f"{w} data").reshape(rows, cols)
        _check_finite(scale, f"{w} scale")
        return Int8Weight(shape, q, scale, zp, row_dims)
    if kind not in (C.ENC_CODEBOOK, C.ENC_SPARSE):
        raise UnsupportedError(f"{w}: encoding is not supported by this reader")
    cb_dtype = field(enc, "codebook_dtype", str, w)
    if cb_dtype not in C.CODEBOOK_DTYPES:
        raise FormatError(f"{w}: codebook_dtype '{cb_dtype}' (expected one of {C.CODEBOOK_DTYPES})")
    k = int_field(enc, "k", w, 1, 1 << C.MAX_PACKED_BITS)
    codebook = bufs.view(field(enc, "codebook", list, w), cb_dtype, k, f"{w} codebook").astype(np.float32)
    _check_finite(codebook, f"{w} codebook")
    scales_ref = field(enc, "row_scales", list, w, optional=True)
    row_scales = None
    if scales_ref is not None:
        row_scales = bufs.view(scales_ref, "float32", rows, f"{w} row_scales")
        _check_finite(row_scales, f"{w} row_scales")
    per_chunk = int_field(enc, "rows_per_chunk", w, 1, rows)
    # The first stream holds >= rows symbols of >= 1 bit: bound rows by the data before the per-chunk arrays.
    if rows > 8 * bufs.data.size:
        raise FormatError(f"{w}: {rows} rows cannot fit in a data section of {bufs.data.size} bytes")
    n_chunks = -(-rows // per_chunk)
    row_starts = np.minimum(np.arange(n_chunks + 1, dtype=np.int64) * per_chunk, rows)
    if kind == C.ENC_CODEBOOK:
        codes = decode_stream(field(enc, "codes", dict, w), bufs, count, row_starts * cols, k, f"{w} codes")
        sparse.check_codes(codes, k, f"{w} codes")
        return CodebookWeight(shape, codebook, codes.reshape(rows, cols), row_scales, row_dims)
    if codebook[0] != 0.0:
        raise FormatError(f"{w}: codebook[0] must be 0.0 (it decodes filler entries), found {float(codebook[0])!r}")
    nnz = int_field(enc, "nnz", w, 0, count)
    counts = decode_stream(field(enc, "row_counts", dict, w), bufs, rows, row_starts, None, f"{w} row_counts")
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    if indptr[-1] != nnz:
        raise FormatError(f"{w} row_counts: rows hold {int(indptr[-1])} entries in all, nnz says {nnz}")
    bounds = indptr[row_starts]
    gaps_enc = field(enc, "gaps", dict, w)
    gaps = decode_stream(gaps_enc, bufs, nnz, bounds, None, f"{w} gaps")
    codes = decode_stream(field(enc, "codes", dict, w), bufs, nnz, bounds, k, f"{w} codes")
    sparse.check_codes(codes, k, f"{w} codes")
    columns = sparse.gaps_to_columns(indptr, gaps, cols, f"{w} gaps")
    return SparseCodebookWeight(shape, codebook, indptr.astype(np.int32), columns, codes, row_scales,
                                row_dims)


def decode_stream(s: dict, bufs: Buffers, count: int, boundaries: np.ndarray, k: int | None,
                  where: str) -> np.ndarray:
    """Decode a packed or Huffman stream of `count` symbols; chunk c holds [boundaries[c], boundaries[c+1])."""
    coding = field(s, "coding", str, where)
    if coding == C.CODING_PACKED:
        bits = int_field(s, "bits", where, 1, C.MAX_PACKED_BITS)
        _check_alphabet(bits, k, where)
        data = bufs.bytes_view(field(s, "data", list, where), -(-count * bits // 8), f"{where} data")
        return bitpack.unpack(data, bits, count, where)
    if coding == C.CODING_HUFFMAN:
        bits = int_field(s, "bits", where, 1, C.MAX_CODE_BITS)
        _check_alphabet(bits, k, where)
        alphabet = 1 << bits
        packed = bufs.bytes_view(field(s, "lengths", list, where), -(-alphabet * C.LENGTHS_BITS // 8),
                                 f"{where} lengths")
        lengths = bitpack.unpack(packed, C.LENGTHS_BITS, alphabet, f"{where} lengths")
        huffman.check_lengths(lengths, f"{where} lengths")
        n_chunks = boundaries.size - 1
        offsets = bufs.view(field(s, "offsets", list, where), "uint32", n_chunks + 1, f"{where} offsets")
        ref = field(s, "data", list, where)
        length = ref[1] if len(ref) == 2 and isinstance(ref[1], int) else -1
        data = bufs.bytes_view(ref, length, f"{where} data")
        # Every symbol takes at least one bit: this caps what a small stream may expand to.
        if count > 8 * data.size:
            raise FormatError(f"{where}: {count} symbols cannot fit in {data.size} bytes of Huffman data")
        return huffman.decode(data, lengths, offsets, boundaries, where)
    raise UnsupportedError(f"{where}: stream coding '{coding}' is not supported")


def _check_alphabet(bits: int, k: int | None, where: str) -> None:
    if k is not None and k > (1 << bits):
        raise FormatError(f"{where}: {bits}-bit symbols cannot address a codebook of {k} entries")


def _check_finite(a: np.ndarray, where: str) -> None:
    if a.size and not np.isfinite(a).all():
        raise FormatError(f"{where}: holds NaN or infinity")
