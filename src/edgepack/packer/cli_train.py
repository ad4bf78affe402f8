"""The training commands of the `edgepack` CLI: compress (prune + retrain -> quantize + tune -> pack), sensitivity,
distill and ticket. add_train_commands(subparsers) registers them; each prints tqdm progress and a final report and
returns the exit status (0 done, 1 target not met)."""
from __future__ import annotations

import argparse
import sys


def _data(spec: str) -> dict:
    from .datasets import load_data

    return load_data(spec)


def cmd_compress(a: argparse.Namespace) -> int:
    from .train.compress import compress

    rep = compress(a.model, _data(a.data), a.output, target_ratio=a.target_ratio, max_drop=a.max_drop,
                   sparsity=a.sparsity, bits=a.bits, epochs=a.epochs, tune_epochs=a.tune_epochs, lr=a.lr,
                   tune_lr=a.tune_lr, batch_size=a.batch_size, seed=a.seed, progress=not a.quiet)
    for key in ("scan", "bits_scan"):
        if rep.get(key):
            print(rep[key])
    for t in rep.get("tries", []):
        print("tried bits " + ", ".join(f"{k} {b}" for k, b in t["bits"].items())
              + f": {t['ratio']:.1f}x, test error {100 * t['error_packed']:.2f}% ({t['drop_pp']:+.2f} pp)")
    if rep.get("bits"):
        print("codebook bits: " + ", ".join(f"{k} {b}" for k, b in rep["bits"].items()))
    print(rep["table"])
    stages = [("input model", rep["error_reference"]), ("pruned", rep.get("error_pruned")),
              ("quantized", rep.get("error_quantized")), ("packed file", rep["error_packed"])]
    print("test error: " + " -> ".join(f"{name} {100 * e:.2f}%" for name, e in stages if e is not None))
    print(f"{a.output}: {rep['file_bytes']} bytes, {rep['ratio']:.1f}x smaller ({rep['seconds']:.0f} s)")
    print(("" if rep["met"] else "NOT MET: ") + rep["message"], file=sys.stdout if rep["met"] else sys.stderr)
    return 0 if rep["met"] else 1


def cmd_sensitivity(a: argparse.Namespace) -> int:
    from .onnx_io import load_onnx
    from .train.prune_retrain import DEFAULT_SCAN, sensitivity_scan

    sparsities = [float(s) for s in a.sparsities.split(",")] if a.sparsities else DEFAULT_SCAN
    scan = sensitivity_scan(load_onnx(a.model), _data(a.data), sparsities, max_samples=a.max_samples)
    print(scan.table())
    if a.max_drop is not None:
        chosen = scan.choose(a.max_drop)
        print(f"largest scanned sparsity within {a.max_drop:g} pp (no retraining): "
              + ", ".join(f"{k} {100 * s:g}%" for k, s in chosen.items()))
    if a.plot:
        if scan.plot(a.plot):
            print(f"plot: {a.plot}")
        else:
            print("no plot: matplotlib is not installed", file=sys.stderr)
    return 0


def cmd_distill(a: argparse.Namespace) -> int:
    from .onnx_io import load_onnx, save_onnx
    from .train.distill import distill
    from .train.engine import init_parameters

    student = load_onnx(a.student)
    if a.init:
        student = init_parameters(student, seed=a.seed, scheme=a.init)
    out, rep = distill(student, a.teacher, _data(a.data), temperature=a.temperature, alpha=a.alpha,
                       epochs=a.epochs, lr=a.lr, optimizer=a.optimizer, weight_decay=a.weight_decay,
                       batch_size=a.batch_size, seed=a.seed, progress=not a.quiet)
    save_onnx(out, a.output)
    if "error_after" in rep:
        teacher = f"teacher {100 * rep['teacher_error']:.2f}%, " if "teacher_error" in rep else ""
        print(f"test error: {teacher}student before {100 * rep['error_before']:.2f}% -> distilled "
              f"{100 * rep['error_after']:.2f}% (T={a.temperature:g}, alpha={a.alpha:g}, {a.epochs} epochs, "
              f"{rep['seconds']:.0f} s)")
    print(f"wrote {a.output}")
    return 0


def _rates(text: str) -> float | dict[str, float]:
    """--rate: one fraction ("0.2") or per layer ("fc1.weight=0.2,fc2.weight=0.2,fc3.weight=0.1")."""
    try:
        if "=" not in text:
            return float(text)
        out = {}
        for part in text.split(","):
            name, value = part.split("=", 1)
            out[name.strip()] = float(value)
        return out
    except ValueError:
        raise SystemExit(f"--rate: expected a fraction or name=fraction,..., found {text!r}") from None


def cmd_ticket(a: argparse.Namespace) -> int:
    from .onnx_io import load_onnx, save_onnx
    from .train.ticket import find_ticket, ticket_table

    graph, data = load_onnx(a.model), _data(a.data)
    kw = dict(prune_fraction=_rates(a.rate), rounds=a.rounds, epochs=a.epochs, rewind=a.rewind, seed=a.seed,
              init=None if a.init == "file" else a.init, lr=a.lr, batch_size=a.batch_size, progress=not a.quiet)
    if a.control == "own":  # the control alone: re-initialised survivors, masks from its own trained nets
        out, rep = find_ticket(graph, data, control=True, **kw)
        print(ticket_table(rep))
    else:
        out, rep = find_ticket(graph, data, **kw)
        print(ticket_table(rep))
        if a.control == "masks":  # Frankle & Carbin's control: the ticket's masks from fresh random values
            _, crep = find_ticket(graph, data, control=True, control_masks=rep["masks"], **kw)
            print(ticket_table(crep))
    if a.output:
        save_onnx(out, a.output)
        print(f"wrote {a.output} (the last round's trained sparse model)")
    return 0


def add_train_commands(sub) -> None:
    """Register compress, sensitivity, distill and ticket on an argparse subparsers object."""
    data_help = "'mnist' (downloaded once, then cached) or an .npz with x_train, y_train, x_test, y_test"

    def common(s, epochs: int, lr: float):
        s.add_argument("--data", required=True, help=data_help)
        s.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
        s.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
        s.add_argument("--batch-size", type=int, default=64)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("compress", help="prune + retrain, quantize + fine-tune centroids, Huffman, write (needs "
                                        "training data)")
    s.add_argument("model", help="input .onnx")
    s.add_argument("-o", "--output", required=True, help="output .epk")
    s.add_argument("--target-ratio", type=float, help="reach at least R times smaller (needs --max-drop)")
    s.add_argument("--max-drop", type=float, help="at most PP percentage points more test error than the input")
    s.add_argument("--sparsity", type=float, help="fraction of weights removed in every layer")
    s.add_argument("--bits", type=int, help="codebook bits of every layer (default 5 fc, 8 conv)")
    s.add_argument("--tune-epochs", type=int, default=2, help="epochs of centroid fine-tuning (default 2)")
    s.add_argument("--tune-lr", type=float, default=1e-4, help="Adam learning rate of the centroids")
    common(s, 10, 0.01)
    s.set_defaults(func=cmd_compress)

    s = sub.add_parser("sensitivity", help="test error with one layer at a time pruned to each sparsity")
    s.add_argument("model", help="input .onnx")
    s.add_argument("--data", required=True, help=data_help)
    s.add_argument("--plot", help="write the error-vs-sparsity plot to this image file (needs matplotlib)")
    s.add_argument("--sparsities", help="comma-separated fractions to scan (default 0,.5,.7,.8,.9,.93,.95,.97,.99)")
    s.add_argument("--max-drop", type=float, help="also print the sparsities within PP points per layer")
    s.add_argument("--max-samples", type=int, help="measure on the first N test samples only")
    s.set_defaults(func=cmd_sensitivity)

    s = sub.add_parser("distill", help="train a student ONNX model on a teacher's softened outputs (Hinton 2015)")
    s.add_argument("teacher", help="teacher .onnx (run with onnxruntime)")
    s.add_argument("--student", required=True, help="student .onnx (its architecture and starting weights)")
    s.add_argument("-o", "--output", required=True, help="trained student .onnx")
    s.add_argument("-T", "--temperature", type=float, default=20.0, help="softmax temperature (default 20)")
    s.add_argument("--alpha", type=float, default=0.9, help="weight of the soft loss (default 0.9)")
    s.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    s.add_argument("--weight-decay", type=float, default=0.0)
    s.add_argument("--init", choices=("he_normal", "he_uniform", "lecun_uniform"),
                   help="re-initialise the student first instead of starting from its weights")
    common(s, 10, 0.05)
    s.set_defaults(func=cmd_distill)

    s = sub.add_parser("ticket", help="lottery ticket: iterative magnitude pruning with rewinding "
                                      "(Frankle & Carbin 2019)")
    s.add_argument("model", help="input .onnx (its architecture; see --init)")
    s.add_argument("--rounds", type=int, default=5, help="pruning rounds after the dense one (default 5)")
    s.add_argument("--rate", default="0.2", help="fraction of surviving weights pruned per round, one number or "
                   "per layer as name=fraction,... (Frankle & Carbin: the output layer at half the rate)")
    s.add_argument("--rewind", default="init", help="'init' or 'iteration:K' (late rewinding to step K)")
    s.add_argument("--control", nargs="?", const="masks", choices=("masks", "own"),
                   help="also run the control: 'masks' (the default when the flag is given; Frankle & Carbin's) "
                   "trains every round's winning-ticket mask from fresh random values; 'own' runs only the control "
                   "that prunes its own re-initialised nets")
    s.add_argument("--init", default="he_normal", choices=("file", "he_normal", "he_uniform", "lecun_uniform"),
                   help="initial values: drawn with this scheme (default he_normal) or 'file' (the model's own)")
    s.add_argument("-o", "--output", help="write the last round's model to this .onnx")
    common(s, 5, 0.05)
    s.set_defaults(func=cmd_ticket)
