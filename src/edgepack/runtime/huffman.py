"""Canonical Huffman (DEFLATE-style) code tables from code lengths, and the chunked stream decoder.

Implements spec/format.md, "Bit order" and "Huffman streams". The packer's encoder (packer/huffman.py) uses
canonical_codes from here, so both sides assign codes with one function.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from edgepack.runtime.constants import MAX_CODE_BITS, MAX_CODE_LEN
from edgepack.runtime.errors import FormatError

# Codes up to this many bits decode with one table lookup; longer (rare) codes continue with a canonical walk.
# 2**11 uint16 entries = 4 KiB, small enough to stay in L1 next to the stream; 11 beat 10 by 1.6x on 12-bit
# alphabets (codes often > 10 bits) and equalled it on small ones.
LOOKUP_BITS = 11

# A lookup entry is (value << 4) | length. length >= 1: value is the symbol. length 0: no code of at most
# lookup_bits bits matches; value is those bits as a code prefix (MSB first), from which the walk resumes.
# (A one-symbol table's "1" bit gets such an entry and the walk, with nothing longer to find, reports it invalid.)

ERR_OK = 0
ERR_TRUNCATED = 1  # the chunk's bytes end in the middle of a code
ERR_INVALID = 2  # bits that start no code
ERR_TRAILING = 3  # whole bytes left after the chunk's last symbol
ERR_PAD = 4  # nonzero bits after the last code, in its final byte


class DecodeTable(NamedTuple):
    """What the decode kernel needs; build once per code-length table, reuse for every chunk range."""

    lookup: np.ndarray  # uint16[2**lookup_bits], indexed by the next stream bits (first bit = LSB)
    lookup_bits: int
    counts: np.ndarray  # int64[MAX_CODE_LEN + 1]: number of codes of each length (counts[0] = 0)
    first_code: np.ndarray  # int64[MAX_CODE_LEN + 1]: the first (smallest) code of each length, RFC 1951 next_code
    first_index: np.ndarray  # int64[MAX_CODE_LEN + 1]: position in `symbols` of that first code's symbol
    symbols: np.ndarray  # int64[n_used]: used symbols ordered by (length, symbol), as puff.c
    max_len: int
    n_used: int


def _alphabet_bits(n: int) -> int | None:
    """b such that n == 2**b with 1 <= b <= MAX_CODE_BITS, else None."""
    if n < 2 or n & (n - 1) or n > 1 << MAX_CODE_BITS:
        return None
    return n.bit_length() - 1


def check_lengths(lengths: np.ndarray, where: str) -> None:
    """Reject any code-length table the decoder cannot use (spec "Huffman streams", valid tables).

    Accepted: no symbol used (the stream must then hold 0 symbols: decode checks that); exactly one symbol used
    with length 1; otherwise lengths <= 15 whose Kraft sum is exactly 1.
    """
    if not isinstance(lengths, np.ndarray) or lengths.ndim != 1 or lengths.dtype.kind not in "ui":
        raise FormatError(f"{where}: code-length table must be a 1-D integer array, found "
                          f"{type(lengths).__name__} {getattr(lengths, 'dtype', '')}")
    n = lengths.shape[0]
    if _alphabet_bits(n) is None:
        raise FormatError(f"{where}: code-length table has {n} entries, expected 2**b for 1 <= b <= {MAX_CODE_BITS}")
    lens = lengths.astype(np.int64)
    if lens.min() < 0 or lens.max() > MAX_CODE_LEN:
        sym = int(np.flatnonzero((lens < 0) | (lens > MAX_CODE_LEN))[0])
        raise FormatError(f"{where}: code length of symbol {sym} is {int(lens[sym])}, "
                          f"expected 0 <= length <= {MAX_CODE_LEN}")
    used = np.flatnonzero(lens)
    if used.size == 0:
        return
    if used.size == 1:
        if lens[used[0]] != 1:
            raise FormatError(f"{where}: single used symbol {int(used[0])} has code length {int(lens[used[0]])}, "
                              f"expected 1")
        return
    kraft = int(np.sum(np.int64(1) << (MAX_CODE_LEN - lens[used])))
    full = 1 << MAX_CODE_LEN
    if kraft > full:
        raise FormatError(f"{where}: code-length table is over-subscribed: Kraft sum {kraft}/{full} > 1 "
                          f"({used.size} used symbols)")
    if kraft < full:
        raise FormatError(f"{where}: code-length table is incomplete: Kraft sum {kraft}/{full} < 1 "
                          f"({used.size} used symbols)")


@njit(cache=True)
def _canonical_codes_kernel(lengths, max_len, out):
    # RFC 1951 3.2.2, steps 1-3
    bl_count = np.zeros(max_len + 1, dtype=np.int64)
    for s in range(lengths.shape[0]):
        bl_count[lengths[s]] += 1
    bl_count[0] = 0
    next_code = np.zeros(max_len + 2, dtype=np.int64)
    code = 0
    for ln in range(1, max_len + 1):
        code = (code + bl_count[ln - 1]) << 1
        next_code[ln] = code
    for s in range(lengths.shape[0]):
        ln = lengths[s]
        if ln != 0:
            out[s] = next_code[ln]
            next_code[ln] += 1
    return 0


def _as_lengths(lengths: np.ndarray) -> np.ndarray:
    lens = np.ascontiguousarray(lengths, dtype=np.int64)
    if lens.ndim != 1 or (lens.size and (lens.min() < 0 or lens.max() > MAX_CODE_LEN)):
        raise ValueError(f"code lengths must be a 1-D array of values in [0, {MAX_CODE_LEN}]")
    return lens


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Code of each symbol as DEFLATE assigns it (0 for absent symbols); the code is `lengths[s]` bits, MSB first."""
    lens = _as_lengths(lengths)
    out = np.zeros(lens.shape[0], dtype=np.uint32)
    if lens.size:
        _canonical_codes_kernel(lens, MAX_CODE_LEN, out)
    return out


@njit(cache=True)
def _fill_lookup_kernel(lengths, codes, lookup_bits, lookup):
    size = 1 << lookup_bits
    for idx in range(size):
        rev = 0
        for j in range(lookup_bits):
            rev |= ((idx >> j) & 1) << (lookup_bits - 1 - j)
        lookup[idx] = rev << 4
    for s in range(lengths.shape[0]):
        ln = np.int64(lengths[s])
        if ln == 0 or ln > lookup_bits:
            continue
        code = np.int64(codes[s])
        # the first code bit (its MSB) is the first stream bit, i.e. the LSB of the lookup index
        rev = 0
        for j in range(ln):
            rev |= ((code >> (ln - 1 - j)) & 1) << j
        entry = (s << 4) | ln
        for idx in range(rev, size, 1 << ln):
            lookup[idx] = entry
    return 0


def build_decode_table(lengths: np.ndarray, lookup_bits: int = LOOKUP_BITS) -> DecodeTable:
    """Decode tables for a code-length table that has passed check_lengths (lookup_bits: tests force the walk)."""
    lens = _as_lengths(lengths)
    max_len = int(lens.max()) if lens.size else 0
    lookup_bits = max(1, min(max_len, int(lookup_bits)))
    lookup = np.zeros(1 << lookup_bits, dtype=np.uint16)
    _fill_lookup_kernel(lens, canonical_codes(lens), lookup_bits, lookup)
    used = np.flatnonzero(lens)
    counts = np.bincount(lens[used], minlength=MAX_CODE_LEN + 1).astype(np.int64)
    counts[0] = 0
    first_code = np.zeros(MAX_CODE_LEN + 1, dtype=np.int64)
    for ln in range(1, MAX_CODE_LEN + 1):
        first_code[ln] = (first_code[ln - 1] + counts[ln - 1]) << 1
    first_index = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    symbols = used[np.argsort(lens[used], kind="stable")].astype(np.int64)
    return DecodeTable(lookup, lookup_bits, counts, first_code, first_index, symbols, max_len, int(used.size))


@njit(cache=True)
def walk_kernel(code, bitbuf, bitcount, lookup_bits, max_len, counts, first_code, first_index, symbols):
    """A code longer than the lookup table: the canonical walk (puff.c's decode) resumed after the lookup's bits,
    `code` being those bits as the lookup entry gives them. The codes of length ln are first_code[ln] ..
    first_code[ln] + counts[ln] - 1, in symbol order. Returns (symbol, length); (-1, 0) when the bits run out first
    (missing bits read as zero, so the chunk is truncated), (-1, -1) when they begin no code."""
    for ln in range(lookup_bits + 1, max_len + 1):
        if ln > bitcount:
            return np.int64(-1), np.int64(0)
        code = (code << 1) | ((bitbuf >> (ln - 1)) & 1)
        d = code - np.int64(first_code[ln])
        if 0 <= d < np.int64(counts[ln]):
            return np.int64(symbols[np.int64(first_index[ln]) + d]), np.int64(ln)
    return np.int64(-1), np.int64(-1)


@njit(cache=True)
def _decode_kernel(data, offsets, boundaries, lookup, lookup_bits, counts, first_code, first_index, symbols,
                   max_len, first_chunk, last_chunk, out):
    """Decode chunks [first_chunk, last_chunk) into out; returns (error code, chunk, symbol index in chunk)."""
    mask = (1 << lookup_bits) - 1
    k = 0
    for c in range(first_chunk, last_chunk):
        pos = offsets[c]
        end = offsets[c + 1]
        n = boundaries[c + 1] - boundaries[c]
        # bitbuf holds bitcount unread stream bits, next bit in bit 0; bits above bitcount are zero.
        # Refilling to at most 56 bits keeps it a non-negative int64.
        bitbuf = 0
        bitcount = 0
        for i in range(n):
            if bitcount < 16:
                while bitcount <= 48 and pos < end:
                    bitbuf |= np.int64(data[pos]) << bitcount
                    pos += 1
                    bitcount += 8
            entry = np.int64(lookup[bitbuf & mask])
            length = entry & 15
            if length != 0:
                # missing bits read as zero: if the entry found needs more bits than there are, so does the
                # true code (codes are prefix-free), hence the chunk is truncated
                if length > bitcount:
                    return ERR_TRUNCATED, c, i
                out[k] = entry >> 4
            else:
                sym, length = walk_kernel(entry >> 4, bitbuf, bitcount, lookup_bits, max_len, counts, first_code,
                                          first_index, symbols)
                if length == 0:
                    return ERR_TRUNCATED, c, i
                if length < 0:
                    return ERR_INVALID, c, i
                out[k] = sym
            bitbuf >>= length
            bitcount -= length
            k += 1
        if bitcount + 8 * (end - pos) >= 8:
            return ERR_TRAILING, c, n
        if bitbuf != 0:
            return ERR_PAD, c, n
    return ERR_OK, 0, 0


def _int_array(a, name: str, where: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "ui"):
        raise FormatError(f"{where}: {name} must be a 1-D integer array, found dtype {arr.dtype} ndim {arr.ndim}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 1 << 63:
        raise FormatError(f"{where}: {name} holds {int(arr.max())}, beyond int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_monotone(arr: np.ndarray, name: str, where: str) -> None:
    if arr[0] != 0:
        raise FormatError(f"{where}: {name}[0] must be 0, found {int(arr[0])}")
    if arr.size > 1:
        drops = np.flatnonzero(arr[1:] < arr[:-1])
        if drops.size:
            i = int(drops[0])
            raise FormatError(f"{where}: {name} must be non-decreasing, found {name}[{i}] = {int(arr[i])} > "
                              f"{name}[{i + 1}] = {int(arr[i + 1])}")


def decode(data: np.ndarray, lengths: np.ndarray, offsets: np.ndarray, boundaries: np.ndarray, where: str,
           out: np.ndarray | None = None, first_chunk: int = 0, last_chunk: int | None = None,
           table: DecodeTable | None = None) -> np.ndarray:
    """Decode chunks [first_chunk, last_chunk) of a chunked Huffman stream; returns their symbols in order.

    data: uint8 stream bytes; lengths: the code-length table; offsets: uint32/int64[n_chunks + 1] chunk byte
    ranges; boundaries: int64[n_chunks + 1] chunk symbol ranges. `out` (optional) is filled from index 0 and the
    filled view is returned; by default a new uint8 (alphabet <= 256) or uint16 array. `table`, if given, must be
    build_decode_table(lengths) of these lengths: it lets a caller decoding block by block skip rebuilding it.
    """
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
        raise FormatError(f"{where}: Huffman data must be a 1-D uint8 array, found {type(data).__name__} "
                          f"{getattr(data, 'dtype', '')}")
    if table is None:
        check_lengths(lengths, where)
        table = build_decode_table(lengths)
    offs = _int_array(offsets, "chunk offsets", where)
    bnds = _int_array(boundaries, "chunk boundaries", where)
    if bnds.size < 1:
        raise FormatError(f"{where}: chunk boundaries must hold at least one entry (n_chunks + 1), found 0")
    n_chunks = bnds.size - 1
    if offs.size != bnds.size:
        raise FormatError(f"{where}: {offs.size} chunk offsets for {n_chunks} chunks, expected {n_chunks + 1}")
    _check_monotone(offs, "chunk offsets", where)
    _check_monotone(bnds, "chunk boundaries", where)
    if offs[-1] != data.shape[0]:
        raise FormatError(f"{where}: last chunk offset is {int(offs[-1])}, expected the data length "
                          f"{data.shape[0]}")
    if table.n_used == 0 and bnds[-1] != 0:
        raise FormatError(f"{where}: code-length table uses no symbol but the stream holds {int(bnds[-1])} symbols")

    if last_chunk is None:
        last_chunk = n_chunks
    first_chunk, last_chunk = int(first_chunk), int(last_chunk)
    if not 0 <= first_chunk <= last_chunk <= n_chunks:
        raise ValueError(f"{where}: chunk range [{first_chunk}, {last_chunk}) is outside [0, {n_chunks}]")
    count = int(bnds[last_chunk] - bnds[first_chunk])
    # every code is at least one bit: refuse absurd symbol counts before allocating for them
    sel = slice(first_chunk, last_chunk + 1)
    too_many = np.flatnonzero(np.diff(bnds[sel]) > 8 * np.diff(offs[sel]))
    if too_many.size:
        c = first_chunk + int(too_many[0])
        n, nbytes = int(bnds[c + 1] - bnds[c]), int(offs[c + 1] - offs[c])
        raise FormatError(f"{where}: chunk {c} (bytes [{int(offs[c])}, {int(offs[c + 1])}), {n} symbols) is too "
                          f"short: {n} codes cannot fit in {nbytes} bytes")
    if out is None:
        out = np.empty(count, dtype=np.uint8 if lengths.shape[0] <= 256 else np.uint16)
    else:
        if not isinstance(out, np.ndarray) or out.ndim != 1 or not out.flags.c_contiguous:
            raise TypeError("out must be a contiguous 1-D array")
        if out.dtype.kind not in "ui" or np.iinfo(out.dtype).max < lengths.shape[0] - 1:
            raise TypeError(f"out dtype {out.dtype} cannot hold symbols of an alphabet of {lengths.shape[0]}")
        if out.shape[0] < count:
            raise ValueError(f"{where}: out holds {out.shape[0]} symbols, chunks [{first_chunk}, {last_chunk}) "
                             f"need {count}")
    if first_chunk == last_chunk:
        return out[:0]

    err, chunk, idx = _decode_kernel(np.ascontiguousarray(data), offs, bnds, table.lookup, table.lookup_bits,
                                     table.counts, table.first_code, table.first_index, table.symbols,
                                     table.max_len, first_chunk, last_chunk, out)
    if err != ERR_OK:
        chunk, idx = int(chunk), int(idx)
        n = int(bnds[chunk + 1] - bnds[chunk])
        span = f"chunk {chunk} (bytes [{int(offs[chunk])}, {int(offs[chunk + 1])}), {n} symbols)"
        if err == ERR_TRUNCATED:
            msg = f"{span} ends in the middle of code {idx}"
        elif err == ERR_INVALID:
            msg = f"{span}: code {idx} is not a valid code"
        elif err == ERR_TRAILING:
            msg = f"{span} has bytes left after its last code, expected only zero padding of the final byte"
        elif err == ERR_PAD:
            msg = f"{span} has nonzero pad bits after its last code"
        else:
            msg = f"{span}: decoder error {err}"
        raise FormatError(f"{where}: {msg}")
    return out[:count]
