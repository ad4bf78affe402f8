"""The training engine: runs a graph IR forward and backward (ops in packer/train/ops.py) with softmax
cross-entropy on its output, trains its float parameters with mini-batch SGD or Adam, keeps pruning masks and
weight-sharing parametrizations, evaluates, and exports the trained weights back into a Graph."""
from __future__ import annotations

import copy
import math
import sys
import time
from typing import Callable, Iterable, Protocol

import numpy as np

from edgepack.runtime.errors import UnsupportedError

from ..graph import Graph, Node
from . import optim
from .ops import OPS, Context, Op, softmax_cross_entropy

_FINAL_SOFTMAX = ("Softmax", "LogSoftmax")


class Parametrization(Protocol):
    """A weight computed from other trainable variables (e.g. a codebook and fixed codes): the optimizer updates
    `variables`; the engine turns the weight's gradient into theirs with `grads` and rebuilds it with `weight`."""

    variables: dict[str, np.ndarray]

    def weight(self) -> np.ndarray: ...

    def grads(self, weight_grad: np.ndarray) -> dict[str, np.ndarray]: ...


def trainable_parameters(graph: Graph) -> tuple[list[str], list[str]]:
    """(parameters, buffers) of a graph: float initializers that Conv / Gemm / MatMul read (weights, biases), a
    BatchNormalization's scale and bias, and the constant operand of an Add after a MatMul or Conv (a bias kept
    apart); buffers are BatchNormalization's running mean and variance."""
    producers = graph.producers()
    params: list[str] = []
    buffers: list[str] = []

    def is_float_init(name: str) -> bool:
        return bool(name) and name in graph.initializers and graph.initializers[name].dtype.kind == "f"

    def add(lst, name):
        if is_float_init(name) and name not in params and name not in buffers:
            lst.append(name)

    for n in graph.nodes:
        if n.op == "Conv":
            for i in n.inputs[1:3]:
                add(params, i)
        elif n.op == "Gemm":
            for i in n.inputs[1:3]:
                add(params, i)
        elif n.op == "MatMul":
            for i in n.inputs[:2]:
                add(params, i)
        elif n.op == "BatchNormalization":
            for i in n.inputs[1:3]:
                add(params, i)
            for i in n.inputs[3:5]:
                add(buffers, i)
        elif n.op == "Add" and len(n.inputs) == 2:
            for mine, other in ((n.inputs[0], n.inputs[1]), (n.inputs[1], n.inputs[0])):
                src = producers.get(other)
                if src is not None and src.op in ("MatMul", "Conv"):
                    add(params, mine)
    return params, buffers


def copy_graph(graph: Graph, initializers: dict[str, np.ndarray] | None = None) -> Graph:
    """A deep copy of the graph's structure with the given initializers (default: copies of the graph's)."""
    inits = {k: v.copy() for k, v in graph.initializers.items()} if initializers is None else initializers
    return Graph(graph.name, copy.deepcopy(graph.inputs), copy.deepcopy(graph.outputs), copy.deepcopy(graph.nodes),
                 inits, graph.opset, graph.source_params)


INIT_SCHEMES = ("he_normal", "he_uniform", "lecun_uniform")


def init_parameters(graph: Graph, seed: int = 0, scheme: str = "he_normal") -> Graph:
    """A copy of the graph with freshly drawn parameters: weights from `scheme` with the fan-in of the layout each
    op reads, zero biases, BatchNormalization scale 1, bias 0, mean 0, variance 1.

    Schemes: "he_normal" N(0, 2 / fan_in); "he_uniform" U(+-sqrt(6 / fan_in)); "lecun_uniform"
    U(+-sqrt(3 / fan_in)), Caffe's "xavier" filler as its LeNet examples use it."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init scheme must be one of {INIT_SCHEMES}, found {scheme!r}")
    rng = np.random.default_rng(seed)
    out = copy_graph(graph)
    params, buffers = trainable_parameters(graph)
    fan_in: dict[str, int] = {}
    for n in graph.nodes:
        w = graph.initializers.get(n.inputs[1]) if len(n.inputs) > 1 else None
        if w is None:
            continue
        if n.op == "Conv":
            fan_in[n.inputs[1]] = int(np.prod(w.shape[1:]))
        elif n.op == "Gemm" and w.ndim == 2:
            fan_in[n.inputs[1]] = int(w.shape[1] if n.attr("transB", 0) else w.shape[0])
        elif n.op == "MatMul" and w.ndim >= 2:
            fan_in[n.inputs[1]] = int(w.shape[-2])
    ones = {n.inputs[i] for n in graph.nodes if n.op == "BatchNormalization" for i in (1, 4) if len(n.inputs) > i}
    for name in params + buffers:
        w = graph.initializers[name]
        if name in fan_in:
            f = max(1, fan_in[name])
            if scheme == "he_normal":
                new = rng.standard_normal(w.shape) * math.sqrt(2.0 / f)
            else:
                a = math.sqrt((6.0 if scheme == "he_uniform" else 3.0) / f)
                new = rng.uniform(-a, a, w.shape)
        elif name in ones:
            new = np.ones(w.shape)
        else:
            new = np.zeros(w.shape)
        out.initializers[name] = new.astype(w.dtype)
    return out


def set_dropout_ratio(graph: Graph, node_name: str, ratio: float) -> None:
    """Set a Dropout node's ratio in place: its constant ratio input if it has one (opset >= 12), else a new
    constant input for opset >= 12, else the attribute."""
    node = next((n for n in graph.nodes if n.name == node_name and n.op == "Dropout"), None)
    if node is None:
        raise ValueError(f"no Dropout node named '{node_name}'")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"Dropout '{node_name}': ratio must be in [0, 1), found {ratio}")
    if len(node.inputs) > 1 and node.inputs[1]:
        graph.initializers[node.inputs[1]] = np.array(ratio, dtype=graph.initializers[node.inputs[1]].dtype)
    elif graph.opset >= 12:
        name = f"{node.name}.ratio"
        graph.initializers[name] = np.array(ratio, dtype=np.float32)
        node.inputs = [node.inputs[0], name] + node.inputs[2:]
    else:
        node.attrs["ratio"] = ("float", float(ratio))


class Trainer:
    """Trains the float parameters of a graph (see trainable_parameters) on (x, integer label) data.

    - Loss: mean softmax cross-entropy of the graph's first output (a final Softmax / LogSoftmax is skipped and
      its input used as the logits). Only the nodes the output depends on run.
    - Optimizer: "sgd" (momentum) or "adam", L2 weight decay on weights (parameters with >= 2 dimensions) only.
    - schedule: "cosine" (default), "constant", "step", "inv" or a callable step -> lr, over the steps of one
      fit() call.
    - masks: {param name: bool array}, False = pruned: the weight is held at exactly 0.0 (its gradient is masked
      and it is reset after every step). Masks can be changed between steps with set_mask().
    - parametrizations: {param name: Parametrization}: the weight is rebuilt from trainable variables.
    - trainable: the parameter names the optimizer updates (default all); the others stay fixed.
    - dtype: float32 for training; float64 for gradient checks. Deterministic for a seed on a given machine.
    """

    def __init__(self, graph: Graph, *, lr: float = 0.05, optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 1e-4, schedule: str | Callable[[int], float] = "cosine",
                 batch_size: int = 64, seed: int = 0, masks: dict[str, np.ndarray] | None = None,
                 trainable: Iterable[str] | None = None,
                 parametrizations: dict[str, Parametrization] | None = None, dtype=np.float32,
                 dropout_ratios: dict[str, float] | None = None):
        for name, value, ok in (("lr", lr, lr > 0), ("batch_size", batch_size, batch_size >= 1),
                                ("weight_decay", weight_decay, weight_decay >= 0)):
            if not ok:
                raise ValueError(f"Trainer: {name} out of range, found {value!r}")
        self.graph = graph
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"Trainer: dtype must be float32 or float64, found {self.dtype}")
        self.lr = float(lr)
        self.schedule = schedule
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)
        self.optimizer = optim.make_optimizer(optimizer, momentum, weight_decay)
        self.dropout_ratios = dict(dropout_ratios or {})
        self._build_plan(graph)

        params, buffers = trainable_parameters(graph)
        used = {i for n, _ in self._plan for i in n.inputs if i}
        self.params = {k: np.array(graph.initializers[k], dtype=self.dtype) for k in params if k in used}
        self.buffers = {k: np.array(graph.initializers[k], dtype=self.dtype) for k in buffers if k in used}
        self.consts = {}
        for k, v in graph.initializers.items():
            if k in used and k not in self.params and k not in self.buffers:
                self.consts[k] = v.astype(self.dtype) if v.dtype.kind == "f" else v
        names = set(self.params)
        self.trainable = list(self.params) if trainable is None else list(trainable)
        unknown = [t for t in self.trainable if t not in names]
        if unknown:
            raise ValueError(f"Trainer: trainable names {unknown} are not parameters of the graph "
                             f"(parameters: {sorted(names)})")
        self.masks: dict[str, np.ndarray] = {}
        self._pruned: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name -> (float mask, flat pruned indices)
        for k, m in (masks or {}).items():
            self.set_mask(k, m)
        self.parametrizations: dict[str, Parametrization] = {}
        for k, p in (parametrizations or {}).items():
            if k not in names:
                raise ValueError(f"Trainer: parametrized '{k}' is not a parameter of the graph")
            self.parametrizations[k] = p
        self._materialize()
        self.step_count = 0
        self._needs_cache: dict[frozenset, list[list[bool]]] = {}

    # ------------------------------------------------------------------------------------------------- set-up

    def _build_plan(self, graph: Graph) -> None:
        if len(graph.inputs) != 1:
            raise UnsupportedError(f"graph '{graph.name}': the training engine needs exactly one data input, found "
                                   f"{[v.name for v in graph.inputs]}")
        if not graph.outputs:
            raise UnsupportedError(f"graph '{graph.name}' has no output")
        self.input = graph.inputs[0]
        producers = graph.producers()
        out = graph.outputs[0].name
        last = producers.get(out)
        if last is not None and last.op in _FINAL_SOFTMAX:
            out = last.inputs[0]  # the loss applies the softmax itself
        self.logits_name = out
        needed: set[int] = set()  # node ids: names of hand-built graphs need not be unique
        stack = [out]
        seen: set[str] = set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            node = producers.get(v)
            if node is not None and id(node) not in needed:
                needed.add(id(node))
                stack.extend(i for i in node.inputs if i)
        self._plan: list[tuple[Node, Op]] = []
        for n in graph.nodes:
            if id(n) not in needed:
                continue
            cls = OPS.get(n.op)
            if cls is None:
                raise UnsupportedError(
                    f"node '{n.name}': op '{n.op}' is not supported by the training engine (it trains "
                    f"{', '.join(sorted(OPS))}); post-training packing still works for this model")
            self._plan.append((n, cls(n, graph)))
        known = {self.input.name} | set(graph.initializers) | {o for n, _ in self._plan for o in n.outputs}
        for n, _ in self._plan:
            missing = [i for i in n.inputs if i and i not in known]
            if missing:
                raise ValueError(f"node '{n.name}' ({n.op}): inputs {missing} are produced by no node, input or "
                                 "initializer")

    def set_mask(self, name: str, mask: np.ndarray | None) -> None:
        """Fix (or with None release) the pruning mask of a parameter; pruned entries become exactly 0.0."""
        if name not in self.params:
            raise ValueError(f"mask for '{name}': not a parameter of the graph (parameters: {sorted(self.params)})")
        if mask is None:
            self.masks.pop(name, None)
            self._pruned.pop(name, None)
            return
        m = np.asarray(mask)
        if m.dtype != np.bool_ or m.shape != self.params[name].shape:
            raise ValueError(f"mask for '{name}': expected a bool array of shape {self.params[name].shape}, found "
                             f"{m.dtype} {m.shape}")
        self.masks[name] = m
        # A float mask to multiply gradients by and the flat indices of the pruned entries: np.where / copyto(where=)
        # branch per element on a random mask and made every step of a half-pruned layer ~10x slower (1.7 ms vs
        # 0.15 ms for LeNet-300-100's fc1).
        self._pruned[name] = (m.astype(self.dtype), np.flatnonzero(~m))
        self._zero_pruned(name)

    def _zero_pruned(self, name: str) -> None:
        a = self.params[name]
        if a.flags.c_contiguous:
            a.reshape(-1)[self._pruned[name][1]] = 0  # a view: +0.0 exactly
        else:
            np.copyto(a, 0, where=~self.masks[name])

    def _materialize(self) -> None:
        for k, p in self.parametrizations.items():
            w = p.weight()
            if w.shape != self.params[k].shape:
                raise ValueError(f"parametrization of '{k}' gives shape {w.shape}, expected {self.params[k].shape}")
            self.params[k][...] = w
            if k in self.masks:
                self._zero_pruned(k)

    def variables(self) -> dict[str, np.ndarray]:
        """What the optimizer updates: trainable parameters, and "name/variable" of each parametrization."""
        out = {k: self.params[k] for k in self.trainable if k not in self.parametrizations}
        for k, p in self.parametrizations.items():
            for v, arr in p.variables.items():
                out[f"{k}/{v}"] = arr
        return out

    # ------------------------------------------------------------------------------------- forward / backward

    def prepare_input(self, x: np.ndarray) -> np.ndarray:
        """x as the graph's input dtype and layout: (N, 784) becomes (N, 1, 28, 28) when the input says so."""
        x = np.asarray(x)
        dims = self.input.shape[1:]
        if dims and all(isinstance(d, int) for d in dims) and tuple(x.shape[1:]) != tuple(dims):
            if math.prod(x.shape[1:]) != math.prod(dims):
                raise ValueError(f"input '{self.input.name}' expects (N, {', '.join(map(str, dims))}), found "
                                 f"{x.shape}")
            x = x.reshape((x.shape[0],) + tuple(dims))
        return np.ascontiguousarray(x, dtype=self.dtype)

    def _forward(self, x: np.ndarray, ctx: Context, keep_tape: bool):
        env = {self.input.name: x}
        env.update(self.consts)
        env.update(self.buffers)
        env.update(self.params)
        tape = []
        for node, op in self._plan:
            xs = [env[i] if i else None for i in node.inputs]
            outs, cache = op.forward(xs, ctx)
            for name, value in zip(node.outputs, outs):
                if name:
                    env[name] = value
            if keep_tape:
                tape.append(cache)
        return env[self.logits_name], tape

    def _needs(self, wrt: frozenset) -> list[list[bool]]:
        hit = self._needs_cache.get(wrt)
        if hit is None:
            live = set(wrt)
            hit = []
            for node, op in self._plan:
                need = [bool(i) and i in live and j in op.grad_inputs for j, i in enumerate(node.inputs)]
                hit.append(need)
                if any(need):
                    live.update(o for o in node.outputs if o)
            self._needs_cache[wrt] = hit
        return hit

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray, wrt: Iterable[str] | None = None, *,
                       training: bool = True, rng: np.random.Generator | None = None):
        """(mean loss, logits, {name: dL/dname}) for one batch; wrt defaults to the trainable parameters.
        BatchNormalization running statistics are not updated here (train_step does that)."""
        loss, logits, grads, _ = self._loss_and_grads(x, y, wrt, training, rng)
        return loss, logits, grads

    def loss(self, logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """(mean loss, dL/dlogits) of one batch: softmax cross-entropy. Subclasses change the objective here
        (packer/train/distill.py); the backward pass through the graph stays the same."""
        return softmax_cross_entropy(logits, y)

    def _loss_and_grads(self, x, y, wrt, training, rng):
        wrt = frozenset(self.trainable if wrt is None else wrt)
        x = self.prepare_input(x)
        y = np.asarray(y, dtype=np.int64)
        ctx = Context(training, self.rng if rng is None else rng, dropout_ratios=self.dropout_ratios)
        logits, tape = self._forward(x, ctx, True)
        loss, g = self.loss(logits, y)
        grads = {self.logits_name: g.astype(logits.dtype, copy=False)}
        for (node, op), cache, needs in zip(reversed(self._plan), reversed(tape), reversed(self._needs(wrt))):
            if not any(needs):
                continue
            gys = [grads.pop(o, None) if o else None for o in node.outputs]
            if gys[0] is None:
                continue
            gxs = op.backward(cache, gys, needs)
            for name, gx, need in zip(node.inputs, gxs, needs):
                if need and gx is not None:
                    grads[name] = grads[name] + gx if name in grads else gx
        zero = {k: np.zeros_like(self.params[k]) for k in wrt if k not in grads and k in self.params}
        out = {k: grads[k] for k in wrt if k in grads}
        out.update(zero)
        return loss, logits, out, ctx

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> tuple[float, int]:
        """One optimizer step on one batch; returns (loss, wrong predictions)."""
        wrt = set(self.trainable) | set(self.parametrizations)
        loss, logits, grads, ctx = self._loss_and_grads(x, y, wrt, True, None)
        for k, v in ctx.buffer_updates.items():
            self.buffers[k][...] = v
        var_grads = {}
        for k in self.trainable:
            if k in self.parametrizations:
                continue
            g = grads[k]
            if k in self.masks:
                g = g * self._pruned[k][0]  # a new array: a gradient may be shared with another's
            var_grads[k] = g
        for k, p in self.parametrizations.items():
            g = grads[k]
            if k in self.masks:
                g = g * self._pruned[k][0]
            for v, gv in p.grads(g).items():
                var_grads[f"{k}/{v}"] = gv
        decay = {k for k in self.trainable if k not in self.parametrizations and self.params[k].ndim >= 2}
        self.optimizer.step(self.variables(), var_grads, lr, decay)
        for k in self.masks:
            self._zero_pruned(k)
        self._materialize()
        self.step_count += 1
        wrong = int(np.count_nonzero(logits.argmax(axis=1) != np.asarray(y)))
        return loss, wrong

    # ------------------------------------------------------------------------------------------ loops, checks

    def fit(self, data: dict, epochs: int, *, on_step: Callable[["Trainer", int, int], None] | None = None,
            evaluate: bool = True, progress: bool = False, desc: str = "train") -> dict:
        """Train for `epochs` passes over data["x_train"] / data["y_train"] in shuffled mini-batches.

        on_step(trainer, step, total_steps) runs before every step (gradual pruning changes masks there).
        Returns the history: per epoch loss, train error, test error (when evaluate and data has x_test / y_test),
        learning rate at the end of the epoch, and seconds."""
        x, y = data.get("x_train"), data.get("y_train")
        if x is None or y is None or len(x) != len(y) or len(x) == 0:
            raise ValueError("fit: data needs x_train and y_train of the same nonzero length")
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
            raise ValueError(f"fit: epochs must be an integer >= 0, found {epochs!r}")
        x = self.prepare_input(x)
        y = np.asarray(y, dtype=np.int64)
        n = len(x)
        steps_per_epoch = math.ceil(n / self.batch_size)
        total = max(1, int(epochs) * steps_per_epoch)
        schedule = optim.make_schedule(self.schedule, self.lr, total)
        history: dict[str, list] = {"loss": [], "train_error": [], "test_error": [], "lr": [], "seconds": []}
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=int(epochs), desc=desc, unit="epoch", file=sys.stderr, leave=False)
        step = 0
        for _ in range(int(epochs)):
            t0 = time.perf_counter()
            order = self.rng.permutation(n)
            loss_sum = 0.0
            wrong = 0
            lr = self.lr
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                if on_step is not None:
                    on_step(self, step, total)
                lr = schedule(step)
                loss, w = self.train_step(x[idx], y[idx], lr)
                loss_sum += loss * len(idx)
                wrong += w
                step += 1
            history["loss"].append(loss_sum / n)
            history["train_error"].append(wrong / n)
            history["lr"].append(lr)
            if evaluate and data.get("x_test") is not None:
                history["test_error"].append(self.error_rate(data["x_test"], data["y_test"]))
            history["seconds"].append(time.perf_counter() - t0)
            if bar is not None:
                post = {"loss": f"{history['loss'][-1]:.4f}", "train_err": f"{100 * wrong / n:.2f}%"}
                if history["test_error"]:
                    post["test_err"] = f"{100 * history['test_error'][-1]:.2f}%"
                bar.set_postfix(post)
                bar.update(1)
        if bar is not None:
            bar.close()
        return history

    def predict(self, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """Logits (N, classes) in inference mode (Dropout off, BatchNormalization on its running statistics)."""
        x = np.asarray(x)
        out = []
        ctx = Context(False, self.rng, dropout_ratios=self.dropout_ratios)
        for start in range(0, len(x), batch_size):
            logits, _ = self._forward(self.prepare_input(x[start:start + batch_size]), ctx, False)
            out.append(logits)
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=self.dtype)

    def error_rate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 2048) -> float:
        """Fraction of samples whose arg-max logit is not the label."""
        y = np.asarray(y)
        if len(x) != len(y) or len(y) == 0:
            raise ValueError(f"error_rate: x and y need the same nonzero length, found {len(x)} and {len(y)}")
        wrong = 0
        for start in range(0, len(y), batch_size):
            logits = self.predict(x[start:start + batch_size], batch_size)
            wrong += int(np.count_nonzero(logits.argmax(axis=1) != y[start:start + batch_size]))
        return wrong / len(y)

    def export(self) -> Graph:
        """A new Graph: the same nodes, parameters and running statistics replaced by the trained values (in the
        graph's original dtypes), Dropout ratios overridden in this trainer written in."""
        inits = {k: v.copy() for k, v in self.graph.initializers.items()}
        for k, v in list(self.params.items()) + list(self.buffers.items()):
            inits[k] = v.astype(self.graph.initializers[k].dtype)
        for k, m in self.masks.items():
            np.copyto(inits[k], 0, where=~m)  # +0.0 exactly, whatever the cast did
        out = copy_graph(self.graph, inits)
        for name, ratio in self.dropout_ratios.items():
            set_dropout_ratio(out, name, ratio)
        return out
