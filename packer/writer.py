"""Writes format v1 (spec/format.md): lays out the data section from the encodings' arrays, then the header and
section table, and writes the whole file once to a temporary file in the target folder, fsyncs and renames it."""
from __future__ import annotations

import json
import os
import struct
import tempfile
import zlib
from typing import Any, Iterable

import numpy as np

from runtime import constants as C
from runtime.reader import align, header_crc

_HEADER = struct.Struct("<8sHHIQII32x")
_ENTRY = struct.Struct("<IIQQII")


class DataLayout:
    """Collects arrays into the data section: each at the next offset aligned to its item size (zero padding)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, arr: np.ndarray) -> list[int]:
        arr = np.ascontiguousarray(arr)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        pad = (-self.size) % max(arr.dtype.itemsize, 1)
        if pad:
            self.parts.append(b"\0" * pad)
            self.size += pad
        offset = self.size
        raw = arr.tobytes()
        self.parts.append(raw)
        self.size += len(raw)
        return [offset, len(raw)]

    def resolve(self, obj: Any) -> Any:
        """Replace every numpy array inside a JSON-like structure by its buffer reference, in document order."""
        if isinstance(obj, np.ndarray):
            return self.add(obj)
        if isinstance(obj, dict):
            return {k: self.resolve(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.resolve(v) for v in obj]
        return obj

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def to_json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _maybe_deflate(raw: bytes, deflate: bool) -> tuple[int, bytes]:
    """(flags, stored bytes): zlib level 9 when that is smaller, since JSON is a real share of a small model."""
    if deflate:
        packed = zlib.compress(raw, 9)
        if len(packed) < len(raw):
            return C.FLAG_DEFLATE, packed
    return 0, raw


def format_minor(graph: dict) -> int:
    """The lowest format minor that describes `graph` (spec section 8): 1.1 added `row_dims` to the encodings."""
    uses_rows = any(t.get("encoding", {}).get("row_dims", 1) != 1 for t in graph.get("tensors", []))
    return 1 if uses_rows else 0


def build_file(meta: dict, graph: dict, deflate: bool = True) -> bytes:
    """The file's bytes. `graph` may hold numpy arrays wherever a buffer reference belongs."""
    layout = DataLayout()
    minor = format_minor(graph)
    graph = layout.resolve(graph)
    meta_b, graph_b = to_json_bytes(meta), to_json_bytes(graph)
    if len(meta_b) > C.MAX_META_BYTES or len(graph_b) > C.MAX_GRAPH_BYTES:
        raise ValueError("metadata or graph section exceeds the format's size cap")
    payloads = [(C.KIND_META, *_maybe_deflate(meta_b, deflate)), (C.KIND_GRAPH, *_maybe_deflate(graph_b, deflate)),
                (C.KIND_DATA, 0, layout.bytes())]
    count = len(payloads)
    table_end = C.HEADER_SIZE + count * C.SECTION_ENTRY_SIZE
    entries, body, pos = [], [], align(table_end)
    body.append(b"\0" * (pos - table_end))
    for i, (kind, flags, payload) in enumerate(payloads):
        entries.append(_ENTRY.pack(kind, flags, pos, len(payload), zlib.crc32(payload) & 0xFFFFFFFF, 0))
        body.append(payload)
        pos += len(payload)
        if i + 1 < count:
            pad = align(pos) - pos
            body.append(b"\0" * pad)
            pos += pad
    head = bytearray(_HEADER.pack(C.MAGIC, C.VERSION_MAJOR, minor, count, pos, C.HEADER_SIZE, 0))
    head += b"".join(entries)
    struct.pack_into("<I", head, 28, header_crc(bytes(head), count))
    return bytes(head) + b"".join(body)


def write_atomic(path: str | os.PathLike, chunks: Iterable[bytes]) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers see no file or the whole file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the result should look like any new file
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # some filesystems do not fsync directories; the rename itself is atomic
