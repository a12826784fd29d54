"""The results of a command, as data: JSON for machines, rich tables for people.

JSON conventions: snake_case keys, sizes in integer bytes, ratios as
compressed / original, and everything that changes from run to run (paths,
versions, timings and latencies) under ``meta``, so two runs can be compared by
dropping one key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from prunequant_cli.encodings import describe_encoding

SCHEMA_VERSION = 1


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
    """Agreement of one model output, compressed vs original (computed in float64)."""

    name: str
    cosine: float | None
    max_abs_error: float | None
    mean_abs_error: float | None
    top1_agreement: float | None
    nonfinite: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cosine": self.cosine,
            "max_abs_error": self.max_abs_error,
            "mean_abs_error": self.mean_abs_error,
            "top1_agreement": self.top1_agreement,
            "nonfinite": self.nonfinite,
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
    session_rss_original: int | None = None
    session_rss_compressed: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def accuracy_drop_points(self) -> float | None:
        if self.accuracy_original is None or self.accuracy_compressed is None:
            return None
        return 100.0 * (self.accuracy_original - self.accuracy_compressed)

    @property
    def latency_ratio(self) -> float | None:
        if not self.latency_ms_original or self.latency_ms_compressed is None:
            return None
        return self.latency_ms_compressed / self.latency_ms_original

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": self.samples,
            "label_output": self.label_output,
            "accuracy": None
            if self.accuracy_original is None
            else {
                "original": self.accuracy_original,
                "compressed": self.accuracy_compressed,
                "drop_points": self.accuracy_drop_points,
            },
            "outputs": [o.to_dict() for o in self.outputs],
            "notes": list(self.notes),
        }


@dataclass
class CompressReport:
    """Everything `compress` measured."""

    original: ModelSummary
    compressed: ModelSummary
    settings: dict[str, Any]
    tensors: list[TensorRecord]
    skipped: list[tuple[str, str]]
    evaluation: Evaluation | None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.compressed.file_bytes / max(self.original.file_bytes, 1)

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
        ev = self.evaluation
        meta = dict(self.meta)
        if ev is not None:
            meta["latency_ms"] = {
                "original": ev.latency_ms_original,
                "compressed": ev.latency_ms_compressed,
                "ratio": ev.latency_ratio,
            }
            meta["session_rss_bytes"] = {
                "original": ev.session_rss_original,
                "compressed": ev.session_rss_compressed,
            }
        return {
            "schema_version": SCHEMA_VERSION,
            "command": "compress",
            "settings": self.settings,
            "original": self.original.to_dict(),
            "compressed": self.compressed.to_dict(),
            "ratio": self.ratio,
            "weight_storage": self.weight_storage(),
            "tensors": [t.to_dict() for t in self.tensors],
            "skipped": [{"name": n, "reason": r} for n, r in self.skipped],
            "evaluation": None if ev is None else ev.to_dict(),
            "notes": list(self.notes),
            "meta": meta,
        }


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


def render_compress(report: CompressReport, console: Console, verbose: bool = False) -> None:
    """The before/after table, and with ``verbose`` the per-tensor breakdown."""
    o, c = report.original, report.compressed
    table = Table(title="prunequant compress", title_justify="left")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("compressed", justify="right")
    table.add_column("change", justify="right")
    table.add_row(
        "file size",
        fmt_bytes(o.file_bytes),
        fmt_bytes(c.file_bytes),
        f"[green]×{report.ratio:.3f}[/]" if report.ratio < 1 else f"[red]×{report.ratio:.3f}[/]",
    )
    if o.gzip_bytes and c.gzip_bytes:
        table.add_row(
            "gzip size (download)",
            fmt_bytes(o.gzip_bytes),
            fmt_bytes(c.gzip_bytes),
            f"×{c.gzip_bytes / o.gzip_bytes:.3f}",
        )
    storage = report.weight_storage()
    if storage["bits_per_weight"] is not None:
        table.add_row(
            "weights",
            fmt_bytes(storage["float_bytes"]),
            fmt_bytes(storage["stored_bytes"]),
            f"{storage['bits_per_weight']:.2f} bits/weight",
        )
    table.add_row(
        "parameters", f"{o.parameters:,}", f"{c.parameters:,}", f"{c.parameters - o.parameters:+,}"
    )
    table.add_row(
        "non-zero parameters",
        f"{o.nonzero_parameters:,}",
        f"{c.nonzero_parameters:,}",
        f"{c.nonzero_parameters - o.nonzero_parameters:+,}",
    )
    ev = report.evaluation
    if ev is not None:
        if ev.accuracy_original is not None:
            drop = ev.accuracy_drop_points or 0.0
            table.add_row(
                f"accuracy ({ev.label_output})",
                _pct(ev.accuracy_original),
                _pct(ev.accuracy_compressed),
                f"{-drop:+.2f} pts",
            )
        for out in ev.outputs:
            if out.top1_agreement is not None:
                table.add_row(f"top-1 agreement ({out.name})", "", _pct(out.top1_agreement), "")
            table.add_row(f"cosine similarity ({out.name})", "", _num(out.cosine, ".6f"), "")
            table.add_row(f"max abs error ({out.name})", "", _num(out.max_abs_error), "")
            if out.nonfinite:
                table.add_row(f"[red]NaN/Inf values ({out.name})[/]", "", str(out.nonfinite), "")
        if ev.latency_ms_original is not None:
            table.add_row(
                "median latency",
                f"{ev.latency_ms_original:.3f} ms",
                f"{ev.latency_ms_compressed:.3f} ms",
                f"×{ev.latency_ratio:.2f}",
            )
        if ev.session_rss_original and ev.session_rss_compressed:
            table.add_row(
                "onnxruntime session memory",
                fmt_bytes(ev.session_rss_original),
                fmt_bytes(ev.session_rss_compressed),
                f"×{ev.session_rss_compressed / ev.session_rss_original:.2f}",
            )
    console.print(table)
    done = [t for t in report.tensors if t.encoding or t.prune_method]
    console.print(
        f"{len(done)} of {len(report.tensors)} weight tensors compressed; "
        f"{len(report.skipped)} other float tensors left as they were."
    )
    for note in report.notes:
        console.print(f"Note: {note}")
    if ev is not None:
        kind = "samples from the data file" if ev.source == "data" else "synthetic samples"
        console.print(f"Evaluated on {ev.samples} {kind}.")
        for note in ev.notes:
            console.print(f"Note: {note}")
    if verbose:
        render_tensors(report.tensors, console)
        if report.skipped:
            skipped = Table(title="left as they were", title_justify="left")
            skipped.add_column("tensor")
            skipped.add_column("reason")
            for name, reason in report.skipped:
                skipped.add_row(name, reason)
            console.print(skipped)


def render_tensors(records: list[TensorRecord], console: Console) -> None:
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
            rec.name,
            "×".join(map(str, rec.shape)),
            f"{rec.rows_pruned}/{rec.rows}",
            f"{100 * d['sparsity_before']:.1f}% → {100 * d['sparsity_after']:.1f}%",
            describe_encoding(d["encoding"], rec.bits),
            f"{d['bits_per_weight']:.2f}",
            f"{fmt_bytes(rec.float_bytes)} → {fmt_bytes(d['stored_bytes'])}",
            _num(rec.max_abs_error, ".3g"),
        )
    console.print(table)
