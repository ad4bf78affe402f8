"""Fidelity-guarded packing: --max-error raises precision where the error comes from, and pack warns otherwise."""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from packer.pipeline import pack
from packer.verify import compare


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    return zoo.save(zoo.cnn(scale_spread=6), tmp_path_factory.mktemp("f") / "spread.onnx")


def test_max_error_bound_is_met(spread, tmp_path):
    out = tmp_path / "m.epk"
    r = pack(spread, out, sparsity=0, bits=3, channel_scales=False, max_error=0.01)
    assert r.fidelity.met and r.fidelity.before.rel_l2 > 0.01 >= r.fidelity.after.rel_l2
    assert r.fidelity.changes  # it had to change something, and says what
    # the bound holds on the calibration inputs (random, seed 0, 16 samples: the default) ...
    assert compare(spread, out, batch=16, seed=0).rel_l2_error <= 0.01 + 1e-6
    # ... and the file records what was changed
    from runtime.loader import read_packed
    assert read_packed(out).meta["settings"]["fidelity"]["changes"]


def test_max_error_picks_cheap_changes_first(spread, tmp_path):
    loose = pack(spread, tmp_path / "a.epk", sparsity=0, bits=3, channel_scales=False, max_error=0.5)
    tight = pack(spread, tmp_path / "b.epk", sparsity=0, bits=3, channel_scales=False, max_error=0.005)
    assert loose.total_bytes <= tight.total_bytes
    assert len(loose.fidelity.changes) <= len(tight.fidelity.changes)


def test_calibration_inputs_are_used(spread, tmp_path):
    x = np.random.default_rng(5).standard_normal((8, 1, 12, 12)).astype(np.float32)
    r = pack(spread, tmp_path / "m.epk", sparsity=0, bits=4, max_error=0.02, calib=x)
    assert r.fidelity.after.rel_l2 <= 0.02
    assert compare(spread, tmp_path / "m.epk", feeds={"x": x}).rel_l2_error <= 0.02 + 1e-6


def test_warning_without_bound(spread, tmp_path):
    r = pack(spread, tmp_path / "m.epk", sparsity=0.9, bits=2)
    assert any("differ from the original" in w for w in r.warnings)
    ok = pack(spread, tmp_path / "n.epk", sparsity=0, bits=8)
    assert not ok.warnings


def test_float16_never_overflows():
    from packer.encode import dense, fits_float16
    assert not fits_float16(np.float32([1e6]))
    with pytest.raises(ValueError, match="float16 cannot hold"):
        dense(np.float32([1e6, 1.0]), "float16")


def test_guard_prunes_less_when_pruning_causes_the_error(spread, tmp_path):
    """Pruning 95% at 8 bits: more bits cannot help, keeping more weights can; the guard's ladder has that rung
    and it is cheaper than going dense."""
    r = pack(spread, tmp_path / "m.epk", sparsity=0.95, bits=8, max_error=0.05)
    assert r.fidelity.met and r.fidelity.after.rel_l2 <= 0.05
    assert any(c.what.startswith("prune less: sparsity 0.95 -> 0.9") for c in r.fidelity.changes)
    assert compare(spread, tmp_path / "m.epk", batch=16, seed=0).rel_l2_error <= 0.05 + 1e-6
    q = pack(spread, tmp_path / "q.epk", quality=3.0, bits=8, max_error=0.05)
    assert q.fidelity.met
    assert any(c.what.startswith("prune less: quality 3 -> 1.5") for c in q.fidelity.changes)


def test_prune_less_rungs():
    import dataclasses

    from packer.encode import LayerSettings, encode_weight
    from packer.fidelity import _upgrades

    w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    s = LayerSettings(sparsity=0.96, bits=8, encoding="sparse_codebook")
    seen = []
    for _ in range(6):
        enc = encode_weight(w, s, 8)
        rung = [x for x in _upgrades(s, enc, 8) if x[0].startswith("prune less")]
        if not rung:
            break
        seen.append(rung[0][1].sparsity)
        s = rung[0][1]
    assert seen == pytest.approx([0.92, 0.84, 0.68, 0.36, 0.0])
    assert s.encoding == "auto"  # unpruned: no longer forced to CSR
    assert not [x for x in _upgrades(dataclasses.replace(s, sparsity=0.0), encode_weight(w, s, 8), 8)
                if x[0].startswith("prune less")]
