"""Weight encoding (packer/encode.py): dense-and-sparse codebooks (LayerSettings.outliers), the largest weights kept
exact as codebook entries of their own: which weights, that they decode exactly, that the rest is quantised as
without them, with and without error compensation, per-row scales and float16 codebooks, the settings' checks, the
allocation's options, and a packed file that the runtime runs like onnxruntime runs its unpacked twin."""
from __future__ import annotations

import numpy as np
import pytest

import zoo
from edgepack.packer import cluster
from edgepack.packer.calibration import LayerStats
from edgepack.packer.compensate import output_error
from edgepack.packer.encode import LayerSettings, encode_weight, outlier_mask
from edgepack.runtime import constants as C
from edgepack.runtime.errors import InputError


def _heavy(rows=48, cols=160, seed=0) -> np.ndarray:
    """Gaussian weights with a strong diagonal (PP-OCRv4 rec's 480x480 1x1 conv has one at 172 std)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[np.arange(rows), np.arange(rows)] += rng.choice([-1, 1], rows) * rng.uniform(20, 60, rows)
    return w


def test_outlier_mask_takes_the_largest():
    w = np.array([[0.5, -9.0, 1.0], [3.0, 9.0, -0.1]], np.float32)
    m = outlier_mask(w, 2 / 6, 4)
    assert m.tolist() == [[False, True, False], [False, True, False]]  # |-9| and |9|: the first in order first
    assert outlier_mask(w, 0.1, 4).tolist() == [[False, True, False], [False] * 3]  # round(0.6) = 1: one
    assert outlier_mask(w, 0.05, 4) is None  # round(0.3) = 0: none
    big = np.random.default_rng(0).standard_normal(200_000).astype(np.float32)
    m = outlier_mask(big, 0.05, 4)  # 10,000 asked, the alphabet leaves room for 4096 - 16
    assert m.sum() == (1 << C.MAX_CODE_BITS) - 16
    assert np.abs(big[m]).min() >= np.abs(big[~m]).max()


@pytest.mark.parametrize("bits", [3, 5])
@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
def test_outliers_decode_exactly_and_the_rest_as_without_them(bits, codebook_dtype):
    w = _heavy()
    s = LayerSettings(bits=bits, outliers=0.01, codebook_dtype=codebook_dtype, channel_scales=False)
    e = encode_weight(w, s, 8)
    exact = outlier_mask(w, 0.01, bits)
    assert exact.sum() == round(0.01 * w.size)
    assert e.encoding["type"] == C.ENC_CODEBOOK and e.encoding["k"] == (1 << bits) + exact.sum()
    # the rest: the outliers at 0, clustered without them, each element at its nearest centroid
    rest = np.where(exact, 0, w).astype(np.float32)
    cb, codes = cluster.quantize(rest, ~exact, bits, reserve_zero=False)
    if codebook_dtype == "float16":
        cb = cb.astype(np.float16).astype(np.float32)
    want = cb[codes]
    assert np.array_equal(e.reference[~exact], want[~exact])
    # an outlier decodes to itself plus the rest's value there (the centroid nearest 0), in the codebook's precision
    tol = 1e-6 if codebook_dtype == "float32" else 1e-3
    np.testing.assert_allclose(e.reference[exact], w[exact] + want[exact], rtol=tol)
    plain = encode_weight(w, LayerSettings(bits=bits, codebook_dtype=codebook_dtype, channel_scales=False), 8)
    assert np.linalg.norm(e.reference - w) < 0.7 * np.linalg.norm(plain.reference - w)
    assert e.encoding["codes"]["coding"] == C.CODING_HUFFMAN  # rare codes: the Huffman stream is the smaller


def test_outliers_with_compensation_lower_the_output_error():
    rng = np.random.default_rng(3)
    w = _heavy(seed=3)
    x = rng.standard_normal((400, 40)) @ rng.standard_normal((40, w.shape[1]))
    st = LayerStats(h=x.T @ x, samples=400)
    errs = {}
    for o in (0.0, 0.005):
        e = encode_weight(w, LayerSettings(bits=4, outliers=o), 8, stats=st)
        errs[o] = output_error(w, e.reference, st.h)
        if o:
            exact = outlier_mask(w, o, 4)
            assert e.encoding["k"] == 16 + exact.sum()
    assert errs[0.005] < 0.6 * errs[0.0]


def test_outliers_with_row_scales_and_a_row_of_outliers_only():
    w = _heavy(rows=8, cols=64)
    w[3] = 0.0
    w[3, 5] = 80.0  # a row whose only weight is an outlier: its row scale would be 0
    e = encode_weight(w, LayerSettings(bits=4, outliers=0.01, channel_scales=True), 8)
    assert "row_scales" not in e.encoding  # no scale can undo 0: scales are left out
    assert abs(e.reference[3, 5] - 80.0) < 0.5 and np.isfinite(e.reference).all()
    w2 = _heavy(rows=8, cols=64) * np.exp(np.arange(8))[:, None].astype(np.float32)
    e2 = encode_weight(w2, LayerSettings(bits=4, outliers=0.01, channel_scales=True), 8)
    assert "row_scales" in e2.encoding
    exact = outlier_mask(w2, 0.01, 4)
    np.testing.assert_allclose(e2.reference[exact], w2[exact], rtol=0.02)


@pytest.mark.parametrize("bad", [-0.1, 0.5, "0.01", True, float("nan")])
def test_outliers_setting_is_checked(bad):
    with pytest.raises(InputError, match="outliers"):
        LayerSettings.from_dict({"outliers": bad}, "config")


def test_pruned_tensors_take_no_outliers():
    w = _heavy()
    e = encode_weight(w, LayerSettings(bits=4, sparsity=0.5, outliers=0.01, encoding="sparse_codebook"), 8)
    assert e.encoding["k"] <= 16


def test_packed_with_outliers_runs_as_onnxruntime_runs_the_unpacked_file(tmp_path):
    from edgepack import runtime
    from edgepack.packer.pipeline import pack
    from edgepack.packer.unpack import unpack
    from edgepack.packer.verify import session
    from edgepack.runtime.loader import read_packed

    src = zoo.save(zoo.mlp(seed=2, sizes=(96, 128, 64, 10)), tmp_path / "m.onnx")
    r = pack(src, tmp_path / "o.epk", config={"default": {"bits": 3, "outliers": 0.02}}, check_fidelity=False)
    plain = pack(src, tmp_path / "p.epk", config={"default": {"bits": 3}}, check_fidelity=False)
    held = read_packed(r.path).weights["w1"]
    assert held.codebook.size == 8 + round(0.02 * 96 * 128)  # in the file: the outliers' own entries
    x = np.random.default_rng(0).standard_normal((5, 96)).astype(np.float32)
    unpack(r.path, tmp_path / "u.onnx")
    want = session(str(tmp_path / "u.onnx")).run(None, {"x": x})[0]
    got = runtime.load(r.path).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    modes = set()
    for budget in (21_000, 24_000, 30_000, 80_000):  # streamed (Huffman decoded on the fly), compact codes, dense
        m = runtime.load(r.path, memory_budget=budget)
        modes |= set(m.plan.modes().values())
        np.testing.assert_allclose(m.run({"x": x[:1]})["y"], want[:1], rtol=1e-5, atol=1e-6)
    assert {"streamed", "compact", "dense"} <= modes
    ref = session(str(src)).run(None, {"x": x})[0]
    plain_out = runtime.load(plain.path).run({"x": x})["y"]
    assert np.linalg.norm(got - ref) < np.linalg.norm(plain_out - ref)
    assert r.total_bytes > plain.total_bytes


def test_allocation_labels_outlier_options():
    from edgepack.packer.allocate import Option
    from edgepack.packer.encode import Encoded

    s = LayerSettings(bits=4, outliers=0.002)
    assert Option(4, Encoded({"type": "codebook"}, np.zeros(1, np.float32), 1), 0.1, s).label == "4+0.2%"


def test_coarse_rows_take_the_grid_and_the_rest_the_centroids():
    """LayerSettings.coarse_rows with statistics naming minor rows: those rows decode to j / 2 x their row max
    (j = -2..2, entries appended after the 2**bits centroids), the other rows use only the centroids, both with
    compensated codes; the file is smaller than without; without such rows (or statistics) it is the plain code."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    x = rng.standard_normal((300, 40))
    minor = np.ones(96, bool)
    minor[:12] = False
    st = LayerStats(x.T @ x, 300, minor_rows=minor)
    s = LayerSettings(bits=4, channel_scales=True, coarse_rows=2)
    e = encode_weight(w, s, 8, st)
    plain = encode_weight(w, LayerSettings(bits=4, channel_scales=True), 8, st)
    assert e.encoding["k"] == 16 + 5 and e.nbytes < plain.nbytes
    scale = np.abs(w).max(1)
    grid = e.reference[minor] / scale[minor, None] * 2
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-5)
    assert np.abs(grid).max() <= 2 + 1e-5
    cb = e.encoding["codebook"].astype(np.float32)
    major = e.reference[~minor] / scale[~minor, None]
    assert np.abs(major[..., None] - cb[:16]).min(-1).max() < 1e-6  # only the k-means centroids
    assert output_error(w[~minor], e.reference[~minor], x.T @ x) < 0.2
    none = LayerStats(x.T @ x, 300)
    for stats in (none, None):
        a = encode_weight(w, s, 8, stats)
        b = encode_weight(w, LayerSettings(bits=4, channel_scales=True), 8, stats)
        assert a.nbytes == b.nbytes and np.array_equal(a.reference, b.reference)


def test_coarse_classes_of_a_matmul_weight_are_its_columns():
    """A MatMul head stored (in, out) (LayerStats.transpose, PP-OCRv4 rec's (120, 6625)): minor_rows indexes the
    columns (the statistics' rows); those columns decode to j / 2 x their input row's max |w| (the format scales
    rows only), the other columns use only the k-means centroids; the codes are compensated per class (a class's
    output error far below the nearest grid point's); the file is smaller than without. A mask of the wrong length
    (the tensor's rows) leaves the plain code."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((40, 96)).astype(np.float32)
    x = rng.standard_normal((300, 8)) @ rng.standard_normal((8, 40)) + 0.3 * rng.standard_normal((300, 40))
    h = x.T @ x / 300
    minor = np.ones(96, bool)
    minor[:12] = False
    st = LayerStats(h, 300, transpose=True, minor_rows=minor)
    s = LayerSettings(bits=4, channel_scales=True, coarse_rows=2)
    e = encode_weight(w, s, 8, st)
    plain = encode_weight(w, LayerSettings(bits=4, channel_scales=True), 8, st)
    assert e.encoding["k"] == 16 + 5 and e.nbytes < plain.nbytes
    scale = np.abs(w).max(1)
    np.testing.assert_array_equal(e.encoding["row_scales"], scale)
    grid = e.reference[:, minor] / scale[:, None] * 2
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-5)
    assert np.abs(grid).max() <= 2 + 1e-5 and len(np.unique(np.round(grid))) == 5
    cb = e.encoding["codebook"].astype(np.float32)
    major = e.reference[:, ~minor] / scale[:, None]
    assert np.abs(major[..., None] - cb[:16]).min(-1).max() < 1e-6  # only the k-means centroids
    nearest = np.round(w[:, minor] / scale[:, None] * 2) / 2 * scale[:, None]
    assert output_error(w[:, minor].T, e.reference[:, minor].T, h) < 0.7 * output_error(w[:, minor].T, nearest.T, h)
    assert output_error(w[:, ~minor].T, e.reference[:, ~minor].T, h) < 0.2
    rows_mask = LayerStats(h, 300, transpose=True, minor_rows=np.ones(40, bool) & (np.arange(40) > 3))
    a = encode_weight(w, s, 8, rows_mask)
    assert a.nbytes == plain.nbytes and np.array_equal(a.reference, plain.reference)


@pytest.mark.parametrize("transpose", [False, True])
def test_drop_minor_prunes_the_minor_classes(transpose):
    """LayerSettings.drop_minor: the minor classes (a Gemm's rows; a MatMul's columns, transpose) decode to 0, in a
    sparse_codebook far smaller than the plain code; the other classes keep the plain code's output error; it takes
    precedence over coarse_rows; without minor classes in the statistics it is the plain code."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    x = rng.standard_normal((300, 40))
    h = x.T @ x / 300
    minor = np.ones(96, bool)
    minor[:12] = False
    wt = w.T.copy() if transpose else w
    st = LayerStats(h, 300, transpose=transpose, minor_rows=minor)
    s = LayerSettings(bits=5, drop_minor=True)
    e = encode_weight(wt, s, 8, st)
    plain = encode_weight(wt, LayerSettings(bits=5), 8, st)
    ref = e.reference.T if transpose else e.reference
    assert e.encoding["type"] == C.ENC_SPARSE and not ref[minor].any() and e.nbytes < 0.3 * plain.nbytes
    ref_plain = plain.reference.T if transpose else plain.reference
    assert output_error(w[~minor], ref[~minor], h) < 1.5 * output_error(w[~minor], ref_plain[~minor], h) + 1e-3
    both = encode_weight(wt, LayerSettings(bits=5, drop_minor=True, coarse_rows=2), 8, st)
    assert np.array_equal(both.reference, e.reference)
    a = encode_weight(wt, s, 8, LayerStats(h, 300, transpose=transpose))
    assert a.nbytes == plain.nbytes and np.array_equal(a.reference, plain.reference)


@pytest.mark.parametrize("bad", [-1, 9, 1.5, True])
def test_coarse_rows_setting_is_checked(bad):
    with pytest.raises(InputError, match="coarse_rows"):
        LayerSettings.from_dict({"coarse_rows": bad}, "layers.w")


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_drop_minor_setting_is_checked(bad):
    with pytest.raises(InputError, match="drop_minor must be true or false"):
        LayerSettings.from_dict({"drop_minor": bad}, "layers.w")
