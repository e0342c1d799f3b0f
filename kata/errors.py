"""The one error root of Kata CI.

Every error a user can cause is a ``KataError`` carrying a machine-readable
``reason`` (tests assert on it, never on the wording), a human message, and
where it applies the position in a file or the object it concerns. The CLI
turns it into one line on stderr and an exit code; nothing a user can type
produces a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a file: 1-based line and column, as editors show them."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class KataError(Exception):
    """An error the user can act on.

    reason: dotted machine-readable reason, e.g. ``config.unknown_key``.
    position: where in a config file, when it comes from one.
    obj: the object it concerns otherwise (a step, a digest, a path).
    exit_code: 2 for bad usage or config, 1 for a failed build or operation.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        position: Position | None = None,
        obj: str | None = None,
        exit_code: int = 2,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.position = position
        self.obj = obj
        self.exit_code = exit_code

    def __str__(self) -> str:
        if self.position is not None:
            return f"{self.position}: {self.message}"
        return self.message
