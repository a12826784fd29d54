"""Run a command in a child process with a wall-clock and a memory limit.

A model file is untrusted input: onnxruntime can hang on it (a Loop with no end),
allocate without bound (a few bytes of ConstantOfShape) or crash. The command runs
in a forked child whose data segment is capped (RLIMIT_DATA, so a huge allocation
fails with an error instead of waking the OOM killer); the parent relays the child's
stdout and stderr, kills it at the deadline, and turns a timeout or a crash into one
clear line and an exit code, after removing the temporary files the child left.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import resource
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    timeout: float | None  # seconds; None: no limit (and no child process)
    memory: int | None  # bytes of data segment; None: no limit


def default_memory_limit() -> int | None:
    """80% of the machine's memory: a bomb fails cleanly before the OOM killer acts."""
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


@dataclass
class Outcome:
    code: int | None  # the child's exit code, None if it did not exit normally
    timed_out: bool = False
    signal: int | None = None


def run_supervised(
    body: Callable[[], int], limits: Limits, cleanup: Callable[[], None] = lambda: None
) -> Outcome:
    """Run ``body`` (returning an exit code) in a child process under ``limits``."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(out_r)
        os.close(err_r)
        code = 1
        try:
            if limits.memory:
                resource.setrlimit(resource.RLIMIT_DATA, (limits.memory, limits.memory))
            sys.stdout = io.TextIOWrapper(
                os.fdopen(out_w, "wb"), encoding="utf-8", write_through=True
            )
            sys.stderr = io.TextIOWrapper(
                os.fdopen(err_w, "wb"), encoding="utf-8", write_through=True
            )
            code = body()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # a bug in the child: say so the usual way
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(code)

    os.close(out_w)
    os.close(err_w)
    deadline = None if limits.timeout is None else time.monotonic() + limits.timeout
    sel = selectors.DefaultSelector()
    targets = {out_r: sys.stdout, err_r: sys.stderr}
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in targets}
    for fd in targets:
        sel.register(fd, selectors.EVENT_READ)
    timed_out = False
    while sel.get_map():
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait == 0.0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        for key, _ in sel.select(timeout=min(wait, 1.0) if wait is not None else None):
            fd = key.fd
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            targets[fd].write(decoders[fd].decode(chunk))
            targets[fd].flush()
    sel.close()
    for fd in targets:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    if timed_out or not os.WIFEXITED(status):
        cleanup()
    if timed_out:
        return Outcome(None, timed_out=True)
    if os.WIFSIGNALED(status):
        return Outcome(None, signal=os.WTERMSIG(status))
    return Outcome(os.WEXITSTATUS(status))


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
