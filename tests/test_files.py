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

from edgepack import runtime
import zoo
from edgepack.cli import main
from edgepack.packer.pipeline import pack
from edgepack.runtime.errors import FormatError
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


@pytest.mark.parametrize("mode", ["compact", "csr", "dense", "streamed", None])
def test_a_model_keeps_only_the_bytes_its_runs_read(two, mode):
    """After load, the model holds a copy of the parts of the file its runs read, not the whole file, and runs as
    the model loaded from the caller's bytes (which are used as they are) does, bit for bit."""
    m = runtime.load(two / "a.epk", layer_modes=mode)
    ref = runtime.load((two / "a.epk").read_bytes(), layer_modes=mode)
    assert m._whole_file is None
    size = (two / "a.epk").stat().st_size
    assert m.plan.mapped_bytes <= m.plan.file_bytes < size
    if mode != "streamed":  # a streamed layer reads its compressed chunks: most of the file
        assert m.plan.file_bytes < size / 5
    for batch in (1, 3):
        np.testing.assert_array_equal(m.run(_x(batch))["y"], ref.run(_x(batch))["y"])


def test_a_view_the_walk_cannot_reach_keeps_the_whole_file(two, monkeypatch):
    """Safety of keep_needed_bytes: an array it cannot reach (here inside a deque) still views the file, so the model
    keeps the whole file and every array reads the bytes it read before."""
    import collections

    from edgepack.runtime import model as model_mod

    original = model_mod.Model._own_needed_bytes

    def hide_a_view(self):
        layer = next(iter(self._program.layers.values()))
        layer.hidden = collections.deque([self._container.data[:64]])
        original(self)

    monkeypatch.setattr(model_mod.Model, "_own_needed_bytes", hide_a_view)
    m = runtime.load(two / "a.epk", layer_modes="streamed")
    assert m._whole_file is not None and m.plan.file_bytes > (two / "a.epk").stat().st_size
    np.testing.assert_array_equal(m.run(_x())["y"], runtime.load((two / "a.epk").read_bytes(),
                                                                  layer_modes="streamed").run(_x())["y"])


def test_real_model_keeps_only_what_it_reads(tmp_path):
    """PP-OCRv4 det (Resize nodes read an empty 'roi' constant: an empty view of the file kept all of it alive until
    empty views were replaced too): 1.1 MB file, ~40 KB kept, outputs equal to the model loaded from bytes."""
    from realmodels.corpus import BY_NAME, fetch, pack_args

    out = tmp_path / "det.epk"
    assert main(["pack", str(fetch("ppocr_det")), "-o", str(out), "--sparsity", "0", "--bits", "8", "-q",
                 "--threads", "1", *pack_args(BY_NAME["ppocr_det"])]) == 0
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    for mode in (None, "streamed"):
        m = runtime.load(out, layer_modes=mode)
        assert m._whole_file is None
        if mode is None:
            assert m.plan.file_bytes < out.stat().st_size / 10
        ref = runtime.load(out.read_bytes(), layer_modes=mode)
        got, want = m.run(x), ref.run(x)
        assert all(np.array_equal(got[k], want[k]) for k in want)


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


# ------------------------------------------------------------------------------- what is written (items 11, 12)

def _bad_onnx(path):
    """A graph whose packed form breaks the format (an output name reused): the packer writes it, the loader refuses."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="a"), helper.make_node("Relu", ["x"], ["y"], name="b")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_pack_of_an_invalid_graph_keeps_the_good_file(two, tmp_path, capsys):
    out = tmp_path / "model.epk"
    shutil.copyfile(two / "a.epk", out)
    before = out.read_bytes()
    assert main(["pack", str(_bad_onnx(tmp_path / "bad.onnx")), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "bad.onnx" in err and "not written" in err and "'y' is already defined" in err
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if "edgepack-tmp" in p.name] == []


def _npy(path, batch=1):
    np.save(path, _x(batch))
    return path


@pytest.mark.parametrize("command", ["pack", "unpack", "run"])
def test_an_output_onto_the_input_is_refused(two, tmp_path, command, capsys):
    if command == "pack":
        src = tmp_path / "a.onnx"
        shutil.copyfile(two / "a.onnx", src)
        args = ["pack", str(src), "-o", str(src), "-q"]
    elif command == "unpack":
        src = tmp_path / "a.epk"
        shutil.copyfile(two / "a.epk", src)
        args = ["unpack", str(src), "-o", str(src)]
    else:
        src = _npy(tmp_path / "x.npy")
        args = ["run", str(two / "a.epk"), "--input", str(src), "--output", str(src)]
    before = src.read_bytes()
    assert main(args) == 2
    assert "is the input" in capsys.readouterr().err
    assert src.read_bytes() == before
    # the same file under another name (a symlink) is the same input
    link = tmp_path / "link"
    link.symlink_to(src)
    args[args.index(str(src), 2 if command != "run" else 5)] = str(link)
    assert main(args) == 2
    assert src.read_bytes() == before and link.is_symlink()


def test_run_output_is_written_under_the_name_given(two, tmp_path, capsys):
    x = _npy(tmp_path / "x.npy")
    out = tmp_path / "y.txt"
    assert main(["run", str(two / "a.epk"), "--input", str(x), "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert not (tmp_path / "y.txt.npy").exists()
    np.testing.assert_array_equal(np.load(out), runtime.load(two / "a.epk").run(np.load(x))["y"])


def test_an_output_symlink_is_followed_not_replaced(two, tmp_path):
    real = tmp_path / "real.onnx"
    real.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(real)
    assert main(["unpack", str(two / "a.epk"), "-o", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_bytes() != b"old" and real.stat().st_size > 1000


def _device(tmp_path):
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    except (PermissionError, OSError, AttributeError):
        pytest.skip("cannot make a device node here")
    return dev


@pytest.mark.parametrize("kind", ["device", "fifo", "directory"])
@pytest.mark.parametrize("command", ["pack", "unpack", "run"])
def test_an_output_that_is_not_a_regular_file_is_refused(two, tmp_path, kind, command, capsys):
    if kind == "device":
        target = _device(tmp_path)
    elif kind == "fifo":
        target = tmp_path / "fifo"
        os.mkfifo(target)
    else:
        target = tmp_path / "dir"
        target.mkdir()
    args = {"pack": ["pack", str(two / "a.onnx"), "-o", str(target), "-q"],
            "unpack": ["unpack", str(two / "a.epk"), "-o", str(target)],
            "run": ["run", str(two / "a.epk"), "--input", str(_npy(tmp_path / "x.npy")), "--output", str(target)]}
    mode = os.lstat(target).st_mode
    assert main(args[command]) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert os.lstat(target).st_mode == mode  # still the device / FIFO / folder it was


def test_a_missing_output_folder_is_named(two, tmp_path, capsys):
    assert main(["unpack", str(two / "a.epk"), "-o", str(tmp_path / "nope" / "a.onnx")]) == 2
    assert f"folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_temporary_files_of_a_killed_writer_are_cleaned(tmp_path):
    """A writer killed with SIGKILL in the middle leaves its temporary file; the next write of that name removes it
    (its process is gone) and leaves another live writer's alone."""
    from edgepack.packer.writer import TEMP_SUFFIX, write_atomic

    target = tmp_path / "out.epk"
    code = ("import sys, time; from edgepack.packer.writer import write_atomic\n"
            "def chunks():\n    yield b'x' * 1000\n    sys.stdout.write('started\\n'); sys.stdout.flush()\n"
            "    time.sleep(60)\n    yield b'y'\n"
            f"write_atomic({str(target)!r}, chunks())\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "started"
    finally:
        p.kill()
        p.wait()
    left = [q for q in tmp_path.iterdir() if q.name.endswith(TEMP_SUFFIX)]
    assert len(left) == 1 and left[0].name.startswith(".out.epk.")
    live = tmp_path / f".out.epk.{os.getpid()}-abcd{TEMP_SUFFIX}"  # a write in progress in a live process
    live.write_bytes(b"")
    other = tmp_path / f".other.epk.{p.pid}-abcd{TEMP_SUFFIX}"  # another file's: not this write's business
    other.write_bytes(b"")
    write_atomic(target, [b"done"])
    assert target.read_bytes() == b"done"
    assert sorted(q.name for q in tmp_path.iterdir()) == sorted(["out.epk", live.name, other.name])


def test_the_pack_api_does_not_overwrite_its_input(two, tmp_path):
    from edgepack.runtime.errors import InputError

    src = tmp_path / "a.onnx"
    shutil.copyfile(two / "a.onnx", src)
    before = src.read_bytes()
    with pytest.raises(InputError, match="is the input"):
        pack(src, src, config=CONFIG, check_fidelity=False)
    assert src.read_bytes() == before
