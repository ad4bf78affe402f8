"""Data-free bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", section 4.2): a convolution whose weight W is stored as W + dW gives, on average over its inputs, the
output shifted by dW E[x] per output channel; subtracting that shift from the bias removes it. E[x] comes without
any data from the batch normalisation that made the layer's input: over the data the model was trained on, a batch
norm's output channel c has mean beta[c] and standard deviation |gamma[c]|. Taken as normal, that distribution is
carried through the elementwise ops between the batch norm and the convolution (ReLU, Clip, HardSwish as
Add/Clip/Mul/Div, SiLU as x * Sigmoid(x), PReLU, ...) on a fine grid of points weighted by the normal density
(uniform over +-8 standard deviations: the kinks of ReLU and Clip cost O(h^2), where Gauss-Hermite would converge
slowly), with onnx's reference evaluator running each op on the points, so that any elementwise op is carried the
same way.

Channel concatenations and nearest-neighbour resizes carry the distribution too; averages (AveragePool,
GlobalAveragePool, a linear resize) and sums of values from different batch norms carry only the mean, which only
affine ops may then follow. A convolution gets no correction (its bias stays as it is) when its input cannot be
traced that way to batch norm statistics: the model's input, a max pool, ops that mix channels, a nonlinear op on
a value whose distribution is not known, a bias that another node reads too, or no bias at all. Zero padding is not
modelled (the border pixels' shift is not corrected exactly)."""
from __future__ import annotations

import os

import numpy as np

from .graph import Graph, Node

QUADRATURE_POINTS = 1025
QUADRATURE_SPAN = 8.0  # standard deviations either side of the mean
ELEMENTWISE = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "ThresholdedRelu", "Abs", "Neg", "Identity", "Add", "Sub", "Mul", "Div",
    "Max", "Min"})
MEAN_KEEPING = frozenset({"GlobalAveragePool", "AveragePool"})  # zero padding of AveragePool not modelled
AFFINE = frozenset({"Identity", "Neg", "Add", "Sub", "Mul", "Div"})  # a mixed value may pass these (with constants)


def batchnorm_stats(model_path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{output name of a BatchNormalization: (beta, |gamma|) float64}, the per-channel mean and standard deviation
    of that output over the training data, for every batch norm of the ONNX file's main graph whose scale and bias
    are constants (initializers or Constant nodes)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    try:
        onnx.load_external_data_for_model(model, os.path.dirname(os.path.abspath(os.fspath(model_path))))
    except Exception:  # noqa: BLE001 - no external data, or unreadable: batch norms held there are skipped below
        pass
    consts: dict[str, np.ndarray] = {}
    for t in model.graph.initializer:
        try:
            consts[t.name] = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - a tensor whose data is not loaded
            continue
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    out = {}
    for n in model.graph.node:
        if n.op_type != "BatchNormalization" or len(n.input) < 3 or not n.output:
            continue
        gamma, beta = consts.get(n.input[1]), consts.get(n.input[2])
        if gamma is None or beta is None or gamma.ndim != 1 or gamma.shape != beta.shape:
            continue
        if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(beta))):
            continue
        out[n.output[0]] = (beta.astype(np.float64), np.abs(gamma.astype(np.float64)))
    return out


class _Traced:
    """A value at the quadrature points, shape (1, C, P, 1) float32: samples[0, c, p, 0] is the value of channel c at
    quadrature point p. `source` names the batch norm output it was computed from (None: several, a sum of them,
    whose mean is right but whose samples are not a distribution any more)."""

    def __init__(self, samples: np.ndarray, source: str | None):
        self.samples, self.source = samples, source


def _normal_points(mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(-QUADRATURE_SPAN, QUADRATURE_SPAN, QUADRATURE_POINTS)
    w = np.exp(-0.5 * t * t)
    x = mean[:, None] + std[:, None] * t[None, :]
    return x.astype(np.float32)[None, :, :, None], w / w.sum()


def _channel_constant(a: np.ndarray) -> bool:
    """A constant that broadcasts against (1, C, P, 1) the way it does against N, C, H, W: a scalar, or channel
    values laid out (C, 1, 1) / (1, C, 1, 1)."""
    return a.size == 1 or (a.ndim in (3, 4) and a.shape[-2:] == (1, 1) and (a.ndim == 3 or a.shape[0] == 1))


class _Tracer:
    def __init__(self, graph: Graph, stats: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.graph, self.stats = graph, stats
        self.producers = graph.producers()
        self.memo: dict[str, _Traced | None] = {}
        self.weights = None

    def value(self, name: str) -> _Traced | None:
        if name not in self.memo:
            self.memo[name] = None  # a cycle (impossible in a valid graph) ends as untraceable
            self.memo[name] = self._trace(name)
        return self.memo[name]

    def _trace(self, name: str) -> _Traced | None:
        if name in self.stats:
            mean, std = self.stats[name]
            samples, self.weights = _normal_points(mean, std)
            return _Traced(samples, name)
        n = self.producers.get(name)
        if n is None or len(n.outputs) != 1:
            return None
        if n.op in MEAN_KEEPING or n.op in ("Resize", "Upsample", "Concat"):
            return self._structural(n)
        if n.op not in ELEMENTWISE:
            return None
        ins: list = []
        traced: list[_Traced] = []
        for i in n.inputs:
            if not i:
                ins.append(None)
            elif i in self.graph.initializers:
                a = self.graph.initializers[i]
                if not _channel_constant(a):
                    return None
                ins.append(a)
            else:
                t = self.value(i)
                if t is None:
                    return None
                traced.append(t)
                ins.append(t)
        if not traced:
            return None
        sources = {t.source for t in traced}
        if len(sources) > 1 or None in sources:
            # different batch norms (or an already mixed value): only affine ops keep the mean right
            if n.op not in AFFINE or (n.op in ("Mul", "Div") and len(traced) > 1):
                return None
            source = None
        else:
            source = traced[0].source
        channels = {t.samples.shape[1] for t in traced}
        if len(channels) != 1:
            return None
        from .onnx_io import evaluate_node

        try:
            out = evaluate_node(n, [a.samples if isinstance(a, _Traced) else a for a in ins], self.graph.opset)[0]
        except Exception:  # noqa: BLE001 - an op the reference evaluator cannot run on these: no correction
            return None
        if out is None or out.shape != traced[0].samples.shape or not np.all(np.isfinite(out)):
            return None
        return _Traced(np.asarray(out, dtype=np.float32), source)

    def _structural(self, n: Node) -> _Traced | None:
        """Ops that move values in space or across tensors but never mix channels: an average keeps each channel's
        mean (not its distribution); a nearest-neighbour resize keeps both; a concatenation of channels keeps every
        channel as it was."""
        if n.op == "Concat":
            if n.attr("axis") not in (1, -3) or not n.inputs or any(i in self.graph.initializers for i in n.inputs):
                return None
            parts = [self.value(i) for i in n.inputs]
            if any(t is None for t in parts):
                return None
            exact = all(t.source is not None for t in parts)
            return _Traced(np.concatenate([t.samples for t in parts], axis=1), f"concat:{n.name}" if exact else None)
        t = self.value(n.inputs[0]) if n.inputs and n.inputs[0] else None
        if t is None:
            return None
        if n.op in MEAN_KEEPING:
            return _Traced(t.samples, None)
        return _Traced(t.samples, t.source if n.attr("mode", "nearest") == "nearest" else None)

    def mean(self, name: str) -> np.ndarray | None:
        t = self.value(name)
        if t is None:
            return None
        return t.samples[0, :, :, 0].astype(np.float64) @ self.weights


def expected_inputs(graph: Graph, stats: dict[str, tuple[np.ndarray, np.ndarray]], nodes: list[Node]
                    ) -> dict[str, np.ndarray]:
    """{node name: E[x] per channel of the node's first input} for the nodes whose input traces to `stats`."""
    tracer = _Tracer(graph, stats)
    out = {}
    for n in nodes:
        m = tracer.mean(n.inputs[0])
        if m is not None:
            out[n.name] = m
    return out


def bias_corrections(graph: Graph, quantised: dict[str, np.ndarray],
                     stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    """{bias tensor name: corrected bias float32} for every Conv whose weight is in `quantised` (weight name -> the
    values the file decodes to), whose bias is a constant only it reads, and whose input's E[x] traces to `stats`:
    bias - sum over input channels and kernel positions of (quantised - original) * E[x]."""
    consumers = graph.consumers()
    convs = []
    for n in graph.nodes:
        if n.op != "Conv" or len(n.inputs) < 3 or not n.inputs[2]:
            continue
        w_name, b_name = n.inputs[1], n.inputs[2]
        if w_name not in quantised or b_name not in graph.initializers:
            continue
        if len(consumers.get(b_name, [])) != 1 or len(consumers.get(w_name, [])) != 1:
            continue
        convs.append(n)
    means = expected_inputs(graph, stats, convs)
    out = {}
    for n in convs:
        ex = means.get(n.name)
        if ex is None:
            continue
        w = graph.initializers[n.inputs[1]].astype(np.float64)
        q = np.asarray(quantised[n.inputs[1]], dtype=np.float64)
        b = graph.initializers[n.inputs[2]]
        groups = int(n.attr("group", 1))
        o, ig = w.shape[0], w.shape[1]
        if w.ndim < 3 or q.shape != w.shape or b.shape != (o,) or ex.size != ig * groups or o % groups:
            continue
        d = (q - w).reshape(o, ig, -1).sum(axis=2)  # (O, Cin / groups): the kernel's summed error per input
        shift = np.einsum("goi,gi->go", d.reshape(groups, o // groups, ig), ex.reshape(groups, ig)).reshape(o)
        out[n.inputs[2]] = (b.astype(np.float64) - shift).astype(np.float32)
    return out
