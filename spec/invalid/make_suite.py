"""Writes the conformance suite of spec/format.md section 10: spec/invalid/ (files that break one rule each, with the
error a reader MUST raise) and spec/valid/ (files at the edges of the rules that a reader MUST read, with the values
they decode to), each with a manifest.json. Run `python spec/invalid/make_suite.py`; tests/test_spec_invalid.py
checks that the files are current and that runtime/reader.py passes.

The invalid files are the crafted cases of tests/test_format.py (one per error the reader raises, every CRC right,
as an attacker would leave them; files over MAX_FILE bytes are left out), plus the rules section 10 added. Both are
built with tests/craft.py, which lays out containers from the spec's text without runtime/reader.py."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import zlib
from pathlib import Path

import numpy as np

SPEC = Path(__file__).resolve().parent.parent
ROOT = SPEC.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import craft  # noqa: E402

MAX_FILE = 64 << 10  # bytes; larger crafted cases (caps, bombs) stay in tests/test_format.py only
SECTIONS = {"HEADER_CASES": "2.1", "TABLE_CASES": "2.2", "DEFLATE_CASES": "2.2", "JSON_CASES": "1, 3, 4",
            "BUFFER_CASES": "5", "ENCODING_CASES": "6"}
MIN = (SPEC / "examples" / "minimal.epk").read_bytes()
SPARSE = (SPEC / "examples" / "sparse.epk").read_bytes()


def _test_format():
    spec = importlib.util.spec_from_file_location("_suite_test_format", ROOT / "tests" / "test_format.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _meta_text(data: bytes) -> bytes:
    return craft.payload_text(craft.split(data)[0])


def _with_json(data: bytes, kind: int, text: bytes) -> bytes:
    secs = craft.split(data)
    i = next(j for j, s in enumerate(secs) if s.kind == kind)
    secs[i] = craft.json_sec(kind, text, deflate=False)
    return craft.assemble(secs, version=(craft.get_header(data, "version_major"),
                                         craft.get_header(data, "version_minor")))


def _graph_text(data: bytes) -> bytes:
    return craft.payload_text(next(s for s in craft.split(data) if s.kind == craft.GRAPH))


def _graph(data: bytes) -> dict:
    return json.loads(_graph_text(data))


def _edit_graph(data: bytes, fn) -> bytes:
    return craft.edit_graph(data, fn)


def _ext(kind: int = 1, payload: bytes = b"an extension a reader may skip", flags: int = 0) -> craft.Sec:
    return craft.Sec(craft.OPTIONAL | kind, payload, flags)


def new_invalid(tf) -> list[dict]:
    """The rules spec section 10 added (issue 14), each as one invalid file."""
    t, tfile, dense = tf.t, tf.tfile, tf.dense
    secs = craft.split(MIN)
    bool_file = tfile(t([4], dense(np.array([0, 1, 0, 1], np.uint8), "bool"), "bool"))
    bool_bad = craft.edit_data(bool_file, lambda d: d.__setitem__(1, 2))
    ext_bad_crc = craft.fix_header_crc(craft.put(craft.assemble(secs[:2] + [_ext()] + secs[2:]), 256 + 231 + 25 + 3,
                                                 "<B", ord("X")))
    return [
        dict(name="json-duplicate-key-meta", section="1", error="FormatError", message="appears twice",
             rule="a JSON object repeats a key (meta: producer twice)",
             data=_with_json(MIN, craft.META, b'{"producer":"a","producer":"b","format_version":"1.0"}')),
        dict(name="json-duplicate-key-node", section="1", error="FormatError", message="key 'op' appears twice",
             rule="a JSON object repeats a key (a node's op twice: Relu, then Sigmoid)",
             data=_with_json(MIN, craft.GRAPH, _graph_text(MIN).replace(b'"op":"Relu"',
                                                                         b'"op":"Relu","op":"Sigmoid"'))),
        dict(name="json-duplicate-key-encoding", section="1", error="FormatError", message="key 'type' appears twice",
             rule="a JSON object repeats a key (an encoding's type twice)",
             data=_with_json(SPARSE, craft.GRAPH, _graph_text(SPARSE).replace(
                 b'"type":"sparse_codebook"', b'"type":"sparse_codebook","type":"dense"'))),
        dict(name="required-field-null", section="1", error="FormatError", message="field 'name' must be a string",
             rule="a required field is null (the graph's name)",
             data=_edit_graph(MIN, lambda g: g.__setitem__("name", None))),
        dict(name="meta-version-differs-from-header", section="3", error="FormatError",
             message="format_version '1.1' differs from the header's version 1.0",
             rule="meta format_version is not the header's version",
             data=craft.rebuild(MIN, meta={"producer": "p", "format_version": "1.1"})),
        dict(name="meta-version-leading-zero", section="3", error="FormatError",
             message="format_version '1.00' differs",
             rule="meta format_version is not written as the header's numbers in decimal without leading zeros",
             data=craft.rebuild(MIN, meta={"producer": "p", "format_version": "1.00"})),
        dict(name="node-domain-custom", section="4", error="UnsupportedError", message="domain 'com.microsoft'",
             rule="a node's domain is not the ONNX default domain",
             data=_edit_graph(MIN, lambda g: g["nodes"][0].__setitem__("domain", "com.microsoft"))),
        dict(name="dense-bool-byte-2", section="6.1", error="FormatError", message="bool bytes must be 0 or 1",
             rule="a bool tensor holds a byte other than 0 and 1", data=bool_bad),
        dict(name="extension-deflate-flag", section="2.2", error="FormatError", message="only meta and graph",
             rule="an extension section sets a flag",
             data=craft.assemble(secs[:2] + [_ext(flags=craft.DEFLATE)] + secs[2:])),
        dict(name="extension-crc", section="2.2", error="ChecksumError", message="CRC-32 mismatch",
             rule="an extension section's CRC does not match (a reader that skips it still checks it)",
             data=ext_bad_crc),
        dict(name="header-crc", section="2.1", error="ChecksumError", message="header CRC-32 mismatch",
             rule="the header CRC does not match",
             data=craft.set_header(MIN, "header_crc", craft.get_header(MIN, "header_crc") ^ 1, fix=False)),
        dict(name="section-crc", section="2.2", error="ChecksumError", message="section graph: CRC-32 mismatch",
             rule="a section CRC does not match",
             data=craft.fix_header_crc(craft.set_entry(MIN, 1, "crc32", 0, fix=False))),
        dict(name="codebook-on-empty-tensor", section="6", error="FormatError", message="rank >= 1 with elements",
             rule="a compressed encoding on a tensor without elements",
             data=tfile(t([0, 3], tf.cb_enc()))),
    ]


def valid_cases(tf) -> list[dict]:
    """Files at the edges of the rules, which a reader MUST read."""
    t, tfile, dense = tf.t, tf.tfile, tf.dense
    secs = craft.split(MIN)
    sp = craft.split(SPARSE)
    f32 = np.arange(6, dtype=np.float32)
    zero_at_4 = craft.edit_graph(tfile(t([1], dense(np.float32([5.0])), name="a"),
                                      t([0, 2], dense(np.zeros(0, np.float32)), name="e")),
                                 lambda g: g["tensors"][1]["encoding"].__setitem__("data", [4, 0]))
    int8_null = tf.int8_enc(axis=None, scale=np.float32([0.5]), zero_point=np.int8([1]))
    int8_absent = {k: v for k, v in int8_null.items() if k != "axis"}
    cb_null = dict(tf.cb_enc(), row_scales=None)
    # a sparse row of fillers only (row 1) and a code-0 entry after a row's last nonzero (row 0, column 3)
    sparse_fill = {"type": "sparse_codebook", "codebook_dtype": "float32", "k": 2, "codebook": np.float32([0, 2]),
                   "rows_per_chunk": 2, "nnz": 4,
                   "row_counts": craft.packed([2, 2], 2), "gaps": craft.packed([0, 2, 0, 1], 2),
                   "codes": craft.packed([1, 0, 0, 0], 1)}
    wide = {"type": "codebook", "codebook_dtype": "float32", "k": 3, "codebook": np.float32([0, 1, 2]),
            "rows_per_chunk": 1, "codes": dict(craft.packed([2, 1, 0], 16))}
    odd = tfile(t([1], dense(np.uint8([7]), "uint8"), "uint8", "a"), t([1, 3], wide, name="w"))
    return [
        dict(name="extension-before-meta", section="2.2", rule="an extension section before the required ones",
             data=craft.assemble([_ext(1)] + secs)),
        dict(name="extension-between", section="2.2", rule="extension sections between the required ones, a kind "
             "repeated", data=craft.assemble(sp[:1] + [_ext(2)] + sp[1:2] + [_ext(2, b"again")] + sp[2:])),
        dict(name="extension-after-data", section="2.2", rule="an extension section after data (the file ends there)",
             data=craft.assemble(sp + [_ext(3, b"")])),
        dict(name="minor-version-65535", section="2.1, 3", rule="any 1.x minor, meta saying the same",
             data=craft.set_header(craft.rebuild(MIN, meta={"producer": "p", "format_version": "1.65535"}),
                                   "version_minor", 65535)),
        dict(name="node-domain-default", section="4", rule="a node's domain given as '' and as 'ai.onnx'",
             data=_edit_graph(MIN, lambda g: (g["nodes"][0].__setitem__("domain", "ai.onnx"), g["nodes"].append(
                 {"op": "Relu", "name": "relu2", "domain": "", "inputs": ["y"], "outputs": ["z"], "attrs": {}}),
                 g["outputs"].append({"name": "z", "dtype": "float32", "shape": [1]})))),
        dict(name="zero-length-buffer-00", section="5", rule="an empty tensor's buffer written [0, 0]",
             data=tfile(t([1], dense(np.float32([5.0])), name="a"), t([0, 2], dense(np.zeros(0, np.float32)),
                                                                      name="e"))),
        dict(name="zero-length-buffer-at-end", section="5", rule="a zero-length buffer at the data section's end "
             "([4, 0])", data=zero_at_4),
        dict(name="rank-0-dense", section="6.1", rule="a rank-0 tensor, stored dense (one item)",
             data=tfile(t([], dense(np.float32(3.5).reshape(())), name="s"))),
        dict(name="dense-bool", section="6.1", rule="a bool tensor of bytes 0 and 1",
             data=tfile(t([4], dense(np.array([0, 1, 1, 0], np.uint8), "bool"), "bool", "b"))),
        dict(name="int8-axis-absent", section="1, 6.2", rule="int8 without axis (= null: one scale)",
             data=tfile(t([2, 3], int8_absent))),
        dict(name="int8-axis-null", section="1, 6.2", rule="int8 with axis null",
             data=tfile(t([2, 3], int8_null))),
        dict(name="codebook-row-scales-null", section="1, 6.3", rule="row_scales null (= absent)",
             data=tfile(t([2, 3], cb_null))),
        dict(name="sparse-code-0-anywhere", section="6.4", rule="code 0 after a row's last nonzero, and a row of "
             "fillers only", data=tfile(t([2, 4], sparse_fill))),
        dict(name="packed-16-bit-odd-offset", section="5, 6.5", rule="a 16-bit packed stream at an odd offset (byte "
             "buffers are not aligned)", data=odd),
        dict(name="dense-float32", section="6.1", rule="the baseline: a float32 tensor stored dense",
             data=tfile(t([2, 3], dense(f32)))),
    ]


def _values(data: bytes) -> dict:
    from edgepack.runtime.loader import dense_weights, read_packed

    out = {}
    for name, a in dense_weights(read_packed(data)).items():
        a = np.asarray(a)
        out[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "values": a.reshape(-1).tolist()}
    return out


def build() -> tuple[dict, dict]:
    """({file name: bytes} and manifest) for invalid/ and for valid/."""
    tf = _test_format()
    invalid, rows, left_out = {}, [], []
    for list_name, section in SECTIONS.items():
        for param in getattr(tf, list_name):
            case = param.values[0]
            data = case.make()
            if len(data) > MAX_FILE:
                left_out.append(case.id)
                continue
            name = f"{case.id}.epk"
            invalid[name] = data
            rows.append({"file": name, "section": section, "error": case.exc.__name__, "message": case.match,
                         "rule": case.id.replace("-", " ")})
    for c in new_invalid(tf):
        name = f"{c['name']}.epk"
        assert name not in invalid, name
        invalid[name] = c["data"]
        rows.append({"file": name, "section": c["section"], "error": c["error"], "message": c["message"],
                     "rule": c["rule"]})
    manifest = {"format": "edgepack 1.1", "about": "each file breaks one rule of spec/format.md; a reader MUST "
                "refuse it with an error of the class given (ChecksumError is a FormatError); 'message' is a regular "
                "expression that edgepack's own messages match", "files": rows,
                "left_out": {"cases": left_out, "why": f"over {MAX_FILE} bytes; see tests/test_format.py"}}
    valid, vrows = {}, []
    for c in valid_cases(tf):
        name = f"{c['name']}.epk"
        valid[name] = c["data"]
        vrows.append({"file": name, "section": c["section"], "rule": c["rule"], "tensors": _values(c["data"])})
    vmanifest = {"format": "edgepack 1.1", "about": "each file sits at an edge of spec/format.md's rules; a reader "
                 "MUST read it, and its tensors decode to the values given (dense, C order)", "files": vrows}
    return (invalid, manifest), (valid, vmanifest)


def manifest_text(m: dict) -> str:
    return json.dumps(m, indent=1, ensure_ascii=True) + "\n"


def write(out: Path = SPEC) -> None:
    for folder, (files, manifest) in zip(("invalid", "valid"), build()):
        d = out / folder
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.epk"):
            old.unlink()
        for name, data in files.items():
            (d / name).write_bytes(data)
        (d / "manifest.json").write_text(manifest_text(manifest))
        print(f"{d}: {len(files)} files")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else SPEC)
