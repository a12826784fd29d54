"""Loading models safely, writing them atomically, and counting their bytes on disk.

The input is never modified: onnx_ir reads external data through read-only memory
maps and embedded data through views of the parsed file, and the passes replace
initializers instead of writing into them.

An output is written into a temporary folder beside its destination, flushed to
disk, and moved into place with ``os.replace`` (data file first, then the model),
so a failed run leaves any previous output intact and no partial file behind, and
a symlink planted at the destination is replaced, not followed.
"""

from __future__ import annotations

import itertools
import mmap
import os
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from prunequant_cli import validate
from prunequant_cli.errors import (
    InputError,
    InvalidModelError,
    OutputError,
    UnsupportedModelError,
    safe_text,
)
from prunequant_cli.outputs import Staging
from prunequant_cli.selection import dims

# Above this many bytes of tensor data, the protobuf file format cannot hold the model.
PROTOBUF_LIMIT = 2**31 - 1
EMBED_LIMIT = 1_800_000_000


def check_readable_file(path: Path, what: str = "model") -> None:
    """Raise InputError unless ``path`` is an existing, readable regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what} not found: {safe_text(path)}") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {safe_text(path)}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} is not a regular file: {safe_text(path)}")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {what} {safe_text(path)}: permission denied")


# Initializers whose raw data is at least this big are not parsed into memory at
# load: they are read from the file, one at a time, when a pass asks for them.
LAZY_MIN_BYTES = 1 << 16
# A single-file output with at most this many bytes of tensors is serialized in memory and
# written once; a larger one goes through a scratch data file (memory: one tensor at a time).
DIRECT_WRITE_MAX = 1 << 26
# The location that marks them: one no external data can have (its NUL is refused there),
# so the model file itself is never mistaken for external data (and put through the
# checks external data gets: no links, no odd characters in its name).
SELF = "\x00the model file"

_MODEL_GRAPH, _GRAPH_INITIALIZER, _TENSOR_RAW_DATA = 7, 5, 9


class _WireError(ValueError):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """Protobuf wire-format fields: (number, wire type, field start, value start, value end)."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            value_start = pos
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 2:
            length, value_start = _varint(buf, pos, end)
            pos = value_start + length
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:
            raise _WireError(f"unsupported wire type {wire}")
        if pos > end or number == 0:
            raise _WireError("field runs past its message")
        yield number, wire, field_start, value_start, pos


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _skeleton(buf: Any, location: str) -> bytes:
    """The model's bytes with large main-graph raw data replaced by references into the file.

    Each large initializer becomes an external-data tensor whose location is the
    model file itself, at the offset of its raw data: parsing the skeleton costs
    memory for the graph only, not for the weights.
    """
    out = bytearray()
    for number, wire, fstart, vstart, vend in _fields(buf, 0, len(buf)):
        if number != _MODEL_GRAPH or wire != 2:
            out += buf[fstart:vend]
            continue
        graph = bytearray()
        for gnum, gwire, gfs, gvs, gve in _fields(buf, vstart, vend):
            raw = None
            if gnum == _GRAPH_INITIALIZER and gwire == 2 and gve - gvs >= LAZY_MIN_BYTES:
                raw = next(
                    (f for f in _fields(buf, gvs, gve) if f[0] == _TENSOR_RAW_DATA and f[1] == 2),
                    None,
                )
            if raw is None or raw[4] - raw[3] < LAZY_MIN_BYTES:
                graph += buf[gfs:gve]
                continue
            rest = bytes(buf[gvs : raw[2]]) + bytes(buf[raw[4] : gve])
            tensor = onnx.TensorProto.FromString(rest)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (
                ("location", location),
                ("offset", str(raw[3])),
                ("length", str(raw[4] - raw[3])),
            ):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            graph += _length_delimited(_GRAPH_INITIALIZER, tensor.SerializeToString())
        out += _length_delimited(_MODEL_GRAPH, bytes(graph))
    return bytes(out)


def _graph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_protos(attr.g)
            for g in attr.graphs:
                yield from _graph_protos(g)


def _checkable(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for the checker, with external tensors emptied.

    Without the model's path, the checker would look for external data relative to
    the working directory; the reader checks external data itself (``_contained``).
    """
    check = onnx.ModelProto()
    check.CopyFrom(proto)
    for graph in _graph_protos(check.graph):
        for t in graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
                del t.dims[:]
                t.dims.append(0)
                t.raw_data = b""
    return check


def densify_sparse_initializers(proto: onnx.ModelProto, folder: Path | None = None) -> list[str]:
    """Turn every ``sparse_initializer`` into a dense initializer; return their names.

    onnx_ir does not carry sparse initializers, and onnxruntime densifies them at
    load anyway; prunequant then stores the zeros its own way (a bitmask). Values or
    indices in external data are read from ``folder`` (the model's), under the rules of
    any external data (``_contained``: inside the folder, no links).
    """
    names = []
    for graph in _graph_protos(proto.graph):
        for sparse in graph.sparse_initializer:
            values, indices = sparse.values, sparse.indices
            for t in (values, indices):
                if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
                    if folder is None:
                        raise UnsupportedModelError(
                            f"sparse initializer {safe_text(values.name)} keeps its data in "
                            "another file, and the model has no folder"
                        )
                    _read_inline(t, folder)
            dims = tuple(int(d) for d in sparse.dims)
            vals = onnx.numpy_helper.to_array(values).reshape(-1)
            idx = onnx.numpy_helper.to_array(indices).astype(np.int64)
            size = int(np.prod(dims, dtype=np.int64))
            if idx.ndim == 2:  # [NNZ, rank] coordinates
                idx = np.ravel_multi_index(tuple(idx.T), dims) if idx.size else idx.reshape(-1)
            idx = idx.reshape(-1)
            if idx.size != vals.size or (idx.size and (idx.min() < 0 or idx.max() >= size)):
                raise InvalidModelError(
                    f"sparse initializer {safe_text(values.name)} has indices outside its shape"
                )
            dense = np.zeros(size, dtype=vals.dtype)
            dense[idx] = vals
            graph.initializer.append(onnx.numpy_helper.from_array(dense.reshape(dims), values.name))
            names.append(values.name)
        del graph.sparse_initializer[:]
    return names


def _read_inline(tensor: onnx.TensorProto, folder: Path) -> None:
    """Bring a small tensor's external data into the tensor itself (checked like any)."""
    entries = {e.key: e.value for e in tensor.external_data}
    path = _contained(folder, entries.get("location", ""))
    count = int(np.prod(tuple(tensor.dims), dtype=np.int64)) if tensor.dims else 1
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    offset = int(entries.get("offset", 0))
    length = int(entries.get("length", count * itemsize))
    if length != count * itemsize or offset + length > path.stat().st_size:
        raise InvalidModelError(
            f"tensor {safe_text(tensor.name)} does not match its external data range"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT
    tensor.raw_data = data


def _contained(base: Path, location: str) -> Path:
    """The external data file ``location`` names, refused unless it is safely inside ``base``."""
    rel = Path(location)
    control = any(ord(c) < 32 or ord(c) == 127 for c in location)
    if not location or control or rel.is_absolute() or ".." in rel.parts:
        raise InvalidModelError(
            f"external data location is not inside the model folder: {safe_text(location)}"
        )
    path = base / rel
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InputError(f"external data file not found: {safe_text(location)}") from None
    if path.is_symlink() or not resolved.is_relative_to(base.resolve()):
        raise InvalidModelError(
            f"external data file escapes the model folder (a link): {safe_text(location)}"
        )
    st = resolved.stat()
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelError(f"external data is not a regular file: {safe_text(location)}")
    if st.st_nlink > 1:
        # A hard link may be another name of a file outside the folder; onnxruntime would
        # read it. There is no telling, so none is accepted.
        raise InvalidModelError(f"external data file has other hard links: {safe_text(location)}")
    return resolved


def _check_range(tensor: ir.ExternalTensor, path: Path) -> None:
    """The tensor's bytes (packed, for sub-byte types) lie inside its data file."""
    need = int(tensor.nbytes)
    offset = tensor.offset or 0
    length = tensor.length if tensor.length is not None else need
    if length != need or offset < 0 or offset + length > path.stat().st_size:
        raise InvalidModelError(
            f"tensor {safe_text(tensor.name)} does not match its external data range"
        )


def _range_tensor(tensor: ir.ExternalTensor, path: Path, cache: bool = False) -> ir.TensorProtocol:
    """A lazy tensor that reads its bytes from ``path`` each time it is asked, or (``cache``)
    the first time only, into a read-only array."""
    dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
    shape = dims(tensor)
    offset = tensor.offset or 0
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    length = tensor.length if tensor.length is not None else need
    if length != need:
        raise InvalidModelError(
            f"tensor {safe_text(tensor.name)} holds {length} bytes, its shape needs {need}"
        )
    if offset < 0 or offset + length > path.stat().st_size:
        raise InvalidModelError(
            f"tensor {safe_text(tensor.name)} points past the end of its data file"
        )

    def read() -> ir.Tensor:
        array = np.empty(shape, dtype=dtype)
        with open(path, "rb") as f:
            f.seek(offset)
            if f.readinto(array.data.cast("B")) != length:
                raise InputError(f"data of tensor {safe_text(tensor.name)} was cut short")
        if cache:
            array.setflags(write=False)  # shared by every reader: none may change it
        return ir.Tensor(array, name=tensor.name)

    return ir.LazyTensor(
        read,
        dtype=tensor.dtype,
        shape=ir.Shape(shape),
        name=tensor.name,
        cache=cache,
        metadata_props=dict(tensor.metadata_props),  # an encoded weight's (encodings.META_KEY)
    )


@dataclass
class LoadedModel:
    """A model read from disk, and the files its tensors are read from."""

    model: ir.Model
    path: Path
    external: set[Path] = field(default_factory=set)
    densified: list[str] = field(default_factory=list)  # sparse initializers made dense

    @property
    def file_bytes(self) -> int:
        """Bytes on disk: the model file plus its external data files."""
        return self.path.stat().st_size + sum(f.stat().st_size for f in self.external)


# Models whose large tensors hold at most this many bytes keep them in memory once read.
READ_CACHE_BYTES = 64 << 20


def load_model(path: Path) -> LoadedModel:
    """Check and load an ONNX model file.

    Large tensors, embedded or external, are not read at load: each is read from
    its file when a pass asks for it, so memory follows the largest tensor plus the
    graph. External data must be a regular file inside the model's folder.
    """
    check_readable_file(path)
    size = path.stat().st_size
    if size == 0:
        raise InvalidModelError(f"not an ONNX model: {safe_text(path)} is empty")
    if size > PROTOBUF_LIMIT:
        raise InvalidModelError(
            f"{safe_text(path)} is over 2 GiB: a single-file ONNX model cannot be; "
            "keep its tensors in external data"
        )
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            proto = onnx.ModelProto.FromString(_skeleton(buf, SELF))
    except (_WireError, DecodeError, RecursionError):
        raise InvalidModelError(f"not an ONNX model: {safe_text(path)}") from None
    except OSError as e:
        raise InputError(f"cannot read {safe_text(path)}: {e.strerror}") from None
    validate.check_model(proto)  # before anything is allocated for the model's tensors
    densified = densify_sparse_initializers(proto, path.parent)
    try:
        onnx.checker.check_model(_checkable(proto))
    except (onnx.checker.ValidationError, ValueError, RecursionError) as e:
        text = str(e).strip()
        first = safe_text(text.splitlines()[0] if text else "invalid")
        raise InvalidModelError(f"invalid ONNX model {safe_text(path)}: {first}") from None
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as e:  # valid (the checker passed), but not representable: exit 5
        cause = e.__cause__ or e
        raise UnsupportedModelError(
            f"cannot process the graph of {safe_text(path)} (a valid model; its graph holds "
            f"something the graph library cannot represent): {type(cause).__name__}: "
            f"{safe_text((str(cause).splitlines() or [''])[0], 120)}"
        ) from None
    del proto
    loaded = LoadedModel(model, path, densified=densified)
    ranges: dict[Path, list[tuple[int, int, str]]] = {}
    lazy: list[tuple[ir.Value, ir.ExternalTensor, Path]] = []
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if not isinstance(tensor, ir.ExternalTensor):
                continue
            if str(tensor.location) == SELF:  # bytes of the model file itself
                data = path.resolve()
            else:
                data = _contained(path.parent, str(tensor.location))
                loaded.external.add(data)
            offset = tensor.offset or 0
            length = tensor.length if tensor.length is not None else int(tensor.nbytes)
            ranges.setdefault(data, []).append((offset, offset + length, value.name or ""))
            if tensor.dtype.bitwidth < 8 or tensor.dtype == ir.DataType.STRING:
                # Packed sub-byte types (INT4, UINT2...) and strings: onnx_ir's own reader,
                # which unpacks them; the location was checked above.
                _check_range(tensor, data)
                if str(tensor.location) == SELF:
                    tensor = ir.ExternalTensor(
                        data.name,
                        tensor.offset,
                        tensor.length,
                        tensor.dtype,
                        shape=tensor.shape,
                        name=tensor.name,
                        metadata_props=dict(tensor.metadata_props),
                        base_dir=str(data.parent),
                    )
                    value.const_value = tensor
                else:
                    tensor.base_dir = str(path.parent)
                continue
            lazy.append((value, tensor, data))
    _no_overlaps(ranges)
    # A small model's tensors are read once and kept: the passes read each weight more
    # than once, and on a small model those reads are a visible share of the run.
    cache = sum(int(t.nbytes) for _, t, _ in lazy) <= READ_CACHE_BYTES
    for value, tensor, data in lazy:
        value.const_value = _range_tensor(tensor, data, cache)
    return loaded


def _no_overlaps(ranges: dict[Path, list[tuple[int, int, str]]]) -> None:
    """Two tensors may not share bytes of a data file (a way to multiply memory use)."""
    for file, spans in ranges.items():
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise InvalidModelError(
                    f"tensors {safe_text(a)!r} and {safe_text(b)!r} overlap in "
                    f"{safe_text(file.name)}"
                )


def external_files(model: ir.Model) -> set[Path]:
    """The external data files that an in-memory model's initializers read from."""
    files: set[Path] = set()
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                files.add(Path(tensor.path).resolve())
    return files


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of all initializer data, wherever it is stored."""
    return sum(
        int(v.const_value.nbytes)
        for g in model.graphs()
        for v in g.initializers.values()
        if v.const_value is not None
    )


# A file larger than this has its gzip size estimated from GZIP_PIECES evenly spaced pieces
# of GZIP_PIECE bytes (deflate sees 32 KiB at a time, so pieces of weights compress as the
# whole does): gzip at level 6 runs at about 30 MB/s, 40 s for a 1 GB model and its copy.
GZIP_EXACT_MAX = 1 << 26
GZIP_PIECES = 64
GZIP_PIECE = 1 << 20


def gzip_bytes(sources: Iterable[Path | bytes]) -> int:
    """What downloading these files gzip-compressed (level 6, each on its own) costs; for a
    file over GZIP_EXACT_MAX bytes, estimated from GZIP_PIECES pieces of it."""
    total = 0
    for source in sources:
        z = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: gzip framing
        if isinstance(source, bytes):
            total += len(z.compress(source))
        else:
            size = source.stat().st_size
            if size > GZIP_EXACT_MAX:
                total += _gzip_estimate(source, size)
                continue
            with open(source, "rb") as f:
                while chunk := f.read(1 << 22):
                    total += len(z.compress(chunk))
        total += len(z.flush())
    return total


def _gzip_estimate(path: Path, size: int) -> int:
    """gzip bytes of ``path``: its GZIP_PIECES evenly spaced pieces compressed, scaled up."""
    sampled = packed = 0
    step = (size - GZIP_PIECE) / (GZIP_PIECES - 1)
    with open(path, "rb") as f:
        for i in range(GZIP_PIECES):
            f.seek(int(i * step))
            piece = f.read(GZIP_PIECE)
            z = zlib.compressobj(6, zlib.DEFLATED, -15)  # raw deflate: no framing per piece
            packed += len(z.compress(piece)) + len(z.flush())
            sampled += len(piece)
    return round(packed * size / sampled) + 18  # + one gzip header and trailer


def data_file_name(output: Path) -> str:
    """Name of the external data file written beside ``output``."""
    return output.name + ".data"


def _tidy(proto: onnx.ModelProto, tensor_metadata: dict[str, dict[str, str]]) -> bytes:
    """Drop value_info entries that repeat an initializer's own type and shape, and give
    back the initializers' ``metadata_props`` (``tensor_metadata``: by name) that writing
    them as external data dropped (an encoded weight's metadata among them)."""
    for graph in _graph_protos(proto.graph):
        for t in graph.initializer:
            props = tensor_metadata.get(t.name)
            if props and not t.metadata_props:
                for key, value in props.items():
                    t.metadata_props.add(key=key, value=value)
        names = {t.name for t in graph.initializer}
        keep = [v for v in graph.value_info if v.name not in names]
        if len(keep) != len(graph.value_info):
            del graph.value_info[:]
            graph.value_info.extend(keep)
    return proto.SerializeToString()


def _write(model: ir.Model, path: Path, data_name: str | None) -> None:
    """Write ``model`` at ``path`` (with its large tensors in ``data_name`` beside it, if given).

    ``ir.save`` of a single file would first build the whole protobuf and then its
    serialized copy (twice the output's size). Instead the large tensors always go
    to a data file first and the model file is a small skeleton; for a single-file
    model the final file is then assembled from the skeleton, streaming each
    tensor's bytes in as its ``raw_data``. A single file with up to DIRECT_WRITE_MAX bytes
    of tensors is serialized directly (writing its bytes twice would cost more there).
    """
    external = any(
        isinstance(v.const_value, ir.ExternalTensor)  # serialized as a reference, not bytes
        for g in model.graphs()
        for v in g.initializers.values()
    )
    if data_name is None and not external and tensor_bytes(model) <= DIRECT_WRITE_MAX:
        # small: one serialization in memory (twice the output's size) and one write
        path.write_bytes(_tidy(ir.serde.serialize_model(model), {}))
        return
    # ``path`` is in a private folder: short fixed names, whatever the output's name's length.
    scratch_name = data_name or "model.scratch"
    scratch = path.parent / scratch_name
    skeleton_path = path.parent / "model.skeleton"
    tensor_metadata = {
        v.name: dict(v.const_value.metadata_props)
        for graph in model.graphs()
        for v in graph.initializers.values()
        if v.name and v.const_value is not None and v.const_value.metadata_props
    }
    ir.save(model, skeleton_path, external_data=scratch_name, size_threshold_bytes=LAZY_MIN_BYTES)
    buf = _tidy(onnx.ModelProto.FromString(skeleton_path.read_bytes()), tensor_metadata)
    skeleton_path.unlink()
    if data_name is not None:
        path.write_bytes(buf)
        return
    pieces: list[bytes | tuple[int, int]] = []  # bytes, or (offset, length) in the scratch file

    def size(items: list[bytes | tuple[int, int]]) -> int:
        return sum(len(i) if isinstance(i, bytes) else i[1] for i in items)

    for number, wire, fstart, vstart, vend in _fields(buf, 0, len(buf)):
        if number != _MODEL_GRAPH or wire != 2:
            pieces.append(buf[fstart:vend])
            continue
        graph: list[bytes | tuple[int, int]] = []
        for gnum, gwire, gfs, gvs, gve in _fields(buf, vstart, vend):
            tensor = None
            if gnum == _GRAPH_INITIALIZER and gwire == 2:
                tensor = onnx.TensorProto.FromString(buf[gvs:gve])
            entries = {e.key: e.value for e in tensor.external_data} if tensor else {}
            if tensor is None or entries.get("location") != scratch_name:
                graph.append(buf[gfs:gve])
                continue
            offset, length = int(entries.get("offset", 0)), int(entries["length"])
            del tensor.external_data[:]
            tensor.ClearField("data_location")
            header = tensor.SerializeToString()
            raw_key = _encode_varint(_TENSOR_RAW_DATA << 3 | 2) + _encode_varint(length)
            body = len(header) + len(raw_key) + length
            graph += [
                _encode_varint(_GRAPH_INITIALIZER << 3 | 2)
                + _encode_varint(body)
                + header
                + raw_key,
                (offset, length),
            ]
        pieces.append(_encode_varint(_MODEL_GRAPH << 3 | 2) + _encode_varint(size(graph)))
        pieces += graph
    if size(pieces) > PROTOBUF_LIMIT:
        raise ValueError("the model is over 2 GiB: it needs external data")
    with (
        open(path, "wb") as out,
        open(scratch, "rb") if scratch.exists() else open(os.devnull, "rb") as data,
    ):
        for piece in pieces:
            if isinstance(piece, bytes):
                out.write(piece)
                continue
            data.seek(piece[0])
            left = piece[1]
            while left:
                chunk = data.read(min(left, 1 << 22))
                if not chunk:
                    raise OSError(f"scratch data ended early writing {path.name}")
                out.write(chunk)
                left -= len(chunk)
    scratch.unlink(missing_ok=True)


def stage_model(model: ir.Model, output: Path, external_data: bool, staging: Staging) -> Path:
    """Write ``model`` into a private temporary folder beside ``output``, to be moved onto it
    when ``staging`` commits; return the staged model file (what to load and evaluate).

    With ``external_data`` the tensors go to ``<output>.data`` beside it (always
    rewritten, never appended to); the staged file refers to it by that name.
    """
    tmp = staging.folder(output)
    try:
        staged = tmp / output.name
        finals = [output]
        if external_data:
            _write(model, staged, data_file_name(output))
            finals.insert(0, output.parent / data_file_name(output))
        else:
            _write(model, staged, None)
        for final in finals:  # data before the model that points at it
            with open(tmp / final.name, "rb+") as f:
                os.fsync(f.fileno())
            staging.add(tmp / final.name, final)
        return staged
    except OSError as e:
        raise OutputError(f"cannot write {safe_text(output)}: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a protobuf over 2 GiB
        raise OutputError(f"cannot write {safe_text(output)}: {safe_text(e)}") from None
    except Exception as e:  # onnx_ir cannot serialize something the model holds
        raise InvalidModelError(
            f"the model holds something that cannot be written back: {safe_text(e)}"
        ) from None


def needs_external_data(model: ir.Model, input_external: bool) -> bool:
    """Keep external data when the input had it, or when the model is too big to embed."""
    return input_external or tensor_bytes(model) > EMBED_LIMIT
