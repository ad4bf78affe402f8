"""The op registry: ONNX op type -> OpDef (shape inference, kernel runner, in-place flag), plus the checks the
op-family modules share. Call `register_all()` once before `get()`; see its docstring for how a module joins.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgepack.runtime.errors import FormatError, UnsupportedError

Shape = tuple[int, ...]
InferFn = Callable[[list, dict, list], list]
RunFn = Callable[[list, dict, list], None]

# Op-family modules under runtime/ops/, each declaring OPS: tuple[OpDef, ...]; a module absent from the tree is
# skipped so a partial runtime still loads (its ops then fail in get()). Gemm, MatMul and Conv are not listed: their
# kernels (linear.py, conv.py) run on weights held per layer, so runtime/layers.py defines their OpDefs and the
# model loader registers them next to these.
OP_MODULES: tuple[str, ...] = ("elementwise", "pool", "shape", "softmax", "conv_transpose", "resize", "tensor",
                               "mathops", "normalization", "recurrent", "quantize")


@dataclass(frozen=True)
class OpDef:
    """One supported op.

    infer(input_shapes, attrs, consts) -> output shapes. input_shapes[i] is a tuple of ints, or None for an omitted
        optional input; consts[i] is the value of input i when it is a constant (initializer), else None. Raises
        FormatError (invalid attributes, mismatched shapes) or UnsupportedError (valid but not handled here); the
        message need not name the op or node, infer_node() prefixes both.
    run(inputs, attrs, outputs) writes into the preallocated float32 C-contiguous `outputs` (arena views);
        inputs[i] is an ndarray (constants included), or None for an omitted optional input. It assumes infer()
        accepted the same shapes and attrs, so it does not re-validate.
    inplace_ok: outputs[0] may be the very same buffer (same start, same nbytes) as any input of equal nbytes.
    bind(inputs, attrs, outputs[, scratch]) -> (fn, args) or None: called once per plan with the plan's arena views
        (fixed buffers and shapes); every run then calls only fn(*args), so whatever depends on shapes, attributes
        and constants is worked out here. None keeps `run` for this node; NO_STEP leaves the node out of the
        plan's steps (nothing to do). Without bind, every run calls `run`.
    scratch_bytes(input_shapes, attrs) -> int: the scratch a bound step needs; the executor sizes the plan's shared
        scratch (counted in the memory plan) by it and passes bind a view of it as `scratch`. A plain `run` call
        allocates its own.
    """

    name: str
    infer: InferFn
    run: RunFn
    inplace_ok: bool = False
    bind: Callable[..., tuple | None] | None = None
    scratch_bytes: Callable[[list, dict], int] | None = None


# The graph's ONNX opset, which runtime/model.py adds to every node's attrs under this key (a private name: ONNX
# attribute names do not start with "__"). Ops whose semantics changed between opsets read it with opset_of().
OPSET_KEY = "__opset"
# What an op sees when the caller gave no opset (direct calls in tests): the newest semantics the runtime implements.
LATEST_OPSET = 1000


def opset_of(attrs: dict[str, Any]) -> int:
    """The ONNX default-domain opset the node's semantics follow."""
    return int(attrs.get(OPSET_KEY, LATEST_OPSET))


def refuse_opset(what_changed: str, opset: int) -> UnsupportedError:
    """The one-line refusal for semantics of an older opset that the runtime does not implement (infer_node adds
    the op and node)."""
    return UnsupportedError(f"at opset {opset} {what_changed}; this runtime does not implement that older "
                            f"behaviour (convert the model to a newer opset, e.g. onnx.version_converter)")


# What a bind returns for a node whose run does nothing in this plan (an Identity / Reshape given its input's
# buffer): the executor leaves the step out.
NO_STEP = ("no step",)

REGISTRY: dict[str, OpDef] = {}
_loaded_modules: set[str] = set()


def register(op: OpDef) -> OpDef:
    """Add `op` to REGISTRY; registering the same OpDef twice is a no-op, a different one under a taken name is not.
    Binding and scratch are OpDef fields: a runner carrying them as attributes (an older way) is refused."""
    if hasattr(op.run, "bind") or hasattr(op.run, "scratch_bytes"):
        raise TypeError(f"op '{op.name}': give bind / scratch_bytes as OpDef fields, not as attributes of its run "
                        f"function ({op.run.__module__})")
    if op.scratch_bytes is not None and op.bind is None:
        raise TypeError(f"op '{op.name}': scratch_bytes is given to bind; an OpDef with it needs a bind")
    old = REGISTRY.get(op.name)
    if old is not None and old != op:
        raise ValueError(f"op '{op.name}' is already registered (by {old.run.__module__}); "
                         f"refusing a second definition from {op.run.__module__}")
    REGISTRY[op.name] = op
    return op


def register_all(modules: Iterable[str] = OP_MODULES) -> None:
    """Import each op-family module `runtime.ops.<name>` and register its OPS (idempotent).

    A module joins the runtime by defining, at module level, `OPS: tuple[OpDef, ...]` (e.g. linear.py:
    `OPS = (OpDef("Gemm", infer_gemm, run_gemm), OpDef("MatMul", ...))`) and by being listed in OP_MODULES.
    A listed module that does not exist is skipped; one that exists without OPS is an error.
    """
    for mod_name in modules:
        if mod_name in _loaded_modules:
            continue
        full = f"edgepack.runtime.ops.{mod_name}"
        try:
            module = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name == full:
                continue
            raise
        ops = getattr(module, "OPS", None)
        if ops is None:
            raise TypeError(f"module {full} is listed in OP_MODULES but defines no OPS tuple of OpDef")
        for op in ops:
            register(op)
        _loaded_modules.add(mod_name)


def supported_ops() -> list[str]:
    return sorted(REGISTRY)


def get(op: str, node_name: str) -> OpDef:
    try:
        return REGISTRY[op]
    except KeyError:
        raise UnsupportedError(f"op '{op}' (node '{node_name}') is not supported by this runtime; "
                               f"supported: {', '.join(supported_ops()) or '(none registered)'}") from None


def infer_node(op: str, node_name: str, input_shapes: Sequence[Shape | None], attrs: dict[str, Any],
               consts: Sequence[np.ndarray | None], n_outputs: int = 1) -> list[Shape]:
    """Run `op`'s shape inference for one node; errors are re-raised with the op and node named."""
    opdef = get(op, node_name)
    try:
        shapes = opdef.infer(list(input_shapes), attrs, list(consts))
    except (FormatError, UnsupportedError) as e:
        raise type(e)(f"op '{op}' (node '{node_name}'): {e}") from e
    if n_outputs > len(shapes):
        raise UnsupportedError(f"op '{op}' (node '{node_name}'): the node asks for {n_outputs} outputs; "
                               f"this runtime computes {len(shapes)}")
    return [tuple(int(d) for d in s) for s in shapes[:n_outputs]]


# ---- checks shared by the op modules (messages omit op and node: infer_node adds them) ----

def check_arity(input_shapes: Sequence[Shape | None], n_min: int, n_max: int | None = None) -> None:
    """Inputs n_min.. are optional (may be None); fewer than n_min present, or more than n_max given, is an error."""
    n_max = n_min if n_max is None else n_max
    n = len(input_shapes)
    if n < n_min or n > n_max:
        expected = str(n_min) if n_min == n_max else f"{n_min} to {n_max}"
        raise FormatError(f"expects {expected} inputs, found {n}")
    for i in range(n_min):
        if input_shapes[i] is None:
            raise FormatError(f"input {i} is required but omitted")


def normalize_axis(axis: Any, rank: int, what: str = "axis", allow_end: bool = False) -> int:
    """Map a possibly negative axis into [0, rank) (or [0, rank] when allow_end, as Flatten needs)."""
    hi = rank if allow_end else rank - 1
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or not -rank <= axis <= hi:
        raise FormatError(f"attribute '{what}' = {axis!r} is out of range [{-rank}, {hi}] for rank {rank}")
    return int(axis) + rank if axis < 0 else int(axis)


def int_list(attrs: dict[str, Any], key: str, default: list[int] | None, length: int | None = None,
             minimum: int | None = None) -> list[int] | None:
    """Read an ints attribute, checking type, length and lower bound."""
    value = attrs.get(key, default)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        raise FormatError(f"attribute '{key}' must be a list of ints, found {value!r}")
    if length is not None and len(value) != length:
        raise FormatError(f"attribute '{key}' must have {length} values, found {len(value)}: {list(value)}")
    if minimum is not None and any(v < minimum for v in value):
        raise FormatError(f"attribute '{key}' values must be >= {minimum}, found {list(value)}")
    return [int(v) for v in value]


def int_attr(attrs: dict[str, Any], key: str, default: int, allowed: Sequence[int] | None = None) -> int:
    value = attrs.get(key, default)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise FormatError(f"attribute '{key}' must be an int, found {value!r}")
    if allowed is not None and value not in allowed:
        raise FormatError(f"attribute '{key}' must be one of {list(allowed)}, found {value}")
    return int(value)


def float_attr(attrs: dict[str, Any], key: str, default: float) -> float:
    value = attrs.get(key, default)
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise FormatError(f"attribute '{key}' must be a float, found {value!r}")
    return float(value)


def check_legacy_broadcast(a: tuple, b: tuple, attrs) -> None:
    """Before opset 7, Add/Sub/Mul/Div/Pow broadcast only with `broadcast` = 1, B's dimensions matched against
    A's from `axis` on (default: right-aligned); numpy's right-aligned rules compute the same for the default axis
    and for an axis that right-aligns B; any other axis is refused by name."""
    opset = opset_of(attrs)
    if opset >= 7 or not attrs.get("broadcast", 0) or "axis" not in attrs:
        return
    axis = attrs["axis"]
    if not isinstance(axis, int) or (axis + len(a) if axis < 0 else axis) != len(a) - len(b):
        raise refuse_opset(f"attribute 'broadcast' = 1 with 'axis' = {axis!r} matches input 1 of shape {b} "
                           f"against dimension {axis!r} onwards of input 0 {a} (legacy broadcasting; opset 7 "
                           f"aligns shapes from the right)", opset)
