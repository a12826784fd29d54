"""The ``prunequant`` command: signals answered from the first instruction on.

Ctrl-C or SIGTERM while the libraries are still importing exits 130 or 143 with one
line, like at any later point, never with a traceback.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    from prunequant_cli.supervise import Interrupted, catch_termination

    catch_termination()
    try:
        from prunequant_cli.cli import main as cli

        cli()
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        sys.stderr.write(f"prunequant: error: interrupted ({signal.Signals(signum).name})\n")
        sys.exit(128 + signum)
