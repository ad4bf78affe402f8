"""Chooses and builds the encoding of one tensor (spec/format.md section 6): prune, weight-share, CSR with
relative gaps, and per stream packed or Huffman, whichever is smaller. Returns the graph-section encoding with
numpy arrays where buffers go (packer/writer.py lays them out) and the numbers the report needs."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np

from edgepack.runtime import constants as C
from edgepack.runtime.errors import InputError

from . import bitpack, cluster, csr, huffman, prune


@dataclass
class LayerSettings:
    """How one weight tensor is packed. `sparsity` (fraction removed) or `quality` (Han: |w| <= q * std removed)."""

    sparsity: float = 0.0
    quality: float | None = None
    bits: int | None = None  # codebook bits; None: 8 for Conv, 5 for fully connected layers
    gap_bits: int | None = None  # None: the width with the smallest packed size
    init: str = "linear"
    channel_scales: str | bool = "auto"
    encoding: str = "auto"  # auto | sparse_codebook | codebook | dense | float16 | int8
    codebook_dtype: str = "float32"
    huffman: bool = True
    chunk_symbols: int = 4096  # about this many symbols per independently decodable chunk
    seed: int = 0
    # entropy-constrained codes (cluster.ec_kmeans_1d, compensate.assign's rate): one bit of Huffman code is priced
    # at this share of the weights' mean square; 0: nearest-centroid / k-means codes at a fixed alphabet
    entropy_rate: float = 0.0
    # dense-and-sparse codebooks (SqueezeLLM, Kim et al. 2024): this fraction of the weights, the largest in
    # magnitude, each get a codebook entry of their own (exact, rare codes that Huffman coding makes cheap); the
    # k-means centroids are fitted to the rest. Codebook encoding without pruning only.
    outliers: float = 0.0
    # class-score heads (allocate.minor_rows): the weights of classes that never ranked near the top on the
    # calibration runs (calibration.LayerStats.minor_rows: a Gemm's rows, a MatMul's columns) take a coarse grid of
    # 2 x coarse_rows + 1 steps of their row scale (the class's own for rows; each input row's for columns)
    # (codebook entries appended to the k-means centroids, which are fitted to the other classes); frequent codes
    # that Huffman coding makes about a bit each. 0: off; ignored without calibration statistics that name classes.
    coarse_rows: int = 0
    # class-score heads: the weights of those minor classes pruned instead (sparse_codebook; their scores are then
    # the bias alone, the file serving only the classes its calibration set ranks). Takes precedence over coarse_rows.
    drop_minor: bool = False

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "LayerSettings":
        """Settings from a config table: every key known, every value of its type (a boolean is true or false, not
        "no"; bits a whole number, not "4"), every value in range; InputError naming the key and what it takes."""
        if not isinstance(d, dict):
            raise InputError(f"{where}: expected a table of settings, found {_show(d)}")
        known = list(cls.__dataclass_fields__)
        bad = [k for k in d if k not in known]
        if bad:
            hints = [f"'{k}' (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(str(k), known, 1)) else
                     f"'{k}'" for k in bad]
            raise InputError(f"{where}: unknown setting(s) {', '.join(hints)}; known: {', '.join(known)}")
        s = cls(**d)
        s.check(where)
        return s

    def check(self, where: str) -> None:
        """Types first (so that a wrong type is named, not met as a TypeError deep in the encoder), then ranges."""
        _number(where, "sparsity", self.sparsity, 0.0, 1.0)
        _number(where, "entropy_rate", self.entropy_rate, 0.0, math.inf)
        _number(where, "outliers", self.outliers, 0.0, MAX_OUTLIERS)
        if self.quality is not None:
            _number(where, "quality", self.quality, 0.0, math.inf)
        for key in ("bits", "gap_bits"):
            if getattr(self, key) is not None:
                _whole(where, key, getattr(self, key), 1, C.MAX_CODE_BITS)
        _whole(where, "chunk_symbols", self.chunk_symbols, 1, 1 << 30)
        _whole(where, "coarse_rows", self.coarse_rows, 0, MAX_COARSE_ROWS)
        _whole(where, "seed", self.seed, 0, (1 << 32) - 1)
        for key in ("huffman", "drop_minor"):
            if not isinstance(getattr(self, key), bool):
                raise InputError(f"{where}: {key} must be true or false (a boolean), found {_show(getattr(self, key))}")
        choices = {"init": cluster.INITS,
                   "encoding": ("auto", C.ENC_SPARSE, C.ENC_CODEBOOK, "dense", "float16", C.ENC_INT8),
                   "codebook_dtype": tuple(C.CODEBOOK_DTYPES)}
        for key, allowed in choices.items():
            v = getattr(self, key)
            if not isinstance(v, str) or v not in allowed:
                raise InputError(f"{where}: {key} must be one of {', '.join(allowed)}, found {_show(v)}")
        if not (self.channel_scales == "auto" and isinstance(self.channel_scales, str)
                or isinstance(self.channel_scales, bool)):
            raise InputError(f"{where}: channel_scales must be \"auto\", true or false, found "
                             f"{_show(self.channel_scales)}")


def _show(v) -> str:
    """A config value as the user wrote it, with its type: '"4" (text)', '1.5 (a number with a fraction)'."""
    kind = {bool: "a boolean", str: "text", int: "a whole number", float: "a number", list: "a list",
            dict: "a table", type(None): "nothing"}.get(type(v), type(v).__name__)
    text = repr(v) if not isinstance(v, str) else '"' + v[:40] + ('..."' if len(v) > 40 else '"')
    return f"{text} ({kind})"


def _number(where: str, key: str, v, lo: float, hi: float) -> None:
    want = f"a finite number >= {lo:g}" if math.isinf(hi) else f"a number in [{lo:g}, {hi:g}]"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InputError(f"{where}: {key} must be {want}, found {_show(v)}")
    if not lo <= v <= hi or not math.isfinite(v):  # NaN fails too
        raise InputError(f"{where}: {key} {v!r} must be {want}")


def _whole(where: str, key: str, v, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{where}: {key} must be a whole number in [{lo}, {hi}], found {_show(v)}")
    if not lo <= v <= hi:
        raise InputError(f"{where}: {key} {v} must be in [{lo}, {hi}]")


@dataclass
class Encoded:
    """One tensor's encoding (arrays inline) and its dense reference (what the file decodes to)."""

    encoding: dict
    reference: np.ndarray
    nbytes: int
    stats: dict = field(default_factory=dict)


FLOAT16_MAX = 65504.0
FLOAT16_REL_ERROR = 1e-3  # float16 rounds to nearest with 2^-11 relative error; twice that per row is its promise


def float16_loss(w: np.ndarray) -> str | None:
    """Why float16 cannot stand in for w, or None when it can: a finite value beyond float16's range (65504), or a
    row (the first dimension, as the file's rows; the whole tensor if 1-D) whose relative L2 rounding error exceeds
    FLOAT16_REL_ERROR, which happens only when the row's values are all down in float16's subnormal range (below
    6.1e-5). Single tiny values in a row of normal ones may flush to zero: their error is below the row's rounding."""
    a = np.asarray(w, dtype=np.float64)
    a = np.where(np.isfinite(a), a, 0.0)
    big = float(np.abs(a).max()) if a.size else 0.0
    if big > FLOAT16_MAX:
        return f"values up to {big:.3g} exceed float16's largest, {FLOAT16_MAX:g}"
    rows = a.reshape(a.shape[0], -1) if a.ndim >= 2 else a.reshape(1, -1)
    norm = np.sqrt((rows * rows).sum(axis=1))
    err = np.sqrt(((rows.astype(np.float16).astype(np.float64) - rows) ** 2).sum(axis=1))
    bad = np.flatnonzero(err > FLOAT16_REL_ERROR * norm)
    if bad.size:
        r = int(bad[0])
        return (f"row {r}'s values (largest {float(np.abs(rows[r]).max()):.3g}) are below float16's normal range "
                f"(6.1e-5): rounding them moves the row by {float(err[r] / norm[r]):.3g} relative, more than "
                f"{FLOAT16_REL_ERROR:g}")
    return None


def fits_float16(w: np.ndarray) -> bool:
    """float16 holds w to its promised precision (float16_loss says why not)."""
    return float16_loss(w) is None


def dense(w: np.ndarray, storage: str | None = None) -> Encoded:
    storage = storage or w.dtype.name
    loss = float16_loss(w) if storage == "float16" else None
    if loss:
        raise ValueError(f"float16 cannot hold this tensor: {loss}; use encoding 'dense' or a codebook")
    data = np.asarray(w, dtype=np.dtype(C.DTYPES[storage]), order="C")  # keeps 0-d scalars 0-d
    ref = data.astype(w.dtype) if storage != w.dtype.name else data
    return Encoded({"type": C.ENC_DENSE, "dtype": storage, "data": data.reshape(-1)}, ref, data.nbytes,
                   {"encoding": "dense" if storage == w.dtype.name else storage})


def int8(w: np.ndarray) -> Encoded:
    rows = w.shape[0]
    m = w.reshape(rows, -1).astype(np.float64)
    lo, hi = np.minimum(m.min(axis=1), 0.0), np.maximum(m.max(axis=1), 0.0)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    zp = np.clip(np.round(-128 - lo / scale), -128, 127).astype(np.int8)
    q = np.clip(np.round(m / scale[:, None]) + zp[:, None], -128, 127).astype(np.int8)
    ref = ((q.astype(np.float32) - zp[:, None].astype(np.float32)) * scale[:, None]).reshape(w.shape)
    enc = {"type": C.ENC_INT8, "axis": 0, "scale": scale, "zero_point": zp, "data": q.reshape(-1)}
    return Encoded(enc, ref.astype(np.float32), q.nbytes + 5 * rows, {"encoding": "int8", "weight_bits": 8})


def encode_stream(symbols: np.ndarray, bits: int, boundaries: np.ndarray, allow_huffman: bool) -> tuple[dict, dict]:
    """Packed or chunked Huffman, whichever takes fewer bytes in the file (tables and offsets included)."""
    n = int(symbols.size)
    packed_bytes = -(-n * bits // 8)
    best = ({"coding": C.CODING_PACKED, "bits": bits, "data": bitpack.pack(symbols, bits)}, packed_bytes)
    huff_bytes = None
    if allow_huffman and bits <= C.MAX_CODE_BITS and n > 0:
        freqs = np.bincount(symbols.astype(np.int64), minlength=1 << bits)
        lengths = huffman.code_lengths(freqs, C.MAX_CODE_LEN)
        data, offsets = huffman.encode(symbols, lengths, boundaries)
        table = bitpack.pack(lengths, C.LENGTHS_BITS)
        huff_bytes = int(data.size + table.size + offsets.nbytes)
        if huff_bytes < packed_bytes:
            best = ({"coding": C.CODING_HUFFMAN, "bits": bits, "lengths": table, "offsets": offsets.astype("<u4"),
                     "data": data}, huff_bytes)
    stats = {"count": n, "bits": bits, "packed_bytes": packed_bytes, "huffman_bytes": huff_bytes,
             "bytes": best[1], "coding": best[0]["coding"]}
    return best[0], stats


def _row_scales(w: np.ndarray, keep: np.ndarray, bits: int, reserve: bool, s: LayerSettings) -> np.ndarray | None:
    """Per-output-channel scales when the channels' magnitudes differ so much that one codebook loses rows."""
    if s.channel_scales is False or w.shape[0] < 2:
        return None
    scales = cluster.choose_row_scales(w * keep)
    if s.channel_scales is True:
        return scales
    nz = scales[scales > 0]
    if nz.size < 2 or nz.max() <= 4 * nz.min():
        return None
    errs = []
    for rs in (None, scales):
        cb, codes = cluster.quantize(w, keep, bits, reserve_zero=reserve, row_scales=rs, init=s.init, seed=s.seed)
        errs.append(_worst_row_error(w * keep, cluster.dequantize(cb, codes, rs)))
    return scales if errs[1] < 0.5 * errs[0] and errs[0] > 0.01 else None


MAX_OUTLIERS = 0.05
MAX_COARSE_ROWS = 8  # LayerSettings.coarse_rows: at most 2 x 8 + 1 grid entries


def outlier_mask(w: np.ndarray, fraction: float, bits: int) -> np.ndarray | None:
    """The round(fraction x size) weights of largest magnitude (ties: the first in order), at most as many as keep
    the codebook within a Huffman alphabet (C.MAX_CODE_BITS bits) beside the 2^bits centroids; None when that
    leaves none."""
    room = (1 << C.MAX_CODE_BITS) - (1 << bits)
    n = min(int(round(fraction * w.size)), room)
    if n <= 0:
        return None
    flat = np.abs(w).ravel()
    idx = np.argsort(-flat, kind="stable")[:n]
    mask = np.zeros(w.size, dtype=bool)
    mask[idx] = True
    return mask.reshape(w.shape)


def _with_outliers(w: np.ndarray, exact: np.ndarray, codebook: np.ndarray, codes: np.ndarray,
                   scales: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The codebook extended by one entry per outlier: where the rest (outliers at 0) was quantised to codebook[c],
    the entry is codebook[c] + w / scale, so that the element decodes to the rest's value plus the outlier, which
    the compensation of the rest already accounts for (the rest is quantised exactly as without the outliers)."""
    rows = w.shape[0]
    w2, e2, c2 = w.reshape(rows, -1), exact.reshape(rows, -1), codes.reshape(rows, -1).astype(np.int64)
    r, c = np.nonzero(e2)
    s = np.ones(rows, np.float32) if scales is None else np.asarray(scales, np.float32)
    values = (codebook[c2[r, c]].astype(np.float32) + w2[r, c] / s[r]).astype(np.float32)
    k = codebook.size
    out = c2.copy()
    out[r, c] = k + np.arange(r.size)
    total = k + r.size
    dtype = np.uint8 if total <= 256 else np.uint16
    return np.concatenate([codebook.astype(np.float32), values]), out.astype(dtype).reshape(codes.shape)


def _worst_row_error(w: np.ndarray, q: np.ndarray) -> float:
    a = w.reshape(w.shape[0], -1).astype(np.float64)
    b = q.reshape(q.shape[0], -1).astype(np.float64)
    norm = np.linalg.norm(a, axis=1)
    ok = norm > 0
    if not ok.any():
        return 0.0
    return float((np.linalg.norm(a - b, axis=1)[ok] / norm[ok]).max())


def encode_weight(w: np.ndarray, s: LayerSettings, default_bits: int, stats=None) -> Encoded:
    """Encode one float32 weight tensor (rows = output channels = w.shape[0]) following its settings.
    stats: a calibration.LayerStats of the layer's inputs; codebook codes are then chosen with error compensation
    (packer/compensate.py) instead of nearest-centroid."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if s.encoding in ("dense", "float16"):
        return dense(w, "float32" if s.encoding == "dense" else "float16")
    if s.encoding == C.ENC_INT8:
        return int8(w)
    if w.ndim < 1 or w.size == 0:
        return dense(w)
    bits = s.bits or default_bits
    keep = prune.mask_by_std(w, s.quality) if s.quality is not None else prune.mask_by_sparsity(w, s.sparsity)
    minor = minor_classes(w, stats) if s.coarse_rows or s.drop_minor else None
    if minor is not None and s.drop_minor:  # the minor classes' weights pruned: their scores are the bias alone
        keep = keep & (~minor[None, :] if stats.transpose else ~minor[:, None])
        minor = None
    pruned = not keep.all()
    rows = w.shape[0]
    cols = w.size // rows
    exact = outlier_mask(w, s.outliers, bits) if s.outliers and not pruned else None
    fit = keep if exact is None else keep & ~exact
    wq = w if exact is None else np.where(exact, np.float32(0), w)  # the rest: outliers at 0, quantised as zeros
    if minor is not None and (pruned or exact is not None or s.entropy_rate):
        minor = None  # coarse classes without pruning, outliers or an entropy rate
    if minor is not None:
        codebook, codes, scales = _coarse_rows(w, minor, bits, s, stats)
    else:
        scales = _row_scales(wq, fit, bits, pruned, s)
        if exact is not None and scales is not None and not np.all(scales[np.nonzero(exact.reshape(rows, -1))[0]] > 0):
            scales = None  # a row of outliers only would have scale 0, which no entry can undo
        codebook, codes = cluster.quantize(wq, fit, bits, reserve_zero=pruned, row_scales=scales, init=s.init,
                                           seed=s.seed, rate=s.entropy_rate)
        if stats is not None:
            codes = _compensated_codes(wq, keep, codebook, scales, pruned, stats, s.entropy_rate,
                                       codes[keep] if s.entropy_rate else None).astype(codes.dtype)
    if exact is not None:
        codebook, codes = _with_outliers(w, exact, codebook, codes, scales)
    reference = cluster.dequantize(codebook, codes, scales).reshape(w.shape)
    codebook_dtype = s.codebook_dtype
    if exact is not None and codebook_dtype != "float32" and not fits_float16(codebook):
        codebook_dtype = "float32"  # an outlier over a small row scale can leave float16's range
    codebook_stored = codebook.astype(np.dtype(C.DTYPES[codebook_dtype]))
    if codebook_dtype != "float32":  # the file's codebook is what decodes; make the reference agree
        codebook = codebook_stored.astype(np.float32)
        reference = cluster.dequantize(codebook, codes, scales).reshape(w.shape)
    k = int(codebook.size)
    code_bits = max(1, (k - 1).bit_length())  # a codebook that came out smaller needs fewer bits
    base = {"codebook_dtype": codebook_dtype, "k": k, "codebook": codebook_stored}
    if scales is not None:
        base["row_scales"] = scales.astype(np.float32)
    fixed = codebook_stored.nbytes + (scales.nbytes if scales is not None else 0)
    keep2 = keep.reshape(rows, cols)
    codes2 = codes.reshape(rows, cols)
    kept = int(keep.sum())
    stats = {"weights": int(w.size), "kept": kept, "k": k, "row_scales": scales is not None}
    candidates = []
    if s.encoding in ("auto", C.ENC_CODEBOOK):
        per_chunk = _rows_per_chunk(rows, cols, s.chunk_symbols)
        stream, st = encode_stream(codes2.reshape(-1), code_bits, _chunk_starts(rows, per_chunk) * cols, s.huffman)
        enc = {"type": C.ENC_CODEBOOK, **base, "rows_per_chunk": per_chunk, "codes": stream}
        candidates.append((fixed + st["bytes"], enc, {**stats, "encoding": C.ENC_CODEBOOK, "codes": st}))
    if s.encoding in ("auto", C.ENC_SPARSE) and pruned:
        gap_bits = s.gap_bits or csr.choose_gap_bits(keep2, code_bits)
        indptr, gaps, entry_codes = csr.encode(keep2, codes2, gap_bits)
        nnz = int(indptr[-1])
        per_chunk = _rows_per_chunk(rows, max(1, nnz // rows), s.chunk_symbols)
        bounds = indptr[_chunk_starts(rows, per_chunk)].astype(np.int64)
        gstream, gst = encode_stream(gaps, gap_bits, bounds, s.huffman)
        cstream, cst = encode_stream(entry_codes, code_bits, bounds, s.huffman)
        counts = np.diff(indptr.astype(np.int64))
        count_bits = max(1, int(counts.max()).bit_length()) if rows else 1
        if count_bits > C.MAX_PACKED_BITS:
            raise ValueError(f"a row holds {int(counts.max())} entries: more than sparse_codebook can count "
                             f"(< 2**{C.MAX_PACKED_BITS}); use encoding 'codebook' for this tensor")
        rstream, rst = encode_stream(counts, count_bits, _chunk_starts(rows, per_chunk), s.huffman)
        enc = {"type": C.ENC_SPARSE, **base, "rows_per_chunk": per_chunk, "nnz": nnz,
               "row_counts": rstream, "gaps": gstream, "codes": cstream}
        size = fixed + rst["bytes"] + gst["bytes"] + cst["bytes"]
        candidates.append((size, enc, {**stats, "encoding": C.ENC_SPARSE, "nnz": nnz, "fillers": nnz - kept,
                                       "gap_bits": gap_bits, "row_counts": rst, "gaps": gst, "codes": cst}))
    if s.encoding == C.ENC_SPARSE and not pruned:
        raise ValueError("encoding 'sparse_codebook' needs pruning (sparsity > 0 or a quality threshold)")
    size, enc, st = min(candidates, key=lambda c: c[0])
    if s.encoding == "auto" and size >= w.nbytes:
        return dense(w)  # compression does not pay for this tensor
    return Encoded(enc, reference.astype(np.float32), size, st)


def minor_classes(w: np.ndarray, stats) -> np.ndarray | None:
    """The minor classes of a 2-D class-head weight (calibration.LayerStats.minor_rows, indexed like the statistics'
    rows: w's rows, or its columns when stored (in, out), stats.transpose), or None where the statistics name none,
    all, or do not fit w."""
    minor = getattr(stats, "minor_rows", None)
    if minor is None or w.ndim != 2 or minor.shape != (w.shape[1 if stats.transpose else 0],) or minor.all() \
            or not minor.any():
        return None
    return minor


def _coarse_rows(w: np.ndarray, minor: np.ndarray, bits: int, s: LayerSettings, stats):
    """(codebook, codes, row scales) of a 2-D tensor whose `minor` classes take a coarse grid
    (LayerSettings.coarse_rows): per-row scales max |w| (1 for a row of zeros, which the grid's 0 then holds exactly);
    the 2**bits k-means centroids fitted to the other classes (over w / scale), then the grid j / coarse_rows,
    j = -coarse_rows..coarse_rows, appended; each part's codes compensated with the layer's statistics within its own
    entries. The classes are the statistics' rows: the tensor's rows (a Gemm with transB), each on the grid of its
    own scale, or, stored (in, out) (stats.transpose: a MatMul), its columns, on the grid of each input row's scale
    (the format scales rows only)."""
    scales = cluster.choose_row_scales(w)
    scales = np.where(scales > 0, scales, np.float32(1)).astype(np.float32)

    def part(mask):  # (the tensor's part holding these classes, its row scales)
        return (w[:, mask], scales) if stats.transpose else (w[mask], scales[mask])

    major, major_scales = part(~minor)
    cb, _ = cluster.quantize(major, None, bits, reserve_zero=False, row_scales=major_scales, init=s.init, seed=s.seed)
    grid = np.arange(-s.coarse_rows, s.coarse_rows + 1, dtype=np.float32) / np.float32(s.coarse_rows)
    codebook = np.concatenate([cb.astype(np.float32), grid])
    codes = np.zeros(w.shape, np.uint8 if codebook.size <= 256 else np.uint16)
    for mask, book, base in ((~minor, cb, 0), (minor, grid, cb.size)):
        wp, sp = part(mask)
        c = _compensated_codes(wp, np.ones(wp.shape, bool), book, sp, False, stats) + base
        if stats.transpose:
            codes[:, mask] = c
        else:
            codes[mask] = c
    return codebook, codes, scales


def _compensated_codes(w, keep, codebook, scales, pruned: bool, stats, rate: float = 0.0,
                       kept_codes=None) -> np.ndarray:
    """Codes chosen by compensate.best_assign on the (out, in) view of the weight (the transpose for MatMul's
    (in, out)): per output channel the least layer-output error of nearest-centroid and compensated codes; with
    an entropy rate, the entropy-constrained compensated codes, code lengths from the kept weights' clustering
    (kept_codes)."""
    from .compensate import best_assign, code_lengths

    rows = w.shape[0]
    w2, k2 = w.reshape(rows, -1), keep.reshape(rows, -1)
    sc = None if scales is None else scales.astype(np.float32)[:, None]
    kw = {}
    if rate and kept_codes is not None:
        kw = {"rate": rate, "lengths": code_lengths(kept_codes, codebook.size)}
    if stats.transpose:
        codes = best_assign(w2.T, k2.T, codebook, None if sc is None else sc.T, stats.h, pruned, **kw).T
    else:
        codes = best_assign(w2, k2, codebook, sc, stats.h, pruned, **kw)
    return codes.reshape(w.shape)


def _chunk_starts(rows: int, per_chunk: int) -> np.ndarray:
    """First row of every chunk, and `rows` at the end (spec: n_chunks = ceil(rows / rows_per_chunk))."""
    return np.minimum(np.arange(-(-rows // per_chunk) + 1, dtype=np.int64) * per_chunk, rows)


def _rows_per_chunk(rows: int, symbols_per_row: int, target: int) -> int:
    return max(1, min(rows, target // max(1, symbols_per_row)))


def default_bits(op: str) -> int:
    """Deep Compression's defaults: 8-bit codebooks for convolutions, 5-bit for fully connected layers."""
    return 8 if op in ("Conv", "ConvTranspose") else 5


def ratio(original_bytes: int, packed_bytes: int) -> float:
    return original_bytes / packed_bytes if packed_bytes else math.inf
