"""Mutated models (bytes and fields): every outcome is a documented error or a valid output."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import onnx
from helpers import FLOAT, make_model, rand, tensor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from prunequant_cli import CompressConfig, EvalConfig, PrunequantError, compress
from prunequant_cli.errors import EXIT_CODES
from prunequant_cli.pipeline import inspect_model

DOCUMENTED = {code for code, _ in EXIT_CODES} - {0, 1}  # 1 would be a bug
FUZZ = int(os.environ.get("PRUNEQUANT_FUZZ", "1"))  # more examples for a local soak


def _seed_model() -> onnx.ModelProto:
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["h", "V"], ["y_then"])],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", FLOAT, ["N", 4])],
        initializer=[tensor("V", rand((6, 4), 3))],
    )
    else_g = helper.make_graph(
        [helper.make_node("Identity", ["h4"], ["y_else"])],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", FLOAT, ["N", 4])],
    )
    return make_model(
        [
            helper.make_node("Gemm", ["x", "W", "b"], ["g"], transB=1),
            helper.make_node("Relu", ["g"], ["h"]),
            helper.make_node("Slice", ["h", "starts", "ends", "axes"], ["h4"]),
            helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        [("x", FLOAT, ["N", 8]), ("c", TensorProto.BOOL, [])],
        [("y", FLOAT, ["N", 4])],
        [
            tensor("W", rand((6, 8), 1)),
            tensor("b", rand((6,), 2)),
            tensor("starts", np.array([0], np.int64)),
            tensor("ends", np.array([4], np.int64)),
            tensor("axes", np.array([1], np.int64)),
        ],
    )


SEED = _seed_model().SerializeToString()


def _exercise(tmp_path, data: bytes) -> None:
    """inspect and compress (no onnxruntime run): a documented error or a readable result."""
    src = tmp_path / "m.onnx"
    src.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    for action in (
        lambda: inspect_model(src, session_memory=False),
        lambda: compress(
            src, tmp_path / "o.onnx", CompressConfig(bits=4), EvalConfig(enabled=False)
        ),
    ):
        try:
            action()
        except PrunequantError as e:
            assert e.exit_code in DOCUMENTED, (type(e).__name__, str(e))
            assert "\n" not in str(e)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest
    if (tmp_path / "o.onnx").exists():  # whatever was written reads back as a valid model
        onnx.checker.check_model(str(tmp_path / "o.onnx"))
        (tmp_path / "o.onnx").unlink()


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "delete", "insert", "truncate"]),
        st.integers(0, len(SEED) - 1),
        st.binary(min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=4,
)


@settings(
    max_examples=250 * FUZZ,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edits=mutations)
def test_mutated_bytes(tmp_path, edits):
    data = bytearray(SEED)
    for kind, pos, blob in edits:
        pos %= max(len(data), 1)
        if kind == "flip":
            data[pos : pos + len(blob)] = blob
        elif kind == "delete":
            del data[pos : pos + len(blob)]
        elif kind == "insert":
            data[pos:pos] = blob
        else:
            del data[pos:]
    _exercise(tmp_path, bytes(data))


@settings(
    max_examples=150 * FUZZ,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    target=st.sampled_from(["W", "b", "starts", "V"]),
    field=st.sampled_from(
        ["dims", "data_type", "raw_data", "op_type", "input", "opset", "ir", "name"]
    ),
    number=st.integers(-(2**40), 2**40),
    text=st.text(min_size=0, max_size=12),
)
def test_mutated_fields(tmp_path, target, field, number, text):
    model = onnx.ModelProto.FromString(SEED)
    then_g = next(a.g for a in model.graph.node[3].attribute if a.name == "then_branch")
    graphs = [model.graph, then_g]
    init = next(t for g in graphs for t in g.initializer if t.name == target)
    node = model.graph.node[number % len(model.graph.node)]
    if field == "dims":
        init.dims[number % len(init.dims)] = number
    elif field == "data_type":
        init.data_type = number % 40
    elif field == "raw_data":
        init.raw_data = init.raw_data[: number % (len(init.raw_data) + 1)] + text.encode()
    elif field == "op_type":
        node.op_type = text
    elif field == "input" and node.input:
        node.input[number % len(node.input)] = text
    elif field == "opset":
        model.opset_import[0].version = number % 40
    elif field == "ir":
        model.ir_version = number % 20
    else:
        init.name = text
    _exercise(tmp_path, model.SerializeToString())


def test_names_that_are_not_utf8(tmp_path):
    # Found by the byte mutations: protobuf hands back invalid UTF-8 as bytes, which used
    # to fail only when the model was written.
    _exercise(tmp_path, SEED.replace(b"then", b"\x80hen"))
    src = tmp_path / "m.onnx"
    try:
        inspect_model(src, session_memory=False)
    except PrunequantError as e:
        assert "UTF-8" in str(e)
    else:
        raise AssertionError("a graph name that is not UTF-8 was accepted")
