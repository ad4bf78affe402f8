"""What a packed file holds, computed from the file alone (so `edgepack info` runs on a board): the Deep
Compression table per tensor — kept %, weight and index bits packed and after Huffman, bytes, rate — and totals."""
from __future__ import annotations

import numpy as np

from . import constants as C
from .loader import PackedModel
from .weights import CodebookWeight, SparseCodebookWeight


def printable(text) -> str:
    """A name from a file as a terminal may show it: control characters (escape sequences, newlines, bells) and other
    unprintable ones written as Python escapes (\\x1b, \\n), so that a crafted name cannot move the cursor, change
    the window title or fake a line of the report."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _buffer_bytes(obj) -> int:
    if isinstance(obj, dict):
        return sum(_buffer_bytes(v) for v in obj.values())
    if isinstance(obj, list) and len(obj) == 2 and all(isinstance(x, int) for x in obj):
        return obj[1]
    return 0


def _stream(s: dict | None, count: int) -> dict | None:
    if s is None:
        return None
    packed = -(-count * s["bits"] // 8)
    stored = _buffer_bytes(s)
    return {"coding": s["coding"], "bits": s["bits"], "count": count, "packed_bytes": packed,
            "stored_bytes": stored}


def _bits(st: dict | None, per: int) -> tuple[float | None, float | None]:
    """(bits per weight as packed, bits per weight as stored) over `per` kept weights."""
    if st is None or per == 0:
        return None, None
    return st["packed_bytes"] * 8 / per, st["stored_bytes"] * 8 / per


def layer_table(model: PackedModel) -> dict:
    rows = []
    graph = model.graph
    users = {}
    for n in graph["nodes"]:
        for i in n["inputs"]:
            users.setdefault(i, n)
    for t in graph["tensors"]:
        name, enc = t["name"], t["encoding"]
        w = model.weights[name]
        count = int(np.prod(t["shape"], dtype=np.int64))
        nbytes = _buffer_bytes(enc)
        row = {"name": name, "op": users.get(name, {}).get("op", ""), "shape": t["shape"], "dtype": t["dtype"],
               "encoding": enc["type"] if enc["type"] != C.ENC_DENSE else f"dense {enc['dtype']}",
               "weights": count, "kept": count, "bytes": nbytes, "codes": None, "gaps": None, "k": None,
               "row_scales": False}
        if isinstance(w, SparseCodebookWeight):
            nnz = int(w.codes.size)
            row["kept"] = int(np.count_nonzero(w.codebook[w.codes]))
            row["fillers"] = nnz - int(np.count_nonzero(w.codes))
            row["codes"] = _stream(enc["codes"], nnz)
            row["gaps"] = _stream(enc["gaps"], nnz)
        elif isinstance(w, CodebookWeight):
            row["kept"] = int(np.count_nonzero(w.codebook[w.codes]))
            row["codes"] = _stream(enc["codes"], count)
        if isinstance(w, (SparseCodebookWeight, CodebookWeight)):
            row["k"] = int(w.codebook.size)
            row["row_scales"] = w.row_scales is not None
        row["weight_bits"] = _bits(row["codes"], row["kept"])
        row["index_bits"] = _bits(row["gaps"], row["kept"])
        row["fp32_bytes"] = 4 * count if t["dtype"].startswith("float") else nbytes
        row["rate"] = row["fp32_bytes"] / nbytes if nbytes else float("inf")
        rows.append(row)
    streams = [r[k] for r in rows for k in ("codes", "gaps") if r[k]]
    packed = sum(s["packed_bytes"] for s in streams)
    stored = sum(s["stored_bytes"] for s in streams)
    source = model.meta.get("source", {}) if isinstance(model.meta.get("source"), dict) else {}
    original = source.get("fp32_bytes")
    if not isinstance(original, int) or original <= 0:
        original = sum(r["fp32_bytes"] for r in rows if r["dtype"].startswith("float"))
    total = model.file_size
    return {
        "layers": rows,
        "tensor_bytes": sum(r["bytes"] for r in rows),
        "total_bytes": total,
        "original_bytes": original,
        "ratio": original / total if total else float("inf"),
        "streams_packed_bytes": packed,
        "streams_stored_bytes": stored,
        "huffman_saving": 1 - stored / packed if packed else 0.0,
        "overhead_bytes": total - sum(r["bytes"] for r in rows),
    }


def _fmt_bits(pair) -> str:
    a, b = pair
    return "-" if a is None else f"{a:5.2f} / {b:5.2f}"


def format_table(info: dict) -> str:
    head = (f"{'tensor':<24} {'op':<6} {'encoding':<16} {'#weights':>9} {'kept':>7} {'k':>4} "
            f"{'weight bits':>15} {'index bits':>15} {'bytes':>9} {'rate':>7}")
    lines = [head, "-" * len(head)]
    for r in info["layers"]:
        kept = f"{100 * r['kept'] / r['weights']:6.1f}%" if r["weights"] else "     -"
        lines.append(
            f"{printable(r['name'])[:24]:<24} {printable(r['op'])[:6]:<6} {printable(r['encoding'])[:16]:<16} "
            f"{r['weights']:>9} {kept:>7} "
            f"{r['k'] if r['k'] else '-':>4} {_fmt_bits(r['weight_bits']):>15} {_fmt_bits(r['index_bits']):>15} "
            f"{r['bytes']:>9} {r['rate']:>6.1f}x")
    lines.append("-" * len(head))
    lines.append("weight/index bits: per kept weight, packed / as stored (after Huffman where it is smaller)")
    lines.append(f"tensors {info['tensor_bytes']} B + container and graph {info['overhead_bytes']} B "
                 f"= file {info['total_bytes']} B")
    lines.append(f"Huffman: streams {info['streams_packed_bytes']} B packed -> {info['streams_stored_bytes']} B "
                 f"stored ({100 * info['huffman_saving']:.1f}% saved)")
    lines.append(f"ratio {info['ratio']:.1f}x = original fp32 weights and biases {info['original_bytes']} B "
                 f"/ total file bytes {info['total_bytes']} B")
    return "\n".join(lines)
