"""Which initializers are weights, and which of their axes is the output row.

A weight is a float initializer whose every use is a weight slot of a known op:

| op            | input | output-row axis                              |
| ------------- | ----- | -------------------------------------------- |
| Conv          | 1     | 0 (output channels)                          |
| ConvTranspose | 1     | 1 (output channels per group)                |
| Gemm          | 1     | 0 with transB=1, else 1                      |
| MatMul        | 1     | last (columns of B are output neurons)       |
| Gather        | 0     | 0 (an embedding table: one row per token), axis=0 only |
| LSTM/GRU/RNN  | 1, 2  | 1 (gate units of W and R: [directions, gates×hidden, inputs]) |

Uses through Identity nodes count as uses of the initializer itself (exporters
share one initializer between cloned layers that way).

Uses are followed into If/Loop/Scan subgraphs. An initializer that is also a graph
input or output, is not float, or has any other use (a Reshape shape, an Add
operand...) is left alone, and the reason is recorded.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

import onnx_ir as ir
from onnx_ir._core import Usage

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})
_STANDARD_DOMAINS = ("", "ai.onnx")


def dims(tensor: ir.TensorProtocol) -> tuple[int, ...]:
    """The concrete shape of a constant tensor."""
    return tuple(int(d) for d in tensor.shape.numpy())


@dataclass(frozen=True)
class WeightSite:
    """An initializer chosen for compression."""

    value: ir.Value
    graph: ir.Graph
    axis: int
    op_types: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.value.name or ""


@dataclass(frozen=True)
class Skipped:
    """A float initializer left untouched, and why."""

    name: str
    reason: str


def _weight_axis(use: Usage, rank: int) -> int | None:
    """Output-row axis of the weight at this use, or None if it is not a weight slot."""
    node, idx = use.node, use.idx
    if node.domain not in _STANDARD_DOMAINS:
        return None
    op = node.op_type
    if op == "Conv" and idx == 1 and rank >= 3:
        return 0
    if op == "ConvTranspose" and idx == 1 and rank >= 3:
        return 1
    if op == "Gemm" and idx == 1 and rank == 2:
        return 0 if node.attributes.get_int("transB", 0) else 1
    if op == "MatMul" and idx == 1 and rank >= 2:
        return rank - 1
    if op == "Gather" and idx == 0 and rank == 2 and node.attributes.get_int("axis", 0) == 0:
        return 0
    if op in ("LSTM", "GRU", "RNN") and idx in (1, 2) and rank == 3:
        return 1
    return None


def _uses_through_identity(value: ir.Value, depth: int = 0) -> list[Usage] | str:
    """The uses of ``value``, looking through Identity nodes (exporters add them
    to share one initializer between layers)."""
    uses: list[Usage] = []
    for use in value.uses():
        node = use.node
        if node.op_type == "Identity" and node.domain in _STANDARD_DOMAINS and depth < 16:
            out = node.outputs[0]
            if out.is_graph_output():
                return "passed to a graph output through Identity"
            found = _uses_through_identity(out, depth + 1)
            if isinstance(found, str):
                return found
            uses += found
        else:
            uses.append(use)
    return uses


def classify(
    value: ir.Value, tensor: ir.TensorProtocol | None = None
) -> tuple[int, tuple[str, ...]] | str:
    """(axis, consumer ops) if ``value`` (holding ``tensor``, by default its constant
    value) is a weight, or the reason it is not one."""
    tensor = value.const_value if tensor is None else tensor
    if tensor is None:
        return "no constant value"
    if tensor.dtype not in FLOAT_TYPES:
        return f"not a float tensor ({tensor.dtype.name.lower()})"
    if value.is_graph_input():
        return "also a graph input (can be overridden at run time)"
    if value.is_graph_output():
        return "also a graph output"
    uses = _uses_through_identity(value)
    if isinstance(uses, str):
        return uses
    if not uses:
        return "unused"
    rank = len(tensor.shape)
    axes = set()
    ops = []
    for use in uses:
        axis = _weight_axis(use, rank)
        if axis is None:
            return f"used as input {use.idx} of {use.node.op_type}, not as a weight"
        axes.add(axis)
        ops.append(use.node.op_type)
    if len(axes) > 1:
        return "shared by ops that read its rows along different axes"
    return axes.pop(), tuple(sorted(set(ops)))


def select_weights(
    model: ir.Model, exclude: Iterable[str] = ()
) -> tuple[list[WeightSite], list[Skipped]]:
    """The weights to compress, in graph order, and the float initializers skipped."""
    patterns = tuple(exclude)
    sites: list[WeightSite] = []
    skipped: list[Skipped] = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            name = value.name or ""
            tensor = value.const_value
            if tensor is None or tensor.dtype not in FLOAT_TYPES:
                continue  # integer/shape/index tensors are not weights: not even reported
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                skipped.append(Skipped(name, "excluded by --exclude"))
                continue
            found = classify(value)
            if isinstance(found, str):
                skipped.append(Skipped(name, found))
            else:
                sites.append(WeightSite(value, graph, found[0], found[1]))
    return sites, skipped


def boundary_weights(model: ir.Model, sites: Iterable[WeightSite]) -> set[str]:
    """The weights of the first and last layers: those whose layer reads a model input, or
    writes a model output, through ops that hold no weight (shape ops, activations, Concat,
    Softmax...). Quantization hurts them most (the input layer sees raw, unnormalised
    data; the output layer's error reaches the result undiluted), so at 4 bits and below
    they keep 8 (see ``CompressConfig.all_layers``). Main-graph layers only."""
    sites = [s for s in sites if s.graph is model.graph]
    weighted: dict[int, set[str]] = {}  # id(node) -> its weights
    names = {id(s.value) for s in sites}
    for s in sites:
        for use in s.value.uses():
            weighted.setdefault(id(use.node), set()).add(s.name)
    nodes = {id(u.node): u.node for s in sites for u in s.value.uses()}

    def reaches_input(node: ir.Node) -> bool:
        data = node.inputs[:1] if node.op_type in ("LSTM", "GRU", "RNN") else node.inputs
        stack = [v for v in data if v is not None and id(v) not in names]
        seen: set[int] = set()
        while stack:
            v = stack.pop()
            if id(v) in seen or v.const_value is not None:
                continue
            seen.add(id(v))
            if v.is_graph_input():
                return True
            producer = v.producer()
            if producer is not None and id(producer) not in weighted:
                stack.extend(i for i in producer.inputs if i is not None)
        return False

    def reaches_output(node: ir.Node) -> bool:
        stack, seen = list(node.outputs), set()
        while stack:
            v = stack.pop()
            if id(v) in seen:
                continue
            seen.add(id(v))
            if v.is_graph_output():
                return True
            for use in v.uses():
                if id(use.node) not in weighted and use.node.graph is model.graph:
                    stack.extend(use.node.outputs)
        return False

    found: set[str] = set()
    for key, node in nodes.items():
        if node.graph is model.graph and (reaches_input(node) or reaches_output(node)):
            found |= weighted[key]
    return found
