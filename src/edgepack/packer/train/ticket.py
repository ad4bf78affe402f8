"""Lottery tickets (Frankle & Carbin 2019; late rewinding: Frankle et al. 2020): iterative magnitude pruning per layer
with the surviving weights rewound to their initial values (or to their values after K training steps) before each
round of retraining, and the control that re-initialises the survivors randomly instead."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..graph import Graph
from .engine import Trainer, copy_graph, init_parameters
from .prune_retrain import weight_layers


def parse_rewind(rewind: str) -> int:
    """"init" -> 0, "iteration:K" -> K (the training step whose weights the survivors return to)."""
    if rewind == "init":
        return 0
    if isinstance(rewind, str) and rewind.startswith("iteration:"):
        try:
            k = int(rewind.split(":", 1)[1])
        except ValueError:
            k = -1
        if k >= 0:
            return k
    raise ValueError(f"rewind must be 'init' or 'iteration:K' with an integer K >= 0, found {rewind!r}")


def rewound(snapshot: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The snapshot's values with the pruned entries (mask False) at exactly 0.0; unmasked tensors as they are."""
    out = {}
    for k, v in snapshot.items():
        out[k] = np.where(masks[k], v, v.dtype.type(0)) if k in masks else v.copy()
    return out


def prune_survivors(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray], fraction: float | dict[str, float],
                    layers: list[str]) -> dict[str, np.ndarray]:
    """New masks: per layer, remove `fraction` (one number, or {layer: fraction}) of the surviving weights, the
    smallest in magnitude."""
    out = {}
    for name in layers:
        m = masks[name]
        alive = int(np.count_nonzero(m))
        rate = fraction[name] if isinstance(fraction, dict) else fraction
        n_remove = int(round(rate * alive))
        # pruned entries sort first (magnitude -1), then survivors by |w|, ties by flat index (stable sort)
        mag = np.where(m, np.abs(np.asarray(weights[name], dtype=np.float64)), -1.0).ravel()
        order = np.argsort(mag, kind="stable")
        keep = m.ravel().copy()
        dead = m.size - alive
        keep[order[dead:dead + n_remove]] = False
        out[name] = keep.reshape(m.shape)
    return out


def _state(trainer: Trainer) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in list(trainer.params.items()) + list(trainer.buffers.items())}


def find_ticket(graph: Graph, data: dict, prune_fraction: float | dict[str, float] = 0.2, rounds: int = 5,
                epochs: int = 5, *, rewind: str = "init", control: bool = False,
                control_masks: list[dict[str, np.ndarray]] | None = None, seed: int = 0, init: str | None = None,
                lr: float = 0.05, optimizer: str = "sgd", momentum: float = 0.9, weight_decay: float = 0.0,
                lr_schedule="cosine", batch_size: int = 64, layers: list[str] | None = None,
                on_round_start: Callable[[int, Trainer], None] | None = None,
                progress: bool = False) -> tuple[Graph, dict]:
    """Iterative magnitude pruning with rewinding. Round 0 trains the dense network from its initial values
    (the graph's own, or freshly drawn with scheme `init` and `seed`); each of `rounds` further rounds removes
    `prune_fraction` of the surviving weights of every prunable layer (smallest trained magnitudes), sets the
    survivors back to their values at the rewind point, "init" or "iteration:K" (after K steps of round 0), and
    trains again with the masks fixed. prune_fraction: one rate, or {tensor or node name: rate} for every pruned
    layer (Frankle & Carbin prune the output layer at half the rate of the others).
    control=True draws fresh random values for the survivors instead (seed + round, scheme `init`, else he_normal),
    keeping the masks: the control that shows whether the initial values matter. With control_masks (a winning
    ticket's report["masks"], one dict per round) each round trains those masks from fresh values: Frankle &
    Carbin's control ("retain the structure of a winning ticket but sample a new initialisation"); without them the
    control prunes its own trained nets.

    on_round_start(round, trainer) runs after rewinding, before training. Returns (graph of the last round,
    report) with per round the % of prunable weights left, the test error, per layer the kept fraction, and the
    masks (report["masks"][r], one bool array per layer)."""
    rates = prune_fraction.values() if isinstance(prune_fraction, dict) else [prune_fraction]
    if not rates or any(isinstance(r, bool) or not 0.0 < r < 1.0 for r in rates):
        raise ValueError(f"find_ticket: prune_fraction must be in (0, 1) (one number or per layer), found "
                         f"{prune_fraction}")
    if control_masks is not None and not control:
        raise ValueError("find_ticket: control_masks are for the control run (control=True)")
    if control_masks is not None and len(control_masks) < int(rounds) + 1:
        raise ValueError(f"find_ticket: control_masks has {len(control_masks)} rounds, {int(rounds) + 1} needed")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
        raise ValueError(f"find_ticket: rounds must be an integer >= 0, found {rounds!r}")
    if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
        raise ValueError(f"find_ticket: epochs must be an integer >= 1, found {epochs!r}")
    rewind_step = parse_rewind(rewind)
    t0 = time.perf_counter()
    start = init_parameters(graph, seed=seed, scheme=init) if init else copy_graph(graph)
    names = list(weight_layers(start)) if layers is None else list(layers)
    all_layers = weight_layers(start)
    by_node = {node: t for t, node in all_layers.items()}
    names = [n if n in all_layers else by_node.get(n, n) for n in names]
    unknown = [n for n in names if n not in all_layers]
    if unknown:
        raise ValueError(f"find_ticket: {unknown} are not prunable weights (weights: {sorted(all_layers)})")
    if isinstance(prune_fraction, dict):
        rate = {}
        for key, r in prune_fraction.items():
            name = key if key in all_layers else by_node.get(key)
            if name is None or name not in names:
                raise ValueError(f"find_ticket: prune_fraction for '{key}': not one of the pruned weights {names}")
            rate[name] = float(r)
        missing = [n for n in names if n not in rate]
        if missing:
            raise ValueError(f"find_ticket: prune_fraction gives no rate for {missing}")
        prune_fraction = rate
    total_weights = sum(int(start.initializers[k].size) for k in names)
    kw = dict(lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay, schedule=lr_schedule,
              batch_size=batch_size, seed=seed)
    has_test = data.get("x_test") is not None and data.get("y_test") is not None
    masks = {k: np.ones(start.initializers[k].shape, dtype=bool) for k in names}
    snapshot: dict[str, np.ndarray] = {}
    rows: list[dict] = []
    mask_history: list[dict[str, np.ndarray]] = []
    out = start
    bar = None
    if progress:
        import sys

        from tqdm import tqdm
        bar = tqdm(total=int(rounds) + 1, desc="ticket" + (" (control)" if control else ""), unit="round",
                   file=sys.stderr, leave=False)
    trained: Graph = start
    for r in range(int(rounds) + 1):
        if r == 0:
            trainer = Trainer(start, masks=masks, **kw)
            snapshot = _state(trainer) if rewind_step == 0 else {}

            def on_step(tr: Trainer, step: int, _total: int) -> None:
                if step == rewind_step and not snapshot:
                    snapshot.update(_state(tr))
        else:
            if control_masks is not None:
                masks = {k: np.asarray(control_masks[r][k], dtype=bool) for k in names}
            else:
                masks = prune_survivors(trained.initializers, masks, prune_fraction, names)
            if control:
                fresh = init_parameters(start, seed=seed + r, scheme=init or "he_normal")
                values = {k: fresh.initializers[k] for k in snapshot}
            else:
                values = snapshot
            inits = {k: v.copy() for k, v in start.initializers.items()}
            for k, v in rewound(values, masks).items():
                inits[k] = v.astype(start.initializers[k].dtype)
            trainer = Trainer(copy_graph(start, inits), masks=masks, **kw)
            on_step = None
        mask_history.append({k: m.copy() for k, m in masks.items()})
        if on_round_start is not None:
            on_round_start(r, trainer)
        hist = trainer.fit(data, int(epochs), on_step=on_step, evaluate=False)
        if r == 0 and not snapshot:
            raise ValueError(f"find_ticket: rewind step {rewind_step} is beyond the {len(hist['loss'])} epochs of "
                             f"round 0 (steps per epoch: {-(-len(data['x_train']) // batch_size)})")
        trained = trainer.export()
        left = sum(int(np.count_nonzero(masks[k])) for k in names)
        row = {"round": r, "weights_left_pct": 100.0 * left / total_weights,
               "kept": {k: float(np.count_nonzero(masks[k])) / masks[k].size for k in names},
               "train_loss": hist["loss"][-1]}
        if has_test:
            row["test_error"] = trainer.error_rate(data["x_test"], data["y_test"])
        rows.append(row)
        out = trained
        if bar is not None:
            post = {"left": f"{row['weights_left_pct']:.1f}%"}
            if has_test:
                post["test_err"] = f"{100 * row['test_error']:.2f}%"
            bar.set_postfix(post)
            bar.update(1)
    if bar is not None:
        bar.close()
    report = {"rewind": rewind, "control": bool(control), "control_masks": control_masks is not None,
              "prune_fraction": prune_fraction if isinstance(prune_fraction, dict) else float(prune_fraction),
              "epochs": int(epochs), "rounds": rows, "masks": mask_history, "layers": names,
              "seconds": time.perf_counter() - t0}
    return out, report


def ticket_table(report: dict) -> str:
    """The report's rounds as text: % of weights left and test error."""
    kind = "random re-init (control)" if report["control"] else f"rewind to {report['rewind']}"
    if report.get("control_masks"):
        kind = "random re-init of the ticket's masks (control)"
    rate = report["prune_fraction"]
    rate = (", ".join(f"{k} {100 * v:g}%" for k, v in rate.items()) if isinstance(rate, dict) else f"{100 * rate:g}%")
    lines = [f"lottery ticket, {kind}: {rate} of survivors pruned per round",
             "round  weights left  test error"]
    for row in report["rounds"]:
        err = f"{100 * row['test_error']:.2f}%" if "test_error" in row else "-"
        lines.append(f"{row['round']:5d}  {row['weights_left_pct']:11.2f}%  {err:>10}")
    return "\n".join(lines)
