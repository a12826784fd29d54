"""The ``prunequant`` command: parse options, call the pipeline, print, map errors to exit codes.

stdout carries the result only (a table, or one JSON document with ``--json``);
progress goes to stderr when it is a terminal, errors to stderr as one line. No
graph logic lives here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from prunequant_cli.errors import (
    EXIT_CODES,
    EXIT_EVALUATION,
    EXIT_GATE,
    EXIT_INTERNAL,
    EXIT_OUTPUT,
    EXIT_RESOURCE,
    EXIT_USAGE,
    OutputError,
    PrunequantError,
    UsageError,
    safe_text,
)
from prunequant_cli.supervise import Interrupted, signal_name

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODE_HELP = "\b\nExit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES)


# Whether stdout is a terminal, as the parent process sees it: a supervised run
# writes through a pipe, but should look as it would on the terminal.
_STDOUT_IS_TERMINAL = sys.stdout is not None and sys.stdout.isatty()


def _console() -> Any:
    from rich.console import Console

    # No colour off a terminal; NO_COLOR is honoured. Off a terminal rich would fold
    # tables to 80 columns (or $COLUMNS): give logs room.
    if _STDOUT_IS_TERMINAL and not os.environ.get("NO_COLOR"):
        width = shutil.get_terminal_size().columns
        return Console(file=sys.stdout, highlight=False, force_terminal=True, width=width)
    return Console(file=sys.stdout, highlight=False, soft_wrap=False, width=160, no_color=True)


class _RichProgress:
    """A transient progress bar on stderr: one task per stage, advanced per tensor."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            # The run may be in a child process whose stderr is a pipe to the terminal.
            console=Console(stderr=True, force_terminal=True),
            transient=True,
        )
        self._task: Any = None
        self._bar.start()

    def stage(self, name: str, total: int | None = None) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(name, total=total)

    def advance(self) -> None:
        if self._task is not None:
            self._bar.advance(self._task)

    def done(self) -> None:
        self._bar.stop()


def _progress(show: bool) -> Any:
    return _RichProgress() if show else None


def _wants_progress(opts: dict[str, Any]) -> bool:
    """Progress only on a terminal (decided before the run moves into a child process)."""
    return sys.stderr.isatty() and not opts["quiet"]


def _emit_json(doc: dict[str, Any]) -> None:
    from prunequant_cli.report import finite_document

    # Plain write, never through rich: it would wrap long lines off a terminal.
    sys.stdout.write(json.dumps(finite_document(doc), indent=2, allow_nan=False) + "\n")


def _fail(message: str, code: int) -> None:
    click.echo(f"prunequant: error: {message}", err=True)
    sys.exit(code)


def _execute(debug: bool, action: Callable[[], int]) -> int:
    """Run a command body: user errors as one line + exit code, bugs with a traceback."""
    if not sys.stderr.isatty() and not debug:
        # Library warnings are noise in a CI log; what matters is in the report's notes.
        warnings.simplefilter("ignore")
    try:
        return action()
    except PrunequantError as e:
        if debug:
            raise
        click.echo(f"prunequant: error: {e}", err=True)
        return e.exit_code
    except MemoryError:
        click.echo("prunequant: error: out of memory (see --memory-limit)", err=True)
        return EXIT_RESOURCE
    except KeyboardInterrupt:
        click.echo("prunequant: error: interrupted (SIGINT); nothing was written", err=True)
        return 130
    except Interrupted as e:
        if not e.quiet:
            name = signal_name(e.signum)
            click.echo(f"prunequant: error: interrupted ({name}); nothing was written", err=True)
        return 128 + e.signum
    except Exception as e:
        if debug:
            raise
        what = f"{type(e).__name__}: {safe_text(e)}"
        click.echo(
            f"prunequant: error: internal error: {what} (rerun with --debug for the traceback)",
            err=True,
        )
        return EXIT_INTERNAL


def _run(opts: dict[str, Any], action: Callable[[], int], guarded: list[Path | None]) -> None:
    """Run ``action`` supervised (a child process under --timeout and --memory-limit) and exit.

    ``guarded`` are the files the run writes: if the child dies, the temporary files it
    left beside them are removed.
    """
    from prunequant_cli.supervise import Limits, run_supervised

    global _STDOUT_IS_TERMINAL
    _STDOUT_IS_TERMINAL = sys.stdout.isatty()
    debug = opts["debug"]
    timeout = opts["timeout"] or None
    memory = opts["memory_limit"] * 2**20 if opts["memory_limit"] else None
    if timeout is None and memory is None:
        sys.exit(_execute(debug, action))
    paths = [p for p in guarded if p is not None]
    versions = {p: _version(p) for p in paths}

    def cleanup(worker: int) -> None:
        # A run that was killed delivers nothing: its temporaries go (only its own: they
        # carry its worker's pid). Its outputs are only moved into place once it has
        # succeeded, so the previous ones are still there.
        for p in paths:
            for leftover in _temporaries(p, worker):
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)

    outcome = run_supervised(lambda: _execute(debug, action), Limits(timeout, memory), cleanup)
    if outcome.interrupted is not None:
        done = any(_version(p) != versions[p] for p in paths)
        kept = "its outputs were already written" if done else "nothing was written"
        name = signal_name(outcome.interrupted)
        _fail(f"interrupted ({name}); {kept}", 128 + outcome.interrupted)
    if outcome.timed_out:
        done = any(_version(p) != versions[p] for p in paths)
        kept = "its outputs were already written" if done else "nothing was written"
        _fail(f"timed out after {opts['timeout']:g} s (--timeout); {kept}", EXIT_RESOURCE)
    if outcome.vanished is not None:
        _fail(
            f"the run ended (exit status {outcome.vanished}) before it finished: code it ran, "
            "such as a --metric, ended the process; nothing was written",
            EXIT_USAGE,
        )
    if outcome.lost_stdout is not None:
        _drop_stdout()
        _fail(
            f"cannot write the result to stdout: {outcome.lost_stdout} (the output files, if "
            "any, were written before)",
            EXIT_OUTPUT,
        )
    if outcome.signal is not None:
        name = signal_name(outcome.signal)
        _fail(
            f"the run crashed ({name}), most likely inside onnxruntime on this model",
            EXIT_EVALUATION,
        )
    sys.exit(outcome.code if outcome.code is not None else EXIT_INTERNAL)


def _version(path: Path) -> tuple[int, int] | None:
    """(inode, mtime in ns) of a file, None if there is none: what tells a new file."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _temporaries(path: Path, pid: int) -> set[Path]:
    """Hidden temporary files and folders that process ``pid`` made beside ``path``."""
    from prunequant_cli.outputs import temporary_prefix

    prefix = temporary_prefix(path, pid)
    try:
        return {p for p in path.parent.iterdir() if p.name.startswith(prefix)}
    except OSError:
        return set()


# Below this many MiB the numerical libraries cannot even start (OpenBLAS gives up with
# its own messages): a limit that low is a mistake, not a limit.
MIN_MEMORY_MB = 256


def _memory_limit(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if 0 < value < MIN_MEMORY_MB:
        raise click.BadParameter(f"{value} MiB is too little to run at all: 0 (no limit) or at "
                                 f"least {MIN_MEMORY_MB}")  # fmt: skip
    return value


class Finite(click.FloatRange):
    """A float option within a range that is also a finite number (no nan, no inf)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _input_shape(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, tuple[int, ...]], ...]:
    shapes = []
    for text in values:
        name, sep, dims = text.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise click.BadParameter(f"{text!r} is not NAME:DIMS like input:1x3x224x224")
        shapes.append((name, shape))
    return tuple(shapes)


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def _input_value(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, float], ...]:
    found = []
    for text in values:
        name, sep, number = text.rpartition(":")
        try:
            value = float(number)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value):
            raise click.BadParameter(f"{text!r} is not NAME:VALUE with a finite number")
        found.append((name, value))
    return tuple(found)


def _output_kind(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    kinds: list[tuple[str, str]] = []
    for text in values:
        name, sep, kind = text.rpartition(":")
        if not sep or not name or kind not in ("class", "tensor"):
            raise click.BadParameter(f"{text!r} is not NAME:KIND with KIND class or tensor")
        if any(n == name and k != kind for n, k in kinds):
            raise click.BadParameter(f"output {name!r} is given two kinds")
        kinds.append((name, kind))
    return tuple(kinds)


def _file_path(text: str) -> Path:
    """A path that names a file: "out.onnx/" names a folder (Path would drop the slash)."""
    if text.endswith(("/", os.sep)):
        raise click.BadParameter(f"{text!r} ends with '/': it names a folder, not a file")
    return Path(text)


evaluation_options = _options(
    click.option(
        "--data",
        type=click.Path(path_type=Path),
        help="Evaluation inputs: an .npz (arrays keyed by input name, optional 'labels'), an "
        ".npy, or a folder of them (files of different shapes run one by one). The report and "
        "gates use these samples; without it, seeded random inputs (agreement only).",
    ),
    click.option(
        "--calibration-data",
        type=click.Path(path_type=Path),
        help="What a search and --bias-correction measure on (same forms as --data). Without "
        "it, they take a seeded split of --data and the report uses the rest.",
    ),
    click.option(
        "--holdout-fraction",
        type=Finite(0, 1, min_open=True, max_open=True),
        default=0.5,
        show_default=True,
        metavar="F",
        help="When --data is split, the share held out for the report (stratified by label).",
    ),
    click.option(
        "--metric",
        metavar="FILE.py:FUNCTION",
        help="A task metric, FUNCTION(reference, candidate, labels) -> float (higher is "
        "better), over lists of {output: array} per batch; or module:function.",
    ),
    click.option(
        "--output-kind",
        "output_kinds",
        multiple=True,
        callback=_output_kind,
        metavar="NAME:KIND",
        help="Judge an output as class scores (class: top-1 agreement, accuracy) or as a "
        "tensor (cosine, SQNR); by default class only after Softmax/LogSoftmax/ArgMax.",
    ),
    click.option(
        "--input-shape",
        "input_shapes",
        multiple=True,
        callback=_input_shape,
        metavar="NAME:DIMS",
        help="Fix an input's symbolic dimensions, e.g. images:1x3x224x224 (repeatable).",
    ),
    click.option(
        "--input-value",
        "input_values",
        multiple=True,
        callback=_input_value,
        metavar="NAME:VALUE",
        help="Without --data: fill an input with this value instead of random ones, e.g. "
        "sr:16000 for a sample rate (repeatable).",
    ),
    click.option("--samples", type=click.IntRange(min=1), help="Evaluate on at most N samples."),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=64,
        show_default=True,
        help="Samples per onnxruntime run when the batch dimension is free.",
    ),
    click.option(
        "--label-output", help="The output the labels refer to, when the model has several."
    ),
    click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="onnxruntime intra-op threads, the same for both models.",
    ),
    click.option(
        "--seed",
        type=click.IntRange(0, 2**32 - 1),
        default=0,
        show_default=True,
        help="Seed of synthetic inputs and of the calibration split.",
    ),
    click.option(
        "--per-layer",
        is_flag=True,
        help="Also measure the error each weight introduces in its own layer's output.",
    ),
)

gate_options = _options(
    click.option(
        "--max-accuracy-drop",
        type=Finite(min=0),
        metavar="POINTS",
        help="Gate: accuracy on the labels may drop by at most this many points.",
    ),
    click.option(
        "--min-agreement",
        type=Finite(0, 1),
        metavar="F",
        help="Gate: top-1 agreement with the original at least F (0..1).",
    ),
    click.option(
        "--min-cosine",
        type=Finite(-1, 1),
        metavar="F",
        help="Gate: cosine similarity of every output at least F.",
    ),
    click.option(
        "--min-metric",
        type=Finite(),
        metavar="X",
        help="Gate: the --metric of the compressed model at least X.",
    ),
    click.option(
        "--max-metric-drop",
        type=Finite(),
        metavar="D",
        help="Gate: the --metric may fall at most D below the original model's own score.",
    ),
    click.option(
        "--min-ratio",
        type=Finite(min=0, min_open=True),
        metavar="R",
        help="Gate: the output at least R times smaller (original / compressed bytes).",
    ),
    click.option(
        "--max-latency-ratio",
        type=Finite(min=0, min_open=True),
        metavar="R",
        help="Gate: median latency at most R times the original's.",
    ),
)


def _default_memory_mb() -> int:
    from prunequant_cli.supervise import default_memory_limit

    limit = default_memory_limit()
    return limit // 2**20 if limit else 0


limit_options = _options(
    click.option(
        "--timeout",
        type=Finite(0, 10**7),
        default=1800,
        show_default=True,
        metavar="SECONDS",
        help="Stop the run after this long (a model can make onnxruntime loop forever); "
        "0: no limit.",
    ),
    click.option(
        "--memory-limit",
        type=click.IntRange(0, 2**30),  # MiB: 1 PiB, well inside what setrlimit takes
        callback=_memory_limit,
        default=_default_memory_mb,
        show_default="80% of this machine's memory",
        metavar="MB",
        help="Cap the memory the run may allocate (a few bytes of model can ask for gigabytes); "
        "0: no limit.",
    ),
)

output_options = _options(
    click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout."),
    click.option(
        "--report",
        "report_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write a Markdown summary here (for a CI job summary).",
    ),
    click.option("-v", "--verbose", is_flag=True, help="Also show the per-tensor breakdown."),
    click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="No table and no progress; errors only (--json still prints).",
    ),
    click.option("--debug", is_flag=True, help="Show the traceback of internal errors."),
)


def _configs(opts: dict[str, Any], no_eval: bool) -> tuple[Any, Any]:
    from prunequant_cli.config import EvalConfig, GateConfig

    ev = EvalConfig(
        enabled=not no_eval,
        data=opts["data"],
        samples=opts["samples"],
        batch_size=opts["batch_size"],
        threads=opts["threads"],
        seed=opts["seed"],
        input_shapes=opts["input_shapes"],
        input_values=opts["input_values"],
        label_output=opts["label_output"],
        per_layer=opts["per_layer"],
        calibration_data=opts["calibration_data"],
        holdout_fraction=opts["holdout_fraction"],
        metric=opts["metric"],
        output_kinds=opts["output_kinds"],
    )
    gates = GateConfig(
        max_accuracy_drop=opts["max_accuracy_drop"],
        min_agreement=opts["min_agreement"],
        min_cosine=opts["min_cosine"],
        min_ratio=opts["min_ratio"],
        max_latency_ratio=opts["max_latency_ratio"],
        min_metric=opts["min_metric"],
        max_metric_drop=opts["max_metric_drop"],
    )
    return ev, gates


def _side_files(opts: dict[str, Any], reads: tuple[tuple[str, Path], ...] = ()) -> Any:
    """The --report and --plot files, written from the report with the model; ``reads``:
    more files the command reads."""
    from prunequant_cli.outputs import SideFiles

    writes = []
    if opts.get("report_path") is not None:
        writes.append(("--report", opts["report_path"]))
    if opts.get("plot_path") is not None:
        writes.append(("--plot", opts["plot_path"]))

    def render(report: Any) -> dict[Path, bytes]:
        from prunequant_cli.report import markdown_report

        files = {}
        if opts.get("report_path") is not None:
            files[opts["report_path"]] = markdown_report(report).encode("utf-8")
        if opts.get("plot_path") is not None and report.search is not None:
            from prunequant_cli.plot import plot_search

            files[opts["plot_path"]] = plot_search(report.search)
        return files

    return SideFiles(writes=tuple(writes), reads=reads, render=render)


def _drop_stdout() -> None:
    """Send whatever is still buffered for an unwritable stdout nowhere (no second error
    when Python flushes it at exit)."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def _finish(report: Any, opts: dict[str, Any]) -> int:
    """Print the report as asked and say the exit code (its files are already written)."""
    from prunequant_cli.report import render_compress

    try:
        if opts["as_json"]:
            _emit_json(report.to_dict())
        elif not opts["quiet"]:
            render_compress(report, _console(), verbose=opts["verbose"])
        sys.stdout.flush()
    except OSError as e:  # a full disk, a closed pipe: the result cannot be delivered
        _drop_stdout()
        raise OutputError(
            f"cannot write the result to stdout: {e.strerror or e} (the output files, if any, "
            "were written before)"
        ) from None
    if not report.passed:
        failed = ", ".join(g.name for g in report.gates if not g.passed)
        click.echo(f"prunequant: gate failed: {failed}", err=True)
        return EXIT_GATE
    return 0


class _OneLineErrors(click.Group):
    """Command-line mistakes in the documented form: one line and exit 2 (click's own
    form is four lines: usage, a hint, a blank line and the error)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as e:
            where = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError" and where is not None:
                click.echo(where.get_help(), err=True)  # no command at all: the help
                sys.exit(e.exit_code)
            message = " ".join(e.format_message().split())
            hint = f" (see {where.command_path} --help)" if where is not None else ""
            click.echo(f"prunequant: error: {safe_text(message, 300)}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:  # Ctrl-C while click itself was reading the command line
            click.echo("prunequant: error: interrupted (SIGINT)", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(
    cls=_OneLineErrors,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODE_HELP,
)
@click.version_option(package_name="prunequant", prog_name="prunequant")
def main() -> None:
    """Prune and quantize the weights of ONNX models, and verify the result in onnxruntime."""


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(), callback=lambda c, p, v: _file_path(v))
@click.option(
    "--threshold",
    type=Finite(0.0, 1.0),
    help="Row-importance pruning: zero output rows whose share R_i of the tensor's L1 "
    "magnitude is below T. The shares of a tensor sum to 1 (mean 1/rows).",
)
@click.option(
    "--sparsity",
    type=Finite(0.0, 1.0, max_open=True),
    help="Magnitude pruning instead: zero this fraction of the smallest weights of each tensor.",
)
@click.option(
    "--prune-mode",
    default="sparse",
    show_default=True,
    metavar="sparse|dense|N:M",
    help="sparse: zero weights (rows by --threshold, or by magnitude with --sparsity); dense: "
    "remove whole output channels (by --threshold, or the --sparsity fraction of least "
    "important channels) and rewrite the next layers, so the model gets smaller and faster; "
    "N:M (e.g. 2:4): keep the N largest of every M consecutive input weights.",
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
    type=click.Choice(["uniform", "asymmetric", "codebook"]),
    default="uniform",
    show_default=True,
    help="uniform: symmetric codes with one scale per output channel; asymmetric: a "
    "scale and a zero point per output channel, all 2^bits codes over [min, max]; "
    "codebook: 2^bits shared values per tensor (k-means), more accurate at 2-4 bits.",
)
@click.option(
    "--block-size",
    type=click.IntRange(min=2),
    help="Uniform codes of 2-D weights (MatMul, Gemm) get one scale per block of this many "
    "input weights instead of one per output neuron: more accurate at 2-4 bits.",
)
@click.option(
    "--format",
    "storage",
    type=click.Choice(["auto", "dense", "int8", "sparse"]),
    default="auto",
    show_default=True,
    help="How codes are stored: auto picks the smallest form per tensor that runs at the "
    "model's opset; dense never uses a bitmask; int8 one byte per code; sparse a bitmask "
    "or coordinates of the non-zeros.",
)
@click.option(
    "--keep-quantized",
    is_flag=True,
    help="Store DequantizeLinear codes that onnxruntime keeps quantized in memory (less RAM; "
    "slower for Conv/Gemm and at large batch).",
)
@click.option(
    "--bias-correction",
    is_flag=True,
    help="Shift each Gemm/Conv bias by the mean output error of its quantized weight, "
    "measured on the evaluation inputs.",
)
@click.option(
    "--rounding",
    type=click.Choice(["nearest", "gptq"]),
    default="nearest",
    show_default=True,
    help="gptq: choose codes that minimise each MatMul/Gemm/Conv layer's output error on the "
    "calibration samples (GPTQ), which keeps 4 bits and below usable; nearest elsewhere.",
)
@click.option(
    "--all-layers",
    is_flag=True,
    help="At 4 bits and below, quantize the first and last layers too (by default the weights "
    "of layers that read a model input or write a model output keep 8 bits).",
)
@click.option(
    "--strip",
    is_flag=True,
    help="Drop the doc strings and metadata of nodes, values and graphs that exporters leave "
    "(the model's own metadata stays); the report says how many bytes that saved.",
)
@click.option("--no-quantize", is_flag=True, help="Prune only: keep the weights in floating point.")
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave weights whose name matches this glob untouched (repeatable).",
)
@click.option("--no-eval", is_flag=True, help="Write the model without running onnxruntime.")
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Apply the per-weight settings of a recipe (TOML, as a search writes it).",
)
@click.option(
    "--write-recipe",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where a search writes its recipe (default: OUTPUT.recipe.toml).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="After a search, draw the size-vs-quality points measured (PNG; needs the 'plot' "
    "extra, matplotlib).",
)
@click.option(
    "--time-budget",
    type=Finite(1, 10**7),
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="Bound on the time a search spends measuring settings.",
)
@evaluation_options
@gate_options
@output_options
@limit_options
@click.pass_context
def compress(ctx: click.Context, model: Path, output: Path, **opts: Any) -> None:
    """Prune, then quantize the weights of MODEL; write OUTPUT; compare both in onnxruntime.

    Given a quality budget (--max-accuracy-drop, --min-agreement, --min-cosine,
    --min-metric, --max-metric-drop) and no compression settings, it searches for the
    smallest model within the budget on calibration samples (--calibration-data, else a
    split of --data), verifies it on the held-out samples, and writes the chosen per-weight
    settings as a recipe; --max-accuracy-drop 0 is lossless. With settings, the budget is a
    gate. A failed gate still writes OUTPUT and the reports, then exits with the gate code.

    \b
    Examples:
      prunequant compress model.onnx small.onnx --bits 8 --data holdout.npz
      prunequant compress model.onnx small.onnx --threshold 0.01 --bits 4 --json
      prunequant compress model.onnx small.onnx --data holdout.npz --max-accuracy-drop 1
      prunequant compress model.onnx small.onnx --calibration-data cal.npz --data holdout.npz \\
          --metric task.py:score --max-metric-drop 0.01
      prunequant compress model.onnx small.onnx --data holdout.npz --recipe small.onnx.recipe.toml
    """

    show_progress = _wants_progress(opts)

    def body() -> int:
        from prunequant_cli.config import CompressConfig
        from prunequant_cli.pipeline import compress as run_compress
        from prunequant_cli.pipeline import search

        ev, gates = _configs(opts, opts["no_eval"])
        explicit = [
            name
            for name in SETTING_OPTIONS
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        ]
        progress = _progress(show_progress)
        reads = (("--recipe", opts["recipe"]),) if opts["recipe"] is not None else ()
        side = _side_files(opts, reads)
        if gates.budget_given and not explicit:
            if opts["plot_path"] is not None:
                from prunequant_cli.plot import require_matplotlib

                require_matplotlib()  # before the search, not after it
            report = search(
                model,
                output,
                gates,
                ev,
                opts["time_budget"],
                opts["write_recipe"],
                opts["exclude"],
                progress,
                side=side,
                strip=opts["strip"],
            )
            return _finish(report, opts)
        given = {
            name
            for name in ("write_recipe", "time_budget", "plot_path")
            if ctx.get_parameter_source(name) not in (None, click.core.ParameterSource.DEFAULT)
        }
        for name in sorted(given):  # what only a search does is not silently ignored
            flag = {"write_recipe": "--write-recipe", "plot_path": "--plot"}.get(
                name, "--time-budget"
            )
            raise UsageError(f"{flag} is for a search: give a budget and no compression settings")
        if opts["recipe"] is not None:
            clash = [n for n in explicit if n not in ("recipe", "bits", "keep_quantized", "strip")]
            if clash:
                flag = "--" + clash[0].replace("_", "-")
                raise UsageError(
                    f"{flag} does not combine with --recipe: the recipe sets each weight's "
                    "settings (--bits applies to weights it does not name)"
                )
        config = CompressConfig(
            threshold=opts["threshold"],
            sparsity=opts["sparsity"],
            prune_mode=opts["prune_mode"],
            bits=None if opts["no_quantize"] else opts["bits"],
            quant=opts["quant"],
            block_size=opts["block_size"],
            format=opts["storage"],
            keep_quantized=opts["keep_quantized"],
            bias_correction=opts["bias_correction"],
            rounding=opts["rounding"],
            all_layers=opts["all_layers"],
            strip=opts["strip"],
            exclude=opts["exclude"],
        )
        if opts["recipe"] is not None:
            from prunequant_cli.recipe import read_recipe

            config = read_recipe(opts["recipe"], config)
        report = run_compress(model, output, config, ev, gates, progress, side=side)
        return _finish(report, opts)

    recipe_out = opts["write_recipe"] or output.with_name(output.name + ".recipe.toml")
    _run(
        opts,
        body,
        [
            output,
            output.with_name(output.name + ".data"),
            opts["report_path"],
            recipe_out,
            opts["plot_path"],
        ],
    )


# Options that fix how weights are compressed: with any of them a budget is a gate, not a search.
SETTING_OPTIONS = (
    "threshold",
    "sparsity",
    "prune_mode",
    "bits",
    "quant",
    "block_size",
    "storage",
    "keep_quantized",
    "rounding",
    "all_layers",
    "no_quantize",
    "recipe",
)


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("model_a", type=click.Path(path_type=Path))
@click.argument("model_b", type=click.Path(path_type=Path))
@evaluation_options
@gate_options
@output_options
@limit_options
def compare(model_a: Path, model_b: Path, **opts: Any) -> None:
    """Compare MODEL_B against MODEL_A (the original), e.g. one compressed by another tool.

    Same table, same JSON and same gates as compress.

    \b
    Example:
      prunequant compare model.onnx model.int8.onnx --data holdout.npz --min-agreement 0.99
    """

    show_progress = _wants_progress(opts)

    def body() -> int:
        from prunequant_cli.pipeline import compare as run_compare

        ev, gates = _configs(opts, no_eval=False)
        report = run_compare(
            model_a, model_b, ev, gates, _progress(show_progress), side=_side_files(opts)
        )
        return _finish(report, opts)

    _run(opts, body, [opts["report_path"]])


@main.command(epilog=EXIT_CODE_HELP)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@click.option("--debug", is_flag=True, help="Show the traceback of internal errors.")
@limit_options
def inspect(model: Path, as_json: bool, debug: bool, **opts: Any) -> None:
    """Show what is inside MODEL: inputs, outputs, ops, every tensor and how weights are stored."""

    def body() -> int:
        from prunequant_cli.inspection import render_inspection
        from prunequant_cli.pipeline import inspect_model

        info = inspect_model(model)
        if as_json:
            _emit_json(info.to_dict())
        else:
            render_inspection(info, _console())
        return 0

    _run({**opts, "debug": debug}, body, [])
