"""Pass/fail conditions a CI job can gate a build on."""

from __future__ import annotations

from prunequant_cli.config import GateConfig
from prunequant_cli.report import CompressReport, Gate


def _at_least(name: str, threshold: float, value: float | None, missing: str) -> Gate:
    if value is None:
        return Gate(name, threshold, None, False, missing)
    return Gate(name, threshold, value, value >= threshold)


def _at_most(name: str, threshold: float, value: float | None, missing: str) -> Gate:
    if value is None:
        return Gate(name, threshold, None, False, missing)
    return Gate(name, threshold, value, value <= threshold)


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
    if gates.max_accuracy_drop is not None:
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
