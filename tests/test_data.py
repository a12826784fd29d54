"""Data of every shape: files of different sizes, indexed samples, batch axes, splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FLOAT, make_model, rand, run_both, tensor
from onnx import TensorProto, helper, save

from prunequant_cli.cli import main
from prunequant_cli.data import split_indices


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _width_model(tmp_path):
    """A recognizer-like model: [N, 4, W] -> per-position class scores [N, W, 5]."""
    model = make_model(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["t", "W"], ["s"]),
            helper.make_node("Softmax", ["s"], ["probs"], axis=-1),
        ],
        [("x", FLOAT, ["N", 4, "W"])],
        [("probs", FLOAT, ["N", "W", 5])],
        [tensor("W", rand((4, 5)))],
    )
    return save_to(model, tmp_path / "rec.onnx")


def save_to(model, path):
    save(model, path)
    return path


def test_a_folder_of_different_widths_runs_batch_by_batch(tmp_path):
    src = _width_model(tmp_path)
    folder = tmp_path / "lines"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, width in enumerate([7, 7, 12, 3]):
        np.savez(folder / f"{i:03}.npz", x=rng.standard_normal((1, 4, width)).astype(np.float32))
    r = _run("compress", src, tmp_path / "o.onnx", "--bits", "8", "--data", folder, "--json")
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["samples"] == 4
    assert ev["output_kinds"] == {"probs": "class"}
    assert any("3 groups of different shapes" in n for n in ev["notes"])  # 7+7 stacked
    run_both(src, tmp_path / "o.onnx", {"x": rng.standard_normal((1, 4, 9)).astype(np.float32)})


def test_indexed_samples_in_one_npz(tmp_path):
    src = _width_model(tmp_path)
    rng = np.random.default_rng(1)
    arrays = {f"{i:03}/x": rng.standard_normal((1, 4, 5 + i)).astype(np.float32) for i in range(5)}
    data = tmp_path / "lines.npz"
    np.savez(data, **arrays)
    r = _run("compress", src, tmp_path / "o.onnx", "--bits", "8", "--data", data, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["evaluation"]["samples"] == 5


def _streaming_model(tmp_path):
    """A VAD-like model: input [batch, 8], state [2, batch, 3], an int64 scalar sr."""
    model = make_model(
        [
            helper.make_node("MatMul", ["input", "W"], ["h"]),  # [batch, 3]
            helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["h", "srf"], ["hs"]),
            helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0),  # [batch, 3]
            helper.make_node("Add", ["hs", "s"], ["out"]),
        ],
        [
            ("input", FLOAT, ["batch", 8]),
            ("state", FLOAT, [2, "batch", 3]),
            ("sr", TensorProto.INT64, []),
        ],
        [("out", FLOAT, ["batch", 3])],
        [tensor("W", rand((8, 3))), tensor("axes", np.array([0], np.int64))],
    )
    return save_to(model, tmp_path / "vad.onnx")


def test_the_batch_axis_comes_from_the_model_and_scalars_are_shared(tmp_path):
    src = _streaming_model(tmp_path)
    rng = np.random.default_rng(0)
    n = 70  # more than one batch of 64
    data = tmp_path / "chunks.npz"
    np.savez(
        data,
        input=rng.standard_normal((n, 8)).astype(np.float32),
        state=rng.standard_normal((2, n, 3)).astype(np.float32),
        sr=np.array(2, np.int64),
    )
    r = _run("compress", src, tmp_path / "o.onnx", "--bits", "8", "--data", data, "--json")
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["samples"] == n and ev["outputs"][0]["cosine"] > 0.999


def test_a_search_splits_data_whose_batch_is_not_on_axis_0(tmp_path):
    src = _streaming_model(tmp_path)
    rng = np.random.default_rng(0)
    data = tmp_path / "chunks.npz"
    np.savez(
        data,
        input=rng.standard_normal((40, 8)).astype(np.float32),
        state=rng.standard_normal((2, 40, 3)).astype(np.float32),
        sr=np.array(2, np.int64),
    )
    r = _run(
        "compress", src, tmp_path / "o.onnx", "--data", data, "--min-cosine", "0.999", "--json"
    )
    assert r.exit_code in (0, 8), r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["calibration"] == {"source": "split", "samples": 20, "overlap": False}
    assert ev["samples"] == 20


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(3), [10, 20, 30])
    cal, held = split_indices(60, 0.5, 0, labels)
    assert split_indices(60, 0.5, 0, labels) == (cal, held)
    assert set(cal).isdisjoint(held) and len(cal) + len(held) == 60
    assert [int(np.sum(labels[held] == c)) for c in range(3)] == [5, 10, 15]
    assert split_indices(60, 0.5, 1, labels) != (cal, held)
    cal, held = split_indices(10, 0.2, 0, None)
    assert len(held) == 2


@pytest.mark.parametrize("fraction", ["0", "1", "1.5"])
def test_holdout_fraction_is_checked(tmp_path, fraction):
    src = _width_model(tmp_path)
    r = _run("compress", src, tmp_path / "o.onnx", "--holdout-fraction", fraction)
    assert r.exit_code == 2


def test_time_major_inputs_and_fixed_side_inputs(tmp_path):
    """x [seq, batch, f] beside h0 [1, batch, h]: samples on axis 1; a fixed-shape side input
    (a per-feature scale) is shared, not cut."""
    hidden = 4
    model = make_model(
        [
            helper.make_node("Mul", ["x", "scale"], ["xs"]),
            helper.make_node("RNN", ["xs", "W", "R", "", "", "h0"], ["Y"], hidden_size=hidden),
        ],
        [
            ("x", FLOAT, ["seq", "batch", 3]),
            ("h0", FLOAT, [1, "batch", hidden]),
            ("scale", FLOAT, [3]),
        ],
        [("Y", FLOAT, ["seq", 1, "batch", hidden])],
        [tensor("W", rand((1, hidden, 3))), tensor("R", rand((1, hidden, hidden), seed=1))],
    )
    src = save_to(model, tmp_path / "rnn.onnx")
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(
        data,
        x=rng.standard_normal((5, 70, 3)).astype(np.float32),
        h0=rng.standard_normal((1, 70, hidden)).astype(np.float32),
        scale=np.ones(3, np.float32),
    )
    r = _run("compress", src, tmp_path / "o.onnx", "--bits", "8", "--data", data, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["evaluation"]["samples"] == 70


def test_empty_data_is_a_usage_error(tmp_path):
    src = _width_model(tmp_path)
    data = tmp_path / "empty.npz"
    np.savez(data, x=np.zeros((0, 4, 5), np.float32))
    r = _run("compress", src, tmp_path / "o.onnx", "--data", data)
    assert r.exit_code == 2 and "no samples" in r.stderr


def test_a_folder_of_npy_samples_with_labels_npy(tmp_path):
    from helpers import SAMPLES

    data = np.load(SAMPLES / "digits_mlp.npz")
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(3):
        np.save(folder / f"{i:03}.npy", data["input"][10 * i : 10 * i + 10])
    np.save(folder / "labels.npy", data["labels"][:30])
    r = _run(
        "compress", SAMPLES / "digits_mlp.onnx", tmp_path / "o.onnx", "--data", folder, "--json"
    )
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["samples"] == 30 and ev["accuracy"] is not None


def test_gzip_size_of_a_large_file_is_estimated_from_pieces(tmp_path, monkeypatch):
    """Over GZIP_EXACT_MAX bytes the gzip size comes from evenly spaced pieces, within a few
    percent of the exact figure on weight-like bytes; deterministic; small files exact."""
    from prunequant_cli import model_io

    rng = np.random.default_rng(0)
    codes = np.clip(np.round(rng.standard_normal(1 << 23) * 20), -127, 127).astype(np.int8)
    path = tmp_path / "w.bin"
    path.write_bytes(codes.tobytes())
    exact = model_io.gzip_bytes([path])
    assert exact == model_io.gzip_bytes([codes.tobytes()])  # the file and its bytes alike
    monkeypatch.setattr(model_io, "GZIP_EXACT_MAX", 1 << 20)
    monkeypatch.setattr(model_io, "GZIP_PIECE", 1 << 16)
    estimate = model_io.gzip_bytes([path])
    assert estimate != exact and abs(estimate - exact) < 0.02 * exact
    assert model_io.gzip_bytes([path]) == estimate
