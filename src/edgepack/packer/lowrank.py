"""Low-rank factorisation: a fully connected weight W (N, K) (Gemm, transB = 1) or a 1x1 convolution's, replaced by
two thin factors from a truncated SVD, W ~ B @ A with A (r, K) and B (N, r), as two layers of the same op that then
pack like any other; only where r * (N + K) < N * K."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .graph import Graph, Node


def rank_for_energy(s: np.ndarray, energy: float) -> int:
    """The smallest r whose r largest singular values (s, in descending order) keep at least `energy` of sum s^2."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy {energy} must be in (0, 1]")
    sq = np.asarray(s, np.float64) ** 2
    total = float(sq.sum())
    if sq.size == 0 or total == 0.0:
        return 1
    kept = np.cumsum(sq) / total
    # a relative slack of a few ulps so that energy 1.0 (or a value hit exactly) is not missed by rounding
    r = int(np.searchsorted(kept, energy - 4 * np.finfo(np.float64).eps * sq.size)) + 1
    return min(r, int(sq.size))


def factor(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A (r, K), B (N, r), singular values) with B @ A the best rank-r approximation of w (N, K) in the Frobenius
    norm. The singular values are split as sqrt into both factors, so that the two have like magnitudes (each gets
    one codebook range)."""
    if w.ndim != 2:
        raise ValueError(f"factor() takes a matrix, found shape {w.shape}")
    if not 1 <= rank <= min(w.shape):
        raise ValueError(f"rank {rank} must be in [1, {min(w.shape)}] for a {w.shape[0]}x{w.shape[1]} matrix")
    u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    a, b = _factors(u, s, vt, rank)
    return a, b, s


def _factors(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    root = np.sqrt(s[:rank])
    a = (root[:, None] * vt[:rank]).astype(np.float32)
    b = (u[:, :rank] * root[None, :]).astype(np.float32)
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def eligible(graph: Graph) -> dict[str, Node]:
    """Weight tensor -> node, for every Gemm (transA = 0, transB = 1) with a constant 2-D float32 weight and every
    group-1 convolution with a constant float32 weight whose kernel is all ones, the weight read by that node only."""
    consumers = graph.consumers()
    found: dict[str, Node] = {}
    for n in graph.nodes:
        if len(n.inputs) < 2 or n.inputs[1] not in graph.initializers or len(consumers.get(n.inputs[1], [])) != 1:
            continue
        w = graph.initializers[n.inputs[1]]
        if w.dtype != np.float32:
            continue
        if n.op == "Gemm" and w.ndim == 2 and n.attr("transB", 0) == 1 and n.attr("transA", 0) == 0:
            found[n.inputs[1]] = n
        elif n.op == "Conv" and w.ndim >= 3 and all(d == 1 for d in w.shape[2:]) and n.attr("group", 1) == 1:
            found[n.inputs[1]] = n
    return found


def saves(n_out: int, n_in: int, rank: int) -> bool:
    return rank * (n_out + n_in) < n_out * n_in


def factorise(graph: Graph, low_rank: float | int | Mapping[str, float | int]) -> tuple[Graph, dict[str, int]]:
    """Replace the chosen weights by two factors; return the new graph and {original weight tensor: rank} of what
    was factorised. low_rank: a single energy fraction in (0, 1] for every eligible layer, or {tensor or node name:
    rank (int >= 1) or energy (float in (0, 1])}. A layer whose rank would not save parameters is left as it is."""
    layers = eligible(graph)
    by_node = {n.name: t for t, n in layers.items()}
    if isinstance(low_rank, Mapping):
        wanted = {}
        for key, value in low_rank.items():
            tensor = key if key in layers else by_node.get(key)
            if tensor is None:
                raise ValueError(f"low_rank names '{key}', which is not the weight (or node) of a fully connected or "
                                 f"1x1 convolution layer; eligible: {', '.join(sorted(layers)) or '(none)'}")
            wanted[tensor] = _check_amount(value, f"low_rank['{key}']")
    else:
        amount = _check_amount(low_rank, "low_rank")
        if isinstance(amount, int):
            raise ValueError(f"low_rank = {low_rank}: a single value for all layers must be an energy fraction in "
                             f"(0, 1]; give ranks per layer as {{tensor: rank}}")
        wanted = {t: amount for t in layers}

    out = Graph(graph.name, graph.inputs, graph.outputs, list(graph.nodes), dict(graph.initializers), graph.opset,
                graph.source_params)
    taken = set(out.initializers) | {o for n in out.nodes for o in n.outputs} | {v.name for v in out.inputs}
    node_names = {n.name for n in out.nodes}
    done: dict[str, int] = {}
    for tensor, amount in wanted.items():
        node = layers[tensor]
        w = graph.initializers[tensor]
        n_out, n_in = w.shape[0], math.prod(w.shape[1:])
        m = w.reshape(n_out, n_in)
        if isinstance(amount, int) and not saves(n_out, n_in, min(amount, n_out, n_in)):
            continue  # decided before paying for the SVD
        u, s, vt = np.linalg.svd(m.astype(np.float64), full_matrices=False)
        rank = min(amount, n_out, n_in) if isinstance(amount, int) else rank_for_energy(s, amount)
        if not saves(n_out, n_in, rank):
            continue
        a, b = _factors(u, s, vt, rank)
        first, second = _split_node(node, tensor, a, b, w.shape, out, taken, node_names)
        i = out.nodes.index(node)
        out.nodes[i:i + 1] = [first, second]
        del out.initializers[tensor]
        done[tensor] = rank
    return out, done


def _check_amount(value, where: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} = {value!r}: expected a rank (int >= 1) or an energy fraction (float in (0, 1])")
    if isinstance(value, (int, np.integer)):
        if value < 1:
            raise ValueError(f"{where} = {value}: a rank must be >= 1")
        return int(value)
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{where} = {value}: an energy fraction must be in (0, 1]")
    return float(value)


def _fresh(base: str, taken: set[str]) -> str:
    name = base
    i = 1
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name


def _split_node(node: Node, tensor: str, a: np.ndarray, b: np.ndarray, shape: tuple, g: Graph, taken: set[str],
                node_names: set[str]) -> tuple[Node, Node]:
    """x -> node(W) becomes x -> first(A) -> second(B) -> the node's output; the bias (and Gemm's beta) goes to the
    second, Gemm's alpha to the first, a convolution's strides and pads to the first (its 1x1 kernel makes the
    second pointwise on the first's output grid)."""
    rank = a.shape[0]
    spatial = tuple(shape[2:])
    a_name = _fresh(f"{tensor}.lowrank_in", taken)
    b_name = _fresh(f"{tensor}.lowrank_out", taken)
    mid = _fresh(f"{node.outputs[0]}.lowrank", taken)
    g.initializers[a_name] = a.reshape((rank, shape[1]) + spatial)
    g.initializers[b_name] = b.reshape((shape[0], rank) + tuple(1 for _ in spatial))
    bias = node.inputs[2:3] if len(node.inputs) > 2 and node.inputs[2] else []
    if node.op == "Gemm":
        first_attrs = {"transB": ("int", 1)}
        if "alpha" in node.attrs:
            first_attrs["alpha"] = node.attrs["alpha"]
        second_attrs = {"transB": ("int", 1)}
        if "beta" in node.attrs:
            second_attrs["beta"] = node.attrs["beta"]
    else:
        first_attrs = {k: v for k, v in node.attrs.items() if k != "group"}
        second_attrs = {"kernel_shape": node.attrs["kernel_shape"]} if "kernel_shape" in node.attrs else {}
    first = Node(node.op, _fresh(f"{node.name}.lowrank_in", node_names), [node.inputs[0], a_name], [mid],
                 first_attrs)
    second = Node(node.op, _fresh(f"{node.name}.lowrank_out", node_names), [mid, b_name] + bias,
                  list(node.outputs), second_attrs)
    return first, second
