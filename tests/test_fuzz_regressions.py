"""Replays the fuzz seeds and regressions (tests/fuzz_regressions/) through load + run, and the malformed corpus with
NUMBA_BOUNDSCHECK=1, where an out-of-bounds index inside a kernel raises IndexError instead of reading memory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import craft  # noqa: E402
from fuzz.replay import run_once  # noqa: E402
from edgepack.runtime.errors import EdgepackError  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REGRESSIONS = sorted((HERE / "fuzz_regressions").glob("*"))
EXAMPLES = sorted((ROOT / "spec" / "examples").glob("*.epk"))


@pytest.mark.parametrize("path", REGRESSIONS + EXAMPLES, ids=lambda p: p.name)
def test_replay(path):
    try:
        run_once(path.read_bytes())
    except EdgepackError:
        pass


def malformed_corpus() -> list[bytes]:
    """Every byte of each seed flipped (XOR 0xFF and 0x01) with the CRCs recomputed, so that what the reader does
    not reject reaches the kernels."""
    seeds = [p.read_bytes() for p in REGRESSIONS + EXAMPLES if p.suffix == ".epk"]
    out = []
    for seed in seeds:
        for at in range(len(seed)):
            for mask in (0xFF, 0x01):
                out.append(craft.fix_crcs(craft.xor_byte(seed, at, mask)))
    return out


def test_malformed_corpus_with_boundscheck(tmp_path):
    corpus = malformed_corpus()
    blob = tmp_path / "corpus.bin"
    with open(blob, "wb") as f:
        for data in corpus:
            f.write(len(data).to_bytes(4, "little") + data)
    script = (
        "import sys\n"
        f"sys.path[:0] = [{str(ROOT / 'src')!r}, {str(HERE)!r}]\n"
        "from fuzz.replay import run_once\n"
        "from edgepack.runtime.errors import EdgepackError\n"
        f"raw = open({str(blob)!r}, 'rb').read()\n"
        "at = n = ok = 0\n"
        "while at < len(raw):\n"
        "    size = int.from_bytes(raw[at:at + 4], 'little'); data = raw[at + 4:at + 4 + size]; at += 4 + size\n"
        "    n += 1\n"
        "    try:\n"
        "        run_once(data); ok += 1\n"
        "    except EdgepackError:\n"
        "        pass\n"
        "print(n, ok)\n")
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    n, ok = map(int, r.stdout.split())
    assert n == len(corpus) and ok > 0  # some flips land in harmless places and still load and run
