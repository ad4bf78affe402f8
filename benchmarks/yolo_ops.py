"""The non-conv steps of the YOLO-style corpus nets (nudenet = YOLOv8n, ddddocr_det = YOLOX) on their shapes, batch 1,
one thread, against onnxruntime (intra_op_num_threads=1) on the same single node: SiLU (edgepack: the epilogue chain
kernel in place, as a Conv's chain runs it; ORT: Sigmoid + Mul, which it fuses), SPP / SPPF max pools, C2f's Split and
Concat, YOLOX's Focus slices. Each edgepack step is the bound step the executor runs (OpDef.bind on the plan's
views); the two engines alternate round by round in one process, CPU time of the calling thread, medians and
minimums, with /proc/loadavg (depthwise_pool.py's compare()).

    OPENBLAS_NUM_THREADS=1 python benchmarks/yolo_ops.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from onnx import helper

from depthwise_pool import compare, session  # noqa: E402 - the same single-node sessions and timing (benchmarks/)
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops import pool, shape, tensor

SILU = [(1, 32, 80, 80), (1, 64, 40, 40), (1, 16, 160, 160)]  # nudenet conv outputs
POOLS = [((1, 128, 10, 10), 5), ((1, 192, 13, 13), 5), ((1, 192, 13, 13), 9), ((1, 192, 13, 13), 13)]
SPLITS = [((1, 32, 80, 80), [16, 16]), ((1, 64, 40, 40), [32, 32]), ((1, 256, 10, 10), [128, 128])]
CONCATS = [[(1, 16, 80, 80)] * 3, [(1, 128, 20, 20), (1, 256, 20, 20)], [(1, 3, 208, 208)] * 4]
SLICES = [((1, 3, 416, 416), 2), ((1, 3, 208, 416), 3)]  # Focus: rows 0::2, then columns 1::2


def _op(name):
    return next(o for o in tensor.OPS + shape.OPS + pool.OPS if o.name == name)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    rounds = p.parse_args().rounds
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
    rng = np.random.default_rng(0)
    steps = np.float32([[conv_mod.CH_SILU, 0, 0, 0]])
    for s in SILU:
        x = (rng.standard_normal(s) * 3).astype(np.float32)
        y = x.copy().reshape(-1)
        save = np.empty(y.size, np.float32)
        sess = session([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])],
                       [("x", s)], {})
        compare(f"SiLU {'x'.join(map(str, s[1:]))} [chain, in place]",
                lambda: conv_mod._chain_kernel(y, save, steps), sess, {"x": x}, rounds)
    maxpool = _op("MaxPool")
    for s, k in POOLS:
        attrs = {"kernel_shape": [k, k], "pads": [k // 2] * 4}
        x = rng.standard_normal(s).astype(np.float32)
        (out_shape,) = maxpool.infer([s], attrs, [None])
        scratch = np.empty(maxpool.scratch_bytes([s], attrs), np.uint8)
        fn, args = maxpool.bind([x], attrs, [np.empty(out_shape, np.float32)], scratch)
        compare(f"MaxPool {'x'.join(map(str, s[1:]))} k{k} [{fn.__name__}]", lambda: fn(*args),
                session([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], [("x", s)], {}), {"x": x}, rounds)
    split = _op("Split")
    for s, sizes in SPLITS:
        attrs = {"axis": 1, "split": sizes}
        x = rng.standard_normal(s).astype(np.float32)
        outs = [np.empty(o, np.float32) for o in split.infer([s], attrs, [None])]
        fn, args = split.bind([x], attrs, outs)
        node = helper.make_node("Split", ["x", "sizes"], ["y", "z"], axis=1)
        compare(f"Split {'x'.join(map(str, s[1:]))} -> {sizes}", lambda: fn(*args),
                session([node], [("x", s)], {"sizes": np.array(sizes, np.int64)}), {"x": x}, rounds)
    concat = _op("Concat")
    for shapes in CONCATS:
        xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        (out_shape,) = concat.infer(shapes, {"axis": 1}, [None] * len(shapes))
        fn, args = concat.bind(xs, {"axis": 1}, [np.empty(out_shape, np.float32)])
        names = [f"x{i}" for i in range(len(xs))]
        compare(f"Concat {' + '.join('x'.join(map(str, s[1:])) for s in shapes)}", lambda: fn(*args),
                session([helper.make_node("Concat", names, ["y"], axis=1)], list(zip(names, shapes)), {}),
                dict(zip(names, xs)), rounds)
    sl = _op("Slice")
    for s, axis in SLICES:
        x = rng.standard_normal(s).astype(np.float32)
        consts = [np.array(v, np.int64) for v in ([axis - 2], [2 ** 62], [axis], [2])]
        (out_shape,) = sl.infer([s] + [c.shape for c in consts], {}, [None] + consts)
        fn, args = sl.bind([x] + consts, {}, [np.empty(out_shape, np.float32)])
        node = helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])
        compare(f"Slice {'x'.join(map(str, s[1:]))} axis {axis} step 2 [{fn.__name__}]", lambda: fn(*args),
                session([node], [("x", s)], dict(zip(("st", "en", "ax", "sp"), consts))), {"x": x}, rounds)


if __name__ == "__main__":
    main()
