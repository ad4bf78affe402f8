"""Pruning with retraining (Han et al., NIPS 2015): magnitude masks held fixed while the survivors retrain, one-shot,
iterative and gradual (Zhu & Gupta 2017, cubic) schedules, the dropout adjustment rule, a per-layer sensitivity scan
and per-layer sparsities chosen from it for a target accuracy drop."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..graph import Graph
from ..prune import mask_by_sparsity
from .engine import Trainer
from .ops import dropout_ratio

DEFAULT_SCAN = (0.0, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.99)
_WEIGHT_OPS = {"Conv": 1, "Gemm": 1, "MatMul": 1}
# ops a Dropout's output may pass through before the weight layer whose connections it drops
_PASS_THROUGH = {"Relu", "LeakyRelu", "Identity", "Flatten", "Reshape", "MaxPool", "AveragePool",
                 "GlobalAveragePool", "BatchNormalization", "Dropout"}


def weight_layers(graph: Graph) -> dict[str, str]:
    """Prunable weights: tensor name -> node name, for the constant float weights (>= 2-D) that Conv / Gemm /
    MatMul read as their second input (the tensors the packer compresses)."""
    out: dict[str, str] = {}
    for n in graph.nodes:
        idx = _WEIGHT_OPS.get(n.op)
        if idx is not None and len(n.inputs) > idx:
            w = graph.initializers.get(n.inputs[idx])
            if w is not None and w.dtype.kind == "f" and w.ndim >= 2:
                out.setdefault(n.inputs[idx], n.name)
    return out


def resolve_sparsity(graph: Graph, sparsity: float | dict[str, float]) -> dict[str, float]:
    """Target sparsity (fraction removed) per weight tensor from one number for every layer, or a dict keyed by
    tensor or node name (layers not named are not pruned)."""
    layers = weight_layers(graph)
    if isinstance(sparsity, dict):
        by_node = {node: t for t, node in layers.items()}
        out = {}
        for key, s in sparsity.items():
            name = key if key in layers else by_node.get(key)
            if name is None:
                raise ValueError(f"sparsity for '{key}': no prunable weight tensor or node of that name "
                                 f"(weights: {sorted(layers)})")
            out[name] = float(s)
    else:
        out = {t: float(sparsity) for t in layers}
    for k, s in out.items():
        if not 0.0 <= s <= 1.0:
            raise ValueError(f"sparsity for '{k}' must be in [0, 1], found {s}")
    return out


def cubic_sparsity(step: int, end_step: int, final: float, initial: float = 0.0, begin_step: int = 0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** 3, clamped to [t0, t_end]."""
    if end_step <= begin_step:
        return final
    t = min(max(step, begin_step), end_step)
    return final + (initial - final) * (1.0 - (t - begin_step) / (end_step - begin_step)) ** 3


def adjusted_dropout(ratio: float, connections_original: int, connections_retrained: int) -> float:
    """Han et al. (2015), eq. 2: D_r = D_o * sqrt(C_r / C_o), C = connections of the layer."""
    if connections_original <= 0:
        return ratio
    return ratio * math.sqrt(max(0, connections_retrained) / connections_original)


def dropout_layers(graph: Graph) -> dict[str, str]:
    """Dropout node name -> the weight tensor whose connections it drops: the first weight layer that reads its
    output (through activations, pooling and reshapes), else the weight layer that produced its input."""
    layers = weight_layers(graph)
    consumers = graph.consumers()
    producers = graph.producers()
    out = {}
    for n in graph.nodes:
        if n.op != "Dropout":
            continue
        found = None
        stack, seen = [n.outputs[0]], set()
        while stack and found is None:
            v = stack.pop(0)
            if v in seen:
                continue
            seen.add(v)
            for c in consumers.get(v, []):
                if c.op in _WEIGHT_OPS and c.inputs[0] == v and len(c.inputs) > 1 and c.inputs[1] in layers:
                    found = c.inputs[1]
                    break
                if c.op in _PASS_THROUGH:
                    stack.append(c.outputs[0])
        v = n.inputs[0]
        while found is None:
            p = producers.get(v)
            if p is None:
                break
            if p.op in _WEIGHT_OPS and len(p.inputs) > 1 and p.inputs[1] in layers:
                found = p.inputs[1]
            elif p.op in _PASS_THROUGH or p.op == "Add":
                v = p.inputs[0]
            else:
                break
        if found is not None:
            out[n.name] = found
    return out


def update_masks(trainer: Trainer, targets: dict[str, float]) -> dict[str, np.ndarray]:
    """Prune every target tensor of the trainer to its sparsity by magnitude; a weight once pruned stays pruned."""
    for name, s in targets.items():
        w = trainer.params[name]
        mask = mask_by_sparsity(w, s)
        old = trainer.masks.get(name)
        if old is not None:
            mask &= old
        trainer.set_mask(name, mask)
    return {k: trainer.masks[k] for k in targets}


class _DropoutRule:
    """Keeps every Dropout ratio at D_o * sqrt(C_r / C_o) as the masks of its layer change."""

    def __init__(self, graph: Graph, trainer: Trainer, enabled: bool):
        self.rows = []
        if not enabled:
            return
        for node_name, tensor in dropout_layers(graph).items():
            node = next(n for n in graph.nodes if n.name == node_name)
            c_o = int(np.count_nonzero(graph.initializers[tensor]))
            self.rows.append((node_name, tensor, dropout_ratio(node, graph), c_o))

    def apply(self, trainer: Trainer) -> dict[str, tuple[float, float]]:
        out = {}
        for node_name, tensor, d_o, c_o in self.rows:
            m = trainer.masks.get(tensor)
            c_r = int(np.count_nonzero(m)) if m is not None else c_o
            trainer.dropout_ratios[node_name] = adjusted_dropout(d_o, c_o, c_r)
            out[node_name] = (d_o, trainer.dropout_ratios[node_name])
        return out


def _eval(trainer: Trainer, data: dict) -> float | None:
    if data.get("x_test") is None or data.get("y_test") is None:
        return None
    return trainer.error_rate(data["x_test"], data["y_test"])


def prune_and_retrain(graph: Graph, data: dict, sparsity: float | dict[str, float], *, schedule: str = "gradual",
                      epochs: int = 10, rounds: int = 3, prune_end: float = 0.6, frequency: int | None = None,
                      lr: float = 0.01, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 1e-4,
                      lr_schedule="cosine", batch_size: int = 64, seed: int = 0, adjust_dropout: bool = True,
                      evaluate: bool = True, progress: bool = False) -> tuple[Graph, dict]:
    """Prune the weight tensors to their target sparsity by magnitude and retrain the survivors; pruned weights are
    exactly 0.0 in the returned graph and never change once pruned.

    sparsity: one fraction for every weight tensor, or {tensor or node name: fraction} (others are not pruned).
    schedule: "oneshot" (prune, then `epochs` of retraining); "iterative" (Han: `rounds` rounds of prune then
    retrain, each removing the same fraction of what is left, epochs split between them); "gradual" (Zhu & Gupta:
    masks updated every `frequency` steps along the cubic schedule over the first `prune_end` of the steps, then
    fine-tuning with the final masks).
    lr: Han retrains at 1/10 of the original learning rate. Dropout ratios follow D_r = D_o * sqrt(C_r / C_o) when
    adjust_dropout. Weights that are already exactly 0.0 count as pruned from the start.
    Returns (graph with the retrained weights, report) where the report holds the targets, the kept fraction per
    tensor, the masks, test errors before pruning / right after one-shot pruning / after retraining (when data has
    x_test), the training history, the dropout ratios and the seconds taken.
    """
    if schedule not in ("oneshot", "iterative", "gradual"):
        raise ValueError(f"schedule must be 'oneshot', 'iterative' or 'gradual', found {schedule!r}")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 0:
        raise ValueError(f"epochs must be an integer >= 0, found {epochs!r}")
    if not 0.0 <= prune_end <= 1.0:
        raise ValueError(f"prune_end must be in [0, 1], found {prune_end}")
    if int(rounds) < 1:
        raise ValueError(f"rounds must be >= 1, found {rounds}")
    t0 = time.perf_counter()
    targets = resolve_sparsity(graph, sparsity)
    start_masks = {k: graph.initializers[k] != 0 for k in targets}
    trainer = Trainer(graph, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                      schedule=lr_schedule, batch_size=batch_size, seed=seed, masks=start_masks)
    rule = _DropoutRule(graph, trainer, adjust_dropout)
    report: dict = {"schedule": schedule, "targets": dict(targets), "epochs": int(epochs)}
    if evaluate:
        report["error_before"] = _eval(trainer, data)
        saved = {k: trainer.params[k].copy() for k in targets}
        saved_masks = dict(trainer.masks)
        update_masks(trainer, targets)
        report["error_pruned_no_retraining"] = _eval(trainer, data)
        for k in targets:
            trainer.params[k][...] = saved[k]
            trainer.set_mask(k, saved_masks[k])
    history: list[dict] = []

    if schedule == "oneshot":
        update_masks(trainer, targets)
        rule.apply(trainer)
        history.append(trainer.fit(data, int(epochs), evaluate=evaluate, progress=progress, desc="retrain"))
    elif schedule == "iterative":
        per_round = [int(epochs) // int(rounds)] * int(rounds)
        per_round[-1] += int(epochs) - sum(per_round)
        for r in range(1, int(rounds) + 1):
            step_targets = {k: 1.0 - (1.0 - s) ** (r / int(rounds)) for k, s in targets.items()}
            if r == int(rounds):
                step_targets = dict(targets)  # exactly the target at the end, whatever the rounding
            update_masks(trainer, step_targets)
            rule.apply(trainer)
            history.append(trainer.fit(data, per_round[r - 1], evaluate=evaluate, progress=progress,
                                       desc=f"retrain {r}/{rounds}"))
    else:
        n = len(data["x_train"])
        total = max(1, int(epochs) * math.ceil(n / batch_size))
        end = int(round(prune_end * total))
        freq = int(frequency) if frequency else max(1, min(100, end // 10 if end >= 10 else 1))
        done = {"final": False}

        def on_step(tr: Trainer, step: int, _total: int) -> None:
            if done["final"]:
                return
            if step >= end:
                update_masks(tr, targets)
                rule.apply(tr)
                done["final"] = True
            elif step % freq == 0:
                update_masks(tr, {k: cubic_sparsity(step, end, s) for k, s in targets.items()})
                rule.apply(tr)

        history.append(trainer.fit(data, int(epochs), on_step=on_step, evaluate=evaluate, progress=progress,
                                   desc="prune+retrain"))
        if not done["final"]:  # zero epochs: nothing ran, prune anyway
            update_masks(trainer, targets)
            rule.apply(trainer)

    report["dropout"] = rule.apply(trainer)
    if evaluate:
        report["error_after"] = _eval(trainer, data)
    out = trainer.export()
    report["masks"] = {k: trainer.masks[k].copy() for k in targets}
    report["kept"] = {k: float(np.count_nonzero(out.initializers[k])) / out.initializers[k].size for k in targets}
    report["history"] = history
    report["seconds"] = time.perf_counter() - t0
    return out, report


# ------------------------------------------------------------------------------------------ sensitivity scan

@dataclass
class SensitivityScan:
    """Test error when one weight tensor at a time is pruned to each sparsity (no retraining)."""

    layers: list[str]
    sparsities: list[float]
    errors: np.ndarray  # (layers, sparsities)
    reference_error: float
    sizes: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        head = ["tensor", "#weights"] + [f"{100 * s:g}%" for s in self.sparsities]
        rows = [[name, str(self.sizes.get(name, ""))] + [f"{100 * e:.2f}" for e in self.errors[i]]
                for i, name in enumerate(self.layers)]
        widths = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]

        def fmt(r):
            return "  ".join(v.rjust(w) if c else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths)))

        lines = [f"test error (%) with one tensor pruned to the sparsity (reference {100 * self.reference_error:.2f}%)",
                 fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
        return "\n".join(lines)

    def choose(self, max_drop: float) -> dict[str, float]:
        """Per tensor, the largest scanned sparsity whose error, and the error of every smaller scanned sparsity,
        is at most the reference + max_drop percentage points."""
        out = {}
        order = np.argsort(self.sparsities)
        for i, name in enumerate(self.layers):
            best = 0.0
            for j in order:
                if self.errors[i, j] - self.reference_error > max_drop / 100.0 + 1e-12:
                    break
                best = float(self.sparsities[j])
            out[name] = best
        return out

    def plot(self, path) -> bool:
        """Error vs sparsity, one line per tensor, to an image file; False (and nothing written) without
        matplotlib."""
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, name in enumerate(self.layers):
            ax.plot(100 * np.asarray(self.sparsities), 100 * self.errors[i], marker="o", label=name)
        ax.axhline(100 * self.reference_error, color="gray", linestyle="--", label="reference")
        ax.set_xlabel("weights removed (%)")
        ax.set_yscale("log")  # the interesting part is the first few tenths of a point above the reference
        ax.set_ylabel("test error (%)")
        ax.set_title("sensitivity of each layer to pruning (no retraining)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return True


def sensitivity_scan(graph: Graph, data: dict, sparsities=DEFAULT_SCAN, layers: list[str] | None = None, *,
                     max_samples: int | None = None) -> SensitivityScan:
    """Prune one weight tensor at a time to each sparsity and measure the error on data["x_val"] / ["y_val"] when
    present, else on x_test / y_test (the first max_samples of them)."""
    key = "val" if data.get("x_val") is not None else "test"
    x, y = data.get(f"x_{key}"), data.get(f"y_{key}")
    if x is None or y is None:
        raise ValueError("sensitivity_scan: data needs x_val / y_val or x_test / y_test")
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    names = list(weight_layers(graph)) if layers is None else list(layers)
    all_layers = weight_layers(graph)
    by_node = {node: t for t, node in all_layers.items()}
    names = [n if n in all_layers else by_node.get(n, n) for n in names]
    for n in names:
        if n not in all_layers:
            raise ValueError(f"sensitivity_scan: '{n}' is not a prunable weight (weights: {sorted(all_layers)})")
    sp = [float(s) for s in sparsities]
    if any(not 0.0 <= s <= 1.0 for s in sp):
        raise ValueError(f"sensitivity_scan: sparsities must be in [0, 1], found {sp}")
    trainer = Trainer(graph)
    ref = trainer.error_rate(x, y)
    errors = np.empty((len(names), len(sp)))
    for i, name in enumerate(names):
        original = trainer.params[name].copy()
        for j, s in enumerate(sp):
            trainer.params[name][...] = np.where(mask_by_sparsity(original, s), original, 0)
            errors[i, j] = trainer.error_rate(x, y)
        trainer.params[name][...] = original
    sizes = {n: int(graph.initializers[n].size) for n in names}
    return SensitivityScan(names, sp, errors, ref, sizes)


def auto_prune(graph: Graph, data: dict, max_drop: float, *, scan: SensitivityScan | None = None,
               scan_drop: float = 8.0, tries: int = 4, **retrain) -> tuple[Graph, dict]:
    """Per-layer sparsities for a target accuracy drop: choose them from the sensitivity scan with a budget of
    `scan_drop` percentage points per layer (retraining recovers most of a one-shot loss, so it may exceed
    max_drop), prune and retrain (keyword arguments go to prune_and_retrain), and halve the budget until the
    retrained test error is within max_drop points of the input model's. Returns the first result that meets the
    target, else the last one tried with report["met"] False."""
    if data.get("x_test") is None:
        raise ValueError("auto_prune: data needs x_test / y_test to measure the drop")
    scan = scan or sensitivity_scan(graph, data)
    reference = scan.reference_error
    retrain["evaluate"] = True  # the drop is measured on the retrained model
    budget = float(scan_drop)
    attempts = []
    out = rep = None
    for _ in range(max(1, int(tries))):
        chosen = {k: s for k, s in scan.choose(budget).items() if s > 0}
        if not chosen:
            break
        out, rep = prune_and_retrain(graph, data, chosen, **retrain)
        drop = 100 * (rep["error_after"] - reference)
        attempts.append({"scan_drop": budget, "sparsity": chosen, "error": rep["error_after"], "drop_pp": drop})
        if drop <= max_drop:
            rep.update(met=True, attempts=attempts, scan=scan)
            return out, rep
        budget /= 2
    if out is None:
        out, rep = graph, {"error_after": reference, "kept": {}}
    rep.update(met=False, attempts=attempts, scan=scan)
    return out, rep
