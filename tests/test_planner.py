"""The arena planner (runtime/planner.py): invariants over random lifetimes (no live overlap, alignment, arena >=
peak, determinism, in-place aliasing rules), known small cases, validation errors and the printed table.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.runtime.errors import FormatError
from edgepack.runtime.planner import ALIGNMENT, ArenaPlan, TensorLife, format_plan, plan_arena


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
    for t in tensors:
        o = plan.offsets[t.name]
        assert o >= 0 and o % ALIGNMENT == 0
        assert o + t.nbytes <= plan.arena_bytes
    for name, src in plan.aliases.items():
        t, s = by_name[name], by_name[src]
        assert t.alias_of == src and s.first < s.last == t.first and s.nbytes == t.nbytes
        assert plan.offsets[name] == plan.offsets[src]
    for i, a in enumerate(tensors):
        for b in tensors[i + 1:]:
            if not (a.first <= b.last and b.first <= a.last) or not a.nbytes or not b.nbytes:
                continue
            if plan.aliases.get(a.name) == b.name or plan.aliases.get(b.name) == a.name:
                continue  # the in-place pair: live together only at the step that overwrites the input
            oa, ob = plan.offsets[a.name], plan.offsets[b.name]
            assert oa + aligned(a.nbytes) <= ob or ob + aligned(b.nbytes) <= oa, (a, b, oa, ob)
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
