"""The runtime end to end (runtime/model.py, executor.py, layers.py): packed models against onnxruntime on their
unpacked form, every weight mode against the others, determinism, the executor's use of the arena, load-time
validation (unsupported ops, bad attributes and shapes) and Model.run's input checks; `edgepack run` in-process.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import runtime
import zoo
from edgepack.cli import main
from edgepack.packer.onnx_io import graph_to_onnx
from edgepack.packer.pipeline import pack
from edgepack.packer.unpack import packed_to_graph
from edgepack.packer.verify import session
from edgepack.runtime.errors import FormatError, InputError, UnsupportedError



# ------------------------------------------------------------------------------------------------ models


def _finish(nodes, inputs, outputs, tensors, name, opset=17):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in tensors.items()]
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _w(rng, *shape, fan_in=None):
    fan_in = fan_in or int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _b(rng, n):
    return (0.1 * rng.standard_normal(n)).astype(np.float32)


def lenet300(seed: int = 7) -> onnx.ModelProto:
    """LeNet-300-100's shape: 784 -> 300 -> 100 -> 10, Gemm transB=1 as PyTorch exports it, ReLU between."""
    rng = np.random.default_rng(seed)
    sizes = [784, 300, 100, 10]
    nodes, tensors, prev = [], {}, "x"
    for i in range(3):
        tensors[f"ip{i + 1}.w"] = _w(rng, sizes[i + 1], sizes[i])
        tensors[f"ip{i + 1}.b"] = _b(rng, sizes[i + 1])
        out = f"h{i + 1}" if i < 2 else "y"
        nodes.append(helper.make_node("Gemm", [prev, f"ip{i + 1}.w", f"ip{i + 1}.b"], [out], name=f"ip{i + 1}",
                                      transB=1))
        if i < 2:
            nodes.append(helper.make_node("Relu", [out], [out + "r"], name=f"relu{i + 1}"))
            prev = out + "r"
    return _finish(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], tensors, "lenet300")


def lenet5(seed: int = 5) -> onnx.ModelProto:
    """LeNet-5 as in Caffe: conv20@5x5, pool, conv50@5x5, pool, fc 800->500, ReLU, fc 500->10 (1x28x28 input)."""
    rng = np.random.default_rng(seed)
    t = {"c1.w": _w(rng, 20, 1, 5, 5), "c1.b": _b(rng, 20), "c2.w": _w(rng, 50, 20, 5, 5), "c2.b": _b(rng, 50),
         "ip1.w": _w(rng, 500, 800), "ip1.b": _b(rng, 500), "ip2.w": _w(rng, 10, 500), "ip2.b": _b(rng, 10)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", kernel_shape=[5, 5]),
             n("MaxPool", ["c1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
             n("Conv", ["p1", "c2.w", "c2.b"], ["c2"], name="conv2", kernel_shape=[5, 5]),
             n("MaxPool", ["c2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
             n("Flatten", ["p2"], ["f"], name="flatten"),
             n("Gemm", ["f", "ip1.w", "ip1.b"], ["h"], name="ip1", transB=1),
             n("Relu", ["h"], ["hr"], name="relu"),
             n("Gemm", ["hr", "ip2.w", "ip2.b"], ["y"], name="ip2", transB=1)]
    return _finish(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], t, "lenet5")


def mixed(seed: int = 3) -> onnx.ModelProto:
    """Most supported ops in one graph, two outputs: strided, padded and depthwise Conv, pools, Concat, a Gemm with
    transA=1 (input transposed in scratch), a MatMul of a rank-3 input by a constant (K, N) weight (its rows are
    inputs: the scatter path), a MatMul of two activations, Transpose, Reshape, Softmax and activations."""
    rng = np.random.default_rng(seed)
    t = {"c1.w": _w(rng, 16, 3, 3, 3), "c1.b": _b(rng, 16), "dw.w": _w(rng, 16, 1, 3, 3), "g.w": _w(rng, 96, 80),
         "g.b": _b(rng, 96), "mm.w": _w(rng, 32, 24, fan_in=32), "scale": np.float32([1.5]),
         "shift": rng.standard_normal(96).astype(np.float32), "shape1": np.int64([-1, 3, 32]),
         "shape2": np.int64([-1, 72])}
    n = helper.make_node
    nodes = [n("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("Conv", ["r1", "dw.w"], ["dw"], name="depthwise", group=16, strides=[2, 2], pads=[1, 1, 1, 1]),
             n("LeakyRelu", ["dw"], ["l1"], name="leaky", alpha=0.1),
             n("AveragePool", ["l1"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
             n("GlobalAveragePool", ["l1"], ["gp"], name="gap"),
             n("Flatten", ["ap"], ["f1"], name="flat1"),
             n("Flatten", ["gp"], ["f2"], name="flat2"),
             n("Concat", ["f1", "f2"], ["cat"], name="concat", axis=1),
             n("Transpose", ["cat"], ["catT"], name="transpose_in", perm=[1, 0]),
             n("Gemm", ["catT", "g.w", "g.b"], ["g"], name="gemm_ta", transA=1, transB=1),
             n("Sigmoid", ["g"], ["s"], name="sigmoid"),
             n("Mul", ["s", "scale"], ["sm"], name="mul"),
             n("Add", ["sm", "shift"], ["sa"], name="add"),
             n("HardSigmoid", ["sa"], ["cl"], name="hardsigmoid", alpha=0.3, beta=0.4),
             n("Reshape", ["cl", "shape1"], ["r3"], name="reshape3"),
             n("MatMul", ["r3", "mm.w"], ["m3"], name="matmul_kn"),
             n("HardSwish", ["m3"], ["hs"], name="hardswish"),
             n("Transpose", ["hs"], ["hsT"], name="transpose3", perm=[0, 2, 1]),
             n("MatMul", ["hs", "hsT"], ["dyn"], name="matmul_dyn"),
             n("Tanh", ["dyn"], ["y2"], name="tanh"),
             n("Reshape", ["hsT", "shape2"], ["r2"], name="reshape2"),
             n("Softmax", ["r2"], ["y1"], name="softmax", axis=-1)]
    return _finish(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                   [helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["N", 72]),
                    helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 3, 3])], t, "mixed")


MODELS = {"mlp": zoo.mlp, "cnn": zoo.cnn, "cnn_spread": lambda: zoo.cnn(scale_spread=2.0), "mixed": mixed}
SETTINGS = [(0.0, 8), (0.5, 5), (0.95, 8), (0.95, 5)]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(model name, sparsity, bits) -> packed file path, packed once per module."""
    root = tmp_path_factory.mktemp("packed")
    cache = {}

    def get(name, sparsity=0.5, bits=5, config=None):
        key = (name, sparsity, bits)
        if key not in cache:
            proto = {"lenet300": lenet300, "lenet5": lenet5, **MODELS}[name]()
            src = zoo.save(proto, root / f"{name}.onnx")
            out = root / f"{name}-{sparsity}-{bits}.epk"
            pack(src, out, sparsity=sparsity, bits=bits, config=config)
            cache[key] = str(out)
        return cache[key]
    return get


def reference(path: str, feeds: dict) -> dict:
    """onnxruntime on the dense unpacked model: what the packed file means."""
    graph = packed_to_graph(path)
    sess = session(graph_to_onnx(graph))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def inputs_for(model: runtime.Model, batch: int, seed: int = 0, relu: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, decl in model.inputs:
        shape = [d if isinstance(d, int) else batch for d in decl]
        x = rng.standard_normal(shape).astype(np.float32)
        feeds[name] = np.maximum(x, 0) if relu else x  # zero inputs exercise the kernels' zero skipping
    return feeds


def assert_close_to(ref: dict, got: dict, rel: float = 1e-4) -> None:
    assert set(got) == set(ref)
    for name, r in ref.items():
        assert got[name].shape == r.shape and got[name].dtype == np.float32
        scale = max(float(np.abs(r).max()), 1e-6)
        err = float(np.abs(got[name] - r).max())
        assert err <= rel * scale, f"{name}: max abs error {err:.3g} > {rel} x output scale {scale:.3g}"


# ------------------------------------------------------------------------------------------------ correctness


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("sparsity,bits", SETTINGS)
def test_matches_onnxruntime_in_every_mode(packed, name, sparsity, bits):
    path = packed(name, sparsity, bits)
    models = {mode: runtime.load(path, layer_modes=mode) for mode in runtime.layers.MODES}
    for batch in (1, 5):
        feeds = inputs_for(models["compact"], batch, seed=batch)
        ref = reference(path, feeds)
        outs = {mode: m.run(feeds) for mode, m in models.items()}
        for mode, got in outs.items():
            assert_close_to(ref, got)
        for out in ref:
            # csr and streamed sum the same products in the same order as compact: equal within rounding noise
            for mode in ("csr", "streamed"):
                np.testing.assert_allclose(outs[mode][out], outs["compact"][out], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,config", [
    ("lenet300", {"default": {"bits": 6}, "layers": {"ip1": {"sparsity": 0.92}, "ip2": {"sparsity": 0.91},
                                                     "ip3": {"sparsity": 0.74}}}),
    ("lenet5", {"layers": {"conv1": {"sparsity": 0.34, "bits": 8}, "conv2": {"sparsity": 0.88, "bits": 8},
                           "ip1": {"sparsity": 0.92, "bits": 5}, "ip2": {"sparsity": 0.81, "bits": 5}}}),
])
def test_lenets_at_deep_compression_settings(packed, name, config):
    path = packed(name, None, None, config)
    for mode in (None, "streamed", "dense"):
        model = runtime.load(path, layer_modes=mode)
        for batch in (1, 5):
            feeds = inputs_for(model, batch, seed=3)
            assert_close_to(reference(path, feeds), model.run(feeds))


def test_lenet300_default_plan_is_compact(packed):
    """At 8% density dense float32 is not clearly faster (and 16x the bytes): the planner keeps compact."""
    path = packed("lenet300", 0.92, 6)
    model = runtime.load(path)
    assert {layer.mode for layer in model.plan.layers} == {"compact"}
    assert all(layer.encoding == "sparse_codebook" for layer in model.plan.layers)


def test_csr_and_streamed_equal_compact_bit_for_bit_on_sparse_fc(packed):
    path = packed("lenet300", 0.92, 6)
    compact = runtime.load(path, layer_modes="compact")
    for mode in ("csr", "streamed"):
        other = runtime.load(path, layer_modes=mode)
        assert set(other.plan.modes().values()) == {mode}
        for batch in (1, 5, 9):
            feeds = inputs_for(compact, batch, seed=11)
            np.testing.assert_array_equal(compact.run(feeds)["y"], other.run(feeds)["y"])


def test_runs_are_bit_identical_and_outputs_are_fresh(packed):
    path = packed("mixed", 0.5, 5)
    for mode in runtime.layers.MODES:
        model = runtime.load(path, layer_modes=mode)
        feeds = inputs_for(model, 3, seed=5, relu=False)
        first = model.run(feeds)
        other = model.run(inputs_for(model, 3, seed=6, relu=False))  # the arena is reused in between
        again = model.run(feeds)
        for k in first:
            np.testing.assert_array_equal(first[k], again[k])
            assert not np.shares_memory(first[k], model._arena)
            assert not np.array_equal(first[k], other[k])


def test_fast_path_calls_kernels_directly_and_holds_the_limit_when_needed(packed, monkeypatch):
    """From the second run of a shape on, Model.run calls each bound Numba kernel's compiled entry point (same bits).
    The thread limit is entered only for plans that need it: a serial plan of kernels alone skips it, a plan with a
    BLAS step (dense float32 weights at batch 1) or parallel kernels holds it on every run."""
    path = packed("lenet300", 0.92, 6)
    cases = ((runtime.load(path), False), (runtime.load(path, layer_modes="dense"), True),
             (runtime.load(path, parallel=True, threads=2), True))
    for model, needs_limit in cases:
        feeds = inputs_for(model, 1, seed=3)
        runs = [model.run(feeds) for _ in range(2)]  # the first plans and compiles, the second takes the fast path
        entered = []
        enter = model._limit.enter
        monkeypatch.setattr(model._limit, "enter", lambda: entered.append(1) or enter())
        runs += [model.run(feeds) for _ in range(2)]
        monkeypatch.undo()
        for r in runs[1:]:
            for k in r:
                np.testing.assert_array_equal(r[k], runs[0][k])
        (dst, steps, outputs, limited, direct), = model._fast.values()
        assert direct and limited == needs_limit and len(entered) == (2 if needs_limit else 0)
        assert not any(hasattr(fn, "overloads") for fn, _ in steps)  # no dispatcher left
        if not needs_limit:
            assert all(type(fn).__name__ == "builtin_function_or_method" for fn, _ in steps)


def test_parallel_kernels_agree(packed):
    path = packed("cnn", 0.5, 8)
    serial, par = runtime.load(path), runtime.load(path, parallel=True)
    feeds = inputs_for(serial, 5, seed=2)
    np.testing.assert_allclose(par.run(feeds)["y"], serial.run(feeds)["y"], rtol=1e-5, atol=1e-6)


def test_forced_modes_and_errors(packed):
    path = packed("mlp", 0.5, 5)
    model = runtime.load(path, layer_modes={"fc1": "streamed", "fc2": "dense"})
    modes = model.plan.modes()
    assert modes["fc1"] == "streamed" and modes["fc2"] == "dense"
    with pytest.raises(ValueError, match="not a weight-bearing layer"):
        runtime.load(path, layer_modes={"relu1": "dense"})
    with pytest.raises(ValueError, match="not one of"):
        runtime.load(path, layer_modes="sparse")


def test_int8_and_float16_weights(tmp_path):
    src = zoo.save(zoo.cnn(), tmp_path / "cnn.onnx")
    for encoding in ("int8", "float16"):
        out = tmp_path / f"{encoding}.epk"
        pack(src, out, config={"default": {"encoding": encoding}})
        for mode in ("compact", "dense"):
            model = runtime.load(str(out), layer_modes=mode)
            feeds = inputs_for(model, 2, seed=4)
            assert_close_to(reference(str(out), feeds), model.run(feeds))


def test_computed_weights_run_with_numpy(tmp_path):
    """Gemm / Conv whose weight is an activation: no layer to hold, the plain path (transA, alpha, beta, C)."""
    n = helper.make_node
    vi = helper.make_tensor_value_info
    nodes = [n("Gemm", ["a", "b", "c"], ["y1"], name="gemm", transA=1, transB=1, alpha=0.5, beta=2.0),
             n("Conv", ["x", "w", "wb"], ["y2"], name="conv", pads=[1, 1, 1, 1], strides=[2, 1])]
    proto = _finish(nodes, [vi("a", TensorProto.FLOAT, [3, 5]), vi("b", TensorProto.FLOAT, [4, 3]),
                            vi("c", TensorProto.FLOAT, [4]), vi("x", TensorProto.FLOAT, [2, 2, 6, 6]),
                            vi("w", TensorProto.FLOAT, [3, 2, 3, 3]), vi("wb", TensorProto.FLOAT, [3])],
                    [vi("y1", TensorProto.FLOAT, [5, 4]), vi("y2", TensorProto.FLOAT, [2, 3, 3, 6])], {}, "dyn")
    out = tmp_path / "dyn.epk"
    pack(zoo.save(proto, tmp_path / "dyn.onnx"), out)
    model = runtime.load(str(out))
    assert {l.mode for l in model.layers.values()} == {"dynamic"} and not model.plan.layers
    feeds = inputs_for(model, 1, seed=9, relu=False)
    assert_close_to(reference(str(out), feeds), model.run(feeds))


# ------------------------------------------------------------------------------------------------ arena


def test_executor_views_never_overlap_while_live(packed):
    path = packed("mixed", 0.5, 5)
    model = runtime.load(path)
    for batch in (1, 4):
        plan = model._exec_plan({"x": (batch, 3, 8, 8)})
        base = model._arena.__array_interface__["data"][0]
        spans = {}
        for t in plan.lifetimes:
            v = plan.views[t.name]
            assert v.dtype == np.float32 and v.flags.c_contiguous and v.shape == plan.shapes[t.name]
            assert np.shares_memory(v, model._arena) or v.nbytes == 0
            start = v.__array_interface__["data"][0] - base
            assert start == plan.arena.offsets[t.name] and start + v.nbytes <= plan.arena.arena_bytes
            spans[t.name] = (start, start + v.nbytes, t)
        for a, (sa, ea, ta) in spans.items():
            for b, (sb, eb, tb) in spans.items():
                if a >= b or not (ta.first <= tb.last and tb.first <= ta.last) or ea == sa or eb == sb:
                    continue
                if b in plan.arena.holders(a) or a in plan.arena.holders(b):
                    continue  # written in place of the other, or a view inside it (a Concat's input in its output)
                assert ea <= sb or eb <= sa, (a, b)
        assert plan.arena.arena_bytes >= plan.arena.peak_live_bytes
        assert plan.arena.aliases, "an elementwise op after an unfused producer (Mul after Sigmoid) runs in place"
        assert "c1" not in plan.views, "Relu after conv1 runs in conv1's epilogue: its input never exists"
        assert model._scratch.nbytes >= plan.scratch_bytes


def test_plans_are_cached_per_shape(packed):
    path = packed("mlp", 0.5, 5)
    model = runtime.load(path)
    x = np.ones((3, 64), np.float32)
    model.run(x)
    plan = model._exec_plan({"x": (3, 64)})
    assert model._exec_plan({"x": (3, 64)}) is plan
    assert model.plan_for((7, 64)).input_shapes == {"x": (7, 64)}
    assert model.plan.input_shapes == {"x": (1, 64)}


# ------------------------------------------------------------------------------------------------ load-time checks


def _write(tmp_path, nodes, inputs, outputs, tensors, name="m.epk", opset=17):
    """An edgepack file straight from the IR: lets a test write graphs onnx.checker would refuse."""
    from edgepack.packer.graph import Graph, Node, ValueInfo
    from edgepack.packer.pipeline import encode_tensors, graph_doc, plan_settings
    from edgepack.packer.writer import build_file, write_atomic

    g = Graph("t", [ValueInfo(*v) for v in inputs], [ValueInfo(*v) for v in outputs],
              [Node(op, nm, ins, outs, attrs) for op, nm, ins, outs, attrs in nodes], tensors, opset)
    doc = graph_doc(g, encode_tensors(g, plan_settings(g, {}, {})))
    path = tmp_path / name
    write_atomic(path, [build_file({"producer": "test", "format_version": "1.0"}, doc)])
    return str(path)


def test_unsupported_op_is_named_at_load(tmp_path):
    path = _write(tmp_path, [("Relu", "r", ["x"], ["h"], {}), ("MyCustomOp", "the_custom", ["h"], ["y"], {})],
                  [("x", "float32", ["N", 4])], [("y", "float32", ["N", 4])], {})
    with pytest.raises(UnsupportedError, match="op 'MyCustomOp' \\(node 'the_custom'\\)"):
        runtime.load(path)
    assert "MyCustomOp" not in runtime.supported_ops() and "Gemm" in runtime.supported_ops()


def test_shape_arithmetic_left_by_dynamic_shapes_says_which_input_shape_to_pack_with(tmp_path):
    nodes = [("Shape", "sh", ["x"], ["s"], {}), ("Reshape", "rs", ["x", "s"], ["y"], {})]
    path = _write(tmp_path, nodes, [("x", "float32", ["N", 4])], [("y", "float32", ["N", 4])], {})
    with pytest.raises(UnsupportedError, match="op 'Shape' \\(node 'sh'\\).*dynamic.*--input-shape x=<N>,4"):
        runtime.load(path)
    static = _write(tmp_path, nodes, [("x", "float32", [2, 4])], [("y", "float32", [2, 4])], {}, "static.epk")
    with pytest.raises(UnsupportedError, match="op 'Shape' \\(node 'sh'\\) is not supported by this runtime; "
                                               "supported: "):
        runtime.load(static)


def test_bad_attribute_and_shapes_fail_at_load(tmp_path):
    bad_perm = _write(tmp_path, [("Transpose", "tp", ["x"], ["y"], {"perm": ("ints", [0, 0])})],
                      [("x", "float32", ["N", 4])], [("y", "float32", ["N", 4])], {}, "perm.epk")
    with pytest.raises(FormatError, match="node 'tp'.*perm"):
        runtime.load(bad_perm)
    w = np.ones((3, 5), np.float32)
    bad_k = _write(tmp_path, [("Gemm", "fc", ["x", "w"], ["y"], {"transB": ("int", 1)})],
                   [("x", "float32", ["N", 4])], [("y", "float32", ["N", 3])], {"w": w}, "k.epk")
    with pytest.raises(FormatError, match="node 'fc'.*K"):
        runtime.load(bad_k)
    conv = _write(tmp_path, [("Conv", "cv", ["x", "w"], ["y"], {"group": ("int", 2)})],
                  [("x", "float32", ["N", 3, 4, 4])], [("y", "float32", ["N", 2, 2, 2])],
                  {"w": np.ones((2, 3, 3, 3), np.float32)}, "conv.epk")
    with pytest.raises(FormatError, match="node 'cv'"):
        runtime.load(conv)
    int_input = _write(tmp_path, [("Relu", "r", ["x"], ["y"], {})], [("x", "int64", [2])],
                       [("y", "float32", [2])], {}, "int.epk")
    with pytest.raises(UnsupportedError, match="input 'x' is int64"):
        runtime.load(int_input)


def test_loads_from_bytes_and_constant_output(tmp_path):
    c = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = _write(tmp_path, [("Relu", "r", ["x"], ["y"], {})], [("x", "float32", [2, 3])],
                  [("y", "float32", [2, 3]), ("c", "float32", [2, 3])], {"c": c})
    model = runtime.load(open(path, "rb").read())
    out = model.run(np.full((2, 3), -1, np.float32))
    np.testing.assert_array_equal(out["y"], 0)
    np.testing.assert_array_equal(out["c"], c)


# ------------------------------------------------------------------------------------------------ inputs


def _two_inputs(tmp_path):
    return _write(tmp_path, [("Add", "add", ["a", "b"], ["y"], {})],
                  [("a", "float32", ["N", 3]), ("b", "float32", ["N", 3])], [("y", "float32", ["N", 3])], {},
                  "two.epk")


def test_input_checks(tmp_path, packed):
    model = runtime.load(packed("mlp", 0.5, 5))
    x = np.ones((2, 64), np.float32)
    ref = model.run(x)["y"]
    np.testing.assert_array_equal(model.run({"x": x})["y"], ref)
    np.testing.assert_array_equal(model.run(x.astype(np.float64))["y"], ref)  # float64 is rounded to float32
    np.testing.assert_array_equal(model.run(x.astype(np.float16))["y"], ref)
    np.testing.assert_array_equal(model.run(np.asfortranarray(np.ones((2, 64))))["y"], ref)
    cases = [
        ({"x": x, "z": x}, "unknown \\['z'\\]"),
        ({}, "missing \\['x'\\]"),
        (x.astype(np.int32), "dtype int32"),
        (x.tolist(), "expected a numpy array"),
        (np.ones((2, 63), np.float32), "dimension 1 is 63"),
        (np.ones(64, np.float32), "rank 1"),
        (np.ones((0, 64), np.float32), "expected >= 1"),
    ]
    for bad, msg in cases:
        with pytest.raises(InputError, match=msg):
            model.run(bad)
    nan = x.copy()
    nan[1, 7] = np.nan
    with pytest.raises(InputError, match="element \\(1, 7\\) is nan"):
        model.run(nan)
    with pytest.raises(InputError, match="inf"):
        model.run(np.full((1, 64), 1e300))  # beyond float32: inf after the cast, then refused
    assert np.isnan(model.run(nan, check_finite=False)["y"][1]).any()

    two = runtime.load(_two_inputs(tmp_path))
    a = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(two.run({"a": a, "b": a})["y"], 2)
    with pytest.raises(InputError, match="pass a dict"):
        two.run(a)
    with pytest.raises(InputError, match="'N' is 3 here but 2"):
        two.run({"a": a, "b": np.ones((3, 3), np.float32)})


def test_a_batch_the_graph_cannot_take_fails_before_running(tmp_path):
    path = _write(tmp_path, [("Reshape", "rs", ["x", "shape"], ["y"], {})], [("x", "float32", ["N", 3, 4])],
                  [("y", "float32", [1, 12])], {"shape": np.array([1, 12], np.int64)}, "fixed.epk")
    model = runtime.load(path)
    np.testing.assert_array_equal(model.run(np.ones((1, 3, 4), np.float32))["y"], 1)
    with pytest.raises(InputError, match="cannot run on input shapes.*node 'rs'"):
        model.run(np.ones((2, 3, 4), np.float32))


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_run(tmp_path, packed, capsys):
    path = packed("lenet300", 0.92, 6)
    x = inputs_for(runtime.load(path), 4, seed=1)["x"]
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert main(["run", path, "--input", str(tmp_path / "x.npy"), "--output", str(out), "--repeat", "3",
                 "--budget", "64KiB"]) == 0
    text = capsys.readouterr().out
    assert "output y: float32[4, 10]" in text and "median" in text and "first run" in text
    assert "memory plan for x (4, 784); budget 65,536 B" in text and "streamed" in text
    np.testing.assert_allclose(np.load(out), reference(path, {"x": x})["y"], rtol=1e-4, atol=1e-5)
    np.savez(tmp_path / "in.npz", x=x[:1])
    assert main(["run", path, "--input", str(tmp_path / "in.npz"), "--repeat", "0",
                 "--output", str(tmp_path / "o.npz")]) == 0
    assert np.load(tmp_path / "o.npz")["y"].shape == (1, 10)
    capsys.readouterr()
    assert main(["run", path, "--input", str(tmp_path / "x.npy"), "--budget", "1KiB"]) == 2
    assert "too small" in capsys.readouterr().err


def test_profile_times_every_step(tmp_path, packed, capsys):
    """Model.profile: one row per step in run order (a fused activation is part of its layer's step), positive
    medians, the inputs checked as in run; `edgepack run --profile N` prints the op totals and the N slowest."""
    path = packed("lenet300", 0.92, 6)
    model = runtime.load(path)
    x = inputs_for(model, 2, seed=3)["x"]
    rows = model.profile(x, repeat=3)
    steps = [n for n in model._program.nodes if n["name"] not in model._program.absorbed]
    assert [r[0] for r in rows] == [n["name"] for n in steps]
    assert all(s > 0 for _, _, s in rows)
    assert any("+" in op for _, op, _ in rows)  # LeNet's Gemm runs the Relu after it
    np.testing.assert_array_equal(model.run(x)["y"], runtime.load(path).run(x)["y"])  # profiling left no trace
    with pytest.raises(InputError, match="repeat"):
        model.profile(x, repeat=0)
    with pytest.raises(InputError):
        model.profile(np.full_like(x, np.nan))
    np.save(tmp_path / "x.npy", x)
    assert main(["run", path, "--input", str(tmp_path / "x.npy"), "--repeat", "2", "--profile", "2"]) == 0
    text = capsys.readouterr().out
    assert f"profile: {len(rows)} steps" in text and "slowest 2 steps:" in text and "Gemm" in text


def test_profile_cpu_clock_leaves_out_waiting(tmp_path, packed, capsys):
    """clock="cpu" times what a step costs, not what it waited: a step that sleeps reads ~0 on the CPU clock and its
    sleep on the wall clock (executor.profile on a two-step plan); Model.profile and `run --profile-clock cpu`."""
    import time
    from types import SimpleNamespace

    from edgepack.runtime import executor

    def busy():
        t = time.thread_time()
        while time.thread_time() - t < 0.01:
            pass

    plan = SimpleNamespace(steps=[(time.sleep, (0.03,)), (busy, ())], views={}, step_nodes=[("s", "Sleep"),
                                                                                         ("b", "Busy")])
    (_, _, wall_sleep), (_, _, wall_busy) = executor.profile(None, plan, {}, 3)
    (_, _, cpu_sleep), (_, _, cpu_busy) = executor.profile(None, plan, {}, 3, time.thread_time)
    assert wall_sleep >= 0.03 and cpu_sleep < 0.005
    assert wall_busy >= 0.01 and cpu_busy >= 0.01
    path = packed("lenet300", 0.92, 6)
    model = runtime.load(path)
    x = inputs_for(model, 2, seed=3)["x"]
    rows = model.profile(x, repeat=3, clock="cpu")
    assert len(rows) == len(model.profile(x, repeat=1)) and all(s >= 0 for _, _, s in rows)
    assert sum(s for _, _, s in rows) > 0
    with pytest.raises(InputError, match="clock"):
        model.profile(x, clock="gpu")
    np.save(tmp_path / "x.npy", x)
    assert main(["run", path, "--input", str(tmp_path / "x.npy"), "--repeat", "2", "--profile", "2",
                 "--profile-clock", "cpu"]) == 0
    assert "median CPU time per step" in capsys.readouterr().out


def test_flatten_on_its_input_buffer_is_no_step(packed):
    """LeNet-5's Flatten gets pool2's buffer (the planner aliases an in-place op whose input dies there): its bound
    step is left out of the plan, and the outputs stay onnxruntime's; a profile lists only the steps that run."""
    path = packed("lenet5", 0.5, 6)
    model = runtime.load(path)
    x = inputs_for(model, 3, seed=2)["x"]
    rows = model.profile(x, repeat=2)
    names = [r[0] for r in rows]
    assert "flatten" not in names and {"conv1", "pool1", "conv2", "pool2", "ip1", "ip2"} <= set(names)
    assert_close_to(reference(path, {"x": x}), model.run(x))
