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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

with atheris.instrument_imports(include=["runtime"]):
    import runtime
    from runtime.errors import EdgepackError

from fuzz.replay import run_once  # noqa: E402


def test_one_input(data: bytes) -> None:
    try:
        run_once(data)
    except EdgepackError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    del runtime  # imported above only so that atheris instruments it
    main()
