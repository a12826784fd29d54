"""The ``prunequant`` command: parse options, call the pipeline, print, map errors to exit codes.

stdout carries the result only (a table, or one JSON document with ``--json``);
errors go to stderr as one line. No graph logic lives here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from prunequant_cli.errors import EXIT_CODES, EXIT_INTERNAL, PrunequantError, safe_text

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)


def _console() -> Any:
    from rich.console import Console

    # rich drops colour when stdout is not a terminal and honours NO_COLOR. Off a
    # terminal it would fold tables to 80 columns (or $COLUMNS): give logs room.
    width = None if sys.stdout.isatty() else 160
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=width)


def _emit_json(doc: dict[str, Any]) -> None:
    # Plain write, never through rich: it would wrap long lines off a terminal.
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n")


def _fail(message: str, code: int) -> None:
    click.echo(f"prunequant: error: {message}", err=True)
    sys.exit(code)


def _run(debug: bool, action: Callable[[], None]) -> None:
    """Run a command body: user errors as one line + exit code, bugs with a traceback."""
    try:
        action()
    except PrunequantError as e:
        if debug:
            raise
        _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as e:
        if debug:
            raise
        what = f"{type(e).__name__}: {safe_text(e)}"
        _fail(f"internal error: {what} (rerun with --debug for the traceback)", EXIT_INTERNAL)


def debug_option(f: F) -> F:
    return click.option("--debug", is_flag=True, help="Show the traceback of internal errors.")(f)


def json_option(f: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document on stdout."
    )(f)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODE_HELP,
)
@click.version_option(package_name="prunequant", prog_name="prunequant")
def main() -> None:
    """Prune and quantize the weights of ONNX models, and verify the result in onnxruntime."""


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--threshold",
    type=click.FloatRange(0.0, 1.0),
    help="Row-importance pruning: zero output rows whose share R_i of the tensor's L1 "
    "magnitude is below T. The shares of a tensor sum to 1 (mean 1/rows).",
)
@click.option(
    "--sparsity",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Magnitude pruning instead: zero this fraction of the smallest weights of each tensor.",
)
@click.option(
    "--bits",
    type=click.IntRange(2, 16),
    default=8,
    show_default=True,
    help="Bits per weight code, 2..8; 16 stores float16 values.",
)
@click.option(
    "--quant",
    type=click.Choice(["uniform", "codebook"]),
    default="uniform",
    show_default=True,
    help="uniform: symmetric codes with one scale per output channel; codebook: "
    "2^bits shared values per tensor (k-means), more accurate at 2-4 bits.",
)
@click.option(
    "--format",
    "storage",
    type=click.Choice(["auto", "dense", "int8", "sparse"]),
    default="auto",
    show_default=True,
    help="How codes are stored: auto picks the smallest form per tensor that runs at the "
    "model's opset; dense never uses a bitmask; int8 one byte per code; sparse a bitmask "
    "of the non-zeros.",
)
@click.option(
    "--keep-quantized",
    is_flag=True,
    help="Store DequantizeLinear codes that onnxruntime keeps quantized in memory (less RAM; "
    "slower for Conv/Gemm and at large batch).",
)
@click.option("--no-quantize", is_flag=True, help="Prune only: keep the weights in floating point.")
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave weights whose name matches this glob untouched (repeatable).",
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Evaluation inputs: an .npz keyed by input name, with optional 'labels'. "
    "Without it, seeded random inputs (agreement with the original only).",
)
@click.option("--samples", type=click.IntRange(min=1), help="Evaluate on at most N samples.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Samples per onnxruntime run when the batch dimension is free.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="onnxruntime intra-op threads, the same for both models.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of synthetic inputs.")
@click.option("--no-eval", is_flag=True, help="Write the model without running onnxruntime.")
@click.option("-v", "--verbose", is_flag=True, help="Also show the per-tensor breakdown.")
@json_option
@debug_option
def compress(
    model: Path,
    output: Path,
    threshold: float | None,
    sparsity: float | None,
    bits: int,
    quant: str,
    storage: str,
    keep_quantized: bool,
    no_quantize: bool,
    exclude: tuple[str, ...],
    data: Path | None,
    samples: int | None,
    batch_size: int,
    threads: int,
    seed: int,
    no_eval: bool,
    verbose: bool,
    as_json: bool,
    debug: bool,
) -> None:
    """Prune, then quantize the weights of MODEL; write OUTPUT; compare both in onnxruntime.

    \b
    Examples:
      prunequant compress model.onnx small.onnx --bits 8 --data holdout.npz
      prunequant compress model.onnx small.onnx --threshold 0.01 --bits 4 --json
    """

    def body() -> None:
        from prunequant_cli.config import CompressConfig, EvalConfig
        from prunequant_cli.pipeline import compress as run_compress

        config = CompressConfig(
            threshold=threshold,
            sparsity=sparsity,
            bits=None if no_quantize else bits,
            quant=quant,
            format=storage,
            keep_quantized=keep_quantized,
            exclude=exclude,
        )
        ev = EvalConfig(
            enabled=not no_eval,
            data=data,
            samples=samples,
            batch_size=batch_size,
            threads=threads,
            seed=seed,
        )
        report = run_compress(model, output, config, ev)
        if as_json:
            _emit_json(report.to_dict())
        else:
            from prunequant_cli.report import render_compress

            render_compress(report, _console(), verbose=verbose)

    _run(debug, body)


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@debug_option
def inspect(model: Path, as_json: bool, debug: bool) -> None:
    """Show what is inside MODEL: inputs, outputs, ops, every tensor and how weights are stored."""

    def body() -> None:
        from prunequant_cli.inspection import render_inspection
        from prunequant_cli.pipeline import inspect_model

        info = inspect_model(model)
        if as_json:
            _emit_json(info.to_dict())
        else:
            render_inspection(info, _console())

    _run(debug, body)
