"""`edgepack energy` end to end on a small packed model."""
from __future__ import annotations

import json

import numpy as np

import zoo
from packer.cli import main
from packer.pipeline import pack


def test_energy_json_and_data(tmp_path, capsys):
    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    pack(src, out, sparsity=0.8, bits=5)
    assert main(["energy", str(out), "--sram", "8KiB", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("original", "packed"):
        assert {"total_uj", "compute_uj", "memory_uj"} <= set(r[key])
        assert r[key]["total_uj"] == r[key]["compute_uj"] + r[key]["memory_uj"]
    assert r["sram_bytes"] == 8192
    assert r["packed"]["macs"] < 0.25 * r["original"]["macs"]
    assert r["packed"]["total_uj"] < r["original"]["total_uj"]
    x = np.maximum(np.random.default_rng(0).standard_normal((20, 64)), 0).astype(np.float32)  # half zeros
    np.save(tmp_path / "x.npy", x)
    assert main(["energy", str(out), "--data", str(tmp_path / "x.npy"), "--json"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["packed"]["macs"] < 0.7 * r["packed"]["macs"]  # zero inputs skipped
    assert main(["energy", str(out)]) == 0
    assert "SRAM sweep" in capsys.readouterr().out
