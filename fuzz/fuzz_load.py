"""Coverage-guided fuzzing of the one load path plus one run: `runtime.load(bytes)` then `Model.run` on an input of
the declared shape. Anything but a clean EdgepackError (or success) is a finding: atheris stops and saves the input.

    pip install atheris
    python fuzz/make_corpus.py fuzz/corpus            # seeds: the spec examples and small packed models
    python fuzz/fuzz_load.py fuzz/corpus -max_total_time=1800 -rss_limit_mb=2048 -timeout=10 -max_len=65536

Minimise a finding with `-minimize_crash=1 -runs=10000 crash-<hash>`, then copy it into tests/fuzz_regressions/
(tests/test_fuzz_regressions.py replays every file there).
"""
from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import gc  # noqa: E402

from edgepack import runtime  # noqa: E402
from numba.core.dispatcher import Dispatcher  # noqa: E402
from edgepack.runtime.errors import EdgepackError  # noqa: E402

# atheris rewrites bytecode for coverage, which Numba cannot compile: instrument every loaded Python function, then
# give the Numba kernels back their original code (their Python wrappers stay instrumented).
_kernels = [(d.py_func, d.py_func.__code__) for d in gc.get_objects() if isinstance(d, Dispatcher)]
atheris.instrument_all()
for func, code in _kernels:
    func.__code__ = code

from fuzz.replay import run_once, with_fixed_crcs  # noqa: E402


def test_one_input(data: bytes) -> None:
    for variant in (data, with_fixed_crcs(data)):
        try:
            run_once(variant)
        except EdgepackError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
