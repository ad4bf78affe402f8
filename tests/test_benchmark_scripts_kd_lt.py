"""Smoke tests of benchmarks/distillation.py and benchmarks/lottery_ticket.py: the image jitter against a plain numpy
shift, the dropout teacher graph against onnxruntime, the ticket-mask control, and (when MNIST is cached) both
scripts end to end with --quick."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer import datasets
from edgepack.packer.datasets import synthetic_classification
from edgepack.packer.train.engine import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


kd = _load("distillation")
lt = _load("lottery_ticket")


def _shift_reference(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(img)
    h, w = img.shape
    for y in range(h):
        for x in range(w):
            if 0 <= y - dy < h and 0 <= x - dx < w:
                out[y, x] = img[y - dy, x - dx]
    return out


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 3), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_shift_images_matches_a_plain_shift(max_shift, n, seed):
    side = 6
    x = np.random.default_rng(seed).random((n, side * side)).astype(np.float32)
    got = kd.shift_images(x, np.random.default_rng(seed), max_shift, side)
    # the same generator state gives the same draws: dy for all images, then dx
    rng = np.random.default_rng(seed)
    dy = rng.integers(-max_shift, max_shift + 1, n)
    dx = rng.integers(-max_shift, max_shift + 1, n)
    assert got.shape == x.shape and got.dtype == x.dtype
    for i in range(n):
        want = _shift_reference(x[i].reshape(side, side), int(dy[i]), int(dx[i]))
        np.testing.assert_array_equal(got[i].reshape(side, side), want)


def test_jitter_trainer_without_jitter_matches_the_trainer():
    data = synthetic_classification(200, 50, 784, 10, seed=1)
    g = kd.mlp((16,), 0, 0.2, 0.5)
    a = kd.JitterTrainer(g, jitter=0, batch_size=32, seed=3)
    b = Trainer(g, batch_size=32, seed=3)
    a.fit(data, 1, evaluate=False)
    b.fit(data, 1, evaluate=False)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_dropout_teacher_exports_to_onnx_and_runs_as_the_engine(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgepack.packer.onnx_io import save_onnx
    from edgepack.packer.train.distill import teacher_logits

    g = kd.mlp((12, 8), 0, 0.2, 0.5)
    assert [n.op for n in g.nodes].count("Dropout") == 3
    x = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    save_onnx(g, tmp_path / "t.onnx")
    want = Trainer(g).predict(x)
    np.testing.assert_allclose(teacher_logits(tmp_path / "t.onnx", x), want, rtol=1e-5, atol=1e-5)


_MNIST_CACHED = (datasets._cache_folder(None) / f"mnist-{datasets.MNIST_SHA256[:12]}.npz").is_file()


@pytest.mark.skipif(not _MNIST_CACHED, reason="MNIST not cached (no download inside the test suite)")
@pytest.mark.parametrize("script,result", [("distillation", "distillation.json"),
                                           ("lottery_ticket", "lottery_ticket.json")])
def test_script_quick_run_writes_its_outputs(tmp_path, script, result):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--quick", "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)  # a hang guard
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((tmp_path / result).read_text())
    assert rep["command"].endswith("--quick") and rep["targets"]
    assert (tmp_path / result.replace(".json", ".md")).read_text().count("|") > 10
    assert "targets:" in proc.stdout
