"""Fidelity-guarded packing: measure the packed model's outputs against the original on calibration inputs, and
raise the precision of the layers that cause the error — prune less, more codebook bits, per-channel scales, dense
float16, dense float32 — in rounds: each layer's own error measured once per encoding, the cheapest set of changes
that should bring the error under the bound applied together, the whole calibration set measured after each round
(guard's docstring), until the bound holds."""
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
    per_output: tuple[float, ...] = ()  # every output's relative L2 error, in the graph's output order

    def summary(self) -> str:
        s = f"relative L2 error {self.rel_l2:.3g}"
        return s + (f", top-1 agreement {100 * self.top1:.2f}%" if self.top1 is not None else "")


@dataclass
class Change:
    tensor: str
    what: str
    error_before: float  # the model's error (whole calibration set) before the round that made this change
    error_after: float  # and after it
    bytes_added: int
    round: int = 0


@dataclass
class GuardReport:
    bound: float | None
    before: Fidelity
    after: Fidelity
    changes: list[Change] = field(default_factory=list)
    met: bool = True
    rounds: int = 0  # rounds of changes kept
    seconds: float = 0.0
    model_runs: int = 0  # onnxruntime runs of the model the guard made
    raised: list[str] = field(default_factory=list)  # tensors whose encoding the guard changed

    def lines(self) -> list[str]:
        if self.bound is None:
            out = [f"fidelity on random inputs: {self.after.summary()} (no --max-error: measured only)"]
        else:
            out = [f"fidelity on calibration inputs (bound {self.bound}): before {self.before.summary()}; after "
                   f"{self.after.summary()}"]
        for r in sorted({c.round for c in self.changes}):
            cs = [c for c in self.changes if c.round == r]
            out.append(f"  round {r}: {len(cs)} layer(s) changed, error {cs[0].error_before:.3g} -> "
                       f"{cs[0].error_after:.3g}, {sum(c.bytes_added for c in cs):+d} B")
            out += [f"    {c.tensor}: {c.what} ({c.bytes_added:+d} B)" for c in cs]
        if self.bound is not None and self.changes:
            out.append(f"  {len(self.changes)} change(s) in {self.rounds} round(s), {self.model_runs} model runs, "
                       f"{self.seconds:.1f} s")
        if not self.met:
            out.append(f"  the bound {self.bound} was not reached: relative L2 error {self.after.rel_l2:.4g}")
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
    session; the reference is the same session with the original values, kept run by run, so that a trial may run
    a subset of the calibration runs (`runs`: their indices) and be compared with the same subset."""

    def __init__(self, graph: Graph, feeds: dict[str, np.ndarray], tensors=()):
        self.graph = graph
        self.runs = batches(graph, feeds)
        self.tensors = [t for t in tensors if t in graph.initializers]
        self._session = None
        self.model_runs = 0  # onnxruntime runs so far (the reference's included)
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

    def _run(self, weights: dict[str, np.ndarray], runs: list[int] | None = None) -> list[list[np.ndarray]]:
        """Every output, run by run (float64), over the calibration runs `runs` (all when None)."""
        unknown = [k for k in weights if k not in self.tensors]
        if unknown:
            raise ValueError(f"internal error: the evaluator cannot change tensor(s) {unknown}")
        chosen = self.runs if runs is None else [self.runs[i] for i in runs]
        try:
            if self._session is None:
                self._session = self._make_session()
            extra = {k: np.ascontiguousarray(w, dtype=self.graph.initializers[k].dtype) for k, w in weights.items()}
            outs = [self._session.run(None, {**run, **extra}) for run in chosen]
        except EdgepackError:
            raise
        except Exception as e:  # onnxruntime's own errors: say where they come from
            raise EdgepackError(f"onnxruntime could not run the model on the calibration inputs "
                                f"({len(self.runs)} run(s) of shapes "
                                f"{ {k: list(v.shape) for k, v in self.runs[0].items()} }): {e}") from e
        self.model_runs += len(chosen)
        return [[o[j].astype(np.float64) for o in outs] for j in range(len(outs[0]))]

    def outputs(self, weights: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        """Every output, run by run (float64), with `weights` in place of the originals (self.ref: the originals')."""
        return self._run(weights)

    def _refs(self, runs: list[int] | None) -> list[list[np.ndarray]]:
        return self.ref if runs is None else [[r[i] for i in runs] for r in self.ref]

    def measure(self, weights: dict[str, np.ndarray], runs: list[int] | None = None) -> Fidelity:
        """The error with `weights` in place of the originals: every output's relative L2 error ||y - y_ref|| /
        ||y_ref|| (norms over the runs' values together; NaN / inf outputs are an error of inf), the worst of them,
        and top-1 agreement where an output is classifier-shaped."""
        outs = self._run(weights, runs)
        errs, top1 = [], None
        for ref_runs, got in zip(self._refs(runs), outs):
            errs.append(_rel_l2(ref_runs, got))
            a0 = ref_runs[0]
            if top1 is None and a0.ndim == 2 and a0.shape[1] > 1 and all(a.ndim == 2 for a in ref_runs):
                top1 = float(np.mean(np.concatenate([a.argmax(1) == b.argmax(1) for a, b in zip(ref_runs, got)])))
        return Fidelity(max(errs, default=0.0), top1, tuple(errs))

    def output_errors(self, weights: dict[str, np.ndarray], runs: list[int] | None = None) -> np.ndarray:
        return np.array(self.measure(weights, runs).per_output)


def _rel_l2(ref_runs: list[np.ndarray], runs: list[np.ndarray]) -> float:
    num = math.fsum(float(np.sum(np.square(b - a))) for a, b in zip(ref_runs, runs))
    den = math.fsum(float(np.sum(np.square(a))) for a in ref_runs)
    err = math.sqrt(num) / max(math.sqrt(den), 1e-30) if math.isfinite(num) else math.inf
    return err if math.isfinite(err) else math.inf


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


ATTRIBUTION_RUNS = 4  # calibration runs each layer's own error is measured on (the bound: all of them)
MARGIN = 0.8  # a round aims at this fraction of the bound (the error model is an estimate)
MAX_ROUNDS = 8  # rounds before the remaining lossy layers all go to float32
PLAN_PASSES = 4  # a round's plan is made again while it picks rungs whose own error was estimated, not measured
GIVE_BACK = 2  # rounds that take raised layers back down while the error stays within the bound


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when n <= k)."""
    return list(range(n)) if n <= k else sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def _exact(e: Encoded, w: np.ndarray) -> bool:
    return e.encoding["type"] == "dense" and e.encoding.get("dtype") == w.dtype.name


def _weight_error(w: np.ndarray, q: np.ndarray) -> float:
    d = np.asarray(q, np.float64) - np.asarray(w, np.float64)
    return float(np.sqrt(np.sum(d * d)))


def guard(graph: Graph, encoded: dict[str, Encoded], settings: dict[str, tuple[LayerSettings, int]],
          feeds: dict[str, np.ndarray], bound: float | None, encoder=None, progress=None) -> GuardReport:
    """Raise precision where it pays until the worst output's relative L2 error on the calibration inputs is <= bound
    (None: measure only). `encoded` and `settings` (tensor -> (settings, default bits)) are updated in place. Every
    trial measures the tensor exactly as the rung would write it (the encoder's reference: what the file decodes
    to). encoder(name, settings, default bits) encodes a tensor as the pack does (pipeline.tensor_encoder; plain
    encode_weight when None). progress(line), when given, hears about every round.

    Rounds. Each layer's own error e_l (the model's per-output error with that layer alone at an encoding, the
    others original) is measured once per encoding on ATTRIBUTION_RUNS spread calibration runs. The model's error is
    taken to add up in squares, E^2 = c * sum_l e_l^2, with c calibrated per output from E measured on the whole set
    (interactions, the subset's scale). A round plans the rungs (per-layer precision steps: _upgrades) that bring the
    predicted error under MARGIN x bound, greedily by predicted squared error removed per added byte (a rung's e_l
    estimated from its weight error, ||w_rung - w|| / ||w_now - w|| x e_l, until the plan picks it: then measured,
    and the plan made again); it applies them all and measures the whole calibration set. A round that does not
    lower the error is undone and the next aims lower; after MAX_ROUNDS every layer left lossy goes to float32 (the
    original: error 0). Once within the bound with room to spare, up to GIVE_BACK rounds take raised layers back
    down (the cheaper encodings they had, by bytes saved per predicted error added) while the error, measured on the
    whole set, stays within it. The result reported is the last whole-set measurement, of the weights as written."""
    import time

    t0 = time.perf_counter()
    if encoder is None:
        encoder = lambda name, s2, dbits: encode_weight(graph.initializers[name], s2, dbits)  # noqa: E731
    check_bound(bound)
    ev = Evaluator(graph, feeds, list(settings))
    say = progress or (lambda line: None)

    def current() -> dict[str, np.ndarray]:
        return {name: encoded[name].reference for name in settings}

    if bound is not None:
        _check_reference(graph, ev, bound)
    before = ev.measure(current())
    report = GuardReport(bound, before, before)
    if bound is None or before.rel_l2 <= bound:
        report.seconds, report.model_runs = time.perf_counter() - t0, ev.model_runs
        return report
    sub = _spread(len(ev.runs), ATTRIBUTION_RUNS)
    first = {n: (settings[n][0], encoded[n]) for n in settings}
    rungs: dict[tuple, Encoded | None] = {}
    own: dict[tuple, tuple] = {}  # (tensor, id of its encoding) -> (encoding, per-output error of it alone)

    def encode(name: str, s2: LayerSettings) -> Encoded | None:
        key = (name, repr(s2))
        if key not in rungs:
            rungs[key] = _encode_rung(encoder, name, s2, settings[name][1])
        return rungs[key]

    def own_error(name: str, e: Encoded, measure: bool = True) -> np.ndarray | None:
        """The model's per-output error with this layer alone at encoding e, on the attribution runs (None when
        not measured yet and measure is False)."""
        key = (name, id(e))  # the entry holds e, so its id is not reused while the entry lives
        if key not in own:
            w = graph.initializers[name]
            if _exact(e, w) or np.array_equal(e.reference, w):
                own[key] = (e, np.zeros(len(ev.ref)))
            elif not measure:
                return None
            else:
                own[key] = (e, ev.output_errors({name: e.reference}, sub))
        return own[key][1]

    def estimate(name: str, e2: Encoded, base: Encoded) -> np.ndarray:
        """The layer's own error at e2: measured when it was, else the base encoding's (measured or estimated)
        scaled by the ratio of their weight errors (the first encoding's when the base is exact)."""
        got = own_error(name, e2, measure=False)
        if got is not None:
            return got
        w = graph.initializers[name]
        e_base = own_error(name, base, measure=False)
        if e_base is None or not np.any(e_base):
            base = first[name][1]
            e_base = own_error(name, base)
        w_base = _weight_error(w, base.reference)
        return e_base * (_weight_error(w, e2.reference) / w_base if w_base > 0 else 1.0)

    def up(name: str, s: LayerSettings, base: Encoded) -> list[tuple[str, LayerSettings, Encoded, np.ndarray]]:
        """(what, settings, encoding, the layer's own error there) of each rung above `base` (at settings s; None:
        the tensor's own)."""
        s = settings[name][0] if s is None else s
        out = []
        for what, s2 in _upgrades(s, base, settings[name][1], graph.initializers[name]):
            e2 = encode(name, s2)
            if e2 is not None:
                out.append((what, s2, e2, estimate(name, e2, base)))
        return out

    def down(name: str, s: LayerSettings, base: Encoded) -> list[tuple[str, LayerSettings, Encoded, np.ndarray]]:
        """The encodings cheaper than now that a raised layer can go back to: its first, and the rungs of its first
        ladder."""
        s0, e0 = first[name]
        if encoded[name] is e0:
            return []
        cands = [("back to its first encoding", s0, e0)]
        cands += [(f"back to {what}", s2, e2) for what, s2 in _upgrades(s0, e0, settings[name][1],
                                                                        graph.initializers[name])
                  if (e2 := encode(name, s2)) is not None]
        return [(what, s2, e2, estimate(name, e2, e0)) for what, s2, e2 in cands
                if e2 is not encoded[name] and e2.nbytes < encoded[name].nbytes]

    def plan(planner, names: list[str], errs: np.ndarray, aim: float, options) -> tuple[list, float]:
        """planner's choice with the rungs it picks measured, made again until every picked rung's error is a
        measured one."""
        for _ in range(PLAN_PASSES):
            chosen, predicted = planner({n: own_error(n, encoded[n]) for n in names}, errs, aim, options, encoded)
            fresh = [(n, e2) for n, _, _, e2 in chosen if own_error(n, e2, measure=False) is None]
            if not fresh:
                break
            for n, e2 in fresh:
                own_error(n, e2)
        return chosen, predicted

    def apply(changes: list) -> dict:
        saved = {n: (settings[n], encoded[n]) for n, *_ in changes}
        for name, _, s2, e2 in changes:
            settings[name] = (s2, settings[name][1])
            encoded[name] = e2
        return saved

    def undo(saved: dict) -> None:
        for n, (s_old, e_old) in saved.items():
            settings[n], encoded[n] = s_old, e_old

    def to_float32(names: list[str]) -> list:
        out = []
        for n in names:
            s2 = dataclasses.replace(settings[n][0], encoding="dense")
            out.append((n, "dense float32", s2, encode(n, s2)))
        return out

    fid, errs = before, np.array(before.per_output)
    margin = MARGIN
    for rnd in range(1, MAX_ROUNDS + 2):
        names = [n for n in settings if not _exact(encoded[n], graph.initializers[n])]
        if rnd > MAX_ROUNDS:
            changes, why = to_float32(names), "the last round: every layer left lossy to float32"
        else:
            changes, predicted = plan(_plan, names, errs, margin * bound, up)
            why = f"aiming at {margin * bound:.3g}, predicted {predicted:.3g}"
            if not changes:  # the layers' own errors do not explain the error
                changes, why = to_float32(names), "no layer's own error explains the error: every lossy layer to " \
                                                  "float32"
        if not changes:
            break
        saved = apply(changes)
        new_fid = ev.measure(current())
        added = sum(e2.nbytes - saved[n][1].nbytes for n, _, _, e2 in changes)
        say(f"round {rnd}: {len(changes)} layer(s) raised ({why}), error {fid.rel_l2:.4g} -> {new_fid.rel_l2:.4g}, "
            f"{added:+d} B, {time.perf_counter() - t0:.1f} s")
        if not new_fid.rel_l2 < fid.rel_l2 and rnd <= MAX_ROUNDS:  # no better: undo, aim lower
            undo(saved)
            margin *= 0.5
            continue
        report.changes += [Change(n, what, fid.rel_l2, new_fid.rel_l2, e2.nbytes - saved[n][1].nbytes, rnd)
                           for n, what, _, e2 in changes]
        report.rounds = rnd
        fid, errs = new_fid, np.array(new_fid.per_output)
        if fid.rel_l2 <= bound:
            break
        margin *= 0.8
    rnd = report.rounds
    for _ in range(GIVE_BACK):
        if all(encoded[n] is first[n][1] for n in settings) or fid.rel_l2 > MARGIN * bound:
            break
        changes, predicted = plan(_relax, list(settings), errs, MARGIN * bound, down)
        if not changes:
            break
        saved = apply(changes)
        new_fid = ev.measure(current())
        added = sum(e2.nbytes - saved[n][1].nbytes for n, _, _, e2 in changes)
        kept = new_fid.rel_l2 <= bound
        say(f"round {rnd + 1}: {len(changes)} layer(s) lowered (predicted {predicted:.3g}), error {fid.rel_l2:.4g} -> "
            f"{new_fid.rel_l2:.4g}, {added:+d} B, {time.perf_counter() - t0:.1f} s" + ("" if kept else ": undone"))
        if not kept:
            undo(saved)
            break
        rnd += 1
        report.changes += [Change(n, what, fid.rel_l2, new_fid.rel_l2, e2.nbytes - saved[n][1].nbytes, rnd)
                           for n, what, _, e2 in changes]
        report.rounds = rnd
        fid, errs = new_fid, np.array(new_fid.per_output)
    report.after = fid  # the weights as written, on every calibration run
    report.met = report.after.rel_l2 <= bound
    report.raised = [n for n in settings if encoded[n] is not first[n][1]]
    report.seconds, report.model_runs = time.perf_counter() - t0, ev.model_runs
    return report


def _check_reference(graph: Graph, ev: Evaluator, bound: float) -> None:
    """A relative error needs finite reference outputs: the original's own NaN / inf on a calibration input is an
    error naming the output and the run (no encoding could be measured within the bound)."""
    for j, ref_runs in enumerate(ev.ref):
        for i, a in enumerate(ref_runs):
            if not np.isfinite(a).all():
                raise EdgepackError(f"--max-error {bound}: the original model's output '{graph.outputs[j].name}' is "
                                    f"NaN or inf on calibration run {i}, so no error relative to it can be measured; "
                                    f"give calibration inputs the model is meant for; no file written")


def _budget(sq: dict[str, np.ndarray], errs: np.ndarray, aim: float) -> tuple[np.ndarray, np.ndarray]:
    """(c, budget) per output: E^2 = c * sum_l e_l^2 calibrated on the measured errors, and what sum_l e_l^2 may be
    for E <= aim."""
    total = np.sum(list(sq.values()), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(errs > 0, np.square(errs) / total, 0.0)  # inf where the layers' own errors are all 0
        c = np.nan_to_num(c, nan=np.inf, posinf=np.inf)  # inf / inf: nothing known, aim at 0
        budget = np.where(c > 0, aim * aim / c, np.inf)
    return c, budget


def _predicted(c: np.ndarray, left: np.ndarray) -> float:
    with np.errstate(invalid="ignore"):
        return float(np.max(np.nan_to_num(np.sqrt(c * left), nan=np.inf)))


def _plan(own: dict[str, np.ndarray], errs: np.ndarray, aim: float, options, encoded: dict[str, Encoded]) -> tuple:
    """([(tensor, what, settings, encoding)], predicted error): the rungs that bring the predicted error (guard's
    docstring) of every output under `aim`, chosen greedily by predicted squared error removed (over the outputs
    still above the aim) per added byte. options(tensor, settings, encoding) lists the rungs above that encoding
    (settings None: the tensor's own) with the layer's own error (per output) at each; a tensor's ladder goes on from
    the rung taken."""
    if not own:
        return [], math.inf
    names = list(own)
    sq = {n: np.square(own[n]) for n in names}
    c, budget = _budget(sq, errs, aim)
    pred = {n: sq[n].copy() for n in names}

    def left() -> np.ndarray:
        return np.sum([pred[n] for n in names], axis=0)

    def share(n: str) -> float:  # the largest fraction of an output's budget this layer's own error takes
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(budget > 0, sq[n] / budget, np.where(sq[n] > 0, np.inf, 0.0))
        return float(np.max(np.nan_to_num(r, nan=np.inf)))

    # candidates: the layers with the largest shares, until what the others hold is a quarter of the budget
    shares = {n: share(n) for n in names}
    rest, cands = np.sum(list(sq.values()), axis=0), []
    for n in sorted(names, key=lambda n: -shares[n]):
        if np.all(rest <= 0.25 * budget) or shares[n] == 0:
            break
        cands.append(n)
        with np.errstate(invalid="ignore"):
            rest = rest - sq[n]
    chosen: dict[str, tuple] = {}
    opts = {n: options(n, None, encoded[n]) for n in cands}
    while np.any((now := left()) > budget):
        over = now > budget
        best = None
        for n in cands:
            now_bytes = chosen[n][3].nbytes if n in chosen else encoded[n].nbytes
            for what, s2, e2, est in opts[n]:
                new = np.nan_to_num(np.square(est), nan=np.inf)
                with np.errstate(invalid="ignore"):
                    removed = float(np.sum(np.where(over, pred[n] - new, 0.0)))
                if not removed > 0:  # includes inf - inf: nothing known to be removed
                    continue
                gain = removed / max(1, e2.nbytes - now_bytes)
                if best is None or gain > best[0]:
                    best = (gain, n, (what, s2, e2), new)
        if best is None:
            break
        _, n, (what, s2, e2), new = best
        pred[n] = new
        chosen[n] = (n, _then(chosen[n][1], what) if n in chosen else what, s2, e2)
        opts[n] = options(n, s2, e2)  # the ladder goes on from the rung taken
    return list(chosen.values()), _predicted(c, left())


def _then(done: str, what: str) -> str:
    """The label of a rung taken after `done`: dense rungs stand alone, a step of the same kind extends the last
    ("codebook bits 4 -> 5" then "codebook bits 5 -> 6": "codebook bits 4 -> 6")."""
    if what.startswith("dense "):
        return what
    *head, last = done.split("; ")
    a, b = last.rsplit(" -> ", 1) if " -> " in last else (last, None)
    c, d = what.rsplit(" -> ", 1) if " -> " in what else (what, None)
    if b is not None and d is not None and c == a.rsplit(" ", 1)[0] + " " + b:
        return "; ".join([*head, f"{a} -> {d}"])
    return f"{done}; {what}"


def _relax(own: dict[str, np.ndarray], errs: np.ndarray, aim: float, options, encoded: dict[str, Encoded]) -> tuple:
    """([(tensor, what, settings, encoding)], predicted error): cheaper encodings for these layers while the
    predicted error of every output stays under `aim`, chosen greedily by bytes saved per predicted squared error
    added (relative to each output's budget)."""
    names = list(own)
    sq = {n: np.square(own[n]) for n in names}
    c, budget = _budget(sq, errs, aim)
    if not np.all(np.isfinite(c)):
        return [], math.inf
    pred = {n: sq[n].copy() for n in names}
    opts = {n: o for n in names if (o := options(n, None, encoded[n]))}
    names = list(opts)
    chosen: dict[str, tuple] = {}
    left = np.sum(list(pred.values()), axis=0)
    while True:
        best = None
        for n in names:
            now_bytes = chosen[n][3].nbytes if n in chosen else encoded[n].nbytes
            for what, s2, e2, est in opts[n]:
                saved = now_bytes - e2.nbytes
                new = np.square(est)
                after = left - pred[n] + new
                if saved <= 0 or not np.all(np.isfinite(new)) or np.any(after > budget):
                    continue
                with np.errstate(divide="ignore", invalid="ignore"):
                    cost = float(np.max(np.where(budget > 0, (new - pred[n]) / budget, 0.0)))
                score = saved / max(cost, 1e-12)
                if best is None or score > best[0]:
                    best = (score, n, (what, s2, e2), new)
        if best is None:
            break
        _, n, (what, s2, e2), new = best
        left = left - pred[n] + new
        pred[n] = new
        chosen[n] = (n, what, s2, e2)
    return list(chosen.values()), _predicted(c, left)
