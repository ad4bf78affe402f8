"""Numba's on-disk kernel cache kept in step with every source a cached kernel can reach, not only its own file.

Numba checks a cached kernel against the one source file that defines it. A kernel that calls a kernel of another
module (the conv epilogue chain calls elementwise's exp, the LSTM cell calls it too) has the callee compiled into
it: edit or upgrade the callee's module alone (a `pip install -U` keeps the old `__pycache__/*.nbi` / `*.nbc`,
which pip does not record) and the caller's cache still validates and runs the old callee, with no error. `sweep()`
runs once when `edgepack.runtime` is imported, before any kernel is loaded: each cache folder of edgepack's kernels
carries a stamp, a digest of all the sources its kernels can reach (the runtime's for the runtime's folders; the
packer's and the runtime's for the packer's); when the stamp differs the folder's kernels are removed and Numba
compiles them again on their first call. The folders are the ones Numba's locators use for a source folder: its
`__pycache__`, `NUMBA_CACHE_DIR`'s and the user-wide cache's subfolder. Nothing here may stop an import: a folder
that cannot be read or written is left as it is (Numba then does not use it either).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

STAMP = "edgepack-kernels.stamp"
_PACKAGE = Path(__file__).resolve().parent.parent


def _sources(roots) -> list[Path]:
    return sorted({p for root in roots for p in Path(root).rglob("*.py")})


def source_digest(roots) -> str:
    """sha256 over the relative path and bytes of every .py file under `roots` (sorted)."""
    h = hashlib.sha256()
    for path in _sources(roots):
        h.update(os.fsencode(str(path.relative_to(_PACKAGE)) if path.is_relative_to(_PACKAGE) else path.name))
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def cache_folders(source_dir: Path) -> list[Path]:
    """Where Numba may keep the kernels of the modules in `source_dir`, in the order its locators try them:
    NUMBA_CACHE_DIR's subfolder (when set), the in-tree __pycache__, the user-wide cache's subfolder."""
    folders = [Path(source_dir) / "__pycache__"]
    try:
        from numba.core import config
        from numba.core.caching import _CacheLocator
        from numba.misc.appdirs import AppDirs

        sub = _CacheLocator.get_suitable_cache_subpath(str(Path(source_dir) / "x.py"))
        if config.CACHE_DIR:
            folders.insert(0, Path(config.CACHE_DIR) / sub)
        folders.append(Path(AppDirs(appname="numba", appauthor=False).user_cache_dir) / sub)
    except Exception:  # another Numba's layout: the in-tree folder is still kept in step
        pass
    return folders


def sweep_folder(folder: Path, digest: str, create: bool = False) -> bool:
    """Remove the Numba cache files (*.nbi, *.nbc) of `folder` unless its stamp is `digest`; stamp it. Returns whether
    anything was removed. A folder that does not exist holds nothing stale; with `create` it is made and stamped
    (the folder Numba will write to: its kernels then carry the stamp of the sources they were compiled from)."""
    stamp = folder / STAMP
    try:
        if not folder.is_dir():
            if not create:
                return False
            folder.mkdir(parents=True, exist_ok=True)
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return False
        removed = False
        for f in folder.iterdir():
            if f.suffix in (".nbi", ".nbc"):
                try:
                    f.unlink()
                    removed = True
                except FileNotFoundError:
                    pass
        tmp = folder / f"{STAMP}.{os.getpid()}"
        tmp.write_text(digest + "\n")
        os.replace(tmp, stamp)
        return removed
    except OSError:
        return False


def _kernel_dirs(top: Path) -> list[Path]:
    """The folders under `top` (itself included) with a module that caches Numba kernels."""
    dirs = [Path(top)] + [d for d in Path(top).rglob("*") if d.is_dir() and "__pycache__" not in d.parts]
    return [d for d in dirs if any(b"cache=True" in p.read_bytes() for p in d.glob("*.py"))]


def sweep(groups=None) -> list[Path]:
    """Keep every cache folder of edgepack's kernels in step with its sources; returns the folders emptied.
    `groups`: (folder whose subfolders hold kernel modules, source roots its kernels can reach) pairs; the default is
    the runtime (its own sources) and the packer (the packer's and the runtime's)."""
    if groups is None:
        runtime, packer = _PACKAGE / "runtime", _PACKAGE / "packer"
        groups = [(runtime, (runtime,)), (packer, (packer, runtime))]
    emptied = []
    for top, roots in groups:
        digest = source_digest(roots)
        for d in _kernel_dirs(top):
            primary = True  # the first folder that can be made and stamped is the one Numba writes to
            for folder in cache_folders(d):
                if not primary and not folder.is_dir():
                    continue
                if sweep_folder(folder, digest, create=primary):
                    emptied.append(folder)
                if primary and (folder / STAMP).is_file():
                    primary = False
    return emptied
