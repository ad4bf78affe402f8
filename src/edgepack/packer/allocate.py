"""Per-layer codebook bits from a calibration set, without retraining: the smallest error at a whole-file size target
(`pack --target-ratio R`) or the smallest file within an output error bound (`pack --calib X --max-error E`).

1. Scan: every weight tensor is encoded at each candidate width (WIDTHS, most precise first) by the pack's own
   tensor encoder (error-compensated codes when calibration statistics exist), giving its exact bytes in the file
   and its layer-output error e = ||(W - Q) X|| / ||W X|| from the layer's input statistics H = X^T X
   (compensate.output_error; the relative weight error where a layer has no statistics: LSTM/GRU, ConvTranspose).
2. Sensitivity: the whole model runs in onnxruntime (fidelity.Evaluator) on held-out calibration samples with one
   layer at one of its options and the others as in the original, for every option of every layer: the model's
   output error m_l(option) is measured, not extrapolated from a layer-error proxy (a layer's output error predicts
   the model's poorly where the model is not linear in it: at 3 bits a layer may break the model outright, at
   5 bits be harmless). The predicted model error of a setting is sqrt(sum_l m_l^2) (independent errors add in
   squares); m_l is made non-decreasing along each layer's chain (a measured dip is noise). The reported
   sensitivity s = (m / e)^2 at the fewest bits relates the two.
3. Walk: from every layer at its most precise width, each step lowers the one layer whose next width saves the most
   file bytes per unit of predicted squared error added (the greedy path of packer/train/bit_allocation.py, with
   exact bytes and measured sensitivities instead of code bits and test errors).
4. Choose: for a ratio, the first point of the path whose file fits the byte budget; for an error bound, the last
   point whose measured error on the held-out samples is within it (bisection on the path), which the fidelity
   guard then backs off where needed (it raises the precision of the layers that add most error).

5. Refine (asymmetric calibration, GPTAQ-style; when the statistics know their calibration runs): in graph order,
   REFINE_STAGE tensors at a time, the layer inputs are recorded again from the model running the weights chosen so
   far (refined ones before, the allocation's after), and each tensor is re-encoded at its chosen settings aiming at
   the original model's outputs (compensate.corrected_weight under H of the quantised inputs): a layer corrects the
   error its inputs bring instead of passing it on. Kept only if the model's error on the held-out runs drops.
   Off by default (REFINE): on PP-OCRv4 rec at 7x it raised the held-out error from 0.043 to 0.78 (not kept), a
   result not yet explained; refine(...) runs it on request.

Cost: one onnxruntime pass over SENSITIVITY_RUNS samples per option of every layer (about 7 per layer).
Memory: the encodings of the candidate widths (about len(WIDTHS) x the model's fp32 weights) and the statistics
pipeline.pack already holds; one onnxruntime session.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from edgepack.runtime.errors import InputError

from .encode import Encoded, LayerSettings
from .graph import Graph

WIDTHS = (8, 7, 6, 5, 4, 3)  # candidate codebook bits, most precise first
SENSITIVITY_RUNS = 8  # held-out runs the sensitivity scan measures on (the final check uses all held-out runs)
FLOOR = 1e-12  # a step that adds no predicted error still ranks by the bytes it saves
REFINE_STAGE = 4  # tensors re-encoded per recording of the quantised model's layer inputs (1: fully sequential)
REFINE = False  # step 5 of the module docstring (see there why it is off)


@dataclass
class Option:
    """One candidate width of one tensor: its encoding (exact file bytes) and its layer-output error."""

    bits: int
    encoded: Encoded
    error: float
    settings: LayerSettings  # what the tensor is encoded with at this option

    @property
    def label(self) -> str:
        return "int8" if self.settings.encoding == "int8" else str(self.bits)


@dataclass
class Layer:
    tensor: str
    options: list[Option]  # most precise first, strictly fewer bytes each
    sensitivity: float = 1.0
    probe_error: float | None = None  # the model's measured error with this layer alone at its fewest bits
    measured: list[float] | None = None  # the model's error with this layer alone at each option (non-decreasing)
    level: int = 0  # index into options of the chosen width
    naive_error: float | None = None  # layer-output error of nearest-centroid codes at the chosen width

    @property
    def chosen(self) -> Option:
        return self.options[self.level]

    def model_error(self, level: int) -> float:
        """The model's error with this layer alone at options[level]: measured, else sensitivity x layer error."""
        if self.measured is not None:
            return self.measured[level]
        return math.sqrt(self.sensitivity) * self.options[level].error


@dataclass
class Allocation:
    layers: dict[str, Layer]
    steps: list[str]  # the greedy path: the tensor lowered by one width at each step
    fixed_bytes: int  # everything in the file that is not a scanned weight (biases, graph, metadata estimate)
    fp32_bytes: int
    target_ratio: float | None = None
    max_error: float | None = None
    point: int = 0  # how many steps of the path are taken
    measured: object = None  # fidelity.Fidelity of the chosen point on the held-out runs
    held_out: int = 0  # runs the measurements used
    notes: list[str] = field(default_factory=list)
    measure: object = field(default=None, repr=False)  # point -> fidelity.Fidelity on the held-out runs

    def levels_at(self, point: int) -> dict[str, int]:
        lv = {k: 0 for k in self.layers}
        for name in self.steps[:point]:
            lv[name] += 1
        return lv

    def bytes_at(self, point: int) -> int:
        lv = self.levels_at(point)
        return self.fixed_bytes + sum(layer.options[lv[k]].encoded.nbytes for k, layer in self.layers.items())

    def predicted_at(self, point: int) -> float:
        lv = self.levels_at(point)
        return math.sqrt(sum(layer.model_error(lv[k]) ** 2 for k, layer in self.layers.items()))

    def set_point(self, point: int) -> None:
        self.point = point
        for k, lv in self.levels_at(point).items():
            self.layers[k].level = lv

    def settings(self) -> dict[str, int]:
        return {k: layer.chosen.bits for k, layer in self.layers.items()}

    def lines(self) -> list[str]:
        goal = (f"whole-file ratio >= {self.target_ratio:g}" if self.target_ratio is not None
                else f"error <= {self.max_error:g}")
        out = [f"bit allocation ({goal}): {self.point} of {len(self.steps)} steps, predicted error "
               f"{self.predicted_at(self.point):.3g}"
               + (f", measured on {self.held_out} held-out calibration run(s): {self.measured.summary()}"
                  if self.measured is not None else "")]
        head = ["tensor", "bits", "kept", "bytes", "err nearest", "err comp", "sensitivity"]
        rows = []
        for k, layer in self.layers.items():
            o = layer.chosen
            kept = o.encoded.stats.get("kept", o.encoded.reference.size)
            rows.append([k, o.label, f"{kept}", f"{o.encoded.nbytes}",
                         "-" if layer.naive_error is None else f"{layer.naive_error:.4f}", f"{o.error:.4f}",
                         f"{layer.sensitivity:.3g}"])
        cols = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]

        def fmt(r):
            return "  " + "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, cols)))

        out += [fmt(head)] + [fmt(r) for r in rows]
        out += [f"  {n}" for n in self.notes]
        return out


def layer_error(w: np.ndarray, q: np.ndarray, stats) -> float:
    """Relative layer-output error of the decoded weight q against w: from the input statistics when given
    (calibration.LayerStats, oriented as compensate.assign takes them), else the relative weight error."""
    from .compensate import output_error

    rows = w.shape[0]
    w2, q2 = w.reshape(rows, -1), q.reshape(rows, -1)
    if stats is None:
        den = float(np.linalg.norm(w2.astype(np.float64)))
        return float(np.linalg.norm((w2 - q2).astype(np.float64))) / den if den > 0 else 0.0
    if stats.transpose:
        w2, q2 = w2.T, q2.T
    else:  # rows as the statistics see them: LSTM / GRU (dirs, gates x hidden, cols) is dirs x gates x hidden rows
        cols = stats.h.shape[-1]
        w2, q2 = w.reshape(-1, cols), q.reshape(-1, cols)
    return output_error(w2, q2, stats.h)


def scan(graph: Graph, settings: dict[str, tuple[LayerSettings, int]], encoder, stats: dict | None,
         widths: tuple[int, ...] = WIDTHS, progress=None) -> dict[str, Layer]:
    """Every codebook-encoded weight at each width (with a float16 codebook where the weights fit float16: half the
    table bytes, which small layers feel), at each width again with per-row scales where the settings leave them
    to the encoder ("auto": its weight-error test declines scales that lower the output error, e.g. on ddddocr's
    8210-class CTC head at 5 bits, 79% -> 88% of held-out strings (94% with act-order) for 15% more bytes, fewer than 6 bits
    without them), and as per-row int8: its options, most precise first, each smaller in the
    file and with a larger layer error than the one before (the Pareto chain; an option that another beats in
    both is left out). Tensors set to a dense, float16 or int8 encoding by the user keep it and are not scanned."""
    from .encode import fits_float16

    stats = stats or {}
    layers: dict[str, Layer] = {}
    names = [k for k, (s, _) in settings.items() if s.encoding in ("auto", "codebook", "sparse_codebook")]
    for name in (progress(names) if progress else names):
        s, dbits = settings[name]
        w = graph.initializers[name]
        half = "float16" if fits_float16(w) else s.codebook_dtype
        tries = [(8, dataclasses.replace(s, encoding="int8"))] if s.encoding == "auto" else []
        tries += [(b, dataclasses.replace(s, bits=b, codebook_dtype=half)) for b in widths]
        if s.channel_scales == "auto" and w.ndim >= 2 and w.shape[0] > 1:  # per-row scales, where they pay
            tries += [(b, dataclasses.replace(s, bits=b, codebook_dtype=half, channel_scales=True)) for b in widths]
        opts: list[Option] = []
        for b, s2 in tries:
            e = encoder(name, s2, dbits)
            if e.encoding["type"] == "dense":
                continue  # compression does not pay at this width
            opts.append(Option(b, e, layer_error(w, e.reference, stats.get(name)), s2))
        chain: list[Option] = []  # from the smallest up: keep an option only if it beats every smaller one's error
        for o in sorted(opts, key=lambda o: (o.encoded.nbytes, o.error)):
            if not chain or o.error < chain[-1].error:
                chain.append(o)
        if chain:
            layers[name] = Layer(name, chain[::-1])
    return layers


def measure_sensitivity(graph: Graph, layers: dict[str, Layer], evaluator, progress=None) -> None:
    """The model's error with each layer alone at each of its options (the others as in the original), made
    non-decreasing along the chain; s_l = (error at the fewest bits / layer error there)^2 for the report."""
    items = list(layers.items())
    for name, layer in (progress(items) if progress else items):
        if len(layer.options) == 1:
            layer.sensitivity, layer.measured = 0.0, [0.0]
            continue
        m = [evaluator.measure({name: o.encoded.reference}).rel_l2 for o in layer.options]
        m = [v if math.isfinite(v) else 1e6 for v in m]  # NaN or inf outputs: this layer must not go that low
        layer.measured = list(np.maximum.accumulate(m))
        layer.probe_error = m[-1]
        low = layer.options[-1]
        layer.sensitivity = (m[-1] / low.error) ** 2 if low.error > 0 else 0.0


def greedy_path(layers: dict[str, Layer]) -> list[str]:
    """From every layer at its most precise option to every layer at its fewest bits: each step lowers the layer
    whose next option saves the most bytes per predicted squared model error added (Layer.model_error; ties: the
    order of the layers)."""
    level = {k: 0 for k in layers}
    steps: list[str] = []
    while True:
        best, best_score = None, -1.0
        for k, layer in layers.items():
            i = level[k]
            if i + 1 >= len(layer.options):
                continue
            a, b = layer.options[i], layer.options[i + 1]
            saved = a.encoded.nbytes - b.encoded.nbytes
            added = layer.model_error(i + 1) ** 2 - layer.model_error(i) ** 2
            score = saved / max(added, FLOOR)
            if score > best_score:
                best, best_score = k, score
        if best is None:
            return steps
        level[best] += 1
        steps.append(best)


def refine(graph: Graph, alloc: Allocation, settings: dict[str, tuple[LayerSettings, int]], stats, measure,
           stage: int = REFINE_STAGE, progress=None) -> None:
    """Step 5 of the module docstring, on the chosen point: replaces the chosen options' encodings (and errors,
    still against the original statistics) when the measured model error drops; a note says what it did."""
    import copy

    from .calibration import layer_statistics
    from .compensate import corrected_weight
    from .pipeline import tensor_encoder, weight_tensors

    batches = getattr(stats, "batches", None)
    if not batches:
        return
    layers = alloc.layers
    order = [t for n in graph.nodes for t in n.inputs[1:3] if t in layers and t in stats]
    order = list(dict.fromkeys(order))
    current = {k: layer.chosen.encoded.reference for k, layer in layers.items()}
    before = measure(current)
    new: dict[str, tuple[object, float]] = {}
    wt = weight_tensors(graph)
    stages = [order[i:i + stage] for i in range(0, len(order), stage)]
    for names in (progress(stages) if progress else stages):
        qstats = layer_statistics(graph, {k: wt[k] for k in names}, batches, quantized=current)
        g2 = copy.copy(graph)
        g2.initializers = dict(graph.initializers)
        for k in names:
            st = qstats.get(k)
            if st is None or st.cross is None:
                continue
            w = graph.initializers[k]
            if st.transpose:
                w2 = w.reshape(w.shape[0], -1).T
                g2.initializers[k] = corrected_weight(w2, st.h, st.cross).T.reshape(w.shape).astype(w.dtype)
            else:
                w2 = w.reshape(-1, st.h.shape[-1])
                g2.initializers[k] = corrected_weight(w2, st.h, st.cross).reshape(w.shape).astype(w.dtype)
        enc = tensor_encoder(g2, qstats)
        for k in names:
            if k not in qstats or qstats[k].cross is None:
                continue
            o = layers[k].chosen
            e = enc(k, o.settings, settings[k][1])
            if e.encoding["type"] == "dense":
                continue
            new[k] = (e, layer_error(graph.initializers[k], e.reference, stats.get(k)))
            current[k] = e.reference
    after = measure(current)
    if after.rel_l2 < before.rel_l2:
        for k, (e, err) in new.items():
            o = layers[k].chosen
            layers[k].options[layers[k].level] = dataclasses.replace(o, encoded=e, error=err)
        alloc.notes.append(f"refined {len(new)} tensor(s) on the quantised model's inputs: held-out error "
                           f"{before.rel_l2:.4g} -> {after.rel_l2:.4g}")
    else:
        alloc.notes.append(f"refinement on the quantised model's inputs not kept: held-out error "
                           f"{before.rel_l2:.4g} -> {after.rel_l2:.4g}")


def split_runs(n: int) -> tuple[list[int], list[int]]:
    """(runs for the layer statistics, held-out runs for the model measurements): a quarter held out (at least one)
    from 4 runs on, the same runs for both below."""
    if n < 4:
        return list(range(n)), list(range(n))
    held = max(1, n // 4)
    return list(range(n - held)), list(range(n - held, n))


def allocate(graph: Graph, settings: dict[str, tuple[LayerSettings, int]], encoder, stats: dict | None,
             held_feeds: dict[str, np.ndarray], *, fixed_bytes: int, fp32_bytes: int,
             target_ratio: float | None = None, max_error: float | None = None, widths: tuple[int, ...] = WIDTHS,
             naive_encoder=None, quiet: bool = True) -> Allocation:
    """Scan, measure sensitivities, walk and choose (module docstring). held_feeds: the held-out calibration runs
    the model is measured on; fixed_bytes: the file's bytes besides the scanned weights."""
    from .fidelity import Evaluator, run_count, take_runs

    if target_ratio is None and max_error is None:
        raise InputError("bit allocation needs a target: --target-ratio R or --max-error E")
    bar = (lambda desc: (lambda items: _bar(items, desc))) if not quiet else (lambda desc: None)
    layers = scan(graph, settings, encoder, stats, widths, bar("bits scan"))
    n_held = run_count(graph, held_feeds)
    sens_feeds = take_runs(graph, held_feeds, list(range(min(n_held, SENSITIVITY_RUNS))))
    ev = Evaluator(graph, sens_feeds, list(layers))
    measure_sensitivity(graph, layers, ev, bar("sensitivity"))
    alloc = Allocation(layers, greedy_path(layers), fixed_bytes, fp32_bytes, target_ratio, max_error,
                       held_out=n_held)
    full = ev if n_held <= SENSITIVITY_RUNS else Evaluator(graph, held_feeds, list(layers))

    def measure(point: int):
        lv = alloc.levels_at(point)
        return full.measure({k: layer.options[lv[k]].encoded.reference for k, layer in layers.items()})

    if target_ratio is not None:
        budget = fp32_bytes / target_ratio
        point = next((i for i in range(len(alloc.steps) + 1) if alloc.bytes_at(i) <= budget), None)
        if point is None:
            point = len(alloc.steps)
            alloc.notes.append(f"ratio {target_ratio:g} not reachable with widths down to {min(widths)} bits: "
                               f"{fp32_bytes / alloc.bytes_at(point):.2f}x at the fewest bits")
    else:
        lo, hi = 0, len(alloc.steps)  # invariant: every point <= lo is assumed within the bound once lo passed
        if measure(0).rel_l2 > max_error:
            point = 0
        else:
            while lo < hi:  # the last point whose measured error is within the bound (errors rise along the path)
                mid = (lo + hi + 1) // 2
                if measure(mid).rel_l2 <= max_error:
                    lo = mid
                else:
                    hi = mid - 1
            point = lo
    alloc.set_point(point)
    if REFINE and stats is not None:
        refine(graph, alloc, settings, stats, full.measure, progress=bar("refine"))
    alloc.measure = measure
    alloc.measured = measure(point)
    if naive_encoder is not None:
        for k, layer in layers.items():
            s, dbits = settings[k]
            q = naive_encoder(k, layer.chosen.settings, dbits).reference
            layer.naive_error = layer_error(graph.initializers[k], q, (stats or {}).get(k))
    return alloc


def _bar(items, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr, leave=False)
