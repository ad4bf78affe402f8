"""Seeds for the fuzzer: the spec's example files and small packed models in every encoding.

    python fuzz/make_corpus.py fuzz/corpus
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
sys.path.insert(0, str(ROOT / "tests"))

import zoo  # noqa: E402

from edgepack.packer.pipeline import pack  # noqa: E402

SETTINGS = [
    ("mlp_sparse", zoo.mlp, dict(sparsity=0.7, bits=4, encoding="sparse_codebook")),
    ("mlp_codebook", zoo.mlp, dict(sparsity=0.0, bits=5, encoding="codebook")),
    ("mlp_int8", zoo.mlp, dict(encoding="int8")),
    ("cnn_sparse", zoo.cnn, dict(sparsity=0.5, bits=6)),
    ("cnn_f16", zoo.cnn, dict(encoding="float16")),
]


def main(out: str) -> None:
    dst = Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    for f in (ROOT / "spec" / "examples").glob("*.epk"):
        shutil.copy(f, dst / f.name)
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, kw in SETTINGS:
            src = zoo.save(build(sizes=(16, 12, 8, 4)) if build is zoo.mlp else build(), Path(tmp) / f"{name}.onnx")
            pack(src, dst / f"{name}.epk", **kw)
    print(f"{len(list(dst.iterdir()))} seeds in {dst}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")
