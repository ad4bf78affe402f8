"""Reads the small files a user hands edgepack: settings (packing config, energy table) as JSON, or TOML when the name
ends in .toml; and input arrays (.npy, or .npz by name) for `run`, `pack --calib` and `energy --data`. Every problem
is an InputError naming the file and what is wrong with it; nothing is allocated before the file is known to hold
it (a header that claims 10^11 rows is refused by its size, not by a MemoryError)."""
from __future__ import annotations

import json
import os
import stat
import zipfile

from edgepack.runtime.errors import InputError

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"


def _reject_duplicates(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def read_table_file(path: str | os.PathLike) -> dict:
    """A JSON (duplicate keys refused) or TOML table -> dict; InputError when unreadable or not a table."""
    raw = _read_small(path, "settings file")
    try:
        if os.fspath(path).endswith(".toml"):
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            value = tomllib.loads(raw.decode("utf-8"))
        else:
            value = json.loads(raw, object_pairs_hook=_reject_duplicates,
                               parse_constant=lambda c: _bad_constant(c))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"{path}: cannot parse ({e})") from None
    if not isinstance(value, dict):
        raise InputError(f"{path}: expected a table (an object of names to values), found {type(value).__name__}")
    return value


def _bad_constant(c: str):
    raise ValueError(f"{c} is not a JSON number")


def _regular_file(path, what: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except (OSError, ValueError) as e:  # ValueError: an embedded null byte
        raise InputError(f"{what} {os.fspath(path)!r}: cannot open ({getattr(e, 'strerror', None) or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise InputError(f"{what} {os.fspath(path)!r}: {kind}")
    return st


def _read_small(path, what: str, limit: int = 64 << 20) -> bytes:
    st = _regular_file(path, what)
    if st.st_size > limit:
        raise InputError(f"{what} {os.fspath(path)!r}: {st.st_size:,} bytes; a settings file is at most {limit:,}")
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise InputError(f"{what} {os.fspath(path)!r}: cannot read ({e.strerror or e})") from None


def _npy_header(f, where: str, available: int):
    """(shape, dtype, fortran, header bytes) of the .npy stream at f's position, checked: a known version, a plain
    dtype (no objects), and data that the `available` bytes after the header hold exactly."""
    import numpy as np

    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(f) if version == (2, 0) else \
                fmt._read_array_header(f, version)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except Exception as e:  # numpy parses the header with tokenize and ast: any of their errors means "unreadable"
        raise InputError(f"{where}: not a readable .npy array (header: {type(e).__name__}: {e})"[:600]) from None
    header = f.tell()
    if dtype.hasobject or dtype.itemsize == 0:
        raise InputError(f"{where}: dtype {dtype} holds Python objects or nothing; give numbers")
    count = 1
    for d in shape:
        count *= int(d)
    need = count * dtype.itemsize
    if need > available - header:
        raise InputError(f"{where}: the header says shape {tuple(shape)} of {dtype} ({need:,} bytes) but the file "
                         f"holds {max(0, available - header):,} bytes of data: truncated or not what it claims")
    return tuple(int(d) for d in shape), dtype, fortran, header


def read_arrays(path: str | os.PathLike, what: str = "input"):
    """One array from an .npy, or {name: array} from an .npz; every header checked against the bytes the file holds
    before anything is allocated. InputError names the file (and the member) and the problem."""
    import numpy as np

    where = f"{what} {os.fspath(path)!r}"
    st = _regular_file(path, what)
    if st.st_size == 0:
        raise InputError(f"{where}: the file is empty (expected an .npy or .npz)")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
            f.seek(0)
            if magic == NPY_MAGIC:
                shape, dtype, fortran, header = _npy_header(f, where, st.st_size)
                count = int(np.prod(shape, dtype=np.int64)) if shape else 1
                if count == 0:
                    return np.zeros(shape, dtype)
                a = np.fromfile(f, dtype=dtype, count=count)
                if a.size != count:
                    raise InputError(f"{where}: the data ends early ({a.size} of {count} elements)")
                return a.reshape(shape, order="F" if fortran else "C")
            if NPY_MAGIC.startswith(magic):
                raise InputError(f"{where}: truncated inside the .npy magic ({st.st_size} bytes)")
            if not magic.startswith(ZIP_MAGIC):
                raise InputError(f"{where}: neither an .npy nor an .npz file (starts with {magic!r})")
            return _read_npz(f, where)
    except OSError as e:
        raise InputError(f"{where}: cannot read ({e.strerror or e})") from None


def _read_npz(f, where: str) -> dict:
    import numpy as np

    try:
        z = zipfile.ZipFile(f)
        out = {}
        for info in z.infolist():
            if not info.filename or info.filename.endswith("/"):
                continue
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            member = f"{where}, array {name!r}"
            if name in out:
                raise InputError(f"{member}: appears twice in the archive")
            with z.open(info) as m:
                shape, dtype, fortran, header = _npy_header(m, member, info.file_size)
                count = 1
                for d in shape:
                    count *= d
                raw = m.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise InputError(f"{member}: the data ends early")
            out[name] = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy() \
                if count else np.zeros(shape, dtype)
        return out
    except InputError:
        raise
    except Exception as e:  # zipfile on untrusted bytes raises many types (BadZipFile, IndexError, struct.error, ...)
        raise InputError(f"{where}: not a readable .npz archive ({type(e).__name__}: {e})"[:600]) from None
