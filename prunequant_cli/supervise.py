"""Run a command in a child process with a wall-clock and a memory limit.

A model file is untrusted input: onnxruntime can hang on it (a Loop with no end),
allocate without bound (a few bytes of ConstantOfShape) or crash. The command runs
in a forked child whose data segment is capped (RLIMIT_DATA, so a huge allocation
fails with an error instead of waking the OOM killer); the parent relays the child's
stdout and stderr, kills it at the deadline, and turns a timeout or a crash into one
clear line and an exit code, after removing the temporary files the child left.

The child never outlives its caller: it asks the kernel for SIGTERM when the parent
dies (even by SIGKILL, e.g. from ``subprocess.run(timeout=)``), keeps a deadline of its
own, and a SIGINT, SIGTERM or SIGHUP to the parent is passed on to it. On SIGTERM the
child unwinds (its temporary files go) and exits; if it cannot within GRACE seconds
(stuck inside onnxruntime), it is killed.
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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

GRACE = 5.0  # seconds a signalled child has to unwind before it is killed


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (temporary files go) and exit 128 + signum.

    ``quiet`` in a supervised child: its parent, which passed the signal on, says so."""

    def __init__(self, signum: int, quiet: bool = False) -> None:
        super().__init__(signum)
        self.signum, self.quiet = signum, quiet


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def catch_termination() -> None:
    """SIGTERM and SIGHUP raise Interrupted, so ``finally`` blocks run (SIGINT already
    raises KeyboardInterrupt)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupted)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP that arrive inside take effect only when it ends, as they
    would have (the handler they would have met is called then, or the default action
    carried out). A signal mask would not do: the kernel may hand a process signal to any
    thread (onnxruntime's, the parent watch), and Python runs its handler in the main
    thread all the same. Only in the main thread, where handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {
        sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in held
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if pending:
            handler = previous[signal.Signals(pending[0])]
            if callable(handler):
                handler(pending[0], None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), pending[0])


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` dies: the kernel sends SIGTERM (Linux), which
    Python answers by unwinding, and a watching thread arms SIGALRM (whose default action
    the kernel carries out) for GRACE seconds later, for when Python cannot answer because
    onnxruntime is running. Exit at once if the parent is already gone."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(128 + signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        signal.setitimer(signal.ITIMER_REAL, GRACE)
        with contextlib.suppress(OSError):
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="prunequant-parent-watch", daemon=True).start()


def _on_child_signal(signum: int, frame: Any) -> None:
    # The child unwinds; should that take longer than GRACE, SIGALRM ends it.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, GRACE)
    raise Interrupted(signum, quiet=True)


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
    signal: int | None = None  # the signal that ended the child on its own (a crash)
    interrupted: int | None = None  # the signal the caller sent (passed on to the child)
    lost_stdout: str | None = None  # why the child's stdout could not be passed on
    vanished: int | None = None  # the exit status of a child that ended before its result


def run_supervised(
    body: Callable[[], int], limits: Limits, cleanup: Callable[[int], None] = lambda pid: None
) -> Outcome:
    """Run ``body`` (returning an exit code) in a child process under ``limits``."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    done_r, done_w = os.pipe()  # the child's exit code, written only when its body ended
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(out_r)
        os.close(err_r)
        os.close(done_r)
        code = 1
        try:
            # The parent decides about Ctrl-C (it reaches the whole process group) and
            # passes it on as SIGTERM, which the child answers by unwinding.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for sig in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, _on_child_signal)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the kernel's end, not Python's
            _die_with_parent(parent)
            if limits.timeout is not None:  # its own deadline, should the parent's fail
                signal.setitimer(signal.ITIMER_REAL, limits.timeout + GRACE)
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
        except Interrupted as e:
            code = 128 + e.signum
        except BaseException:  # a bug in the child: say so the usual way
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            with contextlib.suppress(OSError):
                os.write(done_w, b"%d" % code)
            os._exit(code)

    os.close(out_w)
    os.close(err_w)
    os.close(done_w)
    deadline = None if limits.timeout is None else time.monotonic() + limits.timeout
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        nonlocal deadline
        if not received:
            received.append(signum)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + GRACE  # then it is killed

    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in caught}
    try:
        outcome = _relay(pid, out_r, err_r, lambda: deadline, received, cleanup)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    with os.fdopen(done_r, "rb") as done:
        reported = done.read()
    if outcome.code is not None and not reported:
        # It exited (os._exit, or a library's exit) without its body returning a result.
        cleanup(pid)
        return Outcome(None, vanished=outcome.code)
    return outcome


def _relay(
    pid: int,
    out_r: int,
    err_r: int,
    deadline_of: Callable[[], float | None],
    received: list[int],
    cleanup: Callable[[int], None],
) -> Outcome:
    """Pass the child's output on until it exits or its deadline passes (then kill it)."""
    sel = selectors.DefaultSelector()
    targets = {out_r: sys.stdout, err_r: sys.stderr}
    decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in targets}
    for fd in targets:
        sel.register(fd, selectors.EVENT_READ)
    timed_out = False
    lost: dict[int, str] = {}  # streams that cannot be written any more: why
    while sel.get_map():
        deadline = deadline_of()
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        if wait == 0.0:
            timed_out = not received
            os.kill(pid, signal.SIGKILL)
            break
        for key, _ in sel.select(timeout=min(wait, 1.0) if wait is not None else None):
            fd = key.fd
            chunk = os.read(fd, 65536)
            if not chunk:
                sel.unregister(fd)
                continue
            if fd in lost:
                continue  # keep draining, so the child is never blocked on a full pipe
            try:
                targets[fd].write(decoders[fd].decode(chunk))
                targets[fd].flush()
            except (OSError, ValueError) as e:  # full disk, closed pipe, closed file
                lost[fd] = getattr(e, "strerror", None) or str(e)
    sel.close()
    for fd in targets:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    if timed_out or received or not os.WIFEXITED(status):
        cleanup(pid)
    if received:
        return Outcome(None, interrupted=received[0])
    if timed_out:
        return Outcome(None, timed_out=True)
    if os.WIFSIGNALED(status):
        return Outcome(None, signal=os.WTERMSIG(status))
    return Outcome(os.WEXITSTATUS(status), lost_stdout=lost.get(out_r))


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
