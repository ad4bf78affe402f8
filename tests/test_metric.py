"""A task metric the user gives (packer/metric.py, `pack(metric=...)`, `edgepack pack --metric`): the built-in top1
against a loop, loading NAME / MODULE:FUNCTION / FILE.py:FUNCTION, --max-error bounding the metric (held to the metric
computed independently: onnxruntime on the original and on the unpacked file), --target-ratio reporting it, and every
way it can be misused or fail, with nothing written."""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from edgepack.packer.metric import load_metric, measure, top1
from edgepack.packer.pipeline import pack
from edgepack.packer.unpack import unpack
from edgepack.packer.verify import session
from edgepack.runtime.errors import EdgepackError, InputError

SIZES = (96, 128, 64, 10)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    return zoo.save(zoo.mlp(seed=5, sizes=SIZES), tmp_path_factory.mktemp("m") / "mlp.onnx")


def _calib(n: int = 96, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, SIZES[0] // 4)) @ rng.standard_normal((SIZES[0] // 4, SIZES[0]))
    return (x * np.exp(rng.normal(0, 0.7, SIZES[0]))).astype(np.float32)


def _independent_top1(original, packed_path, tmp_path, x) -> float:
    """top1 of the packed file against the original, both run by onnxruntime: the file unpacked to ONNX."""
    dense = unpack(packed_path, tmp_path / "unpacked.onnx") and tmp_path / "unpacked.onnx"
    ref = session(str(original)).run(None, {"x": x})[0]
    got = session(str(dense)).run(None, {"x": x})[0]
    return float(np.mean(ref.argmax(1) != got.argmax(1)))


def test_top1_against_a_loop():
    rng = np.random.default_rng(0)
    ref = [{"scores": rng.standard_normal((7, 5)), "boxes": rng.standard_normal((7, 4, 2)),
            "one": rng.standard_normal((7, 1))} for _ in range(3)]
    got = [{k: v + 0.8 * rng.standard_normal(v.shape) for k, v in r.items()} for r in ref]
    changed = total = 0
    for r, g in zip(ref, got):
        for i in range(7):  # only the 2-D output with more than one column is class scores
            changed += int(np.argmax(r["scores"][i]) != np.argmax(g["scores"][i]))
            total += 1
    assert top1(ref, got) == changed / total and 0 < changed < total
    assert top1(ref, ref) == 0.0
    assert top1([{"y": np.zeros((3, 2, 2))}], [{"y": np.ones((3, 2, 2))}]) == 0.0  # no class-score output


def test_load_metric(tmp_path):
    assert load_metric("top1") is top1
    assert load_metric("edgepack.packer.metric:top1") is top1
    f = tmp_path / "my_metric.py"
    f.write_text("def strings_changed(ref, got):\n    return 0.25\nNOT_CALLABLE = 3\n")
    fn = load_metric(f"{f}:strings_changed")
    assert fn([], []) == 0.25
    for spec, what in [("nope", "built-in"), (":x", "built-in"), (f"{f}:", "built-in"),
                       (f"{tmp_path}/missing.py:f", "no file"), (f"{f}:absent", "no function 'absent'"),
                       (f"{f}:NOT_CALLABLE", "no function"), ("no_such_module_xyz:f", "could not be imported")]:
        with pytest.raises(InputError, match=what):
            load_metric(spec)
    bad = tmp_path / "broken.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(InputError, match="boom"):
        load_metric(f"{bad}:f")


def test_max_error_bounds_the_metric(mlp, tmp_path):
    x = _calib()
    strict = pack(mlp, tmp_path / "s.epk", calib=x, max_error=0.0, metric=top1)
    loose = pack(mlp, tmp_path / "l.epk", calib=x, max_error=0.1, metric=top1)
    for r in (strict, loose):
        name, value, runs = r.task_error
        assert name == "top1" and runs == 1  # a dynamic batch: the calibration set is one run
        assert value == _independent_top1(mlp, r.path, tmp_path, x)
        assert value <= r.allocation.max_error
        assert r.fidelity is not None and r.fidelity.bound is None  # the guard measured, the metric bounded
    assert loose.total_bytes < strict.total_bytes  # the looser bound: a smaller file
    assert "task metric 'top1'" in loose.table()
    # the relative L2 error at the loose point is far above what a 10% bound on it would allow: the metric steered
    assert loose.fidelity.after.rel_l2 > 0.02


def test_target_ratio_reports_the_metric(mlp, tmp_path):
    x = _calib()
    calls = []

    def margin_loss(ref, got):
        calls.append((len(ref), sorted(ref[0])))
        return top1(ref, got)

    r = pack(mlp, tmp_path / "r.epk", calib=x, target_ratio=7, metric=margin_loss, check_fidelity=False)
    assert r.ratio >= 7 and calls[-1] == (1, ["y"])  # one dict per run, by output name
    assert r.task_error[0] == "margin_loss" and r.task_error[1] == _independent_top1(mlp, r.path, tmp_path, x)


def test_misuse_and_failures_write_nothing(mlp, tmp_path):
    x = _calib()
    out = tmp_path / "keep.epk"
    out.write_bytes(b"a good file")
    cases = [
        (dict(max_error=0.1, metric=top1), InputError, "calibration set"),
        (dict(calib=x, bits=4, max_error=0.1, metric=top1), InputError, "leave out --bits"),
        (dict(calib=x, metric=top1), InputError, "--max-error E"),
        (dict(calib=x, target_ratio=5, metric="top1"), InputError, "callable"),
        (dict(calib=x, max_error=0.5, metric=lambda r, g: 1.0), EdgepackError, "could not be met"),
        (dict(calib=x, max_error=0.5, metric=lambda r, g: r[0]["missing"]), EdgepackError, "KeyError"),
    ]
    for kw, err, what in cases:
        with pytest.raises(err, match=what):
            pack(mlp, out, **kw)
        assert out.read_bytes() == b"a good file"


@pytest.mark.parametrize("value,what", [(float("nan"), "finite number"), (float("inf"), "finite number"),
                                        (-1, "finite number >= 0"), ("x", "not a number"), (None, "not a number")])
def test_what_a_metric_returns_is_checked(value, what):
    ref = [[np.zeros((2, 3))]]
    with pytest.raises(EdgepackError, match=what):
        measure(lambda r, g: value, ref, ref, ["y"])
    assert measure(lambda r, g: np.float32(0.5), ref, ref, ["y"]) == 0.5


def test_cli_metric(mlp, tmp_path, capsys):
    from edgepack.cli import main

    np.save(tmp_path / "x.npy", _calib())
    f = tmp_path / "task.py"
    f.write_text("import numpy as np\n\ndef changed(ref, got):\n"
                 "    return float(np.mean(ref[0]['y'].argmax(1) != got[0]['y'].argmax(1)))\n")
    out = tmp_path / "c.epk"
    args = ["pack", str(mlp), "-o", str(out), "--calib", str(tmp_path / "x.npy"), "-q"]
    assert main(args + ["--max-error", "0.05", "--metric", f"{f}:changed"]) == 0
    text = capsys.readouterr().out
    assert "task metric 'changed' of the file on the 1 calibration run(s)" in text and out.is_file()
    assert main(args + ["--target-ratio", "6", "--metric", "nope"]) == 2  # an input error
    assert "--metric 'nope'" in capsys.readouterr().err
