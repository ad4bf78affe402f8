"""Knowledge distillation (Hinton, Vinyals, Dean 2015): train a student graph on a teacher's softened outputs, the
teacher being any ONNX model run through onnxruntime. Loss per sample: alpha * T^2 * KL(softmax(t/T) || softmax(s/T))
+ (1 - alpha) * CE(softmax(s), label), averaged over the batch."""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from ..graph import Graph
from . import optim
from .engine import Trainer


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def distillation_loss(student_logits: np.ndarray, teacher_logits: np.ndarray, labels: np.ndarray,
                      temperature: float, alpha: float) -> tuple[float, np.ndarray]:
    """(mean loss, dL/d student_logits) of alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, label), where
    p = softmax(logits / T). The T^2 keeps the soft term's gradient, (q_T - p_T) * T, on the scale of the hard one's
    as T changes (Hinton 2015, section 2)."""
    s = np.asarray(student_logits)
    t = np.asarray(teacher_logits)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or t.shape != s.shape or y.shape != (s.shape[0],):
        raise ValueError(f"distillation_loss: student (N, C), teacher (N, C) and labels (N,) expected, found "
                         f"{s.shape}, {t.shape} and {y.shape}")
    if not temperature > 0:
        raise ValueError(f"distillation_loss: temperature must be > 0, found {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distillation_loss: alpha must be in [0, 1], found {alpha}")
    n = s.shape[0]
    rows = np.arange(n)
    T = float(temperature)
    log_q = _log_softmax(s.astype(np.float64) / T)
    log_p = _log_softmax(t.astype(np.float64) / T)
    p = np.exp(log_p)
    kl = np.sum(p * (log_p - log_q), axis=1)
    log_hard = _log_softmax(s.astype(np.float64))
    ce = -log_hard[rows, y]
    loss = float(np.mean(alpha * T * T * kl + (1.0 - alpha) * ce))
    grad = alpha * T * (np.exp(log_q) - p)
    hard = np.exp(log_hard)
    hard[rows, y] -= 1.0
    grad += (1.0 - alpha) * hard
    grad /= n
    return loss, grad.astype(s.dtype if s.dtype.kind == "f" else np.float64)


def teacher_logits(teacher_onnx_path: str | os.PathLike, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """The teacher's first output on x through onnxruntime, as logits: a model that ends in Softmax gives
    probabilities, whose logarithm is a valid set of logits (softmax is shift-invariant); LogSoftmax outputs are
    used as they are."""
    from ..verify import session

    sess = session(teacher_onnx_path)
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    dims = [d for d in inp.shape[1:]]
    x = np.asarray(x, dtype=np.float32)
    if dims and all(isinstance(d, int) for d in dims) and tuple(x.shape[1:]) != tuple(dims):
        if math.prod(x.shape[1:]) != math.prod(dims):
            raise ValueError(f"teacher {teacher_onnx_path}: input '{inp.name}' expects (N, {dims}), found {x.shape}")
        x = x.reshape((x.shape[0],) + tuple(dims))
    outs = [sess.run([out_name], {inp.name: np.ascontiguousarray(x[i:i + batch_size])})[0]
            for i in range(0, len(x), batch_size)]
    logits = np.concatenate(outs).astype(np.float32)
    if logits.ndim != 2:
        raise ValueError(f"teacher {teacher_onnx_path}: output '{out_name}' must be (N, classes), found "
                         f"{logits.shape}")
    if logits.size and logits.min() >= 0 and np.allclose(logits.sum(axis=1), 1.0, atol=1e-3):
        logits = np.log(np.maximum(logits, np.float32(1e-30)))
    return logits


class _DistillTrainer(Trainer):
    """The Trainer with its loss replaced by the distillation loss against `self.soft` (teacher logits of the
    current batch); masks, parametrizations and optimizers work unchanged because only the loss differs."""

    soft: np.ndarray | None = None
    temperature: float = 1.0
    alpha: float = 0.0

    def loss(self, logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        if self.soft is None:
            return super().loss(logits, y)
        return distillation_loss(logits, self.soft, y, self.temperature, self.alpha)


def distill(student_graph: Graph, teacher_onnx_path: str | os.PathLike, data: dict, *, temperature: float = 20.0,
            alpha: float = 0.9, epochs: int = 10, lr: float = 0.05, optimizer: str = "sgd", momentum: float = 0.9,
            weight_decay: float = 0.0, lr_schedule="cosine", batch_size: int = 64, seed: int = 0,
            teacher: np.ndarray | None = None, evaluate: bool = True, progress: bool = False) -> tuple[Graph, dict]:
    """Train the student's parameters (from their current values) on the distillation loss for `epochs`.

    teacher: precomputed teacher logits for data["x_train"] (skips onnxruntime; teacher_onnx_path is then only
    recorded). Returns (trained student graph, report) with the temperature, alpha, per-epoch loss / train error /
    test error, the teacher's and the student's test errors (when data has x_test) and the seconds taken."""
    if not temperature > 0:
        raise ValueError(f"distill: temperature must be > 0, found {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill: alpha must be in [0, 1], found {alpha}")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"distill: epochs must be an integer >= 0, found {epochs!r}")
    x, y = data.get("x_train"), data.get("y_train")
    if x is None or y is None or len(x) != len(y) or len(x) == 0:
        raise ValueError("distill: data needs x_train and y_train of the same nonzero length")
    t0 = time.perf_counter()
    soft = teacher_logits(teacher_onnx_path, x) if teacher is None else np.asarray(teacher, dtype=np.float32)
    if soft.shape[0] != len(x):
        raise ValueError(f"distill: teacher logits for {soft.shape[0]} samples, x_train has {len(x)}")
    trainer = _DistillTrainer(student_graph, lr=lr, optimizer=optimizer, momentum=momentum,
                              weight_decay=weight_decay, schedule=lr_schedule, batch_size=batch_size, seed=seed)
    trainer.temperature, trainer.alpha = float(temperature), float(alpha)
    has_test = evaluate and data.get("x_test") is not None and data.get("y_test") is not None
    report: dict = {"temperature": float(temperature), "alpha": float(alpha), "epochs": int(epochs),
                    "teacher": os.fspath(teacher_onnx_path) if teacher_onnx_path is not None else None}
    if has_test:
        if teacher is None:
            t_test = teacher_logits(teacher_onnx_path, data["x_test"])
            report["teacher_error"] = float(np.mean(t_test.argmax(1) != np.asarray(data["y_test"])))
        report["error_before"] = trainer.error_rate(data["x_test"], data["y_test"])
    xs = trainer.prepare_input(x)
    ys = np.asarray(y, dtype=np.int64)
    n = len(xs)
    total = max(1, int(epochs) * math.ceil(n / batch_size))
    schedule = optim.make_schedule(lr_schedule, lr, total)
    history: dict[str, list] = {"loss": [], "train_error": [], "test_error": [], "lr": [], "seconds": []}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=int(epochs), desc="distill", unit="epoch", file=sys.stderr, leave=False)
    step = 0
    for _ in range(int(epochs)):
        t_epoch = time.perf_counter()
        order = trainer.rng.permutation(n)
        loss_sum, wrong, rate = 0.0, 0, lr
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            trainer.soft = soft[idx]
            rate = schedule(step)
            loss, w = trainer.train_step(xs[idx], ys[idx], rate)
            loss_sum += loss * len(idx)
            wrong += w
            step += 1
        trainer.soft = None
        history["loss"].append(loss_sum / n)
        history["train_error"].append(wrong / n)
        history["lr"].append(rate)
        if has_test:
            history["test_error"].append(trainer.error_rate(data["x_test"], data["y_test"]))
        history["seconds"].append(time.perf_counter() - t_epoch)  # as Trainer.fit's history
        if bar is not None:
            post = {"loss": f"{history['loss'][-1]:.4f}"}
            if history["test_error"]:
                post["test_err"] = f"{100 * history['test_error'][-1]:.2f}%"
            bar.set_postfix(post)
            bar.update(1)
    if bar is not None:
        bar.close()
    trainer.soft = None
    report["history"] = history
    if has_test:
        report["error_after"] = trainer.error_rate(data["x_test"], data["y_test"])
    report["seconds"] = time.perf_counter() - t0
    return trainer.export(), report
