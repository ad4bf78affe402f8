"""Writing b-bit packed streams (1 <= b <= 16), the inverse of runtime/bitpack.py (spec/format.md, "Packed streams")."""
from __future__ import annotations

import numpy as np

from edgepack.runtime.constants import MAX_PACKED_BITS


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integers < 2**bits: bit j of value i becomes stream bit i*bits + j, LSB-first, zero padded."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_PACKED_BITS:
        raise ValueError(f"bit width must be an int in [1, {MAX_PACKED_BITS}], found {bits!r}")
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, found shape {values.shape}")
    if values.size and values.dtype.kind not in "ui":
        raise ValueError(f"values must be integers, found dtype {values.dtype}")
    if values.size:
        lo, hi = int(values.min()), int(values.max())
        if lo < 0 or hi >= 1 << bits:
            bad = int(np.flatnonzero((values < 0) | (values >= 1 << bits))[0])
            raise ValueError(f"value {int(values[bad])} at index {bad} does not fit in {bits} bits "
                             f"(expected 0 <= v < {1 << bits})")
    v = values.astype(np.int64, copy=False)
    # one row of `bits` stream bits per value, LSB first; packbits' little bit order matches the stream bit order
    stream = ((v[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little")
