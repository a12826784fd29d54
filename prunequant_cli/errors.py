"""The exception hierarchy and the exit-code table.

Every error that a user's input can cause derives from :class:`PrunequantError`
and carries its exit code. The CLI prints such errors as one line on stderr; any
other exception is a bug and keeps its traceback (shown with ``--debug``).
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_INVALID_MODEL = 4
EXIT_UNSUPPORTED = 5
EXIT_OUTPUT = 6
EXIT_EVALUATION = 7
EXIT_GATE = 8
EXIT_RESOURCE = 9

#: (code, meaning) for the README and ``--help``.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_INTERNAL, "internal error (a bug: rerun with --debug for the traceback)"),
    (EXIT_USAGE, "bad command line (unknown option, value out of range)"),
    (EXIT_INPUT, "input missing or unreadable (model or data file)"),
    (
        EXIT_INVALID_MODEL,
        "input is not a valid ONNX model, or is unsafe (e.g. data outside its folder)",
    ),
    (EXIT_UNSUPPORTED, "valid model that prunequant cannot process"),
    (EXIT_OUTPUT, "output refused or could not be written (nothing is left behind)"),
    (EXIT_EVALUATION, "onnxruntime could not run the original or the compressed model"),
    (EXIT_GATE, "a gate failed (the model and the reports were still written)"),
    (EXIT_RESOURCE, "a limit was hit: --timeout, --memory-limit, or a size limit of the model"),
    (129, "interrupted by SIGHUP (nothing was written)"),
    (130, "interrupted by SIGINT, Ctrl-C (nothing was written)"),
    (143, "interrupted by SIGTERM (nothing was written)"),
)


class PrunequantError(Exception):
    """An error caused by the user's input, reported as one line."""

    exit_code = EXIT_INTERNAL


class UsageError(PrunequantError):
    exit_code = EXIT_USAGE


class InputError(PrunequantError):
    exit_code = EXIT_INPUT


class InvalidModelError(PrunequantError):
    exit_code = EXIT_INVALID_MODEL


class UnsupportedModelError(PrunequantError):
    exit_code = EXIT_UNSUPPORTED


class OutputError(PrunequantError):
    exit_code = EXIT_OUTPUT


class EvaluationError(PrunequantError):
    exit_code = EXIT_EVALUATION


class ResourceError(PrunequantError):
    exit_code = EXIT_RESOURCE


# Control characters, and the invisible ones that reorder or hide text (bidirectional
# overrides and isolates, zero-width characters, the byte-order mark).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def _escaped(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: object, limit: int = 200) -> str:
    """Make a string from a model or a library safe to print on one line of a CI log.

    Control characters (newlines, ANSI escapes) are shown as escapes, a leading
    ``::`` (a CI workflow command) is defused, and long text is truncated.
    """
    s = _CONTROL.sub(_escaped, str(text))
    if s.startswith("::"):
        s = "\\" + s
    if len(s) > limit:
        s = s[: limit - 1] + "…"
    return s
