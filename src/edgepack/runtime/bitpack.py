"""Reading b-bit packed streams (1 <= b <= 16): value i is stream bits [i*b, (i+1)*b), LSB-first, zero padded.

Implements spec/format.md, "Bit order" and "Packed streams". The writer side is packer/bitpack.py.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from edgepack.runtime.constants import MAX_PACKED_BITS
from edgepack.runtime.errors import FormatError


def packed_nbytes(bits: int, count: int) -> int:
    """Byte length of a stream of `count` values of `bits` bits: ceil(count * bits / 8)."""
    return (int(count) * int(bits) + 7) // 8


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= MAX_PACKED_BITS:
        raise ValueError(f"packed bit width must be an int in [1, {MAX_PACKED_BITS}], found {bits!r}")


def _check_data(data: np.ndarray) -> None:
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 1:
        raise TypeError(f"packed stream must be a 1-D uint8 array, found {type(data).__name__} "
                        f"{getattr(data, 'dtype', '')} ndim={getattr(data, 'ndim', '')}")


def check_stream(data: np.ndarray, bits: int, count: int, where: str) -> None:
    """Validate a packed stream without decoding it: exact byte length and zero pad bits in the last byte."""
    _check_data(data)
    _check_bits(bits)
    if count < 0:
        raise ValueError(f"{where}: value count must be >= 0, found {count}")
    expected = packed_nbytes(bits, count)
    if data.shape[0] != expected:
        raise FormatError(f"{where}: packed stream of {count} values x {bits} bits must be {expected} bytes, "
                          f"found {data.shape[0]}")
    used = (int(count) * int(bits)) % 8
    if used and int(data[-1]) >> used:
        raise FormatError(f"{where}: nonzero pad bits in the last byte of the packed stream "
                          f"(byte {expected - 1} = 0x{int(data[-1]):02x}, only its low {used} bits may be set)")


@njit(cache=True)
def _unpack_kernel(data, bits, start, stop, out):
    mask = (1 << bits) - 1
    for i in range(start, stop):
        p = i * bits
        byte = p >> 3
        shift = p & 7
        # a value spans at most 3 bytes (shift <= 7, bits <= 16); read only the bytes it touches
        nbytes = (shift + bits + 7) >> 3
        acc = 0
        for k in range(nbytes):
            acc |= np.int64(data[byte + k]) << (8 * k)
        out[i - start] = (acc >> shift) & mask
    return 0


def unpack(data: np.ndarray, bits: int, count: int, where: str) -> np.ndarray:
    """Decode all `count` values of a validated-on-the-spot packed stream; uint8 if bits <= 8 else uint16."""
    check_stream(data, bits, count, where)
    out = np.empty(int(count), dtype=np.uint8 if bits <= 8 else np.uint16)
    if count:
        _unpack_kernel(np.ascontiguousarray(data), int(bits), 0, int(count), out)
    return out


def unpack_range(data: np.ndarray, bits: int, start: int, stop: int, out: np.ndarray) -> np.ndarray:
    """Decode values [start, stop) into out[:stop - start] and return that view.

    Packed streams are randomly accessible, so a budgeted executor decodes one row block at a time. The stream
    must already have passed check_stream (or unpack); here only the range and `out` are checked.
    """
    _check_data(data)
    _check_bits(bits)
    start, stop = int(start), int(stop)
    if not 0 <= start <= stop:
        raise ValueError(f"value range [{start}, {stop}) is not a valid range")
    if stop * int(bits) > data.shape[0] * 8:
        raise ValueError(f"value range [{start}, {stop}) of {bits}-bit values needs "
                         f"{packed_nbytes(bits, stop)} bytes, stream has {data.shape[0]}")
    if not isinstance(out, np.ndarray) or out.ndim != 1 or not out.flags.c_contiguous:
        raise TypeError("out must be a contiguous 1-D array")
    if out.dtype.kind not in "ui" or np.iinfo(out.dtype).max < (1 << bits) - 1:
        raise TypeError(f"out dtype {out.dtype} cannot hold {bits}-bit values")
    if out.shape[0] < stop - start:
        raise ValueError(f"out holds {out.shape[0]} values, range [{start}, {stop}) needs {stop - start}")
    if stop > start:
        _unpack_kernel(np.ascontiguousarray(data), int(bits), start, stop, out)
    return out[:stop - start]
