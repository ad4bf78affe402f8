"""Kernels compiled with LLVM's SLP vectoriser on (Numba leaves it off): the register-tiled convolution kernels,
whose unrolled sums become vector code only with it.

They compile when a model first binds them (`ready`), not when the runtime is imported: a cold Numba cache then
costs only the kernels the model uses. Compiled at import, the tiled convolution alone took 37 s of CPU on every
fresh install and every new cache folder (`edgepack warm`, a board's first run), for MLPs and LSTMs too.
"""
from __future__ import annotations

import numba
from numba import njit
from numba.core.compiler_lock import global_compiler_lock

_PENDING: dict = {}  # dispatcher -> its signatures, until `ready` has compiled them


def slp_kernel(fn, signatures):
    """A Numba dispatcher of fn (cache=True, contracted multiply-adds) whose `signatures` compile with SLP on the
    first time `ready` is called on it. Call it through `ready` (or from a kernel bound after `ready`): a call
    before that compiles without SLP (the same values, slower code)."""
    d = njit(cache=True, fastmath={"contract"})(fn)
    _PENDING[d] = tuple(signatures)
    return d


def ready(d):
    """d with every signature compiled with SLP on (or loaded from the cache); a dictionary lookup after the first
    call. Numba's setting is restored and its compiler lock held meanwhile, so no other compile sees SLP on."""
    sigs = _PENDING.get(d)
    if sigs is None:
        return d
    with global_compiler_lock:
        if d in _PENDING:
            saved = numba.config.SLP_VECTORIZE
            numba.config.SLP_VECTORIZE = 1
            try:
                for sig in sigs:
                    d.compile(sig)
            finally:
                numba.config.SLP_VECTORIZE = saved
            del _PENDING[d]
    return d
