"""Models quantised by onnxruntime's ``quantize_dynamic`` turned into float ops that compute what the quantised
model computes, on the onnx.ModelProto, before the rest of the import (packer/onnx_io.py calls
:func:`dequantize_dynamic` first).

``quantize_dynamic`` stores each weight as int8/uint8 with a scale and a zero point, and quantises the activation
to uint8 at run time. The integer product ``(x_q - x_zp)(W_q - W_zp) * x_scale * W_scale`` equals the float product
of the dequantised activation ``(x_q - x_zp) * x_scale`` and the dequantised weight, so the rewrite keeps the
activation's quantisation as standard ops (``DynamicQuantizeLinear`` then ``DequantizeLinear``, which the runtime
runs: runtime/ops/quantize.py) and turns only the weights into float, which the packer then compresses like any
other. The blocks it writes, and what they become here:

* ``DynamicQuantizeLinear(x) -> (x_q, x_scale, x_zp)`` feeding ``MatMulInteger(x_q, W_q, x_zp, W_zp)`` or
  ``ConvInteger(x_q, W_q, x_zp, W_zp)``, then ``Cast(to=float)`` and a multiplication by ``x_scale * W_scale``
  (the two scales multiplied first, as onnxruntime writes it, or one after the other). The DynamicQuantizeLinear
  stays; one ``DequantizeLinear(x_q, x_scale, x_zp)`` right after it feeds ``MatMul(., W)`` / ``Conv(., W)`` with
  ``W = (W_q - W_zp) * W_scale`` (per tensor, or per output column / output channel as the ops allow). Older
  onnxruntime versions add the bias in the integer domain before the Cast: ``Add(int_out, Reshape(Cast(Floor(Div(b,
  x_scale * W_scale)))))``; that integer bias stays too and is added as ``Cast(to=float)`` times ``x_scale *
  W_scale`` (reshaped as before), so b is rounded down to a multiple of the scales at run time as it was.
  For opset <= 10 the activation is quantised by ``QuantizeLinear(x, x_scale, x_zp)`` with both computed from
  ReduceMin(x) / ReduceMax(x); that arithmetic is not kept: the float op reads x unrounded.
* ``com.microsoft::DynamicQuantizeLSTM(X, W_q, R_q, B, seq_lens, h0, c0, P, W_scale, W_zp, R_scale, R_zp)``
  becomes ``DynamicQuantizeLinear`` + ``DequantizeLinear`` of X (the contrib kernel quantises X, all steps at
  once, before its product with W) and the standard ``LSTM`` with ``W = transpose((W_q - W_zp) * W_scale)``: the
  contrib op stores W as [num_directions, input_size, 4*hidden] and R as [num_directions, hidden, 4*hidden], with
  scale and zero point per direction ([num_directions]) or per gate row ([num_directions, 4*hidden]). The kernel
  also quantises the hidden state at every step before its product with R; ONNX's LSTM cannot, so that rounding is
  not kept (in tests/test_dequantize.py the outputs move by ~2e-3 over 7 steps).

Layer by layer the result equals the quantised model to float32 rounding. End to end it need not: a rounding
difference of 1e-7 that moves one activation across a uint8 rounding boundary changes it by a whole step, and the
changes grow through the layers (onnxruntime on ddddocr's common_old.onnx, its input perturbed by 1e-7 relative,
moves its output by 2e-2 and changes about 4% of its decoded strings), so two implementations of the same quantised graph
agree on the answers, not on every digit. Nodes left without a consumer by the rewrite (the integer ops, the scale
multiplications) are removed; every other node is kept as it was. A DynamicQuantizeLinear read only by
DequantizeLinear nodes (a model already in this form) is kept as it is.

A node in another domain, or a quantised node in a form this module does not recognise exactly, is refused with
one line naming the node, its op and domain, and what the packer accepts.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgepack.runtime.errors import UnsupportedError

_DEFAULT_DOMAINS = ("", "ai.onnx")
_INTEGER_OPS = ("MatMulInteger", "ConvInteger")
_QUANT_OPS = ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeLSTM")
_LSTM_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size",
               "input_forget")
_ACCEPTS = ("edgepack packs float ONNX models (ops of the default domain), and models quantised by onnxruntime's "
            "quantize_dynamic (MatMulInteger, ConvInteger, com.microsoft DynamicQuantizeLSTM), whose weights it "
            "dequantises to float")


class _Refused(Exception):
    """A quantised block not in a form this module rewrites exactly; the message says why."""


def dequantize_dynamic(model: onnx.ModelProto, where: str = "<model>") -> onnx.ModelProto:
    """The model with onnxruntime's dynamic-quantised MatMul/Conv/LSTM blocks replaced by their float ops, the
    activation quantisation kept (module docstring).

    Returns ``model`` itself when it holds no quantised node (and nothing in another domain); otherwise a rewritten
    copy (the argument is not modified). Raises UnsupportedError for a node in a non-default domain or a quantised
    node it cannot rewrite exactly."""
    g = model.graph
    if not any(n.domain not in _DEFAULT_DOMAINS or n.op_type in _QUANT_OPS for n in g.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _Rewriter(out.graph, where).run()
    return out


class _Rewriter:
    def __init__(self, g: onnx.GraphProto, where: str):
        self.g = g
        self.where = where
        self.producer = {}
        self.consumers = {}
        for n in g.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in g.initializer}
        # names read from inside If / Loop / Scan bodies (outer-scope references): never dropped as unused
        self.sub_used = {i for n in g.node for a in n.attribute for i in _graph_reads(a)}
        self.graph_inputs = {v.name for v in g.input}
        self.graph_outputs = {v.name for v in g.output}
        self.names = set(self.producer) | set(self.inits) | self.graph_inputs | {n.name for n in g.node}
        self.cache = {}          # (weight, scale, zero point, layout) -> name of the float initializer
        self.new_inits = []
        self.replace = {}        # id(node) -> list of nodes that take its place
        self.dropped = set()     # id(node) of nodes removed without replacement
        self.after = {}          # id(node) -> nodes inserted right after it (the DequantizeLinear of a quantiser)
        self.kept = set()        # id(node) of DynamicQuantizeLinear nodes kept: their DequantizeLinear reads them
        self.fake = {}           # quantised activation -> its DequantizeLinear output

    # --- constants and names ----------------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (not overridable by a graph input) or of a Constant node's output."""
        if name in self.inits and name not in self.graph_inputs:
            return numpy_helper.to_array(self.inits[name])
        p = self.producer.get(name)
        if p is not None and p.op_type == "Constant" and p.domain in _DEFAULT_DOMAINS and len(p.attribute) == 1 \
                and p.attribute[0].name == "value":
            return numpy_helper.to_array(p.attribute[0].t)
        return None

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def sole_consumer(self, value: str, what: str) -> onnx.NodeProto:
        users = self.consumers.get(value, [])
        if value in self.graph_outputs or value in self.sub_used or len(users) != 1:
            extra = " and is a graph output" if value in self.graph_outputs else \
                " and is read inside a subgraph" if value in self.sub_used else ""
            raise _Refused(f"{what} '{value}' is used by {len(users)} nodes{extra}, expected by one node only")
        return users[0]

    def float_weight(self, key: tuple, base: str, value: np.ndarray) -> str:
        if key not in self.cache:
            if base.endswith("_quantized"):
                base = base[: -len("_quantized")]
            name = self.fresh(base if base not in self.names else base + "_dequantized")
            self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
            self.cache[key] = name
        return self.cache[key]

    def node_name(self, n: onnx.NodeProto) -> str:
        base = n.name[: -len("_quant")] if n.name.endswith("_quant") else (n.name or n.op_type)
        return self.fresh(base)

    # --- driver -----------------------------------------------------------------------------------------------

    def run(self) -> None:
        reasons = {}
        for n in list(self.g.node):
            if n.domain == "com.microsoft" and n.op_type == "DynamicQuantizeLSTM":
                fn = self.rewrite_lstm
            elif n.domain in _DEFAULT_DOMAINS and n.op_type in _INTEGER_OPS:
                fn = self.rewrite_integer
            else:
                continue
            try:
                fn(n)
            except _Refused as e:
                reasons[id(n)] = str(e)
        nodes = []
        for n in self.g.node:
            if id(n) in self.replace:
                nodes.extend(self.replace[id(n)])
            elif id(n) not in self.dropped:
                nodes.append(n)
            nodes.extend(self.after.get(id(n), []))
        removed = [n for n in self.g.node if id(n) in self.replace or id(n) in self.dropped]
        nodes = self.drop_dead(nodes, removed)
        users = {}
        for n in nodes:
            for i in n.input:
                users.setdefault(i, []).append(n)
        # a block that could not be rewritten says why first; its DynamicQuantizeLinear would only say it is left over
        order = sorted(enumerate(nodes), key=lambda e: id(e[1]) not in reasons)
        for i, n in order:
            self.check(n, i, reasons, users)
        self.commit(nodes)

    def check(self, n: onnx.NodeProto, i: int, reasons: dict, users: dict) -> None:
        name = n.name or f"{n.op_type}_{i}"
        domain = n.domain or "ai.onnx"
        if n.domain not in _DEFAULT_DOMAINS and not (n.domain == "com.microsoft"
                                                     and n.op_type == "DynamicQuantizeLSTM"):
            raise UnsupportedError(f"{self.where}: node '{name}' uses op '{n.op_type}' of domain '{domain}'; "
                                   f"{_ACCEPTS}")
        if n.op_type in _QUANT_OPS and id(n) not in self.kept and not self.fake_quantiser(n, users):
            why = reasons.get(id(n))
            if why is None:   # a DynamicQuantizeLinear still used by something that was not rewritten
                to = [repr(u.name or u.op_type) for o in n.output for u in users.get(o, [])]
                why = f"its outputs feed {', '.join(to) or 'the graph outputs'}, not a MatMulInteger/ConvInteger " \
                      f"block that can be dequantised"
            raise UnsupportedError(f"{self.where}: node '{name}' (op '{n.op_type}' of domain '{domain}') is not in "
                                   f"the form onnxruntime's quantize_dynamic writes: {why}; {_ACCEPTS}")

    @staticmethod
    def fake_quantiser(n: onnx.NodeProto, users: dict) -> bool:
        """A DynamicQuantizeLinear read only by DequantizeLinear nodes: a float op (the activation rounded to 256
        levels) that the runtime runs as it is."""
        readers = [u for o in n.output if o for u in users.get(o, [])]
        return n.op_type == "DynamicQuantizeLinear" and n.domain in _DEFAULT_DOMAINS and bool(readers) and all(
            u.op_type == "DequantizeLinear" and u.domain in _DEFAULT_DOMAINS for u in readers)

    def drop_dead(self, nodes: list, removed: list) -> list:
        """Remove, transitively, the producers that the removed nodes leave without any consumer."""
        used = {}
        for n in nodes:
            for i in n.input:
                if i:
                    used[i] = used.get(i, 0) + 1
        alive = {id(n) for n in nodes}
        by_id = {id(n): n for n in nodes}
        stack = [self.producer[i] for r in removed for i in r.input if i in self.producer]
        dead = set()
        while stack:
            p = stack.pop()
            if id(p) not in alive or id(p) in dead:
                continue
            if any(o and (used.get(o, 0) or o in self.graph_outputs or o in self.sub_used) for o in p.output):
                continue
            dead.add(id(p))
            for i in by_id[id(p)].input:
                if i:
                    used[i] -= 1
                    if i in self.producer:
                        stack.append(self.producer[i])
        self.dropped |= dead
        return [n for n in nodes if id(n) not in dead]

    def commit(self, nodes: list) -> None:
        """Write the new node list; drop the initializers only the removed nodes used, and stale value_info."""
        g = self.g
        used = {i for n in nodes for i in n.input} | self.graph_outputs | self.graph_inputs | self.sub_used
        freed = {i for n in g.node if id(n) in self.replace or id(n) in self.dropped for i in n.input}
        produced = {o for n in nodes for o in n.output}
        keep_inits = [t for t in g.initializer if t.name in used or t.name not in freed] + self.new_inits
        keep_vi = [v for v in g.value_info if v.name in produced]
        del g.node[:]
        g.node.extend(nodes)
        del g.initializer[:]
        g.initializer.extend(keep_inits)
        del g.value_info[:]
        g.value_info.extend(keep_vi)

    # --- MatMulInteger / ConvInteger --------------------------------------------------------------------------

    def rewrite_integer(self, n: onnx.NodeProto) -> None:
        conv = n.op_type == "ConvInteger"
        ins = list(n.input) + [""] * (4 - len(n.input))
        a, b, a_zp, b_zp = ins[:4]
        x, x_scale, quantiser = self.activation_source(a, a_zp)
        w_q = self.const(b)
        if w_q is None or w_q.dtype not in (np.int8, np.uint8):
            raise _Refused(f"its weight '{b}' is not a constant int8/uint8 tensor")
        w_zp = self.const(b_zp) if b_zp else np.zeros((), w_q.dtype)
        if w_zp is None or w_zp.dtype != w_q.dtype:
            raise _Refused(f"its weight zero point '{b_zp}' is not a constant of the weight's type {w_q.dtype}")
        if conv:
            if w_q.ndim < 3:
                raise _Refused(f"its weight '{b}' has rank {w_q.ndim}, expected at least 3")
            rows = w_q.shape[0]
            zp_ok = w_zp.size == 1 or w_zp.shape == (rows,)
        else:
            if w_q.ndim != 2:
                raise _Refused(f"its weight '{b}' has rank {w_q.ndim}, expected 2")
            rows = w_q.shape[1]
            zp_ok = w_zp.size == 1 or w_zp.shape == (rows,)
        if not zp_ok:
            raise _Refused(f"its weight zero point '{b_zp}' has shape {list(w_zp.shape)}, expected a scalar or "
                           f"one per output {'channel' if conv else 'column'} ({rows})")

        # forward: [Add(int bias)] -> Cast(float) -> Mul(x_scale * W_scale) or Mul(x_scale) -> Mul(W_scale)
        chain = [n]
        cur = n.output[0]
        c = self.sole_consumer(cur, "its output")
        bias = None
        if c.op_type == "Add" and c.domain in _DEFAULT_DOMAINS:
            bias = c.input[1] if c.input[0] == cur else c.input[0]
            bias_scale, scales, bias, bias_shape = self.integer_bias(bias, x_scale, conv, rows, w_q.ndim)
            chain.append(c)
            cur = c.output[0]
            c = self.sole_consumer(cur, "its biased output")
        if c.op_type != "Cast" or c.domain not in _DEFAULT_DOMAINS or _attr(c, "to") != onnx.TensorProto.FLOAT:
            raise _Refused(f"its output goes to {c.op_type} '{c.name}', expected Cast(to=float)")
        chain.append(c)
        cur = c.output[0]
        m = self.sole_consumer(cur, "its float output")
        scale, out = self.output_scale(m, cur, x_scale)
        if bias is not None and not np.array_equal(np.ravel(bias_scale), np.ravel(scale)):
            raise _Refused("its integer bias is quantised with another weight scale than its output")
        rank = w_q.ndim   # a Conv's output has the rank of its weight; MatMul's weight scale acts on columns
        if conv:
            per_row = (rows,) + (1,) * (rank - 2)
            ok = (scale.size == 1 and scale.ndim <= rank) or scale.shape in (per_row, (1,) + per_row)
            w_shape = (rows,) + (1,) * (rank - 1)
        else:
            ok = (scale.size == 1 and scale.ndim <= 1) or scale.shape == (rows,)
            w_shape = (1, rows)
        if not ok:
            raise _Refused(f"its output is multiplied by a weight scale of shape {list(scale.shape)}, which does not "
                           f"scale it per output {'channel' if conv else 'column'} (expected a scalar or shape "
                           f"{list(per_row) if conv else [rows]})")
        zp_f = w_zp.astype(np.float32).reshape(w_shape if w_zp.size > 1 else ())
        scale_f = scale.astype(np.float32).reshape(w_shape if scale.size > 1 else ())
        w = (w_q.astype(np.float32) - zp_f) * scale_f
        wname = self.float_weight((b, b_zp, scale.tobytes(), scale.shape, n.op_type), b, w)
        name = self.node_name(n)
        final = out[-1]
        x_in = self.fake_quantised(quantiser) if quantiser is not None else x
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute} if conv else {}
        if bias is None:
            new = [helper.make_node(n.op_type[: -len("Integer")], [x_in, wname], [final.output[0]], name, **attrs)]
        else:
            # the integer bias as the quantised model adds it: b rounded to a multiple of x_scale * W_scale
            mid, b_int, b_f = (self.fresh(final.output[0] + t) for t in ("_nobias", "_bias_int", "_bias"))
            new = [helper.make_node(n.op_type[: -len("Integer")], [x_in, wname], [mid], name, **attrs),
                   helper.make_node("Cast", [bias], [b_int], self.fresh(name + "_bias_cast"),
                                    to=onnx.TensorProto.FLOAT),
                   helper.make_node("Mul", [b_int, scales], [b_f], self.fresh(name + "_bias_scale"))]
            if bias_shape is not None:
                b_r = self.fresh(final.output[0] + "_bias_reshaped")
                new.append(helper.make_node("Reshape", [b_f, bias_shape], [b_r], self.fresh(name + "_bias_reshape")))
                b_f = b_r
            new.append(helper.make_node("Add", [mid, b_f], [final.output[0]], self.fresh(name + "_bias")))
        self.replace[id(final)] = new
        for k in chain + out[:-1]:
            self.dropped.add(id(k))

    def activation_source(self, a: str, a_zp: str) -> tuple[str, str, onnx.NodeProto | None]:
        """(x, x_scale, quantiser) for an integer input quantised from the float activation x at run time over x's
        whole range: DynamicQuantizeLinear(x) (the quantiser, whose rounding the rewrite keeps), or (models of opset
        <= 10) QuantizeLinear(x, scale, zero point) with both computed from ReduceMin(x) / ReduceMax(x) (quantiser
        None: that arithmetic is not carried over, the float op reads the unrounded activation)."""
        d = self.producer.get(a)
        if d is not None and d.op_type == "DynamicQuantizeLinear" and d.domain in _DEFAULT_DOMAINS:
            if a_zp != d.output[2]:
                raise _Refused(f"its input zero point '{a_zp}' is not the one DynamicQuantizeLinear "
                               f"'{d.name}' computes")
            if a != d.output[0]:
                raise _Refused(f"its input '{a}' is not the quantised output of DynamicQuantizeLinear '{d.name}'")
            return d.input[0], d.output[1], d
        if d is not None and d.op_type == "QuantizeLinear" and d.domain in _DEFAULT_DOMAINS and len(d.input) == 3:
            x, scale, zp = d.input
            if a_zp != zp:
                raise _Refused(f"its input zero point '{a_zp}' is not the one QuantizeLinear '{d.name}' uses")
            if self.from_range_of(x, scale) and self.from_range_of(x, zp):
                return x, scale, None
            raise _Refused(f"its input comes from QuantizeLinear '{d.name}' whose scale and zero point are not "
                           f"computed from the whole range of '{x}' at run time (static quantisation)")
        if d is not None and d.op_type in ("Gather", "Transpose"):
            raise _Refused(f"its input '{a}' comes from {d.op_type} '{d.name}' of an integer tensor, not from a "
                           f"DynamicQuantizeLinear (quantised embedding tables are not dequantised: quantise with "
                           f"op_types_to_quantize=['MatMul', 'Conv', 'LSTM'])")
        raise _Refused(f"its input '{a}' does not come from a DynamicQuantizeLinear")

    def fake_quantised(self, d: onnx.NodeProto) -> str:
        """The output of ``DequantizeLinear(q, scale, zero point)`` of DynamicQuantizeLinear node d's outputs, made
        once per quantiser: the activation rounded to the 256 levels the integer op multiplies."""
        if d.output[0] not in self.fake:
            out = self.fresh(d.input[0] + "_fake_quantized")
            node = helper.make_node("DequantizeLinear", list(d.output[:3]), [out],
                                    self.fresh((d.name or "DynamicQuantizeLinear") + "_dequantize"))
            self.after.setdefault(id(d), []).append(node)
            self.kept.add(id(d))
            self.fake[d.output[0]] = out
        return self.fake[d.output[0]]

    def from_range_of(self, x: str, value: str) -> bool:
        """Whether `value` is computed only from constants and the minimum / maximum over all of x (the arithmetic
        onnxruntime writes for dynamic quantisation in opset <= 10), reading x at least once."""
        seen, stack, reads_x = set(), [value], False
        while stack:
            v = stack.pop()
            if v in seen or self.const(v) is not None:
                continue
            seen.add(v)
            p = self.producer.get(v)
            if p is None or p.domain not in _DEFAULT_DOMAINS or len(seen) > 64 or p.op_type not in (
                    "ReduceMin", "ReduceMax", "Sub", "Div", "Mul", "Add", "Abs", "Max", "Min", "Floor", "Round",
                    "Cast", "Clip"):
                return False
            if p.op_type in ("ReduceMin", "ReduceMax"):
                if list(p.input) != [x] or _attr(p, "axes") is not None or _attr(p, "keepdims") != 0:
                    return False
                reads_x = True
                continue
            if x in p.input:
                return False
            stack.extend(i for i in p.input if i)
        return reads_x

    def output_scale(self, m: onnx.NodeProto, cur: str, x_scale: str) -> tuple[np.ndarray, list]:
        """The weight scale of ``Mul(cur, Mul(x_scale, W_scale))`` or ``Mul(Mul(cur, x_scale), W_scale)`` (either
        order of every Mul's inputs), and the Mul nodes of the chain (the last one gives the block's output)."""
        if m.op_type != "Mul" or m.domain not in _DEFAULT_DOMAINS:
            raise _Refused(f"its float output goes to {m.op_type} '{m.name}', expected Mul by the scales")
        other = m.input[1] if m.input[0] == cur else m.input[0]
        p = self.producer.get(other)
        if p is not None and p.op_type == "Mul" and p.domain in _DEFAULT_DOMAINS and x_scale in p.input:
            w_scale = p.input[1] if p.input[0] == x_scale else p.input[0]
            s = self.const(w_scale)
            if s is None or s.dtype != np.float32:
                raise _Refused(f"the weight scale '{w_scale}' is not a float32 constant")
            return s, [m]
        if other == x_scale:
            m2 = self.sole_consumer(m.output[0], "its output times the input scale")
            if m2.op_type == "Mul" and m2.domain in _DEFAULT_DOMAINS:
                w_scale = m2.input[1] if m2.input[0] == m.output[0] else m2.input[0]
                s = self.const(w_scale)
                if s is not None and s.dtype == np.float32:
                    return s, [m, m2]
            raise _Refused(f"its output times the input scale goes to {m2.op_type} '{m2.name}', expected Mul by a "
                           f"float32 weight scale")
        s = self.const(other)
        if s is not None and s.dtype == np.float32:
            m2 = self.sole_consumer(m.output[0], "its output times the weight scale")
            if m2.op_type == "Mul" and m2.domain in _DEFAULT_DOMAINS and x_scale in m2.input:
                return s, [m, m2]
            raise _Refused(f"its output times the weight scale goes to {m2.op_type} '{m2.name}', expected Mul by "
                           f"the input scale '{x_scale}'")
        raise _Refused(f"its float output is multiplied by '{other}', not by the input scale '{x_scale}' times a "
                       f"weight scale")

    def integer_bias(self, value: str, x_scale: str, conv: bool, rows: int, rank: int):
        """Of an integer bias ``[Reshape(]Cast(Floor|Round(Div(b, Mul(x_scale, W_scale))))[, shape)]`` with b a
        constant float32 bias: (W_scale, the name of x_scale * W_scale, the name of the Cast's int32 output, the
        Reshape's shape input or None)."""
        p = self.producer.get(value)
        shape_name = None
        if conv:
            if p is None or p.op_type != "Reshape":
                raise _Refused(f"its integer bias '{value}' does not come from a Reshape")
            shape = self.const(p.input[1])
            if shape is None or list(shape.reshape(-1)) not in ([1, -1] + [1] * (rank - 2), [1, rows] + [1] *
                                                                 (rank - 2)):
                raise _Refused(f"its integer bias is reshaped to '{p.input[1]}', expected one value per channel")
            shape_name = p.input[1]
            p = self.producer.get(p.input[0])
        if p is None or p.op_type != "Cast" or _attr(p, "to") != onnx.TensorProto.INT32:
            raise _Refused(f"its integer bias '{value}' does not come from Cast(to=int32)")
        cast = p
        p = self.producer.get(p.input[0])
        if p is None or p.op_type not in ("Floor", "Round"):
            raise _Refused(f"its integer bias '{value}' is not a rounded division by the scales")
        p = self.producer.get(p.input[0])
        if p is None or p.op_type != "Div":
            raise _Refused(f"its integer bias '{value}' is not a rounded division by the scales")
        b = self.const(p.input[0])
        s = self.producer.get(p.input[1])
        if b is None or b.dtype != np.float32 or b.shape != (rows,) or s is None or s.op_type != "Mul" \
                or x_scale not in s.input:
            raise _Refused(f"its integer bias '{value}' is not a float32 bias of {rows} values divided by the input "
                           f"scale times the weight scale")
        w_scale = self.const(s.input[1] if s.input[0] == x_scale else s.input[0])
        if w_scale is None or w_scale.dtype != np.float32:
            raise _Refused(f"its integer bias '{value}' is divided by a weight scale that is not a float32 constant")
        return w_scale, s.output[0], cast.output[0], shape_name

    # --- DynamicQuantizeLSTM ----------------------------------------------------------------------------------

    def rewrite_lstm(self, n: onnx.NodeProto) -> None:
        ins = list(n.input) + [""] * (12 - len(n.input))
        if len(n.input) > 12:
            raise _Refused(f"it has {len(n.input)} inputs, expected at most 12")
        names = {a.name for a in n.attribute}
        extra = sorted(names - set(_LSTM_ATTRS))
        if extra:
            raise _Refused(f"it has attributes {extra} that LSTM does not know")
        hidden = _attr(n, "hidden_size")
        direction = _attr(n, "direction")
        direction = direction.decode() if isinstance(direction, bytes) else (direction or "forward")
        nd = 2 if direction == "bidirectional" else 1
        new_inputs = [ins[0]]
        for idx, what in ((1, "W"), (2, "R")):
            q = self.const(ins[idx])
            s = self.const(ins[6 + 2 * idx]) if ins[6 + 2 * idx] else None
            zp = self.const(ins[7 + 2 * idx]) if ins[7 + 2 * idx] else None
            if q is None or q.dtype not in (np.int8, np.uint8) or q.ndim != 3 or q.shape[0] != nd:
                raise _Refused(f"its {what} '{ins[idx]}' is not a constant int8/uint8 tensor of shape "
                               f"[{nd}, size, 4*hidden]")
            rows = q.shape[2]
            if hidden is not None and rows != 4 * hidden:
                raise _Refused(f"its {what} '{ins[idx]}' has {rows} gate rows, expected 4*hidden_size = {4 * hidden}")
            if s is None or s.dtype != np.float32 or s.shape not in ((nd,), (nd, rows)):
                raise _Refused(f"its {what}_scale '{ins[6 + 2 * idx]}' is not a float32 constant of shape [{nd}] or "
                               f"[{nd}, {rows}]")
            if zp is None:
                zp = np.zeros(s.shape, q.dtype)
            if zp.dtype != q.dtype or zp.shape != s.shape:
                raise _Refused(f"its {what}_zero_point '{ins[7 + 2 * idx]}' does not match {what}'s type {q.dtype} "
                               f"and its scale's shape {list(s.shape)}")
            bshape = (nd, 1, 1) if s.ndim == 1 else (nd, 1, rows)
            w = (q.astype(np.float32) - zp.astype(np.float32).reshape(bshape)) * s.reshape(bshape)
            key = (ins[idx], ins[6 + 2 * idx], ins[7 + 2 * idx], "lstm")
            new_inputs.append(self.float_weight(key, ins[idx], np.transpose(w, (0, 2, 1))))
        new_inputs += ins[3:8]
        while new_inputs and not new_inputs[-1]:
            new_inputs.pop()
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        name = self.node_name(n)
        # the contrib kernel quantises X (all steps at once) to uint8 as DynamicQuantizeLinear does before its
        # integer product with W; the float LSTM reads X rounded the same way
        q, x_scale, x_zp, x_in = (self.fresh(f"{ins[0]}_{t}") for t in ("quantized", "scale", "zero_point",
                                                                         "fake_quantized"))
        quantise = helper.make_node("DynamicQuantizeLinear", [ins[0]], [q, x_scale, x_zp],
                                    self.fresh(name + "_quantize_x"))
        self.kept.add(id(quantise))
        self.replace[id(n)] = [
            quantise,
            helper.make_node("DequantizeLinear", [q, x_scale, x_zp], [x_in], self.fresh(name + "_dequantize_x")),
            helper.make_node("LSTM", [x_in] + new_inputs[1:], list(n.output), name, **attrs)]


def _attr(n: onnx.NodeProto, name: str):
    for a in n.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _graph_reads(a: onnx.AttributeProto):
    """Every name the nodes of a GRAPH / GRAPHS attribute read (recursively); a superset of the outer-scope ones."""
    for body in ([a.g] if a.type == onnx.AttributeProto.GRAPH else
                 list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []):
        for n in body.node:
            yield from (i for i in n.input if i)
            for b in n.attribute:
                yield from _graph_reads(b)
