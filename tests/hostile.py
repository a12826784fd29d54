"""A corpus of hostile (and benign look-alike) models, built in a temporary folder at test time.

Every builder takes the case's own folder (which holds ``model.onnx``) and an outside
folder holding ``secret.bin``, a file the tool must never read, and returns the model
path. ``CASES`` maps a case name to (builder, expected exit code of inspect, expected
exit code of compress --no-eval).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SECRET = b"TOP-SECRET-" * 64  # 704 bytes: the size of a 16x11 float tensor

FLOAT = TensorProto.FLOAT


def _model(nodes, inits=(), inputs=None, outputs=None, opset=17, ir_version=8, sparse=()):
    graph = helper.make_graph(
        nodes,
        "hostile",
        inputs if inputs is not None else [helper.make_tensor_value_info("x", FLOAT, [1, 16])],
        outputs if outputs is not None else [helper.make_tensor_value_info("y", FLOAT, [1, 11])],
        initializer=list(inits),
        sparse_initializer=list(sparse),
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )


def _weight(name="W", shape=(16, 11)):
    return numpy_helper.from_array(
        np.random.default_rng(0).standard_normal(shape).astype(np.float32), name
    )


def _matmul(weight="W"):
    return [helper.make_node("MatMul", ["x", weight], ["y"])]


def _external(tensor: TensorProto, location: str, offset: int = 0, length: int | None = None):
    """Point ``tensor`` at external data (no data kept inside)."""
    nbytes = len(tensor.raw_data) or 704
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", location),
        ("offset", str(offset)),
        ("length", str(nbytes if length is None else length)),
    ):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _save(model: onnx.ModelProto, folder: Path) -> Path:
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _valid(folder: Path) -> Path:
    return _save(_model(_matmul(), [_weight()]), folder)


# -- input files ------------------------------------------------------------------


def zero_byte(folder, outside):
    path = folder / "model.onnx"
    path.write_bytes(b"")
    return path


def random_bytes(folder, outside):
    path = folder / "model.onnx"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def truncated(folder, outside):
    data = _valid(folder).read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    return folder / "model.onnx"


def fifo(folder, outside):
    path = folder / "model.onnx"
    os.mkfifo(path)
    return path


def a_folder(folder, outside):
    path = folder / "model.onnx"
    path.mkdir()
    return path


def missing(folder, outside):
    return folder / "model.onnx"


# -- external data escapes -----------------------------------------------------------


def ext_dotdot(folder, outside):
    return _save(_model(_matmul(), [_external(_weight(), f"../{outside.name}/secret.bin")]), folder)


def ext_absolute(folder, outside):
    return _save(_model(_matmul(), [_external(_weight(), str(outside / "secret.bin"))]), folder)


def ext_symlink(folder, outside):
    (folder / "weights.bin").symlink_to(outside / "secret.bin")
    return _save(_model(_matmul(), [_external(_weight(), "weights.bin")]), folder)


def ext_folder_symlink(folder, outside):
    (folder / "sub").symlink_to(outside)
    return _save(_model(_matmul(), [_external(_weight(), "sub/secret.bin")]), folder)


def ext_hardlink(folder, outside):
    os.link(outside / "secret.bin", folder / "weights.bin")
    return _save(_model(_matmul(), [_external(_weight(), "weights.bin")]), folder)


def ext_control_chars(folder, outside):
    (folder / "w.bin").write_bytes(SECRET)
    return _save(_model(_matmul(), [_external(_weight(), "w.bin\x00../x")]), folder)


def ext_past_the_end(folder, outside):
    (folder / "w.bin").write_bytes(b"\0" * 100)
    return _save(_model(_matmul(), [_external(_weight(), "w.bin")]), folder)


def ext_length_lie(folder, outside):
    (folder / "w.bin").write_bytes(b"\0" * 4096)
    return _save(_model(_matmul(), [_external(_weight(), "w.bin", length=4000)]), folder)


def ext_overlap(folder, outside):
    """Two weights that share bytes of one data file."""
    (folder / "w.bin").write_bytes(b"\0" * 2048)
    a = _external(_weight("A"), "w.bin", offset=0)
    b = _external(_weight("B"), "w.bin", offset=352)
    nodes = [
        helper.make_node("MatMul", ["x", "A"], ["y"]),
        helper.make_node("MatMul", ["x", "B"], ["z"]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", FLOAT, [1, 11]),
        helper.make_tensor_value_info("z", FLOAT, [1, 11]),
    ]
    return _save(_model(nodes, [a, b], outputs=outputs), folder)


def ext_in_if_branch(folder, outside):
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "V"], ["yb"])],
        "then",
        [],
        [helper.make_tensor_value_info("yb", FLOAT, [1, 11])],
        initializer=[_external(_weight("V"), f"../{outside.name}/secret.bin")],
    )
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
    inputs = [
        helper.make_tensor_value_info("x", FLOAT, [1, 16]),
        helper.make_tensor_value_info("c", TensorProto.BOOL, []),
    ]
    return _save(_model([node], inputs=inputs), folder)


def ext_in_constant(folder, outside):
    value = _external(_weight("k"), f"../{outside.name}/secret.bin")
    nodes = [helper.make_node("Constant", [], ["W"], value=value), *_matmul()]
    return _save(_model(nodes), folder)


def ext_in_sparse(folder, outside):
    values = _external(
        numpy_helper.from_array(np.ones(4, np.float32), "W"), f"../{outside.name}/secret.bin"
    )
    indices = numpy_helper.from_array(np.arange(4, dtype=np.int64), "W_idx")
    sparse = helper.make_sparse_tensor(values, indices, [16, 11])
    return _save(_model(_matmul(), sparse=[sparse]), folder)


# -- tensors that lie -------------------------------------------------------------


def dims_negative(folder, outside):
    w = _weight()
    w.dims[0] = -16
    return _save(_model(_matmul(), [w]), folder)


def dims_bomb(folder, outside):
    w = _weight()
    del w.dims[:]
    w.dims.extend([1 << 20, 1 << 20, 1 << 10])
    return _save(_model(_matmul(), [w]), folder)


def length_lie(folder, outside):
    w = _weight()
    w.raw_data = w.raw_data[:100]
    return _save(_model(_matmul(), [w]), folder)


def two_data_fields(folder, outside):
    w = _weight()
    w.float_data.extend([1.0] * 176)
    return _save(_model(_matmul(), [w]), folder)


def unknown_dtype(folder, outside):
    w = _weight()
    w.data_type = 999
    return _save(_model(_matmul(), [w]), folder)


def duplicate_names(folder, outside):
    return _save(_model(_matmul(), [_weight(), _weight()]), folder)


def cycle(folder, outside):
    nodes = [
        helper.make_node("Add", ["x", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "W"], ["y"]),
    ]
    return _save(_model(nodes, [_weight()]), folder)


def unknown_op(folder, outside):
    return _save(
        _model([helper.make_node("FrobnicateMatMul", ["x", "W"], ["y"])], [_weight()]), folder
    )


def unknown_domain(folder, outside):
    model = _model([helper.make_node("MatMul", ["x", "W"], ["y"], domain="com.evil")], [_weight()])
    model.opset_import.append(helper.make_opsetid("com.evil", 1))
    return _save(model, folder)


def future_opset(folder, outside):
    return _save(_model(_matmul(), [_weight()], opset=99), folder)


def future_ir(folder, outside):
    return _save(_model(_matmul(), [_weight()], ir_version=99), folder)


def non_utf8_op(folder, outside):
    data = _save(
        _model([helper.make_node("ZZZZZZ", ["x", "W"], ["y"])], [_weight()]), folder
    ).read_bytes()
    (folder / "model.onnx").write_bytes(data.replace(b"ZZZZZZ", b"\xff\xfe\xfd\xfc\xfb\xfa"))
    return folder / "model.onnx"


def log_injection(folder, outside):
    name = "evil\n::error title=pwned::owned\x1b[31mRED\r"
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name=name, domain="com.x\n::warning::")]
    model = _model(nodes, [_weight()])
    model.opset_import.append(helper.make_opsetid("com.x\n::warning::", 1))
    return _save(model, folder)


def _loop_body() -> onnx.GraphProto:
    """A Loop body that passes its condition and its value through unchanged."""
    return helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", FLOAT, [1, 16]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", FLOAT, [1, 16]),
        ],
    )


def infinite_loop(folder, outside):
    body = _loop_body()
    nodes = [
        helper.make_node("Loop", ["", "", "x"], ["v"], body=body),
        helper.make_node("MatMul", ["v", "W"], ["y"]),
    ]
    return _save(_model(nodes, [_weight()]), folder)


def endless_loop(folder, outside):
    """A Loop whose condition stays true: only a wall-clock limit stops it."""
    body = _loop_body()
    keep = numpy_helper.from_array(np.array(True), "keep_going")
    nodes = [
        helper.make_node("Loop", ["", "keep_going", "x"], ["v"], body=body),
        helper.make_node("MatMul", ["v", "W"], ["y"]),
    ]
    return _save(_model(nodes, [_weight(), keep]), folder)


def _ones_bomb(folder, shape_init, shape_nodes=()):
    """ConstantOfShape(shape) of ones, summed into a second output next to the MatMul."""
    nodes = [
        *shape_nodes,
        helper.make_node(
            "ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", FLOAT, [1], [1.0])
        ),
        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
        *_matmul(),
    ]
    outputs = [
        helper.make_tensor_value_info("y", FLOAT, [1, 11]),
        helper.make_tensor_value_info("s", FLOAT, []),
    ]
    return _save(_model(nodes, [_weight(), shape_init], outputs=outputs), folder)


def allocation_bomb(folder, outside):
    return _ones_bomb(folder, numpy_helper.from_array(np.array([40000, 40000], np.int64), "shape"))


def runtime_bomb(folder, outside):
    """The shape is computed at run time: only the memory limit stops it."""
    half = numpy_helper.from_array(np.array([20000, 20000], np.int64), "half")
    return _ones_bomb(folder, half, [helper.make_node("Add", ["half", "half"], ["shape"])])


# -- benign look-alikes that must work --------------------------------------------


def dotdot_in_a_name(folder, outside):
    w = _weight()
    (folder / "weights..bin").write_bytes(w.raw_data)
    return _save(_model(_matmul(), [_external(w, "weights..bin")]), folder)


def data_in_a_subfolder(folder, outside):
    w = _weight()
    (folder / "data").mkdir()
    (folder / "data" / "weights.bin").write_bytes(w.raw_data)
    return _save(_model(_matmul(), [_external(w, "data/weights.bin")]), folder)


def microsoft_ops(folder, outside):
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Gelu", ["h"], ["y"], domain="com.microsoft"),
    ]
    model = _model(nodes, [_weight()])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return _save(model, folder)


Builder = Callable[[Path, Path], Path]

# name: (builder, inspect exit code, compress --no-eval exit code)
CASES: dict[str, tuple[Builder, int, int]] = {
    "zero_byte": (zero_byte, 4, 4),
    "random_bytes": (random_bytes, 4, 4),
    "truncated": (truncated, 4, 4),
    "fifo": (fifo, 3, 3),
    "a_folder": (a_folder, 3, 3),
    "missing": (missing, 3, 3),
    "ext_dotdot": (ext_dotdot, 4, 4),
    "ext_absolute": (ext_absolute, 4, 4),
    "ext_symlink": (ext_symlink, 4, 4),
    "ext_folder_symlink": (ext_folder_symlink, 4, 4),
    "ext_hardlink": (ext_hardlink, 4, 4),
    "ext_control_chars": (ext_control_chars, 4, 4),
    "ext_past_the_end": (ext_past_the_end, 4, 4),
    "ext_length_lie": (ext_length_lie, 4, 4),
    "ext_overlap": (ext_overlap, 4, 4),
    "ext_in_if_branch": (ext_in_if_branch, 4, 4),
    "ext_in_constant": (ext_in_constant, 4, 4),
    "ext_in_sparse": (ext_in_sparse, 4, 4),
    "dims_negative": (dims_negative, 4, 4),
    "dims_bomb": (dims_bomb, 9, 9),
    "length_lie": (length_lie, 4, 4),
    "two_data_fields": (two_data_fields, 4, 4),
    "unknown_dtype": (unknown_dtype, 4, 4),
    "duplicate_names": (duplicate_names, 4, 4),
    "cycle": (cycle, 4, 4),
    "unknown_op": (unknown_op, 4, 4),
    "future_opset": (future_opset, 5, 5),
    "future_ir": (future_ir, 5, 5),
    "non_utf8_op": (non_utf8_op, 4, 4),
    "infinite_loop": (infinite_loop, 4, 4),
    "allocation_bomb": (allocation_bomb, 9, 9),
    "unknown_domain": (unknown_domain, 0, 0),
    "log_injection": (log_injection, 0, 0),
    "endless_loop": (endless_loop, 0, 0),
    "runtime_bomb": (runtime_bomb, 0, 0),
    "dotdot_in_a_name": (dotdot_in_a_name, 0, 0),
    "data_in_a_subfolder": (data_in_a_subfolder, 0, 0),
    "microsoft_ops": (microsoft_ops, 0, 0),
}

# Cases whose damage shows when onnxruntime runs them: compress with evaluation.
# name: (expected exit code, extra options)
RUNTIME_CASES: dict[str, tuple[int, list[str]]] = {
    "unknown_domain": (7, []),
    "log_injection": (7, []),
    "endless_loop": (9, ["--timeout", "4"]),
    "runtime_bomb": (9, ["--memory-limit", "1024"]),
    "dotdot_in_a_name": (0, []),
    "data_in_a_subfolder": (0, []),
    "microsoft_ops": (0, []),
}
