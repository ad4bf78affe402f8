"""A task metric the user gives for calibration-driven packing (`pack(metric=...)`, `edgepack pack --metric`).

A metric is a callable metric(reference, packed) -> float: `reference` and `packed` are lists with one dict per model
run over the calibration set ({output name: float64 array}; a run is a batch of calibration samples when the model
takes more than one at a time, else one sample), of the original model and of the packed weights, both run by
onnxruntime. It returns an error: 0.0 when the packed model gives the same answers, larger when it gives worse ones
(e.g. the fraction of decoded strings that changed). What it steers: with --max-error E and a calibration set (and no
--bits), the allocation keeps the smallest file whose metric on the calibration runs is <= E, instead of the outputs'
relative L2 error; with --target-ratio, the pack report states the metric of the file written. Built in: "top1", the
fraction of positions of classifier-shaped outputs (2-D, more than one column) whose top class changed.

A metric that counts changed answers moves in steps of one answer: the calibration set must hold enough of them to
resolve the bound. PP-OCRv4's 2-class orientation classifier with top1: 16 runs and a bound of 0 packed to 7.75x with
no answer changed on them and 86% of 50 held-out images kept; 64 runs and a bound of 0.02, 4.56x and 100% of 100.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable

import numpy as np

from ..runtime.errors import EdgepackError, InputError

Metric = Callable[[list, list], float]


def top1(reference: list[dict[str, np.ndarray]], packed: list[dict[str, np.ndarray]]) -> float:
    """The fraction of rows of the classifier-shaped outputs (2-D, more than one column) whose argmax differs; 0.0
    when the model has no such output."""
    changed = total = 0
    for ref, got in zip(reference, packed):
        for name, a in ref.items():
            if a.ndim == 2 and a.shape[1] > 1:
                changed += int(np.count_nonzero(a.argmax(1) != np.asarray(got[name]).argmax(1)))
                total += a.shape[0]
    return changed / total if total else 0.0


BUILT_IN = {"top1": top1}


def load_metric(spec: str) -> Metric:
    """The metric a command line names: a built-in name (top1), MODULE:FUNCTION (an importable module) or
    PATH.py:FUNCTION (a Python file)."""
    if spec in BUILT_IN:
        return BUILT_IN[spec]
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise InputError(f"--metric {spec!r}: give a built-in metric ({', '.join(BUILT_IN)}), MODULE:FUNCTION or "
                         f"FILE.py:FUNCTION")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise InputError(f"--metric {spec!r}: no file {where}")
        loader = importlib.util.spec_from_file_location(f"edgepack_metric_{path.stem}", path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as e:
            raise InputError(f"--metric {spec!r}: {where} could not be imported: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise InputError(f"--metric {spec!r}: module '{where}' could not be imported: {type(e).__name__}: "
                             f"{e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise InputError(f"--metric {spec!r}: '{where}' has no function '{name}'")
    return fn


def check_metric(metric, calib, bits, max_error, target_ratio) -> None:
    """What a metric needs: a callable, a calibration set, and a target it can steer or report on."""
    if metric is None:
        return
    if not callable(metric):
        raise InputError(f"metric must be a callable metric(reference, packed) -> float, found "
                         f"{type(metric).__name__}")
    if calib is None:
        raise InputError("a task metric is measured on the calibration set: give calib (--calib X.npy) with it")
    if max_error is not None and bits is not None:
        raise InputError("--metric with --max-error chooses the bits (the allocation): leave out --bits, or leave "
                         "out --metric to bound the outputs' relative L2 error at those bits")
    if max_error is None and target_ratio is None:
        raise InputError("--metric steers --max-error E (the smallest file whose metric is <= E) or is reported for "
                         "--target-ratio R: give one of them")


def measure(metric: Metric, reference: list[list[np.ndarray]], packed: list[list[np.ndarray]],
            names: list[str]) -> float:
    """metric on an Evaluator's outputs (output by output, run by run) turned into one dict per run; its error
    checked: a finite number >= 0."""
    runs = len(reference[0]) if reference else 0

    def per_run(outs):
        return [{n: outs[j][i] for j, n in enumerate(names)} for i in range(runs)]

    name = getattr(metric, "__name__", type(metric).__name__)
    try:
        value = metric(per_run(reference), per_run(packed))
    except Exception as e:
        raise EdgepackError(f"the task metric '{name}' failed: {type(e).__name__}: {e}") from e
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise EdgepackError(f"the task metric '{name}' returned {value!r}, not a number") from None
    if not math.isfinite(value) or value < 0:
        raise EdgepackError(f"the task metric '{name}' returned {value}: an error must be a finite number >= 0")
    return value
