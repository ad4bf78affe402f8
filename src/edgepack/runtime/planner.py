"""Static memory planner: tensor lifetimes -> offsets in one arena (greedy by size, first fitting gap, as TFLite
Micro's greedy planner), with optional in-place reuse of an input that dies at the step its output is made.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass, field

from edgepack.runtime.errors import FormatError

ALIGNMENT = 64


@dataclass(frozen=True)
class TensorLife:
    """A tensor needing `nbytes` of arena from step `first` (its producer) to step `last` (its last consumer;
    graph outputs: the final step), both inclusive.

    alias_of: the name of an input of the producing node that the op may overwrite (an `inplace_ok` op). The
    planner honours it only when that input was made before `first` and its last step is `first` (this node is its
    last reader), it has the same nbytes, and no other tensor already took it; otherwise the tensor gets its own place.
    """

    name: str
    nbytes: int
    first: int
    last: int
    alias_of: str | None = None


@dataclass(frozen=True)
class ArenaPlan:
    offsets: dict[str, int]  # byte offset of each tensor in the arena; multiples of `alignment`
    arena_bytes: int
    peak_live_bytes: int  # max over steps of the (aligned) bytes that must be live at once: a lower bound on arena
    alignment: int = ALIGNMENT
    aliases: dict[str, str] = field(default_factory=dict)  # tensor -> input whose buffer it reuses (honoured only)
    tensors: tuple[TensorLife, ...] = ()


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def _validate(tensors: list[TensorLife], alignment: int) -> None:
    if alignment < 1 or alignment & (alignment - 1):
        raise ValueError(f"alignment must be a power of two, found {alignment}")
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise FormatError(f"tensor '{t.name}' appears twice in the lifetime table")
        seen.add(t.name)
        if not isinstance(t.nbytes, int) or t.nbytes < 0:
            raise FormatError(f"tensor '{t.name}': nbytes must be an int >= 0, found {t.nbytes!r}")
        if t.first > t.last:
            raise FormatError(f"tensor '{t.name}': lifetime first step {t.first} > last step {t.last}")
    for t in tensors:
        if t.alias_of is not None and t.alias_of not in seen:
            raise FormatError(f"tensor '{t.name}': alias_of names unknown tensor '{t.alias_of}'")


def _resolve_aliases(tensors: list[TensorLife]) -> dict[str, str]:
    """Honoured aliases, tensor -> the input it overwrites. Chains (a -> b -> c) share one buffer."""
    by_name = {t.name: t for t in tensors}
    taken: set[str] = set()
    aliases: dict[str, str] = {}
    # in step order so that a chain is built front to back; names break ties for determinism
    for t in sorted(tensors, key=lambda t: (t.first, t.name)):
        src = by_name.get(t.alias_of) if t.alias_of is not None else None
        # src.first < t.first: an input is made before its reader; this also keeps a chain's ends apart in time
        if (src is None or src.name in taken or src.nbytes != t.nbytes
                or not src.first < src.last == t.first):
            continue
        taken.add(src.name)
        aliases[t.name] = src.name
    return aliases


def _peak(blocks: list[tuple[int, int, int]]) -> int:
    """Max over steps of the summed size of blocks (size, first, last) alive at that step."""
    events = []
    for size, first, last in blocks:
        events.append((first, 1, size))
        events.append((last + 1, 0, -size))  # ends sort before starts at the same step
    live = peak = 0
    for _, _, delta in sorted(events):
        live += delta
        peak = max(peak, live)
    return peak


# Greedy by size compares each block with every placed block whose lifetime intersects its own. Up to this many
# intersecting pairs it does (what real models have: a few per tensor); beyond it (tens of thousands of tensors alive
# at once, e.g. a graph with 100,000 outputs), blocks are placed in step order into the lowest free gap instead, in
# O(n log n + gaps) time.
MAX_GREEDY_PAIRS = 2_000_000


def plan_arena(tensors: list[TensorLife], alignment: int = ALIGNMENT) -> ArenaPlan:
    """Place every tensor in one arena so that no two tensors with intersecting lifetimes overlap in memory.
    Near-linear in the number of tensors: O(n log n + intersecting pairs) (see MAX_GREEDY_PAIRS)."""
    tensors = list(tensors)
    _validate(tensors, alignment)
    aliases = _resolve_aliases(tensors)

    # a block is one buffer: a tensor and the chain of tensors that reuse it in place. Aliases point to tensors made
    # at an earlier step, so resolving in step order finds every root in one pass (no walk per tensor).
    roots: dict[str, str] = {}
    for t in sorted(tensors, key=lambda t: (t.first, t.name)):
        src = aliases.get(t.name)
        roots[t.name] = roots.get(src, src) if src is not None else t.name
    members: dict[str, list[TensorLife]] = {}
    for t in tensors:
        members.setdefault(roots[t.name], []).append(t)
    blocks = []  # (aligned size, first, last, root name)
    for name, ts in members.items():
        blocks.append((_align(ts[0].nbytes, alignment), min(t.first for t in ts), max(t.last for t in ts), name))

    adjacency = _intersections(blocks, MAX_GREEDY_PAIRS)
    block_offset = _greedy_by_size(blocks, adjacency) if adjacency is not None else _in_step_order(blocks)

    offsets = {t.name: block_offset[roots[t.name]] for t in tensors}
    arena = max((block_offset[b[3]] + b[0] for b in blocks), default=0)
    return ArenaPlan(offsets=offsets, arena_bytes=arena, peak_live_bytes=_peak([b[:3] for b in blocks]),
                     alignment=alignment, aliases=aliases, tensors=tuple(tensors))


def _intersections(blocks: list[tuple], cap: int) -> list[list[int]] | None:
    """For each block (with bytes), the indices of the other blocks with bytes whose lifetimes intersect its own; None
    when there are more than `cap` such pairs. A sweep over steps: O(n log n + pairs)."""
    order = sorted((i for i, b in enumerate(blocks) if b[0]), key=lambda i: blocks[i][1])
    adjacency: list[list[int]] = [[] for _ in blocks]
    live: list[tuple[int, int]] = []  # heap of (last, index)
    pairs = 0
    for i in order:
        first = blocks[i][1]
        while live and live[0][0] < first:
            heapq.heappop(live)
        pairs += len(live)
        if pairs > cap:
            return None
        for _, j in live:
            adjacency[i].append(j)
            adjacency[j].append(i)
        heapq.heappush(live, (blocks[i][2], i))
    return adjacency


def _greedy_by_size(blocks: list[tuple], adjacency: list[list[int]]) -> dict[str, int]:
    """Largest block first, each at the lowest offset where it overlaps no placed block it shares a step with
    (TFLite Micro's greedy planner)."""
    offset_of: list[int | None] = [None] * len(blocks)
    block_offset: dict[str, int] = {}
    for i in sorted(range(len(blocks)), key=lambda i: (-blocks[i][0], blocks[i][3])):
        size, name = blocks[i][0], blocks[i][3]
        offset = 0
        if size:
            conflicts = sorted((offset_of[j], offset_of[j] + blocks[j][0]) for j in adjacency[i]
                               if offset_of[j] is not None)
            for o, e in conflicts:
                if offset + size <= o:
                    break  # the gap below this neighbour fits
                offset = max(offset, e)
            offset_of[i] = offset
        block_offset[name] = offset
    return block_offset


def _in_step_order(blocks: list[tuple]) -> dict[str, int]:
    """Blocks in order of their first step, each into the lowest free gap that holds it (freed blocks' space is
    merged with its free neighbours), else at the top of the arena."""
    block_offset: dict[str, int] = {}
    free: list[tuple[int, int]] = []  # sorted, disjoint, non-adjacent (offset, end) gaps below `top`
    top = 0
    live: list[tuple[int, int, int]] = []  # heap of (last, offset, size)

    def release(o: int, e: int) -> None:
        nonlocal top
        k = bisect.bisect_left(free, (o, e))
        if k > 0 and free[k - 1][1] == o:
            k -= 1
            o = free.pop(k)[0]
        if k < len(free) and free[k][0] == e:
            e = free.pop(k)[1]
        if e == top:
            top = o
        else:
            free.insert(k, (o, e))

    for size, first, last, name in sorted(blocks, key=lambda b: (b[1], -b[0], b[3])):
        if not size:
            block_offset[name] = 0
            continue
        while live and live[0][0] < first:
            _, o, sz = heapq.heappop(live)
            release(o, o + sz)
        for k, (o, e) in enumerate(free):
            if e - o >= size:
                if e - o == size:
                    free.pop(k)
                else:
                    free[k] = (o + size, e)
                break
        else:
            o = top
            top += size
        block_offset[name] = o
        heapq.heappush(live, (last, o, size))
    return block_offset


def format_plan(plan: ArenaPlan) -> str:
    """A table of the plan, one row per tensor in arena order, and a summary line."""
    rows = sorted(plan.tensors, key=lambda t: (plan.offsets[t.name], t.first, t.name))
    name_w = max([len("tensor")] + [len(t.name) for t in rows])
    lines = [f"{'tensor':<{name_w}}  {'offset':>12}  {'bytes':>12}  {'steps':>11}  in place of",
             "-" * (name_w + 55)]
    for t in rows:
        steps = f"{t.first}..{t.last}"
        lines.append(f"{t.name:<{name_w}}  {plan.offsets[t.name]:>12,}  {t.nbytes:>12,}  {steps:>11}  "
                     f"{plan.aliases.get(t.name, '')}".rstrip())
    ratio = f" ({plan.arena_bytes / plan.peak_live_bytes:.2f}x peak)" if plan.peak_live_bytes else ""
    lines.append(f"arena {plan.arena_bytes:,} bytes{ratio}; peak live {plan.peak_live_bytes:,} bytes; "
                 f"{len(plan.tensors)} tensors, {len(plan.aliases)} in place; alignment {plan.alignment}")
    return "\n".join(lines)
