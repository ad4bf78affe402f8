"""A MobileNet-style conv net for the benchmarks, built with onnx.helper: a 3x3 stride-2 stem with HardSwish, then
depthwise 3x3 + pointwise 1x1 blocks with ReLU6 (Clip 0..6), global average pooling and a classifier; seeded He
weights with BatchNormalization folded into every conv, its statistics calibrated on random inputs so that each layer
sees unit-scale activations (as a trained net's BN would make them); packed with sparsity 0.5 and 6-bit codebooks.

    python benchmarks/mobilenet.py [--out benchmarks/out] [--sparsity 0.5] [--bits 6] [--seed 0]

Writes OUT/mobilenet.onnx and OUT/mobilenet.epk and prints the per-layer table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

# (kind, in channels, out channels, stride): the stem, then depthwise / pointwise pairs.
RESOLUTION = 32
CLASSES = 10
BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1), (256, 512, 2))


def layer_specs() -> list[tuple[str, int, int, int]]:
    specs = [("stem", 3, 32, 2)]
    for i, (cin, cout, stride) in enumerate(BLOCKS, 1):
        specs.append((f"dw{i}", cin, cin, stride))
        specs.append((f"pw{i}", cin, cout, 1))
    return specs


def _model(weights: dict, upto: str | None = None):
    """The ONNX model with the given (folded) weights; with `upto`, it ends at that conv's raw output (no bias, no
    activation), for calibrating its BatchNormalization."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], {}
    inits["relu6.min"] = np.array(0.0, np.float32)
    inits["relu6.max"] = np.array(6.0, np.float32)
    x = "input"
    out_name = "logits"
    for name, cin, cout, stride in layer_specs():
        w = weights[f"{name}.weight"]
        inits[f"{name}.weight"] = w
        group = cin if name.startswith("dw") else 1
        k = w.shape[-1]
        pads = [k // 2] * 4
        ins = [x, f"{name}.weight"]
        if name == upto:
            nodes.append(helper.make_node("Conv", ins, [name], name=name, group=group, strides=[stride, stride],
                                          pads=pads))
            out_name = name
            break
        inits[f"{name}.bias"] = weights[f"{name}.bias"]
        nodes.append(helper.make_node("Conv", ins + [f"{name}.bias"], [f"{name}.y"], name=name, group=group,
                                      strides=[stride, stride], pads=pads))
        if name == "stem":
            nodes.append(helper.make_node("HardSwish", [f"{name}.y"], [f"{name}.a"], name=f"{name}.hswish"))
        else:
            nodes.append(helper.make_node("Clip", [f"{name}.y", "relu6.min", "relu6.max"], [f"{name}.a"],
                                          name=f"{name}.relu6"))
        x = f"{name}.a"
    else:
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
        nodes.append(helper.make_node("Flatten", ["gap"], ["features"], name="flatten", axis=1))
        inits["fc.weight"] = weights["fc.weight"]
        inits["fc.bias"] = weights["fc.bias"]
        nodes.append(helper.make_node("Gemm", ["features", "fc.weight", "fc.bias"], ["logits"], name="fc",
                                      transB=1))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, RESOLUTION, RESOLUTION])]
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", "C", "H", "W"])] if upto else \
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])]
    g = helper.make_graph(nodes, "mobilenet_style", inputs, outputs,
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgepack benchmarks")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def build(path: str | Path, seed: int = 0, calibration: int = 256) -> Path:
    """Write the model to `path`: weights seeded, BN folded with statistics measured on `calibration` random inputs."""
    import onnx

    from edgepack.packer.verify import session

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((calibration, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    weights: dict[str, np.ndarray] = {}
    for name, cin, cout, _ in layer_specs():
        k, cin_g = (1, cin) if name.startswith("pw") else (3, 1 if name.startswith("dw") else cin)
        fan_in = cin_g * k * k
        weights[f"{name}.weight"] = (rng.standard_normal((cout, cin_g, k, k)) * np.sqrt(2 / fan_in)).astype(np.float32)
        weights[f"{name}.bias"] = np.zeros(cout, np.float32)
    for name, _, cout, _ in layer_specs():
        raw = session(_model(weights, upto=name)).run(None, {"input": x})[0]
        mean = raw.mean(axis=(0, 2, 3)).astype(np.float64)
        var = raw.var(axis=(0, 2, 3)).astype(np.float64)
        gamma = rng.uniform(0.5, 1.5, cout)
        beta = rng.normal(0.3, 0.3, cout)  # mostly positive: ReLU6 keeps about 60-70% of each channel
        scale = gamma / np.sqrt(var + 1e-5)
        weights[f"{name}.weight"] = (weights[f"{name}.weight"] * scale[:, None, None, None]).astype(np.float32)
        weights[f"{name}.bias"] = (beta - mean * scale).astype(np.float32)
    features = BLOCKS[-1][1]
    weights["fc.weight"] = (rng.standard_normal((CLASSES, features)) * np.sqrt(1 / features)).astype(np.float32)
    weights["fc.bias"] = np.zeros(CLASSES, np.float32)
    logits = session(_model(weights)).run(None, {"input": x})[0]
    # centre the logits so that the top-1 class varies with the input instead of following the largest bias
    weights["fc.bias"] = (-logits.mean(axis=0)).astype(np.float32)
    path = Path(path)
    onnx.save(_model(weights), str(path))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/out")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--bits", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    from edgepack.packer.pipeline import pack

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    src = build(out / "mobilenet.onnx", a.seed)
    report = pack(src, out / "mobilenet.epk", sparsity=a.sparsity, bits=a.bits)
    print(report.table())
    print(f"wrote {src} ({src.stat().st_size:,} B) and {report.path} ({report.total_bytes:,} B, {report.ratio:.1f}x)")


if __name__ == "__main__":
    main()
