"""Run the original and the compressed model in onnxruntime on the same inputs.

Metrics are computed in float64 over every output: cosine similarity, max and mean
absolute error, relative error and SQNR; top-1 and top-5 agreement for
classifier-like outputs ([batch, classes]); accuracy against labels when the data
has them; NaN/Inf counts in the compressed outputs. Latency is the median and p90
of interleaved timed runs of one batch, after warm-up, with the same session
options and thread count for both models.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from prunequant_cli.config import EvalConfig
from prunequant_cli.data import (
    IMAGE_SIZES,
    SEQUENCE_SIZES,
    Dataset,
    InputSpec,
    apply_input_shapes,
    cut,
    fixed_batch,
    free_dimensions,
    input_specs,
    load_dataset,
    samples_of,
    size_attempts,
    split_indices,
    synthetic_dataset,
)
from prunequant_cli.errors import (
    EvaluationError,
    PrunequantError,
    ResourceError,
    UnsupportedModelError,
    UsageError,
    safe_text,
)
from prunequant_cli.judge import Judge, Metric, Quality, closeness, infer_from_labels, output_kinds
from prunequant_cli.report import Evaluation

# Fewest samples in each calibration fold for a search to confirm its choice on a second fold.
MIN_FOLD = 8
# With a --metric, calibration folds and held-out samples run in at least this many batches
# (when the model's batch is free), so that the metric drop's sampling noise can be estimated
# by resampling them.
SPREAD_UNITS = 16


def _resampling_batch(samples: int, batch_size: int) -> int:
    """The batch size that cuts ``samples`` into at least SPREAD_UNITS batches (at most
    ``batch_size``), so that a metric's noise can be estimated by resampling them."""
    return min(batch_size, max(1, -(-samples // SPREAD_UNITS)))


__all__ = ["Comparison", "InputSpec", "closeness", "exposing_session", "open_session"]

WARMUP_RUNS = 3
# Without --data, what the evaluation (synthetic samples through both models, then the timed
# runs) aims to stay within: a heavy model gets fewer samples and timed runs of one sample.
EVALUATION_SECONDS = 20.0


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def open_session(model: str | bytes, threads: int, what: str) -> Any:
    """An onnxruntime CPU session; any failure is an EvaluationError naming ``what``."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # fatal only: errors reach the user as one line
    try:
        return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT's exceptions share no useful base class
        raise _ort_error(e, f"onnxruntime cannot load the {what} model") from None


def _ort_error(e: BaseException, what: str) -> EvaluationError | ResourceError:
    """One line for an onnxruntime failure; an allocation failure is a resource limit."""
    if isinstance(e, MemoryError):
        return ResourceError(f"{what}: out of memory (see --memory-limit)")
    text = str(e)
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if "Failed to allocate" in text or "bad_alloc" in text:
        return ResourceError(f"{what}: out of memory (see --memory-limit)")
    return EvaluationError(f"{what}: {safe_text(first)}")


def exposing_session(model: Any, names: list[str], threads: int) -> tuple[Any, list[str]]:
    """A session of the (onnx_ir) ``model`` with the named activations as extra outputs,
    and the names of all its outputs, in order."""
    import onnx_ir as ir
    from onnx import helper

    proto = ir.serde.serialize_model(model)
    known = {o.name for o in proto.graph.output}
    for n in names:
        if n not in known:
            proto.graph.output.append(helper.make_empty_tensor_value_info(n))
    session = open_session(proto.SerializeToString(), threads, "original")
    return session, [o.name for o in session.get_outputs()]


# Most bytes of exposed activations one run may return: every layer's input of a batch at
# once would be gigabytes on a real CNN.
EXPOSED_BYTES = 256 * 2**20


# A search holds a task metric to its budget also with each candidate's output change doubled:
# what just fits its calibration samples must have room for samples of smaller margin. With
# too few calibration samples for a confirming fold (fewer than 2 × MIN_FOLD), nothing else
# checks the choice on samples it was not made on, so the margin is larger: the table model
# and the face detector of the real-model kit (12 calibration samples each) lost 0.030 and
# 0.039 on their held-out samples at 2 and stayed within 0.02 at 4. With fewer than MIN_FOLD,
# the smallest margin of the samples seen says even less of the unseen ones' (of n seen and n
# unseen samples, the smallest margin of all is an unseen one half the time; with n = 5 it is
# a handful of images): the kit's text detector (5 calibration images) kept a state whose F1
# did not move on any of them at 4 (no noise to measure either) and lost 0.11 on 5 others.
METRIC_STRESS = 2.0
METRIC_STRESS_UNCONFIRMED = 4.0
METRIC_STRESS_FEW = 8.0


def exposed_activations(
    model: Any,
    names: list[str],
    batches: list[dict[str, np.ndarray]],
    threads: int,
    axes: Mapping[str, int | None] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The named activations of the original ``model`` (onnx_ir), piece by piece.

    Batches run in pieces cut along the inputs' batch ``axes``: one sample first, to learn
    what a sample's activations cost, then as many as fit in EXPOSED_BYTES (whole batches
    for a model whose batch size is fixed).
    """
    session, outputs = exposing_session(model, names, threads)
    batch_axes = axes or {}
    wanted = set(names)
    per_sample: int | None = None
    # A model with a fixed batch takes its batches whole: they already have that size.
    fixed = any(
        (axis := batch_axes.get(i.name, 0)) is not None
        and axis < len(i.shape)
        and isinstance(i.shape[axis], int)
        and i.shape[axis] > 1
        for i in session.get_inputs()
    )
    for feed in batches:
        n, start = samples_of(feed, batch_axes), 0
        while start < n:
            step = n if fixed else max(1, EXPOSED_BYTES // per_sample) if per_sample else 1
            stop = min(n, start + step)
            piece = feed if (start, stop) == (0, n) else cut(feed, batch_axes, start, stop)
            values = _run(session, piece, "original")
            if per_sample is None:
                total = sum(int(np.asarray(v).nbytes) for v in values)
                per_sample = max(1, total // (stop - start))
            yield {
                name: np.asarray(v)
                for name, v in zip(outputs, values, strict=True)
                if name in wanted
            }
            start = stop


class Recorder(Protocol):
    """What one run of the original model over the calibration batches feeds: the
    activations it ``names``, piece by piece (see ``record``)."""

    names: list[str]

    def add(self, piece: Mapping[str, np.ndarray]) -> None: ...


def record(
    model: Any,
    recorders: Sequence[Recorder],
    batches: list[dict[str, np.ndarray]],
    threads: int,
    axes: Mapping[str, int | None] | None = None,
) -> None:
    """Run the original ``model`` once over ``batches``, exposing every activation that
    any recorder names, and hand each piece to all of them (bias means and GPTQ statistics
    come from the same run)."""
    names = sorted({n for r in recorders for n in r.names})
    if not names:
        return
    for piece in exposed_activations(model, names, batches, threads, axes):
        for r in recorders:
            r.add(piece)


def _run(session: Any, feed: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return session.run(None, feed)
    except Exception as e:
        raise _ort_error(e, f"onnxruntime failed running the {what} model") from None


def _latency_ms(
    sessions: list[Any], feed: dict[str, np.ndarray], runs: int, warmup: int = WARMUP_RUNS
) -> list[tuple[float, float]]:
    """(median, p90) milliseconds of each session on ``feed``, runs interleaved."""
    for s in sessions:
        for _ in range(warmup):
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):  # interleaved, so drift hits both models alike
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append(time.perf_counter() - t0)
    return [(1000.0 * float(np.median(t)), 1000.0 * float(np.percentile(t, 90))) for t in times]


_SESSION_COST = """
import sys, time
import onnxruntime as ort
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
opts = ort.SessionOptions()
opts.intra_op_num_threads = int(sys.argv[2])
opts.log_severity_level = 4  # fatal only: errors reach the user as one line
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak so far (the imports') is forgotten: VmHWM restarts here
except OSError:
    pass
before = status("VmRSS")
t0 = time.perf_counter()
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
seconds = time.perf_counter() - t0
print(seconds, status("VmRSS") - before, max(status("VmHWM"), status("VmRSS")) - before)
"""


@dataclass(frozen=True)
class SessionCost:
    """What creating an onnxruntime session of a model costs, measured in a fresh process:
    the seconds it takes, the resident memory the session then holds, and the most resident
    memory while it was being created (both above the process's own before it started; a
    model whose weights are decoded at load peaks above what it settles at)."""

    seconds: float
    rss: int
    peak_rss: int


def session_cost(model: str | bytes, threads: int) -> SessionCost | None:
    """:class:`SessionCost` of ``model``; None where it cannot be measured (no /proc, an
    in-memory model, a failure)."""
    if isinstance(model, bytes) or not Path("/proc/self/status").exists():
        return None
    try:
        out = subprocess.run(
            [sys.executable, "-P", "-c", _SESSION_COST, model, str(threads)],  # not the cwd
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        seconds, rss, peak = out.stdout.strip().splitlines()[-1].split()
        return SessionCost(float(seconds), int(rss), max(int(peak), int(rss)))
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


def load_metric(spec: str) -> Metric:
    """``FILE.py:FUNCTION`` or ``module:function``: the user's task metric."""
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise UsageError(f"--metric must be FILE.py:FUNCTION or module:function, got {spec!r}")
    try:
        if target.endswith(".py"):
            from prunequant_cli.model_io import check_readable_file

            path = Path(target)
            try:
                check_readable_file(path, "--metric file")  # a FIFO would hang the import
            except PrunequantError as e:
                raise UsageError(str(e)) from None
            loaded = importlib.util.spec_from_file_location(f"_prunequant_metric_{path.stem}", path)
            if loaded is None or loaded.loader is None:
                raise UsageError(f"--metric cannot load {safe_text(target)}")
            module = importlib.util.module_from_spec(loaded)
            writes = sys.dont_write_bytecode
            sys.dont_write_bytecode = True  # no __pycache__ left beside the user's file
            try:
                loaded.loader.exec_module(module)
            finally:
                sys.dont_write_bytecode = writes
        else:
            module = importlib.import_module(target)
    except PrunequantError:
        raise
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # exiting at import is failing
        raise UsageError(
            f"--metric {safe_text(target)} failed to load: {type(e).__name__}: {safe_text(e, 300)}"
        ) from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise UsageError(f"--metric: {safe_text(target)} has no function {func!r}")
    return Metric(spec, fn)


def run_batches(
    session: Any, batches: list[dict[str, np.ndarray]], what: str
) -> list[list[np.ndarray]]:
    """Each batch's outputs, in order."""
    return [[np.asarray(y) for y in _run(session, feed, what)] for feed in batches]


class SyntheticInputsFailed(EvaluationError):
    """onnxruntime opened the original but could not run it on any synthetic inputs tried:
    the model may be fine, the inputs are what is missing."""


class Comparison:
    """A comparison prepared against the original model, then run on a compressed one.

    Preparing opens the original in onnxruntime, loads and checks the data and runs the
    original on the held-out samples, so a bad data file or an original that onnxruntime
    cannot run fails before any output is written.

    With ``calibrate`` (a search, bias correction), calibration samples are set apart from
    the held-out ones: ``--calibration-data`` when given, else a seeded split of ``--data``
    (``--holdout-fraction`` held out, stratified by label), else seeded synthetic inputs of
    another seed. The report and gates use the held-out part only.
    """

    def __init__(
        self, original: str | bytes, config: EvalConfig, model: Any, calibrate: bool = False
    ) -> None:
        self.notes: list[str] = []
        cpus = os.cpu_count() or 1
        if config.threads > cpus:  # more threads than CPUs only contend for them
            self.notes.append(
                f"--threads {config.threads} is more than the {cpus} CPU(s) here: {cpus} used"
            )
            config = replace(config, threads=cpus)
        self.config = config
        self.original = original
        self.calibration_info: dict[str, Any] | None = None
        self.session = open_session(original, config.threads, "original")
        self.specs = apply_input_shapes(input_specs(self.session), config.input_shapes)
        for spec in self.specs:
            if 0 in spec.shape:  # a dimension fixed at 0: every input is empty
                raise UnsupportedModelError(
                    f"input {safe_text(spec.name, 80)!r} has a dimension fixed at 0, so there "
                    "is nothing to compare the models on; --no-eval compresses it unchecked"
                )
        if config.data is None and config.calibration_data is None:
            self.specs = self._runnable_sizes(self.specs)
        self.fixed = fixed_batch(self.specs)
        # what the timed runs are on: the first batch, or one sample of a heavy model
        self.latency_feed: dict[str, np.ndarray] | None = None
        self.warmup = WARMUP_RUNS
        self.calibration_samples = config.synthetic_samples  # synthetic calibration, if any
        if config.data is None:
            self.config = config = self._bounded(config)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.kinds = output_kinds(model, config.label_output, config.output_kinds)
        self.metric = load_metric(config.metric) if config.metric else None
        self.holdout, self.calibration = self._datasets(calibrate)
        if config.samples is not None and self.holdout.samples > config.samples:
            self.holdout = self.holdout.take(range(config.samples))
        self.notes.extend(self.holdout.notes)
        if self.metric is not None and self.fixed is None:
            # the metric drop's interval resamples batches: at least SPREAD_UNITS of them, and
            # latency is still timed on a batch of --batch-size
            self.latency_feed = next(iter(self.holdout.batches(config.batch_size, None)), None)
            size = _resampling_batch(self.holdout.samples, config.batch_size)
        else:
            size = config.batch_size
        self.batches = list(self.holdout.batches(size, self.fixed))
        # The original runs now, before anything is written: a model that onnxruntime
        # cannot run (or that hangs) fails the run while the output folder is untouched.
        self.reference = run_batches(self.session, self.batches, "original")
        self.labels = self.holdout.labels
        if self.labels is not None and self.metric is None:  # with a metric, labels are its own
            shapes = {n: self.reference[0][i].shape for i, n in enumerate(self.outputs)}
            inferred = infer_from_labels(self.kinds, shapes) if self.reference else ""
            if inferred:
                self.notes.append(f"the labels are taken to refer to output {inferred!r}")
        self.judge = Judge(self.outputs, self.kinds, self.labels, self.metric, config.label_output)
        self.judge.units = [samples_of(b, self.holdout.axes) for b in self.batches]
        set_aside = self.judge.check_labels(self.reference)
        if set_aside:
            self.notes.append(set_aside)
            self.labels = None
        self.calibration_batches = (
            None
            if self.calibration is None
            else list(self.calibration.batches(config.batch_size, self.fixed))
        )

    def _bounded(self, config: EvalConfig) -> EvalConfig:
        """Without --data: the synthetic samples and timed runs that keep the evaluation
        within about EVALUATION_SECONDS, from the time of one sample through the original.
        A model that fits keeps the defaults; a heavy one gets fewer samples (at least 2)
        and its latency timed on one sample, with one warm-up run."""
        one = self.fixed or 1
        probe = synthetic_dataset(self.specs, one, config.seed, dict(config.input_values))
        feed = next(probe.batches(1, self.fixed))

        def fits(per_sample: float) -> bool:
            # a fixed batch is what every run holds, and all the synthetic samples there are
            samples = self.fixed or config.synthetic_samples
            batch = self.fixed or min(config.synthetic_samples, config.batch_size)
            timed = (WARMUP_RUNS + config.latency_runs) * batch
            return 2 * per_sample * (samples + timed) <= EVALUATION_SECONDS

        per_sample = math.inf
        for _ in range(2):  # a first run can be cold: a second one decides
            t0 = time.perf_counter()
            run_batches(self.session, [feed], "original")
            per_sample = min(per_sample, (time.perf_counter() - t0) / one)
            if fits(per_sample):
                return config
        # half the time for the samples, half for the timed runs; both models each
        affordable = int(EVALUATION_SECONDS / 2 / (2 * per_sample * one))
        samples = min(config.synthetic_samples, max(2, affordable * one))
        if self.fixed and samples % self.fixed:
            samples += self.fixed - samples % self.fixed
        runs = min(config.latency_runs, max(3, affordable - 1))
        self.latency_feed, self.warmup = feed, 1
        free = any(s.batch_axis is not None and s.shape[s.batch_axis] is None for s in self.specs)
        drawn = f"{samples} synthetic samples" if free else f"{one} synthetic sample(s)"
        self.notes.append(
            f"no --data: one sample takes {per_sample:.2f} s through the original, so the "
            f"evaluation is bounded to about {EVALUATION_SECONDS:.0f} s: {drawn}, and latency "
            f"timed over {runs} runs of {one} sample(s) after one warm-up"
        )
        return replace(config, synthetic_samples=samples, latency_runs=runs)

    def _runnable_sizes(self, specs: list[InputSpec]) -> list[InputSpec]:
        """The inputs with their free dimensions set to the first sizes (see
        data.size_attempts) at which the original runs on one synthetic sample."""
        attempts = size_attempts(specs)
        failure = ""
        for trial in attempts:
            probe = synthetic_dataset(trial, 1, self.config.seed, dict(self.config.input_values))
            try:
                run_batches(self.session, list(probe.batches(1, fixed_batch(trial))), "original")
            except EvaluationError as e:
                failure = str(e)
                continue
            if len(attempts) == 1:
                return trial  # nothing free: nothing to say
            shapes = ", ".join(
                f"{safe_text(t.name, 60)} "
                + "×".join("N" if i == t.batch_axis and d is None else str(d)
                           for i, d in enumerate(t.shape))
                for t in trial
            )  # fmt: skip
            self.notes.append(
                f"no --data: free input dimensions set to {shapes} (the first sizes tried at "
                "which the original runs; --input-shape NAME:DIMS sets them)"
            )
            return trial
        kinds = set(free_dimensions(specs).values())
        if not kinds:
            raise SyntheticInputsFailed(
                f"{failure} (on synthetic inputs; give --data with real ones)"
            )
        sizes = [
            *(IMAGE_SIZES if True in kinds else ()),
            *(SEQUENCE_SIZES if False in kinds else ()),
        ]
        tried = ", ".join(str(n) for n in dict.fromkeys(sizes))
        raise SyntheticInputsFailed(
            f"{failure} (with synthetic inputs at every size tried for the free dimensions: "
            f"{tried}; give --data with real inputs, or --input-shape NAME:DIMS)"
        )

    def _datasets(self, calibrate: bool) -> tuple[Dataset, Dataset | None]:
        config = self.config
        if config.data is not None:
            data = load_dataset(config.data, self.specs)
        else:
            data = synthetic_dataset(
                self.specs, config.synthetic_samples, config.seed, dict(config.input_values)
            )
            self.notes.append(
                "no --data given: inputs are seeded random values, so quality is agreement "
                "with the original model only, not accuracy"
            )
        if config.calibration_data is not None:
            calibration = load_dataset(config.calibration_data, self.specs)
            overlap = config.data is not None and _same_file(config.calibration_data, config.data)
            self.calibration_info = {
                "source": "file",
                "samples": calibration.samples,
                "overlap": overlap,
            }
            if overlap:
                self.notes.append(
                    "--calibration-data and --data are the same file: the figures below are "
                    "in-sample, not held-out"
                )
            return data, calibration
        if not calibrate:
            self.calibration_info = None
            return data, None
        if config.data is None:
            calibration = synthetic_dataset(
                self.specs, self.calibration_samples, config.seed + 1, dict(config.input_values)
            )
            self.calibration_info = {
                "source": "synthetic",
                "samples": calibration.samples,
                "overlap": False,
            }
            return data, calibration
        if data.samples < 2:
            raise UsageError(
                "--data has a single sample: it cannot be split into calibration and held-out "
                "parts; give --calibration-data"
            )
        cal_idx, held_idx = split_indices(
            data.samples, config.holdout_fraction, config.seed, data.labels
        )
        calibration, holdout = data.take(cal_idx), data.take(held_idx)
        holdout.notes = list(data.notes)
        self.calibration_info = {
            "source": "split",
            "samples": len(cal_idx),
            "overlap": False,
        }
        self.notes.append(
            f"--data split (seed {config.seed}): {len(cal_idx)} samples to calibrate and "
            f"search on, {len(held_idx)} held out for the figures below"
        )
        return holdout, calibration

    def judge_for(self, reference: list[list[np.ndarray]], labels: np.ndarray | None) -> Judge:
        """A judge of a search's calibration folds, with the same kinds and metric, and the
        metric also taken of each candidate's output change amplified (METRIC_STRESS, or
        METRIC_STRESS_UNCONFIRMED when no fold will confirm the choice, METRIC_STRESS_FEW
        below MIN_FOLD calibration samples; without a confirming fold, samples whose
        class predictions changed also count as lost, Judge.count_changed)."""
        cal = self.calibration
        confirmed = cal is not None and cal.samples >= 2 * MIN_FOLD
        stress = METRIC_STRESS if confirmed else METRIC_STRESS_UNCONFIRMED
        if cal is not None and cal.samples < MIN_FOLD:
            stress = METRIC_STRESS_FEW
        judge = Judge(
            self.outputs, self.kinds, labels, self.metric, self.config.label_output, stress
        )
        judge.unseen = self.holdout.samples  # what its verdicts must carry over to
        judge.count_changed = not confirmed
        judge.check_labels(reference)
        return judge

    def calibration_folds(self) -> list[tuple[list[dict[str, np.ndarray]], Any, int]]:
        """The calibration samples as (batches, labels, samples) folds: one to search on and,
        when there are at least 2 × MIN_FOLD samples, a second (a seeded, stratified half)
        that confirms the search's choice on samples it did not choose on."""
        cal = self.calibration
        assert cal is not None
        if cal.samples < 2 * MIN_FOLD:
            parts = [cal]
        else:
            fit, check = split_indices(cal.samples, 0.5, self.config.seed + 1, cal.labels)
            parts = [cal.take(fit), cal.take(check)]
        folds = []
        for part in parts:
            size = self.config.batch_size
            if self.metric is not None:  # the batches the metric's noise is resampled in
                size = _resampling_batch(part.samples, size)
            folds.append((list(part.batches(size, self.fixed)), part.labels, part.samples))
        return folds

    def run(self, compressed: str | bytes) -> Evaluation:
        """Run both models on the same inputs and measure how far the compressed one moved."""
        config, sess_a = self.config, self.session
        sess_b = open_session(compressed, config.threads, "compressed")
        theirs = input_specs(sess_b)
        if [(s.name, s.dtype) for s in self.specs] != [(s.name, s.dtype) for s in theirs]:
            raise UsageError("the two models do not have the same inputs (names and types)")
        for a, b in zip(self.specs, theirs, strict=True):
            if len(a.shape) != len(b.shape) or any(
                x is not None and y is not None and x != y
                for x, y in zip(a.shape, b.shape, strict=True)
            ):
                raise UsageError(
                    f"the two models' input {safe_text(a.name, 80)!r} differs in shape "
                    f"({len(a.shape)} against {len(b.shape)} dimensions, or a fixed size)"
                )
        if self.outputs != [o.name for o in sess_b.get_outputs()]:
            raise UsageError("the two models do not have the same outputs")
        got = run_batches(sess_b, self.batches, "compressed")
        quality = self.judge.measure(self.reference, got, samples=self.holdout.samples)
        ev = evaluation_of(quality, self.holdout.source, list(self.notes))
        ev.calibration = self.calibration_info
        ev.metric_name = self.metric.name if self.metric else None
        ev.session_original = session_cost(self.original, config.threads)
        ev.session_compressed = session_cost(compressed, config.threads)
        if self.batches and config.latency_runs:
            feed = self.batches[0] if self.latency_feed is None else self.latency_feed
            (a_med, a_p90), (b_med, b_p90) = _latency_ms(
                [sess_a, sess_b], feed, config.latency_runs, self.warmup
            )
            ev.latency_ms_original, ev.latency_p90_ms_original = a_med, a_p90
            ev.latency_ms_compressed, ev.latency_p90_ms_compressed = b_med, b_p90
        return ev


def evaluation_of(q: Quality, source: str, notes: list[str]) -> Evaluation:
    """The report's view of what the judge measured."""
    return Evaluation(
        source=source,
        samples=q.samples,
        outputs=q.outputs,
        label_output=q.label_output,
        accuracy_original=q.accuracy_original,
        accuracy_compressed=q.accuracy_compressed,
        notes=notes,
        quality=q,
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or a.samefile(b)
    except OSError:
        return False
