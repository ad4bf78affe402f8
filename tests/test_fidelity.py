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
