"""One Model run from several threads at once (runtime/model.py): every result equals the serial run's, bit for
bit, in every weight mode, with shapes that make the threads plan and re-bind the arena while others run."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from edgepack import runtime
import zoo
from edgepack.packer.pipeline import pack
from test_model import lenet300

CONFIG = {"default": {"bits": 6}, "layers": {"ip1": {"sparsity": 0.9}, "ip2": {"sparsity": 0.9}}}


@pytest.fixture(autouse=True)
def switch_often():
    """Threads switch every microsecond instead of every 5 ms: without the model's lock these tests see 48-175 wrong
    results in 1,200 runs (measured when the lock was added)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrency")
    src = zoo.save(lenet300(), root / "lenet300.onnx")
    out = root / "lenet300.epk"
    pack(src, out, config=CONFIG, check_fidelity=False)
    return out


def _hammer(model, feeds, expected, threads: int = 4, rounds: int = 300) -> list[str]:
    """Each thread runs every feed `rounds` times in its own order; returns the mismatches and exceptions seen."""
    problems: list[str] = []
    start = threading.Barrier(threads)

    def work(t: int) -> None:
        order = np.random.default_rng(t).permutation(len(feeds) * (rounds // len(feeds) + 1))[:rounds] % len(feeds)
        start.wait()
        try:
            for i in order:
                got = model.run(feeds[i])
                if not np.array_equal(got["y"], expected[i]):
                    problems.append(f"thread {t}: feed {i} (batch {feeds[i].shape[0]}) differs")
        except Exception as e:  # noqa: BLE001 - reported as a failure below
            problems.append(f"thread {t}: {type(e).__name__}: {e}")

    ts = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return problems


@pytest.mark.parametrize("mode", ["compact", "csr", "dense", "streamed"])
def test_runs_from_four_threads_equal_serial_runs(packed, mode):
    model = runtime.load(packed, layer_modes=mode)
    rng = np.random.default_rng(0)
    # batches 1..3: threads plan new shapes, grow the arena and re-bind steps while other threads run
    feeds = [np.maximum(rng.standard_normal((b, 784)), 0).astype(np.float32) for b in (1, 2, 3, 1, 2, 3)]
    expected = [runtime.load(packed, layer_modes=mode).run(x)["y"] for x in feeds]
    assert _hammer(model, feeds, expected) == []


def test_plan_for_and_run_concurrently(packed):
    model = runtime.load(packed)
    x = np.maximum(np.random.default_rng(1).standard_normal((2, 784)), 0).astype(np.float32)
    want = model.run(x)["y"]
    bad: list[str] = []

    def planner() -> None:
        for b in range(1, 40):
            p = model.plan_for((b, 784))
            if p.input_shapes["x"] != (b, 784):
                bad.append(f"plan_for({b}) gave {p.input_shapes}")

    def runner() -> None:
        for _ in range(200):
            if not np.array_equal(model.run(x)["y"], want):
                bad.append("run differs")

    ts = [threading.Thread(target=planner), threading.Thread(target=runner), threading.Thread(target=runner)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert bad == []


def test_loads_and_runs_in_several_threads(packed):
    """Models loaded in four threads at once (each its own Model) run like one loaded alone."""
    x = np.maximum(np.random.default_rng(2).standard_normal((2, 784)), 0).astype(np.float32)
    modes = ("compact", "csr", "dense", "streamed")
    want = {mode: runtime.load(packed, layer_modes=mode).run(x)["y"] for mode in modes}  # modes round differently
    got: list = []

    def work(mode) -> None:
        try:
            m = runtime.load(packed, layer_modes=mode)
            got.append(all(np.array_equal(m.run(x)["y"], want[mode]) for _ in range(50)))
        except Exception as e:  # noqa: BLE001 - reported below
            got.append(f"{type(e).__name__}: {e}")

    ts = [threading.Thread(target=work, args=(mode,)) for mode in modes]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert got == [True] * 4
