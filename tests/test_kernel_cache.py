"""runtime/kernel_cache.py: a cached Numba kernel never outlives a source compiled into it."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from edgepack.runtime import kernel_cache
from edgepack.runtime.kernel_cache import STAMP, source_digest, sweep, sweep_folder


def _package(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "a.py").write_text("A = 1  # @njit(cache=True)\n")
    (pkg / "sub" / "b.py").write_text("B = 1  # @njit(cache=True)\n")
    return pkg


def _kernels(folder: Path) -> set[str]:
    return {f.name for f in folder.iterdir() if f.suffix in (".nbi", ".nbc")}


def test_digest_follows_every_source_and_only_sources(tmp_path):
    pkg = _package(tmp_path)
    d0 = source_digest([pkg])
    (pkg / "__pycache__" / "a.f-1.py311.nbi").write_bytes(b"x")       # caches are not sources
    (pkg / "notes.txt").write_text("not a source")
    assert source_digest([pkg]) == d0
    (pkg / "sub" / "b.py").write_text("B = 2  # @njit(cache=True)\n")  # a callee's module, not the caller's
    d1 = source_digest([pkg])
    assert d1 != d0
    (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")               # same bytes, another module
    assert source_digest([pkg]) != d1


def test_sweep_folder_empties_only_on_a_new_digest(tmp_path):
    folder = tmp_path / "__pycache__"
    folder.mkdir()
    for name in ("m.k-3.py311.nbi", "m.k-3.py311.1.nbc", "m.cpython-311.pyc"):
        (folder / name).write_bytes(b"x")
    assert sweep_folder(folder, "d1") is True
    assert _kernels(folder) == set() and (folder / "m.cpython-311.pyc").exists()
    assert (folder / STAMP).read_text().strip() == "d1"
    (folder / "m.k-3.py311.nbi").write_bytes(b"fresh")               # compiled after the stamp: kept
    assert sweep_folder(folder, "d1") is False
    assert _kernels(folder) == {"m.k-3.py311.nbi"}
    assert sweep_folder(folder, "d2") is True and _kernels(folder) == set()
    assert sweep_folder(tmp_path / "missing", "d1") is False and not (tmp_path / "missing").exists()
    assert not [f for f in folder.iterdir() if f.name.startswith(STAMP + ".")]   # no temporary stamp left


def test_sweep_groups_reach_subfolders_and_cross_group_sources(tmp_path, monkeypatch):
    pkg = _package(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.py").write_text("O = 1\n")
    monkeypatch.setattr(kernel_cache, "cache_folders", lambda d: [Path(d) / "__pycache__"])
    groups = [(pkg, (pkg, other))]
    sweep(groups)                                                      # first stamp
    for folder in (pkg / "__pycache__", pkg / "sub" / "__pycache__"):
        (folder / "x.k-1.py311.nbi").write_bytes(b"x")
    assert sweep(groups) == []
    (other / "o.py").write_text("O = 2\n")                            # a source the group's kernels reach
    assert sorted(sweep(groups)) == sorted([pkg / "__pycache__", pkg / "sub" / "__pycache__"])
    assert _kernels(pkg / "__pycache__") == set() == _kernels(pkg / "sub" / "__pycache__")


def test_cache_folders_follow_numba_cache_dir(monkeypatch, tmp_path):
    from numba.core import config

    monkeypatch.setattr(config, "CACHE_DIR", str(tmp_path / "nc"))
    folders = kernel_cache.cache_folders(Path("/some/where/ops"))
    assert str(folders[0]).startswith(str(tmp_path / "nc") + os.sep + "ops_")  # Numba's first choice when set
    assert folders[1] == Path("/some/where/ops/__pycache__")


def test_the_folder_numba_writes_to_is_made_and_stamped_first(monkeypatch, tmp_path):
    """A kernel Numba writes after the sweep into a folder that did not exist yet carries the current sources: the
    sweep makes that folder (Numba's first choice) and stamps it, so the next import keeps what was compiled there
    (`edgepack warm` into a fresh NUMBA_CACHE_DIR, then a run); a later choice that does not exist is not made."""
    pkg = _package(tmp_path)
    first, later = tmp_path / "nc" / "first", tmp_path / "later"
    monkeypatch.setattr(kernel_cache, "cache_folders", lambda d: [first / Path(d).name, later / Path(d).name])
    groups = [(pkg, (pkg,))]
    assert sweep(groups) == []
    assert (first / "pkg" / STAMP).is_file() and (first / "sub" / STAMP).is_file() and not later.exists()
    (first / "pkg" / "a.k-1.py311.nbi").write_bytes(b"x")
    assert sweep(groups) == [] and _kernels(first / "pkg") == {"a.k-1.py311.nbi"}
    (pkg / "notes.py").write_text("N = 1\n")  # a folder without kernel modules gets no cache folder
    (pkg / "docs").mkdir()
    (pkg / "docs" / "d.py").write_text("D = 1\n")
    sweep(groups)
    assert not (first / "docs").exists() and _kernels(first / "pkg") == set()  # a new source: emptied


_CALLEE = "from numba import njit\n\n@njit(cache=True)\ndef f():\n    return {v}\n"
_CALLER = "from numba import njit\nfrom callee import f\n\n@njit(cache=True)\ndef g():\n    return f() + 0\n"
_RUN = textwrap.dedent("""
    import sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    if sys.argv[2] == "sweep":
        from edgepack.runtime.kernel_cache import sweep
        d = Path(sys.argv[1])
        sweep([(d, (d,))])
    from caller import g
    print(g())
""")


def test_a_callee_edit_reaches_the_cached_caller(tmp_path):
    """The failure this module exists for, end to end with Numba: without the sweep the cached caller keeps the old
    callee (Numba checks the caller's file only); with it the edit is seen."""
    src = tmp_path / "mods"
    src.mkdir()
    (src / "callee.py").write_text(_CALLEE.format(v=1))
    (src / "caller.py").write_text(_CALLER)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}

    def run(mode):
        r = subprocess.run([sys.executable, "-c", _RUN, str(src), mode], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        return int(r.stdout.split()[-1])

    assert run("sweep") == 1                                           # compiled and cached
    (src / "callee.py").write_text(_CALLEE.format(v=2))
    assert run("plain") == 1                                           # Numba alone: the stale callee
    assert run("sweep") == 2
    assert run("sweep") == 2                                           # and cached again from there
