"""Measures how many activations are nonzero, per tensor, by running the unpacked model with onnxruntime with every
intermediate tensor exposed as an output. Used by `edgepack energy --data` for zero-activation skipping."""
from __future__ import annotations

import os

import numpy as np


def nonzero_fractions(packed_path: str | os.PathLike,
                      feeds: dict[str, np.ndarray] | list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Per tensor, the fraction of nonzero values over the feeds (one dict, or a list of them, each one call of
    the packed graph's shapes: a model with a fixed batch is measured on several calls)."""
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
    sess = session(model)
    calls = [feeds] if isinstance(feeds, dict) else list(feeds)
    nonzero: dict[str, int] = {}
    size: dict[str, int] = {}
    for f in calls:
        values = sess.run(names, f)
        for name, v in [*zip(names, values), *f.items()]:
            nonzero[name] = nonzero.get(name, 0) + int(np.count_nonzero(v))
            size[name] = size.get(name, 0) + int(v.size)
    return {name: nonzero[name] / size[name] for name in nonzero if size[name]}
