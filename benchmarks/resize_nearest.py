"""Nearest Resize on the upsampling shapes of the corpus's YOLO necks (nudenet = YOLOv8n: scales (1, 1, 2, 2),
asymmetric / floor as torch exports Upsample(scale_factor=2)), batch 1, one thread: the bound step the executor runs
(OpDef.bind: whole-factor upsampling goes to resize._repeat2d_kernel), the index-table kernel it replaced
(_nearest2d_kernel, still the path of every other nearest table) on the same tables, and onnxruntime
(intra_op_num_threads=1) on the same single node. The engines alternate round by round in one process, CPU time of
the calling thread, medians and minimums, with /proc/loadavg (depthwise_pool.py's compare()).

    OPENBLAS_NUM_THREADS=1 python benchmarks/resize_nearest.py [--rounds 7]
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from onnx import helper

from depthwise_pool import compare, session  # noqa: E402 - the same single-node sessions and timing (benchmarks/)
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime.ops import resize

# (input shape, scales): nudenet's two necks, a 3x upsampling and a non-square one
SHAPES = [((1, 256, 10, 10), (1, 1, 2, 2)), ((1, 128, 20, 20), (1, 1, 2, 2)), ((1, 64, 40, 40), (1, 1, 2, 2)),
          ((1, 32, 26, 26), (1, 1, 3, 3)), ((1, 96, 13, 20), (1, 1, 2, 1))]
ATTRS = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    rounds = p.parse_args().rounds
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
    op = resize.OPS[0]
    rng = np.random.default_rng(0)
    for s, scales in SHAPES:
        x = rng.standard_normal(s).astype(np.float32)
        sc = np.array(scales, np.float32)
        inputs = [x, None, sc]
        (out_shape,) = op.infer([s, None, sc.shape], ATTRS, [None, None, sc])
        out = np.empty(out_shape, np.float32)
        fn, args = op.bind(inputs, ATTRS, [out])
        sess = session([helper.make_node("Resize", ["x", "roi", "scales"], ["y"], **ATTRS)], [("x", s)],
                       {"roi": np.zeros(0, np.float32), "scales": sc})
        label = f"Resize {'x'.join(map(str, s[1:]))} x{scales[2]:g}x{scales[3]:g}"
        compare(f"{label} [{fn.__name__}]", lambda: fn(*args), sess, {"x": x}, rounds)
        _, _, tables = resize._tables_of(inputs, ATTRS)
        x3 = x.reshape(-1, *s[-2:])
        o3 = np.empty_like(out).reshape(-1, *out_shape[-2:])
        ty = tables.get(2, np.arange(s[2], dtype=np.int64))
        tx = tables.get(3, np.arange(s[3], dtype=np.int64))
        compare(f"{label} [_nearest2d_kernel]", lambda: resize._nearest2d_kernel(x3, o3, ty, tx), sess, {"x": x},
                rounds)
        fn(*args)
        resize._nearest2d_kernel(x3, o3, ty, tx)
        np.testing.assert_array_equal(out.reshape(o3.shape), o3)


if __name__ == "__main__":
    main()
