"""edgepack's device runtime (numpy + numba only): `load(path_or_bytes, memory_budget=None, parallel=False)` -> Model;
`Model.run(x | {name: x})` -> {output name: array}; `Model.plan` is the memory plan (runtime/memory.py)."""
from edgepack.runtime.kernel_cache import sweep as _sweep_kernel_cache

_sweep_kernel_cache()  # before any kernel loads: a cached kernel must not outlive a source it compiled in

from edgepack.runtime.errors import BudgetError, EdgepackError, FormatError, InputError, UnsupportedError
from edgepack.runtime.memory import MemoryPlan
from edgepack.runtime.model import Model, load, supported_ops

__all__ = ["load", "Model", "MemoryPlan", "supported_ops", "EdgepackError", "FormatError", "UnsupportedError",
           "BudgetError", "InputError"]
