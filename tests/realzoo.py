"""A zoo of small models shaped like real exports (PyTorch / tf2onnx / paddle2onnx), built with onnx.helper from seeded
random weights: MobileNetV2-, ResNet- and YOLO-style nets, a transformer encoder layer, a ConvTranspose decoder and a
tf2onnx-style classifier, each spelled the way exporters spell it (BatchNormalization unfused, shape arithmetic,
LayerNorm as ReduceMean/Pow/Sqrt)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


class _Builder:
    """Collects nodes and constants; constants become initializers, or Constant nodes as some exporters write them."""

    def __init__(self, seed: int, constants: bool):
        self.rng = np.random.default_rng(seed)
        self.constants = constants
        self.nodes: list[onnx.NodeProto] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.as_node: set[str] = set()  # tensors written as Constant nodes
        self._count = 0

    def tensor(self, name: str, value, force_constant_node: bool = False) -> str:
        value = np.asarray(value)
        if name in self.tensors:
            raise ValueError(f"tensor '{name}' defined twice")
        self.tensors[name] = value
        if self.constants or force_constant_node:
            self.as_node.add(name)
        return name

    def i64(self, name: str, *values) -> str:
        return self.tensor(name, np.array(values, np.int64))

    def scalar(self, name: str, value, dtype=np.float32) -> str:
        return self.tensor(name, np.array(value, dtype))

    def node(self, op: str, inputs: list[str], n_out: int = 1, name: str | None = None, **attrs) -> list[str] | str:
        self._count += 1
        name = name or f"{op}_{self._count}"
        outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]

    # ---- layers as exporters emit them ----

    def conv(self, x: str, name: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1,
             bias: bool = False, gain: float = 2.0) -> str:
        fan_in = cin // group * k * k
        w = (self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(gain / fan_in)).astype(np.float32)
        inputs = [x, self.tensor(f"{name}.weight", w)]
        if bias:
            inputs.append(self.tensor(f"{name}.bias", (0.1 * self.rng.standard_normal(cout)).astype(np.float32)))
        p = k // 2
        return self.node("Conv", inputs, name=name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p], group=group, dilations=[1, 1])

    def bn(self, x: str, name: str, ch: int, gamma: np.ndarray | None = None) -> str:
        rng = self.rng
        g = (1 + 0.1 * rng.standard_normal(ch)) if gamma is None else gamma
        t = [self.tensor(f"{name}.weight", g.astype(np.float32)),
             self.tensor(f"{name}.bias", (0.1 * rng.standard_normal(ch) * np.abs(g)).astype(np.float32)),
             self.tensor(f"{name}.running_mean", (0.1 * rng.standard_normal(ch)).astype(np.float32)),
             self.tensor(f"{name}.running_var", (0.5 + rng.random(ch)).astype(np.float32))]
        return self.node("BatchNormalization", [x] + t, name=name, epsilon=1e-5, momentum=0.9)

    def linear_matmul(self, x: str, name: str, din: int, dout: int) -> str:
        """nn.Linear on a 3-D input as torch exports it: MatMul by the constant (in, out) weight, then Add bias."""
        w = (self.rng.standard_normal((din, dout)) / np.sqrt(din)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(dout)).astype(np.float32)
        h = self.node("MatMul", [x, self.tensor(f"{name}.weight", w)], name=f"{name}/MatMul")
        return self.node("Add", [self.tensor(f"{name}.bias", b), h], name=f"{name}/Add")  # torch puts bias first

    def model(self, inputs, outputs, name: str) -> onnx.ModelProto:
        consts = [helper.make_node("Constant", [], [k], name=f"Constant_{k}", value=numpy_helper.from_array(v, k))
                  for k, v in self.tensors.items() if k in self.as_node]
        inits = [numpy_helper.from_array(v, k) for k, v in self.tensors.items() if k not in self.as_node]
        g = helper.make_graph(consts + self.nodes, name, inputs, outputs, inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgepack-realzoo")
        m.ir_version = 8
        onnx.checker.check_model(m, full_check=True)
        return m


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _spread_gammas(rng, ch: int, spread: float) -> np.ndarray:
    """BN gammas whose magnitudes span 10^-spread .. 10^spread over the channels, in shuffled order."""
    return (1 + 0.1 * rng.standard_normal(ch)) * np.logspace(-spread, spread, ch)[rng.permutation(ch)]


# ---------------------------------------------------------------- MobileNetV2

def mobilenet_v2(seed: int = 0, constants: bool = False, width: int = 16, classes: int = 10,
                 size: int = 32) -> onnx.ModelProto:
    """Stem conv/BN/ReLU6 (Clip), three inverted residual blocks (1x1 expand, depthwise 3x3, 1x1 project, BN after
    each conv; HardSwish or ReLU6; a squeeze-excite with HardSigmoid in one; residual Adds where shapes allow), a last
    1x1 conv, GlobalAveragePool, Flatten, Gemm classifier. Input x [N, 3, size, size] -> logits [N, classes]."""
    b = _Builder(seed, constants)
    zero, six = b.scalar("relu6.min", 0.0), b.scalar("relu6.max", 6.0)

    def relu6(x):
        return b.node("Clip", [x, zero, six])

    def act(x, kind):
        return relu6(x) if kind == "relu6" else b.node("HardSwish", [x])

    h = relu6(b.bn(b.conv("x", "stem", 3, width, 3, stride=2), "stem.bn", width))
    cin = width
    # (expansion, out channels, stride, activation, squeeze-excite)
    for i, (t, cout, s, kind, se) in enumerate([(3, width, 1, "hswish", False), (4, 24, 2, "relu6", True),
                                                (3, 24, 1, "hswish", False)]):
        p = f"blocks.{i}"
        hidden = cin * t
        y = act(b.bn(b.conv(h, f"{p}.expand", cin, hidden, 1), f"{p}.expand.bn", hidden), kind)
        y = act(b.bn(b.conv(y, f"{p}.dw", hidden, hidden, 3, stride=s, group=hidden), f"{p}.dw.bn", hidden), kind)
        if se:
            squeezed = max(8, hidden // 4)
            z = b.node("GlobalAveragePool", [y], name=f"{p}.se.pool")
            z = b.node("Relu", [b.conv(z, f"{p}.se.fc1", hidden, squeezed, 1, bias=True)])
            z = b.node("HardSigmoid", [b.conv(z, f"{p}.se.fc2", squeezed, hidden, 1, bias=True)], alpha=1 / 6,
                       beta=0.5)
            y = b.node("Mul", [y, z], name=f"{p}.se.scale")
        y = b.bn(b.conv(y, f"{p}.project", hidden, cout, 1, gain=1.0), f"{p}.project.bn", cout)
        h = b.node("Add", [h, y], name=f"{p}.residual") if s == 1 and cin == cout else y
        cin = cout
    last = 64
    h = b.node("HardSwish", [b.bn(b.conv(h, "head", cin, last, 1), "head.bn", last)])
    h = b.node("Flatten", [b.node("GlobalAveragePool", [h], name="pool")], name="flatten", axis=1)
    w = (b.rng.standard_normal((classes, last)) / np.sqrt(last)).astype(np.float32)
    fc = [h, b.tensor("classifier.weight", w),
          b.tensor("classifier.bias", (0.1 * b.rng.standard_normal(classes)).astype(np.float32))]
    b.nodes.append(helper.make_node("Gemm", fc, ["logits"], name="classifier", alpha=1.0, beta=1.0, transB=1))
    return b.model([_vi("x", ["N", 3, size, size])], [_vi("logits", ["N", classes])], "mobilenet_v2")


# ---------------------------------------------------------------- ResNet

def resnet(seed: int = 0, constants: bool = True, scale_spread: float = 6.0, classes: int = 10,
           size: int = 32, undo: str = "mul") -> onnx.ModelProto:
    """Stem conv/BN/Relu, MaxPool 3x3/2, a basic block (conv-BN-Relu-conv-BN + identity, Relu) and a downsampling
    block (stride 2, 1x1 conv + BN shortcut), GlobalAveragePool, Reshape [0, -1], Gemm. Weights as Constant nodes by
    default. scale_spread > 0: the first BN of each block has gammas spanning 10^-spread .. 10^spread, and a
    per-channel Mul after its Relu undoes them (undo="mul"), or the next conv's input channels do (undo="next": the
    spread then sits in that weight's columns too, as in a trained net), so that every channel matters downstream
    while the folded conv's output channels differ in scale by up to 10^(2 spread)."""
    b = _Builder(seed, constants)
    w0 = 16
    h = b.node("Relu", [b.bn(b.conv("x", "conv1", 3, w0, 3), "bn1", w0)])
    h = b.node("MaxPool", [h], name="maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = w0
    for i, (cout, s) in enumerate([(16, 1), (32, 2)]):
        p = f"layer{i + 1}.0"
        gamma = _spread_gammas(b.rng, cout, scale_spread) if scale_spread else None
        y = b.node("Relu", [b.bn(b.conv(h, f"{p}.conv1", cin, cout, 3, stride=s), f"{p}.bn1", cout, gamma)])
        if scale_spread and undo == "mul":
            inverse = (1 / gamma).reshape(1, cout, 1, 1).astype(np.float32)
            y = b.node("Mul", [y, b.tensor(f"{p}.undo", inverse)], name=f"{p}.undo")
        y = b.conv(y, f"{p}.conv2", cout, cout, 3, gain=1.0)
        if scale_spread and undo == "next":
            w = b.tensors[f"{p}.conv2.weight"]
            w[...] = w / gamma.reshape(1, cout, 1, 1).astype(np.float32)
        y = b.bn(y, f"{p}.bn2", cout)
        short = h if s == 1 and cin == cout else b.bn(b.conv(h, f"{p}.downsample.0", cin, cout, 1, stride=s),
                                                      f"{p}.downsample.1", cout)
        h = b.node("Relu", [b.node("Add", [y, short], name=f"{p}.add")])
        cin = cout
    h = b.node("GlobalAveragePool", [h], name="avgpool")
    h = b.node("Reshape", [h, b.i64("flatten.shape", 0, -1)], name="flatten")
    w = (b.rng.standard_normal((classes, cin)) / np.sqrt(cin)).astype(np.float32)
    fc = [h, b.tensor("fc.weight", w), b.tensor("fc.bias", (0.1 * b.rng.standard_normal(classes)).astype(np.float32))]
    b.nodes.append(helper.make_node("Gemm", fc, ["logits"], name="fc", transB=1))
    return b.model([_vi("x", ["N", 3, size, size])], [_vi("logits", ["N", classes])], "resnet")


# ---------------------------------------------------------------- YOLO head

def yolo_head(seed: int = 0, constants: bool = False, classes: int = 3, anchors: int = 3) -> onnx.ModelProto:
    """A tiny YOLOv5/v8-style detector on x [N, 3, H, W] (H, W multiples of 8): conv/BN/SiLU (Sigmoid, Mul) stages,
    a C2f-style Split of channels + Concat, a nearest 2x Resize (scales from a Constant node) and a Concat with the
    finer map, per scale a 1x1 detection conv reshaped as torch exports view(bs, na, no, ny, nx).permute(0,1,3,4,2)
    (Shape -> Gather -> Unsqueeze -> Concat -> Reshape), Sigmoid, Split into xy / wh / scores, xy * 2 - 0.5,
    (wh * 2) ^ 2 * anchor, Concat, Reshape (bs, -1, no), and both scales concatenated: detections [N, boxes, 5 + C]."""
    b = _Builder(seed, constants)
    no = 5 + classes

    def cbs(x, name, cin, cout, k, stride=1):  # Conv-BN-SiLU, YOLO's basic unit
        y = b.bn(b.conv(x, name, cin, cout, k, stride=stride), f"{name}.bn", cout)
        return b.node("Mul", [y, b.node("Sigmoid", [y])], name=f"{name}.silu")

    p3 = cbs("x", "stem", 3, 16, 3, stride=2)
    p3 = cbs(p3, "down1", 16, 16, 3, stride=2)  # stride 4
    # C2f-style: split the channels, transform one half, concatenate
    a, c = b.node("Split", [cbs(p3, "c2f.cv1", 16, 16, 1), b.i64("c2f.split", 8, 8)], n_out=2, name="c2f.split",
                  axis=1)
    p3 = cbs(b.node("Concat", [a, c, cbs(c, "c2f.m", 8, 8, 3)], name="c2f.cat", axis=1), "c2f.cv2", 24, 16, 1)
    p4 = cbs(p3, "down2", 16, 32, 3, stride=2)  # stride 8
    lat = cbs(p4, "lateral", 32, 16, 1)
    scales = b.tensor("up.scales", np.array([1, 1, 2, 2], np.float32), force_constant_node=True)
    up = b.node("Resize", [lat, "", scales], name="up", mode="nearest", coordinate_transformation_mode="asymmetric",
                nearest_mode="floor")
    p3 = cbs(b.node("Concat", [up, p3], name="fpn.cat", axis=1), "fpn.cv", 32, 16, 3)
    outs = []
    for i, (feat, ch) in enumerate([(p3, 16), (p4, 32)]):
        p = f"detect.{i}"
        y = b.conv(feat, f"{p}.conv", ch, anchors * no, 1, bias=True, gain=1.0)
        s = b.node("Shape", [y], name=f"{p}.shape")
        dims = [b.node("Unsqueeze", [b.node("Gather", [s, b.scalar(f"{p}.i{j}", j, np.int64)], axis=0),
                                      b.i64(f"{p}.ax{j}", 0)]) for j in (0, 2, 3)]
        target = b.node("Concat", [dims[0], b.i64(f"{p}.na", anchors), b.i64(f"{p}.no", no), dims[1], dims[2]],
                        axis=0)
        y = b.node("Transpose", [b.node("Reshape", [y, target], name=f"{p}.view")], perm=[0, 1, 3, 4, 2])
        y = b.node("Sigmoid", [y])
        xy, wh, conf = b.node("Split", [y, b.i64(f"{p}.split", 2, 2, no - 4)], n_out=3, name=f"{p}.split",
                              axis=-1)
        xy = b.node("Sub", [b.node("Mul", [xy, b.scalar(f"{p}.two", 2.0)]), b.scalar(f"{p}.half", 0.5)])
        wh = b.node("Pow", [b.node("Mul", [wh, b.scalar(f"{p}.two_", 2.0)]), b.scalar(f"{p}.sq", 2.0)])
        anchor = (1 + b.rng.random((1, anchors, 1, 1, 2)) * (i + 1)).astype(np.float32)
        wh = b.node("Mul", [wh, b.tensor(f"{p}.anchor_grid", anchor)])
        y = b.node("Concat", [xy, wh, conf], axis=-1)
        flat = b.node("Concat", [dims[0], b.i64(f"{p}.minus1", -1), b.i64(f"{p}.no_", no)], axis=0)
        outs.append(b.node("Reshape", [y, flat], name=f"{p}.flat"))
    b.nodes.append(helper.make_node("Concat", outs, ["detections"], name="detect.cat", axis=1))
    return b.model([_vi("x", ["N", 3, "H", "W"])], [_vi("detections", ["N", "boxes", no])], "yolo_head")


# ---------------------------------------------------------------- transformer encoder layer

def transformer(seed: int = 0, constants: bool = True, d: int = 32, heads: int = 4, ffn: int = 64) -> onnx.ModelProto:
    """One post-norm encoder layer on x [N, T, d]: Q/K/V as MatMul by constant weights + Add bias, heads split by
    Reshape (target from Shape -> Gather -> Unsqueeze -> Concat) and Transpose, Q K^T (batched MatMul of activations)
    Div sqrt(dh), Softmax on the last axis, attention x V, merge heads, output projection, residual, LayerNorm spelled
    ReduceMean / Sub / Pow / ReduceMean / Add eps / Sqrt / Div / Mul / Add, FFN with GELU via Erf, residual, LayerNorm.
    Weights as Constant nodes by default."""
    b = _Builder(seed, constants)
    dh = d // heads
    s = b.node("Shape", ["x"], name="shape")
    bs = b.node("Unsqueeze", [b.node("Gather", [s, b.scalar("i0", 0, np.int64)], axis=0), b.i64("ax0", 0)])
    t = b.node("Unsqueeze", [b.node("Gather", [s, b.scalar("i1", 1, np.int64)], axis=0), b.i64("ax0_", 0)])
    split_target = b.node("Concat", [bs, t, b.i64("heads", heads), b.i64("dh", dh)], axis=0)
    merge_target = b.node("Concat", [bs, t, b.i64("d", d)], axis=0)

    def heads_of(x, name, perm):
        return b.node("Transpose", [b.node("Reshape", [x, split_target], name=f"{name}.split_heads")], perm=perm)

    q = heads_of(b.linear_matmul("x", "attn.q_proj", d, d), "q", [0, 2, 1, 3])
    k = heads_of(b.linear_matmul("x", "attn.k_proj", d, d), "k", [0, 2, 3, 1])
    v = heads_of(b.linear_matmul("x", "attn.v_proj", d, d), "v", [0, 2, 1, 3])
    scores = b.node("Div", [b.node("MatMul", [q, k], name="attn.qk"), b.scalar("attn.sqrt_dh", np.sqrt(dh))])
    probs = b.node("Softmax", [scores], name="attn.softmax", axis=-1)
    ctx = b.node("Transpose", [b.node("MatMul", [probs, v], name="attn.pv")], perm=[0, 2, 1, 3])
    ctx = b.node("Reshape", [ctx, merge_target], name="attn.merge_heads")
    h = b.node("Add", ["x", b.linear_matmul(ctx, "attn.out_proj", d, d)], name="residual1")

    def layer_norm(x, name):
        mean = b.node("ReduceMean", [x], name=f"{name}/ReduceMean", axes=[-1], keepdims=1)
        centred = b.node("Sub", [x, mean], name=f"{name}/Sub")
        var = b.node("ReduceMean", [b.node("Pow", [centred, b.scalar(f"{name}.two", 2.0)], name=f"{name}/Pow")],
                     name=f"{name}/ReduceMean_1", axes=[-1], keepdims=1)
        std = b.node("Sqrt", [b.node("Add", [var, b.scalar(f"{name}.eps", 1e-5)], name=f"{name}/Add")])
        y = b.node("Div", [centred, std], name=f"{name}/Div")
        g = (1 + 0.1 * b.rng.standard_normal(d)).astype(np.float32)
        beta = (0.1 * b.rng.standard_normal(d)).astype(np.float32)
        y = b.node("Mul", [y, b.tensor(f"{name}.weight", g)], name=f"{name}/Mul")
        return b.node("Add", [y, b.tensor(f"{name}.bias", beta)], name=f"{name}/Add_1")

    h = layer_norm(h, "norm1")
    f = b.linear_matmul(h, "ffn.fc1", d, ffn)
    erf = b.node("Erf", [b.node("Div", [f, b.scalar("gelu.sqrt2", np.sqrt(2.0))])])
    gelu = b.node("Mul", [b.node("Mul", [f, b.node("Add", [erf, b.scalar("gelu.one", 1.0)])]),
                          b.scalar("gelu.half", 0.5)], name="gelu")
    h = b.node("Add", [h, b.linear_matmul(gelu, "ffn.fc2", ffn, d)], name="residual2")
    h = layer_norm(h, "norm2")
    b.nodes.append(helper.make_node("Identity", [h], ["y"], name="output"))
    return b.model([_vi("x", ["N", "T", d])], [_vi("y", ["N", "T", d])], "transformer")


# ---------------------------------------------------------------- ConvTranspose decoder

def decoder(seed: int = 0, constants: bool = False, latent: int = 16) -> onnx.ModelProto:
    """A DCGAN-style decoder: z [N, latent] -> Gemm -> Reshape [-1, 32, 4, 4] -> Relu -> two ConvTranspose 4x4/2
    (each followed by BatchNormalization, which the importer leaves unfolded, and Relu) -> 3x3 Conv -> Sigmoid:
    image [N, 3, 16, 16]."""
    b = _Builder(seed, constants)
    w = (b.rng.standard_normal((32 * 16, latent)) / np.sqrt(latent)).astype(np.float32)
    h = b.node("Gemm", ["z", b.tensor("fc.weight", w),
                        b.tensor("fc.bias", (0.1 * b.rng.standard_normal(32 * 16)).astype(np.float32))],
               name="fc", transB=1)
    h = b.node("Relu", [b.node("Reshape", [h, b.i64("fc.view", -1, 32, 4, 4)], name="view")])
    for i, (cin, cout) in enumerate([(32, 16), (16, 8)]):
        p = f"up{i}"
        wt = (b.rng.standard_normal((cin, cout, 4, 4)) * np.sqrt(2.0 / (cin * 4))).astype(np.float32)
        h = b.node("ConvTranspose", [h, b.tensor(f"{p}.weight", wt)], name=p, kernel_shape=[4, 4], strides=[2, 2],
                   pads=[1, 1, 1, 1])
        h = b.node("Relu", [b.bn(h, f"{p}.bn", cout)])
    h = b.conv(h, "to_rgb", 8, 3, 3, bias=True, gain=1.0)
    b.nodes.append(helper.make_node("Sigmoid", [h], ["image"], name="out"))
    return b.model([_vi("z", ["N", latent])], [_vi("image", ["N", 3, 16, 16])], "decoder")


# ---------------------------------------------------------------- tf2onnx / Keras-style classifier

def keras_style(seed: int = 0, constants: bool = False, classes: int = 5) -> onnx.ModelProto:
    """What tf2onnx writes for a small Keras model on NHWC x [N, H, W, 3]: Transpose to NCHW, an explicit Pad op
    before a 'valid' Conv, a bilinear Resize to twice the size with `sizes` computed from the shape (Shape -> Slice ->
    Mul -> Concat), Conv/BN/Relu, ReduceMean over H, W (keepdims 0) as global pooling, a Dense as MatMul + Add whose
    two halves are sliced apart into a gated unit (Slice, Sigmoid, Mul), Unsqueeze / Squeeze / Cast no-ops as
    converters leave them, and a Gemm (transB 0) + Softmax: probs [N, classes]."""
    b = _Builder(seed, constants)
    h = b.node("Transpose", ["x"], name="to_nchw", perm=[0, 3, 1, 2])
    h = b.node("Pad", [h, b.i64("pad.pads", 0, 0, 1, 1, 0, 0, 1, 1), b.scalar("pad.value", 0.0)], mode="constant")
    w = (b.rng.standard_normal((8, 3, 3, 3)) * np.sqrt(2 / 27)).astype(np.float32)
    h = b.node("Conv", [h, b.tensor("conv1/kernel", w), b.tensor("conv1/bias", np.zeros(8, np.float32))],
               name="conv1", kernel_shape=[3, 3])
    h = b.node("Relu", [h])
    s = b.node("Shape", [h])
    hw = b.node("Slice", [s, b.i64("hw.start", 2), b.i64("hw.end", 4), b.i64("hw.axes", 0)])
    nc = b.node("Slice", [s, b.i64("nc.start", 0), b.i64("nc.end", 2), b.i64("nc.axes", 0)])
    sizes = b.node("Concat", [nc, b.node("Mul", [hw, b.i64("up.factor", 2, 2)])], axis=0)
    h = b.node("Resize", [h, "", "", sizes], name="up", mode="linear", coordinate_transformation_mode="half_pixel")
    h = b.node("Relu", [b.bn(b.conv(h, "conv2", 8, 12, 3, stride=2), "conv2.bn", 12)])
    h = b.node("ReduceMean", [h], name="global_pool", axes=[2, 3], keepdims=0)
    w = (b.rng.standard_normal((12, 24)) / np.sqrt(12)).astype(np.float32)
    h = b.node("Add", [b.node("MatMul", [h, b.tensor("dense/kernel", w)]),
                       b.tensor("dense/bias", (0.1 * b.rng.standard_normal(24)).astype(np.float32))])
    value = b.node("Slice", [h, b.i64("v.start", 0), b.i64("v.end", 12), b.i64("v.axes", -1)])
    gate = b.node("Slice", [h, b.i64("g.start", 12), b.i64("g.end", 24), b.i64("g.axes", -1)])
    h = b.node("Mul", [value, b.node("Sigmoid", [gate])], name="glu")
    h = b.node("Squeeze", [b.node("Unsqueeze", [h, b.i64("unsq.axes", 1)]), b.i64("sq.axes", 1)])
    h = b.node("Cast", [h], to=TensorProto.FLOAT)
    w = (b.rng.standard_normal((12, classes)) / np.sqrt(12)).astype(np.float32)
    h = b.node("Gemm", [h, b.tensor("logits/kernel", w), b.tensor("logits/bias", np.zeros(classes, np.float32))],
               name="logits")
    b.nodes.append(helper.make_node("Softmax", [h], ["probs"], name="softmax", axis=-1))
    return b.model([_vi("x", ["N", 16, 16, 3])], [_vi("probs", ["N", classes])], "keras_style")


# ---------------------------------------------------------------- the zoo as the tests and benchmarks use it

def zoo() -> dict[str, dict]:
    """name -> {"model": ModelProto, "input": name, "shape": per-sample shape without the batch, "static": True when
    shape arithmetic needs --input-shape (the batch is then fixed at pack time)}."""
    return {
        "mobilenet_v2": {"model": mobilenet_v2(), "input": "x", "shape": (3, 32, 32), "static": False},
        "resnet_spread_mul": {"model": resnet(), "input": "x", "shape": (3, 32, 32), "static": False},
        "resnet_spread_next": {"model": resnet(seed=1, constants=False, undo="next"), "input": "x",
                               "shape": (3, 32, 32), "static": False},
        "yolo_head": {"model": yolo_head(), "input": "x", "shape": (3, 32, 32), "static": True},
        "transformer": {"model": transformer(), "input": "x", "shape": (16, 32), "static": True},
        "decoder": {"model": decoder(), "input": "z", "shape": (16,), "static": False},
        "keras_style": {"model": keras_style(), "input": "x", "shape": (16, 16, 3), "static": True},
    }


def save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)
