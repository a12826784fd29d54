"""The shipped sample models: real data, real accuracy, real size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import SAMPLES, run_both

from prunequant_cli import CompressConfig, EvalConfig, compress, inspect_model


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_samples_are_real_classifiers(name):
    data = np.load(SAMPLES / f"{name}.npz")
    ya, _, _ = run_both(
        SAMPLES / f"{name}.onnx", SAMPLES / f"{name}.onnx", {"input": data["input"]}
    )
    accuracy = np.mean(ya[0].argmax(1) == data["labels"])
    assert accuracy >= 0.95
    assert len(data["labels"]) >= 400


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_8_bit_keeps_accuracy_at_under_30_percent_of_the_size(tmp_path, name):
    report = compress(
        SAMPLES / f"{name}.onnx",
        tmp_path / "out.onnx",
        CompressConfig(bits=8),
        EvalConfig(data=SAMPLES / f"{name}.npz", latency_runs=3),
    )
    ev = report.evaluation
    assert ev is not None and ev.samples == len(np.load(SAMPLES / f"{name}.npz")["labels"])
    assert ev.accuracy_drop_points is not None and ev.accuracy_drop_points <= 1.0
    assert report.ratio <= 0.30
    assert ev.outputs[0].top1_agreement >= 0.99
    assert ev.outputs[0].nonfinite == 0


def test_threshold_pruning_shows_zero_rows_in_inspect(tmp_path):
    out = tmp_path / "out.onnx"
    report = compress(
        SAMPLES / "digits_cnn.onnx",
        out,
        CompressConfig(threshold=0.02, bits=8),
        EvalConfig(data=SAMPLES / "digits_cnn.npz", latency_runs=3),
    )
    pruned = {t.name: t.rows_pruned for t in report.tensors}
    assert sum(pruned.values()) > 0
    after = {t.name: t for t in inspect_model(out).tensors}
    before = {t.name: t for t in inspect_model(SAMPLES / "digits_cnn.onnx").tensors}
    for name, rows in pruned.items():
        assert after[name].zero_rows >= rows
        assert before[name].zero_rows == 0
        assert after[name].encoding in ("int8", "sparse")
        assert before[name].encoding == "float"
    assert report.evaluation.accuracy_drop_points <= 2.0


def _at_opset(tmp_path, name, opset):
    # Every op of the sample models means the same at opset 11 (Softmax on 2-D input).
    model = onnx.load(SAMPLES / f"{name}.onnx")
    model.opset_import[0].version = opset
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / f"{name}_opset{opset}.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("bits", [8, 4])
def test_opset_11_model_keeps_its_opset(tmp_path, bits):
    src = _at_opset(tmp_path, "digits_cnn", 11)
    out = tmp_path / "out.onnx"
    report = compress(
        src,
        out,
        CompressConfig(bits=bits),
        EvalConfig(data=SAMPLES / "digits_cnn.npz", latency_runs=3),
    )
    written = onnx.load(out)
    assert [(o.domain, o.version) for o in written.opset_import] == [("", 11)]
    onnx.checker.check_model(written, full_check=True)
    assert report.evaluation.accuracy_drop_points <= 1.0
    if bits == 4:
        assert {t.encoding for t in report.tensors} & {"packed4", "sparse4"}


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_4_bit_is_a_sixth_of_the_size_and_pruning_shrinks_it_again(tmp_path, name):
    ev = EvalConfig(data=SAMPLES / f"{name}.npz", latency_runs=3)
    every = {"bits": 4, "all_layers": True}  # 8-bit first and last layers are tested apart
    four = compress(SAMPLES / f"{name}.onnx", tmp_path / "a.onnx", CompressConfig(**every), ev)
    assert four.ratio <= 1 / 6
    pruned = compress(
        SAMPLES / f"{name}.onnx", tmp_path / "b.onnx", CompressConfig(**every, sparsity=0.5), ev
    )
    assert pruned.compressed.file_bytes < four.compressed.file_bytes
    for report in (four, pruned):
        assert report.evaluation.outputs[0].nonfinite == 0
        assert report.compressed.gzip_bytes < report.original.gzip_bytes


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_asymmetric_4_bit_codes_are_closer_to_the_original(tmp_path, name):
    # A zero point per channel uses all 16 codes over [min, max]; the symmetric codes
    # leave one unused and spread the rest over [-max|w|, max|w|].
    ev = EvalConfig(data=SAMPLES / f"{name}.npz", latency_runs=3)
    src = SAMPLES / f"{name}.onnx"
    sym = compress(src, tmp_path / "s.onnx", CompressConfig(bits=4, all_layers=True), ev)
    asym = compress(
        src, tmp_path / "a.onnx", CompressConfig(bits=4, quant="asymmetric", all_layers=True), ev
    )
    assert all(t.encoding.endswith("-zp") for t in asym.tensors if t.encoding)
    assert asym.evaluation.outputs[0].sqnr_db > sym.evaluation.outputs[0].sqnr_db + 3
    assert asym.ratio < 1 / 5
    run_both(src, tmp_path / "a.onnx")  # loads and runs in onnxruntime
    pruned = compress(
        src,
        tmp_path / "p.onnx",
        CompressConfig(bits=4, quant="asymmetric", threshold=0.02),
        ev,
    )
    assert sum(t.zeros_after or 0 for t in pruned.tensors) > sum(
        t.zeros_after or 0 for t in asym.tensors
    )
