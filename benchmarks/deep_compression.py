"""Deep Compression with retraining on MNIST (Han et al. 2016, tables 2 and 3) for LeNet-300-100 and LeNet-5:
train from scratch with edgepack's training engine, prune gradually while retraining, weight-share with k-means
codebooks and fine-tune the centroids, export ONNX, pack, and run the packed file through edgepack's runtime on the
10 000 test images.

    python benchmarks/deep_compression.py --model lenet300 [--epochs E] [--prune-epochs P] [--kept ...]
        [--bits ...] [--tune-epochs T] [--no-scan] [--quick] [--out benchmarks/out]
    python benchmarks/deep_compression.py --model lenet5 ...

Each model has its own defaults (PRESETS below; a flag overrides one value). LeNet-300-100 keeps 6% of fc1 where the
paper keeps 8%: our 6-bit fc1 codes Huffman-code to ~5.3 bits, not the paper's 4.4, so the paper's 8 / 9 / 26% gives
~37x here (at 1.35% error); 6% reaches 40x with the same accuracy. LeNet-5 keeps 7% of fc1 where the paper keeps
8%, for the same reason (see its preset). The LeNet-5 run takes ~15 minutes on one core (20 s per epoch).

Writes OUT/<model>_reference.onnx, OUT/<model>_compressed.onnx (the dense pruned + weight-shared model),
OUT/<model>_compressed.epk, OUT/<model>_sensitivity.png and OUT/<model>_deep_compression.json; prints the
per-layer table in the paper's form and a summary with the targets of issue #4.
"""
from __future__ import annotations

import os

# One BLAS thread unless told otherwise: the matrices of a 64-image batch are small, and on a busy 2-core machine
# OpenBLAS's second thread made epochs 10-30x slower (measured here: 12-29 s instead of 0.9-1.4 s per epoch).
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
from edgepack.packer.onnx_io import save_onnx  # noqa: E402
from edgepack.packer.pipeline import pack  # noqa: E402
from edgepack.packer.train.engine import Trainer, init_parameters  # noqa: E402
from edgepack.packer.train.models import lenet5_graph, lenet300_graph  # noqa: E402
from edgepack.packer.train.prune_retrain import prune_and_retrain, sensitivity_scan  # noqa: E402
from edgepack.packer.train.quantize_tune import quantize_and_tune  # noqa: E402
from edgepack.packer.verify import compare  # noqa: E402

# Per model: the graph, its prunable weights (in the order --kept / --bits list them), the paper's numbers, the
# issue's targets and the default settings.
PRESETS = {
    "lenet300": {
        "title": "LeNet-300-100", "graph": lenet300_graph, "layers": ("fc1.weight", "fc2.weight", "fc3.weight"),
        "paper": {"reference_error": 0.0164, "compressed_error": 0.0158, "ratio": 40.0,
                  "kept": "0.08,0.09,0.26", "bits": "6,6,6"},
        "targets": {"reference_error": 0.017, "ratio": 40.0, "seconds": 600.0},
        "defaults": {"epochs": 12, "lr": 0.05, "weight_decay": 5e-4, "prune_epochs": 20, "prune_lr": 0.1,
                     "prune_weight_decay": 5e-4, "prune_end": 0.6, "kept": "0.06,0.09,0.26", "bits": "6,6,5",
                     "tune_epochs": 2, "tune_lr": 1e-4},
    },
    # LeNet-5: the paper keeps 66 / 12 / 8 / 19% with 8-bit conv and 5-bit fc codebooks (39x at 0.74%). With the
    # paper's 8% of fc1 our file is ~35.5x (fc1's 5-bit codes and 5-bit gaps Huffman-code to ~4.5 bits each); 7% of
    # fc1 gives 39.8x and costs nothing measurable in accuracy (0.67% -> 0.72% in a run from a trained reference).
    "lenet5": {
        "title": "LeNet-5", "graph": lenet5_graph,
        "layers": ("conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"),
        "paper": {"reference_error": 0.0080, "compressed_error": 0.0074, "ratio": 39.0,
                  "kept": "0.66,0.12,0.08,0.19", "bits": "8,8,5,5"},
        "targets": {"reference_error": 0.0085, "ratio": 39.0, "seconds": 3600.0},
        "defaults": {"epochs": 15, "lr": 0.05, "weight_decay": 5e-4, "prune_epochs": 15, "prune_lr": 0.05,
                     "prune_weight_decay": 5e-4, "prune_end": 0.6, "kept": "0.66,0.12,0.07,0.19",
                     "bits": "8,8,5,5", "tune_epochs": 2, "tune_lr": 1e-4},
    },
}


def _per_layer(text: str, cast, layers: tuple) -> dict:
    values = [cast(v) for v in text.split(",")]
    if len(values) != len(layers):
        raise SystemExit(f"expected {len(layers)} comma-separated values ({', '.join(layers)}), found {text!r}")
    return dict(zip(layers, values))


def runtime_error_rate(epk: Path, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    """Test error of the packed file run by edgepack's runtime (compressed weights executed as stored)."""
    from edgepack import runtime

    model = runtime.load(epk, batch=batch)
    name, shape = model.inputs[0]
    wrong = 0
    for start in range(0, len(x), batch):
        xb = np.ascontiguousarray(x[start:start + batch].reshape((-1,) + tuple(shape[1:])), dtype=np.float32)
        logits = next(iter(model.run({name: xb}).values()))
        wrong += int(np.count_nonzero(logits.argmax(axis=1) != y[start:start + batch]))
    return wrong / len(y)


def stage_rows(info: dict, total_bytes: int, errors: dict) -> list[dict]:
    """The paper's stage breakdown (its figure 6 / section 7) from the packed file's per-layer bits: bytes after
    pruning (fp32 values + the bit-packed relative indices: estimated, the format has no fp32 sparse encoding),
    after quantization (bit-packed codes and indices: the streams before Huffman) and the file itself, plus each
    stage's measured test error."""
    layers = info["layers"]
    tensors = sum(r["bytes"] for r in layers)
    overhead = total_bytes - tensors  # header, section table, graph, padding

    def size(value_bits) -> float:
        b = overhead
        for r in layers:
            if r.get("index_bits") and r["index_bits"][0] is not None:
                b += r["kept"] * (value_bits(r) + r["index_bits"][0]) / 8
            else:
                b += r["bytes"]
        return b

    original = info["original_bytes"]
    rows = [("reference (fp32)", original, errors["reference"]),
            ("pruned (fp32 values + relative indices, estimated)", size(lambda r: 32.0), errors["pruned"]),
            ("pruned + quantized (codes + indices, before Huffman)", size(lambda r: r["weight_bits"][0]),
             errors["quantized"]),
            ("pruned + quantized + Huffman: the file, run by the runtime", total_bytes, errors["packed"])]
    return [{"stage": name, "bytes": int(round(b)), "ratio": original / b, "test_error": e} for name, b, e in rows]


def stage_table(rows: list[dict]) -> str:
    w = max(len(r["stage"]) for r in rows)
    lines = [f"{'stage':<{w}}  {'bytes':>9}  {'ratio':>6}  test error", "-" * (w + 32)]
    lines += [f"{r['stage']:<{w}}  {r['bytes']:>9,}  {r['ratio']:>5.1f}x  {100 * r['test_error']:.2f}%" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(PRESETS), default="lenet300")
    p.add_argument("--epochs", type=int, help="training epochs of the reference model")
    p.add_argument("--lr", type=float, help="SGD learning rate of the reference (cosine decay)")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--prune-epochs", type=int, help="epochs of gradual pruning + retraining")
    p.add_argument("--prune-lr", type=float)
    p.add_argument("--prune-weight-decay", type=float)
    p.add_argument("--prune-end", type=float, help="fraction of the retraining steps spent pruning")
    p.add_argument("--kept", help="fraction of weights kept per layer, comma-separated (see PRESETS)")
    p.add_argument("--bits", help="codebook bits per layer, comma-separated")
    p.add_argument("--tune-epochs", type=int, help="epochs of centroid fine-tuning")
    p.add_argument("--tune-lr", type=float, help="Adam learning rate of the centroids")
    p.add_argument("--reference", help="start from this trained ONNX model instead of training one (its test error "
                   "is measured; --epochs, --lr, --weight-decay are then unused)")
    p.add_argument("--no-scan", dest="scan", action="store_false", help="skip the per-layer sensitivity scan")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch per stage on 6 000 training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out")
    a = p.parse_args()
    preset = PRESETS[a.model]
    for k, v in preset["defaults"].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.quick:
        a.epochs, a.prune_epochs, a.tune_epochs, a.scan = 1, 1, 1, False
    layers = preset["layers"]
    kept = _per_layer(a.kept, float, layers)
    bits = _per_layer(a.bits, int, layers)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = a.model
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    ds = load_data("mnist")
    if a.quick:
        ds = {**ds, "x_train": ds["x_train"][:6000], "y_train": ds["y_train"][:6000]}
    seconds["data"] = time.perf_counter() - t0

    # Caffe's "xavier" filler (U(+-sqrt(3 / fan_in))), as the paper's Caffe models: weights of pixels that are always
    # 0 then stay below the pruning threshold and go first.
    t0 = time.perf_counter()
    ref_onnx = out / f"{tag}_reference.onnx"
    hist: dict = {}
    if a.reference:
        from edgepack.packer.onnx_io import load_onnx
        reference: Graph = load_onnx(a.reference)
        ref_error = Trainer(reference).error_rate(ds["x_test"], ds["y_test"])
        print(f"[1/4] reference {a.reference}: test error {100 * ref_error:.2f}%")
    else:
        graph = init_parameters(preset["graph"](), seed=a.seed, scheme="lecun_uniform")
        trainer = Trainer(graph, lr=a.lr, weight_decay=a.weight_decay, batch_size=64, seed=a.seed)
        hist = trainer.fit(ds, a.epochs, progress=True, desc="reference")
        reference = trainer.export()
        ref_error = trainer.error_rate(ds["x_test"], ds["y_test"])
        print(f"[1/4] reference: {a.epochs} epochs, test error {100 * ref_error:.2f}% "
              f"({time.perf_counter() - t0:.1f} s)")
    save_onnx(reference, ref_onnx)
    seconds["train"] = time.perf_counter() - t0

    scan_table = None
    if a.scan:
        t0 = time.perf_counter()
        scan = sensitivity_scan(reference, ds)
        scan_table = scan.table()
        print(scan_table)
        if scan.plot(out / f"{tag}_sensitivity.png"):
            print(f"plot: {out / f'{tag}_sensitivity.png'}")
        seconds["scan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pruned, prep = prune_and_retrain(reference, ds, {k: 1.0 - v for k, v in kept.items()}, schedule="gradual",
                                     epochs=a.prune_epochs, lr=a.prune_lr, weight_decay=a.prune_weight_decay,
                                     prune_end=a.prune_end, seed=a.seed + 1, progress=True)
    seconds["prune_retrain"] = time.perf_counter() - t0
    print(f"[2/4] pruned to {', '.join(f'{k} {100 * v:.0f}%' for k, v in prep['kept'].items())} kept: one-shot "
          f"without retraining {100 * prep['error_pruned_no_retraining']:.2f}%, after {a.prune_epochs} epochs of "
          f"gradual pruning + retraining {100 * prep['error_after']:.2f}% ({seconds['prune_retrain']:.1f} s)")

    t0 = time.perf_counter()
    tuned, qrep = quantize_and_tune(pruned, ds, bits, epochs=a.tune_epochs, lr=a.tune_lr, optimizer="adam",
                                    seed=a.seed + 2, progress=True)
    seconds["quantize_tune"] = time.perf_counter() - t0
    print(f"[3/4] k-means codebooks ({', '.join(f'{k} {b} bits' for k, b in bits.items())}): test error "
          f"{100 * qrep['error_quantized']:.2f}%, after {a.tune_epochs} epochs of centroid fine-tuning "
          f"{100 * qrep['error_tuned']:.2f}% ({seconds['quantize_tune']:.1f} s)")

    t0 = time.perf_counter()
    tuned_onnx = out / f"{tag}_compressed.onnx"
    save_onnx(tuned, tuned_onnx)
    epk = out / f"{tag}_compressed.epk"
    report = pack(tuned_onnx, epk, config=qrep["pack_config"])
    seconds["pack"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    feeds = {"input": ds["x_test"].reshape((-1,) + tuple(tuned.inputs[0].shape[1:]))}
    exact = compare(tuned_onnx, epk, feeds=feeds, labels=ds["y_test"])
    vs_ref = compare(ref_onnx, epk, feeds=feeds, labels=ds["y_test"])
    packed_error = runtime_error_rate(epk, ds["x_test"], ds["y_test"])
    seconds["verify"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    print("[4/4] packed:")
    print(report.table())
    print(f"packed file (unpacked, onnxruntime) vs the dense compressed model: {exact.summary()}")
    print(f"packed file (unpacked, onnxruntime) vs the reference model: {vs_ref.summary()}")
    print(f"packed file run by edgepack's runtime: test error {100 * packed_error:.2f}%")
    stages = stage_rows(report.info, report.total_bytes, {"reference": ref_error, "pruned": prep["error_after"],
                                                          "quantized": qrep["error_tuned"], "packed": packed_error})
    print(stage_table(stages))

    targets = preset["targets"]
    result = {
        "model": tag,
        "machine": machine_line(),
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "command": f"python benchmarks/deep_compression.py --model {tag} " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()
            if k not in ("model", "scan", "out", "quick", "reference") and v is not None)
            + (" --quick" if a.quick else "") + (f" --reference {a.reference}" if a.reference else ""),
        "paper": preset["paper"],
        "reference": {"epochs": None if a.reference else a.epochs, "test_error": ref_error, "history": hist,
                      "fp32_bytes": report.info["original_bytes"]},
        "pruned": {k: v for k, v in prep.items() if k not in ("masks",)},
        "quantized": {"bits": bits, "error_kmeans": qrep["error_quantized"], "error_tuned": qrep["error_tuned"],
                      "history": qrep["history"], "codebook_sizes": {k: int(len(v)) for k, v in
                                                                     qrep["codebooks"].items()}},
        "packed": {"file_bytes": report.total_bytes, "ratio": report.ratio, "test_error": packed_error,
                   "test_error_onnxruntime_unpacked": 1.0 - exact.accuracy_packed,
                   "max_abs_diff_vs_dense_compressed": exact.max_abs_error,
                   "top1_agreement_vs_reference": vs_ref.top1_agreement,
                   "huffman_saving": report.info["huffman_saving"],
                   "layers": [{k: r.get(k) for k in ("name", "weights", "kept", "k", "bytes", "weight_bits",
                                                     "index_bits")} for r in report.info["layers"]]},
        "table": report.table(),
        "stages": stages,
        "stage_table": stage_table(stages),
        "sensitivity_scan": scan_table,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "targets": {f"reference_error<={100 * targets['reference_error']:g}%": ref_error <= targets["reference_error"],
                    f"ratio>={targets['ratio']:g}x": report.ratio >= targets["ratio"],
                    "packed_error<=reference+0.1pp": packed_error <= ref_error + 0.001 + 1e-12,
                    f"total<={targets['seconds']:g}s": seconds["total"] <= targets["seconds"]},
    }
    (out / f"{tag}_deep_compression.json").write_text(json.dumps(result, indent=2, default=json_default))
    print(f"\n{preset['title']}: reference {100 * ref_error:.2f}% -> pruned {100 * prep['error_after']:.2f}% -> "
          f"pruned + quantized {100 * qrep['error_tuned']:.2f}% -> packed file (runtime) {100 * packed_error:.2f}% "
          f"test error; {report.info['original_bytes']} B -> {report.total_bytes} B = {report.ratio:.1f}x; "
          f"{seconds['total']:.0f} s in all (load average {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f})")
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["targets"].items()))


if __name__ == "__main__":
    main()
