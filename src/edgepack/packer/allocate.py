"""Per-layer codebook bits from a calibration set, without retraining: the smallest error at a whole-file size target
(`pack --target-ratio R`) or the smallest file within an output error bound (`pack --calib X --max-error E`).

1. Scan: every weight tensor is encoded at each candidate width (WIDTHS, most precise first) by the pack's own
   tensor encoder (error-compensated codes when calibration statistics exist), giving its exact bytes in the file
   and its layer-output error e = ||(W - Q) X|| / ||W X|| from the layer's input statistics H = X^T X
   (compensate.output_error; the relative weight error where a layer has no statistics: LSTM/GRU, ConvTranspose).
2. Sensitivity: the whole model runs in onnxruntime (fidelity.Evaluator) on held-out calibration samples with one
   layer at one of its options and the others as in the original, for every option of every layer: the model's
   output error m_l(option) is measured, not extrapolated from a layer-error proxy (a layer's output error predicts
   the model's poorly where the model is not linear in it: at 3 bits a layer may break the model outright, at
   5 bits be harmless). The predicted model error of a setting is sqrt(sum_l m_l^2) (independent errors add in
   squares); m_l is made non-decreasing along each layer's chain (a measured dip is noise). The reported
   sensitivity s = (m / e)^2 at the fewest bits relates the two.
   The model error is the relative L2 error of the outputs, except, for a ratio, on outputs that are class scores
   (class_outputs: a Softmax, or a linear head of >= MIN_CLASSES outputs such as a CTC head's logits, which the
   application decodes by argmax): there it is the margin error (margin_error: how much of each position's margin
   between its top class and the runner-up the perturbation eats, near-ties weighing most). The relative L2 error
   of 8210 logits or 6625 probabilities is dominated by scores no decision depends on, not by the argmax flips
   that change the decoded text. Where the class scores are a CTC sequence (ctc_sequence: (1, T, classes) or
   (T, 1, classes)) only the positions whose runner-up would change the decoded string count (ctc_decisive), with a
   wider tau (CTC_TAU): a character's edge, where the character and the blank are nearly tied and either reads the
   same, made the measured errors of PP-OCRv4 rec's layers accidents of a few positions of the 8 held-out runs
   (benchmarks/calibration_compression.py --only ppocr_rec --variants alloc --ratios 7 --task-n 64, 2026-12-08,
   load 4-10: 58 -> 63 of 64 strings, 7.00x, margin error 0.186 -> 0.093, process CPU 409 s; walked again offline
   on the same scan and checked on 192 lines in onnxruntime: 179 -> 185, and with the sensitivities measured on all
   32 calibration runs 170 -> 184; the decisive positions alone gave 180 and 181, tau 0.3 alone 178 and 182).
   ddddocr's (T, 1, 8210) is such a sequence too; at 5x and 7x its allocation stops at the walk's first point, which
   the measure does not move. An output that a Concat joins from parts (output_parts: YOLOv8's (1, 4 + classes,
   anchors) of pixel box coordinates and sigmoid class scores) is measured part by part where the parts differ in
   scale (parts_differ), the worst part's relative L2 error counting: over the whole, the boxes' hundreds of pixels
   hide the scores (nudenet at 8 bits: 0.004-0.008 whole, 0.05-0.34 on the scores), whose threshold crossings add
   and drop detections. A detector's box part (box_layout: 4 rows of cx, cy, w, h before class probabilities) is
   measured by its pixel error relative to the detections' sizes, each anchor weighted by its best class
   probability (box_sums): relative L2 over every anchor's pixel coordinates is dominated by anchors nobody keeps
   and ranked all nine of nudenet's box-branch layers as free (at 7x they went to 3-4 bits and moved boxes past
   IoU 0.95; layer by layer, one of them, model.22.cv2.1.2, changes 5 of 64 images alone). (--max-error bounds the
   relative L2 error, which the fidelity guard checks: there the allocation measures that.)
   Class heads (minor_rows, before the scan): where a class-score output comes from a Gemm / MatMul whose weight's
   rows (Gemm transB; ddddocr's 8210-character CTC head, 62% of its weights) or columns (MatMul, Gemm without transB;
   PP-OCRv4 rec's 6625-character head (120, 6625) behind a Softmax, 30%) are the classes (class_axis), the classes
   that rank among the TOP_CLASSES highest at some position of the calibration runs the statistics come from are
   major, the others minor; the scan then also offers the head each width with the minor classes on a coarse grid
   (LayerSettings.coarse_rows = COARSE_LEVELS: 5 codebook entries that Huffman coding makes about a bit each) of
   their own scale for rows, of each input row's scale for columns (the format scales rows only), and, for columns
   when asked (DROP_MINOR, off by default), with the minor classes pruned (LayerSettings.drop_minor: sparse_codebook, their scores the bias
   alone); the head's layer error (its Pareto chain) counts the major classes only. Whether the coarse or dropped
   classes cost the model anything is what the held-out runs measure, as for every option. The file then serves
   the classes its calibration set ranks (a recognizer calibrated on one alphabet keeps the others' weights only
   roughly, or not at all where they are dropped).
   Measured (ddddocr_common, 32 calibration CAPTCHAs, --target-ratio 7, 64 held-out task strings through the
   runtime, 2026-12-07): before, the head at 6 bits took 5.0 of the 7.7 MB and the LSTM weights went to 4-5 bits,
   7.00x, 57 of 64 strings the same (margin error 0.055 on the 8 held-out runs); with the option 131 of 8210 rows
   are major, the head takes 8 bits + coarse rows in 2.1 MB, every other layer 8 bits, and the file is 7.92x (the
   walk's first point), 63 of 64 the same (margin error 0.017). Pack CPU time 406 -> 468 s.
   PP-OCRv4 rec (benchmarks/calibration_compression.py --only ppocr_rec --variants alloc --ratios 7 --task-n 64,
   2026-12-07, load 4-8, process CPU time of the run: pack + 64 strings): 256 of 6625 classes are major. Before, the
   head at 4 bits took 353 of 1537 kB: 7.00x, 51 of 64 strings (79.7%), margin error 0.228, 405 s. Coarse columns
   only: head 7c in 182 kB, 58 of 64 (90.6%), margin error 0.186, 383 s. With the dropped option: head 8d in 51 kB
   (the major columns), 61 of 64 (95.3%), 7.00x, 406 s; its margin error reads 0.378, nearly all the head's
   (dropping the minor classes moves the softmax's normalisation, which the margin of probabilities sees, not their
   order: the head alone so quantised keeps 64 of 64 strings, against 63 coarse and 61 on the 5-level grid by
   nearest codes; a 3-level grid loses all). The gap to 97% is the other layers': the packed head alone in the
   original model keeps 64 of 64, the other layers alone 61 (onnxruntime on the unpacked file); the misreads are
   two trailing spaces and a 1 read as l.
3. Walk: from every layer at its most precise width, each step lowers the one layer whose next width saves the most
   file bytes per unit of predicted squared error added (the greedy path of packer/train/bit_allocation.py, with
   exact bytes and measured sensitivities instead of code bits and test errors).
4. Choose: for a ratio, the first point of the path whose file fits the byte budget; for an error bound, the last
   point whose measured error on the held-out samples is within it (bisection on the path), which the fidelity
   guard then backs off where needed (it raises the precision of the layers that add most error).

5. Refine (GPTQ's sequential mode; when the statistics know their calibration runs; off by default, REFINE): in
   graph order, REFINE_STAGE tensors at a time, the layer inputs X_q are recorded again from the model running the
   weights chosen so far (refined ones before, the allocation's after), and each tensor is re-encoded at its chosen
   settings with its codes compensated under H = X_q^T X_q, the inputs it meets in the quantised model, instead of
   the original model's (REFINE_TARGET "own"). Kept only if the model's error on the held-out runs drops.
   Measured at 7x (benchmarks/calibration_compression.py --refine own, 2026-12-07): PP-OCRv4 rec not kept (margin
   error 0.226 -> 0.291; 83.6% of 128 strings either way); with --entropy kept (0.298 -> 0.288) and 86.7% against
   87.5% without it; on the same settings re-encoded outside the pack it read 0.228 -> 0.191 and 83.6 -> 86.7%:
   the 8 held-out runs' margin error does not rank these settings reliably, and no gain is shown. nudenet 0.039 ->
   0.044 (90.6% -> 85.4% of 96 images had it been kept), mtcnn_onet 0.029 -> 0.032: not kept. REFINE_TARGET
   "original" also aims each layer at the original model's outputs (asymmetric calibration, GPTAQ, Li et al. 2025:
   compensate.corrected_weight, ridge REFINE_DAMP towards W) and did worse (PP-OCRv4 rec 78.1%): the least-squares
   target W C H^-1 fits the 24 calibration runs' noise as well as the upstream error it is meant to remove.

Cost: one onnxruntime pass over SENSITIVITY_RUNS samples per option of every layer (about 7 per layer); a
refinement adds one pass of the calibration runs per REFINE_STAGE tensors and one more encoding per tensor.
Memory: the encodings of the candidate widths (about len(WIDTHS) x the model's fp32 weights) and the statistics
pipeline.pack already holds; one onnxruntime session.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from edgepack.runtime.errors import InputError

from .encode import Encoded, LayerSettings
from .graph import Graph

WIDTHS = (8, 7, 6, 5, 4, 3)  # candidate codebook bits, most precise first
# entropy-constrained candidates (scan): an alphabet of 2^EC_BITS codes, one bit of Huffman code priced at each of
# the rates x the weights' mean square (cluster.ec_kmeans_1d, compensate.assign's rate). EC_RATES_TRIED spans about
# 4.5 down to 1.7 bits a code on PP-OCRv4 rec's convolutions; off by default (EC_RATES empty) until measured on the
# corpus' task agreement (benchmarks/calibration_compression.py --entropy turns them on; PP-OCRv4 rec at 7x:
# 83.6% -> 87.5% of 128 held-out strings, pack CPU time 290 -> 394 s; the other models not yet measured)
EC_BITS = 6
EC_RATES_TRIED = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
EC_RATES: tuple[float, ...] = ()
# dense-and-sparse options (LayerSettings.outliers): at each of OUTLIER_WIDTHS, each of these fractions of the
# weights, the largest, kept exact as codebook entries of their own. Per layer they pay (PP-OCRv4 rec, compensated
# codes, held-out layer error and file bytes): its 480x480 conv with diagonal outliers at 172 std, 4 bits 0.066
# (95 kB) -> 0.033 with 0.1% (102 kB), where 5 bits give 0.044 (112 kB); another 480x480 conv 0.030 (103 kB) ->
# 0.018 (106 kB), 5 bits 0.018 (123 kB); its 6625-class head about nothing. In the model they did not: offered at
# 0.2% (benchmarks/calibration_compression.py --only ppocr_rec --ratios 7 --task-n 64, 2026-12-07, load 4-7), the
# walk took them on 20 tensors and the held-out margin error was 0.251 (0.228 without), 79.7% of 64 strings kept
# (84-86% without), for a scan 30% longer. Off until a model shows the gain (`--config` sets them per layer).
# Tensors of fewer than OUTLIER_MIN_WEIGHTS weights are not offered them.
OUTLIER_FRACTIONS: tuple[float, ...] = ()
OUTLIER_WIDTHS = (6, 5, 4, 3)
OUTLIER_MIN_WEIGHTS = 4096
SENSITIVITY_RUNS = 8  # held-out runs the sensitivity scan measures on (the final check uses all held-out runs)
FLOOR = 1e-12  # a step that adds no predicted error still ranks by the bytes it saves
REFINE_STAGE = 4  # tensors re-encoded per recording of the quantised model's layer inputs (1: fully sequential)
REFINE = False  # step 5 of the module docstring (see there why it is off)
REFINE_TARGET = "own"  # "own": codes for W X_q (H of the quantised inputs); "original": aim at W X (corrected_weight)
REFINE_DAMP = 0.01  # the corrected weight's ridge towards W (compensate.corrected_weight's damp)
COARSE_LEVELS = 2  # minor rows of a class head take the grid -2..2 x (row max) / 2 (LayerSettings.coarse_rows)
# the scan also offers a class head whose classes are its weight's columns (MatMul) with its minor classes pruned
# (LayerSettings.drop_minor; the format scales rows, so their coarse grid is on the input rows' scales, not their
# own). Off: the file would never answer a class its calibration set does not rank (a recognizer calibrated on Latin
# text loses every Chinese character), and the held-out runs, drawn like the calibration set, cannot see that. A user
# whose calibration set covers every class to be read sets this flag through the API.
DROP_MINOR = False
TOP_CLASSES = 8  # a class is major when it ranks among the top TOP_CLASSES at a position of a calibration run
MIN_CLASSES = 64  # a class axis this long makes an output class scores (the margin measure, ClassScores)
PART_SCALE = 10.0  # parts of an output this much apart in scale are measured one by one (parts_differ)
BOX_ROWS = 4  # a detector's box part: cx, cy, w, h (box_layout)
MARGIN_TAU = 0.05  # margins are measured relative to (reference margin + MARGIN_TAU x the median margin)
# a CTC sequence of class scores (ctc_sequence) counts its decisive positions only (ctc_decisive), relative to
# (reference margin + CTC_TAU x the median margin): see margin_error
CTC_TAU = 0.3
CTC_BLANK = 0  # the blank class of a CTC head (PP-OCR, ddddocr: class 0)
RESHAPES = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")


@dataclass
class Option:
    """One candidate width of one tensor: its encoding (exact file bytes) and its layer-output error."""

    bits: int
    encoded: Encoded
    error: float
    settings: LayerSettings  # what the tensor is encoded with at this option

    @property
    def label(self) -> str:
        if self.settings.encoding == "int8":
            return "int8"
        rate = self.settings.entropy_rate
        label = f"{self.bits}/ec{rate:g}" if rate else str(self.bits)
        label += "d" if self.settings.drop_minor else "c" if self.settings.coarse_rows else ""
        return label + (f"+{100 * self.settings.outliers:g}%" if self.settings.outliers else "")


@dataclass
class Layer:
    tensor: str
    options: list[Option]  # most precise first, strictly fewer bytes each
    sensitivity: float = 1.0
    probe_error: float | None = None  # the model's measured error with this layer alone at its fewest bits
    measured: list[float] | None = None  # the model's error with this layer alone at each option (non-decreasing)
    level: int = 0  # index into options of the chosen width
    naive_error: float | None = None  # layer-output error of nearest-centroid codes at the chosen width

    @property
    def chosen(self) -> Option:
        return self.options[self.level]

    def model_error(self, level: int) -> float:
        """The model's error with this layer alone at options[level]: measured, else sensitivity x layer error."""
        if self.measured is not None:
            return self.measured[level]
        return math.sqrt(self.sensitivity) * self.options[level].error


@dataclass
class Allocation:
    layers: dict[str, Layer]
    steps: list[str]  # the greedy path: the tensor lowered by one width at each step
    fixed_bytes: int  # everything in the file that is not a scanned weight (biases, graph, metadata estimate)
    fp32_bytes: int
    target_ratio: float | None = None
    max_error: float | None = None
    point: int = 0  # how many steps of the path are taken
    measured: object = None  # fidelity.Fidelity of the chosen point on the held-out runs
    held_out: int = 0  # runs the measurements used
    notes: list[str] = field(default_factory=list)
    measure: object = field(default=None, repr=False)  # point -> fidelity.Fidelity on the held-out runs
    file_bytes: int | None = None  # the file pack builds at the chosen point (metadata included), when it sized it

    def levels_at(self, point: int) -> dict[str, int]:
        lv = {k: 0 for k in self.layers}
        for name in self.steps[:point]:
            lv[name] += 1
        return lv

    def bytes_at(self, point: int) -> int:
        lv = self.levels_at(point)
        return self.fixed_bytes + sum(layer.options[lv[k]].encoded.nbytes for k, layer in self.layers.items())

    def predicted_at(self, point: int) -> float:
        lv = self.levels_at(point)
        return math.sqrt(sum(layer.model_error(lv[k]) ** 2 for k, layer in self.layers.items()))

    def set_point(self, point: int) -> None:
        self.point = point
        for k, lv in self.levels_at(point).items():
            self.layers[k].level = lv

    def settings(self) -> dict[str, int]:
        return {k: layer.chosen.bits for k, layer in self.layers.items()}

    def lines(self) -> list[str]:
        goal = (f"whole-file ratio >= {self.target_ratio:g}" if self.target_ratio is not None
                else f"error <= {self.max_error:g}")
        out = [f"bit allocation ({goal}): {self.point} of {len(self.steps)} steps, predicted error "
               f"{self.predicted_at(self.point):.3g}"
               + (f", measured on {self.held_out} held-out calibration run(s): {self.measured.summary()}"
                  if self.measured is not None else "")]
        head = ["tensor", "bits", "kept", "bytes", "err nearest", "err comp", "sensitivity"]
        rows = []
        for k, layer in self.layers.items():
            o = layer.chosen
            kept = o.encoded.stats.get("kept", o.encoded.reference.size)
            rows.append([k, o.label, f"{kept}", f"{o.encoded.nbytes}",
                         "-" if layer.naive_error is None else f"{layer.naive_error:.4f}", f"{o.error:.4f}",
                         f"{layer.sensitivity:.3g}"])
        cols = [max(len(r[c]) for r in [head] + rows) for c in range(len(head))]

        def fmt(r):
            return "  " + "  ".join(v.ljust(w) if c == 0 else v.rjust(w) for c, (v, w) in enumerate(zip(r, cols)))

        out += [fmt(head)] + [fmt(r) for r in rows]
        out += [f"  {n}" for n in self.notes]
        return out


def class_outputs(graph: Graph) -> dict[str, tuple[int, int]]:
    """Outputs that are class scores, by name -> (class axis, classes): a Softmax / LogSoftmax output, or the output
    of a linear layer (Gemm, MatMul, with its bias Add) reached through reshapes only, whose last axis holds its
    output features (e.g. a CTC head's logits, which the application decodes by argmax); MIN_CLASSES classes or
    more. 0 classes: the Softmax's axis length is read off the outputs."""
    prod = {o: n for n in graph.nodes for o in n.outputs}
    found: dict[str, tuple[int, int]] = {}
    for v in graph.outputs:
        n = prod.get(v.name)
        if n is not None and n.op in ("Softmax", "LogSoftmax"):
            axis = int(n.attr("axis", -1 if graph.opset >= 13 else 1))
            dims = v.shape or []
            if -len(dims) <= axis < len(dims) and isinstance(dims[axis], int) and dims[axis] < MIN_CLASSES:
                continue  # a few-way softmax (MTCNN's face / no face): its decisions are thresholds, not margins
            found[v.name] = (axis, 0)
            continue
        n = _linear_head(graph, prod, n)
        if n is None:
            continue
        w = graph.initializers[n.inputs[1]]
        feats = w.shape[class_axis(n)]
        if feats >= MIN_CLASSES:
            found[v.name] = (-1, int(feats))
    return found


def _linear_head(graph: Graph, prod: dict, n):
    """The Gemm / MatMul of a 2-D weight that node n's output comes from through reshapes and a bias Add only."""
    while n is not None and n.op in RESHAPES:
        n = prod.get(n.inputs[0])
    if n is not None and n.op == "Add":
        other = [x for x in n.inputs if x not in graph.initializers]
        n = prod.get(other[0]) if len(other) == 1 else None
    if n is None or n.op not in ("Gemm", "MatMul") or len(n.inputs) < 2 or n.inputs[1] not in graph.initializers:
        return None
    return n if graph.initializers[n.inputs[1]].ndim == 2 else None


def minor_rows(graph: Graph, stats, classes: dict[str, tuple[int, int]], top: int = TOP_CLASSES) -> dict:
    """Class-score heads (class_outputs: a linear head's logits, or the Softmax / LogSoftmax over the last axis of
    such a head's output) whose classes are the output channels of a Gemm / MatMul weight: its rows for a Gemm with
    transB, its columns for a MatMul or a Gemm without (class_axis). On the calibration runs the statistics were
    recorded over (stats.batches), the classes that rank among the `top` highest scores at some position are major,
    the others minor; sets LayerStats.minor_rows (True: minor; indexed like the statistics' rows, which are the
    output channels however the tensor is stored) and returns tensor -> that mask. A many-class head (ddddocr's 8210
    characters, where 32 CAPTCHAs of one alphabet rank 131 classes in their top 8; PP-OCRv4 rec's 6625) spends most
    of its bytes on classes whose scores never decide: the scan offers them a coarse grid (LayerSettings.coarse_rows),
    and the model error measured on the held-out runs decides."""
    batches = getattr(stats, "batches", None)
    if not batches or not classes:
        return {}
    prod = {o: n for n in graph.nodes for o in n.outputs}
    ranks = {v.name: len(v.shape) for v in graph.outputs if v.shape is not None}
    heads = {}
    for name, (axis, _) in classes.items():
        n = prod.get(name)
        if n is not None and n.op in ("Softmax", "LogSoftmax"):  # monotonic: the same classes rank at the top
            n = prod.get(n.inputs[0])
        n = _linear_head(graph, prod, n) if n is not None and n.op not in ("Softmax", "LogSoftmax") else None
        if n is None or axis not in (-1, ranks.get(name, 0) - 1):
            continue
        st = stats.get(n.inputs[1])
        feats = graph.initializers[n.inputs[1]].shape[class_axis(n)]
        if st is not None and st.transpose == (class_axis(n) == 1) and st.h.ndim == 2:
            heads[name] = (n.inputs[1], st, feats)
    if not heads:
        return {}
    from .onnx_io import graph_to_onnx
    from .verify import session

    sess = session(graph_to_onnx(graph))
    names = list(heads)
    wanted = {i.name for i in sess.get_inputs()}
    seen = {name: np.zeros(feats, bool) for name, (_, _, feats) in heads.items()}
    for feeds in batches:
        for name, out in zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})):
            z = np.asarray(out, np.float32)
            if z.ndim == 0 or z.shape[-1] != seen[name].size:
                seen[name][:] = True  # not the scores the head writes: no row is minor
                continue
            z = z.reshape(-1, z.shape[-1])
            k = min(top, z.shape[1])
            seen[name][np.unique(np.argpartition(-z, k - 1, axis=1)[:, :k])] = True
    found = {}
    for name, (tensor, st, _) in heads.items():
        if seen[name].all():
            continue
        st.minor_rows = ~seen[name]
        found[tensor] = st.minor_rows
    return found


def class_axis(node) -> int:
    """The axis of a Gemm / MatMul node's 2-D weight that holds its output features: 0 (rows) for a Gemm with
    transB, 1 (columns) for a MatMul or a Gemm without transB."""
    return 0 if node.op == "Gemm" and node.attr("transB", 0) else 1


def output_parts(graph: Graph) -> dict[str, tuple[int, list[int]]]:
    """Outputs that a Concat joins from parts, by name -> (axis, the parts' sizes along it), where shape inference
    tells every part's size; an output of class scores (class_outputs) is measured as such instead."""
    prod = {o: n for n in graph.nodes for o in n.outputs}
    joined = {v.name: prod[v.name] for v in graph.outputs
              if v.name in prod and prod[v.name].op == "Concat" and len(prod[v.name].inputs) > 1}
    if not joined:
        return {}
    from .onnx_io import infer_value_shapes

    shapes = infer_value_shapes(graph)
    classes = class_outputs(graph)
    found: dict[str, tuple[int, list[int]]] = {}
    for name, n in joined.items():
        axis = int(n.attr("axis", 0))
        sizes = []
        for x in n.inputs:
            dims = shapes[x].shape if x in shapes else None
            if not dims or not -len(dims) <= axis < len(dims) or not isinstance(dims[axis], int) or dims[axis] < 1:
                break
            sizes.append(int(dims[axis]))
        else:
            if name not in classes:
                found[name] = (axis, sizes)
    return found


def _part_sums(ref: list[np.ndarray], got: list[np.ndarray], axis: int, sizes: list[int], boxes: bool = False):
    """Per part: the squared error and the squared reference, summed over runs; None where a run's output is not
    as inferred. With `boxes` and a detector's layout (box_layout), the box part's sums are box_sums'."""
    if any(np.ndim(a) == 0 or not -np.ndim(a) <= axis < np.ndim(a) or np.shape(a)[axis] != sum(sizes) for a in ref):
        return None
    boxes = boxes and box_layout(ref, axis, sizes)
    bounds = np.cumsum(sizes)[:-1]
    num = np.zeros(len(sizes))
    den = np.zeros(len(sizes))
    for a, b in zip(ref, got):
        pa_all = np.split(np.asarray(a, np.float64), bounds, axis)
        pb_all = np.split(np.asarray(b, np.float64), bounds, axis)
        for i, (pa, pb) in enumerate(zip(pa_all, pb_all)):
            if boxes and i == 0:
                n, d = box_sums(pa, pb, pa_all[1], axis)
                num[i] += n
                den[i] += d
                continue
            num[i] += float(np.sum(np.square(pb - pa)))
            den[i] += float(np.sum(np.square(pa)))
    if boxes and not den[0] > 0:  # no anchor scores anything: the boxes' own scale
        return _part_sums(ref, got, axis, sizes)
    return num, den


def box_layout(ref: list[np.ndarray], axis: int, sizes: list[int]) -> bool:
    """The output is a detector's boxes and class probabilities joined along `axis`: BOX_ROWS box rows (cx, cy, w, h
    as YOLOv8 writes them) then the classes, whose reference values are all in [0, 1]."""
    if len(sizes) != 2 or sizes[0] != BOX_ROWS:
        return False
    scores = [np.take(np.asarray(a), np.arange(BOX_ROWS, BOX_ROWS + sizes[1]), axis) for a in ref]
    return all(s.size and float(s.min()) >= 0.0 and float(s.max()) <= 1.0 for s in scores)


def box_sums(box: np.ndarray, box_q: np.ndarray, scores: np.ndarray, axis: int) -> tuple[float, float]:
    """(sum_a s_a |b'_a - b_a|^2, sum_a s_a (w_a^2 + h_a^2)) over a run's anchors a: s_a the anchor's best reference
    class probability, b_a its (cx, cy, w, h) along `axis`. Box pixels count relative to the detections' sizes
    (what an IoU sees) and as much as their anchor is a detection: the application throws away the boxes of anchors
    no class claims, whose pixels dominated the relative L2 error and ranked nudenet's box layers as free."""
    s = np.max(scores, axis=axis)
    err = np.sum(np.square(box_q - box), axis=axis)
    size = np.square(np.take(box, 2, axis)) + np.square(np.take(box, 3, axis))
    return float(np.sum(s * err)), float(np.sum(s * size))


def parts_differ(ref: list[np.ndarray], axis: int, sizes: list[int]) -> bool:
    """The parts' reference values differ in scale (root mean square) by more than PART_SCALE: YOLOv8's box pixels
    and class probabilities do (about 1e4), an LSTM's stacked h and c states do not."""
    sums = _part_sums(ref, ref, axis, sizes)
    if sums is None:
        return False
    rms = np.sqrt(sums[1] / np.asarray(sizes, np.float64))
    return bool(rms.max() > PART_SCALE * rms.min())


def part_error(ref: list[np.ndarray], got: list[np.ndarray], axis: int, sizes: list[int]) -> float:
    """The worst part's relative L2 error over runs, the parts being consecutive slices of `sizes` along `axis`
    (output_parts); a detector's boxes (box_layout) by their score-weighted error relative to their sizes
    (box_sums); the whole output's relative L2 error where a run's output is not as inferred."""
    sums = _part_sums(ref, got, axis, sizes, boxes=True)
    if sums is None:
        ref, got = [np.reshape(a, (1, -1)) for a in ref], [np.reshape(b, (1, -1)) for b in got]
        sums = _part_sums(ref, got, 0, [1])
    num, den = sums
    if not np.isfinite(num).all():
        return math.inf
    return float(np.max(np.sqrt(num) / np.maximum(np.sqrt(den), 1e-30)))


@dataclass
class MarginFidelity:
    """The allocation's task-shaped model error (ClassScores.measure)."""

    rel_l2: float  # the worst output's error: margin error on class scores, relative L2 on the others
    top1: float | None  # positions whose top class is unchanged, over the class-score outputs

    def summary(self) -> str:
        s = f"margin error {self.rel_l2:.3g}"
        return s + (f", top class unchanged at {100 * self.top1:.2f}% of positions" if self.top1 is not None else "")


def margin_error(ref: list[np.ndarray], got: list[np.ndarray], axis: int, ctc: bool = False) -> tuple[float, float]:
    """(error, top-class agreement) of class scores over runs: at every position (every index of the other axes)
    the reference's top class a and its margin m = z_a - max_{b != a} z_b, and the same margin in the test scores
    m' = z'_a - max_{b != a} z'_b; error = sqrt(mean(((m - m') / (m + tau))^2)), tau = MARGIN_TAU x the median m:
    the part of each position's margin the perturbation eats (a flip at 1 or more), the positions that are nearly
    tied weighing most. Linear in small perturbations, so independent layers' errors add in squares as the
    allocation assumes.
    ctc: every run's positions are one CTC sequence (ctc_sequence), decoded by greedy CTC (argmax per position,
    repeats merged, CTC_BLANK dropped): the mean is over the decisive positions only (ctc_decisive: those where the
    runner-up in place of the top class changes the decoded string; all positions where none is) and tau =
    CTC_TAU x the median m. At a character's edge the top class and the runner-up are often that character and the
    blank, nearly tied and harmless; such ties dominated the mean on 8 runs (PP-OCRv4 rec's 320 positions) and made
    every layer's measured error an accident of a few positions. top-class agreement stays over every position."""
    def rows(a: np.ndarray) -> np.ndarray:
        a = np.moveaxis(np.asarray(a, np.float64), axis, -1)
        return a.reshape(-1, a.shape[-1])

    zs = [rows(a) for a in ref]
    z = np.concatenate(zs)
    q = np.concatenate([rows(a) for a in got])
    if z.shape[1] < 2 or z.shape[0] == 0:
        return 0.0, 1.0
    if not np.isfinite(q).all():
        return math.inf, 0.0
    idx = np.arange(z.shape[0])
    top = z.argmax(1)

    def margin(x: np.ndarray) -> np.ndarray:
        rest = x.copy()
        rest[idx, top] = -np.inf
        return x[idx, top] - rest.max(1)

    m, m2 = margin(z), margin(q)
    tau = (CTC_TAU if ctc else MARGIN_TAU) * max(float(np.median(m)), 1e-12)
    sq = np.square((m - m2) / (m + tau))
    if ctc:
        keep = np.concatenate([ctc_decisive(r.argmax(1), _runner_up(r)) for r in zs])
        sq = sq[keep] if keep.any() else sq
    return float(np.sqrt(np.mean(sq))), float(np.mean(q.argmax(1) == top))


def _runner_up(z: np.ndarray) -> np.ndarray:
    """The second-highest class of every row of z (positions x classes; ties: the lower index, as argmax)."""
    rest = z.copy()
    rest[np.arange(z.shape[0]), z.argmax(1)] = -np.inf
    return rest.argmax(1)


def ctc_decode(seq, blank: int = CTC_BLANK) -> list[int]:
    """Greedy CTC decoding of a sequence of classes: repeats merged, then blanks dropped."""
    out, prev = [], None
    for c in seq:
        c = int(c)
        if c != prev and c != blank:
            out.append(c)
        prev = c
    return out


def ctc_decisive(top: np.ndarray, runner: np.ndarray, blank: int = CTC_BLANK) -> np.ndarray:
    """For a sequence of top classes and their runner-ups (1-D, position order): True where the runner-up in place
    of the top class changes the greedy CTC decoding (ctc_decode). Only the neighbours can absorb the change (a
    repeat of either merges, a blank between two repeats separates them), so each position's window of three decides.
    """
    top, runner = np.asarray(top).ravel(), np.asarray(runner).ravel()
    out = np.zeros(top.size, bool)
    for t in range(top.size):
        lo = max(t - 1, 0)
        win = [int(c) for c in top[lo:t + 2]]
        alt = list(win)
        alt[t - lo] = int(runner[t])
        out[t] = ctc_decode(win, blank) != ctc_decode(alt, blank)
    return out


def ctc_sequence(shape: tuple, axis: int) -> bool:
    """Class scores of this shape (one run) are a CTC sequence: besides the class axis, two axes, one of length 1
    (the batch) and one longer (the time steps): PP-OCR rec's (1, T, classes), ddddocr's (T, 1, classes)."""
    if len(shape) != 3:
        return False
    rest = [d for i, d in enumerate(shape) if i != axis % 3]
    return sorted(rest)[0] == 1 and sorted(rest)[1] > 1


def class_evaluator(graph: Graph, feeds: dict[str, np.ndarray], tensors, classes: dict[str, tuple[int, int]],
                    parts: dict[str, tuple[int, list[int]]] | None = None):
    """A fidelity.Evaluator whose measure is task-shaped: margin_error on the class-score outputs (class_outputs),
    the worst part's relative L2 error on outputs joined from parts (output_parts), the relative L2 error on the
    others; the worst output counts."""
    parts = parts or {}
    from .fidelity import Evaluator, Fidelity

    class ClassScores(Evaluator):
        def __init__(self, *args):
            super().__init__(*args)
            self.parts = {v.name: parts[v.name] for v, ref in zip(self.graph.outputs, self.ref)
                          if v.name in parts and parts_differ(ref, *parts[v.name])}
            self.boxes = [v.name for v, ref in zip(self.graph.outputs, self.ref)
                          if v.name in self.parts and box_layout(ref, *self.parts[v.name])]

        def measure(self, weights: dict[str, np.ndarray]) -> MarginFidelity:
            outs = self._run(weights)
            worst, agree = 0.0, []
            for v, ref_runs, runs in zip(self.graph.outputs, self.ref, outs):
                axis, n = classes.get(v.name, (None, 0))
                if axis is not None and ref_runs[0].ndim and ref_runs[0].shape[axis] >= max(n, MIN_CLASSES):
                    err, top1 = margin_error(ref_runs, runs, axis, ctc_sequence(ref_runs[0].shape, axis))
                    agree.append(top1)
                elif v.name in self.parts:
                    err = part_error(ref_runs, runs, *self.parts[v.name])
                else:
                    num = math.fsum(float(np.sum(np.square(b - a))) for a, b in zip(ref_runs, runs))
                    den = math.fsum(float(np.sum(np.square(a))) for a in ref_runs)
                    err = math.sqrt(num) / max(math.sqrt(den), 1e-30) if math.isfinite(num) else math.inf
                worst = max(worst, err if math.isfinite(err) else math.inf)
            return MarginFidelity(worst, min(agree)) if agree else Fidelity(worst, None)

    return ClassScores(graph, feeds, tensors)


def layer_error(w: np.ndarray, q: np.ndarray, stats) -> float:
    """Relative layer-output error of the decoded weight q against w: from the input statistics when given
    (calibration.LayerStats, oriented as compensate.assign takes them), else the relative weight error. On a class
    head with minor classes (minor_rows: its rows, or a MatMul's columns) the error of the other classes: every
    option is ranked by the scores that decide (its Pareto chain), the model error measured on the held-out runs
    then prices the coarse or dropped classes."""
    from .compensate import output_error

    rows = w.shape[0]
    w2, q2 = w.reshape(rows, -1), q.reshape(rows, -1)
    if stats is None:
        den = float(np.linalg.norm(w2.astype(np.float64)))
        return float(np.linalg.norm((w2 - q2).astype(np.float64))) / den if den > 0 else 0.0
    if stats.transpose:  # (in, out) stored: the statistics' rows are its columns
        w2, q2 = w2.T, q2.T
    else:  # rows as the statistics see them: LSTM / GRU (dirs, gates x hidden, cols) is dirs x gates x hidden rows
        cols = stats.h.shape[-1]
        w2, q2 = w.reshape(-1, cols), q.reshape(-1, cols)
    minor = getattr(stats, "minor_rows", None)
    if minor is not None and minor.shape == (w2.shape[0],):  # a class head: the classes whose scores decide
        w2, q2 = w2[~minor], q2[~minor]
    return output_error(w2, q2, stats.h)


def scan(graph: Graph, settings: dict[str, tuple[LayerSettings, int]], encoder, stats: dict | None,
         widths: tuple[int, ...] = WIDTHS, progress=None, ec_rates: tuple[float, ...] | None = None,
         ec_bits: int = EC_BITS, outliers: tuple[float, ...] | None = None) -> dict[str, Layer]:
    """Every codebook-encoded weight at each width (with a float16 codebook where the weights fit float16: half the
    table bytes, which small layers feel), at each width again with per-row scales where the settings leave them
    to the encoder ("auto": its weight-error test declines scales that lower the output error, e.g. on ddddocr's
    8210-class CTC head at 5 bits, 79% -> 88% of held-out strings (94% with act-order) for 15% more bytes, fewer than 6 bits
    without them), and as per-row int8: its options, most precise first, each smaller in the
    file and with a larger layer error than the one before (the Pareto chain; an option that another beats in
    both is left out). Tensors set to a dense, float16 or int8 encoding by the user keep it and are not scanned.
    Where the settings leave Huffman coding on and do not prune: also entropy-constrained codes of a 2^ec_bits
    alphabet at each of ec_rates (EC_RATES when None; LayerSettings.entropy_rate): for codes that are Huffman-coded,
    a fixed alphabet of k-means centroids is not the best use of the bytes; a larger alphabet whose assignment pays for each
    code's length (ECVQ) is. Without per-row scales: Huffman coding then spends few bits on the rows of small
    weights by itself, where scales would spread every row over the whole alphabet. PP-OCRv4 rec's 480x480 1x1
    conv (compensated codes, calibration inputs): 2.56 bits a weight in the file -> layer error 0.118 with 8
    k-means centroids and per-row scales, 2.08 -> 0.063 with 44 entropy-constrained ones; 3.30 -> 0.059 with 16,
    3.36 -> 0.028 entropy-constrained. And at each of OUTLIER_WIDTHS with each outlier fraction of `outliers`
    (OUTLIER_FRACTIONS when None; LayerSettings.outliers), where the settings leave Huffman coding on and do not
    prune."""
    from .encode import fits_float16

    stats = stats or {}
    ec_rates = EC_RATES if ec_rates is None else ec_rates
    outliers = OUTLIER_FRACTIONS if outliers is None else outliers
    layers: dict[str, Layer] = {}
    names = [k for k, (s, _) in settings.items() if s.encoding in ("auto", "codebook", "sparse_codebook")]
    for name in (progress(names) if progress else names):
        s, dbits = settings[name]
        w = graph.initializers[name]
        half = "float16" if fits_float16(w) else s.codebook_dtype
        tries = [(8, dataclasses.replace(s, encoding="int8"))] if s.encoding == "auto" else []
        tries += [(b, dataclasses.replace(s, bits=b, codebook_dtype=half)) for b in widths]
        if s.channel_scales == "auto" and w.ndim >= 2 and w.shape[0] > 1:  # per-row scales, where they pay
            tries += [(b, dataclasses.replace(s, bits=b, codebook_dtype=half, channel_scales=True)) for b in widths]
        if getattr(stats.get(name), "minor_rows", None) is not None and not s.sparsity and s.quality is None:
            tries += [(b, dataclasses.replace(s, bits=b, codebook_dtype=half, channel_scales=True,
                                              coarse_rows=COARSE_LEVELS)) for b in widths]
            if DROP_MINOR and stats[name].transpose:  # a MatMul head: its classes' grid cannot be their own
                tries += [(b, dataclasses.replace(s, bits=b, codebook_dtype=half, drop_minor=True)) for b in widths]
        if s.huffman and not s.sparsity and s.quality is None and not s.entropy_rate and w.size > 1 << ec_bits:
            tries += [(ec_bits, dataclasses.replace(s, bits=ec_bits, codebook_dtype=half, entropy_rate=r,
                                                    channel_scales=False)) for r in ec_rates]
        if s.huffman and not s.sparsity and s.quality is None and not s.outliers and w.size >= OUTLIER_MIN_WEIGHTS:
            tries += [(b, dataclasses.replace(s, bits=b, codebook_dtype=half, outliers=f))
                      for f in outliers for b in OUTLIER_WIDTHS if b in widths]
        opts: list[Option] = []
        for b, s2 in tries:
            e = encoder(name, s2, dbits)
            if e.encoding["type"] == "dense":
                continue  # compression does not pay at this width
            opts.append(Option(b, e, layer_error(w, e.reference, stats.get(name)), s2))
        chain: list[Option] = []  # from the smallest up: keep an option only if it beats every smaller one's error
        for o in sorted(opts, key=lambda o: (o.encoded.nbytes, o.error)):
            if not chain or o.error < chain[-1].error:
                chain.append(o)
        if chain:
            layers[name] = Layer(name, chain[::-1])
    return layers


def measure_sensitivity(graph: Graph, layers: dict[str, Layer], evaluator, progress=None) -> None:
    """The model's error with each layer alone at each of its options (the others as in the original), made
    non-decreasing along the chain; s_l = (error at the fewest bits / layer error there)^2 for the report."""
    items = list(layers.items())
    for name, layer in (progress(items) if progress else items):
        if len(layer.options) == 1:
            layer.sensitivity, layer.measured = 0.0, [0.0]
            continue
        m = [evaluator.measure({name: o.encoded.reference}).rel_l2 for o in layer.options]
        m = [v if math.isfinite(v) else 1e6 for v in m]  # NaN or inf outputs: this layer must not go that low
        layer.measured = list(np.maximum.accumulate(m))
        layer.probe_error = m[-1]
        low = layer.options[-1]
        layer.sensitivity = (m[-1] / low.error) ** 2 if low.error > 0 else 0.0


def greedy_path(layers: dict[str, Layer]) -> list[str]:
    """From every layer at its most precise option to every layer at its fewest bits: each step lowers the layer
    whose next option saves the most bytes per predicted squared model error added (Layer.model_error; ties: the
    order of the layers)."""
    level = {k: 0 for k in layers}
    steps: list[str] = []
    while True:
        best, best_score = None, -1.0
        for k, layer in layers.items():
            i = level[k]
            if i + 1 >= len(layer.options):
                continue
            a, b = layer.options[i], layer.options[i + 1]
            saved = a.encoded.nbytes - b.encoded.nbytes
            added = layer.model_error(i + 1) ** 2 - layer.model_error(i) ** 2
            score = saved / max(added, FLOOR)
            if score > best_score:
                best, best_score = k, score
        if best is None:
            return steps
        level[best] += 1
        steps.append(best)


def fill_budget(alloc: Allocation, point: int, budget: float) -> int:
    """The bytes the first point within the budget leaves unspent, given back to the layers: while one of the
    prefix's steps can be undone within the budget, the one that removes the most predicted squared error per byte
    it costs is moved to the end of the prefix and left out (point - 1). The path stays a path (a layer's steps keep
    their order: only a layer's last step in the prefix moves), so the pipeline's exact byte check walks it as
    before. Returns the new point. (The path's next step back may be a large tensor's: ddddocr's 8.4M-weight CTC
    head at 6 -> 7 bits is 0.8 MB, so the first point left 220 kB of a 7x budget unused.)"""
    while point > 0:
        lv = alloc.levels_at(point)
        spare = budget - alloc.bytes_at(point)
        last = {name: i for i, name in enumerate(alloc.steps[:point])}
        best, best_score = None, 0.0
        for name, i in last.items():
            layer, level = alloc.layers[name], lv[name]
            cost = layer.options[level - 1].encoded.nbytes - layer.options[level].encoded.nbytes
            gain = layer.model_error(level) ** 2 - layer.model_error(level - 1) ** 2
            if cost <= spare and gain > 0 and gain / max(cost, 1) > best_score:
                best, best_score = i, gain / max(cost, 1)
        if best is None:
            return point
        alloc.steps.insert(point - 1, alloc.steps.pop(best))
        point -= 1
    return point


def refine(graph: Graph, alloc: Allocation, settings: dict[str, tuple[LayerSettings, int]], stats, measure,
           stage: int = REFINE_STAGE, progress=None, target: str | None = None, damp: float | None = None) -> None:
    """Step 5 of the module docstring, on the chosen point: replaces the chosen options' encodings (and errors,
    still against the original statistics) when the measured model error drops; a note says what it did."""
    import copy

    from .calibration import layer_statistics
    from .compensate import corrected_weight
    from .pipeline import tensor_encoder, weight_tensors

    batches = getattr(stats, "batches", None)
    if not batches:
        return
    target = REFINE_TARGET if target is None else target
    damp = REFINE_DAMP if damp is None else damp
    layers = alloc.layers
    order = [t for n in graph.nodes for t in n.inputs[1:3] if t in layers and t in stats]
    order = list(dict.fromkeys(order))
    current = {k: layer.chosen.encoded.reference for k, layer in layers.items()}
    before = measure(current)
    new: dict[str, tuple[object, float]] = {}
    wt = weight_tensors(graph)
    stages = [order[i:i + stage] for i in range(0, len(order), stage)]
    for names in (progress(stages) if progress else stages):
        qstats = layer_statistics(graph, {k: wt[k] for k in names}, batches, quantized=current,
                                  cross=target == "original")
        g2 = copy.copy(graph)
        g2.initializers = dict(graph.initializers)
        for k in names:
            st = qstats.get(k)
            if st is None or st.cross is None:
                continue
            w = graph.initializers[k]
            if st.transpose:
                w2 = w.reshape(w.shape[0], -1).T
                g2.initializers[k] = corrected_weight(w2, st.h, st.cross, damp).T.reshape(w.shape).astype(w.dtype)
            else:
                w2 = w.reshape(-1, st.h.shape[-1])
                g2.initializers[k] = corrected_weight(w2, st.h, st.cross, damp).reshape(w.shape).astype(w.dtype)
        enc = tensor_encoder(g2, qstats)
        for k in names:
            if k not in qstats:
                continue
            o = layers[k].chosen
            e = enc(k, o.settings, settings[k][1])
            if e.encoding["type"] == "dense":
                continue
            new[k] = (e, layer_error(graph.initializers[k], e.reference, stats.get(k)))
            current[k] = e.reference
    after = measure(current)
    if after.rel_l2 < before.rel_l2:
        grew = sum(e.nbytes - layers[k].chosen.encoded.nbytes for k, (e, _) in new.items())
        for k, (e, err) in new.items():
            o = layers[k].chosen
            layers[k].options[layers[k].level] = dataclasses.replace(o, encoded=e, error=err)
        alloc.notes.append(f"refined {len(new)} tensor(s) on the quantised model's inputs: held-out error "
                           f"{before.rel_l2:.4g} -> {after.rel_l2:.4g}, {grew:+d} bytes")
    else:
        alloc.notes.append(f"refinement on the quantised model's inputs not kept: held-out error "
                           f"{before.rel_l2:.4g} -> {after.rel_l2:.4g}")


def split_runs(n: int) -> tuple[list[int], list[int]]:
    """(runs for the layer statistics, held-out runs for the model measurements): a quarter held out (at least one)
    from 4 runs on, the same runs for both below."""
    if n < 4:
        return list(range(n)), list(range(n))
    held = max(1, n // 4)
    return list(range(n - held)), list(range(n - held, n))


def allocate(graph: Graph, settings: dict[str, tuple[LayerSettings, int]], encoder, stats: dict | None,
             held_feeds: dict[str, np.ndarray], *, fixed_bytes: int, fp32_bytes: int,
             target_ratio: float | None = None, max_error: float | None = None, widths: tuple[int, ...] = WIDTHS,
             naive_encoder=None, quiet: bool = True, ec_rates: tuple[float, ...] | None = None,
             metric=None, metric_feeds: dict[str, np.ndarray] | None = None) -> Allocation:
    """Scan, measure sensitivities, walk and choose (module docstring). held_feeds: the held-out calibration runs
    the model is measured on; fixed_bytes: the file's bytes besides the scanned weights. metric (packer/metric.py)
    with max_error: the bound is on the metric, measured on metric_feeds (the whole calibration set), and the walk
    stops at the last point within it."""
    from .fidelity import Evaluator, run_count, take_runs

    if target_ratio is None and max_error is None:
        raise InputError("bit allocation needs a target: --target-ratio R or --max-error E")
    bar = (lambda desc: (lambda items: _bar(items, desc))) if not quiet else (lambda desc: None)
    # for a ratio, the model error is task-shaped where outputs are class scores (the bound of --max-error is the
    # relative L2 error of the outputs, which the fidelity guard checks: there it stays that)
    classes = class_outputs(graph) if target_ratio is not None else {}
    parts = output_parts(graph) if target_ratio is not None else {}
    coarse = minor_rows(graph, stats, classes) if COARSE_LEVELS and stats is not None else {}
    layers = scan(graph, settings, encoder, stats, widths, bar("bits scan"), ec_rates)
    n_held = run_count(graph, held_feeds)
    sens_feeds = take_runs(graph, held_feeds, list(range(min(n_held, SENSITIVITY_RUNS))))

    def evaluator(feeds):
        return (class_evaluator(graph, feeds, list(layers), classes, parts) if classes or parts
                else Evaluator(graph, feeds, list(layers)))

    ev = evaluator(sens_feeds)
    measure_sensitivity(graph, layers, ev, bar("sensitivity"))
    alloc = Allocation(layers, greedy_path(layers), fixed_bytes, fp32_bytes, target_ratio, max_error,
                       held_out=n_held)
    if classes:
        alloc.notes.append("model error: margin error of the class scores of " + ", ".join(
            f"'{k}'" for k in classes) + " (margin_error), relative L2 error of any other output")
    for k, m in coarse.items():
        alloc.notes.append(f"'{k}': {int((~m).sum())} of {m.size} classes rank in the top {TOP_CLASSES} on the "
                           f"calibration runs; the others may take a coarse grid ('c' options, coarse_rows)"
                           + (" or be pruned ('d', drop_minor)" if DROP_MINOR and stats[k].transpose else ""))
    if getattr(ev, "parts", None):
        alloc.notes.append("model error: the worst part's relative L2 error on " + ", ".join(
            f"'{k}' (parts of {'+'.join(map(str, p))} along axis {a})" for k, (a, p) in ev.parts.items()))
    if getattr(ev, "boxes", None):
        alloc.notes.append("model error: the boxes (cx, cy, w, h) of " + ", ".join(f"'{k}'" for k in ev.boxes)
                           + " by their error relative to their size, weighted by their best class probability")
    full = ev if n_held <= SENSITIVITY_RUNS else evaluator(held_feeds)

    def measure(point: int):
        lv = alloc.levels_at(point)
        return full.measure({k: layer.options[lv[k]].encoded.reference for k, layer in layers.items()})

    if target_ratio is not None:
        budget = fp32_bytes / target_ratio
        point = next((i for i in range(len(alloc.steps) + 1) if alloc.bytes_at(i) <= budget), None)
        if point is None:
            point = len(alloc.steps)
            alloc.notes.append(f"ratio {target_ratio:g} not reachable with widths down to {min(widths)} bits: "
                               f"{fp32_bytes / alloc.bytes_at(point):.2f}x at the fewest bits")
        else:
            point = fill_budget(alloc, point, budget)
    else:
        if metric is not None:
            from .metric import measure as task_error

            task_ev = Evaluator(graph, metric_feeds, list(layers))
            names = [v.name for v in graph.outputs]

            def within(p: int) -> bool:
                lv = alloc.levels_at(p)
                got = task_ev.outputs({k: layer.options[lv[k]].encoded.reference for k, layer in layers.items()})
                return task_error(metric, task_ev.ref, got, names) <= max_error
        else:
            def within(p: int) -> bool:
                return measure(p).rel_l2 <= max_error
        lo, hi = 0, len(alloc.steps)  # invariant: every point <= lo is assumed within the bound once lo passed
        if not within(0):
            point = 0
        else:
            while lo < hi:  # the last point whose measured error is within the bound (errors rise along the path)
                mid = (lo + hi + 1) // 2
                if within(mid):
                    lo = mid
                else:
                    hi = mid - 1
            point = lo
    alloc.set_point(point)
    if REFINE and stats is not None:
        refine(graph, alloc, settings, stats, full.measure, progress=bar("refine"))
    alloc.measure = measure
    alloc.measured = measure(point)
    if naive_encoder is not None:
        for k, layer in layers.items():
            s, dbits = settings[k]
            q = naive_encoder(k, layer.chosen.settings, dbits).reference
            layer.naive_error = layer_error(graph.initializers[k], q, (stats or {}).get(k))
    return alloc


def _bar(items, desc: str):
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="tensor", file=sys.stderr, leave=False)
