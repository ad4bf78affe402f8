"""Checks a packed model against the original: both run in onnxruntime (the packed one through its dense unpacked
form) on the same inputs; reports output error and top-1 agreement. The runtime's own check comes with its kernels."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .graph import Graph

RANDOM_INPUT_BYTES = 256 << 20  # random inputs made for a check, per input


@dataclass
class Agreement:
    samples: int
    max_abs_error: float
    rel_l2_error: float
    top1_agreement: float | None
    accuracy_original: float | None = None
    accuracy_packed: float | None = None

    def summary(self) -> str:
        s = (f"{self.samples} inputs: max |diff| {self.max_abs_error:.3g}, relative L2 error "
             f"{self.rel_l2_error:.3g}")
        if self.top1_agreement is not None:
            s += f", top-1 agreement {100 * self.top1_agreement:.2f}%"
        if self.accuracy_original is not None:
            s += (f"; accuracy original {100 * self.accuracy_original:.2f}% -> packed "
                  f"{100 * self.accuracy_packed:.2f}%")
        return s


def session(model_or_path, threads: int = 1):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    src = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else model_or_path.SerializeToString()
    return ort.InferenceSession(os.fspath(src) if isinstance(src, os.PathLike) else src, opts,
                                providers=["CPUExecutionProvider"])


def random_inputs(graph: Graph, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the declared shapes (dynamic dimensions: `batch` for the first, 1 elsewhere)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    from .shapes import require_input_shapes

    require_input_shapes(graph)
    for v in graph.inputs:
        shape = [d if isinstance(d, int) else (batch if i == 0 else 1) for i, d in enumerate(v.shape)]
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(v.dtype).itemsize
        if nbytes > RANDOM_INPUT_BYTES:
            from edgepack.runtime.errors import InputError

            raise InputError(f"input '{v.name}' of shape {shape} ({v.dtype}) would take {nbytes / 2**30:,.1f} GiB "
                             f"of random test inputs; at most {RANDOM_INPUT_BYTES >> 20} MiB are made. Check the "
                             f"shape (--input-shape {v.name}=...) or give calibration inputs (--calib)")
        if v.dtype.startswith("float"):
            feeds[v.name] = rng.standard_normal(shape).astype(v.dtype)
        else:
            feeds[v.name] = rng.integers(0, 2, shape).astype(v.dtype)
    return feeds


def _fixed_inputs(original_onnx, packed_path) -> dict[str, np.ndarray]:
    """The inputs the file was specialised on (`pack --input-value`), as the original model takes them."""
    from edgepack.runtime.loader import read_packed

    settings = read_packed(packed_path).meta.get("settings") or {}
    if not settings.get("input_values"):
        return {}
    from .onnx_io import load_onnx
    from .shapes import input_constants

    graph = load_onnx(original_onnx)
    for v in graph.inputs:  # a value for an input of dynamic shape takes the shape it was packed with
        v.shape = list((settings.get("input_shapes") or {}).get(v.name, v.shape))
    return input_constants(graph, settings["input_values"])


def compare(original_onnx: str | os.PathLike, packed_path: str | os.PathLike, feeds: dict[str, np.ndarray] | None
            = None, labels: np.ndarray | None = None, batch: int = 256, seed: int = 0) -> Agreement:
    from .onnx_io import graph_to_onnx
    from .unpack import packed_to_graph

    from .fidelity import batches, calibration_inputs

    packed_graph = packed_to_graph(packed_path)
    if feeds is None:
        feeds = random_inputs(packed_graph, batch, seed)
    # in runs the packed model's shapes take (one sample at a time when its batch dimension is fixed to 1)
    runs = batches(packed_graph, calibration_inputs(packed_graph, feeds))
    fixed = _fixed_inputs(original_onnx, packed_path)
    a_sess = session(original_onnx)
    b_sess = session(graph_to_onnx(packed_graph))
    out_name = packed_graph.outputs[0].name

    def outputs(sess, extra: dict) -> np.ndarray:
        outs = [np.asarray(sess.run([out_name], {**run, **extra})[0], dtype=np.float64) for run in runs]
        return outs[0] if len(outs) == 1 else np.concatenate([o.reshape(1) if o.ndim == 0 else o for o in outs])

    a = outputs(a_sess, fixed)
    b = outputs(b_sess, {})
    diff = np.abs(a - b)
    rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
    top1 = None
    acc_a = acc_b = None
    if a.ndim == 2 and a.shape[1] > 1:
        top1 = float(np.mean(a.argmax(1) == b.argmax(1)))
        if labels is not None:
            acc_a = float(np.mean(a.argmax(1) == labels))
            acc_b = float(np.mean(b.argmax(1) == labels))
    return Agreement(int(a.shape[0]) if a.ndim else 1, float(diff.max()) if diff.size else 0.0, rel, top1,
                     acc_a, acc_b)
