"""Budgeted search: smaller than any single global setting, lossless mode, recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import FLOAT as FLOAT_T
from helpers import SAMPLES, make_model, rand, run_both, tensor
from onnx import helper

from prunequant_cli import CompressConfig, EvalConfig, GateConfig
from prunequant_cli.cli import main
from prunequant_cli.pipeline import search
from prunequant_cli.search import label

EV = EvalConfig(latency_runs=2)


def _eval(name):
    return EvalConfig(data=SAMPLES / f"{name}.npz", latency_runs=2)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
def test_budget_beats_every_single_global_setting(tmp_path, name):
    """On the samples the search measures on, its per-weight path finds a configuration
    within the budget smaller than every single global setting within it."""
    found = search(
        SAMPLES / f"{name}.onnx", tmp_path / "s.onnx", GateConfig(max_accuracy_drop=1), _eval(name)
    )
    held = [t for t in found.search["tried"] if t["held"]]
    globals_ = [t["weight_bytes"] for t in held if t["label"].startswith("all ")]
    mixed = [t["weight_bytes"] for t in held if not t["label"].startswith("all ")]
    assert len(globals_) > 1 and mixed and min(mixed) <= min(globals_)
    assert found.search["recipe"].endswith("s.onnx.recipe.toml")


def _halves(tmp_path, name, labels=True):
    """The sample data in two halves (even and odd rows): calibration and held-out files."""
    data = np.load(SAMPLES / f"{name}.npz")
    paths = []
    for part, rows in (("a", slice(0, None, 2)), ("b", slice(1, None, 2))):
        path = tmp_path / f"{name}.{part}.npz"
        arrays = {"input": data["input"][rows]}
        if labels:
            arrays["labels"] = data["labels"][rows]
        np.savez(path, **arrays)
        paths.append(path)
    return paths


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp"])
@pytest.mark.parametrize("budget", [0.0, 1.0])
def test_a_search_on_one_half_is_judged_on_the_other(tmp_path, name, budget):
    """The search sees only A; the verdict is B's, measured independently here too."""
    a, b = _halves(tmp_path, name)
    out = tmp_path / "s.onnx"
    ev = EvalConfig(data=b, calibration_data=a, latency_runs=2)
    report = search(SAMPLES / f"{name}.onnx", out, GateConfig(max_accuracy_drop=budget), ev)
    assert report.ratio < 0.5
    assert report.evaluation.calibration == {"source": "file", "samples": 225, "overlap": False}
    assert report.evaluation.samples == 225
    held = np.load(b)
    ya, yb, _ = run_both(SAMPLES / f"{name}.onnx", out, {"input": held["input"]})
    drop = 100 * (
        np.mean(ya[0].argmax(1) == held["labels"]) - np.mean(yb[0].argmax(1) == held["labels"])
    )
    (gate,) = [g for g in report.gates if g.name == "--max-accuracy-drop"]
    if budget:
        assert gate.value == pytest.approx(drop)
    assert gate.passed == report.passed
    if not gate.passed:  # a miss says by how much
        assert "over the budget" in gate.reason or "of its predictions" in gate.reason
    else:
        assert drop <= budget + 1e-9
    # What it searched on holds strictly: no prediction of A changed in lossless mode.
    if budget == 0:
        cal = np.load(a)
        ya, yb, _ = run_both(SAMPLES / f"{name}.onnx", out, {"input": cal["input"]})
        np.testing.assert_array_equal(ya[0].argmax(1), yb[0].argmax(1))
        assert report.search["budget"]["lossless"] is True
    # The changed predictions on unseen samples stay rare.
    assert np.mean(ya[0].argmax(1) != yb[0].argmax(1)) <= 0.02


def test_lossless_without_labels_compresses(tmp_path):
    a, b = _halves(tmp_path, "digits_cnn", labels=False)
    ev = EvalConfig(data=b, calibration_data=a, latency_runs=2)
    report = search(SAMPLES / "digits_cnn.onnx", tmp_path / "s.onnx", GateConfig(0), ev)
    assert report.ratio < 0.3 and report.search["chosen"] != "float"
    assert report.evaluation.accuracy_original is None


def test_data_is_split_when_nothing_else_calibrates(tmp_path):
    report = search(
        SAMPLES / "digits_mlp.onnx",
        tmp_path / "s.onnx",
        GateConfig(min_cosine=0.99),
        _eval("digits_mlp"),
    )
    cal = report.evaluation.calibration
    assert cal["source"] == "split" and cal["overlap"] is False
    # stratified by label: each class is halved, so the parts differ by a few samples
    assert cal["samples"] + report.evaluation.samples == 450
    assert abs(cal["samples"] - 225) <= 5
    assert any("split (seed 0)" in n for n in report.evaluation.notes)


def test_the_same_file_twice_is_called_in_sample(tmp_path):
    data = SAMPLES / "digits_mlp.npz"
    ev = EvalConfig(data=data, calibration_data=data, latency_runs=2)
    report = search(
        SAMPLES / "digits_mlp.onnx", tmp_path / "s.onnx", GateConfig(min_cosine=0.99), ev
    )
    assert report.evaluation.calibration["overlap"] is True
    assert any("in-sample" in n for n in report.evaluation.notes)


def test_cli_search_writes_a_recipe_that_reproduces_the_model(tmp_path):
    out, again = tmp_path / "s.onnx", tmp_path / "again.onnx"
    data = str(SAMPLES / "digits_mlp.npz")
    runner = CliRunner()
    r = runner.invoke(
        main,
        [
            "compress",
            str(SAMPLES / "digits_mlp.onnx"),
            str(out),
            "--data",
            data,
            "--max-accuracy-drop",
            "3",
            "--json",
            "--write-recipe",
            str(tmp_path / "r.toml"),
        ],
    )
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["search"]["recipe"] == str(tmp_path / "r.toml")
    assert set(doc["search"]["settings"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert any(t["pareto"] for t in doc["search"]["tried"])
    r = runner.invoke(
        main,
        [
            "compress",
            str(SAMPLES / "digits_mlp.onnx"),
            str(again),
            "--recipe",
            str(tmp_path / "r.toml"),
            "--data",
            data,
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["settings"]["per_tensor"] == doc["search"]["settings"]
    assert again.read_bytes() == out.read_bytes()


def test_explicit_settings_make_the_budget_a_gate(tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "compress",
            str(SAMPLES / "digits_mlp.onnx"),
            str(tmp_path / "o.onnx"),
            "--bits",
            "2",
            "--all-layers",
            "--data",
            str(SAMPLES / "digits_mlp.npz"),
            "--max-accuracy-drop",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 8
    assert json.loads(r.stdout)["search"] is None


def test_an_accuracy_budget_needs_a_class_output(tmp_path):
    from helpers import embedding_model

    src = embedding_model(tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    r = CliRunner().invoke(
        main, ["compress", str(src), str(out / "o.onnx"), "--max-accuracy-drop", "1"]
    )
    assert r.exit_code == 2
    assert "--min-cosine" in r.stderr and "--metric" in r.stderr and "--output-kind" in r.stderr
    assert list(out.iterdir()) == []


def test_agreement_budget_without_labels_and_a_tiny_time_budget(tmp_path):
    report = search(
        SAMPLES / "digits_cnn.onnx",
        tmp_path / "s.onnx",
        GateConfig(min_agreement=0.95),
        EV,
        time_budget=1,
    )
    assert report.evaluation.source == "synthetic"
    assert report.evaluation.calibration["source"] == "synthetic"
    (gate,) = [g for g in report.gates if g.name == "--min-agreement"]
    assert gate.value == report.evaluation.outputs[0].top1_agreement
    assert gate.passed == (gate.value >= 0.95)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('schema_version = 1\n[tensors."x"]\nbits = 4\ncolour = 3\n', "unknown settings"),
        ("nonsense = = 1", "not valid TOML"),
        ("[tensors]\n", "schema_version"),
        ('schema_version = 1\n[tensors."fc1.weight"]\nbits = 11\n', "--bits"),
    ],
)
def test_bad_recipes_are_usage_errors(tmp_path, text, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    r = CliRunner().invoke(
        main,
        [
            "compress",
            str(SAMPLES / "digits_mlp.onnx"),
            str(tmp_path / "o.onnx"),
            "--recipe",
            str(recipe),
        ],
    )
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_labels_of_settings():
    assert label(CompressConfig(bits=4, sparsity=0.5, quant="codebook")) == "codebook4 50% pruned"
    assert label(CompressConfig(bits=None)) == "float"
    assert label(CompressConfig(bits=3, quant="asymmetric")) == "int3-zp"


def test_plot_of_a_search(tmp_path):
    png = tmp_path / "search.png"
    r = CliRunner().invoke(
        main,
        [
            "compress",
            str(SAMPLES / "digits_mlp.onnx"),
            str(tmp_path / "o.onnx"),
            "--data",
            str(SAMPLES / "digits_mlp.npz"),
            "--min-agreement",
            "0.95",
            "--plot",
            str(png),
            "-q",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (png.stat().st_mode & 0o777) == (tmp_path / "o.onnx").stat().st_mode & 0o777


def test_out_of_time_weights_fall_back_to_int8(tmp_path):
    report = search(
        SAMPLES / "digits_cnn.onnx",
        tmp_path / "s.onnx",
        GateConfig(min_cosine=0.99),
        EV,
        time_budget=1e-6,
    )
    assert report.search["out_of_time"] is True
    assert set(report.search["settings"].values()) == {"int8"}
    assert report.passed and report.ratio < 0.3
    # A cut-off by wall time is not reproducible, and the report says how to pin it.
    assert any("time-budget" in n and "the recipe reproduces" in n for n in report.notes)


def test_weights_inside_if_branches_are_searched(tmp_path):
    import graphs
    import onnx

    src = tmp_path / "if.onnx"
    onnx.save(graphs.if_branches(), src)
    report = search(src, tmp_path / "o.onnx", GateConfig(min_cosine=0.99), EV)
    assert set(report.search["settings"]) == {"W", "V"}  # V lives in the else branch
    assert report.passed


def test_unbounded_damage_is_null_in_the_json():
    import math

    from prunequant_cli.judge import Budget, Quality
    from prunequant_cli.search import FLOAT, Option, SearchResult

    q = Quality(outputs=[], kinds={}, samples=1)
    result = SearchResult(
        config=CompressConfig(),
        chosen="float",
        budget=Budget(min_cosine=0.9),
        quality=q,
        sensitivity={"w": [Option(FLOAT, 10, 0.0), Option(CompressConfig(bits=2), 1, math.inf)]},
    )
    doc = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert [s["damage"] for s in doc["sensitivity"]] == [0.0, None]


def test_confirmation_checks_the_front_of_size_and_damage_from_the_edge_inwards():
    """The confirming fold sees the smallest held state, the smallest ones with 0.7, a half
    and a quarter of its damage, all int8, and the least damaged state; never a state larger
    and more damaged than another (all int8 aside)."""
    import time

    from prunequant_cli.judge import Budget, Quality
    from prunequant_cli.report import OutputMetrics
    from prunequant_cli.search import INT8, _Clock, _confirm

    def quality(error, cosine=1.0):
        return Quality([OutputMetrics("y", relative_error=error, cosine=cosine)], {}, 10)

    # (label, bytes, damage on the search fold)
    states = [
        ("edge", 100, 0.4),
        ("near edge", 110, 0.3),
        ("worse and larger", 120, 0.5),
        ("0.7", 125, 0.25),
        ("half", 130, 0.2),
        ("quarter", 150, 0.09),
        ("safer still", 160, 0.01),
        ("larger, not safer", 170, 0.015),
        (f"all {label(INT8)}", 400, 0.02),
    ]
    held = [("all float", {}, quality(0.0))]
    held += [(lab, {"w": (lab, size)}, quality(err)) for lab, size, err in states]
    size = {lab: b for lab, b, _ in states}
    checked_on_fold = []

    class Probe:
        def quality(self, overrides, fold):
            checked_on_fold.append((overrides["w"][0], fold))
            # "half" would pass the gate (0.993 >= 0.99) but not with half the allowance kept
            cosine = {"safer still": 0.999, "half": 0.993}.get(overrides["w"][0], 0.5)
            return quality(0.5, cosine)

    state, _, checked = _confirm(
        Probe(),
        Budget(min_cosine=0.99, max_accuracy_drop=None),
        _Clock(time.perf_counter(), 60),
        held,
        lambda s: size[s["w"][0]] if s else 0,
        lambda s, store: s,
    )
    assert [c["label"] for c in checked] == ["edge", "0.7", "half", "quarter", "safer still"]
    assert all(fold == 1 for _, fold in checked_on_fold) and state["w"][0] == "safer still"


def test_without_a_confirming_fold_the_metric_is_stressed_more(tmp_path):
    """Fewer than 2 × MIN_FOLD calibration samples: no fold checks the search's choice on
    samples it was not made on, so the metric must hold on a larger output change; larger
    still below MIN_FOLD."""
    from prunequant_cli.evaluate import (
        METRIC_STRESS,
        METRIC_STRESS_FEW,
        METRIC_STRESS_UNCONFIRMED,
        MIN_FOLD,
        Comparison,
    )
    from prunequant_cli.model_io import load_model

    data = np.load(SAMPLES / "digits_cnn.npz")
    model = load_model(SAMPLES / "digits_cnn.onnx").model
    stresses = []
    for n in (MIN_FOLD - 1, MIN_FOLD, 2 * MIN_FOLD - 1, 2 * MIN_FOLD):
        cal = tmp_path / f"cal{n}.npz"
        np.savez(cal, input=data["input"][:n], labels=data["labels"][:n])
        config = EvalConfig(data=SAMPLES / "digits_cnn.npz", calibration_data=cal)
        comparison = Comparison(str(SAMPLES / "digits_cnn.onnx"), config, model, calibrate=True)
        folds = comparison.calibration_folds()
        reference = [[comparison.session.run(None, b)[0]] for b in folds[0][0]]
        stresses.append((len(folds), comparison.judge_for(reference, folds[0][1]).stress))
    assert stresses == [
        (1, METRIC_STRESS_FEW),
        (1, METRIC_STRESS_UNCONFIRMED),
        (1, METRIC_STRESS_UNCONFIRMED),
        (2, METRIC_STRESS),
    ]
    assert METRIC_STRESS_FEW > METRIC_STRESS_UNCONFIRMED > METRIC_STRESS


def test_when_nothing_confirms_the_search_backs_off_along_its_path():
    """A confirming fold that rejects every state the search fold let through: the search
    halves the steps of its path until a state holds on both folds, instead of keeping the
    model float."""
    import onnx_ir as ir

    from prunequant_cli.judge import Budget, Quality
    from prunequant_cli.report import OutputMetrics
    from prunequant_cli.search import FLOAT, Fold, run_search
    from prunequant_cli.selection import select_weights

    layers = 8
    nodes = [helper.make_node("MatMul", [f"h{i}", f"W{i}"], [f"h{i + 1}"]) for i in range(layers)]
    onnx_model = make_model(
        nodes,
        [("h0", FLOAT_T, ["N", 8])],
        [(f"h{layers}", FLOAT_T, ["N", 8])],
        [tensor(f"W{i}", rand((8, 8), i)) for i in range(layers)],
    )
    model = ir.serde.deserialize_model(onnx_model)
    sites = select_weights(model)[0]
    originals = {s.name: s.value.const_value.numpy() for s in sites}

    def quality(cosine, error):
        return Quality([OutputMetrics("y", relative_error=error, cosine=cosine)], {}, 16)

    class Judge:
        def measure(self, reference, candidate, detailed=False):
            return quality(1.0, 0.0)

    class Probe:
        def __init__(self):
            self.overridable = set(originals)
            self.judge = Judge()
            self.reference = None
            self.can_check = True
            self.folds = [Fold([], None, 16), Fold([], None, 16)]

        def quality(self, overrides, subset=False, fold=0):
            changed = [n for n in originals if n in overrides]
            error = sum(float(np.abs(overrides[n] - originals[n]).max()) for n in changed)
            if subset:
                return quality(1.0, error)
            # the search fold lets up to 6 changed weights through, the confirming one 2
            limit = 6 if fold == 0 else 2
            return quality(0.9999 if len(changed) <= limit else 0.5, error)

    probe = Probe()
    result = run_search(model, sites, probe, Budget(min_cosine=0.99), time_budget=60)
    changed = [n for n, c in result.config.per_tensor.items() if c is not FLOAT]
    assert 1 <= len(changed) <= 2, result.config.per_tensor
    checked = result.confirmation["checked"]
    assert any(c["label"].startswith("back-off") and c["held"] for c in checked)
    sizes = [c["weight_bytes"] for c in checked]
    assert len(sizes) == len(set(sizes))  # no state is checked twice
    assert not any(c["held"] for c in checked if not c["label"].startswith("back-off"))


def test_the_clock_adds_up_what_runs_one_after_another():
    import time

    from prunequant_cli.search import _Clock

    clock = _Clock(time.perf_counter(), 10.0)
    clock.cost.update(full=6.0, check=3.0)
    assert clock.fits("full") and clock.fits("check") and clock.fits_all("full", "check")
    clock.cost["check"] = 5.0
    assert clock.fits("full") and clock.fits("check") and not clock.fits_all("full", "check")
