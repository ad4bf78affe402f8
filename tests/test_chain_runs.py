"""The epilogue chain runs that runtime/ops/conv.py _chain_run_kernel runs in one loop (an affine x * a + b; the
gate x * act(x + a) / c or * c that exporters write HardSwish as) give, value for value, the bits of the steps
applied one at a time in float32 by numpy, on ordinary values and on NaN, +-inf, +-0, subnormals and values at the
clamps; runs that are cut short, interleaved with other steps, or whose saved values a later step reads are left to
the one-step loops and still give those bits; the stores that run a leading affine with the bias and activation
(conv.py _chain_head: an affine, HardSwish, HardSigmoid) give the bits of the steps after them."""
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
            elif op in (C.CH_HARD_SWISH, C.CH_HARD_SIGMOID):
                v = (o * a + b).astype(np.float32)
                v = np.where(v < 0, np.float32(0), v)
                v = np.where(v > 1, np.float32(1), v)
                o = o * v if op == C.CH_HARD_SWISH else v
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
    "HardSwish op": [[C.CH_HARD_SWISH, np.float32(1 / 6), 0.5, 0], [MUL, 2, 0, 0]],
    "HardSigmoid op": [[C.CH_HARD_SIGMOID, 0.2, 0.5, 0]] + HSWISH,
    "gate, affine, gate": HSWISH[:4] + [[MUL, 0.5, 0, 0], [MUL, 3, 0, 0], [ADD, 1, 0, 0]] + HSWISH,
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
    assert C._chain_run_kernel(o.copy(), sv, chain, 2) == 7  # the gate and the affine after it
    assert C._chain_run_kernel(o.copy(), sv, chain, 7) == 2
    assert C._chain_run_kernel(o.copy(), sv, np.array(HSWISH, np.float32), 0) == 5
    assert C._chain_run_kernel(o.copy(), sv, chain, 3) == 0
    assert C._chain_run_kernel(o.copy(), sv, np.array(CHAINS["saved read later"], np.float32), 0) == 0
    assert C._chain_run_kernel(o.copy(), sv, np.array(CHAINS["cut short"], np.float32), 2) == 0


@pytest.mark.parametrize("act", [None, (ACT_CLIP, -1.0, 4.0), (ACT_LEAKY, 0.1, 0.0)])
@pytest.mark.parametrize("name", ["ppocr_rec", "affine", "hardswish / 6", "mul then sub", "HardSwish op",
                                  "HardSigmoid op"])
def test_stores_run_the_chain_head_with_the_bias(name, act):
    """_store_rows_kernel (every direct conv path's store) and _bias_act_band_kernel (the BLAS paths' epilogue) run a
    chain's leading affine in their own loop: the bits of scale, bias, activation, then the steps one at a time."""
    chain = np.array(CHAINS[name], dtype=np.float32)
    kind, p0, p1 = act if act is not None else (0, 0.0, 0.0)
    rng = np.random.default_rng(len(name))
    rows, ow, pitch = 3, 7, 9
    acc = values(rows * pitch, 3).reshape(rows, pitch)
    scale, bias = np.float32(1.3), np.float32(-0.7)
    with np.errstate(all="ignore"):
        v = (acc[:, :ow] * scale + bias).astype(np.float32).reshape(-1)
        if kind == ACT_CLIP:
            v = np.where(v < np.float32(p0), np.float32(p0), v)
            v = np.where(v > np.float32(p1), np.float32(p1), v)
        elif kind == ACT_LEAKY:
            v = np.where(v < 0, v * np.float32(p0), v).astype(np.float32)
    want = numpy_steps(v, chain)
    o = np.full(rows * ow, np.nan, np.float32)
    C._store_rows_kernel(acc.reshape(-1).copy(), pitch, rows, ow, scale, bias, o, np.int64(kind), np.float32(p0),
                         np.float32(p1), chain)
    np.testing.assert_array_equal(o.view(np.uint32), want.view(np.uint32))

    from edgepack.runtime.ops.elementwise import epilogue
    out = (rng.standard_normal((1, 2, 11)) * 4).astype(np.float32)
    out[0, 0, :5] = [np.nan, np.inf, -np.inf, -0.0, 1e-40]
    b2 = np.float32([0.25, -3.0])
    with np.errstate(all="ignore"):
        v2 = (out + b2[None, :, None]).astype(np.float32)
        if kind == ACT_CLIP:
            v2 = np.where(v2 < np.float32(p0), np.float32(p0), v2)
            v2 = np.where(v2 > np.float32(p1), np.float32(p1), v2)
        elif kind == ACT_LEAKY:
            v2 = np.where(v2 < 0, v2 * np.float32(p0), v2).astype(np.float32)
    want2 = np.stack([numpy_steps(v2[0, c], chain) for c in range(2)])[None]
    C._bias_act_band_kernel(out, 0, 0, 11, b2, epilogue(act), chain, np.zeros(11, np.float32))
    np.testing.assert_array_equal(out.view(np.uint32), want2.view(np.uint32))
