"""Pass/fail conditions a CI job can gate a build on."""

from __future__ import annotations

from prunequant_cli.config import GateConfig
from prunequant_cli.report import CompressReport, Evaluation, Gate


def _at_least(name: str, threshold: float, value: float | None, missing: str) -> Gate:
    if value is None:
        return Gate(name, threshold, None, False, missing)
    return Gate(name, threshold, value, value >= threshold)


def _at_most(name: str, threshold: float, value: float | None, missing: str) -> Gate:
    if value is None:
        return Gate(name, threshold, None, False, missing)
    return Gate(name, threshold, value, value <= threshold)


# Lossless mode: outputs that are not class scores may move by this relative error.
LOSSLESS_TOLERANCE = 1e-3


def _lossless(ev: Evaluation | None) -> Gate:
    """--max-accuracy-drop 0: no prediction changes (top-1 of every class-score output; other
    outputs within LOSSLESS_TOLERANCE relative error). Labels are not needed."""
    name = "--max-accuracy-drop"
    if ev is None:
        return Gate(name, 0.0, None, False, "not evaluated")
    changed = [o.name for o in ev.outputs if o.top1_agreement is not None and o.top1_agreement < 1]
    moved = [
        o.name
        for o in ev.outputs
        if o.top1_agreement is None
        and o.relative_error is not None
        and o.relative_error > LOSSLESS_TOLERANCE
    ]
    drop = ev.accuracy_drop_points
    value = drop if drop is not None else 0.0
    if changed or moved or (drop is not None and drop > 0):
        what = ", ".join(
            [f"predictions of {n} changed" for n in changed]
            + [f"{n} moved by more than {LOSSLESS_TOLERANCE:g} relative error" for n in moved]
        )
        return Gate(name, 0.0, value, False, f"lossless: {what or 'accuracy dropped'}")
    return Gate(name, 0.0, value, True)


def check_gates(report: CompressReport, gates: GateConfig) -> list[Gate]:
    """Every requested gate, and whenever the models were compared, that the compressed
    model produced no NaN/Inf where the original did not. A gate that cannot be
    measured fails, with the reason."""
    ev = report.evaluation
    result = []
    if ev is not None:
        bad = ev.nonfinite
        reason = None if bad == 0 else f"{bad} NaN/Inf values in the compressed outputs"
        result.append(Gate("finite-outputs", 0, bad, bad == 0, reason))
    if gates.max_accuracy_drop == 0:
        result.append(_lossless(ev))
    elif gates.max_accuracy_drop is not None:
        value = None if ev is None else ev.accuracy_drop_points
        result.append(
            _at_most(
                "--max-accuracy-drop",
                gates.max_accuracy_drop,
                value,
                "no accuracy: needs --data with labels and a class-score output",
            )
        )
    if gates.min_agreement is not None:
        metrics = None if ev is None else ev.label_metrics
        value = None if metrics is None else metrics.top1_agreement
        result.append(
            _at_least(
                "--min-agreement",
                gates.min_agreement,
                value,
                "no top-1 agreement: no output looks like class scores",
            )
        )
    if gates.min_cosine is not None:
        cosines = [] if ev is None else [o.cosine for o in ev.outputs if o.cosine is not None]
        result.append(
            _at_least(
                "--min-cosine",
                gates.min_cosine,
                min(cosines) if cosines else None,
                "no numeric output to compare",
            )
        )
    if gates.min_ratio is not None:
        result.append(_at_least("--min-ratio", gates.min_ratio, report.compression_ratio, ""))
    if gates.max_latency_ratio is not None:
        value = None if ev is None else ev.latency_ratio
        result.append(
            _at_most("--max-latency-ratio", gates.max_latency_ratio, value, "latency not measured")
        )
    return result
