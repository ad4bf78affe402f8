"""Builds the example files of spec/format.md with the writer, and the hex dump the spec shows.
Run `python spec/make_examples.py` to rewrite spec/examples/ and the dump; tests/test_spec_examples.py checks both."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))

from edgepack.packer import bitpack, csr, huffman  # noqa: E402
from edgepack.packer.writer import build_file  # noqa: E402

META = {"producer": "spec example", "format_version": "1.0"}


def minimal() -> bytes:
    graph = {"name": "minimal", "opset": 17,
             "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}],
             "nodes": [{"op": "Relu", "name": "relu", "inputs": ["x"], "outputs": ["y"], "attrs": {}}],
             "tensors": []}
    return build_file(META, graph, deflate=False)  # plain JSON, so the hex dump reads


def sparse_weight() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keep mask, codes, codebook) of the 4 x 40 example; row 1 jumps 35 columns (a filler at 5-bit gaps)."""
    keep = np.zeros((4, 40), bool)
    codes = np.zeros((4, 40), np.uint8)
    for r, c, k in [(0, 0, 1), (0, 3, 2), (0, 4, 1), (1, 2, 3), (1, 37, 1), (3, 39, 2), (3, 10, 1)]:
        keep[r, c] = True
        codes[r, c] = k
    codebook = np.float32([0.0, -0.5, 0.25, 1.0])
    return keep, codes, codebook


def sparse() -> bytes:
    keep, codes, codebook = sparse_weight()
    indptr, gaps, entry_codes = csr.encode(keep, codes, 5)
    rows = keep.shape[0]
    boundaries = indptr[[0, rows]].astype(np.int64)  # one chunk of 4 rows
    lengths = huffman.code_lengths(np.bincount(entry_codes, minlength=4), 15)
    data, offsets = huffman.encode(entry_codes, lengths, boundaries)
    counts = np.diff(indptr.astype(np.int64))
    enc = {"type": "sparse_codebook", "codebook_dtype": "float32", "k": 4, "codebook": codebook,
           "rows_per_chunk": 4, "nnz": int(indptr[-1]),
           "row_counts": {"coding": "packed", "bits": 3, "data": bitpack.pack(counts, 3)},
           "gaps": {"coding": "packed", "bits": 5, "data": bitpack.pack(gaps, 5)},
           "codes": {"coding": "huffman", "bits": 2, "lengths": bitpack.pack(lengths, 4),
                     "offsets": offsets.astype("<u4"), "data": data}}
    graph = {"name": "sparse", "opset": 17,
             "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 40]}],
             "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}],
             "nodes": [{"op": "Gemm", "name": "fc", "inputs": ["x", "w"], "outputs": ["y"],
                        "attrs": {"transB": ["int", 1]}}],
             "tensors": [{"name": "w", "dtype": "float32", "shape": [4, 40], "encoding": enc}]}
    return build_file(META, graph)


EXAMPLES = {"minimal.epk": minimal, "sparse.epk": sparse}


def hexdump(data: bytes) -> str:
    lines = []
    for at in range(0, len(data), 16):
        row = data[at: at + 16]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{at:08x}  {hexes:<47}  |{text}|")
    return "\n".join(lines)


def spec_with_dump(spec: str, dump: str) -> str:
    return re.sub(r"(<!-- hexdump:minimal.epk -->\n```\n).*?(\n```\n<!-- /hexdump -->)",
                  lambda m: m.group(1) + dump + m.group(2), spec, flags=re.S)


def main() -> None:
    for name, build in EXAMPLES.items():
        (ROOT / "examples" / name).write_bytes(build())
    spec_path = ROOT / "format.md"
    spec_path.write_text(spec_with_dump(spec_path.read_text(), hexdump(minimal())))
    print("wrote", ", ".join(EXAMPLES), "and the dump in format.md")


if __name__ == "__main__":
    main()
