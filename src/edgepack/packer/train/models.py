"""Graph builders of the reference networks the benchmarks train from scratch: LeNet-300-100 and LeNet-5 (Caffe's
variant), with zero-filled parameters (draw them with engine.init_parameters)."""
from __future__ import annotations

import numpy as np

from ..graph import Graph, Node, ValueInfo
from .mlp import mlp_graph


def lenet300_graph() -> Graph:
    """LeNet-300-100: 784-300-100-10 fully connected, ReLU between layers; input "input" [N, 784]."""
    shapes = ((784, 300), (300, 100), (100, 10))
    return mlp_graph([(np.zeros((o, i), np.float32), np.zeros(o, np.float32)) for i, o in shapes],
                     name="lenet_300_100")


def lenet5_graph() -> Graph:
    """LeNet-5 as in Caffe's examples/mnist: conv 20@5x5, max-pool 2x2, conv 50@5x5, max-pool 2x2, fc 800->500,
    ReLU, fc 500->10 (no activation after the convolutions, as Caffe's prototxt); input "input" [N, 1, 28, 28]."""
    inits = {"conv1.weight": np.zeros((20, 1, 5, 5), np.float32), "conv1.bias": np.zeros(20, np.float32),
             "conv2.weight": np.zeros((50, 20, 5, 5), np.float32), "conv2.bias": np.zeros(50, np.float32),
             "fc1.weight": np.zeros((500, 800), np.float32), "fc1.bias": np.zeros(500, np.float32),
             "fc2.weight": np.zeros((10, 500), np.float32), "fc2.bias": np.zeros(10, np.float32)}
    pool = {"kernel_shape": ("ints", [2, 2]), "strides": ("ints", [2, 2])}
    nodes = [Node("Conv", "conv1", ["input", "conv1.weight", "conv1.bias"], ["conv1_out"]),
             Node("MaxPool", "pool1", ["conv1_out"], ["pool1_out"], dict(pool)),
             Node("Conv", "conv2", ["pool1_out", "conv2.weight", "conv2.bias"], ["conv2_out"]),
             Node("MaxPool", "pool2", ["conv2_out"], ["pool2_out"], dict(pool)),
             Node("Flatten", "flatten", ["pool2_out"], ["flat"]),
             Node("Gemm", "fc1", ["flat", "fc1.weight", "fc1.bias"], ["fc1_out"], {"transB": ("int", 1)}),
             Node("Relu", "relu1", ["fc1_out"], ["relu1_out"]),
             Node("Gemm", "fc2", ["relu1_out", "fc2.weight", "fc2.bias"], ["logits"], {"transB": ("int", 1)})]
    return Graph("lenet5", [ValueInfo("input", "float32", ["N", 1, 28, 28])],
                 [ValueInfo("logits", "float32", ["N", 10])], nodes, inits, 17,
                 sum(int(v.size) for v in inits.values()))
