"""The container layer of format v1 (spec/format.md sections 2-4): header, section table, CRCs, the JSON of the
meta and graph sections, and the graph's structural rules. Everything is checked before any array is handed out;
tensor payloads are decoded and checked by runtime/decode.py."""
from __future__ import annotations

import json
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import constants as C
from .errors import BudgetError, ChecksumError, FormatError, UnsupportedError

_HEADER = struct.Struct("<8sHHIQII32x")
_ENTRY = struct.Struct("<IIQQII")


@dataclass(frozen=True)
class Section:
    kind: int
    offset: int
    length: int
    crc32: int
    flags: int = 0


@dataclass
class Container:
    """A parsed, checked file: meta and graph as validated JSON, data as a zero-copy uint8 view."""

    version: tuple[int, int]
    sections: list[Section]
    meta: dict
    graph: dict
    data: np.ndarray
    file_size: int


def align(n: int, a: int = C.SECTION_ALIGN) -> int:
    return (n + a - 1) // a * a


def header_crc(buf: bytes | memoryview, count: int) -> int:
    """CRC-32 of the header and section table with the header's own CRC field (bytes 28..31) taken as zero."""
    end = C.HEADER_SIZE + count * C.SECTION_ENTRY_SIZE
    crc = zlib.crc32(bytes(buf[0:28]))
    crc = zlib.crc32(b"\0\0\0\0", crc)
    return zlib.crc32(bytes(buf[32:end]), crc) & 0xFFFFFFFF


def open_bytes(source: str | os.PathLike | bytes | bytearray | memoryview) -> tuple[np.ndarray, str]:
    """Read a file, or take bytes, into memory this process alone owns; return a read-only uint8 view and a name for
    messages.

    The file is read once, not mapped: a model loaded from it keeps the bytes it was validated with, so that writing
    into the file, truncating it, replacing or deleting it afterwards changes nothing in the loaded model (a mapped
    file that shrinks raises SIGBUS in the next run that touches it, and one overwritten in place would run on
    unvalidated bytes). Immutable `bytes` are used as they are; a bytearray or memoryview, which its owner may still
    change, is copied. Only regular files are read: a FIFO, device or directory is refused without opening it for a
    blocking read."""
    if isinstance(source, bytes):
        return np.frombuffer(source, dtype=np.uint8), "<bytes>"
    if isinstance(source, (bytearray, memoryview)):
        try:
            raw = memoryview(source).tobytes()  # a copy, in C order whatever the view's layout
        except (TypeError, ValueError, BufferError) as e:
            raise FormatError(f"<bytes>: cannot read the buffer's bytes ({e})") from None
        return np.frombuffer(raw, dtype=np.uint8), "<bytes>"
    try:
        path = os.fspath(source)
    except TypeError:
        raise FormatError(f"expected a path, bytes, bytearray or memoryview, found {type(source).__name__}") from None
    if "\0" in (path if isinstance(path, str) else path.decode("latin-1")):
        raise FormatError(f"{path!r}: a file name cannot contain a null byte (\\0)")
    return read_file(path), path


def read_file(path: str, cap: int | None = None) -> np.ndarray:
    """The whole of a regular file as a read-only uint8 array owned by this process (see open_bytes). O_NONBLOCK
    keeps the open of a FIFO from waiting for a writer; what is not a regular file is then refused by its kind."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FormatError(f"{path}: is {file_kind(st.st_mode)}, not a regular file (packed models are read from "
                              f"regular files)")
        size = st.st_size
        if size == 0:
            raise FormatError(f"{path}: file is empty (expected at least {C.HEADER_SIZE} bytes)")
        if cap is not None and size > cap:
            raise FormatError(f"{path}: file is {size:,} bytes, more than the cap of {cap:,}")
        from .memory import check_allocation

        check_allocation(size, f"{path}: reading the file")
        try:
            out = np.empty(size, dtype=np.uint8)
        except MemoryError:
            raise BudgetError(f"{path}: reading the file needs {size:,} B, which cannot be allocated") from None
        view = memoryview(out)
        got = 0
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            while got < size:
                n = f.readinto(view[got:])
                if not n:
                    break
                got += n
        if got != size:
            raise FormatError(f"{path}: file shrank while it was read ({got:,} of {size:,} bytes); read it again "
                              f"when no one is writing it")
    finally:
        os.close(fd)
    out.flags.writeable = False
    return out


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for messages (shared with packer/writer.py)."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_container(buf: np.ndarray, where: str = "<bytes>") -> Container:
    size = int(buf.size)
    if size < C.HEADER_SIZE:
        raise FormatError(f"{where}: file is {size} bytes, shorter than the {C.HEADER_SIZE}-byte header")
    magic, major, minor, count, file_size, table_offset, crc = _HEADER.unpack(buf[: C.HEADER_SIZE].tobytes())
    if magic != C.MAGIC:
        raise FormatError(f"{where}: bad magic {magic!r} (expected {C.MAGIC!r}): not an edgepack file")
    if major != C.VERSION_MAJOR:
        raise UnsupportedError(
            f"{where}: format version {major}.{minor} is not supported (this reader reads {C.VERSION_MAJOR}.x)")
    if any(buf[32:64]):
        raise FormatError(f"{where}: header reserved bytes 32..63 must be zero")
    if table_offset != C.HEADER_SIZE:
        raise FormatError(f"{where}: section table offset {table_offset} (expected {C.HEADER_SIZE})")
    if not 3 <= count <= C.MAX_SECTIONS:
        raise FormatError(f"{where}: section count {count} out of range (expected 3..{C.MAX_SECTIONS})")
    if file_size != size:
        raise FormatError(f"{where}: header says file size {file_size}, file has {size} bytes")
    table_end = C.HEADER_SIZE + count * C.SECTION_ENTRY_SIZE
    if table_end > size:
        raise FormatError(f"{where}: section table ends at {table_end} > file size {size}")
    got = header_crc(buf[:table_end].tobytes(), count)
    if got != crc:
        raise ChecksumError(f"{where}: header CRC-32 mismatch (stored {crc:#010x}, computed {got:#010x})")

    sections = []
    expected_offset = align(table_end)
    for i in range(count):
        at = C.HEADER_SIZE + i * C.SECTION_ENTRY_SIZE
        kind, flags, offset, length, scrc, reserved = _ENTRY.unpack(buf[at: at + C.SECTION_ENTRY_SIZE].tobytes())
        name = C.KIND_NAMES.get(kind, f"#{i} (kind {kind})")
        if reserved or flags & ~C.FLAG_DEFLATE or (flags and kind not in (C.KIND_META, C.KIND_GRAPH)):
            raise FormatError(f"{where}: section {name}: flags {flags:#x} / reserved {reserved:#x} not allowed "
                              f"(only meta and graph may set flag {C.FLAG_DEFLATE:#x}, deflate)")
        if offset != expected_offset:
            raise FormatError(
                f"{where}: section {name}: offset {offset} (expected {expected_offset}: sections are laid out in "
                f"table order, each at the next {C.SECTION_ALIGN}-byte boundary, without holes or overlaps)")
        if length > size - offset:
            raise FormatError(f"{where}: section {name}: end {offset + length} > file size {size}")
        pad = buf[sections[-1].offset + sections[-1].length: offset] if sections else buf[table_end:offset]
        if pad.any():
            raise FormatError(f"{where}: nonzero padding before section {name}")
        sections.append(Section(kind, offset, length, scrc, flags))
        expected_offset = align(offset + length)
    last = sections[-1]
    if last.offset + last.length != size:
        raise FormatError(
            f"{where}: file has {size - last.offset - last.length} bytes after the last section (it must end there)")
    kinds = [s.kind for s in sections]
    required = [s for s in sections if not s.kind & C.KIND_OPTIONAL]
    if [s.kind for s in required] != [C.KIND_META, C.KIND_GRAPH, C.KIND_DATA]:
        unknown = [k for k in kinds if not k & C.KIND_OPTIONAL and k not in C.KIND_NAMES]
        if unknown:
            raise UnsupportedError(f"{where}: unknown required section kind {unknown[0]}")
        raise FormatError(f"{where}: sections must be meta, graph, data in that order (found kinds {kinds})")
    for s in sections:
        got = zlib.crc32(buf[s.offset: s.offset + s.length]) & 0xFFFFFFFF
        if got != s.crc32:
            raise ChecksumError(
                f"{where}: section {C.KIND_NAMES.get(s.kind, s.kind)}: CRC-32 mismatch "
                f"(stored {s.crc32:#010x}, computed {got:#010x})")
    meta_s, graph_s, data_s = required
    meta = _json_section(buf, meta_s, C.MAX_META_BYTES, "meta", where)
    graph = _json_section(buf, graph_s, C.MAX_GRAPH_BYTES, "graph", where)
    if data_s.length > C.MAX_DATA_BYTES:
        raise FormatError(f"{where}: section data: {data_s.length} bytes exceeds the cap {C.MAX_DATA_BYTES}")
    check_meta(meta, f"{where}: section meta")
    if meta["format_version"] != f"{major}.{minor}":
        raise FormatError(f"{where}: section meta: format_version {meta['format_version'][:20]!r} differs from the "
                          f"header's version {major}.{minor} (they must be equal)")
    check_graph(graph, f"{where}: section graph")
    data = buf[data_s.offset: data_s.offset + data_s.length]
    return Container((major, minor), sections, meta, graph, data, size)


def _json_section(buf: np.ndarray, s: Section, cap: int, name: str, where: str) -> dict:
    if s.length > cap:
        raise FormatError(f"{where}: section {name}: {s.length} bytes exceeds the cap of {cap}")
    raw = buf[s.offset: s.offset + s.length].tobytes()
    if s.flags & C.FLAG_DEFLATE:
        raw = _inflate(raw, cap, f"{where}: section {name}")
    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as e:  # ValueError: also ints over CPython's digit limit (>= 3.11)
        raise FormatError(f"{where}: section {name}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(value, dict):
        raise FormatError(f"{where}: section {name}: top level must be a JSON object, found {type(value).__name__}")
    return value


def _inflate(raw: bytes, cap: int, where: str) -> bytes:
    """zlib stream -> bytes, refusing more than `cap` bytes of output (no decompression bombs)."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(raw, cap + 1)
    except zlib.error as e:
        raise FormatError(f"{where}: not a valid zlib stream ({e})") from None
    if len(out) > cap:
        raise FormatError(f"{where}: inflates to more than the cap of {cap} bytes")
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise FormatError(f"{where}: zlib stream is truncated or followed by extra bytes")
    return out


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are unique (spec section 1: a reader that kept the first or the last of two equal
    keys would see another file than this one)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise json.JSONDecodeError(f"key {dup[:80]!r} appears twice in one object", dup, 0)
    return out


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not allowed", name, 0)


# --- schema helpers ------------------------------------------------------------------------------------------------

def field(obj: dict, key: str, kind: type | tuple, where: str, optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise FormatError(f"{where}: expected a JSON object, found {type(obj).__name__}")
    if key not in obj:
        if optional:
            return None
        raise FormatError(f"{where}: missing field '{key}'")
    value = obj[key]
    if optional and value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise FormatError(f"{where}: field '{key}' must be {_kind_name(kinds)}, found a boolean")
    if not isinstance(value, kinds):
        raise FormatError(f"{where}: field '{key}' must be {_kind_name(kinds)}, found {type(value).__name__}")
    if isinstance(value, str) and len(value) > C.MAX_STRING:
        raise FormatError(f"{where}: field '{key}' is longer than {C.MAX_STRING} characters")
    return value


def int_field(obj: dict, key: str, where: str, lo: int, hi: int, optional: bool = False) -> int | None:
    value = field(obj, key, int, where, optional)
    if value is None:
        return None
    if not lo <= value <= hi:
        raise FormatError(f"{where}: field '{key}' = {value} out of range [{lo}, {hi}]")
    return value


def _kind_name(kinds: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object",
             bool: "a boolean"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def check_meta(meta: dict, where: str) -> None:
    field(meta, "producer", str, where)
    field(meta, "format_version", str, where)


def check_shape(shape: Any, where: str, dynamic: bool) -> list:
    if not isinstance(shape, list) or len(shape) > C.MAX_RANK:
        raise FormatError(f"{where}: shape must be a list of at most {C.MAX_RANK} dimensions, found {shape!r:.80}")
    for d in shape:
        if isinstance(d, bool) or not (isinstance(d, int) or (dynamic and isinstance(d, str))):
            raise FormatError(f"{where}: bad dimension {d!r:.40} in shape")
        if isinstance(d, int) and not 0 <= d <= C.MAX_ELEMENTS:
            raise FormatError(f"{where}: dimension {d} out of range [0, {C.MAX_ELEMENTS}]")
        if isinstance(d, str) and not 0 < len(d) <= C.MAX_STRING:
            raise FormatError(f"{where}: bad dimension name in shape")
    return shape


def check_graph(graph: dict, where: str) -> None:
    """Structural rules: names, types, topological order, every input defined, every output produced once."""
    field(graph, "name", str, where)
    int_field(graph, "opset", where, 1, 1000)
    defined: set[str] = set()
    for key in ("inputs", "outputs"):
        items = field(graph, key, list, where)
        if len(items) > C.MAX_TENSORS:
            raise FormatError(f"{where}: too many {key}")
        for i, vi in enumerate(items):
            w = f"{where}: {key}[{i}]"
            name = field(vi, "name", str, w)
            dtype = field(vi, "dtype", str, w)
            if dtype not in C.DTYPES:
                raise UnsupportedError(f"{w} ('{name}'): dtype '{dtype}' is not supported")
            check_shape(field(vi, "shape", list, w), f"{w} ('{name}')", dynamic=True)
            if key == "inputs":
                if name in defined or not name:
                    raise FormatError(f"{w}: input name '{name}' is empty or defined twice")
                defined.add(name)
    tensors = field(graph, "tensors", list, where)
    if len(tensors) > C.MAX_TENSORS:
        raise FormatError(f"{where}: {len(tensors)} tensors exceeds the cap of {C.MAX_TENSORS}")
    for i, t in enumerate(tensors):
        w = f"{where}: tensors[{i}]"
        name = field(t, "name", str, w)
        if name in defined or not name:
            raise FormatError(f"{w}: tensor name '{name}' is empty or defined twice")
        defined.add(name)
        dtype = field(t, "dtype", str, w)
        if dtype not in C.DTYPES:
            raise UnsupportedError(f"{w} ('{name}'): dtype '{dtype}' is not supported")
        check_shape(field(t, "shape", list, w), f"{w} ('{name}')", dynamic=False)
        enc = field(t, "encoding", dict, w)
        kind = field(enc, "type", str, f"{w} ('{name}') encoding")
        if kind not in C.ENCODINGS:
            raise UnsupportedError(f"{w} ('{name}'): encoding '{kind}' is not supported by this reader")
    nodes = field(graph, "nodes", list, where)
    if len(nodes) > C.MAX_NODES:
        raise FormatError(f"{where}: {len(nodes)} nodes exceeds the cap of {C.MAX_NODES}")
    node_names: set[str] = set()
    for i, n in enumerate(nodes):
        w = f"{where}: nodes[{i}]"
        op = field(n, "op", str, w)
        name = field(n, "name", str, w)
        w = f"{where}: node '{name}' ({op})"
        if name in node_names or not name:
            raise FormatError(f"{w}: node name is empty or used twice")
        node_names.add(name)
        domain = field(n, "domain", str, w, optional=True)
        if domain not in (None, "", "ai.onnx"):
            raise UnsupportedError(f"{w}: domain '{domain}' is not the ONNX default domain ('' or 'ai.onnx'), the "
                                   f"only one format 1.x defines")
        for j, inp in enumerate(field(n, "inputs", list, w)):
            if not isinstance(inp, str):
                raise FormatError(f"{w}: input {j} must be a string")
            if inp and inp not in defined:
                raise FormatError(f"{w}: input {j} '{inp}' is not defined before this node "
                                  f"(nodes must be in topological order)")
        outs = field(n, "outputs", list, w)
        for j, out in enumerate(outs):
            if not isinstance(out, str) or not out:
                raise FormatError(f"{w}: output {j} must be a non-empty string")
            if out in defined:
                raise FormatError(f"{w}: output '{out}' is already defined")
            defined.add(out)
        attrs = field(n, "attrs", dict, w)
        for key, value in attrs.items():
            check_attr(value, f"{w}: attribute '{key}'")
    for i, vi in enumerate(graph["outputs"]):
        if vi["name"] not in defined:
            raise FormatError(f"{where}: outputs[{i}] '{vi['name']}' is never produced")


def check_attr(value: Any, where: str) -> None:
    if not (isinstance(value, list) and len(value) == 2 and value[0] in C.ATTR_KINDS):
        raise FormatError(f"{where}: must be [kind, value] with kind one of {C.ATTR_KINDS}")
    kind, v = value
    scalar = {"int": int, "float": (int, float), "string": str}
    if kind in scalar:
        ok = isinstance(v, scalar[kind]) and not isinstance(v, bool)
    else:
        ok = isinstance(v, list) and len(v) <= C.MAX_ELEMENTS and all(
            isinstance(x, scalar[kind[:-1]]) and not isinstance(x, bool) for x in v)
    if not ok:
        raise FormatError(f"{where}: value does not match its kind '{kind}'")
