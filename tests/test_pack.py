"""The post-training pipeline end to end: ONNX -> pack -> read -> unpack -> onnxruntime, against numpy references."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import zoo
from edgepack.packer.encode import LayerSettings, encode_weight
from edgepack.packer.onnx_io import load_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.unpack import packed_to_graph, unpack
from edgepack.packer.verify import compare, random_inputs, session
from edgepack.runtime.loader import dense_weights, read_packed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("zoo")
    return {
        "mlp": zoo.save(zoo.mlp(), d / "mlp.onnx"),
        "mlp_const": zoo.save(zoo.mlp(constants=True), d / "mlp_const.onnx"),
        "cnn": zoo.save(zoo.cnn(), d / "cnn.onnx"),
        "cnn_const": zoo.save(zoo.cnn(constants=True), d / "cnn_const.onnx"),
        "cnn_spread": zoo.save(zoo.cnn(scale_spread=6), d / "cnn_spread.onnx"),
    }


def _numpy_reference(graph, weights, feeds):
    """The unpacked graph evaluated by onnx's reference evaluator (independent of onnxruntime)."""
    from onnx.reference import ReferenceEvaluator

    from edgepack.packer.onnx_io import graph_to_onnx
    return ReferenceEvaluator(graph_to_onnx(graph, weights)).run(None, feeds)[0]


@pytest.mark.parametrize("name", ["mlp", "mlp_const", "cnn", "cnn_const", "cnn_spread"])
def test_pack_read_unpack_run(models, tmp_path, name):
    src = models[name]
    out = tmp_path / f"{name}.epk"
    report = pack(src, out, sparsity=0.5, bits=5)
    model = read_packed(out)
    # every tensor decodes exactly to the encoder's pruned-and-quantized reference
    decoded = dense_weights(model)
    assert set(decoded) == set(report.references)
    for k, ref in report.references.items():
        np.testing.assert_array_equal(decoded[k], ref)
    # the unpacked ONNX model, run by onnxruntime, equals the same weights run by onnx's reference evaluator
    onnx_out = tmp_path / f"{name}.onnx"
    graph = unpack(out, onnx_out)
    onnx.checker.check_model(onnx.load(str(onnx_out)))
    feeds = random_inputs(graph, 16, seed=1)
    got = session(str(onnx_out)).run(None, feeds)[0]
    want = _numpy_reference(graph, decoded, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # weights of Conv/Gemm/MatMul are compressed, half of each removed
    compressed = [r for r in report.info["layers"] if r["k"]]
    assert compressed and all(abs(r["kept"] / r["weights"] - 0.5) < 0.02 for r in compressed)


@pytest.mark.parametrize("name", ["cnn", "cnn_const", "cnn_spread"])
def test_8bit_codebooks_keep_top1(models, tmp_path, name):
    out = tmp_path / "m.epk"
    pack(models[name], out, sparsity=0, bits=8)
    agreement = compare(models[name], out, batch=2000, seed=3)
    assert agreement.top1_agreement >= 0.99, agreement.summary()
    assert agreement.rel_l2_error < 0.02, agreement.summary()


def test_8bit_mlp_trained_keeps_top1(tmp_path):
    from edgepack.packer.datasets import synthetic_classification
    from edgepack.packer.onnx_io import save_onnx
    from edgepack.packer.train.mlp import mlp_graph, train_mlp

    data = synthetic_classification(3000, 1000, 64, 10, seed=0)
    layers = train_mlp(data, hidden=(64, 32), epochs=8, seed=0, progress=False)
    src = tmp_path / "trained.onnx"
    save_onnx(mlp_graph(layers), src)
    out = tmp_path / "trained.epk"
    pack(src, out, sparsity=0, bits=8)
    agreement = compare(src, out, feeds={"input": data["x_test"]}, labels=data["y_test"])
    assert agreement.top1_agreement >= 0.99, agreement.summary()


def test_channel_scales_rescue_spread_channels(models, tmp_path):
    """Folded BN scales spanning 1e-6..1e6: one global codebook breaks the model, per-channel scales do not."""
    src = models["cnn_spread"]
    on, off = tmp_path / "on.epk", tmp_path / "off.epk"
    rep_on = pack(src, on, sparsity=0, bits=8)
    pack(src, off, sparsity=0, bits=8, channel_scales=False)
    assert any(r["row_scales"] for r in rep_on.info["layers"])
    good = compare(src, on, batch=500)
    bad = compare(src, off, batch=500)
    assert good.rel_l2_error < 0.02
    assert bad.rel_l2_error > 10 * good.rel_l2_error


def test_same_inputs_same_bytes(models, tmp_path):
    a, b = tmp_path / "a.epk", tmp_path / "b.epk"
    pack(models["cnn"], a, sparsity=0.7, bits=6)
    pack(models["cnn"], b, sparsity=0.7, bits=6)
    assert a.read_bytes() == b.read_bytes()


def test_import_folds_bn_and_drops_passthrough(models):
    g = load_onnx(models["cnn_const"])
    ops = [n.op for n in g.nodes]
    assert "BatchNormalization" not in ops and "Constant" not in ops
    g = load_onnx(models["mlp"])
    ops = [n.op for n in g.nodes]
    assert "Dropout" not in ops and "Identity" not in ops
    # Gemm transB=0 and MatMul (2-D input) become (out, in) Gemm weights
    assert ops.count("Gemm") == 3
    assert "Add" not in ops  # MatMul + Add(bias) became one Gemm with a bias
    assert all(n.attr("transB") == 1 for n in g.nodes if n.op == "Gemm")


def test_import_keeps_function(models, tmp_path):
    """The imported (folded, normalised) graph computes what the ONNX file computes."""
    from edgepack.packer.onnx_io import graph_to_onnx
    for name in ("mlp", "cnn_const", "cnn_spread"):
        g = load_onnx(models[name])
        feeds = random_inputs(g, 8)
        want = session(models[name]).run(None, feeds)[0]
        got = session(graph_to_onnx(g)).run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_config_file_per_layer(models, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"default": {"sparsity": 0.5, "bits": 4},
                               "layers": {"fc": {"encoding": "dense"}, "c2.w": {"sparsity": 0.8, "bits": 3}}}))
    report = pack(models["cnn"], tmp_path / "m.epk", config=cfg)
    by = {r["name"]: r for r in report.info["layers"]}
    assert by["fc.w"]["encoding"] == "dense float32"
    assert abs(by["c2.w"]["kept"] / by["c2.w"]["weights"] - 0.2) < 0.01
    assert by["c2.w"]["k"] <= 8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"default": {"sparsityy": 0.5}}))
    with pytest.raises(ValueError, match="sparsityy"):
        pack(models["cnn"], tmp_path / "m2.epk", config=bad)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95, 1.0])
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_encode_weight_edge_cases(sparsity, bits):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 3, 2, 2)).astype(np.float32)
    w[2] = 0.0  # an empty row
    e = encode_weight(w, LayerSettings(sparsity=sparsity, encoding="auto" if sparsity == 0 else "sparse_codebook",
                                       bits=bits), 8)
    assert e.reference.shape == w.shape
    kept = e.reference != 0
    assert kept.sum() <= round((1 - sparsity) * w.size)
    if sparsity == 1.0:
        assert not kept.any()
    assert np.unique(e.reference[kept]).size <= 2 ** bits


def test_han_quality_rule(models, tmp_path):
    report = pack(models["mlp"], tmp_path / "m.epk", quality=1.0, bits=5)
    g = load_onnx(models["mlp"])
    for r in report.info["layers"]:
        if r["k"]:
            w = g.initializers[r["name"]]
            assert r["kept"] == int((np.abs(w) > np.std(w)).sum())


def test_packed_graph_round_trip(models, tmp_path):
    out = tmp_path / "m.epk"
    pack(models["cnn"], out, sparsity=0.3)
    g0 = load_onnx(models["cnn"])
    g1 = packed_to_graph(out)
    assert [(n.op, n.inputs, n.outputs, n.attrs) for n in g0.nodes] == \
        [(n.op, n.inputs, n.outputs, n.attrs) for n in g1.nodes]
    assert [(v.name, v.dtype, v.shape) for v in g0.inputs] == [(v.name, v.dtype, v.shape) for v in g1.inputs]
