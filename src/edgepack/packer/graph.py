"""A tiny graph IR shared by the ONNX importer, the packing pipeline and the writer.

Attributes are kept typed, as `(kind, value)` with kind one of "int", "float", "string", "ints", "floats",
"strings", so that a graph survives pack -> unpack with the same ONNX attribute types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, tuple[str, Any]] = field(default_factory=dict)

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs[key][1] if key in self.attrs else default


@dataclass
class ValueInfo:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: list[int | str | None]  # str or None: a dynamic dimension


@dataclass
class Graph:
    name: str
    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    nodes: list[Node]
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    source_params: int = 0  # float parameters of the source model before folding: the base of the ratio

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    users.setdefault(i, []).append(n)
        return users
