"""Dense pruning: channels removed, consumers rewritten, dead channels removed exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import FLOAT, SAMPLES, assert_close_outputs, make_model, rand, run_both, save, tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import helper

from prunequant_cli import CompressConfig, EvalConfig, compress
from prunequant_cli.pruning import n_m_mask

NO_EVAL = EvalConfig(enabled=False)
DEAD = CompressConfig(prune_mode="dense", threshold=1e-12, bits=None)  # removes all-zero rows only


def _kill(w, rows, axis=0):
    w = w.copy()
    index = [slice(None)] * w.ndim
    index[axis] = rows
    w[tuple(index)] = 0
    return w


def _shapes(path):
    return {t.name: list(t.dims) for t in onnx.load(path).graph.initializer}


@pytest.mark.parametrize("through_identity", [False, True])
def test_conv_bn_relu_conv_dead_channels_removed_exactly(tmp_path, through_identity):
    """The BatchNormalization is folded into the Conv first; read through an Identity it
    is not, and dense pruning cuts its statistics."""
    w1 = _kill(rand((8, 3, 3, 3), 1), [1, 5])
    c1 = "i1" if through_identity else "c1"
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            *([helper.make_node("Identity", ["c1"], ["i1"])] if through_identity else []),
            helper.make_node("BatchNormalization", [c1, "g", "be", "m", "v"], ["n1"]),
            helper.make_node("Relu", ["n1"], ["r1"]),
            helper.make_node("Conv", ["r1", "W2", "b2"], ["y"]),  # no padding: folding is exact
        ],
        [("x", FLOAT, ["N", 3, 8, 8])],
        [("y", FLOAT, ["N", 4, 6, 6])],
        [
            tensor("W1", w1),
            tensor("b1", rand((8,), 2)),
            tensor("g", rand((8,), 3) + 2),
            tensor("be", np.abs(rand((8,), 4)) + 0.5),
            tensor("m", rand((8,), 5)),
            tensor("v", np.abs(rand((8,), 6)) + 0.5),
            tensor("W2", rand((4, 8, 3, 3), 7)),
            tensor("b2", rand((4,), 8)),
        ],
    )
    src, out = save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx"
    report = compress(src, out, DEAD, NO_EVAL)
    shapes = _shapes(out)
    assert shapes["W1"] == [6, 3, 3, 3] and shapes["W2"] == [4, 6, 3, 3]
    if through_identity:
        assert shapes["g"] == shapes["v"] == [6]
    else:
        assert "g" not in shapes and shapes["b1"] == [6]
    assert report.compressed.parameters < report.original.parameters
    ya, yb, _ = run_both(src, out)
    np.testing.assert_allclose(yb[0], ya[0], rtol=1e-5, atol=1e-5)


def test_conv_relu_flatten_gemm_blocks_of_columns(tmp_path):
    w1 = _kill(rand((6, 2, 3, 3), 1), [0, 4])
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("Flatten", ["p1"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "W2", "b2"], ["y"], transB=1),
        ],
        [("x", FLOAT, ["N", 2, 4, 4])],
        [("y", FLOAT, ["N", 5])],
        [
            tensor("W1", w1),
            tensor("b1", np.abs(rand((6,), 2))),
            tensor("W2", rand((5, 24), 3)),
            tensor("b2", rand((5,), 4)),
        ],
    )
    src, out = save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx"
    compress(src, out, DEAD, NO_EVAL)
    assert _shapes(out)["W2"] == [5, 16]  # two channels of 2x2 positions gone
    ya, yb, _ = run_both(src, out)
    np.testing.assert_allclose(yb[0], ya[0], rtol=1e-5, atol=1e-5)  # ReLU(b) folded into b2


def test_gemm_and_matmul_chains(tmp_path):
    w1 = _kill(rand((8, 6), 1), [2, 3], axis=1)  # MatMul [in, out]: neurons are columns
    b1 = rand((6,), 2)
    b1[[2, 3]] = -1.0  # dead and negative: ReLU gives 0, nothing to fold into a MatMul
    w2 = _kill(rand((5, 6), 3), [1], axis=0)  # Gemm transB=1 rows
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Relu", ["hb"], ["r"]),
            helper.make_node("MatMul", ["r", "W2t"], ["h2"]),
            helper.make_node("Relu", ["h2"], ["r2"]),
            helper.make_node("Gemm", ["r2", "W3", "b3"], ["y"], transB=1),
        ],
        [("x", FLOAT, ["N", 8])],
        [("y", FLOAT, ["N", 3])],
        [
            tensor("W1", w1),
            tensor("b1", b1),
            tensor("W2t", w2.T.copy()),
            tensor("W3", rand((3, 5), 4)),
            tensor("b3", rand((3,), 5)),
        ],
    )
    src, out = save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx"
    report = compress(src, out, DEAD, NO_EVAL)
    shapes = _shapes(out)
    assert shapes["W1"][1] < 6 and shapes["b1"] == [shapes["W1"][1]]
    assert shapes["W3"] == [3, 4]
    assert "dense pruning" in " ".join(report.notes)
    ya, yb, _ = run_both(src, out)
    np.testing.assert_allclose(yb[0], ya[0], rtol=1e-5, atol=1e-5)


def test_residual_add_is_left_alone_and_reported(tmp_path):
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Add", ["r1", "x"], ["s"]),  # residual: channels meet x
            helper.make_node("Conv", ["s", "W2"], ["y"]),
        ],
        [("x", FLOAT, ["N", 4, 5, 5])],
        [("y", FLOAT, ["N", 2, 5, 5])],
        [tensor("W1", _kill(rand((4, 4, 3, 3), 1), [0])), tensor("W2", rand((2, 4, 1, 1), 2))],
    )
    src, out = save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx"
    report = compress(src, out, DEAD, NO_EVAL)
    assert _shapes(out)["W1"] == [4, 4, 3, 3]
    assert any("Add with another branch" in reason for _, reason in report.skipped)
    assert_close_outputs(src, out, min_cosine=0.99999)


def test_dense_pruning_of_the_sample_cnn_composes_with_quantization(tmp_path):
    out = tmp_path / "out.onnx"
    ev = EvalConfig(data=SAMPLES / "digits_cnn.npz", latency_runs=3)
    report = compress(
        SAMPLES / "digits_cnn.onnx",
        out,
        CompressConfig(prune_mode="dense", sparsity=0.25, bits=8),
        ev,
    )
    shapes = _shapes(out)
    assert shapes["conv1.weight.q"][0] == 12 and shapes["fc1.weight.q"][0] == 48
    assert report.compressed.parameters < 0.6 * report.original.parameters
    assert report.evaluation.accuracy_drop_points <= 2.0
    assert {t.rows_pruned for t in report.tensors} >= {4, 8, 16}


@settings(max_examples=100, deadline=None)
@given(
    w=arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 13)),
        elements=st.floats(-10, 10, width=32),
    ),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8)]),
)
def test_n_m_keeps_at_most_n_of_every_m(w, nm):
    n, m = nm
    kept = np.where(n_m_mask(w, n, m, axis=1), 0, w)
    full = w.shape[1] - w.shape[1] % m
    groups = kept[:, :full].reshape(w.shape[0], -1, m)
    assert (np.count_nonzero(groups, axis=-1) <= n).all()
    np.testing.assert_array_equal(kept[:, full:], w[:, full:])  # the short tail stays whole


def test_two_four_pruning_on_the_sample_mlp(tmp_path):
    report = compress(
        SAMPLES / "digits_mlp.onnx",
        tmp_path / "o.onnx",
        CompressConfig(prune_mode="2:4", bits=8),
        EvalConfig(data=SAMPLES / "digits_mlp.npz", latency_runs=2),
    )
    for t in report.tensors:
        assert t.to_dict()["sparsity_after"] >= 0.5
    assert any("2:4" in n for n in report.notes)
    assert report.evaluation.outputs[0].nonfinite == 0


@pytest.mark.parametrize(
    ("mode", "extra", "message"),
    [
        ("dense", {}, "needs --threshold or --sparsity"),
        ("3:2", {}, "N:M"),
        ("2:4", {"sparsity": 0.5}, "prunes by itself"),
    ],
)
def test_prune_mode_usage_errors(mode, extra, message):
    from prunequant_cli.errors import UsageError

    with pytest.raises(UsageError, match=message):
        CompressConfig(prune_mode=mode, **extra)
