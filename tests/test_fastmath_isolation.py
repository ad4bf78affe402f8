"""No runtime kernel compiled with fastmath flags calls a Numba helper that has none of its own.

Numba compiles such a helper, on its first call from a kernel with fastmath flags, with that kernel's flags, and
caches that version for every caller: which kernel ran first after a fresh cache then decided the helper's bits
(linear._dense_epilogue_kernel under _dense_gemv_kernel's contraction: alpha * o + beta * bias fused into one FMA,
1 ulp off on 309 of 1000 values). A helper reached from such a kernel states its flags (fastmath=False to keep IEEE
order) or is inlined into its callers (inline="always", where taking the caller's flags is the intent).
"""
from __future__ import annotations

import importlib
import pkgutil

from numba.core.dispatcher import Dispatcher

import edgepack.runtime
import edgepack.runtime.ops


def _dispatchers() -> list[Dispatcher]:
    found = {}
    for pkg in (edgepack.runtime, edgepack.runtime.ops):
        for info in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            for value in vars(module).values():
                if isinstance(value, Dispatcher):
                    found[id(value)] = value
    return list(found.values())


def test_fastmath_kernels_call_only_helpers_with_their_own_flags():
    dispatchers = _dispatchers()
    assert len(dispatchers) > 50  # the runtime's kernels were found
    fast = [d for d in dispatchers if d.targetoptions.get("fastmath")]
    assert fast, "no kernel with fastmath flags found: the check would check nothing"
    bad = []
    for d in fast:
        names = d.py_func.__globals__
        for name in d.py_func.__code__.co_names:
            callee = names.get(name)
            if (isinstance(callee, Dispatcher) and "fastmath" not in callee.targetoptions
                    and callee.targetoptions.get("inline") != "always"):
                bad.append(f"{d.py_func.__module__}.{d.py_func.__name__} -> {name}")
    assert not bad, f"helpers that would take their first caller's fastmath flags: {bad}"
