"""`edgepack warm` (runtime/warm.py) fills the Numba cache: after it, a fresh process's first run of the model
compiles nothing (every kernel it calls is loaded from the cache), while a layer mode that was not warmed still
compiles (the check sees compiles)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import zoo
from edgepack.cli import main
from edgepack.packer.pipeline import pack

# In a fresh process: load and run once, then for every Numba dispatcher of edgepack.runtime that was called, its
# cache statistics (hits: loaded from NUMBA_CACHE_DIR; misses: compiled here).
_PROBE = r"""
import json, sys
import numpy as np
from numba.core.dispatcher import Dispatcher
from edgepack import runtime
mode = sys.argv[2] or None
model = runtime.load(sys.argv[1], layer_modes=mode)
model.run(np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32))
stats = {}
for name, mod in list(sys.modules.items()):
    if not name.startswith("edgepack.runtime"):
        continue
    for attr, obj in vars(mod).items():
        if isinstance(obj, Dispatcher) and obj.signatures:
            s = obj.stats
            stats[f"{name}.{attr}"] = [sum(s.cache_hits.values()), sum(s.cache_misses.values())]
print(json.dumps(stats))
"""


def _probe(epk, cache, mode=""):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    r = subprocess.run([sys.executable, "-c", _PROBE, str(epk), mode], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("warm")
    pack(zoo.save(zoo.mlp(), d / "mlp.onnx"), d / "mlp.epk", sparsity=0.6, bits=4)
    return d / "mlp.epk"


def test_after_warm_a_fresh_process_compiles_nothing(packed, tmp_path):
    cache = tmp_path / "numba-cache"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    r = subprocess.run([sys.executable, "-m", "edgepack", "warm", str(packed)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warmed" in r.stdout and str(cache) in r.stdout
    assert any(cache.rglob("*.nbc")), "warm wrote no compiled kernels to the cache"

    stats = _probe(packed, cache)
    assert stats, "the run called no Numba kernel: nothing was checked"
    compiled = {k: v for k, v in stats.items() if v[1] or not v[0]}
    assert not compiled, f"compiled in the first run after warm (not loaded from the cache): {compiled}"

    # A layer mode that warm did not cover compiles: the statistics do see compiles.
    streamed = _probe(packed, cache, "streamed")
    assert any(v[1] for v in streamed.values()), streamed


def test_warm_reports_each_mode_and_refuses_a_bad_one(packed, capsys):
    assert main(["warm", str(packed), "--layer-modes", "compact", "--batch", "2"]) == 0
    assert "layer modes compact, batch 2" in capsys.readouterr().out
    assert main(["warm", str(packed), "--layer-modes", "sideways"]) == 2
    assert "sideways" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["warm", str(packed), "--batch", "0"])
