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

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from prunequant_cli.errors import (
    InputError,
    InvalidModelError,
    OutputError,
    safe_text,
)

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


def load_model(path: Path) -> ir.Model:
    """Check and load an ONNX model file (external data stays memory-mapped)."""
    check_readable_file(path)
    if path.stat().st_size == 0:
        raise InvalidModelError(f"not an ONNX model: {safe_text(path)} is empty")
    try:
        # The C++ checker parses the file itself, validates the graph and refuses
        # external data that points outside the model's folder.
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        first = safe_text(str(e).strip().splitlines()[0] if str(e).strip() else "invalid")
        if "Unable to parse proto" in first:
            raise InvalidModelError(f"not an ONNX model: {safe_text(path)}") from None
        raise InvalidModelError(f"invalid ONNX model {safe_text(path)}: {first}") from None
    try:
        return ir.load(path)
    except DecodeError:
        raise InvalidModelError(f"not an ONNX model: {safe_text(path)}") from None
    except OSError as e:
        raise InputError(f"cannot read {safe_text(path)}: {e.strerror}") from None


def external_files(model: ir.Model) -> set[Path]:
    """The external data files that the model's initializers read from."""
    files: set[Path] = set()
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                files.add(Path(tensor.path).resolve())
    return files


def file_bytes(path: Path, model: ir.Model | None = None) -> int:
    """Bytes on disk of a model file plus the external data files it reads."""
    total = path.stat().st_size
    if model is not None:
        total += sum(f.stat().st_size for f in external_files(model) if f.exists())
    return total


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of all initializer data, wherever it is stored."""
    return sum(
        int(v.const_value.nbytes)
        for g in model.graphs()
        for v in g.initializers.values()
        if v.const_value is not None
    )


def data_file_name(output: Path) -> str:
    """Name of the external data file written beside ``output``."""
    return output.name + ".data"


def check_output_target(input_path: Path | None, output: Path, input_data: set[Path]) -> None:
    """Refuse an output that would overwrite the input or its data, before any work."""
    if output.exists() and output.is_dir():
        raise OutputError(f"output is a folder: {safe_text(output)}")
    if not output.parent.exists():
        raise OutputError(f"output folder does not exist: {safe_text(output.parent)}")
    targets = [output, output.parent / data_file_name(output)]
    protected = set(input_data)
    if input_path is not None:
        protected.add(input_path.resolve())
    for target in targets:
        if not target.exists():
            continue
        for p in protected:
            if target.resolve() == p or (p.exists() and os.path.samefile(target, p)):
                raise OutputError(
                    f"output {safe_text(target)} would overwrite the input {safe_text(p)}"
                )


def save_model(model: ir.Model, output: Path, external_data: bool) -> list[Path]:
    """Write ``model`` to ``output`` atomically; return the files written.

    With ``external_data`` the tensors go to ``<output>.data`` beside it (always
    rewritten, never appended to).
    """
    parent = output.parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot write in {safe_text(parent)}: {e.strerror}") from None
    try:
        staged = tmp / output.name
        written = [output]
        if external_data:
            ir.save(model, staged, external_data=data_file_name(output))
            written.insert(0, parent / data_file_name(output))
        else:
            ir.save(model, staged)
        for final in written:
            with open(tmp / final.name, "rb+") as f:
                os.fsync(f.fileno())
        for final in written:  # data before the model that points at it
            os.replace(tmp / final.name, final)
        with contextlib.suppress(OSError):
            dir_fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return written
    except OSError as e:
        raise OutputError(f"cannot write {safe_text(output)}: {e.strerror or e}") from None
    except ValueError as e:  # e.g. a protobuf over 2 GiB
        raise OutputError(f"cannot write {safe_text(output)}: {safe_text(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def needs_external_data(model: ir.Model, input_external: bool) -> bool:
    """Keep external data when the input had it, or when the model is too big to embed."""
    return input_external or tensor_bytes(model) > EMBED_LIMIT
