"""Release resources in reverse order without a cleanup failure hiding the first error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kata.runtime")


class Cleanup:
    """A LIFO stack of release actions, run by ``close``.

    Every action runs even when an earlier one fails. If the block raised, cleanup
    errors are attached to that error as notes; otherwise the first cleanup error is
    raised after all actions ran.
    """

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], Any]]] = []

    def push(self, what: str, action: Callable[[], Any]) -> None:
        self._actions.append((what, action))

    def __enter__(self) -> Cleanup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        first = self.close(exc)
        if exc is None and first is not None:
            raise first

    def close(self, primary: BaseException | None = None) -> BaseException | None:
        first: BaseException | None = None
        while self._actions:
            what, action = self._actions.pop()
            try:
                action()
            except BaseException as err:  # noqa: BLE001 - each release must run
                log.warning("cleanup failed: %s: %s", what, err)
                if primary is not None:
                    primary.add_note(f"also, while cleaning up ({what}): {err}")
                elif first is None:
                    first = err
        return first
