"""Run the original and the compressed model in onnxruntime on the same inputs.

Metrics are computed in float64 over every output: cosine similarity, max and mean
absolute error, relative error and SQNR; top-1 and top-5 agreement for
classifier-like outputs ([batch, classes]); accuracy against labels when the data
has them; NaN/Inf counts in the compressed outputs. Latency is the median and p90
of interleaved timed runs of one batch, after warm-up, with the same session
options and thread count for both models.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunequant_cli.config import EvalConfig
from prunequant_cli.errors import (
    EvaluationError,
    InputError,
    ResourceError,
    UsageError,
    safe_text,
)
from prunequant_cli.report import Evaluation, OutputMetrics

WARMUP_RUNS = 3

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: Any
    shape: tuple[int | None, ...]  # None for a symbolic dimension


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


def input_specs(session: Any) -> list[InputSpec]:
    specs = []
    for i in session.get_inputs():
        dtype = _ORT_TYPES.get(i.type)
        if dtype is None:
            raise EvaluationError(
                f"input {safe_text(i.name)} has unsupported type {safe_text(i.type)}"
            )
        shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in i.shape)
        specs.append(InputSpec(i.name, dtype, shape))
    return specs


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Arrays by name from an ``.npz``, an ``.npy`` (named after the file), or a folder of them.

    In a folder, arrays of the same name from several files are concatenated along
    the sample axis, in file-name order.
    """
    from prunequant_cli.model_io import check_readable_file

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
        if not files:
            raise InputError(f"no .npy or .npz files in data folder {safe_text(path)}")
    else:
        check_readable_file(path, "data file")
        files = [path]
    parts: dict[str, list[np.ndarray]] = {}
    for f in files:
        try:
            if f.suffix == ".npy":
                parts.setdefault(f.stem, []).append(np.load(f, allow_pickle=False))
            else:
                with np.load(f, allow_pickle=False) as npz:
                    for k in npz.files:
                        parts.setdefault(k, []).append(npz[k])
        except Exception as e:
            raise InputError(f"cannot read data file {safe_text(f)}: {safe_text(e)}") from None
    try:
        return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}
    except ValueError as e:
        raise UsageError(f"data files do not stack: {safe_text(e)}") from None


def load_data(
    path: Path, specs: list[InputSpec], notes: list[str]
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Inputs keyed by name (checked against the model) and optional labels."""
    arrays = read_arrays(path)
    labels = arrays.pop("labels", None)
    if len(specs) == 1 and specs[0].name not in arrays and len(arrays) == 1:
        only = next(iter(arrays))
        notes.append(f"data array {only!r} used as input {specs[0].name!r}")
        arrays = {specs[0].name: arrays[only]}
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.name not in arrays:
            have = ", ".join(sorted(arrays)) or "nothing"
            raise UsageError(
                f"data has no array for input {safe_text(spec.name)!r} (it has: {safe_text(have)})"
            )
        a = arrays[spec.name]
        want = np.dtype(spec.dtype)
        if a.dtype != want:
            if a.dtype.kind == want.kind == "f" or (a.dtype.kind in "iu" and want.kind in "iu"):
                if not np.array_equal(a.astype(want).astype(a.dtype), a):
                    raise UsageError(
                        f"input {safe_text(spec.name)!r} is {want}; the {a.dtype} data "
                        "does not fit in it"
                    )
                notes.append(f"input {spec.name}: {a.dtype} data cast to {want}")
                a = a.astype(want)
            else:
                raise UsageError(
                    f"input {safe_text(spec.name)!r} is {want} but the data is {a.dtype}"
                )
        if a.ndim != len(spec.shape) or any(
            d is not None and d != s for d, s in zip(spec.shape[1:], a.shape[1:], strict=False)
        ):
            shape = "×".join("?" if d is None else str(d) for d in spec.shape)
            have = "×".join(map(str, a.shape))
            raise UsageError(
                f"input {safe_text(spec.name)!r} expects shape {shape}, data has {have}"
            )
        feeds[spec.name] = a
    sizes = {a.shape[0] for a in feeds.values() if a.ndim}
    if len(sizes) > 1:
        raise UsageError(f"data arrays disagree on the number of samples: {sorted(sizes)}")
    if labels is not None and sizes and labels.shape[0] != next(iter(sizes)):
        raise UsageError(f"data has {labels.shape[0]} labels for {next(iter(sizes))} samples")
    return feeds, labels


def apply_input_shapes(
    specs: list[InputSpec], shapes: tuple[tuple[str, tuple[int, ...]], ...]
) -> list[InputSpec]:
    """Fix symbolic dimensions with ``--input-shape name:1x3x224x224``."""
    by_name = {s.name: s for s in specs}
    for name, dims in shapes:
        spec = by_name.get(name)
        if spec is None:
            known = ", ".join(by_name)
            raise UsageError(f"--input-shape names no model input: {name!r} (inputs: {known})")
        if len(dims) != len(spec.shape) or any(
            d is not None and d != v for d, v in zip(spec.shape, dims, strict=True)
        ):
            shape = "×".join("?" if d is None else str(d) for d in spec.shape)
            raise UsageError(
                f"--input-shape {name}:{'x'.join(map(str, dims))} does not fit input shape {shape}"
            )
        by_name[name] = InputSpec(name, spec.dtype, tuple(dims))
    return [by_name[s.name] for s in specs]


def synthetic_inputs(specs: list[InputSpec], samples: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs: the batch dimension holds ``samples`` when free, other free dims are 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = [d if d is not None else 1 for d in spec.shape]
        if spec.shape and spec.shape[0] is None:
            shape[0] = samples
        kind = np.dtype(spec.dtype).kind
        if kind == "f":
            a = rng.standard_normal(shape).astype(spec.dtype)
        elif kind == "b":
            a = rng.integers(0, 2, shape).astype(np.bool_)
        else:  # ids, indices: stay in the smallest valid range
            a = rng.integers(0, 2, shape).astype(spec.dtype)
        feeds[spec.name] = a
    return feeds


def batches(
    feeds: dict[str, np.ndarray], specs: list[InputSpec], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """Split the samples into runs the model accepts along its batch dimension."""
    if not feeds or any(not s.shape for s in specs):
        yield feeds
        return
    n = next(iter(feeds.values())).shape[0]
    fixed = {s.shape[0] for s in specs if s.shape[0] is not None}
    if len(fixed) > 1:
        raise UsageError(f"the model's inputs disagree on the batch size: {sorted(fixed)}")
    step = fixed.pop() if fixed else batch_size
    if step != batch_size and n % step:
        raise UsageError(
            f"{n} samples cannot be split into batches of the model's fixed size {step}"
        )
    for start in range(0, n, step):
        yield {k: v[start : start + step] for k, v in feeds.items()}


def _run(session: Any, feed: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return session.run(None, feed)
    except Exception as e:
        raise _ort_error(e, f"onnxruntime failed running the {what} model") from None


def _metrics(name: str, a: list[np.ndarray], b: list[np.ndarray]) -> OutputMetrics:
    if any(t.dtype.kind not in "fiub" for t in (*a, *b)):  # strings, maps, sequences
        return OutputMetrics(name)
    x = np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1) for t in a])
    y = np.concatenate([np.asarray(t, dtype=np.float64).reshape(-1) for t in b])
    # NaN/Inf that the compressed model introduces (where the original is finite)
    m = OutputMetrics(name, nonfinite=int(np.count_nonzero(~np.isfinite(y) & np.isfinite(x))))
    if all(t.ndim == 2 and t.shape[1] > 1 for t in a) and a[0].dtype.kind == "f":
        top_a = np.concatenate([t.argmax(1) for t in a])
        if top_a.size:
            m.top1_agreement = float(np.mean(top_a == np.concatenate([t.argmax(1) for t in b])))
            k = min(5, a[0].shape[1])
            top5_b = np.concatenate([np.argsort(-t, axis=1, kind="stable")[:, :k] for t in b])
            m.top5_agreement = float(np.mean((top5_b == top_a[:, None]).any(axis=1)))
    if x.size == 0:
        return m
    diff = x - y
    m.max_abs_error = float(np.abs(diff).max())
    m.mean_abs_error = float(np.abs(diff).mean())
    m.cosine, m.relative_error, m.sqnr_db = closeness(x, y)
    return m


def closeness(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None, float | None]:
    """(cosine, relative error, SQNR in dB) of ``y`` against reference ``x``, in float64.

    Non-finite values in ``y`` give cosine 0 and no relative error or SQNR; the
    SQNR of identical arrays is infinite and reported as None.
    """
    x = x.astype(np.float64).reshape(-1)
    y = y.astype(np.float64).reshape(-1)
    if not np.isfinite(y).all():
        return 0.0, None, None
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0 and ny == 0:
        cosine = 1.0
    elif nx == 0 or ny == 0:
        cosine = 0.0
    else:
        cosine = float(np.clip(np.dot(x, y) / (nx * ny), -1.0, 1.0))
    noise = float(np.linalg.norm(x - y))
    relative = noise / nx if nx else (0.0 if noise == 0 else None)
    sqnr = None if noise == 0 else (20 * np.log10(nx / noise) if nx else None)
    return cosine, relative, None if sqnr is None else float(sqnr)


def _latency_ms(
    sessions: list[Any], feed: dict[str, np.ndarray], runs: int
) -> list[tuple[float, float]]:
    """(median, p90) milliseconds of each session on ``feed``, runs interleaved."""
    for s in sessions:
        for _ in range(WARMUP_RUNS):
            s.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):  # interleaved, so drift hits both models alike
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, feed)
            times[i].append(time.perf_counter() - t0)
    return [(1000.0 * float(np.median(t)), 1000.0 * float(np.percentile(t, 90))) for t in times]


_SESSION_RSS = """
import sys
import onnxruntime as ort
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
opts = ort.SessionOptions()
opts.intra_op_num_threads = int(sys.argv[2])
opts.log_severity_level = 4  # fatal only: errors reach the user as one line
before = rss()
session = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
print(rss() - before)
"""


def session_rss(model: str | bytes, threads: int) -> int | None:
    """Resident memory an onnxruntime session of ``model`` takes, measured in a fresh process.

    None where it cannot be measured (no /proc, an in-memory model, a failure).
    """
    if isinstance(model, bytes) or not Path("/proc/self/status").exists():
        return None
    try:
        out = subprocess.run(
            [sys.executable, "-c", _SESSION_RSS, model, str(threads)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        return None


class Comparison:
    """A comparison prepared against the original model, then run on a compressed one.

    Preparing opens the original in onnxruntime and loads and checks the data, so
    a bad data file or an original that onnxruntime cannot run fails before any
    output is written.
    """

    def __init__(self, original: str | bytes, config: EvalConfig) -> None:
        self.config = config
        self.original = original
        self.notes: list[str] = []
        self.session = open_session(original, config.threads, "original")
        self.specs = apply_input_shapes(input_specs(self.session), config.input_shapes)
        self.labels: np.ndarray | None = None
        if config.data is not None:
            self.feeds, self.labels = load_data(config.data, self.specs, self.notes)
            self.source = "data"
        else:
            self.feeds = synthetic_inputs(self.specs, config.synthetic_samples, config.seed)
            self.source = "synthetic"
            self.notes.append(
                "no --data given: inputs are seeded random values, so quality is agreement "
                "with the original model only, not accuracy"
            )
        if config.samples is not None:
            self.feeds = {k: v[: config.samples] for k, v in self.feeds.items()}
            if self.labels is not None:
                self.labels = self.labels[: config.samples]
        self.batches = list(batches(self.feeds, self.specs, config.batch_size))
        # The original runs now, before anything is written: a model that onnxruntime
        # cannot run (or that hangs) fails the run while the output folder is untouched.
        self.reference = [
            [np.asarray(y) for y in _run(self.session, feed, "original")] for feed in self.batches
        ]

    def run(self, compressed: str | bytes) -> Evaluation:
        """Run both models on the same inputs and measure how far the compressed one moved."""
        config, sess_a = self.config, self.session
        sess_b = open_session(compressed, config.threads, "compressed")
        if [(s.name, s.dtype) for s in self.specs] != [
            (s.name, s.dtype) for s in input_specs(sess_b)
        ]:
            raise UsageError("the two models do not have the same inputs (names and types)")
        if [o.name for o in sess_a.get_outputs()] != [o.name for o in sess_b.get_outputs()]:
            raise UsageError("the two models do not have the same outputs")
        first = next(iter(self.feeds.values()), None)
        samples = first.shape[0] if first is not None and first.ndim else 1

        out_names = [o.name for o in sess_a.get_outputs()]
        outs_a: list[list[np.ndarray]] = [[] for _ in out_names]
        outs_b: list[list[np.ndarray]] = [[] for _ in out_names]
        for feed, reference in zip(self.batches, self.reference, strict=True):
            pairs = zip(reference, _run(sess_b, feed, "compressed"), strict=True)
            for i, (ya, yb) in enumerate(pairs):
                outs_a[i].append(ya)
                outs_b[i].append(np.asarray(yb))
        metrics = [_metrics(n, a, b) for n, a, b in zip(out_names, outs_a, outs_b, strict=True)]

        ev = Evaluation(
            source=self.source, samples=samples, outputs=metrics, notes=list(self.notes)
        )
        if config.label_output is not None:
            if config.label_output not in out_names:
                raise UsageError(
                    f"--label-output names no model output: {config.label_output!r}"
                    f" (outputs: {', '.join(out_names)})"
                )
            ev.label_output = config.label_output
        if self.labels is not None:
            candidates = [i for i, m in enumerate(metrics) if m.top1_agreement is not None]
            if config.label_output is not None:
                candidates = [out_names.index(config.label_output)]
            idx = candidates[0] if candidates else None
            if idx is None or metrics[idx].top1_agreement is None:
                ev.notes.append(
                    "labels given, but the output is not class scores ([batch, classes]): "
                    "no accuracy"
                )
            else:
                pa = np.concatenate([t.argmax(1) for t in outs_a[idx]])
                pb = np.concatenate([t.argmax(1) for t in outs_b[idx]])
                ev.label_output = out_names[idx]
                ev.accuracy_original = float(np.mean(pa == self.labels))
                ev.accuracy_compressed = float(np.mean(pb == self.labels))
        ev.session_rss_original = session_rss(self.original, config.threads)
        ev.session_rss_compressed = session_rss(compressed, config.threads)
        if self.batches and config.latency_runs:
            (a_med, a_p90), (b_med, b_p90) = _latency_ms(
                [sess_a, sess_b], self.batches[0], config.latency_runs
            )
            ev.latency_ms_original, ev.latency_p90_ms_original = a_med, a_p90
            ev.latency_ms_compressed, ev.latency_p90_ms_compressed = b_med, b_p90
        return ev
