"""Small built graphs that cover each weight layout the tool must handle."""

from __future__ import annotations

import numpy as np
from helpers import FLOAT, make_model, rand, tensor
from onnx import TensorProto, helper


def gemm(trans_b: int):
    w = rand((3, 4), 1) if trans_b else rand((4, 3), 1)
    return make_model(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=trans_b)],
        [("x", FLOAT, ["N", 4])],
        [("y", FLOAT, ["N", 3])],
        [tensor("W", w), tensor("b", rand((3,), 2))],
    )


def matmul(batched: bool = False):
    w = rand((2, 4, 3), 1) if batched else rand((4, 3), 1)
    shape = [2, "N", 4] if batched else ["N", 4]
    out = [2, "N", 3] if batched else ["N", 3]
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", FLOAT, shape)],
        [("y", FLOAT, out)],
        [tensor("W", w)],
    )


def conv():
    return make_model(
        [
            helper.make_node("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("ConvTranspose", ["r", "WT"], ["y"]),
        ],
        [("x", FLOAT, ["N", 3, 6, 6])],
        [("y", FLOAT, ["N", 5, 8, 8])],
        [
            tensor("W", rand((8, 3, 3, 3), 1)),
            tensor("b", rand((8,), 2)),
            tensor("WT", rand((8, 5, 3, 3), 3)),
        ],
    )


def embedding():
    return make_model(
        [helper.make_node("Gather", ["E", "ids"], ["y"], axis=0)],
        [("ids", TensorProto.INT64, ["N", 5])],
        [("y", FLOAT, ["N", 5, 4])],
        [tensor("E", rand((10, 4), 1))],
    )


def shared_weight():
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("MatMul", ["t", "W"], ["y"]),
        ],
        [("x", FLOAT, ["N", 6])],
        [("y", FLOAT, ["N", 6])],
        [tensor("W", rand((6, 6), 1))],
    )


def if_branches():
    """W (outer scope) is used only inside the then-branch; V is the else-branch's own."""
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", FLOAT, ["N", 3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "V"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", FLOAT, ["N", 3])],
        initializer=[tensor("V", rand((4, 3), 2))],
    )
    return make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        [("x", FLOAT, ["N", 4]), ("c", TensorProto.BOOL, [])],
        [("y", FLOAT, ["N", 3])],
        [tensor("W", rand((4, 3), 1))],
    )


def reshape_and_others():
    """A shape initializer, a weight that is also an Add operand, and a graph-input weight."""
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "A"], ["a"]),
            helper.make_node("MatMul", ["a", "A"], ["m"]),
            helper.make_node("MatMul", ["m", "G"], ["g"]),
            helper.make_node("Reshape", ["g", "shape"], ["y"]),
        ],
        [("x", FLOAT, ["N", 4]), ("G", FLOAT, [4, 4])],
        [("y", FLOAT, ["M", 2, 2])],
        [
            tensor("W", rand((4, 4), 1)),
            tensor("A", rand((4, 4), 2)),
            tensor("G", rand((4, 4), 3)),
            tensor("shape", np.array([-1, 2, 2], np.int64)),
        ],
    )
    return model


def conv_bn():
    """Conv without bias -> BatchNormalization -> Relu -> pool -> Gemm: a CNN as exported."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
            helper.make_node("Relu", ["bn"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
        ],
        [("x", FLOAT, ["N", 3, 8, 8])],
        [("y", FLOAT, ["N", 5])],
        [
            tensor("W", rand((8, 3, 3, 3), 1)),
            tensor("gamma", rand((8,), 2) + 1),
            tensor("beta", rand((8,), 3)),
            tensor("mean", rand((8,), 4)),
            tensor("var", np.abs(rand((8,), 5)) + 0.5),
            tensor("fc", rand((5, 8), 6)),
            tensor("fcb", rand((5,), 7)),
        ],
    )


def lstm():
    """Token embedding -> LSTM: a recurrent text model."""
    hidden, inp = 6, 8
    return make_model(
        [
            helper.make_node("Gather", ["E", "ids"], ["emb"]),
            helper.make_node("LSTM", ["emb", "W", "R", "B"], ["Y"], hidden_size=hidden),
        ],
        [("ids", TensorProto.INT64, [5, "N"])],
        [("Y", FLOAT, [5, 1, "N", hidden])],
        [
            tensor("E", rand((20, inp), 1)),
            tensor("W", rand((1, 4 * hidden, inp), 2) * 0.5),
            tensor("R", rand((1, 4 * hidden, hidden), 3) * 0.5),
            tensor("B", rand((1, 8 * hidden), 4) * 0.1),
        ],
    )


def identity_shared():
    """One initializer shared by two layers through an Identity, as exporters write it."""
    return make_model(
        [
            helper.make_node("Identity", ["W"], ["W_layer2"]),
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "W_layer2"], ["y"]),
        ],
        [("x", FLOAT, ["N", 6])],
        [("y", FLOAT, ["N", 6])],
        [tensor("W", rand((6, 6), 1))],
    )
