"""Measures how many activations are nonzero, per tensor, by running the unpacked model with onnxruntime with every
intermediate tensor exposed as an output. Used by `edgepack energy --data` for zero-activation skipping."""
from __future__ import annotations

import os

import numpy as np


def nonzero_fractions(packed_path: str | os.PathLike, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    from onnx import helper

    from .onnx_io import graph_to_onnx
    from .unpack import packed_to_graph
    from .verify import session

    graph = packed_to_graph(packed_path)
    model = graph_to_onnx(graph)
    known = {o.name for o in model.graph.output}
    for n in graph.nodes:
        for o in n.outputs:
            if o not in known:
                model.graph.output.append(helper.make_empty_tensor_value_info(o))
                known.add(o)
    names = [o.name for o in model.graph.output]
    values = session(model).run(names, feeds)
    out = {name: float(np.count_nonzero(v)) / v.size for name, v in zip(names, values) if v.size}
    out.update({k: float(np.count_nonzero(v)) / v.size for k, v in feeds.items() if v.size})
    return out
