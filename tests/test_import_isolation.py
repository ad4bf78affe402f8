"""The device side imports numpy and numba only: a fresh interpreter imports runtime, loads and runs a packed model
(through the public API and through `edgepack run`'s code path), and no onnx, onnxruntime or packer module shows up."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import zoo
from edgepack.packer.pipeline import pack

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
import numpy as np
from edgepack import runtime
model = runtime.load(sys.argv[1], memory_budget="1MiB")
y = model.run(np.load(sys.argv[2]))["y"]
np.save(sys.argv[3], y)
streamed = runtime.load(sys.argv[1], layer_modes="streamed").run(np.load(sys.argv[2]))["y"]
assert np.allclose(streamed, y, rtol=1e-6, atol=1e-6)
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("onnx", "onnxruntime") or m.startswith("edgepack.packer"))
print(json.dumps({"bad": bad, "numba": "numba" in sys.modules}))
"""


def test_runtime_imports_no_onnx_or_packer(tmp_path):
    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    packed = tmp_path / "cnn.epk"
    pack(src, packed, sparsity=0.5, bits=6)
    x = np.random.default_rng(0).standard_normal((2, 1, 12, 12)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, "-c", CHILD, str(packed), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report == {"bad": [], "numba": True}
    assert np.load(tmp_path / "y.npy").shape == (2, 10)
