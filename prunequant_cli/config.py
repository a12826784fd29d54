"""Frozen option sets, validated once when they are made."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prunequant_cli.errors import UsageError

MIN_BITS, MAX_BITS = 2, 8
QUANT_METHODS = ("uniform", "asymmetric", "codebook")
ROUNDINGS = ("nearest", "gptq")
FORMAT_NAMES = ("auto", "dense", "int8", "sparse")


@dataclass(frozen=True)
class CompressConfig:
    """What to do to the weights.

    Attributes:
        threshold: Row-importance pruning. For each weight tensor, the share R_i of
            output row i in the tensor's total L1 magnitude (the shares sum to 1, so
            their mean is 1/rows); rows with R_i < threshold are zeroed.
        sparsity: Magnitude pruning instead: zero this fraction (0 <= S < 1) of the
            smallest-magnitude weights of each tensor.
        prune_mode: "sparse" zeroes weights (rows by threshold, or by magnitude);
            "dense" removes whole output channels (by threshold on R_i, or the
            sparsity fraction of least important channels) and rewrites the graph;
            "N:M" keeps the N largest of every M consecutive input weights.
        bits: Width of the codes (2..8), 16 for float16 storage, or None to keep
            float weights (pruning only).
        quant: "uniform" (symmetric, one scale per output channel), "asymmetric"
            (a scale and an integer zero point per output channel, covering the
            channel's [min, max]) or "codebook" (2**bits shared values per tensor,
            learned by k-means).
        block_size: Uniform codes of 2-D weights get one scale per block of this
            many input weights of each output neuron (None: one per output channel).
        format: How codes are stored: "auto" (the smallest form per tensor that
            runs at the model's opset), "dense", "int8" (one byte per code) or
            "sparse" (bitmask of the non-zeros).
        keep_quantized: Store uniform codes with DequantizeLinear, which
            onnxruntime keeps quantized in memory instead of folding to float.
        bias_correction: Shift the bias of each Gemm/Conv by the mean output error its
            quantized weight adds on the evaluation inputs.
        rounding: "nearest" (each code the nearest to its weight) or "gptq" (codes chosen
            to minimise each layer's output error on the calibration inputs, for the
            MatMul/Gemm/Conv weights whose inputs can be recorded; nearest elsewhere).
        all_layers: At 4 bits and below, quantize the first and last layers to ``bits``
            too; by default their weights keep 8 bits (the layers that read a model input
            or write a model output through weightless ops, see
            ``selection.boundary_weights``).
        strip: Drop the doc strings and metadata_props of nodes, values, graphs and
            functions (not the model's own), which exporters fill.
        exclude: Name globs of weights to leave untouched.
        per_tensor: Settings for single weights by name (from a recipe or a
            search); their threshold, sparsity, bits and quant replace these.
    """

    threshold: float | None = None
    sparsity: float | None = None
    prune_mode: str = "sparse"
    bits: int | None = 8
    quant: str = "uniform"
    block_size: int | None = None
    format: str = "auto"
    keep_quantized: bool = False
    bias_correction: bool = False
    rounding: str = "nearest"
    all_layers: bool = False
    strip: bool = False
    exclude: tuple[str, ...] = ()
    per_tensor: Mapping[str, CompressConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threshold is not None and self.sparsity is not None:
            raise UsageError("--threshold and --sparsity are alternatives: give one of them")
        if self.prune_mode not in ("sparse", "dense") and self.n_m is None:
            raise UsageError(
                f"--prune-mode must be sparse, dense or N:M (like 2:4), got {self.prune_mode}"
            )
        if self.prune_mode == "dense" and self.threshold is None and self.sparsity is None:
            raise UsageError(
                "--prune-mode dense needs --threshold or --sparsity (a channel fraction)"
            )
        if self.n_m is not None and (self.threshold is not None or self.sparsity is not None):
            raise UsageError("--prune-mode N:M prunes by itself: no --threshold or --sparsity")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UsageError(f"--threshold must be within [0, 1], got {self.threshold}")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"--sparsity must be within [0, 1), got {self.sparsity}")
        if self.bits is not None and not (MIN_BITS <= self.bits <= MAX_BITS or self.bits == 16):
            raise UsageError(f"--bits must be within {MIN_BITS}..{MAX_BITS} or 16, got {self.bits}")
        if self.block_size is not None and (self.block_size < 2 or self.quant != "uniform"):
            raise UsageError("a block size (2 or more) goes with --quant uniform")
        if self.quant not in QUANT_METHODS:
            raise UsageError(f"--quant must be one of {', '.join(QUANT_METHODS)}, got {self.quant}")
        if self.format not in FORMAT_NAMES:
            raise UsageError(
                f"--format must be one of {', '.join(FORMAT_NAMES)}, got {self.format}"
            )
        if self.bits == 16 and (self.quant != "uniform" or self.keep_quantized):
            raise UsageError("--bits 16 stores float16 values: no --quant or --keep-quantized")
        if self.keep_quantized and (self.quant != "uniform" or self.format != "auto"):
            raise UsageError(
                "--keep-quantized writes uniform DequantizeLinear codes: no --quant or --format"
            )
        if self.rounding not in ROUNDINGS:
            raise UsageError(
                f"--rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding}"
            )
        if self.rounding == "gptq" and (
            self.bits is None or self.bits == 16 or self.quant == "codebook"
        ):
            raise UsageError("--rounding gptq rounds uniform or asymmetric codes of 2 to 8 bits")
        if self.bits is None and (self.keep_quantized or self.quant != "uniform"):
            raise UsageError("--no-quantize cannot be combined with --quant or --keep-quantized")

    def for_tensor(self, name: str) -> CompressConfig:
        """The settings that apply to the weight ``name``."""
        return self.per_tensor.get(name, self)

    @property
    def calibrates(self) -> bool:
        """Whether applying these settings measures calibration data."""
        return (
            self.bias_correction
            or self.rounding == "gptq"
            or any(c.rounding == "gptq" for c in self.per_tensor.values())
        )

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) of an N:M prune mode (N weights kept in every M), else None."""
        n, sep, m = self.prune_mode.partition(":")
        if not sep or not n.isdigit() or not m.isdigit() or not 0 < int(n) < int(m) <= 64:
            return None
        return int(n), int(m)

    @property
    def prune_method(self) -> str | None:
        """How weights are zeroed by the prune pass (dense pruning removes channels instead)."""
        if self.n_m is not None:
            return "n_m"
        if self.prune_mode == "dense":
            return None
        if self.threshold is not None:
            return "row_importance"
        if self.sparsity is not None:
            return "magnitude"
        return None


@dataclass(frozen=True)
class EvalConfig:
    """How to compare the original and the compressed model in onnxruntime.

    Attributes:
        enabled: Run the comparison at all.
        data: An ``.npz``/``.npy`` file or a folder of them, arrays keyed by input
            name (optional ``labels``); None for seeded synthetic inputs.
        samples: Use at most this many samples of the data.
        synthetic_samples: How many synthetic samples to draw without data.
        batch_size: Samples per run when the model's batch dimension is free.
        seed: Seed of the synthetic inputs.
        latency_runs: Timed runs per model (after warm-up) for the latency median.
        threads: onnxruntime intra-op threads, the same for both models.
        input_shapes: Fixed shapes for inputs with symbolic dimensions.
        input_values: Without data, inputs filled with one value (a sample rate, a flag)
            instead of random values.
        label_output: The output the labels refer to, when there are several.
        per_layer: Also measure the error each compressed weight introduces in
            its own layer's output.
        calibration_data: What a search and bias correction measure on (same forms as
            ``data``). Without it, anything that calibrates splits ``data``.
        holdout_fraction: The share of ``data`` held out for the report when it is split.
        metric: A task metric, ``FILE.py:FUNCTION`` or ``module:function``, called as
            ``FUNCTION(reference, candidate, labels) -> float`` (higher is better).
        output_kinds: ``(output, "class" | "tensor")`` pairs overriding how outputs are judged.
    """

    enabled: bool = True
    data: Path | None = None
    samples: int | None = None
    synthetic_samples: int = 16
    batch_size: int = 64
    seed: int = 0
    latency_runs: int = 20
    threads: int = 1
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    input_values: tuple[tuple[str, float], ...] = ()
    label_output: str | None = None
    per_layer: bool = False
    calibration_data: Path | None = None
    holdout_fraction: float = 0.5
    metric: str | None = None
    output_kinds: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("data", "calibration_data"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))  # accept str from Python callers
        if not 0.0 < self.holdout_fraction < 1.0:
            raise UsageError(
                f"--holdout-fraction must be within (0, 1), got {self.holdout_fraction}"
            )
        if self.samples is not None and self.samples < 1:
            raise UsageError(f"--samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.latency_runs < 1:
            raise UsageError(f"latency runs must be at least 1, got {self.latency_runs}")
        if self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.input_values and (self.data is not None or self.calibration_data is not None):
            raise UsageError("--input-value fills synthetic inputs: with --data, the data does")
        if self.per_layer and not self.enabled:
            raise UsageError("--per-layer measures in onnxruntime: drop --no-eval")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"--seed must be within 0..{2**32 - 1}, got {self.seed}")


@dataclass(frozen=True)
class GateConfig:
    """Pass/fail conditions for CI. None leaves a gate off.

    Attributes:
        max_accuracy_drop: Most accuracy (in points) the compressed model may lose.
        min_agreement: Least top-1 agreement with the original (0..1).
        min_cosine: Least cosine similarity of every output (-1..1).
        min_ratio: Least compression ratio, original / compressed file bytes.
        max_latency_ratio: Most compressed / original median latency.
        min_metric: Least value of the ``--metric`` task metric.
        max_metric_drop: Most the task metric may fall below the original's own score.
    """

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    min_cosine: float | None = None
    min_ratio: float | None = None
    max_latency_ratio: float | None = None
    min_metric: float | None = None
    max_metric_drop: float | None = None

    def __post_init__(self) -> None:
        for flag, value in (
            ("--max-accuracy-drop", self.max_accuracy_drop),
            ("--min-ratio", self.min_ratio),
            ("--max-latency-ratio", self.max_latency_ratio),
        ):
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {value}")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise UsageError(
                f"--max-accuracy-drop must be at least 0, got {self.max_accuracy_drop}"
            )
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise UsageError(f"--min-agreement must be within [0, 1], got {self.min_agreement}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise UsageError(f"--min-cosine must be within [-1, 1], got {self.min_cosine}")
        for flag, value in (
            ("--min-metric", self.min_metric),
            ("--max-metric-drop", self.max_metric_drop),
        ):
            if value is not None and not math.isfinite(value):
                raise UsageError(f"{flag} must be a finite number, got {value}")
        for flag, value in (
            ("--min-ratio", self.min_ratio),
            ("--max-latency-ratio", self.max_latency_ratio),
        ):
            if value is not None and value <= 0:
                raise UsageError(f"{flag} must be positive, got {value}")

    @property
    def metric_given(self) -> bool:
        return self.min_metric is not None or self.max_metric_drop is not None

    @property
    def budget_given(self) -> bool:
        """A quality budget: what a search must keep."""
        return self.metric_given or any(
            v is not None for v in (self.max_accuracy_drop, self.min_agreement, self.min_cosine)
        )

    @property
    def needs_evaluation(self) -> bool:
        return self.budget_given or self.max_latency_ratio is not None
