"""Recurrent ops: LSTM and GRU (ONNX opsets 7-22): directions forward, reverse and bidirectional; optional bias,
sequence_lens (a constant; shorter sequences as onnxruntime treats them: outputs past a sequence's end are zero,
Y_h / Y_c hold its last state, or zero for an empty one), initial_h, initial_c and peepholes; `clip`,
`input_forget`, `layout` 0 and 1 (opset 14); GRU's `linear_before_reset` 0 and 1; any of Y, Y_h, Y_c omitted.
Activations: Sigmoid, Tanh, Relu, Softsign and Softplus (the parameter-free ones); others are refused by name.

The input part of every gate at every step, W x_t plus the biases, is one matrix product per direction before the
recurrence (float32 W: bound through runtime/ops/linear.py, its dot-product kernel or BLAS, the biases in its
epilogue); then one kernel per op runs every direction and batch row: per step the gate pre-activations are that plus
R h_{t-1} (simd_dot.rows_dot8: eight rows of R at a time, their sums reduced together), then the cell update in place
(with the default activations one vectorised loop). At batch 1 the steps are bound by reading R (ddddocr's 2 x 4 MiB:
from L3 at every step, ~75 GB/s on the dev VM; every other step visits R's rows last to first, starting on what the
step before left in L2). The projections and the state (directions x steps x batch x gates x hidden, plus a few
hidden sizes, float32) live in the executor's shared scratch, which the memory plan counts (OpDef.scratch_bytes); the
plain runner allocates them per call.
W arrives dense, or as a CodebookWeight when the file holds it as dense codes (runtime/model.py HELD_CODES_INPUT):
the projection then runs on the codes as linear.py's rows form does (_project_codes_kernel, the same sums, written
gate-major; 2 MB of 8-bit codes for ddddocr's W, where float32 took 8 MB of RAM and of reads per run). R arrives
dense (expanded at load). Held sparse, R would not pay at the densities pruning leaves: the dense matvec streams R at
~0.2 cycles a weight, and every sparse form tried spends more per kept weight (a gather of h, or an expand per 16
columns); benchmarks/sparse_recurrence.py on ddddocr's R: CSR 0.5x at density 0.3, break-even near 0.12, 1.9x at
0.05.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from edgepack.runtime.errors import FormatError, UnsupportedError
from edgepack.runtime.ops.fastmath import sigmoid_value, tanh_value
from edgepack.runtime.ops.linear import (ROWS_NARROW, bind_linear, prepare_linear, rows_lanes, tile_rows_sums,
                                          tile_transpose)
from edgepack.runtime.ops.registry import OpDef, check_arity, float_attr, int_attr
from edgepack.runtime.ops.simd_dot import LANES, dot, rows_dot8
from edgepack.runtime.ops.simd_rows import LANES as TILE_LANES
from edgepack.runtime.ops.simd_rows import DENSE_ROWS
from edgepack.runtime.weights import CodebookWeight, DenseWeight

# activation codes of the kernels
_ACTS = {"sigmoid": 0, "tanh": 1, "relu": 2, "softsign": 3, "softplus": 4}
_ACT_NAMES = ("Sigmoid", "Tanh", "Relu", "Softsign", "Softplus")
_DIRECTIONS = ("forward", "reverse", "bidirectional")


@njit(cache=True, error_model="numpy")
def _act_block(code, v):
    """v <- activation `code` of v, in place, one vectorised loop (Sigmoid and Tanh through fastmath.py's
    inlined exp: sigmoid_value and tanh_value, the same bits as expf). In place over ONE array the loop
    vectorises; the former form (e = k v, then an exp loop over e in place, then a third loop) sent the exp to
    LLVM's scalar loop (its overlap test): the activations took 12% of ddddocr's LSTM and 43% of hey_mycroft's
    first one."""
    m = v.shape[0]
    one = np.float32(1.0)
    if code == 0:
        for j in range(m):
            v[j] = sigmoid_value(v[j])
    elif code == 1:
        for j in range(m):
            v[j] = tanh_value(v[j])
    elif code == 2:
        for j in range(m):
            v[j] = v[j] if v[j] > np.float32(0.0) else np.float32(0.0)
    elif code == 3:
        for j in range(m):
            v[j] = v[j] / (one + abs(v[j]))
    else:
        for j in range(m):
            x = v[j]
            if x < np.float32(20.0):
                v[j] = np.float32(math.log1p(math.exp(x)))
            else:
                v[j] = x + np.float32(math.log1p(math.exp(-x)))


@njit(cache=True)
def _clip_kernel(v, clip):
    if clip > np.float32(0.0):
        if v > clip:
            return clip
        if v < -clip:
            return -clip
    return v


@njit(cache=True, error_model="numpy")
def _gemv_kernel(rf, base, nrows, k, x, out, backward):
    """out[q] = dot(row q, x[:k]) for q < nrows, the rows of length k from rf[base] (R flattened): eight rows at a
    time in simd_dot.rows_dot8 over the first k - k % 8 columns, the other columns added after (dot), rows
    past the last eight as dot alone. Below 8 columns, dot per row (rows_dot8 would only add its
    reduction). Every sum's order is fixed by k and the row's place: runs are bit-identical. `backward` visits the
    blocks of eight last to first (the same sums): alternated step by step, a step starts on the rows the step before
    read last, which are still in L2 when R is larger than L2 (ddddocr's 4 MiB a direction)."""
    kv = k - k % LANES if k >= LANES else 0
    blocks = nrows // LANES if kv else 0
    for bi in range(blocks):
        q = (blocks - 1 - bi if backward else bi) * LANES
        rows_dot8(rf, base + q * k, k, kv, x, out, q)
        if kv < k:
            for j in range(q, q + LANES):
                row = base + j * k
                out[j] = out[j] + dot(rf[row + kv:row + k], x[kv:k])
    for q in range(blocks * LANES, nrows):
        row = base + q * k
        out[q] = dot(rf[row:row + k], x[:k])


@njit(cache=True)
def _step_inputs(xw, d, row, gate_major, col):
    """The projected inputs of one step (every gate row of direction d at step-batch row `row`): a row of xw, or for a
    gate-major xw its column gathered into col."""
    if not gate_major:
        return xw[d, row]
    for k in range(col.shape[0]):
        col[k] = xw[d, k, row]
    return col


@njit(cache=True)
def _project_codes_kernel(x, codes, codebook, scales, bias, xw, xt, acc):
    """xw[d, r, s] = codebook[codes] row (d, r) . x[s] (times scales[d * G + r] if any) + bias[d, r] (if any), for
    every direction d and gate row r (G of them) and step-batch row s: W held as dense 8-bit codes, projected as
    linear.py's rows form does (_dense_row_tiles_kernel: x's rows transposed into a tile of lanes, then
    simd_rows.dense_fma, four weight rows at a time, every sum in k order; the same bits), but written gate-major:
    each weight row's outputs are contiguous, where the rows form's [rows, G] output takes one strided store per
    value (its epilogue: 0.16 of its 0.66 ms for one direction of ddddocr, 22 x 512 -> 2048), and the x tile is
    transposed once for the directions. xt: >= lanes * k floats, acc: >= DENSE_ROWS * lanes."""
    bsz, k_in = x.shape
    n_dir, gh = xw.shape[0], xw.shape[1]
    has_b = bias.size != 0
    has_os = scales.shape[0] != 0
    lw = ROWS_NARROW if bsz <= ROWS_NARROW else TILE_LANES
    for b0 in range(0, bsz, lw):
        bt = min(lw, bsz - b0)
        tile_transpose(x, b0, bt, lw, xt)
        for d in range(n_dir):
            r = 0
            while r < gh:
                m = tile_rows_sums(xt, codes, codebook, np.int64((d * gh + r) * k_in), np.int64(k_in), acc, lw,
                                   gh - r)
                for j in range(m):
                    sc = scales[d * gh + r + j] if has_os else np.float32(1.0)
                    c = bias[d, r + j] if has_b else np.float32(0.0)
                    dst = xw[d, r + j]
                    for b in range(bt):
                        v = acc[j * lw + b] * sc if has_os else acc[j * lw + b]
                        if has_b:
                            v += c
                        dst[b0 + b] = v
                r += m


@njit(cache=True)
def _put_y_kernel(y, layout, t, d, n, h, count):
    """Y[step t, direction d, sample n, :] = h[:count], zeros after it, in the node's layout."""
    for j in range(y.shape[3]):
        v = h[j] if j < count else np.float32(0.0)
        if layout == 0:
            y[t, d, n, j] = v
        else:
            y[n, t, d, j] = v


@njit(cache=True, error_model="numpy")
def _lstm_cell_kernel(g, c, h, hid):
    """The LSTM cell update with the default activations, one loop over the hidden units: i, o, f = sigmoid of
    gates 0-2 of g, c <- f c + i tanh(gate 3), h <- o tanh(c); the passes of _lstm_kernel's general path computed
    value by value (the same bits). g, c, h do not overlap (views of the kernel's state)."""
    for j in range(hid):
        i = sigmoid_value(g[j])
        o = sigmoid_value(g[hid + j])
        f = sigmoid_value(g[2 * hid + j])
        cj = f * c[j] + i * tanh_value(g[3 * hid + j])
        c[j] = cj
        h[j] = tanh_value(cj) * o


@njit(cache=True, error_model="numpy")
def _lstm_kernel(xw, gate_major, r, lens, h0, c0, p, acts, clip, input_forget, reverse0, layout, y, yh, yc, has_y,
                 has_yh, has_yc, state):
    """xw [D, S*N, 4H]: W x_t + Wb + Rb of every step (row t*N + n for layout 0, n*S + t for layout 1: the biases
    added by the projection, _fold_biases_kernel), or [D, 4H, S*N] when gate_major (_project_codes_kernel); r [D, 4H, H]
    (gate rows i, o, f, c); lens [N] int64; h0, c0: [D, N, H] (layout 0) or [N, D, H]; p [D, 3H] (i, o, f); acts
    [D, 3] (f, g, h codes); y: [S, D, N, H] or [N, S, D, H]; yh, yc like h0; state float32 >= 12H.
    Direction d runs in reverse when d == 1 or reverse0. Per step: the 4H gate pre-activations (R h: _gemv_kernel),
    then the cell update: with the default activations (Sigmoid, Tanh, Tanh), no peepholes, clip or
    input_forget one vectorised loop over the hidden units (_lstm_cell_kernel); else in passes, each activation one
    _act_block call. Both give the same bits."""
    n_dir, g4, hid = r.shape
    rf = r.reshape(r.size)
    batch = lens.shape[0]
    seq = xw.shape[2 if gate_major else 1] // batch if batch else 0
    h = state[0:hid]
    c = state[hid:2 * hid]
    g = state[2 * hid:2 * hid + g4]
    col = state[2 * hid + g4:2 * hid + 2 * g4]
    gi, go, gf, gc = g[0:hid], g[hid:2 * hid], g[2 * hid:3 * hid], g[3 * hid:4 * hid]
    # absent optional inputs arrive as empty arrays: no bias, zero initial state, no peepholes
    has_h0, has_c0, has_p = h0.size != 0, c0.size != 0, p.size != 0
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for d in range(n_dir):
        rev = d == 1 or reverse0
        fa, ga, ha = acts[d, 0], acts[d, 1], acts[d, 2]
        fused = fa == 0 and ga == 1 and ha == 1 and not has_p and not clip > zero and not input_forget
        for n in range(batch):
            for j in range(hid):
                if layout == 0:
                    h[j] = h0[d, n, j] if has_h0 else zero
                    c[j] = c0[d, n, j] if has_c0 else zero
                else:
                    h[j] = h0[n, d, j] if has_h0 else zero
                    c[j] = c0[n, d, j] if has_c0 else zero
            steps = lens[n]
            for s in range(steps):
                t = steps - 1 - s if rev else s
                xt = _step_inputs(xw, d, t * batch + n if layout == 0 else n * seq + t, gate_major, col)
                _gemv_kernel(rf, d * g4 * hid, g4, hid, h, g, s % 2 == 1)
                for k in range(g4):
                    g[k] = xt[k] + g[k]
                if fused:
                    _lstm_cell_kernel(g, c, h, hid)
                    if has_y:
                        _put_y_kernel(y, layout, t, d, n, h, hid)
                    continue
                if has_p:
                    for j in range(hid):
                        gi[j] += p[d, j] * c[j]
                        gf[j] += p[d, 2 * hid + j] * c[j]
                if clip > zero:
                    for j in range(hid):
                        gi[j] = _clip_kernel(gi[j], clip)
                        gf[j] = _clip_kernel(gf[j], clip)
                        gc[j] = _clip_kernel(gc[j], clip)
                        if not has_p:
                            go[j] = _clip_kernel(go[j], clip)
                if has_p:  # o's peephole reads the new cell state: o waits for it
                    _act_block(fa, gi)
                    if not input_forget:
                        _act_block(fa, gf)
                else:  # gates i, o, f (contiguous) in one pass: at small hidden sizes the calls weigh
                    _act_block(fa, g[0:3 * hid])
                _act_block(ga, gc)
                for j in range(hid):
                    f = one - gi[j] if input_forget else gf[j]
                    c[j] = f * c[j] + gi[j] * gc[j]
                if has_p:
                    for j in range(hid):
                        go[j] = _clip_kernel(go[j] + p[d, hid + j] * c[j], clip)
                    _act_block(fa, go)
                for j in range(hid):
                    h[j] = c[j]
                _act_block(ha, h)
                for j in range(hid):
                    h[j] *= go[j]
                if has_y:
                    _put_y_kernel(y, layout, t, d, n, h, hid)
            if has_y:
                for t in range(steps, seq):  # steps past the sequence's length are zero
                    _put_y_kernel(y, layout, t, d, n, h, 0)
            if steps == 0:  # an empty sequence: Y_h and Y_c are zero, not the initial state (as onnxruntime)
                for j in range(hid):
                    h[j] = 0.0
                    c[j] = 0.0
            for j in range(hid):
                if has_yh:
                    if layout == 0:
                        yh[d, n, j] = h[j]
                    else:
                        yh[n, d, j] = h[j]
                if has_yc:
                    if layout == 0:
                        yc[d, n, j] = c[j]
                    else:
                        yc[n, d, j] = c[j]


@njit(cache=True, error_model="numpy")
def _gru_kernel(xw, gate_major, r, b, lens, h0, acts, clip, linear_before_reset, reverse0, layout, y, yh, has_y, has_yh,
                state):
    """xw [D, S*N, 3H] or [D, 3H, S*N] as for LSTM, the biases the projection added: Wb + Rb for gates z and r, Wb for h
    (_fold_biases_kernel); r [D, 3H, H] (gate rows z, r, h); b [D, 6H] (Wb, Rb: the kernel reads h's Rb, which the reset
    gate scales); acts [D, 2] (f, g); state float32 >= 9H."""
    n_dir, g3, hid = r.shape
    rf = r.reshape(r.size)
    batch = lens.shape[0]
    seq = xw.shape[2 if gate_major else 1] // batch if batch else 0
    h = state[0:hid]
    gh = state[hid:hid + g3]
    rh = state[hid + g3:2 * hid + g3]
    col = state[2 * hid + g3:2 * hid + 2 * g3]
    zr, hh = gh[0:2 * hid], gh[2 * hid:3 * hid]
    has_b, has_h0 = b.size != 0, h0.size != 0  # absent: no bias, zero initial state
    zero = np.float32(0.0)
    for d in range(n_dir):
        rev = d == 1 or reverse0
        fa, ga = acts[d, 0], acts[d, 1]
        for n in range(batch):
            for j in range(hid):
                h[j] = zero if not has_h0 else h0[d, n, j] if layout == 0 else h0[n, d, j]
            steps = lens[n]
            for s in range(steps):
                t = steps - 1 - s if rev else s
                xt = _step_inputs(xw, d, t * batch + n if layout == 0 else n * seq + t, gate_major, col)
                _gemv_kernel(rf, d * g3 * hid, 2 * hid, hid, h, zr, False)
                for k in range(2 * hid):  # update and reset gates
                    zr[k] = _clip_kernel(xt[k] + zr[k], clip)
                _act_block(fa, zr)
                if linear_before_reset:
                    _gemv_kernel(rf, (d * g3 + 2 * hid) * hid, hid, hid, h, hh, False)
                    for j in range(hid):
                        hh[j] = gh[hid + j] * (hh[j] + (b[d, g3 + 2 * hid + j] if has_b else zero))
                else:
                    for j in range(hid):
                        rh[j] = gh[hid + j] * h[j]
                    _gemv_kernel(rf, (d * g3 + 2 * hid) * hid, hid, hid, rh, hh, False)
                    for j in range(hid):
                        hh[j] = hh[j] + (b[d, g3 + 2 * hid + j] if has_b else zero)
                for j in range(hid):
                    hh[j] = _clip_kernel(xt[2 * hid + j] + hh[j], clip)
                _act_block(ga, hh)
                for j in range(hid):
                    z = gh[j]
                    h[j] = (np.float32(1.0) - z) * hh[j] + z * h[j]
                if has_y:
                    _put_y_kernel(y, layout, t, d, n, h, hid)
            if has_y:
                for t in range(steps, seq):  # steps past the sequence's length are zero
                    _put_y_kernel(y, layout, t, d, n, h, 0)
            if steps == 0:  # an empty sequence: Y_h is zero, not the initial state (as onnxruntime)
                for j in range(hid):
                    h[j] = 0.0
            if has_yh:
                for j in range(hid):
                    if layout == 0:
                        yh[d, n, j] = h[j]
                    else:
                        yh[n, d, j] = h[j]


# ---- attributes and shapes ----

class _Geometry:
    """What infer() established, in the form run() needs."""

    def __init__(self, op, seq, batch, n_in, hid, n_dir, layout, reverse0, acts, clip, lens, extra):
        self.op, self.seq, self.batch, self.n_in, self.hid, self.n_dir = op, seq, batch, n_in, hid, n_dir
        self.layout, self.reverse0, self.acts, self.clip, self.lens, self.extra = layout, reverse0, acts, clip, lens, \
            extra


def _present(seq, i) -> bool:
    return i < len(seq) and seq[i] is not None


def _activations(attrs, n_dir: int, per_dir: int, defaults: tuple[str, ...]) -> np.ndarray:
    names = attrs.get("activations")
    if names is None:
        names = list(defaults) * n_dir
    if not isinstance(names, (list, tuple)) or not all(isinstance(a, str) for a in names):
        raise FormatError(f"attribute 'activations' must be a list of strings, found {names!r}")
    if len(names) != per_dir * n_dir:
        raise FormatError(f"attribute 'activations' must name {per_dir} functions per direction ({per_dir * n_dir} "
                          f"for {n_dir} direction(s)), found {len(names)}: {list(names)}")
    codes = np.empty((n_dir, per_dir), np.int64)
    for k, a in enumerate(names):
        code = _ACTS.get(a.lower())
        if code is None:
            raise UnsupportedError(f"activation '{a}' is not supported; supported: {', '.join(_ACT_NAMES)} "
                                   f"(activations with alpha/beta parameters are not)")
        codes[k // per_dir, k % per_dir] = code
    return codes


def _geometry(op: str, input_shapes, attrs, consts) -> _Geometry:
    gates = 4 if op == "LSTM" else 3
    n_max = 8 if op == "LSTM" else 6
    check_arity(input_shapes, 3, n_max)
    x, w, r = (tuple(input_shapes[i]) for i in range(3))
    direction = attrs.get("direction", "forward")
    if direction not in _DIRECTIONS:
        raise FormatError(f"attribute 'direction' must be one of {list(_DIRECTIONS)}, found {direction!r}")
    n_dir = 2 if direction == "bidirectional" else 1
    layout = int_attr(attrs, "layout", 0, (0, 1))
    if len(x) != 3:
        raise FormatError(f"input 0 ('X') must have rank 3, found shape {x}")
    seq, batch = (x[0], x[1]) if layout == 0 else (x[1], x[0])
    n_in = x[2]
    if len(r) != 3 or r[0] != n_dir or r[1] != gates * r[2]:
        raise FormatError(f"input 2 ('R') must have shape [{n_dir}, {gates} x hidden_size, hidden_size], found {r}")
    hid = r[2]
    if "hidden_size" in attrs and int_attr(attrs, "hidden_size", hid) != hid:
        raise FormatError(f"attribute 'hidden_size' = {attrs['hidden_size']} disagrees with R's shape {r}")
    if w != (n_dir, gates * hid, n_in):
        raise FormatError(f"input 1 ('W') must have shape {[n_dir, gates * hid, n_in]} (directions, {gates} x "
                          f"hidden_size, input size), found {w}")
    if _present(input_shapes, 3) and tuple(input_shapes[3]) != (n_dir, 2 * gates * hid):
        raise FormatError(f"input 3 ('B') must have shape {[n_dir, 2 * gates * hid]}, found "
                          f"{tuple(input_shapes[3])}")
    state = (n_dir, batch, hid) if layout == 0 else (batch, n_dir, hid)
    state_inputs = (5, 6) if op == "LSTM" else (5,)
    for i in state_inputs:
        if _present(input_shapes, i) and tuple(input_shapes[i]) != state:
            role = "initial_h" if i == 5 else "initial_c"
            raise FormatError(f"input {i} ('{role}') must have shape {list(state)} (layout {layout}), found "
                              f"{tuple(input_shapes[i])}")
    if op == "LSTM" and _present(input_shapes, 7) and tuple(input_shapes[7]) != (n_dir, 3 * hid):
        raise FormatError(f"input 7 ('P') must have shape {[n_dir, 3 * hid]}, found {tuple(input_shapes[7])}")
    lens = None
    if _present(input_shapes, 4):
        if tuple(input_shapes[4]) != (batch,):
            raise FormatError(f"input 4 ('sequence_lens') must have shape [{batch}], found {tuple(input_shapes[4])}")
        value = consts[4] if len(consts) > 4 else None
        if value is None:
            raise UnsupportedError("input 4 ('sequence_lens') must be a constant; computed sequence lengths are not "
                                   "supported (pack with --input-shape so that shape arithmetic is folded, or omit "
                                   "it when every sequence has the full length)")
        value = np.asarray(value)
        if value.dtype.kind not in "iuf" or (value.size and (not np.all(np.isfinite(value)) or
                                                             np.any(value != np.round(value)))):
            raise FormatError(f"input 4 ('sequence_lens') must hold integers, found {value.dtype} "
                              f"{value.reshape(-1)[:8].tolist()}")
        if value.size and (value.min() < 0 or value.max() > seq):
            raise FormatError(f"input 4 ('sequence_lens') values must be in [0, {seq}] (the sequence length), found "
                              f"{value.reshape(-1)[:8].tolist()}")
        lens = value.astype(np.int64).reshape(-1)
    clip = 0.0
    if "clip" in attrs:
        clip = float_attr(attrs, "clip", 0.0)
        if not clip > 0.0 or not math.isfinite(clip):
            raise FormatError(f"attribute 'clip' must be a positive finite float, found {attrs['clip']!r}")
    if op == "LSTM":
        acts = _activations(attrs, n_dir, 3, ("Sigmoid", "Tanh", "Tanh"))
        extra = bool(int_attr(attrs, "input_forget", 0, (0, 1)))
    else:
        acts = _activations(attrs, n_dir, 2, ("Sigmoid", "Tanh"))
        extra = bool(int_attr(attrs, "linear_before_reset", 0, (0, 1)))
    for key in ("activation_alpha", "activation_beta"):
        if attrs.get(key):
            raise UnsupportedError(f"attribute '{key}' is not supported (no supported activation takes parameters)")
    return _Geometry(op, seq, batch, n_in, hid, n_dir, layout, direction == "reverse", acts, clip, lens, extra)


def _out_shapes(g: _Geometry) -> list[tuple]:
    y = (g.seq, g.n_dir, g.batch, g.hid) if g.layout == 0 else (g.batch, g.seq, g.n_dir, g.hid)
    state = (g.n_dir, g.batch, g.hid) if g.layout == 0 else (g.batch, g.n_dir, g.hid)
    return [y, state, state] if g.op == "LSTM" else [y, state]


def _infer_lstm(input_shapes, attrs, consts):
    return _out_shapes(_geometry("LSTM", input_shapes, attrs, consts))


def _infer_gru(input_shapes, attrs, consts):
    return _out_shapes(_geometry("GRU", input_shapes, attrs, consts))


# ---- runners ----

_EMPTY = {rank: np.zeros((0,) * rank, np.float32) for rank in (1, 2, 3, 4)}  # absent inputs and outputs

def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _scratch_floats(op: str, input_shapes) -> tuple[int, int, int]:
    """(floats of the input projections W x_t, of the state and the folded biases (_fold_biases_kernel), of the
    projection's own scratch when W is held as codes) for these input shapes (infer() accepted). The last is counted whether or not W is held so: the shapes
    do not say (at ddddocr's 22 rows of 512 inputs, 50 KB)."""
    x, r = input_shapes[0], input_shapes[2]
    n_dir, gh, hid = (int(d) for d in r)
    rows = int(x[0]) * int(x[1])
    return (n_dir * rows * gh, (12 if op == "LSTM" else 9) * hid + n_dir * gh,
            rows_lanes(rows) * (int(x[2]) + DENSE_ROWS) if rows else 0)


def _scratch_bytes(op: str):
    def scratch_bytes(input_shapes, attrs) -> int:
        return 4 * sum(_scratch_floats(op, input_shapes))
    return scratch_bytes


# W held as codes projects as linear.py's rows form does, a tile of 24 or 32 lanes per pass: with few rows most lanes
# are empty and the float32 dot-product kernel wins. benchmarks/recurrent_ops.py, whole LSTM (1 thread, CPU time,
# load 9-11): codes / float32 at 22 rows of 512 -> 2048 x 2 (ddddocr) 4.5 / 5.1 ms; at 16 rows of 96 -> 256
# (hey_mycroft) 0.104 / 0.091; at 1 row (silero_vad) 0.043 / 0.014. Again after the gate-major codes projection and
# the faster recurrence (load 8-9): 4.3 / 4.6, 0.064 / 0.056, 0.042 / 0.010. The codes pay from CODES_MIN_ROWS rows
# whose tiles are at least CODES_MIN_FILL full.
CODES_MIN_ROWS = 18
CODES_MIN_FILL = 0.75


def codes_projection_pays(rows: int) -> bool:
    """Whether W held as codes projects faster than a float32 copy at this many rows (steps x batch)."""
    if rows < CODES_MIN_ROWS:
        return False
    lanes = rows_lanes(rows)
    return rows / (-(-rows // lanes) * lanes) >= CODES_MIN_FILL


@njit(cache=True)
def _fold_biases_kernel(b, lstm, out):
    """out [D, G*H] <- the bias the projection adds to every gate row: Wb + Rb (LSTM; GRU's gates z and r), Wb (GRU's
    gate h, whose Rb the reset gate scales in the recurrence); b [D, 2*G*H] the node's B. Run before every
    projection: out lives in the plan's scratch (counted in the memory plan), not beside the node's B."""
    n_dir, gh = out.shape
    both = gh if lstm else 2 * (gh // 3)
    for d in range(n_dir):
        for k in range(gh):
            out[d, k] = b[d, k] + b[d, gh + k] if k < both else b[d, k]


def _bind_projection(x2, w, xw, scratch, bias) -> tuple:
    """Steps that set xw[d] = x2 @ w[d]^T + bias[d] for every direction d, the input part of every gate at every
    step. Float32 W: one bound product of runtime/ops/linear.py per direction (its dot-product kernel or BLAS,
    whichever is faster at this many rows), xw [D, rows, G*H]. W held as dense codes (_gate_major):
    _project_codes_kernel, xw [D, G*H, rows], its tile and sums carved from `scratch`. The bias is added after each
    sum (o + bias, rounded once, as the kernels added it at every step before, so the same bits) rather than at
    every step of the recurrence."""
    n_dir, gh, n_in = (int(v) for v in w.shape)
    rows = x2.shape[0]
    if _gate_major(w):
        scales = w.row_scales
        if scales is None:
            scales = _EMPTY[1]
        else:  # one scale per row of the file's matrix view: per gate row of every direction
            scales = np.repeat(np.asarray(scales, np.float32), (n_dir * gh) // scales.shape[0])
        lw = rows_lanes(rows)
        buf = scratch[:4 * lw * (n_in + DENSE_ROWS)].view(np.float32)
        args = (x2, np.ascontiguousarray(w.codes).reshape(-1), w.codebook, scales,
                _EMPTY[2] if bias is None else bias, xw, buf[:lw * n_in], buf[lw * n_in:])
        return ((_project_codes_kernel, args),)
    w = _f32(w)
    return tuple(bind_linear(x2, prepare_linear(DenseWeight(w[d]), True), None if bias is None else bias[d], 1.0,
                             0.0 if bias is None else 1.0, xw[d]) for d in range(n_dir))


def _gate_major(w) -> bool:
    """Whether the projections of this W are laid out gate-major (W held as codes: _project_codes_kernel)."""
    return isinstance(w, CodebookWeight)


def _project(products) -> None:
    for fn, args in products:
        fn(*args)


def _lstm_step(products, *args):
    _project(products)
    _lstm_kernel(*args)


def _gru_step(products, *args):
    _project(products)
    _gru_kernel(*args)


def _prepare(op: str, inputs, attrs, outputs, scratch=None):
    """(step, args) for one node; everything the kernel reads made contiguous float32 (constants: once); the
    projections and the state carved from `scratch` (uint8, the executor's shared buffer) or allocated now."""
    shapes = [None if a is None else a.shape for a in inputs]
    g = _geometry(op, shapes, attrs, inputs)
    gates = 4 if op == "LSTM" else 3

    def opt(i, rank):  # an absent optional input: an empty array, which the kernels read as zeros
        return _f32(inputs[i]) if _present(inputs, i) else _EMPTY[rank]

    x, w, r = _f32(inputs[0]), inputs[1], _f32(inputs[2])
    n_proj, n_state, n_rows = _scratch_floats(op, shapes)
    if scratch is None:
        scratch = np.empty(4 * (n_proj + n_state + n_rows), np.uint8)
    floats = scratch[:4 * (n_proj + n_state)].view(np.float32)
    rows, gh = g.seq * g.batch, gates * g.hid
    gate_major = _gate_major(w)
    xw = floats[:n_proj].reshape((g.n_dir, gh, rows) if gate_major else (g.n_dir, rows, gh))
    n_bias = g.n_dir * gh
    state = floats[n_proj:n_proj + n_state - n_bias]
    folded = floats[n_proj + n_state - n_bias:n_proj + n_state].reshape(g.n_dir, gh)
    rows_scratch = scratch[4 * (n_proj + n_state):4 * (n_proj + n_state + n_rows)]
    b = opt(3, 2)
    lens = g.lens if g.lens is not None else np.full(g.batch, g.seq, np.int64)
    h0 = opt(5, 3)
    outs = list(outputs) + [None] * (3 - len(outputs))
    y = outs[0] if outs[0] is not None else _EMPTY[4]
    yh = outs[1] if outs[1] is not None else _EMPTY[3]
    fold = ((_fold_biases_kernel, (b, op == "LSTM", folded)),) if b.size else ()
    products = fold + _bind_projection(x.reshape(rows, g.n_in), w, xw, rows_scratch, folded if b.size else None)
    clip = np.float32(g.clip)  # the kernels compute in float32 throughout
    if op == "LSTM":
        c0, p = opt(6, 3), opt(7, 2)
        yc = outs[2] if outs[2] is not None else _EMPTY[3]
        return _lstm_step, (products, xw, gate_major, r, lens, h0, c0, p, g.acts, clip, g.extra, g.reverse0, g.layout,
                            y, yh, yc, outs[0] is not None, outs[1] is not None, outs[2] is not None, state)
    return _gru_step, (products, xw, gate_major, r, b, lens, h0, g.acts, clip, g.extra, g.reverse0, g.layout, y, yh,
                       outs[0] is not None, outs[1] is not None, state)


def _bindable(inputs, outputs) -> bool:
    # arena views are float32 C-contiguous: a bound step reads them in place; anything else would be copied once
    # at bind time and go stale, so such a node runs through the plain runner
    return all(a is None or isinstance(a, CodebookWeight) or (a.dtype == np.float32 and a.flags.c_contiguous)
               for i, a in enumerate(list(inputs) + list(outputs)) if i != 4)


def _run_lstm(inputs, attrs, outputs):
    fn, args = _prepare("LSTM", inputs, attrs, outputs)
    fn(*args)


def _run_gru(inputs, attrs, outputs):
    fn, args = _prepare("GRU", inputs, attrs, outputs)
    fn(*args)


def _bind_lstm(inputs, attrs, outputs, scratch=None):
    return _prepare("LSTM", inputs, attrs, outputs, scratch) if _bindable(inputs, outputs) else None


def _bind_gru(inputs, attrs, outputs, scratch=None):
    return _prepare("GRU", inputs, attrs, outputs, scratch) if _bindable(inputs, outputs) else None


OPS = (
    OpDef("LSTM", _infer_lstm, _run_lstm, bind=_bind_lstm, scratch_bytes=_scratch_bytes("LSTM")),
    OpDef("GRU", _infer_gru, _run_gru, bind=_bind_gru, scratch_bytes=_scratch_bytes("GRU")),
)
