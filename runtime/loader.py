"""The one load path: map the file, check the container, decode and check every tensor, then hand out the model
description (spec/format.md). Nothing is returned before everything is validated."""
from __future__ import annotations

import os
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
