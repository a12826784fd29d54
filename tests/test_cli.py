"""The command line: output modes, messages, exit codes, nothing written on failure."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import ROOT, SAMPLES

from prunequant_cli.cli import main
from prunequant_cli.errors import EXIT_CODES

CNN = str(SAMPLES / "digits_cnn.onnx")
CNN_DATA = str(SAMPLES / "digits_cnn.npz")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_compress_json_is_one_document_on_stdout(tmp_path):
    out = tmp_path / "out.onnx"
    r = run("compress", CNN, out, "--threshold", "0.01", "--data", CNN_DATA, "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert r.stderr == ""
    assert doc["schema_version"] == 2
    assert doc["command"] == "compress"
    assert isinstance(doc["original"]["file_bytes"], int)
    assert doc["compressed"]["file_bytes"] == out.stat().st_size
    assert doc["ratio"] == pytest.approx(
        doc["compressed"]["file_bytes"] / doc["original"]["file_bytes"]
    )
    assert doc["evaluation"]["accuracy"]["drop_points"] <= 1.0
    assert {t["name"] for t in doc["tensors"]} == {
        "conv1.weight",
        "conv2.weight",
        "fc1.weight",
        "fc2.weight",
    }
    assert set(doc["meta"]) >= {"versions", "latency_ms", "input_path", "output_path"}


def test_json_is_deterministic_apart_from_meta(tmp_path):
    docs = []
    for name in ("a.onnx", "b.onnx"):
        r = run("compress", CNN, tmp_path / name, "--bits", "4", "--json")
        assert r.exit_code == 0
        doc = json.loads(r.stdout)
        doc.pop("meta")
        docs.append(doc)
    assert docs[0] == docs[1]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_compress_table(tmp_path):
    r = run("compress", CNN, tmp_path / "o.onnx", "--data", CNN_DATA, "--verbose")
    assert r.exit_code == 0, r.stderr
    for text in ("file size", "accuracy (probs)", "latency median", "fc1.weight", "int8 ×scale"):
        assert text in r.stdout
    assert "\x1b[" not in r.stdout  # no colour off a terminal


def test_inspect_json_and_table(tmp_path):
    r = run("inspect", CNN, "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert doc["inputs"] == [{"name": "input", "dtype": "float", "shape": "N×1×8×8"}]
    assert doc["ops"]["Conv"] == 2
    assert doc["totals"]["weights"] == 4
    r = run("inspect", CNN)
    assert r.exit_code == 0 and "conv1.weight" in r.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["compress", "missing.onnx", "{tmp}/o.onnx"], 3, "model not found"),
        (["compress", "{garbage}", "{tmp}/o.onnx"], 4, "not an ONNX model"),
        (["compress", "{empty}", "{tmp}/o.onnx"], 4, "is empty"),
        (["compress", CNN, CNN], 6, "would overwrite the input"),
        (["compress", CNN, "{tmp}/no/such/dir/o.onnx"], 6, "output folder does not exist"),
        (
            ["compress", CNN, "{tmp}/o.onnx", "--threshold", "0.1", "--sparsity", "0.1"],
            2,
            "alternatives",
        ),
        (["compress", CNN, "{tmp}/o.onnx", "--data", "{tmp}/none.npz"], 3, "data file not found"),
        (
            ["compress", CNN, "{tmp}/o.onnx", "--data", str(SAMPLES / "digits_mlp.npz")],
            2,
            "expects shape",
        ),
        (["inspect", "{garbage}"], 4, "not an ONNX model"),
    ],
)
def test_errors_are_one_line_with_their_exit_code(tmp_path, args, code, message):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not a model at all" * 50)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run(*(a.format(tmp=tmp_path, garbage=garbage, empty=empty) for a in args))
    assert r.exit_code == code, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunequant: error: ")
    assert message in lines[0]
    assert "Traceback" not in r.stderr
    if code != 7:  # failed before writing: nothing new in the folder
        assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_failed_evaluation_keeps_no_partial_file_and_reports_code(tmp_path):
    r = run("compress", CNN, tmp_path / "o.onnx", "--bits", "9")
    assert r.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_every_command_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for name in main.commands:
        r = run(name, "--help")
        assert r.exit_code == 0 and "Exit codes" in r.stdout
        assert f"prunequant {name}" in readme


def test_readme_lists_every_exit_code():
    readme = (ROOT / "README.md").read_text()
    for code, _ in EXIT_CODES:
        assert re.search(rf"^\|\s*{code}\s*\|", readme, re.M), f"exit code {code} not in README"


def test_old_opset_is_refused_as_unsupported(tmp_path):
    import onnx
    from helpers import FLOAT, make_model, rand, tensor
    from onnx import helper

    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", FLOAT, [1, 4])],
        [("y", FLOAT, [1, 3])],
        [tensor("W", rand((4, 3)))],
        opset=6,
        ir_version=4,
    )
    src = tmp_path / "old.onnx"
    onnx.save(model, src)
    r = run("compress", src, tmp_path / "o.onnx")
    assert r.exit_code == 5, r.stderr
    assert "opset 6" in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_installed_command_in_a_pipe(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "prunequant"
    out = tmp_path / "o.onnx"
    r = subprocess.run(
        [str(exe), "compress", CNN, str(out), "--threshold", "0.02", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["compressed"]["file_bytes"] == out.stat().st_size
    assert r.stderr == ""
    r = subprocess.run(
        [sys.executable, "-m", "prunequant_cli", "inspect", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0 and "int8 ×scale" in r.stdout and "\x1b[" not in r.stdout


def test_non_tensor_and_integer_outputs_are_compared(tmp_path):
    import onnx
    from helpers import FLOAT, make_model, rand, tensor
    from onnx import TensorProto, helper

    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        [("x", FLOAT, ["N", 4])],
        [("scores", FLOAT, ["N", 3]), ("label", TensorProto.INT64, ["N"])],
        [tensor("W", rand((4, 3)))],
    )
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    r = run("compress", src, tmp_path / "o.onnx", "--json")
    assert r.exit_code == 0, r.stderr
    outputs = json.loads(r.stdout)["evaluation"]["outputs"]
    assert [o["name"] for o in outputs] == ["scores", "label"]
    # Only the ArgMax output is class scores; the MatMul output is a tensor.
    assert outputs[0]["top1_agreement"] is None and outputs[0]["cosine"] > 0.99
    assert outputs[1]["top1_agreement"] == 1.0 and outputs[1]["max_abs_error"] == 0.0
    kinds = json.loads(r.stdout)["evaluation"]["output_kinds"]
    assert kinds == {"scores": "tensor", "label": "class"}


@pytest.mark.parametrize(
    ("args", "encodings"),
    [
        (["--bits", "4", "--quant", "codebook"], {"codebook", "codebook-packed4"}),
        (["--bits", "8", "--format", "sparse", "--sparsity", "0.5"], {"sparse"}),
        (["--bits", "8", "--format", "int8"], {"int8"}),
        (["--bits", "16"], {"float16"}),
        (["--bits", "8", "--keep-quantized"], {"dq-int8"}),
        (["--bits", "4", "--quant", "asymmetric"], {"int8-zp", "packed4-zp", "sparse4-zp"}),
        (["--bits", "8", "--quant", "asymmetric", "--threshold", "0.02"], {"int8-zp", "sparse-zp"}),
        (
            ["--bits", "4", "--quant", "asymmetric", "--format", "sparse", "--sparsity", "0.5"],
            {"sparse-zp", "sparse4-zp"},
        ),
    ],
)
def test_quantization_choices(tmp_path, args, encodings):
    r = run("compress", CNN, tmp_path / "o.onnx", "--data", CNN_DATA, "--json", *args)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert {t["encoding"] for t in doc["tensors"]} <= encodings
    assert doc["evaluation"]["accuracy"]["drop_points"] <= 1.5
    assert doc["compressed"]["gzip_bytes"] < doc["original"]["gzip_bytes"]
    if "--keep-quantized" in args:
        assert any("does not fuse" in (t["note"] or "") for t in doc["tensors"])
        rss = doc["meta"]["session_rss_bytes"]
        assert rss["original"] > 0 and rss["compressed"] > 0


@pytest.mark.parametrize(
    "args",
    [
        ["--bits", "12"],
        ["--bits", "16", "--quant", "codebook"],
        ["--keep-quantized", "--quant", "codebook"],
        ["--keep-quantized", "--format", "sparse"],
        ["--no-quantize", "--quant", "codebook"],
        ["--quant", "asymmetric", "--keep-quantized"],
        ["--quant", "asymmetric", "--block-size", "16"],
    ],
)
def test_conflicting_quantization_options_are_usage_errors(tmp_path, args):
    r = run("compress", CNN, tmp_path / "o.onnx", *args)
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith("prunequant: error: ")
    assert list(tmp_path.iterdir()) == []


def test_session_cost_is_measured_and_reported(tmp_path):
    """Creating each model's onnxruntime session is timed and its memory read, settled and at
    its peak: a 4096×4096 weight decoded at load holds its 64 MiB float copy in the session."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from prunequant_cli.evaluate import session_cost

    w = np.random.default_rng(0).standard_normal((4096, 4096)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4096])],
        [numpy_helper.from_array(w, "w")],
    )
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    r = run("compress", src, tmp_path / "o.onnx", "--bits", "8", "--json", "--samples", "2")
    assert r.exit_code == 0, r.stderr
    meta = json.loads(r.stdout)["meta"]
    for which in ("original", "compressed"):
        assert meta["session_seconds"][which] > 0
        assert meta["session_rss_bytes"][which] >= w.nbytes  # the float weight, decoded
        assert meta["session_peak_rss_bytes"][which] >= meta["session_rss_bytes"][which]
    cost = session_cost(str(tmp_path / "o.onnx"), 1)
    assert cost is not None and cost.rss >= w.nbytes and cost.seconds > 0
    assert session_cost(b"not a path", 1) is None
    r = run("compress", src, tmp_path / "p.onnx", "--bits", "8")
    assert "session creation time" in r.stdout and "peak while created" in r.stdout


def test_default_evaluation_of_a_heavy_model_is_bounded(tmp_path, monkeypatch):
    """Without --data, a model too slow for 16 samples and 20 timed runs of the whole batch
    within EVALUATION_SECONDS gets fewer samples (at least 2) and latency timed on one
    sample, and the report says so; with --data nothing is cut."""
    from prunequant_cli import evaluate
    from prunequant_cli.config import CompressConfig, EvalConfig
    from prunequant_cli.pipeline import compress

    def run_with(data):
        return compress(
            CNN, tmp_path / "o.onnx", CompressConfig(bits=8), EvalConfig(data=data)
        ).evaluation

    light = run_with(None)
    assert light.samples == 16 and not any("bounded" in n for n in light.notes)
    monkeypatch.setattr(evaluate, "EVALUATION_SECONDS", 1e-6)  # every model is heavy now
    heavy = run_with(None)
    assert heavy.samples == 2 and heavy.latency_ms_compressed is not None
    note = next(n for n in heavy.notes if "bounded" in n)
    assert "2 synthetic samples" in note and "3 runs of 1 sample(s)" in note
    calibrated = compress(  # what calibrates on synthetic samples keeps all of its own
        CNN, tmp_path / "g.onnx", CompressConfig(bits=4, rounding="gptq"), EvalConfig()
    ).evaluation
    assert calibrated.samples == 2 and calibrated.calibration["samples"] == 16
    with np.load(CNN_DATA) as d:
        total = len(d["labels"])
    given = run_with(CNN_DATA)
    assert given.samples == total and not any("bounded" in n for n in given.notes)


def test_what_a_run_never_uses_is_never_loaded(tmp_path):
    """sympy (which onnx_ir imports for symbolic shape arithmetic) loads only when used, a
    compression without evaluation never loads onnxruntime, and a run that prints JSON (what
    CI reads) never loads rich; all still work when asked."""
    import subprocess
    import sys

    script = f"""
import sys
from prunequant_cli import CompressConfig, EvalConfig, compress
compress({CNN!r}, {str(tmp_path / "o.onnx")!r}, CompressConfig(bits=8), EvalConfig(enabled=False))
assert "sympy.core" not in sys.modules and "onnxruntime" not in sys.modules, "loaded"
import onnx_ir as ir
assert str(ir.SymbolicDim("N") + 1) == "N + 1" and "sympy.core" in sys.modules
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # the command runs in a supervised child: -X importtime lists what it imports too
    for out, loads_rich in (("j.onnx", False), ("t.onnx", True)):
        args = ["compress", CNN, str(tmp_path / out), "--no-eval"]
        command = [sys.executable, "-X", "importtime", "-m", "prunequant_cli", *args]
        r = subprocess.run(command + ["--json"] * (not loads_rich), capture_output=True, text=True)
        assert r.returncode == 0 and (tmp_path / out).exists(), r.stderr[-2000:]
        imported = [line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines()]
        rich = [m for m in imported if m == "rich" or m.startswith("rich.")]
        assert bool(rich) == loads_rich and ("rich.table" in rich) == loads_rich, (out, rich)
