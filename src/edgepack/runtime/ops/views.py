"""Copies between numpy views bound once per plan: Split's outputs from slabs of its input, Slice's output from its
strided view of the input, Concat's inputs into slabs of its output. The views are made at bind time over the
arena's buffers (so a run does no slicing, no attribute parsing, no numpy dispatch: YOLOv8's Split of 256 x 10 x 10
took 39 us through np.copyto, most of it Python); a pair whose two sides are C-contiguous (a channel slab at batch 1)
is one flat copy (shape.py's copy kernel), any other one of rank <= 4 a loop nest over its strides."""
from __future__ import annotations

import numpy as np
from numba import njit

from edgepack.runtime.ops.shape import _copy_kernel


@njit(cache=True)
def _copy4d_kernel(src, dst):
    """dst[...] = src[...] for two 4-D arrays of one shape and any strides (the innermost loop runs the last axis)."""
    a, b, c, d = dst.shape
    for i in range(a):
        for j in range(b):
            for k in range(c):
                s = src[i, j, k]
                o = dst[i, j, k]
                for m in range(d):
                    o[m] = s[m]


def _pair(src: np.ndarray, dst: np.ndarray):
    """(kernel, src, dst) copying src into dst (same shape, float32, dst writable), or None when this module has no
    kernel for them (another dtype, rank > 4)."""
    if not (isinstance(src, np.ndarray) and src.dtype == dst.dtype == np.float32 and src.shape == dst.shape):
        return None
    if src.flags.c_contiguous and dst.flags.c_contiguous:
        return _copy_kernel, src.reshape(-1), dst.reshape(-1)
    if src.ndim > 4:
        return None
    lead = (1,) * (4 - src.ndim)  # unit axes in front: still views
    return _copy4d_kernel, src.reshape(lead + src.shape), dst.reshape(lead + dst.shape)


def _run_pairs(pairs) -> None:
    for fn, src, dst in pairs:
        fn(src, dst)


def bind_copies(sources: list, targets: list):
    """The step (fn, args) copying each sources[i] into targets[i] (numpy views, made by the caller at bind time),
    or None when one pair has no kernel here (the op's plain runner then runs)."""
    pairs = []
    for src, dst in zip(sources, targets):
        if dst is None or dst.size == 0:
            continue
        p = _pair(src, dst)
        if p is None:
            return None
        pairs.append(p)
    if len(pairs) == 1:
        fn, src, dst = pairs[0]
        return fn, (src, dst)
    return _run_pairs, (tuple(pairs),)


def slabs(a: np.ndarray, axis: int, sizes) -> list:
    """Views of a: consecutive slabs of `sizes` along axis."""
    out, start = [], 0
    for n in sizes:
        out.append(a[(slice(None),) * axis + (slice(start, start + n),)])
        start += n
    return out
