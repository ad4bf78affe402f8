"""Static memory planner: tensor lifetimes -> offsets in one arena (greedy by size, first fitting gap, as TFLite
Micro's greedy planner), with optional in-place reuse of an input that dies at the step its output is made, and
block views: a tensor placed as a contiguous part of another (a Concat's input inside its output, a Split's output
inside its input), so that the op between them has nothing to copy.
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
class BlockView:
    """A request: `tensor` may be the bytes [offset, offset + its nbytes) of `within`, because its value is that part
    of within's value for both their lifetimes (a Concat's input in its output when every dimension before the axis
    is 1; a Split's or Slice's output in its input likewise). The op between them then copies nothing.

    The planner honours a request (ArenaPlan.views) when (the rule):
      - both tensors are in the table, `tensor` has bytes, and the part lies inside `within`;
      - `tensor` (with its in-place chain) is not yet inside another tensor: one container each; a second request
        for it (a tensor in two Concats, or twice in one) is honoured only where it is already at that very place
        (a Split's outputs inside a Concat's output through their Split's input);
      - the part does not overlap another tensor already placed directly inside `within` (parts are disjoint);
      - the tensors that would share bytes and are live at a common step hold the same values there: `tensor` or
        a tensor inside it by views, with `within` or a tensor it lies inside by views. Not so for the others of an
        in-place chain (TensorLife.alias_of, honoured: the chain shares one buffer): an output written in place over
        `tensor` while `within` is still read (or over `within` while `tensor` is) would change it;
      - the tensors sharing the buffer stay few (MAX_VIEW_GROUP).
    Requests are taken in the order given (the executor gives them in step order). A buffer shared this way lives
    from the first step of any tensor in it to the last step of any: nothing else is placed over it meanwhile.
    Which tensors may be views at all (graph inputs and outputs not, constants are not in the table) is the
    caller's choice: it knows the ops."""

    tensor: str
    within: str
    offset: int  # bytes from the start of `within`


@dataclass(frozen=True)
class ArenaPlan:
    offsets: dict[str, int]  # byte offset of each tensor in the arena: multiples of `alignment`, except views (below)
    arena_bytes: int
    peak_live_bytes: int  # max over steps of the (aligned) bytes that must be live at once: a lower bound on arena
    alignment: int = ALIGNMENT
    aliases: dict[str, str] = field(default_factory=dict)  # tensor -> input whose buffer it reuses (honoured only)
    tensors: tuple[TensorLife, ...] = ()
    # honoured BlockViews: tensor -> (the tensor it lies in, byte offset there); its offset is within's plus that
    views: dict[str, tuple[str, int]] = field(default_factory=dict)

    def holders(self, name: str) -> set[str]:
        """The tensors whose bytes hold `name`'s by the plan's own choice: the inputs it was written in place of and
        the tensors it is a view inside, transitively (and theirs). Two tensors live at the same step may overlap in
        the arena only when one is among the other's holders."""
        out, todo = set(), [name]
        while todo:
            t = todo.pop()
            for h in (self.aliases.get(t), self.views.get(t, (None,))[0]):
                if h is not None and h not in out:
                    out.add(h)
                    todo.append(h)
        return out


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


# The most tensors one buffer may hold through block views (a Concat's output, its inputs, their in-place chains,
# Split outputs inside them...): real models have a few to a dozen; the bound keeps each request's checks small.
MAX_VIEW_GROUP = 64


def plan_arena(tensors: list[TensorLife], alignment: int = ALIGNMENT, views=()) -> ArenaPlan:
    """Place every tensor in one arena so that no two tensors with intersecting lifetimes overlap in memory, except
    a tensor and the input it overwrites in place (aliases) and a tensor and the one it is a view of (`views`:
    BlockView requests, honoured by the rule in BlockView's docstring). Near-linear in the number of tensors:
    O(n log n + intersecting pairs) (see MAX_GREEDY_PAIRS), plus O(MAX_VIEW_GROUP^2) per view request."""
    tensors = list(tensors)
    _validate(tensors, alignment)
    aliases = _resolve_aliases(tensors)

    # a chain is one buffer's worth: a tensor and the tensors that reuse it in place. Aliases point to tensors made
    # at an earlier step, so resolving in step order finds every root in one pass (no walk per tensor).
    roots: dict[str, str] = {}
    for t in sorted(tensors, key=lambda t: (t.first, t.name)):
        src = aliases.get(t.name)
        roots[t.name] = roots.get(src, src) if src is not None else t.name
    chains: dict[str, list[TensorLife]] = {}
    for t in tensors:
        chains.setdefault(roots[t.name], []).append(t)
    # a block is one buffer of the arena: a chain and the chains placed inside it (views), recursively
    parent, honoured = _resolve_views(tensors, roots, chains, views)
    top: dict[str, tuple[str, int]] = {}  # chain root -> (its block's root, its byte offset in the block)

    def locate(r: str) -> tuple[str, int]:
        if r not in top:
            p = parent.get(r)
            if p is None:
                top[r] = (r, 0)
            else:
                b, o = locate(p[0])
                top[r] = (b, o + p[1])
        return top[r]

    spans: dict[str, list[int]] = {}  # block root -> [first, last]
    for r, ts in chains.items():
        b = locate(r)[0]
        first, last = min(t.first for t in ts), max(t.last for t in ts)
        span = spans.setdefault(b, [first, last])
        span[0], span[1] = min(span[0], first), max(span[1], last)
    blocks = []  # (aligned size, first, last, root name)
    for name, (first, last) in spans.items():
        blocks.append((_align(chains[name][0].nbytes, alignment), first, last, name))

    adjacency = _intersections(blocks, MAX_GREEDY_PAIRS)
    block_offset = _greedy_by_size(blocks, adjacency) if adjacency is not None else _in_step_order(blocks)

    offsets = {}
    for t in tensors:
        b, o = locate(roots[t.name])
        offsets[t.name] = block_offset[b] + o
    arena = max((block_offset[b[3]] + b[0] for b in blocks), default=0)
    return ArenaPlan(offsets=offsets, arena_bytes=arena, peak_live_bytes=_peak([b[:3] for b in blocks]),
                     alignment=alignment, aliases=aliases, tensors=tuple(tensors), views=honoured)


def _resolve_views(tensors: list[TensorLife], roots: dict[str, str], chains: dict[str, list[TensorLife]],
                   views) -> tuple[dict, dict]:
    """The view requests honoured (BlockView's rule), in the order given. Returns (parent: chain root -> (chain root
    of the tensor it lies in, byte offset there), honoured: tensor -> (within, offset) as requested)."""
    by_name = {t.name: t for t in tensors}
    parent: dict[str, tuple[str, int]] = {}
    placed: dict[str, tuple[str, str]] = {}  # chain root -> (its tensor that was placed, the tensor it lies in)
    kids: dict[str, list[tuple[int, int, str]]] = {}  # chain root -> (start, end, chain root) of the chains in it
    count = {r: len(ts) for r, ts in chains.items()}  # tensors of a block (kept up to date at its root)
    honoured: dict[str, tuple[str, int]] = {}

    def up(r: str) -> tuple[str, int, list[str]]:
        """(block root, offset of chain r in it, the chains from r up to the root)."""
        line, off = [r], 0
        while r in parent:
            r, o = parent[r]
            off += o
            line.append(r)
        return r, off, line

    def inside(r: str) -> list[TensorLife]:
        out, todo = [], [r]
        while todo:
            c = todo.pop()
            out += chains[c]
            todo += [k for _, _, k in kids.get(c, ())]
        return out

    def same_below(name: str) -> set[str]:
        """name and the tensors placed inside it, and inside those...: the tensors whose values are parts of its."""
        out, todo = {name}, [name]
        while todo:
            n = todo.pop()
            for _, _, k in kids.get(roots[n], ()):
                if placed[k][1] == n:
                    out.add(placed[k][0])
                    todo.append(placed[k][0])
        return out

    def same_above(name: str) -> set[str]:
        """name and the tensors it lies inside, and those lie inside...: the tensors its value is a part of."""
        out, r = {name}, roots[name]
        while r in parent and placed[r][0] == name:
            name = placed[r][1]
            out.add(name)
            r = roots[name]
        return out

    for v in views:
        t, c = by_name.get(v.tensor), by_name.get(v.within)
        if t is None or c is None or not t.nbytes or v.offset < 0 or v.offset + t.nbytes > c.nbytes:
            continue
        bt, bc = roots[t.name], roots[c.name]
        rt, pt, _ = up(bt)
        rc, pc, line = up(bc)
        if rt == rc:  # already in one buffer: honoured where it is already at that place
            if pt == pc + v.offset:
                honoured.setdefault(t.name, (c.name, v.offset))  # where it was placed, if it was
            continue
        if bt in parent or count[rt] + count[rc] > MAX_VIEW_GROUP:
            continue
        lo, hi = v.offset, v.offset + t.nbytes
        if any(s < hi and lo < e for s, e, _ in kids.get(bc, ())):
            continue
        # every tensor of t's block would share bytes with every tensor of the chains from c's up to its block root:
        # those live at a common step must hold the same values there
        below, above = same_below(t.name), same_above(c.name)
        if any(m.first <= a.last and a.first <= m.last and not (m.name in below and a.name in above)
               for m in inside(bt) for r in line for a in chains[r]):
            continue
        parent[bt] = (bc, v.offset)
        placed[bt] = (t.name, c.name)
        kids.setdefault(bc, []).append((lo, hi, bt))
        count[rc] += count[rt]
        honoured[t.name] = (c.name, v.offset)
    return parent, honoured


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
    lines = [f"{'tensor':<{name_w}}  {'offset':>12}  {'bytes':>12}  {'steps':>11}  in place of / part of",
             "-" * (name_w + 65)]
    for t in rows:
        steps = f"{t.first}..{t.last}"
        shared = plan.aliases.get(t.name, "")
        if t.name in plan.views:
            within, at = plan.views[t.name]
            shared = f"{within} +{at:,}"
        lines.append(f"{t.name:<{name_w}}  {plan.offsets[t.name]:>12,}  {t.nbytes:>12,}  {steps:>11}  "
                     f"{shared}".rstrip())
    ratio = f" ({plan.arena_bytes / plan.peak_live_bytes:.2f}x peak)" if plan.peak_live_bytes else ""
    lines.append(f"arena {plan.arena_bytes:,} bytes{ratio}; peak live {plan.peak_live_bytes:,} bytes; "
                 f"{len(plan.tensors)} tensors, {len(plan.aliases)} in place, {len(plan.views)} views; "
                 f"alignment {plan.alignment}")
    return "\n".join(lines)
