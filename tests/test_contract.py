"""The contract a CI job relies on: JSON schema, gates and exit codes, compare, data forms."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ROOT, SAMPLES

from prunequant_cli.cli import main

CNN = str(SAMPLES / "digits_cnn.onnx")
CNN_DATA = str(SAMPLES / "digits_cnn.npz")
SCHEMA = json.loads((ROOT / "schema" / "report.schema.json").read_text())


def run(*args, env=None):
    return CliRunner(env=env).invoke(main, [str(a) for a in args])


def doc_of(result):
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)
    return doc


def test_gates_that_hold_exit_0(tmp_path):
    r = run(
        "compress",
        CNN,
        tmp_path / "o.onnx",
        "--bits",
        "8",
        "--data",
        CNN_DATA,
        "--json",
        "--max-accuracy-drop",
        "1",
        "--min-agreement",
        "0.98",
        "--min-cosine",
        "0.99",
        "--min-ratio",
        "3",
        "--max-latency-ratio",
        "3",
    )
    assert r.exit_code == 0, r.stderr
    doc = doc_of(r)
    assert doc["passed"] is True and doc["failed_gates"] == []
    assert [g["name"] for g in doc["gates"]] == [
        "finite-outputs",
        "--max-accuracy-drop",
        "--min-agreement",
        "--min-cosine",
        "--min-ratio",
        "--max-latency-ratio",
    ]


def test_failed_gate_exits_8_and_still_writes_everything(tmp_path):
    out, md = tmp_path / "o.onnx", tmp_path / "summary.md"
    r = run(
        "compress",
        CNN,
        out,
        "--bits",
        "2",
        "--data",
        CNN_DATA,
        "--json",
        "--report",
        md,
        "--max-accuracy-drop",
        "0.5",
        "--min-ratio",
        "2",
    )
    assert r.exit_code == 8, r.stderr
    doc = doc_of(r)
    assert doc["passed"] is False
    assert doc["failed_gates"] == ["--max-accuracy-drop"]
    assert out.exists() and md.exists()
    assert "gates failed" in md.read_text() and "❌" in md.read_text()
    assert r.stderr.strip() == "prunequant: gate failed: --max-accuracy-drop"


def test_an_accuracy_gate_without_labels_measures_against_the_original(tmp_path):
    r = run(
        "compress", CNN, tmp_path / "o.onnx", "--bits", "2", "--json", "--max-accuracy-drop", "1"
    )
    assert r.exit_code == 8
    (gate,) = [g for g in doc_of(r)["gates"] if g["name"] == "--max-accuracy-drop"]
    assert gate["value"] > 1 and "against the original model's top-1" in gate["reason"]
    agreement = doc_of(r)["evaluation"]["agreement"]["top1"]
    assert gate["value"] == pytest.approx(100 * (1 - agreement))


def test_a_gate_that_cannot_be_measured_fails(tmp_path):
    from helpers import embedding_model

    src = embedding_model(tmp_path / "m.onnx")
    r = run(
        "compress", src, tmp_path / "o.onnx", "--bits", "8", "--json", "--max-accuracy-drop", "1"
    )
    assert r.exit_code == 8
    (gate,) = [g for g in doc_of(r)["gates"] if g["name"] == "--max-accuracy-drop"]
    assert gate["value"] is None and "--min-cosine" in gate["reason"]


def test_quality_gates_need_the_evaluation(tmp_path):
    r = run("compress", CNN, tmp_path / "o.onnx", "--no-eval", "--min-cosine", "0.9")
    assert r.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_no_eval_report_fits_the_schema(tmp_path):
    r = run("compress", CNN, tmp_path / "o.onnx", "--no-eval", "--json", "--min-ratio", "2")
    assert r.exit_code == 0
    doc = doc_of(r)
    assert doc["evaluation"] is None and doc["passed"] is True


def test_compare_reproduces_compress(tmp_path):
    out = tmp_path / "o.onnx"
    args = ("--data", CNN_DATA, "--json", "--per-layer")
    made = doc_of(run("compress", CNN, out, "--threshold", "0.02", "--bits", "4", *args))
    compared = doc_of(run("compare", CNN, out, *args))
    assert compared["command"] == "compare" and compared["settings"] is None
    for key in (
        "original",
        "compressed",
        "ratio",
        "compression_ratio",
        "weight_storage",
        "evaluation",
    ):
        assert compared[key] == made[key], key
    made_t = {t["name"]: t for t in made["tensors"]}
    for t in compared["tensors"]:
        for key in ("shape", "sparsity_after", "encoding", "bits", "stored_bytes", "max_abs_error"):
            assert t[key] == made_t[t["name"]][key], (t["name"], key)
    layers = made["evaluation"]["layers"]
    assert {x["weight"] for x in layers} == set(made_t)
    sqnr = [x["sqnr_db"] for x in layers]
    assert sqnr == sorted(sqnr)  # worst first


def test_compare_of_foreign_models_with_a_gate(tmp_path):
    import onnx

    model = onnx.load(CNN)
    for init in model.graph.initializer:  # another tool's crude float16 rounding
        arr = onnx.numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    r = run("compare", CNN, other, "--data", CNN_DATA, "--json", "--min-agreement", "0.99")
    assert r.exit_code == 0, r.stderr
    doc = doc_of(r)
    assert doc["ratio"] == 1.0 and doc["evaluation"]["accuracy"]["drop_points"] == 0.0


def test_data_folder_npy_and_casts(tmp_path):
    data = np.load(CNN_DATA)
    folder = tmp_path / "data"
    folder.mkdir()
    np.save(folder / "input.npy", data["input"][:100].astype(np.float64))  # cast, and said so
    np.savez(folder / "more.npz", input=data["input"][100:200].astype(np.float64))
    np.save(folder / "labels.npy", data["labels"][:200])
    r = run("compress", CNN, tmp_path / "o.onnx", "--data", folder, "--json")
    assert r.exit_code == 0, r.stderr
    ev = doc_of(r)["evaluation"]
    assert ev["samples"] == 200 and ev["accuracy"] is not None
    assert any("float64 data cast to float32" in n for n in ev["notes"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input-shape", "input:2x1x8x8"], None),
        (["--input-shape", "nope:1x1x8x8"], "names no model input"),
        (["--input-shape", "input:2x3x8x8"], "does not fit"),
        (["--input-shape", "input:two"], "NAME:DIMS"),
        (["--label-output", "nope", "--data", CNN_DATA], "names no model output"),
    ],
)
def test_input_shapes_and_label_output(tmp_path, args, message):
    r = run("compress", CNN, tmp_path / "o.onnx", "--json", *args)
    if message is None:
        assert r.exit_code == 0, r.stderr
        assert doc_of(r)["evaluation"]["samples"] == 2
    else:
        assert r.exit_code == 2 and message in r.stderr


def test_quiet_prints_nothing_but_errors(tmp_path):
    r = run("compress", CNN, tmp_path / "o.onnx", "--quiet")
    assert r.exit_code == 0 and r.stdout == "" and r.stderr == ""
    r = run("compress", CNN, tmp_path / "o.onnx", "--quiet", "--json")
    assert json.loads(r.stdout)["command"] == "compress"


def test_progress_goes_to_a_terminal_stderr_only(tmp_path):
    exe = Path(sys.executable).parent / "prunequant"
    primary, replica = pty.openpty()
    proc = subprocess.run(
        [str(exe), "compress", CNN, str(tmp_path / "o.onnx"), "--json"],
        stdout=subprocess.PIPE,
        stderr=replica,
        env={**os.environ, "TERM": "xterm"},
        check=False,
    )
    os.close(replica)
    shown = b""
    try:
        while chunk := os.read(primary, 65536):
            shown += chunk
    except OSError:
        pass
    os.close(primary)
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["command"] == "compress"  # stdout stays clean
    assert b"quantizing" in shown or b"evaluating" in shown


@pytest.mark.parametrize(
    "args",
    [
        ["--prune-mode", "dense", "--sparsity", "0.25"],
        ["--prune-mode", "2:4", "--bits", "4"],
        ["--bits", "4", "--block-size", "32", "--bias-correction"],
        ["--bits", "3", "--quant", "codebook", "--no-eval"],
    ],
)
def test_every_mode_fits_the_schema(tmp_path, args):
    r = run("compress", CNN, tmp_path / "o.onnx", "--data", CNN_DATA, "--json", *args)
    assert r.exit_code == 0, r.stderr
    doc_of(r)
