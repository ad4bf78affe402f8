"""Post-training Deep Compression of LeNet-300-100 on MNIST (no retraining): train with numpy, export ONNX, pack
at the given sparsity and codebook bits, and report size, ratio, Huffman saving and test error before and after.

    python benchmarks/lenet300_posttraining.py [--sparsity 0.92] [--bits 6] [--epochs 10] [--out benchmarks/out]

Writes OUT/lenet300.onnx, OUT/lenet300.epk and OUT/lenet300_posttraining.json, and prints the per-layer table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from edgepack.packer.datasets import load_data
from edgepack.packer.onnx_io import save_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.train.mlp import error_rate, mlp_graph, train_mlp
from edgepack.packer.verify import compare


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.92)
    p.add_argument("--bits", type=int, default=6)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="benchmarks/out")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_data("mnist")
    t0 = time.perf_counter()
    layers = train_mlp(ds, hidden=(300, 100), epochs=a.epochs, seed=0)
    train_s = time.perf_counter() - t0
    src = out / "lenet300.onnx"
    save_onnx(mlp_graph(layers), src)
    epk = out / "lenet300.epk"
    t0 = time.perf_counter()
    report = pack(src, epk, sparsity=a.sparsity, bits=a.bits)
    pack_s = time.perf_counter() - t0
    print(report.table())
    check = compare(src, epk, feeds={"input": ds["x_test"]}, labels=ds["y_test"])
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "command": f"python benchmarks/lenet300_posttraining.py --sparsity {a.sparsity} --bits {a.bits} "
                   f"--epochs {a.epochs}",
        "train_seconds": round(train_s, 1),
        "pack_seconds": round(pack_s, 2),
        "reference_test_error": error_rate(layers, ds["x_test"], ds["y_test"]),
        "packed_test_error": 1 - check.accuracy_packed,
        "top1_agreement": check.top1_agreement,
        "onnx_bytes": src.stat().st_size,
        "original_fp32_bytes": report.info["original_bytes"],
        "file_bytes": report.total_bytes,
        "ratio": report.ratio,
        "huffman_saving": report.info["huffman_saving"],
        "layers": [{k: r[k] for k in ("name", "weights", "kept", "k", "bytes", "weight_bits", "index_bits")}
                   for r in report.info["layers"]],
    }
    (out / "lenet300_posttraining.json").write_text(json.dumps(result, indent=2))
    print(f"reference test error {100 * result['reference_test_error']:.2f}% -> packed (no retraining) "
          f"{100 * result['packed_test_error']:.2f}%; {result['file_bytes']} B, {result['ratio']:.1f}x, "
          f"Huffman saves {100 * result['huffman_saving']:.1f}% of the packed streams")


if __name__ == "__main__":
    main()
