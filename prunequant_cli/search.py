"""Settings chosen by measured quality: the smallest model that stays within a budget.

1. Sensitivity: each weight alone is given each candidate setting (bits 8/6/4/3/2,
   codebooks, magnitude pruning); the model runs in onnxruntime on a subset of the
   evaluation data with that one weight replaced (weights are fed as overridable
   inputs, so no model is rebuilt), and the damage is the largest relative error of
   the outputs. The bytes of each setting are measured by a dry-run encoding.
2. Allocation: per weight, the options that no other option beats in both bytes and
   damage form a convex curve; all the curves' steps, merged by damage per byte
   saved, give one path from "all float" down to "everything at its smallest".
3. Verification: prefixes of the path are measured end to end on the full
   evaluation data (a binary search for the longest one within the budget), and so
   is every single global setting; the smallest configuration within the budget wins.

Weights are replaced by their exact decoded values, so what is measured here is
what the written model computes.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import LiftSubgraphInitializersToMainGraphPass

from prunequant_cli import encodings, pruning
from prunequant_cli.bias import Correctable, bias_shift
from prunequant_cli.config import CompressConfig
from prunequant_cli.data import cut, samples_of
from prunequant_cli.evaluate import open_session
from prunequant_cli.judge import RESERVE, Budget, Judge, Quality
from prunequant_cli.passes import make_payload
from prunequant_cli.progress import NO_PROGRESS, Progress
from prunequant_cli.selection import WeightSite

# Configurations the confirming fold is asked about, at most.
CONFIRM_LADDER = (0.7, 0.5, 0.25)  # damage of the larger confirmation candidates
CONFIRM_CHECKS = 5
# The share of a cosine or metric-drop allowance the confirming fold keeps back: the one
# unbiased reading of a state must leave room for the noise of another set of samples
# (when the metric drop's noise is measured, Quality.metric_drop_spread, it is used instead).
CONFIRM_RESERVE = 0.5

SUBSET_SAMPLES = 128

SUBSET_MIN = 8  # samples, when a run of the full subset takes longer than PROBE_SECONDS
PROBE_SECONDS = 0.5

FLOAT = CompressConfig(bits=None)
INT8 = CompressConfig(bits=8)
CANDIDATES: tuple[CompressConfig, ...] = (
    INT8,
    CompressConfig(bits=6),
    CompressConfig(bits=4),
    CompressConfig(bits=3),
    CompressConfig(bits=2),
    CompressConfig(bits=4, quant="codebook"),
    CompressConfig(bits=3, quant="codebook"),
    CompressConfig(bits=2, quant="codebook"),
    CompressConfig(bits=4, quant="asymmetric"),
    CompressConfig(bits=3, quant="asymmetric"),
    CompressConfig(bits=2, quant="asymmetric"),
    CompressConfig(bits=8, sparsity=0.5),
    CompressConfig(bits=4, sparsity=0.25),
    CompressConfig(bits=4, sparsity=0.5),
    CompressConfig(bits=4, sparsity=0.75),
    CompressConfig(bits=4, sparsity=0.5, quant="codebook"),
    CompressConfig(bits=2, sparsity=0.5, quant="codebook"),
    CompressConfig(bits=2, sparsity=0.75, quant="codebook"),
    CompressConfig(bits=2, sparsity=0.75),
    CompressConfig(bits=4, block_size=32),
    CompressConfig(bits=3, block_size=32),
    CompressConfig(bits=2, block_size=32),
)
# With layer-input statistics (calibration data), GPTQ-rounded codes are candidates too.
GPTQ_CANDIDATES: tuple[CompressConfig, ...] = (
    CompressConfig(bits=4, rounding="gptq"),
    CompressConfig(bits=3, rounding="gptq"),
    CompressConfig(bits=2, rounding="gptq"),
    CompressConfig(bits=4, quant="asymmetric", rounding="gptq"),
    CompressConfig(bits=3, quant="asymmetric", rounding="gptq"),
    CompressConfig(bits=4, block_size=32, rounding="gptq"),
    CompressConfig(bits=3, block_size=32, rounding="gptq"),
    CompressConfig(bits=4, sparsity=0.5, rounding="gptq"),
)


def label(config: CompressConfig) -> str:
    """'int4', 'int4/32' (a scale per 32 weights), 'int4-zp' (with a zero point), 'codebook3',
    'int4 gptq' (GPTQ rounding), 'int4 50% pruned', 'float'."""
    if config.bits is None:
        return "float"
    name = f"codebook{config.bits}" if config.quant == "codebook" else f"int{config.bits}"
    if config.block_size:
        name += f"/{config.block_size}"
    if config.quant == "asymmetric":
        name += "-zp"
    if config.rounding == "gptq":
        name += " gptq"
    if config.sparsity:
        name += f" {config.sparsity:.0%} pruned"
    return name


class Probe:
    """The original model with its weights as overridable inputs, run on the calibration
    samples, and the judge of its outputs (the same one the gates use)."""

    def __init__(
        self,
        model: ir.Model,
        sites: list[WeightSite],
        folds: Sequence[Fold],
        make_judge: Callable[[list[list[np.ndarray]], np.ndarray | None], Judge],
        axes: Mapping[str, int | None],
        threads: int,
        extra: Sequence[ir.Value] = (),
    ) -> None:
        """``folds``: the calibration samples, as one fold to search on and optionally a
        second one that confirms the choice; ``make_judge(reference, labels)`` builds a
        fold's judge; ``axes`` are the inputs' batch axes; ``extra`` are more initializers
        to make overridable (biases that a correction moves)."""
        # A copy whose subgraph initializers (weights inside If/Loop branches) are lifted to
        # the main graph, where they can be fed like any other; the branches still see them.
        copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        LiftSubgraphInitializersToMainGraphPass()(copy)
        proto = ir.serde.serialize_model(copy)
        del copy
        main = {t.name: t for t in proto.graph.initializer}
        known = {i.name for i in proto.graph.input}
        self.overridable: set[str] = set()
        for name in [s.name for s in sites] + [v.name or "" for v in extra]:
            tensor = main.get(name)
            if tensor is None:
                continue  # renamed by the lift (a clash): not searched
            self.overridable.add(name)
            if name not in known:
                known.add(name)
                proto.graph.input.append(
                    onnx.helper.make_tensor_value_info(name, tensor.data_type, list(tensor.dims))
                )
        del main
        self.session = open_session(proto.SerializeToString(), threads, "original")
        del proto
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.axes = dict(axes)
        self.folds = list(folds)
        self.references = [self._run(f.batches, {}) for f in self.folds]
        self.judges = [
            make_judge(r, f.labels) for r, f in zip(self.references, self.folds, strict=True)
        ]
        for judge, f in zip(self.judges, self.folds, strict=True):
            # the batches are the units the metric drop's sampling noise is resampled in
            judge.units = [self._samples(b) for b in f.batches]
        self.batches, self.reference, self.judge = (
            self.folds[0].batches,
            self.references[0],
            self.judges[0],
        )
        self.subset = self._subset(self.batches)
        # Sensitivity only needs how far outputs move: no labels, no metric on the subset.
        self.subset_judge = Judge(self.outputs, self.judge.kinds)
        started = time.perf_counter()
        self.reference_subset = self._run(self.subset, {})
        if time.perf_counter() - started > PROBE_SECONDS and self._cuttable:
            # A heavy model: measure sensitivity on fewer samples, so every weight gets measured.
            self.subset = [self._cut(self.subset[0], SUBSET_MIN)]
            self.reference_subset = self._run(self.subset, {})

    def _samples(self, batch: dict[str, np.ndarray]) -> int:
        return samples_of(batch, self.axes)

    def _cut(self, batch: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        return cut(batch, self.axes, 0, n)

    @property
    def _cuttable(self) -> bool:
        """Whether the subset's batch can be cut to fewer samples."""
        return bool(self.subset) and self._samples(self.subset[0]) > SUBSET_MIN

    def _subset(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        chosen, count = [], 0
        for b in batches:
            chosen.append(b)
            count += self._samples(b)
            if count >= SUBSET_SAMPLES:
                break
        return chosen

    def _run(
        self, batches: list[dict[str, np.ndarray]], overrides: dict[str, np.ndarray]
    ) -> list[list[np.ndarray]]:
        return [
            [np.asarray(y) for y in self.session.run(None, {**feed, **overrides})]
            for feed in batches
        ]

    @property
    def can_check(self) -> bool:
        return len(self.folds) > 1

    def quality(
        self, overrides: dict[str, np.ndarray], subset: bool = False, fold: int = 0
    ) -> Quality:
        """Quality with ``overrides`` on the sensitivity subset, or on a whole fold."""
        if subset:
            got = self._run(self.subset, overrides)
            return self.subset_judge.measure(self.reference_subset, got, detailed=False)
        got = self._run(self.folds[fold].batches, overrides)
        return self.judges[fold].measure(
            self.references[fold], got, detailed=False, samples=self.folds[fold].samples
        )


@dataclass(frozen=True)
class Fold:
    """Calibration samples in batches, with their labels."""

    batches: list[dict[str, np.ndarray]]
    labels: np.ndarray | None
    samples: int


@dataclass
class Option:
    """One setting of one weight: its encoded bytes and the damage it alone does."""

    config: CompressConfig
    bytes: int
    damage: float


@dataclass
class SearchResult:
    config: CompressConfig  # per-tensor settings to apply
    chosen: str
    budget: Budget
    quality: Quality
    sensitivity: dict[str, list[Option]]
    tried: list[tuple[str, int, Quality]] = field(default_factory=list)
    seconds: float = 0.0
    out_of_time: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    confirmation: dict[str, Any] | None = None
    held: set[int] = field(default_factory=set)  # indices of ``tried`` within the budget

    def to_dict(self) -> dict[str, Any]:
        pareto = _pareto(self.tried)
        return {
            "budget": self.budget.to_dict(),
            "measured_on": "calibration",
            "chosen": self.chosen,
            "quality": self.quality.to_dict(),
            "settings": {name: label(c) for name, c in sorted(self.config.per_tensor.items())},
            "sensitivity": [
                {
                    "tensor": name,
                    "setting": label(o.config),
                    "bytes": o.bytes,
                    # a setting that made an output non-finite did unbounded damage
                    "damage": o.damage if math.isfinite(o.damage) else None,
                }
                for name, options in self.sensitivity.items()
                for o in options
            ],
            "tried": [
                {
                    "label": lab,
                    "weight_bytes": b,
                    "quality": q.to_dict(),
                    "pareto": (lab, b) in pareto,
                    "held": i in self.held,
                }
                for i, (lab, b, q) in enumerate(self.tried)
            ],
            "seconds": self.seconds,
            "phase_seconds": dict(self.phases),
            "confirmation": self.confirmation,
            "out_of_time": self.out_of_time,
        }


def _pareto(tried: list[tuple[str, int, Quality]]) -> set[tuple[str, int]]:
    """Configurations no other one beats in both weight bytes and quality (accuracy drop when
    measured, else the largest output relative error)."""

    def badness(q: Quality) -> float:
        drop = q.accuracy_drop_points
        return drop if drop is not None else q.max_relative_error

    front = set()
    for lab, b, q in tried:
        if not any(
            b2 <= b and badness(q2) <= badness(q) and (b2, badness(q2)) != (b, badness(q))
            for _, b2, q2 in tried
        ):
            front.add((lab, b))
    return front


def _payload(
    site: WeightSite,
    w: np.ndarray,
    config: CompressConfig,
    opset: int,
    stats: Sequence[np.ndarray] | None = None,
) -> encodings.Payload:
    """The weight ``w`` pruned and quantized as ``config`` says (the quantize pass's codec)."""
    pruned = w
    if config.sparsity:
        pruned = pruning.apply_zero_mask(w, pruning.magnitude_cut(w, config.sparsity).mask(w))
    return make_payload(pruned, site, config, bool(config.sparsity), opset, stats)


def _hull(options: list[Option]) -> list[Option]:
    """The lower convex hull of (bytes, damage), from the largest option to the smallest."""
    pts = sorted(options, key=lambda o: (-o.bytes, o.damage))
    frontier: list[Option] = []
    for o in pts:  # drop options that a larger-or-equal one... is never better than
        if frontier and o.damage >= frontier[-1].damage and o.bytes >= frontier[-1].bytes:
            continue
        while frontier and frontier[-1].damage >= o.damage:
            frontier.pop()
        frontier.append(o)
    hull: list[Option] = []
    for o in frontier:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # keep b only if it lies below the line from a to o
            if (b.damage - a.damage) * (a.bytes - o.bytes) >= (o.damage - a.damage) * (
                a.bytes - b.bytes
            ):
                hull.pop()
            else:
                break
        hull.append(o)
    return hull


def _slope(current: Option, smaller: Option) -> float:
    """Damage added per byte saved by moving a weight from ``current`` to ``smaller``."""
    return (smaller.damage - current.damage) / (current.bytes - smaller.bytes)


def run_search(
    model: ir.Model,
    sites: list[WeightSite],
    probe: Probe,
    budget: Budget,
    time_budget: float,
    progress: Progress = NO_PROGRESS,
    corrections: Mapping[str, tuple[Correctable, np.ndarray]] | None = None,
    started: float | None = None,
    stats: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> SearchResult:
    """Choose per-weight settings: the smallest configuration whose quality stays in budget.

    With ``corrections`` (bias correction on), each candidate weight comes with its
    corrected bias, so what is measured is what the written model computes.

    With ``stats`` (layer-input statistics of the calibration samples), GPTQ-rounded codes
    are candidates for the weights that have them.

    ``time_budget`` bounds the whole search from ``started`` (default: now; the caller
    passes when it began preparing the probe): no measurement starts that the last one
    of its kind says would end past it. Half of it is for the sensitivity phase.
    """
    started = time.perf_counter() if started is None else started
    phases = {"setup": time.perf_counter() - started}
    clock = _Clock(started, time_budget)
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    shared = encodings.SharedConstants(encodings.NameAuthority(model), opset)
    usable = [s for s in sites if s.name in probe.overridable]
    corrections = corrections or {}
    stats = stats or {}
    candidates = CANDIDATES + (GPTQ_CANDIDATES if stats else ())

    def overrides_for(
        site: WeightSite, w: np.ndarray, decoded: np.ndarray
    ) -> dict[str, np.ndarray]:
        found = {site.name: decoded}
        if site.name in corrections:
            layer, mean_x = corrections[site.name]
            shift = bias_shift(layer, decoded.astype(np.float64) - w, mean_x)
            bias = layer.bias.const_value
            if shift is not None and bias is not None and layer.bias.name:
                old = bias.numpy()
                found[layer.bias.name] = (old - shift).astype(old.dtype)
        return found

    sensitivity: dict[str, list[Option]] = {}
    out_of_time = False
    progress.stage("sensitivity", len(usable) * len(candidates))
    # Largest weights first: they hold the most bytes, so a time limit costs the least.
    for site in sorted(usable, key=lambda s: -int(s.value.const_value.nbytes)):  # type: ignore[union-attr]
        tensor = site.value.const_value
        assert tensor is not None
        w = tensor.numpy()
        options = [Option(FLOAT, int(tensor.nbytes), 0.0)]
        if not clock.fits("subset", 0.5):
            # Out of time before this weight: int8 is its one option beside float, with the
            # worst damage int8 did to a measured weight as its guess; the verification on
            # the calibration samples still decides whether it holds.
            out_of_time = True
            payload = _payload(site, w, INT8, opset)
            enc = encodings.choose(payload, opset, encodings.FORMATS["auto"], site.graph, shared)
            if enc is not None:
                guess = max(
                    (o.damage for opts in sensitivity.values() for o in opts if o.config is INT8),
                    default=0.0,
                )
                options.append(Option(INT8, enc.cost(site.graph, payload, shared), guess))
            sensitivity[site.name] = options
            continue
        for config in candidates:
            if config.rounding == "gptq" and site.name not in stats:
                continue
            progress.advance()
            if not clock.fits("subset", 0.5):
                out_of_time = True
                break
            t0 = time.perf_counter()
            payload = _payload(site, w, config, opset, stats.get(site.name))
            enc = encodings.choose(payload, opset, encodings.FORMATS["auto"], site.graph, shared)
            if enc is None:
                continue
            decoded = payload.decode().astype(w.dtype)
            damage = probe.quality(overrides_for(site, w, decoded), subset=True).max_relative_error
            clock.cost["subset"] = time.perf_counter() - t0
            options.append(Option(config, enc.cost(site.graph, payload, shared), damage))
            del decoded, payload
        sensitivity[site.name] = options

    # The greedy path: every weight's hull steps, cheapest damage per byte first.
    steps = []
    for name, options in sensitivity.items():
        hull = _hull(options)
        for a, b in itertools.pairwise(hull):
            saved = a.bytes - b.bytes
            steps.append(((b.damage - a.damage) / saved if saved else math.inf, name, b))
    steps.sort(key=lambda s: (s[0], s[1]))

    def state_at(k: int) -> dict[str, Option]:
        state = {name: opts[0] for name, opts in sensitivity.items()}  # float, or a fixed int8
        for _, name, option in steps[:k]:
            state[name] = option
        return state

    def weight_bytes(state: dict[str, Option]) -> int:
        return sum(o.bytes for o in state.values())

    tried: list[tuple[str, int, Quality]] = []

    by_name = {s.name: s for s in usable}
    # Decoded weights (and corrected biases) of the options in the best state so far,
    # so each measurement only decodes what changed; at most about twice the model.
    cache: dict[tuple[str, int], dict[str, np.ndarray]] = {}

    def overrides_of(state: dict[str, Option], store: bool = True) -> dict[str, np.ndarray]:
        overrides = {}
        for n, o in state.items():
            if o.config is FLOAT:
                continue
            key = (n, id(o))
            found = cache.get(key)
            if found is None:
                site = by_name[n]
                w = site.value.const_value.numpy()  # type: ignore[union-attr]
                decoded = _payload(site, w, o.config, opset, stats.get(n)).decode()
                decoded = decoded.astype(w.dtype)
                found = overrides_for(site, w, decoded)
                if store:
                    cache[key] = found
            overrides.update(found)
        return overrides

    # Every state that held on the search fold, for the confirmation on the other fold.
    held_states: list[tuple[str, dict[str, Option], Quality]] = []
    held_idx: set[int] = set()

    measured: dict[tuple[tuple[str, int], ...], Quality] = {}  # by _key of the state

    def measure(lab: str, state: dict[str, Option]) -> Quality:
        t0 = time.perf_counter()
        overrides = overrides_of(state)
        q = probe.quality(overrides)
        measured[_key(state)] = q
        keep = {(n, id(o)) for n, o in best_state.items()}
        held = budget.holds(q, strict=True)
        if held:
            held_states.append((lab, state, q))
            held_idx.add(len(tried))

        for key in [k for k in cache if k not in keep]:
            if key not in {(n, id(o)) for n, o in state.items()} or not held:
                del cache[key]
        del overrides
        tried.append((lab, weight_bytes(state), q))
        progress.advance()
        clock.cost["full"] = time.perf_counter() - t0
        return q

    phases["sensitivity"] = time.perf_counter() - started - phases["setup"]
    progress.stage("verifying", None)
    # With a confirming fold, a tenth of the budget is kept for confirming.
    share = 0.9 if probe.can_check else 1.0
    best_state = state_at(0)
    # All float is the original itself: nothing to run.
    best_q = probe.judge.measure(probe.reference, probe.reference, detailed=False)
    held_idx.add(len(tried))
    tried.append(("all float", weight_bytes(best_state), best_q))
    # Every single global setting (measured where all weights have it); all int8 even when
    # time is up, so that a search always gets one verified chance to compress.
    for config in candidates:
        if config is not INT8 and not clock.fits("full", share):
            out_of_time = True
            break
        state = {}
        for name, opts in sensitivity.items():
            match = [o for o in opts if o.config is config]
            state[name] = match[0] if match else opts[0]
        q = measure(f"all {label(config)}", state)
        if budget.holds(q, strict=True) and weight_bytes(state) < weight_bytes(best_state):
            best_state, best_q = state, q
    # Binary search for the longest prefix of the path within the budget.
    lo, hi = 0, len(steps)
    while lo < hi and clock.fits("full", share):
        mid = (lo + hi + 1) // 2
        state = state_at(mid)
        q = measure(f"path step {mid}/{len(steps)}", state)
        if budget.holds(q, strict=True):
            lo = mid
            if weight_bytes(state) < weight_bytes(best_state):
                best_state, best_q = state, q
        else:
            hi = mid - 1
    # Refine the best configuration one weight at a time: the smaller option with the
    # least damage per byte saved, kept when the budget still holds, else never tried again.
    rejected: set[tuple[str, int]] = set()  # (weight, id(option)) that broke the budget
    while clock.fits("full", share):
        moves = []
        for name, opts in sensitivity.items():
            current = best_state[name]
            smaller = [o for o in opts if o.bytes < current.bytes and (name, id(o)) not in rejected]
            if not smaller:
                continue
            move = min(smaller, key=lambda o: (_slope(current, o), -o.bytes))
            moves.append((_slope(current, move), name, move))
        if not moves:
            break
        _, name, move = min(moves, key=lambda m: (m[0], m[1]))
        state = {**best_state, name: move}
        q = measure(f"refine {name} → {label(move.config)}", state)
        if budget.holds(q, strict=True):
            best_state, best_q = state, q
        else:
            rejected.add((name, id(move)))
    if not clock.fits("full", share):
        out_of_time = True
    phases["verification"] = time.perf_counter() - started - sum(phases.values())
    confirmation = None
    if probe.can_check:
        float_state = state_at(0)
        float_q = probe.judge.measure(probe.reference, probe.reference, detailed=False)
        held_states.insert(0, ("all float", float_state, float_q))
        rejected_keys: set[tuple[tuple[str, int], ...]] = set()
        best_state, best_q, checked = _confirm(
            probe, budget, clock, held_states, weight_bytes, overrides_of, rejected_keys
        )
        if best_state is float_state and checked:
            # Nothing held on both folds: back off along the path, halving the steps taken,
            # to a state that changes fewer weights (each measured on both folds).
            k = lo // 2
            while k >= 1 and clock.fits_all("full", "check"):
                state = state_at(k)
                lab = f"back-off path step {k}/{len(steps)}"
                k //= 2
                if _key(state) in rejected_keys:
                    continue  # the confirming fold has seen it already
                known = measured.get(_key(state))
                q = known if known is not None else measure(lab, state)
                if budget.holds(q, strict=True):
                    ok, entry = _check_on_fold(probe, budget, clock, lab, state, weight_bytes,
                                               overrides_of)  # fmt: skip
                    checked.append(entry)
                    if ok:
                        best_state, best_q = state, q
                        break
        confirmation = {"samples": probe.folds[1].samples, "checked": checked}
        phases["confirmation"] = time.perf_counter() - started - sum(phases.values())

    per_tensor = {name: o.config for name, o in best_state.items()}
    chosen = (
        "mixed"
        if len({label(c) for c in per_tensor.values()}) > 1
        else label(next(iter(per_tensor.values()), FLOAT))
    )
    return SearchResult(
        config=CompressConfig(per_tensor=per_tensor),
        chosen=chosen,
        budget=budget,
        quality=best_q,
        sensitivity=sensitivity,
        tried=tried,
        held=held_idx,
        seconds=time.perf_counter() - started,
        out_of_time=out_of_time,
        phases=phases,
        confirmation=confirmation,
    )


def _confirm(
    probe: Probe,
    budget: Budget,
    clock: _Clock,
    held: list[tuple[str, dict[str, Option], Quality]],
    weight_bytes: Callable[[dict[str, Option]], int],
    overrides_of: Callable[..., dict[str, np.ndarray]],
    rejected: set[tuple[tuple[str, int], ...]] | None = None,
) -> tuple[dict[str, Option], Quality, list[dict[str, Any]]]:
    """The smallest state that held on the search fold and holds on the confirming fold too,
    which no choice so far has seen: what just fits one set of samples by chance does not
    fit another. Smallest first, while time lasts; ``held[0]`` (all float) when none does.
    Returns the state, its quality on the search fold, and what was checked; the keys
    (``_key``) of the states that did not hold go into ``rejected``."""
    order, seen = [], set()
    least = math.inf
    for lab, state, q in sorted(held[1:], key=lambda h: weight_bytes(h[1])):
        key = _key(state)
        # Only the front of size against output damage: a state both larger and more
        # damaged than one already listed is the worse bet on unseen samples (all int8
        # stays a candidate of its own).
        damage = q.max_relative_error
        if key not in seen and (damage < least or lab == f"all {label(INT8)}"):
            seen.add(key)
            order.append((lab, state, q))
            least = min(least, damage)
    # A few candidates only: the smallest, the smallest with 0.7, a half and a quarter of
    # its damage (further from the edge of the budget, so likelier to carry over), all int8
    # when it held, and the least damaged of all. Trying every one until one passes would
    # make the confirming fold choose, not confirm.
    if len(order) > CONFIRM_CHECKS:
        damages = [q.max_relative_error for _, _, q in order]
        first = next((d for d in damages if math.isfinite(d)), 0.0)
        picks = {0}
        for share in CONFIRM_LADDER:
            inside = (i for i, d in enumerate(damages) if d <= share * first)
            picks.add(next(inside, len(order) - 1))
        picks |= {i for i, (lab, _, _) in enumerate(order) if lab == f"all {label(INT8)}"}
        # the least damage that still compresses: the safest bet
        picks.add(min(range(len(order)), key=lambda i: (damages[i], i)))
        order = [order[i] for i in sorted(picks)]
    checked: list[dict[str, Any]] = []
    for i, (lab, state, q) in enumerate(order):
        if i and not clock.fits("check"):
            break
        ok, entry = _check_on_fold(probe, budget, clock, lab, state, weight_bytes, overrides_of)
        checked.append(entry)
        if ok:
            return state, q, checked
        if rejected is not None:
            rejected.add(_key(state))
    return held[0][1], held[0][2], checked


def _key(state: dict[str, Option]) -> tuple[tuple[str, int], ...]:
    """What identifies a state: each weight's option."""
    return tuple(sorted((n, id(o)) for n, o in state.items()))


def _check_on_fold(
    probe: Probe,
    budget: Budget,
    clock: _Clock,
    lab: str,
    state: dict[str, Option],
    weight_bytes: Callable[[dict[str, Option]], int],
    overrides_of: Callable[..., dict[str, np.ndarray]],
) -> tuple[bool, dict[str, Any]]:
    """Whether ``state`` holds the budget on the confirming fold, and what was measured."""
    t0 = time.perf_counter()
    qc = probe.quality(overrides_of(state, store=False), fold=1)
    clock.cost["check"] = time.perf_counter() - t0
    # The reserve stands in for the noise of other samples, unless it was measured.
    reserve = RESERVE if qc.metric_drop_spread is not None else CONFIRM_RESERVE
    ok = budget.holds(qc, strict=True, reserve=reserve)
    entry = {"label": lab, "weight_bytes": weight_bytes(state), "quality": qc.to_dict(), "held": ok}
    return ok, entry


class _Clock:
    """The search's time budget, and what the last measurement of each kind cost."""

    def __init__(self, started: float, budget: float) -> None:
        self.started, self.budget = started, budget
        self.cost: dict[str, float] = {}

    def fits(self, kind: str, share: float = 1.0) -> bool:
        """Whether one more measurement of ``kind`` ends within ``share`` of the budget."""
        return self.fits_all(kind, share=share)

    def fits_all(self, *kinds: str, share: float = 1.0) -> bool:
        """Whether one more measurement of each of ``kinds``, one after another, ends
        within ``share`` of the budget."""
        end = time.perf_counter() - self.started + sum(self.cost.get(k, 0.0) for k in kinds)
        return end <= share * self.budget
