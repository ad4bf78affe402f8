"""Static shapes and constant folding at pack time: `specialise` fixes the inputs' dimensions (`--input-shape`) and
`fold_constants` turns every node whose inputs are all constants (shape arithmetic above all) into an initializer,
so that the packed graph holds only compute ops. Shape inference and evaluation come from edgepack.packer/onnx_io.py."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from edgepack.runtime import constants as C
from edgepack.runtime.errors import InputError, UnsupportedError

from .graph import Graph, Node, ValueInfo

# Never folded: their value is not a function of their inputs.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                              "Multinomial", "Bernoulli"})
# Ops whose value is a function of the input's shape only: folded as soon as that shape is static.
SHAPE_OPS = frozenset({"Shape", "Size"})
# Folding can make more shapes known (a Reshape whose target was computed) and If conditions constant (each inlined
# branch may hold more Ifs); a handful of rounds reaches the fixpoint.
MAX_ROUNDS = 32


def parse_input_shapes(spec: Mapping[str, Iterable[int]] | Iterable[str] | None) -> dict[str, list[int]]:
    """{name: dims} from a mapping, or from strings "NAME=D0,D1,..." as `--input-shape` takes them (repeatable)."""
    if spec is None:
        return {}
    out: dict[str, list[int]] = {}
    if isinstance(spec, Mapping):
        items = [(str(k), v, f"input_shapes['{k}']") for k, v in spec.items()]
    else:
        if not isinstance(spec, (str, Iterable)):
            raise InputError(f"input_shapes: expected {{name: dims}} or a list of 'NAME=D0,D1,...', found {spec!r}")
        if isinstance(spec, str):
            spec = [spec]
        items = []
        for text in spec:
            name, eq, dims = str(text).strip().rpartition("=")
            if not eq or not name:
                raise InputError(f"input shape '{text}': expected NAME=D0,D1,... (e.g. x=1,3,224,224)")
            try:
                values = [int(d) for d in dims.split(",")] if dims.strip() else []
            except ValueError:
                raise InputError(f"input shape '{text}': dimensions must be integers separated by commas, "
                                 f"found '{dims}'") from None
            items.append((name, values, f"input shape '{text}'"))
    for name, dims, where in items:
        if isinstance(dims, (str, bytes)) or not isinstance(dims, Iterable):
            raise InputError(f"{where}: expected a list of dimensions, found {dims!r}")
        dims = list(dims)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise InputError(f"{where}: dimensions must be integers >= 1, found {dims}")
        if name in out:
            raise InputError(f"{where}: input '{name}' is given twice")
        out[name] = [int(d) for d in dims]
    return out


def parse_input_values(spec: Mapping[str, object] | Iterable[str] | None) -> dict[str, object]:
    """{name: value} from a mapping (numbers, lists, arrays), or from strings "NAME=V" / "NAME=V0,V1,..." as
    `--input-value` takes them (repeatable). Values are checked against the input's declaration by `specialise`."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): v for k, v in spec.items()}
    if not isinstance(spec, (str, Iterable)):
        raise InputError(f"input_values: expected {{name: value}} or a list of 'NAME=V', found {spec!r}")
    if isinstance(spec, str):
        spec = [spec]
    out: dict[str, object] = {}
    for text in spec:
        name, eq, vals = str(text).strip().partition("=")
        if not eq or not name or not vals.strip():
            raise InputError(f"input value '{text}': expected NAME=VALUE or NAME=V0,V1,... (e.g. sr=16000)")
        if name in out:
            raise InputError(f"input value '{text}': input '{name}' is given twice")
        parts = [p.strip() for p in vals.split(",")]
        out[name] = parts if len(parts) > 1 else parts[0]
    return out


def _input_constant(v: ValueInfo, value: object, where: str) -> np.ndarray:
    """`value` as an array of the input's declared dtype and shape; ValueError when it does not fit exactly."""
    dtype = np.dtype(v.dtype)
    raw = np.asarray(value)
    try:
        if raw.dtype.kind in "USO":  # from the command line: text
            words = [str(w).strip().lower() for w in raw.reshape(-1)]
            if dtype == np.bool_:
                table = {"true": True, "false": False, "1": True, "0": False}
                arr = np.array([table[w] for w in words], np.bool_)
            elif dtype.kind in "iu":
                arr = np.array([int(w) for w in words], dtype)
            else:
                arr = np.array([float(w) for w in words], dtype)
            arr = arr.reshape(raw.shape)
        else:
            arr = raw.astype(dtype)
            if not np.array_equal(arr.astype(raw.dtype), raw):
                raise ValueError
    except (ValueError, KeyError, OverflowError):
        raise InputError(f"{where}: {value!r} is not a value of the input's type {v.dtype}") from None
    shape = list(v.shape)
    if any(not isinstance(d, int) for d in shape):
        raise InputError(f"{where}: the model declares input '{v.name}' with dynamic shape {_show(shape)}; give its "
                         f"shape too (--input-shape {v.name}=...)")
    count = math.prod(shape)
    if arr.size != count:
        raise InputError(f"{where}: input '{v.name}' has shape {_show(shape)} ({count} element(s)); "
                         f"{arr.size} value(s) given")
    return np.asarray(arr.reshape(shape), order="C")


def input_constants(graph: Graph, input_values: Mapping[str, object] | Iterable[str] | None) -> dict[str, np.ndarray]:
    """{name: array} for `--input-value`s: each value as an array of the input's declared dtype and shape (shapes
    given with --input-shape must already be set on `graph`); ValueError naming what does not fit."""
    values = parse_input_values(input_values)
    by_name = {v.name: v for v in graph.inputs}
    out = {}
    for name, value in values.items():
        if name not in by_name:
            raise InputError(f"input value given for '{name}', which is not an input of the model; its inputs: "
                             f"{', '.join(x.name for x in graph.inputs) or '(none)'}")
        out[name] = _input_constant(by_name[name], value, f"input value for '{name}'")
    return out


def specialise(graph: Graph, input_shapes: Mapping[str, Iterable[int]] | Iterable[str] | None,
               input_values: Mapping[str, object] | Iterable[str] | None = None) -> Graph:
    """A copy of `graph` with the given inputs' shapes fixed, the inputs given values (`--input-value`) turned into
    constants of their declared dtype and shape, every constant computation folded and every If whose condition
    became constant inlined (packer/control_flow.py). A dimension left dynamic is kept as it is unless a node needs
    it static (a Shape on it): then UnsupportedError names the input to give."""
    shapes = parse_input_shapes(input_shapes)
    values = parse_input_values(input_values)
    g = _copy(graph)
    by_name = {v.name: v for v in g.inputs}
    for name, dims in shapes.items():
        v = by_name.get(name)
        if v is None:
            raise InputError(f"input shape given for '{name}', which is not an input of the model; its inputs: "
                             f"{', '.join(x.name for x in g.inputs) or '(none)'}")
        if v.shape and len(v.shape) != len(dims):
            raise InputError(f"input '{name}': shape {dims} has {len(dims)} dimensions; the model declares "
                             f"{len(v.shape)}: {_show(v.shape)}")
        for i, (have, want) in enumerate(zip(v.shape or (), dims)):
            if isinstance(have, int) and have != want:
                raise InputError(f"input '{name}': dimension {i} = {want}, but the model fixes it to {have} "
                                 f"(declared shape {_show(v.shape)})")
        v.shape = list(dims)
    g.initializers.update(input_constants(g, values))
    g.inputs = [v for v in g.inputs if v.name not in values]
    g = fold_constants(g, strict=True)
    _set_output_shapes(g)
    return g


def require_input_shapes(graph: Graph) -> None:
    """An input the ONNX file declares without a shape has an unknown rank (onnx_io: shape None): the packer cannot
    guess it (a scalar would refuse every real input), so the user gives it."""
    for v in graph.inputs:
        if v.shape is None:
            raise InputError(f"input '{v.name}' has no shape in the ONNX file (its rank is unknown); give it: "
                             f"--input-shape {v.name}=D0,D1,... (Python: input_shapes={{'{v.name}': [...]}})")


def fold_constants(graph: Graph, strict: bool = False) -> Graph:
    """A copy of `graph` where every node whose inputs are all constants, and every Shape/Size of a tensor whose
    shape is static, is replaced by an initializer. Safe on any graph: only static facts are used. strict: a
    Shape/Size left on a tensor of unknown shape is an error naming the dynamic input behind it."""
    from .control_flow import inline_constant_ifs

    require_input_shapes(graph)
    g = _copy(graph)
    values: dict[str, ValueInfo] = {}
    folded_any = inlined_any = False
    for _ in range(MAX_ROUNDS):
        if _needs_shapes(g):
            from .onnx_io import infer_value_shapes

            values = infer_value_shapes(g)
            _explicit_splits(g, values)
        changed = _fold_pass(g, values)
        inlined = inline_constant_ifs(g)
        folded_any |= changed
        inlined_any |= inlined
        if not changed and not inlined:
            break
    if inlined_any:
        from .onnx_io import tidy

        tidy(g)  # the Identity per inlined If output, and batch norms / biases the branches brought along
        if _needs_shapes(g):  # tidying can leave a Shape whose input is now a known tensor
            from .onnx_io import infer_value_shapes

            values = infer_value_shapes(g)
            _fold_pass(g, values)
    elif folded_any:
        from .onnx_io import normalise_linear

        normalise_linear(g)
    if strict:
        for n in g.nodes:
            if n.op in SHAPE_OPS and n.inputs and n.inputs[0] not in g.initializers \
                    and _shape_value(n, values) is None:
                raise _dynamic_error(g, n, values)
    _set_output_shapes(g, unknown_rank_only=True)
    return g


def check_storable(g: Graph) -> None:
    """UnsupportedError for the first node that format v1 cannot hold after folding: a body graph (If / Loop /
    Scan, packer/control_flow.py) or a tensor attribute (ConstantOfShape's value), saying why it is still there."""
    from .control_flow import refuse_control_flow, upstream_inputs
    from .onnx_io import evaluate_node

    refuse_control_flow(g)
    for n in g.nodes:
        kept = [k for k, (kind, _) in n.attrs.items() if kind == "tensor"]
        if not kept:
            continue
        what = (f"node '{n.name}' ({n.op}): attribute '{kept[0]}' holds a tensor, which format v1 cannot store, "
                f"and the node could not be folded into a constant")
        if all(not i or i in g.initializers for i in n.inputs):
            try:
                results = evaluate_node(n, [g.initializers[i] if i else None for i in n.inputs], g.opset)
            except UnsupportedError as e:
                raise UnsupportedError(f"{what}: its inputs are constant but evaluating it failed ({e})") from None
            kinds = sorted({r.dtype.name for r in results if r is not None and r.dtype.name not in C.DTYPES})
            raise UnsupportedError(f"{what}: its value is {', '.join(kinds) or 'of a type'}, which format v1 cannot "
                                   f"store either")
        values, shaped = [], []
        for i in n.inputs:
            if i and i not in g.initializers:
                v, s = upstream_inputs(g, i)
                values += [x for x in v if x not in values]
                shaped += [x for x in s if x not in shaped]
        dynamic = [v for v in shaped if any(not isinstance(d, int) for d in v.shape)]
        if dynamic and not values:
            flags = " ".join(f"--input-shape {v.name}=" + ",".join(str(d) if isinstance(d, int) else "1"
                                                                 for d in v.shape) for v in dynamic)
            raise UnsupportedError(f"{what}: it depends on input dimensions left dynamic; give them with {flags}")
        if values:
            decl = ", ".join(f"'{v.name}' {_show(v.shape)}" for v in values)
            raise UnsupportedError(f"{what}: it depends on the data of input(s) {decl}, known only at run time")
        raise UnsupportedError(f"{what}, although everything it depends on is static")


# ---- one folding pass ----

def _fold_pass(g: Graph, values: dict[str, ValueInfo]) -> bool:
    """One pass in node order. If / Loop / Scan are never evaluated: an If whose condition is constant is inlined
    by packer/control_flow.py instead."""
    from .control_flow import has_body
    from .onnx_io import evaluate_node

    consts = g.initializers
    graph_outputs = {v.name for v in g.outputs}
    kept: list[Node] = []
    changed = False
    for n in g.nodes:
        # a graph output stays computed by a node: an output that is an initializer is not a model output in ONNX
        if any(o in graph_outputs for o in n.outputs) or n.op in NONDETERMINISTIC or has_body(n):
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


def _set_output_shapes(g: Graph, unknown_rank_only: bool = False) -> None:
    """Dynamic output dimensions that the fixed input shapes determine become numbers (the runtime plans with them).
    An output the ONNX file declares without a shape (rank unknown: onnx_io reads it as None) gets the inferred
    shape, a dimension inference cannot tell named '<output>_dim<i>', so that the packed file and an unpacked model
    declare its true rank, not a scalar. unknown_rank_only: those outputs only."""
    pending = [v for v in g.outputs if v.shape is None
               or (not unknown_rank_only and any(not isinstance(d, int) for d in v.shape))]
    if not pending:
        return
    from .onnx_io import infer_value_shapes

    values = infer_value_shapes(g)
    for v in pending:
        got = values.get(v.name)
        if got is None or got.shape is None:
            continue
        if v.shape is None:
            v.shape = [f"{v.name}_dim{i}" if w is None else w for i, w in enumerate(got.shape)]
        elif len(got.shape) == len(v.shape):
            v.shape = [w if not isinstance(d, int) and isinstance(w, int) else d for d, w in zip(v.shape, got.shape)]


def _copy(graph: Graph) -> Graph:
    """Nodes, value infos and the initializer table copied; the arrays themselves shared (never written)."""
    from .control_flow import copy_body

    vi = lambda v: ValueInfo(v.name, v.dtype, None if v.shape is None else list(v.shape))  # noqa: E731
    nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs),
                  {k: (kind, copy_body(v) if kind == "graph" else v) for k, (kind, v) in n.attrs.items()})
             for n in graph.nodes]
    return Graph(graph.name, [vi(v) for v in graph.inputs], [vi(v) for v in graph.outputs], nodes,
                 dict(graph.initializers), graph.opset, graph.source_params)
