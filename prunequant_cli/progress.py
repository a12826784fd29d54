"""Progress of a long run: stages, and steps within a stage (one per tensor)."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def stage(self, name: str, total: int | None = None) -> None:
        """A new stage begins; ``total`` steps if known."""

    def advance(self) -> None:
        """One step of the current stage is done."""

    def done(self) -> None:
        """All stages are done."""


class _NoProgress:
    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self) -> None:
        pass

    def done(self) -> None:
        pass


NO_PROGRESS: Progress = _NoProgress()
