"""Real-world-shaped models (tests/realzoo.py: MobileNetV2, ResNets with BN scales spread over 10^12, YOLO head,
transformer encoder layer, ConvTranspose decoder, tf2onnx-style classifier) through the whole tool: packed at 8 bits
under --max-error 0.01 the device runtime stays within the bound of onnxruntime on the original; pruned 50% it computes
what onnxruntime computes on the unpacked model; `edgepack info` finds every op supported; shape arithmetic folds away.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import realzoo
from edgepack import runtime
from edgepack.cli import main
from edgepack.packer.onnx_io import load_onnx
from edgepack.packer.pipeline import pack, weight_tensors
from edgepack.packer.unpack import unpack
from edgepack.packer.verify import session
from edgepack.runtime.loader import read_packed

BATCH = 8
BOUND = 0.01
F32_SLACK = 1e-4  # the runtime's float32 arithmetic against onnxruntime's, on top of the packing error
# what shape arithmetic is made of (none of the zoo's models Gathers activations; Unsqueeze on activations is kept)
SHAPE_OPS = {"Shape", "Size", "Gather", "Range", "ConstantOfShape", "Expand"}

ZOO = realzoo.zoo()
NAMES = list(ZOO)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("realzoo")
    return {name: realzoo.save(z["model"], d / f"{name}.onnx") for name, z in ZOO.items()}


def _calib(name: str, seed: int = 1) -> dict[str, np.ndarray]:
    z = ZOO[name]
    return {z["input"]: np.random.default_rng(seed).standard_normal((BATCH, *z["shape"])).astype(np.float32)}


def _input_shapes(name: str) -> dict | None:
    z = ZOO[name]
    return {z["input"]: [BATCH, *z["shape"]]} if z["static"] else None


def _ours(path, feeds) -> list[np.ndarray]:
    model = runtime.load(path)
    out = model.run(feeds)
    return [out[name].astype(np.float64) for name in model.outputs]


def _reference(onnx_path, feeds) -> list[np.ndarray]:
    return [o.astype(np.float64) for o in session(onnx_path).run(None, feeds)]


def _rel_l2(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    assert [g.shape for g in got] == [w.shape for w in want]
    return max(float(np.linalg.norm(g - w) / max(np.linalg.norm(w), 1e-30)) for g, w in zip(got, want))


# ---------------------------------------------------------------- the zoo is what it claims to be

def test_zoo_spells_ops_as_exporters_do():
    ops = {name: {n.op_type for n in z["model"].graph.node} for name, z in ZOO.items()}
    assert {"BatchNormalization", "HardSwish", "Clip", "HardSigmoid", "GlobalAveragePool", "Flatten",
            "Gemm", "Add"} <= ops["mobilenet_v2"]
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
               for n in ZOO["mobilenet_v2"]["model"].graph.node)  # depthwise
    assert {"BatchNormalization", "Relu", "MaxPool", "GlobalAveragePool", "Reshape", "Add"} <= ops["resnet_spread_mul"]
    assert {"Split", "Sigmoid", "Concat", "Resize", "Shape", "Gather", "Unsqueeze", "Reshape", "Transpose",
            "Pow"} <= ops["yolo_head"]
    assert {"MatMul", "Softmax", "Transpose", "Div", "ReduceMean", "Sub", "Pow", "Sqrt", "Erf", "Shape",
            "Gather"} <= ops["transformer"]
    assert "LayerNormalization" not in ops["transformer"]
    assert {"ConvTranspose", "BatchNormalization", "Gemm", "Reshape"} <= ops["decoder"]
    assert {"Transpose", "Pad", "Resize", "Shape", "Slice", "ReduceMean", "MatMul", "Squeeze", "Unsqueeze", "Cast",
            "Softmax"} <= ops["keras_style"]
    # weights as Constant nodes in some models, initializers in others
    for name in ("resnet_spread_mul", "transformer"):
        assert not ZOO[name]["model"].graph.initializer and "Constant" in ops[name]
    for name in ("mobilenet_v2", "resnet_spread_next", "yolo_head", "decoder", "keras_style"):
        assert len(ZOO[name]["model"].graph.initializer) > 10
    assert all(z["model"].opset_import[0].version == 17 for z in ZOO.values())


@pytest.mark.parametrize("name", ["resnet_spread_mul", "resnet_spread_next"])
def test_resnet_folded_channel_scales_span_twelve_orders(name, files):
    g = load_onnx(files[name])
    w = g.initializers["layer1.0.conv1.weight"]  # BN folded into it by the importer
    peak = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    assert peak.max() / peak.min() > 1e11
    if name == "resnet_spread_next":  # the next conv compensates: its input channels (columns) spread as much
        nxt = g.initializers["layer1.0.conv2.weight"]
        col = np.abs(nxt).max(axis=(0, 2, 3))
        assert col.max() / col.min() > 1e11
    # ... and the small channels matter: rounding to zero those a shared 8-bit codebook cannot resolve (below 1/256
    # of the largest) changes the output far beyond the bound
    from edgepack.packer.onnx_io import graph_to_onnx
    w2 = w.copy()
    w2[peak < peak.max() / 256] = 0
    feeds = _calib(name)
    a = session(graph_to_onnx(g)).run(None, feeds)[0]
    b = session(graph_to_onnx(g, {"layer1.0.conv1.weight": w2})).run(None, feeds)[0]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) > 10 * BOUND


# ---------------------------------------------------------------- the two checks, per model

@pytest.mark.parametrize("name", NAMES)
def test_packed_8_bits_within_max_error(name, files, tmp_path):
    feeds = _calib(name)
    out = tmp_path / f"{name}.epk"
    report = pack(files[name], out, sparsity=0, bits=8, max_error=BOUND, input_shapes=_input_shapes(name),
                  calib=feeds)
    assert report.fidelity.met, report.table()
    assert report.fidelity.after.rel_l2 <= BOUND
    err = _rel_l2(_ours(out, feeds), _reference(files[name], feeds))
    assert err <= BOUND + F32_SLACK, f"{name}: runtime vs original {err:.3g}\n{report.table()}"
    # static shapes: the packed graph holds compute ops only
    ops = {n["op"] for n in read_packed(out).graph["nodes"]}
    assert not ops & SHAPE_OPS, f"{name}: shape arithmetic left in the packed graph: {ops & SHAPE_OPS}"


@pytest.mark.parametrize("name", NAMES)
def test_pruned_half_runtime_equals_unpacked(name, files, tmp_path):
    feeds = _calib(name, seed=2)
    out, dense = tmp_path / f"{name}.epk", tmp_path / f"{name}.unpacked.onnx"
    pack(files[name], out, sparsity=0.5, bits=8, input_shapes=_input_shapes(name), check_fidelity=False)
    graph = unpack(out, dense)
    for tensor in weight_tensors(graph):
        w = graph.initializers[tensor]
        assert 0.45 <= np.mean(w == 0) <= 0.55, f"{tensor}: {np.mean(w == 0):.2f} zeros"
    want = _reference(dense, feeds)
    got = _ours(out, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        scale = float(np.abs(w).max())
        assert float(np.abs(g - w).max()) <= 1e-4 * scale, f"{name}: max |diff| {np.abs(g - w).max():.3g}, " \
                                                          f"output scale {scale:.3g}"
    # pruning changed the model (the comparison above is not between two copies of the original)
    assert _rel_l2(want, _reference(files[name], feeds)) > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_info_finds_every_op_supported(name, files, tmp_path, capsys):
    out = tmp_path / f"{name}.epk"
    pack(files[name], out, sparsity=0, bits=8, input_shapes=_input_shapes(name), check_fidelity=False)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "every op supported" in text and "cannot run" not in text


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["yolo_head", "transformer"]), batch=st.integers(1, 3), a=st.integers(1, 4),
       b=st.integers(1, 5))
def test_any_static_shape_folds_and_runs_like_onnxruntime(files, tmp_path, which, batch, a, b):
    """Specialised to other shapes (YOLO: H, W multiples of 8; transformer: sequence length), the folded graph still
    computes what onnxruntime computes on the unpacked model, and the shape arithmetic is gone."""
    z = ZOO[which]
    shape = [batch, 3, 8 * a, 8 * b] if which == "yolo_head" else [batch, a * b, z["shape"][1]]
    out, dense = tmp_path / f"{which}_{batch}_{a}_{b}.epk", tmp_path / f"{which}_{batch}_{a}_{b}.onnx"
    pack(files[which], out, sparsity=0.3, bits=6, input_shapes={"x": shape}, check_fidelity=False)
    unpack(out, dense)
    feeds = {"x": np.random.default_rng(a * 7 + b).standard_normal(shape).astype(np.float32)}
    got, want = _ours(out, feeds), _reference(dense, feeds)
    assert got[0].shape == want[0].shape == _reference(files[which], feeds)[0].shape
    assert float(np.abs(got[0] - want[0]).max()) <= 1e-4 * float(np.abs(want[0]).max())
    assert not {n["op"] for n in read_packed(out).graph["nodes"]} & SHAPE_OPS


def test_pack_without_input_shape_names_the_input(files, tmp_path):
    report = pack(files["transformer"], tmp_path / "t.epk", sparsity=0, bits=8, check_fidelity=False)
    assert any("--input-shape x=" in w for w in report.warnings)
