"""Task-level checks of the real-model corpus: does edgepack's packed file give the same *answers* as the original?

Interface (tasks_vision.py and tasks_audio.py follow it; tasks.py merges their TASKS into one registry keyed by
`Entry.task`):

    class Task:
        name: str
        def answers(self, entry, run, n, seed) -> list
        def agree(self, a, b) -> bool

`answers` makes n realistic inputs itself, deterministically from `seed` (rendered text, CAPTCHAs, documents,
synthetic audio...), drives the model through `run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]` (one call
= one model run; stateful or multi-stage tasks call it many times, feeding outputs back), post-processes the outputs
the way the package that ships the model does, and returns a flat list of task-level answers, one per unit judged
(a decoded string, a set of boxes, a class, a VAD decision per chunk). Every feed has exactly the static shape the
entry is packed with (`input_shapes(entry)`, from `Entry.input_shapes`, or the ONNX file's own static shape when the
entry names none). `agree(a, b)` judges two answers for the same unit: text equal; boxes: same count, each matched
with IoU >= 0.95 and the same class; class equal; decision equal. Optional: `truths(entry, n, seed)` and
`correct(answer, truth)` (tasks that know what they rendered), `sanity(answers)` and `describe(answers)`
(tasks_audio.py), `min_agree` (the agreement floor tests/test_realmodels.py holds the task to).

Runners: `ort_runner(onnx_path)` (onnxruntime on the original, one thread), `runtime_runner(epk_path, **load_kwargs)`
(edgepack's device runtime: `runtime.load(...).run(feeds)`, which returns {output name: array}). Both return all the
model's outputs by name, and pass on only the feeds their model declares (a task may feed an input that the packed
file has specialised away with --input-value, e.g. silero's `sr`).

`agreement(entry, ref_run, test_run, n, seed)` -> (fraction of units that agree, number of units, up to five examples
of disagreement as (unit index, reference answer, test answer)). The same seed gives both sides the same inputs.
`compare(...)` is the same with both sides' answers kept (a Comparison).

`pack_entry(entry, out_path, *extra_flags)` runs `edgepack pack ORIGINAL -o out_path` with `corpus.pack_args(entry)`
and the extra flags (e.g. "--sparsity", "0", "--bits", "8"), as a user would, and returns the seconds it took;
`PackFailed` carries the command's last error line. `unpack_file(epk, onnx_out)` runs `edgepack unpack`. Both call the
console script's main in-process. `paired_runner(ref, test)` runs two models on the task's own inputs and records
their relative error (ErrorLog.relative(): max over outputs of ||test - ref|| / ||ref||, norms over all runs).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from realmodels.corpus import Entry, fetch, pack_args

Run = Callable[[dict], dict]


class PackFailed(RuntimeError):
    """`edgepack pack` (or unpack) exited non-zero; the message is its last error line."""


def input_shapes(entry: Entry) -> dict[str, tuple[int, ...]]:
    """{input name: static shape} the entry is packed with: its --input-shape values, else the ONNX file's static
    input shapes (inputs fixed by --input-value are not fed)."""
    shapes = {}
    for s in entry.input_shapes:
        name, dims = s.split("=", 1)
        shapes[name] = tuple(int(d) for d in dims.split(","))
    if shapes:
        return shapes
    import onnx

    m = onnx.load(str(fetch(entry)), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    fixed = {v.split("=", 1)[0] for v in entry.input_values}
    for v in m.graph.input:
        if v.name in inits or v.name in fixed:
            continue
        shapes[v.name] = tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
    return shapes


def ort_runner(onnx_path) -> Run:
    """run(feeds) -> {output name: array} with onnxruntime on one thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}

    def run(feeds: dict) -> dict:
        return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))

    return run


def runtime_runner(epk_path, **load_kwargs) -> Run:
    """run(feeds) -> {output name: array} with edgepack's device runtime on the packed file."""
    from edgepack import runtime

    model = runtime.load(str(epk_path), **load_kwargs)
    wanted = {name for name, _ in model.inputs}

    def run(feeds: dict) -> dict:
        return model.run({k: v for k, v in feeds.items() if k in wanted})

    return run


def task_for(entry: Entry):
    from realmodels.tasks import TASKS

    return TASKS[entry.task]


@dataclass
class Comparison:
    """Both sides' answers on the same n inputs, and how far they agree."""

    reference: list
    test: list
    fraction: float  # of units whose answers agree (1.0 when there are none)
    disagreements: list  # every (unit index, reference answer, test answer) that does not

    @property
    def units(self) -> int:
        return len(self.reference)


def compare(entry: Entry, ref_run: Run, test_run: Run, n: int, seed: int = 0) -> Comparison:
    task = task_for(entry)
    a = task.answers(entry, ref_run, n, seed)
    b = task.answers(entry, test_run, n, seed)
    if len(a) != len(b):
        return Comparison(a, b, 0.0, [(-1, f"{len(a)} answers", f"{len(b)} answers")])
    bad = [(i, x, y) for i, (x, y) in enumerate(zip(a, b)) if not task.agree(x, y)]
    return Comparison(a, b, (1.0 - len(bad) / len(a)) if a else 1.0, bad)


def agreement(entry: Entry, ref_run: Run, test_run: Run, n: int, seed: int = 0):
    """(fraction of units whose answers agree, units, up to 5 (index, reference, test) disagreements)."""
    c = compare(entry, ref_run, test_run, n, seed)
    return c.fraction, c.units, c.disagreements[:5]


def _edgepack(args: list[str]) -> None:
    """`edgepack ARGS` in this process (the console script's main; no interpreter start-up per call)."""
    import contextlib
    import io

    from edgepack.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(args)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    if rc:
        lines = (err.getvalue() or out.getvalue()).strip().splitlines()
        raise PackFailed(lines[-1] if lines else f"edgepack {args[0]} exited with {rc}")


def pack_entry(entry: Entry, out_path, *extra_flags: str) -> float:
    """`edgepack pack` the entry's original into out_path with its pack_args and extra_flags; returns seconds."""
    t = time.perf_counter()
    _edgepack(["pack", str(fetch(entry)), "-o", str(out_path), "-q", *pack_args(entry), *extra_flags])
    return time.perf_counter() - t


def unpack_file(epk_path, onnx_out) -> Path:
    """`edgepack unpack epk -o onnx_out`: the dense ONNX equivalent of the packed file."""
    _edgepack(["unpack", str(epk_path), "-o", str(onnx_out)])
    return Path(onnx_out)


class ErrorLog:
    """What paired_runner saw: per output name, the summed squares of (test - ref) and of ref over every run."""

    def __init__(self):
        self.runs = 0
        self.missing: list[str] = []  # outputs the test side did not give, or gave in another shape
        self._diff2: dict[str, float] = {}
        self._ref2: dict[str, float] = {}

    def add(self, ref: dict, got: dict) -> None:
        self.runs += 1
        for k, r in ref.items():
            g = got.get(k)
            if g is None or np.shape(g) != np.shape(r):
                self.missing.append(k)
                continue
            r64, g64 = np.asarray(r, np.float64), np.asarray(g, np.float64)
            self._diff2[k] = self._diff2.get(k, 0.0) + float(np.sum((g64 - r64) ** 2))
            self._ref2[k] = self._ref2.get(k, 0.0) + float(np.sum(r64 ** 2))

    def relative(self) -> float:
        """max over outputs of ||test - ref|| / ||ref||, each norm over all the runs' values of that output (so that
        an output that is tiny on some inputs, like a wake-word score of 1e-6, is judged on the task's scale); inf
        when an output was missing or misshaped, nan when nothing ran."""
        if self.missing:
            return float("inf")
        if not self._ref2:
            return float("nan")
        return max(np.sqrt(self._diff2[k]) / max(np.sqrt(self._ref2[k]), 1e-30) for k in self._ref2)


def paired_runner(ref_run: Run, test_run: Run):
    """(run, log): run(feeds) runs both models on the same feeds, records both outputs in log (an ErrorLog) and
    returns the reference's outputs, so that a task drives both with its realistic inputs (and stateful tasks follow
    the reference's state)."""
    log = ErrorLog()

    def run(feeds: dict) -> dict:
        ref = ref_run(feeds)
        log.add(ref, test_run(feeds))
        return ref

    return run, log


def recorder(run, names: list[str] | None, limit: int):
    """(run', calls): run' passes feeds on to run and keeps a copy of the first `limit` calls' feeds (of `names`,
    or all of them when None)."""
    calls: list[dict] = []

    def wrapped(feeds: dict) -> dict:
        if len(calls) < limit:
            calls.append({k: np.array(v, copy=True) for k, v in feeds.items() if names is None or k in names})
        return run(feeds)

    return wrapped, calls


def calibration_set(entry: Entry, samples: int, seed: int) -> dict[str, np.ndarray]:
    """`samples` feeds the entry's task gives its model (onnxruntime on the original, task inputs of `seed` and the
    seeds after it), stacked on a new leading axis by input name, without the inputs fixed by --input-value: what
    `edgepack pack --calib` takes as an .npz."""
    fixed = {v.split("=", 1)[0] for v in entry.input_values}
    run, calls = recorder(ort_runner(fetch(entry)), None, samples)
    task = task_for(entry)
    s = seed
    while len(calls) < samples and s < seed + 16:
        task.answers(entry, run, samples, s)
        s += 1
    if not calls:
        raise RuntimeError(f"task {entry.task} ran the model 0 times")
    return {k: np.stack([c[k] for c in calls]) for k in calls[0] if k not in fixed}
