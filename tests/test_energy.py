"""Energy arithmetic on hand-computable layers, the SRAM-fit switch, and user tables."""
from __future__ import annotations

import json

import pytest

from edgepack.runtime.energy import DEFAULT_TABLE, Layer, fits_at, layer_cost, load_table, model_cost

T = DEFAULT_TABLE


def dense_fc(n_out=100, n_in=300):
    return Layer("fc", "Gemm", out_positions=1, weights=n_out * n_in, nonzero=n_out * n_in, stored_bytes=0,
                 bias=n_out, in_elems=n_in, out_elems=n_out)


def test_single_dense_layer_from_dram():
    l = dense_fc()
    c = layer_cost(l, packed=False, weights_on_chip=False, acts_on_chip=False, table=T)
    w_bytes = 4 * (30000 + 100)
    assert c.memory_pj == pytest.approx(w_bytes / 4 * 640 + 4 * 400 / 4 * 640)
    assert c.compute_pj == pytest.approx(30000 * (3.7 + 0.9) + 100 * 0.9)
    assert c.macs == 30000


def test_packed_layer_counts_nonzero_macs_and_lookups():
    l = Layer("fc", "Gemm", 1, weights=30000, nonzero=2400, stored_bytes=3000, bias=0, k=32, in_elems=300,
              out_elems=100)
    c = layer_cost(l, packed=True, weights_on_chip=True, acts_on_chip=True, table=T)
    assert c.macs == 2400
    assert c.compute_pj == pytest.approx(2400 * (3.7 + 0.9 + 1.0))  # codebook of 32 entries: register file
    assert c.memory_pj == pytest.approx(3000 / 4 * 5 + 1600 / 4 * 5)
    big = Layer("fc", "Gemm", 1, weights=30000, nonzero=2400, stored_bytes=3000, k=256, in_elems=300,
                out_elems=100)
    assert layer_cost(big, True, True, True, T).compute_pj == pytest.approx(2400 * (3.7 + 0.9 + 5.0))
    skip = Layer("fc", "Gemm", 1, weights=30000, nonzero=2400, stored_bytes=3000, k=32, active_fraction=0.5)
    assert layer_cost(skip, True, True, True, T).macs == 1200


def test_sram_fit_switch_at_the_boundary():
    layers = [dense_fc()]
    arena = 1600
    need = fits_at(layers, packed=False, arena_bytes=arena)
    assert need == 4 * 30100 + arena
    on, _ = model_cost(layers, False, need, arena, T)
    off, _ = model_cost(layers, False, need - 1, arena, T)
    assert on.parts["weights_on_chip"] and not off.parts["weights_on_chip"]
    assert off.memory_pj - on.memory_pj == pytest.approx(4 * 30100 / 4 * (640 - 5))
    tiny, _ = model_cost(layers, False, arena - 1, arena, T)
    assert not tiny.parts["activations_on_chip"]


def test_custom_table_replaces_defaults(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"dram_32": 100.0, "process": "7 nm (made up)"}))
    table = load_table(str(p))
    assert table["dram_32"] == 100.0 and table["sram_32"] == 5.0 and table["process"].startswith("7 nm")
    c = layer_cost(dense_fc(), False, False, False, table)
    assert c.memory_pj == pytest.approx(4 * 30500 / 4 * 100)
    toml = tmp_path / "t.toml"
    toml.write_text('sram_32 = 2.5\n')
    assert load_table(str(toml))["sram_32"] == 2.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dram": 1}))
    with pytest.raises(ValueError, match="unknown energy table keys"):
        load_table(str(bad))
    bad.write_text(json.dumps({"dram_32": -1}))
    with pytest.raises(ValueError, match="dram_32"):
        load_table(str(bad))
