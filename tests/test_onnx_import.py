"""ONNX import edge cases: external data that escapes the model folder, malformed files, unsupported constructs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import zoo
from edgepack.packer.onnx_io import load_onnx
from edgepack.packer.pipeline import pack
from edgepack.runtime.errors import FormatError, UnsupportedError


def _external_model(tmp_path, location):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", location
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sub" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "a/../../secret.bin"])
def test_external_data_outside_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    path = _external_model(tmp_path, location)
    with pytest.raises(FormatError, match="outside the model's folder"):
        load_onnx(path)
    assert not list(tmp_path.glob("*.epk"))


def test_external_data_inside_folder_is_read(tmp_path):
    path = _external_model(tmp_path, "w.bin")
    (path.parent / "w.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    g = load_onnx(path)
    np.testing.assert_array_equal(g.initializers["w"].T.reshape(-1), np.arange(16, dtype=np.float32))


@pytest.mark.parametrize("payload", [b"", b"garbage", b"\x08\x07" * 100])
def test_malformed_onnx_is_refused(tmp_path, payload):
    p = tmp_path / "bad.onnx"
    p.write_bytes(payload)
    with pytest.raises((FormatError, UnsupportedError)):
        pack(p, tmp_path / "out.epk")
    assert not (tmp_path / "out.epk").exists()
    assert not [f for f in tmp_path.iterdir() if f.name.startswith("out.epk")]


def test_custom_domain_is_unsupported(tmp_path):
    g = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="com.example")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(UnsupportedError, match="Foo"):
        load_onnx(p)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    """A write that fails midway (a full disk) leaves neither the output nor a temporary file."""
    import edgepack.packer.writer as writer

    src = zoo.save(zoo.mlp(), tmp_path / "m.onnx")
    real_fsync = writer.os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(writer.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        pack(src, tmp_path / "out.epk")
    monkeypatch.setattr(writer.os, "fsync", real_fsync)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.onnx"]


def test_killed_packer_leaves_no_file_or_a_valid_one(tmp_path):
    """SIGKILL at several points of `edgepack pack`: the output path holds nothing or a complete, valid file.
    (A temporary file may stay behind after SIGKILL: nothing can remove it then; it never has the output's name.)"""
    import signal
    import subprocess
    import sys
    import time

    from edgepack.runtime.loader import read_packed

    src = zoo.save(zoo.mlp(sizes=(784, 300, 100, 10)), tmp_path / "m.onnx")
    out = tmp_path / "m.epk"
    outcomes = set()
    for delay in (0.3, 0.8, 1.2, 1.6, 2.0, 2.5, 30.0):
        if out.exists():
            out.unlink()
        p = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "pack", src, "-o", str(out), "-q",
                              "--sparsity", "0.9"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < delay:
            time.sleep(0.02)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():
            read_packed(out)  # complete and valid
            outcomes.add("file")
        else:
            outcomes.add("none")
    assert "file" in outcomes  # the last run had time to finish


# ---------------------------------------------------------------- dynamic dimensions written as -1

def _neg_dim_model():
    """paddle2onnx writes a dynamic dimension as dim_value -1 (no dim_param)."""
    w = numpy_helper.from_array((np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) - 12) / 10, "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                           helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2, -1, -1])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_negative_dim_value_is_dynamic(tmp_path):
    from edgepack.packer.onnx_io import from_onnx
    from edgepack.packer.shapes import specialise

    g = from_onnx(_neg_dim_model())
    assert g.inputs[0].shape == ["x_dim0", 3, "x_dim2", "x_dim3"] and g.outputs[0].shape[1] == 2
    assert specialise(g, {"x": [1, 3, 5, 6]}).inputs[0].shape == [1, 3, 5, 6]
    src = tmp_path / "neg.onnx"
    src.write_bytes(_neg_dim_model().SerializeToString())
    pack(src, tmp_path / "a.epk")  # without shapes: numpy's "negative dimensions are not allowed" before
    pack(src, tmp_path / "b.epk", input_shapes={"x": [1, 3, 5, 6]})


def test_real_ppocr_cls_with_minus_one_dims():
    from realmodels.corpus import fetch

    from edgepack.packer.shapes import check_storable, specialise

    path = fetch("ppocr_cls")
    declared = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert declared[0].dim_value == -1
    g = load_onnx(path)
    assert [isinstance(d, str) for d in g.inputs[0].shape] == [True, False, True, True]
    s = specialise(g, {"x": [1, 3, 48, 192]})  # was: "dimension 0 = 1, but the model fixes it to -1"
    check_storable(s)
    assert s.inputs[0].shape == [1, 3, 48, 192] and "Shape" not in [n.op for n in s.nodes]


# ---------------------------------------------------------------- 0-d constants stay 0-d

def test_scalar_index_gather_keeps_its_rank_through_file_and_runtime(tmp_path):
    """A Gather with a 0-d index removes its axis; a 0-d constant read back as shape (1,) would keep it, and
    runtime.load refused the file the packer had just written."""
    from edgepack import runtime
    from edgepack.packer.unpack import packed_to_graph
    from edgepack.packer.verify import session
    from edgepack.runtime.loader import dense_weights, read_packed

    g = helper.make_graph([helper.make_node("Gather", ["x", "i"], ["g"], axis=1, name="gather"),
                           helper.make_node("Mul", ["g", "k"], ["y"], name="scale")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                          [numpy_helper.from_array(np.array(1, np.int64), "i"),
                           numpy_helper.from_array(np.float32(3.0), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = tmp_path / "g.onnx"
    src.write_bytes(m.SerializeToString())
    pack(src, tmp_path / "g.epk")
    assert {k: v.shape for k, v in dense_weights(read_packed(tmp_path / "g.epk")).items()} == {"i": (), "k": ()}
    assert {k: v.shape for k, v in packed_to_graph(tmp_path / "g.epk").initializers.items()} == {"i": (), "k": ()}
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    got = runtime.load(tmp_path / "g.epk").run({"x": x})["y"]
    want = session(m).run(None, {"x": x})[0]
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_external_data_inside_an_if_branch_outside_folder_is_refused(tmp_path):
    """Body graphs are searched too: a branch's tensor may not read a file outside the model's folder either."""
    (tmp_path / "secret.bin").write_bytes(np.ones(16, np.float32).tobytes())
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    entry = w.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    then_g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])], [w])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sub" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(m.SerializeToString())
    with pytest.raises(FormatError, match="tensor 'w' has external data '../secret.bin' outside the model's folder"):
        load_onnx(path)
