"""Forward and backward of every op the training engine supports, one class per op, registered by ONNX op name.

An op checks its attributes when it is built (errors name the node), then `forward(xs, ctx)` returns its outputs and
a cache, and `backward(cache, grads_of_outputs, needs)` returns the gradient of each input that `needs` asks for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgepack.runtime.errors import UnsupportedError

from ..graph import Graph, Node
from . import kernels


@dataclass
class Context:
    """What a forward pass needs besides its inputs: the mode, the random source of Dropout, where BatchNorm puts
    its new running statistics, and Dropout ratios that override the graph's (the dropout adjustment rule)."""

    training: bool
    rng: np.random.Generator
    buffer_updates: dict[str, np.ndarray] = field(default_factory=dict)
    dropout_ratios: dict[str, float] = field(default_factory=dict)


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a gradient over the axes numpy broadcasting added or stretched, back to `shape`."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    r = g.sum(axis=tuple(range(extra))) if extra > 0 else g
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and r.shape[i] != 1)
    if axes:
        r = r.sum(axis=axes, keepdims=True)
    return r.reshape(shape)


class Op:
    """Base: `grad_inputs` are the input positions a gradient can flow to (others are shapes, ratios, stats)."""

    grad_inputs: tuple[int, ...] = (0,)

    def __init__(self, node: Node, graph: Graph):
        self.node = node

    def where(self) -> str:
        return f"node '{self.node.name}' ({self.node.op})"

    def unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where()}: {what}")

    def bad_input(self, what: str) -> ValueError:
        return ValueError(f"{self.where()}: {what}")

    def forward(self, xs: list, ctx: Context) -> tuple[list, object]:
        raise NotImplementedError

    def backward(self, cache, gys: list, needs: list[bool]) -> list:
        raise NotImplementedError


class Identity(Op):
    def forward(self, xs, ctx):
        return [xs[0]], None

    def backward(self, cache, gys, needs):
        return [gys[0]]


class Relu(Op):
    def forward(self, xs, ctx):
        y = np.maximum(xs[0], 0)
        return [y], y > 0

    def backward(self, cache, gys, needs):
        return [gys[0] * cache]


class LeakyRelu(Op):
    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.alpha = float(node.attr("alpha", 0.01))

    def forward(self, xs, ctx):
        x = xs[0]
        pos = x > 0
        return [np.where(pos, x, x * x.dtype.type(self.alpha))], pos

    def backward(self, cache, gys, needs):
        g = gys[0]
        return [np.where(cache, g, g * g.dtype.type(self.alpha))]


class Add(Op):
    grad_inputs = (0, 1)

    def forward(self, xs, ctx):
        a, b = xs
        return [a + b], (a.shape, b.shape)

    def backward(self, cache, gys, needs):
        g = gys[0]
        return [unbroadcast(g, cache[0]) if needs[0] else None, unbroadcast(g, cache[1]) if needs[1] else None]


class Gemm(Op):
    grad_inputs = (0, 1, 2)

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.alpha = float(node.attr("alpha", 1.0))
        self.beta = float(node.attr("beta", 1.0))
        self.trans_a = int(node.attr("transA", 0))
        self.trans_b = int(node.attr("transB", 0))

    def forward(self, xs, ctx):
        a, b = xs[0], xs[1]
        c = xs[2] if len(xs) > 2 else None
        if a.ndim != 2 or b.ndim != 2:
            raise self.bad_input(f"A and B must be 2-D, found shapes {a.shape} and {b.shape}")
        am = a.T if self.trans_a else a
        bm = b.T if self.trans_b else b
        if am.shape[1] != bm.shape[0]:
            raise self.bad_input(f"inner dimensions differ: A' {am.shape} @ B' {bm.shape}")
        y = am @ bm
        if self.alpha != 1.0:
            y *= y.dtype.type(self.alpha)
        if c is not None:
            y += y.dtype.type(self.beta) * c if self.beta != 1.0 else c
        return [y], (a, b, None if c is None else c.shape)

    def backward(self, cache, gys, needs):
        a, b, c_shape = cache
        g = gys[0]
        gab = g * g.dtype.type(self.alpha) if self.alpha != 1.0 else g
        bm = b.T if self.trans_b else b
        am = a.T if self.trans_a else a
        da = db = dc = None
        if needs[0]:
            da = bm @ gab.T if self.trans_a else gab @ bm.T
        if needs[1]:
            db = gab.T @ am if self.trans_b else am.T @ gab
        if len(needs) > 2 and needs[2] and c_shape is not None:
            dc = unbroadcast(g, c_shape)
            if self.beta != 1.0:
                dc = dc * g.dtype.type(self.beta)
        return [da, db, dc]


class MatMul(Op):
    grad_inputs = (0, 1)

    def forward(self, xs, ctx):
        a, b = xs
        try:
            y = np.matmul(a, b)
        except ValueError as e:
            raise self.bad_input(f"shapes {a.shape} and {b.shape} do not multiply ({e})") from None
        return [y], (a, b)

    def backward(self, cache, gys, needs):
        a, b = cache
        g = gys[0]
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if b.ndim == 1:
            g2 = g2[..., None]
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        da = db = None
        if needs[0]:
            da = unbroadcast(np.matmul(g2, np.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
        if needs[1]:
            db = unbroadcast(np.matmul(np.swapaxes(a2, -1, -2), g2), b2.shape).reshape(b.shape)
        return [da, db]


# ------------------------------------------------------------------------------------- sliding-window geometry

_AUTO_PADS = ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER")


class _Windowed(Op):
    """Shared attribute handling of Conv, MaxPool and AveragePool: 1-D or 2-D, strides, pads, dilations,
    auto_pad, ceil_mode (pools)."""

    def _read_window_attrs(self, node: Node, kernel: list[int] | None):
        self.kernel = kernel
        self.strides = node.attr("strides")
        self.pads = node.attr("pads")
        self.dilations = node.attr("dilations")
        self.auto_pad = node.attr("auto_pad", "NOTSET")
        if isinstance(self.auto_pad, bytes):
            self.auto_pad = self.auto_pad.decode()
        if self.auto_pad not in _AUTO_PADS:
            raise self.unsupported(f"auto_pad '{self.auto_pad}' is not one of {list(_AUTO_PADS)}")
        self.ceil_mode = int(node.attr("ceil_mode", 0))
        if self.ceil_mode not in (0, 1):
            raise self.unsupported(f"ceil_mode must be 0 or 1, found {self.ceil_mode}")
        if kernel is not None and len(kernel) not in (1, 2):
            raise self.unsupported(f"only 1-D and 2-D windows are supported, kernel_shape {kernel}")

    def geometry(self, x_shape: tuple, kernel: list[int]) -> kernels.Geometry:
        nsp = len(x_shape) - 2
        if nsp not in (1, 2) or len(kernel) != nsp:
            raise self.unsupported(f"only 1-D and 2-D inputs are supported (NCW or NCHW), found input shape "
                                   f"{tuple(x_shape)} with kernel {list(kernel)}")
        strides = list(self.strides) if self.strides else [1] * nsp
        dil = list(self.dilations) if self.dilations else [1] * nsp
        pads = list(self.pads) if self.pads else [0] * (2 * nsp)
        if len(strides) != nsp or len(dil) != nsp or len(pads) != 2 * nsp:
            raise self.unsupported(f"strides {strides}, dilations {dil}, pads {pads} do not fit {nsp} spatial "
                                   f"dimension(s)")
        if min(strides) < 1 or min(dil) < 1 or min(pads) < 0 or min(kernel) < 1:
            raise self.bad_input(f"strides {strides}, dilations {dil} and kernel {kernel} must be >= 1, "
                                 f"pads {pads} >= 0")
        begins, ends, outs = [], [], []
        for i in range(nsp):
            n, k, s = int(x_shape[2 + i]), int(kernel[i]), int(strides[i])
            k_eff = (k - 1) * dil[i] + 1
            if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = -(-n // s)
                total = max(0, (out - 1) * s + k_eff - n)
                begin = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
                end = total - begin
            else:
                begin, end = (0, 0) if self.auto_pad == "VALID" else (int(pads[i]), int(pads[i + nsp]))
                span = n + begin + end - k_eff
                if span < 0:
                    raise self.bad_input(f"window extent {k_eff} exceeds the padded input {n + begin + end} on "
                                         f"spatial axis {i} (input shape {tuple(x_shape)})")
                if self.ceil_mode:
                    out = -(-span // s) + 1
                    if (out - 1) * s >= n + begin:  # a last window starting in the end padding is dropped
                        out -= 1
                else:
                    out = span // s + 1
            begins.append(begin)
            ends.append(end)
            outs.append(out)
        if nsp == 1:
            return (1, int(kernel[0]), 1, int(strides[0]), 1, int(dil[0]), 0, begins[0], 0, ends[0], 1, outs[0])
        return (int(kernel[0]), int(kernel[1]), int(strides[0]), int(strides[1]), int(dil[0]), int(dil[1]),
                begins[0], begins[1], ends[0], ends[1], outs[0], outs[1])

    @staticmethod
    def as_2d(x: np.ndarray) -> np.ndarray:
        return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if x.ndim == 3 else x

    @staticmethod
    def out_shape(x_shape: tuple, channels: int, g: kernels.Geometry) -> tuple:
        if len(x_shape) == 3:
            return (x_shape[0], channels, g[11])
        return (x_shape[0], channels, g[10], g[11])


class Conv(_Windowed):
    grad_inputs = (0, 1, 2)

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self._read_window_attrs(node, node.attr("kernel_shape"))
        self.group = int(node.attr("group", 1))
        if self.group < 1:
            raise self.unsupported(f"group must be >= 1, found {self.group}")

    def forward(self, xs, ctx):
        x, w = xs[0], xs[1]
        b = xs[2] if len(xs) > 2 else None
        if x.ndim not in (3, 4) or w.ndim != x.ndim:
            raise self.unsupported(f"only 1-D and 2-D convolutions are supported, input {x.shape}, weight {w.shape}")
        kernel = list(w.shape[2:])
        if self.kernel is not None and list(self.kernel) != kernel:
            raise self.bad_input(f"kernel_shape {list(self.kernel)} differs from the weight's {kernel}")
        n, c = x.shape[:2]
        m, cg = w.shape[:2]
        if c != cg * self.group or m % self.group:
            raise self.bad_input(f"input channels {c} / weight {w.shape} do not fit group {self.group}")
        g = self.geometry(x.shape, kernel)
        cols = kernels.im2col(self.as_2d(x), g)
        w2 = w.reshape(m, -1)
        p = g[10] * g[11]
        if self.group == 1:
            y2 = w2 @ cols
        else:
            mg, rows = m // self.group, w2.shape[1]
            y2 = np.empty((m, n * p), dtype=cols.dtype)
            for k in range(self.group):
                np.matmul(w2[k * mg:(k + 1) * mg], cols[k * rows:(k + 1) * rows], out=y2[k * mg:(k + 1) * mg])
        y = np.ascontiguousarray(y2.reshape(m, n, p).transpose(1, 0, 2))
        if b is not None:
            y += b[None, :, None]
        return [y.reshape(self.out_shape(x.shape, m, g))], (x.shape, w, cols, g)

    def backward(self, cache, gys, needs):
        x_shape, w, cols, g = cache
        gy = gys[0]
        m = w.shape[0]
        n = x_shape[0]
        g2 = np.ascontiguousarray(gy.reshape(n, m, -1).transpose(1, 0, 2)).reshape(m, -1)
        w2 = w.reshape(m, -1)
        dx = dw = db = None
        mg, rows = m // self.group, w2.shape[1]
        if needs[1]:
            if self.group == 1:
                dw2 = g2 @ cols.T
            else:
                dw2 = np.empty_like(w2)
                for k in range(self.group):
                    dw2[k * mg:(k + 1) * mg] = g2[k * mg:(k + 1) * mg] @ cols[k * rows:(k + 1) * rows].T
            dw = dw2.reshape(w.shape)
        if needs[0]:
            if self.group == 1:
                dcols = w2.T @ g2
            else:
                dcols = np.empty_like(cols)
                for k in range(self.group):
                    dcols[k * rows:(k + 1) * rows] = w2[k * mg:(k + 1) * mg].T @ g2[k * mg:(k + 1) * mg]
            x4 = x_shape if len(x_shape) == 4 else (x_shape[0], x_shape[1], 1, x_shape[2])
            dx = kernels.col2im(dcols, x4, g).reshape(x_shape)
        if len(needs) > 2 and needs[2]:
            db = g2.sum(axis=1)
        return [dx, dw, db]


class MaxPool(_Windowed):
    def __init__(self, node, graph):
        super().__init__(node, graph)
        kernel = node.attr("kernel_shape")
        if kernel is None:
            raise self.unsupported("attribute 'kernel_shape' is required")
        self._read_window_attrs(node, list(kernel))
        if int(node.attr("storage_order", 0)) != 0 or (len(node.outputs) > 1 and node.outputs[1]):
            raise self.unsupported("the Indices output (and storage_order) cannot be trained")

    def forward(self, xs, ctx):
        x = xs[0]
        g = self.geometry(x.shape, self.kernel)
        y, argmax = kernels.maxpool(self.as_2d(x), g)
        return [y.reshape(self.out_shape(x.shape, x.shape[1], g))], (x.shape, argmax)

    def backward(self, cache, gys, needs):
        x_shape, argmax = cache
        x4 = x_shape if len(x_shape) == 4 else (x_shape[0], x_shape[1], 1, x_shape[2])
        g = gys[0]
        return [kernels.maxpool_backward(self.as_2d(g), argmax, x4).reshape(x_shape)]


class AveragePool(_Windowed):
    def __init__(self, node, graph):
        super().__init__(node, graph)
        kernel = node.attr("kernel_shape")
        if kernel is None:
            raise self.unsupported("attribute 'kernel_shape' is required")
        self._read_window_attrs(node, list(kernel))
        self.include_pad = int(node.attr("count_include_pad", 0))

    def forward(self, xs, ctx):
        x = xs[0]
        g = self.geometry(x.shape, self.kernel)
        x4 = self.as_2d(x)
        div = kernels.avgpool_divisors(x4.shape, g, bool(self.include_pad))
        y = kernels.avgpool(x4, g, div)
        return [y.reshape(self.out_shape(x.shape, x.shape[1], g))], (x.shape, g, div)

    def backward(self, cache, gys, needs):
        x_shape, g, div = cache
        x4 = x_shape if len(x_shape) == 4 else (x_shape[0], x_shape[1], 1, x_shape[2])
        return [kernels.avgpool_backward(self.as_2d(gys[0]), x4, g, div).reshape(x_shape)]


class GlobalAveragePool(Op):
    def forward(self, xs, ctx):
        x = xs[0]
        if x.ndim < 3:
            raise self.bad_input(f"expected (N, C, spatial...), found shape {x.shape}")
        return [x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)], x.shape

    def backward(self, cache, gys, needs):
        x_shape = cache
        count = math.prod(x_shape[2:])
        g = gys[0] * gys[0].dtype.type(1.0 / count)
        return [np.broadcast_to(g, x_shape).copy()]


class Flatten(Op):
    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.axis = int(node.attr("axis", 1))

    def forward(self, xs, ctx):
        x = xs[0]
        axis = self.axis + x.ndim if self.axis < 0 else self.axis
        if not 0 <= axis <= x.ndim:
            raise self.bad_input(f"axis {self.axis} out of range for shape {x.shape}")
        return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))], x.shape

    def backward(self, cache, gys, needs):
        return [gys[0].reshape(cache)]


class Reshape(Op):
    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.allowzero = int(node.attr("allowzero", 0))

    def forward(self, xs, ctx):
        x, shape = xs[0], xs[1]
        if shape is None or shape.dtype.kind not in "iu" or shape.ndim != 1:
            raise self.bad_input("the shape input must be a 1-D integer tensor")
        target = [int(v) for v in shape]
        for i, v in enumerate(target):
            if v == 0 and not self.allowzero:
                if i >= x.ndim:
                    raise self.bad_input(f"shape {target}: 0 at position {i} copies a dimension that input "
                                         f"{x.shape} does not have")
                target[i] = x.shape[i]
        try:
            y = x.reshape(target)
        except ValueError:
            raise self.bad_input(f"cannot reshape {x.shape} to {target}") from None
        return [y], x.shape

    def backward(self, cache, gys, needs):
        return [gys[0].reshape(cache)]


class Dropout(Op):
    """Inverted dropout: at training time a kept unit is scaled by 1 / (1 - ratio); at inference the identity."""

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.ratio = dropout_ratio(node, graph)

    def forward(self, xs, ctx):
        x = xs[0]
        ratio = ctx.dropout_ratios.get(self.node.name, self.ratio)
        if not ctx.training or ratio == 0.0:
            return [x, np.ones(x.shape, dtype=bool)], None
        keep = ctx.rng.random(x.shape) >= ratio
        scale = x.dtype.type(1.0 / (1.0 - ratio))
        return [np.where(keep, x * scale, x.dtype.type(0)), keep], (keep, scale)

    def backward(self, cache, gys, needs):
        if cache is None:
            return [gys[0]]
        keep, scale = cache
        return [np.where(keep, gys[0] * scale, gys[0].dtype.type(0))]


def dropout_ratio(node: Node, graph: Graph) -> float:
    """A Dropout's ratio: the constant `ratio` input (opset >= 12), else the attribute, else 0.5."""
    if len(node.inputs) > 1 and node.inputs[1]:
        r = graph.initializers.get(node.inputs[1])
        if r is None:
            raise UnsupportedError(f"node '{node.name}' (Dropout): the ratio input '{node.inputs[1]}' must be a "
                                   "constant")
        ratio = float(np.asarray(r).reshape(-1)[0])
    else:
        ratio = float(node.attr("ratio", 0.5))
    if not 0.0 <= ratio < 1.0:
        raise UnsupportedError(f"node '{node.name}' (Dropout): ratio must be in [0, 1), found {ratio}")
    return ratio


class BatchNormalization(Op):
    """Training mode: batch statistics (population variance, as ONNX) and running averages
    running = momentum * running + (1 - momentum) * batch; inference: the running statistics."""

    grad_inputs = (0, 1, 2)

    def __init__(self, node, graph):
        super().__init__(node, graph)
        self.eps = float(node.attr("epsilon", 1e-5))
        self.momentum = float(node.attr("momentum", 0.9))
        if len(node.inputs) < 5:
            raise self.unsupported("expected inputs X, scale, B, input_mean, input_var")

    def forward(self, xs, ctx):
        x, gamma, beta, mean, var = xs[:5]
        if x.ndim < 2 or gamma.shape != (x.shape[1],):
            raise self.bad_input(f"input {x.shape} and scale {gamma.shape} do not match (N, C, ...)")
        axes = (0,) + tuple(range(2, x.ndim))
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        if ctx.training:
            mu = x.mean(axis=axes)
            v = x.var(axis=axes)
            m = x.dtype.type(self.momentum)
            ctx.buffer_updates[self.node.inputs[3]] = (mean * m + mu * (1 - m)).astype(mean.dtype)
            ctx.buffer_updates[self.node.inputs[4]] = (var * m + v * (1 - m)).astype(var.dtype)
        else:
            mu, v = mean, var
        inv = (1.0 / np.sqrt(v + x.dtype.type(self.eps))).astype(x.dtype)
        xhat = (x - mu.reshape(shape)) * inv.reshape(shape)
        y = xhat * gamma.reshape(shape) + beta.reshape(shape)
        outs = [y]
        if len(self.node.outputs) > 1:
            outs += [ctx.buffer_updates.get(self.node.inputs[3], mean),
                     ctx.buffer_updates.get(self.node.inputs[4], var)]
        return outs, (xhat, inv, gamma, axes, shape, ctx.training)

    def backward(self, cache, gys, needs):
        xhat, inv, gamma, axes, shape, training = cache
        g = gys[0]
        dgamma = (g * xhat).sum(axis=axes) if needs[1] else None
        dbeta = g.sum(axis=axes) if needs[2] else None
        dx = None
        if needs[0]:
            dxhat = g * gamma.reshape(shape)
            if training:
                count = g.size // g.shape[1]
                dx = (inv.reshape(shape) / count) * (
                    count * dxhat - dxhat.sum(axis=axes).reshape(shape)
                    - xhat * (dxhat * xhat).sum(axis=axes).reshape(shape))
            else:
                dx = dxhat * inv.reshape(shape)
        return [dx, dgamma, dbeta, None, None]


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the batch and its gradient with respect to the (N, classes) logits."""
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"softmax cross-entropy: logits (N, classes) and labels (N,) expected, found "
                         f"{logits.shape} and {labels.shape}")
    rows = np.arange(len(labels))
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(log_norm - z[rows, labels]))
    grad = np.exp(z - log_norm[:, None])
    grad[rows, labels] -= 1.0
    grad *= grad.dtype.type(1.0 / len(labels))
    return loss, grad


OPS: dict[str, type[Op]] = {cls.__name__: cls for cls in (
    Identity, Relu, LeakyRelu, Add, Gemm, MatMul, Conv, MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape,
    Dropout, BatchNormalization)}
