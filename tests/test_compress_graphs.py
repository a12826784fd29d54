"""compress on small built graphs: every written model runs in onnxruntime like the original."""

from __future__ import annotations

import hashlib

import graphs
import numpy as np
import onnx
import pytest
from helpers import FLOAT, assert_close_outputs, make_model, rand, run_both, save, session, tensor
from onnx import helper

from prunequant_cli import CompressConfig, EvalConfig, compress, inspect_model

NO_EVAL = EvalConfig(enabled=False)

CASES = {
    "gemm-transB": graphs.gemm(1),
    "gemm": graphs.gemm(0),
    "matmul": graphs.matmul(),
    "matmul-batched": graphs.matmul(batched=True),
    "conv": graphs.conv(),
    "gather": graphs.embedding(),
    "shared": graphs.shared_weight(),
    "if": graphs.if_branches(),
    "mixed": graphs.reshape_and_others(),
    "conv-bn": graphs.conv_bn(),
    "lstm": graphs.lstm(),
    "identity": graphs.identity_shared(),
}


def _float_initializers(model):
    out = {}
    for init in model.graph.initializer:
        out[init.name] = init
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out.update({i.name: i for i in attr.g.initializer})
    return out


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(
    ("bits", "quant"), [(8, "uniform"), (4, "uniform"), (16, "uniform"), (4, "codebook")]
)
def test_quantized_model_matches_original(tmp_path, name, bits, quant):
    src = save(CASES[name], tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=bits, quant=quant), NO_EVAL)
    assert report.tensors, "every case has at least one weight"
    onnx.checker.check_model(str(out), full_check=True)
    feeds = None
    if name == "if":
        x = rand((4, 4), 7)
        for flag in (True, False):
            assert_close_outputs(
                src, out, {"x": x, "c": np.array(flag)}, 0.999 if bits == 8 else 0.95
            )
        return
    assert_close_outputs(src, out, feeds, 0.999 if bits == 8 else 0.95)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float_weights_are_gone_and_the_rest_is_bit_identical(tmp_path, name):
    src = save(CASES[name], tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), NO_EVAL)
    before = _float_initializers(onnx.load(src))
    after = _float_initializers(onnx.load(out))
    weights = {t.name for t in report.tensors}
    for w in weights:
        assert w not in after  # no dead float copy left behind
        assert any(name.startswith(f"{w}.") for name in after)
    folded = {"gamma", "beta", "mean", "var"} if name == "conv-bn" else set()
    for keep, proto in before.items():
        if keep in folded:  # the statistics of a BatchNormalization folded into its Conv
            assert keep not in after
        elif keep not in weights:
            assert after[keep].SerializeToString() == proto.SerializeToString()


def test_threshold_zeroes_whole_rows_along_the_output_axis(tmp_path):
    # Gemm with transB=0: output neurons are the columns of W (axis 1).
    w = rand((6, 5), 1)
    w[:, 2] *= 0.01
    w[:, 4] *= 0.02
    model = make_model(
        [helper.make_node("Gemm", ["x", "W"], ["y"])],
        [("x", FLOAT, ["N", 6])],
        [("y", FLOAT, ["N", 5])],
        [tensor("W", w)],
    )
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(threshold=0.05, bits=8), NO_EVAL)
    (rec,) = report.tensors
    assert (rec.axis, rec.rows_pruned) == (1, 2)
    info = {t.name: t for t in inspect_model(out).tensors}
    assert info["W"].zero_rows == 2
    ya, yb, _ = run_both(src, out)
    assert np.all(yb[0][:, [2, 4]] == 0)  # pruned neurons output exactly zero
    np.testing.assert_allclose(yb[0][:, [0, 1, 3]], ya[0][:, [0, 1, 3]], rtol=0.02, atol=0.02)


def test_sparsity_prune_only_keeps_floats(tmp_path):
    src = save(graphs.matmul(), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(sparsity=0.5, bits=None), NO_EVAL)
    (rec,) = report.tensors
    assert rec.to_dict()["sparsity_after"] == 0.5
    w = onnx.numpy_helper.to_array(_float_initializers(onnx.load(out))["W"])
    assert w.dtype == np.float32 and np.count_nonzero(w) == 6
    run_both(src, out)


def test_same_inputs_give_byte_identical_outputs(tmp_path):
    src = save(graphs.conv(), tmp_path / "in.onnx")
    cfg = CompressConfig(threshold=0.1, bits=4)
    compress(src, tmp_path / "a.onnx", cfg, NO_EVAL)
    compress(src, tmp_path / "b.onnx", cfg, NO_EVAL)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_external_data_in_and_out(tmp_path):
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", FLOAT, ["N", 64])],
        [("y", FLOAT, ["N", 32])],
        [tensor("W", rand((64, 32), 1))],
    )
    src = tmp_path / "in.onnx"
    onnx.save(model, src, save_as_external_data=True, location="in.weights", size_threshold=0)
    digest = hashlib.sha256((tmp_path / "in.weights").read_bytes()).hexdigest()
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), NO_EVAL)
    data = tmp_path / "out.onnx.data"
    assert data.exists()
    size = data.stat().st_size
    assert report.compressed.file_bytes == out.stat().st_size + size
    assert (
        report.original.file_bytes == src.stat().st_size + (tmp_path / "in.weights").stat().st_size
    )
    compress(src, out, CompressConfig(bits=8), NO_EVAL)  # again: rewritten, not appended
    assert data.stat().st_size == size
    assert hashlib.sha256((tmp_path / "in.weights").read_bytes()).hexdigest() == digest
    assert_close_outputs(src, out, min_cosine=0.999)


def test_float16_weights(tmp_path):
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", onnx.TensorProto.FLOAT16, ["N", 8])],
        [("y", onnx.TensorProto.FLOAT16, ["N", 4])],
        [tensor("W", rand((8, 4), 1, np.float16))],
    )
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    compress(src, out, CompressConfig(bits=8), NO_EVAL)
    feeds = {"x": rand((3, 8), 2, np.float16)}
    assert_close_outputs(src, out, feeds, min_cosine=0.999)


def test_in_memory_model_is_not_modified(tmp_path):
    model = graphs.conv()
    before = model.SerializeToString()
    report = compress(model, tmp_path / "out.onnx", CompressConfig(threshold=0.1), EvalConfig())
    assert model.SerializeToString() == before
    assert report.evaluation is not None and report.evaluation.source == "synthetic"
    assert report.ratio < 1


@pytest.mark.parametrize("bits", [8, None])
def test_large_tensors_are_streamed_in_and_out(tmp_path, bits):
    # 256x384 fp32 = 384 KiB: above the size that is read lazily and streamed on save.
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["y"]),
        ],
        [("x", FLOAT, ["N", 256])],
        [("y", FLOAT, ["N", 384])],
        [tensor("W", rand((256, 384), 1)), tensor("B", rand((1, 384), 2) + rand((64, 384), 3)[:1])],
    )
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    compress(src, out, CompressConfig(sparsity=0.3, bits=bits), NO_EVAL)
    onnx.checker.check_model(str(out), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]
    assert_close_outputs(src, out, min_cosine=0.99)
    loaded = onnx.load(out)
    stored = {t.name: t for t in loaded.graph.initializer}
    if bits is None:  # pruned floats: bitmask + the non-zero values (leading 0 entry)
        nz = onnx.numpy_helper.to_array(stored["W.nz"])
        assert nz.dtype == np.float32 and nz.size == 1 + 256 * 384 - int(0.3 * 256 * 384)
    else:
        assert "W" not in stored
        assert stored["W.mask"].data_type == onnx.TensorProto.UINT8  # 30% zeros: bitmask wins
        assert stored["W.nz"].data_type == onnx.TensorProto.INT8


def test_failed_write_keeps_the_previous_output_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import errno

    from prunequant_cli import model_io
    from prunequant_cli.errors import OutputError

    src = save(graphs.conv(), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous output")

    def full_disk(model, path, data_name):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_io, "_write", full_disk)
    with pytest.raises(OutputError, match="No space left on device"):
        compress(src, out, CompressConfig(bits=8), NO_EVAL)
    assert out.read_bytes() == b"previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]


def test_a_symlink_at_the_output_is_neither_followed_nor_replaced(tmp_path):
    from prunequant_cli.errors import OutputError

    src = save(graphs.conv(), tmp_path / "in.onnx")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out.onnx"
    out.symlink_to(victim)
    with pytest.raises(OutputError, match="is a symlink"):
        compress(src, out, CompressConfig(bits=8), NO_EVAL)
    assert victim.read_text() == "keep me"
    assert out.is_symlink()


def test_a_threshold_above_the_mean_share_is_called_out(tmp_path):
    src = save(graphs.gemm(1), tmp_path / "in.onnx")
    report = compress(src, tmp_path / "o.onnx", CompressConfig(threshold=0.5), NO_EVAL)
    assert report.tensors[0].rows_pruned >= 2
    assert any("mean is 1/rows" in n for n in report.to_dict()["notes"])
    quiet = compress(src, tmp_path / "p.onnx", CompressConfig(threshold=0.01), NO_EVAL)
    assert quiet.notes == []


def test_ir3_initializers_listed_as_inputs_are_compressed(tmp_path):
    # IR 3 requires every initializer to be a graph input (old exporters, model zoos).
    w, b = rand((4, 3, 3, 3), 1), rand((4,), 2)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "ir3",
        [
            helper.make_tensor_value_info("x", FLOAT, [1, 3, 6, 6]),
            helper.make_tensor_value_info("W", FLOAT, [4, 3, 3, 3]),
            helper.make_tensor_value_info("B", FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", FLOAT, [1, 4, 4, 4])],
        initializer=[tensor("W", w), tensor("B", b)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    onnx.checker.check_model(model)
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), EvalConfig(latency_runs=1))
    assert [t.name for t in report.tensors] == ["W"]
    assert any("IR version 3" in n for n in report.notes)
    written = onnx.load(out)
    assert written.ir_version == 4
    assert [i.name for i in written.graph.input] == ["x"]
    onnx.checker.check_model(written)
    assert report.evaluation.outputs[0].cosine > 0.999


def test_float16_where_whole_model_converters_break(tmp_path):
    """If branches, Cast nodes, node names repeated across graphs: only the weights change."""
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y_then"], name="dup")],
        "then",
        [],
        [helper.make_tensor_value_info("y_then", FLOAT, ["N", 3])],
    )
    else_g = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x64"], name="dup", to=onnx.TensorProto.DOUBLE),
            helper.make_node("Cast", ["x64"], ["x32"], name="cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("MatMul", ["x32", "W"], ["y_else"], name="matmul"),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("y_else", FLOAT, ["N", 3])],
    )
    model = make_model(
        [helper.make_node("If", ["c"], ["y"], name="dup", then_branch=then_g, else_branch=else_g)],
        [("x", FLOAT, ["N", 4]), ("c", onnx.TensorProto.BOOL, [])],
        [("y", FLOAT, ["N", 3])],
        [tensor("W", rand((4, 3), 1))],
    )
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=16), NO_EVAL)
    assert [t.encoding for t in report.tensors] == ["float16"]
    for flag in (True, False):
        ya, yb = assert_close_outputs(src, out, {"x": rand((2, 4), 3), "c": np.array(flag)}, 0.9999)
        np.testing.assert_allclose(yb[0], ya[0], rtol=2e-3, atol=2e-3)


def _sparse_matmul(sparse):
    """y = x·W for a [32, 16] W held as ``sparse``."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "sparse",
        [helper.make_tensor_value_info("x", FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 16])],
        sparse_initializer=[sparse],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("coordinates", [False, True])
def test_sparse_initializers_are_read_and_compressed(tmp_path, coordinates):
    w = rand((32, 16), 1)
    w[np.random.default_rng(2).random(w.shape) < 0.9] = 0
    flat = np.flatnonzero(w)
    idx = np.stack(np.unravel_index(flat, w.shape), axis=1) if coordinates else flat
    sparse = helper.make_sparse_tensor(
        tensor("W", w.reshape(-1)[flat]), tensor("W_idx", idx.astype(np.int64)), list(w.shape)
    )
    model = _sparse_matmul(sparse)
    onnx.checker.check_model(model)
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), EvalConfig(latency_runs=1))
    assert [t.name for t in report.tensors] == ["W"]
    assert any("sparse initializer" in n for n in report.notes)
    assert report.evaluation.outputs[0].cosine > 0.999
    assert not onnx.load(out).graph.sparse_initializer
    run_both(src, out)


def test_weights_in_constant_nodes_inside_if_branches(tmp_path):
    def branch(name, seed):
        return helper.make_graph(
            [
                helper.make_node(
                    "Constant", [], [f"W_{name}"], value=tensor(f"W_{name}", rand((4, 3), seed))
                ),
                helper.make_node(
                    "Constant",
                    [],
                    [f"shape_{name}"],
                    value=tensor(f"s_{name}", np.array([-1, 3], np.int64)),
                ),
                helper.make_node("MatMul", ["x", f"W_{name}"], [f"m_{name}"]),
                helper.make_node("Reshape", [f"m_{name}", f"shape_{name}"], [f"y_{name}"]),
            ],
            name,
            [],
            [helper.make_tensor_value_info(f"y_{name}", FLOAT, ["N", 3])],
        )

    model = make_model(
        [
            helper.make_node(
                "If", ["c"], ["y"], then_branch=branch("then", 1), else_branch=branch("else", 2)
            )
        ],
        [("x", FLOAT, ["N", 4]), ("c", onnx.TensorProto.BOOL, [])],
        [("y", FLOAT, ["N", 3])],
    )
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=4), NO_EVAL)
    assert sorted(t.name for t in report.tensors) == ["W_else", "W_then"]
    assert any("Constant nodes" in n for n in report.notes)
    # inspect finds them compressed inside their branches, and counts them as weights
    shown = {t.name: t for t in inspect_model(out, session_memory=False).tensors}
    for name, graph in (("W_then", "then"), ("W_else", "else")):
        assert shown[name].is_weight and shown[name].graph == graph
        assert shown[name].encoding not in ("float", "other")
    assert inspect_model(out, session_memory=False).to_dict()["totals"]["weights"] == 2
    for flag in (True, False):
        assert_close_outputs(src, out, {"x": rand((3, 4), 5), "c": np.array(flag)}, 0.97)


def test_large_native_int4_weights_are_written_and_read_back(tmp_path):
    # 512x384 weights: above the size read lazily; native INT4 packs two codes per byte.
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", FLOAT, ["N", 512])],
        [("y", FLOAT, ["N", 384])],
        [tensor("W", rand((512, 384), 1))],
        opset=21,
        ir_version=10,
    )
    src, out = save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=4, format="dense", all_layers=True), NO_EVAL)
    assert [t.encoding for t in report.tensors] == ["int4"]
    # what was written reads back (lazily, INT4 unpacked) and passes through a second run
    compress(out, tmp_path / "again.onnx", CompressConfig(bits=8), NO_EVAL)
    assert_close_outputs(src, out, min_cosine=0.99)
    assert_close_outputs(out, tmp_path / "again.onnx", min_cosine=0.9999)


def _annotated_model(path):
    """A Gemm whose nodes (one inside an If branch) carry exporter doc strings and metadata."""
    import onnx
    from onnx import TensorProto, helper

    note = "File model.py, line 12, in forward: " + "x" * 2000

    def annotate(node):
        node.doc_string = note
        entry = node.metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.stack_trace", note
        return node

    branch = helper.make_graph(
        [annotate(helper.make_node("Relu", ["y"], ["z1"]))], "then", [],
        [helper.make_tensor_value_info("z1", TensorProto.FLOAT, ["N", 16])],
    )  # fmt: skip
    other = helper.make_graph(
        [annotate(helper.make_node("Neg", ["y"], ["z2"]))], "else", [],
        [helper.make_tensor_value_info("z2", TensorProto.FLOAT, ["N", 16])],
    )  # fmt: skip
    nodes = [
        annotate(helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)),
        annotate(helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=other)),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor("W", TensorProto.FLOAT, [16, 32], rand((16, 32)).ravel())],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"author": "kept"})
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_strip_drops_exporter_annotations_but_not_the_models_own(tmp_path):
    import onnx

    src = _annotated_model(tmp_path / "m.onnx")
    before = inspect_model(src, session_memory=False).to_dict()["metadata_bytes"]
    assert before["strippable"] > 4 * 4000 and before["model"] > 0
    plain = compress(src, tmp_path / "plain.onnx", CompressConfig(bits=8), NO_EVAL)
    stripped = compress(src, tmp_path / "s.onnx", CompressConfig(bits=8, strip=True), NO_EVAL)
    saved = plain.compressed.file_bytes - stripped.compressed.file_bytes
    assert saved >= before["strippable"]  # the bytes, and their framing
    assert stripped.settings["strip"] is True
    assert any(
        "--strip removed 4 doc string(s) and 4 metadata entries" in n for n in stripped.notes
    )
    after = inspect_model(tmp_path / "s.onnx", session_memory=False).to_dict()["metadata_bytes"]
    assert after == {"total": before["model"], "model": before["model"], "strippable": 0}
    assert {p.key: p.value for p in onnx.load(tmp_path / "s.onnx").metadata_props} == {
        "author": "kept"
    }
    feeds = {"x": rand((3, 32)), "c": np.array(True)}
    a, b, _ = run_both(tmp_path / "plain.onnx", tmp_path / "s.onnx", feeds=feeds)
    assert np.array_equal(a[0], b[0])


def test_a_sparse_initializer_with_external_data_in_the_folder_is_read(tmp_path):
    w = rand((32, 16), 1)
    w[np.random.default_rng(2).random(w.shape) < 0.9] = 0
    flat = np.flatnonzero(w)
    values = tensor("W", w.reshape(-1)[flat])
    (tmp_path / "w.bin").write_bytes(b"\0" * 8 + values.raw_data)  # at offset 8
    values.ClearField("raw_data")
    values.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "8"), ("length", str(4 * flat.size))):
        entry = values.external_data.add()
        entry.key, entry.value = key, value
    sparse = helper.make_sparse_tensor(values, tensor("W_idx", flat.astype(np.int64)), [32, 16])
    model = _sparse_matmul(sparse)
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), EvalConfig(latency_runs=1))
    assert [t.name for t in report.tensors] == ["W"]
    assert report.evaluation.outputs[0].cosine > 0.999
    x = rand((3, 32), 4)
    (y,) = session(out).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ w, rtol=0.02, atol=0.02)


def _loop_carrying(weight_as_constant: bool, through_identity: bool):
    """h ← tanh(h·W) three times, W handed to the Loop as state its body returns unchanged."""
    body_nodes = [
        helper.make_node("MatMul", ["h_in", "w_in"], ["hw"]),
        helper.make_node("Tanh", ["hw"], ["h_out"]),
        helper.make_node("Identity", ["c_in"], ["c_out"]),
    ]
    w_out = "w_in"
    if through_identity:
        body_nodes.append(helper.make_node("Identity", ["w_in"], ["w_out"]))
        w_out = "w_out"
    body = helper.make_graph(
        body_nodes,
        "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", FLOAT, ["N", 16]),
         helper.make_tensor_value_info("w_in", FLOAT, [16, 16])],
        [helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", FLOAT, ["N", 16]),
         helper.make_tensor_value_info(w_out, FLOAT, [16, 16])],
    )  # fmt: skip
    w = rand((16, 16), 3) / 4
    nodes, inits = [], [tensor("M", np.array(3, np.int64)), tensor("C", np.array(True))]
    if weight_as_constant:
        nodes.append(helper.make_node("Constant", [], ["W"], value=tensor("W", w)))
    else:
        inits.append(tensor("W", w))
    nodes.append(helper.make_node("Loop", ["M", "C", "x", "W"], ["h", "W_final"], body=body))
    return make_model(nodes, [("x", FLOAT, ["N", 16])], [("h", FLOAT, ["N", 16])], inits)


@pytest.mark.parametrize(("constant", "identity"), [(True, False), (False, True)])
def test_weights_a_loop_carries_unchanged_are_compressed(tmp_path, constant, identity):
    src = save(_loop_carrying(constant, identity), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), EvalConfig(latency_runs=1))
    assert [t.name for t in report.tensors] == ["W"]
    assert any("a Loop carried unchanged" in n for n in report.notes)
    assert report.evaluation.outputs[0].cosine > 0.9999
    assert_close_outputs(src, out, min_cosine=0.9999)
    loop = next(n for n in onnx.load(out).graph.node if n.op_type == "Loop")
    assert len(loop.input) == 3 and len(loop.output) == 1  # the weight's slot is gone


def test_a_weight_read_through_a_transpose_is_stored_transposed_and_compressed(tmp_path):
    w = rand((16, 32), 5)  # stored [out, in], read through Transpose by a MatMul
    model = make_model(
        [helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
         helper.make_node("MatMul", ["x", "Wt"], ["y"])],
        [("x", FLOAT, ["N", 32])],
        [("y", FLOAT, ["N", 16])],
        [tensor("W", w)],
    )  # fmt: skip
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), EvalConfig(latency_runs=1))
    assert [t.name for t in report.tensors] == ["Wt"]
    assert any("read through a Transpose" in n for n in report.notes)
    assert_close_outputs(src, out, min_cosine=0.9999)
    assert "Transpose" not in {n.op_type for n in onnx.load(out).graph.node}


def _conv_bn(bias: bool, bn_out_is_output: bool, extra_use: bool = False, shared: bool = False):
    """Conv (with or without bias) -> BatchNormalization -> Relu; optionally the Conv's output
    also read elsewhere, or its weight shared with a second Conv."""
    conv_inputs = ["x", "W", "b"] if bias else ["x", "W"]
    nodes = [
        helper.make_node("Conv", conv_inputs, ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["n"], epsilon=1e-3),
        helper.make_node("Relu", ["n"], ["y"]),
    ]
    outputs = [("y", FLOAT, ["N", 8, 6, 6])]
    if bn_out_is_output:
        outputs.append(("n", FLOAT, ["N", 8, 6, 6]))
    if extra_use:
        nodes.append(helper.make_node("Sigmoid", ["c"], ["s"]))
        outputs.append(("s", FLOAT, ["N", 8, 6, 6]))
    if shared:
        nodes.append(helper.make_node("Conv", ["x", "W"], ["c2"], pads=[1, 1, 1, 1]))
        outputs.append(("c2", FLOAT, ["N", 8, 6, 6]))
    inits = [
        tensor("W", rand((8, 3, 3, 3), 1)),
        tensor("g", rand((8,), 2) + 1.5),
        tensor("be", rand((8,), 3)),
        tensor("m", rand((8,), 4)),
        tensor("v", np.abs(rand((8,), 5)) + 0.2),
    ]
    if bias:
        inits.append(tensor("b", rand((8,), 6)))
    return make_model(nodes, [("x", FLOAT, ["N", 3, 6, 6])], outputs, inits)


@pytest.mark.parametrize(("bias", "bn_out_is_output"), [(False, False), (True, True)])
def test_a_batchnorm_after_a_conv_is_folded_into_it(tmp_path, bias, bn_out_is_output):
    src = save(_conv_bn(bias, bn_out_is_output), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=None), NO_EVAL)
    assert any("1 BatchNormalization(s) folded into the Conv" in n for n in report.notes)
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    assert "BatchNormalization" not in {n.op_type for n in written.graph.node}
    assert [o.name for o in written.graph.output] == [o.name for o in onnx.load(src).graph.output]
    assert out.stat().st_size < src.stat().st_size
    ya, yb, _ = run_both(src, out)
    for a, b in zip(ya, yb, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    # and compressed: the folded weight is what gets codes
    report = compress(src, out, CompressConfig(bits=8), NO_EVAL)
    assert [t.name for t in report.tensors] == ["W"]
    assert_close_outputs(src, out, min_cosine=0.9999)


@pytest.mark.parametrize("case", ["extra_use", "shared"])
def test_a_batchnorm_stays_where_folding_would_change_other_readers(tmp_path, case):
    src = save(_conv_bn(True, False, **{case: True}), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), NO_EVAL)
    assert not any("BatchNormalization" in n for n in report.notes)
    assert "BatchNormalization" in {n.op_type for n in onnx.load(out).graph.node}
    assert_close_outputs(src, out, min_cosine=0.9999)


@pytest.mark.parametrize("cached", [True, False])
def test_a_small_models_weights_are_read_once_a_large_ones_each_time(tmp_path, monkeypatch, cached):
    from prunequant_cli import model_io

    if not cached:
        monkeypatch.setattr(model_io, "READ_CACHE_BYTES", 0)
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", FLOAT, ["N", 256])],
        [("y", FLOAT, ["N", 384])],
        [tensor("W", rand((256, 384), 1))],  # 384 KiB: read lazily from the file
    )
    src = save(model, tmp_path / "in.onnx")
    weight = model_io.load_model(src).model.graph.initializers["W"].const_value
    first, second = weight.numpy(), weight.numpy()
    np.testing.assert_array_equal(first, second)
    assert (first is second) == cached
    if cached:  # shared by every reader, so none may change it
        with pytest.raises(ValueError, match="read-only"):
            first[0, 0] = 1.0
    out = tmp_path / "out.onnx"
    compress(src, out, CompressConfig(threshold=1e-3, bits=4), NO_EVAL)
    assert_close_outputs(src, out, min_cosine=0.95)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    monkeypatch.setattr(model_io, "READ_CACHE_BYTES", 0 if cached else 1 << 30)
    compress(src, out, CompressConfig(threshold=1e-3, bits=4), NO_EVAL)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest  # the same bytes either way


def test_batchnorm_folding_reads_shared_statistics_and_counts_the_original_as_it_is(tmp_path):
    """One Constant read as both mean and bias of a BatchNormalization; the report counts the
    original's parameters before the fold."""
    model = make_model(
        [
            helper.make_node("Constant", [], ["z"], value=tensor("zv", np.zeros(8, np.float32))),
            helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "g", "z", "z", "v"], ["y"]),
        ],
        [("x", FLOAT, ["N", 3, 6, 6])],
        [("y", FLOAT, ["N", 8, 6, 6])],
        [
            tensor("W", rand((8, 3, 3, 3), 1)),
            tensor("g", rand((8,), 2) + 1.5),
            tensor("v", np.abs(rand((8,), 3)) + 0.2),
        ],
    )
    src = save(model, tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), NO_EVAL)
    assert any("1 BatchNormalization(s) folded" in n for n in report.notes)
    assert report.original.parameters == 8 * 27 + 8 + 8  # W, g, v (z is a Constant node)
    assert report.compressed.parameters == 8 * 27 + 8  # W and its new bias
    assert_close_outputs(src, out, min_cosine=0.9999)


def test_batchnorm_is_not_folded_in_training_mode_or_into_an_excluded_weight(tmp_path):
    # Before opset 14, a BatchNormalization with its statistics outputs runs in training mode.
    train = _conv_bn(True, False)
    bn = next(n for n in train.graph.node if n.op_type == "BatchNormalization")
    bn.output.extend(["rm", "rv", "sm", "sv"])
    train.opset_import[0].version = 9
    src = save(train, tmp_path / "train.onnx")
    out = tmp_path / "out.onnx"
    report = compress(src, out, CompressConfig(bits=8), NO_EVAL)
    assert not any("BatchNormalization" in n for n in report.notes)
    ya, yb, _ = run_both(src, out)
    np.testing.assert_allclose(yb[0], ya[0], rtol=0.05, atol=0.05)
    src = save(_conv_bn(True, False), tmp_path / "in.onnx")
    report = compress(src, out, CompressConfig(bits=8, exclude=("W",)), NO_EVAL)
    assert not any("BatchNormalization" in n for n in report.notes)
    weights = {t.name: t for t in onnx.load(out).graph.initializer}
    assert (
        weights["W"].SerializeToString() == onnx.load(src).graph.initializer[0].SerializeToString()
    )
