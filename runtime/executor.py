"""Runs a loaded model: shape inference for a set of input shapes, tensor lifetimes -> one arena (runtime/planner.py),
a view of the arena per tensor, one shared scratch buffer, and the step loop. Owns no math: ops come from the
registry (runtime/ops), weight-bearing layers from runtime/layers.py."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from runtime.errors import FormatError, UnsupportedError
from runtime.ops import registry
from runtime.planner import ArenaPlan, TensorLife, plan_arena

ACTIVATION_DTYPE = np.dtype(np.float32)


@dataclass
class Program:
    """The graph as the executor runs it. nodes: dicts (op, name, inputs, outputs, attrs as plain values);
    consts: dense arrays of the constants ops read (layer weights excluded); const_shapes: every constant's shape;
    layers: node name -> layers.Layer for Gemm / MatMul / Conv."""

    inputs: list[str]
    outputs: list[str]
    nodes: list[dict]
    consts: dict[str, np.ndarray]
    const_shapes: dict[str, tuple]
    layers: dict = field(default_factory=dict)


def infer_shapes(program: Program, input_shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Shape of every activation (graph inputs and node outputs) for these input shapes; errors name op and node."""
    shapes = {name: tuple(int(d) for d in input_shapes[name]) for name in program.inputs}
    for n in program.nodes:
        in_shapes = [None if not i else shapes[i] if i in shapes else program.const_shapes[i] for i in n["inputs"]]
        consts = [program.consts.get(i) if i else None for i in n["inputs"]]
        outs = registry.infer_node(n["op"], n["name"], in_shapes, n["attrs"], consts, len(n["outputs"]))
        for name, shape in zip(n["outputs"], outs):
            if any(d < 0 for d in shape):
                raise FormatError(f"op '{n['op']}' (node '{n['name']}'): inferred a negative dimension {shape}")
            shapes[name] = shape
    return shapes


def lifetimes(program: Program, shapes: dict[str, tuple]) -> list[TensorLife]:
    """Step 0 copies the graph inputs in, node i runs at step i + 1, graph outputs live to the final step."""
    final = len(program.nodes) + 1
    first = {name: 0 for name in program.inputs}
    last = dict(first)
    alias: dict[str, str] = {}
    for step, n in enumerate(program.nodes, start=1):
        for i in n["inputs"]:
            if i in first:
                last[i] = step
        for o in n["outputs"]:
            first[o] = last[o] = step
        src = n["inputs"][0] if n["inputs"] else ""
        if registry.get(n["op"], n["name"]).inplace_ok and src in first and n["name"] not in program.layers:
            alias[n["outputs"][0]] = src
    for o in program.outputs:
        if o in first:
            last[o] = final
    return [TensorLife(name, _nbytes(shapes[name]), first[name], last[name], alias.get(name)) for name in first]


def _nbytes(shape: tuple) -> int:
    n = ACTIVATION_DTYPE.itemsize
    for d in shape:
        n *= int(d)
    return n


@dataclass(eq=False)
class ExecPlan:
    """Everything one set of input shapes needs: shapes, the arena plan, scratch, and (once bound to buffers) the
    steps as (callable, args) with every argument an arena view or a constant."""

    input_shapes: dict[str, tuple]
    shapes: dict[str, tuple]
    arena: ArenaPlan
    lifetimes: list[TensorLife]
    scratch_bytes: int
    scratch_owner: str | None
    views: dict[str, np.ndarray] = field(default_factory=dict)
    steps: list = field(default_factory=list)
    bound_to: tuple | None = None


def make_plan(program: Program, input_shapes: dict[str, tuple]) -> ExecPlan:
    shapes = infer_shapes(program, input_shapes)
    lives = lifetimes(program, shapes)
    arena = plan_arena(lives)
    scratch, owner = 0, None
    for n in program.nodes:
        layer = program.layers.get(n["name"])
        if layer is None:
            continue
        in_shapes = [None if not i else shapes[i] if i in shapes else program.const_shapes[i] for i in n["inputs"]]
        need = layer.scratch_bytes(in_shapes)
        if need > scratch:
            scratch, owner = need, n["name"]
    return ExecPlan(dict(input_shapes), shapes, arena, lives, scratch, owner)


def bind(program: Program, plan: ExecPlan, arena_buf: np.ndarray, scratch_buf: np.ndarray) -> None:
    """Make the plan's tensor views over `arena_buf` and its step list (again only if the buffers changed)."""
    if plan.bound_to is not None and plan.bound_to[0] is arena_buf and plan.bound_to[1] is scratch_buf:
        return
    views = {}
    for t in plan.lifetimes:
        off = plan.arena.offsets[t.name]
        views[t.name] = arena_buf[off: off + t.nbytes].view(ACTIVATION_DTYPE).reshape(plan.shapes[t.name])
    scratch = scratch_buf[: plan.scratch_bytes]
    steps = []
    for n in program.nodes:
        ins = [views[i] if i in views else program.consts.get(i) if i else None for i in n["inputs"]]
        outs = [views[o] for o in n["outputs"]]
        layer = program.layers.get(n["name"])
        if layer is not None:
            steps.append((layer.run, (ins, outs, scratch)))
        else:
            steps.append((registry.get(n["op"], n["name"]).run, (ins, n["attrs"], outs)))
    plan.views, plan.steps, plan.bound_to = views, steps, (arena_buf, scratch_buf)


def execute(program: Program, plan: ExecPlan, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copy the (validated, float32) inputs into the arena, run every step, return copies of the outputs."""
    for name, value in feeds.items():
        np.copyto(plan.views[name], value)
    for fn, args in plan.steps:
        fn(*args)
    out = {}
    for name in program.outputs:
        src = plan.views.get(name)
        if src is None:
            src = program.consts.get(name)
            if src is None:
                raise UnsupportedError(f"graph output '{name}' is a constant this runtime does not hold")
        out[name] = np.array(src, copy=True)
    return out
