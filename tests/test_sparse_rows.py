"""The compact "rows" form of a sparse Gemm weight W (n, k) (runtime/ops/linear.py's _sparse_row_tiles_kernel) as the
planner offers and holds it: an option of its own with the bytes it builds, chosen where the cost model says it is
faster (a batch of rows), not at batch 1, and the memory plan reports the form held; outputs against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgepack import runtime
from edgepack.packer.pipeline import pack
from edgepack.runtime.layers import split_bytes


def _one_gemm_model(path, batch, n, k):
    import onnx

    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, k)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="fc")
    relu = helper.make_node("Relu", ["y"], ["z"], name="relu")
    graph = helper.make_graph(
        [node, relu], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel().tolist()),
         helper.make_tensor("b", TensorProto.FLOAT, [n], rng.standard_normal(n).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("batch, rows_form", [(22, True), (1, False)])
def test_planner_holds_sparse_gemm_in_rows_form(tmp_path, batch, rows_form):
    import onnxruntime as ort

    src, out = tmp_path / "one.onnx", tmp_path / "one.epk"
    n, k = 600, 700
    _one_gemm_model(src, batch, n, k)
    pack(str(src), str(out), sparsity=0.7, bits=8)
    model = runtime.load(str(out), threads=1)
    row = next(r for r in model.plan.layers if r.name == "fc")
    by = {(o.mode, o.form): o for o in row.options}
    rows, csc = by[("compact", "rows")], by[("compact", "")]
    layer = model.layers["fc"]
    if rows_form:
        assert rows.seconds < min(o.seconds for key, o in by.items() if key != ("compact", "rows"))
        assert (layer.mode, layer.form, layer.prepared.kind) == ("compact", "rows", "sparse_rows")
        # the memory plan counts what the layer holds and the kernel's scratch at the plan's shapes
        a = layer.prepared.arrays
        held = a["bptr"].nbytes + a["cols"].nbytes + a["codes"].nbytes  # made at load (the codebook: the file's)
        assert held <= rows.ram_bytes <= held + split_bytes([layer.bias, a["codebook"]], None)[0] + 64
        assert (row.ram_bytes, row.mapped_bytes, row.note) == (rows.ram_bytes, rows.mapped_bytes, rows.note)
        assert row.scratch_bytes == rows.scratch_bytes == 4 * 24 * (n + k)  # one tile of 24 lanes
    else:
        assert csc.seconds < rows.seconds and layer.form == "" and layer.prepared.kind != "sparse_rows"
    assert abs(rows.ram_bytes + rows.mapped_bytes - (csc.ram_bytes + csc.mapped_bytes)) < 0.1 * csc.ram_bytes
    x = np.random.default_rng(3).standard_normal((batch, k)).astype(np.float32)
    got = model.run({"x": x})["z"]
    # the reference: onnxruntime on the packed weights decoded back to float32
    from edgepack.packer.unpack import unpack

    dec = tmp_path / "dec.onnx"
    unpack(str(out), str(dec))
    ref = ort.InferenceSession(str(dec), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
