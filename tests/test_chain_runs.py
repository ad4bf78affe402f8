"""The epilogue chain runs that runtime/ops/conv.py _chain_run_kernel runs in one loop (an affine x * a + b; the
gate x * act(x + a) / c or * c that exporters write HardSwish as) give, value for value, the bits of the steps
applied one at a time in float32 by numpy, on ordinary values and on NaN, +-inf, +-0, subnormals and values at the
clamps; runs that are cut short, interleaved with other steps, or whose saved values a later step reads are left to
the one-step loops and still give those bits."""
import numpy as np
import pytest

from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops.elementwise import ACT_CLIP, ACT_LEAKY


def numpy_steps(x: np.ndarray, chain: np.ndarray) -> np.ndarray:
    """The chain one step at a time, each step a float32 numpy operation (the reference)."""
    o, saved = x.copy(), None
    with np.errstate(all="ignore"):
        for op, a, b, c in chain:
            op, a, b, c = int(op), np.float32(a), np.float32(b), np.float32(c)
            if op == C.CH_SAVE:
                saved = o.copy()
            elif op == C.CH_ADD:
                o = o + a
            elif op == C.CH_SUB:
                o = o - a
            elif op == C.CH_MUL:
                o = o * a
            elif op == C.CH_DIV:
                o = o / a
            elif op == C.CH_ACT and int(a) == ACT_CLIP:
                o = np.where(o < b, b, o)
                o = np.where(o > c, c, o)
            elif op == C.CH_ACT and int(a) == ACT_LEAKY:
                o = np.where(o < 0, o * b, o)
            elif op == C.CH_MUL_SAVED:
                o = saved * o
            elif op == C.CH_ADD_SAVED:
                o = saved + o
            else:
                raise AssertionError(f"step {op} has no reference here")
            o = o.astype(np.float32)
    return o


def values(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 5).astype(np.float32)
    special = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, -3.0, 3.0, 6.0, -6.0, 3e38, -3e38])
    k = min(n, special.size)
    x[:k] = special[:k]
    return x


S, ADD, MUL, DIV, ACT, MULS, ADDS = C.CH_SAVE, C.CH_ADD, C.CH_MUL, C.CH_DIV, C.CH_ACT, C.CH_MUL_SAVED, C.CH_ADD_SAVED
HSWISH = [[S, 0, 0, 0], [ADD, 3, 0, 0], [ACT, ACT_CLIP, 0, 6], [MULS, 0, 0, 0], [DIV, 6, 0, 0]]
CHAINS = {
    "affine": [[MUL, 1.7, 0, 0], [ADD, -0.3, 0, 0]],
    "hardswish / 6": HSWISH,
    "hardswish * 1/6": HSWISH[:4] + [[MUL, np.float32(1 / 6), 0, 0]],
    # PP-OCRv4 rec after every Conv: affine, HardSwish, affine
    "ppocr_rec": [[MUL, 2.1388681, 0, 0], [ADD, -0.45077202, 0, 0]] + HSWISH
                 + [[MUL, 0.11814947, 0, 0], [ADD, -6.0135255e-05, 0, 0]],
    "leaky gate": [[S, 0, 0, 0], [ADD, -1, 0, 0], [ACT, ACT_LEAKY, 0.1, 0], [MULS, 0, 0, 0], [MUL, 0.5, 0, 0]],
    "cut short": [[ADD, 1, 0, 0], [MUL, 2, 0, 0]] + HSWISH[:4],
    "mul then sub": [[MUL, 2, 0, 0], [C.CH_SUB, 1, 0, 0]],
    # the saved x is read again after the gate: the gate must not be run in one loop without keeping it
    "saved read later": HSWISH + [[ADDS, 0, 0, 0]],
    "two gates": HSWISH + HSWISH + [[MUL, 3, 0, 0], [ADD, 1, 0, 0]],
}


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("n", [1, 16, 100, 1027])
def test_chain_matches_steps_one_at_a_time(name, n):
    chain = np.array(CHAINS[name], dtype=np.float32)
    x = values(n, n)
    want = numpy_steps(x, chain)
    o = x.copy()
    save = np.full(n + 3, np.nan, np.float32)
    C._chain_kernel(o, save, chain)
    np.testing.assert_array_equal(o.view(np.uint32), want.view(np.uint32))


def test_runs_are_recognised():
    """The runs report the steps they cover, other steps 0 (left to the one-step loops)."""
    o, sv = np.ones(4, np.float32), np.zeros(4, np.float32)
    chain = np.array(CHAINS["ppocr_rec"], dtype=np.float32)
    assert C._chain_run_kernel(o.copy(), sv, chain, 0) == 2
    assert C._chain_run_kernel(o.copy(), sv, chain, 2) == 5
    assert C._chain_run_kernel(o.copy(), sv, chain, 7) == 2
    assert C._chain_run_kernel(o.copy(), sv, chain, 3) == 0
    assert C._chain_run_kernel(o.copy(), sv, np.array(CHAINS["saved read later"], np.float32), 0) == 0
    assert C._chain_run_kernel(o.copy(), sv, np.array(CHAINS["cut short"], np.float32), 2) == 0
