"""Runs a loaded model: shape inference for a set of input shapes, activations fused into the Gemm / Conv before
them, tensor lifetimes -> one arena (runtime/planner.py), a view of the arena per tensor, one shared scratch buffer,
and the steps bound once per plan: each step a kernel with its arguments (arena views, constants, scratch views)
prepared when the plan is made, so that a run does no per-call checking. Owns no math: ops come from the registry
(runtime/ops), weight-bearing layers from edgepack.runtime/layers.py."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from edgepack.runtime import constants as C
from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.layers import fuse_conv_epilogues
from edgepack.runtime.ops import registry
from edgepack.runtime.ops.elementwise import FUSABLE_OPS, activation
from edgepack.runtime.ops.tensor import BLOCKS
from edgepack.runtime.planner import ArenaPlan, BlockView, TensorLife, plan_arena

ACTIVATION_DTYPE = np.dtype(np.float32)


@dataclass(frozen=True)
class Fusion:
    """An activation node run by the layer before it: the layer writes `output` (the activation's output) and the
    activation's input never exists."""

    node: str  # the activation node's name
    output: str
    act: tuple  # (ACT_*, p0, p1) of runtime/ops/elementwise.py


@dataclass
class Program:
    """The graph as the executor runs it. nodes: dicts (op, name, inputs, outputs, attrs as plain values);
    consts: dense arrays of the constants ops read (layer weights excluded); const_shapes: every constant's shape;
    layers: node name -> layers.Layer for Gemm / MatMul / Conv; fused: layer node name -> Fusion; absorbed: names
    of the activation nodes that fused layers run."""

    inputs: list[str]
    outputs: list[str]
    nodes: list[dict]
    consts: dict[str, np.ndarray]
    const_shapes: dict[str, tuple]
    layers: dict = field(default_factory=dict)
    fused: dict = field(default_factory=dict)
    absorbed: set = field(default_factory=set)

    def readers(self) -> dict[str, list[dict]]:
        """Tensor name -> the nodes that read it, in node order, as program.nodes stand now."""
        found: dict[str, list[dict]] = {}
        for n in self.nodes:
            for i in n["inputs"]:
                if i:
                    found.setdefault(i, []).append(n)
        return found


def _channel_constant(c, out_rank: int) -> bool:
    """Whether constant c, added to a Conv output of rank out_rank, is one value per output channel: its shape
    aligned right is (C, 1, ..., 1), dimensions before C 1."""
    if not isinstance(c, np.ndarray) or c.dtype != np.float32 or c.ndim > out_rank or c.ndim < out_rank - 1:
        return False
    lead = c.shape[: c.ndim - (out_rank - 1)]
    return all(d == 1 for d in lead) and all(d == 1 for d in c.shape[c.ndim - (out_rank - 2):])


def fold_bias_adds(program: Program, layer_names) -> None:
    """A Conv of `layer_names` whose output is read only by an Add of a constant with one value per output channel
    (an exporter's bias as its own node: paddle2onnx's squeeze-excitation convolutions) takes that constant into
    its bias (a new constant: the conv's bias + it, or it) and writes the Add's output; the Add leaves
    program.nodes (edited in place), which lets an activation after it fuse into the layer. The conv's epilogue adds
    the bias once after the sum: with no bias of its own the same IEEE sum as the Add's, else (s + b) + c becomes
    s + (b + c), within a rounding. Each step the Add took, and the activation's after it, is saved (ppocr_cls: 18
    Adds, 9 Relu, 9 HardSigmoid on 1x1 planes, ~1 us each)."""
    readers = program.readers()
    outputs = set(program.outputs)
    drop, unused = set(), set()
    for n in program.nodes:
        if (n["op"] != "Conv" or n["name"] not in layer_names or len(n["outputs"]) != 1 or len(n["inputs"]) < 2
                or n["outputs"][0] in outputs):
            continue
        users = readers.get(n["outputs"][0], [])
        w_shape = program.const_shapes.get(n["inputs"][1])
        if len(users) != 1 or users[0]["op"] != "Add" or w_shape is None or len(w_shape) < 3:
            continue
        a, t = users[0], n["outputs"][0]
        if len(a["inputs"]) != 2 or len(a["outputs"]) != 1 or (a["inputs"][0] == t) == (a["inputs"][1] == t):
            continue
        cname = a["inputs"][1] if a["inputs"][0] == t else a["inputs"][0]
        c = program.consts.get(cname)
        cout = int(w_shape[0])
        if not _channel_constant(c, len(w_shape)) or c.size != cout:
            continue
        old = n["inputs"][2] if len(n["inputs"]) > 2 and n["inputs"][2] else None
        if old is not None:
            b = program.consts.get(old)
            if not isinstance(b, np.ndarray) or b.dtype != np.float32 or b.size != cout:
                continue
            bias = (b.reshape(cout) + c.reshape(cout)).astype(np.float32)
        else:
            bias = np.ascontiguousarray(c.reshape(cout), dtype=np.float32)
        name = f"{n['name']}::bias+{a['name']}"
        while name in program.consts or name in program.const_shapes:
            name += "'"
        program.consts[name] = bias
        program.const_shapes[name] = (cout,)
        n["inputs"] = n["inputs"][:2] + [name]
        n["outputs"] = [a["outputs"][0]]
        drop.add(id(a))
        unused.update(k for k in (cname, old) if k)
    if not drop:
        return
    program.nodes[:] = [n for n in program.nodes if id(n) not in drop]
    read = {i for n in program.nodes for i in n["inputs"] if i} | outputs
    for name in unused - read:  # a folded Add's constant, a replaced bias: no longer held
        program.consts.pop(name, None)


def fuse_activations(program: Program, layer_names) -> None:
    """Let each of `layer_names` (nodes whose layer applies an activation in its kernels' epilogue) run the Relu,
    LeakyRelu or Clip after it when that node is the only reader of the layer's output and the output is not a
    graph output; first fold_bias_adds. Beyond that the graph (program.nodes) is unchanged; lifetimes() and bind()
    read program.fused."""
    fold_bias_adds(program, layer_names)
    readers = program.readers()
    outputs = set(program.outputs)
    for n in program.nodes:
        if n["name"] not in layer_names or len(n["outputs"]) != 1:
            continue
        t = n["outputs"][0]
        users = readers.get(t, [])
        if t in outputs or len(users) != 1:
            continue
        a = users[0]
        if a["op"] not in FUSABLE_OPS or len(a["outputs"]) != 1 or a["inputs"][0] != t or t in a["inputs"][1:]:
            continue
        act = activation(a["op"], a["attrs"], a["inputs"], program.consts)
        if act is not None:
            program.fused[n["name"]] = Fusion(a["name"], a["outputs"][0], act)
            program.absorbed.add(a["name"])
    fuse_conv_epilogues(program, layer_names, Fusion)  # a Conv also runs the elementwise chain after it


def _node_outputs(program: Program, n: dict) -> list[str]:
    """The tensors a node's step writes: a fused layer writes its activation's output."""
    f = program.fused.get(n["name"])
    return [f.output] if f is not None else n["outputs"]


def infer_shapes(program: Program, input_shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Shape of every activation (graph inputs and node outputs) for these input shapes; errors name op and node."""
    shapes = {name: tuple(int(d) for d in input_shapes[name]) for name in program.inputs}
    for name, shape in shapes.items():
        _check_elements(shape, f"input '{name}'")
    for n in program.nodes:
        in_shapes = [None if not i else shapes[i] if i in shapes else program.const_shapes[i] for i in n["inputs"]]
        consts = [program.consts.get(i) if i else None for i in n["inputs"]]
        outs = registry.infer_node(n["op"], n["name"], in_shapes, n["attrs"], consts, len(n["outputs"]))
        for name, shape in zip(n["outputs"], outs):
            if any(d < 0 for d in shape):
                raise FormatError(f"op '{n['op']}' (node '{n['name']}'): inferred a negative dimension {shape}")
            _check_elements(shape, f"op '{n['op']}' (node '{n['name']}'): output '{name}'")
            shapes[name] = shape
    return shapes


def _check_elements(shape: tuple, what: str) -> None:
    """Every tensor the runtime would hold is bounded (a Pad of 2^40, an input of 100000 x 100000): the format's cap
    on elements per tensor, checked as shapes are inferred, before any arena is sized or allocated."""
    n = span = 1
    for d in shape:
        n *= d
        span *= max(d, 1)
    if n > C.MAX_ELEMENTS:
        raise UnsupportedError(f"{what}: shape {list(shape)} has {n:,} elements, more than the {C.MAX_ELEMENTS:,} "
                               f"a tensor may hold in this runtime")
    if span > C.MAX_ELEMENTS:  # an empty tensor too: numpy refuses such a shape even with a 0 in it
        raise UnsupportedError(f"{what}: shape {list(shape)}: its nonzero dimensions multiply to {span:,}, more than "
                               f"the {C.MAX_ELEMENTS:,} elements a tensor may hold in this runtime")


def lifetimes(program: Program, shapes: dict[str, tuple]) -> list[TensorLife]:
    """Step 0 copies the graph inputs in, node i runs at step i + 1, graph outputs live to the final step. A fused
    layer's step makes its activation's output; the activation's step does nothing and the tensor between them
    does not exist."""
    final = len(program.nodes) + 1
    first = {name: 0 for name in program.inputs}
    last = dict(first)
    alias: dict[str, str] = {}
    for step, n in enumerate(program.nodes, start=1):
        if n["name"] in program.absorbed:
            continue
        for i in n["inputs"]:
            if i in first:
                last[i] = step
        for o in _node_outputs(program, n):
            first[o] = last[o] = step
        src = n["inputs"][0] if n["inputs"] else ""
        if registry.get(n["op"], n["name"]).inplace_ok and src in first and n["name"] not in program.layers:
            alias[n["outputs"][0]] = src
    for o in program.outputs:
        if o in first:
            last[o] = final
    return [TensorLife(name, _nbytes(shapes[name]), first[name], last[name], alias.get(name)) for name in first]


def block_views(program: Program, shapes: dict[str, tuple]) -> list[BlockView]:
    """The planner's view requests (planner.BlockView), in step order: each output of a Split or Slice that is one
    contiguous block of its input (every dimension before the axis is 1: runtime/ops/tensor.py BLOCKS), each input of
    such a Concat inside its output, and, before those, the input of a Split whose outputs are, in order, consecutive
    inputs of the Concat (YOLOv8's C2f: Split(x) -> a, b; Concat(a, b, ...)), so that x itself is written there.
    Graph inputs and outputs are never placed inside another tensor (outputs are read after the run); constants are
    not in the arena. The planner decides which requests hold (lifetimes, in-place writes)."""
    outside = set(program.inputs) | set(program.outputs)
    split_of: dict[str, tuple] = {}  # a Split's first output -> (all its outputs in order, its input)
    views = []
    for n in program.nodes:
        rule = BLOCKS.get(n["op"])
        if rule is None or n["name"] in program.absorbed or not all(n["inputs"][:1]) or not all(n["outputs"]):
            continue
        blocks, side = rule
        ins, outs = n["inputs"], n["outputs"]
        if side == "outputs" and ins[0] not in shapes or side == "inputs" and outs[0] not in shapes:
            continue
        in_shapes = [None if not i else shapes[i] if i in shapes else program.const_shapes[i] for i in ins]
        offsets = blocks(in_shapes, n["attrs"], [program.consts.get(i) if i else None for i in ins],
                         [shapes[o] for o in outs])
        if offsets is None:
            continue
        itemsize = ACTIVATION_DTYPE.itemsize
        if side == "outputs":
            for o, off in zip(outs, offsets):
                if o not in outside:
                    views.append(BlockView(o, ins[0], off * itemsize))
            if n["op"] == "Split":
                split_of[outs[0]] = (tuple(outs), ins[0])
            continue
        for j, i in enumerate(ins):
            run, x = split_of.get(i, ((), None))
            if run and tuple(ins[j: j + len(run)]) == run and x not in outside:
                views.append(BlockView(x, outs[0], offsets[j] * itemsize))
        for i, off in zip(ins, offsets):
            if i in shapes and i not in outside:
                views.append(BlockView(i, outs[0], off * itemsize))
    return views


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
    steps: list = field(default_factory=list)  # (fn, args): fn(*args) runs one step
    step_nodes: list = field(default_factory=list)  # (node name, op) of each step, for profiles and messages
    outputs: list = field(default_factory=list)  # (graph output name, the array to copy it from)
    bound_to: tuple | None = None


def make_plan(program: Program, input_shapes: dict[str, tuple], shapes: dict[str, tuple] | None = None,
              views: bool = True) -> ExecPlan:
    """The plan for these input shapes; `shapes`: infer_shapes' result for them when the caller has it already.
    views=False: no block views (every Concat, Split and Slice copies), for comparison (benchmarks/block_views.py)."""
    if shapes is None:
        shapes = infer_shapes(program, input_shapes)
    lives = lifetimes(program, shapes)
    arena = plan_arena(lives, views=block_views(program, shapes) if views else ())
    scratch, owner = 0, None
    for n in program.nodes:
        layer = program.layers.get(n["name"])
        # an op that declares scratch_bytes(input shapes, attrs) gets a view of the shared scratch in bind
        sized = None if layer is not None else registry.get(n["op"], n["name"]).scratch_bytes
        if layer is None and sized is None:
            continue
        in_shapes = [None if not i else shapes[i] if i in shapes else program.const_shapes[i] for i in n["inputs"]]
        need = layer.scratch_bytes(in_shapes) if layer is not None else sized(in_shapes, n["attrs"])
        if need > scratch:
            scratch, owner = need, n["name"]
    return ExecPlan(dict(input_shapes), shapes, arena, lives, scratch, owner)


def bind(program: Program, plan: ExecPlan, arena_buf: np.ndarray, scratch_buf: np.ndarray) -> None:
    """Make the plan's tensor views over `arena_buf` and its steps (again only if the buffers changed). Each step is
    what its layer's or op's `bind` (OpDef.bind) returns (a kernel and its arguments, checked here once); an op
    without `bind` (or whose bind declines) runs through its plain runner."""
    if plan.bound_to is not None and plan.bound_to[0] is arena_buf and plan.bound_to[1] is scratch_buf:
        return
    views = {}
    for t in plan.lifetimes:
        off = plan.arena.offsets[t.name]
        views[t.name] = arena_buf[off: off + t.nbytes].view(ACTIVATION_DTYPE).reshape(plan.shapes[t.name])
    scratch = scratch_buf[: plan.scratch_bytes]
    steps, step_nodes = [], []
    for n in program.nodes:
        if n["name"] in program.absorbed:
            continue
        f = program.fused.get(n["name"])
        ins = [views[i] if i in views else program.consts.get(i) if i else None for i in n["inputs"]]
        outs = [views[o] for o in _node_outputs(program, n)]
        layer = program.layers.get(n["name"])
        step_nodes.append((n["name"], n["op"] if f is None else f"{n['op']}+{f.node}"))
        if layer is not None:
            steps.append(layer.bind(ins, outs, scratch, f.act if f is not None else None))
            continue
        op = registry.get(n["op"], n["name"])
        step = None
        if op.bind is not None:
            step = (op.bind(ins, n["attrs"], outs, scratch) if op.scratch_bytes is not None
                    else op.bind(ins, n["attrs"], outs))
        if step is registry.NO_STEP:
            step_nodes.pop()
            continue
        steps.append(step if step is not None else (op.run, (ins, n["attrs"], outs)))
    outputs = []
    for name in program.outputs:
        src = views.get(name)
        if src is None:
            src = program.consts.get(name)
            if src is None:
                raise UnsupportedError(f"graph output '{name}' is a constant this runtime does not hold")
        outputs.append((name, src))
    plan.views, plan.steps, plan.outputs, plan.bound_to = views, steps, outputs, (arena_buf, scratch_buf)
    plan.step_nodes = step_nodes


@njit(cache=True)
def _copy_in_kernel(src, dst, check):
    """dst (flat float32) <- src (C-contiguous float32, any shape): a graph input into the arena. With check, returns
    the flat index of the first NaN or infinity, else -1. The test rides on the copy as a max over the exponent bits
    (all ones only for NaN and infinity): one pass that vectorises (784 values in ~50 ns)."""
    s = src.reshape(src.size)
    n = s.shape[0]
    if not check:
        for i in range(n):
            dst[i] = s[i]
        return -1
    u = s.view(np.uint32)
    d = dst.view(np.uint32)
    top = np.uint32(0)
    for i in range(n):
        v = u[i]
        d[i] = v
        top = max(top, v & np.uint32(0x7F800000))
    if top != np.uint32(0x7F800000):
        return -1
    for i in range(n):
        if u[i] & np.uint32(0x7F800000) == np.uint32(0x7F800000):
            return i
    return -1


def execute(program: Program, plan: ExecPlan, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copy the (validated, float32) inputs into the arena, run every step, return copies of the outputs.

    Float results follow IEEE (inf, NaN) without numpy warnings, as in onnxruntime: one errstate for the whole run
    (entering it per op cost ~1.5 us, more than many of the ops themselves)."""
    for name, value in feeds.items():
        np.copyto(plan.views[name], value)
    with np.errstate(all="ignore"):
        for fn, args in plan.steps:
            fn(*args)
    return {name: src.copy() for name, src in plan.outputs}


def profile(program: Program, plan: ExecPlan, feeds: dict[str, np.ndarray], repeat: int,
            clock=None) -> list[tuple]:
    """execute() `repeat` times with a clock around every step: [(node name, op, seconds per call: the median over
    the runs), ...] in run order. `clock`: a function returning seconds (default time.perf_counter, wall time; the
    model passes a CPU-time clock for clock="cpu"). A clock costs ~0.1-0.3 us a step, so very small ops read high."""
    from time import perf_counter

    clock = perf_counter if clock is None else clock
    times = np.zeros((repeat, len(plan.steps)))
    for r in range(repeat):
        for name, value in feeds.items():
            np.copyto(plan.views[name], value)
        with np.errstate(all="ignore"):
            t = clock()
            for i, (fn, args) in enumerate(plan.steps):
                fn(*args)
                now = clock()
                times[r, i] = now - t
                t = now
    med = np.median(times, axis=0)
    return [(name, op, float(s)) for (name, op), s in zip(plan.step_nodes, med)]
