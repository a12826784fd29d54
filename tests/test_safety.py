"""What a run may never do: replace a file it reads, lose a previous output, outlive its caller."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import SAMPLES, run_both

from prunequant_cli.cli import main
from prunequant_cli.config import EvalConfig
from prunequant_cli.errors import OutputError
from prunequant_cli.pipeline import compress

CNN = SAMPLES / "digits_cnn.onnx"
CNN_DATA = SAMPLES / "digits_cnn.npz"
MLP = SAMPLES / "digits_mlp.onnx"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder):
    """Every file in ``folder`` (names, hidden ones too) with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def work(tmp_path):
    """A folder with a model, its data (and a hard link to it) and an older output."""
    shutil.copy(CNN, tmp_path / "m.onnx")
    shutil.copy(CNN, tmp_path / "m2.onnx")
    shutil.copy(CNN_DATA, tmp_path / "d.npz")
    os.link(tmp_path / "d.npz", tmp_path / "hard.npz")
    (tmp_path / "old.onnx").write_bytes(b"the previous output")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "m.onnx", "o.onnx", "--no-eval", "--report", "m.onnx"], "input model"),
        (["compress", "m.onnx", "o.onnx", "--data", "d.npz", "--report", "hard.npz"], "--data"),
        (
            ["compress", "m.onnx", "o.onnx", "--no-eval", "--report", "o.onnx"],
            "--report and output name the same file",
        ),
        (["compress", "m.onnx", "d.npz", "--data", "d.npz"], "--data"),
        (["compress", "m.onnx", "o.onnx", "--data", "d.npz", "--report", "d.npz"], "--data"),
        (["compare", "m.onnx", "m2.onnx", "--report", "m.onnx"], "MODEL_A"),
        (["compare", "m.onnx", "m2.onnx", "--data", "d.npz", "--report", "d.npz"], "--data"),
        (
            [
                "compress",
                "m.onnx",
                "o.onnx",
                "--data",
                "d.npz",
                "--max-accuracy-drop",
                "0",
                "--write-recipe",
                "d.npz",
            ],
            "--data",
        ),
        (
            [
                "compress",
                "m.onnx",
                "o.onnx",
                "--data",
                "d.npz",
                "--recipe",
                "r.toml",
                "--report",
                "r.toml",
            ],
            "--recipe",
        ),
        (["compress", "m.onnx", "o.onnx", "--no-eval", "--report", "missing/r.md"], "folder"),
    ],
)
def test_a_path_written_that_is_read_or_written_twice_is_refused_before_anything(
    work, monkeypatch, args, message
):
    (work / "r.toml").write_text('schema_version = 1\n[tensors."conv1.weight"]\nbits = 8\n')
    monkeypatch.chdir(work)
    before = snapshot(work)
    r = run(*args)
    assert r.exit_code == 6, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert snapshot(work) == before  # nothing written, nothing left behind


def test_a_timeout_during_the_evaluation_leaves_the_previous_output(work, monkeypatch):
    import time

    import prunequant_cli.evaluate as evaluate

    def slow(self, compressed):
        time.sleep(60)

    monkeypatch.setattr(evaluate.Comparison, "run", slow)  # the forked worker inherits it
    monkeypatch.chdir(work)
    before = snapshot(work)
    r = run("compress", "m.onnx", "old.onnx", "--data", "d.npz", "--timeout", "5")
    assert r.exit_code == 9, r.output
    assert snapshot(work) == before
    assert "nothing was written" in r.stderr
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_an_unrunnable_output_leaves_the_previous_one(work, monkeypatch):
    import prunequant_cli.evaluate as evaluate
    from prunequant_cli.errors import EvaluationError

    def broken(self, compressed):
        raise EvaluationError("onnxruntime failed running the compressed model")

    monkeypatch.setattr(evaluate.Comparison, "run", broken)
    before = snapshot(work)
    with pytest.raises(EvaluationError, match="nothing was written"):
        compress(work / "m.onnx", work / "old.onnx", evaluation=EvalConfig(data=work / "d.npz"))
    assert snapshot(work) == before


def test_the_report_scores_the_model_this_run_wrote(work, monkeypatch):
    """Another writer replacing OUTPUT mid-run does not change what the report measured."""
    import prunequant_cli.evaluate as evaluate

    real = evaluate.Comparison.run
    seen = []

    def racing(self, compressed):
        shutil.copy(MLP, work / "o.onnx")  # another run's model lands at the path
        seen.append(compressed)
        return real(self, compressed)

    monkeypatch.setattr(evaluate.Comparison, "run", racing)
    report = compress(work / "m.onnx", work / "o.onnx", evaluation=EvalConfig(data=CNN_DATA))
    assert seen and seen[0] != str(work / "o.onnx")
    assert report.evaluation is not None and report.evaluation.outputs[0].cosine > 0.999
    run_both(work / "m.onnx", work / "o.onnx")  # this run's model is the one at the path
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_the_python_api_refuses_an_output_over_its_data(work):
    before = snapshot(work)
    with pytest.raises(OutputError, match="--data"):
        compress(work / "m.onnx", work / "d.npz", evaluation=EvalConfig(data=work / "d.npz"))
    assert snapshot(work) == before
    assert np.load(work / "d.npz").files  # still the data


# A compress run whose evaluation never ends (the model is already staged when it starts):
# a real process, so that signals and the kernel's parent-death notice are the real ones.
SLOW_EVALUATION = """
import sys, time
import prunequant_cli.evaluate as evaluate
FLAG = sys.argv.pop()
def slow(self, compressed):
    open(FLAG, "w").close()
    time.sleep(120)
evaluate.Comparison.run = slow
from prunequant_cli.entry import main
main()
"""
# The same command stuck while importing its libraries.
SLOW_IMPORT = """
import sys, time
FLAG = sys.argv.pop()
class Slow:
    def find_spec(self, name, path=None, target=None):
        if name == "click":
            open(FLAG, "w").close()
            time.sleep(120)
sys.meta_path.insert(0, Slow())
from prunequant_cli.entry import main
main()
"""


def _children(pid):
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(work, script, *args):
    flag = work.parent / f"{work.name}.started"
    proc = subprocess.Popen(
        [sys.executable, "-c", script, "compress", "m.onnx", "old.onnx", "--data", "d.npz",
         *args, str(flag)],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_caller_ends_the_worker_and_leaves_the_previous_output(work, sig, code):
    before = snapshot(work)
    proc = _start(work, SLOW_EVALUATION)
    workers = _children(proc.pid)
    assert workers, "the run is supervised by default"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"interrupted ({sig.name}); nothing was written" in err
    assert not any(_alive(w) for w in workers)
    assert snapshot(work) == before  # no new model, no temporaries


def test_the_worker_dies_with_a_killed_caller_and_cleans_up(work):
    before = snapshot(work)
    proc = _start(work, SLOW_EVALUATION)
    workers = _children(proc.pid)
    assert workers
    proc.kill()  # what subprocess.run(timeout=) does: no chance to pass anything on
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "the worker outlived its caller"
    assert snapshot(work) == before


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_importing_is_one_line(work, sig, code):
    proc = _start(work, SLOW_IMPORT)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip() == f"prunequant: error: interrupted ({sig.name})"


def _nan_copy(path, dest):
    """The sample CNN with its last layer's weights NaN: every output is NaN."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    for t in model.graph.initializer:
        if t.name.startswith("fc2."):
            bad = np.full_like(numpy_helper.to_array(t), np.nan)
            t.CopyFrom(numpy_helper.from_array(bad, t.name))
    onnx.save(model, dest)
    return dest


def _strict_json(text):
    import json

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON document")

    return json.loads(text, parse_constant=refuse)


def test_json_reports_a_model_that_outputs_nan(work, monkeypatch):
    monkeypatch.chdir(work)
    _nan_copy(CNN, work / "bad.onnx")
    r = run("compare", "m.onnx", "bad.onnx", "--data", "d.npz", "--json", "--report", "r.md")
    assert r.exit_code == 8, r.output
    doc = _strict_json(r.stdout)
    assert "finite-outputs" in doc["failed_gates"]
    assert doc["evaluation"]["outputs"][0]["nonfinite"] > 0
    assert any("not finite, so null" in n and "max_abs_error" in n for n in doc["notes"])
    assert (work / "r.md").exists()
    table = run("compare", "m.onnx", "bad.onnx", "--data", "d.npz")
    assert table.exit_code == 8
    assert "n/a (NaN/Inf)" in table.stdout and "0.000000" not in table.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["--timeout", "nan"],
        ["--timeout", "inf"],
        ["--time-budget", "nan", "--min-cosine", "0.9"],
        ["--max-accuracy-drop", "nan"],
        ["--min-ratio", "inf"],
        ["--max-metric-drop", "nan"],
        ["--seed", "-1"],
        ["--memory-limit", "99999999999999"],
        ["--input-shape", "input:1e20"],
        ["--threshold", "2"],
        ["--no-such-option"],
    ],
)
def test_absurd_option_values_are_one_line_usage_errors(work, monkeypatch, args):
    monkeypatch.chdir(work)
    before = snapshot(work)
    r = run("compress", "m.onnx", "o.onnx", "--data", "d.npz", *args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunequant: error: "), r.stderr
    assert "Traceback" not in r.output
    assert snapshot(work) == before


def test_more_threads_than_cpus_are_capped_and_said(work, monkeypatch):
    import json

    monkeypatch.chdir(work)
    cpus = os.cpu_count() or 1
    r = run("compress", "m.onnx", "o.onnx", "--data", "d.npz", "--threads", cpus + 50, "--json")
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["evaluation"]["notes"]
    assert f"--threads {cpus + 50} is more than the {cpus} CPU(s) here: {cpus} used" in notes


def test_plot_outside_a_search_is_a_usage_error(work, monkeypatch):
    monkeypatch.chdir(work)
    before = snapshot(work)
    r = run("compress", "m.onnx", "o.onnx", "--bits", "8", "--no-eval", "--plot", "p.png")
    assert r.exit_code == 2 and "--plot is for a search" in r.stderr
    assert snapshot(work) == before


@pytest.mark.parametrize("length", [242, 250, 255])
def test_output_names_up_to_the_longest_a_file_may_have(work, monkeypatch, length):
    monkeypatch.chdir(work)
    name = "o" * (length - 5) + ".onnx"
    r = run("compress", "m.onnx", name, "--data", "d.npz")
    assert r.exit_code == 0, r.output
    run_both(work / "m.onnx", work / name)
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_an_output_whose_recipe_name_cannot_exist_is_refused_before_the_search(work, monkeypatch):
    monkeypatch.chdir(work)
    before = snapshot(work)
    name = "o" * 245 + ".onnx"  # its default recipe, NAME.recipe.toml, is over 255 bytes
    r = run("compress", "m.onnx", name, "--data", "d.npz", "--max-accuracy-drop", "0")
    assert r.exit_code == 6 and "longer than the 255 bytes" in r.stderr, r.output
    assert snapshot(work) == before


EXE = str(Path(sys.executable).parent / "prunequant")


def _pq(work, *args, env=None, **kwargs):
    return subprocess.run(
        [EXE, "compress", "m.onnx", "o.onnx", "--bits", "8", *args],
        cwd=work, stderr=subprocess.PIPE, text=True, timeout=120, env=env, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("supervised", [True, False])
def test_a_full_stdout_is_one_line_and_exit_6(work, supervised):
    limits = [] if supervised else ["--timeout", "0", "--memory-limit", "0"]
    with open("/dev/full", "w") as full:
        r = _pq(work, "--json", *limits, stdout=full)
    assert r.returncode == 6, r.stderr
    assert r.stderr.strip().startswith(
        "prunequant: error: cannot write the result to stdout: No space left on device"
    )


@pytest.mark.parametrize("supervised", [True, False])
def test_a_closed_stdout_or_a_narrow_encoding_is_no_crash(work, supervised):
    limits = [] if supervised else ["--timeout", "0", "--memory-limit", "0"]
    closed = _pq(work, *limits, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 0, closed.stderr
    ascii_env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    narrow = _pq(work, *limits, env=ascii_env, stdout=subprocess.PIPE)
    assert narrow.returncode == 0 and "Traceback" not in narrow.stderr, narrow.stderr
    assert "\\xd7" in narrow.stdout or "\\u" in narrow.stdout  # '×' escaped, not a crash


def _bomb(path, inputs, declared):
    """An .npz with ``inputs`` and a member "junk" of ``declared`` zero bytes (deflated to
    almost nothing), written without ever holding it."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in inputs.items():
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr(f"{name}.npy", buf.getvalue())
        with zf.open("junk.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": (declared // 8,)}
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(1 << 20)
            for _ in range(declared // len(chunk)):
                f.write(chunk)


def test_an_npz_member_the_model_does_not_use_is_never_read(tmp_path):
    data = dict(np.load(CNN_DATA))
    _bomb(tmp_path / "b.npz", data, 256 << 20)
    # The peak of this process's own memory (VmHWM starts afresh at exec, unlike ru_maxrss,
    # which a forked child inherits from the test runner).
    script = (
        "import re; from pathlib import Path; from prunequant_cli.data import _read_files; "
        f"files = _read_files(Path({str(tmp_path / 'b.npz')!r}), {{'input'}}); "
        "assert sorted(files[0][1]) == ['input', 'labels'], sorted(files[0][1]); "
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    peak = int(done.stdout)
    assert peak < 128 << 10, f"{peak} KiB: the 256 MiB member was read"


def test_data_declaring_more_than_memory_is_refused_before_reading(tmp_path, monkeypatch):
    import prunequant_cli.data as data_module
    from prunequant_cli.errors import ResourceError

    monkeypatch.setattr(data_module, "max_data_bytes", lambda: 64 << 20)
    _bomb(tmp_path / "b.npz", {}, 128 << 20)  # its one array stands for the input: used
    with pytest.raises(ResourceError, match="declares more arrays than"):
        data_module._read_files(tmp_path / "b.npz", {"input"})


@pytest.mark.parametrize("flag", ["--recipe", "--metric"])
def test_a_fifo_or_a_device_as_recipe_or_metric_is_refused_not_waited_on(work, monkeypatch, flag):
    monkeypatch.chdir(work)
    os.mkfifo(work / "fifo.py")
    for source in ("fifo.py", "/dev/zero"):
        value = source if flag == "--recipe" else f"{source}:score"
        if flag == "--metric" and source == "/dev/zero":
            continue  # not a .py name: taken as a module
        r = _pq(work, "--data", "d.npz", flag, value, "--timeout", "60")
        code = 3 if flag == "--recipe" else 2  # a --metric that cannot load is a usage error
        assert r.returncode == code and "not a regular file" in r.stderr, r.stderr


HOSTILE = "w<details><summary>x</summary>[link](http://e.x) ![i](y.png) `code` | @all **b**"


def test_model_names_are_inert_in_the_markdown_report_and_logs(tmp_path):
    from helpers import FLOAT, make_model, rand, save, tensor
    from onnx import helper

    weight, output = HOSTILE, "y\n::error title=pwned::owned <details>"
    model = make_model(
        [helper.make_node("MatMul", ["x", weight], [output])],
        [("x", FLOAT, ["N", 64])],
        [(output, FLOAT, ["N", 32])],
        [tensor(weight, rand((64, 32)))],
    )
    src = save(model, tmp_path / "m.onnx")
    md = tmp_path / "r.md"
    r = run(
        "compress", src, tmp_path / "o.onnx", "--bits", "2", "--all-layers", "--per-layer",
        "--max-accuracy-drop", "0", "--report", md,
    )  # fmt: skip
    assert r.exit_code == 8, r.output  # lossless at 2 bits fails: the reason names the output
    text = md.read_text()
    for raw in ("<details>", "](", "`", "@all", "**b**"):
        assert raw not in text, raw
    assert "&#60;details&#62;" in text  # shown, as text
    for line in text.splitlines():
        assert not line.startswith("::")
        if line.startswith("|"):  # no cell break from a name: every row has its header's cells
            assert line.count("|") - line.count("\\|") in (5, 3, 4), line
    for stream in (r.stdout, r.stderr):
        assert not any(line.startswith("::") for line in stream.splitlines())


RECIPE = 'schema_version = 1\n[tensors."conv1.weight"]\n'


@pytest.mark.parametrize(
    ("recipe", "extra", "message"),
    [
        (RECIPE + 'bits = "8"\n', [], "bits must be an integer"),
        (RECIPE + "bits = 8.0\n", [], "bits must be an integer"),
        (RECIPE + "bits = true\n", [], "bits must be an integer"),
        (RECIPE + 'keep = "no"\n', [], "keep must be true or false"),
        (RECIPE + "bits = 8\nsparsity = '0.5'\n", [], "sparsity must be a number"),
        (RECIPE + "bits = 8\nblock = 'x'\n", [], "block must be an integer"),
        ('schema_version = 1\n[tensors."nope.weight"]\nbits = 8\n', [], "does not have (nope"),
        ("schema_version = 1\nbogus = 3\n" + RECIPE[18:] + "bits = 8\n", [], "unknown keys"),
        ("schema_version = 1\nx = " + "[" * 3000 + "]" * 3000 + "\n", [], "nested too deeply"),
        (RECIPE + "bits = 8\n", ["--sparsity", "0.5"], "--sparsity does not combine"),
        (RECIPE + "bits = 8\n", ["--quant", "asymmetric"], "--quant does not combine"),
        (RECIPE + "bits = 8\n", ["--threshold", "0.1"], "--threshold does not combine"),
        (RECIPE + "bits = 8\n", ["--prune-mode", "dense"], "--prune-mode does not combine"),
        (RECIPE + "bits = 8\n", ["--exclude", "conv1*"], "--exclude leaves out"),
    ],
)
def test_a_recipe_is_applied_exactly_or_refused(work, monkeypatch, recipe, extra, message):
    monkeypatch.chdir(work)
    (work / "r.toml").write_text(recipe)
    before = snapshot(work)
    r = run("compress", "m.onnx", "o.onnx", "--data", "d.npz", "--recipe", "r.toml", *extra)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert snapshot(work) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "8", "--write-recipe", "x.toml"], "--write-recipe is for a search"),
        (["--bits", "8", "--time-budget", "10"], "--time-budget is for a search"),
        (["--bits", "8", "--no-eval", "--per-layer"], "--per-layer measures in onnxruntime"),
    ],
)
def test_options_that_would_do_nothing_say_so(work, monkeypatch, args, message):
    monkeypatch.chdir(work)
    r = run("compress", "m.onnx", "o.onnx", *args)
    assert r.exit_code == 2 and message in r.stderr, r.output


def test_a_batch_fixed_at_zero_is_said_not_divided_by(tmp_path):
    from helpers import FLOAT, make_model, rand, save, tensor
    from onnx import helper

    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", FLOAT, [0, 4])],
        [("y", FLOAT, [0, 3])],
        [tensor("W", rand((4, 3)))],
    )
    src = save(model, tmp_path / "m.onnx")
    r = run("compress", src, tmp_path / "o.onnx")
    assert r.exit_code == 5 and "dimension fixed at 0" in r.stderr, r.output
    assert not (tmp_path / "o.onnx").exists()
    assert run("compress", src, tmp_path / "o.onnx", "--no-eval").exit_code == 0


def test_a_valid_zipmap_classifier_is_unsupported_not_invalid(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    classifier = helper.make_node(
        "LinearClassifier", ["x"], ["label", "probs"], domain="ai.onnx.ml",
        coefficients=[0.1 * i for i in range(12)], intercepts=[0.0, 0.0, 0.0],
        classlabels_ints=[0, 1, 2], post_transform="SOFTMAX",
    )  # fmt: skip
    zipmap = helper.make_node(
        "ZipMap", ["probs"], ["p"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]
    )
    maps = helper.make_sequence_type_proto(
        helper.make_map_type_proto(
            TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        )
    )
    graph = helper.make_graph(
        [classifier, zipmap], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_value_info("p", maps)],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    onnx.checker.check_model(model, full_check=True)  # valid, as skl2onnx writes them
    onnx.save(model, tmp_path / "m.onnx")
    r = run("compress", tmp_path / "m.onnx", tmp_path / "o.onnx")
    assert r.exit_code == 5 and "a valid model" in r.stderr, r.output


def _only_at(tmp_path, side):
    """A model with free height and width that only runs when both are ``side``."""
    from helpers import FLOAT, make_model, rand, save, tensor
    from onnx import helper

    model = make_model(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])],
        [("x", FLOAT, ["N", 3, "H", "W"])],
        [("y", FLOAT, ["N", 8])],
        [tensor("W", rand((3 * side * side, 8)))],
    )
    return save(model, tmp_path / "m.onnx")


def test_free_sizes_are_tried_until_the_original_runs(tmp_path):
    import json

    src = _only_at(tmp_path, 32)  # 224, 320, 640 and 256 fail; 32 runs
    r = run("compress", src, tmp_path / "o.onnx", "--bits", "8", "--json")
    assert r.exit_code == 0, r.output
    notes = json.loads(r.stdout)["evaluation"]["notes"]
    assert any("x N×3×32×32" in n for n in notes), notes
    run_both(src, tmp_path / "o.onnx", feeds={"x": rand_input((2, 3, 32, 32))})


def rand_input(shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def test_an_original_that_runs_at_no_size_tried_is_still_compressed(tmp_path):
    src = _only_at(tmp_path, 5)
    r = run("compress", src, tmp_path / "o.onnx", "--bits", "8")
    assert r.exit_code == 7, r.output
    line = r.stderr.strip()
    assert "every size tried" in line and "--input-shape NAME:DIMS" in line
    assert "the compressed model was written" in line and len(line.splitlines()) == 1
    run_both(src, tmp_path / "o.onnx", feeds={"x": rand_input((2, 3, 5, 5))})
    given = run("compress", src, tmp_path / "o2.onnx", "--bits", "8", "--input-shape", "x:1x3x5x5")
    assert given.exit_code == 0, given.output
    # With a gate, the evaluation is the point: nothing is written.
    gated = run("compress", src, tmp_path / "o3.onnx", "--bits", "8", "--min-cosine", "0.9")
    assert gated.exit_code == 7 and not (tmp_path / "o3.onnx").exists()


def _endless_loop(path):
    """A model onnxruntime runs for ever (a Loop of 10^12 steps): a worker stuck in C."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    body = h.make_graph(
        [h.make_node("Identity", ["c"], ["co"]), h.make_node("Add", ["v", "one"], ["vo"])],
        "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("c", T.BOOL, []),
         h.make_tensor_value_info("v", T.FLOAT, None)],
        [h.make_tensor_value_info("co", T.BOOL, []), h.make_tensor_value_info("vo", T.FLOAT, None)],
        [nh.from_array(np.array(1.0, np.float32), "one")],
    )  # fmt: skip
    loop = h.make_node("Loop", ["M", "C", "y"], ["z"], body=body)
    graph = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y"]), loop],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
        [h.make_tensor_value_info("z", T.FLOAT, [1, 4])],
        [nh.from_array(np.ones((4, 4), np.float32), "W"), nh.from_array(np.array(10**12), "M"),
         nh.from_array(np.array(True), "C")],
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path)
    return path


def test_a_worker_stuck_in_onnxruntime_dies_with_a_killed_caller(tmp_path):
    src = _endless_loop(tmp_path / "loop.onnx")
    proc = subprocess.Popen([EXE, "compress", str(src), str(tmp_path / "o.onnx")], cwd=tmp_path)
    deadline = time.monotonic() + 60
    workers = []
    while not workers and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = _children(proc.pid)
    time.sleep(3)  # well inside onnxruntime's run of the original
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20  # GRACE is 5 s
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers and not any(_alive(w) for w in workers), "the worker outlived its caller"


def test_a_timed_out_run_leaves_another_runs_temporaries_alone(work, monkeypatch):
    import time as clock

    import prunequant_cli.evaluate as evaluate

    monkeypatch.setattr(evaluate.Comparison, "run", lambda self, c: clock.sleep(60))
    monkeypatch.chdir(work)
    other = work / ".old.onnx.1.abcd.tmp"  # another run's staging folder (pid 1)
    other.mkdir()
    r = run("compress", "m.onnx", "old.onnx", "--data", "d.npz", "--timeout", "4")
    assert r.exit_code == 9, r.output
    assert other.is_dir()
    assert [p.name for p in work.iterdir() if p.name.startswith(".")] == [other.name]


def test_a_signal_while_outputs_move_into_place_waits_until_all_have(tmp_path, monkeypatch):
    from prunequant_cli.outputs import Staging
    from prunequant_cli.supervise import Interrupted, catch_termination

    finals = [tmp_path / f"f{i}" for i in range(3)]
    staging = Staging()
    for i, final in enumerate(finals):
        staging.add_bytes(final, b"new %d" % i, "file")
    real = os.replace
    calls = []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives between the first and second rename
        real(a, b)

    previous = signal.getsignal(signal.SIGTERM)
    catch_termination()
    monkeypatch.setattr(os, "replace", replace)
    try:
        with pytest.raises(Interrupted):
            staging.commit()
            time.sleep(1)  # the signal is delivered once the renames are done
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [f.read_bytes() for f in finals] == [b"new 0", b"new 1", b"new 2"]


def test_an_npz_member_without_npy_suffix_is_not_what_is_read(tmp_path):
    import io
    import zipfile

    data = np.load(CNN_DATA)
    buf = io.BytesIO()
    np.save(buf, data["input"])
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as zf:
        zf.writestr("input.npy", buf.getvalue())
        zf.writestr("input", b"not an array")  # numpy's NpzFile would read this one
    r = run("compress", CNN, tmp_path / "o.onnx", "--data", tmp_path / "d.npz", "--json")
    assert r.exit_code == 0, r.output


def test_code_in_the_working_folder_is_not_imported(work):
    (work / "onnxruntime.py").write_text("open('PWNED', 'w').write('x')\n")
    for args in (["compress", "m.onnx", "o.onnx", "--bits", "8", "-q"], ["inspect", "m.onnx"]):
        done = subprocess.run([EXE, *args], cwd=work, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert not (work / "PWNED").exists()


@pytest.mark.parametrize(
    "source",
    [
        "import sys\ndef f(r, c, l):\n    sys.exit(0)\n",
        "import sys\nsys.exit(0)\ndef f(r, c, l):\n    return 1.0\n",
        "import os\ndef f(r, c, l):\n    os._exit(0)\n",
        "def f(r, c, l):\n    raise KeyboardInterrupt\n",
        "def f(r, c, l):\n    return 10**400\n",
        "def f(r, c, l):\n    return '1e308'\n",
    ],
)
def test_a_metric_that_exits_or_returns_no_number_is_a_usage_error(work, monkeypatch, source):
    monkeypatch.chdir(work)
    (work / "task.py").write_text(source)
    before = snapshot(work)
    r = _pq(work, "--data", "d.npz", "--metric", "task.py:f", "--max-metric-drop", "0")
    assert r.returncode == 2 and r.stderr.startswith("prunequant: error: "), r.stderr
    assert snapshot(work) == before  # no model, no temporaries, no __pycache__
    assert not (work / "__pycache__").exists()


def test_a_metric_that_prints_leaves_the_json_alone(work):
    (work / "task.py").write_text("def f(r, c, l):\n    print('chatter')\n    return 1.0\n")
    r = _pq(work, "--data", "d.npz", "--metric", "task.py:f", "--json", stdout=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    assert _strict_json(r.stdout)["evaluation"]["metric"]["original"] == 1.0
    assert "chatter" in r.stderr


def test_a_metric_module_is_a_file_read(work):
    (work / "task.py").write_text("def f(r, c, l):\n    return 1.0\n")
    env = {**os.environ, "PYTHONPATH": str(work)}
    r = _pq(work, "--data", "d.npz", "--metric", "task:f", "--report", "task.py", env=env)
    assert r.returncode == 6 and "--metric" in r.stderr, r.stderr
    assert (work / "task.py").read_text().startswith("def f")


@pytest.mark.parametrize("kind", ["hard link", "symlink", "odd name"])
def test_a_self_contained_model_under_any_name_is_read(work, kind):
    name = {"hard link": "hard.onnx", "symlink": "sym.onnx", "odd name": "a\nb.onnx"}[kind]
    if kind == "hard link":
        os.link(work / "m.onnx", work / name)
    elif kind == "symlink":
        (work / name).symlink_to(work / "m.onnx")
    else:
        shutil.copy(work / "m.onnx", work / name)
    done = subprocess.run(
        [EXE, "compress", name, "o.onnx", "--no-eval", "-q"], cwd=work, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_both(work / "m.onnx", work / "o.onnx")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "m.onnx", "o.onnx/"], "names a folder"),
        (["compress", "m.onnx", "o.onnx", "--memory-limit", "50"], "too little to run"),
        (["compress", "m.onnx", "o.onnx", "--output-kind", "probs:class", "--output-kind",
          "probs:tensor"], "two kinds"),
    ],
)  # fmt: skip
def test_more_command_lines_that_are_mistakes(work, monkeypatch, args, message):
    monkeypatch.chdir(work)
    r = run(*args)
    assert r.exit_code == 2 and message in r.stderr, r.output


def test_recipe_versions_are_integers(work, monkeypatch):
    monkeypatch.chdir(work)
    for version in ("1.0", "true"):
        (work / "r.toml").write_text(
            f'schema_version = {version}\n[tensors."conv1.weight"]\nbits = 8\n'
        )
        r = run("compress", "m.onnx", "o.onnx", "--recipe", "r.toml")
        assert r.exit_code == 2 and "schema_version" in r.stderr, r.output


def test_invisible_characters_are_shown_escaped():
    from prunequant_cli.errors import safe_text

    assert safe_text("a\u202eb\u200bc\ufeff") == "a\\u202eb\\u200bc\\ufeff"


def test_an_input_value_lets_a_model_run_that_random_values_cannot(tmp_path):
    """A sample-rate input that shapes the computation: random small integers break it."""
    from helpers import FLOAT, make_model, rand, save, tensor
    from onnx import TensorProto, helper

    model = make_model(
        [
            helper.make_node("Div", ["sr", "k"], ["width"]),
            helper.make_node("Concat", ["minus1", "width"], ["shape"], axis=0),
            helper.make_node("Reshape", ["x", "shape"], ["xr"], allowzero=1),
            helper.make_node("MatMul", ["xr", "W"], ["y"]),
        ],
        [("x", FLOAT, ["N", 16]), ("sr", TensorProto.INT64, [1])],
        [("y", FLOAT, ["M", 8])],
        [tensor("W", rand((16, 8))), tensor("k", np.array([1000], np.int64)),
         tensor("minus1", np.array([-1], np.int64))],
    )  # fmt: skip
    src = save(model, tmp_path / "m.onnx")
    r = run("compress", src, tmp_path / "o.onnx", "--min-cosine", "0.9")
    assert r.exit_code == 7, r.output  # sr of 0 or 1: a reshape to width 0
    r = run(
        "compress", src, tmp_path / "o.onnx", "--min-cosine", "0.9", "--input-value", "sr:16000"
    )
    assert r.exit_code == 0, r.output
    feeds = {"x": rand_input((4, 16)), "sr": np.array([16000], np.int64)}
    run_both(src, tmp_path / "o.onnx", feeds=feeds)
    for bad, message in (("sr:16000.5", "the input is int64"), ("nope:1", "names no model input"),
                         ("sr:nan", "finite number")):  # fmt: skip
        r = run("compress", src, tmp_path / "o2.onnx", "--input-value", bad)
        assert r.exit_code == 2 and message in r.stderr, r.output
