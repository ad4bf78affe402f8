"""Static shapes and constant folding at pack time: `specialise` fixes the inputs' dimensions (`--input-shape`) and
`fold_constants` turns every node whose inputs are all constants (shape arithmetic above all) into an initializer,
so that the packed graph holds only compute ops. Shape inference and evaluation come from packer/onnx_io.py."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from runtime import constants as C
from runtime.errors import UnsupportedError

from .graph import Graph, Node, ValueInfo

# Never folded: their value is not a function of their inputs.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})
# Ops whose value is a function of the input's shape only: folded as soon as that shape is static.
SHAPE_OPS = frozenset({"Shape", "Size"})
# Folding can make more shapes known (a Reshape whose target was computed); a handful of rounds reaches the fixpoint.
MAX_ROUNDS = 8


def parse_input_shapes(spec: Mapping[str, Iterable[int]] | Iterable[str] | None) -> dict[str, list[int]]:
    """{name: dims} from a mapping, or from strings "NAME=D0,D1,..." as `--input-shape` takes them (repeatable)."""
    if spec is None:
        return {}
    out: dict[str, list[int]] = {}
    if isinstance(spec, Mapping):
        items = [(str(k), v, f"input_shapes['{k}']") for k, v in spec.items()]
    else:
        if isinstance(spec, str):
            spec = [spec]
        items = []
        for text in spec:
            name, eq, dims = str(text).strip().rpartition("=")
            if not eq or not name:
                raise ValueError(f"input shape '{text}': expected NAME=D0,D1,... (e.g. x=1,3,224,224)")
            try:
                values = [int(d) for d in dims.split(",")] if dims.strip() else []
            except ValueError:
                raise ValueError(f"input shape '{text}': dimensions must be integers separated by commas, "
                                 f"found '{dims}'") from None
            items.append((name, values, f"input shape '{text}'"))
    for name, dims, where in items:
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
            raise ValueError(f"{where}: expected a list of dimensions, found {dims!r}")
        dims = list(dims)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise ValueError(f"{where}: dimensions must be integers >= 1, found {dims}")
        if name in out:
            raise ValueError(f"{where}: input '{name}' is given twice")
        out[name] = [int(d) for d in dims]
    return out


def specialise(graph: Graph, input_shapes: Mapping[str, Iterable[int]] | Iterable[str]) -> Graph:
    """A copy of `graph` with the given inputs' shapes fixed and every constant computation folded. A dimension
    left dynamic is kept as it is unless a node needs it static (a Shape on it): then UnsupportedError names the
    input to give."""
    shapes = parse_input_shapes(input_shapes)
    g = _copy(graph)
    by_name = {v.name: v for v in g.inputs}
    for name, dims in shapes.items():
        v = by_name.get(name)
        if v is None:
            raise ValueError(f"input shape given for '{name}', which is not an input of the model; its inputs: "
                             f"{', '.join(x.name for x in g.inputs) or '(none)'}")
        if v.shape and len(v.shape) != len(dims):
            raise ValueError(f"input '{name}': shape {dims} has {len(dims)} dimensions; the model declares "
                             f"{len(v.shape)}: {_show(v.shape)}")
        for i, (have, want) in enumerate(zip(v.shape, dims)):
            if isinstance(have, int) and have != want:
                raise ValueError(f"input '{name}': dimension {i} = {want}, but the model fixes it to {have} "
                                 f"(declared shape {_show(v.shape)})")
        v.shape = list(dims)
    g = fold_constants(g, strict=True)
    _set_output_shapes(g)
    return g


def fold_constants(graph: Graph, strict: bool = False) -> Graph:
    """A copy of `graph` where every node whose inputs are all constants, and every Shape/Size of a tensor whose
    shape is static, is replaced by an initializer. Safe on any graph: only static facts are used. strict: a
    Shape/Size left on a tensor of unknown shape is an error naming the dynamic input behind it."""
    g = _copy(graph)
    values: dict[str, ValueInfo] = {}
    folded_any = False
    for _ in range(MAX_ROUNDS):
        if _needs_shapes(g):
            from .onnx_io import infer_value_shapes

            values = infer_value_shapes(g)
            _explicit_splits(g, values)
        changed = _fold_pass(g, values)
        folded_any |= changed
        if not changed:
            break
    if folded_any:
        from .onnx_io import normalise_linear

        normalise_linear(g)
    if strict:
        for n in g.nodes:
            if n.op in SHAPE_OPS and n.inputs and n.inputs[0] not in g.initializers \
                    and _shape_value(n, values) is None:
                raise _dynamic_error(g, n, values)
    return g


# ---- one folding pass ----

def _fold_pass(g: Graph, values: dict[str, ValueInfo]) -> bool:
    from .onnx_io import evaluate_node

    consts = g.initializers
    graph_outputs = {v.name for v in g.outputs}
    kept: list[Node] = []
    changed = False
    for n in g.nodes:
        # a graph output stays computed by a node: an output that is an initializer is not a model output in ONNX
        if any(o in graph_outputs for o in n.outputs) or n.op in NONDETERMINISTIC:
            kept.append(n)
            continue
        if n.op in SHAPE_OPS and n.inputs and n.inputs[0] and n.inputs[0] not in consts:
            value = _shape_value(n, values)
            if value is not None:
                consts[n.outputs[0]] = value
                changed = True
                continue
        if all(not i or i in consts for i in n.inputs):
            try:
                results = evaluate_node(n, [consts[i] if i else None for i in n.inputs], g.opset)
            except UnsupportedError:
                kept.append(n)  # left for the runtime, which names the op if it cannot run it either
                continue
            if any(r is not None and r.dtype.name not in C.DTYPES for r in results):
                kept.append(n)  # a value format v1 cannot store (strings, uint64)
                continue
            for o, r in zip(n.outputs, results):
                if o:
                    consts[o] = np.asarray(r, order="C")  # ascontiguousarray would make a 0-d value 1-d
            changed = True
            continue
        kept.append(n)
    g.nodes = kept
    return changed


def _shape_value(n: Node, values: dict[str, ValueInfo]) -> np.ndarray | None:
    """The value of Shape/Size when the dimensions it reads are static, else None."""
    v = values.get(n.inputs[0])
    if v is None or v.shape is None:
        return None
    dims = list(v.shape)
    if n.op == "Size":
        return np.array(math.prod(dims), np.int64) if all(isinstance(d, int) for d in dims) else None
    rank = len(dims)
    start, end = n.attr("start", 0), n.attr("end", rank)
    # opset 15 semantics: negative counts from the end, both clamped into [0, rank]
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    picked = dims[start:end]
    if not all(isinstance(d, int) for d in picked):
        return None
    return np.array(picked, np.int64)


def _needs_shapes(g: Graph) -> bool:
    return any((n.op in SHAPE_OPS and n.inputs and n.inputs[0] not in g.initializers) or _implicit_split(n, g)
               for n in g.nodes)


def _implicit_split(n: Node, g: Graph) -> bool:
    """A Split whose part sizes follow from its output count only: the runtime's shape inference does not see how
    many outputs a node has, so the packer writes the sizes out."""
    return (n.op == "Split" and not (len(n.inputs) > 1 and n.inputs[1]) and "split" not in n.attrs
            and "num_outputs" not in n.attrs and len(n.outputs) > 1)


def _explicit_splits(g: Graph, values: dict[str, ValueInfo]) -> None:
    for n in g.nodes:
        if not _implicit_split(n, g):
            continue
        v = values.get(n.inputs[0])
        if v is None or not v.shape:
            continue
        axis = n.attr("axis", 0)
        axis = axis + len(v.shape) if axis < 0 else axis
        dim = v.shape[axis] if 0 <= axis < len(v.shape) else None
        parts = len(n.outputs)
        if not isinstance(dim, int) or dim % parts:
            continue  # unknown or uneven: left as it is, ONNX itself would refuse an uneven split here
        sizes = [dim // parts] * parts
        if g.opset >= 13:
            name = f"{n.name}.split"
            while name in g.initializers:
                name += "_"
            g.initializers[name] = np.array(sizes, np.int64)
            n.inputs = [n.inputs[0], name]
        else:
            n.attrs["split"] = ("ints", sizes)


# ---- errors and helpers ----

def _dynamic_error(g: Graph, n: Node, values: dict[str, ValueInfo]) -> UnsupportedError:
    target = n.inputs[0]
    producers = g.producers()
    seen, stack, upstream = set(), [target], []
    inputs = {v.name: v for v in g.inputs}
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in inputs:
            upstream.append(inputs[name])
        p = producers.get(name)
        if p is not None:
            stack.extend(i for i in p.inputs if i)
    dynamic = [v for v in upstream if any(not isinstance(d, int) for d in v.shape)]
    what = f"node '{n.name}' ({n.op}) needs the static shape of '{target}'"
    if not dynamic:
        return UnsupportedError(f"{what}, which ONNX shape inference could not determine although every input "
                                f"it depends on is static")
    parts = []
    for v in sorted(dynamic, key=lambda v: v.name):
        free = [f"{i} ('{d}')" if d else str(i) for i, d in enumerate(v.shape) if not isinstance(d, int)]
        example = ",".join(str(d) if isinstance(d, int) else "1" for d in v.shape)
        parts.append(f"input '{v.name}' {_show(v.shape)} has dynamic dimension(s) {', '.join(free)}: "
                     f"give it with --input-shape {v.name}={example} (Python: input_shapes={{'{v.name}': "
                     f"[{example.replace(',', ', ')}]}})")
    return UnsupportedError(f"{what}; " + "; ".join(parts))


def _show(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else repr(d) for d in shape) + "]"


def _set_output_shapes(g: Graph) -> None:
    """Dynamic output dimensions that the fixed input shapes determine become numbers (the runtime plans with them)."""
    if not any(not isinstance(d, int) for v in g.outputs for d in v.shape):
        return
    from .onnx_io import infer_value_shapes

    values = infer_value_shapes(g)
    for v in g.outputs:
        got = values.get(v.name)
        if got is None or got.shape is None or len(got.shape) != len(v.shape):
            continue
        v.shape = [w if not isinstance(d, int) and isinstance(w, int) else d for d, w in zip(v.shape, got.shape)]


def _copy(graph: Graph) -> Graph:
    """Nodes, value infos and the initializer table copied; the arrays themselves shared (never written)."""
    vi = lambda v: ValueInfo(v.name, v.dtype, list(v.shape))  # noqa: E731
    nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in graph.nodes]
    return Graph(graph.name, [vi(v) for v in graph.inputs], [vi(v) for v in graph.outputs], nodes,
                 dict(graph.initializers), graph.opset, graph.source_params)
