"""Huffman coding on the packer side: length-limited code lengths (package-merge), chunked encoding, cost.

Writes what runtime/huffman.py reads (spec/format.md, "Huffman streams"); codes come from
runtime.huffman.canonical_codes so writer and reader cannot disagree on code assignment.
"""
from __future__ import annotations

import numpy as np

from edgepack.runtime.constants import MAX_CODE_LEN
from edgepack.runtime.huffman import canonical_codes, check_lengths


def code_lengths(freqs: np.ndarray, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Optimal code lengths with every length <= max_len (package-merge); uint8, one per symbol.

    Unused symbols (frequency 0) get 0; a single used symbol gets 1. Deterministic: among equal frequencies the
    lower symbol index never gets the longer code.
    """
    f = np.asarray(freqs)
    if f.ndim != 1 or (f.size and f.dtype.kind not in "ui"):
        raise ValueError(f"frequencies must be a 1-D integer array, found dtype {f.dtype} ndim {f.ndim}")
    f = f.astype(np.int64)
    if f.size and f.min() < 0:
        raise ValueError(f"frequencies must be >= 0, found {int(f.min())} at symbol {int(np.argmin(f))}")
    if isinstance(max_len, bool) or not 1 <= int(max_len) <= MAX_CODE_LEN:
        raise ValueError(f"max_len must be in [1, {MAX_CODE_LEN}], found {max_len}")
    max_len = int(max_len)
    out = np.zeros(f.size, dtype=np.uint8)
    used = np.flatnonzero(f)
    n = used.size
    if n == 0:
        return out
    if n == 1:
        out[used[0]] = 1
        return out
    if n > 1 << max_len:
        raise ValueError(f"{n} used symbols cannot be coded with lengths <= {max_len} "
                         f"(at most {1 << max_len})")
    # leaves in increasing weight; on ties the higher symbol first, so that it collects the longer code
    order = used[np.lexsort((-used, f[used]))]
    leaf_w = f[order]
    # Package-merge (Larmore & Hirschberg): list 1 = leaves; list j = leaves merged with pairs of list j-1.
    # Per list only the weights and which positions are leaves are kept: the chosen items of a list are always
    # a prefix, and a prefix of packages expands to a prefix of the list below.
    is_leaf_per_level = []
    prev_w = leaf_w
    is_leaf_per_level.append(np.ones(n, dtype=bool))
    for _ in range(1, max_len):
        pkg_w = prev_w[0:2 * (prev_w.size // 2):2] + prev_w[1:2 * (prev_w.size // 2):2]
        w = np.concatenate([leaf_w, pkg_w])
        leaf = np.concatenate([np.ones(n, dtype=bool), np.zeros(pkg_w.size, dtype=bool)])
        # stable sort: on equal weight a leaf comes before a package (leaves were concatenated first)
        merge = np.argsort(w, kind="stable")
        prev_w = w[merge]
        is_leaf_per_level.append(leaf[merge])
    depth = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for leaf in reversed(is_leaf_per_level):
        n_leaves = int(np.count_nonzero(leaf[:take]))
        depth[:n_leaves] += 1
        take = 2 * (take - n_leaves)
    out[order] = depth
    return out


def encoded_bits(freqs: np.ndarray, lengths: np.ndarray) -> int:
    """Payload bits of a Huffman stream with these symbol frequencies and code lengths (chunk padding excluded)."""
    f = np.asarray(freqs, dtype=np.int64)
    lens = np.asarray(lengths, dtype=np.int64)
    if f.shape != lens.shape:
        raise ValueError(f"frequencies shape {f.shape} != lengths shape {lens.shape}")
    missing = np.flatnonzero((f > 0) & (lens == 0))
    if missing.size:
        raise ValueError(f"symbol {int(missing[0])} occurs {int(f[missing[0]])} times but has no code")
    return int(np.dot(f, lens))


def encode(symbols: np.ndarray, lengths: np.ndarray, boundaries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Huffman-code `symbols` in chunks [boundaries[c], boundaries[c+1]); returns (data uint8, offsets uint32).

    Each chunk starts on a fresh byte and is zero padded to a whole byte; a code's MSB is written first, into
    the next stream bit (LSB-first within each byte).
    """
    sym = np.asarray(symbols)
    if sym.ndim != 1 or (sym.size and sym.dtype.kind not in "ui"):
        raise ValueError(f"symbols must be a 1-D integer array, found dtype {sym.dtype} ndim {sym.ndim}")
    sym = sym.astype(np.int64)
    check_lengths(np.asarray(lengths), "Huffman encoder")  # a table the reader would reject must not be written
    lens_table = np.asarray(lengths, dtype=np.int64)
    codes_table = canonical_codes(lens_table).astype(np.int64)
    bnd = np.asarray(boundaries, dtype=np.int64)
    if bnd.ndim != 1 or bnd.size < 1 or bnd[0] != 0 or bnd[-1] != sym.size or np.any(np.diff(bnd) < 0):
        raise ValueError(f"boundaries must be non-decreasing from 0 to {sym.size} (the symbol count), found "
                         f"{bnd[:8].tolist()}{'...' if bnd.size > 8 else ''}")
    if sym.size:
        if sym.min() < 0 or sym.max() >= lens_table.size:
            raise ValueError(f"symbols must be in [0, {lens_table.size}), found [{int(sym.min())}, {int(sym.max())}]")
        nocode = np.flatnonzero(lens_table[sym] == 0)
        if nocode.size:
            raise ValueError(f"symbol {int(sym[nocode[0]])} at index {int(nocode[0])} has no code (length 0)")
    n_chunks = bnd.size - 1
    lens = lens_table[sym]
    codes = codes_table[sym]
    ends = np.cumsum(lens)  # global bit end of each code, before chunk padding
    starts = ends - lens
    chunk_of = np.repeat(np.arange(n_chunks), np.diff(bnd))
    cum = np.concatenate([[0], ends])
    chunk_bits = cum[bnd[1:]] - cum[bnd[:-1]]
    chunk_bytes = (chunk_bits + 7) // 8
    offsets = np.concatenate([[0], np.cumsum(chunk_bytes)]).astype(np.int64)
    if offsets[-1] >= 1 << 32:
        raise ValueError(f"Huffman stream of {int(offsets[-1])} bytes does not fit uint32 offsets")
    # bit position of each code in the padded stream: its chunk's first bit + its offset within the chunk
    pos = offsets[chunk_of] * 8 + (starts - cum[bnd[chunk_of]])
    stream = np.zeros(int(offsets[-1]) * 8, dtype=np.uint8)
    for j in range(int(lens.max()) if lens.size else 0):
        m = lens > j
        stream[pos[m] + j] = (codes[m] >> (lens[m] - 1 - j)) & 1
    return np.packbits(stream, bitorder="little"), offsets.astype(np.uint32)
