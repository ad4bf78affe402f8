"""What one fuzz input does: load the bytes with every check, then run once on zeros of the declared input shapes
(dynamic dimensions = 1). Shared by the fuzz harness and the regression tests. `with_fixed_crcs` recomputes the
checksums first, as an attacker would after editing a file, so that mutations reach the checks behind the CRCs."""
from __future__ import annotations

import struct
import zlib

import numpy as np


def with_fixed_crcs(data: bytes) -> bytes:
    buf = bytearray(data)
    if len(buf) < 64:
        return bytes(buf)
    count = min(struct.unpack_from("<I", buf, 12)[0], (len(buf) - 64) // 32)
    for i in range(count):
        at = 64 + 32 * i
        offset, length = struct.unpack_from("<QQ", buf, at + 8)
        if offset + length <= len(buf):
            struct.pack_into("<I", buf, at + 24, zlib.crc32(buf[offset: offset + length]) & 0xFFFFFFFF)
    end = 64 + 32 * count
    crc = zlib.crc32(bytes(buf[0:28]) + b"\0\0\0\0" + bytes(buf[32:end])) & 0xFFFFFFFF
    struct.pack_into("<I", buf, 28, crc)
    return bytes(buf)


def run_once(data: bytes) -> None:
    from edgepack import runtime

    model = runtime.load(data)
    feeds = {}
    for name, declared in model.inputs:
        shape = [d if isinstance(d, int) else 1 for d in declared]
        if int(np.prod(shape, dtype=np.int64)) > 1 << 22:
            return  # a valid file with a huge declared input: loading was the test
        feeds[name] = np.zeros(shape, dtype=np.float32)
    model.run(feeds)
