"""Fused activations and plan-time binding: every Gemm / Conv kernel with an activation in its epilogue
(runtime/ops/linear.py, conv.py, the csr and streamed kernels of runtime/layers.py) against its unfused result with
the activation applied by the elementwise kernels, bit for bit; which nodes the executor fuses (executor.py) and the
arena with fusion; whole models run through bound steps and Model.run's fast path against a plain node-by-node run
(no arena, no binding, no fusion), bit for bit, run after run."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from edgepack import runtime
import zoo
from edgepack.packer.pipeline import pack
from edgepack.runtime import executor
from edgepack.runtime.errors import InputError
from edgepack.runtime.ops import elementwise as E
from edgepack.runtime.ops import registry
from edgepack.runtime.ops.conv import bind_conv, conv, conv_output_shape, conv_scratch_bytes, prepare_conv
from edgepack.runtime.ops.linear import bind_linear, linear, linear_scratch_bytes, prepare_linear
from edgepack.runtime.threads import ThreadLimit
from test_conv import CASES
from test_conv import make_weight as make_conv_weight
from test_linear import make_weight, relu_input
from test_model import _finish, assert_close_to, inputs_for, lenet5, lenet300, mixed, reference

ACTS = {
    "none": None,
    "relu": E.activation("Relu", {}, ["h"], {}),
    "leaky": E.activation("LeakyRelu", {"alpha": 0.1}, ["h"], {}),
    "clip": E.activation("Clip", {}, ["h", "lo", "hi"], {"lo": np.float32(-0.5), "hi": np.float32(0.75)}),
    "relu6": E.activation("Clip", {"min": 0.0, "max": 6.0}, ["h"], {}),
}


def unfused(out: np.ndarray, act) -> np.ndarray:
    """The activation applied afterwards by the elementwise op runners, as an unfused graph runs it."""
    y = out.copy()
    if act is None:
        return y
    kind, p0, p1 = act
    if kind == E.ACT_LEAKY:
        E._run_leaky_relu([out], {"alpha": p0}, [y])
    elif p0 == 0.0 and p1 == math.inf:
        E._run_relu([out], {}, [y])
    else:
        E._run_clip([out, np.float32([p0]), np.float32([p1])], {}, [y])
    return y


def assert_bits_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ------------------------------------------------------------------------------------------------ descriptors

def test_activation_descriptors():
    assert E.activation("Relu", {}, ["h"], {}) == (E.ACT_CLIP, 0.0, math.inf)
    assert E.activation("LeakyRelu", {}, ["h"], {}) == (E.ACT_LEAKY, float(np.float32(0.01)), 0.0)
    assert E.activation("Clip", {"min": -1.0, "max": 2.0}, ["h"], {}) == (E.ACT_CLIP, -1.0, 2.0)
    assert E.activation("Clip", {}, ["h", "", "hi"], {"hi": np.float32([3.0])}) == (E.ACT_CLIP, -math.inf, 3.0)
    assert E.activation("Clip", {}, ["h", "computed"], {}) is None  # a bound known only at run time
    assert E.activation("Sigmoid", {}, ["h"], {}) is None
    ep = E.epilogue(ACTS["leaky"], alpha=0.5, beta=2.0)
    assert ep.dtype == np.float32 and not ep.flags.writeable
    assert list(ep) == [0.5, 2.0, E.ACT_LEAKY, np.float32(0.1), 0.0]


# ------------------------------------------------------------------------------------------------ linear kernels

def _run_linear(w, trans_b, x, bias, act, alpha=1.0, beta=1.0, parallel=False):
    prepared = prepare_linear(w, trans_b)
    out = np.full((x.shape[0], prepared.n), np.nan, np.float32)
    scratch = np.empty(linear_scratch_bytes(x.shape[0], prepared, parallel), np.uint8)
    return linear(x, prepared, bias, alpha, beta, out, scratch, parallel, act)


@pytest.mark.parametrize("kind", ["dense", "sparse", "codebook", "int8"])
@pytest.mark.parametrize("trans_b", [True, False])
@pytest.mark.parametrize("batch", [1, 7, 70])
@pytest.mark.parametrize("act", list(ACTS))
def test_linear_epilogue_equals_unfused(kind, trans_b, batch, act):
    """Every linear path (per-sample and tiled sparse, codes and int8 axpy and decode + BLAS, small dense kernels
    and BLAS) with the activation fused gives the bits of the unfused pair; alpha < 0 makes -0.0 and negatives."""
    rng = np.random.default_rng(batch * 7 + len(act))
    w = make_weight(kind, 9, 11, rng, density=0.6, fillers=0.1 if kind == "sparse" else 0.0)
    x = relu_input(rng, batch, 11 if trans_b else 9)
    bias = rng.standard_normal(9 if trans_b else 11).astype(np.float32)
    for alpha, beta in ((1.0, 1.0), (-0.7, 0.5)):
        plain = _run_linear(w, trans_b, x, bias, None, alpha, beta)
        fused = _run_linear(w, trans_b, x, bias, ACTS[act], alpha, beta)
        assert_bits_equal(fused, unfused(plain, ACTS[act]))


@pytest.mark.parametrize("trans_b", [True, False])
@pytest.mark.parametrize("n, k, batch", [(3, 5, 1), (40, 60, 1), (40, 60, 9)])
def test_dense_kernels_and_blas_agree(trans_b, n, k, batch):
    """Tiny dense layers run a Numba kernel, larger ones BLAS: both against numpy, with and without the epilogue."""
    rng = np.random.default_rng(n + k + batch)
    w = make_weight("dense", n if trans_b else k, k if trans_b else n, rng, density=0.7)
    wd = w.to_dense() if trans_b else w.to_dense().T
    x = rng.standard_normal((batch, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    plain = _run_linear(w, trans_b, x, bias, None, 0.5, 2.0)
    ref = 0.5 * (x.astype(np.float64) @ wd.T.astype(np.float64)) + 2.0 * bias
    np.testing.assert_allclose(plain, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))
    assert_bits_equal(_run_linear(w, trans_b, x, bias, ACTS["relu6"], 0.5, 2.0), unfused(plain, ACTS["relu6"]))


def test_broadcast_bias_then_activation():
    """A bias that is not one value per output is added after the product, and the activation after that."""
    rng = np.random.default_rng(3)
    w = make_weight("sparse", 11, 6, rng)
    x = relu_input(rng, 7, 6)
    bias = rng.standard_normal((7, 11)).astype(np.float32)
    plain = _run_linear(w, True, x, bias, None, 1.0, 0.5)
    assert_bits_equal(_run_linear(w, True, x, bias, ACTS["relu"], 1.0, 0.5), unfused(plain, ACTS["relu"]))


def test_tiled_parallel_build_equals_serial_with_epilogue():
    rng = np.random.default_rng(4)
    w = make_weight("sparse", 30, 40, rng, density=0.2)
    x = relu_input(rng, 150, 40)
    serial = _run_linear(w, True, x, None, ACTS["leaky"])
    assert_bits_equal(_run_linear(w, True, x, None, ACTS["leaky"], parallel=True), serial)


def test_bound_linear_reads_its_buffers_at_every_call():
    rng = np.random.default_rng(5)
    prepared = prepare_linear(make_weight("sparse", 8, 12, rng), True)
    x = np.zeros((2, 12), np.float32)
    out = np.empty((2, 8), np.float32)
    fn, args = bind_linear(x, prepared, None, 1.0, 1.0, out, None, False, ACTS["relu"])
    for seed in range(3):
        x[...] = relu_input(np.random.default_rng(seed), 2, 12)
        fn(*args)
        assert_bits_equal(out, linear(x.copy(), prepared, None, 1.0, 1.0, np.empty_like(out), act=ACTS["relu"]))
    with pytest.raises(InputError, match="C-contiguous"):
        bind_linear(np.zeros((12, 2), np.float32).T, prepared, None, 1.0, 1.0, out)


# ------------------------------------------------------------------------------------------------ conv kernels

def _run_conv(w, x, bias, attrs, act, parallel=False):
    prepared = prepare_conv(w, attrs.get("group", 1))
    out = np.full(conv_output_shape(x.shape, w.shape, attrs), np.nan, np.float32)
    scratch = np.empty(conv_scratch_bytes(x.shape, w.shape, attrs, prepared, parallel), np.uint8)
    return conv(x, prepared, bias, attrs, out, scratch, parallel, act)


@pytest.mark.parametrize("kind", ["dense", "sparse", "codebook", "int8"])
@pytest.mark.parametrize("case", [1, 3, 5, 11])
@pytest.mark.parametrize("act", ["relu", "leaky", "clip"])
def test_conv_epilogue_equals_unfused(kind, case, act):
    """Direct kernels of every weight kind, and im2col (dense, group 1: on one thread its product runs on the
    register tiles, with threads on BLAS, whose sums differ in the last bits: each mode against itself unfused)."""
    x_shape, w_shape, attrs = CASES[case]
    rng = np.random.default_rng(case)
    w = make_conv_weight(kind, w_shape, rng, density=0.6)
    x = rng.standard_normal(x_shape).astype(np.float32)
    for bias in (None, rng.standard_normal(w_shape[0]).astype(np.float32)):
        for parallel in (False, True):
            plain = _run_conv(w, x, bias, attrs, None, parallel=parallel)
            assert_bits_equal(_run_conv(w, x, bias, attrs, ACTS[act], parallel=parallel), unfused(plain, ACTS[act]))


def test_bound_conv_rejects_a_strided_input():
    rng = np.random.default_rng(6)
    prepared = prepare_conv(make_conv_weight("sparse", (2, 1, 3, 3), rng), 1)
    x = np.zeros((1, 1, 6, 12), np.float32)[..., ::2]
    with pytest.raises(InputError, match="C-contiguous"):
        bind_conv(x, prepared, None, {}, np.empty((1, 2, 4, 4), np.float32))


# ------------------------------------------------------------------------------------------------ models

@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    cache = {}

    def get(name, sparsity=0.5, bits=5):
        key = (name, sparsity, bits)
        if key not in cache:
            proto = {"lenet300": lenet300, "lenet5": lenet5, "mixed": mixed, "fusions": fusions}[name]()
            src = zoo.save(proto, root / f"{name}.onnx")
            out = root / f"{name}-{sparsity}-{bits}.epk"
            pack(src, out, sparsity=sparsity, bits=bits)
            cache[key] = str(out)
        return cache[key]
    return get


def fusions(seed: int = 11):
    """Every fusion decision: Gemm -> Relu, -> LeakyRelu, -> Clip with constant bounds, Conv -> Clip with an
    omitted min, MatMul -> Relu (as Gemm after import; of a rank-3 input it stays a MatMul whose weight rows are
    inputs: the scatter kernels), Gemm with transA or with a computed bias -> Relu (the layers' unbound paths), all
    fused; a Gemm output another node also reads, a Gemm output that is a graph output, a Clip whose bound is
    computed, all kept."""
    rng = np.random.default_rng(seed)
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[-1])).astype(np.float32)  # noqa: E731
    t = {"w1": w(24, 16), "b1": w(24), "w2": w(20, 24), "w3": w(20, 20), "w4": w(20, 20), "w5": w(20, 20),
         "w6": w(20, 12), "lo": np.float32(-0.2), "hi": np.float32(0.3), "c.w": w(4, 2, 3, 3), "w7": w(24, 8),
         "w8": w(6, 24), "w9": w(5, 24), "w10": w(8, 6), "shape3": np.int64([-1, 2, 8])}
    n = helper.make_node
    nodes = [n("Gemm", ["x", "w1", "b1"], ["g1"], name="fc1", transB=1),
             n("Relu", ["g1"], ["r1"], name="relu1"),                               # fused
             n("Gemm", ["r1", "w2"], ["g2"], name="fc2", transB=1),
             n("LeakyRelu", ["g2"], ["l2"], name="leaky2", alpha=0.2),              # fused
             n("Gemm", ["l2", "w3"], ["g3"], name="fc3", transB=1),
             n("Relu", ["g3"], ["r3"], name="relu3"),                               # g3 read twice: kept
             n("Add", ["g3", "r3"], ["a3"], name="add3"),
             n("Gemm", ["a3", "w4"], ["g4"], name="fc4", transB=1),
             n("Clip", ["g4", "lo", "hi"], ["c4"], name="clip4"),                   # constant bounds: fused
             n("Gemm", ["c4", "w5"], ["y1"], name="fc5", transB=1),
             n("Relu", ["y1"], ["y2"], name="relu5"),                               # y1 is a graph output: kept
             n("ReduceMean", ["y2"], ["m"], name="mean", axes=[0, 1], keepdims=0),
             n("MatMul", ["y2", "w6"], ["g6"], name="mm6"),
             n("Clip", ["g6", "m"], ["y3"], name="clip6"),                          # computed bound: kept
             n("Reshape", ["x", "shape"], ["xi"], name="to_image"),
             n("Conv", ["xi", "c.w"], ["cv"], name="conv", pads=[1, 1, 1, 1]),
             n("Clip", ["cv", "", "hi"], ["y4"], name="clip_conv"),                 # omitted min: fused
             n("MatMul", ["r1", "w7"], ["g7"], name="mm7"),
             n("Relu", ["g7"], ["y5"], name="relu7"),
             n("Transpose", ["r1"], ["r1t"], name="transpose", perm=[1, 0]),
             n("Gemm", ["r1t", "w8"], ["g8"], name="fc8", transA=1, transB=1),
             n("Relu", ["g8"], ["y6"], name="relu8"),
             n("Gemm", ["r1", "w9", "m"], ["g9"], name="fc9", transB=1),
             n("Relu", ["g9"], ["y7"], name="relu9"),
             n("Reshape", ["x", "shape3"], ["x3"], name="to_rank3"),
             n("MatMul", ["x3", "w10"], ["g10"], name="mm10"),
             n("Relu", ["g10"], ["y8"], name="relu10")]
    t["shape"] = np.int64([-1, 2, 2, 4])
    vi = helper.make_tensor_value_info
    return _finish(nodes, [vi("x", TensorProto.FLOAT, ["N", 16])],
                   [vi("y1", TensorProto.FLOAT, ["N", 20]), vi("y2", TensorProto.FLOAT, ["N", 20]),
                    vi("y3", TensorProto.FLOAT, ["N", 12]), vi("y4", TensorProto.FLOAT, ["N", 4, 2, 4]),
                    vi("y5", TensorProto.FLOAT, ["N", 8]), vi("y6", TensorProto.FLOAT, ["N", 6]),
                    vi("y7", TensorProto.FLOAT, ["N", 5]), vi("y8", TensorProto.FLOAT, ["N", 2, 6])], t,
                   "fusions")


def plain_run(model: runtime.Model, feeds: dict) -> dict:
    """Node by node on fresh arrays with the unbound runners: no arena, no binding, no fusion; on one BLAS thread
    like the model's runs (threads=1), since a BLAS product on more threads may sum in another order."""
    with ThreadLimit(1, False):
        return _plain_run(model, feeds)


def _plain_run(model: runtime.Model, feeds: dict) -> dict:
    prog = model._program
    shapes = executor.infer_shapes(prog, {k: v.shape for k, v in feeds.items()})
    vals = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    for n in prog.nodes:
        ins = [vals[i] if i in vals else prog.consts.get(i) if i else None for i in n["inputs"]]
        outs = [np.full(shapes[o], np.nan, np.float32) for o in n["outputs"]]
        layer = prog.layers.get(n["name"])
        if layer is not None:
            in_shapes = [None if not i else shapes[i] if i in shapes else prog.const_shapes[i] for i in n["inputs"]]
            layer.run(ins, outs, np.empty(layer.scratch_bytes(in_shapes), np.uint8))
        else:
            registry.get(n["op"], n["name"]).run(ins, n["attrs"], outs)
        vals.update(zip(n["outputs"], outs))
    return {o: vals[o] if o in vals else prog.consts[o] for o in prog.outputs}


def test_fusion_decisions(packed):
    model = runtime.load(packed("fusions"))
    fused = {layer: f.node for layer, f in model._program.fused.items()}
    assert fused == {"fc1": "relu1", "fc2": "leaky2", "fc4": "clip4", "conv": "clip_conv", "mm7": "relu7",
                     "fc8": "relu8", "fc9": "relu9", "mm10": "relu10"}
    assert model.layers["mm10"].op == "MatMul" and not model.layers["mm10"].rows_out
    assert model._program.absorbed == set(fused.values())
    acts = {layer: f.act for layer, f in model._program.fused.items()}
    assert acts["fc2"] == (E.ACT_LEAKY, float(np.float32(0.2)), 0.0)
    assert acts["fc4"] == (E.ACT_CLIP, float(np.float32(-0.2)), float(np.float32(0.3)))
    assert acts["conv"] == (E.ACT_CLIP, -math.inf, float(np.float32(0.3)))


@pytest.mark.parametrize("name", ["fusions", "lenet300", "lenet5", "mixed"])
@pytest.mark.parametrize("mode", [None, "compact", "csr", "dense", "streamed"])
def test_bound_fused_runs_equal_a_plain_run(packed, name, mode):
    """Model.run (fused epilogues, bound steps, fast path) gives the bits of the node-by-node run, in every weight
    mode; and it still means what the ONNX model means."""
    path = packed(name)
    model = runtime.load(path, layer_modes=mode)
    assert model._program.fused
    for batch in (1, 9, 20 if name == "lenet5" else 70):  # 70: two tiles of the batched sparse kernel
        feeds = inputs_for(model, batch, seed=batch, relu=False)
        got = model.run(feeds)
        want = plain_run(model, feeds)
        assert set(got) == set(want)
        for k in want:
            assert_bits_equal(got[k], want[k])
        if batch == 9:
            assert_close_to(reference(path, feeds), got)


def test_arena_with_fusion(packed):
    """The tensor between a layer and its fused activation never exists; no two live tensors overlap; the arena
    is no larger than without fusion."""
    model = runtime.load(packed("fusions"))
    prog = model._program
    for batch in (1, 6):
        shapes = {"x": (batch, 16)}
        plan = model._exec_plan(shapes)
        names = {t.name for t in plan.lifetimes}
        assert not names & {"g1", "g2", "g4", "cv"} and {"r1", "l2", "c4", "y4", "g3", "y1"} <= names
        assert set(plan.views) == names
        base = model._arena.__array_interface__["data"][0]
        spans = []
        for t in plan.lifetimes:
            v = plan.views[t.name]
            start = v.__array_interface__["data"][0] - base
            spans.append((start, start + v.nbytes, t))
        for sa, ea, ta in spans:
            for sb, eb, tb in spans:
                if ta.name >= tb.name or ea == sa or eb == sb or not (ta.first <= tb.last and tb.first <= ta.last):
                    continue
                if plan.arena.aliases.get(ta.name) == tb.name or plan.arena.aliases.get(tb.name) == ta.name:
                    continue
                assert ea <= sb or eb <= sa, (ta.name, tb.name)
        unfused_plan = executor.make_plan(replace(prog, fused={}, absorbed=set()), shapes)
        assert len(unfused_plan.lifetimes) == len(plan.lifetimes) + len(prog.fused)
        assert plan.arena.arena_bytes <= unfused_plan.arena.arena_bytes
        assert plan.arena.arena_bytes >= plan.arena.peak_live_bytes


def test_fast_path_is_the_checked_path(packed):
    """Bit-identical results run to run whichever path serves a call: arrays or dicts, C or Fortran order (the full
    checks), shapes alternating so that the arena grows and the bound plans are rebuilt."""
    model = runtime.load(packed("lenet300", 0.92, 6))
    xs = {b: inputs_for(model, b, seed=b)["x"] for b in (1, 5, 300)}
    first = {b: model.run(x)["y"] for b, x in xs.items()}
    for b in (1, 300, 1, 5, 1):
        x = xs[b]
        assert_bits_equal(model.run(x)["y"], first[b])
        assert_bits_equal(model.run({"x": x})["y"], first[b])
        assert_bits_equal(model.run(np.asfortranarray(x))["y"], first[b])
        assert_bits_equal(model.run(x.astype(np.float64))["y"], first[b])
    fresh = runtime.load(packed("lenet300", 0.92, 6))
    assert_bits_equal(fresh.run(xs[300])["y"], first[300])
    out = model.run(xs[1])
    assert not np.shares_memory(out["y"], model._arena)


def test_fast_path_keeps_the_input_checks(packed):
    model = runtime.load(packed("lenet300", 0.92, 6))
    x = inputs_for(model, 2, seed=1)["x"]
    model.run(x)
    bad = x.copy()
    bad[1, 700] = -np.inf
    with pytest.raises(InputError, match=r"element \(1, 700\) is -inf"):
        model.run(bad)
    with pytest.raises(InputError, match="dimension 1 is 783"):
        model.run(np.zeros((2, 783), np.float32))
    with pytest.raises(InputError, match="unknown"):
        model.run({"x": x, "z": x})
    bad[1, 700] = np.nan
    assert np.isnan(model.run(bad, check_finite=False)["y"][1]).any()
    assert_bits_equal(model.run(x)["y"], runtime.load(packed("lenet300", 0.92, 6)).run(x)["y"])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), seed=st.integers(0, 2**31), bad=st.sampled_from([None, np.nan, np.inf, -np.inf]))
def test_copy_in_kernel(n, seed, bad):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((n,)).astype(np.float32)
    src[rng.random(n) < 0.2] = -0.0
    src[rng.random(n) < 0.1] = np.float32(1e-40)  # subnormals are finite
    where = -1
    if bad is not None:
        where = int(rng.integers(0, n))
        src[where:] = np.where(rng.random(n - where) < 0.5, bad, src[where:])
        src[where] = bad
    dst = np.full(n, 7.0, np.float32)
    assert executor._copy_in_kernel(src.reshape(1, n), dst, True) == where
    if where < 0:
        assert_bits_equal(dst, src)
    dst[:] = 7.0
    assert executor._copy_in_kernel(src.reshape(1, n), dst, False) == -1
    assert_bits_equal(dst, src)
