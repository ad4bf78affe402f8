"""Data-free bias correction (packer/bias_correction.py): E[x] from batch norm statistics through elementwise ops,
checked against closed forms and numerical integration (numpy), and end to end on a packed model whose batch norm
statistics are exact for its inputs: the mean output shift that the quantised weight causes is removed."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack.packer import bias_correction as bc
from edgepack.packer.onnx_io import load_onnx

C_IN, C_MID, C_OUT, HW = 4, 8, 6, 12


def _norm_pdf(z):
    return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _norm_cdf(z):
    return 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))


def _integrate(f, mean, std, n=200001):
    """E[f(z)], z ~ N(mean, std^2) per channel, by the trapezoidal rule on a dense grid over +-12 std."""
    out = []
    for m, s in zip(mean, std):
        z = np.linspace(m - 12 * s, m + 12 * s, n)
        out.append(np.trapezoid(f(z) * _norm_pdf((z - m) / s) / s, z))
    return np.array(out)


def _model(path, act: str, rng, *, first_input_bn=True, pool=False, shared_bias=False, bn_vars=None):
    """x -> Conv1 (3x3, valid) -> BatchNormalization -> act -> [MaxPool] -> Conv2 (1x1) -> y, saved at path; returns
    (gamma, beta, W1, b1). With x ~ N(0, 1) iid, Conv1's output channel o is exactly N(b1[o], sum W1[o]^2): the batch
    norm's statistics are set to that, so its output channel c is N(beta[c], gamma[c]^2) on such inputs."""
    w1 = rng.normal(0, 0.3, (C_MID, C_IN, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.2, C_MID).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, C_MID).astype(np.float32) * rng.choice([-1, 1], C_MID).astype(np.float32)
    beta = rng.normal(0.3, 1.0, C_MID).astype(np.float32)
    mean = b1.copy()
    var = (w1.astype(np.float64) ** 2).reshape(C_MID, -1).sum(1).astype(np.float32) if bn_vars is None else bn_vars
    w2 = rng.normal(0, 0.3, (C_OUT, C_MID, 1, 1)).astype(np.float32)
    b2 = rng.normal(0, 0.1, C_OUT).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"), (w2, "w2"),
              (b2, "b2"))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], name="bn",
                              epsilon=0.0)]
    if not first_input_bn:  # the second conv reads the model's input side: nothing to trace
        nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["bn"], name="conv1")]
    if act == "relu":
        nodes.append(helper.make_node("Relu", ["bn"], ["a"], name="act"))
    elif act == "hardswish":  # as paddle2onnx writes it: x * clip(x + 3, 0, 6) / 6
        inits += [numpy_helper.from_array(np.array(v, np.float32), n) for v, n in
                  ((3.0, "three"), (0.0, "zero"), (6.0, "six"))]
        nodes += [helper.make_node("Add", ["bn", "three"], ["h1"], name="h1"),
                  helper.make_node("Clip", ["h1", "zero", "six"], ["h2"], name="h2"),
                  helper.make_node("Mul", ["bn", "h2"], ["h3"], name="h3"),
                  helper.make_node("Div", ["h3", "six"], ["a"], name="h4")]
    elif act == "silu":
        nodes += [helper.make_node("Sigmoid", ["bn"], ["s"], name="sig"),
                  helper.make_node("Mul", ["bn", "s"], ["a"], name="act")]
    else:
        raise ValueError(act)
    src = "a"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2]))
        src = "p"
    nodes.append(helper.make_node("Conv", [src, "w2", "b2"], ["y"], name="conv2"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if shared_bias:  # a second node reads b2: its bias cannot be changed for conv2 alone
        nodes.append(helper.make_node("Add", ["y", "b2r"], ["y2"], name="use_b2"))
        nodes.append(helper.make_node("Reshape", ["b2", "shape"], ["b2r"], name="reshape_b2"))
        inits.append(numpy_helper.from_array(np.array([1, C_OUT, 1, 1], np.int64), "shape"))
        outputs = [helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)]
    g = helper.make_graph(nodes, "bc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C_IN, HW, HW])],
                          outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return gamma.astype(np.float64), beta.astype(np.float64), w2


ACTS = {"relu": lambda z: np.maximum(z, 0), "hardswish": lambda z: z * np.clip(z + 3, 0, 6) / 6,
        "silu": lambda z: z / (1 + np.exp(-z))}


@pytest.mark.parametrize("act", sorted(ACTS))
def test_expected_input_matches_integration(tmp_path, act):
    rng = np.random.default_rng(1)
    gamma, beta, _ = _model(tmp_path / "m.onnx", act, rng)
    stats = bc.batchnorm_stats(tmp_path / "m.onnx")
    assert set(stats) == {"bn"}
    np.testing.assert_allclose(stats["bn"][0], beta)
    np.testing.assert_allclose(stats["bn"][1], np.abs(gamma))
    g = load_onnx(tmp_path / "m.onnx")  # the batch norm is folded into conv1, whose output keeps its name
    conv2 = next(n for n in g.nodes if n.name == "conv2")
    got = bc.expected_inputs(g, stats, [conv2])["conv2"]
    want = _integrate(ACTS[act], beta, np.abs(gamma))
    if act == "relu":  # closed form too: E[max(z, 0)] = m Phi(m / s) + s phi(m / s)
        s = np.abs(gamma)
        np.testing.assert_allclose(want, beta * _norm_cdf(beta / s) + s * _norm_pdf(beta / s), rtol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(gamma).max())


def test_correction_is_the_weight_error_times_the_mean(tmp_path):
    rng = np.random.default_rng(2)
    gamma, beta, w2 = _model(tmp_path / "m.onnx", "relu", rng)
    g = load_onnx(tmp_path / "m.onnx")
    q = (w2 + rng.normal(0, 0.05, w2.shape)).astype(np.float32)
    fixed = bc.bias_corrections(g, {"w2": q}, bc.batchnorm_stats(tmp_path / "m.onnx"))
    assert set(fixed) == {"b2"}
    s = np.abs(gamma)
    ex = beta * _norm_cdf(beta / s) + s * _norm_pdf(beta / s)
    want = g.initializers["b2"].astype(np.float64) - (q - w2).astype(np.float64).reshape(C_OUT, C_MID) @ ex
    tol = 1e-3 * np.abs(q - w2).sum(axis=(1, 2, 3)).max() * s.max()
    np.testing.assert_allclose(fixed["b2"], want, rtol=1e-5, atol=tol)


def test_depthwise_groups(tmp_path):
    """A depthwise conv (group = channels): output channel c's shift is its own kernel's summed error times E[x_c]."""
    rng = np.random.default_rng(3)
    gamma, beta, _ = _model(tmp_path / "m.onnx", "relu", rng)
    g = load_onnx(tmp_path / "m.onnx")
    conv2 = next(n for n in g.nodes if n.name == "conv2")
    wd = rng.normal(0, 0.3, (C_MID, 1, 3, 3)).astype(np.float32)
    g.initializers["w2"], g.initializers["b2"] = wd, np.zeros(C_MID, np.float32)
    conv2.attrs["group"] = ("int", C_MID)
    q = (wd + rng.normal(0, 0.05, wd.shape)).astype(np.float32)
    fixed = bc.bias_corrections(g, {"w2": q}, bc.batchnorm_stats(tmp_path / "m.onnx"))
    ex = bc.expected_inputs(g, bc.batchnorm_stats(tmp_path / "m.onnx"), [conv2])["conv2"]
    np.testing.assert_allclose(fixed["b2"], -(q - wd).astype(np.float64).reshape(C_MID, -1).sum(1) * ex, rtol=1e-5,
                               atol=1e-7)


@pytest.mark.parametrize("case", ["no_batchnorm", "maxpool", "shared_bias"])
def test_untraceable_layers_keep_their_bias(tmp_path, case):
    rng = np.random.default_rng(4)
    _, _, w2 = _model(tmp_path / "m.onnx", "relu", rng, first_input_bn=case != "no_batchnorm", pool=case == "maxpool",
                      shared_bias=case == "shared_bias")
    g = load_onnx(tmp_path / "m.onnx")
    q = (w2 + 0.05).astype(np.float32)
    assert bc.bias_corrections(g, {"w2": q}, bc.batchnorm_stats(tmp_path / "m.onnx")) == {}


def test_pack_removes_the_mean_shift(tmp_path):
    """Packed at 2 bits (conv1 kept dense, so that conv2's inputs are distributed as the batch norm says), the mean
    over many N(0, 1) inputs of the output error per channel is near zero with the correction and not without; the
    file says how many biases were corrected."""
    import edgepack
    from edgepack.packer.pipeline import pack

    rng = np.random.default_rng(5)
    _model(tmp_path / "m.onnx", "hardswish", rng)
    cfg = {"default": {"bits": 2}, "layers": {"w1": {"encoding": "dense"}}}
    xs = np.random.default_rng(6).normal(0, 1, (200, 1, C_IN, HW, HW)).astype(np.float32)
    from edgepack.packer.verify import session

    ref = np.stack([session(str(tmp_path / "m.onnx")).run(None, {"x": x})[0] for x in xs])
    shift = {}
    for on in (False, True):
        out = tmp_path / f"m_{on}.epk"
        rep = pack(tmp_path / "m.onnx", out, sparsity=0.0, config=cfg, check_fidelity=False, bias_correction=on)
        assert rep.settings.get("bias_correction") == ({"corrected": 1} if on else None)
        model = edgepack.load(out)
        got = np.stack([model.run({"x": x})["y"] for x in xs])
        shift[on] = np.abs((got - ref).mean(axis=(0, 1, 3, 4))).max() / ref.std()
    assert shift[False] > 0.02  # 2-bit codebooks do shift the mean here
    assert shift[True] < 0.25 * shift[False]


def test_no_correction_with_calibration_or_max_error(tmp_path):
    """The compensated path (calibration statistics) and --max-error (the guard's measured bound) are left alone."""
    from edgepack.packer.pipeline import pack

    rng = np.random.default_rng(7)
    _model(tmp_path / "m.onnx", "relu", rng)
    cfg = {"default": {"bits": 2}, "layers": {"w1": {"encoding": "dense"}}}
    rep = pack(tmp_path / "m.onnx", tmp_path / "a.epk", sparsity=0.0, config=cfg, max_error=10.0)
    assert "bias_correction" not in rep.settings
    calib = np.random.default_rng(8).normal(0, 1, (8, 1, C_IN, HW, HW)).astype(np.float32)
    rep = pack(tmp_path / "m.onnx", tmp_path / "b.epk", sparsity=0.0, config=cfg, calib=calib)
    assert "bias_correction" not in rep.settings
    rep = pack(tmp_path / "m.onnx", tmp_path / "c.epk", sparsity=0.0, config=cfg)
    assert rep.settings["bias_correction"] == {"corrected": 1}


def _ir(nodes: list[tuple], inits: dict | None = None):
    """A graph IR from (op, inputs, output, attrs) tuples, with a consumer Conv named 'conv' reading 'x'."""
    from edgepack.packer.graph import Graph, Node

    ns = [Node(op, f"n{i}", list(ins), [out], {k: v for k, v in (attrs or {}).items()})
          for i, (op, ins, out, attrs) in enumerate(nodes)]
    conv = Node("Conv", "conv", ["x", "w", "b"], ["y"])
    return Graph("t", [], [], ns + [conv], dict(inits or {}), 17), conv


def _relu_mean(m, s):
    return m * _norm_cdf(m / s) + s * _norm_pdf(m / s)


STATS = {"a": (np.array([0.5, -1.0]), np.array([1.0, 2.0])),
         "b": (np.array([0.2, 0.3, -0.4]), np.array([0.5, 1.0, 3.0]))}


def test_concat_of_channels_keeps_each_distribution():
    g, conv = _ir([("Concat", ["a", "b"], "c", {"axis": ("int", 1)}), ("Relu", ["c"], "x", None)])
    got = bc.expected_inputs(g, STATS, [conv])["conv"]
    want = np.concatenate([_relu_mean(*STATS["a"]), _relu_mean(*STATS["b"])])
    np.testing.assert_allclose(got, want, rtol=1e-3)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "Resize-linear"])
def test_averages_keep_the_mean_only(op):
    attrs = {"mode": ("string", "linear")} if op == "Resize-linear" else None
    op = op.split("-")[0]
    g, conv = _ir([("Relu", ["a"], "r", None), (op, ["r"], "x", attrs)])
    np.testing.assert_allclose(bc.expected_inputs(g, STATS, [conv])["conv"], _relu_mean(*STATS["a"]), rtol=1e-3)
    g, conv = _ir([(op, ["a"], "p", attrs), ("Relu", ["p"], "x", None)])  # a ReLU of an average: not known
    assert bc.expected_inputs(g, STATS, [conv]) == {}


def test_nearest_resize_keeps_the_distribution():
    g, conv = _ir([("Resize", ["a"], "p", None), ("Relu", ["p"], "x", None)])
    np.testing.assert_allclose(bc.expected_inputs(g, STATS, [conv])["conv"], _relu_mean(*STATS["a"]), rtol=1e-3)


def test_sum_of_two_batch_norms_keeps_the_mean_only():
    stats = {"a": STATS["a"], "b": (np.array([0.2, 0.3]), np.array([0.5, 1.0]))}
    g, conv = _ir([("Add", ["a", "b"], "x", None)])
    np.testing.assert_allclose(bc.expected_inputs(g, stats, [conv])["conv"], stats["a"][0] + stats["b"][0],
                               atol=1e-6)
    g, conv = _ir([("Add", ["a", "b"], "s", None), ("Relu", ["s"], "x", None)])
    assert bc.expected_inputs(g, stats, [conv]) == {}
    g, conv = _ir([("Mul", ["a", "b"], "x", None)])  # E[ab] needs their joint distribution
    assert bc.expected_inputs(g, stats, [conv]) == {}


def test_constant_not_laid_out_per_channel_stops_the_trace():
    """A rank-1 constant broadcasts along W, not along channels: the trace stops rather than guess."""
    g, conv = _ir([("Add", ["a", "k"], "x", None)], {"k": np.ones(2, np.float32)})
    assert bc.expected_inputs(g, STATS, [conv]) == {}
    g, conv = _ir([("Add", ["a", "k"], "x", None)], {"k": np.array([1.0, 2.0], np.float32).reshape(2, 1, 1)})
    np.testing.assert_allclose(bc.expected_inputs(g, STATS, [conv])["conv"], STATS["a"][0] + [1.0, 2.0], atol=1e-6)
