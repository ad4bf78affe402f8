"""`edgepack bench`: one run that puts a packed model beside what users would pick instead — size (ONNX, gzip -9,
zstd -19, onnxruntime int8 dynamic quantization, edgepack), accuracy, batch-1 latency and batch-N throughput,
memory (plan and measured resident growth), estimated energy — and writes report.md, report.json and plots."""
from __future__ import annotations

import datetime
import gzip
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgepack import runtime
from edgepack.runtime.errors import InputError
from edgepack.runtime.loader import read_packed
from edgepack.runtime.memory import parse_size

# Extras that only the bench needs (pyproject extra `bench`).
REQUIRED = {"zstandard": "zstandard", "matplotlib": "matplotlib"}
SECTIONS = ("machine", "command", "size", "accuracy", "latency", "memory", "energy", "plots")
WARMUP = 50  # warm-up calls before timing, as benchmarks/runtime_vs_ort.py
SMOKE = {"repeat": 5, "batch": 8, "samples": 64}
# Defaults: repeats by time budget (at most 1000 batch-1 calls), batch N for throughput at most 256 and smaller when
# one call would exceed BUDGET["call_s"], samples: all the data, or as many random ones as BUDGET["accuracy_s"] runs.
DEFAULTS = {"repeat": None, "batch": 256, "samples": None}
DEFAULT_RANDOM_SAMPLES = 1000
BUDGET = {"latency_s": 1.0,  # timed calls per engine and shape
          "accuracy_s": 5.0,  # random samples through every accuracy engine together
          "accuracy_bytes": 256 << 20,  # random inputs held at once
          "call_s": 0.25}  # one batched call
ENERGY_CALLS = 16  # calls on which zero activations are measured when the batch is fixed


def missing_requirements() -> list[str]:
    """Modules of the `bench` extra that cannot be imported."""
    import importlib.util

    return [pkg for mod, pkg in REQUIRED.items() if importlib.util.find_spec(mod) is None]


# ---- inputs ---------------------------------------------------------------------------------------------------------

LABEL_KEYS = ("y", "y_test", "labels")
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
              "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


def _fits(have, want) -> bool:
    """Does the concrete shape `have` fit `want` (ints fixed, None free)?"""
    return len(have) == len(want) and all(w is None or int(h) == w for h, w in zip(have, want))


def read_data(spec: str | os.PathLike, names: list[str]) -> tuple[list[dict], np.ndarray | None, str]:
    """The arrays of a `--data` source, as chunks {input name: array} (each one sample or one batch; Inputs decides
    which from the model's shapes) and the labels if there are any.

    spec: "mnist"; an .npy (one input: the samples, or one sample); an .npz keyed by input name (with optional
    labels under y / y_test / labels), or with x / x_test and optional y / y_test as the training commands take;
    a folder of .npy files (one input) or .npz files keyed by input name, one sample or one batch each, read in
    name order, with the labels in y.npy or labels.npy if present."""
    from .datasets import load_data

    text = os.fspath(spec)
    if text.lower() == "mnist":
        if len(names) != 1:
            raise InputError(f"--data mnist feeds one input; the model has {len(names)}: {', '.join(names)}")
        ds = load_data("mnist", quiet=True)
        return [{names[0]: ds["x_test"]}], ds["y_test"], "mnist"
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".npy", ".npz") and p.is_file())
        label_files = [p for p in files if p.stem.lower() in ("y", "labels") and p.suffix.lower() == ".npy"]
        files = [p for p in files if p not in label_files]
        if not files:
            raise InputError(f"data folder {path}: no .npy or .npz files in it (one sample or one batch per file)")
        chunks = []
        for p in files:
            chunk, labels = _read_file(p, names)
            if labels is not None:
                raise InputError(f"data folder {path}: {p.name} holds labels; in a folder they go in y.npy or "
                                 f"labels.npy beside the input files")
            chunks.append(chunk)
        labels = _load_array(label_files[0]) if label_files else None
        return chunks, labels, os.fspath(path)
    if not path.is_file():
        raise FileNotFoundError(f"data {text}: no such file or folder (expected 'mnist', an .npy, an .npz or a "
                                f"folder of .npy files)")
    chunk, labels = _read_file(path, names)
    return [chunk], labels, os.fspath(path)


def _load_array(path: Path):
    """An .npy array or an .npz's {name: array} (runtime/tables.py read_arrays: headers checked against the file)."""
    from edgepack.runtime.tables import read_arrays

    return read_arrays(path, "data")


def _read_file(path: Path, names: list[str]) -> tuple[dict, np.ndarray | None]:
    data = _load_array(path)
    if isinstance(data, np.ndarray):
        if len(names) != 1:
            raise InputError(f"data {path}: an .npy holds one array and the model has {len(names)} inputs "
                             f"({', '.join(names)}); give an .npz keyed by input name (or a folder of them)")
        return {names[0]: data}, None
    arrays = data
    keys = list(arrays)
    if all(n in arrays for n in names):
        labels = next((arrays[k] for k in LABEL_KEYS if k in arrays and k not in names), None)
        return {n: arrays[n] for n in names}, labels
    for x_key, y_key in (("x_test", "y_test"), ("x", "y")):
        if x_key in arrays:
            if len(names) != 1:
                raise InputError(f"data {path}: '{x_key}' feeds one input and the model has {len(names)} "
                                 f"({', '.join(names)}); key the arrays by input name")
            return {names[0]: arrays[x_key]}, arrays.get(y_key)
    if len(arrays) == 1 and len(names) == 1:
        return {names[0]: next(iter(arrays.values()))}, None
    raise InputError(f"data {path}: keys {', '.join(keys) or '(none)'}; expected the model's input names "
                     f"({', '.join(names)}), or x / x_test with optional y / y_test labels")


class Inputs:
    """The shapes one call of the packed model takes and the samples the bench feeds it.

    Shapes come from the packed file: static dimensions as declared; a dynamic first dimension is the batch (1 for
    the latency runs, `batch` for throughput); other dynamic dimensions from `input_shapes` (NAME=d0,d1,... as
    pack's --input-shape) or from the data. When every input's first dimension is dynamic (`batch_free`), samples
    are rows of arrays (N, ...) and calls take any number of them; otherwise one call takes exactly the declared
    shapes and the arrays are stacks of calls (n_calls, *call shape)."""

    def __init__(self, onnx_path: str, epk_path: str, data=None, samples: int | None = None,
                 input_shapes=None, seed: int = 0):
        from .shapes import parse_input_shapes
        from .verify import session

        packed = read_packed(epk_path)
        g = packed.graph
        self.names = [vi["name"] for vi in g["inputs"]]
        self.outputs = [vo["name"] for vo in g["outputs"]]
        declared = {vi["name"]: list(vi["shape"]) for vi in g["inputs"]}
        self.declared = declared
        sess = session(onnx_path)
        onnx_inputs = {i.name: list(i.shape) for i in sess.get_inputs()}
        self.onnx_outputs = [o.name for o in sess.get_outputs()]
        missing = [n for n in onnx_inputs if n not in declared]
        unknown = [n for n in self.names if n not in onnx_inputs]
        if unknown:
            raise InputError(f"{epk_path}: input {', '.join(repr(n) for n in unknown)} is not an input of "
                             f"{onnx_path} (its inputs: {', '.join(onnx_inputs)}); was the file packed from it?")
        self.extra_feeds = self._fixed_values(packed.meta, missing, onnx_path, epk_path, sess)
        given = parse_input_shapes(input_shapes)
        for name, dims in given.items():
            if name not in declared:
                raise InputError(f"--input-shape names '{name}', which is not an input of {epk_path}; its inputs: "
                                 f"{', '.join(self.names)}")
            shape = declared[name]
            if len(dims) != len(shape):
                raise InputError(f"--input-shape {name}: {len(dims)} dimensions; the packed model declares "
                                 f"{len(shape)}: {_dims(shape)}")
            for i, (have, want) in enumerate(zip(shape, dims)):
                if isinstance(have, int) and have != want:
                    raise InputError(f"--input-shape {name}: dimension {i} = {want}, but the packed model fixes it "
                                     f"to {have} (declared {_dims(shape)})")
        for name in self.names:  # the ONNX model must accept what the packed one takes
            a, b = declared[name], onnx_inputs[name]
            if len(a) != len(b) or any(isinstance(p, int) and isinstance(q, int) and p != q for p, q in zip(a, b)):
                raise InputError(f"input '{name}': the packed file declares {_dims(a)}, {onnx_path} declares "
                                 f"{_dims(b)}; bench compares a packed file with the model it was packed from")
        fixed0 = [n for n in self.names if not declared[n] or isinstance(declared[n][0], int)]
        self.batch_free = bool(self.names) and not fixed0
        # symbolic dimensions that name a batch (a dynamic first dimension): 1 where a call has a fixed shape
        batch_syms = {declared[n][0] for n in self.names if declared[n] and isinstance(declared[n][0], str)}

        def dim(n: str, i: int, d):
            if n in given:
                return given[n][i]
            if isinstance(d, int):
                return d
            if not self.batch_free and (i == 0 or d in batch_syms):
                return 1
            return None  # from the data, or an error asking for --input-shape

        # per input: the dims of one call (fixed) or of one sample after the batch (free); None: not known yet
        self.tail = {n: [dim(n, i, d) for i, d in enumerate(declared[n])] for n in self.names}
        if self.batch_free:
            self.batch_note = None
            units = {given[n][0] for n in self.names if n in given}
            if len(units) > 1:
                raise InputError(f"--input-shape: the inputs' first (batch) dimensions differ: {sorted(units)}")
            self.unit = units.pop() if units else 1
            self.tail = {n: t[1:] for n, t in self.tail.items()}
            self.per_call = 1
        else:
            n = fixed0[0]
            self.batch_note = (f"input '{n}' fixes dimension 0 to {declared[n][0]} (declared {_dims(declared[n])})"
                               if declared[n] else f"input '{n}' is a scalar")
            self.unit = None
            first = self.tail[self.names[0]]
            # samples per call: the first input's first dimension
            self.per_call = int(first[0]) if first and first[0] is not None else 1
        self.labels = None
        self.source = "random"
        self.dropped = 0
        if data is not None:
            chunks, labels, self.source = read_data(data, self.names)
            self.x = self._from_chunks(chunks)
            if labels is not None:
                labels = np.asarray(labels)
                numeric = np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
                if numeric and labels.ndim == 2 and labels.shape[1] > 1:  # one-hot
                    labels = labels.argmax(1)
                if not numeric or labels.ndim != 1 or not np.all(np.isfinite(labels)) or \
                        not np.all(np.mod(labels, 1) == 0):
                    raise InputError(f"data {self.source}: labels must be integer class indices (N,) or one-hot "
                                     f"(N, classes); found {labels.dtype}{list(labels.shape)}")
                labels = labels.astype(np.int64)
                have = self.samples
                if len(labels) < have:
                    raise InputError(f"data {self.source}: {len(labels)} labels for {have} samples")
                self.labels = labels[:have]
            if samples is not None:
                self.x = {k: v[: self._rows(samples)] for k, v in self.x.items()}
                if self.labels is not None:
                    self.labels = self.labels[: self.samples]
            if self.count == 0:
                raise InputError(f"data {self.source}: no samples")
        else:
            open_dims = {n: i + (1 if self.batch_free else 0) for n, t in self.tail.items()
                         for i, d in enumerate(t) if d is None}
            if open_dims:
                n, i = next(iter(open_dims.items()))
                raise InputError(f"input '{n}': dimension {i} is dynamic in the packed model (declared "
                                 f"{_dims(declared[n])}); give it with --input-shape {n}=d0,d1,... (as for "
                                 f"pack), or give --data")
            self.x = self.random(samples or DEFAULT_RANDOM_SAMPLES, seed)

    @staticmethod
    def _fixed_values(meta, missing, onnx_path, epk_path, sess) -> dict:
        """Feeds for ONNX inputs the packed file fixed at pack time (its settings' input_values)."""
        if not missing:
            return {}
        settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
        values = settings.get("input_values") if isinstance(settings.get("input_values"), dict) else {}
        types = {i.name: i.type for i in sess.get_inputs()}
        out = {}
        for name in missing:
            if name not in values:
                raise InputError(f"{onnx_path} has input '{name}', which {epk_path} does not have (nor a value "
                                 f"fixed for it at pack time): bench cannot feed it to the original")
            dtype = ORT_DTYPES.get(types[name])
            if dtype is None:
                raise InputError(f"{onnx_path}: input '{name}' is {types[name]}, fixed to {values[name]!r} at pack "
                                 f"time; bench cannot make a value of that type")
            out[name] = np.asarray(values[name], dtype=dtype)
        return out

    # ---- data -------------------------------------------------------------------------------------------------------

    def _from_chunks(self, chunks: list[dict]) -> dict[str, np.ndarray]:
        per: dict[str, list] = {n: [] for n in self.names}
        counts = []
        for i, chunk in enumerate(chunks):
            where = f"{self.source}" + (f" (file {i + 1} of {len(chunks)})" if len(chunks) > 1 else "")
            rows = {n: self._rows_of(n, np.asarray(chunk[n]), where) for n in self.names}
            lens = {len(v) for v in rows.values()}
            if len(lens) > 1:
                raise InputError(f"data {where}: the inputs hold different numbers of samples: "
                                 + ", ".join(f"{n} {len(v)}" for n, v in rows.items()))
            counts.append(lens.pop())
            for n in self.names:
                per[n].append(rows[n])
        return {n: np.ascontiguousarray(np.concatenate(v), dtype=np.float32) for n, v in per.items()}

    def _rows_of(self, name: str, a: np.ndarray, where: str) -> np.ndarray:
        """`a` as rows of this input: samples (N, *tail) when the batch is free, else calls (n, *call shape).
        Accepts one sample or one call without its leading axis, and flat samples of the right size."""
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise InputError(f"data {where}: input '{name}' is {a.dtype}; expected numbers")
        tail = self.tail[name]
        if self.batch_free:
            rows = self._match(a, tail)
        else:
            b = tail[0] if tail else None
            rows = self._match(a, tail)
            if rows is None and b is not None and a.ndim >= 1:  # samples along axis 0, grouped into calls
                s = self._match(a, tail[1:])
                if s is not None:
                    usable = len(s) - len(s) % b
                    self.dropped = max(self.dropped, len(s) - usable)
                    rows = s[:usable].reshape(usable // b, b, *s.shape[1:])
        if rows is None:
            want = [d if d is not None else "?" for d in tail]
            lead = "(N, " + ", ".join(map(str, want)) + ")" if want else "(N,)"
            raise InputError(f"data {where}: input '{name}' has shape {list(a.shape)}, which does not fit the "
                             f"packed model's {_dims(self.declared[name])}: expected {lead}, one "
                             + ("sample" if self.batch_free else "call") + f" {tuple(want)}, or flat samples")
        if any(d is None for d in tail):  # the data fixes the dynamic dimensions
            self.tail[name] = list(rows.shape[1:])
        return rows

    @staticmethod
    def _match(a: np.ndarray, tail: list) -> np.ndarray | None:
        """a as (N, *tail): already so, one row without its axis, or flat rows of the same size."""
        if _fits(a.shape[1:], tail) and a.ndim == len(tail) + 1:
            return a
        if _fits(a.shape, tail):
            return a[None]
        if a.ndim >= 1 and all(d is not None for d in tail) and tail:
            per = int(np.prod(tail, dtype=np.int64))
            if a.ndim >= 2 and int(np.prod(a.shape[1:], dtype=np.int64)) == per:
                return a.reshape(len(a), *tail)
        return None

    def random(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """n samples of standard normal inputs (fixed batch: n // samples-per-call calls, at least one), no more
        than BUDGET['accuracy_bytes'] of them."""
        rng = np.random.default_rng(seed)
        rows = n if self.batch_free else max(1, n // self.per_call)
        row_bytes = sum(4 * int(np.prod(self.tail[k])) for k in self.names)
        rows = max(1, min(rows, BUDGET["accuracy_bytes"] // max(row_bytes, 1)))
        return {name: rng.standard_normal((rows, *self.tail[name])).astype(np.float32) for name in self.names}

    # ---- calls ------------------------------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Rows: samples when the batch is free, calls otherwise."""
        return int(next(iter(self.x.values())).shape[0]) if self.x else 0

    @property
    def samples(self) -> int:
        return self.count if self.batch_free else self.count * self.per_call

    def _rows(self, samples: int) -> int:
        return samples if self.batch_free else max(1, -(-samples // self.per_call))

    @property
    def step(self) -> int | None:
        """Rows per call when the batch is not free (1); None: any."""
        return None if self.batch_free else 1

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows start..stop as feeds (batch free), or the call `start` (otherwise: stop is ignored)."""
        if self.batch_free:
            feeds = {k: np.ascontiguousarray(v[start:stop]) for k, v in self.x.items()}
        else:
            feeds = {k: np.ascontiguousarray(v[start]) for k, v in self.x.items()}
        return feeds

    def calls(self, limit: int | None = None) -> list[dict[str, np.ndarray]]:
        n = self.count if limit is None else min(self.count, limit)
        return [self.take(i, i + 1) for i in range(n)]

    def batch(self, n: int) -> dict[str, np.ndarray]:
        """One call: n samples (repeated when there are fewer) when the batch is free, else the first call."""
        if not self.batch_free:
            return self.take(0, 1)
        idx = np.arange(n) % self.count
        return {k: np.ascontiguousarray(v[idx]) for k, v in self.x.items()}

    def call_shapes(self, n: int | None = None) -> dict[str, tuple]:
        """Shapes of one call (n samples when the batch is free; default the latency batch)."""
        if self.batch_free:
            return {k: (n or self.unit, *self.tail[k]) for k in self.names}
        return {k: tuple(self.tail[k]) for k in self.names}

    def describe(self) -> list[str]:
        shapes = self.call_shapes()
        out = []
        for k in self.names:
            decl = _dims(self.declared[k])
            given = "" if decl == _dims(list(shapes[k])) else f" (declared {decl})"
            out.append(f"{k} float32{list(shapes[k])}{given}")
        return out


# ---- measurements ---------------------------------------------------------------------------------------------------

def machine() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("numba", "onnxruntime", "onnx"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal"))
        info["memory_bytes"] = kb * 1024
    except (OSError, StopIteration):
        info["memory_bytes"] = None
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        info["load_average"] = None
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def int8_dynamic(onnx_path: str, out_path: str) -> str | None:
    """onnxruntime's int8 dynamic quantization of the model (weights int8, activations quantized at run time);
    None, or the error text, when the quantizer refuses the model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger at WARNING
    try:
        quantize_dynamic(onnx_path, out_path, weight_type=QuantType.QInt8)
    except Exception as e:  # the quantizer raises many types on models it cannot handle; the bench goes on
        return f"{type(e).__name__}: {e}"
    finally:
        root.setLevel(level)
    return None


def sizes(onnx_path: str, epk_path: str, int8_path: str, int8_error: str | None) -> dict:
    import zstandard

    raw = Path(onnx_path).read_bytes()
    original = len(raw)
    info = read_packed(epk_path)
    from edgepack.runtime.summary import layer_table

    table = layer_table(info)
    rows = [("onnx", "original ONNX (fp32)", original),
            ("gzip", "gzip -9 of the ONNX", len(gzip.compress(raw, compresslevel=9, mtime=0))),
            ("zstd", "zstd -19 of the ONNX", len(zstandard.ZstdCompressor(level=19).compress(raw)))]
    if int8_error is None:
        rows.append(("int8", "onnxruntime int8 dynamic quantization", os.path.getsize(int8_path)))
    rows.append(("edgepack", "edgepack file", info.file_size))
    variants = {key: {"label": label, "bytes": b, "ratio_vs_onnx": original / b if b else None}
                for key, label, b in rows}
    return {"variants": variants, "int8_error": int8_error, "fp32_weight_bytes": table["original_bytes"],
            "edgepack_ratio": table["ratio"], "layer_table": _clean(table)}


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, printed beside every timing."""
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return [round(v, 2) for v in os.getloadavg()]


def write_readme_section(path, section: str, begin: str, end: str, title: str = "") -> None:
    """Put `section` between the markers begin / end of a README (benchmarks/README.md), replacing what a previous
    run wrote there; the first time, as a new section (with `title`) before the run_all.sh generated part."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    block = f"{begin}\n\n{section.rstrip()}\n\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        block = f"{title}\n\n{block}" if title else block
        i = text.find("<!-- run_all.sh:")
        text = (text[:i] + block + "\n\n" + text[i:]) if i >= 0 else (text.rstrip() + "\n\n" + block + "\n")
    path.write_text(text)


def machine_line() -> str:
    """machine() in one line, as the benchmark scripts print it: 'x86_64 AMD EPYC 2 cores'."""
    m = machine()
    return f"{m['machine']} {m['cpu']} {m['cores']} cores".strip()


def json_default(v):
    """json.dumps(default=...) for numpy values: scalars as Python numbers, arrays as lists."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot serialise {type(v).__name__}")


def _clean(v):
    """JSON-safe: inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _predict(run, inputs: Inputs, chunk: int, bar=None) -> dict[str, np.ndarray]:
    """Every output over all the inputs' rows, in order: chunks of `chunk` samples when the batch is free, one call
    at a time otherwise."""
    outs: dict[str, list] = {}
    step = inputs.step or chunk
    for s in range(0, inputs.count, step):
        y = run(inputs.take(s, s + step))
        if not isinstance(y, dict):
            y = {"output": y}
        for k, v in y.items():
            outs.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
        if bar is not None:
            bar.update(1)
    return {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in outs.items()}


def _is_classifier(y: np.ndarray) -> bool:
    return y.ndim == 2 and y.shape[1] > 1


def _compare(y: np.ndarray, ref: np.ndarray) -> dict:
    if y.shape != ref.shape:
        return {"error": f"shape {list(y.shape)}, the original's {list(ref.shape)}"}
    r = {"max_abs_diff": float(np.abs(y - ref).max()) if y.size else 0.0,
         "rel_l2": float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))}
    if _is_classifier(ref):
        r["top1_agreement"] = float(np.mean(y.argmax(1) == ref.argmax(1)))
    return r


def accuracy(engines: dict, inputs: Inputs, chunk: int, progress: bool, metric=None) -> dict:
    """Per variant and per output: top-1 agreement with the original for classifier outputs (N, classes), relative
    L2 error and max abs difference otherwise; accuracy on the labels (first output) when there are labels; and
    `metric(ref_outputs, test_outputs) -> float` over {output name: array of every sample} when given."""
    from tqdm import tqdm

    outs = {}
    for key, run in engines.items():
        chunks = -(-inputs.count // (inputs.step or chunk))
        with tqdm(total=chunks, desc=f"accuracy {key}", unit="call", file=sys.stderr, leave=False,
                  disable=not progress) as bar:
            outs[key] = _predict(run, inputs, chunk, bar)
    ref = outs["original"]
    names = list(ref)
    first = ref[names[0]] if names else np.zeros((0,))
    labels = inputs.labels
    result = {"source": inputs.source, "samples": int(getattr(inputs, "samples", len(first))),
              "labelled": labels is not None, "classification": _is_classifier(first), "outputs": names,
              "metric": None, "notes": [], "variants": {}}
    if labels is not None and not result["classification"]:
        result["notes"].append(f"labels given, but the first output '{names[0]}' is {list(first.shape)}, not "
                               f"(samples, classes): no accuracy, agreement with the original only")
    if labels is not None and result["classification"] and len(labels) != len(first):
        result["notes"].append(f"{len(labels)} labels for {len(first)} rows of '{names[0]}': no accuracy")
        labels = None
    if metric is not None:
        result["metric"] = getattr(metric, "__name__", None) or type(metric).__name__
    for key, y in outs.items():
        per = {n: _compare(y[n], ref[n]) if n in y else {"error": "missing"} for n in names}
        ok = [v for v in per.values() if "error" not in v]
        r = {"outputs": per,
             "max_abs_diff_vs_original": max((v["max_abs_diff"] for v in ok), default=None),
             "rel_l2_vs_original": max((v["rel_l2"] for v in ok), default=None)}
        if result["classification"] and "top1_agreement" in per[names[0]]:
            r["top1_agreement"] = per[names[0]]["top1_agreement"]
            if labels is not None:
                r["accuracy"] = float(np.mean(y[names[0]].argmax(1) == labels[: len(y[names[0]])]))
        if metric is not None:
            try:
                r["metric"] = float(metric(ref, y))
            except Exception as e:  # the user's code: say whose it is
                raise InputError(f"metric {result['metric']}({key} outputs) raised {type(e).__name__}: {e}") from e
        result["variants"][key] = r
    return result


def median_time(fn, x, repeat: int | None = None, budget_s: float = 1.0, max_repeat: int = 1000) -> dict:
    """Warm-up, then timed calls; the median (and spread) in seconds: benchmarks/runtime_vs_ort.py's method.
    repeat None: as many calls as fit `budget_s` (3 to max_repeat), after as many warm-up calls as fit a tenth of
    it (1 to WARMUP)."""
    t0 = time.perf_counter()
    fn(x)  # the first call may compile or allocate: a warm-up call, never timed
    est = time.perf_counter() - t0
    deadline = None
    if repeat is None:
        t0 = time.perf_counter()
        fn(x)
        est = min(est, time.perf_counter() - t0)
        warm = int(np.clip(0.1 * budget_s / max(est, 1e-9), 0, WARMUP - 2))
        repeat = int(np.clip(budget_s / max(est, 1e-9), 3, max_repeat))
        deadline = time.perf_counter() + 2 * budget_s  # calls slower than estimated (a loaded machine): stop there
    else:
        warm = min(WARMUP, repeat) - 1
    for _ in range(warm):
        fn(x)
    t = np.empty(repeat)
    done = 0
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        t[i] = time.perf_counter() - t0
        done += 1
        if deadline is not None and done >= 3 and t0 > deadline:
            break
    t = t[:done]
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "p90_s": float(np.percentile(t, 90)),
            "repeat": done}


def latency(engines: dict, inputs: Inputs, batch: int | None, repeat: int | None, progress: bool,
            budget_s: float = BUDGET["latency_s"]) -> dict:
    """One call at the latency shapes per engine; throughput at batch N only where every input's batch dimension
    is free. batch None: N = DEFAULTS['batch'], made smaller so that one call takes about BUDGET['call_s']."""
    from tqdm import tqdm

    x1 = inputs.batch(inputs.unit) if inputs.batch_free else inputs.take(0, 1)
    unit = inputs.unit if inputs.batch_free else inputs.per_call
    result = {"batch1": unit, "batch": None, "shapes": {k: list(v.shape) for k, v in x1.items()},
              "repeat_batch1": {}, "repeat_batchN": {}, "skipped": [], "engines": {}}
    items = list(engines.items())
    for key, run in tqdm(items, desc="latency", unit="engine", file=sys.stderr, leave=False, disable=not progress):
        b1 = median_time(run, x1, repeat, budget_s)
        result["repeat_batch1"][key] = b1["repeat"]
        result["engines"][key] = {"batch1_us": 1e6 * b1["median_s"], "batch1_min_us": 1e6 * b1["min_s"],
                                  "batch1_p90_us": 1e6 * b1["p90_s"]}
    n = None
    if not inputs.batch_free:
        result["skipped"].append(
            f"throughput at a larger batch: not measured, because {inputs.batch_note}: every call runs that "
            f"shape" + (f" (--batch {batch} does not apply)" if batch and batch != unit else "")
            + "; to measure throughput at larger batches, pack the model with its batch dimension dynamic "
              "(without --input-shape, where the runtime can run it so)")
    elif batch is not None:
        n = batch
    else:
        slowest = max(result["engines"], key=lambda k: result["engines"][k]["batch1_us"])
        t1 = result["engines"][slowest]["batch1_us"] * 1e-6 / max(unit, 1)
        n = DEFAULTS["batch"]
        while n > 2 and n * t1 > BUDGET["call_s"]:
            n //= 2
        if n * t1 > BUDGET["call_s"] or n <= unit:
            result["skipped"].append(
                f"throughput at a larger batch: not measured by default, because one sample takes "
                f"{1e3 * t1:.1f} ms in the slowest engine ({slowest}; a batch would exceed the time budget of "
                f"{BUDGET['call_s']} s per call); give --batch N to measure it")
            n = None
    if n is not None and n == unit:
        result["skipped"].append(f"throughput at a larger batch: --batch {n} is the latency batch")
        n = None
    if n is not None:
        xb = inputs.batch(n)
        result["batch"] = n
        rb = None if repeat is None else (max(3, repeat // 50) if repeat >= 3 else repeat)
        for key, run in tqdm(items, desc=f"batch {n}", unit="engine", file=sys.stderr, leave=False,
                             disable=not progress):
            bn = median_time(run, xb, rb, budget_s / 2, max_repeat=20)
            result["repeat_batchN"][key] = bn["repeat"]
            result["engines"][key].update({"batchN_ms": 1e3 * bn["median_s"], "batchN_min_ms": 1e3 * bn["min_s"],
                                           "throughput_per_s": n / bn["median_s"] if bn["median_s"] else None})
    try:
        result["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return result


# The memory probe runs in a fresh interpreter per engine, so that one engine's allocations (and onnx, packer)
# do not count against another's. It prints one JSON line.
_PROBE = r"""
import json, os, sys
def rss():
    try:
        with open("/proc/self/status") as f:
            d = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in f if l.startswith(("VmRSS", "VmHWM"))}
        return d["VmRSS"], d["VmHWM"], "VmRSS"
    except (OSError, KeyError):
        import resource
        m = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return m, m, "ru_maxrss"
engine, path, feeds_path = sys.argv[1], sys.argv[2], sys.argv[3]
repeat, repeat_n, threads = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
import numpy as np
d = np.load(feeds_path)
x1 = {k[2:]: d[k] for k in d.files if k.startswith("1:")}
xb = {k[2:]: d[k] for k in d.files if k.startswith("N:")}
r = {"start": rss()[0]}
if engine == "edgepack":
    from edgepack import runtime
    def make():
        return runtime.load(path, parallel=threads > 1).run
else:
    import onnxruntime as ort
    def make():
        o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
        o.log_severity_level = 3
        s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
        return lambda f: s.run(None, f)
r["import"] = rss()[0]
run = make()
r["load"] = rss()[0]
run(x1)
r["first_run"] = rss()[0]
for _ in range(repeat):
    run(x1)
r["batch1_runs"] = rss()[0]
for _ in range(repeat_n if xb else 0):
    run(xb)
r["batchN_runs"] = rss()[0]
# A second instance beside the first: the engine's one-time costs (JIT code, kernel caches, thread pools) are paid,
# so what it adds is the model's own memory.
run2 = make()
r["second_load"] = rss()[0]
run2(x1)
r["second_run"] = rss()[0]
r["peak"], r["method"] = rss()[1], rss()[2]
print(json.dumps(r))
"""


def memory_probe(engine: str, path: str, x1: dict, xb: dict | None, repeat1: int, repeat_n: int, workdir: str,
                 threads: int = 1) -> dict:
    """Resident-memory growth of importing, loading, the first run and steady runs, in a fresh interpreter."""
    feeds = os.path.join(workdir, f"probe-{engine}.npz")
    np.savez(feeds, **{f"1:{k}": v for k, v in x1.items()}, **{f"N:{k}": v for k, v in (xb or {}).items()})
    env = dict(os.environ)
    root = str(Path(runtime.__file__).resolve().parents[2])  # the folder holding the edgepack package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run([sys.executable, "-c", _PROBE, engine, path, feeds, str(repeat1), str(repeat_n),
                           str(threads)], capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    r = json.loads(done.stdout.strip().splitlines()[-1])
    out = {"method": r["method"], "rss_after_import": r["import"],
           "import_growth": r["import"] - r["start"], "load_growth": r["load"] - r["import"],
           "first_run_growth": r["first_run"] - r["load"], "batch1_runs_growth": r["batch1_runs"] - r["first_run"],
           "batchN_runs_growth": r["batchN_runs"] - r["batch1_runs"] if xb else None,
           "load_and_run_growth": r["batchN_runs"] - r["import"],
           "second_instance_load_growth": r["second_load"] - r["batchN_runs"],
           "second_instance_run_growth": r["second_run"] - r["second_load"], "peak_rss": r["peak"]}
    return out


def memory(epk_path: str, onnx_path: str, int8_path: str | None, inputs: Inputs, batch: int | None,
           repeats: dict[str, tuple[int, int]], workdir: str, threads: int = 1) -> dict:
    """The runtime's plan, and each engine's measured memory: repeats {probe: (batch-1 runs, batch-N runs)} for the
    probes edgepack, ort_original and ort_int8."""
    x1 = inputs.batch(inputs.unit) if inputs.batch_free else inputs.take(0, 1)
    xb = inputs.batch(batch) if batch else None
    model = runtime.load(epk_path, batch=inputs.unit or 1)
    plan_1 = model.plan_for({k: v.shape for k, v in x1.items()})
    plan_n = model.plan_for({k: v.shape for k, v in xb.items()}) if xb else None
    extra = inputs.extra_feeds
    o1, on = {**x1, **extra}, ({**xb, **extra} if xb else None)
    probes = {"edgepack": memory_probe("edgepack", epk_path, x1, xb, *repeats["edgepack"], workdir, threads),
              "ort_original": memory_probe("ort", onnx_path, o1, on, *repeats["ort_original"], workdir, threads)}
    if int8_path:
        probes["ort_int8"] = memory_probe("ort", int8_path, o1, on, *repeats["ort_int8"], workdir, threads)
    return {"plan": plan_1.as_dict(),
            "plan_batchN": None if plan_n is None else {"total_bytes": plan_n.total_bytes,
                                                        "arena_bytes": plan_n.arena_bytes,
                                                        "scratch_bytes": plan_n.scratch_bytes},
            "minimum_budget": model.minimum_budget, "measured": probes,
            "runs": {k: {"batch1": r[0], "batchN": r[1] if xb else 0} for k, r in repeats.items()},
            "note": f"in a fresh interpreter per engine ({threads} thread{'s' if threads > 1 else ''}), growth of "
                    "VmRSS across each step; the first load and run include the engine's one-time costs (edgepack: "
                    "loading or compiling the Numba kernels; onnxruntime: its allocators and kernel registry); a "
                    "second instance of the same model, loaded and run beside the first, shows the model's own "
                    "memory. File pages that a load reads count as resident"}


def energy(epk_path: str, sram: int, table_path: str | None, inputs: Inputs) -> dict:
    from edgepack.runtime.energy import estimate, load_for_sram, load_table

    table = load_table(table_path)
    active = None
    if inputs.source != "random":  # with data: zero activations as measured on it
        from .activations import nonzero_fractions

        if inputs.batch_free:  # up to 256 samples, in calls of at most ~4 MB of inputs (every activation is kept)
            row = sum(4 * int(np.prod(inputs.tail[k])) for k in inputs.names)
            step = int(np.clip((4 << 20) // max(row, 1), 1, 256))
            n = min(inputs.count, 256)
            feeds = [inputs.take(s, min(s + step, n)) for s in range(0, n, step)]
        else:
            feeds = inputs.calls(ENERGY_CALLS)
        active = nonzero_fractions(epk_path, feeds)
    model, budget = load_for_sram(epk_path, sram, inputs.unit or 1)
    r = estimate(model, read_packed(epk_path), sram, table, active)
    r["plan_budget"] = budget
    r["zero_activations_measured_on"] = inputs.source if active else None
    r["conv"] = any(l["op"] in ("Conv", "ConvTranspose") for l in r["layers"])
    return _clean(r)


def energy_words(e: dict) -> str:
    """The compute / data-movement split of the packed model in words, and what the SRAM sweep does to it."""
    p = e["packed"]
    if not p["total_uj"]:
        return ""

    def share(compute, total):
        return f"{100 * compute / total:.0f}%" if total else "-"

    sram = e["sram_bytes"]
    where = ("weights and activations both fit on chip" if p["weights_on_chip"] else
             "the activations fit on chip, the weights are read from DRAM" if p["activations_on_chip"] else
             f"the activation arena of {_b(e['arena_bytes'])} B does not fit, so feature maps and weights go to "
             f"DRAM")
    kind = "this convolutional network" if e.get("conv") else "this model"
    text = (f"For {kind}, at {_b(sram)} B of SRAM compute is {share(p['compute_uj'], p['total_uj'])} of the packed "
            f"model's estimated energy and data movement {share(p['memory_uj'], p['total_uj'])} ({where}).")
    sweep = e.get("sweep") or []
    if sweep:
        lo, hi = sweep[0], sweep[-1]
        c = p["compute_uj"]  # compute does not depend on the SRAM; data movement is the rest
        steps = []
        if e["arena_bytes"] > lo["sram_bytes"]:
            steps.append(f"from {_b(e['arena_bytes'])} B the activations stay on chip")
        fits = p["fits_in_sram_from_bytes"]
        if fits > lo["sram_bytes"]:
            steps.append(f"from {_b(fits)} B the packed weights do too" if fits <= hi["sram_bytes"] else
                         f"the packed weights need {_b(fits)} B, beyond the sweep")
        change = ("; ".join(steps) + ". ") if steps else ""
        text += (f" Across the sweep ({_b(lo['sram_bytes'])} B to {_b(hi['sram_bytes'])} B) {change}The compute "
                 f"share goes from {share(c, lo['packed_uj'])} to {share(c, hi['packed_uj'])} and data movement "
                 f"from {share(lo['packed_uj'] - c, lo['packed_uj'])} to {share(hi['packed_uj'] - c, hi['packed_uj'])}"
                 f" ({lo['packed_uj']:.4g} -> {hi['packed_uj']:.4g} uJ in all; the original fp32 model "
                 f"{lo['original_uj']:.4g} -> {hi['original_uj']:.4g} uJ).")
    return text


# ---- the run --------------------------------------------------------------------------------------------------------

def _blas_threads(n: int):
    """Limit numpy's BLAS to n threads for the duration (threadpoolctl when installed; else what
    OPENBLAS_NUM_THREADS set at start-up stays in force), and what was done, for the report."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        env = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
        return contextlib.nullcontext(), f"OPENBLAS_NUM_THREADS={env}" if env else \
            "BLAS threads not pinned (set OPENBLAS_NUM_THREADS=1 or install threadpoolctl)"
    return threadpool_limits(limits=n, user_api="blas"), f"BLAS limited to {n} thread(s) by threadpoolctl"


def bench(onnx_path: str | os.PathLike, epk_path: str | os.PathLike, *, data=None,
          out_dir: str | os.PathLike = "edgepack-bench", smoke: bool = False, batch: int | None = None,
          repeat: int | None = None, samples: int | None = None, sram: str | int = "256KiB",
          table: str | None = None, progress: bool = True, command: str | None = None, input_shapes=None,
          metric=None, threads: int = 1) -> dict:
    """Run every measurement, write OUT_DIR/report.md, report.json and the plots; return the report.

    data: None (random inputs of the packed model's shapes), "mnist", an .npy / .npz or a folder of them (see
    read_data). input_shapes: dynamic dimensions, {name: dims} or ["NAME=d0,d1,..."] as pack's --input-shape.
    metric: callable(ref_outputs, test_outputs) -> float on {output name: array of every sample}, reported per
    variant beside the agreement. repeat / samples / batch None: chosen by time budget (BUDGET) so that a big
    model's default run stays short. threads: of onnxruntime and of the edgepack runtime (1: both
    single-threaded)."""
    from tqdm import tqdm

    missing = missing_requirements()
    if missing:
        raise ImportError(f"edgepack bench needs {', '.join(missing)}: pip install 'edgepack[bench]'")
    onnx_path, epk_path = os.fspath(onnx_path), os.fspath(epk_path)
    for p, what in ((onnx_path, "ONNX model"), (epk_path, "packed model")):
        if not os.path.isfile(p):
            hint = f" (make it with: edgepack pack {onnx_path} -o {epk_path})" if p == epk_path else ""
            raise FileNotFoundError(f"{what} {p} does not exist{hint}")
    for name, v in (("batch", batch), ("repeat", repeat), ("samples", samples), ("threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise InputError(f"{name} must be an integer >= 1, found {v!r}")
    if metric is not None and not callable(metric):
        raise InputError(f"metric must be a callable (ref_outputs, test_outputs) -> float, found {metric!r}")
    auto_samples = data is None and samples is None  # random inputs, as many as the time budget runs
    if smoke:
        batch = batch or SMOKE["batch"]
        repeat = repeat or SMOKE["repeat"]
        if samples is None and data is not None:
            samples = SMOKE["samples"]
    sram_bytes = parse_size(sram)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    limits, blas = _blas_threads(threads)
    report: dict = {"machine": machine(), "command": command or f"edgepack bench {onnx_path} {epk_path}",
                    "settings": {"batch": batch, "repeat": repeat, "samples": samples, "smoke": smoke,
                                 "sram_bytes": sram_bytes, "data": None if data is None else os.fspath(data),
                                 "threads": threads, "blas": blas, "budget": None if smoke else dict(BUDGET)}}
    steps = ["size", "accuracy", "latency", "memory", "energy", "plots"]
    with limits, tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp, \
            tqdm(total=len(steps), desc="bench", unit="step", file=sys.stderr, disable=not progress) as bar:
        clock = {"t": time.perf_counter(), "name": None}
        report["seconds"] = {}

        def step(name):
            now = time.perf_counter()
            if clock["name"]:
                report["seconds"][clock["name"]] = round(now - clock["t"], 2)
            clock.update(t=now, name=name)
            bar.set_postfix_str(name)

        step("size")
        # before anything slow: the shapes the packed file takes, and whether the runtime can run it at all
        inputs = Inputs(onnx_path, epk_path, data, 1 if auto_samples else samples, input_shapes)
        runtime.load(epk_path, batch=inputs.unit or 1)
        int8_path = os.path.join(tmp, "int8.onnx")
        int8_error = int8_dynamic(onnx_path, int8_path)
        report["size"] = sizes(onnx_path, epk_path, int8_path, int8_error)
        bar.update()

        step("accuracy")
        report["inputs"] = {"shapes": inputs.describe(), "batch_free": inputs.batch_free,
                            "batch_note": inputs.batch_note, "source": inputs.source,
                            "dropped_samples": inputs.dropped}
        engines = _engines(onnx_path, epk_path, int8_path if int8_error is None else None, inputs, threads)
        acc_engines = {"original": engines["ort"], "edgepack": engines["edgepack"]}
        if "ort_int8" in engines:
            try:
                engines["ort_int8"](inputs.take(0, 1))
                acc_engines["int8"] = engines["ort_int8"]
            except Exception as e:  # an int8 model onnxruntime cannot run: measure the others
                engines.pop("ort_int8")
                report["size"]["int8_error"] = f"runs: {type(e).__name__}: {e}"
        per_sample = _call_seconds(acc_engines, inputs)  # also the first (compiling) call of each engine
        chunk = batch or int(np.clip(BUDGET["call_s"] / max(per_sample, 1e-9), 1, DEFAULTS["batch"]))
        if auto_samples:  # as many random samples as the accuracy budget runs (smoke: a fifth, at most 64)
            cap = SMOKE["samples"] if smoke else DEFAULT_RANDOM_SAMPLES
            budget = BUDGET["accuracy_s"] / (5 if smoke else 1)
            n = int(np.clip(budget / max(per_sample, 1e-9), 8, cap))
            inputs.x = inputs.random(n, 0)
        try:
            report["accuracy"] = accuracy(acc_engines, inputs, chunk, progress, metric)
        except InputError:
            raise
        except Exception as e:  # int8 fails at another batch size: measure the others
            if "int8" not in acc_engines:
                raise
            acc_engines.pop("int8")
            engines.pop("ort_int8")
            report["size"]["int8_error"] = f"runs: {type(e).__name__}: {e}"
            report["accuracy"] = accuracy(acc_engines, inputs, chunk, progress, metric)
        bar.update()

        step("latency")
        timed = {"edgepack": engines["edgepack"], _ort_key(threads): engines["ort"]}
        if threads == 1:
            timed["ort_default"] = engines["ort_default"]
        if "ort_int8" in engines:
            timed["ort_int8"] = engines["ort_int8"]
        report["latency"] = latency(timed, inputs, batch, repeat, progress)
        bar.update()

        step("memory")
        lat = report["latency"]
        # each engine's probe runs as many calls as its timing did (about BUDGET["latency_s"]), at most 200 / 20
        repeats = {probe: (min(200, lat["repeat_batch1"][key]), min(20, lat["repeat_batchN"].get(key, 1)))
                   for probe, key in (("edgepack", "edgepack"), ("ort_original", _ort_key(threads)),
                                      ("ort_int8", "ort_int8")) if key in lat["repeat_batch1"]}
        report["memory"] = memory(epk_path, onnx_path, int8_path if "ort_int8" in engines else None, inputs,
                                  lat["batch"], repeats, tmp, threads)
        bar.update()

        step("energy")
        report["energy"] = energy(epk_path, sram_bytes, table, inputs)
        bar.update()

        step("plots")
        from .plots import write_plots

        report["plots"] = write_plots(report, onnx_path, epk_path, out)
        bar.update()
        step(None)
    report = _clean(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    return report


def _ort_key(threads: int) -> str:
    return f"ort_{threads}_thread" + ("s" if threads > 1 else "")


def _call_seconds(engines: dict, inputs: Inputs) -> float:
    """Seconds per sample of all the engines together: one untimed call each (it may compile), then one timed."""
    feeds = inputs.take(0, 1)
    total = 0.0
    for run in engines.values():
        run(feeds)
        t0 = time.perf_counter()
        run(feeds)
        total += time.perf_counter() - t0
    return total / (1 if inputs.batch_free else inputs.per_call)


def _load_runtime(epk_path: str, threads: int, batch: int):
    """The edgepack runtime with `threads` threads (its parallel kernels and numpy's BLAS): its own option when it
    has one, else Numba's parallel kernels with Numba's thread count set."""
    import inspect

    if "threads" in inspect.signature(runtime.load).parameters:
        return runtime.load(epk_path, batch=batch, parallel=threads > 1, threads=threads)
    if threads == 1:
        return runtime.load(epk_path, batch=batch)
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return runtime.load(epk_path, batch=batch, parallel=True)


def _engines(onnx_path: str, epk_path: str, int8_path: str | None, inputs: Inputs, threads: int = 1) -> dict:
    """Name -> callable(feeds) -> {output name: array}, for every engine measured. onnxruntime gets the values the
    packed file fixed at pack time as extra feeds."""
    from .verify import session

    model = _load_runtime(epk_path, threads, inputs.unit or 1)
    names = list(model.outputs)
    extra = inputs.extra_feeds

    def ort_engine(s):
        have = [o.name for o in s.get_outputs()]
        want = names if all(n in have for n in names) else have[: len(names)]  # renamed outputs: by position
        if extra:
            return lambda f: dict(zip(names, s.run(want, {**f, **extra})))
        return lambda f: dict(zip(names, s.run(want, f)))

    engines = {"edgepack": model.run, "ort": ort_engine(session(onnx_path, threads=threads)),
               "ort_default": ort_engine(session(onnx_path, threads=0))}
    if int8_path:
        engines["ort_int8"] = ort_engine(session(int8_path, threads=threads))
    return engines


# ---- the markdown report --------------------------------------------------------------------------------------------

ENGINE_LABELS = {"edgepack": "edgepack runtime", "ort_1_thread": "onnxruntime fp32, 1 thread",
                 "ort_default": "onnxruntime fp32, default threads", "ort_int8": "onnxruntime int8 dynamic"}


def _engine_label(key: str, threads: int) -> str:
    t = f"{threads} thread{'s' if threads > 1 else ''}"
    if key in ("edgepack", "ort_int8"):
        return f"{ENGINE_LABELS[key]}, {t}"
    if key.startswith("ort_") and key.endswith(("_thread", "_threads")):
        return f"onnxruntime fp32, {t}"
    return ENGINE_LABELS.get(key, key)


def _table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def _b(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _g(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def markdown(r: dict) -> str:
    m = r["machine"]
    s = r["settings"]
    threads = s.get("threads") or 1
    L = ["# edgepack bench", ""]
    L += ["## Machine", "",
          f"{m['cpu']}, {m['cores']} cores, {_b(m['memory_bytes'])} B memory; {m['platform']}; Python {m['python']}, "
          f"numpy {m['numpy']}, numba {m['numba']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}. "
          f"{m['date']}; load average at start {m['load_average']}, after the latency runs "
          f"{r['latency'].get('load_average_after')} (other processes on the machine add noise to the timings).", ""]
    inp = r.get("inputs") or {}
    lat = r["latency"]
    budget = s.get("budget")
    L += ["## Command", "", "```", r["command"], "```", "",
          f"Inputs (from the packed file): {'; '.join(inp.get('shapes', [])) or '-'}; "
          + ("the batch dimension is free." if inp.get("batch_free") else f"{inp.get('batch_note')}.")
          + f" Data: {s['data'] or 'random inputs of these shapes (standard normal)'}"
          + (f" ({inp['dropped_samples']} trailing samples that do not fill a call left out)"
             if inp.get("dropped_samples") else "") + ". "
          + f"Threads: {threads} for edgepack and onnxruntime ({s.get('blas', '')})"
          + (" (smoke mode)" if s["smoke"] else "")
          + (f"; repeats chosen by time budget (about {budget['latency_s']} s per engine and shape, "
             f"{budget['accuracy_s']} s of random samples)" if budget and s.get("repeat") is None else "") + ".", ""]
    sz = r["size"]
    L += ["## Size", ""]
    rows = [[v["label"], _b(v["bytes"]), f"{v['ratio_vs_onnx']:.1f}x" if v["ratio_vs_onnx"] else "-"]
            for v in sz["variants"].values()]
    L += _table(["variant", "bytes", "vs ONNX"], rows)
    L += ["", f"edgepack ratio (fp32 weights and biases {_b(sz['fp32_weight_bytes'])} B / whole file): "
          f"{sz['edgepack_ratio']:.1f}x."]
    if sz.get("int8_error"):
        L += [f"int8: not measured ({sz['int8_error']})."]
    L += ["", "Per tensor (bits per kept weight, packed / as stored):", ""]
    rows = []
    for t in sz["layer_table"]["layers"]:
        kept = f"{100 * t['kept'] / t['weights']:.1f}%" if t["weights"] else "-"
        wb = "-" if t["weight_bits"][0] is None else f"{t['weight_bits'][0]:.2f} / {t['weight_bits'][1]:.2f}"
        ib = "-" if t["index_bits"][0] is None else f"{t['index_bits'][0]:.2f} / {t['index_bits'][1]:.2f}"
        rows.append([t["name"], t["encoding"], _b(t["weights"]), kept, t["k"] or "-", wb, ib, _b(t["bytes"]),
                     f"{t['rate']:.1f}x" if t["rate"] else "-"])
    L += _table(["tensor", "encoding", "#weights", "kept", "k", "weight bits", "index bits", "bytes", "rate"], rows)
    a = r["accuracy"]
    L += ["", "## Accuracy", ""]
    what = (f"{a['samples']} labelled samples of {a['source']}" if a["labelled"] else
            f"{a['samples']} samples of {a['source']} (no labels: agreement with the original)" if a["source"] !=
            "random" else f"{a['samples']} random inputs of the declared shape (no labels: agreement with the "
                          f"original)")
    L += [f"On {what}. Top-1 agreement for classifier outputs (samples, classes); relative L2 error "
          f"(||y - y_original|| / ||y_original|| over all samples) and max abs difference of every output"
          + (f"; metric: {a['metric']}(original outputs, variant outputs)" if a.get("metric") else "") + ".", ""]
    for note in a.get("notes", []):
        L += [f"Note: {note}.", ""]
    labels = {"original": "original (onnxruntime fp32)", "int8": "int8 dynamic (onnxruntime)",
              "edgepack": "edgepack (runtime)"}
    head = ["variant", "accuracy", "top-1 agreement with original", "max abs diff", "relative L2"]
    if a.get("metric"):
        head.append(a["metric"])
    rows = []
    for k, v in a["variants"].items():
        row = [labels.get(k, k), _pct(v.get("accuracy")), _pct(v.get("top1_agreement")),
               _g(v.get("max_abs_diff_vs_original")), _g(v.get("rel_l2_vs_original"))]
        if a.get("metric"):
            row.append(_g(v.get("metric")))
        rows.append(row)
    L += _table(head, rows)
    if len(a.get("outputs", [])) > 1:
        L += ["", "Per output (relative L2 / max abs diff / top-1 agreement vs the original):", ""]
        variants = [k for k in a["variants"] if k != "original"]
        rows = []
        for name in a["outputs"]:
            row = [name]
            for k in variants:
                o = a["variants"][k]["outputs"].get(name, {})
                row.append(o["error"] if "error" in o else
                           f"{_g(o['rel_l2'])} / {_g(o['max_abs_diff'])}"
                           + (f" / {_pct(o['top1_agreement'])}" if "top1_agreement" in o else ""))
            rows.append(row)
        L += _table(["output"] + [labels.get(k, k) for k in variants], rows)
    n = lat.get("batch")
    b1 = lat.get("batch1", 1)
    reps1 = ", ".join(f"{k} {v}" for k, v in lat["repeat_batch1"].items())
    L += ["", "## Latency and throughput", "",
          f"Median over repeated calls of each engine's Python API after warm-up calls "
          f"(benchmarks/runtime_vs_ort.py's method), at the input shapes above; batch {b1}: {reps1} calls"
          + (f"; batch {n}: " + ", ".join(f"{k} {v}" for k, v in lat["repeat_batchN"].items()) + " calls"
             if n else "") + ".", ""]
    head = ["engine", f"batch {b1} median us", f"batch {b1} min us"]
    if n:
        head += [f"batch {n} median ms", "samples/s"]
    rows = []
    for k, v in lat["engines"].items():
        row = [_engine_label(k, threads), f"{v['batch1_us']:.1f}", f"{v['batch1_min_us']:.1f}"]
        if n:
            row += [f"{v['batchN_ms']:.3f}", f"{v['throughput_per_s']:,.0f}" if v.get("throughput_per_s") else "-"]
        rows.append(row)
    L += _table(head, rows)
    e1 = lat["engines"].get("edgepack", {}).get("batch1_us")
    o1 = next((v["batch1_us"] for k, v in lat["engines"].items() if k.startswith("ort_") and k.endswith(
        ("_thread", "_threads"))), None)
    if e1 and o1:
        L += ["", f"At equal threads ({threads}), edgepack takes {e1 / o1:.2f}x onnxruntime's time per call."]
    for note in lat.get("skipped", []):
        L += ["", f"Skipped: {note}."]
    mem = r["memory"]
    p = mem["plan"]
    L += ["", "## Memory", "",
          f"Runtime plan at batch {b1}: total {_b(p['total_bytes'])} B (weights as held, constants, arena "
          f"{_b(p['arena_bytes'])} B, scratch {_b(p['scratch_bytes'])} B; RAM {_b(p['ram_bytes'])} B + mapped "
          f"{_b(p['mapped_bytes'])} B); smallest budget it loads in: {_b(mem['minimum_budget'])} B"
          + (f"; at batch {n}: {_b(mem['plan_batchN']['total_bytes'])} B" if n and mem.get("plan_batchN") else "")
          + ".", ""]
    rows = [[l["name"], l["op"], l["encoding"], l["mode"], _b(l["ram_bytes"]), _b(l["mapped_bytes"]),
             _b(l["scratch_bytes"])] for l in p["layers"]]
    L += _table(["layer", "op", "encoding", "held as", "RAM B", "mapped B", "scratch B"], rows)
    runs = mem.get("runs", {})
    L += ["", f"Measured resident-memory growth ({mem['note']}; runs at batch {b1}"
          + (f" / {n}" if n else "") + ": "
          + ", ".join(f"{k} {v['batch1']}" + (f" / {v['batchN']}" if n else "") for k, v in runs.items()) + "):",
          ""]
    head = ["engine", "RSS after import B", "load B", "first run B", f"batch-{b1} runs B"]
    head += [f"batch-{n} runs B"] if n else []
    head += ["2nd instance: load B", "2nd instance: run B", "peak RSS B"]
    rows = []
    for k, v in mem["measured"].items():
        if "error" in v:
            rows.append([k, "error: " + " ".join(v["error"])] + [""] * (len(head) - 2))
            continue
        row = [k, _b(v["rss_after_import"]), _b(v["load_growth"]), _b(v["first_run_growth"]),
               _b(v["batch1_runs_growth"])]
        row += [_b(v["batchN_runs_growth"])] if n else []
        row += [_b(v["second_instance_load_growth"]), _b(v["second_instance_run_growth"]), _b(v["peak_rss"])]
        rows.append(row)
    L += _table(head, rows)
    e = r["energy"]
    L += ["", "## Energy", "",
          f"Estimated per inference (batch {b1}), {e['process']}, SRAM {_b(e['sram_bytes'])} B "
          f"(runtime/energy.py; activation arena {_b(e['arena_bytes'])} B)"
          + (f"; zero activations skipped as measured on {e['zero_activations_measured_on']}"
             if e.get("zero_activations_measured_on") else "") + ".", ""]
    rows = []
    for key in ("original", "packed", "packed_as_stored"):
        if key not in e:
            continue
        t = e[key]
        rows.append([key, f"{t['total_uj']:.4g}", f"{t['compute_uj']:.4g}", f"{t['memory_uj']:.4g}",
                     f"{t['macs']:,.0f}", _b(t["weight_bytes"]), "SRAM" if t["weights_on_chip"] else "DRAM",
                     _b(t["fits_in_sram_from_bytes"])])
    L += _table(["model", "total uJ", "compute uJ", "data movement uJ", "MACs", "weight bytes", "weights in",
                 "fits on chip from B"], rows)
    ratio = e.get("ratio")
    modes = ", ".join(f"{k} {m}" for k, m in (e.get("modes") or {}).items())
    L += ["", "packed: weights cost what the runtime's plan reads"
          + (f" (loaded with the SRAM as its budget: {modes})" if e.get("plan_budget") else
             f" (no plan fits the SRAM; fastest modes: {modes})")
          + "; packed_as_stored: every weight read in its file form (the format's own bound).", ""]
    words = energy_words(e)
    if words:
        L += [words, ""]
    if ratio:
        o, pk = e["original"], e["packed"]
        L += [(f"Packed model: {ratio:.2f}x less" if ratio >= 1 else f"Packed model: {1 / ratio:.2f}x more")
              + f" energy per inference than the original: compute (with codebook lookups) {pk['compute_uj']:.4g} "
                f"against {o['compute_uj']:.4g} uJ, data movement {pk['memory_uj']:.4g} against "
                f"{o['memory_uj']:.4g} uJ.", ""]
    L += ["## Plots", ""]
    for key, path in r["plots"].items():
        if isinstance(path, list):
            L += [f"- {key}: " + ", ".join(f"[{Path(q).name}]({Path(q).name})" for q in path)]
        else:
            L += [f"- {key}: ![{key}]({Path(path).name})"]
    L.append("")
    return "\n".join(L)
