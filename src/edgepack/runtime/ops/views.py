"""Copies between numpy views bound once per plan: Split's outputs from slabs of its input, Slice's output from its
strided view of the input, Concat's inputs into slabs of its output. The views are made at bind time over the
arena's buffers (so a run does no slicing, no attribute parsing, no numpy dispatch: YOLOv8's Split of 256 x 10 x 10
took 39 us through np.copyto, most of it Python); a pair whose two sides are C-contiguous (a channel slab at batch 1)
is one flat copy (shape.py's copy kernel), any other one of rank <= 4 a loop nest over its strides, read from (or
written into) the flat buffer the view was cut from. A pair whose two sides are the same memory (the planner placed
the tensor as a view of the other: runtime/planner.py BlockView) copies nothing; a step with nothing left to copy is
left out of the plan (registry.NO_STEP)."""
from __future__ import annotations

import numpy as np
from numba import njit

from edgepack.runtime.ops.registry import NO_STEP
from edgepack.runtime.ops.shape import _copy_kernel


@njit(cache=True)
def _line(a, start, n, step):
    """The n elements a[start], a[start + step], ... (step != 0, any sign) as a 1-D view."""
    if step > 0:
        return a[start: start + (n - 1) * step + 1: step]
    return a[start + (n - 1) * step: start + 1: -step][::-1]


@njit(cache=True)
def _copy4d_kernel(src, soff, sst, dst, doff, dst_st, shape):
    """dst[doff + i . dst_st] = src[soff + i . sst] over the 4-D index space `shape` (src, dst: flat contiguous
    arrays; offsets and strides in elements, any sign). Rows whose last axis is unit-stride on both sides are
    contiguous runs (a loop LLVM vectorises: YOLOX's Focus rows 0::2 of 3 x 416 x 416 took 75 us through strided
    views, ORT 38), the others strided 1-D views."""
    a, b, c, d = shape[0], shape[1], shape[2], shape[3]
    if d == 0:
        return
    unit = sst[3] == 1 and dst_st[3] == 1
    for i in range(a):
        for j in range(b):
            for k in range(c):
                s0 = soff + i * sst[0] + j * sst[1] + k * sst[2]
                d0 = doff + i * dst_st[0] + j * dst_st[1] + k * dst_st[2]
                if unit:
                    s = src[s0: s0 + d]
                    o = dst[d0: d0 + d]
                    for m in range(d):
                        o[m] = s[m]
                else:
                    s = _line(src, s0, d, sst[3])
                    o = _line(dst, d0, d, dst_st[3])
                    for m in range(d):
                        o[m] = s[m]


def _flat(view: np.ndarray, base: np.ndarray | None):
    """(base as a flat array, the view's offset and 4 strides in elements), or None when view is not a float32 view
    of rank <= 4 whose every element lies inside base (C-contiguous float32): the kernel does no bounds test."""
    if base is None or view.dtype != np.float32 or base.dtype != np.float32 or not base.flags.c_contiguous:
        return None
    if view.ndim > 4 or any(st % 4 for st in view.strides):
        return None
    off = view.ctypes.data - base.ctypes.data
    strides = (0,) * (4 - view.ndim) + tuple(st // 4 for st in view.strides)
    shape = (1,) * (4 - view.ndim) + view.shape
    lo = off // 4 + sum(min(0, (n - 1) * st) for n, st in zip(shape, strides))
    hi = off // 4 + sum(max(0, (n - 1) * st) for n, st in zip(shape, strides))
    if off % 4 or lo < 0 or hi >= base.size:
        return None
    return base.reshape(-1), off // 4, np.array(strides, dtype=np.int64)


def _pair(src: np.ndarray, dst: np.ndarray, src_base: np.ndarray | None, dst_base: np.ndarray | None):
    """(kernel, args) copying src into dst (same shape, float32; each a C-contiguous array or a view into its base),
    or None when this module has no kernel for them (another dtype, rank > 4, no base)."""
    if not (isinstance(src, np.ndarray) and src.dtype == dst.dtype == np.float32 and src.shape == dst.shape):
        return None
    if src.flags.c_contiguous and dst.flags.c_contiguous:
        return _copy_kernel, (src.reshape(-1), dst.reshape(-1))
    fs = _flat(src, src if src.flags.c_contiguous else src_base)
    fd = _flat(dst, dst if dst.flags.c_contiguous else dst_base)
    if fs is None or fd is None:
        return None
    shape4 = np.array((1,) * (4 - dst.ndim) + dst.shape, dtype=np.int64)
    return _copy4d_kernel, fs + fd + (shape4,)


def _same_memory(a, b) -> bool:
    """a and b are the same elements of the same memory (strides of dimensions of size 1 do not matter)."""
    return (isinstance(a, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.strides, b.strides)))


def _run_pairs(pairs) -> None:
    for fn, args in pairs:
        fn(*args)


def bind_copies(sources: list, targets: list, src_base: np.ndarray | None = None,
                dst_base: np.ndarray | None = None):
    """The step (fn, args) copying each sources[i] into targets[i] (numpy arrays or views made by the caller at bind
    time, the views into src_base / dst_base), NO_STEP when every pair is already the same memory, or None when one
    pair has no kernel here (the op's plain runner then runs)."""
    pairs = []
    for src, dst in zip(sources, targets):
        if dst is None or dst.size == 0 or _same_memory(src, dst):
            continue
        p = _pair(src, dst, src_base, dst_base)
        if p is None:
            return None
        pairs.append(p)
    if not pairs:
        return NO_STEP
    if len(pairs) == 1:
        return pairs[0]
    return _run_pairs, (tuple(pairs),)


def slabs(a: np.ndarray, axis: int, sizes) -> list:
    """Views of a: consecutive slabs of `sizes` along axis."""
    out, start = [], 0
    for n in sizes:
        out.append(a[(slice(None),) * axis + (slice(start, start + n),)])
        start += n
    return out
