"""Energy estimate per inference (issue: size, speed, memory and energy): MACs actually executed, arithmetic energy
by operand type, and memory traffic charged at SRAM or DRAM cost by whether the working set fits on chip; a packed
weight costs the bytes the loaded model's plan reads (its held form, or the file's form when streamed).
Default costs: Horowitz, ISSCC 2014, 45 nm; a user table (JSON or TOML with the same keys) replaces them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import constants as C
from .errors import InputError
from .tables import read_table_file
from .weights import CodebookWeight, DenseWeight, Int8Weight, SparseCodebookWeight

# pJ per operation; memory entries are per 32-bit access.
DEFAULT_TABLE = {
    "process": "45 nm (Horowitz, ISSCC 2014)",
    "int32_add": 0.1,
    "fp32_add": 0.9,
    "int32_mult": 3.1,
    "fp32_mult": 3.7,
    "int8_add": 0.03,
    "int8_mult": 0.2,
    "fp16_add": 0.4,
    "fp16_mult": 1.1,
    "register_file_32": 1.0,
    "sram_32": 5.0,
    "dram_32": 640.0,
}
REGISTER_FILE_ENTRIES = 64  # a codebook of at most this many entries is read from registers, else from SRAM

WEIGHT_OPS = tuple(C.WEIGHT_INPUTS)  # the ops whose constant weights the packer compresses (one table: constants.py)
RECURRENT_OPS = ("LSTM", "GRU")  # one Layer per weight (W, R), each applied at every step of every sequence


def load_table(path: str | None) -> dict:
    """The default table, with every key of the user's file (JSON or TOML) replacing the default's."""
    table = dict(DEFAULT_TABLE)
    if path is None:
        return table
    user = read_table_file(path)
    unknown = set(user) - set(DEFAULT_TABLE)
    if unknown:
        raise InputError(f"{path}: unknown energy table keys {sorted(unknown)}; known: {sorted(DEFAULT_TABLE)}")
    for k, v in user.items():
        if k == "process":
            if not isinstance(v, str):
                raise InputError(f"{path}: 'process' must be a string")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise InputError(f"{path}: '{k}' must be a finite number of pJ >= 0, found {v!r}")
    table.update(user)
    return table


@dataclass
class Layer:
    """What the estimate needs to know of one node."""

    name: str
    op: str
    out_positions: int  # uses of each weight per run: output rows (Gemm/MatMul), N*Hout*Wout (Conv), N*Hin*Win (ConvT)
    weights: int = 0  # dense weight count
    nonzero: int = 0  # weights stored as nonzero (fillers excluded)
    stored_bytes: int = 0  # weight bytes as stored in the packed file (codes, indices, codebook, scales)
    bias: int = 0
    k: int = 0  # codebook entries (0: not weight-shared)
    int8: bool = False
    in_elems: int = 0
    out_elems: int = 0
    active_fraction: float = 1.0  # fraction of nonzero input activations (measured with --data)
    elementwise_ops: int = 0  # for non-weight ops: comparisons / adds per inference
    read_bytes: int | None = None  # weight bytes the runtime's plan reads per inference (None: stored_bytes)
    mode: str = ""  # how the plan holds the weight (runtime/layers.py), for the report


@dataclass
class Cost:
    compute_pj: float = 0.0
    memory_pj: float = 0.0
    macs: float = 0.0
    weight_bytes: float = 0.0
    activation_bytes: float = 0.0
    parts: dict = field(default_factory=dict)

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def as_uj(self) -> dict:
        return {"total_uj": self.total_pj * 1e-6, "compute_uj": self.compute_pj * 1e-6,
                "memory_uj": self.memory_pj * 1e-6, "macs": self.macs, "weight_bytes": self.weight_bytes,
                "activation_bytes": self.activation_bytes}


def _access(nbytes: float, on_chip: bool, table: dict) -> float:
    return nbytes / 4 * (table["sram_32"] if on_chip else table["dram_32"])


def layer_cost(layer: Layer, packed: bool, weights_on_chip: bool, acts_on_chip: bool, table: dict) -> Cost:
    c = Cost()
    mac = table["fp32_mult"] + table["fp32_add"]
    if layer.op in WEIGHT_OPS and layer.weights:
        if packed:
            c.macs = layer.nonzero * layer.out_positions * layer.active_fraction
            c.weight_bytes = _weight_bytes(layer, True)
            lookup = 0.0
            if layer.k:
                lookup = table["register_file_32"] if layer.k <= REGISTER_FILE_ENTRIES else table["sram_32"]
            per = (table["int8_mult"] + table["int32_add"]) if layer.int8 else mac + lookup
        else:
            c.macs = layer.weights * layer.out_positions
            c.weight_bytes = 4 * (layer.weights + layer.bias)
            per = mac
        c.compute_pj = c.macs * per + layer.bias * layer.out_positions * table["fp32_add"]
        c.parts["weights_pj"] = _access(c.weight_bytes, weights_on_chip, table)
    else:
        c.compute_pj = layer.elementwise_ops * table["fp32_add"]
        c.parts["weights_pj"] = 0.0
    # every input activation read once, every output written once (on-chip reuse inside a layer is the kernel's)
    c.activation_bytes = 4 * (layer.in_elems + layer.out_elems)
    c.parts["activations_pj"] = _access(c.activation_bytes, acts_on_chip, table)
    c.memory_pj = c.parts["weights_pj"] + c.parts["activations_pj"]
    return c


def model_cost(layers: list[Layer], packed: bool, sram_bytes: int, arena_bytes: int, table: dict) -> tuple[Cost,
                                                                                                            list]:
    """Weights stay on chip when all of them fit in SRAM together with the activation arena; activations stay on
    chip when the arena fits (it is smaller and is placed first)."""
    weight_total = sum(_weight_bytes(l, packed) for l in layers)
    acts_on_chip = arena_bytes <= sram_bytes
    weights_on_chip = acts_on_chip and weight_total + arena_bytes <= sram_bytes
    total = Cost()
    per_layer = []
    for l in layers:
        c = layer_cost(l, packed, weights_on_chip, acts_on_chip, table)
        per_layer.append((l.name, c))
        total.compute_pj += c.compute_pj
        total.memory_pj += c.memory_pj
        total.macs += c.macs
        total.weight_bytes += c.weight_bytes
        total.activation_bytes += c.activation_bytes
    total.parts = {"weights_on_chip": weights_on_chip, "activations_on_chip": acts_on_chip,
                   "weight_bytes_total": weight_total, "arena_bytes": arena_bytes}
    return total, per_layer


def _weight_bytes(l: Layer, packed: bool) -> int:
    if l.op not in WEIGHT_OPS or not l.weights:
        return 0
    if not packed:
        return 4 * (l.weights + l.bias)
    return l.stored_bytes if l.read_bytes is None else l.read_bytes


def fits_at(layers: list[Layer], packed: bool, arena_bytes: int) -> int:
    """Smallest SRAM that holds every weight and the arena."""
    return sum(_weight_bytes(l, packed) for l in layers) + arena_bytes


def weight_layer(name: str, op: str, weight, out_positions: int, stored_bytes: int, bias: int, in_elems: int,
                 out_elems: int) -> Layer:
    """A Layer from a runtime weight object (runtime/weights.py)."""
    w = weight
    count = int(np.prod(w.shape)) if not isinstance(w, DenseWeight) else int(w.array.size)
    if isinstance(w, SparseCodebookWeight):
        nonzero = int(np.count_nonzero(w.codebook[w.codes]))
        k = int(w.codebook.size)
    elif isinstance(w, CodebookWeight):
        nonzero = int(np.count_nonzero(w.codebook[w.codes]))
        k = int(w.codebook.size)
    elif isinstance(w, Int8Weight):
        nonzero, k = count, 0
    else:
        nonzero, k = int(np.count_nonzero(w.array)), 0
    return Layer(name, op, out_positions, count, nonzero, stored_bytes, bias, k, isinstance(w, Int8Weight),
                 in_elems, out_elems)


def model_layers(model, packed, active: dict[str, float] | None = None) -> list[Layer]:
    """Layers of a loaded runtime Model (runtime.load) at its load shapes, with the weights of the same file as read
    (runtime.loader.read_packed): MACs, weight bytes as stored, activation sizes. `active`: tensor name -> fraction
    of nonzero values (measured on data) for zero-activation skipping."""
    from . import executor
    from .summary import layer_table

    program = model._program
    shapes = executor.infer_shapes(program, dict(model.plan.input_shapes))
    held = {l.weight: l for l in model.plan.layers}
    weights = packed.weights
    stored = {r["name"]: r["bytes"] for r in layer_table(packed)["layers"]}
    out = []
    for n in program.nodes:
        ins = [i for i in n["inputs"] if i]
        in_elems = sum(int(np.prod(shapes[i])) for i in ins if i in shapes)
        out_shape = shapes[n["outputs"][0]]
        out_elems = sum(int(np.prod(shapes[o])) for o in n["outputs"])
        if n["op"] in RECURRENT_OPS:
            out.extend(_recurrent_layers(n, shapes, weights, stored, in_elems, out_elems))
            continue
        wname = n["inputs"][1] if n["op"] in WEIGHT_OPS and len(n["inputs"]) > 1 else None
        if wname in weights:
            w = weights[wname]
            # how many times each weight multiplies: once per output position (Conv), per input position
            # (ConvTranspose scatters every input value through the whole kernel), per output row (Gemm / MatMul,
            # whichever way the weight is transposed: y (..., N) has out_elems / N rows)
            if n["op"] == "Conv":
                positions = int(np.prod(out_shape[2:])) * out_shape[0]
            elif n["op"] == "ConvTranspose":
                x_shape = shapes[n["inputs"][0]]
                positions = int(np.prod(x_shape[2:])) * x_shape[0]
            else:
                positions = out_elems // out_shape[-1] if out_shape and out_shape[-1] else 0
            bname = n["inputs"][2] if len(n["inputs"]) > 2 and n["inputs"][2] in weights else None
            bias = int(np.prod(weights[bname].shape)) if bname else 0
            layer = weight_layer(n["name"], n["op"], w, positions, stored[wname] + (stored[bname] if bname else 0),
                                 bias, in_elems, out_elems)
            plan = held.get(wname)
            if plan is not None:
                # what the kernels read each run: the file's form when streamed (decoded chunk by chunk into
                # scratch, which stays on chip), else the form the weight is held in (compact, csr or dense)
                layer.mode = plan.mode
                if plan.mode != "streamed":
                    layer.read_bytes = plan.ram_bytes + plan.mapped_bytes
            if active and n["inputs"][0] in active:
                layer.active_fraction = float(active[n["inputs"][0]])
        else:
            ops = out_elems
            if n["op"] in ("MaxPool", "AveragePool"):
                k = n["attrs"].get("kernel_shape", [1])
                ops = out_elems * int(np.prod(k))
            layer = Layer(n["name"], n["op"], 0, in_elems=in_elems, out_elems=out_elems, elementwise_ops=ops)
        out.append(layer)
    return out


def _recurrent_layers(n: dict, shapes: dict, weights: dict, stored: dict, in_elems: int, out_elems: int) -> list:
    """An LSTM / GRU as one Layer per constant weight (W, then R): each row multiplies once per step and sequence
    (seq x batch positions); the biases (Wb and Rb) are added at every position with W. The runtime holds these
    weights expanded to dense float32 (runtime/ops/recurrent.py), so that is what a run reads."""
    x = shapes.get(n["inputs"][0])
    positions = int(x[0]) * int(x[1]) if x is not None and len(x) == 3 else 0
    bname = n["inputs"][3] if len(n["inputs"]) > 3 and n["inputs"][3] in weights else None
    layers = []
    for role, idx in (("W", 1), ("R", 2)):
        name = n["inputs"][idx] if len(n["inputs"]) > idx else ""
        if name not in weights:
            continue
        first = not layers
        with_bias = first and bname is not None
        bias = int(np.prod(weights[bname].shape)) if with_bias else 0  # Wb and Rb: [directions, 2 x gate rows]
        layer = weight_layer(f"{n['name']}:{role}", n["op"], weights[name], positions,
                             stored[name] + (stored[bname] if with_bias else 0), bias,
                             in_elems if first else 0, out_elems if first else 0)
        layer.read_bytes = 4 * (layer.weights + bias)
        layer.mode = "dense"
        layers.append(layer)
    return layers


def estimate(model, packed, sram_bytes: int, table: dict | None = None,
             active: dict[str, float] | None = None) -> dict:
    """The report: original fp32 model vs packed model per inference (batch of the model's load shapes), per layer,
    and a sweep over SRAM sizes."""
    sram_bytes = _sram(sram_bytes)
    table = table or dict(DEFAULT_TABLE)
    if active is not None:
        bad = {k: v for k, v in active.items() if isinstance(v, bool) or not isinstance(v, (int, float))
               or not 0.0 <= v <= 1.0}
        if bad:
            raise InputError(f"active fractions must be numbers in [0, 1]; found {bad}")
    layers = model_layers(model, packed, active)
    arena = model.plan.arena_bytes
    result = {"process": table["process"], "table": table, "sram_bytes": sram_bytes, "arena_bytes": arena}
    per = {}
    for key, packed in (("original", False), ("packed", True)):
        total, per_layer = model_cost(layers, packed, sram_bytes, arena, table)
        result[key] = {**total.as_uj(), "weights_on_chip": total.parts["weights_on_chip"],
                       "activations_on_chip": total.parts["activations_on_chip"],
                       "fits_in_sram_from_bytes": fits_at(layers, packed, arena)}
        per[key] = per_layer
    # The same packed model if every weight were read in its file form (an ideal decoder: Deep Compression's
    # EIE-style hardware; this runtime's "streamed" mode): what the format itself allows.
    as_stored = [replace(l, read_bytes=None) for l in layers]
    ideal, _ = model_cost(as_stored, True, sram_bytes, arena, table)
    result["packed_as_stored"] = {**ideal.as_uj(), "weights_on_chip": ideal.parts["weights_on_chip"],
                                  "activations_on_chip": ideal.parts["activations_on_chip"],
                                  "fits_in_sram_from_bytes": fits_at(as_stored, True, arena)}
    result["modes"] = {l.name: l.mode for l in layers if l.mode}
    result["ratio"] = result["original"]["total_uj"] / result["packed"]["total_uj"] \
        if result["packed"]["total_uj"] else math.inf
    result["layers"] = [{"name": l.name, "op": l.op, "active_fraction": l.active_fraction,
                         "original": a.as_uj(), "packed": b.as_uj()}
                        for l, (_, a), (_, b) in zip(layers, per["original"], per["packed"])]
    sweep = []
    size = 4096
    while size <= 1 << 26:
        o, _ = model_cost(layers, False, size, arena, table)
        p, _ = model_cost(layers, True, size, arena, table)
        sweep.append({"sram_bytes": size, "original_uj": o.total_pj * 1e-6, "packed_uj": p.total_pj * 1e-6})
        size *= 2
    result["sweep"] = sweep
    return result


def load_for_sram(source, sram_bytes: int, batch: int = 1):
    """runtime.load with the SRAM as the memory budget when a plan fits it (the plan a device with that SRAM would
    run), else without a budget (fastest modes); returns (model, the budget used or None)."""
    from .errors import BudgetError
    from .model import load

    sram_bytes = _sram(sram_bytes)
    try:
        return load(source, memory_budget=sram_bytes, batch=batch), sram_bytes
    except BudgetError:
        return load(source, batch=batch), None


def _sram(value) -> int:
    """An SRAM size as bytes: an int >= 0, or text such as '256KiB' (memory.parse_size)."""
    from .memory import parse_size

    return parse_size(value)


def format_report(r: dict) -> str:
    lines = [f"energy per inference, {r['process']}; SRAM {r['sram_bytes']:,} B (activation arena "
             f"{r['arena_bytes']:,} B)"]
    head = f"{'layer':<20} {'op':<8} {'MACs fp32':>11} {'MACs packed':>11} {'orig uJ':>9} {'packed uJ':>9}"
    lines += [head, "-" * len(head)]
    for l in r["layers"]:
        lines.append(f"{l['name'][:20]:<20} {l['op'][:8]:<8} {l['original']['macs']:>11,.0f} "
                     f"{l['packed']['macs']:>11,.0f} {l['original']['total_uj']:>9.3f} {l['packed']['total_uj']:>9.3f}")
    lines.append("-" * len(head))
    for key in ("original", "packed"):
        t = r[key]
        where = "SRAM" if t["weights_on_chip"] else "DRAM"
        lines.append(f"{key:<9} total {t['total_uj']:9.3f} uJ = compute {t['compute_uj']:.3f} + data movement "
                     f"{t['memory_uj']:.3f} uJ; weights in {where}; fits on chip from {t['fits_in_sram_from_bytes']:,} B")
    if r.get("modes"):
        how = ("the runtime's plan with the SRAM as its memory budget" if r.get("plan_budget") else
               "the runtime's plan without a budget")
        lines.append(f"packed weights as held by {how}: "
                     + ", ".join(f"{k} {m}" for k, m in r["modes"].items()) + " (the sweep keeps this plan)")
    ideal = r.get("packed_as_stored")
    if ideal:
        where = "SRAM" if ideal["weights_on_chip"] else "DRAM"
        lines.append(f"packed, weights read as stored in the file: {ideal['total_uj']:9.3f} uJ; weights in {where}; "
                     f"fits on chip from {ideal['fits_in_sram_from_bytes']:,} B")
    lines.append(f"packed model: {r['ratio']:.1f}x less energy per inference")
    lines.append("SRAM sweep (uJ per inference):  size -> original / packed")
    for s in r["sweep"]:
        lines.append(f"  {s['sram_bytes']:>10,} B  {s['original_uj']:10.3f} / {s['packed_uj']:9.3f}")
    return "\n".join(lines)
