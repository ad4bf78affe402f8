"""Where runtime/ops/linear.py's dot-product kernel (_dense_dot) beats numpy's BLAS for a float32 weight held as W (n, k):
the two alternate call by call in one process over a grid of k, n and batch sizes, one thread, wall time of each
call (microseconds: below the CPU clock's useful resolution), medians; prints BLAS time / kernel time (> 1: the
kernel is faster), a '*' where linear.uses_dense_dot picks the kernel, and /proc/loadavg.

    OPENBLAS_NUM_THREADS=1 python benchmarks/dense_dot_sweep.py [--calls 300] [--k 32,64,...] [--n 128,256,1024]
                                                       [--batches 2,3,...]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime.ops import linear as L
from edgepack.runtime.ops.elementwise import epilogue

BATCHES = (2, 3, 4, 8, 16, 22, 32, 64)


def paired(f, g, calls):
    f()
    g()
    a, b = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        f()
        t1 = time.perf_counter()
        g()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    return float(np.median(a)), float(np.median(b))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--k", default="32,64,96,128,256,512")
    p.add_argument("--n", default="128,256,1024")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    a = p.parse_args()
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
    print("BLAS time / dot kernel time at batch b (b:ratio; * = uses_dense_dot picks the kernel)")
    rng = np.random.default_rng(0)
    empty = np.zeros(0, np.float32)
    ep = epilogue(None, 1.0, 0.0)
    for k in map(int, a.k.split(",")):
        for n in map(int, a.n.split(",")):
            cells = []
            for b in map(int, a.batches.split(",")):
                x = rng.standard_normal((b, k)).astype(np.float32)
                w = rng.standard_normal((n, k)).astype(np.float32)
                o1, o2 = np.empty((b, n), np.float32), np.empty((b, n), np.float32)
                wt = w.T
                t_blas, t_dot = paired(lambda: L._dense_blas(x, wt, empty, ep, o1, False),
                                       lambda: L._dense_dot_kernel(x, w, empty, ep, o2, 1), a.calls)
                cells.append(f"{b}:{t_blas / t_dot:4.2f}{'*' if L.uses_dense_dot(b, n, k) else ' '}")
            print(f"k={k:4d} n={n:5d}  " + " ".join(cells), flush=True)
    print(f"loadavg {loadavg()}")


if __name__ == "__main__":
    main()
