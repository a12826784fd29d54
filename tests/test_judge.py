"""One judge: output kinds, agreement and accuracy with intervals, budgets, task metrics."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from helpers import FLOAT, SAMPLES, embedding_model, make_model, rand, run_both, tensor
from onnx import TensorProto, helper, save

from prunequant_cli.cli import main
from prunequant_cli.errors import UsageError
from prunequant_cli.evaluate import load_metric
from prunequant_cli.judge import (
    CLASS,
    TENSOR,
    Budget,
    Judge,
    OutputKind,
    Quality,
    output_kinds,
    paired_difference_interval,
    wilson_interval,
)
from prunequant_cli.report import OutputMetrics


def _ir(model):
    return ir.serde.deserialize_model(model)


def _heads_model():
    """x -> MatMul -> {scores (tensor), probs (Softmax), ids (ArgMax), seq (Softmax over
    the last axis of [N, T, C] via Reshape)}."""
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["scores"]),
            helper.make_node("Softmax", ["scores"], ["probs"], axis=-1),
            helper.make_node("ArgMax", ["scores"], ["ids"], axis=1, keepdims=0),
            helper.make_node("Reshape", ["scores", "shape"], ["r"]),
            helper.make_node("Softmax", ["r"], ["seq"], axis=2),
        ],
        [("x", FLOAT, ["N", 4])],
        [
            ("scores", FLOAT, ["N", 6]),
            ("probs", FLOAT, ["N", 6]),
            ("ids", TensorProto.INT64, ["N"]),
            ("seq", FLOAT, ["N", 2, 3]),
        ],
        [tensor("W", rand((4, 6))), tensor("shape", np.array([-1, 2, 3], np.int64))],
    )


def test_output_kinds_come_from_the_graph_and_can_be_overridden():
    m = _ir(_heads_model())
    kinds = output_kinds(m)
    assert {n: k.kind for n, k in kinds.items()} == {
        "scores": TENSOR,
        "probs": CLASS,
        "ids": CLASS,
        "seq": CLASS,
    }
    assert kinds["ids"].indices and kinds["seq"].axis == -1
    kinds = output_kinds(m, label_output="scores", overrides=[("probs", "tensor")])
    assert kinds["scores"].kind == CLASS and kinds["probs"].kind == TENSOR
    with pytest.raises(UsageError, match="names no model output"):
        output_kinds(m, overrides=[("nope", "class")])


def test_sequence_class_scores_agree_per_position():
    kinds = {"seq": OutputKind(CLASS, -1)}
    a = np.zeros((2, 5, 3), np.float32)
    a[..., 0] = 1.0
    b = a.copy()
    b[0, 1] = [0, 2, 0]  # one of ten positions changes its class
    q = Judge(["seq"], kinds).measure([[a]], [[b]])
    assert q.agreement == pytest.approx(0.9) and q.agreement_counts == (9, 10)
    assert q.accuracy_drop_points == pytest.approx(10.0) and q.drop_against == "original"


def test_sequences_of_other_lengths_are_not_compared_position_by_position():
    """A decoder that stops at another step: batches of [1, 96, C] and [1, 94, C] swapped
    between original and candidate have the same total size but no positions in common."""
    kinds = {"seq": OutputKind(CLASS, -1)}
    rng = np.random.default_rng(0)
    long, short = rng.random((1, 96, 50), np.float32), rng.random((1, 94, 50), np.float32)
    q = Judge(["seq"], kinds).measure([[long], [short]], [[short], [long]])
    assert q.agreement is None and q.outputs[0].cosine == 0.0
    same = Judge(["seq"], kinds).measure([[long], [short]], [[long], [short]])
    assert same.agreement == 1.0 and same.outputs[0].top5_agreement == 1.0


def test_intervals():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(95, 100)
    assert lo < 0.95 < hi
    # Newcombe's method 10 on the 2x2 table (a, b, c, d): inside [-1, 1], around the estimate.
    lo, hi = paired_difference_interval(80, 3, 1, 16)
    assert -1 <= lo < 0.02 < hi <= 1
    lo, hi = paired_difference_interval(100, 0, 0, 0)
    assert lo < 0 < hi and lo == pytest.approx(-hi, abs=1e-12)
    assert paired_difference_interval(800, 30, 10, 160)[1] < hi  # more samples, narrower


def test_paired_interval_covers_the_true_drop():
    """Coverage of the 95% interval on simulated paired predictions (fixed seed)."""
    rng = np.random.default_rng(0)
    n, p_orig, flip = 200, 0.9, 0.05  # candidate: flips 5% of the predictions at random
    truth = p_orig - (p_orig * (1 - flip) + (1 - p_orig) * flip)
    hits = 0
    for _ in range(400):
        right_a = rng.random(n) < p_orig
        flipped = rng.random(n) < flip
        right_b = right_a ^ flipped
        table = (
            int(np.sum(right_a & right_b)),
            int(np.sum(right_a & ~right_b)),
            int(np.sum(~right_a & right_b)),
            int(np.sum(~right_a & ~right_b)),
        )
        lo, hi = paired_difference_interval(*table)
        hits += lo <= truth <= hi
    assert hits / 400 >= 0.93


def _quality(**kw):
    base = {"outputs": [OutputMetrics("p", top1_agreement=1.0)], "kinds": {}, "samples": 10}
    return Quality(**{**base, **kw})


def test_lossless_needs_no_labels_and_the_search_does_not_count_lucky_fixes():
    assert Budget(max_accuracy_drop=0).holds(_quality(agreement=1.0, agreement_counts=(10, 10)))
    # 2 broken, 2 fixed by chance of 100: a zero drop, but a 2-point loss for the search
    q = _quality(accuracy_original=0.9, accuracy_compressed=0.9, paired=(88, 2, 2, 8))
    budget = Budget(max_accuracy_drop=1)
    assert budget.holds(q) and not budget.holds(q, strict=True)


def test_near_flips_count_against_accuracy_and_metric_budgets_in_the_search():
    """A candidate that moved predictions by most of their margin without flipping any
    still fails the search's reading of an accuracy or metric budget (unseen samples will
    flip), but not the report's; near-flips of predictions the original got wrong do not count."""
    kinds = {"p": OutputKind(CLASS, -1)}
    a = np.tile(np.array([[0.9, 0.1]], np.float32), (20, 1))
    c = a.copy()
    c[:4] = [0.6, 0.4]  # 4 of 20 lose most of their margin, none flips
    labels = np.zeros(20, np.int64)
    q = Judge(["p"], kinds, labels=labels).measure([[a]], [[c]])
    assert q.accuracy_drop_points == 0 and q.at_risk == 4 and q.at_risk_share == pytest.approx(0.2)
    accuracy = Budget(max_accuracy_drop=5)
    assert accuracy.holds(q) and not accuracy.holds(q, strict=True)
    assert Budget(max_accuracy_drop=25).holds(q, strict=True)
    q.metric_original, q.metric_compressed = 1.0, 1.0
    metric = Budget(max_metric_drop=0.05)
    assert metric.holds(q) and not metric.holds(q, strict=True)
    assert Budget(max_metric_drop=0.25).holds(q, strict=True)
    # the same moves on predictions the original got wrong cannot lose accuracy
    wrong = labels.copy()
    wrong[:4] = 1
    q = Judge(["p"], kinds, labels=wrong).measure([[a]], [[c]])
    assert q.at_risk == 4 and q.at_risk_share == 0
    assert accuracy.holds(q, strict=True)


def test_near_flips_of_a_sequence_output_do_not_bind_a_metric_budget():
    """Per position of [batch, time, classes] scores, near-flips count against agreement,
    not against a metric of whole sequences (CTC blanks and repeats move without changing
    the text)."""
    kinds = {"seq": OutputKind(CLASS, -1)}
    a = np.zeros((4, 5, 3), np.float32)
    a[..., 0], a[..., 1] = 0.9, 0.1
    c = a.copy()
    c[:, 0] = [0.6, 0.4, 0.0]  # one near-flip per sequence
    q = Judge(["seq"], kinds).measure([[a]], [[c]])
    assert q.at_risk == 4 and q.samples == 4 and q.agreement_counts == (20, 20)
    q.metric_original, q.metric_compressed = 1.0, 1.0
    assert Budget(max_metric_drop=0.05).holds(q, strict=True)
    assert not Budget(min_agreement=0.9).holds(q, strict=True)


def test_without_a_confirming_fold_a_changed_sequence_counts_as_a_lost_sample():
    """Judge.count_changed (a search no other fold confirms): a sample whose class sequence
    changed, at one position or in length, is read as lost by a metric-drop budget
    (their share of the original metric), whatever the metric made of it on these samples;
    moves that change no top-1 do not count, and the report's reading is unchanged."""
    kinds = {"seq": OutputKind(CLASS, -1)}
    a = np.zeros((4, 5, 3), np.float32)
    a[..., 0], a[..., 1] = 0.9, 0.1
    c = a.copy()
    c[1, 2] = [0.1, 0.9, 0.0]  # sample 1 flips at one position
    c[3, 0] = [0.6, 0.4, 0.0]  # sample 3 only moves (no flip)
    counting = Judge(["seq"], kinds, count_changed=True)
    q = counting.measure([[a[:2]], [a[2:]]], [[c[:2]], [c[2:]]])
    assert q.changed_samples == 1 and q.samples == 4
    assert Judge(["seq"], kinds).measure([[a]], [[c]]).changed_samples is None
    q.metric_original, q.metric_compressed = 0.8, 0.82  # it gained on these samples
    assert not Budget(max_metric_drop=0.19).holds(q, strict=True)  # 1/4 x 0.8 = 0.2
    assert Budget(max_metric_drop=0.19).holds(q)
    assert Budget(max_metric_drop=0.25).holds(q, strict=True)
    # a sequence decoded to another length: every sample of its batch counts
    longer = [np.concatenate([a[2:], a[2:, :1]], axis=1)]
    q = counting.measure([[a[:2]], [a[2:]]], [[a[:2]], longer])
    assert q.changed_samples == 2


def test_a_search_holds_a_metric_also_with_the_output_change_doubled():
    """Judge.stress: the metric of the candidate's outputs moved twice as far. A change that
    just fits (no sample lost) but would lose samples at twice the distance fails the
    search's reading of a metric budget, not the report's."""
    from prunequant_cli.judge import Metric

    def share_positive(reference, candidate, labels):
        return float(np.mean(np.concatenate([b["y"] for b in candidate]) > 0))

    metric = Metric("share_positive", share_positive)
    a = np.full((10, 1), 1.0, np.float32)
    c = a.copy()
    c[:3] = 0.4  # still positive; at twice the change (1 - 2 x 0.6 = -0.2) it is not
    plain = Judge(["y"], {}, metric=metric).measure([[a]], [[c]])
    stressed = Judge(["y"], {}, metric=metric, stress=2.0).measure([[a]], [[c]])
    assert plain.metric_stressed is None and stressed.metric_stressed == pytest.approx(0.7)
    budget = Budget(max_metric_drop=0.1)
    assert budget.holds(plain, strict=True) and budget.holds(stressed)
    assert not budget.holds(stressed, strict=True)
    assert not Budget(min_metric=0.9).holds(stressed, strict=True)


def _mean_metric(reference, candidate, labels):
    """The mean of output ``y`` over all samples (higher is better)."""
    return float(np.mean(np.concatenate([b["y"].reshape(-1) for b in candidate])))


def test_the_metric_drop_noise_is_estimated_by_resampling():
    """Judge.units: the search's judge resamples its batches to estimate how far the drop
    measured on ``unseen`` other samples may fall from this one. For a mean metric the truth
    is known: a per-sample drop of spread s gives sd(other - this) = s * sqrt(1/n + 1/unseen).
    The estimate follows it (averaged over many sample sets), is 0 for a candidate that
    changes nothing, and is None when the batches cannot be resampled."""
    from prunequant_cli.judge import Metric

    metric = Metric("mean", _mean_metric)
    rng = np.random.default_rng(3)
    n, unseen, s = 32, 48, 0.05
    estimates = []
    for _ in range(60):
        a = rng.normal(1.0, 0.2, (n, 1)).astype(np.float64)
        c = a - rng.normal(0.01, s, (n, 1))
        judge = Judge(["y"], {}, metric=metric, units=[1] * n, unseen=unseen)
        q = judge.measure([[x] for x in a], [[x] for x in c])
        assert q.metric_drop == pytest.approx(float(np.mean(a - c)))
        estimates.append(q.metric_drop_spread)
    truth = s * np.sqrt(1 / n + 1 / unseen)
    assert np.mean(estimates) == pytest.approx(truth, rel=0.2)
    same = Judge(["y"], {}, metric=metric, units=[1] * n).measure(
        [[x] for x in a], [[x] for x in a]
    )
    assert same.metric_drop_spread == 0.0
    few = Judge(["y"], {}, metric=metric, units=[n // 2, n // 2])
    assert few.measure([[a[:16]], [a[16:]]], [[c[:16]], [c[16:]]]).metric_drop_spread is None
    # labels that are not one row per sample cannot follow the resampled batches
    odd = Judge(["y"], {}, labels=np.zeros(3), metric=metric, units=[1] * n)
    assert odd.measure([[x] for x in a], [[x] for x in c]).metric_drop_spread is None
    # without units (the report's judge) nothing is resampled
    plain = Judge(["y"], {}, metric=metric).measure([[x] for x in a], [[x] for x in c])
    assert plain.metric_drop_spread is None

    # a metric undefined on resamples (here: on repeated samples) is no error, only no noise
    def distinct(reference, candidate, labels):
        values = np.concatenate([b["y"].reshape(-1) for b in reference])
        if len(np.unique(values)) < len(values):
            raise ValueError("a sample twice")
        return _mean_metric(reference, candidate, labels)

    picky = Judge(["y"], {}, metric=Metric("distinct", distinct), units=[1] * n)
    q = picky.measure([[x] for x in a], [[x] for x in c])
    assert q.metric_drop is not None and q.metric_drop_spread is None


def test_resampled_labels_follow_their_batches():
    """Batches of unequal size: each resample hands the metric the label rows of the
    batches it picked, so a metric scoring against labels sees a consistent subset."""
    from prunequant_cli.judge import Metric

    seen = []

    def right(reference, candidate, labels):
        preds = np.concatenate([b["y"].reshape(-1) for b in candidate])
        assert preds.shape == labels.shape
        seen.append(len(labels))
        return float(np.mean(preds == labels))

    labels = np.arange(10) % 3
    sizes = [1, 2, 3, 1, 2, 1]
    bounds = np.cumsum([0, *sizes])
    ref = [[labels[i:j].astype(np.float64)] for i, j in itertools.pairwise(bounds)]
    cand = [[b[0].copy()] for b in ref]
    cand[2][0][0] += 1  # one sample of the third batch goes wrong
    judge = Judge(["y"], {}, labels=labels, metric=Metric("right", right), units=sizes)
    q = judge.measure(ref, cand)
    assert q.metric_drop == pytest.approx(0.1)
    assert q.metric_drop_spread is not None and q.metric_drop_spread > 0
    assert len(set(seen)) > 1  # the resamples differ in size, and each was consistent


def test_a_search_holds_the_metric_drop_plus_its_noise_to_the_budget():
    """What just fits the calibration samples is as likely as not to miss on others: the
    strict reading adds SPREAD_Z times the drop's noise; the report's reading does not."""
    from prunequant_cli.judge import RESERVE, SPREAD_Z

    budget = Budget(max_metric_drop=0.02)
    q = _quality(metric_original=0.9, metric_compressed=0.89)
    assert budget.holds(q) and budget.holds(q, strict=True)
    q.metric_drop_spread = 0.004
    assert 0.01 + RESERVE * 0.02 + SPREAD_Z * 0.004 < 0.02
    assert budget.holds(q, strict=True)
    q.metric_drop_spread = 0.006
    assert budget.holds(q) and not budget.holds(q, strict=True)
    # a metric that rose by chance, as far as the noise goes, leaves no room to spend
    lucky = _quality(metric_original=0.9, metric_compressed=0.92, metric_drop_spread=0.012)
    assert budget.holds(lucky) and not budget.holds(lucky, strict=True)
    # the report's reading: the 95% interval 0.01 +- 1.96 x 0.006 straddles the budget
    (gate,) = budget.verdicts(q)
    assert gate.passed and "straddles the budget" in (gate.reason or "")
    lo, hi = q.metric_drop_interval or (0, 0)
    assert lo == pytest.approx(0.01 - 1.96 * 0.006) and hi == pytest.approx(0.01 + 1.96 * 0.006)


def test_near_flips_of_probabilities_are_measured_in_log_space():
    """A saturated Softmax output that falls from 0.99999 to 0.9 lost most of its margin in
    logits although it moved by 0.1: a near-flip. A rival rising from 1e-9 to 1e-8 is not."""
    kinds = {"p": OutputKind(CLASS, -1, reason="Softmax")}
    a = np.tile(np.array([[0.99999, 1e-5, 1e-9]], np.float32), (10, 1))
    c = a.copy()
    c[:2, :2] = [0.9, 0.1]
    c[2:, 2] = 1e-8
    q = Judge(["p"], kinds).measure([[a]], [[c]])
    assert q.agreement == 1.0 and q.at_risk == 2
    raw = {"p": OutputKind(CLASS, -1, reason="--output-kind")}
    assert Judge(["p"], raw).measure([[a]], [[c]]).at_risk == 0  # as scores: 0.1 of ~1.0


def test_a_failed_budget_says_by_how_much():
    q = _quality(accuracy_original=0.9, accuracy_compressed=0.87, paired=(85, 5, 2, 8))
    (gate,) = Budget(max_accuracy_drop=1).verdicts(q)
    assert not gate.passed and "3 points, 2 over the budget" in gate.reason


METRIC = """
import numpy as np

def top1(reference, candidate, labels):
    preds = np.concatenate([b["probs"].argmax(1) for b in candidate])
    return float(np.mean(preds == labels))

def broken(reference, candidate, labels):
    raise ValueError("no such output")

def nan(reference, candidate, labels):
    return float("nan")
"""


def test_metric_loading_and_its_errors(tmp_path):
    f = tmp_path / "task.py"
    f.write_text(METRIC)
    metric = load_metric(f"{f}:top1")
    assert metric.name.endswith("task.py:top1")
    for spec, message in (
        (f"{f}:missing", "has no function"),
        (f"{tmp_path / 'none.py'}:f", "not found"),
        ("nocolon", "FILE.py:FUNCTION"),
    ):
        with pytest.raises(UsageError, match=message):
            load_metric(spec)
    judge = Judge(["p"], {"p": OutputKind(CLASS)}, metric=load_metric(f"{f}:broken"))
    with pytest.raises(UsageError, match="raised ValueError: no such output"):
        judge.measure([[np.ones((2, 3), np.float32)]], [[np.ones((2, 3), np.float32)]])
    judge = Judge(["p"], {"p": OutputKind(CLASS)}, metric=load_metric(f"{f}:nan"))
    with pytest.raises(UsageError, match="finite number"):
        judge.measure([[np.ones((2, 3), np.float32)]], [[np.ones((2, 3), np.float32)]])


def test_metric_budget_search_and_gate(tmp_path):
    f = tmp_path / "task.py"
    f.write_text(METRIC)
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(
        main,
        [
            "compress",
            str(SAMPLES / "digits_mlp.onnx"),
            str(out),
            "--data",
            str(SAMPLES / "digits_mlp.npz"),
            "--metric",
            f"{f}:top1",
            "--max-metric-drop",
            "0.02",
            "--json",
        ],
    )
    assert r.exit_code in (0, 8), r.stderr
    doc = json.loads(r.stdout)
    metric = doc["evaluation"]["metric"]
    (gate,) = [g for g in doc["gates"] if g["name"] == "--max-metric-drop"]
    assert gate["value"] == pytest.approx(metric["drop"])
    assert gate["passed"] == (metric["drop"] <= 0.02) == (r.exit_code == 0)
    assert metric["original"] == pytest.approx(doc["evaluation"]["accuracy"]["original"])
    assert doc["search"]["budget"]["max_metric_drop"] == 0.02
    # the search resampled its calibration batches for the noise of each metric drop
    noise = [t["quality"]["metric_drop_noise"] for t in doc["search"]["tried"][1:]]
    assert all(x is not None for x in noise) and max(noise) > 0
    # and the held-out drop comes with its 95% interval, from resampling the held-out batches
    lo, hi = metric["drop_interval_95"]
    assert lo <= metric["drop"] <= hi  # [0, 0] when no held-out prediction changed
    assert doc["compression_ratio"] > 3
    run_both(SAMPLES / "digits_mlp.onnx", out)


def test_metric_gates_need_a_metric(tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "compress",
            str(SAMPLES / "digits_mlp.onnx"),
            str(tmp_path / "o.onnx"),
            "--bits",
            "8",
            "--min-metric",
            "0.5",
        ],
    )
    assert r.exit_code == 2 and "need --metric" in r.stderr


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (lambda y: y.astype(np.float32), "integer class ids"),
        (lambda y: y + 10, "class ids from 0 to 9"),
        (lambda y: -y - 1, "class ids from 0 to 9"),
        (lambda y: np.stack([y, y], axis=1), "have shape"),
    ],
)
def test_labels_that_do_not_fit_the_class_output_are_refused(tmp_path, labels, message):
    data = np.load(SAMPLES / "digits_mlp.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=data["input"], labels=labels(data["labels"]))
    src, out = SAMPLES / "digits_mlp.onnx", tmp_path / "o.onnx"
    r = CliRunner().invoke(main, ["compress", str(src), str(out), "--data", str(bad)])
    assert r.exit_code == 2 and message in r.stderr
    assert not out.exists()


def test_embeddings_are_tensors_even_with_a_batch_by_features_shape(tmp_path):
    src = embedding_model(tmp_path / "m.onnx", 8, 16)
    r = CliRunner().invoke(
        main, ["compress", str(src), str(tmp_path / "o.onnx"), "--bits", "8", "--json"]
    )
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["output_kinds"] == {"embedding": "tensor"} and ev["agreement"] is None


def test_labels_of_a_model_without_class_scores_are_set_aside(tmp_path):
    model = make_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["e"]),
            helper.make_node("Reshape", ["e", "s"], ["embedding"]),
        ],
        [("x", FLOAT, ["N", 8])],
        [("embedding", FLOAT, ["N", 16, 2])],
        [tensor("W", rand((8, 32))), tensor("s", np.array([-1, 16, 2], np.int64))],
    )
    src = tmp_path / "m.onnx"
    save(model, src)
    data = tmp_path / "d.npz"
    np.savez(data, x=rand((6, 8)), labels=np.array(["a", "b", "c", "d", "e", "f"]))
    r = CliRunner().invoke(
        main, ["compress", str(src), str(tmp_path / "o.onnx"), "--data", str(data), "--json"]
    )
    assert r.exit_code == 0, r.stderr
    ev = json.loads(r.stdout)["evaluation"]
    assert ev["accuracy"] is None and any("set aside" in n for n in ev["notes"])


def test_a_search_confirms_on_a_second_fold(tmp_path):
    from prunequant_cli import EvalConfig, GateConfig
    from prunequant_cli.pipeline import search

    report = search(
        SAMPLES / "digits_mlp.onnx",
        tmp_path / "s.onnx",
        GateConfig(max_accuracy_drop=1),
        EvalConfig(data=SAMPLES / "digits_mlp.npz", latency_runs=1),
    )
    confirmation = report.search["confirmation"]
    cal = report.evaluation.calibration["samples"]
    assert 0 < confirmation["samples"] < cal
    checked = confirmation["checked"]
    assert 1 <= len(checked) <= 3
    # smallest first; it stops at the first that holds
    assert [c["weight_bytes"] for c in checked] == sorted(c["weight_bytes"] for c in checked)
    assert all(not c["held"] for c in checked[:-1])
