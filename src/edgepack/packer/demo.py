"""`edgepack demo`: the main job on a built-in default. Trains LeNet-300-100 on MNIST with numpy, prunes it and
retrains the survivors, exports ONNX, packs it, prints the per-layer table, checks the packed model against the
original on the test set, and runs it in the device runtime directly on the compressed form."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def run_demo(workdir: str = "edgepack-demo", data: str = "mnist", epochs: int = 8, sparsity: float = 0.9,
             bits: int = 6, retrain_epochs: int = 4) -> int:
    from .datasets import load_data, synthetic_classification
    from .onnx_io import save_onnx
    from .pipeline import pack
    from .prune import mask_by_sparsity
    from .train.mlp import error_rate, mlp_graph, train_mlp
    from .onnx_io import graph_to_onnx
    from .unpack import packed_to_graph
    from .verify import compare, session
    from edgepack import runtime

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if data == "synthetic":
        ds = synthetic_classification(6000, 2000, 784, 10, seed=0)
    else:
        ds = load_data(data)
    print(f"[1/5] data: {len(ds['x_train'])} training and {len(ds['x_test'])} test images")

    layers = train_mlp(ds, hidden=(300, 100), epochs=epochs, seed=0)
    err = error_rate(layers, ds["x_test"], ds["y_test"])
    dense_onnx = out / "lenet300.onnx"
    save_onnx(mlp_graph(layers), dense_onnx)
    print(f"[2/5] trained LeNet-300-100 for {epochs} epochs: test error {100 * err:.2f}% -> {dense_onnx}")

    masks = [mask_by_sparsity(w, sparsity) for w, _ in layers]
    pruned = [(w * m, b) for (w, b), m in zip(layers, masks)]
    err_pruned = error_rate(pruned, ds["x_test"], ds["y_test"])
    layers = train_mlp(ds, epochs=retrain_epochs, lr=0.02, seed=1, masks=masks, init=pruned)
    err_retrained = error_rate(layers, ds["x_test"], ds["y_test"])
    pruned_onnx = out / "lenet300_pruned.onnx"
    save_onnx(mlp_graph(layers), pruned_onnx)
    print(f"[3/5] pruned {100 * sparsity:.0f}% of every layer: test error {100 * err_pruned:.2f}%, after "
          f"{retrain_epochs} epochs of retraining the survivors {100 * err_retrained:.2f}%")

    packed = out / "lenet300.epk"
    report = pack(pruned_onnx, packed, sparsity=sparsity, bits=bits)
    print(f"[4/5] packed with {bits}-bit codebooks -> {packed}")
    print(report.table())
    dense_bytes = os.path.getsize(dense_onnx)
    print(f"ONNX file {dense_bytes} B -> edgepack file {report.total_bytes} B")

    check = compare(dense_onnx, packed, feeds={"input": ds["x_test"]}, labels=ds["y_test"])
    print(f"[5/5] packed model vs the original dense model on the test set (onnxruntime on the unpacked file): "
          f"{check.summary()}")
    model = runtime.load(packed)
    logits = model.run(ds["x_test"])["logits"]
    unpacked = session(graph_to_onnx(packed_to_graph(packed))).run(None, {"input": ds["x_test"]})[0]
    diff = float(np.abs(logits - unpacked).max())
    acc = float(np.mean(logits.argmax(1) == ds["y_test"]))
    print(f"      edgepack runtime on the compressed form: test accuracy {100 * acc:.2f}%, max |diff| to the "
          f"unpacked model {diff:.2g}; memory plan at batch 1 (runtime.load(...).plan):")
    print(runtime.load(packed).plan.table())
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0 if np.isfinite(check.max_abs_error) and diff < 1e-3 * max(1.0, float(np.abs(unpacked).max())) else 1
