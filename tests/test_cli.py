"""The edgepack command line, run as a user would (in-process through main(), and once as a real subprocess)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import zoo
from edgepack.cli import _size, main


def test_pack_info_unpack(tmp_path, capsys):
    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    out = tmp_path / "cnn.epk"
    assert main(["pack", src, "-o", str(out), "--sparsity", "0.5", "--bits", "6", "-q", "--check"]) == 0
    text = capsys.readouterr().out
    assert "c2.w" in text and "ratio" in text and "top-1 agreement" in text
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["total_bytes"] == out.stat().st_size
    assert info["original_bytes"] > 0 and info["ratio"] == info["original_bytes"] / info["total_bytes"]
    assert main(["info", str(out)]) == 0
    assert "sparse_codebook" in capsys.readouterr().out
    assert main(["unpack", str(out), "-o", str(tmp_path / "back.onnx")]) == 0
    assert (tmp_path / "back.onnx").stat().st_size > 0


def test_init_choices_are_the_packers(tmp_path, capsys):
    """`pack --init` offers exactly packer.cluster.INITS (the CLI lists them without importing the packer), and the
    choice reaches k-means: the file packed with --init auto differs from the linear one and neither fails."""
    import argparse

    from edgepack.cli import build_parser
    from edgepack.packer.cluster import INITS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    init = next(a for a in sub.choices["pack"]._actions if a.dest == "init")
    assert tuple(init.choices) == INITS
    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    outs = {}
    for how in ("linear", "auto"):
        outs[how] = tmp_path / f"{how}.epk"
        assert main(["pack", src, "-o", str(outs[how]), "--sparsity", "0", "--bits", "8", "-q", "--init", how]) == 0
    assert outs["linear"].read_bytes() != outs["auto"].read_bytes()


def test_errors_are_clean(tmp_path, capsys):
    bad = tmp_path / "bad.epk"
    bad.write_bytes(b"\x89EPK\r\n\x1a\n" + b"\0" * 10)
    assert main(["info", str(bad)]) == 2
    assert "error" in capsys.readouterr().err
    notonnx = tmp_path / "x.onnx"
    notonnx.write_bytes(b"garbage")
    assert main(["pack", str(notonnx), "-o", str(tmp_path / "x.epk")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err
    assert not (tmp_path / "x.epk").exists()
    assert main(["info", str(tmp_path / "missing.epk")]) == 2


def test_size_parsing():
    assert _size("256KiB") == 262144 and _size("1MiB") == 1 << 20 and _size("4096") == 4096 and _size("64k") == 65536


def test_info_runs_without_onnx(tmp_path):
    """`edgepack info` on a board: onnx and onnxruntime are not importable there."""
    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    assert main(["pack", src, "-o", str(out), "-q"]) == 0
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('onnx', 'onnxruntime'): raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from edgepack.cli import main\n"
            f"sys.exit(main(['info', {str(out)!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ratio" in r.stdout


@pytest.mark.parametrize("blocked, command, extra", [
    (("onnx", "onnxruntime"), "pack", "packer"),
    (("zstandard", "matplotlib"), "bench", "bench"),
])
def test_missing_extra_is_named(tmp_path, blocked, command, extra):
    """On a device install (no onnx) or without the bench extras, a command that needs them says which extra to
    install, in one line, status 2, no traceback."""
    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    assert main(["pack", src, "-o", str(out), "-q"]) == 0
    args = ["pack", src, "-o", str(tmp_path / "n.epk")] if command == "pack" else ["bench", src, str(out)]
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {blocked!r}: raise ModuleNotFoundError('No module named ' + repr(name), name=name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from edgepack.cli import main\n"
            f"sys.exit(main({args!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert f"pip install 'edgepack[{extra}]'" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_error_message_escapes_control_characters(tmp_path, capsys):
    """A file name with an escape sequence or a newline is quoted in the error, not sent to the terminal raw."""
    bad = tmp_path / "evil\x1b]0;pwned\x07\nfake line.epk"
    bad.write_bytes(b"EPK")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1
    assert "\\x1b]0;pwned\\x07\\nfake line.epk" in err


def test_verify(tmp_path, capsys):
    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    assert main(["pack", src, "-o", str(out), "-q", "--sparsity", "0.5"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["verify", str(out), "--budget", "100"]) == 2
    assert "memory budget" in capsys.readouterr().err
    data = bytearray(out.read_bytes())
    data[-1] ^= 0xFF
    bad = tmp_path / "bad.epk"
    bad.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 2
    assert "CRC-32 mismatch" in capsys.readouterr().err


def test_broken_pipe_is_quiet(tmp_path):
    """`edgepack info x.epk --json | head`: the reader has gone; exit quietly as Unix tools do (128 + SIGPIPE), no
    '[Errno 32] Broken pipe', no traceback. The pipe's read end is closed before the command writes anything."""
    import os

    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    assert main(["pack", src, "-o", str(out), "-q"]) == 0
    for args in (["info", str(out), "--json"], ["info", str(out)], ["verify", str(out)]):
        r, w = os.pipe()
        os.close(r)
        try:
            p = subprocess.run([sys.executable, "-m", "edgepack", *args], stdout=w, stderr=subprocess.PIPE,
                               timeout=300)
        finally:
            os.close(w)
        assert p.returncode == 141, p.stderr
        assert p.stderr == b"", p.stderr.decode()


def test_threads_flags(tmp_path, capsys):
    import numpy as np
    import pytest
    from threadpoolctl import threadpool_info, threadpool_limits

    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    blas = lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]  # noqa: E731
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas()
        assert main(["pack", src, "-o", str(out), "-q", "--threads", "1"]) == 0
        assert blas() == before  # the limit held for the command only
    np.save(tmp_path / "x.npy", np.ones((3, 64), np.float32))
    capsys.readouterr()
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--repeat", "2"]) == 0
    assert "(1 thread)" in capsys.readouterr().out  # the default
    assert main(["run", str(out), "--input", str(tmp_path / "x.npy"), "--repeat", "2", "--threads", "2"]) == 0
    assert "(2 threads)" in capsys.readouterr().out
    for bad in (["run", str(out), "--input", str(tmp_path / "x.npy"), "--threads", "0"],
                ["pack", src, "-o", str(tmp_path / "n.epk"), "--threads", "-2"],
                ["bench", src, str(out), "--threads", "0"], ["bench", src, str(out), "--threads", "two"],
                ["pack", src, "-o", str(tmp_path / "n.epk"), "--max-error", "nan"],
                ["pack", src, "-o", str(tmp_path / "n.epk"), "--max-error", "-0.1"],
                ["run", str(out), "--input", str(tmp_path / "x.npy"), "--repeat", "-1"],
                ["demo", "--sparsity", "2"], ["demo", "--sparsity", "nan"], ["demo", "--bits", "0"],
                ["demo", "--epochs", "0"]):
        with pytest.raises(SystemExit) as e:
            main(bad)
        assert e.value.code == 2
        err = capsys.readouterr().err
        flag = [f for f in bad if f.startswith("--")][-1]
        assert f"argument {flag}: must be a" in err and "Traceback" not in err
    assert not (tmp_path / "n.epk").exists()
