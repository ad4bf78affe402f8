"""Writes format v1 (spec/format.md): lays out the data section from the encodings' arrays, then the header and
section table, and writes the whole file once to a temporary file in the target folder, fsyncs and renames it."""
from __future__ import annotations

import json
import os
import re
import secrets
import stat
import struct
import zlib
from typing import Any, Callable, Iterable

import numpy as np

from edgepack.runtime import constants as C
from edgepack.runtime.errors import InputError
from edgepack.runtime.reader import align, file_kind, header_crc

_HEADER = struct.Struct("<8sHHIQII32x")
_ENTRY = struct.Struct("<IIQQII")


class DataLayout:
    """Collects arrays into the data section: each at the next offset aligned to its item size (zero padding)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, arr: np.ndarray) -> list[int]:
        arr = np.ascontiguousarray(arr)
        if arr.size == 0:  # holds nothing: [0, 0], and no padding (which would be left unclaimed at the end)
            return [0, 0]
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


TEMP_SUFFIX = ".edgepack-tmp"  # temporary files: .<target name>.<pid>-<random>.edgepack-tmp beside the target
_TEMP = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)-[0-9a-z_]+" + re.escape(TEMP_SUFFIX) + "$")


def output_path(path: str | os.PathLike, inputs: Iterable = (), what: str = "output") -> str:
    """The file a write to `path` replaces, checked: a symlink is followed (the link stays, its target gets the new
    bytes); anything existing there must be a regular file (a device, FIFO, socket or directory is refused, never
    replaced); it must not be one of `inputs` (the files the command reads); its folder must exist. InputError
    otherwise."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise InputError(f"{what} must be a path, found {type(path).__name__}") from None
    if not path or "\0" in path:
        raise InputError(f"{what} path {path!r} is empty or holds a null byte")
    target = os.path.realpath(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise InputError(f"{what} {path}: cannot be checked ({e.strerror})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path}{'' if target == os.path.abspath(path) else f' (-> {target})'} is "
                         f"{file_kind(st.st_mode)}, not a regular file; edgepack writes only regular files (it would "
                         f"replace it)")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise InputError(f"{what} {path}: folder {os.path.dirname(os.path.abspath(path)) or '.'} does not exist")
    if st is not None:
        for src in inputs:
            if src is None or isinstance(src, (bytes, bytearray, memoryview, dict)):
                continue
            try:
                same = os.path.samefile(os.fspath(src), target)
            except (OSError, TypeError, ValueError):
                same = False
            if same:
                raise InputError(f"{what} {path} is the input {os.fspath(src)}: writing it would destroy what the "
                                 f"command reads; give another {what} path")
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError, ValueError):
        return True  # exists (another user's) or cannot tell: keep its file
    return True


def clean_stale_temps(folder: str, base: str) -> list[str]:
    """Remove the temporary files that writes of `base` in `folder` left behind when their process was killed
    (SIGKILL, power loss): those whose process id no longer runs. Returns the names removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if m is None or m.group("base") != base or _pid_alive(int(m.group("pid"))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def write_atomic(path: str | os.PathLike, chunks: Iterable[bytes], check: Callable[[str], Any] | None = None,
                 inputs: Iterable = ()) -> None:
    """Write to a temporary file in the target's folder, fsync, (check it,) rename: readers see the old file or the
    whole new one, never a part, and a write that fails (or whose `check(temp path)` raises) leaves the old file as
    it was. The target is checked first (output_path: symlinks followed, devices and FIFOs refused, not one of
    `inputs`). Temporary files are named .<name>.<pid>-<random>.edgepack-tmp, so that one left by a killed process is
    removed by the next write of the same name (clean_stale_temps)."""
    shown = os.fspath(path)
    target = output_path(path, inputs)
    folder, base = os.path.dirname(target), os.path.basename(target)
    clean_stale_temps(folder, base)
    tmp = None
    for _ in range(100):
        name = f".{base}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(os.path.join(folder, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o600)
        except FileExistsError:
            continue
        except OSError as e:
            raise InputError(f"output {shown}: cannot create a file in {folder} ({e.strerror})") from None
        tmp = os.path.join(folder, name)
        break
    if tmp is None:
        raise InputError(f"output {shown}: could not create a temporary file in {folder}")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # created 0600; the result should look like any new file
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, target)
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


def write_packed(path: str | os.PathLike, data: bytes, source: str | os.PathLike = "the model"):
    """Check `data` (a whole .epk file) as the runtime's loader does, then write it with write_atomic: a file that
    would not load is never written, so it never replaces a good one. Returns the loader's view of the bytes."""
    from edgepack.runtime.errors import EdgepackError
    from edgepack.runtime.loader import read_packed

    try:
        packed = read_packed(data)
    except EdgepackError as e:
        msg = str(e)
        msg = msg[len("<bytes>: "):] if msg.startswith("<bytes>: ") else msg
        raise type(e)(f"{os.fspath(source)}: the packed form breaks the format, so {os.fspath(path)} was not "
                      f"written: {msg}") from e
    write_atomic(path, [data], inputs=[source])  # the API's pack(a.onnx, a.onnx) too, not only the CLI's
    return packed
