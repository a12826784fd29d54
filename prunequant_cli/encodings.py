"""How compressed weights are written so that onnxruntime runs them.

An encoding turns a :class:`Payload` (integer codes and scales, codebook indices,
or float16 values) into initializers plus a few standard nodes that compute the
float weight. Almost all of them only use ops whose inputs are all initializers,
so onnxruntime folds them into a plain float weight when it creates a session:
the file holds the small form, inference runs the original float kernels at the
original speed. (``DequantizeLinear`` is the exception, kept for
``--keep-quantized``: onnxruntime does not fold it, it fuses it into low-bit
kernels.)

| encoding          | payload  | opset | decode                                             |
| ----------------- | -------- | ----- | -------------------------------------------------- |
| int8              | uniform  | 7     | Mul(Cast(int8 codes), scale) (or scale after MatMul)|
| int4 / int2       | uniform  | 21/25 | Mul(Cast(INT4/INT2 codes), scale)                  |
| packed4 / packed2 | uniform  | 11    | uint8 planes split by Div/Mod, Concat, Cast, Sub, Mul |
| packed6           | uniform  | 11    | a 4-bit and a 2-bit plane, 4 * high + low, Sub, Mul |
| sparse / sparse4  | uniform  | 11    | bitmask planes + CumSum index into the non-zeros   |
| codebook          | codebook | 7     | Gather(codebook, Cast(uint8 indices))              |
| codebook4 / 2     | codebook | 21/25 | Gather(codebook, Cast(UINT4/UINT2 indices))        |
| codebook-packed4/2| codebook | 11    | uint8 planes unpacked, then Gather                 |
| float16           | float16  | 7     | Cast(float16 values)                               |
| sparse-float      | float    | 11    | bitmask + Gather of the non-zero float values      |
| coordinates(-float)| uniform/float | 11 | gaps between non-zeros, CumSum, ScatterND          |
| dq-int8 / dq-int4 | uniform  | 13/21 | DequantizeLinear, kept in the session              |
| dq-int4-blocked   | uniform  | 21    | DequantizeLinear with block_size (MatMul weights)  |

Asymmetric codes (a zero point per channel) are written by int8, int4/int2,
packed4/2 and the bitmask forms, with a ``Sub(codes, Cast(zero point))`` before
the Mul; their encoding is named with a ``-zp`` suffix. A zero weight has code z,
not 0: the bitmask marks the codes that differ from z, and ``Where(mask, ..., 0)``
restores the exact zeros. Coordinates (which store only the gaps between
non-zero codes) take symmetric codes only.

A large MatMul weight with symmetric per-column int8/int4/int2 codes (at least
SCALE_AFTER_MIN entries, read only by MatMuls as their B) is written as Cast(codes)
alone, and each of those MatMuls' outputs is multiplied by the scales: x @ (q * s) =
(x @ q) * s. onnxruntime folds a Cast and then a Mul at load holding both float results
until its folding pass ends; one Cast holds one, so the session peaks at what the
original's does. The metadata then names the scale initializer (``scale_after``).

The main initializer of each encoded weight carries metadata (key ``prunequant``,
JSON) naming the encoding, the weight, its bit width and axis, which ``inspect`` reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from prunequant_cli.quantization import pack_planar

# Metadata on the main initializer of an encoded weight: JSON with its encoding,
# weight name, bits and axis. Shared decoder constants carry META_SHARED.
META_KEY = "prunequant"
META_SHARED = "prunequant.shared"
# Added to the encoding name of asymmetric codes: "int8-zp", "int4-zp", "packed4-zp".
ZERO_POINT_SUFFIX = "-zp"


def read_meta(tensor: ir.TensorProtocol | None) -> dict[str, object] | None:
    """The encoding metadata of an initializer, if it is the main one of an encoded weight."""
    raw = None if tensor is None else tensor.metadata_props.get(META_KEY)
    if not raw:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("weight"), str) else None


@dataclass
class Payload:
    """A compressed weight before it is written: exactly one of the three forms."""

    name: str
    shape: tuple[int, ...]
    dtype: ir.DataType
    axis: int
    bits: int
    codes: np.ndarray | None = None  # uniform: signed int8 codes in [-qmax, qmax]
    scale: np.ndarray | None = None  # uniform: per-channel, broadcastable, weight dtype
    indices: np.ndarray | None = None  # codebook: uint8 index of each weight
    codebook: np.ndarray | None = None  # codebook: the shared values, weight dtype
    half: np.ndarray | None = None  # float16 storage
    values: np.ndarray | None = None  # float: pruned but not quantized
    block_size: int | None = None  # uniform: one scale per block of this many entries...
    block_axis: int = 0  # ...along this axis; the scale then has the weight's rank
    zero_point: np.ndarray | None = None  # uniform, asymmetric: int8 code of 0 per channel
    rounding: str = "nearest"  # how the codes were chosen: "nearest" or "gptq"

    @property
    def kind(self) -> str:
        if self.codes is not None:
            return "uniform"
        if self.indices is not None:
            return "codebook"
        if self.values is not None:
            return "float"
        return "float16"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def decode(self, rows: slice | None = None) -> np.ndarray:
        """The float weight the payload stands for, computed in numpy (the reference); with
        ``rows``, only those entries of its first axis."""

        def part(a: np.ndarray) -> np.ndarray:  # an array's rows, if it has the weight's
            return a if rows is None or a.ndim == 0 or a.shape[0] == 1 else a[rows]

        np_dtype = self.dtype.numpy()
        if self.codes is not None:
            assert self.scale is not None
            scale = self.scale.astype(np_dtype)
            if self.block_size:
                scale = np.repeat(scale, self.block_size, axis=self.block_axis)
            floats = part(self.codes).astype(np_dtype)
            if self.zero_point is not None:
                floats -= part(self.zero_point).astype(np_dtype)
            floats *= part(scale)
            return floats
        if self.indices is not None:
            assert self.codebook is not None
            return self.codebook.astype(np_dtype)[part(self.indices).astype(np.int64)]
        if self.values is not None:
            return part(self.values).astype(np_dtype)
        assert self.half is not None
        return part(self.half).astype(np_dtype)

    def zeros(self) -> int:
        """How many weights decode to exactly zero."""
        if self.codes is not None:
            nonzero = self.codes if self.zero_point is None else self.codes != self.zero_point
            return int(self.size - np.count_nonzero(nonzero))
        if self.indices is not None:
            assert self.codebook is not None
            zero_entries = np.flatnonzero(self.codebook == 0)
            return int(np.isin(self.indices, zero_entries).sum())
        dense = self.values if self.values is not None else self.half
        assert dense is not None
        return int(self.size - np.count_nonzero(dense))


class NameAuthority:
    """Hands out value names that do not clash with any in the model."""

    def __init__(self, model: ir.Model) -> None:
        self._taken: set[str] = set()
        self._next: dict[str, int] = {}
        for graph in model.graphs():
            for v in (*graph.inputs, *graph.outputs, *graph.initializers.values()):
                if v.name:
                    self._taken.add(v.name)
            for node in graph:
                if node.name:
                    self._taken.add(node.name)
                self._taken.update(o.name for o in node.outputs if o.name)

    def fresh(self, base: str, numbered: bool = False) -> str:
        """``base`` itself if free, else ``base_1``, ``base_2``... (``numbered``: ``base0``...)."""
        n = self._next.get(base, 0)
        name = f"{base}{n}" if numbered else base
        while name in self._taken:
            n += 1
            name = f"{base}{n}" if numbered else f"{base}_{n}"
        self._next[base] = n
        self._taken.add(name)
        return name


@dataclass
class SharedConstants:
    """Small constants (scalars, lookup tables) shared by every decoder in a graph."""

    names: NameAuthority
    opset: int
    _cache: dict[tuple[int, str], ir.Value] = field(default_factory=dict)

    def has(self, graph: ir.Graph, key: str) -> bool:
        return (id(graph), key) in self._cache

    def get(self, graph: ir.Graph, key: str, array: np.ndarray) -> ir.Value:
        slot = (id(graph), key)
        if slot not in self._cache:
            value = _initializer(graph, self.names.fresh(f"pq_{key}"), array)
            value.const_value.metadata_props[META_SHARED] = "1"  # type: ignore[union-attr]
            self._cache[slot] = value
        return self._cache[slot]


def _initializer(graph: ir.Graph, name: str, array: np.ndarray | ir.TensorProtocol) -> ir.Value:
    tensor = array if isinstance(array, ir.TensorProtocol) else ir.Tensor(array, name=name)
    value = ir.Value(
        name=name, shape=ir.Shape(tensor.shape.numpy()), type=ir.TensorType(tensor.dtype)
    )
    value.const_value = tensor
    graph.register_initializer(value)
    return value


class DecodeBuilder:
    """Writes one weight's decoder into its graph, then puts it in the weight's place."""

    def __init__(
        self, graph: ir.Graph, shared: SharedConstants, payload: Payload, dry: bool = False
    ) -> None:
        self.graph = graph
        self.shared = shared
        self.names = shared.names
        self.payload = payload
        self.nodes: list[ir.Node] = []
        self.stored: list[ir.Value] = []
        # A dry run builds nothing into the graph; it adds up what the file would gain.
        self.dry = dry
        self.bytes = 0
        self._dry_shared: set[str] = set()

    def init(self, suffix: str, array: np.ndarray | ir.TensorProtocol) -> ir.Value:
        name = f"{self.payload.name}.{suffix}"
        if self.dry:
            tensor = array if isinstance(array, ir.TensorProtocol) else ir.Tensor(array)
            self.bytes += int(tensor.nbytes) + len(name) + 8 + 3 * len(tensor.shape)
            value = ir.Value(name=name, const_value=tensor)
        else:
            value = _initializer(self.graph, self.names.fresh(name), array)
        self.stored.append(value)
        return value

    def const(self, key: str, array: np.ndarray) -> ir.Value:
        if not self.dry:
            return self.shared.get(self.graph, key, array)
        if not self.shared.has(self.graph, key) and key not in self._dry_shared:
            self._dry_shared.add(key)
            self.bytes += int(array.nbytes) + len(key) + 40
        return ir.Value(name=f"pq_{key}", const_value=ir.Tensor(array))

    def node(self, op: str, inputs: Sequence[ir.Value], **attrs: Any) -> ir.Value:
        # Decoder intermediates get short names: in a small model their bytes count.
        name = "pq00" if self.dry else self.names.fresh("pq", numbered=True)
        out = ir.Value(name=name)
        attributes = [ir.convenience.convert_attribute(k, v) for k, v in attrs.items()]
        node = ir.Node("", op, list(inputs), attributes=attributes, outputs=[out])
        if self.dry:
            self.bytes += ir.serde.serialize_node(node).ByteSize() + 2
        else:
            self.nodes.append(node)
        return out

    def finish(
        self, weight: ir.Value, decoded: ir.Value, encoding: str, **meta: object
    ) -> EncodedWeight:
        """Tag the main initializer, insert the nodes, and replace the float weight."""
        p = self.payload
        main = self.stored[0].const_value
        assert main is not None
        if p.zero_point is not None:
            encoding += ZERO_POINT_SUFFIX
        main.metadata_props[META_KEY] = json.dumps(
            {"encoding": encoding, "weight": p.name, "bits": p.bits, "axis": p.axis, **meta},
            separators=(",", ":"),
        )
        if len(self.graph):
            self.graph.insert_before(self.graph[0], self.nodes)
        else:
            self.graph.extend(self.nodes)
        for node in self.nodes:
            node.name = ""  # the graph names inserted nodes; decoder nodes need none
        weight.replace_all_uses_with(decoded)
        self.graph.initializers.pop(p.name)
        decoded.name = p.name
        decoded.type = ir.TensorType(p.dtype)
        decoded.shape = ir.Shape(p.shape)
        stored = sum(int(v.const_value.nbytes) for v in self.stored if v.const_value is not None)
        return EncodedWeight(p.name, encoding, p.bits, p.axis, p.shape, stored)

    def finish_scaled_after(
        self, weight: ir.Value, codes: ir.Value, matmuls: list[ir.Node], encoding: str
    ) -> EncodedWeight:
        """Replace the weight by its codes (cast to float) and multiply the outputs of the
        ``matmuls`` that read it by the per-column scales instead: x @ (q * s) = (x @ q) * s.
        onnxruntime folds one Cast per weight at load, not a Cast and then a Mul, so a
        session holds one float copy of the weight while it is created, not two."""
        p = self.payload
        assert p.scale is not None
        scale_init = self.init("s", p.scale.reshape(-1))  # [N]: any rank of output
        scale = scale_init
        if p.scale.dtype != p.dtype.numpy():
            scale = self.node("Cast", [scale], to=p.dtype.value)
        encoded = self.finish(weight, codes, encoding, scale_after=scale_init.name)
        for mm in matmuls:
            out = mm.outputs[0]
            uses = list(out.uses())
            name = out.name
            out.name = self.names.fresh("pq", numbered=True)
            scaled = ir.Value(name=name, type=out.type, shape=out.shape)
            self.graph.insert_after(mm, [ir.Node("", "Mul", [out, scale], outputs=[scaled])])
            for node, index in uses:
                node.replace_input_with(index, scaled)
            outputs = self.graph.outputs
            for i, o in enumerate(outputs):
                if o is out:
                    outputs[i] = scaled
        return encoded


# A MatMul weight of at least this many entries has its scales applied after the MatMul
# (DecodeBuilder.finish_scaled_after): there the Mul on the output costs little beside the
# MatMul, and folding Mul(Cast(codes), scale) at load would hold a second float copy.
SCALE_AFTER_MIN = 1 << 18


def _matmuls_to_scale(graph: ir.Graph, weight: ir.Value, p: Payload) -> list[ir.Node]:
    """The MatMul nodes whose outputs can take ``p``'s scales instead of the weight: all
    of the weight's readers, each a MatMul reading it as B in this graph, with symmetric
    per-column codes of a large enough 2-D float32/float64 weight (in float16, x @ codes,
    up to 127 times x @ W, may overflow); else none."""
    if (
        p.codes is None
        or p.dtype not in (ir.DataType.FLOAT, ir.DataType.DOUBLE)  # x @ q may overflow float16
        or p.zero_point is not None
        or p.block_size
        or len(p.shape) != 2
        or p.size < SCALE_AFTER_MIN
        or p.scale is None
        or p.scale.shape != (1, p.shape[1])
        or weight.is_graph_output()
    ):
        return []
    uses = list(weight.uses())
    for node, index in uses:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or index != 1:
            return []
        if node.graph is not graph:
            return []
    return list(dict.fromkeys(node for node, _ in uses))


@dataclass(frozen=True)
class EncodedWeight:
    """A weight written (or found) in encoded form."""

    name: str
    encoding: str
    bits: int | None
    axis: int | None
    shape: tuple[int, ...]
    stored_bytes: int
    parts: tuple[str, ...] = ()


def _unpack_planes(
    b: DecodeBuilder, packed: ir.Value, width: int, shape: tuple[int, ...] | None = None
) -> ir.Value:
    """Decoder of :func:`pack_planar`: uint8 planes -> uint8 values of ``shape``.

    ``shape`` defaults to the weight's; a flat ``(count,)`` shape gives flat values.
    """
    shape = b.payload.shape if shape is None else shape
    k = 8 // width
    # Div and Mod take uint8 from opset 14; before that they work on int32.
    source: ir.Value = packed
    dtype: type = np.uint8
    prefix = "u8"
    if b.shared.opset < 14:
        source = b.node("Cast", [packed], to=ir.DataType.INT32.value)
        dtype, prefix = np.int32, "i32"
    planes = []
    for i in range(k):
        x = source
        if i:
            step = 1 << (i * width)
            x = b.node("Div", [x, b.const(f"{prefix}_{step}", np.array(step, dtype))])
        if i < k - 1:
            x = b.node("Mod", [x, b.const(f"{prefix}_{1 << width}", np.array(1 << width, dtype))])
        planes.append(x)
    values = b.node("Concat", planes, axis=0)
    if shape[0] % k == 0 and _dims(packed) == (shape[0] // k, *shape[1:]):
        return values  # planes cut along axis 0: the Concat has the values' shape
    size = math.prod(shape)
    if k * _dims(packed)[0] != size:
        count = b.init("count", np.array([size], np.int64))
        values = b.node("Slice", [values, b.const("i64_0", np.array([0], np.int64)), count])
    return values if len(shape) == 1 else _reshape(b, values)


def _scaled(b: DecodeBuilder, floats: ir.Value) -> ir.Value:
    """``floats`` (the codes as the weight's dtype) times the scales.

    Per-channel scales broadcast directly. Per-block scales [.., n/k, ..] do after a
    Reshape that splits the block axis into [n/k, k]; a second Reshape restores it.
    """
    p = b.payload
    assert p.scale is not None
    scale_array = p.scale
    if p.block_size:
        a = p.block_axis
        scale_array = p.scale.reshape(*p.scale.shape[: a + 1], 1, *p.scale.shape[a + 1 :])
    scale = b.init("s", scale_array)
    if p.scale.dtype != p.dtype.numpy():
        scale = b.node("Cast", [scale], to=p.dtype.value)
    if not p.block_size:
        return b.node("Mul", [floats, scale])
    a, k = p.block_axis, p.block_size
    split = (*p.shape[:a], p.shape[a] // k, k, *p.shape[a + 1 :])
    floats = b.node("Reshape", [floats, b.init("blocks", np.array(split, np.int64))])
    return _reshape(b, b.node("Mul", [floats, scale]))


def _centered(b: DecodeBuilder, floats: ir.Value) -> ir.Value:
    """``floats`` minus the per-channel zero point, when the codes have one."""
    p = b.payload
    if p.zero_point is None:
        return floats
    zero = b.node("Cast", [b.init("z", p.zero_point)], to=p.dtype.value)
    return b.node("Sub", [floats, zero])


def _dims(value: ir.Value) -> tuple[int, ...]:
    assert value.const_value is not None
    return tuple(int(d) for d in value.const_value.shape.numpy())


def _reshape(b: DecodeBuilder, x: ir.Value) -> ir.Value:
    return b.node("Reshape", [x, b.init("shape", np.array(b.payload.shape, np.int64))])


class Encoding:
    """One way of writing a payload. Subclasses set the class attributes."""

    name = ""
    kind = "uniform"
    min_opset = 7
    max_bits = 8
    blocks = False  # can write payloads with per-block scales
    blocks_only = False  # writes only those
    zero_points = False  # can write asymmetric codes (a zero point per channel)

    def applies(self, p: Payload, opset: int) -> bool:
        blocked = bool(p.block_size)
        if (blocked and not self.blocks) or (self.blocks_only and not blocked):
            return False
        if p.zero_point is not None and not self.zero_points:
            return False
        return p.kind == self.kind and opset >= self.min_opset and p.bits <= self.max_bits

    def worth_trying(self, p: Payload) -> bool:
        """A cheap check that this encoding could beat the dense ones (default: yes)."""
        return True

    def cost(self, graph: ir.Graph, p: Payload, shared: SharedConstants) -> int:
        """Bytes this encoding would add to the file, measured by a dry-run build."""
        b = DecodeBuilder(graph, shared, p, dry=True)
        self.build(b)
        return b.bytes

    def build(self, b: DecodeBuilder) -> ir.Value:
        raise NotImplementedError

    def codes(self, b: DecodeBuilder) -> ir.Value | None:
        """The codes alone cast to the weight's dtype, for encodings whose decoder is
        ``Mul(Cast(codes), scale)``; None for the others."""
        return None

    def encode(
        self, graph: ir.Graph, weight: ir.Value, p: Payload, shared: SharedConstants
    ) -> EncodedWeight:
        b = DecodeBuilder(graph, shared, p)
        matmuls = _matmuls_to_scale(graph, weight, p)
        codes = self.codes(b) if matmuls else None
        if codes is not None:
            return b.finish_scaled_after(weight, codes, matmuls, self.name)
        return b.finish(weight, self.build(b), self.name)


class Int8(Encoding):
    name, min_opset, blocks, zero_points = "int8", 7, True, True

    def codes(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        return b.node("Cast", [b.init("q", p.codes)], to=p.dtype.value)  # type: ignore[arg-type]

    def build(self, b: DecodeBuilder) -> ir.Value:
        return _scaled(b, _centered(b, self.codes(b)))


class NativeInt(Encoding):
    """INT4/INT2 initializers (two or four codes per byte), cast at load."""

    blocks = zero_points = True

    def __init__(self, bits: int) -> None:
        self.max_bits = bits
        self.name = f"int{bits}"
        self.min_opset = 21 if bits == 4 else 25
        self._np = ml_dtypes.int4 if bits == 4 else ml_dtypes.int2

    def codes(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        codes = b.init("q", p.codes.astype(self._np))  # type: ignore[union-attr]
        return b.node("Cast", [codes], to=p.dtype.value)

    def build(self, b: DecodeBuilder) -> ir.Value:
        return _scaled(b, _centered(b, self.codes(b)))


class PackedUint(Encoding):
    """Offset codes packed in uint8 planes, unpacked with integer Div/Mod (any opset >= 11)."""

    min_opset, blocks, zero_points = 11, True, True

    def __init__(self, width: int) -> None:
        self.width = width
        self.max_bits = width
        self.name = f"packed{width}"

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        offset = 1 << (self.width - 1)
        unsigned = (p.codes.astype(np.int16) + offset).astype(np.uint8)  # type: ignore[union-attr]
        packed = b.init("q", pack_planar(unsigned, self.width))
        floats = b.node("Cast", [_unpack_planes(b, packed, self.width)], to=p.dtype.value)
        shift = b.const(f"{offset}_{p.dtype.name.lower()}", np.array(offset, p.dtype.numpy()))
        return _scaled(b, _centered(b, b.node("Sub", [floats, shift])))


class Packed6(Encoding):
    """5- and 6-bit codes in 6 bits (0.75 bytes a code): the offset codes' high four bits
    in a 4-bit plane and their low two in a 2-bit plane, both unpacked as for packed4 and
    packed2 and recombined as 4 * high + low (any opset >= 11)."""

    name, min_opset, max_bits, blocks, zero_points = "packed6", 11, 6, True, True
    OFFSET = 32  # codes in [-32, 31] become 0..63

    def applies(self, p: Payload, opset: int) -> bool:
        return super().applies(p, opset) and p.bits >= 5

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        unsigned = (p.codes.astype(np.int16) + self.OFFSET).astype(np.uint8)  # type: ignore[union-attr]
        high = b.init("q", pack_planar(unsigned >> 2, 4))
        low = b.init("q2", pack_planar(unsigned & 3, 2))
        dtype = p.dtype.numpy()
        high_f = b.node("Cast", [_unpack_planes(b, high, 4)], to=p.dtype.value)
        low_f = b.node("Cast", [_unpack_planes(b, low, 2)], to=p.dtype.value)
        four = b.const(f"4_{p.dtype.name.lower()}", np.array(4, dtype))
        floats = b.node("Add", [b.node("Mul", [high_f, four]), low_f])
        shift = b.const(f"{self.OFFSET}_{p.dtype.name.lower()}", np.array(self.OFFSET, dtype))
        return _scaled(b, _centered(b, b.node("Sub", [floats, shift])))


# Row v holds the four bits of nibble v, lowest first: Gather(table, nibbles) unpacks a mask.
_NIBBLE_BITS = ((np.arange(16)[:, None] >> np.arange(4)) & 1).astype(np.uint8)


class SparseBitmask(Encoding):
    """A bitmask of the non-zeros plus their codes: the zeros of a pruned tensor cost one bit.

    The mask is stored as nibbles (four mask bits each) packed two per byte.
    Decode: nibbles unpacked by Div/Mod, bits = Gather(16x4 bit table, nibbles)
    flattened, the position of each non-zero is CumSum(bits) * bits, and
    codes = Gather([0, non-zero codes...], position).
    The non-zero codes are int8, or (``width`` 4 or 2) offset codes packed in planes.
    """

    min_opset, blocks, zero_points = 11, True, True

    def __init__(self, width: int) -> None:
        self.width = width
        self.max_bits = width
        self.name = "sparse" if width == 8 else f"sparse{width}"

    def worth_trying(self, p: Payload) -> bool:
        # mask (1 bit) + non-zeros (width bits) must undercut dense codes of that width
        nnz = p.size - p.zeros()
        return p.size + nnz * self.width < p.size * self.width

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        assert p.codes is not None
        flat = p.codes.reshape(-1)
        # a zero weight has code z (0 for symmetric codes): the mask marks the others
        zero_code = 0 if p.zero_point is None else p.zero_point
        nonzero = (p.codes != zero_code).reshape(-1)
        mask = _mask(b, nonzero)
        nz = np.concatenate([np.zeros(1, np.int8), flat[nonzero]])
        offset = 0
        if self.width == 8:
            values = b.init("nz", nz)
        else:
            offset = 1 << (self.width - 1)
            unsigned = (nz.astype(np.int16) + offset).astype(np.uint8)
            packed = b.init("nz", pack_planar(unsigned, self.width))
            values = _unpack_planes(b, packed, self.width, (nz.size,))
        positions, bits = _positions(b, mask)
        codes = _reshape(b, b.node("Gather", [values, positions]))
        floats = b.node("Cast", [codes], to=p.dtype.value)
        if offset:
            shift = b.const(f"{offset}_{p.dtype.name.lower()}", np.array(offset, p.dtype.numpy()))
            floats = b.node("Sub", [floats, shift])
        if p.zero_point is not None:
            # masked-out weights gathered code 0, not z: Where puts their exact zero back
            kept = _reshape(b, b.node("Cast", [bits], to=ir.DataType.BOOL.value))
            zero = b.const(f"0_{p.dtype.name.lower()}", np.array(0, p.dtype.numpy()))
            floats = b.node("Where", [kept, _centered(b, floats), zero])
        return _scaled(b, floats)


def _mask(b: DecodeBuilder, nonzero: np.ndarray) -> ir.Value:
    """The bitmask initializer: nibbles of four mask bits, packed two per byte in planes."""
    nibbles = np.zeros(-(-nonzero.size // 4) * 4, np.uint8)
    nibbles[: nonzero.size] = nonzero
    nibbles = nibbles.reshape(-1, 4) @ np.array([1, 2, 4, 8], np.uint8)
    return b.init("mask", pack_planar(nibbles.astype(np.uint8), 4))


def _positions(b: DecodeBuilder, mask: ir.Value) -> tuple[ir.Value, ir.Value]:
    """For each weight, 0 if masked out, else 1 + its rank among the non-zeros; and the
    mask bits (int32, flat)."""
    size = b.payload.size
    nibbles = -(-size // 4)
    nibble_idx = b.node(
        "Cast", [_unpack_planes(b, mask, 4, (nibbles,))], to=ir.DataType.INT32.value
    )
    bits = b.node("Gather", [b.const("nibble_bits", _NIBBLE_BITS), nibble_idx])
    bits = b.node("Reshape", [bits, b.const("i64_minus1", np.array([-1], np.int64))])
    if nibbles * 4 != size:
        count = b.init("count", np.array([size], np.int64))
        bits = b.node("Slice", [bits, b.const("i64_0", np.array([0], np.int64)), count])
    bits = b.node("Cast", [bits], to=ir.DataType.INT32.value)
    cumsum = b.node("CumSum", [bits, b.const("i32_0", np.array(0, np.int32))])
    return b.node("Mul", [cumsum, bits]), bits


class SparseFloat(Encoding):
    """Pruned float weights (no quantization): a bitmask plus the non-zero values."""

    name, kind, min_opset, max_bits = "sparse-float", "float", 11, 64

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        assert p.values is not None
        flat = p.values.reshape(-1)
        nonzero = flat != 0
        mask = _mask(b, nonzero)
        values = b.init("nz", np.concatenate([np.zeros(1, flat.dtype), flat[nonzero]]))
        return _reshape(b, b.node("Gather", [values, _positions(b, mask)[0]]))


class SparseCoordinates(Encoding):
    """Very sparse tensors: the gaps between non-zeros (uint8/16/32) plus their values.

    Decode: positions = CumSum(Cast(gaps)) - 1, then ScatterND of the values into
    ConstantOfShape zeros, all constant-foldable. Beats the bitmask once the gaps
    cost less than the mask's n/8 bytes (about 90% sparsity and beyond).
    """

    min_opset = 11

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.blocks = kind == "uniform"
        self.name = "coordinates" if kind == "uniform" else "coordinates-float"
        self.max_bits = 8 if kind == "uniform" else 64

    @staticmethod
    def _flat(p: Payload) -> np.ndarray:
        data = p.codes if p.kind == "uniform" else p.values
        assert data is not None
        return data.reshape(-1)

    def worth_trying(self, p: Payload) -> bool:
        flat = self._flat(p)
        nnz = int(np.count_nonzero(flat))
        return nnz > 0 and nnz * (1 + flat.dtype.itemsize) < p.size * flat.dtype.itemsize

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        flat = self._flat(p)
        positions = np.flatnonzero(flat)
        gaps = np.diff(positions, prepend=-1)
        gap_type = next(
            t for t in (np.uint8, np.uint16, np.uint32) if gaps.max() <= np.iinfo(t).max
        )
        gap_v = b.init("gaps", gaps.astype(gap_type))
        values = b.init("nz", flat[positions])
        idx = b.node(
            "CumSum",
            [
                b.node("Cast", [gap_v], to=ir.DataType.INT64.value),
                b.const("i64_0s", np.array(0, np.int64)),
            ],
        )
        idx = b.node("Sub", [idx, b.const("i64_1s", np.array(1, np.int64))])
        idx = b.node("Reshape", [idx, b.const("i64_minus1_1", np.array([-1, 1], np.int64))])
        zero = ir.tensor(np.zeros(1, flat.dtype))
        zeros = b.node(
            "ConstantOfShape", [b.init("count", np.array([p.size], np.int64))], value=zero
        )
        dense = _reshape(b, b.node("ScatterND", [zeros, idx, values]))
        if p.kind != "uniform":
            return dense
        return _scaled(b, b.node("Cast", [dense], to=p.dtype.value))


class SparseCodebook(Encoding):
    """A pruned tensor's codebook indices: a bitmask of the non-zeros plus their indices.

    Needs a codebook whose entry 0 is exactly 0.0 (pruned tensors get one); the
    indices of the non-zeros are packed at ``width`` bits, unsigned.
    """

    kind, min_opset = "codebook", 11

    def __init__(self, width: int) -> None:
        self.width = width
        self.max_bits = width
        self.name = f"sparse-codebook{width}"

    def applies(self, p: Payload, opset: int) -> bool:
        return super().applies(p, opset) and p.codebook is not None and p.codebook[0] == 0

    def worth_trying(self, p: Payload) -> bool:
        nnz = p.size if p.indices is None else int(np.count_nonzero(p.indices))
        return p.size + nnz * self.width < p.size * self.width

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        assert p.indices is not None and p.codebook is not None
        flat = p.indices.reshape(-1)
        nonzero = flat != 0
        mask = _mask(b, nonzero)
        nz = np.concatenate([np.zeros(1, np.uint8), flat[nonzero]])
        if self.width == 8:
            values = b.init("nz", nz)
        else:
            values = _unpack_planes(
                b, b.init("nz", pack_planar(nz, self.width)), self.width, (nz.size,)
            )
        book = b.init("codebook", p.codebook)
        idx = _reshape(b, b.node("Gather", [values, _positions(b, mask)[0]]))
        return b.node("Gather", [book, b.node("Cast", [idx], to=ir.DataType.INT32.value)])


class Codebook(Encoding):
    """Indices into a per-tensor codebook: one byte each, or packed at 4/2 bits."""

    kind = "codebook"

    def __init__(self, width: int, native: bool) -> None:
        self.width = width
        self.native = native
        self.max_bits = width
        if width == 8:
            self.name, self.min_opset = "codebook", 7
        elif native:
            self.name = f"codebook{width}"
            self.min_opset = 21 if width == 4 else 25
        else:
            self.name, self.min_opset = f"codebook-packed{width}", 11

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        assert p.indices is not None and p.codebook is not None
        if self.width == 8:
            idx = b.init("idx", p.indices)
        elif self.native:
            idx = b.init(
                "idx", p.indices.astype(ml_dtypes.uint4 if self.width == 4 else ml_dtypes.uint2)
            )
        else:
            idx = b.init("idx", pack_planar(p.indices, self.width))
        book = b.init("codebook", p.codebook)
        if not self.native and self.width < 8:
            idx = _unpack_planes(b, idx, self.width)
        return b.node("Gather", [book, b.node("Cast", [idx], to=ir.DataType.INT32.value)])


class Float16(Encoding):
    name, kind, min_opset, max_bits = "float16", "float16", 7, 16

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        return b.node("Cast", [b.init("f16", p.half)], to=p.dtype.value)  # type: ignore[arg-type]


class DequantizeLinear(Encoding):
    """Kept quantized in memory: onnxruntime fuses it into its low-bit kernels (MatMul)."""

    def __init__(self, bits: int) -> None:
        self.max_bits = bits
        self.name = f"dq-int{bits}"
        self.min_opset = 13 if bits == 8 else 21

    def applies(self, p: Payload, opset: int) -> bool:
        return super().applies(p, opset) and p.dtype == ir.DataType.FLOAT

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        assert p.codes is not None and p.scale is not None
        codes = p.codes if self.max_bits == 8 else p.codes.astype(ml_dtypes.int4)
        q = b.init("q", codes)
        scale = b.init("s", p.scale.reshape(-1).astype(np.float32))
        axis = p.axis if len(p.shape) > 1 else 0
        return b.node("DequantizeLinear", [q, scale], axis=axis)


class DequantizeLinearBlocked(DequantizeLinear):
    """int4 codes with one scale per block of input rows: what MatMulNBits runs natively."""

    blocks = blocks_only = True

    def __init__(self) -> None:
        super().__init__(4)
        self.name = "dq-int4-blocked"

    def applies(self, p: Payload, opset: int) -> bool:
        return super().applies(p, opset) and p.block_axis == 0

    def build(self, b: DecodeBuilder) -> ir.Value:
        p = b.payload
        assert p.codes is not None and p.scale is not None and p.block_size
        q = b.init("q", p.codes.astype(ml_dtypes.int4))
        scale = b.init("s", p.scale.astype(np.float32))
        return b.node("DequantizeLinear", [q, scale], axis=0, block_size=p.block_size)


UNIFORM = (
    Int8(),
    NativeInt(4),
    NativeInt(2),
    PackedUint(4),
    PackedUint(2),
    Packed6(),
    SparseBitmask(8),
    SparseBitmask(4),
    SparseBitmask(2),
    SparseCoordinates("uniform"),
)
CODEBOOK_DENSE = (
    Codebook(8, False),
    Codebook(4, True),
    Codebook(2, True),
    Codebook(4, False),
    Codebook(2, False),
)
CODEBOOK_SPARSE = (SparseCodebook(8), SparseCodebook(4), SparseCodebook(2))
CODEBOOK = (*CODEBOOK_DENSE, *CODEBOOK_SPARSE)
FLOAT16 = (Float16(),)
KEEP_QUANTIZED = (DequantizeLinear(8), DequantizeLinear(4), DequantizeLinearBlocked())
SPARSE_FLOAT = (SparseFloat(), SparseCoordinates("float"))
ALL = (*UNIFORM, *CODEBOOK, *FLOAT16, *KEEP_QUANTIZED, *SPARSE_FLOAT)
BY_NAME = {e.name: e for e in ALL}

#: What ``--format`` can ask for, and the encodings each choice may use.
FORMATS: dict[str, tuple[Encoding, ...]] = {
    "auto": (*UNIFORM, *CODEBOOK, *FLOAT16),
    "dense": (
        Int8(),
        NativeInt(4),
        NativeInt(2),
        PackedUint(4),
        PackedUint(2),
        Packed6(),
        *CODEBOOK_DENSE,
        *FLOAT16,
    ),
    "int8": (Int8(), Codebook(8, False), *FLOAT16),
    "sparse": (
        SparseBitmask(8),
        SparseBitmask(4),
        SparseBitmask(2),
        SparseCoordinates("uniform"),
        *CODEBOOK_SPARSE,
    ),
}


def choose(
    p: Payload,
    opset: int,
    candidates: Sequence[Encoding],
    graph: ir.Graph,
    shared: SharedConstants,
) -> Encoding | None:
    """The applicable encoding that adds the fewest bytes for ``p`` (first wins ties)."""
    usable = [e for e in candidates if e.applies(p, opset) and e.worth_trying(p)]
    if len(usable) <= 1:
        return usable[0] if usable else None
    return min(usable, key=lambda e: e.cost(graph, p, shared))


def describe_encoding(encoding: str, bits: int | None) -> str:
    """Short label for tables: 'int8 ×scale (4-bit codes)', 'float'."""
    labels = {
        "int8": "int8 ×scale",
        "int4": "int4 ×scale",
        "int2": "int2 ×scale",
        "packed4": "4-bit packed ×scale",
        "packed2": "2-bit packed ×scale",
        "packed6": "6-bit packed ×scale",
        "sparse": "bitmask + int8 ×scale",
        "sparse4": "bitmask + 4-bit packed ×scale",
        "sparse2": "bitmask + 2-bit packed ×scale",
        "codebook": "codebook, uint8 index",
        "codebook4": "codebook, uint4 index",
        "codebook2": "codebook, uint2 index",
        "codebook-packed4": "codebook, 4-bit packed index",
        "codebook-packed2": "codebook, 2-bit packed index",
        "sparse-codebook8": "bitmask + codebook uint8 index",
        "sparse-codebook4": "bitmask + codebook 4-bit index",
        "sparse-codebook2": "bitmask + codebook 2-bit index",
        "float16": "float16",
        "sparse-float": "bitmask + float values",
        "coordinates": "gaps + int8 values ×scale",
        "coordinates-float": "gaps + float values",
        "dq-int8": "DequantizeLinear int8",
        "dq-int4": "DequantizeLinear int4",
        "dq-int4-blocked": "DequantizeLinear int4, blocks of 32",
    }
    zero_point = encoding.endswith(ZERO_POINT_SUFFIX)
    base = encoding.removesuffix(ZERO_POINT_SUFFIX)
    label = labels.get(base, base)
    if zero_point:
        label = label.replace(" ×scale", " −zero point ×scale")
    if bits is None or encoding in ("float16", "sparse-float", "coordinates-float"):
        return label
    return f"{label} ({bits}-bit codes)"
