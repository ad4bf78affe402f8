"""How many threads a run may use, and keeping it to that: numpy's BLAS (which dense float32 layers and batched
decoding call) and Numba's parallel kernels.

BLAS: the libraries loaded in this process are found once, with threadpoolctl, and each run lowers their thread
count to the limit for its duration and puts it back afterwards. `threadpoolctl.threadpool_limits` would do the same
per run, but it looks the libraries up again every time: about 0.3-0.8 ms per call measured on the 2-core machine
of benchmarks/README.md, against runs of a few microseconds; calling the libraries' own get/set functions costs
about 1-3 us (one get when the count is already within the limit). The lowering is scoped to the run, and runs in
several Python threads at once share it: the first to start saves the counts, each lowers them to its limit if that
is lower, and each that ends puts them back to the tightest limit still active (the saved counts after the last), so
no run, nested or concurrent, ever has more BLAS threads than it asked for. A count that is
already lower (OPENBLAS_NUM_THREADS=1, an enclosing threadpool_limits) is left as it is.

Numba: its thread count is per calling thread (numba.set_num_threads); parallel models set it around each run when
it differs from theirs and restore it after; serial kernels use one thread whatever it is."""
from __future__ import annotations

import os
import threading

from edgepack.runtime.errors import InputError, UnsupportedError

_lock = threading.Lock()
_libs: list | None = None  # [(get, set)] of every BLAS library in the process
_limits: list[int] = []  # the limits of the runs inside blas_enter right now (nested or in other threads)
_saved: list[int] = []  # the libraries' counts before the first of those began
_current: list[int] = []


def cores() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def free_cores() -> int:
    """cores() less those other work keeps busy (the 1-minute load average, rounded), at least 1: the default of the
    workstation commands' --threads. More BLAS threads than free cores spend their time waiting for a core (OpenBLAS
    spins): `edgepack demo` on the 2-core machine of benchmarks/README.md at load 8.5 took 1014 s wall and 323 s of
    CPU with 2 threads, 174 s and 18 s with 1."""
    n = cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform
        return n
    return max(1, min(n, int(n - load + 0.5)))


def check_threads(threads, what: str = "threads") -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InputError(f"{what} must be an int >= 1, found {threads!r}")
    return threads


def _blas_functions() -> list:
    """(get, set) of every BLAS library loaded (numpy's OpenBLAS, MKL, BLIS, ...), looked up once per process."""
    global _libs
    if _libs is None:
        with _lock:
            if _libs is None:
                try:
                    from threadpoolctl import ThreadpoolController
                except ImportError as e:
                    raise UnsupportedError("the runtime keeps numpy's BLAS within the thread limit with "
                                           "threadpoolctl, which is not installed: pip install threadpoolctl") from e
                libs = []
                for lc in ThreadpoolController().select(user_api="blas").lib_controllers:
                    get, set_ = lc.get_num_threads, lc.set_num_threads
                    # OpenBLAS with its own pthreads pool: the C functions directly (the controller's methods add a
                    # per-call symbol lookup and an ownership check that the lock below replaces)
                    if getattr(lc, "internal_api", "") == "openblas" and getattr(lc, "threading_layer", "") != "openmp":
                        sym = getattr(lc, "_get_symbol", None)
                        g = sym("openblas_get_num_threads") if sym else None
                        s = sym("openblas_set_num_threads") if sym else None
                        if g is not None and s is not None:
                            get, set_ = g, s
                    libs.append((get, set_))
                _saved[:] = _current[:] = [0] * len(libs)
                _libs = libs
    return _libs


def blas_enter(limit: int) -> None:
    """Lower every BLAS library's thread count to `limit` (if above it) until the matching blas_exit(limit)."""
    libs = _libs if _libs is not None else _blas_functions()
    with _lock:
        first = not _limits
        _limits.append(limit)
        for i, (get, set_) in enumerate(libs):
            if first:
                n = _saved[i] = int(get() or 1)
            else:
                n = _current[i]
            if n > limit:
                set_(limit)
                n = limit
            _current[i] = n


def blas_exit(limit: int) -> None:
    """End one blas_enter(limit): the counts go back to the tightest limit still active, or to what they were."""
    with _lock:
        _limits.remove(limit)
        tightest = min(_limits) if _limits else None
        for i, (_, set_) in enumerate(_libs):
            want = _saved[i] if tightest is None or _saved[i] < tightest else tightest
            if _current[i] != want:
                set_(want)
                _current[i] = want


class ThreadLimit:
    """The limit of one model: `enter()` before a run, `exit(token)` after it (in a finally)."""

    def __init__(self, threads: int, parallel: bool):
        self.threads = check_threads(threads)
        self.numba = None
        if parallel:
            import numba

            self.numba = min(self.threads, int(numba.config.NUMBA_NUM_THREADS))
        _blas_functions()  # look the libraries up now (load time), not in the first run

    def enter(self):
        prev = None
        if self.numba is not None:
            from numba import get_num_threads, set_num_threads

            prev = get_num_threads()
            if prev != self.numba:
                set_num_threads(self.numba)
        blas_enter(self.threads)
        return prev

    def exit(self, prev) -> None:
        blas_exit(self.threads)
        if prev is not None and prev != self.numba:
            from numba import set_num_threads

            set_num_threads(prev)

    def __enter__(self):
        self._token = self.enter()
        return self

    def __exit__(self, *exc):
        self.exit(self._token)
        return False


def limit_process(threads: int):
    """For a whole command (pack, compress, training): BLAS and Numba's threads at most `threads`, restored after.
    A context manager."""
    return ThreadLimit(threads, parallel=True)
