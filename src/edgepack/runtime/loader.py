"""The one load path: read the file, check the container, decode and check every tensor, then hand out the model
description (spec/format.md). Nothing is returned before everything is validated. After load, keep_needed_bytes lets a
model keep only the parts of the file its runs read."""
from __future__ import annotations

import bisect
import functools
import os
import types
from dataclasses import dataclass, field

import numpy as np

from .constants import DTYPES
from .decode import Buffers, decode_tensor
from .reader import Container, open_bytes, read_container


@dataclass
class PackedModel:
    """A validated packed file: JSON parts as dicts, weights as runtime/weights.py objects (views into the file)."""

    source: str
    container: Container
    weights: dict = field(default_factory=dict)

    @property
    def meta(self) -> dict:
        return self.container.meta

    @property
    def graph(self) -> dict:
        return self.container.graph

    @property
    def file_size(self) -> int:
        return self.container.file_size


def read_packed(source: str | os.PathLike | bytes | bytearray | memoryview) -> PackedModel:
    buf, where = open_bytes(source)
    container = read_container(buf, where)
    bufs = Buffers(container.data, [])
    weights = {}
    for i, t in enumerate(container.graph["tensors"]):
        weights[t["name"]] = decode_tensor(t, bufs, f"{where}: tensor '{t['name']}'")
    bufs.check_layout(f"{where}: section data")
    return PackedModel(where, container, weights)


def attrs_plain(attrs: dict) -> dict:
    """Graph-section attributes [kind, value] -> plain python values (what op kernels take)."""
    return {k: (float(v) if kind == "float" else [float(x) for x in v] if kind == "floats" else v)
            for k, (kind, v) in attrs.items()}


def dense_weights(model: PackedModel) -> dict[str, np.ndarray]:
    """Every tensor decoded to a dense array of its declared dtype (the reference view of the file). What the
    expansions take is checked against this machine's memory before any is made (BudgetError naming the largest)."""
    from .memory import check_allocation

    sizes = {}
    for t in model.graph["tensors"]:
        if t["encoding"]["type"] != "dense":
            n = np.dtype(DTYPES[t["dtype"]]).itemsize
            for d in t["shape"]:
                n *= int(d)
            sizes[t["name"]] = n
    if sizes:
        name = max(sizes, key=sizes.get)
        check_allocation(sizes[name], f"{model.source}: tensor '{name}' (shape {list(model.weights[name].shape)}) "
                                      f"decoded to dense")
        check_allocation(sum(sizes.values()), f"{model.source}: the {len(sizes)} compressed tensors decoded to dense")
    return {name: np.asarray(w.to_dense(), order="C") for name, w in model.weights.items()}  # 0-d stays 0-d


# --- keeping only the bytes runs read ------------------------------------------------------------------------------

_COMPACT_ALIGN = 64


def file_root(data: np.ndarray) -> np.ndarray | None:
    """The array that owns a file's bytes (what open_bytes made), or None when the bytes belong to the caller (a
    `bytes` object passed to load: nothing of ours to release)."""
    root = data
    while isinstance(root.base, np.ndarray):
        root = root.base
    return root if root.base is None else None


def keep_needed_bytes(root: np.ndarray, holders: list) -> np.ndarray:
    """Copy the parts of `root` (a file's bytes) that arrays reachable from `holders` view into one smaller buffer,
    and point those arrays at it, so that the rest of the file need not stay in memory. Containers (dicts, lists,
    runtime objects' attributes, closures) are updated in place; tuples are rebuilt and put back in their holder.
    Returns the new buffer (read-only). The contents every array sees are unchanged; whether `root` is then free
    depends on no other reference to it remaining (the caller checks, and keeps the whole file otherwise)."""
    lo_root = root.__array_interface__["data"][0]
    found: dict[int, np.ndarray] = {}
    state: dict[int, bool] = {}  # container id -> holds (at any depth) an array that views root

    def views(a: np.ndarray) -> bool:
        b = a.base  # numpy points a view's base at the array that owns the memory (or a chain ending there)
        while isinstance(b, np.ndarray):
            if b is root:
                return True
            b = b.base
        return False

    def visit(o) -> bool:
        if type(o) in _ATOMS:
            return False
        if isinstance(o, np.ndarray):
            if o is not root and views(o):
                found[id(o)] = o
                return True
            return False
        k = id(o)
        if k in state:
            return state[k]
        state[k] = False  # cycles: provisional
        if isinstance(o, dict):
            dirty = any([visit(v) for v in o.values()])
        elif isinstance(o, (list, tuple)):
            dirty = any([visit(v) for v in o])
        else:
            dirty = any([visit(v) for v in _children(o)])
        state[k] = dirty
        return dirty

    for h in holders:
        visit(h)
    new: dict[int, np.ndarray] = {}
    for key, a in list(found.items()):
        if a.size == 0:
            b = np.empty(a.shape, a.dtype)
            b.flags.writeable = False
            new[key] = b
            del found[key]
    # merged byte ranges (relative to root), each placed at the same offset modulo 64 (alignment kept)
    spans = sorted((_byte_bounds(a)[0] - lo_root, _byte_bounds(a)[1] - lo_root) for a in found.values())
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    place, cursor = [], 0
    for lo, hi in merged:
        at = -(-cursor // _COMPACT_ALIGN) * _COMPACT_ALIGN + lo % _COMPACT_ALIGN
        place.append(at)
        cursor = at + hi - lo
    compact = np.empty(cursor, dtype=np.uint8)
    starts = [lo for lo, _ in merged]
    for (lo, hi), at in zip(merged, place):
        compact[at: at + hi - lo] = root[lo:hi]
    compact.flags.writeable = False
    for key, a in found.items():
        rel = a.__array_interface__["data"][0] - lo_root
        k = bisect.bisect_right(starts, _byte_bounds(a)[0] - lo_root) - 1
        b = np.ndarray(a.shape, a.dtype, buffer=compact, offset=place[k] + rel - merged[k][0], strides=a.strides)
        b.flags.writeable = False
        new[key] = b

    done: dict[int, object] = {}

    def swap(o):
        """o with every found array replaced (containers in place; a tuple rebuilt only if a member changed)."""
        if isinstance(o, np.ndarray):
            return new.get(id(o), o)
        if not state.get(id(o), False):
            return o
        if id(o) in done:
            return done[id(o)]
        done[id(o)] = o
        if isinstance(o, dict):
            for k, v in list(o.items()):
                w = swap(v)
                if w is not v:
                    o[k] = w
        elif isinstance(o, list):
            for i, v in enumerate(o):
                w = swap(v)
                if w is not v:
                    o[i] = w
        elif isinstance(o, tuple):
            items = [swap(v) for v in o]
            if any(w is not v for w, v in zip(items, o)):
                rebuilt = type(o)(*items) if hasattr(o, "_fields") else type(o)(items)
                done[id(o)] = rebuilt
                return rebuilt
        elif isinstance(o, (set, frozenset)):
            pass  # arrays are not hashable: nothing to swap
        else:
            _swap_children(o, swap)
        return o

    for h in holders:
        swap(h)
    return compact


_ATOMS = frozenset({str, int, float, bool, type(None), bytes, complex})


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    """[first, end) addresses of the bytes an array spans (numpy's byte_bounds, which moved in numpy 2)."""
    lo = hi = a.__array_interface__["data"][0]
    for n, st in zip(a.shape, a.strides):
        if st < 0:
            lo += (n - 1) * st
        else:
            hi += (n - 1) * st
    return lo, hi + a.itemsize


def _is_runtime_object(o) -> bool:
    return type(o).__module__.startswith("edgepack.runtime.") and hasattr(o, "__dict__") and not isinstance(o, type)


def _children(o) -> list:
    if _is_runtime_object(o):
        return list(vars(o).values())
    if isinstance(o, types.MethodType):
        return [o.__self__]
    if isinstance(o, types.FunctionType):
        return [c.cell_contents for c in (o.__closure__ or ()) if _cell_full(c)] + list(o.__defaults__ or ())
    if isinstance(o, functools.partial):
        return [o.func, *o.args, *o.keywords.values()]
    return []


def _cell_full(c) -> bool:
    try:
        c.cell_contents
    except ValueError:
        return False
    return True


def _swap_children(o, swap) -> None:
    if _is_runtime_object(o):
        d = vars(o)
        for k, v in list(d.items()):
            w = swap(v)
            if w is not v:
                d[k] = w  # also for frozen dataclasses: their __dict__ is an ordinary dict
    elif isinstance(o, types.MethodType):
        swap(o.__self__)
    elif isinstance(o, types.FunctionType):
        for c in o.__closure__ or ():
            if _cell_full(c):
                v = c.cell_contents
                w = swap(v)
                if w is not v:
                    c.cell_contents = w
        if o.__defaults__:
            o.__defaults__ = swap(o.__defaults__)
