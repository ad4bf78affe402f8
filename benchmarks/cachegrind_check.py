"""Cross-check of the energy model's memory traffic (runtime/energy.py) against a measurement: valgrind's cachegrind
runs the device runtime on a packed model with its last-level cache set to the SRAM size, and the last-level misses
x line size per inference (bytes fetched from "DRAM") are compared with the bytes the energy model charges to DRAM.

    python benchmarks/cachegrind_check.py [--model X.epk] [--n 1000] [--sizes 32KiB,64KiB,128KiB,256KiB] [--jobs 2]
        [--out benchmarks/out]

Without --model it builds LeNet-300-100 (784-300-100-10, ReLU) with seeded He-initialised weights and packs it at the
paper's densities (8% / 9% / 26% kept; 6 / 6 / 5-bit codebooks): traffic depends on the stored structure, not on
what the weights learned. Every valgrind run starts the same child: import the runtime, load the model three times
(weights held as the runtime chooses without a budget, "streamed" from the Huffman chunks on every run, and "dense"
float32 as the original model's weights), run each once; then it runs ONE of them N times. A run with N = 0 (per
cache size) is the baseline that removes interpreter, numpy and Numba start-up traffic: per inference =
(misses(N) - misses(0)) / N. Cache model: I1 = D1 = 32 KiB 8-way (the machine's L1), LL = SRAM size, 16-way, 64-byte
lines; fetched bytes = (LL data read misses + LL data write misses) x 64 (cachegrind allocates on write and does not
model write-backs; instruction misses are shown apart: on a device the code sits in flash). Misses are also split by
the code that caused them: the runtime's Numba kernels (JIT code, no symbol), BLAS (numpy's, for layers held dense),
the Python interpreter, and the rest (numpy, Numba's dispatcher, libc). Objects alive before the loop are frozen
out of the cyclic garbage collector (gc.freeze), whose full collections would otherwise walk them. Numba compiles
for a generic x86-64 CPU here (NUMBA_CPU_NAME=generic, its own cache folder) because valgrind does not decode AVX-512.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import runtime  # noqa: E402
from edgepack.runtime.energy import estimate  # noqa: E402
from edgepack.runtime.loader import read_packed  # noqa: E402
from edgepack.runtime.memory import parse_size  # noqa: E402

LINE = 64
L1 = "32768,8,64"
MODES = ("auto", "streamed", "dense")  # auto: what runtime.load chooses without a budget

CHILD = r"""
import sys
import numpy as np
from edgepack import runtime
path, run_mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
first = runtime.load(path)
name, shape = first.inputs[0]
x = np.random.default_rng(0).uniform(0.05, 1.0, [d if isinstance(d, int) else 1 for d in shape]).astype(np.float32)
models = {}
for mode, kw in (("auto", {}), ("streamed", {"layer_modes": "streamed"}), ("dense", {"layer_modes": "dense"})):
    try:
        m = first if mode == "auto" else runtime.load(path, **kw)
        m.run({name: x})
        models[mode] = m
    except Exception as e:  # reported; the same in the baseline, so the other modes still compare
        print(f"mode {mode} failed: {e!r}", file=sys.stderr)
m = models[run_mode]
# Python's cyclic GC would now and then walk every object Numba and numpy made at start-up (megabytes): freeze them
# into the permanent generation so that the loop measures the runs, as a long-running service would.
import gc
gc.collect()
gc.freeze()
for _ in range(n):
    m.run({name: x})
print("done", run_mode, n)
"""


def build_lenet300(out: Path) -> Path:
    from edgepack.packer.graph import Graph, Node, ValueInfo
    from edgepack.packer.onnx_io import save_onnx
    from edgepack.packer.pipeline import pack

    rng = np.random.default_rng(0)
    inits, nodes, prev = {}, [], "input"
    sizes = ((784, 300), (300, 100), (100, 10))
    for i, (a, b) in enumerate(sizes, 1):
        inits[f"fc{i}.weight"] = (rng.standard_normal((b, a)) * np.sqrt(2 / a)).astype(np.float32)
        inits[f"fc{i}.bias"] = np.zeros(b, np.float32)
        y = "logits" if i == len(sizes) else f"h{i}"
        nodes.append(Node("Gemm", f"fc{i}", [prev, f"fc{i}.weight", f"fc{i}.bias"], [y], {"transB": ("int", 1)}))
        if i < len(sizes):
            nodes.append(Node("Relu", f"relu{i}", [y], [f"r{i}"]))
            prev = f"r{i}"
    g = Graph("lenet300_random", [ValueInfo("input", "float32", ["N", 784])],
              [ValueInfo("logits", "float32", ["N", 10])], nodes, inits, 17, sum(v.size for v in inits.values()))
    onnx_path = out / "cg_lenet300.onnx"
    save_onnx(g, onnx_path)
    epk = out / "cg_lenet300.epk"
    cfg = {"layers": {"fc1.weight": {"sparsity": 0.92, "bits": 6}, "fc2.weight": {"sparsity": 0.91, "bits": 6},
                      "fc3.weight": {"sparsity": 0.74, "bits": 5}}}
    pack(onnx_path, epk, config=cfg)
    return epk


def snapshot_runtime(out: Path) -> Path:
    """A copy of the runtime (edgepack/__init__.py and edgepack/runtime/) for the children: an edit to the tree during
    the run would make Numba recompile a kernel under valgrind in one run and not in its baseline."""
    dest = out / "cg_snapshot"
    shutil.rmtree(dest, ignore_errors=True)
    pkg = ROOT / "src" / "edgepack"
    shutil.copytree(pkg / "runtime", dest / "edgepack" / "runtime", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(pkg / "__init__.py", dest / "edgepack" / "__init__.py")
    return dest


def child_env(cache: Path, code: Path) -> dict:
    env = dict(os.environ)
    env.update({"PYTHONHASHSEED": "0", "NUMBA_CPU_NAME": "generic", "NUMBA_CACHE_DIR": str(cache),
                "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "NUMBA_NUM_THREADS": "1", "PYTHONPATH": str(code)})
    return env


def parse_cachegrind(path: Path) -> tuple[list[str], dict[tuple[str, str], np.ndarray]]:
    """Events and per-(file, function) totals of a cachegrind output file."""
    events: list[str] = []
    per: dict[tuple[str, str], np.ndarray] = {}
    fl = fn = "???"
    cur = None
    with open(path) as f:
        for line in f:
            if line[0].isdigit():
                vals = line.split()[1:]
                for i, v in enumerate(vals):
                    cur[i] += int(v)
            elif line.startswith("fl="):
                fl = line[3:].rstrip("\n")
            elif line.startswith("fn="):
                fn = line[3:].rstrip("\n")
                cur = per.setdefault((fl, fn), np.zeros(len(events), dtype=np.int64))
            elif line.startswith("events:"):
                events = line.split()[1:]
    return events, per


def category(fl: str, fn: str) -> str:
    if fl == "???" and fn == "???":
        return "kernels (Numba JIT)"
    if re.search(r"gemv|gemm|sdot|ddot|axpy|sscal", fn):
        return "BLAS"
    if "Python-" in fl or "/Python/" in fl or "/Objects/" in fl:
        return "interpreter"
    return "other (numpy, Numba dispatch, libc)"


def run_valgrind(epk: Path, mode: str, n: int, sram: int, out: Path, env: dict, l1: str = L1) -> Path:
    cg = out / f"cachegrind.{mode}.{sram}.{n}.out"
    assoc = 16
    while assoc > 1 and (sram // (LINE * assoc)) & (sram // (LINE * assoc) - 1):
        assoc //= 2  # cachegrind needs a power-of-two number of sets
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=no", f"--I1={l1}", f"--D1={l1}",
           f"--LL={sram},{assoc},{LINE}", f"--cachegrind-out-file={cg}", sys.executable, "-c", CHILD, str(epk),
           mode, str(n)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0 or "done" not in done.stdout:
        why = [l for l in done.stderr.splitlines() if l.startswith(f"mode {mode} failed")] or \
            done.stderr.strip().splitlines()[-1:]
        raise RuntimeError(f"valgrind run of '{mode}' x {n} at LL {sram} B failed: {' '.join(why)}")
    return cg


def per_inference(base: Path, run: Path, n: int) -> dict:
    events, b = parse_cachegrind(base)
    _, r = parse_cachegrind(run)
    ix = {e: i for i, e in enumerate(events)}
    cats: dict[str, np.ndarray] = {}
    for key in set(b) | set(r):
        d = r.get(key, np.zeros(len(events), np.int64)) - b.get(key, np.zeros(len(events), np.int64))
        c = category(*key)
        cats[c] = cats.get(c, np.zeros(len(events), np.int64)) + d
    total = sum(cats.values())

    def summary(v):
        return {"data_bytes": float((v[ix["DLmr"]] + v[ix["DLmw"]]) * LINE / n),
                "data_read_bytes": float(v[ix["DLmr"]] * LINE / n),
                "data_write_alloc_bytes": float(v[ix["DLmw"]] * LINE / n),
                "instruction_bytes": float(v[ix["ILmr"]] * LINE / n),
                "instructions": float(v[ix["Ir"]] / n), "data_refs": float((v[ix["Dr"]] + v[ix["Dw"]]) / n)}
    return {"total": summary(total), "by_code": {c: summary(v) for c, v in sorted(cats.items())}}


def predictions(epk: Path, sram: int) -> dict:
    """The energy model's DRAM bytes per inference, and the same rule applied to the bytes the runtime holds."""
    packed = read_packed(epk)
    out = {}
    for mode in MODES:
        model = runtime.load(epk, layer_modes=None if mode == "auto" else mode)
        e = estimate(model, packed, sram)
        plan = model.plan
        held = plan.weights_ram + plan.weights_mapped + plan.constants_ram + plan.constants_mapped
        acts_on_chip = plan.arena_bytes <= sram
        held_on_chip = acts_on_chip and held + plan.arena_bytes + plan.scratch_bytes <= sram
        key = "original" if mode == "dense" else "packed"
        em = e[key]
        out[mode] = {
            "energy_model": key,
            "energy_model_dram_bytes": (0 if em["weights_on_chip"] else em["weight_bytes"])
            + (0 if em["activations_on_chip"] else em["activation_bytes"]),
            "energy_model_weight_bytes": em["weight_bytes"], "weights_on_chip": em["weights_on_chip"],
            "held_bytes": held, "arena_bytes": plan.arena_bytes, "scratch_bytes": plan.scratch_bytes,
            "held_rule_dram_bytes": (0 if held_on_chip else held) + (0 if acts_on_chip else em["activation_bytes"]),
            "modes": plan.modes(),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a packed .epk (default: LeNet-300-100, random weights, the paper's densities)")
    p.add_argument("--n", type=int, default=1000, help="inferences per measured run (default 1000)")
    p.add_argument("--sizes", default="32KiB,64KiB,128KiB,256KiB", help="SRAM (= LL cache) sizes, comma-separated")
    p.add_argument("--dense-sizes", default="256KiB", help="sizes at which the dense (fp32) form is measured too")
    p.add_argument("--jobs", type=int, default=2, help="valgrind runs at once")
    p.add_argument("--l1", default=L1, help=f"I1 and D1 caches as size,assoc,line (default {L1})")
    p.add_argument("--out", default="benchmarks/out")
    a = p.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("cachegrind_check: valgrind is not installed (apt-get install valgrind)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    epk = Path(a.model) if a.model else build_lenet300(out)
    sizes = [parse_size(s) for s in a.sizes.split(",")]
    dense_sizes = [parse_size(s) for s in a.dense_sizes.split(",") if s]
    cache = out / "cg_numba_cache"
    shutil.rmtree(cache, ignore_errors=True)
    env = child_env(cache, snapshot_runtime(out))
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    # Compile the generic-CPU kernels natively first: under valgrind, LLVM would take many minutes.
    warm = subprocess.run([sys.executable, "-c", CHILD, str(epk), "auto", "1"], env=env, capture_output=True,
                          text=True)
    if warm.returncode != 0:
        raise SystemExit(f"cachegrind_check: the child fails outside valgrind already:\n{warm.stderr[-3000:]}")
    jobs = [(m, s) for s in sizes for m in ("auto", "streamed")] + [("dense", s) for s in dense_sizes]
    bases = sorted({s for _, s in jobs})
    print(f"cachegrind: {len(bases)} baselines + {len(jobs)} measured runs of ~1 minute each, {a.jobs} at a time",
          file=sys.stderr)
    with ThreadPoolExecutor(a.jobs) as pool:
        base_f = {s: pool.submit(run_valgrind, epk, "auto", 0, s, out, env, a.l1) for s in bases}
        run_f = {(m, s): pool.submit(run_valgrind, epk, m, a.n, s, out, env, a.l1) for m, s in jobs}
        base = {s: f.result() for s, f in base_f.items()}
        runs = {}
        for k, f in run_f.items():
            try:
                runs[k] = f.result()
            except RuntimeError as e:  # one mode failing (e.g. a runtime under edit) does not void the others
                runs[k] = e
    rows = []
    for (mode, s), path in runs.items():
        if isinstance(path, Exception):
            rows.append({"mode": mode, "sram_bytes": s, "error": str(path)[-2000:]})
            continue
        meas = per_inference(base[s], path, a.n)
        pred = predictions(epk, s)[mode]
        kern = sum(v["data_bytes"] for c, v in meas["by_code"].items() if c.startswith(("kernels", "BLAS")))
        rows.append({"mode": mode, "sram_bytes": s, "prediction": pred, "measured": meas,
                     "measured_kernels_data_bytes": kern})
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, valgrind "
                         f"{subprocess.run(['valgrind', '--version'], capture_output=True, text=True).stdout.strip()}",
              "command": "python benchmarks/cachegrind_check.py " + " ".join(sys.argv[1:]),
              "model": str(epk), "n": a.n, "cache": {"I1": a.l1, "D1": a.l1, "LL": "SRAM size, 16-way, 64 B lines"},
              "seconds": round(time.perf_counter() - t0, 1), "load_average_start_end": [load0, os.getloadavg()[0]],
              "rows": rows}
    (out / "cachegrind_check.json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    (out / "cachegrind_check.md").write_text(md)
    print(md)


def markdown(r: dict) -> str:
    head = ["weights held as", "SRAM (LL)", "energy model: DRAM B / inference", "same rule on held bytes",
            "measured: kernels", "measured: all code", "interpreter + other", "instr. fetch (not modelled)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
        if "error" in row:
            lines.append(f"| {row['mode']} | {row['sram_bytes'] // 1024} KiB | failed: "
                         f"{row['error'].strip().splitlines()[-1][:120]} |" + " |" * (len(head) - 3))
            continue
        p, m = row["prediction"], row["measured"]
        other = m["total"]["data_bytes"] - row["measured_kernels_data_bytes"]
        label = {"auto": "runtime's choice", "streamed": "streamed (Huffman, as stored)",
                 "dense": "dense fp32 (original)"}[row["mode"]]
        label += f" ({p['held_bytes']:,} B)"
        lines.append(f"| {label} | {row['sram_bytes'] // 1024} KiB | {p['energy_model_dram_bytes']:,.0f} "
                     f"({p['energy_model']}) | {p['held_rule_dram_bytes']:,.0f} | "
                     f"{row['measured_kernels_data_bytes']:,.0f} | {m['total']['data_bytes']:,.0f} | {other:,.0f} | "
                     f"{m['total']['instruction_bytes']:,.0f} |")
    lines.append("")
    lines.append(f"{r['n']} inferences per run at batch 1, minus a 0-inference baseline; I1 = D1 = "
                 f"{r['cache']['D1']} (size, ways, line), LL = the SRAM size, 16-way; {r['machine']}; "
                 f"{r['seconds']:.0f} s.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
