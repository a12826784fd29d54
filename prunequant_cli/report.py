"""The results of a command, as data: JSON for machines, rich tables for people.

JSON conventions: snake_case keys, sizes in integer bytes, ratios as
compressed / original, and everything that changes from run to run (paths,
versions, timings and latencies) under ``meta``, so two runs can be compared by
dropping one key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prunequant_cli.encodings import describe_encoding
from prunequant_cli.errors import safe_text

if TYPE_CHECKING:
    from rich.console import Console

    from prunequant_cli.evaluate import SessionCost

SCHEMA_VERSION = 2


@dataclass
class TensorRecord:
    """What happened to one weight tensor."""

    name: str
    graph: str
    op_types: tuple[str, ...]
    shape: tuple[int, ...]
    axis: int
    dtype: str
    float_bytes: int
    zeros_before: int
    rows_pruned: int = 0
    zeros_after_prune: int | None = None
    zeros_after: int | None = None
    prune_method: str | None = None
    bits: int | None = None
    encoding: str | None = None
    stored_bytes: int | None = None
    max_abs_error: float | None = None
    note: str | None = None
    rounding: str | None = None  # uniform codes: "nearest" or "gptq"

    @property
    def parameters(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        return self.shape[self.axis] if self.shape else 1

    def to_dict(self) -> dict[str, Any]:
        n = max(self.parameters, 1)
        after = self.zeros_before if self.zeros_after is None else self.zeros_after
        stored = self.float_bytes if self.stored_bytes is None else self.stored_bytes
        return {
            "name": self.name,
            "graph": self.graph,
            "op_types": list(self.op_types),
            "shape": list(self.shape),
            "axis": self.axis,
            "dtype": self.dtype,
            "parameters": self.parameters,
            "rows": self.rows,
            "rows_pruned": self.rows_pruned,
            "prune_method": self.prune_method,
            "sparsity_before": self.zeros_before / n,
            "sparsity_after": after / n,
            "bits": self.bits,
            "encoding": self.encoding or self.dtype,
            "float_bytes": self.float_bytes,
            "stored_bytes": stored,
            "bits_per_weight": 8.0 * stored / n,
            "max_abs_error": self.max_abs_error,
            "rounding": self.rounding,
            "note": self.note,
        }


@dataclass
class ModelSummary:
    """Sizes and counts of one model file."""

    file_bytes: int
    parameters: int
    nonzero_parameters: int
    weights: int
    gzip_bytes: int | None = None  # what a download costs: each file gzip-compressed

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_bytes": self.file_bytes,
            "gzip_bytes": self.gzip_bytes,
            "parameters": self.parameters,
            "nonzero_parameters": self.nonzero_parameters,
            "weights": self.weights,
        }


@dataclass
class OutputMetrics:
    """Agreement of one model output, compressed vs original (computed in float64).

    ``sqnr_db`` is 10·log10(Σ original² / Σ (original − compressed)²); None when the
    outputs are identical (infinite). ``relative_error`` is ‖original − compressed‖ /
    ‖original‖. ``top5_agreement`` is the share of samples whose original top-1 class
    is among the compressed model's top 5.
    """

    name: str
    cosine: float | None = None
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    relative_error: float | None = None
    sqnr_db: float | None = None
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    nonfinite: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cosine": self.cosine,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "relative_error": self.relative_error,
            "sqnr_db": self.sqnr_db,
            "top1_agreement": self.top1_agreement,
            "top5_agreement": self.top5_agreement,
            "nonfinite": self.nonfinite,
        }


@dataclass
class LayerError:
    """The error one compressed weight introduces in its own layer's output.

    The layer runs on the original model's activations, once with the original
    weight and once with the compressed one, so upstream errors do not mix in.
    """

    weight: str
    node: str
    op_type: str
    output: str
    cosine: float | None
    relative_error: float | None
    sqnr_db: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": self.weight,
            "node": self.node,
            "op_type": self.op_type,
            "output": self.output,
            "cosine": self.cosine,
            "relative_error": self.relative_error,
            "sqnr_db": self.sqnr_db,
        }


@dataclass
class Evaluation:
    """Both models run in onnxruntime on the same inputs."""

    source: str  # "data" or "synthetic"
    samples: int
    outputs: list[OutputMetrics]
    label_output: str | None = None
    accuracy_original: float | None = None
    accuracy_compressed: float | None = None
    latency_ms_original: float | None = None
    latency_ms_compressed: float | None = None
    latency_p90_ms_original: float | None = None
    latency_p90_ms_compressed: float | None = None
    # creating an onnxruntime session of each model (seconds, settled and peak memory)
    session_original: SessionCost | None = None
    session_compressed: SessionCost | None = None
    layers: list[LayerError] | None = None
    notes: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # what a search or correction fitted on
    metric_name: str | None = None
    quality: Any = None  # the judge's measurement (judge.Quality), which the gates read

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.accuracy_original is None or self.accuracy_compressed is None:
            return None
        return 100.0 * (self.accuracy_original - self.accuracy_compressed)

    def _interval(self, name: str) -> list[float] | None:
        value = None if self.quality is None else getattr(self.quality, name)
        return None if value is None else [float(value[0]), float(value[1])]

    @property
    def latency_ratio(self) -> float | None:
        if not self.latency_ms_original or self.latency_ms_compressed is None:
            return None
        return self.latency_ms_compressed / self.latency_ms_original

    @property
    def label_metrics(self) -> OutputMetrics | None:
        """The output that carries the labels, else the first classifier-like output."""
        named = [o for o in self.outputs if o.name == self.label_output]
        classifiers = [o for o in self.outputs if o.top1_agreement is not None]
        found = named or classifiers
        return found[0] if found else None

    @property
    def nonfinite(self) -> int:
        return sum(o.nonfinite for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.samples,
            "label_output": self.label_output,
            "calibration": self.calibration,
            "output_kinds": None
            if self.quality is None
            else {n: k.kind for n, k in self.quality.kinds.items()},
            "accuracy": None
            if self.accuracy_original is None
            else {
                "original": self.accuracy_original,
                "compressed": self.accuracy_compressed,
                "drop_points": self.accuracy_drop_points,
                "drop_interval_95": self._interval("drop_interval"),
            },
            "agreement": None
            if self.quality is None or self.quality.agreement is None
            else {
                "output": self.label_output,
                "top1": self.quality.agreement,
                "interval_95": self._interval("agreement_interval"),
            },
            "metric": None
            if self.quality is None or self.quality.metric_original is None
            else {
                "name": self.metric_name,
                "original": self.quality.metric_original,
                "compressed": self.quality.metric_compressed,
                "drop": self.quality.metric_drop,
                "drop_interval_95": self._interval("metric_drop_interval"),
            },
            "outputs": [o.to_dict() for o in self.outputs],
            "layers": None if self.layers is None else [x.to_dict() for x in self.layers],
            "notes": list(self.notes),
        }


@dataclass
class Gate:
    """One pass/fail condition of a CI gate."""

    name: str  # the option that set it, e.g. "--min-cosine"
    threshold: float
    value: float | None  # None when it could not be measured (which fails the gate)
    passed: bool
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "threshold": self.threshold,
            "value": self.value,
            "passed": self.passed,
            "reason": self.reason,
        }


@dataclass
class CompressReport:
    """Everything `compress` (or `compare`) measured."""

    original: ModelSummary
    compressed: ModelSummary
    settings: dict[str, Any] | None
    tensors: list[TensorRecord]
    skipped: list[tuple[str, str]]
    evaluation: Evaluation | None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    command: str = "compress"
    gates: list[Gate] = field(default_factory=list)
    search: dict[str, Any] | None = None

    @property
    def ratio(self) -> float:
        """Compressed / original file bytes."""
        return self.compressed.file_bytes / max(self.original.file_bytes, 1)

    @property
    def compression_ratio(self) -> float:
        """Original / compressed file bytes: how many times smaller."""
        return self.original.file_bytes / max(self.compressed.file_bytes, 1)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def weight_storage(self) -> dict[str, Any]:
        """Bytes of the weight tensors as floats and as stored, and bits per weight."""
        docs = [t.to_dict() for t in self.tensors]
        params = sum(d["parameters"] for d in docs)
        stored = sum(d["stored_bytes"] for d in docs)
        return {
            "float_bytes": sum(d["float_bytes"] for d in docs),
            "stored_bytes": stored,
            "bits_per_weight": 8.0 * stored / params if params else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: figures that are not finite are null, and a note names them."""
        doc = self._document()
        return finite_document(doc)

    def _document(self) -> dict[str, Any]:
        ev = self.evaluation
        meta = dict(self.meta)
        if ev is not None:
            meta["latency_ms"] = {
                "original": ev.latency_ms_original,
                "compressed": ev.latency_ms_compressed,
                "ratio": ev.latency_ratio,
                "p90_original": ev.latency_p90_ms_original,
                "p90_compressed": ev.latency_p90_ms_compressed,
            }
            a, b = ev.session_original, ev.session_compressed
            meta["session_rss_bytes"] = {
                "original": a.rss if a else None,
                "compressed": b.rss if b else None,
            }
            meta["session_peak_rss_bytes"] = {
                "original": a.peak_rss if a else None,
                "compressed": b.peak_rss if b else None,
            }
            meta["session_seconds"] = {
                "original": round(a.seconds, 4) if a else None,
                "compressed": round(b.seconds, 4) if b else None,
            }
        return {
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "passed": self.passed,
            "gates": [g.to_dict() for g in self.gates],
            "failed_gates": [g.name for g in self.gates if not g.passed],
            "settings": self.settings,
            "original": self.original.to_dict(),
            "compressed": self.compressed.to_dict(),
            "ratio": self.ratio,
            "compression_ratio": self.compression_ratio,
            "weight_storage": self.weight_storage(),
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "evaluation": None if ev is None else ev.to_dict(),
            "search": self.search,
            "notes": list(self.notes),
            "meta": meta,
        }


def _non_finite(value: Any, path: str, found: list[str]) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        found.append(f"{path} ({value})")
        return None
    if isinstance(value, dict):
        return {
            k: _non_finite(v, f"{path}.{k}" if path else str(k), found) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_non_finite(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


def finite_document(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with every NaN/Inf number made null (JSON has none), and, when there were
    some, a note in ``notes`` that names where (a model that outputs NaN is exactly what
    a CI job must be told about, in a document it can parse)."""
    found: list[str] = []
    clean = _non_finite(doc, "", found)
    if found and isinstance(clean.get("notes"), list):
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        clean["notes"].append(f"not finite, so null in this document: {shown}")
    return dict(clean)


def cell(text: object) -> str:
    """A model-provided string made safe for a rich table: one line, escaped, no markup."""
    from rich.markup import escape

    return escape(safe_text(text, 120))


def fmt_bytes(n: int) -> str:
    """Bytes for people: 153,984 B -> '150.4 KiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None, spec: str = ".4g") -> str:
    return "–" if x is None else format(x, spec)


def _metric_ci(interval: tuple[float, float] | None) -> str:
    """' (95% CI lo…hi)' of a metric's change (minus its drop), or ''."""
    return "" if interval is None else f" (95% CI {-interval[1]:+.3g}…{-interval[0]:+.3g})"


def summary_rows(report: CompressReport) -> list[tuple[str, str, str, str]]:
    """(what, original, compressed, change) rows: the comparison, for any renderer."""
    o, c = report.original, report.compressed
    rows = [("file size", fmt_bytes(o.file_bytes), fmt_bytes(c.file_bytes), f"×{report.ratio:.3f}")]
    if o.gzip_bytes and c.gzip_bytes:
        gz = c.gzip_bytes / o.gzip_bytes
        rows.append(
            ("gzip size (download)", fmt_bytes(o.gzip_bytes), fmt_bytes(c.gzip_bytes), f"×{gz:.3f}")
        )
    storage = report.weight_storage()
    if storage["bits_per_weight"] is not None:
        rows.append(
            (
                "weights",
                fmt_bytes(storage["float_bytes"]),
                fmt_bytes(storage["stored_bytes"]),
                f"{storage['bits_per_weight']:.2f} bits/weight",
            )
        )
    rows.append(
        (
            "parameters",
            f"{o.parameters:,}",
            f"{c.parameters:,}",
            f"{c.parameters - o.parameters:+,}",
        )
    )
    rows.append(
        (
            "non-zero parameters",
            f"{o.nonzero_parameters:,}",
            f"{c.nonzero_parameters:,}",
            f"{c.nonzero_parameters - o.nonzero_parameters:+,}",
        )
    )
    ev = report.evaluation
    if ev is None:
        return rows
    q = ev.quality
    if ev.accuracy_original is not None:
        drop = ev.accuracy_drop_points or 0.0
        interval = None if q is None else q.drop_interval
        ci = "" if interval is None else f" (95% CI {-interval[1]:+.2f}…{-interval[0]:+.2f})"
        rows.append(
            (
                f"accuracy ({ev.label_output})",
                _pct(ev.accuracy_original),
                _pct(ev.accuracy_compressed),
                f"{-drop + 0.0:+.2f} pts{ci}",
            )
        )
    if q is not None and q.metric_original is not None:
        rows.append(
            (
                f"metric ({ev.metric_name})",
                _num(q.metric_original, ".6g"),
                _num(q.metric_compressed, ".6g"),
                f"{-(q.metric_drop or 0.0) + 0.0:+.4g}{_metric_ci(q.metric_drop_interval)}",
            )
        )
    for out in ev.outputs:
        if out.top1_agreement is not None:
            rows.append(
                (
                    f"top-1 / top-5 agreement ({out.name})",
                    "",
                    f"{_pct(out.top1_agreement)} / {_pct(out.top5_agreement)}",
                    "",
                )
            )
        if out.nonfinite:
            # Distances to NaN/Inf mean nothing: say so instead of a number.
            rows.append((f"cosine similarity ({out.name})", "", "n/a (NaN/Inf)", ""))
        elif out.cosine is not None:
            rows.append((f"cosine similarity ({out.name})", "", _num(out.cosine, ".6f"), ""))
            sqnr = "∞" if out.sqnr_db is None else f"{out.sqnr_db:.1f} dB"
            rows.append(
                (
                    f"SQNR / relative error ({out.name})",
                    "",
                    f"{sqnr} / {_num(out.relative_error, '.3g')}",
                    "",
                )
            )
            rows.append((f"max abs error ({out.name})", "", _num(out.max_abs_error), ""))
        if out.nonfinite:
            rows.append((f"NaN/Inf values ({out.name})", "", str(out.nonfinite), "failure"))
    if ev.latency_ms_original is not None and ev.latency_ms_compressed is not None:
        rows.append(
            (
                "latency median (p90)",
                f"{ev.latency_ms_original:.3f} ms ({ev.latency_p90_ms_original:.3f})",
                f"{ev.latency_ms_compressed:.3f} ms ({ev.latency_p90_ms_compressed:.3f})",
                f"×{ev.latency_ratio:.2f}",
            )
        )
    a, b = ev.session_original, ev.session_compressed
    if a and b:
        rows.append(
            (
                "session creation time",
                seconds_text(a.seconds),
                seconds_text(b.seconds),
                f"×{b.seconds / a.seconds:.2f}" if a.seconds > 0 else "",
            )
        )
        for label, x, y in (
            ("session memory (peak while created)", a.peak_rss, b.peak_rss),
            ("session memory (settled)", a.rss, b.rss),
        ):
            if x and y:
                rows.append((label, fmt_bytes(x), fmt_bytes(y), f"×{y / x:.2f}"))
    return rows


def seconds_text(x: float) -> str:
    return f"{x:.3f} s" if x < 1 else f"{x:.2f} s"


def evaluated_on(ev: Evaluation) -> str:
    """Which samples the figures are measured on, and what was fitted on which."""
    kind = "samples from the data file" if ev.source == "data" else "synthetic samples"
    cal = ev.calibration
    if cal is None:
        return f"Evaluated on {ev.samples} {kind}."
    if cal["overlap"]:
        return (
            f"Evaluated on {ev.samples} {kind}, the same samples it calibrated on "
            "(in-sample, not held-out)."
        )
    where = {
        "file": "--calibration-data",
        "split": "a split of --data",
        "synthetic": "other synthetic samples",
    }.get(cal["source"], cal["source"])
    return (
        f"Evaluated on {ev.samples} held-out {kind}; calibrated on {cal['samples']} "
        f"samples from {where}."
    )


def _gate_text(g: Gate) -> str:
    value = "not measured" if g.value is None else f"{g.value:.6g}"
    verdict = "passed" if g.passed else "FAILED"
    reason = f" ({g.reason})" if g.reason else ""
    return f"{g.name} {g.threshold:g}: {value} {verdict}{reason}"


def render_compress(report: CompressReport, console: Console, verbose: bool = False) -> None:
    """The before/after table, gates, notes, and with ``verbose`` the per-tensor breakdown."""
    from rich.table import Table

    second = "compressed" if report.command == "compress" else "B"
    first = "original" if report.command == "compress" else "A"
    table = Table(title=f"prunequant {report.command}", title_justify="left")
    table.add_column("")
    table.add_column(first, justify="right")
    table.add_column(second, justify="right")
    table.add_column("change", justify="right")
    for row in summary_rows(report):
        table.add_row(*(cell(c) for c in row))
    console.print(table)
    if report.command == "compress":
        done = [t for t in report.tensors if t.encoding or t.prune_method]
        console.print(
            f"{len(done)} of {len(report.tensors)} weight tensors compressed; "
            f"{len(report.skipped)} other float tensors left as they were."
        )
    ev = report.evaluation
    if ev is not None:
        console.print(evaluated_on(ev))
    for note in [*report.notes, *([] if ev is None else ev.notes)]:
        console.print(f"Note: {safe_text(note, 600)}", markup=False)
    # The implicit finite-outputs gate is shown when it fails or beside requested gates.
    shown = (
        report.gates
        if any(g.name != "finite-outputs" or not g.passed for g in report.gates)
        else []
    )
    for g in shown:
        style = "green" if g.passed else "bold red"
        console.print(f"Gate {_gate_text(g)}", style=style, markup=False)
    if shown:
        console.print("All gates passed." if report.passed else "Some gates FAILED.")
    if ev is not None and ev.layers:
        render_layers(ev.layers, console)
    if report.search:
        render_search(report.search, console, verbose)
    if verbose:
        render_tensors(report.tensors, console)
        if report.skipped:
            skipped = Table(title="left as they were", title_justify="left")
            skipped.add_column("tensor")
            skipped.add_column("reason")
            for name, reason in report.skipped:
                skipped.add_row(cell(name), cell(reason))
            console.print(skipped)


def _quality_cells(q: dict[str, Any]) -> list[str]:
    drop = q.get("accuracy_drop_points")
    return [
        "–" if drop is None else f"{drop:.2f} pts",
        _pct(q.get("top1_agreement")),
        _num(q.get("min_cosine"), ".5f"),
        _num(q.get("max_relative_error"), ".3g"),
    ]


def render_search(search: dict[str, Any], console: Console, verbose: bool) -> None:
    """What a search chose, the size-vs-quality points it measured, and (verbose) sensitivity."""
    from rich.table import Table

    phases = ", ".join(f"{k} {v:.1f} s" for k, v in search.get("phase_seconds", {}).items())
    confirmation = search.get("confirmation")
    confirmed = (
        ""
        if not confirmation
        else f"; confirmed on {confirmation['samples']} other calibration samples "
        f"({len(confirmation['checked'])} checked)"
    )
    console.print(
        f"Search: {len(search['tried'])} configurations measured on the calibration samples in "
        f"{search['seconds']:.1f} s ({phases}){confirmed}; recipe written to "
        f"{search.get('recipe')}.",
        markup=False,
    )
    chosen = Table(title="chosen per-weight settings", title_justify="left")
    chosen.add_column("weight")
    chosen.add_column("setting")
    for name, setting in search["settings"].items():
        chosen.add_row(cell(name), setting)
    console.print(chosen)
    pareto = Table(
        title="size vs quality on the calibration samples (Pareto points)", title_justify="left"
    )
    for col, just in (
        ("configuration", "left"),
        ("weight bytes", "right"),
        ("accuracy", "right"),
        ("top-1 agreement", "right"),
        ("min cosine", "right"),
        ("max rel. error", "right"),
    ):
        pareto.add_column(col, justify=just)  # type: ignore[arg-type]
    with_metric = any(t["quality"].get("metric") is not None for t in search["tried"])
    if with_metric:  # ± the noise of its drop on another set of the held-out size
        pareto.add_column("metric", justify="right")
    for t in sorted(search["tried"], key=lambda t: -t["weight_bytes"]):
        if t["pareto"] or verbose:
            q = t["quality"]
            cells = _quality_cells(q)
            if with_metric:
                noise = q.get("metric_drop_noise")
                cells.append(_num(q.get("metric"), ".4g") + (f" ±{noise:.2g}" if noise else ""))
            pareto.add_row(cell(t["label"]), fmt_bytes(t["weight_bytes"]), *cells)
    console.print(pareto)
    if verbose:
        rows: dict[str, dict[str, float]] = {}
        for r in search["sensitivity"]:
            rows.setdefault(r["tensor"], {})[r["setting"]] = r["damage"]
        settings = list(dict.fromkeys(r["setting"] for r in search["sensitivity"]))
        table = Table(
            title="sensitivity: output relative error with one weight changed", title_justify="left"
        )
        table.add_column("weight")
        for name in settings:
            table.add_column(name, justify="right")
        for tensor, damage in rows.items():
            table.add_row(cell(tensor), *(_num(damage.get(name), ".2g") for name in settings))
        console.print(table)


def render_layers(layers: list[LayerError], console: Console) -> None:
    from rich.table import Table

    table = Table(
        title="error each weight introduces in its own layer (worst first)", title_justify="left"
    )
    for col, just in (
        ("weight", "left"),
        ("layer", "left"),
        ("SQNR", "right"),
        ("relative error", "right"),
        ("cosine", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for e in layers:
        sqnr = "∞" if e.sqnr_db is None else f"{e.sqnr_db:.1f} dB"
        table.add_row(
            cell(e.weight),
            cell(f"{e.op_type} → {e.output}"),
            sqnr,
            _num(e.relative_error, ".3g"),
            _num(e.cosine, ".6f"),
        )
    console.print(table)


# Characters that Markdown (GitHub's, with its HTML) gives a meaning: as numeric entities
# they show as themselves, in a table cell or in running text, and nothing else.
_MARKDOWN = {c: f"&#{ord(c)};" for c in "\\`*_{}[]<>()#!|~&:$@"}


def _md(cell: object, limit: int = 160) -> str:
    """Model-controlled text made inert in Markdown: one line (control characters escaped,
    long text cut), and no HTML, link, image, emphasis, code span or table cell break."""
    return "".join(_MARKDOWN.get(c, c) for c in safe_text(cell, limit))


def markdown_report(report: CompressReport) -> str:
    """A Markdown summary for a CI job summary or a pull-request comment."""
    first, second = ("original", "compressed") if report.command == "compress" else ("A", "B")
    verdict = (
        ""
        if not report.gates
        else (" — all gates passed" if report.passed else " — **gates failed**")
    )
    lines = [f"## prunequant {report.command}{verdict}", ""]
    m = report.meta
    if m.get("input_path") or m.get("output_path"):
        lines += [f"{_md(m.get('input_path'))} → {_md(m.get('output_path'))}", ""]
    if report.evaluation is not None:
        lines += [_md(evaluated_on(report.evaluation)), ""]
    lines += [f"| | {first} | {second} | change |", "| --- | ---: | ---: | ---: |"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in summary_rows(report)]
    if report.gates:
        lines += ["", "| gate | threshold | value | result |", "| --- | ---: | ---: | --- |"]
        for g in report.gates:
            value = "not measured" if g.value is None else f"{g.value:.6g}"
            reason = f": {_md(g.reason, 300)}" if g.reason else ""
            result = "✅ passed" if g.passed else f"❌ failed{reason}"
            lines.append(f"| {_md(g.name)} | {g.threshold:g} | {value} | {result} |")
    ev = report.evaluation
    if ev is not None and ev.layers:
        lines += ["", "| weight | layer | SQNR | relative error |", "| --- | --- | ---: | ---: |"]
        for e in ev.layers[:10]:
            sqnr = "∞" if e.sqnr_db is None else f"{e.sqnr_db:.1f} dB"
            lines.append(
                f"| {_md(e.weight)} | {_md(e.op_type)} | {sqnr} | {_num(e.relative_error, '.3g')} |"
            )
    if report.search:
        lines += ["", "| weight | chosen setting |", "| --- | --- |"]
        lines += [f"| {_md(n)} | {_md(v)} |" for n, v in report.search["settings"].items()]
    notes = [*report.notes, *([] if ev is None else ev.notes)]
    if notes:
        lines += [""] + [f"- {_md(n, 600)}" for n in notes]
    return "\n".join(lines) + "\n"


def render_tensors(records: list[TensorRecord], console: Console) -> None:
    from rich.table import Table

    table = Table(title="weights", title_justify="left")
    for col, just in (
        ("tensor", "left"),
        ("shape", "left"),
        ("rows pruned", "right"),
        ("sparsity", "right"),
        ("encoding", "left"),
        ("bits/weight", "right"),
        ("bytes", "right"),
        ("max abs err", "right"),
    ):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for rec in records:
        d = rec.to_dict()
        table.add_row(
            cell(rec.name),
            "×".join(map(str, rec.shape)),
            f"{rec.rows_pruned}/{rec.rows}",
            f"{100 * d['sparsity_before']:.1f}% → {100 * d['sparsity_after']:.1f}%",
            describe_encoding(d["encoding"], rec.bits),
            f"{d['bits_per_weight']:.2f}",
            f"{fmt_bytes(rec.float_bytes)} → {fmt_bytes(d['stored_bytes'])}",
            _num(rec.max_abs_error, ".3g"),
        )
    console.print(table)
