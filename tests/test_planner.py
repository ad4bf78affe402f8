"""The arena planner (runtime/planner.py): invariants over random lifetimes (no live overlap, alignment, arena >=
peak, determinism, in-place aliasing rules), block views (BlockView: the rule's cases one by one, and random requests
against a brute-force check of overlaps and in-place writes), known small cases, validation errors and the printed
table.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.runtime.errors import FormatError
from edgepack.runtime.planner import (ALIGNMENT, MAX_VIEW_GROUP, ArenaPlan, BlockView, TensorLife, format_plan,
                                      plan_arena)


def aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def brute_peak(tensors, aliases=None) -> int:
    """Reference peak: step by step, the aligned bytes of distinct buffers alive (an alias shares its input's)."""
    aliases = aliases or {}
    steps = range(min(t.first for t in tensors), max(t.last for t in tensors) + 1)
    peak = 0
    for s in steps:
        alive = {t.name for t in tensors if t.first <= s <= t.last}
        # an output written in place of its input at this step needs no bytes of its own
        own = [t for t in tensors if t.name in alive and not (aliases.get(t.name) in alive)]
        peak = max(peak, sum(aligned(t.nbytes) for t in own))
    return peak


def check_invariants(tensors: list[TensorLife], plan: ArenaPlan) -> None:
    by_name = {t.name: t for t in tensors}
    assert set(plan.offsets) == set(by_name)

    def in_view(name):  # a view, or in an in-place chain with one: its place is exact, not aligned
        chain = {name} | plan.holders(name) | {u for u in plan.aliases if name in plan.holders(u)}
        return any(h in plan.views for h in chain)

    for t in tensors:
        o = plan.offsets[t.name]
        assert o >= 0 and (o % ALIGNMENT == 0 or in_view(t.name))
        assert o + t.nbytes <= plan.arena_bytes
    for name, (within, at) in plan.views.items():
        t, c = by_name[name], by_name[within]
        assert plan.offsets[name] == plan.offsets[within] + at and at + t.nbytes <= c.nbytes
    for name, src in plan.aliases.items():
        t, s = by_name[name], by_name[src]
        assert t.alias_of == src and s.first < s.last == t.first and s.nbytes == t.nbytes
        assert plan.offsets[name] == plan.offsets[src]
    for i, a in enumerate(tensors):
        for b in tensors[i + 1:]:
            if not (a.first <= b.last and b.first <= a.last) or not a.nbytes or not b.nbytes:
                continue
            if b.name in plan.holders(a.name) or a.name in plan.holders(b.name):
                continue  # the in-place pair (live together only at the step that overwrites the input), or a view
            oa, ob = plan.offsets[a.name], plan.offsets[b.name]
            if in_view(a.name) or in_view(b.name):
                assert oa + a.nbytes <= ob or ob + b.nbytes <= oa, (a, b, oa, ob)
            else:
                assert oa + aligned(a.nbytes) <= ob or ob + aligned(b.nbytes) <= oa, (a, b, oa, ob)
    # an output written in place (at its first step w) over bytes that another tensor holds too: that tensor is not
    # made before w and read at or after w (it would read the new values)
    for u, m in plan.aliases.items():
        w, ou, nu = by_name[u].first, plan.offsets[u], by_name[u].nbytes
        for v in tensors:
            if v.name in (u, m) or not v.nbytes or not (ou < plan.offsets[v.name] + v.nbytes and
                                                        plan.offsets[v.name] < ou + nu):
                continue
            assert not v.first < w <= v.last, (u, m, v)
    assert plan.arena_bytes >= plan.peak_live_bytes


@st.composite
def lifetimes(draw, with_aliases=False):
    n = draw(st.integers(1, 24))
    tensors = []
    for i in range(n):
        first = draw(st.integers(0, 15))
        last = first + draw(st.integers(0, 8))
        nbytes = draw(st.one_of(st.integers(0, 5000), st.sampled_from([64, 128, 4096])))
        alias = None
        if with_aliases and i and draw(st.booleans()):
            alias = f"t{draw(st.integers(0, i - 1))}"
        tensors.append(TensorLife(f"t{i}", nbytes, first, last, alias))
    if with_aliases:
        # make some aliases valid: the input dies exactly where the output is born, with the same size
        for i, t in enumerate(tensors):
            if t.alias_of is not None and draw(st.booleans()):
                src = tensors[int(t.alias_of[1:])]
                if src.first < t.first:
                    tensors[int(t.alias_of[1:])] = TensorLife(src.name, t.nbytes, src.first, t.first, src.alias_of)
    return tensors


@settings(max_examples=300, deadline=None)
@given(lifetimes())
def test_random_lifetimes_never_overlap_while_live(tensors):
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)
    assert plan.aliases == {}
    assert plan.peak_live_bytes == brute_peak(tensors)


@settings(max_examples=300, deadline=None)
@given(lifetimes(with_aliases=True))
def test_random_aliases_keep_invariants(tensors):
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)
    assert plan.peak_live_bytes == brute_peak(tensors, plan.aliases)


@settings(max_examples=100, deadline=None)
@given(lifetimes(with_aliases=True), st.randoms(use_true_random=False))
def test_plan_is_deterministic_and_order_independent(tensors, rnd):
    plan = plan_arena(tensors)
    assert plan_arena(list(tensors)) == plan
    shuffled = list(tensors)
    rnd.shuffle(shuffled)
    again = plan_arena(shuffled)
    assert again.offsets == plan.offsets and again.arena_bytes == plan.arena_bytes
    assert again.aliases == plan.aliases and again.peak_live_bytes == plan.peak_live_bytes


def test_chain_reaches_peak():
    # conv -> pool -> conv -> fc: each activation lives from its producer to its one consumer
    sizes = [100, 300, 200, 50]
    tensors = [TensorLife(f"a{i}", n, i, i + 1) for i, n in enumerate(sizes)]
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)
    assert plan.peak_live_bytes == aligned(300) + aligned(200) == 576
    assert plan.arena_bytes == plan.peak_live_bytes


def test_disjoint_lifetimes_share_offset_zero():
    tensors = [TensorLife("a", 1000, 0, 1), TensorLife("b", 500, 2, 3), TensorLife("c", 800, 4, 4)]
    plan = plan_arena(tensors)
    assert set(plan.offsets.values()) == {0}
    assert plan.arena_bytes == aligned(1000)


def test_first_fit_uses_the_gap_below_a_neighbour():
    # big lives 0..1 at offset 0; mid lives 1..2 above it; small lives 2..3 and fits back at 0 once big is dead
    tensors = [TensorLife("big", 4096, 0, 1), TensorLife("mid", 1024, 1, 2), TensorLife("small", 512, 2, 3)]
    plan = plan_arena(tensors)
    assert plan.offsets == {"big": 0, "mid": 4096, "small": 0}
    assert plan.arena_bytes == 5120 == plan.peak_live_bytes


def test_alignment_and_zero_sized_tensors():
    tensors = [TensorLife("a", 1, 0, 2), TensorLife("b", 65, 0, 2), TensorLife("empty", 0, 0, 2)]
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)
    assert sorted(plan.offsets[n] for n in ("a", "b")) == [0, 128]
    assert plan.arena_bytes == 192 and plan.peak_live_bytes == 192
    assert plan_arena([]).arena_bytes == 0


def test_inplace_chain_shares_one_buffer():
    # x -> Conv -> c -> Relu (in place) -> r -> Add(r, skip) (in place) -> y; skip lives throughout
    tensors = [
        TensorLife("x", 4096, 0, 0), TensorLife("skip", 4096, 0, 2), TensorLife("c", 4096, 0, 1),
        TensorLife("r", 4096, 1, 2, alias_of="c"), TensorLife("y", 4096, 2, 3, alias_of="r"),
    ]
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)
    assert plan.aliases == {"r": "c", "y": "r"}
    assert plan.offsets["c"] == plan.offsets["r"] == plan.offsets["y"]
    assert plan.arena_bytes == 3 * 4096 == plan.peak_live_bytes


@pytest.mark.parametrize("src,why", [
    (TensorLife("c", 4096, 0, 2), "input still read after this step"),
    (TensorLife("c", 2048, 0, 1), "sizes differ"),
    (TensorLife("c", 4096, 1, 1), "input produced at the same step"),
])
def test_invalid_alias_is_ignored(src, why):
    tensors = [src, TensorLife("r", 4096, 1, 2, alias_of="c")]
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)
    assert plan.aliases == {}, why


def test_one_input_is_overwritten_by_at_most_one_output():
    tensors = [TensorLife("c", 256, 0, 1), TensorLife("p", 256, 1, 2, alias_of="c"),
               TensorLife("q", 256, 1, 2, alias_of="c")]
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)
    assert plan.aliases == {"p": "c"}
    assert plan.offsets["q"] != plan.offsets["p"]


@pytest.mark.parametrize("tensors,msg", [
    ([TensorLife("a", 8, 0, 1), TensorLife("a", 8, 2, 3)], "tensor 'a' appears twice"),
    ([TensorLife("a", -1, 0, 1)], "tensor 'a': nbytes must be an int >= 0, found -1"),
    ([TensorLife("a", 8, 3, 1)], "tensor 'a': lifetime first step 3 > last step 1"),
    ([TensorLife("a", 8, 0, 1, alias_of="zz")], "tensor 'a': alias_of names unknown tensor 'zz'"),
])
def test_invalid_lifetimes_raise(tensors, msg):
    with pytest.raises(FormatError, match=msg):
        plan_arena(tensors)


def test_format_plan_table():
    tensors = [TensorLife("conv1_out", 4096, 0, 1), TensorLife("relu1_out", 4096, 1, 2, alias_of="conv1_out"),
               TensorLife("fc_out", 40, 2, 3)]
    text = format_plan(plan_arena(tensors))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["tensor", "offset", "bytes", "steps"]
    tensors, views = _concat([400, 1000], [0, 1], 2, 3)
    assert any(line.startswith("p1") and line.endswith("y +400") for line in format_plan(
        plan_arena(tensors, views=views)).splitlines())
    assert any(line.startswith("relu1_out") and line.endswith("conv1_out") for line in lines)
    assert "fc_out" in text and "4,096" in text
    assert lines[-1].startswith("arena 4,160 bytes (1.00x peak); peak live 4,160 bytes; 3 tensors, 1 in place")


def test_large_graph_is_quick_and_valid():
    rnd = random.Random(7)
    tensors = []
    for i in range(400):
        first = rnd.randrange(0, 300)
        tensors.append(TensorLife(f"t{i}", rnd.randrange(1, 1 << 16), first, first + rnd.randrange(1, 6)))
    plan = plan_arena(tensors)
    check_invariants(tensors, plan)


# ------------------------------------------------------------------------------------------------ block views

def _concat(parts, first_steps, cat_step, last):
    """Inputs p0.. (bytes `parts`, made at first_steps, read by the Concat at cat_step) and the output y."""
    tensors = [TensorLife(f"p{i}", n, f, cat_step) for i, (n, f) in enumerate(zip(parts, first_steps))]
    tensors.append(TensorLife("y", sum(parts), cat_step, last))
    offsets = [sum(parts[:i]) for i in range(len(parts))]
    return tensors, [BlockView(f"p{i}", "y", o) for i, o in enumerate(offsets)]


def test_concat_inputs_are_placed_in_its_output():
    tensors, views = _concat([400, 1000, 4], [0, 1, 2], 3, 4)
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert plan.views == {"p0": ("y", 0), "p1": ("y", 400), "p2": ("y", 1400)}
    assert [plan.offsets[f"p{i}"] - plan.offsets["y"] for i in range(3)] == [0, 400, 1400]
    # one buffer, live from p0's first step: 1,404 bytes (aligned) where the inputs and the output took twice that
    assert plan.arena_bytes == plan.peak_live_bytes == aligned(1404)
    assert plan_arena(tensors).arena_bytes == aligned(400) + aligned(1000) + aligned(4) + aligned(1404)


@pytest.mark.parametrize("view,why", [
    (BlockView("p0", "y", 1200), "past the end of y"),
    (BlockView("p0", "y", -4), "before y"),
    (BlockView("p0", "nope", 0), "unknown container"),
    (BlockView("empty", "y", 0), "a tensor without bytes"),
])
def test_views_that_do_not_fit_are_ignored(view, why):
    tensors = [TensorLife("p0", 400, 0, 1), TensorLife("y", 1400, 1, 2), TensorLife("empty", 0, 0, 1)]
    plan = plan_arena(tensors, views=[view])
    check_invariants(tensors, plan)
    assert plan.views == {}, why


def test_one_container_each():
    # p0 in two Concats (y, then z), and twice in z: only its first place holds
    tensors = [TensorLife("p0", 256, 0, 3), TensorLife("p1", 256, 1, 3), TensorLife("y", 512, 2, 4),
               TensorLife("z", 768, 3, 4)]
    views = [BlockView("p0", "y", 0), BlockView("p1", "y", 256), BlockView("p0", "z", 0), BlockView("p1", "z", 256),
             BlockView("p0", "z", 512)]
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert plan.views == {"p0": ("y", 0), "p1": ("y", 256)}


def test_parts_of_one_container_are_disjoint():
    tensors = [TensorLife("a", 256, 0, 2), TensorLife("b", 256, 1, 2), TensorLife("y", 384, 2, 3)]
    plan = plan_arena(tensors, views=[BlockView("a", "y", 0), BlockView("b", "y", 128)])
    check_invariants(tensors, plan)
    assert plan.views == {"a": ("y", 0)}


def test_split_inside_concat_is_one_buffer():
    # s -> Split -> a, b (step 1); d made at 2; Concat(a, b, d) -> y at 3. s inside y, a and b inside s.
    tensors = [TensorLife("s", 512, 0, 1), TensorLife("a", 256, 1, 3), TensorLife("b", 256, 1, 3),
               TensorLife("d", 256, 2, 3), TensorLife("y", 768, 3, 4)]
    views = [BlockView("a", "s", 0), BlockView("b", "s", 256), BlockView("s", "y", 0), BlockView("a", "y", 0),
             BlockView("b", "y", 256), BlockView("d", "y", 512)]
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert plan.views == {"a": ("s", 0), "b": ("s", 256), "s": ("y", 0), "d": ("y", 512)}
    assert plan.holders("a") == {"s", "y"}
    assert plan.arena_bytes == plan.peak_live_bytes == 768
    # the other order (Concat(b, a)): a and b stay in s, y copies them
    views = [BlockView("a", "s", 0), BlockView("b", "s", 256), BlockView("b", "y", 0), BlockView("a", "y", 256)]
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert plan.views == {"a": ("s", 0), "b": ("s", 256)}


def test_in_place_writes_decide():
    # p0 read by the Concat at 2, then overwritten in place by g at 3 while y is read until 4: p0 stays out of y
    base = [TensorLife("p0", 256, 0, 3), TensorLife("p1", 256, 1, 2), TensorLife("y", 512, 2, 4)]
    views = [BlockView("p0", "y", 0), BlockView("p1", "y", 256)]
    tensors = base + [TensorLife("g", 256, 3, 4, alias_of="p0")]
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert plan.aliases == {"g": "p0"} and plan.views == {"p1": ("y", 256)}
    # y dead before g overwrites p0: the view holds, g's write lands in y's old bytes
    tensors = base[:2] + [TensorLife("y", 512, 2, 2), TensorLife("g", 256, 3, 4, alias_of="p0")]
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert set(plan.views) == {"p0", "p1"}
    # y overwritten in place by r at 3 while p1 is still read at 3 and later: p1 stays out of y
    tensors = [TensorLife("p0", 256, 0, 2), TensorLife("p1", 256, 1, 5), TensorLife("y", 512, 2, 3),
               TensorLife("r", 512, 3, 4, alias_of="y")]
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert plan.aliases == {"r": "y"} and plan.views == {"p0": ("y", 0)}
    # an input made in place of another (its chain moves with it: q0's bytes are p1's place in y)
    tensors = [TensorLife("p0", 256, 0, 3), TensorLife("q0", 256, 0, 1), TensorLife("p1", 256, 1, 3, alias_of="q0"),
               TensorLife("y", 512, 3, 4)]
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert set(plan.views) == {"p0", "p1"} and plan.offsets["q0"] == plan.offsets["y"] + 256


def test_view_groups_stay_small():
    n = MAX_VIEW_GROUP + 8
    tensors, views = _concat([64] * n, [0] * n, 1, 2)
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    assert len(plan.views) == MAX_VIEW_GROUP - 1  # with y itself: MAX_VIEW_GROUP tensors in the buffer


@st.composite
def lifetimes_and_views(draw):
    tensors = draw(lifetimes(with_aliases=True))
    views = []
    for _ in range(draw(st.integers(0, 10))):
        t, c = draw(st.sampled_from(tensors)), draw(st.sampled_from(tensors))
        room = (c.nbytes - t.nbytes) // 4
        offset = 4 * draw(st.integers(min(room, 0), max(room, 0))) if draw(st.booleans()) else 0
        views.append(BlockView(t.name, c.name, offset))
    return tensors, views


@settings(max_examples=200, deadline=None)
@given(lifetimes_and_views())
def test_random_views_keep_invariants(case):
    tensors, views = case
    plan = plan_arena(tensors, views=views)
    check_invariants(tensors, plan)
    for name, (within, at) in plan.views.items():
        assert BlockView(name, within, at) in views
