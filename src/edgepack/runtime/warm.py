"""`edgepack warm`: fill the Numba cache for a model on the device, before the first real input arrives.

The runtime's kernels are compiled by Numba on their first call and cached on disk (cache=True: __pycache__ beside
the installed package, or NUMBA_CACHE_DIR); a later process loads them instead of compiling. On a small board the
compile is seconds to minutes (tools/arm64_check.sh measures it), paid by whichever process runs the model first.
`warm` pays it at install time: it loads the model in each configuration the deployment uses (memory budget, forced
layer modes, parallel kernels, batch) and runs it once on zeros of the declared input shapes, which calls every
kernel the model's plan uses with the argument types real inputs give (the kernels are typed by dtype, rank and
layout, never by values). Outputs are discarded; zeros may give NaN or infinity (a log of zero), which is allowed.
"""
from __future__ import annotations

import argparse
import time


def warm(source, memory_budget=None, *, layer_modes=None, parallel: bool = False, batch: int = 1,
         threads: int | None = None) -> float:
    """Load `source` as `runtime.load` does and run it once on zeros of its declared input shapes at `batch` (dynamic
    first dimensions take `batch`, other dynamic dimensions 1). Returns the seconds taken. Errors are the runtime's
    own (FormatError, BudgetError, ...)."""
    import numpy as np

    from edgepack.runtime.model import declared_shapes, load

    t0 = time.perf_counter()
    model = load(source, memory_budget, parallel, batch=batch, layer_modes=layer_modes, threads=threads)
    shapes = declared_shapes(model.inputs, batch)
    model.run({name: np.zeros(shape, np.float32) for name, shape in shapes.items()}, check_finite=False)
    return time.perf_counter() - t0


def cmd_warm(a: argparse.Namespace) -> int:
    modes = a.layer_modes or [None]
    for mode in modes:
        s = warm(a.file, a.budget, layer_modes=mode, parallel=a.parallel or (a.threads or 1) > 1, batch=a.batch,
                 threads=a.threads)
        how = ", ".join(x for x in (f"layer modes {mode}" if mode else "", f"budget {a.budget}" if a.budget else "",
                                    "parallel" if a.parallel else "", f"batch {a.batch}") if x)
        print(f"warmed {a.file} ({how}) in {s:.2f} s")
    from numba import config

    print(f"Numba cache: {config.CACHE_DIR or 'the __pycache__ folders of the installed edgepack package'}")
    return 0


def add_warm_command(sub, size_type, count_type) -> None:
    """Register `edgepack warm` on the CLI's subparsers: size_type parses --budget, count_type --batch and --threads
    (the CLI's argument types). Nothing heavy is imported here: `edgepack --help` stays quick on a small board."""
    s = sub.add_parser("warm", help="compile and cache the Numba kernels a packed model uses (run once on zeros), so "
                                    "that the first real run on this machine does not compile")
    s.add_argument("file")
    s.add_argument("--budget", type=size_type, help="the memory budget the deployment loads with, e.g. 256KiB")
    s.add_argument("--layer-modes", action="append", metavar="MODE",
                   help="warm with every layer that has MODE forced to it (compact, csr, dense, streamed), as "
                        "runtime.load(layer_modes=MODE); repeat for several (default: the modes load chooses)")
    s.add_argument("--batch", type=count_type, default=1, help="the batch size the deployment runs (default 1)")
    s.add_argument("--parallel", action="store_true", help="warm the Numba-parallel kernels (as `run --parallel`)")
    s.add_argument("--threads", type=count_type, metavar="N", help="as `run --threads` (more than 1 implies --parallel)")
    s.set_defaults(func=cmd_warm)
