"""User arrays and sizes (issue 14 items 8, 9, 13): one reader of .npy/.npz (runtime/tables.py read_arrays) that
checks every header against the bytes the file holds before reading; one size parser; huge --input-shape and
shape-less ONNX inputs refused by name. Every failure is an InputError naming the file or input, and the CLI exits
2 without a traceback."""
from __future__ import annotations

import io
import re
import zipfile

import numpy as np
import onnx
import pytest

import zoo
from edgepack.cli import main
from edgepack.packer.pipeline import pack
from edgepack.runtime.errors import InputError
from edgepack.runtime.memory import parse_size
from edgepack.runtime.tables import read_arrays


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    onnx_path = zoo.save(zoo.mlp(), d / "mlp.onnx")
    pack(onnx_path, d / "mlp.epk", check_fidelity=False)
    return {"onnx": onnx_path, "epk": str(d / "mlp.epk"), "dir": d}


def _npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


GOOD = _npy(np.ones((4, 64), np.float32))
BAD_FILES = {
    "empty": (b"", "the file is empty"),
    "magic_only": (GOOD[:4], "truncated inside the .npy magic"),
    "header_cut": (GOOD[:40], "not a readable .npy array"),
    "data_cut": (GOOD[:-5], r"the header says shape \(4, 64\) of float32 \(1,024 bytes\) but the file holds 1,019"),
    "huge_header": (GOOD.replace(b"(4, 64)", b"(100000000000, 32)"), r"shape \(100000000000, 32\)"),
    "object_dtype": (GOOD.replace(b"'<f4'", b"'|O' "), "holds Python objects"),
    "text": (b"1 2 3\n", "neither an .npy nor an .npz"),
    "zip_cut": (None, "not a readable .npz archive"),
}


def _bad_bytes(kind: str) -> bytes:
    data, _ = BAD_FILES[kind]
    if data is None:
        b = io.BytesIO()
        np.savez(b, x=np.ones((4, 64), np.float32))
        data = b.getvalue()[:60]
    return data


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_read_arrays_refuses_by_name(tmp_path, kind):
    p = tmp_path / "x.npy"
    p.write_bytes(_bad_bytes(kind))
    with pytest.raises(InputError, match=BAD_FILES[kind][1]):
        read_arrays(p)


def test_read_arrays_npz_members_checked(tmp_path):
    p = tmp_path / "x.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", GOOD.replace(b"(4, 64)", b"(100000000000, 32)"))
    with pytest.raises(InputError, match=r"array 'x'.*shape \(100000000000, 32\)"):
        read_arrays(p)
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", GOOD)
        z.writestr("y.npy", _npy(np.arange(3)))
    got = read_arrays(p)
    assert sorted(got) == ["x", "y"] and got["x"].shape == (4, 64) and got["y"].tolist() == [0, 1, 2]


def test_read_arrays_round_trips(tmp_path):
    for a in (np.arange(12.0).reshape(3, 4), np.asfortranarray(np.arange(12.0).reshape(3, 4)), np.array(3.5),
              np.zeros((0, 3), np.int64), np.array([True, False])):
        np.save(tmp_path / "a.npy", a)
        got = read_arrays(tmp_path / "a.npy")
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
    np.savez_compressed(tmp_path / "b.npz", x=np.ones((2, 2), np.float32), y=np.arange(5))
    got = read_arrays(tmp_path / "b.npz")
    assert np.array_equal(got["y"], np.arange(5)) and got["x"].dtype == np.float32
    for path, match in ((tmp_path / "missing.npy", "cannot open"), (tmp_path, "a folder"), ("a\0b", "cannot open")):
        with pytest.raises(InputError, match=match):
            read_arrays(path)


@pytest.mark.parametrize("kind", ["empty", "data_cut", "huge_header", "zip_cut"])
def test_cli_run_and_calib_refuse_bad_arrays(files, tmp_path, capsys, kind):
    p = tmp_path / "x.npy"
    p.write_bytes(_bad_bytes(kind))
    assert main(["run", files["epk"], "--input", str(p), "--repeat", "0"]) == 2
    err = capsys.readouterr().err
    assert "--input" in err and str(p) in err and "Traceback" not in err
    assert main(["pack", files["onnx"], "-o", str(tmp_path / "m.epk"), "--calib", str(p), "-q"]) == 2
    err = capsys.readouterr().err
    assert "--calib" in err and str(p) in err
    assert not (tmp_path / "m.epk").exists()


@pytest.mark.parametrize("text", ["garbage", "infKiB", "nan", "-1k", "1e400", "12 parsecs", ""])
def test_sizes_refused_by_name(files, capsys, text):
    with pytest.raises(InputError):
        parse_size(text)
    for argv in (["energy", files["epk"], f"--sram={text}"], ["info", files["epk"], f"--budget={text}"],
                 ["run", files["epk"], "--input", "x.npy", f"--budget={text}"]):
        with pytest.raises(SystemExit) as e:  # argparse: exit 2 with the message, before anything loads
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "invalid literal" not in err and ("is not a size" in err or "finite number of bytes" in err)


def test_sizes_parse():
    assert parse_size("256KiB") == 262144 and parse_size("1.5MiB") == 3 << 19 and parse_size("64kB") == 64000
    assert parse_size(" 4096 ") == 4096 and parse_size("1_000") == 1000 and parse_size(0) == 0
    for bad in (True, None, [1], float("inf"), -1):
        with pytest.raises(InputError):
            parse_size(bad)


def test_energy_api_checks_its_sram(files):
    from edgepack import runtime
    from edgepack.runtime.energy import estimate, load_for_sram
    from edgepack.runtime.loader import read_packed

    model = runtime.load(files["epk"])
    for bad in (float("inf"), -5, "lots", None):
        with pytest.raises(InputError):
            estimate(model, read_packed(files["epk"]), bad)
        with pytest.raises(InputError):
            load_for_sram(files["epk"], bad)
    assert estimate(model, read_packed(files["epk"]), "256KiB")["sram_bytes"] == 262144


def test_huge_input_shape_is_refused_before_allocating(files, tmp_path, capsys):
    argv = ["pack", files["onnx"], "-o", str(tmp_path / "m.epk"), "--input-shape", "x=100000000,64", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "input 'x' of shape [100000000, 64]" in err and "GiB" in err and "MemoryError" not in err


def test_shapeless_onnx_input_asks_for_its_shape(files, tmp_path, capsys):
    m = onnx.load(files["onnx"])
    m.graph.input[0].type.tensor_type.ClearField("shape")
    src = str(tmp_path / "noshape.onnx")
    onnx.save(m, src)
    out = str(tmp_path / "m.epk")
    assert main(["pack", src, "-o", out, "-q"]) == 2
    assert "input 'x' has no shape in the ONNX file (its rank is unknown); give it: --input-shape x=" \
        in capsys.readouterr().err
    assert main(["pack", src, "-o", out, "-q", "--input-shape", "x=3,64"]) == 0
    np.save(tmp_path / "x.npy", np.ones((3, 64), np.float32))
    assert main(["run", out, "--input", str(tmp_path / "x.npy"), "--repeat", "0"]) == 0
    assert "output y: float32[3, 10]" in capsys.readouterr().out


def test_api_failures_are_edgepack_errors(files, monkeypatch):
    """Issue 14 item 10: every documented failure of the API is one of the project's own errors, cause named."""
    from edgepack import runtime
    from edgepack.runtime.errors import BudgetError, EdgepackError

    model = runtime.load(files["epk"])
    # refused by the element cap of shape inference, or by the machine's memory (BudgetError)
    with pytest.raises(EdgepackError, match=r"1000000000000, 64"):
        model.plan_for((10**12, 64))
    with pytest.raises(EdgepackError, match=r"1000000000000, 64"):
        runtime.load(files["epk"], batch=10**12)
    with monkeypatch.context() as mp:  # under the element cap, over the machine's memory (made small here)
        mp.setattr(runtime.memory, "physical_bytes", lambda: 1 << 20)
        with pytest.raises(BudgetError, match=r"input shapes \{'x': \(10000, 64\)\} need .* more than this "
                                              r"machine's memory"):
            model.plan_for((10000, 64))
    assert model.plan_for((1000, 64)).arena_bytes > 0  # the model still works after a refused shape
    assert model.run(np.ones((2, 64), np.float32))["y"].shape == (2, 10)
    for modes, match in ((["dense"], "layer_modes must be a mode"), ("fast", "is not one of"),
                         ({"fc1": 3}, "layer_modes must be"), ({"nope": "dense"}, "not a weight-bearing layer")):
        with pytest.raises(InputError, match=match):
            runtime.load(files["epk"], layer_modes=modes)
    for budget in ("lots", [1], float("nan"), "-3k"):
        with pytest.raises(InputError):
            runtime.load(files["epk"], memory_budget=budget)
    data = open(files["epk"], "rb").read()
    for source in (np.frombuffer(data, np.uint8), io.BytesIO(data), 5, memoryview(data)[::2]):
        with pytest.raises(EdgepackError):
            runtime.load(source)


# ------------------------------------------------------------------------ item 13: messages that name the problem

def _graph_model(nodes, inputs, outputs, inits=()):
    from onnx import helper

    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_identity_only_graph_packs_loads_and_runs(tmp_path):
    """The packer keeps an Identity whose output copies a graph input; the runtime runs it (was: refused at load)."""
    from onnx import TensorProto, helper

    from edgepack import runtime
    from edgepack.packer.verify import session

    m = _graph_model([helper.make_node("Identity", ["x"], ["y"], name="id")],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    src = str(tmp_path / "id.onnx")
    onnx.save(m, src)
    pack(src, tmp_path / "id.epk")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    want = session(src).run(None, {"x": x})[0]
    model = runtime.load(str(tmp_path / "id.epk"))
    for _ in range(2):  # the planned (fast) path too
        got = model.run(x)["y"]
        assert np.array_equal(got, want) and got is not x


def test_nonfinite_weight_is_named(files, tmp_path):
    from onnx import numpy_helper

    m = onnx.load(files["onnx"])
    t = next(t for t in m.graph.initializer if t.name == "w2")
    a = numpy_helper.to_array(t).copy()
    a[1, 2], a[3, 3] = np.nan, np.inf
    t.CopyFrom(numpy_helper.from_array(a, "w2"))
    src = str(tmp_path / "nan.onnx")
    onnx.save(m, src)
    with pytest.raises(InputError, match=r"weight 'w2' holds 2 NaN/inf value\(s\) "
                                         r"\(the first at \(\d+, \d+\): (nan|inf)\)"):
        pack(src, tmp_path / "m.epk", check_fidelity=False)
    # kept dense, the file means what the model means, NaN included
    pack(src, tmp_path / "m.epk", check_fidelity=False, config={"layers": {"w2": {"encoding": "dense"}}})


def test_null_byte_in_a_model_path_is_named():
    from edgepack import runtime
    from edgepack.runtime.errors import FormatError

    with pytest.raises(FormatError, match="cannot contain a null byte"):
        runtime.load("a\0b.epk")


def test_run_fast_path_prints_no_numpy_warnings(files):
    import warnings

    from edgepack import runtime

    model = runtime.load(files["epk"])
    x = np.full((2, 64), 3e38, np.float32)  # finite, but the products overflow: IEEE inf/NaN as onnxruntime gives
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            y = model.run(x)["y"]
    assert not np.isfinite(y).all() and np.geterr() == before


def test_info_escapes_control_characters(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper

    bad = "w\x1b[2J\n\x07"
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), bad)
    m = _graph_model([helper.make_node("Gemm", ["x\x1b]0;t\x07", bad], ["y\r"], name="g", transB=1)],
                     [helper.make_tensor_value_info("x\x1b]0;t\x07", TensorProto.FLOAT, [2, 3])],
                     [helper.make_tensor_value_info("y\r", TensorProto.FLOAT, [2, 4])], [w])
    src = str(tmp_path / "ctrl.onnx")
    onnx.save(m, src)
    out = str(tmp_path / "ctrl.epk")
    assert main(["pack", src, "-o", out, "-q"]) == 0
    capsys.readouterr()
    assert main(["info", out]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text
    assert "x\\x1b]0;t\\x07" in text and "w\\x1b[2J\\n\\x07" in text and "y\\r" in text
    assert main(["info", out, "--budget", "1MiB"]) == 0  # the memory plan's table too
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    assert main(["run", out, "--input", str(tmp_path / "x.npy"), "--repeat", "0"]) == 0  # output names, plan
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "output y\\r: float32[2, 4]" in text


def test_input_shape_and_value_arguments_are_input_errors(files, tmp_path):
    for kwargs, match in (({"input_shapes": 5}, "input_shapes: expected"), ({"input_shapes": ["x"]}, "NAME=D0"),
                          ({"input_shapes": {"x": "abc"}}, "expected a list of dimensions"),
                          ({"input_shapes": {"nope": [1, 64]}}, "not an input of the model"),
                          ({"input_values": 5}, "input_values: expected"),
                          ({"input_shapes": {"x": [1, 64]}, "input_values": {"x": [1, 2]}}, "2 value")):
        with pytest.raises(InputError, match=match):
            pack(files["onnx"], tmp_path / "m.epk", check_fidelity=False, **kwargs)


@pytest.mark.parametrize("shape,match", [((3, 5), r"dimension 1 is 5, the model declares \['N', 64\]"),
                                         ((3,), "has rank 1"), ((2, 3, 4, 64), "has rank 4")])
def test_calib_of_the_wrong_shape_names_the_dimension(files, tmp_path, capsys, shape, match):
    """A dynamic first dimension and a wrong second one was a TypeError inside the check (issue 14 item 8)."""
    p = tmp_path / "c.npy"
    np.save(p, np.ones(shape, np.float32))
    assert main(["pack", files["onnx"], "-o", str(tmp_path / "m.epk"), "--calib", str(p), "-q"]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and "Traceback" not in err


def test_fuzz_findings_of_the_array_reader(tmp_path):
    """fuzz/fuzz_config.py: numpy's header parser raised tokenize.TokenError on an unbalanced header, and zipfile an
    IndexError on a member without a name."""
    p = tmp_path / "t.npy"
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,".ljust(69) + b"\n"
    p.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(8))
    with pytest.raises(InputError, match="not a readable .npy array"):
        read_arrays(p)
    z = tmp_path / "e.npz"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr(zipfile.ZipInfo(""), b"abc")
        f.writestr("x.npy", _npy(np.arange(3)))
    assert list(read_arrays(z)) == ["x"]
