"""Trained quantization (Han, Mao, Dally 2016, section 3): per-layer k-means weight sharing (packer.cluster), then
the centroids fine-tuned with the gradient grouped by code, dL/dC_k = sum of dL/dW over the weights of code k, with
codes and pruning mask fixed. The tuned weights take at most 2**bits distinct values per layer (2**bits - 1 nonzero
ones plus 0.0 when pruned), so the packer's own k-means at the same bits reproduces them exactly."""
from __future__ import annotations

import time

import numpy as np

from ..cluster import quantize
from ..graph import Graph
from .engine import Trainer
from .prune_retrain import weight_layers


def grouped_gradient(weight_grad: np.ndarray, codes: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    """dL/dC_j = sum of weight_grad over the kept entries (mask True) whose code is j, for j < k (float64 sums)."""
    weight_grad = np.asarray(weight_grad)
    if codes.shape != weight_grad.shape or mask.shape != weight_grad.shape:
        raise ValueError(f"grouped_gradient: gradient {weight_grad.shape}, codes {codes.shape} and mask "
                         f"{mask.shape} must have the same shape")
    return np.bincount(codes[mask].astype(np.int64), weights=weight_grad[mask].astype(np.float64), minlength=k)


class SharedWeights:
    """A weight rebuilt from a trainable codebook and fixed codes: W = codebook[codes] where mask, else 0.0."""

    def __init__(self, codebook: np.ndarray, codes: np.ndarray, mask: np.ndarray, dtype=np.float32):
        codes = np.asarray(codes)
        mask = np.asarray(mask, dtype=bool)
        if codes.shape != mask.shape:
            raise ValueError(f"SharedWeights: codes {codes.shape} and mask {mask.shape} differ in shape")
        if codes.size and int(codes.max()) >= len(codebook):
            raise ValueError(f"SharedWeights: code {int(codes.max())} >= codebook size {len(codebook)}")
        self.codebook = np.array(codebook, dtype=dtype)
        self.codes = codes
        self.mask = mask
        self.variables = {"codebook": self.codebook}

    def weight(self) -> np.ndarray:
        return np.where(self.mask, self.codebook[self.codes], self.codebook.dtype.type(0))

    def grads(self, weight_grad: np.ndarray) -> dict[str, np.ndarray]:
        g = grouped_gradient(weight_grad, self.codes, self.mask, len(self.codebook))
        return {"codebook": g.astype(self.codebook.dtype)}


def resolve_bits(graph: Graph, bits: int | dict[str, int]) -> dict[str, int]:
    """Codebook bits per weight tensor from one number for every layer, or {tensor or node name: bits} (layers not
    named stay float)."""
    layers = weight_layers(graph)
    if isinstance(bits, dict):
        by_node = {node: t for t, node in layers.items()}
        out = {}
        for key, b in bits.items():
            name = key if key in layers else by_node.get(key)
            if name is None:
                raise ValueError(f"bits for '{key}': no weight tensor or node of that name (weights: {sorted(layers)})")
            out[name] = b
    else:
        out = {t: bits for t in layers}
    for k, b in out.items():
        if isinstance(b, bool) or int(b) != b or not 1 <= b <= 16:
            raise ValueError(f"bits for '{k}' must be an integer in 1..16, found {b!r}")
        out[k] = int(b)
    return out


def quantize_and_tune(graph: Graph, data: dict, bits: int | dict[str, int], *, epochs: int = 2, lr: float = 1e-4,
                      optimizer: str = "adam", momentum: float = 0.9, lr_schedule="cosine", batch_size: int = 64,
                      seed: int = 0, masks: dict[str, np.ndarray] | None = None, tune_others: bool = False,
                      weight_decay: float = 0.0, init: str = "linear", evaluate: bool = True,
                      progress: bool = False) -> tuple[Graph, dict]:
    """Weight-share each named tensor with a 2**bits-entry codebook (k-means, packer.cluster.quantize, code 0 = 0.0
    reserved for pruned entries when the tensor has any), then fine-tune the centroids for `epochs` with codes and
    masks fixed. The mask of a tensor is masks[name] when given, else its nonzero entries.

    tune_others: also train the parameters that are not weight-shared (biases, BatchNormalization, float layers),
    with weight_decay on their weights; by default only the centroids change. Centroids get no weight decay.
    Returns (graph with the weights replaced by codebook[codes], report) where the report holds per tensor the
    codebook and codes, "pack_config" (the packer config that reproduces exactly these weights), test errors after
    k-means and after tuning (when data has x_test), the training history and the seconds taken.
    """
    t0 = time.perf_counter()
    targets = resolve_bits(graph, bits)
    shared: dict[str, SharedWeights] = {}
    fixed_masks: dict[str, np.ndarray] = {}
    for name, b in targets.items():
        w = graph.initializers[name]
        m = (w != 0) if masks is None or name not in masks else np.asarray(masks[name], dtype=bool)
        if m.shape != w.shape:
            raise ValueError(f"mask for '{name}': shape {m.shape} differs from the weight's {w.shape}")
        codebook, codes = quantize(w, m, b, reserve_zero=not m.all(), init=init, seed=seed)
        shared[name] = SharedWeights(codebook, codes, m)
        fixed_masks[name] = m
    others = []
    if tune_others:
        probe = Trainer(graph)
        others = [k for k in probe.params if k not in shared]
    trainer = Trainer(graph, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                      schedule=lr_schedule, batch_size=batch_size, seed=seed, masks=fixed_masks,
                      trainable=others, parametrizations=shared)
    report: dict = {"bits": dict(targets), "epochs": int(epochs), "tune_others": tune_others}
    has_test = evaluate and data.get("x_test") is not None
    if has_test:
        report["error_quantized"] = trainer.error_rate(data["x_test"], data["y_test"])
    report["history"] = trainer.fit(data, int(epochs), evaluate=evaluate, progress=progress, desc="tune centroids")
    if has_test:
        report["error_tuned"] = trainer.error_rate(data["x_test"], data["y_test"])
    out = trainer.export()
    report["codebooks"] = {k: s.codebook.astype(np.float32) for k, s in shared.items()}
    report["codes"] = {k: s.codes.copy() for k, s in shared.items()}
    report["masks"] = {k: m.copy() for k, m in fixed_masks.items()}
    report["pack_config"] = pack_config(out, targets)
    report["seconds"] = time.perf_counter() - t0
    return out, report


def pack_config(graph: Graph, bits: dict[str, int]) -> dict:
    """The packer config that stores these weight-shared tensors exactly: per tensor its fraction of exact zeros
    as the sparsity (the packer removes that many smallest magnitudes: exactly the zeros), the same bits, and no
    per-channel scales (k-means over <= 2**bits distinct values is then exact)."""
    layers = {}
    for name, b in bits.items():
        w = graph.initializers[name]
        zeros = int(w.size - np.count_nonzero(w))
        layers[name] = {"sparsity": zeros / w.size if w.size else 0.0, "bits": int(b), "channel_scales": False}
    return {"layers": layers}
