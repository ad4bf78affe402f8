"""b-bit packed streams: packer/bitpack.pack and runtime/bitpack.unpack against a big-integer reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgepack.packer.bitpack import pack
from edgepack.runtime.bitpack import check_stream, packed_nbytes, unpack, unpack_range
from edgepack.runtime.errors import FormatError


def ref_pack(values, bits):
    """Value i at bit i*bits of one little-endian integer: the spec's bit order, stated independently."""
    acc = 0
    for i, v in enumerate(values):
        acc |= int(v) << (i * bits)
    return np.frombuffer(acc.to_bytes((len(values) * bits + 7) // 8, "little"), dtype=np.uint8)


def test_known_answer():
    # 1 = 001, 2 = 010, 3 = 011, LSB first: bits 1,0,0, 0,1,0, 1,1,0 -> 0b11010001, 0b0
    assert pack(np.array([1, 2, 3]), 3).tolist() == [0xD1, 0x00]
    assert pack(np.array([0xABC]), 12).tolist() == [0xBC, 0x0A]
    assert pack(np.array([1, 0, 1, 1]), 1).tolist() == [0b1101]
    assert pack(np.array([0x1234, 0xFFFF]), 16).tolist() == [0x34, 0x12, 0xFF, 0xFF]


@pytest.mark.parametrize("bits", range(1, 17))
def test_every_width(bits):
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 8, 9, 61, 256):
        values = rng.integers(0, 1 << bits, size=n)
        if n:
            values[0] = (1 << bits) - 1  # all ones must not spill into the neighbour
        data = pack(values, bits)
        assert data.dtype == np.uint8
        assert data.shape[0] == packed_nbytes(bits, n) == (n * bits + 7) // 8
        np.testing.assert_array_equal(data, ref_pack(values, bits))
        got = unpack(data, bits, n, "t")
        assert got.dtype == (np.uint8 if bits <= 8 else np.uint16)
        np.testing.assert_array_equal(got, values)
        if n:
            for start, stop in ((0, n), (n // 3, n // 2 + 1), (n - 1, n), (n, n)):
                out = np.full(n + 2, 7, dtype=np.int32)
                view = unpack_range(data, bits, start, stop, out)
                np.testing.assert_array_equal(view, values[start:stop])


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 16).flatmap(
    lambda b: st.tuples(st.just(b), st.lists(st.integers(0, (1 << b) - 1), max_size=80))))
def test_round_trip(case):
    bits, values = case
    values = np.array(values, dtype=np.int64)
    data = pack(values, bits)
    np.testing.assert_array_equal(data, ref_pack(values, bits))
    np.testing.assert_array_equal(unpack(data, bits, values.size, "t"), values)


@pytest.mark.parametrize("bits", range(1, 17))
def test_rejects_wrong_length(bits):
    data = pack(np.ones(5, dtype=np.int64), bits)
    with pytest.raises(FormatError, match=r"layer 'fc1'.*must be \d+ bytes, found"):
        unpack(data[:-1], bits, 5, "layer 'fc1'")
    with pytest.raises(FormatError, match="must be"):
        unpack(np.concatenate([data, np.zeros(1, np.uint8)]), bits, 5, "t")
    with pytest.raises(FormatError):
        unpack(np.zeros(1, np.uint8), bits, 0, "t")


@pytest.mark.parametrize("bits", [b for b in range(1, 17) if (5 * b) % 8])
def test_rejects_nonzero_pad(bits):
    data = pack(np.zeros(5, dtype=np.int64), bits).copy()
    data[-1] |= 0x80  # the top bit of the last byte is always padding when 5*bits is not a multiple of 8
    with pytest.raises(FormatError, match="codes of 'conv1'.*nonzero pad bits"):
        unpack(data, bits, 5, "codes of 'conv1'")
    with pytest.raises(FormatError, match="pad"):
        check_stream(data, bits, 5, "t")


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError, match="value 8 at index 1 does not fit in 3 bits"):
        pack(np.array([1, 8, 2]), 3)
    with pytest.raises(ValueError, match="does not fit"):
        pack(np.array([-1]), 4)
    with pytest.raises(ValueError, match="bit width"):
        pack(np.array([1]), 17)
    with pytest.raises(ValueError, match="bit width"):
        pack(np.array([0]), 0)
    with pytest.raises(ValueError, match="integers"):
        pack(np.array([0.5]), 4)


def test_unpack_range_checks():
    data = pack(np.arange(10), 4)
    out = np.empty(10, dtype=np.uint8)
    with pytest.raises(ValueError, match="needs 6 bytes"):
        unpack_range(data, 4, 0, 11, out)
    with pytest.raises(ValueError, match="not a valid range"):
        unpack_range(data, 4, 5, 3, out)
    with pytest.raises(ValueError, match="out holds 2"):
        unpack_range(data, 4, 0, 3, out[:2])
    with pytest.raises(TypeError, match="cannot hold"):
        unpack_range(pack(np.arange(3), 12), 12, 0, 3, out)
    with pytest.raises(TypeError):
        unpack(data.astype(np.int16), 4, 10, "t")
