"""LSTM and GRU (runtime/ops/recurrent.py) against onnxruntime on single-node models: directions, layouts, batch > 1,
optional inputs present or omitted, peepholes, clip, input_forget, linear_before_reset, shorter sequence_lens,
activation lists, omitted outputs; shape errors and refusals; packed end to end with compressed W and R (the packer's
weight table); and the real model that needed them (openWakeWord's hey_mycroft, a tf2onnx Keras bidirectional LSTM).
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import craft
import edgepack
from edgepack import runtime
from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.loader import read_packed
from edgepack.runtime.ops import registry as R
from edgepack.runtime.weights import CodebookWeight

R.register_all()

RNG = np.random.default_rng(7)
GATES = {"LSTM": 4, "GRU": 3}
N_OUT = {"LSTM": 3, "GRU": 2}


def rand(*shape, scale=1.0):
    return np.asarray(RNG.standard_normal(shape) * scale, dtype=np.float32)


def make_inputs(op, seq=5, batch=2, n_in=4, hid=6, direction="forward", layout=0, bias=True, h0=True, c0=True,
                peep=False, lens=None):
    d = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x = rand(seq, batch, n_in) if layout == 0 else rand(batch, seq, n_in)
    state = (d, batch, hid) if layout == 0 else (batch, d, hid)
    ins = [x, rand(d, g * hid, n_in, scale=0.6), rand(d, g * hid, hid, scale=0.6),
           rand(d, 2 * g * hid, scale=0.5) if bias else None,
           None if lens is None else np.asarray(lens, np.int32),
           rand(*state) if h0 else None]
    if op == "LSTM":
        ins += [rand(*state) if c0 else None, rand(d, 3 * hid) if peep else None]
    while ins and ins[-1] is None:
        ins.pop()
    return ins


def reference(op, inputs, attrs, n_out, opset=14, outputs=None):
    """onnxruntime's outputs for a single-node model (W, R, B and sequence_lens as initializers, as exports have
    them); `outputs`: the node's output names ('' = omitted). onnxruntime runs layout 0 only: layout 1 is checked
    as the spec defines it, the same node at layout 0 on transposed inputs, outputs transposed back."""
    if attrs.get("layout", 0) == 1:
        t_in = {0: (1, 0, 2), 5: (1, 0, 2), 6: (1, 0, 2)}
        ins = [a.transpose(t_in[i]).copy() if i in t_in and a is not None else a for i, a in enumerate(inputs)]
        outs, model = reference(op, ins, {**attrs, "layout": 0}, n_out, opset, outputs)
        return [o.transpose((2, 0, 1, 3)) if o.ndim == 4 else o.transpose((1, 0, 2)) for o in outs], model
    names, graph_inputs, inits, feeds = [], [], [], {}
    for i, a in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if i in (1, 2, 3, 4):
            inits.append(numpy_helper.from_array(a, name))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, a.shape))
            feeds[name] = a
    outs = outputs if outputs is not None else [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, name="rnn", **attrs)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs if o], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds), model


def ours(op, inputs, attrs, n_out, omit=()):
    """Infer and run one node as the executor does (constants W, R, B, sequence_lens visible to infer); outputs in
    `omit` are None. Outputs start as NaN: the op must write every element."""
    consts = [a if i in (1, 2, 3, 4) else None for i, a in enumerate(inputs)]
    shapes = [None if a is None else a.shape for a in inputs]
    out_shapes = R.infer_node(op, "node0", shapes, attrs, consts, n_out)
    outs = [None if i in omit else np.full(s, np.nan, np.float32) for i, s in enumerate(out_shapes)]
    R.get(op, "node0").run(inputs, attrs, outs)
    return outs, out_shapes


def check(op, inputs, attrs, opset=14, atol=2e-6, omit=()):
    n = N_OUT[op]
    want, _ = reference(op, inputs, attrs, n, opset)
    got, shapes = ours(op, inputs, attrs, n, omit)
    for i, (g, w) in enumerate(zip(got, want)):
        assert shapes[i] == w.shape
        if g is not None:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=atol, err_msg=f"{op} output {i}")
    return got


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_directions_layouts(op, direction, layout):
    ins = make_inputs(op, seq=5, batch=3, direction=direction, layout=layout, peep=op == "LSTM")
    check(op, ins, {"direction": direction, "hidden_size": 6, "layout": layout})


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("bias,h0,c0", [(False, False, False), (True, False, False), (False, True, True),
                                        (True, True, False)])
def test_optional_inputs(op, bias, h0, c0):
    ins = make_inputs(op, bias=bias, h0=h0, c0=c0, direction="bidirectional")
    check(op, ins, {"direction": "bidirectional", "hidden_size": 6})


@pytest.mark.parametrize("opset", [7, 14, 22])
def test_opsets(opset):
    for op in ("LSTM", "GRU"):
        ins = make_inputs(op, direction="bidirectional", peep=op == "LSTM")
        got = check(op, ins, {"direction": "bidirectional", "hidden_size": 6}, opset=opset)
        # hidden_size omitted (onnxruntime requires it): taken from R
        got2, _ = ours(op, ins, {"direction": "bidirectional"}, N_OUT[op])
        for a, b in zip(got, got2):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 4, 3, 2), (9, 1, 17, 8), (3, 5, 2, 33)])
def test_shapes(shape):
    seq, batch, n_in, hid = shape
    for op in ("LSTM", "GRU"):
        check(op, make_inputs(op, seq, batch, n_in, hid, peep=op == "LSTM"), {"hidden_size": hid})


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction,layout", [("forward", 0), ("reverse", 1), ("bidirectional", 0),
                                              ("bidirectional", 1)])
@pytest.mark.parametrize("seq,batch", [(1, 1), (3, 1), (11, 2)])
def test_wide_inputs_projection_kernels(op, direction, layout, seq, batch):
    """Input weights wide enough for runtime/ops/linear.py's dot-product kernel (at 3..64 rows of steps x batch; BLAS
    at one row) give onnxruntime's outputs."""
    from edgepack.runtime.ops.linear import uses_dense_dot
    hid, n_in = 48, 920
    ins = make_inputs(op, seq, batch, n_in, hid, direction=direction, layout=layout)
    ins[1] = ins[1] * np.float32(0.05)  # pre-activations of order 1, not saturated
    ins[2] = ins[2] * np.float32(0.2)  # a contracting recurrence: rounding differences do not grow step by step
    assert uses_dense_dot(seq * batch, GATES[op] * hid, n_in) == (seq * batch > 1)
    check(op, ins, {"direction": direction, "hidden_size": hid, "layout": layout}, atol=1e-5)


def test_empty_dimensions():
    # no steps: Y is empty, Y_h / Y_c are zero, as for a sequence_lens of 0 (onnxruntime returns uninitialised
    # memory for an LSTM and aborts the process for a GRU: no reference); no input features: only R acts.
    # onnxruntime also aborts on a GRU without features and on an empty batch: those run here alone.
    for op in ("LSTM", "GRU"):
        got, shapes = ours(op, make_inputs(op, 0, 2, 3, 4, direction="bidirectional"), {"direction": "bidirectional"},
                           N_OUT[op])
        assert shapes[0] == (0, 2, 2, 4) and all(not g.any() for g in got[1:])
    # onnxruntime without input features reads memory it did not write (seen once in CI: 5 of 24 values off from
    # step 1): its reference is the same LSTM with one feature that is zero in x and in W
    ins = make_inputs("LSTM", 3, 2, 0, 4)
    padded = [np.zeros((3, 2, 1), np.float32), np.zeros((1, 16, 1), np.float32)] + ins[2:]
    want, _ = reference("LSTM", padded, {"hidden_size": 4}, 3)
    got, _ = ours("LSTM", ins, {"hidden_size": 4}, 3)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-6)
    got, _ = ours("GRU", make_inputs("GRU", 3, 2, 0, 4, h0=False, bias=False), {}, 2)
    assert not got[1].any()  # no input, no bias, zero state: h stays 0
    for op in ("LSTM", "GRU"):
        got, shapes = ours(op, make_inputs(op, 3, 0, 3, 4), {}, N_OUT[op])
        assert shapes[0] == (3, 1, 0, 4) and all(g.size == 0 for g in got)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("peep", [True, False])  # without peepholes the kernel activates gates i, o, f in one pass
def test_clip_and_input_forget(direction, peep):
    ins = make_inputs("LSTM", direction=direction, peep=peep)
    ins[0] = ins[0] * 4
    check("LSTM", ins, {"direction": direction, "hidden_size": 6, "clip": 0.7})
    check("LSTM", ins, {"direction": direction, "hidden_size": 6, "input_forget": 1})
    check("LSTM", ins, {"direction": direction, "hidden_size": 6, "input_forget": 1, "clip": 1.5})
    gins = make_inputs("GRU", direction=direction)
    gins[0] = gins[0] * 4
    check("GRU", gins, {"direction": direction, "hidden_size": 6, "clip": 0.5})


@pytest.mark.parametrize("rows,k", [(4, 1), (12, 3), (8, 8), (44, 11), (132, 33), (64, 16), (20, 40), (2048, 64)])
def test_gemv_kernel_blocks_and_tails(rows, k):
    """R h as the recurrence computes it (eight rows at a time in simd_dot.rows_dot8, column and row tails after)
    against float64 numpy, from an offset into the flattened R; blocks visited last to first give the same bits."""
    from edgepack.runtime.ops.recurrent import _gemv_kernel
    rng = np.random.default_rng(rows * 100 + k)
    r = rng.standard_normal(3 * rows * k).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    want = r[rows * k:2 * rows * k].reshape(rows, k).astype(np.float64) @ x.astype(np.float64)
    got = [np.full(rows, np.nan, np.float32) for _ in range(2)]
    for out, backward in zip(got, (False, True)):
        _gemv_kernel(r, rows * k, rows, k, x, out, backward)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=2e-6 * np.sqrt(k))
    np.testing.assert_array_equal(got[0], got[1])


@pytest.mark.parametrize("hid", [1, 3, 16, 33])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_one_loop_cell_matches_the_passes(hid, direction):
    """The default activations without peepholes take the one-loop cell update (_lstm_cell_kernel); zero peepholes
    send the same LSTM through the passes: the same bits (up to the sign of zero), both against onnxruntime."""
    ins = make_inputs("LSTM", seq=4, batch=2, n_in=5, hid=hid, direction=direction, peep=True)
    ins[0] = ins[0] * 3
    ins[7] = np.zeros_like(ins[7])
    attrs = {"direction": direction, "hidden_size": hid}
    passes = check("LSTM", ins, attrs)
    one_loop = check("LSTM", ins[:7], attrs)
    for a, b in zip(one_loop, passes):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_constant_inputs_are_not_written(op, direction):
    """The biases the projection adds are folded into scratch at every run, never into the node's B (a constant the
    file holds; with one direction a row slice of it is contiguous, so an in-place sum there would write it)."""
    ins = make_inputs(op, direction=direction)
    before = [None if a is None else a.copy() for a in ins]
    check(op, ins, {"direction": direction, "hidden_size": 6})
    check(op, ins, {"direction": direction, "hidden_size": 6})
    for a, b in zip(ins, before):
        if a is not None:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_gru_linear_before_reset(direction, layout):
    ins = make_inputs("GRU", batch=2, direction=direction, layout=layout)
    check("GRU", ins, {"direction": direction, "hidden_size": 6, "linear_before_reset": 1, "layout": layout})


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_shorter_sequence_lens(op, direction, layout):
    # rows past a sequence's end are zero; Y_h / Y_c hold its last state (zero for an empty one, not the initial
    # state); reverse starts at its last element
    ins = make_inputs(op, seq=6, batch=5, direction=direction, layout=layout, lens=[6, 3, 1, 0, 5])
    check(op, ins, {"direction": direction, "layout": layout, "hidden_size": 6})


def test_full_sequence_lens_equals_none():
    ins = make_inputs("LSTM", seq=4, batch=2, lens=[4, 4])
    got = check("LSTM", ins, {"hidden_size": 6})
    ins[4] = None
    got2, _ = ours("LSTM", ins, {"hidden_size": 6}, 3)
    for a, b in zip(got, got2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("acts", [["Sigmoid", "Tanh", "Tanh"], ["sigmoid", "relu", "softsign"],
                                  ["Softsign", "Tanh", "Softplus"]])
def test_lstm_activation_lists(acts):
    ins = make_inputs("LSTM", direction="bidirectional")
    check("LSTM", ins, {"direction": "bidirectional", "hidden_size": 6,
                        "activations": acts + ["Sigmoid", "Tanh", "Relu"]}, atol=1e-5)


@pytest.mark.parametrize("code", range(5))
def test_activation_blocks_at_their_limits(code):
    """The kernels' activations over a block (Sigmoid, Tanh, Relu, Softsign, Softplus) against float64 numpy across
    exp's limits (|v| near 88), +-inf, +-0 and NaN."""
    from edgepack.runtime.ops.recurrent import _act_block
    v = np.concatenate([np.linspace(-120, 120, 4801), [-88.5, -87.9, -44.1, 44.1, 87.9, 88.5, 1e-4, -1e-4, 0.0, -0.0,
                                                         np.inf, -np.inf, np.nan]]).astype(np.float32)
    x = v.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        want = [1 / (1 + np.exp(-x)), np.tanh(x), np.where(x > 0, x, 0.0), x / (1 + np.abs(x)),
                np.logaddexp(0.0, x)][code]
    got = v.copy()
    _act_block(code, got)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=4e-6, atol=3e-7 if code == 1 else 1e-30)


def test_gru_activation_list():
    ins = make_inputs("GRU")
    check("GRU", ins, {"hidden_size": 6, "activations": ["Sigmoid", "Relu"]}, atol=1e-5)


@pytest.mark.parametrize("omit", [(0,), (1,), (2,), (0, 2), (1, 2)])
def test_omitted_outputs(omit):
    ins = make_inputs("LSTM", direction="bidirectional")
    check("LSTM", ins, {"direction": "bidirectional", "hidden_size": 6}, omit=omit)
    if 2 not in omit:
        check("GRU", make_inputs("GRU"), {"hidden_size": 6}, omit=omit)


def test_infer_node_fewer_outputs():
    ins = make_inputs("LSTM")
    shapes = [None if a is None else a.shape for a in ins]
    assert R.infer_node("LSTM", "n", shapes, {}, [None] * len(ins), 1) == [(5, 1, 2, 6)]


# ---- errors ----

def _decoded(m: onnx.ModelProto, references: dict) -> bytes:
    """m with every weight the packed file holds replaced by what it decodes to (PackReport.references)."""
    for init in m.graph.initializer:
        if init.name in references:
            init.CopyFrom(numpy_helper.from_array(references[init.name], init.name))
    return m.SerializeToString()


def _lstm_matches_decoded(model, m: onnx.ModelProto, references: dict, x) -> None:
    want = ort.InferenceSession(_decoded(m, references), providers=["CPUExecutionProvider"]).run(None, {"in0": x})
    got = model.run(x)
    for k, v in zip(["y", "yh", "yc"], want):
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5 * np.abs(v).max())


def _infer(op, ins, attrs, consts=None):
    shapes = [None if a is None else a.shape for a in ins]
    return R.infer_node(op, "rnn0", shapes, attrs, consts if consts is not None else list(ins), N_OUT[op])


@pytest.mark.parametrize("attrs,match", [
    ({"direction": "sideways"}, "direction"),
    ({"direction": "bidirectional"}, "R"),
    ({"hidden_size": 7}, "hidden_size"),
    ({"layout": 2}, "layout"),
    ({"clip": -1.0}, "clip"),
    ({"input_forget": 3}, "input_forget"),
    ({"activations": ["Sigmoid", "Tanh"]}, "3 functions per direction"),
])
def test_attribute_errors(attrs, match):
    with pytest.raises(FormatError, match=match) as e:
        _infer("LSTM", make_inputs("LSTM"), attrs)
    assert "rnn0" in str(e.value) and "LSTM" in str(e.value)


def test_shape_errors():
    ins = make_inputs("GRU")
    bad = list(ins)
    bad[1] = rand(1, 18, 5)
    with pytest.raises(FormatError, match="'W'"):
        _infer("GRU", bad, {})
    bad = list(ins)
    bad[3] = rand(1, 12)
    with pytest.raises(FormatError, match="'B'"):
        _infer("GRU", bad, {})
    bad = list(ins)
    bad[5] = rand(1, 3, 6)
    with pytest.raises(FormatError, match="initial_h"):
        _infer("GRU", bad, {})
    with pytest.raises(FormatError, match="rank 3"):
        _infer("GRU", [rand(5, 4)] + ins[1:], {})
    lins = make_inputs("LSTM", peep=True)
    lins[7] = rand(1, 12)
    with pytest.raises(FormatError, match="'P'"):
        _infer("LSTM", lins, {})
    with pytest.raises(FormatError, match="expects 3 to 6 inputs"):
        _infer("GRU", ins + [None, None], {})


def test_sequence_lens_errors():
    ins = make_inputs("LSTM", seq=4, batch=2, lens=[4, 5])
    with pytest.raises(FormatError, match=r"sequence_lens.*\[0, 4\]"):
        _infer("LSTM", ins, {})
    ins = make_inputs("LSTM", seq=4, batch=2, lens=[4, 3])
    with pytest.raises(UnsupportedError, match="sequence_lens.*constant"):
        _infer("LSTM", ins, {}, consts=[None] * len(ins))
    ins[4] = np.array([4, 3, 2], np.int32)
    with pytest.raises(FormatError, match="sequence_lens.*shape"):
        _infer("LSTM", ins, {})


def test_unsupported_activation_named():
    with pytest.raises(UnsupportedError, match="'HardSigmoid'.*supported: Sigmoid, Tanh"):
        _infer("GRU", make_inputs("GRU"), {"activations": ["HardSigmoid", "Tanh"]})
    with pytest.raises(UnsupportedError, match="activation_alpha"):
        _infer("GRU", make_inputs("GRU"), {"activation_alpha": [0.5]})


# ---- packed end to end: compressed W and R, omitted outputs, the executor's bound steps ----

def _model_file(tmp_path, op, outputs, direction="bidirectional", hid=16, n_in=24, seq=7):
    ins = make_inputs(op, seq=seq, batch=1, n_in=n_in, hid=hid, direction=direction, h0=False, c0=False)
    _, model = reference(op, ins, {"direction": direction, "hidden_size": hid}, N_OUT[op], outputs=outputs)
    path = tmp_path / f"{op}.onnx"
    path.write_bytes(model.SerializeToString())
    return path, ins[0]


@pytest.mark.parametrize("op,outputs,sparsity", [("LSTM", ["y", "yh", "yc"], 0.5), ("LSTM", ["", "yh"], 0.5),
                                                 ("LSTM", ["y"], 0.5), ("GRU", ["", "yh"], 0.5),
                                                 ("GRU", ["y", "yh"], 0.5), ("LSTM", ["y", "yh", "yc"], 0.0),
                                                 ("GRU", ["y", "yh"], 0.0)])
def test_packed_end_to_end(tmp_path, op, outputs, sparsity):
    seq = 22 if sparsity == 0.0 else 7  # W held as codes pays from ~18 rows (recurrent.codes_projection_pays)
    path, x = _model_file(tmp_path, op, outputs, seq=seq)
    out = tmp_path / "m.epk"
    rep = edgepack.pack(path, out, sparsity=sparsity, bits=6)
    kinds = {r["name"]: r["encoding"] for r in rep.info["layers"]}
    assert kinds["in1"] != "dense" and kinds["in2"] != "dense"  # W and R compressed
    model = runtime.load(out)
    got = model.run(x)
    # the packed file against the ONNX graph with the packed (decoded) weights: exact semantics
    dense = {name: rep.references[name] for name in ("in1", "in2")}
    m = onnx.load(str(path))
    for init in m.graph.initializer:
        if init.name in dense:
            init.CopyFrom(numpy_helper.from_array(dense[init.name], init.name))
    sess2 = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = dict(zip([o for o in outputs if o], sess2.run(None, {"in0": x})))
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=3e-6)
    # W and R are matrices of gate rows (row_dims 2: directions x gate rows), and the file says it needs format 1.1
    packed = read_packed(out)
    for name in ("in1", "in2"):
        assert packed.graph["tensors"][[t["name"] for t in packed.graph["tensors"]].index(name)]["encoding"][
            "row_dims"] == 2
        assert packed.weights[name].rows == 2 * GATES[op] * 16
    assert packed.meta["format_version"] == "1.1" and packed.container.version == (1, 1)
    # the projections W x_t (directions x steps x gates x hidden), the state, the folded biases (directions x gates
    # x hidden) and the scratch of the projection from held codes (a tile of 24 lanes of the 24 inputs, and 4 rows of
    # sums) live in the plan's counted scratch
    hid, gates = 16, GATES[op]
    assert model.plan.scratch_bytes == 4 * (2 * seq * gates * hid + (12 if op == "LSTM" else 9) * hid
                                            + 2 * gates * hid + 24 * (24 + 4))
    # W stored as dense codes stays codes (a quarter of float32's bytes at 8 bits); sparse W and R are expanded
    held = model._program.consts["in1"]
    dense_codes = type(packed.weights["in1"]) is CodebookWeight  # the packer's choice (sparse or dense codes)
    assert isinstance(held, CodebookWeight) == (dense_codes and seq == 22) and (dense_codes or sparsity > 0)
    assert isinstance(model._program.consts["in2"], np.ndarray)
    r_bytes = 4 * model._program.consts["in2"].size
    consts = model.plan.constants_ram + model.plan.constants_mapped
    if isinstance(held, CodebookWeight):  # counted as held: the codes (and codebook, row scales), not a float32 copy
        assert held.codes.nbytes + r_bytes <= consts < 4 * held.codes.size + r_bytes
    else:
        assert consts >= 4 * held.size + r_bytes
    assert model.plan.scratch_owner == "rnn"
    got2 = model.run(x)  # the bound plan, run again: same numbers
    for k in want:
        np.testing.assert_array_equal(got[k], got2[k])


def test_gate_rows_get_their_own_scales(tmp_path):
    # gate rows whose magnitudes differ by orders (the input gate's rows x 300): with the matrix rows = gate rows,
    # row scales let one codebook serve them all; rows = directions could not tell the gates apart
    path, x = _model_file(tmp_path, "LSTM", ["y", "yh", "yc"], direction="forward", seq=22)
    m = onnx.load(str(path))
    for init in m.graph.initializer:
        if init.name == "in1":
            w = numpy_helper.to_array(init).copy()
            w[:, :16] *= 300.0
            init.CopyFrom(numpy_helper.from_array(w, "in1"))
    path.write_bytes(m.SerializeToString())
    out = tmp_path / "m.epk"
    rep = edgepack.pack(path, out, sparsity=0.0, bits=5)
    enc = read_packed(out).graph["tensors"][[t["name"] for t in read_packed(out).graph["tensors"]].index("in1")]
    assert enc["encoding"]["row_dims"] == 2 and enc["encoding"]["row_scales"][1] == 4 * 4 * 16  # float32 x 64 rows
    ref = rep.references["in1"]
    small = np.abs(w[:, 16:]).max()
    assert np.abs(ref[:, 16:] - w[:, 16:]).max() < 0.05 * small  # the small gates keep their values
    # the runtime projects from the held codes with those row scales: as onnxruntime on the decoded weights
    model = runtime.load(out)
    assert isinstance(model._program.consts["in1"], CodebookWeight)
    assert model._program.consts["in1"].row_scales is not None
    _lstm_matches_decoded(model, m, {k: rep.references[k] for k in ("in1", "in2")}, x)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
@pytest.mark.parametrize("direction,layout", [("forward", 0), ("reverse", 1), ("bidirectional", 0),
                                              ("bidirectional", 1)])
@pytest.mark.parametrize("seq,batch,states,lens", [(1, 1, False, None), (6, 2, True, [6, 3]),
                                                   (30, 1, True, None), (20, 2, False, None)])
def test_codes_weight_projection(op, direction, layout, seq, batch, states, lens):
    """W held as dense codes (a CodebookWeight, as runtime/model.py passes it): the projection runs on the codes
    (_project_codes_kernel, gate-major); outputs as onnxruntime's with W decoded, at 1 to 40 rows (one tile of 24
    lanes, one or two of 32)."""
    ins = make_inputs(op, seq=seq, batch=batch, n_in=37, hid=9, direction=direction, layout=layout, h0=states,
                      c0=states, lens=lens)
    d, g = ins[1].shape[0], ins[1].shape[1]
    codebook = rand(256, scale=0.4)
    codes = RNG.integers(0, 256, (d * g, 37)).astype(np.uint8)
    scales = np.asarray(RNG.uniform(0.5, 1.5, d * g), np.float32)
    w = CodebookWeight((d, g, 37), codebook, codes, scales, row_dims=2)
    ins[1] = w.to_dense()
    attrs = {"direction": direction, "layout": layout, "hidden_size": 9}
    want, _ = reference(op, ins, attrs, N_OUT[op])
    ins[1] = w
    got, _ = ours(op, ins, attrs, N_OUT[op])
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-6, err_msg=f"{op} output {i}")


@pytest.mark.parametrize("rows", [1, 22, 40])
@pytest.mark.parametrize("bias,scales", [(True, True), (False, False)])
def test_codes_projection_is_the_rows_form(rows, bias, scales):
    """The recurrence's gate-major projection of W held as codes gives linear.py's rows form's bits (the same sums,
    the bias added after), for every direction, with and without bias and row scales, over one or two tiles."""
    from edgepack.runtime.ops.linear import bind_linear, linear_scratch_bytes, prepare_linear
    from edgepack.runtime.ops.recurrent import _project_codes_kernel
    d, gh, k = 2, 4 * 9, 37
    x = rand(rows, k)
    codebook = rand(256, scale=0.4)
    codes = RNG.integers(0, 256, (d * gh, k)).astype(np.uint8)
    sc = np.asarray(RNG.uniform(0.5, 1.5, d * gh), np.float32) if scales else np.zeros(0, np.float32)
    b = rand(d, gh) if bias else np.zeros((0, 0), np.float32)
    want = np.empty((d, rows, gh), np.float32)
    for i in range(d):
        w = CodebookWeight((gh, k), codebook, codes[i * gh:(i + 1) * gh], sc[i * gh:(i + 1) * gh] if scales else None)
        p = prepare_linear(w, True, "rows")
        fn, args = bind_linear(x, p, b[i] if bias else None, 1.0, 1.0 if bias else 0.0, want[i],
                               np.empty(linear_scratch_bytes(rows, p), np.uint8))
        fn(*args)
    got = np.full((d, gh, rows), np.nan, np.float32)
    buf = np.empty(32 * (k + 4), np.float32)
    _project_codes_kernel(x, codes.reshape(-1), codebook, sc, b, got, buf[:32 * k], buf[32 * k:])
    np.testing.assert_array_equal(got, want.transpose(0, 2, 1))


@pytest.mark.parametrize("value", [0, 4, "2", 2.0, True])
def test_row_dims_out_of_range_is_refused(tmp_path, value):
    path, _ = _model_file(tmp_path, "LSTM", ["y"])
    out = tmp_path / "m.epk"
    edgepack.pack(path, out, sparsity=0.0, bits=6)

    def bad(g):
        next(t for t in g["tensors"] if t["name"] == "in1")["encoding"]["row_dims"] = value

    with pytest.raises(FormatError, match=r"in1.*row_dims"):
        read_packed(craft.edit_graph(out.read_bytes(), bad))


def test_conv_weight_with_row_dims_runs_from_a_dense_copy(tmp_path):
    # the layers' kernels take rows = output channels; a Conv weight stored with another matrix view still runs
    from edgepack.packer.encode import LayerSettings
    from edgepack.packer.pipeline import encode_rows, encode_tensors, graph_doc, plan_settings
    from edgepack.packer.writer import build_file
    from edgepack.packer.onnx_io import load_onnx

    w = rand(4, 3, 3, 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    src = tmp_path / "c.onnx"
    src.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    g = load_onnx(src)
    enc = encode_tensors(g, plan_settings(g, {}, {}))
    enc["w"] = encode_rows(w, LayerSettings(bits=6, channel_scales=True), 8, row_dims=2)
    assert enc["w"].encoding["row_dims"] == 2 and enc["w"].encoding["row_scales"].shape == (12,)
    model = runtime.load(build_file({"producer": "test", "format_version": "1.1"}, graph_doc(g, enc)))
    x = rand(1, 3, 5, 5)
    m = onnx.load(str(src))
    m.graph.initializer[0].CopyFrom(numpy_helper.from_array(enc["w"].reference, "w"))
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.run(x)["y"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_energy_counts_recurrent_macs(tmp_path, op):
    from edgepack.runtime.energy import estimate
    from edgepack.runtime.loader import read_packed

    path, _ = _model_file(tmp_path, op, ["y", "yh"])
    out = tmp_path / "m.epk"
    edgepack.pack(path, out, sparsity=0.0, bits=8)
    r = estimate(runtime.load(out), read_packed(out), 1 << 30)
    by_name = {l["name"]: l for l in r["layers"]}
    d, g, hid, n_in, seq = 2, GATES[op], 16, 24, 7  # _model_file's shapes, batch 1
    assert by_name["rnn:W"]["original"]["macs"] == d * g * hid * n_in * seq
    assert by_name["rnn:R"]["original"]["macs"] == d * g * hid * hid * seq
    assert by_name["rnn:W"]["original"]["weight_bytes"] == 4 * (d * g * hid * n_in + d * 2 * g * hid)  # W and B
    # the runtime holds W and R expanded to dense float32: that is what a packed run reads
    assert by_name["rnn:R"]["packed"]["weight_bytes"] == 4 * d * g * hid * hid
    assert r["modes"]["rnn:W"] == "dense"


def test_weight_table_shared():
    from edgepack.runtime import constants as C
    from edgepack.packer import pipeline

    assert pipeline.WEIGHT_OPS is C.WEIGHT_INPUTS
    assert C.WEIGHT_INPUTS["LSTM"] == (1, 2) and C.WEIGHT_INPUTS["GRU"] == (1, 2)


# ---- the real model: openWakeWord's hey_mycroft (tf2onnx, Keras bidirectional LSTMs) ----

def _oww_embeddings(n: int) -> list[np.ndarray]:
    """Inputs as openWakeWord makes them: synthetic audio (noise, voiced harmonics, chirps) through its own
    melspectrogram and embedding models in onnxruntime, 16 windows of 76 frames; plus random non-negative
    embeddings of moderate size, where the wake-word score sits mid-range instead of near 0."""
    from realmodels.corpus import fetch

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    mel = ort.InferenceSession(str(fetch("oww_melspectrogram")), so, providers=["CPUExecutionProvider"])
    emb = ort.InferenceSession(str(fetch("oww_embedding")), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    t = np.arange(32000) / 16000
    out = []
    for i in range(n):
        if i % 3 == 0:
            a = rng.standard_normal(32000) * rng.uniform(100, 3000)
        elif i % 3 == 1:
            phase = 2 * np.pi * np.cumsum(rng.uniform(90, 220) * (1 + 0.2 * np.sin(2 * np.pi * t))) / 16000
            a = sum(np.sin(k * phase) / k for k in range(1, 15)) * rng.uniform(1000, 8000)
        else:
            a = np.sin(2 * np.pi * np.cumsum(np.linspace(200, 3000, 32000)) / 16000) * rng.uniform(500, 5000)
        spec = mel.run(None, {"input": a.astype(np.float32)[None]})[0][:, 0] / 10 + 2  # openWakeWord's scaling
        wins = np.stack([spec[0, s:s + 76] for s in range(0, 121, 8)])[..., None].astype(np.float32)
        out.append(emb.run(None, {"input_1": wins})[0].reshape(1, 16, 96))
        out.append((np.abs(rng.standard_normal((1, 16, 96))) * rng.uniform(0.5, 3.0)).astype(np.float32))
    return out


def test_hey_mycroft(tmp_path):
    from realmodels.corpus import fetch

    src = fetch("oww_hey_mycroft")
    out = tmp_path / "mycroft.epk"
    rep = edgepack.pack(src, out, sparsity=0.0, bits=8, input_shapes=["input_1=1,16,96"])
    kinds = {r["name"]: r["encoding"] for r in rep.info["layers"]}
    assert all(kinds[w] == "codebook" for w in ("W__200", "R__201", "W__164", "R__165"))
    model = runtime.load(out)
    assert model.plan.scratch_owner == "LSTM__203"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    original = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    # the same graph with the weights the file decodes to: the runtime must match it exactly
    decoded = ort.InferenceSession(_decoded(onnx.load(str(src)), rep.references), so,
                                   providers=["CPUExecutionProvider"])
    worst_exact = worst = 0.0
    for x in _oww_embeddings(4):
        got = model.run(x)["dense"]
        worst_exact = max(worst_exact, float(np.abs(got - decoded.run(None, {"input_1": x})[0]).max()))
        worst = max(worst, float(np.abs(got - original.run(None, {"input_1": x})[0]).max()))
    assert worst_exact < 2e-6, worst_exact
    assert worst < 0.01, worst  # 8-bit codebooks: measured 0.003 at most on scores 0.2-0.7


def test_silero_vad_stream(tmp_path):
    # Silero VAD v5 (spox export): its decoder LSTM (inside an If on the sample rate, folded by --input-value sr=16000)
    # carries the state from chunk to chunk. With dense weights the packed file must follow onnxruntime through a
    # stream: any error in the recurrence would compound over the chunks.
    from realmodels.corpus import fetch

    src = fetch("silero_vad")
    out = tmp_path / "vad.epk"
    edgepack.pack(src, out, config={"default": {"encoding": "dense"}}, input_shapes=["input=1,512", "state=2,1,128"],
                input_values=["sr=16000"])
    model = runtime.load(out)
    assert any(n["op"] == "LSTM" for n in model._program.nodes)
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    t = np.arange(512 * 12) / 16000
    phase = 2 * np.pi * np.cumsum(140 * (1 + 0.2 * np.sin(2 * np.pi * t))) / 16000
    audio = sum(np.sin(k * phase) / k for k in range(1, 15)) * 0.3 + rng.standard_normal(t.size) * 0.02
    sr = np.array(16000, np.int64)
    chunks = [audio[i * 512:(i + 1) * 512].astype(np.float32)[None] for i in range(12)]
    # the state's own float32 spread: onnxruntime against itself with each chunk nudged by N(0, 1e-7) (7.5e-5 here;
    # edgepack's summation orders differ from onnxruntime's by as much: 1.5e-4 one step from the same state with the
    # encoder convs in "cout" form, 7e-5 with im2col). A recurrence error would grow chunk by chunk far beyond it.
    nudge, s, spread = np.random.default_rng(9), np.zeros((2, 1, 128), np.float32), 0.0
    for x in chunks:
        _, s1 = sess.run(None, {"input": x, "state": s, "sr": sr})
        _, s2 = sess.run(None, {"input": (x + nudge.normal(0, 1e-7, x.shape)).astype(np.float32), "state": s, "sr": sr})
        spread, s = max(spread, float(np.abs(s1 - s2).max())), s1
    assert 0 < spread < 1e-3
    s_ref = np.zeros((2, 1, 128), np.float32)
    s_got = s_ref.copy()
    for x in chunks:
        p_ref, s_ref = sess.run(None, {"input": x, "state": s_ref, "sr": sr})
        r = model.run({"input": x, "state": s_got})
        s_got = r["stateN"]
        np.testing.assert_allclose(r["output"], p_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(s_got, s_ref, rtol=0, atol=3 * spread)  # within 3x onnxruntime's own spread


@pytest.mark.parametrize("seq,held", [(1, False), (16, False), (22, True), (30, True), (40, False)])
def test_codes_held_only_where_they_pay(tmp_path, seq, held):
    """runtime/model.py keeps W as codes where recurrent.codes_projection_pays at the plan's rows, else expands it
    (counted as a float32 constant); the answers are onnxruntime's on the decoded weights either way."""
    path, x = _model_file(tmp_path, "LSTM", ["y", "yh", "yc"], seq=seq)
    out = tmp_path / "m.epk"
    rep = edgepack.pack(path, out, sparsity=0.0, bits=8)
    assert type(read_packed(out).weights["in1"]) is CodebookWeight
    model = runtime.load(out)
    assert isinstance(model._program.consts["in1"], CodebookWeight) == held
    m = onnx.load(str(path))
    _lstm_matches_decoded(model, m, {k: rep.references[k] for k in ("in1", "in2")}, x)
