"""Real-world-shaped models (tests/realzoo.py) packed two ways and run in edgepack's runtime beside onnxruntime, all in
one run: file sizes, output error against onnxruntime on the original, and batch-1 latency of both engines.

    python benchmarks/zoo_models.py [--out benchmarks/out] [--samples 64] [--repeat 300] [--rounds 5]

Configurations (the CLI's flags): `--sparsity 0 --bits 8 --max-error 0.01` and `--sparsity 0.5 --bits 6 --max-error
0.05`, calibration left to the packer (random inputs of the declared shapes: 16 samples, or the one sample a batch
fixed by --input-shape allows). The models have seeded random (untrained) weights. Error: relative L2 norm of the
runtime's output minus onnxruntime's on the original ONNX file, over `--samples` held-out random inputs run one at a
time (worst output). Latency: batch 1, one thread each (ORT intra_op 1; the runtime's default single-threaded
kernels, BLAS pinned to one thread below), median over `--rounds` alternating blocks of `--repeat` calls after warm-up.
"""
from __future__ import annotations

import os

# one BLAS thread for the runtime's dense float32 layers, as ORT gets one intra-op thread (set before numpy loads)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

import realzoo  # noqa: E402
import runtime  # noqa: E402
from edgepack.packer.pipeline import pack  # noqa: E402
from edgepack.packer.verify import session  # noqa: E402

CONFIGS = {"s0_b8_e0.01": {"sparsity": 0.0, "bits": 8, "max_error": 0.01},
           "s0.5_b6_e0.05": {"sparsity": 0.5, "bits": 6, "max_error": 0.05}}
EVAL_SEED = 20260  # held out: the packer calibrates on seed 0


def machine() -> dict:
    import numba
    import onnx
    import onnxruntime

    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}


def load_average() -> list[float]:
    try:
        return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return []


def latencies(engines: dict, feeds: dict, repeat: int, rounds: int) -> dict[str, dict]:
    """Median (and spread) of per-call seconds; engines alternate in blocks so that load from other users of the
    machine falls on both alike."""
    for fn in engines.values():
        for _ in range(max(10, repeat // 10)):
            fn(feeds)
    times = {k: [] for k in engines}
    for _ in range(rounds):
        for k, fn in engines.items():
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn(feeds)
                times[k].append(time.perf_counter() - t0)
    out = {}
    for k, t in times.items():
        t = np.asarray(t)
        out[k] = {"median_us": 1e6 * float(np.median(t)), "p10_us": 1e6 * float(np.percentile(t, 10)),
                  "p90_us": 1e6 * float(np.percentile(t, 90)), "calls": int(t.size)}
    return out


def rel_l2(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)) for g, w in zip(got, want))


def measure(name: str, entry: dict, onnx_path: Path, work: Path, config: str, a) -> dict:
    inp, shape = entry["input"], tuple(entry["shape"])
    settings = CONFIGS[config]
    input_shapes = {inp: [1, *shape]} if entry["static"] else None
    epk = work / f"{name}.{config}.epk"
    t0 = time.perf_counter()
    report = pack(onnx_path, epk, input_shapes=input_shapes, **settings)
    pack_s = time.perf_counter() - t0
    fid = report.fidelity
    model = runtime.load(epk)
    ort = session(str(onnx_path), threads=1)

    xs = np.random.default_rng(EVAL_SEED).standard_normal((a.samples, 1, *shape)).astype(np.float32)
    got = [[] for _ in model.outputs]
    want = [[] for _ in model.outputs]
    for x in xs:  # one at a time: a model specialised by --input-shape has batch 1
        o = model.run({inp: x})
        r = ort.run(model.outputs, {inp: x})
        for i, n in enumerate(model.outputs):
            got[i].append(o[n].astype(np.float64))
            want[i].append(r[i].astype(np.float64))
    got = [np.concatenate(g) for g in got]
    want = [np.concatenate(w) for w in want]
    res = {"config": config, "settings": settings, "input_shapes": input_shapes,
           "onnx_bytes": onnx_path.stat().st_size, "packed_bytes": epk.stat().st_size,
           "file_ratio": onnx_path.stat().st_size / epk.stat().st_size, "packer_ratio": report.ratio,
           "original_fp32_bytes": report.info["original_bytes"],
           "pack_seconds": pack_s,
           "guard": {"calibration_error_before": fid.before.rel_l2, "calibration_error_after": fid.after.rel_l2,
                     "met": fid.met, "changes": [{"tensor": c.tensor, "change": c.what} for c in fid.changes]},
           "warnings": report.warnings, "rel_l2_error": rel_l2(got, want), "samples": int(a.samples)}
    if want[0].ndim == 2 and want[0].shape[1] > 1:
        res["top1_agreement"] = float(np.mean(got[0].argmax(1) == want[0].argmax(1)))
    x1 = {inp: xs[0]}
    lat = latencies({"edgepack": lambda f: model.run(f), "ort_1_thread": lambda f: ort.run(None, f)}, x1,
                    a.repeat, a.rounds)
    res["latency"] = lat
    res["modes"] = {k: v.mode for k, v in model.layers.items()}
    return res


def table(results: dict) -> str:
    head = ("| model | config | ONNX B | packed B | ratio | guard: calib. error before -> after (changes) "
            "| rel. L2 error, held out | edgepack us | ORT 1t us | ORT / edgepack |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, per in results.items():
        for cfg, r in per.items():
            e, o = r["latency"]["edgepack"]["median_us"], r["latency"]["ort_1_thread"]["median_us"]
            g = r["guard"]
            guard = (f"{g['calibration_error_before']:.3g} -> {g['calibration_error_after']:.3g} "
                     f"({len(g['changes'])}{'' if g['met'] else ', bound not met'})")
            lines.append(f"| {name} | {cfg} | {r['onnx_bytes']:,} | {r['packed_bytes']:,} | {r['file_ratio']:.2f}x | "
                         f"{guard} | {r['rel_l2_error']:.2e} | {e:,.0f} | {o:,.0f} | {o / e:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    p.add_argument("--samples", type=int, default=64, help="held-out random inputs for the error (default 64)")
    p.add_argument("--repeat", type=int, default=300, help="calls per engine per round (default 300)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    p.add_argument("--only", action="append", help="a zoo model's name (repeatable; default all)")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 samples, 20 calls x 2 rounds")
    a = p.parse_args()
    if a.quick:
        a.samples, a.repeat, a.rounds = 8, 20, 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    zoo = realzoo.zoo()
    names = a.only or list(zoo)
    results: dict[str, dict] = {}
    doc = {"command": " ".join(["python", "benchmarks/zoo_models.py", *sys.argv[1:]]), "machine": machine(),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average_start": load_average(),
           "threads": {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")},
           "configs": CONFIGS, "samples": a.samples, "repeat": a.repeat, "rounds": a.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in names:
            entry = zoo[name]
            onnx_path = Path(realzoo.save(entry["model"], work / f"{name}.onnx"))
            ops = sorted({n.op_type for n in entry["model"].graph.node})
            results[name] = {}
            for cfg in CONFIGS:
                r = measure(name, entry, onnx_path, work, cfg, a)
                r["onnx_ops"] = ops
                results[name][cfg] = r
                print(f"{name} {cfg}: {r['packed_bytes']:,} B ({r['file_ratio']:.2f}x), error {r['rel_l2_error']:.2e},"
                      f" edgepack {r['latency']['edgepack']['median_us']:.0f} us, ORT "
                      f"{r['latency']['ort_1_thread']['median_us']:.0f} us", file=sys.stderr, flush=True)
    doc["load_average_end"] = load_average()
    doc["models"] = results
    (out / "zoo_models.json").write_text(json.dumps(doc, indent=2, default=str))
    print(table(results))
    print(f"\nload average (1/5/15 min) at start {doc['load_average_start']}, at end {doc['load_average_end']}; "
          f"{doc['machine']['cpu']}, {doc['machine']['cores']} cores; wrote {out / 'zoo_models.json'}")


if __name__ == "__main__":
    main()
