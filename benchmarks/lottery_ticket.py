"""Lottery tickets on LeNet-300-100 (Frankle & Carbin, ICLR 2019, figure 3): iterative magnitude pruning of the
trained network with the survivors rewound to their initial values (the winning ticket), against the same pruning
with the survivors re-initialised at random (the control): test error vs % of weights left.

    python benchmarks/lottery_ticket.py [--rounds 15] [--prune-fraction 0.2] [--output-fraction 0.1] [--epochs 10]
        [--optimizer adam] [--lr 1.2e-3] [--batch-size 60] [--control ticket|own] [--quick] [--out benchmarks/out]

What is done, and where it departs from the paper:
- packer.train.ticket.find_ticket(rewind="init"): each round trains, removes 20% of the surviving weights of fc1 and
  fc2 and 10% of the output layer's (Frankle's rates; smallest magnitudes), rewinds the survivors to their initial
  values.
- The control, by default Frankle's: find_ticket(control=True, control_masks=the ticket's masks) trains, at every
  level, the winning ticket's own mask from a fresh random initialisation ("retain the structure of a winning ticket
  but sample a new initialisation"). `--control own` instead runs the rounds with re-initialised survivors whose
  next masks come from pruning that re-initialised network.
- Adam, learning rate 1.2e-3, batch 60, no weight decay, as Frankle's LeNet; He-normal initialisation (Frankle:
  Glorot normal). Frankle trains 50 000 iterations and reads the error at the early-stopping iteration on a
  validation set; here every round trains `--epochs` epochs (10: 10 000 iterations, to fit 15 minutes) with a
  cosine learning rate to 0, and the test error is read once, at the end (nothing is chosen on the test set).

Writes OUT/lottery_ticket.json, OUT/lottery_ticket.md (a table for benchmarks/README.md) and OUT/lottery_ticket.png
(test error vs % of weights left, log axis, decreasing).
"""
from __future__ import annotations

import os

# One BLAS thread unless told otherwise: on a busy 2-core machine OpenBLAS's second thread makes small-batch
# training many times slower (see deep_compression.py).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from edgepack.packer.bench import json_default, machine_line  # noqa: E402
from edgepack.packer.datasets import load_data  # noqa: E402
from edgepack.packer.graph import Graph  # noqa: E402
from edgepack.packer.train.mlp import mlp_graph  # noqa: E402
from edgepack.packer.train.ticket import find_ticket, ticket_table  # noqa: E402

LAYERS = ("fc1.weight", "fc2.weight", "fc3.weight")
SHAPES = ((784, 300), (300, 100), (100, 10))


def lenet300() -> Graph:
    """LeNet-300-100's graph with zero parameters (find_ticket draws the initial values)."""
    return mlp_graph([(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in SHAPES])


def _plot(rows: list[dict], control_label: str, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    left = [r["weights_left_pct"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(left, [100 * r["error_ticket"] for r in rows], "o-", color="tab:blue",
            label="winning ticket (rewind to init)")
    ax.plot(left, [100 * r["error_control"] for r in rows], "s--", color="tab:red", label=control_label)
    ax.axhline(100 * rows[0]["error_ticket"], color="gray", lw=0.8, ls=":", label="dense")
    ax.set_xscale("log")
    ax.set_xlim(max(left) * 1.15, min(left) / 1.15)  # decreasing: pruning proceeds to the right
    ticks = [100, 50, 20, 10, 5, 2, 1]
    ax.set_xticks([t for t in ticks if min(left) / 1.15 <= t <= max(left) * 1.15],
                  [f"{t}" for t in ticks if min(left) / 1.15 <= t <= max(left) * 1.15])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the round numbers above
    ax.set_xlabel("% of weights left")
    ax.set_ylabel("test error (%)")
    ax.set_title("LeNet-300-100 on MNIST: iterative magnitude pruning")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15, help="pruning rounds after the dense round 0")
    p.add_argument("--prune-fraction", type=float, default=0.2, help="of the survivors, per round, in fc1 and fc2")
    p.add_argument("--output-fraction", type=float, default=0.1, help="the same for the output layer fc3 (Frankle: "
                   "half the rate)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs per round")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    p.add_argument("--lr", type=float, default=1.2e-3)
    p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"))
    p.add_argument("--batch-size", type=int, default=60)
    p.add_argument("--init", default="he_normal", choices=("he_normal", "he_uniform", "lecun_uniform"))
    p.add_argument("--control", default="ticket", choices=("ticket", "own"),
                   help="ticket (default): the winning ticket's masks, re-initialised at random (Frankle's control); "
                   "own: find_ticket(control=True), masks from pruning the re-initialised nets")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: 2000 training and 2000 test images, 2 rounds of 1 epoch")
    p.add_argument("--out", default="benchmarks/out")
    a = p.parse_args()
    if a.quick:
        a.rounds, a.epochs = 2, 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    ds = load_data("mnist")
    if a.quick:  # a smoke run: small enough to finish in seconds on a busy machine
        ds = {"x_train": ds["x_train"][:2000], "y_train": ds["y_train"][:2000],
              "x_test": ds["x_test"][:2000], "y_test": ds["y_test"][:2000]}
    n_test = len(ds["y_test"])
    seconds["data"] = time.perf_counter() - t0
    kw = dict(lr=a.lr, optimizer=a.optimizer, weight_decay=0.0, lr_schedule=a.schedule, batch_size=a.batch_size)

    rates = {"fc1.weight": a.prune_fraction, "fc2.weight": a.prune_fraction, "fc3.weight": a.output_fraction}
    t0 = time.perf_counter()
    _, ticket = find_ticket(lenet300(), ds, rates, a.rounds, a.epochs, rewind="init", seed=a.seed,
                            init=a.init, progress=True, **kw)
    seconds["ticket"] = time.perf_counter() - t0
    print(ticket_table(ticket))

    t0 = time.perf_counter()
    masks = ticket["masks"] if a.control == "ticket" else None
    _, crep = find_ticket(lenet300(), ds, rates, a.rounds, a.epochs, rewind="init", control=True,
                          control_masks=masks, seed=a.seed, init=a.init, progress=True, **kw)
    control_rows = crep["rounds"]
    control_label = ("random re-init of the ticket's masks" if a.control == "ticket" else
                     "random re-init, own masks (find_ticket control)")
    print(ticket_table(crep))
    seconds["control"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    rows = []
    for t, c in zip(ticket["rounds"], control_rows):
        rows.append({"round": t["round"], "weights_left_pct": t["weights_left_pct"],
                     "control_weights_left_pct": c["weights_left_pct"],
                     "kept": t["kept"], "error_ticket": t["test_error"], "error_control": c["test_error"]})
    dense = rows[0]["error_ticket"]
    sparse = [r for r in rows if r["weights_left_pct"] <= 21.0]  # from round 7 on at 20% per round (fc1, fc2)
    best = min(rows, key=lambda r: (r["error_ticket"], -r["round"]))
    holds = rows[0]["weights_left_pct"]  # the sparsest level reached with every level before it <= dense
    for r in rows:
        if r["error_ticket"] > dense:
            break
        holds = r["weights_left_pct"]
    targets = {  # None: no level <= 21% reached (a --quick run or few rounds)
        "ticket<=dense_error_at_<=21%_left": sparse[0]["error_ticket"] <= dense if sparse else None,
        "ticket<control_at_every_level_<=21%_left": all(
            r["error_ticket"] < r["error_control"] for r in sparse) if sparse else None,
        "total<=900s": seconds["total"] <= 900.0,
    }

    head = ["round", "% weights left", "fc1 / fc2 / fc3 kept", "test error, ticket", "test error, control"]
    body = [[str(r["round"]), f"{r['weights_left_pct']:.1f}",
             " / ".join(f"{100 * r['kept'][k]:.1f}%" for k in LAYERS),
             f"{100 * r['error_ticket']:.2f}%", f"{100 * r['error_control']:.2f}%"] for r in rows]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body]
    command = "python benchmarks/lottery_ticket.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k not in ("out", "quick")) + (
        " --quick" if a.quick else "")
    md_text = "\n".join(
        ["```", command.strip(), "```", "", *md, "",
         f"Control: {control_label}. Test errors on the {n_test:,} MNIST test images after {a.epochs} epochs per "
         f"round ({a.optimizer}, lr {a.lr:g}, {a.schedule}, batch {a.batch_size}). The winning ticket is at or below "
         f"the dense network's error at every level down to {holds:.1f}% of the weights; "
         f"its best, {100 * best['error_ticket']:.2f}%, at {best['weights_left_pct']:.1f}%. fc1 and fc2 lose "
         f"{100 * a.prune_fraction:g}% of their survivors per round, fc3 {100 * a.output_fraction:g}%. Single-threaded on "
         f"{machine_line()}, {seconds['total']:.0f} s in all (load average {load_start[0]:.1f} -> "
         f"{os.getloadavg()[0]:.1f})."]) + "\n"
    (out / "lottery_ticket.md").write_text(md_text)
    plotted = _plot(rows, control_label, out / "lottery_ticket.png")

    result = {
        "command": command.strip(),
        "machine": machine_line(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "settings": {k: v for k, v in vars(a).items() if k != "out"},
        "control": control_label,
        "rows": rows,
        "ticket_rounds": ticket["rounds"],
        "control_rounds": control_rows,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "targets": targets,
    }
    (out / "lottery_ticket.json").write_text(json.dumps(result, indent=2, default=json_default))
    print()
    print("\n".join(md))
    print(f"\ndense {100 * dense:.2f}% test error; winning ticket at or below it at every level down to "
          f"{holds:.1f}% of the weights; at "
          f"{rows[-1]['weights_left_pct']:.1f}% left: ticket {100 * rows[-1]['error_ticket']:.2f}%, control "
          f"{100 * rows[-1]['error_control']:.2f}%; {seconds['total']:.0f} s in all (load average "
          f"{load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}); written {out / 'lottery_ticket.md'}, "
          f"{out / 'lottery_ticket.json'}" + (f", {out / 'lottery_ticket.png'}" if plotted else ""))
    print("targets: " + ", ".join(f"{k} {'n/a' if v is None else 'met' if v else 'MISSED'}"
                                  for k, v in targets.items()))


if __name__ == "__main__":
    main()
