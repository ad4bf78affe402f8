"""Weights held by rows, as the file stores them (spec/format.md section 6): "csr" (a sparse weight's row counts,
gaps and codes decoded to bytes: Deep Compression's relative-index CSR, about 2 bytes per entry) and "streamed" (the
file's chunks, decoded block of rows by block of rows into scratch at every run), with the row-block kernels that run
Gemm / MatMul / Conv on them. runtime/layers.py chooses and drives these holdings; the Huffman tables are
runtime/huffman.py's."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from edgepack.runtime import bitpack, huffman
from edgepack.runtime import constants as C
from edgepack.runtime.errors import FormatError
from edgepack.runtime.ops.elementwise import EP_ACT, EP_ALPHA, EP_BETA, EP_P0, EP_P1, activate_kernel
from edgepack.runtime.weights import SparseCodebookWeight

# Lookup bits of the Huffman tables a streamed layer keeps: 2**9 uint16 = 1 KiB per stream instead of the reader's
# 4 KiB (LOOKUP_BITS = 11); longer codes (rare) finish with the canonical walk.
STREAM_LOOKUP_BITS = 9


# stream coding as the kernels see it (params[0])
_PACKED, _HUFFMAN = 0, 1
# error codes of the streamed kernels
ERR_OK, ERR_STREAM, ERR_RANGE = 0, 1, 2  # ERR_RANGE: a decoded column or code out of range


@njit(cache=True)
def _reader_start_kernel(data, offs, params, c, start):
    """Bit reader state (pos, end, bitbuf, bitcount) at the first symbol of chunk c, which is stream symbol
    `start`: a packed stream is randomly accessible, a Huffman chunk starts on a byte of its own (spec 6.5)."""
    if params[0] == _PACKED:
        p = start * params[1]
        pos = p >> 3
        end = np.int64(data.shape[0])
        if pos >= end:
            return pos, end, np.int64(0), np.int64(0)
        return pos + 1, end, np.int64(data[pos]) >> (p & 7), np.int64(8 - (p & 7))
    return np.int64(offs[c]), min(np.int64(offs[c + 1]), np.int64(data.shape[0])), np.int64(0), np.int64(0)


# The decode loops below spell the per-symbol step out (refill, then a packed read or a Huffman lookup): a helper
# taking the arrays costs reference counting at every call, 10x the step itself. Two streams read in one loop give
# the CPU two independent dependency chains: 1.7x the throughput of reading them one after the other.

@njit(cache=True)
def _decode_one_kernel(s, c, start, n, out):
    """Symbols of chunk c of stream s (stream symbols [start, start + n)) into out[:n]; 0, or 1 when the bytes
    do not decode (they were validated at load: only a file changed under the mapping does that)."""
    data, offs, lookup, tab, symbols, params = s
    pos, end, buf, cnt = _reader_start_kernel(data, offs, params, c, start)
    packed = params[0] == _PACKED
    bits = params[1]
    lb = params[2]
    mask = (1 << (bits if packed else lb)) - 1
    for i in range(n):
        if cnt < 16:
            while cnt <= 48 and pos < end:
                buf |= np.int64(data[pos]) << cnt
                pos += 1
                cnt += 8
        if packed:
            sym = buf & mask
            ln = bits
        else:
            e = np.int64(lookup[buf & mask])
            ln = e & 15
            sym = e >> 4
            if ln == 0:
                sym, ln = huffman.walk_kernel(sym, buf, cnt, lb, params[3], tab[0], tab[1], tab[2], symbols)
        if ln <= 0 or ln > cnt:
            return 1
        out[i] = sym
        buf >>= ln
        cnt -= ln
    return 0


@njit(cache=True)
def _decode_two_kernel(s, t, c, start, n, out_s, out_t):
    """_decode_one_kernel for two streams with the same symbol ranges (gaps and codes), in one loop."""
    sd, so, sl, st, ss, sp = s
    td, to, tl, tt, ts, tp = t
    spos, send, sbuf, scnt = _reader_start_kernel(sd, so, sp, c, start)
    tpos, tend, tbuf, tcnt = _reader_start_kernel(td, to, tp, c, start)
    s_packed = sp[0] == _PACKED
    t_packed = tp[0] == _PACKED
    s_bits = sp[1]
    t_bits = tp[1]
    slb = sp[2]
    tlb = tp[2]
    smask = (1 << (s_bits if s_packed else slb)) - 1
    tmask = (1 << (t_bits if t_packed else tlb)) - 1
    for i in range(n):
        if scnt < 16:
            while scnt <= 48 and spos < send:
                sbuf |= np.int64(sd[spos]) << scnt
                spos += 1
                scnt += 8
        if tcnt < 16:
            while tcnt <= 48 and tpos < tend:
                tbuf |= np.int64(td[tpos]) << tcnt
                tpos += 1
                tcnt += 8
        if s_packed:
            sym = sbuf & smask
            ln = s_bits
        else:
            e = np.int64(sl[sbuf & smask])
            ln = e & 15
            sym = e >> 4
            if ln == 0:
                sym, ln = huffman.walk_kernel(sym, sbuf, scnt, slb, sp[3], st[0], st[1], st[2], ss)
        if ln <= 0 or ln > scnt:
            return 1
        out_s[i] = sym
        sbuf >>= ln
        scnt -= ln
        if t_packed:
            sym = tbuf & tmask
            ln = t_bits
        else:
            e = np.int64(tl[tbuf & tmask])
            ln = e & 15
            sym = e >> 4
            if ln == 0:
                sym, ln = huffman.walk_kernel(sym, tbuf, tcnt, tlb, tp[3], tt[0], tt[1], tt[2], ts)
        if ln <= 0 or ln > tcnt:
            return 1
        out_t[i] = sym
        tbuf >>= ln
        tcnt -= ln
    return 0


@njit(cache=True)
def _decode_block_kernel(sparse, cnt, gap, code, c, r0, nrows, s0, ns, cnt_buf, gap_buf, code_buf):
    """Decode chunk c's row counts, gaps and codes (dense codes: codes only) into the scratch buffers."""
    if not sparse:
        return _decode_one_kernel(code, c, s0, ns, code_buf)
    if _decode_one_kernel(cnt, c, r0, nrows, cnt_buf) != 0:
        return 1
    return _decode_two_kernel(gap, code, c, s0, ns, gap_buf, code_buf)


# Row-block kernels: rows [r0, r0 + nrows) of a weight given as row counts, gaps and codes (a chunk decoded into
# scratch, or the whole weight held decoded); with sparse False, every row has `cols` entries and no gaps.
# The drivers below run them over the chunks of a streamed weight or once over a decoded (csr) one.

@njit(cache=True)
def _linear_rows_kernel(x, rows_out, sparse, r0, nrows, ns, cols, cnt, gaps, codes, codebook, scales, bias, ep,
                        out, info):
    """out (B, n) of y = act(alpha * x (B, k) @ W^T + beta * bias), for the block's rows of W (alpha, beta and the
    fused activation: the epilogue vector `ep` of runtime/ops/elementwise.py).

    rows_out: the rows are outputs (W (n, k), Gemm transB = 1): one dot product per row in column order, as the
    compact kernel sums (the results agree bit for bit); scaled and biased here. Else the rows are inputs
    (B (k, n)): each scatters into out, which the caller zeroed and finishes. Returns ERR_*; info = (-, row)."""
    bsz = x.shape[0]
    n_out = out.shape[1]
    ncode = codebook.shape[0]
    has_s = scales.shape[0] != 0
    has_b = bias.shape[0] != 0
    alpha, beta, kind, p0, p1 = ep[EP_ALPHA], ep[EP_BETA], np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    e = 0
    for i in range(nrows):
        r = r0 + i
        m = np.int64(cnt[i]) if sparse else cols
        if e + m > ns:
            info[1] = r
            return 2
        if rows_out:
            for b in range(bsz):
                # float32 accumulator: every sum rounds as the compact kernel's float32 array does
                acc = np.float32(0.0)
                col = -1
                for j in range(e, e + m):
                    col += (np.int64(gaps[j]) + 1) if sparse else 1
                    k = np.int64(codes[j])
                    if col >= cols or k >= ncode:
                        info[1] = r
                        return 2
                    w = codebook[k]
                    if w != 0.0:  # filler entries (and zero centroids): the compact form drops them too
                        acc += w * x[b, col]
                v = acc
                if has_s:
                    v *= scales[r]
                v *= alpha
                if has_b:
                    v += beta * bias[r]
                out[b, r] = activate_kernel(v, kind, p0, p1)
        else:
            for b in range(bsz):
                xk = x[b, r]
                if xk == 0.0:
                    continue
                if has_s:
                    xk *= scales[r]
                col = -1
                for j in range(e, e + m):
                    col += (np.int64(gaps[j]) + 1) if sparse else 1
                    k = np.int64(codes[j])
                    if col >= n_out or k >= ncode:
                        info[1] = r
                        return 2
                    w = codebook[k]
                    if w != 0.0:
                        out[b, col] += w * xk
        e += m
    if e != ns:
        info[1] = r0
        return 2
    return 0


@njit(cache=True)
def _scatter_finish_kernel(out, bias, ep, start):
    """Rows-are-inputs products: zero out (start) or apply alpha, beta * bias and the activation (not start)."""
    has_b = bias.shape[0] != 0
    alpha, beta, kind, p0, p1 = ep[EP_ALPHA], ep[EP_BETA], np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    for b in range(out.shape[0]):
        for n in range(out.shape[1]):
            if start:
                out[b, n] = 0.0
            else:
                v = out[b, n] * alpha
                if has_b:
                    v += beta * bias[n]
                out[b, n] = activate_kernel(v, kind, p0, p1)


@njit(cache=True)
def streamed_linear_kernel(x, rows_out, sparse, cnt, gap, code, row_starts, sym_starts, cols, codebook, scales,
                            bias, ep, out, cnt_buf, gap_buf, code_buf, info):
    """The linear product with W decoded chunk by chunk into the scratch buffers. Returns ERR_*; info = (chunk,
    row)."""
    if not rows_out:
        _scatter_finish_kernel(out, bias, ep, True)
    for c in range(row_starts.shape[0] - 1):
        r0 = row_starts[c]
        nrows = row_starts[c + 1] - r0
        s0 = sym_starts[c]
        ns = sym_starts[c + 1] - s0
        info[0] = c
        if _decode_block_kernel(sparse, cnt, gap, code, c, r0, nrows, s0, ns, cnt_buf, gap_buf, code_buf) != 0:
            info[1] = r0
            return 1
        err = _linear_rows_kernel(x, rows_out, sparse, r0, nrows, ns, cols, cnt_buf, gap_buf, code_buf, codebook,
                                  scales, bias, ep, out, info)
        if err != 0:
            return err
    if not rows_out:
        _scatter_finish_kernel(out, bias, ep, False)
    return 0


@njit(cache=True)
def csr_linear_kernel(x, rows_out, cnt, gaps, codes, cols, codebook, scales, bias, ep, out, info):
    """The linear product with W held decoded (row counts, gaps, codes). Returns ERR_*; info = (-, row)."""
    if not rows_out:
        _scatter_finish_kernel(out, bias, ep, True)
    err = _linear_rows_kernel(x, rows_out, True, 0, cnt.shape[0], codes.shape[0], cols, cnt, gaps, codes, codebook,
                              scales, bias, ep, out, info)
    if err == 0 and not rows_out:
        _scatter_finish_kernel(out, bias, ep, False)
    return err


# geometry vector of conv_rows_kernel (layers.conv_geometry fills it from runtime/ops/conv.py geometry)
_G_C, _G_H, _G_W, _G_OH, _G_OW, _G_KH, _G_KW, _G_SH, _G_SW, _G_DH, _G_DW, _G_PT, _G_PL, _G_CING, _G_COUTG = range(15)


@njit(cache=True, error_model="numpy")  # integer divisions never raise
def conv_rows_kernel(x, geo, sparse, r0, nrows, ns, cols, cnt, gaps, codes, codebook, scales, bias, ep, out,
                      info):
    """Direct convolution for output channels [r0, r0 + nrows): x (N, C*H*W) -> out (N, cout*OH*OW) (samples
    flat), the weight (cout, cin/g, kh, kw) given by rows. Each tap adds weight * (the input plane, shifted) to
    the output plane, taps in column order, then out = out * scale + bias, as runtime/ops/conv.py computes it.
    Returns ERR_*; info = (-, row)."""
    nb = x.shape[0]
    h_, w_, oh_, ow_ = geo[_G_H], geo[_G_W], geo[_G_OH], geo[_G_OW]
    kh, kw, sh, sw = geo[_G_KH], geo[_G_KW], geo[_G_SH], geo[_G_SW]
    dh, dw, pt, pl = geo[_G_DH], geo[_G_DW], geo[_G_PT], geo[_G_PL]
    cin_g, cout_g = geo[_G_CING], geo[_G_COUTG]
    plane_in = h_ * w_
    plane_out = oh_ * ow_
    ncode = codebook.shape[0]
    has_s = scales.shape[0] != 0
    has_b = bias.shape[0] != 0
    kind, p0, p1 = np.int64(ep[EP_ACT]), ep[EP_P0], ep[EP_P1]
    kk = kh * kw
    e = 0
    for i in range(nrows):
        co = r0 + i
        m = np.int64(cnt[i]) if sparse else cols
        if e + m > ns:
            info[1] = co
            return 2
        cbase = (co // cout_g) * cin_g
        obase = co * plane_out
        for b in range(nb):
            xb = x[b]
            ob = out[b]
            for p in range(obase, obase + plane_out):
                ob[p] = 0.0
            col = -1
            for j in range(e, e + m):
                col += (np.int64(gaps[j]) + 1) if sparse else 1
                k = np.int64(codes[j])
                if col >= cols or k >= ncode:
                    info[1] = co
                    return 2
                w = codebook[k]
                if w == 0.0:
                    continue
                ci = col // kk
                ky = (col - ci * kk) // kw
                kx = col - ci * kk - ky * kw
                xbase = (cbase + ci) * plane_in
                off = kx * dw - pl
                # output columns whose input column ox * sw + off lies inside the row
                lo = 0 if off >= 0 else (sw - 1 - off) // sw
                last = w_ - 1 - off
                hi = 0 if last < 0 else min(ow_, last // sw + 1)
                for oy in range(oh_):
                    iy = oy * sh - pt + ky * dh
                    if iy < 0 or iy >= h_:
                        continue
                    xo = xbase + iy * w_ + off + lo * sw
                    oo = obase + oy * ow_ + lo
                    orow = ob[oo: oo + hi - lo]
                    # loops from 0 over row slices: numba then drops the negative-index test and LLVM
                    # vectorises (3x the speed of indexing the flat sample with oo + ox)
                    if sw == 1:
                        xrow = xb[xo: xo + hi - lo]
                        for t in range(hi - lo):
                            orow[t] += w * xrow[t]
                    else:
                        for t in range(hi - lo):
                            orow[t] += w * xb[xo + t * sw]
            s = scales[co] if has_s else np.float32(1.0)
            bv = bias[co] if has_b else np.float32(0.0)
            for p in range(obase, obase + plane_out):
                ob[p] = activate_kernel(ob[p] * s + bv, kind, p0, p1)
        e += m
    if e != ns:
        info[1] = r0
        return 2
    return 0


@njit(cache=True)
def streamed_conv_kernel(x, geo, sparse, cnt, gap, code, row_starts, sym_starts, cols, codebook, scales, bias,
                          ep, out, cnt_buf, gap_buf, code_buf, info):
    """Conv with the weight decoded chunk by chunk into the scratch buffers. Returns ERR_*; info = (chunk, row)."""
    for c in range(row_starts.shape[0] - 1):
        r0 = row_starts[c]
        nrows = row_starts[c + 1] - r0
        s0 = sym_starts[c]
        ns = sym_starts[c + 1] - s0
        info[0] = c
        if _decode_block_kernel(sparse, cnt, gap, code, c, r0, nrows, s0, ns, cnt_buf, gap_buf, code_buf) != 0:
            info[1] = r0
            return 1
        err = conv_rows_kernel(x, geo, sparse, r0, nrows, ns, cols, cnt_buf, gap_buf, code_buf, codebook, scales,
                                bias, ep, out, info)
        if err != 0:
            return err
    return 0


# ================================================================================================ streamed weights

_EMPTY_U8 = np.zeros(0, dtype=np.uint8)
_EMPTY_U16 = np.zeros(0, dtype=np.uint16)
_EMPTY_U32 = np.zeros(0, dtype=np.uint32)
_EMPTY_TAB = np.zeros((3, 16), dtype=np.int32)
EMPTY_F32 = np.zeros(0, dtype=np.float32)
for _a in (_EMPTY_U8, _EMPTY_U16, _EMPTY_U32, _EMPTY_TAB, EMPTY_F32):
    _a.flags.writeable = False


def _sym_dtype(bits: int):
    return np.uint8 if bits <= 8 else np.uint16


@dataclass(eq=False)
class Stream:
    """One stream of a tensor as stored: its bytes stay in the mapped file; a Huffman stream adds decode tables."""

    arrays: tuple  # (data u8, offsets u32, lookup u16, tab int32 (3, 16), symbols u16, params int64) for kernels
    bits: int
    coding: str

    @property
    def dtype(self):
        return _sym_dtype(self.bits)

    def __post_init__(self) -> None:
        self.arrays = tuple(ro(a) for a in self.arrays)

    @staticmethod
    def absent() -> "Stream":
        return Stream((_EMPTY_U8, _EMPTY_U32, _EMPTY_U16, _EMPTY_TAB, _EMPTY_U16,
                       np.array([_PACKED, 1, 0, 0], np.int64)), 1, "absent")

    @staticmethod
    def from_json(s: dict, data: np.ndarray, where: str) -> "Stream":
        """A stream the reader has already validated (spec/format.md 6.5): only views and tables are made here."""
        def view(ref, dtype):
            off, length = ref
            return data[off: off + length].view(dtype)

        bits = int(s["bits"])
        if s["coding"] == C.CODING_PACKED:
            return Stream((view(s["data"], np.uint8), _EMPTY_U32, _EMPTY_U16, _EMPTY_TAB, _EMPTY_U16,
                           np.array([_PACKED, bits, 0, 0], np.int64)), bits, s["coding"])
        lengths = bitpack.unpack(view(s["lengths"], np.uint8), C.LENGTHS_BITS, 1 << bits, f"{where} lengths")
        table = huffman.build_decode_table(lengths, STREAM_LOOKUP_BITS)
        tab = np.stack([table.counts, table.first_code, table.first_index]).astype(np.int32)
        return Stream((view(s["data"], np.uint8), view(s["offsets"], np.uint32), table.lookup, tab,
                       table.symbols.astype(np.uint16), np.array([_HUFFMAN, bits, table.lookup_bits, table.max_len],
                                                                 np.int64)), bits, s["coding"])


@dataclass(eq=False)
class StreamedWeight:
    """A codebook or sparse_codebook weight kept as in the file, with what decoding it block by block needs."""

    sparse: bool
    rows: int
    cols: int
    codebook: np.ndarray
    scales: np.ndarray
    row_starts: np.ndarray  # int64 (n_chunks + 1): first row of every chunk
    sym_starts: np.ndarray  # int64 (n_chunks + 1): first gap/code symbol of every chunk
    cnt: Stream
    gap: Stream
    code: Stream
    rows_per_chunk: int
    _carved: tuple | None = None

    @staticmethod
    def from_weight(weight, encoding: dict, data: np.ndarray, where: str) -> "StreamedWeight":
        sparse = isinstance(weight, SparseCodebookWeight)
        rows, cols = weight.rows, weight.cols
        per_chunk = int(encoding["rows_per_chunk"])
        row_starts = np.minimum(np.arange(-(-rows // per_chunk) + 1, dtype=np.int64) * per_chunk, rows)
        if sparse:
            sym_starts = weight.indptr[row_starts].astype(np.int64)
            cnt = Stream.from_json(encoding["row_counts"], data, f"{where} row_counts")
            gap = Stream.from_json(encoding["gaps"], data, f"{where} gaps")
        else:
            sym_starts = row_starts * cols
            cnt = gap = Stream.absent()
        code = Stream.from_json(encoding["codes"], data, f"{where} codes")
        scales = ro(weight.row_scales) if weight.row_scales is not None else EMPTY_F32
        return StreamedWeight(sparse, rows, cols, ro(weight.codebook), scales, ro(row_starts), ro(sym_starts),
                              cnt, gap, code, per_chunk)

    @property
    def chunk_rows(self) -> int:
        return int(np.diff(self.row_starts).max(initial=0))

    @property
    def chunk_symbols(self) -> int:
        return int(np.diff(self.sym_starts).max(initial=0))

    def arrays(self) -> list:
        out = [self.codebook, self.scales, self.row_starts, self.sym_starts]
        for s in (self.cnt, self.gap, self.code):
            out.extend(s.arrays)
        return out

    def scratch_layout(self) -> list[tuple[int, object]]:
        """(count, dtype) of the per-chunk buffers: row counts, gaps, codes."""
        n = self.chunk_symbols
        if not self.sparse:
            return [(0, np.uint8), (0, np.uint8), (n, self.code.dtype)]
        return [(self.chunk_rows, self.cnt.dtype), (n, self.gap.dtype), (n, self.code.dtype)]

    def scratch_bytes(self) -> int:
        return sum(align8(n * np.dtype(dt).itemsize) for n, dt in self.scratch_layout())

    def buffers(self, scratch: np.ndarray, offset: int = 0) -> list[np.ndarray]:
        """The per-chunk buffers carved from scratch[offset:]; cached per scratch buffer (views cost ~2 us each)."""
        hit = self._carved
        if hit is not None and hit[0] is scratch and hit[1] == offset:
            return hit[2]
        bufs, pos = [], offset
        raw = scratch.view(np.uint8)
        for n, dt in self.scratch_layout():
            size = n * np.dtype(dt).itemsize
            bufs.append(raw[pos: pos + size].view(dt))
            pos += align8(size)
        self._carved = (scratch, offset, bufs)
        return bufs

    def symbols_per_run(self) -> int:
        n = int(self.sym_starts[-1])
        return 2 * n + self.rows if self.sparse else n

    def check(self, err: int, info: np.ndarray, where: str) -> None:
        if err != ERR_OK:
            what = "does not decode" if err == ERR_STREAM else "decodes to an out-of-range column or code"
            raise FormatError(f"{where}: streamed chunk {int(info[0])} (row {int(info[1])}) {what}; the file "
                              f"changed after it was validated")


@dataclass(eq=False)
class CsrWeight:
    """A sparse_codebook weight held decoded as the file defines it (spec 6.4): row counts, gaps (filler entries
    kept) and codes, each in the smallest unsigned type of its stream's width."""

    rows: int
    cols: int
    codebook: np.ndarray
    scales: np.ndarray
    cnt: np.ndarray
    gaps: np.ndarray
    codes: np.ndarray

    @staticmethod
    def from_weight(weight: SparseCodebookWeight, encoding: dict) -> "CsrWeight":
        counts = np.diff(weight.indptr)
        cols = weight.columns.astype(np.int64)
        prev = np.empty_like(cols)
        prev[1:] = cols[:-1]
        prev[weight.indptr[:-1][counts > 0]] = -1  # every row's first gap is counted from column -1
        gaps = (cols - prev - 1).astype(_sym_dtype(int(encoding["gaps"]["bits"])))
        cnt = counts.astype(_sym_dtype(int(encoding["row_counts"]["bits"])))
        scales = ro(weight.row_scales) if weight.row_scales is not None else EMPTY_F32
        return CsrWeight(weight.rows, weight.cols, ro(weight.codebook), scales, ro(cnt), ro(gaps),
                         ro(weight.codes))

    def arrays(self) -> list:
        return [self.codebook, self.scales, self.cnt, self.gaps, self.codes]

    def check(self, err: int, info: np.ndarray, where: str) -> None:
        if err != ERR_OK:
            raise FormatError(f"{where}: row {int(info[1])} holds an out-of-range column or code")


def align8(n: int) -> int:
    return -(-n // 8) * 8


def ro(a: np.ndarray) -> np.ndarray:
    """A read-only view. Numba compiles a kernel once per argument type and read-only is part of the type: giving
    every constant array as read-only (mapped views are) keeps it to one compilation per dtype combination."""
    v = a.view()
    v.flags.writeable = False
    return v
