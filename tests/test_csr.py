"""Tests for packer/csr.py (gaps + fillers) and runtime/sparse.py (validation, gaps -> columns, dense decode)."""
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgepack.packer.cluster import choose_row_scales, dequantize, quantize
from edgepack.packer.csr import choose_gap_bits, cost_bits, encode
from edgepack.runtime.errors import FormatError
from edgepack.runtime.sparse import check_codes, check_indptr, csr_to_dense, gaps_to_columns


def _reference_encode(keep, codes, gap_bits):
    """Entry by entry, in plain Python, straight from the format rule."""
    g_max = 2**gap_bits - 1
    indptr, gaps, entry_codes = [0], [], []
    for r in range(keep.shape[0]):
        prev = -1
        for c in range(keep.shape[1]):
            if keep[r, c]:
                while c - prev - 1 > g_max:
                    prev += g_max + 1
                    gaps.append(g_max)
                    entry_codes.append(0)
                gaps.append(c - prev - 1)
                entry_codes.append(int(codes[r, c]))
                prev = c
        indptr.append(len(gaps))
    return indptr, gaps, entry_codes


def _one_row(cols, kept_columns, code=5):
    keep = np.zeros((1, cols), bool)
    keep[0, kept_columns] = True
    return keep, np.where(keep, code, 0).astype(np.uint8)


def _columns(keep, codes, gap_bits):
    indptr, gaps, _ = encode(keep, codes, gap_bits)
    return gaps_to_columns(indptr, gaps, keep.shape[1], "t").tolist()


def test_gap_exactly_at_bound_needs_no_filler():
    keep, codes = _one_row(8, [3])
    indptr, gaps, entry_codes = encode(keep, codes, 2)  # G = 3
    assert indptr.tolist() == [0, 1] and gaps.tolist() == [3] and entry_codes.tolist() == [5]
    assert _columns(keep, codes, 2) == [3]


def test_gap_one_above_bound_needs_one_filler():
    keep, codes = _one_row(8, [4])
    indptr, gaps, entry_codes = encode(keep, codes, 2)
    assert indptr.tolist() == [0, 2] and gaps.tolist() == [3, 0] and entry_codes.tolist() == [0, 5]
    assert _columns(keep, codes, 2) == [3, 4]


def test_several_fillers_in_a_row():
    keep, codes = _one_row(20, [11, 19])
    indptr, gaps, entry_codes = encode(keep, codes, 2)
    # 11: fillers at 3 and 7, then gap 3; 19: gap 7 -> filler at 15, then gap 3.
    assert gaps.tolist() == [3, 3, 3, 3, 3] and entry_codes.tolist() == [0, 0, 5, 0, 5]
    assert indptr.tolist() == [0, 5]
    assert _columns(keep, codes, 2) == [3, 7, 11, 15, 19]
    indptr, gaps, entry_codes = encode(keep, codes, 1)  # G = 1: a filler every 2 columns
    assert entry_codes.tolist() == [0] * 5 + [5] + [0] * 3 + [5] and gaps.tolist() == [1] * 5 + [1] + [1] * 3 + [1]


def test_no_filler_after_last_entry_and_empty_rows():
    keep = np.zeros((4, 30), bool)
    keep[0, 1] = keep[3, 0] = keep[3, 2] = True
    codes = np.where(keep, 1, 0).astype(np.uint8)
    indptr, gaps, entry_codes = encode(keep, codes, 3)
    assert indptr.tolist() == [0, 1, 1, 1, 3]
    assert gaps.tolist() == [1, 0, 1] and entry_codes.tolist() == [1, 1, 1]


def test_all_zero_layer():
    keep = np.zeros((5, 7), bool)
    indptr, gaps, entry_codes = encode(keep, np.zeros((5, 7), np.uint8), 4)
    assert indptr.dtype == np.uint32 and indptr.tolist() == [0] * 6
    assert gaps.size == 0 and entry_codes.size == 0
    assert cost_bits(keep, 4, 5) == 0 and choose_gap_bits(keep, 5) == 1
    cols = gaps_to_columns(indptr, gaps, 7, "t")
    dense = csr_to_dense(indptr, cols, entry_codes, np.float32([0.0, 1.0]), 5, 7)
    assert dense.shape == (5, 7) and not dense.any()


def test_fully_dense_layer():
    keep = np.ones((3, 6), bool)
    codes = np.arange(1, 19, dtype=np.uint16).reshape(3, 6)
    indptr, gaps, entry_codes = encode(keep, codes, 1)
    assert indptr.tolist() == [0, 6, 12, 18] and not gaps.any()
    assert entry_codes.dtype == np.uint16 and entry_codes.tolist() == list(range(1, 19))
    assert cost_bits(keep, 1, 4) == 18 * 5


def test_dtypes():
    keep, codes = _one_row(300, [299])
    assert encode(keep, codes, 8)[1].dtype == np.uint8
    indptr, gaps, _ = encode(keep, codes, 9)
    assert gaps.dtype == np.uint16 and gaps.tolist() == [299] and indptr.dtype == np.uint32


def test_kept_entry_with_code_zero_is_rejected():
    keep = np.zeros((3, 4), bool)
    keep[1, 2] = keep[2, 0] = True
    codes = np.zeros((3, 4), np.uint8)
    codes[2, 0] = 3
    with pytest.raises(ValueError, match=r"row 1, column 2 has code 0, expected >= 1"):
        encode(keep, codes, 4)


def test_choose_gap_bits_ties_go_to_smaller_width():
    keep, _ = _one_row(10, [4])  # code_bits 1: width 1 -> 3 entries x 2 bits, width 2 -> 2 entries x 3 bits
    assert cost_bits(keep, 1, 1) == cost_bits(keep, 2, 1) == 6
    assert choose_gap_bits(keep, 1, candidates=[2, 1]) == 1
    assert choose_gap_bits(keep, 1) == 3  # 1 entry x 4 bits


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(1, 70),
    density=st.floats(0.0, 1.0),
    gap_bits=st.integers(1, 8),
    code_bits=st.integers(1, 8),
    scaled=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_round_trip(rows, cols, density, gap_bits, code_bits, scaled, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(rows, cols)).astype(np.float32)
    keep = rng.random((rows, cols)) < density
    scales = choose_row_scales(np.where(keep, w, 0)) if scaled else None
    codebook, codes = quantize(w, keep, code_bits, reserve_zero=True, row_scales=scales)

    indptr, gaps, entry_codes = encode(keep, codes, gap_bits)
    ref_indptr, ref_gaps, ref_codes = _reference_encode(keep, codes, gap_bits)
    assert indptr.tolist() == ref_indptr and gaps.tolist() == ref_gaps and entry_codes.tolist() == ref_codes
    assert cost_bits(keep, gap_bits, code_bits) == len(ref_gaps) * (gap_bits + code_bits)
    costs = {g: len(_reference_encode(keep, codes, g)[1]) * (g + code_bits) for g in range(1, 9)}
    assert choose_gap_bits(keep, code_bits) == min(costs, key=lambda g: (costs[g], g))

    check_indptr(indptr, rows, gaps.size, "t")
    check_codes(entry_codes, codebook.size, "t")
    columns = gaps_to_columns(indptr, gaps, cols, "t")
    assert columns.dtype == np.int32
    dense = csr_to_dense(indptr, columns, entry_codes, codebook, rows, cols, scales)
    expected = dequantize(codebook, codes * keep, scales)
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(dense, expected)


# --- runtime/sparse.py rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "indptr, rows, n, message",
    [
        ([0, 2, 3], 3, 3, "fc1: indptr has 3 values, expected rows + 1 = 4"),
        ([1, 2, 3], 2, 3, "fc1: indptr[0] = 1, expected 0"),
        ([0, 2, 1, 3], 3, 3, "fc1: indptr decreases at row 1: indptr[1] = 2 > indptr[2] = 1"),
        ([0, 2, 4], 2, 3, "fc1: indptr[2] = 4, expected the number of entries 3"),
    ],
)
def test_check_indptr_rejects(indptr, rows, n, message):
    with pytest.raises(FormatError, match=re.escape(message)):
        check_indptr(np.array(indptr, np.uint32), rows, n, "fc1")


def test_gaps_to_columns_rejects_column_out_of_range():
    indptr = np.uint32([0, 1, 3])
    gaps = np.uint8([0, 2, 5])  # row 1: columns 2, then 8
    message = "fc2: row 1, entry 2: column 8 is out of range, expected < cols = 6"
    with pytest.raises(FormatError, match=re.escape(message)):
        gaps_to_columns(indptr, gaps, 6, "fc2")
    assert gaps_to_columns(indptr, gaps, 9, "fc2").tolist() == [0, 2, 8]


def test_gaps_to_columns_checks_indptr_and_dtype():
    with pytest.raises(FormatError, match=re.escape("fc2: indptr[1] = 4, expected the number of entries 3")):
        gaps_to_columns(np.uint32([0, 4]), np.uint8([0, 0, 0]), 10, "fc2")
    with pytest.raises(FormatError, match="fc2: gaps must be a 1-D unsigned integer array"):
        gaps_to_columns(np.uint32([0, 1]), np.int8([-1]), 10, "fc2")


def test_check_codes_rejects_code_out_of_range():
    check_codes(np.uint8([1, 2, 4, 3]), 5, "fc3")
    message = "fc3: code 9 at index 2 is out of range, expected < codebook size 5"
    with pytest.raises(FormatError, match=re.escape(message)):
        check_codes(np.uint8([1, 2, 9, 3, 12]), 5, "fc3")


def test_csr_to_dense_rejects():
    indptr = np.uint32([0, 2])
    cb = np.float32([0.0, 1.5])
    with pytest.raises(FormatError, match=re.escape("conv1: row 0, entry 1: column 2 does not increase (previous 2)")):
        csr_to_dense(indptr, np.int32([2, 2]), np.uint8([1, 1]), cb, 1, 4, where="conv1")
    with pytest.raises(FormatError, match=re.escape("conv1: row 0, entry 1: column 4 is out of range, expected 0..3")):
        csr_to_dense(indptr, np.int32([0, 4]), np.uint8([1, 1]), cb, 1, 4, where="conv1")
    message = "conv1: code 2 at index 1 is out of range, expected < codebook size 2"
    with pytest.raises(FormatError, match=re.escape(message)):
        csr_to_dense(indptr, np.int32([0, 1]), np.uint8([1, 2]), cb, 1, 4, where="conv1")
    with pytest.raises(FormatError, match=re.escape("conv1: codebook[0] = 0.5, expected 0.0")):
        csr_to_dense(indptr, np.int32([0, 1]), np.uint8([1, 1]), np.float32([0.5, 1.0]), 1, 4, where="conv1")
    with pytest.raises(FormatError, match=re.escape("conv1: 2 columns but 1 entry codes, expected equal")):
        csr_to_dense(indptr, np.int32([0, 1]), np.uint8([1]), cb, 1, 4, where="conv1")
    np.testing.assert_array_equal(
        csr_to_dense(indptr, np.int32([0, 3]), np.uint8([1, 0]), cb, 1, 4, np.float32([2.0])), [[3.0, 0, 0, 0]]
    )
