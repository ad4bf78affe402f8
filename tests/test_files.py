"""Files under and around edgepack: a loaded model owns its bytes (the file may change under it), only regular files
are read, and the commands that write (pack -o, unpack -o, run --output) never replace their input, a device, a
symlink's link or a good file with a bad one, and leave no temporary file behind that a later run cannot clean."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import runtime
import zoo
from packer.cli import main
from packer.pipeline import pack
from runtime.errors import FormatError
from test_model import lenet300

CONFIG = {"default": {"bits": 6}, "layers": {"ip1": {"sparsity": 0.9}, "ip2": {"sparsity": 0.9}}}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Two different packed models of the same shape (different seeds), and the ONNX source of the first."""
    root = tmp_path_factory.mktemp("files")
    a_src = zoo.save(lenet300(seed=1), root / "a.onnx")
    b_src = zoo.save(lenet300(seed=2), root / "b.onnx")
    pack(a_src, root / "a.epk", config=CONFIG, check_fidelity=False)
    pack(b_src, root / "b.epk", config=CONFIG, check_fidelity=False)
    return root


def _x(batch=2):
    return np.maximum(np.random.default_rng(3).standard_normal((batch, 784)), 0).astype(np.float32)


# ------------------------------------------------------------------------------- the file changes under a model

@pytest.mark.parametrize("mode", ["compact", "csr", "dense", "streamed", None])
@pytest.mark.parametrize("change", ["truncate", "overwrite_in_place", "delete", "zero"])
def test_a_loaded_model_keeps_its_bytes(two, tmp_path, mode, change):
    path = tmp_path / "loaded.epk"
    shutil.copyfile(two / "a.epk", path)
    model = runtime.load(path, layer_modes=mode)
    want = model.run(_x())["y"]
    if change == "truncate":
        os.truncate(path, 100)
    elif change == "overwrite_in_place":  # `cp b.epk loaded.epk` writes into the same inode
        with open(path, "r+b") as f:
            f.write((two / "b.epk").read_bytes())
            f.truncate()
    elif change == "delete":
        os.unlink(path)
    else:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
    got = model.run(_x())["y"]
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(got).all()


def test_a_mutable_buffer_is_copied(two):
    raw = bytearray((two / "a.epk").read_bytes())
    model = runtime.load(raw)
    want = model.run(_x())["y"]
    raw[:] = b"\0" * len(raw)
    np.testing.assert_array_equal(model.run(_x())["y"], want)


def test_non_contiguous_memoryview_is_read(two):
    raw = (two / "a.epk").read_bytes()
    doubled = bytearray(len(raw) * 2)
    doubled[::2] = raw
    model = runtime.load(memoryview(doubled)[::2])
    np.testing.assert_array_equal(model.run(_x())["y"], runtime.load(two / "a.epk").run(_x())["y"])


# ------------------------------------------------------------------------------- what is read

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_info_on_a_fifo_does_not_block(tmp_path, capsys):
    fifo = tmp_path / "pipe.epk"
    os.mkfifo(fifo)
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("code", main(["info", str(fifo)])), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "info blocked on a FIFO"
    assert result["code"] == 2
    assert "FIFO" in capsys.readouterr().err


def test_a_directory_is_refused_by_kind(tmp_path):
    with pytest.raises(FormatError, match="directory"):
        runtime.load(tmp_path)
