"""The compress pipeline and inspect, callable from Python; the CLI is a thin layer over them.

load → select weights → prune pass → quantize pass → encode → save → evaluate both → report.
"""

from __future__ import annotations

import fnmatch
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx_ir as ir

from prunequant_cli.arrays import zero_count
from prunequant_cli.config import CompressConfig, EvalConfig, GateConfig
from prunequant_cli.errors import (
    EvaluationError,
    OutputError,
    PrunequantError,
    UnsupportedModelError,
    UsageError,
    safe_text,
)
from prunequant_cli.gates import check_gates
from prunequant_cli.inspection import Inspection, inspect_ir
from prunequant_cli.model_io import (
    data_file_name,
    densify_sparse_initializers,
    external_files,
    gzip_bytes,
    load_model,
    needs_external_data,
    stage_model,
)
from prunequant_cli.outputs import SideFiles, Staging, check_paths, metric_file
from prunequant_cli.passes import (
    FoldBatchNormPass,
    FoldWeightTransposesPass,
    LiftWeightConstantsPass,
    PrunePass,
    QuantizePass,
    ReleaseInitializerInputsPass,
    RemoveUnusedInitializersPass,
    UncarryLoopConstantsPass,
)
from prunequant_cli.progress import NO_PROGRESS, Progress
from prunequant_cli.report import CompressReport, Evaluation, ModelSummary, TensorRecord
from prunequant_cli.selection import FLOAT_TYPES, Skipped, dims, select_weights

if TYPE_CHECKING:
    from prunequant_cli.dense import DenseResult
    from prunequant_cli.evaluate import Comparison

ModelInput = str | Path | onnx.ModelProto | ir.Model

# Cast and numpy-style broadcasting Mul, which every decoder uses.
MIN_OPSET = 7


def _versions() -> dict[str, str]:
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str]:
    from importlib import metadata

    from prunequant_cli import __version__

    try:  # without importing it: a run without evaluation never needs onnxruntime
        ort_version = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        import onnxruntime

        ort_version = onnxruntime.__version__
    return {
        "prunequant": __version__,
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxruntime": ort_version,
        "numpy": np.__version__,
    }


def _float_summary(model: ir.Model, size: int) -> tuple[ModelSummary, dict[str, int]]:
    """Parameters and non-zeros of all float initializers, and each one's zero count."""
    zeros: dict[str, int] = {}
    params = 0
    for graph in model.graphs():
        for value in graph.initializers.values():
            t = value.const_value
            if t is None or t.dtype not in FLOAT_TYPES:
                continue
            a = t.numpy()
            params += a.size
            zeros[value.name or ""] = zero_count(a)
    return ModelSummary(size, params, params - sum(zeros.values()), 0), zeros


def _as_bytes(source: str | bytes) -> bytes:
    assert isinstance(source, bytes), "an in-memory model is evaluated from its bytes"
    return source


def _load_input(model: ModelInput) -> tuple[ir.Model, Path | None, set[Path], list[str]]:
    """The model to work on, its path (None in memory), its external data files, and
    the sparse initializers that were made dense."""
    if isinstance(model, (str, Path)):
        loaded = load_model(Path(model))
        return loaded.model, loaded.path, loaded.external, loaded.densified
    proto = onnx.ModelProto()
    if isinstance(model, ir.Model):
        proto = ir.serde.serialize_model(model)
    else:
        proto.CopyFrom(model)  # work on a copy, never on the caller's model
    densified = densify_sparse_initializers(proto)
    copy = ir.serde.deserialize_model(proto)
    return copy, None, external_files(copy), densified


def _defaults(
    evaluation: EvalConfig | None, gates: GateConfig | None, progress: Progress | None
) -> tuple[EvalConfig, GateConfig, Progress]:
    """The option sets a caller left out, checked against each other."""
    evaluation, gates = evaluation or EvalConfig(), gates or GateConfig()
    if gates.needs_evaluation and not evaluation.enabled:
        raise UsageError("quality and latency gates need the evaluation: drop --no-eval")
    if gates.metric_given and evaluation.metric is None:
        raise UsageError("--min-metric and --max-metric-drop need --metric FILE.py:FUNCTION")
    return evaluation, gates, progress or NO_PROGRESS


def _prepare(ir_model: ir.Model, densified: list[str]) -> list[str]:
    """Make weights visible to selection (IR < 4 inputs, Constant nodes); say what changed."""
    notes = []
    if densified:
        notes.append(
            f"{len(densified)} sparse initializer(s) read as dense tensors "
            "(their zeros are stored with a bitmask where that is smaller)"
        )
    release = ReleaseInitializerInputsPass()
    release(ir_model)
    uncarry = UncarryLoopConstantsPass()
    uncarry(ir_model)
    if uncarry.uncarried:
        notes.append(
            f"{len(uncarry.uncarried)} weight(s) a Loop carried unchanged through its iterations "
            "are read by its body directly, so they can be compressed"
        )
    fold = FoldWeightTransposesPass()
    fold(ir_model)
    if fold.folded:
        notes.append(
            f"{len(fold.folded)} weight(s) read through a Transpose were stored transposed, "
            "so they can be compressed"
        )
    lift = LiftWeightConstantsPass()
    lift(ir_model)
    if lift.lifted:
        notes.append(f"{len(lift.lifted)} weight(s) held in Constant nodes were made initializers")
    if release.released:
        notes.append(
            f"IR version {release.old_ir_version} lists every initializer as a graph input; "
            f"{release.released} such inputs were unlisted and the IR version raised to 4, "
            "so the weights can be compressed"
        )
    return notes


def _fold_batchnorm(
    ir_model: ir.Model, exclude: Sequence[str], notes: list[str]
) -> tuple[int, int]:
    """Fold each BatchNormalization that follows a Conv into it (not into excluded weights);
    returns the float parameters and non-zeros that this removed from the model."""
    batchnorm = FoldBatchNormPass(exclude)
    batchnorm(ir_model)
    if batchnorm.folded:
        notes.append(
            f"{len(batchnorm.folded)} BatchNormalization(s) folded into the Conv before them "
            f"(as onnxruntime does at load): {batchnorm.saved_bytes:,} bytes of statistics "
            "not stored"
        )
    return batchnorm.removed_parameters, batchnorm.removed_nonzeros


@dataclass
class Workspace:
    """One loaded model and everything measured of the original, shared by the stages of
    a run (a search and the compression it chooses load and run the original once)."""

    model: ir.Model
    path: Path | None
    external: set[Path]
    source: str | bytes  # what onnxruntime opens as the original
    file_bytes: int
    original: ModelSummary
    zeros: dict[str, int]
    notes: list[str]
    comparison: Comparison | None
    skipped: str | None = None  # why the original could not run, when that was no reason to stop
    # float parameters and non-zeros that folding BatchNormalizations removed
    folded: tuple[int, int] = (0, 0)


def _workspace(
    model: ModelInput,
    out: Path,
    evaluation: EvalConfig,
    progress: Progress,
    calibrate: bool = False,
    check: Callable[[ir.Model], None] | None = None,
    side: SideFiles | None = None,
    recipe: Path | None = None,
    optional_evaluation: bool = False,
    exclude: Sequence[str] = (),
) -> Workspace:
    """Load ``model``, check every path the run writes (``out``, a search's ``recipe``,
    ``side``) against every path it reads, prepare the weights, and (when evaluating) run
    the original on the data. ``check`` sees the model before anything heavy runs."""
    progress.stage("loading")
    ir_model, in_path, in_external, densified = _load_input(model)
    writes = [("output", out)]
    if recipe is not None:
        writes.append(("the recipe", recipe))
    optional = [("the output's data file", out.parent / data_file_name(out))]
    reads = [("the input model", p) for p in [in_path] if p is not None]
    reads += [("the input's external data", p) for p in sorted(in_external)]
    check_paths([*reads, *_evaluation_reads(evaluation), *(side.reads if side else ())],
                [*writes, *(side.writes if side else ())], optional)  # fmt: skip
    if check is not None:
        check(ir_model)
    if in_path is not None:
        in_bytes = in_path.stat().st_size + sum(f.stat().st_size for f in in_external)
        source: str | bytes = str(in_path)
    else:
        source = ir.serde.serialize_model(ir_model).SerializeToString()
        in_bytes = len(source)
    comparison, skipped = None, None
    if evaluation.enabled:
        # onnxruntime is imported only when needed
        from prunequant_cli.evaluate import Comparison, SyntheticInputsFailed

        try:
            comparison = Comparison(source, evaluation, ir_model, calibrate=calibrate)
        except SyntheticInputsFailed as e:
            if not optional_evaluation:
                raise
            skipped = str(e)  # the compression needs no evaluation: it goes on without one
    notes = _prepare(ir_model, densified)
    # After the weights held in Constant nodes became initializers, so they are counted,
    # and before any BatchNormalization is folded, so the original is counted as it is.
    original, zeros = _float_summary(ir_model, in_bytes)
    folded = _fold_batchnorm(ir_model, exclude, notes)
    return Workspace(
        ir_model,
        in_path,
        in_external,
        source,
        in_bytes,
        original,
        zeros,
        notes,
        comparison,
        skipped,
        folded,
    )


def _evaluation_reads(evaluation: EvalConfig) -> list[tuple[str, Path]]:
    """The files the evaluation reads: data, calibration data, a metric's file."""
    found = [("--data", evaluation.data), ("--calibration-data", evaluation.calibration_data)]
    found.append(("--metric", metric_file(evaluation.metric)))
    return [(what, Path(p)) for what, p in found if p is not None]


def _deliver(report: CompressReport, staging: Staging, side: SideFiles | None) -> CompressReport:
    """Stage the files rendered from the finished report beside the model, then move all of
    them into place: the run succeeded (a failed gate is a result, and is delivered too)."""
    if side is not None and side.render is not None:
        what = {path: flag for flag, path in side.writes}
        for path, data in side.render(report).items():
            staging.add_bytes(path, data, what.get(path, "file"))
    staging.commit()
    return report


def search(
    model: str | Path,
    output: str | Path,
    gates: GateConfig,
    evaluation: EvalConfig | None = None,
    time_budget: float = 600.0,
    recipe: str | Path | None = None,
    exclude: tuple[str, ...] = (),
    progress: Progress | None = None,
    bias_correction: bool = True,
    side: SideFiles | None = None,
    strip: bool = False,
) -> CompressReport:
    """Find per-weight settings for the smallest model within the quality budget, and write it.

    The budget is the quality part of ``gates`` (``max_accuracy_drop``, 0 for lossless;
    ``min_agreement``; ``min_cosine``; ``min_metric``/``max_metric_drop`` with a metric).
    The search measures on calibration samples (``evaluation.calibration_data``, else a
    split of ``evaluation.data``); the model is then verified on the held-out samples,
    and ``report.passed`` says whether the budget holds there (the best model found is
    written even when it does not). The chosen settings are written as a recipe
    (``recipe``, by default ``<output>.recipe.toml``). ``side``: more files written from the
    report with the model, and more files read (checked against every file written).
    """
    from prunequant_cli.judge import CLASS, Budget, output_kinds
    from prunequant_cli.recipe import recipe_text
    from prunequant_cli.search import Fold, Probe, run_search

    evaluation, gates, progress = _defaults(evaluation, gates, progress)
    budget = Budget.from_gates(gates)
    if not budget.given or not evaluation.enabled:
        raise UsageError("a search needs a quality budget and the evaluation")
    out = Path(output)
    recipe_path = Path(recipe) if recipe is not None else out.with_name(out.name + ".recipe.toml")

    needs_class = budget.min_agreement is not None or bool(budget.max_accuracy_drop)

    def refuse(kinds: dict[str, Any]) -> None:
        if needs_class and not any(k.kind == CLASS for k in kinds.values()):
            what = "--max-accuracy-drop" if budget.max_accuracy_drop else "--min-agreement"
            raise UsageError(
                f"{what} needs a class-score output (Softmax/LogSoftmax/ArgMax) and this "
                "model has none: use --min-cosine F or --metric FILE.py:FN with --min-metric/"
                "--max-metric-drop, or say which output holds class scores with "
                "--output-kind NAME:class"
            )

    def check(m: ir.Model) -> None:
        # Before any data is read, unless labels in the data may still name the output.
        if evaluation.data is None and evaluation.calibration_data is None:
            refuse(output_kinds(m, evaluation.label_output, evaluation.output_kinds))

    ws = _workspace(
        model,
        out,
        evaluation,
        progress,
        calibrate=True,
        check=check,
        side=side,
        recipe=recipe_path,
        exclude=exclude,
    )
    comparison = ws.comparison
    assert comparison is not None and comparison.calibration_batches is not None
    refuse(comparison.kinds)
    sites, _ = select_weights(ws.model, exclude)
    started = time.perf_counter()  # the time budget covers preparing the probe too
    float_bytes = sum(int(t.nbytes) for s in sites if (t := s.value.const_value) is not None)
    stats_budget = max(SEARCH_STATS_MIN, SEARCH_STATS_SHARE * float_bytes)
    corrections, stats = _calibration_pass(
        ws.model, comparison, sites if bias_correction else [], sites, stats_budget
    )
    folds = [Fold(*f) for f in comparison.calibration_folds()]
    probe = Probe(
        ws.model,
        sites,
        folds,
        comparison.judge_for,
        {s.name: s.batch_axis for s in comparison.specs},
        comparison.config.threads,
        [layer.bias for layer, _ in corrections.values()],
    )
    result = run_search(
        ws.model, sites, probe, budget, time_budget, progress, corrections, started, stats
    )
    del probe
    config = CompressConfig(
        per_tensor=result.config.per_tensor,
        exclude=exclude,
        bias_correction=bias_correction,
        strip=strip,
    )
    comment = f"chosen by a search for: {budget.words()}"
    staging = Staging()
    try:
        report = _compress_workspace(
            ws, out, config, gates, progress, staging, corrections, stats=stats
        )
        staging.add_bytes(recipe_path, recipe_text(config, comment).encode("utf-8"), "recipe")
        report.search = {**result.to_dict(), "recipe": str(recipe_path)}
        _finish_search(report, result)
        return _deliver(report, staging, side)
    finally:
        staging.discard()


def _finish_search(report: CompressReport, result: Any) -> None:
    """The search's notes on the report of the model it chose."""
    if not report.passed:
        missed = "; ".join(
            f"{g.name}: {g.value} vs {g.threshold:g}" for g in report.gates if not g.passed
        )
        report.notes.append(
            f"the budget was not met on the held-out samples by the best model found ({missed})"
        )
    if result.out_of_time:
        report.notes.append(
            "--time-budget ran out: some settings were not measured, so another run (on a "
            "faster or slower machine) may choose differently; the recipe reproduces this one"
        )


def _calibration_pass(
    ir_model: ir.Model,
    comparison: Comparison,
    bias_sites: list[Any],
    gptq_sites: list[Any],
    stats_budget: int | None = None,
) -> tuple[dict[str, tuple[Any, np.ndarray]], dict[str, list[np.ndarray]]]:
    """One run of the original model over all calibration samples (never the held-out
    samples the report is measured on) that records both what bias correction needs (each
    correctable weight's layer and the mean of its input) and what GPTQ needs (the
    layer-input statistics H = XᵀX of the weights it can round). The same whether a search
    or a replay of its recipe computes them (a replay only records what its recipe uses)."""
    from prunequant_cli.bias import ActivationMeans, correctable
    from prunequant_cli.calibrate import MAX_STATS_BYTES, LayerStatistics
    from prunequant_cli.evaluate import record

    layers = {s.name: c for s in bias_sites if (c := correctable(ir_model, s.value)) is not None}
    means = ActivationMeans(sorted({c.activation for c in layers.values()}))
    budget = MAX_STATS_BYTES if stats_budget is None else stats_budget
    statistics = LayerStatistics(ir_model, gptq_sites, budget)
    record(
        ir_model,
        [means, statistics],
        comparison.calibration_batches or [],
        comparison.config.threads,
        {s.name: s.batch_axis for s in comparison.specs},
    )
    found = means.means()
    corrections = {n: (c, found[c.activation]) for n, c in layers.items() if c.activation in found}
    return corrections, statistics.stats


# A search holds the statistics of every weight it may round with GPTQ for its whole run:
# at most this many times the model's weight bytes (and at least SEARCH_STATS_MIN bytes),
# so that it stays within a small multiple of a plain run's memory.
SEARCH_STATS_SHARE = 2
SEARCH_STATS_MIN = 64 << 20


def _label(config: CompressConfig) -> str:
    from prunequant_cli.search import label

    return label(config)


def compress(
    model: ModelInput,
    output: str | Path,
    config: CompressConfig | None = None,
    evaluation: EvalConfig | None = None,
    gates: GateConfig | None = None,
    progress: Progress | None = None,
    side: SideFiles | None = None,
) -> CompressReport:
    """Prune and quantize the weights of ``model``, write ``output``, and compare the two.

    Args:
        model: A path to an ONNX file, or an in-memory ``onnx.ModelProto`` or
            ``onnx_ir.Model`` (not modified).
        output: Where to write the compressed model (atomically; with external data
            in ``<output>.data`` when the input had external data or is too big to embed).
        config: What to do to the weights; the default quantizes to 8 bits, no pruning.
        evaluation: How to compare the models in onnxruntime; ``EvalConfig(enabled=False)``
            skips the comparison.
        gates: Pass/fail conditions; ``report.passed`` says whether all held. A failed
            gate does not raise: the model and the report are still produced.
        progress: Receives the stages and per-tensor steps (for a progress bar).
        side: More files written from the report (moved into place with the model, after
            the evaluation) and more files read; all are checked against each other first.

    Returns:
        The report: sizes, per-tensor changes and, when evaluated, the metrics and gates.

    Raises:
        PrunequantError: for any problem with the inputs, the model or the output,
            with the exit code the CLI uses for it.
    """
    config = config or CompressConfig()
    evaluation, gates, progress = _defaults(evaluation, gates, progress)
    if evaluation.calibration_data is not None and not config.calibrates:
        raise UsageError(
            "--calibration-data is what a search, --bias-correction or --rounding gptq "
            "measures on; with these settings nothing calibrates: drop it"
        )
    if config.bias_correction and not evaluation.enabled:
        raise UsageError("--bias-correction needs the evaluation inputs: drop --no-eval")
    if config.calibrates and not evaluation.enabled:
        raise UsageError("--rounding gptq needs calibration inputs: drop --no-eval")

    def check(m: ir.Model) -> None:
        opset = m.opset_imports.get("", m.opset_imports.get("ai.onnx", 0))
        if config.bits is not None and opset < MIN_OPSET:
            raise UnsupportedModelError(
                f"the model uses ONNX opset {opset}; quantized weights need opset "
                f">= {MIN_OPSET} (convert it with onnx.version_converter first)"
            )

    out = Path(output)
    started = time.perf_counter()
    # Without data, gates or calibration nothing needs the evaluation but the report: when the
    # original cannot run on synthetic inputs the model is still written, then the run fails.
    optional = (
        evaluation.data is None
        and evaluation.calibration_data is None
        and not gates.needs_evaluation
        and not config.calibrates
    )
    ws = _workspace(
        model,
        out,
        evaluation,
        progress,
        calibrate=config.calibrates,
        check=check,
        side=side,
        optional_evaluation=optional,
        exclude=config.exclude,
    )
    staging = Staging()
    try:
        report = _compress_workspace(ws, out, config, gates, progress, staging, started=started)
        if ws.skipped is not None:
            report.notes.append(f"not evaluated: {ws.skipped}")
        _deliver(report, staging, side)
    finally:
        staging.discard()
    if ws.skipped is not None:
        raise EvaluationError(
            f"{ws.skipped}; the compressed model was written, but not compared with the original"
        )
    return report


def _compress_workspace(
    ws: Workspace,
    out: Path,
    config: CompressConfig,
    gates: GateConfig,
    progress: Progress,
    staging: Staging,
    corrections: dict[str, tuple[Any, np.ndarray]] | None = None,
    started: float | None = None,
    stats: dict[str, list[np.ndarray]] | None = None,
) -> CompressReport:
    """Apply ``config`` to the loaded model, stage ``out`` in ``staging``, verify what was
    staged (the very file that will be moved onto ``out``), and report.

    ``corrections`` and ``stats``: bias corrections and layer-input statistics already
    measured (by a search) on the calibration data.
    """
    started = time.perf_counter() if started is None else started
    ir_model, in_path, in_external = ws.model, ws.path, ws.external
    in_bytes, original, zeros = ws.file_bytes, ws.original, ws.zeros
    comparison = ws.comparison
    notes = list(ws.notes)
    evaluation = comparison.config if comparison is not None else None
    dense = None
    if config.prune_mode == "dense":
        dense = _prune_channels(ir_model, config, notes)
        zeros = _float_summary(ir_model, in_bytes)[1]  # shapes changed: count again
    sites, skipped = select_weights(ir_model, config.exclude)
    _check_named_weights(ir_model, config, {s.name for s in sites})
    if dense is not None:
        skipped = [*skipped, *(Skipped(n, r) for n, r in dense.skipped)]
    config = _boundary_at_8_bits(ir_model, sites, config, notes)
    original.weights = len(sites)
    records = {
        s.name: TensorRecord(
            name=s.name,
            graph=s.graph.name or "",
            op_types=s.op_types,
            shape=dims(s.value.const_value),  # type: ignore[arg-type]
            axis=s.axis,
            dtype=s.value.const_value.dtype.name.lower(),  # type: ignore[union-attr]
            float_bytes=int(s.value.const_value.nbytes),  # type: ignore[union-attr]
            zeros_before=zeros.get(s.name, 0),
        )
        for s in sites
    }
    if config.bias_correction and comparison is None:
        raise UsageError("--bias-correction needs the evaluation inputs: drop --no-eval")
    gptq = [s for s in sites if config.for_tensor(s.name).rounding == "gptq"]
    need_means = config.bias_correction and corrections is None
    need_stats = bool(gptq) and comparison is not None and stats is None
    if comparison is not None and (need_means or need_stats):
        found_corrections, found_stats = _calibration_pass(
            ir_model, comparison, sites if need_means else [], gptq if need_stats else []
        )
        corrections = found_corrections if need_means else corrections
        stats = found_stats if need_stats else stats
    if config.bias_correction and corrections:
        notes.append(f"bias correction: {len(corrections)} Gemm/Conv biases absorb the shift")
    if gptq and comparison is not None:
        assert stats is not None
        rounded = sum(1 for s in gptq if s.name in stats)
        notes.append(
            f"--rounding gptq: {rounded} weight(s) rounded from their layers' inputs on the "
            "calibration samples"
            + (f"; {len(gptq) - rounded} kept nearest rounding" if rounded < len(gptq) else "")
        )
    if dense is not None:
        for name, (removed, channels) in dense.channels.items():
            if name in records:
                records[name].rows_pruned = removed
                records[name].prune_method = "dense"
                records[name].note = f"{removed} of {channels} output channels removed"
        for name in dense.inputs:
            if name in records and records[name].prune_method is None:
                records[name].note = "input columns of removed channels removed"
    if config.n_m is not None:
        n, m = config.n_m
        notes.append(
            f"{n}:{m} pruning: every {m} consecutive input weights keep their {n} largest; "
            "stored compactly, but the CPU execution provider does not run it faster"
        )
    cleanup = RemoveUnusedInitializersPass()
    ir.passes.PassManager(
        [
            PrunePass(sites, config, records, progress),
            QuantizePass(sites, config, records, progress, corrections, stats),
            cleanup,
        ]
    )(ir_model)
    if cleanup.removed:
        notes.append(f"removed {len(cleanup.removed)} initializer(s) that nothing reads")

    kept = [r for r in records.values() if r.encoding and r.encoding.startswith("dq-")]
    unfused = [r for r in kept if set(r.op_types) - {"MatMul"}]
    if unfused:
        notes.append(
            f"--keep-quantized: {len(unfused)} of {len(kept)} weights feed ops that onnxruntime "
            "does not fuse with DequantizeLinear (Conv, Gemm...): they dequantize on every run, "
            "which saves session memory but costs latency"
        )
    heavy = [
        r for r in records.values() if 2 * r.rows_pruned > r.rows and r.prune_method != "dense"
    ]
    if config.threshold is not None and heavy:
        names = ", ".join(r.name for r in heavy[:3]) + (", …" if len(heavy) > 3 else "")
        notes.append(
            f"--threshold {config.threshold:g} zeroed more than half the rows of {len(heavy)} "
            f"tensor(s) ({names}): a tensor's row shares sum to 1, so their mean is 1/rows "
            f"({1 / heavy[0].rows:.3g} for {heavy[0].name})"
        )
    if config.strip:
        from prunequant_cli import metadata

        stripped = metadata.strip(ir_model)
        notes.append(
            f"--strip removed {stripped.doc_strings} doc string(s) and {stripped.properties} "
            f"metadata entr{'y' if stripped.properties == 1 else 'ies'} "
            f"({stripped.bytes:,} bytes)"
        )
    progress.stage("writing")
    external = needs_external_data(ir_model, bool(in_external))
    staged = stage_model(ir_model, out, external, staging)
    _revalidate(staged)
    written = [staged.parent / data_file_name(out), staged] if external else [staged]
    new_zeros = sum(
        (r.zeros_after if r.zeros_after is not None else r.zeros_before) - r.zeros_before
        for r in records.values()
    )
    gone_params, gone_nonzeros = (dense.parameters, dense.nonzeros) if dense else (0, 0)
    gone_params += ws.folded[0]
    gone_nonzeros += ws.folded[1]
    compressed = ModelSummary(
        file_bytes=sum(p.stat().st_size for p in written),  # the staged files
        parameters=original.parameters - gone_params,
        nonzero_parameters=original.nonzero_parameters - gone_nonzeros - new_zeros,
        weights=len(sites),
    )
    compressed_at = time.perf_counter()
    ev = None
    if comparison is not None:
        # Download sizes cost a pass over both files: measured when evaluating.
        original_files: list[Path | bytes] = (
            [in_path, *in_external] if in_path is not None else [_as_bytes(ws.source)]
        )
        original.gzip_bytes = gzip_bytes(original_files)
        compressed.gzip_bytes = gzip_bytes(written)
        progress.stage("evaluating")
        try:
            ev = comparison.run(str(staged))
        except EvaluationError as e:
            # A model that onnxruntime cannot run is no deliverable: it is not written.
            raise EvaluationError(f"{e} (nothing was written)") from None
        if evaluation is not None and evaluation.per_layer:
            changed = [r.name for r in records.values() if r.encoding or r.prune_method]
            _per_layer(ev, comparison, in_path, staged, changed)
    meta = {
        "input_path": str(in_path) if in_path is not None else None,
        "output_path": str(out),
        "output_files": [str(out.parent / p.name) for p in written],
        "versions": _versions(),
        "compress_seconds": compressed_at - started,
        "evaluate_seconds": time.perf_counter() - compressed_at,
    }
    progress.done()
    report = CompressReport(
        original=original,
        compressed=compressed,
        settings={
            "threshold": config.threshold,
            "sparsity": config.sparsity,
            "prune_method": config.prune_method
            or ("dense" if config.prune_mode == "dense" else None),
            "prune_mode": config.prune_mode,
            "bits": config.bits,
            "quant": config.quant if config.bits not in (None, 16) else None,
            "format": config.format,
            "keep_quantized": config.keep_quantized,
            "bias_correction": config.bias_correction,
            "rounding": config.rounding,
            "all_layers": config.all_layers,
            "strip": config.strip,
            "granularity": (
                "per_tensor"
                if config.quant == "codebook"
                else f"per_block_{config.block_size}"
                if config.block_size
                else "per_channel"
            ),
            "exclude": list(config.exclude),
            "per_tensor": {name: _label(c) for name, c in sorted(config.per_tensor.items())},
        },
        tensors=list(records.values()),
        skipped=[(s.name, s.reason) for s in skipped],
        evaluation=ev,
        meta=meta,
        notes=notes,
    )
    report.gates = check_gates(report, gates)
    return report


def _check_named_weights(ir_model: ir.Model, config: CompressConfig, selected: set[str]) -> None:
    """Per-weight settings (a recipe's) may only name weights this run compresses."""
    unknown = sorted(set(config.per_tensor) - selected)
    if not unknown:
        return
    weights = {s.name for s in select_weights(ir_model, ())[0]}
    excluded = [n for n in unknown if n in weights]
    missing = [n for n in unknown if n not in weights]
    parts = []
    if missing:
        shown = ", ".join(safe_text(n, 60) for n in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        parts.append(f"{len(missing)} weight(s) this model does not have ({shown}{more})")
    if excluded:
        shown = ", ".join(safe_text(n, 60) for n in excluded[:3])
        parts.append(f"{len(excluded)} weight(s) that --exclude leaves out ({shown})")
    raise UsageError(f"the per-weight settings (a recipe) name {' and '.join(parts)}")


# At this many bits or fewer, the first and last layers keep 8 bits unless --all-layers.
BOUNDARY_BITS = 4


def _boundary_at_8_bits(
    ir_model: ir.Model, sites: list[Any], config: CompressConfig, notes: list[str]
) -> CompressConfig:
    """``config`` with the first and last layers' weights at 8 bits, when it quantizes every
    weight to BOUNDARY_BITS or fewer (no per-weight settings, no --all-layers)."""
    from prunequant_cli.selection import boundary_weights

    if config.per_tensor or config.all_layers or config.bits is None or config.bits > BOUNDARY_BITS:
        return config
    kept = sorted(boundary_weights(ir_model, sites))
    if not kept:
        return config
    eight = replace(config, bits=8)
    notes.append(
        f"{len(kept)} weight(s) of the first and last layers kept 8 bits "
        f"(--all-layers quantizes them to {config.bits} too)"
    )
    return replace(config, per_tensor={name: eight for name in kept})


def _prune_channels(ir_model: ir.Model, config: CompressConfig, notes: list[str]) -> DenseResult:
    """Dense pruning before anything else, with what it did in ``notes``."""
    from prunequant_cli.dense import prune_channels

    def excluded(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in config.exclude)

    result = prune_channels(ir_model, config.threshold, config.sparsity, excluded)
    layers = len(result.channels)
    removed = sum(r for r, _ in result.channels.values())
    notes.append(
        f"dense pruning removed {removed} channels from {layers} layer(s) "
        f"({result.parameters:,} parameters); {len(result.skipped)} layer(s) left alone"
        + (
            f"; in {result.approximate} layer(s) the removed channels were not all dead, "
            "so outputs change"
            if result.approximate
            else ""
        )
    )
    return result


def _revalidate(staged: Path) -> None:
    """Read back what was staged with the same checks as any input (not moved into place
    if they fail)."""
    try:
        load_model(staged)
    except PrunequantError as e:
        raise OutputError(f"the written model did not validate, so it was not kept: {e}") from None


def _per_layer(
    ev: Evaluation, comparison: Comparison, original: Path | None, out: Path, weights: list[str]
) -> None:
    """Attach the per-layer errors of ``weights`` to ``ev``."""
    from prunequant_cli.layers import layer_errors

    if original is None:
        ev.notes.append("per-layer: needs the original model as a file")
        return
    if not comparison.batches:
        return
    ev.layers, notes = layer_errors(
        original, out, weights, comparison.batches[0], comparison.config.threads
    )
    ev.notes.extend(notes)


def compare(
    model_a: str | Path,
    model_b: str | Path,
    evaluation: EvalConfig | None = None,
    gates: GateConfig | None = None,
    progress: Progress | None = None,
    side: SideFiles | None = None,
) -> CompressReport:
    """Compare two existing models, e.g. an original and a copy compressed by any tool.

    The report has the same form as :func:`compress`'s (``command: "compare"``, no
    settings): sizes, per-weight changes matched by name, metrics, gates. ``side``: files
    written from the report (checked against both models and the data first).
    """
    from prunequant_cli.evaluate import Comparison

    evaluation, gates, progress = _defaults(evaluation, gates, progress)
    if evaluation.calibration_data is not None:
        raise UsageError("compare calibrates nothing: --calibration-data does not apply")
    started = time.perf_counter()
    progress.stage("loading")
    a, b = load_model(Path(model_a)), load_model(Path(model_b))
    reads = [("MODEL_A", a.path), ("MODEL_B", b.path)]
    reads += [("external data", p) for m in (a, b) for p in sorted(m.external)]
    reads += _evaluation_reads(evaluation)
    check_paths([*reads, *(side.reads if side else ())], side.writes if side else ())
    comparison = Comparison(str(a.path), evaluation, a.model) if evaluation.enabled else None
    info_a = inspect_ir(a.model, a.path, a.file_bytes)
    info_b = inspect_ir(b.model, b.path, b.file_bytes)
    original, compressed = info_a.summary, info_b.summary
    before = {t.name: t for t in info_a.tensors if t.is_weight}
    sites = {s.name: s for s in select_weights(a.model)[0]}
    errors = _weight_errors(a.model, b.model, set(before))
    records = []
    for t in info_b.tensors:
        old = before.get(t.name)
        if old is None or not t.is_weight:
            continue
        site = sites.get(t.name)
        records.append(
            TensorRecord(
                name=t.name,
                graph=t.graph,
                op_types=site.op_types if site else (),
                shape=t.shape,
                axis=old.axis if old.axis is not None else 0,
                dtype=old.dtype,
                float_bytes=old.stored_bytes,
                zeros_before=old.zeros,
                rows_pruned=max(0, (t.zero_rows or 0) - (old.zero_rows or 0)),
                zeros_after=t.zeros,
                bits=t.bits,
                encoding=None if t.encoding == old.encoding else t.encoding,
                stored_bytes=t.stored_bytes,
                max_abs_error=errors.get(t.name),
            )
        )
    ev = None
    if comparison is not None:
        progress.stage("evaluating")
        original.gzip_bytes = gzip_bytes([a.path, *sorted(a.external)])
        compressed.gzip_bytes = gzip_bytes([b.path, *sorted(b.external)])
        ev = comparison.run(str(b.path))
        if evaluation.per_layer:
            _per_layer(ev, comparison, a.path, b.path, [r.name for r in records])
    progress.done()
    report = CompressReport(
        original=original,
        compressed=compressed,
        settings=None,
        tensors=records,
        skipped=[],
        evaluation=ev,
        meta={
            "input_path": str(a.path),
            "output_path": str(b.path),
            "output_files": [str(b.path), *map(str, sorted(b.external))],
            "versions": _versions(),
            "compress_seconds": None,
            "evaluate_seconds": time.perf_counter() - started,
        },
        command="compare",
    )
    report.gates = check_gates(report, gates)
    staging = Staging()
    try:
        return _deliver(report, staging, side)
    finally:
        staging.discard()


def _weight_errors(a: ir.Model, b: ir.Model, names: set[str]) -> dict[str, float]:
    """Largest |B - A| of each named weight, B decoded in onnxruntime; one at a time."""
    from prunequant_cli.inspection import _decode_in_onnxruntime, _find_encoded

    def plain(model: ir.Model, name: str) -> np.ndarray | None:
        for g in model.graphs():
            v = g.initializers.get(name)
            if v is not None and v.const_value is not None:
                return v.const_value.numpy()
        return None

    encoded = {f.decoded.name: f for f in _find_encoded(b)}
    errors = {}
    for name in sorted(names):
        old = plain(a, name)
        found = encoded.get(name)
        new = _decode_in_onnxruntime(b, found) if found is not None else plain(b, name)
        if old is not None and new is not None and old.shape == new.shape and old.size:
            diff = np.abs(new.astype(np.float64) - old.astype(np.float64))
            errors[name] = float(diff.max())
    return errors


def inspect_model(path: str | Path, session_memory: bool = True) -> Inspection:
    """What is inside an ONNX file: interface, ops, every tensor and how weights are stored.

    With ``session_memory``, also the memory an onnxruntime session of it takes
    (measured in a fresh process).
    """
    loaded = load_model(Path(path))
    info = inspect_ir(loaded.model, loaded.path, loaded.file_bytes)
    info.gzip_bytes = gzip_bytes([loaded.path, *sorted(loaded.external)])
    if session_memory:
        from prunequant_cli.evaluate import session_cost  # imports onnxruntime: only when needed

        info.session = session_cost(str(loaded.path), 1)
    return info


__all__ = ["compare", "compress", "inspect_model", "search"]
