"""Fidelity-guarded packing: measure the packed model's outputs against the original on calibration inputs, and
raise the precision of the layers that cause the error — prune less, more codebook bits, per-channel scales, dense
float16, dense float32 — choosing at each step the change that removes the most error per added byte, until the
bound holds."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from edgepack.runtime.errors import EdgepackError, InputError

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


def check_bound(bound: float | None) -> None:
    """--max-error must be a finite number >= 0 (0: every output exactly as the original computes it)."""
    if bound is None:
        return
    if isinstance(bound, bool) or not isinstance(bound, (int, float, np.floating, np.integer)):
        raise InputError(f"--max-error must be a number, found {bound!r}")
    if not math.isfinite(bound) or bound < 0:
        raise InputError(f"--max-error {bound} is not a relative L2 error: give a finite number >= 0, e.g. 0.01")


def calibration_inputs(graph: Graph, calib: dict[str, np.ndarray] | np.ndarray | None, samples: int = 16,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """The calibration feeds by input name, checked against the graph's inputs (names, dtype kind, rank, fixed
    dimensions, finite values); random inputs of the declared shapes when `calib` is None. An input may hold more
    samples than the model's fixed first dimension takes (a multiple of it), or one more leading axis of samples:
    `batches` splits them into runs the model accepts."""
    if calib is None:
        from .verify import random_inputs

        return random_inputs(graph, samples, seed)
    names = [v.name for v in graph.inputs]
    if isinstance(calib, np.ndarray):
        if len(names) != 1:
            raise InputError(f"calibration data for a model with {len(names)} inputs ({', '.join(names)}) must be "
                             f"an .npz (a dict) by input name, not one array")
        calib = {names[0]: calib}
    if not isinstance(calib, dict):
        raise InputError(f"calibration data must be an array or a dict of arrays by input name, found "
                         f"{type(calib).__name__}")
    missing = [n for n in names if n not in calib]
    extra = [k for k in calib if k not in names]
    if missing or extra:
        raise InputError(f"calibration data: the model's inputs are {names}; missing {missing}, unknown {extra}")
    out = {}
    for v in graph.inputs:
        a = np.asarray(calib[v.name])
        want = np.dtype(v.dtype)
        float_in = want.kind == "f"
        if (a.dtype.kind == "f") != float_in or a.dtype.kind not in "fiub":
            raise InputError(f"calibration input '{v.name}': dtype {a.dtype}, the model takes {v.dtype}")
        if a.size == 0:
            raise InputError(f"calibration input '{v.name}': shape {list(a.shape)} holds no samples (a batch of 0); "
                             f"give at least one")
        if float_in and not np.isfinite(a).all():
            i = int(np.flatnonzero(~np.isfinite(a.reshape(-1)))[0])
            idx = tuple(int(j) for j in np.unravel_index(i, a.shape))
            raise InputError(f"calibration input '{v.name}': element {idx} is {a.reshape(-1)[i]}; calibration "
                             f"inputs must be finite")
        with np.errstate(over="ignore"):
            a = a.astype(want, copy=False)
        if float_in and not np.isfinite(a).all():
            raise InputError(f"calibration input '{v.name}': values beyond {v.dtype}'s range")
        _split_count(v, a)  # the shape check, with the error naming input and dimension
        out[v.name] = a
    counts = {v.name: _split_count(v, out[v.name]) for v in graph.inputs}
    split = {k: n for k, n in counts.items() if n is not None}
    if len(set(split.values())) > 1:
        raise InputError(f"calibration data: the inputs hold different numbers of runs' samples "
                         f"({', '.join(f'{k}: {n}' for k, n in split.items())}); give every input the same count")
    return out


def _split_count(v, a: np.ndarray) -> int | None:
    """How many runs `a` makes for input `v`: None when it matches the declared shape as it is (one run); n when it
    is n samples the model takes one at a time (n x a fixed first dimension, or an extra leading axis of n)."""
    decl = list(v.shape)
    shape = list(a.shape)

    def fixed_ok(dims, decl_dims):
        return all(not isinstance(d, int) or d == s for s, d in zip(dims, decl_dims))

    if len(shape) == len(decl):
        bad = [i for i, (s, d) in enumerate(zip(shape, decl)) if isinstance(d, int) and d != s]
        if not bad:
            return None
        multiple = isinstance(decl[0], int) and decl[0] > 0 and shape[0] % decl[0] == 0
        if bad == [0] and multiple:
            return shape[0] // decl[0]
        i = bad[1] if bad[0] == 0 and multiple else bad[0]
        hint = (f"; dimension 0 may be a multiple of {decl[0]} (samples run {decl[0]} at a time)" if i == 0 else "")
        raise InputError(f"calibration input '{v.name}': dimension {i} is {shape[i]}, the model declares {decl} "
                         f"(shape given {shape}){hint}")
    if len(shape) == len(decl) + 1 and fixed_ok(shape[1:], decl):
        return shape[0]
    raise InputError(f"calibration input '{v.name}': shape {shape} has rank {len(shape)}, the model declares {decl} "
                     f"(rank {len(decl)}; or rank {len(decl) + 1} with a leading axis of samples)")


def _run_part(v, a: np.ndarray, count: int | None, i: int) -> np.ndarray:
    """Run i's part of input v's calibration array (the whole array when it is one run as it is)."""
    if count is None:
        return a
    if a.ndim == len(v.shape) + 1:
        return a[i]
    k = a.shape[0] // count
    return a[i * k:(i + 1) * k]


def run_count(graph: Graph, feeds: dict[str, np.ndarray]) -> int:
    """How many runs `feeds` (checked by calibration_inputs) make."""
    counts = [_split_count(v, feeds[v.name]) for v in graph.inputs]
    return next((c for c in counts if c is not None), 1)


def batches(graph: Graph, feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The runs that `feeds` (checked by calibration_inputs) make: the whole set at once where the model's shapes
    take it (a dynamic batch dimension), else sample by sample (a first dimension fixed, e.g. to 1)."""
    counts = {v.name: _split_count(v, feeds[v.name]) for v in graph.inputs}
    if all(c is None for c in counts.values()):
        return [feeds]
    return [{v.name: _run_part(v, feeds[v.name], counts[v.name], i) for v in graph.inputs}
            for i in range(run_count(graph, feeds))]


def take_runs(graph: Graph, feeds: dict[str, np.ndarray], idx: list[int]) -> dict[str, np.ndarray]:
    """The calibration runs `idx` of checked feeds, as feeds of the same layout (fewer samples)."""
    out = {}
    for v in graph.inputs:
        a = feeds[v.name]
        c = _split_count(v, a)
        if c is None:
            out[v.name] = a
            continue
        parts = [_run_part(v, a, c, i) for i in idx]
        out[v.name] = np.stack(parts) if a.ndim == len(v.shape) + 1 else np.concatenate(parts)
    return out


class Evaluator:
    """Runs the graph with given weights in onnxruntime and compares with the original weights' outputs.

    One session serves every trial: the weight tensors the guard may change are declared graph inputs as well as
    initializers (onnxruntime's overridable initializers), so a trial feeds its weights instead of building a
    session; the reference is the same session with the original values."""

    def __init__(self, graph: Graph, feeds: dict[str, np.ndarray], tensors=()):
        self.graph = graph
        self.runs = batches(graph, feeds)
        self.tensors = [t for t in tensors if t in graph.initializers]
        self._session = None
        self.ref = self._run({})

    def _make_session(self):
        from onnx import helper

        from .onnx_io import graph_to_onnx
        from .verify import session

        model = graph_to_onnx(self.graph)
        for name in self.tensors:
            w = self.graph.initializers[name]
            model.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(w.dtype), list(w.shape)))
        return session(model)

    def _run(self, weights: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        """Every output, run by run (float64)."""
        unknown = [k for k in weights if k not in self.tensors]
        if unknown:
            raise ValueError(f"internal error: the evaluator cannot change tensor(s) {unknown}")
        try:
            if self._session is None:
                self._session = self._make_session()
            extra = {k: np.ascontiguousarray(w, dtype=self.graph.initializers[k].dtype) for k, w in weights.items()}
            outs = [self._session.run(None, {**run, **extra}) for run in self.runs]
        except EdgepackError:
            raise
        except Exception as e:  # onnxruntime's own errors: say where they come from
            raise EdgepackError(f"onnxruntime could not run the model on the calibration inputs "
                                f"({len(self.runs)} run(s) of shapes "
                                f"{ {k: list(v.shape) for k, v in self.runs[0].items()} }): {e}") from e
        return [[o[j].astype(np.float64) for o in outs] for j in range(len(outs[0]))]

    def measure(self, weights: dict[str, np.ndarray]) -> Fidelity:
        outs = self._run(weights)
        worst, top1 = 0.0, None
        for ref_runs, runs in zip(self.ref, outs):
            num = math.fsum(float(np.sum(np.square(b - a))) for a, b in zip(ref_runs, runs))
            den = math.fsum(float(np.sum(np.square(a))) for a in ref_runs)
            err = math.sqrt(num) / max(math.sqrt(den), 1e-30) if math.isfinite(num) else math.inf
            worst = max(worst, err if math.isfinite(err) else math.inf)  # NaN / inf outputs are the worst error
            a0 = ref_runs[0]
            if top1 is None and a0.ndim == 2 and a0.shape[1] > 1 and all(a.ndim == 2 for a in ref_runs):
                top1 = float(np.mean(np.concatenate([a.argmax(1) == b.argmax(1) for a, b in zip(ref_runs, runs)])))
        return Fidelity(worst, top1)


def _upgrades(s: LayerSettings, enc: Encoded, default_bits: int, w: np.ndarray) -> list[tuple[str, LayerSettings]]:
    """The next steps up the precision ladder from these settings, for the original weight `w` (what every rung
    encodes: a rung that cannot hold `w` is not offered)."""
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
        if not (kind == "dense" and enc.encoding.get("dtype") == "float16") and fits_float16(w):
            out.append(("dense float16", dataclasses.replace(s, encoding="float16")))
        out.append(("dense float32", dataclasses.replace(s, encoding="dense")))
    return out


def _encode_rung(encoder, name: str, s2: LayerSettings, dbits: int) -> Encoded | None:
    """The tensor encoded at this rung, or None when the rung cannot hold it (e.g. float16 and a value out of its
    range): such a rung is skipped, the ladder goes on with the others."""
    try:
        return encoder(name, s2, dbits)
    except ValueError:
        return None


def guard(graph: Graph, encoded: dict[str, Encoded], settings: dict[str, tuple[LayerSettings, int]],
          feeds: dict[str, np.ndarray], bound: float | None, encoder=None) -> GuardReport:
    """Raise precision where it pays until the worst output's relative L2 error is <= bound (None: measure only).
    `encoded` and `settings` (tensor -> (settings, default bits)) are updated in place. Every trial measures the
    tensor exactly as the rung would write it (the encoder's reference: what the file decodes to). encoder(name,
    settings, default bits) encodes a tensor as the pack does (pipeline.tensor_encoder; plain encode_weight when
    None)."""
    if encoder is None:
        encoder = lambda name, s2, dbits: encode_weight(graph.initializers[name], s2, dbits)  # noqa: E731
    check_bound(bound)
    ev = Evaluator(graph, feeds, list(settings))

    def current() -> dict[str, np.ndarray]:
        return {name: encoded[name].reference for name in settings}

    before = ev.measure(current())
    report = GuardReport(bound, before, before)
    if bound is None:
        return report
    fid = before
    rungs: dict[tuple, Encoded | None] = {}  # (tensor, settings) -> its encoding: a step changes one tensor only

    def encode(name: str, s2: LayerSettings, dbits: int) -> Encoded | None:
        key = (name, dbits, repr(s2))
        if key not in rungs:
            rungs[key] = _encode_rung(encoder, name, s2, dbits)
        return rungs[key]

    # Lazy greedy: every rung's gain (error removed per added byte) is measured once against the model as it was
    # then; a step re-measures the rung with the best recorded gain against the model as it is now and takes it when
    # its fresh gain still beats every other recorded gain (gains shrink as the error does, so a recorded gain is
    # about an upper bound), else records the fresh gain and tries the next best. The rungs of a changed tensor are
    # replaced by the next ones up its ladder, measured before they compete. A step thus measures a few rungs, not
    # all (a full scan of a 47-weight model at 16 samples takes ~40 s), except when the best gain falls by half
    # from the step before: then it measures them all, as gains that rise (layers that interact) show there.
    stale: dict[tuple[str, str], list] = {}  # (tensor, what) -> [recorded gain, settings, encoding, fidelity, step]

    def offer(name: str) -> None:
        for key in [k for k in stale if k[0] == name]:
            del stale[key]
        s, dbits = settings[name]
        for what, s2 in _upgrades(s, encoded[name], dbits, graph.initializers[name]):
            e2 = encode(name, s2, dbits)
            if e2 is not None:
                stale[(name, what)] = [math.inf, s2, e2, None, -1]

    def trial_of(name: str, e2: Encoded, step: int, entry: list) -> float:
        trial = current()
        trial[name] = e2.reference
        f2 = ev.measure(trial)
        added = max(1, e2.nbytes - encoded[name].nbytes)
        gain = (fid.rel_l2 - f2.rel_l2) / added
        entry[0], entry[3], entry[4] = gain if math.isfinite(gain) else -math.inf, f2, step
        return entry[0]

    for name in settings:
        offer(name)
    step, last_gain = 0, math.inf
    while fid.rel_l2 > bound:
        step += 1
        best, rescanned = None, False
        while stale:
            key = max(stale, key=lambda k: stale[k][0])
            entry = stale[key]
            if entry[4] != step:
                trial_of(key[0], entry[2], step, entry)
            others = max((v[0] for k, v in stale.items() if k != key), default=-math.inf)
            if entry[4] == step and entry[0] >= others:
                if entry[0] < 0.5 * last_gain and not rescanned:
                    # the best gain fell sharply: recorded gains may be too low too (fixing one layer can make
                    # another's fix pay more), so this step measures every rung afresh
                    rescanned = True
                    for k, v in stale.items():
                        if v[4] != step:
                            trial_of(k[0], v[2], step, v)
                    continue
                last_gain = entry[0]
                name, what = key
                best = (entry[0], name, what, entry[1], entry[2], entry[3],
                        max(1, entry[2].nbytes - encoded[name].nbytes))
                break
        if best is None or best[0] <= 0:
            # no single next step helps: take the tensor whose full precision helps most
            best = None
            for name, (s, dbits) in settings.items():
                if encoded[name].encoding["type"] == "dense" and encoded[name].encoding["dtype"] == "float32":
                    continue
                s2 = dataclasses.replace(s, encoding="dense")
                e2 = encode(name, s2, dbits)
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
        offer(name)
    report.after = fid
    return report
