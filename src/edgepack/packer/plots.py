"""The plots of `edgepack bench` (matplotlib, Agg backend, PNG): size vs accuracy per variant, per-layer bits, each
compressed layer's weight histogram with its codebook centroids (as Deep Compression's figure), and the energy split."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

MARKERS = {"onnx": "o", "gzip": "s", "zstd": "^", "int8": "D", "edgepack": "*"}
MAX_HISTOGRAMS = 12  # one PNG per compressed layer, up to this many (the largest layers first): ~0.3 s each


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a build machine
    import matplotlib.pyplot as plt

    return plt


def write_plots(report: dict, onnx_path: str, epk_path: str, out: Path) -> dict:
    """Every plot of the report into `out`; returns {plot: path} (the histograms: a list of paths)."""
    plt = _pyplot()
    paths = {"size_vs_accuracy": size_vs_accuracy(plt, report, out / "size_vs_accuracy.png"),
             "layer_bits": layer_bits(plt, report["size"]["layer_table"], out / "layer_bits.png"),
             "energy": energy_split(plt, report["energy"], out / "energy.png"),
             "weight_histograms": weight_histograms(plt, onnx_path, epk_path, out)}
    return {k: (v if isinstance(v, list) else os.fspath(v)) for k, v in paths.items()}


def size_vs_accuracy(plt, report: dict, path: Path) -> Path:
    acc = report["accuracy"]
    metric = "accuracy" if acc["labelled"] and acc["classification"] else "top1_agreement"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # lossless compressions of the ONNX keep the original's accuracy
    same = {"onnx": "original", "gzip": "original", "zstd": "original", "int8": "int8", "edgepack": "edgepack"}
    for key, v in report["size"]["variants"].items():
        src = acc["variants"].get(same[key], {})
        y = src.get(metric)
        if y is None:
            y = 1.0 - src.get("rel_l2_vs_original", 0.0)  # a regression model: 1 - relative L2 error
        ax.scatter(v["bytes"], 100 * y, s=45, marker=MARKERS.get(key, "o"), label=f"{v['label']}: {v['bytes']:,} B",
                   zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("file size (bytes, log scale)")
    ylabel = {"accuracy": "test accuracy (%)", "top1_agreement": "top-1 agreement with the original (%)"}[metric]
    if not acc["classification"]:
        ylabel = "100 x (1 - relative L2 error vs the original)"
    ax.set_ylabel(ylabel)
    ax.set_title(f"size vs accuracy ({acc['samples']} samples)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def layer_bits(plt, table: dict, path: Path) -> Path:
    rows = [r for r in table["layers"] if r["weight_bits"][0] is not None]
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(rows) + 2), 4.2))
    if rows:
        x = np.arange(len(rows))
        series = [("weight bits packed", [r["weight_bits"][0] for r in rows]),
                  ("weight bits stored", [r["weight_bits"][1] for r in rows]),
                  ("index bits packed", [r["index_bits"][0] or 0 for r in rows]),
                  ("index bits stored", [r["index_bits"][1] or 0 for r in rows])]
        w = 0.2
        for i, (label, vals) in enumerate(series):
            ax.bar(x + (i - 1.5) * w, vals, w, label=label)
        ax.set_xticks(x)
        ax.set_xticklabels([r["name"] for r in rows], rotation=45 if len(rows) > 4 else 0, ha="right"
                           if len(rows) > 4 else "center", fontsize=8)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no weight-shared layers", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("bits per kept weight")
    ax.set_title("per-layer bits: packed (b-bit) and stored (after Huffman where smaller)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def weight_histograms(plt, onnx_path: str, epk_path: str, out: Path) -> list[str]:
    """Per weight-shared layer: the original weights (kept ones and pruned ones) and the codebook centroids. With per
    channel scales the weights are shown divided by their row's scale, the units the codebook is in."""
    from edgepack.runtime.loader import read_packed
    from edgepack.runtime.weights import CodebookWeight, SparseCodebookWeight

    from .onnx_io import load_onnx

    original = load_onnx(onnx_path).initializers
    packed = read_packed(epk_path)
    shared = [(name, w) for name, w in packed.weights.items() if isinstance(w, (CodebookWeight, SparseCodebookWeight))]
    shared.sort(key=lambda nw: -int(np.prod(nw[1].shape)))
    paths = []
    for name, w in shared[:MAX_HISTOGRAMS]:
        dense = np.asarray(w.to_dense(), dtype=np.float32)
        ref = original.get(name)
        note = ""
        if ref is None or ref.shape != dense.shape:
            ref, note = dense, " (original not in the ONNX under this name: packed values shown)"
        rows = w.rows  # the matrix the codebook (and its per-row scales) is defined on: prod(shape[:row_dims])
        ref = ref.reshape(rows, -1).astype(np.float64)
        kept = dense.reshape(rows, -1) != 0
        if w.row_scales is not None:
            scales = w.row_scales.astype(np.float64)[:, None]
            ref = np.divide(ref, scales, out=np.zeros_like(ref), where=scales != 0)
            note += " (divided by per-channel scales)"
        centroids = np.asarray(w.codebook, dtype=np.float64)
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        lo = min(float(ref.min()), float(centroids.min()))
        hi = max(float(ref.max()), float(centroids.max()))
        bins = np.linspace(lo, hi, 121) if hi > lo else 10
        handles = []
        if (~kept).any():  # pruned weights on their own axis: they would dwarf the kept ones
            ax_p = ax.twinx()
            handles += [ax_p.hist(ref[~kept], bins=bins, color="0.6", histtype="step",
                                  label="pruned (right axis)")[2][0]]
            ax_p.set_ylabel("count, pruned", color="0.45")
            ax.set_zorder(ax_p.get_zorder() + 1)
            ax.patch.set_visible(False)
        handles += [ax.hist(ref[kept], bins=bins, color="tab:blue", alpha=0.8, label="kept")[2][0]]
        ymax = ax.get_ylim()[1]
        ax.vlines(centroids, 0, 0.06 * ymax, colors="tab:red", linewidth=1)
        handles += ax.plot(centroids, np.zeros_like(centroids), "x", color="tab:red", markersize=6,
                           label=f"centroids (k={centroids.size})")
        ax.set_xlabel("weight value" + note)
        ax.set_ylabel("count, kept")
        ax.set_title(f"{name}: {int(kept.sum()):,} of {kept.size:,} kept", fontsize=10)
        ax.legend(handles=handles, fontsize=8)
        fig.tight_layout()
        path = out / f"weights_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(os.fspath(path))
    return paths


def energy_split(plt, e: dict, path: Path) -> Path:
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    keys = ("original", "packed")
    x = np.arange(2)
    comp = [e[k]["compute_uj"] for k in keys]
    mem = [e[k]["memory_uj"] for k in keys]
    ax.bar(x - 0.18, comp, 0.36, label="compute")
    ax.bar(x + 0.18, mem, 0.36, label="data movement")
    for i, k in enumerate(keys):
        where = "weights in SRAM" if e[k]["weights_on_chip"] else "weights in DRAM"
        ax.text(i, max(comp[i], mem[i]) * 1.3, f"{e[k]['total_uj']:.3g} uJ\n{where}", ha="center", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(["original fp32", "packed"])
    ax.set_yscale("log")
    lo = min(v for v in comp + mem if v > 0) if any(v > 0 for v in comp + mem) else 1e-6
    ax.set_ylim(lo / 3, max(comp + mem) * 6)
    ax.set_ylabel("uJ per inference (log scale)")
    ax.set_title(f"energy split, SRAM {e['sram_bytes']:,} B", fontsize=10)
    ax.legend(fontsize=8)
    sweep = e["sweep"]
    s = [p["sram_bytes"] for p in sweep]
    ax2.plot(s, [p["original_uj"] for p in sweep], "o-", label="original fp32", markersize=3)
    ax2.plot(s, [p["packed_uj"] for p in sweep], "o-", label="packed", markersize=3)
    ax2.axvline(e["sram_bytes"], color="0.5", linestyle="--", linewidth=1)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("on-chip SRAM (bytes)")
    ax2.set_ylabel("uJ per inference")
    ax2.set_title(f"SRAM sweep ({e['process']})", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
