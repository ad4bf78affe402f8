"""Low-rank factorisation (packer/lowrank.py): the factors against numpy's SVD facts (full rank reproduces W, the
truncation error is the dropped energy), rank selection by energy, the factorised graph in onnxruntime against the
product of the factors, and pack -> unpack with the factorisation recorded in the file's meta.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgepack.cli import main
from edgepack.packer.lowrank import eligible, factor, factorise, rank_for_energy
from edgepack.packer.onnx_io import from_onnx, graph_to_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.unpack import unpack
from edgepack.packer.verify import session
from edgepack.runtime.loader import read_packed

RNG = np.random.default_rng(11)


def low_rank_matrix(rng, n, k, rank, noise=0.0):
    m = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, k)) / np.sqrt(k)
    return (m + noise * rng.standard_normal((n, k))).astype(np.float32)


def net(opset=17, seed=0):
    """Gemm (alpha, beta, bias) -> Relu -> Reshape to NCHW -> 1x1 Conv (stride 2, pads) -> 3x3 Conv -> Gemm."""
    rng = np.random.default_rng(seed)
    t = {"fc1.w": low_rank_matrix(rng, 64, 48, 4, 0.01), "fc1.b": rng.standard_normal(64).astype(np.float32),
         "pw.w": low_rank_matrix(rng, 32, 16, 3, 0.01).reshape(32, 16, 1, 1),
         "pw.b": rng.standard_normal(32).astype(np.float32),
         "c3.w": (rng.standard_normal((8, 32, 3, 3)) / 10).astype(np.float32),
         "fc2.w": (rng.standard_normal((5, 8 * 2 * 2)) / 5).astype(np.float32),
         "shape": np.array([-1, 16, 2, 2], np.int64), "flat": np.array([-1, 32], np.int64)}
    nodes = [helper.make_node("Gemm", ["x", "fc1.w", "fc1.b"], ["h"], name="fc1", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["img"], name="to_img"),
             helper.make_node("Conv", ["img", "pw.w", "pw.b"], ["p"], name="pw", kernel_shape=[1, 1],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "c3.w"], ["c"], name="c3", pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "flat"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc2.w"], ["y"], name="fc2", transB=1)]
    g = helper.make_graph(nodes, "lr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 48])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                          [numpy_helper.from_array(v, k) for k, v in t.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def run(model, x):
    return session(model).run(None, {"x": x})[0]


# ---------------------------------------------------------------- the factors

@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6), (1, 4), (9, 1)])
def test_full_rank_factors_reproduce_the_weight(shape):
    w = RNG.standard_normal(shape).astype(np.float32)
    a, b, s = factor(w, min(shape))
    assert a.shape == (min(shape), shape[1]) and b.shape == (shape[0], min(shape))
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(b.astype(np.float64) @ a, w, rtol=1e-5, atol=1e-5)


def test_truncation_error_is_the_dropped_energy():
    w = RNG.standard_normal((20, 12)).astype(np.float32)
    s_ref = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    for r in (1, 3, 7, 12):
        a, b, s = factor(w, r)
        np.testing.assert_allclose(s, s_ref)
        err = np.linalg.norm(w - b.astype(np.float64) @ a)
        np.testing.assert_allclose(err, np.sqrt((s_ref[r:] ** 2).sum()), rtol=1e-4, atol=1e-5)
        # the singular values are shared evenly: both factors have the same row / column norms
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=0), rtol=1e-5)


def test_factor_refuses_bad_ranks():
    with pytest.raises(ValueError, match=r"rank 0 must be in \[1, 3\]"):
        factor(np.ones((3, 4), np.float32), 0)
    with pytest.raises(ValueError, match="takes a matrix"):
        factor(np.ones((3, 4, 1), np.float32), 1)


@pytest.mark.parametrize("energy,rank", [(0.1, 1), (16 / 30, 1), (0.6, 2), (25 / 30, 2), (0.9, 3), (29 / 30, 3),
                                         (0.99, 4), (1.0, 4)])
def test_energy_picks_the_smallest_rank(energy, rank):
    # singular values 4, 3, 2, 1: energy 16, 25, 29, 30 of 30
    q1, _ = np.linalg.qr(RNG.standard_normal((6, 4)))
    q2, _ = np.linalg.qr(RNG.standard_normal((5, 4)))
    w = q1 @ np.diag([4.0, 3.0, 2.0, 1.0]) @ q2.T
    s = np.linalg.svd(w, compute_uv=False)
    assert rank_for_energy(s, energy) == rank


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=12), st.floats(0.01, 1.0))
def test_energy_rank_is_minimal(values, energy):
    s = np.sort(np.array(values))[::-1]
    r = rank_for_energy(s, energy)
    kept = np.cumsum(s ** 2) / (s ** 2).sum()
    assert 1 <= r <= s.size
    assert kept[r - 1] >= energy - 1e-12
    assert r == 1 or kept[r - 2] < energy


def test_energy_out_of_range():
    for e in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            rank_for_energy(np.ones(3), e)


# ---------------------------------------------------------------- the graph

def test_eligible_layers():
    g = from_onnx(net())
    assert {t: n.name for t, n in eligible(g).items()} == {"fc1.w": "fc1", "pw.w": "pw", "fc2.w": "fc2"}


def test_factorised_gemm_and_conv_run_in_onnxruntime_as_the_factors_say():
    m = net()
    g = from_onnx(m)
    out, done = factorise(g, {"fc1.w": 4, "pw": 3})
    assert done == {"fc1.w": 4, "pw.w": 3}
    assert [n.op for n in out.nodes] == ["Gemm", "Gemm", "Relu", "Reshape", "Conv", "Conv", "Conv", "Reshape",
                                         "Gemm"]
    assert "fc1.w" not in out.initializers and "pw.w" not in out.initializers
    first, second = out.nodes[0], out.nodes[1]
    assert first.inputs[0] == "x" and len(first.inputs) == 2 and first.attr("alpha") == 0.5
    assert second.inputs[2] == "fc1.b" and second.attr("beta") == 2.0 and second.outputs == ["h"]
    a1, b1 = out.initializers["fc1.w.lowrank_in"], out.initializers["fc1.w.lowrank_out"]
    assert a1.shape == (4, 48) and b1.shape == (64, 4)
    a2, b2 = out.initializers["pw.w.lowrank_in"], out.initializers["pw.w.lowrank_out"]
    assert a2.shape == (3, 16, 1, 1) and b2.shape == (32, 3, 1, 1)
    conv1, conv2 = out.nodes[4], out.nodes[5]
    assert conv1.attr("strides") == [2, 2] and conv1.attr("pads") == [1, 1, 1, 1]
    assert conv2.attr("strides") is None and conv2.attr("pads") is None and conv2.inputs[2] == "pw.b"
    # onnxruntime on the factorised graph equals the original model with W replaced by B @ A
    products = {"fc1.w": b1.astype(np.float64) @ a1,
                "pw.w": (b2.reshape(32, 3).astype(np.float64) @ a2.reshape(3, 16)).reshape(32, 16, 1, 1)}
    x = RNG.standard_normal((3, 48)).astype(np.float32)
    want = run(graph_to_onnx(g, {k: v.astype(np.float32) for k, v in products.items()}), x)
    np.testing.assert_allclose(run(graph_to_onnx(out), x), want, rtol=1e-4, atol=1e-4)
    # and those weights are close to the originals: the matrices were built with rank 4 and 3 plus noise
    np.testing.assert_allclose(run(graph_to_onnx(out), x), run(m, x), rtol=0.05, atol=0.05)


def test_a_single_energy_factorises_only_where_it_saves():
    out, done = factorise(from_onnx(net()), 0.95)
    # fc2 (5 x 32) cannot save at any rank >= 1 that keeps 95%; fc1 and pw are nearly low rank
    assert set(done) == {"fc1.w", "pw.w"}
    assert done["fc1.w"] <= 5 and done["pw.w"] <= 4
    for t, r in done.items():
        n, k = (64, 48) if t == "fc1.w" else (32, 16)
        assert r * (n + k) < n * k


def test_full_rank_request_is_skipped():
    g = from_onnx(net())
    out, done = factorise(g, {"fc1.w": 48, "pw.w": 1.0})
    assert done == {} and [n.op for n in out.nodes] == [n.op for n in g.nodes]
    assert out.initializers.keys() == g.initializers.keys()


@pytest.mark.parametrize("spec,msg", [
    ({"c3.w": 2}, r"'c3.w', which is not the weight \(or node\) of a fully connected or 1x1 convolution"),
    ({"fc1.w": 0}, r"low_rank\['fc1.w'\] = 0: a rank must be >= 1"),
    ({"fc1.w": 1.5}, r"an energy fraction must be in \(0, 1\]"),
    ({"fc1.w": True}, "expected a rank"),
    (3, "a single value for all layers must be an energy fraction"),
    ("0.9", "expected a rank"),
])
def test_bad_low_rank_settings(spec, msg):
    with pytest.raises(ValueError, match=msg):
        factorise(from_onnx(net()), spec)


def test_shared_and_grouped_weights_are_not_eligible():
    w = RNG.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["a"], name="g1", transB=1),
             helper.make_node("Gemm", ["a", "w"], ["b"], name="g2", transB=1),
             helper.make_node("Reshape", ["b", "s"], ["img"], name="r"),
             helper.make_node("Conv", ["img", "dw"], ["y"], name="dw", group=2)]
    g = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 2])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 4, 1, 2]), "s"),
                           numpy_helper.from_array(np.ones((4, 2, 1, 1), np.float32), "dw")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert eligible(from_onnx(m)) == {}


# ---------------------------------------------------------------- pack, unpack, info meta, CLI

def test_pack_unpack_with_low_rank(tmp_path):
    src = tmp_path / "lr.onnx"
    m = net()
    onnx.save(m, str(src))
    out = tmp_path / "lr.epk"
    report = pack(src, out, config={"default": {"encoding": "dense"}}, low_rank={"fc1.w": 4, "pw.w": 3})
    packed = read_packed(out)
    assert packed.meta["settings"]["low_rank"] == {"fc1.w": 4, "pw.w": 3}
    assert report.settings["low_rank"] == {"fc1.w": 4, "pw.w": 3}
    assert {"fc1.w.lowrank_in", "fc1.w.lowrank_out", "pw.w.lowrank_in", "pw.w.lowrank_out"} <= set(packed.weights)
    # the ratio's base stays the source model's parameters
    assert packed.meta["source"]["params"] == sum(int(np.prod(t.dims)) for t in m.graph.initializer
                                                  if t.data_type == TensorProto.FLOAT)
    graph = unpack(out, tmp_path / "lr_dense.onnx")
    expected, _ = factorise(from_onnx(m), {"fc1.w": 4, "pw.w": 3})
    x = RNG.standard_normal((2, 48)).astype(np.float32)
    np.testing.assert_allclose(run(str(tmp_path / "lr_dense.onnx"), x), run(graph_to_onnx(expected), x),
                               rtol=1e-6, atol=1e-6)
    assert len(graph.nodes) == len(expected.nodes)
    # compressed as usual, the factors pack like any layer
    report = pack(src, tmp_path / "lr_q.epk", bits=8, low_rank=0.99)
    names = {r["name"] for r in report.info["layers"]}
    assert {"fc1.w.lowrank_in", "fc1.w.lowrank_out"} <= names


def test_cli_low_rank(tmp_path):
    src = tmp_path / "lr.onnx"
    onnx.save(net(), str(src))
    out = tmp_path / "lr.epk"
    assert main(["pack", str(src), "-o", str(out), "-q", "--low-rank", "0.95"]) == 0
    assert set(read_packed(out).meta["settings"]["low_rank"]) == {"fc1.w", "pw.w"}
    assert main(["pack", str(src), "-o", str(out), "-q", "--low-rank", "1.5"]) == 2
