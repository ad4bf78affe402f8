"""Optimizers (SGD with momentum, Adam; both with L2 weight decay) updating named arrays in place, and learning-rate
schedules as functions of the step."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

Schedule = Callable[[int], float]


class SGD:
    """v = momentum * v + (g + weight_decay * p); p -= lr * v (Caffe's and PyTorch's form; nesterov optional).
    Weight decay applies only to the names in `decay` given to step()."""

    def __init__(self, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False):
        for name, value, ok in (("momentum", momentum, 0.0 <= momentum < 1.0),
                                ("weight_decay", weight_decay, weight_decay >= 0.0)):
            if not ok:
                raise ValueError(f"SGD: {name} out of range, found {value!r}")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        self.state: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float,
             decay: set[str] | frozenset[str] = frozenset()) -> None:
        for name, g in grads.items():
            p = params[name]
            t = p.dtype.type
            if self.weight_decay and name in decay:
                g = g + t(self.weight_decay) * p
            if self.momentum:
                v = self.state.get(name)
                if v is None:
                    v = self.state[name] = np.zeros_like(p)
                v *= t(self.momentum)
                v += g
                upd = g + t(self.momentum) * v if self.nesterov else v
            else:
                upd = g
            p -= t(lr) * upd


class Adam:
    """Adam (Kingma & Ba 2015) with bias correction; weight decay is added to the gradient (L2, not AdamW)."""

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0):
        for name, value, ok in (("beta1", beta1, 0.0 <= beta1 < 1.0), ("beta2", beta2, 0.0 <= beta2 < 1.0),
                                ("eps", eps, eps > 0.0), ("weight_decay", weight_decay, weight_decay >= 0.0)):
            if not ok:
                raise ValueError(f"Adam: {name} out of range, found {value!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, tuple[np.ndarray, np.ndarray, list[int]]] = {}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float,
             decay: set[str] | frozenset[str] = frozenset()) -> None:
        for name, g in grads.items():
            p = params[name]
            t = p.dtype.type
            if self.weight_decay and name in decay:
                g = g + t(self.weight_decay) * p
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = (np.zeros_like(p), np.zeros_like(p), [0])
            m, v, count = st
            count[0] += 1
            m *= t(self.beta1)
            m += t(1 - self.beta1) * g
            v *= t(self.beta2)
            v += t(1 - self.beta2) * (g * g)
            c1 = 1 - self.beta1 ** count[0]
            c2 = 1 - self.beta2 ** count[0]
            # a zero gradient with zero moments gives a zero step: masked weights stay where they are
            p -= t(lr / c1) * m / (np.sqrt(v / t(c2)) + t(self.eps))


def make_optimizer(name: str, momentum: float = 0.9, weight_decay: float = 0.0):
    if name == "sgd":
        return SGD(momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return Adam(weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', found {name!r}")


# ------------------------------------------------------------------------------------------------- schedules

def constant(lr: float) -> Schedule:
    return lambda step: lr


def cosine(lr: float, total_steps: int, final_lr: float = 0.0, warmup_steps: int = 0) -> Schedule:
    """Linear warm-up over warmup_steps, then half a cosine from lr to final_lr at total_steps."""
    total = max(1, int(total_steps))
    warm = max(0, int(warmup_steps))

    def f(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return final_lr + 0.5 * (lr - final_lr) * (1.0 + math.cos(math.pi * t))
    return f


def step_decay(lr: float, every: int, gamma: float = 0.1) -> Schedule:
    """lr * gamma ** (step // every)."""
    every = max(1, int(every))
    return lambda step: lr * gamma ** (step // every)


def inverse(lr: float, gamma: float = 1e-4, power: float = 0.75) -> Schedule:
    """Caffe's "inv" policy of its LeNet examples: lr * (1 + gamma * step) ** -power."""
    return lambda step: lr * (1.0 + gamma * step) ** (-power)


def make_schedule(spec: str | Callable[[int], float], lr: float, total_steps: int) -> Schedule:
    """A schedule by name ("constant", "cosine", "step": x0.1 at 1/2 and 3/4 of the run, "inv") or a callable
    step -> learning rate, returned as is."""
    if callable(spec):
        return spec
    if spec == "constant":
        return constant(lr)
    if spec == "cosine":
        return cosine(lr, total_steps)
    if spec == "step":
        half, three_q = total_steps // 2, (3 * total_steps) // 4
        return lambda step: lr * (1.0 if step < half else 0.1 if step < three_q else 0.01)
    if spec == "inv":
        return inverse(lr)
    raise ValueError(f"schedule must be 'constant', 'cosine', 'step', 'inv' or a callable, found {spec!r}")
