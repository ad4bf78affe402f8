"""The whole Deep Compression pipeline from an ONNX file and data: prune + retrain -> k-means + centroid tuning ->
pack (CSR, Huffman, write), with either given sparsity / bits or per-layer sparsity and bits chosen to reach a
target ratio within a test-error budget; the final error is measured on the packed file itself (through onnxruntime)."""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..graph import Graph
from .bit_allocation import CONV_BITS, bits_scan, candidate_bits
from .prune_retrain import auto_prune, prune_and_retrain, sensitivity_scan
from .quantize_tune import quantize_and_tune

# Settings tried towards more bits when the first one along the bit-allocation path loses too much accuracy.
BACKOFF_TRIES = 3


def _data(data) -> dict:
    if isinstance(data, dict):
        return data
    from ..datasets import load_data

    return load_data(data)


def _default_bits(graph: Graph) -> dict[str, int]:
    """The packer's default widths: 8 bits for a Conv's weight, 5 for the others (the paper's LeNet settings)."""
    return {k: (8 if bs == CONV_BITS else 5) for k, bs in candidate_bits(graph).items()}


def _feeds(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    v = graph.inputs[0]
    dims = v.shape[1:]
    x = np.asarray(x, dtype=np.float32)
    if dims and all(isinstance(d, int) for d in dims) and tuple(x.shape[1:]) != tuple(dims):
        if math.prod(x.shape[1:]) != math.prod(dims):
            raise ValueError(f"input '{v.name}' expects (N, {', '.join(map(str, dims))}), found {x.shape}")
        x = x.reshape((x.shape[0],) + tuple(dims))
    return {v.name: np.ascontiguousarray(x)}


def _pack_and_check(reference_onnx, graph: Graph, bits: dict[str, int] | None, pack_config: dict | None, data: dict,
                    out_path, workdir: Path) -> dict:
    """Save the trained graph, pack it, and measure test errors of the input model and of the packed file."""
    from ..onnx_io import save_onnx
    from ..pipeline import pack
    from ..verify import compare

    dense = workdir / "compressed.onnx"
    save_onnx(graph, dense)
    rep = pack(dense, out_path, config=pack_config, check_fidelity=False)
    agree = compare(reference_onnx, out_path, feeds=_feeds(graph, data["x_test"]), labels=data["y_test"])
    return {"file_bytes": rep.total_bytes, "ratio": rep.ratio, "table": rep.table(),
            "error_reference": 1.0 - agree.accuracy_original, "error_packed": 1.0 - agree.accuracy_packed,
            "top1_agreement": agree.top1_agreement, "bits": bits, "warnings": list(rep.warnings)}


def compress(onnx_path: str | os.PathLike, data, out_path: str | os.PathLike, *, target_ratio: float | None = None,
             max_drop: float | None = None, sparsity: float | dict | None = None, bits: int | dict | None = None,
             epochs: int = 10, tune_epochs: int = 2, lr: float = 0.01, tune_lr: float = 1e-4,
             weight_decay: float = 1e-4, batch_size: int = 64, seed: int = 0, scan=None,
             progress: bool = False) -> dict:
    """Compress an ONNX model with retraining and write the packed file to out_path; return the report.

    Either give sparsity (fraction removed, one number or per tensor) and / or bits (codebook bits; default 5 for
    fully connected and 8 for conv layers, as the packer's), optionally with max_drop to check, or give
    target_ratio R with max_drop PP: per-layer sparsities then come from the sensitivity scan (auto_prune, the
    most pruning whose retrained error stays within PP points) and bits per layer from the bit-allocation scan
    (packer/train/bit_allocation.py: from 6 bits, 8 for conv, the layer whose next width saves the most bits per
    point of predicted error goes down first) until the packed file is at least R times smaller. data: a dict of
    arrays, "mnist" or an .npz path.

    The report holds each stage's test error, the ratio, the file size, the per-layer table, and "met" / "message":
    when R cannot be reached with at most PP points more test error than the input model, "met" is False and the
    message says what was reached; the file written is then the smallest one found within the error budget (or
    the most accurate one tried, if none was)."""
    from ..onnx_io import load_onnx, save_onnx
    from ..pipeline import pack

    auto = target_ratio is not None or (max_drop is not None and sparsity is None and bits is None)
    if target_ratio is not None and (sparsity is not None or bits is not None):
        raise ValueError("compress: give either target_ratio (with max_drop) or sparsity / bits, not both")
    if auto and (target_ratio is None or max_drop is None):
        raise ValueError("compress: target_ratio needs max_drop (percentage points of test error allowed) and "
                         "the other way round")
    if not auto and sparsity is None and bits is None:
        raise ValueError("compress: nothing to do: give sparsity and / or bits, or target_ratio with max_drop")
    if target_ratio is not None and not target_ratio > 0:
        raise ValueError(f"compress: target_ratio must be > 0, found {target_ratio}")
    if max_drop is not None and not max_drop >= 0:
        raise ValueError(f"compress: max_drop must be >= 0 percentage points, found {max_drop}")
    t0 = time.perf_counter()
    data = _data(data)
    if data.get("x_test") is None or data.get("y_test") is None:
        raise ValueError("compress: data needs x_test / y_test to measure the test error")
    graph = load_onnx(onnx_path)
    report: dict = {"input": os.fspath(onnx_path), "output": os.fspath(out_path), "target_ratio": target_ratio,
                    "max_drop": max_drop}
    retrain = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size, seed=seed,
                   progress=progress)
    tune = dict(epochs=tune_epochs, lr=tune_lr, batch_size=batch_size, seed=seed + 1, progress=progress)
    with tempfile.TemporaryDirectory(prefix="edgepack-compress-") as tmp:
        work = Path(tmp)
        if not auto:
            pruned, prep = graph, None
            if sparsity is not None:
                pruned, prep = prune_and_retrain(graph, data, sparsity, **retrain)
                report["error_pruned"] = prep["error_after"]
                report["kept"] = prep["kept"]
            # without bits, the packer's defaults (5 for fully connected, 8 for conv), centroids tuned as well
            tuned, qrep = quantize_and_tune(pruned, data, bits if bits is not None else _default_bits(pruned),
                                            **tune)
            report["error_quantized"] = qrep["error_tuned"]
            cfg, b = qrep["pack_config"], qrep["bits"]
            report.update(_pack_and_check(onnx_path, tuned, b, cfg, data, out_path, work))
            drop = 100 * (report["error_packed"] - report["error_reference"])
            report["drop_pp"] = drop
            report["met"] = max_drop is None or drop <= max_drop + 1e-9
            report["message"] = (f"{report['ratio']:.1f}x smaller, test error {100 * report['error_reference']:.2f}%"
                                 f" -> {100 * report['error_packed']:.2f}% ({drop:+.2f} pp)")
            if not report["met"]:
                report["message"] = f"cannot stay within {max_drop} pp: " + report["message"]
            report["seconds"] = time.perf_counter() - t0
            return report

        scan = scan or sensitivity_scan(graph, data)
        report["scan"] = scan.table()
        pruned, prep = auto_prune(graph, data, max_drop, scan=scan, **retrain)
        report["error_pruned"] = prep["error_after"]
        report["kept"] = prep.get("kept", {})
        report["prune_attempts"] = prep.get("attempts", [])
        report["prune_met"] = bool(prep.get("met"))
        # Per-layer bits: scan each layer's error at each width, walk the greedy path from the most precise
        # setting towards fewer bits within what is left of the budget (sizes from packing k-means-only weights:
        # tuning moves centroids, not codes), then tune and check the first setting that reaches the ratio, backing
        # off towards more bits while the packed file loses more than max_drop.
        bscan = bits_scan(pruned, data)
        report["bits_scan"] = bscan.table()
        left = max(0.0, max_drop / 100.0 - max(0.0, prep["error_after"] - scan.reference_error))
        path = bscan.path(left)
        sizes = []
        for b in path:  # fewer bits only shrink the file: the walk stops at the first setting that reaches R
            shared, qrep0 = quantize_and_tune(pruned, data, b, epochs=0, evaluate=False, seed=seed + 1)
            probe = work / "probe.onnx"
            save_onnx(shared, probe)
            sizes.append(pack(probe, work / "probe.epk", config=qrep0["pack_config"], check_fidelity=False).ratio)
            if sizes[-1] >= target_ratio:
                break
        report["bits_path"] = [{"bits": b, "ratio_untuned": r} for b, r in zip(path, sizes)]
        first = len(sizes) - 1
        tries = []
        best_ok = None
        for i in range(first, max(-1, first - BACKOFF_TRIES), -1):
            tuned, qrep = quantize_and_tune(pruned, data, path[i], **tune)
            trial_path = work / f"try{i}.epk"
            res = _pack_and_check(onnx_path, tuned, qrep["bits"], qrep["pack_config"], data, trial_path, work)
            res["error_quantized"] = qrep["error_tuned"]
            res["drop_pp"] = 100 * (res["error_packed"] - res["error_reference"])
            res["path"] = trial_path
            tries.append(res)
            if res["drop_pp"] <= max_drop + 1e-9:
                best_ok = res
                break
        chosen = best_ok or min(tries, key=lambda r: r["drop_pp"])
        shutil.copyfile(chosen.pop("path"), out_path)  # the temporary folder may be on another file system
        report.update(chosen)
        report["error_quantized"] = chosen["error_quantized"]
        report["tries"] = [{"bits": t["bits"], "ratio": t["ratio"], "error_packed": t["error_packed"],
                            "drop_pp": t["drop_pp"]} for t in tries]
    ref, got = 100 * report["error_reference"], 100 * report["error_packed"]
    report["met"] = best_ok is not None and report["ratio"] >= target_ratio
    if report["met"]:
        report["message"] = (f"reached {report['ratio']:.1f}x (target {target_ratio:g}x) with test error "
                             f"{ref:.2f}% -> {got:.2f}% ({report['drop_pp']:+.2f} pp, budget {max_drop:g} pp)")
    elif best_ok is not None:
        report["message"] = (f"cannot reach {target_ratio:g}x with at most {max_drop:g} pp more test error: the "
                             f"best within the budget is {report['ratio']:.1f}x at {got:.2f}% (reference "
                             f"{ref:.2f}%); written anyway to {os.fspath(out_path)}")
    else:
        report["message"] = (f"cannot reach {target_ratio:g}x with at most {max_drop:g} pp more test error: even "
                             f"the most precise try loses {report['drop_pp']:.2f} pp ({ref:.2f}% -> {got:.2f}%, "
                             f"{report['ratio']:.1f}x); written anyway to {os.fspath(out_path)}")
    if not report["met"]:
        if not report["prune_met"]:
            tried = ", ".join(f"{a['drop_pp']:+.2f} pp" for a in report["prune_attempts"]) or "no layer prunable"
            report["message"] += (f". Pruning with retraining alone already exceeded the budget (tries: {tried})")
        report["message"] += "; more retraining epochs or a larger drop budget may help"
    report["seconds"] = time.perf_counter() - t0
    return report
