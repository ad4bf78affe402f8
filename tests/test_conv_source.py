"""The source copies of the direct Conv kernels (runtime/ops/conv.py _source_channel_kernel: one channel zero-padded,
or for strided convolutions split into its sh x sw phases; the stride-2 de-interleave and the general gather) against
numpy slicing of the padded input, and depthwise convolutions (copied channel by channel, _PERCH) against the float64
reference, serial and parallel."""
import numpy as np
import pytest

from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops.conv import prepare_conv
from edgepack.runtime.weights import DenseWeight
from test_conv import check_close, make_weight, reference_for, run_conv

GEOMETRIES = [  # (H, W), strides, pads [top, left, bottom, right]
    ((9, 12), (2, 2), [1, 1, 1, 1]),
    ((9, 13), (2, 2), [0, 2, 1, 0]),
    ((8, 11), (1, 2), [2, 3, 0, 1]),  # odd width, odd left pad
    ((10, 7), (3, 2), [1, 0, 2, 3]),
    ((7, 10), (2, 3), [1, 2, 1, 1]),  # the general gather (stride 3 across)
    ((6, 6), (1, 1), [2, 1, 0, 3]),  # padded only
]


def _phases(xpad, sh, sw, qh, qw):
    out = np.zeros((sh, sw, qh, qw), np.float32)
    for py in range(sh):
        for px in range(sw):
            sub = xpad[py::sh, px::sw]
            out[py, px, :sub.shape[0], :sub.shape[1]] = sub
    return out.reshape(-1)


@pytest.mark.parametrize("hw,strides,pads", GEOMETRIES)
def test_source_channel_matches_numpy(hw, strides, pads):
    rng = np.random.default_rng(0)
    c = 3
    x = rng.standard_normal((2, c) + hw).astype(np.float32)
    attrs = {"strides": list(strides), "pads": pads, "group": c}
    prepared = prepare_conv(DenseWeight(rng.standard_normal((c, 1, 3, 3)).astype(np.float32)), c)
    plan = conv_mod._plan(prepared, x.shape, attrs, False)
    geo = plan.geo
    assert geo[conv_mod._PERCH] == 1
    plane = int(geo[conv_mod._PLANE])
    xp = np.full(plane + 5, np.nan, np.float32)  # garbage, and a tail that must stay untouched
    for b in range(2):
        for ch in range(c):
            conv_mod._source_channel_kernel(x.reshape(2, -1), b, ch, geo, xp)
            xpad = np.pad(x[b, ch], ((pads[0], pads[2]), (pads[1], pads[3])))
            if geo[conv_mod._PHASED]:
                want = _phases(xpad, strides[0], strides[1], int(geo[conv_mod._QH]), int(geo[conv_mod._QW]))
            else:
                want = xpad.reshape(-1)
            np.testing.assert_array_equal(xp[:plane], want)
            assert np.isnan(xp[plane:]).all()


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("kind", ["dense", "codebook", "sparse", "int8"])
@pytest.mark.parametrize("hw,strides,pads", GEOMETRIES)
def test_depthwise_copied_per_channel_matches_numpy(hw, strides, pads, kind, parallel):
    rng = np.random.default_rng([len(hw), strides[0], strides[1], pads[1]])
    c, mult = 4, 2  # channel multiplier 2: two output channels read each copy
    w = make_weight(kind, (c * mult, 1, 3, 3), rng, density=0.8)
    x = rng.standard_normal((2, c) + hw).astype(np.float32)
    bias = rng.standard_normal(c * mult).astype(np.float32)
    attrs = {"strides": list(strides), "pads": pads, "group": c}
    check_close(run_conv(w, x, bias, attrs, parallel), reference_for(x, w, bias, attrs))
