"""Tests for packer/cli_train.py: compress, sensitivity, distill and ticket run through an argparse parser built
with add_train_commands on a tiny synthetic .npz; the packed file decodes and matches the model it was packed from,
and an unreachable target is reported plainly with exit status 1."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from edgepack.packer.cli_train import add_train_commands
from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.onnx_io import load_onnx, save_onnx
from edgepack.packer.train.compress import compress
from edgepack.packer.train.engine import Trainer, init_parameters
from edgepack.packer.train.mlp import mlp_graph


def _parser():
    p = argparse.ArgumentParser(prog="edgepack")
    add_train_commands(p.add_subparsers(dest="command", required=True))
    return p


def _run(*argv) -> int:
    a = _parser().parse_args([str(v) for v in argv])
    return a.func(a)


def _graph(sizes, seed):
    layers = [(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in sizes]
    return init_parameters(mlp_graph(layers), seed=seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli_train")
    data = synthetic_classification(1000, 400, 20, 4, seed=3)
    np.savez(d / "data.npz", **data)
    tr = Trainer(_graph(((20, 128), (128, 64), (64, 4)), 0), lr=0.05, batch_size=32)
    tr.fit(data, 3, evaluate=False)
    save_onnx(tr.export(), d / "model.onnx")
    save_onnx(_graph(((20, 16), (16, 4)), 1), d / "student.onnx")
    return d, data


def _packed_error(epk, data):
    from edgepack.packer.unpack import packed_to_graph

    g = packed_to_graph(epk)
    return Trainer(g).error_rate(data["x_test"], data["y_test"]), g


def test_compress_with_sparsity_and_bits(files, capsys):
    d, data = files
    out = d / "fixed.epk"
    assert _run("compress", d / "model.onnx", "--data", d / "data.npz", "-o", out, "--sparsity", 0.8, "--bits",
                4, "--epochs", 1, "--tune-epochs", 1, "-q") == 0
    text = capsys.readouterr().out
    assert "test error: input model" in text and "packed file" in text and "smaller" in text
    err, g = _packed_error(out, data)
    assert err < 0.2
    for k in ("fc1.weight", "fc2.weight", "fc3.weight"):
        w = g.initializers[k]
        assert np.mean(w == 0) == pytest.approx(0.8, abs=0.01)
        assert len(np.unique(w[w != 0])) <= 15  # 4-bit codebook, code 0 kept for the pruned zeros


def test_compress_target_met_and_report(files, capsys):
    d, data = files
    out = d / "auto.epk"
    assert _run("compress", d / "model.onnx", "--data", d / "data.npz", "-o", out, "--target-ratio", 3,
                "--max-drop", 3, "--epochs", 1, "--tune-epochs", 1, "-q") == 0
    text = capsys.readouterr().out
    assert "reached" in text and "target 3x" in text
    assert out.is_file()


def test_compress_unreachable_target_says_so(files, capsys):
    d, data = files
    rep = compress(d / "model.onnx", data, d / "never.epk", target_ratio=1000, max_drop=0.5, epochs=1,
                   tune_epochs=1)
    assert rep["met"] is False
    assert rep["message"].startswith("cannot reach 1000x with at most 0.5 pp more test error")
    assert (d / "never.epk").is_file()  # the best attempt is still written
    assert _run("compress", d / "model.onnx", "--data", d / "data.npz", "-o", d / "never2.epk", "--target-ratio",
                1000, "--max-drop", 0.5, "--epochs", 1, "--tune-epochs", 1, "-q") == 1
    assert "NOT MET: cannot reach 1000x" in capsys.readouterr().err


@pytest.mark.parametrize("kw, match", [(dict(target_ratio=5), "needs max_drop"),
                                       (dict(target_ratio=5, max_drop=1, bits=4), "not both"),
                                       (dict(), "nothing to do")])
def test_compress_rejects_bad_combinations(files, kw, match):
    d, data = files
    with pytest.raises(ValueError, match=match):
        compress(d / "model.onnx", data, d / "x.epk", **kw)


def test_sensitivity_command(files, capsys, tmp_path):
    d, _ = files
    assert _run("sensitivity", d / "model.onnx", "--data", d / "data.npz", "--sparsities", "0,0.5,0.9",
                "--max-drop", 1, "--plot", tmp_path / "s.png") == 0
    text = capsys.readouterr()
    assert "fc1.weight" in text.out and "90%" in text.out and "within 1 pp" in text.out
    assert (tmp_path / "s.png").is_file() or "matplotlib" in text.err


def test_distill_command(files, capsys, tmp_path):
    d, data = files
    out = tmp_path / "student.onnx"
    assert _run("distill", d / "model.onnx", "--student", d / "student.onnx", "--data", d / "data.npz", "-o", out,
                "-T", 4, "--alpha", 0.7, "--epochs", 2, "-q") == 0
    text = capsys.readouterr().out
    assert "distilled" in text and "teacher" in text
    assert Trainer(load_onnx(out)).error_rate(data["x_test"], data["y_test"]) < 0.3


def test_ticket_command(files, capsys, tmp_path):
    d, _ = files
    assert _run("ticket", d / "student.onnx", "--data", d / "data.npz", "--rounds", 2, "--rate", 0.5,
                "--epochs", 1, "-o", tmp_path / "t.onnx", "-q") == 0
    text = capsys.readouterr().out
    assert "weights left" in text and "25.00%" in text
    g = load_onnx(tmp_path / "t.onnx")
    assert np.mean(g.initializers["fc1.weight"] == 0) == pytest.approx(0.75, abs=0.01)
    assert _run("ticket", d / "student.onnx", "--data", d / "data.npz", "--rounds", 1, "--epochs", 1, "--control",
                "--init", "file", "-q") == 0
    text = capsys.readouterr().out
    assert "rewind to init" in text and "random re-init of the ticket's masks (control)" in text
    assert _run("ticket", d / "student.onnx", "--data", d / "data.npz", "--rounds", 1, "--epochs", 1, "--control",
                "own", "--rate", "fc1.weight=0.4,fc2.weight=0.2", "-q") == 0
    text = capsys.readouterr().out
    assert "random re-init (control)" in text and "fc1.weight 40%, fc2.weight 20%" in text
    with pytest.raises(SystemExit, match="--rate"):
        _run("ticket", d / "student.onnx", "--data", d / "data.npz", "--rate", "fc1=x")


def test_parser_help_lists_commands():
    text = _parser().format_help()
    for cmd in ("compress", "sensitivity", "distill", "ticket"):
        assert cmd in text
