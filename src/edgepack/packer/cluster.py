"""Weight sharing (Deep Compression step 2): 1-D k-means per tensor, optional per-row scales, the codebook + codes.

Centroid initialisations follow Han et al. 2016, section 3.2 (linear, random/Forgy, density), plus "companded":
the point density that minimises the squared error of a fine quantiser, proportional to p(x)^(1/3) (Panter and Dite
1951), with p estimated over bins of equal mass; and "auto" (the default of the packer): both linear and companded
starts, the one whose converged codebook has the smaller squared error kept. Linear initialisation spends entries
evenly over the range, so on the heavy-tailed weights of trained convolutions (max |w| 10-20 standard deviations) the
tails get most of them and Lloyd cannot move them back to the bulk: on PP layout_cdla's 1x1 convolutions, 256 entries
give 0.7-0.9% relative weight error from a linear start and 0.6-0.65% from a companded one.
"""
from __future__ import annotations

import numpy as np

INITS = ("linear", "random", "density", "companded", "auto")
_INITS = INITS
COMPANDED_BINS = 1024  # equal-mass bins that estimate the density (at least 4 distinct values each)


def _segment_bounds(u: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Split points of the sorted values `u` among the sorted centroids `c`: cluster j is u[b[j]:b[j+1]].

    A value exactly on a midpoint goes to the lower centroid (searchsorted side="right").
    """
    mid = (c[:-1] + c[1:]) * 0.5
    b = np.empty(c.size + 1, dtype=np.int64)
    b[0] = 0
    b[1:-1] = np.searchsorted(u, mid, side="right")
    b[-1] = u.size
    return b


def _linear_skipping_hole(u: np.ndarray, k: int) -> np.ndarray:
    """Evenly spaced over [min, max] with the widest empty interval cut out when it would hold centroids.

    Pruning leaves a hole around zero; plain linear spacing puts centroids there that end up empty and are dropped
    (on a 92%-pruned fc layer, 24 of 63). Spacing them over the occupied range keeps every one of them useful while
    keeping linear initialisation's point: centroids for the rare large weights."""
    span = u[-1] - u[0]
    if u.size < 2 or k < 2 or span <= 0:
        return np.linspace(u[0], u[-1], k)
    gaps = np.diff(u)
    g = int(np.argmax(gaps))
    if gaps[g] <= span / (k - 1):
        return np.linspace(u[0], u[-1], k)
    lo, hi = u[g], u[g + 1]
    t = np.linspace(0.0, span - gaps[g], k)
    left = lo - u[0]
    return np.where(t <= left, u[0] + t, hi + (t - left))


def _companded(u: np.ndarray, counts: np.ndarray, k: int) -> np.ndarray:
    """k points spread with density proportional to p^(1/3): the values are cut into m bins of equal mass (count),
    in which the density is 1 / (m * width); a bin then gets a share of the points proportional to p^(1/3) * width,
    i.e. to width^(2/3), placed evenly inside it (the inverse of the piecewise-linear cumulative share)."""
    m = int(min(COMPANDED_BINS, max(1, u.size // 4)))
    cum = np.cumsum(counts)
    pos = np.searchsorted(cum, np.linspace(0.0, 1.0, m + 1)[1:-1] * cum[-1], side="left")
    edges = np.concatenate([u[:1], u[np.minimum(pos, u.size - 1)], u[-1:]])
    share = np.concatenate([[0.0], np.cumsum(np.diff(edges) ** (2.0 / 3.0))])
    if share[-1] <= 0:
        return np.unique(u[:1])
    return np.interp((np.arange(k) + 0.5) / k * share[-1], share, edges)


def _initial_centroids(x: np.ndarray, u: np.ndarray, counts: np.ndarray, k: int, init: str, seed: int
                       ) -> np.ndarray:
    if init == "companded":
        c = _companded(u, counts, k)
    elif init == "linear":
        c = _linear_skipping_hole(u, k)
    elif init == "random":
        rng = np.random.default_rng(seed)
        c = u[rng.choice(u.size, size=k, replace=False)]
    else:  # density: evenly spaced over the CDF, at the centres of k equal-probability bins
        c = np.quantile(x, (np.arange(k, dtype=np.float64) + 0.5) / k)
    # Duplicated starting points (possible with heavy ties under "density") would be wasted clusters.
    return np.unique(c)


RESEED_ROUNDS = 3


def _lloyd(u: np.ndarray, weighted: np.ndarray, fcounts: np.ndarray, c: np.ndarray, max_iter: int,
           tol: float) -> np.ndarray:
    """Lloyd's updates on distinct sorted values u (weighted = u * counts); empty clusters are dropped."""
    for _ in range(max_iter):
        b = _segment_bounds(u, c)
        starts = b[:-1][b[1:] > b[:-1]]  # empty clusters are dropped here
        # Consecutive non-empty segments tile u, so reduceat over their starts sums each one exactly once.
        new_c = np.add.reduceat(weighted, starts) / np.add.reduceat(fcounts, starts)
        converged = new_c.size == c.size and float(np.max(np.abs(new_c - c))) <= tol
        c = new_c
        if converged:
            break
    return c


def _split_worst(u: np.ndarray, weighted: np.ndarray, fcounts: np.ndarray, c: np.ndarray, m: int) -> np.ndarray:
    """c plus up to m new centroids, placed inside the clusters with the largest squared error (each chosen
    cluster of n distinct values gets its extra centroids at evenly spaced quantiles of its members)."""
    b = _segment_bounds(u, c)
    sse = np.empty(c.size)
    for j in range(c.size):
        lo, hi = b[j], b[j + 1]
        sse[j] = float(np.dot(fcounts[lo:hi], (u[lo:hi] - c[j]) ** 2)) if hi - lo > 1 else 0.0
    extra = np.zeros(c.size, dtype=np.int64)
    room = np.diff(b) - 1  # a cluster of n distinct values can use n - 1 more centroids
    share = sse.copy()
    for _ in range(m):
        j = int(np.argmax(np.where(extra < room, share, -1.0)))
        if share[j] <= 0 or extra[j] >= room[j]:
            break
        extra[j] += 1
        share[j] = sse[j] / (extra[j] + 1) ** 2  # splitting in e+1 parts divides the error about (e+1)^2
    new = [c[extra == 0]]  # a split cluster's centroid is replaced by its extra + 1 quantile points
    for j in np.flatnonzero(extra):
        lo, hi = b[j], b[j + 1]
        q = (np.arange(extra[j] + 1) + 0.5) / (extra[j] + 1)
        cum = np.cumsum(fcounts[lo:hi])
        pts = u[lo:hi][np.minimum(np.searchsorted(cum, q * cum[-1]), hi - lo - 1)]
        new.append(pts)
    return np.unique(np.concatenate(new))


def _sse(u: np.ndarray, fcounts: np.ndarray, c: np.ndarray) -> float:
    """Squared error of the distinct values u (with multiplicities) against their nearest of the sorted c."""
    b = _segment_bounds(u, c)
    lab = np.repeat(np.arange(c.size), np.diff(b))
    return float(np.dot(fcounts, (u - c[lab]) ** 2))


def kmeans_1d(
    values: np.ndarray,
    k: int,
    init: str = "linear",
    seed: int = 0,
    max_iter: int = 50,
    tol: float = 0.0,
    reseed: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on 1-D data; returns (centroids float32 sorted ascending, labels int64 shaped like values).

    - init: where Lloyd starts (see the module docstring); "auto" runs from "linear" and from "companded" and keeps
      the result with the smaller squared error (the linear one on a tie), so it is never worse than "linear".

    - At most k centroids come back. A cluster that ends up empty (linear initialisation leaves many in the empty
      range between a few outliers and the bulk) is dropped, and with `reseed` its entry is given back inside the
      clusters with the largest squared error, then Lloyd runs again (up to RESEED_ROUNDS times), so the codebook
      keeps linear initialisation's centroids for the rare large weights and still spends every entry. Every
      returned centroid has at least one member.
    - With at most k distinct values there is one centroid per distinct value (exact when values are float32).
    - Labels are the nearest returned (float32) centroid; a value exactly between two goes to the lower one.
    - Stops after max_iter updates or when no centroid moves by more than tol. Sums are in float64.
    - Deterministic: the same input (and seed, for init="random") gives the same output bit for bit.
    """
    x = np.asarray(values)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"values must be a real numeric array, found dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite, found NaN or inf")
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, found {k!r}")
    k = int(k)
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, found {init!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, found {max_iter!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, found {tol!r}")
    if x.size == 0:
        return np.empty(0, dtype=np.float32), np.empty(x.shape, dtype=np.int64)

    # Work on the distinct values with their multiplicities: sorted once, and duplicates cost nothing.
    u, inverse, counts = np.unique(x.ravel(), return_inverse=True, return_counts=True)
    if u.size <= k:
        c = u
    else:
        weighted = u * counts
        fcounts = counts.astype(np.float64)
        best = None
        for start in (("linear", "companded") if init == "auto" else (init,)):
            c = _initial_centroids(x.ravel(), u, counts, k, start, seed)
            c = _lloyd(u, weighted, fcounts, c, int(max_iter), tol)
            for _ in range(RESEED_ROUNDS if reseed else 0):
                if c.size >= k:
                    break
                c = _lloyd(u, weighted, fcounts, _split_worst(u, weighted, fcounts, c, k - c.size), int(max_iter),
                           tol)
            if best is None or (init == "auto" and _sse(u, fcounts, c) < _sse(u, fcounts, best)):
                best = c
        c = best

    # Label against the float32 centroids actually returned, so that codebook[label] is the nearest entry.
    c32 = np.unique(c.astype(np.float32))
    b = _segment_bounds(u, c32.astype(np.float64))
    sizes = np.diff(b)
    used = sizes > 0
    labels_u = np.repeat(np.arange(int(used.sum()), dtype=np.int64), sizes[used])
    return c32[used], labels_u[inverse.ravel()].reshape(x.shape)


EC_ITERS = 30  # entropy-constrained Lloyd rounds (it stops earlier once no assignment changes)


def ec_kmeans_1d(values: np.ndarray, k: int, rate: float, init: str = "auto", seed: int = 0,
                 max_iter: int = EC_ITERS) -> tuple[np.ndarray, np.ndarray]:
    """Entropy-constrained k-means (Chou, Lookabaugh and Gray 1989, "ECVQ") on 1-D data, for codes that are
    Huffman-coded: each value takes the centroid of least (x - c)^2 + rate * l_c, l_c = -log2(p_c) the ideal code
    length of centroid c at its current population, and centroids move to their members' means. rate = 0 is plain
    k-means; a larger rate trades squared error for fewer bits a code: the rare outer centroids lose members to the
    populous centre and the cells widen towards equal width (an entropy-coded uniform quantiser), so at the same
    Huffman-coded size more centroids serve than k-means would use (Deep Compression's third stage, which a fixed
    alphabet ignores). Starts from kmeans_1d(values, k, init, seed); centroids left empty are dropped. Returns
    (centroids float32 sorted ascending, labels int64 shaped like values), every centroid with at least one member.
    Each round is one pass over the sorted distinct values (the cells are intervals: ec_cells). Deterministic."""
    x = np.asarray(values, dtype=np.float64)
    if not (np.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate must be a finite number >= 0, found {rate!r}")
    c, lab = kmeans_1d(x, k, init=init, seed=seed)
    if rate == 0 or c.size < 2:
        return c, lab
    u, inverse, counts = np.unique(x.ravel(), return_inverse=True, return_counts=True)
    fcounts = counts.astype(np.float64)
    cum_n = np.concatenate([[0.0], np.cumsum(fcounts)])
    cum_s = np.concatenate([[0.0], np.cumsum(u * fcounts)])
    c = c.astype(np.float64)
    n = np.bincount(lab.ravel(), minlength=c.size).astype(np.float64)
    bounds = None
    for _ in range(int(max_iter)):
        live = n > 0
        c, n = c[live], n[live]
        new = ec_cells(u, c, rate * -np.log2(n / n.sum()))
        n = cum_n[new[1:]] - cum_n[new[:-1]]
        c = np.where(n > 0, (cum_s[new[1:]] - cum_s[new[:-1]]) / np.maximum(n, 1.0), c)
        if bounds is not None and np.array_equal(new[1:][n > 0], bounds):
            break
        bounds = new[1:][n > 0]
    b = ec_cells(u, c, rate * -np.log2(np.maximum(n, 1.0) / n.sum()))
    sizes = np.diff(b)
    used = sizes > 0
    labels_u = np.repeat(np.arange(int(used.sum()), dtype=np.int64), sizes[used])
    return c[used].astype(np.float32), labels_u[inverse.ravel()].reshape(x.shape)


def ec_cells(u: np.ndarray, c: np.ndarray, pen: np.ndarray) -> np.ndarray:
    """Cell bounds of argmin_j (x - c_j)^2 + pen_j over the sorted values u for the sorted centroids c: cell j is
    u[b[j]:b[j+1]] (possibly empty). The cost is x^2 plus a line in x of slope -2 c_j, so the cells are the pieces
    of the lines' lower envelope (convex hull trick), in the order of c; a value on a border goes to the lower j."""
    slope, icpt = -2.0 * c, c * c + pen
    hull: list[int] = []
    for j in range(c.size):
        while hull:
            i = hull[-1]
            if len(hull) >= 2:
                h = hull[-2]
                x_hi = (icpt[i] - icpt[h]) / (slope[h] - slope[i])  # where i takes over from h
                x_ij = (icpt[j] - icpt[i]) / (slope[i] - slope[j])  # where j takes over from i
                if x_ij <= x_hi:
                    hull.pop()
                    continue
            break
        hull.append(j)
    b = np.zeros(c.size + 1, dtype=np.int64)
    b[-1] = u.size
    # borders between consecutive hull lines; centroids off the hull get empty cells at their place in the order
    prev = 0
    for t in range(len(hull) - 1):
        i, j = hull[t], hull[t + 1]
        x = (icpt[j] - icpt[i]) / (slope[i] - slope[j])
        pos = int(np.searchsorted(u, x, side="right"))
        pos = max(pos, prev)
        b[i + 1:j + 1] = pos
        prev = pos
    b[hull[-1] + 1:] = u.size
    return b


def choose_row_scales(w: np.ndarray) -> np.ndarray:
    """Per output channel scale = max |w| over the row w.reshape(w.shape[0], -1)[r] (0.0 for an all-zero row)."""
    w = np.asarray(w)
    if w.ndim < 1:
        raise ValueError("weights must have at least one dimension (rows = w.shape[0])")
    rows = w.reshape(w.shape[0], -1)
    if rows.shape[1] == 0:
        return np.zeros(rows.shape[0], dtype=np.float32)
    return np.max(np.abs(rows), axis=1).astype(np.float32)


def _code_dtype(bits: int) -> type:
    return np.uint8 if bits <= 8 else np.uint16


def quantize(
    w: np.ndarray,
    mask: np.ndarray | None,
    bits: int,
    *,
    reserve_zero: bool,
    row_scales: np.ndarray | None = None,
    init: str = "linear",
    seed: int = 0,
    rate: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Weight-share one tensor; returns (codebook float32, codes shaped like w, uint8 if bits <= 8 else uint16).

    rate > 0: the centroids and codes come from ec_kmeans_1d with rate x the mean square of the clustered values
    (so that `rate` is scale-free: the squared error, relative to the values' power, one bit of code is worth).

    Kept entries (mask True; all entries when mask is None) are clustered by kmeans_1d, over w / row_scales[row]
    when row_scales is given (rows = w.reshape(w.shape[0], -1); a row with scale 0 must have no nonzero kept
    entry). With reserve_zero, codebook[0] == 0.0 and code 0 is given to removed entries only; kept entries get
    codes 1.. and k-means has 2**bits - 1 centroids. Without it, 2**bits centroids, and removed entries get the
    code of the centroid nearest to 0 (their value is meaningless: the caller keeps the mask).
    The codebook holds only the centroids k-means used (+ the reserved 0.0), never more than 2**bits entries.
    A tensor with no kept entry gets the codebook [0.0] and all codes 0.
    """
    w = np.asarray(w)
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"weights must be a floating array, found dtype {w.dtype}")
    if w.ndim < 1:
        raise ValueError("weights must have at least one dimension (rows = w.shape[0])")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite, found NaN or inf")
    if isinstance(bits, bool) or int(bits) != bits or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 1..16, found {bits!r}")
    bits = int(bits)
    n_rows = w.shape[0]
    w2 = w.reshape(n_rows, -1).astype(np.float64)
    if mask is None:
        keep = np.ones(w2.shape, dtype=bool)
    else:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != w.shape:
            raise ValueError(
                f"mask must be a bool array of shape {w.shape}, found dtype {mask.dtype} shape {mask.shape}"
            )
        keep = mask.reshape(w2.shape)

    if row_scales is None:
        v = w2
    else:
        s = np.asarray(row_scales)
        if s.shape != (n_rows,):
            raise ValueError(f"row_scales must have shape ({n_rows},), found {s.shape}")
        s = s.astype(np.float32).astype(np.float64)
        if not (np.all(np.isfinite(s)) and np.all(s >= 0)):
            raise ValueError("row_scales must be finite and >= 0")
        zero = s == 0
        bad = np.flatnonzero(zero & np.any(keep & (w2 != 0), axis=1))
        if bad.size:
            raise ValueError(f"row {int(bad[0])} has scale 0 but nonzero kept weights")
        v = np.zeros_like(w2)
        v[~zero] = w2[~zero] / s[~zero, None]

    codes = np.zeros(w2.shape, dtype=_code_dtype(bits))
    kept = v[keep]
    if kept.size == 0:
        return np.zeros(1, dtype=np.float32), codes.reshape(w.shape)

    k = (1 << bits) - (1 if reserve_zero else 0)
    if rate:
        centroids, labels = ec_kmeans_1d(kept, k, rate * float(np.mean(np.square(kept))), init=init, seed=seed)
    else:
        centroids, labels = kmeans_1d(kept, k, init=init, seed=seed)
    if reserve_zero:
        codebook = np.concatenate([np.zeros(1, dtype=np.float32), centroids])
        codes[keep] = labels + 1
    else:
        codebook = centroids
        codes[keep] = labels
        codes[~keep] = int(np.argmin(np.abs(centroids)))
    return codebook, codes.reshape(w.shape)


def dequantize(
    codebook: np.ndarray, codes: np.ndarray, row_scales: np.ndarray | None = None
) -> np.ndarray:
    """Reference decode: float32(codebook[code]) * float32(row_scales[row]) (no scale when row_scales is None)."""
    cb = np.asarray(codebook, dtype=np.float32)
    codes = np.asarray(codes)
    if cb.ndim != 1:
        raise ValueError(f"codebook must be 1-D, found shape {cb.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be an integer array, found dtype {codes.dtype}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= cb.size):
        raise ValueError(
            f"codes must be in [0, {cb.size}), found range [{int(codes.min())}, {int(codes.max())}]"
        )
    out = cb[codes]
    if row_scales is None:
        return out
    if codes.ndim < 1:
        raise ValueError("codes must have at least one dimension to apply row_scales")
    s = np.asarray(row_scales, dtype=np.float32)
    if s.shape != (codes.shape[0],):
        raise ValueError(f"row_scales must have shape ({codes.shape[0]},), found {s.shape}")
    return (out.reshape(codes.shape[0], -1) * s[:, None]).reshape(codes.shape)
