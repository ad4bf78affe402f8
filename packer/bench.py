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

import runtime
from runtime.loader import read_packed
from runtime.memory import parse_size

# Extras that only the bench needs (pyproject extra `bench`).
REQUIRED = {"zstandard": "zstandard", "matplotlib": "matplotlib"}
SECTIONS = ("machine", "command", "size", "accuracy", "latency", "memory", "energy", "plots")
WARMUP = 50  # warm-up calls before timing, as benchmarks/runtime_vs_ort.py
SMOKE = {"repeat": 5, "batch": 8, "samples": 64}
DEFAULTS = {"repeat": 1000, "batch": 256, "samples": None}  # samples None: the whole test set / 1000 random


def missing_requirements() -> list[str]:
    """Modules of the `bench` extra that cannot be imported."""
    import importlib.util

    return [pkg for mod, pkg in REQUIRED.items() if importlib.util.find_spec(mod) is None]


# ---- inputs ---------------------------------------------------------------------------------------------------------

class Inputs:
    """The model's declared inputs (from onnxruntime) and the data the bench feeds it."""

    def __init__(self, onnx_path: str, data: str | None, samples: int | None, seed: int = 0):
        from .verify import session

        sess = session(onnx_path)
        self.decls = [(i.name, list(i.shape), i.type) for i in sess.get_inputs()]
        self.output = sess.get_outputs()[0].name
        first = self.decls[0][1]
        self.dynamic_batch = bool(first) and not isinstance(first[0], int)
        self.fixed_batch = None if self.dynamic_batch or not first else int(first[0])
        self.labels = None
        self.source = "random"
        if data is not None:
            if len(self.decls) != 1:
                raise ValueError(f"--data needs a model with one input; this one has {len(self.decls)}: "
                                 f"{', '.join(d[0] for d in self.decls)}")
            from .datasets import load_data

            ds = load_data(data, quiet=True)
            x, y = ds["x_test"], ds["y_test"]
            if samples is not None:
                x, y = x[:samples], y[:samples]
            name, shape, _ = self.decls[0]
            tail = shape[1:]
            if all(isinstance(d, int) for d in tail):
                want = int(np.prod(tail, dtype=np.int64))
                per = int(np.prod(x.shape[1:], dtype=np.int64))
                if per != want:
                    raise ValueError(f"data {data}: a sample has {per} values {list(x.shape[1:])}, the model's input "
                                     f"'{name}' declares {shape} ({want} per sample)")
                x = x.reshape((len(x), *tail))
            self.x = {name: np.ascontiguousarray(x, dtype=np.float32)}
            self.labels = y
            self.source = str(data)
        else:
            n = samples or 1000
            self.x = self.random(n, seed)

    def random(self, n: int, seed: int) -> dict[str, np.ndarray]:
        """Inputs of the declared shapes, n samples (dynamic dims other than the first take 1), standard normal."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for name, shape, typ in self.decls:
            dims = [d if isinstance(d, int) else 1 for d in shape]
            if dims and not isinstance(shape[0], int):
                dims[0] = n
            elif dims:
                dims[0] = max(1, n // max(1, dims[0])) * dims[0]
            if "float" in typ:
                feeds[name] = rng.standard_normal(dims).astype(np.float32)
            else:
                feeds[name] = rng.integers(0, 2, dims).astype(np.int64)
        return feeds

    @property
    def count(self) -> int:
        return int(next(iter(self.x.values())).shape[0])

    def take(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: np.ascontiguousarray(v[start:stop]) for k, v in self.x.items()}

    def batch(self, n: int) -> dict[str, np.ndarray]:
        """n samples (repeated when there are fewer), as one contiguous batch; a fixed batch dimension wins."""
        if self.fixed_batch is not None:
            n = self.fixed_batch
        idx = np.arange(n) % self.count
        return {k: np.ascontiguousarray(v[idx]) for k, v in self.x.items()}


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
    from runtime.summary import layer_table

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


def _predict(run, inputs: Inputs, chunk: int, bar=None) -> np.ndarray:
    outs = []
    step = inputs.fixed_batch or chunk
    for s in range(0, inputs.count, step):
        feeds = inputs.take(s, s + step)
        if inputs.fixed_batch and len(next(iter(feeds.values()))) != step:
            break  # a fixed batch dimension: the tail that does not fill a batch is left out
        outs.append(np.asarray(run(feeds), dtype=np.float64))
        if bar is not None:
            bar.update(1)
    return np.concatenate(outs) if outs else np.zeros((0,))


def accuracy(engines: dict, inputs: Inputs, chunk: int, progress: bool) -> dict:
    """Per variant: accuracy on the labels (when given), top-1 agreement and output error vs the original."""
    from tqdm import tqdm

    outs = {}
    for key, run in engines.items():
        chunks = -(-inputs.count // (inputs.fixed_batch or chunk))
        with tqdm(total=chunks, desc=f"accuracy {key}", unit="batch", file=sys.stderr, leave=False,
                  disable=not progress) as bar:
            outs[key] = _predict(run, inputs, chunk, bar)
    ref = outs["original"]
    result = {"source": inputs.source, "samples": int(len(ref)), "labelled": inputs.labels is not None,
              "classification": bool(ref.ndim == 2 and ref.shape[1] > 1), "variants": {}}
    for key, y in outs.items():
        r = {"max_abs_diff_vs_original": float(np.abs(y - ref).max()) if y.size else 0.0,
             "rel_l2_vs_original": float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-30))}
        if result["classification"]:
            r["top1_agreement"] = float(np.mean(y.argmax(1) == ref.argmax(1)))
            if inputs.labels is not None:
                r["accuracy"] = float(np.mean(y.argmax(1) == inputs.labels[: len(y)]))
        result["variants"][key] = r
    return result


def median_time(fn, x, repeat: int) -> dict:
    """Warm-up, then `repeat` timed calls; the median (and spread) in seconds: benchmarks/runtime_vs_ort.py's
    method."""
    for _ in range(min(WARMUP, repeat)):
        fn(x)
    t = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        t[i] = time.perf_counter() - t0
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "p90_s": float(np.percentile(t, 90)),
            "repeat": repeat}


def latency(engines: dict, inputs: Inputs, batch: int, repeat: int, progress: bool) -> dict:
    from tqdm import tqdm

    x1 = inputs.batch(1)
    xb = inputs.batch(batch)
    nb = int(next(iter(xb.values())).shape[0])
    rb = max(3, repeat // 50) if repeat >= 3 else repeat
    result = {"batch": nb, "repeat_batch1": repeat, "repeat_batchN": rb, "engines": {}}
    for key, run in tqdm(list(engines.items()), desc="latency", unit="engine", file=sys.stderr, leave=False,
                         disable=not progress):
        b1 = median_time(run, x1, repeat)
        bn = median_time(run, xb, rb)
        result["engines"][key] = {"batch1_us": 1e6 * b1["median_s"], "batch1_min_us": 1e6 * b1["min_s"],
                                  "batch1_p90_us": 1e6 * b1["p90_s"], "batchN_ms": 1e3 * bn["median_s"],
                                  "batchN_min_ms": 1e3 * bn["min_s"],
                                  "throughput_per_s": nb / bn["median_s"] if bn["median_s"] else None}
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
engine, path, feeds_path, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy as np
d = np.load(feeds_path)
x1 = {k[2:]: d[k] for k in d.files if k.startswith("1:")}
xb = {k[2:]: d[k] for k in d.files if k.startswith("N:")}
r = {"start": rss()[0]}
if engine == "edgepack":
    import runtime
    def make():
        return runtime.load(path).run
else:
    import onnxruntime as ort
    def make():
        o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1; o.log_severity_level = 3
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
for _ in range(max(1, repeat // 10)):
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


def memory_probe(engine: str, path: str, x1: dict, xb: dict, repeat: int, workdir: str) -> dict:
    """Resident-memory growth of importing, loading, the first run and steady runs, in a fresh interpreter."""
    feeds = os.path.join(workdir, f"probe-{engine}.npz")
    np.savez(feeds, **{f"1:{k}": v for k, v in x1.items()}, **{f"N:{k}": v for k, v in xb.items()})
    env = dict(os.environ)
    root = str(Path(runtime.__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    done = subprocess.run([sys.executable, "-c", _PROBE, engine, path, feeds, str(repeat)], capture_output=True,
                          text=True, env=env, timeout=1800)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    r = json.loads(done.stdout.strip().splitlines()[-1])
    return {"method": r["method"], "rss_after_import": r["import"],
            "import_growth": r["import"] - r["start"], "load_growth": r["load"] - r["import"],
            "first_run_growth": r["first_run"] - r["load"], "batch1_runs_growth": r["batch1_runs"] - r["first_run"],
            "batchN_runs_growth": r["batchN_runs"] - r["batch1_runs"],
            "load_and_run_growth": r["batchN_runs"] - r["import"],
            "second_instance_load_growth": r["second_load"] - r["batchN_runs"],
            "second_instance_run_growth": r["second_run"] - r["second_load"], "peak_rss": r["peak"]}


def memory(epk_path: str, onnx_path: str, int8_path: str | None, inputs: Inputs, batch: int, repeat: int,
           workdir: str) -> dict:
    model = runtime.load(epk_path)
    x1, xb = inputs.batch(1), inputs.batch(batch)
    plan_n = model.plan_for({k: v.shape for k, v in xb.items()})
    probes = {"edgepack": memory_probe("edgepack", epk_path, x1, xb, repeat, workdir),
              "ort_original": memory_probe("ort", onnx_path, x1, xb, repeat, workdir)}
    if int8_path:
        probes["ort_int8"] = memory_probe("ort", int8_path, x1, xb, repeat, workdir)
    return {"plan": model.plan.as_dict(), "plan_batchN": {"total_bytes": plan_n.total_bytes,
                                                          "arena_bytes": plan_n.arena_bytes,
                                                          "scratch_bytes": plan_n.scratch_bytes},
            "minimum_budget": model.minimum_budget, "measured": probes,
            "note": "in a fresh interpreter per engine (onnxruntime with 1 thread), growth of VmRSS across each "
                    "step; the first load and run include the engine's one-time costs (edgepack: loading or "
                    "compiling the Numba kernels; onnxruntime: its allocators and kernel registry); a second "
                    "instance of the same model, loaded and run beside the first, shows the model's own memory. "
                    "File pages that a load reads count as resident"}


def energy(epk_path: str, sram: int, table_path: str | None, inputs: Inputs) -> dict:
    from runtime.energy import estimate, load_for_sram, load_table

    table = load_table(table_path)
    active = None
    if inputs.labels is not None:  # with data: zero activations as measured on it
        from .activations import nonzero_fractions

        active = nonzero_fractions(epk_path, inputs.take(0, min(inputs.count, 256)))
    model, budget = load_for_sram(epk_path, sram, 1)
    r = estimate(model, read_packed(epk_path), sram, table, active)
    r["plan_budget"] = budget
    r["zero_activations_measured_on"] = inputs.source if active else None
    return _clean(r)


# ---- the run --------------------------------------------------------------------------------------------------------

def bench(onnx_path: str | os.PathLike, epk_path: str | os.PathLike, *, data: str | None = None,
          out_dir: str | os.PathLike = "edgepack-bench", smoke: bool = False, batch: int | None = None,
          repeat: int | None = None, samples: int | None = None, sram: str | int = "256KiB",
          table: str | None = None, progress: bool = True, command: str | None = None) -> dict:
    """Run every measurement, write OUT_DIR/report.md, report.json and the plots; return the report."""
    from tqdm import tqdm

    missing = missing_requirements()
    if missing:
        raise ImportError(f"edgepack bench needs {', '.join(missing)}: pip install 'edgepack[bench]'")
    onnx_path, epk_path = os.fspath(onnx_path), os.fspath(epk_path)
    for p, what in ((onnx_path, "ONNX model"), (epk_path, "packed model")):
        if not os.path.isfile(p):
            hint = f" (make it with: edgepack pack {onnx_path} -o {epk_path})" if p == epk_path else ""
            raise FileNotFoundError(f"{what} {p} does not exist{hint}")
    preset = SMOKE if smoke else DEFAULTS
    batch = batch or preset["batch"]
    repeat = repeat or preset["repeat"]
    samples = samples if samples is not None else preset["samples"]
    sram_bytes = parse_size(sram)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(), "command": command or f"edgepack bench {onnx_path} {epk_path}",
                    "settings": {"batch": batch, "repeat": repeat, "samples": samples, "smoke": smoke,
                                 "sram_bytes": sram_bytes, "data": data}}
    steps = ["size", "accuracy", "latency", "memory", "energy", "plots"]
    with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp, \
            tqdm(total=len(steps), desc="bench", unit="step", file=sys.stderr, disable=not progress) as bar:
        def step(name):
            bar.set_postfix_str(name)

        step("size")
        int8_path = os.path.join(tmp, "int8.onnx")
        int8_error = int8_dynamic(onnx_path, int8_path)
        report["size"] = sizes(onnx_path, epk_path, int8_path, int8_error)
        bar.update()

        step("accuracy")
        inputs = Inputs(onnx_path, data, samples)
        engines = _engines(onnx_path, epk_path, int8_path if int8_error is None else None, inputs.output)
        acc_engines = {"original": engines["ort_1_thread"], "edgepack": engines["edgepack"]}
        if "ort_int8" in engines:
            acc_engines["int8"] = engines["ort_int8"]
        try:
            report["accuracy"] = accuracy(acc_engines, inputs, batch, progress)
        except Exception as e:  # an int8 model onnxruntime cannot run: measure the others
            if "int8" not in acc_engines:
                raise
            acc_engines.pop("int8")
            engines.pop("ort_int8")
            report["size"]["int8_error"] = f"runs: {type(e).__name__}: {e}"
            report["accuracy"] = accuracy(acc_engines, inputs, batch, progress)
        bar.update()

        step("latency")
        report["latency"] = latency(engines, inputs, batch, repeat, progress)
        bar.update()

        step("memory")
        report["memory"] = memory(epk_path, onnx_path, int8_path if "ort_int8" in engines else None, inputs,
                                  batch, min(repeat, 200), tmp)
        bar.update()

        step("energy")
        report["energy"] = energy(epk_path, sram_bytes, table, inputs)
        bar.update()

        step("plots")
        from .plots import write_plots

        report["plots"] = write_plots(report, onnx_path, epk_path, out)
        bar.update()
    report = _clean(report)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    return report


def _engines(onnx_path: str, epk_path: str, int8_path: str | None, output: str) -> dict:
    """Name -> callable(feeds) -> the first output, for every engine measured."""
    from .verify import session

    model = runtime.load(epk_path)
    out_name = model.outputs[0]
    ort1 = session(onnx_path, threads=1)
    ortd = session(onnx_path, threads=0)
    engines = {"edgepack": lambda f: model.run(f)[out_name],
               "ort_1_thread": lambda f: ort1.run([output], f)[0],
               "ort_default": lambda f: ortd.run([output], f)[0]}
    if int8_path:
        ort8 = session(int8_path, threads=1)
        engines["ort_int8"] = lambda f: ort8.run([output], f)[0]
    return engines


# ---- the markdown report --------------------------------------------------------------------------------------------

ENGINE_LABELS = {"edgepack": "edgepack runtime (1 thread)", "ort_1_thread": "onnxruntime fp32, 1 thread",
                 "ort_default": "onnxruntime fp32, default threads", "ort_int8": "onnxruntime int8 dynamic, 1 thread"}


def _table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def _b(n) -> str:
    return "-" if n is None else f"{int(n):,}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def markdown(r: dict) -> str:
    m = r["machine"]
    L = ["# edgepack bench", ""]
    L += ["## Machine", "",
          f"{m['cpu']}, {m['cores']} cores, {_b(m['memory_bytes'])} B memory; {m['platform']}; Python {m['python']}, "
          f"numpy {m['numpy']}, numba {m['numba']}, onnxruntime {m['onnxruntime']}, onnx {m['onnx']}. "
          f"{m['date']}; load average at start {m['load_average']}, after the latency runs "
          f"{r['latency'].get('load_average_after')} (other processes on the machine add noise to the timings).", ""]
    s = r["settings"]
    L += ["## Command", "", "```", r["command"], "```", "",
          f"batch N = {s['batch']}, {s['repeat']} timed batch-1 calls per engine"
          f"{' (smoke mode)' if s['smoke'] else ''}; data: {s['data'] or 'random inputs of the declared shape'}.", ""]
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
    what = (f"{a['samples']} labelled samples of {a['source']}" if a["labelled"]
            else f"{a['samples']} random inputs of the declared shape (no labels: agreement with the original)")
    L += [f"On {what}.", ""]
    labels = {"original": "original (onnxruntime fp32)", "int8": "int8 dynamic (onnxruntime)",
              "edgepack": "edgepack (runtime)"}
    rows = [[labels.get(k, k), _pct(v.get("accuracy")), _pct(v.get("top1_agreement")),
             f"{v['max_abs_diff_vs_original']:.3g}", f"{v['rel_l2_vs_original']:.3g}"]
            for k, v in a["variants"].items()]
    L += _table(["variant", "accuracy", "top-1 agreement with original", "max abs diff", "relative L2"], rows)
    lat = r["latency"]
    L += ["", "## Latency and throughput", "",
          f"Median over repeated calls of each engine's Python API after {WARMUP} warm-up calls "
          f"(benchmarks/runtime_vs_ort.py's method); batch 1: {lat['repeat_batch1']} calls, batch {lat['batch']}: "
          f"{lat['repeat_batchN']} calls.", ""]
    rows = [[ENGINE_LABELS.get(k, k), f"{v['batch1_us']:.1f}", f"{v['batch1_min_us']:.1f}", f"{v['batchN_ms']:.3f}",
             f"{v['throughput_per_s']:,.0f}" if v["throughput_per_s"] else "-"]
            for k, v in lat["engines"].items()]
    L += _table(["engine", "batch 1 median us", "batch 1 min us", f"batch {lat['batch']} median ms", "samples/s"],
                rows)
    mem = r["memory"]
    p = mem["plan"]
    L += ["", "## Memory", "",
          f"Runtime plan at batch 1: total {_b(p['total_bytes'])} B (weights as held, constants, arena "
          f"{_b(p['arena_bytes'])} B, scratch {_b(p['scratch_bytes'])} B; RAM {_b(p['ram_bytes'])} B + mapped "
          f"{_b(p['mapped_bytes'])} B); smallest budget it loads in: {_b(mem['minimum_budget'])} B; at batch "
          f"{lat['batch']}: {_b(mem['plan_batchN']['total_bytes'])} B.", ""]
    rows = [[l["name"], l["op"], l["encoding"], l["mode"], _b(l["ram_bytes"]), _b(l["mapped_bytes"]),
             _b(l["scratch_bytes"])] for l in p["layers"]]
    L += _table(["layer", "op", "encoding", "held as", "RAM B", "mapped B", "scratch B"], rows)
    L += ["", f"Measured resident-memory growth ({mem['note']}):", ""]
    rows = []
    for k, v in mem["measured"].items():
        if "error" in v:
            rows.append([k, "error: " + " ".join(v["error"])] + [""] * 7)
            continue
        rows.append([k, _b(v["rss_after_import"]), _b(v["load_growth"]), _b(v["first_run_growth"]),
                     _b(v["batch1_runs_growth"]), _b(v["batchN_runs_growth"]), _b(v["second_instance_load_growth"]),
                     _b(v["second_instance_run_growth"]), _b(v["peak_rss"])])
    L += _table(["engine", "RSS after import B", "load B", "first run B", "batch-1 runs B",
                 f"batch-{lat['batch']} runs B", "2nd instance: load B", "2nd instance: run B", "peak RSS B"], rows)
    e = r["energy"]
    L += ["", "## Energy", "",
          f"Estimated per inference (batch 1), {e['process']}, SRAM {_b(e['sram_bytes'])} B "
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
    L += [f"Packed model: {ratio:.1f}x less energy per inference." if ratio else "", ""]
    L += ["## Plots", ""]
    for key, path in r["plots"].items():
        if isinstance(path, list):
            L += [f"- {key}: " + ", ".join(f"[{Path(q).name}]({Path(q).name})" for q in path)]
        else:
            L += [f"- {key}: ![{key}]({Path(path).name})"]
    L.append("")
    return "\n".join(L)
