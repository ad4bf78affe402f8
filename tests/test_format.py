"""The reader on malformed input (spec/format.md sections 2-7): one crafted file per error it raises, each also as an
accident leaves it (stale CRCs) and as an attacker leaves it (CRCs recomputed), plus truncation / bit-flip / boundary
sweeps over real files. Every failure must be a clean EdgepackError; anything else is a reader bug."""
from __future__ import annotations

import importlib.util
import struct
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import craft
from edgepack.runtime.errors import ChecksumError, EdgepackError, FormatError, UnsupportedError
from edgepack.runtime.loader import read_packed

SPEC = Path(__file__).resolve().parent.parent / "spec"
MIN = (SPEC / "examples" / "minimal.epk").read_bytes()
SPARSE = (SPEC / "examples" / "sparse.epk").read_bytes()
META_CAP, GRAPH_CAP = 1 << 20, 16 << 20


def _make_examples():
    spec = importlib.util.spec_from_file_location("make_examples", SPEC / "make_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read_all(data: bytes):
    """read_packed, then every weight decoded to dense: a file that reads must also decode without crashing."""
    m = read_packed(data)
    for w in m.weights.values():
        np.asarray(w.to_dense())
    return m


def clean(data: bytes) -> str:
    """'ok' or the EdgepackError subclass read_packed raised; any other exception propagates (a reader bug)."""
    try:
        read_all(data)
    except EdgepackError as e:
        return type(e).__name__
    return "ok"


# --- 1. the spec's examples -------------------------------------------------------------------------------------------

def test_minimal_example_reads():
    m = read_packed(MIN)
    assert m.meta == {"producer": "spec example", "format_version": "1.0"}
    assert [n["op"] for n in m.graph["nodes"]] == ["Relu"] and m.weights == {}
    assert m.container.version == (1, 0) and m.file_size == len(MIN) == 512
    assert craft.rebuild(MIN) == MIN and craft.fix_crcs(MIN) == MIN  # craft writes what the spec says


def test_sparse_example_decodes_to_the_dense_matrix():
    keep, codes, codebook = _make_examples().sparse_weight()
    expected = np.zeros(keep.shape, np.float32)
    for r, c in zip(*np.nonzero(keep)):
        expected[r, c] = codebook[codes[r, c]]
    m = read_packed(SPARSE)
    w = m.weights["w"]
    np.testing.assert_array_equal(w.to_dense(), expected)
    # CSR with relative gaps: row 1 jumps 35 columns, more than a 5-bit gap holds, so one filler (code 0) is there
    assert w.indptr.tolist() == [0, 3, 6, 6, 8]
    assert w.columns.tolist() == [0, 3, 4, 2, 34, 37, 10, 39]
    assert w.codes.tolist() == [1, 2, 1, 3, 0, 1, 1, 2]
    assert craft.rebuild(SPARSE) == SPARSE and craft.fix_crcs(SPARSE) == SPARSE


def test_read_from_path_and_empty_file(tmp_path):
    p = tmp_path / "m.epk"
    p.write_bytes(SPARSE)
    np.testing.assert_array_equal(read_packed(p).weights["w"].to_dense(), read_packed(SPARSE).weights["w"].to_dense())
    empty = tmp_path / "empty.epk"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="file is empty"):
        read_packed(empty)
    short = tmp_path / "short.epk"
    short.write_bytes(SPARSE[:100])
    with pytest.raises(FormatError, match="header says file size 614, file has 100 bytes"):
        read_packed(short)


# --- crafted tensors --------------------------------------------------------------------------------------------------

def tfile(*tensors) -> bytes:
    return craft.tensor_file(*tensors)


def t(shape, encoding, dtype="float32", name="w") -> dict:
    return craft.tensor(name, shape, encoding, dtype)


def dense(arr, storage=None) -> dict:
    arr = np.asarray(arr)
    return {"type": "dense", "dtype": storage or arr.dtype.name, "data": arr.reshape(-1)}


def with_(enc: dict, **kw) -> dict:
    """A copy of an encoding with fields replaced (value None: field removed)."""
    out = dict(enc)
    for k, v in kw.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def int8_enc(**kw) -> dict:
    return with_({"type": "int8", "axis": 0, "scale": np.float32([0.5, 0.25]), "zero_point": np.int8([0, 1]),
                  "data": np.arange(6, dtype=np.int8)}, **kw)


def cb_enc(**kw) -> dict:
    """codebook, shape (2, 3), packed 2-bit codes: 12 bits, so the last byte has 4 pad bits."""
    return with_({"type": "codebook", "codebook_dtype": "float32", "k": 3, "codebook": np.float32([0, 0.5, -1]),
                  "rows_per_chunk": 1, "codes": craft.packed([0, 1, 2, 2, 1, 0], 2)}, **kw)


# Huffman codebook, shape (4, 8) in 2 chunks of 2 rows: lengths 1,2,3,3 -> codes 0, 10, 110, 111.
# chunk 0 = fifteen 0s and a 1: 17 bits in 3 bytes (7 pad bits); chunk 1 = sixteen 3s: 48 bits, exactly 6 bytes.
H_LENGTHS = [1, 2, 3, 3]
H_CHUNKS = [[0] * 15 + [1], [3] * 16]
H_PARTS, H_OFFSETS = craft.huffman_chunks(H_CHUNKS, H_LENGTHS)


def hcb_enc(stream: dict | None = None, **kw) -> dict:
    return with_({"type": "codebook", "codebook_dtype": "float32", "k": 4,
                  "codebook": np.float32([0, 1, 2, 3]), "rows_per_chunk": 2,
                  "codes": stream or craft.huffman(H_CHUNKS, H_LENGTHS, 2)}, **kw)


def hstream(**kw) -> dict:
    return craft.huffman(H_CHUNKS, H_LENGTHS, 2, **kw)


# sparse_codebook, shape (3, 10), 2-bit gaps (largest gap 3): row 0 holds columns 1 and 4, row 1 nothing, row 2
# column 9, reached through two fillers (columns 3 and 7).
SP_DENSE = np.zeros((3, 10), np.float32)
SP_DENSE[0, 1], SP_DENSE[0, 4], SP_DENSE[2, 9] = 0.5, -1.0, 0.5


def sp_enc(gaps=(1, 2, 3, 3, 1), codes=(1, 2, 0, 0, 1), counts=(2, 0, 3), **kw) -> dict:
    return with_({"type": "sparse_codebook", "codebook_dtype": "float32", "k": 3,
                  "codebook": np.float32([0, 0.5, -1]), "rows_per_chunk": 2, "nnz": len(gaps),
                  "row_counts": craft.packed(counts, 2), "gaps": craft.packed(gaps, 2),
                  "codes": craft.packed(codes, 2)}, **kw)


DENSE_F = tfile(t([2, 3], dense(np.arange(6, dtype=np.float32))))
# 'a' uint8 at [0, 3), one pad byte at 3, 'b' float32 at [4, 28)
TWO_F = tfile(t([3], dense(np.uint8([1, 2, 3])), "uint8", "a"), t([2, 3], dense(np.arange(6, dtype=np.float32)),
                                                                    name="b"))
HCB_F = tfile(t([4, 8], hcb_enc()))
SP_F = tfile(t([3, 10], sp_enc()))


def set_ref(name: str, *path_and_ref):
    """A graph edit: tensor `name`'s encoding field at path (keys) set to the last argument."""
    *path, value = path_and_ref

    def fn(g):
        obj = next(x for x in g["tensors"] if x["name"] == name)["encoding"]
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return fn


def test_crafted_tensor_files_are_valid():
    m = read_all(DENSE_F)
    np.testing.assert_array_equal(m.weights["w"].to_dense(), np.arange(6, dtype=np.float32).reshape(2, 3))
    m = read_all(TWO_F)
    assert m.weights["a"].to_dense().tolist() == [1, 2, 3]
    m = read_all(HCB_F)
    np.testing.assert_array_equal(m.weights["w"].to_dense().ravel(), np.float32(sum(H_CHUNKS, [])))
    np.testing.assert_array_equal(read_all(SP_F).weights["w"].to_dense(), SP_DENSE)
    q = read_all(tfile(t([2, 3], int8_enc()))).weights["w"].to_dense()
    expected = (np.arange(6).reshape(2, 3) - np.float32([[0], [1]])) * np.float32([[0.5], [0.25]])
    np.testing.assert_array_equal(q, expected)
    np.testing.assert_array_equal(read_all(tfile(t([2, 3], cb_enc()))).weights["w"].to_dense(),
                                  np.float32([[0, 0.5, -1], [-1, 0.5, 0]]))


# --- 2. one crafted file per error ------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    base: bytes  # the file it was made from: its CRCs are what an accident leaves behind
    make: Callable[[], bytes]  # the crafted file with every CRC right, as an attacker leaves it
    exc: type
    match: str
    stage: str = "body"  # header: checked before the header CRC; table: before the section CRCs; body: after


def C(id, base, make, exc, match, stage="body"):  # noqa: N802 - a table row
    return pytest.param(Case(id, base, make, exc, match, stage), id=id)


def fixed(data: bytes) -> bytes:
    return craft.fix_crcs(data)


def meta_json(extra: bytes = b"") -> bytes:
    return b'{"producer":"p","format_version":"1.0"' + extra + b"}"


def padded_json(size: int) -> bytes:
    """A valid meta object of exactly `size` bytes (trailing whitespace is valid JSON)."""
    return meta_json().ljust(size, b" ")


def minimal_graph() -> dict:
    return craft.parse(MIN)[1]


def g_edit(fn) -> Callable[[], bytes]:
    return lambda: craft.edit_graph(MIN, fn)


def node(name="relu2", inputs=("y",), outputs=("z",), op="Relu", attrs=None) -> dict:
    return {"op": op, "name": name, "inputs": list(inputs), "outputs": list(outputs), "attrs": attrs or {}}


def _add_node(n):
    return lambda g: g["nodes"].append(n)


def _set(path, value):
    def fn(g):
        obj = g
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value
    return fn


def _attr(value):
    return _set(("nodes", 0, "attrs"), {"a": value})


EMPTY_DENSE = {"name": "t", "dtype": "float32", "shape": [0], "encoding": {"type": "dense", "dtype": "float32",
                                                                            "data": [0, 0]}}

HEADER_CASES = [
    C("short-63", MIN, lambda: MIN[:63], FormatError, "file is 63 bytes, shorter than the 64-byte header", "header"),
    C("short-0", MIN, lambda: b"", FormatError, "file is 0 bytes", "header"),
    C("bad-magic", MIN, lambda: fixed(craft.xor_byte(MIN, 1, 0x20)), FormatError, "bad magic", "header"),
    C("text-mode-magic", MIN, lambda: MIN.replace(b"\r\n", b"\n", 1), FormatError, "bad magic", "header"),
    C("major-2", MIN, lambda: craft.set_header(MIN, "version_major", 2), UnsupportedError,
      r"format version 2\.0 is not supported", "header"),
    C("major-0", MIN, lambda: craft.set_header(MIN, "version_major", 0), UnsupportedError,
      r"format version 0\.0 is not supported", "header"),
    C("reserved-32", MIN, lambda: fixed(craft.put(MIN, 32, "<B", 1)), FormatError, r"reserved bytes 32\.\.63",
      "header"),
    C("reserved-63", MIN, lambda: fixed(craft.put(MIN, 63, "<B", 0x80)), FormatError, "reserved bytes", "header"),
    C("table-offset", MIN, lambda: craft.set_header(MIN, "table_offset", 96), FormatError,
      r"section table offset 96 \(expected 64\)", "header"),
    C("count-0", MIN, lambda: craft.set_header(MIN, "section_count", 0), FormatError,
      r"section count 0 out of range \(expected 3\.\.16\)", "header"),
    C("count-2", MIN, lambda: craft.set_header(MIN, "section_count", 2), FormatError, "section count 2 out of range",
      "header"),
    C("count-17", MIN, lambda: craft.set_header(MIN, "section_count", 17), FormatError,
      "section count 17 out of range", "header"),
    C("file-size+1", MIN, lambda: craft.set_header(MIN, "file_size", 513), FormatError,
      "header says file size 513, file has 512 bytes", "header"),
    C("appended-byte", MIN, lambda: MIN + b"\0", FormatError, "header says file size 512, file has 513", "header"),
    C("table-past-end", MIN, lambda: craft.set_header(MIN[:100], "file_size", 100), FormatError,
      "section table ends at 160 > file size 100", "header"),
]

TABLE_CASES = [
    C("flags-bit1", MIN, lambda: craft.set_entry(MIN, 0, "flags", 2), FormatError,
      r"section meta: flags 0x2 / reserved 0x0 not allowed", "table"),
    C("deflate-on-data", MIN, lambda: craft.set_entry(MIN, 2, "flags", 1), FormatError,
      r"section data: flags 0x1 .*only meta and graph", "table"),
    C("entry-reserved", MIN, lambda: craft.set_entry(MIN, 1, "reserved", 1), FormatError,
      r"section graph: flags 0x0 / reserved 0x1", "table"),
    C("offset-not-layout", MIN, lambda: craft.set_entry(MIN, 0, "offset", 256), FormatError,
      r"section meta: offset 256 \(expected 192", "table"),
    C("hole", MIN, lambda: craft.assemble(craft.split(MIN), offsets=[192, 320, 576]), FormatError,
      r"section graph: offset 320 \(expected 256: .*without holes or overlaps", "table"),
    C("overlap", MIN, lambda: craft.assemble(craft.split(MIN), offsets=[192, 224, 512]), FormatError,
      r"section graph: offset 224 \(expected 256", "table"),
    C("length-past-end", MIN, lambda: craft.set_entry(MIN, 2, "length", 1), FormatError,
      "section data: end 513 > file size 512", "table"),
    C("length-2^64-1", MIN, lambda: craft.set_entry(MIN, 0, "length", 2**64 - 1), FormatError,
      "section meta: end 18446744073709551807 > file size 512", "table"),
    C("padding-before-meta", MIN, lambda: craft.put(MIN, 170, "<B", 1), FormatError,
      "nonzero padding before section meta", "table"),
    C("padding-before-graph", MIN, lambda: craft.put(MIN, 250, "<B", 0x40), FormatError,
      "nonzero padding before section graph", "table"),
    C("trailing-64", MIN, lambda: craft.set_header(MIN + bytes(64), "file_size", 576), FormatError,
      "file has 64 bytes after the last section", "table"),
    C("trailing-1", MIN, lambda: craft.set_header(MIN + b"\0", "file_size", 513), FormatError,
      "file has 1 bytes after the last section", "table"),
    C("kind-order", MIN, lambda: craft.assemble([craft.split(MIN)[i] for i in (1, 0, 2)]), FormatError,
      r"sections must be meta, graph, data in that order \(found kinds \[2, 1, 3\]\)", "table"),
    C("kind-twice", MIN, lambda: craft.assemble([craft.split(MIN)[i] for i in (0, 0, 1, 2)]), FormatError,
      r"found kinds \[1, 1, 2, 3\]", "table"),
    C("no-data-section", MIN, lambda: craft.assemble(craft.split(MIN)[:2] + [craft.Sec(0x8001, b"x")]), FormatError,
      r"found kinds \[1, 2, 32769\]", "table"),
    C("unknown-kind", MIN, lambda: craft.assemble(craft.split(MIN)[:2] + [craft.Sec(4, b"?")] + craft.split(MIN)[2:]),
      UnsupportedError, "unknown required section kind 4", "table"),
    C("data-kind-7", MIN, lambda: craft.set_entry(MIN, 2, "kind", 7), UnsupportedError,
      "unknown required section kind 7", "table"),
]

DEFLATE_CASES = [
    C("deflate-flag-plain-json", MIN, lambda: craft.set_entry(MIN, 0, "flags", 1), FormatError,
      "section meta: not a valid zlib stream"),
    C("deflate-bomb", MIN, lambda: craft.rebuild(MIN, meta=padded_json(META_CAP + 1), deflate=True), FormatError,
      "section meta: inflates to more than the cap of 1048576 bytes"),
    C("deflate-truncated", MIN, lambda: craft.assemble([craft.Sec(1, zlib.compress(meta_json())[:-2], 1)]
                                                       + craft.split(MIN)[1:]), FormatError,
      "section meta: zlib stream is truncated or followed by extra bytes"),
    C("deflate-extra-bytes", MIN, lambda: craft.assemble([craft.Sec(1, zlib.compress(meta_json()) + b"\0", 1)]
                                                         + craft.split(MIN)[1:]), FormatError,
      "section meta: zlib stream is truncated or followed by extra bytes"),
    C("deflate-stored-over-cap", MIN, lambda: craft.assemble(
        [craft.Sec(1, np.random.default_rng(0).bytes(META_CAP + 1), 1)] + craft.split(MIN)[1:]), FormatError,
      "section meta: 1048577 bytes exceeds the cap of 1048576"),
    C("deflate-graph-not-json", MIN, lambda: craft.rebuild(MIN, graph=b"\xff\xfe", deflate=True), FormatError,
      "section graph: not valid UTF-8 JSON"),
]

JSON_CASES = [
    C("meta-not-utf8", MIN, lambda: craft.rebuild(MIN, meta=b'{"producer":"\xff","format_version":"1.0"}'),
      FormatError, "section meta: not valid UTF-8 JSON"),
    C("meta-bom", MIN, lambda: craft.rebuild(MIN, meta=b"\xef\xbb\xbf" + meta_json()), FormatError,
      "section meta: not valid UTF-8 JSON"),
    C("meta-not-json", MIN, lambda: craft.rebuild(MIN, meta=b'{"producer":'), FormatError,
      "section meta: not valid UTF-8 JSON"),
    C("meta-empty", MIN, lambda: craft.rebuild(MIN, meta=b""), FormatError, "section meta: not valid UTF-8 JSON"),
    C("meta-nan", MIN, lambda: craft.rebuild(MIN, meta=meta_json(b',"x":NaN')), FormatError,
      "section meta: not valid UTF-8 JSON .*NaN is not allowed"),
    C("meta-infinity", MIN, lambda: craft.rebuild(MIN, meta=meta_json(b',"x":[-Infinity]')), FormatError,
      "-Infinity is not allowed"),
    C("graph-nan-attr", MIN, lambda: craft.rebuild(MIN, graph=craft.json_bytes(minimal_graph()).replace(
        b'"attrs":{}', b'"attrs":{"alpha":["float",NaN]}')), FormatError, "section graph: .*NaN is not allowed"),
    # CPython >= 3.11 refuses int literals over 4300 digits with a plain ValueError: it must become a FormatError
    C("meta-huge-int", MIN, lambda: craft.rebuild(MIN, meta=meta_json(b',"n":' + b"7" * 5000)), FormatError,
      "section meta: not valid UTF-8 JSON .*digits"),
    C("meta-deep-nesting", MIN, lambda: craft.rebuild(MIN, meta=meta_json(b',"x":' + b"[" * 50000 + b"]" * 50000)),
      FormatError, "section meta: not valid UTF-8 JSON"),
    C("meta-list", MIN, lambda: craft.rebuild(MIN, meta=b"[]"), FormatError,
      "section meta: top level must be a JSON object, found list"),
    C("graph-string", MIN, lambda: craft.rebuild(MIN, graph=b'"graph"'), FormatError,
      "section graph: top level must be a JSON object, found str"),
    C("meta-over-cap", MIN, lambda: craft.rebuild(MIN, meta=padded_json(META_CAP + 1)), FormatError,
      "section meta: 1048577 bytes exceeds the cap of 1048576"),
    C("graph-over-cap", MIN, lambda: craft.rebuild(MIN, graph=craft.json_bytes(minimal_graph()).ljust(GRAPH_CAP + 1)),
      FormatError, "section graph: 16777217 bytes exceeds the cap of 16777216"),
    C("meta-no-producer", MIN, lambda: craft.rebuild(MIN, meta={"format_version": "1.0"}), FormatError,
      "section meta: missing field 'producer'"),
    C("meta-version-int", MIN, lambda: craft.rebuild(MIN, meta={"producer": "p", "format_version": 1}), FormatError,
      "section meta: field 'format_version' must be a string, found int"),
    C("meta-producer-long", MIN, lambda: craft.rebuild(MIN, meta={"producer": "p" * 4097, "format_version": "1.0"}),
      FormatError, "field 'producer' is longer than 4096 characters"),
    C("graph-no-nodes", MIN, g_edit(lambda g: g.pop("nodes")), FormatError, "section graph: missing field 'nodes'"),
    C("graph-name-int", MIN, g_edit(_set(("name",), 1)), FormatError, "field 'name' must be a string, found int"),
    C("opset-bool", MIN, g_edit(_set(("opset",), True)), FormatError,
      "field 'opset' must be an integer, found a boolean"),
    C("opset-float", MIN, g_edit(_set(("opset",), 17.0)), FormatError, "field 'opset' must be an integer, found float"),
    C("opset-exponent", MIN, lambda: craft.rebuild(MIN, graph=craft.json_bytes(minimal_graph()).replace(
        b'"opset":17', b'"opset":1.7e1')), FormatError, "field 'opset' must be an integer, found float"),
    C("opset-string", MIN, g_edit(_set(("opset",), "17")), FormatError, "field 'opset' must be an integer, found str"),
    C("opset-0", MIN, g_edit(_set(("opset",), 0)), FormatError, r"field 'opset' = 0 out of range \[1, 1000\]"),
    C("opset-1001", MIN, g_edit(_set(("opset",), 1001)), FormatError, "field 'opset' = 1001 out of range"),
    C("inputs-dict", MIN, g_edit(_set(("inputs",), {})), FormatError, "field 'inputs' must be a list, found dict"),
    C("input-not-object", MIN, g_edit(_set(("inputs",), [1])), FormatError,
      r"inputs\[0\]: expected a JSON object, found int"),
    C("input-dtype", MIN, g_edit(_set(("inputs", 0, "dtype"), "complex64")), UnsupportedError,
      r"inputs\[0\] \('x'\): dtype 'complex64' is not supported"),
    C("input-twice", MIN, g_edit(lambda g: g["inputs"].append(dict(g["inputs"][0]))), FormatError,
      r"inputs\[1\]: input name 'x' is empty or defined twice"),
    C("input-empty-name", MIN, g_edit(_set(("inputs", 0, "name"), "")), FormatError,
      r"inputs\[0\]: input name '' is empty or defined twice"),
    C("tensor-named-like-input", MIN, g_edit(_set(("tensors",), [dict(EMPTY_DENSE, name="x")])), FormatError,
      r"tensors\[0\]: tensor name 'x' is empty or defined twice"),
    C("tensor-twice", MIN, g_edit(_set(("tensors",), [EMPTY_DENSE, EMPTY_DENSE])), FormatError,
      r"tensors\[1\]: tensor name 't' is empty or defined twice"),
    C("tensor-dtype", MIN, g_edit(_set(("tensors",), [dict(EMPTY_DENSE, dtype="bfloat16")])), UnsupportedError,
      "dtype 'bfloat16' is not supported"),
    C("encoding-unknown", MIN, g_edit(_set(("tensors",), [dict(EMPTY_DENSE, encoding={"type": "zstd"})])),
      UnsupportedError, r"tensors\[0\] \('t'\): encoding 'zstd' is not supported"),
    C("encoding-no-type", MIN, g_edit(_set(("tensors",), [dict(EMPTY_DENSE, encoding={})])), FormatError,
      "encoding: missing field 'type'"),
    C("node-twice", MIN, g_edit(_add_node(node(name="relu"))), FormatError,
      r"node 'relu' \(Relu\): node name is empty or used twice"),
    C("node-empty-name", MIN, g_edit(_set(("nodes", 0, "name"), "")), FormatError,
      "node name is empty or used twice"),
    C("node-name-long", MIN, g_edit(_set(("nodes", 0, "name"), "n" * 4097)), FormatError,
      "field 'name' is longer than 4096"),
    C("dangling-input", MIN, g_edit(_set(("nodes", 0, "inputs"), ["nope"])), FormatError,
      r"input 0 'nope' is not defined before this node \(nodes must be in topological order\)"),
    C("cycle-order", MIN, g_edit(lambda g: g["nodes"].insert(0, node())), FormatError,
      r"node 'relu2' \(Relu\): input 0 'y' is not defined before this node \(nodes must be in topological order\)"),
    C("node-input-int", MIN, g_edit(_set(("nodes", 0, "inputs"), [1])), FormatError, "input 0 must be a string"),
    C("output-twice", MIN, g_edit(_add_node(node(outputs=["y"]))), FormatError, "output 'y' is already defined"),
    C("output-is-input", MIN, g_edit(_set(("nodes", 0, "outputs"), ["x"])), FormatError,
      "output 'x' is already defined"),
    C("output-empty", MIN, g_edit(_set(("nodes", 0, "outputs"), [""])), FormatError,
      "output 0 must be a non-empty string"),
    C("never-produced", MIN, g_edit(_set(("outputs", 0, "name"), "z")), FormatError,
      r"outputs\[0\] 'z' is never produced"),
    C("domain-int", MIN, g_edit(_set(("nodes", 0, "domain"), 1)), FormatError, "field 'domain' must be a string"),
    C("attrs-list", MIN, g_edit(_set(("nodes", 0, "attrs"), [])), FormatError,
      "field 'attrs' must be an object, found list"),
    C("attr-int-float", MIN, g_edit(_attr(["int", 1.5])), FormatError,
      "attribute 'a': value does not match its kind 'int'"),
    C("attr-int-bool", MIN, g_edit(_attr(["int", True])), FormatError, "does not match its kind 'int'"),
    C("attr-float-str", MIN, g_edit(_attr(["float", "1"])), FormatError, "does not match its kind 'float'"),
    C("attr-ints-mixed", MIN, g_edit(_attr(["ints", [1, "2"]])), FormatError, "does not match its kind 'ints'"),
    C("attr-floats-bool", MIN, g_edit(_attr(["floats", [1.0, False]])), FormatError,
      "does not match its kind 'floats'"),
    C("attr-strings-str", MIN, g_edit(_attr(["strings", "abc"])), FormatError, "does not match its kind 'strings'"),
    C("attr-kind-unknown", MIN, g_edit(_attr(["tensor", 1])), FormatError, r"attribute 'a': must be \[kind, value\]"),
    C("attr-not-pair", MIN, g_edit(_attr(["int"])), FormatError, r"must be \[kind, value\]"),
    C("attr-kind-list", MIN, g_edit(_attr([["int"], 1])), FormatError, r"must be \[kind, value\]"),
    C("rank-9", MIN, g_edit(_set(("inputs", 0, "shape"), [1] * 9)), FormatError,
      "shape must be a list of at most 8 dimensions"),
    C("dim-negative", MIN, g_edit(_set(("inputs", 0, "shape"), [-1])), FormatError,
      r"dimension -1 out of range \[0, 2147483648\]"),
    C("dim-too-big", MIN, g_edit(_set(("outputs", 0, "shape"), [2**31 + 1])), FormatError,
      "dimension 2147483649 out of range"),
    C("dim-bool", MIN, g_edit(_set(("inputs", 0, "shape"), [True])), FormatError, "bad dimension True in shape"),
    C("dim-float", MIN, g_edit(_set(("inputs", 0, "shape"), [1.0])), FormatError, "bad dimension 1.0 in shape"),
    C("dim-empty-name", MIN, g_edit(_set(("inputs", 0, "shape"), [""])), FormatError, "bad dimension name in shape"),
    C("tensor-dim-dynamic", MIN, g_edit(_set(("tensors",), [dict(EMPTY_DENSE, shape=["N"])])), FormatError,
      "bad dimension 'N' in shape"),
    C("shape-string", MIN, g_edit(_set(("inputs", 0, "shape"), "1")), FormatError,
      "field 'shape' must be a list, found str"),
    C("nodes-over-cap", MIN, g_edit(_set(("nodes",), [0] * 100_001)), FormatError,
      "100001 nodes exceeds the cap of 100000"),
    C("tensors-over-cap", MIN, g_edit(_set(("tensors",), [0] * 100_001)), FormatError,
      "100001 tensors exceeds the cap of 100000"),
    C("inputs-over-cap", MIN, g_edit(_set(("inputs",), [0] * 100_001)), FormatError, "too many inputs"),
]


def _dense_case(id, make, exc, match):
    return C(id, DENSE_F, make, exc, match)


def _hole7():
    return craft.edit(tfile(t([3], dense(np.uint8([1, 2, 3])), "uint8")), set_ref("w", "data", [7, 3]),
                      lambda d: bytes(7) + bytes(d))


def _huffman_alias():
    """A Huffman data buffer of length -19 makes the slice [16, -3): the byte 16 inside the offsets buffer."""
    f = tfile(t([1, 1], {"type": "codebook", "codebook_dtype": "float32", "k": 2, "codebook": np.float32([0, 1]),
                         "rows_per_chunk": 1,
                         "codes": craft.huffman([[1]], [1, 1], 1, data=b"", offsets=[0, 1])}))
    return craft.edit_graph(f, set_ref("w", "codes", "data", [16, -19]))


W = "<bytes>: tensor 'w' encoding"
BUFFER_CASES = [
    _dense_case("buffer-out-of-bounds", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [8, 24])),
                FormatError,
                r"tensor 'w' encoding 'dense' data: buffer \[8, 32\) outside the data section \(24 bytes\)"),
    _dense_case("buffer-negative-offset", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [-4, 24])),
                FormatError, "outside the data section"),
    _dense_case("buffer-huge-offset", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [2**64, 24])),
                FormatError, "outside the data section"),
    _dense_case("buffer-misaligned", lambda: craft.edit(DENSE_F, set_ref("w", "data", [2, 24]),
                                                        lambda d: b"\0\0" + bytes(d) + b"\0\0"),
                FormatError, "buffer offset 2 is not aligned to 4 bytes"),
    _dense_case("buffer-wrong-length", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [0, 20])),
                FormatError, r"buffer length 20 \(expected 24 = 6 x float32\)"),
    _dense_case("buffer-one-number", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [0])),
                FormatError, r"buffer must be \[offset, length\]"),
    _dense_case("buffer-three-numbers", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [0, 24, 0])),
                FormatError, r"buffer must be \[offset, length\]"),
    _dense_case("buffer-bool", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [0, True])),
                FormatError, r"buffer must be \[offset, length\]"),
    _dense_case("buffer-float", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", [0.0, 24])),
                FormatError, r"buffer must be \[offset, length\]"),
    _dense_case("buffer-string", lambda: craft.edit_graph(DENSE_F, set_ref("w", "data", "0:24")),
                FormatError, "field 'data' must be a list"),
    C("buffers-overlap", TWO_F, lambda: craft.edit_graph(TWO_F, set_ref("b", "data", [0, 24])), FormatError,
      r"tensor 'b' encoding 'dense' data: buffer at 0 overlaps the previous buffer \(ends at 3\)"),
    C("buffers-same", TWO_F, lambda: craft.edit_graph(TWO_F, lambda g: g["tensors"].append(
        dict(g["tensors"][1], name="c"))), FormatError, r"buffer at 4 overlaps the previous buffer \(ends at 28\)"),
    _dense_case("hole-8-at-start", lambda: craft.edit(DENSE_F, set_ref("w", "data", [8, 24]),
                                                      lambda d: bytes(8) + bytes(d)),
                FormatError, r"section data: 8 unclaimed bytes at 0 \(at most 7 bytes of padding\)"),
    C("hole-9-between", TWO_F, lambda: craft.edit(TWO_F, set_ref("b", "data", [12, 24]),
                                                  lambda d: bytes(d[:3]) + bytes(9) + bytes(d[4:])), FormatError,
      "section data: 9 unclaimed bytes at 3"),
    C("padding-nonzero", TWO_F, lambda: craft.edit_data(TWO_F, lambda d: d.__setitem__(3, 1)), FormatError,
      "section data: nonzero padding at 3"),
    _dense_case("unclaimed-end", lambda: craft.edit_data(DENSE_F, lambda d: bytes(d) + b"\0"), FormatError,
                "section data: 1 unclaimed bytes at the end of the data section"),
    _dense_case("no-buffers-but-data", lambda: craft.edit(DENSE_F, _set(("tensors",), []), None), FormatError,
                "24 unclaimed bytes at the end"),
    C("huffman-negative-length", DENSE_F, _huffman_alias, FormatError,
      r"codes data: buffer \[16, -3\) outside the data section"),
]

ENCODING_CASES = [
    _dense_case("dense-storage-mismatch", lambda: tfile(t([2, 3], dense(np.arange(6, dtype=np.int32)))),
                FormatError, "storage dtype int32 cannot hold a float32 tensor"),
    _dense_case("dense-float16-tensor-as-float32", lambda: tfile(t([2], dense(np.float32([1, 2])), "float16")),
                FormatError, "storage dtype float32 cannot hold a float16 tensor"),
    _dense_case("dense-storage-unknown", lambda: tfile(t([2, 3], dict(dense(np.zeros(6, np.float32)),
                                                                      dtype="complex64"))),
                UnsupportedError, "storage dtype 'complex64' is not supported"),
    _dense_case("dense-no-dtype", lambda: tfile(t([2, 3], with_(dense(np.zeros(6, np.float32)), dtype=None))),
                FormatError, "missing field 'dtype'"),
    _dense_case("count-over-cap", lambda: craft.edit_graph(DENSE_F, lambda g: g["tensors"][0].update(
        shape=[65536, 65537])), FormatError, "4295032832 elements exceeds the cap of 2147483648"),
    _dense_case("int8-axis-1", lambda: tfile(t([2, 3], int8_enc(axis=1))), FormatError,
                "axis must be 0 or null, found 1"),
    _dense_case("int8-axis-bool", lambda: tfile(t([2, 3], int8_enc(axis=True))), FormatError,
                "field 'axis' must be an integer, found a boolean"),
    _dense_case("int8-scale-inf", lambda: tfile(t([2, 3], int8_enc(scale=np.float32([1, np.inf])))), FormatError,
                f"{W} 'int8' scale: holds NaN or infinity"),
    _dense_case("int8-zero-point-length", lambda: tfile(t([2, 3], int8_enc(zero_point=np.int8([0])))),
                FormatError, r"zero_point: buffer length 1 \(expected 2 = 2 x int8\)"),
    _dense_case("int8-float16-tensor", lambda: tfile(t([2, 3], int8_enc(), "float16")), FormatError,
                "encoding 'int8' holds float32 tensors only, tensor is float16"),
    _dense_case("int8-no-elements", lambda: tfile(t([0, 3], int8_enc())), FormatError,
                r"needs a tensor of rank >= 1 with elements, shape \(0, 3\)"),
    _dense_case("codebook-rank-0", lambda: tfile(t([], cb_enc())), FormatError,
                r"needs a tensor of rank >= 1 with elements, shape \(\)"),
    _dense_case("codebook-dtype", lambda: tfile(t([2, 3], cb_enc(codebook_dtype="float64"))), FormatError,
                "codebook_dtype 'float64'"),
    _dense_case("k-0", lambda: tfile(t([2, 3], cb_enc(k=0))), FormatError, r"field 'k' = 0 out of range \[1, 65536\]"),
    _dense_case("k-65537", lambda: tfile(t([2, 3], cb_enc(k=65537))), FormatError, "field 'k' = 65537 out of range"),
    _dense_case("codebook-length", lambda: tfile(t([2, 3], cb_enc(codebook=np.float32([0, 1])))), FormatError,
                r"codebook: buffer length 8 \(expected 12 = 3 x float32\)"),
    _dense_case("codebook-nan", lambda: tfile(t([2, 3], cb_enc(codebook=np.float32([0, np.nan, 1])))), FormatError,
                f"{W} 'codebook' codebook: holds NaN or infinity"),
    _dense_case("codebook-float16-inf", lambda: tfile(t([2, 3], cb_enc(codebook_dtype="float16", codebook=np.float16(
        [0, 1, np.inf])))), FormatError, "codebook: holds NaN or infinity"),
    _dense_case("row-scales-inf", lambda: tfile(t([2, 3], cb_enc(row_scales=np.float32([1, -np.inf])))), FormatError,
                "row_scales: holds NaN or infinity"),
    _dense_case("row-scales-length", lambda: tfile(t([2, 3], cb_enc(row_scales=np.float32([1])))), FormatError,
                r"row_scales: buffer length 4 \(expected 8 = 2 x float32\)"),
    _dense_case("rows-per-chunk-0", lambda: tfile(t([2, 3], cb_enc(rows_per_chunk=0))), FormatError,
                r"field 'rows_per_chunk' = 0 out of range \[1, 2\]"),
    _dense_case("rows-per-chunk-3", lambda: tfile(t([2, 3], cb_enc(rows_per_chunk=3))), FormatError,
                r"field 'rows_per_chunk' = 3 out of range \[1, 2\]"),
    _dense_case("codes-missing", lambda: tfile(t([2, 3], cb_enc(codes=None))), FormatError, "missing field 'codes'"),
    _dense_case("codes-not-object", lambda: tfile(t([2, 3], cb_enc(codes=[0, 1]))), FormatError,
                "field 'codes' must be an object"),
    _dense_case("coding-unknown", lambda: tfile(t([2, 3], cb_enc(codes={"coding": "zstd", "bits": 2}))),
                UnsupportedError, "codes: stream coding 'zstd' is not supported"),
    _dense_case("packed-bits-0", lambda: tfile(t([2, 3], cb_enc(codes=dict(craft.packed([0] * 6, 2), bits=0)))),
                FormatError, r"codes: field 'bits' = 0 out of range \[1, 16\]"),
    _dense_case("packed-bits-17", lambda: tfile(t([2, 3], cb_enc(codes=dict(craft.packed([0] * 6, 2), bits=17)))),
                FormatError, "field 'bits' = 17 out of range"),
    _dense_case("k-over-2^bits", lambda: tfile(t([2, 3], cb_enc(k=5, codebook=np.float32([0, 1, 2, 3, 4])))),
                FormatError, "codes: 2-bit symbols cannot address a codebook of 5 entries"),
    _dense_case("code-ge-k", lambda: tfile(t([2, 3], cb_enc(codes=craft.packed([0, 1, 2, 2, 1, 3], 2)))),
                FormatError, "codes: code 3 at index 5 is out of range, expected < codebook size 3"),
    _dense_case("packed-length", lambda: tfile(t([2, 3], cb_enc(codes=craft.packed([0] * 9, 2)))), FormatError,
                r"codes data: buffer length 3 \(expected 2 = 2 x uint8\)"),
    _dense_case("packed-pad-bits", lambda: tfile(t([2, 3], cb_enc(codes=dict(craft.packed([0] * 6, 2), data=np.uint8(
        [0, 0x10]))))), FormatError, "codes: nonzero pad bits in the last byte of the packed stream"),
    # Huffman streams
    C("huffman-bits-13", HCB_F, lambda: tfile(t([4, 8], hcb_enc(dict(hstream(), bits=13)))),
      FormatError, r"codes: field 'bits' = 13 out of range \[1, 12\]"),
    C("huffman-lengths-length", HCB_F, lambda: tfile(t([4, 8], hcb_enc(dict(hstream(), lengths=np.uint8([0x21]))))),
      FormatError, r"codes lengths: buffer length 1 \(expected 2 = 2 x uint8\)"),
    C("huffman-over-subscribed", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(table=[1, 1, 1, 0])))), FormatError,
      r"codes lengths: code-length table is over-subscribed: Kraft sum 49152/32768 > 1"),
    C("huffman-incomplete", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(table=[1, 2, 3, 0])))), FormatError,
      r"code-length table is incomplete: Kraft sum 28672/32768 < 1"),
    C("huffman-single-length-2", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(table=[2, 0, 0, 0])))), FormatError,
      "single used symbol 0 has code length 2, expected 1"),
    C("huffman-no-symbol", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(table=[0, 0, 0, 0])))), FormatError,
      "code-length table uses no symbol but the stream holds 32 symbols"),
    C("huffman-offsets-count", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(offsets=[0, 9])))), FormatError,
      r"codes offsets: buffer length 8 \(expected 12 = 3 x uint32\)"),
    C("huffman-offsets-first", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(offsets=[1, 3, 9])))), FormatError,
      r"chunk offsets\[0\] must be 0, found 1"),
    C("huffman-offsets-not-monotone", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(offsets=[0, 10, 9])))),
      FormatError, r"chunk offsets must be non-decreasing, found chunk offsets\[1\] = 10 > chunk offsets\[2\] = 9"),
    C("huffman-last-offset", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(offsets=[0, 3, 8])))), FormatError,
      "last chunk offset is 8, expected the data length 9"),
    C("huffman-truncated-chunk", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(
        data=H_PARTS[0] + H_PARTS[1][:-1], offsets=[0, 3, 8])))), FormatError,
      r"codes: chunk 1 \(bytes \[3, 8\), 16 symbols\) ends in the middle of code 13"),
    C("huffman-trailing-byte", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(
        data=H_PARTS[0] + H_PARTS[1] + b"\0", offsets=[0, 3, 10])))), FormatError,
      r"chunk 1 \(bytes \[3, 10\), 16 symbols\) has bytes left after its last code"),
    C("huffman-trailing-byte-chunk-0", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(
        data=H_PARTS[0] + b"\0" + H_PARTS[1], offsets=[0, 4, 10])))), FormatError,
      r"chunk 0 \(bytes \[0, 4\), 16 symbols\) has bytes left after its last code"),
    C("huffman-pad-bits", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(
        data=H_PARTS[0][:2] + bytes([H_PARTS[0][2] | 0x80]) + H_PARTS[1])))), FormatError,
      r"chunk 0 \(bytes \[0, 3\), 16 symbols\) has nonzero pad bits after its last code"),
    C("huffman-invalid-code", HCB_F, lambda: tfile(t([1, 8], hcb_enc(craft.huffman(
        [[0] * 8], [1, 0], 1, data=b"\x08"), k=2, codebook=np.float32([0, 1]), rows_per_chunk=1))), FormatError,
      r"chunk 0 \(bytes \[0, 1\), 8 symbols\): code 3 is not a valid code"),
    C("huffman-code-ge-k", HCB_F, lambda: tfile(t([4, 8], hcb_enc(k=3, codebook=np.float32([0, 1, 2])))),
      FormatError, "codes: code 3 at index 16 is out of range, expected < codebook size 3"),
    C("huffman-bomb", HCB_F, lambda: tfile(t([4, 4096], hcb_enc())), FormatError,
      "codes: 16384 symbols cannot fit in 9 bytes of Huffman data"),
    C("huffman-chunk-too-short", HCB_F, lambda: tfile(t([4, 8], hcb_enc(hstream(offsets=[0, 0, 9])))), FormatError,
      r"chunk 0 \(bytes \[0, 0\), 16 symbols\) is too short: 16 codes cannot fit in 0 bytes"),
    # sparse_codebook
    C("sparse-codebook0", SP_F, lambda: tfile(t([3, 10], sp_enc(codebook=np.float32([0.25, 0.5, -1])))), FormatError,
      r"codebook\[0\] must be 0.0 \(it decodes filler entries\), found .*0\.25"),
    C("sparse-nnz-mismatch", SP_F, lambda: tfile(t([3, 10], sp_enc(nnz=6))), FormatError,
      "row_counts: rows hold 5 entries in all, nnz says 6"),
    C("sparse-nnz-over-count", SP_F, lambda: tfile(t([3, 10], sp_enc(nnz=31))), FormatError,
      r"field 'nnz' = 31 out of range \[0, 30\]"),
    C("sparse-column-out-of-range", SP_F, lambda: tfile(t([3, 10], sp_enc(gaps=(1, 2, 3, 3, 2)))), FormatError,
      "gaps: row 2, entry 4: column 10 is out of range, expected < cols = 10"),
    C("sparse-row-overfull", SP_F, lambda: tfile(t([3, 10], sp_enc(gaps=(3, 3, 3, 0, 0), counts=(3, 0, 2)))),
      FormatError, "gaps: row 0, entry 2: column 11 is out of range"),
    C("sparse-code-ge-k", SP_F, lambda: tfile(t([3, 10], sp_enc(codes=(1, 2, 0, 0, 3)))), FormatError,
      "codes: code 3 at index 4 is out of range"),
    C("sparse-gaps-length", SP_F, lambda: tfile(t([3, 10], sp_enc() | {"gaps": craft.packed([1, 2, 3, 3, 1, 0, 0, 0, 0],
                                                                                               2)})), FormatError,
      r"gaps data: buffer length 3 \(expected 2 = 2 x uint8\)"),
    C("sparse-cols-over-int32", SP_F, lambda: tfile(t([1, 2**31], sp_enc(gaps=(), codes=(), counts=(0,),
                                                                        rows_per_chunk=1))), FormatError,
      "gaps: cols = 2147483648, expected 0..2147483647"),
    # rows are bounded by the data before the per-chunk arrays exist (before the fix: a 16 GiB np.arange)
    C("sparse-rows-bomb", SP_F, lambda: tfile(t([2**31, 1], sp_enc(gaps=(), codes=(), counts=(0,),
                                                                 rows_per_chunk=1))), FormatError,
      "2147483648 rows cannot fit in a data section of 13 bytes"),
    C("codebook-rows-bomb", HCB_F, lambda: tfile(t([2**31, 1], cb_enc(rows_per_chunk=1))), FormatError,
      "2147483648 rows cannot fit in a data section of 14 bytes"),
    C("huffman-bomb-2^31", HCB_F, lambda: tfile(t([1, 2**31], hcb_enc(hstream(offsets=[0, 9]), rows_per_chunk=1))),
      FormatError, "codes: 2147483648 symbols cannot fit in 9 bytes of Huffman data"),
]

ALL_CASES = HEADER_CASES + TABLE_CASES + DEFLATE_CASES + JSON_CASES + BUFFER_CASES + ENCODING_CASES


@pytest.mark.parametrize("case", ALL_CASES)
def test_crafted_file_with_crcs_recomputed(case):
    """As an attacker leaves it: every CRC right, so only the validation itself can catch it."""
    bad = case.make()
    assert craft.fix_crcs(bad) == bad or case.stage == "header"
    tracemalloc.start()
    try:
        with pytest.raises(case.exc, match=case.match) as info:
            read_packed(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.type is case.exc  # a FormatError case must not be a ChecksumError
    assert peak < 8 * len(bad) + (4 << 20), f"{peak} bytes allocated to reject a {len(bad)}-byte file"


@pytest.mark.parametrize("case", ALL_CASES)
def test_crafted_file_with_stale_crcs(case):
    """As an accident leaves it (the CRCs of the file it came from): a CRC mismatch, unless the check that fails comes
    before the CRC that covers the change (spec section 7 order)."""
    bad = case.make()
    stale = craft.stale_crcs(bad, case.base)
    if stale == bad or case.stage == "header" or (case.stage == "table" and stale[28:32] == bad[28:32]):
        exc, match = case.exc, case.match
    else:
        exc, match = ChecksumError, "CRC-32 mismatch"
    with pytest.raises(exc, match=match):
        read_packed(stale)


def test_every_reader_message_has_a_case():
    """Guards the table above: each distinctive message fragment of the reader appears in some case."""
    text = " ".join(c.values[0].match for c in ALL_CASES)
    for fragment in ["shorter than", "bad magic", "format version", "reserved bytes", "table offset", "section count",
                     "header says file size", "table ends at", "flags", "offset", "end", "nonzero padding",
                     "after the last section", "unknown required section kind", "in that order", "not a valid zlib",
                     "inflates to more", "truncated or followed", "exceeds the cap", "UTF-8 JSON", "top level",
                     "missing field", "must be an integer", "found a boolean", "out of range", "longer than",
                     "defined twice", "used twice", "topological order", "must be a string", "already defined",
                     "non-empty string", "never produced", "does not match its kind", r"\[kind, value\]",
                     "at most 8 dimensions", "bad dimension", "dimension name", "too many inputs",
                     "cannot hold", "storage dtype", "axis must be", "NaN or infinity", "float32 tensors only",
                     "rank >= 1", "codebook_dtype", "stream coding", "cannot address", "codebook size",
                     "pad bits", "over-subscribed", "incomplete", "single used symbol", "uses no symbol",
                     r"offsets\[0\]", "non-decreasing", "last chunk offset", "middle of code", "not a valid code",
                     "bytes left", "cannot fit in", "too short", r"codebook\[0\]", "nnz says", "column",
                     "cols =", "rows cannot fit", "outside the data section", "not aligned", "buffer length",
                     r"\[offset, length\]", "overlaps", "unclaimed bytes at", "nonzero padding at",
                     "at the end of the data section"]:
        assert fragment in text, fragment


# CRC mismatches: the stored CRC is wrong, so recomputing it gives back a valid file
@pytest.mark.parametrize("make, match", [
    (lambda: craft.set_header(MIN, "header_crc", craft.get_header(MIN, "header_crc") ^ 1, fix=False),
     r"header CRC-32 mismatch \(stored 0x593edc23, computed 0x593edc22\)"),
    # the minor version 0 -> 1, in a file whose meta says 1.1 (meta and header must agree: spec section 3)
    (lambda: craft.xor_byte(craft.rebuild(MIN, meta={"producer": "p", "format_version": "1.1"}), 10, 0x01),
     "header CRC-32 mismatch"),
    (lambda: craft.xor_byte(MIN, 64 + 24, 0x01), "header CRC-32 mismatch"),  # a section CRC, in the table
    (lambda: craft.xor_byte(MIN, 0xCD, 0x01), "section meta: CRC-32 mismatch"),  # "spec example" -> "rpec example"
    (lambda: craft.xor_byte(MIN, 0x10A, 0x01), "section graph: CRC-32 mismatch"),  # "minimal" -> "mhnimal"
    # the lowest mantissa bit of codebook[3]
    (lambda: craft.xor_byte(SPARSE, craft.get_entry(SPARSE, 2, "offset") + 12, 0x01), "section data: CRC-32 mismatch"),
    (lambda: craft.fix_header_crc(craft.set_entry(MIN, 1, "crc32", 0, fix=False)),
     r"section graph: CRC-32 mismatch \(stored 0x00000000"),
    (lambda: craft.fix_header_crc(craft.put(craft.assemble(craft.split(MIN)[:2] + [craft.Sec(0x8001, b"ext")]
                                                           + craft.split(MIN)[2:]), 256 + 231 + 25, "<B", ord("E"))),
     "section 32769: CRC-32 mismatch"),
], ids=["header-crc", "header-byte", "table-crc-byte", "meta", "graph", "data", "stored-crc-zero", "optional-section"])
def test_crc_mismatch(make, match):
    bad = make()
    with pytest.raises(ChecksumError, match=match):
        read_packed(bad)
    assert issubclass(ChecksumError, FormatError)
    assert clean(craft.fix_crcs(bad)) == "ok"


def test_data_section_cap(monkeypatch):
    """The 2^34-byte cap needs a 16 GiB file to reach; a lowered cap shows the check is there and where it runs."""
    from edgepack.runtime import constants

    monkeypatch.setattr(constants, "MAX_DATA_BYTES", 37)
    with pytest.raises(FormatError, match="section data: 38 bytes exceeds the cap 37"):
        read_packed(SPARSE)
    monkeypatch.setattr(constants, "MAX_DATA_BYTES", 38)
    assert clean(SPARSE) == "ok"


# --- accepted edge cases ----------------------------------------------------------------------------------------------

def test_any_minor_version_is_accepted():
    for minor in (1, 7, 0xFFFF):  # meta's format_version says the same (spec section 3)
        base = craft.rebuild(SPARSE, meta={"producer": "spec example", "format_version": f"1.{minor}"})
        m = read_packed(craft.set_header(base, "version_minor", minor))
        assert m.container.version == (1, minor)
    with pytest.raises(FormatError, match=r"format_version '1.0' differs from the header's version 1.7"):
        read_packed(craft.set_header(SPARSE, "version_minor", 7))
    with pytest.raises(ChecksumError):
        read_packed(craft.set_header(SPARSE, "version_minor", 7, fix=False))


def test_optional_section_is_skipped():
    ext = craft.Sec(craft.OPTIONAL | 5, b"an extension a 1.0 reader does not know")
    for base in (MIN, SPARSE):
        secs = craft.split(base)
        f = craft.assemble(secs[:2] + [ext] + secs[2:])
        m = read_all(f)
        assert m.meta == read_packed(base).meta and m.graph == read_packed(base).graph
        assert [s.kind for s in m.container.sections] == [1, 2, 0x8005, 3]


def test_caps_are_inclusive():
    assert clean(craft.rebuild(MIN, meta=padded_json(META_CAP))) == "ok"
    assert clean(craft.rebuild(MIN, meta=padded_json(META_CAP), deflate=True)) == "ok"
    f = craft.rebuild(MIN, meta=padded_json(META_CAP + 1), deflate=True)
    assert len(f) < 8192  # a small file that would inflate past the cap


def test_accepted_corner_cases():
    # an empty node input is an absent optional input
    assert clean(craft.edit_graph(MIN, _set(("nodes", 0, "inputs"), ["x", ""]))) == "ok"
    # up to 7 zero bytes of padding before a buffer
    m = read_all(_hole7())
    assert m.weights["w"].to_dense().tolist() == [1, 2, 3]
    # float32 stored as float16, decoded by IEEE conversion
    m = read_all(tfile(t([3], dense(np.float16([1.5, -2, 65504])))))
    assert m.weights["w"].to_dense().tolist() == [1.5, -2.0, 65504.0]
    m = read_all(tfile(t([3], dense(np.float16([1.5, -2, 65504]), "float16"), "float32")))
    assert m.weights["w"].to_dense().dtype == np.float32 and m.weights["w"].to_dense().tolist() == [1.5, -2, 65504]
    # -0.0 is a valid codebook[0] for a sparse tensor
    np.testing.assert_array_equal(read_all(tfile(t([3, 10], sp_enc(codebook=np.float32([-0.0, 0.5, -1]))))).weights[
        "w"].to_dense(), SP_DENSE)
    # a rank-0 dense tensor and an empty one; a Huffman stream with one symbol (code "0")
    assert read_all(tfile(t([], dense(np.float32(3))))).weights["w"].to_dense() == 3
    assert read_all(tfile(t([0, 4], dense(np.zeros((0, 4), np.float32))))).weights["w"].to_dense().shape == (0, 4)
    one = tfile(t([1, 8], hcb_enc(craft.huffman([[1] * 8], [0, 1], 1), k=2, codebook=np.float32([0, 2]),
                                  rows_per_chunk=1)))
    assert read_all(one).weights["w"].to_dense().tolist() == [[2.0] * 8]
    # sparse rows of an empty chunk: no entries at all
    empty = tfile(t([3, 10], sp_enc(gaps=(), codes=(), counts=(0, 0, 0))))
    assert not read_all(empty).weights["w"].to_dense().any()


# --- 3. sweeps over real files ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def packed_mlp(tmp_path_factory) -> bytes:
    import zoo
    from edgepack.packer.pipeline import pack

    d = tmp_path_factory.mktemp("format")
    onnx_path = zoo.save(zoo.mlp(), d / "mlp.onnx")
    pack(onnx_path, d / "mlp.epk", sparsity=0.6, bits=4)
    return (d / "mlp.epk").read_bytes()


@pytest.fixture(scope="module")
def packed_sparse_mlp(tmp_path_factory) -> bytes:
    """The same model forced to sparse_codebook, so the sweeps reach row_counts and gaps streams too."""
    import zoo
    from edgepack.packer.pipeline import pack

    d = tmp_path_factory.mktemp("format_sparse")
    onnx_path = zoo.save(zoo.mlp(seed=1), d / "mlp.onnx")
    pack(onnx_path, d / "mlp.epk", sparsity=0.6, bits=4, encoding="sparse_codebook")
    return (d / "mlp.epk").read_bytes()


def _files(request) -> list[tuple[str, bytes]]:
    return [("sparse.epk", SPARSE), ("minimal.epk", MIN), ("mlp", request.getfixturevalue("packed_mlp")),
            ("sparse-mlp", request.getfixturevalue("packed_sparse_mlp"))]


def test_packed_files_are_what_the_sweeps_expect(packed_mlp, packed_sparse_mlp):
    kinds = {type(w).__name__ for w in read_all(packed_mlp).weights.values()}
    assert "CodebookWeight" in kinds or "SparseCodebookWeight" in kinds
    graph = read_packed(packed_mlp).graph
    assert any(t["encoding"].get("codes", {}).get("coding") == "huffman" for t in graph["tensors"])
    assert "SparseCodebookWeight" in {type(w).__name__ for w in read_all(packed_sparse_mlp).weights.values()}


@pytest.mark.parametrize("which", ["sparse.epk", "minimal.epk", "mlp", "sparse-mlp"])
def test_truncation_at_every_offset(which, request):
    data = dict(_files(request))[which]
    for n in range(len(data)):
        try:
            read_packed(data[:n])
        except EdgepackError:
            continue
        pytest.fail(f"{which} truncated to {n} bytes was accepted")
    with pytest.raises(FormatError, match="header says file size"):
        read_packed(data + b"\0")
    with pytest.raises(FormatError, match="bytes after the last section"):
        read_packed(craft.set_header(data + b"\x01", "file_size", len(data) + 1))


@pytest.mark.parametrize("which", ["sparse.epk", "minimal.epk", "mlp", "sparse-mlp"])
def test_every_byte_flipped(which, request):
    """Every byte XOR 0xFF and XOR 0x01. As is, every flip is caught (by a CRC, or as nonzero padding, which no CRC
    covers); with the CRCs recomputed, a clean error or a file that decodes."""
    data = dict(_files(request))[which]
    results = {}
    for at in range(len(data)):
        for mask in (0xFF, 0x01):
            bad = craft.xor_byte(data, at, mask)
            assert clean(bad) != "ok", f"{which}: byte {at} ^ {mask:#x} went unnoticed"
            r = clean(craft.fix_crcs(bad))
            results[r] = results.get(r, 0) + 1
    assert set(results) <= {"ok", "FormatError", "ChecksumError", "UnsupportedError"}
    assert results.get("FormatError", 0) > 0


def _leaves(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))


HOSTILE = [-1, 0, 1, 3, 7, 8, 2**31, 2**32 - 1, 2**63, 2**64, -(2**63), 0.5, 1e308, "", "x", None, True, [],
           {}, [0], [0, 0], [-1, 1], [0, 2**64], "float16", "huffman", "packed", "sparse_codebook", "codebook"]


def test_every_graph_field_replaced_by_hostile_values():
    """Each value in the graph JSON of sparse.epk and a Huffman codebook file replaced by each hostile value, with the
    CRCs right: a clean error or a file that decodes."""
    seen = set()
    for base in (SPARSE, HCB_F):
        _, graph, _ = craft.parse(base)
        for path in list(_leaves(graph))[1:]:
            for v in HOSTILE:
                seen.add(clean(craft.edit_graph(base, _set(path, v))))
    assert {"FormatError", "UnsupportedError"} <= seen


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SPARSE) - 1), st.integers(1, 255)), min_size=1, max_size=6),
       st.booleans())
def test_random_corruption_of_sparse_example(edits, fix):
    data = bytearray(SPARSE)
    for at, mask in edits:
        data[at] ^= mask
    bad = craft.fix_crcs(bytes(data)) if fix else bytes(data)
    clean(bad)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 12), st.integers(1, 5), st.binary(min_size=0, max_size=16), st.integers(0, 3))
def test_random_huffman_data_in_a_valid_container(n_chunks_rows, cols, payload, split):
    """Arbitrary bytes as a Huffman stream's data behind valid offsets: decode or a clean FormatError."""
    rows = max(n_chunks_rows, 1)
    n_chunks = -(-rows // 2)
    cuts = sorted(min(len(payload), (i + 1) * split) for i in range(n_chunks - 1))
    stream = craft.huffman([[0]] * n_chunks, H_LENGTHS, 2, data=payload, offsets=[0, *cuts, len(payload)])
    f = tfile(t([rows, cols], hcb_enc(stream)))
    clean(f)


# --- 4. boundary values in header and table fields --------------------------------------------------------------------

def _boundary_values(data: bytes) -> list[int]:
    return [0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, len(data) - 1, len(data) + 1]


@pytest.mark.parametrize("base_name", ["minimal", "sparse"])
@pytest.mark.parametrize("fix", [True, False], ids=["crc-fixed", "crc-stale"])
def test_boundary_values_in_header_and_table(base_name, fix):
    base = MIN if base_name == "minimal" else SPARSE
    fields = [("header", None, name) for name in ("version_major", "section_count", "file_size", "table_offset")]
    fields += [("entry", i, name) for i in range(3) for name in ("kind", "flags", "offset", "length", "reserved")]
    for where, i, name in fields:
        at, fmt = (craft.HEADER_FIELDS if where == "header" else craft.ENTRY_FIELDS)[name]
        width = 8 * struct.calcsize(fmt)
        original = craft.get_header(base, name) if where == "header" else craft.get_entry(base, i, name)
        for v in _boundary_values(base):
            if v >= 1 << width or v == original:
                continue
            if where == "header":
                bad = craft.set_header(base, name, v, fix=fix)
            else:
                bad = craft.set_entry(base, i, name, v, fix=fix)
            with pytest.raises(EdgepackError):
                read_all(bad)
    for v in (0, 1, 2**16 - 1):  # any minor version is fine, when the meta section's format_version says it too
        said = craft.rebuild(base, meta={"producer": "p", "format_version": f"1.{v}"})
        assert clean(craft.set_header(said, "version_minor", v, fix=fix)) == ("ok" if fix or v == 0 else
                                                                             "ChecksumError")
