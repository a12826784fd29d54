"""Data-aware rounding: GPTQ against nearest rounding, pruned zeros, groups, determinism."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import FLOAT, SAMPLES, make_model, rand, run_both, tensor
from onnx import helper

from prunequant_cli.cli import main
from prunequant_cli.rounding import ColumnQuantizer, gptq, output_error


def _correlated(n=2000, k=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 12)) @ rng.standard_normal((12, k))
    return x + 0.1 * rng.standard_normal((n, k))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("asymmetric", [False, True])
def test_gptq_lowers_the_output_error_of_a_layer_with_correlated_inputs(bits, asymmetric):
    rng = np.random.default_rng(1)
    x = _correlated()
    h = x.T @ x
    w = rng.standard_normal((32, x.shape[1]))
    m = (1 << (bits - 1)) - 1
    if asymmetric:
        lo, hi = np.minimum(w.min(1, keepdims=True), 0), np.maximum(w.max(1, keepdims=True), 0)
        s = (hi - lo) / ((1 << bits) - 1)
        z = np.rint(-m - 1 - lo / s)
        q = ColumnQuantizer(np.repeat(s, w.shape[1], 1), np.repeat(z, w.shape[1], 1), -m - 1, m)
    else:
        s = np.abs(w).max(1, keepdims=True) / m
        q = ColumnQuantizer(np.repeat(s, w.shape[1], 1), None, -m, m)
    cols = range(w.shape[1])
    nearest = np.stack([q.decode(q(w[:, j], j), j) for j in cols], axis=1)
    codes = gptq(w, h, q)
    chosen = np.stack([q.decode(codes[:, j], j) for j in cols], axis=1)
    assert output_error(w, chosen, h) < 0.5 * output_error(w, nearest, h)
    assert codes.min() >= q.lo and codes.max() <= q.hi
    np.testing.assert_array_equal(codes, gptq(w, h, q))  # deterministic


def test_gptq_rounds_in_order_of_input_energy_whatever_order_the_inputs_are_stored_in():
    """Act-order: the columns are rounded in order of decreasing input energy, so storing
    the inputs in another order gives the same codes, moved."""
    rng = np.random.default_rng(4)
    x = _correlated(k=64)
    x[:, -4:] *= 30  # a few outlier inputs, stored last
    h = x.T @ x
    w = rng.standard_normal((16, 64))
    s = np.repeat(np.abs(w).max(1, keepdims=True) / 7, 64, 1)
    codes = gptq(w, h, ColumnQuantizer(s, None, -7, 7))
    perm = rng.permutation(64)
    moved = gptq(w[:, perm], h[np.ix_(perm, perm)], ColumnQuantizer(s[:, perm], None, -7, 7))
    np.testing.assert_array_equal(moved, codes[:, perm])


def test_pruned_zeros_stay_zero_and_no_error_lands_on_them():
    rng = np.random.default_rng(2)
    x = _correlated(k=64)
    w = rng.standard_normal((16, 64))
    keep = rng.random(w.shape) > 0.5
    w = w * keep
    s = np.abs(w).max(1, keepdims=True) / 7
    q = ColumnQuantizer(np.repeat(s, 64, 1), None, -7, 7)
    codes = gptq(w, x.T @ x, q, keep)
    assert np.all(codes[~keep] == 0)


def test_inputs_a_layer_never_sees_round_to_nearest():
    rng = np.random.default_rng(3)
    x = _correlated(k=32)
    x[:, 5] = 0.0  # a dead input
    w = rng.standard_normal((8, 32))
    s = np.abs(w).max(1, keepdims=True) / 7
    q = ColumnQuantizer(np.repeat(s, 32, 1), None, -7, 7)
    codes = gptq(w, x.T @ x, q)
    assert np.isfinite(codes).all()


def _halves(tmp_path, name):
    data = np.load(SAMPLES / f"{name}.npz")
    paths = []
    for part, rows in (("a", slice(0, None, 2)), ("b", slice(1, None, 2))):
        path = tmp_path / f"{name}.{part}.npz"
        np.savez(path, input=data["input"][rows], labels=data["labels"][rows])
        paths.append(path)
    return paths


def _compress(*args):
    r = CliRunner().invoke(main, ["compress", *map(str, args), "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_gains_3_db_of_held_out_sqnr_on_the_samples(tmp_path, name, bits):
    cal, held = _halves(tmp_path, name)
    src = SAMPLES / f"{name}.onnx"
    near = _compress(src, tmp_path / "n.onnx", "--bits", bits, "--data", held)
    out = tmp_path / "g.onnx"
    doc = _compress(
        src, out, "--bits", bits, "--rounding", "gptq", "--data", held, "--calibration-data", cal
    )
    assert doc["evaluation"]["calibration"] == {"source": "file", "samples": 225, "overlap": False}
    assert {t["rounding"] for t in doc["tensors"]} == {"gptq"}
    gain = doc["evaluation"]["outputs"][0]["sqnr_db"] - near["evaluation"]["outputs"][0]["sqnr_db"]
    assert gain >= 3.0
    assert doc["compressed"]["file_bytes"] <= 1.05 * near["compressed"]["file_bytes"]
    run_both(src, out, {"input": np.load(held)["input"]})
    again = tmp_path / "again.onnx"
    _compress(
        src, again, "--bits", bits, "--rounding", "gptq", "--data", held, "--calibration-data", cal
    )
    assert again.read_bytes() == out.read_bytes()


def test_gptq_with_pruning_keeps_the_zeros(tmp_path):
    cal, held = _halves(tmp_path, "digits_cnn")
    args = ["--bits", "4", "--sparsity", "0.5", "--data", held, "--calibration-data", cal]
    doc = _compress(SAMPLES / "digits_cnn.onnx", tmp_path / "g.onnx", *args, "--rounding", "gptq")
    for t in doc["tensors"]:
        assert t["sparsity_after"] >= 0.5 - 1e-9


def _grouped_conv(tmp_path, groups):
    w = rand((8, 8 // groups, 3, 3), seed=4)
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W"], ["y"], group=groups, pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["y"], ["out"]),
        ],
        [("x", FLOAT, ["N", 8, 6, 6])],
        [("out", FLOAT, ["N", 8, 6, 6])],
        [tensor("W", w)],
    )
    path = tmp_path / f"conv{groups}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_grouped_and_depthwise_convolutions(tmp_path, groups):
    src = _grouped_conv(tmp_path, groups)
    rng = np.random.default_rng(5)
    # channels and neighbouring pixels correlate, as in real feature maps
    base = np.kron(rng.standard_normal((64, 2, 3, 3)), np.ones((1, 1, 2, 2)))
    noise = 0.05 * rng.standard_normal((64, 8, 6, 6))
    x = (np.repeat(base, 4, axis=1) + noise).astype(np.float32)
    cal, held = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(cal, x=x[:32])
    np.savez(held, x=x[32:])
    near = _compress(src, tmp_path / "n.onnx", "--bits", "3", "--all-layers", "--data", held)
    doc = _compress(
        src, tmp_path / "g.onnx", "--bits", "3", "--all-layers", "--rounding", "gptq",
        "--data", held, "--calibration-data", cal,
    )  # fmt: skip
    assert doc["tensors"][0]["rounding"] == "gptq" and doc["tensors"][0]["bits"] == 3
    assert doc["evaluation"]["outputs"][0]["sqnr_db"] > near["evaluation"]["outputs"][0]["sqnr_db"]
    run_both(src, tmp_path / "g.onnx", {"x": x[32:]})


@pytest.mark.parametrize(("groups", "kernel"), [(1, 2), (2, 2), (1, 3)])
def test_transposed_convolutions(tmp_path, groups, kernel):
    """ConvTranspose W [C_in, C_out/group, k, k] is rounded per group as the matrix of what
    each input channel writes (exact for kernel = stride, an approximation where the
    written patches overlap): it beats nearest rounding either way."""
    w = rand((8, 8 // groups, kernel, kernel), seed=6)
    model = make_model(
        [helper.make_node("ConvTranspose", ["x", "W"], ["y"], group=groups, strides=[2, 2])],
        [("x", FLOAT, ["N", 8, 6, 6])],
        [("y", FLOAT, ["N", 8, 10 + kernel, 10 + kernel])],
        [tensor("W", w)],
    )
    src = tmp_path / "convt.onnx"
    onnx.save(model, src)
    rng = np.random.default_rng(7)
    base = rng.standard_normal((64, 2, 6, 6))
    x = (np.repeat(base, 4, axis=1) + 0.05 * rng.standard_normal((64, 8, 6, 6))).astype(np.float32)
    cal, held = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(cal, x=x[:32])
    np.savez(held, x=x[32:])
    args = ["--bits", "3", "--all-layers", "--data", held]
    near = _compress(src, tmp_path / "n.onnx", *args)
    gptq = ["--rounding", "gptq", "--calibration-data", cal]
    doc = _compress(src, tmp_path / "g.onnx", *args, *gptq)
    assert doc["tensors"][0]["rounding"] == "gptq"
    assert doc["evaluation"]["outputs"][0]["sqnr_db"] > near["evaluation"]["outputs"][0]["sqnr_db"]
    assert doc["compressed"]["file_bytes"] <= near["compressed"]["file_bytes"] + 64
    run_both(src, tmp_path / "g.onnx", {"x": x[32:]})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounding", "gptq", "--quant", "codebook"], "uniform or asymmetric"),
        (["--rounding", "gptq", "--no-eval"], "calibration inputs"),
        (["--rounding", "gptq", "--bits", "16"], "uniform or asymmetric"),
        (["--calibration-data", "x.npz"], "nothing calibrates"),
    ],
)
def test_rounding_misuse_is_a_usage_error(tmp_path, args, message):
    r = CliRunner().invoke(
        main, ["compress", str(SAMPLES / "digits_mlp.onnx"), str(tmp_path / "o.onnx"), *args]
    )
    assert r.exit_code == 2 and message in r.stderr
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_weights_are_rounded_from_their_inputs(tmp_path, op, direction):
    """W from the input sequence, R from the previous hidden states (Y shifted by a step)."""
    hidden, features, dirs = 16, 12, 2 if direction == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    model = make_model(
        [
            helper.make_node(
                op, ["x", "W", "R", "B", "", "h0"], ["Y"], hidden_size=hidden, direction=direction
            )
        ],
        [("x", FLOAT, [10, "N", features]), ("h0", FLOAT, [dirs, "N", hidden])],
        [("Y", FLOAT, [10, dirs, "N", hidden])],
        [
            tensor("W", rand((dirs, gates * hidden, features), seed=6) * 0.3),
            tensor("R", rand((dirs, gates * hidden, hidden), seed=7) * 0.3),
            tensor("B", np.zeros((dirs, 2 * gates * hidden), np.float32)),
        ],
    )
    src = tmp_path / "rnn.onnx"
    onnx.save(model, src)
    rng = np.random.default_rng(8)
    base = rng.standard_normal((10, 64, 3)) @ rng.standard_normal((3, features))
    x = (base + 0.05 * rng.standard_normal((10, 64, features))).astype(np.float32)
    h0 = (0.1 * rng.standard_normal((dirs, 64, hidden))).astype(np.float32)
    cal, held = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(cal, x=x[:, :32], h0=h0[:, :32])
    np.savez(held, x=x[:, 32:], h0=h0[:, 32:])
    near = _compress(src, tmp_path / "n.onnx", "--bits", "3", "--data", held)
    out = tmp_path / "g.onnx"
    doc = _compress(
        src, out, "--bits", "3", "--rounding", "gptq", "--data", held, "--calibration-data", cal
    )
    assert {t["name"]: t["rounding"] for t in doc["tensors"]} == {"W": "gptq", "R": "gptq"}
    assert doc["evaluation"]["outputs"][0]["sqnr_db"] > near["evaluation"]["outputs"][0]["sqnr_db"]
    run_both(src, out, {"x": x[:, 32:], "h0": h0[:, 32:]})


def test_gptq_with_pruning_beats_nearest_on_the_layer_output():
    """A pruned weight is rounded to 0 and its error spread on, as any other code."""
    rng = np.random.default_rng(9)
    x = _correlated(k=48)
    h = x.T @ x
    w = rng.standard_normal((64, 48))
    keep = rng.random(w.shape) > 0.5
    w = w * keep
    s = np.abs(w).max(1, keepdims=True) / 7
    q = ColumnQuantizer(np.repeat(s, 48, 1), None, -7, 7)
    cols = range(48)
    nearest = np.stack([q.decode(q(w[:, j], j), j) for j in cols], axis=1)
    codes = gptq(w, h, q, keep)
    chosen = np.stack([q.decode(codes[:, j], j) for j in cols], axis=1)
    assert np.all(codes[~keep] == 0)
    assert output_error(w, chosen, h) < output_error(w, nearest, h)


def test_a_fixed_batch_model_is_calibrated_in_whole_batches(tmp_path):
    model = onnx.load(SAMPLES / "digits_mlp.onnx")
    for v in [*model.graph.input, *model.graph.output]:
        v.type.tensor_type.shape.dim[0].dim_value = 8
    src = tmp_path / "mlp8.onnx"
    onnx.save(model, src)
    data = np.load(SAMPLES / "digits_mlp.npz")
    cal, held = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(cal, input=data["input"][:64], labels=data["labels"][:64])
    np.savez(held, input=data["input"][64:128], labels=data["labels"][64:128])
    doc = _compress(
        src, tmp_path / "o.onnx", "--bits", "4", "--rounding", "gptq", "--bias-correction",
        "--calibration-data", cal, "--data", held,
    )  # fmt: skip
    assert doc["evaluation"]["samples"] == 64
    assert {t["rounding"] for t in doc["tensors"]} == {"gptq"}


def test_bias_means_and_gptq_statistics_come_from_one_run_of_the_original(tmp_path, monkeypatch):
    """The original model runs once over the calibration samples for both the bias
    correction's input means and GPTQ's layer statistics (and the result is the same as
    recording them apart)."""
    from prunequant_cli import evaluate

    cal, held = _halves(tmp_path, "digits_cnn")
    runs = []
    real = evaluate.exposed_activations

    def counted(model, names, batches, *args, **kw):
        runs.append(sorted(names))
        return real(model, names, batches, *args, **kw)

    monkeypatch.setattr(evaluate, "exposed_activations", counted)
    from prunequant_cli import CompressConfig, EvalConfig, compress

    src, out = SAMPLES / "digits_cnn.onnx", tmp_path / "g.onnx"
    report = compress(
        src,
        out,
        CompressConfig(bits=4, rounding="gptq", bias_correction=True),
        EvalConfig(data=held, calibration_data=cal, latency_runs=1),
    )
    assert len(runs) == 1
    assert any("bias correction" in n for n in report.notes)
    assert {t.rounding for t in report.tensors} == {"gptq"}
    run_both(src, out, {"input": np.load(held)["input"]})
