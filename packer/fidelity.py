"""Fidelity-guarded packing: measure the packed model's outputs against the original on calibration inputs, and
raise the precision of the layers that cause the error — prune less, more codebook bits, per-channel scales, dense
float16, dense float32 — choosing at each step the change that removes the most error per added byte, until the
bound holds."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .encode import Encoded, LayerSettings, encode_weight, fits_float16
from .graph import Graph


@dataclass
class Fidelity:
    rel_l2: float  # the worst output's ||y - y_ref|| / ||y_ref||
    top1: float | None  # agreement of argmax on classifier-shaped outputs (2-D, more than one column)

    def summary(self) -> str:
        s = f"relative L2 error {self.rel_l2:.3g}"
        return s + (f", top-1 agreement {100 * self.top1:.2f}%" if self.top1 is not None else "")


@dataclass
class Change:
    tensor: str
    what: str
    error_before: float
    error_after: float
    bytes_added: int


@dataclass
class GuardReport:
    bound: float | None
    before: Fidelity
    after: Fidelity
    changes: list[Change] = field(default_factory=list)
    met: bool = True

    def lines(self) -> list[str]:
        if self.bound is None:
            out = [f"fidelity on random inputs: {self.after.summary()} (no --max-error: measured only)"]
        else:
            out = [f"fidelity on calibration inputs (bound {self.bound}): before {self.before.summary()}; after "
                   f"{self.after.summary()}"]
        for c in self.changes:
            out.append(f"  {c.tensor}: {c.what} (error {c.error_before:.3g} -> {c.error_after:.3g}, "
                       f"+{c.bytes_added} B)")
        if not self.met:
            out.append(f"  the bound {self.bound} was not reached even with every layer at full precision")
        return out


def calibration_inputs(graph: Graph, calib: dict[str, np.ndarray] | np.ndarray | None, samples: int = 16,
                       seed: int = 0) -> dict[str, np.ndarray]:
    if calib is None:
        from .verify import random_inputs

        return random_inputs(graph, samples, seed)
    if isinstance(calib, np.ndarray):
        if len(graph.inputs) != 1:
            raise ValueError("calibration data for a model with several inputs must be a dict / .npz by name")
        return {graph.inputs[0].name: calib.astype(np.float32, copy=False)}
    return {k: np.asarray(v) for k, v in calib.items()}


class Evaluator:
    """Runs the graph with given weights in onnxruntime and compares with the original weights' outputs."""

    def __init__(self, graph: Graph, feeds: dict[str, np.ndarray]):
        self.graph, self.feeds = graph, feeds
        self.ref = self._run({})

    def _run(self, weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        from .onnx_io import graph_to_onnx
        from .verify import session

        return [o.astype(np.float64) for o in session(graph_to_onnx(self.graph, weights)).run(None, self.feeds)]

    def measure(self, weights: dict[str, np.ndarray]) -> Fidelity:
        outs = self._run(weights)
        worst, top1 = 0.0, None
        for a, b in zip(self.ref, outs):
            err = float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30))
            worst = max(worst, err if np.isfinite(err) else np.inf)  # NaN / inf outputs are the worst error
            if a.ndim == 2 and a.shape[1] > 1 and top1 is None:
                top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
        return Fidelity(worst, top1)


def _upgrades(s: LayerSettings, enc: Encoded, default_bits: int) -> list[tuple[str, LayerSettings]]:
    """The next steps up the precision ladder from these settings."""
    kind = enc.encoding["type"]
    out = []
    # prune less: keep twice as many weights (Han's quality threshold halved); under 5% removed, none
    less = None
    if s.quality is not None and s.quality > 0:
        q = s.quality / 2 if s.quality / 2 >= 0.05 else 0.0
        less = (f"prune less: quality {s.quality:g} -> {q:g}", dataclasses.replace(s, quality=q or None, sparsity=0.0))
    elif s.sparsity > 0:
        sp = max(0.0, 1.0 - 2.0 * (1.0 - s.sparsity))
        sp = sp if sp >= 0.05 else 0.0
        less = (f"prune less: sparsity {s.sparsity:g} -> {sp:g}", dataclasses.replace(s, sparsity=sp))
    if less is not None:
        what, s2 = less
        if s2.sparsity == 0 and s2.quality is None and s2.encoding == "sparse_codebook":
            s2 = dataclasses.replace(s2, encoding="auto")  # nothing pruned: CSR has nothing to skip
        out.append((what, s2))
    if kind in ("codebook", "sparse_codebook"):
        bits = s.bits or default_bits
        if bits < 8:
            out.append((f"codebook bits {bits} -> {bits + 1}", dataclasses.replace(s, bits=bits + 1)))
        if not enc.stats.get("row_scales"):
            out.append(("per-channel scales", dataclasses.replace(s, channel_scales=True)))
    if kind not in ("dense",) or enc.encoding.get("dtype") == "float16":
        if not (kind == "dense" and enc.encoding.get("dtype") == "float16") and fits_float16(enc.reference):
            out.append(("dense float16", dataclasses.replace(s, encoding="float16")))
        out.append(("dense float32", dataclasses.replace(s, encoding="dense")))
    return out


def guard(graph: Graph, encoded: dict[str, Encoded], settings: dict[str, tuple[LayerSettings, int]],
          feeds: dict[str, np.ndarray], bound: float | None) -> GuardReport:
    """Raise precision where it pays until the worst output's relative L2 error is <= bound (None: measure only).
    `encoded` and `settings` (tensor -> (settings, default bits)) are updated in place."""
    ev = Evaluator(graph, feeds)

    def current() -> dict[str, np.ndarray]:
        return {name: encoded[name].reference for name in settings}

    before = ev.measure(current())
    report = GuardReport(bound, before, before)
    if bound is None:
        return report
    fid = before
    while fid.rel_l2 > bound:
        best = None
        for name, (s, dbits) in settings.items():
            for what, s2 in _upgrades(s, encoded[name], dbits):
                e2 = encode_weight(graph.initializers[name], s2, dbits)
                trial = current()
                trial[name] = e2.reference
                f2 = ev.measure(trial)
                added = max(1, e2.nbytes - encoded[name].nbytes)
                gain = (fid.rel_l2 - f2.rel_l2) / added
                if best is None or gain > best[0]:
                    best = (gain, name, what, s2, e2, f2, added)
        if best is None or best[0] <= 0:
            # no single next step helps: take the tensor whose full precision helps most
            best = None
            for name, (s, dbits) in settings.items():
                if encoded[name].encoding["type"] == "dense" and encoded[name].encoding["dtype"] == "float32":
                    continue
                s2 = dataclasses.replace(s, encoding="dense")
                e2 = encode_weight(graph.initializers[name], s2, dbits)
                trial = current()
                trial[name] = e2.reference
                f2 = ev.measure(trial)
                if best is None or f2.rel_l2 < best[5].rel_l2:
                    best = (0.0, name, "dense float32", s2, e2, f2, max(1, e2.nbytes - encoded[name].nbytes))
            if best is None:
                report.met = False
                break
        _, name, what, s2, e2, f2, added = best
        report.changes.append(Change(name, what, fid.rel_l2, f2.rel_l2, added))
        settings[name] = (s2, settings[name][1])
        encoded[name] = e2
        fid = f2
    report.after = fid
    return report
