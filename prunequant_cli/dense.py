"""Dense pruning: remove output channels (neurons) and rewrite every consumer to agree.

A *channel group* starts at a producer — a Conv (output channels, axis 0 of its
weight), a Gemm or a MatMul (output neurons) — and follows its output through ops
that treat channels independently: activations, BatchNormalization, Add/Sub/Mul/Div
by a per-channel constant, pooling, Dropout, Identity. It ends at the next layers
that read the channels as inputs: a Conv (axis 1 of its weight), a Gemm or MatMul
(input features), or a Flatten feeding one (each channel is a block of columns).
Removing a channel deletes the producer's weight rows and bias entries, the
per-channel constants along the way, and the consumers' input columns.

A group is left alone, and reported, when its channels meet anything else: an Add
with another branch (residual connections), a Concat, a Reshape, a graph output, a
shared initializer, a grouped Conv. The constant a removed channel still carries
(its bias through the activation, e.g. ReLU(b) of a dead neuron) is folded into
the next layer's bias where that is exact, so removing a dead neuron changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from prunequant_cli import pruning

_STD = ("", "ai.onnx")
# Unary ops that map each channel on its own, and how to apply them to a constant.
_UNARY: dict[str, Callable[[np.ndarray, ir.Node], np.ndarray]] = {
    "Relu": lambda x, n: np.maximum(x, 0),
    "LeakyRelu": lambda x, n: np.where(x >= 0, x, x * n.attributes.get_float("alpha", 0.01)),
    "Sigmoid": lambda x, n: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, n: np.tanh(x),
    "Identity": lambda x, n: x,
    "Dropout": lambda x, n: x,
    "MaxPool": lambda x, n: x,
    "AveragePool": lambda x, n: x,
    "GlobalAveragePool": lambda x, n: x,
    "GlobalMaxPool": lambda x, n: x,
}
_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


@dataclass
class _Step:
    """A channel-wise op between the producer and the next layers."""

    node: ir.Node
    params: list[ir.Value] = field(default_factory=list)  # per-channel initializers to slice


@dataclass
class _Consumer:
    node: ir.Node
    weight: ir.Value
    axis: int  # the weight axis that reads the channels
    blocks: int = 1  # columns per channel (a Flatten before a Gemm/MatMul)
    bias: ir.Value | None = None  # where a removed channel's constant can be folded
    exact: bool = True  # folding a constant is exact (no zero padding in between)


@dataclass
class ChannelGroup:
    producer: ir.Node
    weight: ir.Value
    axis: int  # the producer weight's output axis
    bias: ir.Value | None
    steps: list[_Step]
    consumers: list[_Consumer]
    values: list[ir.Value]  # activations whose channel count changes

    @property
    def name(self) -> str:
        return self.weight.name or ""

    @property
    def channels(self) -> int:
        return _shape(self.weight)[self.axis]


def _shape(value: ir.Value) -> tuple[int, ...]:
    assert value.const_value is not None
    return tuple(int(d) for d in value.const_value.shape.numpy())


def _array(value: ir.Value) -> np.ndarray:
    assert value.const_value is not None
    return value.const_value.numpy()


def _private(value: ir.Value | None) -> bool:
    """An initializer that one node reads, once."""
    return (
        value is not None
        and value.const_value is not None
        and value.producer() is None
        and len(list(value.uses())) == 1
        and not value.is_graph_input()
        and not value.is_graph_output()
    )


def _channel_param(value: ir.Value | None, channels: int, spatial: bool) -> bool:
    """A constant that is per-channel ([C], [C,1,1], [1,C,1,1]...) for this activation."""
    if value is None or value.const_value is None:
        return False
    shape = _shape(value)
    if not spatial:  # [N, C] activations: the channel axis is the last
        return shape in ((channels,), (1, channels))
    trimmed = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    return trimmed in ((channels,), (channels, 1, 1)) and (len(shape) != 1 or channels == 1)


def _producer(node: ir.Node) -> tuple[ir.Value, int, ir.Value | None, bool] | None:
    """(weight, output axis, bias, spatial) of a prunable producer, else None."""
    if node.domain not in _STD:
        return None
    op, ins = node.op_type, node.inputs
    if op == "Conv" and len(ins) >= 2 and node.attributes.get_int("group", 1) == 1:
        bias = ins[2] if len(ins) > 2 else None
        return (ins[1], 0, bias, True) if _private(ins[1]) else None  # type: ignore[return-value]
    if op == "Gemm" and len(ins) >= 2 and not node.attributes.get_int("transA", 0):
        bias = ins[2] if len(ins) > 2 else None
        axis = 0 if node.attributes.get_int("transB", 0) else 1
        return (ins[1], axis, bias, False) if _private(ins[1]) else None  # type: ignore[return-value]
    if op == "MatMul" and len(ins) == 2 and _private(ins[1]) and len(_shape(ins[1])) == 2:  # type: ignore[arg-type]
        return ins[1], 1, None, False  # type: ignore[return-value]
    return None


def _consumer(node: ir.Node, value: ir.Value, channels: int, blocks: int) -> _Consumer | str:
    """How the next layer ``node`` reads ``value``'s channels, or why it cannot be rewritten."""
    op, ins = node.op_type, node.inputs
    if node.domain not in _STD or not ins or ins[0] is not value:
        return f"{op} reads the channels in a way that cannot be rewritten"
    if op == "Conv" and blocks == 1:
        if node.attributes.get_int("group", 1) != 1 or not _private(ins[1]):
            return "the next Conv is grouped or shares its weight"
        pads = node.attributes.get_ints("pads", [])
        exact = not any(pads) and node.attributes.get_string("auto_pad", "NOTSET") in (
            "NOTSET",
            "VALID",
        )
        bias = ins[2] if len(ins) > 2 and _private(ins[2]) else None
        return _Consumer(node, ins[1], 1, 1, bias, exact)  # type: ignore[arg-type]
    if op == "Gemm" and not node.attributes.get_int("transA", 0) and _private(ins[1]):
        axis = 1 if node.attributes.get_int("transB", 0) else 0
        if _shape(ins[1])[axis] != channels * blocks:  # type: ignore[arg-type]
            return "the next Gemm's input size does not match the channels"
        bias = ins[2] if len(ins) > 2 and _private(ins[2]) else None
        return _Consumer(node, ins[1], axis, blocks, bias)  # type: ignore[arg-type]
    if op == "MatMul" and _private(ins[1]) and len(_shape(ins[1])) == 2:  # type: ignore[arg-type]
        if _shape(ins[1])[0] != channels * blocks:  # type: ignore[arg-type]
            return "the next MatMul's input size does not match the channels"
        return _Consumer(node, ins[1], 0, blocks, None)  # type: ignore[arg-type]
    return f"the channels meet a {op}"


def _follow(
    value: ir.Value, channels: int, spatial: bool, group: ChannelGroup, blocks: int = 1
) -> str | None:
    """Walk ``value``'s users into ``group``; the reason it cannot be pruned, or None."""
    if value.is_graph_output():
        return "the channels reach a graph output"
    users = list(value.uses())
    if not users:
        return "the channels are not used"
    for use in users:
        node = use.node
        if node.graph is not group.producer.graph:
            return "the channels are read inside a subgraph"
        op = node.op_type if node.domain in _STD else f"{node.domain}::{node.op_type}"
        if op in _UNARY and use.idx == 0 and blocks == 1:
            if (
                op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
                and not spatial
            ):
                return f"{op} on features"
            group.steps.append(_Step(node))
            group.values.append(node.outputs[0])
            reason = _follow(node.outputs[0], channels, spatial, group)
        elif op == "BatchNormalization" and use.idx == 0 and blocks == 1:
            params = [p for p in node.inputs[1:5] if p is not None]
            if len(params) != 4 or not all(
                _private(p) and _shape(p) == (channels,) for p in params
            ):
                return "a BatchNormalization whose statistics are shared or not per channel"
            group.steps.append(_Step(node, params))
            group.values.append(node.outputs[0])
            reason = _follow(node.outputs[0], channels, spatial, group)
        elif op in _BINARY and len(node.inputs) == 2 and blocks == 1:
            other = node.inputs[1 - use.idx]
            if other is None or other.const_value is None or other.producer() is not None:
                return f"the channels meet an {op} with another branch"
            scalar = other.const_value.size == 1
            if not scalar and not (_private(other) and _channel_param(other, channels, spatial)):
                return f"an {op} with a constant that is not per channel"
            if op in ("Sub", "Div") and use.idx == 1:
                return f"{op} with the channels as its second input"
            group.steps.append(_Step(node, [] if scalar else [other]))
            group.values.append(node.outputs[0])
            reason = _follow(node.outputs[0], channels, spatial, group)
        elif (
            op == "Flatten" and spatial and blocks == 1 and node.attributes.get_int("axis", 1) == 1
        ):
            group.steps.append(_Step(node))
            flat = node.outputs[0]
            group.values.append(flat)
            reason = _follow_flatten(flat, channels, group)
        else:
            found = _consumer(node, value, channels, blocks)
            if isinstance(found, str):
                return found
            group.consumers.append(found)
            reason = None
        if reason:
            return reason
    return None


def _follow_flatten(value: ir.Value, channels: int, group: ChannelGroup) -> str | None:
    """After a Flatten each channel is a block of H*W columns of the next Gemm/MatMul."""
    if value.is_graph_output():
        return "the channels reach a graph output"
    for use in value.uses():
        node = use.node
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if weight is None or weight.const_value is None:
            return f"the flattened channels meet a {node.op_type}"
        trans_b: int = node.attributes.get_int("transB", 0)
        k_axis = 1 if node.op_type == "Gemm" and trans_b else 0
        width = _shape(weight)[k_axis]
        if width % channels:
            return "the flattened size is not a whole number of blocks per channel"
        found = _consumer(node, value, channels, width // channels)
        if isinstance(found, str):
            return found
        group.consumers.append(found)
    return None


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """The array behind an initializer, or behind an Identity of one."""
    if value is None:
        return None
    node = value.producer()
    if node is not None and node.op_type == "Identity" and node.domain in _STD:
        value = node.inputs[0]
    if value is None or value.const_value is None or value.producer() is not None:
        return None
    return value.const_value.numpy()


def unshare_biases(model: ir.Model) -> int:
    """Give every Conv/Gemm a private copy of a bias it shares (exporters share equal biases,
    often through Identity nodes), so one layer's channels can change without the others'."""
    count = 0
    taken = {v.name for v in model.graph.initializers.values()}
    for node in list(model.graph):
        if node.op_type not in ("Conv", "Gemm") or node.domain not in _STD or len(node.inputs) < 3:
            continue
        bias = node.inputs[2]
        array = _constant(bias)
        if bias is None or array is None or _private(bias):
            continue
        name, n = f"{bias.name}_{node.name or 'layer'}", 1
        while name in taken:
            name, n = f"{bias.name}_{n}", n + 1
        taken.add(name)
        copy = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        )
        copy.const_value = ir.Tensor(array.copy(), name=name)
        model.graph.register_initializer(copy)
        node.replace_input_with(2, copy)
        count += 1
    for node in list(model.graph):  # Identity nodes that fed shared biases and now feed nothing
        if node.op_type == "Identity" and not any(
            o.uses() or o.is_graph_output() for o in node.outputs
        ):
            model.graph.remove(node, safe=True)
    return count


def find_groups(model: ir.Model) -> tuple[list[ChannelGroup], list[tuple[str, str]]]:
    """Every prunable channel group of the main graph, and the producers left alone, with why."""
    groups, skipped = [], []
    for node in model.graph:
        found = _producer(node)
        if found is None:
            continue
        weight, axis, bias, spatial = found
        if bias is not None and not (_private(bias) and _shape(bias) == (_shape(weight)[axis],)):
            skipped.append((weight.name or "", "its bias is shared or not per channel"))
            continue
        group = ChannelGroup(node, weight, axis, bias, [], [], [node.outputs[0]])
        reason = _follow(node.outputs[0], group.channels, spatial, group)
        if reason:
            skipped.append((group.name, reason))
        else:
            groups.append(group)
    return groups, skipped


def effective_rows(group: ChannelGroup) -> np.ndarray:
    """The producer's weight with a BatchNormalization right after it folded in, so channel
    importance is measured on the weights that really act (scale γ/√(var+ε) per channel)."""
    w = _array(group.weight).astype(np.float64)
    w = np.moveaxis(w, group.axis, 0)
    for step in group.steps:
        if step.node.op_type == "BatchNormalization":
            gamma, _, _, var = (_array(p).astype(np.float64) for p in step.params)
            eps = step.node.attributes.get_float("epsilon", 1e-5)
            w = w * (gamma / np.sqrt(var + eps)).reshape(-1, *([1] * (w.ndim - 1)))
            break
        if step.node.op_type not in ("Identity", "Dropout"):
            break
    return w


def choose_channels(
    group: ChannelGroup, threshold: float | None, fraction: float | None
) -> np.ndarray:
    """Boolean mask of channels to keep: importance share R_i >= threshold, or all but the
    ``fraction`` of least important channels. At least one channel is kept."""
    rows = effective_rows(group)
    share = pruning.row_importance(rows, 0)
    if threshold is not None:
        keep = share >= threshold
    else:
        drop = int(np.floor((fraction or 0.0) * share.size))
        keep = np.ones(share.size, bool)
        keep[np.argsort(share, kind="stable")[:drop]] = False
    if not keep.any():
        keep[int(np.argmax(share))] = True
    return keep


def _constant_through(group: ChannelGroup, constant: np.ndarray) -> np.ndarray | None:
    """What per-channel constants become after the group's steps (None if not computable)."""
    x = constant.astype(np.float64)
    for step in group.steps:
        op = step.node.op_type
        if op in _UNARY:
            x = _UNARY[op](x, step.node)
        elif op == "BatchNormalization":
            gamma, beta, mean, var = (_array(p).astype(np.float64) for p in step.params)
            eps = step.node.attributes.get_float("epsilon", 1e-5)
            x = gamma * (x - mean) / np.sqrt(var + eps) + beta
        elif op in _BINARY:
            other = next(i for i in step.node.inputs if i is not None and i.const_value is not None)
            c = _array(other).astype(np.float64).reshape(-1)
            first = step.node.inputs[0] is not other
            x = _BINARY[op](x, c) if first else _BINARY[op](c, x)
        elif op == "Flatten":
            continue
        else:
            return None
    return x


def _shift(c: _Consumer, constant: np.ndarray) -> np.ndarray:
    """What per-channel constants add to each output of the next layer (in bias units)."""
    w = _array(c.weight).astype(np.float64)
    if c.node.op_type == "Conv":
        return w.sum(axis=(2, 3)) @ constant  # [O, C] @ [C]
    columns = np.repeat(constant, c.blocks)
    out = w @ columns if c.axis == 1 else columns @ w
    if c.node.op_type == "Gemm":
        alpha = c.node.attributes.get_float("alpha", 1.0)
        beta = c.node.attributes.get_float("beta", 1.0)
        out = out * alpha / beta
    return out


def _slice(value: ir.Value, keep: np.ndarray, axis: int, blocks: int = 1) -> None:
    array = _array(value)
    index = np.repeat(keep, blocks) if blocks > 1 else keep
    value.const_value = ir.Tensor(np.compress(index, array, axis=axis), name=value.name)
    value.shape = ir.Shape((*array.shape[:axis], int(index.sum()), *array.shape[axis + 1 :]))


def prune_group(group: ChannelGroup, keep: np.ndarray) -> Removal:
    """Remove the channels ``keep`` does not keep: the parameters and non-zeros removed, and
    whether the outputs stay exactly the same.

    ``exact`` is True when every removed channel was dead (all its weights zero) and its
    constant output could be folded into the next layers, so outputs do not change.
    """
    removed = ~keep
    before = sum(int(_array(v).size) for v in _params(group))
    nonzero_before = sum(int(np.count_nonzero(_array(v))) for v in _params(group))
    rows = np.moveaxis(_array(group.weight), group.axis, 0)
    dead = ~np.any(rows.reshape(rows.shape[0], -1) != 0, axis=1)
    exact = bool(np.all(dead[removed]))
    bias = _array(group.bias).astype(np.float64) if group.bias is not None else np.zeros(keep.size)
    carried = _constant_through(group, np.where(removed, bias, 0.0))
    if carried is None or not np.all(np.isfinite(carried)):
        exact = False
        carried = None
    for c in group.consumers:
        if carried is None or not np.any(carried[removed]):
            continue  # nothing flows out of the removed channels
        shift = _shift(c, np.where(removed, carried, 0.0))
        if c.bias is None or not c.exact:
            exact = False  # the constant cannot be folded: the removal is an approximation
            continue
        old = _array(c.bias)
        new = old.astype(np.float64) + shift.reshape(old.shape)
        c.bias.const_value = ir.Tensor(new.astype(old.dtype), name=c.bias.name)
    _slice(group.weight, keep, group.axis)
    if group.bias is not None:
        _slice(group.bias, keep, 0)
    for step in group.steps:
        for p in step.params:
            shape = _shape(p)
            _slice(p, keep, shape.index(keep.size) if keep.size in shape else 0)
    for c in group.consumers:
        _slice(c.weight, keep, c.axis, c.blocks)
    for v in group.values:  # recorded shapes of the activations are stale now
        v.shape = None
    after = sum(int(_array(v).size) for v in _params(group))
    nonzero_after = sum(int(np.count_nonzero(_array(v))) for v in _params(group))
    return Removal(before - after, nonzero_before - nonzero_after, exact)


@dataclass(frozen=True)
class Removal:
    parameters: int
    nonzeros: int
    exact: bool


def _params(group: ChannelGroup) -> list[ir.Value]:
    values = [group.weight, *(p for s in group.steps for p in s.params)]
    values += [c.weight for c in group.consumers]
    return values + ([group.bias] if group.bias is not None else [])


@dataclass
class DenseResult:
    parameters: int = 0
    nonzeros: int = 0
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)  # weight: (removed, of)
    inputs: set[str] = field(default_factory=set)  # next-layer weights that lost columns
    skipped: list[tuple[str, str]] = field(default_factory=list)
    approximate: int = 0  # groups whose removed channels were not all dead


def prune_channels(
    model: ir.Model,
    threshold: float | None,
    fraction: float | None,
    excluded: Callable[[str], bool],
) -> DenseResult:
    """Dense pruning of every channel group of ``model``, producer by producer."""
    result = DenseResult()
    unshare_biases(model)
    groups, skipped = find_groups(model)
    result.skipped = [(n, f"dense pruning: {r}") for n, r in skipped]
    # Groups chain (a layer's weight loses input columns to one group and output rows to
    # the next); each reads the current arrays when it is pruned, so the order is free.
    for group in groups:
        names = [group.name, *(c.weight.name or "" for c in group.consumers)]
        if any(excluded(n) for n in names):
            result.skipped.append((group.name, "dense pruning: excluded by --exclude"))
            continue
        keep = choose_channels(group, threshold, fraction)
        if keep.all():
            continue
        removal = prune_group(group, keep)
        result.parameters += removal.parameters
        result.nonzeros += removal.nonzeros
        result.channels[group.name] = (int((~keep).sum()), int(keep.size))
        result.inputs.update(c.weight.name or "" for c in group.consumers)
        result.approximate += not removal.exact
    return result
