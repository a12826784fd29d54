"""Bias correction: shift each layer's bias by the mean error its quantized weight adds.

Quantizing W to W' = W + ΔW moves a layer's output by ΔW·x, whose mean over the
data, ΔW·E[x], is a systematic shift (not noise). Subtracting it from the bias
removes it exactly on average, with no training: E[x] is measured by running the
original model on the evaluation inputs. Weights are not touched, so pruned zeros
stay zero. Handled: Gemm (transA = 0) and Conv with a float bias initializer that
no other node reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir


@dataclass(frozen=True)
class Correctable:
    """A weight whose layer has a bias that can absorb its mean error."""

    weight: str
    node: ir.Node
    activation: str  # the layer's input
    bias: ir.Value


def correctable(model: ir.Model, weight: ir.Value) -> Correctable | None:
    """The layer of ``weight`` if its bias can be corrected, else None."""
    uses = list(weight.uses())
    if len(uses) != 1 or uses[0].idx != 1:
        return None
    node = uses[0].node
    if (
        node.graph is not model.graph
        or node.op_type not in ("Gemm", "Conv")
        or len(node.inputs) < 3
    ):
        return None
    trans_a: int = node.attributes.get_int("transA", 0)
    if node.op_type == "Gemm" and trans_a:
        return None
    x, bias = node.inputs[0], node.inputs[2]
    if x is None or not x.name or bias is None or bias.const_value is None:
        return None
    if len(list(bias.uses())) != 1 or bias.is_graph_input() or bias.is_graph_output():
        return None
    if bias.const_value.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
        return None
    if len(bias.const_value.shape) != 1:
        return None
    return Correctable(weight.name or "", node, x.name, bias)


class ActivationMeans:
    """Recorder of the mean of each named activation: per feature ([N, K] -> [K]) or per
    channel ([N, C, ...] -> [C]), over all pieces it is given (see evaluate.record)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._sums: dict[str, np.ndarray] = {}
        self._counts: dict[str, int] = {}

    def add(self, piece: Mapping[str, np.ndarray]) -> None:
        for name in self.names:
            if name not in piece:
                continue
            a = np.asarray(piece[name], dtype=np.float64)
            reduce = tuple(i for i in range(a.ndim) if i != 1)
            self._sums[name] = self._sums.get(name, 0) + a.sum(axis=reduce)
            self._counts[name] = self._counts.get(name, 0) + int(a.size // a.shape[1])

    def means(self) -> dict[str, np.ndarray]:
        return {n: self._sums[n] / self._counts[n] for n in self._sums}


def bias_shift(layer: Correctable, delta: np.ndarray, mean_x: np.ndarray) -> np.ndarray | None:
    """The mean output shift ΔW·E[x] of ``layer``, in bias units (None if shapes disagree)."""
    node = layer.node
    delta = delta.astype(np.float64)
    if node.op_type == "Gemm":
        w = delta if node.attributes.get_int("transB", 0) else delta.T  # [N, K]
        if w.shape[1] != mean_x.size:
            return None
        alpha = node.attributes.get_float("alpha", 1.0)
        beta = node.attributes.get_float("beta", 1.0)
        return alpha * (w @ mean_x) / beta if beta else None
    groups = node.attributes.get_int("group", 1)
    out_channels, per_group = delta.shape[0], delta.shape[1]
    if per_group * groups != mean_x.size:
        return None
    summed = delta.reshape(out_channels, per_group, -1).sum(axis=2)  # [O, I/g]
    group_of = np.arange(out_channels) // (out_channels // groups)
    means = mean_x.reshape(groups, per_group)[group_of]  # [O, I/g]
    return (summed * means).sum(axis=1)
