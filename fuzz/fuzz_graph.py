"""Coverage-guided fuzzing of crafted-graph .epk files: valid containers whose graphs the fuzzer builds node by node
from the input bytes (ops the runtime supports, shapes, attributes and constants with sizes from tiny to 2^40,
compressed tensors that declare far more elements than they hold, node counts up to a few thousand), then
`runtime.load` and one run, under an address-space limit. Where fuzz_load.py mutates bytes (most mutations stop at a
CRC or the JSON), this one reaches shape inference, the planner, the memory checks and the kernels. Anything but a
clean EdgepackError (or success) is a finding: a foreign exception, a MemoryError, a crash or a hang.

    pip install atheris
    python fuzz/fuzz_graph.py fuzz/graph_corpus -max_total_time=1800 -rss_limit_mb=4096 -timeout=20 -max_len=512

(the corpus folder may start empty). Reproduce a finding with `python fuzz/fuzz_graph.py crash-<hash>`; write the
file it builds with `python -c "from fuzz.fuzz_graph import build; open('x.epk', 'wb').write(build(open('crash-<hash>',
'rb').read()))"` and keep it as a test.
"""
from __future__ import annotations

import os
import resource
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

import gc  # noqa: E402

import numpy as np  # noqa: E402

from edgepack import runtime  # noqa: E402
from numba.core.dispatcher import Dispatcher  # noqa: E402
from edgepack.packer.writer import build_file  # noqa: E402
from edgepack.runtime.errors import EdgepackError  # noqa: E402

_kernels = [(d.py_func, d.py_func.__code__) for d in gc.get_objects() if isinstance(d, Dispatcher)]
atheris.instrument_all()
for func, code in _kernels:
    func.__code__ = code

META = {"producer": "fuzz_graph", "format_version": "1.0"}
BIG = (0, 1 << 16, 100_000, (1 << 31) - 1, 1 << 31, 1 << 40, -1, -(1 << 31))
UNARY = ("Relu", "Sigmoid", "Tanh", "Abs", "Neg", "Exp", "Sqrt", "Identity", "Floor", "Erf", "HardSwish")
BINARY = ("Add", "Mul", "Sub", "Div", "Max", "Min", "Pow", "PRelu")


class _Draw:
    """Values from the fuzzer's bytes: small ones mostly, the boundary and huge ones sometimes."""

    def __init__(self, data: bytes):
        self.f = atheris.FuzzedDataProvider(data)

    def int(self, lo: int, hi: int) -> int:
        return self.f.ConsumeIntInRange(lo, hi)

    def dim(self) -> int:
        k = self.int(0, 15)
        return BIG[self.int(0, len(BIG) - 1)] if k == 0 else k % 6 + (k == 1)

    def value(self) -> int:
        k = self.int(0, 9)
        return BIG[self.int(0, len(BIG) - 1)] if k == 0 else self.int(-4, 8)

    def shape(self, rank: int | None = None) -> list[int]:
        return [self.dim() for _ in range(self.int(0, 5) if rank is None else rank)]

    def ints(self, n: int) -> list[int]:
        return [self.value() for _ in range(n)]


def _const(d: _Draw, name: str, shape: list[int], dtype: str = "float32") -> dict:
    """A constant: dense when small, else a compressed tensor that declares `shape` with no entries."""
    count = 1
    for s in shape:
        count *= max(s, 0)
    if any(s < 0 for s in shape) or count > 4096 or (count > 0 and dtype == "float32" and d.int(0, 3) == 0):
        rows = shape[0] if shape and 0 < shape[0] <= 64 else 1
        enc = {"type": "sparse_codebook", "codebook_dtype": "float32", "k": 1,
               "codebook": np.zeros(1, np.float32), "rows_per_chunk": 1, "nnz": 0,
               "row_counts": {"coding": "packed", "bits": 1, "data": np.zeros(-(-rows // 8), np.uint8)},
               "gaps": {"coding": "packed", "bits": 1, "data": np.zeros(0, np.uint8)},
               "codes": {"coding": "packed", "bits": 1, "data": np.zeros(0, np.uint8)}}
        return {"name": name, "dtype": "float32", "shape": shape, "encoding": enc}
    if dtype == "int64":
        data = np.array(d.ints(count), dtype=np.int64).reshape(shape)
    else:
        data = (np.arange(count, dtype=np.float32) % 7 - 3).reshape(shape)
    return {"name": name, "dtype": dtype, "shape": shape, "encoding": {"type": "dense", "dtype": dtype, "data": data}}


def build(data: bytes) -> bytes:
    """The .epk file these bytes describe (every structural rule of the container kept: the graph is what varies)."""
    d = _Draw(data)
    x_shape = d.shape(d.int(1, 4))
    nodes, tensors, prev = [], [], "x"
    many = d.int(0, 31) == 0
    n = d.int(1, 3000) if many else d.int(1, 8)
    for i in range(n):
        out, name = f"t{i}", f"n{i}"
        kind = d.int(0, 15) if not many else 0
        src = "x" if d.int(0, 7) == 0 else prev
        ins, attrs = [src], {}
        if kind <= 2:
            op = UNARY[d.int(0, len(UNARY) - 1)]
        elif kind == 3:
            op = BINARY[d.int(0, len(BINARY) - 1)]
            tensors.append(_const(d, f"c{i}", d.shape()))
            ins.append(f"c{i}")
        elif kind == 4:
            op = "Pad"
            tensors.append(_const(d, f"p{i}", [2 * len(x_shape)], "int64"))
            ins.append(f"p{i}")
        elif kind == 5:
            op = "Slice"
            k = d.int(1, 3)
            for part in ("s", "e", "a", "st"):
                tensors.append(_const(d, f"{part}{i}", [k], "int64"))
                ins.append(f"{part}{i}")
        elif kind == 6:
            op = "Reshape"
            tensors.append(_const(d, f"r{i}", [d.int(0, 4)], "int64"))
            ins.append(f"r{i}")
        elif kind == 7:
            op = "Transpose"
            attrs["perm"] = ["ints", d.ints(d.int(0, 4))]
        elif kind == 8:
            op = ("MaxPool", "AveragePool")[d.int(0, 1)]
            attrs = {"kernel_shape": ["ints", [d.value() for _ in range(2)]],
                     "pads": ["ints", d.ints(4)], "strides": ["ints", d.ints(2)]}
        elif kind == 9:
            op = "Conv"
            tensors.append(_const(d, f"w{i}", d.shape(4)))
            ins.append(f"w{i}")
            attrs = {"pads": ["ints", d.ints(4)], "strides": ["ints", d.ints(2)], "dilations": ["ints", d.ints(2)],
                     "group": ["int", d.value()]}
        elif kind == 10:
            op = ("Gemm", "MatMul")[d.int(0, 1)]
            tensors.append(_const(d, f"w{i}", d.shape(2)))
            ins.append(f"w{i}")
        elif kind == 11:
            op = "Resize"
            tensors.append(_const(d, f"sc{i}", [d.int(0, 4)]))
            ins += ["", f"sc{i}"]
        elif kind == 12:
            op = "Concat"
            ins.append(src)
            attrs["axis"] = ["int", d.value()]
        elif kind == 13:
            op = ("Softmax", "Flatten", "ReduceMean", "ReduceMax")[d.int(0, 3)]
            attrs["axis" if op in ("Softmax", "Flatten") else "axes"] = (
                ["int", d.value()] if op in ("Softmax", "Flatten") else ["ints", d.ints(d.int(0, 3))])
        elif kind == 14:
            op = ("Squeeze", "Unsqueeze")[d.int(0, 1)]
            tensors.append(_const(d, f"ax{i}", [d.int(1, 3)], "int64"))
            ins.append(f"ax{i}")
        else:
            op = "Gather"
            tensors.append(_const(d, f"ix{i}", d.shape(d.int(0, 2)), "int64"))
            ins.append(f"ix{i}")
            attrs["axis"] = ["int", d.value()]
        nodes.append({"op": op, "name": name, "inputs": ins, "outputs": [out], "attrs": attrs})
        prev = out
    graph = {"name": "fuzz", "opset": d.int(1, 24),
             "inputs": [{"name": "x", "dtype": "float32", "shape": x_shape}],
             "outputs": [{"name": prev, "dtype": "float32", "shape": []}], "nodes": nodes, "tensors": tensors}
    return build_file(META, graph, deflate=False)


def test_one_input(data: bytes) -> None:
    try:
        packed = build(data)
    except (ValueError, OverflowError, TypeError):  # the writer's own refusals (JSON caps, int64 range): no file
        return
    try:
        model = runtime.load(packed)
        feeds = {}
        for name, declared in model.inputs:
            shape = [v if isinstance(v, int) else 1 for v in declared]
            if int(np.prod(shape, dtype=np.int64)) > 1 << 22:
                return
            feeds[name] = np.ones(shape, dtype=np.float32)
        model.run(feeds)
    except EdgepackError:
        pass


def main() -> None:
    limit = int(os.environ.get("FUZZ_AS_LIMIT", 6 << 30))  # address space: numba and LLVM need ~2 GiB of it
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
