"""The reference networks the benchmarks train (packer/train/models.py): their ONNX export runs in onnxruntime with
the same outputs as the training engine, and a few steps of training on them lower the loss."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.packer.train.engine import Trainer, init_parameters
from edgepack.packer.train.models import lenet5_graph, lenet300_graph

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("build, n_params, in_shape", [
    (lenet300_graph, 266_610, (784,)),
    (lenet5_graph, 431_080, (1, 28, 28)),  # the paper's 431K parameters
])
def test_graph_matches_onnxruntime_and_learns(build, n_params, in_shape, tmp_path):
    from edgepack.packer.onnx_io import save_onnx

    g = init_parameters(build(), seed=3, scheme="lecun_uniform")
    assert sum(v.size for v in g.initializers.values()) == n_params
    rng = np.random.default_rng(0)
    x = rng.random((32,) + in_shape, dtype=np.float32)
    y = rng.integers(0, 10, 32)
    trainer = Trainer(g, lr=0.05, batch_size=32, seed=0)
    path = tmp_path / "m.onnx"
    save_onnx(trainer.export(), path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(trainer.predict(x), expected, rtol=1e-4, atol=1e-5)
    before = trainer.loss_and_grads(x, y, training=False)[0]
    for _ in range(10):
        trainer.train_step(x, y, 0.05)
    assert trainer.loss_and_grads(x, y, training=False)[0] < 0.5 * before
