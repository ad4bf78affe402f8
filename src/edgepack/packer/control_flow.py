"""Control flow at pack time. Format v1 stores straight-line graphs only, so a node with a body graph (If, Loop,
Scan) must be gone before a file is written:

- an `If` whose condition is a constant (after `--input-value` fixed the input it depends on and folding ran) is
  replaced by the branch it takes, inlined into the outer graph;
- anything left is refused by `refuse_control_flow`, naming the node and what would make it constant.

In the IR (packer/graph.py) a body is an attribute ("graph", Graph) that lives only between import and this pass.
The names a body reads from the outer graph are appended to the node's inputs, after its own ONNX inputs (their
count is the private attribute EXPLICIT), so that every pass that follows node inputs (consumers, unused-initializer
removal, folding) sees those reads; `rename_reads` renames inside bodies too."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgepack.runtime.errors import UnsupportedError

from .graph import Graph, Node, ValueInfo

EXPLICIT = "__explicit_inputs"  # private attribute: how many of node.inputs are the node's own ONNX inputs
LOOP_OPS = frozenset({"Loop", "Scan"})


def is_private(attr: str) -> bool:
    return attr.startswith("__")


def bodies(n: Node) -> list[tuple[str, Graph]]:
    return [(k, v) for k, (kind, v) in n.attrs.items() if kind == "graph"]


def has_body(n: Node) -> bool:
    return any(kind == "graph" for kind, _ in n.attrs.values())


def explicit_inputs(n: Node) -> list[str]:
    return n.inputs[: n.attrs[EXPLICIT][1]] if EXPLICIT in n.attrs else n.inputs


def defined_names(g: Graph) -> set[str]:
    return set(g.initializers) | {v.name for v in g.inputs} | {o for n in g.nodes for o in n.outputs if o}


def outer_reads(g: Graph) -> list[str]:
    """Names a body graph reads from enclosing scopes, in first-use order (nested bodies' reads are already among
    their nodes' inputs)."""
    inner = defined_names(g)
    seen: dict[str, None] = {}
    for n in g.nodes:
        for i in n.inputs:
            if i and i not in inner:
                seen.setdefault(i)
    for v in g.outputs:
        if v.name not in inner:
            seen.setdefault(v.name)
    return list(seen)


def attach_subgraphs(n: Node) -> None:
    """Append the outer names n's bodies read to n.inputs (once, at import)."""
    subs = bodies(n)
    if not subs:
        return
    reads: dict[str, None] = {}
    for _, body in subs:
        for name in outer_reads(body):
            reads.setdefault(name)
    n.attrs[EXPLICIT] = ("int", len(n.inputs))
    n.inputs = n.inputs + list(reads)


def rename_reads(nodes: list[Node], mapping: Mapping[str, str], outputs: list[ValueInfo] | None = None) -> None:
    """Rename every read of mapping's keys by `nodes` (and, in a body, its `outputs`), inside bodies too, except in
    a body that defines the name itself."""
    if not mapping:
        return
    for n in nodes:
        n.inputs = [mapping.get(i, i) for i in n.inputs]
        for _, body in bodies(n):
            inner = defined_names(body)
            sub = {k: v for k, v in mapping.items() if k not in inner}
            rename_reads(body.nodes, sub, body.outputs)
    if outputs is not None:
        for v in outputs:
            v.name = mapping.get(v.name, v.name)


def float_params(g: Graph) -> int:
    """Float parameters held in a body graph, nested bodies included."""
    own = sum(int(v.size) for v in g.initializers.values() if v.dtype.kind == "f")
    return own + sum(float_params(b) for n in g.nodes for _, b in bodies(n))


# ---- inlining --------------------------------------------------------------------------------------------------

def inline_constant_ifs(g: Graph) -> bool:
    """Replace every If whose condition is an initializer by the branch it takes. True when one was inlined (its
    branch may hold more Ifs, and folding may now make their conditions constant: the caller folds again)."""
    changed = False
    while True:
        n = next((m for m in g.nodes if m.op == "If" and m.inputs and m.inputs[0] in g.initializers), None)
        if n is None:
            return changed
        cond = np.asarray(g.initializers[n.inputs[0]])
        if cond.size != 1:
            raise UnsupportedError(f"node '{n.name}' (If): condition '{n.inputs[0]}' has shape {list(cond.shape)}; "
                                   f"ONNX requires a single element")
        take, drop = ("then_branch", "else_branch") if bool(cond.reshape(-1)[0]) else ("else_branch", "then_branch")
        if n.attrs.get(take, ("", None))[0] != "graph":
            raise UnsupportedError(f"node '{n.name}' (If): attribute '{take}' is missing")
        branch = copy_body(n.attrs[take][1])
        _forget_params(g, n, branch, n.attrs.get(drop, ("", None))[1])
        at = next(i for i, m in enumerate(g.nodes) if m is n)
        g.nodes[at:at + 1] = _inline(g, n, branch, _all_names(g, skip=n))
        changed = True


def copy_body(g: Graph) -> Graph:
    """A body graph copied down to its nodes, value infos and nested bodies (arrays shared, never written)."""
    vi = lambda v: ValueInfo(v.name, v.dtype, None if v.shape is None else list(v.shape))  # noqa: E731
    nodes = [Node(n.op, n.name, list(n.inputs), list(n.outputs),
                  {k: (kind, copy_body(v) if kind == "graph" else v) for k, (kind, v) in n.attrs.items()})
             for n in g.nodes]
    return Graph(g.name, [vi(v) for v in g.inputs], [vi(v) for v in g.outputs], nodes, dict(g.initializers),
                 g.opset, g.source_params)


def _inline(g: Graph, n: Node, branch: Graph, used: set[str]) -> list[Node]:
    """The branch's nodes with its own names made unique in g, its constants added to g's initializers, and an
    Identity per If output (removed afterwards by the importer's clean-up, onnx_io.tidy)."""
    if len(branch.outputs) != len(n.outputs):
        raise UnsupportedError(f"node '{n.name}' (If): the branch taken has {len(branch.outputs)} outputs, the node "
                               f"{len(n.outputs)}")
    mapping = {}
    for name in list(branch.initializers) + [o for m in branch.nodes for o in m.outputs if o]:
        mapping[name] = _fresh(f"{n.name}/{name}" if name in used else name, used)
    nodes = [Node(m.op, _fresh(f"{n.name}/{m.name}" if m.name in used else m.name, used), list(m.inputs),
                  [mapping.get(o, o) for o in m.outputs], dict(m.attrs)) for m in branch.nodes]
    rename_reads(nodes, mapping)
    for k, v in branch.initializers.items():
        g.initializers[mapping[k]] = v
    for i, (bo, io) in enumerate(zip(branch.outputs, n.outputs)):
        if io:
            nodes.append(Node("Identity", _fresh(f"{n.name}/output{i}", used), [mapping.get(bo.name, bo.name)], [io]))
    return nodes


def _forget_params(g: Graph, n: Node, taken: Graph, dropped: Graph | None) -> None:
    """The ratio's base counts the parameters of the model the file means: those only the discarded branch held
    (its own constants, and outer initializers nothing else reads) leave it."""
    if dropped is None:
        return
    gone = float_params(dropped)
    still = set(outer_reads(taken)) | {v.name for v in g.outputs}
    still |= {i for m in g.nodes if m is not n for i in m.inputs}
    for name in outer_reads(dropped):
        v = g.initializers.get(name)
        if v is not None and name not in still and v.dtype.kind == "f":
            gone += int(v.size)
    g.source_params = max(0, g.source_params - gone)


def _all_names(g: Graph, skip: Node | None = None) -> set[str]:
    """Every value and node name in g and its bodies (except the bodies of `skip`)."""
    names = {v.name for v in g.inputs} | {v.name for v in g.outputs} | set(g.initializers)
    for n in g.nodes:
        names.add(n.name)
        names.update(i for i in n.inputs if i)
        names.update(o for o in n.outputs if o)
        if n is not skip:
            for _, body in bodies(n):
                names |= _all_names(body)
    return names


def _fresh(name: str, used: set[str]) -> str:
    out, k = name, 1
    while out in used:
        out, k = f"{name}_{k}", k + 1
    used.add(out)
    return out


# ---- refusal ---------------------------------------------------------------------------------------------------

def refuse_control_flow(g: Graph, fixed_values: Mapping[str, object] | None = None) -> None:
    """UnsupportedError for the first node that still holds a body graph, naming it and what would remove it."""
    for n in g.nodes:
        if not has_body(n):
            continue
        if n.op in LOOP_OPS:
            raise UnsupportedError(f"node '{n.name}' ({n.op}): loops are not supported (format v1 stores graphs "
                                   f"without control flow); export the model with the loop unrolled")
        if n.op != "If":
            raise UnsupportedError(f"node '{n.name}' ({n.op}): ops with body graphs are not supported (format v1 "
                                   f"stores graphs without control flow)")
        raise UnsupportedError(_if_advice(g, n))


def _if_advice(g: Graph, n: Node) -> str:
    cond = n.inputs[0] if n.inputs else ""
    what = f"node '{n.name}' (If): format v1 has no control flow, so the branch must be known at pack time"
    values, shapes = upstream_inputs(g, cond)
    dynamic_shapes = [v for v in shapes if any(not isinstance(d, int) for d in v.shape)]
    if values:
        small = [v for v in values if _fixable(v)]
        data = [v for v in values if not _fixable(v)]
        if small:
            flags = " ".join(f"--input-value {v.name}=VALUE" for v in small)
            decl = ", ".join(f"'{v.name}' ({v.dtype}{_show(v.shape)})" for v in small)
            hint = _compared_with(g, cond)
            return (f"{what}; its condition '{cond}' depends on the value of input(s) {decl}{hint}: if it is fixed "
                    f"where the model is deployed, give it with {flags} (Python: input_values={{'{small[0].name}': "
                    f"VALUE}})")
        decl = ", ".join(f"'{v.name}' ({v.dtype}{_show(v.shape)})" for v in data)
        return (f"{what}; its condition '{cond}' is computed from the data of input(s) {decl}, so it is decided "
                f"anew on every run and cannot be specialised away")
    if dynamic_shapes:
        flags = " ".join(f"--input-shape {v.name}=" + ",".join(str(d) if isinstance(d, int) else "1"
                                                             for d in v.shape) for v in dynamic_shapes)
        return f"{what}; its condition '{cond}' depends on input dimensions left dynamic: give them with {flags}"
    return (f"{what}; its condition '{cond}' could not be evaluated at pack time although everything it depends on "
            f"is static")


def _fixable(v: ValueInfo) -> bool:
    """An input one can sensibly give a value for at pack time: a handful of elements, or a non-float setting."""
    static = all(isinstance(d, int) for d in v.shape)
    if static and int(np.prod(v.shape, dtype=np.int64)) <= 16:
        return True
    return not str(v.dtype).startswith("float")


def _compared_with(g: Graph, cond: str) -> str:
    """' (compared with 16000)' when the condition is an Equal/Greater/... of something and a small constant."""
    producers = g.producers()
    seen = set()
    name = cond
    while name in producers and name not in seen:
        seen.add(name)
        p = producers[name]
        if p.op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual") and len(p.inputs) == 2:
            consts = [g.initializers[i] for i in p.inputs if i in g.initializers]
            if len(consts) == 1 and consts[0].size <= 4:
                return f" (compared with {np.asarray(consts[0]).reshape(-1).tolist()})"
            return ""
        if p.op not in ("Cast", "Not", "Identity", "Squeeze", "Reshape", "Unsqueeze") or not p.inputs:
            return ""
        name = p.inputs[0]
    return ""


def upstream_inputs(g: Graph, name: str) -> tuple[list[ValueInfo], list[ValueInfo]]:
    """The graph inputs `name` depends on: (through their values, only through their shapes)."""
    producers = g.producers()
    inputs = {v.name: v for v in g.inputs}
    by_value: dict[str, ValueInfo] = {}
    by_shape: dict[str, ValueInfo] = {}
    seen: set[tuple[str, bool]] = set()
    stack = [(name, False)]
    while stack:
        item = stack.pop()
        if item in seen or not item[0]:
            continue
        seen.add(item)
        value, shape_only = item
        if value in inputs:
            (by_shape if shape_only else by_value)[value] = inputs[value]
        p = producers.get(value)
        if p is None:
            continue
        reads_shape = p.op in ("Shape", "Size")
        stack.extend((i, shape_only or (reads_shape and j == 0)) for j, i in enumerate(p.inputs))
    return list(by_value.values()), [v for k, v in by_shape.items() if k not in by_value]


def _show(shape) -> str:
    if shape is None:
        return "[?]"
    return "[" + ", ".join(str(d) if isinstance(d, int) else repr(d) for d in shape) + "]"
