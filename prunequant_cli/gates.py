"""Pass/fail conditions a CI job can gate a build on.

The quality gates are the budget's verdicts from :mod:`prunequant_cli.judge`, the same
code the search uses to decide what stays within the budget.
"""

from __future__ import annotations

from prunequant_cli.config import GateConfig
from prunequant_cli.judge import Budget
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
    result.extend(Budget.from_gates(gates).verdicts(None if ev is None else ev.quality))
    if gates.min_ratio is not None:
        result.append(_at_least("--min-ratio", gates.min_ratio, report.compression_ratio, ""))
    if gates.max_latency_ratio is not None:
        value = None if ev is None else ev.latency_ratio
        result.append(
            _at_most("--max-latency-ratio", gates.max_latency_ratio, value, "latency not measured")
        )
    return result
