"""The post-training pipeline: ONNX -> IR -> per-tensor encodings -> file, then the file read back and checked
against the encoder's own reference bit for bit. `pack()` is the Python API behind `edgepack pack`."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from edgepack.runtime import constants as C
from edgepack.runtime.errors import EdgepackError, FormatError, InputError, UnsupportedError
from edgepack.runtime.model import static_shapes_hint
from edgepack.runtime.summary import format_table, layer_table
from edgepack.runtime.tables import read_table_file

from edgepack import __version__
from .encode import Encoded, LayerSettings, default_bits, dense, encode_weight
from .graph import Graph
from .metric import check_metric
from .writer import build_file, format_minor, write_packed

WEIGHT_OPS = C.WEIGHT_INPUTS  # op -> the input indices that hold its compressible weights
WARN_ERROR = 0.1  # relative L2 error on random inputs above which pack warns


@dataclass
class PackReport:
    path: str
    info: dict
    settings: dict
    references: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    fidelity: object = None  # packer.fidelity.GuardReport
    warnings: list[str] = field(default_factory=list)
    allocation: object = None  # packer.allocate.Allocation (--target-ratio, or --max-error with --calib)
    task_error: tuple | None = None  # (metric name, its value on the calibration runs, runs) when a metric was given

    @property
    def total_bytes(self) -> int:
        return self.info["total_bytes"]

    @property
    def ratio(self) -> float:
        return self.info["ratio"]

    def table(self) -> str:
        lines = [format_table(self.info)]
        if self.allocation is not None:
            lines += self.allocation.lines()
        if self.fidelity is not None:
            lines += self.fidelity.lines()
        if self.task_error is not None:
            name, value, runs = self.task_error
            lines.append(f"task metric '{name}' of the file on the {runs} calibration run(s): {value:.4g}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def load_config(path: str | os.PathLike | None) -> dict:
    """Per-layer settings: {"default": {...}, "layers": {tensor or node name: {...}}} as JSON or TOML; the shape
    checked here, the settings themselves by LayerSettings.from_dict, the layer names against the graph by
    check_layer_names."""
    if path is None:
        return {}
    return check_config(read_table_file(path), os.fspath(path))


def check_config(cfg, where: str = "config") -> dict:
    """The config's shape: a table with 'default' (a table of settings) and/or 'layers' (a table of tables)."""
    if not isinstance(cfg, dict):
        raise InputError(f"{where}: a config must be a table with keys 'default' and/or 'layers', found "
                         f"{type(cfg).__name__}")
    extra = [k for k in cfg if k not in ("default", "layers")]
    if extra:
        raise InputError(f"{where}: unknown key(s) {', '.join(repr(k) for k in extra)}; a config has 'default' "
                         f"(settings for every layer) and 'layers' (settings by tensor or node name)")
    if not isinstance(cfg.get("default", {}), dict):
        raise InputError(f"{where}: 'default' must be a table of settings (e.g. default = {{bits = 5}}), found "
                         f"{cfg['default']!r}")
    layers = cfg.get("layers", {})
    if not isinstance(layers, dict):
        raise InputError(f"{where}: 'layers' must be a table of layer name -> settings, found {layers!r}")
    for name, v in layers.items():
        if not isinstance(v, dict):
            raise InputError(f"{where}: layers.'{name}' must be a table of settings (e.g. {{bits = 4}}), found {v!r}")
    LayerSettings.from_dict(cfg.get("default", {}), f"{where}: default")  # types and ranges, before any work
    return cfg


def check_layer_names(cfg: dict, weights: dict[str, tuple[str, str]], where: str = "config") -> None:
    """Every name under 'layers' is a compressible weight tensor or the node that reads it; a misspelt one is an
    error naming the closest real names (silently ignoring it would pack that layer with the defaults)."""
    import difflib

    real = list(weights) + [node for _, node in weights.values()]
    unknown = [k for k in cfg.get("layers", {}) if k not in real]
    if not unknown:
        return
    parts = []
    for k in unknown:
        close = difflib.get_close_matches(k, real, 3, 0.5)
        parts.append(f"'{k}'" + (f" (closest: {', '.join(repr(c) for c in close)})" if close else ""))
    listed = ", ".join(repr(n) for n in list(weights)[:8]) + (", ..." if len(weights) > 8 else "")
    raise InputError(f"{where}: layers {', '.join(parts)} name no compressible weight of this model; layers are "
                     f"named by weight tensor or by node (Conv, Gemm, MatMul, ConvTranspose, LSTM, GRU); the weight "
                     f"tensors are {listed or 'none'} (edgepack info on a packed file lists them)")


def weight_tensors(graph: Graph) -> dict[str, str]:
    """Tensor name -> (op, node name) of every constant float weight of WEIGHT_OPS (a Conv/Gemm/MatMul/ConvTranspose
    weight, an LSTM/GRU's W and R)."""
    found = {}
    for n in graph.nodes:
        for idx in WEIGHT_OPS.get(n.op, ()):
            if len(n.inputs) > idx and n.inputs[idx] in graph.initializers:
                w = graph.initializers[n.inputs[idx]]
                if w.dtype == np.float32 and w.ndim >= 2:
                    found.setdefault(n.inputs[idx], (n.op, n.name))
    return found


def settings_for(name: str, node: str, cfg: dict, overrides: dict) -> LayerSettings:
    cfg = check_config(cfg) if cfg else {}
    d = dict(cfg.get("default", {}))
    layers = cfg.get("layers", {})
    d.update(layers.get(node, {}))
    d.update(layers.get(name, {}))
    d.update({k: v for k, v in overrides.items() if v is not None})
    return LayerSettings.from_dict(d, f"settings of '{name}'")


def plan_settings(graph: Graph, cfg: dict, overrides: dict) -> dict[str, tuple[LayerSettings, int]]:
    """Settings of every compressible weight: tensor name -> (settings, default codebook bits of its op)."""
    weights = weight_tensors(graph)
    check_layer_names(check_config(cfg) if cfg else {}, weights)
    return {name: (settings_for(name, node, cfg, overrides), default_bits(op))
            for name, (op, node) in weights.items()}


def tensor_encoder(graph: Graph, stats: dict | None = None):
    """The one way a weight of this graph is encoded: encoder(name, settings, default bits) -> Encoded, with its
    rows as the format lays them out (row_dims) and, when calibration statistics are given (calibration.LayerStats
    by tensor name), codebook codes chosen with error compensation. The first encoding and every rung the fidelity
    guard tries go through it."""
    row_dims = {name: C.WEIGHT_ROW_DIMS.get(op, 1) for name, (op, _) in weight_tensors(graph).items()}
    stats = stats or {}

    def encoder(name: str, s: LayerSettings, bits: int) -> Encoded:
        w = graph.initializers[name]
        if s.encoding not in ("dense", "float16") and not np.isfinite(w).all():
            bad = np.flatnonzero(~np.isfinite(w.reshape(-1)))
            at = tuple(int(i) for i in np.unravel_index(int(bad[0]), w.shape))
            raise InputError(f"weight '{name}' holds {bad.size} NaN/inf value(s) (the first at {at}: "
                             f"{w.reshape(-1)[bad[0]]}), which pruning and codebooks cannot represent; fix the model, "
                             f"or keep this tensor as it is with a config: layers.'{name}'.encoding = \"dense\"")
        return encode_rows(graph.initializers[name], s, bits, row_dims.get(name, 1), stats.get(name))

    return encoder


def encode_tensors(graph: Graph, settings: dict[str, tuple[LayerSettings, int]], progress=None,
                   encoder=None) -> dict[str, Encoded]:
    """Every initializer's encoding: weights by their settings (through `encoder`, tensor_encoder(graph) when
    None), everything else dense."""
    encoder = encoder or tensor_encoder(graph)
    encoded: dict[str, Encoded] = {}
    items = list(graph.initializers.items())
    for name, value in (progress(items) if progress else items):
        if name in settings:
            s, bits = settings[name]
            encoded[name] = encoder(name, s, bits)
        elif value.dtype.name in C.DTYPES:
            encoded[name] = dense(value)
        else:
            raise FormatError(f"initializer '{name}': dtype {value.dtype} cannot be stored in format v1")
    return encoded


def encode_rows(w: np.ndarray, s: LayerSettings, bits: int, row_dims: int = 1, stats=None) -> Encoded:
    """encode_weight on the matrix whose rows are the first `row_dims` dimensions (spec section 6: `row_dims`), so
    that an LSTM's row scales and chunks follow its gate rows rather than its directions."""
    if row_dims <= 1 or w.ndim <= row_dims:
        return encode_weight(w, s, bits, stats=stats)
    e = encode_weight(w.reshape(int(np.prod(w.shape[:row_dims])), -1), s, bits, stats=stats)
    e.reference = e.reference.reshape(w.shape)
    if e.encoding["type"] in (C.ENC_INT8, C.ENC_CODEBOOK, C.ENC_SPARSE):
        e.encoding["row_dims"] = row_dims
    return e


def graph_doc(graph: Graph, encoded: dict[str, Encoded]) -> dict:
    """The graph section (arrays inline where buffers go)."""
    tensors = [{"name": name, "dtype": graph.initializers[name].dtype.name,
                "shape": [int(d) for d in graph.initializers[name].shape], "encoding": e.encoding}
               for name, e in encoded.items()]
    for n in graph.nodes:
        for k, (kind, _) in n.attrs.items():
            if kind == "tensor":
                raise UnsupportedError(f"node '{n.name}' ({n.op}): attribute '{k}' holds a tensor, which format v1 "
                                       f"cannot store; give static input shapes (--input-shape) so that the node is "
                                       f"folded into a constant")
    taken = set(graph.initializers) | {v.name for v in graph.inputs} | {o for n in graph.nodes for o in n.outputs}
    nodes = [{"op": n.op, "name": n.name, "inputs": n.inputs, "outputs": _file_outputs(n, taken),
              "attrs": {k: [kind, v] for k, (kind, v) in n.attrs.items()}} for n in graph.nodes]
    # an output whose rank even shape inference could not tell (shapes._set_output_shapes) is written as rank 0, as
    # before: the runtime infers every output's shape itself and does not read this one
    vi = lambda v: {"name": v.name, "dtype": v.dtype, "shape": [] if v.shape is None else list(v.shape)}  # noqa: E731
    return {"name": graph.name, "opset": graph.opset, "inputs": [vi(v) for v in graph.inputs],
            "outputs": [vi(v) for v in graph.outputs], "nodes": nodes, "tensors": tensors}


def _file_outputs(n, taken: set) -> list[str]:
    """A node's outputs as format v1 holds them (every output named): trailing omitted optional outputs ('') dropped,
    an omitted one before a present one (an LSTM's ['', 'Y_h']) given an unused name, which the runtime computes and
    nobody reads."""
    outs = list(n.outputs)
    while outs and not outs[-1]:
        outs.pop()
    for j, o in enumerate(outs):
        if not o:
            name, k = f"{n.name}:omitted{j}", 0
            while name in taken:
                k += 1
                name = f"{n.name}:omitted{j}_{k}"
            taken.add(name)
            outs[j] = name
    return outs


def pack(model_path: str | os.PathLike, out_path: str | os.PathLike, *, sparsity: float | None = None,
         bits: int | None = None, config: str | os.PathLike | dict | None = None, quiet: bool = True,
         input_shapes: dict | list[str] | None = None, input_values: dict | list[str] | None = None,
         low_rank: float | dict | None = None,
         max_error: float | None = None, calib: dict | np.ndarray | None = None, check_fidelity: bool = True,
         compensate: bool | None = None, target_ratio: float | None = None, bias_correction: bool = True,
         metric=None, **overrides) -> PackReport:
    """Pack an ONNX model into an edgepack file; return the report (per-layer table, sizes, ratio).
    input_shapes ({name: dims} or ["NAME=D0,D1,..."]) fixes input shapes (packer/shapes.py); input_values
    ({name: value} or ["NAME=V"], e.g. {"sr": 16000}) makes inputs that are fixed in deployment constants, so that an
    If branching on them is replaced by its branch (packer/control_flow.py); constants are folded either way.
    low_rank (energy, or {tensor: rank or energy}) factorises layers first (packer/lowrank.py).
    max_error: raise the precision of the layers that cause the error until the worst output's relative L2 error on
    `calib` (random inputs of the declared shapes when None) is at most this (packer/fidelity.py); without it the
    error on random inputs is still measured and a warning added when it is large (check_fidelity=False skips).
    compensate (default: on when `calib` is given): choose every codebook's codes with error compensation from the
    calibration set's layer inputs (packer/compensate.py, GPTQ-style) instead of nearest-centroid.
    target_ratio: per-layer codebook bits chosen for the smallest error at a whole-file ratio >= target_ratio
    (packer/allocate.py: layer errors from the calibration statistics, sensitivities measured on held-out
    calibration runs); with `calib` and `max_error` but no bits given, the same allocation chooses the smallest file
    within max_error and the guard backs off from there.
    bias_correction: on the data-free path (no calibration statistics, no max_error), every Conv bias whose input
    traces to a batch norm of the original gets the mean shift its quantised weight causes removed
    (packer/bias_correction.py); the fidelity numbers are measured before it.
    metric: a task metric, metric(reference runs, packed runs) -> error (packer/metric.py), with calib: with
    max_error (and no bits) the allocation keeps the smallest file whose metric on the calibration runs is <=
    max_error; with target_ratio it is measured and reported (PackReport.task_error)."""
    warnings: list[str] = []
    from .onnx_io import file_sha256, load_onnx
    from .shapes import check_storable, fold_constants, parse_input_shapes, parse_input_values, specialise

    graph = load_onnx(model_path)
    shapes = parse_input_shapes(input_shapes)
    values = parse_input_values(input_values)
    graph = specialise(graph, shapes, values) if shapes or values else fold_constants(graph)
    check_storable(graph)
    factorised = None
    if low_rank is not None:
        from .lowrank import factorise

        graph, factorised = factorise(graph, low_rank)
    _warn_dynamic(graph, warnings)
    cfg = config if isinstance(config, dict) else load_config(config)
    over = {"sparsity": sparsity, "bits": bits, **overrides}
    progress = None if quiet else _progress
    settings = plan_settings(graph, cfg, over)
    _check_ratio(target_ratio)
    check_metric(metric, calib, bits if bits is not None else cfg.get("default", {}).get("bits"), max_error,
                 target_ratio)
    allocating = target_ratio is not None or (max_error is not None and calib is not None and bits is None
                                              and "bits" not in cfg.get("default", {}))
    stats = None
    fit_feeds = held_feeds = all_feeds = None
    if allocating:  # a quarter of the calibration runs held out for the model measurements
        from .allocate import split_runs
        from .fidelity import run_count, take_runs
        from .fidelity import calibration_inputs

        all_feeds = calibration_inputs(graph, calib)
        fit, held = split_runs(run_count(graph, all_feeds))
        fit_feeds, held_feeds = take_runs(graph, all_feeds, fit), take_runs(graph, all_feeds, held)
    if compensate or (compensate is None and calib is not None):
        if calib is None:
            raise InputError("compensation needs a calibration set: give calib (--calib X.npy)")
        from .calibration import layer_statistics
        from .fidelity import batches, calibration_inputs

        fit = fit_feeds if fit_feeds is not None else calibration_inputs(graph, calib)
        stats = layer_statistics(graph, weight_tensors(graph), batches(graph, fit),
                                 progress=None if quiet else _progress_batches)
    encoder = tensor_encoder(graph, stats)
    source_sha256 = file_sha256(model_path)

    def metadata(doc: dict, allocation=None, corrected: int = 0, fidelity=None) -> dict:
        """The file's metadata section (what the allocation's size estimates build too)."""
        meta = {
            "producer": f"edgepack {__version__}",
            "format_version": f"{C.VERSION_MAJOR}.{format_minor(doc)}",
            "source": {"file": os.path.basename(os.fspath(model_path)), "sha256": source_sha256,
                       "params": graph.source_params, "fp32_bytes": 4 * graph.source_params},
            "settings": {"cli": {k: v for k, v in over.items() if v is not None}, "config": cfg},
        }
        if corrected:
            meta["settings"]["bias_correction"] = {"corrected": corrected}
        if shapes:
            meta["settings"]["input_shapes"] = shapes
        if values:
            meta["settings"]["input_values"] = {k: np.asarray(v).tolist() for k, v in values.items()}
        if factorised is not None:
            meta["settings"]["low_rank"] = factorised
        if allocation is not None:
            meta["settings"]["allocation"] = {"steps": allocation.point, "predicted_error": round(
                allocation.predicted_at(allocation.point), 6)}
        if fidelity is not None and (fidelity.changes or max_error is not None):
            meta["settings"]["fidelity"] = {"max_error": max_error, "changes": [
                {"tensor": c.tensor, "change": c.what} for c in fidelity.changes]}
            if max_error is not None:  # what the guard measured on the calibration inputs, before and after its changes
                num = lambda x: round(x, 6) if math.isfinite(x) else None  # noqa: E731 - NaN / inf outputs: null
                meta["settings"]["fidelity"].update(
                    error_before=num(fidelity.before.rel_l2), error_after=num(fidelity.after.rel_l2),
                    raised=len(fidelity.raised), bytes_added=sum(c.bytes_added for c in fidelity.changes))
        return meta

    allocation = None
    if allocating:
        allocation, encoded = _allocate(graph, settings, encoder, stats, held_feeds, target_ratio, max_error, quiet,
                                        metadata, metric, all_feeds)
    else:
        encoded = encode_tensors(graph, settings, progress, encoder)
    fidelity = None
    if check_fidelity or max_error is not None:
        from .fidelity import calibration_inputs, guard

        feeds = calibration_inputs(graph, calib)
        try:
            # with a metric the allocation has bounded it; the guard measures the outputs' error for the report
            fidelity = guard(graph, encoded, settings, feeds, None if metric is not None else max_error, encoder,
                             progress=None if quiet else (lambda line: print(f"fidelity: {line}", file=sys.stderr)))
        except Exception as e:  # the check must not stop a pack that onnxruntime cannot evaluate
            if max_error is not None:
                raise
            warnings.append(f"could not measure the packed model's error with onnxruntime ({e})")
        if fidelity is not None and max_error is None and fidelity.after.rel_l2 > WARN_ERROR:
            warnings.append(f"the packed model's outputs differ from the original's by {fidelity.after.summary()} "
                            f"on random inputs; consider fewer pruned weights, more bits, or --max-error")
        if fidelity is not None and not fidelity.met:  # before anything is written: out_path stays as it was
            raise EdgepackError(f"--max-error {max_error} could not be met: {fidelity.after.summary()} on the "
                                f"calibration inputs after {fidelity.rounds} round(s) of raised precision; no file "
                                f"written")
    corrected = 0
    if bias_correction and stats is None and max_error is None:
        corrected = _correct_biases(graph, encoded, settings, model_path)
    task = None
    if metric is not None:  # of the weights as written
        task = _task_error(graph, encoded, all_feeds, metric)
        if max_error is not None and task[1] > max_error:  # before anything is written
            raise EdgepackError(f"--max-error {max_error} could not be met on the task metric '{task[0]}': "
                                f"{task[1]:.4g} on the {task[2]} calibration run(s) with every layer at its widest "
                                f"codebook; no file written (a larger bound, or --bits 8 without --metric)")
    doc = graph_doc(graph, encoded)
    meta = metadata(doc, allocation, corrected, fidelity)
    data = build_file(meta, doc)
    packed = write_packed(out_path, data, model_path)  # checked as the loader does before it replaces anything
    references = {name: e.reference for name, e in encoded.items()}
    for name, w in packed.weights.items():
        got = np.asarray(w.to_dense())
        if got.shape != references[name].shape or not np.array_equal(got, references[name], equal_nan=True):
            raise RuntimeError(f"internal error: tensor '{name}' does not decode to what was encoded")
    info = layer_table(packed)
    if target_ratio is not None and info["ratio"] < target_ratio:
        warnings.append(f"--target-ratio {target_ratio:g} not reached: {info['ratio']:.2f}x"
                        + (" (the fidelity guard raised precision for --max-error)" if fidelity and fidelity.changes
                           else " at the fewest bits the allocation tries"))
    return PackReport(os.fspath(out_path), info, meta["settings"], references, fidelity, warnings, allocation, task)


def _task_error(graph: Graph, encoded: dict[str, Encoded], feeds: dict, metric) -> tuple:
    """(metric name, the metric of the encoded tensors on the calibration runs `feeds`, runs)."""
    from .fidelity import Evaluator
    from .metric import measure

    changed = [k for k, e in encoded.items() if k in graph.initializers
               and not np.array_equal(e.reference, graph.initializers[k], equal_nan=True)]
    ev = Evaluator(graph, feeds, changed)
    got = ev.outputs({k: encoded[k].reference for k in changed})
    value = measure(metric, ev.ref, got, [v.name for v in graph.outputs])
    return getattr(metric, "__name__", type(metric).__name__), value, len(ev.runs)


def _correct_biases(graph: Graph, encoded: dict[str, Encoded], settings: dict, model_path) -> int:
    """Data-free bias correction (packer/bias_correction.py) of the Conv biases behind quantised weights; replaces
    their encodings (dense float32) and returns how many were corrected."""
    from .bias_correction import batchnorm_stats, bias_corrections

    quantised = {k: encoded[k].reference for k in settings
                 if k in encoded and not np.array_equal(encoded[k].reference, graph.initializers[k])}
    if not quantised:
        return 0
    stats = batchnorm_stats(model_path)
    if not stats:
        return 0
    fixed = bias_corrections(graph, quantised, stats)
    for name, b in fixed.items():
        encoded[name] = dense(b)
    return len(fixed)


def _check_ratio(r) -> None:
    if r is None:
        return
    if isinstance(r, bool) or not isinstance(r, (int, float, np.floating, np.integer)) or not math.isfinite(r) \
            or r <= 0:
        raise InputError(f"--target-ratio {r!r} is not a compression ratio: give a finite number > 0, e.g. 8")


def _allocate(graph: Graph, settings: dict, encoder, stats, held_feeds, target_ratio, max_error, quiet: bool,
              metadata, metric=None, metric_feeds=None) -> tuple:
    """Per-layer bits (packer/allocate.py), then, for a ratio, further steps down the allocation's path while the
    file as built (graph and metadata included: `metadata(doc, allocation)` is pack's own) is larger than the ratio
    allows. Updates `settings` in place; returns (allocation, every tensor's encoding)."""
    from .allocate import allocate

    scanned = {k for k, (s, _) in settings.items() if s.encoding in ("auto", "codebook", "sparse_codebook")}
    encoded = encode_tensors(graph, {k: v for k, v in settings.items() if k not in scanned}, None, encoder)
    weights_fixed = sum(e.nbytes for k, e in encoded.items() if k not in scanned)
    fp32 = 4 * graph.source_params

    def file_bytes(enc: dict, allocation=None) -> int:
        doc = graph_doc(graph, enc)
        return len(build_file(metadata(doc, allocation), doc))

    # overhead of the container, graph and metadata sections: measured once on the file with dense weights (the
    # allocation's own entry not yet in it), corrected by building the real file below
    overhead = file_bytes(encoded) - sum(e.nbytes for e in encoded.values())
    alloc = allocate(graph, settings, encoder, stats, held_feeds, fixed_bytes=weights_fixed + overhead,
                     fp32_bytes=fp32, target_ratio=target_ratio, max_error=max_error,
                     naive_encoder=tensor_encoder(graph, None) if stats else None, quiet=quiet, metric=metric,
                     metric_feeds=metric_feeds)

    def apply() -> None:
        for k, layer in alloc.layers.items():
            settings[k] = (layer.chosen.settings, settings[k][1])
            encoded[k] = layer.chosen.encoded

    apply()
    if target_ratio is not None:
        point, budget = alloc.point, fp32 / target_ratio
        while alloc.point < len(alloc.steps) and file_bytes(encoded, alloc) > budget:
            alloc.set_point(alloc.point + 1)
            apply()
        while alloc.point > 0:  # the estimate was high: give back the steps the file does not need
            alloc.set_point(alloc.point - 1)
            apply()
            if file_bytes(encoded, alloc) > budget:
                alloc.set_point(alloc.point + 1)
                apply()
                break
        if alloc.point != point:
            alloc.measured = alloc.measure(alloc.point)
        alloc.file_bytes = file_bytes(encoded, alloc)
    return alloc, {k: encoded[k] for k in graph.initializers}


def _warn_dynamic(graph: Graph, warnings: list[str]) -> None:
    """Shape arithmetic left after folding needs the input shapes: name the inputs and the flag that fixes it."""
    left = [n for n in graph.nodes if n.op in C.SHAPE_ARITHMETIC]
    if not left:
        return
    hint = static_shapes_hint([(v.name, v.shape) for v in graph.inputs])
    warnings.append(f"{len(left)} shape-arithmetic node(s) stay in the graph ({left[0].op} '{left[0].name}'"
                    f"{', ...' if len(left) > 1 else ''}) because input dimensions are dynamic; the runtime cannot run "
                    f"them. Give static shapes: {hint or '--input-shape NAME=D0,D1,...'}")


def _progress_batches(items):
    from tqdm import tqdm

    return tqdm(items, desc="calibration statistics", unit="batch", file=sys.stderr, leave=False)


def _progress(items):
    from tqdm import tqdm

    return tqdm(items, desc="packing", unit="tensor", file=sys.stderr, leave=False)
