"""Packed file -> dense ONNX model (every tensor decoded to what the runtime computes with), for checking a packed
model with onnxruntime or any other ONNX tool."""
from __future__ import annotations

import os

import numpy as np

from edgepack.runtime.loader import dense_weights, read_packed

from .graph import Graph, Node, ValueInfo


def packed_to_graph(source) -> Graph:
    model = read_packed(source)
    g = model.graph
    nodes = [Node(n["op"], n["name"], list(n["inputs"]), list(n["outputs"]),
                  {k: (kind, v) for k, (kind, v) in n["attrs"].items()}) for n in g["nodes"]]
    vis = lambda items: [ValueInfo(v["name"], v["dtype"], list(v["shape"])) for v in items]  # noqa: E731
    weights = dense_weights(model)
    return Graph(g["name"], vis(g["inputs"]), vis(g["outputs"]), nodes, weights, g["opset"])


def unpack(source: str | os.PathLike, out_path: str | os.PathLike) -> Graph:
    """Write the dense ONNX equivalent of a packed file; return its graph. The output is checked before anything is
    decoded (writer.output_path: not the packed file itself, not a device or FIFO; a symlink's target is written)
    and written atomically."""
    from .onnx_io import save_onnx
    from .writer import output_path

    output_path(out_path, [source], "-o")
    graph = packed_to_graph(source)
    save_onnx(graph, out_path)
    return graph
