"""The only file that imports onnx: ONNX model <-> graph IR (packer/graph.py), with Constant nodes turned into
initializers, BatchNormalization folded into the preceding Conv/Gemm, Identity/Dropout removed, and constant
weights of Gemm/MatMul normalised to the (out, in) layout."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.normalization import check_batch_norm_mode
from edgepack.runtime.ops.registry import OPSET_KEY, refuse_opset

from .dequantize import dequantize_dynamic
from .graph import Graph, Node, ValueInfo

_ATTR_KIND = {
    onnx.AttributeProto.INT: "int",
    onnx.AttributeProto.FLOAT: "float",
    onnx.AttributeProto.STRING: "string",
    onnx.AttributeProto.INTS: "ints",
    onnx.AttributeProto.FLOATS: "floats",
    onnx.AttributeProto.STRINGS: "strings",
}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_onnx(path: str | os.PathLike) -> Graph:
    """Read an ONNX file into the IR, refusing external data that points outside the model's folder."""
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several types for garbage input
        raise FormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    base = path.resolve().parent
    for t in _all_tensors(model.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            target = (base / loc).resolve()
            if os.path.isabs(loc) or base not in target.parents:
                raise FormatError(f"{path}: tensor '{t.name}' has external data '{loc}' outside the model's folder")
    try:
        onnx.load_external_data_for_model(model, str(base))
    except Exception as e:
        raise FormatError(f"{path}: cannot load external data ({e})") from None
    return from_onnx(model, str(path))


def _all_tensors(g: onnx.GraphProto):
    yield from g.initializer
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.GRAPH:  # If / Loop / Scan bodies hold tensors too
                yield from _all_tensors(a.g)


def from_onnx(model: onnx.ModelProto, where: str = "<model>") -> Graph:
    model = dequantize_dynamic(model, where)  # onnxruntime-quantised MatMul/Conv/LSTM back to float
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise UnsupportedError(f"{where}: model has no default-domain opset import")
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes, sub_params = _convert_nodes(g.node, inits, where, opset)
    init_names = set(inits)
    inputs = [_value_info(v, unknown_rank=True) for v in g.input if v.name not in init_names]
    outputs = [_value_info(v, unknown_rank=True) for v in g.output]  # no shape: None, shapes.py infers it
    params = sum(int(v.size) for v in inits.values() if v.dtype.kind == "f") + sub_params
    graph = Graph(g.name or "model", inputs, outputs, nodes, inits, opset, params)
    _unique_node_names(graph)
    tidy(graph)
    return graph


def tidy(graph: Graph) -> None:
    """The importer's clean-up passes; run again after control flow has been inlined (packer/control_flow.py)."""
    _remove_passthrough(graph)
    _fold_batchnorm(graph)
    _normalise_linear(graph)
    _fuse_bias_add(graph)
    _drop_unused(graph)


def _convert_nodes(protos, inits: dict, where: str, opset: int) -> tuple[list[Node], int]:
    """NodeProtos -> IR nodes; Constant nodes become entries of `inits`. A GRAPH attribute (If / Loop / Scan) becomes
    ("graph", Graph) and the names its body reads from outside are appended to the node's inputs (see
    packer/control_flow.py). Also returns the float parameters held inside such bodies."""
    from .control_flow import attach_subgraphs

    nodes, sub_params = [], 0
    for i, n in enumerate(protos):
        name = n.name or f"{n.op_type}_{i}"
        if n.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"{where}: node '{name}' uses op '{n.op_type}' of domain '{n.domain}'")
        if n.op_type == "Constant":
            inits[n.output[0]] = _constant_value(n, name, where)
            continue
        attrs = {}
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                # e.g. ConstantOfShape's value: kept in the IR; folding usually removes the node, and the packer
                # refuses a graph that still holds one (the format has no tensor attributes)
                attrs[a.name] = ("tensor", numpy_helper.to_array(a.t))
                continue
            if a.type == onnx.AttributeProto.GRAPH:
                body, params = _subgraph(a.g, f"{where}: node '{name}' ({n.op_type}) attribute '{a.name}'", opset)
                attrs[a.name] = ("graph", body)
                sub_params += params
                continue
            if a.type not in _ATTR_KIND:
                raise UnsupportedError(f"{where}: node '{name}' ({n.op_type}): attribute '{a.name}' of type "
                                       f"{onnx.AttributeProto.AttributeType.Name(a.type)} is not supported")
            value = helper.get_attribute_value(a)
            if a.type == onnx.AttributeProto.STRING:
                value = value.decode("utf-8")
            elif a.type == onnx.AttributeProto.STRINGS:
                value = [v.decode("utf-8") for v in value]
            elif a.type == onnx.AttributeProto.FLOATS:
                value = [float(v) for v in value]
            elif a.type == onnx.AttributeProto.INTS:
                value = [int(v) for v in value]
            attrs[a.name] = (_ATTR_KIND[a.type], value)
        node = Node(n.op_type, name, list(n.input), list(n.output), attrs)
        attach_subgraphs(node)
        nodes.append(node)
    return nodes, sub_params


def _subgraph(g: onnx.GraphProto, where: str, opset: int) -> tuple[Graph, int]:
    """A body graph in the IR: its Constants as initializers, its value infos with dtype / shape None when the
    exporter left them out. Returns it with the float parameters it holds (nested bodies included)."""
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes, sub_params = _convert_nodes(g.node, inits, where, opset)
    params = sum(int(v.size) for v in inits.values() if v.dtype.kind == "f") + sub_params
    vis = lambda items: [_value_info(v, loose=True) for v in items]  # noqa: E731
    return Graph(g.name or "body", vis(g.input), vis(g.output), nodes, inits, opset, params), params


def _constant_value(n: onnx.NodeProto, name: str, where: str) -> np.ndarray:
    a = n.attribute[0] if len(n.attribute) == 1 else None
    if a is None:
        raise UnsupportedError(f"{where}: Constant node '{name}' must have exactly one attribute")
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    if a.name in ("value_float", "value_int"):
        return np.array(helper.get_attribute_value(a), dtype=np.float32 if a.name == "value_float" else np.int64)
    if a.name in ("value_floats", "value_ints"):
        return np.array(helper.get_attribute_value(a), dtype=np.float32 if a.name == "value_floats" else np.int64)
    raise UnsupportedError(f"{where}: Constant node '{name}': attribute '{a.name}' is not supported")


def _value_info(v: onnx.ValueInfoProto, loose: bool = False, unknown_rank: bool = False) -> ValueInfo:
    """loose (body graphs): a dtype or shape the exporter left out is None instead of float32 / rank 0.
    unknown_rank (graph inputs and outputs): no shape at all is shape None, an unknown rank, not a scalar: an input's
    --input-shape must give (shapes.require_input_shapes), an output's shape inference finds
    (shapes._set_output_shapes)."""
    t = v.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name if t.elem_type else \
        (None if loose else "float32")
    if (loose or unknown_rank) and not t.HasField("shape"):
        return ValueInfo(v.name, dtype, None)
    shape = []
    for i, d in enumerate(t.shape.dim):
        # a negative dim_value is how some exporters (paddle2onnx) write a dynamic dimension
        shape.append(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0
                     else (d.dim_param or f"{v.name}_dim{i}"))
    return ValueInfo(v.name, dtype, shape)


def _unique_node_names(graph: Graph) -> None:
    seen: set[str] = set()
    for i, n in enumerate(graph.nodes):
        if n.name in seen:
            n.name = f"{n.name}_{i}"
        seen.add(n.name)


def _rename_input(graph: Graph, old: str, new: str) -> None:
    from .control_flow import rename_reads

    rename_reads(graph.nodes, {old: new})


def _remove_passthrough(graph: Graph) -> None:
    """Identity, and Dropout at inference (its first output is its input), are removed; a Dropout in training mode
    is refused (_check_dropout_inference)."""
    outputs = {v.name for v in graph.outputs}
    kept = []
    for n in graph.nodes:
        if n.op == "Dropout":
            _check_dropout_inference(graph, n)
        if n.op in ("Identity", "Dropout") and n.inputs and n.inputs[0]:
            src, dst = n.inputs[0], n.outputs[0]
            if n.op == "Dropout" and len(n.outputs) > 1 and any(n.outputs[1] in m.inputs for m in graph.nodes):
                kept.append(n)  # the mask is used: keep the node for the runtime to reject clearly
                continue
            if dst in outputs:
                if src in outputs or any(src == v.name for v in graph.inputs) or src in graph.initializers:
                    # an output that is a copy of an input or constant: keep the copy, as an Identity
                    kept.append(n if n.op == "Identity" else Node("Identity", n.name, [src], [dst], {}))
                    continue
                # rename the producer's output instead, so that the graph output keeps its name
                for m in kept:
                    m.outputs = [dst if o == src else o for o in m.outputs]
                _rename_input(graph, src, dst)
                continue
            _rename_input(graph, dst, src)
            continue
        kept.append(n)
    graph.nodes = kept


def _check_dropout_inference(graph: Graph, n: Node) -> None:
    """Dropout is the identity only at inference. Before opset 7 its attribute 'is_test' says so (default 0:
    training); from opset 12 its optional input 'training_mode' (default false), which must then be a constant.
    Opsets 7 to 11 have no training switch (the runtime decides: inference here). A training-mode Dropout (random
    zeros, the rest scaled by 1 / (1 - ratio)) is refused with node and attribute named."""
    what = f"node '{n.name}' (Dropout)"
    if graph.opset < 7 and not n.attr("is_test", 0):
        raise UnsupportedError(f"{what}: " + str(refuse_opset(
            f"'is_test' = {n.attr('is_test', 0)} (the default is 0) drops random elements (training mode); set "
            f"is_test = 1 or export in eval mode at opset >= 7", graph.opset)))
    mode = n.inputs[2] if graph.opset >= 12 and len(n.inputs) > 2 else ""
    if not mode:
        return
    if mode not in graph.initializers:
        raise UnsupportedError(f"{what}: input 'training_mode' is '{mode}', computed when the model runs, so "
                               f"whether it drops random elements (training mode) is not known when packing; "
                               f"export in eval mode (training_mode omitted or a constant false)")
    value = np.asarray(graph.initializers[mode])
    if value.size != 1:
        raise FormatError(f"{what}: input 'training_mode' ('{mode}') must be a scalar, found shape "
                          f"{list(value.shape)}")
    if bool(value.reshape(-1)[0]):
        raise UnsupportedError(f"{what}: input 'training_mode' ('{mode}') is true: Dropout drops random elements "
                               f"(training mode); export in eval mode (training_mode omitted or false)")


def _fold_batchnorm(graph: Graph) -> None:
    """y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta folded into the Conv/Gemm weights and bias. Every
    BatchNormalization is first checked for inference semantics by the runtime's rule (check_batch_norm_mode:
    training_mode, is_test, spatial), so a folded one is refused exactly when a computed one would be."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    producers = graph.producers()
    removed = set()
    for bn in graph.nodes:
        if bn.op != "BatchNormalization":
            continue
        try:
            check_batch_norm_mode({**{k: v for k, (_, v) in bn.attrs.items()}, OPSET_KEY: graph.opset})
        except (FormatError, UnsupportedError) as e:
            raise type(e)(f"op 'BatchNormalization' (node '{bn.name}'): {e}") from None
        if len(bn.outputs) != 1:
            continue
        prev = producers.get(bn.inputs[0])
        if prev is None or prev.op not in ("Conv", "Gemm") or bn.inputs[0] in outputs:
            continue
        if len(consumers.get(bn.inputs[0], [])) != 1 or not all(i in graph.initializers for i in bn.inputs[1:5]):
            continue
        if prev.inputs[1] not in graph.initializers or (len(prev.inputs) > 2 and prev.inputs[2]
                                                        and prev.inputs[2] not in graph.initializers):
            continue
        if prev.op == "Gemm" and (prev.attr("transB", 0) != 1 or prev.attr("transA", 0) != 0):
            continue
        if len(consumers.get(prev.inputs[1], [])) != 1:
            continue  # a shared weight cannot be changed for one user
        gamma, beta, mean, var = (graph.initializers[i].astype(np.float64) for i in bn.inputs[1:5])
        eps = bn.attr("epsilon", 1e-5)
        w = graph.initializers[prev.inputs[1]].astype(np.float64)
        bias_name = prev.inputs[2] if len(prev.inputs) > 2 and prev.inputs[2] else None
        b = graph.initializers[bias_name].astype(np.float64) if bias_name else np.zeros(w.shape[0])
        scale = gamma / np.sqrt(var + eps)
        beta_g = prev.attr("beta", 1.0) if prev.op == "Gemm" else 1.0
        graph.initializers[prev.inputs[1]] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        new_bias = (beta_g * b - mean) * scale + beta
        if prev.op == "Gemm":
            new_bias = new_bias / beta_g if beta_g != 0 else new_bias
            if beta_g == 0:
                prev.attrs["beta"] = ("float", 1.0)
        new_name = bias_name if bias_name and len(consumers.get(bias_name, [])) == 1 else f"{prev.name}.folded_bias"
        graph.initializers[new_name] = new_bias.astype(np.float32)
        prev.inputs = prev.inputs[:2] + [new_name]
        prev.outputs = [bn.outputs[0]]
        removed.add(id(bn))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _normalise_linear(graph: Graph) -> None:
    """Constant Gemm weights become (out, in) with transB = 1; MatMul of a 2-D input by a constant 2-D weight
    becomes such a Gemm. Rows of every compressed matrix are then output channels."""
    consumers = graph.consumers()
    ranks = {v.name: len(v.shape) for v in graph.inputs if v.shape is not None}  # None: rank unknown
    for n in graph.nodes:
        if n.op == "Gemm" and n.inputs[1] in graph.initializers and n.attr("transB", 0) == 0:
            w = graph.initializers[n.inputs[1]]
            if w.ndim == 2 and len(consumers[n.inputs[1]]) == 1:
                graph.initializers[n.inputs[1]] = np.ascontiguousarray(w.T)
                n.attrs["transB"] = ("int", 1)
        elif (n.op == "MatMul" and n.inputs[1] in graph.initializers and graph.initializers[n.inputs[1]].ndim == 2
              and len(consumers[n.inputs[1]]) == 1 and _rank_is_two(graph, n.inputs[0], ranks)):
            w = graph.initializers[n.inputs[1]]
            graph.initializers[n.inputs[1]] = np.ascontiguousarray(w.T)
            n.op = "Gemm"
            n.attrs = {"transB": ("int", 1)}
        for o in n.outputs:
            ranks[o] = _out_rank(n, ranks, graph)


def _rank_is_two(graph: Graph, name: str, ranks: dict) -> bool:
    return ranks.get(name) == 2


def _out_rank(n: Node, ranks: dict, graph: Graph) -> int | None:
    """Just enough rank propagation to know when a MatMul input is a 2-D matrix."""
    if n.op in ("Gemm", "Flatten"):
        return 2
    if n.op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid", "HardSwish", "Softmax", "Dropout",
                "Identity", "BatchNormalization"):
        return ranks.get(n.inputs[0])
    if n.op == "MatMul":  # numpy matmul: a 1-D side loses its dimension, else the larger rank (batch broadcast)
        ra, rb = (ranks.get(i, graph.initializers[i].ndim if i in graph.initializers else None) for i in n.inputs[:2])
        if ra is None or rb is None or ra == 0 or rb == 0:
            return None
        return ra + rb - 2 if ra == 1 or rb == 1 else max(ra, rb)
    if n.op == "Reshape" and n.inputs[1] in graph.initializers:
        return int(graph.initializers[n.inputs[1]].size)
    return None


def _fuse_bias_add(graph: Graph) -> None:
    """Gemm without bias followed by Add of a constant vector of its width (how MatMul + Add exports a linear
    layer) becomes one Gemm with that bias: one kernel instead of two, and the bias stored as a bias."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    removed = set()
    for n in graph.nodes:
        if n.op != "Gemm" or len(n.inputs) > 2 and n.inputs[2] or n.outputs[0] in outputs:
            continue
        users = consumers.get(n.outputs[0], [])
        w = graph.initializers.get(n.inputs[1])
        if len(users) != 1 or users[0].op != "Add" or w is None or w.ndim != 2 or n.attr("transB", 0) != 1:
            continue
        add = users[0]
        other = add.inputs[1] if add.inputs[0] == n.outputs[0] else add.inputs[0]
        if graph.opset < 7 and (other == add.inputs[0] or "axis" in add.attrs or not add.attr("broadcast", 0)):
            continue  # Add-6 broadcasts only B, only with broadcast = 1, aligned at 'axis': left to the runtime
        b = graph.initializers.get(other)
        if b is None or b.dtype != np.float32 or b.size != w.shape[0] or b.ndim > 2 or (b.ndim == 2 and
                                                                                          b.shape[0] != 1):
            continue
        beta = n.attr("beta", 1.0)
        if beta == 0:
            n.attrs["beta"] = ("float", 1.0)
            beta = 1.0
        name = other if len(consumers.get(other, [])) == 1 and beta == 1.0 else f"{n.name}.bias"
        graph.initializers[name] = (b.reshape(-1) / np.float32(beta)).astype(np.float32)
        n.inputs = n.inputs[:2] + [name]
        n.outputs = [add.outputs[0]]
        removed.add(id(add))
    graph.nodes = [n for n in graph.nodes if id(n) not in removed]


def _drop_unused(graph: Graph) -> None:
    used = {i for n in graph.nodes for i in n.inputs} | {v.name for v in graph.outputs}
    graph.initializers = {k: v for k, v in graph.initializers.items() if k in used}


# --- export ------------------------------------------------------------------------------------------------------

def graph_to_onnx(graph: Graph, weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The IR (optionally with replaced weight values) as a dense ONNX model that onnxruntime runs."""
    values = dict(graph.initializers)
    if weights:
        values.update(weights)
    nodes = [_node_proto(n) for n in _legal_at_opset(graph.nodes, values, graph.opset)]
    inits = [numpy_helper.from_array(np.asarray(values[name]), name) for name in values]
    g = helper.make_graph(nodes, graph.name, [_make_vi(v) for v in graph.inputs],
                          [_make_vi(v) for v in graph.outputs], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.opset)], producer_name="edgepack")
    model.ir_version = min(model.ir_version, 10)
    return model


def _legal_at_opset(nodes: list[Node], values: dict[str, np.ndarray], opset: int) -> list[Node]:
    """The nodes as ONNX requires them at `opset`, where the IR is looser. A Gemm without C (a MatMul the importer
    made a Gemm, low-rank's first factor) is valid from opset 11 only: before, it gets a C of zeros (float32, one per
    output column, or one element when B is not a constant), added to `values`. Before opset 7, C broadcasts only
    with broadcast = 1 (for a C of the full output shape it changes nothing). Returns copies; the IR is unchanged."""
    if opset >= 11:
        return nodes
    taken = set(values) | {o for n in nodes for o in n.outputs}
    out = []
    for n in nodes:
        if n.op != "Gemm":
            out.append(n)
            continue
        n = Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs))
        if len(n.inputs) < 3 or not n.inputs[2]:
            b = values.get(n.inputs[1]) if len(n.inputs) > 1 else None
            cols = (b.shape[0] if n.attr("transB", 0) else b.shape[1]) if b is not None and b.ndim == 2 else 1
            name = f"{n.name}.zero_c"
            while name in taken:
                name += "_"
            taken.add(name)
            values[name] = np.zeros(cols, b.dtype if b is not None and b.dtype.kind == "f" else np.float32)
            n.inputs = n.inputs[:2] + [name]
        if opset < 7:
            n.attrs["broadcast"] = ("int", 1)
        out.append(n)
    return out


def _node_proto(n: Node) -> onnx.NodeProto:
    from .control_flow import explicit_inputs, is_private

    attrs = {k: _attr_for_onnx(kind, v) for k, (kind, v) in n.attrs.items() if not is_private(k)}
    return helper.make_node(n.op, explicit_inputs(n), n.outputs, name=n.name, **attrs)


def _attr_for_onnx(kind: str, value):
    """An IR attribute value as helper.make_node takes it: tensors and body graphs become protos."""
    if kind == "tensor":
        return numpy_helper.from_array(np.asarray(value))
    if kind == "graph":
        values = dict(value.initializers)
        nodes = [_node_proto(m) for m in _legal_at_opset(value.nodes, values, value.opset)]
        inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in values.items()]
        return helper.make_graph(nodes, value.name,
                                 [_make_vi(v) for v in value.inputs], [_make_vi(v) for v in value.outputs], inits)
    return value


def _make_vi(v: ValueInfo) -> onnx.ValueInfoProto:
    if v.dtype is None:  # a body graph's value the exporter left untyped
        return helper.make_value_info(v.name, onnx.TypeProto())
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype))
    return helper.make_tensor_value_info(v.name, elem, None if v.shape is None else list(v.shape))


def save_onnx(graph: Graph, path: str | os.PathLike, weights: dict[str, np.ndarray] | None = None) -> None:
    model = graph_to_onnx(graph, weights)
    data = model.SerializeToString()
    from .writer import write_atomic
    write_atomic(path, [data])


# --- constant evaluation and shape inference (packer/shapes.py) ----------------------------------------------------

def evaluate_node(node: Node, inputs: list[np.ndarray | None], opset: int) -> list[np.ndarray | None]:
    """The outputs of one node on constant inputs (None: an omitted optional input), computed by onnx's reference
    evaluator on a one-node model; None for an omitted output. Raises UnsupportedError when it cannot."""
    from onnx.reference import ReferenceEvaluator

    names = ["" if a is None else f"in{i}" for i, a in enumerate(inputs)]
    feeds = {nm: np.asarray(a) for nm, a in zip(names, inputs) if nm}
    outs = [f"out{i}" if o else "" for i, o in enumerate(node.outputs)]
    attrs = {k: _attr_for_onnx(kind, v) for k, (kind, v) in node.attrs.items()}
    untyped = lambda nm: helper.make_value_info(nm, onnx.TypeProto())  # noqa: E731
    try:
        proto = helper.make_node(node.op, names, outs, name=node.name, **attrs)
        g = helper.make_graph([proto], "fold", [untyped(nm) for nm in names if nm], [untyped(o) for o in outs if o])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # the reference evaluator raises many types (NotImplementedError, TypeError, ...)
        raise UnsupportedError(f"node '{node.name}' ({node.op}): cannot be evaluated on its constant inputs "
                               f"({type(e).__name__}: {e})") from None
    it = iter(results)
    return [np.asarray(next(it)) if o else None for o in outs]


def infer_value_shapes(graph: Graph, inline_limit: int = 1024) -> dict[str, ValueInfo]:
    """(dtype, shape) of every value ONNX shape inference (with data propagation) can tell, initializers included;
    a dimension it cannot tell is a str or None. Initializers larger than `inline_limit` elements are declared as
    typed inputs instead of copied into the model: their values never matter to a shape, small integer ones may."""
    big = {k for k, v in graph.initializers.items() if v.size > inline_limit and v.dtype.name in _NP_TO_ONNX_OK}
    inits = {k: v for k, v in graph.initializers.items() if k not in big}
    declared = [ValueInfo(k, graph.initializers[k].dtype.name, [int(d) for d in graph.initializers[k].shape])
                for k in big]
    light = Graph(graph.name, list(graph.inputs) + declared, graph.outputs, graph.nodes, inits, graph.opset)
    model = graph_to_onnx(light)
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # an inconsistent model: fall back to what is declared, the caller reports what is missing
        pass
    found = {}
    g = model.graph
    for v in list(g.input) + list(g.value_info) + list(g.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            t = v.type.tensor_type
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name if t.elem_type else None
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
            found[v.name] = ValueInfo(v.name, dtype, shape)
    for k, v in graph.initializers.items():
        found[k] = ValueInfo(k, v.dtype.name, [int(d) for d in v.shape])
    return found


_NP_TO_ONNX_OK = {"float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32",
                  "uint64", "bool"}


def normalise_linear(graph: Graph) -> None:
    """The importer's weight normalisation (constant Gemm/MatMul weights stored (out, in)) run again, for weights
    that constant folding has just made constant; then initializers nothing reads are dropped."""
    _normalise_linear(graph)
    _drop_unused(graph)
