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


def _matches_unpacked(model, out, batch: int, k: int, tmp_path) -> None:
    """The runtime on the packed file against onnxruntime on its weights decoded back to float32."""
    import onnxruntime as ort

    from edgepack.packer.unpack import unpack

    x = np.random.default_rng(3).standard_normal((batch, k)).astype(np.float32)
    got = model.run({"x": x})["z"]
    dec = tmp_path / "dec.onnx"
    unpack(str(out), str(dec))
    ref = ort.InferenceSession(str(dec), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("batch, rows_form", [(22, True), (1, False)])
def test_planner_holds_sparse_gemm_in_rows_form(tmp_path, batch, rows_form):
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
    _matches_unpacked(model, out, batch, k, tmp_path)


# ---- the dense-code weight's rows form (linear.py's _dense_row_tiles_kernel) ----

def _codebook_weight(rng, n, k, dtype, scales):
    from edgepack.runtime.weights import CodebookWeight

    levels = 256 if dtype == np.uint8 else 300
    codebook = rng.standard_normal(levels).astype(np.float32)
    codes = rng.integers(0, levels, (n, k)).astype(dtype)
    row_scales = rng.uniform(0.5, 2.0, n).astype(np.float32) if scales else None
    return CodebookWeight((n, k), codebook, codes, row_scales)


@pytest.mark.parametrize("batch", [1, 3, 22, 24, 25, 57])
@pytest.mark.parametrize("n, k, dtype, scales", [(37, 50, np.uint8, False), (64, 129, np.uint16, True),
                                                 (5, 1, np.uint8, True)])
def test_codebook_rows_kernel_matches_numpy(batch, n, k, dtype, scales):
    from edgepack.runtime.ops import linear as L
    from edgepack.runtime.ops.elementwise import ACT_CLIP

    rng = np.random.default_rng(batch * 1000 + n)
    w = _codebook_weight(rng, n, k, dtype, scales)
    p = L.prepare_linear(w, True, "rows")
    assert p.kind == "codebook_rows" and p.arrays["codes"].base is not None  # the codes as held, not copied
    x = rng.standard_normal((batch, k)).astype(np.float32)
    x[:, ::3] = 0.0
    bias = rng.standard_normal(n).astype(np.float32)
    ref = 0.5 * (x.astype(np.float64) @ w.to_dense().astype(np.float64).T) + 2.0 * bias
    out = np.full((batch, n), np.nan, np.float32)
    L.linear(x, p, bias, 0.5, 2.0, out)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # a fused clip, no bias; scratch of exactly the size asked for
    scratch = np.empty(L.linear_scratch_bytes(batch, p), np.uint8)
    L.linear(x, p, None, 1.0, 0.0, out, scratch, act=(ACT_CLIP, -1.0, 1.0))
    np.testing.assert_allclose(out, np.clip(ref - 2.0 * bias, -0.5, 0.5) * 2.0, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_codebook_rows_kernel_is_exact_in_k_order():
    """Every output is its k terms summed in order with one fused multiply-add each, whatever the other lanes
    hold: a sample gives the same bits alone or in a batch, and as a float32 weight holding the decoded values."""
    from edgepack.runtime.ops import linear as L

    rng = np.random.default_rng(7)
    n, k = 9, 300
    w = _codebook_weight(rng, n, k, np.uint8, False)
    p = L.prepare_linear(w, True, "rows")
    x = rng.standard_normal((30, k)).astype(np.float32)
    batch = L.linear(x, p, None, 1.0, 0.0, np.empty((30, n), np.float32))
    for b in (0, 23, 29):
        alone = L.linear(x[b:b + 1].copy(), p, None, 1.0, 0.0, np.empty((1, n), np.float32))
        assert np.array_equal(alone[0], batch[b])
    dense = w.to_dense()
    # the kernel on the decoded float32 rows (simd_rows.dense_fma's float32 weights): the same bits
    from edgepack.runtime.ops.elementwise import epilogue

    f32 = np.empty((30, n), np.float32)
    empty = np.zeros(0, np.float32)
    L._dense_row_tiles_kernel(x, dense.reshape(-1), empty, empty, empty, epilogue(None, 1.0, 0.0), f32,
                              np.empty(32 * k, np.float32), np.empty(32 * 4, np.float32))
    assert np.array_equal(f32, batch)
    acc = np.zeros((30, n), np.float32)
    for i in range(k):  # float32 products rounded then added would differ in the last bit; fma: within 1 ulp of it
        acc = (acc.astype(np.float64) + x[:, i:i + 1].astype(np.float64) * dense[:, i]).astype(np.float32)
    np.testing.assert_allclose(batch, acc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch, rows_form", [(22, True), (1, False)])
def test_planner_holds_dense_code_gemm_in_rows_form(tmp_path, batch, rows_form):
    """A Gemm packed without pruning (dense codes): at a batch of rows the planner holds the codes in the rows
    form (a quarter of float32's bytes) where it held a float32 copy, at batch 1 not."""
    src, out = tmp_path / "one.onnx", tmp_path / "one.epk"
    n, k = 1030, 700
    _one_gemm_model(src, batch, n, k)
    pack(str(src), str(out), sparsity=0.0, bits=8)
    model = runtime.load(str(out), threads=1)
    row = next(r for r in model.plan.layers if r.name == "fc")
    by = {(o.mode, o.form): o for o in row.options}
    layer = model.layers["fc"]
    if rows_form:
        rows = by[("compact", "rows")]
        assert rows.seconds < min(o.seconds for key, o in by.items() if key != ("compact", "rows"))
        assert (layer.mode, layer.form, layer.prepared.kind) == ("compact", "rows", "codebook_rows")
        assert rows.ram_bytes + rows.mapped_bytes < 0.3 * by[("dense", "")].ram_bytes
        assert row.scratch_bytes == rows.scratch_bytes == 4 * 24 * (k + 4)
    else:
        assert layer.prepared.kind != "codebook_rows"
    _matches_unpacked(model, out, batch, k, tmp_path)
