"""The public model object. `load` validates the whole model before anything runs (file, supported ops, attributes,
shapes for the declared inputs), fuses activations into the layers before them, chooses how each layer holds its
weight within the memory budget and plans memory; `Model.run` checks its inputs and runs the plan's bound steps
(runtime/executor.py). Everything here is numpy + numba: no onnx, no packer."""
from __future__ import annotations

import gc
import math
import os
import threading
import weakref
from dataclasses import replace

import numpy as np
from numba import get_num_threads
from numba.core.dispatcher import Dispatcher

from edgepack.runtime import executor, layers, memory
from edgepack.runtime.errors import BudgetError, InputError, UnsupportedError
from edgepack.runtime.constants import SHAPE_ARITHMETIC
from edgepack.runtime.loader import attrs_plain, file_root, keep_needed_bytes, read_packed
from edgepack.runtime.ops import recurrent as recurrent_ops
from edgepack.runtime.ops import registry
from edgepack.runtime.threads import ThreadLimit, check_threads
from edgepack.runtime.weights import CodebookWeight

# Weight input index of the ops that become layers.
WEIGHT_INPUT = {"Gemm": 1, "MatMul": 1, "Conv": 1}
# Input weights of recurrent ops that stay dense codes when the file holds them so (runtime/ops/recurrent.py runs
# their input projection on the codes, a quarter of float32's bytes at 8 bits); the other constants they read, R
# included (read at every step, where a codebook lookup per weight would cost more than its bytes), are expanded.
HELD_CODES_INPUT = {"LSTM": 1, "GRU": 1}
# Inputs cast to float32 by Model.run (documented there); any other dtype is refused.
CAST_DTYPES = (np.dtype(np.float64), np.dtype(np.float16))
_F32 = np.dtype(np.float32)
MAX_CACHED_PLANS = 8


def _register_ops() -> None:
    registry.register_all()
    for op in layers.OPS:
        registry.register(op)


def supported_ops() -> list[str]:
    _register_ops()
    return registry.supported_ops()


def static_shapes_hint(inputs) -> str:
    """The `--input-shape` flags that would make these (name, shape) inputs static, a symbolic or unknown dimension
    shown as <name>; "" when every dimension is a number already."""
    return " ".join(f"--input-shape {name}=" + ",".join(str(d) if isinstance(d, int) else f"<{d}>" for d in shape)
                    for name, shape in inputs if any(not isinstance(d, int) for d in shape))


def load(source: str | os.PathLike | bytes | bytearray | memoryview, memory_budget: int | str | None = None,
         parallel: bool = False, *, batch: int = 1, layer_modes: str | dict | None = None,
         threads: int | None = None) -> "Model":
    """Read, validate and prepare a packed model.

    memory_budget: bytes (int, or text such as "256KiB") for weights as held + constants + arena + scratch at
        `batch` (see runtime/memory.py for what counts); per layer the weight is held compact, csr, dense or
        streamed (runtime/layers.py), whichever fits in the least estimated time; without a budget, the fastest
        by the cost model at `batch`. The modes chosen serve every batch size run later: a layer is not re-laid
        per shape (a dense copy for large batches would multiply the weight's RAM 8-30x; the compact kernels
        have a batched path of their own). BudgetError states the smallest budget that would fit.
    parallel: use the Numba-parallel kernels of runtime/ops (streamed layers stay serial); default single-threaded
        Numba kernels, bit-identical run to run.
    threads: the most threads a run (and the load) uses, numpy's BLAS included (dense float32 layers and batched
        decode call it): BLAS is held to it during each run and restored after (runtime/threads.py), and parallel
        kernels run on min(threads, NUMBA_NUM_THREADS) Numba threads. Default: 1; with parallel=True, Numba's
        current thread count (all cores unless set otherwise).
    batch: the value every dynamic first dimension of an input takes for validation and for the plan (other
        dynamic dimensions take 1); `run` accepts other values and plans for them on first use.
    layer_modes: force how weights are held: one mode for every layer that has it ("compact", "csr", "dense",
        "streamed"; layers without it keep their choice), or {node name: mode} (an unavailable mode is an error).
    """
    if threads is None:
        threads = int(get_num_threads()) if parallel else 1
    limit = ThreadLimit(check_threads(threads), parallel)
    with limit:
        model = _load(source, memory_budget, parallel, batch, layer_modes, limit)
    model._own_needed_bytes()
    return model


def _load(source, memory_budget, parallel: bool, batch: int, layer_modes, limit: ThreadLimit) -> "Model":
    _register_ops()
    budget = None if memory_budget is None else memory.parse_size(memory_budget)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be an int >= 1, found {batch!r}")
    packed = read_packed(source)
    g = packed.graph
    where = packed.source
    nodes = [{"op": n["op"], "name": n["name"], "inputs": list(n["inputs"]), "outputs": list(n["outputs"]),
              "attrs": {**attrs_plain(n["attrs"]), registry.OPSET_KEY: g["opset"]}} for n in g["nodes"]]
    weights = packed.weights
    decls = []
    for vi in g["inputs"]:
        if vi["dtype"] != "float32":
            raise UnsupportedError(f"{where}: graph input '{vi['name']}' is {vi['dtype']}; this runtime computes in "
                                   f"float32 only")
        decls.append((vi["name"], tuple(vi["shape"])))
    const_shapes = {name: tuple(w.shape) for name, w in weights.items()}
    for n in nodes:  # before anything is decoded or planned: an unsupported op is the first thing to know
        try:
            registry.get(n["op"], n["name"])
        except UnsupportedError as e:
            hint = static_shapes_hint(decls)
            if n["op"] in SHAPE_ARITHMETIC and hint:
                raise UnsupportedError(f"{where}: {str(e).split(';')[0]}: it computes with the input dimensions, "
                                       f"which this file leaves dynamic; pack the model again with static shapes: "
                                       f"edgepack pack ... {hint} (numbers for the <...>)") from None
            raise

    # Constants that become layer weights stay weight objects; every other constant read by a node is dense.
    layer_weight: dict[str, str] = {}  # node name -> weight tensor name
    for n in nodes:
        idx = WEIGHT_INPUT.get(n["op"])
        if idx is not None and len(n["inputs"]) > idx and n["inputs"][idx] in weights:
            w = weights[n["inputs"][idx]]
            # the layers' kernels take rows = shape[0] (row_dims 1); another matrix view runs from a dense copy
            if (n["op"] != "MatMul" or len(w.shape) == 2) and getattr(w, "row_dims", 1) == 1:
                layer_weight[n["name"]] = n["inputs"][idx]
    needed = set()
    code_reads: dict[str, bool] = {}  # constant -> whether every read of it is a HELD_CODES_INPUT slot
    for n in nodes:
        skip = WEIGHT_INPUT[n["op"]] if n["name"] in layer_weight else -1
        needed.update(i for j, i in enumerate(n["inputs"]) if i in weights and j != skip)
        for j, i in enumerate(n["inputs"]):
            if i in weights and j != skip:
                code_reads[i] = code_reads.get(i, True) and HELD_CODES_INPUT.get(n["op"]) == j
    needed.update(o["name"] for o in g["outputs"] if o["name"] in weights)
    held_codes = {name for name in needed if code_reads.get(name) and isinstance(weights[name], CodebookWeight)
                  and name not in {o["name"] for o in g["outputs"]}}
    # Compressed constants read as dense: their sizes come from the file (a few bytes may declare 2^31 elements),
    # so they are checked against the budget and the machine before anything is expanded.
    tensors = {t["name"]: t for t in g["tensors"]}
    expanded = {name: _expanded_bytes(tensors[name]) for name in needed - held_codes}
    for name, nbytes in sorted(expanded.items(), key=lambda kv: -kv[1])[:1]:
        memory.check_allocation(nbytes, f"{where}: tensor '{name}' ({tensors[name]['encoding']['type']}, shape "
                                        f"{list(tensors[name]['shape'])}) decoded to dense", budget)
    memory.check_allocation(sum(expanded.values()), f"{where}: the {len(expanded)} constants decoded to dense",
                            budget)
    # (reshaped: ascontiguousarray makes a 0-d scalar constant 1-d, which a scalar op's 0-d output cannot hold)
    consts = {name: weights[name] if name in held_codes else
              np.ascontiguousarray(weights[name].to_dense()).reshape(weights[name].shape) for name in sorted(needed)}

    program = executor.Program([name for name, _ in decls], [o["name"] for o in g["outputs"]], nodes, consts,
                               const_shapes)
    # every node in layer_weight becomes a LinearLayer or ConvLayer below, which apply an activation in their
    # kernels' epilogue: decided before any plan so that the arena never holds the tensor in between
    executor.fuse_activations(program, set(layer_weight))
    for o in g["outputs"]:
        if o["name"] not in consts and o["dtype"] != "float32":
            raise UnsupportedError(f"{where}: graph output '{o['name']}' is {o['dtype']}; this runtime computes in "
                                   f"float32 only")
    input_shapes = declared_shapes(decls, batch)
    shapes = executor.infer_shapes(program, input_shapes)
    _expand_unpaid_codes(program, nodes, held_codes, shapes, tensors, budget, where)

    # Options per layer, then the fit, then the layers in their chosen modes.
    specs = []
    for n in nodes:
        if n["op"] not in WEIGHT_INPUT:
            continue
        if n["name"] not in layer_weight:
            program.layers[n["name"]] = layers.DynamicLayer(n, parallel)
            continue
        wname = layer_weight[n["name"]]
        bias_name = n["inputs"][2] if len(n["inputs"]) > 2 and n["inputs"][2] in consts else None
        in_shapes = [None if not i else shapes[i] if i in shapes else const_shapes[i] for i in n["inputs"]]
        spec = layers.LayerSpec(n, wname, weights[wname], tensors[wname]["encoding"],
                                consts.get(bias_name) if bias_name else None, in_shapes, shapes[n["outputs"][0]],
                                packed.container.data, parallel)
        spec.make_options()
        _drop_unallocatable(spec, where)
        specs.append(spec)
    _apply_forced_modes(specs, layer_modes, where)

    base_plan = executor.make_plan(program, input_shapes, shapes)  # dynamic layers only: their scratch is fixed
    layer_biases = {id(s.bias) for s in specs if s.bias is not None}
    c_ram, c_mapped = layers.split_bytes([a for v in consts.values() if id(v) not in layer_biases
                                          for a in _const_arrays(v)], packed.container.data)
    fixed = c_ram + c_mapped * memory.COUNT_MAPPED + base_plan.arena.arena_bytes
    result = memory.fit([(s.name, s.options) for s in specs], fixed, base_plan.scratch_bytes, budget,
                        f"model {where} at batch {batch}")
    for spec, opt in zip(specs, result.choice):
        program.layers[spec.name] = spec.build(opt.mode, opt.form)
    model = Model(program, decls, packed, budget, parallel, (c_ram, c_mapped), specs, result, limit)
    model._known_shapes[tuple(input_shapes[name] for name, _ in decls)] = shapes  # inferred once per load
    model.plan = model.plan_for(input_shapes)
    return model


def _expand_unpaid_codes(program, nodes, held_codes: set, shapes: dict, tensors: dict, budget, where: str) -> None:
    """Held codes (HELD_CODES_INPUT) whose projection does not pay at the plan's rows (recurrent.py
    codes_projection_pays: a tile of lanes mostly empty, e.g. silero_vad's one step) are expanded to float32 now,
    checked against the budget like every other expanded constant."""
    slow = {n["inputs"][HELD_CODES_INPUT[n["op"]]] for n in nodes if n["op"] in HELD_CODES_INPUT
            and n["inputs"][HELD_CODES_INPUT[n["op"]]] in held_codes
            and not recurrent_ops.codes_projection_pays(math.prod(shapes[n["inputs"][0]][:2]))}
    for name in sorted(slow):
        w = program.consts[name]
        memory.check_allocation(_expanded_bytes(tensors[name]), f"{where}: tensor '{name}' (codebook, shape "
                                f"{list(w.shape)}) decoded to dense", budget)
        program.consts[name] = np.ascontiguousarray(w.to_dense()).reshape(w.shape)


def _const_arrays(v) -> list:
    """The arrays a constant holds: itself, or a held CodebookWeight's codes, codebook and row scales."""
    if isinstance(v, CodebookWeight):
        return [v.codes, v.codebook, v.row_scales]
    return [v]


def _expanded_bytes(tensor: dict) -> int:
    """Bytes a tensor of the graph section takes decoded to dense (0 when it is stored dense and used as stored)."""
    if tensor["encoding"]["type"] == "dense":
        return 0
    n = 4
    for d in tensor["shape"]:
        n *= int(d)
    return n


def _drop_unallocatable(spec, where: str) -> None:
    """A layer's ways of holding its weight that need more RAM than this machine has are not offered (a crafted file
    may declare a weight whose dense form is 8 GiB); BudgetError when none is left."""
    limit = memory.memory_limit()
    kept = [o for o in spec.options if o.ram_bytes <= limit]
    if not kept:
        smallest = min(spec.options, key=lambda o: o.ram_bytes)
        memory.check_allocation(smallest.ram_bytes,
                                f"{where}: layer '{spec.name}' (weight '{spec.weight_name}') held {smallest.mode}")
    spec.options = kept


def declared_shapes(decls, batch: int) -> dict[str, tuple]:
    """{input name: shape} for declared inputs [(name, dims)]: a named (dynamic) dimension becomes `batch` when it is
    the first, else 1; the shapes a model is planned for when no input has been seen."""
    out = {}
    for name, shape in decls:
        out[name] = tuple(d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(shape))
    return out


def _apply_forced_modes(specs, layer_modes, where: str) -> None:
    if layer_modes is None:
        return
    if not isinstance(layer_modes, (str, dict)) or isinstance(layer_modes, dict) and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in layer_modes.items()):
        raise InputError(f"{where}: layer_modes must be a mode ({', '.join(layers.MODES)}) or a dict of layer name "
                         f"-> mode, found {layer_modes!r}"[:400])
    if isinstance(layer_modes, str):
        if layer_modes not in layers.MODES:
            raise InputError(f"layer_modes '{layer_modes}' is not one of {layers.MODES}")
        for s in specs:
            kept = [o for o in s.options if o.mode == layer_modes]
            if kept:
                s.options = kept
        return
    by_name = {s.name: s for s in specs}
    for name, mode in layer_modes.items():
        if name not in by_name:
            raise InputError(f"{where}: layer_modes names '{name}', which is not a weight-bearing layer "
                             f"(layers: {', '.join(by_name) or 'none'})")
        kept = [o for o in by_name[name].options if o.mode == mode]
        if not kept:
            have = ", ".join(o.mode for o in by_name[name].options)
            raise UnsupportedError(f"{where}: layer '{name}' cannot be held '{mode}' (its weight allows: {have})")
        by_name[name].options = kept


try:  # numpy >= 2: the errstate context variable, set directly by Model.run's fast path (~0.3 us)
    from numpy._core._multiarray_umath import _extobj_contextvar as _FP_STATE, _make_extobj

    _FP_IGNORE = _make_extobj(all="ignore")
except (ImportError, TypeError):  # numpy 1.x: np.seterr's global state, saved and restored the same way
    class _GlobalFpState:
        @staticmethod
        def set(value):
            return np.seterr(**value)

        @staticmethod
        def reset(token):
            np.seterr(**token)

    _FP_STATE, _FP_IGNORE = _GlobalFpState, {"all": "ignore"}


def _direct_steps(steps: list) -> list:
    """The steps with every Numba kernel replaced by its compiled entry point for exactly the step's arguments, which
    skips the dispatcher's type resolution (~0.3 us a call: a tenth of a LeNet-300-100 run over its three layers).
    The arguments are bound once per plan, so their types never change. A kernel not yet compiled for them, or
    arguments Numba cannot type, keep the dispatcher."""
    out = []
    for fn, args in steps:
        if isinstance(fn, Dispatcher):
            try:
                cres = fn.overloads.get(tuple(fn.typeof_pyval(a) for a in args))
            except (TypeError, ValueError):  # not typable: the dispatcher says so when called
                cres = None
            if cres is not None:
                fn = cres.entry_point
        out.append((fn, args))
    return out


class Model:
    """A loaded packed model. `run(x)` -> {output name: array}; `plan` is the memory plan at the load shapes,
    `plan_for(shapes)` at others. One arena and one scratch buffer serve every cached plan; they grow to the
    largest shape run so far (within the budget, when there is one) and are kept.

    Threads: `run` and `plan_for` may be called from several threads at once. They take turns on the model's one
    lock (runs of one model are serialised: the arena and scratch are the memory the budget was checked against, so
    they are not multiplied per thread); taking the lock uncontended costs about 0.3 us per run (a LeNet-300-100 run
    takes ~30 us). For runs in parallel, load one Model per thread, or load with threads=N for parallel kernels
    inside each run.
    Files: the model owns a copy of the file's bytes from `load` on (runtime/reader.py open_bytes), and of them keeps
    only the parts its runs read (_own_needed_bytes); the file may be overwritten, truncated or deleted afterwards
    without effect on runs."""

    def __init__(self, program, decls, packed, budget, parallel, consts_bytes, specs, fit, limit=None):
        self._program = program
        self._limit = limit if limit is not None else ThreadLimit(1, parallel)
        self.inputs = [(name, shape) for name, shape in decls]  # (name, declared shape; str = dynamic dim)
        self.outputs = list(program.outputs)
        self.source = packed.source
        self.budget = budget
        self.parallel = parallel
        self._container = packed.container  # its `data`: the file's bytes that the weights' views read
        self._whole_file = None
        self._file_bytes = packed.file_size  # of the file's bytes, what the model holds (see _own_needed_bytes)
        self._consts_bytes = consts_bytes
        self._options = {s.name: (s.node["op"], s.weight_name, s.encoding["type"], tuple(s.options)) for s in specs}
        self._nodes = {n["name"]: n for n in program.nodes}
        self.minimum_budget = fit.minimum  # smallest total any choice of modes reaches, at the load shapes
        self._plans: dict[tuple, executor.ExecPlan] = {}
        self._known_shapes: dict[tuple, dict] = {}  # input shapes -> every tensor's shape, inferred by load
        # Model.run's fast path (single-input models): input shape -> (the input's flat arena view, steps, outputs)
        # of a plan bound to the current arena; rebuilt when a plan is (re)bound, emptied when the buffers change.
        self._fast: dict[tuple, tuple] = {}
        self._fast_name = decls[0][0] if len(decls) == 1 else None
        self._arena = np.empty(0, dtype=np.uint8)
        self._scratch = np.empty(0, dtype=np.uint8)
        self._lock = threading.Lock()  # arena, scratch, plans and their bound steps: one run at a time
        self.plan: memory.MemoryPlan | None = None

    def _own_needed_bytes(self) -> None:
        """Keep of the file's bytes (read once by load) only what runs read: those parts are copied into one buffer
        (which becomes the container's `data`: the "mapped" bytes of the plan are views into it) and the arrays that
        viewed them point at it (runtime/loader.py keep_needed_bytes); the whole file is then released. If anything
        still holds the whole file (an array the walk did not reach), it is kept as well: every array sees the same
        bytes either way. `bytes` passed to load are the caller's and stay as they are."""
        root = file_root(self._container.data)
        if root is None:
            return
        whole = weakref.ref(root)
        # what runs read: the layers, the constants, and each plan's bound steps and outputs (not its shapes and
        # lifetimes: at the node cap, walking those would cost seconds)
        plans = list(self._plans.values())
        holders = [self._program.layers, self._program.consts, [p.steps for p in plans], [p.outputs for p in plans],
                   self._fast]
        compact = keep_needed_bytes(root, holders)
        self._container = replace(self._container, data=compact)
        del root
        if whole() is not None:
            gc.collect()
        kept = whole()
        self._file_bytes = compact.nbytes + (kept.nbytes if kept is not None else 0)
        self._whole_file = kept  # None unless something the walk did not reach still views it
        if self.plan is not None:
            self.plan = replace(self.plan, file_bytes=self._file_bytes)

    @property
    def layers(self) -> dict:
        """Node name -> the built layer (mode, arrays) of every Gemm / MatMul / Conv."""
        return dict(self._program.layers)

    @property
    def threads(self) -> int:
        """The most threads a run uses (Numba's parallel kernels and numpy's BLAS): the `threads` of load."""
        return self._limit.threads

    # ---- plans ----
    def _exec_plan(self, input_shapes: dict[str, tuple]) -> executor.ExecPlan:
        key = tuple(input_shapes[name] for name, _ in self.inputs)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = executor.make_plan(self._program, input_shapes, self._known_shapes.pop(key, None))
            except (UnsupportedError, ValueError) as e:
                raise InputError(f"{self.source}: the model cannot run on input shapes "
                                 f"{ {k: tuple(v) for k, v in input_shapes.items()} }: {e}") from e
            if self.budget is not None:
                mp = self._memory_plan(plan)
                if mp.total_bytes > self.budget:
                    raise BudgetError(
                        f"{self.source}: input shapes {dict(input_shapes)} need {mp.total_bytes:,} B "
                        f"({memory.kib(mp.total_bytes)}: arena {mp.arena_bytes:,} B, scratch {mp.scratch_bytes:,} B) "
                        f"> memory budget {self.budget:,} B; run smaller batches or load with a larger budget")
            if len(self._plans) >= MAX_CACHED_PLANS:
                old = self._plans.pop(next(iter(self._plans)))
                self._fast.pop(tuple(old.input_shapes.get(self._fast_name, ())), None)
            self._plans[key] = plan
        if self._arena.nbytes < plan.arena.arena_bytes or self._scratch.nbytes < plan.scratch_bytes:
            need = max(self._arena.nbytes, plan.arena.arena_bytes) + max(self._scratch.nbytes, plan.scratch_bytes)
            if need > memory.physical_bytes():
                raise BudgetError(f"{self.source}: input shapes {dict(input_shapes)} need {need:,} B of arena and "
                                  f"scratch ({need / 2**30:,.1f} GiB), more than this machine's memory "
                                  f"({memory.physical_bytes() / 2**30:,.1f} GiB); run smaller batches")
        if self._arena.nbytes < plan.arena.arena_bytes:
            self._arena = memory.allocate(plan.arena.arena_bytes, f"{self.source}: the activation arena")
            self._fast.clear()
        if self._scratch.nbytes < plan.scratch_bytes:
            self._scratch = memory.allocate(plan.scratch_bytes, f"{self.source}: the scratch buffer")
            self._fast.clear()
        executor.bind(self._program, plan, self._arena, self._scratch)
        if self._fast_name is not None:
            # a serial plan whose every step is a Numba kernel calls no BLAS and starts no threads: its fast runs
            # skip the thread limit's enter / exit (~1 us, a tenth of a LeNet-300-100 run)
            limited = self._limit.numba is not None or not all(isinstance(fn, Dispatcher) for fn, _ in plan.steps)
            self._fast[key[0]] = (plan.views[self._fast_name].reshape(-1), plan.steps, plan.outputs, limited, False)
        return plan

    def _memory_plan(self, plan: executor.ExecPlan) -> memory.MemoryPlan:
        rows = []
        for name, layer in self._program.layers.items():
            if name not in self._options:
                continue
            op, wname, encoding, options = self._options[name]
            opt = next(o for o in options if o.mode == layer.mode and o.form == layer.form)
            node = self._nodes[name]
            in_shapes = [None if not i else plan.shapes[i] if i in plan.shapes else self._program.const_shapes[i]
                         for i in node["inputs"]]
            rows.append(memory.LayerMemory(name, op, wname, encoding, layer.mode, opt.ram_bytes, opt.mapped_bytes,
                                           layer.scratch_bytes(in_shapes), opt.seconds, opt.note, options))
        return memory.MemoryPlan(tuple(rows), self._consts_bytes[0], self._consts_bytes[1], plan.arena.arena_bytes,
                                 plan.arena.peak_live_bytes, len(plan.lifetimes), plan.scratch_bytes,
                                 plan.scratch_owner, self.budget, dict(plan.input_shapes), self._file_bytes,
                                 len(plan.arena.views))

    def plan_for(self, input_shapes: dict | tuple | list) -> memory.MemoryPlan:
        """The memory plan for these input shapes ({name: shape}, or one shape for a single-input model)."""
        if not isinstance(input_shapes, dict):
            if len(self.inputs) != 1:
                raise InputError(f"this model has {len(self.inputs)} inputs: give their shapes as a dict")
            input_shapes = {self.inputs[0][0]: tuple(input_shapes)}
        shapes = {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
        self._check_shapes(shapes)
        with self._lock:
            return self._memory_plan(self._exec_plan(shapes))

    # ---- run ----
    def run(self, inputs, *, check_finite: bool = True) -> dict[str, np.ndarray]:
        """Run the model; returns {output name: a new float32 array}.

        inputs: one array (single-input models) or {input name: array}, every input given, no others.
        dtype: float32 is used as is; float64 and float16 are converted to float32 (float64 rounds to nearest, as
            numpy's astype does; a value beyond float32's range becomes inf and is then refused as non-finite);
            any other dtype is an InputError.
        shape: the declared rank; fixed dimensions exactly; a dynamic dimension any value >= 1, the same value
            wherever its name appears (a new shape is planned, checked against the budget and cached).
        NaN / infinity: refused (InputError naming the input and the first bad element) unless check_finite is
            False, in which case they propagate by IEEE rules. The check is one pass over the input.
        threads: at most the model's `threads` (see load), numpy's BLAS included, for the duration of the call.
        Safe to call from several threads at once: calls on one Model run one at a time (see the class docstring).
        """
        with self._lock:
            return self._run(inputs, check_finite)

    def _run(self, inputs, check_finite: bool) -> dict[str, np.ndarray]:
        """A run under the lock; the thread limit held around it (on the fast path only for plans that need it)."""
        fast = self._fast
        if fast:
            # The common call: one float32 C-contiguous array of a shape already planned. Every check of the path
            # below still holds: the shape was validated when it was planned, the dtype and layout are exact here,
            # and the copy into the arena tests finiteness in the same pass.
            a = inputs
            if type(a) is dict:
                a = a.get(self._fast_name) if len(a) == 1 else None
            if type(a) is np.ndarray and a.dtype is _F32:
                bound = fast.get(a.shape)
                if bound is not None and a.flags.c_contiguous:
                    dst, steps, outputs, limited, direct = bound
                    if executor._copy_in_kernel(a, dst, True if check_finite else False) < 0:
                        # IEEE results without warnings, as in executor.execute (the errstate variable set
                        # directly: np.errstate() would cost ~3 us per run)
                        prev = self._limit.enter() if limited else None
                        token = _FP_STATE.set(_FP_IGNORE)
                        try:
                            for fn, args in steps:
                                fn(*args)
                        finally:
                            _FP_STATE.reset(token)
                            if limited:
                                self._limit.exit(prev)
                        if not direct:  # the kernels are compiled now: later runs call them directly
                            fast[a.shape] = (dst, _direct_steps(steps), outputs, limited, True)
                        return {name: src.copy() for name, src in outputs}
                    # a NaN or an infinity: the checks below name it
        limit = self._limit
        prev = limit.enter()
        try:
            feeds = self._check_inputs(inputs, check_finite)
            plan = self._exec_plan({k: v.shape for k, v in feeds.items()})
            return executor.execute(self._program, plan, feeds)
        finally:
            limit.exit(prev)

    def profile(self, inputs, *, repeat: int = 10, clock: str = "wall") -> list[tuple]:
        """Time every step of a run: [(node name, op, seconds: the median of `repeat` runs), ...] in run order. A
        layer that runs the activation or elementwise chain after it is one step, its op written "Conv+name". The
        inputs are checked as in run(); the threads are the model's, as in run(). clock="wall" (elapsed time) or
        "cpu": the CPU time of the calling thread at threads=1 (every kernel and the BLAS it is held to run there),
        of the whole process above; on a machine shared with other work the CPU time is what the step costs, the wall
        time also what it waited."""
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise InputError(f"profile: repeat must be a whole number >= 1, got {repeat!r}")
        if clock not in ("wall", "cpu"):
            raise InputError(f"profile: clock must be 'wall' or 'cpu', got {clock!r}")
        import time

        timer = time.perf_counter if clock == "wall" else time.thread_time if self.threads == 1 else time.process_time
        limit = self._limit
        with self._lock:
            prev = limit.enter()
            try:
                feeds = self._check_inputs(inputs, True)
                plan = self._exec_plan({k: v.shape for k, v in feeds.items()})
                executor.execute(self._program, plan, feeds)  # the first run compiles or loads the kernels
                return executor.profile(self._program, plan, feeds, repeat, timer)
            finally:
                limit.exit(prev)

    def _check_inputs(self, inputs, check_finite: bool) -> dict[str, np.ndarray]:
        names = [name for name, _ in self.inputs]
        if not isinstance(inputs, dict):
            if len(names) != 1:
                raise InputError(f"this model has {len(names)} inputs ({', '.join(names)}): pass a dict name -> array")
            inputs = {names[0]: inputs}
        missing = [n for n in names if n not in inputs]
        extra = [n for n in inputs if n not in names]
        if missing or extra:
            raise InputError(f"inputs: expected exactly {names}; missing {missing}, unknown {extra}")
        feeds = {}
        for name in names:
            a = inputs[name]
            if not isinstance(a, np.ndarray):
                raise InputError(f"input '{name}': expected a numpy array, found {type(a).__name__}")
            if a.dtype != np.float32:
                if a.dtype not in CAST_DTYPES:
                    raise InputError(f"input '{name}': dtype {a.dtype} is not accepted (expected float32; float64 "
                                     f"and float16 are converted)")
                with np.errstate(over="ignore"):  # out of float32 range -> inf, refused below unless allowed
                    a = a.astype(np.float32)
            feeds[name] = a
        self._check_shapes({k: v.shape for k, v in feeds.items()})
        if check_finite:
            for name, a in feeds.items():
                if a.size and not np.isfinite(a).all():
                    i = int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])
                    idx = tuple(int(j) for j in np.unravel_index(i, a.shape))
                    raise InputError(f"input '{name}': element {idx} is {a.reshape(-1)[i]} (inputs must be finite; "
                                     f"pass check_finite=False to let NaN and infinity propagate)")
        return feeds

    def _check_shapes(self, shapes: dict[str, tuple]) -> None:
        dims: dict[str, int] = {}
        for name, decl in self.inputs:
            if name not in shapes:
                raise InputError(f"input '{name}' is missing")
            shape = tuple(shapes[name])
            if len(shape) != len(decl):
                raise InputError(f"input '{name}': shape {shape} has rank {len(shape)}, the model declares "
                                 f"{list(decl)} (rank {len(decl)})")
            for i, (d, want) in enumerate(zip(shape, decl)):
                if isinstance(want, int):
                    if d != want:
                        raise InputError(f"input '{name}': dimension {i} is {d}, the model declares {list(decl)}")
                    continue
                if d < 1:
                    raise InputError(f"input '{name}': dynamic dimension {i} ('{want}') is {d}, expected >= 1")
                if dims.setdefault(want, d) != d:
                    raise InputError(f"input '{name}': dynamic dimension '{want}' is {d} here but {dims[want]} in "
                                     f"another input")
        for name in shapes:
            if name not in dict(self.inputs):
                raise InputError(f"unknown input '{name}'; the model's inputs are {[n for n, _ in self.inputs]}")

    def __repr__(self) -> str:
        ins = ", ".join(f"{n}{list(s)}" for n, s in self.inputs)
        modes = ", ".join(f"{n}:{l.mode}" for n, l in self._program.layers.items())
        return f"Model({self.source!r}, inputs [{ins}], outputs {self.outputs}, layers [{modes}])"
