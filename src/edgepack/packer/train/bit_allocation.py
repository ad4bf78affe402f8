"""Per-layer codebook bits for a size target: a scan of the test error with one tensor at a time weight-shared at
each candidate width (k-means, no tuning), and a greedy path from the most precise setting that each step lowers
the one layer whose next width saves the most bits per point of predicted error."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..cluster import quantize
from ..graph import Graph
from .engine import Trainer
from .prune_retrain import weight_layers

# Widths tried, most precise first. Conv layers get two more bits (capped at 8): the paper finds them the more
# sensitive (conv accuracy drops below 4 bits, fully connected layers hold down to 2).
FC_BITS = (6, 5, 4, 3, 2)
CONV_BITS = (8, 7, 6, 5, 4)


def candidate_bits(graph: Graph) -> dict[str, tuple[int, ...]]:
    """Per prunable weight tensor the widths to try: CONV_BITS for a Conv's weight, FC_BITS for the others."""
    conv = {n.inputs[1] for n in graph.nodes if n.op == "Conv" and len(n.inputs) > 1}
    return {k: (CONV_BITS if k in conv else FC_BITS) for k in weight_layers(graph)}


@dataclass
class BitsScan:
    """Test error with one tensor weight-shared at each candidate width (the others as they are)."""

    layers: list[str]
    bits: dict[str, tuple[int, ...]]
    errors: dict[str, dict[int, float]]
    reference_error: float
    kept: dict[str, int] = field(default_factory=dict)  # nonzero weights per tensor: the entries that carry codes

    def table(self) -> str:
        widths = sorted({b for bs in self.bits.values() for b in bs}, reverse=True)
        head = ["tensor", "kept"] + [f"{b} bits" for b in widths]
        rows = [[name, str(self.kept.get(name, ""))]
                + [f"{100 * self.errors[name][b]:.2f}" if b in self.errors[name] else "-" for b in widths]
                for name in self.layers]
        cols = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]

        def fmt(r):
            return "  ".join(v.rjust(w) if c else v.ljust(w) for c, (v, w) in enumerate(zip(r, cols)))

        return "\n".join([f"test error (%) with one tensor weight-shared at the width, k-means without tuning "
                          f"(model before: {100 * self.reference_error:.2f}%)", fmt(head),
                          fmt(["-" * w for w in cols])] + [fmt(r) for r in rows])

    def path(self, budget: float) -> list[dict[str, int]]:
        """Settings from every layer at its most precise width towards fewer bits: each step lowers the layer whose
        next width saves the most code bits (kept weights x bits) per unit of predicted error increase, where the
        predicted increase of a setting is the sum over layers of their scanned increase (floored at 0); a step is
        taken only while that sum stays within `budget` (fraction, e.g. 0.001 for 0.1 pp). The first setting is
        always the most precise one; the last is the fewest bits the prediction allows."""
        level = {k: 0 for k in self.layers}

        def rise(name: str, i: int) -> float:
            return max(0.0, self.errors[name][self.bits[name][i]] - self.reference_error)

        out = [{k: self.bits[k][0] for k in self.layers}]
        used = sum(rise(k, 0) for k in self.layers)
        floor = 1e-6  # a step that costs nothing predicted still ranks by the bits it saves
        while True:
            best, best_score = None, -1.0
            for k in self.layers:
                i = level[k]
                if i + 1 >= len(self.bits[k]):
                    continue
                extra = rise(k, i + 1) - rise(k, i)
                if used + extra > budget + 1e-12:
                    continue
                saved = self.kept.get(k, 1) * (self.bits[k][i] - self.bits[k][i + 1])
                score = saved / max(extra, floor)
                if score > best_score:
                    best, best_score = k, score
            if best is None:
                return out
            used += rise(best, level[best] + 1) - rise(best, level[best])
            level[best] += 1
            out.append({k: self.bits[k][level[k]] for k in self.layers})


def bits_scan(graph: Graph, data: dict, bits: dict[str, tuple[int, ...]] | None = None, *,
              max_samples: int | None = None, seed: int = 0) -> BitsScan:
    """Weight-share one tensor at a time at each candidate width (packer.cluster.quantize over its nonzero entries,
    code 0 kept for the pruned ones, linear init) and measure the error on x_val / y_val when present, else on
    x_test / y_test (the first max_samples). bits: per tensor the widths (default candidate_bits(graph))."""
    key = "val" if data.get("x_val") is not None else "test"
    x, y = data.get(f"x_{key}"), data.get(f"y_{key}")
    if x is None or y is None:
        raise ValueError("bits_scan: data needs x_val / y_val or x_test / y_test")
    if max_samples is not None:
        x, y = x[:max_samples], y[:max_samples]
    widths = candidate_bits(graph) if bits is None else {k: tuple(int(b) for b in v) for k, v in bits.items()}
    layers = weight_layers(graph)
    for name, bs in widths.items():
        if name not in layers:
            raise ValueError(f"bits_scan: '{name}' is not a prunable weight (weights: {sorted(layers)})")
        if not bs or any(not 1 <= b <= 16 for b in bs) or list(bs) != sorted(set(bs), reverse=True):
            raise ValueError(f"bits_scan: widths of '{name}' must be distinct integers in 1..16, most precise "
                             f"first, found {bs}")
    trainer = Trainer(graph)
    reference = trainer.error_rate(x, y)
    errors: dict[str, dict[int, float]] = {}
    kept: dict[str, int] = {}
    for name, bs in widths.items():
        original = trainer.params[name].copy()
        w = graph.initializers[name]
        mask = w != 0
        kept[name] = int(np.count_nonzero(mask))
        errors[name] = {}
        for b in bs:
            codebook, codes = quantize(w, mask, b, reserve_zero=not mask.all(), seed=seed)
            trainer.params[name][...] = np.where(mask, codebook[codes], 0)
            errors[name][b] = trainer.error_rate(x, y)
        trainer.params[name][...] = original
    return BitsScan(list(widths), widths, errors, reference, kept)
