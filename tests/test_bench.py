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
from packer import bench as bench_mod
from packer.cli import main
from packer.pipeline import pack
from packer.verify import session

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
