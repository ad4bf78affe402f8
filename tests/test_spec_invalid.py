"""The conformance suite of spec/format.md section 10 (spec/invalid/, spec/valid/): the files are what
spec/invalid/make_suite.py writes, this reader refuses every invalid file with the error class its manifest gives (and
a message that matches), and reads every valid file to the values its manifest gives."""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import craft
from edgepack.runtime.errors import EdgepackError
from edgepack.runtime.loader import dense_weights, read_packed

SPEC = Path(__file__).resolve().parent.parent / "spec"
INVALID = json.loads((SPEC / "invalid" / "manifest.json").read_text())
VALID = json.loads((SPEC / "valid" / "manifest.json").read_text())


def _suite():
    spec = importlib.util.spec_from_file_location("make_suite", SPEC / "invalid" / "make_suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _outcome(data: bytes) -> str:
    try:
        m = read_packed(data)
        for w in m.weights.values():
            np.asarray(w.to_dense())
    except EdgepackError as e:
        return f"{type(e).__name__}: {e}"
    return "ok"


def _deflated(data: bytes) -> bool:
    try:
        return any(s.flags & craft.DEFLATE for s in craft.split(data))
    except Exception:  # a file broken on purpose: the table itself may not parse
        return True


def test_suite_is_current():
    """The files and manifests on disk are what the generator writes now (a changed reader message or a new case in
    tests/test_format.py shows here: rerun `python spec/invalid/make_suite.py`). zlib may deflate differently on
    another build: a deflated file then only has to read the same way."""
    mod = _suite()
    for folder, (files, manifest) in zip(("invalid", "valid"), mod.build()):
        d = SPEC / folder
        assert (d / "manifest.json").read_text() == mod.manifest_text(manifest), f"spec/{folder}/manifest.json"
        assert sorted(p.name for p in d.glob("*.epk")) == sorted(files), f"spec/{folder}: files differ"
        for name, data in files.items():
            stored = (d / name).read_bytes()
            if stored != data:
                assert _deflated(data) and _outcome(stored) == _outcome(data), f"spec/{folder}/{name} is stale"


@pytest.mark.parametrize("row", INVALID["files"], ids=[r["file"] for r in INVALID["files"]])
def test_invalid_file_is_refused_as_the_manifest_says(row):
    data = (SPEC / "invalid" / row["file"]).read_bytes()
    with pytest.raises(EdgepackError) as info:
        m = read_packed(data)
        for w in m.weights.values():
            np.asarray(w.to_dense())
    assert type(info.value).__name__ == row["error"], f"{row['file']}: {info.value}"
    assert re.search(row["message"], str(info.value)), f"{row['file']}: {info.value}"


@pytest.mark.parametrize("row", VALID["files"], ids=[r["file"] for r in VALID["files"]])
def test_valid_file_reads_to_the_manifests_values(row):
    model = read_packed((SPEC / "valid" / row["file"]).read_bytes())
    got = dense_weights(model)
    assert sorted(got) == sorted(row["tensors"])
    for name, want in row["tensors"].items():
        a = np.asarray(got[name])
        assert a.dtype.name == want["dtype"] and list(a.shape) == want["shape"]
        assert a.reshape(-1).tolist() == want["values"], name


def test_manifests_cover_the_new_rules():
    """Each rule spec section 10 added has at least one invalid or valid file."""
    names = {r["file"] for r in INVALID["files"]} | {r["file"] for r in VALID["files"]}
    for needed in ("json-duplicate-key-meta", "meta-version-differs-from-header", "node-domain-custom",
                   "dense-bool-byte-2", "extension-deflate-flag", "extension-crc", "codebook-on-empty-tensor",
                   "extension-before-meta", "extension-after-data", "zero-length-buffer-at-end", "rank-0-dense",
                   "int8-axis-absent", "int8-axis-null", "codebook-row-scales-null", "sparse-code-0-anywhere",
                   "packed-16-bit-odd-offset", "node-domain-default"):
        assert f"{needed}.epk" in names, needed
    errors = {r["error"] for r in INVALID["files"]}
    assert errors == {"FormatError", "ChecksumError", "UnsupportedError"}


def test_writer_gives_empty_buffers_no_padding():
    """An empty tensor after an odd-sized buffer: the writer used to pad for it and leave the padding unclaimed at the
    end of the data section, a file its own reader refused (spec section 5: zero-length buffers)."""
    from edgepack.packer.writer import build_file

    graph = craft.tensor_graph([
        {"name": "a", "dtype": "uint8", "shape": [3], "encoding": {"type": "dense", "dtype": "uint8",
                                                                   "data": np.uint8([1, 2, 3])}},
        {"name": "e", "dtype": "float32", "shape": [0, 2], "encoding": {"type": "dense", "dtype": "float32",
                                                                        "data": np.zeros(0, np.float32)}}])
    m = read_packed(build_file({"producer": "p", "format_version": "1.0"}, graph, deflate=False))
    assert m.graph["tensors"][1]["encoding"]["data"] == [0, 0] and m.container.data.size == 3
    assert np.asarray(m.weights["e"].to_dense()).shape == (0, 2)
