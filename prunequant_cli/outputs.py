"""What one run writes: checked against what it reads, staged, and moved into place together.

A run reads a model (and its external data), data files, perhaps a recipe and a metric
file; it writes the compressed model (and its data file), perhaps a recipe, a Markdown
report and a plot. Two guarantees hold for every run:

* **No path written is a path read, or written twice** (compared resolved, so symlinks and
  hard links count): a clash is refused with exit 6 before anything is written.
* **Nothing is replaced until the run has succeeded.** Every file is first written to a
  hidden temporary beside its destination (the model in a private folder, so onnxruntime
  evaluates exactly what this run wrote, not whatever another run left at the path), and
  all are moved into place by renames at the very end. A failure, a timeout or a signal
  before then leaves every previous file exactly as it was, and the temporaries go.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunequant_cli.errors import OutputError, safe_text

Named = tuple[str, Path]  # (what the path is, e.g. "--report"), path


@dataclass(frozen=True)
class SideFiles:
    """Files a caller writes from the report beside the model (the Markdown report, a plot)
    and files it reads itself (a recipe): checked with the run's own paths, written with
    its model."""

    writes: tuple[Named, ...] = ()
    reads: tuple[Named, ...] = ()
    render: Callable[[Any], dict[Path, bytes]] | None = None  # report -> {path: bytes}


def _files_read(path: Path) -> list[Path]:
    """``path``, or the files in it when it is a folder (what a data folder is read as)."""
    try:
        if path.is_dir():
            return sorted(p for p in path.iterdir() if p.is_file())
    except OSError:  # unreadable or impossible: reading it will say so
        pass
    return [path]


def _same(a: Path, b: Path) -> bool:
    try:
        if os.path.realpath(a) == os.path.realpath(b):
            return True
        return os.path.samefile(a, b)  # hard links
    except OSError:  # one does not exist (or cannot: a name too long)
        return False


def check_paths(
    reads: Iterable[Named], writes: Sequence[Named], optional: Sequence[Named] = ()
) -> None:
    """Refuse (OutputError, exit 6) a write that would replace a file read or another
    write, a write into a missing folder or onto a folder, and a name too long to exist.
    ``optional`` are files that may be written (a model's data file): only their clashes
    are checked."""
    for what, path in writes:
        parent = path.parent
        if not parent.is_dir():
            raise OutputError(f"{what} folder does not exist: {safe_text(parent)}")
        longest = _name_max(parent)
        if len(os.fsencode(path.name)) > longest:
            raise OutputError(
                f"{what} name is longer than the {longest} bytes a file name may have here: "
                f"{safe_text(path.name)}"
            )
        if path.is_dir():
            raise OutputError(f"{what} is a folder: {safe_text(path)}")
        _replaceable(what, path)
    read_files = [(what, f) for what, p in reads for f in _files_read(p)]
    every = [*writes, *optional]
    for i, (what, path) in enumerate(every):
        for read_what, read in read_files:
            if _same(path, read):
                raise OutputError(
                    f"{what} {safe_text(path)} would overwrite {read_what} {safe_text(read)}"
                )
        for other_what, other in every[:i]:
            if _same(path, other):
                raise OutputError(f"{what} and {other_what} name the same file: {safe_text(path)}")


def _replaceable(what: str, path: Path) -> None:
    """Only a regular file (or nothing) may be replaced: a device, a FIFO or a socket at an
    output path (/dev/null, /dev/stdout...) is not a file to overwrite, and a symlink is
    neither followed (its target may be anything) nor replaced (it may be a system's)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as e:
        raise OutputError(f"cannot write {what} {safe_text(path)}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputError(
            f"{what} {safe_text(path)} is a symlink: it is neither followed nor replaced "
            "(name the file itself, or remove the link)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise OutputError(
            f"{what} {safe_text(path)} is not a regular file (a device, FIFO or socket): "
            "it is not replaced"
        )


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def metric_file(spec: str | None) -> Path | None:
    """The file a ``--metric FILE.py:FUNCTION`` (or ``module:function``, found without
    importing it when it is a top-level module) reads, if there is one."""
    if not spec:
        return None
    target = spec.rpartition(":")[0]
    if target.endswith(".py"):
        return Path(target)
    if not target.isidentifier():
        return None  # a dotted name: finding it would run its packages' code
    import importlib.util

    try:
        found = importlib.util.find_spec(target)
    except (ImportError, ValueError):
        return None
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and os.path.isfile(origin) else None


# Room left in a file name (NAME_MAX 255) for the random part and suffix of a temporary.
_TEMP_STEM = 200


def temporary_prefix(final: Path, pid: int | None = None) -> str:
    """How the temporaries that process ``pid`` (this one by default) makes for ``final``
    begin: hidden, after its name (cut short for long names, so that a name of up to 255
    bytes still has temporaries that fit), then the pid, so that cleaning up after one run
    never touches another's."""
    return f".{final.name[:_TEMP_STEM]}.{os.getpid() if pid is None else pid}."


@dataclass
class Staging:
    """Files written to temporaries beside their destinations, moved into place together.

    ``commit`` renames each temporary onto its destination in the order added (a model's
    data before the model that points at it); ``discard`` (also after a commit) removes
    whatever temporaries are left.
    """

    moves: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary, final)
    folders: list[Path] = field(default_factory=list)

    def folder(self, final: Path) -> Path:
        """A private temporary folder beside ``final``, removed by ``discard``."""
        try:
            tmp = Path(
                tempfile.mkdtemp(prefix=temporary_prefix(final), suffix=".tmp", dir=final.parent)
            )
        except OSError as e:
            raise OutputError(f"cannot write in {safe_text(final.parent)}: {e.strerror}") from None
        self.folders.append(tmp)
        return tmp

    def add(self, staged: Path, final: Path) -> None:
        """Move ``staged`` (already written and synced) onto ``final`` at commit."""
        self.moves.append((staged, final))

    def add_bytes(self, final: Path, data: bytes, what: str) -> None:
        """Write ``data`` to a temporary beside ``final``, moved onto it at commit."""
        try:
            fd, name = tempfile.mkstemp(
                prefix=temporary_prefix(final), suffix=".tmp", dir=final.parent
            )
        except OSError as e:
            raise OutputError(f"cannot write {what} {safe_text(final)}: {e.strerror}") from None
        tmp = Path(name)
        self.moves.append((tmp, final))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; use what open() would
        except OSError as e:
            why = e.strerror or e
            raise OutputError(f"cannot write {what} {safe_text(final)}: {why}") from None

    def commit(self) -> None:
        """Move every staged file into place (the run succeeded), all or none as far as a
        signal goes: SIGINT, SIGTERM and SIGHUP wait until the last rename is done."""
        from prunequant_cli.supervise import uninterrupted

        with uninterrupted():
            try:
                for staged, final in self.moves:
                    os.replace(staged, final)
            except OSError as e:
                raise OutputError(f"cannot write {safe_text(final)}: {e.strerror or e}") from None
        for parent in sorted({final.parent for _, final in self.moves}):
            with contextlib.suppress(OSError):
                dir_fd = os.open(parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        self.moves = []

    def discard(self) -> None:
        """Remove every temporary not moved into place."""
        import shutil

        for staged, _ in self.moves:
            with contextlib.suppress(OSError):
                staged.unlink()
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.moves, self.folders = [], []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
