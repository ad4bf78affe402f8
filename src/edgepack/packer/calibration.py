"""Second-order statistics of every weight layer's inputs on a calibration set, for error-compensated quantisation
(packer/compensate.py): H = X^T X summed over the calibration batches, X holding one row per sample (Gemm), per
sample and position (MatMul on 3-D inputs) or per output position (Conv: the im2col patches, one H per group).

The graph runs in onnxruntime on the original weights with every layer input exposed as an output; memory is
bounded by one batch's activations plus the H matrices (cols^2 doubles per layer and group).

With `quantized` weights given (asymmetric calibration, as GPTAQ, Li et al. 2025), the same layer inputs are also
recorded from the model running those weights, X_q (a second session), and the statistics become H = X_q^T X_q and
the cross term C = X^T X_q: the inputs the layer meets in the quantised model, and how they relate to the original
ones, so that compensate.corrected_weight can aim each layer at the original model's outputs (W X), not at its own
(W X_q) -- the errors of the layers before it are corrected, not carried on. Memory: two batches' activations, and
C beside H.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Graph, Node


@dataclass
class LayerStats:
    """H for one weight tensor, oriented for compensate.assign: rows of the weight matrix are output channels."""

    h: np.ndarray  # (cols, cols) or (groups, cols, cols), float64
    samples: int  # rows of X accumulated
    transpose: bool = False  # the stored tensor is (in, out) (MatMul): assign on its transpose
    cross: np.ndarray | None = None  # C = X^T X_q when recorded against quantised weights (h is then X_q^T X_q)
    minor_rows: np.ndarray | None = None  # rows (classes) the coarse-row option may coarsen (allocate.minor_rows):
    # rows as h sees them, i.e. the stored tensor's columns when transpose


class Statistics(dict):
    """tensor name -> LayerStats, and the calibration runs they were accumulated over (`batches`), so that they can
    be recorded again against quantised weights (packer/allocate.py's refinement)."""

    batches: list = []


def _conv_patches(x: np.ndarray, node: Node, w_shape: tuple) -> np.ndarray:
    """im2col of a Conv input: (groups, positions, cols) with cols ordered (c, kh, kw) like the weight's rows."""
    if x.ndim == 3:  # 1-D convolution as 2-D with height 1
        x = x[:, :, None, :]
        w_shape = (w_shape[0], w_shape[1], 1, w_shape[2])
    n, c, hgt, wid = x.shape
    kh, kw = w_shape[2], w_shape[3]
    group = int(node.attr("group", 1))
    spatial = 2 if len(w_shape) == 4 else 1
    strides = list(node.attr("strides", [1] * spatial))
    dil = list(node.attr("dilations", [1] * spatial))
    pads = list(node.attr("pads", [0] * 2 * spatial))
    if spatial == 1 or len(strides) == 1:
        strides, dil = [1] + strides[-1:], [1] + dil[-1:]
        pads = [0, pads[0], 0, pads[-1]] if len(pads) == 2 else pads
    auto = node.attr("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i, (size, k) in enumerate(((hgt, kh), (wid, kw))):
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (k - 1) * dil[i] + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + 2] = lo, total - lo
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    eh, ew = (kh - 1) * dil[0] + 1, (kw - 1) * dil[1] + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1], ::dil[0], ::dil[1]]  # n, c, oh, ow, kh, kw
    n, c, oh, ow = win.shape[:4]
    cg = c // group
    win = win.reshape(n, group, cg, oh, ow, kh, kw).transpose(1, 0, 3, 4, 2, 5, 6)
    return win.reshape(group, n * oh * ow, cg * kh * kw)


def _rows_of_input(x: np.ndarray, node: Node, w: np.ndarray) -> tuple[np.ndarray, bool]:
    """The layer input as (groups, samples, cols) and whether the weight is stored (in, out)."""
    if node.op in ("Conv",):
        return _conv_patches(x, node, w.shape), False
    if node.op == "Gemm":
        a = x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x
        if node.attr("transA", 0):
            a = a.T
        transposed = not node.attr("transB", 0)
        return a[None], transposed
    if node.op == "MatMul":
        return x.reshape(-1, x.shape[-1])[None], True
    raise ValueError(f"no input statistics for op {node.op}")


def _recurrent_rows(node: Node, which: int, values: dict, graph: Graph) -> np.ndarray | None:
    """LSTM / GRU inputs as (groups, samples, cols): for W (which = 1) every step's x_t, one group; for R (which = 2)
    the hidden state each step starts from, one group per direction (forward: the initial state and h_0..h_{T-2};
    reverse: h_1..h_{T-1} and the initial state), read from the node's Y output. None when Y is not computed.
    Layout 0 only: onnxruntime, which records the values, refuses layout 1 anyway."""
    x = values[node.inputs[0]]
    if which == 1:
        return x.reshape(1, -1, x.shape[-1])
    y_name = node.outputs[0] if node.outputs else ""
    if not y_name or y_name not in values:
        return None
    y = values[y_name]  # (seq, dirs, batch, hidden)
    seq, dirs, batch, hidden = y.shape
    init_name = node.inputs[5] if len(node.inputs) > 5 and node.inputs[5] else ""
    if init_name:
        init = values[init_name] if init_name in values else graph.initializers[init_name]  # (dirs, batch, hidden)
    else:
        init = np.zeros((dirs, batch, hidden), np.float32)
    direction = node.attr("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    groups = []
    for d in range(dirs):
        reverse = direction == "reverse" or (direction == "bidirectional" and d == 1)
        steps = y[1:, d] if reverse else y[:-1, d]
        groups.append(np.concatenate([init[d][None], steps]).reshape(-1, hidden))
    return np.stack(groups)


def layer_statistics(graph: Graph, weights: dict[str, tuple[str, str]], batches: list[dict[str, np.ndarray]],
                     progress=None, quantized: dict[str, np.ndarray] | None = None, cross: bool = True) -> Statistics:
    """weights: tensor name -> (op, node name) as pipeline.weight_tensors gives; batches: feeds onnxruntime accepts
    (each a dict input name -> array). Conv, Gemm, MatMul, and LSTM / GRU (W from the input sequence, R from the
    hidden states, per direction) get statistics; ConvTranspose does not. quantized: tensor name -> the weights the
    second session runs (any weight tensors of the graph), for H = X_q^T X_q and C = X^T X_q (module docstring);
    with cross=False only H = X_q^T X_q, from the second session alone (the original model does not run)."""
    from onnx import helper

    from .onnx_io import graph_to_onnx
    from .verify import session

    wanted: list[tuple[Node, str, int]] = []  # (node, weight tensor, which input of the node)
    taken: set[str] = set()
    for n in graph.nodes:
        slots = (1, 2) if n.op in ("LSTM", "GRU") else (1,) if n.op in ("Conv", "Gemm", "MatMul") else ()
        for i in slots:
            if len(n.inputs) > i and n.inputs[i] in weights and n.inputs[i] not in taken \
                    and graph.initializers[n.inputs[i]].ndim >= 2 and n.inputs[0] not in graph.initializers:
                wanted.append((n, n.inputs[i], i))
                taken.add(n.inputs[i])
    model = graph_to_onnx(graph)
    known = {o.name for o in model.graph.output}
    names: list[str] = []
    for node, _, which in wanted:
        needed = [node.inputs[0]]
        if node.op in ("LSTM", "GRU") and which == 2:
            needed += [node.outputs[0]] if node.outputs and node.outputs[0] else []
            if len(node.inputs) > 5 and node.inputs[5] and node.inputs[5] not in graph.initializers:
                needed.append(node.inputs[5])
        for x in needed:
            if x not in names:
                names.append(x)
            if x not in known:
                model.graph.output.append(helper.make_empty_tensor_value_info(x))
                known.add(x)
    sess = session(model) if cross or not quantized else None
    qsess, qfeeds = None, {}
    if quantized:
        qmodel = graph_to_onnx(graph)
        qmodel.graph.output.extend(model.graph.output[len(qmodel.graph.output):])
        for name, q in quantized.items():  # overridable initializers: the quantised values are fed
            qmodel.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(graph.initializers[name].dtype), list(q.shape)))
            qfeeds[name] = np.ascontiguousarray(q, dtype=graph.initializers[name].dtype)
        qsess = session(qmodel)
    stats = Statistics()
    stats.batches = batches
    for feeds in (progress(batches) if progress else batches):
        qvalues = None if qsess is None else {
            k: v.astype(np.float32) for k, v in zip(names, qsess.run(names, {**feeds, **qfeeds}))}
        values = qvalues if sess is None else {k: v.astype(np.float32) for k, v in zip(names, sess.run(names, feeds))}
        qvalues = values if qvalues is None else qvalues
        for node, wname, which in wanted:
            w = graph.initializers[wname]
            if node.op in ("LSTM", "GRU"):
                rows, transposed = _recurrent_rows(node, which, values, graph), False
                qrows = _recurrent_rows(node, which, qvalues, graph)
                if rows is None:
                    continue
            else:
                rows, transposed = _rows_of_input(values[node.inputs[0]], node, w)
                qrows = _rows_of_input(qvalues[node.inputs[0]], node, w)[0]
            h = _gram(qrows, qrows)
            cross_ = None if qsess is None or sess is None else _gram(rows, qrows)
            if wname in stats:
                stats[wname].h += h
                stats[wname].samples += rows.shape[1]
                if cross_ is not None:
                    stats[wname].cross += cross_
            else:
                stats[wname] = LayerStats(h, rows.shape[1], transposed, cross_)
    for s in stats.values():
        s.h /= max(1, s.samples)
        if s.cross is not None:
            s.cross /= max(1, s.samples)
        if s.h.shape[0] == 1:
            s.h = s.h[0]
            s.cross = None if s.cross is None else s.cross[0]
    return stats


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a^T b per group, (groups, cols, cols) float64, from (groups, samples, cols)."""
    if a.shape[0] > 1:
        return np.einsum("gsi,gsj->gij", a, b, dtype=np.float64, optimize=True)
    return (a[0].T.astype(np.float64) @ b[0].astype(np.float64))[None]
