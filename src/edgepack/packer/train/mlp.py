"""A small numpy trainer for fully connected ReLU networks (e.g. LeNet-300-100), with optional masks that keep
pruned weights at exactly zero for prune-and-retrain, a numpy reference forward, and export to the graph IR.
"""
from __future__ import annotations

import math

import numpy as np
from tqdm import tqdm

from edgepack.packer.graph import Graph, Node, ValueInfo

Layers = list[tuple[np.ndarray, np.ndarray]]  # per layer (W (out, in) float32, b (out,) float32)


def train_mlp(
    data: dict,
    hidden: tuple[int, ...] = (300, 100),
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    masks: list[np.ndarray | None] | None = None,
    init: Layers | None = None,
) -> Layers:
    """Train an MLP on data["x_train"] (N, features) / data["y_train"] (N,) with softmax cross-entropy and SGD
    (momentum, L2 weight decay on weights only, learning rate on a per-step cosine decay from `lr` to 0).

    init: start from these layers instead of He-initialised ones (their shapes set the network; `hidden` is then
    unused). masks: per layer a bool array shaped like W (True = keep) or None; masked weights start at 0.0 and
    stay exactly 0.0. Deterministic for a given seed on a given machine and BLAS thread count.
    """
    x, y = _check_xy(data.get("x_train"), data.get("y_train"), "x_train", "y_train")
    for name, value, ok in (("epochs", epochs, epochs >= 0), ("batch_size", batch_size, batch_size >= 1),
                            ("lr", lr, lr > 0), ("momentum", momentum, 0 <= momentum < 1),
                            ("weight_decay", weight_decay, weight_decay >= 0)):
        if not ok:
            raise ValueError(f"train_mlp: {name} out of range, found {value!r}")
    rng = np.random.default_rng(seed)
    if init is None:
        n_classes = int(y.max()) + 1
        if "y_test" in data and len(data["y_test"]):
            n_classes = max(n_classes, int(np.max(data["y_test"])) + 1)
        sizes = [x.shape[1], *(int(h) for h in hidden), n_classes]
        if min(sizes) < 1:
            raise ValueError(f"train_mlp: layer widths must be >= 1, found {sizes}")
        layers = [(_he_init(rng, n_out, n_in), np.zeros(n_out, np.float32)) for n_in, n_out in zip(sizes, sizes[1:])]
    else:
        _check_layers(init, "init")
        layers = [(np.array(w, np.float32), np.array(b, np.float32)) for w, b in init]
    if layers[0][0].shape[1] != x.shape[1]:
        raise ValueError(f"train_mlp: the first layer expects {layers[0][0].shape[1]} features, "
                         f"x_train has {x.shape[1]}")
    if y.max() >= layers[-1][0].shape[0]:
        raise ValueError(f"train_mlp: label {y.max()} out of range for {layers[-1][0].shape[0]} outputs")
    keep = _check_masks(masks, layers)
    for (w, _), m in zip(layers, keep):
        if m is not None:
            w[...] = np.where(m, w, np.float32(0))  # np.where, not w * m: keeps +0.0, never -0.0

    weights = [w for w, _ in layers]
    biases = [b for _, b in layers]
    vel_w = [np.zeros_like(w) for w in weights]
    vel_b = [np.zeros_like(b) for b in biases]
    n = len(x)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    step = 0
    bar = tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = rng.permutation(n)
        loss_sum = 0.0
        wrong = 0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            step_lr = np.float32(0.5 * lr * (1.0 + math.cos(math.pi * step / total_steps)))
            loss, n_wrong, grads = _forward_backward(weights, biases, xb, yb)
            loss_sum += loss * len(idx)
            wrong += n_wrong
            for i, (gw, gb) in enumerate(grads):
                if weight_decay:
                    gw += np.float32(weight_decay) * weights[i]
                if keep[i] is not None:
                    gw *= keep[i]  # masked weights get no gradient, so their velocity and value stay 0.0
                vel_w[i] *= np.float32(momentum)
                vel_w[i] += gw
                vel_b[i] *= np.float32(momentum)
                vel_b[i] += gb
                weights[i] -= step_lr * vel_w[i]
                biases[i] -= step_lr * vel_b[i]
            step += 1
        bar.set_postfix(loss=f"{loss_sum / n:.4f}", train_err=f"{100 * wrong / n:.2f}%")
    bar.close()
    return list(zip(weights, biases))


def predict_mlp(layers: Layers, x: np.ndarray) -> np.ndarray:
    """Logits (N, classes) float32 of an MLP: Gemm (x @ W.T + b), ReLU between layers, none after the last."""
    _check_layers(layers, "layers")
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != layers[0][0].shape[1]:
        raise ValueError(f"predict_mlp: x expected shape (N, {layers[0][0].shape[1]}), found {x.shape}")
    h = np.ascontiguousarray(x, dtype=np.float32)
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i < len(layers) - 1:
            np.maximum(h, 0, out=h)
    return h


def error_rate(layers: Layers, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples whose arg-max logit is not the label."""
    x, y = _check_xy(x, y, "x", "y")
    wrong = 0
    for start in range(0, len(x), 8192):  # bounds the activation memory on large sets
        logits = predict_mlp(layers, x[start:start + 8192])
        wrong += int(np.count_nonzero(logits.argmax(axis=1) != y[start:start + 8192]))
    return wrong / len(x)


def mlp_graph(layers: Layers, name: str = "lenet_300_100") -> Graph:
    """The MLP as an IR graph laid out the way PyTorch exports nn.Linear: input "input" [N, in], per layer k a Gemm
    "fck" (transB=1, initializers "fck.weight" (out, in) and "fck.bias"), a Relu between layers, output "logits"."""
    _check_layers(layers, "layers")
    nodes: list[Node] = []
    inits: dict[str, np.ndarray] = {}
    prev = "input"
    for k, (w, b) in enumerate(layers, start=1):
        last = k == len(layers)
        out = "logits" if last else f"fc{k}_out"
        inits[f"fc{k}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        inits[f"fc{k}.bias"] = np.ascontiguousarray(b, dtype=np.float32)
        nodes.append(Node("Gemm", f"fc{k}", [prev, f"fc{k}.weight", f"fc{k}.bias"], [out], {"transB": ("int", 1)}))
        if not last:
            nodes.append(Node("Relu", f"relu{k}", [out], [f"relu{k}_out"]))
            prev = f"relu{k}_out"
    return Graph(
        name=name,
        inputs=[ValueInfo("input", "float32", ["N", int(layers[0][0].shape[1])])],
        outputs=[ValueInfo("logits", "float32", ["N", int(layers[-1][0].shape[0])])],
        nodes=nodes,
        initializers=inits,
        opset=17,
        source_params=sum(int(v.size) for v in inits.values()),
    )


def _forward_backward(weights, biases, x, y):
    """Mean cross-entropy, the count of wrong predictions, and per layer the gradients (dW, db) for one batch."""
    acts = [x]
    for i, (w, b) in enumerate(zip(weights, biases)):
        z = acts[-1] @ w.T
        z += b
        if i < len(weights) - 1:
            np.maximum(z, 0, out=z)
        acts.append(z)
    logits = acts.pop()
    rows = np.arange(len(y))
    z = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    loss = float(np.mean(log_norm - z[rows, y]))
    n_wrong = int(np.count_nonzero(logits.argmax(axis=1) != y))
    delta = np.exp(z - log_norm[:, None])  # softmax
    delta[rows, y] -= 1.0
    delta *= np.float32(1.0 / len(y))
    grads = []
    for i in range(len(weights) - 1, -1, -1):
        a = acts[i]
        grads.append((delta.T @ a, delta.sum(axis=0)))
        if i:
            delta = delta @ weights[i]
            delta *= a > 0  # ReLU'(z) from its output: a > 0 exactly where z > 0
    return loss, n_wrong, grads[::-1]


def _he_init(rng: np.random.Generator, n_out: int, n_in: int) -> np.ndarray:
    return (rng.standard_normal((n_out, n_in)) * math.sqrt(2.0 / n_in)).astype(np.float32)


def _check_xy(x, y, xname: str, yname: str) -> tuple[np.ndarray, np.ndarray]:
    if x is None or y is None:
        raise ValueError(f"expected arrays {xname} and {yname}, found {'none for ' + (xname if x is None else yname)}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{xname} / {yname} expected shapes (N, features) / (N,) with N >= 1, "
                         f"found {x.shape} / {y.shape}")
    if y.dtype.kind not in "iu" or y.min() < 0:
        raise ValueError(f"{yname} expected integer labels >= 0, found dtype {y.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32), y.astype(np.int64, copy=False)


def _check_layers(layers: Layers, what: str) -> None:
    if not layers:
        raise ValueError(f"{what}: expected at least one (W, b) layer, found none")
    for k, (w, b) in enumerate(layers, start=1):
        w, b = np.asarray(w), np.asarray(b)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ValueError(f"{what}: layer {k} expected W (out, in) and b (out,), found {w.shape} and {b.shape}")
        if k > 1 and w.shape[1] != np.shape(layers[k - 2][0])[0]:
            raise ValueError(f"{what}: layer {k} expects {w.shape[1]} inputs, layer {k - 1} gives "
                             f"{np.shape(layers[k - 2][0])[0]}")


def _check_masks(masks, layers: Layers) -> list[np.ndarray | None]:
    if masks is None:
        return [None] * len(layers)
    if len(masks) != len(layers):
        raise ValueError(f"masks: expected {len(layers)} entries (one per layer, or None), found {len(masks)}")
    keep = []
    for k, (m, (w, _)) in enumerate(zip(masks, layers), start=1):
        if m is None:
            keep.append(None)
            continue
        m = np.asarray(m)
        if m.dtype != np.bool_ or m.shape != w.shape:
            raise ValueError(f"masks: layer {k} expected a bool array of shape {w.shape}, found {m.dtype} {m.shape}")
        keep.append(m.astype(np.float32))  # float, so masking a gradient is one multiply
    return keep
