"""Seeds for fuzz/fuzz_config.py: valid and nearly valid settings files, sizes, .npy / .npz bytes and command lines,
each prefixed with the byte that picks its target."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np


def _npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _npz(**arrays) -> bytes:
    b = io.BytesIO()
    np.savez(b, **arrays)
    return b.getvalue()


def seeds() -> dict[str, bytes]:
    return {
        "cfg_json": b"\0" + b'{"default": {"sparsity": 0.5, "bits": 4, "huffman": false}, "layers": {"fc": {"bits": 3},'
                           b' "conv1.w": {"encoding": "dense", "channel_scales": "auto"}}}',
        "cfg_json_dup": b"\0" + b'{"default": {"bits": 4, "bits": 5}}',
        "cfg_toml": b"\1" + b'[default]\nsparsity = 0.9\nseed = 3\n[layers."lstm"]\nbits = 6\ninit = "density"\n',
        "table_json": b"\2" + b'{"process": "45 nm", "fp32_add": 0.9, "int8_mult": 0.2}',
        "size": b"\3" + b"256KiB",
        "size_odd": b"\3" + b"1.5e3 mb",
        "npy": b"\4" + _npy(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "npy_bool": b"\4" + _npy(np.array([True, False])),
        "npz": b"\5" + _npz(x=np.ones((2, 3), np.float32), y=np.arange(4)),
        "argv_pack": b"\6" + b"\0".join([b"pack", b"m.onnx", b"-o", b"m.epk", b"--bits", b"4", b"--max-error",
                                         b"0.01", b"--input-shape", b"x=1,3,8,8", b"--threads", b"2"]),
        "argv_run": b"\6" + b"\0".join([b"run", b"m.epk", b"--input", b"x.npy", b"--budget", b"64KiB",
                                        b"--threads", b"1"]),
        "argv_energy": b"\6" + b"\0".join([b"energy", b"m.epk", b"--sram", b"1MiB"]),
        "table_toml": b"\7" + b'process = "7 nm"\nfp32_mult = 1.5\n',
    }


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "fuzz/config_corpus")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (out / name).write_bytes(data)
    print(f"{out}: {len(seeds())} seeds")
