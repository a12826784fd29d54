"""How quantized weights are written so that onnxruntime runs them.

An encoding turns integer codes and scales into initializers plus a few standard
nodes that compute the float weight, and recognises its own pattern in a model
(for ``inspect``). Encodings are small strategies; the quantize pass picks one per
tensor, so new packings can be added without touching the passes.

``Int8CastMul`` (the default): ``W = Mul(Cast(W_quantized: int8, to=float), W_scale)``.
Both inputs are initializers, so onnxruntime folds the two nodes into a plain float
``W`` when it creates a session: the file holds one byte per weight, and inference
runs the original float kernels at the original speed (``DequantizeLinear`` would
not be folded; onnxruntime keeps it and fuses it into slower or less exact kernels).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from prunequant_cli.selection import dims

# Tensor metadata written next to the codes, so `inspect` can tell the bit width.
META_BITS = "prunequant.bits"
META_AXIS = "prunequant.axis"


@dataclass(frozen=True)
class EncodedWeight:
    """A weight found in a model in encoded form."""

    name: str
    encoding: str
    bits: int | None
    axis: int | None
    shape: tuple[int, ...]
    codes: ir.Value
    scale: ir.Value

    @property
    def stored_bytes(self) -> int:
        return sum(_nbytes(v) for v in (self.codes, self.scale))


def _nbytes(value: ir.Value) -> int:
    tensor = value.const_value
    return 0 if tensor is None else int(tensor.nbytes)


class NameAuthority:
    """Hands out value and node names that do not clash with any in the model."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        for graph in model.graphs():
            for v in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
                if v.name:
                    self._taken.add(v.name)
            for node in graph:
                if node.name:
                    self._taken.add(node.name)
                self._taken.update(o.name for o in node.outputs if o.name)

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self._taken:
            name, n = f"{base}_{n}", n + 1
        self._taken.add(name)
        return name


def _prepend(graph: ir.Graph, nodes: Iterable[ir.Node]) -> None:
    nodes = list(nodes)
    if len(graph):
        graph.insert_before(graph[0], nodes)
    else:
        graph.extend(nodes)


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.Tensor(array, name=name)
    value = ir.Value(name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype))
    value.const_value = tensor
    graph.register_initializer(value)
    return value


class Int8CastMul:
    """int8 codes, decoded by Cast and a per-channel Mul that onnxruntime folds at load."""

    name = "int8_cast_mul"
    min_opset = 7  # numpy-style broadcasting in Mul

    def encode(
        self,
        graph: ir.Graph,
        weight: ir.Value,
        codes: np.ndarray,
        scale: np.ndarray,
        bits: int,
        axis: int,
        names: NameAuthority,
    ) -> EncodedWeight:
        """Replace the float initializer ``weight`` in ``graph`` by its encoded form.

        The decoded value takes the weight's name, so consumers (also inside
        subgraphs) keep reading the same name; the float initializer is removed.
        """
        name = weight.name or names.fresh("weight")
        dtype = weight.const_value.dtype if weight.const_value is not None else ir.DataType.FLOAT
        shape = tuple(int(d) for d in codes.shape)
        codes_v = _initializer(graph, names.fresh(f"{name}_quantized"), codes)
        codes_v.const_value.metadata_props.update(  # type: ignore[union-attr]
            {META_BITS: str(bits), META_AXIS: str(axis)}
        )
        scale_v = _initializer(graph, names.fresh(f"{name}_scale"), scale)
        cast = ir.Node(
            "",
            "Cast",
            [codes_v],
            attributes=[ir.AttrInt64("to", dtype.value)],
            outputs=[ir.Value(name=names.fresh(f"{name}_cast"))],
            name=names.fresh(f"{name}_dequantize_cast"),
        )
        decoded = ir.Value(name=names.fresh(f"{name}_decoded"))
        mul = ir.Node(
            "",
            "Mul",
            [cast.outputs[0], scale_v],
            outputs=[decoded],
            name=names.fresh(f"{name}_dequantize_mul"),
        )
        cast.outputs[0].type = ir.TensorType(dtype)
        cast.outputs[0].shape = ir.Shape(shape)
        decoded.type = ir.TensorType(dtype)
        decoded.shape = ir.Shape(shape)
        _prepend(graph, (cast, mul))
        weight.replace_all_uses_with(decoded)
        graph.initializers.pop(name)
        decoded.name = name
        return EncodedWeight(name, self.name, bits, axis, shape, codes_v, scale_v)

    def recognize(self, value: ir.Value) -> EncodedWeight | None:
        """The encoded weight that ``value`` is the decoded form of, if it is one."""
        mul = value.producer()
        if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx"):
            return None
        if len(mul.inputs) != 2 or mul.inputs[0] is None or mul.inputs[1] is None:
            return None
        cast = mul.inputs[0].producer()
        scale_v = mul.inputs[1]
        if cast is None or cast.op_type != "Cast" or scale_v.const_value is None:
            return None
        codes_v = cast.inputs[0]
        if codes_v is None or codes_v.const_value is None:
            return None
        if codes_v.const_value.dtype != ir.DataType.INT8:
            return None
        meta = codes_v.const_value.metadata_props
        bits = int(meta[META_BITS]) if meta.get(META_BITS, "").isdigit() else None
        axis = int(meta[META_AXIS]) if meta.get(META_AXIS, "").isdigit() else None
        shape = dims(codes_v.const_value)
        return EncodedWeight(value.name or "", self.name, bits, axis, shape, codes_v, scale_v)


#: The encodings that `inspect` recognises, and the default one for the quantize pass.
ENCODINGS = (Int8CastMul(),)
DEFAULT_ENCODING = ENCODINGS[0]


def describe_encoding(encoding: str, bits: int | None) -> str:
    """Short label of an encoding for tables: 'int8 ×scale (4-bit codes)', 'float'."""
    label = {"int8_cast_mul": "int8 ×scale"}.get(encoding, encoding)
    return label if bits is None else f"{label} ({bits}-bit codes)"


def recognize(value: ir.Value) -> EncodedWeight | None:
    """The encoded weight behind ``value``, by any known encoding."""
    for enc in ENCODINGS:
        found = enc.recognize(value)
        if found is not None:
            return found
    return None
