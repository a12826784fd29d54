"""What is inside a model: its interface, ops and every initializer, and how weights are stored."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from prunequant_cli import metadata
from prunequant_cli.encodings import META_SHARED, describe_encoding, read_meta
from prunequant_cli.report import SCHEMA_VERSION, ModelSummary, cell, fmt_bytes, seconds_text
from prunequant_cli.selection import FLOAT_TYPES, dims, select_weights

if TYPE_CHECKING:
    from rich.console import Console

    from prunequant_cli.evaluate import SessionCost


@dataclass
class TensorInfo:
    """One logical tensor: a plain initializer, or a weight stored in encoded form."""

    name: str
    graph: str
    shape: tuple[int, ...]
    dtype: str
    stored_bytes: int
    zeros: int
    is_weight: bool
    encoding: str
    bits: int | None = None
    axis: int | None = None
    zero_rows: int | None = None
    parts: tuple[str, ...] = ()

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def float_bytes(self) -> int:
        """Bytes of the tensor as plain values of its (decoded) dtype."""
        if self.encoding == "other":
            return self.stored_bytes
        return self.elements * {"float16": 2, "double": 8}.get(self.dtype, 4)

    def to_dict(self) -> dict[str, Any]:
        n = max(self.elements, 1)
        return {
            "name": self.name,
            "graph": self.graph,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "elements": self.elements,
            "float_bytes": self.float_bytes,
            "stored_bytes": self.stored_bytes,
            "bits_per_weight": 8.0 * self.stored_bytes / n,
            "sparsity": self.zeros / n,
            "is_weight": self.is_weight,
            "encoding": self.encoding,
            "bits": self.bits,
            "axis": self.axis,
            "zero_rows": self.zero_rows,
            "stored_as": list(self.parts),
        }


@dataclass
class Inspection:
    path: str
    file_bytes: int
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: list[tuple[str, str, str]]
    outputs: list[tuple[str, str, str]]
    ops: dict[str, int]
    tensors: list[TensorInfo] = field(default_factory=list)
    shared_bytes: int = 0  # decoder constants shared by several weights (lookup tables)
    gzip_bytes: int | None = None  # the file(s) gzip-compressed: what a download costs
    session: SessionCost | None = None  # what creating an onnxruntime session costs
    # doc strings and metadata_props: (all, the model's own), in bytes (see metadata.py)
    metadata_bytes: tuple[int, int] = (0, 0)

    @property
    def summary(self) -> ModelSummary:
        float_tensors = [t for t in self.tensors if t.encoding != "other"]
        return ModelSummary(
            file_bytes=self.file_bytes,
            parameters=sum(t.elements for t in float_tensors),
            nonzero_parameters=sum(t.elements - t.zeros for t in float_tensors),
            weights=sum(t.is_weight for t in self.tensors),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "inspect",
            "file_bytes": self.file_bytes,
            "gzip_bytes": self.gzip_bytes,
            "ir_version": self.ir_version,
            "opsets": self.opsets,
            "producer": self.producer,
            "inputs": [{"name": n, "dtype": t, "shape": s} for n, t, s in self.inputs],
            "outputs": [{"name": n, "dtype": t, "shape": s} for n, t, s in self.outputs],
            "ops": self.ops,
            "totals": {
                **self.summary.to_dict(),
                "tensor_bytes": sum(t.stored_bytes for t in self.tensors) + self.shared_bytes,
                "shared_decoder_bytes": self.shared_bytes,
                "weight_bytes": sum(t.stored_bytes for t in self.tensors if t.is_weight),
                "weight_float_bytes": sum(t.float_bytes for t in self.tensors if t.is_weight),
            },
            "tensors": [t.to_dict() for t in self.tensors],
            "metadata_bytes": {
                "total": self.metadata_bytes[0],
                "model": self.metadata_bytes[1],
                "strippable": self.metadata_bytes[0] - self.metadata_bytes[1],
            },
            "meta": {
                "path": self.path,
                "session_rss_bytes": self.session.rss if self.session else None,
                "session_peak_rss_bytes": self.session.peak_rss if self.session else None,
                "session_seconds": round(self.session.seconds, 4) if self.session else None,
            },
        }


def _zero_rows(a: np.ndarray, axis: int | None) -> int | None:
    if axis is None or a.ndim == 0:
        return None
    other = tuple(i for i in range(a.ndim) if i != axis % a.ndim)
    return int(np.count_nonzero(~np.any(a != 0, axis=other)))


def _type_str(value: ir.Value) -> tuple[str, str]:
    dtype = value.dtype.name.lower() if value.dtype is not None else "?"
    shape = "×".join(str(d) for d in value.shape) if value.shape is not None else "?"
    return dtype, shape


def _nbytes(value: ir.Value) -> int:
    return 0 if value.const_value is None else int(value.const_value.nbytes)


def _dtype_code(value: ir.Value) -> int:
    return (value.dtype or ir.DataType.FLOAT).value


@dataclass
class _Found:
    graph: ir.Graph
    decoded: ir.Value
    nodes: list[ir.Node]
    stored: list[ir.Value]
    shared: list[ir.Value]
    meta: dict[str, object]


def _decoder_cone(value: ir.Value) -> tuple[list[ir.Node], list[ir.Value]] | None:
    """The nodes and initializers that compute ``value`` from constants only, or None."""
    nodes: list[ir.Node] = []
    inits: list[ir.Value] = []
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if v.const_value is not None and v.producer() is None:
            inits.append(v)
            continue
        node = v.producer()
        if node is None or any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        ):
            return None  # fed by a graph input or a control-flow op: not a decoder
        nodes.append(node)
        stack.extend(i for i in node.inputs if i is not None)
    return nodes, inits


def _find_encoded(model: ir.Model) -> list[_Found]:
    found = []
    for graph in model.graphs():
        outputs = {o.name: o for node in graph for o in node.outputs if o.name}
        for value in list(graph.initializers.values()):
            meta = read_meta(value.const_value)
            decoded = None if meta is None else outputs.get(str(meta["weight"]))
            if meta is None or decoded is None:
                continue
            cone = _decoder_cone(decoded)
            if cone is None:
                continue
            nodes, inits = cone
            shared = [v for v in inits if v.const_value.metadata_props.get(META_SHARED)]  # type: ignore[union-attr]
            stored = [v for v in inits if v not in shared]
            # scales applied after the MatMuls: part of the weight's bytes, outside its
            # decoder (which gives the codes; _decode_in_onnxruntime multiplies them in)
            after = graph.initializers.get(str(meta.get("scale_after", "")))
            if after is not None and after not in stored:
                stored.append(after)
            found.append(_Found(graph, decoded, nodes, stored, shared, meta))
    return found


def _decode_in_onnxruntime(model: ir.Model, f: _Found) -> np.ndarray:
    """Run a decoder alone in onnxruntime: what the session will see as the weight."""
    import onnx
    import onnxruntime as ort

    order = {id(n): i for i, n in enumerate(f.graph)}
    nodes = sorted(f.nodes, key=lambda n: order.get(id(n), 0))
    graph = onnx.helper.make_graph(
        [ir.serde.serialize_node(n) for n in nodes],
        "decode",
        [],
        [onnx.helper.make_tensor_value_info(f.decoded.name or "", _dtype_code(f.decoded), None)],
        initializer=[ir.serde.serialize_tensor(v.const_value) for v in (*f.stored, *f.shared)],  # type: ignore[arg-type]
    )
    for init, v in zip(graph.initializer, (*f.stored, *f.shared), strict=True):
        init.name = v.name
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        ir_version=model.ir_version,
    )
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: errors reach the user as one line
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    decoded = sess.run(None, {})[0]
    after = f.graph.initializers.get(str(f.meta.get("scale_after", "")))
    if after is not None and after.const_value is not None:
        # scales applied after the MatMuls (encodings.finish_scaled_after): the weight they
        # compute with is the codes times the per-column scales
        scale = after.const_value.numpy().astype(decoded.dtype).reshape(1, -1)
        decoded = decoded * scale
    return decoded


def inspect_ir(model: ir.Model, path: Path | str, file_bytes: int) -> Inspection:
    """Inspect a loaded model; tensor data is read one tensor at a time."""
    sites, _ = select_weights(model)
    weight_axis = {s.name: s.axis for s in sites}
    ops: Counter[str] = Counter()
    for graph in model.graphs():
        for node in graph:
            ops[
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            ] += 1
    encoded = _find_encoded(model)
    parts = {v.name for f in encoded for v in (*f.stored, *f.shared)}

    tensors: list[TensorInfo] = []
    for f in encoded:
        decoded = _decode_in_onnxruntime(model, f)
        axis = f.meta.get("axis")
        bits = f.meta.get("bits")
        axis = axis if isinstance(axis, int) else None
        bits = bits if isinstance(bits, int) else None
        tensors.append(
            TensorInfo(
                name=f.decoded.name or "",
                graph=f.graph.name or "",
                shape=tuple(int(d) for d in decoded.shape),
                dtype=str(decoded.dtype) if decoded.dtype != np.float32 else "float",
                stored_bytes=sum(_nbytes(v) for v in f.stored),
                zeros=int(decoded.size - np.count_nonzero(decoded)),
                is_weight=True,
                encoding=str(f.meta.get("encoding")),
                bits=bits,
                axis=axis,
                zero_rows=_zero_rows(decoded, axis),
                parts=tuple(v.name or "" for v in f.stored),
            )
        )
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if tensor is None or value.name in parts:
                continue
            is_float = tensor.dtype in FLOAT_TYPES
            data = tensor.numpy() if is_float else None
            axis = weight_axis.get(value.name or "")
            tensors.append(
                TensorInfo(
                    name=value.name or "",
                    graph=graph.name or "",
                    shape=dims(tensor),
                    dtype=tensor.dtype.name.lower(),
                    stored_bytes=int(tensor.nbytes),
                    zeros=0 if data is None else int(data.size - np.count_nonzero(data)),
                    is_weight=axis is not None,
                    encoding=tensor.dtype.name.lower() if is_float else "other",
                    axis=axis,
                    zero_rows=None if data is None else _zero_rows(data, axis),
                )
            )
    position = {
        id(node): i for i, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph))
    }
    values = {f.decoded.name: f.decoded for f in encoded}

    def first_use(t: TensorInfo) -> int:
        value = values.get(t.name)
        if value is None:
            value = next(
                (g.initializers[t.name] for g in model.graphs() if t.name in g.initializers), None
            )
        uses = [position.get(id(n), len(position)) for n in value.consumers()] if value else []
        return min(uses, default=len(position))

    tensors.sort(key=first_use)
    return Inspection(
        path=str(path),
        file_bytes=file_bytes,
        ir_version=model.ir_version,
        opsets=dict(sorted(model.opset_imports.items())),
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        inputs=[(v.name or "", *_type_str(v)) for v in model.graph.inputs],
        outputs=[(v.name or "", *_type_str(v)) for v in model.graph.outputs],
        ops=dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        tensors=tensors,
        shared_bytes=sum(
            _nbytes(v) for v in {id(v): v for f in encoded for v in f.shared}.values()
        ),
        metadata_bytes=(metadata.count(model).bytes, _model_level(model)),
    )


def _model_level(model: ir.Model) -> int:
    own = metadata.Annotations()
    own.add(model)
    return own.bytes


def render_inspection(info: Inspection, console: Console) -> None:
    from rich.table import Table

    opsets = ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in info.opsets.items())
    size = fmt_bytes(info.file_bytes)
    if info.gzip_bytes is not None:
        size += f" ({fmt_bytes(info.gzip_bytes)} gzipped)"
    console.print(
        f"[bold]{cell(info.path)}[/]  {size}  IR {info.ir_version}  opsets: {cell(opsets)}"
    )
    if info.producer:
        console.print(f"producer: {cell(info.producer)}")
    if info.session:
        console.print(
            f"onnxruntime session: {seconds_text(info.session.seconds)} to create, "
            f"{fmt_bytes(info.session.peak_rss)} peak memory while created, "
            f"{fmt_bytes(info.session.rss)} held"
        )
    total, own = info.metadata_bytes
    if total:
        console.print(
            f"doc strings and metadata: {fmt_bytes(total)}, of which the model's own "
            f"{fmt_bytes(own)} (--strip drops the other {fmt_bytes(total - own)})"
        )
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind, entries in (("input", info.inputs), ("output", info.outputs)):
        for name, dtype, shape in entries:
            io.add_row(kind, cell(name), cell(dtype), cell(shape))
    console.print(io)
    console.print("ops: " + ", ".join(f"{cell(op)} ×{n}" for op, n in info.ops.items()))
    table = Table(title="tensors", title_justify="left")
    for col, just in (
        ("name", "left"),
        ("shape", "left"),
        ("weight", "left"),
        ("stored as", "left"),
        ("bits/weight", "right"),
        ("bytes", "right"),
        ("sparsity", "right"),
        ("zero rows", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for t in info.tensors:
        d = t.to_dict()
        enc = describe_encoding(t.encoding, t.bits)
        rows = "" if t.zero_rows is None or t.axis is None else f"{t.zero_rows}/{t.shape[t.axis]}"
        table.add_row(
            cell(t.name),
            "×".join(map(str, t.shape)) or "scalar",
            "yes" if t.is_weight else "",
            enc,
            f"{d['bits_per_weight']:.2f}",
            fmt_bytes(t.stored_bytes),
            f"{100 * d['sparsity']:.1f}%" if t.encoding != "other" else "",
            rows,
        )
    console.print(table)
    s = info.summary
    weights = [t for t in info.tensors if t.is_weight]
    weight_bytes = sum(t.stored_bytes for t in weights)
    weight_params = sum(t.elements for t in weights)
    bpw = f" ({8 * weight_bytes / weight_params:.2f} bits/weight)" if weight_params else ""
    console.print(
        f"totals: {s.parameters:,} parameters ({s.nonzero_parameters:,} non-zero), "
        f"{s.weights} weight tensors in {fmt_bytes(weight_bytes)}{bpw}, "
        f"{fmt_bytes(sum(t.stored_bytes for t in info.tensors) + info.shared_bytes)} of tensor data"
    )
