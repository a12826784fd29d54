"""Structural checks of an untrusted model before anything is allocated for it.

``onnx.checker`` misses things that matter to a tool that reads tensors and runs
onnxruntime: tensor data whose length disagrees with its dims, dims that multiply
to absurd sizes, several data fields in one tensor, external data in places that
onnx_ir would read relative to the working directory, a Loop that can never end,
a ConstantOfShape that asks for gigabytes. Every tensor is walked: initializers,
sparse initializers, node attributes, in every subgraph and function.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import onnx
from onnx import AttributeProto, TensorProto

from prunequant_cli.errors import (
    InvalidModelError,
    ResourceError,
    UnsupportedModelError,
    safe_text,
)

# No single tensor may declare more elements than this (2**36: 256 GiB of float32).
MAX_ELEMENTS = 1 << 36
# A ConstantOfShape with a constant shape may not ask for more bytes than this (also
# the largest result onnxruntime folds at load).
MAX_CONSTANT_OF_SHAPE_BYTES = 1 << 30

_BITS: dict[int, int] = {
    TensorProto.FLOAT: 32,
    TensorProto.UINT8: 8,
    TensorProto.INT8: 8,
    TensorProto.UINT16: 16,
    TensorProto.INT16: 16,
    TensorProto.INT32: 32,
    TensorProto.INT64: 64,
    TensorProto.BOOL: 8,
    TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64,
    TensorProto.UINT32: 32,
    TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64,
    TensorProto.COMPLEX128: 128,
    TensorProto.BFLOAT16: 16,
}
for _name, _bits in (
    ("FLOAT8E4M3FN", 8),
    ("FLOAT8E4M3FNUZ", 8),
    ("FLOAT8E5M2", 8),
    ("FLOAT8E5M2FNUZ", 8),
    ("UINT4", 4),
    ("INT4", 4),
    ("FLOAT4E2M1", 4),
    ("UINT2", 2),
    ("INT2", 2),
    ("FLOAT8E8M0", 8),
):
    if hasattr(TensorProto, _name):
        _BITS[getattr(TensorProto, _name)] = _bits

# Which typed field holds each data type's values, and how many per element.
_FIELD: dict[int, tuple[str, int]] = {
    TensorProto.FLOAT: ("float_data", 1),
    TensorProto.COMPLEX64: ("float_data", 2),
    TensorProto.DOUBLE: ("double_data", 1),
    TensorProto.COMPLEX128: ("double_data", 2),
    TensorProto.INT64: ("int64_data", 1),
    TensorProto.UINT32: ("uint64_data", 1),
    TensorProto.UINT64: ("uint64_data", 1),
    TensorProto.STRING: ("string_data", 1),
}
_DATA_FIELDS = (
    "raw_data",
    "float_data",
    "int32_data",
    "string_data",
    "int64_data",
    "double_data",
    "uint64_data",
)


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for g in attr.graphs:
                yield from _graphs(g)


def _where(tensor: TensorProto, place: str) -> str:
    return f"{place} {safe_text(tensor.name)!r}" if tensor.name else place


def check_tensor(tensor: TensorProto, place: str, external_ok: bool = True) -> None:
    """A tensor's type, shape and data agree, and its size is sane."""
    what = _where(tensor, place)
    if tensor.data_type not in _BITS and tensor.data_type != TensorProto.STRING:
        raise InvalidModelError(f"{what} has an unknown data type ({tensor.data_type})")
    count = 1
    for d in tensor.dims:
        if d < 0:
            raise InvalidModelError(f"{what} has a negative dimension ({d})")
        count *= d
        if count > MAX_ELEMENTS:
            raise ResourceError(
                f"{what} declares more than {MAX_ELEMENTS:,} elements "
                f"(shape {'x'.join(str(x) for x in tensor.dims)})"
            )
    fields = [f for f in _DATA_FIELDS if len(getattr(tensor, f))]
    external = tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0
    if len(fields) + external > 1:
        raise InvalidModelError(f"{what} has its data in more than one place")
    if external:
        if not external_ok:
            raise InvalidModelError(f"{what} keeps its data in another file; only initializers may")
        entries = {e.key: e.value for e in tensor.external_data}
        if "location" not in entries:
            raise InvalidModelError(f"{what} has external data without a location")
        for key in ("offset", "length"):
            if key in entries and (not entries[key].isdigit()):
                raise InvalidModelError(f"{what} has an invalid external data {key}")
        return
    if tensor.data_type == TensorProto.STRING:
        have = len(tensor.string_data)
        if have != count:
            raise InvalidModelError(f"{what} holds {have} strings, its shape needs {count}")
        return
    if "raw_data" in fields:
        need = math.ceil(count * _BITS[tensor.data_type] / 8)
        if len(tensor.raw_data) != need:
            raise InvalidModelError(
                f"{what} holds {len(tensor.raw_data)} bytes of data, its shape needs {need}"
            )
        return
    if not fields:
        if count:
            raise InvalidModelError(f"{what} has no data for its {count} elements")
        return
    field, per = _FIELD.get(tensor.data_type, ("int32_data", 1))
    if fields != [field]:
        raise InvalidModelError(f"{what} stores its values in the wrong field ({fields[0]})")
    values = len(getattr(tensor, field))
    need = count * per
    if _BITS[tensor.data_type] < 8:
        return  # sub-byte types pack several values per int32: leave it to onnx
    if values != need:
        raise InvalidModelError(f"{what} holds {values} values, its shape needs {need}")


def _attribute_tensors(attr: AttributeProto) -> Iterator[TensorProto]:
    if attr.type == AttributeProto.TENSOR:
        yield attr.t
    yield from attr.tensors
    if attr.type == AttributeProto.SPARSE_TENSOR:
        yield attr.sparse_tensor.values
        yield attr.sparse_tensor.indices
    for s in attr.sparse_tensors:
        yield s.values
        yield s.indices


def _constant_size(graph: onnx.GraphProto, name: str) -> int | None:
    for t in graph.initializer:
        if t.name == name and t.data_type == TensorProto.INT64 and len(t.dims) == 1:
            values = onnx.numpy_helper.to_array(t)
            return int(abs(values).prod()) if values.size else 1
    return None


def _repeated(field: Any) -> bool:
    # protobuf >= 6 has is_repeated; older versions only the label
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _text_fields_are_utf8(message: Any) -> None:
    """Every string field holds text: protobuf hands invalid UTF-8 back as bytes, which
    would fail much later, when the model is written."""
    from google.protobuf.descriptor import FieldDescriptor

    stack = [message]
    while stack:
        msg = stack.pop()
        for field, value in msg.ListFields():
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if _repeated(field):
                    stack.extend(value)
                else:
                    stack.append(value)
            elif field.type == FieldDescriptor.TYPE_STRING:
                values = value if _repeated(field) else [value]
                if any(isinstance(v, bytes) for v in values):
                    raise InvalidModelError(f"the model has a {field.name} that is not valid UTF-8")


def check_model(model: onnx.ModelProto) -> None:
    """Everything a file can lie about, checked before the tool allocates or runs anything."""
    _text_fields_are_utf8(model)
    if model.ir_version < 3 or model.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"IR version {model.ir_version} is outside what this onnx supports "
            f"(3..{onnx.IR_VERSION})"
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise UnsupportedModelError(
                f"opset {opset.version} is newer than this onnx supports ({newest})"
            )
    graphs = [*_graphs(model.graph)]
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                for t in _attribute_tensors(attr):
                    check_tensor(
                        t, "a tensor in function " + safe_text(function.name), external_ok=False
                    )
                if attr.type == AttributeProto.GRAPH:
                    graphs.extend(_graphs(attr.g))
    for graph in graphs:
        names: set[str] = set()
        for t in graph.initializer:
            if t.name in names:
                raise InvalidModelError(f"two initializers are named {safe_text(t.name)!r}")
            names.add(t.name)
            check_tensor(t, "initializer")
        for sparse in graph.sparse_initializer:
            check_tensor(sparse.values, "sparse initializer")
            check_tensor(sparse.indices, "sparse initializer indices")
            count = math.prod(sparse.dims) if sparse.dims else 1
            if any(d < 0 for d in sparse.dims) or count > MAX_ELEMENTS:
                raise ResourceError(
                    f"sparse initializer {safe_text(sparse.values.name)!r} has an absurd shape"
                )
        for node in graph.node:
            for attr in node.attribute:
                for t in _attribute_tensors(attr):
                    check_tensor(
                        t,
                        f"a tensor of node {safe_text(node.name or node.op_type)!r}",
                        external_ok=False,
                    )
            if node.domain in ("", "ai.onnx") and node.op_type == "Loop":
                trip = node.input[0] if len(node.input) > 0 else ""
                cond = node.input[1] if len(node.input) > 1 else ""
                if not trip and not cond:
                    raise InvalidModelError(
                        f"Loop {safe_text(node.name)!r} has neither a trip count nor a "
                        "condition: it never ends"
                    )
            if node.domain in ("", "ai.onnx") and node.op_type == "ConstantOfShape" and node.input:
                size = _constant_size(graph, node.input[0])
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                itemsize = _BITS.get(value.data_type, 32) // 8 if value is not None else 4
                if size is not None and size * max(itemsize, 1) > MAX_CONSTANT_OF_SHAPE_BYTES:
                    raise ResourceError(
                        f"ConstantOfShape {safe_text(node.name)!r} asks for {size:,} elements"
                    )
