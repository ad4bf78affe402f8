"""Would a pruned LSTM / GRU run faster holding its weights sparse? The recurrence's matvec over R (one per step and
direction) and the input projection over W (one product per direction at batch = steps) on the REAL weights of a
packed file, dense float32 (what the runtime holds today: the loader expands recurrent weights) against sparse
candidates, side by side, one thread, CPU time of the calling thread, medians; prints dense time / candidate time
(> 1: the candidate is faster), bytes held, the error against float64, and /proc/loadavg.

    OPENBLAS_NUM_THREADS=1 python benchmarks/sparse_recurrence.py [FILE.epk] [--steps 22] [--rounds 15]
                                                                 [--densities 0.2,0.15,0.1,0.05]

Default file: benchmarks/out/ddddocr_common_density0.3.epk (runtime_vs_ort.py --corpus ddddocr_common packs it:
`--sparsity 0.7 --bits 8`, magnitude pruning). R candidates (kernels of this file: the runtime has no sparse matvec
over a vector that changes every step), against the runtime's own dense matvec (recurrent._dot_kernel per gate row,
as _lstm_kernel calls it):
  - csr f32:     rows of the 4 gates, per kept weight a uint16 column and its float32 value decoded once (6 bytes)
  - csr codes:   per kept weight a uint16 column and a uint8 codebook code (3 bytes), looked up at every step
  - sell16:      sliced ELLPACK, 16 rows a slice (rows sorted by length): the gather runs across rows
  - mask+expand: a 16-bit mask per 16 columns + the kept values, expanded into lanes (sparse_recurrence_expand.py)
--densities: R of direction 0 pruned further by magnitude, to find where a sparse form starts to pay.
W and Gemms held as CSR of >= 2^20 weights: runtime/ops/linear.py's own kernels (bind_linear) on the sparse weight
(its CSC form "sparse" and, for W (n, k), its "rows" form) and on dense float32, at batch = steps, as the LSTM's
projection and the executor bind them.

Dev VM (AMD EPYC, AVX-512, 1 MiB L2 a core, 32 MiB L3), load 3.5-3.6, ddddocr_common at density 0.3: a 2048 x 512
step reads dense R from L3 at ~0.2 cycles a weight (~60 us); the sparse forms spend more per kept weight on the
index work (a gather of h per entry, or an expand per 16 columns) than the 3.3x fewer weights save: csr f32 0.46-0.54x,
csr codes 0.26-0.30x, sell16 0.31-0.36x, mask+expand 0.86-0.88x dense. R pruned further: csr f32 0.69x at 0.20,
0.72x at 0.15, 1.25x at 0.10, 1.87x at 0.05 (crossover ~0.12). W (22 x 512 -> 2048) CSC 0.43-0.44x, rows form
1.0-1.25x; the classifier Gemm (22 x 1024 -> 8210, density 0.325) CSC 0.53x, rows form 1.99x (load 2.4-3.0).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from numba import njit

from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime.loader import read_packed
from edgepack.runtime.ops.linear import bind_linear, linear_scratch_bytes, prepare_linear
from edgepack.runtime.ops.recurrent import _dot_kernel
from edgepack.runtime.weights import DenseWeight, SparseCodebookWeight

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sparse_recurrence_expand as EXPAND  # noqa: E402 (beside this file)

SELL_C = 16



@njit(cache=True)
def _dense_steps(r, h, g, steps):
    for _ in range(steps):
        for k in range(r.shape[0]):
            g[k] = _dot_kernel(r[k], h)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _csr_row(vals, cols, h):
    acc = np.float32(0.0)
    for i in range(vals.shape[0]):
        acc += vals[i] * h[cols[i]]
    return acc


@njit(cache=True)
def _csr_steps(indptr, cols, vals, h, g, steps):
    for _ in range(steps):
        for k in range(indptr.shape[0] - 1):
            a, b = indptr[k], indptr[k + 1]
            g[k] = _csr_row(vals[a:b], cols[a:b], h)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _codes_row(codes, cols, codebook, h):
    acc = np.float32(0.0)
    for i in range(codes.shape[0]):
        acc += codebook[codes[i]] * h[cols[i]]
    return acc


@njit(cache=True)
def _codes_steps(indptr, cols, codes, codebook, h, g, steps):
    for _ in range(steps):
        for k in range(indptr.shape[0] - 1):
            a, b = indptr[k], indptr[k + 1]
            g[k] = _codes_row(codes[a:b], cols[a:b], codebook, h)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _sell_steps(perm, sptr, vals, cols, h, g, acc, steps):
    c = acc.shape[0]
    for _ in range(steps):
        for s in range(sptr.shape[0] - 1):
            for i in range(c):
                acc[i] = 0.0
            a = sptr[s]
            for j in range((sptr[s + 1] - a) // c):
                v = vals[a + j * c: a + j * c + c]
                cc = cols[a + j * c: a + j * c + c]
                for i in range(c):
                    acc[i] += v[i] * h[cc[i]]
            for i in range(c):
                if s * c + i < perm.shape[0]:
                    g[perm[s * c + i]] = acc[i]


def csr_of(m: np.ndarray):
    nz = m != 0
    indptr = np.zeros(m.shape[0] + 1, np.int64)
    np.cumsum(nz.sum(1), out=indptr[1:])
    rr, cc = np.nonzero(nz)
    return indptr, cc.astype(np.uint16), m[rr, cc].astype(np.float32)


def codes_of(vals: np.ndarray):
    codebook, codes = np.unique(vals, return_inverse=True)
    if codebook.size > 256:
        return None
    return codes.astype(np.uint8), codebook.astype(np.float32)


def sell_of(indptr, cols, vals, c=SELL_C):
    lens = np.diff(indptr)
    perm = np.argsort(-lens, kind="stable")
    n_slices = -(-lens.size // c)
    sptr = np.zeros(n_slices + 1, np.int64)
    for s in range(n_slices):
        sptr[s + 1] = sptr[s] + int(lens[perm[s * c:(s + 1) * c]].max(initial=0)) * c
    sv, sc = np.zeros(sptr[-1], np.float32), np.zeros(sptr[-1], np.uint16)
    for s in range(n_slices):
        for i, r in enumerate(perm[s * c:(s + 1) * c]):
            a, b = indptr[r], indptr[r + 1]
            at = sptr[s] + i + c * np.arange(b - a)
            sv[at], sc[at] = vals[a:b], cols[a:b]
    return perm.astype(np.int64), sptr, sv, sc


def cpu_paired(fns: dict, rounds: int) -> dict:
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.thread_time()
            f()
            times[k].append(time.thread_time() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def recurrent_weights(path: Path):
    model = read_packed(path)
    for node in model.graph["nodes"]:
        if node["op"] in ("LSTM", "GRU"):
            yield node["op"], node["inputs"][1], node["inputs"][2], model.weights


def sparse_gemms(path: Path, min_weights: int = 1 << 20):
    """(node name, weight, transB) of every Gemm whose constant weight the file holds as CSR, of >= min_weights."""
    model = read_packed(path)
    for node in model.graph["nodes"]:
        w = model.weights.get(node["inputs"][1]) if node["op"] == "Gemm" and len(node["inputs"]) > 1 else None
        if isinstance(w, SparseCodebookWeight) and w.rows * w.cols >= min_weights:
            attrs = node.get("attrs", {})
            yield node.get("name", node["inputs"][1]), w, bool(attrs.get("transB", ["int", 0])[1])


def time_linear(weights: dict, x: np.ndarray, rounds: int, ref: np.ndarray, label: str) -> None:
    """linear.py's own kernels (bind_linear, as the executor binds them) on each held form of one weight."""
    fns, outs = {}, {}
    for k, p in weights.items():
        outs[k] = np.zeros((x.shape[0], p.n), np.float32)
        scratch = np.empty(max(4, linear_scratch_bytes(x.shape[0], p)), np.uint8)
        fn, fargs = bind_linear(x, p, None, 1.0, 0.0, outs[k], scratch)
        fns[k] = (lambda fn=fn, fargs=fargs: fn(*fargs))
    t = cpu_paired(fns, rounds)
    print(label)
    for k, v in t.items():
        err = float(np.abs(outs[k] - ref).max())
        print(f"    {k:10s} {1e3 * v:7.3f} ms  dense/this {t['dense'] / v:5.2f}x  held {weights[k].nbytes:>10,} B  "
              f"max |err| vs float64 {err:.2e}")


def time_r(r: np.ndarray, steps: int, rounds: int, rng, label: str) -> None:
    """The R candidates on one direction's (gate rows, hidden) matrix, `steps` matvecs each."""
    h = rng.standard_normal(r.shape[1]).astype(np.float32)
    ref = r.astype(np.float64) @ h
    indptr, cols, vals = csr_of(r)
    outs = {}

    def out(k):
        outs[k] = np.zeros(r.shape[0], np.float32)
        return outs[k]

    fns = {"dense": functools.partial(_dense_steps, r, h, out("dense"), steps),
           "csr f32": functools.partial(_csr_steps, indptr, cols, vals, h, out("csr f32"), steps)}
    held = {"dense": r.nbytes, "csr f32": 6 * vals.size + 8 * indptr.size}
    cb = codes_of(vals)
    if cb is not None:
        fns["csr codes"] = functools.partial(_codes_steps, indptr, cols, *cb, h, out("csr codes"), steps)
        held["csr codes"] = 3 * vals.size + 8 * indptr.size + 4 * cb[1].size
    perm, sptr, sv, sc = sell_of(indptr, cols, vals)
    fns["sell16"] = functools.partial(_sell_steps, perm, sptr, sv, sc, h, out("sell16"), np.zeros(SELL_C, np.float32),
                                      steps)
    held["sell16"] = 6 * sv.size + 8 * (perm.size + sptr.size)
    if r.shape[1] % 32 == 0:
        masks, padded = EXPAND.masks_of(r, indptr, vals)
        fns["mask+expand"] = functools.partial(EXPAND.steps, masks, indptr, padded, h, out("mask+expand"), steps)
        held["mask+expand"] = masks.nbytes + 4 * vals.size + 8 * indptr.size
    t = cpu_paired(fns, rounds)
    print(label)
    for k, v in t.items():
        err = float(np.abs(outs[k] - ref).max())
        print(f"    {k:11s} {1e3 * v:7.3f} ms  dense/this {t['dense'] / v:5.2f}x  held {held[k]:>9,} B  "
              f"max |err| vs float64 {err:.2e}")


def prune_to(m: np.ndarray, density: float) -> np.ndarray:
    """m with all but its largest-magnitude `density` fraction of weights zeroed (ties kept)."""
    keep = int(round(density * m.size))
    if keep >= np.count_nonzero(m):
        return m
    thr = np.partition(np.abs(m).ravel(), m.size - keep)[m.size - keep]
    return np.where(np.abs(m) >= thr, m, np.float32(0.0)).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", default=str(Path(__file__).parent / "out" / "ddddocr_common_density0.3.epk"))
    ap.add_argument("--steps", type=int, default=22, help="sequence steps = projection batch (ddddocr at 64 x 170: 22)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--densities", default="0.2,0.15,0.1,0.05",
                    help="R of direction 0 further magnitude-pruned to these densities (where would sparse pay?)")
    args = ap.parse_args()
    print(machine_line(), "| 1 thread | CPU time of the calling thread, median of", args.rounds, "rounds")
    print("loadavg before:", loadavg())
    rng = np.random.default_rng(0)
    for op, w_name, r_name, weights in recurrent_weights(Path(args.file)):
        w_all, r_all = weights[w_name], weights[r_name]
        wd, rd = np.asarray(w_all.to_dense(), np.float32), np.asarray(r_all.to_dense(), np.float32)
        print(f"{op} W '{w_name}' {type(w_all).__name__} {list(wd.shape)} density {np.mean(wd != 0):.3f}; "
              f"R '{r_name}' {type(r_all).__name__} {list(rd.shape)} density {np.mean(rd != 0):.3f}")
        for d in range(rd.shape[0]):
            time_r(np.ascontiguousarray(rd[d]), args.steps, args.rounds, rng,
                   f"  R direction {d}: {args.steps} steps of a {rd.shape[1]} x {rd.shape[2]} matvec")
        for density in (float(v) for v in args.densities.split(",") if v):
            r = prune_to(np.ascontiguousarray(rd[0]), density)
            time_r(r, args.steps, args.rounds, rng, f"  R direction 0 pruned further to density "
                                                   f"{np.mean(r != 0):.3f}: {args.steps} steps")
        for d in range(wd.shape[0]):
            w = np.ascontiguousarray(wd[d])
            x = rng.standard_normal((args.steps, w.shape[1])).astype(np.float32)
            indptr, cols, vals = csr_of(w)
            codes, codebook = codes_of(vals) or (None, None)
            prepared = {"dense": prepare_linear(DenseWeight(w), True)}
            if codes is not None and codebook.size < 256:  # code 0: the filler value 0.0 the format requires
                sw = SparseCodebookWeight(w.shape, np.concatenate([[0.0], codebook]).astype(np.float32),
                                          indptr.astype(np.int32), cols.astype(np.int32), codes + np.uint8(1))
                prepared["sparse"] = prepare_linear(sw, True)
                prepared["rows"] = prepare_linear(sw, True, "rows")
            ref = x.astype(np.float64) @ w.T.astype(np.float64)
            time_linear(prepared, x, args.rounds, ref,
                        f"  W direction {d}: {args.steps} x {w.shape[1]} -> {w.shape[0]} (linear.py's kernels)")
    for name, w, trans_b in sparse_gemms(Path(args.file)):
        dense = np.ascontiguousarray(w.to_dense(), np.float32)
        n, k = (w.rows, w.cols) if trans_b else (w.cols, w.rows)
        x = rng.standard_normal((args.steps, k)).astype(np.float32)
        ref = x.astype(np.float64) @ (dense.T if trans_b else dense).astype(np.float64)
        forms = {"dense": prepare_linear(DenseWeight(dense), trans_b), "sparse": prepare_linear(w, trans_b)}
        if trans_b:
            forms["rows"] = prepare_linear(w, True, "rows")
        time_linear(forms,
                    x, args.rounds, ref, f"Gemm '{name}': {args.steps} x {k} -> {n}, weight density "
                                         f"{w.nnz / (w.rows * w.cols):.3f} (linear.py's kernels)")
    print("loadavg after:", loadavg())


if __name__ == "__main__":
    sys.exit(main())
