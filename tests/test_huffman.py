"""Chunked canonical Huffman: code lengths, code assignment, encode/decode and every rejection, against plain-Python
references (RFC 1951 code assignment, heapq Huffman, brute force, a string-of-bits coder)."""
import heapq
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgepack.packer.huffman import code_lengths, encode, encoded_bits
from edgepack.runtime.errors import FormatError
from edgepack.runtime.huffman import build_decode_table, canonical_codes, check_lengths, decode


# ---------------------------------------------------------------- references

def ref_codes(lengths):
    """RFC 1951 3.2.2, transcribed."""
    lengths = [int(x) for x in lengths]
    bl_count = [0] * 16
    for ln in lengths:
        if ln:
            bl_count[ln] += 1
    next_code, code = [0] * 16, 0
    for bits in range(1, 16):
        code = (code + bl_count[bits - 1]) << 1
        next_code[bits] = code
    codes = [0] * len(lengths)
    for n, ln in enumerate(lengths):
        if ln:
            codes[n] = next_code[ln]
            next_code[ln] += 1
    return codes


def ref_encode(symbols, lengths, boundaries):
    """Each code as a '0'/'1' string MSB first; each chunk padded to whole bytes; stream bit s = byte s//8 bit s%8."""
    codes = ref_codes(lengths)
    data, offsets = [], [0]
    for c in range(len(boundaries) - 1):
        bits = "".join(format(codes[s], f"0{int(lengths[s])}b") for s in symbols[boundaries[c]:boundaries[c + 1]])
        bits += "0" * (-len(bits) % 8)
        data += [int(bits[i:i + 8][::-1], 2) for i in range(0, len(bits), 8)]
        offsets.append(len(data))
    return np.array(data, dtype=np.uint8), np.array(offsets, dtype=np.uint32)


def ref_decode(data, lengths, offsets, boundaries):
    """Bit-by-bit decode; returns (symbols, None) or (None, (chunk, kind)) for the first bad chunk."""
    codes = ref_codes(lengths)
    table = {(int(ln), codes[s]): s for s, ln in enumerate(lengths) if ln}
    prefixes = {format(c, f"0{ln}b")[:k] for (ln, c) in table for k in range(1, ln + 1)}
    out = []
    for c in range(len(boundaries) - 1):
        chunk = data[offsets[c]:offsets[c + 1]]
        bits = "".join(format(int(b), "08b")[::-1] for b in chunk)
        p = 0
        for _ in range(boundaries[c + 1] - boundaries[c]):
            code = ""
            while (len(code), int(code or "0", 2)) not in table or not code:
                if code and code not in prefixes:
                    return None, (c, "not a valid code")
                if p == len(bits):
                    return None, (c, "middle of code")
                code += bits[p]
                p += 1
            out.append(table[(len(code), int(code, 2))])
        if len(chunk) > (p + 7) // 8:
            return None, (c, "bytes left")
        if "1" in bits[p:]:
            return None, (c, "nonzero pad")
    return out, None


def ref_huffman_cost(freqs):
    """Cost (sum freq * length) of an unlimited Huffman code, by heapq."""
    heap = [int(f) for f in freqs if f > 0]
    if len(heap) <= 1:
        return sum(heap)
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def ref_kraft_ok(lengths):
    lengths = [int(x) for x in lengths]
    if max(lengths) > 15:
        return False
    used = [ln for ln in lengths if ln]
    if len(used) == 0:
        return True
    if len(used) == 1:
        return used[0] == 1
    return sum(2 ** (15 - ln) for ln in used) == 2 ** 15


def make_stream(symbols, alphabet, boundaries, max_len=15):
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = code_lengths(np.bincount(symbols, minlength=alphabet), max_len)
    data, offsets = encode(symbols, lengths, np.asarray(boundaries))
    return lengths, data, offsets


# ---------------------------------------------------------------- known answers

def test_known_answer():
    # Huffman by hand: merge 1+3 -> 4, 4+6 -> 10, 10+10 -> 20: depths s0 1, s3 2, s1 3, s2 3
    lengths = code_lengths(np.array([10, 1, 3, 6]))
    assert lengths.dtype == np.uint8 and lengths.tolist() == [1, 3, 3, 2]
    # bl_count = [0,1,1,2]; next_code[1..3] = 0, 2, 6: s0 "0", s3 "10", s1 "110", s2 "111"
    assert canonical_codes(lengths).tolist() == [0, 6, 7, 2]
    # symbols 3,1,0,2,2 -> 10 110 0 111 111 -> stream bits 1,0,1,1,0,0,1,1 | 1,1,1,1,(0,0,0,0)
    data, offsets = encode(np.array([3, 1, 0, 2, 2]), lengths, np.array([0, 5]))
    assert data.tolist() == [0xCD, 0x0F] and offsets.tolist() == [0, 2]
    # two chunks [3,1] | [0,2,2]: 10110(000) -> 0x0D; 0111111(0) -> 0x7E
    data, offsets = encode(np.array([3, 1, 0, 2, 2]), lengths, np.array([0, 2, 5]))
    assert data.tolist() == [0x0D, 0x7E] and offsets.dtype == np.uint32 and offsets.tolist() == [0, 1, 2]
    assert decode(data, lengths, offsets, np.array([0, 2, 5]), "t").tolist() == [3, 1, 0, 2, 2]
    assert decode(data, lengths, offsets, np.array([0, 2, 5]), "t", first_chunk=1).tolist() == [0, 2, 2]
    assert encoded_bits(np.array([10, 1, 3, 6]), lengths) == 10 + 3 + 9 + 12


def test_rfc1951_example():
    # RFC 1951 3.2.2: lengths (3,3,3,3,3,2,4,4) give 010 011 100 101 110 00 1110 1111
    assert canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4], np.uint8)).tolist() == \
        [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]


def test_one_symbol_stream():
    lengths = code_lengths(np.array([0, 0, 5, 0]))
    assert lengths.tolist() == [0, 0, 1, 0]
    data, offsets = encode(np.full(12, 2), lengths, np.array([0, 3, 12]))  # 3 bits -> 1 byte, 9 bits -> 2
    assert data.tolist() == [0, 0, 0] and offsets.tolist() == [0, 1, 3]
    assert decode(data, lengths, offsets, np.array([0, 3, 12]), "t").tolist() == [2] * 12


def test_empty_streams():
    lengths = code_lengths(np.zeros(8, dtype=np.int64))
    assert lengths.tolist() == [0] * 8
    for bnd in ([0], [0, 0], [0, 0, 0, 0]):
        data, offsets = encode(np.zeros(0, np.int64), lengths, np.array(bnd))
        assert data.size == 0 and offsets.tolist() == [0] * len(bnd)
        assert decode(data, lengths, offsets, np.array(bnd), "t").size == 0
    # a valid table with an empty stream, and empty chunks inside a non-empty stream
    lengths, data, offsets = make_stream([1, 1, 0], 2, [0, 0, 2, 2, 3, 3])
    assert offsets.tolist() == [0, 0, 1, 1, 2, 2]
    assert decode(data, lengths, offsets, np.array([0, 0, 2, 2, 3, 3]), "t").tolist() == [1, 1, 0]


def test_long_codes_use_the_slow_path():
    # Fibonacci frequencies force a maximal-depth (15-bit) code, beyond the 10-bit lookup
    fib = [1, 1]
    while len(fib) < 16:
        fib.append(fib[-1] + fib[-2])
    freqs = np.zeros(16, np.int64)
    freqs[:] = fib
    lengths = code_lengths(freqs)
    assert int(lengths.max()) == 15
    rng = np.random.default_rng(0)
    symbols = rng.permutation(np.repeat(np.arange(16), 3))
    data, offsets = encode(symbols, lengths, np.array([0, 20, 48]))
    np.testing.assert_array_equal(data, ref_encode(symbols.tolist(), lengths, [0, 20, 48])[0])
    np.testing.assert_array_equal(decode(data, lengths, offsets, np.array([0, 20, 48]), "t"), symbols)
    # the longest code alone, its last byte cut: truncation found inside the slow path
    longest = int(np.argmax(lengths))
    data, offsets = encode(np.array([longest]), lengths, np.array([0, 1]))
    for lookup_bits in (1, 8, 11):
        with pytest.raises(FormatError, match="middle of code 0"):
            decode(data[:1], lengths, np.array([0, 1]), np.array([0, 1]), "t",
                   table=build_decode_table(lengths, lookup_bits))


# ---------------------------------------------------------------- code lengths

@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=64), st.integers(1, 15))
def test_code_lengths_respect_limit_and_are_complete(freqs, max_len):
    freqs = np.array(freqs, dtype=np.int64)
    used = int(np.count_nonzero(freqs))
    if used > 1 << max_len:
        with pytest.raises(ValueError, match="cannot be coded"):
            code_lengths(freqs, max_len)
        return
    lengths = code_lengths(freqs, max_len)
    assert lengths.dtype == np.uint8
    assert int(lengths.max()) <= max(max_len, 1)
    assert np.array_equal(lengths > 0, freqs > 0)
    padded = np.zeros(1 << int(np.ceil(np.log2(freqs.size))), np.uint8)
    padded[:freqs.size] = lengths
    check_lengths(padded, "t")  # complete (or the single-symbol case)
    if max_len >= used - 1:  # the limit cannot bind: must match unlimited Huffman
        assert encoded_bits(freqs, lengths) == ref_huffman_cost(freqs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=2, max_size=5), st.data())
def test_code_lengths_optimal_under_binding_limit(freqs, data):
    n = len(freqs)
    max_len = data.draw(st.integers(max(1, int(np.ceil(np.log2(n)))), n - 1))
    best = min(sum(f * ln for f, ln in zip(freqs, lens))
               for lens in itertools.product(range(1, max_len + 1), repeat=n)
               if sum(2.0 ** -ln for ln in lens) <= 1)
    lengths = code_lengths(np.array(freqs), max_len)
    assert int(lengths.max()) <= max_len
    assert encoded_bits(np.array(freqs), lengths) == best


def test_code_lengths_deterministic_ties():
    # equal frequencies: lower symbol index never gets the longer code
    assert code_lengths(np.array([1, 1, 1])).tolist() == [1, 2, 2]
    assert code_lengths(np.array([4, 4, 4, 4, 4, 4])).tolist() == [2, 2, 3, 3, 3, 3]
    assert code_lengths(np.ones(4, np.int64), 2).tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="cannot be coded"):
        code_lengths(np.ones(5, np.int64), 2)


# ---------------------------------------------------------------- check_lengths

@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5).flatmap(lambda b: st.lists(
    st.one_of(st.just(0), st.integers(1, 5), st.integers(0, 17)), min_size=1 << b, max_size=1 << b)))
def test_check_lengths_agrees_with_kraft_reference(lengths):
    arr = np.array(lengths, dtype=np.uint8)
    if ref_kraft_ok(lengths):
        check_lengths(arr, "t")
    else:
        with pytest.raises(FormatError):
            check_lengths(arr, "t")


def test_check_lengths_messages():
    where = "stream 'codes' of layer 'fc1'"
    with pytest.raises(FormatError, match=r"stream 'codes' of layer 'fc1': .*over-subscribed.*40960/32768"):
        check_lengths(np.array([1, 1, 2, 0], np.uint8), where)
    with pytest.raises(FormatError, match=r"incomplete.*24576/32768"):
        check_lengths(np.array([1, 2, 0, 0], np.uint8), where)
    with pytest.raises(FormatError, match="symbol 1 is 16, expected 0 <= length <= 15"):
        check_lengths(np.array([1, 16, 0, 0], np.uint8), where)
    with pytest.raises(FormatError, match="single used symbol 2 has code length 2, expected 1"):
        check_lengths(np.array([0, 0, 2, 0], np.uint8), where)
    with pytest.raises(FormatError, match="has 3 entries"):
        check_lengths(np.array([1, 1, 0], np.uint8), where)
    with pytest.raises(FormatError, match="has 8192 entries"):
        check_lengths(np.zeros(8192, np.uint8), where)
    check_lengths(np.zeros(4096, np.uint8), where)
    check_lengths(np.array([0, 1, 0, 0], np.uint8), where)
    # decode runs the same check
    with pytest.raises(FormatError, match="over-subscribed"):
        decode(np.zeros(1, np.uint8), np.array([1, 1, 1, 0], np.uint8), np.array([0, 1]), np.array([0, 1]), "t")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=2, max_size=64))
def test_canonical_codes_match_rfc(freqs):
    lengths = code_lengths(np.array(freqs, dtype=np.int64))
    assert canonical_codes(lengths).tolist() == ref_codes(lengths)


# ---------------------------------------------------------------- round trips

@st.composite
def streams(draw):
    bits = draw(st.integers(1, 12))
    alphabet = 1 << bits
    n = draw(st.integers(0, 300))
    kind = draw(st.sampled_from(["one", "distinct", "skewed", "uniform"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "one":
        symbols = np.full(n, rng.integers(alphabet))
    elif kind == "distinct":
        symbols = rng.permutation(alphabet)[:n]
    elif kind == "skewed":
        symbols = np.minimum(rng.geometric(draw(st.sampled_from([0.05, 0.3, 0.9])), n) - 1, alphabet - 1)
    else:
        symbols = rng.integers(0, alphabet, n)
    n = symbols.size
    n_chunks = draw(st.integers(1, 12))
    cuts = np.sort(rng.integers(0, n + 1, n_chunks - 1))  # repeated cuts make empty chunks
    boundaries = np.concatenate([[0], cuts, [n]]).astype(np.int64)
    max_len = draw(st.integers(max(1, int(np.ceil(np.log2(max(1, len(set(symbols.tolist()))))))), 15))
    return alphabet, symbols.astype(np.int64), boundaries, max_len


@settings(max_examples=120, deadline=None)
@given(streams(), st.data())
def test_round_trip(stream, data_strategy):
    alphabet, symbols, boundaries, max_len = stream
    lengths, data, offsets = make_stream(symbols, alphabet, boundaries, max_len)
    assert lengths.size == alphabet and int(lengths.max(initial=0)) <= max_len
    ref_data, ref_offsets = ref_encode(symbols.tolist(), lengths, boundaries.tolist())
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_array_equal(offsets, ref_offsets)
    got = decode(data, lengths, offsets, boundaries, "t")
    assert got.dtype == (np.uint8 if alphabet <= 256 else np.uint16)
    np.testing.assert_array_equal(got, symbols)
    # payload bits + per-chunk padding = stream size
    assert encoded_bits(np.bincount(symbols, minlength=alphabet), lengths) <= 8 * data.size
    # any chunk range, into a caller's buffer, with a reused table
    n_chunks = boundaries.size - 1
    first = data_strategy.draw(st.integers(0, n_chunks))
    last = data_strategy.draw(st.integers(first, n_chunks))
    out = np.full(symbols.size + 3, 9999, dtype=np.int32)
    # a short lookup sends most codes through the canonical walk
    table = build_decode_table(lengths, data_strategy.draw(st.sampled_from([1, 3, 11])))
    part = decode(data, lengths, offsets, boundaries, "t", out=out, first_chunk=first, last_chunk=last, table=table)
    np.testing.assert_array_equal(part, symbols[boundaries[first]:boundaries[last]])


# ---------------------------------------------------------------- rejections

@pytest.fixture
def stream3():
    """Three chunks of 3-bit symbols with a skewed distribution (codes of several lengths)."""
    symbols = np.array([0, 0, 1, 0, 2, 3, 0, 0, 4, 5, 0, 1, 6, 7, 0, 0, 1, 2], np.int64)
    boundaries = np.array([0, 6, 12, 18])
    lengths, data, offsets = make_stream(symbols, 8, boundaries)
    return lengths, data, offsets.astype(np.int64), boundaries, symbols


def test_rejects_truncated_chunk(stream3):
    lengths, data, offsets, bnd, _ = stream3
    cut = np.delete(data, offsets[2] - 1)  # drop the last byte of chunk 1
    offs = offsets.copy()
    offs[2:] -= 1
    with pytest.raises(FormatError, match=r"layer 'fc2' codes: chunk 1 \(bytes \[.*\).*ends in the middle of code"):
        decode(cut, lengths, offs, bnd, "layer 'fc2' codes")


def test_rejects_trailing_garbage(stream3):
    lengths, data, offsets, bnd, _ = stream3
    for chunk in range(3):
        grown = np.insert(data, offsets[chunk + 1], 0)
        offs = offsets.copy()
        offs[chunk + 1:] += 1
        with pytest.raises(FormatError, match=f"chunk {chunk} .*bytes left after its last code"):
            decode(grown, lengths, offs, bnd, "t")
    # an empty chunk must have no bytes
    with pytest.raises(FormatError, match="chunk 0 .*bytes left"):
        decode(np.concatenate([[0], data]).astype(np.uint8), lengths, np.concatenate([[0], offsets + 1]),
               np.concatenate([[0], bnd]), "t")


def test_rejects_nonzero_pad_bits(stream3):
    lengths, data, offsets, bnd, symbols = stream3
    padded = 0
    for chunk in range(3):
        payload = int(np.sum(lengths[symbols[bnd[chunk]:bnd[chunk + 1]]]))
        if payload % 8 == 0:
            continue
        padded += 1
        bad = data.copy()
        bad[offsets[chunk + 1] - 1] |= 0x80
        with pytest.raises(FormatError, match=f"chunk {chunk} .*nonzero pad bits"):
            decode(bad, lengths, offsets, bnd, "t")
    assert padded >= 2


@settings(max_examples=200, deadline=None)
@given(streams(), st.data())
def test_corrupted_streams_match_reference_verdict(stream, data_strategy):
    """Flip, drop or insert bytes inside one chunk: decode must fail exactly where the reference does, or agree."""
    alphabet, symbols, boundaries, max_len = stream
    lengths, data, offsets = make_stream(symbols, alphabet, boundaries, max_len)
    if lengths.max(initial=0) == 0:
        return
    offsets = offsets.astype(np.int64)
    chunk = data_strategy.draw(st.integers(0, boundaries.size - 2))
    lo, hi = int(offsets[chunk]), int(offsets[chunk + 1])
    action = data_strategy.draw(st.sampled_from(["flip", "drop", "insert"]))
    data = data.copy()
    if action == "flip" and hi > lo:
        i = data_strategy.draw(st.integers(lo, hi - 1))
        data[i] ^= 1 << data_strategy.draw(st.integers(0, 7))
    elif action == "drop" and hi > lo:
        data = np.delete(data, data_strategy.draw(st.integers(lo, hi - 1)))
        offsets[chunk + 1:] -= 1
    else:
        data = np.insert(data, data_strategy.draw(st.integers(lo, hi)), data_strategy.draw(st.integers(0, 255)))
        offsets[chunk + 1:] += 1
    table = build_decode_table(lengths, data_strategy.draw(st.sampled_from([1, 3, 11])))
    ref, failure = ref_decode(data.tolist(), lengths, offsets.tolist(), boundaries.tolist())
    if failure is None:
        np.testing.assert_array_equal(decode(data, lengths, offsets, boundaries, "t", table=table), ref)
    else:
        kind = failure[1] if failure[1] in ("bytes left", "nonzero pad") else f"({failure[1]}|too short)"
        with pytest.raises(FormatError, match=f"chunk {failure[0]} .*{kind}"):
            decode(data, lengths, offsets, boundaries, "t", table=table)


def test_rejects_invalid_code_one_symbol():
    lengths = np.array([0, 1, 0, 0], np.uint8)
    for byte, idx in ((0x01, 0), (0x04, 2)):
        with pytest.raises(FormatError, match=f"code {idx} is not a valid code"):
            decode(np.array([byte], np.uint8), lengths, np.array([0, 1]), np.array([0, 3]), "t")
    assert decode(np.array([0], np.uint8), lengths, np.array([0, 1]), np.array([0, 3]), "t").tolist() == [1] * 3


def test_rejects_bad_offsets_and_boundaries(stream3):
    lengths, data, offsets, bnd, _ = stream3
    offs = offsets.copy()
    offs[1], offs[2] = offs[2], offs[1]
    with pytest.raises(FormatError, match=r"chunk offsets must be non-decreasing, found chunk offsets\[1\]"):
        decode(data, lengths, offs, bnd, "t")
    with pytest.raises(FormatError, match=f"last chunk offset is {data.size - 1}, expected the data length "
                                          f"{data.size}"):
        decode(data, lengths, np.concatenate([offsets[:-1], [data.size - 1]]), bnd, "t")
    with pytest.raises(FormatError, match="last chunk offset"):
        decode(np.concatenate([data, [0]]).astype(np.uint8), lengths, offsets, bnd, "t")
    with pytest.raises(FormatError, match=r"chunk offsets\[0\] must be 0"):
        decode(data, lengths, np.concatenate([[1], offsets[1:]]), bnd, "t")
    with pytest.raises(FormatError, match="chunk boundaries must be non-decreasing"):
        decode(data, lengths, offsets, np.array([0, 12, 6, 18]), "t")
    with pytest.raises(FormatError, match="3 chunk offsets for 3 chunks"):
        decode(data, lengths, offsets[:-1], bnd, "t")
    with pytest.raises(FormatError, match=r"chunk 2 \(bytes .*, 988 symbols\) is too short: 988 codes cannot fit"):
        decode(data, lengths, offsets, np.array([0, 6, 12, 1000]), "t")
    with pytest.raises(FormatError, match="uses no symbol but the stream holds 2 symbols"):
        decode(np.zeros(1, np.uint8), np.zeros(4, np.uint8), np.array([0, 1]), np.array([0, 2]), "t")
    with pytest.raises(ValueError, match="chunk range"):
        decode(data, lengths, offsets, bnd, "t", first_chunk=2, last_chunk=1)
    with pytest.raises(ValueError, match="out holds 2"):
        decode(data, lengths, offsets, bnd, "t", out=np.empty(2, np.uint8))


def test_encode_rejects_bad_input():
    lengths = np.array([1, 1, 0, 0], np.uint8)
    with pytest.raises(ValueError, match="symbol 2 at index 1 has no code"):
        encode(np.array([0, 2]), lengths, np.array([0, 2]))
    with pytest.raises(ValueError, match="boundaries"):
        encode(np.array([0, 1]), lengths, np.array([0, 1]))
    with pytest.raises(ValueError, match="boundaries"):
        encode(np.array([0, 1]), lengths, np.array([0, 2, 1, 2]))
    with pytest.raises(ValueError, match="incomplete"):
        encode(np.array([0, 1]), np.array([1, 2, 0, 0], np.uint8), np.array([0, 2]))
    with pytest.raises(ValueError, match="no code"):
        encoded_bits(np.array([1, 0, 1, 0]), lengths)
