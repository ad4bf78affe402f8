"""The inlined float32 math (runtime/ops/fastmath.py: expf, sigmoid_value, tanh_value) and the Sigmoid / SiLU kernels
built on it (runtime/ops/elementwise.py _sigmoid_kernel, silu_kernel): accuracy against float64 numpy, the limits,
and the same bits at every length, in place or not, and inside a conv's epilogue chain (runtime/ops/conv.py
_chain_kernel) as outside it."""
from __future__ import annotations

import numpy as np
import pytest

from numba import njit

from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops import elementwise as E
from edgepack.runtime.ops import fastmath as F

LENGTHS = [0, 1, 7, 15, 16, 17, 31, 33, 100, 1001]


@njit(error_model="numpy")
def _exp_loop(z, out):  # a vectorising loop, as the kernels inline expf; out may be z
    for j in range(z.shape[0]):
        out[j] = F.expf(z[j])


@njit(error_model="numpy")
def _tanh_loop(z, out):
    for j in range(z.shape[0]):
        out[j] = F.tanh_value(z[j])


def _values(n: int, seed: int, scale: float = 8.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float32)


def _ulps(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(got.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(np.float32))


@pytest.mark.parametrize("n", LENGTHS)
def test_expf_within_2_ulp(n):
    z = np.concatenate([np.linspace(-87, 88, n, dtype=np.float32), _values(n, n, 20.0)])
    out = np.full(z.size, np.nan, np.float32)
    _exp_loop(z, out)
    ref = np.exp(z.astype(np.float64))
    normal = ref >= np.finfo(np.float32).tiny  # below it the float32 exp is subnormal or 0
    assert (_ulps(out[normal], ref[normal]) <= 2).all()
    assert (out[~normal] <= np.finfo(np.float32).tiny).all()
    y = z.copy()
    _exp_loop(y, y)  # in place
    np.testing.assert_array_equal(y.view(np.uint32), out.view(np.uint32))


def test_expf_limits():
    z = np.float32([np.nan, np.inf, -np.inf, 100, -100, 88, -87.5, 0, -0.0])
    out = np.empty_like(z)
    _exp_loop(z, out)
    assert np.isnan(out[0])
    e88 = out[5]
    assert abs(float(e88) / np.exp(88.0) - 1) < 3e-7
    np.testing.assert_array_equal(out[1:], np.float32([e88, 0, e88, 0, e88, 0, 1, 1]))


@pytest.mark.parametrize("n", LENGTHS)
def test_silu_is_x_times_sigmoid_bits_and_accurate(n):
    x = _values(n, 100 + n)
    x[: min(n, 5)] = np.float32([np.nan, np.inf, -np.inf, 90, -90])[: min(n, 5)]
    s = np.full(n, np.nan, np.float32)
    E._sigmoid_kernel(x, s)
    got = np.full(n, np.nan, np.float32)
    E.silu_kernel(x, got)
    with np.errstate(invalid="ignore"):
        want = x * s  # the Sigmoid node, then the Mul node
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    y = x.copy()
    E.silu_kernel(y, y)
    np.testing.assert_array_equal(y.view(np.uint32), got.view(np.uint32))
    fin = np.isfinite(x) & (np.abs(x) < 80)
    x64 = x[fin].astype(np.float64)
    ref = x64 / (1.0 + np.exp(-x64))
    assert (np.abs(got[fin] - ref) <= 3 * np.spacing(np.abs(ref).astype(np.float32)) + 1e-38).all()


@pytest.mark.parametrize("op", [C.CH_SILU, C.CH_SIGMOID])
@pytest.mark.parametrize("n", [1, 9, 25, 90, 1001])
def test_chain_step_equals_the_kernel(op, n):
    """The chain runs the kernel inlined into _chain_kernel: the bits must not depend on where it is compiled (a
    fastmath contraction would let LLVM round differently per call site)."""
    x = _values(n, n)
    direct = np.empty_like(x)
    (E.silu_kernel if op == C.CH_SILU else E._sigmoid_kernel)(x, direct)
    o = x.copy()
    C._chain_kernel(o, np.empty(n, np.float32), np.float32([[op, 0, 0, 0]]))
    np.testing.assert_array_equal(o.view(np.uint32), direct.view(np.uint32))


@pytest.mark.parametrize("n", LENGTHS)
def test_tanh_value_accurate_and_limits(n):
    z = np.concatenate([np.linspace(-50, 50, n, dtype=np.float32), _values(n, 200 + n, 3.0),
                        np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, 44.0, -44.0, 100.0, -100.0])])
    out = np.full(z.size, np.nan, np.float32)
    _tanh_loop(z, out)
    assert np.isnan(out[np.isnan(z)]).all()
    fin = ~np.isnan(z)
    ref = np.tanh(z[fin].astype(np.float64))
    # 2 / (1 + e) - 1 loses relative precision near 0 (absolute error ~1 ulp of 1), saturates to exactly +-1
    assert (np.abs(out[fin] - ref) <= 2 * np.finfo(np.float32).eps).all()
    assert (out[fin][np.abs(z[fin]) >= 44] == np.sign(z[fin][np.abs(z[fin]) >= 44])).all()
    y = z.copy()
    _tanh_loop(y, y)
    np.testing.assert_array_equal(y.view(np.uint32), out.view(np.uint32))
