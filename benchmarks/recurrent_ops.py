"""The recurrent models' heavy ops on their corpus shapes, one thread: edgepack's LSTM (runtime/ops/recurrent.py) and
the classifier Gemm (runtime/ops/linear.py, each held form) against onnxruntime (intra_op_num_threads=1) on the same
single node; the two alternate round by round in one process, CPU time of the calling thread (what time slicing on
a shared machine does not inflate), medians, with /proc/loadavg.

    OPENBLAS_NUM_THREADS=1 python benchmarks/recurrent_ops.py [--rounds 5] [--only lstm,gemm]

Shapes: ddddocr_common's bidirectional LSTM (22 steps, batch 1, 512 -> 512, initial states given) and its
1024 -> 8210 classifier at 22 rows (dense float32, 8-bit codebook, and the codebook's rows form); openWakeWord hey_mycroft's and silero_vad's
LSTMs; each LSTM with W as float32 and as 8-bit dense codes (what a file packed at --bits 8 holds; a model runs the
codes only where recurrent.codes_projection_pays at its steps x batch rows, else expands W to float32 at load: the
codes rows are marked "(model: float32)" there).
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
from edgepack.runtime.ops import registry
from edgepack.runtime.ops.recurrent import codes_projection_pays
from edgepack.runtime.ops.linear import bind_linear, prepare_linear
from edgepack.runtime.weights import CodebookWeight, DenseWeight

registry.register_all()

# (name, seq, batch, input size, hidden, direction, initial states given)
LSTMS = [("ddddocr_common", 22, 1, 512, 512, "bidirectional", True),
         ("oww_hey_mycroft 1", 16, 1, 96, 64, "bidirectional", False),
         ("oww_hey_mycroft 2", 16, 1, 128, 32, "bidirectional", False),
         ("silero_vad", 1, 1, 128, 128, "forward", True)]
# (name, rows, k, n)
GEMMS = [("ddddocr_common classifier", 22, 1024, 8210)]


def cpu_times(fn, n):
    fn()
    out = []
    for _ in range(n):
        t0 = time.thread_time()
        fn()
        out.append(time.thread_time() - t0)
    return out


def session(nodes, inputs, outputs, inits):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.log_severity_level = 3
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def compare(label, ours, theirs, rounds):
    t_ep, t_ort = [], []
    for _ in range(rounds):
        t_ep += cpu_times(ours, 5)
        t_ort += cpu_times(theirs, 5)
    ep, o = 1e3 * np.median(t_ep), 1e3 * np.median(t_ort)
    print(f"{label}: edgepack {ep:7.3f} ms, ORT {o:7.3f} ms, ORT/edgepack {o / ep:5.2f}x  (loadavg {loadavg()})",
          flush=True)


def lstm_case(name, seq, batch, n_in, hid, direction, states, rounds):
    rng = np.random.default_rng(0)
    d = 2 if direction == "bidirectional" else 1
    x = rng.standard_normal((seq, batch, n_in)).astype(np.float32)
    w = (rng.standard_normal((d, 4 * hid, n_in)) * 0.1).astype(np.float32)
    r = (rng.standard_normal((d, 4 * hid, hid)) * 0.1).astype(np.float32)
    b = (rng.standard_normal((d, 8 * hid)) * 0.1).astype(np.float32)
    h0 = rng.standard_normal((d, batch, hid)).astype(np.float32) if states else None
    c0 = rng.standard_normal((d, batch, hid)).astype(np.float32) if states else None
    # W as 8-bit dense codes (256 levels at its quantiles), as a file packed at --bits 8 holds it: the runtime
    # projects from the codes (runtime/model.py HELD_CODES_INPUT) or, for the float32 row, from the decoded copy
    codebook = np.quantile(w, (np.arange(256) + 0.5) / 256).astype(np.float32)
    codes = np.abs(w.reshape(-1, 1) - codebook[None, :]).argmin(axis=1).astype(np.uint8).reshape(d * 4 * hid, n_in)
    w = codebook[codes].reshape(w.shape)
    attrs = {"direction": direction, "hidden_size": hid}
    names = ["x", "W", "R", "B", "", "h0" if states else "", "c0" if states else ""]
    sess = session([helper.make_node("LSTM", names, ["y", "yh", "yc"], **attrs)],
                   ["x"] + (["h0", "c0"] if states else []), ["y", "yh", "yc"], {"W": w, "R": r, "B": b})
    feeds = {"x": x, **({"h0": h0, "c0": c0} if states else {})}
    op = registry.get("LSTM", "lstm")
    for held, w_in in (("W float32", w), ("W codes", CodebookWeight(w.shape, codebook, codes, None, row_dims=2))):
        inputs = [x, w_in, r, b, None, h0, c0]
        shapes = [None if a is None else a.shape for a in inputs]
        outs = [np.empty(s, np.float32) for s in op.infer(shapes, attrs, inputs)]
        fn, args = op.bind(inputs, attrs, outs, np.empty(op.scratch_bytes(shapes, attrs), np.uint8))
        fn(*args)
        ref = sess.run(None, feeds)
        err = max(float(np.max(np.abs(a - e))) for a, e in zip(outs, ref))
        note = " (model: float32)" if held == "W codes" and not codes_projection_pays(seq * batch) else ""
        compare(f"LSTM {name} seq {seq} batch {batch} {n_in}->{hid} {direction} {held:9s}{note} (max |diff| "
                f"{err:.1e})", lambda: fn(*args), lambda: sess.run(None, feeds), rounds)


def gemm_case(name, rows, k, n, rounds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    codebook = np.sort(rng.standard_normal(256)).astype(np.float32) * 0.05
    codes = rng.integers(0, 256, (n, k)).astype(np.uint8)
    w = codebook[codes]
    bias = rng.standard_normal(n).astype(np.float32)
    sess = session([helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)], ["x"], ["y"], {"W": w, "B": bias})
    cw = CodebookWeight(w.shape, codebook, codes, None)
    for kind, weight, form in (("dense", DenseWeight(w), ""), ("codebook", cw, ""), ("codebook rows", cw, "rows")):
        prepared = prepare_linear(weight, True, form)
        out = np.empty((rows, n), np.float32)
        fn, args = bind_linear(x, prepared, bias, 1.0, 1.0, out)
        fn(*args)
        err = float(np.max(np.abs(out - sess.run(None, {"x": x})[0])))
        compare(f"Gemm {name} {rows}x{k} -> {n} {kind:13s} (max |diff| {err:.1e})", lambda: fn(*args),
                lambda: sess.run(None, {"x": x}), rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", default="lstm,gemm")
    a = p.parse_args()
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}")
    if "lstm" in a.only:
        for case in LSTMS:
            lstm_case(*case, a.rounds)
    if "gemm" in a.only:
        for case in GEMMS:
            gemm_case(*case, a.rounds)


if __name__ == "__main__":
    main()
