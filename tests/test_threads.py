"""Threads: a run never uses more threads than `threads` asks (numpy's BLAS included), the limit is scoped to the run
(nested and restored), and `edgepack run --threads` / the workstation commands' --threads hold to it."""
from __future__ import annotations

import time

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from edgepack import runtime
import zoo
from edgepack.packer.pipeline import pack
from edgepack.runtime import threads as T
from edgepack.runtime.errors import InputError


def _blas_threads() -> list[int]:
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 1024-wide MLP held dense float32: its runs are BLAS matrix products large enough for OpenBLAS to start its
    threads at batch 64."""
    d = tmp_path_factory.mktemp("threads")
    src = zoo.save(zoo.mlp(sizes=(1024, 1024, 1024, 10)), d / "wide.onnx")
    out = d / "wide.epk"
    pack(src, out, config={"default": {"encoding": "dense"}}, check_fidelity=False)
    return out


def test_blas_limit_is_scoped_nested_and_restored():
    with threadpool_limits(limits=2, user_api="blas"):
        start = _blas_threads()
        T.blas_enter(1)
        assert _blas_threads() == [1] * len(start)
        T.blas_enter(3)  # a looser limit inside a tighter one does not raise the count
        assert _blas_threads() == [1] * len(start)
        T.blas_exit(3)
        assert _blas_threads() == [1] * len(start)
        T.blas_exit(1)
        assert _blas_threads() == start
        with T.limit_process(1):
            assert _blas_threads() == [1] * len(start)
        assert _blas_threads() == start


def test_run_restores_blas_and_numba_threads(wide):
    x = np.random.default_rng(0).standard_normal((4, 1024)).astype(np.float32)
    model = runtime.load(wide, threads=1, batch=4)
    with threadpool_limits(limits=2, user_api="blas"):
        before = _blas_threads()
        model.run(x)
        assert _blas_threads() == before
    assert model.threads == 1
    par = runtime.load(wide, parallel=True, threads=1, batch=4)
    n0 = numba.get_num_threads()
    np.testing.assert_allclose(par.run(x)["y"], model.run(x)["y"], rtol=1e-5, atol=1e-5)
    assert par.threads == 1 and numba.get_num_threads() == n0


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_threads_must_be_a_positive_int(wide, bad):
    with pytest.raises(InputError, match="threads must be an int >= 1"):
        runtime.load(wide, threads=bad)


def test_one_thread_means_one_cpu(wide):
    """Process CPU time over wall time at threads=1, with BLAS allowed 2 threads outside the run: at most ~1.1 (one
    thread busy). A single thread cannot use more CPU than wall time, whatever the machine's load, so the bound is
    not flaky; OpenBLAS's threads would add their CPU (and their spinning) to the process's."""
    x = np.random.default_rng(0).standard_normal((64, 1024)).astype(np.float32)
    with threadpool_limits(limits=max(2, T.cores()), user_api="blas"):
        model = runtime.load(wide, threads=1, batch=64, layer_modes="dense")
        model.run(x)  # compile, first-touch
        c0, t0 = time.process_time(), time.perf_counter()
        runs = 0
        while runs < 5 or time.perf_counter() - t0 < 0.3:
            model.run(x)
            runs += 1
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    assert cpu <= 1.1 * wall + 0.01, f"{runs} runs: CPU {cpu:.3f} s over wall {wall:.3f} s"


@pytest.mark.parametrize("ncores,load,want", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.4, 1), (2, 8.5, 1),
                                              (8, 2.6, 5), (8, 7.6, 1), (8, 40.0, 1), (1, 0.0, 1), (4, -0.2, 4)])
def test_free_cores_is_the_cores_less_the_load(monkeypatch, ncores, load, want):
    """The workstation commands' default --threads: the cores other work leaves free, at least 1, at most the cores."""
    monkeypatch.setattr(T, "cores", lambda: ncores)
    monkeypatch.setattr(T.os, "getloadavg", lambda: (load, load, load))
    assert T.free_cores() == want


def test_free_cores_without_a_load_average(monkeypatch):
    def missing():
        raise OSError("no load average")

    monkeypatch.setattr(T, "cores", lambda: 3)
    monkeypatch.setattr(T.os, "getloadavg", missing)
    assert T.free_cores() == 3


def test_workstation_commands_default_to_the_free_cores(monkeypatch):
    """`pack` etc. without --threads run within free_cores() threads, resolved when the command starts."""
    from edgepack import cli

    seen = []
    monkeypatch.setattr(T, "free_cores", lambda: 1)
    monkeypatch.setattr(T, "limit_process", lambda n: seen.append(n) or T.ThreadLimit(n, parallel=True))
    monkeypatch.setattr(cli, "cmd_demo", lambda a: seen.append(("demo", a.threads)) or 0)
    assert cli.main(["demo", "--epochs", "1"]) == 0
    assert cli.main(["demo", "--epochs", "1", "--threads", "2"]) == 0
    assert seen == [1, ("demo", 1), 2, ("demo", 2)]
