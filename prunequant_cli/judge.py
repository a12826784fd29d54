"""One judge for the search and the gates: what each output is, how far a candidate moved
from the reference, and whether a budget holds.

What an output *is* decides how it is judged:

- **class scores** (``class``): produced by Softmax, LogSoftmax or ArgMax (through
  shape-only ops such as Reshape, Flatten, Transpose, Identity, Cast), named by
  ``--label-output``, or the only ``[batch, classes]`` output of a model whose data has
  labels. Judged by top-1 agreement with the original (per position for sequences,
  ``[batch, time, classes]``) and, with labels, accuracy.
- **tensors** (``tensor``): everything else numeric (embeddings, boxes, masks, logits of
  unknown meaning). Judged by cosine, relative error and SQNR.

``--output-kind NAME:KIND`` overrides either. The lossless budget (``--max-accuracy-drop
0``) means: no class prediction changes, and every tensor output within
``LOSSLESS_TENSOR_TOLERANCE`` relative error (SQNR of at least 40 dB).

Everything is computed in float64 over all batches, in order.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prunequant_cli.errors import UsageError, safe_text
from prunequant_cli.report import Gate, OutputMetrics

CLASS, TENSOR = "class", "tensor"
OUTPUT_KINDS = (CLASS, TENSOR)

# Lossless for tensor outputs: the change stays below 1% of the output's norm (SQNR >= 40 dB).
LOSSLESS_TENSOR_TOLERANCE = 1e-2
# The share of a cosine or metric-drop budget a search keeps in reserve for unseen samples.
RESERVE = 0.1
NEAR_FLIP = 4
# A search's metric-drop verdict on its calibration samples must carry over to the held-out
# samples: the drop measured there differs by sampling noise, which the judge estimates from
# SPREAD_DRAWS seeded bootstrap resamples of the calibration batches; the verdict holds the drop
# plus SPREAD_Z (one-sided 95%) times that noise to the budget.
SPREAD_DRAWS = 16
SPREAD_Z = 1.645


# Ops whose output is class scores (or class ids), and ops that only move values around.
_CLASS_OPS = {"Softmax", "LogSoftmax", "ArgMax", "ArgMin"}
_SHAPE_OPS = {
    "Identity",
    "Cast",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Dropout",
}

Batches = Sequence[Sequence[np.ndarray]]  # per batch, one array per output
MetricFn = Callable[[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], Any], float]


@dataclass(frozen=True)
class OutputKind:
    """How one output is judged, and why."""

    kind: str  # CLASS or TENSOR
    axis: int = -1  # the class axis of class scores
    indices: bool = False  # the values are class ids already (ArgMax)
    reason: str = "numeric output"


def output_kinds(
    model: Any,
    label_output: str | None = None,
    overrides: Sequence[tuple[str, str]] = (),
) -> dict[str, OutputKind]:
    """The kind of every output of the onnx_ir ``model`` (see the module docstring)."""
    graph = model.graph
    names = [v.name or "" for v in graph.outputs]
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 13))
    kinds: dict[str, OutputKind] = {}
    for value in graph.outputs:
        kinds[value.name or ""] = _traced_kind(value, opset)
    for name, kind in overrides:
        if name not in kinds:
            raise UsageError(
                f"--output-kind names no model output: {safe_text(name)!r} "
                f"(outputs: {safe_text(', '.join(names))})"
            )
        if kind not in OUTPUT_KINDS:
            raise UsageError(f"--output-kind KIND must be class or tensor, got {safe_text(kind)!r}")
        kinds[name] = OutputKind(kind, reason="--output-kind")
    if label_output is not None:
        if label_output not in kinds:
            raise UsageError(
                f"--label-output names no model output: {safe_text(label_output)!r} "
                f"(outputs: {safe_text(', '.join(names))})"
            )
        if kinds[label_output].kind != CLASS:
            kinds[label_output] = OutputKind(CLASS, reason="--label-output")
    return kinds


def _traced_kind(value: Any, opset: int) -> OutputKind:
    """Class scores when a Softmax/LogSoftmax/ArgMax produces ``value`` (through shape ops)."""
    node, moved = value.producer(), False
    for _ in range(16):
        if node is None:
            break
        if node.op_type in _CLASS_OPS and node.domain in ("", "ai.onnx"):
            default = -1 if opset >= 13 or node.op_type.startswith("Arg") else 1
            attr = node.attributes.get("axis")
            axis = default if attr is None else int(attr.value)
            if node.op_type.startswith("Arg"):
                return OutputKind(CLASS, axis, indices=True, reason=node.op_type)
            rank = _rank(node.outputs[0])
            if moved or (rank is not None and axis in (rank - 1, -1)):
                axis = -1
            return OutputKind(CLASS, axis, reason=node.op_type)
        if node.op_type not in _SHAPE_OPS or not node.inputs or node.inputs[0] is None:
            break
        moved = moved or node.op_type not in ("Identity", "Cast", "Dropout")
        node = node.inputs[0].producer()
    return OutputKind(TENSOR)


def _rank(value: Any) -> int | None:
    shape = getattr(value, "shape", None)
    return None if shape is None else len(shape)


def infer_from_labels(kinds: dict[str, OutputKind], shapes: Mapping[str, tuple[Any, ...]]) -> str:
    """With labels and no class output, the only ``[batch, classes]`` output is what they
    label; returns its name ('' when there is none or several)."""
    if any(k.kind == CLASS for k in kinds.values()):
        return ""
    two_d = [n for n, s in shapes.items() if len(s) == 2 and n in kinds]
    if len(two_d) != 1:
        return ""
    kinds[two_d[0]] = OutputKind(CLASS, reason="labels")
    return two_d[0]


@dataclass
class Metric:
    """A user's task metric: ``fn(reference, candidate, labels) -> float``, higher is better."""

    name: str
    fn: MetricFn

    def __call__(
        self,
        outputs: Sequence[str],
        reference: Batches,
        candidate: Batches,
        labels: Any,
    ) -> float:
        ref = [dict(zip(outputs, b, strict=True)) for b in reference]
        got = [dict(zip(outputs, b, strict=True)) for b in candidate]
        try:
            # What it prints goes to stderr: stdout carries the result (--json) only.
            with contextlib.redirect_stdout(sys.stderr):
                value = self.fn(ref, got, labels)
        except (Exception, SystemExit, KeyboardInterrupt) as e:  # its own exit is no result
            raise UsageError(
                f"--metric {safe_text(self.name)} raised {type(e).__name__}: {safe_text(e, 300)}"
            ) from None
        number = math.nan
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value[()]  # a 0-d array (np.mean of an array is one): its number
        if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
            value, bool | np.bool_
        ):
            with contextlib.suppress(OverflowError):
                number = float(value)
        if not math.isfinite(number):
            raise UsageError(
                f"--metric {safe_text(self.name)} must return a finite number, "
                f"got {safe_text(repr(value), 80)}"
            )
        return number


@dataclass
class Quality:
    """Everything the judge measured of a candidate against the reference.

    ``agreement`` is top-1 agreement on the label output (else the lowest over class
    outputs) with ``agreement_counts`` = (agreeing, total) positions; with labels,
    ``paired`` = (both right, only the original right, only the candidate right, neither),
    the table behind the accuracy drop's confidence interval.
    """

    outputs: list[OutputMetrics]
    kinds: dict[str, OutputKind]
    samples: int
    label_output: str | None = None
    agreement: float | None = None
    agreement_counts: tuple[int, int] | None = None
    accuracy_original: float | None = None
    accuracy_compressed: float | None = None
    paired: tuple[int, int, int, int] | None = None
    metric_original: float | None = None
    metric_compressed: float | None = None
    # the metric of the candidate's output change amplified (Judge.stress), in a search
    metric_stressed: float | None = None
    # the standard deviation of the metric drop measured here, from bootstrap resamples of
    # the batches (Judge.units); in a search (Judge.unseen) of (the drop another set of the
    # held-out size would measure) minus (this one)
    metric_drop_spread: float | None = None
    # class predictions moved by a quarter of their original margin (NEAR_FLIP): in the
    # agreement output, and in all class outputs together
    at_risk: int = 0
    at_risk_total: int = 0
    # with labels: the near-flips of predictions the original got right (others cannot lose)
    at_risk_right: int | None = None
    # samples any of whose class predictions changed (another top-1 at some position, or a
    # sequence of another length), when the judge counts them (Judge.count_changed)
    changed_samples: int | None = None

    @property
    def accuracy_drop_points(self) -> float | None:
        """Points lost against the labels; without labels, against the original's top-1."""
        if self.accuracy_original is not None and self.accuracy_compressed is not None:
            return 100.0 * (self.accuracy_original - self.accuracy_compressed)
        if self.agreement is not None:
            return 100.0 * (1.0 - self.agreement)
        return None

    @property
    def loss_points(self) -> float | None:
        """Points of samples the candidate got wrong that the original got right, not
        offset by the ones it fixed by chance (with no labels, the changed predictions)."""
        if self.paired is not None:
            total = sum(self.paired)
            return 100.0 * self.paired[1] / total if total else 0.0
        if self.agreement is not None:
            return 100.0 * (1.0 - self.agreement)
        return None

    @property
    def at_risk_share(self) -> float | None:
        """Share of the agreement output's predictions that a near-flip may lose: moved by a
        quarter of their margin (with labels, of those the original got right)."""
        if self.agreement_counts is None or not self.agreement_counts[1]:
            return None
        risky = self.at_risk if self.at_risk_right is None else self.at_risk_right
        return risky / self.agreement_counts[1]

    @property
    def drop_against(self) -> str | None:
        """What the accuracy drop is measured against: 'labels', 'original' or None."""
        if self.accuracy_original is not None:
            return "labels"
        return "original" if self.agreement is not None else None

    @property
    def drop_interval(self) -> tuple[float, float] | None:
        """95% confidence interval of the accuracy drop, in points."""
        if self.paired is not None:
            lo, hi = paired_difference_interval(*self.paired)
            return 100.0 * lo, 100.0 * hi
        if self.agreement_counts is not None:
            k, n = self.agreement_counts
            lo, hi = wilson_interval(n - k, n)
            return 100.0 * lo, 100.0 * hi
        return None

    @property
    def agreement_interval(self) -> tuple[float, float] | None:
        if self.agreement_counts is None:
            return None
        return wilson_interval(*self.agreement_counts)

    @property
    def metric_drop(self) -> float | None:
        if self.metric_original is None or self.metric_compressed is None:
            return None
        return self.metric_original - self.metric_compressed

    @property
    def metric_drop_interval(self) -> tuple[float, float] | None:
        """95% confidence interval of the metric drop (normal, from its bootstrap noise)."""
        if self.metric_drop is None or self.metric_drop_spread is None:
            return None
        half = 1.96 * self.metric_drop_spread
        return self.metric_drop - half, self.metric_drop + half

    @property
    def min_cosine(self) -> float | None:
        values = [o.cosine for o in self.outputs if o.cosine is not None]
        return min(values) if values else None

    @property
    def max_relative_error(self) -> float:
        """Largest output relative error (inf when an output became non-finite)."""
        worst = 0.0
        for o in self.outputs:
            if o.nonfinite:
                return math.inf
            if o.relative_error is not None:
                worst = max(worst, o.relative_error)
            elif o.cosine is not None and o.cosine < 1.0:
                return math.inf
        return worst

    def to_dict(self) -> dict[str, Any]:
        rel = self.max_relative_error
        return {
            "accuracy_drop_points": self.accuracy_drop_points,
            "accuracy_drop_against": self.drop_against,
            "top1_agreement": self.agreement,
            "min_cosine": self.min_cosine,
            "max_relative_error": rel if math.isfinite(rel) else None,
            "metric": self.metric_compressed,
            "metric_drop_noise": self.metric_drop_spread,
            "changed_samples": self.changed_samples,
        }


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(
    a: int, b: int, c: int, d: int, z: float = 1.96
) -> tuple[float, float]:
    """95% interval of p1 - p2, two proportions measured on the same samples.

    The 2×2 table: ``a`` both right, ``b`` only the first right, ``c`` only the second,
    ``d`` neither. Newcombe's method 10 (1998): Wilson score intervals of p1 and p2,
    combined with the correlation of the pairs; it stays inside [-1, 1] and behaves at
    0 and n discordant pairs, where the normal approximation does not.
    """
    n = a + b + c + d
    if n <= 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = (a * d - b * c) / math.sqrt(margins) if margins else 0.0
    diff = p1 - p2
    lower = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    upper = (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2
    return max(-1.0, diff - math.sqrt(max(lower, 0.0))), min(1.0, diff + math.sqrt(max(upper, 0.0)))


def _class_ids(a: np.ndarray, kind: OutputKind) -> np.ndarray | None:
    if kind.indices:
        return a.astype(np.int64, copy=False) if a.dtype.kind in "iub" else None
    if a.dtype.kind != "f" or a.ndim == 0 or a.shape[kind.axis] < 2:
        return None
    return a.argmax(axis=kind.axis)


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


@dataclass
class Judge:
    """Judges candidates against one reference run: the outputs, their kinds, the labels."""

    outputs: list[str]
    kinds: dict[str, OutputKind]
    labels: np.ndarray | None = None
    metric: Metric | None = None
    label_output: str | None = None
    # > 0: the metric is also taken of the candidate's outputs moved this many times as far
    # from the reference's (Quality.metric_stressed), which a search holds to its budget
    stress: float = 0.0
    # the samples in each batch, for the metric drop's sampling noise
    # (Quality.metric_drop_spread), and in a search how many samples its verdicts must
    # carry over to
    units: Sequence[int] | None = None
    unseen: int | None = None
    # count the samples whose class predictions changed (Quality.changed_samples), which a
    # search's verdict then reads as lost; for a search no other fold will confirm
    count_changed: bool = False
    _metric_reference: float | None = field(default=None, repr=False)
    # per bootstrap resample: the batches drawn, their labels, the reference's own metric
    _draws: list[tuple[list[int], Any, float]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        classes = [n for n in self.outputs if self.kinds.get(n, OutputKind(TENSOR)).kind == CLASS]
        if self.label_output is None and classes:
            named = [n for n in classes if self.kinds[n].reason == "--label-output"]
            self.label_output = (named or classes)[0]

    def class_outputs(self) -> list[str]:
        return [n for n in self.outputs if self.kinds.get(n, OutputKind(TENSOR)).kind == CLASS]

    def measure(
        self,
        reference: Batches,
        candidate: Batches,
        detailed: bool = True,
        samples: int | None = None,
    ) -> Quality:
        """Quality of ``candidate`` (per batch, one array per output) against ``reference``;
        ``samples``: how many input samples the batches hold (else guessed from outputs)."""
        samples = sum(_samples(b) for b in reference) if samples is None else samples

        metrics: list[OutputMetrics] = []
        agreements: dict[str, tuple[int, int]] = {}
        at_risk: dict[str, np.ndarray] = {}
        ids: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        changed = self._sample_flags(reference) if self.count_changed else None
        for i, name in enumerate(self.outputs):
            a = [np.asarray(b[i]) for b in reference]
            c = [np.asarray(b[i]) for b in candidate]
            kind = self.kinds.get(name, OutputKind(TENSOR))
            m = _numeric(name, a, c, detailed)
            if kind.kind == CLASS:
                pa = [_class_ids(t, kind) for t in a]
                pc = [_class_ids(t, kind) for t in c]
                if changed is not None:
                    _mark_changed(changed, a, c, pa, pc)
            if kind.kind == CLASS and m is not None:
                flat_a, flat_c = _flat(pa), _flat(pc)
                # Position by position only where every batch has the original's shape (a
                # decoder that stops at another step gives another sequence length).
                aligned = all(np.shape(x) == np.shape(y) for x, y in zip(a, c, strict=True))
                if flat_a is not None and flat_c is not None and aligned:
                    same = int(np.count_nonzero(flat_a == flat_c))
                    agreements[name] = (same, int(flat_a.size))
                    m.top1_agreement = same / flat_a.size if flat_a.size else None
                    ids[name] = (flat_a, flat_c)
                    if not kind.indices:
                        at_risk[name] = _at_risk(a, c, kind.axis, kind.reason == "Softmax")
                    if detailed and not kind.indices:
                        m.top5_agreement = _top5(a, c, kind.axis)
            metrics.append(m if m is not None else OutputMetrics(name))
        q = Quality(metrics, self.kinds, samples, label_output=self.label_output)
        if changed is not None:
            q.changed_samples = sum(int(np.count_nonzero(f)) for f in changed)
        q.at_risk_total = sum(int(np.count_nonzero(m)) for m in at_risk.values())
        key = self.label_output if self.label_output in agreements else None
        if key is None and agreements:
            key = min(agreements, key=lambda n: agreements[n][0] / max(agreements[n][1], 1))
        if key is not None:
            q.agreement_counts = agreements[key]
            risk = at_risk.get(key)
            q.at_risk = 0 if risk is None else int(np.count_nonzero(risk))
        if q.agreement_counts is not None and q.agreement_counts[1]:
            q.agreement = q.agreement_counts[0] / q.agreement_counts[1]
        if self.labels is not None and key is not None and key in ids:
            self._accuracy(q, *ids[key], at_risk.get(key))
        if self.metric is not None:
            if self._metric_reference is None:
                ref = self.metric(self.outputs, reference, reference, self.labels)
                self._metric_reference = ref
            q.metric_original = self._metric_reference
            q.metric_compressed = self.metric(self.outputs, reference, candidate, self.labels)
            if self.stress:
                moved = zip(reference, candidate, strict=True)
                stressed = [_stressed(r, c, self.stress) for r, c in moved]
                q.metric_stressed = self.metric(self.outputs, reference, stressed, self.labels)
            q.metric_drop_spread = self._spread(reference, candidate, q)
        return q

    def _sample_flags(self, reference: Batches) -> list[np.ndarray]:
        """One flag per sample of each batch (Judge.units, else the batches' sizes), for
        the samples whose class predictions changed (_mark_changed)."""
        units = list(self.units or [])
        if len(units) != len(reference):
            units = [_samples(b) for b in reference]
        return [np.zeros(k, dtype=bool) for k in units]

    def _spread(self, reference: Batches, candidate: Batches, q: Quality) -> float | None:
        """The sampling noise of the metric drop on these n samples, or (with ``unseen``) of
        the drop measured on ``unseen`` other samples instead: the drop's variance v over
        seeded bootstrap resamples of the batches (with replacement, the same resamples for
        every candidate) is that of a set of n samples, so the difference of two independent
        sets has variance v (1 + n / unseen). Bootstrap rather than subsamples: a metric over
        pairs of samples (a verification ROC-AUC) degrades on fewer samples faster than 1/n,
        so smaller subsets overstate its noise (``bench/bench_noise.py`` measures the
        estimate against the truth on the kit). None when the batches cannot be resampled
        (fewer than 4, labels not one row per sample, or the metric undefined on most
        resamples)."""
        assert self.metric is not None and q.metric_drop is not None
        units = list(self.units or [])
        n = sum(units)
        if len(units) < 4 or len(units) != len(reference):
            return None
        if self._draws is None:
            labels = None if self.labels is None else np.asarray(self.labels)
            if labels is not None and (labels.ndim == 0 or labels.shape[0] != n):
                return None
            starts = np.concatenate([[0], np.cumsum(units)[:-1]])
            rng = np.random.default_rng(0)
            self._draws = []
            for _ in range(SPREAD_DRAWS):
                pick = sorted(rng.choice(len(units), size=len(units)).tolist())
                rows = np.concatenate([np.arange(starts[i], starts[i] + units[i]) for i in pick])
                sub = None if labels is None else labels[rows]
                ref = [reference[i] for i in pick]
                with contextlib.suppress(UsageError):  # undefined on this subset: not drawn
                    self._draws.append((pick, sub, self.metric(self.outputs, ref, ref, sub)))
        variances = []
        for pick, sub, original in self._draws:
            got = [candidate[i] for i in pick]
            try:
                value = self.metric(self.outputs, [reference[i] for i in pick], got, sub)
            except UsageError:
                continue
            variances.append((original - value - q.metric_drop) ** 2)
        if len(variances) < SPREAD_DRAWS // 2:
            return None  # the metric is not defined on enough subsets to tell
        carry = 1 + n / self.unseen if self.unseen else 1.0
        k = len(units)  # a bootstrap's variance of a mean is (k - 1) / k of the truth
        return math.sqrt(float(np.mean(variances)) * k / (k - 1) * carry)

    def _accuracy(
        self, q: Quality, pa: np.ndarray, pc: np.ndarray, risk: np.ndarray | None
    ) -> None:
        labels = np.asarray(self.labels).reshape(-1)
        if labels.shape != pa.shape:
            return  # checked when the data was loaded; a subset may not carry them
        right_a, right_c = pa == labels, pc == labels
        if risk is not None and risk.shape == right_a.shape:
            # a near-flip of a prediction the original got wrong cannot lose anything
            q.at_risk_right = int(np.count_nonzero(risk & right_a))
        q.accuracy_original = float(np.mean(right_a)) if right_a.size else None
        q.accuracy_compressed = float(np.mean(right_c)) if right_c.size else None
        q.paired = (
            int(np.count_nonzero(right_a & right_c)),
            int(np.count_nonzero(right_a & ~right_c)),
            int(np.count_nonzero(~right_a & right_c)),
            int(np.count_nonzero(~right_a & ~right_c)),
        )

    def check_labels(self, reference: Batches) -> str | None:
        """Labels must fit the label output's predictions: integer class ids in range, one per
        prediction. Labels of a model with no class-score output are set aside (returns why);
        with a --metric they are the metric's to read."""
        if self.labels is None or self.metric is not None:
            return None
        key = self.label_output
        if key is None:
            self.labels = None
            return (
                "the data's labels were set aside: no output is class scores (name one with "
                "--output-kind NAME:class or --label-output, or score them with --metric)"
            )
        kind = self.kinds[key]
        i = self.outputs.index(key)
        preds = [_class_ids(np.asarray(b[i]), kind) for b in reference]
        flat = _flat(preds)
        if flat is None:
            raise UsageError(f"output {safe_text(key)!r} does not hold class scores for the labels")
        labels = np.asarray(self.labels)
        if labels.dtype.kind not in "iu":
            raise UsageError(
                f"labels must be integer class ids, got {labels.dtype} "
                "(labels of another kind are for a --metric)"
            )
        classes = [np.asarray(b[i]).shape[kind.axis] for b in reference if not kind.indices]
        if labels.size and (labels.min() < 0 or (classes and labels.max() >= min(classes))):
            raise UsageError(
                f"labels must be class ids from 0 to {min(classes) - 1 if classes else 'N'} "
                f"of output {safe_text(key)!r}, got {labels.min()}..{labels.max()}"
            )

        shape = preds[0].shape if len(preds) == 1 and preds[0] is not None else (flat.size,)
        if labels.size != flat.size or (len(preds) == 1 and labels.shape != shape):
            raise UsageError(
                f"labels have shape {'×'.join(map(str, labels.shape))} but the predictions of "
                f"{safe_text(key)!r} have shape {'×'.join(map(str, shape))}"
            )
        return None


def _flat(parts: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """The class ids of all batches in one flat array (None if any batch has none)."""
    if not parts or any(p is None for p in parts):
        return None
    return np.concatenate([p.reshape(-1) for p in parts if p is not None])


def _samples(batch: Sequence[np.ndarray]) -> int:
    first = next((np.asarray(a) for a in batch if np.asarray(a).ndim), None)
    return int(first.shape[0]) if first is not None else 1


def _numeric(
    name: str, a: list[np.ndarray], b: list[np.ndarray], detailed: bool
) -> OutputMetrics | None:
    """Cosine, relative error, SQNR (and with ``detailed`` max/mean absolute error) over all
    batches, accumulated batch by batch in float64 so no batch-spanning copy is made.
    Positions where the original is not finite are left out; a non-finite value of the
    candidate where the original is finite is counted and gives cosine 0."""
    if any(t.dtype.kind not in "fiub" for t in (*a, *b)):  # strings, maps, sequences
        return None
    m = OutputMetrics(name)
    sxx = syy = sxy = see = sabs = peak = 0.0
    count, broken = 0, False
    for ta, tb in zip(a, b, strict=True):
        if ta.shape != tb.shape:
            broken = True
            continue
        x = ta.astype(np.float64).reshape(-1)
        y = tb.astype(np.float64).reshape(-1)
        keep = np.isfinite(x)
        if not keep.all():
            x, y = x[keep], y[keep]
        bad = ~np.isfinite(y)
        if bad.any():
            m.nonfinite += int(np.count_nonzero(bad))
            broken = True
            continue
        d = x - y
        sxx, syy = sxx + float(x @ x), syy + float(y @ y)
        sxy, see = sxy + float(x @ y), see + float(d @ d)
        if detailed and d.size:
            ad = np.abs(d)
            sabs, peak = sabs + float(ad.sum()), max(peak, float(ad.max()))
        count += x.size
    if broken:
        m.cosine = 0.0
        return m
    if count == 0:
        return m
    if detailed:
        m.max_abs_error, m.mean_abs_error = peak, sabs / count
    nx, ny = math.sqrt(sxx), math.sqrt(syy)
    if nx == 0 and ny == 0:
        m.cosine = 1.0
    elif nx == 0 or ny == 0:
        m.cosine = 0.0
    else:
        m.cosine = float(np.clip(sxy / (nx * ny), -1.0, 1.0))
    noise = math.sqrt(see)
    m.relative_error = noise / nx if nx else (0.0 if noise == 0 else None)
    m.sqnr_db = None if noise == 0 or not nx else float(20 * math.log10(nx / noise))
    return m


def _top5(a: list[np.ndarray], b: list[np.ndarray], axis: int) -> float | None:
    hits, total = 0, 0
    for ta, tb in zip(a, b, strict=True):
        k = min(5, ta.shape[axis])
        top_a = np.expand_dims(ta.argmax(axis=axis), axis)
        top_b = np.take(np.argsort(-tb, axis=axis, kind="stable"), range(k), axis=axis)
        hits += int(np.count_nonzero((top_b == top_a).any(axis=axis)))
        total += top_a.size
    return hits / total if total else None


@dataclass(frozen=True)
class Budget:
    """The quality a model must keep; ``max_accuracy_drop == 0`` is the lossless mode."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    min_metric: float | None = None
    max_metric_drop: float | None = None

    @classmethod
    def from_gates(cls, gates: Any) -> Budget:
        return cls(
            gates.max_accuracy_drop,
            gates.min_agreement,
            gates.min_cosine,
            gates.min_metric,
            gates.max_metric_drop,
        )

    @property
    def given(self) -> bool:
        return any(
            v is not None
            for v in (
                self.max_accuracy_drop,
                self.min_agreement,
                self.min_cosine,
                self.min_metric,
                self.max_metric_drop,
            )
        )

    @property
    def lossless(self) -> bool:
        return self.max_accuracy_drop == 0

    def holds(self, q: Quality, strict: bool = False, reserve: float = RESERVE) -> bool:
        return all(g.passed for g in self.verdicts(q, strict, reserve))

    def verdicts(
        self, q: Quality | None, strict: bool = False, reserve: float = RESERVE
    ) -> list[Gate]:
        """One gate per part of the budget, measured on ``q`` (None: not evaluated).

        ``strict`` is what the search holds its calibration samples to, so that its choice
        carries over to samples it never saw (a search picks the configuration that just
        fits, and what just fits by chance does not carry over):

        - an accuracy drop counts only the predictions the candidate breaks, never those
          it fixes by chance;
        - a prediction moved by a quarter of its original margin (the gap between its top
          two scores) is a near-flip, which foretells the flips of samples it never saw: top-1
          agreement counts near-flips as changed, an accuracy drop is at least their share,
          and lossless wants none;
        - a task metric must also hold on the candidate's outputs moved ``Judge.stress``
          times as far from the original's (what a search's judges measure): an unseen
          sample's margin may be that much smaller;
        - a cosine or metric-drop budget keeps ``reserve`` (10%) of its allowance back, and on a
          model with class scores a metric-drop budget also bounds the share of near-flips
          by the relative drop it allows (``max_metric_drop / |original metric|``): with
          few samples, a metric of whole samples cannot see a loss smaller than one of them;
        - a metric drop also counts ``SPREAD_Z`` times its sampling noise
          (``Quality.metric_drop_spread``): a drop that just fits these samples is as likely
          as not to miss on others, and the fewer the samples, the larger the miss; a metric
          that rose is then read as no drop (a gain by chance is noise, not room);
        - where the judge counts them (a search no other fold confirms), samples whose class
          predictions changed count as lost: a metric-drop budget bounds their share by the
          relative drop it allows, as it does the near-flips.
        """
        gates = []
        if self.lossless:
            gates.append(_lossless(q, strict))
        elif self.max_accuracy_drop is not None:
            gates.append(_accuracy_gate(q, self.max_accuracy_drop, strict))
        if self.min_agreement is not None:
            value = None if q is None else q.agreement
            if strict and value is not None and q is not None and q.agreement_counts:
                # near-flips foretell the flips of unseen samples
                value = min(value, 1.0 - q.at_risk / max(q.agreement_counts[1], 1))
            gates.append(
                _bound(
                    "--min-agreement",
                    self.min_agreement,
                    value,
                    value is None or value >= self.min_agreement,
                    "no top-1 agreement: no output is class scores "
                    "(name one with --output-kind NAME:class)",
                )
            )
        if self.min_cosine is not None:
            value = None if q is None else q.min_cosine
            if strict and value is not None:
                value -= reserve * (1 - self.min_cosine)
            gates.append(
                _bound(
                    "--min-cosine",
                    self.min_cosine,
                    value,
                    value is None or value >= self.min_cosine,
                    "no numeric output to compare",
                )
            )
        if self.min_metric is not None:
            value = None if q is None else q.metric_compressed
            if strict and value is not None and q is not None and q.metric_stressed is not None:
                value = min(value, q.metric_stressed)
            gates.append(
                _bound(
                    "--min-metric",
                    self.min_metric,
                    value,
                    value is None or value >= self.min_metric,
                    "no --metric measured",
                )
            )
        if self.max_metric_drop is not None:
            value = None if q is None else q.metric_drop
            if strict and value is not None and q is not None:
                if q.metric_drop_spread is not None:
                    # a gain by chance does not pay for the noise: it is noise
                    value = max(value, 0.0) + SPREAD_Z * q.metric_drop_spread
                value += reserve * abs(self.max_metric_drop)
                value = max(value, _near_flip_drop(q), _changed_drop(q))
                if q.metric_stressed is not None and q.metric_original is not None:
                    value = max(value, q.metric_original - q.metric_stressed)
            gate = _bound(
                "--max-metric-drop",
                self.max_metric_drop,
                value,
                value is None or value <= self.max_metric_drop + 1e-12,
                "no --metric measured",
            )
            interval = None if strict or q is None else q.metric_drop_interval
            if interval is not None and interval[0] <= self.max_metric_drop < interval[1]:
                note = f"95% interval [{interval[0]:.3g}, {interval[1]:.3g}] straddles the budget"
                gate.reason = f"{gate.reason} ({note})" if gate.reason else note
            gates.append(gate)
        return gates

    def words(self) -> str:
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(
                f"max accuracy drop {self.max_accuracy_drop:g} points"
                + (" (lossless)" if self.lossless else "")
            )
        if self.min_agreement is not None:
            parts.append(f"min top-1 agreement {self.min_agreement:g}")
        if self.min_cosine is not None:
            parts.append(f"min cosine {self.min_cosine:g}")
        if self.min_metric is not None:
            parts.append(f"min metric {self.min_metric:g}")
        if self.max_metric_drop is not None:
            parts.append(f"max metric drop {self.max_metric_drop:g}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_accuracy_drop": self.max_accuracy_drop,
            "min_agreement": self.min_agreement,
            "min_cosine": self.min_cosine,
            "min_metric": self.min_metric,
            "max_metric_drop": self.max_metric_drop,
            "lossless": self.lossless,
            "lossless_tolerance": LOSSLESS_TENSOR_TOLERANCE if self.lossless else None,
        }


def _bound(name: str, threshold: float, value: float | None, ok: bool, missing: str) -> Gate:
    if value is None:
        return Gate(name, threshold, None, False, missing)
    reason = None if ok else f"missed by {abs(value - threshold):.3g}"
    return Gate(name, threshold, value, ok, reason)


def _accuracy_gate(q: Quality | None, limit: float, strict: bool = False) -> Gate:
    name = "--max-accuracy-drop"
    if q is None:
        return Gate(name, limit, None, False, "not evaluated")
    drop = q.loss_points if strict else q.accuracy_drop_points
    if strict and drop is not None and q.at_risk_share is not None:
        drop = max(drop, 100.0 * q.at_risk_share)

    if drop is None:
        return Gate(
            name,
            limit,
            None,
            False,
            "no class-score output to measure accuracy on: use --min-cosine or --metric, "
            "or name the output with --output-kind NAME:class",
        )
    passed = drop <= limit + 1e-9
    notes = []
    if q.drop_against == "original":
        notes.append("no labels: measured against the original model's top-1 predictions")
    interval = q.drop_interval
    if interval is not None and interval[0] <= limit < interval[1]:
        notes.append(
            f"95% interval [{interval[0]:.2f}, {interval[1]:.2f}] points straddles the budget"
        )
    reason = "; ".join(notes) or None
    if not passed:
        reason = f"dropped {drop:.3g} points, {drop - limit:.3g} over the budget" + (
            f" ({reason})" if reason else ""
        )

    return Gate(name, limit, drop, passed, reason)


def _stressed(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], factor: float
) -> list[np.ndarray]:
    """The candidate's float outputs moved ``factor`` times as far from the reference's."""
    out = []
    for a, c in zip(reference, candidate, strict=True):
        a, c = np.asarray(a), np.asarray(c)
        if a.dtype.kind == "f" and a.shape == c.shape:
            with np.errstate(all="ignore"):
                c = (a + factor * (c.astype(np.float64) - a)).astype(c.dtype)
        out.append(c)
    return out


def _near_flip_drop(q: Quality) -> float:
    """The metric drop that the near-flips stand for: their share of the original metric,
    when the class output makes one prediction per sample (a metric of whole samples; the
    positions of a sequence output are not what a sequence metric counts)."""
    share = q.at_risk_share
    if not share or q.metric_original is None or q.metric_original == 0:
        return -math.inf
    if q.agreement_counts is None or q.agreement_counts[1] != q.samples:
        return -math.inf
    return share * abs(q.metric_original)


def _mark_changed(
    moved: list[np.ndarray],
    a: list[np.ndarray],
    c: list[np.ndarray],
    pa: list[np.ndarray | None],
    pc: list[np.ndarray | None],
) -> None:
    """Flag, per batch, the samples whose predictions in this class output changed: a
    position whose top-1 differs, or an output of another shape (a decoder that stopped at
    another step, a detector that kept another number of boxes: every sample of that batch,
    which ones changed is not known). The ids' first axis is taken as the samples' when it
    has the batch's size, else any change flags the whole batch (exact at one sample per
    batch, which a search with a metric and fewer than 16 calibration samples runs in when
    the model's batch is free)."""
    for flags, ta, tc, ia, ic in zip(moved, a, c, pa, pc, strict=True):
        k = flags.shape[0]
        if not k:
            continue
        if ta.shape != tc.shape:
            flags[:] = True
        elif ia is not None and ic is not None:
            diff = ia != ic
            if diff.ndim and diff.shape[0] == k:
                flags |= diff.reshape(k, -1).any(axis=1)
            elif diff.any():
                flags[:] = True


def _changed_drop(q: Quality) -> float:
    """The metric drop that the samples whose class predictions changed stand for, each read
    as lost (Judge.count_changed): their share of the original metric. What such a sample
    scores on the samples measured is chance (the kit's table model: a table decoded to
    another length gained 0.025 on the search's samples; the same change lost 0.15-0.51 on
    three unseen tables), and a search picks, among the candidates that changed one, the
    one whose change happened to cost least."""
    if not q.changed_samples or not q.samples or q.metric_original is None:
        return -math.inf
    return q.changed_samples / q.samples * abs(q.metric_original)


def _at_risk(
    a: list[np.ndarray], c: list[np.ndarray], axis: int, probabilities: bool = False
) -> np.ndarray:
    """Per position (flat, in the order of the class ids): whether a rival class closed at
    least 1/NEAR_FLIP of the gap between the original's top two scores. Probabilities
    (a Softmax output) of one prediction per sample are compared as log-probabilities, i.e.
    logits: a saturated 0.99999 that falls to 0.9 has lost most of its margin though it
    moved by 0.1. (Per position of a sequence, the log-probabilities of the many unlikely
    classes are too noisy to tell: they are compared as probabilities.)"""
    parts = []
    for ta, tc in zip(a, c, strict=True):
        if ta.ndim == 0:
            parts.append(np.zeros(1, dtype=bool))
            continue
        if ta.dtype.kind != "f" or ta.shape[axis] < 2 or ta.shape != tc.shape:
            parts.append(np.zeros(ta.size // max(ta.shape[axis], 1), dtype=bool))
            continue
        ta64 = np.moveaxis(ta.astype(np.float64), axis, -1)
        tc64 = np.moveaxis(tc.astype(np.float64), axis, -1)
        if probabilities and ta.ndim == 2:  # one prediction per sample
            tiny = np.finfo(np.float64).tiny
            ta64, tc64 = np.log(np.maximum(ta64, tiny)), np.log(np.maximum(tc64, tiny))
        top = np.argmax(ta64, axis=-1)[..., None]
        top2 = -np.partition(-ta64, 1, axis=-1)
        margin = top2[..., 0] - top2[..., 1]
        # how much closer each rival got to the original's top class
        closed = (tc64 - np.take_along_axis(tc64, top, -1)) - (
            ta64 - np.take_along_axis(ta64, top, -1)
        )
        np.put_along_axis(closed, top, 0.0, -1)
        with np.errstate(invalid="ignore"):
            risky = NEAR_FLIP * closed.max(axis=-1) >= margin
        parts.append((risky | ~np.isfinite(closed).all(axis=-1)).reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _lossless(q: Quality | None, strict: bool = False) -> Gate:
    """No class prediction changes; tensor outputs within LOSSLESS_TENSOR_TOLERANCE."""
    name = "--max-accuracy-drop"
    if q is None:
        return Gate(name, 0.0, None, False, "not evaluated")
    changed, moved = [], []
    if strict and q.at_risk_total:
        changed.append(f"{q.at_risk_total} near-flips")
    for o in q.outputs:
        kind = q.kinds.get(o.name, OutputKind(TENSOR))
        if kind.kind == CLASS and o.top1_agreement is not None:
            if o.top1_agreement < 1:
                share = f"{100 * (1 - o.top1_agreement):.3g}%"
                changed.append(f"{safe_text(o.name, 80)} ({share} of its predictions)")
        elif (
            o.nonfinite
            or (o.relative_error is None and o.cosine is not None and o.cosine < 1)
            or (o.relative_error is not None and o.relative_error > LOSSLESS_TENSOR_TOLERANCE)
        ):
            moved.append(o.name)

    drop = q.accuracy_drop_points or 0.0
    if changed or moved or drop > 0:
        what = ", ".join(
            [f"predictions of {n} changed" for n in changed]
            + [
                f"{safe_text(n, 80)} moved by more than {LOSSLESS_TENSOR_TOLERANCE:g} "
                "relative error"
                for n in moved
            ]
        )
        return Gate(name, 0.0, drop, False, f"lossless: {what or 'accuracy dropped'}")
    return Gate(name, 0.0, drop, True)
