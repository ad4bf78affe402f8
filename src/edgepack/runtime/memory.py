"""The memory plan of a loaded model (weights as held per layer, constants, arena, scratch) and the budget fit that
chooses, per layer, how its weight is held: the least estimated time that fits, or BudgetError with the minimum.

Accounting (bytes of numpy buffers; what `Model.plan` reports and what a budget is compared with):

- weights, per layer: every array the layer reads at run time, split in two.
  RAM: arrays the runtime allocated — decoded and re-laid codes and indices ("compact"), decoded row counts, gaps
  and codes ("csr"), float32 expansions ("dense"), codebooks, the Huffman decode tables and chunk tables of a
  "streamed" layer.
  mapped: views into the mapped file — weights and biases stored dense, and a streamed layer's compressed chunks.
- constants: the other constant tensors that ops read (Add/Mul operands, Reshape shapes), RAM or mapped likewise.
- arena: the one buffer that holds every activation (graph inputs, copied in, and every node output but the input
  of a Relu / LeakyRelu / Clip fused into the Gemm or Conv before it, which never exists), laid out by
  runtime/planner.py; it depends on the input shapes.
- scratch: the one buffer all steps share, as large as the largest single step needs (streamed chunk decoding,
  im2col columns, batch tiles, a transposed Gemm input, an LSTM / GRU's input projections and state).

total = weights (RAM + mapped) + constants (RAM + mapped) + arena + scratch.

Mapped bytes COUNT against the budget (COUNT_MAPPED). "Mapped" names views into the file's bytes: `load` reads the
file once into memory (runtime/reader.py open_bytes), validates it, and then keeps a copy of only the parts that
runs read, the views re-pointed at it (runtime/loader.py keep_needed_bytes), so that a file changed on disk cannot
change a loaded model; on this runtime those bytes are RAM. A device that maps its flash into the address space
(execute-in-place NOR flash) would not spend RAM on them, and for such a device the plan reports them apart
("mapped") so that they can be subtracted. Not counted: the alignment padding between the parts kept (the plan's
last line states what the model holds of the file beside what runs read); the Python interpreter, numpy and numba
with their JIT code; Python objects (graph description, plan tables); the arrays `Model.run` returns (the caller's);
per-layer bookkeeping arrays of a few dozen bytes (geometry vectors, error slots); and the transient peak of `load`
itself, which holds the whole file and decodes every tensor once to validate it, and releases what no layer keeps
before it returns.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

from edgepack.runtime.errors import BudgetError, InputError

COUNT_MAPPED = True  # see the module docstring


@dataclass(frozen=True)
class LayerMemory:
    """One weight-bearing layer in the plan: its chosen option and the ones it could have had."""

    name: str
    op: str
    weight: str
    encoding: str
    mode: str
    ram_bytes: int
    mapped_bytes: int
    scratch_bytes: int
    seconds: float
    note: str = ""
    options: tuple = ()  # every layers.Option this weight could be held in

    @property
    def held_bytes(self) -> int:
        return self.ram_bytes + (self.mapped_bytes if COUNT_MAPPED else 0)


@dataclass(frozen=True)
class MemoryPlan:
    """What a model holds for one set of input shapes. Byte counts follow the module docstring."""

    layers: tuple[LayerMemory, ...]
    constants_ram: int
    constants_mapped: int
    arena_bytes: int
    peak_live_bytes: int
    tensors: int
    scratch_bytes: int
    scratch_owner: str | None  # the node whose step needs the largest scratch
    budget: int | None
    input_shapes: dict = field(default_factory=dict)
    file_bytes: int = 0  # bytes of the file the model holds (the parts runs read, or the whole file)
    views: int = 0  # of the tensors, those placed inside another (a Concat's input in its output: planner.BlockView)

    @property
    def weights_ram(self) -> int:
        return sum(l.ram_bytes for l in self.layers)

    @property
    def weights_mapped(self) -> int:
        return sum(l.mapped_bytes for l in self.layers)

    @property
    def ram_bytes(self) -> int:
        """Bytes the runtime allocated: weights and constants in RAM, arena, scratch."""
        return self.weights_ram + self.constants_ram + self.arena_bytes + self.scratch_bytes

    @property
    def mapped_bytes(self) -> int:
        return self.weights_mapped + self.constants_mapped

    @property
    def total_bytes(self) -> int:
        """What the budget is compared with."""
        return self.ram_bytes + (self.mapped_bytes if COUNT_MAPPED else 0)

    @property
    def seconds(self) -> float:
        """The cost model's estimate for the weight-bearing layers (not a measurement)."""
        return sum(l.seconds for l in self.layers)

    def modes(self) -> dict[str, str]:
        return {l.name: l.mode for l in self.layers}

    def as_dict(self) -> dict:
        return {
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "budget": self.budget, "total_bytes": self.total_bytes, "ram_bytes": self.ram_bytes,
            "mapped_bytes": self.mapped_bytes, "mapped_counted": COUNT_MAPPED,
            "arena_bytes": self.arena_bytes, "peak_live_bytes": self.peak_live_bytes, "views": self.views,
            "scratch_bytes": self.scratch_bytes, "scratch_owner": self.scratch_owner,
            "constants_ram": self.constants_ram, "constants_mapped": self.constants_mapped,
            "layers": [{"name": l.name, "op": l.op, "weight": l.weight, "encoding": l.encoding, "mode": l.mode,
                        "ram_bytes": l.ram_bytes, "mapped_bytes": l.mapped_bytes, "scratch_bytes": l.scratch_bytes,
                        "est_us": round(l.seconds * 1e6, 2), "note": l.note,
                        "options": [{"mode": o.mode, "ram_bytes": o.ram_bytes, "mapped_bytes": o.mapped_bytes,
                                     "scratch_bytes": o.scratch_bytes, "est_us": round(o.seconds * 1e6, 2)}
                                    for o in l.options]}
                       for l in self.layers],
        }

    def table(self) -> str:
        from edgepack.runtime.summary import printable as p  # names come from the file: control characters shown escaped

        shapes = ", ".join(f"{p(k)} {tuple(v)}" for k, v in self.input_shapes.items())
        budget = "no budget" if self.budget is None else f"budget {self.budget:,} B ({kib(self.budget)})"
        lines = [f"memory plan for {shapes}; {budget}; mapped file bytes "
                 f"{'count' if COUNT_MAPPED else 'do not count'} against the budget"]
        w = max([5] + [len(p(l.name)) for l in self.layers])
        ww = max([6] + [len(p(l.weight)) for l in self.layers])
        head = (f"{'layer':<{w}}  {'op':<6}  {'weight':<{ww}}  {'encoding':<15}  {'mode':<8}  {'RAM B':>9}  "
                f"{'mapped B':>9}  {'scratch B':>9}  {'est. us':>8}")
        lines += [head, "-" * len(head)]
        for l in self.layers:
            lines.append(f"{p(l.name):<{w}}  {p(l.op)[:6]:<6}  {p(l.weight):<{ww}}  {l.encoding[:15]:<15}  "
                         f"{l.mode:<8}  "
                         f"{l.ram_bytes:>9,}  {l.mapped_bytes:>9,}  {l.scratch_bytes:>9,}  {l.seconds * 1e6:>8.1f}")
        lines.append("-" * len(head))
        lines.append(f"weights    RAM {self.weights_ram:>10,} B   mapped {self.weights_mapped:>10,} B")
        lines.append(f"constants  RAM {self.constants_ram:>10,} B   mapped {self.constants_mapped:>10,} B")
        inside = f", {self.views} inside others" if self.views else ""
        lines.append(f"arena      {self.arena_bytes:>14,} B   (peak live {self.peak_live_bytes:,} B, "
                     f"{self.tensors} tensors{inside})")
        owner = f"   (largest step: '{p(self.scratch_owner)}')" if self.scratch_owner else ""
        lines.append(f"scratch    {self.scratch_bytes:>14,} B{owner}")
        fit = ""
        if self.budget is not None:
            fit = (f"; fits the budget, {self.budget - self.total_bytes:,} B spare" if self.total_bytes <= self.budget
                   else f"; EXCEEDS the budget by {self.total_bytes - self.budget:,} B")
        lines.append(f"total      {self.total_bytes:>14,} B   ({kib(self.total_bytes)}: RAM {self.ram_bytes:,} B + "
                     f"mapped {self.mapped_bytes:,} B){fit}")
        if self.file_bytes:
            lines.append(f"of the file's bytes the model holds {self.file_bytes:,} B (copied at load); runs read "
                         f"the {self.mapped_bytes:,} B counted above")
        notes = [f"  {p(l.name)}: {p(l.note)}" for l in self.layers if l.mode == "streamed" and l.note]
        if notes:
            lines.append("streamed layers decode, at every run, one chunk at a time:")
            lines += notes
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def memory_limit() -> int:
    """The most bytes this process can expect to allocate: physical memory (physical_bytes), or the address-space
    limit (ulimit -v) when that is lower."""
    limit = physical_bytes()
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limit = min(limit, int(soft))
    except (ImportError, OSError, ValueError):
        pass
    return limit


def check_allocation(nbytes: int, what: str, budget: int | None = None) -> None:
    """BudgetError naming `what` if `nbytes` exceed the budget or what this machine can allocate (memory_limit):
    for sizes decoded from a file (dense expansions of compressed tensors), checked before anything is allocated."""
    if budget is not None and nbytes > budget:
        raise BudgetError(f"{what} needs {nbytes:,} B ({gib(nbytes)}), more than the memory budget {budget:,} B")
    limit = memory_limit()
    if nbytes > limit:
        raise BudgetError(f"{what} needs {nbytes:,} B ({gib(nbytes)}), more than this machine can allocate "
                          f"({limit:,} B: physical memory, or ulimit -v if lower)")


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB"


def kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def parse_size(value) -> int:
    """A size as an int of bytes, or text: '256KiB', '1MiB', '64k' (binary), '64kB' (decimal), '65536'. The one
    parser of sizes (memory budgets, --sram); InputError (a ValueError) when it is not a finite size >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"a size must be a number of bytes or text such as '256KiB', found {value!r}")
    if isinstance(value, (int, float)):
        n = value
    else:
        t = value.strip().lower().replace(" ", "").replace("_", "")
        units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6, "gb": 10**9,
                 "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "b": 1}
        unit = next((u for u in sorted(units, key=len, reverse=True) if t.endswith(u)), "")
        try:
            n = float(t[: len(t) - len(unit)]) * units.get(unit, 1)
        except ValueError:
            raise InputError(f"size {value!r} is not a size: expected bytes or a number with a unit, e.g. "
                             f"'65536', '256KiB', '1MiB', '64kB'") from None
    if not math.isfinite(n) or n < 0:
        raise InputError(f"size {value!r} must be a finite number of bytes >= 0")
    return int(n)


def physical_bytes() -> int:
    """This machine's memory (bytes); a very large number where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def allocate(nbytes: int, what: str):
    """np.empty(nbytes, uint8), or BudgetError naming `what` and the size instead of numpy's MemoryError."""
    import numpy as np

    try:
        return np.empty(int(nbytes), dtype=np.uint8)
    except (MemoryError, ValueError) as e:
        raise BudgetError(f"{what} needs {int(nbytes):,} B ({int(nbytes) / 2**30:,.1f} GiB), which cannot be "
                          f"allocated ({e}); run smaller batches or inputs") from None


def held(option) -> int:
    return option.ram_bytes + (option.mapped_bytes if COUNT_MAPPED else 0)


@dataclass
class Fit:
    """The budget fit's answer: one option per layer, and the smallest total any choice reaches."""

    choice: list
    minimum: int
    minimum_choice: list


def _smallest(layers: list[tuple[str, list]], fixed_bytes: int, fixed_scratch: int) -> tuple[int | None, list]:
    """The smallest total any choice reaches, and that choice: for every scratch size S the options allow, each
    layer's smallest holding whose scratch fits in S."""
    best, best_choice = None, []
    caps = sorted({fixed_scratch} | {max(fixed_scratch, o.scratch_bytes) for _, opts in layers for o in opts})
    for cap in caps:
        allowed = [[o for o in opts if o.scratch_bytes <= cap] for _, opts in layers]
        if any(not a for a in allowed):
            continue
        choice = [min(a, key=lambda o: (held(o), o.scratch_bytes, o.seconds)) for a in allowed]
        need = fixed_bytes + max([fixed_scratch] + [o.scratch_bytes for o in choice]) + sum(held(o) for o in choice)
        if best is None or need < best:
            best, best_choice = need, choice
    return best, best_choice


def fit(layers: list[tuple[str, list]], fixed_bytes: int, fixed_scratch: int, budget: int | None,
        what: str = "model") -> Fit:
    """Choose one option per layer (layers: (name, options)); fixed_bytes = constants + arena, fixed_scratch = the
    scratch the other steps need. No budget: the fastest option of every layer. With a budget: for every scratch
    size S the options allow, start from the smallest holding of every layer whose scratch fits in S, then upgrade
    the layer with the most time saved per extra byte while the slack allows; keep the fastest plan over all S.
    Raise BudgetError when even the smallest plan exceeds the budget."""
    fastest = [min(opts, key=lambda o: (o.seconds, held(o), o.scratch_bytes)) for _, opts in layers]
    minimum, minimum_choice = _smallest(layers, fixed_bytes, fixed_scratch)
    if budget is None:
        return Fit(fastest, minimum if minimum is not None else 0, minimum_choice)
    if minimum is None or minimum > budget:
        raise BudgetError(budget_message(what, budget, minimum, minimum_choice, layers, fixed_bytes, fixed_scratch))
    caps = sorted({fixed_scratch} | {max(fixed_scratch, o.scratch_bytes) for _, opts in layers for o in opts})
    best, best_key = None, None
    for cap in caps:
        allowed = [[o for o in opts if o.scratch_bytes <= cap] for _, opts in layers]
        if any(not a for a in allowed):
            continue
        choice = [min(a, key=lambda o: (held(o), o.scratch_bytes, o.seconds)) for a in allowed]
        slack = budget - fixed_bytes - cap - sum(held(o) for o in choice)
        if slack < 0:
            continue
        while True:
            pick = None
            for i, a in enumerate(allowed):
                cur = choice[i]
                for o in a:
                    extra = held(o) - held(cur)
                    gain = cur.seconds - o.seconds
                    if gain <= 0 or extra > slack:
                        continue
                    rate = gain / max(extra, 1)
                    if pick is None or rate > pick[0]:
                        pick = (rate, i, o)
            if pick is None:
                break
            _, i, o = pick
            slack -= held(o) - held(choice[i])
            choice[i] = o
        total_s = sum(o.seconds for o in choice)
        total_b = fixed_bytes + max([fixed_scratch] + [o.scratch_bytes for o in choice]) + sum(held(o) for o in choice)
        key = (total_s, total_b)
        if best is None or key < best_key:
            best, best_key = list(choice), key
    return Fit(best, minimum, minimum_choice)


def budget_message(what: str, budget: int, minimum: int, choice: list, layers: list, fixed_bytes: int,
                   fixed_scratch: int) -> str:
    """What did not fit, the smallest budget that would, and, when the scratch of streamed layers' chunks is what
    keeps the model out of the budget, which layer and chunk size: repacking with smaller chunks lowers that floor."""
    weights = sum(held(o) for o in choice)
    scratch = max([fixed_scratch] + [o.scratch_bytes for o in choice])
    msg = (f"{what}: memory budget {budget:,} B ({kib(budget)}) is too small; the smallest plan needs {minimum:,} B "
           f"({kib(minimum)}) = weights {weights:,} B + constants and arena {fixed_bytes:,} B + scratch "
           f"{scratch:,} B (mapped file bytes counted); load with memory_budget >= {minimum}")
    modes = ", ".join(f"{name} {o.mode}" for (name, _), o in zip(layers, choice))
    if modes:
        msg += f". Frugal plan: {modes}"
    # the same plan if streamed layers decoded chunks of (nearly) no size
    relaxed = [(name, [replace(o, scratch_bytes=0) if o.mode == "streamed" else o for o in opts])
               for name, opts in layers]
    floor, _ = _smallest(relaxed, fixed_bytes, fixed_scratch)
    coarse = [(name, o) for name, opts in layers for o in opts if o.mode == "streamed" and o.scratch_bytes > 0]
    if floor is not None and floor <= budget and coarse:
        name, o = max(coarse, key=lambda c: c[1].scratch_bytes)
        msg += (f". The packer's chunking is too coarse for this budget: streamed, layer '{name}' decodes {o.note} "
                f"into {o.scratch_bytes:,} B of scratch, and with small chunks the smallest plan would approach "
                f"{floor:,} B; repack with a smaller chunk_symbols (e.g. `[layers.\"{name}\"] chunk_symbols = 1024`)")
    return msg
