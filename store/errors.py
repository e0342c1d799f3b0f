"""The store's error root; ``kata`` wraps or reports these, the store never imports kata."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation failed in a way the user can act on.

    reason: dotted machine-readable reason, e.g. ``store.corrupt_object``.
    obj: what it concerns (a digest, a path, an archive entry).
    """

    def __init__(self, reason: str, message: str, *, obj: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.obj = obj
