"""What an exporter leaves in a model besides the graph: doc strings and metadata properties.

Exporters annotate every node (a source line, a module path, a stack trace) and graph; inside
If/Loop branches a small model can carry more of these bytes than weights (a voice-activity
model: 650 KB of its 1.2 MB output). ``--strip`` drops the doc strings and metadata_props of
nodes, values, graphs and functions, in subgraphs too; the model's own (model-level doc
string and metadata, which tools read to identify a model) stay.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir


@dataclass
class Annotations:
    """Doc strings and metadata entries, and their bytes (UTF-8, without protobuf framing)."""

    doc_strings: int = 0
    properties: int = 0
    bytes: int = 0

    def add(self, item: Any) -> None:
        doc = getattr(item, "doc_string", None)
        if doc:
            self.doc_strings += 1
            self.bytes += len(doc.encode("utf-8"))
        props = getattr(item, "metadata_props", None) or {}
        self.properties += len(props)
        self.bytes += sum(len(k.encode("utf-8")) + len(v.encode("utf-8")) for k, v in props.items())


def _graphs(model: ir.Model) -> Iterator[ir.Graph | ir.Function]:
    yield from model.graphs()  # the main graph and every subgraph
    yield from model.functions.values()


def _annotated(model: ir.Model) -> Iterator[Any]:
    """Every node, value, graph and function that may carry annotations (not the model)."""
    for graph in _graphs(model):
        yield graph
        for node in graph:
            yield node
            yield from node.outputs
        if isinstance(graph, ir.Graph):
            yield from graph.inputs
            yield from graph.initializers.values()


def count(model: ir.Model, with_model: bool = True) -> Annotations:
    """The annotations of ``model`` (its own model-level ones too, unless ``with_model`` is
    False)."""
    found = Annotations()
    if with_model:
        found.add(model)
    for item in _annotated(model):
        found.add(item)
    return found


def strip(model: ir.Model) -> Annotations:
    """Remove every annotation but the model-level ones; return what was removed."""
    removed = count(model, with_model=False)
    for item in _annotated(model):
        item.doc_string = None
        item.metadata_props.clear()
    return removed
