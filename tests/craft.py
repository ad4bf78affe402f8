"""Builds and alters edgepack files byte by byte for the malformed-input tests (spec/format.md sections 2-6): lay out
sections with right or wrong CRCs / offsets / padding, patch header and table fields, recompute every CRC. The container
code follows the spec without runtime/reader.py; only tensor_file() borrows packer/writer.py's data layout."""
from __future__ import annotations

import copy
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

MAGIC = b"\x89EPK\r\n\x1a\n"
HEADER_SIZE, ENTRY_SIZE, ALIGN = 64, 32, 64
META, GRAPH, DATA, OPTIONAL = 1, 2, 3, 0x8000
DEFLATE = 1

# field name -> (offset, struct format); header fields from file offset 0, entry fields from the entry's start
HEADER_FIELDS = {"magic": (0, "<8s"), "version_major": (8, "<H"), "version_minor": (10, "<H"),
                 "section_count": (12, "<I"), "file_size": (16, "<Q"), "table_offset": (24, "<I"),
                 "header_crc": (28, "<I")}
ENTRY_FIELDS = {"kind": (0, "<I"), "flags": (4, "<I"), "offset": (8, "<Q"), "length": (16, "<Q"),
                "crc32": (24, "<I"), "reserved": (28, "<I")}


@dataclass
class Sec:
    """One section as stored: kind, stored bytes (compressed if flags has DEFLATE), flags."""

    kind: int
    payload: bytes
    flags: int = 0


def align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


def crc(b: bytes) -> int:
    return zlib.crc32(bytes(b)) & 0xFFFFFFFF


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON as the writer emits it (NaN refused: craft a NaN file from raw bytes instead)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def json_sec(kind: int, obj_or_bytes: Any, deflate: bool = False) -> Sec:
    raw = obj_or_bytes if isinstance(obj_or_bytes, (bytes, bytearray)) else json_bytes(obj_or_bytes)
    return Sec(kind, zlib.compress(bytes(raw), 9), DEFLATE) if deflate else Sec(kind, bytes(raw))


# --- whole files ------------------------------------------------------------------------------------------------------

def assemble(sections: Sequence[Sec], *, version: tuple[int, int] = (1, 0), offsets: Sequence[int] | None = None,
             tail: bytes = b"") -> bytes:
    """A file holding `sections` in table order, each at its layout position (or at `offsets[i]`: holes, overlaps),
    zero padding between them, then `tail`; header file size, section CRCs and header CRC right for those bytes."""
    count = len(sections)
    table_end = HEADER_SIZE + count * ENTRY_SIZE
    pos, where = align(table_end), []
    for i, s in enumerate(sections):
        at = offsets[i] if offsets is not None else pos
        where.append(at)
        pos = align(at + len(s.payload))
    end = max([table_end] + [at + len(s.payload) for at, s in zip(where, sections)])
    buf = bytearray(end)
    for at, s in zip(where, sections):
        buf[at: at + len(s.payload)] = s.payload
    buf += tail
    struct.pack_into("<8sHHIQII", buf, 0, MAGIC, version[0], version[1], count, len(buf), HEADER_SIZE, 0)
    for i, (at, s) in enumerate(zip(where, sections)):
        # CRC over the bytes that end up there (an overlap may have overwritten part of the payload)
        struct.pack_into("<IIQQII", buf, HEADER_SIZE + i * ENTRY_SIZE, s.kind, s.flags, at, len(s.payload),
                         crc(buf[at: at + len(s.payload)]), 0)
    return fix_header_crc(bytes(buf))


def header_crc(data: bytes, count: int) -> int:
    """CRC-32 of [0, 64 + 32 * count) with the CRC field (bytes 28..31) as zero; clipped to the file's bytes."""
    end = min(HEADER_SIZE + count * ENTRY_SIZE, len(data))
    return crc(bytes(data[:28]) + b"\0\0\0\0" + bytes(data[32:end]))


def fix_header_crc(data: bytes) -> bytes:
    if len(data) < HEADER_SIZE:
        return bytes(data)
    count = get_header(data, "section_count")
    return put(data, 28, "<I", header_crc(data, count))


def table(data: bytes) -> list[dict]:
    """The section table as stored, without checks; entries that do not fit in the file are left out."""
    if len(data) < HEADER_SIZE:
        return []
    count = min(get_header(data, "section_count"), (len(data) - HEADER_SIZE) // ENTRY_SIZE)
    return [{name: get_entry(data, i, name) for name in ENTRY_FIELDS} for i in range(count)]


def fix_crcs(data: bytes) -> bytes:
    """Every section CRC whose section lies inside the file, then the header CRC (what an attacker does after an
    edit)."""
    buf = bytes(data)
    for i, e in enumerate(table(buf)):
        if e["offset"] + e["length"] <= len(buf):
            buf = put(buf, HEADER_SIZE + i * ENTRY_SIZE + 24, "<I", crc(buf[e["offset"]: e["offset"] + e["length"]]))
    return fix_header_crc(buf)


def stale_crcs(data: bytes, like: bytes) -> bytes:
    """`data` with the CRC fields of `like` (the file before the edit): what an accident leaves behind."""
    buf = bytes(data)
    if len(buf) < HEADER_SIZE or len(like) < HEADER_SIZE:
        return buf
    buf = put(buf, 28, "<I", get_header(like, "header_crc"))
    for i in range(min(len(table(buf)), len(table(like)))):
        buf = put(buf, HEADER_SIZE + i * ENTRY_SIZE + 24, "<I", get_entry(like, i, "crc32"))
    return buf


def split(data: bytes) -> list[Sec]:
    """The sections of a well-formed file as stored."""
    return [Sec(e["kind"], bytes(data[e["offset"]: e["offset"] + e["length"]]), e["flags"]) for e in table(data)]


def payload_text(s: Sec) -> bytes:
    return zlib.decompress(s.payload) if s.flags & DEFLATE else s.payload


def parse(data: bytes) -> tuple[dict, dict, bytes]:
    """(meta, graph, data section) of a well-formed file, JSON inflated and parsed."""
    secs = {s.kind: s for s in split(data)}
    return (json.loads(payload_text(secs[META])), json.loads(payload_text(secs[GRAPH])), secs[DATA].payload)


def rebuild(data: bytes, *, meta: Any = None, graph: Any = None, data_section: bytes | None = None,
            deflate: bool | None = None) -> bytes:
    """`data` with some parts replaced (dicts or raw bytes), laid out and checksummed right. deflate None: keep how
    each JSON section was stored."""
    secs = {s.kind: s for s in split(data)}
    out = []
    for kind, new in ((META, meta), (GRAPH, graph)):
        old = secs[kind]
        d = bool(old.flags & DEFLATE) if deflate is None else deflate
        out.append(json_sec(kind, payload_text(old) if new is None else new, d))
    out.append(Sec(DATA, secs[DATA].payload if data_section is None else bytes(data_section)))
    return assemble(out, version=(get_header(data, "version_major"), get_header(data, "version_minor")))


def edit_graph(data: bytes, fn: Callable[[dict], Any]) -> bytes:
    """Apply `fn` to a copy of the graph JSON (it edits in place; what it returns is ignored) and rebuild the file."""
    return edit(data, graph_fn=fn)


def edit_data(data: bytes, fn: Callable[[bytearray], Any]) -> bytes:
    """Apply `fn` to a copy of the data section (edit in place or return new bytes) and rebuild the file."""
    return edit(data, data_fn=fn)


def edit(data: bytes, graph_fn: Callable[[dict], Any] | None = None,
         data_fn: Callable[[bytearray], Any] | None = None) -> bytes:
    """Both edits at once (moving a buffer needs the graph's reference and the data's bytes to change together).
    graph_fn edits the graph in place; data_fn edits the bytearray in place or returns new bytes."""
    _, graph, section = parse(data)
    g, d = copy.deepcopy(graph), bytearray(section)
    if graph_fn is not None:
        graph_fn(g)
    if data_fn is not None:
        new = data_fn(d)
        d = d if not isinstance(new, (bytes, bytearray)) else bytearray(new)
    return rebuild(data, graph=g, data_section=bytes(d))


# --- fields -----------------------------------------------------------------------------------------------------------

def put(data: bytes, at: int, fmt: str, value: Any) -> bytes:
    """`data` with `value` packed at `at`; integers are wrapped to the field width (so 2^64 - 1 fits a u64)."""
    if fmt[-1] in "BHIQ":
        value = int(value) & ((1 << (8 * struct.calcsize(fmt))) - 1)
    buf = bytearray(data)
    struct.pack_into(fmt, buf, at, value)
    return bytes(buf)


def get_header(data: bytes, name: str) -> Any:
    at, fmt = HEADER_FIELDS[name]
    return struct.unpack_from(fmt, data, at)[0]


def get_entry(data: bytes, index: int, name: str) -> Any:
    at, fmt = ENTRY_FIELDS[name]
    return struct.unpack_from(fmt, data, HEADER_SIZE + index * ENTRY_SIZE + at)[0]


def set_header(data: bytes, name: str, value: Any, *, fix: bool = True) -> bytes:
    """A header field set; fix: the CRCs recomputed afterwards (the CRC field itself is then overwritten)."""
    at, fmt = HEADER_FIELDS[name]
    buf = put(data, at, fmt, value)
    return fix_crcs(buf) if fix else buf


def set_entry(data: bytes, index: int, name: str, value: Any, *, fix: bool = True) -> bytes:
    at, fmt = ENTRY_FIELDS[name]
    buf = put(data, HEADER_SIZE + index * ENTRY_SIZE + at, fmt, value)
    return fix_crcs(buf) if fix else buf


def xor_byte(data: bytes, at: int, mask: int) -> bytes:
    buf = bytearray(data)
    buf[at] ^= mask
    return bytes(buf)


# --- files with tensors -----------------------------------------------------------------------------------------------

def tensor_graph(tensors: list[dict]) -> dict:
    """A one-node graph (x -> Relu -> y) that carries `tensors` (arrays inline where buffers go)."""
    return {"name": "crafted", "opset": 17,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [1]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [1]}],
            "nodes": [{"op": "Relu", "name": "relu", "inputs": ["x"], "outputs": ["y"], "attrs": {}}],
            "tensors": tensors}


def tensor_file(*tensors: dict) -> bytes:
    """A file holding these tensors, laid out by the project's writer (plain JSON, so tests can read it)."""
    from edgepack.packer.writer import build_file

    return build_file({"producer": "craft", "format_version": "1.0"}, tensor_graph(list(tensors)), deflate=False)


def tensor(name: str, shape: Sequence[int], encoding: dict, dtype: str = "float32") -> dict:
    return {"name": name, "dtype": dtype, "shape": list(shape), "encoding": encoding}


def packed(symbols: Sequence[int], bits: int) -> dict:
    """A packed stream (spec 6.5), LSB first, written here independently of packer/bitpack.py."""
    sym = [int(s) for s in symbols]
    out = bytearray(-(-len(sym) * bits // 8))
    for i, s in enumerate(sym):
        for j in range(bits):
            if s >> j & 1:
                p = i * bits + j
                out[p // 8] |= 1 << (p % 8)
    return {"coding": "packed", "bits": bits, "data": np.frombuffer(bytes(out), np.uint8)}


def canonical(lengths: Sequence[int]) -> list[int]:
    """DEFLATE canonical codes (RFC 1951 3.2.2) of a code-length table; 0 for unused symbols."""
    max_len = max(lengths, default=0)
    bl = [0] * (max_len + 2)
    for n in lengths:
        bl[n] += 1
    bl[0] = 0
    code, nxt = 0, [0] * (max_len + 2)
    for n in range(1, max_len + 1):
        code = (code + bl[n - 1]) << 1
        nxt[n] = code
    out = []
    for n in lengths:
        out.append(nxt[n] if n else 0)
        if n:
            nxt[n] += 1
    return out


def huffman_chunks(chunks: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[list[bytes], list[int]]:
    """Each chunk's bytes (codes MSB first into LSB-first stream bits, zero padded) and the chunk offsets."""
    codes = canonical(lengths)
    out, offsets = [], [0]
    for chunk in chunks:
        bits = []
        for s in chunk:
            n = lengths[s]
            bits += [(codes[s] >> (n - 1 - j)) & 1 for j in range(n)]
        b = bytearray(-(-len(bits) // 8))
        for p, bit in enumerate(bits):
            b[p // 8] |= bit << (p % 8)
        out.append(bytes(b))
        offsets.append(offsets[-1] + len(b))
    return out, offsets


def huffman(chunks: Sequence[Sequence[int]], lengths: Sequence[int], bits: int, data: bytes | None = None,
            offsets: Sequence[int] | None = None, table: Sequence[int] | None = None) -> dict:
    """A chunked Huffman stream (spec 6.5) of these symbols coded with `lengths`; `data` / `offsets` / `table` (the
    stored code lengths) override what the encoding gives."""
    parts, offs = huffman_chunks(chunks, lengths)
    stored = list(lengths if table is None else table)
    table_bytes = packed(stored + [0] * ((1 << bits) - len(stored)), 4)["data"]
    return {"coding": "huffman", "bits": bits, "lengths": table_bytes,
            "offsets": np.asarray(offs if offsets is None else offsets, dtype="<u4"),
            "data": np.frombuffer(b"".join(parts) if data is None else data, np.uint8)}
