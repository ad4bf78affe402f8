"""The post-training pipeline: ONNX -> IR -> per-tensor encodings -> file, then the file read back and checked
against the encoder's own reference bit for bit. `pack()` is the Python API behind `edgepack pack`."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np

from runtime import constants as C
from runtime.errors import FormatError, UnsupportedError
from runtime.summary import format_table, layer_table
from runtime.loader import read_packed
from runtime.tables import read_table_file

from . import __version__
from .encode import Encoded, LayerSettings, default_bits, dense, encode_weight
from .graph import Graph
from .writer import build_file, write_atomic

WEIGHT_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1, "ConvTranspose": 1}


@dataclass
class PackReport:
    path: str
    info: dict
    settings: dict
    references: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.info["total_bytes"]

    @property
    def ratio(self) -> float:
        return self.info["ratio"]

    def table(self) -> str:
        return format_table(self.info)


def load_config(path: str | os.PathLike | None) -> dict:
    """Per-layer settings: {"default": {...}, "layers": {tensor or node name: {...}}} as JSON or TOML."""
    if path is None:
        return {}
    cfg = read_table_file(path)
    if not isinstance(cfg, dict) or set(cfg) - {"default", "layers"}:
        raise ValueError(f"{path}: config must be an object with keys 'default' and/or 'layers'")
    return cfg


def weight_tensors(graph: Graph) -> dict[str, str]:
    """Tensor name -> (op, node name) of every constant float weight a Conv/Gemm/MatMul reads."""
    found = {}
    for n in graph.nodes:
        idx = WEIGHT_OPS.get(n.op)
        if idx is not None and len(n.inputs) > idx and n.inputs[idx] in graph.initializers:
            w = graph.initializers[n.inputs[idx]]
            if w.dtype == np.float32 and w.ndim >= 2:
                found.setdefault(n.inputs[idx], (n.op, n.name))
    return found


def settings_for(name: str, node: str, cfg: dict, overrides: dict) -> LayerSettings:
    d = dict(cfg.get("default", {}))
    layers = cfg.get("layers", {})
    d.update(layers.get(node, {}))
    d.update(layers.get(name, {}))
    d.update({k: v for k, v in overrides.items() if v is not None})
    return LayerSettings.from_dict(d, f"settings of '{name}'")


def encode_graph(graph: Graph, cfg: dict, overrides: dict, progress=None) -> tuple[dict, dict[str, Encoded]]:
    """Graph-section JSON (arrays inline) and every tensor's encoding."""
    weights = weight_tensors(graph)
    encoded: dict[str, Encoded] = {}
    items = list(graph.initializers.items())
    for name, value in (progress(items) if progress else items):
        if name in weights:
            op, node = weights[name]
            s = settings_for(name, node, cfg, overrides)
            encoded[name] = encode_weight(value, s, default_bits(op))
        elif value.dtype.name in C.DTYPES:
            encoded[name] = dense(value)
        else:
            raise FormatError(f"initializer '{name}': dtype {value.dtype} cannot be stored in format v1")
    tensors = [{"name": name, "dtype": graph.initializers[name].dtype.name,
                "shape": [int(d) for d in graph.initializers[name].shape], "encoding": e.encoding}
               for name, e in encoded.items()]
    for n in graph.nodes:
        for k, (kind, _) in n.attrs.items():
            if kind == "tensor":
                raise UnsupportedError(f"node '{n.name}' ({n.op}): attribute '{k}' holds a tensor, which format v1 "
                                       f"cannot store; give static input shapes (--input-shape) so that the node is "
                                       f"folded into a constant")
    nodes = [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": n.outputs,
              "attrs": {k: [kind, v] for k, (kind, v) in n.attrs.items()}} for n in graph.nodes]
    vi = lambda v: {"name": v.name, "dtype": v.dtype, "shape": list(v.shape)}  # noqa: E731
    doc = {"name": graph.name, "opset": graph.opset, "inputs": [vi(v) for v in graph.inputs],
           "outputs": [vi(v) for v in graph.outputs], "nodes": nodes, "tensors": tensors}
    return doc, encoded


def pack(model_path: str | os.PathLike, out_path: str | os.PathLike, *, sparsity: float | None = None,
         bits: int | None = None, config: str | os.PathLike | dict | None = None, quiet: bool = True,
         input_shapes: dict | list[str] | None = None, low_rank: float | dict | None = None,
         **overrides) -> PackReport:
    """Pack an ONNX model into an edgepack file; return the report (per-layer table, sizes, ratio).
    input_shapes ({name: dims} or ["NAME=D0,D1,..."]) fixes input shapes (packer/shapes.py); constants are folded
    either way. low_rank (energy, or {tensor: rank or energy}) factorises layers first (packer/lowrank.py)."""
    from .onnx_io import file_sha256, load_onnx
    from .shapes import fold_constants, parse_input_shapes, specialise

    graph = load_onnx(model_path)
    shapes = parse_input_shapes(input_shapes)
    graph = specialise(graph, shapes) if shapes else fold_constants(graph)
    factorised = None
    if low_rank is not None:
        from .lowrank import factorise

        graph, factorised = factorise(graph, low_rank)
    cfg = config if isinstance(config, dict) else load_config(config)
    over = {"sparsity": sparsity, "bits": bits, **overrides}
    progress = None if quiet else _progress
    doc, encoded = encode_graph(graph, cfg, over, progress)
    meta = {
        "producer": f"edgepack {__version__}",
        "format_version": f"{C.VERSION_MAJOR}.{C.VERSION_MINOR}",
        "source": {"file": os.path.basename(os.fspath(model_path)), "sha256": file_sha256(model_path),
                   "params": graph.source_params, "fp32_bytes": 4 * graph.source_params},
        "settings": {"cli": {k: v for k, v in over.items() if v is not None}, "config": cfg},
    }
    if shapes:
        meta["settings"]["input_shapes"] = shapes
    if factorised is not None:
        meta["settings"]["low_rank"] = factorised
    data = build_file(meta, doc)
    write_atomic(out_path, [data])
    packed = read_packed(out_path)
    references = {name: e.reference for name, e in encoded.items()}
    for name, w in packed.weights.items():
        got = np.asarray(w.to_dense())
        if got.shape != references[name].shape or not np.array_equal(got, references[name], equal_nan=True):
            raise RuntimeError(f"internal error: tensor '{name}' does not decode to what was encoded")
    info = layer_table(packed)
    return PackReport(os.fspath(out_path), info, meta["settings"], references)


def _progress(items):
    from tqdm import tqdm

    return tqdm(items, desc="packing", unit="tensor", file=sys.stderr, leave=False)
