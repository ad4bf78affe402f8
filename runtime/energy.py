"""Energy estimate per inference (issue: size, speed, memory and energy): MACs actually executed, arithmetic energy
by operand type, and memory traffic charged at SRAM or DRAM cost by whether the working set fits on chip.
Default costs: Horowitz, ISSCC 2014, 45 nm; a user table (JSON or TOML with the same keys) replaces them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

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

WEIGHT_OPS = ("Gemm", "MatMul", "Conv")


def load_table(path: str | None) -> dict:
    """The default table, with every key of the user's file (JSON or TOML) replacing the default's."""
    table = dict(DEFAULT_TABLE)
    if path is None:
        return table
    user = read_table_file(path)
    unknown = set(user) - set(DEFAULT_TABLE)
    if unknown:
        raise ValueError(f"{path}: unknown energy table keys {sorted(unknown)}; known: {sorted(DEFAULT_TABLE)}")
    for k, v in user.items():
        if k == "process":
            if not isinstance(v, str):
                raise ValueError(f"{path}: 'process' must be a string")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{path}: '{k}' must be a finite number of pJ >= 0, found {v!r}")
    table.update(user)
    return table


@dataclass
class Layer:
    """What the estimate needs to know of one node."""

    name: str
    op: str
    out_positions: int  # output positions per weight row (1 for Gemm/MatMul per sample; Hout*Wout for Conv)
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
            c.weight_bytes = layer.stored_bytes
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
    return l.stored_bytes if packed else 4 * (l.weights + l.bias)


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
