"""The ``prunequant`` command: signals answered from the first instruction on.

Ctrl-C or SIGTERM while the libraries are still importing exits 130 or 143 with one
line, like at any later point, never with a traceback.
"""

from __future__ import annotations

import os
import signal
import sys


def _usable_streams() -> None:
    """Standard streams that never fail on what is written to them: a closed descriptor is
    opened on /dev/null (else a pipe or a model file could take its number), and text
    that the stream's encoding cannot show is escaped instead of raising."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if stream is None:
            setattr(sys, name, open(fd, "w", encoding="utf-8", closefd=False))  # noqa: SIM115
        elif hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main() -> None:
    from prunequant_cli.supervise import Interrupted, catch_termination

    catch_termination()
    _usable_streams()
    try:
        from prunequant_cli.cli import main as cli

        cli()
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        sys.stderr.write(f"prunequant: error: interrupted ({signal.Signals(signum).name})\n")
        sys.exit(128 + signum)
