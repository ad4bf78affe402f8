"""Error-compensated codebook assignment from calibration data (OBQ / GPTQ, Frantar & Alistarh 2022, Frantar et al.
2023, applied to Deep Compression's shared codebooks): a layer's codes are chosen one input column at a time, and
the rounding error of each column is pushed onto the columns not yet quantised through the inverse Hessian of the
layer's inputs, H = X^T X (X: one row per input sample or output position, one column per weight column).

The codebook itself comes from k-means (packer/cluster.py); this module only decides which entry each weight takes,
so the file format is unchanged. Pruned entries (mask False) are forced to code 0 (the reserved 0.0) and their
removal error is compensated like any rounding error (SparseGPT's update for a fixed mask).
"""
from __future__ import annotations

import numpy as np

DAMP = 0.01  # dampening: H + DAMP * mean(diag H) * I, as GPTQ
BLOCK = 128  # columns quantised together before the lazy update of the rest (GPTQ's block)
ACT_ORDER = False  # quantise the columns by decreasing Hessian diagonal (GPTQ's "act-order") when True
# the assignments best_assign compares row by row, besides nearest-centroid codes: (act_order, damp)
CANDIDATES = ((True, DAMP), (False, DAMP))


class HessianError(ValueError):
    """The accumulated statistics do not fit the weight they were meant for."""


def inverse_cholesky(h: np.ndarray, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor U of (H + damp*mean(diag)*I)^-1 (so that U^T U = H^-1), and the mask of dead columns
    (inputs that were always zero: their weights cannot matter and are quantised without compensation)."""
    h = np.array(h, dtype=np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    mean_diag = float(np.mean(np.diag(h)))
    h[np.diag_indices_from(h)] += damp * (mean_diag if mean_diag > 0 else 1.0)
    for _ in range(6):
        try:
            low = np.linalg.cholesky(h)
            break
        except np.linalg.LinAlgError:  # numerically indefinite: damp harder
            h[np.diag_indices_from(h)] += damp * (mean_diag if mean_diag > 0 else 1.0)
    else:
        raise HessianError("the input statistics are not positive definite even after dampening")
    inv_low = np.linalg.inv(low)  # H = L L^T -> H^-1 = L^-T L^-1
    hinv = inv_low.T @ inv_low
    return np.linalg.cholesky(hinv).T, dead


def _nearest(v: np.ndarray, sorted_cb: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Index into the (unsorted) codebook of the entry nearest to each value of v."""
    j = np.clip(np.searchsorted(sorted_cb, v), 1, sorted_cb.size - 1) if sorted_cb.size > 1 else np.zeros(
        v.shape, np.int64)
    if sorted_cb.size > 1:
        left = sorted_cb[j - 1]
        right = sorted_cb[j]
        j = np.where(np.abs(v - left) <= np.abs(right - v), j - 1, j)
    return order[j]


def column_order(h: np.ndarray, act_order: bool = ACT_ORDER) -> np.ndarray:
    """The order in which assign quantises the columns: by decreasing diag(H) (the inputs with the most energy first,
    while the most unquantised columns are left to absorb their error; ties keep the column order), or as stored."""
    d = np.diag(h)
    return np.argsort(-d, kind="stable") if act_order else np.arange(d.size)


def code_lengths(codes: np.ndarray, k: int) -> np.ndarray:
    """Ideal code lengths -log2(p_c) in bits of the k codes at their population in `codes` (an unused code: the
    length of a code seen once), what Huffman coding spends on each to within a bit."""
    n = np.bincount(np.asarray(codes, np.int64).ravel(), minlength=k).astype(np.float64)
    total = max(float(n.sum()), 1.0)
    return -np.log2(np.maximum(n, 1.0) / total)


def rate_weight(w: np.ndarray, u: np.ndarray, rate: float) -> float:
    """The price of one bit of code in assign's objective (output error of a group, units of e^2 = ((w - q) /
    u_jj)^2): `rate` x the weights' mean square over the mean u_jj^2, so that with H a multiple of the identity
    the column cost ((w - q)^2 + rate * mean(w^2) * l_c) / u_jj^2 is cluster.ec_kmeans_1d's with the same rate."""
    d = float(np.mean(np.square(np.diag(u))))
    return rate * float(np.mean(np.square(w))) / d if d > 0 else 0.0


def assign(w2: np.ndarray, keep2: np.ndarray, codebook: np.ndarray, scales: np.ndarray | None,
           h: np.ndarray, reserve_zero: bool, damp: float = DAMP, block: int = BLOCK,
           act_order: bool = ACT_ORDER, rate: float = 0.0, lengths: np.ndarray | None = None) -> np.ndarray:
    """Codes (rows x cols, int64) for the weight matrix w2 (rows = output channels) given its codebook.

    h: (cols, cols) Hessian of the layer's inputs (the same for every row), or (groups, cols, cols) when the rows
    split into `groups` equal groups that each see their own inputs (grouped and depthwise convolutions).
    scales: None, or the decode scale of every weight, broadcastable to (rows, cols): (rows, 1) for the format's
    per-row scales, (1, cols) when the stored tensor is the transpose of w2.
    With reserve_zero, codebook[0] is 0.0 reserved for pruned entries: kept entries take codes >= 1 only.
    act_order: columns in column_order (per group); the codes come back in the stored order either way.
    rate > 0 with lengths (bits per code, e.g. code_lengths of the entropy-constrained clustering): each weight takes
    the code of least e^2 + rate_weight * lengths[c] instead of the nearest (entropy-constrained assignment, for
    codes that are Huffman-coded: a rarer code must buy its bits back in error), the error still compensated.
    """
    w2 = np.asarray(w2, dtype=np.float64)
    rows, cols = w2.shape
    h = np.asarray(h, dtype=np.float64)
    if h.ndim == 2:
        h = h[None]
    groups = h.shape[0]
    if h.shape[1:] != (cols, cols) or rows % groups:
        raise HessianError(f"statistics of shape {h.shape} do not fit a weight of {rows} rows x {cols} columns")
    cb = np.asarray(codebook, dtype=np.float32).astype(np.float64)
    first = 1 if reserve_zero else 0
    usable = cb[first:]
    order = np.argsort(usable, kind="stable")
    sorted_cb = usable[order]
    order = order + first
    sc = np.ones((rows, cols)) if scales is None else np.broadcast_to(
        np.asarray(scales, np.float32).astype(np.float64), (rows, cols))
    safe = np.where(sc > 0, sc, 1.0)
    codes = np.zeros((rows, cols), dtype=np.int64)
    per = rows // groups
    for g in range(groups):
        r0, r1 = g * per, (g + 1) * per
        perm = column_order(h[g], act_order)
        u, dead = inverse_cholesky(h[g][np.ix_(perm, perm)], damp)
        w = w2[r0:r1][:, perm]
        keep = np.asarray(keep2[r0:r1], dtype=bool)[:, perm]
        s = safe[r0:r1][:, perm]
        out = np.zeros((per, cols), dtype=np.int64)
        zero_idx = _nearest(np.zeros(1), sorted_cb, order)[0]
        w[:, dead] = np.where(keep[:, dead], w[:, dead], 0.0)
        pen = None
        if rate > 0 and lengths is not None:
            pen = rate_weight(w[keep], u, rate) * np.asarray(lengths, np.float64)[order]
            cand = sorted_cb
        for c0 in range(0, cols, block):
            c1 = min(cols, c0 + block)
            err = np.zeros((per, c1 - c0))
            for j in range(c0, c1):
                col = w[:, j]
                sj = s[:, j]
                if pen is None:
                    idx = _nearest(col / sj, sorted_cb, order)
                else:
                    cost = np.square((col[:, None] - cand[None, :] * sj[:, None]) / u[j, j]) + pen[None, :]
                    idx = order[np.argmin(cost, axis=1)]
                kj = keep[:, j]
                # pruned entries decode to 0.0 (reserved code 0) or are masked (nearest-to-zero code)
                idx = np.where(kj, idx, 0 if reserve_zero else zero_idx)
                q = np.where(kj, cb[idx] * sj, 0.0)
                out[:, j] = idx
                e = (col - q) / u[j, j]
                err[:, j - c0] = e
                if j + 1 < c1:
                    w[:, j + 1:c1] -= np.outer(e, u[j, j + 1:c1])
            if c1 < cols:
                w[:, c1:] -= err @ u[c0:c1, c1:]
        codes[r0:r1, perm] = out
    return codes


def nearest_codes(w2: np.ndarray, keep2: np.ndarray, codebook: np.ndarray, scales: np.ndarray | None,
                  reserve_zero: bool) -> np.ndarray:
    """Nearest-centroid codes under assign's conventions (scales, the reserved 0.0, pruned entries): what assign
    gives when no column's error is pushed onto the others."""
    w2 = np.asarray(w2, dtype=np.float64)
    cb = np.asarray(codebook, dtype=np.float32).astype(np.float64)
    first = 1 if reserve_zero else 0
    order = np.argsort(cb[first:], kind="stable")
    sorted_cb = cb[first:][order]
    order = order + first
    sc = np.ones(w2.shape) if scales is None else np.broadcast_to(
        np.asarray(scales, np.float32).astype(np.float64), w2.shape)
    idx = _nearest(w2 / np.where(sc > 0, sc, 1.0), sorted_cb, order)
    pruned = 0 if reserve_zero else _nearest(np.zeros(1), sorted_cb, order)[0]
    return np.where(np.asarray(keep2, dtype=bool), idx, pruned).astype(np.int64)


def row_errors(w2: np.ndarray, q2: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Every row's output error d_r H d_r^T (d = w - q; the row's group's H when h is 3-D), unnormalised: the layer
    objective that compensation lowers, which is a sum over rows."""
    d = np.asarray(w2, np.float64) - np.asarray(q2, np.float64)
    h = np.asarray(h, np.float64)
    if h.ndim == 2:
        h = h[None]
    per = d.shape[0] // h.shape[0]
    out = np.empty(d.shape[0])
    for g in range(h.shape[0]):
        dg = d[g * per:(g + 1) * per]
        out[g * per:(g + 1) * per] = np.sum((dg @ h[g]) * dg, axis=1)
    return out


def best_assign(w2: np.ndarray, keep2: np.ndarray, codebook: np.ndarray, scales: np.ndarray | None,
                h: np.ndarray, reserve_zero: bool, candidates=CANDIDATES, rate: float = 0.0,
                lengths: np.ndarray | None = None) -> np.ndarray:
    """Codes of least layer-output error, row by row, among nearest-centroid codes and assign under each
    (act_order, damp) of `candidates` (assign's arguments otherwise). A row's codes and its error depend on that
    row alone (compensation moves error along a row, never across rows), so each output channel takes the candidate
    best for it and the layer's error is never above any candidate's, nearest-centroid's included: act-order wins
    on most rows of real layers (PP-OCRv4 rec: 0.063 -> 0.049 at 4 bits on a 480 x 240 conv, held-out inputs), the
    stored order on some, and on inputs whose H the compensation cannot use (few samples, adversarial spectra) no row
    does worse than rounding to its nearest centroid. Ties keep the earlier: nearest, then candidates in order.
    rate > 0 (entropy-constrained codes, assign's rate and lengths): the act-order assignment with that rate alone
    (comparing rows by error would undo the rate's trade)."""
    if rate > 0 and lengths is not None:
        return assign(w2, keep2, codebook, scales, h, reserve_zero, act_order=True, rate=rate, lengths=lengths)
    w2 = np.asarray(w2, dtype=np.float64)
    cb = np.asarray(codebook, dtype=np.float32).astype(np.float64)
    sc = 1.0 if scales is None else np.broadcast_to(np.asarray(scales, np.float32).astype(np.float64), w2.shape)

    def decoded(codes):
        return np.where(np.asarray(keep2, dtype=bool), cb[codes] * sc, 0.0)

    best = nearest_codes(w2, keep2, codebook, scales, reserve_zero)
    err = row_errors(w2, decoded(best), h)
    for act, damp in candidates:
        codes = assign(w2, keep2, codebook, scales, h, reserve_zero, damp=damp, act_order=act)
        e = row_errors(w2, decoded(codes), h)
        better = e < err
        best[better], err[better] = codes[better], e[better]
    return best


def corrected_weight(w2: np.ndarray, h: np.ndarray, cross: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """The weight that, fed the quantised model's inputs X_q, best reproduces the original layer's outputs W X:
    argmin_V ||X W^T - X_q V^T||^2 + d ||V - W||^2 = W (C + d I)(H + d I)^-1 with H = X_q^T X_q, C = X^T X_q and
    d = damp x mean(diag H) (per group when h is 3-D). The ridge pulls V towards W, not towards zero: on a
    calibration set of a few samples per input column the unregularised fit chases the noise of those samples
    (its held-out error grows with cols / samples), and damp -> infinity gives W back. assign then quantises V
    under H."""
    w2 = np.asarray(w2, np.float64)
    h = np.asarray(h, np.float64)
    c = np.asarray(cross, np.float64)
    if h.ndim == 2:
        h, c = h[None], c[None]
    per = w2.shape[0] // h.shape[0]
    out = np.empty_like(w2)
    for g in range(h.shape[0]):
        hg, cg = h[g].copy(), c[g].copy()
        dead = np.diag(hg) <= 0
        hg[dead, dead] = 1.0
        cg[dead, dead] = 1.0  # an input the quantised model never feeds: its weight stays as it is
        mean_diag = float(np.mean(np.diag(hg)))
        d = damp * (mean_diag if mean_diag > 0 else 1.0)
        hg[np.diag_indices_from(hg)] += d
        cg[np.diag_indices_from(cg)] += d
        wg = w2[g * per:(g + 1) * per]
        out[g * per:(g + 1) * per] = np.linalg.solve(hg, cg.T @ wg.T).T  # (C' H'^-1)^T = H'^-1 C'^T, H' symmetric
    return out


def output_error(w2: np.ndarray, q2: np.ndarray, h: np.ndarray) -> float:
    """Relative output error of the layer: tr(D H D^T) / tr(W H W^T) with D = W - Q (per group when h is 3-D)."""
    w2 = np.asarray(w2, np.float64)
    d = w2 - np.asarray(q2, np.float64)
    h = np.asarray(h, np.float64)
    if h.ndim == 2:
        h = h[None]
    per = w2.shape[0] // h.shape[0]
    num = den = 0.0
    for g in range(h.shape[0]):
        dg, wg = d[g * per:(g + 1) * per], w2[g * per:(g + 1) * per]
        num += float(np.sum((dg @ h[g]) * dg))  # a matrix product: einsum's three-operand loop took minutes
        den += float(np.sum((wg @ h[g]) * wg))  # on an 8210 x 1024 head
    return float(np.sqrt(num / den)) if den > 0 else 0.0
